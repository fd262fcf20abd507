//! The x86 integer operations MMIO emulation carries out beyond `ADD`..`XOR`
//! ([`super::mmio::alu`]): `INC`/`DEC`/`NEG`/`NOT`, the shifts and rotates, the bit
//! tests, multiply and divide, and the condition codes `SETcc`/`CMOVcc` test. Pure
//! functions of their operands and the incoming RFLAGS, so they are host-tested here
//! and checked against the host processor by the `mmio` fuzz target.
//!
//! Flags: every flag the SDM (Vol. 2) defines for an operation is computed as it
//! says. A flag the SDM leaves *undefined* keeps its incoming value (a valid choice
//! for "undefined"; processors differ among themselves there, so no one value would
//! match them all). Flags the operation does not affect keep their value too.

use super::mmio::{alu, flags, AluOp};

/// `INC`, `DEC`, `NEG`, `NOT` (SDM Vol. 2A/2B, each its own page).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryOp {
    Inc,
    Dec,
    Neg,
    Not,
}

/// The shifts and rotates with a memory destination (SDM Vol. 2B "SAL/SAR/SHL/SHR",
/// "RCL/RCR/ROL/ROR"). `SAL` is `SHL`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShiftOp {
    Rol,
    Ror,
    Rcl,
    Rcr,
    Shl,
    Shr,
    Sar,
}

/// `BT`, `BTS`, `BTR`, `BTC` (SDM Vol. 2A).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BitOp {
    Bt,
    Bts,
    Btr,
    Btc,
}

/// The one-operand multiplies and divides on the accumulator (SDM Vol. 2A/2B `MUL`,
/// `IMUL` form 1, `DIV`, `IDIV`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MulDivOp {
    Mul,
    Imul,
    Div,
    Idiv,
}

/// `DIV`/`IDIV` with a zero divisor or a quotient too large for its register: the
/// processor raises #DE (vector 0) and changes no register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DivideError;

pub(crate) fn mask(size: u8) -> u64 {
    match size {
        8 => u64::MAX,
        n => (1u64 << (8 * u32::from(n))) - 1,
    }
}

fn bits(size: u8) -> u32 {
    8 * u32::from(size)
}

fn sign_bit(size: u8) -> u64 {
    1u64 << (bits(size) - 1)
}

/// `value` (the low `size` bytes) sign-extended to 64 bits.
pub fn sign_extend(value: u64, size: u8) -> i64 {
    let shift = 64 - bits(size);
    ((value << shift) as i64) >> shift
}

/// Sets or clears `flag` in `f`.
fn put(f: &mut u64, flag: u64, on: bool) {
    if on {
        *f |= flag;
    } else {
        *f &= !flag;
    }
}

/// SF, ZF and PF from a `size`-byte result, into `f`.
fn szp(f: &mut u64, size: u8, result: u64) {
    put(f, flags::SF, result & sign_bit(size) != 0);
    put(f, flags::ZF, result & mask(size) == 0);
    put(f, flags::PF, (result as u8).count_ones().is_multiple_of(2));
}

/// `op` on the `size`-byte `value` with incoming RFLAGS `rflags`: the result and the
/// new RFLAGS. `INC`/`DEC` set the flags `ADD`/`SUB` 1 would except CF, which they
/// keep; `NEG` is `0 - value` (CF = value != 0); `NOT` affects no flag.
pub fn unary(op: UnaryOp, size: u8, value: u64, rflags: u64) -> (u64, u64) {
    let v = value & mask(size);
    let with = |(r, f): (u64, u64), keep: u64| {
        (r, (rflags & !flags::STATUS) | (f & !keep) | (rflags & keep))
    };
    match op {
        UnaryOp::Inc => with(alu(AluOp::Add, size, v, 1, false), flags::CF),
        UnaryOp::Dec => with(alu(AluOp::Sub, size, v, 1, false), flags::CF),
        UnaryOp::Neg => with(alu(AluOp::Sub, size, 0, v, false), 0),
        UnaryOp::Not => (!v & mask(size), rflags),
    }
}

/// `op` of the `size`-byte `value` by `count` (as the instruction gives it: 1, CL or
/// imm8) with incoming RFLAGS: the result and the new RFLAGS.
///
/// The count is masked to 5 bits (6 with a 64-bit operand); a masked count of 0
/// changes neither the value nor any flag. `RCL`/`RCR` of 8- and 16-bit operands
/// rotate by the masked count modulo 9 and 17 (the carry is one more bit); `ROL`/`ROR`
/// by it modulo the width, and still set CF from the result when that is 0.
/// Shifts: CF is the last bit shifted out (undefined for `SHL`/`SHR` once the count
/// reaches the width: this gives 0 past it), SF/ZF/PF from the result, AF undefined
/// (kept). Rotates touch only CF and OF. OF is defined only for a masked count of 1
/// (kept otherwise): `SHL`/`ROL`/`RCL`: MSB(result) XOR CF; `SHR`: MSB(value); `SAR`:
/// 0; `ROR`/`RCR`: the XOR of the result's two top bits.
pub fn shift(op: ShiftOp, size: u8, value: u64, count: u8, rflags: u64) -> (u64, u64) {
    let w = bits(size);
    let m = mask(size);
    let v = value & m;
    let c = u32::from(count) & if size == 8 { 0x3f } else { 0x1f };
    if c == 0 {
        return (v, rflags);
    }
    let msb = |x: u64| x & sign_bit(size) != 0;
    let cf_in = rflags & flags::CF != 0;
    let mut f = rflags;
    let (result, cf) = match op {
        ShiftOp::Shl => {
            let wide = u128::from(v) << c;
            (wide as u64 & m, (wide >> w) & 1 != 0)
        }
        ShiftOp::Shr => {
            let r = if c >= w { 0 } else { v >> c };
            (r, c <= w && (v >> (c - 1)) & 1 != 0)
        }
        ShiftOp::Sar => {
            let s = i128::from(sign_extend(v, size));
            // c <= 63, so both shifts stay inside the 128-bit value.
            ((s >> c) as u64 & m, (s >> (c - 1)) & 1 != 0)
        }
        ShiftOp::Rol | ShiftOp::Ror => {
            let t = c % w;
            let r = if t == 0 {
                v
            } else if op == ShiftOp::Rol {
                ((v << t) | (v >> (w - t))) & m
            } else {
                ((v >> t) | (v << (w - t))) & m
            };
            let cf = if op == ShiftOp::Rol {
                r & 1 != 0
            } else {
                msb(r)
            };
            (r, cf)
        }
        ShiftOp::Rcl | ShiftOp::Rcr => {
            // The (w+1)-bit value CF:value rotated by the count modulo w+1.
            let n = w + 1;
            let t = c % n;
            let x = (u128::from(cf_in) << w) | u128::from(v);
            let all = (1u128 << n) - 1;
            let r = if t == 0 {
                x
            } else if op == ShiftOp::Rcl {
                ((x << t) | (x >> (n - t))) & all
            } else {
                ((x >> t) | (x << (n - t))) & all
            };
            (r as u64 & m, (r >> w) & 1 != 0)
        }
    };
    put(&mut f, flags::CF, cf);
    if c == 1 {
        let of = match op {
            ShiftOp::Shl | ShiftOp::Rol | ShiftOp::Rcl => msb(result) ^ cf,
            ShiftOp::Shr => msb(v),
            ShiftOp::Sar => false,
            ShiftOp::Ror | ShiftOp::Rcr => msb(result) ^ (result & (sign_bit(size) >> 1) != 0),
        };
        put(&mut f, flags::OF, of);
    }
    if matches!(op, ShiftOp::Shl | ShiftOp::Shr | ShiftOp::Sar) {
        szp(&mut f, size, result);
    }
    (result, f)
}

/// `op` on bit `bit` (taken modulo the operand's width) of the `size`-byte `value`:
/// the value to write back (unchanged for `BT`) and the new RFLAGS, whose CF is the
/// bit's old value. OF, SF, AF and PF are undefined and ZF is unaffected: all kept.
pub fn bit_test(op: BitOp, size: u8, value: u64, bit: u64, rflags: u64) -> (u64, u64) {
    let v = value & mask(size);
    let b = 1u64 << (bit % u64::from(bits(size)));
    let r = match op {
        BitOp::Bt => v,
        BitOp::Bts => v | b,
        BitOp::Btr => v & !b,
        BitOp::Btc => v ^ b,
    };
    let mut f = rflags;
    put(&mut f, flags::CF, v & b != 0);
    (r, f)
}

/// Condition code `cc` (the low nibble of `SETcc`/`CMOVcc`/`Jcc`: O, NO, B, AE, E,
/// NE, BE, A, S, NS, P, NP, L, GE, LE, G; SDM Vol. 1 table B-1) on `rflags`.
pub fn condition(cc: u8, rflags: u64) -> bool {
    let f = |flag: u64| rflags & flag != 0;
    let lt = f(flags::SF) != f(flags::OF);
    let base = match cc >> 1 {
        0 => f(flags::OF),
        1 => f(flags::CF),
        2 => f(flags::ZF),
        3 => f(flags::CF) || f(flags::ZF),
        4 => f(flags::SF),
        5 => f(flags::PF),
        6 => lt,
        _ => lt || f(flags::ZF),
    };
    base != (cc & 1 != 0)
}

/// The two halves (each `size` bytes) of the accumulator pair the one-operand forms
/// use: AL and AH for bytes (the two halves of AX), else AX/EAX/RAX and DX/EDX/RDX.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wide {
    pub low: u64,
    pub high: u64,
}

/// `op` with the `size`-byte `source` on the accumulator pair `acc`: the new pair and
/// RFLAGS. `MUL`: the unsigned double-width product, CF = OF = (high half != 0).
/// `IMUL`: the signed product, CF = OF = (it does not fit the low half, sign-extended).
/// SF, ZF, AF and PF are undefined after both, and every flag after `DIV`/`IDIV`:
/// all kept. `DIV`/`IDIV` divide high:low by `source`, quotient into the low half and
/// remainder (the dividend's sign for `IDIV`) into the high half; [`DivideError`] when
/// `source` is 0 or the quotient does not fit the low half (SDM Vol. 2A `DIV`).
pub fn mul_div(
    op: MulDivOp,
    size: u8,
    acc: Wide,
    source: u64,
    rflags: u64,
) -> Result<(Wide, u64), DivideError> {
    let m = mask(size);
    let w = bits(size);
    let (lo, hi, s) = (acc.low & m, acc.high & m, source & m);
    let split = |x: u128| Wide {
        low: x as u64 & m,
        high: (x >> w) as u64 & m,
    };
    let mut f = rflags;
    match op {
        MulDivOp::Mul => {
            let p = split(u128::from(lo) * u128::from(s));
            put(&mut f, flags::CF, p.high != 0);
            put(&mut f, flags::OF, p.high != 0);
            Ok((p, f))
        }
        MulDivOp::Imul => {
            let p = i128::from(sign_extend(lo, size)) * i128::from(sign_extend(s, size));
            let parts = split(p as u128);
            let fits = i128::from(sign_extend(parts.low, size)) == p;
            put(&mut f, flags::CF, !fits);
            put(&mut f, flags::OF, !fits);
            Ok((parts, f))
        }
        MulDivOp::Div => {
            if s == 0 {
                return Err(DivideError);
            }
            let dividend = (u128::from(hi) << w) | u128::from(lo);
            let q = dividend / u128::from(s);
            if q > u128::from(m) {
                return Err(DivideError);
            }
            let r = dividend % u128::from(s);
            Ok((
                Wide {
                    low: q as u64,
                    high: r as u64,
                },
                f,
            ))
        }
        MulDivOp::Idiv => {
            if s == 0 {
                return Err(DivideError);
            }
            // The 2w-bit dividend, sign-extended to 128 bits.
            let raw = (u128::from(hi) << w) | u128::from(lo);
            let shift = 128 - 2 * w;
            let dividend = ((raw << shift) as i128) >> shift;
            let divisor = i128::from(sign_extend(s, size));
            // i128::MIN / -1 cannot occur (the dividend has at most 128 bits and is
            // never i128::MIN with w = 64 unless RDX:RAX is 1 << 127, and then the
            // quotient 2^127 overflows the 64-bit half anyway): checked_div covers it.
            let q = dividend.checked_div(divisor).ok_or(DivideError)?;
            let min = -(1i128 << (w - 1));
            let max = (1i128 << (w - 1)) - 1;
            if q < min || q > max {
                return Err(DivideError);
            }
            let r = dividend - q * divisor;
            Ok((
                Wide {
                    low: q as u64 & m,
                    high: r as u64 & m,
                },
                f,
            ))
        }
    }
}

/// `IMUL reg, r/m` and `IMUL reg, r/m, imm` (SDM Vol. 2A `IMUL` forms 2 and 3): the
/// product of the `size`-byte operands truncated to `size`, and RFLAGS with CF = OF =
/// (the truncation lost significant bits). SF, ZF, AF, PF undefined: kept.
pub fn imul_truncated(size: u8, left: u64, right: u64, rflags: u64) -> (u64, u64) {
    let p = i128::from(sign_extend(left, size)) * i128::from(sign_extend(right, size));
    let r = p as u64 & mask(size);
    let lost = i128::from(sign_extend(r, size)) != p;
    let mut f = rflags;
    put(&mut f, flags::CF, lost);
    put(&mut f, flags::OF, lost);
    (r, f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flags::{AF, CF, OF, PF, SF, ZF};

    const S: u64 = flags::STATUS;

    #[test]
    fn inc_and_dec_keep_cf() {
        assert_eq!(unary(UnaryOp::Inc, 1, 0xff, CF), (0, CF | ZF | PF | AF));
        assert_eq!(unary(UnaryOp::Inc, 1, 0xff, 0), (0, ZF | PF | AF));
        assert_eq!(
            unary(UnaryOp::Inc, 4, 0x7fff_ffff, 0),
            (0x8000_0000, OF | SF | PF | AF)
        );
        assert_eq!(unary(UnaryOp::Dec, 2, 0, 0), (0xffff, SF | PF | AF));
        assert_eq!(unary(UnaryOp::Dec, 8, 1, CF | SF), (0, CF | ZF | PF));
        assert_eq!(
            unary(UnaryOp::Dec, 8, 1 << 63, 0),
            (i64::MAX as u64, OF | PF | AF)
        );
        // Bits other than the status flags pass through.
        assert_eq!(unary(UnaryOp::Inc, 1, 1, 0x202).1, 0x202);
    }

    #[test]
    fn neg_and_not() {
        assert_eq!(unary(UnaryOp::Neg, 1, 0, S), (0, ZF | PF));
        assert_eq!(unary(UnaryOp::Neg, 1, 1, 0), (0xff, CF | SF | PF | AF));
        assert_eq!(unary(UnaryOp::Neg, 1, 0x80, 0), (0x80, CF | OF | SF));
        assert_eq!(unary(UnaryOp::Neg, 8, 5, 0).0, 5u64.wrapping_neg());
        assert_eq!(unary(UnaryOp::Not, 2, 0x00ff, S), (0xff00, S));
        assert_eq!(unary(UnaryOp::Not, 4, 0, 0), (0xffff_ffff, 0));
    }

    #[test]
    fn shifts_by_one_define_of() {
        use ShiftOp::*;
        assert_eq!(shift(Shl, 1, 0x80, 1, 0), (0, CF | OF | ZF | PF));
        assert_eq!(shift(Shl, 1, 0x40, 1, 0), (0x80, OF | SF));
        assert_eq!(shift(Shl, 1, 0xc0, 1, 0), (0x80, CF | SF));
        assert_eq!(shift(Shr, 1, 0x81, 1, 0), (0x40, CF | OF));
        assert_eq!(shift(Sar, 1, 0x81, 1, OF), (0xc0, CF | SF | PF));
        assert_eq!(shift(Rol, 1, 0x80, 1, 0), (0x01, CF | OF));
        assert_eq!(shift(Ror, 1, 0x01, 1, 0), (0x80, CF | OF));
        assert_eq!(shift(Rcl, 1, 0x80, 1, 0), (0x00, CF | OF));
        assert_eq!(shift(Rcl, 1, 0x00, 1, CF), (0x01, 0));
        assert_eq!(shift(Rcr, 1, 0x00, 1, CF), (0x80, OF));
        assert_eq!(shift(Rcr, 1, 0x01, 1, 0), (0x00, CF));
    }

    #[test]
    fn shift_counts_are_masked_and_zero_changes_nothing() {
        use ShiftOp::*;
        // 32-bit: count 33 masks to 1; count 32 masks to 0.
        assert_eq!(shift(Shl, 4, 1, 33, 0).0, 2);
        assert_eq!(shift(Shl, 4, 1, 32, S), (1, S));
        // 64-bit: six bits: count 63 shifts, 64 is 0.
        assert_eq!(shift(Shl, 8, 1, 63, 0).0, 1 << 63);
        assert_eq!(shift(Shr, 8, 1 << 63, 64, 0), (1 << 63, 0));
        // 8-bit with a count past the width: SHL/SHR give 0, SAR the sign.
        assert_eq!(shift(Shl, 1, 0xff, 9, 0).0, 0);
        assert_eq!(shift(Shr, 1, 0xff, 8, 0), (0, CF | ZF | PF));
        assert_eq!(shift(Sar, 1, 0x80, 31, 0), (0xff, CF | SF | PF));
        // OF kept past a count of 1.
        assert_eq!(shift(Shl, 1, 0x01, 2, OF).1 & OF, OF);
        assert_eq!(shift(Shl, 1, 0x01, 2, 0).1 & OF, 0);
        // ROL of a byte by 8: the value stays, CF = its bit 0.
        assert_eq!(shift(Rol, 1, 0x81, 8, 0), (0x81, CF));
        assert_eq!(shift(Rol, 2, 0x1234, 4, 0), (0x2341, CF));
        assert_eq!(shift(Ror, 4, 0x1234_5678, 8, 0), (0x7812_3456, 0));
        // RCL of a byte by 9 goes all the way round.
        assert_eq!(shift(Rcl, 1, 0x5a, 9, CF), (0x5a, CF));
        assert_eq!(shift(Rcl, 1, 0x80, 2, 0), (0x01, 0));
        assert_eq!(shift(Rcr, 2, 0x0001, 17, CF), (0x0001, CF));
        assert_eq!(shift(Rcr, 8, 1, 2, 0), (1 << 63, 0));
    }

    #[test]
    fn bit_tests() {
        use BitOp::*;
        assert_eq!(bit_test(Bt, 4, 0x8, 3, 0), (0x8, CF));
        assert_eq!(bit_test(Bt, 4, 0x8, 35, 0), (0x8, CF));
        assert_eq!(bit_test(Bts, 2, 0, 17, S), (2, S & !CF));
        assert_eq!(bit_test(Btr, 8, u64::MAX, 63, 0), (i64::MAX as u64, CF));
        assert_eq!(bit_test(Btc, 4, 0xf0, 4, ZF), (0xe0, ZF | CF));
    }

    #[test]
    fn conditions() {
        assert!(condition(0x4, ZF) && !condition(0x5, ZF));
        assert!(condition(0x2, CF) && condition(0x6, ZF) && !condition(0x7, CF));
        assert!(condition(0xc, SF) && !condition(0xc, SF | OF));
        assert!(condition(0xe, ZF) && condition(0xf, 0) && !condition(0xf, OF));
        assert!(condition(0xa, PF) && condition(0xb, 0) && condition(0x0, OF));
    }

    #[test]
    fn multiplies() {
        let w = |low, high| Wide { low, high };
        assert_eq!(
            mul_div(MulDivOp::Mul, 1, w(0x80, 0), 2, 0),
            Ok((w(0, 1), CF | OF))
        );
        assert_eq!(
            mul_div(MulDivOp::Mul, 4, w(3, 9), 5, S),
            Ok((w(15, 0), S & !(CF | OF)))
        );
        assert_eq!(
            mul_div(MulDivOp::Mul, 8, w(u64::MAX, 0), u64::MAX, 0),
            Ok((w(1, u64::MAX - 1), CF | OF))
        );
        // -1 * -1 fits; -128 * 2 does not (bytes).
        assert_eq!(
            mul_div(MulDivOp::Imul, 1, w(0xff, 0), 0xff, 0),
            Ok((w(1, 0), 0))
        );
        assert_eq!(
            mul_div(MulDivOp::Imul, 1, w(0x80, 0), 2, 0),
            Ok((w(0, 0xff), CF | OF))
        );
        assert_eq!(imul_truncated(2, 0x4000, 2, 0), (0x8000, CF | OF));
        assert_eq!(
            imul_truncated(4, 0xffff_ffff, 7, S),
            (0xffff_fff9, S & !(CF | OF))
        );
    }

    #[test]
    fn divides_and_divide_errors() {
        let w = |low, high| Wide { low, high };
        assert_eq!(
            mul_div(MulDivOp::Div, 1, w(100, 0), 7, S),
            Ok((w(14, 2), S))
        );
        assert_eq!(mul_div(MulDivOp::Div, 1, w(0, 1), 1, 0), Err(DivideError));
        assert_eq!(mul_div(MulDivOp::Div, 4, w(5, 0), 0, 0), Err(DivideError));
        assert_eq!(
            mul_div(MulDivOp::Div, 8, w(0, 1), 2, 0),
            Ok((w(1 << 63, 0), 0))
        );
        // -7 / 2 = -3 remainder -1.
        let m7 = (-7i64) as u64;
        assert_eq!(
            mul_div(MulDivOp::Idiv, 8, w(m7, u64::MAX), 2, 0),
            Ok((w((-3i64) as u64, u64::MAX), 0))
        );
        // -128 / -1 = 128 does not fit a byte; 127 / -1 does.
        assert_eq!(
            mul_div(MulDivOp::Idiv, 1, w(0x80, 0xff), 0xff, 0),
            Err(DivideError)
        );
        assert_eq!(
            mul_div(MulDivOp::Idiv, 1, w(0x7f, 0), 0xff, 0),
            Ok((w(0x81, 0), 0))
        );
        // RDX:RAX = -2^127 / -1.
        assert_eq!(
            mul_div(MulDivOp::Idiv, 8, w(0, 1 << 63), u64::MAX, 0),
            Err(DivideError)
        );
    }
}
