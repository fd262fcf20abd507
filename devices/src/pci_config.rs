//! PCI configuration mechanism #1 (ports 0xCF8-0xCFF) on a machine with no PCI
//! devices, plus the PIIX reset control register at 0xCF9.
//!
//! Guests probe for PCI even when there is nothing to find: Linux's
//! `pci_check_type1` writes 0x8000_0000 to 0xCF8 and needs it back before it scans,
//! firmware and hobby kernels walk bus 0 reading vendor IDs. With this device the
//! probe sees a working host bridge interface, and every configuration read finds no
//! device: all ones, the value a master abort returns (PCI Local Bus Specification
//! 3.0, section 6.1: a read of a non-existent function returns 0xFFFF as vendor ID).
//!
//! Decoding follows the Intel PIIX3 datasheet (order no. 290550), CONFADD/CONFDATA
//! and RC: CONFADD at 0xCF8 answers 32-bit accesses only; byte and word accesses to
//! 0xCF8-0xCFB go to the ISA bus, where only the reset control register (0xCF9, a byte
//! register) listens. A write that sets RC.RST_CPU (bit 2) resets the machine, which
//! is how Linux's `reboot=pci` restarts; [`PciConfig::take_reset_request`] reports it.

use crate::bus::{all_ones, PortDevice};

/// The configuration address register; the device spans [`PCI_CONFIG_PORT_COUNT`]
/// ports from here (address, then data at 0xCFC-0xCFF).
pub const PCI_CONFIG_BASE: u16 = 0xCF8;
pub const PCI_CONFIG_PORT_COUNT: u16 = 8;
/// Offset of the PIIX reset control register.
const RESET_CONTROL: u16 = 1;

/// CONFADD bit 31: the next data access is a configuration cycle.
pub const CONFIG_ENABLE: u32 = 1 << 31;
/// CONFADD's implemented bits: enable, bus, device, function, dword register.
/// Bits 30:24 and 1:0 are reserved and read 0.
const ADDRESS_MASK: u32 = 0x80FF_FFFC;

/// Reset control register bits.
pub mod reset_control {
    /// System reset: 1 makes the reset a hard (cold) one; stored only.
    pub const SYS_RST: u8 = 1 << 1;
    /// Reset CPU: the 0 -> 1 transition resets the machine.
    pub const RST_CPU: u8 = 1 << 2;
    /// Full reset (ICH): also drops power briefly; stored only.
    pub const FULL_RST: u8 = 1 << 3;
}

/// The configuration address/data ports of a PCI host bridge with nothing behind it.
#[derive(Clone, Debug, Default)]
pub struct PciConfig {
    address: u32,
    reset_control: u8,
    reset_request: bool,
}

impl PciConfig {
    pub const fn new() -> Self {
        Self {
            address: 0,
            reset_control: 0,
            reset_request: false,
        }
    }

    /// The last configuration address written (reserved bits cleared).
    pub fn address(&self) -> u32 {
        self.address
    }

    /// Whether the guest asked for a machine reset through 0xCF9 since the last call.
    /// The VMM restarts (or stops) the VM; this device's state is reset with it.
    pub fn take_reset_request(&mut self) -> bool {
        core::mem::take(&mut self.reset_request)
    }
}

impl PortDevice for PciConfig {
    fn read(&mut self, offset: u16, size: u8) -> u32 {
        match (offset, size) {
            (0, 4) => self.address,
            (RESET_CONTROL, 1) => u32::from(self.reset_control),
            // The data window: every bus/device/function is absent, and with the
            // enable bit clear the access is plain ISA I/O that nothing decodes.
            // Either way the bus floats to all ones.
            _ => all_ones(size),
        }
    }

    fn write(&mut self, offset: u16, size: u8, value: u32) {
        match (offset, size) {
            (0, 4) => self.address = value & ADDRESS_MASK,
            (RESET_CONTROL, 1) => {
                let value = value as u8
                    & (reset_control::SYS_RST | reset_control::RST_CPU | reset_control::FULL_RST);
                if value & reset_control::RST_CPU != 0
                    && self.reset_control & reset_control::RST_CPU == 0
                {
                    self.reset_request = true;
                }
                self.reset_control = value;
            }
            // Configuration writes to absent functions are dropped (master abort).
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_type1_probe_sees_the_address_register() {
        // arch/x86/pci/direct.c pci_check_type1.
        let mut pci = PciConfig::new();
        pci.write(3, 1, 0x01); // outb(0x01, 0xCFB): not CONFADD
        let saved = pci.read(0, 4);
        pci.write(0, 4, 0x8000_0000);
        assert_eq!(pci.read(0, 4), 0x8000_0000);
        pci.write(0, 4, saved);
        assert_eq!(pci.address(), 0);
    }

    #[test]
    fn address_register_keeps_only_implemented_bits() {
        let mut pci = PciConfig::new();
        pci.write(0, 4, 0xFFFF_FFFF);
        assert_eq!(pci.read(0, 4), 0x80FF_FFFC);
        // Byte and word accesses do not touch CONFADD and read all ones (0xCF9 aside).
        pci.write(0, 2, 0);
        pci.write(2, 1, 0);
        assert_eq!(pci.read(0, 4), 0x80FF_FFFC);
        assert_eq!(pci.read(0, 1), 0xFF);
        assert_eq!(pci.read(2, 2), 0xFFFF);
        assert_eq!(pci.read(3, 1), 0xFF);
    }

    #[test]
    fn no_device_anywhere() {
        let mut pci = PciConfig::new();
        for address in [0x8000_0000u32, 0x8000_0800, 0x80FF_FF00, 0x8000_003C, 0] {
            pci.write(0, 4, address);
            assert_eq!(pci.read(4, 4), 0xFFFF_FFFF);
            for offset in 4..8 {
                assert_eq!(pci.read(offset, 1), 0xFF);
            }
            assert_eq!(pci.read(4, 2), 0xFFFF);
            assert_eq!(pci.read(6, 2), 0xFFFF);
            // Writes vanish.
            pci.write(4, 4, 0x1234_5678);
            pci.write(5, 1, 0x12);
            assert_eq!(pci.read(4, 4), 0xFFFF_FFFF);
        }
    }

    #[test]
    fn reset_control_register() {
        // Linux's reboot=pci (BOOT_CF9_SAFE): hard-reset request, then the reset.
        let mut pci = PciConfig::new();
        assert!(!pci.take_reset_request());
        let cf9 = pci.read(1, 1) as u8 & !0x0E;
        pci.write(1, 1, u32::from(cf9 | 0x02));
        assert!(!pci.take_reset_request());
        assert_eq!(pci.read(1, 1), 0x02);
        pci.write(1, 1, u32::from(cf9 | 0x0E));
        assert!(pci.take_reset_request());
        assert!(!pci.take_reset_request());
        // Only a 0 -> 1 transition of RST_CPU resets.
        pci.write(1, 1, 0x06);
        assert!(!pci.take_reset_request());
        pci.write(1, 1, 0x00);
        pci.write(1, 1, 0x04);
        assert!(pci.take_reset_request());
        // A dword write to 0xCF8 is CONFADD, not the reset register.
        pci.write(0, 4, 0x0000_0400);
        assert!(!pci.take_reset_request());
    }
}
