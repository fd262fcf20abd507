//! `bench64`: the cost of a CPUID exit, measured in TSC cycles from inside the guest.
//!
//! CPUID always exits to the hypervisor, so the time of one CPUID in a guest is one
//! full exit round trip: VM exit, the hypervisor's exit dispatch and policy, VM
//! entry. The guest times [`ROUNDS`] of them (leaf 0, after [`WARMUP`] untimed ones
//! so the first-touch costs of both sides are out of the way) with fenced RDTSC
//! around the whole loop, and prints the average.
//!
//! Then it asks for the hypervisor's bare loop (hypercall `BENCH_BARE_BEGIN`,
//! 0x100): until `BENCH_BARE_END` (0x101) the hypervisor only re-enters the vCPU
//! after each CPUID, skipping it without dispatch, policy or devices. Timing the
//! same loop there gives the floor, the hardware's (or emulator's) exit and entry
//! alone; the difference to the first figure is what the hypervisor's exit path
//! costs. Both hypercalls return 0 when supported; a hypervisor without them
//! returns `u64::MAX` (unknown hypercall) and the second measurement is skipped.
//! In the bare loop the skipped CPUID returns the registers unchanged, which is
//! fine: only its time matters. Nothing is printed inside the bare loop, since a
//! port exit would end it.
//!
//! Prints:
//! ```text
//! bench64: cpuid full-path avg=<cycles> cycles over 2000
//! bench64: cpuid bare-loop avg=<cycles> cycles over 2000   (or: bench64: bare loop unsupported)
//! bench64: done
//! ```
//! then stops with `cli; hlt`. Host timer interrupts (the hypervisor's time slices)
//! land inside the timed loops too; over 2000 rounds they are part of the average,
//! as they are of any guest's exits.

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(target_os = "none")]
mod guest {
    use core::arch::asm;
    use guests::cpu::cpuid;
    use guests::hypercall::Hypercall;
    use guests::println;

    /// Timed CPUIDs per measurement.
    const ROUNDS: u64 = 2000;
    /// Untimed CPUIDs before each measurement.
    const WARMUP: u64 = 100;
    /// Hypercall numbers (the hypervisor's `policy::hypercall`).
    const BENCH_BARE_BEGIN: u64 = 0x100;
    const BENCH_BARE_END: u64 = 0x101;

    /// The TSC, with LFENCE on both sides so that the instructions before it have
    /// finished and the ones after it have not started: the loop is measured, not
    /// the out-of-order window around it.
    fn tsc() -> u64 {
        let (lo, hi): (u32, u32);
        // SAFETY: LFENCE and RDTSC only read the TSC into EDX:EAX.
        unsafe {
            asm!(
                "lfence",
                "rdtsc",
                "lfence",
                out("eax") lo,
                out("edx") hi,
                options(nomem, nostack, preserves_flags),
            );
        }
        (u64::from(hi) << 32) | u64::from(lo)
    }

    /// Average TSC cycles of one CPUID (leaf 0) over [`ROUNDS`].
    fn measure() -> u64 {
        for _ in 0..WARMUP {
            cpuid(0, 0);
        }
        let start = tsc();
        for _ in 0..ROUNDS {
            // `cpuid` is an `asm!` block, so each round really executes.
            cpuid(0, 0);
        }
        tsc().wrapping_sub(start) / ROUNDS
    }

    guests::entry_point!(main);

    fn main() {
        let full = measure();
        println!("bench64: cpuid full-path avg={full} cycles over {ROUNDS}");

        match Hypercall::detect() {
            Ok(hc) => {
                if hc.call(BENCH_BARE_BEGIN) == 0 {
                    let bare = measure();
                    let end = hc.call(BENCH_BARE_END);
                    println!("bench64: cpuid bare-loop avg={bare} cycles over {ROUNDS}");
                    if end != 0 {
                        println!("bench64: bare loop end returned {end:#x}");
                    }
                } else {
                    println!("bench64: bare loop unsupported");
                }
            }
            Err(vendor) => {
                println!(
                    "bench64: unknown CPU vendor {}, no hypercall instruction",
                    vendor.as_str()
                );
                println!("bench64: bare loop unsupported");
            }
        }
        println!("bench64: done");
    }
}
