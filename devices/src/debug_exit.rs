//! QEMU's `isa-debug-exit` device: a guest ends its run by writing a value to an I/O
//! port, and QEMU exits with status `(value << 1) | 1`.
//!
//! Test kernels and firmware written for QEMU (`-device isa-debug-exit,iobase=0xf4,
//! iosize=0x04`) stop this way; with this device the VMM can stop that VM and report
//! the same code. As in QEMU (hw/misc/debugexit.c), a write of any width at any offset
//! in the range counts, with the value as written (zero-extended to 32 bits); the odd
//! status means a guest can never produce exit status 0. QEMU's device has no read
//! handler; reads here float to all ones.

use crate::bus::{all_ones, PortDevice};

/// QEMU's default `iobase`.
pub const DEBUG_EXIT_BASE: u16 = 0xF4;
/// QEMU's default `iosize`.
pub const DEBUG_EXIT_PORT_COUNT: u16 = 4;

/// The exit port.
#[derive(Clone, Debug, Default)]
pub struct DebugExit {
    exit_code: Option<u32>,
}

impl DebugExit {
    pub const fn new() -> Self {
        Self { exit_code: None }
    }

    /// The exit code the guest asked for, `(value << 1) | 1`, once: the VMM stops the
    /// VM when this returns `Some`. Only the first write counts (QEMU exits on it).
    pub fn take_exit(&mut self) -> Option<u32> {
        self.exit_code.take()
    }

    /// The exit code a write would produce, without taking it.
    pub fn exit_code(&self) -> Option<u32> {
        self.exit_code
    }
}

impl PortDevice for DebugExit {
    fn read(&mut self, _offset: u16, size: u8) -> u32 {
        all_ones(size)
    }

    fn write(&mut self, _offset: u16, size: u8, value: u32) {
        if self.exit_code.is_none() {
            let value = value & all_ones(size);
            // A 32-bit value loses its top bit, as QEMU's int exit status would.
            self.exit_code = Some((value << 1) | 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_records_qemu_exit_status() {
        let mut dev = DebugExit::new();
        assert_eq!(dev.take_exit(), None);
        dev.write(0, 1, 0x10);
        assert_eq!(dev.exit_code(), Some(0x21));
        // Only the first write counts.
        dev.write(0, 1, 0x11);
        assert_eq!(dev.take_exit(), Some(0x21));
        assert_eq!(dev.take_exit(), None);
        // Value 0 still gives an odd (failure-looking) status: 1.
        dev.write(3, 1, 0);
        assert_eq!(dev.take_exit(), Some(1));
    }

    #[test]
    fn widths_and_reads() {
        let mut dev = DebugExit::new();
        dev.access(2, 2, true, 0xFFFF_1234);
        assert_eq!(dev.take_exit(), Some(0x2469));
        dev.write(0, 4, 0x8000_0001);
        assert_eq!(dev.take_exit(), Some(0x0000_0003));
        assert_eq!(dev.read(0, 1), 0xFF);
        assert_eq!(dev.read(0, 4), 0xFFFF_FFFF);
        assert_eq!(dev.take_exit(), None);
    }
}
