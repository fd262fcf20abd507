//! Polled output to the 16550 UART at COM1.
//!
//! No initialisation: the hypervisor's emulated UART is usable as is, and the
//! guests should exercise as few device registers as possible. Each byte waits for
//! LSR bit 5 (transmit holding register empty) before it goes to THR, as a driver
//! for a real 16550 must.
//!
//! Several vCPUs of one VM share the port, so [`crate::print!`] and
//! [`crate::println!`] hold [`lock`] for a whole call: lines from different CPUs
//! never interleave. The fatal paths (panic, unexpected exception) wait only a
//! bounded time for it ([`lock_bounded`]) and then print anyway, so a CPU that dies
//! while holding the lock cannot silence the report of another.

use core::sync::atomic::{AtomicBool, Ordering};

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

/// Writes preformatted arguments (no lock taken: see [`lock`]).
pub fn write_fmt(args: core::fmt::Arguments) {
    // `Serial` never fails, so neither does formatting into it.
    let _ = core::fmt::Write::write_fmt(&mut Serial, args);
}

/// Writes preformatted arguments and then `end` under [`lock`]; used by
/// [`crate::print!`] (`end` empty) and [`crate::println!`] (`end` = `"\n"`).
pub fn write_fmt_locked(args: core::fmt::Arguments, end: &str) {
    let _guard = lock();
    write_fmt(args);
    write_str(end);
}

/// PAUSEs the fatal paths wait for the console lock before printing regardless.
pub const FATAL_LOCK_SPINS: u64 = 10_000_000;

/// The console lock: held while one CPU writes a line.
static LOCK: AtomicBool = AtomicBool::new(false);

/// Holds the console lock until dropped (if it got it).
pub struct Guard {
    owned: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.owned {
            LOCK.store(false, Ordering::Release);
        }
    }
}

fn try_lock() -> bool {
    LOCK.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_ok()
}

/// Takes the console lock, spinning until it is free. Not for interrupt or
/// exception handlers: the CPU they interrupted may hold it.
pub fn lock() -> Guard {
    while !try_lock() {
        pause();
    }
    Guard { owned: true }
}

/// Takes the console lock if it comes free within `max_spins` PAUSEs; otherwise
/// returns a guard that does not own it, and the caller writes regardless.
pub fn lock_bounded(max_spins: u64) -> Guard {
    for _ in 0..max_spins {
        if try_lock() {
            return Guard { owned: true };
        }
        pause();
    }
    Guard { owned: false }
}

/// `core::fmt::Write` sink for COM1.
pub struct Serial;

impl core::fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        write_str(s);
        Ok(())
    }
}
