//! The guest-state area of a VMCS as a plain value ([`GuestState`]): built for each
//! start mode of [`StartState`], written to and read back from a VMCS through
//! [`VmcsAccess`], and checked in software by [`crate::checks`].
//!
//! CR0 and CR4 need care (SDM Vol. 3C 24.8 / 25.8 "Restrictions on VMX operation",
//! Appendix A.7/A.8): while in VMX operation the *guest's* CR0 and CR4 must also hold
//! the bits IA32_VMX_CR0_FIXED0/CR4_FIXED0 require (CR0.NE, CR4.VMXE; with
//! "unrestricted guest" CR0.PE and CR0.PG are exempt, SDM 27.3.1.1). A real-mode guest
//! does not expect NE, and no guest expects VMXE, so those bits are *owned by the host*
//! through the CR0/CR4 guest/host masks: the guest reads its own value from the read
//! shadows, and a MOV to CR0/CR4 that changes an owned bit exits for emulation
//! ([`crate::ops::emulate_cr_write`]).

use vcpu::{CpuMode, StartState};

use crate::vmcs::{
    ar, control_nat, cr0, cr4, efer, guest16, guest32, guest64, guest_nat, rflags, VmcsAccess,
    PAT_RESET_VALUE,
};

/// GDT selectors of the flat protected-mode and long-mode start states (the Linux boot
/// protocol's `__BOOT_CS` / `__BOOT_DS`, as the SVM backend uses).
pub const FLAT_CODE_SELECTOR: u16 = 0x10;
pub const FLAT_DATA_SELECTOR: u16 = 0x18;

/// The fixed-bit MSRs for CR0 and CR4 in VMX operation (SDM Vol. 3D A.7, A.8): a bit
/// set in FIXED0 must be 1, a bit clear in FIXED1 must be 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrFixed {
    pub cr0_fixed0: u64,
    pub cr0_fixed1: u64,
    pub cr4_fixed0: u64,
    pub cr4_fixed1: u64,
}

impl CrFixed {
    /// The bits the guest must hold in CR0 with "unrestricted guest" (PE and PG are
    /// exempt, SDM Vol. 3C 27.3.1.1).
    pub const fn cr0_must_be_one(&self) -> u64 {
        self.cr0_fixed0 & !(cr0::PE | cr0::PG)
    }

    /// The CR0 bits the host owns: forced to 1, or not allowed to be 1. Restricted to
    /// bits 31:0; the upper half of CR0 is reserved and the processor #GPs a MOV that
    /// sets it before any VM exit.
    pub const fn cr0_mask(&self) -> u64 {
        (self.cr0_must_be_one() | !self.cr0_fixed1) & 0xFFFF_FFFF
    }

    /// The CR4 bits the host owns: all of them. Which CR4 bits a guest may set
    /// depends on the CPUID it sees (`vcpu::cr_policy`), not only on VMXE and the
    /// bits the processor refuses in VMX operation, so every MOV to CR4 exits and is
    /// validated by the core; the guest reads its value from the read shadow.
    pub const fn cr4_mask(&self) -> u64 {
        u64::MAX
    }

    /// The CR0 the processor runs the guest with when the guest believes it has `value`.
    pub const fn cr0_actual(&self, value: u64) -> u64 {
        (value | self.cr0_must_be_one()) & (self.cr0_fixed1 | cr0::PE | cr0::PG)
    }

    /// The CR4 the processor runs the guest with when the guest believes it has `value`.
    pub const fn cr4_actual(&self, value: u64) -> u64 {
        (value | self.cr4_fixed0) & self.cr4_fixed1
    }
}

/// One segment register (SDM Vol. 3C 25.4.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentState {
    pub selector: u16,
    pub base: u64,
    /// In bytes (the processor scales with G on descriptor loads only).
    pub limit: u32,
    /// See [`ar`].
    pub access_rights: u32,
}

impl SegmentState {
    pub const fn usable(&self) -> bool {
        self.access_rights & ar::UNUSABLE == 0
    }
    pub const fn seg_type(&self) -> u32 {
        self.access_rights & ar::TYPE_MASK
    }
    pub const fn dpl(&self) -> u32 {
        (self.access_rights & ar::DPL_MASK) >> ar::DPL_SHIFT
    }
}

/// The segment registers in VMCS field order (the encodings of ES..TR step by 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Seg {
    Es = 0,
    Cs = 1,
    Ss = 2,
    Ds = 3,
    Fs = 4,
    Gs = 5,
    Ldtr = 6,
    Tr = 7,
}

impl Seg {
    pub const ALL: [Seg; 8] = [
        Seg::Es,
        Seg::Cs,
        Seg::Ss,
        Seg::Ds,
        Seg::Fs,
        Seg::Gs,
        Seg::Ldtr,
        Seg::Tr,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Seg::Es => "ES",
            Seg::Cs => "CS",
            Seg::Ss => "SS",
            Seg::Ds => "DS",
            Seg::Fs => "FS",
            Seg::Gs => "GS",
            Seg::Ldtr => "LDTR",
            Seg::Tr => "TR",
        }
    }

    pub(crate) const fn selector_field(self) -> u32 {
        guest16::ES_SELECTOR + 2 * self as u32
    }
    pub(crate) const fn base_field(self) -> u32 {
        guest_nat::ES_BASE + 2 * self as u32
    }
    pub(crate) const fn limit_field(self) -> u32 {
        guest32::ES_LIMIT + 2 * self as u32
    }
    pub(crate) const fn ar_field(self) -> u32 {
        guest32::ES_ACCESS_RIGHTS + 2 * self as u32
    }
}

/// A descriptor-table register.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableRegister {
    pub base: u64,
    pub limit: u32,
}

/// Every guest-state field this backend sets (SDM Vol. 3C 25.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestState {
    /// CR0 as the processor uses it (with the host-owned bits applied).
    pub cr0: u64,
    /// CR0 as the guest reads it (the read shadow).
    pub cr0_shadow: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr4_shadow: u64,
    pub dr7: u64,
    pub rsp: u64,
    pub rip: u64,
    pub rflags: u64,
    pub segments: [SegmentState; 8],
    pub gdtr: TableRegister,
    pub idtr: TableRegister,
    pub efer: u64,
    pub pat: u64,
    pub debugctl: u64,
    pub sysenter_cs: u64,
    pub sysenter_esp: u64,
    pub sysenter_eip: u64,
    pub interruptibility: u32,
    pub activity: u32,
    pub pending_debug: u64,
    pub link_pointer: u64,
    /// The "IA-32e mode guest" VM-entry control (the processor keeps it equal to
    /// EFER.LMA on every VM exit, SDM Vol. 3C 28.2).
    pub ia32e: bool,
}

impl GuestState {
    pub fn seg(&self, s: Seg) -> &SegmentState {
        &self.segments[s as usize]
    }

    /// The state a vCPU starts in.
    ///
    /// - [`CpuMode::Real`]: CS base = `rip & !0xFFFF` with selector base >> 4 (so
    ///   0xFFFF_FFF0 runs as F000:FFF0 with base FFFF0000, 0x7C00 as 0000:7C00),
    ///   IP = `rip & 0xFFFF`, data segments at 0, 64 KiB limits, IDTR on the IVT.
    ///   Needs "unrestricted guest".
    /// - [`CpuMode::Protected`]: CR0.PE, flat 4 GiB code/data segments with selectors
    ///   [`FLAT_CODE_SELECTOR`]/[`FLAT_DATA_SELECTOR`], paging off.
    /// - [`CpuMode::Long`]: CR0.PE|PG|NE|WP, CR4.PAE, EFER.LME|LMA, CR3 = `start.cr3`,
    ///   a 64-bit CS (L=1, D=0), "IA-32e mode guest".
    ///
    /// In every mode TR holds a busy 32/64-bit TSS at 0 (VM entry requires a usable,
    /// busy TSS even for a real-mode guest, SDM Vol. 3C 27.3.1.2) and LDTR is unusable.
    /// GDTR and IDTR are empty outside real mode: a guest loads its own tables before
    /// it reloads a segment register or enables interrupts.
    pub fn for_start(start: &StartState, fixed: &CrFixed) -> GuestState {
        let flat = |selector: u16, access_rights: u32| SegmentState {
            selector,
            base: 0,
            limit: 0xFFFF_FFFF,
            access_rights,
        };
        let (cs, data, cr0_value, cr4_value, efer_value, rip, cr3, tables) = match start.mode {
            CpuMode::Real => {
                let base = start.rip & 0xFFFF_0000;
                let real = |selector: u16, base: u64, access_rights: u32| SegmentState {
                    selector,
                    base,
                    limit: 0xFFFF,
                    access_rights,
                };
                (
                    real((base >> 4) as u16, base, ar::REAL_CODE),
                    real(0, 0, ar::REAL_DATA),
                    cr0::ET,
                    0,
                    0,
                    start.rip & 0xFFFF,
                    0,
                    TableRegister {
                        base: 0,
                        limit: 0xFFFF,
                    },
                )
            }
            CpuMode::Protected => (
                flat(FLAT_CODE_SELECTOR, ar::FLAT32_CODE),
                flat(FLAT_DATA_SELECTOR, ar::FLAT_DATA),
                cr0::PE | cr0::ET,
                0,
                0,
                start.rip,
                0,
                TableRegister::default(),
            ),
            CpuMode::Long => (
                flat(FLAT_CODE_SELECTOR, ar::LONG_CODE),
                flat(FLAT_DATA_SELECTOR, ar::FLAT_DATA),
                cr0::PE | cr0::ET | cr0::NE | cr0::WP | cr0::PG,
                cr4::PAE,
                efer::LME | efer::LMA,
                start.rip,
                start.cr3,
                TableRegister::default(),
            ),
        };
        let tr = SegmentState {
            selector: 0,
            base: 0,
            limit: if start.mode == CpuMode::Real {
                0xFFFF
            } else {
                0x67
            },
            access_rights: ar::TSS_BUSY,
        };
        let ldtr = SegmentState {
            selector: 0,
            base: 0,
            limit: 0,
            access_rights: ar::UNUSABLE_SEGMENT,
        };
        GuestState {
            cr0: fixed.cr0_actual(cr0_value),
            cr0_shadow: cr0_value,
            cr3,
            cr4: fixed.cr4_actual(cr4_value),
            cr4_shadow: cr4_value,
            // DR7 after reset: only the reserved bit 10 set.
            dr7: 0x400,
            rsp: start.rsp,
            rip,
            // Bit 1 is reserved as 1; IF clear until the guest enables interrupts.
            rflags: rflags::FIXED_1,
            segments: [data, cs, data, data, data, data, ldtr, tr],
            gdtr: start.gdtr.map_or(tables, |(base, limit)| TableRegister {
                base,
                limit: limit as u32,
            }),
            idtr: tables,
            efer: efer_value,
            pat: PAT_RESET_VALUE,
            debugctl: 0,
            sysenter_cs: 0,
            sysenter_esp: 0,
            sysenter_eip: 0,
            interruptibility: 0,
            activity: 0,
            pending_debug: 0,
            // No shadow VMCS: the link pointer must be all ones (SDM Vol. 3C 27.3.1.5).
            link_pointer: !0,
            ia32e: start.mode == CpuMode::Long,
        }
    }

    /// The guest's mode: IA-32e when EFER.LMA, protected when CR0.PE, else real.
    pub fn mode(&self) -> CpuMode {
        mode_of(self.cr0, self.efer)
    }

    /// Writes every field, including the CR0/CR4 read shadows. The guest/host masks and
    /// the "IA-32e mode guest" entry control are the caller's (they are controls).
    pub fn write(&self, vmcs: &mut impl VmcsAccess) {
        vmcs.write(guest_nat::CR0, self.cr0);
        vmcs.write(control_nat::CR0_READ_SHADOW, self.cr0_shadow);
        vmcs.write(guest_nat::CR3, self.cr3);
        vmcs.write(guest_nat::CR4, self.cr4);
        vmcs.write(control_nat::CR4_READ_SHADOW, self.cr4_shadow);
        vmcs.write(guest_nat::DR7, self.dr7);
        vmcs.write(guest_nat::RSP, self.rsp);
        vmcs.write(guest_nat::RIP, self.rip);
        vmcs.write(guest_nat::RFLAGS, self.rflags);
        for s in Seg::ALL {
            let seg = self.seg(s);
            vmcs.write(s.selector_field(), seg.selector as u64);
            vmcs.write(s.base_field(), seg.base);
            vmcs.write(s.limit_field(), seg.limit as u64);
            vmcs.write(s.ar_field(), seg.access_rights as u64);
        }
        vmcs.write(guest_nat::GDTR_BASE, self.gdtr.base);
        vmcs.write(guest32::GDTR_LIMIT, self.gdtr.limit as u64);
        vmcs.write(guest_nat::IDTR_BASE, self.idtr.base);
        vmcs.write(guest32::IDTR_LIMIT, self.idtr.limit as u64);
        vmcs.write(guest64::IA32_EFER, self.efer);
        vmcs.write(guest64::IA32_PAT, self.pat);
        vmcs.write(guest64::IA32_DEBUGCTL, self.debugctl);
        vmcs.write(guest32::IA32_SYSENTER_CS, self.sysenter_cs);
        vmcs.write(guest_nat::IA32_SYSENTER_ESP, self.sysenter_esp);
        vmcs.write(guest_nat::IA32_SYSENTER_EIP, self.sysenter_eip);
        vmcs.write(
            guest32::INTERRUPTIBILITY_STATE,
            self.interruptibility as u64,
        );
        vmcs.write(guest32::ACTIVITY_STATE, self.activity as u64);
        vmcs.write(guest_nat::PENDING_DEBUG_EXCEPTIONS, self.pending_debug);
        vmcs.write(guest64::VMCS_LINK_POINTER, self.link_pointer);
        for pdpte in [
            guest64::PDPTE0,
            guest64::PDPTE1,
            guest64::PDPTE2,
            guest64::PDPTE3,
        ] {
            vmcs.write(pdpte, 0);
        }
    }

    /// Reads the guest state back (to re-check it after a failed VM entry).
    pub fn read(vmcs: &impl VmcsAccess, ia32e: bool) -> GuestState {
        let mut segments = [SegmentState::default(); 8];
        for s in Seg::ALL {
            segments[s as usize] = SegmentState {
                selector: vmcs.read(s.selector_field()) as u16,
                base: vmcs.read(s.base_field()),
                limit: vmcs.read(s.limit_field()) as u32,
                access_rights: vmcs.read(s.ar_field()) as u32,
            };
        }
        GuestState {
            cr0: vmcs.read(guest_nat::CR0),
            cr0_shadow: vmcs.read(control_nat::CR0_READ_SHADOW),
            cr3: vmcs.read(guest_nat::CR3),
            cr4: vmcs.read(guest_nat::CR4),
            cr4_shadow: vmcs.read(control_nat::CR4_READ_SHADOW),
            dr7: vmcs.read(guest_nat::DR7),
            rsp: vmcs.read(guest_nat::RSP),
            rip: vmcs.read(guest_nat::RIP),
            rflags: vmcs.read(guest_nat::RFLAGS),
            segments,
            gdtr: TableRegister {
                base: vmcs.read(guest_nat::GDTR_BASE),
                limit: vmcs.read(guest32::GDTR_LIMIT) as u32,
            },
            idtr: TableRegister {
                base: vmcs.read(guest_nat::IDTR_BASE),
                limit: vmcs.read(guest32::IDTR_LIMIT) as u32,
            },
            efer: vmcs.read(guest64::IA32_EFER),
            pat: vmcs.read(guest64::IA32_PAT),
            debugctl: vmcs.read(guest64::IA32_DEBUGCTL),
            sysenter_cs: vmcs.read(guest32::IA32_SYSENTER_CS),
            sysenter_esp: vmcs.read(guest_nat::IA32_SYSENTER_ESP),
            sysenter_eip: vmcs.read(guest_nat::IA32_SYSENTER_EIP),
            interruptibility: vmcs.read(guest32::INTERRUPTIBILITY_STATE) as u32,
            activity: vmcs.read(guest32::ACTIVITY_STATE) as u32,
            pending_debug: vmcs.read(guest_nat::PENDING_DEBUG_EXCEPTIONS),
            link_pointer: vmcs.read(guest64::VMCS_LINK_POINTER),
            ia32e,
        }
    }
}

/// The processor mode for a CR0 and EFER pair.
pub fn mode_of(cr0_value: u64, efer_value: u64) -> CpuMode {
    if efer_value & efer::LMA != 0 {
        CpuMode::Long
    } else if cr0_value & cr0::PE != 0 {
        CpuMode::Protected
    } else {
        CpuMode::Real
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::vmcs::fake::FakeVmcs;
    use vcpu::GuestRegisters;

    /// Typical values: CR0 must have PE, NE, PG; CR4 must have VMXE.
    pub(crate) const FIXED: CrFixed = CrFixed {
        cr0_fixed0: 0x8000_0021,
        cr0_fixed1: 0xFFFF_FFFF,
        cr4_fixed0: 0x2000,
        cr4_fixed1: 0x0037_27FF,
    };

    pub(crate) fn start(mode: CpuMode, rip: u64) -> StartState {
        StartState {
            mode,
            rip,
            rsp: 0x7000,
            cr3: 0x1000,
            regs: GuestRegisters::default(),
            gdtr: None,
        }
    }

    #[test]
    fn fixed_bits_and_masks() {
        assert_eq!(FIXED.cr0_must_be_one(), cr0::NE);
        assert_eq!(FIXED.cr0_mask(), cr0::NE);
        assert_eq!(FIXED.cr4_mask(), u64::MAX);
        assert_eq!(FIXED.cr0_actual(cr0::ET), cr0::ET | cr0::NE);
        assert_eq!(FIXED.cr4_actual(cr4::PAE), cr4::PAE | cr4::VMXE);
        // A bit FIXED1 does not allow is dropped.
        assert_eq!(FIXED.cr4_actual(1 << 30), cr4::VMXE);
    }

    #[test]
    fn real_mode_start() {
        let g = GuestState::for_start(&start(CpuMode::Real, 0x7C00), &FIXED);
        let cs = g.seg(Seg::Cs);
        assert_eq!((cs.selector, cs.base, cs.limit), (0, 0, 0xFFFF));
        assert_eq!(g.rip, 0x7C00);
        assert_eq!(cs.access_rights, 0x9B);
        assert_eq!(g.seg(Seg::Ss).access_rights, 0x93);
        assert_eq!(g.cr0_shadow, cr0::ET);
        assert_eq!(g.cr0, cr0::ET | cr0::NE);
        assert_eq!((g.cr4_shadow, g.cr4), (0, cr4::VMXE));
        assert_eq!(g.efer, 0);
        assert!(!g.ia32e);
        assert_eq!(
            g.idtr,
            TableRegister {
                base: 0,
                limit: 0xFFFF
            }
        );
        let tr = g.seg(Seg::Tr);
        assert_eq!(tr.access_rights, 0x8B, "busy TSS even in real mode");
        assert!(!g.seg(Seg::Ldtr).usable());
        assert_eq!(g.mode(), CpuMode::Real);

        // The reset vector: F000:FFF0 with base FFFF0000.
        let g = GuestState::for_start(&start(CpuMode::Real, 0xFFFF_FFF0), &FIXED);
        let cs = g.seg(Seg::Cs);
        assert_eq!((cs.selector, cs.base, g.rip), (0xF000, 0xFFFF_0000, 0xFFF0));
        // 0x1_2345: CS 1000h, IP 2345h.
        let g = GuestState::for_start(&start(CpuMode::Real, 0x1_2345), &FIXED);
        assert_eq!((g.seg(Seg::Cs).selector, g.rip), (0x1000, 0x2345));
    }

    #[test]
    fn protected_mode_start() {
        let g = GuestState::for_start(&start(CpuMode::Protected, 0x10_0000), &FIXED);
        assert_eq!(g.cr0_shadow, cr0::PE | cr0::ET);
        assert_eq!(g.cr0, cr0::PE | cr0::ET | cr0::NE);
        let cs = g.seg(Seg::Cs);
        assert_eq!(
            (cs.selector, cs.limit, cs.access_rights),
            (0x10, 0xFFFF_FFFF, 0xC09B)
        );
        assert_eq!(g.seg(Seg::Ds).access_rights, 0xC093);
        assert_eq!(g.rip, 0x10_0000);
        assert_eq!(g.cr3, 0, "CR3 only matters with paging");
        assert_eq!(g.mode(), CpuMode::Protected);
    }

    #[test]
    fn long_mode_start() {
        let g = GuestState::for_start(&start(CpuMode::Long, 0x20_0000), &FIXED);
        assert_eq!(g.cr0, cr0::PE | cr0::ET | cr0::NE | cr0::WP | cr0::PG);
        assert_eq!(g.cr4, cr4::PAE | cr4::VMXE);
        assert_eq!(g.cr4_shadow, cr4::PAE);
        assert_eq!(g.efer, efer::LME | efer::LMA);
        assert_eq!(g.cr3, 0x1000);
        assert!(g.ia32e);
        assert_eq!(g.seg(Seg::Cs).access_rights, 0xA09B);
        assert_eq!(g.seg(Seg::Tr).limit, 0x67);
        assert_eq!(g.mode(), CpuMode::Long);
    }

    #[test]
    fn write_then_read_round_trips() {
        for mode in [CpuMode::Real, CpuMode::Protected, CpuMode::Long] {
            let g = GuestState::for_start(&start(mode, 0x7C00), &FIXED);
            let mut vmcs = FakeVmcs::default();
            g.write(&mut vmcs);
            assert_eq!(vmcs.get(guest64::VMCS_LINK_POINTER), !0);
            assert_eq!(vmcs.get(guest32::TR_ACCESS_RIGHTS), 0x8B);
            assert_eq!(
                vmcs.get(guest16::CS_SELECTOR),
                g.seg(Seg::Cs).selector as u64
            );
            assert_eq!(vmcs.get(guest_nat::CS_BASE), g.seg(Seg::Cs).base);
            assert_eq!(vmcs.get(guest32::LDTR_ACCESS_RIGHTS), 0x10000);
            assert_eq!(GuestState::read(&vmcs, g.ia32e), g);
        }
    }
}
