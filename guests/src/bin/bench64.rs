//! `bench64`: the cost of a CPUID exit, measured in TSC cycles from inside the guest.
//!
//! CPUID always exits to the hypervisor, so the time of one CPUID in a guest is one
//! full exit round trip: VM exit, the hypervisor's exit dispatch and policy, VM
//! entry. The guest times [`ROUNDS`] of them one by one (leaf 0, after [`WARMUP`]
//! untimed ones so the first-touch costs of both sides are out of the way) with
//! fenced RDTSC around each, and prints the median. The median, not the average:
//! the hypervisor's timer ends a time slice every millisecond, and the round trips
//! it interrupts include whatever other VMs ran meanwhile, which says nothing about
//! the exit path (and the bare loop below never yields, so averages would compare
//! unlike things).
//!
//! The two measurements alternate in blocks of 400 (an emulator's speed drifts
//! over seconds, and both paths must see the same drift). For the second one it
//! asks for the hypervisor's bare loop (hypercall `BENCH_BARE_BEGIN`,
//! 0x100): until `BENCH_BARE_END` (0x101) the hypervisor only re-enters the vCPU
//! after each CPUID, skipping it without dispatch, policy or devices. Timing the
//! same loop there gives the floor, the hardware's (or emulator's) exit and entry
//! alone; the difference to the first figure is what the hypervisor's exit path
//! costs. Both hypercalls return 0 when supported; a hypervisor without them
//! returns an error (-1000, unknown hypercall) and the second measurement is skipped.
//! In the bare loop the skipped CPUID returns the registers unchanged, which is
//! fine: only its time matters. Nothing is printed inside the bare loop, since a
//! port exit would end it.
//!
//! Prints:
//! ```text
//! bench64: cpuid full-path median=<cycles> cycles over 2000
//! bench64: cpuid bare-loop median=<cycles> cycles over 2000   (or: bench64: bare loop unsupported)
//! bench64: done
//! ```
//! then stops with `cli; hlt`.

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

    /// Blocks the measurement alternates between the two paths, so that both see
    /// the same phases of the machine (an emulator's speed drifts over seconds).
    const BLOCKS: usize = 5;
    const PER_BLOCK: usize = ROUNDS as usize / BLOCKS;

    /// Times each CPUID (leaf 0) of `out` one by one.
    fn time_block(out: &mut [u64]) {
        for s in out.iter_mut() {
            let start = tsc();
            // `cpuid` is an `asm!` block, so each round really executes.
            cpuid(0, 0);
            *s = tsc().wrapping_sub(start);
        }
    }

    fn median(samples: &mut [u64]) -> u64 {
        let mid = samples.len() / 2;
        *samples.select_nth_unstable(mid).1
    }

    guests::entry_point!(main);

    fn main() {
        static mut FULL: [u64; ROUNDS as usize] = [0; ROUNDS as usize];
        static mut BARE: [u64; ROUNDS as usize] = [0; ROUNDS as usize];
        // SAFETY: one vCPU, and `main` runs once: the only references to the buffers.
        let (full, bare) = unsafe {
            (
                &mut *core::ptr::addr_of_mut!(FULL),
                &mut *core::ptr::addr_of_mut!(BARE),
            )
        };
        for _ in 0..WARMUP {
            cpuid(0, 0);
        }
        let hc = match Hypercall::detect() {
            Ok(hc) => Some(hc),
            Err(vendor) => {
                println!(
                    "bench64: unknown CPU vendor {}, no hypercall instruction",
                    vendor.as_str()
                );
                None
            }
        };
        let mut bare_ok = hc.is_some();
        for block in 0..BLOCKS {
            let range = block * PER_BLOCK..(block + 1) * PER_BLOCK;
            time_block(&mut full[range.clone()]);
            if let (Some(hc), true) = (hc, bare_ok) {
                if hc.call(BENCH_BARE_BEGIN) == 0 {
                    time_block(&mut bare[range]);
                    let end = hc.call(BENCH_BARE_END);
                    if end != 0 {
                        println!("bench64: bare loop end returned {end:#x}");
                    }
                } else {
                    bare_ok = false;
                }
            }
        }
        println!(
            "bench64: cpuid full-path median={} cycles over {ROUNDS}",
            median(full)
        );
        if bare_ok {
            println!(
                "bench64: cpuid bare-loop median={} cycles over {ROUNDS}",
                median(bare)
            );
        } else {
            println!("bench64: bare loop unsupported");
        }
        println!("bench64: done");
    }
}
