//! VMCS field encodings (SDM Vol. 3D Appendix B), the bits of the VM-execution, VM-exit
//! and VM-entry controls (SDM Vol. 3C 25.6-25.8), and [`VmcsAccess`], the one interface
//! through which everything in this crate reads and writes a VMCS.
//!
//! The encodings are written out here rather than taken from the `x86` crate: the
//! backend needs about a hundred of them, each is a fixed number from Appendix B, and
//! keeping them in one file lets the host tests run the VMCS set-up code against a
//! plain map ([`VmcsAccess`] has a test implementation) without pulling in a second
//! register-access crate.
//!
//! Encoding layout (SDM Vol. 3C 25.11.2): bit 0 access type (1 = high half of a 64-bit
//! field), bits 9:1 index, bits 11:10 type (0 control, 1 read-only data, 2 guest state,
//! 3 host state), bits 14:13 width (0 16-bit, 1 64-bit, 2 32-bit, 3 natural width).

/// Read and write access to one VMCS.
///
/// The runtime implements it with VMREAD/VMWRITE on the current VMCS; the host tests
/// with a map. Values are zero-extended on read; narrower fields ignore the high bits of
/// a write (SDM Vol. 3C 31.3 VMREAD/VMWRITE).
pub trait VmcsAccess {
    fn read(&self, field: u32) -> u64;
    fn write(&mut self, field: u32, value: u64);
}

/// 16-bit control fields.
pub mod control16 {
    pub const VPID: u32 = 0x0000;
}

/// 16-bit guest-state fields: the segment selectors.
pub mod guest16 {
    pub const ES_SELECTOR: u32 = 0x0800;
    pub const CS_SELECTOR: u32 = 0x0802;
    pub const SS_SELECTOR: u32 = 0x0804;
    pub const DS_SELECTOR: u32 = 0x0806;
    pub const FS_SELECTOR: u32 = 0x0808;
    pub const GS_SELECTOR: u32 = 0x080A;
    pub const LDTR_SELECTOR: u32 = 0x080C;
    pub const TR_SELECTOR: u32 = 0x080E;
}

/// 16-bit host-state fields.
pub mod host16 {
    pub const ES_SELECTOR: u32 = 0x0C00;
    pub const CS_SELECTOR: u32 = 0x0C02;
    pub const SS_SELECTOR: u32 = 0x0C04;
    pub const DS_SELECTOR: u32 = 0x0C06;
    pub const FS_SELECTOR: u32 = 0x0C08;
    pub const GS_SELECTOR: u32 = 0x0C0A;
    pub const TR_SELECTOR: u32 = 0x0C0C;
}

/// 64-bit control fields.
pub mod control64 {
    pub const IO_BITMAP_A: u32 = 0x2000;
    pub const IO_BITMAP_B: u32 = 0x2002;
    pub const MSR_BITMAP: u32 = 0x2004;
    pub const VM_EXIT_MSR_STORE_ADDR: u32 = 0x2006;
    pub const VM_EXIT_MSR_LOAD_ADDR: u32 = 0x2008;
    pub const VM_ENTRY_MSR_LOAD_ADDR: u32 = 0x200A;
    pub const TSC_OFFSET: u32 = 0x2010;
    pub const EPT_POINTER: u32 = 0x201A;
}

/// 64-bit read-only data fields.
pub mod ro64 {
    pub const GUEST_PHYSICAL_ADDRESS: u32 = 0x2400;
}

/// 64-bit guest-state fields.
pub mod guest64 {
    pub const VMCS_LINK_POINTER: u32 = 0x2800;
    pub const IA32_DEBUGCTL: u32 = 0x2802;
    pub const IA32_PAT: u32 = 0x2804;
    pub const IA32_EFER: u32 = 0x2806;
    pub const PDPTE0: u32 = 0x280A;
    pub const PDPTE1: u32 = 0x280C;
    pub const PDPTE2: u32 = 0x280E;
    pub const PDPTE3: u32 = 0x2810;
}

/// 64-bit host-state fields.
pub mod host64 {
    pub const IA32_PAT: u32 = 0x2C00;
    pub const IA32_EFER: u32 = 0x2C02;
}

/// 32-bit control fields.
pub mod control32 {
    pub const PIN_BASED: u32 = 0x4000;
    pub const PRIMARY_PROC_BASED: u32 = 0x4002;
    pub const EXCEPTION_BITMAP: u32 = 0x4004;
    pub const PAGE_FAULT_ERROR_CODE_MASK: u32 = 0x4006;
    pub const PAGE_FAULT_ERROR_CODE_MATCH: u32 = 0x4008;
    pub const CR3_TARGET_COUNT: u32 = 0x400A;
    pub const VM_EXIT_CONTROLS: u32 = 0x400C;
    pub const VM_EXIT_MSR_STORE_COUNT: u32 = 0x400E;
    pub const VM_EXIT_MSR_LOAD_COUNT: u32 = 0x4010;
    pub const VM_ENTRY_CONTROLS: u32 = 0x4012;
    pub const VM_ENTRY_MSR_LOAD_COUNT: u32 = 0x4014;
    pub const VM_ENTRY_INTERRUPTION_INFO: u32 = 0x4016;
    pub const VM_ENTRY_EXCEPTION_ERROR_CODE: u32 = 0x4018;
    pub const VM_ENTRY_INSTRUCTION_LENGTH: u32 = 0x401A;
    pub const TPR_THRESHOLD: u32 = 0x401C;
    pub const SECONDARY_PROC_BASED: u32 = 0x401E;
}

/// 32-bit read-only data fields.
pub mod ro32 {
    pub const VM_INSTRUCTION_ERROR: u32 = 0x4400;
    pub const EXIT_REASON: u32 = 0x4402;
    pub const VM_EXIT_INTERRUPTION_INFO: u32 = 0x4404;
    pub const VM_EXIT_INTERRUPTION_ERROR_CODE: u32 = 0x4406;
    pub const IDT_VECTORING_INFO: u32 = 0x4408;
    pub const IDT_VECTORING_ERROR_CODE: u32 = 0x440A;
    pub const VM_EXIT_INSTRUCTION_LENGTH: u32 = 0x440C;
    pub const VM_EXIT_INSTRUCTION_INFO: u32 = 0x440E;
}

/// 32-bit guest-state fields.
pub mod guest32 {
    pub const ES_LIMIT: u32 = 0x4800;
    pub const CS_LIMIT: u32 = 0x4802;
    pub const SS_LIMIT: u32 = 0x4804;
    pub const DS_LIMIT: u32 = 0x4806;
    pub const FS_LIMIT: u32 = 0x4808;
    pub const GS_LIMIT: u32 = 0x480A;
    pub const LDTR_LIMIT: u32 = 0x480C;
    pub const TR_LIMIT: u32 = 0x480E;
    pub const GDTR_LIMIT: u32 = 0x4810;
    pub const IDTR_LIMIT: u32 = 0x4812;
    pub const ES_ACCESS_RIGHTS: u32 = 0x4814;
    pub const CS_ACCESS_RIGHTS: u32 = 0x4816;
    pub const SS_ACCESS_RIGHTS: u32 = 0x4818;
    pub const DS_ACCESS_RIGHTS: u32 = 0x481A;
    pub const FS_ACCESS_RIGHTS: u32 = 0x481C;
    pub const GS_ACCESS_RIGHTS: u32 = 0x481E;
    pub const LDTR_ACCESS_RIGHTS: u32 = 0x4820;
    pub const TR_ACCESS_RIGHTS: u32 = 0x4822;
    pub const INTERRUPTIBILITY_STATE: u32 = 0x4824;
    pub const ACTIVITY_STATE: u32 = 0x4826;
    pub const SMBASE: u32 = 0x4828;
    pub const IA32_SYSENTER_CS: u32 = 0x482A;
    pub const PREEMPTION_TIMER_VALUE: u32 = 0x482E;
}

/// 32-bit host-state fields.
pub mod host32 {
    pub const IA32_SYSENTER_CS: u32 = 0x4C00;
}

/// Natural-width control fields.
pub mod control_nat {
    pub const CR0_GUEST_HOST_MASK: u32 = 0x6000;
    pub const CR4_GUEST_HOST_MASK: u32 = 0x6002;
    pub const CR0_READ_SHADOW: u32 = 0x6004;
    pub const CR4_READ_SHADOW: u32 = 0x6006;
}

/// Natural-width read-only data fields.
pub mod ro_nat {
    pub const EXIT_QUALIFICATION: u32 = 0x6400;
    pub const GUEST_LINEAR_ADDRESS: u32 = 0x640A;
}

/// Natural-width guest-state fields.
pub mod guest_nat {
    pub const CR0: u32 = 0x6800;
    pub const CR3: u32 = 0x6802;
    pub const CR4: u32 = 0x6804;
    pub const ES_BASE: u32 = 0x6806;
    pub const CS_BASE: u32 = 0x6808;
    pub const SS_BASE: u32 = 0x680A;
    pub const DS_BASE: u32 = 0x680C;
    pub const FS_BASE: u32 = 0x680E;
    pub const GS_BASE: u32 = 0x6810;
    pub const LDTR_BASE: u32 = 0x6812;
    pub const TR_BASE: u32 = 0x6814;
    pub const GDTR_BASE: u32 = 0x6816;
    pub const IDTR_BASE: u32 = 0x6818;
    pub const DR7: u32 = 0x681A;
    pub const RSP: u32 = 0x681C;
    pub const RIP: u32 = 0x681E;
    pub const RFLAGS: u32 = 0x6820;
    pub const PENDING_DEBUG_EXCEPTIONS: u32 = 0x6822;
    pub const IA32_SYSENTER_ESP: u32 = 0x6824;
    pub const IA32_SYSENTER_EIP: u32 = 0x6826;
}

/// Natural-width host-state fields.
pub mod host_nat {
    pub const CR0: u32 = 0x6C00;
    pub const CR3: u32 = 0x6C02;
    pub const CR4: u32 = 0x6C04;
    pub const FS_BASE: u32 = 0x6C06;
    pub const GS_BASE: u32 = 0x6C08;
    pub const TR_BASE: u32 = 0x6C0A;
    pub const GDTR_BASE: u32 = 0x6C0C;
    pub const IDTR_BASE: u32 = 0x6C0E;
    pub const IA32_SYSENTER_ESP: u32 = 0x6C10;
    pub const IA32_SYSENTER_EIP: u32 = 0x6C12;
    pub const RSP: u32 = 0x6C14;
    pub const RIP: u32 = 0x6C16;
}

/// Pin-based VM-execution controls (SDM Vol. 3C 25.6.1, Table 25-5).
pub mod pin {
    pub const EXTERNAL_INTERRUPT_EXITING: u32 = 1 << 0;
    pub const NMI_EXITING: u32 = 1 << 3;
    pub const VIRTUAL_NMIS: u32 = 1 << 5;
    pub const PREEMPTION_TIMER: u32 = 1 << 6;
    pub const POSTED_INTERRUPTS: u32 = 1 << 7;
}

/// Primary processor-based VM-execution controls (SDM Vol. 3C 25.6.2, Table 25-6).
pub mod proc {
    pub const INTERRUPT_WINDOW_EXITING: u32 = 1 << 2;
    pub const USE_TSC_OFFSETTING: u32 = 1 << 3;
    pub const HLT_EXITING: u32 = 1 << 7;
    pub const INVLPG_EXITING: u32 = 1 << 9;
    pub const MWAIT_EXITING: u32 = 1 << 10;
    pub const RDPMC_EXITING: u32 = 1 << 11;
    pub const RDTSC_EXITING: u32 = 1 << 12;
    pub const CR3_LOAD_EXITING: u32 = 1 << 15;
    pub const CR3_STORE_EXITING: u32 = 1 << 16;
    pub const CR8_LOAD_EXITING: u32 = 1 << 19;
    pub const CR8_STORE_EXITING: u32 = 1 << 20;
    pub const USE_TPR_SHADOW: u32 = 1 << 21;
    pub const NMI_WINDOW_EXITING: u32 = 1 << 22;
    pub const MOV_DR_EXITING: u32 = 1 << 23;
    pub const UNCONDITIONAL_IO_EXITING: u32 = 1 << 24;
    pub const USE_IO_BITMAPS: u32 = 1 << 25;
    pub const MONITOR_TRAP_FLAG: u32 = 1 << 27;
    pub const USE_MSR_BITMAPS: u32 = 1 << 28;
    pub const MONITOR_EXITING: u32 = 1 << 29;
    pub const PAUSE_EXITING: u32 = 1 << 30;
    pub const ACTIVATE_SECONDARY_CONTROLS: u32 = 1 << 31;
}

/// Secondary processor-based VM-execution controls (SDM Vol. 3C 25.6.2, Table 25-7).
pub mod proc2 {
    pub const VIRTUALIZE_APIC_ACCESSES: u32 = 1 << 0;
    pub const ENABLE_EPT: u32 = 1 << 1;
    pub const DESCRIPTOR_TABLE_EXITING: u32 = 1 << 2;
    pub const ENABLE_RDTSCP: u32 = 1 << 3;
    pub const ENABLE_VPID: u32 = 1 << 5;
    pub const WBINVD_EXITING: u32 = 1 << 6;
    pub const UNRESTRICTED_GUEST: u32 = 1 << 7;
    pub const ENABLE_INVPCID: u32 = 1 << 12;
    pub const ENABLE_VMFUNC: u32 = 1 << 13;
    pub const ENABLE_XSAVES: u32 = 1 << 20;
}

/// Primary VM-exit controls (SDM Vol. 3C 25.7.1, Table 25-13).
pub mod exit_ctl {
    pub const SAVE_DEBUG_CONTROLS: u32 = 1 << 2;
    pub const HOST_ADDRESS_SPACE_SIZE: u32 = 1 << 9;
    pub const LOAD_PERF_GLOBAL_CTRL: u32 = 1 << 12;
    pub const ACKNOWLEDGE_INTERRUPT_ON_EXIT: u32 = 1 << 15;
    pub const SAVE_IA32_PAT: u32 = 1 << 18;
    pub const LOAD_IA32_PAT: u32 = 1 << 19;
    pub const SAVE_IA32_EFER: u32 = 1 << 20;
    pub const LOAD_IA32_EFER: u32 = 1 << 21;
    pub const SAVE_PREEMPTION_TIMER: u32 = 1 << 22;
}

/// VM-entry controls (SDM Vol. 3C 25.8.1, Table 25-15).
pub mod entry_ctl {
    pub const LOAD_DEBUG_CONTROLS: u32 = 1 << 2;
    pub const IA32E_MODE_GUEST: u32 = 1 << 9;
    pub const ENTRY_TO_SMM: u32 = 1 << 10;
    pub const DEACTIVATE_DUAL_MONITOR: u32 = 1 << 11;
    pub const LOAD_PERF_GLOBAL_CTRL: u32 = 1 << 13;
    pub const LOAD_IA32_PAT: u32 = 1 << 14;
    pub const LOAD_IA32_EFER: u32 = 1 << 15;
}

/// Interruption-information format shared by the VM-entry interruption-information
/// field, the VM-exit interruption-information field and the IDT-vectoring information
/// field (SDM Vol. 3C 25.8.3, 25.9.2, 25.9.3).
pub mod intr_info {
    pub const VECTOR_MASK: u32 = 0xFF;
    pub const TYPE_SHIFT: u32 = 8;
    pub const TYPE_MASK: u32 = 7 << TYPE_SHIFT;
    pub const TYPE_EXTERNAL_INTERRUPT: u32 = 0 << TYPE_SHIFT;
    pub const TYPE_NMI: u32 = 2 << TYPE_SHIFT;
    pub const TYPE_HARDWARE_EXCEPTION: u32 = 3 << TYPE_SHIFT;
    pub const TYPE_SOFTWARE_INTERRUPT: u32 = 4 << TYPE_SHIFT;
    pub const TYPE_PRIVILEGED_SOFTWARE_EXCEPTION: u32 = 5 << TYPE_SHIFT;
    pub const TYPE_SOFTWARE_EXCEPTION: u32 = 6 << TYPE_SHIFT;
    pub const DELIVER_ERROR_CODE: u32 = 1 << 11;
    /// Exit/vectoring information only: NMI unblocking due to IRET.
    pub const NMI_UNBLOCKING: u32 = 1 << 12;
    pub const VALID: u32 = 1 << 31;
}

/// Guest interruptibility state bits (SDM Vol. 3C 25.4.2, Table 25-3).
pub mod interruptibility {
    pub const BLOCKING_BY_STI: u32 = 1 << 0;
    pub const BLOCKING_BY_MOV_SS: u32 = 1 << 1;
    pub const BLOCKING_BY_SMI: u32 = 1 << 2;
    pub const BLOCKING_BY_NMI: u32 = 1 << 3;
    pub const ENCLAVE_INTERRUPTION: u32 = 1 << 4;
}

/// Segment access rights as the VMCS stores them (SDM Vol. 3C 25.4.1, Table 25-2):
/// descriptor bits 47:40 in bits 7:0, descriptor bits 55:52 in bits 15:12, and bit 16
/// "segment unusable".
pub mod ar {
    pub const TYPE_MASK: u32 = 0xF;
    /// Type bit 0: accessed.
    pub const TYPE_ACCESSED: u32 = 1 << 0;
    /// Type bit 1: writable (data) / readable (code).
    pub const TYPE_RW: u32 = 1 << 1;
    /// Type bit 3: code.
    pub const TYPE_CODE: u32 = 1 << 3;
    /// Descriptor type: 1 = code/data, 0 = system.
    pub const S: u32 = 1 << 4;
    pub const DPL_SHIFT: u32 = 5;
    pub const DPL_MASK: u32 = 3 << DPL_SHIFT;
    pub const P: u32 = 1 << 7;
    /// Bits 11:8 are reserved and must be 0.
    pub const RESERVED_11_8: u32 = 0xF << 8;
    pub const AVL: u32 = 1 << 12;
    pub const L: u32 = 1 << 13;
    pub const DB: u32 = 1 << 14;
    pub const G: u32 = 1 << 15;
    pub const UNUSABLE: u32 = 1 << 16;
    /// Bits 31:17 are reserved and must be 0.
    pub const RESERVED_31_17: u32 = 0xFFFE_0000;

    pub const TYPE_DATA_RW_ACCESSED: u32 = 0x3;
    pub const TYPE_CODE_RX_ACCESSED: u32 = 0xB;
    pub const TYPE_LDT: u32 = 0x2;
    pub const TYPE_TSS16_BUSY: u32 = 0x3;
    pub const TYPE_TSS_BUSY: u32 = 0xB;

    /// Real-mode code: execute/read, accessed, present, DPL 0, 16-bit.
    pub const REAL_CODE: u32 = TYPE_CODE_RX_ACCESSED | S | P;
    /// Real-mode data: read/write, accessed, present, DPL 0, 16-bit.
    pub const REAL_DATA: u32 = TYPE_DATA_RW_ACCESSED | S | P;
    /// Flat 32-bit code (4 GiB limit in pages).
    pub const FLAT32_CODE: u32 = TYPE_CODE_RX_ACCESSED | S | P | DB | G;
    /// Flat 32-bit data (also used for data segments in long mode).
    pub const FLAT_DATA: u32 = TYPE_DATA_RW_ACCESSED | S | P | DB | G;
    /// 64-bit code: L=1, D=0 (both set is invalid, SDM Vol. 3C 27.3.1.2).
    pub const LONG_CODE: u32 = TYPE_CODE_RX_ACCESSED | S | P | L | G;
    /// A busy 32/64-bit TSS, the only TR type valid in every mode.
    pub const TSS_BUSY: u32 = TYPE_TSS_BUSY | P;
    /// An unusable segment register (a null selector was loaded).
    pub const UNUSABLE_SEGMENT: u32 = UNUSABLE;

    /// The VMX access-rights word for a raw 8-byte GDT/LDT descriptor.
    pub const fn from_descriptor(descriptor: u64) -> u32 {
        (((descriptor >> 40) & 0xFF) | ((descriptor >> 40) & 0xF000)) as u32
    }
}

/// Basic exit reasons (SDM Vol. 3D Appendix C).
pub mod reason {
    pub const EXCEPTION_OR_NMI: u32 = 0;
    pub const EXTERNAL_INTERRUPT: u32 = 1;
    pub const TRIPLE_FAULT: u32 = 2;
    pub const INIT_SIGNAL: u32 = 3;
    pub const SIPI: u32 = 4;
    pub const IO_SMI: u32 = 5;
    pub const OTHER_SMI: u32 = 6;
    pub const INTERRUPT_WINDOW: u32 = 7;
    pub const NMI_WINDOW: u32 = 8;
    pub const TASK_SWITCH: u32 = 9;
    pub const CPUID: u32 = 10;
    pub const GETSEC: u32 = 11;
    pub const HLT: u32 = 12;
    pub const INVD: u32 = 13;
    pub const INVLPG: u32 = 14;
    pub const RDPMC: u32 = 15;
    pub const RDTSC: u32 = 16;
    pub const RSM: u32 = 17;
    pub const VMCALL: u32 = 18;
    pub const VMCLEAR: u32 = 19;
    pub const VMLAUNCH: u32 = 20;
    pub const VMPTRLD: u32 = 21;
    pub const VMPTRST: u32 = 22;
    pub const VMREAD: u32 = 23;
    pub const VMRESUME: u32 = 24;
    pub const VMWRITE: u32 = 25;
    pub const VMXOFF: u32 = 26;
    pub const VMXON: u32 = 27;
    pub const CR_ACCESS: u32 = 28;
    pub const MOV_DR: u32 = 29;
    pub const IO_INSTRUCTION: u32 = 30;
    pub const RDMSR: u32 = 31;
    pub const WRMSR: u32 = 32;
    pub const INVALID_GUEST_STATE: u32 = 33;
    pub const MSR_LOADING: u32 = 34;
    pub const MWAIT: u32 = 36;
    pub const MONITOR_TRAP_FLAG: u32 = 37;
    pub const MONITOR: u32 = 39;
    pub const PAUSE: u32 = 40;
    pub const MACHINE_CHECK: u32 = 41;
    pub const TPR_BELOW_THRESHOLD: u32 = 43;
    pub const APIC_ACCESS: u32 = 44;
    pub const VIRTUALIZED_EOI: u32 = 45;
    pub const GDTR_IDTR_ACCESS: u32 = 46;
    pub const LDTR_TR_ACCESS: u32 = 47;
    pub const EPT_VIOLATION: u32 = 48;
    pub const EPT_MISCONFIGURATION: u32 = 49;
    pub const INVEPT: u32 = 50;
    pub const RDTSCP: u32 = 51;
    pub const PREEMPTION_TIMER: u32 = 52;
    pub const INVVPID: u32 = 53;
    pub const WBINVD: u32 = 54;
    pub const XSETBV: u32 = 55;
    pub const APIC_WRITE: u32 = 56;
    pub const RDRAND: u32 = 57;
    pub const INVPCID: u32 = 58;
    pub const VMFUNC: u32 = 59;
    pub const ENCLS: u32 = 60;
    pub const RDSEED: u32 = 61;
    pub const PML_FULL: u32 = 62;
    pub const XSAVES: u32 = 63;
    pub const XRSTORS: u32 = 64;

    /// Exit-reason bit 31: the exit is a VM-entry failure (SDM Vol. 3C 25.9.1).
    pub const ENTRY_FAILURE: u32 = 1 << 31;
}

/// CR0 bits.
pub mod cr0 {
    pub const PE: u64 = 1 << 0;
    pub const MP: u64 = 1 << 1;
    pub const EM: u64 = 1 << 2;
    pub const TS: u64 = 1 << 3;
    pub const ET: u64 = 1 << 4;
    pub const NE: u64 = 1 << 5;
    pub const WP: u64 = 1 << 16;
    pub const AM: u64 = 1 << 18;
    pub const NW: u64 = 1 << 29;
    pub const CD: u64 = 1 << 30;
    pub const PG: u64 = 1 << 31;
}

/// CR4 bits.
pub mod cr4 {
    pub const PAE: u64 = 1 << 5;
    pub const OSFXSR: u64 = 1 << 9;
    pub const OSXMMEXCPT: u64 = 1 << 10;
    pub const VMXE: u64 = 1 << 13;
    pub const SMXE: u64 = 1 << 14;
    pub const PCIDE: u64 = 1 << 17;
    pub const OSXSAVE: u64 = 1 << 18;
    pub const CET: u64 = 1 << 23;
}

/// IA32_EFER bits.
pub mod efer {
    pub const SCE: u64 = 1 << 0;
    pub const LME: u64 = 1 << 8;
    pub const LMA: u64 = 1 << 10;
    pub const NXE: u64 = 1 << 11;
    /// The bits Intel processors define; the rest are reserved (SDM Vol. 4 Table 2-2).
    pub const DEFINED: u64 = SCE | LME | LMA | NXE;
}

/// RFLAGS bits.
pub mod rflags {
    pub const CF: u64 = 1 << 0;
    /// Bit 1 is reserved and always 1.
    pub const FIXED_1: u64 = 1 << 1;
    pub const ZF: u64 = 1 << 6;
    pub const TF: u64 = 1 << 8;
    pub const IF: u64 = 1 << 9;
    pub const VM: u64 = 1 << 17;
    /// Reserved bits that must be 0: 63:22, 15, 5 and 3 (SDM Vol. 3C 27.3.1.4).
    pub const RESERVED_ZERO: u64 = !0u64 << 22 | 1 << 15 | 1 << 5 | 1 << 3;
}

/// MSR numbers the backend touches.
pub mod msr {
    pub const IA32_FEATURE_CONTROL: u32 = 0x3A;
    pub const IA32_SYSENTER_CS: u32 = 0x174;
    pub const IA32_SYSENTER_ESP: u32 = 0x175;
    pub const IA32_SYSENTER_EIP: u32 = 0x176;
    pub const IA32_PAT: u32 = 0x277;
    pub const IA32_VMX_CR0_FIXED0: u32 = 0x486;
    pub const IA32_VMX_CR0_FIXED1: u32 = 0x487;
    pub const IA32_VMX_CR4_FIXED0: u32 = 0x488;
    pub const IA32_VMX_CR4_FIXED1: u32 = 0x489;
    pub const IA32_TIME_STAMP_COUNTER: u32 = 0x10;
    pub const IA32_EFER: u32 = 0xC000_0080;
    pub const IA32_STAR: u32 = 0xC000_0081;
    pub const IA32_LSTAR: u32 = 0xC000_0082;
    pub const IA32_CSTAR: u32 = 0xC000_0083;
    pub const IA32_FMASK: u32 = 0xC000_0084;
    pub const IA32_FS_BASE: u32 = 0xC000_0100;
    pub const IA32_GS_BASE: u32 = 0xC000_0101;
    pub const IA32_KERNEL_GS_BASE: u32 = 0xC000_0102;
}

/// The power-on value of IA32_PAT (SDM Vol. 3A 13.12.4): WB, WT, UC-, UC twice.
pub const PAT_RESET_VALUE: u64 = 0x0007_0406_0007_0406;

#[cfg(test)]
pub(crate) mod fake {
    //! A VMCS as a map, for the host tests.
    extern crate std;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use super::VmcsAccess;

    #[derive(Default, Debug)]
    pub struct FakeVmcs {
        pub fields: BTreeMap<u32, u64>,
        /// Fields read, to check that nothing unexpected is consulted.
        pub reads: RefCell<std::vec::Vec<u32>>,
    }

    impl FakeVmcs {
        pub fn get(&self, field: u32) -> u64 {
            *self
                .fields
                .get(&field)
                .unwrap_or_else(|| panic!("field {field:#06x} never written"))
        }
    }

    impl VmcsAccess for FakeVmcs {
        fn read(&self, field: u32) -> u64 {
            self.reads.borrow_mut().push(field);
            self.fields.get(&field).copied().unwrap_or(0)
        }
        fn write(&mut self, field: u32, value: u64) {
            // Model the field width: narrower fields drop the high bits.
            let width = (field >> 13) & 3;
            let value = match width {
                0 => value & 0xFFFF,
                2 => value & 0xFFFF_FFFF,
                _ => value,
            };
            self.fields.insert(field, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The width and type bits of every encoding agree with its module (SDM 25.11.2).
    #[test]
    fn encodings_are_self_consistent() {
        let width = |f: u32| (f >> 13) & 3;
        let kind = |f: u32| (f >> 10) & 3;
        for f in [guest16::ES_SELECTOR, guest16::TR_SELECTOR] {
            assert_eq!((width(f), kind(f)), (0, 2));
        }
        for f in [host16::CS_SELECTOR, host16::TR_SELECTOR] {
            assert_eq!((width(f), kind(f)), (0, 3));
        }
        for f in [control64::IO_BITMAP_A, control64::EPT_POINTER] {
            assert_eq!((width(f), kind(f)), (1, 0));
        }
        assert_eq!(kind(ro64::GUEST_PHYSICAL_ADDRESS), 1);
        for f in [guest64::VMCS_LINK_POINTER, guest64::IA32_EFER] {
            assert_eq!((width(f), kind(f)), (1, 2));
        }
        for f in [control32::PIN_BASED, control32::SECONDARY_PROC_BASED] {
            assert_eq!((width(f), kind(f)), (2, 0));
        }
        for f in [ro32::VM_INSTRUCTION_ERROR, ro32::VM_EXIT_INSTRUCTION_LENGTH] {
            assert_eq!((width(f), kind(f)), (2, 1));
        }
        for f in [guest32::TR_ACCESS_RIGHTS, guest32::PREEMPTION_TIMER_VALUE] {
            assert_eq!((width(f), kind(f)), (2, 2));
        }
        assert_eq!(
            (
                width(host32::IA32_SYSENTER_CS),
                kind(host32::IA32_SYSENTER_CS)
            ),
            (2, 3)
        );
        assert_eq!(
            (
                width(ro_nat::EXIT_QUALIFICATION),
                kind(ro_nat::EXIT_QUALIFICATION)
            ),
            (3, 1)
        );
        for f in [guest_nat::CR0, guest_nat::IA32_SYSENTER_EIP] {
            assert_eq!((width(f), kind(f)), (3, 2));
        }
        for f in [host_nat::CR0, host_nat::RIP] {
            assert_eq!((width(f), kind(f)), (3, 3));
        }
    }

    #[test]
    fn access_rights_from_descriptor() {
        // The x86_64 crate's kernel code segment: 0x00AF_9B00_0000_FFFF.
        assert_eq!(ar::from_descriptor(0x00AF_9B00_0000_FFFF), 0xA09B);
        // A 64-bit available TSS, present: type 9.
        assert_eq!(ar::from_descriptor(0x0000_8900_0000_0067), 0x89);
        assert_eq!(ar::LONG_CODE, 0xA09B);
        assert_eq!(ar::FLAT_DATA, 0xC093);
        assert_eq!(ar::FLAT32_CODE, 0xC09B);
        assert_eq!(ar::REAL_CODE, 0x9B);
        assert_eq!(ar::TSS_BUSY, 0x8B);
    }
}
