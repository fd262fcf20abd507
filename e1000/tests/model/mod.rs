//! A register and descriptor model of an 8254x controller, enough to check the
//! driver: registers with their reset values, RST that clears (or never clears),
//! EERD in either layout, and the two legacy rings processed as the manual says
//! (transmit on a TDT write, receive when the test injects a frame), descriptors
//! written back with DD. Knobs make it misbehave: never complete a transmit, write
//! back error bits, a bad length, or a frame over two descriptors.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use e1000::regs::*;
use e1000::Model;

pub struct Device {
    pub model: Model,
    pub regs: HashMap<usize, u32>,
    pub eeprom: [u16; 64],
    /// Receive Address 0 is loaded from the EEPROM at reset (as real parts do).
    pub load_ral_from_eeprom: bool,
    pub reset_sticks: bool,
    pub dead: bool,
    pub never_complete_tx: bool,
    pub link: bool,
    /// Physical start -> bytes.
    pub memory: BTreeMap<u64, Vec<u8>>,
    pub next_free: u64,
    pub freed: Vec<(u64, usize)>,
    /// Frames the device put on the wire.
    pub sent: Vec<Vec<u8>>,
    pub resets: usize,
}

pub type Shared = Rc<RefCell<Device>>;

pub const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

impl Device {
    pub fn new(model: Model) -> Shared {
        let mut eeprom = [0u16; 64];
        for i in 0..3 {
            eeprom[i] = u16::from_le_bytes([MAC[2 * i], MAC[2 * i + 1]]);
        }
        let mut d = Device {
            model,
            regs: HashMap::new(),
            eeprom,
            load_ral_from_eeprom: true,
            reset_sticks: false,
            dead: false,
            never_complete_tx: false,
            link: true,
            memory: BTreeMap::new(),
            next_free: 0x1_0000_0000,
            freed: Vec::new(),
            sent: Vec::new(),
            resets: 0,
        };
        d.hardware_reset();
        Rc::new(RefCell::new(d))
    }

    fn hardware_reset(&mut self) {
        self.regs.clear();
        if self.load_ral_from_eeprom {
            let m: Vec<u8> = self.eeprom[..3]
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .collect();
            self.regs
                .insert(RAL0, u32::from_le_bytes([m[0], m[1], m[2], m[3]]));
            self.regs
                .insert(RAH0, u32::from(m[4]) | (u32::from(m[5]) << 8) | RAH_AV);
        }
    }

    pub fn reg(&self, offset: usize) -> u32 {
        self.regs.get(&offset).copied().unwrap_or(0)
    }

    fn read32(&mut self, offset: usize) -> u32 {
        if self.dead {
            return u32::MAX;
        }
        match offset {
            STATUS => {
                if self.link && self.reg(CTRL) & CTRL_SLU != 0 {
                    STATUS_LU
                } else {
                    0
                }
            }
            ICR => self.regs.remove(&ICR).unwrap_or(0),
            _ => self.reg(offset),
        }
    }

    fn write32(&mut self, offset: usize, value: u32) {
        if self.dead {
            return;
        }
        match offset {
            CTRL if value & CTRL_RST != 0 => {
                self.resets += 1;
                self.hardware_reset();
                if self.reset_sticks {
                    self.regs.insert(CTRL, CTRL_RST);
                }
            }
            EERD if value & EERD_START != 0 => {
                let (shift, done) = match self.model {
                    Model::I8254x => (EERD_ADDR_SHIFT_8254X, EERD_DONE_8254X),
                    Model::I82574 => (EERD_ADDR_SHIFT_82574, EERD_DONE_82574),
                };
                let mask = if shift == 8 { 0xFF } else { 0x3FFF };
                let word = ((value >> shift) & mask) as usize;
                let data = self.eeprom.get(word).copied().unwrap_or(0xFFFF);
                self.regs
                    .insert(EERD, (u32::from(data) << 16) | done | (value & !1));
            }
            TDT => {
                self.regs.insert(TDT, value);
                self.transmit();
            }
            _ => {
                self.regs.insert(offset, value);
            }
        }
    }

    fn mem(&mut self, phys: u64, len: usize) -> &mut [u8] {
        let (&start, bytes) = self
            .memory
            .range_mut(..=phys)
            .next_back()
            .expect("DMA outside every allocation");
        let off = (phys - start) as usize;
        assert!(off + len <= bytes.len(), "DMA past an allocation's end");
        &mut bytes[off..off + len]
    }

    pub fn read_mem(&mut self, phys: u64, len: usize) -> Vec<u8> {
        self.mem(phys, len).to_vec()
    }

    pub fn write_mem(&mut self, phys: u64, data: &[u8]) {
        self.mem(phys, data.len()).copy_from_slice(data);
    }

    fn ring(&self, bal: usize) -> (u64, usize) {
        let base = u64::from(self.reg(bal)) | (u64::from(self.reg(bal + 4)) << 32);
        (base, self.reg(bal + 8) as usize / 16)
    }

    /// Sends every descriptor from TDH up to TDT (§3.4), writing DD back unless
    /// told never to complete (then TDH does not move either).
    fn transmit(&mut self) {
        if self.reg(TCTL) & TCTL_EN == 0 || self.never_complete_tx {
            return;
        }
        let (base, n) = self.ring(TDBAL);
        while self.reg(TDH) != self.reg(TDT) {
            let head = self.reg(TDH) as usize;
            let d = base + 16 * head as u64;
            let raw = self.read_mem(d, 16);
            let addr = u64::from_le_bytes(raw[..8].try_into().unwrap());
            let len = u16::from_le_bytes([raw[8], raw[9]]) as usize;
            let cmd = raw[11];
            assert!(cmd & 1 != 0, "driver sent a descriptor without EOP");
            let frame = self.read_mem(addr, len);
            self.sent.push(frame);
            if cmd & (1 << 3) != 0 {
                self.write_mem(d + 12, &[1]);
            }
            self.regs.insert(TDH, ((head + 1) % n) as u32);
        }
    }

    /// Places `frame` into the descriptor at RDH as the device does (§3.2.6),
    /// unless the ring is empty (RDH == RDT) or receive is off: then false.
    /// `status`/`errors` override what is written back.
    pub fn receive_with(
        &mut self,
        frame: &[u8],
        status: u8,
        errors: u8,
        length: Option<u16>,
    ) -> bool {
        if self.reg(RCTL) & RCTL_EN == 0 || self.reg(RDH) == self.reg(RDT) {
            return false;
        }
        let (base, n) = self.ring(RDBAL);
        let head = self.reg(RDH) as usize;
        let d = base + 16 * head as u64;
        let raw = self.read_mem(d, 16);
        let addr = u64::from_le_bytes(raw[..8].try_into().unwrap());
        self.write_mem(addr, frame);
        let len = length.unwrap_or(frame.len() as u16);
        self.write_mem(d + 8, &len.to_le_bytes());
        self.write_mem(d + 12, &[status, errors]);
        self.regs.insert(RDH, ((head + 1) % n) as u32);
        true
    }

    /// A good frame: DD and EOP.
    pub fn receive(&mut self, frame: &[u8]) -> bool {
        self.receive_with(frame, 0b11, 0, None)
    }
}

pub struct Regs(pub Shared);

impl e1000::Registers for Regs {
    fn read32(&mut self, offset: usize) -> u32 {
        self.0.borrow_mut().read32(offset)
    }
    fn write32(&mut self, offset: usize, value: u32) {
        self.0.borrow_mut().write32(offset, value)
    }
}

pub struct Dma {
    pub device: Shared,
    /// Pages left before alloc fails.
    pub budget: usize,
}

impl e1000::Dma for Dma {
    fn alloc(&mut self, pages: usize) -> Option<u64> {
        if pages > self.budget {
            return None;
        }
        self.budget -= pages;
        let mut d = self.device.borrow_mut();
        let pa = d.next_free;
        d.next_free += pages as u64 * 4096 + 4096; // a guard gap
        d.memory.insert(pa, vec![0; pages * 4096]);
        Some(pa)
    }
    fn free(&mut self, phys: u64, pages: usize) {
        let mut d = self.device.borrow_mut();
        let bytes = d
            .memory
            .remove(&phys)
            .expect("free of an unknown allocation");
        assert_eq!(bytes.len(), pages * 4096);
        d.freed.push((phys, pages));
        self.budget += pages;
    }
    fn read(&mut self, phys: u64, buf: &mut [u8]) {
        buf.copy_from_slice(&self.device.borrow_mut().read_mem(phys, buf.len()));
    }
    fn write(&mut self, phys: u64, data: &[u8]) {
        self.device.borrow_mut().write_mem(phys, data);
    }
    fn read_u32(&mut self, phys: u64) -> u32 {
        assert_eq!(phys % 4, 0);
        let b = self.device.borrow_mut().read_mem(phys, 4);
        u32::from_le_bytes(b.try_into().unwrap())
    }
}

/// A clock that moves 100 us per reading.
#[derive(Default)]
pub struct Clock(pub u64);

impl e1000::Clock for Clock {
    fn now_us(&mut self) -> u64 {
        self.0 += 100;
        self.0
    }
}

impl Device {
    /// A register write from the test itself (the device "noticing" a tail it had
    /// ignored).
    pub fn write32_public(&mut self, offset: usize, value: u32) {
        self.write32(offset, value)
    }
}
