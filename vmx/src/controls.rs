//! The VM-execution, VM-exit and VM-entry control values this backend runs guests
//! with, computed from the capability MSRs in [`VmxCaps`] (never hard-coded: the
//! allowed-0/allowed-1 settings differ between processors and emulators).
//!
//! The capability values in `VmxCaps` are already the `IA32_VMX_TRUE_*` MSRs when
//! IA32_VMX_BASIC bit 55 is set (SDM Vol. 3D A.2), so "default1" controls that the
//! TRUE MSRs allow to be 0 (CR3-load/-store exiting, among others) stay 0 here.
//! Each control value is `adjust_controls(capability, wanted)`: the must-be-one bits
//! are added, and a wanted bit the processor does not allow is an error that names
//! the control. Optional features are only wanted when the capability allows them.

use crate::caps::{adjust_controls, VmxCaps};
use crate::vmcs::{entry_ctl, exit_ctl, pin, proc, proc2};

/// The five control words of a VMCS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Controls {
    pub pin: u32,
    pub proc: u32,
    pub proc2: u32,
    pub exit: u32,
    /// Without "IA-32e mode guest"; see [`Controls::entry_for`].
    pub entry: u32,
    /// Whether the VMX-preemption timer is active (it bounds time slices).
    pub preemption_timer: bool,
    /// Whether guests run with a VPID (needs "enable VPID" and INVVPID to flush a VPID
    /// on reuse).
    pub vpid: bool,
    /// The entry capability, kept to add "IA-32e mode guest" per guest.
    entry_cap: u64,
}

/// The name of each control this backend requires, for the error text.
struct Required {
    bits: u32,
    /// The message for each required bit, lowest bit first.
    names: &'static [(u32, &'static str)],
}

const PIN_REQUIRED: Required = Required {
    bits: pin::EXTERNAL_INTERRUPT_EXITING | pin::NMI_EXITING,
    names: &[
        (pin::EXTERNAL_INTERRUPT_EXITING, "the CPU does not allow the pin-based control 'external-interrupt exiting', which the VT-x backend requires"),
        (pin::NMI_EXITING, "the CPU does not allow the pin-based control 'NMI exiting', which the VT-x backend requires"),
    ],
};

const PROC_REQUIRED: Required = Required {
    bits: proc::HLT_EXITING
        | proc::RDPMC_EXITING
        | proc::USE_IO_BITMAPS
        | proc::USE_MSR_BITMAPS
        | proc::ACTIVATE_SECONDARY_CONTROLS,
    names: &[
        (proc::HLT_EXITING, "the CPU does not allow the processor-based control 'HLT exiting', which the VT-x backend requires"),
        (proc::RDPMC_EXITING, "the CPU does not allow the processor-based control 'RDPMC exiting', which the VT-x backend requires (a guest would read the host's performance counters)"),
        (proc::USE_IO_BITMAPS, "the CPU does not allow the processor-based control 'use I/O bitmaps', which the VT-x backend requires"),
        (proc::USE_MSR_BITMAPS, "the CPU does not allow the processor-based control 'use MSR bitmaps', which the VT-x backend requires"),
        (proc::ACTIVATE_SECONDARY_CONTROLS, "the CPU does not allow the processor-based control 'activate secondary controls', which the VT-x backend requires"),
    ],
};

const PROC2_REQUIRED: Required = Required {
    bits: proc2::ENABLE_EPT | proc2::UNRESTRICTED_GUEST,
    names: &[
        (proc2::ENABLE_EPT, "the CPU does not allow the secondary control 'enable EPT', which the VT-x backend requires"),
        (proc2::UNRESTRICTED_GUEST, "the CPU does not allow the secondary control 'unrestricted guest', which the VT-x backend requires"),
    ],
};

const EXIT_REQUIRED: Required = Required {
    bits: exit_ctl::HOST_ADDRESS_SPACE_SIZE
        | exit_ctl::SAVE_IA32_PAT
        | exit_ctl::LOAD_IA32_PAT
        | exit_ctl::SAVE_IA32_EFER
        | exit_ctl::LOAD_IA32_EFER,
    names: &[
        (exit_ctl::HOST_ADDRESS_SPACE_SIZE, "the CPU does not allow the VM-exit control 'host address-space size' (a 64-bit host), which the VT-x backend requires"),
        (exit_ctl::SAVE_IA32_PAT, "the CPU does not allow the VM-exit control 'save IA32_PAT', which the VT-x backend requires"),
        (exit_ctl::LOAD_IA32_PAT, "the CPU does not allow the VM-exit control 'load IA32_PAT', which the VT-x backend requires"),
        (exit_ctl::SAVE_IA32_EFER, "the CPU does not allow the VM-exit control 'save IA32_EFER', which the VT-x backend requires"),
        (exit_ctl::LOAD_IA32_EFER, "the CPU does not allow the VM-exit control 'load IA32_EFER', which the VT-x backend requires"),
    ],
};

const ENTRY_REQUIRED: Required = Required {
    bits: entry_ctl::LOAD_IA32_PAT | entry_ctl::LOAD_IA32_EFER,
    names: &[
        (entry_ctl::LOAD_IA32_PAT, "the CPU does not allow the VM-entry control 'load IA32_PAT', which the VT-x backend requires"),
        (entry_ctl::LOAD_IA32_EFER, "the CPU does not allow the VM-entry control 'load IA32_EFER', which the VT-x backend requires"),
    ],
};

const IA32E_REFUSED: &str =
    "the CPU does not allow the VM-entry control 'IA-32e mode guest': it cannot run 64-bit guests";

/// Controls the backend never wants but cannot stop the processor from forcing on: a
/// must-be-one bit among these makes the setup fail with a clear message instead of
/// running with a control whose exits the backend does not handle.
const FORBIDDEN: [(Kind, u32, &str); 4] = [
    (
        Kind::Proc,
        proc::UNCONDITIONAL_IO_EXITING,
        "the CPU forces 'unconditional I/O exiting' on, which would bypass the I/O bitmaps",
    ),
    (
        Kind::Exit,
        exit_ctl::ACKNOWLEDGE_INTERRUPT_ON_EXIT,
        "the CPU forces 'acknowledge interrupt on exit' on; the host must take its interrupts through its IDT",
    ),
    (
        Kind::Entry,
        entry_ctl::ENTRY_TO_SMM,
        "the CPU forces the VM-entry control 'entry to SMM' on",
    ),
    (
        Kind::Proc,
        proc::MONITOR_TRAP_FLAG,
        "the CPU forces 'monitor trap flag' on",
    ),
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Proc,
    Exit,
    Entry,
}

fn adjust(cap: u64, required: &Required, optional: u32) -> Result<u32, &'static str> {
    let allowed1 = (cap >> 32) as u32;
    let wanted = required.bits | (optional & allowed1);
    adjust_controls(cap, wanted).map_err(|refused| {
        // Only required bits can be refused: optional ones were masked with allowed-1.
        required
            .names
            .iter()
            .find(|(bit, _)| refused & bit != 0)
            .map_or(
                "the CPU refuses a VMX control the VT-x backend requires",
                |(_, n)| *n,
            )
    })
}

impl Controls {
    /// The controls for every guest of this processor.
    ///
    /// - Pin-based: external-interrupt exiting and NMI exiting (the host keeps its
    ///   timer and NMIs), the VMX-preemption timer when the processor has it.
    /// - Primary: HLT and RDPMC exiting (no guest reads the host's counters), MONITOR
    ///   and MWAIT exiting when allowed (CPUID hides both: #UD), I/O bitmaps (with unconditional I/O exiting off the
    ///   bitmaps alone decide, SDM Vol. 3C 26.1.3), MSR bitmaps, TSC offsetting (the
    ///   guest's IA32_TIME_STAMP_COUNTER writes become an offset), secondary controls.
    /// - Secondary: EPT and unrestricted guest (real-mode guests); VPID when the
    ///   processor has it and INVVPID; RDTSCP and INVPCID when allowed, since CPUID
    ///   passes those feature bits through and the instructions would #UD otherwise
    ///   (RDTSCP and RDPID read IA32_TSC_AUX, which the backend switches per vCPU);
    ///   WBINVD exiting when allowed (SDM Vol. 3D A.3.3), so a guest's WBINVD does
    ///   not stall the machine. INVD always exits (SDM Vol. 3C 26.1.2).
    /// - Exit: 64-bit host, save/load IA32_EFER and IA32_PAT (the guest's values never
    ///   reach the host), save the preemption-timer value when the timer is on. No
    ///   "acknowledge interrupt on exit": the interrupt stays pending for the host's
    ///   IDT.
    /// - Entry: load IA32_EFER and IA32_PAT; "IA-32e mode guest" per guest.
    pub fn compute(caps: &VmxCaps) -> Result<Controls, &'static str> {
        let timer = caps.preemption_timer;
        // Virtual NMIs: with "NMI exiting" on, IRET in the guest would not unblock
        // NMIs (SDM Vol. 3C 25.3, IRET); with virtual NMIs it removes the virtual-NMI
        // blocking an injected NMI sets, as a real CPU's IRET does.
        let pin_value = adjust(
            caps.pinbased,
            &PIN_REQUIRED,
            pin::VIRTUAL_NMIS | if timer { pin::PREEMPTION_TIMER } else { 0 },
        )?;
        // CR8 exiting: without a TPR shadow a guest's MOV to CR8 would reach the host's
        // local-APIC TPR; with it the backend keeps a virtual TPR per vCPU.
        let proc_value = adjust(
            caps.procbased,
            &PROC_REQUIRED,
            proc::USE_TSC_OFFSETTING
                | proc::CR8_LOAD_EXITING
                | proc::CR8_STORE_EXITING
                | proc::MONITOR_EXITING
                | proc::MWAIT_EXITING,
        )?;
        let vpid =
            caps.vpid && caps.invvpid && crate::vpid::invvpid_type(caps.ept_vpid_cap).is_some();
        let proc2_value = adjust(
            caps.procbased2,
            &PROC2_REQUIRED,
            (if vpid { proc2::ENABLE_VPID } else { 0 })
                | proc2::ENABLE_RDTSCP
                | proc2::ENABLE_INVPCID
                | proc2::WBINVD_EXITING,
        )?;
        let timer = pin_value & pin::PREEMPTION_TIMER != 0;
        let exit_value = adjust(
            caps.exit,
            &EXIT_REQUIRED,
            if timer {
                exit_ctl::SAVE_PREEMPTION_TIMER
            } else {
                0
            },
        )?;
        let entry_value = adjust(caps.entry, &ENTRY_REQUIRED, 0)?;
        for (kind, bit, message) in FORBIDDEN {
            let value = match kind {
                Kind::Proc => proc_value,
                Kind::Exit => exit_value,
                Kind::Entry => entry_value,
            };
            if value & bit != 0 {
                return Err(message);
            }
        }
        Ok(Controls {
            pin: pin_value,
            proc: proc_value,
            proc2: proc2_value,
            exit: exit_value,
            entry: entry_value & !entry_ctl::IA32E_MODE_GUEST,
            preemption_timer: timer,
            vpid: proc2_value & proc2::ENABLE_VPID != 0,
            entry_cap: caps.entry,
        })
    }

    /// The VM-entry controls for a guest that starts in IA-32e mode (`long`) or not.
    pub fn entry_for(&self, long: bool) -> Result<u32, &'static str> {
        if !long {
            return Ok(self.entry);
        }
        adjust_controls(self.entry_cap, self.entry | entry_ctl::IA32E_MODE_GUEST)
            .map_err(|_| IA32E_REFUSED)
    }

    /// Whether the processor forces CR3-load or CR3-store exiting on (only without
    /// the TRUE capability MSRs); the backend then emulates MOV to/from CR3.
    pub fn cr3_exiting(&self) -> bool {
        self.proc & (proc::CR3_LOAD_EXITING | proc::CR3_STORE_EXITING) != 0
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::caps::FeatureControlState;

    const fn ctl(must: u32, may: u32) -> u64 {
        ((may as u64) << 32) | must as u64
    }

    /// A Skylake-like capability set with TRUE controls (the values `caps.rs` tests use).
    pub(crate) fn skylake() -> VmxCaps {
        VmxCaps {
            revision_id: 4,
            vmcs_size: 0x1000,
            vmcs_memory_type: 6,
            ins_outs_info: true,
            true_controls: true,
            feature_control: FeatureControlState::LockedEnabled,
            pinbased: ctl(0x16, 0x7F),
            procbased: ctl(0x0400_6172, 0xFFF9_FFFE),
            procbased2: ctl(0, 0x0057_CFFF),
            exit: ctl(0x0003_6DFB, 0x00FF_FFFF),
            entry: ctl(0x11FB, 0x0003_FFFF),
            ept_vpid_cap: (1 << 42)
                | (1 << 41)
                | (1 << 32)
                | (1 << 26)
                | (1 << 25)
                | (1 << 20)
                | (1 << 17)
                | (1 << 16)
                | (1 << 14)
                | (1 << 6),
            misc: 0x7004_C1E7,
            ept: true,
            ept_4level_walk: true,
            ept_wb: true,
            ept_2m: true,
            ept_1g: true,
            invept: true,
            vpid: true,
            invvpid: true,
            unrestricted_guest: true,
            preemption_timer: true,
            preemption_timer_shift: 7,
            msr_bitmaps: true,
            io_bitmaps: true,
        }
    }

    #[test]
    fn skylake_controls() {
        let c = Controls::compute(&skylake()).unwrap();
        // Must-be-one 0x16 plus external interrupts, NMIs, virtual NMIs and the timer.
        assert_eq!(c.pin, 0x16 | 1 | 8 | 0x20 | 0x40);
        assert!(c.preemption_timer && c.vpid);
        let want = proc::HLT_EXITING
            | proc::USE_IO_BITMAPS
            | proc::USE_MSR_BITMAPS
            | proc::ACTIVATE_SECONDARY_CONTROLS
            | proc::USE_TSC_OFFSETTING
            | proc::CR8_LOAD_EXITING
            | proc::CR8_STORE_EXITING
            | proc::RDPMC_EXITING
            | proc::MONITOR_EXITING
            | proc::MWAIT_EXITING;
        assert_eq!(c.proc, 0x0400_6172 | want);
        // The TRUE capability lets CR3-load/store exiting be 0.
        assert!(!c.cr3_exiting());
        assert_eq!(c.proc & proc::UNCONDITIONAL_IO_EXITING, 0);
        assert_eq!(
            c.proc2,
            proc2::ENABLE_EPT
                | proc2::UNRESTRICTED_GUEST
                | proc2::ENABLE_VPID
                | proc2::ENABLE_RDTSCP
                | proc2::WBINVD_EXITING,
            "INVPCID is not in this capability's allowed-1 bits, so it stays off"
        );
        assert_eq!(
            c.exit,
            0x0003_6DFB
                | exit_ctl::HOST_ADDRESS_SPACE_SIZE
                | exit_ctl::SAVE_IA32_PAT
                | exit_ctl::LOAD_IA32_PAT
                | exit_ctl::SAVE_IA32_EFER
                | exit_ctl::LOAD_IA32_EFER
                | exit_ctl::SAVE_PREEMPTION_TIMER
        );
        assert_eq!(c.exit & exit_ctl::ACKNOWLEDGE_INTERRUPT_ON_EXIT, 0);
        assert_eq!(
            c.entry,
            0x11FB & !entry_ctl::IA32E_MODE_GUEST
                | entry_ctl::LOAD_IA32_PAT
                | entry_ctl::LOAD_IA32_EFER
        );
        assert_eq!(c.entry_for(false), Ok(c.entry));
        assert_eq!(c.entry_for(true), Ok(c.entry | entry_ctl::IA32E_MODE_GUEST));
    }

    #[test]
    fn legacy_default1_bits_are_kept() {
        // Without TRUE MSRs the legacy value forces CR3-load/store exiting (bits 15, 16).
        let mut caps = skylake();
        caps.true_controls = false;
        caps.procbased = ctl(0x0401_E172, 0xFFF9_FFFE);
        let c = Controls::compute(&caps).unwrap();
        assert!(c.cr3_exiting());
        assert_eq!(c.proc & 0x0401_E172, 0x0401_E172);
    }

    #[test]
    fn optional_features_only_when_allowed() {
        let mut caps = skylake();
        caps.pinbased = ctl(0x16, 0x1F); // no virtual NMIs, no preemption timer
        caps.preemption_timer = false;
        caps.procbased2 = ctl(0, proc2::ENABLE_EPT | proc2::UNRESTRICTED_GUEST);
        caps.vpid = false;
        caps.invvpid = false;
        let c = Controls::compute(&caps).unwrap();
        assert_eq!(c.pin, 0x16 | 1 | 8);
        assert!(!c.preemption_timer && !c.vpid);
        assert_eq!(c.exit & exit_ctl::SAVE_PREEMPTION_TIMER, 0);
        assert_eq!(c.proc2, proc2::ENABLE_EPT | proc2::UNRESTRICTED_GUEST);

        // VPID without INVVPID is not used: a reused VPID could not be flushed.
        let mut caps = skylake();
        caps.invvpid = false;
        let c = Controls::compute(&caps).unwrap();
        assert!(!c.vpid);
        assert_eq!(c.proc2 & proc2::ENABLE_VPID, 0);
        // Nor with INVVPID but neither single- nor all-context invalidation.
        let mut caps = skylake();
        caps.ept_vpid_cap &= !((1 << 41) | (1 << 42));
        assert!(!Controls::compute(&caps).unwrap().vpid);
    }

    #[test]
    fn wanted_but_not_allowed_is_named() {
        let mut caps = skylake();
        caps.exit = ctl(0x0003_6DFB, 0x00FF_FFFF & !exit_ctl::LOAD_IA32_EFER);
        assert_eq!(
            Controls::compute(&caps),
            Err("the CPU does not allow the VM-exit control 'load IA32_EFER', which the VT-x backend requires")
        );

        let mut caps = skylake();
        caps.procbased2 = ctl(0, 0x0057_CFFF & !proc2::UNRESTRICTED_GUEST);
        let e = Controls::compute(&caps).unwrap_err();
        assert!(e.contains("'unrestricted guest'"), "{e}");

        let mut caps = skylake();
        caps.procbased = ctl(0x0400_6172, 0xFFF9_FFFE & !proc::USE_MSR_BITMAPS);
        assert!(Controls::compute(&caps)
            .unwrap_err()
            .contains("'use MSR bitmaps'"));

        let mut caps = skylake();
        caps.entry = ctl(0x11FB, 0x0003_FFFF & !entry_ctl::LOAD_IA32_PAT);
        assert!(Controls::compute(&caps)
            .unwrap_err()
            .contains("VM-entry control 'load IA32_PAT'"));

        let mut caps = skylake();
        caps.pinbased = ctl(0x16, 0x7F & !pin::NMI_EXITING);
        assert!(Controls::compute(&caps)
            .unwrap_err()
            .contains("'NMI exiting'"));

        let mut caps = skylake();
        caps.entry = ctl(0x11FB, 0x0003_FFFF & !entry_ctl::IA32E_MODE_GUEST);
        let c = Controls::compute(&caps).unwrap();
        assert_eq!(c.entry_for(true), Err(IA32E_REFUSED));
    }

    #[test]
    fn rdpmc_exiting_is_required_and_monitor_wbinvd_optional() {
        let mut caps = skylake();
        caps.procbased &= !(((proc::MONITOR_EXITING | proc::MWAIT_EXITING) as u64) << 32);
        caps.procbased2 &= !((proc2::WBINVD_EXITING as u64) << 32);
        let c = Controls::compute(&caps).unwrap();
        assert_eq!(c.proc & (proc::MONITOR_EXITING | proc::MWAIT_EXITING), 0);
        assert_eq!(c.proc2 & proc2::WBINVD_EXITING, 0);
        caps.procbased &= !((proc::RDPMC_EXITING as u64) << 32);
        let e = Controls::compute(&caps).unwrap_err();
        assert!(e.contains("'RDPMC exiting'"), "{e}");
    }

    #[test]
    fn forced_controls_the_backend_cannot_handle_are_refused() {
        let mut caps = skylake();
        caps.procbased = ctl(0x0400_6172 | proc::UNCONDITIONAL_IO_EXITING, 0xFFF9_FFFE);
        assert!(Controls::compute(&caps)
            .unwrap_err()
            .contains("unconditional I/O exiting"));
        let mut caps = skylake();
        caps.exit = ctl(
            0x0003_6DFB | exit_ctl::ACKNOWLEDGE_INTERRUPT_ON_EXIT,
            0x00FF_FFFF,
        );
        assert!(Controls::compute(&caps)
            .unwrap_err()
            .contains("acknowledge interrupt on exit"));
    }
}
