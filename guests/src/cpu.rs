//! Thin wrappers around the x86 instructions the guests use.
//!
//! Everything is `asm!` rather than `core::arch` intrinsics: on the soft-float
//! `x86_64-unknown-none` target `core::hint::spin_loop` compiles to nothing (its
//! PAUSE is gated on SSE2), and CPUID must keep RBX, which LLVM reserves.

use core::arch::asm;

pub use crate::text::Signature;

/// The four registers CPUID returns.
#[derive(Clone, Copy, Debug)]
pub struct Cpuid {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// Executes CPUID with EAX = `leaf`, ECX = `subleaf`.
pub fn cpuid(leaf: u32, subleaf: u32) -> Cpuid {
    let (eax, ebx, ecx, edx): (u32, u32, u32, u32);
    // SAFETY: CPUID only writes the four registers; RBX is saved in a scratch
    // register around it because LLVM reserves RBX and may not name it an operand.
    unsafe {
        asm!(
            "mov {tmp:r}, rbx",
            "cpuid",
            "xchg {tmp:r}, rbx",
            tmp = out(reg) ebx,
            inout("eax") leaf => eax,
            inout("ecx") subleaf => ecx,
            out("edx") edx,
            options(nomem, nostack, preserves_flags),
        );
    }
    Cpuid { eax, ebx, ecx, edx }
}

/// The CPU vendor string from leaf 0 (`"AuthenticAMD"`, `"GenuineIntel"`).
pub fn vendor() -> Signature {
    let r = cpuid(0, 0);
    Signature::from_regs(r.ebx, r.edx, r.ecx)
}

/// The hypervisor signature from leaf 0x4000_0000 (EBX, ECX, EDX).
pub fn hypervisor_signature() -> Signature {
    let r = cpuid(0x4000_0000, 0);
    Signature::from_regs(r.ebx, r.ecx, r.edx)
}

/// Reads a byte from an I/O port.
///
/// # Safety
/// Port I/O can reconfigure hardware; the caller picks a port it owns.
pub unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags));
    value
}

/// Reads a 16-bit word from an I/O port.
///
/// # Safety
/// As for [`inb`].
pub unsafe fn inw(port: u16) -> u16 {
    let value: u16;
    asm!("in ax, dx", out("ax") value, in("dx") port, options(nomem, nostack, preserves_flags));
    value
}

/// Reads a 32-bit dword from an I/O port.
///
/// # Safety
/// As for [`inb`].
pub unsafe fn inl(port: u16) -> u32 {
    let value: u32;
    asm!("in eax, dx", out("eax") value, in("dx") port, options(nomem, nostack, preserves_flags));
    value
}

/// Writes a byte to an I/O port.
///
/// # Safety
/// As for [`inb`].
pub unsafe fn outb(port: u16, value: u8) {
    asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags));
}

/// Writes a 16-bit word to an I/O port.
///
/// # Safety
/// As for [`inb`].
pub unsafe fn outw(port: u16, value: u16) {
    asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags));
}

/// Writes a 32-bit dword to an I/O port.
///
/// # Safety
/// As for [`inb`].
pub unsafe fn outl(port: u16, value: u32) {
    asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags));
}

/// Reads an MSR. Without an IDT ([`crate::idt`]) a `#GP` here triple-faults.
///
/// # Safety
/// The MSR must exist (or a `#GP` handler must be installed).
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags));
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Writes an MSR.
///
/// # Safety
/// MSR writes can change anything about the CPU; the MSR must exist (or a `#GP`
/// handler must be installed).
pub unsafe fn wrmsr(msr: u32, value: u64) {
    asm!(
        "wrmsr",
        in("ecx") msr,
        in("eax") value as u32,
        in("edx") (value >> 32) as u32,
        options(nostack, preserves_flags),
    );
}

/// One PAUSE instruction (a spin-loop hint that also keeps the loop from being
/// optimised away: `asm!` is volatile).
#[inline(always)]
pub fn pause() {
    // SAFETY: PAUSE has no architectural effect.
    unsafe { asm!("pause", options(nomem, nostack, preserves_flags)) };
}

/// Busy-waits for `iterations` PAUSE instructions.
pub fn spin(iterations: u64) {
    for _ in 0..iterations {
        pause();
    }
}

/// Stops the guest: `cli; hlt`, which the hypervisor treats as "VM finished".
/// Loops in case something (an NMI, a confused hypervisor) resumes it.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: disabling interrupts and halting affects only this vCPU.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}
