//! A vCPU's complete architectural state as plain data ([`CpuState`]), the one format
//! both backends save to and load from (`Vcpu::save_state` / `Vcpu::load_state`), its
//! vendor-independent consistency rules ([`CpuState::check`]) and its versioned byte
//! encoding ([`CpuState::to_bytes`] / [`CpuState::from_bytes`]) for snapshots.
//!
//! # What is in it
//!
//! The general-purpose registers, RIP, RSP, RFLAGS; the segment registers and GDTR/IDTR;
//! CR0, CR2, CR3, CR4 and CR8 (the task priority); DR0-DR3, DR6, DR7; the MSRs a backend
//! keeps per vCPU ([`Msrs`]); the PAE page-directory-pointer registers; the x87/SSE
//! image ([`FxArea`]); and the event state ([`Events`]): an event queued for
//! injection, the STI/MOV SS interrupt shadow, NMI blocking, interrupt- and NMI-window
//! requests, pending debug exceptions. Every value is the one the *guest* sees: CR0/CR4
//! without the bits the hypervisor forces (VMX read shadows), EFER without SVME.
//!
//! Not in it: XCR0 and XSAVE state beyond the FXSAVE image (guests are not offered
//! XSAVE, so XCR0 stays 1 and no extended state exists), and what the VMM core keeps
//! itself (the local APIC, MTRRs, MISC_ENABLE, the halted flag).
//!
//! # Segment attributes
//!
//! [`Segment::attrib`] uses the AMD64 compressed attribute format (APM Vol. 2 15.5.1,
//! "Segment State in the VMCB") for bits 11:0 and one bit of its own:
//!
//! | bits  | meaning                                                                |
//! |-------|------------------------------------------------------------------------|
//! | 3:0   | type (descriptor bits 43:40)                                           |
//! | 4     | S: 1 = code/data, 0 = system (descriptor bit 44)                       |
//! | 6:5   | DPL (descriptor bits 46:45)                                            |
//! | 7     | P, present (descriptor bit 47)                                         |
//! | 8     | AVL (descriptor bit 52)                                                |
//! | 9     | L, 64-bit code (descriptor bit 53)                                     |
//! | 10    | D/B (descriptor bit 54)                                                |
//! | 11    | G, granularity (descriptor bit 55); the limit field is always in bytes |
//! | 12    | [`attrib::UNUSABLE`]: VMX's "segment unusable" (a null selector was loaded) |
//! | 15:13 | reserved, 0                                                            |
//!
//! VMX access rights (SDM Vol. 3C 25.4.1, Table 25-2) hold the same descriptor bits at
//! 7:0 and 15:12 and "unusable" at bit 16, so the mapping is a shift of the high nibble
//! and of the unusable bit: AR 7:0 = bits 7:0, AR 15:12 = bits 11:8, AR 16 = bit 12
//! (`vmx::state` converts). For an unusable segment VMX keeps the other bits
//! undefined except SS.DPL, which stays the CPL; they are carried as they are.
//! The VMCB has no unusable bit: there a segment is unusable when P = 0 (a null
//! selector loads a not-present descriptor), so AMD-V saves "unusable" as `!P` and
//! loads an unusable segment with P cleared (`svm::state`).

use crate::cr_policy::{cr0, cr4, efer, is_canonical};
use crate::fpu::FxArea;
use crate::GuestRegisters;

/// One segment register: the selector and its hidden descriptor cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    pub selector: u16,
    /// See the module documentation and [`attrib`].
    pub attrib: u16,
    /// In bytes (already scaled by G).
    pub limit: u32,
    pub base: u64,
}

/// Bits of [`Segment::attrib`].
pub mod attrib {
    pub const TYPE_MASK: u16 = 0xF;
    /// Type bit 3: code (with S = 1).
    pub const TYPE_CODE: u16 = 1 << 3;
    pub const S: u16 = 1 << 4;
    pub const DPL_SHIFT: u16 = 5;
    pub const DPL_MASK: u16 = 3 << DPL_SHIFT;
    pub const P: u16 = 1 << 7;
    pub const AVL: u16 = 1 << 8;
    pub const L: u16 = 1 << 9;
    pub const DB: u16 = 1 << 10;
    pub const G: u16 = 1 << 11;
    /// The register holds no usable descriptor (VMX "segment unusable").
    pub const UNUSABLE: u16 = 1 << 12;
    /// Bits 15:13 are reserved.
    pub const RESERVED: u16 = 0xE000;
}

impl Segment {
    pub const fn usable(&self) -> bool {
        self.attrib & attrib::UNUSABLE == 0
    }
    pub const fn dpl(&self) -> u8 {
        ((self.attrib & attrib::DPL_MASK) >> attrib::DPL_SHIFT) as u8
    }
}

/// GDTR or IDTR.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableRegister {
    pub base: u64,
    pub limit: u16,
}

/// The MSRs a backend keeps per vCPU (in the VMCB/VMCS, the VMX MSR areas, or
/// software copies). FS and GS base are the segment bases.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Msrs {
    /// IA32_EFER as the guest reads it (AMD-V's forced SVME is not part of it).
    pub efer: u64,
    pub star: u64,
    pub lstar: u64,
    pub cstar: u64,
    /// IA32_FMASK / SFMASK.
    pub sfmask: u64,
    pub kernel_gs_base: u64,
    pub sysenter_cs: u64,
    pub sysenter_esp: u64,
    pub sysenter_eip: u64,
    pub pat: u64,
    /// Guest TSC = host TSC + `tsc_offset` (wrapping). The offset is only meaningful on
    /// the machine and boot it was taken on: to restore after a hypervisor restart, or
    /// to have the guest's TSC resume at its snapshot value, add (host TSC when saved -
    /// host TSC now) to it, the same amount for every vCPU of a VM so that their TSCs
    /// stay synchronised.
    pub tsc_offset: u64,
    /// IA32_TSC_AUX (RDTSCP, RDPID); bits 63:32 are reserved.
    pub tsc_aux: u64,
}

/// How an injected event is delivered: the interruption types of the VMX
/// interruption-information format (SDM Vol. 3C 25.8.3), of which EVENTINJ (APM Vol. 2
/// 15.20) has 0, 2, 3 and 4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum EventKind {
    ExternalInterrupt = 0,
    Nmi = 2,
    /// A fault or trap (#DE..#CP), with an error code where the vector has one.
    HardwareException = 3,
    /// INT n.
    SoftwareInterrupt = 4,
    /// INT1 (ICEBP).
    PrivilegedSoftwareException = 5,
    /// INT3, INTO.
    SoftwareException = 6,
}

impl EventKind {
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::ExternalInterrupt,
            2 => Self::Nmi,
            3 => Self::HardwareException,
            4 => Self::SoftwareInterrupt,
            5 => Self::PrivilegedSoftwareException,
            6 => Self::SoftwareException,
            _ => return None,
        })
    }

    /// Software-raised kinds, whose delivery needs the instruction length on VT-x.
    pub const fn is_software(self) -> bool {
        matches!(
            self,
            Self::SoftwareInterrupt | Self::PrivilegedSoftwareException | Self::SoftwareException
        )
    }
}

/// An event queued for delivery on the next entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub vector: u8,
    /// Only for [`EventKind::HardwareException`].
    pub error_code: Option<u32>,
    /// The length of the instruction that raised a software event (VT-x pushes RIP +
    /// this as the return address); 0 when unknown (AMD-V) or not software.
    pub instruction_len: u8,
}

/// The STI / MOV SS interrupt shadow (SDM Vol. 3C 25.4.2; the VMCB's INTERRUPT_SHADOW
/// does not say which, AMD-V saves it as `Sti` when RFLAGS.IF is set, else `MovSs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u8)]
pub enum InterruptShadow {
    #[default]
    None = 0,
    Sti = 1,
    MovSs = 2,
}

impl InterruptShadow {
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::None,
            1 => Self::Sti,
            2 => Self::MovSs,
            _ => return None,
        })
    }
}

/// Pending and blocked events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Events {
    /// Queued for delivery on the next entry whatever RFLAGS.IF says (VMX VM-entry
    /// interruption information; AMD-V EVENTINJ).
    pub injected: Option<Event>,
    /// AMD-V only: an external interrupt handed to the virtual interrupt (V_IRQ) that
    /// the guest has not taken yet; it is taken once RFLAGS.IF and the shadow allow.
    /// VT-x injects external interrupts through `injected` and refuses this.
    pub virtual_interrupt: Option<u8>,
    pub shadow: InterruptShadow,
    /// The guest runs an NMI handler: NMIs stay blocked until its IRET.
    pub nmi_blocked: bool,
    /// An interrupt-window exit is requested (`Vcpu::request_interrupt_window`).
    pub interrupt_window: bool,
    /// An NMI-window exit is requested (`Vcpu::request_nmi_window`; VT-x with
    /// virtual NMIs only, AMD-V tracks NMI blocking through the IRET intercept).
    pub nmi_window: bool,
    /// Debug exceptions recognised but not yet delivered, in the VMX format (SDM Vol.
    /// 3C 25.4.2, Table 25-4: B3-B0, enabled breakpoint (12), BS (14), RTM (16)).
    /// AMD-V has no such field and saves 0.
    pub pending_debug: u64,
}

/// Bits of [`Events::pending_debug`] that may be set.
pub const PENDING_DEBUG_DEFINED: u64 = 0x0001_500F;

/// A vCPU's architectural state. See the module documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuState {
    pub regs: GuestRegisters,
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
    pub es: Segment,
    pub cs: Segment,
    pub ss: Segment,
    pub ds: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub ldtr: Segment,
    pub tr: Segment,
    pub gdtr: TableRegister,
    pub idtr: TableRegister,
    /// As the guest reads them.
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    /// The task-priority register (CR8), 0-15.
    pub cr8: u8,
    /// DR0-DR3.
    pub dr: [u64; 4],
    pub dr6: u64,
    pub dr7: u64,
    pub msrs: Msrs,
    /// The PAE page-directory-pointer-table registers, which the processor loads from
    /// memory at a CR3 load with PAE paging outside IA-32e mode and VT-x keeps in the
    /// VMCS. AMD-V has no such registers (with nested paging it reads the entries from
    /// memory) and saves 0.
    pub pdptes: [u64; 4],
    pub events: Events,
    pub fx: FxArea,
}

impl Default for CpuState {
    /// All zero, with the x87/SSE image after FNINIT. Not a state VM entry accepts
    /// (RFLAGS bit 1, TR, ...): a base for building one.
    fn default() -> Self {
        Self {
            regs: GuestRegisters::default(),
            rip: 0,
            rsp: 0,
            rflags: 0,
            es: Segment::default(),
            cs: Segment::default(),
            ss: Segment::default(),
            ds: Segment::default(),
            fs: Segment::default(),
            gs: Segment::default(),
            ldtr: Segment::default(),
            tr: Segment::default(),
            gdtr: TableRegister::default(),
            idtr: TableRegister::default(),
            cr0: 0,
            cr2: 0,
            cr3: 0,
            cr4: 0,
            cr8: 0,
            dr: [0; 4],
            dr6: 0,
            dr7: 0,
            msrs: Msrs::default(),
            pdptes: [0; 4],
            events: Events::default(),
            fx: FxArea::initial(),
        }
    }
}

/// Why a state cannot be decoded or loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateError {
    /// Fewer bytes than the header.
    Truncated { len: usize, needed: usize },
    /// Not a vCPU state (the magic differs).
    BadMagic,
    /// A format version this build does not know.
    UnsupportedVersion(u16),
    /// The header's payload length differs from the version's, or from the bytes given.
    BadLength { declared: usize, expected: usize },
    /// A field holds a value its encoding does not allow (an enum tag, a flag byte,
    /// reserved bits); names the field.
    BadField(&'static str),
    /// The state breaks an architectural rule or a VM-entry check; names it.
    Invalid(&'static str),
    /// The backend cannot represent this (consistent) state; says what.
    Unsupported(&'static str),
    /// The vCPU cannot be loaded or saved from this processor now; says why.
    Busy(&'static str),
}

impl core::fmt::Display for StateError {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self {
            StateError::Truncated { len, needed } => write!(
                f,
                "vCPU state truncated: {len} bytes, the header alone needs {needed}"
            ),
            StateError::BadMagic => write!(f, "not a vCPU state (bad magic)"),
            StateError::UnsupportedVersion(v) => write!(
                f,
                "vCPU state format version {v} is not supported (this build reads version {})",
                CpuState::VERSION
            ),
            StateError::BadLength { declared, expected } => write!(
                f,
                "vCPU state length mismatch: {declared} bytes declared, {expected} expected"
            ),
            StateError::BadField(what) => write!(f, "vCPU state field invalid: {what}"),
            StateError::Invalid(why) => write!(f, "vCPU state refused: {why}"),
            StateError::Unsupported(what) => {
                write!(f, "vCPU state not loadable on this backend: {what}")
            }
            StateError::Busy(why) => write!(f, "vCPU busy: {why}"),
        }
    }
}

const RFLAGS_IF: u64 = 1 << 9;
const RFLAGS_VM: u64 = 1 << 17;

/// Valid PAT memory types (SDM Vol. 3A 13.12.2): UC, WC, WT, WP, WB, UC-.
pub const fn pat_valid(pat: u64) -> bool {
    let mut i = 0;
    while i < 8 {
        if !matches!((pat >> (i * 8)) & 0xFF, 0 | 1 | 4..=7) {
            return false;
        }
        i += 1;
    }
    true
}

/// Exceptions that push an error code in protected mode: #DF, #TS, #NP, #SS, #GP, #PF,
/// #AC, #CP.
pub const fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21)
}

impl CpuState {
    /// The current privilege level: 0 in real mode, 3 in virtual-8086 mode, SS.DPL
    /// otherwise (SDM Vol. 3A 5.5; AMD-V's CPL field is loaded from this).
    pub fn cpl(&self) -> u8 {
        if self.cr0 & cr0::PE == 0 {
            0
        } else if self.rflags & RFLAGS_VM != 0 {
            3
        } else {
            self.ss.dpl()
        }
    }

    /// IA-32e mode with a 64-bit code segment.
    pub fn in_64bit_code(&self) -> bool {
        self.msrs.efer & efer::LMA != 0 && self.cs.attrib & attrib::L != 0
    }

    /// PAE paging outside IA-32e mode, where the PDPTE registers are in use.
    pub fn pae_legacy_paging(&self) -> bool {
        self.cr0 & cr0::PG != 0 && self.cr4 & cr4::PAE != 0 && self.msrs.efer & efer::LMA == 0
    }

    /// The rules any x86-64 processor's state obeys, whichever vendor: what the
    /// instructions that load each register allow, and how the modes fit together
    /// (SDM Vol. 3A 2.5, 2.6, 9.8.5, Vol. 4 for the MSRs; APM Vol. 2 3.1, 14.6).
    /// Backends add their VM-entry checks on top; a state that passes both enters.
    pub fn check(&self) -> Result<(), StateError> {
        let bad = |why| Err(StateError::Invalid(why));
        if self.rflags & crate::RFLAGS_RESERVED_ZERO != 0 {
            return bad("RFLAGS has reserved bits set (63:22, 15, 5 or 3)");
        }
        if self.rflags & crate::RFLAGS_FIXED_1 == 0 {
            return bad("RFLAGS bit 1 is clear (it is reserved as 1)");
        }
        // Control registers.
        if self.cr0 >> 32 != 0 {
            return bad("CR0 bits 63:32 are set");
        }
        if self.cr0 & cr0::PG != 0 && self.cr0 & cr0::PE == 0 {
            return bad("CR0.PG is set without CR0.PE");
        }
        if self.cr0 & cr0::NW != 0 && self.cr0 & cr0::CD == 0 {
            return bad("CR0.NW is set without CR0.CD");
        }
        if self.cr4 & (cr4::VMXE | cr4::SMXE) != 0 {
            return bad("CR4.VMXE or CR4.SMXE is set (guests are offered neither)");
        }
        if self.cr4 & cr4::CET != 0 && self.cr0 & cr0::WP == 0 {
            return bad("CR4.CET is set while CR0.WP is clear");
        }
        if self.cr8 > 15 {
            return bad("CR8 is above 15");
        }
        let e = self.msrs.efer;
        if e & !(efer::SCE | efer::LME | efer::LMA | efer::NXE) != 0 {
            return bad("EFER has bits set other than SCE, LME, LMA and NXE");
        }
        let lma = e & efer::LMA != 0;
        if lma != (e & efer::LME != 0 && self.cr0 & cr0::PG != 0) {
            return bad("EFER.LMA differs from EFER.LME with CR0.PG (long mode is active exactly when both are set)");
        }
        if lma && self.cr4 & cr4::PAE == 0 {
            return bad("long mode is active with CR4.PAE clear");
        }
        if !lma && self.cr4 & cr4::PCIDE != 0 {
            return bad("CR4.PCIDE is set outside long mode");
        }
        if lma && self.rflags & RFLAGS_VM != 0 {
            return bad("RFLAGS.VM is set in long mode");
        }
        if self.cr0 & cr0::PE == 0 && self.rflags & RFLAGS_VM != 0 {
            return bad("RFLAGS.VM is set in real mode");
        }
        let la57 = self.cr4 & cr4::LA57 != 0;
        let canonical = |v: u64| is_canonical(v, la57);
        // RIP and segments.
        if self.in_64bit_code() {
            if self.cs.attrib & attrib::DB != 0 {
                return bad("CS has both L and D/B set in long mode");
            }
            if !canonical(self.rip) {
                return bad("RIP is not canonical in 64-bit code");
            }
        } else if self.rip >> 32 != 0 {
            return bad("RIP bits 63:32 are set outside 64-bit code");
        }
        for (seg, what) in [
            (&self.es, "ES attributes have reserved bits 15:13 set"),
            (&self.cs, "CS attributes have reserved bits 15:13 set"),
            (&self.ss, "SS attributes have reserved bits 15:13 set"),
            (&self.ds, "DS attributes have reserved bits 15:13 set"),
            (&self.fs, "FS attributes have reserved bits 15:13 set"),
            (&self.gs, "GS attributes have reserved bits 15:13 set"),
            (&self.ldtr, "LDTR attributes have reserved bits 15:13 set"),
            (&self.tr, "TR attributes have reserved bits 15:13 set"),
        ] {
            if seg.attrib & attrib::RESERVED != 0 {
                return bad(what);
            }
        }
        if !self.cs.usable() {
            return bad("CS is unusable");
        }
        if !self.tr.usable() {
            return bad("TR is unusable");
        }
        // Descriptor loads give 32-bit bases to CS, SS, DS, ES; only FS, GS, TR, LDTR
        // and the tables take 64-bit ones, which must be canonical.
        for (seg, what) in [
            (&self.cs, "CS base bits 63:32 are set"),
            (&self.ss, "SS base bits 63:32 are set"),
            (&self.ds, "DS base bits 63:32 are set"),
            (&self.es, "ES base bits 63:32 are set"),
        ] {
            if seg.usable() && seg.base >> 32 != 0 {
                return bad(what);
            }
        }
        for (base, what) in [
            (self.fs.base, "FS base is not canonical"),
            (self.gs.base, "GS base is not canonical"),
            (self.tr.base, "TR base is not canonical"),
            (self.gdtr.base, "GDTR base is not canonical"),
            (self.idtr.base, "IDTR base is not canonical"),
        ] {
            if !canonical(base) {
                return bad(what);
            }
        }
        // An unusable LDTR's base is undefined (VT-x saves whatever it holds).
        if self.ldtr.usable() && !canonical(self.ldtr.base) {
            return bad("LDTR base is not canonical");
        }
        // Debug registers.
        if self.dr6 >> 32 != 0 {
            return bad("DR6 bits 63:32 are set");
        }
        if self.dr7 >> 32 != 0 {
            return bad("DR7 bits 63:32 are set");
        }
        // MSRs: what WRMSR would accept.
        let m = &self.msrs;
        for (value, what) in [
            (m.lstar, "LSTAR is not canonical"),
            (m.cstar, "CSTAR is not canonical"),
            (m.kernel_gs_base, "KERNEL_GS_BASE is not canonical"),
            (m.sysenter_esp, "SYSENTER_ESP is not canonical"),
            (m.sysenter_eip, "SYSENTER_EIP is not canonical"),
        ] {
            if !canonical(value) {
                return bad(what);
            }
        }
        if m.sfmask >> 32 != 0 {
            return bad("SFMASK bits 63:32 are set");
        }
        if m.sysenter_cs >> 32 != 0 {
            return bad("SYSENTER_CS bits 63:32 are set");
        }
        if m.tsc_aux >> 32 != 0 {
            return bad("TSC_AUX bits 63:32 are set");
        }
        if !pat_valid(m.pat) {
            return bad("PAT holds an invalid memory type (only 0, 1, 4, 5, 6, 7 are valid)");
        }
        // The x87/SSE image: FXRSTOR faults on MXCSR bits no processor defines (the
        // backends also check against their processor's MXCSR_MASK).
        if self.fx.mxcsr() >> 16 != 0 {
            return bad("MXCSR bits 31:16 are set");
        }
        self.check_events()
    }

    fn check_events(&self) -> Result<(), StateError> {
        let bad = |why| Err(StateError::Invalid(why));
        let ev = &self.events;
        if let Some(e) = ev.injected {
            match e.kind {
                EventKind::Nmi if e.vector != 2 => {
                    return bad("an injected NMI has a vector other than 2")
                }
                EventKind::HardwareException if e.vector >= 32 => {
                    return bad("an injected exception has a vector above 31")
                }
                EventKind::HardwareException if e.vector == 2 => {
                    return bad("an injected exception has vector 2 (the NMI has its own kind)")
                }
                _ => {}
            }
            if e.error_code.is_some()
                && !(e.kind == EventKind::HardwareException && has_error_code(e.vector))
            {
                return bad("an injected event carries an error code its vector does not push");
            }
            if e.instruction_len > 15 {
                return bad("an injected event's instruction length is above 15");
            }
            if !e.kind.is_software() && e.instruction_len != 0 {
                return bad(
                    "an injected event that no instruction raised has an instruction length",
                );
            }
            if e.kind == EventKind::ExternalInterrupt && ev.virtual_interrupt.is_some() {
                return bad("two external interrupts are queued (injected and virtual)");
            }
        }
        if ev.shadow == InterruptShadow::Sti && self.rflags & RFLAGS_IF == 0 {
            return bad("an STI interrupt shadow with RFLAGS.IF clear");
        }
        if ev.pending_debug & !PENDING_DEBUG_DEFINED != 0 {
            return bad("pending debug exceptions have reserved bits set");
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// The byte encoding.
// ---------------------------------------------------------------------------------

/// Header: magic (8), version (u16), reserved (u16, 0), payload length (u32).
const HEADER_LEN: usize = 16;
const SEGMENT_LEN: usize = 16;
const TABLE_LEN: usize = 10;
const EVENTS_LEN: usize = 9 + 2 + 4 + 8;
/// The version 1 payload, field by field in the order `to_bytes` writes them.
const PAYLOAD_LEN_V1: usize = 15 * 8 // GPRs
    + 3 * 8 // RIP, RSP, RFLAGS
    + 8 * SEGMENT_LEN
    + 2 * TABLE_LEN
    + 4 * 8 + 1 // CR0, CR2, CR3, CR4, CR8
    + 6 * 8 // DR0-DR3, DR6, DR7
    + 12 * 8 // MSRs
    + 4 * 8 // PDPTEs
    + EVENTS_LEN
    + 512; // FXSAVE image

struct Writer<'a> {
    out: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn bytes(&mut self, b: &[u8]) {
        self.out[self.at..self.at + b.len()].copy_from_slice(b);
        self.at += b.len();
    }
    fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }
    fn u16(&mut self, v: u16) {
        self.bytes(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    fn flag(&mut self, v: bool) {
        self.u8(v as u8);
    }
    fn segment(&mut self, s: &Segment) {
        self.u16(s.selector);
        self.u16(s.attrib);
        self.u32(s.limit);
        self.u64(s.base);
    }
    fn table(&mut self, t: &TableRegister) {
        self.u64(t.base);
        self.u16(t.limit);
    }
}

/// Reads a payload whose length was checked against the version's; a read past the
/// end still fails cleanly rather than panicking.
struct Reader<'a> {
    input: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], StateError> {
        let end = self
            .at
            .checked_add(N)
            .ok_or(StateError::BadField("length"))?;
        let slice = self.input.get(self.at..end).ok_or(StateError::Truncated {
            len: self.input.len(),
            needed: end,
        })?;
        self.at = end;
        let mut out = [0; N];
        out.copy_from_slice(slice);
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, StateError> {
        Ok(self.bytes::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, StateError> {
        Ok(u16::from_le_bytes(self.bytes()?))
    }
    fn u32(&mut self) -> Result<u32, StateError> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }
    fn u64(&mut self) -> Result<u64, StateError> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }
    fn flag(&mut self, what: &'static str) -> Result<bool, StateError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(StateError::BadField(what)),
        }
    }
    fn segment(&mut self, what: &'static str) -> Result<Segment, StateError> {
        let s = Segment {
            selector: self.u16()?,
            attrib: self.u16()?,
            limit: self.u32()?,
            base: self.u64()?,
        };
        if s.attrib & attrib::RESERVED != 0 {
            return Err(StateError::BadField(what));
        }
        Ok(s)
    }
    fn table(&mut self) -> Result<TableRegister, StateError> {
        Ok(TableRegister {
            base: self.u64()?,
            limit: self.u16()?,
        })
    }
}

impl CpuState {
    /// Identifies an encoded vCPU state.
    pub const MAGIC: [u8; 8] = *b"hv-vcpu\0";
    /// The format version `to_bytes` writes.
    pub const VERSION: u16 = 1;
    /// The length of [`CpuState::to_bytes`]'s output.
    pub const ENCODED_LEN: usize = HEADER_LEN + PAYLOAD_LEN_V1;

    /// The state as bytes, little endian: a 16-byte header (magic, version, a
    /// reserved 0, payload length) and the fields in declaration order, with
    /// `Option`s and flags as a 0/1 byte and enums as their `repr(u8)` value.
    pub fn to_bytes(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        let mut w = Writer {
            out: &mut out,
            at: 0,
        };
        w.bytes(&Self::MAGIC);
        w.u16(Self::VERSION);
        w.u16(0);
        w.u32(PAYLOAD_LEN_V1 as u32);
        let r = &self.regs;
        for v in [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12,
            r.r13, r.r14, r.r15,
        ] {
            w.u64(v);
        }
        w.u64(self.rip);
        w.u64(self.rsp);
        w.u64(self.rflags);
        for s in [
            &self.es, &self.cs, &self.ss, &self.ds, &self.fs, &self.gs, &self.ldtr, &self.tr,
        ] {
            w.segment(s);
        }
        w.table(&self.gdtr);
        w.table(&self.idtr);
        for v in [self.cr0, self.cr2, self.cr3, self.cr4] {
            w.u64(v);
        }
        w.u8(self.cr8);
        for v in self.dr {
            w.u64(v);
        }
        w.u64(self.dr6);
        w.u64(self.dr7);
        let m = &self.msrs;
        for v in [
            m.efer,
            m.star,
            m.lstar,
            m.cstar,
            m.sfmask,
            m.kernel_gs_base,
            m.sysenter_cs,
            m.sysenter_esp,
            m.sysenter_eip,
            m.pat,
            m.tsc_offset,
            m.tsc_aux,
        ] {
            w.u64(v);
        }
        for v in self.pdptes {
            w.u64(v);
        }
        let ev = &self.events;
        match ev.injected {
            Some(e) => {
                w.flag(true);
                w.u8(e.kind as u8);
                w.u8(e.vector);
                w.flag(e.error_code.is_some());
                w.u32(e.error_code.unwrap_or(0));
                w.u8(e.instruction_len);
            }
            None => w.bytes(&[0; 9]),
        }
        w.flag(ev.virtual_interrupt.is_some());
        w.u8(ev.virtual_interrupt.unwrap_or(0));
        w.u8(ev.shadow as u8);
        w.flag(ev.nmi_blocked);
        w.flag(ev.interrupt_window);
        w.flag(ev.nmi_window);
        w.u64(ev.pending_debug);
        w.bytes(&self.fx.0);
        debug_assert_eq!(w.at, Self::ENCODED_LEN);
        out
    }

    /// Decodes what [`CpuState::to_bytes`] wrote. Checks the magic, the version, the
    /// lengths (header, declared, given) and every field's encoding; it does not run
    /// [`CpuState::check`] (`load_state` does, with the backend's checks).
    pub fn from_bytes(bytes: &[u8]) -> Result<CpuState, StateError> {
        if bytes.len() < HEADER_LEN {
            return Err(StateError::Truncated {
                len: bytes.len(),
                needed: HEADER_LEN,
            });
        }
        let mut r = Reader {
            input: bytes,
            at: 0,
        };
        if r.bytes::<8>()? != Self::MAGIC {
            return Err(StateError::BadMagic);
        }
        let version = r.u16()?;
        if version != Self::VERSION {
            return Err(StateError::UnsupportedVersion(version));
        }
        if r.u16()? != 0 {
            return Err(StateError::BadField("header reserved field"));
        }
        let declared = r.u32()? as usize;
        if declared != PAYLOAD_LEN_V1 {
            return Err(StateError::BadLength {
                declared,
                expected: PAYLOAD_LEN_V1,
            });
        }
        let given = bytes.len() - HEADER_LEN;
        if given != declared {
            return Err(StateError::BadLength {
                declared,
                expected: given,
            });
        }
        let mut regs = [0u64; 15];
        for v in &mut regs {
            *v = r.u64()?;
        }
        let [rax, rbx, rcx, rdx, rsi, rdi, rbp, r8, r9, r10, r11, r12, r13, r14, r15] = regs;
        let regs = GuestRegisters {
            rax,
            rbx,
            rcx,
            rdx,
            rsi,
            rdi,
            rbp,
            r8,
            r9,
            r10,
            r11,
            r12,
            r13,
            r14,
            r15,
        };
        let (rip, rsp, rflags) = (r.u64()?, r.u64()?, r.u64()?);
        let es = r.segment("ES attributes (reserved bits 15:13)")?;
        let cs = r.segment("CS attributes (reserved bits 15:13)")?;
        let ss = r.segment("SS attributes (reserved bits 15:13)")?;
        let ds = r.segment("DS attributes (reserved bits 15:13)")?;
        let fs = r.segment("FS attributes (reserved bits 15:13)")?;
        let gs = r.segment("GS attributes (reserved bits 15:13)")?;
        let ldtr = r.segment("LDTR attributes (reserved bits 15:13)")?;
        let tr = r.segment("TR attributes (reserved bits 15:13)")?;
        let gdtr = r.table()?;
        let idtr = r.table()?;
        let (cr0, cr2, cr3, cr4) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
        let cr8 = r.u8()?;
        let dr = [r.u64()?, r.u64()?, r.u64()?, r.u64()?];
        let (dr6, dr7) = (r.u64()?, r.u64()?);
        let msrs = Msrs {
            efer: r.u64()?,
            star: r.u64()?,
            lstar: r.u64()?,
            cstar: r.u64()?,
            sfmask: r.u64()?,
            kernel_gs_base: r.u64()?,
            sysenter_cs: r.u64()?,
            sysenter_esp: r.u64()?,
            sysenter_eip: r.u64()?,
            pat: r.u64()?,
            tsc_offset: r.u64()?,
            tsc_aux: r.u64()?,
        };
        let pdptes = [r.u64()?, r.u64()?, r.u64()?, r.u64()?];
        let present = r.flag("injected event present flag")?;
        let kind = r.u8()?;
        let vector = r.u8()?;
        let has_code = r.flag("injected event error-code flag")?;
        let code = r.u32()?;
        let instruction_len = r.u8()?;
        let injected = if present {
            Some(Event {
                kind: EventKind::from_u8(kind)
                    .ok_or(StateError::BadField("injected event kind"))?,
                vector,
                error_code: match (has_code, code) {
                    (true, code) => Some(code),
                    (false, 0) => None,
                    (false, _) => {
                        return Err(StateError::BadField(
                            "injected event error code set without its flag",
                        ))
                    }
                },
                instruction_len,
            })
        } else if kind != 0 || vector != 0 || has_code || code != 0 || instruction_len != 0 {
            return Err(StateError::BadField(
                "injected event fields set without an event",
            ));
        } else {
            None
        };
        let virtual_present = r.flag("virtual interrupt present flag")?;
        let virtual_vector = r.u8()?;
        let virtual_interrupt = if virtual_present {
            Some(virtual_vector)
        } else if virtual_vector != 0 {
            return Err(StateError::BadField(
                "virtual interrupt vector set without an interrupt",
            ));
        } else {
            None
        };
        let shadow =
            InterruptShadow::from_u8(r.u8()?).ok_or(StateError::BadField("interrupt shadow"))?;
        let events = Events {
            injected,
            virtual_interrupt,
            shadow,
            nmi_blocked: r.flag("NMI blocked flag")?,
            interrupt_window: r.flag("interrupt window flag")?,
            nmi_window: r.flag("NMI window flag")?,
            pending_debug: r.u64()?,
        };
        let fx = FxArea(r.bytes::<512>()?);
        Ok(CpuState {
            regs,
            rip,
            rsp,
            rflags,
            es,
            cs,
            ss,
            ds,
            fs,
            gs,
            ldtr,
            tr,
            gdtr,
            idtr,
            cr0,
            cr2,
            cr3,
            cr4,
            cr8,
            dr,
            dr6,
            dr7,
            msrs,
            pdptes,
            events,
            fx,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    /// A 64-bit guest in the middle of things: every field holds a distinct value.
    pub(crate) fn sample() -> CpuState {
        let data = |selector: u16| Segment {
            selector,
            attrib: 0xC93,
            limit: 0xFFFF_FFFF,
            base: 0,
        };
        let mut fx = FxArea::initial();
        for (i, b) in fx.0[32..160].iter_mut().enumerate() {
            *b = i as u8; // ST0-ST7
        }
        CpuState {
            regs: GuestRegisters {
                rax: 1,
                rbx: 2,
                rcx: 3,
                rdx: 4,
                rsi: 5,
                rdi: 6,
                rbp: 7,
                r8: 8,
                r9: 9,
                r10: 10,
                r11: 11,
                r12: 12,
                r13: 13,
                r14: 14,
                r15: 15,
            },
            rip: 0xFFFF_FFFF_8100_0123,
            rsp: 0xFFFF_C900_0001_3F58,
            rflags: 0x246,
            es: Segment {
                attrib: attrib::UNUSABLE,
                ..Segment::default()
            },
            cs: Segment {
                selector: 0x10,
                attrib: 0xA9B,
                limit: 0xFFFF_FFFF,
                base: 0,
            },
            ss: data(0x18),
            ds: data(0x18),
            fs: Segment {
                base: 0x7F12_3456_7000,
                ..data(0)
            },
            gs: Segment {
                base: 0xFFFF_8880_3FC0_0000,
                ..data(0)
            },
            ldtr: Segment {
                attrib: attrib::UNUSABLE,
                ..Segment::default()
            },
            tr: Segment {
                selector: 0x40,
                attrib: 0x8B,
                limit: 0x4087,
                base: 0xFFFF_FE00_0000_3000,
            },
            gdtr: TableRegister {
                base: 0xFFFF_FE00_0000_1000,
                limit: 0x7F,
            },
            idtr: TableRegister {
                base: 0xFFFF_FE00_0000_0000,
                limit: 0xFFF,
            },
            cr0: cr0::PE | cr0::MP | cr0::ET | cr0::NE | cr0::WP | cr0::AM | cr0::PG,
            cr2: 0x7F12_3456_9FF8,
            cr3: 0x1234_5000,
            cr4: cr4::PAE | cr4::PGE | cr4::OSFXSR | cr4::OSXMMEXCPT | cr4::FSGSBASE,
            cr8: 3,
            dr: [0x1000, 0x2000, 0x3000, 0x4000],
            dr6: 0xFFFF_0FF1,
            dr7: 0x401,
            msrs: Msrs {
                efer: efer::SCE | efer::LME | efer::LMA | efer::NXE,
                star: 0x0023_0010_0000_0000,
                lstar: 0xFFFF_FFFF_8120_0000,
                cstar: 0xFFFF_FFFF_8120_1000,
                sfmask: 0x4_7700,
                kernel_gs_base: 0x7F00_0000_1000,
                sysenter_cs: 0x10,
                sysenter_esp: 0xFFFF_FE00_0000_5200,
                sysenter_eip: 0xFFFF_FFFF_8120_2000,
                pat: 0x0407_0106_0007_0406,
                tsc_offset: 0xFFFF_FF00_1234_5678,
                tsc_aux: 1,
            },
            pdptes: [0; 4],
            events: Events {
                injected: Some(Event {
                    kind: EventKind::HardwareException,
                    vector: 14,
                    error_code: Some(6),
                    instruction_len: 0,
                }),
                virtual_interrupt: None,
                shadow: InterruptShadow::Sti,
                nmi_blocked: true,
                interrupt_window: true,
                nmi_window: false,
                pending_debug: 0,
            },
            fx,
        }
    }

    #[test]
    fn sample_is_consistent() {
        assert_eq!(sample().check(), Ok(()));
        assert_eq!(sample().cpl(), 0);
        assert!(sample().in_64bit_code());
    }

    #[test]
    fn round_trip() {
        let s = sample();
        let bytes = s.to_bytes();
        assert_eq!(bytes.len(), CpuState::ENCODED_LEN);
        assert_eq!(&bytes[..8], b"hv-vcpu\0");
        assert_eq!(&bytes[8..10], &1u16.to_le_bytes());
        assert_eq!(
            &bytes[12..16],
            &((CpuState::ENCODED_LEN - 16) as u32).to_le_bytes()
        );
        // Little endian: RAX first.
        assert_eq!(&bytes[16..24], &1u64.to_le_bytes());
        assert_eq!(CpuState::from_bytes(&bytes), Ok(s.clone()));

        // Every optional and enum form survives too.
        let mut t = s.clone();
        t.events = Events {
            injected: Some(Event {
                kind: EventKind::SoftwareInterrupt,
                vector: 0x80,
                error_code: None,
                instruction_len: 2,
            }),
            virtual_interrupt: None,
            shadow: InterruptShadow::MovSs,
            nmi_blocked: false,
            interrupt_window: false,
            nmi_window: true,
            pending_debug: 1 << 14,
        };
        assert_eq!(CpuState::from_bytes(&t.to_bytes()), Ok(t.clone()));
        t.events.injected = None;
        t.events.virtual_interrupt = Some(0x31);
        assert_eq!(CpuState::from_bytes(&t.to_bytes()), Ok(t.clone()));
        let d = CpuState::default();
        assert_eq!(CpuState::from_bytes(&d.to_bytes()), Ok(d));
    }

    #[test]
    fn truncation_and_length() {
        let bytes = sample().to_bytes();
        for len in [0, 1, 15] {
            assert_eq!(
                CpuState::from_bytes(&bytes[..len]),
                Err(StateError::Truncated { len, needed: 16 })
            );
        }
        // Cut anywhere in the payload: the declared length no longer matches.
        for len in [16, 17, 100, CpuState::ENCODED_LEN - 1] {
            assert_eq!(
                CpuState::from_bytes(&bytes[..len]),
                Err(StateError::BadLength {
                    declared: CpuState::ENCODED_LEN - 16,
                    expected: len - 16
                }),
                "{len}"
            );
        }
        // Trailing bytes.
        let mut long = Vec::from(&bytes[..]);
        long.push(0);
        assert!(matches!(
            CpuState::from_bytes(&long),
            Err(StateError::BadLength { .. })
        ));
        // A header that declares another length.
        let mut b = bytes;
        b[12..16].copy_from_slice(&7u32.to_le_bytes());
        assert_eq!(
            CpuState::from_bytes(&b),
            Err(StateError::BadLength {
                declared: 7,
                expected: CpuState::ENCODED_LEN - 16
            })
        );
    }

    #[test]
    fn magic_version_and_header() {
        let good = sample().to_bytes();
        let mut b = good;
        b[0] = b'H';
        assert_eq!(CpuState::from_bytes(&b), Err(StateError::BadMagic));
        for v in [0u16, 2, 0xFFFF] {
            let mut b = good;
            b[8..10].copy_from_slice(&v.to_le_bytes());
            assert_eq!(
                CpuState::from_bytes(&b),
                Err(StateError::UnsupportedVersion(v))
            );
        }
        let mut b = good;
        b[10] = 1;
        assert!(matches!(
            CpuState::from_bytes(&b),
            Err(StateError::BadField(_))
        ));
    }

    /// Offset of the events block in the encoding.
    const EVENTS_AT: usize = CpuState::ENCODED_LEN - 512 - EVENTS_LEN;

    #[test]
    fn field_encodings_are_checked() {
        let good = sample().to_bytes();
        let corrupt = |at: usize, v: u8| {
            let mut b = good;
            b[at] = v;
            CpuState::from_bytes(&b)
        };
        // Flags other than 0/1.
        assert_eq!(
            corrupt(EVENTS_AT, 2),
            Err(StateError::BadField("injected event present flag"))
        );
        assert_eq!(
            corrupt(EVENTS_AT + 1, 1),
            Err(StateError::BadField("injected event kind"))
        );
        assert_eq!(
            corrupt(EVENTS_AT + 1, 7),
            Err(StateError::BadField("injected event kind"))
        );
        assert_eq!(
            corrupt(EVENTS_AT + 11, 3),
            Err(StateError::BadField("interrupt shadow"))
        );
        assert_eq!(
            corrupt(EVENTS_AT + 14, 0xFF),
            Err(StateError::BadField("NMI window flag"))
        );
        // Reserved segment attribute bits (CS is the second segment).
        let cs_attrib_high = 16 + 18 * 8 + SEGMENT_LEN + 3;
        assert_eq!(
            corrupt(cs_attrib_high, 0x20),
            Err(StateError::BadField("CS attributes (reserved bits 15:13)"))
        );
        // Leftovers of an absent event.
        let mut s = sample();
        s.events.injected = None;
        let mut b = s.to_bytes();
        b[EVENTS_AT + 2] = 14;
        assert!(matches!(
            CpuState::from_bytes(&b),
            Err(StateError::BadField(_))
        ));
    }

    /// xorshift64*, seeded: reproducible garbage.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = Rng(0x5EED_CAFE_F00D_0001);
        let good = sample().to_bytes();
        let mut accepted = 0;
        for round in 0..20_000 {
            let bytes: Vec<u8> = match round % 3 {
                // Pure noise of any length.
                0 => {
                    let len = (rng.next() % (CpuState::ENCODED_LEN as u64 + 64)) as usize;
                    (0..len).map(|_| rng.next() as u8).collect()
                }
                // A valid header, a random payload.
                1 => {
                    let mut b = Vec::from(&good[..16]);
                    b.extend((16..CpuState::ENCODED_LEN).map(|_| rng.next() as u8));
                    b
                }
                // A valid state with a few bytes flipped.
                _ => {
                    let mut b = Vec::from(&good[..]);
                    for _ in 0..1 + rng.next() % 4 {
                        let at = (rng.next() % b.len() as u64) as usize;
                        b[at] ^= 1 << (rng.next() % 8);
                    }
                    b
                }
            };
            if let Ok(s) = CpuState::from_bytes(&bytes) {
                accepted += 1;
                // Whatever decodes re-encodes to the same bytes and can be checked.
                assert_eq!(&s.to_bytes()[..], &bytes[..]);
                let _ = s.check();
            }
        }
        // Pure noise never decodes; flipped bits in plain integers do.
        assert!(accepted > 0 && accepted < 20_000 * 2 / 3, "{accepted}");
    }

    fn invalid(s: &CpuState, needle: &str) {
        match s.check() {
            Err(StateError::Invalid(why)) => {
                assert!(why.contains(needle), "{why:?} lacks {needle:?}")
            }
            other => panic!("expected a refusal containing {needle:?}, got {other:?}"),
        }
    }

    #[test]
    fn architectural_rules() {
        let mut s = sample();
        s.rflags = 0x244;
        invalid(&s, "RFLAGS bit 1");
        let mut s = sample();
        s.rflags |= 1 << 15;
        invalid(&s, "RFLAGS has reserved");
        let mut s = sample();
        s.cr0 &= !cr0::PE;
        invalid(&s, "CR0.PG is set without CR0.PE");
        let mut s = sample();
        s.cr0 |= cr0::NW;
        invalid(&s, "NW");
        let mut s = sample();
        s.cr0 |= 1 << 32;
        invalid(&s, "CR0 bits 63:32");
        let mut s = sample();
        s.cr4 |= cr4::VMXE;
        invalid(&s, "VMXE");
        let mut s = sample();
        s.cr8 = 16;
        invalid(&s, "CR8");
        let mut s = sample();
        s.msrs.efer |= 1 << 12; // SVME is the hypervisor's
        invalid(&s, "EFER has bits");
        let mut s = sample();
        s.msrs.efer &= !efer::LMA;
        invalid(&s, "EFER.LMA differs");
        let mut s = sample();
        s.cr4 &= !cr4::PAE;
        invalid(&s, "CR4.PAE clear");
        let mut s = sample();
        s.cs.attrib |= attrib::DB;
        invalid(&s, "both L and D/B");
        let mut s = sample();
        s.rip = 0x0000_8000_0000_0000;
        invalid(&s, "RIP is not canonical");
        // With LA57 the same RIP is canonical.
        s.cr4 |= cr4::LA57;
        assert_eq!(s.check(), Ok(()));
        let mut s = sample();
        s.cs.attrib &= !attrib::L;
        s.cs.attrib |= attrib::DB;
        s.rip = 1 << 32;
        invalid(&s, "RIP bits 63:32");
        let mut s = sample();
        s.cs.attrib |= attrib::UNUSABLE;
        invalid(&s, "CS is unusable");
        let mut s = sample();
        s.tr.attrib |= attrib::UNUSABLE;
        invalid(&s, "TR is unusable");
        let mut s = sample();
        s.ds.base = 1 << 32;
        invalid(&s, "DS base");
        // An unusable ES may hold anything.
        let mut s = sample();
        s.es.base = 1 << 40;
        assert_eq!(s.check(), Ok(()));
        let mut s = sample();
        s.gs.base = 0x0000_8000_0000_0000;
        invalid(&s, "GS base");
        let mut s = sample();
        s.idtr.base = 0x00F0_0000_0000_0000;
        invalid(&s, "IDTR base");
        // LDTR: only a usable one (the sample's is not).
        let mut s = sample();
        s.ldtr.base = 0x00F0_0000_0000_0000;
        assert_eq!(s.check(), Ok(()));
        s.ldtr.attrib = 0x82;
        invalid(&s, "LDTR base");
        let mut s = sample();
        s.dr6 |= 1 << 32;
        invalid(&s, "DR6");
        let mut s = sample();
        s.dr7 |= 1 << 40;
        invalid(&s, "DR7");
        let mut s = sample();
        s.msrs.lstar = 1 << 50;
        invalid(&s, "LSTAR");
        let mut s = sample();
        s.msrs.tsc_aux = 1 << 32;
        invalid(&s, "TSC_AUX");
        let mut s = sample();
        s.msrs.pat = 0x02;
        invalid(&s, "PAT");
        let mut s = sample();
        s.fx.0[26] = 1; // MXCSR bit 16
        invalid(&s, "MXCSR");
        let mut s = sample();
        s.rflags |= RFLAGS_VM;
        invalid(&s, "RFLAGS.VM is set in long mode");
    }

    #[test]
    fn event_rules() {
        let with = |e: Event| {
            let mut s = sample();
            s.events.injected = Some(e);
            s
        };
        let ev = |kind, vector, error_code, instruction_len| Event {
            kind,
            vector,
            error_code,
            instruction_len,
        };
        invalid(&with(ev(EventKind::Nmi, 3, None, 0)), "NMI");
        invalid(
            &with(ev(EventKind::HardwareException, 32, None, 0)),
            "above 31",
        );
        invalid(
            &with(ev(EventKind::HardwareException, 2, None, 0)),
            "vector 2",
        );
        invalid(
            &with(ev(EventKind::HardwareException, 6, Some(0), 0)),
            "error code",
        );
        invalid(
            &with(ev(EventKind::ExternalInterrupt, 0x30, Some(0), 0)),
            "error code",
        );
        invalid(
            &with(ev(EventKind::SoftwareInterrupt, 0x80, None, 16)),
            "above 15",
        );
        invalid(
            &with(ev(EventKind::HardwareException, 13, Some(0), 2)),
            "no instruction raised",
        );
        let mut s = with(ev(EventKind::ExternalInterrupt, 0x30, None, 0));
        assert_eq!(s.check(), Ok(()));
        s.events.virtual_interrupt = Some(0x31);
        invalid(&s, "two external interrupts");
        let mut s = sample();
        s.rflags &= !RFLAGS_IF;
        invalid(&s, "STI interrupt shadow");
        s.events.shadow = InterruptShadow::MovSs;
        assert_eq!(s.check(), Ok(()));
        s.events.pending_debug = 1 << 13;
        invalid(&s, "pending debug");
    }

    #[test]
    fn cpl_by_mode() {
        let mut s = sample();
        s.ss.attrib |= 3 << attrib::DPL_SHIFT;
        assert_eq!(s.cpl(), 3);
        s.cr0 = cr0::ET;
        assert_eq!(s.cpl(), 0, "real mode");
        s.cr0 = cr0::PE;
        s.rflags |= RFLAGS_VM;
        s.ss.attrib &= !attrib::DPL_MASK;
        assert_eq!(s.cpl(), 3, "virtual-8086 mode");
    }

    #[test]
    fn errors_display() {
        use std::string::ToString;
        assert_eq!(
            StateError::UnsupportedVersion(9).to_string(),
            "vCPU state format version 9 is not supported (this build reads version 1)"
        );
        assert_eq!(
            StateError::Invalid("CR8 is above 15").to_string(),
            "vCPU state refused: CR8 is above 15"
        );
        assert!(StateError::Truncated { len: 3, needed: 16 }
            .to_string()
            .contains("3 bytes"));
    }
}
