//! A VT-x vCPU's state as a [`CpuState`] and back, as pure functions over
//! [`VmcsAccess`]: [`save`] reads the VMCS and the backend's software-kept parts
//! ([`Soft`]); [`plan`] checks a state and computes every VMCS value it needs without
//! writing anything; [`apply`] writes a checked plan.
//!
//! Where each part lives on VT-x:
//!
//! - VMCS guest-state area: RIP, RSP, RFLAGS, segments, GDTR/IDTR, CR0/CR4 (with the
//!   host-owned bits, see [`crate::guest_state`]; the guest's view is the read shadow
//!   for those), CR3, DR7, EFER, PAT, SYSENTER_CS/ESP/EIP, the interruptibility state,
//!   pending debug exceptions, the PDPTEs.
//! - VMCS controls: the queued event (VM-entry interruption information, error code,
//!   instruction length), the interrupt- and NMI-window exiting controls, the TSC
//!   offset, "IA-32e mode guest" (kept equal to EFER.LMA).
//! - Software ([`Soft`]): the GPRs but RSP, CR2 and CR8 (neither is in the VMCS),
//!   DR0-DR3, DR6 and TSC_AUX (switched per slice, `vcpu::slice`), STAR, LSTAR, CSTAR,
//!   FMASK and KERNEL_GS_BASE (the MSR areas, `crate::bitmaps`), the FXSAVE image.
//!
//! Segment access rights map to the neutral attribute format as `vcpu::state`
//! documents it ([`attrib_from_access_rights`], [`access_rights_from_attrib`]).

use vcpu::fpu::FxArea;
use vcpu::state::{
    CpuState, Event, EventKind, Events, InterruptShadow, Msrs, Segment, StateError, TableRegister,
};
use vcpu::GuestRegisters;

use crate::checks::{check_event_injection, check_guest_state};
use crate::guest_state::{CrFixed, GuestState, Seg, SegmentState, TableRegister as VmxTable};
use crate::ops::{self, has_error_code};
use crate::vmcs::{
    control32, control64, cr0, entry_ctl, guest64, interruptibility, intr_info, pin, proc,
    VmcsAccess,
};

/// The neutral attribute word for VMX access rights: AR 7:0 stay, AR 15:12 become bits
/// 11:8, the unusable bit 16 becomes bit 12. AR 11:8 and 31:17 are reserved (0).
pub const fn attrib_from_access_rights(ar: u32) -> u16 {
    ((ar & 0xFF) | ((ar >> 4) & 0xF00) | ((ar >> 4) & 0x1000)) as u16
}

/// The VMX access rights for a neutral attribute word (the inverse of
/// [`attrib_from_access_rights`] for every word without reserved bits).
pub const fn access_rights_from_attrib(a: u16) -> u32 {
    let a = a as u32;
    (a & 0xFF) | ((a & 0xF00) << 4) | ((a & 0x1000) << 4)
}

/// The part of a vCPU's state the backend keeps outside the VMCS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Soft {
    /// RSP is the VMCS's; the value here is ignored.
    pub regs: GuestRegisters,
    pub cr2: u64,
    pub cr8: u64,
    pub dr: [u64; 4],
    pub dr6: u64,
    pub tsc_aux: u64,
    /// STAR, LSTAR, CSTAR, FMASK, KERNEL_GS_BASE, in `bitmaps::SWITCHED_MSRS` order.
    pub switched: [u64; 5],
    pub fx: FxArea,
}

/// A state checked against this processor and turned into what goes into the VMCS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub guest: GuestState,
    pub pdptes: [u64; 4],
    pub entry_controls: u64,
    pub proc_controls: u64,
    pub event_info: u32,
    pub event_error_code: u32,
    pub event_instruction_len: u32,
    pub tsc_offset: u64,
    pub soft: Soft,
}

/// What a load is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub fixed: CrFixed,
    /// CPUID 8000_0008 EAX[7:0].
    pub phys_bits: u8,
    /// The processor's MXCSR_MASK (`vcpu::fpu::host_mxcsr_mask`).
    pub mxcsr_mask: u32,
}

const PDPTE_FIELDS: [u32; 4] = [
    guest64::PDPTE0,
    guest64::PDPTE1,
    guest64::PDPTE2,
    guest64::PDPTE3,
];

/// RTM bit of the pending-debug-exceptions field.
const PENDING_DEBUG_RTM: u64 = 1 << 16;

/// Guest segment register `seg` as the VMCS holds it now, in the neutral format.
pub fn segment(vmcs: &impl VmcsAccess, seg: Seg) -> Segment {
    segment_from(&SegmentState {
        selector: vmcs.read(seg.selector_field()) as u16,
        base: vmcs.read(seg.base_field()),
        limit: vmcs.read(seg.limit_field()) as u32,
        access_rights: vmcs.read(seg.ar_field()) as u32,
    })
}

/// GDTR and LDTR from the VMCS.
pub fn descriptor_tables(vmcs: &impl VmcsAccess) -> (vcpu::state::TableRegister, Segment) {
    let gdtr = vcpu::state::TableRegister {
        base: vmcs.read(crate::vmcs::guest_nat::GDTR_BASE),
        limit: vmcs.read(crate::vmcs::guest32::GDTR_LIMIT) as u16,
    };
    (gdtr, segment(vmcs, Seg::Ldtr))
}

/// Writes segment register `seg` into the VMCS (the inverse of [`segment`]).
pub fn set_segment(vmcs: &mut impl VmcsAccess, seg: Seg, value: &Segment) {
    let s = segment_to(value);
    vmcs.write(seg.selector_field(), u64::from(s.selector));
    vmcs.write(seg.base_field(), s.base);
    vmcs.write(seg.limit_field(), u64::from(s.limit));
    vmcs.write(seg.ar_field(), u64::from(s.access_rights));
}

fn segment_from(s: &SegmentState) -> Segment {
    Segment {
        selector: s.selector,
        attrib: attrib_from_access_rights(s.access_rights),
        limit: s.limit,
        base: s.base,
    }
}

fn segment_to(s: &Segment) -> SegmentState {
    SegmentState {
        selector: s.selector,
        base: s.base,
        limit: s.limit,
        access_rights: access_rights_from_attrib(s.attrib),
    }
}

/// The event in the VM-entry interruption-information field, if one is queued. Types
/// 1 and 7 never are (nothing in this backend writes them, and VM entry refuses 1).
fn queued_event(vmcs: &impl VmcsAccess) -> Option<Event> {
    let info = vmcs.read(control32::VM_ENTRY_INTERRUPTION_INFO) as u32;
    if info & intr_info::VALID == 0 {
        return None;
    }
    let kind = EventKind::from_u8(((info & intr_info::TYPE_MASK) >> intr_info::TYPE_SHIFT) as u8)?;
    Some(Event {
        kind,
        vector: (info & intr_info::VECTOR_MASK) as u8,
        error_code: (info & intr_info::DELIVER_ERROR_CODE != 0)
            .then(|| vmcs.read(control32::VM_ENTRY_EXCEPTION_ERROR_CODE) as u32),
        instruction_len: if kind.is_software() {
            vmcs.read(control32::VM_ENTRY_INSTRUCTION_LENGTH) as u8
        } else {
            0
        },
    })
}

/// The vCPU's state from its VMCS and `soft`.
pub fn save(vmcs: &impl VmcsAccess, soft: &Soft) -> CpuState {
    let ia32e = vmcs.read(control32::VM_ENTRY_CONTROLS) as u32 & entry_ctl::IA32E_MODE_GUEST != 0;
    let g = GuestState::read(vmcs, ia32e);
    let visible = ops::control_regs(vmcs);
    let seg = |s: Seg| segment_from(g.seg(s));
    let table = |t: &VmxTable| TableRegister {
        base: t.base,
        limit: t.limit as u16,
    };
    let proc_controls = vmcs.read(control32::PRIMARY_PROC_BASED) as u32;
    let shadow = if g.interruptibility & interruptibility::BLOCKING_BY_MOV_SS != 0 {
        InterruptShadow::MovSs
    } else if g.interruptibility & interruptibility::BLOCKING_BY_STI != 0 {
        InterruptShadow::Sti
    } else {
        InterruptShadow::None
    };
    let [star, lstar, cstar, sfmask, kernel_gs_base] = soft.switched;
    let mut s = CpuState {
        regs: soft.regs,
        rip: g.rip,
        rsp: g.rsp,
        rflags: g.rflags,
        es: seg(Seg::Es),
        cs: seg(Seg::Cs),
        ss: seg(Seg::Ss),
        ds: seg(Seg::Ds),
        fs: seg(Seg::Fs),
        gs: seg(Seg::Gs),
        ldtr: seg(Seg::Ldtr),
        tr: seg(Seg::Tr),
        gdtr: table(&g.gdtr),
        idtr: table(&g.idtr),
        cr0: visible.cr0,
        cr2: soft.cr2,
        cr3: g.cr3,
        cr4: visible.cr4,
        cr8: soft.cr8 as u8,
        dr: soft.dr,
        dr6: soft.dr6,
        dr7: g.dr7,
        msrs: Msrs {
            efer: g.efer,
            star,
            lstar,
            cstar,
            sfmask,
            kernel_gs_base,
            sysenter_cs: g.sysenter_cs,
            sysenter_esp: g.sysenter_esp,
            sysenter_eip: g.sysenter_eip,
            pat: g.pat,
            tsc_offset: vmcs.read(control64::TSC_OFFSET),
            tsc_aux: soft.tsc_aux,
        },
        pdptes: [0; 4],
        events: Events {
            injected: queued_event(vmcs),
            virtual_interrupt: None,
            shadow,
            nmi_blocked: g.interruptibility & interruptibility::BLOCKING_BY_NMI != 0,
            interrupt_window: proc_controls & proc::INTERRUPT_WINDOW_EXITING != 0,
            nmi_window: proc_controls & proc::NMI_WINDOW_EXITING != 0,
            pending_debug: g.pending_debug,
        },
        fx: soft.fx.clone(),
    };
    // The PDPTE registers only mean something with PAE paging outside IA-32e mode
    // (otherwise the VMCS fields hold whatever an earlier mode left).
    if s.pae_legacy_paging() {
        s.pdptes = PDPTE_FIELDS.map(|f| vmcs.read(f));
    }
    s
}

/// Checks `s` against everything VM entry requires on this processor and computes the
/// VMCS values for it, reading (not writing) the current VMCS for the fields a state
/// does not carry (DEBUGCTL, the VMCS link pointer, the other controls).
pub fn plan(vmcs: &impl VmcsAccess, s: &CpuState, limits: &Limits) -> Result<Plan, StateError> {
    s.check()?;
    let fixed = &limits.fixed;
    if !s.fx.restorable(limits.mxcsr_mask) {
        return Err(StateError::Invalid(
            "MXCSR has bits set that this processor's MXCSR_MASK does not allow",
        ));
    }
    if s.events.virtual_interrupt.is_some() {
        return Err(StateError::Unsupported(
            "an interrupt pending in AMD-V's virtual interrupt (V_IRQ) has no VT-x equivalent",
        ));
    }
    if s.events.pending_debug & PENDING_DEBUG_RTM != 0 {
        return Err(StateError::Unsupported(
            "a debug exception pending inside an RTM transaction (guests are not offered RTM)",
        ));
    }
    // CR0/CR4: the processor runs with the fixed bits applied and the guest reads its
    // own value from the shadows; a bit the processor cannot hold in VMX operation
    // would be dropped silently by `cr*_actual`, so it is refused here.
    if s.cr0 & !(fixed.cr0_fixed1 | cr0::PE | cr0::PG) != 0 {
        return Err(StateError::Invalid(
            "CR0 has a bit set that IA32_VMX_CR0_FIXED1 does not allow",
        ));
    }
    if s.cr4 & !fixed.cr4_fixed1 != 0 {
        return Err(StateError::Invalid(
            "CR4 has a bit set that this processor does not support (IA32_VMX_CR4_FIXED1)",
        ));
    }
    let ev = &s.events;
    let mut interruptibility = match ev.shadow {
        InterruptShadow::None => 0,
        InterruptShadow::Sti => interruptibility::BLOCKING_BY_STI,
        InterruptShadow::MovSs => interruptibility::BLOCKING_BY_MOV_SS,
    };
    if ev.nmi_blocked {
        interruptibility |= interruptibility::BLOCKING_BY_NMI;
    }
    let ia32e = s.msrs.efer & vcpu::cr_policy::efer::LMA != 0;
    let current = GuestState::read(vmcs, ia32e);
    let guest = GuestState {
        cr0: fixed.cr0_actual(s.cr0),
        cr0_shadow: s.cr0,
        cr3: s.cr3,
        cr4: fixed.cr4_actual(s.cr4),
        cr4_shadow: s.cr4,
        dr7: s.dr7,
        rsp: s.rsp,
        rip: s.rip,
        rflags: s.rflags,
        segments: [&s.es, &s.cs, &s.ss, &s.ds, &s.fs, &s.gs, &s.ldtr, &s.tr].map(segment_to),
        gdtr: VmxTable {
            base: s.gdtr.base,
            limit: s.gdtr.limit.into(),
        },
        idtr: VmxTable {
            base: s.idtr.base,
            limit: s.idtr.limit.into(),
        },
        efer: s.msrs.efer,
        pat: s.msrs.pat,
        debugctl: current.debugctl,
        sysenter_cs: s.msrs.sysenter_cs,
        sysenter_esp: s.msrs.sysenter_esp,
        sysenter_eip: s.msrs.sysenter_eip,
        interruptibility,
        // The backend runs guests in the active state only: HLT exits to the core.
        activity: 0,
        pending_debug: ev.pending_debug,
        link_pointer: current.link_pointer,
        ia32e,
    };
    check_guest_state(&guest, fixed, limits.phys_bits).map_err(StateError::Invalid)?;
    // With EPT, VM entry loads the PDPTEs from the VMCS for PAE paging outside IA-32e
    // mode and fails on a present entry with reserved bits (SDM Vol. 3C 27.3.1.6).
    let pdptes = if s.pae_legacy_paging() {
        let width = limits.phys_bits.clamp(32, 52);
        if s.pdptes
            .iter()
            .any(|&e| e & 1 != 0 && (e & 0x1E6 != 0 || e >> width != 0))
        {
            return Err(StateError::Invalid(
                "a present PDPTE has reserved bits set (2:1, 8:5 or beyond the physical-address width)",
            ));
        }
        s.pdptes
    } else {
        [0; 4]
    };
    let (event_info, event_error_code, event_instruction_len) = match ev.injected {
        None => (0, 0, 0),
        Some(e) => {
            let mut info =
                intr_info::VALID | ((e.kind as u32) << intr_info::TYPE_SHIFT) | u32::from(e.vector);
            // As `ops::inject_exception`: outside protected mode an exception pushes
            // no error code, and VM entry refuses to deliver one.
            let code = match e.error_code {
                Some(code)
                    if e.kind == EventKind::HardwareException
                        && s.cr0 & cr0::PE != 0
                        && has_error_code(e.vector) =>
                {
                    info |= intr_info::DELIVER_ERROR_CODE;
                    code
                }
                _ => 0,
            };
            (info, code, u32::from(e.instruction_len))
        }
    };
    let pin_controls = vmcs.read(control32::PIN_BASED) as u32;
    let virtual_nmis = pin_controls & pin::VIRTUAL_NMIS != 0;
    check_event_injection(
        &guest,
        event_info,
        event_error_code,
        event_instruction_len,
        virtual_nmis,
    )
    .map_err(StateError::Invalid)?;
    let mut entry = vmcs.read(control32::VM_ENTRY_CONTROLS) as u32 & !entry_ctl::IA32E_MODE_GUEST;
    if ia32e {
        entry |= entry_ctl::IA32E_MODE_GUEST;
    }
    let mut proc_controls = vmcs.read(control32::PRIMARY_PROC_BASED) as u32
        & !(proc::INTERRUPT_WINDOW_EXITING | proc::NMI_WINDOW_EXITING);
    if ev.interrupt_window {
        proc_controls |= proc::INTERRUPT_WINDOW_EXITING;
    }
    // NMI-window exiting needs virtual NMIs; without them a request does nothing, as
    // `ops::set_nmi_window` does.
    if ev.nmi_window && virtual_nmis {
        proc_controls |= proc::NMI_WINDOW_EXITING;
    }
    let m = &s.msrs;
    Ok(Plan {
        guest,
        pdptes,
        entry_controls: entry.into(),
        proc_controls: proc_controls.into(),
        event_info,
        event_error_code,
        event_instruction_len,
        tsc_offset: m.tsc_offset,
        soft: Soft {
            regs: s.regs,
            cr2: s.cr2,
            cr8: s.cr8.into(),
            dr: s.dr,
            dr6: s.dr6,
            tsc_aux: m.tsc_aux,
            switched: [m.star, m.lstar, m.cstar, m.sfmask, m.kernel_gs_base],
            fx: s.fx.clone(),
        },
    })
}

/// Writes a [`plan`]'s VMCS values (the caller installs `plan.soft`).
pub fn apply(vmcs: &mut impl VmcsAccess, plan: &Plan) {
    plan.guest.write(vmcs);
    for (field, value) in PDPTE_FIELDS.into_iter().zip(plan.pdptes) {
        vmcs.write(field, value);
    }
    vmcs.write(control32::VM_ENTRY_CONTROLS, plan.entry_controls);
    vmcs.write(control32::PRIMARY_PROC_BASED, plan.proc_controls);
    vmcs.write(
        control32::VM_ENTRY_EXCEPTION_ERROR_CODE,
        plan.event_error_code.into(),
    );
    vmcs.write(
        control32::VM_ENTRY_INSTRUCTION_LENGTH,
        plan.event_instruction_len.into(),
    );
    vmcs.write(
        control32::VM_ENTRY_INTERRUPTION_INFO,
        plan.event_info.into(),
    );
    vmcs.write(control64::TSC_OFFSET, plan.tsc_offset);
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::controls::tests::skylake;
    use crate::controls::Controls;
    use crate::guest_state::tests::{start, FIXED};
    use crate::ops::{write_controls, ControlSetup};
    use crate::vmcs::fake::FakeVmcs;
    use crate::vmcs::{ar, control_nat, cr4, efer, guest32, guest_nat};
    use vcpu::state::attrib;
    use vcpu::CpuMode;

    const LIMITS: Limits = Limits {
        fixed: FIXED,
        phys_bits: 40,
        mxcsr_mask: 0xFFFF,
    };

    /// A VMCS as `create_vcpu` leaves it for `mode`.
    fn vmcs_for(mode: CpuMode) -> FakeVmcs {
        let mut v = FakeVmcs::default();
        let c = Controls::compute(&skylake()).unwrap();
        write_controls(
            &mut v,
            &ControlSetup {
                controls: c,
                entry: c.entry_for(mode == CpuMode::Long).unwrap(),
                io_bitmap_a: 0x1000,
                io_bitmap_b: 0x2000,
                msr_bitmap: 0x3000,
                msr_guest_list: 0x4000,
                msr_host_list: 0x4050,
                msr_count: 5,
                eptp: 0x501E,
                vpid: 7,
                fixed: FIXED,
            },
        );
        GuestState::for_start(&start(mode, 0x7C00), &FIXED).write(&mut v);
        v
    }

    fn soft() -> Soft {
        Soft {
            regs: GuestRegisters {
                rax: 0xA,
                r15: 0xF,
                ..GuestRegisters::default()
            },
            cr2: 0xDEAD_B000,
            cr8: 2,
            dr: [1, 2, 3, 4],
            dr6: 0xFFFF_0FF0,
            tsc_aux: 7,
            switched: [
                0x23_0010_0000_0000,
                0xFFFF_FFFF_8100_0000,
                0,
                0x4700,
                0x7000,
            ],
            fx: FxArea::initial(),
        }
    }

    fn load(v: &mut FakeVmcs, s: &CpuState) -> Result<Soft, StateError> {
        let p = plan(v, s, &LIMITS)?;
        apply(v, &p);
        Ok(p.soft)
    }

    #[test]
    fn access_rights_mapping() {
        // Descriptor bits at the same places, the high nibble and "unusable" shifted.
        assert_eq!(attrib_from_access_rights(ar::LONG_CODE), 0xA9B);
        assert_eq!(attrib_from_access_rights(ar::FLAT_DATA), 0xC93);
        assert_eq!(attrib_from_access_rights(ar::TSS_BUSY), 0x8B);
        assert_eq!(attrib_from_access_rights(ar::UNUSABLE), attrib::UNUSABLE);
        // An unusable SS keeps its DPL (the CPL).
        assert_eq!(
            attrib_from_access_rights(ar::UNUSABLE | 3 << ar::DPL_SHIFT | ar::DB),
            attrib::UNUSABLE | 3 << attrib::DPL_SHIFT | attrib::DB
        );
        assert_eq!(access_rights_from_attrib(0xA9B), ar::LONG_CODE);
        assert_eq!(access_rights_from_attrib(attrib::UNUSABLE), ar::UNUSABLE);
        // Both ways for every valid word.
        for a in 0..=0x1FFFu16 {
            assert_eq!(attrib_from_access_rights(access_rights_from_attrib(a)), a);
            let r = access_rights_from_attrib(a);
            assert_eq!(r & (ar::RESERVED_11_8 | ar::RESERVED_31_17), 0);
        }
        // The SVM descriptor helper and the VMX one agree through the mapping.
        let descriptor = 0x00AF_9B00_0000_FFFFu64;
        let svm_format = (((descriptor >> 40) & 0xFF) | ((descriptor >> 44) & 0xF00)) as u16;
        assert_eq!(
            attrib_from_access_rights(ar::from_descriptor(descriptor)),
            svm_format
        );
    }

    #[test]
    fn start_states_round_trip() {
        for mode in [CpuMode::Real, CpuMode::Protected, CpuMode::Long] {
            let v = vmcs_for(mode);
            let s = save(&v, &soft());
            assert_eq!(s.check(), Ok(()), "{mode:?}");
            assert_eq!(
                s.cr0 & cr0::NE == 0,
                mode != CpuMode::Long,
                "the shadow, not NE"
            );
            assert_eq!(s.cr4 & cr4::VMXE, 0, "VMXE is the host's");
            assert_eq!(s.regs.rax, 0xA);
            assert_eq!(s.cr2, 0xDEAD_B000);
            assert_eq!(s.msrs.lstar, 0xFFFF_FFFF_8100_0000);
            // Loading it into a fresh VMCS of the same mode reproduces every field.
            let mut w = vmcs_for(mode);
            let back = load(&mut w, &s).unwrap();
            assert_eq!(back, soft(), "{mode:?}");
            assert_eq!(w.fields, v.fields, "{mode:?}");
        }
    }

    #[test]
    fn a_state_moves_between_vcpus_and_modes() {
        // A long-mode guest's state goes into a vCPU that was created in real mode.
        let mut from = vmcs_for(CpuMode::Long);
        from.write(guest_nat::RIP, 0xFFFF_FFFF_8100_0123);
        from.write(guest_nat::RFLAGS, 0x246);
        from.write(guest32::INTERRUPTIBILITY_STATE, 1);
        from.write(guest64::IA32_EFER, efer::LME | efer::LMA | efer::NXE);
        from.write(control64::TSC_OFFSET, 0x1234);
        ops::inject_exception(
            &mut from,
            vcpu::Exception {
                vector: 14,
                error_code: Some(2),
            },
        );
        ops::set_interrupt_window(&mut from, true);
        let s = save(&from, &soft());
        assert_eq!(
            s.events.injected,
            Some(Event {
                kind: EventKind::HardwareException,
                vector: 14,
                error_code: Some(2),
                instruction_len: 0
            })
        );
        assert_eq!(s.events.shadow, InterruptShadow::Sti);
        assert!(s.events.interrupt_window);
        let mut to = vmcs_for(CpuMode::Real);
        load(&mut to, &s).unwrap();
        assert_eq!(save(&to, &soft()), s);
        assert_ne!(
            to.get(control32::VM_ENTRY_CONTROLS) & entry_ctl::IA32E_MODE_GUEST as u64,
            0
        );
        assert_eq!(to.get(control32::VM_ENTRY_INTERRUPTION_INFO), 0x8000_0B0E);
        assert_eq!(to.get(control32::VM_ENTRY_EXCEPTION_ERROR_CODE), 2);
        assert_eq!(to.get(control_nat::CR0_READ_SHADOW), s.cr0);
        assert_eq!(to.get(guest_nat::CR4), s.cr4 | cr4::VMXE);
        // And back to real mode: IA-32e off again, the event gone.
        let real = save(&vmcs_for(CpuMode::Real), &soft());
        load(&mut to, &real).unwrap();
        assert_eq!(
            to.get(control32::VM_ENTRY_CONTROLS) & entry_ctl::IA32E_MODE_GUEST as u64,
            0
        );
        assert_eq!(to.get(control32::VM_ENTRY_INTERRUPTION_INFO), 0);
        assert_eq!(save(&to, &soft()), real);
    }

    #[test]
    fn software_events_keep_their_length() {
        let mut v = vmcs_for(CpuMode::Protected);
        let mut s = save(&v, &soft());
        s.events.injected = Some(Event {
            kind: EventKind::SoftwareInterrupt,
            vector: 0x80,
            error_code: None,
            instruction_len: 2,
        });
        load(&mut v, &s).unwrap();
        assert_eq!(v.get(control32::VM_ENTRY_INTERRUPTION_INFO), 0x8000_0480);
        assert_eq!(v.get(control32::VM_ENTRY_INSTRUCTION_LENGTH), 2);
        assert_eq!(save(&v, &soft()), s);
        // Without a length VM entry would fail.
        s.events.injected = Some(Event {
            instruction_len: 0,
            ..s.events.injected.unwrap()
        });
        assert!(matches!(
            plan(&v, &s, &LIMITS),
            Err(StateError::Invalid(why)) if why.contains("instruction length")
        ));
    }

    #[test]
    fn real_mode_exceptions_drop_the_error_code() {
        let mut v = vmcs_for(CpuMode::Real);
        let mut s = save(&v, &soft());
        s.events.injected = Some(Event {
            kind: EventKind::HardwareException,
            vector: 13,
            error_code: Some(0),
            instruction_len: 0,
        });
        load(&mut v, &s).unwrap();
        assert_eq!(v.get(control32::VM_ENTRY_INTERRUPTION_INFO), 0x8000_030D);
        // Protected mode: #GP without its error code is refused.
        let mut v = vmcs_for(CpuMode::Protected);
        let mut s = save(&v, &soft());
        s.events.injected = Some(Event {
            kind: EventKind::HardwareException,
            vector: 13,
            error_code: None,
            instruction_len: 0,
        });
        assert!(plan(&v, &s, &LIMITS).is_err());
        s.events.injected.as_mut().unwrap().error_code = Some(0x18);
        load(&mut v, &s).unwrap();
        assert_eq!(v.get(control32::VM_ENTRY_INTERRUPTION_INFO), 0x8000_0B0D);
        assert_eq!(v.get(control32::VM_ENTRY_EXCEPTION_ERROR_CODE), 0x18);
    }

    /// Refusals leave the VMCS exactly as it was.
    fn refused(s: &CpuState, needle: &str) {
        let v = vmcs_for(CpuMode::Long);
        let before = v.fields.clone();
        match plan(&v, s, &LIMITS) {
            Err(e) => {
                let text = std::format!("{e}");
                assert!(text.contains(needle), "{text:?} lacks {needle:?}");
            }
            Ok(_) => panic!("accepted; expected a refusal containing {needle:?}"),
        }
        assert_eq!(v.fields, before);
    }

    #[test]
    fn refusals() {
        let good = save(&vmcs_for(CpuMode::Long), &soft());
        assert!(plan(&vmcs_for(CpuMode::Long), &good, &LIMITS).is_ok());
        // The neutral rules.
        let mut s = good.clone();
        s.rflags = 0;
        refused(&s, "RFLAGS bit 1");
        // FIXED1: a CR4 bit this processor does not have (FIXED leaves out bit 22).
        let mut s = good.clone();
        s.cr4 |= 1 << 22;
        refused(&s, "IA32_VMX_CR4_FIXED1");
        // The VMX guest-state checks, named.
        let mut s = good.clone();
        s.tr.attrib = 0x89; // an available TSS
        refused(&s, "guest TR type must be 11");
        let mut s = good.clone();
        s.ds.attrib &= !1; // not accessed
        refused(&s, "guest DS type invalid");
        let mut s = good.clone();
        s.cr3 = 1 << 45;
        refused(&s, "CR3");
        // Event injection against the guest state.
        let mut s = good.clone();
        s.events.injected = Some(Event {
            kind: EventKind::ExternalInterrupt,
            vector: 0x30,
            error_code: None,
            instruction_len: 0,
        });
        refused(&s, "RFLAGS.IF is clear");
        let mut s = good.clone();
        s.events.injected = Some(Event {
            kind: EventKind::Nmi,
            vector: 2,
            error_code: None,
            instruction_len: 0,
        });
        s.events.nmi_blocked = true;
        refused(&s, "NMI blocking");
        // What VT-x has no place for.
        let mut s = good.clone();
        s.events.virtual_interrupt = Some(0x30);
        refused(&s, "V_IRQ");
        let mut s = good.clone();
        s.events.pending_debug = 1 << 16;
        refused(&s, "RTM");
        // MXCSR beyond the processor's mask.
        let mut s = good.clone();
        s.fx.0[24] |= 1 << 6;
        let v = vmcs_for(CpuMode::Long);
        let narrow = Limits {
            mxcsr_mask: 0xFFBF,
            ..LIMITS
        };
        assert!(
            matches!(plan(&v, &s, &narrow), Err(StateError::Invalid(w)) if w.contains("MXCSR"))
        );
        assert!(plan(&v, &s, &LIMITS).is_ok());
    }

    #[test]
    fn pae_paging_carries_the_pdptes() {
        let mut v = vmcs_for(CpuMode::Protected);
        let mut s = save(&v, &soft());
        s.cr0 |= cr0::PG;
        s.cr4 |= cr4::PAE;
        s.cr3 = 0x9000;
        s.pdptes = [0xA001, 0xB001, 0, 0];
        load(&mut v, &s).unwrap();
        assert_eq!(v.get(guest64::PDPTE1), 0xB001);
        assert_eq!(save(&v, &soft()).pdptes, s.pdptes);
        s.pdptes[2] = 0xC003; // bit 1 reserved in a present PDPTE
        assert!(
            matches!(plan(&v, &s, &LIMITS), Err(StateError::Invalid(w)) if w.contains("PDPTE"))
        );
        s.pdptes[2] = 1 << 44; // beyond 40 bits, but not present
        assert!(plan(&v, &s, &LIMITS).is_ok());
        s.pdptes[2] |= 1;
        assert!(plan(&v, &s, &LIMITS).is_err());
        // Outside PAE paging they are not kept.
        let long = save(&vmcs_for(CpuMode::Long), &soft());
        assert_eq!(long.pdptes, [0; 4]);
    }

    #[test]
    fn windows_and_nmi_blocking() {
        let mut v = vmcs_for(CpuMode::Long);
        let mut s = save(&v, &soft());
        s.events.nmi_blocked = true;
        s.events.nmi_window = true;
        s.events.interrupt_window = true;
        load(&mut v, &s).unwrap();
        assert_eq!(
            v.get(guest32::INTERRUPTIBILITY_STATE),
            interruptibility::BLOCKING_BY_NMI as u64
        );
        let procs = v.get(control32::PRIMARY_PROC_BASED) as u32;
        assert_ne!(procs & proc::NMI_WINDOW_EXITING, 0);
        assert_ne!(procs & proc::INTERRUPT_WINDOW_EXITING, 0);
        assert_eq!(save(&v, &soft()), s);
        s.events = Events::default();
        load(&mut v, &s).unwrap();
        let procs = v.get(control32::PRIMARY_PROC_BASED) as u32;
        assert_eq!(
            procs & (proc::NMI_WINDOW_EXITING | proc::INTERRUPT_WINDOW_EXITING),
            0
        );
        assert_eq!(v.get(guest32::INTERRUPTIBILITY_STATE), 0);
    }
}
