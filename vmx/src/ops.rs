//! What a vCPU does to its VMCS, as pure functions over [`VmcsAccess`]: writing the
//! control and host-state areas, stepping over an instruction, injecting an
//! exception, re-injecting an event whose delivery a VM exit interrupted, and
//! emulating the control-register accesses that exit because the host owns bits of
//! CR0/CR4 (see [`crate::guest_state`]) or intercepts CR8.
//!
//! The runtime ([`crate::backend`]) implements `VmcsAccess` with VMREAD/VMWRITE; the
//! tests here with a map.

use vcpu::{CpuMode, Exception, GuestRegisters};

use crate::checks::is_canonical;
use crate::controls::Controls;
use crate::exit::CrAccess;
use crate::guest_state::{mode_of, CrFixed};
use crate::vmcs::{
    ar, control16, control32, control64, control_nat, cr0, cr4, efer, entry_ctl, guest32, guest64,
    guest_nat, host16, host32, host64, host_nat, interruptibility, intr_info, ro32, VmcsAccess,
};

/// Host-physical addresses and identifiers a vCPU's controls refer to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlSetup {
    pub controls: Controls,
    /// The VM-entry controls for the start mode ([`Controls::entry_for`]).
    pub entry: u32,
    pub io_bitmap_a: u64,
    pub io_bitmap_b: u64,
    pub msr_bitmap: u64,
    /// The guest MSR list (entry-load and exit-store area).
    pub msr_guest_list: u64,
    /// The host MSR list (exit-load area).
    pub msr_host_list: u64,
    pub msr_count: u32,
    pub eptp: u64,
    /// 0 when VPIDs are not used.
    pub vpid: u16,
    pub fixed: CrFixed,
}

/// The exceptions that exit: #DB (bit 1) and #AC (bit 17).
pub const EXCEPTION_BITMAP: u64 =
    (1 << vcpu::Exception::DB_VECTOR) | (1 << vcpu::Exception::AC_VECTOR);

/// Writes every control field the backend uses (SDM Vol. 3C 25.6-25.8).
pub fn write_controls(vmcs: &mut impl VmcsAccess, s: &ControlSetup) {
    let c = &s.controls;
    vmcs.write(control32::PIN_BASED, c.pin as u64);
    vmcs.write(control32::PRIMARY_PROC_BASED, c.proc as u64);
    vmcs.write(control32::SECONDARY_PROC_BASED, c.proc2 as u64);
    vmcs.write(control32::VM_EXIT_CONTROLS, c.exit as u64);
    vmcs.write(control32::VM_ENTRY_CONTROLS, s.entry as u64);
    // The guest handles its own faults, but for #DB and #AC: their delivery can raise
    // them again forever inside the processor (CVE-2015-8104, CVE-2015-5307), so they
    // exit and `reflect` gives them back.
    vmcs.write(control32::EXCEPTION_BITMAP, EXCEPTION_BITMAP);
    vmcs.write(control32::PAGE_FAULT_ERROR_CODE_MASK, 0);
    vmcs.write(control32::PAGE_FAULT_ERROR_CODE_MATCH, 0);
    vmcs.write(control32::CR3_TARGET_COUNT, 0);
    vmcs.write(control32::VM_ENTRY_INTERRUPTION_INFO, 0);
    vmcs.write(control32::VM_ENTRY_EXCEPTION_ERROR_CODE, 0);
    vmcs.write(control32::VM_ENTRY_INSTRUCTION_LENGTH, 0);
    vmcs.write(control64::IO_BITMAP_A, s.io_bitmap_a);
    vmcs.write(control64::IO_BITMAP_B, s.io_bitmap_b);
    vmcs.write(control64::MSR_BITMAP, s.msr_bitmap);
    vmcs.write(control64::VM_ENTRY_MSR_LOAD_ADDR, s.msr_guest_list);
    vmcs.write(control64::VM_EXIT_MSR_STORE_ADDR, s.msr_guest_list);
    vmcs.write(control64::VM_EXIT_MSR_LOAD_ADDR, s.msr_host_list);
    vmcs.write(control32::VM_ENTRY_MSR_LOAD_COUNT, s.msr_count as u64);
    vmcs.write(control32::VM_EXIT_MSR_STORE_COUNT, s.msr_count as u64);
    vmcs.write(control32::VM_EXIT_MSR_LOAD_COUNT, s.msr_count as u64);
    vmcs.write(control64::TSC_OFFSET, 0);
    vmcs.write(control64::EPT_POINTER, s.eptp);
    if c.vpid {
        vmcs.write(control16::VPID, s.vpid as u64);
    }
    vmcs.write(control_nat::CR0_GUEST_HOST_MASK, s.fixed.cr0_mask());
    vmcs.write(control_nat::CR4_GUEST_HOST_MASK, s.fixed.cr4_mask());
}

/// The host state VM exits return to (SDM Vol. 3C 25.5), taken from the running CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostState {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cs: u16,
    pub ss: u16,
    pub ds: u16,
    pub es: u16,
    pub fs: u16,
    pub gs: u16,
    pub tr: u16,
    pub fs_base: u64,
    pub gs_base: u64,
    pub tr_base: u64,
    pub gdtr_base: u64,
    pub idtr_base: u64,
    pub sysenter_cs: u64,
    pub sysenter_esp: u64,
    pub sysenter_eip: u64,
    pub efer: u64,
    pub pat: u64,
}

/// The base of a 16-byte system descriptor (TSS/LDT in IA-32e mode, SDM Vol. 3A
/// 8.2.3): bits 15:0 in low 31:16, 23:16 in low 39:32, 31:24 in low 63:56, 63:32 in
/// the low half of the second quadword.
pub const fn system_descriptor_base(low: u64, high: u64) -> u64 {
    ((low >> 16) & 0xFF_FFFF) | ((low >> 32) & 0xFF00_0000) | ((high & 0xFFFF_FFFF) << 32)
}

/// A data-segment selector the host-state area accepts: RPL and TI must be 0 (SDM Vol.
/// 3C 27.2.3). A selector with either set is replaced by the null selector, which a
/// 64-bit host does not use for addressing (the FS/GS bases are separate fields).
pub const fn host_data_selector(selector: u16) -> u16 {
    if selector & 7 == 0 {
        selector
    } else {
        0
    }
}

impl HostState {
    /// Writes the host-state area. HOST_RSP and HOST_RIP are the entry stub's.
    pub fn write(&self, vmcs: &mut impl VmcsAccess) {
        vmcs.write(host_nat::CR0, self.cr0);
        vmcs.write(host_nat::CR3, self.cr3);
        vmcs.write(host_nat::CR4, self.cr4);
        vmcs.write(host16::CS_SELECTOR, self.cs as u64);
        vmcs.write(host16::SS_SELECTOR, host_data_selector(self.ss) as u64);
        vmcs.write(host16::DS_SELECTOR, host_data_selector(self.ds) as u64);
        vmcs.write(host16::ES_SELECTOR, host_data_selector(self.es) as u64);
        vmcs.write(host16::FS_SELECTOR, host_data_selector(self.fs) as u64);
        vmcs.write(host16::GS_SELECTOR, host_data_selector(self.gs) as u64);
        vmcs.write(host16::TR_SELECTOR, self.tr as u64);
        vmcs.write(host_nat::FS_BASE, self.fs_base);
        vmcs.write(host_nat::GS_BASE, self.gs_base);
        vmcs.write(host_nat::TR_BASE, self.tr_base);
        vmcs.write(host_nat::GDTR_BASE, self.gdtr_base);
        vmcs.write(host_nat::IDTR_BASE, self.idtr_base);
        vmcs.write(host32::IA32_SYSENTER_CS, self.sysenter_cs);
        vmcs.write(host_nat::IA32_SYSENTER_ESP, self.sysenter_esp);
        vmcs.write(host_nat::IA32_SYSENTER_EIP, self.sysenter_eip);
        vmcs.write(host64::IA32_EFER, self.efer);
        vmcs.write(host64::IA32_PAT, self.pat);
    }

    /// The host-state checks a VM entry makes (SDM Vol. 3C 27.2.2, 27.2.3) that can
    /// fail for a hypervisor's own state, so that error 8 has a name.
    pub fn check(&self, fixed: &CrFixed) -> Result<(), &'static str> {
        if self.cr0 & fixed.cr0_fixed0 != fixed.cr0_fixed0 || self.cr0 & !fixed.cr0_fixed1 != 0 {
            return Err("host CR0 violates IA32_VMX_CR0_FIXED0/FIXED1");
        }
        if self.cr4 & fixed.cr4_fixed0 != fixed.cr4_fixed0 || self.cr4 & !fixed.cr4_fixed1 != 0 {
            return Err("host CR4 violates IA32_VMX_CR4_FIXED0/FIXED1");
        }
        if self.cr4 & cr4::PAE == 0 {
            return Err("host CR4.PAE is clear, but the host runs in 64-bit mode");
        }
        if self.cs & 7 != 0 || self.cs == 0 {
            return Err("host CS selector is null or has RPL/TI set");
        }
        if self.tr & 7 != 0 || self.tr == 0 {
            return Err("host TR selector is null or has RPL/TI set");
        }
        if self.efer & (efer::LMA | efer::LME) != (efer::LMA | efer::LME) {
            return Err("host IA32_EFER.LMA/LME are not both set for a 64-bit host");
        }
        for (base, what) in [
            (self.fs_base, "host FS base is not canonical"),
            (self.gs_base, "host GS base is not canonical"),
            (self.tr_base, "host TR base is not canonical"),
            (self.gdtr_base, "host GDTR base is not canonical"),
            (self.idtr_base, "host IDTR base is not canonical"),
            (self.sysenter_esp, "host IA32_SYSENTER_ESP is not canonical"),
            (self.sysenter_eip, "host IA32_SYSENTER_EIP is not canonical"),
        ] {
            if !is_canonical(base) {
                return Err(what);
            }
        }
        Ok(())
    }
}

/// Whether the guest executes 64-bit code (IA-32e mode with CS.L).
fn in_64bit_code(vmcs: &impl VmcsAccess) -> bool {
    vmcs.read(guest64::IA32_EFER) & efer::LMA != 0
        && vmcs.read(guest32::CS_ACCESS_RIGHTS) as u32 & ar::L != 0
}

/// Step over the instruction that caused the last exit: RIP += the VM-exit
/// instruction length (0x440C), wrapped to 32 bits outside 64-bit code. Blocking by
/// STI or MOV SS ends with the next instruction, as it would have on the processor.
pub fn skip_instruction(vmcs: &mut impl VmcsAccess) {
    let len = vmcs.read(ro32::VM_EXIT_INSTRUCTION_LENGTH);
    let mut rip = vmcs.read(guest_nat::RIP).wrapping_add(len);
    if !in_64bit_code(vmcs) {
        rip &= 0xFFFF_FFFF;
    }
    vmcs.write(guest_nat::RIP, rip);
    let state = vmcs.read(guest32::INTERRUPTIBILITY_STATE);
    let blocking =
        (interruptibility::BLOCKING_BY_STI | interruptibility::BLOCKING_BY_MOV_SS) as u64;
    if state & blocking != 0 {
        vmcs.write(guest32::INTERRUPTIBILITY_STATE, state & !blocking);
    }
}

/// Sets the guest's blocking by STI and by MOV SS after an instruction the core
/// emulated: none, or blocking by MOV SS (SDM Vol. 3C 25.4.2, guest interruptibility
/// state bits 0 and 1; only written when it changes).
pub fn set_interrupt_shadow(vmcs: &mut impl VmcsAccess, mov_ss: bool) {
    let state = vmcs.read(guest32::INTERRUPTIBILITY_STATE);
    let blocking =
        (interruptibility::BLOCKING_BY_STI | interruptibility::BLOCKING_BY_MOV_SS) as u64;
    let mut next = state & !blocking;
    if mov_ss {
        next |= interruptibility::BLOCKING_BY_MOV_SS as u64;
    }
    if next != state {
        vmcs.write(guest32::INTERRUPTIBILITY_STATE, next);
    }
}

/// Whether `vector` pushes an error code in protected mode (#DF, #TS, #NP, #SS, #GP,
/// #PF, #AC, #CP).
pub const fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21)
}

/// Queue `exception` for the next VM entry as a hardware exception (type 3) in the
/// VM-entry interruption-information field (0x4016).
///
/// The deliver-error-code bit must be set exactly when the guest is in protected mode
/// (CR0.PE, with unrestricted guest) and the vector is one that pushes an error code
/// (SDM Vol. 3C 27.2.1.3): a real-mode guest gets #GP without one. The error code goes
/// in 0x4018; bits 31:16 must be 0 there, so only the low 16 bits are kept. No
/// instruction length is needed: that is only for software interrupts and exceptions
/// (types 4-6), which [`reinject_vectoring`] handles.
pub fn inject_exception(vmcs: &mut impl VmcsAccess, exception: Exception) {
    let protected = vmcs.read(guest_nat::CR0) & cr0::PE != 0;
    let mut info = intr_info::VALID | intr_info::TYPE_HARDWARE_EXCEPTION | exception.vector as u32;
    if let Some(code) = exception.error_code {
        if protected && has_error_code(exception.vector) {
            info |= intr_info::DELIVER_ERROR_CODE;
            vmcs.write(
                control32::VM_ENTRY_EXCEPTION_ERROR_CODE,
                (code & 0xFFFF) as u64,
            );
        }
    }
    vmcs.write(control32::VM_ENTRY_INTERRUPTION_INFO, info as u64);
}

/// After a VM exit during event delivery (IDT-vectoring information valid, SDM Vol.
/// 3C 28.2.4), queue the event again so it is not lost: the same vector, type and
/// error code, plus the instruction length for software interrupts and exceptions.
/// Returns whether an event was queued.
pub fn reinject_vectoring(vmcs: &mut impl VmcsAccess) -> bool {
    let info = vmcs.read(ro32::IDT_VECTORING_INFO) as u32;
    if info & intr_info::VALID == 0 {
        return false;
    }
    // Bit 12 (NMI unblocking) and bits 30:13 are reserved in the entry field.
    let entry = info
        & (intr_info::VALID
            | intr_info::DELIVER_ERROR_CODE
            | intr_info::TYPE_MASK
            | intr_info::VECTOR_MASK);
    if entry & intr_info::DELIVER_ERROR_CODE != 0 {
        let code = vmcs.read(ro32::IDT_VECTORING_ERROR_CODE);
        vmcs.write(control32::VM_ENTRY_EXCEPTION_ERROR_CODE, code);
    }
    if matches!(
        entry & intr_info::TYPE_MASK,
        intr_info::TYPE_SOFTWARE_INTERRUPT
            | intr_info::TYPE_PRIVILEGED_SOFTWARE_EXCEPTION
            | intr_info::TYPE_SOFTWARE_EXCEPTION
    ) {
        let len = vmcs.read(ro32::VM_EXIT_INSTRUCTION_LENGTH);
        vmcs.write(control32::VM_ENTRY_INSTRUCTION_LENGTH, len);
    }
    vmcs.write(control32::VM_ENTRY_INTERRUPTION_INFO, entry as u64);
    true
}

/// The guest's RFLAGS.
pub fn rflags(vmcs: &impl VmcsAccess) -> u64 {
    vmcs.read(guest_nat::RFLAGS)
}

/// Loads the guest's RFLAGS, with bit 1 set and the reserved bits clear (VM entry
/// fails otherwise, SDM Vol. 3C 27.3.1.4).
pub fn set_rflags(vmcs: &mut impl VmcsAccess, rflags: u64) {
    vmcs.write(guest_nat::RFLAGS, vcpu::architectural_rflags(rflags));
}

/// Whether an external interrupt injected now would be delivered on the next entry
/// (SDM Vol. 3C 27.3.1.5: injecting one needs RFLAGS.IF=1 and no blocking by STI or
/// MOV SS), and no other event is already queued.
pub fn interrupt_ready(vmcs: &impl VmcsAccess) -> bool {
    let blocking = interruptibility::BLOCKING_BY_STI | interruptibility::BLOCKING_BY_MOV_SS;
    vmcs.read(guest_nat::RFLAGS) & crate::vmcs::rflags::IF != 0
        && vmcs.read(guest32::INTERRUPTIBILITY_STATE) as u32 & blocking == 0
        && vmcs.read(control32::VM_ENTRY_INTERRUPTION_INFO) as u32 & intr_info::VALID == 0
}

/// Whether an NMI injected now would be delivered: not blocked by NMI (the processor
/// tracks it from an NMI's delivery until the guest's IRET, also without "virtual
/// NMIs"), nor by MOV SS or STI (VM entry may refuse NMI injection under either, SDM
/// Vol. 3C 27.3.1.5), and no other event queued.
pub fn nmi_ready(vmcs: &impl VmcsAccess) -> bool {
    let blocking = interruptibility::BLOCKING_BY_STI
        | interruptibility::BLOCKING_BY_MOV_SS
        | interruptibility::BLOCKING_BY_NMI;
    vmcs.read(guest32::INTERRUPTIBILITY_STATE) as u32 & blocking == 0
        && vmcs.read(control32::VM_ENTRY_INTERRUPTION_INFO) as u32 & intr_info::VALID == 0
}

/// Queue an NMI (interruption type 2, vector 2) for the next entry.
pub fn inject_nmi(vmcs: &mut impl VmcsAccess) {
    let info = intr_info::VALID | intr_info::TYPE_NMI | 2;
    vmcs.write(control32::VM_ENTRY_INTERRUPTION_INFO, info as u64);
}

/// Queue external interrupt `vector` (interruption type 0) for the next entry.
pub fn inject_interrupt(vmcs: &mut impl VmcsAccess, vector: u8) {
    let info = intr_info::VALID | intr_info::TYPE_EXTERNAL_INTERRUPT | vector as u32;
    vmcs.write(control32::VM_ENTRY_INTERRUPTION_INFO, info as u64);
}

/// Turn "interrupt-window exiting" on or off: with it on, the guest exits (reason 7)
/// at the start of any instruction at which RFLAGS.IF=1 and nothing blocks interrupts
/// (SDM Vol. 3C 26.7.5). The control is allowed on every processor with VMX.
pub fn set_interrupt_window(vmcs: &mut impl VmcsAccess, on: bool) {
    let value = vmcs.read(control32::PRIMARY_PROC_BASED) as u32;
    let value = if on {
        value | crate::vmcs::proc::INTERRUPT_WINDOW_EXITING
    } else {
        value & !crate::vmcs::proc::INTERRUPT_WINDOW_EXITING
    };
    vmcs.write(control32::PRIMARY_PROC_BASED, value as u64);
}

/// Turn "NMI-window exiting" on or off (exit reason 8 once virtual-NMI blocking ends,
/// SDM Vol. 3C 26.7.6); only allowed with "virtual NMIs", so it does nothing without.
pub fn set_nmi_window(vmcs: &mut impl VmcsAccess, on: bool) {
    if vmcs.read(control32::PIN_BASED) as u32 & crate::vmcs::pin::VIRTUAL_NMIS == 0 {
        return;
    }
    let value = vmcs.read(control32::PRIMARY_PROC_BASED) as u32;
    let value = if on {
        value | crate::vmcs::proc::NMI_WINDOW_EXITING
    } else {
        value & !crate::vmcs::proc::NMI_WINDOW_EXITING
    };
    vmcs.write(control32::PRIMARY_PROC_BASED, value as u64);
}

/// CR0 or CR4 as the guest sees it: the host-owned bits (those set in the guest/host
/// mask) come from the read shadow, the rest from the register (SDM Vol. 3C 25.6.6).
pub fn guest_visible_cr(vmcs: &impl VmcsAccess, register: u32, mask: u32, shadow: u32) -> u64 {
    let mask = vmcs.read(mask);
    (vmcs.read(register) & !mask) | (vmcs.read(shadow) & mask)
}

/// The guest's paging-relevant state, as the guest sees it.
pub fn control_regs(vmcs: &impl VmcsAccess) -> vcpu::ControlRegs {
    vcpu::ControlRegs {
        cr0: guest_visible_cr(
            vmcs,
            guest_nat::CR0,
            control_nat::CR0_GUEST_HOST_MASK,
            control_nat::CR0_READ_SHADOW,
        ),
        cr3: vmcs.read(guest_nat::CR3),
        cr4: guest_visible_cr(
            vmcs,
            guest_nat::CR4,
            control_nat::CR4_GUEST_HOST_MASK,
            control_nat::CR4_READ_SHADOW,
        ),
        efer: vmcs.read(guest64::IA32_EFER),
        cs_base: vmcs.read(guest_nat::CS_BASE),
        cs_long: vmcs.read(guest32::CS_ACCESS_RIGHTS) as u32 & ar::L != 0,
    }
}

/// The guest's current mode from its CR0 and EFER.
pub fn guest_mode(vmcs: &impl VmcsAccess) -> CpuMode {
    mode_of(vmcs.read(guest_nat::CR0), vmcs.read(guest64::IA32_EFER))
}

/// The guest's EFER as it reads it.
pub fn read_efer(vmcs: &impl VmcsAccess) -> u64 {
    vmcs.read(guest64::IA32_EFER)
}

/// A guest WRMSR to EFER (the core's policy has already allowed the value). LMA is the
/// processor's (set when paging is enabled with LME) and must keep matching the
/// "IA-32e mode guest" entry control, so the written LMA bit is ignored.
pub fn write_efer(vmcs: &mut impl VmcsAccess, value: u64) {
    let lma = vmcs.read(guest64::IA32_EFER) & efer::LMA;
    vmcs.write(guest64::IA32_EFER, (value & !efer::LMA) | lma);
}

/// A general-purpose register by its instruction-encoding number (RSP lives in the VMCS).
pub fn gpr(regs: &GuestRegisters, vmcs: &impl VmcsAccess, n: u8) -> u64 {
    match n & 15 {
        0 => regs.rax,
        1 => regs.rcx,
        2 => regs.rdx,
        3 => regs.rbx,
        4 => vmcs.read(guest_nat::RSP),
        5 => regs.rbp,
        6 => regs.rsi,
        7 => regs.rdi,
        8 => regs.r8,
        9 => regs.r9,
        10 => regs.r10,
        11 => regs.r11,
        12 => regs.r12,
        13 => regs.r13,
        14 => regs.r14,
        _ => regs.r15,
    }
}

pub fn set_gpr(regs: &mut GuestRegisters, vmcs: &mut impl VmcsAccess, n: u8, value: u64) {
    match n & 15 {
        0 => regs.rax = value,
        1 => regs.rcx = value,
        2 => regs.rdx = value,
        3 => regs.rbx = value,
        4 => vmcs.write(guest_nat::RSP, value),
        5 => regs.rbp = value,
        6 => regs.rsi = value,
        7 => regs.rdi = value,
        8 => regs.r8 = value,
        9 => regs.r9 = value,
        10 => regs.r10 = value,
        11 => regs.r11 = value,
        12 => regs.r12 = value,
        13 => regs.r13 = value,
        14 => regs.r14 = value,
        _ => regs.r15 = value,
    }
}

/// The outcome of a control-register access exit the backend handles itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrOutcome {
    /// Emulated; the instruction was skipped.
    Done,
    /// The processor would have raised #GP(0); it has been queued, RIP unchanged.
    GeneralProtection,
    /// Not an access this backend emulates (reported to the core as unknown).
    Unhandled,
    /// A write to CR0 or CR4 (MOV, CLTS, LMSW) with the value it would load: the
    /// core validates it against the guest's CPUID, then calls [`write_cr0`] or
    /// [`write_cr4`] through `Vcpu::write_cr`. Nothing was changed or skipped.
    Forward { cr: u8, value: u64 },
}

/// What a control-register emulation needs besides the VMCS.
pub struct CrContext<'a> {
    pub regs: &'a mut GuestRegisters,
    pub fixed: &'a CrFixed,
    /// The guest's CR8 (task priority), kept per vCPU because CR8 accesses exit.
    pub cr8: &'a mut u64,
    /// Reads the four PAE page-directory-pointer-table entries at guest-physical CR3
    /// (needed when the guest enables PAE paging outside IA-32e mode: with EPT the
    /// processor loads them from the VMCS on entry, SDM Vol. 3C 27.3.2.4). `None` if
    /// the table is not in guest RAM.
    pub read_pdptes: &'a mut dyn FnMut(u64) -> Option<[u64; 4]>,
}

/// Handle a control-register access exit (reason 28) with qualification `qualification`.
///
/// - MOV to CR0 (an owned bit changed, usually NE), CLTS, LMSW and every MOV to CR4
///   (the host owns all of CR4): [`CrOutcome::Forward`] with the value the guest
///   loads, for the core to validate; [`write_cr0`] / [`write_cr4`] then carry it out.
/// - MOV to/from CR3 (only when the processor forces CR3 exiting) and CR8.
pub fn emulate_cr_access(
    vmcs: &mut impl VmcsAccess,
    qualification: u64,
    ctx: &mut CrContext<'_>,
) -> CrOutcome {
    let wide = in_64bit_code(vmcs);
    let operand = |v: u64| if wide { v } else { v & 0xFFFF_FFFF };
    let outcome = match CrAccess::decode(qualification) {
        CrAccess::MovToCr {
            cr: cr @ (0 | 4),
            gpr: g,
        } => CrOutcome::Forward {
            cr,
            value: operand(gpr(ctx.regs, vmcs, g)),
        },
        CrAccess::MovToCr { cr: 3, gpr: g } => {
            let value = operand(gpr(ctx.regs, vmcs, g));
            vmcs.write(guest_nat::CR3, value);
            if load_pdptes_if_pae(vmcs, ctx) {
                CrOutcome::Done
            } else {
                CrOutcome::GeneralProtection
            }
        }
        CrAccess::MovToCr { cr: 8, gpr: g } => {
            let value = gpr(ctx.regs, vmcs, g);
            if value >> 4 != 0 {
                CrOutcome::GeneralProtection
            } else {
                *ctx.cr8 = value;
                CrOutcome::Done
            }
        }
        CrAccess::MovFromCr { cr: 3, gpr: g } => {
            let value = vmcs.read(guest_nat::CR3);
            set_gpr(ctx.regs, vmcs, g, value);
            CrOutcome::Done
        }
        CrAccess::MovFromCr { cr: 8, gpr: g } => {
            let value = *ctx.cr8;
            set_gpr(ctx.regs, vmcs, g, value);
            CrOutcome::Done
        }
        CrAccess::Clts => CrOutcome::Forward {
            cr: 0,
            value: control_regs(vmcs).cr0 & !cr0::TS,
        },
        CrAccess::Lmsw { source } => {
            // LMSW loads CR0 bits 3:0 but cannot clear PE (SDM Vol. 2A LMSW).
            let cr0_value = control_regs(vmcs).cr0;
            let low = (source as u64 & 0xF) | (cr0_value & cr0::PE);
            CrOutcome::Forward {
                cr: 0,
                value: (cr0_value & !0xF) | low,
            }
        }
        _ => CrOutcome::Unhandled,
    };
    match outcome {
        CrOutcome::Done => skip_instruction(vmcs),
        CrOutcome::GeneralProtection => inject_exception(vmcs, Exception::GP0),
        CrOutcome::Unhandled | CrOutcome::Forward { .. } => {}
    }
    outcome
}

/// Loads CR4 with `value` (validated by the core): the processor runs with the
/// VMX-required bits applied, the guest reads `value` from the shadow. A change to
/// PAE, PGE, PSE or SMEP with PAE paging outside IA-32e mode reloads the PDPTEs (SDM
/// Vol. 3A 4.4.1); if they have reserved bits set, nothing changes and the result
/// is [`CrOutcome::GeneralProtection`].
pub fn write_cr4(vmcs: &mut impl VmcsAccess, value: u64, ctx: &mut CrContext<'_>) -> CrOutcome {
    let old_actual = vmcs.read(guest_nat::CR4);
    let old_shadow = vmcs.read(control_nat::CR4_READ_SHADOW);
    vmcs.write(guest_nat::CR4, ctx.fixed.cr4_actual(value));
    vmcs.write(control_nat::CR4_READ_SHADOW, value);
    // PSE, PAE, PGE, SMEP.
    let reload = (1 << 4) | cr4::PAE | (1 << 7) | (1 << 20);
    if (value ^ old_shadow) & reload != 0 && !load_pdptes_if_pae(vmcs, ctx) {
        vmcs.write(guest_nat::CR4, old_actual);
        vmcs.write(control_nat::CR4_READ_SHADOW, old_shadow);
        return CrOutcome::GeneralProtection;
    }
    CrOutcome::Done
}

/// Loads CR0 with `value` (validated by the core), with the checks a MOV to CR0
/// makes repeated as a last line (#GP for bits 63:32, PG without PE, NW without CD,
/// enabling paging with LME but not PAE): CR0 = value with the owned bits forced,
/// the read shadow = value. Enabling or disabling paging with EFER.LME sets or
/// clears EFER.LMA and the "IA-32e mode guest" entry control, which the processor
/// does itself only for a MOV that does not exit. Enabling PAE paging outside
/// IA-32e mode loads the PDPTEs.
pub fn write_cr0(vmcs: &mut impl VmcsAccess, value: u64, ctx: &mut CrContext<'_>) -> CrOutcome {
    let old_actual = vmcs.read(guest_nat::CR0);
    let guest_efer = vmcs.read(guest64::IA32_EFER);
    let cr4_value = vmcs.read(guest_nat::CR4);
    if value >> 32 != 0
        || (value & cr0::PG != 0 && value & cr0::PE == 0)
        || (value & cr0::NW != 0 && value & cr0::CD == 0)
    {
        return CrOutcome::GeneralProtection;
    }
    let enabling_paging = value & cr0::PG != 0 && old_actual & cr0::PG == 0;
    let disabling_paging = value & cr0::PG == 0 && old_actual & cr0::PG != 0;
    if enabling_paging && guest_efer & efer::LME != 0 && cr4_value & cr4::PAE == 0 {
        return CrOutcome::GeneralProtection;
    }
    if disabling_paging && in_64bit_code(vmcs) {
        return CrOutcome::GeneralProtection;
    }
    let mut new_efer = guest_efer;
    if enabling_paging && guest_efer & efer::LME != 0 {
        new_efer |= efer::LMA;
    }
    if disabling_paging {
        new_efer &= !efer::LMA;
    }
    vmcs.write(guest_nat::CR0, ctx.fixed.cr0_actual(value));
    vmcs.write(control_nat::CR0_READ_SHADOW, value);
    if new_efer != guest_efer {
        vmcs.write(guest64::IA32_EFER, new_efer);
        let entry = vmcs.read(control32::VM_ENTRY_CONTROLS) as u32;
        let entry = if new_efer & efer::LMA != 0 {
            entry | entry_ctl::IA32E_MODE_GUEST
        } else {
            entry & !entry_ctl::IA32E_MODE_GUEST
        };
        vmcs.write(control32::VM_ENTRY_CONTROLS, entry as u64);
    }
    if enabling_paging && !load_pdptes_if_pae(vmcs, ctx) {
        return CrOutcome::GeneralProtection;
    }
    CrOutcome::Done
}

/// With PAE paging outside IA-32e mode, load the PDPTEs from guest memory into the
/// VMCS. Returns false when they cannot be read or have reserved bits set (the
/// processor raises #GP then).
fn load_pdptes_if_pae(vmcs: &mut impl VmcsAccess, ctx: &mut CrContext<'_>) -> bool {
    let cr0_value = vmcs.read(guest_nat::CR0);
    let pae = vmcs.read(guest_nat::CR4) & cr4::PAE != 0;
    let lma = vmcs.read(guest64::IA32_EFER) & efer::LMA != 0;
    if cr0_value & cr0::PG == 0 || !pae || lma {
        return true;
    }
    let cr3 = vmcs.read(guest_nat::CR3) & 0xFFFF_FFE0;
    let Some(pdptes) = (ctx.read_pdptes)(cr3) else {
        return false;
    };
    // Present PDPTEs must have bits 2:1 and 8:5 clear (SDM Vol. 3A 5.4.1).
    if pdptes.iter().any(|&e| e & 1 != 0 && e & 0x1E6 != 0) {
        return false;
    }
    for (field, value) in [
        guest64::PDPTE0,
        guest64::PDPTE1,
        guest64::PDPTE2,
        guest64::PDPTE3,
    ]
    .into_iter()
    .zip(pdptes)
    {
        vmcs.write(field, value);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controls::tests::skylake;
    use crate::guest_state::tests::{start, FIXED};
    use crate::guest_state::GuestState;
    use crate::vmcs::fake::FakeVmcs;
    use crate::vmcs::{ro32, ro_nat};

    fn vmcs_for(mode: CpuMode) -> FakeVmcs {
        let mut v = FakeVmcs::default();
        let g = GuestState::for_start(&start(mode, 0x7C00), &FIXED);
        g.write(&mut v);
        let c = Controls::compute(&skylake()).unwrap();
        let setup = ControlSetup {
            controls: c,
            entry: c.entry_for(g.ia32e).unwrap(),
            io_bitmap_a: 0x1000,
            io_bitmap_b: 0x2000,
            msr_bitmap: 0x3000,
            msr_guest_list: 0x4000,
            msr_host_list: 0x4050,
            msr_count: 5,
            eptp: 0x501E,
            vpid: 7,
            fixed: FIXED,
        };
        write_controls(&mut v, &setup);
        v
    }

    #[test]
    fn controls_are_written() {
        let v = vmcs_for(CpuMode::Long);
        let c = Controls::compute(&skylake()).unwrap();
        assert_eq!(v.get(control32::PIN_BASED), c.pin as u64);
        assert_eq!(v.get(control32::PRIMARY_PROC_BASED), c.proc as u64);
        assert_eq!(v.get(control32::SECONDARY_PROC_BASED), c.proc2 as u64);
        assert_eq!(v.get(control32::VM_EXIT_CONTROLS), c.exit as u64);
        assert_ne!(
            v.get(control32::VM_ENTRY_CONTROLS) & entry_ctl::IA32E_MODE_GUEST as u64,
            0
        );
        assert_eq!(v.get(control64::EPT_POINTER), 0x501E);
        assert_eq!(v.get(control16::VPID), 7);
        assert_eq!(v.get(control64::VM_ENTRY_MSR_LOAD_ADDR), 0x4000);
        assert_eq!(v.get(control64::VM_EXIT_MSR_STORE_ADDR), 0x4000);
        assert_eq!(v.get(control64::VM_EXIT_MSR_LOAD_ADDR), 0x4050);
        assert_eq!(v.get(control32::VM_EXIT_MSR_LOAD_COUNT), 5);
        assert_eq!(v.get(control_nat::CR0_GUEST_HOST_MASK), cr0::NE);
        assert_eq!(
            v.get(control_nat::CR4_GUEST_HOST_MASK) & cr4::VMXE,
            cr4::VMXE
        );
    }

    #[test]
    fn set_rflags_keeps_the_fixed_and_reserved_bits() {
        let mut v = vmcs_for(CpuMode::Long);
        // ZF and CF with IF, bit 1 clear and reserved bits 3, 5, 15 and 22 set.
        set_rflags(&mut v, 0x0040_8000 | 1 << 9 | 0x68 | 1);
        assert_eq!(v.get(guest_nat::RFLAGS), 1 << 9 | 0x40 | 2 | 1);
        assert_eq!(rflags(&v), 0x243);
        set_rflags(&mut v, 0);
        assert_eq!(rflags(&v), crate::vmcs::rflags::FIXED_1);
    }

    #[test]
    fn host_state() {
        let h = HostState {
            cr0: 0x8005_0033,
            cr3: 0x1000,
            cr4: 0x2020,
            cs: 8,
            ss: 0x10,
            ds: 0x10,
            es: 0x13, // RPL 3: replaced by null
            fs: 0,
            gs: 0,
            tr: 0x18,
            efer: 0xD01,
            pat: 0x0007_0406_0007_0406,
            ..Default::default()
        };
        let mut v = FakeVmcs::default();
        h.write(&mut v);
        assert_eq!(v.get(host16::ES_SELECTOR), 0);
        assert_eq!(v.get(host16::DS_SELECTOR), 0x10);
        assert_eq!(v.get(host16::TR_SELECTOR), 0x18);
        assert_eq!(v.get(host64::IA32_EFER), 0xD01);
        assert_eq!(h.check(&FIXED), Ok(()));
        assert!(HostState { tr: 0, ..h }
            .check(&FIXED)
            .unwrap_err()
            .contains("TR"));
        assert!(HostState { cr4: 0x20, ..h }
            .check(&FIXED)
            .unwrap_err()
            .contains("CR4"));
        assert!(HostState { efer: 0x100, ..h }
            .check(&FIXED)
            .unwrap_err()
            .contains("EFER"));
        assert!(HostState {
            gs_base: 1 << 60,
            ..h
        }
        .check(&FIXED)
        .unwrap_err()
        .contains("GS"));
        // x86_64-style TSS descriptor at base 0xFFFF_8000_1234_5678.
        let low = 0x0067 | (0x5678 << 16) | (0x34 << 32) | (0x89 << 40) | (0x12 << 56);
        let high = 0xFFFF_8000;
        assert_eq!(system_descriptor_base(low, high), 0xFFFF_8000_1234_5678);
    }

    #[test]
    fn skip_adds_length_and_ends_sti_blocking() {
        let mut v = vmcs_for(CpuMode::Real);
        v.fields.insert(ro32::VM_EXIT_INSTRUCTION_LENGTH, 2);
        v.write(guest32::INTERRUPTIBILITY_STATE, 1);
        skip_instruction(&mut v);
        assert_eq!(v.get(guest_nat::RIP), 0x7C02);
        assert_eq!(v.get(guest32::INTERRUPTIBILITY_STATE), 0);

        let mut v = vmcs_for(CpuMode::Protected);
        v.write(guest_nat::RIP, 0xFFFF_FFFF);
        v.fields.insert(ro32::VM_EXIT_INSTRUCTION_LENGTH, 1);
        skip_instruction(&mut v);
        assert_eq!(
            v.get(guest_nat::RIP),
            0,
            "wraps at 4 GiB outside 64-bit code"
        );

        let mut v = vmcs_for(CpuMode::Long);
        v.write(guest_nat::RIP, 0xFFFF_FFFF);
        v.fields.insert(ro32::VM_EXIT_INSTRUCTION_LENGTH, 3);
        skip_instruction(&mut v);
        assert_eq!(v.get(guest_nat::RIP), 0x1_0000_0002);
    }

    #[test]
    fn an_emulated_mov_ss_blocks_and_any_other_instruction_ends_blocking() {
        let mut v = vmcs_for(CpuMode::Protected);
        // Blocking by STI (bit 0) and NMI blocking (bit 3), which is not ours to end.
        v.write(guest32::INTERRUPTIBILITY_STATE, 0b1001);
        set_interrupt_shadow(&mut v, true);
        assert_eq!(v.get(guest32::INTERRUPTIBILITY_STATE), 0b1010);
        set_interrupt_shadow(&mut v, false);
        assert_eq!(v.get(guest32::INTERRUPTIBILITY_STATE), 0b1000);
    }

    #[test]
    fn exception_injection() {
        let mut v = vmcs_for(CpuMode::Long);
        inject_exception(&mut v, Exception::GP0);
        assert_eq!(v.get(control32::VM_ENTRY_INTERRUPTION_INFO), 0x8000_0B0D);
        assert_eq!(v.get(control32::VM_ENTRY_EXCEPTION_ERROR_CODE), 0);
        inject_exception(&mut v, Exception::UD);
        assert_eq!(v.get(control32::VM_ENTRY_INTERRUPTION_INFO), 0x8000_0306);
        inject_exception(
            &mut v,
            Exception {
                vector: 14,
                error_code: Some(0x1_0007),
            },
        );
        assert_eq!(v.get(control32::VM_ENTRY_EXCEPTION_ERROR_CODE), 7);
        // Real mode: no error code is delivered, even for #GP.
        let mut v = vmcs_for(CpuMode::Real);
        inject_exception(&mut v, Exception::GP0);
        assert_eq!(v.get(control32::VM_ENTRY_INTERRUPTION_INFO), 0x8000_030D);
    }

    #[test]
    fn vectoring_is_reinjected() {
        let mut v = vmcs_for(CpuMode::Long);
        assert!(!reinject_vectoring(&mut v));
        // #PF with error code, NMI-unblocking bit set (must be dropped).
        v.fields.insert(ro32::IDT_VECTORING_INFO, 0x8000_1B0E);
        v.fields.insert(ro32::IDT_VECTORING_ERROR_CODE, 2);
        assert!(reinject_vectoring(&mut v));
        assert_eq!(v.get(control32::VM_ENTRY_INTERRUPTION_INFO), 0x8000_0B0E);
        assert_eq!(v.get(control32::VM_ENTRY_EXCEPTION_ERROR_CODE), 2);
        // INT 0x80 (software interrupt) needs the instruction length.
        v.fields.insert(ro32::IDT_VECTORING_INFO, 0x8000_0480);
        v.fields.insert(ro32::VM_EXIT_INSTRUCTION_LENGTH, 2);
        assert!(reinject_vectoring(&mut v));
        assert_eq!(v.get(control32::VM_ENTRY_INSTRUCTION_LENGTH), 2);
    }

    #[test]
    fn mode_and_efer() {
        assert_eq!(guest_mode(&vmcs_for(CpuMode::Real)), CpuMode::Real);
        assert_eq!(
            guest_mode(&vmcs_for(CpuMode::Protected)),
            CpuMode::Protected
        );
        let mut v = vmcs_for(CpuMode::Long);
        assert_eq!(guest_mode(&v), CpuMode::Long);
        write_efer(&mut v, efer::LME | efer::NXE | efer::SCE);
        assert_eq!(read_efer(&v), efer::LME | efer::LMA | efer::NXE | efer::SCE);
        let mut v = vmcs_for(CpuMode::Protected);
        write_efer(&mut v, efer::LME | efer::LMA);
        assert_eq!(read_efer(&v), efer::LME, "LMA is not the guest's to set");
    }

    #[test]
    fn interrupts() {
        let mut v = vmcs_for(CpuMode::Real);
        assert!(!interrupt_ready(&v), "IF clear at start");
        v.write(guest_nat::RFLAGS, 0x202);
        assert_eq!(rflags(&v), 0x202);
        assert!(interrupt_ready(&v));
        v.write(guest32::INTERRUPTIBILITY_STATE, 1);
        assert!(!interrupt_ready(&v), "STI shadow");
        v.write(guest32::INTERRUPTIBILITY_STATE, 0);
        inject_interrupt(&mut v, 0x20);
        assert_eq!(v.get(control32::VM_ENTRY_INTERRUPTION_INFO), 0x8000_0020);
        assert!(!interrupt_ready(&v), "an event is already queued");
        let before = v.get(control32::PRIMARY_PROC_BASED);
        set_interrupt_window(&mut v, true);
        assert_eq!(v.get(control32::PRIMARY_PROC_BASED), before | 4);
        set_interrupt_window(&mut v, false);
        assert_eq!(v.get(control32::PRIMARY_PROC_BASED), before);
    }

    #[test]
    fn control_regs_show_the_guest_view() {
        let v = vmcs_for(CpuMode::Long);
        let c = control_regs(&v);
        assert_eq!(c.cr0, cr0::PE | cr0::ET | cr0::NE | cr0::WP | cr0::PG);
        assert_eq!(c.cr4, cr4::PAE, "VMXE is the host's");
        assert_eq!(c.cr3, 0x1000);
        assert_eq!(c.efer, efer::LME | efer::LMA);
        assert!(c.cs_long);
        let v = vmcs_for(CpuMode::Real);
        let c = control_regs(&v);
        assert_eq!(c.cr0, cr0::ET, "NE is forced but hidden");
        assert!(!c.cs_long);
        assert_eq!(c.cs_base, 0);
    }

    /// What the backend and the core do together for a CR access exit (minus the
    /// core's CPUID validation): forwarded writes are loaded by `write_cr0/4`, then
    /// skipped or answered with #GP.
    fn cr_write(v: &mut FakeVmcs, qualification: u64, ctx: &mut CrContext<'_>) -> CrOutcome {
        let outcome = match emulate_cr_access(v, qualification, ctx) {
            CrOutcome::Forward { cr: 0, value } => write_cr0(v, value, ctx),
            CrOutcome::Forward { cr: 4, value } => write_cr4(v, value, ctx),
            other => return other,
        };
        match outcome {
            CrOutcome::Done => skip_instruction(v),
            _ => inject_exception(v, Exception::GP0),
        }
        outcome
    }

    fn no_pdptes(_: u64) -> Option<[u64; 4]> {
        None
    }

    #[test]
    fn cr0_write_sets_ne_in_shadow_and_enters_long_mode() {
        let mut v = vmcs_for(CpuMode::Protected);
        v.fields.insert(ro32::VM_EXIT_INSTRUCTION_LENGTH, 3);
        let mut regs = GuestRegisters::default();
        let mut cr8 = 0;
        let mut read = no_pdptes;
        // Guest sets LME and PAE, then MOV CR0, EAX with PG|PE|NE.
        write_efer(&mut v, efer::LME);
        v.write(guest_nat::CR4, FIXED.cr4_actual(cr4::PAE));
        regs.rax = cr0::PG | cr0::PE | cr0::NE | cr0::ET;
        let mut ctx = CrContext {
            regs: &mut regs,
            fixed: &FIXED,
            cr8: &mut cr8,
            read_pdptes: &mut read,
        };
        assert_eq!(cr_write(&mut v, 0x0000, &mut ctx), CrOutcome::Done);
        assert_eq!(
            v.get(control_nat::CR0_READ_SHADOW),
            cr0::PG | cr0::PE | cr0::NE | cr0::ET
        );
        assert_eq!(v.get(guest64::IA32_EFER), efer::LME | efer::LMA);
        assert_ne!(
            v.get(control32::VM_ENTRY_CONTROLS) & entry_ctl::IA32E_MODE_GUEST as u64,
            0
        );
        assert_eq!(v.get(guest_nat::RIP), 0x7C03);
        assert_eq!(guest_mode(&v), CpuMode::Long);
    }

    #[test]
    fn cr0_write_faults_like_hardware() {
        let mut regs = GuestRegisters::default();
        let mut cr8 = 0;
        let mut read = no_pdptes;
        for bad in [cr0::PG, cr0::NW | cr0::PE] {
            let mut v = vmcs_for(CpuMode::Real);
            regs.rbx = bad;
            let mut ctx = CrContext {
                regs: &mut regs,
                fixed: &FIXED,
                cr8: &mut cr8,
                read_pdptes: &mut read,
            };
            // MOV CR0, EBX.
            assert_eq!(
                cr_write(&mut v, 0x0300, &mut ctx),
                CrOutcome::GeneralProtection
            );
            assert_eq!(v.get(guest_nat::RIP), 0x7C00, "not skipped");
            assert_eq!(v.get(control32::VM_ENTRY_INTERRUPTION_INFO), 0x8000_030D);
        }
        // Paging with LME but without PAE.
        let mut v = vmcs_for(CpuMode::Protected);
        write_efer(&mut v, efer::LME);
        regs.rax = cr0::PG | cr0::PE;
        let mut ctx = CrContext {
            regs: &mut regs,
            fixed: &FIXED,
            cr8: &mut cr8,
            read_pdptes: &mut read,
        };
        assert_eq!(cr_write(&mut v, 0, &mut ctx), CrOutcome::GeneralProtection);
        // Turning paging off in 64-bit code.
        let mut v = vmcs_for(CpuMode::Long);
        regs.rax = cr0::PE | cr0::NE;
        let mut ctx = CrContext {
            regs: &mut regs,
            fixed: &FIXED,
            cr8: &mut cr8,
            read_pdptes: &mut read,
        };
        assert_eq!(cr_write(&mut v, 0, &mut ctx), CrOutcome::GeneralProtection);
    }

    #[test]
    fn pae_paging_loads_pdptes() {
        let mut v = vmcs_for(CpuMode::Protected);
        v.write(guest_nat::CR4, FIXED.cr4_actual(cr4::PAE));
        v.write(guest_nat::CR3, 0x9000);
        let mut regs = GuestRegisters {
            rax: cr0::PG | cr0::PE | cr0::NE,
            ..Default::default()
        };
        let mut cr8 = 0;
        let mut seen = 0;
        let mut read = |cr3: u64| {
            seen = cr3;
            Some([0xA001, 0xB001, 0, 0])
        };
        let mut ctx = CrContext {
            regs: &mut regs,
            fixed: &FIXED,
            cr8: &mut cr8,
            read_pdptes: &mut read,
        };
        assert_eq!(cr_write(&mut v, 0, &mut ctx), CrOutcome::Done);
        assert_eq!(seen, 0x9000);
        assert_eq!(v.get(guest64::PDPTE0), 0xA001);
        assert_eq!(v.get(guest64::PDPTE1), 0xB001);
        assert_eq!(guest_mode(&v), CpuMode::Protected);

        // A reserved bit in a present PDPTE: #GP.
        let mut v = vmcs_for(CpuMode::Protected);
        v.write(guest_nat::CR4, FIXED.cr4_actual(cr4::PAE));
        let mut read = |_: u64| Some([0xA003, 0, 0, 0]);
        let mut ctx = CrContext {
            regs: &mut regs,
            fixed: &FIXED,
            cr8: &mut cr8,
            read_pdptes: &mut read,
        };
        assert_eq!(cr_write(&mut v, 0, &mut ctx), CrOutcome::GeneralProtection);
    }

    #[test]
    fn cr4_vmxe_cr8_cr3_lmsw() {
        let mut regs = GuestRegisters::default();
        let mut cr8 = 0;
        let mut read = no_pdptes;
        let mut v = vmcs_for(CpuMode::Long);
        v.fields.insert(ro32::VM_EXIT_INSTRUCTION_LENGTH, 4);
        regs.rcx = cr4::VMXE | cr4::PAE;
        let mut ctx = CrContext {
            regs: &mut regs,
            fixed: &FIXED,
            cr8: &mut cr8,
            read_pdptes: &mut read,
        };
        // MOV CR4, RCX goes to the core (which refuses VMXE); a valid value is
        // loaded with VMXE kept for the processor and hidden in the shadow.
        assert_eq!(
            emulate_cr_access(&mut v, 0x0104, &mut ctx),
            CrOutcome::Forward {
                cr: 4,
                value: cr4::VMXE | cr4::PAE
            }
        );
        ctx.regs.rcx = cr4::PAE | cr4::OSFXSR;
        assert_eq!(cr_write(&mut v, 0x0104, &mut ctx), CrOutcome::Done);
        assert_eq!(v.get(control_nat::CR4_READ_SHADOW), cr4::PAE | cr4::OSFXSR);
        assert_eq!(v.get(guest_nat::CR4), cr4::PAE | cr4::OSFXSR | cr4::VMXE);
        assert_eq!(control_regs(&v).cr4, cr4::PAE | cr4::OSFXSR);
        // MOV CR8, RDX then MOV RSI, CR8.
        ctx.regs.rdx = 9;
        assert_eq!(emulate_cr_access(&mut v, 0x0208, &mut ctx), CrOutcome::Done);
        assert_eq!(emulate_cr_access(&mut v, 0x0618, &mut ctx), CrOutcome::Done);
        assert_eq!(ctx.regs.rsi, 9);
        ctx.regs.rdx = 16;
        assert_eq!(
            emulate_cr_access(&mut v, 0x0208, &mut ctx),
            CrOutcome::GeneralProtection
        );
        // MOV CR3, RSP (register 4 lives in the VMCS) and back into R12.
        v.write(guest_nat::RSP, 0x5000);
        assert_eq!(emulate_cr_access(&mut v, 0x0403, &mut ctx), CrOutcome::Done);
        assert_eq!(v.get(guest_nat::CR3), 0x5000);
        assert_eq!(emulate_cr_access(&mut v, 0x0C13, &mut ctx), CrOutcome::Done);
        assert_eq!(ctx.regs.r12, 0x5000);
        // LMSW cannot clear PE.
        let mut v = vmcs_for(CpuMode::Protected);
        assert_eq!(cr_write(&mut v, 0x0008_0030, &mut ctx), CrOutcome::Done);
        assert_eq!(
            v.get(control_nat::CR0_READ_SHADOW),
            cr0::PE | cr0::ET | cr0::TS
        );
        // MOV to CR2 is not something that exits.
        assert_eq!(
            emulate_cr_access(&mut v, 0x0002, &mut ctx),
            CrOutcome::Unhandled
        );
        let _ = ro_nat::EXIT_QUALIFICATION;
    }
}
