//! A software copy of the VM-entry checks on the guest-state area (SDM Vol. 3C 27.3.1,
//! "Checks on the Guest State Area"; 26.3.1 in older editions) that can be done from
//! the [`GuestState`] alone, so that a failed VM entry names the field at fault instead
//! of only "invalid guest state" (exit reason 33).
//!
//! The backend runs [`check_guest_state`] when it creates a vCPU and again before the
//! first VMLAUNCH (the core may have changed RIP or registers since), and after an
//! entry failure with reason 33 to explain it. The checks assume "unrestricted guest"
//! (always on in this backend), "load IA32_EFER", "load IA32_PAT" and "load debug
//! controls" handled as the backend sets them.
//!
//! [`check_event_injection`] adds the checks on an event queued in the VM-entry
//! interruption-information field (SDM Vol. 3C 27.2.1.3) and how it must fit the
//! guest's interruptibility (27.3.1.5), for a state loaded from outside
//! (`Vcpu::load_state`), where nothing guarantees that fit.

use crate::guest_state::{CrFixed, GuestState, Seg, SegmentState};
use crate::ops::has_error_code;
use crate::vmcs::{ar, cr0, cr4, efer, interruptibility, intr_info, rflags};

/// Whether `value` is canonical for 48-bit linear addresses.
pub const fn is_canonical(value: u64) -> bool {
    let top = (value as i64) >> 47;
    top == 0 || top == -1
}

/// The granularity rule shared by every usable segment (SDM 27.3.1.2): if any of limit
/// bits 11:0 is 0, G must be 0; if any of bits 31:20 is 1, G must be 1.
const fn granularity_ok(seg: &SegmentState) -> bool {
    let g = seg.access_rights & ar::G != 0;
    if seg.limit & 0xFFF != 0xFFF && g {
        return false;
    }
    if seg.limit & 0xFFF0_0000 != 0 && !g {
        return false;
    }
    true
}

const fn reserved_ok(seg: &SegmentState) -> bool {
    seg.access_rights & (ar::RESERVED_11_8 | ar::RESERVED_31_17) == 0
}

/// Checks `g` and returns the first violated rule, naming the field.
///
/// `phys_bits` is the processor's physical-address width (CPUID 8000_0008 EAX[7:0]);
/// CR3 must not have bits set at or above it.
pub fn check_guest_state(
    g: &GuestState,
    fixed: &CrFixed,
    phys_bits: u8,
) -> Result<(), &'static str> {
    check_control_registers(g, fixed, phys_bits)?;
    check_msrs(g)?;
    check_segments(g)?;
    check_tables_and_rip(g)?;
    check_non_register_state(g)
}

/// 27.3.1.1: control registers, debug registers and the MSRs VM entry loads.
fn check_control_registers(
    g: &GuestState,
    fixed: &CrFixed,
    phys_bits: u8,
) -> Result<(), &'static str> {
    let cr0_missing = fixed.cr0_must_be_one() & !g.cr0;
    if cr0_missing & cr0::NE != 0 {
        return Err("guest CR0.NE is clear but IA32_VMX_CR0_FIXED0 requires it in VMX operation");
    }
    if cr0_missing != 0 {
        return Err("guest CR0 lacks a bit that IA32_VMX_CR0_FIXED0 requires in VMX operation");
    }
    if g.cr0 & !(fixed.cr0_fixed1 | cr0::PE | cr0::PG) != 0 {
        return Err("guest CR0 has a bit set that IA32_VMX_CR0_FIXED1 does not allow");
    }
    if g.cr0 & cr0::PG != 0 && g.cr0 & cr0::PE == 0 {
        return Err("guest CR0.PG is set but CR0.PE is clear");
    }
    if g.cr0 & cr0::NW != 0 && g.cr0 & cr0::CD == 0 {
        return Err("guest CR0.NW is set while CR0.CD is clear");
    }
    if fixed.cr4_fixed0 & !g.cr4 & cr4::VMXE != 0 {
        return Err("guest CR4.VMXE is clear but IA32_VMX_CR4_FIXED0 requires it in VMX operation");
    }
    if fixed.cr4_fixed0 & !g.cr4 != 0 {
        return Err("guest CR4 lacks a bit that IA32_VMX_CR4_FIXED0 requires in VMX operation");
    }
    if g.cr4 & !fixed.cr4_fixed1 != 0 {
        return Err("guest CR4 has a bit set that IA32_VMX_CR4_FIXED1 does not allow");
    }
    if g.ia32e && (g.cr0 & cr0::PG == 0 || g.cr4 & cr4::PAE == 0) {
        return Err("IA-32e mode guest needs guest CR0.PG and CR4.PAE set");
    }
    if !g.ia32e && g.cr4 & cr4::PCIDE != 0 {
        return Err("guest CR4.PCIDE is set outside IA-32e mode");
    }
    if g.cr4 & cr4::CET != 0 && g.cr0 & cr0::WP == 0 {
        return Err("guest CR4.CET is set while CR0.WP is clear");
    }
    let width = phys_bits.clamp(32, 52);
    if g.cr3 >> width != 0 {
        return Err("guest CR3 has bits set beyond the physical-address width");
    }
    if g.dr7 >> 32 != 0 {
        return Err("guest DR7 bits 63:32 are not zero (load debug controls)");
    }
    Ok(())
}

/// The MSRs loaded from the guest-state area on entry (27.3.1.1).
fn check_msrs(g: &GuestState) -> Result<(), &'static str> {
    if g.efer & !efer::DEFINED != 0 {
        return Err("guest IA32_EFER has reserved bits set");
    }
    if (g.efer & efer::LMA != 0) != g.ia32e {
        return Err("guest IA32_EFER.LMA differs from the 'IA-32e mode guest' VM-entry control");
    }
    if g.cr0 & cr0::PG != 0 && (g.efer & efer::LME != 0) != (g.efer & efer::LMA != 0) {
        return Err("guest CR0.PG is set and IA32_EFER.LME differs from IA32_EFER.LMA");
    }
    if !(0..8).all(|i| matches!((g.pat >> (i * 8)) & 0xFF, 0 | 1 | 4..=7)) {
        return Err(
            "guest IA32_PAT holds an invalid memory type (only 0, 1, 4, 5, 6, 7 are valid)",
        );
    }
    if !is_canonical(g.sysenter_esp) {
        return Err("guest IA32_SYSENTER_ESP is not canonical");
    }
    if !is_canonical(g.sysenter_eip) {
        return Err("guest IA32_SYSENTER_EIP is not canonical");
    }
    Ok(())
}

/// 27.3.1.2: segment registers, for a guest that is not in virtual-8086 mode, with
/// "unrestricted guest".
fn check_segments(g: &GuestState) -> Result<(), &'static str> {
    let tr = g.seg(Seg::Tr);
    let cs = g.seg(Seg::Cs);
    let ss = g.seg(Seg::Ss);
    let ldtr = g.seg(Seg::Ldtr);

    // TR: always usable and a busy TSS, even for a real-mode guest.
    if tr.selector & 4 != 0 {
        return Err("guest TR selector has TI set (it must point into the GDT)");
    }
    if !tr.usable() {
        return Err("guest TR is unusable; VM entry needs a busy TSS in TR even in real mode");
    }
    match (g.ia32e, tr.seg_type()) {
        (true, ar::TYPE_TSS_BUSY) | (false, ar::TYPE_TSS_BUSY | ar::TYPE_TSS16_BUSY) => {}
        (true, _) => return Err("guest TR type must be 11 (busy 64-bit TSS) in IA-32e mode"),
        (false, _) => return Err("guest TR type must be 3 or 11 (a busy TSS)"),
    }
    if tr.access_rights & ar::S != 0 {
        return Err("guest TR access rights have S set (a TSS is a system descriptor)");
    }
    if tr.access_rights & ar::P == 0 {
        return Err("guest TR is not present");
    }
    if !reserved_ok(tr) {
        return Err("guest TR access rights have reserved bits set");
    }
    if !granularity_ok(tr) {
        return Err("guest TR limit and G bit disagree");
    }
    if !is_canonical(tr.base) {
        return Err("guest TR base is not canonical");
    }

    if ldtr.usable() {
        if ldtr.selector & 4 != 0 {
            return Err("guest LDTR selector has TI set");
        }
        if ldtr.seg_type() != ar::TYPE_LDT
            || ldtr.access_rights & ar::S != 0
            || ldtr.access_rights & ar::P == 0
        {
            return Err("guest LDTR is usable but not a present LDT descriptor (type 2, S=0, P=1)");
        }
        if !reserved_ok(ldtr) {
            return Err("guest LDTR access rights have reserved bits set");
        }
        if !granularity_ok(ldtr) {
            return Err("guest LDTR limit and G bit disagree");
        }
        if !is_canonical(ldtr.base) {
            return Err("guest LDTR base is not canonical");
        }
    }

    if g.rflags & rflags::VM != 0 && !g.ia32e && g.cr0 & cr0::PE != 0 {
        return check_virtual_8086_segments(g);
    }

    // CS: always usable.
    if !cs.usable() {
        return Err("guest CS is unusable");
    }
    if !matches!(cs.seg_type(), 3 | 9 | 11 | 13 | 15) {
        return Err("guest CS type must be 9, 11, 13 or 15 (code), or 3 with unrestricted guest");
    }
    if cs.access_rights & ar::S == 0 {
        return Err("guest CS access rights have S clear (CS must be a code/data segment)");
    }
    if cs.access_rights & ar::P == 0 {
        return Err("guest CS is not present");
    }
    if !reserved_ok(cs) {
        return Err("guest CS access rights have reserved bits set");
    }
    if !granularity_ok(cs) {
        return Err("guest CS limit and G bit disagree");
    }
    match cs.seg_type() {
        3 if cs.dpl() != 0 => {
            return Err("guest CS is a data segment (type 3) with DPL other than 0");
        }
        9 | 11 if ss.usable() && cs.dpl() != ss.dpl() => {
            return Err("guest CS is non-conforming code and its DPL differs from SS's DPL");
        }
        13 | 15 if ss.usable() && cs.dpl() > ss.dpl() => {
            return Err("guest CS is conforming code with a DPL above SS's DPL");
        }
        _ => {}
    }
    if g.ia32e && cs.access_rights & ar::L != 0 && cs.access_rights & ar::DB != 0 {
        return Err("guest CS has both L and D/B set in IA-32e mode");
    }
    if cs.base >> 32 != 0 {
        return Err("guest CS base bits 63:32 are not zero");
    }

    // SS.
    if ss.usable() {
        if !matches!(ss.seg_type(), 3 | 7) {
            return Err("guest SS type must be 3 or 7 (writable data)");
        }
        if ss.access_rights & ar::S == 0 || ss.access_rights & ar::P == 0 {
            return Err("guest SS must be a present code/data segment (S=1, P=1)");
        }
        if !reserved_ok(ss) {
            return Err("guest SS access rights have reserved bits set");
        }
        if !granularity_ok(ss) {
            return Err("guest SS limit and G bit disagree");
        }
        if ss.base >> 32 != 0 {
            return Err("guest SS base bits 63:32 are not zero");
        }
    }
    if g.cr0 & cr0::PE == 0 && ss.dpl() != 0 {
        return Err("guest SS DPL must be 0 while CR0.PE is clear");
    }
    if cs.seg_type() == 3 && ss.dpl() != 0 {
        return Err("guest SS DPL must be 0 when CS is a data segment (type 3)");
    }

    // DS, ES, FS, GS.
    for (s, type_msg, sp_msg, res_msg, g_msg) in [
        (
            Seg::Ds,
            "guest DS type invalid: it must be accessed, and readable if code",
            "guest DS must be a present code/data segment (S=1, P=1)",
            "guest DS access rights have reserved bits set",
            "guest DS limit and G bit disagree",
        ),
        (
            Seg::Es,
            "guest ES type invalid: it must be accessed, and readable if code",
            "guest ES must be a present code/data segment (S=1, P=1)",
            "guest ES access rights have reserved bits set",
            "guest ES limit and G bit disagree",
        ),
        (
            Seg::Fs,
            "guest FS type invalid: it must be accessed, and readable if code",
            "guest FS must be a present code/data segment (S=1, P=1)",
            "guest FS access rights have reserved bits set",
            "guest FS limit and G bit disagree",
        ),
        (
            Seg::Gs,
            "guest GS type invalid: it must be accessed, and readable if code",
            "guest GS must be a present code/data segment (S=1, P=1)",
            "guest GS access rights have reserved bits set",
            "guest GS limit and G bit disagree",
        ),
    ] {
        let seg = g.seg(s);
        if !seg.usable() {
            continue;
        }
        let t = seg.seg_type();
        if t & ar::TYPE_ACCESSED == 0 || (t & ar::TYPE_CODE != 0 && t & ar::TYPE_RW == 0) {
            return Err(type_msg);
        }
        if seg.access_rights & ar::S == 0 || seg.access_rights & ar::P == 0 {
            return Err(sp_msg);
        }
        if !reserved_ok(seg) {
            return Err(res_msg);
        }
        if !granularity_ok(seg) {
            return Err(g_msg);
        }
    }
    for (s, msg) in [
        (Seg::Ds, "guest DS base bits 63:32 are not zero"),
        (Seg::Es, "guest ES base bits 63:32 are not zero"),
    ] {
        let seg = g.seg(s);
        if seg.usable() && seg.base >> 32 != 0 {
            return Err(msg);
        }
    }
    if !is_canonical(g.seg(Seg::Fs).base) {
        return Err("guest FS base is not canonical");
    }
    if !is_canonical(g.seg(Seg::Gs).base) {
        return Err("guest GS base is not canonical");
    }
    Ok(())
}

/// 27.3.1.2 in virtual-8086 mode: CS, SS, DS, ES, FS and GS are what a real-mode
/// style load gives (base = selector * 16, limit FFFFH, access rights F3H); they
/// replace every other check on those registers.
fn check_virtual_8086_segments(g: &GuestState) -> Result<(), &'static str> {
    for (s, base_msg, limit_msg, ar_msg) in [
        (
            Seg::Cs,
            "guest CS base is not selector * 16 in virtual-8086 mode",
            "guest CS limit is not FFFFH in virtual-8086 mode",
            "guest CS access rights are not F3H in virtual-8086 mode",
        ),
        (
            Seg::Ss,
            "guest SS base is not selector * 16 in virtual-8086 mode",
            "guest SS limit is not FFFFH in virtual-8086 mode",
            "guest SS access rights are not F3H in virtual-8086 mode",
        ),
        (
            Seg::Ds,
            "guest DS base is not selector * 16 in virtual-8086 mode",
            "guest DS limit is not FFFFH in virtual-8086 mode",
            "guest DS access rights are not F3H in virtual-8086 mode",
        ),
        (
            Seg::Es,
            "guest ES base is not selector * 16 in virtual-8086 mode",
            "guest ES limit is not FFFFH in virtual-8086 mode",
            "guest ES access rights are not F3H in virtual-8086 mode",
        ),
        (
            Seg::Fs,
            "guest FS base is not selector * 16 in virtual-8086 mode",
            "guest FS limit is not FFFFH in virtual-8086 mode",
            "guest FS access rights are not F3H in virtual-8086 mode",
        ),
        (
            Seg::Gs,
            "guest GS base is not selector * 16 in virtual-8086 mode",
            "guest GS limit is not FFFFH in virtual-8086 mode",
            "guest GS access rights are not F3H in virtual-8086 mode",
        ),
    ] {
        let seg = g.seg(s);
        if seg.base != (seg.selector as u64) << 4 {
            return Err(base_msg);
        }
        if seg.limit != 0xFFFF {
            return Err(limit_msg);
        }
        if seg.access_rights != 0xF3 {
            return Err(ar_msg);
        }
    }
    Ok(())
}

/// 27.3.1.3 descriptor-table registers, 27.3.1.4 RIP and RFLAGS.
fn check_tables_and_rip(g: &GuestState) -> Result<(), &'static str> {
    if !is_canonical(g.gdtr.base) {
        return Err("guest GDTR base is not canonical");
    }
    if !is_canonical(g.idtr.base) {
        return Err("guest IDTR base is not canonical");
    }
    if g.gdtr.limit >> 16 != 0 {
        return Err("guest GDTR limit bits 31:16 are not zero");
    }
    if g.idtr.limit >> 16 != 0 {
        return Err("guest IDTR limit bits 31:16 are not zero");
    }
    let long_cs = g.ia32e && g.seg(Seg::Cs).access_rights & ar::L != 0;
    if !long_cs && g.rip >> 32 != 0 {
        return Err("guest RIP bits 63:32 are not zero outside 64-bit mode");
    }
    if long_cs && !is_canonical(g.rip) {
        return Err("guest RIP is not canonical in 64-bit mode");
    }
    if g.rflags & rflags::RESERVED_ZERO != 0 {
        return Err("guest RFLAGS has reserved bits set (63:22, 15, 5 or 3)");
    }
    if g.rflags & rflags::FIXED_1 == 0 {
        return Err("guest RFLAGS bit 1 is clear (it is reserved as 1)");
    }
    if (g.ia32e || g.cr0 & cr0::PE == 0) && g.rflags & rflags::VM != 0 {
        return Err("guest RFLAGS.VM is set in IA-32e mode or real mode");
    }
    Ok(())
}

/// 27.3.1.5: activity and interruptibility state, pending debug exceptions, the VMCS
/// link pointer.
fn check_non_register_state(g: &GuestState) -> Result<(), &'static str> {
    if g.activity > 3 {
        return Err("guest activity state is not 0-3");
    }
    if g.activity == 1 && g.seg(Seg::Ss).dpl() != 0 {
        return Err("guest activity state is HLT but SS.DPL is not 0");
    }
    if g.interruptibility >> 5 != 0 {
        return Err("guest interruptibility state has reserved bits 31:5 set");
    }
    let sti = g.interruptibility & interruptibility::BLOCKING_BY_STI != 0;
    let mov_ss = g.interruptibility & interruptibility::BLOCKING_BY_MOV_SS != 0;
    if sti && mov_ss {
        return Err("guest interruptibility state has both blocking by STI and by MOV SS");
    }
    if sti && g.rflags & rflags::IF == 0 {
        return Err("guest interruptibility state has blocking by STI while RFLAGS.IF is clear");
    }
    if g.pending_debug & !0x0001_500F != 0 {
        return Err("guest pending debug exceptions has reserved bits set");
    }
    // A single-step trap pending across the shadow: BS must say exactly whether the
    // guest single-steps (RFLAGS.TF without DEBUGCTL.BTF).
    if sti || mov_ss || g.activity == 1 {
        const BS: u64 = 1 << 14;
        const DEBUGCTL_BTF: u64 = 1 << 1;
        let stepping = g.rflags & rflags::TF != 0 && g.debugctl & DEBUGCTL_BTF == 0;
        if stepping && g.pending_debug & BS == 0 {
            return Err("guest pending debug exceptions lack BS while the guest single-steps in an interrupt shadow or HLT");
        }
        if !stepping && g.pending_debug & BS != 0 {
            return Err("guest pending debug exceptions have BS set in an interrupt shadow or HLT without single-stepping");
        }
    }
    if g.link_pointer != !0 {
        return Err("VMCS link pointer is not FFFFFFFF_FFFFFFFF (no shadow VMCS is used)");
    }
    Ok(())
}

/// Checks an event queued for VM entry: `info` is the VM-entry interruption-information
/// field, `error_code` and `instruction_len` the fields that go with it, `g` the guest
/// state it enters with, `virtual_nmis` the pin-based control (SDM Vol. 3C 27.2.1.3,
/// "Event Injection", for a processor with unrestricted guest, and the event rules of
/// 27.3.1.5). Types 1 (reserved) and 7 (other event, used only with the monitor trap
/// flag, which this backend does not use) are refused.
pub fn check_event_injection(
    g: &GuestState,
    info: u32,
    error_code: u32,
    instruction_len: u32,
    virtual_nmis: bool,
) -> Result<(), &'static str> {
    if info & intr_info::VALID == 0 {
        return Ok(());
    }
    if info & 0x7FFF_F000 != 0 {
        return Err("VM-entry interruption information has reserved bits 30:12 set");
    }
    let vector = (info & intr_info::VECTOR_MASK) as u8;
    let kind = info & intr_info::TYPE_MASK;
    match kind {
        intr_info::TYPE_EXTERNAL_INTERRUPT
        | intr_info::TYPE_SOFTWARE_INTERRUPT
        | intr_info::TYPE_PRIVILEGED_SOFTWARE_EXCEPTION
        | intr_info::TYPE_SOFTWARE_EXCEPTION => {}
        intr_info::TYPE_NMI if vector != 2 => {
            return Err("an injected NMI must have vector 2");
        }
        intr_info::TYPE_NMI => {}
        intr_info::TYPE_HARDWARE_EXCEPTION if vector > 31 => {
            return Err("an injected hardware exception must have a vector of 31 or less");
        }
        intr_info::TYPE_HARDWARE_EXCEPTION => {}
        _ => return Err("the injected event's type is reserved (1) or 'other event' (7)"),
    }
    let wants_code = kind == intr_info::TYPE_HARDWARE_EXCEPTION
        && g.cr0 & cr0::PE != 0
        && has_error_code(vector);
    let delivers_code = info & intr_info::DELIVER_ERROR_CODE != 0;
    if wants_code != delivers_code {
        return Err("an injected event must deliver an error code exactly when it is a protected-mode exception that pushes one");
    }
    if delivers_code && error_code >> 16 != 0 {
        return Err("the injected exception's error code has bits 31:16 set");
    }
    let software = matches!(
        kind,
        intr_info::TYPE_SOFTWARE_INTERRUPT
            | intr_info::TYPE_PRIVILEGED_SOFTWARE_EXCEPTION
            | intr_info::TYPE_SOFTWARE_EXCEPTION
    );
    if software && !(1..=15).contains(&instruction_len) {
        return Err(
            "an injected software interrupt or exception needs an instruction length of 1 to 15",
        );
    }
    let sti = g.interruptibility & interruptibility::BLOCKING_BY_STI != 0;
    let mov_ss = g.interruptibility & interruptibility::BLOCKING_BY_MOV_SS != 0;
    if kind == intr_info::TYPE_EXTERNAL_INTERRUPT {
        if g.rflags & rflags::IF == 0 {
            return Err("an external interrupt is injected while guest RFLAGS.IF is clear");
        }
        if sti || mov_ss {
            return Err("an external interrupt is injected in an STI or MOV SS interrupt shadow");
        }
    }
    if kind == intr_info::TYPE_NMI {
        // MOV SS blocking always fails the entry; STI blocking may, depending on the
        // processor (SDM 27.3.1.5), so it is refused too.
        if sti || mov_ss {
            return Err("an NMI is injected in an STI or MOV SS interrupt shadow");
        }
        if virtual_nmis && g.interruptibility & interruptibility::BLOCKING_BY_NMI != 0 {
            return Err("an NMI is injected while (virtual-)NMI blocking is in effect");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest_state::tests::{start, FIXED};
    use vcpu::CpuMode;

    const PHYS: u8 = 40;

    fn state(mode: CpuMode) -> GuestState {
        GuestState::for_start(&start(mode, 0x7C00), &FIXED)
    }

    fn check(g: &GuestState) -> Result<(), &'static str> {
        check_guest_state(g, &FIXED, PHYS)
    }

    #[test]
    fn start_states_pass() {
        for mode in [CpuMode::Real, CpuMode::Protected, CpuMode::Long] {
            assert_eq!(check(&state(mode)), Ok(()), "{mode:?}");
        }
    }

    #[test]
    fn cr_fixed_bits() {
        let mut g = state(CpuMode::Real);
        g.cr0 &= !cr0::NE;
        assert!(check(&g).unwrap_err().contains("CR0.NE"));
        let mut g = state(CpuMode::Real);
        g.cr4 &= !cr4::VMXE;
        assert!(check(&g).unwrap_err().contains("CR4.VMXE"));
        let mut g = state(CpuMode::Real);
        g.cr4 |= 1 << 30;
        assert!(check(&g).unwrap_err().contains("IA32_VMX_CR4_FIXED1"));
        let mut g = state(CpuMode::Real);
        g.cr0 |= cr0::PG;
        assert!(check(&g).unwrap_err().contains("CR0.PG is set but CR0.PE"));
        let mut g = state(CpuMode::Protected);
        g.cr3 = 1 << 45;
        assert!(check(&g).unwrap_err().contains("CR3"));
    }

    #[test]
    fn efer_and_ia32e_consistency() {
        let mut g = state(CpuMode::Long);
        g.efer &= !efer::LMA;
        assert!(check(&g).unwrap_err().contains("LMA differs"));
        let mut g = state(CpuMode::Long);
        g.ia32e = false;
        g.efer &= !efer::LMA;
        assert!(check(&g)
            .unwrap_err()
            .contains("LME differs from IA32_EFER.LMA"));
        let mut g = state(CpuMode::Long);
        g.cr4 &= !cr4::PAE;
        assert!(check(&g).unwrap_err().contains("CR4.PAE"));
        let mut g = state(CpuMode::Protected);
        g.efer |= 1 << 12;
        assert!(check(&g).unwrap_err().contains("reserved"));
        let mut g = state(CpuMode::Protected);
        g.pat = 0x02;
        assert!(check(&g).unwrap_err().contains("IA32_PAT"));
    }

    #[test]
    fn segment_access_rights() {
        // TR must be a busy TSS even in real mode.
        let mut g = state(CpuMode::Real);
        g.segments[Seg::Tr as usize].access_rights = ar::UNUSABLE;
        assert!(check(&g).unwrap_err().contains("busy TSS in TR"));
        let mut g = state(CpuMode::Real);
        g.segments[Seg::Tr as usize].access_rights = 0x89; // available, not busy
        assert_eq!(check(&g), Err("guest TR type must be 3 or 11 (a busy TSS)"));
        let mut g = state(CpuMode::Long);
        g.segments[Seg::Tr as usize].access_rights = 0x83; // 16-bit busy TSS
        assert!(check(&g).unwrap_err().contains("IA-32e"));
        // G inconsistent with the limit.
        let mut g = state(CpuMode::Protected);
        g.segments[Seg::Cs as usize].access_rights &= !ar::G;
        assert_eq!(check(&g), Err("guest CS limit and G bit disagree"));
        let mut g = state(CpuMode::Protected);
        g.segments[Seg::Tr as usize].access_rights |= ar::G;
        assert_eq!(check(&g), Err("guest TR limit and G bit disagree"));
        // L and D both set.
        let mut g = state(CpuMode::Long);
        g.segments[Seg::Cs as usize].access_rights |= ar::DB;
        assert!(check(&g).unwrap_err().contains("both L and D/B"));
        // An unaccessed data segment.
        let mut g = state(CpuMode::Protected);
        g.segments[Seg::Ds as usize].access_rights &= !ar::TYPE_ACCESSED;
        assert!(check(&g).unwrap_err().starts_with("guest DS type invalid"));
        // An unusable data segment is fine.
        let mut g = state(CpuMode::Protected);
        g.segments[Seg::Gs as usize].access_rights = ar::UNUSABLE;
        assert_eq!(check(&g), Ok(()));
        // Reserved access-rights bits.
        let mut g = state(CpuMode::Real);
        g.segments[Seg::Es as usize].access_rights |= 1 << 9;
        assert!(check(&g)
            .unwrap_err()
            .contains("ES access rights have reserved"));
        // SS DPL in real mode.
        let mut g = state(CpuMode::Real);
        g.segments[Seg::Ss as usize].access_rights |= 3 << ar::DPL_SHIFT;
        assert!(check(&g).unwrap_err().contains("SS"));
        // Non-conforming CS DPL must equal SS DPL.
        let mut g = state(CpuMode::Protected);
        g.segments[Seg::Cs as usize].access_rights |= 3 << ar::DPL_SHIFT;
        assert!(check(&g).unwrap_err().contains("differs from SS's DPL"));
        // A usable LDTR must be an LDT.
        let mut g = state(CpuMode::Protected);
        g.segments[Seg::Ldtr as usize].access_rights = ar::TSS_BUSY;
        assert!(check(&g).unwrap_err().contains("LDTR"));
    }

    #[test]
    fn rip_rflags_and_the_rest() {
        let mut g = state(CpuMode::Real);
        g.rflags = 0;
        assert!(check(&g).unwrap_err().contains("RFLAGS bit 1"));
        let mut g = state(CpuMode::Real);
        g.rflags |= 1 << 15;
        assert!(check(&g).unwrap_err().contains("reserved"));
        let mut g = state(CpuMode::Real);
        g.rflags |= rflags::VM;
        assert!(check(&g).unwrap_err().contains("RFLAGS.VM"));
        let mut g = state(CpuMode::Protected);
        g.rip = 1 << 32;
        assert!(check(&g).unwrap_err().contains("RIP bits 63:32"));
        let mut g = state(CpuMode::Long);
        g.rip = 0x0000_8000_0000_0000;
        assert!(check(&g).unwrap_err().contains("canonical"));
        let mut g = state(CpuMode::Long);
        g.rip = 0xFFFF_8000_0000_0000;
        assert_eq!(check(&g), Ok(()));
        let mut g = state(CpuMode::Real);
        g.link_pointer = 0;
        assert!(check(&g).unwrap_err().contains("link pointer"));
        let mut g = state(CpuMode::Real);
        g.interruptibility = interruptibility::BLOCKING_BY_STI;
        assert!(check(&g).unwrap_err().contains("STI"));
        let mut g = state(CpuMode::Long);
        g.gdtr.limit = 0x1_0000;
        assert!(check(&g).unwrap_err().contains("GDTR limit"));
        let mut g = state(CpuMode::Long);
        g.segments[Seg::Fs as usize].base = 0x0000_8000_0000_0000;
        assert!(check(&g).unwrap_err().contains("FS base"));
    }

    #[test]
    fn virtual_8086_segments() {
        let mut g = state(CpuMode::Protected);
        g.rflags |= rflags::VM;
        assert!(check(&g).unwrap_err().contains("virtual-8086"));
        for s in [Seg::Cs, Seg::Ss, Seg::Ds, Seg::Es, Seg::Fs, Seg::Gs] {
            g.segments[s as usize] = SegmentState {
                selector: 0x1234,
                base: 0x12340,
                limit: 0xFFFF,
                access_rights: 0xF3,
            };
        }
        assert_eq!(check(&g), Ok(()));
        g.segments[Seg::Fs as usize].base = 0;
        assert_eq!(
            check(&g),
            Err("guest FS base is not selector * 16 in virtual-8086 mode")
        );
        g.segments[Seg::Fs as usize].base = 0x12340;
        g.segments[Seg::Cs as usize].access_rights = 0xFB;
        assert_eq!(
            check(&g),
            Err("guest CS access rights are not F3H in virtual-8086 mode")
        );
        // Still refused outside protected mode.
        let mut g = state(CpuMode::Real);
        g.rflags |= rflags::VM;
        assert!(check(&g).unwrap_err().contains("RFLAGS.VM"));
    }

    #[test]
    fn single_step_in_a_shadow_needs_bs() {
        let mut g = state(CpuMode::Protected);
        g.rflags |= rflags::IF | rflags::TF;
        g.interruptibility = interruptibility::BLOCKING_BY_STI;
        assert!(check(&g).unwrap_err().contains("lack BS"));
        g.pending_debug = 1 << 14;
        assert_eq!(check(&g), Ok(()));
        // BTF: single-stepping on branches only, no BS.
        g.debugctl = 1 << 1;
        assert!(check(&g).unwrap_err().contains("BS set"));
        g.pending_debug = 0;
        assert_eq!(check(&g), Ok(()));
        // Outside a shadow BS is free.
        g.interruptibility = 0;
        g.pending_debug = 1 << 14;
        assert_eq!(check(&g), Ok(()));
    }

    #[test]
    fn event_injection() {
        let g = state(CpuMode::Protected);
        let ev = |info: u32, code: u32, len: u32, g: &GuestState| {
            check_event_injection(g, info | intr_info::VALID, code, len, true)
        };
        assert_eq!(check_event_injection(&g, 0x0000_0F0E, 0, 0, true), Ok(()));
        // #GP with its error code; without, or with a wide one.
        assert_eq!(ev(0xB0D, 0, 0, &g), Ok(()));
        assert!(ev(0x30D, 0, 0, &g)
            .unwrap_err()
            .contains("error code exactly"));
        assert!(ev(0xB0D, 1 << 16, 0, &g).unwrap_err().contains("31:16"));
        assert!(ev(0xB06, 0, 0, &g)
            .unwrap_err()
            .contains("error code exactly"));
        // Real mode: never an error code.
        let real = state(CpuMode::Real);
        assert_eq!(ev(0x30D, 0, 0, &real), Ok(()));
        assert!(ev(0xB0D, 0, 0, &real).unwrap_err().contains("error code"));
        // Vectors and types.
        assert!(ev(0x203, 0, 0, &g).unwrap_err().contains("vector 2"));
        assert!(ev(0x320, 0, 0, &g).unwrap_err().contains("31 or less"));
        assert!(ev(0x120, 0, 0, &g).unwrap_err().contains("reserved"));
        assert!(ev(0x700, 0, 0, &g).unwrap_err().contains("reserved"));
        assert!(ev(0x1000 | 0x30D, 0, 0, &g).unwrap_err().contains("30:12"));
        // Software events need the instruction length.
        assert!(ev(0x480, 0, 0, &g)
            .unwrap_err()
            .contains("instruction length"));
        assert_eq!(ev(0x480, 0, 2, &g), Ok(()));
        assert_eq!(ev(0x603, 0, 1, &g), Ok(()));
        assert!(ev(0x501, 0, 16, &g)
            .unwrap_err()
            .contains("instruction length"));
        // External interrupts need IF and no shadow.
        assert!(ev(0x030, 0, 0, &g).unwrap_err().contains("RFLAGS.IF"));
        let mut open = g;
        open.rflags |= rflags::IF;
        assert_eq!(ev(0x030, 0, 0, &open), Ok(()));
        open.interruptibility = interruptibility::BLOCKING_BY_STI;
        assert!(ev(0x030, 0, 0, &open).unwrap_err().contains("shadow"));
        assert!(ev(0x202, 0, 0, &open).unwrap_err().contains("shadow"));
        // NMIs: not while blocked with virtual NMIs.
        let mut blocked = g;
        blocked.interruptibility = interruptibility::BLOCKING_BY_NMI;
        assert!(ev(0x202, 0, 0, &blocked).unwrap_err().contains("blocking"));
        assert_eq!(
            check_event_injection(&blocked, 0x8000_0202, 0, 0, false),
            Ok(())
        );
    }

    #[test]
    fn canonical() {
        assert!(is_canonical(0));
        assert!(is_canonical(0x0000_7FFF_FFFF_FFFF));
        assert!(!is_canonical(0x0000_8000_0000_0000));
        assert!(is_canonical(0xFFFF_8000_0000_0000));
        assert!(!is_canonical(0xFFFE_FFFF_FFFF_FFFF));
    }
}
