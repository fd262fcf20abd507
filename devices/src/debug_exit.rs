//! QEMU's `isa-debug-exit` device: a guest ends its run by writing a value to an I/O
//! port, and QEMU exits with status `(value << 1) | 1`.
//!
//! Test kernels and firmware written for QEMU (`-device isa-debug-exit,iobase=0xf4,
//! iosize=0x04`) stop this way; with this device the VMM can stop that VM and report
//! the same code. As in QEMU (hw/misc/debugexit.c), a write of any width at any offset
//! in the range counts, with the value as written (zero-extended to 32 bits); the odd
//! status means a guest can never produce exit status 0. QEMU's device has no read
//! handler; reads here float to all ones.

use alloc::vec::Vec;

use crate::bus::{all_ones, PortDevice};
use crate::state::{Reader, StateError, Tag, Writer};

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

impl DebugExit {
    /// The tag of [`Self::state`] (see [`crate::state`]).
    pub const STATE_TAG: Tag = *b"dbg-exit";
    /// Bumped whenever the field list changes.
    pub const STATE_VERSION: u16 = 1;

    /// An exit code written and not yet taken by the VMM.
    pub fn state(&self) -> Vec<u8> {
        let mut w = Writer::new(&Self::STATE_TAG, Self::STATE_VERSION);
        w.opt_u64(self.exit_code.map(u64::from));
        w.finish()
    }

    /// Takes back what [`Self::state`] returned; nothing changes on an error.
    pub fn restore(&mut self, data: &[u8]) -> Result<(), StateError> {
        let mut r = Reader::new(data, &Self::STATE_TAG, Self::STATE_VERSION)?;
        let code = r.opt_u64()?;
        r.end()?;
        let exit_code = match code {
            None => None,
            // `(value << 1) | 1` of a 32-bit register: odd, 32 bits.
            Some(c) => Some(
                u32::try_from(c)
                    .ok()
                    .filter(|c| c & 1 == 1)
                    .ok_or(r.invalid("exit code (even, or wider than 32 bits)"))?,
            ),
        };
        self.exit_code = exit_code;
        Ok(())
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

    crate::state::testing::snap_impl!(DebugExit);

    #[test]
    fn snapshot_keeps_an_exit_not_yet_taken() {
        let mut dev = DebugExit::new();
        let idle = dev.state();
        dev.write(0, 1, 0x10);
        let snap = dev.state();
        let mut fresh = DebugExit::new();
        fresh.restore(&snap).unwrap();
        assert_eq!(fresh.exit_code(), Some(0x21));
        // Later writes still do not count, on both.
        fresh.write(0, 1, 0x11);
        assert_eq!(fresh.take_exit(), dev.take_exit());
        fresh.restore(&idle).unwrap();
        assert_eq!(fresh.take_exit(), None);
        crate::state::testing::check_refusals(&mut fresh, &snap, |d| {
            d.write(0, 4, 7);
            d.take_exit();
        });
        // An even code could not have been written.
        let mut bad = snap.clone();
        bad[11] = 0x20;
        assert!(fresh.restore(&bad).is_err());
    }
}
