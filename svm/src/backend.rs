//! AMD-V at run time: enabling SVM on this processor (EFER.SVME, VM_HSAVE_PA), building
//! a vCPU (VMCB, permission maps, nested page tables, ASID) and entering the guest.
//! The pure pieces live in `vmcb`, `npt`, `permission_maps` and `exit`; this module
//! holds the small amount of unsafe code that touches the hardware.
//!
//! **Several processors.** SVM is enabled per processor ([`SvmBackend::enable`] on the
//! first, [`SvmBackend::enable_this_cpu`] on each other one), each with its own two
//! pages: the host-save area VM_HSAVE_PA names (APM 15.30.4) and, right after it, the
//! host state VMSAVE/VMLOAD switch around VMRUN. A vCPU finds the pages of the
//! processor it runs on by reading VM_HSAVE_PA, so it can run on any of them; when it
//! runs on a different processor than last time, its ASID's translations there may be
//! stale, so the entry flushes them (TLB_CONTROL, APM 15.16).
//!
//! **Per-slice state.** DR0-DR3 and IA32_TSC_AUX are not in the VMCB (DR6 and DR7
//! are): the first `run` of a time slice loads the vCPU's own values and
//! `Vcpu::unload` reads them back ([`vcpu::slice`]), so no guest sees another's
//! breakpoints or RDTSCP/RDPID value.

use core::arch::naked_asm;
use raw_cpuid::CpuId;
use vcpu::fpu::{self, FxArea};
use vcpu::paging::{Level, Perms};
use vcpu::slice::{SliceState, MSR_TSC_AUX};
use vcpu::state::{CpuState, StateError};
use vcpu::{
    Backend, BackendError, ControlRegs, CpuMode, Exception, Exit, GuestMapping, GuestRegisters,
    HostMemory, StartState, Vcpu,
};
use x86_64::registers::model_specific::Msr;

use crate::caps::SvmCaps;
use crate::exit::{self, ExitInfo};
use crate::npt::Npt;
use crate::permission_maps::{IoPermissionMap, MsrPermissionMap, IOPM_SIZE, MSRPM_SIZE};
use crate::reflect;
use crate::state;
use crate::vmcb::{cr4, efer, event, int_ctl, int_state, tlb_control, Intercept1, Vmcb};

const MSR_EFER: u32 = 0xC000_0080;
const MSR_VM_HSAVE_PA: u32 = 0xC001_0117;
const PAGE: u64 = 4096;

/// MSRs that VMLOAD/VMSAVE switch between host and guest (APM Vol. 2 15.5.2, the
/// VMSAVE/VMLOAD state), so the guest may touch them directly.
const PASS_THROUGH_MSRS: [u32; 10] = [
    0x174,
    0x175,
    0x176,
    0xC000_0081,
    0xC000_0082,
    0xC000_0083,
    0xC000_0084,
    0xC000_0100,
    0xC000_0101,
    0xC000_0102,
];

/// ASIDs 1..=255 at most are handed out (0 is the host's, APM 15.16); a bitmap keeps
/// the allocator free of heap use.
const MAX_ASIDS: usize = 256;

pub struct SvmBackend {
    caps: SvmCaps,
    phys_width: u8,
    max_leaf: Level,
    asids_used: [u64; MAX_ASIDS / 64],
}

impl SvmBackend {
    /// Turns SVM on for this processor. `caps` comes from `caps::detect`, which already
    /// checked CPUID and VM_CR.SVMDIS.
    pub fn enable(caps: SvmCaps, mem: &mut dyn HostMemory) -> Result<Self, BackendError> {
        let cpuid = CpuId::new();
        let ext = cpuid.get_extended_processor_and_feature_identifiers();
        let gib_pages = ext.as_ref().is_some_and(|e| e.has_1gib_pages());
        let phys_width = cpuid
            .get_processor_capacity_feature_info()
            .map_or(40, |c| c.physical_address_bits());
        Self::enable_this_cpu(mem)?;
        Ok(Self {
            caps,
            phys_width,
            max_leaf: if gib_pages { Level::Pdpt } else { Level::Pd },
            asids_used: [1; MAX_ASIDS / 64], // ASID 0 belongs to the host
        })
    }

    /// Turns SVM on for the calling processor (an AP at bring-up; [`SvmBackend::enable`]
    /// does it for the first one): EFER.SVME (and NXE, so that bit 63 of nested page
    /// entries means no-execute rather than a reserved bit, APM 15.25.4), and this
    /// processor's host-save area and VMSAVE host-state page, two consecutive pages
    /// owned for the rest of the run. The caller checked SVM once with
    /// `caps::detect`; the processors of one machine are alike. Enabling twice on one
    /// processor is refused (EFER.SVME with a host-save area already set).
    pub fn enable_this_cpu(mem: &mut dyn HostMemory) -> Result<(), BackendError> {
        // SAFETY: reading MSRs that exist on every SVM processor.
        let (efer_now, hsave_now) =
            unsafe { (Msr::new(MSR_EFER).read(), Msr::new(MSR_VM_HSAVE_PA).read()) };
        if efer_now & efer::SVME != 0 && hsave_now != 0 {
            return Err(BackendError::Check(
                "SVM is already enabled on this processor (VM_HSAVE_PA is set)",
            ));
        }
        let nx = CpuId::new()
            .get_extended_processor_and_feature_identifiers()
            .is_some_and(|e| e.has_execute_disable());
        let pages = mem.alloc(2 * PAGE, PAGE).ok_or(BackendError::OutOfMemory)?;
        // SAFETY: SVM is present and not disabled (caps). Setting EFER.SVME enables the
        // SVM instructions; VM_HSAVE_PA gets a page the hypervisor owns for the rest of
        // its life (APM 15.30.4); the page after it is this processor's VMSAVE area.
        unsafe {
            let mut efer_msr = Msr::new(MSR_EFER);
            let mut v = efer_msr.read() | efer::SVME;
            if nx {
                v |= efer::NXE;
            }
            efer_msr.write(v);
            Msr::new(MSR_VM_HSAVE_PA).write(pages);
            fpu::enable_host_fxsr();
        }
        Ok(())
    }

    fn alloc_asid(&mut self) -> Option<u32> {
        let limit = (self.caps.asid_count as usize).min(MAX_ASIDS);
        let asid = (1..limit).find(|&a| self.asids_used[a / 64] & (1 << (a % 64)) == 0)?;
        self.asids_used[asid / 64] |= 1 << (asid % 64);
        Some(asid as u32)
    }

    /// This processor's limits for a loaded state: the CR4 and EFER bits of features
    /// its CPUID reports (VMRUN refuses the others, which `consistency_check` cannot
    /// know), the ASID count, the physical-address width and MXCSR_MASK.
    fn state_limits(&self) -> state::Limits {
        let host = vcpu::cr_policy::GuestFeatures::from_cpuid(|leaf, subleaf| {
            let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
            [r.eax, r.ebx, r.ecx, r.edx]
        });
        state::Limits {
            asid_count: self.caps.asid_count,
            phys_width: self.phys_width,
            cr4_supported: host.cr4_allowed & cr4::DEFINED,
            efer_supported: host.efer_allowed,
            // SAFETY: `enable`/`enable_this_cpu` set CR4.OSFXSR and cleared CR0.EM/TS.
            mxcsr_mask: unsafe { fpu::host_mxcsr_mask() },
        }
    }

    fn free_asid(&mut self, asid: u32) {
        let a = asid as usize;
        self.asids_used[a / 64] &= !(1 << (a % 64));
    }
}

pub struct SvmVcpu {
    vmcb_pa: u64,
    vmcb: *mut Vmcb,
    iopm_pa: u64,
    msrpm_pa: u64,
    npt: Option<Npt>,
    regs: GuestRegisters,
    asid: u32,
    nrip_save: bool,
    /// DecodeAssists: CR write exits name the source register.
    decode_assists: bool,
    /// TLB_CONTROL value that flushes this guest's translations (by ASID where the
    /// processor can).
    flush: u8,
    /// VM_HSAVE_PA of the processor this vCPU last ran on (0: never ran).
    last_cpu: u64,
    last: ExitInfo,
    fx: FxArea,
    /// An NMI was injected and its handler has not reached IRET yet: SVM does not
    /// show NMI blocking in the VMCB without vNMI, so the IRET intercept tracks it
    /// (APM Vol. 2 15.20, as KVM does).
    nmi_masked: bool,
    /// DR0-DR3 and TSC_AUX, switched at slice boundaries.
    slice: SliceState,
    /// An external interrupt was given to V_IRQ/V_INTR_VECTOR and the guest has not
    /// taken it yet (the processor clears V_IRQ when it does, APM Vol. 2 15.21.4).
    virq_pending: bool,
    /// What `load_state` checks a state against on this machine.
    limits: state::Limits,
}

// SAFETY: the raw pointer is this vCPU's own VMCB, reachable from every processor
// through the same mapping; nothing of the vCPU stays behind in a processor between
// runs (see the module header), so it may move between processors.
unsafe impl Send for SvmVcpu {}

impl SvmVcpu {
    fn vmcb(&self) -> &Vmcb {
        // SAFETY: `vmcb` points at the vCPU's own VMCB frame through the permanent
        // physical-memory mapping; only this vCPU refers to it.
        unsafe { &*self.vmcb }
    }
    fn vmcb_mut(&mut self) -> &mut Vmcb {
        // SAFETY: as in `vmcb`, and `&mut self` makes the access exclusive.
        unsafe { &mut *self.vmcb }
    }
}

fn free_all(mem: &mut dyn HostMemory, v: &mut SvmVcpu) {
    for (pa, size) in [
        (v.vmcb_pa, PAGE),
        (v.iopm_pa, IOPM_SIZE as u64),
        (v.msrpm_pa, MSRPM_SIZE as u64),
    ] {
        if pa != 0 {
            mem.free(pa, size);
        }
    }
    if let Some(npt) = v.npt.take() {
        npt.destroy(mem, |m, t| m.free(t, PAGE));
    }
}

impl Backend for SvmBackend {
    type Vcpu = SvmVcpu;

    fn name(&self) -> &'static str {
        "AMD-V"
    }

    fn create_vcpu(
        &mut self,
        mem: &mut dyn HostMemory,
        ram: &[GuestMapping],
        start: &StartState,
    ) -> Result<SvmVcpu, BackendError> {
        let asid = self.alloc_asid().ok_or(BackendError::NoTagsLeft)?;
        let mut v = SvmVcpu {
            vmcb_pa: 0,
            vmcb: core::ptr::null_mut(),
            iopm_pa: 0,
            msrpm_pa: 0,
            npt: None,
            regs: start.regs,
            asid,
            nrip_save: self.caps.nrip_save,
            decode_assists: self.caps.decode_assists,
            flush: if self.caps.flush_by_asid {
                tlb_control::FLUSH_ASID
            } else {
                tlb_control::FLUSH_ALL
            },
            last_cpu: 0,
            last: ExitInfo::default(),
            fx: FxArea::initial(),
            nmi_masked: false,
            virq_pending: false,
            slice: SliceState::new(SliceState::detect_tsc_aux(), false),
            limits: self.state_limits(),
        };
        let result = (|| {
            v.vmcb_pa = mem.alloc(PAGE, PAGE).ok_or(BackendError::OutOfMemory)?;
            v.vmcb = mem.virt(v.vmcb_pa) as *mut Vmcb;
            v.iopm_pa = mem
                .alloc(IOPM_SIZE as u64, PAGE)
                .ok_or(BackendError::OutOfMemory)?;
            v.msrpm_pa = mem
                .alloc(MSRPM_SIZE as u64, PAGE)
                .ok_or(BackendError::OutOfMemory)?;
            // SAFETY: both maps were just allocated (contiguous, zeroed, page-aligned,
            // of their exact size) and are reached through the physical mapping.
            let (iopm, msrpm) = unsafe {
                (
                    &mut *(mem.virt(v.iopm_pa) as *mut IoPermissionMap),
                    &mut *(mem.virt(v.msrpm_pa) as *mut MsrPermissionMap),
                )
            };
            // Every port and every MSR exits, but for the MSRs VMLOAD/VMSAVE switch.
            iopm.reset_intercept_all();
            msrpm.reset_intercept_all();
            for msr in PASS_THROUGH_MSRS {
                msrpm
                    .allow(msr, true, true)
                    .map_err(|_| BackendError::Check("MSR outside the permission map"))?;
            }
            let mut npt = Npt::new(mem).map_err(BackendError::Map)?;
            for m in ram {
                npt.map_guest(mem, m, self.max_leaf)
                    .map_err(BackendError::Map)?;
            }
            let root = npt.root();
            v.npt = Some(npt);
            let (iopm_pa, msrpm_pa) = (v.iopm_pa, v.msrpm_pa);
            let vmcb = v.vmcb_mut();
            // A fresh or reused ASID may have stale translations: flush on first entry.
            vmcb.init_control(asid, iopm_pa, msrpm_pa, root, tlb_control::FLUSH_ALL);
            vmcb.control.intercept1 |= Intercept1::INIT.bits();
            // Every write to CR0 and CR4 exits (MOV, and for CR0 LMSW; CLTS only
            // clears TS): the core validates it against the guest's CPUID, so a
            // hidden feature's bit raises #GP instead of reaching the processor
            // (APM Vol. 2 15.9). XSETBV is intercepted by `init_control`.
            vmcb.control.intercept_cr_write |= (1 << 0) | (1 << 4);
            vmcb.set_start_state(start);
            vmcb.save.rax = start.regs.rax;
            vmcb.consistency_check(self.caps.asid_count, self.phys_width)
                .map_err(BackendError::Check)
        })();
        match result {
            Ok(()) => Ok(v),
            Err(e) => {
                free_all(mem, &mut v);
                self.free_asid(asid);
                Err(e)
            }
        }
    }

    fn destroy_vcpu(&mut self, mem: &mut dyn HostMemory, mut vcpu: SvmVcpu) {
        self.free_asid(vcpu.asid);
        free_all(mem, &mut vcpu);
    }
}

/// Enters the guest: VMSAVE the host's switched state, load the guest's general-purpose
/// registers, CLGI/STI/VMLOAD/VMRUN, then store them back, VMSAVE the guest, VMLOAD the
/// host and STGI. VMRUN only switches RAX, RSP and RIP of the GPRs (APM 15.5.1).
///
/// Interrupts: the host runs with RFLAGS.IF=0. Entering with GIF=0 and IF=1 means a
/// physical interrupt during the guest causes #VMEXIT(INTR) (V_INTR_MASKING, APM
/// 15.21.1) and stays pending until STGI, when the host's own handler takes it.
///
/// After #VMEXIT the return stack buffer is refilled ([`vcpu::rsb_fill_asm!`]) once
/// the guest's registers are stored, before the stub's RET.
///
/// Arguments (System V): rdi = VMCB physical address, rsi = host state page physical
/// address, rdx = `*mut GuestRegisters`.
#[unsafe(naked)]
unsafe extern "C" fn svm_enter(_vmcb_pa: u64, _host_state_pa: u64, _regs: *mut GuestRegisters) {
    naked_asm!(
        "push rbx",
        "push rbp",
        "push r12",
        "push r13",
        "push r14",
        "push r15",
        "push rsi", // [rsp+16] host state
        "push rdi", // [rsp+8]  VMCB
        "push rdx", // [rsp]    regs
        "mov rax, rsi",
        "vmsave rax",
        "mov rax, rdx",
        "mov rbx, [rax + 8]",
        "mov rcx, [rax + 16]",
        "mov rdx, [rax + 24]",
        "mov rsi, [rax + 32]",
        "mov rdi, [rax + 40]",
        "mov rbp, [rax + 48]",
        "mov r8, [rax + 56]",
        "mov r9, [rax + 64]",
        "mov r10, [rax + 72]",
        "mov r11, [rax + 80]",
        "mov r12, [rax + 88]",
        "mov r13, [rax + 96]",
        "mov r14, [rax + 104]",
        "mov r15, [rax + 112]",
        "mov rax, [rsp + 8]",
        "clgi",
        "sti",
        "vmload rax",
        "vmrun rax",
        "vmsave rax",
        "mov rax, [rsp]",
        "mov [rax + 8], rbx",
        "mov [rax + 16], rcx",
        "mov [rax + 24], rdx",
        "mov [rax + 32], rsi",
        "mov [rax + 40], rdi",
        "mov [rax + 48], rbp",
        "mov [rax + 56], r8",
        "mov [rax + 64], r9",
        "mov [rax + 72], r10",
        "mov [rax + 80], r11",
        "mov [rax + 88], r12",
        "mov [rax + 96], r13",
        "mov [rax + 104], r14",
        "mov [rax + 112], r15",
        // The guest's return targets leave the RSB before the host's first RET
        // (`vcpu::mitigation`); GIF=0 keeps interrupts out until STGI.
        vcpu::rsb_fill_asm!(),
        "mov rax, [rsp + 16]",
        "vmload rax",
        "stgi",
        "cli",
        "add rsp, 24",
        "pop r15",
        "pop r14",
        "pop r13",
        "pop r12",
        "pop rbp",
        "pop rbx",
        "ret",
    )
}

/// The calling processor, named by its VM_HSAVE_PA (0 where SVM is not enabled), as
/// `run` records it in `last_cpu`.
fn this_processor() -> u64 {
    // SAFETY: reading an MSR that exists on every SVM processor.
    unsafe { Msr::new(MSR_VM_HSAVE_PA).read() }
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

impl SvmVcpu {
    /// A general-purpose register by its encoding number (RSP is in the VMCB).
    fn gpr(&self, n: u8) -> u64 {
        let r = &self.regs;
        match n & 15 {
            0 => r.rax,
            1 => r.rcx,
            2 => r.rdx,
            3 => r.rbx,
            4 => self.vmcb().save.rsp,
            5 => r.rbp,
            6 => r.rsi,
            7 => r.rdi,
            8 => r.r8,
            9 => r.r9,
            10 => r.r10,
            11 => r.r11,
            12 => r.r12,
            13 => r.r13,
            14 => r.r14,
            _ => r.r15,
        }
    }
}

/// A vCPU's nested page tables exist from `create_vcpu` until `destroy_vcpu`.
const NO_NPT: &str = "the vCPU has no nested page tables";

impl Vcpu for SvmVcpu {
    fn map_page(
        &mut self,
        mem: &mut dyn HostMemory,
        gpa: u64,
        hpa: u64,
        writable: bool,
    ) -> Result<(), BackendError> {
        let npt = self.npt.as_mut().ok_or(BackendError::Check(NO_NPT))?;
        let perms = if writable { Perms::RWX } else { Perms::RX };
        npt.map(mem, gpa, hpa, PAGE, perms, Level::Pt)
            .map_err(BackendError::Map)
    }

    fn unmap_page(&mut self, mem: &mut dyn HostMemory, gpa: u64) -> Result<(), BackendError> {
        let npt = self.npt.as_mut().ok_or(BackendError::Check(NO_NPT))?;
        if npt.unmap_page(mem, gpa).map_err(BackendError::Map)? {
            // The old leaf may be in this ASID's TLB entries here (APM Vol. 2
            // 15.16.1); another processor flushes on arrival anyway (`run`).
            let flush = self.flush;
            self.vmcb_mut().control.tlb_control = flush;
        }
        Ok(())
    }

    /// Time slices come from the hypervisor's periodic timer: its interrupt ends the
    /// run as [`Exit::ExternalInterrupt`], so `_slice_tsc` is not needed here.
    ///
    /// Runs on whichever processor calls it, with that processor's host pages.
    fn run(&mut self, _slice_tsc: u64) -> Exit {
        // SAFETY: reading an MSR that exists on every SVM processor.
        let hsave = unsafe { Msr::new(MSR_VM_HSAVE_PA).read() };
        if hsave == 0 {
            return Exit::EntryFailure {
                code: 0,
                reason: "SVM is not enabled on this processor (SvmBackend::enable_this_cpu was not called on it)",
            };
        }
        if self.last_cpu != hsave {
            if self.last_cpu != 0 {
                // Translations this ASID left on this processor during an earlier run
                // here may be stale now (APM 15.16.1).
                let flush = self.flush;
                self.vmcb_mut().control.tlb_control = flush;
            }
            self.last_cpu = hsave;
        }
        let rax = self.regs.rax;
        self.vmcb_mut().save.rax = rax;
        // The processor may cache VMCB state per processor: nothing is clean (APM
        // 15.15.3), which also covers a move between processors.
        self.vmcb_mut().control.vmcb_clean = 0;
        let (vmcb_pa, host_pa) = (self.vmcb_pa, hsave + PAGE);
        // SAFETY: the VMCB passed the consistency checks at creation, its nested page
        // tables map only this guest's RAM, and every intercept that could reach host
        // state is set; the stub preserves the host's callee-saved registers and its
        // VMSAVE/VMLOAD state.
        unsafe {
            // SAFETY (slice state): this processor runs this vCPU until `unload`.
            self.slice.load();
            // SAFETY (FPU): `enable`/`enable_this_cpu` set CR4.OSFXSR and cleared CR0.EM/TS; the image
            // is this vCPU's own and starts as the FNINIT state.
            fpu::fxrstor(&self.fx);
            svm_enter(vmcb_pa, host_pa, &mut self.regs);
            fpu::fxsave(&mut self.fx);
        }
        // The guest may have armed breakpoints at its own addresses, which are in
        // DR0-DR3 now: whatever #VMEXIT left in DR7 (the guest's value, or the host's
        // from the save area; an emulator may not switch it at all), nothing stays
        // enabled for the host or the next vCPU on this processor.
        let host_dr7: u64;
        // SAFETY: ring 0; reading DR7 has no side effects.
        unsafe {
            core::arch::asm!("mov {}, dr7", out(reg) host_dr7, options(nostack, preserves_flags))
        };
        if host_dr7 & 0xFF != 0 || self.vmcb().save.dr7 & 0xFF != 0 {
            // SAFETY: ring 0; 400H is DR7's reset value (nothing enabled).
            unsafe {
                core::arch::asm!("mov dr7, {}", in(reg) 0x400u64, options(nostack, preserves_flags))
            };
        }
        let (nrip_save, rcx, rdx) = (self.nrip_save, self.regs.rcx, self.regs.rdx);
        // The processor clears V_IRQ when the guest takes the virtual interrupt.
        if self.virq_pending && self.vmcb().control.int_ctl & int_ctl::V_IRQ == 0 {
            self.virq_pending = false;
        }
        // An event that was being delivered when the exit happened must be delivered
        // again on the next entry (APM 15.7.2).
        let info = self.vmcb().control.exitintinfo;
        if info & event::VALID != 0 {
            let vector = info & event::VECTOR_MASK;
            // A virtual interrupt cut short is an external interrupt; QEMU records
            // vectors 32-255 as exceptions, which EVENTINJ refuses (APM 15.20).
            let external = info & event::TYPE_MASK == event::TYPE_INTR
                || (vector >= 32 && info & event::TYPE_MASK == event::TYPE_EXCEPTION);
            if external {
                // It goes back the way it came, through V_IRQ, never EVENTINJ (see
                // `inject_interrupt` for QEMU's double delivery of EVENTINJ
                // interrupts). A processor clears V_IRQ when it takes the interrupt,
                // so it must be set again; QEMU's TCG clears it only once delivery
                // completed, so it may still be set with this vector, and setting it
                // again changes nothing: one delivery either way.
                self.inject_interrupt(vector as u8);
            } else {
                self.vmcb_mut().control.eventinj = info;
            }
        }
        let vmcb = self.vmcb_mut();
        vmcb.control.tlb_control = tlb_control::DO_NOTHING;
        // #AC and #DB go straight back to the guest (see `reflect`).
        let code = vmcb.control.exitcode;
        let db_exit = code == crate::vmcb::exit_code::EXCEPTION_BASE + Exception::DB_VECTOR as u64;
        if db_exit && reflect::spurious_db(vmcb.save.dr6, vmcb.save.dr7) {
            // Not the guest's (see `spurious_db`): the instruction runs (RF keeps
            // an instruction breakpoint from firing on it again) and DR6 keeps no
            // trace of the breakpoint the guest never set.
            vmcb.save.rflags |= 1 << 16;
            vmcb.save.dr6 &= !0xF;
        } else if let Some(ev) =
            reflect::reflected_event(code, vmcb.control.exitinfo1, vmcb.control.eventinj)
        {
            vmcb.control.eventinj = ev;
            if ev & crate::vmcb::event::VECTOR_MASK == vcpu::Exception::DB_VECTOR as u64 {
                // The processor updated DR6 in the save area before the intercept.
                vmcb.save.dr7 = reflect::dr7_after_db(vmcb.save.dr7);
            }
        }
        let info = ExitInfo {
            exitcode: vmcb.control.exitcode,
            exitinfo1: vmcb.control.exitinfo1,
            exitinfo2: vmcb.control.exitinfo2,
            rax: vmcb.save.rax,
            rcx,
            rdx,
            nrip: nrip_save.then_some(vmcb.control.next_rip),
            exitintinfo: vmcb.control.exitintinfo,
        };
        self.regs.rax = info.rax;
        self.last = info;
        if info.exitcode == crate::vmcb::exit_code::ICEBP {
            // INT1 raises #DB as a trap after the instruction (APM Vol. 3 INT1).
            self.skip_instruction();
            self.vmcb_mut().inject_exception(Exception {
                vector: Exception::DB_VECTOR,
                error_code: None,
            });
        }
        let exit = exit::decode(&info);
        if let Exit::CrWrite { cr, value: None } = exit {
            // With DecodeAssists and NRIP save the processor names the source
            // register and the next RIP; otherwise the core decodes the MOV.
            if let (true, true, Some(gpr)) = (
                self.decode_assists,
                self.nrip_save,
                exit::cr_write_gpr(&info),
            ) {
                let mut value = self.gpr(gpr);
                let s = &self.vmcb().save;
                if s.efer & efer::LMA == 0 || s.cs.attrib & (1 << 9) == 0 {
                    value &= 0xFFFF_FFFF; // outside 64-bit mode the operand is 32 bits
                }
                return Exit::CrWrite {
                    cr,
                    value: Some(value),
                };
            }
        }
        if info.exitcode == crate::vmcb::exit_code::IRET {
            // The NMI handler returns: NMIs are unblocked once this IRET completes. The
            // next NMI may be injected before it does (a nested NMI, which guests that
            // send NMIs to themselves handle), rather than single-stepping the IRET.
            self.nmi_masked = false;
            self.vmcb_mut().control.intercept1 &= !Intercept1::IRET.bits();
        }
        exit
    }

    fn regs(&mut self) -> &mut GuestRegisters {
        &mut self.regs
    }

    fn rip(&self) -> u64 {
        self.vmcb().save.rip
    }

    fn set_rip(&mut self, rip: u64) {
        self.vmcb_mut().save.rip = rip;
    }

    fn set_real_mode_cs(&mut self, selector: u16) {
        let v = self.vmcb_mut();
        v.save.cs.selector = selector;
        v.save.cs.base = u64::from(selector) << 4;
        v.control.vmcb_clean = 0;
    }

    fn skip_instruction(&mut self) {
        let rip = self.rip();
        if let Some(next) = exit::next_rip(&self.last, rip) {
            self.set_rip(next);
        }
    }

    fn inject_exception(&mut self, exception: Exception) {
        self.vmcb_mut().inject_exception(exception);
    }

    fn mode(&self) -> CpuMode {
        self.vmcb().guest_mode()
    }

    fn cpl(&self) -> u8 {
        self.vmcb().save.cpl & 3
    }

    fn read_backend_msr(&mut self, msr: u32) -> Option<u64> {
        let v = self.vmcb();
        match msr {
            // VMRUN needs the guest's EFER.SVME set (APM 15.5.1); the guest must not see it.
            MSR_EFER => Some(v.save.efer & !efer::SVME),
            0x10 => Some(rdtsc().wrapping_add(v.control.tsc_offset)),
            0x277 => Some(v.save.g_pat),
            MSR_TSC_AUX => Some(self.slice.tsc_aux()),
            _ => None,
        }
    }

    fn write_backend_msr(&mut self, msr: u32, value: u64) -> bool {
        let v = self.vmcb_mut();
        match msr {
            MSR_EFER => {
                // LMA is the processor's to set (on paging activation with LME).
                v.save.efer = (value & !efer::LMA) | (v.save.efer & efer::LMA) | efer::SVME;
                true
            }
            0x10 => {
                v.control.tsc_offset = value.wrapping_sub(rdtsc());
                true
            }
            0x277 => {
                v.save.g_pat = value;
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

    /// Loads CR0/CR4 as an intercepted MOV would have: EFER.LMA follows CR0.PG
    /// while EFER.LME is set (APM Vol. 2 14.6.1), and this guest's TLB entries are
    /// flushed on the next VMRUN (a MOV to CR0/CR4 that changes paging bits flushes
    /// them on the processor; flushing on every emulated write is simplest). With
    /// nested paging the processor reads PAE PDPTEs itself, nothing to load.
    fn write_cr(&mut self, cr: u8, value: u64) -> bool {
        let flush = self.flush;
        let v = self.vmcb_mut();
        match cr {
            0 => {
                const PG: u64 = 1 << 31;
                let (old, efer) = (v.save.cr0, v.save.efer);
                if old & PG == 0 && value & PG != 0 && efer & efer::LME != 0 {
                    v.save.efer |= efer::LMA;
                }
                if value & PG == 0 {
                    v.save.efer &= !efer::LMA;
                }
                v.save.cr0 = value;
            }
            4 => v.save.cr4 = value,
            _ => return false,
        }
        v.control.tlb_control = flush;
        true
    }

    fn rflags(&self) -> u64 {
        self.vmcb().save.rflags
    }

    fn set_rflags(&mut self, rflags: u64) {
        self.vmcb_mut().save.rflags = vcpu::architectural_rflags(rflags);
    }

    fn interrupt_ready(&self) -> bool {
        let v = self.vmcb();
        v.save.rflags & (1 << 9) != 0
            && v.control.interrupt_shadow & int_state::INTERRUPT_SHADOW == 0
            && v.control.eventinj & (1 << 31) == 0
            && !self.virq_pending
    }

    /// External interrupts go through the virtual interrupt (V_IRQ with V_INTR_VECTOR,
    /// highest priority, TPR ignored: the local APIC model already arbitrated), not
    /// EVENTINJ. Both are architectural (APM Vol. 2 15.20, 15.21.4); V_IRQ is used
    /// because QEMU's TCG, for an EVENTINJ of type INTR, delivers the interrupt inside
    /// VMRUN but leaves it as the processor's pending exception, and can deliver it a
    /// second time later (measured: `smp64` counting up to 68 extra IPIs per 1,000
    /// under single-threaded TCG, and none with V_IRQ). `interrupt_ready` was checked,
    /// so the guest takes it at once on entry; an exit before that leaves V_IRQ set
    /// and the next entry delivers it.
    fn inject_interrupt(&mut self, vector: u8) {
        let c = &mut self.vmcb_mut().control;
        c.int_vector = u32::from(vector);
        c.int_ctl = (c.int_ctl & !(0xF << int_ctl::V_INTR_PRIO_SHIFT))
            | int_ctl::V_IRQ
            | int_ctl::V_IGN_TPR
            | (0xF << int_ctl::V_INTR_PRIO_SHIFT);
        // Taken, not intercepted: the VINTR intercept would turn it into an exit.
        c.intercept1 &= !Intercept1::VINTR.bits();
        self.virq_pending = true;
    }

    fn nmi_ready(&self) -> bool {
        let v = self.vmcb();
        !self.nmi_masked
            && v.control.interrupt_shadow & int_state::INTERRUPT_SHADOW == 0
            && v.control.eventinj & event::VALID == 0
    }

    /// The IRET intercept, set while an injected NMI's handler runs, already exits
    /// when NMIs unblock; other blocking (a shadow, a queued event) ends by itself at
    /// the next exit.
    fn request_nmi_window(&mut self, _on: bool) {}

    fn inject_nmi(&mut self) {
        self.nmi_masked = true;
        let c = &mut self.vmcb_mut().control;
        c.eventinj = event::VALID | event::TYPE_NMI | 2;
        c.intercept1 |= Intercept1::IRET.bits();
    }

    fn rsp(&self) -> u64 {
        self.vmcb().save.rsp
    }

    fn set_rsp(&mut self, rsp: u64) {
        self.vmcb_mut().save.rsp = rsp;
    }

    fn control_regs(&self) -> ControlRegs {
        let s = &self.vmcb().save;
        ControlRegs {
            cr0: s.cr0,
            cr3: s.cr3,
            cr4: s.cr4,
            efer: s.efer & !efer::SVME,
            cs_base: s.cs.base,
            // CS.L is bit 9 of the VMCB's compressed attribute format.
            cs_long: s.cs.attrib & (1 << 9) != 0,
        }
    }

    fn fx_area(&mut self) -> Option<&mut FxArea> {
        // `run` loads it with FXRSTOR right before VMRUN and saves it with FXSAVE right
        // after #VMEXIT, so between exits it is the guest's live state.
        Some(&mut self.fx)
    }

    /// Every segment register from the VMCB. #VMEXIT stores ES, CS, SS and DS there
    /// (APM Vol. 2 15.6); FS and GS (with their hidden bases, which a 64-bit guest
    /// sets through WRMSR or WRFSBASE without an exit) are VMSAVE state, and
    /// `svm_enter` executes VMSAVE into this VMCB right after every VMRUN returns, so
    /// at any exit the VMCB holds them as the guest left them, too.
    fn segment(&self, seg: vcpu::SegReg) -> Option<vcpu::state::Segment> {
        let s = &self.vmcb().save;
        let raw = match seg {
            vcpu::SegReg::Es => s.es,
            vcpu::SegReg::Cs => s.cs,
            vcpu::SegReg::Ss => s.ss,
            vcpu::SegReg::Ds => s.ds,
            vcpu::SegReg::Fs => s.fs,
            vcpu::SegReg::Gs => s.gs,
        };
        Some(crate::state::segment_from(&raw))
    }

    fn set_segment(&mut self, seg: vcpu::SegReg, value: vcpu::state::Segment) -> bool {
        let raw = crate::state::segment_to(&value);
        let v = self.vmcb_mut();
        match seg {
            vcpu::SegReg::Es => v.save.es = raw,
            vcpu::SegReg::Cs => v.save.cs = raw,
            vcpu::SegReg::Ss => v.save.ss = raw,
            vcpu::SegReg::Ds => v.save.ds = raw,
            // VMSAVE state: `svm_enter` executes VMLOAD of this VMCB right before
            // VMRUN, so the guest resumes with these (APM Vol. 2 15.5.2).
            vcpu::SegReg::Fs => v.save.fs = raw,
            vcpu::SegReg::Gs => v.save.gs = raw,
        }
        // The segment registers are in the VMCB's SEG clean-bits group; clear all,
        // as `set_real_mode_cs` does.
        v.control.vmcb_clean = 0;
        true
    }

    /// AMD-V has one shadow bit for STI and MOV SS (`int_state::INTERRUPT_SHADOW`,
    /// VMCB offset 0x68, read at VMRUN and not covered by the clean bits).
    fn set_interrupt_shadow(&mut self, mov_ss: bool) {
        let c = &mut self.vmcb_mut().control;
        c.interrupt_shadow = (c.interrupt_shadow & !int_state::INTERRUPT_SHADOW)
            | if mov_ss {
                int_state::INTERRUPT_SHADOW
            } else {
                0
            };
    }

    fn descriptor_tables(&self) -> Option<(vcpu::state::TableRegister, vcpu::state::Segment)> {
        let s = &self.vmcb().save;
        let gdtr = vcpu::state::TableRegister {
            base: s.gdtr.base,
            limit: s.gdtr.limit as u16,
        };
        Some((gdtr, crate::state::segment_from(&s.ldtr)))
    }

    /// A virtual interrupt (V_IRQ) that the guest would take as soon as it can, with
    /// the VINTR intercept set, exits exactly when the guest opens its interrupt
    /// window (APM 15.21.4); V_IGN_TPR keeps the guest's TPR out of the decision.
    /// The slice's DR0-DR3 and TSC_AUX go back into the vCPU (`run` finds the host
    /// pages of the processor it is on and flushes the ASID after a move).
    fn unload(&mut self) {
        // SAFETY: the scheduler calls `unload` on the processor that ran the vCPU.
        unsafe { self.slice.save() };
    }

    /// The VMCB is plain memory, readable from any processor. DR0-DR3 and TSC_AUX are
    /// read back from this processor first when it still holds them (no `unload` yet);
    /// on another processor the copies saved at the last `unload` are all there is.
    fn save_state(&mut self) -> CpuState {
        if self.slice.loaded() && self.last_cpu == this_processor() {
            // SAFETY: this processor ran the vCPU last and loaded the slice state.
            unsafe { self.slice.save() };
        }
        let soft = state::Soft {
            regs: self.regs,
            dr: self.slice.dr,
            tsc_aux: self.slice.tsc_aux(),
            nmi_masked: self.nmi_masked,
            virq_pending: self.virq_pending,
            fx: self.fx.clone(),
        };
        state::save(self.vmcb(), &soft)
    }

    /// Checks `s` completely (`state::plan`: the neutral rules, this processor's CR4,
    /// EFER and MXCSR support, the VMRUN consistency checks on the resulting VMCB)
    /// before changing anything, then replaces the VMCB's state and the software-kept
    /// parts, and flushes this guest's ASID at the next VMRUN (a move to another
    /// processor flushes there as `run` always does).
    fn load_state(&mut self, s: &CpuState) -> Result<(), StateError> {
        if self.slice.loaded() && self.last_cpu != this_processor() {
            return Err(StateError::Busy(
                "its debug registers and TSC_AUX are still in the processor that ran it: Vcpu::unload must run there first",
            ));
        }
        let plan = state::plan(self.vmcb(), s, &self.limits)?;
        if self.slice.loaded() {
            // SAFETY: this processor ran the vCPU last and loaded the slice state.
            unsafe { self.slice.save() };
        }
        let flush = self.flush;
        let v = self.vmcb_mut();
        v.control = plan.control;
        v.save = plan.save;
        v.control.tlb_control = flush;
        v.control.vmcb_clean = 0;
        let soft = plan.soft;
        self.regs = soft.regs;
        self.fx = soft.fx;
        self.slice.dr = soft.dr;
        // SAFETY: the slice state is not loaded (saved above), so only the copy changes.
        unsafe { self.slice.set_tsc_aux(soft.tsc_aux) };
        self.nmi_masked = soft.nmi_masked;
        self.virq_pending = soft.virq_pending;
        // `skip_instruction` must not act on an exit from before the state.
        self.last = ExitInfo::default();
        Ok(())
    }

    fn request_interrupt_window(&mut self, on: bool) {
        // V_IRQ carries an injected interrupt: no window until the guest takes it.
        if self.virq_pending {
            return;
        }
        let c = &mut self.vmcb_mut().control;
        if on {
            c.int_ctl |= int_ctl::V_IRQ | int_ctl::V_IGN_TPR;
            c.intercept1 |= Intercept1::VINTR.bits();
        } else {
            c.int_ctl &= !(int_ctl::V_IRQ | int_ctl::V_IGN_TPR);
            c.intercept1 &= !Intercept1::VINTR.bits();
        }
    }
}
