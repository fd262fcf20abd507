//! Guest image loading: the parsing and planning of every image format live in the
//! `guest_image` crate (shared with xtask's host-side configuration check, so both
//! reach the same verdict); this module re-exports them for the VMM and adds what
//! only the hypervisor's VMs get: the platform tables (MP table, ACPI) at 0xF0000.

use alloc::vec::Vec;

pub use guest_image::{
    detect, min_ram, plan, plan_request, plan_with, BootRequest, ImageFormat, LoadPlan, Module,
    Segment, BOOT_SECTOR_GPA, LOWEST_ELF_LOAD, PAGE_TABLES_GPA,
};

/// Plans the boot of one VM of the guest bundle in `ram` bytes of RAM: its image,
/// format, command line (a Multiboot kernel's preceded by the image's path, as QEMU
/// passes it) and modules.
pub fn plan_vm<'a>(
    vm: &bundle::VmSpec<'a>,
    ram: u64,
) -> Result<LoadPlan<'a>, alloc::string::String> {
    plan_request(&BootRequest::for_vm(vm, ram))
}

/// The tables that describe the guest's interrupt controllers (MP table and ACPI
/// RSDP/XSDT/MADT, where PC firmware leaves them: the reserved BIOS area at 0xF0000),
/// unless the image itself occupies that area or the RAM does not reach it.
/// `cpu_signature` and `cpu_features` are CPUID.1 EAX/EDX as the guest sees them;
/// `cpus` processors are listed, and the INTx routing of the VM's PCI functions.
pub fn platform_tables(
    plan: &LoadPlan,
    ram: u64,
    cpu_signature: u32,
    cpu_features: u32,
    cpus: u8,
    pci_intx: &[devices::PciIntx],
) -> Vec<(u64, Vec<u8>)> {
    use devices::mptable::{self, PlatformConfig};
    let area =
        mptable::MP_TABLE_ADDRESS..mptable::ACPI_TABLES_ADDRESS + mptable::ACPI_TABLES_SIZE as u64;
    let overlaps = |start: u64, len: u64| start < area.end && area.start < start + len;
    let taken = plan.segments.iter().any(|s| overlaps(s.gpa, s.mem_len))
        || plan
            .extra
            .iter()
            .any(|(gpa, bytes)| overlaps(*gpa, bytes.len() as u64));
    if taken || ram < area.end {
        return Vec::new();
    }
    let mut cfg = PlatformConfig {
        cpus,
        ..PlatformConfig::new(cpu_signature, cpu_features)
    };
    for (slot, intx) in cfg.pci_intx.iter_mut().zip(pci_intx) {
        *slot = Some(*intx);
    }
    let mut mp = alloc::vec![0u8; mptable::MP_TABLE_SIZE];
    let mut acpi = alloc::vec![0u8; mptable::ACPI_TABLES_SIZE];
    match (
        mptable::write_mp_table(&mut mp, mptable::MP_TABLE_ADDRESS, &cfg),
        mptable::write_acpi_tables(&mut acpi, mptable::ACPI_TABLES_ADDRESS, &cfg),
    ) {
        (Ok(_), Ok(_)) => alloc::vec![
            (mptable::MP_TABLE_ADDRESS, mp),
            (mptable::ACPI_TABLES_ADDRESS, acpi)
        ],
        // The buffers are sized by the builders' own constants: cannot happen.
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod platform_table_tests {
    use super::*;

    #[test]
    fn tables_go_to_the_bios_area_unless_it_is_taken() {
        let mut sector = [0u8; 512];
        sector[510] = 0x55;
        sector[511] = 0xAA;
        let plan = plan(&sector, 4 << 20).unwrap();
        let t = platform_tables(&plan, 4 << 20, 0x806e9, 0x078b_fbff, 1, &[]);
        assert_eq!(t.len(), 2);
        assert_eq!(&t[0].1[..4], b"_MP_");
        assert_eq!(t[1].0, devices::mptable::ACPI_TABLES_ADDRESS);
        assert!(
            platform_tables(&plan, 512 << 10, 0, 0, 1, &[]).is_empty(),
            "RAM ends below the area"
        );
        let mut taken = guest_image::plan(&sector, 4 << 20).unwrap();
        taken.extra.push((0xF_0100, alloc::vec![0; 16]));
        assert!(platform_tables(&taken, 4 << 20, 0, 0, 1, &[]).is_empty());
    }
}
