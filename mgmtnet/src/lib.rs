//! The hypervisor's own station on its management network, as pure logic
//! (`no_std` + `alloc`, host-tested): no clock (callers pass the time in ns), no
//! I/O (frames go in and out through queues the kernel connects to a `vswitch`
//! port).
//!
//! - [`station`]: the smoltcp interface (MAC, IPv4 address and prefix, ARP and
//!   ICMP echo), the HTTP server of `/metrics`, the syslog sender;
//! - [`queue`]: the frame queues smoltcp sees as its Ethernet device;
//! - [`http`]: request heads judged and responses built (HTTP/1.1, one request
//!   per connection);
//! - [`metrics`]: the [`Metrics`] builder the kernel fills, rendered in the
//!   Prometheus text exposition format 0.0.4;
//! - [`syslog`]: RFC 5424 messages and the bounded ring their records wait in.
#![no_std]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod http;
pub mod metrics;
pub mod queue;
pub mod station;
pub mod syslog;

pub use metrics::{DiskMetrics, Metrics, NicMetrics, VmMetrics};
pub use station::{Answer, Station, StationConfig, StationError, HTTP_PORT};
pub use syslog::{Facility, Record, RecordRing, Severity};

/// A stable, locally administered MAC for the hypervisor's station on
/// `network`: `02:68:76` ("hv") and three bytes of an FNV-1a hash of the
/// network's name, so it differs from the VMs' derived MACs (`52:54:00`-based
/// or `virtio::net::mac_from_name`'s) and stays the same across boots.
pub fn station_mac(network: &str) -> [u8; 6] {
    let mut h: u32 = 0x811c_9dc5;
    for b in network.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let [x, y, z, _] = h.to_be_bytes();
    [0x02, 0x68, 0x76, x, y, z]
}

#[cfg(test)]
mod tests;
