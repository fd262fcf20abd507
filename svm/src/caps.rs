//! AMD-V (SVM) capability detection: reads CPUID Fn8000_0001/Fn8000_000A and the
//! VM_CR MSR into [`SvmCaps`], decides whether this hypervisor can run, and explains
//! in words what is missing when it cannot.
//!
//! Pure and host-testable: CPUID goes through raw-cpuid's [`CpuIdReader`] and MSRs
//! through a caller-provided closure, which is only called once CPUID reports SVM,
//! because VM_CR does not exist otherwise and RDMSR of it would raise #GP.

use core::fmt;

use raw_cpuid::{CpuId, CpuIdReader};

/// VM_CR (APM Vol. 2 15.30.1).
pub const MSR_VM_CR: u32 = 0xC001_0114;

// VM_CR bits (APM Vol. 2 15.4 "Enabling SVM", 15.30.1).
const VM_CR_LOCK: u64 = 1 << 3;
const VM_CR_SVMDIS: u64 = 1 << 4;

const NPT: &str = "nested paging (NPT)";
const TWO_ASIDS: &str = "at least 2 ASIDs";
const FEATURE_LEAF: &str = "the SVM feature leaf (CPUID Fn8000_000A)";

/// What AMD-V offers on this CPU (APM Vol. 3 Appendix E, CPUID Fn8000_000A).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SvmCaps {
    /// SVM revision (Fn8000_000A EAX 7:0).
    pub revision: u8,
    /// Number of ASIDs (Fn8000_000A EBX); ASID 0 is the host's.
    pub asid_count: u32,
    /// Nested paging (EDX bit 0).
    pub npt: bool,
    /// LBR virtualization (EDX bit 1).
    pub lbr_virt: bool,
    /// SVM lock: VM_CR.LOCK can be cleared with a key (EDX bit 2).
    pub svm_lock: bool,
    /// The CPU saves the next RIP in the VMCB on #VMEXIT (EDX bit 3). Without it
    /// the hypervisor must decode instruction lengths itself.
    pub nrip_save: bool,
    /// TSC ratio MSR (EDX bit 4).
    pub tsc_rate_msr: bool,
    /// VMCB clean bits (EDX bit 5).
    pub vmcb_clean: bool,
    /// TLB flush of the current ASID only (EDX bit 6).
    pub flush_by_asid: bool,
    /// Decode assists (EDX bit 7).
    pub decode_assists: bool,
    /// PAUSE intercept filter count (EDX bit 10).
    pub pause_filter: bool,
    /// PAUSE filter cycle threshold (EDX bit 12).
    pub pause_filter_threshold: bool,
    /// AMD virtual interrupt controller (EDX bit 13).
    pub avic: bool,
    /// VMSAVE/VMLOAD virtualization (EDX bit 15).
    pub vmsave_vmload_virt: bool,
    /// Virtual GIF (EDX bit 16).
    pub vgif: bool,
    /// VM_CR raw, as the firmware left it.
    pub vm_cr: u64,
}

/// Why this hypervisor cannot use AMD-V on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SvmUnavailable {
    /// CPUID Fn8000_0001 ECX bit 2 is clear (or the CPU is not an AMD/Hygon part).
    NoSvm,
    /// VM_CR.SVMDIS is set; `locked` is VM_CR.LOCK.
    DisabledByFirmware { locked: bool },
    /// SVM is there but lacks a feature the hypervisor depends on (named).
    MissingFeature(&'static str),
}

impl fmt::Display for SvmUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SvmUnavailable::NoSvm => f.write_str(
                "CPUID reports no SVM: enable AMD-V/SVM in the firmware setup, or when \
                 running nested enable nested virtualization on the host (kvm_amd \
                 nested=1) and use a CPU model with svm, e.g. QEMU -cpu qemu64,+svm,+npt",
            ),
            SvmUnavailable::DisabledByFirmware { locked: true } => f.write_str(
                "SVM is disabled and locked by the firmware (VM_CR.SVMDIS=1, \
                 VM_CR.LOCK=1): enable SVM Mode in the firmware setup",
            ),
            SvmUnavailable::DisabledByFirmware { locked: false } => f.write_str(
                "SVM is disabled by the firmware (VM_CR.SVMDIS=1, not locked): this \
                 hypervisor does not override the firmware's choice; enable SVM Mode in \
                 the firmware setup",
            ),
            SvmUnavailable::MissingFeature(NPT) => f.write_str(
                "the CPU or emulator lacks nested paging (NPT), which this hypervisor \
                 requires: use a CPU model with +npt (e.g. QEMU -cpu qemu64,+svm,+npt), \
                 or a nested-virtualization host that exposes npt",
            ),
            SvmUnavailable::MissingFeature(TWO_ASIDS) => f.write_str(
                "the CPU or emulator reports fewer than 2 ASIDs (ASID 0 is the host's, \
                 guests need their own), which this hypervisor requires: the CPU or \
                 emulator is too old, or the nested-virtualization host hides them",
            ),
            SvmUnavailable::MissingFeature(feature) => write!(
                f,
                "the CPU or emulator lacks {feature}, which this hypervisor requires: \
                 the CPU or emulator is too old, or the nested-virtualization host hides \
                 the feature from its guests"
            ),
        }
    }
}

/// Reads the AMD-V capabilities and checks that everything this hypervisor requires
/// is there (see [`SvmCaps::check_required`]).
///
/// `rdmsr` is only called (for VM_CR) when CPUID reports SVM.
pub fn detect<R: CpuIdReader>(
    cpuid: &CpuId<R>,
    rdmsr: impl FnMut(u32) -> u64,
) -> Result<SvmCaps, SvmUnavailable> {
    let caps = probe(cpuid, rdmsr)?;
    caps.check_required()?;
    Ok(caps)
}

/// Reads the AMD-V capabilities without judging them, so a caller can log what the
/// CPU offers before [`SvmCaps::check_required`] rejects it. Fails only when SVM is
/// absent, disabled by the firmware, or its feature leaf is missing.
pub fn probe<R: CpuIdReader>(
    cpuid: &CpuId<R>,
    mut rdmsr: impl FnMut(u32) -> u64,
) -> Result<SvmCaps, SvmUnavailable> {
    // APM Vol. 2 15.4: SVM is usable only if CPUID Fn8000_0001 ECX[SVM] is set and
    // VM_CR.SVMDIS is clear.
    let has_svm = cpuid
        .get_extended_processor_and_feature_identifiers()
        .is_some_and(|ext| ext.has_svm());
    if !has_svm {
        return Err(SvmUnavailable::NoSvm);
    }

    // Even when not locked we leave SVMDIS alone: the firmware chose to disable SVM
    // and overriding that behind the user's back would be surprising.
    let vm_cr = rdmsr(MSR_VM_CR);
    if vm_cr & VM_CR_SVMDIS != 0 {
        return Err(SvmUnavailable::DisabledByFirmware {
            locked: vm_cr & VM_CR_LOCK != 0,
        });
    }

    // APM Vol. 3 Appendix E, CPUID Fn8000_000A. raw-cpuid returns None when the
    // extended leaf range does not reach 0x8000_000A.
    let info = cpuid
        .get_svm_info()
        .ok_or(SvmUnavailable::MissingFeature(FEATURE_LEAF))?;
    Ok(SvmCaps {
        revision: info.revision(),
        asid_count: info.supported_asids(),
        npt: info.has_nested_paging(),
        lbr_virt: info.has_lbr_virtualization(),
        svm_lock: info.has_svm_lock(),
        nrip_save: info.has_nrip(),
        tsc_rate_msr: info.has_tsc_rate_msr(),
        vmcb_clean: info.has_vmcb_clean_bits(),
        flush_by_asid: info.has_flush_by_asid(),
        decode_assists: info.has_decode_assists(),
        pause_filter: info.has_pause_filter(),
        pause_filter_threshold: info.has_pause_filter_threshold(),
        avic: info.has_avic(),
        vmsave_vmload_virt: info.has_vmsave_virtualization(),
        vgif: info.has_gif(),
        vm_cr,
    })
}

impl SvmCaps {
    /// Checks the features the hypervisor cannot run without: guest memory is
    /// translated by nested paging, and the guest needs an ASID other than the
    /// host's 0 (APM Vol. 2 15.16).
    pub fn check_required(&self) -> Result<(), SvmUnavailable> {
        if !self.npt {
            return Err(SvmUnavailable::MissingFeature(NPT));
        }
        if self.asid_count < 2 {
            return Err(SvmUnavailable::MissingFeature(TWO_ASIDS));
        }
        Ok(())
    }

    /// Space-separated names of the features present, for the boot log.
    pub fn feature_list(&self) -> impl fmt::Display {
        SvmFeatureList(*self)
    }
}

struct SvmFeatureList(SvmCaps);

impl fmt::Display for SvmFeatureList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.0;
        let mut sep = "";
        let mut item = |f: &mut fmt::Formatter<'_>, args: fmt::Arguments<'_>| {
            let r = write!(f, "{sep}{args}");
            sep = " ";
            r
        };
        if c.npt {
            item(f, format_args!("NPT"))?;
        }
        if c.nrip_save {
            item(f, format_args!("NRIPS"))?;
        }
        // An SVM CPU always has ASIDs; 0 means the feature leaf said nothing useful.
        if c.asid_count != 0 {
            item(f, format_args!("ASIDs={}", c.asid_count))?;
        }
        let flags = [
            (c.decode_assists, "decode-assists"),
            (c.flush_by_asid, "flush-by-asid"),
            (c.vmcb_clean, "vmcb-clean"),
            (c.lbr_virt, "lbr-virt"),
            (c.pause_filter, "pause-filter"),
            (c.avic, "AVIC"),
        ];
        for (_, name) in flags.iter().filter(|(present, _)| *present) {
            item(f, format_args!("{name}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::cell::RefCell;
    use std::string::ToString;
    use std::vec::Vec;

    use raw_cpuid::CpuIdResult;

    use super::*;

    const fn r(eax: u32, ebx: u32, ecx: u32, edx: u32) -> CpuIdResult {
        CpuIdResult { eax, ebx, ecx, edx }
    }

    const AMD_LEAF0: CpuIdResult = r(0x10, 0x6874_7541, 0x444d_4163, 0x6974_6e65); // "AuthenticAMD"
    const INTEL_LEAF0: CpuIdResult = r(0x16, 0x756e_6547, 0x6c65_746e, 0x4965_6e69); // "GenuineIntel"
    const SVM_BIT: u32 = 1 << 2;

    #[derive(Clone, Copy)]
    struct FakeCpu {
        leaf0: CpuIdResult,
        max_ext: u32,
        ext1_ecx: u32,
        svm_leaf: CpuIdResult,
    }

    impl CpuIdReader for FakeCpu {
        fn cpuid2(&self, eax: u32, _ecx: u32) -> CpuIdResult {
            match eax {
                0 => self.leaf0,
                0x8000_0000 => r(self.max_ext, 0, 0, 0),
                0x8000_0001 => r(0, 0, self.ext1_ecx, 0),
                0x8000_000A => self.svm_leaf,
                _ => r(0, 0, 0, 0),
            }
        }
    }

    /// EPYC-like: NP, LbrVirt, SVML, NRIPS, TscRate, VmcbClean, FlushByAsid,
    /// DecodeAssists, PauseFilter, PauseFilterThreshold, AVIC, V_VMSAVE, vGIF.
    const EPYC_EDX: u32 = 0b1_1011_0100_1111_1111;

    fn amd(edx: u32, asids: u32) -> FakeCpu {
        FakeCpu {
            leaf0: AMD_LEAF0,
            max_ext: 0x8000_001F,
            ext1_ecx: SVM_BIT,
            svm_leaf: r(1, asids, 0, edx),
        }
    }

    fn run(cpu: FakeCpu, vm_cr: u64) -> (Result<SvmCaps, SvmUnavailable>, Vec<u32>) {
        let reads = RefCell::new(Vec::new());
        let res = detect(&CpuId::with_cpuid_reader(cpu), |msr| {
            reads.borrow_mut().push(msr);
            assert_eq!(msr, MSR_VM_CR, "rdmsr {msr:#x}: unexpected MSR");
            vm_cr
        });
        (res, reads.into_inner())
    }

    #[test]
    fn full_featured_cpu() {
        let (caps, reads) = run(amd(EPYC_EDX, 32768), 0x8);
        let caps = caps.unwrap();
        assert_eq!(reads, [MSR_VM_CR]);
        assert_eq!(caps.revision, 1);
        assert_eq!(caps.asid_count, 32768);
        assert_eq!(caps.vm_cr, 0x8);
        assert!(caps.npt && caps.lbr_virt && caps.svm_lock && caps.nrip_save);
        assert!(caps.tsc_rate_msr && caps.vmcb_clean && caps.flush_by_asid);
        assert!(caps.decode_assists && caps.pause_filter && caps.pause_filter_threshold);
        assert!(caps.avic && caps.vmsave_vmload_virt && caps.vgif);
        assert_eq!(
            caps.feature_list().to_string(),
            "NPT NRIPS ASIDs=32768 decode-assists flush-by-asid vmcb-clean lbr-virt \
             pause-filter AVIC"
        );
    }

    #[test]
    fn qemu_tcg_like_cpu() {
        // QEMU TCG with +svm,+npt: NPT but no NRIP save (see shared/PLATFORM.md).
        let (caps, _) = run(amd(1 << 0, 16), 0);
        let caps = caps.unwrap();
        assert!(caps.npt && !caps.nrip_save && !caps.avic && !caps.decode_assists);
        assert_eq!(caps.feature_list().to_string(), "NPT ASIDs=16");
    }

    type Field = fn(&SvmCaps) -> bool;

    #[test]
    fn individual_bits_decode() {
        let bits: [(u32, Field); 13] = [
            (0, |c| c.npt),
            (1, |c| c.lbr_virt),
            (2, |c| c.svm_lock),
            (3, |c| c.nrip_save),
            (4, |c| c.tsc_rate_msr),
            (5, |c| c.vmcb_clean),
            (6, |c| c.flush_by_asid),
            (7, |c| c.decode_assists),
            (10, |c| c.pause_filter),
            (12, |c| c.pause_filter_threshold),
            (13, |c| c.avic),
            (15, |c| c.vmsave_vmload_virt),
            (16, |c| c.vgif),
        ];
        for (bit, get) in bits {
            let cpu = amd(1 << bit, 8);
            let caps = probe(&CpuId::with_cpuid_reader(cpu), |_| 0).unwrap();
            assert!(get(&caps), "bit {bit} not decoded");
            for (other, get_other) in bits {
                if other != bit {
                    assert!(!get_other(&caps), "bit {bit} also set field of bit {other}");
                }
            }
        }
    }

    #[test]
    fn no_svm_reads_no_msr() {
        let mut cpu = amd(EPYC_EDX, 8);
        cpu.ext1_ecx = 0;
        let (res, reads) = run(cpu, 0);
        assert_eq!(res, Err(SvmUnavailable::NoSvm));
        assert!(reads.is_empty());
    }

    #[test]
    fn no_svm_when_extended_leaf_missing() {
        let mut cpu = amd(EPYC_EDX, 8);
        cpu.max_ext = 0x8000_0000;
        let (res, reads) = run(cpu, 0);
        assert_eq!(res, Err(SvmUnavailable::NoSvm));
        assert!(reads.is_empty());
    }

    #[test]
    fn intel_cpu_has_no_svm() {
        let mut cpu = amd(EPYC_EDX, 8);
        cpu.leaf0 = INTEL_LEAF0;
        let (res, reads) = run(cpu, 0);
        assert_eq!(res, Err(SvmUnavailable::NoSvm));
        assert!(reads.is_empty());
    }

    #[test]
    fn firmware_disabled_locked_and_unlocked() {
        let (res, _) = run(amd(EPYC_EDX, 8), VM_CR_SVMDIS | VM_CR_LOCK);
        assert_eq!(
            res,
            Err(SvmUnavailable::DisabledByFirmware { locked: true })
        );
        let (res, _) = run(amd(EPYC_EDX, 8), VM_CR_SVMDIS);
        assert_eq!(
            res,
            Err(SvmUnavailable::DisabledByFirmware { locked: false })
        );
        // LOCK alone (SVMDIS clear) is the normal state on many boards.
        let (res, _) = run(amd(EPYC_EDX, 8), VM_CR_LOCK);
        assert!(res.is_ok());
    }

    #[test]
    fn missing_npt() {
        let (res, _) = run(amd(EPYC_EDX & !1, 8), 0);
        assert_eq!(res, Err(SvmUnavailable::MissingFeature(NPT)));
        let msg = res.unwrap_err().to_string();
        assert!(
            msg.contains("nested paging (NPT)") && msg.contains("+npt"),
            "{msg}"
        );
    }

    #[test]
    fn too_few_asids() {
        let (res, _) = run(amd(EPYC_EDX, 1), 0);
        assert_eq!(res, Err(SvmUnavailable::MissingFeature(TWO_ASIDS)));
        assert!(res.unwrap_err().to_string().contains("fewer than 2 ASIDs"));
        assert!(run(amd(EPYC_EDX, 2), 0).0.is_ok());
    }

    #[test]
    fn missing_feature_leaf() {
        let mut cpu = amd(EPYC_EDX, 8);
        cpu.max_ext = 0x8000_0008;
        let (res, reads) = run(cpu, 0);
        assert_eq!(res, Err(SvmUnavailable::MissingFeature(FEATURE_LEAF)));
        assert_eq!(reads, [MSR_VM_CR]);
    }

    #[test]
    fn messages_say_how_to_fix() {
        let no = SvmUnavailable::NoSvm.to_string();
        assert!(no.contains("CPUID reports no SVM") && no.contains("kvm_amd nested=1"));
        assert!(no.contains("qemu64,+svm,+npt"));
        let locked = SvmUnavailable::DisabledByFirmware { locked: true }.to_string();
        assert!(locked.contains("disabled and locked by the firmware"));
        assert!(locked.contains("enable SVM Mode in the firmware setup"));
        let unlocked = SvmUnavailable::DisabledByFirmware { locked: false }.to_string();
        assert!(unlocked.contains("does not override"));
        let other = SvmUnavailable::MissingFeature("frobnication").to_string();
        assert!(other.contains("frobnication") && other.contains("too old"));
    }
}
