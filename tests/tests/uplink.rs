//! The virtual switch's uplink (AMD-V under QEMU, TCG): the machine's e1000 on
//! QEMU's user network is the uplink of network "lan", where the Linux VM `web`
//! has 10.0.2.15 and the hypervisor's own station 10.0.2.10. Everything in one
//! boot:
//! - out: the test serves TCP on the host's loopback; the guest connects to the
//!   gateway 10.0.2.2 at that port (busybox `nc`), sends a line, and prints the
//!   answer; the test sees the guest's line and the guest the test's answer;
//! - the hypervisor's metrics: a `hostfwd` from a free host port to the station's
//!   port 80 (what `cargo xtask run --forward PORT=hv:80` sets up): the test sends
//!   `GET /metrics` over plain TCP, checks the HTTP response and parses the
//!   Prometheus exposition (`web`'s CPU time above zero, its vCPUs and memory);
//! - in: a `hostfwd` from another free host port to the guest's port (`--forward
//!   PORT=web:5000`) reaches a listener in the guest: the test sends a line, the
//!   guest prints it, and the test reads the guest's greeting. The scrape comes
//!   first: the guest powers off (and the machine with it) once that is done;
//! - UDP in: `udpecho64` (a tiny guest, UDP echo on port 7 at 10.0.2.16, beside
//!   `web` on "lan": busybox has no UDP listener) through a UDP forward from a
//!   free port on the host's 127.0.0.2, resolved by xtask as `--forward
//!   udp:127.0.0.2:PORT=udpecho64:7` is:
//!   the test sends a datagram with a fresh payload and gets the same bytes
//!   back, and the guest's console shows it echoed them to the client's address
//!   (127.0.0.2: QEMU's user network shows only 127.0.0.1 as its gateway 10.0.2.2).
//!
//! Once with QEMU's `e1000` (82540EM) and once with its `e1000e` (82574L), one
//! boot after the other (the server's port is fixed in the guest's command line).

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tests::prometheus::{self, sample, Scrape};
use tests::*;
use xtask::build::{
    UPLINK_TEST_GUEST_PORT, UPLINK_TEST_SERVER_PORT, UPLINK_TEST_STATION, UPLINK_TEST_UDP_VM,
};
use xtask::emulator::EXIT_SUCCESS;
use xtask::uplink::{parse_forward, qemu_args_with, resolve, HostFwd, Protocol};
use xtask::vms::{MachineDef, VmDef};

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

/// One `/metrics` response as the host got it.
struct Response {
    /// The status line and headers.
    head: String,
    body: String,
}

/// Sends `GET /metrics` to `port` on the loopback, plain HTTP/1.1 over one TCP
/// connection, and reads the response to the connection's end (the station
/// answers with `Connection: close`). `None` when nothing came back: before the
/// station answers, QEMU accepts the connection and closes it with nothing said.
fn get_metrics(port: u16) -> Option<Response> {
    let s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    (&s).write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut raw = Vec::new();
    let _ = (&s).read_to_end(&mut raw);
    if raw.is_empty() {
        return None;
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Some(Response {
        head: head.to_string(),
        body: body.to_string(),
    })
}

/// `web`'s CPU time in `m`, if the scrape has it.
fn web_cpu(m: &Scrape) -> Option<f64> {
    m.get(&(
        "hv_vm_cpu_seconds_total".to_string(),
        vec![("vm".to_string(), "web".to_string())],
    ))
    .copied()
}

/// Scrapes the station through `port` until a response comes whose exposition
/// has `web` with CPU time (it may be 0 before `web` first ran), or `stop`.
/// Returns the response and its parsed exposition, or why there is none.
fn scrape(port: u16, stop: &AtomicBool) -> Result<(Response, Scrape), String> {
    let mut last = String::from("no response");
    while !stop.load(Ordering::Acquire) {
        if let Some(r) = get_metrics(port) {
            if !r.head.starts_with("HTTP/1.1 200 ") {
                return Err(format!("not 200: {}", r.head));
            }
            // A malformed exposition panics in the parser: made a message here,
            // since this runs on the client thread.
            let body = r.body.clone();
            let m = std::panic::catch_unwind(|| prometheus::parse(&body))
                .map_err(|_| format!("a malformed exposition:\n{body}"))?;
            if web_cpu(&m).is_some_and(|cpu| cpu > 0.0) {
                return Ok((r, m));
            }
            last = format!("web's CPU time is not above 0 yet: {:?}", web_cpu(&m));
        }
        thread::sleep(Duration::from_millis(500));
    }
    Err(last)
}

/// The port of a free listening socket on the loopback, for a forward.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

/// The host address of the UDP forward: a loopback address other than 127.0.0.1
/// (all of 127.0.0.0/8 is the loopback on Linux), so the test covers a forward's
/// own host address (`--forward udp:127.0.0.2:PORT=...`) without opening a port to
/// other machines.
const UDP_HOST_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// A free UDP port on [`UDP_HOST_ADDR`], for the UDP forward.
fn free_udp_port() -> u16 {
    UdpSocket::bind((UDP_HOST_ADDR, 0))
        .and_then(|s| s.local_addr())
        .unwrap()
        .port()
}

/// Sends `payload` to UDP `port` at [`UDP_HOST_ADDR`] until a datagram comes back
/// from there, or `stop` (then whatever already came is still taken): until
/// the guest has answered slirp's ARP request the datagrams wait in QEMU, and
/// before the guest runs they are dropped, so it sends again every half second.
/// Returns the first datagram received.
fn udp_echo(port: u16, payload: &[u8], stop: &AtomicBool) -> Option<Vec<u8>> {
    let s = UdpSocket::bind((UDP_HOST_ADDR, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 2048];
    let mut sends = 0;
    loop {
        let stopped = stop.load(Ordering::Acquire);
        if stopped {
            s.set_nonblocking(true).unwrap();
        } else {
            let _ = s.send_to(payload, (UDP_HOST_ADDR, port));
            sends += 1;
        }
        match s.recv_from(&mut buf) {
            // Anything else on the loopback is not the forward's answer.
            Ok((n, from)) if from == (UDP_HOST_ADDR, port).into() => {
                eprintln!(
                    "UDP echo after {sends} datagram(s), {:.1} s",
                    start.elapsed().as_secs_f64()
                );
                return Some(buf[..n].to_vec());
            }
            Ok(_) => {}
            Err(_) if stopped => return None,
            Err(_) => {}
        }
    }
}

#[test]
fn a_linux_vm_and_the_host_reach_each_other_through_the_uplink() {
    // Built first: the guest has the server's port on its command line.
    images(GuestSet::UplinkTest);
    let set = (
        GuestSet::UplinkTest.vms().unwrap(),
        GuestSet::UplinkTest.machine().unwrap(),
    );
    both_ways(
        "uplink_e1000_amd_v",
        "e1000",
        "Intel 8086:100e (I8254x)",
        &set,
    );
    both_ways(
        "uplink_e1000e_amd_v",
        "e1000e",
        "Intel 8086:10d3 (I82574)",
        &set,
    );
}

/// The UDP forward from host port `port` at [`UDP_HOST_ADDR`] to the echo VM, as
/// `cargo xtask run --forward udp:127.0.0.2:PORT=udpecho64:7` resolves it against the set's own VMs and
/// uplink (the VM's NIC `ip` on "lan").
fn udp_forward(port: u16, (vms, machine): &(Vec<VmDef>, MachineDef)) -> HostFwd {
    let f = parse_forward(&format!(
        "udp:{UDP_HOST_ADDR}:{port}={UPLINK_TEST_UDP_VM}:{}",
        udpecho::ECHO_PORT
    ))
    .unwrap();
    let r = resolve(
        &[f],
        vms,
        machine.uplink.as_ref(),
        machine.management.as_ref(),
    )
    .unwrap_or_else(|e| panic!("the uplink test's UDP forward: {e}"));
    assert_eq!(
        r,
        [HostFwd {
            protocol: Protocol::Udp,
            host_addr: UDP_HOST_ADDR,
            host_port: port,
            guest: Ipv4Addr::from(udpecho::GUEST_ADDRESS),
            guest_port: udpecho::ECHO_PORT,
        }]
    );
    r[0]
}

/// One boot with QEMU's NIC model `device`, which the hypervisor names `model`.
fn both_ways(test: &str, device: &str, model: &str, set: &(Vec<VmDef>, MachineDef)) {
    let limit = QEMU_LIMIT * 3;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, UPLINK_TEST_SERVER_PORT))
        .unwrap_or_else(|e| {
            panic!("the test's server cannot listen on 127.0.0.1:{UPLINK_TEST_SERVER_PORT}: {e}")
        });
    let deadline = Instant::now() + limit;
    let server = thread::spawn(move || serve_once(listener, deadline));
    // Free ports for the forwards: to the guest and to the hypervisor's station.
    let forward = free_port();
    let metrics_port = free_port();
    let udp_port = free_udp_port();
    let stop = Arc::new(AtomicBool::new(false));
    // A payload this boot alone sends: an answer carrying it came from the guest
    // now, not from an earlier run.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let probe = format!("hv-udp-probe {device} {nanos:09}");
    let udp_client = {
        let (stop, probe) = (stop.clone(), probe.clone());
        thread::spawn(move || udp_echo(udp_port, probe.as_bytes(), &stop))
    };
    // The scrape first, while `web` waits for the host's connection (it powers
    // off after it, and the machine stops when it does).
    let client = {
        let stop = stop.clone();
        thread::spawn(move || {
            let scraped = scrape(metrics_port, &stop);
            (scraped, reach_guest(forward, &stop))
        })
    };
    let opts = QemuOptions {
        memory_mib: 512,
        cpus: 2,
        force_tcg: true,
        extra_args: qemu_args_with(
            device,
            &[
                HostFwd {
                    protocol: Protocol::Tcp,
                    host_addr: Ipv4Addr::LOCALHOST,
                    host_port: forward,
                    guest: Ipv4Addr::new(10, 0, 2, 15),
                    guest_port: UPLINK_TEST_GUEST_PORT,
                },
                HostFwd {
                    protocol: Protocol::Tcp,
                    host_addr: Ipv4Addr::LOCALHOST,
                    host_port: metrics_port,
                    guest: Ipv4Addr::from(UPLINK_TEST_STATION),
                    guest_port: 80,
                },
                udp_forward(udp_port, set),
            ],
        ),
        ..Default::default()
    };
    let out = boot_qemu(test, GuestSet::UplinkTest, &opts, limit);
    stop.store(true, Ordering::Release);
    let fetch = format!("web | hv-linux: fetch 10.0.2.2:{UPLINK_TEST_SERVER_PORT}: hv-host-reply");
    let station = Ipv4Addr::from(UPLINK_TEST_STATION);
    out.expect_line("hv: uplink: ")
        .expect_line(model)
        .expect_line("link up, on network \"lan\"")
        .expect_line(&format!(
            "hv: management network lan: {station}/24 (MAC 02:68:76:"
        ))
        .expect_line("web | hv-linux: eth0 10.0.2.15/24 up")
        .expect_line(&fetch)
        .expect_line("web | hv-linux: served: hv-host-payload")
        .expect_line("udpecho64 | udpecho64: virtio-net at 00:04.0, mac ")
        .expect_line(", echo on 10.0.2.16 UDP port 7")
        .expect_line("udpecho64 | udpecho64: ARP reply to 10.0.2.2")
        .expect_line("udpecho64 | udpecho64: done: ")
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
    // The datagram came back from the guest with the bytes sent.
    let echoed = udp_client.join().unwrap();
    assert_eq!(
        echoed.as_deref().map(String::from_utf8_lossy).as_deref(),
        Some(probe.as_str()),
        "{device}: no echo through the UDP forward"
    );
    // The guest saw the probe itself, from the client's own address: QEMU's user
    // network shows a client on 127.0.0.1 as the gateway 10.0.2.2 and keeps any
    // other (as it keeps a remote client's on a 0.0.0.0 forward), and the echo goes
    // back to it through the gateway.
    let line = out.line_with(&format!(
        "udpecho64: echoed {} bytes to {UDP_HOST_ADDR}:",
        probe.len()
    ));
    assert!(
        line.trim_end().ends_with(&format!(": {probe}")),
        "{device}: {line}"
    );
    let done = out.line_with("udpecho64: done: ");
    assert!(!done.contains(" 0 datagram(s) echoed"), "{device}: {done}");
    let (scraped, served) = client.join().unwrap();
    assert_eq!(
        served.as_deref(),
        Some("hv-linux-served"),
        "{device}: the forwarded port did not reach the guest's listener"
    );
    // The hypervisor's metrics, scraped from the host: an HTTP/1.1 response
    // with the exposition's content type and length, parsed (HELP and TYPE
    // before each family), and web's own figures in it.
    let (response, m) =
        scraped.unwrap_or_else(|e| panic!("{device}: no scrape of the hypervisor's metrics: {e}"));
    let head = response.head.to_ascii_lowercase();
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{device}: {}",
        response.head
    );
    assert!(
        head.contains(&format!("content-length: {}", response.body.len())),
        "{device}: {}",
        response.head
    );
    for family in ["hv_vm_cpu_seconds_total counter", "hv_vm_vcpus gauge"] {
        let name = family.split(' ').next().unwrap();
        assert!(
            response.body.contains(&format!("# HELP {name} ")),
            "{device}: no HELP of {name}"
        );
        assert!(
            response.body.contains(&format!("# TYPE {family}\n")),
            "{device}: no TYPE {family}"
        );
    }
    let web = [("vm", "web")];
    assert!(sample(&m, "hv_vm_cpu_seconds_total", &web) > 0.0);
    assert_eq!(sample(&m, "hv_vm_vcpus", &web), 1.0);
    assert_eq!(sample(&m, "hv_vm_memory_bytes", &web), (160 << 20) as f64);
    assert_eq!(
        sample(&m, "hv_vm_up", &[("vm", "web"), ("state", "running")]),
        1.0
    );
    assert!(sample(&m, "hv_uptime_seconds", &[]) > 0.0);
    // The station logged the request, from the host as QEMU's user network shows
    // it (the gateway).
    let access = out.line_with("management: HTTP 200 (");
    assert!(access.contains(" to 10.0.2.2:"), "{device}: {access}");
    // Frames went both ways, none refused by the NIC.
    let line = out.line_with("hv: uplink (lan): ");
    assert!(!line.contains("to the wire 0 frames"), "{device}: {line}");
    assert!(!line.contains("from the wire 0 frames"), "{device}: {line}");
    assert!(line.contains("ring full 0"), "{device}: {line}");
}
