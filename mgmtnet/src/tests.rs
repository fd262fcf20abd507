//! The station against a client: a second smoltcp interface wired back to back
//! with it (frames moved between the two queues by hand, as the switch would),
//! which pings it, scrapes `/metrics`, sends it bad requests, and collects its
//! syslog datagrams.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use std::collections::BTreeMap;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{ChecksumCapabilities, Device};
use smoltcp::socket::{icmp, tcp, udp};
use smoltcp::time::Instant;
use smoltcp::wire::{
    EthernetAddress, HardwareAddress, Icmpv4Packet, Icmpv4Repr, IpAddress, IpCidr, IpEndpoint,
};

use super::*;
use crate::queue::FrameQueue;

const HV_MAC: [u8; 6] = [0x02, 0x68, 0x76, 1, 2, 3];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x42];
const HV_IP: [u8; 4] = [10, 0, 9, 1];
const CLIENT_IP: [u8; 4] = [10, 0, 9, 2];

struct Client {
    iface: Interface,
    device: FrameQueue,
    sockets: SocketSet<'static>,
}

/// The station, a client, and a clock in ns.
struct Net {
    hv: Station,
    client: Client,
    now_ns: u64,
    /// What the kernel's `fill` would add; counts how often it was asked.
    fills: usize,
    /// The client's next local port.
    next_port: u16,
    /// Every frame the client sent the station.
    tap: Vec<Vec<u8>>,
}

impl Net {
    fn new(syslog: bool) -> Self {
        let mut config = StationConfig::new(HV_MAC, HV_IP, 24);
        if syslog {
            config.syslog = Some((CLIENT_IP, 514));
        }
        let hv = Station::new(config, 0).unwrap();
        let mut device = FrameQueue::new(64);
        let mut c = Config::new(HardwareAddress::Ethernet(EthernetAddress(CLIENT_MAC)));
        c.random_seed = 7;
        let mut iface = Interface::new(c, &mut device, Instant::from_micros(0));
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::v4(10, 0, 9, 2), 24)).unwrap();
        });
        Self {
            hv,
            client: Client {
                iface,
                device,
                sockets: SocketSet::new(vec![]),
            },
            now_ns: 0,
            fills: 0,
            next_port: 49152,
            tap: Vec::new(),
        }
    }

    /// One millisecond: both stacks polled, frames moved both ways.
    fn step(&mut self) {
        self.now_ns += 1_000_000;
        let now = Instant::from_micros((self.now_ns / 1000) as i64);
        let fills = &mut self.fills;
        self.hv.poll(self.now_ns, &mut |m| {
            *fills += 1;
            m.uptime(self.now_ns);
            m.vm(&VmMetrics {
                name: "linux",
                state: "running",
                vcpus: 2,
                cpu_ns: 1_250_000_000,
                memory_bytes: 256 << 20,
                ballooned_bytes: 16 << 20,
                shared_bytes: 0,
                exits: vec![("io", 10), ("hlt", 5)],
                disk: None,
                nics: vec![NicMetrics {
                    nic: "eth0",
                    network: "mgmt",
                    tx_frames: 3,
                    tx_bytes: 300,
                    rx_frames: 4,
                    rx_bytes: 400,
                    dropped_frames: 0,
                }],
            });
        });
        while let Some(f) = self.hv.take_frame() {
            self.client.device.push_rx(&f);
        }
        let c = &mut self.client;
        c.iface.poll(now, &mut c.device, &mut c.sockets);
        while let Some(f) = c.device.pop_tx() {
            self.hv.receive_frame(&f);
            self.tap.push(f);
        }
    }

    fn connect(&mut self, local_port: u16) -> SocketHandle {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 8192]),
            tcp::SocketBuffer::new(vec![0; 8192]),
        );
        s.connect(
            self.client.iface.context(),
            (IpAddress::v4(10, 0, 9, 1), 80),
            local_port,
        )
        .unwrap();
        self.client.sockets.add(s)
    }

    /// Sends `request` on a new connection and returns everything the station
    /// answered before it closed.
    fn fetch(&mut self, request: &[u8]) -> String {
        self.next_port += 1;
        let h = self.connect(self.next_port);
        let mut sent = 0;
        let mut out = Vec::new();
        for _ in 0..5000 {
            self.step();
            let s = self.client.sockets.get_mut::<tcp::Socket>(h);
            if s.can_send() && sent < request.len() {
                sent += s.send_slice(&request[sent..]).unwrap();
            }
            while s.can_recv() {
                s.recv(|d| {
                    out.extend_from_slice(d);
                    (d.len(), ())
                })
                .unwrap();
            }
            if !s.may_recv() && sent > 0 {
                s.close();
                let answer = String::from_utf8(out).unwrap();
                // Let the close finish on both sides.
                for _ in 0..20 {
                    self.step();
                }
                self.client.sockets.remove(h);
                return answer;
            }
        }
        panic!("no answer in 5 s");
    }
}

/// Samples by metric name and labels.
type Scrape = BTreeMap<(String, Vec<(String, String)>), f64>;

/// A parsed exposition: (metric name, labels) to value, checking the format as
/// it goes: HELP and TYPE before a family's samples, families contiguous,
/// escapes valid.
fn parse(text: &str) -> Scrape {
    let mut out = BTreeMap::new();
    let mut typed: Option<String> = None;
    let mut seen = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(!seen.contains(&String::from(name)), "{name} twice");
            seen.push(name.into());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert_eq!(seen.last().map(String::as_str), Some(name));
            assert!(kind == "counter" || kind == "gauge");
            typed = Some(name.into());
        } else {
            let name_end = line.find(['{', ' ']).unwrap();
            let name = &line[..name_end];
            assert_eq!(typed.as_deref(), Some(name), "{line}");
            let mut labels = Vec::new();
            let mut rest = &line[name_end..];
            if let Some(r) = rest.strip_prefix('{') {
                let mut chars = r.char_indices();
                let mut key = String::new();
                let mut value = String::new();
                let mut in_value = false;
                let end;
                loop {
                    let (i, c) = chars.next().unwrap();
                    if in_value {
                        match c {
                            '\\' => match chars.next().unwrap().1 {
                                'n' => value.push('\n'),
                                '\\' => value.push('\\'),
                                '"' => value.push('"'),
                                e => panic!("bad escape \\{e}"),
                            },
                            '"' => {
                                labels
                                    .push((core::mem::take(&mut key), core::mem::take(&mut value)));
                                in_value = false;
                            }
                            c => value.push(c),
                        }
                    } else {
                        match c {
                            '}' => {
                                end = i + 1;
                                break;
                            }
                            ',' => {}
                            '=' => {
                                assert_eq!(chars.next().unwrap().1, '"');
                                in_value = true;
                            }
                            c => key.push(c),
                        }
                    }
                }
                rest = &r[end..];
            }
            let value: f64 = rest.trim_start().parse().unwrap();
            out.insert((String::from(name), labels), value);
        }
    }
    out
}

fn get(m: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let key = (
        String::from(name),
        labels
            .iter()
            .map(|&(k, v)| (String::from(k), String::from(v)))
            .collect(),
    );
    *m.get(&key)
        .unwrap_or_else(|| panic!("no {name} {labels:?}"))
}

#[test]
fn answers_ping() {
    let mut net = Net::new(false);
    let mut icmp = icmp::Socket::new(
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]),
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]),
    );
    icmp.bind(icmp::Endpoint::Ident(0x1234)).unwrap();
    let h = net.client.sockets.add(icmp);
    let repr = Icmpv4Repr::EchoRequest {
        ident: 0x1234,
        seq_no: 1,
        data: b"hello hv",
    };
    let s = net.client.sockets.get_mut::<icmp::Socket>(h);
    let buf = s
        .send(repr.buffer_len(), IpAddress::v4(10, 0, 9, 1))
        .unwrap();
    repr.emit(
        &mut Icmpv4Packet::new_unchecked(buf),
        &ChecksumCapabilities::default(),
    );
    for _ in 0..100 {
        net.step();
        let s = net.client.sockets.get_mut::<icmp::Socket>(h);
        if s.can_recv() {
            let (data, from) = s.recv().unwrap();
            assert_eq!(from, IpAddress::v4(10, 0, 9, 1));
            let p = Icmpv4Packet::new_checked(data).unwrap();
            let r = Icmpv4Repr::parse(&p, &ChecksumCapabilities::default()).unwrap();
            assert_eq!(
                r,
                Icmpv4Repr::EchoReply {
                    ident: 0x1234,
                    seq_no: 1,
                    data: b"hello hv"
                }
            );
            return;
        }
    }
    panic!("no echo reply");
}

#[test]
fn serves_metrics_and_counts_requests() {
    let mut net = Net::new(false);
    let answer = net.fetch(b"GET /metrics HTTP/1.1\r\nHost: 10.0.9.1\r\nConnection: close\r\n\r\n");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"));
    assert!(head.contains(&std::format!("Content-Length: {}", body.len())));
    let m = parse(body);
    assert_eq!(get(&m, "hv_vm_cpu_seconds_total", &[("vm", "linux")]), 1.25);
    assert_eq!(
        get(
            &m,
            "hv_vm_exits_total",
            &[("vm", "linux"), ("reason", "hlt")]
        ),
        5.0
    );
    assert_eq!(
        get(
            &m,
            "hv_vm_nic_frames_total",
            &[
                ("vm", "linux"),
                ("nic", "eth0"),
                ("network", "mgmt"),
                ("direction", "rx")
            ]
        ),
        4.0
    );
    assert_eq!(get(&m, "hv_http_requests_total", &[("code", "200")]), 1.0);
    assert_eq!(
        get(&m, "hv_vm_memory_ballooned_bytes", &[("vm", "linux")]),
        (16 << 20) as f64
    );
    assert!(get(&m, "hv_uptime_seconds", &[]) > 0.0);
    assert_eq!(net.fills, 1);
    let answers = net.hv.take_answers();
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].peer.0, CLIENT_IP);
    assert_eq!((answers[0].status, answers[0].bytes), (200, answer.len()));
    assert!(net.hv.take_answers().is_empty());
    // A second scrape counts the first.
    let answer = net.fetch(b"GET /metrics HTTP/1.0\r\n\r\n");
    let m = parse(answer.split_once("\r\n\r\n").unwrap().1);
    assert_eq!(get(&m, "hv_http_requests_total", &[("code", "200")]), 2.0);
    // HEAD: the same head, no body.
    let answer = net.fetch(b"HEAD /metrics HTTP/1.1\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n") && answer.ends_with("\r\n\r\n"));
    assert_eq!(net.fills, 3);
}

#[test]
fn refuses_bad_requests_without_rendering() {
    let mut net = Net::new(false);
    let cases: [(&[u8], &str); 5] = [
        (b"GET /other HTTP/1.1\r\n\r\n", "404"),
        (
            b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "405",
        ),
        (b"hello\r\n\r\n", "400"),
        (b"GET /metrics HTTP/1.1\x00\r\n\r\n", "400"),
        (&[b'A'; 6000], "431"),
    ];
    for (request, status) in cases {
        let answer = net.fetch(request);
        assert!(
            answer.starts_with(&std::format!("HTTP/1.1 {status} ")),
            "{status}: {answer}"
        );
    }
    assert_eq!(net.fills, 0);
    let codes: Vec<u16> = net.hv.answered().iter().map(|&(c, _)| c).collect();
    assert_eq!(codes, [400, 404, 405, 431]);
    // The station still serves afterwards.
    assert!(net
        .fetch(b"GET /metrics HTTP/1.1\r\n\r\n")
        .starts_with("HTTP/1.1 200"));
}

#[test]
fn serves_several_connections_at_once_and_times_out_idle_ones() {
    let mut net = Net::new(false);
    // Three clients connect; two send half a request and wait.
    let idle: Vec<SocketHandle> = (0..2).map(|i| net.connect(50000 + i)).collect();
    let busy = net.connect(50010);
    for _ in 0..50 {
        net.step();
    }
    for &h in &idle {
        let s = net.client.sockets.get_mut::<tcp::Socket>(h);
        assert_eq!(s.state(), tcp::State::Established);
        s.send_slice(b"GET /metr").unwrap();
    }
    let s = net.client.sockets.get_mut::<tcp::Socket>(busy);
    s.send_slice(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    let mut got = Vec::new();
    for _ in 0..500 {
        net.step();
        let s = net.client.sockets.get_mut::<tcp::Socket>(busy);
        while s.can_recv() {
            s.recv(|d| {
                got.extend_from_slice(d);
                (d.len(), ())
            })
            .unwrap();
        }
    }
    assert!(got.starts_with(b"HTTP/1.1 200 OK"));
    net.client.sockets.get_mut::<tcp::Socket>(busy).close();
    // The idle ones are aborted after 10 s.
    for _ in 0..11_000 {
        net.step();
    }
    assert_eq!(net.hv.timeouts(), 2);
    for &h in &idle {
        let s = net.client.sockets.get::<tcp::Socket>(h);
        assert_eq!(s.state(), tcp::State::Closed);
    }
}

#[test]
fn sends_syslog_to_the_collector() {
    let mut net = Net::new(true);
    let mut collector = udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 8192]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 1], vec![0; 64]),
    );
    collector.bind(514).unwrap();
    let h = net.client.sockets.add(collector);
    let mut queue = RecordRing::<4>::new();
    for i in 0..6 {
        queue.push(
            Severity::Informational,
            1_796_021_679_000_000_000 + i * 1000,
            "test",
            format_args!("message {i}\nsecond line"),
        );
    }
    assert_eq!(queue.dropped(), 2);
    let mut got = Vec::new();
    for _ in 0..100 {
        while net.hv.syslog_ready() {
            let Some(m) = queue.pop_message(Facility::Local0, "hv") else {
                break;
            };
            assert!(net.hv.send_syslog(&m));
        }
        net.step();
        let s = net.client.sockets.get_mut::<udp::Socket>(h);
        while let Ok((data, meta)) = s.recv() {
            assert_eq!(
                meta.endpoint,
                IpEndpoint {
                    addr: IpAddress::v4(10, 0, 9, 1),
                    port: 514
                }
            );
            got.push(String::from_utf8(data.to_vec()).unwrap());
        }
    }
    assert_eq!(queue.sent(), 4);
    assert_eq!(
        got,
        (0..4)
            .map(|i| std::format!(
                "<134>1 2026-11-30T06:54:39.00000{i}Z hv hv - test - message {i} second line"
            ))
            .collect::<Vec<_>>()
    );
}

#[test]
fn refuses_bad_configurations() {
    let ok = StationConfig::new(HV_MAC, HV_IP, 24);
    assert!(Station::new(ok, 0).is_ok());
    let with = |f: &dyn Fn(&mut StationConfig)| {
        let mut c = ok;
        f(&mut c);
        Station::new(c, 0).err()
    };
    assert_eq!(
        with(&|c| c.mac = [1, 0, 0, 0, 0, 1]),
        Some(StationError::BadMac)
    );
    assert_eq!(with(&|c| c.mac = [0; 6]), Some(StationError::BadMac));
    assert_eq!(with(&|c| c.prefix = 0), Some(StationError::BadAddress));
    assert_eq!(with(&|c| c.prefix = 33), Some(StationError::BadAddress));
    assert_eq!(
        with(&|c| c.address = [10, 0, 9, 0]),
        Some(StationError::BadAddress)
    );
    assert_eq!(
        with(&|c| c.address = [10, 0, 9, 255]),
        Some(StationError::BadAddress)
    );
    assert_eq!(
        with(&|c| c.address = [224, 0, 0, 1]),
        Some(StationError::BadAddress)
    );
    assert!(with(&|c| {
        c.address = [10, 0, 9, 255];
        c.prefix = 32
    })
    .is_none());
    assert_eq!(
        with(&|c| c.syslog = Some(([255, 255, 255, 255], 514))),
        Some(StationError::BadCollector)
    );
    assert_eq!(
        with(&|c| c.syslog = Some((HV_IP, 514))),
        Some(StationError::BadCollector)
    );
    assert_eq!(
        with(&|c| c.syslog = Some((CLIENT_IP, 0))),
        Some(StationError::BadCollector)
    );
    assert_eq!(with(&|c| c.connections = 0), Some(StationError::BadServer));
}

#[test]
fn frames_beyond_the_queue_or_mtu_are_dropped() {
    let mut hv = Station::new(StationConfig::new(HV_MAC, HV_IP, 24), 0).unwrap();
    assert!(!hv.receive_frame(&[0; 1515]));
    for _ in 0..64 {
        assert!(hv.receive_frame(&[0; 60]));
    }
    assert!(!hv.receive_frame(&[0; 60]));
    assert_eq!(hv.queue_stats().rx_dropped, 2);
    // Garbage frames are consumed without an answer or a panic.
    hv.poll(1_000_000, &mut |_| {});
    assert_eq!(hv.queue_stats().received, 64);
    assert!(hv.take_frame().is_none());
}

#[test]
fn station_macs_are_local_unicast_and_stable() {
    let a = station_mac("mgmt");
    assert_eq!(a, station_mac("mgmt"));
    assert_ne!(a, station_mac("lan"));
    assert_eq!(a[..3], [0x02, 0x68, 0x76]);
    let d = FrameQueue::new(1);
    assert_eq!(d.capabilities().max_transmission_unit, 1514);
}

#[test]
fn answers_through_a_vswitch_port() {
    use vswitch::{PortConfig, Switch, SwitchConfig};
    // As the kernel wires it: the station and a client on ports of one network,
    // the station created late in the machine's life.
    let mut sw = Switch::new(SwitchConfig::default());
    let net = sw.add_network("mgmt").unwrap();
    let c = sw.add_port(net, PortConfig::vm(CLIENT_MAC), 0).unwrap();
    let start = 7_000_000_000;
    let hv = sw
        .add_port(net, PortConfig::vm(station_mac("mgmt")), start)
        .unwrap();
    let mut station =
        Station::new(StationConfig::new(station_mac("mgmt"), HV_IP, 24), start).unwrap();
    let mut client = Net::new(false).client;
    let h = {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 8192]),
            tcp::SocketBuffer::new(vec![0; 8192]),
        );
        s.connect(
            client.iface.context(),
            (IpAddress::v4(10, 0, 9, 1), 80),
            40000,
        )
        .unwrap();
        client.sockets.add(s)
    };
    let mut got = Vec::new();
    for step in 1..2000u64 {
        let now = start + step * 1_000_000;
        while let Some(f) = sw.receive(hv) {
            station.receive_frame(&f);
        }
        station.poll(now, &mut |m| m.uptime(now));
        while let Some(f) = station.take_frame() {
            sw.transmit(hv, &f, now).unwrap();
        }
        while let Some(f) = sw.receive(c) {
            client.device.push_rx(&f);
        }
        client.iface.poll(
            Instant::from_micros((now / 1000) as i64),
            &mut client.device,
            &mut client.sockets,
        );
        while let Some(f) = client.device.pop_tx() {
            sw.transmit(c, &f, now).unwrap();
        }
        let s = client.sockets.get_mut::<tcp::Socket>(h);
        if s.can_send() && got.is_empty() {
            s.send_slice(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
            got.push(0);
        }
        while s.can_recv() {
            s.recv(|d| {
                got.extend_from_slice(d);
                (d.len(), ())
            })
            .unwrap();
        }
    }
    assert!(got[1..].starts_with(b"HTTP/1.1 200 OK"), "{got:?}");
    assert_eq!(sw.port_stats(hv).unwrap().dropped_total().frames, 0);
}

/// xorshift64*: reproducible noise for the garbage test.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

#[test]
fn survives_garbage_and_mutated_frames() {
    // Real frames of a scrape, recorded from a client exchange, then replayed
    // with random bytes changed, cut or extended, mixed with pure noise: the
    // station must neither panic nor stop serving.
    let mut net = Net::new(true);
    let h = net.connect(40001);
    for i in 0..200 {
        net.step();
        let s = net.client.sockets.get_mut::<tcp::Socket>(h);
        if i == 20 {
            s.send_slice(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        }
        while s.can_recv() {
            s.recv(|d| (d.len(), ())).unwrap();
        }
    }
    let recorded = core::mem::take(&mut net.tap);
    assert!(recorded.len() >= 4, "{} frames recorded", recorded.len());
    let mut seed = 0x005E_ED0F_4A11_u64;
    for round in 0..20_000u64 {
        let r = next(&mut seed);
        let mut f = if r.is_multiple_of(4) {
            let len = (next(&mut seed) % 1600) as usize;
            (0..len).map(|_| next(&mut seed) as u8).collect()
        } else {
            recorded[(r as usize / 4) % recorded.len()].clone()
        };
        if !f.is_empty() {
            for _ in 0..(next(&mut seed) % 4) {
                let at = (next(&mut seed) as usize) % f.len();
                f[at] = next(&mut seed) as u8;
            }
            match next(&mut seed) % 5 {
                0 => f.truncate((next(&mut seed) as usize) % f.len()),
                1 => f.extend((0..next(&mut seed) % 64).map(|_| 0u8)),
                _ => {}
            }
        }
        // Addressed to the station, so the stack looks at it.
        if f.len() >= 6 && round % 2 == 0 {
            f[..6].copy_from_slice(&HV_MAC);
        }
        net.hv.receive_frame(&f);
        if round % 8 == 0 {
            net.now_ns += 1_000_000;
            net.hv.poll(net.now_ns, &mut |_| {});
            while net.hv.take_frame().is_some() {}
        }
    }
    // Still serving, after the garbage connections have timed out.
    for _ in 0..11_000 {
        net.step();
    }
    let answer = net.fetch(b"GET /metrics HTTP/1.1\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
}
