//! AMD-V under QEMU's software-emulated SVM with nested paging: eight tiny guests at
//! once, in every CPU mode, probing the CPUID/MSR/port/hypercall policy, and three
//! hostile ones (a write beyond RAM, an endless spin with interrupts off, a triple
//! fault). Each must be answered as hardware or a real hypervisor would, and only the
//! misbehaving VM stops.

use tests::*;
use xtask::emulator::EXIT_SUCCESS;

fn run(test: &str, firmware: Firmware) -> RunOutput {
    let opts = QemuOptions {
        firmware,
        memory_mib: 256,
        cpus: 1,
        force_tcg: true,
        ..Default::default()
    };
    boot_qemu(test, GuestSet::Tiny, &opts, QEMU_LIMIT)
}

#[test]
fn tiny_guests_run_isolated_under_amd_v() {
    let out = run("amd_v_guests_bios", Firmware::Bios);
    out.expect_line("extension: AMD-V")
        .expect_exit(EXIT_SUCCESS);
    expect_tiny_guests(&out);
}

#[test]
fn tiny_guests_under_amd_v_from_uefi() {
    let out = run("amd_v_guests_uefi", Firmware::Uefi);
    out.expect_line("real16 | real16: hello from real mode")
        .expect_line("hello64 | hello64: done")
        .expect_line("hv: vm triple64 stopped: triple fault (shutdown)")
        .expect_line("hv: all VMs stopped; host memory returned: all")
        .expect_exit(EXIT_SUCCESS);
}
