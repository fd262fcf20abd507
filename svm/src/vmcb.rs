//! The Virtual Machine Control Block: its exact in-memory layout, the intercept and
//! field encodings, guest start-state setup for each [`CpuMode`], and a software copy
//! of the checks VMRUN performs on it.
//!
//! Layout: AMD64 APM Vol. 2 Appendix B, Table B-1 (control area, offsets 0x000-0x3FF)
//! and Table B-2 (state save area; the APM lists its offsets relative to the area, here
//! they are given from the start of the VMCB, i.e. +0x400). Every field offset is
//! checked at compile time below.
//!
//! The VMCB must be 4 KiB aligned in host-physical memory; `Vmcb` is
//! `#[repr(C, align(4096))]` and exactly 4 KiB, so a frame from the kernel's allocator
//! can hold one.

use core::mem::{offset_of, size_of};

use bitflags::bitflags;
use vcpu::{CpuMode, Exception, StartState};

/// A segment register as the VMCB stores it (APM Vol. 2 15.5.1, Table B-2).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    pub selector: u16,
    /// The descriptor attributes in the compressed VMCB format; see [`attrib`].
    pub attrib: u16,
    pub limit: u32,
    pub base: u64,
}

/// The compressed segment-attribute format (APM Vol. 2 15.5.1 "Segment State in the
/// VMCB"): descriptor bits 47:40 (type, S, DPL, P) in attribute bits 7:0 and descriptor
/// bits 55:52 (AVL, L, D/B, G) in attribute bits 11:8.
pub mod attrib {
    // The field bits are the vendor-neutral `vcpu::state` encoding's bits 11:0,
    // which is this format: type (bits 3:0; with S=1 bit 3 code, bit 1 read/write,
    // bit 0 accessed), S (1 = code/data, 0 = system), DPL, P, AVL, L (64-bit code),
    // D/B (32-bit segment), G (limit in 4 KiB units; the VMCB limit field is always
    // in bytes).
    pub use vcpu::state::attrib::{AVL, DB, DPL_MASK, DPL_SHIFT, G, L, P, S, TYPE_MASK};

    /// Code: execute/read, accessed.
    pub const TYPE_CODE_RX_ACCESSED: u16 = 0xB;
    /// Data: read/write, accessed.
    pub const TYPE_DATA_RW_ACCESSED: u16 = 0x3;
    /// System: LDT.
    pub const TYPE_LDT: u16 = 0x2;
    /// System: busy 16-bit TSS.
    pub const TYPE_TSS16_BUSY: u16 = 0x3;
    /// System: busy 32-bit TSS (busy 64-bit TSS in long mode).
    pub const TYPE_TSS_BUSY: u16 = 0xB;

    /// Assemble an attribute word; `flags` is any of `S`, `P`, `AVL`, `L`, `DB`, `G`.
    pub const fn make(seg_type: u16, dpl: u16, flags: u16) -> u16 {
        (seg_type & TYPE_MASK) | ((dpl & 3) << DPL_SHIFT) | flags
    }

    /// The attribute word for a raw 8-byte GDT/LDT descriptor.
    pub const fn from_descriptor(descriptor: u64) -> u16 {
        (((descriptor >> 40) & 0xFF) | ((descriptor >> 44) & 0xF00)) as u16
    }

    pub const REAL_CODE: u16 = make(TYPE_CODE_RX_ACCESSED, 0, S | P);
    pub const REAL_DATA: u16 = make(TYPE_DATA_RW_ACCESSED, 0, S | P);
    pub const FLAT32_CODE: u16 = make(TYPE_CODE_RX_ACCESSED, 0, S | P | DB | G);
    pub const FLAT_DATA: u16 = make(TYPE_DATA_RW_ACCESSED, 0, S | P | DB | G);
    /// 64-bit code: L=1 and D=0 (L and D both set is a VMRUN consistency failure).
    pub const LONG_CODE: u16 = make(TYPE_CODE_RX_ACCESSED, 0, S | P | L | G);
    pub const LDT: u16 = make(TYPE_LDT, 0, P);
    pub const TSS16_BUSY: u16 = make(TYPE_TSS16_BUSY, 0, P);
    pub const TSS_BUSY: u16 = make(TYPE_TSS_BUSY, 0, P);
}

/// GDT selectors used for the flat protected-mode and long-mode start states. They are
/// the Linux boot protocol's `__BOOT_CS` / `__BOOT_DS`, so a guest that reloads its
/// segment registers from a loader-provided GDT finds the descriptors where it expects.
pub const FLAT_CODE_SELECTOR: u16 = 0x10;
pub const FLAT_DATA_SELECTOR: u16 = 0x18;

/// The segment and descriptor-table registers of a start state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentSet {
    pub cs: Segment,
    /// Loaded into DS, ES, FS, GS and SS.
    pub data: Segment,
    pub tr: Segment,
    pub ldtr: Segment,
    pub gdtr: Segment,
    pub idtr: Segment,
}

impl SegmentSet {
    /// Real mode with CS based at `cs_base` (a multiple of 16; the selector is
    /// `cs_base >> 4` truncated to 16 bits, so `0xFFFF_0000` gives the reset-vector
    /// CS of F000h with base FFFF0000h) and data segments at 0, all with 64 KiB limits.
    /// IDTR covers the real-mode IVT at 0 (limit 0xFFFF as after reset).
    pub const fn real_mode(cs_base: u32) -> Self {
        let data = Segment {
            selector: 0,
            attrib: attrib::REAL_DATA,
            limit: 0xFFFF,
            base: 0,
        };
        SegmentSet {
            cs: Segment {
                selector: (cs_base >> 4) as u16,
                attrib: attrib::REAL_CODE,
                limit: 0xFFFF,
                base: cs_base as u64,
            },
            data,
            // The TR/LDTR hidden state must look valid even if unused; this is the
            // processor's reset state.
            tr: Segment {
                selector: 0,
                attrib: attrib::TSS16_BUSY,
                limit: 0xFFFF,
                base: 0,
            },
            ldtr: Segment {
                selector: 0,
                attrib: attrib::LDT,
                limit: 0xFFFF,
                base: 0,
            },
            gdtr: Segment {
                selector: 0,
                attrib: 0,
                limit: 0xFFFF,
                base: 0,
            },
            idtr: Segment {
                selector: 0,
                attrib: 0,
                limit: 0xFFFF,
                base: 0,
            },
        }
    }

    /// 32-bit protected mode: flat 4 GiB code and data segments, DPL 0. GDTR and
    /// IDTR are empty: the guest must load its own before it reloads a segment
    /// register or takes an interrupt (set them here if the loader provides tables).
    pub const fn protected_flat(code_selector: u16, data_selector: u16) -> Self {
        let mut set = Self::flat(code_selector, data_selector);
        set.cs.attrib = attrib::FLAT32_CODE;
        set
    }

    /// 64-bit long mode: a 64-bit code segment (L=1, D=0) and flat data segments.
    /// GDTR/IDTR empty as for [`protected_flat`](Self::protected_flat).
    pub const fn long_mode(code_selector: u16, data_selector: u16) -> Self {
        let mut set = Self::flat(code_selector, data_selector);
        set.cs.attrib = attrib::LONG_CODE;
        set
    }

    const fn flat(code_selector: u16, data_selector: u16) -> Self {
        SegmentSet {
            cs: Segment {
                selector: code_selector,
                attrib: attrib::FLAT32_CODE,
                limit: 0xFFFF_FFFF,
                base: 0,
            },
            data: Segment {
                selector: data_selector,
                attrib: attrib::FLAT_DATA,
                limit: 0xFFFF_FFFF,
                base: 0,
            },
            tr: Segment {
                selector: 0,
                attrib: attrib::TSS_BUSY,
                limit: 0x67,
                base: 0,
            },
            ldtr: Segment {
                selector: 0,
                attrib: attrib::LDT,
                limit: 0,
                base: 0,
            },
            gdtr: Segment {
                selector: 0,
                attrib: 0,
                limit: 0,
                base: 0,
            },
            idtr: Segment {
                selector: 0,
                attrib: 0,
                limit: 0,
                base: 0,
            },
        }
    }
}

bitflags! {
    /// General intercept vector 1, VMCB offset 0x00C (APM Table B-1).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Intercept1: u32 {
        const INTR = 1 << 0;
        const NMI = 1 << 1;
        const SMI = 1 << 2;
        const INIT = 1 << 3;
        const VINTR = 1 << 4;
        /// Writes to CR0 that change bits other than CR0.TS or CR0.MP.
        const CR0_SEL_WRITE = 1 << 5;
        const IDTR_READ = 1 << 6;
        const GDTR_READ = 1 << 7;
        const LDTR_READ = 1 << 8;
        const TR_READ = 1 << 9;
        const IDTR_WRITE = 1 << 10;
        const GDTR_WRITE = 1 << 11;
        const LDTR_WRITE = 1 << 12;
        const TR_WRITE = 1 << 13;
        const RDTSC = 1 << 14;
        const RDPMC = 1 << 15;
        const PUSHF = 1 << 16;
        const POPF = 1 << 17;
        const CPUID = 1 << 18;
        const RSM = 1 << 19;
        const IRET = 1 << 20;
        const INTN = 1 << 21;
        const INVD = 1 << 22;
        const PAUSE = 1 << 23;
        const HLT = 1 << 24;
        const INVLPG = 1 << 25;
        const INVLPGA = 1 << 26;
        /// Port I/O, filtered by the I/O permission map at IOPM_BASE_PA.
        const IOIO_PROT = 1 << 27;
        /// RDMSR/WRMSR, filtered by the MSR permission map at MSRPM_BASE_PA.
        const MSR_PROT = 1 << 28;
        const TASK_SWITCH = 1 << 29;
        const FERR_FREEZE = 1 << 30;
        /// Shutdown (triple fault) in the guest.
        const SHUTDOWN = 1 << 31;
    }
}

bitflags! {
    /// General intercept vector 2, VMCB offset 0x010 (APM Table B-1).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Intercept2: u32 {
        /// Must be set: VMRUN fails with VMEXIT_INVALID otherwise (APM 15.5.1).
        const VMRUN = 1 << 0;
        const VMMCALL = 1 << 1;
        const VMLOAD = 1 << 2;
        const VMSAVE = 1 << 3;
        const STGI = 1 << 4;
        const CLGI = 1 << 5;
        const SKINIT = 1 << 6;
        const RDTSCP = 1 << 7;
        const ICEBP = 1 << 8;
        const WBINVD = 1 << 9;
        /// MONITOR and MONITORX.
        const MONITOR = 1 << 10;
        /// MWAIT and MWAITX, unconditionally.
        const MWAIT = 1 << 11;
        /// MWAIT and MWAITX, only if the monitor hardware is armed.
        const MWAIT_CONDITIONAL = 1 << 12;
        const XSETBV = 1 << 13;
        const RDPRU = 1 << 14;
        /// Trap (after completion) on writes to EFER.
        const EFER_WRITE_TRAP = 1 << 15;
        /// Bits 16-31: trap after writes to CR0-CR15; see [`Intercept2::cr_write_trap`].
        const CR0_WRITE_TRAP = 1 << 16;
        const CR3_WRITE_TRAP = 1 << 19;
        const CR4_WRITE_TRAP = 1 << 20;
        const CR8_WRITE_TRAP = 1 << 24;
    }
}

impl Intercept2 {
    /// The trap-after-write intercept for CR`n` (n < 16).
    pub const fn cr_write_trap(n: u32) -> Self {
        Self::from_bits_retain(1 << (16 + (n & 0xF)))
    }
}

bitflags! {
    /// Intercept vector 3, VMCB offset 0x014 (APM Table B-1; newer processors).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Intercept3: u32 {
        const INVLPGB = 1 << 0;
        const INVLPGB_ILLEGAL = 1 << 1;
        const INVPCID = 1 << 2;
        const MCOMMIT = 1 << 3;
        const TLBSYNC = 1 << 4;
        const BUS_LOCK = 1 << 5;
        const IDLE_HLT = 1 << 6;
    }
}

/// `int_ctl` (VMCB offset 0x060, bits 31:0): virtual interrupt control.
pub mod int_ctl {
    pub const V_TPR_MASK: u32 = 0xF;
    pub const V_IRQ: u32 = 1 << 8;
    pub const V_GIF: u32 = 1 << 9;
    pub const V_NMI: u32 = 1 << 11;
    pub const V_NMI_MASK: u32 = 1 << 12;
    pub const V_INTR_PRIO_SHIFT: u32 = 16;
    pub const V_IGN_TPR: u32 = 1 << 20;
    /// Virtualize EFLAGS.IF and the TPR: the guest's IF then only masks virtual
    /// interrupts, and physical interrupts (with the INTR intercept) always exit.
    pub const V_INTR_MASKING: u32 = 1 << 24;
    pub const V_GIF_ENABLE: u32 = 1 << 25;
    pub const V_NMI_ENABLE: u32 = 1 << 26;
    pub const X2AVIC_ENABLE: u32 = 1 << 30;
    pub const AVIC_ENABLE: u32 = 1 << 31;
}

/// `interrupt_shadow` (VMCB offset 0x068).
pub mod int_state {
    /// The guest is in an interrupt shadow (after STI or MOV SS).
    pub const INTERRUPT_SHADOW: u64 = 1 << 0;
    /// Guest EFLAGS.IF as of the #VMEXIT (with V_INTR_MASKING).
    pub const GUEST_INTERRUPT_MASK: u64 = 1 << 1;
}

/// `nested_ctl` (VMCB offset 0x090).
pub mod nested_ctl {
    pub const NP_ENABLE: u64 = 1 << 0;
    pub const SEV_ENABLE: u64 = 1 << 1;
    pub const SEV_ES_ENABLE: u64 = 1 << 2;
    pub const GMET_ENABLE: u64 = 1 << 3;
}

/// `virt_ext` (VMCB offset 0x0B8).
pub mod virt_ext {
    pub const LBR_VIRTUALIZATION: u64 = 1 << 0;
    pub const VIRTUAL_VMSAVE_VMLOAD: u64 = 1 << 1;
}

/// TLB_CONTROL values (VMCB offset 0x05C, APM 15.16.1); other values are reserved.
pub mod tlb_control {
    pub const DO_NOTHING: u8 = 0x00;
    /// Flush the whole TLB (every ASID). Works on every SVM processor.
    pub const FLUSH_ALL: u8 = 0x01;
    /// Flush this guest's ASID only; needs CPUID Fn8000_000A EDX[6] FlushByAsid.
    pub const FLUSH_ASID: u8 = 0x03;
    /// Flush this guest's non-global entries; needs FlushByAsid.
    pub const FLUSH_ASID_NON_GLOBAL: u8 = 0x07;
}

/// VMCB clean bits (offset 0x0C0, APM 15.15.3): a set bit lets the CPU keep its cached
/// copy of that field group. Software must clear a bit after changing its fields and
/// clear all of them on the first VMRUN of a VMCB or after moving it to another CPU.
pub mod clean {
    pub const INTERCEPTS: u32 = 1 << 0;
    pub const IOPM: u32 = 1 << 1;
    pub const ASID: u32 = 1 << 2;
    pub const TPR: u32 = 1 << 3;
    pub const NP: u32 = 1 << 4;
    pub const CR_X: u32 = 1 << 5;
    pub const DR_X: u32 = 1 << 6;
    pub const DT: u32 = 1 << 7;
    pub const SEG: u32 = 1 << 8;
    pub const CR2: u32 = 1 << 9;
    pub const LBR: u32 = 1 << 10;
    pub const AVIC: u32 = 1 << 11;
    pub const CET: u32 = 1 << 12;
}

/// EVENTINJ / EXITINTINFO encoding (APM 15.20): bits 7:0 vector, 10:8 type, 11 error
/// code valid, 31 valid, 63:32 error code.
pub mod event {
    pub const VECTOR_MASK: u64 = 0xFF;
    pub const TYPE_SHIFT: u64 = 8;
    pub const TYPE_MASK: u64 = 7 << TYPE_SHIFT;
    pub const TYPE_INTR: u64 = 0 << TYPE_SHIFT;
    pub const TYPE_NMI: u64 = 2 << TYPE_SHIFT;
    /// Exception (fault or trap).
    pub const TYPE_EXCEPTION: u64 = 3 << TYPE_SHIFT;
    /// Software interrupt (INTn).
    pub const TYPE_SOFT_INT: u64 = 4 << TYPE_SHIFT;
    pub const ERROR_CODE_VALID: u64 = 1 << 11;
    pub const VALID: u64 = 1 << 31;
    pub const ERROR_CODE_SHIFT: u64 = 32;

    /// The EVENTINJ value that delivers `exception` on the next VMRUN.
    pub const fn exception(exception: vcpu::Exception) -> u64 {
        let base = VALID | TYPE_EXCEPTION | exception.vector as u64;
        match exception.error_code {
            Some(code) => base | ERROR_CODE_VALID | ((code as u64) << ERROR_CODE_SHIFT),
            None => base,
        }
    }

    /// The EVENTINJ value for an external interrupt with `vector`.
    pub const fn interrupt(vector: u8) -> u64 {
        VALID | TYPE_INTR | vector as u64
    }
}

/// #VMEXIT codes (EXITCODE, VMCB offset 0x070; APM Vol. 2 Appendix C).
pub mod exit_code {
    /// 0x00-0x0F: read of CR0-CR15.
    pub const CR0_READ: u64 = 0x00;
    /// 0x10-0x1F: write of CR0-CR15.
    pub const CR0_WRITE: u64 = 0x10;
    /// 0x20-0x2F: read of DR0-DR15.
    pub const DR0_READ: u64 = 0x20;
    /// 0x30-0x3F: write of DR0-DR15.
    pub const DR0_WRITE: u64 = 0x30;
    /// 0x40-0x5F: exception vector 0-31.
    pub const EXCEPTION_BASE: u64 = 0x40;
    pub const INTR: u64 = 0x60;
    pub const NMI: u64 = 0x61;
    pub const SMI: u64 = 0x62;
    pub const INIT: u64 = 0x63;
    pub const VINTR: u64 = 0x64;
    pub const CR0_SEL_WRITE: u64 = 0x65;
    pub const IDTR_READ: u64 = 0x66;
    pub const GDTR_READ: u64 = 0x67;
    pub const LDTR_READ: u64 = 0x68;
    pub const TR_READ: u64 = 0x69;
    pub const IDTR_WRITE: u64 = 0x6A;
    pub const GDTR_WRITE: u64 = 0x6B;
    pub const LDTR_WRITE: u64 = 0x6C;
    pub const TR_WRITE: u64 = 0x6D;
    pub const RDTSC: u64 = 0x6E;
    pub const RDPMC: u64 = 0x6F;
    pub const PUSHF: u64 = 0x70;
    pub const POPF: u64 = 0x71;
    pub const CPUID: u64 = 0x72;
    pub const RSM: u64 = 0x73;
    pub const IRET: u64 = 0x74;
    pub const SWINT: u64 = 0x75;
    pub const INVD: u64 = 0x76;
    pub const PAUSE: u64 = 0x77;
    pub const HLT: u64 = 0x78;
    pub const INVLPG: u64 = 0x79;
    pub const INVLPGA: u64 = 0x7A;
    pub const IOIO: u64 = 0x7B;
    pub const MSR: u64 = 0x7C;
    pub const TASK_SWITCH: u64 = 0x7D;
    pub const FERR_FREEZE: u64 = 0x7E;
    pub const SHUTDOWN: u64 = 0x7F;
    pub const VMRUN: u64 = 0x80;
    pub const VMMCALL: u64 = 0x81;
    pub const VMLOAD: u64 = 0x82;
    pub const VMSAVE: u64 = 0x83;
    pub const STGI: u64 = 0x84;
    pub const CLGI: u64 = 0x85;
    pub const SKINIT: u64 = 0x86;
    pub const RDTSCP: u64 = 0x87;
    pub const ICEBP: u64 = 0x88;
    pub const WBINVD: u64 = 0x89;
    pub const MONITOR: u64 = 0x8A;
    pub const MWAIT: u64 = 0x8B;
    pub const MWAIT_CONDITIONAL: u64 = 0x8C;
    pub const XSETBV: u64 = 0x8D;
    pub const RDPRU: u64 = 0x8E;
    pub const EFER_WRITE_TRAP: u64 = 0x8F;
    /// 0x90-0x9F: trap after a write to CR0-CR15.
    pub const CR0_WRITE_TRAP: u64 = 0x90;
    pub const INVLPGB: u64 = 0xA0;
    pub const INVLPGB_ILLEGAL: u64 = 0xA1;
    pub const INVPCID: u64 = 0xA2;
    pub const MCOMMIT: u64 = 0xA3;
    pub const TLBSYNC: u64 = 0xA4;
    /// Nested page fault.
    pub const NPF: u64 = 0x400;
    pub const AVIC_INCOMPLETE_IPI: u64 = 0x401;
    pub const AVIC_NOACCEL: u64 = 0x402;
    pub const VMGEXIT: u64 = 0x403;
    /// VMRUN refused the VMCB (-1). QEMU's TCG stores it zero-extended from 32 bits
    /// (0x0000_0000_FFFF_FFFF); decoders compare the low 32 bits, as KVM does.
    pub const INVALID: u64 = u64::MAX;
    /// SEV-ES: the VMSA was busy (-2).
    pub const BUSY: u64 = u64::MAX - 1;
}

/// CR0 bits used by the start states and checks.
pub mod cr0 {
    pub const PE: u64 = 1 << 0;
    pub const MP: u64 = 1 << 1;
    pub const ET: u64 = 1 << 4;
    pub const NE: u64 = 1 << 5;
    pub const WP: u64 = 1 << 16;
    pub const NW: u64 = 1 << 29;
    pub const CD: u64 = 1 << 30;
    pub const PG: u64 = 1 << 31;
}

/// CR4 bits used by the start states and checks.
pub mod cr4 {
    pub const PAE: u64 = 1 << 5;
    pub const CET: u64 = 1 << 23;
    /// Bits the APM (Vol. 2 3.1.3, Figure 3-8) defines on AMD processors: VME..LA57
    /// (0-12), FSGSBASE (16), PCIDE (17), OSXSAVE (18), SMEP (20), SMAP (21), PKE (22),
    /// CET (23). Everything else, including Intel's VMXE (13) and SMXE (14), is MBZ.
    /// A defined bit for a feature the CPU lacks is MBZ too; that depends on CPUID and
    /// is not checked here (QEMU TCG's `qemu64` model, for one, rejects LA57, SMEP,
    /// SMAP, PKE).
    pub const DEFINED: u64 = 0x1FFF | (0xF7 << 16);
}

/// EFER bits used by the start states and checks.
pub mod efer {
    pub const SCE: u64 = 1 << 0;
    pub const LME: u64 = 1 << 8;
    pub const LMA: u64 = 1 << 10;
    pub const NXE: u64 = 1 << 11;
    /// Must be set in the *guest's* EFER too (APM 15.5.1); the guest can be kept from
    /// seeing it by intercepting RDMSR of EFER.
    pub const SVME: u64 = 1 << 12;
    /// Bits the APM (Vol. 2 3.1.7, Figure 3-7) defines: SCE, LME, LMA, NXE, SVME,
    /// LMSLE, FFXSR, TCE, MCOMMIT (17), INTWB (18), UAIE (20), AIBRSE (21). The rest
    /// (1-7 read-as-zero, 9, 16, 19, 22-63) are MBZ.
    pub const DEFINED: u64 =
        SCE | LME | LMA | NXE | SVME | (0b111 << 13) | (0b11 << 17) | (0b11 << 20);
}

/// Default PAT value after reset (WB, WT, UC-, UC repeated), for G_PAT.
pub const PAT_RESET_VALUE: u64 = 0x0007_0406_0007_0406;

/// Sizes of the permission maps VMRUN checks against the physical-address width.
const IOPM_SIZE: u64 = 3 * 4096;
const MSRPM_SIZE: u64 = 2 * 4096;

/// The VMCB control area, offsets 0x000-0x3FF (APM Table B-1).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlArea {
    /// Bit n: intercept reads of CRn.
    pub intercept_cr_read: u16,
    /// Bit n: intercept writes of CRn.
    pub intercept_cr_write: u16,
    pub intercept_dr_read: u16,
    pub intercept_dr_write: u16,
    /// Bit n: intercept exception vector n.
    pub intercept_exceptions: u32,
    /// [`Intercept1`] bits.
    pub intercept1: u32,
    /// [`Intercept2`] bits.
    pub intercept2: u32,
    /// [`Intercept3`] bits.
    pub intercept3: u32,
    pub reserved_018: [u8; 0x24],
    pub pause_filter_threshold: u16,
    pub pause_filter_count: u16,
    /// Host-physical address of the 12 KiB I/O permission map (low 12 bits ignored).
    pub iopm_base_pa: u64,
    /// Host-physical address of the 8 KiB MSR permission map (low 12 bits ignored).
    pub msrpm_base_pa: u64,
    pub tsc_offset: u64,
    pub guest_asid: u32,
    /// See [`tlb_control`].
    pub tlb_control: u8,
    pub reserved_05d: [u8; 3],
    /// V_TPR, V_IRQ, V_INTR_PRIO, V_IGN_TPR, V_INTR_MASKING, AVIC enable; see
    /// [`int_ctl`]. (Bits 31:0 of the quadword at 0x060.)
    pub int_ctl: u32,
    /// V_INTR_VECTOR in bits 7:0 (bits 39:32 of the quadword at 0x060).
    pub int_vector: u32,
    /// See [`int_state`].
    pub interrupt_shadow: u64,
    pub exitcode: u64,
    pub exitinfo1: u64,
    pub exitinfo2: u64,
    /// An event whose delivery the #VMEXIT interrupted ([`event`] format); must be
    /// re-injected through EVENTINJ.
    pub exitintinfo: u64,
    /// See [`nested_ctl`].
    pub nested_ctl: u64,
    pub avic_apic_bar: u64,
    pub ghcb_gpa: u64,
    /// See [`event`].
    pub eventinj: u64,
    /// Host-physical address of the nested PML4.
    pub n_cr3: u64,
    /// See [`virt_ext`].
    pub virt_ext: u64,
    /// See [`clean`].
    pub vmcb_clean: u32,
    pub reserved_0c4: u32,
    /// Next sequential instruction pointer (with NRIP save; 0 for exits that are not
    /// instruction intercepts).
    pub next_rip: u64,
    /// Number of valid bytes in `guest_instruction_bytes` (decode assists).
    pub guest_instruction_len: u8,
    pub guest_instruction_bytes: [u8; 15],
    pub avic_backing_page: u64,
    pub reserved_0e8: u64,
    pub avic_logical_table: u64,
    pub avic_physical_table: u64,
    pub reserved_100: u64,
    pub vmsa_pa: u64,
    pub reserved_110: [u8; 0x2D0],
    /// Reserved for host (hypervisor) use; the processor does not touch it.
    pub reserved_host: [u8; 0x20],
}

/// The VMCB state save area, offsets 0x400-0xFFF (APM Table B-2).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateSaveArea {
    pub es: Segment,
    pub cs: Segment,
    pub ss: Segment,
    pub ds: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub gdtr: Segment,
    pub ldtr: Segment,
    pub idtr: Segment,
    pub tr: Segment,
    pub reserved_4a0: [u8; 0x2B],
    pub cpl: u8,
    pub reserved_4cc: u32,
    pub efer: u64,
    pub reserved_4d8: [u8; 0x70],
    pub cr4: u64,
    pub cr3: u64,
    pub cr0: u64,
    pub dr7: u64,
    pub dr6: u64,
    pub rflags: u64,
    pub rip: u64,
    pub reserved_580: [u8; 0x58],
    pub rsp: u64,
    /// S_CET, SSP and ISST_ADDR (CET shadow stacks), unused here.
    pub reserved_5e0: [u8; 0x18],
    pub rax: u64,
    pub star: u64,
    pub lstar: u64,
    pub cstar: u64,
    pub sfmask: u64,
    pub kernel_gs_base: u64,
    pub sysenter_cs: u64,
    pub sysenter_esp: u64,
    pub sysenter_eip: u64,
    pub cr2: u64,
    pub reserved_648: [u8; 0x20],
    /// The guest PAT, used with nested paging.
    pub g_pat: u64,
    pub dbgctl: u64,
    pub br_from: u64,
    pub br_to: u64,
    pub last_excp_from: u64,
    pub last_excp_to: u64,
    pub reserved_698: [u8; 0x968],
}

/// One Virtual Machine Control Block.
#[repr(C, align(4096))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vmcb {
    pub control: ControlArea,
    pub save: StateSaveArea,
}

macro_rules! assert_offset {
    ($($field:ident).+ == $offset:expr) => {
        const _: () = assert!(offset_of!(Vmcb, $($field).+) == $offset);
    };
}

const _: () = assert!(size_of::<Segment>() == 16);
const _: () = assert!(size_of::<ControlArea>() == 0x400);
const _: () = assert!(size_of::<StateSaveArea>() == 0xC00);
const _: () = assert!(size_of::<Vmcb>() == 4096);
const _: () = assert!(core::mem::align_of::<Vmcb>() == 4096);

// Table B-1, control area.
assert_offset!(control.intercept_cr_read == 0x000);
assert_offset!(control.intercept_cr_write == 0x002);
assert_offset!(control.intercept_dr_read == 0x004);
assert_offset!(control.intercept_dr_write == 0x006);
assert_offset!(control.intercept_exceptions == 0x008);
assert_offset!(control.intercept1 == 0x00C);
assert_offset!(control.intercept2 == 0x010);
assert_offset!(control.intercept3 == 0x014);
assert_offset!(control.pause_filter_threshold == 0x03C);
assert_offset!(control.pause_filter_count == 0x03E);
assert_offset!(control.iopm_base_pa == 0x040);
assert_offset!(control.msrpm_base_pa == 0x048);
assert_offset!(control.tsc_offset == 0x050);
assert_offset!(control.guest_asid == 0x058);
assert_offset!(control.tlb_control == 0x05C);
assert_offset!(control.int_ctl == 0x060);
assert_offset!(control.int_vector == 0x064);
assert_offset!(control.interrupt_shadow == 0x068);
assert_offset!(control.exitcode == 0x070);
assert_offset!(control.exitinfo1 == 0x078);
assert_offset!(control.exitinfo2 == 0x080);
assert_offset!(control.exitintinfo == 0x088);
assert_offset!(control.nested_ctl == 0x090);
assert_offset!(control.avic_apic_bar == 0x098);
assert_offset!(control.ghcb_gpa == 0x0A0);
assert_offset!(control.eventinj == 0x0A8);
assert_offset!(control.n_cr3 == 0x0B0);
assert_offset!(control.virt_ext == 0x0B8);
assert_offset!(control.vmcb_clean == 0x0C0);
assert_offset!(control.next_rip == 0x0C8);
assert_offset!(control.guest_instruction_len == 0x0D0);
assert_offset!(control.guest_instruction_bytes == 0x0D1);
assert_offset!(control.avic_backing_page == 0x0E0);
assert_offset!(control.avic_logical_table == 0x0F0);
assert_offset!(control.avic_physical_table == 0x0F8);
assert_offset!(control.vmsa_pa == 0x108);
assert_offset!(control.reserved_host == 0x3E0);

// Table B-2, state save area (APM offset + 0x400).
assert_offset!(save.es == 0x400);
assert_offset!(save.cs == 0x410);
assert_offset!(save.ss == 0x420);
assert_offset!(save.ds == 0x430);
assert_offset!(save.fs == 0x440);
assert_offset!(save.gs == 0x450);
assert_offset!(save.gdtr == 0x460);
assert_offset!(save.ldtr == 0x470);
assert_offset!(save.idtr == 0x480);
assert_offset!(save.tr == 0x490);
assert_offset!(save.cpl == 0x4CB);
assert_offset!(save.efer == 0x4D0);
assert_offset!(save.cr4 == 0x548);
assert_offset!(save.cr3 == 0x550);
assert_offset!(save.cr0 == 0x558);
assert_offset!(save.dr7 == 0x560);
assert_offset!(save.dr6 == 0x568);
assert_offset!(save.rflags == 0x570);
assert_offset!(save.rip == 0x578);
assert_offset!(save.rsp == 0x5D8);
assert_offset!(save.reserved_5e0 == 0x5E0);
assert_offset!(save.rax == 0x5F8);
assert_offset!(save.star == 0x600);
assert_offset!(save.lstar == 0x608);
assert_offset!(save.cstar == 0x610);
assert_offset!(save.sfmask == 0x618);
assert_offset!(save.kernel_gs_base == 0x620);
assert_offset!(save.sysenter_cs == 0x628);
assert_offset!(save.sysenter_esp == 0x630);
assert_offset!(save.sysenter_eip == 0x638);
assert_offset!(save.cr2 == 0x640);
assert_offset!(save.g_pat == 0x668);
assert_offset!(save.dbgctl == 0x670);
assert_offset!(save.br_from == 0x678);
assert_offset!(save.br_to == 0x680);
assert_offset!(save.last_excp_from == 0x688);
assert_offset!(save.last_excp_to == 0x690);

impl Vmcb {
    /// An all-zero VMCB (every field is an integer, so this is a valid value).
    pub const fn zeroed() -> Self {
        // SAFETY: Vmcb is plain integers and integer arrays; all-zero is valid.
        unsafe { core::mem::zeroed() }
    }

    /// Fill the control area for a guest using nested paging and the permission maps:
    /// intercepts for everything the VMM must see or must not let the guest do, and
    /// the ASID, maps, N_CR3 and clean bits. Anything else stays zero.
    ///
    /// Intercepted: physical INTR and NMI (so the host keeps its timer and NMIs),
    /// CPUID, HLT, port I/O and MSRs through the maps, shutdown, every SVM instruction
    /// (VMRUN, which is mandatory, VMMCALL as the hypercall, and VMLOAD, VMSAVE, STGI,
    /// CLGI, SKINIT, INVLPGA which would otherwise reach host state), and XSETBV
    /// (XCR0 is not switched by VMRUN, so a guest write would change the host's).
    /// #AC and #DB, and ICEBP (which raises #DB), so that a guest whose exception
    /// delivery raises them again cannot hold the processor in microcode forever
    /// (CVE-2015-5307, CVE-2015-8104; the backend reflects them, see `reflect`).
    /// INVD and WBINVD (machine-wide cache effects), RDPMC (host counters), and
    /// MONITOR, MWAIT and RDPRU, which CPUID hides but the processor would execute
    /// (APM Vol. 2 15.9, 15.10, Table B-1).
    /// V_INTR_MASKING keeps the guest's EFLAGS.IF from masking host interrupts.
    /// TLB_CONTROL is `tlb_flush` (see [`tlb_control`]); the first VMRUN of an ASID
    /// whose tables were just built needs a flush.
    pub fn init_control(
        &mut self,
        asid: u32,
        iopm_pa: u64,
        msrpm_pa: u64,
        npt_root: u64,
        tlb_flush: u8,
    ) {
        let c = &mut self.control;
        c.intercept_cr_read = 0;
        c.intercept_cr_write = 0;
        c.intercept_dr_read = 0;
        c.intercept_dr_write = 0;
        c.intercept_exceptions =
            (1 << vcpu::Exception::DB_VECTOR) | (1 << vcpu::Exception::AC_VECTOR);
        c.intercept1 = (Intercept1::INTR
            | Intercept1::NMI
            | Intercept1::CPUID
            | Intercept1::HLT
            | Intercept1::RDPMC
            | Intercept1::INVD
            | Intercept1::INVLPGA
            | Intercept1::IOIO_PROT
            | Intercept1::MSR_PROT
            | Intercept1::SHUTDOWN)
            .bits();
        c.intercept2 = (Intercept2::VMRUN
            | Intercept2::VMMCALL
            | Intercept2::VMLOAD
            | Intercept2::VMSAVE
            | Intercept2::STGI
            | Intercept2::CLGI
            | Intercept2::SKINIT
            | Intercept2::XSETBV
            | Intercept2::ICEBP
            | Intercept2::WBINVD
            | Intercept2::MONITOR
            | Intercept2::MWAIT
            | Intercept2::RDPRU)
            .bits();
        c.intercept3 = 0;
        c.iopm_base_pa = iopm_pa;
        c.msrpm_base_pa = msrpm_pa;
        c.tsc_offset = 0;
        c.guest_asid = asid;
        c.tlb_control = tlb_flush;
        c.int_ctl = int_ctl::V_INTR_MASKING;
        c.int_vector = 0;
        c.interrupt_shadow = 0;
        c.nested_ctl = nested_ctl::NP_ENABLE;
        c.n_cr3 = npt_root;
        c.eventinj = 0;
        c.virt_ext = 0;
        c.vmcb_clean = 0;
    }

    /// Fill the state save area for `start`: segments, control registers, EFER,
    /// RFLAGS, RIP, RSP, RAX (from `start.regs.rax`; VMRUN loads RAX from here, the
    /// other registers are the entry stub's job), debug registers and G_PAT.
    ///
    /// - [`CpuMode::Real`]: CR0 = ET, CS base = `rip & !0xFFFF` (selector = base >> 4)
    ///   and IP = `rip & 0xFFFF`, so 0x7C00 runs as 0000:7C00; data segments at 0.
    /// - [`CpuMode::Protected`]: CR0 = PE|ET, flat 4 GiB segments with the
    ///   [`FLAT_CODE_SELECTOR`]/[`FLAT_DATA_SELECTOR`] selectors, paging off.
    /// - [`CpuMode::Long`]: CR0 = PE|ET|NE|WP|PG, CR4 = PAE, EFER = LME|LMA (VMRUN does
    ///   not derive LMA, it must be given), CR3 = `start.cr3`, 64-bit CS.
    ///
    /// EFER.SVME is set in every mode (a VMRUN requirement). GDTR/IDTR are empty
    /// outside real mode; set `save.gdtr`/`save.idtr` afterwards if the loader placed
    /// tables in guest memory.
    pub fn set_start_state(&mut self, start: &StartState) {
        let (segments, cr0, cr4, efer, rip, cr3) = match start.mode {
            CpuMode::Real => {
                let cs_base = (start.rip & 0xFFFF_0000) as u32;
                (
                    SegmentSet::real_mode(cs_base),
                    cr0::ET,
                    0,
                    efer::SVME,
                    start.rip & 0xFFFF,
                    0,
                )
            }
            CpuMode::Protected => (
                SegmentSet::protected_flat(FLAT_CODE_SELECTOR, FLAT_DATA_SELECTOR),
                cr0::PE | cr0::ET,
                0,
                efer::SVME,
                start.rip,
                0,
            ),
            CpuMode::Long => (
                SegmentSet::long_mode(FLAT_CODE_SELECTOR, FLAT_DATA_SELECTOR),
                cr0::PE | cr0::ET | cr0::NE | cr0::WP | cr0::PG,
                cr4::PAE,
                efer::SVME | efer::LME | efer::LMA,
                start.rip,
                start.cr3,
            ),
        };
        let s = &mut self.save;
        s.load_segments(&segments);
        if let Some((base, limit)) = start.gdtr {
            s.gdtr.base = base;
            s.gdtr.limit = limit as u32;
        }
        s.cpl = 0;
        s.efer = efer;
        s.cr0 = cr0;
        s.cr3 = cr3;
        s.cr4 = cr4;
        s.cr2 = 0;
        s.dr6 = 0xFFFF_0FF0;
        s.dr7 = 0x400;
        // Bit 1 of RFLAGS is reserved as 1; IF clear until the guest enables interrupts.
        s.rflags = 0x2;
        s.rip = rip;
        s.rsp = start.rsp;
        s.rax = start.regs.rax;
        s.g_pat = PAT_RESET_VALUE;
        s.star = 0;
        s.lstar = 0;
        s.cstar = 0;
        s.sfmask = 0;
        s.kernel_gs_base = 0;
        s.sysenter_cs = 0;
        s.sysenter_esp = 0;
        s.sysenter_eip = 0;
        s.dbgctl = 0;
        self.control.vmcb_clean = 0;
    }

    /// The guest's processor mode as the save area describes it (for reports).
    pub fn guest_mode(&self) -> CpuMode {
        if self.save.efer & efer::LMA != 0 {
            CpuMode::Long
        } else if self.save.cr0 & cr0::PE != 0 {
            CpuMode::Protected
        } else {
            CpuMode::Real
        }
    }

    /// Queue `exception` for delivery on the next VMRUN.
    pub fn inject_exception(&mut self, exception: Exception) {
        self.control.eventinj = event::exception(exception);
    }

    /// Check the VMCB against the conditions under which VMRUN fails with
    /// VMEXIT_INVALID (APM Vol. 2 15.5.1, "Canonicalization and Consistency Checks"),
    /// in the APM's order, and name the first that fails.
    ///
    /// `asid_count` is CPUID Fn8000_000A EBX (NASID; 0 skips that check) and
    /// `phys_addr_width` is CPUID Fn8000_0008 EAX[7:0].
    ///
    /// Beyond the APM's list, three stricter checks catch VMM bugs that the hardware
    /// may or may not reject: the guest ASID must be below NASID (15.16), TLB_CONTROL
    /// must be a defined value (15.16.1), and in legacy (non-long) mode CR3 must fit
    /// in 32 bits. Guest-visible feature bits (CR4 bits for features the CPU lacks)
    /// are not checked.
    pub fn consistency_check(
        &self,
        asid_count: u32,
        phys_addr_width: u8,
    ) -> Result<(), &'static str> {
        check_areas(&self.control, &self.save, asid_count, phys_addr_width)
    }
}

/// [`Vmcb::consistency_check`] on a control area and a save area that need not sit in a
/// VMCB yet (a candidate state is checked before it replaces the vCPU's).
pub fn check_areas(
    c: &ControlArea,
    s: &StateSaveArea,
    asid_count: u32,
    phys_addr_width: u8,
) -> Result<(), &'static str> {
    let width = phys_addr_width.clamp(32, 52) as u32;
    let long_paging = s.efer & efer::LME != 0 && s.cr0 & cr0::PG != 0;

    if s.efer & efer::SVME == 0 {
        return Err("EFER.SVME is clear (the guest's EFER must have SVME set)");
    }
    if s.cr0 & cr0::CD == 0 && s.cr0 & cr0::NW != 0 {
        return Err("CR0.NW is set while CR0.CD is clear");
    }
    if s.cr0 >> 32 != 0 {
        return Err("CR0[63:32] is not zero");
    }
    let cr3_mbz = if long_paging {
        !0u64 << width
    } else {
        !0u64 << 32
    };
    if s.cr3 & cr3_mbz != 0 {
        return Err("CR3 has MBZ bits set (beyond the physical-address width in long mode, above bit 31 otherwise)");
    }
    if s.cr4 & !cr4::DEFINED != 0 {
        return Err("CR4 has MBZ (reserved) bits set");
    }
    if s.cr4 & cr4::CET != 0 && s.cr0 & cr0::WP == 0 {
        return Err("CR4.CET is set while CR0.WP is clear");
    }
    if s.dr6 >> 32 != 0 {
        return Err("DR6[63:32] is not zero");
    }
    if s.dr7 >> 32 != 0 {
        return Err("DR7[63:32] is not zero");
    }
    if s.efer & !efer::DEFINED != 0 {
        return Err("EFER has MBZ (reserved) bits set");
    }
    if long_paging && s.cr4 & cr4::PAE == 0 {
        return Err("EFER.LME and CR0.PG are set but CR4.PAE is clear");
    }
    if long_paging && s.cr0 & cr0::PE == 0 {
        return Err("EFER.LME and CR0.PG are set but CR0.PE is clear");
    }
    if long_paging
        && s.cr4 & cr4::PAE != 0
        && s.cs.attrib & attrib::L != 0
        && s.cs.attrib & attrib::DB != 0
    {
        return Err("long mode with CS.L and CS.D both set");
    }
    if c.intercept2 & Intercept2::VMRUN.bits() == 0 {
        return Err("the VMRUN intercept is clear");
    }
    let limit = 1u64 << width;
    // The hardware ignores the low 12 bits of both bases; a map must end below the
    // largest physical address (QEMU TCG applies the same bound).
    let ends_in_range = |base: u64, size: u64| matches!((base & !0xFFF).checked_add(size), Some(end) if end < limit);
    if !ends_in_range(c.msrpm_base_pa, MSRPM_SIZE) {
        return Err("the MSR permission map extends beyond the physical-address width");
    }
    if !ends_in_range(c.iopm_base_pa, IOPM_SIZE) {
        return Err("the I/O permission map extends beyond the physical-address width");
    }
    if let Some(reason) = eventinj_problem(c.eventinj) {
        return Err(reason);
    }
    if c.guest_asid == 0 {
        return Err("guest ASID is 0 (reserved for the host)");
    }
    if asid_count != 0 && c.guest_asid >= asid_count {
        return Err("guest ASID is not below the CPU's ASID count (CPUID 8000_000A EBX)");
    }
    if !matches!(
        c.tlb_control,
        tlb_control::DO_NOTHING
            | tlb_control::FLUSH_ALL
            | tlb_control::FLUSH_ASID
            | tlb_control::FLUSH_ASID_NON_GLOBAL
    ) {
        return Err("TLB_CONTROL holds a reserved value");
    }
    Ok(())
}

impl StateSaveArea {
    /// Load every segment and descriptor-table register from `set`.
    pub fn load_segments(&mut self, set: &SegmentSet) {
        self.cs = set.cs;
        self.ds = set.data;
        self.es = set.data;
        self.fs = set.data;
        self.gs = set.data;
        self.ss = set.data;
        self.tr = set.tr;
        self.ldtr = set.ldtr;
        self.gdtr = set.gdtr;
        self.idtr = set.idtr;
    }
}

impl Default for Vmcb {
    fn default() -> Self {
        Self::zeroed()
    }
}

/// Why VMRUN would refuse EVENTINJ (APM 15.20), if it would.
fn eventinj_problem(eventinj: u64) -> Option<&'static str> {
    if eventinj & event::VALID == 0 {
        return None;
    }
    let vector = eventinj & event::VECTOR_MASK;
    match eventinj & event::TYPE_MASK {
        event::TYPE_INTR | event::TYPE_NMI | event::TYPE_SOFT_INT => None,
        // Vector 2 is the NMI, which has its own type. QEMU TCG also refuses vector 31
        // (reserved anyway), so the bound is 31 rather than 32.
        event::TYPE_EXCEPTION if vector == 2 => {
            Some("EVENTINJ injects vector 2 as an exception (NMI must use the NMI type)")
        }
        event::TYPE_EXCEPTION if vector >= 31 => {
            Some("EVENTINJ injects an exception with a vector that is not an exception (>= 31)")
        }
        event::TYPE_EXCEPTION => None,
        _ => Some("EVENTINJ has a reserved event type (1, 5, 6 or 7)"),
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::boxed::Box;
    use vcpu::GuestRegisters;

    const WIDTH: u8 = 48;
    const ASIDS: u32 = 16;

    fn start(mode: CpuMode, rip: u64) -> StartState {
        StartState {
            mode,
            rip,
            rsp: 0x8000,
            cr3: 0x10_0000,
            regs: GuestRegisters {
                rax: 0xAA,
                ..GuestRegisters::default()
            },
            gdtr: None,
        }
    }

    fn vmcb(mode: CpuMode) -> Box<Vmcb> {
        let mut v = Box::new(Vmcb::zeroed());
        v.init_control(1, 0x10_0000, 0x20_0000, 0x30_0000, tlb_control::FLUSH_ALL);
        v.set_start_state(&start(mode, 0x7C00));
        v
    }

    fn check(v: &Vmcb) -> Result<(), &'static str> {
        v.consistency_check(ASIDS, WIDTH)
    }

    fn fails_with(v: &Vmcb, needle: &str) {
        match check(v) {
            Err(reason) => assert!(reason.contains(needle), "{reason:?} lacks {needle:?}"),
            Ok(()) => panic!("accepted, expected failure containing {needle:?}"),
        }
    }

    #[test]
    fn start_states_pass() {
        for mode in [CpuMode::Real, CpuMode::Protected, CpuMode::Long] {
            let v = vmcb(mode);
            assert_eq!(check(&v), Ok(()), "{mode:?}");
            assert_eq!(v.guest_mode(), mode);
            assert_eq!(v.save.rax, 0xAA);
            assert_eq!(v.save.rsp, 0x8000);
            assert_ne!(v.save.efer & efer::SVME, 0);
        }
    }

    #[test]
    fn real_mode_layout() {
        let v = vmcb(CpuMode::Real);
        assert_eq!(v.save.cs.selector, 0);
        assert_eq!(v.save.cs.base, 0);
        assert_eq!(v.save.rip, 0x7C00);
        assert_eq!(v.save.cs.attrib, 0x9B);
        assert_eq!(v.save.ss.attrib, 0x93);
        assert_eq!(v.save.cr0, cr0::ET);

        let mut v = Box::new(Vmcb::zeroed());
        v.set_start_state(&start(CpuMode::Real, 0xFFFF_FFF0));
        assert_eq!(v.save.cs.selector, 0xF000);
        assert_eq!(v.save.cs.base, 0xFFFF_0000);
        assert_eq!(v.save.rip, 0xFFF0);

        v.set_start_state(&start(CpuMode::Real, 0x9_1234));
        assert_eq!(v.save.cs.selector, 0x9000);
        assert_eq!(v.save.cs.base + v.save.rip, 0x9_1234);
    }

    #[test]
    fn protected_and_long_layout() {
        let v = vmcb(CpuMode::Protected);
        assert_eq!(v.save.cs.attrib, 0xC9B);
        assert_eq!(v.save.ds.attrib, 0xC93);
        assert_eq!(v.save.cs.selector, FLAT_CODE_SELECTOR);
        assert_eq!(v.save.ss.selector, FLAT_DATA_SELECTOR);
        assert_eq!(v.save.cs.limit, 0xFFFF_FFFF);
        assert_eq!(v.save.cr0 & (cr0::PE | cr0::PG), cr0::PE);
        assert_eq!(v.save.cr3, 0);

        let v = vmcb(CpuMode::Long);
        assert_eq!(v.save.cs.attrib, 0xA9B);
        assert_eq!(v.save.cr3, 0x10_0000);
        assert_eq!(v.save.cr4, cr4::PAE);
        assert_eq!(v.save.efer, efer::SVME | efer::LME | efer::LMA);
        assert_ne!(v.save.cr0 & cr0::PG, 0);
        assert_eq!(v.save.tr.attrib, 0x8B);
    }

    #[test]
    fn attribute_helpers() {
        // A flat 64-bit kernel code descriptor (0x00AF9A000000FFFF).
        assert_eq!(attrib::from_descriptor(0x00AF_9A00_0000_FFFF), 0xA9A);
        assert_eq!(attrib::from_descriptor(0x00CF_9300_0000_FFFF), 0xC93);
        assert_eq!(
            attrib::make(attrib::TYPE_DATA_RW_ACCESSED, 3, attrib::S | attrib::P),
            0xF3
        );
    }

    #[test]
    fn event_encoding() {
        assert_eq!(event::exception(Exception::UD), 0x8000_0306);
        assert_eq!(event::exception(Exception::GP0), 0x0000_0000_8000_0B0D);
        assert_eq!(
            event::exception(Exception {
                vector: 14,
                error_code: Some(0x1234)
            }),
            0x0000_1234_8000_0B0E
        );
        assert_eq!(event::interrupt(0x20), 0x8000_0020);
        let mut v = vmcb(CpuMode::Long);
        v.inject_exception(Exception::UD);
        assert_eq!(check(&v), Ok(()));
    }

    #[test]
    fn intercept_bits() {
        assert_eq!(Intercept1::CPUID.bits(), 1 << 18);
        assert_eq!(Intercept1::HLT.bits(), 1 << 24);
        assert_eq!(Intercept1::IOIO_PROT.bits(), 1 << 27);
        assert_eq!(Intercept1::MSR_PROT.bits(), 1 << 28);
        assert_eq!(Intercept1::SHUTDOWN.bits(), 1 << 31);
        assert_eq!(Intercept2::VMRUN.bits(), 1);
        assert_eq!(Intercept2::VMMCALL.bits(), 2);
        assert_eq!(Intercept2::cr_write_trap(3), Intercept2::CR3_WRITE_TRAP);
        assert_eq!(Intercept2::XSETBV.bits(), 1 << 13);
        // Exit codes for the general intercepts follow the bit positions from 0x60.
        assert_eq!(exit_code::INTR + 18, exit_code::CPUID);
        assert_eq!(exit_code::INTR + 24, exit_code::HLT);
        assert_eq!(exit_code::INTR + 31, exit_code::SHUTDOWN);
        assert_eq!(exit_code::VMRUN + 13, exit_code::XSETBV);
    }

    #[test]
    fn init_control_sets_required_fields() {
        let v = vmcb(CpuMode::Long);
        let c = &v.control;
        assert_eq!(c.guest_asid, 1);
        assert_eq!(c.iopm_base_pa, 0x10_0000);
        assert_eq!(c.msrpm_base_pa, 0x20_0000);
        assert_eq!(c.n_cr3, 0x30_0000);
        assert_eq!(c.nested_ctl, nested_ctl::NP_ENABLE);
        assert_ne!(c.intercept2 & Intercept2::VMRUN.bits(), 0);
        assert_ne!(c.int_ctl & int_ctl::V_INTR_MASKING, 0);
        // #DB and #AC always exit (CVE-2015-8104, CVE-2015-5307), and the instructions
        // with machine-wide effects or hidden by CPUID.
        assert_eq!(c.intercept_exceptions, (1 << 1) | (1 << 17));
        for i in [Intercept1::RDPMC, Intercept1::INVD] {
            assert_ne!(c.intercept1 & i.bits(), 0, "{i:?}");
        }
        for i in [
            Intercept2::WBINVD,
            Intercept2::MONITOR,
            Intercept2::MWAIT,
            Intercept2::RDPRU,
            Intercept2::ICEBP,
        ] {
            assert_ne!(c.intercept2 & i.bits(), 0, "{i:?}");
        }
        // Physically, the fields land at the documented offsets.
        let bytes: &[u8; 4096] = unsafe { &*(&*v as *const Vmcb as *const [u8; 4096]) };
        assert_eq!(bytes[0x58], 1);
        assert_eq!(bytes[0x5C], tlb_control::FLUSH_ALL);
        assert_eq!(bytes[0x10] & 1, 1);
        assert_eq!(&bytes[0xB0..0xB8], &0x30_0000u64.to_le_bytes());
        assert_eq!(&bytes[0x5F8..0x600], &0xAAu64.to_le_bytes());
    }

    #[test]
    fn rule_efer_svme() {
        let mut v = vmcb(CpuMode::Real);
        v.save.efer &= !efer::SVME;
        fails_with(&v, "SVME");
    }

    #[test]
    fn rule_cr0_cd_nw() {
        let mut v = vmcb(CpuMode::Protected);
        v.save.cr0 |= cr0::NW;
        fails_with(&v, "CR0.NW");
        v.save.cr0 |= cr0::CD;
        assert_eq!(check(&v), Ok(()));
    }

    #[test]
    fn rule_cr0_high() {
        let mut v = vmcb(CpuMode::Protected);
        v.save.cr0 |= 1 << 32;
        fails_with(&v, "CR0[63:32]");
    }

    #[test]
    fn rule_cr3_mbz() {
        let mut v = vmcb(CpuMode::Long);
        v.save.cr3 |= 1 << 48;
        fails_with(&v, "CR3");
        v.save.cr3 = (1 << 47) | 0x1000;
        assert_eq!(check(&v), Ok(()));
        v.save.cr3 |= 1 << 63;
        fails_with(&v, "CR3");

        let mut v = vmcb(CpuMode::Protected);
        v.save.cr3 = 1 << 32;
        fails_with(&v, "CR3");
    }

    #[test]
    fn rule_cr4_mbz() {
        for bit in [13, 14, 15, 19, 24, 63] {
            let mut v = vmcb(CpuMode::Long);
            v.save.cr4 |= 1 << bit;
            fails_with(&v, "CR4 has MBZ");
        }
        let mut v = vmcb(CpuMode::Long);
        v.save.cr4 |= (1 << 9) | (1 << 10) | (1 << 18) | (1 << 16);
        assert_eq!(check(&v), Ok(()));
    }

    #[test]
    fn rule_cet_needs_wp() {
        let mut v = vmcb(CpuMode::Long);
        v.save.cr4 |= cr4::CET;
        assert_eq!(check(&v), Ok(()));
        v.save.cr0 &= !cr0::WP;
        fails_with(&v, "CR4.CET");
    }

    #[test]
    fn rule_dr6_dr7_high() {
        let mut v = vmcb(CpuMode::Long);
        v.save.dr6 |= 1 << 40;
        fails_with(&v, "DR6");
        let mut v = vmcb(CpuMode::Long);
        v.save.dr7 |= 1 << 32;
        fails_with(&v, "DR7");
    }

    #[test]
    fn rule_efer_mbz() {
        for bit in [1, 9, 16, 19, 22, 63] {
            let mut v = vmcb(CpuMode::Long);
            v.save.efer |= 1 << bit;
            fails_with(&v, "EFER has MBZ");
        }
        let mut v = vmcb(CpuMode::Long);
        v.save.efer |= efer::NXE | efer::SCE;
        assert_eq!(check(&v), Ok(()));
    }

    #[test]
    fn rule_long_mode_needs_pae() {
        let mut v = vmcb(CpuMode::Long);
        v.save.cr4 &= !cr4::PAE;
        fails_with(&v, "CR4.PAE");
        // Without paging, LME alone is fine (the step before enabling long mode).
        v.save.cr0 &= !cr0::PG;
        v.save.efer &= !efer::LMA;
        assert_eq!(check(&v), Ok(()));
    }

    #[test]
    fn rule_long_mode_needs_pe() {
        let mut v = vmcb(CpuMode::Long);
        v.save.cr0 &= !cr0::PE;
        fails_with(&v, "CR0.PE");
    }

    #[test]
    fn rule_cs_l_and_d() {
        let mut v = vmcb(CpuMode::Long);
        v.save.cs.attrib |= attrib::DB;
        fails_with(&v, "CS.L and CS.D");
        // In protected mode the combination is not checked.
        let mut v = vmcb(CpuMode::Protected);
        v.save.cs.attrib |= attrib::L;
        assert_eq!(check(&v), Ok(()));
    }

    #[test]
    fn rule_vmrun_intercept() {
        let mut v = vmcb(CpuMode::Real);
        v.control.intercept2 &= !Intercept2::VMRUN.bits();
        fails_with(&v, "VMRUN intercept");
    }

    #[test]
    fn rule_permission_map_bases() {
        let mut v = vmcb(CpuMode::Real);
        v.control.msrpm_base_pa = (1 << WIDTH) - 0x1000;
        fails_with(&v, "MSR permission map");
        v.control.msrpm_base_pa = (1 << WIDTH) - 0x3000;
        assert_eq!(check(&v), Ok(()));
        v.control.iopm_base_pa = (1 << WIDTH) - 0x3000;
        fails_with(&v, "I/O permission map");
        v.control.iopm_base_pa = (1 << WIDTH) - 0x4000;
        assert_eq!(check(&v), Ok(()));
        v.control.iopm_base_pa = u64::MAX;
        fails_with(&v, "I/O permission map");
        // A narrower CPU rejects what a wider one accepts.
        v.control.iopm_base_pa = 1 << 40;
        assert_eq!(check(&v), Ok(()));
        assert!(v.consistency_check(ASIDS, 40).is_err());
    }

    #[test]
    fn rule_eventinj() {
        let mut v = vmcb(CpuMode::Real);
        v.control.eventinj = event::VALID | (1 << event::TYPE_SHIFT) | 0x20;
        fails_with(&v, "reserved event type");
        v.control.eventinj = event::VALID | (6 << event::TYPE_SHIFT) | 3;
        fails_with(&v, "reserved event type");
        v.control.eventinj = event::VALID | event::TYPE_EXCEPTION | 2;
        fails_with(&v, "vector 2");
        v.control.eventinj = event::VALID | event::TYPE_EXCEPTION | 0x40;
        fails_with(&v, "not an exception");
        v.control.eventinj = event::VALID | event::TYPE_NMI | 2;
        assert_eq!(check(&v), Ok(()));
        v.control.eventinj = event::VALID | event::TYPE_SOFT_INT | 0x80;
        assert_eq!(check(&v), Ok(()));
        // Without the valid bit nothing is checked.
        v.control.eventinj = 7 << event::TYPE_SHIFT;
        assert_eq!(check(&v), Ok(()));
    }

    #[test]
    fn rule_asid() {
        let mut v = vmcb(CpuMode::Real);
        v.control.guest_asid = 0;
        fails_with(&v, "ASID is 0");
        v.control.guest_asid = ASIDS;
        fails_with(&v, "ASID count");
        assert_eq!(v.consistency_check(0, WIDTH), Ok(()));
        v.control.guest_asid = ASIDS - 1;
        assert_eq!(check(&v), Ok(()));
    }

    #[test]
    fn rule_tlb_control() {
        let mut v = vmcb(CpuMode::Real);
        for ok in [0, 1, 3, 7] {
            v.control.tlb_control = ok;
            assert_eq!(check(&v), Ok(()));
        }
        v.control.tlb_control = 2;
        fails_with(&v, "TLB_CONTROL");
    }
}
