//! Starting the VMs of the bundle and running their vCPUs round-robin. The
//! hypervisor's timer ends every slice, so a guest that spins forever with interrupts
//! disabled still gives the others their turn. A VM that fails to start, faults or
//! misbehaves is stopped alone, with all its vCPUs; its memory goes back to the pool.
//!
//! A VM's vCPU 0 starts as its image says; the others wait for INIT/STARTUP from the
//! guest (SDM Vol. 3A 9.4.4) and are reset to real mode at the STARTUP vector here,
//! where the backend is at hand.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use bundle::VmSpec;
use vcpu::{Backend, CpuMode, GuestMapping, StartState, Vcpu};

use super::host_memory::KernelMemory;
use super::loader::{self, PAGE_TABLES_GPA};
use super::policy::{self, CpuidResult};
use super::stats::ExitStats;
use super::vm::{GuestRam, MachineInfo, Next, RunState, VcpuCtx, VmShared, MAX_VCPUS};
use crate::{memory, println, serial, time, timer};

const GUEST_RAM_ALIGN: u64 = 2 << 20;
/// A slice is one timer period; the backend may also bound it itself.
const SLICE_MICROS: u64 = 1_000_000 / timer::TICK_HZ as u64;

/// One vCPU of a running VM, with its CPU-time account.
struct VcpuSlot<V: Vcpu> {
    ctx: VcpuCtx<V>,
    /// Entered the guest at least once (a STARTUP then needs a fresh vCPU).
    ran: bool,
    /// TSC cycles spent in this vCPU's slices (guest time and exit handling).
    cpu_tsc: u64,
}

struct Running<V: Vcpu> {
    vm: VmShared,
    vcpus: Vec<VcpuSlot<V>>,
    mapping: GuestMapping,
    machine: MachineInfo,
    ram_pa: u64,
    ram_size: u64,
    started_tick: u64,
    limit_ticks: Option<u64>,
    background: bool,
}

fn relay(name: &str, text: &str) {
    println!("{name} | {text}");
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

fn start<B: Backend>(
    backend: &mut B,
    spec: &VmSpec,
    epoch_unix_ns: u64,
) -> Result<Running<B::Vcpu>, String> {
    let ram_size = (spec.memory_kib as u64 * 1024).next_multiple_of(4096);
    let cpus = spec.vcpus as usize;
    if !(1..=MAX_VCPUS).contains(&cpus) {
        return Err(format!(
            "vcpus = {}: a VM has 1 to {MAX_VCPUS} vCPUs",
            spec.vcpus
        ));
    }
    let plan = loader::plan_vm(spec, ram_size)?;
    let ram_pa = memory::alloc_zeroed(ram_size, GUEST_RAM_ALIGN).map_err(|e| {
        format!(
            "cannot allocate {} KiB of guest RAM: {e:?}",
            ram_size / 1024
        )
    })?;
    let ram = |gpa: u64| memory::phys_to_virt(ram_pa + gpa);
    for seg in &plan.segments {
        // SAFETY: the loader checked gpa + mem_len <= ram_size, and the RAM was just
        // allocated to this VM (and wiped, so .bss is already zero).
        unsafe { core::ptr::copy_nonoverlapping(seg.data.as_ptr(), ram(seg.gpa), seg.data.len()) };
    }
    if let Some(tables) = &plan.page_tables {
        // SAFETY: tables.len() pages at PAGE_TABLES_GPA, below LOWEST_ELF_LOAD; the
        // loader checked they lie inside the RAM.
        unsafe {
            core::ptr::copy_nonoverlapping(
                tables.as_ptr() as *const u8,
                ram(PAGE_TABLES_GPA),
                tables.len() * 4096,
            )
        };
    }
    for (gpa, bytes) in &plan.extra {
        // SAFETY: the loader checked gpa + len <= ram_size (boot structures).
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), ram(*gpa), bytes.len()) };
    }
    let bsp = policy::Topology {
        apic_id: 0,
        cpus: cpus as u32,
    };
    let leaf1 = policy::cpuid(1, 0, host_cpuid, &bsp);
    for (gpa, bytes) in loader::platform_tables(&plan, ram_size, leaf1.eax, leaf1.edx, cpus as u8) {
        // SAFETY: `platform_tables` only returns tables inside the RAM.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), ram(gpa), bytes.len()) };
    }
    let mapping = GuestMapping {
        gpa: 0,
        hpa: ram_pa,
        len: ram_size,
        writable: true,
        executable: true,
    };
    let machine = MachineInfo {
        // SAFETY: the VM's RAM stays allocated and mapped until `stop` frees it after
        // the VM is dropped.
        ram: unsafe { GuestRam::new(memory::phys_to_virt(ram_pa), ram_size) },
        epoch_unix_ns,
        tsc_hz: time::tsc_hz(),
        cpus,
    };
    let vm = match VmShared::new(spec.name, &machine, relay) {
        Ok(vm) => vm,
        Err(e) => {
            memory::free(ram_pa, ram_size);
            return Err(e);
        }
    };
    let mut vcpus: Vec<VcpuSlot<B::Vcpu>> = Vec::with_capacity(cpus);
    for i in 0..cpus {
        let state = if i == 0 { &plan.start } else { &AP_START };
        match backend.create_vcpu(&mut KernelMemory, &[mapping], state) {
            Ok(v) => vcpus.push(VcpuSlot {
                ctx: VcpuCtx::new(i, v, &machine, host_cpuid),
                ran: false,
                cpu_tsc: 0,
            }),
            Err(e) => {
                for s in vcpus {
                    backend.destroy_vcpu(&mut KernelMemory, s.ctx.vcpu);
                }
                memory::free(ram_pa, ram_size);
                return Err(format!("{} could not create vCPU {i}: {e}", backend.name()));
            }
        }
    }
    println!(
        "hv: vm {} started: {} KiB RAM at host {:#x}, {} vCPU{}, {:?} mode, entry {:#x}",
        spec.name,
        ram_size / 1024,
        ram_pa,
        cpus,
        if cpus == 1 { "" } else { "s" },
        plan.start.mode,
        plan.start.rip
    );
    Ok(Running {
        vm,
        vcpus,
        mapping,
        machine,
        ram_pa,
        ram_size,
        started_tick: timer::ticks(),
        limit_ticks: (spec.run_limit_ms > 0)
            .then(|| (spec.run_limit_ms as u64 * timer::TICK_HZ as u64).div_ceil(1000)),
        background: spec.background,
    })
}

/// A STARTUP IPI reached an AP waiting for it: the AP starts in real mode with
/// CS = vector << 8 (base vector << 12) and IP = 0 (SDM Vol. 3A 9.4.4). An AP that has
/// run before (INIT after use) gets a fresh vCPU, which is the INIT reset of all its
/// state.
fn start_ap<B: Backend>(
    backend: &mut B,
    r: &mut Running<B::Vcpu>,
    i: usize,
    vector: u8,
) -> Result<(), String> {
    let slot = &mut r.vcpus[i];
    if slot.ran {
        let fresh = backend
            .create_vcpu(&mut KernelMemory, &[r.mapping], &AP_START)
            .map_err(|e| format!("{} could not reset vCPU {i}: {e}", backend.name()))?;
        let old = core::mem::replace(
            &mut slot.ctx,
            VcpuCtx::new(i, fresh, &r.machine, host_cpuid),
        );
        slot.ctx.stats = old.stats.clone();
        backend.destroy_vcpu(&mut KernelMemory, old.vcpu);
    }
    slot.ctx.vcpu.set_real_mode_cs(u16::from(vector) << 8);
    slot.ctx.vcpu.set_rip(0);
    slot.ctx.halted = false;
    r.vm.run[i] = RunState::Running;
    Ok(())
}

/// The benchmark's reference path: enter, skip the CPUID, enter again. Host timer
/// interrupts were already serviced inside `run` and need nothing here. Returns the
/// first other exit for the normal path, or `None` when the guest ends the loop.
fn bare_cpuid_loop<V: Vcpu>(vcpu: &mut V, slice: u64) -> Option<vcpu::Exit> {
    use vcpu::Exit;
    loop {
        match vcpu.run(slice) {
            Exit::Cpuid { .. } => vcpu.skip_instruction(),
            Exit::ExternalInterrupt | Exit::Preempted => {}
            Exit::Hypercall if vcpu.regs().rax == policy::hypercall::BENCH_BARE_END => {
                vcpu.regs().rax = 0;
                vcpu.skip_instruction();
                return None;
            }
            other => return Some(other),
        }
    }
}

impl<V: Vcpu> Running<V> {
    fn limit_reached(&self) -> Option<String> {
        let ran = timer::ticks() - self.started_tick;
        match self.limit_ticks {
            Some(limit) if ran >= limit => Some(format!(
                "run-time limit reached ({} ms)",
                ran * 1000 / timer::TICK_HZ as u64
            )),
            _ => None,
        }
    }

    /// Runs vCPU `i` until its slice ends or it waits. Returns why the VM must stop,
    /// if it must; `ran` says whether the guest was entered at all.
    fn run_vcpu(&mut self, i: usize, slice: u64, ran: &mut bool) -> Option<String> {
        if self.vm.parked & (1 << i) != 0 {
            return None;
        }
        let begin = time::rdtsc();
        let slot = &mut self.vcpus[i];
        let vm = &mut self.vm;
        let why = loop {
            slot.ctx.prepare_entry(vm, time::uptime_ns());
            if slot.ctx.halted {
                // Waiting in HLT for an interrupt that has not come yet.
                break None;
            }
            *ran = true;
            slot.ran = true;
            let exit = slot.ctx.vcpu.run(slice);
            match slot.ctx.handle(vm, exit, time::uptime_ns()) {
                Next::Continue => continue,
                Next::BareCpuidLoop => match bare_cpuid_loop(&mut slot.ctx.vcpu, slice) {
                    None => continue,
                    Some(exit) => match slot.ctx.handle(vm, exit, time::uptime_ns()) {
                        Next::Stop(why) => break Some(why),
                        _ => continue,
                    },
                },
                Next::Yield => break None,
                Next::Stop(why) => break Some(why),
            }
        };
        slot.cpu_tsc += time::rdtsc().wrapping_sub(begin);
        // On one processor every vCPU notices its interrupts when its turn comes.
        self.vm.kicks = 0;
        why
    }
}

fn stop<B: Backend>(backend: &mut B, mut r: Running<B::Vcpu>, why: &str) {
    r.vm.flush_console();
    println!("hv: vm {} stopped: {}", r.vm.name, why);
    let mut stats = ExitStats::default();
    for s in &r.vcpus {
        stats.add(&s.ctx.stats);
    }
    println!("hv: vm {} exits: {}", r.vm.name, stats);
    let tsc_per_us = (time::tsc_hz() / 1_000_000).max(1);
    let times: Vec<String> = r
        .vcpus
        .iter()
        .map(|s| format!("{} ms", s.cpu_tsc / tsc_per_us / 1000))
        .collect();
    let total: u64 = r.vcpus.iter().map(|s| s.cpu_tsc).sum();
    println!(
        "hv: vm {} cpu time: {} ms (vCPUs: {})",
        r.vm.name,
        total / tsc_per_us / 1000,
        times.join(", ")
    );
    if r.vm.platform.unknown_port_accesses > 0 {
        println!(
            "hv: vm {} unknown port accesses: {}",
            r.vm.name, r.vm.platform.unknown_port_accesses
        );
    }
    for s in r.vcpus {
        backend.destroy_vcpu(&mut KernelMemory, s.ctx.vcpu);
    }
    memory::free(r.ram_pa, r.ram_size);
}

/// Runs every VM of the bundle until all have stopped. Returns how many could not be
/// started.
pub fn run_all<B: Backend>(backend: &mut B, specs: &[VmSpec]) -> usize {
    let free_before = memory::free_bytes();
    // The guests' RTCs count from the host's wall clock at boot.
    let epoch_unix_ns = time::read_rtc_unix_ns().saturating_sub(time::uptime_ns());
    let mut vms: Vec<Option<Running<B::Vcpu>>> = Vec::new();
    let mut failed = 0;
    for spec in specs {
        match start(backend, spec, epoch_unix_ns) {
            Ok(r) => vms.push(Some(r)),
            Err(e) => {
                failed += 1;
                println!("hv: vm {} not started: {e}", spec.name);
            }
        }
    }
    let slice = time::micros_to_tsc(SLICE_MICROS);
    while vms.iter().any(Option::is_some) {
        if vms.iter().flatten().all(|r| r.background) {
            for slot in vms.iter_mut() {
                if let Some(r) = slot.take() {
                    stop(backend, r, "background VM: every foreground VM has stopped");
                }
            }
            break;
        }
        // Host console input goes to the first VM (the Linux guest in the default set).
        if let Some(r) = vms.iter_mut().flatten().next() {
            if r.vm.console_ready() {
                if let Some(byte) = serial::try_read_byte() {
                    r.vm.console_input(byte);
                }
            }
        }
        let mut ran_any = false;
        for slot in vms.iter_mut() {
            let Some(r) = slot else { continue };
            let mut why = None;
            for i in 0..r.vcpus.len() {
                match r.vm.run[i] {
                    RunState::WaitForSipi => continue,
                    RunState::StartUp(vector) => {
                        if let Err(e) = start_ap(backend, r, i, vector) {
                            why = Some(e);
                            break;
                        }
                    }
                    RunState::Running => {}
                }
                why = r
                    .run_vcpu(i, slice, &mut ran_any)
                    .or_else(|| r.limit_reached());
                if why.is_some() {
                    break;
                }
            }
            if let Some(why) = why {
                let r = slot.take().expect("slot is running");
                stop(backend, r, &why);
            }
        }
        if !ran_any {
            // Every vCPU waits for an interrupt: sleep until the next host tick.
            timer::idle();
        }
    }
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
