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
use super::policy::CpuidResult;
use super::vm::{Next, Vm};
use crate::{memory, println, time, timer};

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

fn start<B: Backend>(backend: &mut B, spec: &VmSpec) -> Result<Running<B::Vcpu>, String> {
    let ram_size = (spec.memory_kib as u64 * 1024).next_multiple_of(4096);
    let plan = loader::plan(spec.image, ram_size)?;
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
        // SAFETY: 3 pages at PAGE_TABLES_GPA, below LOWEST_ELF_LOAD, inside the RAM.
        unsafe {
            core::ptr::copy_nonoverlapping(
                tables.as_ptr() as *const u8,
                ram(PAGE_TABLES_GPA),
                3 * 4096,
            )
        };
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
        vm: Vm::new(spec.name, vcpu, relay, host_cpuid),
        ram_pa,
        ram_size,
        started_tick: timer::ticks(),
        limit_ticks: (spec.run_limit_ms > 0)
            .then(|| (spec.run_limit_ms as u64 * timer::TICK_HZ as u64).div_ceil(1000)),
        background: spec.background,
    })
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
    let mut vms: Vec<Option<Running<B::Vcpu>>> = Vec::new();
    let mut failed = 0;
    for spec in specs {
        match start(backend, spec) {
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
        for slot in vms.iter_mut() {
            let Some(r) = slot else { continue };
            let why = loop {
                let exit = r.vm.vcpu.run(slice);
                match r.vm.handle(exit) {
                    Next::Continue => continue,
                    Next::Yield => {
                        let ran = timer::ticks() - r.started_tick;
                        match r.limit_ticks {
                            Some(limit) if ran >= limit => {
                                break Some(format!(
                                    "run-time limit reached ({} ms)",
                                    ran * 1000 / timer::TICK_HZ as u64
                                ))
                            }
                            _ => break None,
                        }
                    }
                    Next::Stop(why) => break Some(why),
                }
            };
            if let Some(why) = why {
                let r = slot.take().expect("slot is running");
                stop(backend, r, &why);
            }
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
