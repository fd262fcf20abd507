//! A model NVMe controller for the driver's host tests: a fake BAR0 whose doorbell
//! writes make it consume submission entries from fake DMA memory, act on a
//! Vec-backed namespace and post completions with the right phase tag.
//!
//! The model checks what a real controller relies on (CC values, doorbell offsets
//! and values, PRP layout, that every DMA address is memory the driver allocated,
//! that no completion queue overflows) and panics when the driver breaks a rule:
//! the test then fails.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use nvme::{Clock, Dma, Registers};

const PAGE: u64 = 4096;

/// Physical memory: allocations from a bump allocator, each its own zeroed buffer.
#[derive(Default)]
pub struct Memory {
    next: u64,
    /// Start -> bytes of every live allocation.
    pub live: BTreeMap<u64, Vec<u8>>,
}

impl Memory {
    /// The allocation holding `phys..phys + len`.
    fn find(&mut self, phys: u64, len: usize) -> &mut [u8] {
        let (&start, bytes) = self
            .live
            .range_mut(..=phys)
            .next_back()
            .unwrap_or_else(|| panic!("DMA to unallocated memory at {phys:#x}"));
        let at = (phys - start) as usize;
        assert!(
            at + len <= bytes.len(),
            "DMA at {phys:#x}+{len} runs past its allocation at {start:#x}"
        );
        &mut bytes[at..at + len]
    }

    pub fn read(&mut self, phys: u64, buf: &mut [u8]) {
        buf.copy_from_slice(self.find(phys, buf.len()));
    }

    pub fn write(&mut self, phys: u64, data: &[u8]) {
        self.find(phys, data.len()).copy_from_slice(data);
    }

    fn u32(&mut self, phys: u64) -> u32 {
        let mut b = [0; 4];
        self.read(phys, &mut b);
        u32::from_le_bytes(b)
    }

    fn u64(&mut self, phys: u64) -> u64 {
        let mut b = [0; 8];
        self.read(phys, &mut b);
        u64::from_le_bytes(b)
    }
}

pub struct TestDma {
    pub mem: Rc<RefCell<Memory>>,
    /// Allocations fail once this many pages are live.
    pub limit_pages: usize,
}

impl Dma for TestDma {
    fn alloc(&mut self, pages: usize) -> Option<u64> {
        let mut m = self.mem.borrow_mut();
        let live: usize = m.live.values().map(|b| b.len() / PAGE as usize).sum();
        if pages == 0 || live + pages > self.limit_pages {
            return None;
        }
        // Start at 1 MiB, a gap page between allocations catches overruns.
        let at = 0x10_0000 + m.next;
        m.next += (pages as u64 + 1) * PAGE;
        m.live.insert(at, vec![0; pages * PAGE as usize]);
        Some(at)
    }

    fn free(&mut self, phys: u64, pages: usize) {
        let bytes = self
            .mem
            .borrow_mut()
            .live
            .remove(&phys)
            .unwrap_or_else(|| panic!("free of {phys:#x}, not an allocation"));
        assert_eq!(bytes.len(), pages * PAGE as usize, "free with another size");
    }

    fn read(&mut self, phys: u64, buf: &mut [u8]) {
        self.mem.borrow_mut().read(phys, buf);
    }

    fn write(&mut self, phys: u64, data: &[u8]) {
        self.mem.borrow_mut().write(phys, data);
    }

    fn read_u32(&mut self, phys: u64) -> u32 {
        assert_eq!(phys % 4, 0, "unaligned volatile read");
        self.mem.borrow_mut().u32(phys)
    }
}

/// Every call advances time by 50 us, so waits end without a real clock.
pub struct TestClock(pub Rc<Cell<u64>>);

impl Clock for TestClock {
    fn now_us(&mut self) -> u64 {
        self.0.set(self.0.get() + 50);
        self.0.get()
    }
}

#[derive(Clone)]
pub struct Config {
    pub mqes: u16,
    pub dstrd: u8,
    pub to: u8,
    pub mpsmin: u8,
    /// CAP.CSS; bit 0 = NVM command set.
    pub css: u8,
    pub mdts: u8,
    pub lba_shift: u8,
    pub metadata: u16,
    pub lbas: u64,
    pub serial: &'static str,
    pub model: &'static str,
    /// Never sets CSTS.RDY.
    pub never_ready: bool,
    /// Sets CSTS.CFS instead of RDY on enable.
    pub fatal_on_enable: bool,
    /// Starts enabled and ready, as firmware may leave it.
    pub start_enabled: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mqes: 63,
            dstrd: 0,
            to: 2,
            mpsmin: 0,
            css: 1,
            mdts: 5,
            lba_shift: 9,
            metadata: 0,
            lbas: 4096,
            serial: "hv-disk",
            model: "Model NVMe Ctrl",
            never_ready: false,
            fatal_on_enable: false,
            start_enabled: false,
        }
    }
}

struct Sq {
    base: u64,
    entries: u16,
    head: u16,
    cqid: u16,
}

struct Cq {
    base: u64,
    entries: u16,
    tail: u16,
    head: u16,
    phase: bool,
}

/// One executed I/O command as the model saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoRecord {
    pub opcode: u8,
    pub slba: u64,
    pub blocks: u32,
    /// PRP pages the transfer used.
    pub pages: usize,
    /// Whether PRP2 pointed to a PRP list.
    pub prp_list: bool,
}

pub struct Model {
    pub cfg: Config,
    pub mem: Rc<RefCell<Memory>>,
    pub disk: Vec<u8>,
    cc: u32,
    csts: u32,
    aqa: u32,
    asq: u64,
    acq: u64,
    pub intms: u32,
    sqs: HashMap<u16, Sq>,
    cqs: HashMap<u16, Cq>,
    pub io: Vec<IoRecord>,
    pub flushes: usize,
    /// CC.EN 1 -> 0 transitions seen.
    pub disables: usize,
    /// Normal shutdown notifications seen.
    pub shutdowns: usize,
    /// Completion queue wraps (phase flips) per queue ID.
    pub cq_wraps: HashMap<u16, usize>,
    /// The I/O completion queue was created with interrupts enabled.
    pub io_cq_interrupts: Option<bool>,
    /// The next command with this opcode on an I/O queue completes with this status
    /// field (SCT << 8 | SC).
    pub fail_next: Option<(u8, u16)>,
    /// The next command with this opcode on an I/O queue is never completed.
    pub drop_next: Option<u8>,
}

impl Model {
    pub fn new(cfg: Config, mem: Rc<RefCell<Memory>>) -> Self {
        let disk = vec![0; (cfg.lbas << cfg.lba_shift) as usize];
        let (cc, csts) = if cfg.start_enabled { (1, 1) } else { (0, 0) };
        Self {
            cfg,
            mem,
            disk,
            cc,
            csts,
            aqa: 0,
            asq: 0,
            acq: 0,
            intms: 0,
            sqs: HashMap::new(),
            cqs: HashMap::new(),
            io: Vec::new(),
            flushes: 0,
            disables: 0,
            shutdowns: 0,
            cq_wraps: HashMap::new(),
            io_cq_interrupts: None,
            fail_next: None,
            drop_next: None,
        }
    }

    fn cap(&self) -> u64 {
        let c = &self.cfg;
        u64::from(c.mqes)
            | (1 << 16) // CQR
            | (u64::from(c.to) << 24)
            | (u64::from(c.dstrd) << 32)
            | (u64::from(c.css) << 37)
            | (u64::from(c.mpsmin) << 48)
    }

    fn set_cc(&mut self, value: u32) {
        if value & (0b11 << 14) != 0 && self.cc & (0b11 << 14) == 0 {
            assert!(
                self.sqs.keys().chain(self.cqs.keys()).all(|&q| q == 0),
                "shutdown notification with I/O queues still present"
            );
            self.shutdowns += 1;
            self.csts |= 0b10 << 2; // SHST: shutdown processing complete
        }
        let was = self.cc & 1 != 0;
        let now = value & 1 != 0;
        if was && self.csts & 1 == 0 && !now && !self.cfg.never_ready && !self.cfg.fatal_on_enable {
            panic!("CC.EN cleared while CSTS.RDY still 0");
        }
        self.cc = value;
        match (was, now) {
            (false, true) => {
                assert_eq!((value >> 16) & 0xF, 6, "CC.IOSQES");
                assert_eq!((value >> 20) & 0xF, 4, "CC.IOCQES");
                assert_eq!((value >> 7) & 0xF, 0, "CC.MPS");
                assert_eq!((value >> 4) & 0x7, 0, "CC.CSS");
                assert_eq!((value >> 11) & 0x7, 0, "CC.AMS");
                if self.cfg.fatal_on_enable {
                    self.csts = 2;
                    return;
                }
                if self.cfg.never_ready {
                    return;
                }
                let sq_entries = (self.aqa & 0xFFF) as u16 + 1;
                let cq_entries = ((self.aqa >> 16) & 0xFFF) as u16 + 1;
                assert!(sq_entries >= 2 && cq_entries >= 2, "AQA sizes");
                assert_eq!(self.asq % PAGE, 0, "ASQ alignment");
                assert_eq!(self.acq % PAGE, 0, "ACQ alignment");
                self.sqs.insert(
                    0,
                    Sq {
                        base: self.asq,
                        entries: sq_entries,
                        head: 0,
                        cqid: 0,
                    },
                );
                self.cqs.insert(0, Cq::new(self.acq, cq_entries));
                self.csts = 1;
            }
            (true, false) => {
                self.disables += 1;
                self.sqs.clear();
                self.cqs.clear();
                self.csts = 0;
            }
            _ => {}
        }
    }

    fn doorbell(&mut self, offset: usize, value: u32) {
        let stride = 4usize << self.cfg.dstrd;
        assert_eq!(
            (offset - 0x1000) % stride,
            0,
            "doorbell {offset:#x} off stride"
        );
        assert_eq!(
            self.csts & 3,
            1,
            "doorbell rung while the controller is not ready"
        );
        let index = (offset - 0x1000) / stride;
        let qid = (index / 2) as u16;
        if index % 2 == 1 {
            let cq = self
                .cqs
                .get_mut(&qid)
                .expect("head doorbell of a missing CQ");
            assert!(
                value < u32::from(cq.entries),
                "CQ head {value} out of range"
            );
            cq.head = value as u16;
            return;
        }
        let sq = self.sqs.get(&qid).expect("tail doorbell of a missing SQ");
        assert!(
            value < u32::from(sq.entries),
            "SQ tail {value} out of range"
        );
        let tail = value as u16;
        while self.sqs[&qid].head != tail {
            let sq = self.sqs.get_mut(&qid).unwrap();
            let slot = sq.base + u64::from(sq.head) * 64;
            sq.head = (sq.head + 1) % sq.entries;
            let (sq_head, cqid) = (sq.head, sq.cqid);
            let mut e = [0u8; 64];
            self.mem.borrow_mut().read(slot, &mut e);
            let dw = |i: usize| u32::from_le_bytes(e[4 * i..4 * i + 4].try_into().unwrap());
            let cdw0 = dw(0);
            let (opcode, cid) = (cdw0 as u8, (cdw0 >> 16) as u16);
            assert_eq!((cdw0 >> 8) & 0xFF, 0, "FUSE/PSDT must be 0 (PRPs)");
            let cmd = Cmd {
                opcode,
                nsid: dw(1),
                prp1: u64::from(dw(6)) | (u64::from(dw(7)) << 32),
                prp2: u64::from(dw(8)) | (u64::from(dw(9)) << 32),
                cdw10: dw(10),
                cdw11: dw(11),
                cdw12: dw(12),
            };
            let status = if qid == 0 {
                self.admin(&cmd)
            } else {
                if self.drop_next == Some(opcode) {
                    self.drop_next = None;
                    continue;
                }
                match self.fail_next {
                    Some((op, status)) if op == opcode => {
                        self.fail_next = None;
                        status
                    }
                    _ => self.nvm(&cmd),
                }
            };
            self.post(cqid, qid, sq_head, cid, status);
        }
    }

    fn post(&mut self, cqid: u16, sqid: u16, sq_head: u16, cid: u16, status: u16) {
        let cq = self.cqs.get_mut(&cqid).expect("completion queue");
        assert_ne!(
            (cq.tail + 1) % cq.entries,
            cq.head,
            "completion queue {cqid} overflow: the host did not consume entries"
        );
        let slot = cq.base + u64::from(cq.tail) * 16;
        let dw2 = u32::from(sq_head) | (u32::from(sqid) << 16);
        let dw3 = u32::from(cid) | (u32::from(cq.phase) << 16) | (u32::from(status) << 17);
        let mut e = [0u8; 16];
        e[8..12].copy_from_slice(&dw2.to_le_bytes());
        e[12..16].copy_from_slice(&dw3.to_le_bytes());
        cq.tail += 1;
        if cq.tail == cq.entries {
            cq.tail = 0;
            cq.phase = !cq.phase;
            *self.cq_wraps.entry(cqid).or_default() += 1;
        }
        self.mem.borrow_mut().write(slot, &e);
    }

    fn admin(&mut self, cmd: &Cmd) -> u16 {
        match cmd.opcode {
            0x06 => {
                assert_eq!(cmd.prp1 % PAGE, 0, "identify buffer alignment");
                let mut page = vec![0u8; 4096];
                match cmd.cdw10 & 0xFF {
                    1 => {
                        page[0..2].copy_from_slice(&0x1b36u16.to_le_bytes());
                        fill(&mut page[4..24], self.cfg.serial);
                        fill(&mut page[24..64], self.cfg.model);
                        fill(&mut page[64..72], "1.0");
                        page[77] = self.cfg.mdts;
                        page[512] = 0x66;
                        page[513] = 0x44;
                        page[516..520].copy_from_slice(&1u32.to_le_bytes());
                    }
                    0 => {
                        if cmd.nsid != 1 {
                            return 0x0B; // Invalid Namespace or Format
                        }
                        page[0..8].copy_from_slice(&self.cfg.lbas.to_le_bytes());
                        page[8..16].copy_from_slice(&self.cfg.lbas.to_le_bytes());
                        page[25] = 1; // two formats
                        page[26] = 1; // the second in use
                                      // LBAF0: 512 bytes; LBAF1: the configured one.
                        let f0 = 9u32 << 16;
                        let f1 =
                            (u32::from(self.cfg.lba_shift) << 16) | u32::from(self.cfg.metadata);
                        page[128..132].copy_from_slice(&f0.to_le_bytes());
                        page[132..136].copy_from_slice(&f1.to_le_bytes());
                    }
                    _ => return 0x02, // Invalid Field in Command
                }
                self.mem.borrow_mut().write(cmd.prp1, &page);
                0
            }
            0x05 => {
                let qid = cmd.cdw10 as u16;
                let size = (cmd.cdw10 >> 16) as u16;
                assert_eq!(cmd.cdw11 & 1, 1, "CQ must be physically contiguous");
                if qid == 0 || self.cqs.contains_key(&qid) {
                    return (1 << 8) | 0x01; // Invalid Queue Identifier
                }
                if size == 0 || size > self.cfg.mqes {
                    return (1 << 8) | 0x02; // Invalid Queue Size
                }
                self.io_cq_interrupts = Some(cmd.cdw11 & 2 != 0);
                self.cqs.insert(qid, Cq::new(cmd.prp1, size + 1));
                0
            }
            0x01 => {
                let qid = cmd.cdw10 as u16;
                let size = (cmd.cdw10 >> 16) as u16;
                let cqid = (cmd.cdw11 >> 16) as u16;
                assert_eq!(cmd.cdw11 & 1, 1, "SQ must be physically contiguous");
                if cqid == 0 || !self.cqs.contains_key(&cqid) {
                    return 1 << 8; // Completion Queue Invalid (SCT 1, SC 0)
                }
                if qid == 0 || self.sqs.contains_key(&qid) {
                    return (1 << 8) | 0x01;
                }
                if size == 0 || size > self.cfg.mqes {
                    return (1 << 8) | 0x02;
                }
                self.sqs.insert(
                    qid,
                    Sq {
                        base: cmd.prp1,
                        entries: size + 1,
                        head: 0,
                        cqid,
                    },
                );
                0
            }
            0x00 => {
                let qid = cmd.cdw10 as u16;
                if qid == 0 || self.sqs.remove(&qid).is_none() {
                    return (1 << 8) | 0x01;
                }
                0
            }
            0x04 => {
                let qid = cmd.cdw10 as u16;
                if self.sqs.values().any(|sq| sq.cqid == qid) {
                    return (1 << 8) | 0x0C; // Invalid Queue Deletion
                }
                if qid == 0 || self.cqs.remove(&qid).is_none() {
                    return (1 << 8) | 0x01;
                }
                0
            }
            _ => 0x01, // Invalid Command Opcode
        }
    }

    fn nvm(&mut self, cmd: &Cmd) -> u16 {
        if cmd.nsid != 1 {
            return 0x0B;
        }
        match cmd.opcode {
            0x00 => {
                self.flushes += 1;
                0
            }
            0x01 | 0x02 => {
                let slba = u64::from(cmd.cdw10) | (u64::from(cmd.cdw11) << 32);
                let blocks = (cmd.cdw12 & 0xFFFF) + 1;
                let len = (blocks as usize) << self.cfg.lba_shift;
                if self.cfg.mdts != 0 && len > (4096usize << self.cfg.mdts) {
                    return 0x02; // Invalid Field in Command
                }
                if slba + u64::from(blocks) > self.cfg.lbas {
                    return 0x80; // LBA Out of Range
                }
                let (pages, prp_list) = self.prp_pages(cmd.prp1, cmd.prp2, len);
                let mut at = (slba << self.cfg.lba_shift) as usize;
                let mut left = len;
                for (page, n) in &pages {
                    let n = (*n).min(left);
                    let mut mem = self.mem.borrow_mut();
                    if cmd.opcode == 0x02 {
                        mem.write(*page, &self.disk[at..at + n]);
                    } else {
                        mem.read(*page, &mut self.disk[at..at + n]);
                    }
                    at += n;
                    left -= n;
                }
                self.io.push(IoRecord {
                    opcode: cmd.opcode,
                    slba,
                    blocks,
                    pages: pages.len(),
                    prp_list,
                });
                0
            }
            _ => 0x01,
        }
    }

    /// The memory a PRP pair describes (NVMe 1.4 §4.3): (address, bytes) per page,
    /// and whether PRP2 was a list.
    fn prp_pages(&mut self, prp1: u64, prp2: u64, len: usize) -> (Vec<(u64, usize)>, bool) {
        assert_eq!(prp1 % 4, 0, "PRP1 must be dword aligned");
        let first = (PAGE - prp1 % PAGE) as usize;
        let mut pages = vec![(prp1, first.min(len))];
        if len <= first {
            return (pages, false);
        }
        let rest = len - first;
        if rest <= PAGE as usize {
            assert_eq!(prp2 % PAGE, 0, "PRP2 page must be page aligned");
            pages.push((prp2, rest));
            return (pages, false);
        }
        assert_eq!(prp2 % 8, 0, "PRP list must be qword aligned");
        let count = rest.div_ceil(PAGE as usize);
        assert!(
            count <= 512 - (prp2 % PAGE / 8) as usize,
            "PRP list chaining not modelled"
        );
        for i in 0..count {
            let entry = self.mem.borrow_mut().u64(prp2 + 8 * i as u64);
            assert_eq!(entry % PAGE, 0, "PRP entry {i} not page aligned");
            pages.push((entry, PAGE as usize));
        }
        (pages, true)
    }
}

impl Cq {
    fn new(base: u64, entries: u16) -> Self {
        Self {
            base,
            entries,
            tail: 0,
            head: 0,
            phase: true,
        }
    }
}

struct Cmd {
    opcode: u8,
    nsid: u32,
    prp1: u64,
    prp2: u64,
    cdw10: u32,
    cdw11: u32,
    cdw12: u32,
}

fn fill(field: &mut [u8], text: &str) {
    field.fill(b' ');
    field[..text.len()].copy_from_slice(text.as_bytes());
}

pub struct Bar(pub Rc<RefCell<Model>>);

impl Registers for Bar {
    fn read32(&mut self, offset: usize) -> u32 {
        let m = self.0.borrow();
        match offset {
            0x00 => m.cap() as u32,
            0x04 => (m.cap() >> 32) as u32,
            0x08 => 0x0001_0400,
            0x14 => m.cc,
            0x1C => m.csts,
            0x24 => m.aqa,
            _ => panic!("read32 of register {offset:#x}"),
        }
    }

    fn write32(&mut self, offset: usize, value: u32) {
        let mut m = self.0.borrow_mut();
        match offset {
            0x0C => m.intms |= value,
            0x14 => m.set_cc(value),
            0x24 => {
                assert_eq!(m.cc & 1, 0, "AQA written while enabled");
                m.aqa = value;
            }
            o if o >= 0x1000 => m.doorbell(o, value),
            _ => panic!("write32 of register {offset:#x}"),
        }
    }

    fn read64(&mut self, offset: usize) -> u64 {
        let m = self.0.borrow();
        match offset {
            0x00 => m.cap(),
            0x28 => m.asq,
            0x30 => m.acq,
            _ => panic!("read64 of register {offset:#x}"),
        }
    }

    fn write64(&mut self, offset: usize, value: u64) {
        let mut m = self.0.borrow_mut();
        assert_eq!(m.cc & 1, 0, "admin queue base written while enabled");
        match offset {
            0x28 => m.asq = value,
            0x30 => m.acq = value,
            _ => panic!("write64 of register {offset:#x}"),
        }
    }
}

/// A model controller and a driver's three handles on it.
pub struct Rig {
    pub model: Rc<RefCell<Model>>,
    pub mem: Rc<RefCell<Memory>>,
    pub clock: Rc<Cell<u64>>,
}

pub type Driver = nvme::Controller<Bar, TestDma, TestClock>;

impl Rig {
    pub fn new(cfg: Config) -> Self {
        let mem = Rc::new(RefCell::new(Memory::default()));
        Self {
            model: Rc::new(RefCell::new(Model::new(cfg, mem.clone()))),
            mem,
            clock: Rc::new(Cell::new(0)),
        }
    }

    pub fn start(&self) -> Result<Driver, nvme::Error> {
        self.start_with_limit(usize::MAX)
    }

    pub fn start_with_limit(&self, limit_pages: usize) -> Result<Driver, nvme::Error> {
        nvme::Controller::new(
            Bar(self.model.clone()),
            TestDma {
                mem: self.mem.clone(),
                limit_pages,
            },
            TestClock(self.clock.clone()),
        )
    }

    pub fn live_allocations(&self) -> usize {
        self.mem.borrow().live.len()
    }
}
