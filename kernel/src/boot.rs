//! The boot sequence: bring up the hypervisor's own machinery, report what the machine
//! offers, then hand over to the VMM.

use alloc::string::String;
use alloc::vec::Vec;
use bootloader_api::BootInfo;

use crate::shutdown::{self, Status};
use crate::vmm::host_memory::KernelMemory;
use crate::{
    acpi_info, apic, bundle_source, detect, gdt, host_disk, host_nic, interrupts, memory,
    migration_check, mitigation, println, serial, smp, time, timer, vmm,
};

pub fn start(boot_info: &'static mut BootInfo) -> ! {
    serial::init();
    time::calibrate();
    serial::init_logger();
    println!("hv: hypervisor {} starting", env!("CARGO_PKG_VERSION"));
    gdt::init();
    smp::init_bsp();
    // Before the heap exists: no allocation here.
    interrupts::init(timer::handlers().into_iter().chain(smp::handlers()));
    log::info!("GDT, TSS (IST stacks for #DF, NMI, #MC) and IDT loaded");

    let Some(phys_offset) = boot_info.physical_memory_offset.into_option() else {
        println!("hv: FATAL: the bootloader did not map physical memory");
        shutdown::exit(Status::Failure);
    };
    let mem = match memory::init(&boot_info.memory_regions, phys_offset) {
        Ok(m) => m,
        Err(e) => {
            println!("hv: FATAL: {e}");
            shutdown::exit(Status::Failure);
        }
    };
    log::info!(
        "heap {} KiB at {:#x}, TSC {} MHz",
        mem.heap.len() / 1024,
        mem.heap.start,
        time::tsc_hz() / 1_000_000
    );

    let platform = acpi_info::discover(boot_info.rsdp_addr.into_option());
    let cpu = detect::identify();
    let ext = detect::detect(&cpu);

    // The local APIC and its timer on this processor, then the other processors, each
    // enabling the virtualization extension on itself.
    apic::init_bsp();
    apic::enable_this_cpu(timer::SPURIOUS_VECTOR, true);
    timer::init();
    // The host's disk, before the other processors start: mapping its registers
    // changes page attributes every processor shares.
    host_disk::init();
    // The NIC an uplink may use: found and mapped now for the same reason, brought
    // up only if the configuration names an uplink.
    host_nic::probe();
    let hook: Option<&'static smp::ExtensionHook> = match &ext {
        Ok(detect::Extension::Svm(_)) => Some(&|| {
            svm::backend::SvmBackend::enable_this_cpu(&mut KernelMemory)
                .map(|()| "AMD-V")
                .map_err(|e| alloc::format!("{e}"))
        }),
        Ok(detect::Extension::Vmx(caps)) => {
            let caps = *caps;
            Some(smp::leak_hook(alloc::boxed::Box::new(move || {
                vmx::VmxBackend::enable_this_cpu(&caps, &mut KernelMemory)
                    .map(|()| "VT-x")
                    .map_err(|e| alloc::format!("{e}"))
            })))
        }
        Err(_) => None,
    };
    let listed: &[u32] = platform.as_ref().map_or(&[], |p| &p.apic_ids);
    let online = smp::boot_aps(&boot_info.memory_regions, listed, hook);

    println!("hv: boot report");
    println!(
        "hv:   cpu: {} {:?} family {:#x} model {:#x}",
        cpu.vendor, cpu.brand, cpu.family, cpu.model
    );
    match &ext {
        Ok(detect::Extension::Vmx(c)) => println!(
            "hv:   extension: VT-x (VMCS revision {:#x}) features: {}",
            c.revision_id,
            c.feature_list()
        ),
        Ok(detect::Extension::Svm(c)) => println!(
            "hv:   extension: AMD-V (SVM revision {}) features: {}",
            c.revision,
            c.feature_list()
        ),
        Err(_) => println!("hv:   extension: none"),
    }
    match &platform {
        Ok(p) => {
            let ids: Vec<String> = p.apic_ids.iter().map(|id| alloc::format!("{id}")).collect();
            println!(
                "hv:   processors: {} (local APIC IDs {}) from the ACPI MADT",
                p.apic_ids.len(),
                ids.join(" ")
            );
            for io in &p.io_apics {
                println!(
                    "hv:   ioapic: id {} at {:#x}, GSI base {}",
                    io.id, io.address, io.gsi_base
                );
            }
        }
        Err(e) => println!("hv:   processors: unknown ({e}); running on the boot processor only"),
    }
    println!(
        "hv:   smp: {online} of {} processors online; time slices from {} at {} Hz (local APIC: {})",
        listed.len().max(1),
        timer::source_name(),
        timer::TICK_HZ,
        apic::mode_name()
    );
    println!(
        "hv:   memory: {} MiB usable in {} map regions{}",
        mem.usable_bytes >> 20,
        mem.regions,
        if mem.tables_in_usable > 0 {
            alloc::format!(
                "; {} frames of the live page tables were listed as usable (reserved)",
                mem.tables_in_usable
            )
        } else {
            String::new()
        }
    );
    let mitigations = mitigation::detect(&cpu.vendor);
    println!("hv:   mitigations: {mitigations}");

    let ext = match ext {
        Ok(ext) => ext,
        Err(why) => {
            println!("hv: cannot host guests: {why}");
            shutdown::exit(Status::Unsupported);
        }
    };
    println!("hv: using {}", ext.name());

    let ramdisk = boot_info.ramdisk_addr.into_option().map(|addr| {
        // SAFETY: the bootloader loaded the ramdisk at this virtual address with this
        // length and keeps it mapped; nothing else writes to it.
        unsafe { core::slice::from_raw_parts(addr as *const u8, boot_info.ramdisk_len as usize) }
    });
    let ramdisk = match ramdisk.map(bundle_source::bundle_bytes) {
        None => None,
        Some(Ok(bytes)) => Some(bytes),
        Some(Err(e)) => {
            println!("hv: cannot get the guest bundle: {e}");
            shutdown::exit(Status::Failure);
        }
    };
    let specs = match ramdisk.map(bundle::read) {
        None => {
            println!("hv: no guest bundle: nothing to run");
            shutdown::exit(Status::Success);
        }
        Some(Err(e)) => {
            println!("hv: the guest bundle is unusable: {e}");
            shutdown::exit(Status::Failure);
        }
        Some(Ok(specs)) => specs,
    };
    println!("hv: guest bundle holds {} VM(s)", specs.len());
    // The administrator passphrase's hash, for the management console (the bundle
    // was checked whole by `read` already).
    let admin = ramdisk
        .and_then(|r| bundle::read_settings(r).ok())
        .and_then(|s| s.admin)
        .map(|c| operator::Credential {
            memory_kib: c.memory_kib,
            iterations: c.iterations,
            lanes: c.lanes,
            salt: c.salt,
            hash: c.hash,
        });
    // The hypervisor's station on a management network, if configured.
    let management = ramdisk
        .and_then(|r| bundle::read_settings(r).ok())
        .and_then(|s| s.management);
    vmm::uplink::configure(
        ramdisk
            .and_then(|r| bundle::read_settings(r).ok())
            .and_then(|s| s.uplink),
    );
    if admin.is_none() {
        println!(
            "hv: no administrator passphrase: the console's commands that change VMs are disabled"
        );
    }
    let failed = match ext {
        detect::Extension::Svm(caps) => {
            match svm::backend::SvmBackend::enable(caps, &mut KernelMemory) {
                Ok(mut backend) => {
                    migration_check::run(&mut backend);
                    crate::aesni::init();
                    vmm::run_all(&mut backend, &specs, admin, management)
                }
                Err(e) => {
                    println!("hv: enabling AMD-V failed: {e}");
                    shutdown::exit(Status::Failure);
                }
            }
        }
        detect::Extension::Vmx(caps) => match vmx::VmxBackend::enable(&caps, &mut KernelMemory) {
            Ok(mut backend) => {
                backend.set_entry_flush(mitigations.entry_flush());
                migration_check::run(&mut backend);
                crate::aesni::init();
                vmm::run_all(&mut backend, &specs, admin, management)
            }
            Err(e) => {
                println!("hv: enabling VT-x failed: {e}");
                shutdown::exit(Status::Failure);
            }
        },
    };
    // The status says how the hypervisor itself fared: a VM that could not start
    // was reported on its own line and did not stop the others.
    if failed > 0 {
        println!("hv: {failed} VM(s) could not be started");
    }
    shutdown::exit(Status::Success)
}
