//! `triple64`: a deliberate triple fault.
//!
//! Loads an IDT with limit 0 and executes INT3: delivering #BP fails (#GP), so does
//! delivering the #GP (#DF), and so does the #DF: a triple fault (shutdown), which
//! the hypervisor must report and survive.
//!
//! Prints `triple64: about to triple fault`; if execution continues it prints
//! `triple64: ERROR still alive` and stops with `cli; hlt`.

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(target_os = "none")]
mod guest {
    use guests::println;

    /// LIDT operand: limit 0, base 0, i.e. no usable vector at all.
    #[repr(C, packed)]
    struct DescriptorPointer {
        limit: u16,
        base: u64,
    }

    guests::entry_point!(main);

    fn main() {
        println!("triple64: about to triple fault");
        let empty = DescriptorPointer { limit: 0, base: 0 };
        // SAFETY: the triple fault is the point of the test.
        unsafe { core::arch::asm!("lidt [{}]", "int3", in(reg) &empty) };
        println!("triple64: ERROR still alive");
    }
}
