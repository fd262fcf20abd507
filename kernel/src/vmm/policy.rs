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

/// The CPUID allow-list: the feature bits a guest may see, per leaf and register.
/// A bit is here only if the hypervisor virtualises what it stands for (hardware
/// runs the instructions in guest mode and the state they touch is switched or
/// owned by the guest), or it is purely informational. Everything else is hidden:
/// VMX/SVM (no nesting), MONITOR/MWAIT, x2APIC (no virtual x2APIC), XSAVE and the
/// AVX family (XCR0 is not switched between guests), MCE/MCA (no MSR banks),
/// performance monitoring (host state), thermal and power management (ACPI, TM,
/// EST, leaf 6 but ARAT), debug store, SGX, PT, TSX, MPX, PKU (PKRU not switched),
/// INVPCID (VMX needs a control we do not set), RDPID (reads the host's TSC_AUX),
/// LA57, TSC_ADJUST, the speculation-control bits of leaf 7 EDX and 0x8000_0008 EBX
/// (their MSRs are not offered), OSVW, IBS, LWP, TOPOEXT, MONITORX.
///
/// XCR0, the XSAVE-managed state and PKRU: decided hidden, not switched. Neither
/// VMRUN nor VM entry switches XCR0 or PKRU, so offering them would take an
/// XSAVES/XRSTORS (or XSAVE/XRSTOR) of every enabled component around each entry
/// plus XCR0 and PKRU loads, and a kernel that enables CR4.OSXSAVE for itself (it
/// does not: the host runs without XSAVE state, see the README's note on AES-NI
/// and the kernel). Hidden instead, and enforced, not just unadvertised:
/// `vcpu::cr_policy` refuses CR4.OSXSAVE and CR4.PKE (#GP), so the processor itself
/// raises #UD for XSETBV/XGETBV, every VEX/EVEX instruction (AVX registers) and
/// RDPKRU/WRPKRU (`crcheck64` checks each on both vendors). x87/SSE state is per
/// vCPU (`vcpu::fpu`, FXSAVE/FXRSTOR around each entry).
pub mod allow {
    /// Leaf 1 EDX: FPU VME DE PSE TSC MSR PAE CX8 APIC SEP MTRR PGE CMOV PAT PSE36
    /// CLFSH MMX FXSR SSE SSE2 (HTT is set by the topology).
    pub const L1_EDX: u32 = (1 << 0)
        | (1 << 1)
        | (1 << 2)
        | (1 << 3)
        | (1 << 4)
        | (1 << 5)
        | (1 << 6)
        | (1 << 8)
        | (1 << 9)
        | (1 << 11)
        | (1 << 12)
        | (1 << 13)
        | (1 << 15)
        | (1 << 16)
        | (1 << 17)
        | (1 << 19)
        | (1 << 23)
        | (1 << 24)
        | (1 << 25)
        | (1 << 26);
    /// Leaf 1 ECX: SSE3 PCLMULQDQ SSSE3 CX16 PCID SSE4.1 SSE4.2 MOVBE POPCNT
    /// TSC-deadline (the local APIC model has it) AES RDRAND (hypervisor bit: set).
    pub const L1_ECX: u32 = (1 << 0)
        | (1 << 1)
        | (1 << 9)
        | (1 << 13)
        | (1 << 17)
        | (1 << 19)
        | (1 << 20)
        | (1 << 22)
        | (1 << 23)
        | (1 << 24)
        | (1 << 25)
        | (1 << 30);
    /// Leaf 7.0 EBX: FSGSBASE BMI1 FDP_EXCPTN_ONLY SMEP BMI2 ERMS FCS/FDS deprecation
    /// RDSEED ADX SMAP CLFLUSHOPT CLWB SHA.
    pub const L7_EBX: u32 = (1 << 0)
        | (1 << 3)
        | (1 << 6)
        | (1 << 7)
        | (1 << 8)
        | (1 << 9)
        | (1 << 13)
        | (1 << 18)
        | (1 << 19)
        | (1 << 20)
        | (1 << 23)
        | (1 << 24)
        | (1 << 29);
    /// Leaf 7.0 ECX: UMIP, GFNI.
    pub const L7_ECX: u32 = (1 << 2) | (1 << 8);
    /// Leaf 7.0 EDX: FSRM, MD_CLEAR (informational: VERW clears CPU buffers).
    pub const L7_EDX: u32 = (1 << 4) | (1 << 10);
    /// Leaf 6 EAX: ARAT (the APIC timer keeps running in deep C-states).
    pub const L6_EAX: u32 = 1 << 2;
    /// 0x8000_0001 EDX: the leaf-1 duplicates (AMD) and SYSCALL NX MMXEXT FFXSR
    /// Page1GB RDTSCP LM 3DNow!Ext 3DNow!.
    pub const EXT1_EDX: u32 = L1_EDX
        | (1 << 11)
        | (1 << 20)
        | (1 << 22)
        | (1 << 25)
        | (1 << 26)
        | (1 << 27)
        | (1 << 29)
        | (1 << 30)
        | (1 << 31);
    /// 0x8000_0001 ECX: LAHF/SAHF AltMovCr8 ABM SSE4A MisAlignSse 3DNowPrefetch
    /// (CmpLegacy is set by the topology).
    pub const EXT1_ECX: u32 = (1 << 0) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8);
    /// 0x8000_0007 EDX: invariant TSC.
    pub const EXT7_EDX: u32 = 1 << 8;
    /// 0x8000_0008 EBX: CLZERO.
    pub const EXT8_EBX: u32 = 1 << 0;
}

mod bits {
    pub const L1_ECX_HYPERVISOR: u32 = 1 << 31;
    pub const L1_EDX_HTT: u32 = 1 << 28;
    pub const EXT1_ECX_CMP_LEGACY: u32 = 1 << 1;
    pub const EXT8_EBX_RDPRU: u32 = 1 << 4;
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

/// The guest's view of CPUID `leaf`/`subleaf`, derived from the host's answer: the
/// feature leaves through the allow-list ([`allow`]: a feature is shown only if the
/// hypervisor virtualises it), the performance-monitoring, XSAVE, QoS, SGX and PT
/// leaves empty, this project's leaves at 0x4000_0000.
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
    // Only the leaves that need it ask the host (a CPUID exit is a hot path).
    let max_basic = || host(0, 0).eax;
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
            r.ecx = (r.ecx & allow::L1_ECX) | L1_ECX_HYPERVISOR;
            r.edx &= allow::L1_EDX;
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
        4 if leaf <= max_basic() => {
            let mut r = host(4, subleaf);
            let level = (r.eax >> 5) & 7;
            let sharing = if level >= 3 { cpus - 1 } else { 0 };
            r.eax = (r.eax & 0x3FFF) | ((cpus - 1).min(63) << 26) | (sharing.min(0xFFF) << 14);
            if r.eax & 0x1F == 0 {
                r.eax = 0; // no more caches: the whole leaf is zero
            }
            r
        }
        0xB | 0x1F if leaf <= max_basic() => topo.extended_leaf(subleaf),
        // Only subleaf 0 (EAX = 0: no further subleaves).
        7 if subleaf == 0 && leaf <= max_basic() => {
            let r = host(7, 0);
            CpuidResult {
                eax: 0,
                ebx: r.ebx & allow::L7_EBX,
                ecx: r.ecx & allow::L7_ECX,
                edx: r.edx & allow::L7_EDX,
            }
        }
        7 => CpuidResult::default(),
        6 if leaf <= max_basic() => CpuidResult {
            eax: host(6, 0).eax & allow::L6_EAX,
            ..Default::default()
        },
        // Perfmon, XSAVE, PQM/PQE, SGX, PT: none offered.
        0xA | 0xD | 0xF | 0x10 | 0x12 | 0x14 => CpuidResult::default(),
        0x8000_0001 => {
            let mut r = host(leaf, subleaf);
            r.ecx &= allow::EXT1_ECX;
            r.edx &= allow::EXT1_EDX;
            if cpus > 1 {
                // With HTT: the logical processors are cores (AMD CPUID spec).
                r.ecx |= EXT1_ECX_CMP_LEGACY;
            }
            r
        }
        // ECX[7:0] cores - 1, [15:12] APIC ID bits for the core number.
        0x8000_0008 => {
            let mut r = host(leaf, subleaf);
            r.ebx &= allow::EXT8_EBX;
            r.ecx = (r.ecx & !0xF0FF) | (topo.core_bits() << 12) | (cpus - 1).min(255);
            r.ebx &= !EXT8_EBX_RDPRU; // intercepted: #UD
            r
        }
        0x8000_0007 => CpuidResult {
            edx: host(leaf, 0).edx & allow::EXT7_EDX,
            ..Default::default()
        },
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

/// The processor vendor the guest sees (the host's): some MSR families exist on one
/// vendor's processors only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Vendor {
    #[default]
    Intel,
    Amd,
}

impl Vendor {
    /// From CPUID leaf 0's vendor string ("AuthenticAMD" and "HygonGenuine" are AMD).
    pub fn from_leaf0(r: &CpuidResult) -> Self {
        match &r.ebx.to_le_bytes() {
            b"Auth" | b"Hygo" => Vendor::Amd,
            _ => Vendor::Intel,
        }
    }
}

/// The emulated MSRs of one vCPU (the local APIC's, IA32_APIC_BASE among them, belong
/// to the APIC model).
///
/// # The MSR families, decided one by one
///
/// An MSR a processor of the advertised vendor always has, and that guests touch
/// without probing, behaves as on such a processor with the feature idle; an MSR the
/// guest's CPUID says does not exist raises #GP, as it would there. Everything not
/// listed raises #GP.
///
/// | MSRs | decision |
/// | --- | --- |
/// | EFER, TSC, PAT | the backend's (VMCB/VMCS state), validated here |
/// | SYSENTER_*, STAR/LSTAR/CSTAR/SFMASK, FS/GS/KERNEL_GS base | switched by hardware, never exit |
/// | APIC_BASE, TSC_DEADLINE, x2APIC range | the local APIC model |
/// | FEATURE_CONTROL (0x3A) | reads locked with VMX off; writes #GP (locked) |
/// | PLATFORM_ID (0x17), BIOS_SIGN_ID (0x8B), BIOS_UPDT_TRIG (0x79) | microcode: no update, reads 0, writes ignored (Intel's microcode loader reads them) |
/// | MTRRCAP, MTRR_DEF_TYPE | no variable or fixed ranges (the nested page tables decide memory types); DEF_TYPE kept |
/// | MISC_ENABLE (0x1A0) | kept as written (fast strings set at reset) |
/// | P6 perfmon PERFCTR0/1 (0xC1, 0xC2), EVNTSEL0/1 (0x186, 0x187), Intel | always present on family 6: read 0, writes ignored, as KVM without a vPMU; the other architectural counters do not exist (leaf 0xA is 0) |
/// | AMD legacy PERF_CTL0-3 / PERF_CTR0-3 (0xC001_0000-0xC001_0007) | every AMD processor has them: read 0, writes ignored (KVM does the same) |
/// | AMD SYSCFG (0xC001_0010), HWCR (0xC001_0015), NB_CFG (0xC001_001F) | read 0 (no SME, defaults), writes ignored |
/// | AMD DE_CFG (0xC001_1029) | reads LFENCE-serialising (bit 1) set, as KVM reports; writes ignored |
/// | AMD INT_PENDING_MSG (0xC001_0055) | 0: no C1E (Linux reads it unguarded on K8) |
/// | TSC_AUX (0xC000_0103) | per vCPU, bits 63:32 reserved; the backend loads it into the processor while the vCPU runs (RDTSCP, RDPID) |
/// | DEBUGCTL (0x1D9) | reads 0; writes of 0 accepted (branch tracing is not offered) |
/// | MCG_*, MC banks, SPEC_CTRL, PRED_CMD, ARCH_CAPABILITIES, TSC_ADJUST, thermal and power, perf fixed/global, VM_CR, VM_HSAVE_PA, OSVW | #GP: their CPUID bits are hidden, or they are the host's |
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MsrState {
    pub vendor: Vendor,
    pub mtrr_def_type: u64,
    pub misc_enable: u64,
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

pub const IA32_PLATFORM_ID: u32 = 0x17;
pub const IA32_BIOS_UPDT_TRIG: u32 = 0x79;
pub const IA32_DEBUGCTL: u32 = 0x1D9;
/// P6 family performance counters and event selects 0 and 1 (Intel).
pub const P6_PERF_MSRS: [u32; 4] = [0xC1, 0xC2, 0x186, 0x187];
/// AMD's legacy PERF_CTL0-3 and PERF_CTR0-3.
pub const AMD_K7_PERF: core::ops::RangeInclusive<u32> = 0xC001_0000..=0xC001_0007;
pub const AMD_SYSCFG: u32 = 0xC001_0010;
pub const AMD_HWCR: u32 = 0xC001_0015;
pub const AMD_NB_CFG: u32 = 0xC001_001F;
pub const AMD_DE_CFG: u32 = 0xC001_1029;
/// MISC_ENABLE at reset: fast-string operations enabled.
const MISC_ENABLE_RESET: u64 = 1;

impl MsrState {
    /// A vCPU's MSRs at reset, for a processor of `vendor`.
    pub fn new(vendor: Vendor) -> Self {
        Self {
            vendor,
            misc_enable: MISC_ENABLE_RESET,
            ..Self::default()
        }
    }

    /// Whether `msr` is one of the families this vendor has that read 0 and ignore
    /// writes (see the table above).
    fn idle(&self, msr: u32) -> bool {
        match self.vendor {
            Vendor::Intel => {
                P6_PERF_MSRS.contains(&msr) || matches!(msr, IA32_PLATFORM_ID | IA32_BIOS_SIGN_ID)
            }
            Vendor::Amd => {
                AMD_K7_PERF.contains(&msr)
                    || matches!(
                        msr,
                        AMD_SYSCFG
                            | AMD_HWCR
                            | AMD_NB_CFG
                            | MSR_K8_INT_PENDING_MSG
                            | IA32_BIOS_SIGN_ID
                    )
            }
        }
    }

    pub fn read(&self, msr: u32) -> MsrAccess {
        match msr {
            // Locked with VMX disabled: a guest must not try VMXON.
            IA32_FEATURE_CONTROL => MsrAccess::Value(1),
            _ if self.idle(msr) => MsrAccess::Value(0),
            // No variable or fixed MTRRs: the nested page tables decide memory types.
            IA32_MTRRCAP => MsrAccess::Value(0),
            IA32_MTRR_DEF_TYPE => MsrAccess::Value(self.mtrr_def_type),
            IA32_MISC_ENABLE => MsrAccess::Value(self.misc_enable),
            IA32_DEBUGCTL => MsrAccess::Value(0),
            AMD_DE_CFG if self.vendor == Vendor::Amd => MsrAccess::Value(1 << 1),
            // Per vCPU, in the backend: it puts the value in the processor while the
            // vCPU runs, for RDTSCP and RDPID. Linux stores each CPU's number there,
            // on its APs before their IDT can catch a #GP.
            IA32_EFER | IA32_TIME_STAMP_COUNTER | IA32_PAT | IA32_TSC_AUX => MsrAccess::Backend,
            _ => MsrAccess::Fault,
        }
    }

    pub fn write(&mut self, msr: u32, value: u64) -> MsrAccess {
        match msr {
            // Read-only, or a counter that does not count: writes vanish.
            MSR_K8_INT_PENDING_MSG => MsrAccess::Fault,
            _ if self.idle(msr) => MsrAccess::Value(value),
            IA32_BIOS_UPDT_TRIG if self.vendor == Vendor::Intel => MsrAccess::Value(value),
            AMD_DE_CFG if self.vendor == Vendor::Amd => MsrAccess::Value(value),
            IA32_MISC_ENABLE => {
                self.misc_enable = value;
                MsrAccess::Value(value)
            }
            IA32_DEBUGCTL if value == 0 => MsrAccess::Value(0),
            IA32_TSC_AUX if value >> 32 == 0 => MsrAccess::Backend,
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

/// One vCPU's answers of [`cpuid`], kept once computed: a CPUID exit is the most
/// frequent exit some guests make (a CPUID loop, or `cargo xtask bench`), and the
/// answer depends only on the host and the vCPU's topology, both fixed for the
/// vCPU's life, so it need not ask the host's CPUID again. Direct-mapped, 16
/// entries; a collision only costs a recomputation.
///
/// Host answers that differ between the host's processors (its APIC IDs, which the
/// topology leaves replace anyway; a hybrid part's core type) are those of the
/// processor the vCPU first asked on, so a guest sees the same answer wherever its
/// vCPU runs. A leaf whose answer would mirror guest state (CR4.OSXSAVE in leaf 1
/// ECX[27], CR4.PKE in leaf 7 ECX[4]; both features hidden today) must not be served
/// from here, or must clear the view when that state changes.
#[derive(Clone, Debug, Default)]
pub struct CpuidCache {
    entries: [Option<(u32, u32, CpuidResult)>; 16],
}

impl CpuidCache {
    /// The answer for `leaf`/`subleaf`, from `compute` the first time.
    pub fn get(
        &mut self,
        leaf: u32,
        subleaf: u32,
        compute: impl FnOnce() -> CpuidResult,
    ) -> CpuidResult {
        // Multiplicative hashing (Knuth), top four bits: leaves 0..N, 0x4000_00xx
        // and 0x8000_00xx spread over the slots.
        let hash = leaf.wrapping_mul(0x9E37_79B1) ^ subleaf.wrapping_mul(0x85EB_CA6B);
        let slot = &mut self.entries[(hash >> 28) as usize];
        match *slot {
            Some((l, s, r)) if l == leaf && s == subleaf => r,
            _ => {
                let r = compute();
                *slot = Some((leaf, subleaf, r));
                r
            }
        }
    }
}

/// The hypercall ABI (VMMCALL / VMCALL): number in RAX, result in RAX.
pub mod hypercall {
    /// Returns the interface version.
    pub const VERSION: u64 = 0;
    /// Returned for an unknown number: -1000, KVM's -KVM_ENOSYS (Linux
    /// `include/uapi/linux/kvm_para.h`), so a guest written for KVM reads it the same.
    pub const UNKNOWN: u64 = (-1000i64) as u64;
    /// Returned for any hypercall made from CPL > 0: -1, KVM's -KVM_EPERM (KVM_EPERM
    /// is EPERM, 1). Hypercalls are the guest kernel's, as under KVM, which checks
    /// the CPL before it looks at the number; none is documented as user-callable.
    pub const NOT_PERMITTED: u64 = (-1i64) as u64;
    /// Benchmark support: run this vCPU in the shortest possible exit loop (enter,
    /// skip the CPUID, re-enter: no dispatch, no devices) until [`BENCH_BARE_END`],
    /// so a guest can compare a CPUID round trip through the full exit path with the
    /// bare cost of the VMRUN/VMRESUME round trip itself. Returns 0. Only for a VM
    /// configured with `bench_hypercalls = true` (else [`UNKNOWN`]); the loop still
    /// ends at every host timer tick, so the vCPU's time slice and the VM's run
    /// limit hold inside it.
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
        let mut m = MsrState::new(Vendor::Amd);
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
        // The backend keeps it, to switch it with the vCPU (RDTSCP, RDPID).
        assert_eq!(m.write(IA32_TSC_AUX, 1), MsrAccess::Backend);
        assert_eq!(m.read(IA32_TSC_AUX), MsrAccess::Backend);
        assert_eq!(
            m.write(IA32_TSC_AUX, 1 << 32),
            MsrAccess::Fault,
            "reserved bits"
        );
        assert_eq!(m.write(IA32_MTRR_DEF_TYPE, 0x1000), MsrAccess::Fault);
    }

    #[test]
    fn the_cpuid_cache_answers_as_cpuid_does() {
        let topo = Topology {
            apic_id: 1,
            cpus: 2,
        };
        let mut cache = CpuidCache::default();
        let asked = core::cell::Cell::new(0);
        let counting = |leaf, sub| {
            asked.set(asked.get() + 1);
            host(leaf, sub)
        };
        let keys: Vec<(u32, u32)> = (0..0x20)
            .flat_map(|l| [(l, 0), (l, 1)])
            .chain((0x4000_0000..0x4000_0003).map(|l| (l, 0)))
            .chain((0x8000_0000..0x8000_0020).map(|l| (l, 0)))
            .collect();
        for _ in 0..3 {
            for &(leaf, sub) in &keys {
                let want = super::cpuid(leaf, sub, host, &topo);
                assert_eq!(
                    cache.get(leaf, sub, || super::cpuid(leaf, sub, counting, &topo)),
                    want,
                    "{leaf:#x}/{sub}"
                );
            }
        }
        // Asked again only on collisions, never for a leaf just answered.
        let before = asked.get();
        for _ in 0..10 {
            cache.get(1, 0, || super::cpuid(1, 0, counting, &topo));
        }
        assert!(asked.get() <= before + 1);
    }

    #[test]
    fn hypercalls() {
        assert_eq!(hypercall::dispatch(hypercall::VERSION), 1);
        assert_eq!(hypercall::dispatch(0xdead), (-1000i64) as u64);
    }

    #[test]
    fn msr_families_by_vendor() {
        let mut amd = MsrState::new(Vendor::Amd);
        for msr in 0xC001_0000..=0xC001_0007 {
            assert_eq!(amd.read(msr), MsrAccess::Value(0), "{msr:#x}");
            assert_eq!(amd.write(msr, 0x1234), MsrAccess::Value(0x1234));
            assert_eq!(amd.read(msr), MsrAccess::Value(0), "writes are ignored");
        }
        assert_eq!(amd.read(AMD_DE_CFG), MsrAccess::Value(2));
        assert_eq!(amd.read(0xC1), MsrAccess::Fault, "P6 counters are Intel's");
        let mut intel = MsrState::new(Vendor::Intel);
        for msr in P6_PERF_MSRS {
            assert_eq!(intel.read(msr), MsrAccess::Value(0));
            assert_eq!(intel.write(msr, 5), MsrAccess::Value(5));
        }
        assert_eq!(intel.read(0xC001_0004), MsrAccess::Fault, "AMD's counters");
        assert_eq!(
            intel.read(0xC3),
            MsrAccess::Fault,
            "leaf 0xA says no more counters"
        );
        assert_eq!(
            intel.read(0x48),
            MsrAccess::Fault,
            "SPEC_CTRL is not offered"
        );
        // MISC_ENABLE keeps what the guest writes.
        assert_eq!(intel.read(IA32_MISC_ENABLE), MsrAccess::Value(1));
        intel.write(IA32_MISC_ENABLE, (1 << 22) | 1);
        assert_eq!(
            intel.read(IA32_MISC_ENABLE),
            MsrAccess::Value((1 << 22) | 1)
        );
        assert_eq!(intel.write(IA32_DEBUGCTL, 0), MsrAccess::Value(0));
        assert_eq!(intel.write(IA32_DEBUGCTL, 1), MsrAccess::Fault);
        assert_eq!(
            Vendor::from_leaf0(&CpuidResult {
                ebx: u32::from_le_bytes(*b"Auth"),
                ..Default::default()
            }),
            Vendor::Amd
        );
    }

    #[test]
    fn cpuid_is_an_allow_list() {
        let all = |leaf: u32, _: u32| CpuidResult {
            eax: if leaf == 0 { 0x1F } else { u32::MAX },
            ebx: u32::MAX,
            ecx: u32::MAX,
            edx: u32::MAX,
        };
        let l1 = super::cpuid(1, 0, all, &ONE);
        assert_eq!(l1.ecx, allow::L1_ECX | (1 << 31));
        assert_eq!(l1.edx, allow::L1_EDX);
        let l7 = super::cpuid(7, 0, all, &ONE);
        assert_eq!(
            (l7.eax, l7.ebx, l7.ecx, l7.edx),
            (0, allow::L7_EBX, allow::L7_ECX, allow::L7_EDX)
        );
        assert_eq!(super::cpuid(7, 1, all, &ONE), CpuidResult::default());
        assert_eq!(super::cpuid(6, 0, all, &ONE).eax, allow::L6_EAX);
        let e1 = super::cpuid(0x8000_0001, 0, all, &ONE);
        assert_eq!((e1.ecx, e1.edx), (allow::EXT1_ECX, allow::EXT1_EDX));
        assert_eq!(super::cpuid(0x8000_0008, 0, all, &ONE).ebx, allow::EXT8_EBX);
        for hidden in [0xA, 0xD, 0x12, 0x14] {
            assert_eq!(super::cpuid(hidden, 0, all, &ONE), CpuidResult::default());
        }
    }
}
