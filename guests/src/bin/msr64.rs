//! `msr64`: MSR reads and writes, including ones the hypervisor must refuse.
//!
//! Installs its own GDT and IDT first (see `guests::idt`) so that a `#GP` is
//! caught and the faulting RDMSR/WRMSR skipped. EFER should show LME and LMA (0x500
//! bits); the SVM host-save area MSR and VM_CR must not be reachable by a guest, so
//! the hypervisor is expected to inject `#GP` for both.
//!
//! Prints:
//! ```text
//! msr64: efer=0x<hex>
//! msr64: apic_base=0x<hex>
//! msr64: rdmsr 0xc0010117 -> #GP            (or "-> 0x<hex> (no fault)")
//! msr64: wrmsr 0xc0010114 -> #GP            (or "-> ok (no fault)")
//! msr64: done
//! ```
//! (`efer=#GP` / `apic_base=#GP` if those reads fault.)

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(target_os = "none")]
mod guest {
    use guests::{idt, println};

    const IA32_EFER: u32 = 0xC000_0080;
    const IA32_APIC_BASE: u32 = 0x1B;
    const VM_HSAVE_PA: u32 = 0xC001_0117;
    const VM_CR: u32 = 0xC001_0114;

    guests::entry_point!(main);

    fn main() {
        let handlers = idt::install();

        match handlers.try_rdmsr(IA32_EFER) {
            Ok(v) => println!("msr64: efer={v:#x}"),
            Err(_) => println!("msr64: efer=#GP"),
        }
        match handlers.try_rdmsr(IA32_APIC_BASE) {
            Ok(v) => println!("msr64: apic_base={v:#x}"),
            Err(_) => println!("msr64: apic_base=#GP"),
        }
        match handlers.try_rdmsr(VM_HSAVE_PA) {
            Ok(v) => println!("msr64: rdmsr {VM_HSAVE_PA:#x} -> {v:#x} (no fault)"),
            Err(_) => println!("msr64: rdmsr {VM_HSAVE_PA:#x} -> #GP"),
        }
        // SAFETY: a guest writing VM_CR must be stopped by the hypervisor; if it is
        // not, clearing it inside a VM has no effect on guest memory safety.
        match unsafe { handlers.try_wrmsr(VM_CR, 0) } {
            Ok(()) => println!("msr64: wrmsr {VM_CR:#x} -> ok (no fault)"),
            Err(_) => println!("msr64: wrmsr {VM_CR:#x} -> #GP"),
        }
        println!("msr64: done");
    }
}
