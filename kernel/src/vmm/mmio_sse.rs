//! MMX and SSE data moves whose memory operand is MMIO or unbacked guest-physical
//! space, and `MOVNTI`: what `memcpy` into a framebuffer or a BAR emits (`MOVDQU`/
//! `MOVNTDQ` of 16 bytes, `MOVQ`/`MOVD` of a 64- or 32-bit register). The general-
//! purpose forms are [`super::mmio`]'s; [`emulate`] tries it first and takes over
//! only the encodings it refuses as unsupported.
//!
//! Supported (each with any memory addressing form, in 16-, 32- and 64-bit code):
//! - MMX: `MOVD mm, m32` / `MOVD m32, mm` (0F 6E/7E), `MOVQ mm, m64` / `MOVQ m64, mm`
//!   (REX.W 0F 6E/7E, 0F 6F/7F), and `MOVNTQ m64, mm` (0F E7, an SSE instruction on
//!   an MMX register);
//! - SSE/SSE2 loads into XMM: `MOVD`/`MOVQ` (66 0F 6E, with REX.W; F3 0F 7E), which
//!   zero the rest of the register; `MOVDQA`/`MOVDQU` (66/F3 0F 6F), `MOVAPS`/
//!   `MOVUPS` (0F 28/10), `MOVAPD`/`MOVUPD` (66 0F 28/10); `MOVSS`/`MOVSD` (F3/F2 0F
//!   10), which zero the rest; `MOVLPS`/`MOVHPS`/`MOVLPD`/`MOVHPD` (0F 12/16, 66 0F
//!   12/16), which keep the other half; SSE3 `LDDQU` (F2 0F F0) and SSE4.1
//!   `MOVNTDQA` (66 0F 38 2A);
//! - SSE/SSE2 stores from XMM: `MOVD`/`MOVQ` (66 0F 7E with and without REX.W, 66 0F
//!   D6), `MOVDQA`/`MOVDQU`, `MOVAPS`/`MOVUPS`/`MOVAPD`/`MOVUPD` (0F 29/11, 66 0F
//!   29/11), `MOVSS`/`MOVSD` (only the scalar is written), `MOVLPS`/`MOVHPS`/`MOVLPD`/
//!   `MOVHPD` (0F 13/17, 66 0F 13/17), `MOVNTDQ` (66 0F E7), `MOVNTPS`/`MOVNTPD`
//!   (0F 2B, 66 0F 2B);
//! - `MOVNTI m32/m64, r` (0F C3): a general-purpose store (SSE2).
//!
//! Before anything is touched, the checks of each instruction's "Protected Mode
//! Exceptions" (SDM Vol. 2; the same in real and 64-bit mode) in the processor's
//! order, each injected with RIP left on the instruction and nothing changed:
//! - SSE forms: #UD for CR0.EM, for CR4.OSFXSR clear, or when the CPUID the guest
//!   sees lacks the extension ([`SimdFeatures`], from the VM's CPUID view: SSE4.1
//!   hidden, `MOVNTDQA` raises #UD); #NM for CR0.TS; #GP(0) when a 16-byte-aligned
//!   form (`MOVDQA`, `MOVAPS`, `MOVAPD`, `MOVNTDQ`, `MOVNTPS`, `MOVNTPD`,
//!   `MOVNTDQA`) has a misaligned address;
//! - MMX forms (`MOVD`/`MOVQ` on MM, `MOVNTQ`): #UD for CR0.EM or a hidden
//!   extension (MMX; SSE for `MOVNTQ`), #NM for CR0.TS, #MF while an x87 exception
//!   is pending ([`mmio_x87::x87_error_pending`]). CR4.OSFXSR does not matter for
//!   them (SDM Vol. 3A Table 22-8, "Legacy SIMD/MMX Instructions without FP
//!   Exception", which `MOVNTQ` refers to; the MMX `MOVD`/`MOVQ` list the same).
//!   With CR0.NE clear a pending x87 error goes out on FERR# instead, which is not
//!   modelled: the VM stops with that named;
//! - `MOVNTI`: #UD without SSE2 only (it uses no x87/SSE state).
//!
//! Every MMX instruction (here `MOVD`/`MOVQ`/`MOVNTQ` with an MM register, loads and
//! stores alike) sets the x87 TOP to 0 and every tag to valid (SDM Vol. 1 9.5.1,
//! [`FxArea::enter_mmx_mode`]); a load also sets bits 79:64 of the register to ones.
//!
//! The registers live in the vCPU's FXSAVE image ([`Vcpu::fx_area`]), which is the
//! guest's state at the exit. A device sees at most 8 bytes per access (the bus's
//! [`super::mmio`] callback takes 1, 2, 4 or 8, as a device register is at most a
//! quadword), so a 16-byte operand goes to it as two 8-byte accesses at ascending
//! addresses, low half first, as x86 stores the little-endian value. The operand is
//! located by its linear address (segment base plus the effective address, through
//! the guest's page tables, [`super::mmio_memory`]) in 8-byte pieces, so a `MOVDQU`
//! that straddles RAM and a device reaches each where it is; where a segment base is
//! not known (a host test's vCPU) the pieces go to the device at the exit's address and
//! after it. Unbacked space reads all ones and drops writes, as for every other form.
//!
//! Not here: AVX. VEX/EVEX encodings cannot reach an exit, because XSAVE is hidden
//! and CR4.OSXSAVE refused ([`super::policy`], `vcpu::cr_policy`), so the processor
//! raises #UD for every VEX instruction before any memory access. The x87 loads and
//! stores (and arithmetic) are [`super::mmio_x87`]'s, and the SSE computations with a
//! memory source (`ADDPS xmm, m128`, `PCMPEQB`, ..., also `MOVDDUP`/`MOVSLDUP`/
//! `MOVSHDUP`) and `MASKMOVQ`/`MASKMOVDQU` are [`super::mmio_simd_alu`]'s, both
//! reached from [`emulate`] here. What none of them takes stays
//! [`MmioError::Unsupported`]: the VM stops with the instruction named.
//! Limits as in [`super::mmio`]: no #AC for a misaligned access in ring 3 with
//! CR0.AM and RFLAGS.AC, no segment-limit checks, no single-step #DB.

use super::guest_walk::{self, GuestMemoryMut};
use super::mmio::{self, MmioError};
use super::mmio_memory::{self, Env, Place};
use super::mmio_simd_alu;
use super::mmio_x87;
use iced_x86::{Code, Instruction, OpKind, Register};
use vcpu::fpu::FxArea;
use vcpu::{ControlRegs, Exception, GuestRegisters, SegReg, Vcpu};

const CR0_EM: u64 = 1 << 2;
const CR0_TS: u64 = 1 << 3;
const CR0_NE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;

/// The extensions the guest's CPUID view advertises (leaf 1), which decide whether
/// an instruction exists for it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimdFeatures {
    pub mmx: bool,
    pub sse: bool,
    pub sse2: bool,
    pub sse3: bool,
    pub ssse3: bool,
    pub sse41: bool,
}

impl SimdFeatures {
    /// From CPUID leaf 1 as the guest sees it: EDX bits 23 (MMX), 25 (SSE), 26
    /// (SSE2); ECX bits 0 (SSE3), 9 (SSSE3), 19 (SSE4.1).
    pub fn from_leaf1(ecx: u32, edx: u32) -> Self {
        SimdFeatures {
            mmx: edx & 1 << 23 != 0,
            sse: edx & 1 << 25 != 0,
            sse2: edx & 1 << 26 != 0,
            sse3: ecx & 1 != 0,
            ssse3: ecx & 1 << 9 != 0,
            sse41: ecx & 1 << 19 != 0,
        }
    }

    /// Whether the extension exists in this view.
    pub fn has(&self, ext: Extension) -> bool {
        match ext {
            Extension::Mmx => self.mmx,
            Extension::Sse => self.sse,
            Extension::Sse2 => self.sse2,
            Extension::Sse3 => self.sse3,
            Extension::Ssse3 => self.ssse3,
            Extension::Sse41 => self.sse41,
        }
    }
}

/// The CPUID feature an instruction needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extension {
    Mmx,
    Sse,
    Sse2,
    Sse3,
    Ssse3,
    Sse41,
}

/// The register side of a move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimdReg {
    /// XMM0-15.
    Xmm(u8),
    /// MM0-7 (bits 63:0 of the physical x87 registers R0-R7).
    Mm(u8),
    /// A general-purpose register (`MOVNTI`'s source), as iced names it (`EAX`,
    /// `R9`, ...).
    Gpr(Register),
}

/// A decoded MMX/SSE move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimdMove {
    /// Instruction length in bytes.
    pub len: usize,
    /// Bytes moved: 4, 8 or 16.
    pub width: u8,
    /// Whether memory is read into `reg` (else `reg` is stored to memory).
    pub load: bool,
    pub reg: SimdReg,
    /// Byte offset of the moved part in the register: 8 for `MOVHPS`/`MOVHPD`, else 0.
    pub lane: u8,
    /// A load clears the register's bytes outside the moved part (`MOVD`, `MOVQ`,
    /// `MOVSS`, `MOVSD`); otherwise they are kept (`MOVLPS`, `MOVHPS`, ...).
    pub zero_rest: bool,
    /// A 16-byte-aligned form: a misaligned address raises #GP(0).
    pub aligned: bool,
    pub needs: Extension,
}

impl SimdMove {
    fn mmx(&self) -> bool {
        matches!(self.reg, SimdReg::Mm(_))
    }
}

/// What stops an MMX/SSE move from being emulated (the VM stops with the text).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimdError {
    /// From fetch, decode or operand location (including `Unsupported` for what
    /// neither this module nor [`super::mmio`] emulates).
    Mmio(MmioError),
    /// The backend keeps no FXSAVE image for the vCPU.
    NoFpuState,
    /// An MMX instruction with an x87 error pending and CR0.NE clear: the processor
    /// would signal it on FERR#, which is not modelled.
    PendingX87Error,
    /// An SSE computation that can underflow, with MXCSR.UM clear: its tininess
    /// cannot be told from the host's masked run ([`super::mmio_simd_alu`]).
    UnmaskedUnderflow,
    /// The guest's CPUID view offers an extension this processor lacks, so the
    /// host cannot run the instruction for it.
    HostLacks(Extension),
}

impl From<MmioError> for SimdError {
    fn from(e: MmioError) -> Self {
        SimdError::Mmio(e)
    }
}

impl core::fmt::Display for SimdError {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self {
            SimdError::Mmio(e) => e.fmt(f),
            SimdError::NoFpuState => {
                write!(f, "an MMX/SSE move, but the backend keeps no x87/SSE state")
            }
            SimdError::PendingX87Error => write!(
                f,
                "an MMX move with an x87 error pending and CR0.NE clear (FERR# is not modelled)"
            ),
            SimdError::UnmaskedUnderflow => write!(
                f,
                "an SSE computation on MMIO with MXCSR's underflow exception unmasked \
                 (not modelled)"
            ),
            SimdError::HostLacks(ext) => write!(
                f,
                "an SSE computation on MMIO that needs {ext:?}, which this processor lacks"
            ),
        }
    }
}

/// The moves this module emulates: (load, register class, width, lane, zero_rest,
/// aligned, extension). `true` as the class means XMM, `false` MM; `MOVNTI` is
/// handled apart.
fn table(code: Code) -> Option<(bool, bool, u8, u8, bool, bool, Extension)> {
    use Extension::*;
    const X: bool = true;
    const M: bool = false;
    Some(match code {
        // MMX.
        Code::Movd_mm_rm32 => (true, M, 4, 0, true, false, Mmx),
        Code::Movq_mm_rm64 | Code::Movq_mm_mmm64 => (true, M, 8, 0, true, false, Mmx),
        Code::Movd_rm32_mm => (false, M, 4, 0, false, false, Mmx),
        Code::Movq_rm64_mm | Code::Movq_mmm64_mm => (false, M, 8, 0, false, false, Mmx),
        Code::Movntq_m64_mm => (false, M, 8, 0, false, false, Sse),
        // Loads into XMM.
        Code::Movd_xmm_rm32 => (true, X, 4, 0, true, false, Sse2),
        Code::Movq_xmm_rm64 | Code::Movq_xmm_xmmm64 => (true, X, 8, 0, true, false, Sse2),
        Code::Movss_xmm_xmmm32 => (true, X, 4, 0, true, false, Sse),
        Code::Movsd_xmm_xmmm64 => (true, X, 8, 0, true, false, Sse2),
        Code::Movaps_xmm_xmmm128 => (true, X, 16, 0, false, true, Sse),
        Code::Movups_xmm_xmmm128 => (true, X, 16, 0, false, false, Sse),
        Code::Movapd_xmm_xmmm128 | Code::Movdqa_xmm_xmmm128 => (true, X, 16, 0, false, true, Sse2),
        Code::Movupd_xmm_xmmm128 | Code::Movdqu_xmm_xmmm128 => (true, X, 16, 0, false, false, Sse2),
        Code::Movlps_xmm_m64 => (true, X, 8, 0, false, false, Sse),
        Code::Movhps_xmm_m64 => (true, X, 8, 8, false, false, Sse),
        Code::Movlpd_xmm_m64 => (true, X, 8, 0, false, false, Sse2),
        Code::Movhpd_xmm_m64 => (true, X, 8, 8, false, false, Sse2),
        Code::Lddqu_xmm_m128 => (true, X, 16, 0, false, false, Sse3),
        Code::Movntdqa_xmm_m128 => (true, X, 16, 0, false, true, Sse41),
        // Stores from XMM.
        Code::Movd_rm32_xmm => (false, X, 4, 0, false, false, Sse2),
        Code::Movq_rm64_xmm | Code::Movq_xmmm64_xmm => (false, X, 8, 0, false, false, Sse2),
        Code::Movss_xmmm32_xmm => (false, X, 4, 0, false, false, Sse),
        Code::Movsd_xmmm64_xmm => (false, X, 8, 0, false, false, Sse2),
        Code::Movaps_xmmm128_xmm | Code::Movntps_m128_xmm => (false, X, 16, 0, false, true, Sse),
        Code::Movups_xmmm128_xmm => (false, X, 16, 0, false, false, Sse),
        Code::Movapd_xmmm128_xmm
        | Code::Movdqa_xmmm128_xmm
        | Code::Movntdq_m128_xmm
        | Code::Movntpd_m128_xmm => (false, X, 16, 0, false, true, Sse2),
        Code::Movupd_xmmm128_xmm | Code::Movdqu_xmmm128_xmm => {
            (false, X, 16, 0, false, false, Sse2)
        }
        Code::Movlps_m64_xmm => (false, X, 8, 0, false, false, Sse),
        Code::Movhps_m64_xmm => (false, X, 8, 8, false, false, Sse),
        Code::Movlpd_m64_xmm => (false, X, 8, 0, false, false, Sse2),
        Code::Movhpd_m64_xmm => (false, X, 8, 8, false, false, Sse2),
        _ => return None,
    })
}

/// Decodes the MMX/SSE move at the start of `bytes` (`bitness`-bit code at `rip`,
/// which RIP-relative operands are relative to). Also returns iced's instruction, for
/// the operand's address ([`effective_offset`]).
pub fn decode(bytes: &[u8], bitness: u32, rip: u64) -> Result<(SimdMove, Instruction), MmioError> {
    let insn = mmio::decode_instruction(bytes, bitness, rip)?;
    let unsupported = MmioError::Unsupported {
        mnemonic: insn.mnemonic(),
        code: insn.code(),
    };
    let no_memory = MmioError::NoMemoryOperand {
        mnemonic: insn.mnemonic(),
    };
    let len = insn.len();
    let (mem_op, reg_op) = match (insn.op_kind(0), insn.op_kind(1)) {
        (OpKind::Memory, _) => (0, 1),
        (_, OpKind::Memory) => (1, 0),
        _ => (0, 1),
    };
    if let Code::Movnti_m32_r32 | Code::Movnti_m64_r64 = insn.code() {
        // Always a memory destination (0F C3 with mod = 11 is #UD).
        let reg = insn.op_register(1);
        let (_, width) = gpr(reg).ok_or(unsupported)?;
        return Ok((
            SimdMove {
                len,
                width,
                load: false,
                reg: SimdReg::Gpr(reg),
                lane: 0,
                zero_rest: false,
                aligned: false,
                needs: Extension::Sse2,
            },
            insn,
        ));
    }
    let (load, xmm, width, lane, zero_rest, aligned, needs) =
        table(insn.code()).ok_or(unsupported)?;
    if insn.op_kind(mem_op) != OpKind::Memory {
        return Err(no_memory);
    }
    let r = insn.op_register(reg_op);
    let reg = match (
        xmm,
        class(r, Register::XMM0, 16),
        class(r, Register::MM0, 8),
    ) {
        (true, Some(n), _) => SimdReg::Xmm(n),
        (false, _, Some(n)) => SimdReg::Mm(n),
        _ => return Err(unsupported),
    };
    Ok((
        SimdMove {
            len,
            width,
            load,
            reg,
            lane,
            zero_rest,
            aligned,
            needs,
        },
        insn,
    ))
}

/// The index of `r` in the iced register class of `count` registers that starts at
/// `first` (iced numbers each class in ModRM order: RAX RCX RDX RBX RSP RBP RSI RDI
/// R8..R15, XMM0.., MM0..; the tests pin that down). Done by number because iced's
/// register information needs its `instr_info` feature, which the kernel leaves out.
pub(super) fn class(r: Register, first: Register, count: u32) -> Option<u8> {
    let (n, first) = (r as u32, first as u32);
    (first..first + count)
        .contains(&n)
        .then(|| (n - first) as u8)
}

/// A 16-, 32- or 64-bit general-purpose register: its ModRM number and width.
pub(super) fn gpr(r: Register) -> Option<(u8, u8)> {
    if let Some(i) = class(r, Register::RAX, 16) {
        return Some((i, 8));
    }
    if let Some(i) = class(r, Register::EAX, 16) {
        return Some((i, 4));
    }
    class(r, Register::AX, 16).map(|i| (i, 2))
}

/// The value of 16-, 32- or 64-bit general-purpose register `r` in `regs` (RSP in
/// `rsp`), as wide as `r`.
pub(super) fn gpr_value(regs: &GuestRegisters, rsp: u64, r: Register) -> Option<u64> {
    let (i, size) = gpr(r)?;
    let all = [
        regs.rax, regs.rcx, regs.rdx, regs.rbx, rsp, regs.rbp, regs.rsi, regs.rdi, regs.r8,
        regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
    ];
    Some(all[usize::from(i)] & mmio::mask(size))
}

pub(super) fn seg_reg(r: Register) -> Option<SegReg> {
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

/// The memory operand's segment and effective address (masked to the address size,
/// before the segment base), computed by iced from `regs` and RSP.
pub fn effective_offset(
    insn: &Instruction,
    regs: &GuestRegisters,
    rsp: u64,
) -> Option<(SegReg, u64)> {
    let mem_op = (0..insn.op_count()).find(|&i| insn.op_kind(i) == OpKind::Memory)?;
    let seg = seg_reg(insn.memory_segment())?;
    // Segment registers answer base 0: the base is added by `Env::linear`, which
    // wraps it as the mode requires.
    let offset = insn.virtual_address(mem_op, 0, |r, _, _| {
        if seg_reg(r).is_some() {
            Some(0)
        } else {
            gpr_value(regs, rsp, r)
        }
    })?;
    Some((seg, offset))
}

/// Where the operand is: by segment and effective address (located through the
/// guest's page tables), or at the exit's guest-physical address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operand {
    Linear { seg: SegReg, offset: u64 },
    Exit { gpa: u64 },
}

/// The architectural checks, in the processor's order (see the module header):
/// `Ok(Some(e))` when the instruction raises `e` instead of running. `address` is
/// the operand's linear address (or any address with the same low 4 bits).
pub fn check(
    mv: &SimdMove,
    cr: &ControlRegs,
    features: SimdFeatures,
    fx: &FxArea,
    address: u64,
) -> Result<Option<Exception>, SimdError> {
    if let SimdReg::Gpr(_) = mv.reg {
        // MOVNTI: a general-purpose instruction, only CPUID matters.
        return Ok((!features.has(mv.needs)).then_some(Exception::UD));
    }
    if cr.cr0 & CR0_EM != 0 || !features.has(mv.needs) {
        return Ok(Some(Exception::UD));
    }
    if !mv.mmx() && cr.cr4 & CR4_OSFXSR == 0 {
        return Ok(Some(Exception::UD));
    }
    if cr.cr0 & CR0_TS != 0 {
        return Ok(Some(Exception::NM));
    }
    if mv.mmx() && mmio_x87::x87_error_pending(fx) {
        if cr.cr0 & CR0_NE == 0 {
            return Err(SimdError::PendingX87Error);
        }
        return Ok(Some(Exception::MF));
    }
    if mv.aligned && address & 15 != 0 {
        return Ok(Some(Exception::GP0));
    }
    Ok(None)
}

/// Carries out a checked move: locates every 4- or 8-byte piece of the operand
/// first (an error leaves everything as it was), then reads or writes them in
/// ascending order through `env` (RAM) or `device`, and loads or reads the register
/// in `fx` or `regs`.
pub fn execute<M: GuestMemoryMut>(
    mv: &SimdMove,
    regs: &GuestRegisters,
    rsp: u64,
    fx: &mut FxArea,
    at: Operand,
    device: &mut dyn FnMut(u64, u8, Option<u64>) -> u64,
    env: &mut Env<'_, M>,
) -> Result<(), MmioError> {
    let piece = mv.width.min(8);
    let pieces = usize::from(mv.width / piece);
    let mut places = [Place::Device(0); 2];
    for (k, place) in places.iter_mut().enumerate().take(pieces) {
        let step = (k * usize::from(piece)) as u64;
        *place = match at {
            Operand::Linear { seg, offset } => env.place(seg, offset.wrapping_add(step), piece)?,
            Operand::Exit { gpa } => Place::Device(gpa.wrapping_add(step)),
        };
    }
    if mv.mmx() {
        fx.enter_mmx_mode();
    }
    let width = usize::from(mv.width);
    let lane = usize::from(mv.lane);
    if mv.load {
        let mut data = [0u8; 16];
        for (k, &place) in places.iter().enumerate().take(pieces) {
            let v = env.load(place, piece, device) & mmio::mask(piece);
            let at = k * usize::from(piece);
            data[at..at + usize::from(piece)]
                .copy_from_slice(&v.to_le_bytes()[..usize::from(piece)]);
        }
        match mv.reg {
            SimdReg::Xmm(n) => {
                let mut x = if mv.zero_rest {
                    [0; 16]
                } else {
                    fx.xmm(usize::from(n))
                };
                x[lane..lane + width].copy_from_slice(&data[..width]);
                fx.set_xmm(usize::from(n), x);
            }
            SimdReg::Mm(n) => {
                let mut b = [0u8; 8];
                b[..width.min(8)].copy_from_slice(&data[..width.min(8)]);
                fx.set_mm(usize::from(n), u64::from_le_bytes(b));
            }
            // MOVNTI only stores.
            SimdReg::Gpr(_) => {}
        }
    } else {
        let mut data = [0u8; 16];
        match mv.reg {
            SimdReg::Xmm(n) => {
                data[..width].copy_from_slice(&fx.xmm(usize::from(n))[lane..lane + width])
            }
            SimdReg::Mm(n) => data[..8].copy_from_slice(&fx.mm(usize::from(n)).to_le_bytes()),
            SimdReg::Gpr(r) => {
                let v = gpr_value(regs, rsp, r).ok_or(MmioError::Invalid)?;
                data[..8].copy_from_slice(&v.to_le_bytes());
            }
        }
        for (k, &place) in places.iter().enumerate().take(pieces) {
            let at = k * usize::from(piece);
            let mut b = [0u8; 8];
            b[..usize::from(piece)].copy_from_slice(&data[at..at + usize::from(piece)]);
            env.store(place, piece, u64::from_le_bytes(b), device);
        }
    }
    Ok(())
}

/// Where the operand of `insn` is, and the address its alignment is checked on: its
/// linear address where the segment base is known; else the exit's address, which
/// has the same offset in its page whenever the access starts in that page (a
/// 16-byte access that starts in the page before is misaligned, and the processor
/// checks alignment before it touches memory).
pub(super) fn locate<M: GuestMemoryMut>(
    insn: &Instruction,
    regs: &GuestRegisters,
    rsp: u64,
    env: &Env<'_, M>,
    gpa: u64,
) -> (Operand, u64) {
    let at = effective_offset(insn, regs, rsp)
        .and_then(|(seg, offset)| Some((seg, offset, env.linear(seg, offset).ok()?)));
    match at {
        Some((seg, offset, linear)) => (Operand::Linear { seg, offset }, linear),
        None => (Operand::Exit { gpa }, gpa),
    }
}

/// Emulates the instruction at the vCPU's RIP that accessed MMIO or unbacked space at
/// guest-physical `gpa`: [`mmio::emulate`] for the general-purpose forms, and when it
/// refuses the instruction as unsupported, the MMX/SSE moves and `MOVNTI` here, the SSE
/// computations and masked stores ([`super::mmio_simd_alu`]) or the x87 loads, stores
/// and arithmetic ([`super::mmio_x87`]), fetched and decoded again (only those
/// pay for it). On error nothing in the vCPU changed and the device was not called.
pub fn emulate<V: Vcpu, M: GuestMemoryMut>(
    vcpu: &mut V,
    mem: &mut M,
    gpa: u64,
    write: bool,
    general: mmio::GuestFeatures,
    features: SimdFeatures,
    device: &mut dyn FnMut(u64, u8, Option<u64>) -> u64,
) -> Result<(), SimdError> {
    let refused = match mmio::emulate(vcpu, mem, gpa, write, general, device) {
        Err(e @ MmioError::Unsupported { .. }) => e,
        other => return Ok(other?),
    };
    let cr = vcpu.control_regs();
    let bitness = guest_walk::code_bitness(&cr);
    let rip = vcpu.rip();
    let mut bytes = [0u8; 15];
    let n = guest_walk::fetch_instruction(&*mem, &cr, rip, &mut bytes).map_err(MmioError::Fetch)?;
    let bytes = &bytes[..n];
    let simd = match decode(bytes, bitness, rip) {
        Ok(d) => Some(d),
        Err(MmioError::Unsupported { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    if simd.is_none() {
        match mmio_simd_alu::decode(bytes, bitness, rip) {
            Ok((decoded, insn)) => {
                return mmio_simd_alu::emulate(
                    vcpu, mem, gpa, write, features, device, decoded, &insn,
                )
            }
            Err(MmioError::Unsupported { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let x87 = match simd {
        Some(_) => None,
        None => match mmio_x87::decode(bytes, bitness, rip) {
            Ok(d) => Some(d),
            // Not one of ours either: the general emulator's answer names it.
            Err(MmioError::Unsupported { .. }) => return Err(refused.into()),
            Err(e) => return Err(e.into()),
        },
    };
    let (loads, len, insn) = match (&simd, &x87) {
        (Some((mv, insn)), _) => (mv.load, mv.len, *insn),
        (None, Some((mv, insn))) => (mv.op.loads(), mv.len, *insn),
        (None, None) => return Err(refused.into()),
    };
    if loads == write {
        return Err(MmioError::DirectionMismatch { exit_write: write }.into());
    }
    let regs = *vcpu.regs();
    let rsp = vcpu.rsp();
    let mut fx = vcpu.fx_area().ok_or(SimdError::NoFpuState)?.clone();
    let segments = mmio_memory::segments(vcpu);
    let mut env = Env { mem, cr, segments };
    let (operand, address) = locate(&insn, &regs, rsp, &env, gpa);
    let fault = match (&simd, &x87) {
        (Some((mv, _)), _) => check(mv, &cr, features, &fx, address)?,
        (None, Some((mv, _))) => mmio_x87::check(mv, &cr, features, &fx)?,
        (None, None) => None,
    };
    if let Some(e) = fault {
        // A fault: RIP stays on the instruction, nothing changes (SDM Vol. 3A 6.5).
        vcpu.inject_exception(e);
        return Ok(());
    }
    match (&simd, &x87) {
        (Some((mv, _)), _) => execute(mv, &regs, rsp, &mut fx, operand, device, &mut env)?,
        (None, Some((mv, _))) => {
            // FDP: the operand's effective address, as the processor records it.
            let fdp = effective_offset(&insn, &regs, rsp).map_or(gpa, |(_, o)| o);
            mmio_x87::execute(mv, &mut fx, operand, rip, fdp, device, &mut env)?
        }
        (None, None) => {}
    }
    if let Some(live) = vcpu.fx_area() {
        *live = fx;
    }
    mmio::step_over(vcpu, rip, len, bitness);
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::vmm::guest_walk::GuestMemory;
    use std::vec;
    use std::vec::Vec;
    use vcpu::{CpuMode, Exit};

    /// The general-purpose features `mmio::emulate` checks (CX16), all present.
    const GENERAL: mmio::GuestFeatures = mmio::GuestFeatures { cx16: true };
    /// Every extension present (what the tests of this module and of
    /// `mmio_simd_alu` assume unless they hide one).
    pub(crate) const ALL: SimdFeatures = SimdFeatures {
        mmx: true,
        sse: true,
        sse2: true,
        sse3: true,
        ssse3: true,
        sse41: true,
    };

    fn d64(bytes: &[u8]) -> SimdMove {
        decode(bytes, 64, 0x1000).unwrap().0
    }

    fn mv(load: bool, reg: SimdReg, width: u8, needs: Extension) -> SimdMove {
        SimdMove {
            len: 0,
            width,
            load,
            reg,
            lane: 0,
            zero_rest: false,
            aligned: false,
            needs,
        }
    }

    #[test]
    fn register_numbering_matches_iced() {
        assert_eq!(class(Register::XMM15, Register::XMM0, 16), Some(15));
        assert_eq!(class(Register::MM7, Register::MM0, 8), Some(7));
        assert_eq!(class(Register::XMM0, Register::MM0, 8), None);
        assert_eq!(gpr(Register::R15D), Some((15, 4)));
        assert_eq!(gpr(Register::RSP), Some((4, 8)));
        assert_eq!(gpr(Register::SI), Some((6, 2)));
        assert_eq!(gpr(Register::AL), None);
        let regs = GuestRegisters {
            r9: 0x1111_2222_3333_4444,
            ..Default::default()
        };
        assert_eq!(gpr_value(&regs, 7, Register::R9D), Some(0x3333_4444));
        assert_eq!(gpr_value(&regs, 7, Register::RSP), Some(7));
        assert_eq!(gpr_value(&regs, 7, Register::XMM1), None);
    }

    #[test]
    fn every_form_decodes_with_its_width_direction_and_rules() {
        use Extension::*;
        use SimdReg::*;
        let x = |n| Xmm(n);
        let cases: &[(&[u8], SimdMove)] = &[
            // movd mm1, [rax] / movq mm2, [rax] (REX.W 0F 6E and 0F 6F)
            (
                &[0x0F, 0x6E, 0x08],
                SimdMove {
                    zero_rest: true,
                    ..mv(true, Mm(1), 4, Mmx)
                },
            ),
            (
                &[0x48, 0x0F, 0x6E, 0x10],
                SimdMove {
                    zero_rest: true,
                    ..mv(true, Mm(2), 8, Mmx)
                },
            ),
            (
                &[0x0F, 0x6F, 0x18],
                SimdMove {
                    zero_rest: true,
                    ..mv(true, Mm(3), 8, Mmx)
                },
            ),
            // movd [rax], mm4 / movq [rax], mm5 (REX.W 0F 7E and 0F 7F) / movntq
            (&[0x0F, 0x7E, 0x20], mv(false, Mm(4), 4, Mmx)),
            (&[0x48, 0x0F, 0x7E, 0x28], mv(false, Mm(5), 8, Mmx)),
            (&[0x0F, 0x7F, 0x30], mv(false, Mm(6), 8, Mmx)),
            (&[0x0F, 0xE7, 0x38], mv(false, Mm(7), 8, Sse)),
            // movd xmm9, [rax] / movq xmm1, [rax] (66 REX.W 0F 6E, F3 0F 7E)
            (
                &[0x66, 0x44, 0x0F, 0x6E, 0x08],
                SimdMove {
                    zero_rest: true,
                    ..mv(true, x(9), 4, Sse2)
                },
            ),
            (
                &[0x66, 0x48, 0x0F, 0x6E, 0x08],
                SimdMove {
                    zero_rest: true,
                    ..mv(true, x(1), 8, Sse2)
                },
            ),
            (
                &[0xF3, 0x0F, 0x7E, 0x08],
                SimdMove {
                    zero_rest: true,
                    ..mv(true, x(1), 8, Sse2)
                },
            ),
            // movd/movq [rax], xmm1 (66 0F 7E, 66 REX.W 0F 7E, 66 0F D6)
            (&[0x66, 0x0F, 0x7E, 0x08], mv(false, x(1), 4, Sse2)),
            (&[0x66, 0x48, 0x0F, 0x7E, 0x08], mv(false, x(1), 8, Sse2)),
            (&[0x66, 0x0F, 0xD6, 0x08], mv(false, x(1), 8, Sse2)),
            // movdqa / movdqu, both directions
            (
                &[0x66, 0x0F, 0x6F, 0x08],
                SimdMove {
                    aligned: true,
                    ..mv(true, x(1), 16, Sse2)
                },
            ),
            (&[0xF3, 0x0F, 0x6F, 0x08], mv(true, x(1), 16, Sse2)),
            (
                &[0x66, 0x0F, 0x7F, 0x08],
                SimdMove {
                    aligned: true,
                    ..mv(false, x(1), 16, Sse2)
                },
            ),
            (&[0xF3, 0x44, 0x0F, 0x7F, 0x38], mv(false, x(15), 16, Sse2)),
            // movaps / movups / movapd / movupd
            (
                &[0x0F, 0x28, 0x08],
                SimdMove {
                    aligned: true,
                    ..mv(true, x(1), 16, Sse)
                },
            ),
            (&[0x0F, 0x10, 0x08], mv(true, x(1), 16, Sse)),
            (
                &[0x66, 0x0F, 0x28, 0x08],
                SimdMove {
                    aligned: true,
                    ..mv(true, x(1), 16, Sse2)
                },
            ),
            (&[0x66, 0x0F, 0x10, 0x08], mv(true, x(1), 16, Sse2)),
            (
                &[0x0F, 0x29, 0x08],
                SimdMove {
                    aligned: true,
                    ..mv(false, x(1), 16, Sse)
                },
            ),
            (&[0x0F, 0x11, 0x08], mv(false, x(1), 16, Sse)),
            (
                &[0x66, 0x0F, 0x29, 0x08],
                SimdMove {
                    aligned: true,
                    ..mv(false, x(1), 16, Sse2)
                },
            ),
            (&[0x66, 0x0F, 0x11, 0x08], mv(false, x(1), 16, Sse2)),
            // movss / movsd: loads zero the rest, stores write the scalar
            (
                &[0xF3, 0x0F, 0x10, 0x08],
                SimdMove {
                    zero_rest: true,
                    ..mv(true, x(1), 4, Sse)
                },
            ),
            (
                &[0xF2, 0x0F, 0x10, 0x08],
                SimdMove {
                    zero_rest: true,
                    ..mv(true, x(1), 8, Sse2)
                },
            ),
            (&[0xF3, 0x0F, 0x11, 0x08], mv(false, x(1), 4, Sse)),
            (&[0xF2, 0x0F, 0x11, 0x08], mv(false, x(1), 8, Sse2)),
            // movlps / movhps / movlpd / movhpd
            (&[0x0F, 0x12, 0x08], mv(true, x(1), 8, Sse)),
            (
                &[0x0F, 0x16, 0x08],
                SimdMove {
                    lane: 8,
                    ..mv(true, x(1), 8, Sse)
                },
            ),
            (&[0x66, 0x0F, 0x12, 0x08], mv(true, x(1), 8, Sse2)),
            (
                &[0x66, 0x0F, 0x16, 0x08],
                SimdMove {
                    lane: 8,
                    ..mv(true, x(1), 8, Sse2)
                },
            ),
            (&[0x0F, 0x13, 0x08], mv(false, x(1), 8, Sse)),
            (
                &[0x0F, 0x17, 0x08],
                SimdMove {
                    lane: 8,
                    ..mv(false, x(1), 8, Sse)
                },
            ),
            (&[0x66, 0x0F, 0x13, 0x08], mv(false, x(1), 8, Sse2)),
            (
                &[0x66, 0x0F, 0x17, 0x08],
                SimdMove {
                    lane: 8,
                    ..mv(false, x(1), 8, Sse2)
                },
            ),
            // non-temporal stores and loads, lddqu
            (
                &[0x66, 0x0F, 0xE7, 0x08],
                SimdMove {
                    aligned: true,
                    ..mv(false, x(1), 16, Sse2)
                },
            ),
            (
                &[0x0F, 0x2B, 0x08],
                SimdMove {
                    aligned: true,
                    ..mv(false, x(1), 16, Sse)
                },
            ),
            (
                &[0x66, 0x0F, 0x2B, 0x08],
                SimdMove {
                    aligned: true,
                    ..mv(false, x(1), 16, Sse2)
                },
            ),
            (
                &[0x66, 0x0F, 0x38, 0x2A, 0x08],
                SimdMove {
                    aligned: true,
                    ..mv(true, x(1), 16, Sse41)
                },
            ),
            (&[0xF2, 0x0F, 0xF0, 0x08], mv(true, x(1), 16, Sse3)),
            // movnti [rax], ecx / movnti [rax], r9
            (&[0x0F, 0xC3, 0x08], mv(false, Gpr(Register::ECX), 4, Sse2)),
            (
                &[0x4C, 0x0F, 0xC3, 0x08],
                mv(false, Gpr(Register::R9), 8, Sse2),
            ),
        ];
        for (bytes, want) in cases {
            let want = SimdMove {
                len: bytes.len(),
                ..*want
            };
            assert_eq!(d64(bytes), want, "{bytes:02x?}");
        }
    }

    #[test]
    fn what_is_not_a_memory_move_is_refused() {
        let refused = |bytes: &[u8]| decode(bytes, 64, 0).map(|d| d.0);
        // movdqu xmm1, xmm0: no memory operand.
        assert_eq!(
            refused(&[0xF3, 0x0F, 0x6F, 0xC8]),
            Err(MmioError::NoMemoryOperand {
                mnemonic: iced_x86::Mnemonic::Movdqu
            })
        );
        // addps xmm0, [rax], vmovdqu xmm0, [rax] (VEX), fld qword [rax], maskmovq.
        for bytes in [
            &[0x0F, 0x58, 0x00][..],
            &[0xC5, 0xFA, 0x6F, 0x00],
            &[0xDD, 0x00],
            &[0x0F, 0xF7, 0xC1],
        ] {
            assert!(
                matches!(refused(bytes), Err(MmioError::Unsupported { .. })),
                "{bytes:02x?}"
            );
        }
        assert_eq!(
            refused(&[0xF3, 0x0F, 0x6F]),
            Err(MmioError::Truncated { available: 3 })
        );
        // LOCK is #UD on these.
        assert_eq!(refused(&[0xF0, 0x0F, 0x6F, 0x00]), Err(MmioError::Invalid));
    }

    #[test]
    fn effective_address_takes_every_addressing_part() {
        let regs = GuestRegisters {
            rbx: 0x1000,
            rsi: 3,
            ..Default::default()
        };
        // movdqu xmm0, [rbx+rsi*8+0x20]
        let (_, insn) = decode(&[0xF3, 0x0F, 0x6F, 0x44, 0xF3, 0x20], 64, 0).unwrap();
        assert_eq!(
            effective_offset(&insn, &regs, 0),
            Some((SegReg::Ds, 0x1038))
        );
        // movdqu xmm0, [rip+0x10] at RIP 0x5000 (8 bytes long).
        let (_, insn) = decode(&[0xF3, 0x0F, 0x6F, 0x05, 0x10, 0, 0, 0], 64, 0x5000).unwrap();
        assert_eq!(
            effective_offset(&insn, &regs, 0),
            Some((SegReg::Ds, 0x5018))
        );
        // movq [rsp+8], mm0: SS.
        let (_, insn) = decode(&[0x0F, 0x7F, 0x44, 0x24, 0x08], 64, 0).unwrap();
        assert_eq!(
            effective_offset(&insn, &regs, 0x7000),
            Some((SegReg::Ss, 0x7008))
        );
        // 16-bit code: movups xmm0, es:[bx+si+0xFFFE] wraps at 64 KiB.
        let (_, insn) = decode(&[0x26, 0x0F, 0x10, 0x80, 0xFE, 0xFF], 16, 0).unwrap();
        assert_eq!(
            effective_offset(&insn, &regs, 0),
            Some((SegReg::Es, 0x1001))
        );
    }

    fn cr(cr0: u64, cr4: u64) -> ControlRegs {
        ControlRegs {
            cr0,
            cr4,
            ..Default::default()
        }
    }

    #[test]
    fn checks_in_the_processors_order() {
        let fx = FxArea::initial();
        let movdqa = d64(&[0x66, 0x0F, 0x6F, 0x08]);
        let movq_mm = d64(&[0x0F, 0x6F, 0x08]);
        let movnti = d64(&[0x0F, 0xC3, 0x08]);
        let movntdqa = d64(&[0x66, 0x0F, 0x38, 0x2A, 0x08]);
        let ok = cr(1 | CR0_NE, CR4_OSFXSR);
        let c = |m: &SimdMove, cr: ControlRegs, f: SimdFeatures, fx: &FxArea, a: u64| {
            check(m, &cr, f, fx, a)
        };
        assert_eq!(c(&movdqa, ok, ALL, &fx, 0x10), Ok(None));
        // Misaligned: #GP(0); but #UD and #NM come first.
        assert_eq!(c(&movdqa, ok, ALL, &fx, 0x18), Ok(Some(Exception::GP0)));
        let em = cr(1 | CR0_EM | CR0_TS, CR4_OSFXSR);
        assert_eq!(c(&movdqa, em, ALL, &fx, 0x18), Ok(Some(Exception::UD)));
        let no_fxsr = cr(1 | CR0_TS, 0);
        assert_eq!(c(&movdqa, no_fxsr, ALL, &fx, 0x18), Ok(Some(Exception::UD)));
        let ts = cr(1 | CR0_TS, CR4_OSFXSR);
        assert_eq!(c(&movdqa, ts, ALL, &fx, 0x18), Ok(Some(Exception::NM)));
        let no_sse2 = SimdFeatures { sse2: false, ..ALL };
        assert_eq!(c(&movdqa, ok, no_sse2, &fx, 0x10), Ok(Some(Exception::UD)));
        let no_sse41 = SimdFeatures {
            sse41: false,
            ..ALL
        };
        assert_eq!(
            c(&movntdqa, ok, no_sse41, &fx, 0x10),
            Ok(Some(Exception::UD))
        );
        assert_eq!(c(&movntdqa, ok, ALL, &fx, 0x14), Ok(Some(Exception::GP0)));
        // MMX: CR4.OSFXSR does not matter, TS does, and a pending x87 error is #MF.
        assert_eq!(c(&movq_mm, cr(1, 0), ALL, &fx, 3), Ok(None));
        assert_eq!(c(&movq_mm, ts, ALL, &fx, 3), Ok(Some(Exception::NM)));
        let no_mmx = SimdFeatures { mmx: false, ..ALL };
        assert_eq!(c(&movq_mm, ok, no_mmx, &fx, 3), Ok(Some(Exception::UD)));
        let mut pending = FxArea::initial();
        pending.0[2] = 0x81; // IE and ES
        assert_eq!(c(&movq_mm, ok, ALL, &pending, 3), Ok(Some(Exception::MF)));
        assert_eq!(
            c(&movq_mm, cr(1, 0), ALL, &pending, 3),
            Err(SimdError::PendingX87Error)
        );
        // ... which SSE forms ignore.
        assert_eq!(c(&movdqa, ok, ALL, &pending, 0x10), Ok(None));
        // MOVNTI: only CPUID.
        assert_eq!(c(&movnti, em, ALL, &fx, 3), Ok(None));
        assert_eq!(c(&movnti, ok, no_sse2, &fx, 3), Ok(Some(Exception::UD)));
    }

    // ---- end to end ----

    /// Guest RAM: the first 2 MiB of guest-physical space.
    use crate::vmm::test_ram::Ram;

    #[derive(Default)]
    struct TestVcpu {
        regs: GuestRegisters,
        rip: u64,
        rsp: u64,
        cr: ControlRegs,
        injected: Option<Exception>,
        fx: FxArea,
        no_fx: bool,
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
            unimplemented!()
        }
        fn unmap_page(
            &mut self,
            _: &mut dyn vcpu::HostMemory,
            _: u64,
        ) -> Result<(), vcpu::BackendError> {
            unimplemented!()
        }
        fn set_real_mode_cs(&mut self, _: u16) {
            unimplemented!()
        }
        fn nmi_ready(&self) -> bool {
            unimplemented!()
        }
        fn cpl(&self) -> u8 {
            0
        }
        fn inject_nmi(&mut self) {
            unimplemented!()
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
            panic!("emulate must set RIP itself");
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
            2
        }
        fn set_rflags(&mut self, _: u64) {
            panic!("no MMX/SSE move changes RFLAGS");
        }
        fn interrupt_ready(&self) -> bool {
            false
        }
        fn inject_interrupt(&mut self, _: u8) {}
        fn request_interrupt_window(&mut self, _: bool) {}
        fn rsp(&self) -> u64 {
            self.rsp
        }
        fn set_rsp(&mut self, _: u64) {
            panic!("no MMX/SSE move changes RSP");
        }
        fn control_regs(&self) -> ControlRegs {
            self.cr
        }
        fn fx_area(&mut self) -> Option<&mut FxArea> {
            (!self.no_fx).then_some(&mut self.fx)
        }
        fn save_state(&mut self) -> vcpu::state::CpuState {
            unimplemented!()
        }
        fn load_state(&mut self, _: &vcpu::state::CpuState) -> Result<(), vcpu::state::StateError> {
            unimplemented!()
        }
    }

    /// Linear 0x20_0000 (2 MiB page) maps to guest-physical DEV, which is no RAM.
    const MMIO: u64 = 0x20_0000;
    const DEV: u64 = 0x8000_0000;

    /// A long-mode guest with CR4.OSFXSR: PML4 at 0x1000, PDPT 0x2000, PD 0x3000;
    /// linear 0-2 MiB is RAM, 2-4 MiB the device; `code` at RIP 0x10000.
    fn guest(code: &[u8]) -> (TestVcpu, Ram) {
        let mut ram = Ram(vec![0; 0x20_0000]);
        ram.write(0x1000, &0x2003u64.to_le_bytes()).unwrap();
        ram.write(0x2000, &0x3003u64.to_le_bytes()).unwrap();
        ram.write(0x3000, &0x83u64.to_le_bytes()).unwrap();
        ram.write(0x3008, &(DEV | 0x83).to_le_bytes()).unwrap();
        ram.write(0x10000, code).unwrap();
        let vcpu = TestVcpu {
            rip: 0x10000,
            cr: ControlRegs {
                cr0: 0x8000_0031,
                cr3: 0x1000,
                cr4: 0x20 | CR4_OSFXSR,
                efer: 0x500,
                cs_base: 0,
                cs_long: true,
            },
            ..Default::default()
        };
        (vcpu, ram)
    }

    type Calls = Vec<(u64, u8, Option<u64>)>;

    /// Runs `emulate` for an exit at `gpa`; the device answers reads with `reply`
    /// shifted by the access's offset from DEV, so the halves differ.
    fn run(
        vcpu: &mut TestVcpu,
        ram: &mut Ram,
        gpa: u64,
        write: bool,
        features: SimdFeatures,
    ) -> (Result<(), SimdError>, Calls) {
        let mut calls = Vec::new();
        let mut device = |a: u64, s: u8, v: Option<u64>| {
            calls.push((a, s, v));
            0x0102_0304_0506_0708u64.wrapping_add(a - DEV) & mmio::mask(s)
        };
        let r = emulate(vcpu, ram, gpa, write, GENERAL, features, &mut device);
        (r, calls)
    }

    fn bytes16(lo: u64, hi: u64) -> [u8; 16] {
        let mut b = [0; 16];
        b[..8].copy_from_slice(&lo.to_le_bytes());
        b[8..].copy_from_slice(&hi.to_le_bytes());
        b
    }

    #[test]
    fn movdqu_load_reads_two_quadwords_in_ascending_order() {
        // movdqu xmm3, [rbx+8]
        let (mut v, mut ram) = guest(&[0xF3, 0x0F, 0x6F, 0x5B, 0x08]);
        v.regs.rbx = MMIO + 0x100;
        let (r, calls) = run(&mut v, &mut ram, DEV + 0x108, false, ALL);
        r.unwrap();
        assert_eq!(calls, [(DEV + 0x108, 8, None), (DEV + 0x110, 8, None)]);
        let base = 0x0102_0304_0506_0708u64;
        assert_eq!(v.fx.xmm(3), bytes16(base + 0x108, base + 0x110));
        assert_eq!(v.rip, 0x10005);
        assert_eq!(v.injected, None);
    }

    #[test]
    fn stores_write_exactly_the_moved_bytes() {
        let lo = 0x1111_2222_3333_4444u64;
        let hi = 0x5555_6666_7777_8888u64;
        let cases: &[(&[u8], Calls)] = &[
            // movdqu [rax], xmm2
            (
                &[0xF3, 0x0F, 0x7F, 0x10],
                vec![(DEV, 8, Some(lo)), (DEV + 8, 8, Some(hi))],
            ),
            // movntdq [rax], xmm2
            (
                &[0x66, 0x0F, 0xE7, 0x10],
                vec![(DEV, 8, Some(lo)), (DEV + 8, 8, Some(hi))],
            ),
            // movss [rax], xmm2: the scalar only
            (&[0xF3, 0x0F, 0x11, 0x10], vec![(DEV, 4, Some(0x3333_4444))]),
            // movsd [rax], xmm2
            (&[0xF2, 0x0F, 0x11, 0x10], vec![(DEV, 8, Some(lo))]),
            // movhps [rax], xmm2: the high half
            (&[0x0F, 0x17, 0x10], vec![(DEV, 8, Some(hi))]),
            // movd [rax], xmm2 / movq [rax], xmm2
            (&[0x66, 0x0F, 0x7E, 0x10], vec![(DEV, 4, Some(0x3333_4444))]),
            (&[0x66, 0x0F, 0xD6, 0x10], vec![(DEV, 8, Some(lo))]),
            // movnti [rax], rdx / movnti [rax], edx
            (
                &[0x48, 0x0F, 0xC3, 0x10],
                vec![(DEV, 8, Some(0xdead_beef_0bad_f00d))],
            ),
            (&[0x0F, 0xC3, 0x10], vec![(DEV, 4, Some(0x0bad_f00d))]),
        ];
        for (code, want) in cases {
            let (mut v, mut ram) = guest(code);
            v.regs.rax = MMIO;
            v.regs.rdx = 0xdead_beef_0bad_f00d;
            v.fx.set_xmm(2, bytes16(lo, hi));
            let before = v.fx.clone();
            let (r, calls) = run(&mut v, &mut ram, DEV, true, ALL);
            r.unwrap();
            assert_eq!(&calls, want, "{code:02x?}");
            assert_eq!(v.fx, before, "a store changes no register");
            assert_eq!(v.rip, 0x10000 + code.len() as u64);
        }
    }

    #[test]
    fn loads_zero_or_keep_the_rest_as_each_form_says() {
        let old = bytes16(0xAAAA_AAAA_AAAA_AAAA, 0xBBBB_BBBB_BBBB_BBBB);
        let r4 = 0x0506_0708u64;
        let r8 = 0x0102_0304_0506_0708u64;
        let cases: &[(&[u8], [u8; 16])] = &[
            // movss xmm1, [rax]: zero the rest
            (&[0xF3, 0x0F, 0x10, 0x08], bytes16(r4, 0)),
            // movsd xmm1, [rax]
            (&[0xF2, 0x0F, 0x10, 0x08], bytes16(r8, 0)),
            // movd xmm1, [rax] / movq xmm1, [rax]
            (&[0x66, 0x0F, 0x6E, 0x08], bytes16(r4, 0)),
            (&[0xF3, 0x0F, 0x7E, 0x08], bytes16(r8, 0)),
            // movlps keeps the high half, movhpd the low one
            (&[0x0F, 0x12, 0x08], bytes16(r8, 0xBBBB_BBBB_BBBB_BBBB)),
            (
                &[0x66, 0x0F, 0x16, 0x08],
                bytes16(0xAAAA_AAAA_AAAA_AAAA, r8),
            ),
            // lddqu, movntdqa: all 16
            (&[0xF2, 0x0F, 0xF0, 0x08], bytes16(r8, r8 + 8)),
            (&[0x66, 0x0F, 0x38, 0x2A, 0x08], bytes16(r8, r8 + 8)),
        ];
        for (code, want) in cases {
            let (mut v, mut ram) = guest(code);
            v.regs.rax = MMIO;
            v.fx.set_xmm(1, old);
            let (r, _) = run(&mut v, &mut ram, DEV, false, ALL);
            r.unwrap();
            assert_eq!(v.fx.xmm(1), *want, "{code:02x?}");
            // Only XMM1 changed.
            let mut rest = v.fx.clone();
            rest.set_xmm(1, old);
            let mut expect = FxArea::initial();
            expect.set_xmm(1, old);
            assert_eq!(rest, expect, "{code:02x?}");
        }
    }

    #[test]
    fn mmx_moves_enter_mmx_mode() {
        // movq mm5, [rax], with TOP = 2 and R5 tagged empty before.
        let (mut v, mut ram) = guest(&[0x0F, 0x6F, 0x28]);
        v.regs.rax = MMIO + 0x40;
        v.fx.0[2..4].copy_from_slice(&(2u16 << 11).to_le_bytes());
        v.fx.0[4] = 0x01;
        let (r, calls) = run(&mut v, &mut ram, DEV + 0x40, false, ALL);
        r.unwrap();
        assert_eq!(calls, [(DEV + 0x40, 8, None)]);
        assert_eq!(v.fx.top(), 0);
        assert_eq!(v.fx.abridged_tags(), 0xFF);
        assert_eq!(v.fx.mm(5), 0x0102_0304_0506_0748);
        assert_eq!(v.fx.st(5)[8..], [0xFF, 0xFF]);
        // movd [rax], mm5 stores the low dword; movntq [rax], mm5 all of it.
        for (code, size, value) in [
            (&[0x0F, 0x7E, 0x28][..], 4, 0x0506_0748),
            (&[0x0F, 0xE7, 0x28], 8, 0x0102_0304_0506_0748),
        ] {
            let fx = v.fx.clone();
            let (mut w, mut ram) = guest(code);
            w.regs.rax = MMIO;
            w.fx = fx;
            let (r, calls) = run(&mut w, &mut ram, DEV, true, ALL);
            r.unwrap();
            assert_eq!(calls, [(DEV, size, Some(value))]);
        }
    }

    #[test]
    fn faults_are_injected_with_nothing_changed() {
        // movdqa xmm0, [rax] at a misaligned address: #GP(0).
        let (mut v, mut ram) = guest(&[0x66, 0x0F, 0x6F, 0x00]);
        v.regs.rax = MMIO + 8;
        let (r, calls) = run(&mut v, &mut ram, DEV + 8, false, ALL);
        r.unwrap();
        assert_eq!(v.injected, Some(Exception::GP0));
        assert!(calls.is_empty());
        assert_eq!((v.rip, v.fx.clone()), (0x10000, FxArea::initial()));
        // CR0.TS: #NM.
        let (mut v, mut ram) = guest(&[0xF3, 0x0F, 0x6F, 0x00]);
        v.regs.rax = MMIO;
        v.cr.cr0 |= CR0_TS;
        let (r, calls) = run(&mut v, &mut ram, DEV, false, ALL);
        r.unwrap();
        assert_eq!(v.injected, Some(Exception::NM));
        assert!(calls.is_empty());
        assert_eq!(v.rip, 0x10000);
        // No FXSAVE image: the VM stops, nothing touched.
        let (mut v, mut ram) = guest(&[0xF3, 0x0F, 0x6F, 0x00]);
        v.regs.rax = MMIO;
        v.no_fx = true;
        let (r, calls) = run(&mut v, &mut ram, DEV, false, ALL);
        assert_eq!(r, Err(SimdError::NoFpuState));
        assert!(calls.is_empty());
    }

    #[test]
    fn a_movdqu_across_ram_and_the_device_reaches_each() {
        // movdqu [rax], xmm1 at linear 2 MiB - 8: the low half is RAM, the high half
        // the device's first quadword.
        let (mut v, mut ram) = guest(&[0xF3, 0x0F, 0x7F, 0x08]);
        v.regs.rax = MMIO - 8;
        v.fx.set_xmm(1, bytes16(0x1122_3344_5566_7788, 0x99));
        let (r, calls) = run(&mut v, &mut ram, DEV, true, ALL);
        r.unwrap();
        assert_eq!(calls, [(DEV, 8, Some(0x99))]);
        let mut low = [0; 8];
        ram.read(0x20_0000 - 8, &mut low).unwrap();
        assert_eq!(u64::from_le_bytes(low), 0x1122_3344_5566_7788);
    }

    #[test]
    fn x87_loads_and_stores_go_through_the_same_path() {
        // fld qword [rax+8] from the device, then fstp dword [rax] back to it.
        let (mut v, mut ram) = guest(&[0xDD, 0x40, 0x08]);
        v.regs.rax = MMIO;
        let mut calls = Vec::new();
        let mut device = |a: u64, s: u8, w: Option<u64>| {
            calls.push((a, s, w));
            (-2.25f64).to_bits()
        };
        emulate(&mut v, &mut ram, DEV + 8, false, GENERAL, ALL, &mut device).unwrap();
        assert_eq!(calls, [(DEV + 8, 8, None)]);
        assert_eq!((v.rip, v.fx.top()), (0x10003, 7));
        let fx = v.fx.clone();
        let (mut v, mut ram) = guest(&[0xD9, 0x18]);
        v.regs.rax = MMIO;
        v.fx = fx;
        let (r, calls) = run(&mut v, &mut ram, DEV, true, ALL);
        r.unwrap();
        assert_eq!(calls, [(DEV, 4, Some(u64::from((-2.25f32).to_bits())))]);
        assert_eq!((v.rip, v.fx.top()), (0x10002, 0));
        // CR0.TS: #NM, nothing done.
        let (mut v, mut ram) = guest(&[0xD9, 0x18]);
        v.regs.rax = MMIO;
        v.cr.cr0 |= CR0_TS;
        let (r, calls) = run(&mut v, &mut ram, DEV, true, ALL);
        r.unwrap();
        assert_eq!(
            (v.injected, v.rip, calls.len()),
            (Some(Exception::NM), 0x10000, 0)
        );
    }

    #[test]
    fn general_forms_still_go_to_the_general_emulator_and_others_are_named() {
        // mov eax, [rax]
        let (mut v, mut ram) = guest(&[0x8B, 0x00]);
        v.regs.rax = MMIO;
        let (r, calls) = run(&mut v, &mut ram, DEV, false, ALL);
        r.unwrap();
        assert_eq!(calls, [(DEV, 4, None)]);
        assert_eq!(v.regs.rax, 0x0506_0708);
        // addps xmm0, [rax]: the computations' module (16 bytes in two pieces).
        let (mut v, mut ram) = guest(&[0x0F, 0x58, 0x00]);
        v.regs.rax = MMIO;
        let (r, calls) = run(&mut v, &mut ram, DEV, false, ALL);
        r.unwrap();
        assert_eq!(calls, [(DEV, 8, None), (DEV + 8, 8, None)]);
        assert_eq!((v.rip, v.injected), (0x10003, None));
        // pshufd xmm0, [rax], 0x1b: nobody emulates it; the report names it.
        let (mut v, mut ram) = guest(&[0x66, 0x0F, 0x70, 0x00, 0x1B]);
        v.regs.rax = MMIO;
        let (r, calls) = run(&mut v, &mut ram, DEV, false, ALL);
        let e = r.unwrap_err();
        assert!(std::format!("{e}").contains("`pshufd`"), "{e}");
        assert!(calls.is_empty());
        // The exit's direction must match.
        let (mut v, mut ram) = guest(&[0xF3, 0x0F, 0x6F, 0x00]);
        v.regs.rax = MMIO;
        let (r, _) = run(&mut v, &mut ram, DEV, true, ALL);
        assert_eq!(
            r,
            Err(SimdError::Mmio(MmioError::DirectionMismatch {
                exit_write: true
            }))
        );
    }
}
