//! What guests see of the processor: the CPUID view (no VMX/SVM, the hypervisor-present
//! bit, this project's leaves at 0x4000_0000), the MSR allow-list (everything else is
//! #GP), and the hypercall ABI. Vendor-neutral and pure: host-tested.

/// The 12-byte signature at CPUID 0x4000_0000 (EBX, ECX, EDX).
pub const SIGNATURE: &[u8; 12] = b"hv-baremetal";
pub const MAX_HYPERVISOR_LEAF: u32 = 0x4000_0001;
pub const INTERFACE_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidResult {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

mod bits {
    pub const L1_ECX_MONITOR: u32 = 1 << 3;
    pub const L1_ECX_VMX: u32 = 1 << 5;
    pub const L1_ECX_X2APIC: u32 = 1 << 21;
    pub const L1_ECX_XSAVE: u32 = 1 << 26;
    pub const L1_ECX_OSXSAVE: u32 = 1 << 27;
    pub const L1_ECX_AVX: u32 = 1 << 28;
    pub const L1_ECX_HYPERVISOR: u32 = 1 << 31;
    pub const L1_EDX_MCE: u32 = 1 << 7;
    pub const L1_EDX_HTT: u32 = 1 << 28;
    pub const EXT1_ECX_CMP_LEGACY: u32 = 1 << 1;
    pub const L1_EDX_MCA: u32 = 1 << 14;
    pub const EXT1_ECX_SVM: u32 = 1 << 2;
    pub const L7_EBX_AVX2: u32 = 1 << 5;
    pub const L7_EBX_AVX512F: u32 = 1 << 16;
    /// Leaf 7 features whose state the hypervisor does not switch between guests
    /// (PKRU, the CET and PKS MSRs, UINTR and Key Locker state): hidden, so their CR4
    /// bits stay reserved for guests (see `vcpu::cr_policy`).
    pub const L7_ECX_UNSWITCHED: u32 = (1 << 3) | (1 << 4) | (1 << 7) | (1 << 23) | (1 << 31);
    pub const L7_EDX_UNSWITCHED: u32 = (1 << 5) | (1 << 20);
    /// Leaf 7 subleaf 1 EAX: FRED (17) and LAM (26).
    pub const L7_1_EAX_UNSWITCHED: u32 = (1 << 17) | (1 << 26);
}

/// Where the executing vCPU sits in its VM: `cpus` single-threaded cores in one
/// package, this one with APIC ID `apic_id` (its index in the VM).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Topology {
    pub apic_id: u32,
    pub cpus: u32,
}

impl Topology {
    /// Bits of the APIC ID that number the cores of the package: ceil(log2(cpus)).
    fn core_bits(&self) -> u32 {
        self.cpus.max(1).next_power_of_two().trailing_zeros()
    }

    /// The extended topology leaves 0xB and 0x1F (SDM Vol. 2A CPUID): level 0 is SMT
    /// with one thread per core, level 1 the cores; EDX is the x2APIC ID.
    fn extended_leaf(&self, subleaf: u32) -> CpuidResult {
        let (eax, ebx, kind) = match subleaf {
            0 => (0, 1, 1),                               // SMT: shift 0, 1 thread
            1 => (self.core_bits(), self.cpus.max(1), 2), // core level
            _ => (0, 0, 0),                               // invalid level
        };
        CpuidResult {
            eax,
            ebx,
            ecx: (kind << 8) | (subleaf & 0xFF),
            edx: self.apic_id,
        }
    }
}

/// The guest's view of CPUID `leaf`/`subleaf`, derived from the host's answer.
///
/// Hidden on purpose: VMX and SVM (no nested virtualization), MONITOR/MWAIT (not
/// emulated), x2APIC (no virtual x2APIC yet), XSAVE with the AVX family (the
/// hypervisor does not switch XCR0 between guests, so a guest must not be told it may
/// use XSETBV), the machine-check architecture (its MSR banks are not emulated; Linux
/// panics when an advertised MCG MSR faults) and architectural performance monitoring
/// (leaf 0xA: its counters are host state).
///
/// The topology leaves describe the VM, not the host: leaf 1 EBX (initial APIC ID,
/// logical processor count with HTT), leaf 4's core counts, 0xB/0x1F, and on AMD
/// 0x8000_0008 ECX (core count) and 0x8000_001E (APIC/core/node IDs), with CmpLegacy.
pub fn cpuid(
    leaf: u32,
    subleaf: u32,
    host: impl Fn(u32, u32) -> CpuidResult,
    topo: &Topology,
) -> CpuidResult {
    use bits::*;
    let cpus = topo.cpus.max(1);
    let max_basic = host(0, 0).eax;
    match leaf {
        0x4000_0000 => CpuidResult {
            eax: MAX_HYPERVISOR_LEAF,
            ebx: u32::from_le_bytes(SIGNATURE[0..4].try_into().unwrap()),
            ecx: u32::from_le_bytes(SIGNATURE[4..8].try_into().unwrap()),
            edx: u32::from_le_bytes(SIGNATURE[8..12].try_into().unwrap()),
        },
        0x4000_0001 => CpuidResult {
            eax: INTERFACE_VERSION,
            ..Default::default()
        },
        0x4000_0002..=0x4000_FFFF => CpuidResult::default(),
        1 => {
            let mut r = host(1, 0);
            r.ecx &= !(L1_ECX_VMX
                | L1_ECX_MONITOR
                | L1_ECX_X2APIC
                | L1_ECX_XSAVE
                | L1_ECX_OSXSAVE
                | L1_ECX_AVX);
            r.ecx |= L1_ECX_HYPERVISOR;
            r.edx &= !(L1_EDX_MCE | L1_EDX_MCA | L1_EDX_HTT);
            // EBX[31:24] initial APIC ID, [23:16] logical processors in the package
            // (valid with HTT, SDM Vol. 2A CPUID leaf 1).
            r.ebx &= 0x0000_FFFF;
            r.ebx |= (topo.apic_id & 0xFF) << 24 | (cpus.min(255) << 16);
            if cpus > 1 {
                r.edx |= L1_EDX_HTT;
            }
            r
        }
        // Deterministic cache parameters: EAX[31:26] cores per package - 1, [25:14]
        // logical processors sharing the cache - 1 (the last level is shared by all).
        4 if leaf <= max_basic => {
            let mut r = host(4, subleaf);
            let level = (r.eax >> 5) & 7;
            let sharing = if level >= 3 { cpus - 1 } else { 0 };
            r.eax = (r.eax & 0x3FFF) | ((cpus - 1).min(63) << 26) | (sharing.min(0xFFF) << 14);
            if r.eax & 0x1F == 0 {
                r.eax = 0; // no more caches: the whole leaf is zero
            }
            r
        }
        0xB | 0x1F if leaf <= max_basic => topo.extended_leaf(subleaf),
        7 => {
            let mut r = host(7, subleaf);
            match subleaf {
                0 => {
                    r.ebx &= !(L7_EBX_AVX2 | L7_EBX_AVX512F);
                    r.ecx &= !L7_ECX_UNSWITCHED;
                    r.edx &= !L7_EDX_UNSWITCHED;
                }
                1 => r.eax &= !L7_1_EAX_UNSWITCHED,
                _ => {}
            }
            r
        }
        0xA | 0xD => CpuidResult::default(),
        0x8000_0001 => {
            let mut r = host(leaf, subleaf);
            r.ecx &= !(EXT1_ECX_SVM | EXT1_ECX_CMP_LEGACY);
            if cpus > 1 {
                // With HTT: the logical processors are cores (AMD CPUID spec).
                r.ecx |= EXT1_ECX_CMP_LEGACY;
            }
            r
        }
        // ECX[7:0] cores - 1, [15:12] APIC ID bits for the core number.
        0x8000_0008 => {
            let mut r = host(leaf, subleaf);
            r.ecx = (r.ecx & !0xF0FF) | (topo.core_bits() << 12) | (cpus - 1).min(255);
            r
        }
        // Extended APIC ID, compute unit (core) ID with one thread each, node 0.
        0x8000_001E => CpuidResult {
            eax: topo.apic_id,
            ebx: topo.apic_id & 0xFF,
            ecx: 0,
            edx: 0,
        },
        // The SVM feature leaf describes a feature the guest does not have.
        0x8000_000A => CpuidResult::default(),
        _ => host(leaf, subleaf),
    }
}

/// MSRs every backend passes straight through in hardware: the VMCB/VMCS switches them
/// per guest, so the guest's values never leak into the host or another guest.
pub const HARDWARE_SWITCHED_MSRS: &[u32] = &[
    0x174,       // SYSENTER_CS
    0x175,       // SYSENTER_ESP
    0x176,       // SYSENTER_EIP
    0xC000_0081, // STAR
    0xC000_0082, // LSTAR
    0xC000_0083, // CSTAR
    0xC000_0084, // SFMASK
    0xC000_0100, // FS_BASE
    0xC000_0101, // GS_BASE
    0xC000_0102, // KERNEL_GS_BASE
];

pub const IA32_EFER: u32 = 0xC000_0080;
pub const IA32_TIME_STAMP_COUNTER: u32 = 0x10;
pub const IA32_FEATURE_CONTROL: u32 = 0x3A;
pub const IA32_BIOS_SIGN_ID: u32 = 0x8B;
pub const IA32_MTRRCAP: u32 = 0xFE;
pub const IA32_MISC_ENABLE: u32 = 0x1A0;
pub const IA32_PAT: u32 = 0x277;
pub const IA32_MTRR_DEF_TYPE: u32 = 0x2FF;
/// AMD K8's interrupt-pending-message register (C1E control): Linux reads it without
/// a fault handler on those CPU models. 0 = no C1E, as KVM also answers.
pub const MSR_K8_INT_PENDING_MSG: u32 = 0xC001_0055;
/// The RDTSCP/RDPID auxiliary value (SDM Vol. 4 table 2-2; bits 63:32 reserved).
pub const IA32_TSC_AUX: u32 = 0xC000_0103;

/// EFER bits a guest may set: SCE, LME, LMA, NXE. SVME (bit 12) and the rest are
/// refused with #GP, as on a processor without those features.
pub const EFER_GUEST_WRITABLE: u64 = (1 << 0) | (1 << 8) | (1 << 10) | (1 << 11);

/// The emulated MSRs of one vCPU (the local APIC's, IA32_APIC_BASE among them, belong
/// to the APIC model).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MsrState {
    pub mtrr_def_type: u64,
    /// `IA32_TSC_AUX`, per vCPU: Linux stores each CPU's number there (for RDTSCP and
    /// RDPID in the vDSO), on its APs before their IDT can catch a #GP.
    pub tsc_aux: u64,
}

/// The outcome of an intercepted RDMSR/WRMSR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsrAccess {
    /// RDMSR returns this value / WRMSR is accepted; the instruction completes.
    Value(u64),
    /// The backend owns this MSR's value (EFER, TSC, PAT in the VMCB/VMCS): the core
    /// asks the backend to read or write it (the value was already validated).
    Backend,
    /// Not on the allow-list: the guest gets #GP(0), as real hardware gives for an
    /// MSR that does not exist.
    Fault,
}

impl MsrState {
    pub fn read(&self, msr: u32) -> MsrAccess {
        match msr {
            // Locked with VMX disabled: a guest must not try VMXON.
            IA32_FEATURE_CONTROL => MsrAccess::Value(1),
            IA32_BIOS_SIGN_ID => MsrAccess::Value(0),
            // No variable or fixed MTRRs: the nested page tables decide memory types.
            IA32_MTRRCAP => MsrAccess::Value(0),
            MSR_K8_INT_PENDING_MSG => MsrAccess::Value(0),
            IA32_MTRR_DEF_TYPE => MsrAccess::Value(self.mtrr_def_type),
            IA32_MISC_ENABLE => MsrAccess::Value(1), // fast strings
            IA32_TSC_AUX => MsrAccess::Value(self.tsc_aux),
            IA32_EFER | IA32_TIME_STAMP_COUNTER | IA32_PAT => MsrAccess::Backend,
            _ => MsrAccess::Fault,
        }
    }

    pub fn write(&mut self, msr: u32, value: u64) -> MsrAccess {
        match msr {
            IA32_BIOS_SIGN_ID | IA32_MISC_ENABLE => MsrAccess::Value(value),
            IA32_TSC_AUX if value >> 32 == 0 => {
                self.tsc_aux = value;
                MsrAccess::Value(value)
            }
            IA32_MTRR_DEF_TYPE if value & !0xCFF == 0 => {
                self.mtrr_def_type = value;
                MsrAccess::Value(value)
            }
            // Each PAT entry must name a valid memory type (0, 1, 4, 5, 6, 7): #GP
            // otherwise (SDM Vol. 3A 13.12.2).
            IA32_PAT if (0..8).all(|i| matches!((value >> (i * 8)) & 0xFF, 0 | 1 | 4..=7)) => {
                MsrAccess::Backend
            }
            IA32_EFER if value & !EFER_GUEST_WRITABLE == 0 => MsrAccess::Backend,
            IA32_TIME_STAMP_COUNTER => MsrAccess::Backend,
            _ => MsrAccess::Fault,
        }
    }
}

/// The hypercall ABI (VMMCALL / VMCALL): number in RAX, result in RAX.
pub mod hypercall {
    /// Returns the interface version.
    pub const VERSION: u64 = 0;
    /// Returned for an unknown number (as -ENOSYS would be, two's complement -1).
    pub const UNKNOWN: u64 = u64::MAX;
    /// Benchmark support: run this vCPU in the shortest possible exit loop (enter,
    /// skip the CPUID, re-enter: no dispatch, no devices) until [`BENCH_BARE_END`],
    /// so a guest can compare a CPUID round trip through the full exit path with the
    /// bare cost of the VMRUN/VMRESUME round trip itself. Returns 0.
    pub const BENCH_BARE_BEGIN: u64 = 0x100;
    /// Ends the bare loop; returns 0 (inside the loop only).
    pub const BENCH_BARE_END: u64 = 0x101;

    pub fn dispatch(number: u64) -> u64 {
        match number {
            VERSION => super::INTERFACE_VERSION as u64,
            _ => UNKNOWN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(leaf: u32, _sub: u32) -> CpuidResult {
        match leaf {
            1 => CpuidResult {
                eax: 0x806e9,
                ebx: 0x0402_0800,
                ecx: !(1 << 31),
                edx: 0x1,
            },
            0x8000_0001 => CpuidResult {
                ecx: 0xffff_ffff,
                ..Default::default()
            },
            0x8000_000A => CpuidResult {
                eax: 1,
                ebx: 16,
                ecx: 0,
                edx: 0xff,
            },
            0 => CpuidResult {
                eax: 0x1F,
                ..Default::default()
            },
            _ => CpuidResult {
                eax: leaf,
                ebx: 1,
                ecx: 2,
                edx: 3,
            },
        }
    }

    const ONE: Topology = Topology {
        apic_id: 0,
        cpus: 1,
    };

    fn cpuid(leaf: u32, subleaf: u32, host: fn(u32, u32) -> CpuidResult) -> CpuidResult {
        super::cpuid(leaf, subleaf, host, &ONE)
    }

    #[test]
    fn topology_describes_the_vm() {
        let t = Topology {
            apic_id: 2,
            cpus: 3,
        };
        let r = super::cpuid(1, 0, host, &t);
        assert_eq!(r.ebx >> 24, 2, "initial APIC ID");
        assert_eq!((r.ebx >> 16) & 0xFF, 3, "logical processors");
        assert_ne!(r.edx & (1 << 28), 0, "HTT");
        assert_eq!(r.ebx & 0xFFFF, 0x0800, "the rest of EBX is the host's");
        // Leaf 0xB: SMT level then the core level with 2 bits of core ID.
        let smt = super::cpuid(0xB, 0, host, &t);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 2));
        let core = super::cpuid(0xB, 1, host, &t);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 3, 0x201, 2));
        assert_eq!(super::cpuid(0xB, 2, host, &t).ebx, 0);
        assert_eq!(super::cpuid(0x8000_0008, 0, host, &t).ecx & 0xF0FF, 0x2002);
        assert_eq!(super::cpuid(0x8000_001E, 0, host, &t).eax, 2);
        assert_ne!(
            super::cpuid(0x8000_0001, 0, host, &t).ecx & 2,
            0,
            "CmpLegacy"
        );
        // One vCPU: no HTT, one logical processor.
        let r = cpuid(1, 0, host);
        assert_eq!((r.ebx >> 16) & 0xFF, 1);
        assert_eq!(r.edx & (1 << 28), 0);
    }

    #[test]
    fn hides_virtualization_and_sets_hypervisor_bit() {
        let r = cpuid(1, 0, host);
        assert_eq!(r.ecx & (1 << 5), 0, "VMX hidden");
        assert_ne!(r.ecx & (1 << 31), 0, "hypervisor present");
        assert_eq!(r.ecx & (1 << 26), 0, "XSAVE hidden");
        assert_eq!(r.edx & ((1 << 7) | (1 << 14)), 0, "MCE/MCA hidden");
        assert_eq!(cpuid(0xA, 0, host), CpuidResult::default(), "no perfmon");
        assert_eq!(r.ebx >> 16, 1, "one logical processor, APIC ID 0");
        assert_eq!(cpuid(0x8000_0001, 0, host).ecx & (1 << 2), 0, "SVM hidden");
        assert_eq!(cpuid(0x8000_000A, 0, host), CpuidResult::default());
        assert_eq!(cpuid(5, 0, host), host(5, 0), "other leaves pass through");
        let l7 = |_: u32, _: u32| CpuidResult {
            eax: !0,
            ebx: !0,
            ecx: !0,
            edx: !0,
        };
        let r = super::cpuid(7, 0, l7, &ONE);
        assert_eq!(
            r.ecx & ((1 << 3) | (1 << 7) | (1 << 31)),
            0,
            "PKU, CET_SS, PKS"
        );
        assert_eq!(r.edx & (1 << 20), 0, "CET_IBT");
        assert_eq!(super::cpuid(7, 1, l7, &ONE).eax & (1 << 26), 0, "LAM");
    }

    #[test]
    fn hypervisor_leaves_carry_the_signature() {
        let r = cpuid(0x4000_0000, 0, host);
        assert_eq!(r.eax, MAX_HYPERVISOR_LEAF);
        let mut sig = [0u8; 12];
        sig[0..4].copy_from_slice(&r.ebx.to_le_bytes());
        sig[4..8].copy_from_slice(&r.ecx.to_le_bytes());
        sig[8..12].copy_from_slice(&r.edx.to_le_bytes());
        assert_eq!(&sig, SIGNATURE);
        assert_eq!(cpuid(0x4000_0001, 0, host).eax, INTERFACE_VERSION);
        assert_eq!(cpuid(0x4000_0100, 0, host), CpuidResult::default());
    }

    #[test]
    fn msr_allow_list() {
        let mut m = MsrState::default();
        assert_eq!(
            m.read(0xC001_0117),
            MsrAccess::Fault,
            "VM_HSAVE_PA is not the guest's"
        );
        assert_eq!(
            m.write(0xC001_0114, 0),
            MsrAccess::Fault,
            "VM_CR is not the guest's"
        );
        assert_eq!(m.read(MSR_K8_INT_PENDING_MSG), MsrAccess::Value(0));
        assert_eq!(m.write(MSR_K8_INT_PENDING_MSG, 0), MsrAccess::Fault);
        assert_eq!(m.read(IA32_EFER), MsrAccess::Backend);
        assert_eq!(m.write(IA32_EFER, 0xD01), MsrAccess::Backend);
        assert_eq!(
            m.write(IA32_EFER, 1 << 12),
            MsrAccess::Fault,
            "SVME refused"
        );
        assert_eq!(m.write(IA32_PAT, 0x0606_0606_0606_0606), MsrAccess::Backend);
        assert_eq!(m.read(IA32_PAT), MsrAccess::Backend);
        assert_eq!(
            m.write(IA32_PAT, 0x02),
            MsrAccess::Fault,
            "type 2 is reserved"
        );
        assert_eq!(m.write(IA32_MTRR_DEF_TYPE, 0xC06), MsrAccess::Value(0xC06));
        assert_eq!(m.write(IA32_TSC_AUX, 1), MsrAccess::Value(1));
        assert_eq!(m.read(IA32_TSC_AUX), MsrAccess::Value(1));
        assert_eq!(
            m.write(IA32_TSC_AUX, 1 << 32),
            MsrAccess::Fault,
            "reserved bits"
        );
        assert_eq!(m.write(IA32_MTRR_DEF_TYPE, 0x1000), MsrAccess::Fault);
    }

    #[test]
    fn hypercalls() {
        assert_eq!(hypercall::dispatch(hypercall::VERSION), 1);
        assert_eq!(hypercall::dispatch(0xdead), u64::MAX);
    }
}
