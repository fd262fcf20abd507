//! MMIO instructions whose *stack* operand is the device: the guest's SS:RSP points
//! into device or unbacked guest-physical space, and a push, pop, call or return
//! touched it (SDM Vol. 2B `PUSH`, `POP`, `PUSHF`, `POPF`, `CALL`, `RET`, `LEAVE`,
//! `ENTER`; Vol. 1 6.2 "Stacks").
//!
//! Forms: `PUSH r`, `PUSH imm` (imm8 sign-extended), `PUSH Sreg`, `PUSHF`, `POP r`,
//! `POPF`, `CALL rel` and `CALL r/m` (near), `RET` and `RET imm16` (near), `LEAVE`,
//! `ENTER imm16, 0`; and `PUSH m`, `POP m`, `CALL m` with the stack as the device and
//! the other operand located through [`super::mmio_memory`] (its effective address
//! computed here, since the exit names only the stack). `CALL m` whose `m` is the
//! device (a read exit) pushes through [`super::mmio_memory`] too.
//!
//! The stack slot is computed as the processor computes it: the stack's address size
//! is 8 in 64-bit mode, else 4 or 2 by SS.B; a push stores at (RSP - operand size)
//! masked to it, a pop loads at RSP masked to it, and only the low 2 (SP) or 4 (ESP)
//! bytes of RSP change, so a 16-bit SP wraps within its 64 KiB. The slot is then
//! translated through SS and the guest's page tables and must be the exit's
//! guest-physical address; anything else (another vCPU changed the page tables or
//! RSP, the exit information is wrong) is [`MmioError::StackMismatch`] naming both,
//! with nothing changed.
//!
//! Rules taken from the SDM: `PUSH RSP` stores the old value; `POP RSP` leaves the
//! popped value in RSP; `PUSH m` computes the address of `m` before RSP moves and
//! `POP m` after; `PUSH Sreg` with a 32/64-bit operand writes only the 16-bit
//! selector at the slot (as current processors do) and moves RSP by the operand size;
//! `PUSHF` stores RFLAGS with VM and RF clear; `POPF` changes only the bits the SDM
//! allows for the mode, CPL (SS.DPL) and IOPL ([`popf`]); a `CALL`/`RET` target
//! outside CS's limit (non-canonical in 64-bit mode) is #GP(0), raised before the
//! push (`CALL`) or after the pop with RSP unchanged (`RET`); `LEAVE` is RSP <- RBP
//! at the stack's address size, then `POP RBP`; `ENTER size, 0` pushes RBP, sets RBP
//! to the new RSP and subtracts `size`.
//!
//! Not emulated (named stops): `ENTER` with a nesting level above 0 (a loop of
//! pushes from the old frame; no compiler emits it), far `CALL`/`RET`, `IRET`,
//! `PUSHA`/`POPA`. `POP Sreg` is [`super::mmio_segment`]'s.

use super::guest_walk::GuestMemoryMut;
use super::mmio::{
    gpr, mask, reg_value, seg_reg, set_reg, set_width, Access, Fault, MmioError, MmioInstruction,
    Reg, Step,
};
use super::mmio_memory::{Env, Place};
use iced_x86::{Code, Decoder, DecoderOptions, Instruction, OpKind};
use vcpu::SegReg;

/// RFLAGS bits the stack forms care about (SDM Vol. 1 3.4.3).
mod rf {
    pub const TF: u64 = 1 << 8;
    pub const IF: u64 = 1 << 9;
    pub const IOPL: u64 = 3 << 12;
    pub const RF: u64 = 1 << 16;
    pub const VM: u64 = 1 << 17;
    pub const VIF: u64 = 1 << 19;
    pub const VIP: u64 = 1 << 20;
    /// Every defined flag: CF, PF, AF, ZF, SF, TF, IF, DF, OF, IOPL, NT, RF, VM, AC,
    /// VIF, VIP, ID (bits 1, 3, 5, 15 and 22-63 are reserved).
    pub const DEFINED: u64 = 0x3f_7fd5;
}

/// What a push stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    Reg(Reg),
    /// Already sign-extended to the operand size.
    Imm(u64),
    /// The selector (a 16-bit write).
    Seg(SegReg),
    /// RFLAGS with VM and RF clear.
    Flags,
}

/// A stack instruction; [`MmioInstruction::size`] is its operand size. `ret` is the
/// return address a `CALL` pushes (the next instruction's offset at the operand size)
/// and `target` a branch target, both from the RIP [`super::mmio::decode_at`] was
/// given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackOp {
    Push(Pushed),
    PopReg(Reg),
    PopFlags,
    CallRel {
        ret: u64,
        target: u64,
    },
    CallReg {
        ret: u64,
        reg: Reg,
    },
    /// `CALL m` with `m` the device: the target is read from it, the return address
    /// pushed through [`super::mmio_memory`].
    CallMem {
        ret: u64,
    },
    /// `RET` / `RET imm16`: `release` more bytes popped after the return address.
    Ret {
        release: u16,
    },
    Leave,
    /// `ENTER alloc, 0`.
    Enter {
        alloc: u16,
    },
    /// `PUSH m` with the stack the device; `m` (operand 0 of the decoded instruction)
    /// through [`super::mmio_memory`].
    PushMem(Instruction),
    /// `POP m` with the stack the device.
    PopMem(Instruction),
    /// `CALL m` with the stack the device.
    CallMemStack {
        ret: u64,
        mem: Instruction,
    },
}

impl StackOp {
    /// Whether the device (the exit's operand) is read.
    pub fn reads(self) -> bool {
        matches!(
            self,
            StackOp::PopReg(_)
                | StackOp::PopFlags
                | StackOp::CallMem { .. }
                | StackOp::Ret { .. }
                | StackOp::Leave
                | StackOp::PopMem(_)
        )
    }

    /// Whether the device is written.
    pub fn writes(self) -> bool {
        !self.reads()
    }

    /// Whether RFLAGS may change.
    pub fn sets_flags(self) -> bool {
        self == StackOp::PopFlags
    }
}

/// The stack forms among decoded instructions (`None`: not one of them).
pub(crate) fn decode(insn: &Instruction) -> Option<Result<MmioInstruction, MmioError>> {
    use Code as C;
    let unsupported = MmioError::Unsupported {
        mnemonic: insn.mnemonic(),
        code: insn.code(),
    };
    let size: u8 = match insn.code() {
        C::Push_r16 | C::Pop_r16 | C::Pushw_imm8 | C::Push_imm16 | C::Pushfw | C::Popfw => 2,
        C::Pushw_ES | C::Pushw_CS | C::Pushw_SS | C::Pushw_DS | C::Pushw_FS | C::Pushw_GS => 2,
        C::Call_rel16 | C::Call_rm16 | C::Retnw | C::Retnw_imm16 => 2,
        C::Leavew | C::Enterw_imm16_imm8 => 2,
        C::Push_r32 | C::Pop_r32 | C::Pushd_imm8 | C::Pushd_imm32 | C::Pushfd | C::Popfd => 4,
        C::Pushd_ES | C::Pushd_CS | C::Pushd_SS | C::Pushd_DS | C::Pushd_FS | C::Pushd_GS => 4,
        C::Call_rel32_32 | C::Call_rm32 | C::Retnd | C::Retnd_imm16 => 4,
        C::Leaved | C::Enterd_imm16_imm8 => 4,
        C::Push_r64 | C::Pop_r64 | C::Pushq_imm8 | C::Pushq_imm32 | C::Pushfq | C::Popfq => 8,
        C::Pushq_FS | C::Pushq_GS => 8,
        C::Call_rel32_64 | C::Call_rm64 | C::Retnq | C::Retnq_imm16 => 8,
        C::Leaveq | C::Enterq_imm16_imm8 => 8,
        _ => return None,
    };
    let ret = insn.next_ip() & mask(size);
    let reg0 = || gpr(insn.op_register(0)).map(|(r, _)| r).ok_or(unsupported);
    let op = match insn.mnemonic() {
        iced_x86::Mnemonic::Push => match insn.op_kind(0) {
            OpKind::Register => match seg_reg(insn.op_register(0)) {
                Some(seg) => Ok(StackOp::Push(Pushed::Seg(seg))),
                None => reg0().map(|r| StackOp::Push(Pushed::Reg(r))),
            },
            // iced sign-extends imm8 (and REX.W's imm32) to 64 bits.
            _ => Ok(StackOp::Push(Pushed::Imm(insn.immediate(0) & mask(size)))),
        },
        iced_x86::Mnemonic::Pop => reg0().map(StackOp::PopReg),
        iced_x86::Mnemonic::Pushf | iced_x86::Mnemonic::Pushfd | iced_x86::Mnemonic::Pushfq => {
            Ok(StackOp::Push(Pushed::Flags))
        }
        iced_x86::Mnemonic::Popf | iced_x86::Mnemonic::Popfd | iced_x86::Mnemonic::Popfq => {
            Ok(StackOp::PopFlags)
        }
        iced_x86::Mnemonic::Call => match insn.op_kind(0) {
            OpKind::Register => reg0().map(|reg| StackOp::CallReg { ret, reg }),
            OpKind::Memory => Ok(StackOp::CallMem { ret }),
            // iced masks the target to the operand size (IP/EIP wrap).
            _ => Ok(StackOp::CallRel {
                ret,
                target: insn.near_branch_target(),
            }),
        },
        iced_x86::Mnemonic::Ret => Ok(StackOp::Ret {
            release: if insn.op_count() == 1 {
                insn.immediate16()
            } else {
                0
            },
        }),
        iced_x86::Mnemonic::Leave => Ok(StackOp::Leave),
        // The nesting level is taken modulo 32 (SDM Vol. 2A ENTER).
        iced_x86::Mnemonic::Enter if insn.immediate8_2nd().is_multiple_of(32) => {
            Ok(StackOp::Enter {
                alloc: insn.immediate16(),
            })
        }
        _ => Err(unsupported),
    };
    Some(op.map(|op| MmioInstruction {
        len: insn.len(),
        size,
        kind: Access::Stack(op),
    }))
}

/// Turns `PUSH m` / `POP m` / `CALL m`, decoded as if `m` were the device, into their
/// stack-is-the-device forms when the exit's direction says the stack was touched
/// (`PUSH m` and `CALL m` only write the stack, `POP m` only reads it). `bytes` and
/// `rip` are the instruction's, for the address of `m` (RIP-relative too).
pub fn orient(
    insn: MmioInstruction,
    write: bool,
    bytes: &[u8],
    bitness: u32,
    rip: u64,
) -> MmioInstruction {
    let mem = || Decoder::with_ip(bitness, bytes, rip, DecoderOptions::NONE).decode();
    let kind = match insn.kind {
        Access::Push if write => Access::Stack(StackOp::PushMem(mem())),
        Access::Pop if !write => Access::Stack(StackOp::PopMem(mem())),
        Access::Stack(StackOp::CallMem { ret }) if write => {
            Access::Stack(StackOp::CallMemStack { ret, mem: mem() })
        }
        kind => kind,
    };
    MmioInstruction { kind, ..insn }
}

/// The segment and offset (masked to the address size) of `mem`'s operand 0 with
/// the registers `regs` and `rsp`.
fn operand_address(
    mem: &Instruction,
    regs: &vcpu::GuestRegisters,
    rsp: u64,
) -> Result<(SegReg, u64), MmioError> {
    let seg = seg_reg(mem.memory_segment()).ok_or(MmioError::Invalid)?;
    let offset = mem
        .virtual_address(0, 0, |r, _, _| {
            // Segment bases are added by `Env::linear`.
            if seg_reg(r).is_some() {
                return Some(0);
            }
            let (reg, size) = gpr(r)?;
            Some(reg_value(regs, rsp, reg, size))
        })
        .ok_or(MmioError::Invalid)?;
    Ok((seg, offset))
}

/// Checks that the stack slot at SS:`top` is the device the exit named.
pub(crate) fn stack_is_exit<M: GuestMemoryMut>(
    env: &Env<'_, M>,
    top: u64,
    size: u8,
    gpa: u64,
) -> Result<(), MmioError> {
    match env.place(SegReg::Ss, top, size)? {
        Place::Device(slot) if slot == gpa => Ok(()),
        Place::Device(slot) | Place::Ram { gpa: slot, .. } => {
            Err(MmioError::StackMismatch { exit: gpa, slot })
        }
    }
}

/// Where a near branch may go: a canonical address in 64-bit mode, an offset
/// within CS's limit otherwise (SDM Vol. 2A `CALL`, Vol. 2B `RET`: #GP(0)).
#[derive(Clone, Copy)]
struct CodeRange {
    /// The linear address width in 64-bit mode (48, or 57 with LA57).
    canonical_bits: Option<u32>,
    limit: u64,
}

impl CodeRange {
    fn of<M: GuestMemoryMut>(env: &Env<'_, M>) -> Result<Self, MmioError> {
        if super::guest_walk::code_bitness(&env.cr) == 64 {
            let bits = if env.cr.cr4 & (1 << 12) != 0 { 57 } else { 48 };
            return Ok(Self {
                canonical_bits: Some(bits),
                limit: u64::MAX,
            });
        }
        Ok(Self {
            canonical_bits: None,
            limit: u64::from(env.segment(SegReg::Cs)?.limit),
        })
    }

    fn contains(self, target: u64) -> bool {
        match self.canonical_bits {
            Some(bits) => {
                let shift = 64 - bits;
                ((target << shift) as i64 >> shift) as u64 == target
            }
            None => target <= self.limit,
        }
    }
}

/// RFLAGS after `POPF` of `popped` (`size` bytes) over `old`, or #GP(0) (SDM Vol. 2B
/// `POPF`). `cpl` is the current privilege level, `real` whether CR0.PE is clear,
/// `vme` CR4.VME. Bits a mode does not let `POPF` change keep their value; a 32/64-bit
/// `POPF` clears RF; in virtual-8086 mode with IOPL < 3 only the 16-bit form with
/// CR4.VME is allowed, which sets VIF from the popped IF and leaves IF alone.
pub fn popf(old: u64, popped: u64, size: u8, cpl: u8, real: bool, vme: bool) -> Result<u64, Fault> {
    use rf::*;
    let iopl = (old & IOPL) >> 12;
    // The 32/64-bit forms never change VIP, VIF, VM (or RF, which they clear).
    let mut changeable = DEFINED & !(VIP | VIF | VM | RF);
    let mut vif = None;
    if old & VM != 0 && !real {
        if iopl == 3 {
            changeable &= !IOPL;
        } else if vme && size == 2 {
            if (old & VIP != 0 && popped & IF != 0) || popped & TF != 0 {
                return Err(Fault::GeneralProtection);
            }
            changeable &= !(IF | IOPL);
            vif = Some(popped & IF != 0);
        } else {
            return Err(Fault::GeneralProtection);
        }
    } else if !real && cpl > 0 {
        changeable &= !IOPL;
        if u64::from(cpl) > iopl {
            changeable &= !IF;
        }
    }
    if size == 2 {
        changeable &= 0xffff;
    }
    let mut new = (old & !changeable) | (popped & changeable);
    if size != 2 {
        new &= !RF;
    }
    match vif {
        Some(true) => new |= VIF,
        Some(false) => new &= !VIF,
        None => {}
    }
    Ok(new)
}

/// `CALL rel` / `CALL r`: the target is checked, then `ret` pushed at SS:`push_top`
/// (the exit's device).
#[allow(clippy::too_many_arguments)]
fn call<M: GuestMemoryMut>(
    env: &Env<'_, M>,
    rsp: &mut u64,
    ss: u8,
    push_top: u64,
    size: u8,
    gpa: u64,
    ret: u64,
    target: u64,
    device: &mut dyn FnMut(u64, u8, Option<u64>) -> u64,
) -> Result<Step, MmioError> {
    let code = CodeRange::of(env)?;
    stack_is_exit(env, push_top, size, gpa)?;
    if !code.contains(target) {
        return Ok(Step::Fault(Fault::GeneralProtection));
    }
    device(gpa, size, Some(ret));
    set_width(rsp, ss, push_top);
    Ok(Step::Jump(target))
}

/// Carries out stack instruction `op` of operand size `size` (see the module header);
/// `gpa` is the exit's address. Every check comes before the first device access.
#[allow(clippy::too_many_arguments)]
pub fn execute<M: GuestMemoryMut>(
    op: StackOp,
    size: u8,
    regs: &mut vcpu::GuestRegisters,
    rsp: &mut u64,
    rflags: &mut u64,
    gpa: u64,
    device: &mut dyn FnMut(u64, u8, Option<u64>) -> u64,
    env: &mut Env<'_, M>,
) -> Result<Step, MmioError> {
    let ss = env.stack_size()?;
    let sm = mask(ss);
    let n = u64::from(size);
    let push_top = rsp.wrapping_sub(n) & sm;
    let pop_top = *rsp & sm;
    let popped = pop_top.wrapping_add(n) & sm;
    let gp = Ok(Step::Fault(Fault::GeneralProtection));
    match op {
        StackOp::Push(what) => {
            stack_is_exit(env, push_top, size, gpa)?;
            let (value, width) = match what {
                Pushed::Reg(r) => (reg_value(regs, *rsp, r, size), size),
                Pushed::Imm(v) => (v & mask(size), size),
                Pushed::Seg(s) => (u64::from(env.segment(s)?.selector), 2),
                Pushed::Flags => (*rflags & !(rf::VM | rf::RF) & mask(size), size),
            };
            device(gpa, width, Some(value));
            set_width(rsp, ss, push_top);
        }
        StackOp::PopReg(reg) => {
            stack_is_exit(env, pop_top, size, gpa)?;
            let value = device(gpa, size, None) & mask(size);
            set_width(rsp, ss, popped);
            // After the increment: `POP RSP` leaves the popped value.
            set_reg(regs, rsp, reg, size, value);
        }
        StackOp::PopFlags => {
            stack_is_exit(env, pop_top, size, gpa)?;
            let real = env.cr.cr0 & 1 == 0;
            // CPL is SS.DPL in protected mode (SDM Vol. 3A 5.5); 3 in virtual-8086.
            let cpl = if real {
                0
            } else {
                env.segment(SegReg::Ss)?.dpl()
            };
            let value = device(gpa, size, None) & mask(size);
            match popf(*rflags, value, size, cpl, real, env.cr.cr4 & 1 != 0) {
                Ok(new) => *rflags = new,
                Err(_) => return gp,
            }
            set_width(rsp, ss, popped);
        }
        StackOp::CallRel { ret, target } => {
            return call(env, rsp, ss, push_top, size, gpa, ret, target, device);
        }
        StackOp::CallReg { ret, reg } => {
            let target = reg_value(regs, *rsp, reg, size);
            return call(env, rsp, ss, push_top, size, gpa, ret, target, device);
        }
        StackOp::CallMem { ret } => {
            let code = CodeRange::of(env)?;
            let slot = env.place(SegReg::Ss, push_top, size)?;
            let target = device(gpa, size, None) & mask(size);
            if !code.contains(target) {
                return gp;
            }
            env.store(slot, size, ret, device);
            set_width(rsp, ss, push_top);
            return Ok(Step::Jump(target));
        }
        StackOp::CallMemStack { ret, mem } => {
            let code = CodeRange::of(env)?;
            let (seg, offset) = operand_address(&mem, regs, *rsp)?;
            let from = env.place(seg, offset, size)?;
            stack_is_exit(env, push_top, size, gpa)?;
            let target = env.load(from, size, device) & mask(size);
            if !code.contains(target) {
                return gp;
            }
            device(gpa, size, Some(ret));
            set_width(rsp, ss, push_top);
            return Ok(Step::Jump(target));
        }
        StackOp::Ret { release } => {
            let code = CodeRange::of(env)?;
            stack_is_exit(env, pop_top, size, gpa)?;
            let target = device(gpa, size, None) & mask(size);
            if !code.contains(target) {
                return gp;
            }
            set_width(rsp, ss, popped.wrapping_add(u64::from(release)) & sm);
            return Ok(Step::Jump(target));
        }
        StackOp::Leave => {
            let top = regs.rbp & sm;
            stack_is_exit(env, top, size, gpa)?;
            let value = device(gpa, size, None) & mask(size);
            set_width(rsp, ss, top.wrapping_add(n) & sm);
            set_reg(regs, rsp, Reg::Rbp, size, value);
        }
        StackOp::Enter { alloc } => {
            stack_is_exit(env, push_top, size, gpa)?;
            device(gpa, size, Some(regs.rbp & mask(size)));
            set_reg(regs, &mut 0, Reg::Rbp, size, push_top);
            set_width(rsp, ss, push_top.wrapping_sub(u64::from(alloc)) & sm);
        }
        StackOp::PushMem(mem) => {
            // The address of `m` with RSP before the push.
            let (seg, offset) = operand_address(&mem, regs, *rsp)?;
            let from = env.place(seg, offset, size)?;
            stack_is_exit(env, push_top, size, gpa)?;
            let value = env.load(from, size, device) & mask(size);
            device(gpa, size, Some(value));
            set_width(rsp, ss, push_top);
        }
        StackOp::PopMem(mem) => {
            stack_is_exit(env, pop_top, size, gpa)?;
            // The address of `m` with RSP after the pop (SDM Vol. 2B `POP`).
            let mut after = *rsp;
            set_width(&mut after, ss, popped);
            let (seg, offset) = operand_address(&mem, regs, after)?;
            let to = env.place(seg, offset, size)?;
            let value = device(gpa, size, None) & mask(size);
            env.store(to, size, value, device);
            *rsp = after;
        }
    }
    Ok(Step::Done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::mmio::{decode_at, execute, flags};
    use alloc::vec;
    use alloc::vec::Vec;
    use vcpu::state::{attrib, Segment};
    use vcpu::{ControlRegs, GuestRegisters};

    use crate::vmm::test_ram::Ram;

    type Log = Vec<(u64, u8, Option<u64>)>;

    /// Real mode (`cr0` 0) or 32-bit protected mode without paging (`cr0` 1, SS.B
    /// set, SS.DPL `cpl`); SS based at 0x10000 (device space), the rest at 0, CS's
    /// limit `cs_limit`.
    fn env(ram: &mut Ram, cr0: u64, cs_limit: u32, cpl: u16) -> Env<'_, Ram> {
        let seg = |base, attrib| {
            Some(Segment {
                selector: (base >> 4) as u16,
                base,
                limit: 0xffff,
                attrib,
            })
        };
        let flat = seg(0, 0);
        let mut cs = seg(0, 0).unwrap();
        cs.limit = cs_limit;
        let ss_attrib = if cr0 & 1 != 0 {
            attrib::DB | cpl << attrib::DPL_SHIFT
        } else {
            0
        };
        Env {
            mem: ram,
            cr: ControlRegs {
                cr0,
                ..Default::default()
            },
            segments: [
                flat,
                Some(cs),
                seg(0x10000, ss_attrib),
                flat,
                seg(0x2000, 0),
                flat,
            ],
        }
    }

    struct Run {
        regs: GuestRegisters,
        rsp: u64,
        rflags: u64,
    }

    impl Run {
        fn new(rsp: u64) -> Self {
            Self {
                regs: GuestRegisters::default(),
                rsp,
                rflags: 0x2,
            }
        }

        /// Decodes `bytes` at `rip` as `bits`-bit code, orients it by `write` and
        /// executes it against a device that answers `reply`.
        #[allow(clippy::too_many_arguments)]
        fn go(
            &mut self,
            env: &mut Env<'_, Ram>,
            bytes: &[u8],
            bits: u32,
            rip: u64,
            gpa: u64,
            write: bool,
            reply: u64,
        ) -> (Result<Step, MmioError>, Log) {
            let insn = decode_at(bytes, bits, rip).unwrap();
            let insn = orient(insn, write, bytes, bits, rip);
            assert!(if write { insn.writes() } else { insn.reads() });
            let mut log = Vec::new();
            let r = execute(
                &mut self.regs,
                &mut self.rsp,
                &mut self.rflags,
                &insn,
                gpa,
                &mut |a, s, v| {
                    log.push((a, s, v));
                    reply
                },
                env,
            );
            (r, log)
        }
    }

    #[test]
    fn decodes_the_stack_forms_with_their_operand_sizes() {
        let k = |b: &[u8], bits| {
            let i = decode_at(b, bits, 0x100).unwrap();
            (i.size, i.kind)
        };
        let st = Access::Stack;
        assert_eq!(
            k(&[0x50], 64),
            (8, st(StackOp::Push(Pushed::Reg(Reg::Rax))))
        );
        assert_eq!(k(&[0x41, 0x5f], 64), (8, st(StackOp::PopReg(Reg::R15))));
        assert_eq!(
            k(&[0x66, 0x50], 32),
            (2, st(StackOp::Push(Pushed::Reg(Reg::Rax))))
        );
        // push -2 (imm8 sign-extended to the operand size)
        assert_eq!(
            k(&[0x6a, 0xfe], 64),
            (8, st(StackOp::Push(Pushed::Imm(u64::MAX - 1))))
        );
        assert_eq!(
            k(&[0x6a, 0xfe], 16),
            (2, st(StackOp::Push(Pushed::Imm(0xfffe))))
        );
        assert_eq!(
            k(&[0x0f, 0xa0], 64),
            (8, st(StackOp::Push(Pushed::Seg(SegReg::Fs))))
        );
        assert_eq!(k(&[0x9c], 32), (4, st(StackOp::Push(Pushed::Flags))));
        assert_eq!(k(&[0x9d], 16), (2, st(StackOp::PopFlags)));
        // call rel32 at 0x100 (5 bytes): returns to 0x105, goes to 0x105 + 0x10.
        assert_eq!(
            k(&[0xe8, 0x10, 0, 0, 0], 64),
            (
                8,
                st(StackOp::CallRel {
                    ret: 0x105,
                    target: 0x115
                })
            )
        );
        // call rel16 wraps within IP.
        assert_eq!(
            k(&[0xe8, 0x00, 0xff], 16),
            (
                2,
                st(StackOp::CallRel {
                    ret: 0x103,
                    target: 0x3
                })
            )
        );
        assert_eq!(
            k(&[0xff, 0xd3], 64),
            (
                8,
                st(StackOp::CallReg {
                    ret: 0x102,
                    reg: Reg::Rbx
                })
            )
        );
        assert_eq!(
            k(&[0xff, 0x13], 32),
            (4, st(StackOp::CallMem { ret: 0x102 }))
        );
        assert_eq!(k(&[0xc3], 64), (8, st(StackOp::Ret { release: 0 })));
        assert_eq!(k(&[0xc2, 8, 0], 32), (4, st(StackOp::Ret { release: 8 })));
        assert_eq!(k(&[0xc9], 64), (8, st(StackOp::Leave)));
        assert_eq!(
            k(&[0xc8, 0x20, 0, 0], 32),
            (4, st(StackOp::Enter { alloc: 0x20 }))
        );
        // ENTER with a nesting level (32 is level 0 again), far returns, IRET, POPA:
        // named stops.
        assert_eq!(
            k(&[0xc8, 0x20, 0, 32], 32),
            (4, st(StackOp::Enter { alloc: 0x20 }))
        );
        for b in [&[0xc8, 0x20, 0, 1][..], &[0xcb], &[0xcf], &[0x61]] {
            assert!(
                matches!(decode_at(b, 32, 0), Err(MmioError::Unsupported { .. })),
                "{b:x?}"
            );
        }
    }

    #[test]
    fn real_mode_push_and_pop_wrap_sp_within_64_kib() {
        let mut ram = Ram(vec![0; 0x10000]);
        let mut e = env(&mut ram, 0, 0xffff, 0);
        // push ax with SP = 0: the slot is SS:0xfffe.
        let mut r = Run::new(0xdead_0000);
        r.regs.rax = 0x1234_5678;
        let (res, log) = r.go(&mut e, &[0x50], 16, 0, 0x1fffe, true, 0);
        assert_eq!(res, Ok(Step::Done));
        assert_eq!(log, [(0x1fffe, 2, Some(0x5678))]);
        assert_eq!(r.rsp, 0xdead_fffe);
        // pop bx: SP wraps back to 0.
        let (res, log) = r.go(&mut e, &[0x5b], 16, 0, 0x1fffe, false, 0xabcd);
        assert_eq!(res, Ok(Step::Done));
        assert_eq!(log, [(0x1fffe, 2, None)]);
        assert_eq!((r.rsp, r.regs.rbx), (0xdead_0000, 0xabcd));
        // An exit elsewhere than the slot: an error naming both, nothing done.
        let (res, log) = r.go(&mut e, &[0x50], 16, 0, 0x1fff0, true, 0);
        assert_eq!(
            res,
            Err(MmioError::StackMismatch {
                exit: 0x1fff0,
                slot: 0x1fffe
            })
        );
        assert!(log.is_empty());
        assert_eq!(r.rsp, 0xdead_0000);
        // push es: the selector.
        let (_, log) = r.go(&mut e, &[0x06], 16, 0, 0x1fffe, true, 0);
        assert_eq!(log, [(0x1fffe, 2, Some(0))]);
    }

    #[test]
    fn call_and_ret_branch_and_check_the_code_segment_limit() {
        let mut ram = Ram(vec![0; 0x10000]);
        let mut e = env(&mut ram, 0, 0xffff, 0);
        let mut r = Run::new(0x100);
        // call 0x113 at 0x100.
        let (res, log) = r.go(&mut e, &[0xe8, 0x10, 0x00], 16, 0x100, 0x100fe, true, 0);
        assert_eq!(res, Ok(Step::Jump(0x113)));
        assert_eq!((log, r.rsp), (vec![(0x100fe, 2, Some(0x103))], 0xfe));
        // ret 4: pops the return address and 4 more bytes.
        let (res, log) = r.go(&mut e, &[0xc2, 4, 0], 16, 0x113, 0x100fe, false, 0x103);
        assert_eq!(res, Ok(Step::Jump(0x103)));
        assert_eq!((log, r.rsp), (vec![(0x100fe, 2, None)], 0x104));
        // A return beyond CS's limit is #GP(0) after the read; SP unchanged.
        let mut e = env(&mut ram, 0, 0xff, 0);
        r.rsp = 0xfe;
        let (res, log) = r.go(&mut e, &[0xc3], 16, 0x10, 0x100fe, false, 0x1000);
        assert_eq!(res, Ok(Step::Fault(Fault::GeneralProtection)));
        assert_eq!((log.len(), r.rsp), (1, 0xfe));
        // A call beyond it: #GP(0) before the push.
        r.rsp = 0x100;
        let (res, log) = r.go(&mut e, &[0xe8, 0x00, 0x10], 16, 0x10, 0x100fe, true, 0);
        assert_eq!(res, Ok(Step::Fault(Fault::GeneralProtection)));
        assert_eq!((log.len(), r.rsp), (0, 0x100));
    }

    #[test]
    fn enter_and_leave_build_and_drop_a_frame() {
        let mut ram = Ram(vec![0; 0x10000]);
        let mut e = env(&mut ram, 1, u32::MAX, 0);
        let mut r = Run::new(0x1000);
        r.regs.rbp = 0x5555;
        // enter 0x20, 0: push ebp at 0xffc; ebp = 0xffc; esp = 0xffc - 0x20.
        let (res, log) = r.go(&mut e, &[0xc8, 0x20, 0, 0], 32, 0, 0x10ffc, true, 0);
        assert_eq!(res, Ok(Step::Done));
        assert_eq!(log, [(0x10ffc, 4, Some(0x5555))]);
        assert_eq!((r.regs.rbp, r.rsp), (0xffc, 0xfdc));
        // leave: esp = ebp, pop ebp.
        let (res, log) = r.go(&mut e, &[0xc9], 32, 0, 0x10ffc, false, 0x5555);
        assert_eq!(res, Ok(Step::Done));
        assert_eq!(log, [(0x10ffc, 4, None)]);
        assert_eq!((r.regs.rbp, r.rsp), (0x5555, 0x1000));
    }

    #[test]
    fn push_m_and_pop_m_with_the_stack_as_the_device() {
        let mut ram = Ram(vec![0; 0x10000]);
        ram.0[0x300..0x304].copy_from_slice(&0xcafe_f00du32.to_le_bytes());
        let mut e = env(&mut ram, 1, u32::MAX, 0);
        let mut r = Run::new(0x800);
        r.regs.rbx = 0x300;
        // push dword [ebx], a write exit: RAM to the device stack.
        let (res, log) = r.go(&mut e, &[0xff, 0x33], 32, 0, 0x107fc, true, 0);
        assert_eq!(res, Ok(Step::Done));
        assert_eq!(log, [(0x107fc, 4, Some(0xcafe_f00d))]);
        assert_eq!(r.rsp, 0x7fc);
        // pop dword [esp + 4], a read exit: the address uses ESP after the pop
        // (0x800 + 4 in SS, based at 0x10000: device space too, so a device write).
        let (res, log) = r.go(&mut e, &[0x8f, 0x44, 0x24, 0x04], 32, 0, 0x107fc, false, 7);
        assert_eq!(res, Ok(Step::Done));
        assert_eq!(log, [(0x107fc, 4, None), (0x10804, 4, Some(7))]);
        assert_eq!(r.rsp, 0x800);
        // pop dword [ebx]: into RAM.
        r.rsp = 0x7fc;
        let (_, log) = r.go(&mut e, &[0x8f, 0x03], 32, 0, 0x107fc, false, 0x1122_3344);
        assert_eq!(log.len(), 1);
        assert_eq!(e.mem.0[0x300..0x304], 0x1122_3344u32.to_le_bytes());
        // call [ebx] with the stack the device (a write exit): the target from RAM.
        e.mem.0[0x300..0x304].copy_from_slice(&0x4000u32.to_le_bytes());
        r.rsp = 0x800;
        let (res, log) = r.go(&mut e, &[0xff, 0x13], 32, 0x20, 0x107fc, true, 0);
        assert_eq!(res, Ok(Step::Jump(0x4000)));
        assert_eq!(log, [(0x107fc, 4, Some(0x22))]);
        // call [0x20000] with the target the device (a read exit): the return
        // address goes to the stack (the device too here).
        r.rsp = 0x800;
        let (res, log) = r.go(
            &mut e,
            &[0xff, 0x15, 0, 0, 2, 0],
            32,
            0x20,
            0x20000,
            false,
            0x5000,
        );
        assert_eq!(res, Ok(Step::Jump(0x5000)));
        assert_eq!(log, [(0x20000, 4, None), (0x107fc, 4, Some(0x26))]);
    }

    #[test]
    fn pushf_and_popf_follow_the_mode_rules() {
        let mut ram = Ram(vec![0; 0x10000]);
        let mut e = env(&mut ram, 1, u32::MAX, 3);
        let mut r = Run::new(0x800);
        // pushfd: VM and RF read as 0.
        r.rflags = 0x2 | rf::RF | rf::IF | flags::CF;
        let (_, log) = r.go(&mut e, &[0x9c], 32, 0, 0x107fc, true, 0);
        assert_eq!(log, [(0x107fc, 4, Some(0x2 | rf::IF | flags::CF))]);
        // popfd at CPL 3, IOPL 0: IF and IOPL stay; status flags change; RF clears.
        let (res, _) = r.go(&mut e, &[0x9d], 32, 0, 0x107fc, false, 0x3000 | flags::ZF);
        assert_eq!(res, Ok(Step::Done));
        assert_eq!(r.rflags, 0x2 | rf::IF | flags::ZF);
        assert_eq!(r.rsp, 0x800);
    }

    #[test]
    fn popf_rules() {
        use rf::*;
        let base = 0x2;
        // Real mode, 16 bits: every flag in 15:0, IOPL included.
        assert_eq!(popf(base, 0x3000 | IF, 2, 0, true, false), Ok(0x3002 | IF));
        // Real mode, 32 bits: VM, VIF, VIP kept; RF cleared.
        assert_eq!(
            popf(base | RF, VM | VIF | VIP | (1 << 21), 4, 0, true, false),
            Ok(base | (1 << 21))
        );
        // CPL 0: IOPL and IF change.
        assert_eq!(popf(base, 0x3000 | IF, 8, 0, false, false), Ok(0x3002 | IF));
        // CPL 3 > IOPL 0: neither changes.
        assert_eq!(popf(base | IF, 0x3000, 8, 3, false, false), Ok(base | IF));
        // CPL 3 = IOPL 3: IF changes, IOPL does not.
        assert_eq!(popf(base | IOPL, 0, 4, 3, false, false), Ok(base | IOPL));
        // Virtual-8086 mode, IOPL 3: IOPL and VM stay.
        let v86 = base | VM | IOPL;
        assert_eq!(popf(v86, IF, 4, 3, false, false), Ok(v86 | IF));
        // IOPL < 3 without VME: #GP(0); with VME, the 16-bit form moves IF to VIF.
        let v86 = base | VM | IF;
        assert_eq!(
            popf(v86, 0, 2, 3, false, false),
            Err(Fault::GeneralProtection)
        );
        assert_eq!(
            popf(v86, 0, 4, 3, false, true),
            Err(Fault::GeneralProtection)
        );
        assert_eq!(popf(v86, IF | 1, 2, 3, false, true), Ok(v86 | VIF | 1));
        assert_eq!(popf(v86 | VIF, 0, 2, 3, false, true), Ok(v86));
        assert_eq!(
            popf(v86, TF, 2, 3, false, true),
            Err(Fault::GeneralProtection)
        );
        assert_eq!(
            popf(v86 | VIP, IF, 2, 3, false, true),
            Err(Fault::GeneralProtection)
        );
    }
}
