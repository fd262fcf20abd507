//! A model of one IDE channel's register file for the driver's tests: up to two
//! devices (an ATA disk with sparse contents, or an ATAPI device), the shadow
//! registers with their 48-bit "previous content" bytes, the software reset, and
//! PIO data-in / data-out blocks, with faults to inject: a device that stays busy,
//! an unreadable sector, a device fault on flush, a floating bus.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use ata::{Channel, Clock, Ports, Timeouts};

pub const CHANNEL: Channel = Channel::PRIMARY;

const BSY: u8 = 0x80;
const DRDY: u8 = 0x40;
const DF: u8 = 0x20;
const DRQ: u8 = 0x08;
const ERR: u8 = 0x01;
const ABRT: u8 = 0x04;
const IDNF: u8 = 0x10;
const UNC: u8 = 0x40;

pub enum Kind {
    Ata {
        sectors: u64,
        identify: Box<[u16; 256]>,
    },
    Atapi,
}

pub struct Device {
    pub kind: Kind,
    /// Sector contents (absent sectors read as zeros).
    pub data: HashMap<u64, [u8; 512]>,
    /// Status reads that show BSY after each command or block.
    pub busy_reads: u32,
    /// BSY never clears.
    pub stuck_busy: bool,
    /// Reading this sector fails with UNC.
    pub bad_sector: Option<u64>,
    /// FLUSH CACHE EXT ends with DF.
    pub fault_on_flush: bool,
    /// IDENTIFY DEVICE offers a second block of data (a protocol error).
    pub identify_extra_block: bool,
    pub flushes: u32,
    // Shadow registers: current and previous (HOB) contents.
    count: [u8; 2],
    lba: [[u8; 2]; 3],
    error: u8,
    status: u8,
    busy_left: u32,
}

/// The identify data of a disk with `sectors` sectors: LBA and 48-bit addressing,
/// a write cache, a valid checksum.
pub fn identify_words(model: &str, serial: &str, sectors: u64) -> [u16; 256] {
    let mut w = [0u16; 256];
    w[0] = 0x0040;
    let put = |w: &mut [u16; 256], at: usize, words: usize, s: &str| {
        let mut bytes = vec![b' '; words * 2];
        bytes[..s.len()].copy_from_slice(s.as_bytes());
        for i in 0..words {
            w[at + i] = u16::from_be_bytes([bytes[2 * i], bytes[2 * i + 1]]);
        }
    };
    put(&mut w, 10, 10, serial);
    put(&mut w, 23, 4, "1.0");
    put(&mut w, 27, 20, model);
    w[49] = 1 << 9;
    w[82] = 0x4000 | (1 << 5);
    w[83] = 0x4000 | (1 << 10) | (1 << 13);
    w[60] = sectors.min(0x0FFF_FFFF) as u16;
    w[61] = (sectors.min(0x0FFF_FFFF) >> 16) as u16;
    for i in 0..4 {
        w[100 + i] = (sectors >> (16 * i)) as u16;
    }
    seal(&mut w);
    w
}

/// Sets word 255's signature and checksum.
pub fn seal(w: &mut [u16; 256]) {
    w[255] = 0x00A5;
    let sum = w
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .fold(0u8, |a, b| a.wrapping_add(b));
    w[255] |= u16::from(0u8.wrapping_sub(sum)) << 8;
}

impl Device {
    pub fn disk(sectors: u64) -> Self {
        Self::new(Kind::Ata {
            sectors,
            identify: Box::new(identify_words("Model ATA Disk", "hv-ata-1", sectors)),
        })
    }

    pub fn atapi() -> Self {
        Self::new(Kind::Atapi)
    }

    pub fn new(kind: Kind) -> Self {
        Self {
            kind,
            data: HashMap::new(),
            busy_reads: 2,
            stuck_busy: false,
            bad_sector: None,
            fault_on_flush: false,
            identify_extra_block: false,
            flushes: 0,
            count: [0; 2],
            lba: [[0; 2]; 3],
            error: 0,
            status: DRDY,
            busy_left: 0,
        }
    }

    fn signature(&mut self) {
        let (mid, high) = match self.kind {
            Kind::Ata { .. } => (0, 0),
            Kind::Atapi => (0x14, 0xEB),
        };
        self.lba = [[1, 0], [mid, 0], [high, 0]];
        self.count = [1, 0];
    }

    fn busy(&mut self) {
        self.busy_left = self.busy_reads;
    }

    fn status(&mut self) -> u8 {
        if self.stuck_busy {
            return BSY;
        }
        if self.busy_left > 0 {
            self.busy_left -= 1;
            return BSY;
        }
        self.status
    }
}

/// What the channel is doing.
enum State {
    Idle,
    /// Sectors to hand out: the buffer, the next sector, how many left.
    DataIn {
        buf: Vec<u8>,
        pos: usize,
        next: u64,
        left: u64,
    },
    DataOut {
        buf: Vec<u8>,
        next: u64,
        left: u64,
    },
}

/// A command as the model saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    pub drive: usize,
    pub command: u8,
    pub lba: u64,
    pub count: u64,
    /// nIEN was set in Device Control when it was issued.
    pub masked: bool,
}

pub struct Model {
    pub devices: [Option<Device>; 2],
    /// Nothing drives the bus: every read is FFh.
    pub floating: bool,
    pub issued: Vec<Issued>,
    pub resets: u32,
    selected: usize,
    control: u8,
    state: State,
}

impl Model {
    pub fn new(master: Option<Device>, slave: Option<Device>) -> Self {
        Self {
            devices: [master, slave],
            floating: false,
            issued: Vec::new(),
            resets: 0,
            selected: 0,
            control: 0,
            state: State::Idle,
        }
    }

    fn dev(&mut self) -> Option<&mut Device> {
        self.devices[self.selected].as_mut()
    }

    fn read_status(&mut self) -> u8 {
        if self.floating {
            return 0xFF;
        }
        match self.dev() {
            // Device 1 absent: device 0 answers for it with zeros.
            None => 0,
            Some(d) => d.status(),
        }
    }

    fn command(&mut self, op: u8) {
        let masked = self.control & 0x02 != 0;
        let drive = self.selected;
        let Some(d) = self.devices[drive].as_mut() else {
            return;
        };
        let lba = u64::from_le_bytes([
            d.lba[0][0],
            d.lba[1][0],
            d.lba[2][0],
            d.lba[0][1],
            d.lba[1][1],
            d.lba[2][1],
            0,
            0,
        ]);
        let raw = u64::from(u16::from_le_bytes([d.count[0], d.count[1]]));
        let count = if raw == 0 { 65_536 } else { raw };
        self.issued.push(Issued {
            drive,
            command: op,
            lba,
            count,
            masked,
        });
        d.busy();
        d.error = 0;
        d.status = DRDY;
        let identify_blocks = if d.identify_extra_block { 2 } else { 1 };
        let (sectors, identify) = match &d.kind {
            Kind::Ata { sectors, identify } => (*sectors, **identify),
            Kind::Atapi => {
                // A packet device aborts IDENTIFY DEVICE and shows its signature.
                d.signature();
                d.status = DRDY | ERR;
                d.error = ABRT;
                return;
            }
        };
        match op {
            0xEC => {
                let buf = identify.iter().flat_map(|w| w.to_le_bytes()).collect();
                d.status = DRDY | DRQ;
                self.state = State::DataIn {
                    buf,
                    pos: 0,
                    next: 0,
                    left: identify_blocks,
                };
            }
            0x24 | 0x34 if lba + count > sectors => {
                d.status = DRDY | ERR;
                d.error = IDNF;
            }
            0x24 => {
                self.state = State::DataIn {
                    buf: Vec::new(),
                    pos: 0,
                    next: lba,
                    left: count,
                };
                self.load_sector();
            }
            0x34 => {
                d.status = DRDY | DRQ;
                self.state = State::DataOut {
                    buf: Vec::new(),
                    next: lba,
                    left: count,
                };
            }
            0xEA => {
                d.flushes += 1;
                if d.fault_on_flush {
                    d.status = DRDY | DF | ERR;
                    d.error = ABRT;
                }
            }
            _ => {
                d.status = DRDY | ERR;
                d.error = ABRT;
            }
        }
    }

    /// Puts the next sector of a read into the buffer (or fails it).
    fn load_sector(&mut self) {
        let State::DataIn { next, buf, pos, .. } = &mut self.state else {
            return;
        };
        let (sector, d) = (*next, self.devices[self.selected].as_mut().unwrap());
        if d.bad_sector == Some(sector) {
            d.status = DRDY | ERR;
            d.error = UNC;
            self.state = State::Idle;
            return;
        }
        *buf = d.data.get(&sector).copied().unwrap_or([0; 512]).to_vec();
        *pos = 0;
        d.status = DRDY | DRQ;
    }

    fn read_data(&mut self) -> u16 {
        let selected = self.selected;
        let State::DataIn {
            buf,
            pos,
            next,
            left,
        } = &mut self.state
        else {
            return 0xFFFF;
        };
        let w = u16::from_le_bytes([buf[*pos], buf[*pos + 1]]);
        *pos += 2;
        if *pos == 512 {
            *left -= 1;
            *next += 1;
            let d = self.devices[selected].as_mut().unwrap();
            d.busy();
            if *left == 0 {
                d.status = DRDY;
                self.state = State::Idle;
            } else {
                self.load_sector();
            }
        }
        w
    }

    fn write_data(&mut self, value: u16) {
        let selected = self.selected;
        let State::DataOut { buf, next, left } = &mut self.state else {
            return;
        };
        buf.extend_from_slice(&value.to_le_bytes());
        if buf.len() == 512 {
            let d = self.devices[selected].as_mut().unwrap();
            d.data.insert(*next, buf.as_slice().try_into().unwrap());
            buf.clear();
            *next += 1;
            *left -= 1;
            d.busy();
            if *left == 0 {
                d.status = DRDY;
                self.state = State::Idle;
            }
        }
    }

    fn write_control(&mut self, value: u8) {
        let was_reset = self.control & 0x04 != 0;
        self.control = value;
        if was_reset && value & 0x04 == 0 {
            self.resets += 1;
            self.state = State::Idle;
            self.selected = 0;
            for d in self.devices.iter_mut().flatten() {
                d.signature();
                d.status = DRDY;
                d.error = 1; // diagnostics passed
                d.busy();
            }
        }
    }
}

/// The model's ports, shared with the test that inspects it.
#[derive(Clone)]
pub struct ModelPorts(pub Rc<RefCell<Model>>);

impl Ports for ModelPorts {
    fn read8(&mut self, port: u16) -> u8 {
        let mut m = self.0.borrow_mut();
        if m.floating {
            return 0xFF;
        }
        if port == CHANNEL.control {
            return m.read_status();
        }
        match port.wrapping_sub(CHANNEL.command) {
            1 => m.dev().map_or(0, |d| d.error),
            2 => m.dev().map_or(0, |d| d.count[0]),
            r @ 3..=5 => m.dev().map_or(0, |d| d.lba[usize::from(r - 3)][0]),
            6 => 0xA0 | ((m.selected as u8) << 4),
            7 => m.read_status(),
            _ => panic!("8-bit read of port {port:#x}"),
        }
    }

    fn write8(&mut self, port: u16, value: u8) {
        let mut m = self.0.borrow_mut();
        if port == CHANNEL.control {
            return m.write_control(value);
        }
        match port.wrapping_sub(CHANNEL.command) {
            // Features: not used by the driver's commands.
            1 => {}
            2 => {
                for d in m.devices.iter_mut().flatten() {
                    d.count = [value, d.count[0]];
                }
            }
            r @ 3..=5 => {
                for d in m.devices.iter_mut().flatten() {
                    let reg = &mut d.lba[usize::from(r - 3)];
                    *reg = [value, reg[0]];
                }
            }
            6 => m.selected = usize::from(value >> 4 & 1),
            7 => m.command(value),
            _ => panic!("8-bit write of port {port:#x}"),
        }
    }

    fn read16(&mut self, port: u16) -> u16 {
        assert_eq!(port, CHANNEL.command, "16-bit read off the data port");
        self.0.borrow_mut().read_data()
    }

    fn write16(&mut self, port: u16, value: u16) {
        assert_eq!(port, CHANNEL.command, "16-bit write off the data port");
        self.0.borrow_mut().write_data(value)
    }
}

/// A clock that moves 50 us per reading.
#[derive(Clone, Default)]
pub struct StepClock(pub Rc<Cell<u64>>);

impl Clock for StepClock {
    fn now_us(&mut self) -> u64 {
        let t = self.0.get() + 50;
        self.0.set(t);
        t
    }
}

/// Short limits so time-outs end the tests quickly.
pub const TIMEOUTS: Timeouts = Timeouts {
    reset_ms: 100,
    command_ms: 20,
    flush_ms: 50,
};

pub fn rig(master: Option<Device>, slave: Option<Device>) -> (ModelPorts, StepClock) {
    (
        ModelPorts(Rc::new(RefCell::new(Model::new(master, slave)))),
        StepClock::default(),
    )
}
