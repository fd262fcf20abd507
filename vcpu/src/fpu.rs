//! Guest x87/SSE state. Neither VMRUN nor VM entry switches it, so each vCPU keeps
//! its own FXSAVE image, restored before entry and saved after exit; otherwise one
//! guest could read another's XMM registers. The hypervisor itself is built without
//! SSE and never touches this state.
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

use core::arch::asm;

/// The 512-byte FXSAVE image (SDM Vol. 1 10.5.1), 16-byte aligned as FXSAVE requires.
#[repr(C, align(16))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FxArea(pub [u8; 512]);

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

impl FxArea {
    /// MXCSR, bytes 24-27 of the image.
    pub fn mxcsr(&self) -> u32 {
        u32::from_le_bytes([self.0[24], self.0[25], self.0[26], self.0[27]])
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
    fn initial_state_qualifies() {
        assert_eq!(FxArea::initial().with_summary_set().unwrap().fsw(), FSW_ES);
    }
}
