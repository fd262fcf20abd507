//! Starting the VMs of the bundle and running them round-robin on the boot processor.
//! The hypervisor's timer ends every slice, so a guest that spins forever with
//! interrupts disabled still gives the others their turn. A VM that fails to start,
//! faults or misbehaves is stopped alone; its memory goes back to the pool.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use bundle::VmSpec;
use vcpu::{Backend, GuestMapping, Vcpu};

use super::host_memory::KernelMemory;
use super::loader::{self, PAGE_TABLES_GPA};
use super::policy::{self, CpuidResult};
use super::vm::{GuestRam, MachineInfo, Next, Vm};
use crate::{memory, println, serial, time, timer};

const GUEST_RAM_ALIGN: u64 = 2 << 20;
/// A slice is one timer period; the backend may also bound it itself.
const SLICE_MICROS: u64 = 1_000_000 / timer::TICK_HZ as u64;

struct Running<V: Vcpu> {
    vm: Vm<V>,
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

fn start<B: Backend>(
    backend: &mut B,
    spec: &VmSpec,
    epoch_unix_ns: u64,
) -> Result<Running<B::Vcpu>, String> {
    let ram_size = (spec.memory_kib as u64 * 1024).next_multiple_of(4096);
    if spec.vcpus != 1 {
        return Err(format!(
            "vcpus = {}: only 1 vCPU per VM is supported yet",
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
    let leaf1 = super::policy::cpuid(1, 0, host_cpuid);
    for (gpa, bytes) in loader::platform_tables(&plan, ram_size, leaf1.eax, leaf1.edx) {
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
    let vcpu = match backend.create_vcpu(&mut KernelMemory, &[mapping], &plan.start) {
        Ok(v) => v,
        Err(e) => {
            memory::free(ram_pa, ram_size);
            return Err(format!("{} could not create the vCPU: {e}", backend.name()));
        }
    };
    println!(
        "hv: vm {} started: {} KiB RAM at host {:#x}, {:?} mode, entry {:#x}",
        spec.name,
        ram_size / 1024,
        ram_pa,
        plan.start.mode,
        plan.start.rip
    );
    Ok(Running {
        vm: Vm::new(
            spec.name,
            vcpu,
            MachineInfo {
                // SAFETY: the VM's RAM stays allocated and mapped until `stop` frees it
                // after the VM is dropped.
                ram: unsafe { GuestRam::new(memory::phys_to_virt(ram_pa), ram_size) },
                epoch_unix_ns,
                tsc_hz: time::tsc_hz(),
            },
            relay,
            host_cpuid,
        ),
        ram_pa,
        ram_size,
        started_tick: timer::ticks(),
        limit_ticks: (spec.run_limit_ms > 0)
            .then(|| (spec.run_limit_ms as u64 * timer::TICK_HZ as u64).div_ceil(1000)),
        background: spec.background,
    })
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
}

fn stop<B: Backend>(backend: &mut B, mut r: Running<B::Vcpu>, why: &str) {
    r.vm.flush_console();
    println!("hv: vm {} stopped: {}", r.vm.name, why);
    println!("hv: vm {} exits: {}", r.vm.name, r.vm.stats);
    if r.vm.unknown_port_accesses > 0 {
        println!(
            "hv: vm {} unknown port accesses: {}",
            r.vm.name, r.vm.unknown_port_accesses
        );
    }
    backend.destroy_vcpu(&mut KernelMemory, r.vm.vcpu);
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
            let why = loop {
                r.vm.prepare_entry(time::uptime_ns());
                if r.vm.halted {
                    // Waiting in HLT for an interrupt that has not come yet.
                    break r.limit_reached();
                }
                ran_any = true;
                let exit = r.vm.vcpu.run(slice);
                match r.vm.handle(exit, time::uptime_ns()) {
                    Next::Continue => continue,
                    Next::BareCpuidLoop => match bare_cpuid_loop(&mut r.vm.vcpu, slice) {
                        None => continue,
                        Some(exit) => match r.vm.handle(exit, time::uptime_ns()) {
                            Next::Stop(why) => break Some(why),
                            _ => continue,
                        },
                    },
                    Next::Yield => break r.limit_reached(),
                    Next::Stop(why) => break Some(why),
                }
            };
            if let Some(why) = why {
                let r = slot.take().expect("slot is running");
                stop(backend, r, &why);
            }
        }
        if !ran_any {
            // Every VM waits for an interrupt: sleep until the next host tick.
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
