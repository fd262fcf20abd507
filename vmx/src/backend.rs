//! VT-x at run time: entering VMX operation on this processor (IA32_FEATURE_CONTROL,
//! CR0/CR4 fixed bits, VMXON), building a vCPU (VMCS, I/O and MSR bitmaps, MSR switch
//! areas, EPT, VPID) and entering the guest.
//!
//! The pure pieces live in `controls`, `guest_state`, `checks`, `ops`, `ept`, `exit`,
//! `bitmaps` and `vpid`; this module holds the unsafe code that touches the hardware.
//!
//! **Several processors.** VMX state is per logical processor: the VMXON region (each
//! processor enters VMX operation itself: [`VmxBackend::enable`] on the first,
//! [`VmxBackend::enable_this_cpu`] on every other), the current-VMCS pointer, and the
//! VMCS a processor has active (it may cache it; SDM Vol. 3C 25.11.1). A VMCS may be
//! active on one processor only, so a vCPU moves through `Vcpu::unload` (VMCLEAR on
//! the processor that ran it); the next `run` on another processor VMPTRLDs it there,
//! rewrites the host-state fields for that processor (its TSS, GDT, IDT, GS base),
//! uses VMLAUNCH (a cleared VMCS is not launched) and invalidates the guest's EPT and
//! VPID translations that processor may hold from an earlier run. A processor is
//! recognised by its TSS's address: each processor needs a TSS of its own (a loaded
//! TSS is busy, SDM Vol. 3A 8.2.2). Every vCPU operation makes the VMCS current first
//! ([`VmxVcpu::make_current`], which asks the processor with VMPTRST), and refuses
//! (with a logged error, reads as 0) on a processor other than the one where the VMCS
//! is active.
//!
//! **Per-slice state.** DR0-DR3, DR6 and IA32_TSC_AUX are not in the VMCS (DR7 and
//! DEBUGCTL are, with the "load/save debug controls" entry and exit controls that
//! the capability MSRs force on): the first `run` of a time slice loads the vCPU's
//! own values and `Vcpu::unload` (which ends every slice) reads them back
//! ([`vcpu::slice`]), so no guest sees another's breakpoints or RDTSCP/RDPID value.
//! CR2 is not in the VMCS either; `run` switches it around every entry (the guest's
//! page-fault address must survive an exit that comes before its handler reads it).
//!
//! **Transient execution.** Just before entry the stub flushes L1D or runs VERW when
//! the kernel set that with [`VmxBackend::set_entry_flush`], and right after every
//! exit it refills the return stack buffer (`vcpu::mitigation`).
//!
//! **Interrupts.** The host runs with RFLAGS.IF=0. External interrupts arriving while
//! a guest runs cause a VM exit ("external-interrupt exiting") and, without "acknowledge
//! interrupt on exit", stay pending at the interrupt controller; `run` then opens a
//! one-instruction interrupt window (`sti; nop; cli`) so the host's own handler (its
//! timer) takes them before `run` returns.

use core::arch::naked_asm;
use core::cell::Cell;
use core::sync::atomic::{AtomicU16, Ordering};
use vcpu::mitigation::{EntryFlush, MSR_FLUSH_CMD};
use vcpu::slice::{self, SliceState, MSR_TSC_AUX};

use vcpu::paging::{Level, Perms};
use vcpu::state::{CpuState, StateError};
use vcpu::{
    Backend, BackendError, CpuMode, Exception, Exit, GuestMapping, GuestRegisters, HostMemory,
    StartState, Vcpu,
};

use crate::arch::{self, FxArea, VmFail};
use crate::bitmaps::{IoBitmap, MsrArea, MsrBitmap};
use crate::caps::VmxCaps;
use crate::checks::check_guest_state;
use crate::controls::Controls;
use crate::ept::{self, Ept};
use crate::exit::{self, entry_failure, ExitInfo};
use crate::guest_state::{CrFixed, GuestState};
use crate::ops::{self, ControlSetup, CrContext, CrOutcome, HostState};
use crate::reflect;
use crate::vmcs::{
    control32, control64, cr0, cr4, guest32, guest_nat, host_nat, intr_info, msr, reason, ro32,
    ro64, ro_nat, VmcsAccess,
};
use crate::vpid::{self, VpidAllocator};

const PAGE: u64 = 4096;
/// IA32_FEATURE_CONTROL bits (SDM Vol. 3C 24.7 / 23.7 in older editions).
const FEATURE_CONTROL_LOCK: u64 = 1 << 0;
const FEATURE_CONTROL_VMXON_OUTSIDE_SMX: u64 = 1 << 2;
/// VMREAD/VMWRITE on the current VMCS. A failed VMWRITE is remembered (the first one)
/// so that set-up can report it; a failed VMREAD reads as 0. A `blocked` one (the
/// vCPU's VMCS is active on another processor) touches nothing.
struct Hw {
    failed: Cell<Option<(u32, u32)>>,
    blocked: bool,
}

impl Hw {
    fn new() -> Self {
        Hw {
            failed: Cell::new(None),
            blocked: false,
        }
    }

    fn blocked() -> Self {
        Hw {
            failed: Cell::new(Some((0, 0))),
            blocked: true,
        }
    }

    fn note_failure(&self, field: u32, fail: VmFail) {
        if self.failed.get().is_none() {
            let number = match fail {
                // SAFETY: VMfailValid means there is a current VMCS whose error field
                // holds the reason; reading it has no side effects.
                VmFail::Valid => {
                    unsafe { arch::vmread(ro32::VM_INSTRUCTION_ERROR) }.unwrap_or(0) as u32
                }
                VmFail::Invalid => 0,
            };
            log::debug!("vmx: VMREAD/VMWRITE of field {field:#06x} failed: error {number}");
            self.failed.set(Some((field, number)));
        }
    }

    /// The first failure as a backend error.
    fn result(&self) -> Result<(), BackendError> {
        match self.failed.get() {
            None => Ok(()),
            Some((_, 0)) => Err(BackendError::Check(
                "VMWRITE failed with VMfailInvalid: no current VMCS",
            )),
            Some((_, n)) => Err(BackendError::Check(exit::instruction_error(n))),
        }
    }
}

impl VmcsAccess for Hw {
    fn read(&self, field: u32) -> u64 {
        if self.blocked {
            return 0;
        }
        // SAFETY: only used between VMPTRLD of the vCPU's VMCS and the next VMPTRLD or
        // VMCLEAR (`make_current`); VMREAD reads the current VMCS and nothing else.
        match unsafe { arch::vmread(field) } {
            Ok(v) => v,
            Err(e) => {
                self.note_failure(field, e);
                0
            }
        }
    }

    fn write(&mut self, field: u32, value: u64) {
        if self.blocked {
            return;
        }
        // SAFETY: as for `read`; the values come from the pure set-up code, which
        // computes them from the capability MSRs and the architectural rules.
        if let Err(e) = unsafe { arch::vmwrite(field, value) } {
            self.note_failure(field, e);
        }
    }
}

/// VT-x enabled on this processor; makes vCPUs.
pub struct VmxBackend {
    caps: VmxCaps,
    controls: Controls,
    fixed: CrFixed,
    vmxon_pa: u64,
    phys_bits: u8,
    max_leaf: Level,
    invept: Option<u64>,
    invvpid: Option<u64>,
    vpids: VpidAllocator,
    /// What runs just before every VM entry (`vcpu::mitigation`).
    entry_flush: EntryFlush,
}

/// The selector VERW checks before VM entry: the host's data segment. Intel's MDS
/// guidance asks for a writable data segment for the fastest VERW (the buffers are
/// overwritten whatever the check finds).
static VERW_SELECTOR: AtomicU16 = AtomicU16::new(0);

/// `vmx_enter`'s flags.
mod enter {
    /// VMRESUME rather than VMLAUNCH.
    pub const LAUNCHED: u64 = 1 << 0;
    /// VERW just before entry (MDS/TAA buffers).
    pub const VERW: u64 = 1 << 1;
    /// Write IA32_FLUSH_CMD.L1D_FLUSH just before entry (L1TF).
    pub const L1D_FLUSH: u64 = 1 << 2;
}

fn check(condition: bool, what: &'static str) -> Result<(), BackendError> {
    if condition {
        Ok(())
    } else {
        Err(BackendError::Check(what))
    }
}

/// CPUID 8000_0008 EAX[7:0], the physical-address width (36 if the leaf is missing).
fn physical_address_bits() -> u8 {
    let max = core::arch::x86_64::__cpuid(0x8000_0000).eax;
    if max >= 0x8000_0008 {
        core::arch::x86_64::__cpuid(0x8000_0008).eax as u8
    } else {
        36
    }
}

impl VmxBackend {
    /// Enters VMX operation on this processor (SDM Vol. 3C 24.7, "Enabling and
    /// Entering VMX Operation"): IA32_FEATURE_CONTROL locked with VMXON outside SMX
    /// enabled (set by us when the firmware left it unlocked), CR0 and CR4 adjusted to
    /// IA32_VMX_CR0/CR4_FIXED0/1 with CR4.VMXE, a VMXON region with the VMCS revision
    /// identifier, VMXON. `caps` comes from `caps::detect`.
    ///
    /// Also sets CR4.OSFXSR and clears CR0.EM/TS on the host so FXSAVE/FXRSTOR can
    /// switch the x87/SSE registers between guests (the host itself uses neither).
    pub fn enable(caps: &VmxCaps, mem: &mut dyn HostMemory) -> Result<VmxBackend, BackendError> {
        let controls = Controls::compute(caps).map_err(BackendError::Check)?;
        let (vmxon_pa, fixed) = enter_vmx_operation(caps, &controls, mem)?;
        let invept = ept::invept_type(caps);
        let invvpid = if controls.vpid {
            vpid::invvpid_type(caps.ept_vpid_cap)
        } else {
            None
        };
        log::info!(
            "VT-x on: VMXON region at {vmxon_pa:#x}, controls pin {:#x} proc {:#x} proc2 {:#x} exit {:#x} entry {:#x}, VPIDs {}, preemption timer {}",
            controls.pin,
            controls.proc,
            controls.proc2,
            controls.exit,
            controls.entry,
            if controls.vpid { "on" } else { "off" },
            if controls.preemption_timer { "on" } else { "off" },
        );
        Ok(VmxBackend {
            caps: *caps,
            controls,
            fixed,
            vmxon_pa,
            phys_bits: physical_address_bits(),
            max_leaf: ept::max_leaf_level(caps),
            invept,
            invvpid,
            vpids: VpidAllocator::new(),
            entry_flush: EntryFlush::None,
        })
    }

    /// Sets what every vCPU created afterwards does just before VM entry: the L1D
    /// flush (IA32_FLUSH_CMD) or VERW, as `vcpu::mitigation` decided. The caller
    /// checked that the processor has the MSR (L1D_FLUSH) or MD_CLEAR.
    pub fn set_entry_flush(&mut self, flush: EntryFlush) {
        VERW_SELECTOR.store(arch::read_ds(), Ordering::Relaxed);
        self.entry_flush = flush;
    }

    /// Enters VMX operation on the calling processor, as [`VmxBackend::enable`] does on
    /// the first: an AP calls it at bring-up so that vCPUs can run on it. Its VMXON
    /// region stays in use for the rest of the run.
    pub fn enable_this_cpu(caps: &VmxCaps, mem: &mut dyn HostMemory) -> Result<(), BackendError> {
        let controls = Controls::compute(caps).map_err(BackendError::Check)?;
        enter_vmx_operation(caps, &controls, mem).map(|_| ())
    }

    /// Leaves VMX operation (VMXOFF) on this processor and returns the VMXON region.
    /// Every vCPU must have been destroyed first.
    pub fn disable(self, mem: &mut dyn HostMemory) {
        // SAFETY: in VMX root operation (since `enable`), and no vCPU is left that
        // could be entered.
        let _ = unsafe { arch::vmxoff() };
        // SAFETY: clearing CR4.VMXE is allowed (and required to be possible) outside
        // VMX operation.
        unsafe { arch::write_cr4(arch::read_cr4() & !cr4::VMXE) };
        mem.free(self.vmxon_pa, PAGE);
    }

    /// The capabilities this backend was enabled with.
    pub fn caps(&self) -> &VmxCaps {
        &self.caps
    }

    /// The control values every guest runs with.
    pub fn controls(&self) -> &Controls {
        &self.controls
    }
}

/// This processor's part of enabling VT-x (SDM Vol. 3C 24.7): IA32_FEATURE_CONTROL,
/// CR0/CR4 fixed bits with CR4.VMXE and OSFXSR, a VMXON region, VMXON, and dropping
/// translations cached before. Returns the VMXON region and the fixed-bit MSRs.
fn enter_vmx_operation(
    caps: &VmxCaps,
    controls: &Controls,
    mem: &mut dyn HostMemory,
) -> Result<(u64, CrFixed), BackendError> {
    check(
        caps.vmcs_size as u64 <= PAGE && caps.vmcs_size != 0,
        "IA32_VMX_BASIC reports a VMCS size of 0 or above 4 KiB",
    )?;
    // SAFETY: CPUID said VMX exists (caps), so these architectural MSRs exist
    // (SDM Vol. 3D A.7, A.8; Vol. 4 Table 2-2 for IA32_FEATURE_CONTROL).
    let (fc, fixed) = unsafe {
        (
            arch::rdmsr(msr::IA32_FEATURE_CONTROL),
            CrFixed {
                cr0_fixed0: arch::rdmsr(msr::IA32_VMX_CR0_FIXED0),
                cr0_fixed1: arch::rdmsr(msr::IA32_VMX_CR0_FIXED1),
                cr4_fixed0: arch::rdmsr(msr::IA32_VMX_CR4_FIXED0),
                cr4_fixed1: arch::rdmsr(msr::IA32_VMX_CR4_FIXED1),
            },
        )
    };
    if fc & FEATURE_CONTROL_LOCK == 0 {
        // SAFETY: the MSR is unlocked, so writing lock + VMXON-outside-SMX is
        // allowed; it changes nothing else until reset.
        unsafe {
            arch::wrmsr(
                msr::IA32_FEATURE_CONTROL,
                fc | FEATURE_CONTROL_LOCK | FEATURE_CONTROL_VMXON_OUTSIDE_SMX,
            )
        };
    } else {
        check(
            fc & FEATURE_CONTROL_VMXON_OUTSIDE_SMX != 0,
            "IA32_FEATURE_CONTROL is locked with VMXON outside SMX disabled: enable VT-x in the firmware setup",
        )?;
    }
    check(
        fixed.cr4_fixed1 & cr4::VMXE != 0,
        "IA32_VMX_CR4_FIXED1 does not allow CR4.VMXE",
    )?;

    // SAFETY: reading control registers has no side effects.
    let (old_cr0, old_cr4) = unsafe { (arch::read_cr0(), arch::read_cr4()) };
    let new_cr0 = ((old_cr0 | fixed.cr0_fixed0) & fixed.cr0_fixed1) & !(cr0::EM | cr0::TS);
    let new_cr4 = (old_cr4 | fixed.cr4_fixed0 | cr4::VMXE | cr4::OSFXSR) & fixed.cr4_fixed1;
    check(
        new_cr0 & fixed.cr0_fixed0 == fixed.cr0_fixed0
            && new_cr4 & fixed.cr4_fixed0 == fixed.cr4_fixed0,
        "the host cannot satisfy IA32_VMX_CR0/CR4_FIXED0 and FIXED1 together",
    )?;
    check(
        new_cr0 & (cr0::PE | cr0::PG) == cr0::PE | cr0::PG,
        "IA32_VMX_CR0_FIXED1 does not allow the host's protected-mode paging",
    )?;

    let vmxon_pa = mem.alloc(PAGE, PAGE).ok_or(BackendError::OutOfMemory)?;
    // SAFETY: the page was just allocated for the VMXON region and is reached
    // through the hypervisor's physical mapping; bits 30:0 of its first word hold
    // the revision identifier, bit 31 clear (SDM Vol. 3C 25.11.5).
    unsafe { (mem.virt(vmxon_pa) as *mut u32).write_volatile(caps.revision_id & 0x7FFF_FFFF) };

    // SAFETY: the new values only add bits VMX operation requires (NE, VMXE, and
    // whatever else FIXED0 demands) and OSFXSR, and drop EM/TS, none of which the
    // host kernel depends on (it uses neither x87 nor SSE instructions).
    unsafe {
        arch::write_cr0(new_cr0);
        arch::write_cr4(new_cr4);
    }
    // SAFETY: every precondition of VMXON was established above: feature control
    // locked with VMX enabled, CR0/CR4 fixed bits, CR4.VMXE, a 4 KiB-aligned region
    // with the revision identifier.
    if let Err(e) = unsafe { arch::vmxon(vmxon_pa) } {
        mem.free(vmxon_pa, PAGE);
        return Err(BackendError::Check(match e {
            VmFail::Invalid => "VMXON failed (VMfailInvalid): the VMXON region or its revision identifier was refused, or the processor is already in VMX operation",
            VmFail::Valid => "VMXON failed (VMfailValid): VMXON executed in VMX root operation (VT-x is already on)",
        }));
    }
    // Translations cached before VMXON (by firmware, say) must not reach guests.
    // SAFETY: in VMX root operation now; the types are ones the CPU reports.
    unsafe {
        if caps.ept_vpid_cap & ept::invept::CAP_ALL_CONTEXT != 0 && caps.invept {
            let _ = arch::invept(ept::invept::ALL_CONTEXT, 0);
        }
        if controls.vpid && caps.ept_vpid_cap & vpid::invvpid::CAP_ALL_CONTEXT != 0 {
            let _ = arch::invvpid(vpid::invvpid::ALL_CONTEXT, 0);
        }
    }
    Ok((vmxon_pa, fixed))
}

/// The host state of the running processor.
fn current_host_state() -> HostState {
    let (gdtr_base, _) = arch::sgdt();
    let (idtr_base, _) = arch::sidt();
    let tr = arch::read_tr();
    let tr_base = this_cpu();
    // SAFETY: control registers and architectural MSRs present on every processor
    // with VMX in IA-32e mode (SYSENTER, FS/GS base, EFER, PAT).
    unsafe {
        HostState {
            cr0: arch::read_cr0(),
            cr3: arch::read_cr3(),
            cr4: arch::read_cr4(),
            cs: arch::read_cs(),
            ss: arch::read_ss(),
            ds: arch::read_ds(),
            es: arch::read_es(),
            fs: arch::read_fs(),
            gs: arch::read_gs(),
            tr,
            fs_base: arch::rdmsr(msr::IA32_FS_BASE),
            gs_base: arch::rdmsr(msr::IA32_GS_BASE),
            tr_base,
            gdtr_base,
            idtr_base,
            sysenter_cs: arch::rdmsr(msr::IA32_SYSENTER_CS),
            sysenter_esp: arch::rdmsr(msr::IA32_SYSENTER_ESP),
            sysenter_eip: arch::rdmsr(msr::IA32_SYSENTER_EIP),
            efer: arch::rdmsr(msr::IA32_EFER),
            pat: arch::rdmsr(msr::IA32_PAT),
        }
    }
}

/// One virtual CPU: its VMCS and everything the VMCS points at.
pub struct VmxVcpu {
    vmcs_pa: u64,
    /// I/O bitmaps A and B, two consecutive pages.
    io_bitmaps_pa: u64,
    msr_bitmap_pa: u64,
    msr_area_pa: u64,
    msr_area: *mut MsrArea,
    ept: Option<Ept>,
    eptp: u64,
    /// 0 when VPIDs are not used.
    vpid: u16,
    regs: GuestRegisters,
    launched: bool,
    /// Set after a failed VM entry: the vCPU is not entered again.
    failed: Option<Exit>,
    fixed: CrFixed,
    phys_bits: u8,
    /// The preemption-timer rate (TSC ticks per timer tick = 2^shift), when active.
    timer_shift: Option<u8>,
    /// The guest's CR8 (CR8 accesses exit so they cannot reach the host's TPR).
    cr8: u64,
    /// The guest's CR2. VM entry and exit do not switch CR2 (it is not in the VMCS):
    /// a page fault in the guest leaves its address in the processor, where another
    /// guest would read it. `run` loads this before entry and reads it back after.
    cr2: u64,
    /// The guest's x87/SSE registers while the host or another guest runs.
    fx: FxArea,
    /// Where host-physical 0 is mapped in the hypervisor (`HostMemory::virt` is
    /// linear): PAE PDPTEs are read through the EPT from there.
    phys_offset: usize,
    invept: Option<u64>,
    invvpid: Option<u64>,
    /// The basic reason of the last VM exit (for `skip_instruction`).
    last_reason: u32,
    /// The processor (its TSS address, see [`this_cpu`]) on which the VMCS is active,
    /// 0 after VMCLEAR.
    active_on: Cell<u64>,
    /// The processor whose host state the VMCS holds and on which the guest last ran.
    host_cpu: u64,
    /// DR0-DR3, DR6 and TSC_AUX, switched at slice boundaries.
    slice: SliceState,
    /// `enter::VERW` or `enter::L1D_FLUSH` (or 0), from the backend's `entry_flush`.
    entry_flags: u64,
    /// The MXCSR bits FXRSTOR accepts on this machine (`load_state` checks images).
    mxcsr_mask: u32,
    /// `load_state` replaced the guest's paging state: the next entry drops the
    /// translations any processor may cache for its EPTP and VPID.
    flush_on_entry: bool,
}

// SAFETY: the raw pointer (`msr_area`) and the RAM addresses point at memory this vCPU
// owns for its whole life, reachable from every processor through the same mapping;
// the processor-resident part (an active VMCS) is handed over with `Vcpu::unload`.
unsafe impl Send for VmxVcpu {}

/// The calling processor, named by its TSS's linear address: every processor has a
/// TSS of its own (a TSS is busy while loaded, SDM Vol. 3A 8.2.2).
fn this_cpu() -> u64 {
    let (gdtr_base, _) = arch::sgdt();
    let tr = arch::read_tr();
    // SAFETY: TR indexes a 16-byte TSS descriptor in the GDT the processor is using.
    unsafe {
        let descriptor = (gdtr_base + (tr as u64 & !7)) as *const u64;
        ops::system_descriptor_base(
            descriptor.read_unaligned(),
            descriptor.add(1).read_unaligned(),
        )
    }
}

impl VmxVcpu {
    /// VMPTRLD this vCPU's VMCS unless it is already current on this processor. On a
    /// processor other than the one where the VMCS is active (no `unload` there), it
    /// loads nothing: the result reads 0 and writes nothing.
    fn make_current(&self) -> Hw {
        let me = this_cpu();
        let active = self.active_on.get();
        if active != 0 && active != me {
            log::error!(
                "vmx: vCPU used on another processor while its VMCS {:#x} is active elsewhere (Vcpu::unload was not called)",
                self.vmcs_pa
            );
            return Hw::blocked();
        }
        // SAFETY: in VMX root operation (every processor that runs vCPUs enabled VT-x).
        if active == 0 || unsafe { arch::vmptrst() } != self.vmcs_pa {
            // SAFETY: the VMCS region belongs to this vCPU, carries the revision
            // identifier, and is not active on any other processor (checked above);
            // loading it only changes which VMCS VMREAD/VMWRITE/VMRESUME act on.
            match unsafe { arch::vmptrld(self.vmcs_pa) } {
                Ok(()) => self.active_on.set(me),
                Err(e) => {
                    log::error!("vmx: VMPTRLD {:#x} failed: {e:?}", self.vmcs_pa);
                    return Hw::blocked();
                }
            }
        }
        Hw::new()
    }

    /// The guest-physical range `[gpa, gpa + len)` in hypervisor memory, if it lies in
    /// one page the EPT maps (so never a page taken from the guest).
    fn guest_ptr(&self, gpa: u64, len: u64) -> Option<*const u8> {
        if gpa % PAGE + len > PAGE {
            return None;
        }
        let mut tables = LinearTables(self.phys_offset);
        let (hpa, _) = self.ept.as_ref()?.translate(&mut tables, gpa)?;
        Some((self.phys_offset + hpa as usize) as *const u8)
    }

    fn read_pdptes(&self, cr3: u64) -> Option<[u64; 4]> {
        // PAE CR3 is 32-byte aligned: the four entries lie in one page.
        let p = self.guest_ptr(cr3 & !31, 32)? as *const u64;
        let mut out = [0; 4];
        for (i, e) in out.iter_mut().enumerate() {
            // SAFETY: `guest_ptr` checked that the 32 bytes lie in this guest's RAM,
            // which the hypervisor maps for the VM's lifetime.
            *e = unsafe { p.add(i).read_unaligned() };
        }
        Some(out)
    }

    /// The guest's value of an MSR switched through the MSR areas.
    fn switched_msr(&self, index: u32) -> Option<u64> {
        // SAFETY: `msr_area` points at this vCPU's MSR-area page (owned until destroy);
        // the processor writes it only during VM exits, never concurrently with this.
        unsafe { (*self.msr_area).guest_value(index) }
    }

    /// The parts of the state kept outside the VMCS.
    fn soft_state(&self) -> crate::state::Soft {
        crate::state::Soft {
            regs: self.regs,
            cr2: self.cr2,
            cr8: self.cr8,
            dr: self.slice.dr,
            dr6: self.slice.dr6,
            tsc_aux: self.slice.tsc_aux(),
            // SAFETY: `msr_area` points at this vCPU's MSR-area page (owned until
            // destroy); the processor writes it only during VM exits.
            switched: unsafe { (*self.msr_area).guest_values() },
            fx: self.fx.clone(),
        }
    }

    /// VMCLEAR on this processor, where the VMCS is active: the vCPU is unloaded.
    fn clear_here(&mut self) {
        // SAFETY: in VMX root operation; the VMCS is this vCPU's and active here.
        match unsafe { arch::vmclear(self.vmcs_pa) } {
            Ok(()) => {
                self.active_on.set(0);
                self.launched = false;
            }
            Err(e) => log::error!("vmx: VMCLEAR {:#x} failed: {e:?}", self.vmcs_pa),
        }
    }

    /// An exit the guest cannot continue from: remembered, so `run` keeps reporting it.
    fn fail(&mut self, exit: Exit) -> Exit {
        self.failed = Some(exit);
        exit
    }

    /// VMLAUNCH/VMRESUME failed without a VM exit.
    fn instruction_failure(&mut self, hw: &Hw, fail: VmFail) -> Exit {
        let exit = match fail {
            VmFail::Invalid => Exit::EntryFailure {
                code: 0,
                reason: entry_failure::VMFAIL_INVALID,
            },
            VmFail::Valid => {
                let number = hw.read(ro32::VM_INSTRUCTION_ERROR) as u32;
                let host = current_host_state();
                let reason = match (number, host.check(&self.fixed)) {
                    // Name the host-state field when the software check finds it.
                    (8, Err(why)) => why,
                    _ => exit::entry_instruction_error(number),
                };
                Exit::EntryFailure {
                    code: number as u64,
                    reason,
                }
            }
        };
        self.fail(exit)
    }
}

fn free_vcpu(mem: &mut dyn HostMemory, v: &mut VmxVcpu) {
    for (pa, size) in [
        (v.vmcs_pa, PAGE),
        (v.io_bitmaps_pa, 2 * PAGE),
        (v.msr_bitmap_pa, PAGE),
        (v.msr_area_pa, PAGE),
    ] {
        if pa != 0 {
            mem.free(pa, size);
        }
    }
    v.vmcs_pa = 0;
    if let Some(ept) = v.ept.take() {
        ept.destroy(mem, |m, table| m.free(table, PAGE));
    }
}

impl Backend for VmxBackend {
    type Vcpu = VmxVcpu;

    fn name(&self) -> &'static str {
        "VT-x"
    }

    fn create_vcpu(
        &mut self,
        mem: &mut dyn HostMemory,
        ram: &[GuestMapping],
        start: &StartState,
    ) -> Result<VmxVcpu, BackendError> {
        let vpid = if self.controls.vpid {
            self.vpids.alloc().ok_or(BackendError::NoTagsLeft)?
        } else {
            0
        };
        let mut v = VmxVcpu {
            vmcs_pa: 0,
            io_bitmaps_pa: 0,
            msr_bitmap_pa: 0,
            msr_area_pa: 0,
            msr_area: core::ptr::null_mut(),
            ept: None,
            eptp: 0,
            vpid,
            regs: start.regs,
            launched: false,
            failed: None,
            fixed: self.fixed,
            phys_bits: self.phys_bits,
            timer_shift: self
                .controls
                .preemption_timer
                .then_some(self.caps.preemption_timer_shift),
            cr8: 0,
            cr2: 0,
            fx: FxArea::initial(),
            slice: SliceState::new(SliceState::detect_tsc_aux(), true),
            entry_flags: match self.entry_flush {
                EntryFlush::None => 0,
                EntryFlush::Verw => enter::VERW,
                EntryFlush::L1d => enter::L1D_FLUSH,
            },
            phys_offset: mem.virt(0) as usize,
            invept: self.invept,
            invvpid: self.invvpid,
            last_reason: u32::MAX,
            active_on: Cell::new(0),
            host_cpu: 0,
            // SAFETY: `enable`/`enable_this_cpu` set CR4.OSFXSR and cleared CR0.EM/TS
            // on every processor that creates vCPUs.
            mxcsr_mask: unsafe { vcpu::fpu::host_mxcsr_mask() },
            flush_on_entry: false,
        };
        let result = self.build_vcpu(mem, ram, start, &mut v);
        match result {
            Ok(()) => Ok(v),
            Err(e) => {
                self.destroy_vcpu(mem, v);
                Err(e)
            }
        }
    }

    fn destroy_vcpu(&mut self, mem: &mut dyn HostMemory, mut vcpu: VmxVcpu) {
        if vcpu.vmcs_pa != 0 {
            // SAFETY: the VMCS is this vCPU's; VMCLEAR writes any processor-cached
            // state back and makes it not current, so its page can be reused.
            // A VMCS active on another processor must be cleared there (`unload`).
            let active = vcpu.active_on.get();
            if active == 0 || active == this_cpu() {
                let _ = unsafe { arch::vmclear(vcpu.vmcs_pa) };
            } else {
                log::error!("vmx: destroying a vCPU whose VMCS is active on another processor");
            }
        }
        // Drop every translation tagged with this guest's EPTP and VPID before the
        // tables and the VPID can be handed to another guest.
        // SAFETY: in VMX root operation; the types are ones the processor supports.
        unsafe {
            if let (Some(kind), true) = (vcpu.invept, vcpu.eptp != 0) {
                let _ = arch::invept(kind, vcpu.eptp);
            }
            if let (Some(kind), true) = (vcpu.invvpid, vcpu.vpid != 0) {
                let _ = arch::invvpid(kind, vcpu.vpid);
            }
        }
        self.vpids.free(vcpu.vpid);
        free_vcpu(mem, &mut vcpu);
    }
}

impl VmxBackend {
    fn build_vcpu(
        &mut self,
        mem: &mut dyn HostMemory,
        ram: &[GuestMapping],
        start: &StartState,
        v: &mut VmxVcpu,
    ) -> Result<(), BackendError> {
        let guest = GuestState::for_start(start, &self.fixed);
        check_guest_state(&guest, &self.fixed, self.phys_bits).map_err(BackendError::Check)?;
        let entry = self
            .controls
            .entry_for(guest.ia32e)
            .map_err(BackendError::Check)?;

        // EPT: exactly the guest's RAM, everything else faults to the core.
        let mut table = Ept::new(mem).map_err(BackendError::Map)?;
        let mapped = ram
            .iter()
            .try_for_each(|m| table.map_guest(mem, m, self.max_leaf));
        v.eptp = ept::eptp(table.root());
        v.ept = Some(table);
        mapped.map_err(BackendError::Map)?;

        v.vmcs_pa = mem.alloc(PAGE, PAGE).ok_or(BackendError::OutOfMemory)?;
        v.io_bitmaps_pa = mem.alloc(2 * PAGE, PAGE).ok_or(BackendError::OutOfMemory)?;
        v.msr_bitmap_pa = mem.alloc(PAGE, PAGE).ok_or(BackendError::OutOfMemory)?;
        v.msr_area_pa = mem.alloc(PAGE, PAGE).ok_or(BackendError::OutOfMemory)?;
        v.msr_area = mem.virt(v.msr_area_pa) as *mut MsrArea;
        // SAFETY: each region was just allocated (zeroed, page-aligned, of the size of
        // its type or larger) for this vCPU alone and is reached through the
        // physical mapping; the processor does not use them before VMLAUNCH.
        unsafe {
            (mem.virt(v.vmcs_pa) as *mut u32).write_volatile(self.caps.revision_id & 0x7FFF_FFFF);
            (*(mem.virt(v.io_bitmaps_pa) as *mut IoBitmap)).intercept_all();
            (*(mem.virt(v.io_bitmaps_pa + PAGE) as *mut IoBitmap)).intercept_all();
            (*(mem.virt(v.msr_bitmap_pa) as *mut MsrBitmap)).init();
            // SAFETY (rdmsr): only the syscall MSRs are read, which exist on every
            // processor with IA-32e mode.
            (*v.msr_area).init(|m| arch::rdmsr(m));
        }

        // SAFETY: the VMCS region is ours and holds the revision identifier; VMCLEAR
        // initialises its launch state to "clear" (SDM Vol. 3C 25.11.3).
        unsafe { arch::vmclear(v.vmcs_pa) }
            .map_err(|_| BackendError::Check("VMCLEAR of a new VMCS failed"))?;
        // SAFETY: as above; loading it makes the following VMWRITEs act on it.
        unsafe { arch::vmptrld(v.vmcs_pa) }.map_err(|_| {
            BackendError::Check("VMPTRLD of a new VMCS failed (revision identifier refused?)")
        })?;
        v.active_on.set(this_cpu());
        v.host_cpu = this_cpu();

        let host = current_host_state();
        host.check(&self.fixed).map_err(BackendError::Check)?;
        let mut hw = Hw::new();
        ops::write_controls(
            &mut hw,
            &ControlSetup {
                controls: self.controls,
                entry,
                io_bitmap_a: v.io_bitmaps_pa,
                io_bitmap_b: v.io_bitmaps_pa + PAGE,
                msr_bitmap: v.msr_bitmap_pa,
                msr_guest_list: v.msr_area_pa,
                msr_host_list: v.msr_area_pa + MsrArea::HOST_OFFSET,
                msr_count: MsrArea::COUNT,
                eptp: v.eptp,
                vpid: v.vpid,
                fixed: self.fixed,
            },
        );
        host.write(&mut hw);
        guest.write(&mut hw);
        hw.result()?;

        // The tables are new, but their frames (and the VPID) may have served another
        // guest whose translations the processor still caches.
        // SAFETY: in VMX root operation; the types are ones the processor supports.
        unsafe {
            if let Some(kind) = self.invept {
                arch::invept(kind, v.eptp).map_err(|_| BackendError::Check("INVEPT failed"))?;
            }
            if let (Some(kind), true) = (self.invvpid, v.vpid != 0) {
                arch::invvpid(kind, v.vpid).map_err(|_| BackendError::Check("INVVPID failed"))?;
            }
        }
        Ok(())
    }
}

/// Enters the guest and returns on the next VM exit (0) or when VMLAUNCH/VMRESUME
/// fails: 1 for VMfailInvalid, 2 for VMfailValid.
///
/// Saves the host's callee-saved registers, sets HOST_RSP to the stack pointer at the
/// point of entry (the VM exit resumes there with the `regs` pointer on top of the
/// stack) and HOST_RIP to the exit path, flushes L1D (`enter::L1D_FLUSH`) or runs VERW
/// (`enter::VERW`) as `flags` say, loads the guest's general-purpose registers from
/// `regs` (the `repr(C)` order of [`GuestRegisters`]: rax rbx rcx rdx rsi rdi rbp
/// r8..r15, 8 bytes each), then VMLAUNCH or, with `enter::LAUNCHED`, VMRESUME. On a VM
/// exit it stores the guest's registers back and refills the return stack buffer
/// ([`vcpu::rsb_fill_asm!`]) before its RET. RSP, RIP and RFLAGS are the VMCS's.
///
/// The flush runs after the last host data the stub touches but the guest's own
/// registers; VERW's memory operand is the host's data selector (`VERW_SELECTOR`).
///
/// A VM exit loads RFLAGS with only bit 1 set (SDM Vol. 3C 28.5.3): IF and DF are 0.
#[unsafe(naked)]
unsafe extern "C" fn vmx_enter(_regs: *mut GuestRegisters, _flags: u64) -> u64 {
    naked_asm!(
        "push rbp",
        "push rbx",
        "push r12",
        "push r13",
        "push r14",
        "push r15",
        "push rdi",
        "mov rax, {host_rsp}",
        "vmwrite rax, rsp",
        "jbe 7f",
        "mov rax, {host_rip}",
        "lea rdx, [rip + 8f]",
        "vmwrite rax, rdx",
        "jbe 7f",
        "test esi, {l1d}",
        "jz 3f",
        "mov ecx, {flush_cmd}",
        "mov eax, 1",
        "xor edx, edx",
        "wrmsr",
        "3:",
        "test esi, {verw}",
        "jz 4f",
        "verw word ptr [rip + {selector}]",
        "4:",
        // CF from this test survives the MOVs below (MOV does not change flags).
        "bt esi, 0",
        "mov rax, [rdi]",
        "mov rbx, [rdi + 8]",
        "mov rcx, [rdi + 16]",
        "mov rdx, [rdi + 24]",
        "mov rsi, [rdi + 32]",
        "mov rbp, [rdi + 48]",
        "mov r8, [rdi + 56]",
        "mov r9, [rdi + 64]",
        "mov r10, [rdi + 72]",
        "mov r11, [rdi + 80]",
        "mov r12, [rdi + 88]",
        "mov r13, [rdi + 96]",
        "mov r14, [rdi + 104]",
        "mov r15, [rdi + 112]",
        "mov rdi, [rdi + 40]",
        "jc 6f",
        "vmlaunch",
        "jmp 7f",
        "6:",
        "vmresume",
        // VMLAUNCH/VMRESUME (or a VMWRITE above) failed: CF=1 VMfailInvalid, ZF=1
        // VMfailValid. RSP is unchanged, so the saved registers are on the stack.
        "7:",
        "mov eax, 1",
        "jc 9f",
        "mov eax, 2",
        "9:",
        "add rsp, 8",
        "pop r15",
        "pop r14",
        "pop r13",
        "pop r12",
        "pop rbx",
        "pop rbp",
        "ret",
        // VM exit: RSP = HOST_RSP, the `regs` pointer on top.
        "8:",
        "push rdi",
        "mov rdi, [rsp + 8]",
        "mov [rdi], rax",
        "mov [rdi + 8], rbx",
        "mov [rdi + 16], rcx",
        "mov [rdi + 24], rdx",
        "mov [rdi + 32], rsi",
        "mov [rdi + 48], rbp",
        "mov [rdi + 56], r8",
        "mov [rdi + 64], r9",
        "mov [rdi + 72], r10",
        "mov [rdi + 80], r11",
        "mov [rdi + 88], r12",
        "mov [rdi + 96], r13",
        "mov [rdi + 104], r14",
        "mov [rdi + 112], r15",
        "pop rax",
        "mov [rdi + 40], rax",
        vcpu::rsb_fill_asm!(),
        "add rsp, 8",
        "pop r15",
        "pop r14",
        "pop r13",
        "pop r12",
        "pop rbx",
        "pop rbp",
        "xor eax, eax",
        "ret",
        host_rsp = const host_nat::RSP,
        host_rip = const host_nat::RIP,
        l1d = const enter::L1D_FLUSH,
        verw = const enter::VERW,
        flush_cmd = const MSR_FLUSH_CMD,
        selector = sym VERW_SELECTOR,
    )
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The vCPU's EPT tables read where `HostMemory::virt` put them (linear); for
/// walking only, never for new tables.
struct LinearTables(usize);

impl vcpu::paging::TableMemory for LinearTables {
    fn alloc_table(&mut self) -> Option<u64> {
        None
    }

    fn table(&mut self, hpa: u64) -> &mut [u64; 512] {
        // SAFETY: only called by `translate` on this vCPU's own EPT tables, which
        // stay allocated until `destroy_vcpu` and are mapped linearly from offset .0
        // (`HostMemory::virt`); nothing else writes them while the vCPU is held.
        unsafe { &mut *((self.0 + hpa as usize) as *mut [u64; 512]) }
    }
}

/// A vCPU's EPT exists from `create_vcpu` until `destroy_vcpu`.
const NO_EPT: &str = "the vCPU has no EPT";

impl Vcpu for VmxVcpu {
    fn map_page(
        &mut self,
        mem: &mut dyn HostMemory,
        gpa: u64,
        hpa: u64,
        writable: bool,
    ) -> Result<(), BackendError> {
        let ept = self.ept.as_mut().ok_or(BackendError::Check(NO_EPT))?;
        let perms = if writable { Perms::RWX } else { Perms::RX };
        ept.map(mem, gpa, hpa, PAGE, perms, Level::Pt)
            .map_err(BackendError::Map)
    }

    fn unmap_page(&mut self, mem: &mut dyn HostMemory, gpa: u64) -> Result<(), BackendError> {
        let ept = self.ept.as_mut().ok_or(BackendError::Check(NO_EPT))?;
        if ept.unmap_page(mem, gpa).map_err(BackendError::Map)? {
            // Combined and guest-physical mappings derived from the old leaf may be
            // cached: INVEPT at the next entry (SDM Vol. 3C 29.4.3.1).
            self.flush_on_entry = true;
        }
        Ok(())
    }

    /// Runs the guest until an exit the core must see. Control-register accesses that
    /// exit only because the host owns CR0/CR4 bits (or intercepts CR8/CR3) are handled
    /// here and the guest is resumed.
    ///
    /// `slice_tsc` programs the VMX-preemption timer (`slice_tsc >> rate`, clamped to
    /// 32 bits, SDM Vol. 3C 26.5.1) when the processor has it; otherwise the
    /// hypervisor's timer interrupt ends the slice.
    fn run(&mut self, slice_tsc: u64) -> Exit {
        if let Some(exit) = self.failed {
            return exit;
        }
        let active = self.active_on.get();
        let me = this_cpu();
        if active != 0 && active != me {
            return Exit::EntryFailure {
                code: 0,
                reason: "the vCPU's VMCS is active on another processor: Vcpu::unload must run there first",
            };
        }
        let mut hw = self.make_current();
        if self.host_cpu != me || self.flush_on_entry {
            if self.host_cpu != me {
                // Another processor ran the guest last: this one's host state (TSS,
                // GDT, IDT, GS base) goes into the VMCS.
                current_host_state().write(&mut hw);
            }
            // Translations this processor may still cache for the guest from an
            // earlier run here, or from before `load_state`, are dropped.
            // SAFETY: in VMX root operation; the types are ones the processor supports.
            unsafe {
                if let Some(kind) = self.invept {
                    let _ = arch::invept(kind, self.eptp);
                }
                if let (Some(kind), true) = (self.invvpid, self.vpid != 0) {
                    let _ = arch::invvpid(kind, self.vpid);
                }
            }
            self.host_cpu = me;
            self.flush_on_entry = false;
        }
        if !self.launched {
            let ia32e = hw.read(control32::VM_ENTRY_CONTROLS) as u32
                & crate::vmcs::entry_ctl::IA32E_MODE_GUEST
                != 0;
            let state = GuestState::read(&hw, ia32e);
            if let Err(reason) = check_guest_state(&state, &self.fixed, self.phys_bits) {
                return self.fail(Exit::EntryFailure {
                    code: (reason::ENTRY_FAILURE | reason::INVALID_GUEST_STATE) as u64,
                    reason,
                });
            }
        }
        if let Some(shift) = self.timer_shift {
            let ticks = (slice_tsc >> shift).clamp(1, u32::MAX as u64);
            hw.write(guest32::PREEMPTION_TIMER_VALUE, ticks);
        }
        // SAFETY: this processor runs this vCPU until `unload`.
        unsafe { self.slice.load() };
        loop {
            // SAFETY: the host set CR4.OSFXSR and cleared CR0.EM/TS in `enable`; the
            // area holds either the initial image or one FXSAVE wrote. CR2 is only
            // written when it differs (MOV to CR2 serializes), as it usually does not
            // when the same vCPU runs on.
            unsafe {
                arch::fxrstor(&self.fx);
                if arch::read_cr2() != self.cr2 {
                    arch::write_cr2(self.cr2);
                }
            }
            let launched = if self.launched { enter::LAUNCHED } else { 0 };
            let flags = self.entry_flags | launched;
            // SAFETY: the VMCS is current and was fully set up by `create_vcpu` (its
            // guest state passed the software checks, its EPT maps only this guest's
            // RAM, every I/O port and all but the switched MSRs exit); the stub
            // preserves the host's callee-saved registers and returns on the host
            // stack through HOST_RSP/HOST_RIP. `enter::L1D_FLUSH` is only set where
            // CPUID enumerates IA32_FLUSH_CMD (`set_entry_flush`'s caller checked).
            let status = unsafe { vmx_enter(&mut self.regs, flags) };
            // SAFETY: as for FXRSTOR above; reading CR2 has no side effects.
            unsafe {
                arch::fxsave(&mut self.fx);
                self.cr2 = arch::read_cr2();
            }
            match status {
                0 => {}
                1 => return self.instruction_failure(&hw, VmFail::Invalid),
                _ => return self.instruction_failure(&hw, VmFail::Valid),
            }
            let info = ExitInfo {
                reason: hw.read(ro32::EXIT_REASON) as u32,
                qualification: hw.read(ro_nat::EXIT_QUALIFICATION),
                guest_physical: hw.read(ro64::GUEST_PHYSICAL_ADDRESS),
                interruption_info: hw.read(ro32::VM_EXIT_INTERRUPTION_INFO) as u32,
                idt_vectoring: hw.read(ro32::IDT_VECTORING_INFO) as u32,
                rax: self.regs.rax,
                rcx: self.regs.rcx,
                rdx: self.regs.rdx,
            };
            if info.entry_failed() {
                let mut exit = exit::decode(&info);
                if info.basic() == reason::INVALID_GUEST_STATE {
                    // Name the field if the software checks can.
                    let ia32e = hw.read(control32::VM_ENTRY_CONTROLS) as u32
                        & crate::vmcs::entry_ctl::IA32E_MODE_GUEST
                        != 0;
                    let state = GuestState::read(&hw, ia32e);
                    if let Err(why) = check_guest_state(&state, &self.fixed, self.phys_bits) {
                        exit = Exit::EntryFailure {
                            code: info.reason as u64,
                            reason: why,
                        };
                    }
                }
                return self.fail(exit);
            }
            self.launched = true;
            self.last_reason = info.basic();
            // An event whose delivery the exit interrupted is delivered again.
            ops::reinject_vectoring(&mut hw);
            // #DB and #AC go straight back to the guest (see `reflect`); DR6 is the
            // guest's while the slice state is loaded.
            if info.basic() == reason::EXCEPTION_OR_NMI {
                // SAFETY: ring 0; the slice state is loaded on this processor.
                let dr6 = unsafe { slice::read_dr6() };
                if let Some(new) = reflect::reflect_exception(&mut hw, &info, dr6) {
                    if new != dr6 {
                        // SAFETY: as above; `dr6_after_db` keeps bits 63:32 clear.
                        unsafe { slice::write_dr6(new) };
                    }
                }
            }
            match info.basic() {
                reason::CR_ACCESS => {
                    let mut cr8 = self.cr8;
                    let mut regs = self.regs;
                    let fixed = self.fixed;
                    let mut read = |cr3: u64| self.read_pdptes(cr3);
                    let mut ctx = CrContext {
                        regs: &mut regs,
                        fixed: &fixed,
                        cr8: &mut cr8,
                        read_pdptes: &mut read,
                    };
                    let outcome = ops::emulate_cr_access(&mut hw, info.qualification, &mut ctx);
                    if outcome == CrOutcome::GeneralProtection {
                        log::debug!(
                            "vmx: control-register access (qualification {:#x}) at RIP {:#x} raises #GP",
                            info.qualification,
                            hw.read(guest_nat::RIP)
                        );
                    }
                    self.regs = regs;
                    self.cr8 = cr8;
                    match outcome {
                        CrOutcome::Unhandled => return exit::decode(&info),
                        CrOutcome::Forward { cr, value } => {
                            return Exit::CrWrite {
                                cr,
                                value: Some(value),
                            }
                        }
                        CrOutcome::Done | CrOutcome::GeneralProtection => continue,
                    }
                }
                reason::EXTERNAL_INTERRUPT => {
                    // SAFETY: the interrupt that caused the exit is still pending (no
                    // acknowledge-on-exit); one instruction with IF=1 lets the host's
                    // IDT handler take it, then interrupts are off again.
                    unsafe { core::arch::asm!("sti", "nop", "cli", options(nomem, nostack)) };
                }
                reason::EXCEPTION_OR_NMI
                    if info.interruption_info & intr_info::TYPE_MASK == intr_info::TYPE_NMI =>
                {
                    // "NMI exiting" consumed a host NMI: give it to the host's handler.
                    // SAFETY: INT 2 runs the host's NMI handler as the NMI would have.
                    unsafe { core::arch::asm!("int 2", options(nomem, nostack)) };
                }
                _ => {}
            }
            return exit::decode(&info);
        }
    }

    fn regs(&mut self) -> &mut GuestRegisters {
        &mut self.regs
    }

    fn rip(&self) -> u64 {
        self.make_current().read(guest_nat::RIP)
    }

    fn set_rip(&mut self, rip: u64) {
        self.make_current().write(guest_nat::RIP, rip);
    }

    fn set_real_mode_cs(&mut self, selector: u16) {
        let mut hw = self.make_current();
        hw.write(crate::vmcs::guest16::CS_SELECTOR, selector.into());
        hw.write(guest_nat::CS_BASE, u64::from(selector) << 4);
    }

    /// Adds the VM-exit instruction length to RIP. Only exits caused by an
    /// instruction report a length; after any other exit (an EPT violation, say) this
    /// does nothing, and the caller must compute the next RIP and use `set_rip`.
    fn skip_instruction(&mut self) {
        if exit::has_instruction_length(self.last_reason) {
            ops::skip_instruction(&mut self.make_current());
        } else {
            log::warn!(
                "vmx: skip_instruction after exit reason {} has no instruction length; RIP unchanged",
                self.last_reason
            );
        }
    }

    fn inject_exception(&mut self, exception: Exception) {
        ops::inject_exception(&mut self.make_current(), exception);
    }

    fn mode(&self) -> CpuMode {
        ops::guest_mode(&self.make_current())
    }

    fn cpl(&self) -> u8 {
        // SS.DPL, bits 6:5 of the access rights (SDM Vol. 3C 25.4.1: the CPL).
        let ar = self
            .make_current()
            .read(crate::vmcs::guest32::SS_ACCESS_RIGHTS);
        ((ar >> 5) & 3) as u8
    }

    /// CR0/CR4 as the core validated them (`ops::write_cr0`/`write_cr4`: shadows,
    /// host-owned bits, LMA and the IA-32e entry control, PDPTEs). With VPIDs, VM
    /// entry keeps the guest's cached translations, so they are dropped here as the
    /// MOV to CR0/CR4 would have dropped them on the processor.
    fn write_cr(&mut self, cr: u8, value: u64) -> bool {
        let mut hw = self.make_current();
        let mut cr8 = self.cr8;
        let mut regs = self.regs;
        let fixed = self.fixed;
        let mut read = |cr3: u64| self.read_pdptes(cr3);
        let mut ctx = CrContext {
            regs: &mut regs,
            fixed: &fixed,
            cr8: &mut cr8,
            read_pdptes: &mut read,
        };
        let outcome = match cr {
            0 => ops::write_cr0(&mut hw, value, &mut ctx),
            4 => ops::write_cr4(&mut hw, value, &mut ctx),
            _ => return false,
        };
        if outcome != CrOutcome::Done {
            return false;
        }
        if let (Some(kind), true) = (self.invvpid, self.vpid != 0) {
            // SAFETY: in VMX root operation with this vCPU's VMCS current; the type
            // is one the processor supports.
            let _ = unsafe { arch::invvpid(kind, self.vpid) };
        }
        true
    }

    fn rflags(&self) -> u64 {
        ops::rflags(&self.make_current())
    }

    fn set_rflags(&mut self, rflags: u64) {
        ops::set_rflags(&mut self.make_current(), rflags);
    }

    fn interrupt_ready(&self) -> bool {
        ops::interrupt_ready(&self.make_current())
    }

    fn inject_interrupt(&mut self, vector: u8) {
        ops::inject_interrupt(&mut self.make_current(), vector);
    }

    fn request_interrupt_window(&mut self, on: bool) {
        ops::set_interrupt_window(&mut self.make_current(), on);
    }

    fn nmi_ready(&self) -> bool {
        ops::nmi_ready(&self.make_current())
    }

    fn inject_nmi(&mut self) {
        ops::inject_nmi(&mut self.make_current());
    }

    fn request_nmi_window(&mut self, on: bool) {
        ops::set_nmi_window(&mut self.make_current(), on);
    }

    fn rsp(&self) -> u64 {
        self.make_current().read(guest_nat::RSP)
    }

    fn set_rsp(&mut self, rsp: u64) {
        self.make_current().write(guest_nat::RSP, rsp);
    }

    fn control_regs(&self) -> vcpu::ControlRegs {
        ops::control_regs(&self.make_current())
    }

    /// Every segment register is in the VMCS, FS and GS bases included.
    fn fx_area(&mut self) -> Option<&mut FxArea> {
        // `run` loads it with FXRSTOR right before each VM entry and saves it with FXSAVE
        // right after each exit, so between exits it is the guest's live state.
        Some(&mut self.fx)
    }

    fn segment(&self, seg: vcpu::SegReg) -> Option<vcpu::state::Segment> {
        use crate::guest_state::Seg;
        let s = match seg {
            vcpu::SegReg::Es => Seg::Es,
            vcpu::SegReg::Cs => Seg::Cs,
            vcpu::SegReg::Ss => Seg::Ss,
            vcpu::SegReg::Ds => Seg::Ds,
            vcpu::SegReg::Fs => Seg::Fs,
            vcpu::SegReg::Gs => Seg::Gs,
        };
        Some(crate::state::segment(&self.make_current(), s))
    }

    fn set_segment(&mut self, seg: vcpu::SegReg, value: vcpu::state::Segment) -> bool {
        use crate::guest_state::Seg;
        let s = match seg {
            vcpu::SegReg::Es => Seg::Es,
            vcpu::SegReg::Cs => Seg::Cs,
            vcpu::SegReg::Ss => Seg::Ss,
            vcpu::SegReg::Ds => Seg::Ds,
            vcpu::SegReg::Fs => Seg::Fs,
            vcpu::SegReg::Gs => Seg::Gs,
        };
        crate::state::set_segment(&mut self.make_current(), s, &value);
        true
    }

    fn descriptor_tables(&self) -> Option<(vcpu::state::TableRegister, vcpu::state::Segment)> {
        Some(crate::state::descriptor_tables(&self.make_current()))
    }

    fn set_interrupt_shadow(&mut self, mov_ss: bool) {
        ops::set_interrupt_shadow(&mut self.make_current(), mov_ss);
    }

    /// VMCLEAR on the processor where the VMCS is active: its cached state goes to
    /// memory, and the next `run` (on any processor) loads it and uses VMLAUNCH, as
    /// the launch state is "clear" again (SDM Vol. 3C 25.11.3).
    fn unload(&mut self) {
        // SAFETY: the scheduler calls `unload` on the processor that ran the vCPU.
        unsafe { self.slice.save() };
        let active = self.active_on.get();
        if active == 0 {
            return;
        }
        if active != this_cpu() {
            log::error!("vmx: Vcpu::unload called on a processor the vCPU did not run on");
            return;
        }
        self.clear_here();
    }

    /// Reads the VMCS (loading it here when no processor has it active, and clearing
    /// it again afterwards, so an unloaded vCPU stays unloaded) and the software-kept
    /// parts (`state`). On the processor still holding the slice state it is read back
    /// from the processor first, as `unload` would.
    fn save_state(&mut self) -> CpuState {
        let me = this_cpu();
        let active = self.active_on.get();
        if self.slice.loaded() && active == me {
            // SAFETY: the slice state was loaded on this processor (it is loaded and
            // saved together with the VMCS being active here, see `run`/`unload`).
            unsafe { self.slice.save() };
        }
        let hw = self.make_current();
        let state = crate::state::save(&hw, &self.soft_state());
        if active == 0 && self.active_on.get() == me {
            self.clear_here();
        }
        state
    }

    /// Checks `s` completely (`state::plan`: the neutral rules, the CR fixed bits, the
    /// guest-state and event-injection checks of VM entry, the PDPTEs, MXCSR) before
    /// writing anything, then writes the VMCS and the software-kept parts and leaves
    /// the vCPU unloaded (VMCLEAR), so the next `run` re-checks and VMLAUNCHes it on
    /// whichever processor, with its EPT and VPID translations flushed.
    fn load_state(&mut self, s: &CpuState) -> Result<(), StateError> {
        let me = this_cpu();
        let active = self.active_on.get();
        if active != 0 && active != me {
            return Err(StateError::Busy(
                "its VMCS is active on another processor: Vcpu::unload must run there first",
            ));
        }
        let limits = crate::state::Limits {
            fixed: self.fixed,
            phys_bits: self.phys_bits,
            mxcsr_mask: self.mxcsr_mask,
        };
        let mut hw = self.make_current();
        if self.active_on.get() != me {
            return Err(StateError::Busy("VMPTRLD of its VMCS failed"));
        }
        let plan = match crate::state::plan(&hw, s, &limits) {
            Ok(plan) => plan,
            Err(e) => {
                if active == 0 {
                    self.clear_here();
                }
                return Err(e);
            }
        };
        if self.slice.loaded() {
            // SAFETY: loaded together with the VMCS, which is active here.
            unsafe { self.slice.save() };
        }
        crate::state::apply(&mut hw, &plan);
        if let Err(e) = hw.result() {
            // Every field written here was written when the vCPU was created, so
            // this does not happen; if it did, the VMCS is half-written.
            log::error!("vmx: load_state: {e}");
            self.failed = Some(Exit::EntryFailure {
                code: 0,
                reason: "a VMWRITE failed while loading a saved state",
            });
            return Err(StateError::Unsupported(
                "a VMWRITE failed while loading the state; the vCPU cannot run",
            ));
        }
        let soft = plan.soft;
        self.regs = soft.regs;
        self.cr2 = soft.cr2;
        self.cr8 = soft.cr8;
        self.fx = soft.fx;
        self.slice.dr = soft.dr;
        self.slice.dr6 = soft.dr6;
        // SAFETY: the slice state is not loaded (saved above), so only the copy changes.
        unsafe { self.slice.set_tsc_aux(soft.tsc_aux) };
        // SAFETY: as in `soft_state`.
        unsafe { (*self.msr_area).set_guest_values(soft.switched) };
        self.last_reason = u32::MAX;
        self.failed = None;
        self.flush_on_entry = true;
        self.clear_here();
        Ok(())
    }

    /// EFER, the TSC (through the TSC offset) and PAT live in the VMCS; the syscall
    /// MSRs in the MSR area are passed through and never reach here.
    fn read_backend_msr(&mut self, index: u32) -> Option<u64> {
        let hw = self.make_current();
        match index {
            msr::IA32_EFER => Some(ops::read_efer(&hw)),
            msr::IA32_TIME_STAMP_COUNTER => {
                Some(rdtsc().wrapping_add(hw.read(control64::TSC_OFFSET)))
            }
            msr::IA32_PAT => Some(hw.read(crate::vmcs::guest64::IA32_PAT)),
            MSR_TSC_AUX => Some(self.slice.tsc_aux()),
            _ => self.switched_msr(index),
        }
    }

    fn write_backend_msr(&mut self, index: u32, value: u64) -> bool {
        let mut hw = self.make_current();
        match index {
            msr::IA32_EFER => {
                ops::write_efer(&mut hw, value);
                true
            }
            msr::IA32_TIME_STAMP_COUNTER => {
                hw.write(control64::TSC_OFFSET, value.wrapping_sub(rdtsc()));
                true
            }
            msr::IA32_PAT => {
                hw.write(crate::vmcs::guest64::IA32_PAT, value);
                true
            }
            MSR_TSC_AUX => {
                // SAFETY: the core handles exits on the processor running the vCPU.
                unsafe { self.slice.set_tsc_aux(value) };
                true
            }
            _ => false,
        }
    }
}
