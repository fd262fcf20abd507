//! PCI functions behind the configuration mechanism of [`crate::PciConfig`]: the
//! [`PciFunction`] interface a function answers (its 256-byte configuration space and
//! its memory BARs), the host bridge at device 0 ([`HostBridge`]), and the
//! [`BarAllocator`] that places BARs in the platform's PCI hole the way firmware does.
//!
//! A function is a plain state machine like every device here. Interrupts come back
//! as [`PciEffects`]: the level of the function's INTx pin (the root turns it into an
//! ISA line through its routing) and MSI-X messages to deliver.
//!
//! References: PCI Local Bus Specification 3.0 (type 0 header, section 6.1; BAR
//! sizing, section 6.2.5.1; capability list, section 6.7; MSI-X, section 6.8.2).

use alloc::vec::Vec;
use core::any::Any;

use crate::device::MsiMessage;
use crate::state::{Reader, StateError, Tag, Writer};

/// Type 0 header registers (byte offsets).
pub mod reg {
    pub const VENDOR_ID: u16 = 0x00;
    pub const COMMAND: u16 = 0x04;
    pub const STATUS: u16 = 0x06;
    pub const REVISION: u16 = 0x08;
    pub const CACHE_LINE: u16 = 0x0C;
    pub const HEADER_TYPE: u16 = 0x0E;
    pub const BAR0: u16 = 0x10;
    pub const SUBSYSTEM_VENDOR_ID: u16 = 0x2C;
    pub const ROM: u16 = 0x30;
    pub const CAPABILITIES: u16 = 0x34;
    pub const INTERRUPT_LINE: u16 = 0x3C;
    pub const INTERRUPT_PIN: u16 = 0x3D;
}

/// Command register bits.
pub mod command {
    pub const IO: u16 = 1 << 0;
    pub const MEMORY: u16 = 1 << 1;
    pub const BUS_MASTER: u16 = 1 << 2;
    pub const PARITY: u16 = 1 << 6;
    pub const SERR: u16 = 1 << 8;
    pub const INTX_DISABLE: u16 = 1 << 10;
}

/// Status register bits.
pub mod status {
    /// INTx is asserted by this function (whatever INTX_DISABLE says).
    pub const INTERRUPT: u16 = 1 << 3;
    /// The capability pointer at 0x34 is valid.
    pub const CAP_LIST: u16 = 1 << 4;
}

/// Capability IDs.
pub mod cap_id {
    pub const VENDOR: u8 = 0x09;
    pub const MSIX: u8 = 0x11;
}

/// Functions per bus: 32 devices of 8 functions.
pub const MAX_DEVICE: u8 = 31;
pub const MAX_FUNCTION: u8 = 7;

/// A function's place: bus, device (0-31), function (0-7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PciAddress {
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl PciAddress {
    pub const fn new(bus: u8, device: u8, function: u8) -> Self {
        Self {
            bus,
            device,
            function,
        }
    }

    /// Whether device and function are in range.
    pub const fn is_valid(&self) -> bool {
        self.device <= MAX_DEVICE && self.function <= MAX_FUNCTION
    }

    /// The function a CONFADD value (bits 23:8) names.
    pub const fn from_config_address(address: u32) -> Self {
        Self {
            bus: (address >> 16) as u8,
            device: ((address >> 11) & 0x1F) as u8,
            function: ((address >> 8) & 7) as u8,
        }
    }
}

/// What a function's access caused: its INTx pin's new level (when it changed) and up
/// to two MSI-X messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PciEffects {
    pub intx: Option<bool>,
    pub msi: [Option<MsiMessage>; 2],
}

impl PciEffects {
    pub const NONE: PciEffects = PciEffects {
        intx: None,
        msi: [None, None],
    };

    /// Adds a message; `false` when both slots are taken.
    pub fn push_msi(&mut self, msg: MsiMessage) -> bool {
        match self.msi.iter_mut().find(|m| m.is_none()) {
            Some(slot) => {
                *slot = Some(msg);
                true
            }
            None => false,
        }
    }

    /// Whether another message fits.
    pub fn has_room(&self) -> bool {
        self.msi.iter().any(|m| m.is_none())
    }

    pub fn msis(&self) -> impl Iterator<Item = MsiMessage> + '_ {
        self.msi.iter().flatten().copied()
    }
}

/// A memory BAR as the function decodes it now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    pub address: u64,
    pub size: u64,
}

impl Bar {
    /// The offset of `addr` inside the BAR, if it is inside.
    pub fn offset_of(&self, addr: u64) -> Option<u64> {
        let offset = addr.checked_sub(self.address)?;
        (offset < self.size).then_some(offset)
    }
}

/// Merges the bytes of `value` that `mask` enables into `old` (a byte-enable write).
pub const fn merge(old: u32, value: u32, mask: u32) -> u32 {
    (old & !mask) | (value & mask)
}

/// One PCI function. `reg` is always a dword-aligned offset below 256; a narrower
/// configuration write arrives as the dword with `mask` enabling its bytes (PCI byte
/// enables), so a function never sees a misaligned access.
pub trait PciFunction: Send {
    /// A short name for reports.
    fn name(&self) -> &'static str;
    /// The configuration dword at `reg`.
    fn config_read(&mut self, reg: u16) -> u32;
    /// A configuration write of the bytes of `value` that `mask` enables.
    fn config_write(&mut self, reg: u16, value: u32, mask: u32) -> PciEffects;
    /// Memory BAR `index` (0-5) where the function decodes it now: `None` when the
    /// BAR is not implemented, is an I/O BAR, or memory decoding is off.
    fn bar(&self, _index: u8) -> Option<Bar> {
        None
    }
    /// A read of `size` bytes (1, 2, 4, 8) at `offset` inside memory BAR `index`.
    fn bar_read(&mut self, _index: u8, _offset: u64, size: u8) -> (u64, PciEffects) {
        (all_ones64(size), PciEffects::NONE)
    }
    /// A write of the low `size` bytes of `value` at `offset` inside BAR `index`.
    fn bar_write(&mut self, _index: u8, _offset: u64, _size: u8, _value: u64) -> PciEffects {
        PciEffects::NONE
    }
    /// Work the function left for later (a queue it stopped processing to bound one
    /// exit's cost, messages that found no room): [`Self::poll`] continues it.
    fn has_work(&self) -> bool {
        false
    }
    /// Continues the work [`Self::has_work`] announced.
    fn poll(&mut self) -> PciEffects {
        PciEffects::NONE
    }
    /// The function's snapshot (see [`crate::state`]), for the PCI root's
    /// ([`crate::PciConfig::state`]). A function without snapshot support says so
    /// ([`StateError::Unsupported`], the default).
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
    /// For the VMM's typed access to one function.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// All ones in the low `size` bytes of a u64 (1, 2, 4 or 8; others as 8).
pub const fn all_ones64(size: u8) -> u64 {
    match size {
        1 => 0xFF,
        2 => 0xFFFF,
        4 => 0xFFFF_FFFF,
        _ => u64::MAX,
    }
}

/// A host bridge: the function at 00:00.0 that tells the guest it is on a PC chipset.
/// Only the command register is writable (and means nothing here); it has no BARs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostBridge {
    vendor: u16,
    device: u16,
    revision: u8,
    command: u16,
}

impl HostBridge {
    /// The Intel 440FX PMC (82441FX, 8086:1237), the host bridge of the PIIX3 PC
    /// whose reset register 0xCF9 [`crate::PciConfig`] implements; QEMU's `pc`
    /// machine shows the same IDs.
    pub const fn i440fx() -> Self {
        Self {
            vendor: 0x8086,
            device: 0x1237,
            revision: 0x02,
            command: command::MEMORY,
        }
    }

    /// The Intel Q35 DRAM controller (82G33, 8086:29C0).
    pub const fn q35() -> Self {
        Self {
            vendor: 0x8086,
            device: 0x29C0,
            revision: 0x00,
            command: command::MEMORY,
        }
    }
}

impl HostBridge {
    /// The tag of [`Self::state`] (see [`crate::state`]).
    pub const STATE_TAG: Tag = *b"pci-host";
    /// Bumped whenever the field list changes.
    pub const STATE_VERSION: u16 = 1;

    /// The command register; the IDs are stored to be compared.
    pub fn state(&self) -> Vec<u8> {
        let mut w = Writer::new(&Self::STATE_TAG, Self::STATE_VERSION);
        w.u16(self.vendor);
        w.u16(self.device);
        w.u8(self.revision);
        w.u16(self.command);
        w.finish()
    }

    /// Takes back what [`Self::state`] returned, for a bridge with the same IDs;
    /// nothing changes on an error.
    pub fn restore(&mut self, data: &[u8]) -> Result<(), StateError> {
        let mut r = Reader::new(data, &Self::STATE_TAG, Self::STATE_VERSION)?;
        let vendor = r.u16()?;
        r.expect("host bridge vendor ID", vendor.into(), self.vendor.into())?;
        let device = r.u16()?;
        r.expect("host bridge device ID", device.into(), self.device.into())?;
        let revision = r.u8()?;
        r.expect(
            "host bridge revision",
            revision.into(),
            self.revision.into(),
        )?;
        let command = r.u16()?;
        r.check(
            command & !(command::MEMORY | command::IO | command::BUS_MASTER) == 0,
            "host bridge command register",
        )?;
        r.end()?;
        self.command = command;
        Ok(())
    }
}

impl PciFunction for HostBridge {
    fn name(&self) -> &'static str {
        "host-bridge"
    }
    fn config_read(&mut self, reg: u16) -> u32 {
        match reg {
            reg::VENDOR_ID => u32::from(self.device) << 16 | u32::from(self.vendor),
            // Status: medium DEVSEL timing, as the 440FX reports.
            reg::COMMAND => 0x0200 << 16 | u32::from(self.command),
            // Class 06/00/00: bridge, host bridge.
            reg::REVISION => 0x0600_0000 | u32::from(self.revision),
            // Header type 0, single function; everything else reads 0.
            _ => 0,
        }
    }
    fn config_write(&mut self, reg: u16, value: u32, mask: u32) -> PciEffects {
        if reg == reg::COMMAND {
            let writable = u32::from(command::MEMORY | command::IO | command::BUS_MASTER);
            self.command = (merge(self.command.into(), value, mask & writable)) as u16;
        }
        PciEffects::NONE
    }
    fn snapshot(&self) -> Result<Vec<u8>, StateError> {
        Ok(self.state())
    }
    fn restore_snapshot(&mut self, data: &[u8]) -> Result<(), StateError> {
        self.restore(data)
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Places memory BARs in `[start, end)`, the platform's PCI hole (the range below
/// 4 GiB that is neither RAM nor a fixed device: on a PC typically from the top of
/// low RAM up to the IOAPIC at 0xFEC0_0000), each naturally aligned as BARs must be.
/// Allocating the largest BARs first wastes the least space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BarAllocator {
    next: u64,
    end: u64,
}

impl BarAllocator {
    pub const fn new(start: u64, end: u64) -> Self {
        Self { next: start, end }
    }

    /// A naturally aligned range of `size` bytes (a power of two, at least 16); `None`
    /// when `size` is not one or the hole has no room left.
    pub fn allocate(&mut self, size: u64) -> Option<u64> {
        if !size.is_power_of_two() || size < 16 {
            return None;
        }
        let base = self.next.checked_add(size - 1)? & !(size - 1);
        let end = base.checked_add(size)?;
        if end > self.end {
            return None;
        }
        self.next = end;
        Some(base)
    }

    /// The first address not handed out yet.
    pub fn next_free(&self) -> u64 {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_address_decoding() {
        let a = PciAddress::from_config_address(0x8012_3A3C);
        assert_eq!(a, PciAddress::new(0x12, 7, 2));
        assert!(a.is_valid());
        assert!(!PciAddress::new(0, 32, 0).is_valid());
        assert!(!PciAddress::new(0, 0, 8).is_valid());
    }

    #[test]
    fn host_bridge_identifies_as_440fx() {
        let mut hb = HostBridge::i440fx();
        assert_eq!(hb.config_read(0), 0x1237_8086);
        assert_eq!(hb.config_read(8) >> 8, 0x06_00_00);
        assert_eq!(hb.config_read(0x0C) >> 16 & 0xFF, 0, "header type 0");
        assert_eq!(hb.config_read(0x10), 0, "no BARs");
        // Only MEM/IO/BM stick, and only in the enabled bytes.
        hb.config_write(4, 0xFFFF_FFFF, 0x0000_00FF);
        assert_eq!(hb.config_read(4) & 0xFFFF, 0x0007);
        hb.config_write(4, 0, 0x0000_FF00);
        assert_eq!(hb.config_read(4) & 0xFFFF, 0x0007);
        assert_eq!(HostBridge::q35().config_read(0), 0x29C0_8086);
        assert!(hb.bar(0).is_none());
    }

    #[test]
    fn bar_allocator_aligns_naturally_and_stops_at_the_end() {
        let mut a = BarAllocator::new(0xE000_0100, 0xE002_0000);
        assert_eq!(a.allocate(0x1000), Some(0xE000_1000));
        assert_eq!(a.allocate(0x10), Some(0xE000_2000));
        assert_eq!(a.allocate(0x8000), Some(0xE000_8000));
        assert_eq!(a.allocate(0x10000), Some(0xE001_0000));
        assert_eq!(a.allocate(0x10), None, "hole full");
        assert_eq!(a.allocate(0x3000), None, "not a power of two");
        assert_eq!(a.allocate(8), None, "below the smallest memory BAR");
        let mut top = BarAllocator::new(u64::MAX - 0x10, u64::MAX);
        assert_eq!(
            top.allocate(0x100),
            None,
            "overflow is refused, not wrapped"
        );
    }

    #[test]
    fn bar_offsets() {
        let bar = Bar {
            address: 0x1000,
            size: 0x100,
        };
        assert_eq!(bar.offset_of(0x1000), Some(0));
        assert_eq!(bar.offset_of(0x10FF), Some(0xFF));
        assert_eq!(bar.offset_of(0x1100), None);
        assert_eq!(bar.offset_of(0xFFF), None);
    }

    crate::state::testing::snap_impl!(HostBridge);

    #[test]
    fn host_bridge_snapshot() {
        let mut hb = HostBridge::i440fx();
        hb.config_write(reg::COMMAND, 0x7, 0xFFFF);
        let snap = hb.state();
        let mut fresh = HostBridge::i440fx();
        fresh.restore_snapshot(&hb.snapshot().unwrap()).unwrap();
        assert_eq!(fresh.config_read(reg::COMMAND) & 0xFFFF, 7);
        crate::state::testing::check_refusals(&mut fresh, &snap, |d| {
            d.config_write(reg::COMMAND, 0, 0xFF);
            d.config_read(reg::COMMAND);
        });
        assert!(matches!(
            HostBridge::q35().restore(&snap),
            Err(StateError::Mismatch {
                what: "host bridge device ID",
                ..
            })
        ));
    }
}
