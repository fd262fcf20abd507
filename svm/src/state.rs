//! An AMD-V vCPU's state as a [`CpuState`] and back, as pure functions over the VMCB
//! (plain memory): [`save`] reads it and the backend's software-kept parts ([`Soft`]);
//! [`plan`] checks a state and builds the control and save areas it needs, without
//! touching the vCPU; the backend then copies them in.
//!
//! Where each part lives on AMD-V:
//!
//! - VMCB save area: RIP, RSP, RAX, RFLAGS, segments (attributes in the compressed
//!   format `vcpu::state` uses), GDTR/IDTR, CPL, CR0, CR2, CR3, CR4, DR6, DR7, EFER
//!   (with SVME, which VMRUN requires and the guest never sees), STAR, LSTAR, CSTAR,
//!   SFMASK, KERNEL_GS_BASE, SYSENTER_CS/ESP/EIP, G_PAT.
//! - VMCB control area: the TSC offset, V_TPR (CR8), the virtual interrupt (V_IRQ,
//!   V_INTR_VECTOR, priority, V_IGN_TPR) and the VINTR intercept (interrupt window),
//!   the interrupt shadow, EVENTINJ, the IRET intercept (NMI blocking).
//! - Software ([`Soft`]): the GPRs but RSP (RAX is also in the VMCB; the backend's copy
//!   is the one `run` loads), DR0-DR3 and TSC_AUX (switched per slice,
//!   `vcpu::slice`), whether an NMI's handler runs (`nmi_masked`: SVM shows NMI
//!   blocking only with vNMI), whether V_IRQ carries an injected interrupt
//!   (`virq_pending`), the FXSAVE image.
//!
//! Segments: the VMCB has no "unusable" bit; a segment is unusable when P = 0, so
//! [`save`] sets [`attrib::UNUSABLE`] from P and [`plan`] loads an unusable segment
//! with P cleared (the other bits, SS.DPL among them, as they are). The CPL travels as
//! SS.DPL, as on VT-x: [`save`] puts the VMCB's CPL field there, [`plan`] loads the
//! CPL field from it.
//!
//! Not on AMD-V: pending debug exceptions (a VT-x field; refused unless 0), the PDPTE
//! registers (with nested paging the processor reads PDPTEs from guest memory; saved as
//! 0 and ignored on load), and VT-x's interruption types 5 and 6 and instruction
//! lengths, which EVENTINJ cannot express (refused).

use vcpu::fpu::FxArea;
use vcpu::state::{
    attrib, CpuState, Event, EventKind, Events, InterruptShadow, Msrs, Segment as NeutralSegment,
    StateError, TableRegister,
};
use vcpu::GuestRegisters;

use crate::vmcb::{
    check_areas, efer, event, int_ctl, int_state, ControlArea, Intercept1, Segment, StateSaveArea,
    Vmcb,
};

/// The part of a vCPU's state the backend keeps outside the VMCB.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Soft {
    /// RSP is the VMCB's; the value here is ignored.
    pub regs: GuestRegisters,
    pub dr: [u64; 4],
    pub tsc_aux: u64,
    /// An injected NMI's handler has not reached IRET (or the NMI is still queued).
    pub nmi_masked: bool,
    /// V_IRQ carries an injected external interrupt the guest has not taken.
    pub virq_pending: bool,
    pub fx: FxArea,
}

/// What a load is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// CPUID 8000_000A EBX (0 skips the ASID bound).
    pub asid_count: u32,
    /// CPUID 8000_0008 EAX[7:0].
    pub phys_width: u8,
    /// The CR4 bits this processor supports (VMRUN refuses a bit for a missing feature).
    pub cr4_supported: u64,
    /// The EFER bits this processor supports, SVME aside.
    pub efer_supported: u64,
    /// The processor's MXCSR_MASK.
    pub mxcsr_mask: u32,
}

/// A state checked against this processor, as the VMCB areas and software parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub control: ControlArea,
    pub save: StateSaveArea,
    pub soft: Soft,
}

/// The neutral attribute word for a VMCB attribute word.
pub const fn attrib_from_vmcb(a: u16) -> u16 {
    let a = a & 0xFFF;
    if a & attrib::P == 0 {
        a | attrib::UNUSABLE
    } else {
        a
    }
}

/// The VMCB attribute word for a neutral one: an unusable segment is not present.
pub const fn attrib_to_vmcb(a: u16) -> u16 {
    if a & attrib::UNUSABLE != 0 {
        a & 0xFFF & !attrib::P
    } else {
        a & 0xFFF
    }
}

pub(crate) fn segment_from(s: &Segment) -> NeutralSegment {
    NeutralSegment {
        selector: s.selector,
        attrib: attrib_from_vmcb(s.attrib),
        limit: s.limit,
        base: s.base,
    }
}

pub(crate) fn segment_to(s: &NeutralSegment) -> Segment {
    Segment {
        selector: s.selector,
        attrib: attrib_to_vmcb(s.attrib),
        limit: s.limit,
        base: s.base,
    }
}

/// EVENTINJ as an [`Event`]. Reserved types (1, 5-7) never get there: VMRUN refuses
/// them and nothing in the backend writes them.
fn event_from(eventinj: u64) -> Option<Event> {
    if eventinj & event::VALID == 0 {
        return None;
    }
    let kind = match eventinj & event::TYPE_MASK {
        event::TYPE_INTR => EventKind::ExternalInterrupt,
        event::TYPE_NMI => EventKind::Nmi,
        event::TYPE_EXCEPTION => EventKind::HardwareException,
        event::TYPE_SOFT_INT => EventKind::SoftwareInterrupt,
        _ => return None,
    };
    Some(Event {
        kind,
        vector: (eventinj & event::VECTOR_MASK) as u8,
        error_code: (eventinj & event::ERROR_CODE_VALID != 0)
            .then_some((eventinj >> event::ERROR_CODE_SHIFT) as u32),
        instruction_len: 0,
    })
}

/// The vCPU's state from its VMCB and `soft`.
pub fn save(vmcb: &Vmcb, soft: &Soft) -> CpuState {
    let (c, sa) = (&vmcb.control, &vmcb.save);
    let injected = event_from(c.eventinj);
    let nmi_queued = injected.is_some_and(|e| e.kind == EventKind::Nmi);
    let shadow = if c.interrupt_shadow & int_state::INTERRUPT_SHADOW == 0 {
        InterruptShadow::None
    } else if sa.rflags & (1 << 9) != 0 {
        InterruptShadow::Sti
    } else {
        InterruptShadow::MovSs
    };
    let table = |t: &Segment| TableRegister {
        base: t.base,
        limit: t.limit as u16,
    };
    // The VMCB's CPL field is the CPL (APM Vol. 2 15.5.1); SS.DPL is what the neutral
    // state keeps it in, and an AMD processor does not always keep SS.DPL equal to it
    // (SYSRET leaves SS's attributes alone, say). `plan` loads CPL back from SS.DPL.
    let mut ss = segment_from(&sa.ss);
    ss.attrib = (ss.attrib & !attrib::DPL_MASK) | (u16::from(sa.cpl & 3) << attrib::DPL_SHIFT);
    CpuState {
        regs: soft.regs,
        rip: sa.rip,
        rsp: sa.rsp,
        rflags: sa.rflags,
        es: segment_from(&sa.es),
        cs: segment_from(&sa.cs),
        ss,
        ds: segment_from(&sa.ds),
        fs: segment_from(&sa.fs),
        gs: segment_from(&sa.gs),
        ldtr: segment_from(&sa.ldtr),
        tr: segment_from(&sa.tr),
        gdtr: table(&sa.gdtr),
        idtr: table(&sa.idtr),
        cr0: sa.cr0,
        cr2: sa.cr2,
        cr3: sa.cr3,
        cr4: sa.cr4,
        cr8: (c.int_ctl & int_ctl::V_TPR_MASK) as u8,
        dr: soft.dr,
        dr6: sa.dr6,
        dr7: sa.dr7,
        msrs: Msrs {
            efer: sa.efer & !efer::SVME,
            star: sa.star,
            lstar: sa.lstar,
            cstar: sa.cstar,
            sfmask: sa.sfmask,
            kernel_gs_base: sa.kernel_gs_base,
            sysenter_cs: sa.sysenter_cs,
            sysenter_esp: sa.sysenter_esp,
            sysenter_eip: sa.sysenter_eip,
            pat: sa.g_pat,
            tsc_offset: c.tsc_offset,
            tsc_aux: soft.tsc_aux,
        },
        pdptes: [0; 4],
        events: Events {
            injected,
            virtual_interrupt: soft.virq_pending.then_some(c.int_vector as u8),
            shadow,
            // `inject_nmi` sets `nmi_masked` when it queues the NMI: blocking starts
            // with its delivery.
            nmi_blocked: soft.nmi_masked && !nmi_queued,
            interrupt_window: !soft.virq_pending && c.intercept1 & Intercept1::VINTR.bits() != 0,
            nmi_window: false,
            pending_debug: 0,
        },
        fx: soft.fx.clone(),
    }
}

/// Checks `s` against everything VMRUN and the host require and builds the VMCB areas
/// for it from the current ones (intercepts, maps, ASID, nested paging stay the
/// vCPU's). Nothing is written.
pub fn plan(vmcb: &Vmcb, s: &CpuState, limits: &Limits) -> Result<Plan, StateError> {
    s.check()?;
    if !s.fx.restorable(limits.mxcsr_mask) {
        return Err(StateError::Invalid(
            "MXCSR has bits set that this processor's MXCSR_MASK does not allow",
        ));
    }
    if s.cr4 & !limits.cr4_supported != 0 {
        return Err(StateError::Invalid(
            "CR4 has a bit set for a feature this processor lacks (VMRUN would refuse it)",
        ));
    }
    if s.msrs.efer & !limits.efer_supported != 0 {
        return Err(StateError::Invalid(
            "EFER has a bit set for a feature this processor lacks",
        ));
    }
    let ev = &s.events;
    if ev.pending_debug != 0 {
        return Err(StateError::Unsupported(
            "pending debug exceptions (a VT-x field) have no AMD-V equivalent",
        ));
    }
    let mut eventinj = 0;
    let mut virtual_interrupt = ev.virtual_interrupt;
    if let Some(e) = ev.injected {
        let kind = match e.kind {
            // External interrupts go through V_IRQ, as `inject_interrupt` does.
            EventKind::ExternalInterrupt => {
                virtual_interrupt = Some(e.vector);
                None
            }
            EventKind::Nmi => Some(event::TYPE_NMI),
            EventKind::HardwareException => Some(event::TYPE_EXCEPTION),
            EventKind::SoftwareInterrupt => Some(event::TYPE_SOFT_INT),
            EventKind::PrivilegedSoftwareException | EventKind::SoftwareException => {
                return Err(StateError::Unsupported(
                    "INT1, INT3 and INTO events (VT-x interruption types 5 and 6) have no EVENTINJ type",
                ))
            }
        };
        // EVENTINJ has no instruction length: the return address is RIP.
        if e.instruction_len != 0 {
            return Err(StateError::Unsupported(
                "an injected software event with an instruction length (VT-x) cannot be given to EVENTINJ",
            ));
        }
        if let Some(kind) = kind {
            eventinj = event::VALID | kind | u64::from(e.vector);
            if let Some(code) = e.error_code {
                eventinj |= event::ERROR_CODE_VALID | u64::from(code) << event::ERROR_CODE_SHIFT;
            }
        }
    }
    let nmi_masked = ev.nmi_blocked || ev.injected.is_some_and(|e| e.kind == EventKind::Nmi);

    let mut c = vmcb.control;
    c.tsc_offset = s.msrs.tsc_offset;
    c.eventinj = eventinj;
    c.exitintinfo = 0;
    c.interrupt_shadow = (c.interrupt_shadow & !int_state::INTERRUPT_SHADOW)
        | if ev.shadow == InterruptShadow::None {
            0
        } else {
            int_state::INTERRUPT_SHADOW
        };
    let mut ctl = c.int_ctl
        & !(int_ctl::V_TPR_MASK
            | int_ctl::V_IRQ
            | int_ctl::V_IGN_TPR
            | 0xF << int_ctl::V_INTR_PRIO_SHIFT);
    ctl |= u32::from(s.cr8) & int_ctl::V_TPR_MASK;
    c.intercept1 &= !(Intercept1::VINTR.bits() | Intercept1::IRET.bits());
    if let Some(vector) = virtual_interrupt {
        // As `inject_interrupt`: highest priority, TPR ignored, taken not intercepted.
        ctl |= int_ctl::V_IRQ | int_ctl::V_IGN_TPR | 0xF << int_ctl::V_INTR_PRIO_SHIFT;
        c.int_vector = u32::from(vector);
    } else if ev.interrupt_window {
        // As `request_interrupt_window`.
        ctl |= int_ctl::V_IRQ | int_ctl::V_IGN_TPR;
        c.intercept1 |= Intercept1::VINTR.bits();
    }
    c.int_ctl = ctl;
    if nmi_masked {
        // As `inject_nmi`: the IRET intercept sees the handler's end.
        c.intercept1 |= Intercept1::IRET.bits();
    }
    c.vmcb_clean = 0;

    let mut sa = vmcb.save;
    sa.es = segment_to(&s.es);
    sa.cs = segment_to(&s.cs);
    sa.ss = segment_to(&s.ss);
    sa.ds = segment_to(&s.ds);
    sa.fs = segment_to(&s.fs);
    sa.gs = segment_to(&s.gs);
    sa.ldtr = segment_to(&s.ldtr);
    sa.tr = segment_to(&s.tr);
    sa.gdtr.base = s.gdtr.base;
    sa.gdtr.limit = s.gdtr.limit.into();
    sa.idtr.base = s.idtr.base;
    sa.idtr.limit = s.idtr.limit.into();
    sa.cpl = s.cpl();
    sa.efer = s.msrs.efer | efer::SVME;
    sa.cr0 = s.cr0;
    sa.cr2 = s.cr2;
    sa.cr3 = s.cr3;
    sa.cr4 = s.cr4;
    sa.dr6 = s.dr6;
    sa.dr7 = s.dr7;
    sa.rflags = s.rflags;
    sa.rip = s.rip;
    sa.rsp = s.rsp;
    sa.rax = s.regs.rax;
    let m = &s.msrs;
    sa.star = m.star;
    sa.lstar = m.lstar;
    sa.cstar = m.cstar;
    sa.sfmask = m.sfmask;
    sa.kernel_gs_base = m.kernel_gs_base;
    sa.sysenter_cs = m.sysenter_cs;
    sa.sysenter_esp = m.sysenter_esp;
    sa.sysenter_eip = m.sysenter_eip;
    sa.g_pat = m.pat;

    check_areas(&c, &sa, limits.asid_count, limits.phys_width).map_err(StateError::Invalid)?;
    Ok(Plan {
        control: c,
        save: sa,
        soft: Soft {
            regs: s.regs,
            dr: s.dr,
            tsc_aux: m.tsc_aux,
            nmi_masked,
            virq_pending: virtual_interrupt.is_some(),
            fx: s.fx.clone(),
        },
    })
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::vmcb::{cr4, tlb_control};
    use std::boxed::Box;
    use vcpu::cr_policy::cr4 as neutral_cr4;
    use vcpu::{CpuMode, StartState};

    const LIMITS: Limits = Limits {
        asid_count: 16,
        phys_width: 48,
        cr4_supported: cr4::DEFINED & !neutral_cr4::PKE,
        efer_supported: efer::SCE | efer::LME | efer::LMA | efer::NXE,
        mxcsr_mask: 0xFFFF,
    };

    /// A VMCB as `create_vcpu` leaves it for `mode`.
    fn vmcb(mode: CpuMode) -> Box<Vmcb> {
        let mut v = Box::new(Vmcb::zeroed());
        v.init_control(3, 0x10_0000, 0x20_0000, 0x30_0000, tlb_control::FLUSH_ALL);
        v.control.intercept1 |= Intercept1::INIT.bits();
        v.control.intercept_cr_write |= (1 << 0) | (1 << 4);
        v.set_start_state(&StartState {
            mode,
            rip: 0x7C00,
            rsp: 0x8000,
            cr3: 0x10_0000,
            regs: GuestRegisters {
                rax: 0xAA,
                ..GuestRegisters::default()
            },
            gdtr: None,
        });
        v
    }

    fn soft() -> Soft {
        Soft {
            regs: GuestRegisters {
                rax: 0xAA,
                rbx: 0xBB,
                ..GuestRegisters::default()
            },
            dr: [1, 2, 3, 4],
            tsc_aux: 5,
            nmi_masked: false,
            virq_pending: false,
            fx: FxArea::initial(),
        }
    }

    fn load(v: &mut Vmcb, s: &CpuState) -> Result<Soft, StateError> {
        let p = plan(v, s, &LIMITS)?;
        v.control = p.control;
        v.save = p.save;
        Ok(p.soft)
    }

    #[test]
    fn attribute_mapping() {
        assert_eq!(attrib_from_vmcb(0xA9B), 0xA9B);
        // Not present: unusable, with the DPL kept (an SS at CPL 3).
        assert_eq!(attrib_from_vmcb(0x60), 0x60 | attrib::UNUSABLE);
        assert_eq!(attrib_to_vmcb(0x60 | attrib::UNUSABLE), 0x60);
        // An unusable segment loads without P whatever else it claims (from VT-x).
        assert_eq!(attrib_to_vmcb(0xC93 | attrib::UNUSABLE), 0xC13);
        for a in 0..=0xFFFu16 {
            assert_eq!(attrib_to_vmcb(attrib_from_vmcb(a)), a);
        }
    }

    #[test]
    fn start_states_round_trip() {
        for mode in [CpuMode::Real, CpuMode::Protected, CpuMode::Long] {
            let v = vmcb(mode);
            let s = save(&v, &soft());
            assert_eq!(s.check(), Ok(()), "{mode:?}");
            assert_eq!(s.msrs.efer & efer::SVME, 0, "SVME is the hypervisor's");
            assert_eq!(s.regs.rbx, 0xBB);
            let mut w = vmcb(mode);
            let back = load(&mut w, &s).unwrap();
            assert_eq!(back, soft());
            assert_eq!(*w, *v, "{mode:?}");
        }
    }

    #[test]
    fn a_long_mode_state_into_a_real_mode_vcpu() {
        let mut from = vmcb(CpuMode::Long);
        {
            let sa = &mut from.save;
            sa.rip = 0xFFFF_FFFF_8100_0123;
            sa.rflags = 0x246;
            sa.cs.attrib = 0xAFB; // CPL 3 code
            sa.ss.attrib = 0xCF3;
            sa.cpl = 3;
            sa.ds.attrib = 0; // a null selector in 64-bit mode
            sa.cr2 = 0x7000_1000;
            sa.efer |= efer::NXE | efer::SCE;
            sa.lstar = 0xFFFF_FFFF_8120_0000;
            sa.g_pat = 0x0407_0106_0007_0406;
            sa.dr7 = 0x401;
        }
        from.control.tsc_offset = 0xFFFF_FFF0_0000_0000;
        from.control.int_ctl |= 5; // V_TPR
        from.control.interrupt_shadow = int_state::INTERRUPT_SHADOW;
        from.inject_exception(vcpu::Exception {
            vector: 14,
            error_code: Some(7),
        });
        let s = save(&from, &soft());
        assert_eq!(s.check(), Ok(()));
        assert_eq!(s.cpl(), 3);
        assert_eq!(s.cr8, 5);
        assert!(!s.ds.usable());
        assert_eq!(s.events.shadow, InterruptShadow::Sti);
        assert_eq!(
            s.events.injected,
            Some(Event {
                kind: EventKind::HardwareException,
                vector: 14,
                error_code: Some(7),
                instruction_len: 0
            })
        );
        let mut to = vmcb(CpuMode::Real);
        load(&mut to, &s).unwrap();
        assert_eq!(to.save, from.save);
        assert_eq!(to.control.eventinj, from.control.eventinj);
        assert_eq!(to.control.int_ctl, from.control.int_ctl);
        assert_eq!(to.control.tsc_offset, from.control.tsc_offset);
        assert_eq!(save(&to, &soft()), s);
        // The vCPU's own intercepts, maps, ASID and nested paging stay.
        assert_eq!(to.control.guest_asid, 3);
        assert_eq!(to.control.n_cr3, 0x30_0000);
    }

    #[test]
    fn the_cpl_field_wins_over_ss_dpl() {
        let mut v = vmcb(CpuMode::Long);
        v.save.cs.attrib = 0xAFB;
        v.save.cpl = 3;
        v.save.ss.attrib = 0xC93; // DPL 0 left behind
        let s = save(&v, &soft());
        assert_eq!(s.ss.dpl(), 3);
        assert_eq!(s.cpl(), 3);
        let mut w = vmcb(CpuMode::Long);
        load(&mut w, &s).unwrap();
        assert_eq!(w.save.cpl, 3);
        assert_eq!(w.save.ss.attrib, 0xCF3);
    }

    #[test]
    fn interrupts_nmis_and_windows() {
        // An interrupt waiting in V_IRQ.
        let mut v = vmcb(CpuMode::Long);
        v.control.int_vector = 0x31;
        v.control.int_ctl |=
            int_ctl::V_IRQ | int_ctl::V_IGN_TPR | 0xF << int_ctl::V_INTR_PRIO_SHIFT;
        let sw = Soft {
            virq_pending: true,
            ..soft()
        };
        let s = save(&v, &sw);
        assert_eq!(s.events.virtual_interrupt, Some(0x31));
        assert!(!s.events.interrupt_window);
        let mut w = vmcb(CpuMode::Long);
        assert!(load(&mut w, &s).unwrap().virq_pending);
        assert_eq!(w.control, v.control);

        // An injected external interrupt (from VT-x) goes to V_IRQ too.
        let mut t = s.clone();
        t.events.virtual_interrupt = None;
        t.events.injected = Some(Event {
            kind: EventKind::ExternalInterrupt,
            vector: 0x31,
            error_code: None,
            instruction_len: 0,
        });
        let mut w = vmcb(CpuMode::Long);
        assert!(load(&mut w, &t).unwrap().virq_pending);
        assert_eq!(w.control.eventinj, 0);
        assert_eq!(w.control, v.control);

        // An interrupt window.
        let mut t = s.clone();
        t.events.virtual_interrupt = None;
        t.events.interrupt_window = true;
        let mut w = vmcb(CpuMode::Long);
        assert!(!load(&mut w, &t).unwrap().virq_pending);
        assert_ne!(w.control.intercept1 & Intercept1::VINTR.bits(), 0);
        assert_ne!(w.control.int_ctl & int_ctl::V_IRQ, 0);
        assert_eq!(save(&w, &soft()), t);

        // A queued NMI: blocked from its delivery on, IRET intercepted.
        let mut v = vmcb(CpuMode::Long);
        v.control.eventinj = event::VALID | event::TYPE_NMI | 2;
        v.control.intercept1 |= Intercept1::IRET.bits();
        let queued = Soft {
            nmi_masked: true,
            ..soft()
        };
        let s = save(&v, &queued);
        assert!(!s.events.nmi_blocked);
        let mut w = vmcb(CpuMode::Long);
        assert!(load(&mut w, &s).unwrap().nmi_masked);
        assert_eq!(w.control, v.control);
        // An NMI handler running: blocked, IRET intercepted, nothing queued.
        v.control.eventinj = 0;
        let s = save(&v, &queued);
        assert!(s.events.nmi_blocked);
        let mut w = vmcb(CpuMode::Long);
        assert!(load(&mut w, &s).unwrap().nmi_masked);
        assert_eq!(w.control, v.control);
        // And neither.
        let s = save(&vmcb(CpuMode::Long), &soft());
        load(&mut w, &s).unwrap();
        assert_eq!(w.control.intercept1 & Intercept1::IRET.bits(), 0);
    }

    fn refused(s: &CpuState, limits: &Limits, needle: &str) {
        let v = vmcb(CpuMode::Long);
        let before = *v;
        match plan(&v, s, limits) {
            Err(e) => {
                let text = std::format!("{e}");
                assert!(text.contains(needle), "{text:?} lacks {needle:?}");
            }
            Ok(_) => panic!("accepted; expected a refusal containing {needle:?}"),
        }
        assert_eq!(*v, before);
    }

    #[test]
    fn refusals() {
        let good = save(&vmcb(CpuMode::Long), &soft());
        let mut s = good.clone();
        s.cr0 |= 1 << 29; // NW without CD
        refused(&s, &LIMITS, "CR0.NW");
        let mut s = good.clone();
        s.cr4 |= neutral_cr4::PKE;
        refused(&s, &LIMITS, "feature this processor lacks");
        let mut s = good.clone();
        s.msrs.efer &= !efer::NXE;
        let no_nx = Limits {
            efer_supported: efer::SCE | efer::LME | efer::LMA,
            ..LIMITS
        };
        assert!(plan(&vmcb(CpuMode::Long), &s, &no_nx).is_ok());
        s.msrs.efer |= efer::NXE;
        refused(&s, &no_nx, "EFER has a bit");
        let mut s = good.clone();
        s.cr3 = 1 << 50;
        refused(&s, &LIMITS, "CR3");
        let mut s = good.clone();
        s.events.pending_debug = 1 << 14;
        refused(&s, &LIMITS, "pending debug");
        let mut s = good.clone();
        s.events.injected = Some(Event {
            kind: EventKind::SoftwareException,
            vector: 3,
            error_code: None,
            instruction_len: 1,
        });
        refused(&s, &LIMITS, "no EVENTINJ type");
        let mut s = good.clone();
        s.events.injected = Some(Event {
            kind: EventKind::SoftwareInterrupt,
            vector: 0x80,
            error_code: None,
            instruction_len: 2,
        });
        refused(&s, &LIMITS, "instruction length");
        s.events.injected.as_mut().unwrap().instruction_len = 0;
        assert!(plan(&vmcb(CpuMode::Long), &s, &LIMITS).is_ok());
        // EVENTINJ's own rule (QEMU refuses vector 31 as an exception).
        let mut s = good.clone();
        s.events.injected = Some(Event {
            kind: EventKind::HardwareException,
            vector: 31,
            error_code: None,
            instruction_len: 0,
        });
        refused(&s, &LIMITS, "EVENTINJ");
        let mut s = good.clone();
        s.fx.0[24] |= 1 << 6;
        refused(
            &s,
            &Limits {
                mxcsr_mask: 0xFFBF,
                ..LIMITS
            },
            "MXCSR",
        );
        // The neutral rules come first.
        let mut s = good.clone();
        s.msrs.efer |= efer::SVME;
        refused(&s, &LIMITS, "EFER has bits set other than");
    }
}
