//! The host's processors: starting every application processor (AP) the ACPI MADT
//! lists, the per-CPU table, and the interface the VMM's scheduler uses to run on all
//! of them.
//!
//! # Interface for the scheduler
//!
//! - [`cpu_count`]: processors online (the boot processor and every AP that came up).
//!   Fixed once [`boot_aps`] returned.
//! - [`this_cpu`]: the calling processor's dense index, `0..cpu_count()`, BSP = 0. One
//!   load through GS (each processor's GS base points at its own [`PerCpu`] entry);
//!   valid in interrupt handlers and guest exit paths (VMLOAD / the VMCS host state
//!   restore the host GS base).
//! - [`apic_id`]: the local APIC ID of a processor index.
//! - [`start_aps`]: hands every parked AP the scheduler's entry `fn(cpu) -> !`. The APs
//!   wait in HLT (interrupts on, their timer running) until then; the call returns at
//!   once, so the boot processor then runs `entry(0)` itself.
//! - [`kick`]: a fixed IPI on [`KICK_VECTOR`] to a processor: one running a guest
//!   takes a VM exit (SVM intercepts physical INTR, VMX has external-interrupt
//!   exiting) and one halted in `timer::idle` wakes. The handler only EOIs.
//!
//! Each processor has its own GDT, TSS and IST stacks (`gdt`), loads the one IDT
//! (`interrupts`), enables its local APIC (`apic`) and runs its own APIC timer
//! (`timer`). Each enables the virtualization extension on itself at bring-up through
//! the hook `boot` passes (`SvmBackend::enable_this_cpu` / `VmxBackend::enable_this_cpu`),
//! so a backend's vCPUs can run on any processor (see `Vcpu::unload` for moving one).
//!
//! # Bring-up
//!
//! INIT, 10 ms, STARTUP, 200 us, STARTUP, 200 us (SDM Vol. 3A 9.4.4.1), one AP at a
//! time, sharing one trampoline page (`ap_trampoline`) below 1 MiB taken from the
//! firmware map's usable low memory, which the frame allocator never hands out
//! (`memory_map::LOW_MEMORY_END`). A second low page holds a copy of the kernel's PML4
//! so that the AP's 32-bit MOV CR3 can reach it; the trampoline page is mapped at its
//! own address in the kernel's tables during bring-up, then unmapped. An AP that does
//! not answer, or fails its own set-up, gets an INIT (back to wait-for-SIPI, running
//! nothing) and is left out; its index goes to the next one, so indices stay dense.

use alloc::boxed::Box;
use alloc::string::String;
use bootloader_api::info::MemoryRegions;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use spin::Once;
use x86_64::registers::control::{Cr0, Cr3, Cr4};
use x86_64::registers::model_specific::{Efer, GsBase};
use x86_64::VirtAddr;

use crate::{ap_trampoline as tramp, apic, gdt, interrupts, memory, println, time, timer};

/// Processors beyond this many are reported and left out.
pub const MAX_CPUS: usize = 64;
/// The IPI that makes a processor leave its guest or its HLT.
pub const KICK_VECTOR: u8 = 0xF1;
/// Each AP's kernel stack, as large as the boot processor's (`main.rs`).
const AP_STACK_SIZE: u64 = 128 * 1024;

const OFF: u8 = 0;
const STARTED: u8 = 1;
const ONLINE: u8 = 2;
const FAILED: u8 = 3;

/// One processor's entry in the per-CPU table; its GS base points here.
#[repr(C)]
pub struct PerCpu {
    /// Must stay first: [`this_cpu`] reads it at GS:0.
    index: usize,
    apic_id: AtomicU32,
    state: AtomicU8,
    /// Kick IPIs taken.
    kicks: AtomicU64,
    /// A kick IPI is on its way here and not handled yet: a second one would change
    /// nothing, so it is not sent (an IPI storm in a guest becomes at most one host
    /// IPI per processor at a time).
    kick_pending: core::sync::atomic::AtomicBool,
    /// The VM whose vCPU this processor ran last ([`NO_VM`] before the first), for
    /// the predictor barrier between VMs (`mitigation`).
    last_vm: AtomicUsize,
}

/// [`PerCpu::last_vm`] before a processor has run any VM.
pub const NO_VM: usize = usize::MAX;

const fn table() -> [PerCpu; MAX_CPUS] {
    let mut t = [const {
        PerCpu {
            index: 0,
            apic_id: AtomicU32::new(0),
            state: AtomicU8::new(OFF),
            kicks: AtomicU64::new(0),
            kick_pending: core::sync::atomic::AtomicBool::new(false),
            last_vm: AtomicUsize::new(NO_VM),
        }
    }; MAX_CPUS];
    let mut i = 0;
    while i < MAX_CPUS {
        t[i].index = i;
        i += 1;
    }
    t
}

static CPUS: [PerCpu; MAX_CPUS] = table();
static ONLINE_COUNT: AtomicUsize = AtomicUsize::new(1);
static ENTRY: Once<fn(usize) -> !> = Once::new();

/// What an AP does with the virtualization extension at bring-up: enable it on itself
/// and say which, or why it could not.
pub type ExtensionHook = dyn Fn() -> Result<&'static str, String> + Sync;
static EXTENSION_HOOK: Once<Option<&'static ExtensionHook>> = Once::new();

/// Points the boot processor's GS base at entry 0. Call before anything uses
/// [`this_cpu`] (the interrupt handlers do).
pub fn init_bsp() {
    GsBase::write(VirtAddr::new(&CPUS[0] as *const PerCpu as u64));
}

pub fn cpu_count() -> usize {
    ONLINE_COUNT.load(Ordering::Acquire)
}

pub fn this_cpu() -> usize {
    let index: usize;
    // SAFETY: every processor points GS at its own `PerCpu` (`init_bsp`, `ap_main`)
    // before running anything that calls this; the first word is `index`.
    unsafe {
        core::arch::asm!("mov {}, gs:[0]", out(reg) index, options(nostack, readonly, preserves_flags))
    };
    index
}

/// Records that the calling processor is about to run a vCPU of VM `vm` and returns
/// the VM it ran before ([`NO_VM`] the first time). Only the processor itself
/// touches its entry.
pub fn switch_vm(vm: usize) -> usize {
    CPUS[this_cpu()].last_vm.swap(vm, Ordering::Relaxed)
}

/// The local APIC ID of processor `cpu` (`cpu < cpu_count()`).
pub fn apic_id(cpu: usize) -> u32 {
    CPUS[cpu].apic_id.load(Ordering::Relaxed)
}

/// Lets every parked AP run `entry(its index)`. Returns at once; the caller (the boot
/// processor) then calls `entry(0)` itself. Later calls do nothing.
pub fn start_aps(entry: fn(cpu: usize) -> !) {
    ENTRY.call_once(|| entry);
    for cpu in 1..cpu_count() {
        kick(cpu);
    }
}

/// Sends [`KICK_VECTOR`] to processor `cpu`: it leaves the guest it runs (a VM exit
/// for an external interrupt) or wakes from `timer::idle`. Does nothing for the
/// calling processor itself or an index that is not online.
pub fn kick(cpu: usize) {
    if cpu >= cpu_count() || cpu == this_cpu() {
        return;
    }
    if CPUS[cpu].kick_pending.swap(true, Ordering::AcqRel) {
        return;
    }
    let id = apic_id(cpu);
    x86_64::instructions::interrupts::without_interrupts(|| {
        apic::send_ipi_nowait(id, apic::ICR_FIXED | KICK_VECTOR as u32);
    });
}

extern "x86-interrupt" fn kick_handler(_frame: x86_64::structures::idt::InterruptStackFrame) {
    let me = &CPUS[this_cpu()];
    me.kicks.fetch_add(1, Ordering::Relaxed);
    // Cleared before the EOI: a kick sent from now on is delivered again.
    me.kick_pending.store(false, Ordering::Release);
    apic::eoi();
}

/// Waits up to `timeout_us` for `done`.
fn wait_for(timeout_us: u64, done: impl Fn() -> bool) -> bool {
    let start = time::rdtsc();
    let cycles = time::micros_to_tsc(timeout_us);
    while !done() {
        if time::rdtsc().wrapping_sub(start) >= cycles {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

/// The bring-up's last check, on the paths the scheduler relies on: each parked AP
/// takes an NMI (and carries on: host NMIs must not stop the hypervisor) and then a
/// kick IPI. Returns how many answered both.
fn check_ipis(online: usize) -> usize {
    let mut answered = 0;
    for (cpu, me) in CPUS.iter().enumerate().take(online).skip(1) {
        let id = apic_id(cpu);
        let nmis = interrupts::nmi_count();
        x86_64::instructions::interrupts::without_interrupts(|| {
            apic::send_ipi(id, apic::ICR_NMI);
        });
        let nmi_ok = wait_for(100_000, || interrupts::nmi_count() > nmis);
        let kicks = me.kicks.load(Ordering::Relaxed);
        kick(cpu);
        let kick_ok = wait_for(100_000, || me.kicks.load(Ordering::Relaxed) > kicks);
        match (nmi_ok, kick_ok) {
            (true, true) => answered += 1,
            (false, _) => println!("hv: cpu {cpu} (APIC id {id}) did not take an NMI"),
            (true, false) => {
                println!("hv: cpu {cpu} (APIC id {id}) did not take a kick IPI after an NMI")
            }
        }
    }
    answered
}

pub fn handlers() -> [(u8, interrupts::IrqHandler); 1] {
    [(KICK_VECTOR, kick_handler)]
}

fn delay_us(us: u64) {
    let start = time::rdtsc();
    let cycles = time::micros_to_tsc(us);
    while time::rdtsc().wrapping_sub(start) < cycles {
        core::hint::spin_loop();
    }
}

/// Waits up to `timeout_us` for processor `cpu` to leave `state`; returns the new state.
fn wait_while(cpu: usize, state: u8, timeout_us: u64) -> u8 {
    let start = time::rdtsc();
    let cycles = time::micros_to_tsc(timeout_us);
    loop {
        let now = CPUS[cpu].state.load(Ordering::Acquire);
        if now != state || time::rdtsc().wrapping_sub(start) >= cycles {
            return now;
        }
        core::hint::spin_loop();
    }
}

/// The trampoline and PML4-copy pages, and the parameter block's address.
struct Trampoline {
    page: u64,
    params: *mut u8,
}

impl Trampoline {
    fn put(&self, offset: usize, value: u64) {
        // SAFETY: `params` is the parameter block in the trampoline page (reached
        // through the physical mapping), `offset` one of its 8-byte fields; no AP reads
        // it concurrently (one AP at a time, after it signalled STARTED or was reset).
        unsafe {
            (self.params.add(offset) as *mut u64).write_volatile(value);
        }
    }
}

/// Finds and fills the trampoline: the code page (mapped at its own address) and the
/// PML4 copy below 4 GiB.
fn prepare_trampoline(regions: &MemoryRegions) -> Result<Trampoline, &'static str> {
    let blob = tramp::blob();
    let mut pages = memory::low_free_pages(regions);
    let mut code = None;
    let mut table = None;
    for pa in pages.by_ref() {
        if code.is_none() && memory::map_identity(pa).is_ok() {
            code = Some(pa);
        } else if table.is_none() {
            table = Some(pa);
        }
        if code.is_some() && table.is_some() {
            break;
        }
    }
    let (Some(page), Some(pml4)) = (code, table) else {
        if let Some(page) = code {
            memory::unmap_identity(page);
        }
        return Err("no two free pages below 1 MiB that can be mapped for the start-up code");
    };
    let (l4, _) = Cr3::read();
    // SAFETY: both pages are usable RAM below 1 MiB that nothing else uses (the frame
    // allocator never hands out low memory); the PML4 copy is taken after the
    // identity mapping was added, so it contains it.
    unsafe {
        let dst = memory::phys_to_virt(page);
        core::ptr::write_bytes(dst, 0, 4096);
        core::ptr::copy_nonoverlapping(blob.bytes.as_ptr(), dst, blob.bytes.len());
        core::ptr::copy_nonoverlapping(
            memory::phys_to_virt(l4.start_address().as_u64()),
            memory::phys_to_virt(pml4),
            4096,
        );
    }
    let t = Trampoline {
        page,
        params: memory::phys_to_virt(page + tramp::DATA as u64),
    };
    for (i, d) in tramp::GDT.iter().enumerate() {
        t.put(tramp::D_GDT + 8 * i, *d);
    }
    let gdt_base = page + (tramp::DATA + tramp::D_GDT) as u64;
    t.put(
        tramp::D_GDTR,
        (tramp::GDT.len() * 8 - 1) as u64 | (gdt_base << 16),
    );
    t.put(
        tramp::D_PM_PTR,
        (page + blob.pm_offset as u64) | ((tramp::SEL_CODE32 as u64) << 32),
    );
    t.put(
        tramp::D_LM_PTR,
        (page + blob.lm_offset as u64) | ((tramp::SEL_CODE64 as u64) << 32),
    );
    t.put(tramp::D_CR3_LOW, pml4);
    // SCE, LME, NXE as the boot processor has them (NXE before paging: the kernel's
    // tables use bit 63); SVME is the per-CPU enable's business.
    let efer = Efer::read_raw() & ((1 << 0) | (1 << 8) | (1 << 11));
    t.put(tramp::D_EFER, efer | (1 << 8));
    t.put(
        tramp::D_KERNEL_CR3,
        Cr3::read_raw().0.start_address().as_u64(),
    );
    // CR4 as the boot processor's, without VMXE (set by the per-CPU enable), with
    // OSFXSR and OSXMMEXCPT: guests' x87/SSE state is switched with FXSAVE/FXRSTOR.
    let cr4 = (Cr4::read_raw() & !(1 << 13)) | (1 << 9) | (1 << 10);
    t.put(tramp::D_CR4, cr4);
    // CR0 as the boot processor's, without EM and TS (FXSAVE must not fault).
    t.put(tramp::D_CR0, Cr0::read_raw() & !((1 << 2) | (1 << 3)));
    t.put(
        tramp::D_ENTRY,
        ap_main as extern "C" fn(usize) -> ! as usize as u64,
    );
    log::info!(
        "AP start-up code at {page:#x} (STARTUP vector {:#x}), its PML4 copy at {pml4:#x}",
        page >> 12
    );
    Ok(t)
}

/// Starts every AP in `apic_ids` (the MADT's list; the boot processor's own ID is
/// skipped) and waits until each is online or left out. `hook` enables the
/// virtualization extension on each AP (`None`: the machine has none). Returns the
/// number of processors online.
pub fn boot_aps(
    regions: &MemoryRegions,
    apic_ids: &[u32],
    hook: Option<&'static ExtensionHook>,
) -> usize {
    let bsp_id = apic::id();
    CPUS[0].apic_id.store(bsp_id, Ordering::Relaxed);
    CPUS[0].state.store(ONLINE, Ordering::Release);
    EXTENSION_HOOK.call_once(|| hook);
    let aps: alloc::vec::Vec<u32> = apic_ids
        .iter()
        .copied()
        .filter(|&id| id != bsp_id)
        .collect();
    if aps.is_empty() {
        return 1;
    }
    if apic::mode() == apic::Mode::None {
        println!(
            "hv: no usable local APIC: the {} other processor(s) stay off",
            aps.len()
        );
        return 1;
    }
    if apic::mode() == apic::Mode::XApic && aps.iter().any(|&id| id > 0xFF) {
        println!("hv: xAPIC mode cannot address APIC IDs above 255: those processors stay off");
    }
    let t = match prepare_trampoline(regions) {
        Ok(t) => t,
        Err(why) => {
            println!("hv: cannot start the other processors: {why}");
            return 1;
        }
    };
    let vector = (t.page >> 12) as u32;
    let mut next = 1;
    for id in aps {
        if next >= MAX_CPUS {
            println!("hv: cpu (APIC id {id}) left out: at most {MAX_CPUS} processors are used");
            continue;
        }
        if apic::mode() == apic::Mode::XApic && id > 0xFF {
            continue;
        }
        let Ok(stack) = memory::alloc_zeroed(AP_STACK_SIZE, 4096) else {
            println!("hv: cpu {next} (APIC id {id}) left out: no memory for its stack");
            break;
        };
        let cpu = &CPUS[next];
        cpu.apic_id.store(id, Ordering::Relaxed);
        cpu.state.store(OFF, Ordering::Release);
        t.put(
            tramp::D_STACK,
            memory::phys_to_virt(stack) as u64 + AP_STACK_SIZE,
        );
        t.put(tramp::D_CPU, next as u64);
        core::sync::atomic::fence(Ordering::SeqCst);
        x86_64::instructions::interrupts::without_interrupts(|| {
            apic::send_ipi(id, apic::ICR_INIT | apic::ICR_LEVEL_ASSERT);
            delay_us(10_000);
            for _ in 0..2 {
                apic::send_ipi(id, apic::ICR_STARTUP | vector);
                delay_us(200);
            }
        });
        let state = match wait_while(next, OFF, 1_000_000) {
            // Enabling the extension and seeing the timer tick takes a few ms.
            STARTED => wait_while(next, STARTED, 5_000_000),
            s => s,
        };
        match state {
            ONLINE => {
                next += 1;
                ONLINE_COUNT.store(next, Ordering::Release);
                continue;
            }
            OFF => println!("hv: cpu {next} (APIC id {id}) did not start"),
            STARTED => {
                println!("hv: cpu {next} (APIC id {id}) started but did not finish its set-up")
            }
            _ => {} // FAILED: the AP said why
        }
        // Back to wait-for-SIPI: it runs nothing more and its stack is free again.
        apic::send_ipi(id, apic::ICR_INIT | apic::ICR_LEVEL_ASSERT);
        delay_us(10_000);
        cpu.state.store(OFF, Ordering::Release);
        memory::free(stack, AP_STACK_SIZE);
    }
    memory::unmap_identity(t.page);
    if next > 1 {
        let answered = check_ipis(next);
        println!(
            "hv: NMI and kick IPI answered by {answered} of {} APs",
            next - 1
        );
    }
    next
}

/// The AP's first Rust code, called by the trampoline on its own stack with its index.
extern "C" fn ap_main(cpu: usize) -> ! {
    let me = &CPUS[cpu];
    GsBase::write(VirtAddr::new(me as *const PerCpu as u64));
    // From here the boot processor may reuse the trampoline's parameters.
    me.state.store(STARTED, Ordering::Release);
    let id = me.apic_id.load(Ordering::Relaxed);
    let fail = |why: &dyn core::fmt::Display| -> ! {
        println!("hv: cpu {cpu} (APIC id {id}) left out: {why}");
        me.state.store(FAILED, Ordering::Release);
        crate::shutdown::halt_forever()
    };
    if let Err(e) = gdt::init_ap() {
        fail(&alloc::format!(
            "no memory for its GDT, TSS and IST stacks: {e:?}"
        ));
    }
    interrupts::load();
    apic::enable_this_cpu(timer::SPURIOUS_VECTOR, false);
    if apic::id() != id {
        fail(&alloc::format!("its local APIC reports ID {}", apic::id()));
    }
    let ext = match EXTENSION_HOOK.get().copied().flatten() {
        None => String::from("no virtualization extension"),
        Some(hook) => match hook() {
            Ok(name) => alloc::format!("{name} enabled"),
            Err(why) => fail(&alloc::format!(
                "enabling the virtualization extension failed: {why}"
            )),
        },
    };
    if !timer::start_this_cpu() {
        fail(&"its local APIC timer does not interrupt");
    }
    println!("hv: cpu {cpu} online (APIC id {id}), {ext}, LAPIC timer ticking");
    me.state.store(ONLINE, Ordering::Release);
    park(cpu)
}

/// A call posted by [`run_on`]: the target processor, the function (its lifetime
/// erased; `run_on` keeps it alive until the call finished), and whether the target
/// has taken it.
struct Call {
    cpu: usize,
    f: *mut (dyn FnMut() + Send + 'static),
    taken: bool,
}

// SAFETY: the function behind `f` is `Send`; only the target processor calls it, while
// `run_on`'s caller waits.
unsafe impl Send for Call {}

static MAILBOX: spin::Mutex<Option<Call>> = spin::Mutex::new(None);
static CALLS_DONE: AtomicU64 = AtomicU64::new(0);

/// Runs `f` on the parked AP `cpu` and waits until it returned. Only parked APs
/// (before [`start_aps`]) take calls: false if `cpu` is not one, or did not take the
/// call within `timeout_us` (it then never runs).
pub fn run_on(cpu: usize, timeout_us: u64, f: &mut (dyn FnMut() + Send)) -> bool {
    if cpu == 0 || cpu >= cpu_count() || ENTRY.get().is_some() {
        return false;
    }
    // SAFETY: only the lifetime is erased; this function does not return while the
    // target may still call `f` (it waits for completion once the call was taken, and
    // withdraws it otherwise).
    let f: *mut (dyn FnMut() + Send + 'static) = unsafe { core::mem::transmute(f) };
    let done = CALLS_DONE.load(Ordering::Acquire);
    {
        let mut mailbox = MAILBOX.lock();
        if mailbox.is_some() {
            return false;
        }
        *mailbox = Some(Call {
            cpu,
            f,
            taken: false,
        });
    }
    kick(cpu);
    let taken = wait_for(timeout_us, || {
        MAILBOX.lock().as_ref().is_none_or(|c| c.taken)
    });
    if !taken {
        let mut mailbox = MAILBOX.lock();
        if mailbox.as_ref().is_some_and(|c| !c.taken) {
            *mailbox = None;
            return false;
        }
    }
    while CALLS_DONE.load(Ordering::Acquire) == done {
        core::hint::spin_loop();
    }
    true
}

/// A parked AP's side of [`run_on`].
fn take_call(cpu: usize) {
    let f = {
        let mut mailbox = MAILBOX.lock();
        match mailbox.as_mut() {
            Some(call) if call.cpu == cpu && !call.taken => {
                call.taken = true;
                call.f
            }
            _ => return,
        }
    };
    // SAFETY: `run_on` keeps the function alive and waits until CALLS_DONE moves.
    unsafe { (*f)() };
    *MAILBOX.lock() = None;
    CALLS_DONE.fetch_add(1, Ordering::Release);
}

/// Parked: halt until [`start_aps`] provides the entry, then run it; meanwhile take
/// calls from [`run_on`].
fn park(cpu: usize) -> ! {
    loop {
        if let Some(entry) = ENTRY.get() {
            entry(cpu);
        }
        take_call(cpu);
        // IF=0 while checking: a kick arriving after the check stays pending and ends
        // the HLT (STI's one-instruction shadow covers the gap).
        timer::idle();
    }
}

/// Keeps a boxed hook alive for the APs (the caps it captures live in it).
pub fn leak_hook(hook: Box<ExtensionHook>) -> &'static ExtensionHook {
    Box::leak(hook)
}
