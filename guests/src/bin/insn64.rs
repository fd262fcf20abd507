//! `insn64`: instructions the hypervisor intercepts because they reach beyond the VM.
//!
//! WBINVD and INVD must complete (the hypervisor skips them: their machine-wide cache
//! effects are not the guest's to have), RDPMC must raise #GP(0) (no performance
//! counters are offered), and MONITOR, which CPUID hides, must raise #UD: the last
//! one ends the guest through the guest library's report of an unexpected exception
//! (`vector=6`). Before that, guest-physical space with neither RAM nor a device
//! (0x3000_0000, inside the identity map the loader builds, far beyond RAM) must
//! answer as a PC's bus does: reads all ones, writes dropped.
//!
//! Prints:
//! ```text
//! insn64: wbinvd ok
//! insn64: invd ok
//! insn64: rdpmc -> #GP(0x0)
//! insn64: unbacked read 0xffffffffffffffff, after a write 0xffffffffffffffff
//! insn64: monitor next
//! guest: unexpected exception vector=6 error=0x0 rip=0x...
//! ```

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(target_os = "none")]
mod guest {
    use core::arch::asm;
    use guests::{idt, println};

    guests::entry_point!(main);

    fn main() {
        let handlers = idt::install();
        // SAFETY: WBINVD/INVD inside a VM: the hypervisor completes them as no-ops;
        // this guest has no dirty data it depends on losing or keeping.
        unsafe { asm!("wbinvd") };
        println!("insn64: wbinvd ok");
        // SAFETY: as above.
        unsafe { asm!("invd") };
        println!("insn64: invd ok");
        // SAFETY: exactly the 2-byte RDPMC, skipped by the armed #GP handler.
        let r = unsafe {
            handlers.guarded(2, || {
                asm!("rdpmc", in("ecx") 0u32, out("eax") _, out("edx") _);
            })
        };
        match r {
            Ok(()) => println!("insn64: rdpmc -> no fault (ERROR)"),
            Err(f) => println!("insn64: rdpmc -> #GP({:#x})", f.error_code),
        }
        const UNBACKED: usize = 0x3000_0000;
        // SAFETY: guest-physical space without RAM behind it: the hypervisor
        // completes both accesses (volatile, so both are really made); nothing of
        // this guest lives there.
        let (before, after) = unsafe {
            let p = UNBACKED as *mut u64;
            let before = core::ptr::read_volatile(p);
            core::ptr::write_volatile(p, 0x1234_5678);
            (before, core::ptr::read_volatile(p))
        };
        println!("insn64: unbacked read {before:#x}, after a write {after:#x}");
        println!("insn64: monitor next");
        let line = 0u64;
        // SAFETY: MONITOR on a line of this guest's own stack; #UD is expected.
        unsafe { asm!("monitor", in("rax") &line, in("ecx") 0u32, in("edx") 0u32) };
        println!("insn64: monitor -> no fault (ERROR)");
    }
}
