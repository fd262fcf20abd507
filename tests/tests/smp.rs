//! The host's processors: every processor the ACPI MADT lists is started, enables the
//! virtualization extension on itself, runs its own local APIC timer, survives an NMI,
//! answers a kick IPI and joins the run loop; on AMD-V (QEMU) and VT-x (Bochs, two
//! processors) a vCPU moves from one processor to another and back.

use tests::*;
use xtask::emulator::EXIT_SUCCESS;

/// A vCPU ran on the boot processor, on the AP and on the boot processor again, its
/// state moving with it (`kernel/src/migration_check.rs`).
const MIGRATED: &str =
    "hv: vCPU migration check: a guest ran on cpu 0, 1, 0 in turn and kept its state";

#[test]
fn every_processor_comes_up_with_amd_v_from_bios() {
    let opts = QemuOptions {
        memory_mib: 256,
        cpus: 4,
        force_tcg: true,
        ..Default::default()
    };
    let out = boot_qemu("smp_amd_v_bios", GuestSet::None, &opts, QEMU_LIMIT);
    for (cpu, id) in [(1, 1), (2, 2), (3, 3)] {
        out.expect_line(&format!(
            "hv: cpu {cpu} online (APIC id {id}), AMD-V enabled, LAPIC timer ticking"
        ));
    }
    // Each AP takes an NMI, logs it and carries on, then answers a kick IPI.
    for cpu in 1..=3 {
        out.expect_line(&format!("hv: host NMI on cpu {cpu} ("));
    }
    out.expect_line("hv: NMI and kick IPI answered by 3 of 3 APs")
        .expect_line("processors: 4 (local APIC IDs 0 1 2 3) from the ACPI MADT")
        .expect_line(
            "hv:   smp: 4 of 4 processors online; time slices from the LAPIC timer at 1000 Hz",
        )
        .expect_no("did not start")
        .expect_no("left out")
        .expect_no("EXCEPTION")
        .expect_no("PANIC")
        .expect_exit(EXIT_SUCCESS);
}

/// UEFI firmware leaves the processors in a different state (and the low memory map
/// differs); the tiny guests then run on the boot processor next to the parked AP.
#[test]
fn tiny_guests_run_next_to_a_parked_processor_from_uefi() {
    let opts = QemuOptions {
        firmware: Firmware::Uefi,
        memory_mib: 256,
        cpus: 2,
        force_tcg: true,
        ..Default::default()
    };
    let out = boot_qemu("smp_amd_v_uefi_guests", GuestSet::Tiny, &opts, QEMU_LIMIT);
    out.expect_line("hv: cpu 1 online (APIC id 1), AMD-V enabled, LAPIC timer ticking")
        .expect_line("hv: NMI and kick IPI answered by 1 of 1 APs")
        .expect_line("hv:   smp: 2 of 2 processors online; time slices from the LAPIC timer")
        .expect_line(MIGRATED)
        .expect_exit(EXIT_SUCCESS);
    expect_tiny_guests(&out);
}

/// VT-x under Bochs with two processors: the AP enters VMX operation itself, and the
/// migration check moves a vCPU's VMCS between the processors (VMCLEAR, VMPTRLD,
/// VMLAUNCH after a clear, that processor's host state); then the guest-SMP set runs
/// on both processors (`guest_smp.rs` has it on AMD-V): a two-vCPU guest starts its
/// AP and ping-pongs IPIs, next to an IPI storm and a spinner.
#[test]
fn vt_x_on_two_processors_under_bochs() {
    let opts = BochsOptions {
        cpus: 2,
        ..Default::default()
    };
    let out = boot_bochs(
        "smp_vt_x_bochs",
        GuestSet::Smp,
        &opts,
        "hv: stopping with status",
        BOCHS_LIMIT,
    );
    out.expect_line("hv: cpu 1 online (APIC id 1), VT-x enabled, LAPIC timer ticking")
        .expect_line("hv: NMI and kick IPI answered by 1 of 1 APs")
        .expect_line("processors: 2 (local APIC IDs 0 1) from the ACPI MADT")
        .expect_line("hv:   smp: 2 of 2 processors online; time slices from the LAPIC timer")
        .expect_line(MIGRATED);
    expect_smp_guests(&out, true);
    out.expect_line("hv: stopping with status 16 (Success)");
}
