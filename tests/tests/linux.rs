//! Unmodified Linux (Debian's kernel, fetched with apt and cached) with a BusyBox
//! initramfs: it must reach /init and run commands whose output is checked, on both
//! vendors, next to a tiny guest. With `hv.test=1` the init script powers off, which
//! without ACPI ends in a halt with interrupts disabled: the VM stops by itself.

use tests::*;
use xtask::emulator::EXIT_SUCCESS;

fn check(out: &RunOutput) {
    out.expect_line("hv: vm linux started")
        .expect_line(", 2 vCPUs,")
        .expect_line("linux | [    0.000000] Linux version 6.1")
        .expect_line("linux | hv-linux: init running")
        .expect_line("linux | hv-linux: kernel 6.1")
        .expect_line("linux | hv-linux: userspace ok")
        .expect_line("linux | hv-linux: cpus online 2 of 0-1")
        .expect_line("linux | hv-linux: parallel workload done (2 workers)")
        .expect_line("hv: vm linux stopped: halted with interrupts disabled")
        .expect_line("hello64 | hello64: done")
        .expect_line("hv: all VMs stopped; host memory returned: all")
        .expect_no("Kernel panic")
        .expect_no("EXCEPTION")
        .expect_no("PANIC");
}

#[test]
fn linux_reaches_userspace_under_amd_v() {
    let opts = QemuOptions {
        memory_mib: 512,
        cpus: 1,
        force_tcg: true,
        ..Default::default()
    };
    let out = boot_qemu("linux_amd_v", GuestSet::LinuxTest, &opts, QEMU_LIMIT * 3);
    check(&out);
    out.expect_exit(EXIT_SUCCESS);
}

#[test]
fn linux_reaches_userspace_under_vt_x() {
    let opts = BochsOptions {
        memory_mib: 512,
        cpus: 1,
        ata_disk: None,
    };
    let out = boot_bochs(
        "linux_vt_x",
        GuestSet::LinuxTest,
        &opts,
        "hv: stopping with status",
        BOCHS_LIMIT,
    );
    check(&out);
    out.expect_line("hv: stopping with status 16 (Success)");
}

/// The local APIC, the IOAPIC and the MP table in use by an unmodified kernel: Linux
/// finds the IOAPIC in the MP table, switches to symmetric I/O mode and checks that
/// the timer arrives through IOAPIC pin 2 (it panics otherwise); the console's IRQ 4
/// goes through the IOAPIC too. Their registers are MMIO, emulated by decoding the
/// guest's instructions (the npf exits). Over-committed: 4 vCPUs on a 2-processor
/// machine, next to hello64; a worker per vCPU runs to completion.
#[test]
fn linux_with_apic_and_ioapic_under_amd_v() {
    let opts = QemuOptions {
        memory_mib: 512,
        cpus: 2,
        force_tcg: true,
        ..Default::default()
    };
    let out = boot_qemu(
        "linux_apic_amd_v",
        GuestSet::LinuxApicTest,
        &opts,
        QEMU_LIMIT * 3,
    );
    out.expect_line("linux | [    0.000000] MPTABLE: APIC at: 0xFEE00000")
        .expect_line("IOAPIC[0]: apic_id 0, version 17, address 0xfec00000, GSI 0-23")
        .expect_line("APIC: Switch to symmetric I/O mode setup")
        .expect_line("..TIMER: vector=0x30 apic1=0 pin1=2")
        .expect_line("serial8250: ttyS0 at I/O 0x3f8 (irq = 4")
        // Four vCPUs on two processors: the APs started through INIT/SIPI from the
        // MP table's list, and a worker on each ran to completion.
        .expect_line("smp: Bringing up secondary CPUs")
        .expect_line("smp: Brought up 1 node, 4 CPUs")
        .expect_line("linux | hv-linux: userspace ok")
        .expect_line("linux | hv-linux: cpus online 4 of 0-3")
        .expect_line("linux | hv-linux: parallel workload done (4 workers)")
        // PCI: the virtio-blk disk found by scanning (configuration mechanism #1),
        // its INTA# found in the MP table; the drivers loaded from the initramfs; a
        // filesystem made on the disk, written and unmounted.
        .expect_line("virtio-pci 0000:00:03.0: PCI->APIC IRQ transform: INT A -> IRQ 11")
        .expect_line("virtio_blk virtio0: [vda] 8192 512-byte logical blocks")
        .expect_line("linux | hv-linux: /data mounted, new filesystem")
        .expect_line("linux | hv-linux: /data boots 1, unmounted")
        .expect_line("linux | hv-linux: virtio interrupts: virtio0-config=")
        .expect_line("hello64 | hello64: done")
        .expect_line("hv: vm linux stopped: halted with interrupts disabled")
        .expect_no("Kernel panic")
        .expect_no("MSR access error")
        .expect_exit(EXIT_SUCCESS);
    // The disk's requests completed through MSI-X (vector name virtio0-req.0).
    let irqs = out.line_with("hv-linux: virtio interrupts:");
    let req: u64 = irqs
        .split_whitespace()
        .find_map(|w| w.strip_prefix("virtio0-req.0="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        req > 0,
        "no MSI-X interrupt for the disk's requests: {irqs}"
    );
    let exits = out.line_with("hv: vm linux exits:");
    let npf: u64 = exits
        .split_whitespace()
        .find_map(|w| w.strip_prefix("npf="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(npf > 100, "APIC MMIO was not emulated: {exits}");
}
