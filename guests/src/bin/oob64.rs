//! `oob64`: a write far beyond guest RAM.
//!
//! Guest-physical 0x3000_0000 (768 MiB) is inside the hypervisor's 1 GiB identity
//! map, so the guest's own paging allows the write, but there is no RAM behind it:
//! the nested/extended page tables must fault and the hypervisor must stop the VM.
//!
//! Prints `oob64: writing beyond RAM`; if the write completes anyway it prints
//! `oob64: ERROR write went through` and stops with `cli; hlt`.

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(target_os = "none")]
mod guest {
    use guests::println;

    /// 768 MiB: mapped by the guest page tables, far outside guest RAM.
    const BEYOND_RAM: usize = 0x3000_0000;

    guests::entry_point!(main);

    fn main() {
        println!("oob64: writing beyond RAM");
        // SAFETY: deliberately invalid: the point of the test is that the
        // hypervisor stops the VM here. Volatile so the store is really emitted.
        unsafe { core::ptr::write_volatile(BEYOND_RAM as *mut u64, 0x0b0b_dead_beef) };
        println!("oob64: ERROR write went through");
    }
}
