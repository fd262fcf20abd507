//! Guest x87/SSE state. Neither VMRUN nor VM entry switches it, so each vCPU keeps
//! its own FXSAVE image, restored before entry and saved after exit; otherwise one
//! guest could read another's XMM registers. The hypervisor itself is built without
//! SSE and never touches this state.

use core::arch::asm;

/// The 512-byte FXSAVE image (SDM Vol. 1 10.5.1), 16-byte aligned as FXSAVE requires.
#[repr(C, align(16))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FxArea(pub [u8; 512]);

/// The MXCSR_MASK to assume when FXSAVE stores 0 there (SDM Vol. 1 11.6.6): every bit
/// but DAZ (bit 6).
pub const DEFAULT_MXCSR_MASK: u32 = 0xFFBF;

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
}

/// # Safety
/// CR4.OSFXSR must be set and CR0.EM/TS clear (else #UD/#NM): see [`enable_host_fxsr`].
pub unsafe fn fxsave(area: &mut FxArea) {
    // SAFETY: upheld by the caller; `area` is 512 bytes, 16-byte aligned.
    unsafe { asm!("fxsave64 [{}]", in(reg) area, options(nostack, preserves_flags)) };
}

/// # Safety
/// As [`fxsave`]; `area` must hold a valid image (reserved MXCSR bits clear).
pub unsafe fn fxrstor(area: &FxArea) {
    // SAFETY: upheld by the caller.
    unsafe { asm!("fxrstor64 [{}]", in(reg) area, options(nostack, preserves_flags)) };
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
}
