//! MMIO instruction emulation: decode the guest instruction that touched an MMIO page
//! (the local APIC at 0xFEE00000, the IOAPIC at 0xFEC00000, ...), hand the access to a
//! device model, write a loaded value back into the destination register, and step
//! RIP over the instruction.
//!
//! Neither VT-x (EPT violation) nor AMD-V (nested page fault) tells the hypervisor
//! which register or how many bytes an access used; both give only the guest-physical
//! address and the direction. So the core fetches the instruction at CS:RIP through
//! the guest's page tables ([`super::guest_walk`]) and decodes it.
//!
//! Decoding uses the `iced-x86` crate (decoder only, `no_std`) rather than a hand-made
//! ModRM parser: x86 length decoding is the error-prone part (legacy prefixes in any
//! order, REX and its interaction with AH..BH vs SPL..DIL, 16-bit ModRM addressing,
//! SIB and RIP-relative forms, `moffs` widths that follow the *address* size, VEX/EVEX
//! escapes that must not be mistaken for LES/LDS/BOUND), and a wrong length silently
//! corrupts the guest when RIP is advanced. iced-x86 is tested against the full
//! instruction set, rejects invalid encodings (bad LOCK, reserved ModRM forms), and its
//! `Code` values name the exact encoding, so this module only has to say which of
//! those it accepts.
//!
//! Supported: what compilers and Linux's `readl`/`writel` emit for MMIO -
//! `MOV r/m, r` (88/89), `MOV r, r/m` (8A/8B), `MOV` with `moffs` (A0-A3),
//! `MOV r/m, imm` (C6/C7), `MOVZX` (0F B6/B7), `MOVSX` (0F BE/BF), `MOVSXD` (63), each
//! at every operand size (66 prefix, REX.W). Read-modify-write instructions (`ADD`,
//! `OR`, `AND`, `XOR`, `TEST`, `CMP`, `XCHG`, ...) and string instructions are rejected
//! with an error that names them: they need RFLAGS updates (which the `Vcpu` trait
//! cannot write) or several device accesses.
//!
//! Limits: RFLAGS.TF single-stepping is not honoured after an emulated instruction
//! (no #DB is queued); a 16-bit protected-mode code segment is decoded as 32-bit (see
//! [`guest_walk::code_bitness`]); accesses that straddle the end of the MMIO page are
//! passed to the device as one access at the exit's address.

use super::guest_walk::{self, GuestMemory, WalkError};
use iced_x86::{Code, Decoder, DecoderError, DecoderOptions, Mnemonic, OpKind, Register};
use vcpu::{GuestRegisters, Vcpu};

/// A general-purpose register as an MMIO instruction names it. `Ah`..`Bh` are bits
/// 15:8 of RAX..RBX (only reachable without a REX prefix, SDM Vol. 1 3.4.1.1); every
/// other variant means the register whose low bytes the operand size selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reg {
    Rax,
    Rcx,
    Rdx,
    Rbx,
    Rsp,
    Rbp,
    Rsi,
    Rdi,
    R8,
    R9,
    R10,
    R11,
    R12,
    R13,
    R14,
    R15,
    Ah,
    Ch,
    Dh,
    Bh,
}

/// In the ModRM `reg` encoding order, so iced's register numbering maps onto it.
const GPRS: [Reg; 16] = [
    Reg::Rax,
    Reg::Rcx,
    Reg::Rdx,
    Reg::Rbx,
    Reg::Rsp,
    Reg::Rbp,
    Reg::Rsi,
    Reg::Rdi,
    Reg::R8,
    Reg::R9,
    Reg::R10,
    Reg::R11,
    Reg::R12,
    Reg::R13,
    Reg::R14,
    Reg::R15,
];

/// How a loaded value narrower than its destination is widened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extend {
    /// Plain `MOV`: the access and the destination have the same width.
    None,
    /// `MOVZX`.
    Zero,
    /// `MOVSX` / `MOVSXD`.
    Sign,
}

/// The value a write stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operand {
    /// A register and its width in bytes (1, 2, 4, 8).
    Reg(Reg, u8),
    /// An immediate, already sign-extended as the instruction defines and truncated
    /// to the access width.
    Imm(u64),
}

/// What the instruction does with the MMIO location.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Load into `dest` (`dest_size` bytes), widened by `extend`.
    Read {
        dest: Reg,
        dest_size: u8,
        extend: Extend,
    },
    /// Store `src`.
    Write { src: Operand },
}

/// A decoded MMIO instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioInstruction {
    /// Instruction length in bytes (RIP advances by this much).
    pub len: usize,
    /// Width of the memory access in bytes: 1, 2, 4 or 8.
    pub size: u8,
    pub kind: Access,
}

impl MmioInstruction {
    pub fn is_write(&self) -> bool {
        matches!(self.kind, Access::Write { .. })
    }
}

/// Why an MMIO access could not be emulated. The core typically stops the VM (or
/// injects #UD / #GP) and reports the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmioError {
    /// The instruction bytes at CS:RIP could not be read.
    Fetch(WalkError),
    /// Only `available` bytes were there and the instruction needs more.
    Truncated { available: usize },
    /// The bytes are not a valid x86 instruction in this mode.
    Invalid,
    /// A valid instruction this emulator does not handle; `code` names the encoding.
    Unsupported { mnemonic: Mnemonic, code: Code },
    /// A supported mnemonic whose operands do not touch memory (`MOV EAX, EBX`), so it
    /// cannot have caused an MMIO exit.
    NoMemoryOperand { mnemonic: Mnemonic },
    /// `decode` was asked for a bitness other than 16, 32 or 64.
    BadBitness(u32),
    /// The instruction reads but the exit says write, or the reverse: the guest
    /// changed the code under us (another vCPU, self-modifying code) or the exit
    /// information is wrong.
    DirectionMismatch { exit_write: bool },
    /// RSP is the register operand; it lives in the VMCB/VMCS, not in
    /// [`GuestRegisters`] (use the `_with_rsp` functions, as [`emulate`] does).
    StackPointer,
    /// [`complete_read`] on a write, or [`write_value`] on a read.
    WrongDirection,
}

/// Formats a `Debug` name (iced's `Mnemonic::Add` -> "add") in lower case.
struct Lower<'a, 'b>(&'a mut core::fmt::Formatter<'b>);

impl core::fmt::Write for Lower<'_, '_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for c in s.chars() {
            core::fmt::Write::write_char(self.0, c.to_ascii_lowercase())?;
        }
        Ok(())
    }
}

impl core::fmt::Display for MmioError {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match *self {
            MmioError::Fetch(e) => write!(f, "cannot fetch the instruction: {e}"),
            MmioError::Truncated { available } => {
                write!(f, "instruction truncated after {available} bytes")
            }
            MmioError::Invalid => write!(f, "invalid instruction"),
            MmioError::Unsupported { mnemonic, code } => {
                write!(f, "unsupported MMIO instruction `")?;
                core::fmt::Write::write_fmt(&mut Lower(f), format_args!("{mnemonic:?}"))?;
                write!(f, "` ({code:?})")
            }
            MmioError::NoMemoryOperand { mnemonic } => {
                write!(f, "`")?;
                core::fmt::Write::write_fmt(&mut Lower(f), format_args!("{mnemonic:?}"))?;
                write!(f, "` without a memory operand cannot access MMIO")
            }
            MmioError::BadBitness(b) => write!(f, "no {b}-bit x86 code"),
            MmioError::DirectionMismatch { exit_write } => write!(
                f,
                "the exit reports a {} but the instruction {}",
                if exit_write { "write" } else { "read" },
                if exit_write { "reads" } else { "writes" }
            ),
            MmioError::StackPointer => write!(f, "RSP operand needs the VMCB/VMCS value"),
            MmioError::WrongDirection => write!(f, "operation does not match the access"),
        }
    }
}

/// Maps an iced general-purpose register to ours with its width. iced numbers each
/// size class in ModRM order (AL CL DL BL AH CH DH BH SPL BPL SIL DIL R8L..R15L, then
/// AX.., EAX.., RAX..); the tests pin that down.
fn gpr(r: Register) -> Option<(Reg, u8)> {
    let n = r as u32;
    let class = |first: Register, count: u32| {
        let first = first as u32;
        (first..first + count).contains(&n).then(|| n - first)
    };
    if let Some(i) = class(Register::RAX, 16) {
        return Some((GPRS[i as usize], 8));
    }
    if let Some(i) = class(Register::EAX, 16) {
        return Some((GPRS[i as usize], 4));
    }
    if let Some(i) = class(Register::AX, 16) {
        return Some((GPRS[i as usize], 2));
    }
    if let Some(i) = class(Register::AL, 4) {
        return Some((GPRS[i as usize], 1));
    }
    if let Some(i) = class(Register::AH, 4) {
        return Some(([Reg::Ah, Reg::Ch, Reg::Dh, Reg::Bh][i as usize], 1));
    }
    if let Some(i) = class(Register::SPL, 12) {
        return Some((GPRS[4 + i as usize], 1));
    }
    None
}

/// The shapes of instruction this module accepts.
enum Form {
    /// `MOV mem, reg`: operand 1 is the source register, operand 0 memory.
    StoreReg,
    /// `MOV mem, imm` with the access width.
    StoreImm(u8),
    /// `MOV/MOVZX/MOVSX reg, mem`: operand 0 the destination, operand 1 memory, with
    /// the memory width (`None`: the destination's width).
    Load(Option<u8>, Extend),
}

fn form(code: Code) -> Option<Form> {
    use Code as C;
    Some(match code {
        C::Mov_rm8_r8
        | C::Mov_rm16_r16
        | C::Mov_rm32_r32
        | C::Mov_rm64_r64
        | C::Mov_moffs8_AL
        | C::Mov_moffs16_AX
        | C::Mov_moffs32_EAX
        | C::Mov_moffs64_RAX => Form::StoreReg,
        C::Mov_rm8_imm8 => Form::StoreImm(1),
        C::Mov_rm16_imm16 => Form::StoreImm(2),
        C::Mov_rm32_imm32 => Form::StoreImm(4),
        // REX.W C7: imm32 sign-extended to 64 bits (SDM Vol. 2B MOV).
        C::Mov_rm64_imm32 => Form::StoreImm(8),
        C::Mov_r8_rm8
        | C::Mov_r16_rm16
        | C::Mov_r32_rm32
        | C::Mov_r64_rm64
        | C::Mov_AL_moffs8
        | C::Mov_AX_moffs16
        | C::Mov_EAX_moffs32
        | C::Mov_RAX_moffs64 => Form::Load(None, Extend::None),
        C::Movzx_r16_rm8 | C::Movzx_r32_rm8 | C::Movzx_r64_rm8 => Form::Load(Some(1), Extend::Zero),
        C::Movzx_r16_rm16 | C::Movzx_r32_rm16 | C::Movzx_r64_rm16 => {
            Form::Load(Some(2), Extend::Zero)
        }
        C::Movsx_r16_rm8 | C::Movsx_r32_rm8 | C::Movsx_r64_rm8 => Form::Load(Some(1), Extend::Sign),
        C::Movsx_r16_rm16 | C::Movsx_r32_rm16 | C::Movsx_r64_rm16 | C::Movsxd_r16_rm16 => {
            Form::Load(Some(2), Extend::Sign)
        }
        C::Movsxd_r32_rm32 | C::Movsxd_r64_rm32 => Form::Load(Some(4), Extend::Sign),
        _ => return None,
    })
}

fn mask(size: u8) -> u64 {
    match size {
        8 => u64::MAX,
        n => (1u64 << (8 * n as u32)) - 1,
    }
}

/// Decodes the MMIO instruction at the start of `bytes` as `bitness`-bit code (16, 32
/// or 64; see [`guest_walk::code_bitness`]).
pub fn decode(bytes: &[u8], bitness: u32) -> Result<MmioInstruction, MmioError> {
    if !matches!(bitness, 16 | 32 | 64) {
        return Err(MmioError::BadBitness(bitness));
    }
    let mut decoder = Decoder::new(bitness, bytes, DecoderOptions::NONE);
    let insn = decoder.decode();
    if insn.is_invalid() {
        return Err(match decoder.last_error() {
            // 15 bytes are the architectural maximum (SDM Vol. 2A 2.3.11): needing
            // more is #GP, not a short fetch.
            DecoderError::NoMoreBytes if bytes.len() < 15 => MmioError::Truncated {
                available: bytes.len(),
            },
            _ => MmioError::Invalid,
        });
    }
    let unsupported = MmioError::Unsupported {
        mnemonic: insn.mnemonic(),
        code: insn.code(),
    };
    let no_memory = MmioError::NoMemoryOperand {
        mnemonic: insn.mnemonic(),
    };
    let form = form(insn.code()).ok_or(unsupported)?;
    let (mem_op, reg_op) = match form {
        Form::StoreReg | Form::StoreImm(_) => (0, 1),
        Form::Load(..) => (1, 0),
    };
    if insn.op_kind(mem_op) != OpKind::Memory {
        return Err(no_memory);
    }
    let len = insn.len();
    match form {
        Form::StoreImm(size) => Ok(MmioInstruction {
            len,
            size,
            kind: Access::Write {
                src: Operand::Imm(insn.immediate(1) & mask(size)),
            },
        }),
        Form::StoreReg => {
            let (reg, size) = gpr(insn.op_register(reg_op)).ok_or(unsupported)?;
            Ok(MmioInstruction {
                len,
                size,
                kind: Access::Write {
                    src: Operand::Reg(reg, size),
                },
            })
        }
        Form::Load(width, extend) => {
            let (dest, dest_size) = gpr(insn.op_register(reg_op)).ok_or(unsupported)?;
            Ok(MmioInstruction {
                len,
                size: width.unwrap_or(dest_size),
                kind: Access::Read {
                    dest,
                    dest_size,
                    extend,
                },
            })
        }
    }
}

fn slot<'a>(regs: &'a mut GuestRegisters, rsp: &'a mut u64, reg: Reg) -> &'a mut u64 {
    match reg {
        Reg::Rax | Reg::Ah => &mut regs.rax,
        Reg::Rcx | Reg::Ch => &mut regs.rcx,
        Reg::Rdx | Reg::Dh => &mut regs.rdx,
        Reg::Rbx | Reg::Bh => &mut regs.rbx,
        Reg::Rsp => rsp,
        Reg::Rbp => &mut regs.rbp,
        Reg::Rsi => &mut regs.rsi,
        Reg::Rdi => &mut regs.rdi,
        Reg::R8 => &mut regs.r8,
        Reg::R9 => &mut regs.r9,
        Reg::R10 => &mut regs.r10,
        Reg::R11 => &mut regs.r11,
        Reg::R12 => &mut regs.r12,
        Reg::R13 => &mut regs.r13,
        Reg::R14 => &mut regs.r14,
        Reg::R15 => &mut regs.r15,
    }
}

fn is_high_byte(reg: Reg) -> bool {
    matches!(reg, Reg::Ah | Reg::Ch | Reg::Dh | Reg::Bh)
}

/// The register operand names RSP (or ESP/SP/SPL).
fn uses_rsp(insn: &MmioInstruction) -> bool {
    matches!(
        insn.kind,
        Access::Read { dest: Reg::Rsp, .. }
            | Access::Write {
                src: Operand::Reg(Reg::Rsp, _)
            }
    )
}

/// [`complete_read`] with RSP supplied by the caller (from [`Vcpu::rsp`]; write it back
/// with [`Vcpu::set_rsp`] when the destination is [`Reg::Rsp`]).
pub fn complete_read_with_rsp(
    regs: &mut GuestRegisters,
    rsp: &mut u64,
    insn: &MmioInstruction,
    value: u64,
) -> Result<(), MmioError> {
    let Access::Read {
        dest,
        dest_size,
        extend,
    } = insn.kind
    else {
        return Err(MmioError::WrongDirection);
    };
    let loaded = value & mask(insn.size);
    let widened = match extend {
        Extend::Sign if insn.size < 8 => {
            let shift = 64 - 8 * insn.size as u32;
            (((loaded << shift) as i64) >> shift) as u64 & mask(dest_size)
        }
        _ => loaded,
    };
    let r = slot(regs, rsp, dest);
    *r = match dest_size {
        // AH/CH/DH/BH: only bits 15:8 change.
        1 if is_high_byte(dest) => (*r & !0xff00) | (widened & 0xff) << 8,
        // 8- and 16-bit destinations leave the other bits alone (SDM Vol. 1 3.4.1.1).
        1 | 2 => (*r & !mask(dest_size)) | widened,
        // "32-bit operands generate a 32-bit result, zero-extended to a 64-bit result
        // in the destination general-purpose register" (SDM Vol. 1 3.4.1.1). Outside
        // 64-bit mode the upper half is architecturally undefined; zero is a valid
        // choice and matches hardware.
        4 => widened & 0xffff_ffff,
        _ => widened,
    };
    Ok(())
}

/// Writes `value` (as the device returned it for a read of `insn.size` bytes) into the
/// destination register with x86 semantics. RSP is not in [`GuestRegisters`]:
/// [`MmioError::StackPointer`] for an RSP destination.
pub fn complete_read(
    regs: &mut GuestRegisters,
    insn: &MmioInstruction,
    value: u64,
) -> Result<(), MmioError> {
    if uses_rsp(insn) {
        return Err(MmioError::StackPointer);
    }
    complete_read_with_rsp(regs, &mut 0, insn, value)
}

/// [`write_value`] with RSP supplied by the caller.
pub fn write_value_with_rsp(
    regs: &GuestRegisters,
    rsp: u64,
    insn: &MmioInstruction,
) -> Result<u64, MmioError> {
    match insn.kind {
        Access::Write {
            src: Operand::Imm(v),
        } => Ok(v),
        Access::Write {
            src: Operand::Reg(reg, size),
        } => {
            let mut regs = *regs;
            let mut rsp = rsp;
            let full = *slot(&mut regs, &mut rsp, reg);
            let v = if is_high_byte(reg) { full >> 8 } else { full };
            Ok(v & mask(size))
        }
        Access::Read { .. } => Err(MmioError::WrongDirection),
    }
}

/// The value a write instruction stores (`insn.size` bytes, in the low bits).
/// [`MmioError::StackPointer`] for a store of RSP.
pub fn write_value(regs: &GuestRegisters, insn: &MmioInstruction) -> Result<u64, MmioError> {
    if uses_rsp(insn) {
        return Err(MmioError::StackPointer);
    }
    write_value_with_rsp(regs, 0, insn)
}

/// Emulates the instruction at the vCPU's RIP, which accessed MMIO at guest-physical
/// `gpa` (`write` as the exit reports it): fetch through the guest's page tables,
/// decode in the mode [`guest_walk::code_bitness`] gives, check the direction, call
/// `device(gpa, size, Some(value))` for a write or `device(gpa, size, None)` for a read
/// (whose result is loaded), then advance RIP. On error nothing in the vCPU changed
/// and the device was not called.
pub fn emulate<V: Vcpu, M: GuestMemory>(
    vcpu: &mut V,
    mem: &M,
    gpa: u64,
    write: bool,
    device: &mut dyn FnMut(u64, u8, Option<u64>) -> u64,
) -> Result<(), MmioError> {
    let cr = vcpu.control_regs();
    let bitness = guest_walk::code_bitness(&cr);
    let rip = vcpu.rip();
    let mut bytes = [0u8; 15];
    let n = guest_walk::fetch_instruction(mem, &cr, rip, &mut bytes).map_err(MmioError::Fetch)?;
    let insn = decode(&bytes[..n], bitness)?;
    if insn.is_write() != write {
        return Err(MmioError::DirectionMismatch { exit_write: write });
    }
    let mut rsp = vcpu.rsp();
    if write {
        let value = write_value_with_rsp(vcpu.regs(), rsp, &insn)?;
        device(gpa, insn.size, Some(value));
    } else {
        let value = device(gpa, insn.size, None);
        complete_read_with_rsp(vcpu.regs(), &mut rsp, &insn, value)?;
        if uses_rsp(&insn) {
            vcpu.set_rsp(rsp);
        }
    }
    // IP/EIP wrap within the code segment (SDM Vol. 3A 5.3).
    let next = rip.wrapping_add(insn.len as u64);
    vcpu.set_rip(match bitness {
        16 => next & 0xffff,
        32 => next & 0xffff_ffff,
        _ => next,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;
    use std::vec;
    use std::vec::Vec;
    use vcpu::{ControlRegs, CpuMode, Exception, Exit};

    fn d64(bytes: &[u8]) -> MmioInstruction {
        decode(bytes, 64).unwrap()
    }

    fn read(len: usize, size: u8, dest: Reg, dest_size: u8, extend: Extend) -> MmioInstruction {
        MmioInstruction {
            len,
            size,
            kind: Access::Read {
                dest,
                dest_size,
                extend,
            },
        }
    }

    fn write(len: usize, size: u8, src: Operand) -> MmioInstruction {
        MmioInstruction {
            len,
            size,
            kind: Access::Write { src },
        }
    }

    #[test]
    fn register_numbering_matches_iced() {
        assert_eq!(gpr(Register::AL), Some((Reg::Rax, 1)));
        assert_eq!(gpr(Register::BL), Some((Reg::Rbx, 1)));
        assert_eq!(gpr(Register::AH), Some((Reg::Ah, 1)));
        assert_eq!(gpr(Register::BH), Some((Reg::Bh, 1)));
        assert_eq!(gpr(Register::SPL), Some((Reg::Rsp, 1)));
        assert_eq!(gpr(Register::DIL), Some((Reg::Rdi, 1)));
        assert_eq!(gpr(Register::R8L), Some((Reg::R8, 1)));
        assert_eq!(gpr(Register::R15L), Some((Reg::R15, 1)));
        assert_eq!(gpr(Register::AX), Some((Reg::Rax, 2)));
        assert_eq!(gpr(Register::R10W), Some((Reg::R10, 2)));
        assert_eq!(gpr(Register::R15W), Some((Reg::R15, 2)));
        assert_eq!(gpr(Register::ESP), Some((Reg::Rsp, 4)));
        assert_eq!(gpr(Register::R15D), Some((Reg::R15, 4)));
        assert_eq!(gpr(Register::RDI), Some((Reg::Rdi, 8)));
        assert_eq!(gpr(Register::R15), Some((Reg::R15, 8)));
        assert_eq!(gpr(Register::None), None);
        assert_eq!(gpr(Register::ES), None);
        assert_eq!(gpr(Register::RIP), None);
        assert_eq!(gpr(Register::XMM0), None);
    }

    #[test]
    fn mov_eax_from_rbx() {
        // mov eax, [rbx]
        assert_eq!(d64(&[0x8b, 0x03]), read(2, 4, Reg::Rax, 4, Extend::None));
    }

    #[test]
    fn mov_to_rdi_plus_0x300_from_esi() {
        // mov [rdi+0x300], esi
        assert_eq!(
            d64(&[0x89, 0xb7, 0x00, 0x03, 0x00, 0x00]),
            write(6, 4, Operand::Reg(Reg::Rsi, 4))
        );
    }

    #[test]
    fn mov_immediates_are_sized_and_sign_extended() {
        // mov dword [rax], 0x100
        assert_eq!(
            d64(&[0xc7, 0x00, 0x00, 0x01, 0x00, 0x00]),
            write(6, 4, Operand::Imm(0x100))
        );
        // mov qword [rax], -1: imm32 sign-extended to 64
        assert_eq!(
            d64(&[0x48, 0xc7, 0x00, 0xff, 0xff, 0xff, 0xff]),
            write(7, 8, Operand::Imm(u64::MAX))
        );
        // mov word [rax], 0xbeef
        assert_eq!(
            d64(&[0x66, 0xc7, 0x00, 0xef, 0xbe]),
            write(5, 2, Operand::Imm(0xbeef))
        );
        // mov byte [rax+8], 0x80
        assert_eq!(
            d64(&[0xc6, 0x40, 0x08, 0x80]),
            write(4, 1, Operand::Imm(0x80))
        );
    }

    #[test]
    fn movzx_and_movsx_from_memory() {
        // movzx eax, byte [rcx]
        assert_eq!(
            d64(&[0x0f, 0xb6, 0x01]),
            read(3, 1, Reg::Rax, 4, Extend::Zero)
        );
        // movzx ecx, word [rdx]
        assert_eq!(
            d64(&[0x0f, 0xb7, 0x0a]),
            read(3, 2, Reg::Rcx, 4, Extend::Zero)
        );
        // movsx eax, word [rcx]
        assert_eq!(
            d64(&[0x0f, 0xbf, 0x01]),
            read(3, 2, Reg::Rax, 4, Extend::Sign)
        );
        // movsx rax, byte [rcx]
        assert_eq!(
            d64(&[0x48, 0x0f, 0xbe, 0x01]),
            read(4, 1, Reg::Rax, 8, Extend::Sign)
        );
        // movsxd rax, dword [rcx]
        assert_eq!(
            d64(&[0x48, 0x63, 0x01]),
            read(3, 4, Reg::Rax, 8, Extend::Sign)
        );
    }

    #[test]
    fn rex_registers_and_sizes() {
        // mov r9d, [r8+0xb0]
        assert_eq!(
            d64(&[0x45, 0x8b, 0x88, 0xb0, 0x00, 0x00, 0x00]),
            read(7, 4, Reg::R9, 4, Extend::None)
        );
        // mov rax, [rbx]
        assert_eq!(
            d64(&[0x48, 0x8b, 0x03]),
            read(3, 8, Reg::Rax, 8, Extend::None)
        );
        // mov [rcx], r10w
        assert_eq!(
            d64(&[0x66, 0x44, 0x89, 0x11]),
            write(4, 2, Operand::Reg(Reg::R10, 2))
        );
        // mov [rip+0x10], r15 (RIP-relative addressing is fine: the GPA is given)
        assert_eq!(
            d64(&[0x4c, 0x89, 0x3d, 0x10, 0x00, 0x00, 0x00]),
            write(7, 8, Operand::Reg(Reg::R15, 8))
        );
        // mov eax, [abs 0xfee000b0]: moffs with a 64-bit address
        assert_eq!(
            d64(&[0xa1, 0xb0, 0x00, 0xe0, 0xfe, 0, 0, 0, 0]),
            read(9, 4, Reg::Rax, 4, Extend::None)
        );
    }

    #[test]
    fn high_byte_registers_only_without_rex() {
        // mov ah, [rsi]
        assert_eq!(d64(&[0x8a, 0x26]), read(2, 1, Reg::Ah, 1, Extend::None));
        // with an (empty) REX prefix the same ModRM names SPL
        assert_eq!(
            d64(&[0x40, 0x8a, 0x26]),
            read(3, 1, Reg::Rsp, 1, Extend::None)
        );
        // mov [rax], bh
        assert_eq!(d64(&[0x88, 0x38]), write(2, 1, Operand::Reg(Reg::Bh, 1)));
    }

    #[test]
    fn sixteen_bit_code() {
        // mov ax, [bx]
        assert_eq!(
            decode(&[0x8b, 0x07], 16),
            Ok(read(2, 2, Reg::Rax, 2, Extend::None))
        );
        // 66 prefix in 16-bit code: mov eax, [bx]
        assert_eq!(
            decode(&[0x66, 0x8b, 0x07], 16),
            Ok(read(3, 4, Reg::Rax, 4, Extend::None))
        );
        // mov [0x20], al: moffs16
        assert_eq!(
            decode(&[0xa2, 0x20, 0x00], 16),
            Ok(write(3, 1, Operand::Reg(Reg::Rax, 1)))
        );
    }

    #[test]
    fn thirty_two_bit_code() {
        // mov eax, [0xfee000b0]
        assert_eq!(
            decode(&[0xa1, 0xb0, 0x00, 0xe0, 0xfe], 32),
            Ok(read(5, 4, Reg::Rax, 4, Extend::None))
        );
        // mov [0xfee000b0], eax
        assert_eq!(
            decode(&[0xa3, 0xb0, 0x00, 0xe0, 0xfe], 32),
            Ok(write(5, 4, Operand::Reg(Reg::Rax, 4)))
        );
        // mov dword [ebx+0x20], 0
        assert_eq!(
            decode(&[0xc7, 0x43, 0x20, 0, 0, 0, 0], 32),
            Ok(write(7, 4, Operand::Imm(0)))
        );
        // mov ax, [ebx]
        assert_eq!(
            decode(&[0x66, 0x8b, 0x03], 32),
            Ok(read(3, 2, Reg::Rax, 2, Extend::None))
        );
        // 0x48 is DEC EAX in 32-bit code, not REX.W
        assert!(matches!(
            decode(&[0x48, 0x8b, 0x03], 32),
            Err(MmioError::Unsupported { .. })
        ));
    }

    #[test]
    fn unsupported_instructions_are_named() {
        // add dword [rax], 1
        let e = decode(&[0x83, 0x00, 0x01], 64).unwrap_err();
        assert_eq!(
            e,
            MmioError::Unsupported {
                mnemonic: Mnemonic::Add,
                code: Code::Add_rm32_imm8
            }
        );
        assert_eq!(
            format!("{e}"),
            "unsupported MMIO instruction `add` (Add_rm32_imm8)"
        );
        // or [rax], ecx ; test byte [rax], 1 ; xchg [rax], ecx ; movsd
        for (bytes, m) in [
            (&[0x09, 0x08][..], Mnemonic::Or),
            (&[0xf6, 0x00, 0x01], Mnemonic::Test),
            (&[0x87, 0x08], Mnemonic::Xchg),
            (&[0xa5], Mnemonic::Movsd),
            (&[0x8c, 0x18], Mnemonic::Mov), // mov [rax], ds
        ] {
            match decode(bytes, 64) {
                Err(MmioError::Unsupported { mnemonic, .. }) => assert_eq!(mnemonic, m),
                other => panic!("{bytes:x?}: {other:?}"),
            }
        }
    }

    #[test]
    fn invalid_and_register_only_instructions() {
        // FF /7 is reserved
        assert_eq!(decode(&[0xff, 0xff], 64), Err(MmioError::Invalid));
        // push es does not exist in 64-bit mode
        assert_eq!(decode(&[0x06, 0x90, 0x90], 64), Err(MmioError::Invalid));
        // LOCK MOV is #UD
        assert_eq!(decode(&[0xf0, 0x89, 0x08], 64), Err(MmioError::Invalid));
        // mov eax, ebx: no memory operand
        let e = decode(&[0x8b, 0xc3], 64).unwrap_err();
        assert_eq!(
            e,
            MmioError::NoMemoryOperand {
                mnemonic: Mnemonic::Mov
            }
        );
        assert_eq!(
            format!("{e}"),
            "`mov` without a memory operand cannot access MMIO"
        );
        assert_eq!(decode(&[0x8b, 0x03], 8), Err(MmioError::BadBitness(8)));
    }

    #[test]
    fn truncated_instructions() {
        assert_eq!(
            decode(&[0x8b], 64),
            Err(MmioError::Truncated { available: 1 })
        );
        // mov dword [rax], imm32 with only two immediate bytes
        assert_eq!(
            decode(&[0xc7, 0x00, 0x00, 0x01], 64),
            Err(MmioError::Truncated { available: 4 })
        );
        assert_eq!(decode(&[], 64), Err(MmioError::Truncated { available: 0 }));
        // Fourteen 66 prefixes make `mov ax, [rbx]` 16 bytes long: over the limit.
        let mut long = [0x66u8; 16];
        long[14..].copy_from_slice(&[0x8b, 0x03]);
        assert_eq!(decode(&long, 64), Err(MmioError::Invalid));
        assert_eq!(decode(&long[..15], 64), Err(MmioError::Invalid));
        assert_eq!(
            decode(&long[1..], 64),
            Ok(read(15, 2, Reg::Rax, 2, Extend::None))
        );
    }

    #[test]
    fn trailing_bytes_are_ignored() {
        assert_eq!(d64(&[0x8b, 0x03, 0x90, 0x90, 0xcc]).len, 2);
    }

    #[test]
    fn reads_complete_with_x86_register_semantics() {
        let mut regs = GuestRegisters {
            rax: 0x1111_2222_3333_4444,
            ..Default::default()
        };
        // 32-bit destination: zero-extended to 64 bits.
        complete_read(&mut regs, &d64(&[0x8b, 0x03]), 0xdead_beef_cafe_f00d).unwrap();
        assert_eq!(regs.rax, 0xcafe_f00d);
        // mov al, [rdx]: merges into the low byte.
        regs.rax = 0x1111_2222_3333_4444;
        complete_read(&mut regs, &d64(&[0x8a, 0x02]), 0xabcd).unwrap();
        assert_eq!(regs.rax, 0x1111_2222_3333_44cd);
        // mov ah, [rsi]: bits 15:8 only.
        complete_read(&mut regs, &d64(&[0x8a, 0x26]), 0x99).unwrap();
        assert_eq!(regs.rax, 0x1111_2222_3333_99cd);
        // mov ax, [bx] (16-bit code): low word.
        complete_read(&mut regs, &decode(&[0x8b, 0x07], 16).unwrap(), 0xbeef).unwrap();
        assert_eq!(regs.rax, 0x1111_2222_3333_beef);
        // mov r9d, [r8+0xb0]
        regs.r9 = u64::MAX;
        complete_read(&mut regs, &d64(&[0x45, 0x8b, 0x88, 0xb0, 0, 0, 0]), 0x1234).unwrap();
        assert_eq!(regs.r9, 0x1234);
        // movzx eax, byte [rcx]
        regs.rax = u64::MAX;
        complete_read(&mut regs, &d64(&[0x0f, 0xb6, 0x01]), 0xff80).unwrap();
        assert_eq!(regs.rax, 0x80);
        // movsx eax, word [rcx]: sign-extend to 32, then zero-extend to 64.
        regs.rax = u64::MAX;
        complete_read(&mut regs, &d64(&[0x0f, 0xbf, 0x01]), 0x8001).unwrap();
        assert_eq!(regs.rax, 0xffff_8001);
        // movsx rax, byte [rcx]
        complete_read(&mut regs, &d64(&[0x48, 0x0f, 0xbe, 0x01]), 0xfe).unwrap();
        assert_eq!(regs.rax, u64::MAX - 1);
        // movsx ax, byte [rcx] (66 0F BE): only the low word changes.
        regs.rax = 0x5555_5555_5555_5555;
        complete_read(&mut regs, &d64(&[0x66, 0x0f, 0xbe, 0x01]), 0x80).unwrap();
        assert_eq!(regs.rax, 0x5555_5555_5555_ff80);
        // movsxd rax, dword [rcx]
        complete_read(&mut regs, &d64(&[0x48, 0x63, 0x01]), 0x8000_0000).unwrap();
        assert_eq!(regs.rax, 0xffff_ffff_8000_0000);
        // mov rax, [rbx]
        complete_read(&mut regs, &d64(&[0x48, 0x8b, 0x03]), 0x0123_4567_89ab_cdef).unwrap();
        assert_eq!(regs.rax, 0x0123_4567_89ab_cdef);
    }

    #[test]
    fn write_values_come_from_the_right_bits() {
        let regs = GuestRegisters {
            rax: 0x1122_3344_5566_7788,
            rsi: 0xaaaa_bbbb_cccc_dddd,
            r10: 0x0102_0304_0506_0708,
            ..Default::default()
        };
        let v = |b: &[u8]| write_value(&regs, &d64(b)).unwrap();
        assert_eq!(v(&[0x89, 0xb7, 0x00, 0x03, 0x00, 0x00]), 0xcccc_dddd);
        assert_eq!(v(&[0x66, 0x44, 0x89, 0x11]), 0x0708);
        assert_eq!(v(&[0x88, 0x20]), 0x77); // mov [rax], ah
        assert_eq!(v(&[0x88, 0x00]), 0x88); // mov [rax], al
        assert_eq!(v(&[0x48, 0x89, 0x00]), 0x1122_3344_5566_7788);
        assert_eq!(v(&[0xc7, 0x00, 0x00, 0x01, 0x00, 0x00]), 0x100);
    }

    #[test]
    fn rsp_and_direction_misuse_are_errors() {
        let mut regs = GuestRegisters::default();
        // mov esp, [rax]
        let load_esp = d64(&[0x8b, 0x20]);
        assert_eq!(load_esp, read(2, 4, Reg::Rsp, 4, Extend::None));
        assert_eq!(
            complete_read(&mut regs, &load_esp, 1),
            Err(MmioError::StackPointer)
        );
        let mut rsp = u64::MAX;
        complete_read_with_rsp(&mut regs, &mut rsp, &load_esp, 0x8000).unwrap();
        assert_eq!(rsp, 0x8000);
        // mov [rax], rsp
        let store_rsp = d64(&[0x48, 0x89, 0x20]);
        assert_eq!(write_value(&regs, &store_rsp), Err(MmioError::StackPointer));
        assert_eq!(write_value_with_rsp(&regs, 0x7000, &store_rsp), Ok(0x7000));
        assert_eq!(
            write_value(&regs, &d64(&[0x8b, 0x03])),
            Err(MmioError::WrongDirection)
        );
        assert_eq!(
            complete_read(&mut regs, &d64(&[0x89, 0x03]), 0),
            Err(MmioError::WrongDirection)
        );
        assert_eq!(regs, GuestRegisters::default());
    }

    // ---- end to end ----

    struct Ram(Vec<u8>);

    impl Ram {
        fn put(&mut self, gpa: u64, bytes: &[u8]) {
            self.0[gpa as usize..gpa as usize + bytes.len()].copy_from_slice(bytes);
        }
    }

    impl GuestMemory for Ram {
        fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), ()> {
            let start = usize::try_from(gpa).map_err(|_| ())?;
            let src = self.0.get(start..start + buf.len()).ok_or(())?;
            buf.copy_from_slice(src);
            Ok(())
        }
    }

    #[derive(Default)]
    struct TestVcpu {
        regs: GuestRegisters,
        rip: u64,
        rsp: u64,
        cr: ControlRegs,
    }

    impl Vcpu for TestVcpu {
        fn run(&mut self, _: u64) -> Exit {
            unimplemented!("MMIO emulation never runs the guest")
        }
        fn set_real_mode_cs(&mut self, _: u16) {
            unimplemented!("MMIO emulation never changes CS")
        }
        fn nmi_ready(&self) -> bool {
            unimplemented!("MMIO emulation injects nothing")
        }
        fn cpl(&self) -> u8 {
            0
        }
        fn inject_nmi(&mut self) {
            unimplemented!("MMIO emulation injects nothing")
        }
        fn request_nmi_window(&mut self, _: bool) {}
        fn regs(&mut self) -> &mut GuestRegisters {
            &mut self.regs
        }
        fn rip(&self) -> u64 {
            self.rip
        }
        fn set_rip(&mut self, rip: u64) {
            self.rip = rip;
        }
        fn skip_instruction(&mut self) {
            panic!("emulate must set RIP itself (no next-RIP on a nested page fault)");
        }
        fn inject_exception(&mut self, e: Exception) {
            panic!("unexpected exception {e:?}");
        }
        fn mode(&self) -> CpuMode {
            CpuMode::Long
        }
        fn read_backend_msr(&mut self, _: u32) -> Option<u64> {
            None
        }
        fn write_backend_msr(&mut self, _: u32, _: u64) -> bool {
            false
        }
        fn write_cr(&mut self, _: u8, _: u64) -> bool {
            false
        }
        fn rflags(&self) -> u64 {
            2
        }
        fn set_rflags(&mut self, _: u64) {
            unimplemented!("MOV-class emulation sets no flags")
        }
        fn interrupt_ready(&self) -> bool {
            false
        }
        fn inject_interrupt(&mut self, _: u8) {}
        fn request_interrupt_window(&mut self, _: bool) {}
        fn rsp(&self) -> u64 {
            self.rsp
        }
        fn set_rsp(&mut self, rsp: u64) {
            self.rsp = rsp;
        }
        fn control_regs(&self) -> ControlRegs {
            self.cr
        }
    }

    const LAPIC: u64 = 0xfee0_0000;

    /// A long-mode guest: PML4 at 0x1000, PDPT at 0x2000, PD at 0x3000 identity-maps
    /// the first 2 MiB, and kernel-style code at 0xffff_ffff_8000_0000 (PML4 511,
    /// PDPT 510) maps to 0x20_0000 through PD 0x4000.
    fn long_guest(code_at: u64, code: &[u8]) -> (TestVcpu, Ram) {
        let mut ram = Ram(vec![0; 0x40_0000]);
        ram.put(0x1000, &(0x2003u64).to_le_bytes());
        ram.put(0x1000 + 511 * 8, &(0x5003u64).to_le_bytes());
        ram.put(0x2000, &(0x3003u64).to_le_bytes());
        ram.put(0x3000, &(0x83u64).to_le_bytes()); // 2 MiB page at 0
        ram.put(0x5000 + 510 * 8, &(0x4003u64).to_le_bytes());
        ram.put(0x4000, &(0x20_0083u64).to_le_bytes()); // 2 MiB page at 2 MiB
        let gpa = if code_at >= 0xffff_ffff_8000_0000 {
            code_at - 0xffff_ffff_8000_0000 + 0x20_0000
        } else {
            code_at
        };
        ram.put(gpa, code);
        let cr = ControlRegs {
            cr0: 0x8000_0011,
            cr3: 0x1000,
            cr4: 0x20,
            efer: 0x500,
            cs_base: 0,
            cs_long: true,
        };
        let vcpu = TestVcpu {
            rip: code_at,
            cr,
            ..Default::default()
        };
        (vcpu, ram)
    }

    type Calls = Vec<(u64, u8, Option<u64>)>;

    fn run(
        vcpu: &mut TestVcpu,
        ram: &Ram,
        gpa: u64,
        write: bool,
        reply: u64,
    ) -> (Result<(), MmioError>, Calls) {
        let mut calls = Vec::new();
        let r = emulate(vcpu, ram, gpa, write, &mut |gpa, size, value| {
            calls.push((gpa, size, value));
            reply
        });
        (r, calls)
    }

    #[test]
    fn long_mode_read_loads_the_register_and_advances_rip() {
        // mov eax, [rbx] in the higher half
        let (mut vcpu, ram) = long_guest(0xffff_ffff_8000_1000, &[0x8b, 0x03]);
        vcpu.regs.rax = u64::MAX;
        let (r, calls) = run(&mut vcpu, &ram, LAPIC + 0x30, false, 0x0005_0014);
        assert_eq!(r, Ok(()));
        assert_eq!(calls, [(LAPIC + 0x30, 4, None)]);
        assert_eq!(vcpu.regs.rax, 0x0005_0014);
        assert_eq!(vcpu.rip, 0xffff_ffff_8000_1002);
    }

    #[test]
    fn long_mode_write_passes_the_value() {
        // mov [rdi+0x300], esi (an ICR write)
        let (mut vcpu, ram) = long_guest(0x8000, &[0x89, 0xb7, 0x00, 0x03, 0x00, 0x00]);
        vcpu.regs.rsi = 0xffff_ffff_0000_4500;
        let (r, calls) = run(&mut vcpu, &ram, LAPIC + 0x300, true, 0);
        assert_eq!(r, Ok(()));
        assert_eq!(calls, [(LAPIC + 0x300, 4, Some(0x4500))]);
        assert_eq!(vcpu.rip, 0x8006);
        assert_eq!(vcpu.regs.rsi, 0xffff_ffff_0000_4500);
    }

    #[test]
    fn an_instruction_split_across_pages_is_fetched_from_both() {
        // 4 KiB pages: PD entry 1 (0x20_0000..) -> PT at 0x6000 whose entries 0 and 1
        // map to frames 0x9000 and 0x7000 (reversed on purpose).
        let (mut vcpu, mut ram) = long_guest(0x1000, &[]);
        ram.put(0x3008, &(0x6003u64).to_le_bytes());
        ram.put(0x6000, &(0x9003u64).to_le_bytes());
        ram.put(0x6008, &(0x7003u64).to_le_bytes());
        // mov dword [rax], 0x100 starting 2 bytes before the page end
        ram.put(0x9ffe, &[0xc7, 0x00]);
        ram.put(0x7000, &[0x00, 0x01, 0x00, 0x00]);
        vcpu.rip = 0x20_0ffe;
        let (r, calls) = run(&mut vcpu, &ram, LAPIC + 0xb0, true, 0);
        assert_eq!(r, Ok(()));
        assert_eq!(calls, [(LAPIC + 0xb0, 4, Some(0x100))]);
        assert_eq!(vcpu.rip, 0x20_1004);
        // The same instruction with the second page unmapped is truncated.
        ram.put(0x6008, &0u64.to_le_bytes());
        vcpu.rip = 0x20_0ffe;
        let (r, calls) = run(&mut vcpu, &ram, LAPIC + 0xb0, true, 0);
        assert_eq!(r, Err(MmioError::Truncated { available: 2 }));
        assert!(calls.is_empty());
        assert_eq!(vcpu.rip, 0x20_0ffe);
    }

    #[test]
    fn direction_mismatch_changes_nothing() {
        let (mut vcpu, ram) = long_guest(0x8000, &[0x8b, 0x03]);
        let before = vcpu.regs;
        let (r, calls) = run(&mut vcpu, &ram, LAPIC, true, 0);
        assert_eq!(r, Err(MmioError::DirectionMismatch { exit_write: true }));
        assert_eq!(
            format!("{}", r.unwrap_err()),
            "the exit reports a write but the instruction reads"
        );
        assert!(calls.is_empty());
        assert_eq!((vcpu.regs, vcpu.rip), (before, 0x8000));
    }

    #[test]
    fn loads_into_rsp_go_through_set_rsp() {
        // mov esp, [rax]
        let (mut vcpu, ram) = long_guest(0x8000, &[0x8b, 0x20]);
        vcpu.rsp = u64::MAX;
        let (r, _) = run(&mut vcpu, &ram, LAPIC + 0x20, false, 0x7_0000);
        assert_eq!(r, Ok(()));
        assert_eq!(vcpu.rsp, 0x7_0000);
        assert_eq!(vcpu.rip, 0x8002);
    }

    #[test]
    fn unmapped_rip_and_unsupported_code_are_reported() {
        let (mut vcpu, ram) = long_guest(0x8000, &[0x83, 0x00, 0x01]);
        let (r, calls) = run(&mut vcpu, &ram, LAPIC, true, 0);
        assert!(matches!(
            r,
            Err(MmioError::Unsupported {
                mnemonic: Mnemonic::Add,
                ..
            })
        ));
        assert!(calls.is_empty());
        vcpu.rip = 0x4000_0000; // PDPT entry 1 is empty
        let (r, _) = run(&mut vcpu, &ram, LAPIC, true, 0);
        assert_eq!(
            r,
            Err(MmioError::Fetch(WalkError::NotPresent {
                level: 3,
                linear: 0x4000_0000
            }))
        );
        assert_eq!(
            format!("{}", r.unwrap_err()),
            "cannot fetch the instruction: linear 0x40000000: PDPTE (level 3) not present"
        );
    }

    #[test]
    fn real_mode_guest_uses_cs_base_and_16_bit_code() {
        let mut ram = Ram(vec![0; 0x10_0000]);
        // 07C0:0010 -> 0x7c10: mov ax, [bx]
        ram.put(0x7c10, &[0x8b, 0x07]);
        let mut vcpu = TestVcpu {
            rip: 0x10,
            cr: ControlRegs {
                cs_base: 0x7c00,
                ..Default::default()
            },
            ..Default::default()
        };
        vcpu.regs.rax = 0x1234_5678;
        let (r, calls) = run(&mut vcpu, &ram, LAPIC + 0x20, false, 0xdead_beef);
        assert_eq!(r, Ok(()));
        assert_eq!(calls, [(LAPIC + 0x20, 2, None)]);
        assert_eq!(vcpu.regs.rax, 0x1234_beef);
        assert_eq!(vcpu.rip, 0x12);
        // IP wraps at 64 KiB: mov al, [si] (8A 04) at 07C0:FFFF continues at 07C0:0000.
        ram.put(0x7c00 + 0xffff, &[0x8a]);
        ram.put(0x7c00, &[0x04]);
        vcpu.rip = 0xffff;
        let (r, calls) = run(&mut vcpu, &ram, LAPIC + 0x20, false, 0x42);
        assert_eq!(r, Ok(()));
        assert_eq!(calls, [(LAPIC + 0x20, 1, None)]);
        assert_eq!(vcpu.regs.rax, 0x1234_be42);
        assert_eq!(vcpu.rip, 0x1);
    }

    #[test]
    fn protected_mode_guest_uses_32_bit_code() {
        let mut ram = Ram(vec![0; 0x20_0000]);
        // mov [0xfec00000], eax (IOAPIC index register), at 0x10_0000
        ram.put(0x10_0000, &[0xa3, 0x00, 0x00, 0xc0, 0xfe]);
        let mut vcpu = TestVcpu {
            rip: 0x10_0000,
            cr: ControlRegs {
                cr0: 0x11,
                ..Default::default()
            },
            ..Default::default()
        };
        vcpu.regs.rax = 0x10;
        let (r, calls) = run(&mut vcpu, &ram, 0xfec0_0000, true, 0);
        assert_eq!(r, Ok(()));
        assert_eq!(calls, [(0xfec0_0000, 4, Some(0x10))]);
        assert_eq!(vcpu.rip, 0x10_0005);
    }
}
