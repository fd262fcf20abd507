//! An ATA host driver: the hypervisor drives an IDE disk itself (Bochs, which has no
//! NVMe, and older machines) through this crate.
//!
//! The crate is pure logic over two small traits the kernel implements: [`Ports`]
//! (the channel's I/O ports) and [`Clock`] (every wait has a time limit). It holds
//! no `unsafe` and never touches hardware itself, so the host tests run it against a
//! model of the register file (`tests/`).
//!
//! What it does, polled and by programmed I/O, with the device's interrupt masked
//! (nIEN): device selection, a software reset of the channel, IDENTIFY DEVICE (the
//! reset signature tells an ATA device from an ATAPI one first), and READ SECTORS
//! EXT, WRITE SECTORS EXT and FLUSH CACHE EXT with 48-bit LBAs. Commands and
//! IDENTIFY words are cited from ATA/ATAPI Command Set (ATA8-ACS, T13/1699-D) as
//! "ACS"; the register protocol from the parallel transport (ATA/ATAPI-7 volume 2,
//! T13/1532D), cited as "ATA-7 v2".

#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

mod disk;
mod error;
pub mod identify;
pub mod regs;

pub use disk::{
    identify_device, probe, reset_channel, Disk, Probe, Timeouts, MAX_SECTORS_PER_COMMAND,
};
pub use error::Error;
pub use identify::Identity;

/// The unit of every transfer: the driver refuses devices whose logical sectors are
/// larger (IDENTIFY words 106, 117-118).
pub const SECTOR_SIZE: usize = 512;

/// Access to a channel's I/O ports. The implementation makes each call one `IN` or
/// `OUT` of that width to `port`, in program order.
pub trait Ports {
    fn read8(&mut self, port: u16) -> u8;
    fn write8(&mut self, port: u16, value: u8);
    /// The data register is 16 bits wide in PIO (ATA-7 v2, Data register).
    fn read16(&mut self, port: u16) -> u16;
    fn write16(&mut self, port: u16, value: u16);
}

/// A monotonic clock for the driver's time limits.
pub trait Clock {
    /// Microseconds since any fixed point.
    fn now_us(&mut self) -> u64;
    /// Called in every polling loop: a place to pause the processor (`PAUSE`).
    fn relax(&mut self) {}
}

/// Where a channel's registers are: the command block (data .. status/command, eight
/// ports) and the control block's Alternate Status / Device Control port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Channel {
    pub command: u16,
    pub control: u16,
}

impl Channel {
    /// The legacy (ISA compatibility) primary channel: 1F0h-1F7h and 3F6h.
    pub const PRIMARY: Channel = Channel {
        command: 0x1F0,
        control: 0x3F6,
    };
    /// The legacy secondary channel: 170h-177h and 376h.
    pub const SECONDARY: Channel = Channel {
        command: 0x170,
        control: 0x376,
    };

    /// A channel of a PCI IDE controller in native mode: the command block at the
    /// I/O BAR `command_bar` (8 ports) and the control block's BAR (4 ports) whose
    /// third port is Alternate Status / Device Control (PCI IDE Controller
    /// Specification 1.0, §2).
    pub fn native(command_bar: u16, control_bar: u16) -> Option<Channel> {
        Some(Channel {
            command: command_bar,
            control: control_bar.checked_add(2)?,
        })
    }

    /// The command-block port `offset` (0-7) from the base.
    pub(crate) fn reg(&self, offset: u16) -> u16 {
        self.command.wrapping_add(offset)
    }
}

/// The two devices a channel can carry (the DEV bit of the Device register).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drive {
    /// Device 0 ("master").
    Master,
    /// Device 1 ("slave").
    Slave,
}

impl Drive {
    /// Bit 4 of the Device register.
    pub(crate) fn dev_bit(self) -> u8 {
        match self {
            Drive::Master => 0,
            Drive::Slave => 1 << 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Drive::Master => "master",
            Drive::Slave => "slave",
        }
    }
}
