//! Starting the VMs of the bundle and running their vCPUs on every physical CPU.
//!
//! Every vCPU of every VM is a task in one run queue (`sched`); each physical CPU
//! takes the next runnable task allowed on it, runs it for one time slice (ended by
//! the VMX preemption timer, or by the host's tick once half of it has passed:
//! `sched::SliceClock`), gives it back and takes the next. So a guest that spins with interrupts disabled holds one CPU for one
//! slice at a time and never delays vCPUs on other CPUs. A VM's devices and local
//! APICs (`VmShared`) are behind the VM's lock, taken only to handle an exit, never
//! while a guest runs. An IPI or interrupt for a vCPU that runs on another CPU kicks
//! that CPU out of guest mode so the vCPU sees it at once.
//!
//! A VM that fails to start, faults or misbehaves is stopped alone, with all its
//! vCPUs (the CPUs running them are kicked), and its memory goes back to the pool.
//! A VM's vCPU 0 starts as its image says; the others wait for INIT/STARTUP from the
//! guest (SDM Vol. 3A 9.4.4) and are reset to real mode at the STARTUP vector here,
//! where the backend is at hand.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use bundle::VmSpec;
use core::fmt::Write as _;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use spin::Mutex;
use vcpu::{Backend, CpuMode, StartState, Vcpu};

use super::console::Piece;
use super::console_queue::{ConsoleQueue, Kind, Out};
use super::host_memory::{KernelMemory, RamFrames, KERNEL_RAM};
use super::loader::{self, PAGE_TABLES_GPA};
use super::net::{self, NicPort, SharedHub};
use super::policy::{self, CpuidResult};
use super::sched::{RunQueue, SliceClock, SliceEvent};
use super::stats::ExitStats;
use super::vm::{
    self, GuestRam, MachineInfo, Next, RunState, VcpuCtx, VmDisk, VmShared, MAX_VCPUS,
};
use crate::{memory, println, serial, smp, time, timer};
use guestram::RamMap;

mod clones;
mod metrics;
mod mgmt;
mod snapshot_disk;
mod snapshots;

/// A VM that restarts this often within [`RESTART_WINDOW_MS`] is stopped instead: it
/// resets as soon as it starts.
const RESTARTS_MAX: usize = 3;
const RESTART_WINDOW_MS: u64 = 10_000;
/// A slice is one timer period; the backend may also bound it itself.
const SLICE_MICROS: u64 = 1_000_000 / timer::TICK_HZ as u64;

/// One vCPU of a VM, with its CPU-time account; out of its mutex while a CPU runs it.
struct VcpuSlot<V: Vcpu> {
    ctx: VcpuCtx<V>,
    /// Entered the guest at least once (a STARTUP then needs a fresh vCPU).
    ran: bool,
    /// TSC cycles spent in this vCPU's slices (guest time and exit handling).
    cpu_tsc: u64,
    /// The host processors it has run on (bit per processor).
    ran_on: u64,
}

/// What a VM's lifetime needs besides its devices and vCPUs.
struct Life {
    /// What it was started from (a restart loads the image again).
    spec: VmSpec<'static>,
    /// Its RAM is `machine.ram`.
    machine: MachineInfo,
    ram_size: u64,
    /// The CPU time (TSC cycles, all vCPUs together) after which the VM is stopped.
    limit_tsc: Option<u64>,
    limit_ms: u32,
    background: bool,
    /// The operator paused it: no vCPU of it is picked until it is resumed.
    paused: bool,
    /// When it (re)started (TSC), for its uptime.
    started_tsc: u64,
    /// `VmEntry::run_tsc` when it (re)started: the console's `stats` counts from
    /// there, while the run limit counts across restarts.
    run_tsc_at_start: u64,
    /// Why the VM stops, once it must.
    stop: Option<String>,
    /// Why the VM restarts, while a restart waits for its vCPUs to come back.
    restart: Option<String>,
    /// When it last restarted (TSC), for cutting off a restart loop.
    restarts: Vec<u64>,
    /// Its resources were returned.
    finished: bool,
}

impl<V: Vcpu> VmEntry<V> {
    /// Puts freshly built devices and vCPUs in place (a restart, a start after a
    /// stop); the exit counts start again.
    fn install(&self, shared: VmShared, slots: Vec<VcpuSlot<V>>) {
        *self.shared.lock() = shared;
        for (i, s) in slots.into_iter().enumerate() {
            *self.slots[i].lock() = Some(s);
            *self.exits[i].lock() = ExitStats::default();
        }
    }

    /// The VM's time, for its devices (see `clock_offset`).
    fn now_ns(&self) -> u64 {
        self.now_ns_at(time::rdtsc())
    }

    /// The VM's time when the TSC read `tsc`.
    fn now_ns_at(&self, tsc: u64) -> u64 {
        time::uptime_ns_at(tsc).wrapping_add(self.clock_offset.load(Ordering::Relaxed))
    }
}

/// How many clones (`clone NAME NEW`) a machine can hold besides its VMs.
const CLONE_SLOTS: usize = 8;

/// The machine's VMs: the bundle's, then the clones the operator made. An entry,
/// once made, stays (running or stopped) at its index, so processors reach it
/// without a lock; new ones are appended (`VmTable::push`).
struct VmTable<V: Vcpu> {
    entries: Vec<spin::Once<VmEntry<V>>>,
    count: AtomicUsize,
    /// Serializes `push`.
    adding: Mutex<()>,
}

impl<V: Vcpu> VmTable<V> {
    /// `vms`, and room for `spare` more.
    fn new(vms: Vec<VmEntry<V>>, spare: usize) -> Self {
        let count = vms.len();
        let mut entries: Vec<spin::Once<VmEntry<V>>> =
            vms.into_iter().map(spin::Once::initialized).collect();
        entries.extend((0..spare).map(|_| spin::Once::new()));
        Self {
            entries,
            count: AtomicUsize::new(count),
            adding: Mutex::new(()),
        }
    }

    fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Room for every VM there can be.
    fn capacity(&self) -> usize {
        self.entries.len()
    }

    fn iter(&self) -> impl Iterator<Item = &VmEntry<V>> {
        (0..self.len()).map(|i| &self[i])
    }

    /// Appends `vm`; its index, or `None` when the table is full.
    fn push(&self, vm: VmEntry<V>) -> Option<usize> {
        let _one = self.adding.lock();
        let i = self.len();
        self.entries.get(i)?.call_once(|| vm);
        self.count.store(i + 1, Ordering::Release);
        Some(i)
    }
}

impl<V: Vcpu> core::ops::Index<usize> for VmTable<V> {
    type Output = VmEntry<V>;
    fn index(&self, i: usize) -> &VmEntry<V> {
        self.entries[i]
            .get()
            .expect("VM indexes come from VmTable::len")
    }
}

struct VmEntry<V: Vcpu> {
    name: String,
    /// Set when a frame waits for one of its NICs: its vCPUs are kicked.
    net_wake: Mutex<Option<alloc::sync::Arc<AtomicBool>>>,
    /// CPU time its vCPUs have used, in TSC cycles (what `run_limit_ms` bounds).
    run_tsc: AtomicU64,
    /// The VM's clock: its devices' time (`now_ns`) is the hypervisor's uptime plus
    /// this (wrapping). 0 until a snapshot's restore makes the VM's time go on from
    /// the snapshot's instant.
    clock_offset: AtomicU64,
    shared: Mutex<VmShared>,
    slots: Vec<Mutex<Option<VcpuSlot<V>>>>,
    /// Each vCPU's exit counts as of its last slice (its slot is out of `slots`
    /// while it runs), for the console's `stats`.
    exits: Vec<Mutex<ExitStats>>,
    life: Mutex<Life>,
}

/// Everything the physical CPUs share while they run guests.
pub(super) struct Machine<'b, B: Backend> {
    backend: Mutex<&'b mut B>,
    /// What a VM started again by the operator needs, as at boot.
    epoch_unix_ns: u64,
    hub: SharedHub,
    /// The operator's console on the serial line.
    console: Mutex<mgmt::Console>,
    /// The hypervisor's station on the management network, if it has one.
    mgmt_net: Mutex<Option<super::mgmt_net::MgmtNet>>,
    /// Snapshots taken from the console (and those the disk's area held at boot).
    snapshots: Mutex<Vec<snapshots::Stored>>,
    /// The snapshot area on the machine's disk, if it has one.
    area: Mutex<Option<snapshot_disk::Area>>,
    vms: VmTable<B::Vcpu>,
    queue: Mutex<RunQueue>,
    slice: u64,
    /// Physical CPUs inside `cpu_loop`.
    inside: AtomicUsize,
    /// Set once no VM is left: every CPU leaves `cpu_loop`.
    done: AtomicBool,
    /// Bit c: physical CPU c sleeps in `timer::idle` (a kick wakes it).
    idle: AtomicU64,
}

/// When the boot processor last did its chores between slices (TSC).
static LAST_HOUSEKEEPING: AtomicU64 = AtomicU64::new(0);
/// When the watchdog last sent the boot processor an NMI (TSC).
static LAST_WATCHDOG: AtomicU64 = AtomicU64::new(0);
/// The boot processor must come back from a slice within this; the other
/// processors check, and an NMI makes it report where it is.
const WATCHDOG_MS: u64 = 2_000;

/// Guest console lines waiting for the serial line (see `console_queue`).
static CONSOLE: Mutex<ConsoleQueue> = Mutex::new(ConsoleQueue::new());
/// How long the boot processor writes queued console lines between two slices.
const CONSOLE_BUDGET_MICROS: u64 = 2_000;

/// A guest's finished console line: queued, never written inside an exit handler.
fn relay(name: &str, piece: Piece) {
    let (kind, text) = match piece {
        Piece::Line(t) => (Kind::Line, t),
        Piece::Partial(t) => (Kind::Partial, t),
        Piece::Rest { line, shown } => (Kind::Rest { shown }, line),
    };
    CONSOLE.lock().push_piece(name, kind, text);
}

/// The VM whose line is open on the terminal (its beginning written, no newline).
static OPEN_LINE: Mutex<Option<String>> = Mutex::new(None);

fn write_out(out: Out) {
    let mut open = OPEN_LINE.lock();
    match out {
        Out::Line(vm, text) => {
            serial::write_piece(&format!("{vm} | "), &text, false, true);
            *open = None;
        }
        Out::Partial(vm, text) => {
            let continues = open.as_deref() == Some(vm.as_str());
            serial::write_piece(&format!("{vm} | "), &text, continues, false);
            *open = Some(vm);
        }
        Out::Rest(vm, text, shown) => {
            // Continued on its open line, or written whole if something else came
            // in between.
            let continues = open.as_deref() == Some(vm.as_str()) && serial::line_open();
            let piece = if continues {
                text.get(shown..).unwrap_or("")
            } else {
                &text
            };
            serial::write_piece(&format!("{vm} | "), piece, continues, true);
            *open = None;
        }
        Out::Dropped(vm, n) => {
            println!("hv: vm {vm}: {n} console line(s) dropped (the guest wrote faster than the serial line drains)")
        }
    }
}

/// Writes queued console lines, the VMs in turn, for at most `budget_micros`
/// (everything when `None`).
fn drain_console(budget_micros: Option<u64>) {
    let end = budget_micros.map(|us| time::rdtsc() + time::micros_to_tsc(us));
    loop {
        if end.is_some_and(|end| time::rdtsc() >= end) {
            return;
        }
        // The queue's lock is not held while the line is written.
        let Some(out) = CONSOLE.lock().pop() else {
            return;
        };
        write_out(out);
    }
}

/// Writes what VM `name` still has queued (before its stop is reported).
fn drain_vm_console(name: &str) {
    let lines = CONSOLE.lock().take_vm(name);
    for out in lines {
        write_out(out);
    }
}

fn host_cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    CpuidResult {
        eax: r.eax,
        ebx: r.ebx,
        ecx: r.ecx,
        edx: r.edx,
    }
}

/// How an application processor is created: real mode, waiting for STARTUP; the
/// STARTUP vector sets CS and IP (see `start_ap`).
const AP_START: StartState = StartState {
    mode: CpuMode::Real,
    rip: 0,
    rsp: 0,
    cr3: 0,
    regs: vcpu::GuestRegisters {
        rax: 0,
        rbx: 0,
        rcx: 0,
        rdx: 0,
        rsi: 0,
        rdi: 0,
        rbp: 0,
        r8: 0,
        r9: 0,
        r10: 0,
        r11: 0,
        r12: 0,
        r13: 0,
        r14: 0,
        r15: 0,
    },
    gdtr: None,
};

/// The host processors a VM's vCPUs may run on, given the `pcpus` online: all of
/// them without an affinity; an affinity naming a processor this machine does not
/// have keeps the VM from starting (its configuration was meant for another machine).
fn affinity(spec: &VmSpec, pcpus: usize) -> Result<u64, String> {
    let online = if pcpus >= 64 {
        u64::MAX
    } else {
        (1 << pcpus) - 1
    };
    if spec.affinity == 0 {
        return Ok(online);
    }
    let missing = spec.affinity & !online;
    if missing != 0 {
        let list = |mask: u64| {
            (0..64)
                .filter(|c| mask & (1 << c) != 0)
                .map(|c| format!("{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(format!(
            "pinned to processor(s) {} but this machine has {pcpus} online (0 to {}): processor(s) {} missing",
            list(spec.affinity),
            pcpus - 1,
            list(missing)
        ));
    }
    Ok(spec.affinity)
}

/// Opens the VM's disk: a RAM disk's contents come from the bundle at every start;
/// a partition of the machine's disk is found, claimed and (when encrypted)
/// unlocked here, once, and stays open across restarts.
fn open_disk(spec: &VmSpec<'static>) -> Result<Option<VmDisk>, String> {
    if let Some(d) = spec.disk {
        return Ok(Some(VmDisk::Ram(d)));
    }
    let Some(p) = &spec.partition else {
        return Ok(None);
    };
    let opened = super::persistent::open(spec.name, p)?;
    println!(
        "hv: vm {}: disk = partition \"{}\" of the machine's disk (sectors {}-{}), {} KiB{}{}",
        spec.name,
        p.name,
        opened.sectors.start,
        opened.sectors.end - 1,
        opened.guest_sectors / 2,
        if p.encrypted {
            ", encrypted, unlocked"
        } else {
            ""
        },
        if p.read_only { ", read-only" } else { "" }
    );
    Ok(Some(VmDisk::Shared {
        backend: opened.backend,
        read_only: p.read_only,
    }))
}

/// The VM is gone for good: its persistent disk is flushed and its partition free
/// for another VM.
fn release_disk(name: &str, disk: Option<&VmDisk>) {
    if let Some(VmDisk::Shared { backend, .. }) = disk {
        use virtio::BlockBackend;
        if let Err(e) = backend.clone().flush() {
            println!("hv: vm {name}: WARNING: flushing its disk failed: {e:?}");
        }
        super::persistent::release(name);
    }
}

/// A MAC as `52:54:00:12:34:56`.
fn mac_text(mac: &[u8; 6]) -> String {
    let parts: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

/// Attaches the VM's NICs to the machine's switch: one port each, and the flag
/// that wakes the VM when a frame waits for it (`None` without NICs).
fn attach_nics(
    spec: &VmSpec,
    hub: &SharedHub,
) -> Result<(Vec<NicPort>, Option<alloc::sync::Arc<AtomicBool>>), String> {
    if spec.nics.is_empty() {
        return Ok((Vec::new(), None));
    }
    let wake = alloc::sync::Arc::new(AtomicBool::new(false));
    let mut ports: Vec<NicPort> = Vec::new();
    for (i, n) in spec.nics.iter().enumerate() {
        let attached = hub.lock().attach(
            n.network,
            n.mac,
            n.rate_mbit,
            n.burst_kib,
            wake.clone(),
            time::uptime_ns(),
        );
        match attached {
            Ok(port) => ports.push(NicPort {
                hub: hub.clone(),
                port,
                mac: n.mac,
                network: n.network.into(),
                clock: time::uptime_ns,
            }),
            Err(e) => {
                detach_nics(&ports);
                return Err(format!("nic eth{i}: {e}"));
            }
        }
    }
    Ok((ports, Some(wake)))
}

/// Takes the VM's NICs off the switch.
fn detach_nics(nics: &[NicPort]) {
    for n in nics {
        n.hub.lock().detach(n.port);
    }
}

/// The stop report's line per NIC: what the switch counted at its port (tx: frames
/// the guest sent; rx: frames queued for it; dropped: its frames the switch dropped
/// and frames for it that found its queue full, then by reason, those not zero).
fn report_nics(name: &str, nics: &[NicPort]) {
    for (i, n) in nics.iter().enumerate() {
        let Some(s) = n.hub.lock().port_stats(n.port) else {
            continue;
        };
        let dropped = s.dropped_total();
        let mut reasons = String::new();
        for reason in vswitch::DropReason::ALL {
            let c = s.dropped(reason);
            if c.frames > 0 {
                let sep = if reasons.is_empty() { " (" } else { ", " };
                let _ = write!(reasons, "{sep}{} {}", reason.as_str(), c.frames);
            }
        }
        if !reasons.is_empty() {
            reasons.push(')');
        }
        println!(
            "hv: vm {name} net: eth{i} ({}) tx {} frames {} bytes, rx {} frames {} bytes, dropped {} frames{reasons}",
            n.network, s.input.frames, s.input.bytes, s.output.frames, s.output.bytes, dropped.frames
        );
    }
}

/// Writes the VM's image, its boot structures and the platform tables into its RAM
/// (zeroed: `.bss` and everything else the image does not cover); returns where
/// vCPU 0 starts.
fn load_image(spec: &VmSpec, ram: &GuestRam) -> Result<StartState, String> {
    let cpus = spec.vcpus as usize;
    let ram_size = ram.len();
    let plan = loader::plan_vm(spec, ram_size)?;
    // The loader checked that everything lies inside the RAM; a failure here means
    // a page of it has no frame.
    let put = |gpa: u64, bytes: &[u8]| {
        ram.load(gpa, bytes)
            .map_err(|e| format!("cannot load the image: {e}"))
    };
    for seg in &plan.segments {
        put(seg.gpa, seg.data)?;
    }
    if let Some(tables) = &plan.page_tables {
        for (i, table) in tables.iter().enumerate() {
            let mut bytes = [0u8; 4096];
            for (chunk, entry) in bytes.as_chunks_mut::<8>().0.iter_mut().zip(table.iter()) {
                chunk.copy_from_slice(&entry.to_le_bytes());
            }
            put(PAGE_TABLES_GPA + i as u64 * 4096, &bytes)?;
        }
    }
    for (gpa, bytes) in &plan.extra {
        put(*gpa, bytes)?;
    }
    let bsp = policy::Topology {
        apic_id: 0,
        cpus: cpus as u32,
    };
    let leaf1 = policy::cpuid(1, 0, host_cpuid, &bsp);
    // The INTA# of the disk and of each NIC, routed as the VM's PCI root does
    // (vm::VmShared::new).
    let disk = (spec.disk.is_some() || spec.partition.is_some())
        .then_some(super::vm::DISK_PCI_ADDRESS.device);
    let nics = (0..spec.nics.len() as u8).map(|i| net::FIRST_NIC_DEVICE + i);
    let balloon = spec
        .balloon
        .then_some(super::balloon::BALLOON_PCI_ADDRESS.device);
    let pci_intx: Vec<devices::PciIntx> = balloon
        .into_iter()
        .chain(disk)
        .chain(nics)
        .map(|device| devices::PciIntx {
            device,
            pin: 1,
            irq: devices::default_intx_irq(device, 1),
        })
        .collect();
    let tables =
        loader::platform_tables(&plan, ram_size, leaf1.eax, leaf1.edx, cpus as u8, &pci_intx);
    for (gpa, bytes) in tables {
        put(gpa, &bytes)?;
    }
    Ok(plan.start)
}

/// Creates the VM's vCPUs: vCPU 0 at `start`, the others waiting for SIPI. Each is
/// unloaded, so any processor may run it first (VMX: creating it left its VMCS active
/// on this one).
fn create_vcpus<B: Backend>(
    backend: &mut B,
    machine: &MachineInfo,
    start: &StartState,
) -> Result<Vec<VcpuSlot<B::Vcpu>>, String> {
    let mut slots: Vec<VcpuSlot<B::Vcpu>> = Vec::with_capacity(machine.cpus);
    let mappings = machine.ram.mappings();
    for i in 0..machine.cpus {
        let state = if i == 0 { start } else { &AP_START };
        match backend.create_vcpu(&mut KernelMemory, &mappings, state) {
            Ok(mut v) => {
                v.unload();
                machine.ram.fresh_vcpu(i);
                slots.push(VcpuSlot {
                    ctx: VcpuCtx::new(i, v, machine, host_cpuid),
                    ran: false,
                    cpu_tsc: 0,
                    ran_on: 0,
                });
            }
            Err(e) => {
                for s in slots {
                    backend.destroy_vcpu(&mut KernelMemory, s.ctx.vcpu);
                }
                return Err(format!("{} could not create vCPU {i}: {e}", backend.name()));
            }
        }
    }
    Ok(slots)
}

/// Loads a VM's image into fresh RAM and creates its platform and vCPUs.
/// A VM's devices, vCPUs and lifetime record, built from `spec`.
type Built<V> = (VmShared, Vec<VcpuSlot<V>>, Life);

fn start<B: Backend>(
    backend: &mut B,
    spec: &VmSpec<'static>,
    epoch_unix_ns: u64,
    hub: &SharedHub,
) -> Result<VmEntry<B::Vcpu>, String> {
    let (shared, slots, life) = build(backend, spec, epoch_unix_ns, hub)?;
    let cpus = slots.len();
    let vm = VmEntry::new(spec.name, shared, life, cpus);
    for (cell, s) in vm.slots.iter().zip(slots) {
        *cell.lock() = Some(s);
    }
    Ok(vm)
}

impl<V: Vcpu> VmEntry<V> {
    /// A VM's entry with `cpus` vCPU slots, empty (its vCPUs come later, or it is
    /// stopped).
    fn new(name: &str, shared: VmShared, life: Life, cpus: usize) -> Self {
        Self {
            name: name.into(),
            net_wake: Mutex::new(life.machine.net_wake.clone()),
            run_tsc: AtomicU64::new(0),
            clock_offset: AtomicU64::new(0),
            shared: Mutex::new(shared),
            exits: (0..cpus)
                .map(|_| Mutex::new(ExitStats::default()))
                .collect(),
            slots: (0..cpus).map(|_| Mutex::new(None)).collect(),
            life: Mutex::new(life),
        }
    }
}

impl Life {
    /// A running VM's record: `spec`'s limits, started now.
    fn new(spec: &VmSpec<'static>, machine: MachineInfo, ram_size: u64) -> Self {
        Self {
            spec: spec.clone(),
            machine,
            ram_size,
            limit_tsc: (spec.run_limit_ms > 0)
                .then(|| time::micros_to_tsc(u64::from(spec.run_limit_ms) * 1000)),
            limit_ms: spec.run_limit_ms,
            background: spec.background,
            paused: false,
            started_tsc: time::rdtsc(),
            run_tsc_at_start: 0,
            stop: None,
            restart: None,
            restarts: Vec::new(),
            finished: false,
        }
    }
}

/// What VM `spec` is told about the machine, with its RAM, disk and NICs.
fn machine_info(
    spec: &VmSpec<'static>,
    ram: GuestRam,
    epoch_unix_ns: u64,
    disk: Option<VmDisk>,
    nics: Vec<NicPort>,
    net_wake: Option<alloc::sync::Arc<AtomicBool>>,
) -> MachineInfo {
    MachineInfo {
        ram,
        epoch_unix_ns,
        tsc_hz: time::tsc_hz(),
        tsc_at_zero: time::tsc_at_boot(),
        cpus: (spec.vcpus as usize).clamp(1, MAX_VCPUS),
        bench_hypercalls: spec.bench_hypercalls,
        unmapped_stops: spec.unmapped_stops,
        balloon: spec.balloon,
        disk,
        disk_stats: Default::default(),
        nics,
        net_wake,
    }
}

/// A VM that did not start at boot, as a stopped one: no RAM, devices, NICs or
/// vCPUs of its own, only its name and specification, for `list` and `start`.
fn stopped_entry<V: Vcpu>(
    spec: &VmSpec<'static>,
    why: &str,
    epoch_unix_ns: u64,
) -> Result<VmEntry<V>, String> {
    let ram_size = (spec.memory_kib as u64 * 1024).next_multiple_of(4096);
    let cpus = (spec.vcpus as usize).clamp(1, MAX_VCPUS);
    let map = RamMap::unbacked(ram_size).map_err(|e| format!("{e}"))?;
    let ram = GuestRam::new(map, cpus, &KERNEL_RAM);
    // No balloon: the devices are placeholders until `start` builds real ones.
    let spec_now = VmSpec {
        balloon: false,
        ..spec.clone()
    };
    let machine = machine_info(&spec_now, ram, epoch_unix_ns, None, Vec::new(), None);
    let shared = VmShared::new(spec.name, &machine, relay)?;
    let mut life = Life::new(spec, machine, ram_size);
    life.stop = Some(format!("not started: {why}"));
    life.finished = true;
    Ok(VmEntry::new(spec.name, shared, life, cpus))
}

/// Takes what VM `spec` needs (RAM, its disk, its NICs), loads its image and
/// creates its devices and vCPUs; on an error everything taken is given back.
fn build<B: Backend>(
    backend: &mut B,
    spec: &VmSpec<'static>,
    epoch_unix_ns: u64,
    hub: &SharedHub,
) -> Result<Built<B::Vcpu>, String> {
    let ram_size = (spec.memory_kib as u64 * 1024).next_multiple_of(4096);
    let cpus = spec.vcpus as usize;
    if !(1..=MAX_VCPUS).contains(&cpus) {
        return Err(format!(
            "vcpus = {}: a VM has 1 to {MAX_VCPUS} vCPUs",
            spec.vcpus
        ));
    }
    affinity(spec, smp::cpu_count())?;
    // Checked before the RAM is taken, so a refused image costs nothing.
    loader::plan_vm(spec, ram_size)?;
    let (nics, net_wake) = attach_nics(spec, hub)?;
    let disk = open_disk(spec).inspect_err(|_| detach_nics(&nics))?;
    let map = RamMap::allocate(ram_size, &mut RamFrames).map_err(|e| {
        detach_nics(&nics);
        release_disk(spec.name, disk.as_ref());
        format!(
            "cannot allocate {} KiB of guest RAM: {e} ({} KiB free)",
            ram_size / 1024,
            memory::free_bytes() / 1024
        )
    })?;
    let ram = GuestRam::new(map, cpus, &KERNEL_RAM);
    let begin = match load_image(spec, &ram) {
        Ok(s) => s,
        Err(e) => {
            ram.release();
            detach_nics(&nics);
            release_disk(spec.name, disk.as_ref());
            return Err(e);
        }
    };
    let machine = machine_info(spec, ram, epoch_unix_ns, disk, nics, net_wake);
    let shared = match VmShared::new(spec.name, &machine, relay) {
        Ok(vm) => vm,
        Err(e) => {
            machine.ram.release();
            detach_nics(&machine.nics);
            release_disk(spec.name, machine.disk.as_ref());
            return Err(e);
        }
    };
    let slots = match create_vcpus(backend, &machine, &begin) {
        Ok(slots) => slots,
        Err(e) => {
            machine.ram.release();
            detach_nics(&machine.nics);
            release_disk(spec.name, machine.disk.as_ref());
            return Err(e);
        }
    };
    println!(
        "hv: vm {} started: {} KiB RAM ({} in 2 MiB frames), {} vCPU{}, {:?} mode, entry {:#x}",
        spec.name,
        ram_size / 1024,
        {
            let u = machine.ram.usage();
            format!("{} KiB", u.huge_chunks as u64 * 2048)
        },
        cpus,
        if cpus == 1 { "" } else { "s" },
        begin.mode,
        begin.rip
    );
    for (i, nic) in machine.nics.iter().enumerate() {
        println!(
            "hv: vm {} nic eth{i}: {} on network {:?} (PCI 00:{:02x}.0)",
            spec.name,
            mac_text(&nic.mac),
            nic.network,
            net::FIRST_NIC_DEVICE + i as u8
        );
    }
    Ok((shared, slots, Life::new(spec, machine, ram_size)))
}

/// How the bare loop ended.
enum Bare {
    /// The guest left it (`BENCH_BARE_END`).
    Ended,
    /// The host timer (or a kick) ended the time slice: the loop goes on in the
    /// vCPU's next slice, so it can neither hold the processor nor outrun the VM's
    /// run limit.
    SliceOver,
    /// Another exit, for the normal path (the loop ends).
    Exit(vcpu::Exit),
}

/// The benchmark's reference path: enter, skip the CPUID, enter again.
fn bare_cpuid_loop<V: Vcpu>(vcpu: &mut V, slice: u64) -> Bare {
    use vcpu::Exit;
    loop {
        match vcpu.run(slice) {
            Exit::Cpuid { .. } => vcpu.skip_instruction(),
            Exit::ExternalInterrupt | Exit::Preempted => return Bare::SliceOver,
            Exit::Hypercall if vcpu.regs().rax == policy::hypercall::BENCH_BARE_END => {
                vcpu.regs().rax = 0;
                vcpu.skip_instruction();
                return Bare::Ended;
            }
            other => return Bare::Exit(other),
        }
    }
}

impl<B: Backend> Machine<'_, B> {
    /// A STARTUP IPI reached an AP waiting for it: it starts in real mode with
    /// CS = vector << 8 (base vector << 12) and IP = 0 (SDM Vol. 3A 9.4.4). An AP that
    /// has run before (INIT after use) gets a fresh vCPU, which is the INIT reset of
    /// all its state.
    fn start_ap(
        &self,
        vm: &VmEntry<B::Vcpu>,
        slot: &mut VcpuSlot<B::Vcpu>,
        vector: u8,
    ) -> Result<(), String> {
        let i = slot.ctx.index;
        if slot.ran {
            let machine = vm.life.lock().machine.clone();
            let mut backend = self.backend.lock();
            let fresh = backend
                .create_vcpu(&mut KernelMemory, &machine.ram.mappings(), &AP_START)
                .map_err(|e| format!("{} could not reset vCPU {i}: {e}", backend.name()))?;
            machine.ram.fresh_vcpu(i);
            let old =
                core::mem::replace(&mut slot.ctx, VcpuCtx::new(i, fresh, &machine, host_cpuid));
            slot.ctx.stats = old.stats.clone();
            backend.destroy_vcpu(&mut KernelMemory, old.vcpu);
            slot.ran = false;
            drop(backend);
            // The fresh vCPU's TSC offset is 0 again, whatever the guest wrote to its
            // TSC before: its TSC deadlines count from the machine's start value.
            vm.shared.lock().lapics[i].set_tsc_at_zero(machine.tsc_at_zero);
        }
        slot.ctx.vcpu.set_real_mode_cs(u16::from(vector) << 8);
        slot.ctx.vcpu.set_rip(0);
        slot.ctx.halted = false;
        Ok(())
    }

    /// Runs one slice of vCPU `slot` of `vm`. Returns why the VM must stop, if it
    /// must; `entered` says whether the guest ran at all (a halted vCPU may not).
    fn run_slice(
        &self,
        vm_index: usize,
        slot: &mut VcpuSlot<B::Vcpu>,
        entered: &mut bool,
    ) -> Option<Next> {
        let vm = &self.vms[vm_index];
        let i = slot.ctx.index;
        let start_vector = match vm.shared.lock().run[i] {
            RunState::StartUp(v) => Some(v),
            RunState::WaitForSipi => return None,
            RunState::Running => None,
        };
        if let Some(vector) = start_vector {
            if let Err(e) = self.start_ap(vm, slot, vector) {
                return Some(Next::Stop(e));
            }
            vm.shared.lock().run[i] = RunState::Running;
        }
        let begin = time::rdtsc();
        let clock = SliceClock::start(begin, self.slice);
        // The VM's RAM, for each entry's and exit's page bookkeeping (the same for
        // the whole slice: taken once, not at every entry).
        let ram = slot.ctx.ram().clone();
        // One lock of the VM per exit: the exit is handled and the next entry prepared
        // (interrupts delivered) under the same hold.
        let mut shared = vm.shared.lock();
        // The last exit asked to go on: the slice may be over all the same.
        let mut check_end = false;
        // The last exit left every interrupt source alone (the entry fast path).
        let mut quiet = false;
        // Frames for this VM's NICs from other processors (the exit fastpath's check;
        // the sender also kicks this vCPU).
        let net_wake = vm.net_wake.lock().clone();
        let why = loop {
            if shared.parked & (1 << i) != 0 || shared.run[i] != RunState::Running {
                break None;
            }
            // One TSC reading before each entry (the slice's end and budget, the
            // devices' time) and one after each exit (the handler's time): an RDTSC
            // is an exit-path cost too.
            let tsc = time::rdtsc();
            if core::mem::take(&mut check_end) && clock.ends(tsc, SliceEvent::Guest) {
                break None;
            }
            let now = vm.now_ns_at(tsc);
            // The entry fast path: after a quiet exit, the preparation runs only if
            // something may have become due (see `VcpuCtx::entry_unchanged`).
            if !(core::mem::take(&mut quiet) && slot.ctx.entry_unchanged(&shared, now)) {
                slot.ctx.prepare_entry(&mut shared, now);
            }
            if slot.ctx.halted {
                // Waiting in HLT for an interrupt that has not come yet.
                break None;
            }
            let fast_until = slot.ctx.fast_exits_until(&shared);
            // Never held while the guest runs.
            drop(shared);
            if !*entered {
                // The slice's first entry: a barrier if this processor ran another VM.
                crate::mitigation::before_vm(vm_index);
            }
            slot.ran = true;
            *entered = true;
            // A page this vCPU made private (a clone's write) must be out of the
            // other vCPUs' tables before it runs on; pages the balloon took or
            // another vCPU made private leave its own tables.
            ram.wait_for_others(i, &mut |mask| self.kick_vcpus(vm_index, mask));
            if let Err(e) = ram.enter(i, &mut slot.ctx.vcpu) {
                ram.left(i);
                shared = vm.shared.lock();
                break Some(Next::Stop(e));
            }
            let exit = if slot.ctx.in_bare_loop {
                match bare_cpuid_loop(&mut slot.ctx.vcpu, self.slice) {
                    Bare::Ended => {
                        ram.left(i);
                        slot.ctx.in_bare_loop = false;
                        shared = vm.shared.lock();
                        continue;
                    }
                    Bare::SliceOver => {
                        ram.left(i);
                        shared = vm.shared.lock();
                        break None;
                    }
                    Bare::Exit(exit) => {
                        slot.ctx.in_bare_loop = false;
                        exit
                    }
                }
            } else {
                let mut exit = slot.ctx.vcpu.run(clock.budget(tsc));
                // The exit fastpath (as KVM's): CPUID exits are answered right here and
                // the guest re-entered, without the VM's lock, the RAM bookkeeping or
                // the entry preparation, while the conditions of the fast entry hold:
                // nothing was left to deliver, no device or timer deadline, slice end,
                // NIC wake or pending page unmap has come. Everything else that can
                // concern this vCPU (an IPI, an interrupt from another processor or
                // the host, a balloon unmap) kicks its processor, and that exit is not
                // a CPUID one.
                if let Some(until) = fast_until {
                    while let vcpu::Exit::Cpuid { leaf, subleaf } = exit {
                        let t = time::rdtsc();
                        if clock.ends(t, SliceEvent::Guest)
                            || vm.now_ns_at(t) >= until
                            || net_wake.as_ref().is_some_and(|w| w.load(Ordering::Acquire))
                            || ram.needs_apply(i)
                        {
                            break;
                        }
                        slot.ctx.handle_fast_cpuid(leaf, subleaf);
                        exit = slot.ctx.vcpu.run(clock.budget(t));
                    }
                }
                exit
            };
            ram.left(i);
            let tsc = time::rdtsc();
            let event = match exit {
                vcpu::Exit::ExternalInterrupt => SliceEvent::HostInterrupt,
                vcpu::Exit::Preempted => SliceEvent::BackendTimer,
                _ => SliceEvent::Guest,
            };
            // A host interrupt early in the slice does not end it (see `SliceClock`),
            // unless it is the kick of a VM that stops or restarts.
            let settling = event == SliceEvent::HostInterrupt && {
                let life = vm.life.lock();
                life.stop.is_some() || life.restart.is_some() || life.paused
            };
            shared = vm.shared.lock();
            let quiet_exit = vm::leaves_interrupts_alone(&exit);
            let next = slot.ctx.handle(&mut shared, exit, vm.now_ns_at(tsc));
            if next == Next::BareCpuidLoop {
                slot.ctx.in_bare_loop = true;
            }
            if ram.unmaps_pending() {
                // The balloon took pages: vCPUs off the processors drop them from
                // their tables now, so the log need not keep them for a vCPU that
                // does not run (one waiting for SIPI). A slot in its mutex is not
                // running; one held elsewhere applies them before its next entry.
                for (j, other) in vm.slots.iter().enumerate() {
                    if j == i {
                        continue;
                    }
                    if let Some(mut held) = other.try_lock() {
                        if let Some(o) = held.as_mut() {
                            if let Err(e) = ram.update_idle(j, &mut o.ctx.vcpu) {
                                log::error!("vm {}: {e}", vm.name);
                            }
                        }
                    }
                }
                ram.reclaim();
            }
            let kicks = core::mem::take(&mut shared.kicks);
            // A kick for this vCPU itself (an interrupt delivered to it while it ran)
            // is taken here, by the preparation of its next entry.
            quiet = quiet_exit && next == Next::Continue && kicks & (1 << i) == 0;
            let kicks = kicks & !(1 << i);
            if kicks != 0 {
                drop(shared);
                self.kick_vcpus(vm_index, kicks);
                shared = vm.shared.lock();
            }
            if net::NET_KICK.load(Ordering::Acquire) {
                // Not under this VM's lock: kicking takes the run queue's.
                drop(shared);
                self.net_kicks();
                shared = vm.shared.lock();
            }
            match next {
                // However a guest makes its vCPU exit (a storm of exits that each
                // ask to continue), the slice ends on time: the processor is never
                // held past it.
                // (checked at the next entry, against its TSC reading).
                Next::Continue | Next::BareCpuidLoop => {
                    check_end = true;
                    continue;
                }
                Next::Yield
                    if event == SliceEvent::HostInterrupt
                        && !settling
                        && !clock.ends(tsc, event) =>
                {
                    continue
                }
                Next::Yield => break None,
                end @ (Next::Stop(_) | Next::Reset(_) | Next::Crash(_)) => break Some(end),
            }
        };
        drop(shared);
        let used = time::rdtsc().wrapping_sub(begin);
        slot.cpu_tsc += used;
        vm.run_tsc.fetch_add(used, Ordering::Relaxed);
        if *entered {
            slot.ran_on |= 1 << smp::this_cpu();
        }
        // The next slice may run on another processor (VMX: VMCLEAR here).
        slot.ctx.vcpu.unload();
        why
    }

    /// vCPUs of VM `vm` that got an interrupt: the CPUs running them leave guest mode
    /// to deliver it; a target that runs nowhere is picked up by an idle CPU, which
    /// is woken.
    fn kick_vcpus(&self, vm: usize, mask: u64) {
        if mask == 0 {
            return;
        }
        let queue = self.queue.lock();
        let mut cpus = 0u64;
        let mut waiting = false;
        for v in (0..64).filter(|&v| mask & (1 << v) != 0) {
            match queue.running_on(vm, v) {
                Some(c) => cpus |= 1 << c,
                None => waiting = true,
            }
        }
        drop(queue);
        if waiting {
            cpus |= self.idle.load(Ordering::Acquire);
        }
        kick_cpus(cpus);
    }

    /// A frame was queued for some VM's NIC: every VM whose wake flag is set gets
    /// its vCPUs kicked, so a halted one polls its devices and takes the frame.
    fn net_kicks(&self) {
        if !net::NET_KICK.swap(false, Ordering::AcqRel) {
            return;
        }
        for (v, vm) in self.vms.iter().enumerate() {
            let woken = vm
                .net_wake
                .lock()
                .as_ref()
                .is_some_and(|w| w.load(Ordering::Acquire));
            if woken {
                let all = u64::MAX >> (64 - vm.slots.len().clamp(1, 64));
                self.kick_vcpus(v, all);
            }
        }
    }

    /// Makes the queue's runnable flags of VM `vm` match its vCPUs' run states
    /// (none while it restarts).
    fn sync_runnable(&self, vm: usize) {
        {
            let life = self.vms[vm].life.lock();
            if life.restart.is_some() || life.stop.is_some() {
                return;
            }
            if life.paused {
                drop(life);
                let mut queue = self.queue.lock();
                for v in 0..self.vms[vm].slots.len() {
                    queue.set_runnable(vm, v, false);
                }
                return;
            }
        }
        let (run, parked) = {
            let shared = self.vms[vm].shared.lock();
            (shared.run.clone(), shared.parked)
        };
        let mut queue = self.queue.lock();
        for (v, state) in run.iter().enumerate() {
            let runnable = *state != RunState::WaitForSipi && parked & (1 << v) == 0;
            queue.set_runnable(vm, v, runnable);
        }
    }

    /// VM `vm` must stop: no vCPU of it is picked again, the CPUs running its vCPUs
    /// are kicked, and whoever gives back its last vCPU returns its resources.
    fn stop(&self, vm: usize, why: String) {
        {
            let mut life = self.vms[vm].life.lock();
            if life.stop.is_some() {
                return;
            }
            life.stop = Some(why);
        }
        let running = {
            let mut queue = self.queue.lock();
            queue.remove_vm(vm);
            queue.cpus_running(vm)
        };
        kick_cpus(running);
        self.finish(vm);
    }

    /// A reset request or a crash: the VM's `on_reset` / `on_crash` policy says
    /// whether it restarts from its image (as a machine reboots) or stops. Restarts
    /// in quick succession (a guest that resets at once every time) end in a stop.
    fn reset_or_crash(&self, vm: usize, why: String, crash: bool) {
        let restart = {
            let mut life = self.vms[vm].life.lock();
            let policy = if crash {
                life.spec.on_crash
            } else {
                life.spec.on_reset
            };
            if life.stop.is_some() || life.restart.is_some() {
                return;
            }
            let now = time::rdtsc();
            let window = time::micros_to_tsc(RESTART_WINDOW_MS * 1000);
            life.restarts.retain(|&t| now.wrapping_sub(t) < window);
            match policy {
                bundle::Policy::Stop => Err(why),
                _ if life.restarts.len() >= RESTARTS_MAX => Err(format!(
                    "{why}; restarted {RESTARTS_MAX} times within {} s: stopping (restart loop)",
                    RESTART_WINDOW_MS / 1000
                )),
                bundle::Policy::Restart => {
                    life.restarts.push(now);
                    life.restart = Some(why);
                    Ok(())
                }
            }
        };
        match restart {
            Err(why) => self.stop(vm, why),
            Ok(()) => self.settle_restart(vm),
        }
    }

    /// VM `vm` has its restart recorded: no vCPU of it is picked until it has
    /// restarted; the CPUs running its vCPUs give them back at once, and the last
    /// one back restarts it.
    fn settle_restart(&self, vm: usize) {
        let running = {
            let mut queue = self.queue.lock();
            for v in 0..self.vms[vm].slots.len() {
                queue.set_runnable(vm, v, false);
            }
            queue.cpus_running(vm)
        };
        kick_cpus(running);
        self.finish(vm);
    }

    /// Restarts VM `vm` from its image with fresh RAM and fresh vCPUs and devices, as a
    /// machine reboots; `slots` are its vCPUs, all given back.
    fn restart(&self, vm_index: usize, life: &mut Life, slots: Vec<VcpuSlot<B::Vcpu>>, why: &str) {
        let vm = &self.vms[vm_index];
        let mut backend = self.backend.lock();
        let mut stats = ExitStats::default();
        for s in slots {
            stats.add(&s.ctx.stats);
            backend.destroy_vcpu(&mut KernelMemory, s.ctx.vcpu);
        }
        // A rebooted guest owns all its RAM again, zeroed; no vCPU of it exists.
        let ram = &life.machine.ram;
        ram.reclaim();
        let fresh = ram
            .fill()
            .map_err(|e| format!("its RAM cannot be backed again: {e}"))
            .and_then(|_| {
                ram.zero();
                load_image(&life.spec, ram)
            })
            .and_then(|begin| {
                let shared = VmShared::new(&vm.name, &life.machine, relay)?;
                let slots = create_vcpus(&mut **backend, &life.machine, &begin)?;
                Ok((shared, slots))
            });
        drop(backend);
        match fresh {
            Ok((shared, slots)) => {
                vm.shared.lock().flush_console();
                drain_vm_console(&vm.name);
                // An operator's restart is not counted (it is no restart loop).
                if life.restarts.is_empty() {
                    println!("hv: vm {} restarting: {why}", vm.name);
                } else {
                    println!(
                        "hv: vm {} restarting: {why} (restart {} within {} s)",
                        vm.name,
                        life.restarts.len(),
                        RESTART_WINDOW_MS / 1000
                    );
                }
                vm.install(shared, slots);
                life.restart = None;
                life.paused = false;
                life.started_tsc = time::rdtsc();
                life.run_tsc_at_start = vm.run_tsc.load(Ordering::Relaxed);
                let mut queue = self.queue.lock();
                for v in 0..vm.slots.len() {
                    queue.set_runnable(vm_index, v, v == 0);
                }
            }
            Err(e) => {
                // Nothing left to run: the VM ends here, its RAM returned.
                life.restart = None;
                life.stop = Some(format!("{why}; the restart failed: {e}"));
                life.finished = true;
                println!(
                    "hv: vm {} stopped: {}",
                    vm.name,
                    life.stop.as_deref().unwrap_or("")
                );
                println!("hv: vm {} exits: {}", vm.name, stats);
                report_nics(&vm.name, &life.machine.nics);
                detach_nics(&life.machine.nics);
                release_disk(&vm.name, life.machine.disk.as_ref());
                life.machine.ram.release();
                self.queue.lock().remove_vm(vm_index);
            }
        }
    }

    /// Returns a stopped VM's resources, or restarts a restarting one, once none of
    /// its vCPUs runs any more.
    fn finish(&self, vm_index: usize) {
        let vm = &self.vms[vm_index];
        let mut life = vm.life.lock();
        let Some(why) = life.stop.clone().or_else(|| life.restart.clone()) else {
            return;
        };
        if life.finished || self.queue.lock().cpus_running(vm_index) != 0 {
            return;
        }
        let mut slots = Vec::new();
        for s in &vm.slots {
            match s.lock().take() {
                Some(slot) => slots.push(slot),
                // A vCPU is still out (being given back): its CPU finishes the VM.
                None => {
                    for slot in slots {
                        let index = slot.ctx.index;
                        *vm.slots[index].lock() = Some(slot);
                    }
                    return;
                }
            }
        }
        if life.stop.is_none() {
            self.restart(vm_index, &mut life, slots, &why);
            return;
        }
        life.finished = true;
        let mut shared = vm.shared.lock();
        shared.flush_console();
        drain_vm_console(&vm.name);
        println!("hv: vm {} stopped: {}", vm.name, why);
        let mut stats = ExitStats::default();
        for s in &slots {
            stats.add(&s.ctx.stats);
        }
        println!("hv: vm {} exits: {}", vm.name, stats);
        let tsc_per_us = (time::tsc_hz() / 1_000_000).max(1);
        let times: Vec<String> = slots
            .iter()
            .map(|s| {
                let cpus: Vec<String> = (0..64)
                    .filter(|c| s.ran_on & (1 << c) != 0)
                    .map(|c| format!("{c}"))
                    .collect();
                format!(
                    "{} ms on cpu {}",
                    s.cpu_tsc / tsc_per_us / 1000,
                    if cpus.is_empty() {
                        String::from("none")
                    } else {
                        cpus.join("+")
                    }
                )
            })
            .collect();
        let total: u64 = slots.iter().map(|s| s.cpu_tsc).sum();
        println!(
            "hv: vm {} cpu time: {} ms (vCPUs: {})",
            vm.name,
            total / tsc_per_us / 1000,
            times.join(", ")
        );
        if shared.platform.unbacked_accesses > 0 {
            println!(
                "hv: vm {} unbacked guest-physical accesses: {} (the first at {:#x})",
                vm.name, shared.platform.unbacked_accesses, shared.platform.first_unbacked
            );
        }
        if let Some(balloon) = super::balloon::report(&mut shared) {
            println!("hv: vm {} balloon: {balloon}", vm.name);
        }
        if shared.platform.unknown_port_accesses > 0 {
            println!(
                "hv: vm {} unknown port accesses: {}",
                vm.name, shared.platform.unknown_port_accesses
            );
        }
        drop(shared);
        report_nics(&vm.name, &life.machine.nics);
        detach_nics(&life.machine.nics);
        let mut backend = self.backend.lock();
        for s in slots {
            backend.destroy_vcpu(&mut KernelMemory, s.ctx.vcpu);
        }
        drop(backend);
        release_disk(&vm.name, life.machine.disk.as_ref());
        life.machine.ram.release();
    }

    /// The boot processor's chores between slices: console input for the first VM,
    /// run-time limits, and stopping background VMs once the foreground ones are gone.
    fn housekeeping(&self) {
        LAST_HOUSEKEEPING.store(time::rdtsc(), Ordering::Relaxed);
        // Guest lines wait while the operator types at the prompt.
        if !self.console.lock().at_prompt() {
            drain_console(Some(CONSOLE_BUDGET_MICROS));
        }
        let mut foreground = false;
        let mut first = None;
        for (v, vm) in self.vms.iter().enumerate() {
            let life = vm.life.lock();
            if life.stop.is_some() {
                continue;
            }
            first.get_or_insert(v);
            foreground |= !life.background;
            // The limit counts the VM's own CPU time, not the wall clock: a VM that
            // waits, or shares its processors, is not cut short by others' load.
            let used = vm.run_tsc.load(Ordering::Relaxed);
            let over = life.limit_tsc.is_some_and(|limit| used >= limit);
            let limit_ms = life.limit_ms;
            drop(life);
            if over {
                self.stop(
                    v,
                    format!("run-time limit reached ({limit_ms} ms of CPU time)"),
                );
            }
        }
        if !foreground {
            for v in 0..self.vms.len() {
                if self.vms[v].life.lock().stop.is_none() {
                    self.stop(v, "background VM: every foreground VM has stopped".into());
                }
            }
        }
        // Host console input: keys for the VM that has the keyboard, or the
        // operator's prompt.
        self.console_tick(first);
        // The management network: frames, /metrics, syslog.
        self.management_tick();
    }

    /// Sleeps until the next tick or a kick.
    fn idle(&self, cpu: usize) {
        self.idle.fetch_or(1 << cpu, Ordering::AcqRel);
        timer::idle();
        self.idle.fetch_and(!(1 << cpu), Ordering::AcqRel);
    }

    /// One physical CPU's share of the work, until no VM is left.
    fn cpu_loop(&self, cpu: usize) {
        self.inside.fetch_add(1, Ordering::AcqRel);
        // Picks in a row that found only halted vCPUs: after a full round, sleep.
        let mut idle_picks = 0;
        while !self.done.load(Ordering::Acquire) {
            if cpu == 0 {
                self.housekeeping();
            } else {
                watchdog();
            }
            super::uplink::pump(&self.hub);
            self.net_kicks();
            let (picked, tasks) = {
                let mut q = self.queue.lock();
                (q.pick(cpu), q.len())
            };
            let Some(task) = picked else {
                if !self.queue.lock().any_left() {
                    self.done.store(true, Ordering::Release);
                    for other in 1..smp::cpu_count() {
                        smp::kick(other);
                    }
                    break;
                }
                self.idle(cpu);
                continue;
            };
            let (vm, index) = {
                let q = self.queue.lock();
                (q.task(task).vm, q.task(task).vcpu)
            };
            let stopping = {
                let life = self.vms[vm].life.lock();
                life.stop.is_some() || life.restart.is_some() || life.paused
            };
            let taken = if stopping {
                None
            } else {
                self.vms[vm].slots[index].lock().take()
            };
            let mut entered = false;
            let why = match taken {
                Some(mut slot) => {
                    let why = self.run_slice(vm, &mut slot, &mut entered);
                    self.vms[vm].exits[index].lock().clone_from(&slot.ctx.stats);
                    *self.vms[vm].slots[index].lock() = Some(slot);
                    why
                }
                None => None,
            };
            idle_picks = if entered { 0 } else { idle_picks + 1 };
            self.sync_runnable(vm);
            // The stop, reset or crash is recorded while this CPU still holds the
            // task: given back first, another CPU could pick the vCPU in between and
            // enter it again (seen as a second shutdown exit of one triple fault; on
            // AMD-V the VMCB is undefined after a SHUTDOWN intercept, which is why KVM
            // reinitialises it there).
            match why {
                Some(Next::Reset(why)) => self.reset_or_crash(vm, why, false),
                Some(Next::Crash(why)) => self.reset_or_crash(vm, why, true),
                Some(Next::Stop(why)) => self.stop(vm, why),
                _ => {}
            }
            self.queue.lock().put_back(task);
            let settling = {
                let life = self.vms[vm].life.lock();
                life.stop.is_some() || life.restart.is_some()
            };
            if settling {
                self.finish(vm);
            }
            if idle_picks >= tasks {
                // Every vCPU this CPU may run waits for an interrupt.
                idle_picks = 0;
                self.idle(cpu);
            }
        }
        self.inside.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Kicks the processors in `mask` (bit per CPU) out of guest mode, but not the
/// calling one, which is between slices already.
fn kick_cpus(mask: u64) {
    for cpu in (0..smp::cpu_count()).filter(|&c| mask & (1 << c) != 0) {
        if cpu != smp::this_cpu() {
            smp::kick(cpu);
        }
    }
}

/// Run by the other processors between slices: if the boot processor has not come
/// back from a time slice for [`WATCHDOG_MS`], it is stuck (a slice that does not
/// end, a lock never released): an NMI makes it report where (its NMI handler logs
/// the interrupted RIP), once per period.
fn watchdog() {
    // Both stamps are read before the clock, and a stamp later than `now` (another
    // processor's TSC a little ahead of this one's, or a store that raced this read)
    // counts as recent: only a positive age of a full period fires.
    let last = LAST_HOUSEKEEPING.load(Ordering::Acquire);
    let sent = LAST_WATCHDOG.load(Ordering::Acquire);
    let now = time::rdtsc();
    let period = time::micros_to_tsc(WATCHDOG_MS * 1000);
    let older_than_period = |stamp: u64| now.checked_sub(stamp).is_some_and(|age| age >= period);
    if last == 0 || !older_than_period(last) {
        return;
    }
    if sent != 0 && !older_than_period(sent) {
        return;
    }
    if LAST_WATCHDOG
        .compare_exchange(sent, now, Ordering::AcqRel, Ordering::Relaxed)
        .is_ok()
    {
        crate::serial::write_fmt_or_take_over(
            format_args!(
                "hv: watchdog: cpu 0 has not been between time slices for {} ms; NMI sent\n",
                now.wrapping_sub(last) / (time::tsc_hz() / 1000).max(1)
            ),
            // A line at 115200 baud takes well under 10 ms; a spin is a few ns.
            1_000_000,
        );
        crate::apic::send_ipi_nowait(smp::apic_id(0), crate::apic::ICR_NMI);
    }
}

/// The hypervisor's station on the management network `m` (a message says where,
/// or why not).
fn start_management(
    m: &bundle::Management,
    hub: &SharedHub,
    epoch_unix_ns: u64,
) -> Option<super::mgmt_net::MgmtNet> {
    let [a, b, c, d] = m.address;
    match super::mgmt_net::MgmtNet::new(m, hub, epoch_unix_ns, time::uptime_ns()) {
        Ok(station) => {
            let mac: Vec<String> = mgmtnet::station_mac(m.network())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let syslog = m
                .syslog
                .map_or(String::from("no syslog collector"), |(c, p)| {
                    format!("syslog to {}.{}.{}.{}:{p}", c[0], c[1], c[2], c[3])
                });
            println!(
                "hv: management network {}: {a}.{b}.{c}.{d}/{} (MAC {}), GET /metrics on TCP \
                 port 80, {syslog}",
                m.network(),
                m.prefix,
                mac.join(":")
            );
            Some(station)
        }
        Err(e) => {
            println!("hv: management network {} not started: {e}", m.network());
            None
        }
    }
}

/// The machine the APs join; set while `run_all` runs.
static MACHINE: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());

/// An AP's entry into the run loop ([`smp::start_aps`]); after it, the AP halts.
fn ap_entry<B: Backend + 'static>(cpu: usize) -> ! {
    let m = MACHINE.load(Ordering::Acquire) as *const Machine<'static, B>;
    if !m.is_null() {
        // SAFETY: `run_all` published the machine before starting the APs and does not
        // return (or drop it) before every CPU has left `cpu_loop` (`inside` == 0).
        unsafe { (*m).cpu_loop(cpu) };
    }
    loop {
        timer::idle();
    }
}

/// Runs every VM of the bundle on every processor until all have stopped. Returns
/// how many could not be started.
pub fn run_all<B>(
    backend: &mut B,
    specs: &[VmSpec<'static>],
    admin: Option<::operator::Credential>,
    management: Option<bundle::Management>,
) -> usize
where
    B: Backend + Send + 'static,
    B::Vcpu: Send,
{
    let free_before = memory::free_bytes();
    // The guests' RTCs count from the host's wall clock at boot.
    let epoch_unix_ns = time::read_rtc_unix_ns().saturating_sub(time::uptime_ns());
    let pcpus = smp::cpu_count();
    let mut queue = RunQueue::new(pcpus);
    let mut vms = Vec::new();
    let mut failed = 0;
    // The machine's one virtual switch: every VM's NICs are ports of it.
    let hub: SharedHub = alloc::sync::Arc::new(Mutex::new(net::Hub::new()));
    for spec in specs {
        match start(backend, spec, epoch_unix_ns, &hub) {
            Ok(vm) => {
                let index = vms.len();
                let allowed = affinity(spec, pcpus).unwrap_or(u64::MAX);
                for v in 0..vm.slots.len() {
                    queue.add(index, v, allowed, v == 0);
                }
                vms.push(vm);
            }
            Err(e) => {
                failed += 1;
                println!("hv: vm {} not started: {e}", spec.name);
                // Listed as stopped: the operator may start it once there is room
                // (a balloon gave memory back, another VM stopped).
                match stopped_entry(spec, &e, epoch_unix_ns) {
                    Ok(vm) => {
                        let index = vms.len();
                        let allowed = affinity(spec, pcpus).unwrap_or(u64::MAX);
                        for v in 0..vm.slots.len() {
                            queue.add(index, v, allowed, false);
                        }
                        queue.remove_vm(index);
                        vms.push(vm);
                    }
                    Err(e) => println!("hv: vm {} cannot even be listed: {e}", spec.name),
                }
            }
        }
    }
    let mgmt_net = management.and_then(|m| start_management(&m, &hub, epoch_unix_ns));
    super::uplink::attach_configured(&hub);
    // Snapshots kept on the disk by earlier runs.
    let area = snapshot_disk::open();
    let held = area.as_ref().map(snapshots::from_area).unwrap_or_default();
    let machine = Machine {
        backend: Mutex::new(backend),
        epoch_unix_ns,
        hub,
        console: Mutex::new(mgmt::Console::new(admin, vms.len() + CLONE_SLOTS)),
        mgmt_net: Mutex::new(mgmt_net),
        snapshots: Mutex::new(held),
        area: Mutex::new(area),
        vms: VmTable::new(vms, CLONE_SLOTS),
        queue: Mutex::new(queue),
        slice: time::micros_to_tsc(SLICE_MICROS),
        inside: AtomicUsize::new(0),
        done: AtomicBool::new(false),
        idle: AtomicU64::new(0),
    };
    MACHINE.store(&machine as *const Machine<B> as *mut (), Ordering::Release);
    smp::start_aps(ap_entry::<B>);
    machine.cpu_loop(0);
    while machine.inside.load(Ordering::Acquire) != 0 {
        core::hint::spin_loop();
    }
    MACHINE.store(core::ptr::null_mut(), Ordering::Release);
    if let Some(m) = machine.mgmt_net.lock().as_ref() {
        println!("hv: management network {}: {}", m.network(), m.report());
    }
    super::uplink::stop(&machine.hub);
    for s in machine.snapshots.lock().drain(..) {
        s.free();
    }
    drop(machine);
    drain_console(None);
    let leaked = free_before.saturating_sub(memory::free_bytes());
    println!(
        "hv: all VMs stopped; host memory returned: {}",
        if leaked == 0 {
            String::from("all")
        } else {
            format!("{leaked} bytes missing")
        }
    );
    failed
}
