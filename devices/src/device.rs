//! The one interface every bus-attached device of a VM's platform answers
//! ([`BusDevice`]), and what an access can cause besides its data ([`Effects`]).
//!
//! A device is registered once on the port-I/O bus or the MMIO bus of its VM's
//! platform ([`crate::Bus`]); the platform hands it each access as an [`Access`]
//! (the address the guest used, the offset into the device's range, the width and
//! the guest time) and applies the [`Effects`] it returns: interrupt line changes go
//! to the interrupt controllers, a reset request or a debug-exit code to the VMM. So
//! a device never reaches another device, the CPU or the VMM itself, and the
//! platform never polls a device to learn what an access did (crosvm's
//! `BusAccessInfo` and rust-vmm's vm-device are the models).
//!
//! Devices whose state changes with time alone (a timer) or from outside the guest
//! (console input) report their lines from [`BusDevice::poll`], which the platform
//! calls before it delivers interrupts.

use alloc::vec::Vec;
use core::any::Any;

use crate::state::StateError;

/// One guest access to a device's range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// The port or guest-physical address the guest used.
    pub addr: u64,
    /// `addr` minus the base the device was registered at.
    pub offset: u64,
    /// Width in bytes: 1, 2, 4 (or 8 for MMIO).
    pub size: u8,
    /// The guest's time in ns (never goes backwards).
    pub now_ns: u64,
}

/// An interrupt line change a device asks for (ISA numbering: the platform sends it
/// to both the 8259 PIC pair and the IOAPIC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqLine {
    /// The line is now at this level (level-style devices: UART, i8042).
    Level(u8, bool),
    /// One edge (a timer period elapsed).
    Pulse(u8),
}

/// A message-signalled interrupt (PCI MSI or MSI-X): the memory write a PCI function
/// asks for, `data` (32 bits) to `address`. On x86 the address lies in the
/// 0xFEEx_xxxx window and names the destination local APIC(s), the data holds the
/// vector and delivery mode (SDM Vol. 3A 11.11); the platform hands it to the local
/// APICs as the IOAPIC's messages go, and never writes it to guest RAM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

/// What an access (or a poll) caused besides the data it returned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Up to two line changes (the i8042 drives two lines).
    pub lines: [Option<IrqLine>; 2],
    /// Up to two message-signalled interrupts to deliver, in order (PCI functions
    /// with MSI-X; one that finds no room stays pending in its function and comes
    /// out of a later access or poll).
    pub msi: [Option<MsiMessage>; 2],
    /// The guest asked for a machine reset (i8042 pulse, port 0x92, 0xCF9).
    pub reset: bool,
    /// The guest wrote an exit code to the debug-exit device.
    pub exit: Option<u32>,
}

impl Effects {
    pub const NONE: Effects = Effects {
        lines: [None, None],
        msi: [None, None],
        reset: false,
        exit: None,
    };

    /// One line at a level.
    pub const fn level(irq: u8, high: bool) -> Self {
        Effects {
            lines: [Some(IrqLine::Level(irq, high)), None],
            ..Self::NONE
        }
    }

    /// Adds a line change (the first free slot; a third one is a device bug).
    pub fn with_line(mut self, line: IrqLine) -> Self {
        if let Some(slot) = self.lines.iter_mut().find(|l| l.is_none()) {
            *slot = Some(line);
        }
        self
    }

    /// Adds a message-signalled interrupt; `false` (and nothing added) when both
    /// slots are taken.
    pub fn push_msi(&mut self, msg: MsiMessage) -> bool {
        match self.msi.iter_mut().find(|m| m.is_none()) {
            Some(slot) => {
                *slot = Some(msg);
                true
            }
            None => false,
        }
    }

    /// Both sets of effects (lines and messages of `other` after ours, as room allows).
    pub fn merge(mut self, other: Effects) -> Self {
        for line in other.lines.into_iter().flatten() {
            self = self.with_line(line);
        }
        for msg in other.msi.into_iter().flatten() {
            self.push_msi(msg);
        }
        self.reset |= other.reset;
        self.exit = self.exit.or(other.exit);
        self
    }

    /// The line changes.
    pub fn lines(&self) -> impl Iterator<Item = IrqLine> + '_ {
        self.lines.iter().flatten().copied()
    }

    /// The message-signalled interrupts, in delivery order.
    pub fn msis(&self) -> impl Iterator<Item = MsiMessage> + '_ {
        self.msi.iter().flatten().copied()
    }
}

/// A device on a VM's port-I/O or MMIO bus. See the module documentation.
pub trait BusDevice: Send {
    /// A short name for reports ("com1", "pit", ...).
    fn name(&self) -> &'static str;
    /// A read; the value is in the low `access.size` bytes.
    fn read(&mut self, access: &Access) -> (u64, Effects);
    /// A write of the low `access.size` bytes of `value`.
    fn write(&mut self, access: &Access, value: u64) -> Effects;
    /// Line changes that came from time or from outside the guest.
    fn poll(&mut self, _now_ns: u64) -> Effects {
        Effects::NONE
    }
    /// When the device next needs [`Self::poll`] (a timer's next expiry).
    fn next_deadline_ns(&self) -> Option<u64> {
        None
    }
    /// The device's snapshot (its `state()`, see [`crate::state`]), for a snapshot
    /// of the platform. A device without snapshot support says so
    /// ([`StateError::Unsupported`], the default), so that a platform snapshot
    /// fails rather than leave it out.
    fn snapshot(&self) -> Result<Vec<u8>, StateError> {
        Err(StateError::Unsupported {
            device: self.name(),
        })
    }
    /// Takes back what [`Self::snapshot`] returned; nothing changes on an error.
    fn restore_snapshot(&mut self, _data: &[u8]) -> Result<(), StateError> {
        Err(StateError::Unsupported {
            device: self.name(),
        })
    }
    /// For the VMM's typed access to one device (console input to the UART).
    fn as_any_mut(&mut self) -> &mut dyn Any;
}
