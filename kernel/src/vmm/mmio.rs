//! MMIO instruction emulation: decode the guest instruction that touched an MMIO page
//! (the local APIC at 0xFEE00000, the IOAPIC at 0xFEC00000, ...), hand the access to a
//! device model (one read, one write, or a read then a write), write a loaded or
//! computed value back into the destination register, update the status flags, and
//! step RIP over the instruction.
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
//! Supported, each at every operand size (66 prefix, REX.W) and in 16-, 32- and 64-bit
//! code:
//! - what compilers and Linux's `readl`/`writel` emit for MMIO: `MOV r/m, r` (88/89),
//!   `MOV r, r/m` (8A/8B), `MOV` with `moffs` (A0-A3), `MOV r/m, imm` (C6/C7),
//!   `MOVZX` (0F B6/B7), `MOVSX` (0F BE/BF), `MOVSXD` (63);
//! - flag-setting reads, one device read and RFLAGS only: `TEST r/m, r` (84/85),
//!   `TEST r/m, imm` (F6/F7 /0, and the /1 alias), `CMP r/m, r` and `CMP r, r/m`
//!   (38-3B), `CMP r/m, imm` (80/81/83 /7, 82 /7 outside 64-bit mode) - what drivers
//!   poll a status with (`virtio-drivers`: `test byte [status], imm8`);
//! - `ADD`, `OR`, `ADC`, `SBB`, `AND`, `SUB`, `XOR` with a memory destination (register
//!   or immediate source, imm8 forms sign-extended: one device read, one device write
//!   of the result, RFLAGS) and with a memory source into a register (one read, the
//!   register written as x86 writes it, RFLAGS);
//! - `XCHG r/m, r` with memory: a read, then a write of the register; no flags.
//! - `INC`/`DEC`/`NEG`/`NOT` (FE/FF /0 /1, F6/F7 /2 /3) and the shifts and rotates
//!   `ROL`/`ROR`/`RCL`/`RCR`/`SHL`(`SAL`)/`SHR`/`SAR` by 1, CL or imm8 (C0/C1, D0-D3),
//!   with a memory destination: one read, one write, flags ([`x86_arith`]);
//! - `BT`/`BTS`/`BTR`/`BTC` with an imm8 (0F BA) or a register (0F A3/AB/B3/BB) bit
//!   offset: one read (and for all but `BT` one write), CF. With a register offset
//!   the processor moves the access to the operand holding the bit (SDM Vol. 2A `BT`:
//!   effective address + (offset SAR 3), in operand-size steps); the exit's address
//!   is the one it moved to, so the emulator touches exactly the bytes the processor
//!   did, and takes only the bit number (the offset modulo the width) from the
//!   register. The moved operand may lie in another page than the effective address:
//!   that does not matter, as the exit names the page the processor reached;
//! - `XADD` (0F C0/C1) and `CMPXCHG` (0F B0/B1): a read, then a write (for a failed
//!   `CMPXCHG` the old value again: the SDM's unconditional write cycle), flags as
//!   `ADD` / `CMP`;
//! - `CMPXCHG8B`/`CMPXCHG16B` (0F C7 /1, with or without `LOCK`;
//!   [`super::cmpxchg_wide`]): 8-byte device accesses, two at ascending addresses for
//!   the 16-byte operand, ZF; #GP(0) for a misaligned `CMPXCHG16B`, #UD when the
//!   guest's CPUID hides CX16 ([`GuestFeatures`]);
//! - `SETcc r/m8` (0F 90-9F): one write of 0 or 1; `CMOVcc r, r/m` (0F 40-4F): one
//!   read whether or not the condition holds (as on the processor), a 32-bit
//!   destination zero-extended even when it does not;
//! - `MUL`/`IMUL`/`DIV`/`IDIV r/m` (F6/F7 /4-/7) on AL/AX/EAX/RAX and AH/DX/EDX/RDX,
//!   and `IMUL r, r/m` (0F AF) and `IMUL r, r/m, imm` (69/6B): one read. A zero
//!   divisor or a quotient that does not fit raises #DE: injected, with RIP left on
//!   the instruction and no register changed (after the device read, as on the
//!   processor).
//!
//! Flags are computed as the SDM (Vol. 2) defines them ([`alu`], [`x86_arith`]): CF,
//! PF, AF, ZF, SF and OF from the result for the arithmetic ones (`ADC`/`SBB` take CF
//! in); CF = OF = 0 for `AND`/`OR`/`XOR`/`TEST`, whose AF is undefined and is set to 0
//! here. Where the SDM leaves a flag undefined for the other operations (AF after a
//! shift, OF after a shift by more than 1, SF/ZF/AF/PF after `MUL`, every flag after
//! `DIV`, ...), it keeps its value. Every other RFLAGS bit is kept, and
//! [`Vcpu::set_rflags`] keeps bit 1 set. A read-modify-write instruction is accepted
//! whether the exit reports the read or the write (processors and emulators report
//! either).
//!
//! `LOCK` is honoured where the ISA allows it (the memory-destination forms; `XCHG` is
//! locked anyway): both device accesses happen while the exit handler holds the VM's
//! lock, so no other vCPU's emulated access to any device comes between them, and
//! unbacked space has no state to race on. iced rejects `LOCK` elsewhere (#UD).
//!
//! With a second memory operand ([`super::mmio_memory`], which locates it through the
//! segment registers and the guest's page tables, and reaches RAM only through the
//! checked accessors):
//! - `PUSH r/m` (FF /6) and `POP r/m` (8F /0) with memory: the device and the stack,
//!   whichever of the two is the device;
//! - a stack in device space ([`super::mmio_stack`]): `PUSH r/imm/Sreg`, `POP r`,
//!   `PUSHF`/`POPF` (with the SDM's per-mode rules), near `CALL` (rel, r/m) and `RET`
//!   (with and without imm16), `LEAVE`, `ENTER` at nesting level 0; the exit must be
//!   the stack slot the emulator computes;
//! - `MOV r/m16, Sreg` (8C) to memory: a 16-bit write of the selector;
//! - `MOVS`, `STOS`, `LODS`, `CMPS`, `SCAS` at every element and address size, with
//!   `REP`/`REPE`/`REPNE`: one device access per element, RSI/RDI/RCX and DF as the
//!   processor uses them, at most [`MAX_BATCH`] elements per exit (then RIP stays on
//!   the instruction and the guest runs it again, as a real `REP` is interruptible).
//!
//! `INS`/`OUTS`, whose exit is the port's, are [`super::string_io`]'s, with a memory
//! side in RAM or not.
//!
//! - segment-register loads from the device ([`super::mmio_segment`]): `MOV Sreg,
//!   m16`, `POP Sreg` from a stack in device space, `LDS`/`LES`/`LFS`/`LGS`/`LSS`: in
//!   real-address and virtual-8086 mode base = selector << 4 with the cached limit
//!   and attributes kept, in protected and long mode a descriptor load with the SDM's
//!   checks and faults ([`super::descriptor_load`]); [`vcpu::Vcpu::set_segment`].
//!
//! The MMX and SSE data moves (`MOVD`/`MOVQ`, `MOVDQA`/`MOVDQU`, `MOVAPS`/`MOVUPS`/
//! `MOVAPD`/`MOVUPD`, `MOVSS`/`MOVSD`, `MOVLPS`/`MOVHPS`/`MOVLPD`/`MOVHPD`, the
//! non-temporal `MOVNT*` including the general-purpose `MOVNTI`, `MOVNTDQA`, `LDDQU`)
//! are [`super::mmio_sse`]'s, the x87 loads, stores and arithmetic (`FLD`/`FILD`/
//! `FST`/`FSTP`/`FIST`/`FISTP`/`FISTTP`, `FADD m64fp`, ...) [`super::mmio_x87`]'s, the
//! SSE computations with a memory source and `MASKMOVDQU`/`MASKMOVQ`
//! [`super::mmio_simd_alu`]'s: `mmio_sse::emulate` calls this
//! module's first and takes over what [`decode`] refuses as unsupported. AVX cannot
//! reach MMIO: XSAVE is hidden and CR4.OSXSAVE refused, so every VEX/EVEX form
//! raises #UD in the guest itself.
//!
//! Not emulated, deliberately, with an error that names the mnemonic (the VM stops
//! with it): far `CALL`/`RET`, `IRET`, `PUSHA`/`POPA`, `ENTER` with a nesting level,
//! and the x87/SSE forms none of the modules above takes (those with an immediate,
//! MMX computations, state loads and stores such as `FXRSTOR` or `LDMXCSR`).
//! None of these is a form the processor would reject, so injecting #UD would break a
//! correct guest in a way the manual does not allow; stopping that VM with the
//! instruction named is the honest outcome.
//!
//! Limits: RFLAGS.TF single-stepping is not honoured after an emulated instruction
//! (no #DB is queued); a 16-bit protected-mode code segment is decoded as 32-bit (see
//! [`guest_walk::code_bitness`]); accesses that straddle the end of the MMIO page are
//! passed to the device as one access at the exit's address.

use super::guest_walk::{self, GuestMemoryMut, WalkError};
use super::mmio_memory::{Env, Place, MAX_BATCH};
use super::mmio_segment::SegmentLoad;
use super::mmio_stack::StackOp;
use super::x86_arith::{self, DivideError, Wide};
pub use super::x86_arith::{BitOp, MulDivOp, ShiftOp, UnaryOp};
use iced_x86::{
    Code, Decoder, DecoderError, DecoderOptions, Instruction, Mnemonic, OpKind, Register,
};
use vcpu::{Exception, GuestRegisters, SegReg, Vcpu};

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
pub const GPRS: [Reg; 16] = [
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

/// An arithmetic or logical operation on the MMIO value (SDM Vol. 2 for each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AluOp {
    Add,
    /// `ADD` plus CF.
    Adc,
    Sub,
    /// `SUB` minus CF.
    Sbb,
    And,
    Or,
    Xor,
    /// `SUB` that only sets the flags.
    Cmp,
    /// `AND` that only sets the flags.
    Test,
}

impl AluOp {
    /// Whether the result is stored (`CMP` and `TEST` only set the flags).
    pub fn stores(self) -> bool {
        !matches!(self, AluOp::Cmp | AluOp::Test)
    }
}

/// The RFLAGS status flags (SDM Vol. 1 3.4.3.1).
pub mod flags {
    pub const CF: u64 = 1 << 0;
    pub const PF: u64 = 1 << 2;
    pub const AF: u64 = 1 << 4;
    pub const ZF: u64 = 1 << 6;
    pub const SF: u64 = 1 << 7;
    pub const OF: u64 = 1 << 11;
    /// Every flag an ALU instruction defines; the rest of RFLAGS is left alone.
    pub const STATUS: u64 = CF | PF | AF | ZF | SF | OF;
}

/// `op` on the `size`-byte operands `left` and `right` (the destination first, as the
/// SDM writes them: `SUB left, right` is `left - right`), with the incoming carry for
/// `ADC`/`SBB`. Returns the result (truncated to `size`) and the status flags as the
/// SDM defines them: for `ADD`/`ADC`/`SUB`/`SBB`/`CMP` all six from the result; for
/// `AND`/`OR`/`XOR`/`TEST` CF = OF = 0 and SF, ZF, PF from the result, and AF, which
/// the SDM leaves undefined for them, is 0 (as the processors we know of leave it).
pub fn alu(op: AluOp, size: u8, left: u64, right: u64, carry_in: bool) -> (u64, u64) {
    let m = mask(size);
    let (a, b) = (left & m, right & m);
    let sign = 1u64 << (8 * u32::from(size) - 1);
    let (result, cf, of, af) = match op {
        AluOp::Add | AluOp::Adc => {
            let c = u128::from(op == AluOp::Adc && carry_in);
            let wide = u128::from(a) + u128::from(b) + c;
            let r = wide as u64 & m;
            // Carry out of the top bit; overflow when both operands have the sign
            // the result lacks.
            let cf = wide > u128::from(m);
            let of = (a ^ r) & (b ^ r) & sign != 0;
            (r, cf, of, (a ^ b ^ r) & 0x10 != 0)
        }
        AluOp::Sub | AluOp::Sbb | AluOp::Cmp => {
            let c = u128::from(op == AluOp::Sbb && carry_in);
            let r = (u128::from(a).wrapping_sub(u128::from(b) + c)) as u64 & m;
            // A borrow into the top bit; overflow when the operands' signs differ
            // and the result's sign is not the minuend's.
            let cf = u128::from(a) < u128::from(b) + c;
            let of = (a ^ b) & (a ^ r) & sign != 0;
            (r, cf, of, (a ^ b ^ r) & 0x10 != 0)
        }
        AluOp::And | AluOp::Test => (a & b, false, false, false),
        AluOp::Or => (a | b, false, false, false),
        AluOp::Xor => (a ^ b, false, false, false),
    };
    let mut f = 0;
    let mut set = |flag: u64, on: bool| {
        if on {
            f |= flag;
        }
    };
    set(flags::CF, cf);
    // PF: an even number of ones in the result's low byte.
    set(flags::PF, (result as u8).count_ones().is_multiple_of(2));
    set(flags::AF, af);
    set(flags::ZF, result == 0);
    set(flags::SF, result & sign != 0);
    set(flags::OF, of);
    (result, f)
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
    /// `op mem, src`: read the location (the left operand), combine it with `src`,
    /// write the result back unless `op` only sets flags (`CMP`, `TEST`), and set
    /// the status flags.
    AluToMemory { op: AluOp, src: Operand },
    /// `op reg, mem`: `reg` (`size` bytes) is the left operand and the destination
    /// (unless `op` is `CMP`), the location read the right one; sets the flags.
    AluToRegister { op: AluOp, reg: Reg },
    /// `XCHG mem, reg`: read the location, write `reg`'s value, load the old value
    /// into `reg`. No flags.
    Exchange { reg: Reg },
    /// `INC`/`DEC`/`NEG`/`NOT mem`: read, write the result, set the flags
    /// ([`x86_arith::unary`]).
    Unary { op: UnaryOp },
    /// A shift or rotate of the location by `count` (`Imm(1)`, `Imm(imm8)` or
    /// `Reg(Rcx, 1)` for CL): read, write the result (also for a masked count of 0,
    /// as the processor's read-modify-write cycle does), flags ([`x86_arith::shift`]).
    Shift { op: ShiftOp, count: Operand },
    /// `BT`/`BTS`/`BTR`/`BTC mem, offset`: read; CF is the bit `offset` modulo the
    /// width; `BTS`/`BTR`/`BTC` write the changed value. With a register offset the
    /// processor itself moved the access by `offset` arithmetically shifted right by
    /// log2(width) operands (SDM Vol. 2A `BT`), and the exit's address *is* that
    /// moved operand, so the device is accessed there and only the bit number is
    /// left to take from the register.
    BitTest { op: BitOp, offset: Operand },
    /// `XADD mem, reg`: read, write the sum, load the old value into `reg`; flags
    /// as `ADD`.
    ExchangeAdd { reg: Reg },
    /// `CMPXCHG mem, reg`: read, compare with the accumulator (flags as `CMP acc,
    /// mem`); equal: write `reg`; not equal: write the old value back (the SDM's
    /// unconditional write cycle) and load it into the accumulator.
    CompareExchange { reg: Reg },
    /// `CMPXCHG8B` (`half` = 4) / `CMPXCHG16B` (`half` = 8) on the `2 * half`-byte
    /// operand ([`super::cmpxchg_wide`]): read it, compare with EDX:EAX / RDX:RAX,
    /// ZF; equal: write ECX:EBX / RCX:RBX; not equal: write the old value back and
    /// load it into EDX:EAX / RDX:RAX. The device sees 8-byte accesses
    /// ([`MmioInstruction::size`] is 8): one for `CMPXCHG8B`, two at ascending
    /// addresses for `CMPXCHG16B`.
    CompareExchangeDouble { half: u8 },
    /// `SETcc mem8`: write 1 or 0 as condition `cc` holds. No read, no flags.
    SetCondition { cc: u8 },
    /// `CMOVcc reg, mem`: read (always, as the processor does); load into `reg` if
    /// `cc` holds. A 32-bit `reg` is zero-extended even when it does not (SDM Vol. 2A
    /// `CMOVcc`, 64-bit mode).
    CondMove { cc: u8, reg: Reg },
    /// `MUL`/`IMUL`/`DIV`/`IDIV mem` on AX, DX:AX, EDX:EAX or RDX:RAX
    /// ([`x86_arith::mul_div`]); `DIV`/`IDIV` may raise #DE.
    MulDiv { op: MulDivOp },
    /// `IMUL reg, mem` and `IMUL reg, mem, imm` (`imm` sign-extended to the operand
    /// size): `reg` = the truncated product of `reg` (or `mem`) and `mem` (or `imm`).
    ImulToRegister { reg: Reg, imm: Option<u64> },
    /// `PUSH mem`: read the device, store the value at SS:(RSP - size)
    /// ([`super::mmio_memory`]).
    Push,
    /// `POP mem`: load SS:RSP, write the value to the device.
    Pop,
    /// `MOV mem16, Sreg`: write the selector (16 bits whatever the operand size, SDM
    /// Vol. 2B `MOV`).
    StoreSegment { seg: SegReg },
    /// A push, pop, call or return whose stack slot is the device
    /// ([`super::mmio_stack`]); `size` is the operand size.
    Stack(StackOp),
    /// A segment-register load from the device ([`super::mmio_segment`]).
    SegmentLoad(SegmentLoad),
    /// A string instruction: `size`-byte elements, RSI/RDI/RCX at `addr_size` bytes,
    /// the source (RSI) in segment `seg` ([`super::mmio_memory`]).
    String {
        op: StringOp,
        addr_size: u8,
        seg: SegReg,
        rep: Rep,
    },
}

/// The string instructions (SDM Vol. 2: `MOVS`, `STOS`, `LODS`, `CMPS`, `SCAS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StringOp {
    Movs,
    Stos,
    Lods,
    Cmps,
    Scas,
}

/// A string instruction's repeat prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rep {
    /// One element.
    Once,
    /// Until the count is 0 (F3, or F2 on `MOVS`/`STOS`/`LODS`, which processors
    /// treat alike).
    Count,
    /// `REPE` (F3) of `CMPS`/`SCAS`: also ends when ZF is clear.
    WhileEqual,
    /// `REPNE` (F2) of `CMPS`/`SCAS`: also ends when ZF is set.
    WhileNotEqual,
}

/// What became of an executed instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Complete: RIP moves past it.
    Done,
    /// A `REP` string instruction with elements left after this batch: RIP stays on
    /// it, and the guest runs it again.
    Repeat,
    /// It raises an exception instead: RIP stays, nothing else changed.
    Fault(Fault),
    /// Complete, and a near branch (`CALL`, `RET`): RIP becomes this.
    Jump(u64),
    /// Complete, and this segment register is loaded with this value
    /// ([`super::mmio_segment`], real-address and virtual-8086 mode).
    LoadSegment(SegReg, vcpu::state::Segment),
    /// Complete once this segment register is loaded from this selector's
    /// descriptor (protected and long mode, [`super::descriptor_load`]), which may
    /// fault instead.
    LoadSelector(SegReg, u16),
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
    /// Whether the device is read.
    pub fn reads(&self) -> bool {
        match self.kind {
            Access::Stack(op) => op.reads(),
            Access::SegmentLoad(_) => true,
            Access::String { op, .. } => op != StringOp::Stos,
            Access::Write { .. }
            | Access::SetCondition { .. }
            | Access::Pop
            | Access::StoreSegment { .. } => false,
            _ => true,
        }
    }

    /// Whether the device is written.
    pub fn writes(&self) -> bool {
        match self.kind {
            Access::Stack(op) => op.writes(),
            Access::SegmentLoad(_) => false,
            Access::Write { .. }
            | Access::Exchange { .. }
            | Access::Unary { .. }
            | Access::Shift { .. }
            | Access::ExchangeAdd { .. }
            | Access::CompareExchange { .. }
            | Access::CompareExchangeDouble { .. }
            | Access::SetCondition { .. }
            | Access::Pop
            | Access::StoreSegment { .. } => true,
            Access::String { op, .. } => matches!(op, StringOp::Movs | StringOp::Stos),
            Access::AluToMemory { op, .. } => op.stores(),
            Access::BitTest { op, .. } => op != BitOp::Bt,
            Access::Read { .. }
            | Access::AluToRegister { .. }
            | Access::CondMove { .. }
            | Access::MulDiv { .. }
            | Access::ImulToRegister { .. }
            | Access::Push => false,
        }
    }

    /// Whether RFLAGS may change.
    pub fn sets_flags(&self) -> bool {
        match self.kind {
            Access::Stack(op) => op.sets_flags(),
            Access::SegmentLoad(_) => false,
            Access::Unary { op } => op != UnaryOp::Not,
            Access::AluToMemory { .. }
            | Access::AluToRegister { .. }
            | Access::Shift { .. }
            | Access::BitTest { .. }
            | Access::ExchangeAdd { .. }
            | Access::CompareExchange { .. }
            | Access::CompareExchangeDouble { .. }
            | Access::MulDiv { .. }
            | Access::ImulToRegister { .. } => true,
            Access::String { op, .. } => matches!(op, StringOp::Cmps | StringOp::Scas),
            Access::Read { .. }
            | Access::Write { .. }
            | Access::Exchange { .. }
            | Access::SetCondition { .. }
            | Access::CondMove { .. }
            | Access::Push
            | Access::Pop
            | Access::StoreSegment { .. } => false,
        }
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
    /// The instruction needs this segment register, which the vCPU does not report
    /// (some host tests' vCPUs; both backends report all six).
    NoSegment(SegReg),
    /// The instruction's other memory operand (the stack, a string instruction's
    /// other side) at linear `linear` does not translate.
    Operand { linear: u64, err: WalkError },
    /// The stack slot the instruction uses (at guest-physical `slot`) is not the
    /// exit's address `exit` ([`super::mmio_stack`]).
    StackMismatch { exit: u64, slot: u64 },
    /// A segment descriptor at guest-physical `gpa` is not in RAM
    /// ([`super::descriptor_load`]).
    DescriptorNotRam { gpa: u64 },
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
            MmioError::NoSegment(seg) => {
                write!(
                    f,
                    "needs the guest's {seg:?} register, which is not available"
                )
            }
            MmioError::Operand { err, .. } => {
                write!(f, "the instruction's other memory operand: {err}")
            }
            MmioError::DescriptorNotRam { gpa } => write!(
                f,
                "the segment descriptor at guest-physical {gpa:#x} is not in RAM"
            ),
            MmioError::StackMismatch { exit, slot } => write!(
                f,
                "the exit is at guest-physical {exit:#x} but the stack slot is at {slot:#x}"
            ),
        }
    }
}

/// Maps an iced general-purpose register to ours with its width. iced numbers each
/// size class in ModRM order (AL CL DL BL AH CH DH BH SPL BPL SIL DIL R8L..R15L, then
/// AX.., EAX.., RAX..); the tests pin that down.
pub(crate) fn gpr(r: Register) -> Option<(Reg, u8)> {
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
    /// `op mem, reg`: operand 0 memory, operand 1 the register.
    AluMemReg(AluOp),
    /// `op mem, imm` with the access width (imm8 forms sign-extend to it).
    AluMemImm(AluOp, u8),
    /// `op reg, mem`: operand 0 the register, operand 1 memory.
    AluRegMem(AluOp),
    /// `XCHG mem, reg` (iced decodes `XCHG reg, mem` as this form too).
    Xchg,
    /// `INC`/`DEC`/`NEG`/`NOT mem` with the width.
    Unary(UnaryOp, u8),
    /// A shift or rotate of memory: the width and where the count comes from.
    Shift(ShiftOp, u8, CountFrom),
    /// `BTx mem, imm8` with the width.
    BitImm(BitOp, u8),
    /// `BTx mem, reg`: operand 1 holds the bit offset.
    BitReg(BitOp),
    /// `XADD mem, reg`.
    Xadd,
    /// `CMPXCHG mem, reg`.
    Cmpxchg,
    /// `CMPXCHG8B` / `CMPXCHG16B` with the half width (4 or 8).
    CmpxchgDouble(u8),
    /// `SETcc mem8` with the condition code.
    Setcc(u8),
    /// `CMOVcc reg, mem` with the condition code.
    Cmov(u8),
    /// `MUL`/`IMUL`/`DIV`/`IDIV mem` with the width.
    MulDiv(MulDivOp, u8),
    /// `IMUL reg, mem` (and `, imm` as operand 2).
    Imul,
    /// `PUSH mem` with the operand size.
    Push(u8),
    /// `POP mem` with the operand size.
    Pop(u8),
    /// `MOV mem16, Sreg`: operand 1 the segment register.
    StoreSreg,
    /// A string instruction with the element size.
    Str(StringOp, u8),
}

/// Where a shift's count comes from.
#[derive(Clone, Copy)]
enum CountFrom {
    One,
    Cl,
    Imm,
}

/// The shift and rotate encodings. iced numbers them in blocks per count source:
/// the eight 8-bit forms in ModRM `reg` order (ROL ROR RCL RCR SHL SHR SAL SAR),
/// then the same eight operations with three codes each (16, 32, 64 bits); the
/// tests pin the layout down.
fn shift_form(code: Code) -> Option<Form> {
    use ShiftOp::*;
    const OPS: [ShiftOp; 8] = [Rol, Ror, Rcl, Rcr, Shl, Shr, Shl, Sar];
    let n = code as u32;
    for (byte, wide, count) in [
        (Code::Rol_rm8_imm8, Code::Rol_rm16_imm8, CountFrom::Imm),
        (Code::Rol_rm8_1, Code::Rol_rm16_1, CountFrom::One),
        (Code::Rol_rm8_CL, Code::Rol_rm16_CL, CountFrom::Cl),
    ] {
        let (byte, wide) = (byte as u32, wide as u32);
        if (byte..byte + 8).contains(&n) {
            return Some(Form::Shift(OPS[(n - byte) as usize], 1, count));
        }
        if (wide..wide + 24).contains(&n) {
            let i = (n - wide) as usize;
            return Some(Form::Shift(OPS[i / 3], [2, 4, 8][i % 3], count));
        }
    }
    None
}

/// The other read-modify-write, conditional and multiply/divide forms.
fn more_form(code: Code) -> Option<Form> {
    use BitOp::*;
    use Code as C;
    use MulDivOp::*;
    use UnaryOp::*;
    let n = code as u32;
    let seto = C::Seto_rm8 as u32;
    if (seto..seto + 16).contains(&n) {
        return Some(Form::Setcc((n - seto) as u8));
    }
    // CMOVcc: three codes (16, 32, 64 bits) per condition, in condition order.
    let cmovo = C::Cmovo_r16_rm16 as u32;
    if (cmovo..cmovo + 48).contains(&n) {
        return Some(Form::Cmov(((n - cmovo) / 3) as u8));
    }
    Some(match code {
        C::Inc_rm8 => Form::Unary(Inc, 1),
        C::Inc_rm16 => Form::Unary(Inc, 2),
        C::Inc_rm32 => Form::Unary(Inc, 4),
        C::Inc_rm64 => Form::Unary(Inc, 8),
        C::Dec_rm8 => Form::Unary(Dec, 1),
        C::Dec_rm16 => Form::Unary(Dec, 2),
        C::Dec_rm32 => Form::Unary(Dec, 4),
        C::Dec_rm64 => Form::Unary(Dec, 8),
        C::Neg_rm8 => Form::Unary(Neg, 1),
        C::Neg_rm16 => Form::Unary(Neg, 2),
        C::Neg_rm32 => Form::Unary(Neg, 4),
        C::Neg_rm64 => Form::Unary(Neg, 8),
        C::Not_rm8 => Form::Unary(Not, 1),
        C::Not_rm16 => Form::Unary(Not, 2),
        C::Not_rm32 => Form::Unary(Not, 4),
        C::Not_rm64 => Form::Unary(Not, 8),
        C::Mul_rm8 => Form::MulDiv(Mul, 1),
        C::Mul_rm16 => Form::MulDiv(Mul, 2),
        C::Mul_rm32 => Form::MulDiv(Mul, 4),
        C::Mul_rm64 => Form::MulDiv(Mul, 8),
        C::Imul_rm8 => Form::MulDiv(Imul, 1),
        C::Imul_rm16 => Form::MulDiv(Imul, 2),
        C::Imul_rm32 => Form::MulDiv(Imul, 4),
        C::Imul_rm64 => Form::MulDiv(Imul, 8),
        C::Div_rm8 => Form::MulDiv(Div, 1),
        C::Div_rm16 => Form::MulDiv(Div, 2),
        C::Div_rm32 => Form::MulDiv(Div, 4),
        C::Div_rm64 => Form::MulDiv(Div, 8),
        C::Idiv_rm8 => Form::MulDiv(Idiv, 1),
        C::Idiv_rm16 => Form::MulDiv(Idiv, 2),
        C::Idiv_rm32 => Form::MulDiv(Idiv, 4),
        C::Idiv_rm64 => Form::MulDiv(Idiv, 8),
        C::Imul_r16_rm16
        | C::Imul_r32_rm32
        | C::Imul_r64_rm64
        | C::Imul_r16_rm16_imm16
        | C::Imul_r32_rm32_imm32
        | C::Imul_r64_rm64_imm32
        | C::Imul_r16_rm16_imm8
        | C::Imul_r32_rm32_imm8
        | C::Imul_r64_rm64_imm8 => Form::Imul,
        C::Bt_rm16_imm8 => Form::BitImm(Bt, 2),
        C::Bt_rm32_imm8 => Form::BitImm(Bt, 4),
        C::Bt_rm64_imm8 => Form::BitImm(Bt, 8),
        C::Bts_rm16_imm8 => Form::BitImm(Bts, 2),
        C::Bts_rm32_imm8 => Form::BitImm(Bts, 4),
        C::Bts_rm64_imm8 => Form::BitImm(Bts, 8),
        C::Btr_rm16_imm8 => Form::BitImm(Btr, 2),
        C::Btr_rm32_imm8 => Form::BitImm(Btr, 4),
        C::Btr_rm64_imm8 => Form::BitImm(Btr, 8),
        C::Btc_rm16_imm8 => Form::BitImm(Btc, 2),
        C::Btc_rm32_imm8 => Form::BitImm(Btc, 4),
        C::Btc_rm64_imm8 => Form::BitImm(Btc, 8),
        C::Bt_rm16_r16 | C::Bt_rm32_r32 | C::Bt_rm64_r64 => Form::BitReg(Bt),
        C::Bts_rm16_r16 | C::Bts_rm32_r32 | C::Bts_rm64_r64 => Form::BitReg(Bts),
        C::Btr_rm16_r16 | C::Btr_rm32_r32 | C::Btr_rm64_r64 => Form::BitReg(Btr),
        C::Btc_rm16_r16 | C::Btc_rm32_r32 | C::Btc_rm64_r64 => Form::BitReg(Btc),
        C::Xadd_rm8_r8 | C::Xadd_rm16_r16 | C::Xadd_rm32_r32 | C::Xadd_rm64_r64 => Form::Xadd,
        C::Cmpxchg_rm8_r8 | C::Cmpxchg_rm16_r16 | C::Cmpxchg_rm32_r32 | C::Cmpxchg_rm64_r64 => {
            Form::Cmpxchg
        }
        C::Cmpxchg8b_m64 => Form::CmpxchgDouble(4),
        C::Cmpxchg16b_m128 => Form::CmpxchgDouble(8),
        C::Push_rm16 => Form::Push(2),
        C::Push_rm32 => Form::Push(4),
        C::Push_rm64 => Form::Push(8),
        C::Pop_rm16 => Form::Pop(2),
        C::Pop_rm32 => Form::Pop(4),
        C::Pop_rm64 => Form::Pop(8),
        C::Mov_rm16_Sreg | C::Mov_r32m16_Sreg | C::Mov_r64m16_Sreg => Form::StoreSreg,
        C::Movsb_m8_m8 => Form::Str(StringOp::Movs, 1),
        C::Movsw_m16_m16 => Form::Str(StringOp::Movs, 2),
        C::Movsd_m32_m32 => Form::Str(StringOp::Movs, 4),
        C::Movsq_m64_m64 => Form::Str(StringOp::Movs, 8),
        C::Stosb_m8_AL => Form::Str(StringOp::Stos, 1),
        C::Stosw_m16_AX => Form::Str(StringOp::Stos, 2),
        C::Stosd_m32_EAX => Form::Str(StringOp::Stos, 4),
        C::Stosq_m64_RAX => Form::Str(StringOp::Stos, 8),
        C::Lodsb_AL_m8 => Form::Str(StringOp::Lods, 1),
        C::Lodsw_AX_m16 => Form::Str(StringOp::Lods, 2),
        C::Lodsd_EAX_m32 => Form::Str(StringOp::Lods, 4),
        C::Lodsq_RAX_m64 => Form::Str(StringOp::Lods, 8),
        C::Cmpsb_m8_m8 => Form::Str(StringOp::Cmps, 1),
        C::Cmpsw_m16_m16 => Form::Str(StringOp::Cmps, 2),
        C::Cmpsd_m32_m32 => Form::Str(StringOp::Cmps, 4),
        C::Cmpsq_m64_m64 => Form::Str(StringOp::Cmps, 8),
        C::Scasb_AL_m8 => Form::Str(StringOp::Scas, 1),
        C::Scasw_AX_m16 => Form::Str(StringOp::Scas, 2),
        C::Scasd_EAX_m32 => Form::Str(StringOp::Scas, 4),
        C::Scasq_RAX_m64 => Form::Str(StringOp::Scas, 8),
        _ => return shift_form(code),
    })
}

/// The segment register iced names, if it is one.
pub(crate) fn seg_reg(r: Register) -> Option<SegReg> {
    Some(match r {
        Register::ES => SegReg::Es,
        Register::CS => SegReg::Cs,
        Register::SS => SegReg::Ss,
        Register::DS => SegReg::Ds,
        Register::FS => SegReg::Fs,
        Register::GS => SegReg::Gs,
        _ => return None,
    })
}

/// A string instruction's address size, from its implicit memory operands.
fn string_address_size(insn: &iced_x86::Instruction) -> Option<u8> {
    (0..insn.op_count()).find_map(|i| match insn.op_kind(i) {
        OpKind::MemorySegSI | OpKind::MemoryESDI => Some(2),
        OpKind::MemorySegESI | OpKind::MemoryESEDI => Some(4),
        OpKind::MemorySegRSI | OpKind::MemoryESRDI => Some(8),
        _ => None,
    })
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
        _ => return alu_form(code),
    })
}

/// The ALU forms with a memory operand, by iced `Code`.
fn alu_form(code: Code) -> Option<Form> {
    use AluOp as A;
    use Code as C;
    Some(match code {
        C::Add_rm8_r8 | C::Add_rm16_r16 | C::Add_rm32_r32 | C::Add_rm64_r64 => {
            Form::AluMemReg(A::Add)
        }
        C::Add_r8_rm8 | C::Add_r16_rm16 | C::Add_r32_rm32 | C::Add_r64_rm64 => {
            Form::AluRegMem(A::Add)
        }
        C::Add_rm8_imm8 | C::Add_rm8_imm8_82 => Form::AluMemImm(A::Add, 1),
        C::Add_rm16_imm16 | C::Add_rm16_imm8 => Form::AluMemImm(A::Add, 2),
        C::Add_rm32_imm32 | C::Add_rm32_imm8 => Form::AluMemImm(A::Add, 4),
        C::Add_rm64_imm32 | C::Add_rm64_imm8 => Form::AluMemImm(A::Add, 8),
        C::Or_rm8_r8 | C::Or_rm16_r16 | C::Or_rm32_r32 | C::Or_rm64_r64 => Form::AluMemReg(A::Or),
        C::Or_r8_rm8 | C::Or_r16_rm16 | C::Or_r32_rm32 | C::Or_r64_rm64 => Form::AluRegMem(A::Or),
        C::Or_rm8_imm8 | C::Or_rm8_imm8_82 => Form::AluMemImm(A::Or, 1),
        C::Or_rm16_imm16 | C::Or_rm16_imm8 => Form::AluMemImm(A::Or, 2),
        C::Or_rm32_imm32 | C::Or_rm32_imm8 => Form::AluMemImm(A::Or, 4),
        C::Or_rm64_imm32 | C::Or_rm64_imm8 => Form::AluMemImm(A::Or, 8),
        C::Adc_rm8_r8 | C::Adc_rm16_r16 | C::Adc_rm32_r32 | C::Adc_rm64_r64 => {
            Form::AluMemReg(A::Adc)
        }
        C::Adc_r8_rm8 | C::Adc_r16_rm16 | C::Adc_r32_rm32 | C::Adc_r64_rm64 => {
            Form::AluRegMem(A::Adc)
        }
        C::Adc_rm8_imm8 | C::Adc_rm8_imm8_82 => Form::AluMemImm(A::Adc, 1),
        C::Adc_rm16_imm16 | C::Adc_rm16_imm8 => Form::AluMemImm(A::Adc, 2),
        C::Adc_rm32_imm32 | C::Adc_rm32_imm8 => Form::AluMemImm(A::Adc, 4),
        C::Adc_rm64_imm32 | C::Adc_rm64_imm8 => Form::AluMemImm(A::Adc, 8),
        C::Sbb_rm8_r8 | C::Sbb_rm16_r16 | C::Sbb_rm32_r32 | C::Sbb_rm64_r64 => {
            Form::AluMemReg(A::Sbb)
        }
        C::Sbb_r8_rm8 | C::Sbb_r16_rm16 | C::Sbb_r32_rm32 | C::Sbb_r64_rm64 => {
            Form::AluRegMem(A::Sbb)
        }
        C::Sbb_rm8_imm8 | C::Sbb_rm8_imm8_82 => Form::AluMemImm(A::Sbb, 1),
        C::Sbb_rm16_imm16 | C::Sbb_rm16_imm8 => Form::AluMemImm(A::Sbb, 2),
        C::Sbb_rm32_imm32 | C::Sbb_rm32_imm8 => Form::AluMemImm(A::Sbb, 4),
        C::Sbb_rm64_imm32 | C::Sbb_rm64_imm8 => Form::AluMemImm(A::Sbb, 8),
        C::And_rm8_r8 | C::And_rm16_r16 | C::And_rm32_r32 | C::And_rm64_r64 => {
            Form::AluMemReg(A::And)
        }
        C::And_r8_rm8 | C::And_r16_rm16 | C::And_r32_rm32 | C::And_r64_rm64 => {
            Form::AluRegMem(A::And)
        }
        C::And_rm8_imm8 | C::And_rm8_imm8_82 => Form::AluMemImm(A::And, 1),
        C::And_rm16_imm16 | C::And_rm16_imm8 => Form::AluMemImm(A::And, 2),
        C::And_rm32_imm32 | C::And_rm32_imm8 => Form::AluMemImm(A::And, 4),
        C::And_rm64_imm32 | C::And_rm64_imm8 => Form::AluMemImm(A::And, 8),
        C::Sub_rm8_r8 | C::Sub_rm16_r16 | C::Sub_rm32_r32 | C::Sub_rm64_r64 => {
            Form::AluMemReg(A::Sub)
        }
        C::Sub_r8_rm8 | C::Sub_r16_rm16 | C::Sub_r32_rm32 | C::Sub_r64_rm64 => {
            Form::AluRegMem(A::Sub)
        }
        C::Sub_rm8_imm8 | C::Sub_rm8_imm8_82 => Form::AluMemImm(A::Sub, 1),
        C::Sub_rm16_imm16 | C::Sub_rm16_imm8 => Form::AluMemImm(A::Sub, 2),
        C::Sub_rm32_imm32 | C::Sub_rm32_imm8 => Form::AluMemImm(A::Sub, 4),
        C::Sub_rm64_imm32 | C::Sub_rm64_imm8 => Form::AluMemImm(A::Sub, 8),
        C::Xor_rm8_r8 | C::Xor_rm16_r16 | C::Xor_rm32_r32 | C::Xor_rm64_r64 => {
            Form::AluMemReg(A::Xor)
        }
        C::Xor_r8_rm8 | C::Xor_r16_rm16 | C::Xor_r32_rm32 | C::Xor_r64_rm64 => {
            Form::AluRegMem(A::Xor)
        }
        C::Xor_rm8_imm8 | C::Xor_rm8_imm8_82 => Form::AluMemImm(A::Xor, 1),
        C::Xor_rm16_imm16 | C::Xor_rm16_imm8 => Form::AluMemImm(A::Xor, 2),
        C::Xor_rm32_imm32 | C::Xor_rm32_imm8 => Form::AluMemImm(A::Xor, 4),
        C::Xor_rm64_imm32 | C::Xor_rm64_imm8 => Form::AluMemImm(A::Xor, 8),
        C::Cmp_rm8_r8 | C::Cmp_rm16_r16 | C::Cmp_rm32_r32 | C::Cmp_rm64_r64 => {
            Form::AluMemReg(A::Cmp)
        }
        C::Cmp_r8_rm8 | C::Cmp_r16_rm16 | C::Cmp_r32_rm32 | C::Cmp_r64_rm64 => {
            Form::AluRegMem(A::Cmp)
        }
        C::Cmp_rm8_imm8 | C::Cmp_rm8_imm8_82 => Form::AluMemImm(A::Cmp, 1),
        C::Cmp_rm16_imm16 | C::Cmp_rm16_imm8 => Form::AluMemImm(A::Cmp, 2),
        C::Cmp_rm32_imm32 | C::Cmp_rm32_imm8 => Form::AluMemImm(A::Cmp, 4),
        C::Cmp_rm64_imm32 | C::Cmp_rm64_imm8 => Form::AluMemImm(A::Cmp, 8),
        C::Test_rm8_r8 | C::Test_rm16_r16 | C::Test_rm32_r32 | C::Test_rm64_r64 => {
            Form::AluMemReg(A::Test)
        }
        C::Test_rm8_imm8 | C::Test_rm8_imm8_F6r1 => Form::AluMemImm(A::Test, 1),
        C::Test_rm16_imm16 | C::Test_rm16_imm16_F7r1 => Form::AluMemImm(A::Test, 2),
        C::Test_rm32_imm32 | C::Test_rm32_imm32_F7r1 => Form::AluMemImm(A::Test, 4),
        C::Test_rm64_imm32 | C::Test_rm64_imm32_F7r1 => Form::AluMemImm(A::Test, 8),
        C::Xchg_rm8_r8 | C::Xchg_rm16_r16 | C::Xchg_rm32_r32 | C::Xchg_rm64_r64 => Form::Xchg,
        _ => return more_form(code),
    })
}

pub(crate) fn mask(size: u8) -> u64 {
    match size {
        8 => u64::MAX,
        n => (1u64 << (8 * n as u32)) - 1,
    }
}

/// Decodes the MMIO instruction at the start of `bytes` as `bitness`-bit code (16, 32
/// or 64; see [`guest_walk::code_bitness`]).
pub fn decode(bytes: &[u8], bitness: u32) -> Result<MmioInstruction, MmioError> {
    decode_at(bytes, bitness, 0)
}

/// iced's decoding of the instruction at the start of `bytes` (`bitness`-bit code at
/// `rip`), for this module and the others that emulate MMIO instructions: a
/// truncated fetch and an invalid encoding are errors.
pub(crate) fn decode_instruction(
    bytes: &[u8],
    bitness: u32,
    rip: u64,
) -> Result<Instruction, MmioError> {
    if !matches!(bitness, 16 | 32 | 64) {
        return Err(MmioError::BadBitness(bitness));
    }
    let mut decoder = Decoder::with_ip(bitness, bytes, rip, DecoderOptions::NONE);
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
    Ok(insn)
}

/// [`decode`] of the instruction at `rip`, which near-branch targets and `CALL`'s
/// return address are taken from ([`super::mmio_stack`]).
pub fn decode_at(bytes: &[u8], bitness: u32, rip: u64) -> Result<MmioInstruction, MmioError> {
    let insn = decode_instruction(bytes, bitness, rip)?;
    let unsupported = MmioError::Unsupported {
        mnemonic: insn.mnemonic(),
        code: insn.code(),
    };
    let no_memory = MmioError::NoMemoryOperand {
        mnemonic: insn.mnemonic(),
    };
    if let Some(stack) = super::mmio_stack::decode(&insn) {
        return stack;
    }
    if let Some(load) = super::mmio_segment::decode(&insn) {
        return load;
    }
    let form = form(insn.code()).ok_or(unsupported)?;
    let (mem_op, reg_op) = match form {
        Form::StoreReg | Form::StoreImm(_) | Form::AluMemReg(_) | Form::AluMemImm(..) => (0, 1),
        Form::Xchg | Form::Xadd | Form::Cmpxchg | Form::BitReg(_) | Form::BitImm(..) => (0, 1),
        Form::Unary(..) | Form::Shift(..) | Form::Setcc(_) | Form::MulDiv(..) => (0, 1),
        Form::CmpxchgDouble(_) => (0, 0),
        Form::Load(..) | Form::AluRegMem(_) | Form::Cmov(_) | Form::Imul => (1, 0),
        Form::Push(_) | Form::Pop(_) | Form::StoreSreg => (0, 1),
        Form::Str(..) => (0, 0),
    };
    let len = insn.len();
    if let Form::Str(op, size) = form {
        let addr_size = string_address_size(&insn).ok_or(unsupported)?;
        let repeat = insn.has_rep_prefix() || insn.has_repne_prefix();
        let rep = match op {
            _ if !repeat => Rep::Once,
            StringOp::Cmps | StringOp::Scas if insn.has_repne_prefix() => Rep::WhileNotEqual,
            StringOp::Cmps | StringOp::Scas => Rep::WhileEqual,
            _ => Rep::Count,
        };
        // The source's segment (DS or an override); STOS/SCAS have no source and
        // address ES alone, which no prefix overrides.
        let seg = match op {
            StringOp::Stos | StringOp::Scas => SegReg::Es,
            _ => seg_reg(insn.memory_segment()).unwrap_or(SegReg::Ds),
        };
        return Ok(MmioInstruction {
            len,
            size,
            kind: Access::String {
                op,
                addr_size,
                seg,
                rep,
            },
        });
    }
    if insn.op_kind(mem_op) != OpKind::Memory {
        return Err(no_memory);
    }
    match form {
        Form::Push(size) => {
            return Ok(MmioInstruction {
                len,
                size,
                kind: Access::Push,
            })
        }
        Form::Pop(size) => {
            return Ok(MmioInstruction {
                len,
                size,
                kind: Access::Pop,
            })
        }
        Form::StoreSreg => {
            let seg = seg_reg(insn.op_register(reg_op)).ok_or(unsupported)?;
            return Ok(MmioInstruction {
                len,
                size: 2,
                kind: Access::StoreSegment { seg },
            });
        }
        _ => {}
    }
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
        Form::AluMemImm(op, size) => Ok(MmioInstruction {
            len,
            size,
            kind: Access::AluToMemory {
                op,
                // iced gives imm8 of 83 /n and imm32 of REX.W 81 /n already
                // sign-extended to 64 bits (SDM Vol. 2A ADD: "imm8 sign-extended").
                src: Operand::Imm(insn.immediate(1) & mask(size)),
            },
        }),
        Form::Unary(op, size) => Ok(MmioInstruction {
            len,
            size,
            kind: Access::Unary { op },
        }),
        Form::Shift(op, size, from) => Ok(MmioInstruction {
            len,
            size,
            kind: Access::Shift {
                op,
                count: match from {
                    CountFrom::One => Operand::Imm(1),
                    CountFrom::Imm => Operand::Imm(u64::from(insn.immediate8())),
                    CountFrom::Cl => Operand::Reg(Reg::Rcx, 1),
                },
            },
        }),
        Form::BitImm(op, size) => Ok(MmioInstruction {
            len,
            size,
            kind: Access::BitTest {
                op,
                offset: Operand::Imm(u64::from(insn.immediate8())),
            },
        }),
        Form::CmpxchgDouble(half) => Ok(MmioInstruction {
            len,
            size: 8,
            kind: Access::CompareExchangeDouble { half },
        }),
        Form::Setcc(cc) => Ok(MmioInstruction {
            len,
            size: 1,
            kind: Access::SetCondition { cc },
        }),
        Form::MulDiv(op, size) => Ok(MmioInstruction {
            len,
            size,
            kind: Access::MulDiv { op },
        }),
        Form::AluMemReg(_)
        | Form::AluRegMem(_)
        | Form::Xchg
        | Form::Xadd
        | Form::Cmpxchg
        | Form::BitReg(_)
        | Form::Cmov(_)
        | Form::Imul => {
            let (reg, size) = gpr(insn.op_register(reg_op)).ok_or(unsupported)?;
            let kind = match form {
                Form::AluMemReg(op) => Access::AluToMemory {
                    op,
                    src: Operand::Reg(reg, size),
                },
                Form::AluRegMem(op) => Access::AluToRegister { op, reg },
                Form::Xadd => Access::ExchangeAdd { reg },
                Form::Cmpxchg => Access::CompareExchange { reg },
                Form::BitReg(op) => Access::BitTest {
                    op,
                    offset: Operand::Reg(reg, size),
                },
                Form::Cmov(cc) => Access::CondMove { cc, reg },
                Form::Imul => Access::ImulToRegister {
                    reg,
                    // iced sign-extends imm8 (6B) and imm32 (REX.W 69) to 64 bits.
                    imm: (insn.op_count() == 3).then(|| insn.immediate(2) & mask(size)),
                },
                _ => Access::Exchange { reg },
            };
            Ok(MmioInstruction { len, size, kind })
        }
        Form::Push(_) | Form::Pop(_) | Form::StoreSreg | Form::Str(..) => Err(unsupported),
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
            | Access::AluToMemory {
                src: Operand::Reg(Reg::Rsp, _),
                ..
            }
            | Access::AluToRegister { reg: Reg::Rsp, .. }
            | Access::Exchange { reg: Reg::Rsp }
    )
}

/// The low `size` bytes of `reg` (bits 15:8 of its register for AH..BH).
pub(crate) fn reg_value(regs: &GuestRegisters, rsp: u64, reg: Reg, size: u8) -> u64 {
    let mut regs = *regs;
    let mut rsp = rsp;
    let full = *slot(&mut regs, &mut rsp, reg);
    let v = if is_high_byte(reg) { full >> 8 } else { full };
    v & mask(size)
}

/// Writes `value` into the `size`-byte register `reg` as an x86 instruction does.
pub(crate) fn set_reg(regs: &mut GuestRegisters, rsp: &mut u64, reg: Reg, size: u8, value: u64) {
    let value = value & mask(size);
    let r = slot(regs, rsp, reg);
    *r = match size {
        // AH/CH/DH/BH: only bits 15:8 change.
        1 if is_high_byte(reg) => (*r & !0xff00) | value << 8,
        // 8- and 16-bit destinations leave the other bits alone (SDM Vol. 1 3.4.1.1).
        1 | 2 => (*r & !mask(size)) | value,
        // 4: "32-bit operands generate a 32-bit result, zero-extended to a 64-bit
        // result in the destination general-purpose register" (SDM Vol. 1 3.4.1.1).
        // Outside 64-bit mode the upper half is architecturally undefined; zero is a
        // valid choice and matches hardware. 8: the whole register.
        _ => value,
    };
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
    set_reg(regs, rsp, dest, dest_size, widened);
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
        } => Ok(reg_value(regs, rsp, reg, size)),
        _ => Err(MmioError::WrongDirection),
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

/// Carries out a decoded instruction against the device at `gpa`: `device(gpa, size,
/// None)` reads, `device(gpa, size, Some(value))` writes. Updates the registers, `rsp`
/// (when the instruction names or moves it) and RFLAGS (only its status flags, and
/// only for instructions that set them). A read-modify-write reads once and then
/// writes once; `CMP`/`TEST` and the register-destination forms read once; `XCHG`
/// reads, then writes the register's value. `PUSH`/`POP` and the string instructions
/// reach their other operand through `env` ([`super::mmio_memory`]).
///
/// [`Step::Fault`] when the instruction raises an exception instead of completing
/// (#DE from `DIV`/`IDIV`): the device read has happened (as on the processor, the
/// operand is fetched before the divide faults), no register or flag changed, and RIP
/// must stay on the instruction. `Err` when an operand other than the device cannot be
/// reached (nothing changed in the registers; the device may have been accessed only
/// if a `REP` batch had already begun, which then ends as [`Step::Repeat`] instead).
#[allow(clippy::too_many_arguments)]
pub fn execute<M: GuestMemoryMut>(
    regs: &mut GuestRegisters,
    rsp: &mut u64,
    rflags: &mut u64,
    insn: &MmioInstruction,
    gpa: u64,
    device: &mut dyn FnMut(u64, u8, Option<u64>) -> u64,
    env: &mut Env<'_, M>,
) -> Result<Step, MmioError> {
    let size = insn.size;
    match insn.kind {
        Access::Push => {
            let ss = env.stack_size()?;
            let top = rsp.wrapping_sub(u64::from(size)) & mask(ss);
            // The stack slot is located before the device is touched.
            let slot = env.place(SegReg::Ss, top, size)?;
            let value = device(gpa, size, None) & mask(size);
            env.store(slot, size, value, device);
            set_width(rsp, ss, top);
            Ok(Step::Done)
        }
        Access::Pop => {
            let ss = env.stack_size()?;
            let top = *rsp & mask(ss);
            let slot = env.place(SegReg::Ss, top, size)?;
            let value = env.load(slot, size, device) & mask(size);
            device(gpa, size, Some(value));
            set_width(rsp, ss, top.wrapping_add(u64::from(size)) & mask(ss));
            Ok(Step::Done)
        }
        Access::StoreSegment { seg } => {
            let selector = env.segment(seg)?.selector;
            device(gpa, 2, Some(u64::from(selector)));
            Ok(Step::Done)
        }
        Access::String {
            op,
            addr_size,
            seg,
            rep,
        } => execute_string(regs, rflags, size, op, addr_size, seg, rep, device, env),
        Access::Stack(op) => {
            super::mmio_stack::execute(op, size, regs, rsp, rflags, gpa, device, env)
        }
        Access::SegmentLoad(load) => {
            super::mmio_segment::execute(load, size, regs, rsp, *rflags, gpa, device, env)
        }
        _ => Ok(match execute_one(regs, rsp, rflags, insn, gpa, device) {
            Ok(()) => Step::Done,
            Err(fault) => Step::Fault(fault),
        }),
    }
}

/// Writes `value` into the low `width` bytes of `r` as a register write of that width
/// does (16 bits merge; 32 and 64 replace, 32 zero-extending).
pub(crate) fn set_width(r: &mut u64, width: u8, value: u64) {
    *r = match width {
        2 => (*r & !0xffff) | (value & 0xffff),
        _ => value & mask(width),
    };
}

/// One batch of a string instruction (see [`super::mmio_memory`] for the rules).
#[allow(clippy::too_many_arguments)]
fn execute_string<M: GuestMemoryMut>(
    regs: &mut GuestRegisters,
    rflags: &mut u64,
    size: u8,
    op: StringOp,
    addr_size: u8,
    seg: SegReg,
    rep: Rep,
    device: &mut dyn FnMut(u64, u8, Option<u64>) -> u64,
    env: &mut Env<'_, M>,
) -> Result<Step, MmioError> {
    const DF: u64 = 1 << 10;
    let am = mask(addr_size);
    let mut count = if rep == Rep::Once { 1 } else { regs.rcx & am };
    if count == 0 {
        return Ok(Step::Done);
    }
    let down = *rflags & DF != 0;
    let next = |v: u64| {
        if down {
            v.wrapping_sub(u64::from(size)) & am
        } else {
            v.wrapping_add(u64::from(size)) & am
        }
    };
    let (uses_si, uses_di) = match op {
        StringOp::Movs | StringOp::Cmps => (true, true),
        StringOp::Lods => (true, false),
        StringOp::Stos | StringOp::Scas => (false, true),
    };
    let mut done = 0u64;
    loop {
        let (si, di) = (regs.rsi & am, regs.rdi & am);
        // Every operand of this element is located before any is accessed; after the
        // first element, one that cannot be (or straddles a page) ends the batch.
        let locate =
            |env: &Env<'_, M>, seg: SegReg, offset: u64| -> Result<Option<Place>, MmioError> {
                match env.place(seg, offset, size) {
                    Ok(Place::Ram { split: Some(_), .. }) if done > 0 => Ok(None),
                    Ok(p) => Ok(Some(p)),
                    Err(_) if done > 0 => Ok(None),
                    Err(e) => Err(e),
                }
            };
        let src = if uses_si {
            locate(env, seg, si)?
        } else {
            Some(Place::Device(0))
        };
        let dst = if uses_di {
            locate(env, SegReg::Es, di)?
        } else {
            Some(Place::Device(0))
        };
        let (Some(src), Some(dst)) = (src, dst) else {
            return Ok(Step::Repeat);
        };
        match op {
            StringOp::Movs => {
                let v = env.load(src, size, device);
                env.store(dst, size, v & mask(size), device);
            }
            StringOp::Stos => {
                let v = reg_value(regs, 0, Reg::Rax, size);
                env.store(dst, size, v, device);
            }
            StringOp::Lods => {
                let v = env.load(src, size, device);
                set_reg(regs, &mut 0, Reg::Rax, size, v);
            }
            StringOp::Cmps | StringOp::Scas => {
                // CMPS compares [RSI] with [RDI] (source first, as the processor
                // reads them); SCAS compares the accumulator with [RDI].
                let left = if op == StringOp::Cmps {
                    env.load(src, size, device) & mask(size)
                } else {
                    reg_value(regs, 0, Reg::Rax, size)
                };
                let right = env.load(dst, size, device) & mask(size);
                let (_, f) = alu(AluOp::Cmp, size, left, right, false);
                *rflags = (*rflags & !flags::STATUS) | f;
            }
        }
        if uses_si {
            set_width(&mut regs.rsi, addr_size, next(si));
        }
        if uses_di {
            set_width(&mut regs.rdi, addr_size, next(di));
        }
        done += 1;
        if rep == Rep::Once {
            return Ok(Step::Done);
        }
        count -= 1;
        set_width(&mut regs.rcx, addr_size, count);
        let zf = *rflags & flags::ZF != 0;
        let ended =
            count == 0 || (rep == Rep::WhileEqual && !zf) || (rep == Rep::WhileNotEqual && zf);
        if ended {
            return Ok(Step::Done);
        }
        if done >= MAX_BATCH {
            return Ok(Step::Repeat);
        }
    }
}

/// [`execute`] for the instructions whose only memory operand is the device.
fn execute_one(
    regs: &mut GuestRegisters,
    rsp: &mut u64,
    rflags: &mut u64,
    insn: &MmioInstruction,
    gpa: u64,
    device: &mut dyn FnMut(u64, u8, Option<u64>) -> u64,
) -> Result<(), Fault> {
    let size = insn.size;
    let carry = *rflags & flags::CF != 0;
    let set_flags = |rflags: &mut u64, f: u64| *rflags = (*rflags & !flags::STATUS) | f;
    match insn.kind {
        Access::Read { .. } => {
            let value = device(gpa, size, None);
            // Cannot fail: a read with the caller's RSP.
            let _ = complete_read_with_rsp(regs, rsp, insn, value);
        }
        Access::Write { src } => {
            let value = match src {
                Operand::Imm(v) => v,
                Operand::Reg(reg, size) => reg_value(regs, *rsp, reg, size),
            };
            device(gpa, size, Some(value));
        }
        Access::AluToMemory { op, src } => {
            let right = match src {
                Operand::Imm(v) => v,
                Operand::Reg(reg, size) => reg_value(regs, *rsp, reg, size),
            };
            let left = device(gpa, size, None) & mask(size);
            let (result, f) = alu(op, size, left, right, carry);
            if op.stores() {
                device(gpa, size, Some(result));
            }
            set_flags(rflags, f);
        }
        Access::AluToRegister { op, reg } => {
            let right = device(gpa, size, None) & mask(size);
            let left = reg_value(regs, *rsp, reg, size);
            let (result, f) = alu(op, size, left, right, carry);
            if op.stores() {
                set_reg(regs, rsp, reg, size, result);
            }
            set_flags(rflags, f);
        }
        Access::Exchange { reg } => {
            let old = device(gpa, size, None) & mask(size);
            device(gpa, size, Some(reg_value(regs, *rsp, reg, size)));
            set_reg(regs, rsp, reg, size, old);
        }
        Access::Unary { op } => {
            let value = device(gpa, size, None);
            let (result, f) = x86_arith::unary(op, size, value, *rflags);
            device(gpa, size, Some(result));
            *rflags = f;
        }
        Access::Shift { op, count } => {
            let count = operand(regs, *rsp, count) as u8;
            let value = device(gpa, size, None);
            let (result, f) = x86_arith::shift(op, size, value, count, *rflags);
            device(gpa, size, Some(result));
            *rflags = f;
        }
        Access::BitTest { op, offset } => {
            let bit = operand(regs, *rsp, offset);
            let value = device(gpa, size, None);
            let (result, f) = x86_arith::bit_test(op, size, value, bit, *rflags);
            if op != BitOp::Bt {
                device(gpa, size, Some(result));
            }
            *rflags = f;
        }
        Access::ExchangeAdd { reg } => {
            let old = device(gpa, size, None) & mask(size);
            let (sum, f) = alu(
                AluOp::Add,
                size,
                old,
                reg_value(regs, *rsp, reg, size),
                false,
            );
            device(gpa, size, Some(sum));
            set_reg(regs, rsp, reg, size, old);
            set_flags(rflags, f);
        }
        Access::CompareExchange { reg } => {
            let old = device(gpa, size, None) & mask(size);
            let acc = reg_value(regs, *rsp, Reg::Rax, size);
            let (_, f) = alu(AluOp::Cmp, size, acc, old, false);
            if acc == old {
                device(gpa, size, Some(reg_value(regs, *rsp, reg, size)));
            } else {
                device(gpa, size, Some(old));
                set_reg(regs, rsp, Reg::Rax, size, old);
            }
            set_flags(rflags, f);
        }
        Access::CompareExchangeDouble { half } => {
            super::cmpxchg_wide::execute(regs, rflags, half, gpa, device)?;
        }
        Access::SetCondition { cc } => {
            device(gpa, 1, Some(u64::from(x86_arith::condition(cc, *rflags))));
        }
        Access::CondMove { cc, reg } => {
            let value = device(gpa, size, None) & mask(size);
            if x86_arith::condition(cc, *rflags) {
                set_reg(regs, rsp, reg, size, value);
            } else if size == 4 {
                // Rewriting the low half zero-extends, as the processor does.
                let low = reg_value(regs, *rsp, reg, 4);
                set_reg(regs, rsp, reg, 4, low);
            }
        }
        Access::MulDiv { op } => {
            let source = device(gpa, size, None);
            // Bytes: AL and AH (AX as a whole); wider: rAX and rDX.
            let acc = if size == 1 {
                Wide {
                    low: reg_value(regs, *rsp, Reg::Rax, 1),
                    high: reg_value(regs, *rsp, Reg::Ah, 1),
                }
            } else {
                Wide {
                    low: reg_value(regs, *rsp, Reg::Rax, size),
                    high: reg_value(regs, *rsp, Reg::Rdx, size),
                }
            };
            let (out, f) = x86_arith::mul_div(op, size, acc, source, *rflags)
                .map_err(|DivideError| Fault::DivideError)?;
            if size == 1 {
                set_reg(regs, rsp, Reg::Rax, 2, out.high << 8 | out.low);
            } else {
                set_reg(regs, rsp, Reg::Rax, size, out.low);
                set_reg(regs, rsp, Reg::Rdx, size, out.high);
            }
            *rflags = f;
        }
        Access::ImulToRegister { reg, imm } => {
            let value = device(gpa, size, None) & mask(size);
            let (left, right) = match imm {
                Some(imm) => (value, imm),
                None => (reg_value(regs, *rsp, reg, size), value),
            };
            let (product, f) = x86_arith::imul_truncated(size, left, right, *rflags);
            set_reg(regs, rsp, reg, size, product);
            *rflags = f;
        }
        // With a second memory operand: carried out by `execute` itself.
        Access::Push
        | Access::Pop
        | Access::StoreSegment { .. }
        | Access::String { .. }
        | Access::Stack(_)
        | Access::SegmentLoad(_) => {}
    }
    Ok(())
}

/// The value of a source operand (an immediate, or the low bytes of a register).
fn operand(regs: &GuestRegisters, rsp: u64, op: Operand) -> u64 {
    match op {
        Operand::Imm(v) => v,
        Operand::Reg(reg, size) => reg_value(regs, rsp, reg, size),
    }
}

/// An exception an emulated instruction raises instead of completing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// #DE: `DIV`/`IDIV` by zero or with a quotient that does not fit.
    DivideError,
    /// #GP(0): `CMPXCHG16B` on an operand that is not 16-byte aligned.
    GeneralProtection,
}

/// What the guest's CPUID says it has, where an emulated instruction depends on it
/// (the processor would not check: the guest's view is the VM's policy,
/// [`super::policy::cpuid`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestFeatures {
    /// CPUID.01H:ECX.CX16\[bit 13\]: `CMPXCHG16B` (SDM Vol. 2A: #UD without it).
    pub cx16: bool,
}

/// Emulates the instruction at the vCPU's RIP, which accessed MMIO at guest-physical
/// `gpa` (`write` as the exit reports it): fetch through the guest's page tables,
/// decode in the mode [`guest_walk::code_bitness`] gives, check the direction (a
/// read-modify-write instruction matches either, since processors report its fault
/// as the read or as the write), [`execute`] it against `device`, then advance RIP.
/// On error nothing in the vCPU changed and the device was not called.
pub fn emulate<V: Vcpu, M: GuestMemoryMut>(
    vcpu: &mut V,
    mem: &mut M,
    gpa: u64,
    write: bool,
    features: GuestFeatures,
    device: &mut dyn FnMut(u64, u8, Option<u64>) -> u64,
) -> Result<(), MmioError> {
    let cr = vcpu.control_regs();
    let bitness = guest_walk::code_bitness(&cr);
    let rip = vcpu.rip();
    let mut bytes = [0u8; 15];
    let n = guest_walk::fetch_instruction(&*mem, &cr, rip, &mut bytes).map_err(MmioError::Fetch)?;
    let insn = decode_at(&bytes[..n], bitness, rip)?;
    let insn = super::mmio_stack::orient(insn, write, &bytes[..n], bitness, rip);
    if !(if write { insn.writes() } else { insn.reads() }) {
        return Err(MmioError::DirectionMismatch { exit_write: write });
    }
    if insn.kind == (Access::CompareExchangeDouble { half: 8 }) && !features.cx16 {
        // The guest was told there is no CMPXCHG16B (SDM Vol. 2A: #UD if
        // CPUID.01H:ECX.CX16 = 0); the device is not touched.
        vcpu.inject_exception(Exception::UD);
        return Ok(());
    }
    let rsp0 = vcpu.rsp();
    let rflags0 = vcpu.rflags();
    let (mut rsp, mut rflags) = (rsp0, rflags0);
    let mut regs = *vcpu.regs();
    // The segment registers only for the instructions that use them (a VMCS read
    // each on VT-x).
    let needs_segments = matches!(
        insn.kind,
        Access::Push
            | Access::Pop
            | Access::StoreSegment { .. }
            | Access::String { .. }
            | Access::Stack(_)
            | Access::SegmentLoad(_)
    );
    let segments = if needs_segments {
        super::mmio_memory::segments(vcpu)
    } else {
        [None; 6]
    };
    let mut env = Env { mem, cr, segments };
    let step = execute(
        &mut regs,
        &mut rsp,
        &mut rflags,
        &insn,
        gpa,
        device,
        &mut env,
    )?;
    let load = match step {
        Step::LoadSegment(seg, value) => Some((seg, value)),
        Step::LoadSelector(seg, selector) => {
            let (gdtr, ldtr) = vcpu.descriptor_tables().ok_or(MmioError::NoSegment(seg))?;
            let ctx = super::descriptor_load::Context {
                cr,
                gdtr,
                ldtr,
                cpl: vcpu.cpl(),
            };
            match super::descriptor_load::load(env.mem, &ctx, seg, selector)? {
                Ok(value) => Some((seg, value)),
                Err(exception) => {
                    // A fault of the load: nothing else changes, RIP stays.
                    vcpu.inject_exception(exception);
                    return Ok(());
                }
            }
        }
        _ => None,
    };
    if let Some((seg, value)) = load {
        // First, so that a backend that cannot load it leaves everything unchanged.
        if !vcpu.set_segment(seg, value) {
            return Err(MmioError::NoSegment(seg));
        }
    }
    if let Step::Fault(fault) = step {
        // A fault: nothing changes and RIP stays on the instruction (SDM Vol. 3A
        // 6.5: the saved RIP of a fault points at the faulting instruction).
        vcpu.inject_exception(match fault {
            Fault::DivideError => Exception::DE,
            Fault::GeneralProtection => Exception::GP0,
        });
        return Ok(());
    }
    *vcpu.regs() = regs;
    if rsp != rsp0 {
        vcpu.set_rsp(rsp);
    }
    if rflags != rflags0 {
        vcpu.set_rflags(rflags);
    }
    if step == Step::Repeat {
        // Elements left: the guest runs the instruction again (and may take an
        // interrupt first), as between the iterations of a real REP.
        return Ok(());
    }
    if let Step::Jump(target) = step {
        vcpu.set_rip(target);
        vcpu.set_interrupt_shadow(false);
        return Ok(());
    }
    step_over(vcpu, rip, insn.len, bitness);
    // MOV SS and POP SS block interrupts, NMIs and debug traps until the next
    // instruction completes (SDM Vol. 3A 6.8.3), so that the stack pointer load
    // after them runs before any handler uses the stack; LSS loads both at once
    // and does not.
    if let Access::SegmentLoad(SegmentLoad::Move(SegReg::Ss) | SegmentLoad::Pop(SegReg::Ss)) =
        insn.kind
    {
        vcpu.set_interrupt_shadow(true);
    }
    Ok(())
}

/// Moves RIP past the `len`-byte instruction at `rip` in `bitness`-bit code: IP and
/// EIP wrap within the code segment (SDM Vol. 3A 5.3). The instruction has
/// completed, so a shadow of STI or MOV SS that covered it ends.
pub(crate) fn step_over<V: Vcpu>(vcpu: &mut V, rip: u64, len: usize, bitness: u32) {
    let next = rip.wrapping_add(len as u64);
    vcpu.set_rip(match bitness {
        16 => next & 0xffff,
        32 => next & 0xffff_ffff,
        _ => next,
    });
    vcpu.set_interrupt_shadow(false);
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
        // fst dword [rax] (x87)
        let e = decode(&[0xd9, 0x10], 64).unwrap_err();
        assert_eq!(
            e,
            MmioError::Unsupported {
                mnemonic: Mnemonic::Fst,
                code: Code::Fst_m32fp
            }
        );
        assert_eq!(
            format!("{e}"),
            "unsupported MMIO instruction `fst` (Fst_m32fp)"
        );
        for (bytes, m) in [
            (&[0x48, 0xcf][..], Mnemonic::Iretq),    // iretq
            (&[0xf3, 0x6d], Mnemonic::Insd),         // rep insd
            (&[0x0f, 0x28, 0x00], Mnemonic::Movaps), // movaps xmm0, [rax]
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
        // add eax, 1 ; test eax, ecx ; xchg eax, ecx (register-only ALU forms)
        for (bytes, m) in [
            (&[0x83, 0xc0, 0x01][..], Mnemonic::Add),
            (&[0x85, 0xc8], Mnemonic::Test),
            (&[0x87, 0xc8], Mnemonic::Xchg),
        ] {
            assert_eq!(
                decode(bytes, 64),
                Err(MmioError::NoMemoryOperand { mnemonic: m })
            );
        }
        // LOCK on CMP and TEST is #UD (SDM Vol. 2B LOCK).
        assert_eq!(decode(&[0xf0, 0x39, 0x08], 64), Err(MmioError::Invalid));
        assert_eq!(decode(&[0xf0, 0x85, 0x08], 64), Err(MmioError::Invalid));
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

    // ---- ALU, TEST, CMP, XCHG ----

    use flags::{AF, CF, OF, PF, SF, ZF};

    fn alu_mem(len: usize, size: u8, op: AluOp, src: Operand) -> MmioInstruction {
        MmioInstruction {
            len,
            size,
            kind: Access::AluToMemory { op, src },
        }
    }

    fn alu_reg(len: usize, size: u8, op: AluOp, reg: Reg) -> MmioInstruction {
        MmioInstruction {
            len,
            size,
            kind: Access::AluToRegister { op, reg },
        }
    }

    fn xchg(len: usize, size: u8, reg: Reg) -> MmioInstruction {
        MmioInstruction {
            len,
            size,
            kind: Access::Exchange { reg },
        }
    }

    #[test]
    fn test_forms_decode() {
        use AluOp::Test;
        // test byte [rax], 1: what virtio-drivers polls the device status with.
        assert_eq!(
            d64(&[0xf6, 0x00, 0x01]),
            alu_mem(3, 1, Test, Operand::Imm(1))
        );
        // test byte [rip+0x12345678], 0x80
        assert_eq!(
            d64(&[0xf6, 0x05, 0x78, 0x56, 0x34, 0x12, 0x80]),
            alu_mem(7, 1, Test, Operand::Imm(0x80))
        );
        // test byte [0x30000000], 1 in 32-bit code (absolute disp32)
        assert_eq!(
            decode(&[0xf6, 0x05, 0x00, 0x00, 0x00, 0x30, 0x01], 32),
            Ok(alu_mem(7, 1, Test, Operand::Imm(1)))
        );
        // F6 /1 is an undocumented alias of F6 /0.
        assert_eq!(
            d64(&[0xf6, 0x08, 0x01]),
            alu_mem(3, 1, Test, Operand::Imm(1))
        );
        // test word [rax], 0x8001 ; test dword [rax], imm32 ; test qword [rax], -2
        assert_eq!(
            d64(&[0x66, 0xf7, 0x00, 0x01, 0x80]),
            alu_mem(5, 2, Test, Operand::Imm(0x8001))
        );
        assert_eq!(
            d64(&[0xf7, 0x00, 0x00, 0x00, 0x00, 0x80]),
            alu_mem(6, 4, Test, Operand::Imm(0x8000_0000))
        );
        assert_eq!(
            d64(&[0x48, 0xf7, 0x00, 0xfe, 0xff, 0xff, 0xff]),
            alu_mem(7, 8, Test, Operand::Imm(u64::MAX - 1))
        );
        // test [rax], cl / ah / dx / ecx / r9
        assert_eq!(
            d64(&[0x84, 0x08]),
            alu_mem(2, 1, Test, Operand::Reg(Reg::Rcx, 1))
        );
        assert_eq!(
            d64(&[0x84, 0x20]),
            alu_mem(2, 1, Test, Operand::Reg(Reg::Ah, 1))
        );
        assert_eq!(
            d64(&[0x66, 0x85, 0x10]),
            alu_mem(3, 2, Test, Operand::Reg(Reg::Rdx, 2))
        );
        assert_eq!(
            d64(&[0x85, 0x08]),
            alu_mem(2, 4, Test, Operand::Reg(Reg::Rcx, 4))
        );
        assert_eq!(
            d64(&[0x4c, 0x85, 0x08]),
            alu_mem(3, 8, Test, Operand::Reg(Reg::R9, 8))
        );
        // 16-bit code: test byte [bx], 1
        assert_eq!(
            decode(&[0xf6, 0x07, 0x01], 16),
            Ok(alu_mem(3, 1, Test, Operand::Imm(1)))
        );
    }

    #[test]
    fn cmp_forms_decode() {
        use AluOp::Cmp;
        // cmp [rax], cl / cx / ecx / rcx (38, 39)
        assert_eq!(
            d64(&[0x38, 0x08]),
            alu_mem(2, 1, Cmp, Operand::Reg(Reg::Rcx, 1))
        );
        assert_eq!(
            d64(&[0x66, 0x39, 0x08]),
            alu_mem(3, 2, Cmp, Operand::Reg(Reg::Rcx, 2))
        );
        assert_eq!(
            d64(&[0x39, 0x08]),
            alu_mem(2, 4, Cmp, Operand::Reg(Reg::Rcx, 4))
        );
        assert_eq!(
            d64(&[0x48, 0x39, 0x08]),
            alu_mem(3, 8, Cmp, Operand::Reg(Reg::Rcx, 8))
        );
        // cmp cl, [rax] / ecx, [rax] / r12, [rax] (3A, 3B)
        assert_eq!(d64(&[0x3a, 0x08]), alu_reg(2, 1, Cmp, Reg::Rcx));
        assert_eq!(d64(&[0x3b, 0x08]), alu_reg(2, 4, Cmp, Reg::Rcx));
        assert_eq!(d64(&[0x4c, 0x3b, 0x20]), alu_reg(3, 8, Cmp, Reg::R12));
        // cmp byte [rax], 0x80 (80 /7)
        assert_eq!(
            d64(&[0x80, 0x38, 0x80]),
            alu_mem(3, 1, Cmp, Operand::Imm(0x80))
        );
        // cmp word [rax], 0x1234 ; cmp dword [rax], imm32 (81 /7)
        assert_eq!(
            d64(&[0x66, 0x81, 0x38, 0x34, 0x12]),
            alu_mem(5, 2, Cmp, Operand::Imm(0x1234))
        );
        assert_eq!(
            d64(&[0x81, 0x38, 0x78, 0x56, 0x34, 0x12]),
            alu_mem(6, 4, Cmp, Operand::Imm(0x1234_5678))
        );
        // cmp qword [rax], imm32 sign-extended (REX.W 81 /7)
        assert_eq!(
            d64(&[0x48, 0x81, 0x38, 0x00, 0x00, 0x00, 0x80]),
            alu_mem(7, 8, Cmp, Operand::Imm(0xffff_ffff_8000_0000))
        );
        // 83 /7: imm8 sign-extended to the operand size
        assert_eq!(
            d64(&[0x66, 0x83, 0x38, 0xff]),
            alu_mem(4, 2, Cmp, Operand::Imm(0xffff))
        );
        assert_eq!(
            d64(&[0x83, 0x38, 0xfe]),
            alu_mem(3, 4, Cmp, Operand::Imm(0xffff_fffe))
        );
        assert_eq!(
            d64(&[0x48, 0x83, 0x38, 0x80]),
            alu_mem(4, 8, Cmp, Operand::Imm(0xffff_ffff_ffff_ff80))
        );
        assert_eq!(
            d64(&[0x83, 0x38, 0x7f]),
            alu_mem(3, 4, Cmp, Operand::Imm(0x7f))
        );
        // 82 /7 (an alias of 80 /7 outside 64-bit mode)
        assert_eq!(
            decode(&[0x82, 0x38, 0x05], 32),
            Ok(alu_mem(3, 1, Cmp, Operand::Imm(5)))
        );
    }

    #[test]
    fn read_modify_write_forms_decode() {
        use AluOp::*;
        // Memory destination with a register: 00/01 ADD, 08/09 OR, 20/21 AND,
        // 28/29 SUB, 30/31 XOR, 10/11 ADC, 18/19 SBB.
        for (opcode, op) in [
            (0x00u8, Add),
            (0x08, Or),
            (0x10, Adc),
            (0x18, Sbb),
            (0x20, And),
            (0x28, Sub),
            (0x30, Xor),
        ] {
            // op [rax], cl ; op [rax], ecx ; op [rax], cx ; op [rax], rcx ; op [rax], r8b
            assert_eq!(
                d64(&[opcode, 0x08]),
                alu_mem(2, 1, op, Operand::Reg(Reg::Rcx, 1))
            );
            assert_eq!(
                d64(&[opcode + 1, 0x08]),
                alu_mem(2, 4, op, Operand::Reg(Reg::Rcx, 4))
            );
            assert_eq!(
                d64(&[0x66, opcode + 1, 0x08]),
                alu_mem(3, 2, op, Operand::Reg(Reg::Rcx, 2))
            );
            assert_eq!(
                d64(&[0x48, opcode + 1, 0x08]),
                alu_mem(3, 8, op, Operand::Reg(Reg::Rcx, 8))
            );
            assert_eq!(
                d64(&[0x44, opcode, 0x00]),
                alu_mem(3, 1, op, Operand::Reg(Reg::R8, 1))
            );
            // Register destination: op cl, [rax] ; op ecx, [rax] ; op rcx, [rax]
            assert_eq!(d64(&[opcode + 2, 0x08]), alu_reg(2, 1, op, Reg::Rcx));
            assert_eq!(d64(&[opcode + 3, 0x08]), alu_reg(2, 4, op, Reg::Rcx));
            assert_eq!(d64(&[0x66, opcode + 3, 0x08]), alu_reg(3, 2, op, Reg::Rcx));
            assert_eq!(d64(&[0x48, opcode + 3, 0x08]), alu_reg(3, 8, op, Reg::Rcx));
            // Immediates: 80 /n ib, 81 /n iw/id, 83 /n ib (sign-extended).
            let n = opcode & 0x38;
            assert_eq!(d64(&[0x80, n, 0xf0]), alu_mem(3, 1, op, Operand::Imm(0xf0)));
            assert_eq!(
                d64(&[0x66, 0x81, n, 0x01, 0x80]),
                alu_mem(5, 2, op, Operand::Imm(0x8001))
            );
            assert_eq!(
                d64(&[0x81, n, 0x00, 0x00, 0x00, 0x80]),
                alu_mem(6, 4, op, Operand::Imm(0x8000_0000))
            );
            assert_eq!(
                d64(&[0x48, 0x81, n, 0x00, 0x00, 0x00, 0x80]),
                alu_mem(7, 8, op, Operand::Imm(0xffff_ffff_8000_0000))
            );
            assert_eq!(
                d64(&[0x66, 0x83, n, 0x80]),
                alu_mem(4, 2, op, Operand::Imm(0xff80))
            );
            assert_eq!(
                d64(&[0x83, n, 0xff]),
                alu_mem(3, 4, op, Operand::Imm(0xffff_ffff))
            );
            assert_eq!(
                d64(&[0x48, 0x83, n, 0xff]),
                alu_mem(4, 8, op, Operand::Imm(u64::MAX))
            );
            // LOCK is allowed on the memory-destination forms.
            assert_eq!(
                d64(&[0xf0, opcode + 1, 0x08]),
                alu_mem(3, 4, op, Operand::Reg(Reg::Rcx, 4))
            );
        }
    }

    #[test]
    fn xchg_forms_decode() {
        // xchg [rax], cl / ah / cx / ecx / rcx ; lock xchg ; xchg r15, [rip+0]
        assert_eq!(d64(&[0x86, 0x08]), xchg(2, 1, Reg::Rcx));
        assert_eq!(d64(&[0x86, 0x20]), xchg(2, 1, Reg::Ah));
        assert_eq!(d64(&[0x66, 0x87, 0x08]), xchg(3, 2, Reg::Rcx));
        assert_eq!(d64(&[0x87, 0x08]), xchg(2, 4, Reg::Rcx));
        assert_eq!(d64(&[0x48, 0x87, 0x08]), xchg(3, 8, Reg::Rcx));
        assert_eq!(d64(&[0xf0, 0x87, 0x08]), xchg(3, 4, Reg::Rcx));
        assert_eq!(d64(&[0x4c, 0x87, 0x3d, 0, 0, 0, 0]), xchg(7, 8, Reg::R15));
    }

    #[test]
    fn directions_of_each_kind() {
        let test = d64(&[0xf6, 0x00, 0x01]);
        assert!(test.reads() && !test.writes() && test.sets_flags());
        let cmp_reg = d64(&[0x3b, 0x08]);
        assert!(cmp_reg.reads() && !cmp_reg.writes() && cmp_reg.sets_flags());
        let add_mem = d64(&[0x01, 0x08]);
        assert!(add_mem.reads() && add_mem.writes() && add_mem.sets_flags());
        let or_reg = d64(&[0x0b, 0x08]);
        assert!(or_reg.reads() && !or_reg.writes() && or_reg.sets_flags());
        let x = d64(&[0x87, 0x08]);
        assert!(x.reads() && x.writes() && !x.sets_flags());
        let mov = d64(&[0x89, 0x08]);
        assert!(!mov.reads() && mov.writes() && !mov.sets_flags());
        let load = d64(&[0x8b, 0x08]);
        assert!(load.reads() && !load.writes() && !load.sets_flags());
    }

    fn flags_of(op: AluOp, size: u8, a: u64, b: u64) -> (u64, u64) {
        alu(op, size, a, b, false)
    }

    #[test]
    fn add_flags_at_8_bits() {
        use AluOp::Add;
        assert_eq!(flags_of(Add, 1, 1, 2), (3, PF));
        // Signed overflow without carry: 0x7f + 1.
        assert_eq!(flags_of(Add, 1, 0x7f, 1), (0x80, OF | SF | AF));
        // Carry without signed overflow: 0xff + 1 = 0.
        assert_eq!(flags_of(Add, 1, 0xff, 1), (0, CF | ZF | PF | AF));
        // Both: 0x80 + 0x80 = 0.
        assert_eq!(flags_of(Add, 1, 0x80, 0x80), (0, CF | OF | ZF | PF));
        // -1 + -1 = -2, carry, no overflow.
        assert_eq!(flags_of(Add, 1, 0xff, 0xff), (0xfe, CF | SF | AF));
        // Operand bits above the size are ignored.
        assert_eq!(flags_of(Add, 1, 0x1ff, 0x101), (0, CF | ZF | PF | AF));
    }

    #[test]
    fn add_flags_at_64_bits() {
        use AluOp::Add;
        let max = u64::MAX;
        let smax = i64::MAX as u64;
        let smin = i64::MIN as u64;
        assert_eq!(flags_of(Add, 8, max, 1), (0, CF | ZF | PF | AF));
        assert_eq!(flags_of(Add, 8, smax, 1), (smin, OF | SF | PF | AF));
        assert_eq!(flags_of(Add, 8, smin, smin), (0, CF | OF | ZF | PF));
        assert_eq!(flags_of(Add, 8, max, max), (max - 1, CF | SF | AF));
        // 1 << 32 + 1 << 32: no carry out of bit 31 counts at 64 bits.
        assert_eq!(flags_of(Add, 8, 1 << 32, 1 << 32), (1 << 33, PF));
        // The same at 32 bits carries out and is zero.
        assert_eq!(
            flags_of(Add, 4, 0x8000_0000, 0x8000_0000),
            (0, CF | OF | ZF | PF)
        );
        // 16 bits: 0x7fff + 1
        assert_eq!(flags_of(Add, 2, 0x7fff, 1), (0x8000, OF | SF | PF | AF));
    }

    #[test]
    fn sub_and_cmp_flags_at_8_bits() {
        for op in [AluOp::Sub, AluOp::Cmp] {
            assert_eq!(flags_of(op, 1, 5, 5), (0, ZF | PF));
            // Borrow: 0 - 1 = 0xff.
            assert_eq!(flags_of(op, 1, 0, 1), (0xff, CF | SF | PF | AF));
            // Signed overflow: -128 - 1 = 127.
            assert_eq!(flags_of(op, 1, 0x80, 1), (0x7f, OF | AF));
            // Signed overflow the other way: 127 - (-1) = -128, with a borrow (none
            // out of the low nibble: 0xf - 0xf).
            assert_eq!(flags_of(op, 1, 0x7f, 0xff), (0x80, CF | OF | SF));
            // 0x10 - 1: a borrow from bit 4 only.
            assert_eq!(flags_of(op, 1, 0x10, 1), (0x0f, AF | PF));
            // cmp al, 0xff with al = 0xff: equal.
            assert_eq!(flags_of(op, 1, 0xff, 0xff), (0, ZF | PF));
        }
    }

    #[test]
    fn sub_and_cmp_flags_at_64_bits() {
        let smin = i64::MIN as u64;
        let smax = i64::MAX as u64;
        for op in [AluOp::Sub, AluOp::Cmp] {
            assert_eq!(flags_of(op, 8, 0, 1), (u64::MAX, CF | SF | PF | AF));
            assert_eq!(flags_of(op, 8, smin, 1), (smax, OF | PF | AF));
            assert_eq!(flags_of(op, 8, smax, u64::MAX), (smin, CF | OF | SF | PF));
            assert_eq!(flags_of(op, 8, u64::MAX, u64::MAX), (0, ZF | PF));
            assert_eq!(flags_of(op, 8, 1 << 40, 1), ((1 << 40) - 1, PF | AF));
            // At 32 bits only the low halves count.
            assert_eq!(
                flags_of(op, 4, 1 << 40, 1),
                (0xffff_ffff, CF | SF | PF | AF)
            );
        }
    }

    #[test]
    fn adc_and_sbb_use_the_carry() {
        use AluOp::{Adc, Sbb};
        assert_eq!(alu(Adc, 1, 0xfe, 1, false), (0xff, SF | PF));
        assert_eq!(alu(Adc, 1, 0xfe, 1, true), (0, CF | ZF | PF | AF));
        assert_eq!(
            alu(Adc, 8, u64::MAX, u64::MAX, true),
            (u64::MAX, CF | SF | PF | AF)
        );
        assert_eq!(
            alu(Adc, 4, 0x7fff_ffff, 0, true),
            (0x8000_0000, OF | SF | PF | AF)
        );
        assert_eq!(alu(Sbb, 1, 1, 0, true), (0, ZF | PF));
        assert_eq!(alu(Sbb, 1, 0, 0, true), (0xff, CF | SF | PF | AF));
        // 0 - 0xff - 1: the borrow is still one (the true result is -256).
        assert_eq!(alu(Sbb, 1, 0, 0xff, true), (0, CF | ZF | PF | AF));
        assert_eq!(alu(Sbb, 8, 0, u64::MAX, true), (0, CF | ZF | PF | AF));
        assert_eq!(
            alu(Sbb, 8, i64::MIN as u64, 0, true),
            (i64::MAX as u64, OF | PF | AF)
        );
        // ADD and SUB ignore an incoming carry.
        assert_eq!(alu(AluOp::Add, 1, 1, 1, true), (2, 0));
        assert_eq!(alu(AluOp::Sub, 1, 1, 1, true), (0, ZF | PF));
    }

    #[test]
    fn logical_flags_clear_cf_of_and_af() {
        use AluOp::*;
        assert_eq!(flags_of(And, 1, 0xff, 0x01), (1, 0));
        assert_eq!(flags_of(Test, 1, 0xff, 0x01), (1, 0));
        assert_eq!(flags_of(Test, 1, 0xfe, 0x01), (0, ZF | PF));
        assert_eq!(flags_of(Test, 1, 0xff, 0x80), (0x80, SF));
        assert_eq!(flags_of(Or, 2, 0x8000, 0x0003), (0x8003, SF | PF));
        assert_eq!(flags_of(Xor, 4, 0xffff_ffff, 0xffff_ffff), (0, ZF | PF));
        assert_eq!(flags_of(Xor, 8, 0, 1 << 63), (1 << 63, SF | PF));
        assert_eq!(flags_of(And, 8, u64::MAX, 0x0700), (0x0700, PF));
        // Parity looks at the low byte only: 0x100 has an even (zero) count there.
        assert_eq!(flags_of(Or, 2, 0x100, 0), (0x100, PF));
        assert_eq!(flags_of(Or, 2, 0x101, 0), (0x101, 0));
    }

    // ---- end to end ----

    use crate::vmm::test_ram::Ram;

    #[derive(Default)]
    struct TestVcpu {
        regs: GuestRegisters,
        rip: u64,
        rsp: u64,
        rflags: u64,
        cr: ControlRegs,
        injected: Option<Exception>,
        segments: [Option<vcpu::state::Segment>; 6],
        tables: Option<(vcpu::state::TableRegister, vcpu::state::Segment)>,
        /// The last `set_interrupt_shadow` (`None`: never called).
        shadow: Option<bool>,
    }

    impl Vcpu for TestVcpu {
        fn run(&mut self, _: u64) -> Exit {
            unimplemented!("MMIO emulation never runs the guest")
        }
        fn map_page(
            &mut self,
            _: &mut dyn vcpu::HostMemory,
            _: u64,
            _: u64,
            _: bool,
        ) -> Result<(), vcpu::BackendError> {
            unimplemented!("MMIO emulation never maps pages")
        }
        fn unmap_page(
            &mut self,
            _: &mut dyn vcpu::HostMemory,
            _: u64,
        ) -> Result<(), vcpu::BackendError> {
            unimplemented!("MMIO emulation never unmaps pages")
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
            assert_eq!(self.injected, None, "a second exception");
            self.injected = Some(e);
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
            self.rflags
        }
        fn set_rflags(&mut self, rflags: u64) {
            self.rflags = vcpu::architectural_rflags(rflags);
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
        fn segment(&self, seg: SegReg) -> Option<vcpu::state::Segment> {
            self.segments[seg as usize]
        }
        fn descriptor_tables(&self) -> Option<(vcpu::state::TableRegister, vcpu::state::Segment)> {
            self.tables
        }
        fn set_interrupt_shadow(&mut self, mov_ss: bool) {
            self.shadow = Some(mov_ss);
        }
        fn set_segment(&mut self, seg: SegReg, value: vcpu::state::Segment) -> bool {
            // A backend that cannot load FS and GS (the trait allows it; neither
            // real backend is one).
            if matches!(seg, SegReg::Fs | SegReg::Gs) {
                return false;
            }
            self.segments[seg as usize] = Some(value);
            true
        }
        fn save_state(&mut self) -> vcpu::state::CpuState {
            unimplemented!("MMIO emulation never saves vCPU state")
        }
        fn load_state(&mut self, _: &vcpu::state::CpuState) -> Result<(), vcpu::state::StateError> {
            unimplemented!("MMIO emulation never loads vCPU state")
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

    const FEATURES: GuestFeatures = GuestFeatures { cx16: true };

    fn run(
        vcpu: &mut TestVcpu,
        ram: &Ram,
        gpa: u64,
        write: bool,
        reply: u64,
    ) -> (Result<(), MmioError>, Calls) {
        run_mut(vcpu, &mut ram.clone(), gpa, write, reply)
    }

    /// [`run`] where the test looks at guest RAM afterwards.
    fn run_mut(
        vcpu: &mut TestVcpu,
        ram: &mut Ram,
        gpa: u64,
        write: bool,
        reply: u64,
    ) -> (Result<(), MmioError>, Calls) {
        let mut calls = Vec::new();
        let r = emulate(vcpu, ram, gpa, write, FEATURES, &mut |gpa, size, value| {
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
        // fst dword [rax]
        let (mut vcpu, ram) = long_guest(0x8000, &[0xd9, 0x10]);
        let (r, calls) = run(&mut vcpu, &ram, LAPIC, true, 0);
        assert!(matches!(
            r,
            Err(MmioError::Unsupported {
                mnemonic: Mnemonic::Fst,
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
    fn real_mode_segment_loads_reach_the_vcpu() {
        let mut ram = Ram(vec![0; 0x10_0000]);
        // 07C0:0010: mov es, [bx]; then lfs si, [bx].
        ram.put(0x7c10, &[0x8e, 0x07]);
        let big = vcpu::state::Segment {
            limit: u32::MAX,
            ..Default::default()
        };
        let mut vcpu = TestVcpu {
            rip: 0x10,
            cr: ControlRegs {
                cs_base: 0x7c00,
                ..Default::default()
            },
            segments: [Some(big); 6],
            ..Default::default()
        };
        let (r, calls) = run(&mut vcpu, &ram, LAPIC + 0x20, false, 0xb800);
        assert_eq!((r, calls), (Ok(()), vec![(LAPIC + 0x20, 2, None)]));
        let es = vcpu.segments[SegReg::Es as usize].unwrap();
        assert_eq!(
            (es.selector, es.base, es.limit),
            (0xb800, 0xb8000, u32::MAX)
        );
        assert_eq!(vcpu.rip, 0x12);
        // Completed: any STI/MOV SS shadow that covered it ends.
        assert_eq!(vcpu.shadow, Some(false));
        // A backend that cannot load the register: an error, nothing changed.
        ram.put(0x7c12, &[0x0f, 0xb4, 0x37]);
        vcpu.regs.rsi = 0x5555;
        let (r, _) = run(&mut vcpu, &ram, LAPIC + 0x20, false, 0x1234);
        assert_eq!(r, Err(MmioError::NoSegment(SegReg::Fs)));
        assert_eq!((vcpu.regs.rsi, vcpu.rip), (0x5555, 0x12));
    }

    #[test]
    fn mov_ss_and_pop_ss_block_interrupts_for_one_instruction() {
        let big = vcpu::state::Segment {
            limit: u32::MAX,
            ..Default::default()
        };
        // Real mode at 07C0:0010: mov ss, [bx] (8E 17), then lss sp, [bx] (0F B2 27).
        let mut ram = Ram(vec![0; 0x10_0000]);
        ram.put(0x7c10, &[0x8e, 0x17, 0x0f, 0xb2, 0x27]);
        let mut vcpu = TestVcpu {
            rip: 0x10,
            cr: ControlRegs {
                cs_base: 0x7c00,
                ..Default::default()
            },
            segments: [Some(big); 6],
            ..Default::default()
        };
        let (r, _) = run(&mut vcpu, &ram, LAPIC + 0x20, false, 0x9000);
        assert_eq!(r, Ok(()));
        assert_eq!(vcpu.segments[SegReg::Ss as usize].unwrap().base, 0x90000);
        assert_eq!((vcpu.rip, vcpu.shadow), (0x12, Some(true)));
        // LSS loads SS and SP together: no shadow (SDM Vol. 3A 6.8.3 names only MOV
        // SS and POP SS).
        let (r, _) = run(&mut vcpu, &ram, LAPIC + 0x20, false, 0x8000);
        assert_eq!(r, Ok(()));
        assert_eq!((vcpu.rip, vcpu.shadow), (0x15, Some(false)));
    }

    #[test]
    fn protected_mode_segment_loads_read_the_descriptor() {
        let mut ram = Ram(vec![0; 0x20_0000]);
        // mov ds, [ebx] at 0x10_0000; a GDT at 0x1000: entry 2 flat data (not yet
        // accessed), entry 3 the same but not present.
        ram.put(0x10_0000, &[0x8e, 0x1b]);
        ram.put(0x1010, &0x00cf_9200_0000_ffffu64.to_le_bytes());
        ram.put(0x1018, &0x00cf_1200_0000_ffffu64.to_le_bytes());
        let mut vcpu = TestVcpu {
            rip: 0x10_0000,
            cr: ControlRegs {
                cr0: 0x11,
                ..Default::default()
            },
            segments: [Some(vcpu::state::Segment::default()); 6],
            tables: Some((
                vcpu::state::TableRegister {
                    base: 0x1000,
                    limit: 0x1f,
                },
                vcpu::state::Segment::default(),
            )),
            ..Default::default()
        };
        let mut ram2 = ram.clone();
        let (r, calls) = run_mut(&mut vcpu, &mut ram2, LAPIC + 0x20, false, 0x10);
        assert_eq!((r, calls.len()), (Ok(()), 1));
        let ds = vcpu.segments[SegReg::Ds as usize].unwrap();
        assert_eq!((ds.selector, ds.base, ds.limit), (0x10, 0, u32::MAX));
        assert_eq!((vcpu.rip, ram2.0[0x1015]), (0x10_0002, 0x93));
        // Not present: #NP(0x18), RIP and DS unchanged.
        vcpu.rip = 0x10_0000;
        let (r, _) = run(&mut vcpu, &ram, LAPIC + 0x20, false, 0x18);
        assert_eq!(r, Ok(()));
        assert_eq!(
            vcpu.injected,
            Some(Exception {
                vector: 11,
                error_code: Some(0x18)
            })
        );
        assert_eq!(vcpu.rip, 0x10_0000);
        assert_eq!(vcpu.segments[SegReg::Ds as usize].unwrap().selector, 0x10);
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
    /// A device that returns `reply` for reads and records every access.
    fn run_alu(
        code: &[u8],
        exit_write: bool,
        reply: u64,
    ) -> (TestVcpu, Result<(), MmioError>, Calls) {
        let (mut vcpu, ram) = long_guest(0x8000, code);
        vcpu.regs.rcx = 0x1111_2222_3333_4444;
        vcpu.rflags = 0x2 | 1 << 9 | 1 << 10 | 1 << 8 | flags::STATUS; // IF DF TF
        let (r, calls) = run(&mut vcpu, &ram, LAPIC + 0x40, exit_write, reply);
        (vcpu, r, calls)
    }

    const KEEP: u64 = 0x2 | 1 << 9 | 1 << 10 | 1 << 8;

    #[test]
    fn test_byte_polls_the_status_with_one_read() {
        // test byte [rax], 1 on a status of 0xfe: ZF; of 0x0f: not.
        let (vcpu, r, calls) = run_alu(&[0xf6, 0x00, 0x01], false, 0xfe);
        assert_eq!(r, Ok(()));
        assert_eq!(calls, [(LAPIC + 0x40, 1, None)]);
        assert_eq!(vcpu.rflags, KEEP | ZF | PF);
        assert_eq!(vcpu.rip, 0x8003);
        let (vcpu, _, _) = run_alu(&[0xf6, 0x00, 0x01], false, 0x0f);
        assert_eq!(vcpu.rflags, KEEP);
        // test byte [rip+0], 0x80 on 0x80: SF
        let (vcpu, r, calls) = run_alu(&[0xf6, 0x05, 0, 0, 0, 0, 0x80], false, 0x80);
        assert_eq!(r, Ok(()));
        assert_eq!(calls, [(LAPIC + 0x40, 1, None)]);
        assert_eq!(vcpu.rflags, KEEP | SF);
        assert_eq!(vcpu.rip, 0x8007);
        // test [rax], ecx: only the low 32 bits of RCX; registers unchanged.
        let (vcpu, _, calls) = run_alu(&[0x85, 0x08], false, 0xffff_ffff_0000_0000);
        assert_eq!(calls, [(LAPIC + 0x40, 4, None)]);
        assert_eq!(vcpu.rflags, KEEP | ZF | PF);
        assert_eq!(vcpu.regs.rcx, 0x1111_2222_3333_4444);
    }

    #[test]
    fn cmp_sets_flags_and_writes_nothing() {
        // cmp dword [rax], 0x10 against 0x0f: borrow.
        let (vcpu, r, calls) = run_alu(&[0x83, 0x38, 0x10], false, 0x0f);
        assert_eq!(r, Ok(()));
        assert_eq!(calls, [(LAPIC + 0x40, 4, None)]);
        assert_eq!(vcpu.rflags, KEEP | CF | SF | PF);
        // cmp rcx, [rax]: RCX is the left operand.
        let (vcpu, _, calls) = run_alu(&[0x48, 0x3b, 0x08], false, 0x1111_2222_3333_4444);
        assert_eq!(calls, [(LAPIC + 0x40, 8, None)]);
        assert_eq!(vcpu.rflags, KEEP | ZF | PF);
        assert_eq!(vcpu.regs.rcx, 0x1111_2222_3333_4444);
        // A write exit for a CMP means the code changed under us.
        let (vcpu, r, calls) = run_alu(&[0x83, 0x38, 0x10], true, 0);
        assert_eq!(r, Err(MmioError::DirectionMismatch { exit_write: true }));
        assert!(calls.is_empty());
        assert_eq!((vcpu.rip, vcpu.rflags), (0x8000, KEEP | flags::STATUS));
    }

    #[test]
    fn read_modify_write_reads_once_then_writes_once() {
        // or dword [rax], ecx with the exit reported as the write and as the read.
        for exit_write in [true, false] {
            let (vcpu, r, calls) = run_alu(&[0x09, 0x08], exit_write, 0x8000_0000);
            assert_eq!(r, Ok(()));
            assert_eq!(
                calls,
                [
                    (LAPIC + 0x40, 4, None),
                    (LAPIC + 0x40, 4, Some(0xb333_4444))
                ]
            );
            // 0xb333_4444: the low byte 0x44 has an even count of ones.
            assert_eq!(vcpu.rflags, KEEP | SF | PF);
            assert_eq!(vcpu.rip, 0x8002);
        }
        // and byte [rax], 0xfe ; xor word [rax], cx ; add qword [rax], -1 ; sub dword [rax], 1
        for (code, size, reply, written, f) in [
            (&[0x80, 0x20, 0xfe][..], 1, 0x01, 0x00, ZF | PF),
            (&[0x66, 0x31, 0x08], 2, 0x4444, 0, ZF | PF),
            (&[0x48, 0x83, 0x00, 0xff], 8, 0, u64::MAX, SF | PF),
            (&[0x83, 0x28, 0x01], 4, 0, 0xffff_ffff, CF | SF | PF | AF),
            (
                &[0x48, 0x01, 0x08],
                8,
                0xeeee_dddd_cccc_bbbc,
                0,
                CF | ZF | PF | AF,
            ),
        ] {
            let (vcpu, r, calls) = run_alu(code, true, reply);
            assert_eq!(r, Ok(()), "{code:x?}");
            assert_eq!(
                calls,
                [
                    (LAPIC + 0x40, size, None),
                    (LAPIC + 0x40, size, Some(written))
                ],
                "{code:x?}"
            );
            assert_eq!(vcpu.rflags, KEEP | f, "{code:x?}");
            assert_eq!(vcpu.regs.rcx, 0x1111_2222_3333_4444);
        }
    }

    #[test]
    fn register_destinations_follow_x86_width_rules() {
        // add ecx, [rax]: 32-bit result zero-extended.
        let (vcpu, r, calls) = run_alu(&[0x03, 0x08], false, 0xcccc_bbbc);
        assert_eq!(r, Ok(()));
        assert_eq!(calls, [(LAPIC + 0x40, 4, None)]);
        assert_eq!(vcpu.regs.rcx, 0);
        assert_eq!(vcpu.rflags, KEEP | CF | ZF | PF | AF);
        // sub cx, [rax]: low word only.
        let (vcpu, _, _) = run_alu(&[0x66, 0x2b, 0x08], false, 0x4445);
        assert_eq!(vcpu.regs.rcx, 0x1111_2222_3333_ffff);
        assert_eq!(vcpu.rflags, KEEP | CF | SF | PF | AF);
        // and ch, [rax]: bits 15:8 only.
        let (vcpu, _, _) = run_alu(&[0x22, 0x28], false, 0x0f);
        assert_eq!(vcpu.regs.rcx, 0x1111_2222_3333_0444);
        assert_eq!(vcpu.rflags, KEEP);
        // or rcx, [rax]
        let (vcpu, _, _) = run_alu(&[0x48, 0x0b, 0x08], false, 1 << 63);
        assert_eq!(vcpu.regs.rcx, 0x9111_2222_3333_4444);
        assert_eq!(vcpu.rflags, KEEP | SF | PF);
        // xor cl, [rax]
        let (vcpu, _, _) = run_alu(&[0x32, 0x08], false, 0x44);
        assert_eq!(vcpu.regs.rcx, 0x1111_2222_3333_4400);
        assert_eq!(vcpu.rflags, KEEP | ZF | PF);
        // adc ecx, [rax] with CF set in (run_alu starts with every status flag set)
        let (vcpu, _, _) = run_alu(&[0x13, 0x08], false, 0);
        assert_eq!(vcpu.regs.rcx, 0x3333_4445);
        assert_eq!(vcpu.rflags, KEEP);
        // sbb byte [rax], cl with CF in: 0x45 - 0x44 - 1 = 0
        let (vcpu, _, calls) = run_alu(&[0x18, 0x08], true, 0x45);
        assert_eq!(calls[1], (LAPIC + 0x40, 1, Some(0)));
        assert_eq!(vcpu.rflags, KEEP | ZF | PF);
    }

    #[test]
    fn xchg_reads_then_writes_and_keeps_flags() {
        for exit_write in [true, false] {
            let (vcpu, r, calls) = run_alu(&[0x87, 0x08], exit_write, 0xdead_beef_cafe_f00d);
            assert_eq!(r, Ok(()));
            assert_eq!(
                calls,
                [
                    (LAPIC + 0x40, 4, None),
                    (LAPIC + 0x40, 4, Some(0x3333_4444))
                ]
            );
            assert_eq!(vcpu.regs.rcx, 0xcafe_f00d);
            assert_eq!(vcpu.rflags, KEEP | flags::STATUS);
        }
        // xchg [rax], ch
        let (vcpu, _, calls) = run_alu(&[0x86, 0x28], true, 0xab);
        assert_eq!(calls[1], (LAPIC + 0x40, 1, Some(0x44)));
        assert_eq!(vcpu.regs.rcx, 0x1111_2222_3333_ab44);
        // xchg [rax], rcx
        let (vcpu, _, calls) = run_alu(&[0x48, 0x87, 0x08], true, 7);
        assert_eq!(calls[1], (LAPIC + 0x40, 8, Some(0x1111_2222_3333_4444)));
        assert_eq!(vcpu.regs.rcx, 7);
    }

    #[test]
    fn rsp_operands_of_alu_forms_go_through_the_vmcb() {
        // sub esp, [rax]
        let (mut vcpu, ram) = long_guest(0x8000, &[0x2b, 0x20]);
        vcpu.rsp = 0xffff_ffff_0000_1000;
        let (r, _) = run(&mut vcpu, &ram, LAPIC, false, 0x10);
        assert_eq!(r, Ok(()));
        assert_eq!(vcpu.rsp, 0xff0);
        // add [rax], rsp
        let (mut vcpu, ram) = long_guest(0x8000, &[0x48, 0x01, 0x20]);
        vcpu.rsp = 0x7000;
        let (r, calls) = run(&mut vcpu, &ram, LAPIC, true, 0x10);
        assert_eq!(r, Ok(()));
        assert_eq!(calls[1], (LAPIC, 8, Some(0x7010)));
        assert_eq!(vcpu.rsp, 0x7000);
    }

    #[test]
    fn flags_keep_the_fixed_bit_and_drop_reserved_ones() {
        // test byte [rax], 1 with RFLAGS 0 (bit 1 clear, as a broken backend might
        // report it): the stored RFLAGS has bit 1.
        let (mut vcpu, ram) = long_guest(0x8000, &[0xf6, 0x00, 0x01]);
        vcpu.rflags = 1 << 3 | 1 << 5;
        let (r, _) = run(&mut vcpu, &ram, LAPIC, false, 0);
        assert_eq!(r, Ok(()));
        assert_eq!(vcpu.rflags, 2 | ZF | PF);
    }

    // ---- INC/DEC/NEG/NOT, shifts, bit tests, XADD/CMPXCHG, SETcc/CMOVcc, MUL/DIV ----

    fn insn(len: usize, size: u8, kind: Access) -> MmioInstruction {
        MmioInstruction { len, size, kind }
    }

    #[test]
    fn more_read_modify_write_forms_decode() {
        use Access::*;
        let imm = Operand::Imm;
        let cl = Operand::Reg(Reg::Rcx, 1);
        for (bytes, want) in [
            (&[0xff, 0x00][..], insn(2, 4, Unary { op: UnaryOp::Inc })),
            (&[0xf0, 0xff, 0x00], insn(3, 4, Unary { op: UnaryOp::Inc })),
            (&[0xfe, 0x08], insn(2, 1, Unary { op: UnaryOp::Dec })),
            (&[0x48, 0xf7, 0x18], insn(3, 8, Unary { op: UnaryOp::Neg })),
            (&[0x66, 0xf7, 0x10], insn(3, 2, Unary { op: UnaryOp::Not })),
            (
                &[0xd1, 0x20],
                insn(
                    2,
                    4,
                    Shift {
                        op: ShiftOp::Shl,
                        count: imm(1),
                    },
                ),
            ),
            (
                &[0xd2, 0x38],
                insn(
                    2,
                    1,
                    Shift {
                        op: ShiftOp::Sar,
                        count: cl,
                    },
                ),
            ),
            (
                &[0x48, 0xc1, 0x00, 0x05],
                insn(
                    4,
                    8,
                    Shift {
                        op: ShiftOp::Rol,
                        count: imm(5),
                    },
                ),
            ),
            // C1 /6 is SAL, the same operation as SHL.
            (
                &[0x66, 0xc1, 0x30, 0x03],
                insn(
                    4,
                    2,
                    Shift {
                        op: ShiftOp::Shl,
                        count: imm(3),
                    },
                ),
            ),
            (
                &[0xd1, 0x18],
                insn(
                    2,
                    4,
                    Shift {
                        op: ShiftOp::Rcr,
                        count: imm(1),
                    },
                ),
            ),
            (
                &[0xd0, 0x10],
                insn(
                    2,
                    1,
                    Shift {
                        op: ShiftOp::Rcl,
                        count: imm(1),
                    },
                ),
            ),
            (
                &[0x66, 0xd3, 0x08],
                insn(
                    3,
                    2,
                    Shift {
                        op: ShiftOp::Ror,
                        count: cl,
                    },
                ),
            ),
            (
                &[0x48, 0xd3, 0x28],
                insn(
                    3,
                    8,
                    Shift {
                        op: ShiftOp::Shr,
                        count: cl,
                    },
                ),
            ),
            (
                &[0x0f, 0xba, 0x20, 0x03],
                insn(
                    4,
                    4,
                    BitTest {
                        op: BitOp::Bt,
                        offset: imm(3),
                    },
                ),
            ),
            (
                &[0x0f, 0xab, 0x08],
                insn(
                    3,
                    4,
                    BitTest {
                        op: BitOp::Bts,
                        offset: Operand::Reg(Reg::Rcx, 4),
                    },
                ),
            ),
            (
                &[0xf0, 0x48, 0x0f, 0xb3, 0x10],
                insn(
                    5,
                    8,
                    BitTest {
                        op: BitOp::Btr,
                        offset: Operand::Reg(Reg::Rdx, 8),
                    },
                ),
            ),
            (
                &[0x66, 0x0f, 0xba, 0x38, 0x0f],
                insn(
                    5,
                    2,
                    BitTest {
                        op: BitOp::Btc,
                        offset: imm(15),
                    },
                ),
            ),
            (
                &[0x0f, 0xc1, 0x08],
                insn(3, 4, ExchangeAdd { reg: Reg::Rcx }),
            ),
            (
                &[0xf0, 0x0f, 0xb0, 0x08],
                insn(4, 1, CompareExchange { reg: Reg::Rcx }),
            ),
            (
                &[0x48, 0x0f, 0xb1, 0x18],
                insn(4, 8, CompareExchange { reg: Reg::Rbx }),
            ),
            (&[0x0f, 0x94, 0x00], insn(3, 1, SetCondition { cc: 4 })),
            (&[0x0f, 0x9f, 0x00], insn(3, 1, SetCondition { cc: 15 })),
            (
                &[0x0f, 0x45, 0x08],
                insn(
                    3,
                    4,
                    CondMove {
                        cc: 5,
                        reg: Reg::Rcx,
                    },
                ),
            ),
            (
                &[0x4c, 0x0f, 0x4f, 0x08],
                insn(
                    4,
                    8,
                    CondMove {
                        cc: 15,
                        reg: Reg::R9,
                    },
                ),
            ),
            (
                &[0x66, 0x0f, 0x40, 0x08],
                insn(
                    4,
                    2,
                    CondMove {
                        cc: 0,
                        reg: Reg::Rcx,
                    },
                ),
            ),
            (&[0xf7, 0x20], insn(2, 4, MulDiv { op: MulDivOp::Mul })),
            (&[0xf6, 0x28], insn(2, 1, MulDiv { op: MulDivOp::Imul })),
            (
                &[0x48, 0xf7, 0x30],
                insn(3, 8, MulDiv { op: MulDivOp::Div }),
            ),
            (&[0xf6, 0x38], insn(2, 1, MulDiv { op: MulDivOp::Idiv })),
            (
                &[0x0f, 0xaf, 0x08],
                insn(
                    3,
                    4,
                    ImulToRegister {
                        reg: Reg::Rcx,
                        imm: None,
                    },
                ),
            ),
            (
                &[0x6b, 0x08, 0xfe],
                insn(
                    3,
                    4,
                    ImulToRegister {
                        reg: Reg::Rcx,
                        imm: Some(0xffff_fffe),
                    },
                ),
            ),
            (
                &[0x66, 0x69, 0x08, 0x34, 0x12],
                insn(
                    5,
                    2,
                    ImulToRegister {
                        reg: Reg::Rcx,
                        imm: Some(0x1234),
                    },
                ),
            ),
            (
                &[0x48, 0x69, 0x08, 0x00, 0x00, 0x00, 0x80],
                insn(
                    7,
                    8,
                    ImulToRegister {
                        reg: Reg::Rcx,
                        imm: Some(0xffff_ffff_8000_0000),
                    },
                ),
            ),
        ] {
            assert_eq!(decode(bytes, 64), Ok(want), "{bytes:x?}");
        }
        // 16- and 32-bit code: inc word [bx] ; sete [0x30000000]
        assert_eq!(
            decode(&[0xff, 0x07], 16),
            Ok(insn(2, 2, Unary { op: UnaryOp::Inc }))
        );
        assert_eq!(
            decode(&[0x0f, 0x94, 0x05, 0, 0, 0, 0x30], 32),
            Ok(insn(7, 1, SetCondition { cc: 4 }))
        );
        // Register-only forms cannot have touched MMIO; LOCK BT is #UD.
        assert_eq!(
            decode(&[0xff, 0xc0], 64),
            Err(MmioError::NoMemoryOperand {
                mnemonic: Mnemonic::Inc
            })
        );
        assert_eq!(
            decode(&[0xf0, 0x0f, 0xa3, 0x08], 64),
            Err(MmioError::Invalid)
        );
    }

    /// Runs `code` at 0x8000 with RAX..RDX from `regs` (RCX as run_alu sets it
    /// otherwise), every status flag and DF/IF/TF set unless `rflags` says otherwise.
    fn run_with(
        code: &[u8],
        exit_write: bool,
        reply: u64,
        setup: impl FnOnce(&mut TestVcpu),
    ) -> (TestVcpu, Result<(), MmioError>, Calls) {
        let (mut vcpu, ram) = long_guest(0x8000, code);
        vcpu.regs.rcx = 0x1111_2222_3333_4444;
        vcpu.rflags = KEEP | flags::STATUS;
        setup(&mut vcpu);
        let (r, calls) = run(&mut vcpu, &ram, LAPIC + 0x40, exit_write, reply);
        (vcpu, r, calls)
    }

    const G: u64 = LAPIC + 0x40;

    #[test]
    fn unary_and_shift_execute() {
        // inc dword [rax] on 0xffffffff: CF kept (it was set), ZF PF AF.
        let (v, r, calls) = run_with(&[0xff, 0x00], true, 0xffff_ffff, |_| {});
        assert_eq!(r, Ok(()));
        assert_eq!(calls, [(G, 4, None), (G, 4, Some(0))]);
        assert_eq!(v.rflags, KEEP | CF | ZF | PF | AF);
        assert_eq!(v.rip, 0x8002);
        // not byte [rax]: flags untouched.
        let (v, _, calls) = run_with(&[0xf6, 0x10], false, 0x0f, |_| {});
        assert_eq!(calls, [(G, 1, None), (G, 1, Some(0xf0))]);
        assert_eq!(v.rflags, KEEP | flags::STATUS);
        // shl dword [rax], cl: CL = 0x44, masked to 4.
        let (v, _, calls) = run_with(&[0xd3, 0x20], true, 0x8000_0001, |_| {});
        assert_eq!(calls, [(G, 4, None), (G, 4, Some(0x10))]);
        // CF is bit 28 (0): clear; OF kept (count > 1); AF kept; SF ZF PF from 0x10.
        assert_eq!(v.rflags, KEEP | OF | AF);
        // ror word [rax], 1 on 1: 0x8000, CF and OF.
        let (v, _, calls) = run_with(&[0x66, 0xd1, 0x08], true, 1, |v| v.rflags = KEEP);
        assert_eq!(calls[1], (G, 2, Some(0x8000)));
        assert_eq!(v.rflags, KEEP | CF | OF);
    }

    #[test]
    fn bit_tests_execute() {
        // bt dword [rax], 3: a read only.
        let (v, _, calls) = run_with(&[0x0f, 0xba, 0x20, 0x03], false, 0x8, |v| v.rflags = KEEP);
        assert_eq!(calls, [(G, 4, None)]);
        assert_eq!(v.rflags, KEEP | CF);
        // bts [rax], ecx: bit ECX mod 32 = 4 of the dword the exit reports.
        let (v, _, calls) = run_with(&[0x0f, 0xab, 0x08], true, 0, |_| {});
        assert_eq!(calls, [(G, 4, None), (G, 4, Some(0x10))]);
        assert_eq!(v.rflags, KEEP | (flags::STATUS & !CF));
        // lock btr qword [rax], 63
        let (_, _, calls) = run_with(
            &[0xf0, 0x48, 0x0f, 0xba, 0x30, 0x3f],
            true,
            u64::MAX,
            |_| {},
        );
        assert_eq!(calls[1], (G, 8, Some(i64::MAX as u64)));
    }

    #[test]
    fn xadd_and_cmpxchg_execute() {
        // xadd [rax], ecx with 1 in memory: memory gets the sum, ECX the old 1.
        let (v, _, calls) = run_with(&[0x0f, 0xc1, 0x08], true, 1, |_| {});
        assert_eq!(calls, [(G, 4, None), (G, 4, Some(0x3333_4445))]);
        assert_eq!(v.regs.rcx, 1);
        assert_eq!(v.rflags, KEEP);
        // lock cmpxchg [rax], ecx, EAX = 7: equal -> ECX stored, ZF.
        let (v, _, calls) = run_with(&[0xf0, 0x0f, 0xb1, 0x08], true, 7, |v| {
            v.regs.rax = 0xffff_ffff_0000_0007
        });
        assert_eq!(calls, [(G, 4, None), (G, 4, Some(0x3333_4444))]);
        assert_eq!(v.regs.rax, 0xffff_ffff_0000_0007);
        assert_eq!(v.rflags, KEEP | ZF | PF);
        // Not equal (memory 5): 5 written back, loaded into EAX (zero-extended).
        let (v, _, calls) = run_with(&[0x0f, 0xb1, 0x08], false, 5, |v| {
            v.regs.rax = 0xffff_ffff_0000_0007
        });
        assert_eq!(calls, [(G, 4, None), (G, 4, Some(5))]);
        assert_eq!(v.regs.rax, 5);
        assert_eq!(v.rflags, KEEP);
    }

    #[test]
    fn setcc_and_cmovcc_execute() {
        // sete [rax]: a write only, of 1 with ZF and 0 without.
        let (v, r, calls) = run_with(&[0x0f, 0x94, 0x00], true, 0, |_| {});
        assert_eq!(r, Ok(()));
        assert_eq!(calls, [(G, 1, Some(1))]);
        assert_eq!(v.rflags, KEEP | flags::STATUS);
        let (_, _, calls) = run_with(&[0x0f, 0x94, 0x00], true, 0, |v| v.rflags = KEEP);
        assert_eq!(calls, [(G, 1, Some(0))]);
        let (_, r, _) = run_with(&[0x0f, 0x94, 0x00], false, 0, |_| {});
        assert_eq!(r, Err(MmioError::DirectionMismatch { exit_write: false }));
        // cmovne ecx, [rax] with ZF set: the read happens, ECX is only zero-extended.
        let (v, _, calls) = run_with(&[0x0f, 0x45, 0x08], false, 0xabcd, |_| {});
        assert_eq!(calls, [(G, 4, None)]);
        assert_eq!(v.regs.rcx, 0x3333_4444);
        // cmove rcx, [rax]: loaded.
        let (v, _, _) = run_with(&[0x48, 0x0f, 0x44, 0x08], false, 0xabcd, |_| {});
        assert_eq!(v.regs.rcx, 0xabcd);
        // cmove cx, [rax] with ZF clear: nothing changes.
        let (v, _, _) = run_with(&[0x66, 0x0f, 0x44, 0x08], false, 0xabcd, |v| {
            v.rflags = KEEP
        });
        assert_eq!(v.regs.rcx, 0x1111_2222_3333_4444);
    }

    #[test]
    fn multiply_and_divide_execute() {
        // mul dword [rax]: EDX:EAX = EAX * m32, both halves zero-extended.
        let (v, _, calls) = run_with(&[0xf7, 0x20], false, 0x10, |v| {
            v.regs.rax = 0xdead_0000_8000_0001;
            v.regs.rdx = u64::MAX;
        });
        assert_eq!(calls, [(G, 4, None)]);
        assert_eq!((v.regs.rax, v.regs.rdx), (0x10, 0x8));
        assert_eq!(v.rflags & (CF | OF), CF | OF);
        // div byte [rax]: AX / m8 -> AL quotient, AH remainder, rest of RAX kept.
        let (v, _, _) = run_with(&[0xf6, 0x30], false, 7, |v| v.regs.rax = 0x1234_0064);
        assert_eq!(v.regs.rax, 0x1234_020e);
        // imul ecx, [rax], -2 with 3 in memory.
        let (v, _, _) = run_with(&[0x6b, 0x08, 0xfe], false, 3, |_| {});
        assert_eq!(v.regs.rcx, 0xffff_fffa);
        assert_eq!(v.rflags & (CF | OF), 0);
        // imul rcx, [rax]
        let (v, _, _) = run_with(&[0x48, 0x0f, 0xaf, 0x08], false, 2, |_| {});
        assert_eq!(v.regs.rcx, 0x2222_4444_6666_8888);
    }

    #[test]
    fn divide_errors_inject_de_and_leave_rip() {
        for (code, reply) in [
            (&[0xf7, 0x30][..], 0), // div dword [rax] by 0
            (&[0xf6, 0x38], 0xff),  // idiv byte [rax]: AX = -128, / -1
        ] {
            let (v, r, calls) = run_with(code, false, reply, |v| {
                v.regs.rax = 0xff80;
                v.regs.rdx = 0;
            });
            assert_eq!(r, Ok(()), "{code:x?}");
            assert_eq!(calls.len(), 1, "the operand is read before the fault");
            assert_eq!(v.injected, Some(Exception::DE));
            assert_eq!(v.rip, 0x8000);
            assert_eq!((v.regs.rax, v.regs.rdx), (0xff80, 0));
            assert_eq!(v.rflags, KEEP | flags::STATUS);
        }
    }

    // ---- PUSH/POP, MOV Sreg, string instructions ----

    /// `long_guest` plus linear 0x20_0000..0x40_0000 mapped to the 2 MiB at the
    /// local APIC (no RAM there: every access is a device access).
    fn guest_with_device_window(code: &[u8]) -> (TestVcpu, Ram) {
        let (mut vcpu, mut ram) = long_guest(0x8000, code);
        ram.put(0x3008, &(LAPIC | 0x83).to_le_bytes());
        vcpu.regs.rcx = 0;
        vcpu.rflags = KEEP & !(1 << 10);
        (vcpu, ram)
    }

    const WINDOW: u64 = 0x20_0000;

    #[test]
    fn push_and_pop_move_between_the_device_and_the_stack() {
        // push qword [rax]
        let (mut v, mut ram) = guest_with_device_window(&[0xff, 0x30]);
        v.rsp = 0x9000;
        let (r, calls) = run_mut(&mut v, &mut ram, G, false, 0x1122_3344_5566_7788);
        assert_eq!(r, Ok(()));
        assert_eq!(calls, [(G, 8, None)]);
        assert_eq!(v.rsp, 0x8ff8);
        assert_eq!(
            ram.0[0x8ff8..0x9000],
            0x1122_3344_5566_7788u64.to_le_bytes()
        );
        assert_eq!(v.rip, 0x8002);
        // pop qword [rax]: a write exit.
        ram.put(0x8000, &[0x8f, 0x00]);
        v.rip = 0x8000;
        let (r, calls) = run_mut(&mut v, &mut ram, G, true, 0);
        assert_eq!(r, Ok(()));
        assert_eq!(calls, [(G, 8, Some(0x1122_3344_5566_7788))]);
        assert_eq!((v.rsp, v.rip), (0x9000, 0x8002));
        // push word [rax]: two bytes.
        ram.put(0x8000, &[0x66, 0xff, 0x30]);
        v.rip = 0x8000;
        let (_, calls) = run_mut(&mut v, &mut ram, G, false, 0xbeef);
        assert_eq!(calls, [(G, 2, None)]);
        assert_eq!((v.rsp, &ram.0[0x8ffe..0x9000]), (0x8ffe, &[0xef, 0xbe][..]));
        // A stack that does not translate: an error, and the device untouched.
        ram.put(0x8000, &[0xff, 0x30]);
        v.rip = 0x8000;
        v.rsp = 0x4000_0000;
        let (r, calls) = run_mut(&mut v, &mut ram, G, false, 0);
        assert!(matches!(r, Err(MmioError::Operand { .. })), "{r:?}");
        assert!(calls.is_empty());
        assert_eq!((v.rsp, v.rip), (0x4000_0000, 0x8000));
    }

    #[test]
    fn cmpxchg8b_and_16b_decode_and_check_cx16_and_alignment() {
        // lock cmpxchg8b [rax]; cmpxchg16b [rax]
        assert_eq!(
            d64(&[0xf0, 0x0f, 0xc7, 0x08]),
            insn(4, 8, Access::CompareExchangeDouble { half: 4 })
        );
        assert_eq!(
            d64(&[0x48, 0x0f, 0xc7, 0x08]),
            insn(4, 8, Access::CompareExchangeDouble { half: 8 })
        );
        assert_eq!(
            decode(&[0x0f, 0xc7, 0x08], 32).unwrap().kind,
            Access::CompareExchangeDouble { half: 4 }
        );
        // cmpxchg16b on unbacked space (all ones): fails, RDX:RAX become all ones.
        let (mut v, mut ram) = guest_with_device_window(&[0x48, 0x0f, 0xc7, 0x08]);
        v.regs.rbx = 7;
        let (r, calls) = run_mut(&mut v, &mut ram, G, true, u64::MAX);
        assert_eq!(r, Ok(()));
        assert_eq!(
            calls,
            [
                (G, 8, None),
                (G + 8, 8, None),
                (G, 8, Some(u64::MAX)),
                (G + 8, 8, Some(u64::MAX))
            ]
        );
        assert_eq!(
            (v.regs.rax, v.regs.rdx, v.rip),
            (u64::MAX, u64::MAX, 0x8004)
        );
        assert_eq!(v.rflags & flags::ZF, 0);
        // Misaligned: #GP(0), RIP stays, no access.
        v.rip = 0x8000;
        let (r, calls) = run_mut(&mut v, &mut ram, G + 8, true, 0);
        assert_eq!((r, calls.len()), (Ok(()), 0));
        assert_eq!((v.injected, v.rip), (Some(Exception::GP0), 0x8000));
        // CX16 hidden from the guest: #UD, no access.
        v.injected = None;
        let mut calls = Vec::new();
        let hidden = GuestFeatures { cx16: false };
        let r = emulate(&mut v, &mut ram, G, true, hidden, &mut |a, s, x| {
            calls.push((a, s, x));
            0
        });
        assert_eq!((r, calls.len()), (Ok(()), 0));
        assert_eq!((v.injected, v.rip), (Some(Exception::UD), 0x8000));
        // CMPXCHG8B needs no CPUID bit (every x86-64 processor has CX8).
        v.injected = None;
        ram.put(0x8000, &[0x0f, 0xc7, 0x08]);
        v.regs.rax = 0xffff_ffff;
        v.regs.rdx = 0xffff_ffff;
        let r = emulate(&mut v, &mut ram, G + 4, true, hidden, &mut |_, _, x| {
            x.unwrap_or(u64::MAX)
        });
        assert_eq!((r, v.injected, v.rip), (Ok(()), None, 0x8003));
        assert_ne!(v.rflags & flags::ZF, 0);
    }

    #[test]
    fn a_stack_in_device_space_in_long_mode() {
        // RSP inside the device window: push imm8, pop rax, call rel32, ret.
        let (mut v, mut ram) = guest_with_device_window(&[0x6a, 0x7f]);
        v.rsp = WINDOW + 0x48;
        let (r, calls) = run_mut(&mut v, &mut ram, G, true, 0);
        assert_eq!(r, Ok(()));
        assert_eq!(calls, [(G, 8, Some(0x7f))]);
        assert_eq!((v.rsp, v.rip), (WINDOW + 0x40, 0x8002));
        // pop rax: the device's value (all ones from unbacked space).
        ram.put(0x8000, &[0x58]);
        v.rip = 0x8000;
        let (r, calls) = run_mut(&mut v, &mut ram, G, false, u64::MAX);
        assert_eq!((r, calls), (Ok(()), vec![(G, 8, None)]));
        assert_eq!(
            (v.regs.rax, v.rsp, v.rip),
            (u64::MAX, WINDOW + 0x48, 0x8001)
        );
        // call +0x100: the return address is written, RIP moves to the target.
        ram.put(0x8000, &[0xe8, 0x00, 0x01, 0x00, 0x00]);
        v.rip = 0x8000;
        let (r, calls) = run_mut(&mut v, &mut ram, G, true, 0);
        assert_eq!((r, calls), (Ok(()), vec![(G, 8, Some(0x8005))]));
        assert_eq!((v.rsp, v.rip), (WINDOW + 0x40, 0x8105));
        // ret to all ones: not canonical, #GP(0) with RSP and RIP kept.
        ram.put(0x8105, &[0xc3]);
        let (r, calls) = run_mut(&mut v, &mut ram, G, false, u64::MAX >> 1);
        assert_eq!((r, calls.len()), (Ok(()), 1));
        assert_eq!(v.injected, Some(Exception::GP0));
        assert_eq!((v.rsp, v.rip), (WINDOW + 0x40, 0x8105));
        // ret to the return address.
        v.injected = None;
        let (r, _) = run_mut(&mut v, &mut ram, G, false, 0x8005);
        assert_eq!(r, Ok(()));
        assert_eq!((v.rsp, v.rip), (WINDOW + 0x48, 0x8005));
        // The exit elsewhere than the slot: a named error, nothing changed.
        ram.put(0x8000, &[0x50]);
        v.rip = 0x8000;
        let (r, calls) = run_mut(&mut v, &mut ram, G + 0x100, true, 0);
        assert_eq!(
            r,
            Err(MmioError::StackMismatch {
                exit: G + 0x100,
                slot: G
            })
        );
        assert!(calls.is_empty());
        assert_eq!(
            format!("{}", r.unwrap_err()),
            "the exit is at guest-physical 0xfee00140 but the stack slot is at 0xfee00040"
        );
        assert_eq!((v.rsp, v.rip), (WINDOW + 0x48, 0x8000));
    }

    #[test]
    fn mov_sreg_stores_the_selector() {
        // mov [rax], ds
        let (mut v, ram) = guest_with_device_window(&[0x8c, 0x18]);
        let (r, calls) = run(&mut v, &ram, G, true, 0);
        assert_eq!(r, Err(MmioError::NoSegment(SegReg::Ds)));
        assert!(calls.is_empty());
        v.segments[SegReg::Ds as usize] = Some(vcpu::state::Segment {
            selector: 0x18,
            ..Default::default()
        });
        let (r, calls) = run(&mut v, &ram, G, true, 0);
        assert_eq!(r, Ok(()));
        assert_eq!(calls, [(G, 2, Some(0x18))]);
        assert_eq!(v.rip, 0x8002);
    }

    #[test]
    fn rep_stos_writes_one_element_per_device_access() {
        // rep stosd: three dwords up from the window's offset 0x40.
        let (mut v, ram) = guest_with_device_window(&[0xf3, 0xab]);
        v.regs.rax = 0xffff_ffff_0000_0055;
        v.regs.rdi = WINDOW + 0x40;
        v.regs.rcx = 3;
        let (r, calls) = run(&mut v, &ram, G, true, 0);
        assert_eq!(r, Ok(()));
        assert_eq!(
            calls,
            [
                (G, 4, Some(0x55)),
                (G + 4, 4, Some(0x55)),
                (G + 8, 4, Some(0x55))
            ]
        );
        assert_eq!((v.regs.rdi, v.regs.rcx, v.rip), (WINDOW + 0x4c, 0, 0x8002));
        // DF set: down.
        v.rip = 0x8000;
        v.regs.rcx = 2;
        v.rflags |= 1 << 10;
        let (_, calls) = run(&mut v, &ram, G + 0xc, true, 0);
        assert_eq!(calls, [(G + 0xc, 4, Some(0x55)), (G + 8, 4, Some(0x55))]);
        assert_eq!(v.regs.rdi, WINDOW + 0x44);
        // A count of 0 does nothing.
        v.rip = 0x8000;
        let (r, calls) = run(&mut v, &ram, G, true, 0);
        assert_eq!((r, calls.len(), v.rip), (Ok(()), 0, 0x8002));
    }

    #[test]
    fn rep_movs_from_the_device_into_ram() {
        // rep movsb from the window into RAM at 0x5000
        let (mut v, mut ram) = guest_with_device_window(&[0xf3, 0xa4]);
        v.regs.rsi = WINDOW + 0x40;
        v.regs.rdi = 0x5000;
        v.regs.rcx = 4;
        let (r, calls) = run_mut(&mut v, &mut ram, G, false, 0xab);
        assert_eq!(r, Ok(()));
        assert_eq!(
            calls,
            [
                (G, 1, None),
                (G + 1, 1, None),
                (G + 2, 1, None),
                (G + 3, 1, None)
            ]
        );
        assert_eq!(ram.0[0x5000..0x5005], [0xab, 0xab, 0xab, 0xab, 0]);
        assert_eq!(
            (v.regs.rsi, v.regs.rdi, v.regs.rcx),
            (WINDOW + 0x44, 0x5004, 0)
        );
        // movsq (no REP) from RAM into the device: a write exit.
        ram.put(0x8000, &[0x48, 0xa5]);
        ram.put(0x6000, &0x0102_0304_0506_0708u64.to_le_bytes());
        v.rip = 0x8000;
        v.regs.rsi = 0x6000;
        v.regs.rdi = WINDOW + 0x80;
        v.regs.rcx = 77;
        let (r, calls) = run_mut(&mut v, &mut ram, LAPIC + 0x80, true, 0);
        assert_eq!(r, Ok(()));
        assert_eq!(calls, [(LAPIC + 0x80, 8, Some(0x0102_0304_0506_0708))]);
        assert_eq!(
            (v.regs.rsi, v.regs.rdi, v.regs.rcx),
            (0x6008, WINDOW + 0x88, 77)
        );
        // The other side not mapped at element 0: an error, nothing accessed.
        v.rip = 0x8000;
        v.regs.rsi = 0x4000_0000;
        let (r, calls) = run_mut(&mut v, &mut ram, LAPIC + 0x80, true, 0);
        assert!(
            matches!(
                r,
                Err(MmioError::Operand {
                    linear: 0x4000_0000,
                    ..
                })
            ),
            "{r:?}"
        );
        assert!(calls.is_empty());
    }

    #[test]
    fn rep_batches_are_bounded_and_stop_before_an_unmapped_page() {
        // rep stosb with a count of 1000: MAX_BATCH elements, RIP stays.
        let (mut v, ram) = guest_with_device_window(&[0xf3, 0xaa]);
        v.regs.rdi = WINDOW;
        v.regs.rcx = 1000;
        let (r, calls) = run(&mut v, &ram, LAPIC, true, 0);
        assert_eq!(r, Ok(()));
        assert_eq!(calls.len() as u64, MAX_BATCH);
        assert_eq!((v.regs.rcx, v.rip), (1000 - MAX_BATCH, 0x8000));
        assert_eq!(v.regs.rdi, WINDOW + MAX_BATCH);
        // Two bytes before the end of the window (linear 0x40_0000 is not mapped):
        // two elements, then RIP stays for the processor to fault on the third.
        v.regs.rdi = 0x3f_fffe;
        v.regs.rcx = 4;
        let (r, calls) = run(&mut v, &ram, LAPIC + 0x1f_fffe, true, 0);
        assert_eq!(r, Ok(()));
        assert_eq!(calls.len(), 2);
        assert_eq!((v.regs.rcx, v.regs.rdi, v.rip), (2, 0x40_0000, 0x8000));
    }

    #[test]
    fn repe_cmps_and_repne_scas_end_on_zf() {
        // repe cmpsb: RAM 1, 1, 2 against a device answering 1: two elements.
        let (mut v, mut ram) = guest_with_device_window(&[0xf3, 0xa6]);
        ram.put(0x5000, &[1, 1, 2, 1]);
        v.regs.rsi = 0x5000;
        v.regs.rdi = WINDOW;
        v.regs.rcx = 10;
        let (r, calls) = run_mut(&mut v, &mut ram, LAPIC, false, 1);
        assert_eq!(r, Ok(()));
        assert_eq!(calls.len(), 3);
        assert_eq!((v.regs.rcx, v.regs.rsi, v.rip), (7, 0x5003, 0x8002));
        // 2 - 1: no ZF, no CF.
        assert_eq!(v.rflags & flags::STATUS, 0);
        // repne scasw for AX = 0x1234 in a device answering 0x1234: one element.
        ram.put(0x8000, &[0x66, 0xf2, 0xaf]);
        v.rip = 0x8000;
        v.regs.rax = 0x1234;
        v.regs.rcx = 10;
        let (r, calls) = run_mut(&mut v, &mut ram, LAPIC, false, 0x1234);
        assert_eq!(r, Ok(()));
        assert_eq!(calls, [(LAPIC + 3, 2, None)]);
        assert_eq!((v.regs.rcx, v.rip), (9, 0x8003));
        assert_eq!(v.rflags & flags::STATUS, ZF | PF);
    }

    #[test]
    fn string_forms_decode() {
        let s = |op, addr_size, seg, rep| Access::String {
            op,
            addr_size,
            seg,
            rep,
        };
        use StringOp::*;
        for (bytes, bits, size, kind) in [
            (&[0xa4][..], 64, 1, s(Movs, 8, SegReg::Ds, Rep::Once)),
            (
                &[0xf3, 0x48, 0xa5],
                64,
                8,
                s(Movs, 8, SegReg::Ds, Rep::Count),
            ),
            (
                &[0x67, 0xf3, 0xab],
                64,
                4,
                s(Stos, 4, SegReg::Es, Rep::Count),
            ),
            (&[0x64, 0xad], 64, 4, s(Lods, 8, SegReg::Fs, Rep::Once)),
            (
                &[0xf2, 0xa6],
                64,
                1,
                s(Cmps, 8, SegReg::Ds, Rep::WhileNotEqual),
            ),
            (
                &[0xf3, 0xae],
                32,
                1,
                s(Scas, 4, SegReg::Es, Rep::WhileEqual),
            ),
            (&[0xf3, 0xa5], 16, 2, s(Movs, 2, SegReg::Ds, Rep::Count)),
            (&[0x26, 0xac], 16, 1, s(Lods, 2, SegReg::Es, Rep::Once)),
        ] {
            let want = MmioInstruction {
                len: bytes.len(),
                size,
                kind,
            };
            assert_eq!(decode(bytes, bits), Ok(want), "{bytes:x?}");
        }
        // push [rax] ; pop word [rax] ; mov [rax], gs ; push rax has no memory operand
        assert_eq!(d64(&[0xff, 0x30]).kind, Access::Push);
        assert_eq!(d64(&[0x66, 0x8f, 0x00]).size, 2);
        assert_eq!(
            d64(&[0x8c, 0x28]).kind,
            Access::StoreSegment { seg: SegReg::Gs }
        );
        assert_eq!(
            decode(&[0xff, 0xf0], 64),
            Err(MmioError::NoMemoryOperand {
                mnemonic: Mnemonic::Push
            })
        );
    }

    #[test]
    fn an_element_straddling_ram_and_a_device_goes_to_the_device_part() {
        // movsd from RAM into linear 0x1f_fffe: two bytes of RAM, then the window.
        let (mut v, mut ram) = guest_with_device_window(&[0xa5]);
        ram.put(0x6000, &0x1122_3344u32.to_le_bytes());
        v.regs.rsi = 0x6000;
        v.regs.rdi = 0x1f_fffe;
        let (r, calls) = run_mut(&mut v, &mut ram, LAPIC, true, 0);
        assert_eq!(r, Ok(()));
        assert_eq!(calls, [(LAPIC, 4, Some(0x1122_3344))]);
        assert_eq!(ram.0[0x1f_fffe..0x20_0000], [0, 0]);
        // Both parts RAM (identity-mapped): the bytes on either side of the page
        // boundary.
        v.rip = 0x8000;
        v.regs.rsi = 0x6000;
        v.regs.rdi = 0xaffe;
        let (r, calls) = run_mut(&mut v, &mut ram, LAPIC, true, 0);
        assert_eq!((r, calls.len()), (Ok(()), 0));
        assert_eq!(ram.0[0xaffe..0xb002], 0x1122_3344u32.to_le_bytes());
    }
}
