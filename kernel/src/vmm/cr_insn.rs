//! Decoding an intercepted write to CR0/CR4 when the backend cannot: AMD-V without
//! DecodeAssists (QEMU's TCG among them, CPUID 8000_000A EDX[7] = 0) reports only
//! "CRn was written" (APM Vol. 2 15.9), not the source register, and without NRIP
//! save not the instruction's length either. The core then fetches the instruction
//! at CS:RIP through the guest's page tables and decodes it with `iced-x86`, as MMIO
//! emulation does ([`super::mmio`]).
//!
//! Handled: `MOV CRn, r32/r64` (0F 22), `CLTS` and the register form of `LMSW`. The
//! memory form of LMSW is refused with an error (its operand would need a
//! segmented, paged data read); no compiler emits it.

use super::guest_walk::{self, GuestMemory, WalkError};
use iced_x86::{Code, Decoder, DecoderOptions, OpKind, Register};
use vcpu::cr_policy::cr0;
use vcpu::{ControlRegs, GuestRegisters};

/// A decoded CR write: the register written, the value it would take and the length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrWrite {
    pub cr: u8,
    pub value: u64,
    pub len: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrInsnError {
    Fetch(WalkError),
    /// Not a MOV to CR0/CR4, CLTS or LMSW r16 (the guest changed its code, or an
    /// encoding this decoder does not handle, such as LMSW m16).
    Unsupported,
}

impl core::fmt::Display for CrInsnError {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self {
            CrInsnError::Fetch(e) => write!(f, "instruction fetch failed: {e}"),
            CrInsnError::Unsupported => {
                write!(f, "not a MOV to CR0/CR4, CLTS or register LMSW")
            }
        }
    }
}

/// The value of general-purpose register `r` (16, 32 or 64 bits wide; its full
/// register is read). iced numbers AX..R15W, EAX..R15D and RAX..R15 in three
/// consecutive blocks of 16 in encoding order.
fn gpr(regs: &GuestRegisters, rsp: u64, r: Register) -> Option<u64> {
    let offset = (r as u32).checked_sub(Register::AX as u32)?;
    if r as u32 > Register::R15 as u32 {
        return None;
    }
    Some(match offset % 16 {
        0 => regs.rax,
        1 => regs.rcx,
        2 => regs.rdx,
        3 => regs.rbx,
        4 => rsp,
        5 => regs.rbp,
        6 => regs.rsi,
        7 => regs.rdi,
        8 => regs.r8,
        9 => regs.r9,
        10 => regs.r10,
        11 => regs.r11,
        12 => regs.r12,
        13 => regs.r13,
        14 => regs.r14,
        15 => regs.r15,
        _ => return None,
    })
}

/// Decodes the CR-writing instruction in `bytes` as `bitness`-bit code, against the
/// current control registers `cur` (CLTS and LMSW modify CR0's current value).
pub fn decode(
    bytes: &[u8],
    bitness: u32,
    cur: &ControlRegs,
    regs: &GuestRegisters,
    rsp: u64,
) -> Result<CrWrite, CrInsnError> {
    let mut decoder = Decoder::new(bitness, bytes, DecoderOptions::NONE);
    let insn = decoder.decode();
    if insn.is_invalid() {
        return Err(CrInsnError::Unsupported);
    }
    let len = insn.len();
    match insn.code() {
        Code::Mov_cr_r32 | Code::Mov_cr_r64 => {
            let cr = match insn.op0_register() {
                Register::CR0 => 0,
                Register::CR4 => 4,
                _ => return Err(CrInsnError::Unsupported),
            };
            let mut value = gpr(regs, rsp, insn.op1_register()).ok_or(CrInsnError::Unsupported)?;
            if insn.code() == Code::Mov_cr_r32 {
                value &= 0xFFFF_FFFF;
            }
            Ok(CrWrite { cr, value, len })
        }
        Code::Clts => Ok(CrWrite {
            cr: 0,
            value: cur.cr0 & !cr0::TS,
            len,
        }),
        // LMSW loads CR0 bits 3:0 and can set PE but not clear it (SDM Vol. 2A LMSW).
        Code::Lmsw_rm16 | Code::Lmsw_r32m16 | Code::Lmsw_r64m16
            if insn.op0_kind() == OpKind::Register =>
        {
            let source = gpr(regs, rsp, insn.op0_register()).ok_or(CrInsnError::Unsupported)?;
            let value = (cur.cr0 & !0xF) | (source & 0xF) | (cur.cr0 & cr0::PE);
            Ok(CrWrite { cr: 0, value, len })
        }
        _ => Err(CrInsnError::Unsupported),
    }
}

/// Fetches the instruction at `rip` through the guest's page tables and decodes it.
pub fn fetch_and_decode(
    mem: &impl GuestMemory,
    cur: &ControlRegs,
    rip: u64,
    regs: &GuestRegisters,
    rsp: u64,
) -> Result<CrWrite, CrInsnError> {
    let mut bytes = [0u8; 15];
    let n = guest_walk::fetch_instruction(mem, cur, rip, &mut bytes).map_err(CrInsnError::Fetch)?;
    decode(&bytes[..n], guest_walk::code_bitness(cur), cur, regs, rsp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cur() -> ControlRegs {
        ControlRegs {
            cr0: 0x8000_0011 | cr0::TS,
            ..Default::default()
        }
    }

    #[test]
    fn mov_to_cr_at_every_width() {
        let regs = GuestRegisters {
            rax: 0xFFFF_FFFF_0000_0020,
            r9: 0x6F8,
            ..Default::default()
        };
        // mov cr4, rax (64-bit), mov cr4, r9 (41 prefix), mov cr0, rax
        let w = decode(&[0x0F, 0x22, 0xE0], 64, &cur(), &regs, 0).unwrap();
        assert_eq!(
            w,
            CrWrite {
                cr: 4,
                value: 0xFFFF_FFFF_0000_0020,
                len: 3
            }
        );
        let w = decode(&[0x41, 0x0F, 0x22, 0xE1], 64, &cur(), &regs, 0).unwrap();
        assert_eq!(
            w,
            CrWrite {
                cr: 4,
                value: 0x6F8,
                len: 4
            }
        );
        let w = decode(&[0x0F, 0x22, 0xC0], 32, &cur(), &regs, 0).unwrap();
        assert_eq!(
            w,
            CrWrite {
                cr: 0,
                value: 0x20,
                len: 3
            },
            "32-bit operand"
        );
        // mov cr4, rsp reads RSP from the VMCB/VMCS value.
        let w = decode(&[0x0F, 0x22, 0xE4], 64, &cur(), &regs, 0x1234).unwrap();
        assert_eq!(w.value, 0x1234);
        // mov cr3, rax: not ours.
        assert_eq!(
            decode(&[0x0F, 0x22, 0xD8], 64, &cur(), &regs, 0),
            Err(CrInsnError::Unsupported)
        );
    }

    #[test]
    fn clts_and_lmsw() {
        let regs = GuestRegisters {
            rbx: 0xFFF0,
            ..Default::default()
        };
        let c = cur();
        let w = decode(&[0x0F, 0x06], 64, &c, &regs, 0).unwrap();
        assert_eq!(
            w,
            CrWrite {
                cr: 0,
                value: c.cr0 & !cr0::TS,
                len: 2
            }
        );
        // lmsw bx: bits 3:0 = 0 cannot clear PE.
        let w = decode(&[0x0F, 0x01, 0xF3], 64, &c, &regs, 0).unwrap();
        assert_eq!(
            w,
            CrWrite {
                cr: 0,
                value: (c.cr0 & !0xF) | cr0::PE,
                len: 3
            }
        );
        // lmsw [rax]: the memory form is refused.
        assert_eq!(
            decode(&[0x0F, 0x01, 0x30], 64, &c, &regs, 0),
            Err(CrInsnError::Unsupported)
        );
    }
}
