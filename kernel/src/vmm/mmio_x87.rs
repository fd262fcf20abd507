//! x87 loads, stores and arithmetic whose memory operand is MMIO or unbacked
//! guest-physical space: `FLD m32fp/m64fp/m80fp`, `FILD m16int/m32int/m64int`, `FST
//! m32fp/m64fp`, `FSTP m32fp/m64fp/m80fp`, `FIST m16int/m32int`, `FISTP
//! m16int/m32int/m64int`, SSE3's `FISTTP m16int/m32int/m64int`, and the arithmetic and
//! comparisons of ST(0) with a memory source: `FADD`/`FMUL`/`FSUB`/`FSUBR`/`FDIV`/
//! `FDIVR`/`FCOM`/`FCOMP` `m32fp/m64fp` and `FIADD`/`FIMUL`/`FISUB`/`FISUBR`/`FIDIV`/
//! `FIDIVR`/`FICOM`/`FICOMP` `m16int/m32int` (each reads its operand once, like a
//! load; an unmasked exception leaves ST(0) as it was and stays pending in FSW.ES,
//! SDM Vol. 1 8.6, all done by the processor itself). [`super::mmio_sse::emulate`] hands them
//! here when neither [`super::mmio`] nor the MMX/SSE moves take the instruction.
//!
//! The conversions between the memory formats and the 80-bit registers, the
//! rounding by FCW.RC, the exception flags, SF/C1, the stack and the tag word are
//! the processor's own: the core reads the operand from the device into a buffer (or
//! gives one to a store), and the host processor runs the same instruction on that
//! buffer with the guest's x87 state loaded ([`vcpu::fpu::x87_memory_op`]), then saves
//! that state back into the vCPU's FXSAVE image. Nothing of the x87 arithmetic is
//! modelled here, so nothing of it can be modelled wrongly.
//!
//! Checks first, as the SDM's "Protected Mode Exceptions" of `FLD`/`FST`/`FIST`/...
//! list them, each injected with RIP left on the instruction and nothing changed:
//! #UD for `FISTTP` when the VM's CPUID view lacks SSE3; #NM for CR0.EM or CR0.TS;
//! #MF while an unmasked x87 exception is pending (FSW.ES, or a flag FCW does not
//! mask; these are waiting instructions). With CR0.NE clear a pending error goes out on FERR#, which is not
//! modelled: the VM stops with that named.
//!
//! A store writes the device only if the instruction stored: an unmasked invalid-
//! operation, overflow or underflow exception leaves a memory destination unchanged
//! (SDM Vol. 1 8.5.1, 8.5.4, 8.5.5; an unmasked precision exception stores the
//! rounded result, 8.5.6). The exception then stays pending in FSW.ES and the guest's
//! next waiting x87 instruction raises #MF, as on the processor.
//!
//! FIP, FOP and FDP (the last instruction's address, opcode and operand) would name
//! the host's instruction and buffer after the host ran it: where the saved image
//! changed them they become the guest's RIP, the instruction's opcode (SDM Vol. 1
//! 8.1.9.1: bits 2:0 of the first opcode byte and the ModR/M byte) and the operand's
//! effective address, so no host address reaches the guest.
//!
//! An 80-bit operand goes to a device as an 8-byte and a 2-byte access at ascending
//! addresses (the bus's widest access is 8 bytes). Not here: `FBLD`/`FBSTP`,
//! `FLDENV`/`FSTENV`/`FRSTOR`/`FSAVE`, `FLDCW`/`FSTCW`/`FSTSW`: the VM stops with the
//! instruction named.

use super::guest_walk::GuestMemoryMut;
use super::mmio::{self, MmioError};
use super::mmio_memory::{Env, Place};
use super::mmio_sse::{Operand, SimdError, SimdFeatures};
use iced_x86::{Code, Instruction, OpKind};
use vcpu::fpu::{FxArea, X87MemOp};
use vcpu::{ControlRegs, Exception};

const CR0_EM: u64 = 1 << 2;
const CR0_TS: u64 = 1 << 3;
const CR0_NE: u64 = 1 << 5;
/// FSW.ES: an unmasked x87 exception is pending (SDM Vol. 1 8.1.3.1).
const FSW_ES: u16 = 1 << 7;
/// FSW/FCW exception bits: IE, DE, ZE, OE, UE, PE (bits 0-5).
const EXCEPTIONS: u16 = 0x3F;
/// The exceptions that, unmasked, keep a store from writing memory: IE, OE, UE.
const NO_STORE: u16 = 1 | 1 << 3 | 1 << 4;

/// Whether the next waiting x87 (or MMX) instruction raises #MF: FSW.ES, or an
/// exception flag that FCW does not mask (loading such a status word makes the
/// exception pending, SDM Vol. 2A `FLDENV`, whatever the ES bit in it says).
pub fn x87_error_pending(fx: &FxArea) -> bool {
    let fcw = u16::from_le_bytes([fx.0[0], fx.0[1]]);
    fx.fsw() & FSW_ES != 0 || fx.fsw() & !fcw & EXCEPTIONS != 0
}

/// A decoded x87 load or store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct X87Move {
    /// Instruction length in bytes.
    pub len: usize,
    pub op: X87MemOp,
    /// The x87 opcode as FOP records it: bits 2:0 of the escape byte (D8-DF) in bits
    /// 10:8, the ModR/M byte in bits 7:0.
    pub fop: u16,
}

fn op_of(code: Code) -> Option<X87MemOp> {
    use X87MemOp::*;
    Some(match code {
        Code::Fld_m32fp => FldM32,
        Code::Fld_m64fp => FldM64,
        Code::Fld_m80fp => FldM80,
        Code::Fild_m16int => FildM16,
        Code::Fild_m32int => FildM32,
        Code::Fild_m64int => FildM64,
        Code::Fst_m32fp => FstM32,
        Code::Fst_m64fp => FstM64,
        Code::Fstp_m32fp => FstpM32,
        Code::Fstp_m64fp => FstpM64,
        Code::Fstp_m80fp => FstpM80,
        Code::Fist_m16int => FistM16,
        Code::Fist_m32int => FistM32,
        Code::Fistp_m16int => FistpM16,
        Code::Fistp_m32int => FistpM32,
        Code::Fistp_m64int => FistpM64,
        Code::Fisttp_m16int => FisttpM16,
        Code::Fisttp_m32int => FisttpM32,
        Code::Fisttp_m64int => FisttpM64,
        Code::Fadd_m32fp => FaddM32,
        Code::Fadd_m64fp => FaddM64,
        Code::Fmul_m32fp => FmulM32,
        Code::Fmul_m64fp => FmulM64,
        Code::Fsub_m32fp => FsubM32,
        Code::Fsub_m64fp => FsubM64,
        Code::Fsubr_m32fp => FsubrM32,
        Code::Fsubr_m64fp => FsubrM64,
        Code::Fdiv_m32fp => FdivM32,
        Code::Fdiv_m64fp => FdivM64,
        Code::Fdivr_m32fp => FdivrM32,
        Code::Fdivr_m64fp => FdivrM64,
        Code::Fcom_m32fp => FcomM32,
        Code::Fcom_m64fp => FcomM64,
        Code::Fcomp_m32fp => FcompM32,
        Code::Fcomp_m64fp => FcompM64,
        Code::Fiadd_m16int => FiaddM16,
        Code::Fiadd_m32int => FiaddM32,
        Code::Fimul_m16int => FimulM16,
        Code::Fimul_m32int => FimulM32,
        Code::Fisub_m16int => FisubM16,
        Code::Fisub_m32int => FisubM32,
        Code::Fisubr_m16int => FisubrM16,
        Code::Fisubr_m32int => FisubrM32,
        Code::Fidiv_m16int => FidivM16,
        Code::Fidiv_m32int => FidivM32,
        Code::Fidivr_m16int => FidivrM16,
        Code::Fidivr_m32int => FidivrM32,
        Code::Ficom_m16int => FicomM16,
        Code::Ficom_m32int => FicomM32,
        Code::Ficomp_m16int => FicompM16,
        Code::Ficomp_m32int => FicompM32,
        _ => return None,
    })
}

/// Decodes the x87 load or store at the start of `bytes` (`bitness`-bit code at
/// `rip`), with iced's instruction for the operand's address.
pub fn decode(bytes: &[u8], bitness: u32, rip: u64) -> Result<(X87Move, Instruction), MmioError> {
    let insn = mmio::decode_instruction(bytes, bitness, rip)?;
    let op = op_of(insn.code()).ok_or(MmioError::Unsupported {
        mnemonic: insn.mnemonic(),
        code: insn.code(),
    })?;
    // Every form here has a memory operand (mod = 11 encodes other instructions).
    if insn.op_kind(0) != OpKind::Memory {
        return Err(MmioError::NoMemoryOperand {
            mnemonic: insn.mnemonic(),
        });
    }
    // The escape byte is the first one after the prefixes (legacy ones, then REX
    // in 64-bit code); the ModR/M byte follows it.
    let at = bytes[..insn.len()]
        .iter()
        .position(|b| (0xD8..=0xDF).contains(b))
        .ok_or(MmioError::Invalid)?;
    let modrm = *bytes.get(at + 1).ok_or(MmioError::Invalid)?;
    let fop = u16::from(bytes[at] & 7) << 8 | u16::from(modrm);
    Ok((
        X87Move {
            len: insn.len(),
            op,
            fop,
        },
        insn,
    ))
}

/// The checks in the processor's order (see the module header): `Ok(Some(e))` when
/// the instruction raises `e` instead.
pub fn check(
    mv: &X87Move,
    cr: &ControlRegs,
    features: SimdFeatures,
    fx: &FxArea,
) -> Result<Option<Exception>, SimdError> {
    use X87MemOp::*;
    if matches!(mv.op, FisttpM16 | FisttpM32 | FisttpM64) && !features.sse3 {
        return Ok(Some(Exception::UD));
    }
    if cr.cr0 & (CR0_EM | CR0_TS) != 0 {
        return Ok(Some(Exception::NM));
    }
    if x87_error_pending(fx) {
        if cr.cr0 & CR0_NE == 0 {
            return Err(SimdError::PendingX87Error);
        }
        return Ok(Some(Exception::MF));
    }
    Ok(None)
}

/// Carries out a checked x87 move on `fx`: the operand's pieces (8 and 2 bytes for
/// 80 bits) are located first (an error changes nothing), a load reads them, the
/// processor runs the instruction, a store that stored writes them; then FIP, FOP
/// and FDP are the guest's (`rip`, `mv.fop`, `fdp`).
///
/// `fx` must be restorable on this processor (it is the vCPU's own image, which the
/// backend loads before every entry); with an x87 error pending ([`check`] first)
/// this fails with nothing changed.
#[allow(clippy::too_many_arguments)]
pub fn execute<M: GuestMemoryMut>(
    mv: &X87Move,
    fx: &mut FxArea,
    at: Operand,
    rip: u64,
    fdp: u64,
    device: &mut dyn FnMut(u64, u8, Option<u64>) -> u64,
    env: &mut Env<'_, M>,
) -> Result<(), SimdError> {
    if x87_error_pending(fx) {
        // The processor would raise #MF in the host: `check` comes first.
        return Err(SimdError::PendingX87Error);
    }
    let width = mv.op.width();
    let pieces: &[(u8, u8)] = match width {
        10 => &[(0, 8), (8, 2)],
        w => &[(0, w)][..],
    };
    let mut places = [Place::Device(0); 2];
    for (place, &(offset, size)) in places.iter_mut().zip(pieces) {
        *place = match at {
            Operand::Linear { seg, offset: o } => {
                env.place(seg, o.wrapping_add(u64::from(offset)), size)?
            }
            Operand::Exit { gpa } => Place::Device(gpa.wrapping_add(u64::from(offset))),
        };
    }
    let mut buf = [0u8; 10];
    if mv.op.loads() {
        for (&place, &(offset, size)) in places.iter().zip(pieces) {
            let v = env.load(place, size, device) & mmio::mask(size);
            let o = usize::from(offset);
            buf[o..o + usize::from(size)].copy_from_slice(&v.to_le_bytes()[..usize::from(size)]);
        }
    }
    let before = fx.clone();
    // SAFETY: the hypervisor runs with CR4.OSFXSR set and CR0.EM/TS clear (the
    // backends' `enable`); `fx` is the vCPU's image, restorable here as before every
    // entry, and FSW.ES is clear (checked above).
    unsafe { vcpu::fpu::x87_memory_op(fx, mv.op, &mut buf) };
    let fcw = u16::from_le_bytes([fx.0[0], fx.0[1]]);
    let unmasked = fx.fsw() & !fcw & EXCEPTIONS;
    if !mv.op.loads() && unmasked & NO_STORE == 0 {
        for (&place, &(offset, size)) in places.iter().zip(pieces) {
            let o = usize::from(offset);
            let mut b = [0u8; 8];
            b[..usize::from(size)].copy_from_slice(&buf[o..o + usize::from(size)]);
            env.store(place, size, u64::from_le_bytes(b), device);
        }
    }
    // FOP (bytes 6-7), FIP (8-15) and FDP (16-23) of the 64-bit image: the guest's
    // where the processor recorded the host's.
    for (range, value) in [(6..8, u64::from(mv.fop)), (8..16, rip), (16..24, fdp)] {
        if fx.0[range.clone()] != before.0[range.clone()] {
            let n = range.len();
            fx.0[range].copy_from_slice(&value.to_le_bytes()[..n]);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    use crate::vmm::test_ram::NoRam;

    fn d64(bytes: &[u8]) -> X87Move {
        decode(bytes, 64, 0).unwrap().0
    }

    #[test]
    fn forms_decode_with_their_opcode() {
        use X87MemOp::*;
        let cases: &[(&[u8], X87MemOp, u16)] = &[
            (&[0xD9, 0x00], FldM32, 0x100),
            (&[0xDD, 0x00], FldM64, 0x500),
            (&[0xDB, 0x28], FldM80, 0x328),
            (&[0xDF, 0x00], FildM16, 0x700),
            (&[0xDB, 0x00], FildM32, 0x300),
            (&[0xDF, 0x28], FildM64, 0x728),
            (&[0xD9, 0x10], FstM32, 0x110),
            (&[0xDD, 0x10], FstM64, 0x510),
            (&[0xD9, 0x18], FstpM32, 0x118),
            (&[0xDD, 0x18], FstpM64, 0x518),
            (&[0xDB, 0x38], FstpM80, 0x338),
            (&[0xDF, 0x10], FistM16, 0x710),
            (&[0xDB, 0x10], FistM32, 0x310),
            (&[0xDF, 0x18], FistpM16, 0x718),
            (&[0xDB, 0x18], FistpM32, 0x318),
            (&[0xDF, 0x38], FistpM64, 0x738),
            (&[0xDF, 0x08], FisttpM16, 0x708),
            (&[0xDB, 0x08], FisttpM32, 0x308),
            (&[0xDD, 0x08], FisttpM64, 0x508),
            // With prefixes: fld qword [r8+0x10] (REX.B, disp8), fs: override.
            (&[0x41, 0xDD, 0x40, 0x10], FldM64, 0x540),
            (&[0x64, 0xD9, 0x00], FldM32, 0x100),
        ];
        for &(bytes, op, fop) in cases {
            assert_eq!(
                d64(bytes),
                X87Move {
                    len: bytes.len(),
                    op,
                    fop
                },
                "{bytes:02x?}"
            );
        }
        // The arithmetic: fadd dword [rax], fdivr qword [rax], fiadd word [rax],
        // ficomp dword [rax].
        assert_eq!(d64(&[0xD8, 0x00]).op, FaddM32);
        assert_eq!(d64(&[0xDC, 0x38]).op, FdivrM64);
        assert_eq!(d64(&[0xDE, 0x00]).op, FiaddM16);
        assert_eq!(d64(&[0xDA, 0x18]).op, FicompM32);
        assert!(FcompM64.loads() && FiaddM16.width() == 2 && FdivrM64.width() == 8);
        // fld st(1), fadd st(0), st(1), fbld [rax], fldcw [rax]: not ours.
        for bytes in [
            &[0xD9, 0xC1][..],
            &[0xD8, 0xC1],
            &[0xDF, 0x20],
            &[0xD9, 0x28],
        ] {
            assert!(
                matches!(decode(bytes, 64, 0), Err(MmioError::Unsupported { .. })),
                "{bytes:02x?}"
            );
        }
    }

    fn fsw(fx: &mut FxArea, v: u16) {
        fx.0[2..4].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn checks_in_order() {
        let all = SimdFeatures {
            sse3: true,
            ..Default::default()
        };
        let fisttp = d64(&[0xDD, 0x08]);
        let fld = d64(&[0xD9, 0x00]);
        let fx = FxArea::initial();
        let cr = |cr0| ControlRegs {
            cr0,
            ..Default::default()
        };
        assert_eq!(check(&fld, &cr(CR0_NE), all, &fx), Ok(None));
        assert_eq!(check(&fld, &cr(CR0_EM), all, &fx), Ok(Some(Exception::NM)));
        assert_eq!(check(&fld, &cr(CR0_TS), all, &fx), Ok(Some(Exception::NM)));
        let no_sse3 = SimdFeatures::default();
        assert_eq!(check(&fld, &cr(0), no_sse3, &fx), Ok(None));
        assert_eq!(
            check(&fisttp, &cr(CR0_TS), no_sse3, &fx),
            Ok(Some(Exception::UD))
        );
        let mut pending = FxArea::initial();
        fsw(&mut pending, 0x81);
        assert_eq!(
            check(&fld, &cr(CR0_NE), all, &pending),
            Ok(Some(Exception::MF))
        );
        assert_eq!(
            check(&fld, &cr(0), all, &pending),
            Err(SimdError::PendingX87Error)
        );
    }

    type Calls = Vec<(u64, u8, Option<u64>)>;

    /// Runs `code`'s move on `fx` against a device at 0x1000 answering `reply`.
    fn run(code: &[u8], fx: &mut FxArea, reply: &[u64]) -> Calls {
        let (mv, _) = decode(code, 64, 0).unwrap();
        let mut calls = Vec::new();
        let mut replies = reply.iter().copied();
        let mut device = |a: u64, s: u8, v: Option<u64>| {
            calls.push((a, s, v));
            replies.next().unwrap_or(u64::MAX)
        };
        let mut ram = NoRam;
        let mut env = Env {
            mem: &mut ram,
            cr: ControlRegs::default(),
            segments: [None; 6],
        };
        execute(
            &mv,
            fx,
            Operand::Exit { gpa: 0x1000 },
            0x7777,
            0x1000,
            &mut device,
            &mut env,
        )
        .unwrap();
        calls
    }

    #[test]
    fn loads_and_stores_round_trip_through_the_processor() {
        let mut fx = FxArea::initial();
        // fld dword [rax] of 1.5f32, then fstp qword [rax]: 1.5f64.
        let calls = run(&[0xD9, 0x00], &mut fx, &[u64::from(1.5f32.to_bits())]);
        assert_eq!(calls, [(0x1000, 4, None)]);
        assert_eq!(fx.top(), 7, "one value pushed");
        assert_eq!(fx.abridged_tags(), 0x80, "R7 valid");
        let calls = run(&[0xDD, 0x18], &mut fx, &[]);
        assert_eq!(calls, [(0x1000, 8, Some(1.5f64.to_bits()))]);
        assert_eq!((fx.top(), fx.abridged_tags()), (0, 0), "popped");
        // FIP/FOP/FDP: as before (processors that record them only with an
        // exception pending, or FOP never) or the guest's, never the host's.
        let fop = u64::from(u16::from_le_bytes([fx.0[6], fx.0[7]]));
        let fip = u64::from_le_bytes(fx.0[8..16].try_into().unwrap());
        let fdp = u64::from_le_bytes(fx.0[16..24].try_into().unwrap());
        assert!(matches!(fop, 0 | 0x518), "{fop:#x}");
        assert!(matches!(fip, 0 | 0x7777), "{fip:#x}");
        assert!(matches!(fdp, 0 | 0x1000), "{fdp:#x}");
        // fild qword [rax] of -3, fistp word [rax]: -3 as 16 bits.
        run(&[0xDF, 0x28], &mut fx, &[(-3i64) as u64]);
        let calls = run(&[0xDF, 0x18], &mut fx, &[]);
        assert_eq!(calls, [(0x1000, 2, Some(0xFFFD))]);
        // 80 bits: an 8-byte and a 2-byte access, in both directions, exactly.
        let ten = [0x0123_4567_89AB_CDEFu64 | 1 << 63, 0x4005];
        let calls = run(&[0xDB, 0x28], &mut fx, &ten);
        assert_eq!(calls, [(0x1000, 8, None), (0x1008, 2, None)]);
        let calls = run(&[0xDB, 0x38], &mut fx, &[]);
        assert_eq!(
            calls,
            [(0x1000, 8, Some(ten[0])), (0x1008, 2, Some(ten[1]))]
        );
    }

    #[test]
    fn rounding_follows_the_guests_control_word() {
        // 2.5 stored as an integer: round to nearest even -> 2; FCW.RC = down -> 2;
        // up -> 3; FISTTP truncates whatever RC says -> 2.
        for (rc, code, want) in [
            (0u16, &[0xDB, 0x18][..], 2u64),
            (1, &[0xDB, 0x18], 2),
            (2, &[0xDB, 0x18], 3),
            (2, &[0xDB, 0x08], 2),
        ] {
            let mut fx = FxArea::initial();
            fx.0[0..2].copy_from_slice(&(0x037F | rc << 10).to_le_bytes());
            run(&[0xDD, 0x00], &mut fx, &[2.5f64.to_bits()]);
            let calls = run(code, &mut fx, &[]);
            assert_eq!(calls, [(0x1000, 4, Some(want))], "rc {rc}");
        }
    }

    #[test]
    fn an_unmasked_invalid_store_writes_nothing_and_stays_pending() {
        // fstp dword [rax] from an empty stack with IM clear: stack underflow, IE.
        let mut fx = FxArea::initial();
        fx.0[0..2].copy_from_slice(&0x037Eu16.to_le_bytes());
        let calls = run(&[0xD9, 0x18], &mut fx, &[]);
        assert!(calls.is_empty(), "{calls:?}");
        assert_ne!(
            fx.fsw() & FSW_ES,
            0,
            "pending for the guest's next x87 instruction"
        );
        assert_ne!(fx.fsw() & 0x41, 0, "IE and SF");
        // Masked, the indefinite QNaN is stored.
        let mut fx = FxArea::initial();
        let calls = run(&[0xD9, 0x18], &mut fx, &[]);
        assert_eq!(calls, [(0x1000, 4, Some(0xFFC0_0000))]);
        assert_eq!(fx.fsw() & FSW_ES, 0);
    }

    /// ST(0)'s 80-bit value in `fx`: (significand, sign and exponent).
    fn st0(fx: &FxArea) -> (u64, u16) {
        let r = fx.st(0);
        (
            u64::from_le_bytes(r[..8].try_into().unwrap()),
            u16::from_le_bytes([r[8], r[9]]),
        )
    }

    #[test]
    fn arithmetic_rounds_by_the_guests_control_word() {
        // 1.0 (fld qword) divided by 3.0f32 from the device (fdiv dword [rax]): the
        // 64-bit significand of 1/3 is AAAA...AAAA with 1010... beyond it, so nearest
        // and up give ...AB, down and toward zero ...AA (64-bit precision, FCW.PC=3).
        for (rc, want) in [
            (0u16, 0xAAAA_AAAA_AAAA_AAABu64),
            (1, 0xAAAA_AAAA_AAAA_AAAA),
            (2, 0xAAAA_AAAA_AAAA_AAAB),
            (3, 0xAAAA_AAAA_AAAA_AAAA),
        ] {
            let mut fx = FxArea::initial();
            fx.0[0..2].copy_from_slice(&(0x037F | rc << 10).to_le_bytes());
            run(&[0xDD, 0x00], &mut fx, &[1.0f64.to_bits()]);
            let calls = run(&[0xD8, 0x30], &mut fx, &[u64::from(3.0f32.to_bits())]);
            assert_eq!(calls, [(0x1000, 4, None)]);
            assert_eq!(st0(&fx), (want, 0x3FFD), "rc {rc}");
            assert_ne!(fx.fsw() & 0x20, 0, "PE: 1/3 is inexact");
            assert_eq!(fx.top(), 7, "no pop");
        }
        // fadd qword [rax] of 2.25 to 1.5, then fstp qword: 3.75 as Rust computes it.
        let mut fx = FxArea::initial();
        run(&[0xDD, 0x00], &mut fx, &[1.5f64.to_bits()]);
        run(&[0xDC, 0x00], &mut fx, &[2.25f64.to_bits()]);
        let calls = run(&[0xDD, 0x18], &mut fx, &[]);
        assert_eq!(calls, [(0x1000, 8, Some((1.5f64 + 2.25).to_bits()))]);
        // fisub word [rax]: 10 - (-5) = 15; ficomp dword [rax] against 15: C3 (equal),
        // popped.
        run(&[0xDD, 0x00], &mut fx, &[10.0f64.to_bits()]);
        run(&[0xDE, 0x20], &mut fx, &[0xFFFB]);
        assert_eq!(st0(&fx), (0xF000_0000_0000_0000, 0x4002), "15.0");
        run(&[0xDA, 0x18], &mut fx, &[15]);
        assert_eq!(fx.fsw() & 0x4500, 0x4000, "C3 set, C2 and C0 clear");
        assert_eq!(fx.top(), 0, "popped");
        // fcom dword [rax] of all ones (a NaN, what unbacked space reads): unordered,
        // C3 C2 C0 all set, and IE (masked: no exception pending).
        run(&[0xDD, 0x00], &mut fx, &[1.0f64.to_bits()]);
        run(&[0xD8, 0x10], &mut fx, &[u64::MAX]);
        assert_eq!(fx.fsw() & 0x4501, 0x4501);
        assert!(!x87_error_pending(&fx));
    }

    #[test]
    fn an_unmasked_divide_by_zero_leaves_st0_and_stays_pending() {
        // FCW with ZM clear: fdiv qword [rax] of +0.0 sets ZE and ES, ST(0) keeps 2.0.
        let mut fx = FxArea::initial();
        fx.0[0..2].copy_from_slice(&0x037Bu16.to_le_bytes());
        run(&[0xDD, 0x00], &mut fx, &[2.0f64.to_bits()]);
        run(&[0xDC, 0x30], &mut fx, &[0]);
        assert_eq!(st0(&fx), (1 << 63, 0x4000), "2.0 unchanged");
        assert_eq!(fx.fsw() & 0x84, 0x84, "ZE and ES");
        assert!(
            x87_error_pending(&fx),
            "the next waiting instruction raises #MF"
        );
        // Masked: +infinity.
        let mut fx = FxArea::initial();
        run(&[0xDD, 0x00], &mut fx, &[2.0f64.to_bits()]);
        run(&[0xDC, 0x30], &mut fx, &[0]);
        assert_eq!(st0(&fx), (1 << 63, 0x7FFF));
        assert!(!x87_error_pending(&fx));
    }
}
