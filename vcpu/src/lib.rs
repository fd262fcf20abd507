//! The vendor-neutral vCPU interface: the guest register file, the one exit type the
//! VMM core dispatches on, and the `Vcpu` trait that `vmx` and `svm` implement.
//!
//! Nothing here knows about VMCS fields or VMCB offsets; nothing in the core knows
//! which vendor it runs on.
#![no_std]

pub mod cr_policy;
pub mod delivery_loop;
pub mod fpu;
pub mod mitigation;
pub mod paging;
pub mod slice;
pub mod state;

/// The general-purpose registers that VMRUN / VMRESUME do not switch by themselves.
/// RSP, RIP and RFLAGS live in the VMCB/VMCS and are reached through [`Vcpu`].
///
/// The layout is fixed (`repr(C)`): the vendor entry stubs save and restore it by offset.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestRegisters {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
}

/// The processor mode a guest starts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuMode {
    /// Real mode, CS:IP = `entry >> 4 : entry & 0xf` style flat segment at 0.
    Real,
    /// 32-bit protected mode, flat 4 GiB segments, paging off.
    Protected,
    /// 64-bit long mode with paging (the page tables are given by the loader).
    Long,
}

/// Where and how a vCPU starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartState {
    pub mode: CpuMode,
    pub rip: u64,
    pub rsp: u64,
    /// Guest-physical address of the PML4 for [`CpuMode::Long`]; ignored otherwise.
    pub cr3: u64,
    /// Initial general-purpose registers (boot protocols pass pointers in them).
    pub regs: GuestRegisters,
    /// GDTR (base, limit) when the loader put a GDT in guest memory (Linux's 64-bit
    /// boot protocol wants one); `None` leaves GDTR empty.
    pub gdtr: Option<(u64, u16)>,
}

/// One port I/O access as the guest performed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortIo {
    pub port: u16,
    /// Access width in bytes: 1, 2 or 4.
    pub size: u8,
    pub write: bool,
    /// INS/OUTS: the core decodes the instruction for the memory side and the count.
    pub string: bool,
    pub rep: bool,
}

/// Why the guest stopped running. Every vendor exit maps onto one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    PortIo(PortIo),
    /// An access to guest-physical memory that is mapped as MMIO (not RAM).
    Mmio {
        gpa: u64,
        write: bool,
    },
    Rdmsr {
        msr: u32,
    },
    Wrmsr {
        msr: u32,
        value: u64,
    },
    Cpuid {
        leaf: u32,
        subleaf: u32,
    },
    /// VMMCALL / VMCALL.
    Hypercall,
    /// A write to CR0 or CR4: MOV to CR (and for CR0 also CLTS and LMSW, given as the
    /// CR0 value they produce). `value` is `None` when the backend cannot decode the
    /// instruction (SVM without DecodeAssists): the core decodes it at RIP and steps
    /// over it itself. The core validates the value against the guest's CPUID
    /// ([`cr_policy`]) and either injects the fault or calls [`Vcpu::write_cr`].
    CrWrite {
        cr: u8,
        value: Option<u64>,
    },
    /// XSETBV: XCR number in ECX, value in EDX:EAX.
    Xsetbv {
        xcr: u32,
        value: u64,
    },
    Halt,
    /// A guest-physical access with no mapping, or against the mapping's permissions.
    NestedPageFault {
        gpa: u64,
        write: bool,
        fetch: bool,
    },
    InterruptWindow,
    /// A physical interrupt arrived (for example the hypervisor's own timer).
    ExternalInterrupt,
    /// The hypervisor's time slice for this vCPU ran out.
    Preempted,
    /// Triple fault (or another condition after which the CPU would shut down).
    Shutdown,
    /// The guest executed a virtualization instruction (VMRUN, VMXON, ...): it gets #UD.
    VirtInstruction,
    /// INVD or WBINVD. INVD would discard dirty cache lines of the whole machine, and
    /// WBINVD stalls every processor sharing the caches; guest memory is coherent
    /// without either (nested paging maps it write-back), so the core completes both
    /// as no-ops.
    CacheFlush,
    /// RDPMC (with the guest allowed to use it: CPL 0 or CR4.PCE): no performance
    /// counters are offered (CPUID leaf 0xA is zero), so #GP(0).
    Rdpmc,
    /// An instruction CPUID hides and the processor would otherwise execute natively
    /// (MONITOR, MWAIT; RDPRU on AMD): #UD, as on a processor without it.
    HiddenInstruction,
    /// The guest raised #AC or #DB. Both are always intercepted, because a guest can
    /// make their delivery raise them again forever inside the processor (CVE-2015-5307,
    /// CVE-2015-8104), which no interrupt would end; the backend has already queued the
    /// exception for the guest (with its error code, and DR6 updated for #DB), so the
    /// core only counts it and resumes (and ends an endless loop of them, see
    /// [`delivery_loop`]).
    ExceptionReflected {
        vector: u8,
        /// The exception was raised while the processor delivered this same vector
        /// (the exit's vectoring information): no guest instruction ran between.
        redelivered: bool,
    },
    /// VM entry was refused by the processor; the text explains which check failed.
    EntryFailure {
        code: u64,
        reason: &'static str,
    },
    /// Anything the backend could not decode; `code` is the raw vendor exit code.
    Unknown {
        code: u64,
    },
}

/// A stable, small key for per-reason exit statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ExitKind {
    PortIo,
    Mmio,
    Msr,
    Cpuid,
    Hypercall,
    ControlRegister,
    Halt,
    NestedPageFault,
    InterruptWindow,
    ExternalInterrupt,
    Preempted,
    Shutdown,
    VirtInstruction,
    CacheFlush,
    Rdpmc,
    HiddenInstruction,
    ExceptionReflected,
    EntryFailure,
    Unknown,
}

impl ExitKind {
    pub const COUNT: usize = 19;
    pub const ALL: [ExitKind; Self::COUNT] = [
        ExitKind::PortIo,
        ExitKind::Mmio,
        ExitKind::Msr,
        ExitKind::Cpuid,
        ExitKind::Hypercall,
        ExitKind::ControlRegister,
        ExitKind::Halt,
        ExitKind::NestedPageFault,
        ExitKind::InterruptWindow,
        ExitKind::ExternalInterrupt,
        ExitKind::Preempted,
        ExitKind::Shutdown,
        ExitKind::VirtInstruction,
        ExitKind::CacheFlush,
        ExitKind::Rdpmc,
        ExitKind::HiddenInstruction,
        ExitKind::ExceptionReflected,
        ExitKind::EntryFailure,
        ExitKind::Unknown,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ExitKind::PortIo => "io",
            ExitKind::Mmio => "mmio",
            ExitKind::Msr => "msr",
            ExitKind::Cpuid => "cpuid",
            ExitKind::Hypercall => "hypercall",
            ExitKind::ControlRegister => "cr",
            ExitKind::Halt => "hlt",
            ExitKind::NestedPageFault => "npf",
            ExitKind::InterruptWindow => "intr-window",
            ExitKind::ExternalInterrupt => "extint",
            ExitKind::Preempted => "preempt",
            ExitKind::Shutdown => "shutdown",
            ExitKind::VirtInstruction => "virt-insn",
            ExitKind::CacheFlush => "wbinvd",
            ExitKind::Rdpmc => "rdpmc",
            ExitKind::HiddenInstruction => "hidden-insn",
            ExitKind::ExceptionReflected => "exception",
            ExitKind::EntryFailure => "entry-fail",
            ExitKind::Unknown => "unknown",
        }
    }
}

impl Exit {
    pub fn kind(&self) -> ExitKind {
        match self {
            Exit::PortIo(_) => ExitKind::PortIo,
            Exit::Mmio { .. } => ExitKind::Mmio,
            Exit::Rdmsr { .. } | Exit::Wrmsr { .. } => ExitKind::Msr,
            Exit::Cpuid { .. } => ExitKind::Cpuid,
            Exit::Hypercall => ExitKind::Hypercall,
            Exit::CrWrite { .. } | Exit::Xsetbv { .. } => ExitKind::ControlRegister,
            Exit::Halt => ExitKind::Halt,
            Exit::NestedPageFault { .. } => ExitKind::NestedPageFault,
            Exit::InterruptWindow => ExitKind::InterruptWindow,
            Exit::ExternalInterrupt => ExitKind::ExternalInterrupt,
            Exit::Preempted => ExitKind::Preempted,
            Exit::Shutdown => ExitKind::Shutdown,
            Exit::VirtInstruction => ExitKind::VirtInstruction,
            Exit::CacheFlush => ExitKind::CacheFlush,
            Exit::Rdpmc => ExitKind::Rdpmc,
            Exit::HiddenInstruction => ExitKind::HiddenInstruction,
            Exit::ExceptionReflected { .. } => ExitKind::ExceptionReflected,
            Exit::EntryFailure { .. } => ExitKind::EntryFailure,
            Exit::Unknown { .. } => ExitKind::Unknown,
        }
    }
}

/// A segment register an instruction names (in the ModRM `reg` order of `MOV Sreg`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegReg {
    Es,
    Cs,
    Ss,
    Ds,
    Fs,
    Gs,
}

/// An exception the core asks the backend to inject on the next entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exception {
    pub vector: u8,
    pub error_code: Option<u32>,
}

impl Exception {
    /// Divide error (#DE, vector 0): `DIV`/`IDIV` by zero or with a quotient too
    /// large for its register. No error code.
    pub const DE: Exception = Exception {
        vector: 0,
        error_code: None,
    };
    pub const UD: Exception = Exception {
        vector: 6,
        error_code: None,
    };
    /// Device not available (#NM, vector 7): an x87/MMX/SSE instruction with
    /// CR0.TS set. No error code.
    pub const NM: Exception = Exception {
        vector: 7,
        error_code: None,
    };
    /// x87 floating-point error (#MF, vector 16), raised by the next x87 or MMX
    /// instruction while an unmasked x87 exception is pending. No error code.
    pub const MF: Exception = Exception {
        vector: 16,
        error_code: None,
    };
    /// #XM, the SIMD floating-point exception (vector 19).
    pub const XM: Exception = Exception {
        vector: 19,
        error_code: None,
    };
    pub const GP0: Exception = Exception {
        vector: 13,
        error_code: Some(0),
    };
    /// Debug exception (#DB).
    pub const DB_VECTOR: u8 = 1;
    /// Alignment check (#AC), which always pushes error code 0.
    pub const AC_VECTOR: u8 = 17;
}

/// One guest-physical to host-physical mapping the backend installs in its nested
/// page tables (EPT or NPT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestMapping {
    pub gpa: u64,
    pub hpa: u64,
    pub len: u64,
    pub writable: bool,
    pub executable: bool,
}

/// What a vendor backend offers the core for one virtual CPU.
pub trait Vcpu {
    /// Enter the guest and run until the next exit. `slice_tsc` bounds how long the
    /// guest may run (in TSC cycles) before [`Exit::Preempted`] or
    /// [`Exit::ExternalInterrupt`] gives control back.
    fn run(&mut self, slice_tsc: u64) -> Exit;
    fn regs(&mut self) -> &mut GuestRegisters;
    fn rip(&self) -> u64;
    fn set_rip(&mut self, rip: u64);
    /// Loads CS as real mode does (`selector`, base `selector << 4`): a STARTUP IPI
    /// starts an AP at CS = vector << 8, IP = 0 (SDM Vol. 3A 9.4.4). Only meaningful
    /// while the guest is in real mode (as a vCPU created in [`CpuMode::Real`] is).
    fn set_real_mode_cs(&mut self, selector: u16);
    /// Step over the instruction that caused the last exit (CPUID, RDMSR, OUT, ...).
    fn skip_instruction(&mut self);
    /// Deliver `exception` to the guest on the next entry instead of completing the
    /// exiting instruction.
    fn inject_exception(&mut self, exception: Exception);
    /// The guest's current processor mode (for reports).
    fn mode(&self) -> CpuMode;
    /// The current privilege level (0-3): SS.DPL (SDM Vol. 3A 5.5; VMX keeps it in
    /// the guest SS access rights, SVM in the VMCB's CPL field). Real mode is 0.
    fn cpl(&self) -> u8;
    /// MSRs whose value lives in the VMCB/VMCS (EFER, the TSC): the core's MSR policy
    /// decides whether an access is allowed, the backend carries it out. `None` / `false`
    /// for an MSR the backend does not own (the core then injects #GP).
    fn read_backend_msr(&mut self, msr: u32) -> Option<u64>;
    fn write_backend_msr(&mut self, msr: u32, value: u64) -> bool;
    /// Loads CR0 or CR4 with `value`, which the core validated ([`cr_policy`]), with
    /// the side effects the processor has for a MOV to CR: EFER.LMA follows CR0.PG
    /// with EFER.LME, PAE paging outside IA-32e mode loads the PDPTEs, cached
    /// translations are flushed where the change requires it. Does not step over the
    /// instruction. `false` when the processor would still raise #GP for a reason only
    /// the backend sees (PDPTEs with reserved bits); nothing changed then.
    fn write_cr(&mut self, cr: u8, value: u64) -> bool;
    /// The guest's RFLAGS (IF tells whether a HLT can be woken by an interrupt).
    fn rflags(&self) -> u64;
    /// Loads the guest's RFLAGS (MMIO emulation updates the status flags of an
    /// emulated `TEST`, `CMP`, `ADD`, ...). The backend stores
    /// [`architectural_rflags`]`(rflags)`: bit 1 set and the reserved bits clear, as
    /// VM entry requires (SDM Vol. 3C 27.3.1.4; APM Vol. 2 15.5.1).
    fn set_rflags(&mut self, rflags: u64);
    /// Whether an external interrupt can be delivered on the next entry: RFLAGS.IF set,
    /// no STI/MOV-SS interrupt shadow, and no event already queued for injection.
    fn interrupt_ready(&self) -> bool;
    /// Queues external interrupt `vector` for delivery on the next entry. The caller
    /// checked [`Vcpu::interrupt_ready`].
    fn inject_interrupt(&mut self, vector: u8);
    /// Whether an NMI injected now would be delivered on the next entry: no NMI
    /// handler is running (NMIs stay blocked from the delivery of one until the next
    /// IRET, SDM Vol. 3A 6.7.1 / APM Vol. 2 8.2.2), no MOV SS/STI shadow, and no event
    /// already queued.
    fn nmi_ready(&self) -> bool;
    /// Queues an NMI for delivery on the next entry. The caller checked
    /// [`Vcpu::nmi_ready`].
    fn inject_nmi(&mut self);
    /// Asks for [`Exit::InterruptWindow`] once an NMI could be delivered (VMX:
    /// NMI-window exiting, with virtual NMIs; SVM: the IRET intercept that tracks NMI
    /// blocking already gives that exit); `false` cancels. Unlike the interrupt window,
    /// it does not exit at once while the guest runs with RFLAGS.IF set, which would
    /// keep a guest inside its NMI handler from ever reaching IRET.
    fn request_nmi_window(&mut self, on: bool);
    /// Asks for [`Exit::InterruptWindow`] as soon as the guest can take an interrupt
    /// (SVM: V_IRQ with VINTR intercept; VMX: interrupt-window exiting); `false` cancels.
    fn request_interrupt_window(&mut self, on: bool);
    /// RSP lives in the VMCB/VMCS, not in [`GuestRegisters`].
    fn rsp(&self) -> u64;
    fn set_rsp(&mut self, rsp: u64);
    /// What a guest-virtual address walk needs (MMIO emulation reads the faulting
    /// instruction through the guest's page tables).
    fn control_regs(&self) -> ControlRegs;
    /// The guest's segment register `seg` as loaded (selector, attributes, limit,
    /// base), for instructions the core emulates that address memory through it
    /// (string and stack operands, `MOV r/m16, Sreg`). `None` where the backend cannot
    /// tell (some host tests' vCPUs; both backends report all six).
    fn segment(&self, _seg: SegReg) -> Option<state::Segment> {
        None
    }
    /// The guest's x87/SSE state (its FXSAVE image), for emulating an instruction
    /// that reads or writes XMM, MMX or x87 registers. Between an exit and the next
    /// entry the image *is* the guest's state: a backend that offers it saves it
    /// right after every exit and loads it right before every entry, so what the core
    /// changes here is what the guest sees next. `None` where a backend does not keep
    /// one (the core then cannot emulate such instructions).
    fn fx_area(&mut self) -> Option<&mut fpu::FxArea> {
        None
    }
    /// Loads the guest's segment register `seg` (selector, base, limit, attributes)
    /// as an emulated segment load computed it. `false` (nothing changed) where the
    /// backend cannot (the default; both backends load all six).
    fn set_segment(&mut self, _seg: SegReg, _value: state::Segment) -> bool {
        false
    }
    /// The interrupt shadow after an instruction the core emulated (SDM Vol. 3A
    /// 6.8.3, APM Vol. 2 15.21.5): `false` ends blocking by STI or MOV SS (the
    /// instruction it covered has completed), `true` blocks interrupts, NMIs and
    /// debug traps until the next instruction completes, as a `MOV SS`/`POP SS`
    /// does so that the `MOV (E/R)SP` after it runs on the new stack. The default
    /// does nothing (the host tests' vCPUs).
    fn set_interrupt_shadow(&mut self, _mov_ss: bool) {}
    /// GDTR and LDTR, for a segment-register load the core emulates (a descriptor
    /// read from the guest's tables). `None` where the backend cannot tell.
    fn descriptor_tables(&self) -> Option<(state::TableRegister, state::Segment)> {
        None
    }
    /// Releases whatever of this vCPU the calling processor holds, so that another
    /// processor may `run` it next: the scheduler calls it on the processor that ran
    /// the vCPU last, before any other processor touches it (any method, not only
    /// `run`). VMX: VMCLEAR (a VMCS may be active on one processor only; the next
    /// `run` reloads it and rewrites that processor's host state). SVM: nothing.
    /// A vCPU that stays on one processor never needs it.
    fn unload(&mut self) {}
    /// The vCPU's complete architectural state ([`state::CpuState`]). Called while the
    /// vCPU is not running, like every method: after `unload`, from any processor, or
    /// on the processor that ran it last (the per-slice state is then read back from
    /// that processor first). Changes nothing the guest can see; a VT-x vCPU whose VMCS
    /// was not active anywhere is left that way. On a processor other than the one
    /// holding the vCPU (no `unload` there) the processor-held parts cannot be read:
    /// VT-x logs an error and reads its VMCS fields as 0 (the result then fails
    /// [`state::CpuState::check`]); AMD-V gives DR0-DR3 and TSC_AUX as of the last
    /// `unload`. Call it after `unload` and neither happens.
    fn save_state(&mut self) -> state::CpuState;
    /// Replaces the vCPU's architectural state with `s`, so that the next `run`
    /// continues from it (RIP, paging mode, pending event, ...). Under the same
    /// conditions as [`Vcpu::save_state`]. `s` is checked first, against
    /// [`state::CpuState::check`] and against what this backend's VM entry requires;
    /// on any error nothing of the vCPU has changed ([`state::StateError::Busy`] when
    /// another processor still holds it). On success the vCPU is left
    /// unloaded (any processor may run it next) and the guest's cached translations
    /// are flushed at the next entry. Nested paging, the ASID/VPID and the vCPU's
    /// processor affinity are the backend's and are not part of the state.
    fn load_state(&mut self, s: &state::CpuState) -> Result<(), state::StateError>;
    /// Maps the 4 KiB guest page `gpa` to the host frame `hpa` (read and execute,
    /// and write if `writable`: a page shared copy-on-write is mapped read-only)
    /// in this vCPU's nested page tables, where nothing maps it now (a page given
    /// back to a ballooned guest, or first touched by a clone). Nothing is cached
    /// for an unmapped page, so no flush is needed.
    fn map_page(
        &mut self,
        mem: &mut dyn HostMemory,
        gpa: u64,
        hpa: u64,
        writable: bool,
    ) -> Result<(), BackendError>;
    /// Removes the 4 KiB guest page `gpa` from this vCPU's nested page tables
    /// (splitting a larger leaf around it) and flushes the guest's cached
    /// translations at the next entry, on whichever processor that is. Called
    /// while the vCPU is not running, like every method.
    fn unmap_page(&mut self, mem: &mut dyn HostMemory, gpa: u64) -> Result<(), BackendError>;
}

/// RFLAGS bit 1: reserved, always 1.
pub const RFLAGS_FIXED_1: u64 = 1 << 1;
/// RFLAGS bits reserved as 0: 63:22, 15, 5 and 3 (SDM Vol. 1 3.4.3, Vol. 3C 27.3.1.4).
pub const RFLAGS_RESERVED_ZERO: u64 = !0u64 << 22 | 1 << 15 | 1 << 5 | 1 << 3;

/// `rflags` with the architectural fixed bit set and the reserved bits cleared: what
/// [`Vcpu::set_rflags`] stores.
pub const fn architectural_rflags(rflags: u64) -> u64 {
    rflags & !RFLAGS_RESERVED_ZERO | RFLAGS_FIXED_1
}

/// The guest's paging-relevant control state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ControlRegs {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    /// CS base (real mode and compatibility segments) and whether CS is 64-bit.
    pub cs_base: u64,
    pub cs_long: bool,
}

/// Host physical memory as a backend needs it: zeroed, page-aligned, contiguous
/// allocations for its control structures (VMCB/VMCS, permission bitmaps, nested page
/// tables), reached through the hypervisor's mapping of physical memory.
pub trait HostMemory: paging::TableMemory {
    /// `size` bytes (a page multiple), zeroed, aligned to `align`; host-physical address.
    fn alloc(&mut self, size: u64, align: u64) -> Option<u64>;
    fn free(&mut self, pa: u64, size: u64);
    /// Where host-physical `pa` can be accessed: a linear mapping (`virt(pa) ==
    /// virt(0) + pa`), which backends may rely on to reach their tables later.
    fn virt(&mut self, pa: u64) -> *mut u8;
}

/// Why a backend could not set up or run a vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendError {
    OutOfMemory,
    /// The nested page tables could not map guest RAM.
    Map(paging::MapError),
    /// A check the manuals require failed (VMCB consistency, VMX control settings);
    /// the text names it.
    Check(&'static str),
    /// All address-space tags (ASIDs / VPIDs) are in use.
    NoTagsLeft,
}

impl core::fmt::Display for BackendError {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match self {
            BackendError::OutOfMemory => write!(f, "out of host memory for control structures"),
            BackendError::Map(e) => write!(f, "nested page tables: {e:?}"),
            BackendError::Check(what) => write!(f, "{what}"),
            BackendError::NoTagsLeft => write!(f, "no free ASID/VPID"),
        }
    }
}

/// A vendor's virtualization extension once enabled on this processor: it makes vCPUs.
/// The core is generic over it; `boot` picks the implementation from CPUID.
pub trait Backend {
    type Vcpu: Vcpu;
    /// "VT-x" or "AMD-V".
    fn name(&self) -> &'static str;
    /// A vCPU whose guest-physical memory is exactly `ram` (everything else faults to
    /// the core as [`Exit::NestedPageFault`]), starting as `start` says.
    fn create_vcpu(
        &mut self,
        mem: &mut dyn HostMemory,
        ram: &[GuestMapping],
        start: &StartState,
    ) -> Result<Self::Vcpu, BackendError>;
    /// Returns every host resource the vCPU held (control structures, page tables, its
    /// ASID/VPID).
    fn destroy_vcpu(&mut self, mem: &mut dyn HostMemory, vcpu: Self::Vcpu);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn architectural_rflags_sets_bit_1_and_clears_reserved_bits() {
        assert_eq!(architectural_rflags(0), 2);
        // CF PF AF ZF SF TF IF DF OF IOPL NT RF VM AC VIF VIP ID survive.
        let defined = 0x003f_7fd5;
        assert_eq!(architectural_rflags(defined), defined | 2);
        assert_eq!(architectural_rflags(u64::MAX), defined | 2);
        assert_eq!(architectural_rflags(1 << 3 | 1 << 5 | 1 << 15 | 1 << 22), 2);
    }
}
