//! The virtual switch's uplink (AMD-V under QEMU, TCG): the machine's e1000 on
//! QEMU's user network is the uplink of network "lan", where the Linux VM `web`
//! has 10.0.2.15. Both directions in one boot:
//! - out: the test serves TCP on the host's loopback; the guest connects to the
//!   gateway 10.0.2.2 at that port (busybox `nc`), sends a line, and prints the
//!   answer; the test sees the guest's line and the guest the test's answer;
//! - in: a `hostfwd` from a free host port to the guest's port (what `cargo xtask
//!   run --forward` sets up) reaches a listener in the guest: the test sends a
//!   line, the guest prints it, and the test reads the guest's greeting.
//!
//! Once with QEMU's `e1000` (82540EM) and once with its `e1000e` (82574L), one
//! boot after the other (the server's port is fixed in the guest's command line).

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tests::*;
use xtask::build::{UPLINK_TEST_GUEST_PORT, UPLINK_TEST_SERVER_PORT};
use xtask::emulator::EXIT_SUCCESS;
use xtask::uplink::{qemu_args_with, HostFwd};

/// Serves one connection on `listener` until `deadline`: reads a line, answers
/// one, and returns the line read.
fn serve_once(listener: TcpListener, deadline: Instant) -> Option<String> {
    listener.set_nonblocking(true).unwrap();
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(30)))
                    .unwrap();
                let mut line = String::new();
                BufReader::new(&stream).read_line(&mut line).ok()?;
                (&stream).write_all(b"hv-host-reply\n").ok()?;
                return Some(line.trim_end().to_string());
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return None;
                }
                thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("accepting on the test's server: {e}"),
        }
    }
}

/// Connects to `port` on the loopback until the guest answers: before the guest
/// listens, QEMU accepts the connection and closes it with nothing said. The
/// guest's listener greets first; then the test sends its line and closes its
/// sending side (busybox `nc` ends at the network's end of file, so the greeting
/// must come before it). Returns the greeting.
fn reach_guest(port: u16, stop: &AtomicBool) -> Option<String> {
    while !stop.load(Ordering::Acquire) {
        if let Ok(s) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut greeting = String::new();
            let _ = BufReader::new(&s).read_line(&mut greeting);
            if !greeting.is_empty() {
                (&s).write_all(b"hv-host-payload\n").ok()?;
                let _ = s.shutdown(Shutdown::Write);
                let _ = (&s).read_to_end(&mut Vec::new());
                return Some(greeting.trim_end().to_string());
            }
        }
        thread::sleep(Duration::from_millis(500));
    }
    None
}

#[test]
fn a_linux_vm_and_the_host_reach_each_other_through_the_uplink() {
    // Built first: the guest has the server's port on its command line.
    images(GuestSet::UplinkTest);
    both_ways("uplink_e1000_amd_v", "e1000", "Intel 8086:100e (I8254x)");
    both_ways("uplink_e1000e_amd_v", "e1000e", "Intel 8086:10d3 (I82574)");
}

/// One boot with QEMU's NIC model `device`, which the hypervisor names `model`.
fn both_ways(test: &str, device: &str, model: &str) {
    let limit = QEMU_LIMIT * 3;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, UPLINK_TEST_SERVER_PORT))
        .unwrap_or_else(|e| {
            panic!("the test's server cannot listen on 127.0.0.1:{UPLINK_TEST_SERVER_PORT}: {e}")
        });
    let deadline = Instant::now() + limit;
    let server = thread::spawn(move || serve_once(listener, deadline));
    // A free port for the forward.
    let forward = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let stop = stop.clone();
        thread::spawn(move || reach_guest(forward, &stop))
    };
    let opts = QemuOptions {
        memory_mib: 512,
        cpus: 2,
        force_tcg: true,
        extra_args: qemu_args_with(
            device,
            &[HostFwd {
                host_port: forward,
                guest: Ipv4Addr::new(10, 0, 2, 15),
                guest_port: UPLINK_TEST_GUEST_PORT,
            }],
        ),
        ..Default::default()
    };
    let out = boot_qemu(test, GuestSet::UplinkTest, &opts, limit);
    stop.store(true, Ordering::Release);
    let fetch = format!("web | hv-linux: fetch 10.0.2.2:{UPLINK_TEST_SERVER_PORT}: hv-host-reply");
    out.expect_line("hv: uplink: ")
        .expect_line(model)
        .expect_line("link up, on network \"lan\"")
        .expect_line("web | hv-linux: eth0 10.0.2.15/24 up")
        .expect_line(&fetch)
        .expect_line("web | hv-linux: served: hv-host-payload")
        .expect_line("hv: uplink (lan): to the wire ")
        .expect_line("hv: all VMs stopped; host memory returned: all")
        .expect_no("Kernel panic")
        .expect_no("PANIC")
        .expect_exit(EXIT_SUCCESS);
    assert_eq!(
        server.join().unwrap().as_deref(),
        Some("hv-linux-hello"),
        "{device}: the test's server did not get the guest's line"
    );
    assert_eq!(
        client.join().unwrap().as_deref(),
        Some("hv-linux-served"),
        "{device}: the forwarded port did not reach the guest's listener"
    );
    // Frames went both ways, none refused by the NIC.
    let line = out.line_with("hv: uplink (lan): ");
    assert!(!line.contains("to the wire 0 frames"), "{device}: {line}");
    assert!(!line.contains("from the wire 0 frames"), "{device}: {line}");
    assert!(line.contains("ring full 0"), "{device}: {line}");
}
