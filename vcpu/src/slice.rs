//! Processor state that belongs to one vCPU but that neither VMRUN nor VM entry
//! switches: the breakpoint addresses DR0-DR3, DR6 on VT-x (the VMCS holds DR7 only;
//! the VMCB holds DR6 and DR7, APM Vol. 2 Table B-2) and IA32_TSC_AUX (RDTSCP and
//! RDPID read it, SDM Vol. 4 Table 2-2). Without switching, a guest would read the
//! breakpoints, or the RDTSCP/RDPID value, that another VM left in the processor.
//!
//! The backends switch this state at time-slice boundaries, not at every entry: the
//! scheduler calls `Vcpu::unload` at the end of every slice on the processor that ran
//! the vCPU, and in between no other vCPU runs on that processor. So the first `run`
//! of a slice loads the guest's values ([`SliceState::load`]) and `unload` saves them
//! ([`SliceState::save`]); guest MOV DR and RDTSCP/RDPID then run natively, without
//! exits. While the guest's values are in the processor the host runs with them: the
//! host never arms a breakpoint (VM exit sets DR7 to 400H, SDM Vol. 3C 28.5.1; the
//! AMD-V backend writes 400H itself after a #VMEXIT whenever the guest's DR7 armed
//! one) and never reads TSC_AUX, so neither affects it.

use core::arch::asm;

/// The DR6 value after reset (SDM Vol. 3A 18.2.3): reserved bits set, no status.
pub const DR6_INIT: u64 = 0xFFFF_0FF0;
/// IA32_TSC_AUX.
pub const MSR_TSC_AUX: u32 = 0xC000_0103;

/// One vCPU's switched-per-slice state and whether it is in the processor now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceState {
    /// DR0-DR3.
    pub dr: [u64; 4],
    /// DR6; only loaded and saved where `with_dr6` says so (VT-x).
    pub dr6: u64,
    tsc_aux: u64,
    /// The processor has IA32_TSC_AUX (CPUID RDTSCP or RDPID): otherwise the value is
    /// kept here only (the guest cannot read it: CPUID passes the missing feature on).
    has_tsc_aux: bool,
    with_dr6: bool,
    loaded: bool,
}

impl SliceState {
    /// Reset values: DR0-DR3 = 0, DR6 = FFFF0FF0H, TSC_AUX = 0.
    pub const fn new(has_tsc_aux: bool, with_dr6: bool) -> Self {
        Self {
            dr: [0; 4],
            dr6: DR6_INIT,
            tsc_aux: 0,
            has_tsc_aux,
            with_dr6,
            loaded: false,
        }
    }

    /// Whether the values are in the processor (between `load` and `save`).
    pub fn loaded(&self) -> bool {
        self.loaded
    }

    /// Whether the calling processor has IA32_TSC_AUX (CPUID 8000_0001 EDX[27] RDTSCP,
    /// or 7.0 ECX[22] RDPID).
    pub fn detect_tsc_aux() -> bool {
        let ext = core::arch::x86_64::__cpuid(0x8000_0000).eax;
        let rdtscp =
            ext >= 0x8000_0001 && core::arch::x86_64::__cpuid(0x8000_0001).edx & (1 << 27) != 0;
        let max = core::arch::x86_64::__cpuid(0).eax;
        let rdpid = max >= 7 && core::arch::x86_64::__cpuid_count(7, 0).ecx & (1 << 22) != 0;
        rdtscp || rdpid
    }

    /// The guest's IA32_TSC_AUX.
    pub fn tsc_aux(&self) -> u64 {
        self.tsc_aux
    }

    /// Sets the guest's IA32_TSC_AUX (bits 63:32 must be 0: the caller's policy
    /// refuses other values with #GP). Goes to the processor at once when loaded.
    ///
    /// # Safety
    /// When [`SliceState::loaded`], the caller runs on the processor that loaded it.
    pub unsafe fn set_tsc_aux(&mut self, value: u64) {
        self.tsc_aux = value & 0xFFFF_FFFF;
        if self.loaded && self.has_tsc_aux {
            // SAFETY: the MSR exists (checked at creation); upheld by the caller.
            unsafe { wrmsr(MSR_TSC_AUX, self.tsc_aux) };
        }
    }

    /// Puts the guest's values into the calling processor, once per slice.
    ///
    /// # Safety
    /// Ring 0, on the processor about to run this vCPU, which runs no other vCPU
    /// until [`SliceState::save`]. DR0-DR3 take any address; DR6 bits 63:32 are 0
    /// (only values the guest could write, or [`DR6_INIT`], are kept).
    pub unsafe fn load(&mut self) {
        if self.loaded {
            return;
        }
        // SAFETY: upheld by the caller; MOV to DR0-DR3/DR6 in ring 0 with DR7.GD clear
        // (the host never sets it).
        unsafe {
            asm!(
                "mov dr0, {0}", "mov dr1, {1}", "mov dr2, {2}", "mov dr3, {3}",
                in(reg) self.dr[0], in(reg) self.dr[1], in(reg) self.dr[2], in(reg) self.dr[3],
                options(nostack, preserves_flags)
            );
            if self.with_dr6 {
                asm!("mov dr6, {}", in(reg) self.dr6, options(nostack, preserves_flags));
            }
            if self.has_tsc_aux {
                wrmsr(MSR_TSC_AUX, self.tsc_aux);
            }
        }
        self.loaded = true;
    }

    /// Reads the guest's values back from the calling processor at the end of a slice
    /// (the guest may have changed them natively).
    ///
    /// # Safety
    /// Ring 0, on the processor that [`SliceState::load`]ed them.
    pub unsafe fn save(&mut self) {
        if !self.loaded {
            return;
        }
        let (a, b, c, d): (u64, u64, u64, u64);
        // SAFETY: upheld by the caller; reading debug registers in ring 0.
        unsafe {
            asm!(
                "mov {0}, dr0", "mov {1}, dr1", "mov {2}, dr2", "mov {3}, dr3",
                out(reg) a, out(reg) b, out(reg) c, out(reg) d,
                options(nostack, preserves_flags)
            );
        }
        self.dr = [a, b, c, d];
        if self.with_dr6 {
            // SAFETY: as above.
            self.dr6 = unsafe { read_dr6() };
        }
        // TSC_AUX changes only through `set_tsc_aux` (guest accesses are intercepted).
        self.loaded = false;
    }
}

/// DR6 of the calling processor.
///
/// # Safety
/// Ring 0.
pub unsafe fn read_dr6() -> u64 {
    let v: u64;
    // SAFETY: upheld by the caller.
    unsafe { asm!("mov {}, dr6", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Sets DR6 of the calling processor.
///
/// # Safety
/// Ring 0; bits 63:32 of `value` clear.
pub unsafe fn write_dr6(value: u64) {
    // SAFETY: upheld by the caller.
    unsafe { asm!("mov dr6, {}", in(reg) value, options(nomem, nostack, preserves_flags)) };
}

/// # Safety
/// Ring 0; `msr` exists and accepts `value`.
unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: upheld by the caller.
    unsafe {
        asm!(
            "wrmsr",
            in("ecx") msr,
            in("eax") value as u32,
            in("edx") (value >> 32) as u32,
            options(nostack, preserves_flags)
        )
    };
}

/// DR6 after a #DB whose causes are `status` (the DR6 bit positions: B0-B3 in bits
/// 3:0, BD bit 13, BS bit 14, BT bit 15, and bit 16 set for a #DB inside an RTM
/// region), starting from `old`: the format of the VMX exit qualification for #DB
/// (SDM Vol. 3C Table 28-1) and of the pending-debug-exceptions field. As the
/// processor does (SDM Vol. 3A 18.2.3): B0-B3 are replaced, BD/BS/BT are only ever
/// set, and RTM (bit 16) is active-low, cleared for a #DB in an RTM region.
pub const fn dr6_after_db(old: u64, status: u64) -> u64 {
    const B0_B3: u64 = 0xF;
    const RTM: u64 = 1 << 16;
    const STATUS: u64 = B0_B3 | (1 << 13) | (1 << 14) | (1 << 15);
    let mut dr6 = (old & !B0_B3) | DR6_INIT;
    dr6 |= status & STATUS;
    if status & RTM != 0 {
        dr6 &= !RTM;
    }
    dr6 & 0xFFFF_FFFF
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dr6_single_step_and_breakpoints() {
        // BS from the reset value.
        assert_eq!(dr6_after_db(DR6_INIT, 1 << 14), 0xFFFF_4FF0);
        // B1 replaces an old B0, keeps an old BS.
        assert_eq!(dr6_after_db(0xFFFF_4FF1, 1 << 1), 0xFFFF_4FF2);
        // BD (general detect).
        assert_eq!(dr6_after_db(DR6_INIT, 1 << 13), 0xFFFF_2FF0);
        // RTM is active-low.
        assert_eq!(dr6_after_db(DR6_INIT, (1 << 16) | 1), 0xFFFE_0FF1);
        // Bits outside the status set never leak in; reserved ones stay set.
        assert_eq!(dr6_after_db(0, 0xFFFF_0000_0000_1000), DR6_INIT);
    }

    #[test]
    fn new_state_is_reset() {
        let s = SliceState::new(true, true);
        assert_eq!(s.dr, [0; 4]);
        assert_eq!(s.dr6, DR6_INIT);
        assert_eq!(s.tsc_aux(), 0);
        assert!(!s.loaded());
    }
}
