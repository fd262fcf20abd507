//! `reset64`: a guest that reboots its machine as soon as it starts.
//!
//! It prints its banner, then asks for a reset through the i8042 (command 0xFE on
//! port 0x64 pulses the CPU reset line, as Linux's `reboot=k` does). A machine
//! restarts; so does its VM under the default `on_reset = "restart"`, from its image
//! with fresh RAM, which prints the banner again; after a few restarts in quick
//! succession the hypervisor cuts the loop off and stops the VM.
//!
//! Prints `reset64: booted, resetting` each time it starts.

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(target_os = "none")]
mod guest {
    use guests::println;

    guests::entry_point!(main);

    fn main() {
        println!("reset64: booted, resetting");
        // SAFETY: the i8042 is the VM's own emulated controller; the reset is the test.
        unsafe { guests::cpu::outb(0x64, 0xFE) };
        println!("reset64: FAIL the reset did not happen");
    }
}
