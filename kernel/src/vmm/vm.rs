//! One virtual machine, split the way the hardware is: what all its vCPUs share
//! ([`VmShared`]: the platform's devices, every vCPU's local APIC, so that interrupts
//! and IPIs can reach any of them, and each vCPU's run state for INIT/SIPI) and what
//! belongs to one vCPU ([`VcpuCtx`]: the backend's vCPU, its MSR state, statistics and
//! the exit handler). The run loop holds the VM's lock (`VmShared`) while a vCPU's
//! exit is handled, so device models need no locking of their own.
//!
//! Generic over `vcpu::Vcpu`, with no hardware access of its own, so the dispatch is
//! host-tested with a scripted vCPU.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use devices::{
    all_ones, all_ones64, DeliveryMode, LapicConfig, LocalApic, LAPIC_BASE, LAPIC_MMIO_SIZE,
};
use vcpu::cr_policy::{self, GuestFeatures};
use vcpu::{Exception, Exit, Vcpu};

use super::console::{ConsoleOut, Relay};
use super::cr_insn;
use super::mmio;
use super::mmio_sse;
use super::platform::{Outcome, Platform, PlatformSpec};
use super::policy::{self, CpuidResult, MsrAccess, MsrState, Topology};
use super::stats::ExitStats;
use super::string_io;

const RFLAGS_IF: u64 = 1 << 9;

/// The most vCPUs a VM may have (the MP table's limit).
pub const MAX_VCPUS: usize = devices::mptable::MAX_CPUS as usize;
// xtask and the bundle check configurations against the same limit.
const _: () = assert!(MAX_VCPUS == bundle::MAX_VCPUS as usize && MAX_VCPUS <= 64);

pub use super::guest_ram::GuestRam;

/// What a VM is told about the machine it runs on.
#[derive(Clone, Debug)]
pub struct MachineInfo {
    pub ram: GuestRam,
    /// Unix time (ns) at the moment `now_ns` was 0, for the RTC.
    pub epoch_unix_ns: u64,
    /// The TSC rate the guest sees (the host's), for the TSC-deadline timer.
    pub tsc_hz: u64,
    /// The guest's TSC when `now_ns` was 0. The backends start every vCPU with a TSC
    /// offset of 0, so it is the host's TSC at the hypervisor's time origin, not 0:
    /// the local APICs compare TSC deadlines with it added.
    pub tsc_at_zero: u64,
    /// How many vCPUs the VM has (1 to [`MAX_VCPUS`]).
    pub cpus: usize,
    /// The VM opted in to the benchmark hypercalls (`bench_hypercalls`).
    pub bench_hypercalls: bool,
    /// An access to unbacked guest-physical space stops the VM (`on_unmapped =
    /// "stop"`) instead of reading all ones.
    pub unmapped_stops: bool,
    /// Its virtio-blk disk, if it has one.
    pub disk: Option<VmDisk>,
    /// What the disk has done (shared with the device, for `stats`).
    pub disk_stats: alloc::sync::Arc<virtio::blk::BlockStats>,
    /// A virtio-balloon at PCI 00:02.0 (`balloon = true`).
    pub balloon: bool,
    /// Its NICs (PCI 00:04.0 onwards), each a port of the machine's switch.
    pub nics: Vec<super::net::NicPort>,
    /// Set when a frame waits for one of its NICs (see `net`).
    pub net_wake: Option<alloc::sync::Arc<core::sync::atomic::AtomicBool>>,
}

/// A VM's virtio-blk disk.
#[derive(Clone)]
pub enum VmDisk {
    /// RAM-backed: a fresh copy of these contents (from the bundle) at every start.
    Ram(bundle::Disk<'static>),
    /// Persistent: a partition of the machine's disk, opened once when the VM was
    /// first started (`vm_disk`) and the same at every restart.
    Shared {
        backend: super::vm_disk::SharedBackend,
        read_only: bool,
    },
    /// A clone's: its source's disk as of the snapshot it was made from, its own
    /// writes in memory (gone when it stops).
    View(super::vm_disk::SharedView),
}

impl VmDisk {
    /// The guest cannot write to it.
    pub fn read_only(&self) -> bool {
        match self {
            VmDisk::Ram(d) => d.read_only,
            VmDisk::Shared { read_only, .. } => *read_only,
            VmDisk::View(_) => false,
        }
    }
}

impl core::fmt::Debug for VmDisk {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            VmDisk::Ram(d) => write!(f, "Ram({} bytes, read_only {})", d.data.len(), d.read_only),
            VmDisk::Shared { read_only, .. } => write!(f, "Shared(read_only {read_only})"),
            VmDisk::View(_) => write!(f, "View"),
        }
    }
}

/// Where a VM's virtio-blk disk sits on its PCI bus.
pub const DISK_PCI_ADDRESS: devices::PciAddress = devices::PciAddress::new(0, 3, 0);

/// The VM's virtio-blk disk as a PCI function reaching the VM's RAM through `ram`:
/// the shared persistent backend, or a RAM disk holding a copy of the bundle's
/// contents (what the guest writes is gone when the VM stops or restarts; fails when
/// the hypervisor's heap cannot hold the copy).
fn disk_function(
    name: &str,
    disk: &VmDisk,
    ram: GuestRam,
    stats: &alloc::sync::Arc<virtio::blk::BlockStats>,
) -> Result<alloc::boxed::Box<dyn devices::PciFunction>, String> {
    let disk = match disk {
        VmDisk::Ram(contents) => contents,
        VmDisk::Shared { backend, read_only } => {
            let mut config = virtio::BlockConfig::new(name);
            config.read_only = *read_only;
            let block = virtio::Block::new(backend.clone(), config).with_stats(stats.clone());
            return Ok(alloc::boxed::Box::new(virtio::VirtioPci::new(block, ram)));
        }
        VmDisk::View(view) => {
            let block = virtio::Block::new(view.clone(), virtio::BlockConfig::new(name))
                .with_stats(stats.clone());
            return Ok(alloc::boxed::Box::new(virtio::VirtioPci::new(block, ram)));
        }
    };
    let mut bytes = Vec::new();
    bytes.try_reserve_exact(disk.data.len()).map_err(|_| {
        format!(
            "cannot allocate its {} KiB disk in the hypervisor's heap",
            disk.data.len() / 1024
        )
    })?;
    bytes.extend_from_slice(disk.data);
    let mut config = virtio::BlockConfig::new(name);
    config.read_only = disk.read_only;
    let block = virtio::Block::new(virtio::RamDisk::new(bytes), config).with_stats(stats.clone());
    Ok(alloc::boxed::Box::new(virtio::VirtioPci::new(block, ram)))
}

fn in_page(gpa: u64, base: u64, size: u64) -> bool {
    (base..base + size).contains(&gpa)
}

/// What the accesses of one emulated instruction left to do after it.
#[derive(Default)]
struct Accesses {
    /// The vector of an EOI written to the local APIC.
    eoi: Option<u8>,
    /// The first unbacked address accessed (for `on_unmapped = "stop"`).
    unbacked: Option<u64>,
}

/// One access of vCPU `i` to guest-physical `addr` outside RAM: its local APIC page,
/// a device on the VM's MMIO bus, or unbacked space (reads all ones, writes dropped;
/// noted in `done`).
#[allow(clippy::too_many_arguments)]
fn mmio_access(
    vm: &mut VmShared,
    i: usize,
    addr: u64,
    size: u8,
    value: Option<u64>,
    now_ns: u64,
    out: &mut Outcome,
    done: &mut Accesses,
) -> u64 {
    if in_page(addr, LAPIC_BASE, LAPIC_MMIO_SIZE) {
        let offset = addr - LAPIC_BASE;
        match value {
            Some(v) => {
                done.eoi = vm.lapics[i].mmio_write(offset, size, v as u32, now_ns);
                vm.send_ipis(i);
                0
            }
            None => vm.lapics[i].mmio_read(offset, size, now_ns).into(),
        }
    } else {
        vm.platform
            .mmio(addr, size, value, now_ns, out)
            .unwrap_or_else(|| {
                done.unbacked.get_or_insert(addr);
                all_ones64(size)
            })
    }
}

/// What the run loop should do after an exit.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Keep running this vCPU.
    Continue,
    /// The time slice is over, or the vCPU waits: run something else.
    Yield,
    /// The VM is finished (all its vCPUs); the text says why.
    Stop(String),
    /// The guest asked for a machine reset (i8042, port 0x92, 0xCF9): a real machine
    /// reboots; the VM's `on_reset` policy decides.
    Reset(String),
    /// The guest crashed the way a machine shuts down (triple fault); the VM's
    /// `on_crash` policy decides.
    Crash(String),
    /// The guest asked for the benchmark's bare CPUID loop (the run loop carries it
    /// out: it needs nothing but the vCPU).
    BareCpuidLoop,
}

/// Where a vCPU stands with respect to INIT and STARTUP (SDM Vol. 3A 9.4.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Runs (or waits in HLT) normally.
    Running,
    /// After INIT (and at power-up for APs): waits for a STARTUP IPI.
    WaitForSipi,
    /// A STARTUP IPI arrived: the run loop resets the vCPU to real mode at
    /// `vector << 12` before its next entry.
    StartUp(u8),
}

/// What the vCPUs of one VM share. See the module documentation.
pub struct VmShared {
    pub name: String,
    pub platform: Platform,
    /// The local APIC of vCPU `i` (APIC ID `i`).
    pub lapics: Vec<LocalApic>,
    pub run: Vec<RunState>,
    /// vCPUs that received an interrupt, IPI or INIT/SIPI since the run loop last
    /// looked (bit i = vCPU i): wake them if halted, kick them if in guest mode.
    pub kicks: u64,
    /// vCPUs halted with interrupts disabled: only INIT (or NMI) leaves that state.
    pub parked: u64,
}

impl VmShared {
    pub fn new(name: &str, machine: &MachineInfo, out: ConsoleOut) -> Result<Self, String> {
        let cpus = machine.cpus.clamp(1, MAX_VCPUS);
        let mut pci = Vec::new();
        if let Some(disk) = &machine.disk {
            pci.push((
                DISK_PCI_ADDRESS,
                disk_function(name, disk, machine.ram.clone(), &machine.disk_stats)?,
            ));
        }
        if machine.balloon {
            pci.push((
                super::balloon::BALLOON_PCI_ADDRESS,
                alloc::boxed::Box::new(super::balloon::function(name, &machine.ram))
                    as alloc::boxed::Box<dyn devices::PciFunction>,
            ));
        }
        for (i, nic) in machine.nics.iter().enumerate() {
            let device = super::net::FIRST_NIC_DEVICE + i as u8;
            let function = super::net::NicFunction::new(nic.clone(), machine.ram.clone());
            pci.push((
                devices::PciAddress::new(0, device, 0),
                alloc::boxed::Box::new(function) as alloc::boxed::Box<dyn devices::PciFunction>,
            ));
        }
        let platform = Platform::pc(PlatformSpec {
            ram_bytes: machine.ram.len(),
            cpus: cpus as u16,
            epoch_unix_ns: machine.epoch_unix_ns,
            console: Relay::new(name, out),
            pci,
            wake: machine.net_wake.clone(),
        })?;
        let lapics = (0..cpus)
            .map(|i| {
                let mut lapic = LocalApic::new(LapicConfig {
                    apic_id: i as u32,
                    bsp: i == 0,
                    tsc_at_zero: machine.tsc_at_zero,
                    ..LapicConfig::new(machine.tsc_hz)
                });
                if i == 0 {
                    // Firmware leaves the BSP's APIC in virtual-wire mode (LINT0 =
                    // ExtINT), so the PIC reaches the CPU until the guest reprograms
                    // the APIC. APs keep their reset state.
                    lapic.setup_virtual_wire();
                }
                lapic
            })
            .collect();
        let mut run = alloc::vec![RunState::WaitForSipi; cpus];
        run[0] = RunState::Running;
        Ok(Self {
            name: name.into(),
            platform,
            lapics,
            run,
            kicks: 0,
            parked: 0,
        })
    }

    pub fn cpus(&self) -> usize {
        self.lapics.len()
    }

    /// Every device's state, the local APICs' included, for a snapshot.
    pub fn save_devices(&self) -> Result<Vec<u8>, devices::StateError> {
        Ok(devices::PlatformState {
            pic: self.platform.pic.state(),
            ioapic: self.platform.ioapic.state(),
            lapics: self.lapics.iter().map(|l| l.state()).collect(),
            bus_devices: self.platform.device_states()?,
        }
        .encode())
    }

    /// Restores [`VmShared::save_devices`]' state. Not all or nothing across devices:
    /// restore into a freshly made `VmShared` and discard it on an error.
    pub fn restore_devices(&mut self, data: &[u8]) -> Result<(), devices::StateError> {
        let s = devices::PlatformState::decode(
            data,
            self.lapics.len(),
            self.platform.device_names().len(),
        )?;
        self.platform.pic.restore(&s.pic)?;
        self.platform.ioapic.restore(&s.ioapic)?;
        for (lapic, state) in self.lapics.iter_mut().zip(&s.lapics) {
            lapic.restore(state)?;
        }
        self.platform.restore_device_states(&s.bus_devices)
    }

    /// The vCPUs' run states and which are parked, for a snapshot. Version 1:
    /// `[1]`, count u32, per vCPU `[kind, vector]` (0 running, 1 waiting for SIPI,
    /// 2 STARTUP with that vector), parked u64.
    pub fn run_state(&self) -> Vec<u8> {
        let mut out = alloc::vec![1u8];
        out.extend_from_slice(&(self.run.len() as u32).to_le_bytes());
        for r in &self.run {
            out.extend_from_slice(&match r {
                RunState::Running => [0, 0],
                RunState::WaitForSipi => [1, 0],
                RunState::StartUp(v) => [2, *v],
            });
        }
        out.extend_from_slice(&self.parked.to_le_bytes());
        out
    }

    /// Restores [`VmShared::run_state`]; on an error nothing changed.
    pub fn restore_run_state(&mut self, b: &[u8]) -> Result<(), String> {
        let n = self.run.len();
        let bad = || String::from("the vCPUs' run states are malformed or of another version");
        if b.len() != 5 + 2 * n + 8 || b[0] != 1 {
            return Err(bad());
        }
        if u32::from_le_bytes([b[1], b[2], b[3], b[4]]) as usize != n {
            return Err(format!(
                "the snapshot's run states are for another vCPU count than {n}"
            ));
        }
        let mut run = Vec::with_capacity(n);
        for i in 0..n {
            run.push(match (b[5 + 2 * i], b[6 + 2 * i]) {
                (0, 0) => RunState::Running,
                (1, 0) => RunState::WaitForSipi,
                (2, v) => RunState::StartUp(v),
                _ => return Err(bad()),
            });
        }
        let mut p = [0; 8];
        p.copy_from_slice(&b[5 + 2 * n..]);
        let parked = u64::from_le_bytes(p);
        if n < 64 && parked >> n != 0 {
            return Err(bad());
        }
        self.run = run;
        self.parked = parked;
        Ok(())
    }

    /// Whether the guest's UART can take another byte typed on the host console.
    pub fn console_ready(&mut self) -> bool {
        self.platform.console().uart.rx_space() > 0
    }

    /// A byte typed on the host console for this VM. Returns false when the guest's
    /// receive FIFO is full.
    pub fn console_input(&mut self, byte: u8) -> bool {
        self.console_ready() && self.platform.console().uart.enqueue_input(byte)
    }

    /// Shows the console line the guest is in the middle of (the VM has the
    /// keyboard: its prompt must be visible).
    pub fn show_console_partial(&mut self, now_ns: u64) {
        self.platform.console().uart.sink_mut().show_partial(now_ns);
    }

    /// Relays what the guest printed without a final newline.
    pub fn flush_console(&mut self) {
        self.platform.console().uart.sink_mut().flush();
    }

    /// The earliest time at which a device or a local APIC timer of this VM wants to
    /// interrupt.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        self.lapics
            .iter()
            .filter_map(|l| l.next_deadline_ns())
            .chain(self.platform.next_deadline_ns())
            .min()
    }

    /// An IOAPIC message to the local APICs: fixed to every APIC its destination
    /// names, lowest priority to the one with the lowest task priority, NMI to each
    /// (SDM Vol. 3A 11.6.2; IOAPIC destinations are xAPIC-format).
    fn deliver(&mut self, d: devices::Delivery) {
        let matches: Vec<usize> = (0..self.lapics.len())
            .filter(|&i| self.lapics[i].matches_ioapic_destination(d.dest, d.logical))
            .collect();
        let targets: Vec<usize> = match d.mode {
            DeliveryMode::Fixed | DeliveryMode::Nmi => matches,
            DeliveryMode::LowestPriority => matches
                .into_iter()
                .filter(|&i| self.lapics[i].sw_enabled())
                .min_by_key(|&i| (self.lapics[i].tpr(), i))
                .into_iter()
                .collect(),
            _ => Vec::new(),
        };
        for i in targets {
            if d.mode == DeliveryMode::Nmi {
                self.lapics[i].deliver_nmi();
                self.parked &= !(1 << i);
            } else {
                self.lapics[i].deliver(d.vector, d.level_triggered);
            }
            self.kicks |= 1 << i;
        }
    }

    /// Carries out what an access or poll caused; a debug-exit code ends the VM and a
    /// reset request resets it (the returned `Next`).
    fn finish(&mut self, out: Outcome) -> Option<Next> {
        for d in out.deliveries {
            self.deliver(d);
        }
        if let Some(code) = out.exit {
            return Some(Next::Stop(format!(
                "guest wrote to the debug-exit port: exit code {code}"
            )));
        }
        out.reset
            .then(|| Next::Reset(String::from("guest requested a reset")))
    }

    /// A level-triggered EOI at a local APIC goes on to the IOAPIC.
    fn eoi(&mut self, vector: Option<u8>) {
        if let Some(v) = vector {
            let mut out = Outcome::default();
            self.platform.eoi(v, &mut out);
            self.finish(out);
        }
    }

    /// Routes the IPI vCPU `from` just wrote to its ICR, if any.
    fn send_ipis(&mut self, from: usize) {
        let Some(ipi) = self.lapics[from].take_outgoing_ipi() else {
            return;
        };
        let mut apics: Vec<&mut LocalApic> = self.lapics.iter_mut().collect();
        let routed = devices::ipi::route(&ipi, from, &mut apics);
        self.kicks |= routed.interrupted | routed.init | routed.startup;
        // An NMI ends a HLT with interrupts disabled.
        for (i, apic) in self.lapics.iter().enumerate() {
            if apic.nmi_pending() {
                self.parked &= !(1 << i);
            }
        }
        for (i, action) in routed.actions() {
            match action {
                devices::ipi::Action::Init => {
                    self.run[i] = RunState::WaitForSipi;
                    self.parked &= !(1 << i);
                }
                devices::ipi::Action::StartUp(vector) => {
                    // A STARTUP IPI only acts on a processor waiting for one.
                    if self.run[i] == RunState::WaitForSipi {
                        self.run[i] = RunState::StartUp(vector);
                    }
                }
            }
        }
    }
}

/// Exits whose handling touches no device, no local APIC and no interrupt or NMI
/// state (CPUID is answered from the policy, WBINVD/INVD are skipped): after one,
/// the next entry may take the fast path ([`VcpuCtx::entry_unchanged`]). CPUID is
/// the exit guests make most outside device access (Linux asks hundreds of leaves
/// at boot), and the one `cargo xtask bench` times.
pub fn leaves_interrupts_alone(exit: &Exit) -> bool {
    matches!(exit, Exit::Cpuid { .. } | Exit::CacheFlush)
}

/// The version of [`VcpuCtx::soft_state`]'s encoding.
const SOFT_STATE_VERSION: u8 = 1;

/// One vCPU of a VM. See the module documentation.
pub struct VcpuCtx<V: Vcpu> {
    /// The vCPU's index in its VM (= its APIC ID).
    pub index: usize,
    pub vcpu: V,
    msrs: MsrState,
    pub stats: ExitStats,
    /// Waiting in HLT with interrupts enabled for the next interrupt.
    pub halted: bool,
    /// NMIs delivered to this vCPU.
    pub nmi_injected: u64,
    /// In the benchmark's bare CPUID loop (the run loop carries it out).
    pub in_bare_loop: bool,
    /// An NMI-window exit is requested.
    nmi_window: bool,
    bench_hypercalls: bool,
    unmapped_stops: bool,
    ram: GuestRam,
    host_cpuid: fn(u32, u32) -> CpuidResult,
    topology: Topology,
    /// What the guest's CPUID view allows in CR4, EFER and XCR0.
    features: GuestFeatures,
    /// Consecutive rounds of an exception raised while delivering itself.
    delivery_loop: vcpu::delivery_loop::DeliveryLoop,
    /// The guest's CPUID answers, once computed.
    cpuid_cache: policy::CpuidCache,
    /// The last [`Self::prepare_entry`] found nothing to deliver and left no window
    /// requested: the entry fast path's precondition ([`Self::entry_unchanged`]).
    entry_idle: bool,
}

fn set_low32(reg: &mut u64, value: u32) {
    // 32-bit results zero-extend into the 64-bit register, as hardware does.
    *reg = value as u64;
}

impl<V: Vcpu> VcpuCtx<V> {
    pub fn new(
        index: usize,
        vcpu: V,
        machine: &MachineInfo,
        host_cpuid: fn(u32, u32) -> CpuidResult,
    ) -> Self {
        let topology = Topology {
            apic_id: index as u32,
            cpus: machine.cpus.clamp(1, MAX_VCPUS) as u32,
        };
        let features = GuestFeatures::from_cpuid(|leaf, subleaf| {
            let r = policy::cpuid(leaf, subleaf, host_cpuid, &topology);
            [r.eax, r.ebx, r.ecx, r.edx]
        });
        Self {
            index,
            vcpu,
            msrs: MsrState::new(policy::Vendor::from_leaf0(&host_cpuid(0, 0))),
            stats: ExitStats::default(),
            halted: false,
            nmi_injected: 0,
            in_bare_loop: false,
            nmi_window: false,
            bench_hypercalls: machine.bench_hypercalls,
            unmapped_stops: machine.unmapped_stops,
            ram: machine.ram.clone(),
            host_cpuid,
            topology,
            features,
            delivery_loop: Default::default(),
            cpuid_cache: Default::default(),
            entry_idle: false,
        }
    }

    /// The VM's RAM, as this vCPU reaches it.
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// The software half of this vCPU's state for a snapshot (the architectural
    /// half is the backend's `save_state`): the MSRs the core emulates, HLT and the
    /// NMI-window request. Version 1: `[1, halted, nmi_window, in_bare_loop]`,
    /// MTRR_DEF_TYPE u64, MISC_ENABLE u64, NMIs injected u64 (little endian).
    pub fn soft_state(&self) -> Vec<u8> {
        let mut out = alloc::vec![
            SOFT_STATE_VERSION,
            u8::from(self.halted),
            u8::from(self.nmi_window),
            u8::from(self.in_bare_loop),
        ];
        out.extend_from_slice(&self.msrs.mtrr_def_type.to_le_bytes());
        out.extend_from_slice(&self.msrs.misc_enable.to_le_bytes());
        out.extend_from_slice(&self.nmi_injected.to_le_bytes());
        out
    }

    /// Restores [`VcpuCtx::soft_state`]; on an error nothing changed. The backend's
    /// NMI-window request follows the restored flag.
    pub fn restore_soft_state(&mut self, b: &[u8]) -> Result<(), String> {
        if b.len() != 28 || b[0] != SOFT_STATE_VERSION || b[1..4].iter().any(|&f| f > 1) {
            return Err(format!(
                "vCPU {}: its software state is malformed or of another version",
                self.index
            ));
        }
        let u64_at = |at: usize| {
            let mut v = [0; 8];
            v.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(v)
        };
        self.halted = b[1] == 1;
        self.in_bare_loop = b[3] == 1;
        self.msrs.mtrr_def_type = u64_at(4);
        self.msrs.misc_enable = u64_at(12);
        self.nmi_injected = u64_at(20);
        // Whatever the fresh vCPU had requested, the restored flag decides.
        self.nmi_window = b[2] != 1;
        self.set_nmi_window(b[2] == 1);
        Ok(())
    }

    /// Brings the interrupt lines up to date at `now_ns` and, before the next entry,
    /// delivers the highest-priority pending interrupt if the guest can take it, or
    /// asks for an interrupt-window exit if it cannot yet. Wakes a halted vCPU when
    /// an interrupt is pending.
    pub fn prepare_entry(&mut self, vm: &mut VmShared, now_ns: u64) {
        let i = self.index;
        self.entry_idle = false;
        let mut out = Outcome::default();
        vm.platform.poll(now_ns, &vm.lapics, &mut out);
        vm.finish(out);
        vm.lapics[i].poll_timer(now_ns);
        // An NMI goes before any interrupt, whatever RFLAGS.IF says, and ends a HLT
        // (SDM Vol. 3A 6.7.1).
        let nmi = vm.lapics[i].nmi_pending();
        if nmi {
            vm.parked &= !(1 << i);
            self.halted = false;
            if self.vcpu.nmi_ready() {
                vm.lapics[i].take_nmi();
                self.nmi_injected += 1;
                self.set_nmi_window(false);
                self.vcpu.inject_nmi();
            } else {
                // Blocked (an NMI handler runs until its IRET, or a shadow): an exit
                // when that ends, or the next exit anyway. Not the interrupt window:
                // with IF set it would exit before every guest instruction and the
                // handler would never reach its IRET.
                self.set_nmi_window(true);
            }
        } else {
            // Left on with nothing to deliver, it would exit at every entry.
            self.set_nmi_window(false);
        }
        // The PIC's INTR reaches the BSP through LINT0 (ExtINT), which bypasses the
        // APIC's priority logic (SDM Vol. 3A 11.5.1), so it goes first. Only the BSP
        // is wired to it (MP spec 3.6.2.2, virtual wire mode).
        let lapic = &vm.lapics[i];
        let from_pic =
            i == 0 && lapic.accepts_pic_interrupts() && vm.platform.pic.pending_vector().is_some();
        if !from_pic && lapic.pending_vector().is_none() {
            self.vcpu.request_interrupt_window(false);
            self.entry_idle = !nmi;
            return;
        }
        if self.vcpu.rflags() & RFLAGS_IF != 0 {
            self.halted = false;
        }
        if self.vcpu.interrupt_ready() {
            let vector = if from_pic {
                vm.platform.pic.acknowledge()
            } else {
                vm.lapics[i].acknowledge()
            };
            if let Some(vector) = vector {
                self.vcpu.inject_interrupt(vector);
            }
            self.vcpu.request_interrupt_window(false);
        } else {
            self.vcpu.request_interrupt_window(true);
        }
    }

    /// Whether the next entry may skip [`Self::prepare_entry`] (the entry fast path)
    /// after an exit that [`leaves_interrupts_alone`]: the last preparation found no
    /// NMI and no interrupt to deliver and left both windows off, and since then
    /// neither a device (`Platform::poll_due`: a deadline passed, an access, a wake
    /// from another processor) nor this local APIC's timer has anything due. What
    /// else can make an interrupt pending comes from another vCPU or the host, under
    /// the VM's lock, and kicks this vCPU: that exit is not a quiet one (the run loop
    /// also checks the kick bit this vCPU's exit found). Nothing is skipped that the
    /// guest could tell: the preparation would have found the same nothing.
    pub fn entry_unchanged(&self, vm: &VmShared, now_ns: u64) -> bool {
        self.entry_idle
            && !vm.platform.poll_due(now_ns)
            && vm.lapics[self.index]
                .next_deadline_ns()
                .is_none_or(|d| now_ns < d)
    }

    /// Answers the CPUID the guest executed from the VM's CPUID view and steps over
    /// it.
    fn answer_cpuid(&mut self, leaf: u32, subleaf: u32) {
        let (host, topology) = (self.host_cpuid, &self.topology);
        let r = self.cpuid_cache.get(leaf, subleaf, || {
            policy::cpuid(leaf, subleaf, host, topology)
        });
        let regs = self.vcpu.regs();
        set_low32(&mut regs.rax, r.eax);
        set_low32(&mut regs.rbx, r.ebx);
        set_low32(&mut regs.rcx, r.ecx);
        set_low32(&mut regs.rdx, r.edx);
        self.vcpu.skip_instruction();
    }

    /// What this guest's CPUID reports, where an emulated instruction depends on it.
    fn guest_features(&mut self) -> (mmio::GuestFeatures, mmio_sse::SimdFeatures) {
        let (host, topology) = (self.host_cpuid, &self.topology);
        let leaf1 = self
            .cpuid_cache
            .get(1, 0, || policy::cpuid(1, 0, host, topology));
        (
            mmio::GuestFeatures {
                cx16: leaf1.ecx & (1 << 13) != 0,
            },
            mmio_sse::SimdFeatures::from_leaf1(leaf1.ecx, leaf1.edx),
        )
    }

    /// Until when (VM nanoseconds) CPUID exits may be answered without the VM's lock
    /// and without leaving the guest's side of the run loop (the exit fastpath, see
    /// `run_slice`): `None` when the last preparation left something to deliver or a
    /// window open; otherwise the first device or local APIC timer deadline
    /// (`u64::MAX`: none). Called under the VM's lock right before an entry.
    pub fn fast_exits_until(&self, vm: &VmShared) -> Option<u64> {
        // `poll_due(0)`: an access or a wake is waiting for the poll (no deadline is
        // reached at time 0), which the preparation of the next entry must see.
        if !self.entry_idle || vm.platform.poll_due(0) {
            return None;
        }
        let device = vm.platform.next_deadline_ns().unwrap_or(u64::MAX);
        let timer = vm.lapics[self.index].next_deadline_ns().unwrap_or(u64::MAX);
        Some(device.min(timer))
    }

    /// The exit fastpath's handling of a CPUID exit: what [`Self::handle`] does for
    /// one, without the VM (CPUID reads no device and no shared state).
    pub fn handle_fast_cpuid(&mut self, leaf: u32, subleaf: u32) {
        self.stats.record(vcpu::ExitKind::Cpuid);
        // An instruction that exited: the guest made progress, which ends any
        // exception-delivery loop count (`DeliveryLoop::observe` does the same).
        self.delivery_loop = Default::default();
        self.answer_cpuid(leaf, subleaf);
    }

    fn set_nmi_window(&mut self, on: bool) {
        if self.nmi_window != on {
            self.nmi_window = on;
            self.vcpu.request_nmi_window(on);
        }
    }

    /// Carries out the INS/OUTS of I/O exit `io`, one port access per element
    /// ([`string_io`]), and one MMIO access per element whose memory side is not RAM
    /// (a device, or unbacked space: all ones, writes dropped).
    fn string_io(&mut self, vm: &mut VmShared, io: &vcpu::PortIo, now_ns: u64) -> Next {
        let i = self.index;
        let mut out = Outcome::default();
        let mut done = Accesses::default();
        let mut bus = |access: string_io::BusAccess| -> u64 {
            match access {
                string_io::BusAccess::Port { size, write } => {
                    let v = vm.platform.port_io(
                        io.port,
                        size,
                        write.is_some(),
                        write.unwrap_or(0),
                        now_ns,
                        &mut out,
                    );
                    if write.is_some() {
                        0
                    } else {
                        u64::from(v)
                    }
                }
                string_io::BusAccess::Memory { gpa, size, write } => {
                    mmio_access(vm, i, gpa, size, write, now_ns, &mut out, &mut done)
                }
            }
        };
        let result = string_io::emulate(&mut self.vcpu, &mut self.ram, io, &mut bus);
        vm.eoi(done.eoi);
        if let Some(next) = vm.finish(out) {
            return next;
        }
        if let (Some(gpa), true) = (done.unbacked, self.unmapped_stops) {
            return Next::Stop(format!(
                "string port I/O outside its memory: guest-physical {gpa:#x} at RIP {:#x}",
                self.vcpu.rip()
            ));
        }
        match result {
            Ok(()) => Next::Continue,
            Err(e) => Next::Stop(format!(
                "string port I/O on port {:#x} at RIP {:#x} cannot be emulated: {e}",
                io.port,
                self.vcpu.rip()
            )),
        }
    }

    /// Emulates the instruction that touched this vCPU's local APIC page or a device
    /// on the VM's MMIO bus.
    fn emulate_mmio(&mut self, vm: &mut VmShared, gpa: u64, write: bool, now_ns: u64) -> Next {
        let i = self.index;
        // Which instructions exist for the guest: its CPUID view, as it sees it.
        let (features, simd) = self.guest_features();
        let mut done = Accesses::default();
        let mut out = Outcome::default();
        let mut device = |addr: u64, size: u8, value: Option<u64>| -> u64 {
            mmio_access(vm, i, addr, size, value, now_ns, &mut out, &mut done)
        };
        let result = mmio_sse::emulate(
            &mut self.vcpu,
            &mut self.ram,
            gpa,
            write,
            features,
            simd,
            &mut device,
        );
        vm.eoi(done.eoi);
        if let Some(next) = vm.finish(out) {
            return next;
        }
        // `on_unmapped = "stop"`: the instruction's other operand (a stack, a string
        // instruction's other side) reached unbacked space.
        if let (Some(other), true) = (done.unbacked, self.unmapped_stops) {
            return Next::Stop(format!(
                "access outside its memory: guest-physical {other:#x} at RIP {:#x}",
                self.vcpu.rip()
            ));
        }
        match result {
            Ok(()) => Next::Continue,
            Err(e) => Next::Stop(format!(
                "MMIO access to guest-physical {gpa:#x} at RIP {:#x} cannot be emulated: {e}",
                self.vcpu.rip()
            )),
        }
    }

    /// An access to guest-physical space with neither RAM nor a device behind it,
    /// answered as a PC's bus answers one: reads return all ones and writes vanish
    /// (decoded and completed like any MMIO access); an instruction fetch reads
    /// 0xFF bytes, which decode as the undefined `FF /7`, so the guest gets #UD.
    /// Counted, and reported for the first few and then every power of two, since
    /// it usually means a guest bug or a probe.
    fn unbacked_access(
        &mut self,
        vm: &mut VmShared,
        gpa: u64,
        write: bool,
        fetch: bool,
        now_ns: u64,
    ) -> Next {
        let n = vm.platform.unbacked_accesses + 1;
        vm.platform.unbacked_accesses = n;
        if n == 1 {
            vm.platform.first_unbacked = gpa;
        }
        if n <= 4 || n.is_power_of_two() {
            let (access, outcome) = if fetch {
                ("instruction fetch from", "#UD")
            } else if write {
                ("write to", "dropped")
            } else {
                ("read of", "all ones")
            };
            log::warn!(
                "vm {}: {access} unbacked guest-physical {gpa:#x} at RIP {:#x}{}: {outcome} ({n} so far)",
                vm.name,
                self.vcpu.rip(),
                self.which(),
            );
        }
        if fetch {
            self.vcpu.inject_exception(Exception::UD);
            return Next::Continue;
        }
        self.emulate_mmio(vm, gpa, write, now_ns)
    }

    fn read_msr(&mut self, vm: &mut VmShared, msr: u32, now_ns: u64) -> Option<u64> {
        // The local APIC's MSRs belong to its model; the rest to the policy.
        if LocalApic::handles_msr(msr) {
            return vm.lapics[self.index].read_msr(msr, now_ns).ok();
        }
        match self.msrs.read(msr) {
            MsrAccess::Value(v) => Some(v),
            MsrAccess::Backend => self.vcpu.read_backend_msr(msr),
            MsrAccess::Fault => None,
        }
    }

    fn write_msr(&mut self, vm: &mut VmShared, msr: u32, value: u64, now_ns: u64) -> bool {
        if LocalApic::handles_msr(msr) {
            let i = self.index;
            return match vm.lapics[i].write_msr(msr, value, now_ns) {
                Ok(eoi) => {
                    vm.eoi(eoi);
                    vm.send_ipis(i);
                    true
                }
                Err(_) => false,
            };
        }
        match self.msrs.write(msr, value) {
            MsrAccess::Value(_) => true,
            // EFER's rules depend on the guest's CPUID and CR0.PG (LME is frozen
            // while paging is on); LMA stays the processor's.
            MsrAccess::Backend if msr == policy::IA32_EFER => {
                let cur = self.vcpu.control_regs();
                match cr_policy::check_efer(&self.features, &cur, value) {
                    Ok(v) => self.vcpu.write_backend_msr(msr, v),
                    Err(_) => false,
                }
            }
            // The guest sets its TSC (the backend moves the vCPU's TSC offset): its
            // local APIC's TSC deadlines count in the new TSC from now on.
            MsrAccess::Backend if msr == policy::IA32_TIME_STAMP_COUNTER => {
                let done = self.vcpu.write_backend_msr(msr, value);
                if done {
                    vm.lapics[self.index].set_guest_tsc(value, now_ns);
                }
                done
            }
            MsrAccess::Backend => self.vcpu.write_backend_msr(msr, value),
            MsrAccess::Fault => false,
        }
    }

    /// A write to CR0 or CR4: decoded here when the backend could not, validated
    /// against the guest's CPUID ([`cr_policy`]), then carried out by the backend or
    /// answered with the fault the processor would raise.
    fn write_cr(&mut self, cr: u8, value: Option<u64>) -> Next {
        let cur = self.vcpu.control_regs();
        let (value, len) = match value {
            Some(v) => (v, None),
            None => {
                let (rip, rsp) = (self.vcpu.rip(), self.vcpu.rsp());
                match cr_insn::fetch_and_decode(&self.ram, &cur, rip, self.vcpu.regs(), rsp) {
                    Ok(w) if w.cr == cr => (w.value, Some(w.len)),
                    Ok(w) => {
                        return Next::Stop(format!(
                            "CR{cr} write exit at RIP {rip:#x}, but the instruction there writes CR{}{}",
                            w.cr,
                            self.which()
                        ))
                    }
                    Err(e) => {
                        return Next::Stop(format!(
                            "CR{cr} write at RIP {rip:#x} cannot be emulated: {e}{}",
                            self.which()
                        ))
                    }
                }
            }
        };
        let checked = match cr {
            0 => cr_policy::check_cr0(&cur, value),
            4 => cr_policy::check_cr4(&self.features, &cur, value),
            _ => {
                return Next::Stop(format!(
                    "unexpected CR{cr} write exit at RIP {:#x}",
                    self.vcpu.rip()
                ))
            }
        };
        match checked {
            Ok(v) if self.vcpu.write_cr(cr, v) => match len {
                None => self.vcpu.skip_instruction(),
                Some(len) => {
                    // IP/EIP wrap within the code segment (SDM Vol. 3A 5.3).
                    let next = self.vcpu.rip().wrapping_add(len as u64);
                    self.vcpu
                        .set_rip(match crate::vmm::guest_walk::code_bitness(&cur) {
                            16 => next & 0xFFFF,
                            32 => next & 0xFFFF_FFFF,
                            _ => next,
                        });
                }
            },
            Ok(_) => self.vcpu.inject_exception(Exception::GP0),
            Err(e) => {
                log::debug!(
                    "vcpu {}: CR{cr} <- {value:#x} raises vector {}",
                    self.index,
                    e.vector
                );
                self.vcpu.inject_exception(e);
            }
        }
        Next::Continue
    }

    /// Handles one exit at time `now_ns`; the vCPU is left ready for the next entry.
    pub fn handle(&mut self, vm: &mut VmShared, exit: Exit, now_ns: u64) -> Next {
        self.stats.record(exit.kind());
        // A processor caught in such a loop never runs another instruction: as dead
        // as after a triple fault, which is how it ends (see `delivery_loop`).
        if let Some(l) = self.delivery_loop.observe(&exit, self.vcpu.rip()) {
            return Next::Crash(format!(
                "triple fault (shutdown): vector {} raised while delivering itself {} times \
                 in a row at RIP {:#x}{}, an exception-delivery loop no instruction ends \
                 (RSP {:#x})",
                l.vector,
                l.rounds,
                l.rip,
                self.which(),
                self.vcpu.rsp()
            ));
        }
        match exit {
            Exit::PortIo(io) => {
                if io.string {
                    return self.string_io(vm, &io, now_ns);
                }
                let mask = all_ones(io.size) as u64;
                let value = (self.vcpu.regs().rax & mask) as u32;
                let mut out = Outcome::default();
                let result = vm
                    .platform
                    .port_io(io.port, io.size, io.write, value, now_ns, &mut out);
                if let Some(next) = vm.finish(out) {
                    return next;
                }
                if !io.write {
                    let rax = &mut self.vcpu.regs().rax;
                    // IN AL/AX keeps the upper bits of RAX; IN EAX zero-extends.
                    *rax = if io.size == 4 {
                        result as u64
                    } else {
                        (*rax & !mask) | (result as u64 & mask)
                    };
                }
                self.vcpu.skip_instruction();
                Next::Continue
            }
            Exit::Cpuid { leaf, subleaf } => {
                self.answer_cpuid(leaf, subleaf);
                Next::Continue
            }
            Exit::Rdmsr { msr } => {
                match self.read_msr(vm, msr, now_ns) {
                    Some(v) => {
                        let regs = self.vcpu.regs();
                        set_low32(&mut regs.rax, v as u32);
                        set_low32(&mut regs.rdx, (v >> 32) as u32);
                        self.vcpu.skip_instruction();
                    }
                    None => {
                        log::debug!("vm {}: RDMSR {msr:#x} raises #GP{}", vm.name, self.which());
                        self.vcpu.inject_exception(Exception::GP0)
                    }
                }
                Next::Continue
            }
            Exit::Wrmsr { msr, value } => {
                if self.write_msr(vm, msr, value, now_ns) {
                    self.vcpu.skip_instruction();
                } else {
                    log::debug!(
                        "vm {}: WRMSR {msr:#x} <- {value:#x} raises #GP{}",
                        vm.name,
                        self.which()
                    );
                    self.vcpu.inject_exception(Exception::GP0);
                }
                Next::Continue
            }
            // Hypercalls are for the guest's kernel: from CPL > 0 the answer is the
            // error KVM gives (-KVM_EPERM), whatever the number.
            Exit::Hypercall if self.vcpu.cpl() != 0 => {
                self.vcpu.regs().rax = policy::hypercall::NOT_PERMITTED;
                self.vcpu.skip_instruction();
                Next::Continue
            }
            Exit::Hypercall
                if self.bench_hypercalls
                    && self.hypercall_number() == policy::hypercall::BENCH_BARE_BEGIN =>
            {
                self.vcpu.regs().rax = 0;
                self.vcpu.skip_instruction();
                Next::BareCpuidLoop
            }
            Exit::Hypercall => {
                let number = self.hypercall_number();
                self.vcpu.regs().rax = policy::hypercall::dispatch(number);
                self.vcpu.skip_instruction();
                Next::Continue
            }
            // HLT with interrupts disabled can only be left by NMI, INIT or reset. With
            // one vCPU nothing can send those: the guest has stopped itself. With
            // several, the vCPU parks until INIT; the VM ends once all are parked.
            Exit::Halt if self.vcpu.rflags() & RFLAGS_IF == 0 => {
                let all = (1u64 << vm.cpus()) - 1;
                vm.parked |= 1 << self.index;
                if vm.parked & all == all {
                    Next::Stop(format!(
                        "halted with interrupts disabled at RIP {:#x}{}",
                        self.vcpu.rip(),
                        if vm.cpus() > 1 { " (every vCPU)" } else { "" }
                    ))
                } else {
                    self.vcpu.skip_instruction();
                    Next::Yield
                }
            }
            Exit::Halt => {
                self.vcpu.skip_instruction();
                self.halted = true;
                Next::Yield
            }
            Exit::NestedPageFault {
                gpa,
                write,
                fetch: false,
            } if in_page(gpa, LAPIC_BASE, LAPIC_MMIO_SIZE) || vm.platform.decodes_mmio(gpa) => {
                self.emulate_mmio(vm, gpa, write, now_ns)
            }
            // RAM this vCPU has not mapped: a page given back by the balloon is
            // mapped at its first touch; a page the balloon holds is no RAM.
            Exit::NestedPageFault { gpa, write, fetch } => {
                match self.ram.map_on_fault(&mut self.vcpu, gpa, write) {
                    Ok(true) => Next::Continue,
                    Err(e) => Next::Stop(e),
                    Ok(false) if self.unmapped_stops => Next::Stop(format!(
                        "{} outside its memory: guest-physical {gpa:#x} at RIP {:#x}",
                        if fetch {
                            "instruction fetch"
                        } else if write {
                            "write"
                        } else {
                            "read"
                        },
                        self.vcpu.rip()
                    )),
                    Ok(false) => self.unbacked_access(vm, gpa, write, fetch, now_ns),
                }
            }
            Exit::Mmio { gpa, write } => Next::Stop(format!(
                "{} of unassigned MMIO at guest-physical {gpa:#x}",
                if write { "write" } else { "read" }
            )),
            Exit::VirtInstruction => {
                self.vcpu.inject_exception(Exception::UD);
                Next::Continue
            }
            // INVD is completed as WBINVD would be, and WBINVD as a no-op: guest RAM
            // is coherent write-back memory, and neither may discard or stall the
            // caches of the whole machine.
            Exit::CacheFlush => {
                self.vcpu.skip_instruction();
                Next::Continue
            }
            // No performance counters are offered (CPUID leaf 0xA is zero).
            Exit::Rdpmc => {
                self.vcpu.inject_exception(Exception::GP0);
                Next::Continue
            }
            // MONITOR/MWAIT (CPUID.1 ECX[3]) and RDPRU (8000_0008 EBX[4]) are hidden.
            Exit::HiddenInstruction => {
                self.vcpu.inject_exception(Exception::UD);
                Next::Continue
            }
            // The backend queued #AC/#DB for the guest again; counted above.
            Exit::ExceptionReflected { .. } => Next::Continue,
            Exit::CrWrite { cr, value } => self.write_cr(cr, value),
            Exit::Xsetbv { xcr, value } => {
                let cur = self.vcpu.control_regs();
                match cr_policy::check_xsetbv(&self.features, &cur, xcr, value) {
                    Err(e) => {
                        self.vcpu.inject_exception(e);
                        Next::Continue
                    }
                    // Unreachable while the CPUID policy hides XSAVE (CR4.OSXSAVE is
                    // then refused, and XSETBV is #UD without it).
                    Ok(_) => Next::Stop(format!(
                        "XSETBV {xcr} <- {value:#x}: XCR0 is not switched per guest{}",
                        self.which()
                    )),
                }
            }
            // The slice may end here; the run loop's slice clock decides (a host
            // tick early in a slice does not end it).
            Exit::ExternalInterrupt | Exit::Preempted => Next::Yield,
            Exit::InterruptWindow => Next::Continue,
            Exit::Shutdown => {
                // What the guest's own debugger would want first: where it was, on
                // which stack, and with which paging and mode.
                let c = self.vcpu.control_regs();
                Next::Crash(format!(
                    "triple fault (shutdown) at RIP {:#x} in {:?} mode{} (RSP {:#x} CR0 {:#x} \
                     CR3 {:#x} CR4 {:#x} EFER {:#x})",
                    self.vcpu.rip(),
                    self.vcpu.mode(),
                    self.which(),
                    self.vcpu.rsp(),
                    c.cr0,
                    c.cr3,
                    c.cr4,
                    c.efer
                ))
            }
            Exit::EntryFailure { code, reason } => Next::Stop(format!(
                "VM entry failed (code {code:#x}){}: {reason}",
                self.which()
            )),
            Exit::Unknown { code } => Next::Stop(format!(
                "unhandled exit (vendor code {code:#x}) at RIP {:#x}{}",
                self.vcpu.rip(),
                self.which()
            )),
        }
    }

    /// The hypercall number in RAX: outside 64-bit mode only EAX, as KVM reads it
    /// (bits 63:32 of RAX are whatever 64-bit code last left there).
    fn hypercall_number(&mut self) -> u64 {
        let bits = crate::vmm::guest_walk::code_bitness(&self.vcpu.control_regs());
        let rax = self.vcpu.regs().rax;
        if bits == 64 {
            rax
        } else {
            rax & 0xFFFF_FFFF
        }
    }

    /// " on vCPU n" in multi-vCPU VMs, for reports.
    fn which(&self) -> String {
        if self.topology.cpus > 1 {
            format!(" on vCPU {}", self.index)
        } else {
            String::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::platform;
    use alloc::vec::Vec;
    use core::cell::RefCell;
    use vcpu::{CpuMode, GuestRegisters, PortIo};

    #[derive(Default)]
    struct FakeVcpu {
        regs: GuestRegisters,
        rip: u64,
        skipped: u32,
        injected: Vec<Exception>,
        efer: u64,
        rflags: u64,
        interrupts: Vec<u8>,
        window: bool,
        cr: vcpu::ControlRegs,
        real_cs: Option<u16>,
        nmis: u32,
        nmi_blocked: bool,
        nmi_window: bool,
        cpl: u8,
        tsc_written: Option<u64>,
        /// Pages mapped and unmapped in its (imaginary) nested page tables.
        mapped: Vec<(u64, u64)>,
        unmapped: Vec<u64>,
        fx: vcpu::fpu::FxArea,
    }

    impl Vcpu for FakeVcpu {
        fn run(&mut self, _: u64) -> Exit {
            unreachable!()
        }
        fn fx_area(&mut self) -> Option<&mut vcpu::fpu::FxArea> {
            Some(&mut self.fx)
        }
        fn map_page(
            &mut self,
            _: &mut dyn vcpu::HostMemory,
            gpa: u64,
            hpa: u64,
            _writable: bool,
        ) -> Result<(), vcpu::BackendError> {
            self.mapped.push((gpa, hpa));
            Ok(())
        }
        fn unmap_page(
            &mut self,
            _: &mut dyn vcpu::HostMemory,
            gpa: u64,
        ) -> Result<(), vcpu::BackendError> {
            self.unmapped.push(gpa);
            Ok(())
        }
        fn regs(&mut self) -> &mut GuestRegisters {
            &mut self.regs
        }
        fn rip(&self) -> u64 {
            self.rip
        }
        fn set_rip(&mut self, rip: u64) {
            self.rip = rip
        }
        fn set_real_mode_cs(&mut self, selector: u16) {
            self.real_cs = Some(selector)
        }
        fn skip_instruction(&mut self) {
            self.skipped += 1;
        }
        fn inject_exception(&mut self, e: Exception) {
            self.injected.push(e)
        }
        fn mode(&self) -> CpuMode {
            CpuMode::Long
        }
        fn read_backend_msr(&mut self, msr: u32) -> Option<u64> {
            (msr == policy::IA32_EFER).then_some(self.efer)
        }
        fn write_backend_msr(&mut self, msr: u32, value: u64) -> bool {
            match msr {
                policy::IA32_EFER => self.efer = value,
                policy::IA32_TIME_STAMP_COUNTER => self.tsc_written = Some(value),
                _ => return false,
            }
            true
        }
        fn write_cr(&mut self, cr: u8, value: u64) -> bool {
            match cr {
                0 => self.cr.cr0 = value,
                _ => self.cr.cr4 = value,
            }
            true
        }
        fn rflags(&self) -> u64 {
            self.rflags
        }
        fn set_rflags(&mut self, rflags: u64) {
            self.rflags = vcpu::architectural_rflags(rflags);
        }
        fn interrupt_ready(&self) -> bool {
            self.rflags & RFLAGS_IF != 0
        }
        fn inject_interrupt(&mut self, vector: u8) {
            self.interrupts.push(vector)
        }
        fn request_interrupt_window(&mut self, on: bool) {
            self.window = on
        }
        fn nmi_ready(&self) -> bool {
            !self.nmi_blocked
        }
        fn cpl(&self) -> u8 {
            self.cpl
        }
        fn inject_nmi(&mut self) {
            self.nmis += 1;
            self.nmi_blocked = true;
        }
        fn request_nmi_window(&mut self, on: bool) {
            self.nmi_window = on;
        }
        fn rsp(&self) -> u64 {
            0
        }
        fn set_rsp(&mut self, _: u64) {}
        /// Flat 4 GiB segments with 32-bit stacks (for string port I/O).
        fn segment(&self, _: vcpu::SegReg) -> Option<vcpu::state::Segment> {
            Some(vcpu::state::Segment {
                limit: u32::MAX,
                attrib: vcpu::state::attrib::DB,
                ..Default::default()
            })
        }
        fn control_regs(&self) -> vcpu::ControlRegs {
            self.cr
        }
        fn save_state(&mut self) -> vcpu::state::CpuState {
            unimplemented!("the exit-handling tests never save vCPU state")
        }
        fn load_state(&mut self, _: &vcpu::state::CpuState) -> Result<(), vcpu::state::StateError> {
            unimplemented!("the exit-handling tests never load vCPU state")
        }
    }

    std::thread_local! {
        static LINES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    }

    fn capture(name: &str, piece: crate::vmm::console::Piece) {
        use crate::vmm::console::Piece;
        let text = match piece {
            Piece::Line(t) | Piece::Partial(t) => t,
            Piece::Rest { line, .. } => line,
        };
        LINES.with(|l| l.borrow_mut().push(format!("{name} | {text}")));
    }

    fn host(leaf: u32, _: u32) -> CpuidResult {
        CpuidResult {
            eax: match leaf {
                0 => 0xD,
                0x8000_0000 => 0x8000_0008,
                l => l,
            },
            ebx: 0,
            ecx: 0xffff_ffff,
            // Leaf 1 with every feature; 0x8000_0001 with SYSCALL, NX and LM.
            edx: match leaf {
                1 => 0xffff_ffff,
                0x8000_0001 => (1 << 11) | (1 << 20) | (1 << 29),
                _ => 0,
            },
        }
    }

    /// One vCPU and its VM, with the handler's calls in the shape the tests use.
    struct TestVm {
        shared: VmShared,
        cpu: VcpuCtx<FakeVcpu>,
    }

    impl TestVm {
        fn handle(&mut self, exit: Exit, now: u64) -> Next {
            self.cpu.handle(&mut self.shared, exit, now)
        }
        fn prepare_entry(&mut self, now: u64) {
            self.cpu.prepare_entry(&mut self.shared, now)
        }
        fn next_deadline_ns(&self) -> Option<u64> {
            self.shared.next_deadline_ns()
        }
    }

    fn machine(cpus: usize) -> MachineInfo {
        // The fake guest's RAM: leaked so it lives as long as the test's VM.
        let ram: &'static mut [u8] = alloc::vec![0u8; 4 << 20].leak();
        // SAFETY: the leaked buffer is never freed.
        let ram = unsafe { GuestRam::contiguous(ram.as_mut_ptr(), ram.len() as u64, cpus) };
        MachineInfo {
            ram,
            epoch_unix_ns: 0,
            tsc_hz: 1_000_000_000,
            tsc_at_zero: 0,
            cpus,
            bench_hypercalls: false,
            unmapped_stops: false,
            balloon: false,
            disk: None,
            disk_stats: Default::default(),
            nics: Vec::new(),
            net_wake: None,
        }
    }

    fn vm() -> TestVm {
        let m = machine(1);
        TestVm {
            shared: VmShared::new("t", &m, capture).unwrap(),
            cpu: VcpuCtx::new(0, FakeVcpu::default(), &m, host),
        }
    }

    fn out(port: u16, size: u8) -> Exit {
        Exit::PortIo(PortIo {
            port,
            size,
            write: true,
            string: false,
            rep: false,
        })
    }
    fn inp(port: u16, size: u8) -> Exit {
        Exit::PortIo(PortIo {
            port,
            size,
            write: false,
            string: false,
            rep: false,
        })
    }

    #[test]
    fn console_output_is_relayed_by_line() {
        let mut vm = vm();
        for b in b"hi\nthere" {
            vm.cpu.vcpu.regs.rax = *b as u64;
            assert_eq!(vm.handle(out(0x3F8, 1), 0), Next::Continue);
        }
        vm.shared.flush_console();
        let lines = LINES.with(|l| l.borrow().clone());
        assert_eq!(lines, ["t | hi", "t | there"]);
        assert_eq!(vm.cpu.vcpu.skipped, 8);
    }

    #[test]
    fn unknown_ports_read_all_ones_and_are_counted() {
        let mut vm = vm();
        vm.cpu.vcpu.regs.rax = 0x1122_3344_5566_7788;
        vm.handle(inp(0x1234, 1), 0);
        assert_eq!(vm.cpu.vcpu.regs.rax, 0x1122_3344_5566_77ff);
        vm.handle(inp(0x1234, 2), 0);
        assert_eq!(vm.cpu.vcpu.regs.rax, 0x1122_3344_5566_ffff);
        vm.handle(inp(0x1234, 4), 0);
        assert_eq!(vm.cpu.vcpu.regs.rax, 0xffff_ffff);
        vm.handle(out(0x1234, 4), 0);
        assert_eq!(vm.shared.platform.unknown_port_accesses, 4);
        assert_eq!(vm.cpu.stats.count(vcpu::ExitKind::PortIo), 4);
    }

    /// The host's IDE channels (the hypervisor's own disk under Bochs,
    /// `host_disk::ata_disk`) are nothing in a VM: every guest access exits, is
    /// served by the VM's platform, where nothing decodes them, and never reaches
    /// the host's ports.
    #[test]
    fn the_hosts_ide_ports_are_not_the_guests() {
        let mut vm = vm();
        let ports: Vec<u16> = (0x1F0..=0x1F7)
            .chain(0x170..=0x177)
            .chain([0x3F6, 0x376])
            .collect();
        for &port in &ports {
            vm.cpu.vcpu.regs.rax = 0;
            vm.handle(inp(port, 1), 0);
            assert_eq!(vm.cpu.vcpu.regs.rax, 0xff, "port {port:#x}");
            vm.handle(out(port, 1), 0);
        }
        vm.handle(inp(0x1F0, 2), 0);
        assert_eq!(vm.cpu.vcpu.regs.rax, 0xffff);
        assert_eq!(
            vm.shared.platform.unknown_port_accesses,
            2 * ports.len() as u64 + 1
        );
    }

    #[test]
    fn cpuid_goes_through_the_policy() {
        let mut vm = vm();
        vm.cpu.vcpu.regs.rbx = u64::MAX;
        vm.handle(
            Exit::Cpuid {
                leaf: 0x4000_0000,
                subleaf: 0,
            },
            0,
        );
        assert_eq!(vm.cpu.vcpu.regs.rax, 0x4000_0001);
        assert_eq!(vm.cpu.vcpu.regs.rbx, u32::from_le_bytes(*b"hv-b") as u64);
        vm.handle(
            Exit::Cpuid {
                leaf: 1,
                subleaf: 0,
            },
            0,
        );
        assert_eq!(vm.cpu.vcpu.regs.rcx & (1 << 5), 0);
        assert_eq!(vm.cpu.vcpu.skipped, 2);
    }

    #[test]
    fn msrs_allowed_forbidden_and_backend() {
        let mut vm = vm();
        vm.handle(Exit::Rdmsr { msr: 0x1B }, 0);
        assert_eq!(vm.cpu.vcpu.regs.rax, 0xFEE0_0900);
        assert_eq!(vm.cpu.vcpu.regs.rdx, 0);
        vm.handle(Exit::Rdmsr { msr: 0xC001_0117 }, 0);
        vm.handle(
            Exit::Wrmsr {
                msr: 0xC001_0114,
                value: 0,
            },
            0,
        );
        assert_eq!(vm.cpu.vcpu.injected, [Exception::GP0, Exception::GP0]);
        vm.handle(
            Exit::Wrmsr {
                msr: policy::IA32_EFER,
                value: 0xD00,
            },
            0,
        );
        // LMA is the processor's: the written bit is ignored (paging is off here).
        assert_eq!(vm.cpu.vcpu.efer, 0x900);
        vm.handle(
            Exit::Wrmsr {
                msr: policy::IA32_EFER,
                value: 1 << 12,
            },
            0,
        );
        assert_eq!(vm.cpu.vcpu.efer, 0x900, "SVME refused");
        assert_eq!(vm.cpu.vcpu.injected.len(), 3);
        assert_eq!(vm.cpu.vcpu.skipped, 2);
    }

    #[test]
    fn cr_writes_are_validated_against_the_guest_cpuid() {
        use cr_policy::{cr0, cr4};
        let mut vm = vm();
        vm.cpu.vcpu.cr = vcpu::ControlRegs {
            cr0: cr0::PE | cr0::ET,
            ..Default::default()
        };
        let w = |cr, v| Exit::CrWrite { cr, value: Some(v) };
        // Leaf 1 offers everything the policy does not hide: PSE is fine, VMXE never,
        // OSXSAVE and MCE are hidden by the policy.
        assert_eq!(vm.handle(w(4, cr4::PSE), 0), Next::Continue);
        assert_eq!(vm.cpu.vcpu.cr.cr4, cr4::PSE);
        assert_eq!(vm.cpu.vcpu.skipped, 1);
        for bit in [cr4::VMXE, cr4::OSXSAVE, cr4::MCE, cr4::SMXE, 1 << 15] {
            vm.handle(w(4, bit), 0);
        }
        assert_eq!(vm.cpu.vcpu.injected, [Exception::GP0; 5]);
        assert_eq!(vm.cpu.vcpu.cr.cr4, cr4::PSE, "unchanged");
        vm.handle(w(0, cr0::PE | cr0::NW), 0);
        vm.handle(w(0, cr0::PG), 0);
        assert_eq!(vm.cpu.vcpu.injected.len(), 7);
        assert_eq!(vm.cpu.vcpu.cr.cr0, cr0::PE | cr0::ET);
        // XSETBV: #UD, XSAVE is hidden.
        vm.handle(Exit::Xsetbv { xcr: 0, value: 1 }, 0);
        assert_eq!(vm.cpu.vcpu.injected[7], Exception::UD);
        // Undecoded (SVM without DecodeAssists): `mov cr4, eax` at RIP 0x1000, 32-bit.
        at_rip(&mut vm, &[0x0F, 0x22, 0xE0]);
        vm.cpu.vcpu.regs.rax = cr4::PSE | cr4::PGE;
        assert_eq!(
            vm.handle(Exit::CrWrite { cr: 4, value: None }, 0),
            Next::Continue
        );
        assert_eq!(vm.cpu.vcpu.cr.cr4, cr4::PSE | cr4::PGE);
        assert_eq!(vm.cpu.vcpu.rip, 0x1003);
        // EFER: LME cannot change while paging is on.
        vm.cpu.vcpu.cr.cr0 |= cr0::PG;
        vm.handle(
            Exit::Wrmsr {
                msr: policy::IA32_EFER,
                value: 1 << 8,
            },
            0,
        );
        assert_eq!(vm.cpu.vcpu.injected.len(), 9);
        assert_eq!(vm.cpu.vcpu.efer, 0);
    }

    #[test]
    fn fatal_exits_stop_the_vm_with_a_reason() {
        let mut vm = vm();
        // `on_unmapped = "stop"`: an access outside RAM and every device stops it.
        vm.cpu.unmapped_stops = true;
        vm.cpu.vcpu.rip = 0x10_0040;
        let Next::Stop(why) = vm.handle(
            Exit::NestedPageFault {
                gpa: 0x3000_0000,
                write: true,
                fetch: false,
            },
            0,
        ) else {
            panic!("must stop")
        };
        assert_eq!(
            why,
            "write outside its memory: guest-physical 0x30000000 at RIP 0x100040"
        );
        assert!(
            matches!(vm.handle(Exit::Shutdown, 0), Next::Crash(w) if w.starts_with("triple fault"))
        );
        assert!(
            matches!(vm.handle(Exit::Halt, 0), Next::Stop(w) if w.contains("interrupts disabled"))
        );
        assert_eq!(vm.handle(Exit::ExternalInterrupt, 0), Next::Yield);
        assert_eq!(vm.handle(Exit::VirtInstruction, 0), Next::Continue);
        assert_eq!(vm.cpu.vcpu.injected, [Exception::UD]);
        vm.cpu.vcpu.regs.rax = 0;
        vm.handle(Exit::Hypercall, 0);
        assert_eq!(vm.cpu.vcpu.regs.rax, 1);
    }

    fn outb(vm: &mut TestVm, port: u16, value: u8, now: u64) {
        vm.cpu.vcpu.regs.rax = value as u64;
        assert_eq!(vm.handle(out(port, 1), now), Next::Continue);
    }

    /// Linux's init_8259A (vectors 0x30/0x38) and a 100 Hz PIT on channel 0.
    fn linux_like_platform(vm: &mut TestVm) {
        for (port, v) in [
            (0x21, 0xff),
            (0xa1, 0xff),
            (0x20, 0x11),
            (0x21, 0x30),
            (0x21, 0x04),
            (0x21, 0x01),
        ] {
            outb(vm, port, v, 0);
        }
        for (port, v) in [
            (0xa0, 0x11),
            (0xa1, 0x38),
            (0xa1, 0x02),
            (0xa1, 0x01),
            (0x21, 0xfe),
            (0xa1, 0xff),
        ] {
            outb(vm, port, v, 0);
        }
        let divisor = (devices::PIT_HZ / 100) as u16;
        outb(vm, 0x43, 0x34, 0);
        outb(vm, 0x40, divisor as u8, 0);
        outb(vm, 0x40, (divisor >> 8) as u8, 0);
    }

    #[test]
    fn timer_interrupt_is_injected_when_the_guest_can_take_it() {
        let mut vm = vm();
        linux_like_platform(&mut vm);
        let deadline = vm.next_deadline_ns().expect("channel 0 runs");
        vm.cpu.vcpu.rflags = 2; // IF clear: wait for the window
        vm.prepare_entry(deadline + 1);
        assert!(vm.cpu.vcpu.interrupts.is_empty());
        assert!(vm.cpu.vcpu.window, "interrupt window requested");
        vm.cpu.vcpu.rflags = 2 | RFLAGS_IF;
        assert_eq!(
            vm.handle(Exit::InterruptWindow, deadline + 2),
            Next::Continue
        );
        vm.prepare_entry(deadline + 2);
        assert_eq!(vm.cpu.vcpu.interrupts, [0x30]);
        assert!(!vm.cpu.vcpu.window);
        // No EOI yet: IRQ 0 stays in service, nothing more is delivered.
        vm.prepare_entry(deadline + 30_000_000);
        assert_eq!(vm.cpu.vcpu.interrupts, [0x30]);
        outb(&mut vm, 0x20, 0x20, deadline + 30_000_000);
        vm.prepare_entry(deadline + 30_000_001);
        assert_eq!(vm.cpu.vcpu.interrupts, [0x30, 0x30]);
    }

    #[test]
    fn entry_fast_path_only_while_nothing_can_be_due() {
        use alloc::sync::Arc;
        use core::sync::atomic::{AtomicBool, Ordering};
        let wake = Arc::new(AtomicBool::new(false));
        let mut m = machine(1);
        m.net_wake = Some(wake.clone());
        let mut vm = TestVm {
            shared: VmShared::new("t", &m, capture).unwrap(),
            cpu: VcpuCtx::new(0, FakeVcpu::default(), &m, host),
        };
        linux_like_platform(&mut vm);
        let pit = vm.next_deadline_ns().expect("channel 0 runs");
        vm.cpu.vcpu.rflags = 2 | RFLAGS_IF;
        // Never before a preparation has found the vCPU idle.
        assert!(!vm.cpu.entry_unchanged(&vm.shared, 1));
        vm.prepare_entry(1);
        assert!(vm.cpu.vcpu.interrupts.is_empty());
        let cpuid = Exit::Cpuid {
            leaf: 0,
            subleaf: 0,
        };
        assert!(leaves_interrupts_alone(&cpuid));
        assert!(!leaves_interrupts_alone(&out(0x20, 1)));
        assert_eq!(vm.handle(cpuid, 2), Next::Continue);
        assert!(vm.cpu.entry_unchanged(&vm.shared, 2));
        // The exit fastpath may answer CPUID until the PIT's deadline, and counts it.
        assert_eq!(vm.cpu.fast_exits_until(&vm.shared), Some(pit));
        let skipped = vm.cpu.vcpu.skipped;
        vm.cpu.handle_fast_cpuid(0, 0);
        assert_eq!(vm.cpu.stats.count(vcpu::ExitKind::Cpuid), 2);
        assert_eq!(vm.cpu.vcpu.skipped, skipped + 1, "stepped over the CPUID");
        // The PIT's deadline: the preparation runs and raises IRQ 0.
        assert!(!vm.cpu.entry_unchanged(&vm.shared, pit));
        vm.prepare_entry(pit);
        assert_eq!(vm.cpu.vcpu.interrupts, [0x30]);
        // Something was delivered: the next entry is prepared in full, and no fastpath
        // before that; IRQ 0 then waits in service and nothing else is pending.
        assert!(!vm.cpu.entry_unchanged(&vm.shared, pit + 1));
        assert_eq!(vm.cpu.fast_exits_until(&vm.shared), None);
        vm.prepare_entry(pit + 1);
        assert!(vm.cpu.entry_unchanged(&vm.shared, pit + 1));
        // A device access since (a PIT counter latch) may have reprogrammed a timer:
        // the preparation's poll finds out. (An exit that is not quiet, like this
        // one, is followed by a full preparation anyway; this is the second guard.)
        outb(&mut vm, 0x43, 0x00, pit + 2);
        assert!(!vm.cpu.entry_unchanged(&vm.shared, pit + 2));
        assert_eq!(vm.cpu.fast_exits_until(&vm.shared), None);
        vm.prepare_entry(pit + 2);
        assert!(vm.cpu.entry_unchanged(&vm.shared, pit + 2));
        // A wake from another processor (a frame for a NIC) likewise.
        wake.store(true, Ordering::Release);
        assert!(!vm.cpu.entry_unchanged(&vm.shared, pit + 2));
        vm.prepare_entry(pit + 2);
        assert!(!wake.load(Ordering::Acquire), "the poll took the wake");
        assert!(vm.cpu.entry_unchanged(&vm.shared, pit + 2));
        // The local APIC timer's expiry (one-shot, 1,000 ticks at divide 1).
        let t = pit + 3;
        let apic = &mut vm.shared.lapics[0];
        for (offset, value) in [(0xf0, 0x1ff), (0x3e0, 0xb), (0x320, 0x40), (0x380, 1000)] {
            apic.mmio_write(offset, 4, value, t);
        }
        let due = apic.next_deadline_ns().expect("the timer runs");
        assert!(due > t);
        let until = vm.cpu.fast_exits_until(&vm.shared).expect("idle");
        assert_eq!(until, due.min(vm.next_deadline_ns().unwrap()));
        assert!(vm.cpu.entry_unchanged(&vm.shared, due - 1));
        assert!(!vm.cpu.entry_unchanged(&vm.shared, due));
        vm.prepare_entry(due);
        assert_eq!(vm.cpu.vcpu.interrupts, [0x30, 0x40]);
        assert!(!vm.cpu.entry_unchanged(&vm.shared, due));
        // An NMI (another vCPU's IPI, delivered under the VM's lock): its preparation
        // injects it, and the entry after that is prepared in full again.
        vm.shared.lapics[0].deliver_nmi();
        vm.prepare_entry(due + 1);
        assert!(!vm.cpu.entry_unchanged(&vm.shared, due + 1));
    }

    #[test]
    fn hlt_with_interrupts_enabled_waits_for_the_next_interrupt() {
        let mut vm = vm();
        linux_like_platform(&mut vm);
        vm.cpu.vcpu.rflags = 2 | RFLAGS_IF;
        assert_eq!(vm.handle(Exit::Halt, 1), Next::Yield);
        assert!(vm.cpu.halted);
        vm.prepare_entry(2);
        assert!(vm.cpu.halted, "nothing pending yet");
        let deadline = vm.next_deadline_ns().unwrap();
        vm.prepare_entry(deadline);
        assert!(!vm.cpu.halted);
        assert_eq!(vm.cpu.vcpu.interrupts, [0x30]);
    }

    #[test]
    fn uart_transmit_interrupt_reaches_irq4() {
        let mut vm = vm();
        linux_like_platform(&mut vm);
        outb(&mut vm, 0x21, 0xee, 0); // unmask IRQ 0 and 4
        outb(&mut vm, 0x3fc, 0x08, 0); // MCR.OUT2 gates the IRQ line
        outb(&mut vm, 0x3f9, 0x02, 0); // IER: THR empty
        vm.cpu.vcpu.rflags = 2 | RFLAGS_IF;
        vm.prepare_entry(1);
        assert_eq!(vm.cpu.vcpu.interrupts, [0x34]);
    }

    #[test]
    fn debug_exit_and_reset_stop_the_vm() {
        let mut vm = vm();
        vm.cpu.vcpu.regs.rax = 0x10;
        let Next::Stop(why) = vm.handle(out(0xf4, 4), 0) else {
            panic!("must stop")
        };
        assert_eq!(why, "guest wrote to the debug-exit port: exit code 33");
        let mut vm = self::vm();
        vm.cpu.vcpu.regs.rax = 0xfe;
        assert!(matches!(vm.handle(out(0x64, 1), 0), Next::Reset(w) if w.contains("reset")));
    }

    #[test]
    fn console_input_reaches_the_guest() {
        let mut vm = vm();
        assert!(vm.shared.console_input(b'x'));
        vm.handle(inp(0x3f8, 1), 0);
        assert_eq!(vm.cpu.vcpu.regs.rax & 0xff, u64::from(b'x'));
    }

    /// Places `code` at RIP 0x1000 in the fake RAM of a 32-bit protected-mode guest.
    fn at_rip(vm: &mut TestVm, code: &[u8]) {
        vm.cpu.ram.write_bytes(0x1000, code).unwrap();
        vm.cpu.vcpu.rip = 0x1000;
        vm.cpu.vcpu.cr = vcpu::ControlRegs {
            cr0: 1,
            ..Default::default()
        };
    }

    #[test]
    fn string_port_io_into_unbacked_space_honours_on_unmapped() {
        // rep insb from the unclaimed port 0x1234 to ES:0x30000000 (no RAM there).
        let rep_insb = |vm: &mut TestVm| {
            at_rip(vm, &[0xF3, 0x6C]);
            vm.cpu.vcpu.regs.rdi = 0x3000_0000;
            vm.cpu.vcpu.regs.rcx = 4;
            let io = PortIo {
                port: 0x1234,
                size: 1,
                write: false,
                string: true,
                rep: true,
            };
            vm.handle(Exit::PortIo(io), 0)
        };
        let mut vm = vm();
        assert_eq!(rep_insb(&mut vm), Next::Continue);
        assert_eq!(
            (vm.cpu.vcpu.regs.rcx, vm.cpu.vcpu.regs.rdi, vm.cpu.vcpu.rip),
            (0, 0x3000_0004, 0x1002)
        );
        // `on_unmapped = "stop"`: the first such access stops the VM.
        let mut vm = self::vm();
        vm.cpu.unmapped_stops = true;
        let Next::Stop(why) = rep_insb(&mut vm) else {
            panic!("not stopped")
        };
        assert!(
            why.contains("string port I/O outside its memory: guest-physical 0x30000000"),
            "{why}"
        );
    }

    #[test]
    fn apic_mmio_is_decoded_and_emulated() {
        let mut vm = vm();
        // mov eax, [0xFEE00030]: the local APIC version register.
        at_rip(&mut vm, &[0x8B, 0x05, 0x30, 0x00, 0xE0, 0xFE]);
        let fault = |gpa, write| Exit::NestedPageFault {
            gpa,
            write,
            fetch: false,
        };
        assert_eq!(vm.handle(fault(0xFEE0_0030, false), 0), Next::Continue);
        assert_eq!(
            vm.cpu.vcpu.regs.rax,
            u64::from(devices::lapic::LAPIC_VERSION)
        );
        assert_eq!(vm.cpu.vcpu.rip, 0x1006);
        // mov dword [0xFEC00000], 1 (IOREGSEL = version), then mov ebx, [0xFEC00010].
        at_rip(
            &mut vm,
            &[0xC7, 0x05, 0x00, 0x00, 0xC0, 0xFE, 0x01, 0x00, 0x00, 0x00],
        );
        assert_eq!(vm.handle(fault(0xFEC0_0000, true), 0), Next::Continue);
        at_rip(&mut vm, &[0x8B, 0x1D, 0x10, 0x00, 0xC0, 0xFE]);
        assert_eq!(vm.handle(fault(0xFEC0_0010, false), 0), Next::Continue);
        assert_eq!(
            vm.cpu.vcpu.regs.rbx,
            u64::from(devices::ioapic::IOAPIC_VERSION)
        );
        // add dword [0xFEE00080], 0x10: a read-modify-write of the task priority.
        at_rip(&mut vm, &[0x83, 0x05, 0x80, 0x00, 0xE0, 0xFE, 0x10]);
        assert_eq!(vm.handle(fault(0xFEE0_0080, true), 0), Next::Continue);
        assert_eq!(vm.shared.lapics[0].mmio_read(0x80, 4, 0), 0x10);
        assert_eq!(vm.cpu.vcpu.rip, 0x1007);
        // inc dword [0xFEE00080]
        at_rip(&mut vm, &[0xFF, 0x05, 0x80, 0x00, 0xE0, 0xFE]);
        assert_eq!(vm.handle(fault(0xFEE0_0080, true), 0), Next::Continue);
        assert_eq!(vm.shared.lapics[0].mmio_read(0x80, 4, 0), 0x11);
        // An instruction the emulator does not handle is refused with a report
        // naming it, not guessed at: fbld [0xFEE00080] (an x87 BCD load).
        at_rip(&mut vm, &[0xDF, 0x25, 0x80, 0x00, 0xE0, 0xFE]);
        let next = vm.handle(fault(0xFEE0_0080, false), 0);
        assert!(
            matches!(&next, Next::Stop(w) if w.contains("cannot be emulated: unsupported MMIO instruction `fbld`")),
            "{next:?}"
        );
    }

    /// A configuration-space read of 00:dev.0 register `reg` through 0xCF8/0xCFC.
    fn pci_read(vm: &mut TestVm, dev: u8, reg: u8) -> u32 {
        let mut out = Outcome::default();
        let p = &mut vm.shared.platform;
        let address = 0x8000_0000 | u32::from(dev) << 11 | u32::from(reg);
        p.port_io(0xCF8, 4, true, address, 0, &mut out);
        p.port_io(0xCFC, 4, false, 0, 0, &mut out)
    }

    #[test]
    fn a_disk_is_a_virtio_blk_function_with_its_bar_in_the_pci_hole() {
        static DISK: [u8; 4096] = [0x5A; 4096];
        let m = MachineInfo {
            disk: Some(VmDisk::Ram(bundle::Disk {
                data: &DISK,
                read_only: false,
            })),
            ..machine(1)
        };
        let mut t = TestVm {
            shared: VmShared::new("t", &m, capture).unwrap(),
            cpu: VcpuCtx::new(0, FakeVcpu::default(), &m, host),
        };
        let vm = &mut t;
        assert_eq!(pci_read(vm, 0, 0), 0x1237_8086, "the host bridge");
        assert_eq!(pci_read(vm, 3, 0), 0x1042_1AF4, "virtio-blk, modern");
        assert_eq!(pci_read(vm, 4, 0), 0xFFFF_FFFF);
        let bar = u64::from(pci_read(vm, 3, 0x10) & !0xF);
        assert_eq!(bar, platform::PCI_HOLE_BASE, "placed as firmware would");
        assert_eq!(pci_read(vm, 3, 0x04) & 2, 2, "memory decoding on");
        assert_eq!(pci_read(vm, 3, 0x3C) & 0xFF, 11, "INTA# -> PIRQD -> IRQ 11");
        // mov eax, [BAR + 0x2000]: the device configuration's capacity, 8 sectors,
        // through the nested page fault path.
        let fault = |gpa| Exit::NestedPageFault {
            gpa,
            write: false,
            fetch: false,
        };
        at_rip(vm, &[0x8B, 0x05, 0x00, 0x20, 0x00, 0xE0]);
        assert_eq!(vm.handle(fault(0xE000_2000), 0), Next::Continue);
        assert_eq!(vm.cpu.vcpu.regs.rax, 8);
        // The rest of the hole decodes nothing: all ones, but not unbacked space.
        at_rip(vm, &[0x8B, 0x05, 0x00, 0x00, 0x00, 0xF0]);
        assert_eq!(vm.handle(fault(0xF000_0000), 0), Next::Continue);
        assert_eq!(vm.cpu.vcpu.regs.rax, 0xFFFF_FFFF);
        assert_eq!(vm.shared.platform.unbacked_accesses, 0);

        // Without a disk there is only the host bridge, and no hole.
        let mut plain = self::vm();
        assert_eq!(pci_read(&mut plain, 0, 0), 0x1237_8086);
        assert_eq!(pci_read(&mut plain, 3, 0), 0xFFFF_FFFF);
        assert!(!plain.shared.platform.decodes_mmio(platform::PCI_HOLE_BASE));
    }

    #[test]
    fn the_pci_hole_lies_above_ram_and_below_the_ioapic() {
        assert_eq!(platform::pci_hole(4 << 20), 0xE000_0000..0xFEC0_0000);
        assert_eq!(platform::pci_hole(0xF000_0001), 0xF010_0000..0xFEC0_0000);
        assert!(platform::pci_hole(8 << 30).is_empty());
    }

    #[test]
    fn guest_ram_copies_are_checked() {
        use virtio::GuestMemory;
        let mut ram = machine(1).ram;
        let data: [u8; 19] = core::array::from_fn(|i| i as u8 + 1);
        ram.write(0x1003, &data).unwrap();
        let mut back = [0u8; 19];
        GuestMemory::read(&ram, 0x1003, &mut back).unwrap();
        assert_eq!(back, data);
        assert_eq!(
            ram.read_u64(0x1008).unwrap(),
            u64::from_le_bytes([6, 7, 8, 9, 10, 11, 12, 13])
        );
        let end = 4 << 20;
        assert!(ram.write(end - 4, &[0; 4]).is_ok());
        assert!(ram.write(end - 3, &[0; 4]).is_err());
        assert!(GuestMemory::read(&ram, u64::MAX - 1, &mut back).is_err());
        assert!(ram.check(end, 0).is_ok() && ram.check(end, 1).is_err());
    }

    #[test]
    fn unbacked_space_reads_all_ones_and_drops_writes() {
        let mut vm = vm();
        let fault = |gpa, write, fetch| Exit::NestedPageFault { gpa, write, fetch };
        // mov dword [0x30000000], 0x12345678 (32-bit code): dropped, and the
        // instruction completes.
        at_rip(
            &mut vm,
            &[0xC7, 0x05, 0x00, 0x00, 0x00, 0x30, 0x78, 0x56, 0x34, 0x12],
        );
        assert_eq!(
            vm.handle(fault(0x3000_0000, true, false), 0),
            Next::Continue
        );
        assert_eq!(vm.cpu.vcpu.rip, 0x1000 + 10);
        // mov eax, [0x30000000]: all ones, as from an empty PC bus.
        at_rip(&mut vm, &[0x8B, 0x05, 0x00, 0x00, 0x00, 0x30]);
        vm.cpu.vcpu.regs.rax = 0;
        assert_eq!(
            vm.handle(fault(0x3000_0000, false, false), 0),
            Next::Continue
        );
        assert_eq!(vm.cpu.vcpu.regs.rax, 0xFFFF_FFFF);
        // mov rax, [0x30000000] in 64-bit code: all 64 bits are ones.
        at_rip(&mut vm, &[0x48, 0x8B, 0x04, 0x25, 0x00, 0x00, 0x00, 0x30]);
        vm.cpu.vcpu.cr.cs_long = true;
        vm.cpu.vcpu.cr.efer = (1 << 8) | (1 << 10);
        vm.cpu.vcpu.regs.rax = 0;
        assert_eq!(
            vm.handle(fault(0x3000_0000, false, false), 0),
            Next::Continue
        );
        assert_eq!(vm.cpu.vcpu.regs.rax, u64::MAX);
        // A fetch reads 0xFF bytes: FF /7 is undefined, so #UD.
        assert_eq!(
            vm.handle(fault(0x3000_0000, false, true), 0),
            Next::Continue
        );
        assert_eq!(vm.cpu.vcpu.injected, [Exception::UD]);
        assert_eq!(vm.shared.platform.unbacked_accesses, 4);
        assert_eq!(vm.shared.platform.first_unbacked, 0x3000_0000);
    }

    #[test]
    fn sse_moves_of_unbacked_space_follow_the_cpuid_view() {
        let mut vm = vm();
        let fault = |gpa, write| Exit::NestedPageFault {
            gpa,
            write,
            fetch: false,
        };
        // movdqu xmm1, [0x30000000] (32-bit code) with CR4.OSFXSR: all ones, through
        // the MMX/SSE emulation behind the general one.
        let movdqu_load = [0xF3, 0x0F, 0x6F, 0x0D, 0x00, 0x00, 0x00, 0x30];
        at_rip(&mut vm, &movdqu_load);
        vm.cpu.vcpu.cr.cr4 = 1 << 9;
        assert_eq!(vm.handle(fault(0x3000_0000, false), 0), Next::Continue);
        assert_eq!(vm.cpu.vcpu.fx.xmm(1), [0xFF; 16]);
        assert_eq!(vm.cpu.vcpu.rip, 0x1008);
        // movntdq [0x30000000], xmm1: dropped, completes.
        at_rip(&mut vm, &[0x66, 0x0F, 0xE7, 0x0D, 0x00, 0x00, 0x00, 0x30]);
        vm.cpu.vcpu.cr.cr4 = 1 << 9;
        assert_eq!(vm.handle(fault(0x3000_0000, true), 0), Next::Continue);
        assert_eq!(vm.cpu.vcpu.rip, 0x1008);
        // Without CR4.OSFXSR the instruction does not exist: #UD, RIP stays.
        at_rip(&mut vm, &movdqu_load);
        assert_eq!(vm.handle(fault(0x3000_0000, false), 0), Next::Continue);
        assert_eq!(vm.cpu.vcpu.injected, [Exception::UD]);
        assert_eq!(vm.cpu.vcpu.rip, 0x1000);
        assert_eq!(vm.shared.platform.unbacked_accesses, 3);
        // The VM's CPUID view decides: with SSE4.1 hidden, MOVNTDQA is #UD.
        let mut hidden = self::vm();
        hidden.cpu.cpuid_cache.get(1, 0, || CpuidResult {
            edx: 1 << 23 | 1 << 25 | 1 << 26,
            ..Default::default()
        });
        at_rip(&mut hidden, &[0x66, 0x0F, 0x38, 0x2A, 0x05, 0, 0, 0, 0x30]);
        hidden.cpu.vcpu.cr.cr4 = 1 << 9;
        assert_eq!(hidden.handle(fault(0x3000_0000, false), 0), Next::Continue);
        assert_eq!(hidden.cpu.vcpu.injected, [Exception::UD]);
        // An SSE computation on such space: addps xmm0, [0x30000000] adds the QNaN
        // that all ones are, which is the result in every lane.
        at_rip(&mut vm, &[0x0F, 0x58, 0x05, 0x00, 0x00, 0x00, 0x30]);
        vm.cpu.vcpu.cr.cr4 = 1 << 9;
        assert_eq!(vm.handle(fault(0x3000_0000, false), 0), Next::Continue);
        assert_eq!(vm.cpu.vcpu.fx.xmm(0), [0xFF; 16]);
        assert_eq!(vm.cpu.vcpu.rip, 0x1007);
        // One with an immediate is not emulated: the VM stops, named.
        at_rip(
            &mut vm,
            &[0x66, 0x0F, 0x70, 0x05, 0x00, 0x00, 0x00, 0x30, 0x1B],
        );
        vm.cpu.vcpu.cr.cr4 = 1 << 9;
        let Next::Stop(why) = vm.handle(fault(0x3000_0000, false), 0) else {
            panic!("pshufd must stop the VM")
        };
        assert!(why.contains("`pshufd`"), "{why}");
    }

    #[test]
    fn flag_setting_reads_of_unbacked_space_complete() {
        const ZF: u64 = 1 << 6;
        const CF: u64 = 1 << 0;
        let mut vm = vm();
        let fault = |gpa, write| Exit::NestedPageFault {
            gpa,
            write,
            fetch: false,
        };
        // test byte [0x30000000], 1 (F6 05, 32-bit code): the all-ones read ANDed
        // with 1 is 1, so ZF is cleared (it was set), and the VM goes on.
        at_rip(&mut vm, &[0xF6, 0x05, 0x00, 0x00, 0x00, 0x30, 0x01]);
        vm.cpu.vcpu.rflags = 2 | RFLAGS_IF | ZF | CF;
        assert_eq!(vm.handle(fault(0x3000_0000, false), 0), Next::Continue);
        assert_eq!(vm.cpu.vcpu.rip, 0x1007);
        assert_eq!(vm.cpu.vcpu.rflags & (ZF | CF), 0);
        assert_eq!(vm.cpu.vcpu.rflags & RFLAGS_IF, RFLAGS_IF);
        // test byte [0x30000000], 0 gives ZF; cmp byte [0x30000000], 0xFF too: the
        // read is all ones.
        at_rip(&mut vm, &[0xF6, 0x05, 0x00, 0x00, 0x00, 0x30, 0x00]);
        assert_eq!(vm.handle(fault(0x3000_0000, false), 0), Next::Continue);
        assert_eq!(vm.cpu.vcpu.rflags & ZF, ZF);
        at_rip(&mut vm, &[0x80, 0x3D, 0x00, 0x00, 0x00, 0x30, 0xFF]);
        vm.cpu.vcpu.rflags = 2 | RFLAGS_IF;
        assert_eq!(vm.handle(fault(0x3000_0000, false), 0), Next::Continue);
        assert_eq!(vm.cpu.vcpu.rflags, 2 | RFLAGS_IF | ZF | 1 << 2);
        assert_eq!(vm.cpu.vcpu.rip, 0x1007);
        // or dword [0x30000000], 1: read, then the write is dropped.
        at_rip(&mut vm, &[0x83, 0x0D, 0x00, 0x00, 0x00, 0x30, 0x01]);
        assert_eq!(vm.handle(fault(0x3000_0000, true), 0), Next::Continue);
        assert_eq!(vm.cpu.vcpu.rip, 0x1007);
        assert_eq!(vm.shared.platform.unbacked_accesses, 4);
    }

    #[test]
    fn lapic_timer_interrupt_is_delivered() {
        let mut vm = vm();
        vm.cpu.vcpu.rflags = 2 | RFLAGS_IF;
        // x2APIC is not offered, so program the timer through MMIO: one-shot,
        // vector 0x40, divide by 1, 1000 ticks of the 1 GHz APIC timer clock = 1 us.
        for (offset, value) in [(0x3E0u64, 0xBu32), (0x320, 0x40), (0x380, 1000)] {
            vm.shared.lapics[0].mmio_write(offset, 4, value, 0);
        }
        vm.prepare_entry(500);
        assert!(vm.cpu.vcpu.interrupts.is_empty());
        vm.prepare_entry(2_000);
        assert_eq!(vm.cpu.vcpu.interrupts, [0x40]);
    }

    /// The guest's TSC deadlines are TSC values, and its TSC did not start at the
    /// hypervisor's time origin: under Bochs the firmware had run for 5.3 s, and every
    /// TSC-deadline tick of Linux came that much late (its boot stalled).
    #[test]
    fn tsc_deadline_counts_in_the_guest_tsc() {
        let m = MachineInfo {
            tsc_at_zero: 5_000_000_000, // 5 s at 1 GHz
            ..machine(1)
        };
        let mut vm = TestVm {
            shared: VmShared::new("t", &m, capture).unwrap(),
            cpu: VcpuCtx::new(0, FakeVcpu::default(), &m, host),
        };
        vm.cpu.vcpu.rflags = 2 | RFLAGS_IF;
        // APIC software-enabled, LVT timer in TSC-deadline mode, vector 0xEF.
        vm.shared.lapics[0].mmio_write(0xF0, 4, 0x1FF, 0);
        vm.shared.lapics[0].mmio_write(0x320, 4, (2 << 17) | 0xEF, 0);
        let wrmsr = |msr, value| Exit::Wrmsr { msr, value };
        // At 1 ms (guest TSC 5_001_000_000) the deadline is 1 ms ahead.
        let deadline = 5_000_000_000 + 2_000_000;
        vm.handle(wrmsr(0x6E0, deadline), 1_000_000);
        assert_eq!(vm.next_deadline_ns(), Some(2_000_000));
        vm.prepare_entry(1_999_999);
        assert!(vm.cpu.vcpu.interrupts.is_empty());
        vm.prepare_entry(2_000_000);
        assert_eq!(vm.cpu.vcpu.interrupts, [0xEF], "on time, not 5 s late");
        vm.shared.lapics[0].eoi();
        // The guest sets its TSC to 0 at 3 ms: a deadline of 1_000_000 is at 4 ms.
        vm.handle(wrmsr(policy::IA32_TIME_STAMP_COUNTER, 0), 3_000_000);
        assert_eq!(vm.cpu.vcpu.tsc_written, Some(0));
        vm.handle(wrmsr(0x6E0, 1_000_000), 3_000_000);
        assert_eq!(vm.next_deadline_ns(), Some(4_000_000));
        vm.prepare_entry(3_999_999);
        assert_eq!(vm.cpu.vcpu.interrupts, [0xEF]);
        vm.prepare_entry(4_000_000);
        assert_eq!(vm.cpu.vcpu.interrupts, [0xEF, 0xEF]);
    }

    /// A VM with `n` vCPUs, all with fake backends.
    fn smp(n: usize) -> (VmShared, Vec<VcpuCtx<FakeVcpu>>) {
        let m = machine(n);
        let vm = VmShared::new("s", &m, capture).unwrap();
        let cpus = (0..n)
            .map(|i| VcpuCtx::new(i, FakeVcpu::default(), &m, host))
            .collect();
        (vm, cpus)
    }

    /// vCPU `from` writes its ICR (high half first) through the xAPIC page.
    fn icr(vm: &mut VmShared, from: usize, high: u32, low: u32) {
        vm.lapics[from].mmio_write(0x310, 4, high, 0);
        vm.lapics[from].mmio_write(0x300, 4, low, 0);
        vm.send_ipis(from);
    }

    #[test]
    fn aps_wait_for_sipi_and_start_at_its_vector() {
        let (mut vm, _) = smp(3);
        assert_eq!(
            vm.run,
            [
                RunState::Running,
                RunState::WaitForSipi,
                RunState::WaitForSipi
            ]
        );
        // A STARTUP before INIT still finds the APs waiting (power-up state).
        icr(&mut vm, 0, 0, (3 << 18) | 0x4500); // INIT to all excluding self
        icr(&mut vm, 0, 0, (3 << 18) | 0x4600 | 0x9A); // STARTUP 0x9A
        assert_eq!(
            vm.run,
            [
                RunState::Running,
                RunState::StartUp(0x9A),
                RunState::StartUp(0x9A)
            ]
        );
        assert_eq!(vm.kicks, 0b110);
        // The second STARTUP of the protocol finds them no longer waiting: ignored.
        vm.run[1] = RunState::Running;
        icr(&mut vm, 0, 1 << 24, 0x4600 | 0x10);
        assert_eq!(vm.run[1], RunState::Running);
        // CPUID tells each vCPU its own APIC ID; the MP table count is the VM's.
        let (_, mut cpus) = smp(2);
        let mut shared = smp(2).0;
        cpus[1].handle(
            &mut shared,
            Exit::Cpuid {
                leaf: 1,
                subleaf: 0,
            },
            0,
        );
        assert_eq!(cpus[1].vcpu.regs.rbx >> 24, 1);
        assert_eq!((cpus[1].vcpu.regs.rbx >> 16) & 0xFF, 2);
    }

    #[test]
    fn fixed_ipi_wakes_and_interrupts_the_target_vcpu() {
        let (mut vm, mut cpus) = smp(2);
        vm.run[1] = RunState::Running;
        // vCPU 1: APIC software-enabled, halted with interrupts on.
        vm.lapics[1].mmio_write(0xF0, 4, 0x1FF, 0);
        cpus[1].vcpu.rflags = 2 | RFLAGS_IF;
        assert_eq!(cpus[1].handle(&mut vm, Exit::Halt, 0), Next::Yield);
        assert!(cpus[1].halted);
        icr(&mut vm, 0, 1 << 24, 0xE0);
        assert_eq!(vm.kicks, 0b10);
        cpus[1].prepare_entry(&mut vm, 1);
        assert!(!cpus[1].halted);
        assert_eq!(cpus[1].vcpu.interrupts, [0xE0]);
        assert!(cpus[0].vcpu.interrupts.is_empty());
    }

    #[test]
    fn pic_interrupts_reach_only_the_bsp() {
        let (mut vm, mut cpus) = smp(2);
        vm.run[1] = RunState::Running;
        // Virtual wire on vCPU 1 too: still only the BSP is wired to the PIC's INTR.
        vm.lapics[1].setup_virtual_wire();
        {
            let mut t = TestVm {
                shared: vm,
                cpu: cpus.remove(0),
            };
            linux_like_platform(&mut t);
            vm = t.shared;
            cpus.insert(0, t.cpu);
        }
        let due = vm.next_deadline_ns().unwrap();
        for c in cpus.iter_mut() {
            c.vcpu.rflags = 2 | RFLAGS_IF;
        }
        cpus[1].prepare_entry(&mut vm, due);
        assert!(cpus[1].vcpu.interrupts.is_empty());
        cpus[0].prepare_entry(&mut vm, due);
        assert_eq!(cpus[0].vcpu.interrupts, [0x30]);
    }

    #[test]
    fn halting_with_interrupts_off_parks_one_vcpu_and_stops_the_vm_with_the_last() {
        let (mut vm, mut cpus) = smp(2);
        vm.run[1] = RunState::Running;
        assert_eq!(cpus[1].handle(&mut vm, Exit::Halt, 0), Next::Yield);
        assert_eq!(vm.parked, 0b10);
        // INIT releases a parked vCPU (it then waits for STARTUP).
        icr(&mut vm, 0, 1 << 24, 0x4500);
        assert_eq!((vm.parked, vm.run[1]), (0, RunState::WaitForSipi));
        vm.run[1] = RunState::Running;
        cpus[1].handle(&mut vm, Exit::Halt, 0);
        assert!(
            matches!(cpus[0].handle(&mut vm, Exit::Halt, 0), Next::Stop(w) if w.ends_with("(every vCPU)"))
        );
    }

    #[test]
    fn ioapic_lowest_priority_goes_to_one_apic() {
        let (mut vm, _) = smp(2);
        for (i, l) in vm.lapics.iter_mut().enumerate() {
            l.mmio_write(0xF0, 4, 0x1FF, 0);
            l.mmio_write(0xD0, 4, 1 << (24 + i), 0); // flat logical
        }
        vm.lapics[0].set_tpr(0x40);
        vm.deliver(devices::Delivery {
            pin: 4,
            vector: 0x44,
            mode: DeliveryMode::LowestPriority,
            logical: true,
            level_triggered: false,
            dest: 0b11,
        });
        assert_eq!(vm.lapics[0].pending_vector(), None);
        assert_eq!(vm.lapics[1].pending_vector(), Some(0x44));
        assert_eq!(vm.kicks, 0b10);
    }

    #[test]
    fn nmi_ipis_are_injected_one_at_a_time_and_end_a_parked_hlt() {
        let (mut vm, mut cpus) = smp(2);
        vm.run[1] = RunState::Running;
        // vCPU 1 parks: HLT with interrupts disabled.
        assert_eq!(cpus[1].handle(&mut vm, Exit::Halt, 0), Next::Yield);
        assert_eq!(vm.parked, 0b10);
        icr(&mut vm, 0, 1 << 24, 0x400); // NMI to APIC 1
        assert_eq!(vm.parked, 0, "an NMI ends the HLT");
        cpus[1].prepare_entry(&mut vm, 1);
        assert_eq!(cpus[1].vcpu.nmis, 1);
        // A second NMI waits while the first handler runs (until its IRET).
        icr(&mut vm, 0, 1 << 24, 0x400);
        cpus[1].prepare_entry(&mut vm, 2);
        assert_eq!(cpus[1].vcpu.nmis, 1);
        assert!(
            cpus[1].vcpu.nmi_window,
            "an NMI window, not an interrupt window"
        );
        assert!(!cpus[1].vcpu.window);
        cpus[1].vcpu.nmi_blocked = false; // the IRET
        cpus[1].prepare_entry(&mut vm, 3);
        assert_eq!(cpus[1].vcpu.nmis, 2);
        // A self-NMI (shorthand self) on vCPU 0.
        vm.lapics[0].mmio_write(0x300, 4, (1 << 18) | 0x400, 0);
        cpus[0].prepare_entry(&mut vm, 4);
        assert_eq!(cpus[0].vcpu.nmis, 1);
    }

    #[test]
    fn hypercalls_need_cpl0_and_the_benchmark_needs_an_opt_in() {
        let mut vm = vm();
        vm.cpu.vcpu.regs.rax = policy::hypercall::BENCH_BARE_BEGIN;
        assert_eq!(
            vm.handle(Exit::Hypercall, 0),
            Next::Continue,
            "not opted in"
        );
        assert_eq!(vm.cpu.vcpu.regs.rax, policy::hypercall::UNKNOWN);
        vm.cpu.bench_hypercalls = true;
        vm.cpu.vcpu.cpl = 3;
        vm.cpu.vcpu.regs.rax = policy::hypercall::BENCH_BARE_BEGIN;
        assert_eq!(vm.handle(Exit::Hypercall, 0), Next::Continue, "ring 3");
        assert_eq!(vm.cpu.vcpu.regs.rax, policy::hypercall::NOT_PERMITTED);
        vm.cpu.vcpu.regs.rax = policy::hypercall::VERSION;
        vm.handle(Exit::Hypercall, 0);
        assert_eq!(vm.cpu.vcpu.regs.rax, policy::hypercall::NOT_PERMITTED);
        vm.cpu.vcpu.cpl = 0;
        vm.cpu.vcpu.regs.rax = policy::hypercall::BENCH_BARE_BEGIN;
        assert_eq!(vm.handle(Exit::Hypercall, 0), Next::BareCpuidLoop);
    }

    #[test]
    fn hypercall_numbers_are_eax_outside_64_bit_mode() {
        let mut vm = vm();
        let stale = 0xDEAD_0000_0000_0000 | policy::hypercall::VERSION;
        // 32-bit protected mode: bits 63:32 of RAX are not part of the number.
        vm.cpu.vcpu.cr.cr0 = 1;
        vm.cpu.vcpu.regs.rax = stale;
        vm.handle(Exit::Hypercall, 0);
        assert_eq!(vm.cpu.vcpu.regs.rax, u64::from(policy::INTERFACE_VERSION));
        // 64-bit mode (EFER.LMA, CS.L): all of RAX is.
        vm.cpu.vcpu.cr = vcpu::ControlRegs {
            cr0: 1 | 1 << 31,
            efer: 1 << 10 | 1 << 8,
            cs_long: true,
            ..Default::default()
        };
        vm.cpu.vcpu.regs.rax = stale;
        vm.handle(Exit::Hypercall, 0);
        assert_eq!(vm.cpu.vcpu.regs.rax, policy::hypercall::UNKNOWN);
    }

    #[test]
    fn hardening_exits_complete_or_fault() {
        let mut vm = vm();
        // INVD and WBINVD complete as no-ops.
        assert_eq!(vm.handle(Exit::CacheFlush, 0), Next::Continue);
        assert_eq!(vm.cpu.vcpu.skipped, 1);
        assert!(vm.cpu.vcpu.injected.is_empty());
        // RDPMC: #GP(0); MONITOR/MWAIT/RDPRU: #UD; nothing skipped.
        assert_eq!(vm.handle(Exit::Rdpmc, 0), Next::Continue);
        assert_eq!(vm.handle(Exit::HiddenInstruction, 0), Next::Continue);
        assert_eq!(vm.cpu.vcpu.injected, [Exception::GP0, Exception::UD]);
        assert_eq!(vm.cpu.vcpu.skipped, 1);
        // A reflected #AC/#DB was queued by the backend: counted, nothing else.
        for (vector, redelivered) in [(17, false), (1, false), (17, true)] {
            assert_eq!(
                vm.handle(
                    Exit::ExceptionReflected {
                        vector,
                        redelivered
                    },
                    0
                ),
                Next::Continue
            );
        }
        assert_eq!(vm.cpu.vcpu.injected.len(), 2);
        assert_eq!(vm.cpu.vcpu.skipped, 1);
        let stats = &vm.cpu.stats;
        assert_eq!(stats.count(vcpu::ExitKind::ExceptionReflected), 3);
        assert_eq!(stats.count(vcpu::ExitKind::CacheFlush), 1);
        assert_eq!(stats.count(vcpu::ExitKind::Rdpmc), 1);
        assert_eq!(stats.count(vcpu::ExitKind::HiddenInstruction), 1);
    }

    #[test]
    fn an_endless_exception_delivery_loop_is_a_triple_fault() {
        let mut vm = vm();
        let ac = Exit::ExceptionReflected {
            vector: 17,
            redelivered: true,
        };
        for _ in 1..vcpu::delivery_loop::LIMIT {
            assert_eq!(vm.handle(ac, 0), Next::Continue);
            assert_eq!(vm.handle(Exit::ExternalInterrupt, 0), Next::Yield);
        }
        assert!(
            matches!(vm.handle(ac, 0), Next::Crash(w) if w.starts_with("triple fault")
                && w.contains("vector 17 raised while delivering itself 1000 times")),
        );
        // A guest that makes progress in between is never stopped.
        for _ in 0..2 * vcpu::delivery_loop::LIMIT {
            assert_eq!(vm.handle(ac, 0), Next::Continue);
            assert_eq!(vm.handle(Exit::CacheFlush, 0), Next::Continue);
        }
    }
}
