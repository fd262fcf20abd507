//! Virtual Ethernet switches for the hypervisor's VMs, as pure logic: no clock
//! (callers pass the time in ns), no I/O, `no_std` with `alloc`, host-tested.
//!
//! One [`Switch`] holds any number of named networks; each network is an isolated
//! learning switch (a frame never crosses to another network, and the same MAC may
//! live in two networks). Ports attach to one network each: a VM's NIC
//! ([`PortKind::Vm`], whose frames must come from its own MAC) or an uplink
//! ([`PortKind::Uplink`], no source check). [`Switch::transmit`] takes a frame a
//! port sends and:
//!
//! 1. checks its size ([`frame`]: runts under 14 bytes and frames over 1514 bytes,
//!    1518 with an 802.1Q tag, are dropped; short frames are not padded),
//! 2. drops multicast/broadcast source addresses and, on VM ports, any source
//!    other than the port's MAC (forged-transmit protection),
//! 3. applies the port's rate limit ([`RateLimit`], token buckets in bytes/s and
//!    optionally frames/s),
//! 4. learns the source ([`table`]: bounded, aging, a MAC that moves is relearned),
//! 5. forwards to the learned port of the destination, or floods to every other
//!    port of the network (group or unknown destination), never back to the
//!    source.
//!
//! Delivery puts a copy into each receiving port's bounded queue, which the port's
//! owner drains with [`Switch::receive`] (the VM's virtio-net receive path, the
//! uplink driver). A full queue drops for that port only: nothing blocks, and the
//! other ports still get the frame. Every drop is counted ([`stats`]).
//!
//! # Wiring (for the kernel, later)
//!
//! The platform creates the switch from the configuration's networks, adds a port
//! per NIC, and on each poll of a VM's NIC: passes the frames the guest sent
//! ([`virtio::net`]'s transmit sink) to `transmit`, then moves frames from
//! `receive` into the device while it has room.
//!
//! [`virtio::net`]: ../virtio/net/index.html
#![no_std]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod bucket;
pub mod frame;
pub mod stats;
pub mod table;

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;

pub use bucket::TokenBucket;
pub use frame::{is_multicast, FrameError, Mac};
pub use stats::{Count, DropReason, NetworkStats, PortStats};
use table::{Learned, MacTable};

/// A network of a [`Switch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NetworkId(pub u16);

/// A port of a [`Switch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortId(pub u16);

/// What is attached to a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortKind {
    /// A VM's NIC with this MAC: frames from any other source are dropped
    /// (forged-transmit protection) unless `allow_forged_source` is set.
    Vm { mac: Mac, allow_forged_source: bool },
    /// A link to a physical network: any unicast source is accepted.
    Uplink,
}

/// A port's rate limit: token buckets refilled at `rate` per second holding up to
/// `burst`. A frame passes only when both buckets in use have room for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub bytes_per_s: u64,
    pub burst_bytes: u64,
    /// Frames per second and burst, for floods of small frames (`None`: bytes only).
    pub frames: Option<(u64, u64)>,
}

/// A port's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortConfig {
    pub kind: PortKind,
    pub rate_limit: Option<RateLimit>,
    /// How many frames the port's receive queue holds.
    pub receive_queue: usize,
}

impl PortConfig {
    /// Frames the receive queue holds unless configured otherwise.
    pub const DEFAULT_RECEIVE_QUEUE: usize = 256;

    /// A VM NIC with forged-transmit protection and no rate limit.
    pub fn vm(mac: Mac) -> Self {
        Self {
            kind: PortKind::Vm {
                mac,
                allow_forged_source: false,
            },
            rate_limit: None,
            receive_queue: Self::DEFAULT_RECEIVE_QUEUE,
        }
    }

    /// An uplink, no rate limit.
    pub fn uplink() -> Self {
        Self {
            kind: PortKind::Uplink,
            rate_limit: None,
            receive_queue: Self::DEFAULT_RECEIVE_QUEUE,
        }
    }

    pub fn with_rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    pub fn with_receive_queue(mut self, frames: usize) -> Self {
        self.receive_queue = frames;
        self
    }
}

/// Switch-wide settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwitchConfig {
    /// MAC table entries per network.
    pub table_capacity: usize,
    /// Ageing time of learned entries (IEEE 802.1Q's default is 300 s).
    pub ageing_ns: u64,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        Self {
            table_capacity: 4096,
            ageing_ns: 300_000_000_000,
        }
    }
}

/// A configuration the switch refuses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SwitchError {
    /// A network of that name exists already.
    DuplicateNetwork(String),
    UnknownNetwork(NetworkId),
    UnknownPort(PortId),
    /// A VM port's MAC is a group address (or all zeros).
    BadMac(Mac),
    /// A receive queue of 0 frames.
    EmptyReceiveQueue,
    /// A rate limit whose burst cannot pass even one full-size frame.
    BurstTooSmall,
    /// 65,535 ports (or networks) are enough.
    TooMany,
}

/// What [`Switch::transmit`] did with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarded {
    /// Delivered to the one learned port of its destination (or dropped there
    /// because that port's queue was full: see its counters).
    Unicast(PortId),
    /// Offered to every other port of the network; `delivered` of them took it.
    Flooded { delivered: u16 },
    /// Not forwarded.
    Dropped(DropReason),
}

struct Limiter {
    bytes: TokenBucket,
    frames: Option<TokenBucket>,
}

struct Port {
    network: NetworkId,
    kind: PortKind,
    limiter: Option<Limiter>,
    capacity: usize,
    queue: VecDeque<Vec<u8>>,
    stats: PortStats,
}

struct Network {
    name: String,
    table: MacTable,
    stats: NetworkStats,
}

/// All networks and their ports.
pub struct Switch {
    config: SwitchConfig,
    networks: Vec<Network>,
    /// Indexed by [`PortId`]; a removed port leaves `None` (ids are not reused, so
    /// a stale id cannot reach another VM's port).
    ports: Vec<Option<Port>>,
}

/// One port's view for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortReport<'a> {
    pub port: PortId,
    pub network: NetworkId,
    pub network_name: &'a str,
    pub kind: PortKind,
    pub queued: usize,
    pub stats: PortStats,
}

impl Switch {
    pub fn new(config: SwitchConfig) -> Self {
        Self {
            config,
            networks: Vec::new(),
            ports: Vec::new(),
        }
    }

    /// Adds the network `name`.
    pub fn add_network(&mut self, name: &str) -> Result<NetworkId, SwitchError> {
        if self.network(name).is_some() {
            return Err(SwitchError::DuplicateNetwork(name.into()));
        }
        let id = u16::try_from(self.networks.len()).map_err(|_| SwitchError::TooMany)?;
        self.networks.push(Network {
            name: name.into(),
            table: MacTable::new(self.config.table_capacity, self.config.ageing_ns),
            stats: NetworkStats::default(),
        });
        Ok(NetworkId(id))
    }

    /// The network called `name`.
    pub fn network(&self, name: &str) -> Option<NetworkId> {
        self.networks
            .iter()
            .position(|n| n.name == name)
            .map(|i| NetworkId(i as u16))
    }

    /// Attaches a port to `network`; `now_ns` starts its rate limit's buckets full.
    pub fn add_port(
        &mut self,
        network: NetworkId,
        config: PortConfig,
        now_ns: u64,
    ) -> Result<PortId, SwitchError> {
        if usize::from(network.0) >= self.networks.len() {
            return Err(SwitchError::UnknownNetwork(network));
        }
        if let PortKind::Vm { mac, .. } = config.kind {
            if is_multicast(&mac) || mac == [0; 6] {
                return Err(SwitchError::BadMac(mac));
            }
        }
        if config.receive_queue == 0 {
            return Err(SwitchError::EmptyReceiveQueue);
        }
        let limiter = match config.rate_limit {
            None => None,
            Some(l) => {
                if l.burst_bytes < frame::MAX_TAGGED_FRAME as u64
                    || l.frames.is_some_and(|(_, burst)| burst == 0)
                {
                    return Err(SwitchError::BurstTooSmall);
                }
                Some(Limiter {
                    bytes: TokenBucket::new(l.bytes_per_s, l.burst_bytes, now_ns),
                    frames: l.frames.map(|(r, b)| TokenBucket::new(r, b, now_ns)),
                })
            }
        };
        let id = u16::try_from(self.ports.len()).map_err(|_| SwitchError::TooMany)?;
        self.ports.push(Some(Port {
            network,
            kind: config.kind,
            limiter,
            capacity: config.receive_queue,
            queue: VecDeque::new(),
            stats: PortStats::default(),
        }));
        Ok(PortId(id))
    }

    /// Detaches a port: its queued frames and learned addresses go with it.
    pub fn remove_port(&mut self, port: PortId) -> Result<(), SwitchError> {
        let p = self
            .ports
            .get_mut(usize::from(port.0))
            .and_then(Option::take)
            .ok_or(SwitchError::UnknownPort(port))?;
        self.networks[usize::from(p.network.0)]
            .table
            .forget_port(port);
        Ok(())
    }

    fn port_mut(&mut self, port: PortId) -> Result<&mut Port, SwitchError> {
        self.ports
            .get_mut(usize::from(port.0))
            .and_then(Option::as_mut)
            .ok_or(SwitchError::UnknownPort(port))
    }

    fn port(&self, port: PortId) -> Option<&Port> {
        self.ports.get(usize::from(port.0)).and_then(Option::as_ref)
    }

    /// The checks of steps 1-3 (see the crate documentation) for a frame `from`
    /// sends; returns its header or why it is dropped.
    fn admit(p: &mut Port, data: &[u8], now_ns: u64) -> Result<frame::Header, DropReason> {
        let h = frame::parse(data).map_err(|e| match e {
            FrameError::Runt => DropReason::Runt,
            FrameError::Oversized => DropReason::Oversized,
        })?;
        if is_multicast(&h.source) {
            return Err(DropReason::MulticastSource);
        }
        if let PortKind::Vm {
            mac,
            allow_forged_source: false,
        } = p.kind
        {
            if h.source != mac {
                return Err(DropReason::ForgedSource);
            }
        }
        if let Some(l) = &mut p.limiter {
            let len = data.len() as u64;
            let frames_ok = l.frames.as_mut().is_none_or(|b| b.has(1, now_ns));
            if !frames_ok || !l.bytes.has(len, now_ns) {
                return Err(DropReason::RateLimited);
            }
            l.bytes.take(len);
            if let Some(b) = &mut l.frames {
                b.take(1);
            }
        }
        Ok(h)
    }

    /// Puts a copy of `data` in `to`'s receive queue; false when it is full.
    fn deliver(&mut self, to: usize, data: &[u8]) -> bool {
        let Some(p) = self.ports[to].as_mut() else {
            return false;
        };
        if p.queue.len() >= p.capacity {
            p.stats.drop(DropReason::ReceiveQueueFull, data.len());
            return false;
        }
        p.queue.push_back(data.to_vec());
        p.stats.output.add(data.len());
        true
    }

    /// A frame sent by `port` at `now_ns`: checked, learned from, and forwarded
    /// within the port's network (see the crate documentation).
    pub fn transmit(
        &mut self,
        port: PortId,
        data: &[u8],
        now_ns: u64,
    ) -> Result<Forwarded, SwitchError> {
        let p = self.port_mut(port)?;
        p.stats.input.add(data.len());
        let h = match Self::admit(p, data, now_ns) {
            Ok(h) => h,
            Err(reason) => {
                p.stats.drop(reason, data.len());
                return Ok(Forwarded::Dropped(reason));
            }
        };
        let network = p.network;
        let net = &mut self.networks[usize::from(network.0)];
        match net.table.learn(h.source, port, now_ns) {
            Learned::Moved(_) => net.stats.moves += 1,
            Learned::TableFull => net.stats.table_full += 1,
            Learned::New | Learned::Refreshed => {}
        }
        let known = if is_multicast(&h.destination) {
            None
        } else {
            net.table.lookup(&h.destination, now_ns)
        };
        net.stats.table_entries = net.table.len() as u64;
        net.stats.aged_out = net.table.aged_out();
        match known {
            Some(to) if to == port => {
                self.port_mut(port)?
                    .stats
                    .drop(DropReason::Hairpin, data.len());
                Ok(Forwarded::Dropped(DropReason::Hairpin))
            }
            Some(to) => {
                self.networks[usize::from(network.0)].stats.unicast += 1;
                self.deliver(usize::from(to.0), data);
                Ok(Forwarded::Unicast(to))
            }
            None => {
                self.networks[usize::from(network.0)].stats.flooded += 1;
                let mut delivered = 0u16;
                for i in 0..self.ports.len() {
                    let member = self.ports[i].as_ref().is_some_and(|q| q.network == network);
                    if member && i != usize::from(port.0) && self.deliver(i, data) {
                        delivered += 1;
                    }
                }
                Ok(Forwarded::Flooded { delivered })
            }
        }
    }

    /// The oldest frame waiting for `port`'s owner.
    pub fn receive(&mut self, port: PortId) -> Option<Vec<u8>> {
        self.port_mut(port).ok()?.queue.pop_front()
    }

    /// Frames waiting for `port`'s owner.
    pub fn queued(&self, port: PortId) -> usize {
        self.port(port).map_or(0, |p| p.queue.len())
    }

    /// Drops aged-out MAC table entries of every network (the tables also do it
    /// themselves when full; a periodic call keeps the entry counts honest).
    pub fn age(&mut self, now_ns: u64) {
        for n in &mut self.networks {
            n.table.sweep(now_ns);
            n.stats.table_entries = n.table.len() as u64;
            n.stats.aged_out = n.table.aged_out();
        }
    }

    /// The counters of `port`.
    pub fn port_stats(&self, port: PortId) -> Option<PortStats> {
        self.port(port).map(|p| p.stats)
    }

    /// The counters of `network`.
    pub fn network_stats(&self, network: NetworkId) -> Option<NetworkStats> {
        self.networks.get(usize::from(network.0)).map(|n| n.stats)
    }

    /// Every attached port with its counters.
    pub fn ports(&self) -> impl Iterator<Item = PortReport<'_>> + '_ {
        self.ports.iter().enumerate().filter_map(|(i, p)| {
            let p = p.as_ref()?;
            Some(PortReport {
                port: PortId(i as u16),
                network: p.network,
                network_name: &self.networks[usize::from(p.network.0)].name,
                kind: p.kind,
                queued: p.queue.len(),
                stats: p.stats,
            })
        })
    }

    /// Every network: id, name, counters.
    pub fn networks(&self) -> impl Iterator<Item = (NetworkId, &str, NetworkStats)> + '_ {
        self.networks
            .iter()
            .enumerate()
            .map(|(i, n)| (NetworkId(i as u16), n.name.as_str(), n.stats))
    }
}

#[cfg(test)]
mod tests;
