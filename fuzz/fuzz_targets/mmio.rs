//! The MMIO instruction emulation path (`kernel::vmm::mmio` with
//! `kernel::vmm::guest_walk`): the instruction at CS:RIP fetched through arbitrary
//! guest page tables in any mode, decoded, and carried out against a device on an
//! arbitrary register state. Never a panic, and what is accepted must be right:
//!
//! - the fetch returns 1 to 15 bytes; the decoded length, access width and access
//!   direction agree with iced-x86's own instruction information (the emulator
//!   chooses which encodings it accepts; iced says what each one touches);
//! - `execute` touches the device exactly as `reads()`/`writes()` say (a read,
//!   then a write for read-modify-write forms), at the exit's address and the
//!   access width, writes values that fit that width, changes only the register the
//!   instruction names (writing it as x86 does: 8/16-bit destinations keep the
//!   rest, 32-bit ones zero-extend), and only the status flags, only when it sets
//!   flags;
//! - the flags and results of `alu` equal what the host processor computes for the
//!   same instruction (AF left out for AND/OR/XOR/TEST, where the SDM leaves it
//!   undefined), for every operation and width; so do those of `x86_arith`'s
//!   INC/DEC/NEG/NOT, shifts and rotates (count from CL), bit tests, MUL/IMUL/DIV/
//!   IDIV (a #DE the model reports must be one by the SDM's rule; the processor is
//!   asked only when there is none) and the 16 condition codes, where a flag is
//!   compared only where the SDM defines it (or says it is unaffected);
//! - `execute` returns #DE only for `DIV`/`IDIV`, and then changes no register;
//! - `PUSH`/`POP m`, `MOV m, Sreg` and the string instructions (with a writable copy of
//!   the RAM and segment registers from the input) either fail with nothing changed
//!   and no device touched, or move RSP / RSI / RDI / RCX by exactly what the number of
//!   elements done says (at most `MAX_BATCH`), within their address size, and change
//!   no other register.
//! - the MMX/SSE moves and `MOVNTI` (`kernel::vmm::mmio_sse`, for what
//!   `mmio::decode` refuses): length, width and direction agree with iced's
//!   instruction information, the effective address with iced's; `check` faults
//!   only as the SDM's rules say (CR0/CR4 bits and CPUID from the input); `execute`
//!   either fails with nothing changed or accesses the operand in ascending 4/8-byte
//!   pieces in the right direction, stores exactly the register's bytes, and
//!   changes only the destination register in the FXSAVE image (and, for MMX, TOP
//!   and the tags as the MMX-mode switch does);
//! - the x87 loads and stores (`kernel::vmm::mmio_x87`): length, width and direction
//!   as iced says, #NM/#MF/#UD exactly by the rules, and `execute` (the host
//!   processor running the instruction on the input's x87 state) accesses the
//!   operand in ascending pieces (8 + 2 bytes for 80 bits), loads only reading and
//!   stores only writing, leaves MXCSR and the XMM registers alone, and puts no host
//!   address into FIP/FDP; the x87 arithmetic (`FADD m64fp`, ...) likewise;
//! - the SSE computations with a memory source and `MASKMOVDQU`/`MASKMOVQ`
//!   (`kernel::vmm::mmio_simd_alu`): length, memory size and direction as iced says,
//!   #UD/#NM/#MF/#GP(0) exactly by the rules, and `execute` (the host running the
//!   allow-listed stub on an input state with any MXCSR masks, rounding and FTZ)
//!   reads the operand in ascending 8-byte pieces (or one of 4/2 bytes), changes
//!   nothing but the destination and MXCSR's flags (only adding flags), faults (#XM,
//!   or #UD without CR4.OSXMMEXCPT) exactly when a raised flag is unmasked, and then
//!   leaves the destination alone; the result does not depend on which XMM register
//!   holds the operand (the same values in another register give the same bytes);
//!   the masked stores write one byte per selected mask byte, ascending, exactly the
//!   register's bytes.
//!
//! Input: a mode byte (bits 1:0 real/protected/long/compatibility mode, bit 2
//! paging, bit 3 PAE, bit 4 LA57, bit 5 PSE), CR3, RIP and CS base (8 bytes each),
//! RAX..R15, RSP and RFLAGS (8 bytes each), four device read values, then the guest
//! RAM (from guest-physical 0; reads past it fail). Without paging, RIP and the CS
//! base are taken modulo the RAM size so the instruction lands in it.
#![no_main]

use iced_x86::{Decoder, DecoderOptions, InstructionInfoFactory, OpAccess};
use kernel::vmm::guest_walk::{self, GuestMemory, GuestMemoryMut};
use kernel::vmm::mmio::{
    self, flags, Access, AluOp, BitOp, Extend, MmioInstruction, MulDivOp, Operand, Reg, Rep,
    ShiftOp, Step, StringOp, UnaryOp,
};
use kernel::vmm::mmio_memory::{Env, MAX_BATCH};
use kernel::vmm::mmio_sse::{self, SimdFeatures, SimdReg};
use kernel::vmm::mmio_simd_alu::{self, AluDest, AluOutcome, SimdAluInsn};
use kernel::vmm::mmio_x87;
use vcpu::fpu::FxArea;
use kernel::vmm::mmio_segment::SegmentLoad;
use kernel::vmm::mmio_stack::{self, StackOp};
use kernel::vmm::x86_arith::{self, DivideError, Wide};
use libfuzzer_sys::fuzz_target;
use vcpu::{ControlRegs, GuestRegisters};

struct Ram<'a>(&'a [u8]);

impl GuestMemory for Ram<'_> {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), ()> {
        let start = usize::try_from(gpa).map_err(|_| ())?;
        let end = start.checked_add(buf.len()).ok_or(())?;
        buf.copy_from_slice(self.0.get(start..end).ok_or(())?);
        Ok(())
    }
}

const HEADER: usize = 1 + 3 * 8 + 17 * 8 + 4 * 8;

fn u64_at(d: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(d[i..i + 8].try_into().unwrap())
}

fn mask(size: u8) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * u32::from(size))) - 1
    }
}

fn regs_from(d: &[u8]) -> GuestRegisters {
    let r = |n: usize| u64_at(d, n * 8);
    GuestRegisters {
        rax: r(0),
        rcx: r(1),
        rdx: r(2),
        rbx: r(3),
        rbp: r(4),
        rsi: r(5),
        rdi: r(6),
        r8: r(7),
        r9: r(8),
        r10: r(9),
        r11: r(10),
        r12: r(11),
        r13: r(12),
        r14: r(13),
        r15: r(14),
    }
}

/// The 64-bit register `reg` lives in (AH..BH in RAX..RBX), with RSP apart.
fn full(regs: &GuestRegisters, rsp: u64, reg: Reg) -> u64 {
    match reg {
        Reg::Rax | Reg::Ah => regs.rax,
        Reg::Rcx | Reg::Ch => regs.rcx,
        Reg::Rdx | Reg::Dh => regs.rdx,
        Reg::Rbx | Reg::Bh => regs.rbx,
        Reg::Rsp => rsp,
        Reg::Rbp => regs.rbp,
        Reg::Rsi => regs.rsi,
        Reg::Rdi => regs.rdi,
        Reg::R8 => regs.r8,
        Reg::R9 => regs.r9,
        Reg::R10 => regs.r10,
        Reg::R11 => regs.r11,
        Reg::R12 => regs.r12,
        Reg::R13 => regs.r13,
        Reg::R14 => regs.r14,
        Reg::R15 => regs.r15,
    }
}

/// The `size`-byte value of `reg` (AH..BH: bits 15:8).
fn value(regs: &GuestRegisters, rsp: u64, reg: Reg, size: u8) -> u64 {
    let shift = if matches!(reg, Reg::Ah | Reg::Ch | Reg::Dh | Reg::Bh) {
        8
    } else {
        0
    };
    (full(regs, rsp, reg) >> shift) & mask(size)
}

fn all(regs: &GuestRegisters, rsp: u64) -> [u64; 16] {
    [
        regs.rax, regs.rcx, regs.rdx, regs.rbx, rsp, regs.rbp, regs.rsi, regs.rdi, regs.r8,
        regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
    ]
}

/// Index into [`all`] of the register `reg` is part of.
fn slot(reg: Reg) -> usize {
    match reg {
        Reg::Ah => 0,
        Reg::Ch => 1,
        Reg::Dh => 2,
        Reg::Bh => 3,
        r => mmio::GPRS.iter().position(|&x| x == r).unwrap(),
    }
}

/// `reg` was written with a `size`-byte value as x86 writes registers: the other
/// bits of an 8/16-bit destination kept, a 32-bit one zero-extended.
fn check_register_write(before: u64, after: u64, reg: Reg, size: u8) {
    let high8 = matches!(reg, Reg::Ah | Reg::Ch | Reg::Dh | Reg::Bh);
    match size {
        1 | 2 => {
            let kept = !(mask(size) << if high8 { 8 } else { 0 });
            assert_eq!(before & kept, after & kept, "{reg:?} ({size} bytes)");
        }
        4 => assert_eq!(after >> 32, 0, "{reg:?}: a 32-bit write zero-extends"),
        _ => {}
    }
}

/// What the host processor computes for `op` at `size` on `left`, `right` with CF =
/// `carry`: the result and RFLAGS.
fn native(op: AluOp, size: u8, left: u64, right: u64, carry: bool) -> (u64, u64) {
    let mut l = left;
    let f: u64;
    macro_rules! go {
        ($m:literal, $w:literal) => {
            // SAFETY: register-only arithmetic; the flags go through the stack
            // (PUSHFQ/POP), which asm! may use without `nostack`.
            unsafe {
                core::arch::asm!(
                    "bt {c}, 0",
                    concat!($m, " {l:", $w, "}, {r:", $w, "}"),
                    "pushfq",
                    "pop {f}",
                    c = in(reg) u64::from(carry),
                    l = inout(reg) l,
                    r = in(reg) right,
                    f = out(reg) f,
                )
            }
        };
    }
    macro_rules! sized {
        ($m:literal) => {
            match size {
                1 => go!($m, "l"),
                2 => go!($m, "x"),
                4 => go!($m, "e"),
                _ => go!($m, "r"),
            }
        };
    }
    match op {
        AluOp::Add => sized!("add"),
        AluOp::Adc => sized!("adc"),
        AluOp::Sub => sized!("sub"),
        AluOp::Sbb => sized!("sbb"),
        AluOp::And => sized!("and"),
        AluOp::Or => sized!("or"),
        AluOp::Xor => sized!("xor"),
        AluOp::Cmp => sized!("cmp"),
        AluOp::Test => sized!("test"),
    }
    (l & mask(size), f & flags::STATUS)
}

const OPS: [AluOp; 9] = [
    AluOp::Add,
    AluOp::Adc,
    AluOp::Sub,
    AluOp::Sbb,
    AluOp::And,
    AluOp::Or,
    AluOp::Xor,
    AluOp::Cmp,
    AluOp::Test,
];

fn check_alu(op: AluOp, size: u8, left: u64, right: u64, carry: bool) {
    let (result, f) = mmio::alu(op, size, left, right, carry);
    let (want, mut want_f) = native(op, size, left & mask(size), right & mask(size), carry);
    let mut f = f;
    if matches!(op, AluOp::And | AluOp::Or | AluOp::Xor | AluOp::Test) {
        f &= !flags::AF;
        want_f &= !flags::AF;
    }
    // CMP and TEST leave their destination alone on the processor.
    if op.stores() {
        assert_eq!(result, want, "{op:?} {size} {left:#x} {right:#x} {carry}");
    }
    assert_eq!(f, want_f, "{op:?} {size} {left:#x} {right:#x} cf={carry}");
}

/// Runs `$body` (an instruction on `{x}`, and `{s}`/CL/RAX/RDX as it names them) with
/// the status flags of `$fl` loaded, and returns RFLAGS after it.
macro_rules! flagged {
    ($fl:expr, $body:expr, $($operands:tt)*) => {{
        let f: u64;
        // SAFETY: register-only arithmetic; RFLAGS goes through the stack
        // (PUSH/POPFQ, PUSHFQ/POP), which asm! may use without `nostack`. Only the
        // status flags and the fixed bit 1 are loaded.
        unsafe {
            core::arch::asm!(
                "push {fi}",
                "popfq",
                $body,
                "pushfq",
                "pop {f}",
                fi = in(reg) ($fl & flags::STATUS) | 2,
                f = out(reg) f,
                $($operands)*
            )
        };
        f
    }};
}

/// The host's `op` of `v` (one of the FE/FF/F6/F7 unary forms).
fn native_unary(op: UnaryOp, size: u8, v: u64, fl: u64) -> (u64, u64) {
    let mut x = v;
    macro_rules! go {
        ($m:literal) => {
            match size {
                1 => flagged!(fl, concat!($m, " {x:l}"), x = inout(reg) x),
                2 => flagged!(fl, concat!($m, " {x:x}"), x = inout(reg) x),
                4 => flagged!(fl, concat!($m, " {x:e}"), x = inout(reg) x),
                _ => flagged!(fl, concat!($m, " {x:r}"), x = inout(reg) x),
            }
        };
    }
    let f = match op {
        UnaryOp::Inc => go!("inc"),
        UnaryOp::Dec => go!("dec"),
        UnaryOp::Neg => go!("neg"),
        UnaryOp::Not => go!("not"),
    };
    (x & mask(size), f)
}

fn native_shift(op: ShiftOp, size: u8, v: u64, count: u8, fl: u64) -> (u64, u64) {
    let mut x = v;
    macro_rules! go {
        ($m:literal) => {
            match size {
                1 => flagged!(fl, concat!($m, " {x:l}, cl"), x = inout(reg) x, in("cl") count),
                2 => flagged!(fl, concat!($m, " {x:x}, cl"), x = inout(reg) x, in("cl") count),
                4 => flagged!(fl, concat!($m, " {x:e}, cl"), x = inout(reg) x, in("cl") count),
                _ => flagged!(fl, concat!($m, " {x:r}, cl"), x = inout(reg) x, in("cl") count),
            }
        };
    }
    let f = match op {
        ShiftOp::Rol => go!("rol"),
        ShiftOp::Ror => go!("ror"),
        ShiftOp::Rcl => go!("rcl"),
        ShiftOp::Rcr => go!("rcr"),
        ShiftOp::Shl => go!("shl"),
        ShiftOp::Shr => go!("shr"),
        ShiftOp::Sar => go!("sar"),
    };
    (x & mask(size), f)
}

/// BTx on a register: the bit offset is taken modulo the width, as the emulator takes
/// it once the processor has moved a memory operand (sizes 2, 4, 8).
fn native_bit(op: BitOp, size: u8, v: u64, bit: u64, fl: u64) -> (u64, u64) {
    let mut x = v;
    macro_rules! go {
        ($m:literal) => {
            match size {
                2 => flagged!(fl, concat!($m, " {x:x}, {b:x}"), x = inout(reg) x, b = in(reg) bit),
                4 => flagged!(fl, concat!($m, " {x:e}, {b:e}"), x = inout(reg) x, b = in(reg) bit),
                _ => flagged!(fl, concat!($m, " {x:r}, {b:r}"), x = inout(reg) x, b = in(reg) bit),
            }
        };
    }
    let f = match op {
        BitOp::Bt => go!("bt"),
        BitOp::Bts => go!("bts"),
        BitOp::Btr => go!("btr"),
        BitOp::Btc => go!("btc"),
    };
    (x & mask(size), f)
}

/// MUL/IMUL/DIV/IDIV of the accumulator pair by `s`; only called when no #DE is due.
fn native_mul_div(op: MulDivOp, size: u8, acc: Wide, s: u64, fl: u64) -> (Wide, u64) {
    let (mut a, mut d) = if size == 1 {
        ((acc.high & 0xff) << 8 | (acc.low & 0xff), 0)
    } else {
        (acc.low, acc.high)
    };
    macro_rules! go {
        ($m:literal) => {
            match size {
                1 => flagged!(fl, concat!($m, " {s:l}"), s = in(reg) s, inout("rax") a, inout("rdx") d),
                2 => flagged!(fl, concat!($m, " {s:x}"), s = in(reg) s, inout("rax") a, inout("rdx") d),
                4 => flagged!(fl, concat!($m, " {s:e}"), s = in(reg) s, inout("rax") a, inout("rdx") d),
                _ => flagged!(fl, concat!($m, " {s:r}"), s = in(reg) s, inout("rax") a, inout("rdx") d),
            }
        };
    }
    let f = match op {
        MulDivOp::Mul => go!("mul"),
        MulDivOp::Imul => go!("imul"),
        MulDivOp::Div => go!("div"),
        MulDivOp::Idiv => go!("idiv"),
    };
    let out = if size == 1 {
        Wide {
            low: a & 0xff,
            high: (a >> 8) & 0xff,
        }
    } else {
        Wide {
            low: a & mask(size),
            high: d & mask(size),
        }
    };
    (out, f)
}

fn native_imul2(size: u8, l: u64, r: u64, fl: u64) -> (u64, u64) {
    let mut x = l;
    let f = match size {
        2 => flagged!(fl, "imul {x:x}, {s:x}", x = inout(reg) x, s = in(reg) r),
        4 => flagged!(fl, "imul {x:e}, {s:e}", x = inout(reg) x, s = in(reg) r),
        _ => flagged!(fl, "imul {x:r}, {s:r}", x = inout(reg) x, s = in(reg) r),
    };
    (x & mask(size), f)
}

/// The host's SETcc for condition `cc` on RFLAGS `fl`.
fn native_condition(cc: u8, fl: u64) -> bool {
    let mut x = 0u64;
    macro_rules! go {
        ($m:literal) => {
            flagged!(fl, concat!($m, " {x:l}"), x = inout(reg) x)
        };
    }
    let _ = match cc {
        0 => go!("seto"),
        1 => go!("setno"),
        2 => go!("setb"),
        3 => go!("setae"),
        4 => go!("sete"),
        5 => go!("setne"),
        6 => go!("setbe"),
        7 => go!("seta"),
        8 => go!("sets"),
        9 => go!("setns"),
        10 => go!("setp"),
        11 => go!("setnp"),
        12 => go!("setl"),
        13 => go!("setge"),
        14 => go!("setle"),
        _ => go!("setg"),
    };
    x & 1 != 0
}

const SHIFTS: [ShiftOp; 7] = [
    ShiftOp::Rol,
    ShiftOp::Ror,
    ShiftOp::Rcl,
    ShiftOp::Rcr,
    ShiftOp::Shl,
    ShiftOp::Shr,
    ShiftOp::Sar,
];

/// `x86_arith` against the processor on these operands. `fl` is the incoming RFLAGS.
fn check_arith(size: u8, a: u64, b: u64, c: u64, d: u64, fl: u64) {
    use flags::{AF, CF, OF, PF, SF, ZF};
    let fl = fl & flags::STATUS;
    let same = |what: &str, (r, f): (u64, u64), (nr, nf): (u64, u64), defined: u64| {
        assert_eq!(r, nr, "{what} {size} {a:#x} {b:#x} {c:#x} fl={fl:#x}");
        assert_eq!(
            f & defined,
            nf & defined,
            "{what} {size} {a:#x} {b:#x} {c:#x} fl={fl:#x}"
        );
    };
    for op in [UnaryOp::Inc, UnaryOp::Dec, UnaryOp::Neg, UnaryOp::Not] {
        let got = x86_arith::unary(op, size, a, fl);
        same(
            "unary",
            got,
            native_unary(op, size, a & mask(size), fl),
            flags::STATUS,
        );
    }
    let count = c as u8;
    let w = 8 * u32::from(size);
    let masked = u32::from(count) & if size == 8 { 0x3f } else { 0x1f };
    for op in SHIFTS {
        let got = x86_arith::shift(op, size, a, count, fl);
        let native = native_shift(op, size, a & mask(size), count, fl);
        let rotate = matches!(
            op,
            ShiftOp::Rol | ShiftOp::Ror | ShiftOp::Rcl | ShiftOp::Rcr
        );
        let defined = if masked == 0 {
            flags::STATUS
        } else {
            let of = if masked == 1 { OF } else { 0 };
            // SHL/SHR leave CF undefined once the count reaches the width.
            let cf = if matches!(op, ShiftOp::Shl | ShiftOp::Shr) && masked >= w {
                0
            } else {
                CF
            };
            if rotate {
                // Rotates affect CF and OF only: the rest is defined as unchanged.
                cf | of | SF | ZF | AF | PF
            } else {
                cf | of | SF | ZF | PF
            }
        };
        same("shift", got, native, defined);
    }
    if size > 1 {
        for op in [BitOp::Bt, BitOp::Bts, BitOp::Btr, BitOp::Btc] {
            let got = x86_arith::bit_test(op, size, a, c, fl);
            // CF only: Intel leaves ZF unaffected, AMD calls it undefined.
            same("bit", got, native_bit(op, size, a & mask(size), c, fl), CF);
        }
        let got = x86_arith::imul_truncated(size, a, b, fl);
        same(
            "imul2",
            got,
            native_imul2(size, a & mask(size), b & mask(size), fl),
            CF | OF,
        );
    }
    let acc = Wide {
        low: a & mask(size),
        high: d & mask(size),
    };
    let s = b & mask(size);
    for op in [MulDivOp::Mul, MulDivOp::Imul, MulDivOp::Div, MulDivOp::Idiv] {
        match x86_arith::mul_div(op, size, acc, s, fl) {
            Ok((out, f)) => {
                let (nout, nf) = native_mul_div(op, size, acc, s, fl);
                assert_eq!(out, nout, "{op:?} {size} {acc:x?} {s:#x}");
                let defined = match op {
                    MulDivOp::Mul | MulDivOp::Imul => CF | OF,
                    _ => 0,
                };
                assert_eq!(f & defined, nf & defined, "{op:?} {size} {acc:x?} {s:#x}");
            }
            Err(DivideError) => {
                // The SDM's rule, computed apart: a zero divisor or a quotient
                // outside the low half's range.
                let w = 8 * u32::from(size);
                let fits = match op {
                    MulDivOp::Div => {
                        s != 0
                            && ((u128::from(acc.high) << w) | u128::from(acc.low)) / u128::from(s)
                                <= u128::from(mask(size))
                    }
                    MulDivOp::Idiv => {
                        let raw = (u128::from(acc.high) << w) | u128::from(acc.low);
                        let n = ((raw << (128 - 2 * w)) as i128) >> (128 - 2 * w);
                        let dv = i128::from(x86_arith::sign_extend(s, size));
                        dv != 0
                            && n.checked_div(dv)
                                .is_some_and(|q| q >= -(1i128 << (w - 1)) && q < (1i128 << (w - 1)))
                    }
                    _ => panic!("{op:?} reported #DE"),
                };
                assert!(!fits, "{op:?} {size} {acc:x?} {s:#x}: #DE without cause");
            }
        }
    }
    for cc in 0..16 {
        assert_eq!(
            x86_arith::condition(cc, fl),
            native_condition(cc, fl),
            "cc {cc} fl={fl:#x}"
        );
    }
}

/// The decoded instruction against iced's instruction information.
fn check_decoded(bytes: &[u8], bitness: u32, insn: &MmioInstruction) {
    assert!((1..=bytes.len()).contains(&insn.len), "{insn:?}");
    assert!(matches!(insn.size, 1 | 2 | 4 | 8), "{insn:?}");
    let mut decoder = Decoder::new(bitness, bytes, DecoderOptions::NONE);
    let instr = decoder.decode();
    assert_eq!(instr.len(), insn.len, "{insn:?}");
    let mut factory = InstructionInfoFactory::new();
    let info = factory.info(&instr);
    let used = info.used_memory();
    if let Access::SegmentLoad(load) = insn.kind {
        // A far pointer is the offset and the 16-bit selector after it.
        let operand = match load {
            SegmentLoad::FarPointer { .. } => usize::from(insn.size) + 2,
            _ => usize::from(insn.size),
        };
        assert_eq!(used.len(), 1, "{insn:?}: {used:?}");
        assert_eq!(used[0].memory_size().size(), operand, "{insn:?}: {used:?}");
        return;
    }
    if let Access::Stack(_) = insn.kind {
        // The stack slot (and `m` of CALL m) at the operand size; PUSH Sreg of a
        // wider operand size writes 16 bits.
        assert!(
            used.iter().all(|u| matches!(u.memory_size().size(), 2)
                || u.memory_size().size() == usize::from(insn.size)),
            "{insn:?}: {used:?}"
        );
        return;
    }
    if matches!(
        insn.kind,
        Access::Push | Access::Pop | Access::String { .. }
    ) {
        // A second memory operand (the stack, the string's other side): every one
        // iced names with a size has the element size (it gives REP forms' ranges
        // no size).
        let repeated = matches!(
            insn.kind,
            Access::String { rep, .. } if rep != Rep::Once
        );
        assert!(
            repeated
                || used
                    .iter()
                    .any(|u| u.memory_size().size() == usize::from(insn.size)),
            "{insn:?}: {used:?}"
        );
        for u in used {
            let n = u.memory_size().size();
            assert!(n == 0 || n == usize::from(insn.size), "{insn:?}: {used:?}");
        }
        return;
    }
    assert_eq!(used.len(), 1, "{insn:?}: {used:?}");
    // CMPXCHG8B/16B: the operand is two halves, the device sees 8-byte accesses.
    let operand = match insn.kind {
        Access::CompareExchangeDouble { half } => 2 * usize::from(half),
        _ => usize::from(insn.size),
    };
    assert_eq!(used[0].memory_size().size(), operand, "{insn:?}");
    let (reads, writes) = match used[0].access() {
        OpAccess::Read | OpAccess::CondRead => (true, false),
        OpAccess::Write | OpAccess::CondWrite => (false, true),
        OpAccess::ReadWrite | OpAccess::ReadCondWrite => (true, true),
        other => panic!("{insn:?}: memory access {other:?}"),
    };
    assert_eq!((insn.reads(), insn.writes()), (reads, writes), "{insn:?}");
}

/// Guest RAM the memory forms may write (a copy of the input's).
struct RamCopy(Vec<u8>);

impl GuestMemory for RamCopy {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), ()> {
        Ram(&self.0).read(gpa, buf)
    }
}

impl GuestMemoryMut for RamCopy {
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), ()> {
        let start = usize::try_from(gpa).map_err(|_| ())?;
        let end = start.checked_add(data.len()).ok_or(())?;
        self.0.get_mut(start..end).ok_or(())?.copy_from_slice(data);
        Ok(())
    }
}

type State = (GuestRegisters, u64, u64);

/// PUSH/POP, MOV Sreg and the string instructions: an error changes no register and
/// touches no device; otherwise only the registers the form moves change, by what the
/// number of elements done says.
fn check_memory_forms(
    insn: &MmioInstruction,
    result: Result<Step, mmio::MmioError>,
    log: &[(u64, u8, Option<u64>)],
    (regs0, rsp0, rflags0): State,
    (regs, rsp, rflags): State,
    env: &Env<'_, RamCopy>,
) {
    let step = match result {
        Err(_) => {
            assert!(log.is_empty(), "{insn:?}: {log:?}");
            assert_eq!((regs, rsp, rflags), (regs0, rsp0, rflags0), "{insn:?}");
            return;
        }
        Ok(step) => step,
    };
    assert_ne!(step, Step::Fault(mmio::Fault::DivideError), "{insn:?}");
    for &(_, size, write) in log {
        assert_eq!(size, insn.size, "{insn:?}");
        if let Some(v) = write {
            assert_eq!(v & !mask(size), 0, "{insn:?} wrote {v:#x}");
        }
    }
    let stack = if guest_walk::code_bitness(&env.cr) == 64 {
        8
    } else if env.segments[2].unwrap().attrib & vcpu::state::attrib::DB != 0 {
        4
    } else {
        2
    };
    let size = u64::from(insn.size);
    let low = |v: u64, w: u8| v & mask(w);
    match insn.kind {
        Access::Push | Access::Pop => {
            assert_eq!(step, Step::Done);
            assert_eq!((regs, rflags), (regs0, rflags0), "{insn:?}");
            let moved = if insn.kind == Access::Push {
                rsp0.wrapping_sub(size)
            } else {
                rsp0.wrapping_add(size)
            };
            assert_eq!(low(rsp, stack), low(moved, stack), "{insn:?}");
            // SP merges into RSP; ESP is written as a 32-bit register (zero-extended,
            // as for the string instructions' ESI/EDI/ECX).
            if stack == 2 {
                assert_eq!(rsp & !0xffff, rsp0 & !0xffff, "{insn:?}");
            } else if stack == 4 {
                assert_eq!(rsp >> 32, 0, "{insn:?}");
            }
        }
        Access::StoreSegment { seg } => {
            assert_eq!(step, Step::Done);
            let selector = env.segments[seg as usize].unwrap().selector;
            assert_eq!(log, [(0xfee0_0030, 2, Some(u64::from(selector)))]);
            assert_eq!((regs, rsp, rflags), (regs0, rsp0, rflags0), "{insn:?}");
        }
        Access::String {
            op, addr_size, rep, ..
        } => {
            assert_eq!(rsp, rsp0, "{insn:?}");
            let am = mask(addr_size);
            let (si, di) = match op {
                StringOp::Movs | StringOp::Cmps => (true, true),
                StringOp::Lods => (true, false),
                StringOp::Stos | StringOp::Scas => (false, true),
            };
            // Elements done: from the count, or 1 without REP.
            let n = if rep == Rep::Once {
                assert_eq!(step, Step::Done);
                1
            } else {
                let left = regs.rcx & am;
                let before = regs0.rcx & am;
                assert!(left <= before, "{insn:?}");
                before - left
            };
            assert!(n <= MAX_BATCH, "{insn:?}: {n}");
            assert!(log.len() as u64 <= 2 * n, "{insn:?}: {n} elements, {log:?}");
            if step == Step::Repeat {
                assert!(n >= 1 && regs.rcx & am != 0, "{insn:?}");
            }
            let down = rflags0 & (1 << 10) != 0;
            let moved = |v: u64| {
                let d = n.wrapping_mul(size);
                low(
                    if down {
                        v.wrapping_sub(d)
                    } else {
                        v.wrapping_add(d)
                    },
                    addr_size,
                )
            };
            let check = |name: &str, used: bool, before: u64, after: u64| {
                let want = if used { moved(before) } else { before & am };
                assert_eq!(after & am, want, "{insn:?} {name}");
                if addr_size == 2 || !used || n == 0 {
                    assert_eq!(after & !am, before & !am, "{insn:?} {name}");
                } else if addr_size == 4 {
                    assert_eq!(after >> 32, 0, "{insn:?} {name}");
                }
            };
            check("rsi", si, regs0.rsi, regs.rsi);
            check("rdi", di, regs0.rdi, regs.rdi);
            let others = |r: &GuestRegisters| {
                [
                    r.rbx, r.rdx, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15,
                ]
            };
            assert_eq!(others(&regs), others(&regs0), "{insn:?}");
            if op != StringOp::Lods {
                assert_eq!(regs.rax, regs0.rax, "{insn:?}");
            }
            if rep == Rep::Once {
                assert_eq!(regs.rcx, regs0.rcx, "{insn:?}");
            }
            if !matches!(op, StringOp::Cmps | StringOp::Scas) {
                assert_eq!(rflags, rflags0, "{insn:?}");
            } else {
                assert_eq!(rflags & !flags::STATUS, rflags0 & !flags::STATUS);
            }
        }
        _ => unreachable!(),
    }
}

/// `CMPXCHG8B` (`half` 4) / `CMPXCHG16B` (`half` 8) at the 16-byte aligned `gpa`,
/// from the SDM's definition: 8-byte device accesses (the 16-byte operand as two, at
/// ascending addresses), the reads before the writes; ZF alone of the flags; equal:
/// ECX:EBX / RCX:RBX written, no register changed; not equal: the old value written
/// back and in EDX:EAX / RDX:RAX (32-bit halves zero-extended), nothing else changed.
fn check_compare_exchange_double(
    half: u8,
    gpa: u64,
    log: &[(u64, u8, Option<u64>)],
    reads: [u64; 4],
    (regs0, rflags0): (GuestRegisters, u64),
    (regs, rflags): (GuestRegisters, u64),
) {
    let m = mask(half);
    let (old, new) = if half == 4 {
        let old = (reads[0] & m, reads[0] >> 32);
        assert_eq!(log.len(), 2);
        assert_eq!(log[0], (gpa, 8, None));
        (old, log[1])
    } else {
        assert_eq!(log.len(), 4);
        assert_eq!(log[..2], [(gpa, 8, None), (gpa + 8, 8, None)]);
        ((reads[0], reads[1]), log[2])
    };
    let equal = old == (regs0.rax & m, regs0.rdx & m);
    let written = if equal {
        (regs0.rbx & m, regs0.rcx & m)
    } else {
        old
    };
    if half == 4 {
        assert_eq!(new, (gpa, 8, Some(written.0 | written.1 << 32)));
    } else {
        assert_eq!(new, (gpa, 8, Some(written.0)));
        assert_eq!(log[3], (gpa + 8, 8, Some(written.1)));
    }
    let mut want = regs0;
    if !equal {
        want.rax = old.0;
        want.rdx = old.1;
    }
    assert_eq!(regs, want);
    assert_eq!(rflags & !flags::ZF, rflags0 & !flags::ZF);
    assert_eq!(rflags & flags::ZF != 0, equal);
}

/// A segment-register load: only in real-address or virtual-8086 mode (else an error
/// with nothing done), the selector from the last device read, base = selector << 4,
/// limit and attributes as they were; a far pointer's offset into its register, a
/// `POP`'s RSP moved by the operand size; nothing else changes.
#[allow(clippy::too_many_arguments)]
fn check_segment_load(
    insn: &MmioInstruction,
    load: SegmentLoad,
    result: Result<Step, mmio::MmioError>,
    log: &[(u64, u8, Option<u64>)],
    reads: [u64; 4],
    (regs0, rsp0, rflags0): State,
    (regs, rsp, rflags): State,
    env: &Env<'_, RamCopy>,
) {
    let real_like = env.cr.cr0 & 1 == 0 || rflags0 & (1 << 17) != 0;
    let Ok(step) = result else {
        assert!(log.is_empty(), "{insn:?}: {log:?}");
        assert_eq!((regs, rsp, rflags), (regs0, rsp0, rflags0), "{insn:?}");
        return;
    };
    assert!(log.iter().all(|a| a.2.is_none()), "{insn:?}: {log:?}");
    let selector = reads[(log.len() - 1) % 4] as u16;
    match step {
        Step::LoadSegment(seg, s) => {
            assert!(real_like, "{insn:?} loaded a segment in protected mode");
            assert_eq!(seg, load.segment());
            let cached = env.segments[seg as usize].unwrap();
            assert_eq!(s.selector, selector, "{insn:?}");
            assert_eq!(s.base, u64::from(selector) << 4, "{insn:?}");
            assert_eq!(
                (s.limit, s.attrib),
                (cached.limit, cached.attrib),
                "{insn:?}"
            );
        }
        // Protected and long mode: the descriptor load is left to `emulate`.
        Step::LoadSelector(seg, sel) => {
            assert!(!real_like, "{insn:?}");
            assert_eq!((seg, sel), (load.segment(), selector), "{insn:?}");
        }
        other => panic!("{insn:?}: {other:?}"),
    }
    assert_eq!(rflags, rflags0);
    let mut want_rsp = rsp0;
    match load {
        SegmentLoad::Move(_) => assert_eq!(log.len(), 1),
        SegmentLoad::Pop(_) => {
            assert_eq!(log.len(), 1);
            let stack = if env.segments[2].unwrap().attrib & vcpu::state::attrib::DB != 0 {
                4
            } else {
                2
            };
            let moved = rsp0.wrapping_add(u64::from(insn.size));
            assert_eq!(rsp & mask(stack), moved & mask(stack), "{insn:?}");
            want_rsp = rsp;
        }
        SegmentLoad::FarPointer { reg, .. } => {
            assert_eq!(log.len(), 2);
            assert_eq!(log[1].0, log[0].0.wrapping_add(u64::from(insn.size)));
            let mut all_regs = all(&regs0, rsp0);
            let offset = reads[0] & mask(insn.size);
            let i = slot(reg);
            all_regs[i] = match insn.size {
                2 => (all_regs[i] & !0xffff) | offset,
                _ => offset,
            };
            assert_eq!(all(&regs, rsp), all_regs, "{insn:?}");
            return;
        }
    }
    assert_eq!((regs, rsp), (regs0, want_rsp), "{insn:?}");
}

/// A descriptor load of `seg` with the selector and tables from the input's registers
/// (R11; GDTR from RSI/RDI, LDTR from RBP/R8/R9, CPL from R10) against the SDM's
/// rules: a fault has the right vector and error code and writes nothing; a load
/// writes at most the accessed bit, and what it loads passes the checks.
fn check_descriptor_load(env: &mut Env<'_, RamCopy>, regs: &GuestRegisters, seg: vcpu::SegReg) {
    use kernel::vmm::descriptor_load::{load, Context};
    use vcpu::state::{attrib, Segment, TableRegister};
    let selector = regs.r11 as u16;
    let ctx = Context {
        cr: env.cr,
        gdtr: TableRegister {
            base: regs.rsi,
            limit: regs.rdi as u16,
        },
        ldtr: Segment {
            selector: 0,
            base: regs.rbp,
            limit: regs.r8 as u32,
            attrib: regs.r9 as u16,
        },
        cpl: (regs.r10 & 3) as u8,
    };
    let before = env.mem.0.clone();
    let Ok(result) = load(env.mem, &ctx, seg, selector) else {
        assert_eq!(env.mem.0, before);
        return;
    };
    let changed = env
        .mem
        .0
        .iter()
        .zip(&before)
        .filter(|(a, b)| a != b)
        .count();
    let (rpl, cpl) = (selector & 3, u16::from(ctx.cpl));
    match result {
        Err(e) => {
            assert_eq!(changed, 0);
            assert!(matches!(e.vector, 11..=13), "{e:?}");
            let code = e.error_code.unwrap();
            assert!(code == u32::from(selector & 0xfffc) || code == 0, "{e:?}");
        }
        Ok(s) => {
            assert!(changed <= 1);
            assert_eq!(s.selector, selector);
            if selector & !3 == 0 {
                assert!(!s.usable());
                return;
            }
            assert!(s.usable() && s.attrib & attrib::P != 0 && s.attrib & attrib::S != 0);
            let ty = s.attrib & attrib::TYPE_MASK;
            let dpl = u16::from(s.dpl());
            if seg == vcpu::SegReg::Ss {
                assert!(
                    ty & 8 == 0 && ty & 2 != 0 && dpl == cpl && rpl == cpl,
                    "{s:?}"
                );
            } else {
                assert!(ty & 8 == 0 || ty & 2 != 0, "{s:?}");
                if ty & 8 == 0 || ty & 4 == 0 {
                    assert!(dpl >= rpl.max(cpl), "{s:?}");
                }
            }
        }
    }
}

/// A push, pop, call or return whose stack is the device: an error or a fault
/// changes nothing (a fault may follow the one read); otherwise the first device
/// access is the exit's, in the instruction's direction, RSP moves by the operand size
/// within the stack's address size, only the registers the form names change, and
/// RFLAGS only for POPF (never VM or a reserved bit).
fn check_stack(
    insn: &MmioInstruction,
    op: StackOp,
    result: Result<Step, mmio::MmioError>,
    log: &[(u64, u8, Option<u64>)],
    (regs0, rsp0, rflags0): State,
    (regs, rsp, rflags): State,
    env: &Env<'_, RamCopy>,
) {
    const GPA: u64 = 0xfee0_0030;
    let step = match result {
        Err(_) => {
            assert!(log.is_empty(), "{insn:?}: {log:?}");
            assert_eq!((regs, rsp, rflags), (regs0, rsp0, rflags0), "{insn:?}");
            return;
        }
        Ok(step) => step,
    };
    if let Step::Fault(f) = step {
        assert_eq!(f, mmio::Fault::GeneralProtection, "{insn:?}");
        assert!(log.len() <= 1, "{insn:?}: {log:?}");
        assert_eq!((regs, rsp, rflags), (regs0, rsp0, rflags0), "{insn:?}");
        return;
    }
    let branches = matches!(
        op,
        StackOp::CallRel { .. }
            | StackOp::CallReg { .. }
            | StackOp::CallMem { .. }
            | StackOp::CallMemStack { .. }
            | StackOp::Ret { .. }
    );
    assert_eq!(
        matches!(step, Step::Jump(_)),
        branches,
        "{insn:?}: {step:?}"
    );
    assert!(!log.is_empty() && log.len() <= 2, "{insn:?}: {log:?}");
    assert_eq!(log[0].0, GPA, "{insn:?}");
    assert_eq!(log[0].2.is_some(), insn.writes(), "{insn:?}");
    for &(_, size, write) in log {
        assert!(size == insn.size || size == 2, "{insn:?}: {log:?}");
        if let Some(v) = write {
            assert_eq!(v & !mask(size), 0, "{insn:?} wrote {v:#x}");
        }
    }
    let stack = if guest_walk::code_bitness(&env.cr) == 64 {
        8
    } else if env.segments[2].unwrap().attrib & vcpu::state::attrib::DB != 0 {
        4
    } else {
        2
    };
    let size = u64::from(insn.size);
    let moved = match op {
        StackOp::Push(_)
        | StackOp::CallRel { .. }
        | StackOp::CallReg { .. }
        | StackOp::CallMem { .. }
        | StackOp::CallMemStack { .. }
        | StackOp::PushMem(_) => Some(rsp0.wrapping_sub(size)),
        StackOp::PopReg(r) if r != Reg::Rsp => Some(rsp0.wrapping_add(size)),
        StackOp::PopFlags | StackOp::PopMem(_) => Some(rsp0.wrapping_add(size)),
        StackOp::Ret { release } => Some(rsp0.wrapping_add(size + u64::from(release))),
        StackOp::PopReg(_) | StackOp::Leave | StackOp::Enter { .. } => None,
    };
    if let Some(moved) = moved {
        assert_eq!(rsp & mask(stack), moved & mask(stack), "{insn:?}");
        if stack == 2 {
            assert_eq!(rsp & !0xffff, rsp0 & !0xffff, "{insn:?}");
        }
    }
    let named = match op {
        StackOp::PopReg(r) => Some(slot(r)),
        StackOp::Leave | StackOp::Enter { .. } => Some(slot(Reg::Rbp)),
        _ => None,
    };
    let (before, after) = (all(&regs0, rsp0), all(&regs, rsp));
    for i in 0..16 {
        if i != slot(Reg::Rsp) && Some(i) != named {
            assert_eq!(before[i], after[i], "{insn:?} changed register {i}");
        }
    }
    if op == StackOp::PopFlags {
        // VM (bit 17) and the reserved bits never change.
        let kept = (1 << 17) | !0x3f_7fd5;
        assert_eq!(rflags & kept, rflags0 & kept, "{insn:?}");
    } else {
        assert_eq!(rflags, rflags0, "{insn:?}");
    }
}

/// Carries out `insn` and checks what it did to the device, registers and flags.
fn check_execute(
    insn: &MmioInstruction,
    regs0: GuestRegisters,
    rsp0: u64,
    rflags0: u64,
    reads: [u64; 4],
    env: &mut Env<'_, RamCopy>,
) {
    const GPA: u64 = 0xfee0_0030;
    let (mut regs, mut rsp, mut rflags) = (regs0, rsp0, rflags0);
    let mut log: Vec<(u64, u8, Option<u64>)> = Vec::new();
    let mut next = reads.iter().copied().cycle();
    let mut device = |gpa: u64, size: u8, write: Option<u64>| {
        log.push((gpa, size, write));
        next.next().unwrap_or(0)
    };
    let result = mmio::execute(
        &mut regs,
        &mut rsp,
        &mut rflags,
        insn,
        GPA,
        &mut device,
        env,
    );
    if matches!(
        insn.kind,
        Access::Push | Access::Pop | Access::StoreSegment { .. } | Access::String { .. }
    ) {
        check_memory_forms(
            insn,
            result,
            &log,
            (regs0, rsp0, rflags0),
            (regs, rsp, rflags),
            env,
        );
        return;
    }
    if let Access::SegmentLoad(load) = insn.kind {
        check_segment_load(
            insn,
            load,
            result,
            &log,
            reads,
            (regs0, rsp0, rflags0),
            (regs, rsp, rflags),
            env,
        );
        return;
    }
    if let Access::Stack(op) = insn.kind {
        check_stack(
            insn,
            op,
            result,
            &log,
            (regs0, rsp0, rflags0),
            (regs, rsp, rflags),
            env,
        );
        return;
    }
    if let Access::CompareExchangeDouble { half } = insn.kind {
        assert_eq!(result, Ok(Step::Done), "{insn:?}");
        check_compare_exchange_double(half, GPA, &log, reads, (regs0, rflags0), (regs, rflags));
        assert_eq!(rsp, rsp0);
        return;
    }
    let result = match result {
        Ok(Step::Done) => Ok(()),
        Ok(Step::Fault(f)) => Err(f),
        other => panic!("{insn:?}: {other:?}"),
    };
    if let Err(fault) = result {
        // #DE only from DIV/IDIV, after the one read, with nothing changed.
        assert!(
            matches!(
                insn.kind,
                Access::MulDiv {
                    op: MulDivOp::Div | MulDivOp::Idiv
                }
            ),
            "{insn:?}: {fault:?}"
        );
        assert_eq!(log.len(), 1, "{insn:?}");
        assert_eq!((regs, rsp, rflags), (regs0, rsp0, rflags0), "{insn:?}");
        return;
    }
    // The device: a read first when the instruction reads, a write when it writes.
    let want: Vec<bool> = match (insn.reads(), insn.writes()) {
        (true, true) => vec![false, true],
        (true, false) => vec![false],
        (false, true) => vec![true],
        (false, false) => unreachable!("{insn:?} touches nothing"),
    };
    let got: Vec<bool> = log.iter().map(|a| a.2.is_some()).collect();
    assert_eq!(got, want, "{insn:?}");
    for &(gpa, size, write) in &log {
        assert_eq!((gpa, size), (GPA, insn.size), "{insn:?}");
        if let Some(v) = write {
            assert_eq!(v & !mask(size), 0, "{insn:?} wrote {v:#x}");
        }
    }
    // Flags: only the status flags, only when the instruction sets them.
    if insn.sets_flags() {
        assert_eq!(
            rflags & !flags::STATUS,
            rflags0 & !flags::STATUS,
            "{insn:?}"
        );
    } else {
        assert_eq!(rflags, rflags0, "{insn:?}");
    }
    // Registers: only the ones named, as x86 writes them.
    let (before, after) = (all(&regs0, rsp0), all(&regs, rsp));
    let status = |f: u64| assert_eq!(rflags & flags::STATUS, f & flags::STATUS, "{insn:?}");
    let dests: Vec<(Reg, u8)> = match insn.kind {
        Access::Read {
            dest,
            dest_size,
            extend,
        } => {
            let loaded = reads[0] & mask(insn.size);
            let v = value(&regs, rsp, dest, dest_size);
            let expect = match extend {
                Extend::None | Extend::Zero => loaded,
                Extend::Sign => {
                    let shift = 64 - 8 * u32::from(insn.size);
                    (((loaded << shift) as i64) >> shift) as u64 & mask(dest_size)
                }
            };
            assert_eq!(v, expect, "{insn:?}");
            vec![(dest, dest_size)]
        }
        Access::Write { src } => {
            let stored = match src {
                Operand::Imm(v) => v,
                Operand::Reg(reg, size) => value(&regs0, rsp0, reg, size),
            };
            assert_eq!(log[0].2, Some(stored & mask(insn.size)), "{insn:?}");
            vec![]
        }
        Access::AluToMemory { op, src } => {
            let right = match src {
                Operand::Imm(v) => v,
                Operand::Reg(reg, size) => value(&regs0, rsp0, reg, size),
            };
            let (result, f) = mmio::alu(op, insn.size, reads[0], right, rflags0 & flags::CF != 0);
            if op.stores() {
                assert_eq!(log[1].2, Some(result), "{insn:?}");
            }
            assert_eq!(rflags & flags::STATUS, f, "{insn:?}");
            vec![]
        }
        Access::AluToRegister { op, reg } => {
            let left = value(&regs0, rsp0, reg, insn.size);
            let (result, f) = mmio::alu(op, insn.size, left, reads[0], rflags0 & flags::CF != 0);
            assert_eq!(rflags & flags::STATUS, f, "{insn:?}");
            if op.stores() {
                assert_eq!(value(&regs, rsp, reg, insn.size), result, "{insn:?}");
                vec![(reg, insn.size)]
            } else {
                vec![]
            }
        }
        Access::Exchange { reg } => {
            assert_eq!(
                log[1].2,
                Some(value(&regs0, rsp0, reg, insn.size)),
                "{insn:?}"
            );
            assert_eq!(
                value(&regs, rsp, reg, insn.size),
                reads[0] & mask(insn.size),
                "{insn:?}"
            );
            vec![(reg, insn.size)]
        }
        Access::Unary { op } => {
            let (r, f) = x86_arith::unary(op, insn.size, reads[0], rflags0);
            assert_eq!(log[1].2, Some(r), "{insn:?}");
            assert_eq!(rflags, f, "{insn:?}");
            vec![]
        }
        Access::Shift { op, count } => {
            let n = match count {
                Operand::Imm(v) => v,
                Operand::Reg(reg, size) => value(&regs0, rsp0, reg, size),
            };
            let (r, f) = x86_arith::shift(op, insn.size, reads[0], n as u8, rflags0);
            assert_eq!(log[1].2, Some(r), "{insn:?}");
            assert_eq!(rflags, f, "{insn:?}");
            vec![]
        }
        Access::BitTest { op, offset } => {
            let bit = match offset {
                Operand::Imm(v) => v,
                Operand::Reg(reg, size) => value(&regs0, rsp0, reg, size),
            };
            let (r, f) = x86_arith::bit_test(op, insn.size, reads[0], bit, rflags0);
            if op != BitOp::Bt {
                assert_eq!(log[1].2, Some(r), "{insn:?}");
            }
            assert_eq!(rflags, f, "{insn:?}");
            vec![]
        }
        Access::ExchangeAdd { reg } => {
            let old = reads[0] & mask(insn.size);
            let (sum, f) = mmio::alu(
                AluOp::Add,
                insn.size,
                old,
                value(&regs0, rsp0, reg, insn.size),
                false,
            );
            assert_eq!(log[1].2, Some(sum), "{insn:?}");
            assert_eq!(value(&regs, rsp, reg, insn.size), old, "{insn:?}");
            status(f);
            vec![(reg, insn.size)]
        }
        Access::CompareExchange { reg } => {
            let old = reads[0] & mask(insn.size);
            let acc = value(&regs0, rsp0, Reg::Rax, insn.size);
            let (_, f) = mmio::alu(AluOp::Cmp, insn.size, acc, old, false);
            status(f);
            if acc == old {
                assert_eq!(
                    log[1].2,
                    Some(value(&regs0, rsp0, reg, insn.size)),
                    "{insn:?}"
                );
                vec![]
            } else {
                assert_eq!(log[1].2, Some(old), "{insn:?}");
                assert_eq!(value(&regs, rsp, Reg::Rax, insn.size), old, "{insn:?}");
                vec![(Reg::Rax, insn.size)]
            }
        }
        Access::SetCondition { cc } => {
            let want = u64::from(x86_arith::condition(cc, rflags0));
            assert_eq!(log[0].2, Some(want), "{insn:?}");
            vec![]
        }
        Access::CondMove { cc, reg } => {
            if x86_arith::condition(cc, rflags0) {
                assert_eq!(
                    value(&regs, rsp, reg, insn.size),
                    reads[0] & mask(insn.size),
                    "{insn:?}"
                );
            } else {
                assert_eq!(
                    value(&regs, rsp, reg, insn.size),
                    value(&regs0, rsp0, reg, insn.size),
                    "{insn:?}"
                );
            }
            vec![(reg, insn.size)]
        }
        Access::MulDiv { op } => {
            let acc = if insn.size == 1 {
                Wide {
                    low: regs0.rax & 0xff,
                    high: (regs0.rax >> 8) & 0xff,
                }
            } else {
                Wide {
                    low: regs0.rax & mask(insn.size),
                    high: regs0.rdx & mask(insn.size),
                }
            };
            let (out, f) = x86_arith::mul_div(op, insn.size, acc, reads[0], rflags0)
                .expect("no #DE: checked above");
            assert_eq!(rflags, f, "{insn:?}");
            if insn.size == 1 {
                assert_eq!(
                    value(&regs, rsp, Reg::Rax, 2),
                    out.high << 8 | out.low,
                    "{insn:?}"
                );
                vec![(Reg::Rax, 2)]
            } else {
                assert_eq!(value(&regs, rsp, Reg::Rax, insn.size), out.low, "{insn:?}");
                assert_eq!(value(&regs, rsp, Reg::Rdx, insn.size), out.high, "{insn:?}");
                vec![(Reg::Rax, insn.size), (Reg::Rdx, insn.size)]
            }
        }
        Access::ImulToRegister { reg, imm } => {
            let m = reads[0] & mask(insn.size);
            let (l, r) = match imm {
                Some(i) => (m, i),
                None => (value(&regs0, rsp0, reg, insn.size), m),
            };
            let (p, f) = x86_arith::imul_truncated(insn.size, l, r, rflags0);
            assert_eq!(value(&regs, rsp, reg, insn.size), p, "{insn:?}");
            assert_eq!(rflags, f, "{insn:?}");
            vec![(reg, insn.size)]
        }
        Access::Push | Access::Pop | Access::StoreSegment { .. } | Access::String { .. } => {
            unreachable!("checked by check_memory_forms")
        }
        Access::CompareExchangeDouble { .. } => {
            unreachable!("checked by check_compare_exchange_double")
        }
        Access::Stack(_) => unreachable!("checked by check_stack"),
        Access::SegmentLoad(_) => unreachable!("checked by check_segment_load"),
    };
    for i in 0..16 {
        match dests.iter().find(|(reg, _)| slot(*reg) == i) {
            Some(&(reg, size)) => check_register_write(before[i], after[i], reg, size),
            None => assert_eq!(before[i], after[i], "{insn:?} changed register {i}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < HEADER {
        return;
    }
    let (head, ram) = data.split_at(HEADER);
    let mode = head[0];
    let (cr3, rip, cs_base) = (u64_at(head, 1), u64_at(head, 9), u64_at(head, 17));
    let regs = regs_from(&head[25..]);
    let (rsp, rflags) = (u64_at(head, 25 + 15 * 8), u64_at(head, 25 + 16 * 8) | 2);
    let reads = core::array::from_fn(|i| u64_at(head, 25 + 17 * 8 + 8 * i));

    // The arithmetic core against the processor, on this input's values.
    let size = [1, 2, 4, 8][usize::from(mode >> 6)];
    for op in OPS {
        check_alu(op, size, regs.rax, regs.rbx, rflags & flags::CF != 0);
    }
    check_arith(size, regs.rax, regs.rbx, regs.rcx, regs.rdx, rflags);

    let paging = mode & 4 != 0;
    let (cr0, efer, cs_long) = match mode & 3 {
        0 => (0, 0, false),
        1 => (1, 0, false),
        // Long mode needs paging; LMA with CS.L (64-bit) or without (compatibility).
        2 => (1 | 1 << 31, 1 << 10 | 1 << 8, true),
        _ => (1 | 1 << 31, 1 << 10 | 1 << 8, false),
    };
    let cr0 = if paging { cr0 | 1 << 31 } else { cr0 };
    let cr4 = (u64::from(mode & 8 != 0) << 5)
        | (u64::from(mode & 16 != 0) << 12)
        | (u64::from(mode & 32 != 0) << 4);
    let (rip, cs_base) = if cr0 & 1 << 31 == 0 && !ram.is_empty() {
        let n = ram.len() as u64;
        (rip % n, cs_base % n)
    } else {
        (rip, cs_base)
    };
    let cr = ControlRegs {
        cr0,
        cr3,
        cr4,
        efer,
        cs_base,
        cs_long,
    };
    let mem = Ram(ram);
    let mut bytes = [0u8; 15];
    let Ok(n) = guest_walk::fetch_instruction(&mem, &cr, rip, &mut bytes) else {
        return;
    };
    assert!((1..=15).contains(&n), "{n} bytes fetched");
    let bitness = guest_walk::code_bitness(&cr);
    let Ok(insn) = mmio::decode_at(&bytes[..n], bitness, rip) else {
        let mut copy = RamCopy(ram.to_vec());
        check_simd(&bytes[..n], bitness, rip, head, regs, rsp, reads, cr, &mut copy);
        return;
    };
    check_decoded(&bytes[..n], bitness, &insn);
    // The exit's direction (mode byte bit 6) picks which side of PUSH m / POP m /
    // CALL m is the device.
    let insn = mmio_stack::orient(insn, head[0] & 0x40 != 0, &bytes[..n], bitness, rip);
    // Segment registers from the input: selectors from RBX, bases from RDX, SS.B from
    // the mode byte's bit 1 (any of them may be nonsense, as a guest's may).
    let segments = core::array::from_fn(|i| {
        Some(vcpu::state::Segment {
            selector: (regs.rbx >> (8 * i)) as u16,
            attrib: if head[0] & 2 != 0 {
                vcpu::state::attrib::DB
            } else {
                0
            },
            limit: u32::MAX,
            base: regs.rdx.rotate_left(8 * i as u32),
        })
    });
    let mut copy = RamCopy(ram.to_vec());
    let mut env = Env {
        mem: &mut copy,
        cr,
        segments,
    };
    check_execute(&insn, regs, rsp, rflags, reads, &mut env);
    if let Access::SegmentLoad(load) = insn.kind {
        check_descriptor_load(&mut env, &regs, load.segment());
    }
});

/// The MMX/SSE moves (see the header). The input's mode byte bits 6-7 and RFLAGS'
/// upper bytes choose CR0.EM/TS/NE, CR4.OSFXSR and the CPUID features; the FXSAVE
/// image is filled from the register values.
#[allow(clippy::too_many_arguments)]
fn check_simd(
    bytes: &[u8],
    bitness: u32,
    rip: u64,
    head: &[u8],
    regs: GuestRegisters,
    rsp: u64,
    reads: [u64; 4],
    cr: ControlRegs,
    ram: &mut RamCopy,
) {
    let Ok((mv, insn)) = mmio_sse::decode(bytes, bitness, rip) else {
        if let Ok((alu, _)) = mmio_simd_alu::decode(bytes, bitness, rip) {
            check_simd_alu(bytes, bitness, rip, head, alu, regs, reads, cr, ram);
            return;
        }
        check_x87(bytes, bitness, rip, regs, rsp, reads, cr, ram);
        return;
    };
    assert_eq!(insn.len(), mv.len);
    assert!(matches!(mv.width, 4 | 8 | 16), "{mv:?}");
    // iced's view of the same bytes.
    let mut decoder = Decoder::with_ip(bitness, bytes, rip, DecoderOptions::NONE);
    let instr = decoder.decode();
    assert_eq!(instr.len(), mv.len, "{mv:?}");
    let mut factory = InstructionInfoFactory::new();
    let info = factory.info(&instr);
    let used = info.used_memory();
    assert_eq!(used.len(), 1, "{mv:?}: {used:?}");
    assert_eq!(used[0].memory_size().size(), usize::from(mv.width), "{mv:?}");
    let load = match used[0].access() {
        OpAccess::Read => true,
        OpAccess::Write => false,
        other => panic!("{mv:?}: memory access {other:?}"),
    };
    assert_eq!(mv.load, load, "{mv:?}");
    let gpr = |r: iced_x86::Register| -> Option<u64> {
        let n = r as u32;
        let i = [iced_x86::Register::RAX, iced_x86::Register::EAX, iced_x86::Register::AX]
            .iter()
            .find_map(|&f| (f as u32..f as u32 + 16).contains(&n).then(|| n - f as u32))?;
        let size = r.size() as u8;
        Some(all(&regs, rsp)[i as usize] & mask(size))
    };
    let seg_zero = |r: iced_x86::Register, _: usize, _: usize| {
        if r.is_segment_register() {
            Some(0)
        } else {
            gpr(r)
        }
    };
    let offset = mmio_sse::effective_offset(&insn, &regs, rsp);
    assert_eq!(
        offset.map(|(_, o)| o),
        used[0].virtual_address(0, seg_zero),
        "{mv:?}"
    );

    let knobs = head[0] >> 6 | (regs.rbp as u8) << 2;
    let cr = ControlRegs {
        cr0: cr.cr0 | u64::from(knobs & 1) << 2 | u64::from(knobs & 2) << 2 | 1 << 5,
        cr4: cr.cr4 | u64::from(knobs & 4 != 0) << 9,
        ..cr
    };
    let b = (regs.rbp >> 8) as u8;
    let features = SimdFeatures {
        mmx: b & 1 != 0,
        sse: b & 2 != 0,
        sse2: b & 4 != 0,
        sse3: b & 8 != 0,
        ssse3: b & 32 != 0,
        sse41: b & 16 != 0,
    };
    let mut fx0 = FxArea::initial();
    for (i, chunk) in fx0.0[32..].chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&all(&regs, rsp)[i % 16].rotate_left(i as u32).to_le_bytes());
    }
    // FSW with TOP (and maybe ES) from the input.
    fx0.0[2..4].copy_from_slice(&(regs.rsi as u16 & 0x3880).to_le_bytes());
    let address = regs.rdi;
    let fault = mmio_sse::check(&mv, &cr, features, &fx0, address);
    let em = cr.cr0 & 4 != 0;
    let ts = cr.cr0 & 8 != 0;
    let osfxsr = cr.cr4 & 1 << 9 != 0;
    let has = match mv.needs {
        mmio_sse::Extension::Mmx => features.mmx,
        mmio_sse::Extension::Sse => features.sse,
        mmio_sse::Extension::Sse2 => features.sse2,
        mmio_sse::Extension::Sse3 => features.sse3,
        mmio_sse::Extension::Ssse3 => features.ssse3,
        mmio_sse::Extension::Sse41 => features.sse41,
    };
    let expect = match mv.reg {
        SimdReg::Gpr(_) => (!has).then_some(vcpu::Exception::UD),
        SimdReg::Mm(_) if em || !has => Some(vcpu::Exception::UD),
        SimdReg::Xmm(_) if em || !has || !osfxsr => Some(vcpu::Exception::UD),
        _ if ts => Some(vcpu::Exception::NM),
        SimdReg::Mm(_)
            if fx0.fsw() & 0x80 != 0
                || fx0.fsw() & !u16::from_le_bytes([fx0.0[0], fx0.0[1]]) & 0x3F != 0 =>
        {
            Some(vcpu::Exception::MF)
        }
        _ if mv.aligned && address % 16 != 0 => Some(vcpu::Exception::GP0),
        _ => None,
    };
    assert_eq!(fault, Ok(expect), "{mv:?} {cr:?} {features:?}");

    // Execution, on the input's state.
    let segments = core::array::from_fn(|i| {
        Some(vcpu::state::Segment {
            selector: 0,
            attrib: 0,
            limit: u32::MAX,
            base: regs.rdx.rotate_left(8 * i as u32),
        })
    });
    let ram0 = ram.0.clone();
    let mut env = Env {
        mem: ram,
        cr,
        segments,
    };
    const GPA: u64 = 0xfee0_0000;
    let operand = match offset {
        Some((seg, offset)) if head[0] & 0x40 != 0 => mmio_sse::Operand::Linear { seg, offset },
        _ => mmio_sse::Operand::Exit { gpa: GPA },
    };
    let mut fx = fx0.clone();
    let mut log: Vec<(u64, u8, Option<u64>)> = Vec::new();
    let mut next = reads.iter().copied().cycle();
    let mut device = |gpa: u64, size: u8, write: Option<u64>| {
        log.push((gpa, size, write));
        next.next().unwrap_or(0)
    };
    let result = mmio_sse::execute(&mv, &regs, rsp, &mut fx, operand, &mut device, &mut env);
    if result.is_err() {
        assert!(log.is_empty(), "{mv:?}: {log:?}");
        assert_eq!(fx, fx0, "{mv:?}");
        assert_eq!(env.mem.0, ram0, "{mv:?}");
        return;
    }
    let piece = mv.width.min(8);
    assert!(log.len() <= usize::from(mv.width / piece), "{mv:?}: {log:?}");
    for (k, &(gpa, size, write)) in log.iter().enumerate() {
        assert_eq!(size, piece, "{mv:?}: {log:?}");
        assert_eq!(write.is_some(), !mv.load, "{mv:?}: {log:?}");
        if let Some(v) = write {
            assert_eq!(v & !mask(size), 0, "{mv:?}: {log:?}");
        }
        if k > 0 && matches!(operand, mmio_sse::Operand::Exit { .. }) {
            assert_eq!(gpa, log[k - 1].0 + u64::from(piece), "{mv:?}: {log:?}");
        }
    }
    // Only the named register changes (after the MMX-mode switch for MM forms).
    let mut expect_fx = fx0.clone();
    if let SimdReg::Mm(_) = mv.reg {
        expect_fx.enter_mmx_mode();
        assert_eq!((fx.top(), fx.abridged_tags()), (0, 0xFF));
    }
    let mut rest = fx.clone();
    match mv.reg {
        SimdReg::Xmm(n) if mv.load => rest.set_xmm(usize::from(n), expect_fx.xmm(usize::from(n))),
        SimdReg::Mm(n) if mv.load => {
            let slot = 32 + 16 * usize::from(n);
            rest.0[slot..slot + 10].copy_from_slice(&expect_fx.0[slot..slot + 10]);
        }
        _ => {}
    }
    assert_eq!(rest, expect_fx, "{mv:?}: only the destination changes");
    // Stores with every piece at the device write exactly the register's bytes.
    if !mv.load && log.len() == usize::from(mv.width / piece) {
        let mut src = [0u8; 16];
        match mv.reg {
            SimdReg::Xmm(n) => {
                let x = fx0.xmm(usize::from(n));
                let lane = usize::from(mv.lane);
                src[..usize::from(mv.width)].copy_from_slice(&x[lane..lane + usize::from(mv.width)]);
            }
            SimdReg::Mm(n) => src[..8].copy_from_slice(&expect_fx.mm(usize::from(n)).to_le_bytes()),
            SimdReg::Gpr(r) => src[..8].copy_from_slice(&gpr(r).unwrap().to_le_bytes()),
        }
        for (k, &(_, size, write)) in log.iter().enumerate() {
            let at = k * usize::from(size);
            let mut b = [0u8; 8];
            b[..usize::from(size)].copy_from_slice(&src[at..at + usize::from(size)]);
            assert_eq!(write, Some(u64::from_le_bytes(b)), "{mv:?}: {log:?}");
        }
    }
}

/// The x87 loads and stores (see the header).
#[allow(clippy::too_many_arguments)]
fn check_x87(
    bytes: &[u8],
    bitness: u32,
    rip: u64,
    regs: GuestRegisters,
    rsp: u64,
    reads: [u64; 4],
    cr: ControlRegs,
    ram: &mut RamCopy,
) {
    let Ok((mv, insn)) = mmio_x87::decode(bytes, bitness, rip) else {
        return;
    };
    assert_eq!(insn.len(), mv.len);
    let mut decoder = Decoder::with_ip(bitness, bytes, rip, DecoderOptions::NONE);
    let instr = decoder.decode();
    let mut factory = InstructionInfoFactory::new();
    let info = factory.info(&instr);
    let used = info.used_memory();
    assert_eq!(used.len(), 1, "{mv:?}: {used:?}");
    assert_eq!(used[0].memory_size().size(), usize::from(mv.op.width()), "{mv:?}");
    let load = match used[0].access() {
        OpAccess::Read => true,
        OpAccess::Write => false,
        other => panic!("{mv:?}: memory access {other:?}"),
    };
    assert_eq!(mv.op.loads(), load, "{mv:?}");

    // An x87 state from the input: registers from the GPRs, FCW from RBP (any
    // rounding, any masks), FSW's TOP and flags from RSI, tags from RDI; MXCSR at
    // its reset value so the image is restorable.
    let mut fx0 = FxArea::initial();
    for (i, chunk) in fx0.0[32..160].chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&all(&regs, rsp)[i].rotate_left(i as u32).to_le_bytes());
    }
    fx0.0[0..2].copy_from_slice(&(regs.rbp as u16 & 0x0F3F | 0x40).to_le_bytes());
    let fsw = regs.rsi as u16 & 0x7F7F;
    fx0.0[2..4].copy_from_slice(&fsw.to_le_bytes());
    fx0.0[4] = regs.rdi as u8;
    let features = SimdFeatures {
        sse3: regs.rbp & 1 << 16 != 0,
        ..Default::default()
    };
    let cr = ControlRegs {
        cr0: cr.cr0 | (regs.rbp >> 17 & 3) << 2 | 1 << 5,
        ..cr
    };
    let fisttp = matches!(
        mv.op,
        vcpu::fpu::X87MemOp::FisttpM16
            | vcpu::fpu::X87MemOp::FisttpM32
            | vcpu::fpu::X87MemOp::FisttpM64
    );
    let fcw = u16::from_le_bytes([fx0.0[0], fx0.0[1]]);
    let expect = if fisttp && !features.sse3 {
        Some(vcpu::Exception::UD)
    } else if cr.cr0 & 0xC != 0 {
        Some(vcpu::Exception::NM)
    } else if fsw & !fcw & 0x3F != 0 {
        Some(vcpu::Exception::MF)
    } else {
        None
    };
    assert_eq!(mmio_x87::check(&mv, &cr, features, &fx0), Ok(expect), "{mv:?}");
    if expect.is_some() || fisttp && !std::is_x86_feature_detected!("sse3") {
        return;
    }

    let mut env = Env {
        mem: ram,
        cr,
        segments: [None; 6],
    };
    const GPA: u64 = 0xfee0_0000;
    let mut fx = fx0.clone();
    let mut log: Vec<(u64, u8, Option<u64>)> = Vec::new();
    let mut next = reads.iter().copied().cycle();
    let mut device = |gpa: u64, size: u8, write: Option<u64>| {
        log.push((gpa, size, write));
        next.next().unwrap_or(0)
    };
    let fdp = regs.r8;
    mmio_x87::execute(
        &mv,
        &mut fx,
        mmio_sse::Operand::Exit { gpa: GPA },
        rip,
        fdp,
        &mut device,
        &mut env,
    )
    .expect("a device operand cannot fail");
    let pieces: &[(u64, u8)] = match mv.op.width() {
        10 => &[(GPA, 8), (GPA + 8, 2)],
        w => &[(GPA, w)][..],
    };
    if mv.op.loads() || !log.is_empty() {
        assert_eq!(log.len(), pieces.len(), "{mv:?}: {log:?}");
    }
    for (&(gpa, size, write), &(want_gpa, want_size)) in log.iter().zip(pieces) {
        assert_eq!((gpa, size), (want_gpa, want_size), "{mv:?}: {log:?}");
        assert_eq!(write.is_some(), !mv.op.loads(), "{mv:?}: {log:?}");
        if let Some(v) = write {
            assert_eq!(v & !mask(size), 0, "{mv:?}: {log:?}");
        }
    }
    assert_eq!(fx.mxcsr(), fx0.mxcsr(), "{mv:?}");
    assert_eq!(fx.0[160..416], fx0.0[160..416], "{mv:?}: XMM registers");
    assert_eq!(fx.0[0..2], fx0.0[0..2], "{mv:?}: FCW");
    // FIP/FDP: the guest's old value or its new one, never the host's.
    let fip = u64::from_le_bytes(fx.0[8..16].try_into().unwrap());
    let fdp_now = u64::from_le_bytes(fx.0[16..24].try_into().unwrap());
    assert!(fip == 0 || fip == rip, "{mv:?}: FIP {fip:#x}");
    assert!(fdp_now == 0 || fdp_now == fdp, "{mv:?}: FDP {fdp_now:#x}");
}

/// The SSE computations and masked stores (see the header).
#[allow(clippy::too_many_arguments)]
fn check_simd_alu(
    bytes: &[u8],
    bitness: u32,
    rip: u64,
    head: &[u8],
    decoded: SimdAluInsn,
    regs: GuestRegisters,
    reads: [u64; 4],
    cr: ControlRegs,
    ram: &mut RamCopy,
) {
    let mut decoder = Decoder::with_ip(bitness, bytes, rip, DecoderOptions::NONE);
    let instr = decoder.decode();
    let mut factory = InstructionInfoFactory::new();
    let info = factory.info(&instr);
    let used = info.used_memory();
    match decoded {
        SimdAluInsn::Alu(a) => {
            assert_eq!(instr.len(), a.len, "{a:?}");
            assert_eq!(used.len(), 1, "{a:?}: {used:?}");
            assert_eq!(used[0].memory_size().size(), usize::from(a.width()), "{a:?}");
            assert_eq!(used[0].access(), OpAccess::Read, "{a:?}");
        }
        SimdAluInsn::MaskMove(m) => {
            assert_eq!(instr.len(), m.len, "{m:?}");
            assert!(
                used.iter().any(|u| matches!(u.access(), OpAccess::Write | OpAccess::CondWrite)),
                "{m:?}: {used:?}"
            );
        }
    }

    // Control registers, features and an FXSAVE image from the input; MXCSR with
    // any masks, rounding and FTZ (DAZ where the host has it).
    let knobs = head[0] >> 6 | (regs.rbp as u8) << 2;
    let cr = ControlRegs {
        cr0: cr.cr0 | u64::from(knobs & 1) << 2 | u64::from(knobs & 2) << 2 | 1 << 5,
        cr4: cr.cr4 | u64::from(knobs & 4 != 0) << 9 | u64::from(knobs & 8 != 0) << 10,
        ..cr
    };
    let b = (regs.rbp >> 8) as u8;
    let features = SimdFeatures {
        mmx: b & 1 != 0,
        sse: b & 2 != 0,
        sse2: b & 4 != 0,
        sse3: b & 8 != 0,
        ssse3: b & 32 != 0,
        sse41: b & 16 != 0,
    };
    let mut fx0 = FxArea::initial();
    let vals = all(&regs, 0);
    for (i, chunk) in fx0.0[32..416].chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&vals[i % 16].rotate_left(3 * i as u32).to_le_bytes());
    }
    fx0.0[2..4].copy_from_slice(&(regs.rsi as u16 & 0x3880).to_le_bytes());
    // SAFETY: this process runs with SSE enabled.
    let host_mask = unsafe { vcpu::fpu::host_mxcsr_mask() };
    fx0.set_mxcsr((regs.rbp >> 16) as u32 & 0xFFFF & host_mask);
    let address = regs.rdi;
    let em = cr.cr0 & 4 != 0;
    let ts = cr.cr0 & 8 != 0;
    let osfxsr = cr.cr4 & 1 << 9 != 0;
    let (has, mmx, aligned) = match decoded {
        SimdAluInsn::Alu(a) => (features.has(a.needs), false, a.aligned()),
        SimdAluInsn::MaskMove(m) if m.mmx => (features.sse, true, false),
        SimdAluInsn::MaskMove(_) => (features.sse2, false, false),
    };
    let pending = fx0.fsw() & 0x80 != 0;
    let expect = if em || !has || (!mmx && !osfxsr) {
        Some(vcpu::Exception::UD)
    } else if ts {
        Some(vcpu::Exception::NM)
    } else if mmx && pending {
        Some(vcpu::Exception::MF)
    } else if aligned && address % 16 != 0 {
        Some(vcpu::Exception::GP0)
    } else {
        None
    };
    let fault = mmio_simd_alu::check(&decoded, &cr, features, &fx0, address);
    assert_eq!(fault, Ok(expect), "{decoded:?} {cr:?} {features:?}");

    let mut env = Env {
        mem: ram,
        cr,
        segments: [None; 6],
    };
    const GPA: u64 = 0xfee0_0000;
    let mut log: Vec<(u64, u8, Option<u64>)> = Vec::new();
    let mut next = reads.iter().copied().cycle();
    let mut device = |gpa: u64, size: u8, write: Option<u64>| {
        log.push((gpa, size, write));
        next.next().unwrap_or(0)
    };
    let alu = match decoded {
        SimdAluInsn::MaskMove(m) => {
            let mut fx = fx0.clone();
            // Where DS:rDI has a linear address (always in long mode) the bytes are
            // located through the input's page tables, which may fail (then nothing
            // happened) or find RAM; else each goes to the device after the exit's.
            let located = env.linear(m.seg, regs.rdi & mask(m.address_size)).is_ok();
            let ram0 = env.mem.0.clone();
            let r =
                mmio_simd_alu::execute_mask_move(&m, &regs, &mut fx, GPA, &mut device, &mut env);
            if r.is_err() {
                assert!(located, "{m:?}");
                assert!(log.is_empty(), "{m:?}: {log:?}");
                assert_eq!(fx, fx0, "{m:?}");
                assert_eq!(env.mem.0, ram0, "{m:?}");
                return;
            }
            let (data, mask, n) = if m.mmx {
                let mut e = fx0.clone();
                e.enter_mmx_mode();
                assert_eq!(fx, e, "{m:?}: only the MMX-mode switch");
                let d = fx0.mm(usize::from(m.src)).to_le_bytes();
                let k = fx0.mm(usize::from(m.mask)).to_le_bytes();
                let mut dd = [0u8; 16];
                let mut kk = [0u8; 16];
                dd[..8].copy_from_slice(&d);
                kk[..8].copy_from_slice(&k);
                (dd, kk, 8)
            } else {
                assert_eq!(fx, fx0, "{m:?}");
                (fx0.xmm(usize::from(m.src)), fx0.xmm(usize::from(m.mask)), 16)
            };
            let first = (0..n).find(|&i| mask[i] & 0x80 != 0);
            if located {
                let selected = (0..n).filter(|&i| mask[i] & 0x80 != 0).count();
                assert!(log.len() <= selected, "{m:?}: {log:?}");
                assert!(log.iter().all(|&(_, size, w)| size == 1 && w.is_some()), "{log:?}");
                return;
            }
            let want: Vec<(u64, u8, Option<u64>)> = (0..n)
                .filter(|&i| mask[i] & 0x80 != 0)
                .map(|i| (GPA + (i - first.unwrap()) as u64, 1, Some(u64::from(data[i]))))
                .collect();
            assert_eq!(log, want, "{m:?}");
            return;
        }
        SimdAluInsn::Alu(a) => a,
    };
    if !mmio_simd_alu::host_features().has(alu.needs) {
        return;
    }
    let osxmmexcpt = cr.cr4 & 1 << 10 != 0;
    let mut fx = fx0.clone();
    let result = mmio_simd_alu::execute(
        &alu,
        &mut fx,
        mmio_sse::Operand::Exit { gpa: GPA },
        osxmmexcpt,
        &mut device,
        &mut env,
    );
    let guest = fx0.mxcsr();
    if alu.may_underflow && guest & 1 << 11 == 0 {
        assert_eq!(result, Err(mmio_sse::SimdError::UnmaskedUnderflow));
        assert!(log.is_empty());
        assert_eq!(fx, fx0);
        return;
    }
    let outcome = result.expect("a device operand cannot fail");
    let piece = alu.width().min(8);
    let want: Vec<(u64, u8, Option<u64>)> = (0..alu.width() / piece)
        .map(|k| (GPA + u64::from(k * piece), piece, None))
        .collect();
    assert_eq!(log, want, "{alu:?}");
    // Only MXCSR's flags are added; a fault exactly when a new flag is unmasked.
    let now = fx.mxcsr();
    assert_eq!(now & !0x3F, guest & !0x3F, "{alu:?}");
    assert_eq!(now & guest, guest, "{alu:?}: flags only added");
    let masks = guest >> 7 & 0x3F;
    let dest_xmm = match alu.dest {
        AluDest::Xmm(n) => Some(usize::from(n)),
        _ => None,
    };
    let mut rest = fx.clone();
    rest.set_mxcsr(guest);
    if let (AluOutcome::Done { .. }, Some(n)) = (&outcome, dest_xmm) {
        rest.set_xmm(n, fx0.xmm(n));
    }
    assert_eq!(rest, fx0, "{alu:?}: only the destination and MXCSR's flags change");
    match outcome {
        AluOutcome::Fault(e) => {
            let want = if osxmmexcpt {
                vcpu::Exception::XM
            } else {
                vcpu::Exception::UD
            };
            assert_eq!(e, want);
            assert_ne!(now & !masks & 0x3F, 0, "{alu:?}: a fault needs an unmasked flag");
        }
        AluOutcome::Done { flags, gpr } => {
            // Flags raised now are all masked (flags set before may be anything).
            assert_eq!((now & !guest) & !masks & 0x3F, 0, "{alu:?}");
            assert_eq!(flags & !0x45, 0, "only ZF, PF, CF");
            if let AluDest::Gpr { width: 4, .. } = alu.dest {
                assert_eq!(gpr >> 32, 0, "a 32-bit result is zero-extended");
            }
            // The same computation with the operand in another register.
            let (AluDest::Xmm(d) | AluDest::Flags(d)) = alu.dest else {
                return;
            };
            let other = (usize::from(d) + 5) % 16;
            let mut fx2 = fx0.clone();
            fx2.set_xmm(other, fx0.xmm(usize::from(d)));
            let alu2 = mmio_simd_alu::SimdAlu {
                dest: match alu.dest {
                    AluDest::Xmm(_) => AluDest::Xmm(other as u8),
                    _ => AluDest::Flags(other as u8),
                },
                ..alu
            };
            // The device answers as it did the first time.
            let values: Vec<u64> = reads.iter().copied().cycle().take(log.len()).collect();
            let mut it = values.into_iter();
            let mut device2 = |_: u64, _: u8, _: Option<u64>| it.next().unwrap_or(0);
            let out2 = mmio_simd_alu::execute(
                &alu2,
                &mut fx2,
                mmio_sse::Operand::Exit { gpa: GPA },
                osxmmexcpt,
                &mut device2,
                &mut env,
            )
            .expect("as before");
            assert_eq!(out2, outcome, "{alu:?}");
            assert_eq!(fx2.mxcsr(), now, "{alu:?}");
            if let AluDest::Xmm(_) = alu.dest {
                assert_eq!(fx2.xmm(other), fx.xmm(usize::from(d)), "{alu:?}");
            }
        }
    }
}
