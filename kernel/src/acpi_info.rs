//! Platform discovery through ACPI: the MADT's processors (local APIC IDs) and IOAPICs.
//! A machine without usable tables is reported, never a crash.

use acpi::platform::ProcessorState;
use acpi::InterruptModel;
use acpi::{AcpiHandler, AcpiTables, PhysicalMapping};
use alloc::vec::Vec;
use core::ptr::NonNull;

use crate::memory::phys_to_virt;

/// Maps ACPI tables through the bootloader's physical-memory mapping: nothing to map
/// or unmap, every physical address is already reachable.
#[derive(Clone, Copy)]
struct PhysMapHandler;

impl AcpiHandler for PhysMapHandler {
    unsafe fn map_physical_region<T>(&self, pa: usize, size: usize) -> PhysicalMapping<Self, T> {
        let va = NonNull::new(phys_to_virt(pa as u64) as *mut T).expect("mapped address");
        // SAFETY: the whole of physical memory is mapped at the offset, for as long as
        // the hypervisor runs; the caller (the acpi crate) guarantees `pa` holds a T.
        unsafe { PhysicalMapping::new(pa, va, size, size, *self) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

#[derive(Debug, Clone)]
pub struct IoApicInfo {
    pub id: u8,
    pub address: u32,
    pub gsi_base: u32,
}

#[derive(Debug, Clone, Default)]
pub struct Platform {
    /// Local APIC IDs of usable processors, boot processor first.
    pub apic_ids: Vec<u32>,
    pub io_apics: Vec<IoApicInfo>,
    pub local_apic_address: u64,
}

pub fn discover(rsdp: Option<u64>) -> Result<Platform, alloc::string::String> {
    use alloc::format;
    let rsdp =
        rsdp.ok_or_else(|| alloc::string::String::from("the firmware passed no ACPI RSDP"))?;
    // SAFETY: the bootloader found the RSDP at this address (BIOS scan or UEFI
    // configuration table); the acpi crate validates its checksum before use.
    let tables = unsafe { AcpiTables::from_rsdp(PhysMapHandler, rsdp as usize) }
        .map_err(|e| format!("ACPI tables at {rsdp:#x} are unusable: {e:?}"))?;
    let info = tables
        .platform_info()
        .map_err(|e| format!("ACPI MADT missing or malformed: {e:?}"))?;
    let mut platform = Platform::default();
    if let Some(cpus) = info.processor_info {
        platform.apic_ids.push(cpus.boot_processor.local_apic_id);
        platform.apic_ids.extend(
            cpus.application_processors
                .iter()
                .filter(|p| p.state != ProcessorState::Disabled)
                .map(|p| p.local_apic_id),
        );
    }
    if let InterruptModel::Apic(apic) = info.interrupt_model {
        platform.local_apic_address = apic.local_apic_address;
        platform.io_apics = apic
            .io_apics
            .iter()
            .map(|io| IoApicInfo {
                id: io.id,
                address: io.address,
                gsi_base: io.global_system_interrupt_base,
            })
            .collect();
    }
    Ok(platform)
}
