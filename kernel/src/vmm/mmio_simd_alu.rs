//! SSE computations whose memory source is MMIO or unbacked guest-physical space
//! (`ADDPS xmm, m128`, `PCMPEQB`, `UCOMISS`, `CVTSI2SD xmm, m32`, `CVTTSD2SI r64,
//! m64`, ...), and `MASKMOVDQU`/`MASKMOVQ`, the masked byte stores through DS:rDI.
//! [`super::mmio_sse::emulate`] hands them here when neither [`super::mmio`] nor the
//! MMX/SSE moves take the instruction.
//!
//! **Computations.** Only the forms in [`table`] (an allow-list by iced `Code`, legacy
//! encodings only), each of which reads one memory source and writes an XMM
//! register, RFLAGS (`UCOMISS`/`COMISS`/`UCOMISD`/`COMISD`/`PTEST`) or a general-
//! purpose register (`CVTSS2SI`/`CVTTSS2SI`/`CVTSD2SI`/`CVTTSD2SI`): the packed and
//! scalar SSE/SSE2 arithmetic, logic, comparisons into RFLAGS and conversions, the
//! SSE2 integer forms, SSE3 `ADDSUBPx`/`HADDPx`/`HSUBPx`/`MOVDDUP`/`MOVSLDUP`/
//! `MOVSHDUP`, SSSE3's forms without an immediate and SSE4.1's integer forms,
//! `PTEST` and `PMOVSX*`/`PMOVZX*`. Nothing with an immediate (`PSHUFD`, `CMPPS`,
//! `ROUNDPS`, `PALIGNR`, ...), no MMX-register computation (`PADDB mm, m64`), no
//! `LDMXCSR`/`FXRSTOR` or other state-loading form: those stop the VM with the
//! instruction named.
//!
//! The operation itself is the processor's: the operand's bytes are read from the
//! device (8-byte pieces at ascending addresses, as the moves do), and the host runs
//! the *same* instruction from a fixed table of assembled stubs
//! ([`vcpu::fpu::sse_memory_op`], `op xmm0, [rdi]`) on a 16-byte-aligned host buffer,
//! with a copy of the guest's FXSAVE image loaded in which the guest's register
//! operand was swapped into XMM0. No guest byte is ever executed, and the stub is
//! chosen by the allow-listed `Code` alone. The result (XMM0, the GPR or ZF/PF/CF)
//! goes to the guest's destination; nothing else of the image is taken back but
//! MXCSR's flags.
//!
//! Checks first, in the processor's order (SDM Vol. 2, each instruction's "Protected
//! Mode Exceptions", Exceptions Types 2-5; Vol. 1 11.6.7), injected with RIP left on
//! the instruction and nothing changed: #UD for CR0.EM, CR4.OSFXSR clear or an
//! extension the guest's CPUID view lacks ([`SimdFeatures`]); #NM for CR0.TS; #GP(0)
//! for a 16-byte memory operand that is not 16-byte aligned (every packed legacy-SSE
//! form here requires it; the scalar and 8/4/2-byte forms do not).
//!
//! **SIMD floating-point exceptions are the guest's** (SDM Vol. 1 11.5, 11.8). The
//! host runs the instruction with every MXCSR exception masked and its flags clear,
//! then compares the flags raised with the guest's masks. None unmasked: the guest's
//! MXCSR gets the flags, the destination the result. One unmasked: the processor
//! would have faulted with the destination unchanged, so the guest gets #XM (with
//! CR4.OSXMMEXCPT, else #UD) and its MXCSR the flags the processor sets then (SDM
//! Vol. 1 11.5.2): only the pre-computation ones (IE, DE, ZE) when one of those is
//! unmasked, else every flag raised. The one thing a masked run cannot tell is an
//! unmasked underflow's tininess (with UE unmasked, a tiny exact result raises UE;
//! masked, nothing, SDM Vol. 1 11.5.2.4): a computation that can underflow with UE
//! unmasked is refused ([`SimdError::UnmaskedUnderflow`]; every common OS masks it).
//!
//! **`MASKMOVDQU xmm1, xmm2` / `MASKMOVQ mm1, mm2`** store the bytes of the first
//! register whose mask byte in the second has bit 7 set, at DS:rDI (segment override
//! allowed; rDI by the address size) (SDM Vol. 2B MASKMOVDQU). Emulated directly: one
//! 1-byte access per selected byte, in ascending order, each located on its own (so
//! a store that straddles RAM and a device reaches each where it is); no access at
//! all for an all-zero mask. Checks: `MASKMOVDQU` as an SSE2 form above (no
//! alignment); `MASKMOVQ` as an MMX form (SDM Vol. 3A Table 22-8: #UD for CR0.EM or
//! no SSE, #NM for CR0.TS, #MF with an x87 error pending), and it switches the x87
//! unit to MMX mode (TOP 0, all tags valid) as every MMX instruction does.
//!
//! Limits as in [`super::mmio_sse`]: no #AC, no segment-limit checks, no single-step
//! #DB.

use super::guest_walk::{self, GuestMemoryMut};
use super::mmio::{self, MmioError};
use super::mmio_memory::{self, Env, Place};
use super::mmio_sse::{self, Extension, Operand, SimdError, SimdFeatures};
use super::mmio_x87;
use iced_x86::{Code, Instruction, OpKind, Register};
use vcpu::fpu::{FxArea, SseMemOp, SseOperand, SseResult};
use vcpu::{ControlRegs, Exception, GuestRegisters, SegReg, Vcpu};

const CR0_EM: u64 = 1 << 2;
const CR0_TS: u64 = 1 << 3;
const CR0_NE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
/// MXCSR bits 5:0, the exception flags IE DE ZE OE UE PE (SDM Vol. 1 10.2.3).
const MXCSR_FLAGS: u32 = 0x3F;
/// MXCSR bits 12:7, the exception masks in the same order.
const MXCSR_MASKS: u32 = 0x3F << 7;
/// MXCSR.UM, the underflow mask.
const MXCSR_UM: u32 = 1 << 11;
/// IE, DE and ZE: the exceptions detected before the computation (SDM Vol. 1
/// 11.5.2).
const PRE_COMPUTATION: u32 = 0b111;
/// RFLAGS CF, PF, AF, ZF, SF and OF: what `UCOMISS` and the others write (ZF, PF, CF
/// from the result, the rest cleared; `PTEST` clears PF too, which the host run
/// reports as it is).
const STATUS_FLAGS: u64 = 0x8D5;

/// The computations this module emulates: the host's stub, the extension the guest
/// must have, and whether the operation can underflow.
fn table(code: Code) -> Option<(SseMemOp, Extension, bool)> {
    use Extension::*;
    use SseMemOp::*;
    Some(match code {
        Code::Addps_xmm_xmmm128 => (Addps, Sse, true),
        Code::Addss_xmm_xmmm32 => (Addss, Sse, true),
        Code::Addpd_xmm_xmmm128 => (Addpd, Sse2, true),
        Code::Addsd_xmm_xmmm64 => (Addsd, Sse2, true),
        Code::Subps_xmm_xmmm128 => (Subps, Sse, true),
        Code::Subss_xmm_xmmm32 => (Subss, Sse, true),
        Code::Subpd_xmm_xmmm128 => (Subpd, Sse2, true),
        Code::Subsd_xmm_xmmm64 => (Subsd, Sse2, true),
        Code::Mulps_xmm_xmmm128 => (Mulps, Sse, true),
        Code::Mulss_xmm_xmmm32 => (Mulss, Sse, true),
        Code::Mulpd_xmm_xmmm128 => (Mulpd, Sse2, true),
        Code::Mulsd_xmm_xmmm64 => (Mulsd, Sse2, true),
        Code::Divps_xmm_xmmm128 => (Divps, Sse, true),
        Code::Divss_xmm_xmmm32 => (Divss, Sse, true),
        Code::Divpd_xmm_xmmm128 => (Divpd, Sse2, true),
        Code::Divsd_xmm_xmmm64 => (Divsd, Sse2, true),
        Code::Minps_xmm_xmmm128 => (Minps, Sse, false),
        Code::Minss_xmm_xmmm32 => (Minss, Sse, false),
        Code::Minpd_xmm_xmmm128 => (Minpd, Sse2, false),
        Code::Minsd_xmm_xmmm64 => (Minsd, Sse2, false),
        Code::Maxps_xmm_xmmm128 => (Maxps, Sse, false),
        Code::Maxss_xmm_xmmm32 => (Maxss, Sse, false),
        Code::Maxpd_xmm_xmmm128 => (Maxpd, Sse2, false),
        Code::Maxsd_xmm_xmmm64 => (Maxsd, Sse2, false),
        Code::Sqrtps_xmm_xmmm128 => (Sqrtps, Sse, false),
        Code::Sqrtss_xmm_xmmm32 => (Sqrtss, Sse, false),
        Code::Sqrtpd_xmm_xmmm128 => (Sqrtpd, Sse2, false),
        Code::Sqrtsd_xmm_xmmm64 => (Sqrtsd, Sse2, false),
        Code::Rcpps_xmm_xmmm128 => (Rcpps, Sse, false),
        Code::Rcpss_xmm_xmmm32 => (Rcpss, Sse, false),
        Code::Rsqrtps_xmm_xmmm128 => (Rsqrtps, Sse, false),
        Code::Rsqrtss_xmm_xmmm32 => (Rsqrtss, Sse, false),
        Code::Andps_xmm_xmmm128 => (Andps, Sse, false),
        Code::Andpd_xmm_xmmm128 => (Andpd, Sse2, false),
        Code::Andnps_xmm_xmmm128 => (Andnps, Sse, false),
        Code::Andnpd_xmm_xmmm128 => (Andnpd, Sse2, false),
        Code::Orps_xmm_xmmm128 => (Orps, Sse, false),
        Code::Orpd_xmm_xmmm128 => (Orpd, Sse2, false),
        Code::Xorps_xmm_xmmm128 => (Xorps, Sse, false),
        Code::Xorpd_xmm_xmmm128 => (Xorpd, Sse2, false),
        Code::Unpcklps_xmm_xmmm128 => (Unpcklps, Sse, false),
        Code::Unpcklpd_xmm_xmmm128 => (Unpcklpd, Sse2, false),
        Code::Unpckhps_xmm_xmmm128 => (Unpckhps, Sse, false),
        Code::Unpckhpd_xmm_xmmm128 => (Unpckhpd, Sse2, false),
        Code::Ucomiss_xmm_xmmm32 => (Ucomiss, Sse, false),
        Code::Comiss_xmm_xmmm32 => (Comiss, Sse, false),
        Code::Ucomisd_xmm_xmmm64 => (Ucomisd, Sse2, false),
        Code::Comisd_xmm_xmmm64 => (Comisd, Sse2, false),
        Code::Cvtss2sd_xmm_xmmm32 => (Cvtss2sd, Sse2, false),
        Code::Cvtsd2ss_xmm_xmmm64 => (Cvtsd2ss, Sse2, true),
        Code::Cvtps2pd_xmm_xmmm64 => (Cvtps2pd, Sse2, false),
        Code::Cvtpd2ps_xmm_xmmm128 => (Cvtpd2ps, Sse2, true),
        Code::Cvtdq2ps_xmm_xmmm128 => (Cvtdq2ps, Sse2, false),
        Code::Cvtps2dq_xmm_xmmm128 => (Cvtps2dq, Sse2, false),
        Code::Cvttps2dq_xmm_xmmm128 => (Cvttps2dq, Sse2, false),
        Code::Cvtdq2pd_xmm_xmmm64 => (Cvtdq2pd, Sse2, false),
        Code::Cvtpd2dq_xmm_xmmm128 => (Cvtpd2dq, Sse2, false),
        Code::Cvttpd2dq_xmm_xmmm128 => (Cvttpd2dq, Sse2, false),
        Code::Cvtsi2ss_xmm_rm32 => (Cvtsi2ssM32, Sse, false),
        Code::Cvtsi2ss_xmm_rm64 => (Cvtsi2ssM64, Sse, false),
        Code::Cvtsi2sd_xmm_rm32 => (Cvtsi2sdM32, Sse2, false),
        Code::Cvtsi2sd_xmm_rm64 => (Cvtsi2sdM64, Sse2, false),
        Code::Cvtss2si_r32_xmmm32 => (Cvtss2siR32, Sse, false),
        Code::Cvtss2si_r64_xmmm32 => (Cvtss2siR64, Sse, false),
        Code::Cvttss2si_r32_xmmm32 => (Cvttss2siR32, Sse, false),
        Code::Cvttss2si_r64_xmmm32 => (Cvttss2siR64, Sse, false),
        Code::Cvtsd2si_r32_xmmm64 => (Cvtsd2siR32, Sse2, false),
        Code::Cvtsd2si_r64_xmmm64 => (Cvtsd2siR64, Sse2, false),
        Code::Cvttsd2si_r32_xmmm64 => (Cvttsd2siR32, Sse2, false),
        Code::Cvttsd2si_r64_xmmm64 => (Cvttsd2siR64, Sse2, false),
        Code::Paddb_xmm_xmmm128 => (Paddb, Sse2, false),
        Code::Paddw_xmm_xmmm128 => (Paddw, Sse2, false),
        Code::Paddd_xmm_xmmm128 => (Paddd, Sse2, false),
        Code::Paddq_xmm_xmmm128 => (Paddq, Sse2, false),
        Code::Psubb_xmm_xmmm128 => (Psubb, Sse2, false),
        Code::Psubw_xmm_xmmm128 => (Psubw, Sse2, false),
        Code::Psubd_xmm_xmmm128 => (Psubd, Sse2, false),
        Code::Psubq_xmm_xmmm128 => (Psubq, Sse2, false),
        Code::Paddsb_xmm_xmmm128 => (Paddsb, Sse2, false),
        Code::Paddsw_xmm_xmmm128 => (Paddsw, Sse2, false),
        Code::Paddusb_xmm_xmmm128 => (Paddusb, Sse2, false),
        Code::Paddusw_xmm_xmmm128 => (Paddusw, Sse2, false),
        Code::Psubsb_xmm_xmmm128 => (Psubsb, Sse2, false),
        Code::Psubsw_xmm_xmmm128 => (Psubsw, Sse2, false),
        Code::Psubusb_xmm_xmmm128 => (Psubusb, Sse2, false),
        Code::Psubusw_xmm_xmmm128 => (Psubusw, Sse2, false),
        Code::Pmullw_xmm_xmmm128 => (Pmullw, Sse2, false),
        Code::Pmulhw_xmm_xmmm128 => (Pmulhw, Sse2, false),
        Code::Pmulhuw_xmm_xmmm128 => (Pmulhuw, Sse2, false),
        Code::Pmuludq_xmm_xmmm128 => (Pmuludq, Sse2, false),
        Code::Pmaddwd_xmm_xmmm128 => (Pmaddwd, Sse2, false),
        Code::Pavgb_xmm_xmmm128 => (Pavgb, Sse2, false),
        Code::Pavgw_xmm_xmmm128 => (Pavgw, Sse2, false),
        Code::Pminub_xmm_xmmm128 => (Pminub, Sse2, false),
        Code::Pmaxub_xmm_xmmm128 => (Pmaxub, Sse2, false),
        Code::Pminsw_xmm_xmmm128 => (Pminsw, Sse2, false),
        Code::Pmaxsw_xmm_xmmm128 => (Pmaxsw, Sse2, false),
        Code::Psadbw_xmm_xmmm128 => (Psadbw, Sse2, false),
        Code::Pand_xmm_xmmm128 => (Pand, Sse2, false),
        Code::Pandn_xmm_xmmm128 => (Pandn, Sse2, false),
        Code::Por_xmm_xmmm128 => (Por, Sse2, false),
        Code::Pxor_xmm_xmmm128 => (Pxor, Sse2, false),
        Code::Pcmpeqb_xmm_xmmm128 => (Pcmpeqb, Sse2, false),
        Code::Pcmpeqw_xmm_xmmm128 => (Pcmpeqw, Sse2, false),
        Code::Pcmpeqd_xmm_xmmm128 => (Pcmpeqd, Sse2, false),
        Code::Pcmpgtb_xmm_xmmm128 => (Pcmpgtb, Sse2, false),
        Code::Pcmpgtw_xmm_xmmm128 => (Pcmpgtw, Sse2, false),
        Code::Pcmpgtd_xmm_xmmm128 => (Pcmpgtd, Sse2, false),
        Code::Packsswb_xmm_xmmm128 => (Packsswb, Sse2, false),
        Code::Packssdw_xmm_xmmm128 => (Packssdw, Sse2, false),
        Code::Packuswb_xmm_xmmm128 => (Packuswb, Sse2, false),
        Code::Punpcklbw_xmm_xmmm128 => (Punpcklbw, Sse2, false),
        Code::Punpcklwd_xmm_xmmm128 => (Punpcklwd, Sse2, false),
        Code::Punpckldq_xmm_xmmm128 => (Punpckldq, Sse2, false),
        Code::Punpcklqdq_xmm_xmmm128 => (Punpcklqdq, Sse2, false),
        Code::Punpckhbw_xmm_xmmm128 => (Punpckhbw, Sse2, false),
        Code::Punpckhwd_xmm_xmmm128 => (Punpckhwd, Sse2, false),
        Code::Punpckhdq_xmm_xmmm128 => (Punpckhdq, Sse2, false),
        Code::Punpckhqdq_xmm_xmmm128 => (Punpckhqdq, Sse2, false),
        Code::Psllw_xmm_xmmm128 => (Psllw, Sse2, false),
        Code::Pslld_xmm_xmmm128 => (Pslld, Sse2, false),
        Code::Psllq_xmm_xmmm128 => (Psllq, Sse2, false),
        Code::Psrlw_xmm_xmmm128 => (Psrlw, Sse2, false),
        Code::Psrld_xmm_xmmm128 => (Psrld, Sse2, false),
        Code::Psrlq_xmm_xmmm128 => (Psrlq, Sse2, false),
        Code::Psraw_xmm_xmmm128 => (Psraw, Sse2, false),
        Code::Psrad_xmm_xmmm128 => (Psrad, Sse2, false),
        Code::Addsubps_xmm_xmmm128 => (Addsubps, Sse3, true),
        Code::Addsubpd_xmm_xmmm128 => (Addsubpd, Sse3, true),
        Code::Haddps_xmm_xmmm128 => (Haddps, Sse3, true),
        Code::Haddpd_xmm_xmmm128 => (Haddpd, Sse3, true),
        Code::Hsubps_xmm_xmmm128 => (Hsubps, Sse3, true),
        Code::Hsubpd_xmm_xmmm128 => (Hsubpd, Sse3, true),
        Code::Movsldup_xmm_xmmm128 => (Movsldup, Sse3, false),
        Code::Movshdup_xmm_xmmm128 => (Movshdup, Sse3, false),
        Code::Movddup_xmm_xmmm64 => (Movddup, Sse3, false),
        Code::Pshufb_xmm_xmmm128 => (Pshufb, Ssse3, false),
        Code::Phaddw_xmm_xmmm128 => (Phaddw, Ssse3, false),
        Code::Phaddd_xmm_xmmm128 => (Phaddd, Ssse3, false),
        Code::Phaddsw_xmm_xmmm128 => (Phaddsw, Ssse3, false),
        Code::Phsubw_xmm_xmmm128 => (Phsubw, Ssse3, false),
        Code::Phsubd_xmm_xmmm128 => (Phsubd, Ssse3, false),
        Code::Phsubsw_xmm_xmmm128 => (Phsubsw, Ssse3, false),
        Code::Pmaddubsw_xmm_xmmm128 => (Pmaddubsw, Ssse3, false),
        Code::Pmulhrsw_xmm_xmmm128 => (Pmulhrsw, Ssse3, false),
        Code::Psignb_xmm_xmmm128 => (Psignb, Ssse3, false),
        Code::Psignw_xmm_xmmm128 => (Psignw, Ssse3, false),
        Code::Psignd_xmm_xmmm128 => (Psignd, Ssse3, false),
        Code::Pabsb_xmm_xmmm128 => (Pabsb, Ssse3, false),
        Code::Pabsw_xmm_xmmm128 => (Pabsw, Ssse3, false),
        Code::Pabsd_xmm_xmmm128 => (Pabsd, Ssse3, false),
        Code::Pmulld_xmm_xmmm128 => (Pmulld, Sse41, false),
        Code::Pmuldq_xmm_xmmm128 => (Pmuldq, Sse41, false),
        Code::Pminsb_xmm_xmmm128 => (Pminsb, Sse41, false),
        Code::Pminsd_xmm_xmmm128 => (Pminsd, Sse41, false),
        Code::Pminuw_xmm_xmmm128 => (Pminuw, Sse41, false),
        Code::Pminud_xmm_xmmm128 => (Pminud, Sse41, false),
        Code::Pmaxsb_xmm_xmmm128 => (Pmaxsb, Sse41, false),
        Code::Pmaxsd_xmm_xmmm128 => (Pmaxsd, Sse41, false),
        Code::Pmaxuw_xmm_xmmm128 => (Pmaxuw, Sse41, false),
        Code::Pmaxud_xmm_xmmm128 => (Pmaxud, Sse41, false),
        Code::Pcmpeqq_xmm_xmmm128 => (Pcmpeqq, Sse41, false),
        Code::Packusdw_xmm_xmmm128 => (Packusdw, Sse41, false),
        Code::Phminposuw_xmm_xmmm128 => (Phminposuw, Sse41, false),
        Code::Ptest_xmm_xmmm128 => (Ptest, Sse41, false),
        Code::Pmovsxbw_xmm_xmmm64 => (Pmovsxbw, Sse41, false),
        Code::Pmovsxbd_xmm_xmmm32 => (Pmovsxbd, Sse41, false),
        Code::Pmovsxbq_xmm_xmmm16 => (Pmovsxbq, Sse41, false),
        Code::Pmovsxwd_xmm_xmmm64 => (Pmovsxwd, Sse41, false),
        Code::Pmovsxwq_xmm_xmmm32 => (Pmovsxwq, Sse41, false),
        Code::Pmovsxdq_xmm_xmmm64 => (Pmovsxdq, Sse41, false),
        Code::Pmovzxbw_xmm_xmmm64 => (Pmovzxbw, Sse41, false),
        Code::Pmovzxbd_xmm_xmmm32 => (Pmovzxbd, Sse41, false),
        Code::Pmovzxbq_xmm_xmmm16 => (Pmovzxbq, Sse41, false),
        Code::Pmovzxwd_xmm_xmmm64 => (Pmovzxwd, Sse41, false),
        Code::Pmovzxwq_xmm_xmmm32 => (Pmovzxwq, Sse41, false),
        Code::Pmovzxdq_xmm_xmmm64 => (Pmovzxdq, Sse41, false),
        _ => return None,
    })
}

/// Where a computation's result goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AluDest {
    /// XMM0-15, which is also the first source.
    Xmm(u8),
    /// RFLAGS; the XMM register (the first source) is read only.
    Flags(u8),
    /// A general-purpose register by ModR/M number, 4 or 8 bytes wide.
    Gpr { index: u8, width: u8 },
}

/// A decoded computation with a memory source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimdAlu {
    /// Instruction length in bytes.
    pub len: usize,
    pub op: SseMemOp,
    pub dest: AluDest,
    pub needs: Extension,
    /// A result can be tiny (see the module header on unmasked underflow).
    pub may_underflow: bool,
}

impl SimdAlu {
    /// Bytes read: 16, 8, 4 or 2.
    pub fn width(&self) -> u8 {
        self.op.width()
    }

    /// A 16-byte legacy-SSE memory operand must be 16-byte aligned (#GP(0)).
    pub fn aligned(&self) -> bool {
        self.width() == 16
    }
}

/// A decoded `MASKMOVDQU` (XMM registers) or `MASKMOVQ` (MMX registers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaskMove {
    pub len: usize,
    pub mmx: bool,
    /// The register whose bytes are stored.
    pub src: u8,
    /// The register whose bytes' bit 7 selects them.
    pub mask: u8,
    /// DS unless overridden.
    pub seg: SegReg,
    /// The address size in bytes (rDI is DI, EDI or RDI).
    pub address_size: u8,
}

/// What this module decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimdAluInsn {
    Alu(SimdAlu),
    MaskMove(MaskMove),
}

/// Decodes the instruction at the start of `bytes` (`bitness`-bit code at `rip`).
pub fn decode(
    bytes: &[u8],
    bitness: u32,
    rip: u64,
) -> Result<(SimdAluInsn, Instruction), MmioError> {
    let insn = mmio::decode_instruction(bytes, bitness, rip)?;
    let unsupported = MmioError::Unsupported {
        mnemonic: insn.mnemonic(),
        code: insn.code(),
    };
    if let Code::Maskmovdqu_rDI_xmm_xmm | Code::Maskmovq_rDI_mm_mm = insn.code() {
        let mmx = insn.code() == Code::Maskmovq_rDI_mm_mm;
        let address_size = match insn.op_kind(0) {
            OpKind::MemorySegDI => 2,
            OpKind::MemorySegEDI => 4,
            OpKind::MemorySegRDI => 8,
            _ => return Err(unsupported),
        };
        let (first, count) = if mmx {
            (Register::MM0, 8)
        } else {
            (Register::XMM0, 16)
        };
        let src = mmio_sse::class(insn.op_register(1), first, count).ok_or(unsupported)?;
        let mask = mmio_sse::class(insn.op_register(2), first, count).ok_or(unsupported)?;
        let seg = mmio_sse::seg_reg(insn.memory_segment()).ok_or(unsupported)?;
        return Ok((
            SimdAluInsn::MaskMove(MaskMove {
                len: insn.len(),
                mmx,
                src,
                mask,
                seg,
                address_size,
            }),
            insn,
        ));
    }
    let (op, needs, may_underflow) = table(insn.code()).ok_or(unsupported)?;
    // Every form here reads its source from operand 1 (a register there is another
    // encoding of the same Code, which cannot have caused an MMIO exit).
    if insn.op_count() != 2 || insn.op_kind(1) != OpKind::Memory {
        return Err(MmioError::NoMemoryOperand {
            mnemonic: insn.mnemonic(),
        });
    }
    let r = insn.op_register(0);
    let dest = match op.result() {
        SseResult::Xmm0 => AluDest::Xmm(mmio_sse::class(r, Register::XMM0, 16).ok_or(unsupported)?),
        SseResult::Flags => {
            AluDest::Flags(mmio_sse::class(r, Register::XMM0, 16).ok_or(unsupported)?)
        }
        SseResult::Gpr32 | SseResult::Gpr64 => {
            let (index, width) = mmio_sse::gpr(r).ok_or(unsupported)?;
            let want = if op.result() == SseResult::Gpr64 {
                8
            } else {
                4
            };
            if width != want {
                return Err(unsupported);
            }
            AluDest::Gpr { index, width }
        }
    };
    Ok((
        SimdAluInsn::Alu(SimdAlu {
            len: insn.len(),
            op,
            dest,
            needs,
            may_underflow,
        }),
        insn,
    ))
}

/// The extensions this (host) processor has, from CPUID leaf 1: the stubs run only
/// where the host has the instruction, whatever a VM's configured view says.
pub fn host_features() -> SimdFeatures {
    let leaf1 = core::arch::x86_64::__cpuid(1);
    SimdFeatures::from_leaf1(leaf1.ecx, leaf1.edx)
}

/// The architectural checks in the processor's order (see the module header):
/// `Ok(Some(e))` when the instruction raises `e` instead of running. `address` is the
/// operand's linear address (or any address with the same low 4 bits).
pub fn check(
    insn: &SimdAluInsn,
    cr: &ControlRegs,
    features: SimdFeatures,
    fx: &FxArea,
    address: u64,
) -> Result<Option<Exception>, SimdError> {
    let (needs, mmx) = match insn {
        SimdAluInsn::Alu(a) => (a.needs, false),
        SimdAluInsn::MaskMove(m) if m.mmx => (Extension::Sse, true),
        SimdAluInsn::MaskMove(_) => (Extension::Sse2, false),
    };
    if cr.cr0 & CR0_EM != 0 || !features.has(needs) {
        return Ok(Some(Exception::UD));
    }
    if !mmx && cr.cr4 & CR4_OSFXSR == 0 {
        return Ok(Some(Exception::UD));
    }
    if cr.cr0 & CR0_TS != 0 {
        return Ok(Some(Exception::NM));
    }
    if mmx && mmio_x87::x87_error_pending(fx) {
        if cr.cr0 & CR0_NE == 0 {
            return Err(SimdError::PendingX87Error);
        }
        return Ok(Some(Exception::MF));
    }
    if let SimdAluInsn::Alu(a) = insn {
        if a.aligned() && address & 15 != 0 {
            return Ok(Some(Exception::GP0));
        }
    }
    Ok(None)
}

/// What a checked computation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AluOutcome {
    /// The result is in `fx` (an XMM destination, MXCSR's flags); `flags` are the new
    /// ZF/PF/CF for [`AluDest::Flags`], `gpr` the value for [`AluDest::Gpr`].
    Done { flags: u64, gpr: u64 },
    /// An unmasked SIMD floating-point exception: `fx` has only MXCSR's new flags,
    /// and the guest gets this exception with RIP on the instruction.
    Fault(Exception),
}

/// Carries out a checked computation on `fx`: the operand's pieces are located
/// first (an error changes nothing), read in ascending order, and the host's stub
/// runs on them (see the module header). `osxmmexcpt` is CR4.OSXMMEXCPT.
///
/// `fx` must be restorable on this processor (the vCPU's own image).
pub fn execute<M: GuestMemoryMut>(
    alu: &SimdAlu,
    fx: &mut FxArea,
    at: Operand,
    osxmmexcpt: bool,
    device: &mut dyn FnMut(u64, u8, Option<u64>) -> u64,
    env: &mut Env<'_, M>,
) -> Result<AluOutcome, SimdError> {
    let guest_mxcsr = fx.mxcsr();
    if alu.may_underflow && guest_mxcsr & MXCSR_UM == 0 {
        return Err(SimdError::UnmaskedUnderflow);
    }
    if !host_features().has(alu.needs) {
        return Err(SimdError::HostLacks(alu.needs));
    }
    let width = alu.width();
    let piece = width.min(8);
    let pieces = usize::from(width / piece);
    let mut places = [Place::Device(0); 2];
    for (k, place) in places.iter_mut().enumerate().take(pieces) {
        let step = (k * usize::from(piece)) as u64;
        *place = match at {
            Operand::Linear { seg, offset } => env.place(seg, offset.wrapping_add(step), piece)?,
            Operand::Exit { gpa } => Place::Device(gpa.wrapping_add(step)),
        };
    }
    let mut buf = SseOperand::default();
    for (k, &place) in places.iter().enumerate().take(pieces) {
        let v = env.load(place, piece, device) & mmio::mask(piece);
        let at = k * usize::from(piece);
        buf.0[at..at + usize::from(piece)].copy_from_slice(&v.to_le_bytes()[..usize::from(piece)]);
    }
    // The image the host runs: the guest's, with its register operand in XMM0, every
    // exception masked and no flag set, so what the instruction raises is all that
    // shows afterwards.
    let mut image = fx.clone();
    let reg = match alu.dest {
        AluDest::Xmm(n) | AluDest::Flags(n) => Some(usize::from(n)),
        AluDest::Gpr { .. } => None,
    };
    if let Some(n) = reg {
        let (x0, xn) = (image.xmm(0), image.xmm(n));
        image.set_xmm(0, xn);
        image.set_xmm(n, x0);
    }
    image.set_mxcsr((guest_mxcsr | MXCSR_MASKS) & !MXCSR_FLAGS);
    // SAFETY: the hypervisor runs with CR4.OSFXSR set and CR0.EM/TS clear (the
    // backends' `enable`); `image` is the vCPU's image, restorable here as before
    // every entry, with only MXCSR's masks set and flags cleared (bits every
    // MXCSR_MASK allows); every exception is masked; the host has the extension
    // (checked above).
    let out = unsafe { vcpu::fpu::sse_memory_op(&mut image, alu.op, &buf) };
    let raised = image.mxcsr() & MXCSR_FLAGS;
    let masks = (guest_mxcsr & MXCSR_MASKS) >> 7;
    let unmasked = raised & !masks;
    if unmasked != 0 {
        // SDM Vol. 1 11.5.2: an unmasked pre-computation exception stops before the
        // computation (only IE/DE/ZE flags); an unmasked post-computation one comes
        // with every flag the operation raised.
        let set = if unmasked & PRE_COMPUTATION != 0 {
            raised & PRE_COMPUTATION
        } else {
            raised
        };
        fx.set_mxcsr(guest_mxcsr | set);
        return Ok(AluOutcome::Fault(if osxmmexcpt {
            Exception::XM
        } else {
            Exception::UD
        }));
    }
    fx.set_mxcsr(guest_mxcsr | raised);
    if let AluDest::Xmm(n) = alu.dest {
        fx.set_xmm(usize::from(n), image.xmm(0));
    }
    Ok(AluOutcome::Done {
        flags: out.flags,
        gpr: out.gpr,
    })
}

/// Carries out a checked `MASKMOVDQU`/`MASKMOVQ`: every selected byte's place is
/// located first (an error changes nothing), then each is written, one 1-byte
/// access per byte in ascending order. `gpa` is the exit's address (the first
/// selected byte's), used where the segment base is unknown.
pub fn execute_mask_move<M: GuestMemoryMut>(
    mm: &MaskMove,
    regs: &GuestRegisters,
    fx: &mut FxArea,
    gpa: u64,
    device: &mut dyn FnMut(u64, u8, Option<u64>) -> u64,
    env: &mut Env<'_, M>,
) -> Result<(), SimdError> {
    let (data, mask, n) = if mm.mmx {
        (
            bytes16(fx.mm(usize::from(mm.src))),
            bytes16(fx.mm(usize::from(mm.mask))),
            8,
        )
    } else {
        (
            fx.xmm(usize::from(mm.src)),
            fx.xmm(usize::from(mm.mask)),
            16,
        )
    };
    let amask = mmio::mask(mm.address_size);
    let rdi = regs.rdi & amask;
    let known = env.linear(mm.seg, rdi).is_ok();
    let mut places = [Place::Device(0); 16];
    let mut first = None;
    for i in 0..n {
        if mask[i] & 0x80 == 0 {
            continue;
        }
        let first = *first.get_or_insert(i);
        places[i] = if known {
            env.place(mm.seg, rdi.wrapping_add(i as u64) & amask, 1)?
        } else {
            Place::Device(gpa.wrapping_add((i - first) as u64))
        };
    }
    if mm.mmx {
        fx.enter_mmx_mode();
    }
    for i in 0..n {
        if mask[i] & 0x80 != 0 {
            env.store(places[i], 1, u64::from(data[i]), device);
        }
    }
    Ok(())
}

fn bytes16(v: u64) -> [u8; 16] {
    let mut b = [0; 16];
    b[..8].copy_from_slice(&v.to_le_bytes());
    b
}

/// Writes general-purpose register `index` as a 32-bit (zero-extended, as in 64-bit
/// mode; outside it the upper half is not visible) or 64-bit destination.
fn set_gpr<V: Vcpu>(vcpu: &mut V, index: u8, value: u64) {
    if index == 4 {
        vcpu.set_rsp(value);
        return;
    }
    let r = vcpu.regs();
    let slot = match index {
        0 => &mut r.rax,
        1 => &mut r.rcx,
        2 => &mut r.rdx,
        3 => &mut r.rbx,
        5 => &mut r.rbp,
        6 => &mut r.rsi,
        7 => &mut r.rdi,
        8 => &mut r.r8,
        9 => &mut r.r9,
        10 => &mut r.r10,
        11 => &mut r.r11,
        12 => &mut r.r12,
        13 => &mut r.r13,
        14 => &mut r.r14,
        _ => &mut r.r15,
    };
    *slot = value;
}

/// Emulates a decoded instruction of this module at the vCPU's RIP (`cr`, `bitness`
/// as [`mmio_sse::emulate`] found them) for an exit at `gpa`: direction check,
/// the checks above (a fault is injected), then the operation; RIP moves past it
/// unless it faulted. On error nothing in the vCPU changed and the device was not
/// called.
#[allow(clippy::too_many_arguments)]
pub fn emulate<V: Vcpu, M: GuestMemoryMut>(
    vcpu: &mut V,
    mem: &mut M,
    gpa: u64,
    write: bool,
    features: SimdFeatures,
    device: &mut dyn FnMut(u64, u8, Option<u64>) -> u64,
    decoded: SimdAluInsn,
    insn: &Instruction,
) -> Result<(), SimdError> {
    let stores = matches!(decoded, SimdAluInsn::MaskMove(_));
    if stores != write {
        return Err(MmioError::DirectionMismatch { exit_write: write }.into());
    }
    let cr = vcpu.control_regs();
    let bitness = guest_walk::code_bitness(&cr);
    let rip = vcpu.rip();
    let regs = *vcpu.regs();
    let rsp = vcpu.rsp();
    let mut fx = vcpu.fx_area().ok_or(SimdError::NoFpuState)?.clone();
    let segments = mmio_memory::segments(vcpu);
    let mut env = Env { mem, cr, segments };
    let (operand, address) = match decoded {
        SimdAluInsn::Alu(_) => mmio_sse::locate(insn, &regs, rsp, &env, gpa),
        // No alignment rule: the address is not needed.
        SimdAluInsn::MaskMove(_) => (Operand::Exit { gpa }, gpa),
    };
    if let Some(e) = check(&decoded, &cr, features, &fx, address)? {
        // A fault: RIP stays on the instruction, nothing changes (SDM Vol. 3A 6.5).
        vcpu.inject_exception(e);
        return Ok(());
    }
    match decoded {
        SimdAluInsn::Alu(alu) => {
            let osxmmexcpt = cr.cr4 & CR4_OSXMMEXCPT != 0;
            let outcome = execute(&alu, &mut fx, operand, osxmmexcpt, device, &mut env)?;
            if let Some(live) = vcpu.fx_area() {
                *live = fx;
            }
            match outcome {
                AluOutcome::Fault(e) => {
                    vcpu.inject_exception(e);
                    return Ok(());
                }
                AluOutcome::Done { flags, gpr } => match alu.dest {
                    AluDest::Xmm(_) => {}
                    AluDest::Flags(_) => {
                        let rflags = vcpu.rflags();
                        vcpu.set_rflags(rflags & !STATUS_FLAGS | flags & STATUS_FLAGS);
                    }
                    AluDest::Gpr { index, .. } => set_gpr(vcpu, index, gpr),
                },
            }
        }
        SimdAluInsn::MaskMove(mm) => {
            execute_mask_move(&mm, &regs, &mut fx, gpa, device, &mut env)?;
            if let Some(live) = vcpu.fx_area() {
                *live = fx;
            }
        }
    }
    mmio::step_over(vcpu, rip, insn.len(), bitness);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::arch::asm;
    use std::vec::Vec;

    use crate::vmm::test_ram::NoRam;

    use crate::vmm::mmio_sse::tests::ALL;

    fn alu(bytes: &[u8]) -> SimdAlu {
        match decode(bytes, 64, 0).unwrap().0 {
            SimdAluInsn::Alu(a) => a,
            other => panic!("{other:?}"),
        }
    }

    type Calls = Vec<(u64, u8, Option<u64>)>;

    /// Runs `bytes`' computation on `fx` against a device at 0x1000 holding `mem`.
    fn run(bytes: &[u8], fx: &mut FxArea, mem: [u8; 16], xm: bool) -> (AluOutcome, Calls) {
        let a = alu(bytes);
        let mut calls = Vec::new();
        let mut device = |gpa: u64, size: u8, v: Option<u64>| {
            calls.push((gpa, size, v));
            let at = (gpa - 0x1000) as usize;
            let mut b = [0u8; 8];
            b[..usize::from(size)].copy_from_slice(&mem[at..at + usize::from(size)]);
            u64::from_le_bytes(b)
        };
        let mut ram = NoRam;
        let mut env = Env {
            mem: &mut ram,
            cr: ControlRegs::default(),
            segments: [None; 6],
        };
        let out = execute(
            &a,
            fx,
            Operand::Exit { gpa: 0x1000 },
            xm,
            &mut device,
            &mut env,
        )
        .unwrap();
        (out, calls)
    }

    /// The host processor running the original instruction `$text` (its memory
    /// operand `[rdi]`, a 16-byte-aligned copy of `$mem`) itself, in one asm block
    /// from FXRSTOR of `$fx` to FXSAVE: (image after, RFLAGS, RCX).
    macro_rules! native {
        ($fx:expr, $mem:expr, $text:literal) => {{
            let mut fx: FxArea = $fx.clone();
            let mem = SseOperand($mem);
            let (mut cw, mut mx) = (0u16, 0u32);
            let (rflags, rcx): (u64, u64);
            // SAFETY: the test's image has every MXCSR exception masked; the caller's
            // control words come back; the operand is 16 bytes, 16-byte aligned.
            unsafe {
                asm!(
                    "fnstcw [{cw}]",
                    "stmxcsr [{mx}]",
                    "fxrstor64 [{a}]",
                    $text,
                    "pushfq",
                    "pop rsi",
                    "fxsave64 [{a}]",
                    "fninit",
                    "fldcw [{cw}]",
                    "ldmxcsr [{mx}]",
                    cw = in(reg) &mut cw,
                    mx = in(reg) &mut mx,
                    a = in(reg) &mut fx,
                    in("rdi") mem.0.as_ptr(),
                    out("rsi") rflags,
                    out("rcx") rcx,
                    clobber_abi("C"),
                );
            }
            (fx, rflags, rcx)
        }};
    }

    fn f32s(v: [f32; 4]) -> [u8; 16] {
        let mut b = [0; 16];
        for (i, x) in v.iter().enumerate() {
            b[4 * i..4 * i + 4].copy_from_slice(&x.to_le_bytes());
        }
        b
    }

    fn f64s(v: [f64; 2]) -> [u8; 16] {
        let mut b = [0; 16];
        b[..8].copy_from_slice(&v[0].to_le_bytes());
        b[8..].copy_from_slice(&v[1].to_le_bytes());
        b
    }

    /// An image with distinct XMM registers (so a wrong register shows) and MXCSR
    /// `mxcsr`.
    fn image(mxcsr: u32) -> FxArea {
        let mut fx = FxArea::initial();
        for n in 0..16 {
            fx.set_xmm(n, f32s([n as f32 + 1.0, 1.0 / 3.0, -7.5e-3, 1e20]));
        }
        fx.set_mxcsr(mxcsr);
        fx
    }

    #[test]
    fn addps_matches_the_processor_in_every_rounding_mode() {
        let mem = f32s([1e-8, 2.0 / 3.0, 1.25, -1e20]);
        let mut seen = Vec::new();
        for rc in 0..4u32 {
            let mut fx = image(0x1F80 | rc << 13);
            let (want, _, _) = native!(fx, mem, "addps xmm3, xmmword ptr [rdi]");
            // addps xmm3, [rax]
            let (out, calls) = run(&[0x0F, 0x58, 0x18], &mut fx, mem, true);
            assert_eq!(out, AluOutcome::Done { flags: 0, gpr: 0 });
            assert_eq!(calls, [(0x1000, 8, None), (0x1008, 8, None)]);
            assert_eq!(fx.xmm(3), want.xmm(3), "rc {rc}");
            assert_eq!(fx.mxcsr(), want.mxcsr(), "rc {rc}: PE as the processor");
            assert_ne!(fx.mxcsr() & 0x20, 0, "inexact");
            let mut rest = fx.clone();
            rest.set_xmm(3, image(0).xmm(3));
            rest.set_mxcsr(0x1F80 | rc << 13);
            assert_eq!(rest, image(0x1F80 | rc << 13), "only XMM3 and the flags");
            seen.push(fx.xmm(3));
        }
        seen.dedup();
        assert!(seen.len() > 1, "the rounding mode mattered");
    }

    #[test]
    fn integer_forms_and_conversions_match_the_processor() {
        let mem: [u8; 16] = core::array::from_fn(|i| if i % 3 == 0 { 0x40 } else { i as u8 });
        let mut fx = image(0x1F80);
        fx.set_xmm(
            5,
            core::array::from_fn(|i| if i % 2 == 0 { 0x40 } else { 7 }),
        );
        let (want, _, _) = native!(fx, mem, "pcmpeqb xmm5, xmmword ptr [rdi]");
        run(&[0x66, 0x0F, 0x74, 0x28], &mut fx, mem, true);
        assert_eq!(fx.xmm(5), want.xmm(5));
        assert_eq!(fx.xmm(5)[0], 0xFF);
        // cvtsi2ss xmm2, dword [rax] of i32::MAX: inexact, rounded by MXCSR.RC.
        let mem = bytes16(0x7FFF_FFFF);
        for rc in 0..4u32 {
            let mut fx = image(0x1F80 | rc << 13);
            let (want, _, _) = native!(fx, mem, "cvtsi2ss xmm2, dword ptr [rdi]");
            let (_, calls) = run(&[0xF3, 0x0F, 0x2A, 0x10], &mut fx, mem, true);
            assert_eq!(calls, [(0x1000, 4, None)]);
            assert_eq!(
                (fx.xmm(2), fx.mxcsr()),
                (want.xmm(2), want.mxcsr()),
                "rc {rc}"
            );
        }
        // cvtsi2sd xmm2, dword [rax] of -5: exact.
        let mut fx = image(0x1F80);
        let mem = bytes16(0xFFFF_FFFB);
        let (want, _, _) = native!(fx, mem, "cvtsi2sd xmm2, dword ptr [rdi]");
        run(&[0xF2, 0x0F, 0x2A, 0x10], &mut fx, mem, true);
        assert_eq!(fx.xmm(2), want.xmm(2));
        assert_eq!(fx.xmm(2)[..8], (-5.0f64).to_le_bytes());
        // cvttsd2si rcx, qword [rax]: 1e30 is out of range, the integer indefinite
        // and IE (masked).
        for v in [-2.75f64, 1e30] {
            let mut fx = image(0x1F80);
            let mem = f64s([v, 0.0]);
            let (want, _, rcx) = native!(fx, mem, "cvttsd2si rcx, qword ptr [rdi]");
            let (out, calls) = run(&[0xF2, 0x48, 0x0F, 0x2C, 0x08], &mut fx, mem, true);
            assert_eq!(calls, [(0x1000, 8, None)]);
            assert_eq!(out, AluOutcome::Done { flags: 0, gpr: rcx }, "{v}");
            assert_eq!(fx.mxcsr(), want.mxcsr(), "{v}");
        }
        assert_eq!(
            alu(&[0xF2, 0x48, 0x0F, 0x2C, 0x08]).dest,
            AluDest::Gpr { index: 1, width: 8 }
        );
    }

    #[test]
    fn ucomiss_sets_the_flags_the_processor_sets() {
        // xmm1's low float is 2.0 (image: n + 1).
        for v in [1.0f32, 2.0, 3.0, f32::NAN, f32::from_bits(u32::MAX)] {
            let mut fx = image(0x1F80);
            let mem = f32s([v, 0.0, 0.0, 0.0]);
            let (want, rflags, _) = native!(fx, mem, "ucomiss xmm1, dword ptr [rdi]");
            let (out, _) = run(&[0x0F, 0x2E, 0x08], &mut fx, mem, true);
            let AluOutcome::Done { flags, .. } = out else {
                panic!("{out:?}")
            };
            assert_eq!(flags, rflags & STATUS_FLAGS, "{v}");
            assert_eq!(fx.mxcsr(), want.mxcsr(), "{v}");
            assert_eq!(
                fx.xmm(1),
                image(0).xmm(1),
                "a comparison writes no register"
            );
        }
    }

    #[test]
    fn an_unmasked_exception_faults_with_nothing_but_the_flags_changed() {
        // divps xmm4, [rax] by zeros with ZM clear: #XM (OSXMMEXCPT) or #UD, XMM4 as
        // it was, ZE set; the other lanes' inexact results do not count (pre-
        // computation exception).
        let zm_clear = 0x1F80 & !(1 << 9);
        for (xm, e) in [(true, Exception::XM), (false, Exception::UD)] {
            let mut fx = image(zm_clear);
            let (out, calls) = run(&[0x0F, 0x5E, 0x20], &mut fx, [0; 16], xm);
            assert_eq!(out, AluOutcome::Fault(e));
            assert_eq!(calls.len(), 2, "the operand was read");
            assert_eq!(fx.xmm(4), image(0).xmm(4));
            assert_eq!(fx.mxcsr(), zm_clear | 0x04, "ZE alone");
        }
        // Masked: infinities and ZE, as the processor computes.
        let mut fx = image(0x1F80);
        let (want, _, _) = native!(fx, [0; 16], "divps xmm4, xmmword ptr [rdi]");
        run(&[0x0F, 0x5E, 0x20], &mut fx, [0; 16], true);
        assert_eq!((fx.xmm(4), fx.mxcsr()), (want.xmm(4), want.mxcsr()));
        // A post-computation one (PE unmasked): 1/3 is inexact; faults with PE set.
        let pm_clear = 0x1F80 & !(1 << 12);
        let mut fx = image(pm_clear);
        let (out, _) = run(&[0x0F, 0x5E, 0x20], &mut fx, f32s([3.0; 4]), true);
        assert_eq!(out, AluOutcome::Fault(Exception::XM));
        assert_eq!(fx.xmm(4), image(0).xmm(4));
        assert_eq!(fx.mxcsr(), pm_clear | 0x20);
        // An integer form raises nothing, whatever the masks.
        let mut fx = image(0);
        let (out, _) = run(&[0x66, 0x0F, 0xFE, 0x20], &mut fx, [0xFF; 16], true);
        assert_eq!(out, AluOutcome::Done { flags: 0, gpr: 0 });
    }

    #[test]
    fn unmasked_underflow_is_refused_before_any_access() {
        let mut fx = image(0x1F80 & !(1 << 11));
        let a = alu(&[0x0F, 0x58, 0x18]);
        let mut calls = 0;
        let mut device = |_: u64, _: u8, _: Option<u64>| {
            calls += 1;
            0
        };
        let mut ram = NoRam;
        let mut env = Env {
            mem: &mut ram,
            cr: ControlRegs::default(),
            segments: [None; 6],
        };
        let r = execute(
            &a,
            &mut fx,
            Operand::Exit { gpa: 0 },
            true,
            &mut device,
            &mut env,
        );
        assert_eq!(r, Err(SimdError::UnmaskedUnderflow));
        assert_eq!(calls, 0);
        // A form that cannot underflow runs (pand xmm3, [rax]).
        let (out, _) = run(&[0x66, 0x0F, 0xDB, 0x18], &mut fx, [0xF0; 16], true);
        assert!(matches!(out, AluOutcome::Done { .. }));
    }

    #[test]
    fn only_the_allow_list_decodes() {
        use SseMemOp::*;
        assert_eq!(alu(&[0x0F, 0x58, 0x18]).op, Addps);
        assert_eq!(alu(&[0x0F, 0x58, 0x18]).dest, AluDest::Xmm(3));
        // addsd xmm9, [r8+8]: REX.R, scalar 8 bytes, no alignment.
        let a = alu(&[0xF2, 0x45, 0x0F, 0x58, 0x48, 0x08]);
        assert_eq!(
            (a.op, a.dest, a.width(), a.aligned()),
            (Addsd, AluDest::Xmm(9), 8, false)
        );
        assert_eq!(alu(&[0x0F, 0x2F, 0x08]).dest, AluDest::Flags(1));
        assert_eq!(
            alu(&[0xF3, 0x0F, 0x2D, 0x00]).dest,
            AluDest::Gpr { index: 0, width: 4 }
        );
        assert_eq!(alu(&[0x66, 0x0F, 0x38, 0x00, 0x00]).needs, Extension::Ssse3);
        assert_eq!(
            alu(&[0x66, 0x0F, 0x38, 0x22, 0x00]).width(),
            2,
            "pmovsxbq m16"
        );
        assert_eq!(alu(&[0xF2, 0x0F, 0x12, 0x00]).op, Movddup);
        // Register forms cannot have caused the exit.
        assert!(matches!(
            decode(&[0x0F, 0x58, 0xC1], 64, 0),
            Err(MmioError::NoMemoryOperand { .. })
        ));
        // pshufd (imm8), ldmxcsr, fxrstor, vaddps (VEX), paddb mm, movdqu: not here.
        for bytes in [
            &[0x66, 0x0F, 0x70, 0x00, 0x1B][..],
            &[0x0F, 0xAE, 0x10],
            &[0x0F, 0xAE, 0x08],
            &[0xC5, 0xF8, 0x58, 0x00],
            &[0x0F, 0xFC, 0x00],
            &[0xF3, 0x0F, 0x6F, 0x00],
        ] {
            assert!(
                matches!(decode(bytes, 64, 0), Err(MmioError::Unsupported { .. })),
                "{bytes:02x?}"
            );
        }
        // maskmovdqu xmm1, xmm2 with an FS override, 32-bit addressing.
        let (d, _) = decode(&[0x64, 0x67, 0x66, 0x0F, 0xF7, 0xCA], 64, 0).unwrap();
        assert_eq!(
            d,
            SimdAluInsn::MaskMove(MaskMove {
                len: 6,
                mmx: false,
                src: 1,
                mask: 2,
                seg: SegReg::Fs,
                address_size: 4
            })
        );
    }

    #[test]
    fn checks_in_order() {
        let addps = SimdAluInsn::Alu(alu(&[0x0F, 0x58, 0x18]));
        let addsd = SimdAluInsn::Alu(alu(&[0xF2, 0x0F, 0x58, 0x18]));
        let pshufb = SimdAluInsn::Alu(alu(&[0x66, 0x0F, 0x38, 0x00, 0x00]));
        let fx = FxArea::initial();
        let cr = |cr0, cr4| ControlRegs {
            cr0,
            cr4,
            ..Default::default()
        };
        let ok = cr(CR0_NE, CR4_OSFXSR);
        assert_eq!(check(&addps, &ok, ALL, &fx, 0x10), Ok(None));
        assert_eq!(check(&addps, &ok, ALL, &fx, 0x18), Ok(Some(Exception::GP0)));
        assert_eq!(check(&addsd, &ok, ALL, &fx, 0x18), Ok(None), "scalar");
        let em = cr(CR0_EM | CR0_TS, CR4_OSFXSR);
        assert_eq!(check(&addps, &em, ALL, &fx, 0x18), Ok(Some(Exception::UD)));
        let no_fxsr = cr(CR0_TS, 0);
        assert_eq!(
            check(&addps, &no_fxsr, ALL, &fx, 0x18),
            Ok(Some(Exception::UD))
        );
        let ts = cr(CR0_TS, CR4_OSFXSR);
        assert_eq!(check(&addps, &ts, ALL, &fx, 0x18), Ok(Some(Exception::NM)));
        let no_ssse3 = SimdFeatures {
            ssse3: false,
            ..ALL
        };
        assert_eq!(
            check(&pshufb, &ts, no_ssse3, &fx, 0),
            Ok(Some(Exception::UD))
        );
        // maskmovq: an MMX form: #MF with an x87 error pending, OSFXSR irrelevant.
        let (maskmovq, _) = decode(&[0x0F, 0xF7, 0xCA], 64, 0).unwrap();
        let mut pending = FxArea::initial();
        pending.0[2] = 0x81;
        assert_eq!(check(&maskmovq, &cr(CR0_NE, 0), ALL, &fx, 3), Ok(None));
        assert_eq!(
            check(&maskmovq, &cr(CR0_NE, 0), ALL, &pending, 3),
            Ok(Some(Exception::MF))
        );
    }

    #[test]
    fn masked_stores_write_each_selected_byte() {
        let mut fx = FxArea::initial();
        let data: [u8; 16] = core::array::from_fn(|i| 0xA0 + i as u8);
        let mut mask = [0x7Fu8; 16];
        for i in [2, 3, 15] {
            mask[i] = 0x80;
        }
        fx.set_xmm(1, data);
        fx.set_xmm(2, mask);
        let calls: core::cell::RefCell<Calls> = Default::default();
        let mut device = |gpa: u64, size: u8, v: Option<u64>| {
            calls.borrow_mut().push((gpa, size, v));
            0
        };
        let mut ram = NoRam;
        let mut env = Env {
            mem: &mut ram,
            cr: ControlRegs::default(),
            segments: [None; 6],
        };
        let (SimdAluInsn::MaskMove(mm), _) = decode(&[0x66, 0x0F, 0xF7, 0xCA], 64, 0).unwrap()
        else {
            panic!()
        };
        let regs = GuestRegisters::default();
        execute_mask_move(&mm, &regs, &mut fx, 0x5002, &mut device, &mut env).unwrap();
        assert_eq!(
            *calls.borrow(),
            [
                (0x5002, 1, Some(0xA2)),
                (0x5003, 1, Some(0xA3)),
                (0x500F, 1, Some(0xAF))
            ]
        );
        // maskmovq mm1, mm2: MMX mode, 8 bytes.
        let mut fx = FxArea::initial();
        fx.0[2..4].copy_from_slice(&(5u16 << 11).to_le_bytes());
        fx.set_mm(1, 0x1122_3344_5566_7788);
        fx.set_mm(2, 0x8000_0000_0000_0080);
        let (SimdAluInsn::MaskMove(mm), _) = decode(&[0x0F, 0xF7, 0xCA], 64, 0).unwrap() else {
            panic!()
        };
        calls.borrow_mut().clear();
        execute_mask_move(&mm, &regs, &mut fx, 0x6000, &mut device, &mut env).unwrap();
        assert_eq!(
            *calls.borrow(),
            [(0x6000, 1, Some(0x88)), (0x6007, 1, Some(0x11))]
        );
        assert_eq!((fx.top(), fx.abridged_tags()), (0, 0xFF));
    }
}
