//! The hypervisor's hypercall ABI for 64-bit guests: number in RAX, result in RAX,
//! issued with VMMCALL on AMD and VMCALL on Intel.
//!
//! The instruction is picked from the CPUID vendor string rather than tried: the
//! wrong one raises `#UD`, which a guest without an IDT turns into a triple fault.

use core::arch::asm;

use crate::cpu::vendor;

/// Which instruction reaches the hypervisor on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hypercall {
    /// AMD-V: VMMCALL (0F 01 D9).
    Vmmcall,
    /// VT-x: VMCALL (0F 01 C1).
    Vmcall,
}

impl Hypercall {
    /// The instruction for this CPU's vendor, or the vendor string (for the guest to
    /// report) when it is neither AMD's nor Intel's.
    pub fn detect() -> Result<Self, crate::cpu::Signature> {
        let vendor = vendor();
        match vendor.as_str() {
            "AuthenticAMD" => Ok(Hypercall::Vmmcall),
            "GenuineIntel" => Ok(Hypercall::Vmcall),
            _ => Err(vendor),
        }
    }

    /// Issues hypercall `nr` (other argument registers zero) and returns RAX.
    pub fn call(self, nr: u64) -> u64 {
        // The two instructions take the same registers; only the opcode differs.
        macro_rules! hypercall {
            ($insn:literal, $rax:ident) => {
                asm!(
                    $insn,
                    inout("rax") $rax,
                    inout("rcx") 0u64 => _,
                    inout("rdx") 0u64 => _,
                    inout("rsi") 0u64 => _,
                    inout("rdi") 0u64 => _,
                    inout("r8") 0u64 => _,
                    inout("r9") 0u64 => _,
                    inout("r10") 0u64 => _,
                    inout("r11") 0u64 => _,
                )
            };
        }
        let mut rax = nr;
        // SAFETY: the hypervisor handles the exit; every register a hypercall ABI
        // might use for arguments or results is declared clobbered.
        unsafe {
            match self {
                Hypercall::Vmmcall => hypercall!("vmmcall", rax),
                Hypercall::Vmcall => hypercall!("vmcall", rax),
            }
        }
        rax
    }
}
