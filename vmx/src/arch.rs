//! Thin wrappers over the privileged instructions the VT-x runtime uses: MSRs,
//! control and segment registers, descriptor tables, FXSAVE/FXRSTOR, and the VMX
//! instructions with their VMfailInvalid/VMfailValid outcome (SDM Vol. 3C 31.2,
//! "Conventions": CF=1 is VMfailInvalid, ZF=1 is VMfailValid with the error number in
//! the current VMCS).
//!
//! Every function is `unsafe`: each touches processor state that only ring 0 may, and
//! the callers in [`crate::backend`] state why their use is sound.

use core::arch::asm;

/// How a VMX instruction failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmFail {
    /// CF=1: no current VMCS (or the operand is invalid and there is none to report in).
    Invalid,
    /// ZF=1: the VM-instruction error field of the current VMCS holds the reason.
    Valid,
}

/// Turns the CF/ZF bytes captured after a VMX instruction into a result.
fn outcome(cf: u8, zf: u8) -> Result<(), VmFail> {
    if cf != 0 {
        Err(VmFail::Invalid)
    } else if zf != 0 {
        Err(VmFail::Valid)
    } else {
        Ok(())
    }
}

/// # Safety
/// `msr` must exist on this processor (RDMSR of an absent MSR raises #GP).
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller guarantees the MSR exists; RDMSR only reads.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    ((hi as u64) << 32) | lo as u64
}

/// # Safety
/// `msr` must exist and `value` be valid for it; the write must not break the host.
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: upheld by the caller.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack, preserves_flags))
    };
}

macro_rules! read_cr {
    ($name:ident, $reg:literal) => {
        /// # Safety
        /// Ring 0 only.
        pub unsafe fn $name() -> u64 {
            let v: u64;
            // SAFETY: reading a control register has no side effects in ring 0.
            unsafe { asm!(concat!("mov {}, ", $reg), out(reg) v, options(nomem, nostack, preserves_flags)) };
            v
        }
    };
}
read_cr!(read_cr0, "cr0");
read_cr!(read_cr2, "cr2");
read_cr!(read_cr3, "cr3");
read_cr!(read_cr4, "cr4");

/// # Safety
/// `value` must be a CR0 the host can keep running with.
pub unsafe fn write_cr0(value: u64) {
    // SAFETY: upheld by the caller.
    unsafe { asm!("mov cr0, {}", in(reg) value, options(nostack, preserves_flags)) };
}

/// # Safety
/// Ring 0. CR2 only matters to a page-fault handler; the hypervisor takes no page
/// faults it recovers from, so it is free to hold a guest's value.
pub unsafe fn write_cr2(value: u64) {
    // SAFETY: upheld by the caller.
    unsafe { asm!("mov cr2, {}", in(reg) value, options(nomem, nostack, preserves_flags)) };
}

/// # Safety
/// `value` must be a CR4 the host can keep running with.
pub unsafe fn write_cr4(value: u64) {
    // SAFETY: upheld by the caller.
    unsafe { asm!("mov cr4, {}", in(reg) value, options(nostack, preserves_flags)) };
}

macro_rules! read_seg {
    ($name:ident, $reg:literal) => {
        /// The selector in this segment register.
        pub fn $name() -> u16 {
            let v: u16;
            // SAFETY: reading a segment selector has no side effects.
            unsafe { asm!(concat!("mov {:x}, ", $reg), out(reg) v, options(nomem, nostack, preserves_flags)) };
            v
        }
    };
}
read_seg!(read_cs, "cs");
read_seg!(read_ss, "ss");
read_seg!(read_ds, "ds");
read_seg!(read_es, "es");
read_seg!(read_fs, "fs");
read_seg!(read_gs, "gs");

/// The task register's selector.
pub fn read_tr() -> u16 {
    let v: u16;
    // SAFETY: STR only reads the task register.
    unsafe { asm!("str {:x}", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

#[repr(C, packed)]
struct TablePointer {
    limit: u16,
    base: u64,
}

/// GDTR: (base, limit).
pub fn sgdt() -> (u64, u16) {
    let mut p = TablePointer { limit: 0, base: 0 };
    // SAFETY: SGDT stores 10 bytes into `p`, which is exactly that large.
    unsafe { asm!("sgdt [{}]", in(reg) &mut p, options(nostack, preserves_flags)) };
    (p.base, p.limit)
}

/// IDTR: (base, limit).
pub fn sidt() -> (u64, u16) {
    let mut p = TablePointer { limit: 0, base: 0 };
    // SAFETY: SIDT stores 10 bytes into `p`, which is exactly that large.
    unsafe { asm!("sidt [{}]", in(reg) &mut p, options(nostack, preserves_flags)) };
    (p.base, p.limit)
}

pub use vcpu::fpu::{fxrstor, fxsave, FxArea};

/// # Safety
/// CR4.VMXE set, CR0/CR4 within the fixed bits, IA32_FEATURE_CONTROL locked with VMX
/// enabled, and `pa` a 4 KiB-aligned VMXON region holding the revision identifier.
pub unsafe fn vmxon(pa: u64) -> Result<(), VmFail> {
    let (cf, zf): (u8, u8);
    // SAFETY: upheld by the caller; the operand is a memory location holding `pa`.
    unsafe {
        asm!("vmxon qword ptr [{}]", "setc {}", "setz {}", in(reg) &pa, out(reg_byte) cf, out(reg_byte) zf, options(nostack))
    };
    outcome(cf, zf)
}

/// # Safety
/// In VMX root operation; afterwards nothing may use VMX until the next VMXON.
pub unsafe fn vmxoff() -> Result<(), VmFail> {
    let (cf, zf): (u8, u8);
    // SAFETY: upheld by the caller.
    unsafe {
        asm!("vmxoff", "setc {}", "setz {}", out(reg_byte) cf, out(reg_byte) zf, options(nostack))
    };
    outcome(cf, zf)
}

/// # Safety
/// In VMX root operation; `pa` is a VMCS region this backend owns.
pub unsafe fn vmclear(pa: u64) -> Result<(), VmFail> {
    let (cf, zf): (u8, u8);
    // SAFETY: upheld by the caller.
    unsafe {
        asm!("vmclear qword ptr [{}]", "setc {}", "setz {}", in(reg) &pa, out(reg_byte) cf, out(reg_byte) zf, options(nostack))
    };
    outcome(cf, zf)
}

/// # Safety
/// In VMX root operation; `pa` is a VMCS region this backend owns (revision set).
pub unsafe fn vmptrld(pa: u64) -> Result<(), VmFail> {
    let (cf, zf): (u8, u8);
    // SAFETY: upheld by the caller.
    unsafe {
        asm!("vmptrld qword ptr [{}]", "setc {}", "setz {}", in(reg) &pa, out(reg_byte) cf, out(reg_byte) zf, options(nostack))
    };
    outcome(cf, zf)
}

/// The current-VMCS pointer of this processor (all ones when there is none).
///
/// # Safety
/// In VMX root operation.
pub unsafe fn vmptrst() -> u64 {
    let mut pa: u64 = 0;
    // SAFETY: upheld by the caller; VMPTRST stores 8 bytes into `pa`.
    unsafe { asm!("vmptrst qword ptr [{}]", in(reg) &mut pa, options(nostack, preserves_flags)) };
    pa
}

/// # Safety
/// In VMX root operation with a current VMCS.
pub unsafe fn vmread(field: u32) -> Result<u64, VmFail> {
    let (value, cf, zf): (u64, u8, u8);
    // SAFETY: upheld by the caller; VMREAD only reads the current VMCS.
    unsafe {
        asm!("vmread {}, {}", "setc {}", "setz {}", out(reg) value, in(reg) field as u64, out(reg_byte) cf, out(reg_byte) zf, options(nostack))
    };
    outcome(cf, zf).map(|()| value)
}

/// # Safety
/// In VMX root operation with a current VMCS; the value must be one the backend means
/// to run the guest with.
pub unsafe fn vmwrite(field: u32, value: u64) -> Result<(), VmFail> {
    let (cf, zf): (u8, u8);
    // SAFETY: upheld by the caller.
    unsafe {
        asm!("vmwrite {}, {}", "setc {}", "setz {}", in(reg) field as u64, in(reg) value, out(reg_byte) cf, out(reg_byte) zf, options(nostack))
    };
    outcome(cf, zf)
}

/// # Safety
/// In VMX root operation; `kind` a type the processor supports.
pub unsafe fn invept(kind: u64, eptp: u64) -> Result<(), VmFail> {
    let descriptor: [u64; 2] = [eptp, 0];
    let (cf, zf): (u8, u8);
    // SAFETY: upheld by the caller; the descriptor is 16 bytes as INVEPT requires.
    unsafe {
        asm!("invept {}, [{}]", "setc {}", "setz {}", in(reg) kind, in(reg) &descriptor, out(reg_byte) cf, out(reg_byte) zf, options(nostack))
    };
    outcome(cf, zf)
}

/// # Safety
/// In VMX root operation; `kind` a type the processor supports.
pub unsafe fn invvpid(kind: u64, vpid: u16) -> Result<(), VmFail> {
    let descriptor: [u64; 2] = [vpid as u64, 0];
    let (cf, zf): (u8, u8);
    // SAFETY: upheld by the caller; the descriptor is 16 bytes as INVVPID requires.
    unsafe {
        asm!("invvpid {}, [{}]", "setc {}", "setz {}", in(reg) kind, in(reg) &descriptor, out(reg_byte) cf, out(reg_byte) zf, options(nostack))
    };
    outcome(cf, zf)
}
