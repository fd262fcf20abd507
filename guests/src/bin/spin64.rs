//! `spin64`: a guest that never yields.
//!
//! After one line it spins forever with interrupts disabled (`cli` then a jump to
//! itself): no HLT, no I/O, no exits of its own. The hypervisor must take the CPU
//! back with its own timer (preemption timer / intercepted host interrupts).
//!
//! Prints `spin64: spinning forever`.

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(target_os = "none")]
mod guest {
    use guests::println;

    guests::entry_point!(main);

    fn main() {
        println!("spin64: spinning forever");
        // SAFETY: only this vCPU is affected; the loop is the test.
        unsafe { core::arch::asm!("cli", "2:", "jmp 2b", options(noreturn, nomem, nostack)) }
    }
}
