//! Intel VT-x capability detection: reads CPUID and the VMX capability MSRs
//! (SDM Vol. 3D Appendix A) into [`VmxCaps`], decides whether this hypervisor can
//! run, and explains in words what is missing when it cannot.
//!
//! Pure and host-testable: CPUID goes through raw-cpuid's [`CpuIdReader`] and MSRs
//! through a caller-provided closure, which is only called for MSRs that CPUID (or an
//! earlier capability MSR) says exist, because RDMSR of an absent MSR raises #GP.

use core::fmt;

use raw_cpuid::{CpuId, CpuIdReader};

/// IA32_FEATURE_CONTROL (SDM Vol. 4 Table 2-2; SDM Vol. 3C 24.7 "Enabling and
/// entering VMX operation").
pub const IA32_FEATURE_CONTROL: u32 = 0x3A;
/// IA32_VMX_BASIC (SDM Vol. 3D A.1).
pub const IA32_VMX_BASIC: u32 = 0x480;
/// IA32_VMX_PINBASED_CTLS (SDM Vol. 3D A.3.1).
pub const IA32_VMX_PINBASED_CTLS: u32 = 0x481;
/// IA32_VMX_PROCBASED_CTLS (SDM Vol. 3D A.3.2).
pub const IA32_VMX_PROCBASED_CTLS: u32 = 0x482;
/// IA32_VMX_EXIT_CTLS (SDM Vol. 3D A.4.1).
pub const IA32_VMX_EXIT_CTLS: u32 = 0x483;
/// IA32_VMX_ENTRY_CTLS (SDM Vol. 3D A.5).
pub const IA32_VMX_ENTRY_CTLS: u32 = 0x484;
/// IA32_VMX_MISC (SDM Vol. 3D A.6).
pub const IA32_VMX_MISC: u32 = 0x485;
/// IA32_VMX_PROCBASED_CTLS2 (SDM Vol. 3D A.3.3).
pub const IA32_VMX_PROCBASED_CTLS2: u32 = 0x48B;
/// IA32_VMX_EPT_VPID_CAP (SDM Vol. 3D A.10).
pub const IA32_VMX_EPT_VPID_CAP: u32 = 0x48C;
/// IA32_VMX_TRUE_PINBASED_CTLS (SDM Vol. 3D A.3.1).
pub const IA32_VMX_TRUE_PINBASED_CTLS: u32 = 0x48D;
/// IA32_VMX_TRUE_PROCBASED_CTLS (SDM Vol. 3D A.3.2).
pub const IA32_VMX_TRUE_PROCBASED_CTLS: u32 = 0x48E;
/// IA32_VMX_TRUE_EXIT_CTLS (SDM Vol. 3D A.4.1).
pub const IA32_VMX_TRUE_EXIT_CTLS: u32 = 0x48F;
/// IA32_VMX_TRUE_ENTRY_CTLS (SDM Vol. 3D A.5).
pub const IA32_VMX_TRUE_ENTRY_CTLS: u32 = 0x490;

const FEATURE_CONTROL_LOCK: u64 = 1 << 0;
const FEATURE_CONTROL_VMXON_OUTSIDE_SMX: u64 = 1 << 2;

// IA32_VMX_BASIC fields (SDM Vol. 3D A.1).
const BASIC_INS_OUTS_INFO: u64 = 1 << 54;
const BASIC_TRUE_CONTROLS: u64 = 1 << 55;

// Control bit positions (SDM Vol. 3C 25.6.1, 25.6.2; capability encoding SDM Vol. 3D A.3).
const PIN_PREEMPTION_TIMER: u32 = 1 << 6;
const PROC_IO_BITMAPS: u32 = 1 << 25;
const PROC_MSR_BITMAPS: u32 = 1 << 28;
const PROC_ACTIVATE_SECONDARY: u32 = 1 << 31;
const PROC2_EPT: u32 = 1 << 1;
const PROC2_VPID: u32 = 1 << 5;
const PROC2_UNRESTRICTED_GUEST: u32 = 1 << 7;

// IA32_VMX_EPT_VPID_CAP bits (SDM Vol. 3D A.10).
const EPT_CAP_WALK_4: u64 = 1 << 6;
const EPT_CAP_WB: u64 = 1 << 14;
const EPT_CAP_2M: u64 = 1 << 16;
const EPT_CAP_1G: u64 = 1 << 17;
const EPT_CAP_INVEPT: u64 = 1 << 20;
const VPID_CAP_INVVPID: u64 = 1 << 32;

/// State of IA32_FEATURE_CONTROL as the firmware left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureControlState {
    /// Locked with VMXON outside SMX allowed: VMXON may be used as is.
    LockedEnabled,
    /// Not locked: the hypervisor must set lock + VMXON-outside-SMX itself before
    /// VMXON, or VMXON raises #GP (SDM Vol. 3C 24.7).
    Unlocked,
}

/// What VT-x offers on this CPU. Control MSR values are stored raw (allowed-0
/// settings in bits 31:0, allowed-1 settings in bits 63:32, SDM Vol. 3D A.3) so the
/// VMCS code can feed them to [`adjust_controls`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmxCaps {
    /// VMCS revision identifier for the VMXON region and every VMCS (IA32_VMX_BASIC 30:0).
    pub revision_id: u32,
    /// Bytes to allocate for the VMXON region and each VMCS (IA32_VMX_BASIC 44:32).
    pub vmcs_size: u16,
    /// Memory type the CPU uses to access the VMCS (IA32_VMX_BASIC 53:50; 6 = WB).
    pub vmcs_memory_type: u8,
    /// IA32_VMX_BASIC bit 54: VM exits for INS/OUTS report instruction information.
    pub ins_outs_info: bool,
    /// IA32_VMX_BASIC bit 55: the TRUE_* control MSRs exist, and the control fields
    /// below hold them instead of the legacy MSRs.
    pub true_controls: bool,
    pub feature_control: FeatureControlState,
    /// Pin-based controls capability (TRUE_PINBASED_CTLS when `true_controls`).
    pub pinbased: u64,
    /// Primary processor-based controls capability (TRUE_PROCBASED_CTLS when `true_controls`).
    pub procbased: u64,
    /// Secondary processor-based controls capability; 0 when the CPU has none.
    pub procbased2: u64,
    /// VM-exit controls capability (TRUE_EXIT_CTLS when `true_controls`).
    pub exit: u64,
    /// VM-entry controls capability (TRUE_ENTRY_CTLS when `true_controls`).
    pub entry: u64,
    /// IA32_VMX_EPT_VPID_CAP raw; 0 when neither EPT nor VPID can be enabled.
    pub ept_vpid_cap: u64,
    /// IA32_VMX_MISC raw.
    pub misc: u64,
    pub ept: bool,
    pub ept_4level_walk: bool,
    pub ept_wb: bool,
    pub ept_2m: bool,
    pub ept_1g: bool,
    pub invept: bool,
    pub vpid: bool,
    pub invvpid: bool,
    pub unrestricted_guest: bool,
    pub preemption_timer: bool,
    /// The preemption timer counts down once every 2^shift TSC ticks (IA32_VMX_MISC 4:0).
    pub preemption_timer_shift: u8,
    pub msr_bitmaps: bool,
    pub io_bitmaps: bool,
}

/// Why this hypervisor cannot use VT-x on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmxUnavailable {
    /// CPUID.1:ECX.VMX[bit 5] is clear.
    NoVmx,
    /// IA32_FEATURE_CONTROL is locked with VMXON outside SMX disabled; only a reset
    /// can change it.
    DisabledByFirmware,
    /// VT-x is there but lacks a feature the hypervisor depends on (named).
    MissingFeature(&'static str),
}

impl fmt::Display for VmxUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmxUnavailable::NoVmx => f.write_str(
                "CPUID reports no VMX: enable Intel VT-x in the firmware setup, or when \
                 running nested enable nested virtualization on the host (kvm_intel \
                 nested=1) and pass a CPU model with vmx",
            ),
            VmxUnavailable::DisabledByFirmware => f.write_str(
                "VT-x is disabled and locked by the firmware (IA32_FEATURE_CONTROL locked \
                 with VMXON outside SMX clear): enable Intel Virtualization Technology in \
                 the firmware setup",
            ),
            VmxUnavailable::MissingFeature(feature) => write!(
                f,
                "VT-x lacks {feature}, which this hypervisor requires: the CPU or emulator \
                 is too old, or the nested-virtualization host hides the feature from its \
                 guests (use a newer CPU model that exposes it)"
            ),
        }
    }
}

/// Reads the VT-x capabilities and checks that everything this hypervisor requires
/// is there (see [`VmxCaps::check_required`]).
///
/// `rdmsr` is only called for MSRs that exist on this CPU.
pub fn detect<R: CpuIdReader>(
    cpuid: &CpuId<R>,
    rdmsr: impl FnMut(u32) -> u64,
) -> Result<VmxCaps, VmxUnavailable> {
    let caps = probe(cpuid, rdmsr)?;
    caps.check_required()?;
    Ok(caps)
}

/// Reads the VT-x capabilities without judging them, so a caller can log what the
/// CPU offers before [`VmxCaps::check_required`] rejects it. Fails only when VT-x
/// is absent or locked off.
pub fn probe<R: CpuIdReader>(
    cpuid: &CpuId<R>,
    mut rdmsr: impl FnMut(u32) -> u64,
) -> Result<VmxCaps, VmxUnavailable> {
    // Every MSR below is architectural only when CPUID.1:ECX.VMX is set (SDM Vol. 3D
    // Appendix A intro); reading them otherwise raises #GP.
    let has_vmx = cpuid.get_feature_info().is_some_and(|fi| fi.has_vmx());
    if !has_vmx {
        return Err(VmxUnavailable::NoVmx);
    }

    // With the lock bit set the MSR cannot change until reset, so a clear enable bit
    // is final. Unlocked is fine: we set lock + enable ourselves before VMXON.
    let fc = rdmsr(IA32_FEATURE_CONTROL);
    let feature_control = if fc & FEATURE_CONTROL_LOCK == 0 {
        FeatureControlState::Unlocked
    } else if fc & FEATURE_CONTROL_VMXON_OUTSIDE_SMX != 0 {
        FeatureControlState::LockedEnabled
    } else {
        return Err(VmxUnavailable::DisabledByFirmware);
    };

    // SDM Vol. 3D A.1.
    let basic = rdmsr(IA32_VMX_BASIC);
    let revision_id = (basic & 0x7FFF_FFFF) as u32;
    let vmcs_size = ((basic >> 32) & 0x1FFF) as u16;
    let vmcs_memory_type = ((basic >> 50) & 0xF) as u8;
    let ins_outs_info = basic & BASIC_INS_OUTS_INFO != 0;
    let true_controls = basic & BASIC_TRUE_CONTROLS != 0;

    // SDM Vol. 3D A.2: when the TRUE MSRs exist they report the same allowed-1
    // settings but may allow clearing some "default1" controls (e.g. CR3-load
    // exiting, which an unrestricted guest with EPT wants off), so prefer them.
    let (pin_msr, proc_msr, exit_msr, entry_msr) = if true_controls {
        (
            IA32_VMX_TRUE_PINBASED_CTLS,
            IA32_VMX_TRUE_PROCBASED_CTLS,
            IA32_VMX_TRUE_EXIT_CTLS,
            IA32_VMX_TRUE_ENTRY_CTLS,
        )
    } else {
        (
            IA32_VMX_PINBASED_CTLS,
            IA32_VMX_PROCBASED_CTLS,
            IA32_VMX_EXIT_CTLS,
            IA32_VMX_ENTRY_CTLS,
        )
    };
    let pinbased = rdmsr(pin_msr);
    let procbased = rdmsr(proc_msr);
    let exit = rdmsr(exit_msr);
    let entry = rdmsr(entry_msr);

    // SDM Vol. 3D A.3.3: IA32_VMX_PROCBASED_CTLS2 exists only if "activate secondary
    // controls" may be 1.
    let procbased2 = if allowed1(procbased) & PROC_ACTIVATE_SECONDARY != 0 {
        rdmsr(IA32_VMX_PROCBASED_CTLS2)
    } else {
        0
    };
    let ept = allowed1(procbased2) & PROC2_EPT != 0;
    let vpid = allowed1(procbased2) & PROC2_VPID != 0;

    // SDM Vol. 3D A.10: IA32_VMX_EPT_VPID_CAP exists only if "enable EPT" or
    // "enable VPID" may be 1.
    let ept_vpid_cap = if ept || vpid {
        rdmsr(IA32_VMX_EPT_VPID_CAP)
    } else {
        0
    };
    // The EPT half of the MSR only means something when EPT can be enabled, the VPID
    // half only when VPID can (SDM Vol. 3D A.10).
    let ept_bit = |bit: u64| ept && ept_vpid_cap & bit != 0;

    // SDM Vol. 3D A.6: always present with VMX.
    let misc = rdmsr(IA32_VMX_MISC);

    let preemption_timer = allowed1(pinbased) & PIN_PREEMPTION_TIMER != 0;
    Ok(VmxCaps {
        revision_id,
        vmcs_size,
        vmcs_memory_type,
        ins_outs_info,
        true_controls,
        feature_control,
        pinbased,
        procbased,
        procbased2,
        exit,
        entry,
        ept_vpid_cap,
        misc,
        ept,
        ept_4level_walk: ept_bit(EPT_CAP_WALK_4),
        ept_wb: ept_bit(EPT_CAP_WB),
        ept_2m: ept_bit(EPT_CAP_2M),
        ept_1g: ept_bit(EPT_CAP_1G),
        invept: ept_bit(EPT_CAP_INVEPT),
        vpid,
        invvpid: vpid && ept_vpid_cap & VPID_CAP_INVVPID != 0,
        unrestricted_guest: allowed1(procbased2) & PROC2_UNRESTRICTED_GUEST != 0,
        preemption_timer,
        // Without the timer the rate field is meaningless; keep 0 so nobody uses it.
        preemption_timer_shift: if preemption_timer {
            (misc & 0x1F) as u8
        } else {
            0
        },
        msr_bitmaps: allowed1(procbased) & PROC_MSR_BITMAPS != 0,
        io_bitmaps: allowed1(procbased) & PROC_IO_BITMAPS != 0,
    })
}

impl VmxCaps {
    /// Checks the features the hypervisor cannot run without: guests run in real
    /// mode and with paging of their own (unrestricted guest, which needs EPT), guest
    /// memory is mapped write-back through a 4-level EPT, and I/O ports and MSRs are
    /// intercepted selectively through bitmaps.
    pub fn check_required(&self) -> Result<(), VmxUnavailable> {
        let required = [
            (self.io_bitmaps, "I/O bitmaps"),
            (self.msr_bitmaps, "MSR bitmaps"),
            (self.procbased2 != 0, "secondary processor-based controls"),
            (self.ept, "EPT (extended page tables)"),
            (self.ept_4level_walk, "a 4-level EPT page walk"),
            (self.ept_wb, "the write-back memory type for EPT structures"),
            (self.unrestricted_guest, "unrestricted guest"),
        ];
        match required.iter().find(|(present, _)| !present) {
            Some(&(_, name)) => Err(VmxUnavailable::MissingFeature(name)),
            None => Ok(()),
        }
    }

    /// Space-separated names of the optional features present, for the boot log.
    pub fn feature_list(&self) -> impl fmt::Display {
        VmxFeatureList(*self)
    }
}

struct VmxFeatureList(VmxCaps);

impl fmt::Display for VmxFeatureList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.0;
        let features = [
            (c.ept, "EPT"),
            (c.ept_2m, "EPT-2M"),
            (c.ept_1g, "EPT-1G"),
            (c.unrestricted_guest, "unrestricted-guest"),
            (c.vpid, "VPID"),
            (c.preemption_timer, "preemption-timer"),
            (c.true_controls, "true-controls"),
        ];
        let mut sep = "";
        for (_, name) in features.iter().filter(|(present, _)| *present) {
            write!(f, "{sep}{name}")?;
            sep = " ";
        }
        Ok(())
    }
}

fn allowed1(msr_value: u64) -> u32 {
    (msr_value >> 32) as u32
}

/// Computes a VM-execution/exit/entry control value from its capability MSR
/// (SDM Vol. 3D A.3.1): bits 31:0 are the allowed-0 settings (a set bit must be 1),
/// bits 63:32 the allowed-1 settings (a clear bit must be 0).
///
/// Returns the value to write, with the must-be-one bits added, or `Err` with the
/// wanted bits the CPU does not allow.
pub fn adjust_controls(msr_value: u64, wanted: u32) -> Result<u32, u32> {
    let must_be_one = msr_value as u32;
    let may_be_one = allowed1(msr_value);
    let refused = wanted & !may_be_one;
    if refused != 0 {
        return Err(refused);
    }
    Ok((wanted | must_be_one) & may_be_one)
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::cell::RefCell;
    use std::format;
    use std::string::ToString;
    use std::vec::Vec;

    use raw_cpuid::CpuIdResult;

    use super::*;

    const fn r(eax: u32, ebx: u32, ecx: u32, edx: u32) -> CpuIdResult {
        CpuIdResult { eax, ebx, ecx, edx }
    }

    /// A CPUID reader answering leaf 0 ("GenuineIntel", max leaf 1), leaf 1 with the
    /// given ECX, and zeros for everything else.
    fn intel_cpuid(leaf1_ecx: u32) -> CpuId<impl CpuIdReader> {
        CpuId::with_cpuid_reader(move |leaf: u32, _subleaf: u32| match leaf {
            // "Genu" "ineI" "ntel" in EBX, EDX, ECX.
            0 => r(1, 0x756e_6547, 0x6c65_746e, 0x4965_6e69),
            1 => r(0x000906EA, 0, leaf1_ecx, 0),
            _ => r(0, 0, 0, 0),
        })
    }

    const CPUID_VMX: u32 = 1 << 5;

    /// Capability value from allowed-0 (must be one) and allowed-1 (may be one).
    const fn ctl(must: u32, may: u32) -> u64 {
        ((may as u64) << 32) | must as u64
    }

    /// Roughly what a Skylake-class part reports.
    fn full_msrs() -> Vec<(u32, u64)> {
        std::vec![
            (IA32_FEATURE_CONTROL, 0x5),
            // revision 4, size 0x1000, WB, INS/OUTS info, TRUE controls
            (IA32_VMX_BASIC, 0x00DA_1000_0000_0004),
            (IA32_VMX_PINBASED_CTLS, ctl(0x16, 0x7F)),
            (IA32_VMX_TRUE_PINBASED_CTLS, ctl(0x16, 0x7F)),
            (IA32_VMX_PROCBASED_CTLS, ctl(0x0401_E172, 0xFFF9_FFFE)),
            (IA32_VMX_TRUE_PROCBASED_CTLS, ctl(0x0400_6172, 0xFFF9_FFFE)),
            (IA32_VMX_EXIT_CTLS, ctl(0x0003_6DFF, 0x00FF_FFFF)),
            (IA32_VMX_TRUE_EXIT_CTLS, ctl(0x0003_6DFB, 0x00FF_FFFF)),
            (IA32_VMX_ENTRY_CTLS, ctl(0x11FF, 0x0003_FFFF)),
            (IA32_VMX_TRUE_ENTRY_CTLS, ctl(0x11FB, 0x0003_FFFF)),
            (IA32_VMX_MISC, 0x7004_C1E7),
            (IA32_VMX_PROCBASED_CTLS2, ctl(0, 0x0057_CFFF)),
            // 4-level walk, UC, WB, 2M, 1G, INVEPT, INVVPID
            (
                IA32_VMX_EPT_VPID_CAP,
                (1 << 32) | (1 << 20) | (1 << 17) | (1 << 16) | (1 << 14) | (1 << 8) | (1 << 6),
            ),
        ]
    }

    fn set(msrs: &mut [(u32, u64)], msr: u32, value: u64) {
        msrs.iter_mut().find(|(m, _)| *m == msr).unwrap().1 = value;
    }

    /// Runs `f` with an MSR closure over `msrs` and returns its result plus the MSRs
    /// read, in order. Reading an MSR not in the table panics, as it would #GP.
    fn with_msrs<T>(
        msrs: &[(u32, u64)],
        f: impl FnOnce(&mut dyn FnMut(u32) -> u64) -> T,
    ) -> (T, Vec<u32>) {
        let reads = RefCell::new(Vec::new());
        let mut rdmsr = |msr: u32| {
            reads.borrow_mut().push(msr);
            msrs.iter()
                .find(|(m, _)| *m == msr)
                .unwrap_or_else(|| panic!("rdmsr {msr:#x}: not in table (#GP)"))
                .1
        };
        let out = f(&mut rdmsr);
        (out, reads.into_inner())
    }

    fn run_detect(
        leaf1_ecx: u32,
        msrs: &[(u32, u64)],
    ) -> (Result<VmxCaps, VmxUnavailable>, Vec<u32>) {
        let cpuid = intel_cpuid(leaf1_ecx);
        with_msrs(msrs, |rdmsr| detect(&cpuid, rdmsr))
    }

    #[test]
    fn full_featured_cpu() {
        let (caps, reads) = run_detect(CPUID_VMX, &full_msrs());
        let caps = caps.unwrap();
        assert_eq!(caps.revision_id, 4);
        assert_eq!(caps.vmcs_size, 0x1000);
        assert_eq!(caps.vmcs_memory_type, 6);
        assert!(caps.ins_outs_info);
        assert!(caps.true_controls);
        assert_eq!(caps.feature_control, FeatureControlState::LockedEnabled);
        assert_eq!(caps.procbased2, ctl(0, 0x0057_CFFF));
        assert!(caps.ept && caps.ept_4level_walk && caps.ept_wb && caps.ept_2m && caps.ept_1g);
        assert!(caps.invept && caps.vpid && caps.invvpid);
        assert!(caps.unrestricted_guest && caps.msr_bitmaps && caps.io_bitmaps);
        assert!(caps.preemption_timer);
        assert_eq!(caps.preemption_timer_shift, 7);
        assert_eq!(caps.misc, 0x7004_C1E7);
        assert!(reads.contains(&IA32_VMX_PROCBASED_CTLS2));
        assert!(reads.contains(&IA32_VMX_EPT_VPID_CAP));
        assert_eq!(
            caps.feature_list().to_string(),
            "EPT EPT-2M EPT-1G unrestricted-guest VPID preemption-timer true-controls"
        );
    }

    #[test]
    fn true_controls_selected_when_advertised() {
        let (caps, reads) = run_detect(CPUID_VMX, &full_msrs());
        let caps = caps.unwrap();
        assert_eq!(caps.procbased, ctl(0x0400_6172, 0xFFF9_FFFE));
        assert_eq!(caps.exit, ctl(0x0003_6DFB, 0x00FF_FFFF));
        assert_eq!(caps.entry, ctl(0x11FB, 0x0003_FFFF));
        for legacy in [
            IA32_VMX_PINBASED_CTLS,
            IA32_VMX_PROCBASED_CTLS,
            IA32_VMX_EXIT_CTLS,
            IA32_VMX_ENTRY_CTLS,
        ] {
            assert!(!reads.contains(&legacy), "read legacy {legacy:#x}");
        }
    }

    #[test]
    fn legacy_controls_without_true_bit() {
        let mut msrs = full_msrs();
        set(&mut msrs, IA32_VMX_BASIC, 0x0058_1000_0000_0004); // bit 55 clear
                                                               // The TRUE MSRs do not exist then: reading one would panic in the fake.
        msrs.retain(|(m, _)| !(IA32_VMX_TRUE_PINBASED_CTLS..=IA32_VMX_TRUE_ENTRY_CTLS).contains(m));
        let (caps, _) = run_detect(CPUID_VMX, &msrs);
        let caps = caps.unwrap();
        assert!(!caps.true_controls);
        assert_eq!(caps.procbased, ctl(0x0401_E172, 0xFFF9_FFFE));
        assert_eq!(caps.pinbased, ctl(0x16, 0x7F));
        assert_eq!(caps.exit, ctl(0x0003_6DFF, 0x00FF_FFFF));
        assert_eq!(caps.entry, ctl(0x11FF, 0x0003_FFFF));
        assert!(!caps.feature_list().to_string().contains("true-controls"));
    }

    #[test]
    fn no_vmx_reads_no_msr() {
        let (res, reads) = run_detect(0, &full_msrs());
        assert_eq!(res, Err(VmxUnavailable::NoVmx));
        assert!(reads.is_empty());
    }

    #[test]
    fn no_vmx_when_leaf1_unsupported() {
        let cpuid = CpuId::with_cpuid_reader(|leaf: u32, _: u32| match leaf {
            0 => r(0, 0x756e_6547, 0x6c65_746e, 0x4965_6e69),
            _ => r(0, 0, CPUID_VMX, 0),
        });
        let (res, reads) = with_msrs(&full_msrs(), |rdmsr| detect(&cpuid, rdmsr));
        assert_eq!(res, Err(VmxUnavailable::NoVmx));
        assert!(reads.is_empty());
    }

    #[test]
    fn firmware_locked_off() {
        let mut msrs = full_msrs();
        set(&mut msrs, IA32_FEATURE_CONTROL, 0x1);
        let (res, reads) = run_detect(CPUID_VMX, &msrs);
        assert_eq!(res, Err(VmxUnavailable::DisabledByFirmware));
        assert_eq!(reads, [IA32_FEATURE_CONTROL]);
    }

    #[test]
    fn firmware_unlocked_is_usable() {
        for fc in [0x0, 0x4] {
            let mut msrs = full_msrs();
            set(&mut msrs, IA32_FEATURE_CONTROL, fc);
            let (caps, _) = run_detect(CPUID_VMX, &msrs);
            assert_eq!(caps.unwrap().feature_control, FeatureControlState::Unlocked);
        }
    }

    #[test]
    fn no_secondary_controls_skips_procbased2_and_ept_cap() {
        let mut msrs = full_msrs();
        set(
            &mut msrs,
            IA32_VMX_TRUE_PROCBASED_CTLS,
            ctl(0x0400_6172, 0x7FF9_FFFE),
        );
        let cpuid = intel_cpuid(CPUID_VMX);
        let (caps, reads) = with_msrs(&msrs, |rdmsr| probe(&cpuid, rdmsr));
        let caps = caps.unwrap();
        assert!(!reads.contains(&IA32_VMX_PROCBASED_CTLS2));
        assert!(!reads.contains(&IA32_VMX_EPT_VPID_CAP));
        assert_eq!((caps.procbased2, caps.ept_vpid_cap), (0, 0));
        assert!(!caps.ept && !caps.vpid && !caps.unrestricted_guest);
        assert_eq!(
            caps.check_required(),
            Err(VmxUnavailable::MissingFeature(
                "secondary processor-based controls"
            ))
        );
        let (res, _) = run_detect(CPUID_VMX, &msrs);
        assert_eq!(
            res,
            Err(VmxUnavailable::MissingFeature(
                "secondary processor-based controls"
            ))
        );
    }

    #[test]
    fn no_ept_or_vpid_skips_ept_cap() {
        let mut msrs = full_msrs();
        // Secondary controls with unrestricted guest allowed but neither EPT nor VPID.
        set(
            &mut msrs,
            IA32_VMX_PROCBASED_CTLS2,
            ctl(0, 0x0057_CFFF & !(PROC2_EPT | PROC2_VPID)),
        );
        let cpuid = intel_cpuid(CPUID_VMX);
        let (caps, reads) = with_msrs(&msrs, |rdmsr| probe(&cpuid, rdmsr));
        let caps = caps.unwrap();
        assert!(reads.contains(&IA32_VMX_PROCBASED_CTLS2));
        assert!(!reads.contains(&IA32_VMX_EPT_VPID_CAP));
        assert!(!caps.ept && !caps.ept_2m && !caps.invept && !caps.vpid && !caps.invvpid);
        assert_eq!(
            caps.check_required(),
            Err(VmxUnavailable::MissingFeature("EPT (extended page tables)"))
        );
    }

    #[test]
    fn vpid_only_ignores_ept_half_of_cap() {
        let mut msrs = full_msrs();
        set(&mut msrs, IA32_VMX_PROCBASED_CTLS2, ctl(0, PROC2_VPID));
        let cpuid = intel_cpuid(CPUID_VMX);
        let (caps, reads) = with_msrs(&msrs, |rdmsr| probe(&cpuid, rdmsr));
        let caps = caps.unwrap();
        assert!(reads.contains(&IA32_VMX_EPT_VPID_CAP));
        assert!(caps.vpid && caps.invvpid);
        assert!(!caps.ept && !caps.ept_4level_walk && !caps.ept_wb && !caps.ept_2m);
    }

    #[test]
    fn missing_required_features_are_named() {
        let cases: [(u32, u64, &str); 6] = [
            (
                IA32_VMX_TRUE_PROCBASED_CTLS,
                ctl(0x0400_6172, 0xFFF9_FFFE & !PROC_IO_BITMAPS),
                "I/O bitmaps",
            ),
            (
                IA32_VMX_TRUE_PROCBASED_CTLS,
                ctl(0x0400_6172, 0xFFF9_FFFE & !PROC_MSR_BITMAPS),
                "MSR bitmaps",
            ),
            (
                IA32_VMX_EPT_VPID_CAP,
                (1 << 32) | (1 << 14) | (1 << 16),
                "a 4-level EPT page walk",
            ),
            (
                IA32_VMX_EPT_VPID_CAP,
                (1 << 32) | (1 << 6) | (1 << 16),
                "the write-back memory type for EPT structures",
            ),
            (
                IA32_VMX_PROCBASED_CTLS2,
                ctl(0, 0x0057_CFFF & !PROC2_UNRESTRICTED_GUEST),
                "unrestricted guest",
            ),
            (
                IA32_VMX_PROCBASED_CTLS2,
                ctl(0, 0x0057_CFFF & !PROC2_EPT),
                "EPT (extended page tables)",
            ),
        ];
        for (msr, value, name) in cases {
            let mut msrs = full_msrs();
            set(&mut msrs, msr, value);
            let (res, _) = run_detect(CPUID_VMX, &msrs);
            assert_eq!(
                res,
                Err(VmxUnavailable::MissingFeature(name)),
                "{msr:#x}={value:#x}"
            );
        }
    }

    #[test]
    fn optional_features_absent() {
        let mut msrs = full_msrs();
        set(&mut msrs, IA32_VMX_TRUE_PINBASED_CTLS, ctl(0x16, 0x3F)); // no preemption timer
        set(
            &mut msrs,
            IA32_VMX_PROCBASED_CTLS2,
            ctl(0, PROC2_EPT | PROC2_UNRESTRICTED_GUEST),
        );
        set(&mut msrs, IA32_VMX_EPT_VPID_CAP, (1 << 6) | (1 << 14));
        let (caps, _) = run_detect(CPUID_VMX, &msrs);
        let caps = caps.unwrap();
        assert!(
            !caps.preemption_timer && !caps.vpid && !caps.invvpid && !caps.ept_2m && !caps.ept_1g
        );
        assert!(!caps.invept);
        assert_eq!(caps.preemption_timer_shift, 0);
        assert_eq!(
            caps.feature_list().to_string(),
            "EPT unrestricted-guest true-controls"
        );
    }

    #[test]
    fn feature_list_empty() {
        let mut msrs = full_msrs();
        set(&mut msrs, IA32_VMX_BASIC, 0x0058_1000_0000_0004);
        set(&mut msrs, IA32_VMX_PINBASED_CTLS, ctl(0x16, 0x3F));
        set(
            &mut msrs,
            IA32_VMX_PROCBASED_CTLS,
            ctl(0x0401_E172, 0x7FF9_FFFE),
        );
        let cpuid = intel_cpuid(CPUID_VMX);
        let (caps, _) = with_msrs(&msrs, |rdmsr| probe(&cpuid, rdmsr));
        assert_eq!(caps.unwrap().feature_list().to_string(), "");
    }

    #[test]
    fn messages_say_how_to_fix() {
        let no_vmx = VmxUnavailable::NoVmx.to_string();
        assert!(no_vmx.contains("CPUID reports no VMX") && no_vmx.contains("kvm_intel nested=1"));
        let fw = VmxUnavailable::DisabledByFirmware.to_string();
        assert!(fw.contains("firmware setup"));
        let missing = format!("{}", VmxUnavailable::MissingFeature("unrestricted guest"));
        assert!(missing.contains("unrestricted guest") && missing.contains("too old"));
    }

    #[test]
    fn adjust_controls_applies_allowed0_and_allowed1() {
        // must-be-one 0b0001_0010, may-be-one 0b1111_0110
        let msr = ctl(0x12, 0xF6);
        assert_eq!(adjust_controls(msr, 0), Ok(0x12));
        assert_eq!(adjust_controls(msr, 0x44), Ok(0x56));
        assert_eq!(adjust_controls(msr, 0x12), Ok(0x12));
        // bit 0 and bit 3 are not allowed to be 1
        assert_eq!(adjust_controls(msr, 0x09 | 0x40), Err(0x09));
        assert_eq!(adjust_controls(ctl(0, 0), 1 << 31), Err(1 << 31));
        assert_eq!(adjust_controls(ctl(0, u32::MAX), u32::MAX), Ok(u32::MAX));
    }

    #[test]
    fn adjust_controls_with_real_capability_values() {
        // Preemption timer + NMI exiting on the Skylake-like pin-based capability.
        let pin = full_msrs()[3].1;
        assert_eq!(
            adjust_controls(pin, (1 << 6) | (1 << 3)),
            Ok(0x16 | (1 << 6) | (1 << 3))
        );
        // Posted interrupts (bit 7) are not allowed there.
        assert_eq!(adjust_controls(pin, 1 << 7), Err(1 << 7));
    }
}
