//! `dr64`: debug registers and IA32_TSC_AUX belong to their vCPU.
//!
//! Two VMs run this image. Each writes a marker of its own (from the TSC, so the two
//! differ) into DR0-DR3 and, when RDTSCP exists, into IA32_TSC_AUX, spins long
//! enough for the other VM (and `hello64`) to run on the same processor, then reads
//! them back. A hypervisor that does not switch them shows the other VM's values.
//!
//! Prints `dr64: dr0-dr3 kept` (or `dr64: FAIL dr<n>=... expected ...`), then
//! `dr64: tsc_aux kept` / `dr64: FAIL tsc_aux ...`, or `dr64: no rdtscp`.

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(target_os = "none")]
mod guest {
    use core::arch::asm;
    use guests::cpu::{cpuid, spin, wrmsr};
    use guests::{println, tsc};

    const IA32_TSC_AUX: u32 = 0xC000_0103;
    /// Long enough for several time slices.
    const SPIN: u64 = 3_000_000;

    guests::entry_point!(main);

    fn read_drs() -> [u64; 4] {
        let (a, b, c, d): (u64, u64, u64, u64);
        // SAFETY: reading debug registers at CPL 0 (DR7.GD is clear).
        unsafe {
            asm!("mov {}, dr0", "mov {}, dr1", "mov {}, dr2", "mov {}, dr3",
                 out(reg) a, out(reg) b, out(reg) c, out(reg) d)
        };
        [a, b, c, d]
    }

    fn main() {
        let marker = (tsc::rdtsc() & 0xFFFF_FFF0) | 0x1000_0000;
        let want = [marker, marker + 1, marker + 2, marker + 3];
        // SAFETY: DR7 stays 0 (no breakpoint armed): only the address registers change.
        unsafe {
            asm!("mov dr0, {}", "mov dr1, {}", "mov dr2, {}", "mov dr3, {}",
                 in(reg) want[0], in(reg) want[1], in(reg) want[2], in(reg) want[3])
        };
        let rdtscp =
            cpuid(0x8000_0000, 0).eax >= 0x8000_0001 && cpuid(0x8000_0001, 0).edx & (1 << 27) != 0;
        let aux = (marker >> 4) & 0xFFFF_FFFF;
        if rdtscp {
            // SAFETY: the hypervisor keeps IA32_TSC_AUX per vCPU.
            unsafe { wrmsr(IA32_TSC_AUX, aux) };
        }
        println!("dr64: markers set");
        spin(SPIN);
        let got = read_drs();
        match (0..4).find(|&i| got[i] != want[i]) {
            None => println!("dr64: dr0-dr3 kept"),
            Some(i) => println!("dr64: FAIL dr{i}={:#x} expected {:#x}", got[i], want[i]),
        }
        if rdtscp {
            let ecx: u32;
            // SAFETY: RDTSCP exists (CPUID); it only reads.
            unsafe { asm!("rdtscp", out("eax") _, out("edx") _, out("ecx") ecx) };
            if u64::from(ecx) == aux {
                println!("dr64: tsc_aux kept");
            } else {
                println!("dr64: FAIL tsc_aux={ecx:#x} expected {aux:#x}");
            }
        } else {
            println!("dr64: no rdtscp");
        }
    }
}
