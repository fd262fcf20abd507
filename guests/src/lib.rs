//! Shared runtime for the hypervisor's tiny test guests.
//!
//! The guests are bare-metal `x86_64-unknown-none` binaries (see `src/bin/`). The
//! 16-bit and 32-bit guests are pure `global_asm!` and use nothing from here; the
//! 64-bit guests get their entry point ([`entry_point!`]), serial output
//! ([`println!`]), port I/O, CPUID/MSR wrappers, the hypercall instruction
//! ([`hypercall`]) and an optional GDT+IDT with a recoverable `#GP` handler ([`idt`]).
//! SMP guests also get the local APIC ([`apic`]), a PIT-calibrated TSC ([`tsc`]) and
//! AP start-up through a real-mode trampoline ([`smp`], with the MP table parser
//! [`mptable`]); their CPUs share the console under a lock ([`serial::lock`]).
//!
//! On the host (anything but `target_os = "none"`) only the pure helpers in [`text`]
//! and [`mptable`] are compiled, so `cargo clippy --workspace` and `cargo test -p
//! guests` work there.

#![cfg_attr(not(test), no_std)]

pub mod mptable;
pub mod text;

#[cfg(target_os = "none")]
pub mod apic;
#[cfg(target_os = "none")]
pub mod cpu;
#[cfg(target_os = "none")]
pub mod hypercall;
#[cfg(target_os = "none")]
pub mod idt;
#[cfg(target_os = "none")]
pub mod serial;
#[cfg(target_os = "none")]
pub mod smp;
#[cfg(target_os = "none")]
pub mod tsc;
#[cfg(target_os = "none")]
pub mod virtio_hal;

/// Defines `_start` for a 64-bit guest and makes it call `$main` (a `fn()`).
///
/// The hypervisor enters at `e_entry` with RSP at the top of guest RAM; this stub
/// re-aligns the stack to the ABI's 16 bytes (a `call` then leaves it at 8 mod 16
/// as every function expects), and when `$main` returns it parks the CPU with
/// `cli; hlt`, which the hypervisor reports as a clean stop. `_start` lives in
/// `.text.entry` so the linker script can put it at the load address.
#[cfg(target_os = "none")]
#[macro_export]
macro_rules! entry_point {
    ($main:path) => {
        extern "C" fn __guest_start() -> ! {
            let main: fn() = $main;
            main();
            $crate::cpu::halt_forever()
        }

        ::core::arch::global_asm!(
            ".pushsection .text.entry, \"ax\"",
            ".global _start",
            "_start:",
            "    cli",
            "    and rsp, -16",
            "    xor ebp, ebp",
            "    call {start}",
            "    ud2",
            ".popsection",
            start = sym __guest_start,
        );
    };
}

/// `print!` to COM1, formatted with `core::fmt`.
#[cfg(target_os = "none")]
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::serial::write_fmt_locked(::core::format_args!($($arg)*), "")
    };
}

/// `println!` to COM1; lines end with a bare `"\n"`. The whole line is written
/// under the console lock ([`serial::lock`]), so lines of several CPUs do not mix.
#[cfg(target_os = "none")]
#[macro_export]
macro_rules! println {
    () => {
        $crate::serial::write_fmt_locked(::core::format_args!(""), "\n")
    };
    ($($arg:tt)*) => {
        $crate::serial::write_fmt_locked(::core::format_args!($($arg)*), "\n")
    };
}

/// A panic in a guest is a bug in the guest: say so on the serial port and stop
/// the way every guest stops, so a test sees the message instead of a hang.
#[cfg(all(target_os = "none", not(test)))]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    // Bounded: the panic may have happened while this CPU held the console lock.
    let _guard = serial::lock_bounded(serial::FATAL_LOCK_SPINS);
    serial::write_fmt(format_args!("guest: PANIC: {}\n", info));
    cpu::halt_forever()
}
