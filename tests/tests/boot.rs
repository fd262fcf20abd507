//! The foundation: the real images boot on both vendors and report what they found.

use tests::*;
use xtask::emulator::{EXIT_SUCCESS, EXIT_UNSUPPORTED};

fn memory_mib(out: &RunOutput) -> u64 {
    let line = out.line_with("hv:   memory: ");
    line.split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("malformed memory line {line:?}"))
}

#[test]
fn amd_v_bios_boot_report() {
    let opts = QemuOptions {
        memory_mib: 256,
        cpus: 2,
        force_tcg: true,
        ..Default::default()
    };
    let out = boot_qemu("amd_v_bios", GuestSet::None, &opts, QEMU_LIMIT);
    out.expect_line("hv: boot report")
        .expect_line("cpu: AuthenticAMD")
        .expect_line("extension: AMD-V (SVM revision")
        .expect_line(" NPT ")
        .expect_line("processors: 2 (local APIC IDs 0 1) from the ACPI MADT")
        .expect_line("ioapic: id 0 at 0xfec00000, GSI base 0")
        // QEMU's qemu64 model enumerates no IBPB; AMD needs no entry flush.
        .expect_line(
            "hv:   mitigations: IBPB on VM switch (no: CPU lacks IBPB), RSB refill after exit (yes), L1D flush before entry (not needed: AMD is not affected by L1TF), VERW before entry (not needed: AMD is not affected by MDS)",
        )
        .expect_line("hv: using AMD-V")
        .expect_no("EXCEPTION")
        .expect_no("PANIC")
        .expect_exit(EXIT_SUCCESS);
    // 256 MiB of RAM less firmware holes and the image.
    let mib = memory_mib(&out);
    assert!(
        (200..=256).contains(&mib),
        "reported {mib} MiB usable of 256"
    );
}

#[test]
fn amd_v_uefi_boot_report() {
    let opts = QemuOptions {
        firmware: Firmware::Uefi,
        memory_mib: 384,
        cpus: 3,
        force_tcg: true,
        ..Default::default()
    };
    let out = boot_qemu("amd_v_uefi", GuestSet::None, &opts, QEMU_LIMIT);
    out.expect_line("extension: AMD-V")
        .expect_line(" NPT ")
        .expect_line("processors: 3 (local APIC IDs 0 1 2) from the ACPI MADT")
        .expect_exit(EXIT_SUCCESS);
    let mib = memory_mib(&out);
    assert!(
        (300..=384).contains(&mib),
        "reported {mib} MiB usable of 384"
    );
}

#[test]
fn missing_svm_is_explained_and_stops_cleanly() {
    let opts = QemuOptions {
        cpu: Some("qemu64,-svm".into()),
        memory_mib: 128,
        cpus: 1,
        force_tcg: true,
        ..Default::default()
    };
    let out = boot_qemu("no_svm", GuestSet::None, &opts, QEMU_LIMIT);
    out.expect_line("extension: none")
        .expect_line("cannot host guests: AMD-V unavailable: CPUID reports no SVM")
        .expect_line("nested virtualization")
        .expect_no("PANIC")
        .expect_exit(EXIT_UNSUPPORTED);
}

#[test]
fn missing_npt_is_explained() {
    let opts = QemuOptions {
        cpu: Some("qemu64,+svm,-npt".into()),
        memory_mib: 128,
        cpus: 1,
        force_tcg: true,
        ..Default::default()
    };
    let out = boot_qemu("no_npt", GuestSet::None, &opts, QEMU_LIMIT);
    out.expect_line("cannot host guests: AMD-V unavailable")
        .expect_line("nested paging")
        .expect_exit(EXIT_UNSUPPORTED);
}

#[test]
fn vt_x_bios_boot_report_under_bochs() {
    let out = boot_bochs(
        "vt_x_bochs",
        GuestSet::None,
        &BochsOptions::default(),
        "hv: stopping with status",
        BOCHS_LIMIT,
    );
    out.expect_line("hv: boot report")
        .expect_line("cpu: GenuineIntel")
        .expect_line("extension: VT-x (VMCS revision")
        .expect_line("EPT")
        .expect_line("unrestricted-guest")
        .expect_line("processors: 1 (local APIC IDs 0) from the ACPI MADT")
        // Bochs's corei7_skylake_x enumerates none of IBPB, L1D_FLUSH, MD_CLEAR and
        // ARCH_CAPABILITIES: an Intel part without them is taken to be affected.
        .expect_line(
            "hv:   mitigations: IBPB on VM switch (no: CPU lacks IBPB), RSB refill after exit (yes), L1D flush before entry (no: CPU lacks L1D_FLUSH), VERW before entry (no: CPU lacks MD_CLEAR)",
        )
        .expect_line("hv: using VT-x")
        .expect_line("hv: stopping with status 16 (Success)")
        .expect_no("EXCEPTION")
        .expect_no("PANIC");
}
