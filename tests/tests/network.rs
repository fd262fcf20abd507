//! VMs on the hypervisor's virtual switch (AMD-V under QEMU, 2 processors, TCG):
//! two Linux VMs on network "lan" (virtio-net, 10.0.0.1 and 10.0.0.2) reach each
//! other (ping with no loss, 64 KiB over TCP with the same SHA-256 on both ends),
//! and `net64` (virtio-drivers), whose NIC is on network "other", sends a broadcast
//! and a frame with a forged source MAC: the switch drops the forged one, the
//! broadcast reaches no one (no other port on "other"), and none of the Linux VMs'
//! frames reach it (its port's receive counter stays at zero). One boot checks
//! everything.

use tests::*;
use xtask::emulator::EXIT_SUCCESS;

/// The numbers after `word` in `line` (`tx 12 frames` -> 12).
fn number_after(line: &str, word: &str) -> u64 {
    let rest = line
        .split(word)
        .nth(1)
        .unwrap_or_else(|| panic!("no {word:?} in {line:?}"));
    rest.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {word:?} in {line:?}"))
}

#[test]
fn linux_vms_on_one_network_reach_each_other_under_amd_v() {
    let opts = QemuOptions {
        memory_mib: 512,
        cpus: 2,
        force_tcg: true,
        // Two Linux VMs under multi-threaded TCG crash the hypervisor now and then
        // (README, Known problems): one TCG thread.
        tcg_thread: Some(xtask::emulator::TcgThread::Single),
        ..Default::default()
    };
    let out = boot_qemu(
        "network_amd_v",
        GuestSet::NetworkTest,
        &opts,
        QEMU_LIMIT * 4,
    );
    out.expect_line("hv: vm lan-a nic eth0: ")
        .expect_line("on network \"lan\" (PCI 00:04.0)")
        .expect_line("hv: vm net64 nic eth0: ")
        .expect_line("net64 | net64: virtio-net at 00:04.0, mac ")
        .expect_line("net64 | net64: sent a broadcast")
        .expect_line("net64 | net64: sent a frame with a forged source")
        .expect_line("net64 | net64: done")
        .expect_line("lan-a | hv-linux: eth0 10.0.0.1/24 up")
        .expect_line("lan-b | hv-linux: eth0 10.0.0.2/24 up")
        .expect_line("lan-b | hv-linux: ping 10.0.0.1: 3 packets transmitted, 3 packets received, 0% packet loss")
        .expect_line("hv: all VMs stopped; host memory returned: all")
        .expect_no("Kernel panic")
        .expect_no("EXCEPTION")
        .expect_no("PANIC")
        .expect_exit(EXIT_SUCCESS);
    // TCP: lan-b sends 64 KiB and lan-a receives all of it over one connection,
    // the same SHA-256 on both ends.
    let sent = out.line_with("lan-b | hv-linux: tcp sent ");
    let received = out.line_with("lan-a | hv-linux: tcp received ");
    assert!(sent.contains("sent 65536 bytes"), "{sent}");
    let digest = |line: &str| line.rsplit(' ').next().unwrap_or("").to_string();
    assert!(received.contains("received 65536 bytes"), "{received}");
    assert_eq!(digest(&sent), digest(&received), "{sent}\n{received}");
    // The switch's counters: both Linux ports sent and received frames, none
    // dropped; the port on "other" saw nothing at all.
    for vm in ["lan-a", "lan-b"] {
        let line = out.line_with(&format!("hv: vm {vm} net: eth0 (lan) "));
        assert!(number_after(&line, " tx ") >= 3, "{line}");
        assert!(number_after(&line, " rx ") >= 3, "{line}");
        assert_eq!(number_after(&line, "dropped "), 0, "{line}");
    }
    // net64 sent two frames: one dropped (the forged source), the broadcast went
    // to no one, and nothing came to it.
    let other = out.line_with("hv: vm net64 net: eth0 (other) ");
    assert!(
        other.contains("tx 2 frames 120 bytes, rx 0 frames 0 bytes, dropped 1 frames"),
        "{other}"
    );
}
