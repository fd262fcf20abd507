//! The host's own PCI configuration space (the machine the hypervisor runs on, not a
//! guest's emulated bus), through configuration mechanism #1: the address at port
//! 0xCF8, the data at 0xCFC (PCI Local Bus 3.0 §3.2.2.3.2). Used at boot, on the boot
//! processor, before the other processors start: nothing else touches these ports.

use core::fmt;
use x86_64::instructions::port::Port;

const CONFIG_ADDRESS: u16 = 0xCF8;
const CONFIG_DATA: u16 = 0xCFC;

/// Command register bits (PCI 3.0 §6.2.2).
pub const COMMAND_IO: u16 = 1 << 0;
pub const COMMAND_MEMORY: u16 = 1 << 1;
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Function {
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl fmt::Display for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

impl Function {
    pub fn read32(&self, offset: u8) -> u32 {
        let mut address: Port<u32> = Port::new(CONFIG_ADDRESS);
        let mut data: Port<u32> = Port::new(CONFIG_DATA);
        // SAFETY: mechanism #1's two ports; selecting a register and reading it has
        // no side effect on the standard header registers read here. Boot-time, one
        // processor: the address/data pair is not interleaved with another access.
        unsafe {
            address.write(self.address(offset));
            data.read()
        }
    }

    pub fn write32(&self, offset: u8, value: u32) {
        let mut address: Port<u32> = Port::new(CONFIG_ADDRESS);
        let mut data: Port<u32> = Port::new(CONFIG_DATA);
        // SAFETY: as in `read32`; callers write only the command register and a BAR
        // of the function they drive.
        unsafe {
            address.write(self.address(offset));
            data.write(value);
        }
    }

    fn address(&self, offset: u8) -> u32 {
        0x8000_0000
            | (u32::from(self.bus) << 16)
            | (u32::from(self.device) << 11)
            | (u32::from(self.function) << 8)
            | u32::from(offset & 0xFC)
    }

    pub fn vendor_device(&self) -> (u16, u16) {
        let id = self.read32(0x00);
        (id as u16, (id >> 16) as u16)
    }

    /// Class, subclass and programming interface.
    pub fn class(&self) -> (u8, u8, u8) {
        let c = self.read32(0x08);
        ((c >> 24) as u8, (c >> 16) as u8, (c >> 8) as u8)
    }

    pub fn command(&self) -> u16 {
        self.read32(0x04) as u16
    }

    /// Writes the command register; the status half of the dword is written as zero,
    /// which leaves its write-1-to-clear bits alone.
    pub fn set_command(&self, command: u16) {
        self.write32(0x04, u32::from(command));
    }

    /// BAR `index` as a memory BAR: its base and size (PCI 3.0 §6.2.5.1), sized with
    /// memory decoding off and restored afterwards. `None` for an I/O BAR.
    pub fn memory_bar(&self, index: u8) -> Option<MemoryBar> {
        let offset = 0x10 + 4 * index;
        let low = self.read32(offset);
        if low & 1 != 0 {
            return None;
        }
        let is64 = (low >> 1) & 0b11 == 0b10;
        let command = self.command();
        self.set_command(command & !COMMAND_MEMORY);
        self.write32(offset, u32::MAX);
        let mut mask = u64::from(self.read32(offset) & !0xF);
        self.write32(offset, low);
        let mut base = u64::from(low & !0xF);
        if is64 {
            let high = self.read32(offset + 4);
            self.write32(offset + 4, u32::MAX);
            mask |= u64::from(self.read32(offset + 4)) << 32;
            self.write32(offset + 4, high);
            base |= u64::from(high) << 32;
        } else {
            mask |= 0xFFFF_FFFF_0000_0000;
        }
        self.set_command(command);
        Some(MemoryBar {
            base,
            size: (!mask).wrapping_add(1),
            is64,
        })
    }
}

impl Function {
    /// BAR `index` as an I/O BAR: its port base (PCI 3.0 §6.2.5.1: bit 0 set, bits
    /// 31:2 the address). `None` for a memory BAR, an unassigned one (0) or one
    /// beyond the 64 KiB port space.
    pub fn io_bar(&self, index: u8) -> Option<u16> {
        let low = self.read32(0x10 + 4 * index);
        if low & 1 == 0 {
            return None;
        }
        u16::try_from(low & !0x3).ok().filter(|&base| base != 0)
    }
}

#[derive(Clone, Copy, Debug)]
pub struct MemoryBar {
    pub base: u64,
    /// 0 when the BAR reads back no writable address bits (not implemented).
    pub size: u64,
    pub is64: bool,
}

/// Every function present, bus by bus (a brute-force scan: no bridge walking, so
/// buses behind bridges the firmware numbered are found too).
pub fn functions() -> impl Iterator<Item = Function> {
    (0..=255u8).flat_map(|bus| {
        (0..32u8).flat_map(move |device| {
            let first = Function {
                bus,
                device,
                function: 0,
            };
            let present = first.vendor_device().0 != 0xFFFF;
            // Header type bit 7: a multi-function device.
            let multi = present && first.read32(0x0C) & (1 << 23) != 0;
            let count = match (present, multi) {
                (false, _) => 0,
                (true, false) => 1,
                (true, true) => 8,
            };
            (0..count)
                .map(move |function| Function {
                    bus,
                    device,
                    function,
                })
                .filter(|f| f.vendor_device().0 != 0xFFFF)
        })
    })
}
