//! The hypervisor's station on the management network: a smoltcp [`Interface`]
//! with one MAC and one IPv4 address over a [`FrameQueue`], answering ARP and
//! ICMP echo itself (smoltcp does both without a socket), serving `/metrics` on
//! a few TCP sockets listening on the HTTP port, and sending syslog datagrams
//! from one UDP socket.
//!
//! The owner calls [`Station::poll`] often (the kernel: between time slices),
//! after moving frames from its switch port in with [`Station::receive_frame`]
//! and before moving them out with [`Station::take_frame`]. Rendering the
//! metrics is the owner's ([`Station::poll`]'s `fill`), and is only asked for
//! when a complete request for them has arrived.

use alloc::vec;
use alloc::vec::Vec;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint};

use crate::http::{self, Verdict};
use crate::metrics::{self, Metrics};
use crate::queue::{FrameQueue, QueueStats};

/// The TCP port the station serves `/metrics` on (the kernel keeps the default;
/// xtask's `--forward HOSTPORT=hv:PORT` checks PORT against it).
pub const HTTP_PORT: u16 = 80;

/// What the station is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StationConfig {
    pub mac: [u8; 6],
    pub address: [u8; 4],
    /// The network's prefix length (1 to 32).
    pub prefix: u8,
    /// The syslog collector, if any.
    pub syslog: Option<([u8; 4], u16)>,
    /// The port of the metrics endpoint ([`HTTP_PORT`] unless configured otherwise).
    pub http_port: u16,
    /// Connections served at once.
    pub connections: usize,
    /// Seeds smoltcp's choice of TCP initial sequence numbers and local ports.
    pub seed: u64,
}

impl StationConfig {
    /// Connections served at once unless configured otherwise.
    pub const DEFAULT_CONNECTIONS: usize = 4;

    pub fn new(mac: [u8; 6], address: [u8; 4], prefix: u8) -> Self {
        Self {
            mac,
            address,
            prefix,
            syslog: None,
            http_port: HTTP_PORT,
            connections: Self::DEFAULT_CONNECTIONS,
            seed: 0,
        }
    }
}

/// A configuration the station refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StationError {
    /// A group or all-zero MAC.
    BadMac,
    /// A prefix outside 1-32, or an address that is the network's or its
    /// broadcast address (or unspecified, multicast).
    BadAddress,
    /// A collector that is not a unicast address, or port 0.
    BadCollector,
    /// No connections, or port 0.
    BadServer,
}

/// One answered request, for the owner's access log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The client's IPv4 address and port.
    pub peer: ([u8; 4], u16),
    pub status: u16,
    /// The response's length, header included.
    pub bytes: usize,
}

/// Answers kept for [`Station::take_answers`]; more are counted only.
const ANSWERS_KEPT: usize = 16;

/// Frames queued in each direction.
const FRAME_QUEUE: usize = 64;
/// A response is written as the socket takes it, so the buffer need not hold it.
const TCP_TX_BUFFER: usize = 16 * 1024;
const TCP_RX_BUFFER: usize = 2 * 1024;
/// A connection that has not finished in this time is aborted (a client that
/// sends half a request and waits must not hold a socket for ever).
const CONNECTION_TIMEOUT_NS: u64 = 10_000_000_000;
/// The source port of syslog datagrams.
const SYSLOG_SOURCE_PORT: u16 = 514;

struct Conn {
    handle: SocketHandle,
    request: Vec<u8>,
    /// The response and how much of it the socket has taken.
    response: Option<(Vec<u8>, usize)>,
    /// When the connection left the listening state.
    since_ns: Option<u64>,
}

/// See the module documentation.
pub struct Station {
    config: StationConfig,
    iface: Interface,
    sockets: SocketSet<'static>,
    device: FrameQueue,
    conns: Vec<Conn>,
    udp: SocketHandle,
    collector: Option<IpEndpoint>,
    /// Responses by status code.
    answered: Vec<(u16, u64)>,
    /// Recent answers for the access log.
    answers: Vec<Answer>,
    timeouts: u64,
}

fn instant(now_ns: u64) -> Instant {
    Instant::from_micros((now_ns / 1000).min(i64::MAX as u64) as i64)
}

fn unicast_v4(a: [u8; 4]) -> bool {
    let ip = core::net::Ipv4Addr::from(a);
    !(ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast())
}

impl Station {
    pub fn new(config: StationConfig, now_ns: u64) -> Result<Self, StationError> {
        if config.mac[0] & 1 != 0 || config.mac == [0; 6] {
            return Err(StationError::BadMac);
        }
        if !(1..=32).contains(&config.prefix) {
            return Err(StationError::BadAddress);
        }
        let host_bits = 32 - u32::from(config.prefix);
        let ip = u32::from_be_bytes(config.address);
        let host = if host_bits == 32 {
            ip
        } else {
            ip & ((1u32 << host_bits) - 1)
        };
        let all_ones = if host_bits == 32 {
            u32::MAX
        } else {
            (1u32 << host_bits) - 1
        };
        if !unicast_v4(config.address) || (host_bits >= 2 && (host == 0 || host == all_ones)) {
            return Err(StationError::BadAddress);
        }
        if let Some((addr, port)) = config.syslog {
            if !unicast_v4(addr) || port == 0 || addr == config.address {
                return Err(StationError::BadCollector);
            }
        }
        if config.connections == 0 || config.http_port == 0 {
            return Err(StationError::BadServer);
        }
        let mut device = FrameQueue::new(FRAME_QUEUE);
        let mut iface_config = Config::new(HardwareAddress::Ethernet(EthernetAddress(config.mac)));
        iface_config.random_seed = config.seed;
        let mut iface = Interface::new(iface_config, &mut device, instant(now_ns));
        let [a, b, c, d] = config.address;
        iface.update_ip_addrs(|addrs| {
            // One address on an empty list always fits.
            let _ = addrs.push(IpCidr::new(IpAddress::v4(a, b, c, d), config.prefix));
        });
        let mut sockets = SocketSet::new(vec![]);
        let mut conns = Vec::with_capacity(config.connections);
        for _ in 0..config.connections {
            let socket = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; TCP_RX_BUFFER]),
                tcp::SocketBuffer::new(vec![0; TCP_TX_BUFFER]),
            );
            conns.push(Conn {
                handle: sockets.add(socket),
                request: Vec::new(),
                response: None,
                since_ns: None,
            });
        }
        let mut udp = udp::Socket::new(
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 512]),
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 32], vec![0; 16 * 1024]),
        );
        // Binding a fresh socket to a non-zero port cannot fail.
        let _ = udp.bind(SYSLOG_SOURCE_PORT);
        let udp = sockets.add(udp);
        let collector = config.syslog.map(|([a, b, c, d], port)| IpEndpoint {
            addr: IpAddress::v4(a, b, c, d),
            port,
        });
        let mut station = Self {
            config,
            iface,
            sockets,
            device,
            conns,
            udp,
            collector,
            answered: Vec::new(),
            answers: Vec::new(),
            timeouts: 0,
        };
        for i in 0..station.conns.len() {
            station.listen(i);
        }
        Ok(station)
    }

    pub fn config(&self) -> &StationConfig {
        &self.config
    }

    /// Forgets connection `i`'s request and response; its socket listens again
    /// once closed (see [`Station::serve`]).
    fn forget(&mut self, i: usize) {
        let c = &mut self.conns[i];
        c.request.clear();
        c.response = None;
        c.since_ns = None;
    }

    fn listen(&mut self, i: usize) {
        self.forget(i);
        let port = self.config.http_port;
        let s = self.sockets.get_mut::<tcp::Socket>(self.conns[i].handle);
        // A closed socket with a non-zero port always listens.
        let _ = s.listen(port);
        s.set_timeout(Some(Duration::from_secs(10)));
    }

    /// A frame from the switch port; false when it was dropped.
    pub fn receive_frame(&mut self, frame: &[u8]) -> bool {
        self.device.push_rx(frame)
    }

    /// The next frame for the switch port.
    pub fn take_frame(&mut self) -> Option<Vec<u8>> {
        self.device.pop_tx()
    }

    /// The frame queues' counters.
    pub fn queue_stats(&self) -> QueueStats {
        self.device.stats()
    }

    /// Responses sent, by status code.
    pub fn answered(&self) -> &[(u16, u64)] {
        &self.answered
    }

    /// The requests answered since the last call (at most 16 of them; the rest
    /// are in [`Station::answered`]'s counts only).
    pub fn take_answers(&mut self) -> Vec<Answer> {
        core::mem::take(&mut self.answers)
    }

    /// Connections aborted because they took too long.
    pub fn timeouts(&self) -> u64 {
        self.timeouts
    }

    fn count(&mut self, status: u16) {
        match self.answered.iter_mut().find(|(s, _)| *s == status) {
            Some((_, n)) => *n += 1,
            None => {
                self.answered.push((status, 1));
                self.answered.sort_unstable();
            }
        }
    }

    /// Whether a syslog message can be sent now (a collector is configured and
    /// the socket has room).
    pub fn syslog_ready(&self) -> bool {
        self.collector.is_some() && self.sockets.get::<udp::Socket>(self.udp).can_send()
    }

    /// Queues `message` for the collector; false when there is none or no room
    /// (the message is then the caller's to drop or keep).
    pub fn send_syslog(&mut self, message: &[u8]) -> bool {
        let Some(to) = self.collector else {
            return false;
        };
        self.sockets
            .get_mut::<udp::Socket>(self.udp)
            .send_slice(message, to)
            .is_ok()
    }

    /// Moves the stack on to `now_ns`: takes the received frames, answers ARP and
    /// ICMP, serves HTTP (`fill` adds what the metrics say, asked once per
    /// request for them, after the station's own counters), sends what is
    /// queued.
    pub fn poll(&mut self, now_ns: u64, fill: &mut dyn FnMut(&mut Metrics)) {
        let now = instant(now_ns);
        self.iface.poll(now, &mut self.device, &mut self.sockets);
        for i in 0..self.conns.len() {
            self.serve(i, now_ns, fill);
        }
        self.iface.poll(now, &mut self.device, &mut self.sockets);
    }

    fn serve(&mut self, i: usize, now_ns: u64, fill: &mut dyn FnMut(&mut Metrics)) {
        let handle = self.conns[i].handle;
        let state = self.sockets.get::<tcp::Socket>(handle).state();
        match state {
            tcp::State::Listen => return,
            tcp::State::Closed => return self.listen(i),
            tcp::State::TimeWait => {
                // The response went out and the client closed too: the socket
                // takes the next client at once rather than after TIME-WAIT (a
                // late segment of this connection then gets a reset, harmless
                // after a Connection: close response).
                self.sockets.get_mut::<tcp::Socket>(handle).abort();
                return self.listen(i);
            }
            _ => {}
        }
        let since = *self.conns[i].since_ns.get_or_insert(now_ns);
        if now_ns.saturating_sub(since) > CONNECTION_TIMEOUT_NS {
            self.timeouts += 1;
            // A reset goes out at the next poll; the socket listens again at
            // the next call after that.
            self.sockets.get_mut::<tcp::Socket>(handle).abort();
            return self.forget(i);
        }
        if self.conns[i].response.is_none() {
            let verdict = self.read_request(i);
            if let Some(v) = verdict {
                let response = match v {
                    Verdict::Metrics { head_only } => {
                        let mut m = Metrics::new();
                        // This request counts as answered in what it reports.
                        self.count(200);
                        m.http(&self.answered);
                        fill(&mut m);
                        http::response(200, metrics::CONTENT_TYPE, m.render().as_bytes(), head_only)
                    }
                    Verdict::Error(status) => {
                        self.count(status);
                        http::error_response(status)
                    }
                };
                if self.answers.len() < ANSWERS_KEPT {
                    let peer = self
                        .sockets
                        .get::<tcp::Socket>(handle)
                        .remote_endpoint()
                        .map_or(([0; 4], 0), |e| match e.addr {
                            IpAddress::Ipv4(a) => (a.octets(), e.port),
                        });
                    let status = match v {
                        Verdict::Metrics { .. } => 200,
                        Verdict::Error(s) => s,
                    };
                    self.answers.push(Answer {
                        peer,
                        status,
                        bytes: response.len(),
                    });
                }
                self.conns[i].response = Some((response, 0));
            }
        }
        let c = &mut self.conns[i];
        let s = self.sockets.get_mut::<tcp::Socket>(handle);
        if let Some((response, sent)) = &mut c.response {
            if *sent < response.len() && s.can_send() {
                *sent += s.send_slice(&response[*sent..]).unwrap_or(0);
            }
            if *sent >= response.len() {
                // The FIN follows the queued data.
                s.close();
            }
        } else if s.state() == tcp::State::CloseWait && s.recv_queue() == 0 {
            // The client closed before a whole request head.
            s.close();
        }
    }

    /// Reads what the client sent; the verdict once the request head is whole or
    /// cannot fit.
    fn read_request(&mut self, i: usize) -> Option<Verdict> {
        let c = &mut self.conns[i];
        let s = self.sockets.get_mut::<tcp::Socket>(c.handle);
        while s.can_recv() && c.request.len() < http::MAX_REQUEST {
            let room = http::MAX_REQUEST - c.request.len();
            let request = &mut c.request;
            let taken = s
                .recv(|data| {
                    let n = data.len().min(room);
                    request.extend_from_slice(&data[..n]);
                    (n, n)
                })
                .unwrap_or(0);
            if taken == 0 {
                break;
            }
        }
        match http::head_end(&c.request) {
            Some(end) => Some(http::judge(&c.request[..end])),
            None if c.request.len() >= http::MAX_REQUEST => Some(Verdict::Error(431)),
            None => None,
        }
    }
}
