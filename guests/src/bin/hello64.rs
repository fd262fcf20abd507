//! `hello64`: the basic long-mode guest.
//!
//! Entered at `e_entry` in 64-bit mode on the hypervisor's identity map with RSP at
//! the top of guest RAM; it installs no GDT or IDT, so it checks only the state the
//! hypervisor sets up. It prints what CPUID says about virtualisation, then a few
//! "alive" lines spaced by busy-waits (to show it keeps making progress while a
//! hostile VM runs next to it), then stops with `cli; hlt`.
//!
//! Prints:
//! ```text
//! hello64: hello from long mode
//! hello64: cpuid hypervisor=<0|1> vmx=<0|1> svm=<0|1> signature=<12 chars>
//! hello64: alive 1
//! ...
//! hello64: alive 5
//! hello64: done
//! ```

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(target_os = "none")]
mod guest {
    use guests::cpu::{cpuid, hypervisor_signature, spin};
    use guests::println;

    /// PAUSE iterations between two "alive" lines (a fraction of a second to a few
    /// seconds, depending on the machine and the emulator).
    pub const ALIVE_SPIN: u64 = 2_000_000;
    /// Number of "alive" lines.
    pub const ALIVE_LINES: u64 = 5;

    guests::entry_point!(main);

    fn main() {
        println!("hello64: hello from long mode");

        let leaf1 = cpuid(1, 0);
        let hypervisor = (leaf1.ecx >> 31) & 1;
        let vmx = (leaf1.ecx >> 5) & 1;
        // Leaf 0x8000_0001 only exists if the extended maximum says so.
        let svm = if cpuid(0x8000_0000, 0).eax >= 0x8000_0001 {
            (cpuid(0x8000_0001, 0).ecx >> 2) & 1
        } else {
            0
        };
        let signature = hypervisor_signature();
        println!(
            "hello64: cpuid hypervisor={hypervisor} vmx={vmx} svm={svm} signature={}",
            signature.as_str()
        );

        for n in 1..=ALIVE_LINES {
            spin(ALIVE_SPIN);
            println!("hello64: alive {n}");
        }
        println!("hello64: done");
    }
}
