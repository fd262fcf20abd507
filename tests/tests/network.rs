//! VMs on the hypervisor's virtual switch (AMD-V under QEMU, multi-threaded TCG, 3
//! processors of which the boot processor runs no guest):
//! two Linux VMs on network "lan" (virtio-net, 10.0.0.1 and 10.0.0.2) reach each
//! other (ping with no loss, 64 KiB over TCP with the same SHA-256 on both ends),
//! and `net64` (virtio-drivers), whose NIC is on network "other", sends a broadcast
//! and a frame with a forged source MAC: the switch drops the forged one, the
//! broadcast reaches no one (no other port on "other"), and none of the Linux VMs'
//! frames reach it (its port's receive counter stays at zero). The hypervisor's
//! own station is on network "mgmt" (10.0.9.1): `lan-b`, with a second NIC there,
//! scrapes `/metrics` with busybox `wget` (parsed here: the exposition format, and
//! its own CPU time and NIC counters above zero) and, as the syslog collector,
//! counts the datagrams the access log of that scrape sends it; `lan-a`, not on
//! "mgmt", gets no answer even with an address of that subnet. All the while
//! `flood64`, in the background on "lan", sends full-size broadcasts as fast as its
//! NIC takes them: every "lan" port has a rate limit, the switch drops the flood at
//! its port beyond it, and the Linux VMs' ping and transfer complete all the same.
//! One boot checks everything.

use tests::prometheus::{parse_printed, sample, Scrape};
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
        // Multi-threaded TCG with the boot processor running no guest (the set's
        // VMs leave it: `xtask::boot_cpu`), as `cargo xtask run` does.
        cpus: xtask::boot_cpu::SPARED_CPUS,
        force_tcg: true,
        tcg_thread: Some(xtask::emulator::TcgThread::Multi),
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
    // The switch's counters: both Linux ports sent and received frames, and lost
    // none of their own (the only drops at their ports are flood64's broadcasts
    // that found a full receive queue, as before their driver was up); the port
    // on "other" saw nothing at all.
    for vm in ["lan-a", "lan-b"] {
        let line = out.line_with(&format!("hv: vm {vm} net: eth0 (lan) "));
        assert!(number_after(&line, " tx ") >= 3, "{line}");
        assert!(number_after(&line, " rx ") >= 3, "{line}");
        let dropped = number_after(&line, "dropped ");
        if dropped > 0 {
            assert!(
                line.ends_with(&format!(
                    "dropped {dropped} frames (receive_queue_full {dropped})"
                )),
                "{line}"
            );
        }
    }
    // flood64 flooded "lan" the whole time, in the background: its port's rate
    // limit dropped most of it, what it let through was flooded to the Linux
    // VMs, and their transfer above completed all the same.
    out.expect_line("flood64 | flood64: flooding")
        .expect_line("flood64 | flood64: 1000 frames sent")
        .expect_line("hv: vm flood64 stopped: background VM: every foreground VM has stopped");
    let flood = out.line_with("hv: vm flood64 net: eth0 (lan) ");
    let (sent, dropped) = (
        number_after(&flood, " tx "),
        number_after(&flood, "dropped "),
    );
    assert!(
        flood.ends_with(&format!(
            "dropped {dropped} frames (rate_limited {dropped})"
        )),
        "{flood}"
    );
    assert!(dropped > 0 && dropped < sent, "{flood}");
    // net64 sent two frames: one dropped (the forged source), the broadcast went
    // to no one, and nothing came to it.
    let other = out.line_with("hv: vm net64 net: eth0 (other) ");
    assert!(
        other.contains("tx 2 frames 120 bytes, rx 0 frames 0 bytes, dropped 1 frames"),
        "{other}"
    );

    // The management network: the station, the scrape, the syslog, the probe.
    out.expect_line("hv: management network mgmt: 10.0.9.1/24 (MAC 02:68:76:")
        .expect_line("lan-b | hv-linux: eth1 10.0.9.2/24 up")
        .expect_line("lan-b | hv-linux: metrics end")
        .expect_line("lan-a | hv-linux: probe 10.0.9.1: unreachable");
    let m = parse_printed(&out.serial, "lan-b | hv-metrics: ");
    let lines = out.line_with("lan-b | hv-linux: metrics from 10.0.9.1: ");
    assert!(number_after(&lines, "10.0.9.1: ") > 50, "{lines}");
    let b = [("vm", "lan-b")];
    assert!(sample(&m, "hv_vm_cpu_seconds_total", &b) > 0.0);
    assert_eq!(sample(&m, "hv_vm_vcpus", &b), 1.0);
    assert_eq!(sample(&m, "hv_vm_memory_bytes", &b), (160 << 20) as f64);
    assert_eq!(
        sample(&m, "hv_vm_up", &[("vm", "lan-b"), ("state", "running")]),
        1.0
    );
    let exits: f64 = m
        .iter()
        .filter(|((name, labels), _)| {
            name == "hv_vm_exits_total" && labels[0] == ("vm".into(), "lan-b".into())
        })
        .map(|(_, v)| v)
        .sum();
    assert!(exits > 100.0, "lan-b's exits: {exits}");
    for dir in ["tx", "rx"] {
        let nic = |nic, network| {
            sample(
                &m,
                "hv_vm_nic_frames_total",
                &[
                    ("vm", "lan-b"),
                    ("nic", nic),
                    ("network", network),
                    ("direction", dir),
                ],
            )
        };
        // The scrape itself went over eth1: ARP and the TCP handshake at least.
        assert!(nic("eth1", "mgmt") >= 2.0, "eth1 {dir}");
        assert!(nic("eth0", "lan") >= 0.0);
    }
    // The hypervisor's own port on "mgmt" dropped nothing for a forged source.
    assert_eq!(
        sample(
            &m,
            "hv_switch_dropped_frames_total",
            &[
                ("network", "mgmt"),
                ("port", &port_of(&m, "hv")),
                ("owner", "hv"),
                ("kind", "vm"),
                ("reason", "forged_source")
            ]
        ),
        0.0
    );
    assert!(sample(&m, "hv_http_requests_total", &[("code", "200")]) >= 1.0);
    assert!(sample(&m, "hv_uptime_seconds", &[]) > 1.0);
    // The scrape was logged, and the log went to lan-b (10.0.9.2:514) as syslog
    // datagrams: busybox has no UDP listener, so lan-b counts what came to its
    // closed port (the messages' format is checked by mgmtnet's host tests).
    out.expect_line("INFO  management: HTTP 200 (");
    let udp = out.line_with("lan-b | hv-linux: udp datagrams to closed ports since the scrape: ");
    assert!(number_after(&udp, "scrape: ") >= 1, "{udp}");
}

/// The `port` label of `owner`'s port in the switch's drop counters.
fn port_of(m: &Scrape, owner: &str) -> String {
    m.keys()
        .find(|(name, labels)| {
            name == "hv_switch_dropped_frames_total"
                && labels.iter().any(|(k, v)| k == "owner" && v == owner)
        })
        .and_then(|(_, labels)| labels.iter().find(|(k, _)| k == "port"))
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no switch port of {owner} in the scrape"))
}

/// The two Linux VMs on VT-x (Bochs, one processor, `NetworkVtxTest`): ping with
/// no loss and 64 KiB over TCP with the same SHA-256 on both ends, through the
/// same switch.
#[test]
fn linux_vms_on_one_network_reach_each_other_under_vt_x() {
    let opts = BochsOptions {
        memory_mib: 512,
        cpus: 1,
        ata_disk: None,
    };
    let out = boot_bochs(
        "network_vt_x",
        GuestSet::NetworkVtxTest,
        &opts,
        "hv: stopping with status",
        // About 6.5 minutes here: both guests boot under Bochs on one processor.
        BOCHS_LIMIT + std::time::Duration::from_secs(300),
    );
    out.expect_line("hv: using VT-x")
        .expect_line("lan-a | hv-linux: eth0 10.0.0.1/24 up")
        .expect_line("lan-b | hv-linux: eth0 10.0.0.2/24 up")
        .expect_line("lan-b | hv-linux: ping 10.0.0.1: 3 packets transmitted, 3 packets received, 0% packet loss")
        .expect_line("hv: all VMs stopped; host memory returned: all")
        .expect_line("hv: stopping with status 16 (Success)")
        .expect_no("Kernel panic")
        .expect_no("PANIC");
    let sent = out.line_with("lan-b | hv-linux: tcp sent ");
    let received = out.line_with("lan-a | hv-linux: tcp received ");
    let digest = |line: &str| line.rsplit(' ').next().unwrap_or("").to_string();
    assert!(sent.contains("sent 65536 bytes"), "{sent}");
    assert!(received.contains("received 65536 bytes"), "{received}");
    assert_eq!(digest(&sent), digest(&received), "{sent}\n{received}");
}
