//! Guest x87/SSE state. Neither VMRUN nor VM entry switches it, so each vCPU keeps
//! its own FXSAVE image, restored before entry and saved after exit; otherwise one
//! guest could read another's XMM registers. The hypervisor itself is built without
//! SSE and keeps nothing of its own in these registers (the AES-NI code uses them
//! only inside its calls); [`x87_memory_op`] runs one guest x87 instruction on them
//! with the guest's image loaded, and [`sse_memory_op`] one SSE computation from a
//! fixed table of stubs, each leaving the caller's control words as they were.
//!
//! **Restoring under QEMU's multi-threaded TCG.** QEMU (7.2; 8.1 still does)
//! clears IGNNE in the *boot* processor's `hflags2` whenever any processor loads an
//! x87 status word whose exception summary (ES) is clear, with a plain
//! read-modify-write from that processor's own thread (`cpu_set_fpus` ->
//! `cpu_clear_ignne`, target/i386 fpu_helper.c). The same word holds the boot
//! processor's nested-paging, GIF and virtual-interrupt flags, which its VMRUN and
//! #VMEXIT change from its thread: an FXRSTOR on another processor at that moment
//! writes back stale flags, and the boot processor then runs its host code under the
//! guest's nested paging (the exit stores the host's state as the guest's) or a guest
//! without it. [`fxrstor`] loads such an image with ES set, which QEMU leaves alone,
//! and clears it with FNCLEX.
//!
//! The image is the guest's live x87/SSE state while its vCPU is outside the guest
//! (both backends save it right after the exit and load it right before the entry),
//! so the core reads and writes the guest's XMM, MMX and x87 registers and MXCSR in
//! it ([`crate::Vcpu::fx_area`]) when it emulates an instruction that uses them.

use core::arch::asm;

/// The 512-byte FXSAVE image (SDM Vol. 1 10.5.1), 16-byte aligned as FXSAVE requires.
#[repr(C, align(16))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FxArea(pub [u8; 512]);

impl Default for FxArea {
    /// [`FxArea::initial`]: the state a vCPU starts with.
    fn default() -> Self {
        Self::initial()
    }
}

/// The MXCSR_MASK to assume when FXSAVE stores 0 there (SDM Vol. 1 11.6.6): every bit
/// but DAZ (bit 6).
pub const DEFAULT_MXCSR_MASK: u32 = 0xFFBF;

/// Byte offset of FSW, the x87 status word, in the image (SDM Vol. 1 Table 10-2).
const FSW_OFFSET: usize = 2;
/// FSW.ES, the exception summary status (SDM Vol. 1 8.1.3).
const FSW_ES: u16 = 1 << 7;
/// The FSW bits FNCLEX clears: the exception flags, SF, ES and B (SDM Vol. 2
/// FCLEX/FNCLEX).
const FSW_CLEARED_BY_FNCLEX: u16 = 0x80FF;

/// Byte offset of the abridged x87 tag word (one bit per physical register, 1 =
/// valid) in the image (SDM Vol. 1 Table 10-2).
const FTW_OFFSET: usize = 4;
/// Byte offset of ST0/MM0's 16-byte slot; ST(i) follows at 16-byte steps.
const ST_OFFSET: usize = 32;
/// Byte offset of XMM0's 16-byte slot; XMMn follows at 16-byte steps.
const XMM_OFFSET: usize = 160;
/// FSW bits 13:11, TOP: the physical register that is ST(0) (SDM Vol. 1 8.1.3).
const FSW_TOP_SHIFT: u32 = 11;

impl FxArea {
    /// MXCSR, bytes 24-27 of the image.
    pub fn mxcsr(&self) -> u32 {
        u32::from_le_bytes([self.0[24], self.0[25], self.0[26], self.0[27]])
    }

    /// Sets MXCSR. The caller keeps it [`FxArea::restorable`].
    pub fn set_mxcsr(&mut self, mxcsr: u32) {
        self.0[24..28].copy_from_slice(&mxcsr.to_le_bytes());
    }

    /// XMM register `n` modulo 16 (FXSAVE64 stores all sixteen; outside 64-bit mode
    /// a guest reaches only XMM0-7).
    pub fn xmm(&self, n: usize) -> [u8; 16] {
        let at = XMM_OFFSET + 16 * (n % 16);
        let mut r = [0; 16];
        r.copy_from_slice(&self.0[at..at + 16]);
        r
    }

    /// Loads XMM register `n` modulo 16.
    pub fn set_xmm(&mut self, n: usize, value: [u8; 16]) {
        let at = XMM_OFFSET + 16 * (n % 16);
        self.0[at..at + 16].copy_from_slice(&value);
    }

    /// TOP, the x87 stack top (FSW bits 13:11).
    pub fn top(&self) -> usize {
        usize::from(self.fsw() >> FSW_TOP_SHIFT) & 7
    }

    /// The abridged tag word: bit n set when physical register Rn is valid.
    pub fn abridged_tags(&self) -> u8 {
        self.0[FTW_OFFSET]
    }

    /// The 80-bit x87 register ST(i) modulo 8 as the image holds it (its slot's
    /// first 10 bytes; the image keeps the stack in ST order, not physical order).
    pub fn st(&self, i: usize) -> [u8; 10] {
        let at = ST_OFFSET + 16 * (i % 8);
        let mut r = [0; 10];
        r.copy_from_slice(&self.0[at..at + 10]);
        r
    }

    /// MMX register `n` modulo 8: bits 63:0 of physical x87 register Rn, which is
    /// ST((n - TOP) mod 8) in the image (SDM Vol. 1 9.5: MMn is aliased to Rn, and
    /// FXSAVE stores ST(0) first).
    pub fn mm(&self, n: usize) -> u64 {
        let at = ST_OFFSET + 16 * ((n + 8 - self.top()) % 8);
        let mut r = [0; 8];
        r.copy_from_slice(&self.0[at..at + 8]);
        u64::from_le_bytes(r)
    }

    /// Writes MMX register `n` modulo 8 as an MMX instruction does: bits 63:0 of Rn
    /// get `value`, its bits 79:64 (sign and exponent) all ones (SDM Vol. 1 9.5.1).
    pub fn set_mm(&mut self, n: usize, value: u64) {
        let at = ST_OFFSET + 16 * ((n + 8 - self.top()) % 8);
        self.0[at..at + 8].copy_from_slice(&value.to_le_bytes());
        self.0[at + 8..at + 10].copy_from_slice(&[0xFF, 0xFF]);
    }

    /// What every MMX instruction but EMMS does to the x87 state before it runs
    /// (SDM Vol. 1 9.5.1, Table 9-4): TOP becomes 0 and every tag "valid". In the
    /// image the slots move with TOP (slot i holds ST(i) = R((TOP + i) mod 8)), so
    /// they are rotated until slot n holds Rn; FXSAVE's abridged tag word has one bit
    /// per physical register, all set here (SDM Vol. 1 10.5.1.1).
    pub fn enter_mmx_mode(&mut self) {
        let top = self.top();
        if top != 0 {
            let mut regs = [0u8; 128];
            regs.copy_from_slice(&self.0[ST_OFFSET..ST_OFFSET + 128]);
            // New slot n = Rn = old slot (n - TOP) mod 8.
            regs.rotate_right(16 * top);
            self.0[ST_OFFSET..ST_OFFSET + 128].copy_from_slice(&regs);
        }
        let fsw = self.fsw() & !(7 << FSW_TOP_SHIFT);
        self.0[FSW_OFFSET..FSW_OFFSET + 2].copy_from_slice(&fsw.to_le_bytes());
        self.0[FTW_OFFSET] = 0xFF;
    }

    /// Whether FXRSTOR of this image succeeds on a processor whose MXCSR_MASK is
    /// `mask`: it raises #GP for an MXCSR bit the mask does not allow (SDM Vol. 1
    /// 11.6.6), which in the hypervisor would be fatal. The other fields load as they
    /// are.
    pub fn restorable(&self, mask: u32) -> bool {
        self.mxcsr() & !mask == 0
    }

    /// The x87/SSE state after FNINIT with MXCSR at its reset value: FCW 0x037F,
    /// MXCSR 0x1F80 (masked exceptions), everything else 0.
    pub fn initial() -> Self {
        let mut a = FxArea([0; 512]);
        a.0[0..2].copy_from_slice(&0x037Fu16.to_le_bytes());
        a.0[24..28].copy_from_slice(&0x1F80u32.to_le_bytes());
        a
    }

    /// The x87 status word of the image.
    pub fn fsw(&self) -> u16 {
        u16::from_le_bytes([self.0[FSW_OFFSET], self.0[FSW_OFFSET + 1]])
    }

    /// The image to load in place of this one, followed by FNCLEX, to end in
    /// exactly this state without QEMU's racy IGNNE update (see the module header):
    /// this image with FSW.ES set, when every bit FNCLEX clears is clear in FSW (no
    /// exception flag pending, the usual case). `None` otherwise: then FNCLEX would
    /// lose flags, and the image is loaded as it is.
    fn with_summary_set(&self) -> Option<FxArea> {
        let fsw = self.fsw();
        if fsw & FSW_CLEARED_BY_FNCLEX != 0 {
            return None;
        }
        let mut image = self.clone();
        image.0[FSW_OFFSET..FSW_OFFSET + 2].copy_from_slice(&(fsw | FSW_ES).to_le_bytes());
        Some(image)
    }
}

/// # Safety
/// CR4.OSFXSR must be set and CR0.EM/TS clear (else #UD/#NM): see [`enable_host_fxsr`].
pub unsafe fn fxsave(area: &mut FxArea) {
    // SAFETY: upheld by the caller; `area` is 512 bytes, 16-byte aligned.
    unsafe { asm!("fxsave64 [{}]", in(reg) area, options(nostack, preserves_flags)) };
}

/// Loads `area`. When its FSW has no exception flag, it goes in with FSW.ES set and
/// FNCLEX clears that bit again (see the module header). A pending x87 error is
/// signalled (#MF, or FERR# with CR0.NE clear) only at the next waiting x87
/// instruction (SDM Vol. 1 8.7); FNCLEX does not wait, so the summary bit raises
/// nothing, and the state that results is `area`'s.
///
/// # Safety
/// As [`fxsave`]; `area` must hold a valid image (reserved MXCSR bits clear).
pub unsafe fn fxrstor(area: &FxArea) {
    match area.with_summary_set() {
        // SAFETY: upheld by the caller; `image` differs from `area` only in FSW.ES.
        Some(image) => unsafe {
            asm!(
                "fxrstor64 [{}]",
                "fnclex",
                in(reg) &image,
                options(nostack, preserves_flags)
            )
        },
        // SAFETY: upheld by the caller.
        None => unsafe { asm!("fxrstor64 [{}]", in(reg) area, options(nostack, preserves_flags)) },
    }
}

/// An x87 load, store, arithmetic or comparison with a memory operand, carried out by
/// [`x87_memory_op`] on a
/// buffer that stands for the guest's memory (an MMIO operand the core read from a
/// device, or will write to one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum X87MemOp {
    FldM32,
    FldM64,
    FldM80,
    FildM16,
    FildM32,
    FildM64,
    FstM32,
    FstM64,
    FstpM32,
    FstpM64,
    FstpM80,
    FistM16,
    FistM32,
    FistpM16,
    FistpM32,
    FistpM64,
    FisttpM16,
    FisttpM32,
    FisttpM64,
    // Arithmetic and comparisons with ST(0) and a memory source (they read it).
    FaddM32,
    FaddM64,
    FmulM32,
    FmulM64,
    FsubM32,
    FsubM64,
    FsubrM32,
    FsubrM64,
    FdivM32,
    FdivM64,
    FdivrM32,
    FdivrM64,
    FcomM32,
    FcomM64,
    FcompM32,
    FcompM64,
    FiaddM16,
    FiaddM32,
    FimulM16,
    FimulM32,
    FisubM16,
    FisubM32,
    FisubrM16,
    FisubrM32,
    FidivM16,
    FidivM32,
    FidivrM16,
    FidivrM32,
    FicomM16,
    FicomM32,
    FicompM16,
    FicompM32,
}

impl X87MemOp {
    /// The memory operand's size in bytes: 2, 4, 8 or 10.
    pub fn width(self) -> u8 {
        use X87MemOp::*;
        match self {
            FildM16 | FistM16 | FistpM16 | FisttpM16 => 2,
            FldM32 | FildM32 | FstM32 | FstpM32 | FistM32 | FistpM32 | FisttpM32 => 4,
            FldM64 | FildM64 | FstM64 | FstpM64 | FistpM64 | FisttpM64 => 8,
            FldM80 | FstpM80 => 10,
            FiaddM16 | FimulM16 | FisubM16 | FisubrM16 | FidivM16 | FidivrM16 | FicomM16
            | FicompM16 => 2,
            FaddM32 | FmulM32 | FsubM32 | FsubrM32 | FdivM32 | FdivrM32 | FcomM32 | FcompM32
            | FiaddM32 | FimulM32 | FisubM32 | FisubrM32 | FidivM32 | FidivrM32 | FicomM32
            | FicompM32 => 4,
            FaddM64 | FmulM64 | FsubM64 | FsubrM64 | FdivM64 | FdivrM64 | FcomM64 | FcompM64 => 8,
        }
    }

    /// Whether it reads memory (`FLD`, `FILD` and the arithmetic and comparisons);
    /// the others write it.
    pub fn loads(self) -> bool {
        use X87MemOp::*;
        !matches!(
            self,
            FstM32
                | FstM64
                | FstpM32
                | FstpM64
                | FstpM80
                | FistM16
                | FistM32
                | FistpM16
                | FistpM32
                | FistpM64
                | FisttpM16
                | FisttpM32
                | FisttpM64
        )
    }
}

/// The host's x87 control word and MXCSR, kept across a [`load_guest_image`] /
/// [`store_guest_image`] pair.
struct HostControls {
    cw: u16,
    mxcsr: u32,
}

/// Saves the host's x87 control word and MXCSR, then loads `area` (FXRSTOR) so that
/// one instruction can run on the guest's x87/SSE state.
///
/// # Safety
/// As [`fxrstor`]; [`store_guest_image`] must follow on this processor before any
/// other use of these registers.
unsafe fn load_guest_image(area: &FxArea) -> HostControls {
    let (mut cw, mut mxcsr) = (0u16, 0u32);
    // SAFETY: stores of the caller's control word and MXCSR into locals.
    unsafe {
        asm!(
            "fnstcw [{cw}]",
            "stmxcsr [{mx}]",
            cw = in(reg) &mut cw,
            mx = in(reg) &mut mxcsr,
            options(nostack, preserves_flags)
        )
    };
    // SAFETY: upheld by the caller.
    unsafe { fxrstor(area) };
    HostControls { cw, mxcsr }
}

/// Stores the state back into `area` (FXSAVE), then empties the x87 stack and clears
/// FSW (FNINIT: no pending exception is left for the host's code) and restores the
/// host's control word and MXCSR.
///
/// # Safety
/// [`load_guest_image`] loaded `area` on this processor and returned `host`.
unsafe fn store_guest_image(area: &mut FxArea, host: HostControls) {
    // SAFETY: FXSAVE into the caller's image.
    unsafe { fxsave(area) };
    // SAFETY: FNINIT, then the host's own control word and MXCSR, both valid (they
    // were its values a moment ago).
    unsafe {
        asm!(
            "fninit",
            "fldcw [{cw}]",
            "ldmxcsr [{mx}]",
            cw = in(reg) &host.cw,
            mx = in(reg) &host.mxcsr,
            clobber_abi("C"),
            options(nostack)
        )
    };
}

/// Runs `op` on this processor with `area` as the x87 state and `mem` as its memory
/// operand (the low [`X87MemOp::width`] bytes), and leaves the resulting state in
/// `area`: the format conversions, rounding (FCW.RC), exception flags, stack and tag
/// changes are the processor's own, not a model of them. The caller's x87 control
/// word and MXCSR (callee-saved in the SysV ABI) are restored afterwards, and the x87
/// stack is left empty (FNINIT), so the caller sees no change. An unmasked exception
/// the instruction raises is only recorded (FSW.ES): it would be signalled at the
/// next waiting x87 instruction, and none runs before FXSAVE (which does not wait,
/// SDM Vol. 2A FXSAVE) and FNINIT. FIP/FDP/FOP in `area` then describe the host's
/// instruction and buffer: the caller replaces them.
///
/// # Safety
/// As [`fxrstor`]; moreover no x87 exception may be pending in `area` (FSW.ES clear
/// and every exception flag set in FSW masked in FCW), or the instruction itself
/// raises #MF here in the host.
#[inline(never)]
pub unsafe fn x87_memory_op(area: &mut FxArea, op: X87MemOp, mem: &mut [u8; 10]) {
    // SAFETY: upheld by the caller.
    let host = unsafe { load_guest_image(area) };
    let m = mem.as_mut_ptr();
    // SAFETY: one x87 instruction on the 10-byte buffer (no operand is wider); with
    // no exception pending (the caller's duty) it raises none here. `clobber_abi`:
    // the x87 and MMX/XMM registers now hold the guest's values.
    unsafe {
        use X87MemOp::*;
        macro_rules! op {
            ($text:literal) => {
                asm!($text, in(reg) m, clobber_abi("C"), options(nostack))
            };
        }
        match op {
            FldM32 => asm!("fld dword ptr [{}]", in(reg) m, clobber_abi("C"), options(nostack)),
            FldM64 => asm!("fld qword ptr [{}]", in(reg) m, clobber_abi("C"), options(nostack)),
            FldM80 => asm!("fld tbyte ptr [{}]", in(reg) m, clobber_abi("C"), options(nostack)),
            FildM16 => asm!("fild word ptr [{}]", in(reg) m, clobber_abi("C"), options(nostack)),
            FildM32 => asm!("fild dword ptr [{}]", in(reg) m, clobber_abi("C"), options(nostack)),
            FildM64 => asm!("fild qword ptr [{}]", in(reg) m, clobber_abi("C"), options(nostack)),
            FstM32 => asm!("fst dword ptr [{}]", in(reg) m, clobber_abi("C"), options(nostack)),
            FstM64 => asm!("fst qword ptr [{}]", in(reg) m, clobber_abi("C"), options(nostack)),
            FstpM32 => asm!("fstp dword ptr [{}]", in(reg) m, clobber_abi("C"), options(nostack)),
            FstpM64 => asm!("fstp qword ptr [{}]", in(reg) m, clobber_abi("C"), options(nostack)),
            FstpM80 => asm!("fstp tbyte ptr [{}]", in(reg) m, clobber_abi("C"), options(nostack)),
            FistM16 => asm!("fist word ptr [{}]", in(reg) m, clobber_abi("C"), options(nostack)),
            FistM32 => asm!("fist dword ptr [{}]", in(reg) m, clobber_abi("C"), options(nostack)),
            FistpM16 => asm!("fistp word ptr [{}]", in(reg) m, clobber_abi("C"), options(nostack)),
            FistpM32 => asm!("fistp dword ptr [{}]", in(reg) m, clobber_abi("C"), options(nostack)),
            FistpM64 => asm!("fistp qword ptr [{}]", in(reg) m, clobber_abi("C"), options(nostack)),
            FisttpM16 => {
                asm!("fisttp word ptr [{}]", in(reg) m, clobber_abi("C"), options(nostack))
            }
            FisttpM32 => {
                asm!("fisttp dword ptr [{}]", in(reg) m, clobber_abi("C"), options(nostack))
            }
            FisttpM64 => {
                asm!("fisttp qword ptr [{}]", in(reg) m, clobber_abi("C"), options(nostack))
            }
            FaddM32 => op!("fadd dword ptr [{}]"),
            FaddM64 => op!("fadd qword ptr [{}]"),
            FmulM32 => op!("fmul dword ptr [{}]"),
            FmulM64 => op!("fmul qword ptr [{}]"),
            FsubM32 => op!("fsub dword ptr [{}]"),
            FsubM64 => op!("fsub qword ptr [{}]"),
            FsubrM32 => op!("fsubr dword ptr [{}]"),
            FsubrM64 => op!("fsubr qword ptr [{}]"),
            FdivM32 => op!("fdiv dword ptr [{}]"),
            FdivM64 => op!("fdiv qword ptr [{}]"),
            FdivrM32 => op!("fdivr dword ptr [{}]"),
            FdivrM64 => op!("fdivr qword ptr [{}]"),
            FcomM32 => op!("fcom dword ptr [{}]"),
            FcomM64 => op!("fcom qword ptr [{}]"),
            FcompM32 => op!("fcomp dword ptr [{}]"),
            FcompM64 => op!("fcomp qword ptr [{}]"),
            FiaddM16 => op!("fiadd word ptr [{}]"),
            FiaddM32 => op!("fiadd dword ptr [{}]"),
            FimulM16 => op!("fimul word ptr [{}]"),
            FimulM32 => op!("fimul dword ptr [{}]"),
            FisubM16 => op!("fisub word ptr [{}]"),
            FisubM32 => op!("fisub dword ptr [{}]"),
            FisubrM16 => op!("fisubr word ptr [{}]"),
            FisubrM32 => op!("fisubr dword ptr [{}]"),
            FidivM16 => op!("fidiv word ptr [{}]"),
            FidivM32 => op!("fidiv dword ptr [{}]"),
            FidivrM16 => op!("fidivr word ptr [{}]"),
            FidivrM32 => op!("fidivr dword ptr [{}]"),
            FicomM16 => op!("ficom word ptr [{}]"),
            FicomM32 => op!("ficom dword ptr [{}]"),
            FicompM16 => op!("ficomp word ptr [{}]"),
            FicompM32 => op!("ficomp dword ptr [{}]"),
        }
    }
    // SAFETY: `load_guest_image` loaded `area` on this processor just before.
    unsafe { store_guest_image(area, host) };
}

/// An SSE/SSE2/SSE3/SSSE3/SSE4.1 computation whose only memory operand is a 16-, 8-,
/// 4- or 2-byte source, carried out by [`sse_memory_op`] as `op xmm0, [buf]` (or
/// `op eax/rax, [buf]` for the conversions to an integer). Each variant is one fixed
/// instruction assembled into this crate: nothing the guest wrote is ever executed,
/// and the caller moves the guest's register operand into XMM0 (and back) around
/// the call. No form here takes an immediate, loads MXCSR or changes any other state
/// than XMM0 (or the GPR), MXCSR's flags and, for comparisons, RFLAGS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SseMemOp {
    Addps,
    Addss,
    Addpd,
    Addsd,
    Subps,
    Subss,
    Subpd,
    Subsd,
    Mulps,
    Mulss,
    Mulpd,
    Mulsd,
    Divps,
    Divss,
    Divpd,
    Divsd,
    Minps,
    Minss,
    Minpd,
    Minsd,
    Maxps,
    Maxss,
    Maxpd,
    Maxsd,
    Sqrtps,
    Sqrtss,
    Sqrtpd,
    Sqrtsd,
    Rcpps,
    Rcpss,
    Rsqrtps,
    Rsqrtss,
    Andps,
    Andpd,
    Andnps,
    Andnpd,
    Orps,
    Orpd,
    Xorps,
    Xorpd,
    Unpcklps,
    Unpcklpd,
    Unpckhps,
    Unpckhpd,
    Ucomiss,
    Comiss,
    Ucomisd,
    Comisd,
    Cvtss2sd,
    Cvtsd2ss,
    Cvtps2pd,
    Cvtpd2ps,
    Cvtdq2ps,
    Cvtps2dq,
    Cvttps2dq,
    Cvtdq2pd,
    Cvtpd2dq,
    Cvttpd2dq,
    Cvtsi2ssM32,
    Cvtsi2ssM64,
    Cvtsi2sdM32,
    Cvtsi2sdM64,
    Cvtss2siR32,
    Cvtss2siR64,
    Cvttss2siR32,
    Cvttss2siR64,
    Cvtsd2siR32,
    Cvtsd2siR64,
    Cvttsd2siR32,
    Cvttsd2siR64,
    Paddb,
    Paddw,
    Paddd,
    Paddq,
    Psubb,
    Psubw,
    Psubd,
    Psubq,
    Paddsb,
    Paddsw,
    Paddusb,
    Paddusw,
    Psubsb,
    Psubsw,
    Psubusb,
    Psubusw,
    Pmullw,
    Pmulhw,
    Pmulhuw,
    Pmuludq,
    Pmaddwd,
    Pavgb,
    Pavgw,
    Pminub,
    Pmaxub,
    Pminsw,
    Pmaxsw,
    Psadbw,
    Pand,
    Pandn,
    Por,
    Pxor,
    Pcmpeqb,
    Pcmpeqw,
    Pcmpeqd,
    Pcmpgtb,
    Pcmpgtw,
    Pcmpgtd,
    Packsswb,
    Packssdw,
    Packuswb,
    Punpcklbw,
    Punpcklwd,
    Punpckldq,
    Punpcklqdq,
    Punpckhbw,
    Punpckhwd,
    Punpckhdq,
    Punpckhqdq,
    Psllw,
    Pslld,
    Psllq,
    Psrlw,
    Psrld,
    Psrlq,
    Psraw,
    Psrad,
    Addsubps,
    Addsubpd,
    Haddps,
    Haddpd,
    Hsubps,
    Hsubpd,
    Movsldup,
    Movshdup,
    Movddup,
    Pshufb,
    Phaddw,
    Phaddd,
    Phaddsw,
    Phsubw,
    Phsubd,
    Phsubsw,
    Pmaddubsw,
    Pmulhrsw,
    Psignb,
    Psignw,
    Psignd,
    Pabsb,
    Pabsw,
    Pabsd,
    Pmulld,
    Pmuldq,
    Pminsb,
    Pminsd,
    Pminuw,
    Pminud,
    Pmaxsb,
    Pmaxsd,
    Pmaxuw,
    Pmaxud,
    Pcmpeqq,
    Packusdw,
    Phminposuw,
    Ptest,
    Pmovsxbw,
    Pmovsxbd,
    Pmovsxbq,
    Pmovsxwd,
    Pmovsxwq,
    Pmovsxdq,
    Pmovzxbw,
    Pmovzxbd,
    Pmovzxbq,
    Pmovzxwd,
    Pmovzxwq,
    Pmovzxdq,
}

/// Where an [`SseMemOp`] leaves its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SseResult {
    /// In XMM0 of the image.
    Xmm0,
    /// In RFLAGS: ZF, PF and CF (`UCOMISS`, `COMISS`, `UCOMISD`, `COMISD`, `PTEST`).
    Flags,
    /// In a 32-bit general-purpose register ([`SseOutput::gpr`]).
    Gpr32,
    /// In a 64-bit general-purpose register.
    Gpr64,
}

impl SseMemOp {
    /// The memory operand's size in bytes: 16, 8, 4 or 2.
    pub fn width(self) -> u8 {
        use SseMemOp::*;
        match self {
            Addps | Addpd | Subps | Subpd | Mulps | Mulpd | Divps | Divpd | Minps | Minpd
            | Maxps | Maxpd | Sqrtps | Sqrtpd | Rcpps | Rsqrtps | Andps | Andpd | Andnps
            | Andnpd | Orps | Orpd | Xorps | Xorpd | Unpcklps | Unpcklpd | Unpckhps | Unpckhpd
            | Cvtpd2ps | Cvtdq2ps | Cvtps2dq | Cvttps2dq | Cvtpd2dq | Cvttpd2dq | Paddb | Paddw
            | Paddd | Paddq | Psubb | Psubw | Psubd | Psubq | Paddsb | Paddsw | Paddusb
            | Paddusw | Psubsb | Psubsw | Psubusb | Psubusw | Pmullw | Pmulhw | Pmulhuw
            | Pmuludq | Pmaddwd | Pavgb | Pavgw | Pminub | Pmaxub | Pminsw | Pmaxsw | Psadbw
            | Pand | Pandn | Por | Pxor | Pcmpeqb | Pcmpeqw | Pcmpeqd | Pcmpgtb | Pcmpgtw
            | Pcmpgtd | Packsswb | Packssdw | Packuswb | Punpcklbw | Punpcklwd | Punpckldq
            | Punpcklqdq | Punpckhbw | Punpckhwd | Punpckhdq | Punpckhqdq | Psllw | Pslld
            | Psllq | Psrlw | Psrld | Psrlq | Psraw | Psrad | Addsubps | Addsubpd | Haddps
            | Haddpd | Hsubps | Hsubpd | Movsldup | Movshdup | Pshufb | Phaddw | Phaddd
            | Phaddsw | Phsubw | Phsubd | Phsubsw | Pmaddubsw | Pmulhrsw | Psignb | Psignw
            | Psignd | Pabsb | Pabsw | Pabsd | Pmulld | Pmuldq | Pminsb | Pminsd | Pminuw
            | Pminud | Pmaxsb | Pmaxsd | Pmaxuw | Pmaxud | Pcmpeqq | Packusdw | Phminposuw
            | Ptest => 16,
            Addsd | Subsd | Mulsd | Divsd | Minsd | Maxsd | Sqrtsd | Ucomisd | Comisd
            | Cvtsd2ss | Cvtps2pd | Cvtdq2pd | Cvtsi2ssM64 | Cvtsi2sdM64 | Cvtsd2siR32
            | Cvtsd2siR64 | Cvttsd2siR32 | Cvttsd2siR64 | Movddup | Pmovsxbw | Pmovsxwd
            | Pmovsxdq | Pmovzxbw | Pmovzxwd | Pmovzxdq => 8,
            Addss | Subss | Mulss | Divss | Minss | Maxss | Sqrtss | Rcpss | Rsqrtss | Ucomiss
            | Comiss | Cvtss2sd | Cvtsi2ssM32 | Cvtsi2sdM32 | Cvtss2siR32 | Cvtss2siR64
            | Cvttss2siR32 | Cvttss2siR64 | Pmovsxbd | Pmovsxwq | Pmovzxbd | Pmovzxwq => 4,
            Pmovsxbq | Pmovzxbq => 2,
        }
    }

    /// Where the result goes.
    pub fn result(self) -> SseResult {
        use SseMemOp::*;
        match self {
            Ucomiss | Comiss | Ucomisd | Comisd | Ptest => SseResult::Flags,
            Cvtss2siR32 | Cvttss2siR32 | Cvtsd2siR32 | Cvttsd2siR32 => SseResult::Gpr32,
            Cvtss2siR64 | Cvttss2siR64 | Cvtsd2siR64 | Cvttsd2siR64 => SseResult::Gpr64,
            _ => SseResult::Xmm0,
        }
    }
}

/// The memory source of an [`SseMemOp`]: 16 bytes, 16-byte aligned, because the
/// packed legacy-SSE forms raise #GP for a misaligned operand (SDM Vol. 1 11.6.7),
/// which here would be the host's.
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SseOperand(pub [u8; 16]);

/// What [`sse_memory_op`] returns besides the image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SseOutput {
    /// ZF, PF and CF as the instruction left them, at their RFLAGS positions (bits
    /// 6, 2, 0); meaningful for [`SseResult::Flags`].
    pub flags: u64,
    /// The general-purpose result (zero-extended from 32 bits for
    /// [`SseResult::Gpr32`]).
    pub gpr: u64,
}

/// Runs `op` on this processor with `area` as the x87/SSE state (the register
/// operand in XMM0) and `mem` as its memory source (the low [`SseMemOp::width`]
/// bytes), and leaves the resulting state in `area`: the arithmetic, rounding
/// (MXCSR.RC, DAZ, FTZ) and MXCSR exception flags are the processor's own. The caller
/// masks in `area`'s MXCSR the exceptions it does not want raised in the host (all
/// of them: an unmasked SIMD floating-point exception here would be the host's #XM),
/// then compares the flags with the guest's masks. The caller's x87 control word and
/// MXCSR are restored afterwards and the x87 stack left empty (FNINIT), as
/// [`x87_memory_op`] does.
///
/// # Safety
/// As [`fxrstor`]; moreover every exception in `area`'s MXCSR must be masked (bits
/// 12:7 set).
#[inline(never)]
pub unsafe fn sse_memory_op(area: &mut FxArea, op: SseMemOp, mem: &SseOperand) -> SseOutput {
    // SAFETY: upheld by the caller.
    let host = unsafe { load_guest_image(area) };
    let m = mem.0.as_ptr();
    let (mut cf, mut pf, mut zf) = (0u8, 0u8, 0u8);
    let mut gpr = 0u64;
    // SAFETY: one fixed SSE instruction that reads at most 16 bytes at `m` (the
    // buffer is 16 bytes and 16-byte aligned, so no form raises #GP) and writes only
    // XMM0, the GPRs named as outputs, MXCSR's flags and RFLAGS; with every
    // exception masked (the caller's duty) it raises none, and every form exists on
    // the host (the caller runs only what the guest's CPUID view offers, which is a
    // subset of the host's). `clobber_abi`: the vector registers hold the guest's.
    unsafe {
        use SseMemOp::*;
        macro_rules! x {
            ($text:literal) => {
                asm!($text, in("rdi") m, clobber_abi("C"), options(nostack, readonly))
            };
        }
        macro_rules! f {
            ($text:literal) => {
                asm!(
                    $text,
                    "setc al",
                    "setp cl",
                    "setz dl",
                    in("rdi") m,
                    out("al") cf,
                    out("cl") pf,
                    out("dl") zf,
                    clobber_abi("C"),
                    options(nostack, readonly)
                )
            };
        }
        macro_rules! r {
            ($text:literal) => {
                asm!(
                    $text,
                    in("rdi") m,
                    out("rax") gpr,
                    clobber_abi("C"),
                    options(nostack, readonly)
                )
            };
        }
        match op {
            Addps => x!("addps xmm0, xmmword ptr [rdi]"),
            Addss => x!("addss xmm0, dword ptr [rdi]"),
            Addpd => x!("addpd xmm0, xmmword ptr [rdi]"),
            Addsd => x!("addsd xmm0, qword ptr [rdi]"),
            Subps => x!("subps xmm0, xmmword ptr [rdi]"),
            Subss => x!("subss xmm0, dword ptr [rdi]"),
            Subpd => x!("subpd xmm0, xmmword ptr [rdi]"),
            Subsd => x!("subsd xmm0, qword ptr [rdi]"),
            Mulps => x!("mulps xmm0, xmmword ptr [rdi]"),
            Mulss => x!("mulss xmm0, dword ptr [rdi]"),
            Mulpd => x!("mulpd xmm0, xmmword ptr [rdi]"),
            Mulsd => x!("mulsd xmm0, qword ptr [rdi]"),
            Divps => x!("divps xmm0, xmmword ptr [rdi]"),
            Divss => x!("divss xmm0, dword ptr [rdi]"),
            Divpd => x!("divpd xmm0, xmmword ptr [rdi]"),
            Divsd => x!("divsd xmm0, qword ptr [rdi]"),
            Minps => x!("minps xmm0, xmmword ptr [rdi]"),
            Minss => x!("minss xmm0, dword ptr [rdi]"),
            Minpd => x!("minpd xmm0, xmmword ptr [rdi]"),
            Minsd => x!("minsd xmm0, qword ptr [rdi]"),
            Maxps => x!("maxps xmm0, xmmword ptr [rdi]"),
            Maxss => x!("maxss xmm0, dword ptr [rdi]"),
            Maxpd => x!("maxpd xmm0, xmmword ptr [rdi]"),
            Maxsd => x!("maxsd xmm0, qword ptr [rdi]"),
            Sqrtps => x!("sqrtps xmm0, xmmword ptr [rdi]"),
            Sqrtss => x!("sqrtss xmm0, dword ptr [rdi]"),
            Sqrtpd => x!("sqrtpd xmm0, xmmword ptr [rdi]"),
            Sqrtsd => x!("sqrtsd xmm0, qword ptr [rdi]"),
            Rcpps => x!("rcpps xmm0, xmmword ptr [rdi]"),
            Rcpss => x!("rcpss xmm0, dword ptr [rdi]"),
            Rsqrtps => x!("rsqrtps xmm0, xmmword ptr [rdi]"),
            Rsqrtss => x!("rsqrtss xmm0, dword ptr [rdi]"),
            Andps => x!("andps xmm0, xmmword ptr [rdi]"),
            Andpd => x!("andpd xmm0, xmmword ptr [rdi]"),
            Andnps => x!("andnps xmm0, xmmword ptr [rdi]"),
            Andnpd => x!("andnpd xmm0, xmmword ptr [rdi]"),
            Orps => x!("orps xmm0, xmmword ptr [rdi]"),
            Orpd => x!("orpd xmm0, xmmword ptr [rdi]"),
            Xorps => x!("xorps xmm0, xmmword ptr [rdi]"),
            Xorpd => x!("xorpd xmm0, xmmword ptr [rdi]"),
            Unpcklps => x!("unpcklps xmm0, xmmword ptr [rdi]"),
            Unpcklpd => x!("unpcklpd xmm0, xmmword ptr [rdi]"),
            Unpckhps => x!("unpckhps xmm0, xmmword ptr [rdi]"),
            Unpckhpd => x!("unpckhpd xmm0, xmmword ptr [rdi]"),
            Ucomiss => f!("ucomiss xmm0, dword ptr [rdi]"),
            Comiss => f!("comiss xmm0, dword ptr [rdi]"),
            Ucomisd => f!("ucomisd xmm0, qword ptr [rdi]"),
            Comisd => f!("comisd xmm0, qword ptr [rdi]"),
            Cvtss2sd => x!("cvtss2sd xmm0, dword ptr [rdi]"),
            Cvtsd2ss => x!("cvtsd2ss xmm0, qword ptr [rdi]"),
            Cvtps2pd => x!("cvtps2pd xmm0, qword ptr [rdi]"),
            Cvtpd2ps => x!("cvtpd2ps xmm0, xmmword ptr [rdi]"),
            Cvtdq2ps => x!("cvtdq2ps xmm0, xmmword ptr [rdi]"),
            Cvtps2dq => x!("cvtps2dq xmm0, xmmword ptr [rdi]"),
            Cvttps2dq => x!("cvttps2dq xmm0, xmmword ptr [rdi]"),
            Cvtdq2pd => x!("cvtdq2pd xmm0, qword ptr [rdi]"),
            Cvtpd2dq => x!("cvtpd2dq xmm0, xmmword ptr [rdi]"),
            Cvttpd2dq => x!("cvttpd2dq xmm0, xmmword ptr [rdi]"),
            Cvtsi2ssM32 => x!("cvtsi2ss xmm0, dword ptr [rdi]"),
            Cvtsi2ssM64 => x!("cvtsi2ss xmm0, qword ptr [rdi]"),
            Cvtsi2sdM32 => x!("cvtsi2sd xmm0, dword ptr [rdi]"),
            Cvtsi2sdM64 => x!("cvtsi2sd xmm0, qword ptr [rdi]"),
            Cvtss2siR32 => r!("cvtss2si eax, dword ptr [rdi]"),
            Cvtss2siR64 => r!("cvtss2si rax, dword ptr [rdi]"),
            Cvttss2siR32 => r!("cvttss2si eax, dword ptr [rdi]"),
            Cvttss2siR64 => r!("cvttss2si rax, dword ptr [rdi]"),
            Cvtsd2siR32 => r!("cvtsd2si eax, qword ptr [rdi]"),
            Cvtsd2siR64 => r!("cvtsd2si rax, qword ptr [rdi]"),
            Cvttsd2siR32 => r!("cvttsd2si eax, qword ptr [rdi]"),
            Cvttsd2siR64 => r!("cvttsd2si rax, qword ptr [rdi]"),
            Paddb => x!("paddb xmm0, xmmword ptr [rdi]"),
            Paddw => x!("paddw xmm0, xmmword ptr [rdi]"),
            Paddd => x!("paddd xmm0, xmmword ptr [rdi]"),
            Paddq => x!("paddq xmm0, xmmword ptr [rdi]"),
            Psubb => x!("psubb xmm0, xmmword ptr [rdi]"),
            Psubw => x!("psubw xmm0, xmmword ptr [rdi]"),
            Psubd => x!("psubd xmm0, xmmword ptr [rdi]"),
            Psubq => x!("psubq xmm0, xmmword ptr [rdi]"),
            Paddsb => x!("paddsb xmm0, xmmword ptr [rdi]"),
            Paddsw => x!("paddsw xmm0, xmmword ptr [rdi]"),
            Paddusb => x!("paddusb xmm0, xmmword ptr [rdi]"),
            Paddusw => x!("paddusw xmm0, xmmword ptr [rdi]"),
            Psubsb => x!("psubsb xmm0, xmmword ptr [rdi]"),
            Psubsw => x!("psubsw xmm0, xmmword ptr [rdi]"),
            Psubusb => x!("psubusb xmm0, xmmword ptr [rdi]"),
            Psubusw => x!("psubusw xmm0, xmmword ptr [rdi]"),
            Pmullw => x!("pmullw xmm0, xmmword ptr [rdi]"),
            Pmulhw => x!("pmulhw xmm0, xmmword ptr [rdi]"),
            Pmulhuw => x!("pmulhuw xmm0, xmmword ptr [rdi]"),
            Pmuludq => x!("pmuludq xmm0, xmmword ptr [rdi]"),
            Pmaddwd => x!("pmaddwd xmm0, xmmword ptr [rdi]"),
            Pavgb => x!("pavgb xmm0, xmmword ptr [rdi]"),
            Pavgw => x!("pavgw xmm0, xmmword ptr [rdi]"),
            Pminub => x!("pminub xmm0, xmmword ptr [rdi]"),
            Pmaxub => x!("pmaxub xmm0, xmmword ptr [rdi]"),
            Pminsw => x!("pminsw xmm0, xmmword ptr [rdi]"),
            Pmaxsw => x!("pmaxsw xmm0, xmmword ptr [rdi]"),
            Psadbw => x!("psadbw xmm0, xmmword ptr [rdi]"),
            Pand => x!("pand xmm0, xmmword ptr [rdi]"),
            Pandn => x!("pandn xmm0, xmmword ptr [rdi]"),
            Por => x!("por xmm0, xmmword ptr [rdi]"),
            Pxor => x!("pxor xmm0, xmmword ptr [rdi]"),
            Pcmpeqb => x!("pcmpeqb xmm0, xmmword ptr [rdi]"),
            Pcmpeqw => x!("pcmpeqw xmm0, xmmword ptr [rdi]"),
            Pcmpeqd => x!("pcmpeqd xmm0, xmmword ptr [rdi]"),
            Pcmpgtb => x!("pcmpgtb xmm0, xmmword ptr [rdi]"),
            Pcmpgtw => x!("pcmpgtw xmm0, xmmword ptr [rdi]"),
            Pcmpgtd => x!("pcmpgtd xmm0, xmmword ptr [rdi]"),
            Packsswb => x!("packsswb xmm0, xmmword ptr [rdi]"),
            Packssdw => x!("packssdw xmm0, xmmword ptr [rdi]"),
            Packuswb => x!("packuswb xmm0, xmmword ptr [rdi]"),
            Punpcklbw => x!("punpcklbw xmm0, xmmword ptr [rdi]"),
            Punpcklwd => x!("punpcklwd xmm0, xmmword ptr [rdi]"),
            Punpckldq => x!("punpckldq xmm0, xmmword ptr [rdi]"),
            Punpcklqdq => x!("punpcklqdq xmm0, xmmword ptr [rdi]"),
            Punpckhbw => x!("punpckhbw xmm0, xmmword ptr [rdi]"),
            Punpckhwd => x!("punpckhwd xmm0, xmmword ptr [rdi]"),
            Punpckhdq => x!("punpckhdq xmm0, xmmword ptr [rdi]"),
            Punpckhqdq => x!("punpckhqdq xmm0, xmmword ptr [rdi]"),
            Psllw => x!("psllw xmm0, xmmword ptr [rdi]"),
            Pslld => x!("pslld xmm0, xmmword ptr [rdi]"),
            Psllq => x!("psllq xmm0, xmmword ptr [rdi]"),
            Psrlw => x!("psrlw xmm0, xmmword ptr [rdi]"),
            Psrld => x!("psrld xmm0, xmmword ptr [rdi]"),
            Psrlq => x!("psrlq xmm0, xmmword ptr [rdi]"),
            Psraw => x!("psraw xmm0, xmmword ptr [rdi]"),
            Psrad => x!("psrad xmm0, xmmword ptr [rdi]"),
            Addsubps => x!("addsubps xmm0, xmmword ptr [rdi]"),
            Addsubpd => x!("addsubpd xmm0, xmmword ptr [rdi]"),
            Haddps => x!("haddps xmm0, xmmword ptr [rdi]"),
            Haddpd => x!("haddpd xmm0, xmmword ptr [rdi]"),
            Hsubps => x!("hsubps xmm0, xmmword ptr [rdi]"),
            Hsubpd => x!("hsubpd xmm0, xmmword ptr [rdi]"),
            Movsldup => x!("movsldup xmm0, xmmword ptr [rdi]"),
            Movshdup => x!("movshdup xmm0, xmmword ptr [rdi]"),
            Movddup => x!("movddup xmm0, qword ptr [rdi]"),
            Pshufb => x!("pshufb xmm0, xmmword ptr [rdi]"),
            Phaddw => x!("phaddw xmm0, xmmword ptr [rdi]"),
            Phaddd => x!("phaddd xmm0, xmmword ptr [rdi]"),
            Phaddsw => x!("phaddsw xmm0, xmmword ptr [rdi]"),
            Phsubw => x!("phsubw xmm0, xmmword ptr [rdi]"),
            Phsubd => x!("phsubd xmm0, xmmword ptr [rdi]"),
            Phsubsw => x!("phsubsw xmm0, xmmword ptr [rdi]"),
            Pmaddubsw => x!("pmaddubsw xmm0, xmmword ptr [rdi]"),
            Pmulhrsw => x!("pmulhrsw xmm0, xmmword ptr [rdi]"),
            Psignb => x!("psignb xmm0, xmmword ptr [rdi]"),
            Psignw => x!("psignw xmm0, xmmword ptr [rdi]"),
            Psignd => x!("psignd xmm0, xmmword ptr [rdi]"),
            Pabsb => x!("pabsb xmm0, xmmword ptr [rdi]"),
            Pabsw => x!("pabsw xmm0, xmmword ptr [rdi]"),
            Pabsd => x!("pabsd xmm0, xmmword ptr [rdi]"),
            Pmulld => x!("pmulld xmm0, xmmword ptr [rdi]"),
            Pmuldq => x!("pmuldq xmm0, xmmword ptr [rdi]"),
            Pminsb => x!("pminsb xmm0, xmmword ptr [rdi]"),
            Pminsd => x!("pminsd xmm0, xmmword ptr [rdi]"),
            Pminuw => x!("pminuw xmm0, xmmword ptr [rdi]"),
            Pminud => x!("pminud xmm0, xmmword ptr [rdi]"),
            Pmaxsb => x!("pmaxsb xmm0, xmmword ptr [rdi]"),
            Pmaxsd => x!("pmaxsd xmm0, xmmword ptr [rdi]"),
            Pmaxuw => x!("pmaxuw xmm0, xmmword ptr [rdi]"),
            Pmaxud => x!("pmaxud xmm0, xmmword ptr [rdi]"),
            Pcmpeqq => x!("pcmpeqq xmm0, xmmword ptr [rdi]"),
            Packusdw => x!("packusdw xmm0, xmmword ptr [rdi]"),
            Phminposuw => x!("phminposuw xmm0, xmmword ptr [rdi]"),
            Ptest => f!("ptest xmm0, xmmword ptr [rdi]"),
            Pmovsxbw => x!("pmovsxbw xmm0, qword ptr [rdi]"),
            Pmovsxbd => x!("pmovsxbd xmm0, dword ptr [rdi]"),
            Pmovsxbq => x!("pmovsxbq xmm0, word ptr [rdi]"),
            Pmovsxwd => x!("pmovsxwd xmm0, qword ptr [rdi]"),
            Pmovsxwq => x!("pmovsxwq xmm0, dword ptr [rdi]"),
            Pmovsxdq => x!("pmovsxdq xmm0, qword ptr [rdi]"),
            Pmovzxbw => x!("pmovzxbw xmm0, qword ptr [rdi]"),
            Pmovzxbd => x!("pmovzxbd xmm0, dword ptr [rdi]"),
            Pmovzxbq => x!("pmovzxbq xmm0, word ptr [rdi]"),
            Pmovzxwd => x!("pmovzxwd xmm0, qword ptr [rdi]"),
            Pmovzxwq => x!("pmovzxwq xmm0, dword ptr [rdi]"),
            Pmovzxdq => x!("pmovzxdq xmm0, qword ptr [rdi]"),
        }
    }
    // SAFETY: `load_guest_image` loaded `area` on this processor just before.
    unsafe { store_guest_image(area, host) };
    if op.result() == SseResult::Gpr32 {
        gpr &= 0xFFFF_FFFF;
    }
    SseOutput {
        flags: u64::from(cf) | u64::from(pf) << 2 | u64::from(zf) << 6,
        gpr,
    }
}

/// The calling processor's MXCSR_MASK (the MXCSR bits FXRSTOR accepts), from an
/// FXSAVE image ([`DEFAULT_MXCSR_MASK`] when the processor stores 0).
///
/// # Safety
/// As [`fxsave`].
pub unsafe fn host_mxcsr_mask() -> u32 {
    let mut area = FxArea([0; 512]);
    // SAFETY: upheld by the caller; the area is this function's own.
    unsafe { fxsave(&mut area) };
    match u32::from_le_bytes([area.0[28], area.0[29], area.0[30], area.0[31]]) {
        0 => DEFAULT_MXCSR_MASK,
        mask => mask,
    }
}

/// Sets CR4.OSFXSR and clears CR0.EM and CR0.TS so FXSAVE/FXRSTOR work in the host.
///
/// # Safety
/// Ring 0 only. The host kernel uses neither x87 nor SSE, so nothing depends on the
/// previous values.
pub unsafe fn enable_host_fxsr() {
    // SAFETY: upheld by the caller; only the three bits named change.
    unsafe {
        asm!(
            "mov {t}, cr4",
            "or {t}, {osfxsr}",
            "mov cr4, {t}",
            "mov {t}, cr0",
            "and {t}, {clear}",
            "mov cr0, {t}",
            t = out(reg) _,
            osfxsr = const 1u64 << 9,
            clear = const !((1u64 << 2) | (1u64 << 3)),
            options(nostack, preserves_flags)
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mxcsr_against_the_mask() {
        let mut a = FxArea::initial();
        assert_eq!(a.mxcsr(), 0x1F80);
        assert!(a.restorable(DEFAULT_MXCSR_MASK));
        a.0[24] |= 1 << 6; // DAZ
        assert!(!a.restorable(DEFAULT_MXCSR_MASK));
        assert!(a.restorable(0xFFFF));
        a.0[26] = 1; // bit 16: reserved everywhere
        assert!(!a.restorable(0xFFFF));
    }

    fn with_fsw(fsw: u16) -> FxArea {
        let mut a = FxArea::initial();
        a.0[FSW_OFFSET..FSW_OFFSET + 2].copy_from_slice(&fsw.to_le_bytes());
        a.0[100] = 0x5A; // some register content, to see that it is kept
        a
    }

    #[test]
    fn clean_status_word_gets_the_summary_bit_and_nothing_else() {
        // TOP = 3 and C0-C3 set: FNCLEX keeps them, so the image may carry ES.
        let a = with_fsw(0x5F00);
        let image = a.with_summary_set().expect("no exception flag pending");
        assert_eq!(image.fsw(), 0x5F80);
        // What FNCLEX leaves is the original word.
        assert_eq!(image.fsw() & !FSW_CLEARED_BY_FNCLEX, a.fsw());
        let mut back = image.clone();
        back.0[FSW_OFFSET..FSW_OFFSET + 2].copy_from_slice(&a.fsw().to_le_bytes());
        assert_eq!(back.0, a.0);
    }

    #[test]
    fn pending_or_sticky_flags_are_loaded_as_they_are() {
        // A masked precision flag (PE), a stack fault, ES itself and B: FNCLEX would
        // clear each, so the trick does not apply.
        for fsw in [0x0020, 0x0040, 0x0081, 0x8000] {
            assert!(with_fsw(fsw).with_summary_set().is_none(), "{fsw:#x}");
        }
    }

    #[test]
    fn xmm_and_mxcsr_at_their_offsets() {
        let mut a = FxArea::initial();
        let v: [u8; 16] = core::array::from_fn(|i| i as u8 + 1);
        a.set_xmm(15, v);
        assert_eq!(&a.0[160 + 15 * 16..160 + 16 * 16], &v);
        assert_eq!(a.xmm(15), v);
        assert_eq!(a.xmm(0), [0; 16]);
        a.set_mxcsr(0x1F80 | 1 << 15);
        assert_eq!(a.0[24..28], (0x9F80u32).to_le_bytes());
        assert_eq!(a.mxcsr(), 0x9F80);
    }

    #[test]
    fn mmx_registers_are_physical_and_mmx_mode_rotates_the_stack() {
        let mut a = FxArea::initial();
        // TOP = 3: slot i holds ST(i) = R((3 + i) mod 8); mark each slot with i.
        a.0[FSW_OFFSET..FSW_OFFSET + 2].copy_from_slice(&(3u16 << 11).to_le_bytes());
        for i in 0..8 {
            a.0[32 + 16 * i] = i as u8;
        }
        a.0[FTW_OFFSET] = 0x01;
        assert_eq!(a.top(), 3);
        // MM5 = R5 = ST(2): slot 2.
        assert_eq!(a.mm(5), 2);
        assert_eq!(a.mm(3), 0);
        assert_eq!(a.mm(2), 7);
        a.enter_mmx_mode();
        assert_eq!(a.top(), 0);
        assert_eq!(a.abridged_tags(), 0xFF);
        // Each physical register kept its value; slot n is now Rn.
        assert_eq!(a.mm(5), 2);
        assert_eq!(a.mm(3), 0);
        assert_eq!(a.mm(2), 7);
        assert_eq!(a.0[32 + 16 * 5], 2);
        a.set_mm(6, 0x1122_3344_5566_7788);
        assert_eq!(a.mm(6), 0x1122_3344_5566_7788);
        assert_eq!(a.st(6)[8..], [0xFF, 0xFF], "bits 79:64 all ones");
        // Other FSW bits are kept.
        let mut b = FxArea::initial();
        b.0[FSW_OFFSET..FSW_OFFSET + 2].copy_from_slice(&0x4700u16.to_le_bytes());
        b.enter_mmx_mode();
        assert_eq!(b.fsw(), 0x4000 | 0x0700 & !0x3800);
    }

    #[test]
    fn initial_state_qualifies() {
        assert_eq!(FxArea::initial().with_summary_set().unwrap().fsw(), FSW_ES);
    }

    fn f64s(a: f64, b: f64) -> [u8; 16] {
        let mut r = [0; 16];
        r[..8].copy_from_slice(&a.to_le_bytes());
        r[8..].copy_from_slice(&b.to_le_bytes());
        r
    }

    fn host_control_words() -> (u16, u32) {
        let (mut cw, mut mx) = (0u16, 0u32);
        // SAFETY: stores of this thread's control words into locals.
        unsafe {
            asm!("fnstcw [{}]", "stmxcsr [{}]", in(reg) &mut cw, in(reg) &mut mx, options(nostack))
        };
        (cw, mx)
    }

    #[test]
    fn sse_stubs_compute_on_xmm0_and_the_buffer() {
        let before = host_control_words();
        let mut a = FxArea::initial();
        a.set_xmm(0, f64s(1.0, 2.0));
        a.set_xmm(1, f64s(9.0, 9.0));
        let mem = SseOperand(f64s(0.5, 0.25));
        // SAFETY: the initial image masks every exception; SSE2 exists on x86-64.
        let out = unsafe { sse_memory_op(&mut a, SseMemOp::Addpd, &mem) };
        assert_eq!(a.xmm(0), f64s(1.5, 2.25));
        assert_eq!(a.xmm(1), f64s(9.0, 9.0), "only XMM0");
        assert_eq!(out.gpr, 0);
        assert_eq!(
            host_control_words(),
            before,
            "the caller's control words are back"
        );
        // ucomisd xmm0 (1.5) with 0.5: greater, all of ZF, PF, CF clear; with NaN:
        // all set.
        // SAFETY: as above.
        let out = unsafe { sse_memory_op(&mut a, SseMemOp::Ucomisd, &mem) };
        assert_eq!(out.flags, 0);
        let nan = SseOperand([0xFF; 16]);
        // SAFETY: as above.
        let out = unsafe { sse_memory_op(&mut a, SseMemOp::Ucomisd, &nan) };
        assert_eq!(out.flags, 0x45);
        // cvttsd2si eax of -2.75: -2, zero-extended from 32 bits.
        let m = SseOperand(f64s(-2.75, 0.0));
        // SAFETY: as above.
        let out = unsafe { sse_memory_op(&mut a, SseMemOp::Cvttsd2siR32, &m) };
        assert_eq!(out.gpr, 0xFFFF_FFFE);
        assert_eq!(SseMemOp::Cvttsd2siR32.result(), SseResult::Gpr32);
        assert_eq!(
            (SseMemOp::Pmovzxbq.width(), SseMemOp::Movddup.width()),
            (2, 8)
        );
        // An exception flag (masked) shows in the image's MXCSR: 1/3 is inexact.
        let mut a = FxArea::initial();
        a.set_xmm(0, f64s(1.0, 1.0));
        // SAFETY: as above.
        unsafe { sse_memory_op(&mut a, SseMemOp::Divsd, &SseOperand(f64s(3.0, 0.0))) };
        assert_eq!(a.mxcsr(), 0x1F80 | 0x20);
        assert_eq!(host_control_words(), before);
    }
}
