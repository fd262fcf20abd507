//! Polled output to the 16550 UART at COM1.
//!
//! No initialisation: the hypervisor's emulated UART is usable as is, and the
//! guests should exercise as few device registers as possible. Each byte waits for
//! LSR bit 5 (transmit holding register empty) before it goes to THR, as a driver
//! for a real 16550 must.

use crate::cpu::{inb, outb, pause};

/// Base port of COM1; THR (write) is at offset 0.
pub const COM1: u16 = 0x3F8;
/// Line status register.
const LSR: u16 = COM1 + 5;
/// LSR bit 5: the transmit holding register can take a byte.
const LSR_THR_EMPTY: u8 = 1 << 5;

/// Writes one byte, waiting until the UART can take it.
pub fn write_byte(byte: u8) {
    // SAFETY: COM1 is the guest's own serial port; reading LSR and writing THR
    // have no effect on memory.
    unsafe {
        while inb(LSR) & LSR_THR_EMPTY == 0 {
            pause();
        }
        outb(COM1, byte);
    }
}

/// Writes a string as is (no newline translation: lines end with `"\n"`).
pub fn write_str(s: &str) {
    s.bytes().for_each(write_byte);
}

/// Writes preformatted arguments; used by [`crate::print!`] and [`crate::println!`].
pub fn write_fmt(args: core::fmt::Arguments) {
    // `Serial` never fails, so neither does formatting into it.
    let _ = core::fmt::Write::write_fmt(&mut Serial, args);
}

/// `core::fmt::Write` sink for COM1.
pub struct Serial;

impl core::fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        write_str(s);
        Ok(())
    }
}
