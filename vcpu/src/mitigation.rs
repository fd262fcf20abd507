//! Transient-execution mitigations on the VM exit/entry path: which ones this
//! processor needs and has, decided from CPUID and IA32_ARCH_CAPABILITIES (pure, so
//! host-tested), and the return-stack refill sequence both entry stubs include.
//!
//! What is decided (the kernel applies it; the boot report prints [`Mitigations`]):
//!
//! - **IBPB when a processor switches VMs.** Branch predictions trained by one guest
//!   could steer another guest's indirect branches (Spectre variant 2, branch target
//!   injection). Writing 1 to IA32_PRED_CMD (49H) is an indirect branch prediction
//!   barrier: code after it is not steered by predictions made before it (Intel,
//!   "Speculative Execution Side Channel Mitigations", doc. 336996, "Indirect
//!   Branch Predictor Barrier"; AMD, "Software Techniques for Managing Speculation
//!   on AMD Processors", mitigation V2-4 / IBPB). The MSR exists when Intel's
//!   CPUID.(EAX=7,ECX=0):EDX[26] (IBRS_IBPB) or AMD's CPUID 8000_0008 EBX[12]
//!   (IBPB) says so; writing it on a processor without it raises #GP.
//! - **Return stack buffer refill after every exit.** After a VM exit the RSB still
//!   holds return targets the guest's CALLs pushed; a host RET that underflows or
//!   mispredicts can speculatively run at a guest-chosen address. Intel tells VMMs
//!   to overwrite the RSB on VM exit (doc. 336996, "Return Stack Buffer"; also with
//!   enhanced IBRS, which does not cover the RSB, and for post-barrier RSB
//!   predictions, PBRSB), and AMD likewise (the same AMD paper, mitigation V2-3,
//!   "RSB stuffing ... on VMEXIT"). It is done always: 32 CALLs whose speculation
//!   traps are never reached architecturally, a few tens of cycles against an exit
//!   that costs thousands, and there is no enumeration that makes it safe to skip on
//!   both vendors. [`rsb_fill_asm!`] is the one sequence.
//! - **L1D flush before VM entry (Intel).** L1 Terminal Fault (L1TF, "Foreshadow-NG")
//!   lets a guest read any host data in the L1 data cache through a not-present
//!   guest page-table entry, whatever EPT maps (Intel, "Deep Dive: Intel Analysis of
//!   L1 Terminal Fault", "L1D flush on VMENTER"). Writing 1 to IA32_FLUSH_CMD (10BH)
//!   bit 0 empties L1D; the MSR exists with CPUID.(7,0):EDX[28] (L1D_FLUSH). Not
//!   needed when IA32_ARCH_CAPABILITIES says RDCL_NO (bit 0: not affected by rogue
//!   data cache load, hence not by L1TF) or SKIP_L1DFL_VMENTRY (bit 3: a VMM below
//!   already flushes). AMD processors are not affected by L1TF (AMD, "Speculation
//!   Behavior in AMD Micro-Architectures" and AMD's L1TF statement: their page
//!   walks do not forward data for not-present entries).
//! - **VERW before VM entry (Intel).** Microarchitectural Data Sampling (MDS) and
//!   TSX Asynchronous Abort (TAA) leak stale data from the fill, store and load
//!   buffers; with the MD_CLEAR microcode (CPUID.(7,0):EDX[10]) the memory-operand
//!   form of VERW overwrites them (Intel, "Deep Dive: Intel Analysis of
//!   Microarchitectural Data Sampling", "VERW" and "VMM"). Not needed with MDS_NO
//!   (bit 5) unless the processor has TSX (RTM, CPUID.(7,0):EBX[11]) without TAA_NO
//!   (bit 8): TAA reaches the same buffers on MDS_NO parts (Intel, "Deep Dive: TSX
//!   Asynchronous Abort"). Not needed either when the L1D flush runs: on processors
//!   with MD_CLEAR, the L1D_FLUSH command overwrites those buffers too (the MDS deep
//!   dive, "L1D_FLUSH"), which is why KVM does one or the other. AMD processors are
//!   not affected by MDS or TAA (AMD's MDS statement).
//!
//! Without IA32_ARCH_CAPABILITIES an Intel processor is taken to be affected, as
//! Linux does. Everything else stays unmitigated (see the README's hardening
//! section): no IBRS/STIBP, no core scheduling for SMT siblings.

use core::fmt;

/// IA32_PRED_CMD: bit 0 is the IBPB command.
pub const MSR_PRED_CMD: u32 = 0x49;
/// IA32_ARCH_CAPABILITIES.
pub const MSR_ARCH_CAPABILITIES: u32 = 0x10A;
/// IA32_FLUSH_CMD: bit 0 is the L1D flush command.
pub const MSR_FLUSH_CMD: u32 = 0x10B;

/// CPUID.(EAX=7,ECX=0):EDX bits (Intel SDM Vol. 2A, CPUID; doc. 336996).
pub mod leaf7_edx {
    pub const MD_CLEAR: u32 = 1 << 10;
    pub const IBRS_IBPB: u32 = 1 << 26;
    pub const L1D_FLUSH: u32 = 1 << 28;
    pub const ARCH_CAPABILITIES: u32 = 1 << 29;
}
/// CPUID.(EAX=7,ECX=0):EBX[11], RTM (TSX).
pub const LEAF7_EBX_RTM: u32 = 1 << 11;
/// CPUID 8000_0008 EBX[12], AMD's IBPB (AMD APM Vol. 3, CPUID Fn8000_0008_EBX).
pub const EXT8_EBX_IBPB: u32 = 1 << 12;

/// IA32_ARCH_CAPABILITIES bits (Intel SDM Vol. 4 Table 2-2).
pub mod arch_cap {
    pub const RDCL_NO: u64 = 1 << 0;
    pub const SKIP_L1DFL_VMENTRY: u64 = 1 << 3;
    pub const MDS_NO: u64 = 1 << 5;
    pub const TAA_NO: u64 = 1 << 8;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    Intel,
    /// AMD and Hygon.
    Amd,
    /// Anything else: only what CPUID enumerates is used, as for Intel.
    Other,
}

/// What the decision reads from the processor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuFacts {
    pub vendor: Vendor,
    /// CPUID.(7,0).EBX, 0 when leaf 7 is missing.
    pub leaf7_ebx: u32,
    /// CPUID.(7,0).EDX, 0 when leaf 7 is missing.
    pub leaf7_edx: u32,
    /// CPUID 8000_0008 EBX, 0 when the leaf is missing.
    pub ext8_ebx: u32,
    /// IA32_ARCH_CAPABILITIES, read only when `leaf7_edx` has ARCH_CAPABILITIES
    /// (`None` otherwise: the MSR does not exist).
    pub arch_capabilities: Option<u64>,
}

/// One mitigation's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Applied.
    Yes,
    /// The processor is not affected (why).
    NotNeeded(&'static str),
    /// Needed but the processor cannot do it (why).
    Unavailable(&'static str),
}

impl Verdict {
    pub fn active(self) -> bool {
        self == Verdict::Yes
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Yes => f.write_str("yes"),
            Verdict::NotNeeded(why) => write!(f, "not needed: {why}"),
            Verdict::Unavailable(why) => write!(f, "no: {why}"),
        }
    }
}

/// What runs just before a VT-x VM entry (at most one: the L1D flush covers VERW).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EntryFlush {
    #[default]
    None,
    L1d,
    Verw,
}

/// The decision for this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mitigations {
    pub ibpb_on_vm_switch: Verdict,
    /// Always `Yes`: see the module header.
    pub rsb_refill_after_exit: Verdict,
    pub l1d_flush_before_entry: Verdict,
    pub verw_before_entry: Verdict,
}

impl Mitigations {
    /// Decides every mitigation from `facts`.
    pub fn decide(facts: &CpuFacts) -> Self {
        let edx = facts.leaf7_edx;
        let caps = facts.arch_capabilities.unwrap_or(0);
        let has = |bit: u64| caps & bit != 0;

        let ibpb = if edx & leaf7_edx::IBRS_IBPB != 0 || facts.ext8_ebx & EXT8_EBX_IBPB != 0 {
            Verdict::Yes
        } else {
            Verdict::Unavailable("CPU lacks IBPB")
        };

        let l1d = if facts.vendor == Vendor::Amd {
            Verdict::NotNeeded("AMD is not affected by L1TF")
        } else if has(arch_cap::RDCL_NO) {
            Verdict::NotNeeded("RDCL_NO")
        } else if has(arch_cap::SKIP_L1DFL_VMENTRY) {
            Verdict::NotNeeded("SKIP_L1DFL_VMENTRY")
        } else if edx & leaf7_edx::L1D_FLUSH == 0 {
            Verdict::Unavailable("CPU lacks L1D_FLUSH")
        } else {
            Verdict::Yes
        };

        let taa_affected = facts.leaf7_ebx & LEAF7_EBX_RTM != 0 && !has(arch_cap::TAA_NO);
        let verw = if facts.vendor == Vendor::Amd {
            Verdict::NotNeeded("AMD is not affected by MDS")
        } else if has(arch_cap::MDS_NO) && !taa_affected {
            Verdict::NotNeeded(if facts.leaf7_ebx & LEAF7_EBX_RTM != 0 {
                "MDS_NO, TAA_NO"
            } else {
                "MDS_NO, no TSX"
            })
        } else if edx & leaf7_edx::MD_CLEAR == 0 {
            Verdict::Unavailable("CPU lacks MD_CLEAR")
        } else if l1d.active() {
            Verdict::NotNeeded("the L1D flush clears the buffers")
        } else {
            Verdict::Yes
        };

        Mitigations {
            ibpb_on_vm_switch: ibpb,
            rsb_refill_after_exit: Verdict::Yes,
            l1d_flush_before_entry: l1d,
            verw_before_entry: verw,
        }
    }

    /// What the VT-x entry path does (AMD-V needs neither).
    pub fn entry_flush(&self) -> EntryFlush {
        if self.l1d_flush_before_entry.active() {
            EntryFlush::L1d
        } else if self.verw_before_entry.active() {
            EntryFlush::Verw
        } else {
            EntryFlush::None
        }
    }
}

/// The boot report's wording: `IBPB on VM switch (yes), RSB refill after exit (yes),
/// L1D flush before entry (not needed: RDCL_NO), VERW before entry (no: CPU lacks
/// MD_CLEAR)`.
impl fmt::Display for Mitigations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "IBPB on VM switch ({}), RSB refill after exit ({}), L1D flush before entry ({}), VERW before entry ({})",
            self.ibpb_on_vm_switch,
            self.rsb_refill_after_exit,
            self.l1d_flush_before_entry,
            self.verw_before_entry
        )
    }
}

/// The return stack buffer refill, as one assembly string for `concat!` in the
/// VT-x and AMD-V entry stubs, right after the exit and before the host's first
/// RET: 16 rounds of two CALLs (32 entries, more than any RSB holds: Intel and AMD
/// parts have at most 32), each CALL skipping a PAUSE/LFENCE loop that only a
/// speculative RET into a stuffed entry reaches and where it stays harmlessly, then
/// one RSP adjustment that drops the 32 return addresses. The pattern is the one
/// Intel's doc. 336996 describes ("RSB stuffing") and Linux's FILL_RETURN_BUFFER.
///
/// Clobbers RAX and the flags; uses 256 bytes of stack below RSP. Local labels
/// 41-45.
#[macro_export]
macro_rules! rsb_fill_asm {
    () => {
        "mov eax, 16
        41:
        call 42f
        43:
        pause
        lfence
        jmp 43b
        42:
        call 44f
        45:
        pause
        lfence
        jmp 45b
        44:
        dec eax
        jnz 41b
        add rsp, 256"
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt::Write;

    const INTEL_ALL: u32 = leaf7_edx::MD_CLEAR
        | leaf7_edx::IBRS_IBPB
        | leaf7_edx::L1D_FLUSH
        | leaf7_edx::ARCH_CAPABILITIES;

    fn intel(edx: u32, ebx: u32, caps: Option<u64>) -> Mitigations {
        Mitigations::decide(&CpuFacts {
            vendor: Vendor::Intel,
            leaf7_ebx: ebx,
            leaf7_edx: edx,
            ext8_ebx: 0,
            arch_capabilities: caps,
        })
    }

    fn amd(ext8_ebx: u32) -> Mitigations {
        Mitigations::decide(&CpuFacts {
            vendor: Vendor::Amd,
            leaf7_ebx: 0,
            leaf7_edx: 0,
            ext8_ebx,
            arch_capabilities: None,
        })
    }

    #[test]
    fn rsb_refill_is_always_on() {
        assert_eq!(amd(0).rsb_refill_after_exit, Verdict::Yes);
        assert_eq!(intel(0, 0, None).rsb_refill_after_exit, Verdict::Yes);
        assert_eq!(
            intel(INTEL_ALL, 0, Some(u64::MAX)).rsb_refill_after_exit,
            Verdict::Yes
        );
    }

    /// IBPB: Intel's CPUID.(7,0):EDX[26] or AMD's 8000_0008 EBX[12] (Intel doc.
    /// 336996, "CPUID Enumeration"; AMD, "Software Techniques for Managing
    /// Speculation", "Indirect Branch Prediction Barrier").
    #[test]
    fn ibpb_follows_either_enumeration() {
        assert_eq!(amd(EXT8_EBX_IBPB).ibpb_on_vm_switch, Verdict::Yes);
        assert_eq!(
            amd(0).ibpb_on_vm_switch,
            Verdict::Unavailable("CPU lacks IBPB")
        );
        assert_eq!(
            intel(leaf7_edx::IBRS_IBPB, 0, None).ibpb_on_vm_switch,
            Verdict::Yes
        );
        assert_eq!(
            intel(INTEL_ALL & !leaf7_edx::IBRS_IBPB, 0, Some(0)).ibpb_on_vm_switch,
            Verdict::Unavailable("CPU lacks IBPB")
        );
    }

    /// AMD is affected by neither L1TF nor MDS: no entry flush, whatever CPUID says.
    #[test]
    fn amd_needs_no_entry_flush() {
        let m = Mitigations::decide(&CpuFacts {
            vendor: Vendor::Amd,
            leaf7_ebx: LEAF7_EBX_RTM,
            leaf7_edx: INTEL_ALL,
            ext8_ebx: EXT8_EBX_IBPB,
            arch_capabilities: Some(0),
        });
        assert_eq!(
            m.l1d_flush_before_entry,
            Verdict::NotNeeded("AMD is not affected by L1TF")
        );
        assert_eq!(
            m.verw_before_entry,
            Verdict::NotNeeded("AMD is not affected by MDS")
        );
        assert_eq!(m.entry_flush(), EntryFlush::None);
    }

    /// An affected Intel part with the microcode: L1D flush, and no VERW (the flush
    /// overwrites the MDS buffers too: Intel's MDS deep dive).
    #[test]
    fn intel_affected_flushes_l1d_which_covers_verw() {
        for caps in [None, Some(0)] {
            let m = intel(INTEL_ALL, 0, caps);
            assert_eq!(m.l1d_flush_before_entry, Verdict::Yes);
            assert_eq!(
                m.verw_before_entry,
                Verdict::NotNeeded("the L1D flush clears the buffers")
            );
            assert_eq!(m.entry_flush(), EntryFlush::L1d);
        }
    }

    /// RDCL_NO: not affected by L1TF (Intel's L1TF deep dive); MDS still applies
    /// without MDS_NO, so VERW runs.
    #[test]
    fn rdcl_no_skips_l1d_flush_but_not_verw() {
        let m = intel(INTEL_ALL, 0, Some(arch_cap::RDCL_NO));
        assert_eq!(m.l1d_flush_before_entry, Verdict::NotNeeded("RDCL_NO"));
        assert_eq!(m.verw_before_entry, Verdict::Yes);
        assert_eq!(m.entry_flush(), EntryFlush::Verw);
    }

    /// SKIP_L1DFL_VMENTRY: a VMM below flushes already (SDM Vol. 4 Table 2-2).
    #[test]
    fn skip_l1dfl_vmentry_skips_l1d_flush() {
        let m = intel(INTEL_ALL, 0, Some(arch_cap::SKIP_L1DFL_VMENTRY));
        assert_eq!(
            m.l1d_flush_before_entry,
            Verdict::NotNeeded("SKIP_L1DFL_VMENTRY")
        );
        assert_eq!(m.entry_flush(), EntryFlush::Verw);
    }

    #[test]
    fn affected_without_microcode_says_so() {
        let m = intel(0, 0, None);
        assert_eq!(
            m.l1d_flush_before_entry,
            Verdict::Unavailable("CPU lacks L1D_FLUSH")
        );
        assert_eq!(
            m.verw_before_entry,
            Verdict::Unavailable("CPU lacks MD_CLEAR")
        );
        assert_eq!(m.entry_flush(), EntryFlush::None);
        // MD_CLEAR without L1D_FLUSH: VERW alone.
        let m = intel(leaf7_edx::MD_CLEAR, 0, None);
        assert_eq!(m.verw_before_entry, Verdict::Yes);
        assert_eq!(m.entry_flush(), EntryFlush::Verw);
    }

    /// MDS_NO without TSX, or with TAA_NO: no VERW. MDS_NO with TSX but without
    /// TAA_NO: TAA reaches the same buffers, VERW stays (Intel's TAA deep dive).
    #[test]
    fn mds_no_and_taa() {
        let fixed = arch_cap::RDCL_NO | arch_cap::MDS_NO;
        let m = intel(INTEL_ALL, 0, Some(fixed));
        assert_eq!(m.verw_before_entry, Verdict::NotNeeded("MDS_NO, no TSX"));
        assert_eq!(m.entry_flush(), EntryFlush::None);
        let m = intel(INTEL_ALL, LEAF7_EBX_RTM, Some(fixed | arch_cap::TAA_NO));
        assert_eq!(m.verw_before_entry, Verdict::NotNeeded("MDS_NO, TAA_NO"));
        let m = intel(INTEL_ALL, LEAF7_EBX_RTM, Some(fixed));
        assert_eq!(m.verw_before_entry, Verdict::Yes);
        assert_eq!(m.entry_flush(), EntryFlush::Verw);
    }

    #[test]
    fn report_wording() {
        struct Buf([u8; 256], usize);
        impl Write for Buf {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                let end = self.1 + s.len();
                self.0.get_mut(self.1..end).ok_or(fmt::Error)?;
                self.0[self.1..end].copy_from_slice(s.as_bytes());
                self.1 = end;
                Ok(())
            }
        }
        let mut b = Buf([0; 256], 0);
        write!(b, "{}", amd(0)).unwrap();
        assert_eq!(
            core::str::from_utf8(&b.0[..b.1]).unwrap(),
            "IBPB on VM switch (no: CPU lacks IBPB), RSB refill after exit (yes), \
             L1D flush before entry (not needed: AMD is not affected by L1TF), \
             VERW before entry (not needed: AMD is not affected by MDS)"
        );
    }
}
