//! The management network in the machine record (version 9): the network the
//! hypervisor's own station joins, its IPv4 address and prefix, and optionally
//! the syslog collector it sends its log to.
//!
//! ```text
//! 0   network name length u32 (1 to NETWORK_NAME_MAX)
//! 4   network name [u8; NETWORK_NAME_MAX], zero-padded
//! 36  address [u8; 4]
//! 40  prefix u8 (1 to 30)
//! 41  flags u8 (bit 0: a syslog collector follows; other bits zero)
//! 42  collector's UDP port u16 (non-zero with bit 0, zero without)
//! 44  collector's address [u8; 4] (zero without bit 0)
//! ```

use crate::{network_name_ok, NETWORK_NAME_MAX};

/// The block's length.
pub const MANAGEMENT_BLOCK: usize = 48;

const NAME: usize = 4;
const ADDRESS: usize = NAME + NETWORK_NAME_MAX;
const PREFIX: usize = ADDRESS + 4;
const FLAGS: usize = PREFIX + 1;
const PORT: usize = FLAGS + 1;
const COLLECTOR: usize = PORT + 2;
const _: () = assert!(COLLECTOR + 4 == MANAGEMENT_BLOCK);
const HAS_SYSLOG: u8 = 1;

/// The hypervisor's place on its management network.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Management {
    name_len: u8,
    name: [u8; NETWORK_NAME_MAX],
    /// The station's IPv4 address ...
    pub address: [u8; 4],
    /// ... and the network's prefix length.
    pub prefix: u8,
    /// The syslog collector's IPv4 address and UDP port.
    pub syslog: Option<([u8; 4], u16)>,
}

impl core::fmt::Debug for Management {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        f.debug_struct("Management")
            .field("network", &self.network())
            .field("address", &self.address)
            .field("prefix", &self.prefix)
            .field("syslog", &self.syslog)
            .finish()
    }
}

/// Whether `a` can be a host's address: not 0.0.0.0/8, loopback, multicast
/// or the limited broadcast.
fn host_address_ok(a: [u8; 4]) -> bool {
    !matches!(a[0], 0 | 127 | 224..=255)
}

/// Whether `address` is a host of its `/prefix` network (neither the network's
/// own address nor its broadcast address).
fn host_of(address: [u8; 4], prefix: u8) -> bool {
    let host_bits = 32 - u32::from(prefix);
    let mask = (1u32 << host_bits) - 1;
    let host = u32::from_be_bytes(address) & mask;
    host != 0 && host != mask
}

impl Management {
    /// `None` unless: `network` is a network name ([`network_name_ok`]),
    /// `prefix` is 1 to 30, `address` a host address of that network, and the
    /// collector (if any) another host of it with a non-zero port.
    pub fn new(
        network: &str,
        address: [u8; 4],
        prefix: u8,
        syslog: Option<([u8; 4], u16)>,
    ) -> Option<Self> {
        if !network_name_ok(network)
            || !(1..=30).contains(&prefix)
            || !host_address_ok(address)
            || !host_of(address, prefix)
        {
            return None;
        }
        if let Some((c, port)) = syslog {
            let net = |a: [u8; 4]| u32::from_be_bytes(a) >> (32 - u32::from(prefix));
            if port == 0 || c == address || !host_of(c, prefix) || net(c) != net(address) {
                return None;
            }
        }
        let mut name = [0; NETWORK_NAME_MAX];
        name[..network.len()].copy_from_slice(network.as_bytes());
        Some(Self {
            name_len: network.len() as u8,
            name,
            address,
            prefix,
            syslog,
        })
    }

    /// The management network's name.
    pub fn network(&self) -> &str {
        // `new` took it as ASCII.
        core::str::from_utf8(&self.name[..usize::from(self.name_len)]).unwrap_or("")
    }

    /// The block as the machine record carries it.
    pub fn encode(&self) -> [u8; MANAGEMENT_BLOCK] {
        let mut b = [0; MANAGEMENT_BLOCK];
        b[..NAME].copy_from_slice(&u32::from(self.name_len).to_le_bytes());
        b[NAME..ADDRESS].copy_from_slice(&self.name);
        b[ADDRESS..PREFIX].copy_from_slice(&self.address);
        b[PREFIX] = self.prefix;
        if let Some((addr, port)) = self.syslog {
            b[FLAGS] = HAS_SYSLOG;
            b[PORT..COLLECTOR].copy_from_slice(&port.to_le_bytes());
            b[COLLECTOR..].copy_from_slice(&addr);
        }
        b
    }

    /// The block read back; `None` when any field is out of bounds, unknown
    /// flags are set, or bytes that must be zero are not.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let b: &[u8; MANAGEMENT_BLOCK] = b.try_into().ok()?;
        let len = u32::from_le_bytes(b[..NAME].try_into().ok()?) as usize;
        let name = b[NAME..ADDRESS].get(..len)?;
        if b[NAME + len..ADDRESS].iter().any(|&x| x != 0) || b[FLAGS] & !HAS_SYSLOG != 0 {
            return None;
        }
        let port = u16::from_le_bytes([b[PORT], b[PORT + 1]]);
        let collector: [u8; 4] = b[COLLECTOR..].try_into().ok()?;
        let syslog = if b[FLAGS] & HAS_SYSLOG != 0 {
            Some((collector, port))
        } else if port != 0 || collector != [0; 4] {
            return None;
        } else {
            None
        };
        Self::new(
            core::str::from_utf8(name).ok()?,
            b[ADDRESS..PREFIX].try_into().ok()?,
            b[PREFIX],
            syslog,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_and_round_trips() {
        let m = Management::new("mgmt", [10, 0, 9, 1], 24, Some(([10, 0, 9, 2], 514))).unwrap();
        assert_eq!(m.network(), "mgmt");
        assert_eq!(Management::decode(&m.encode()), Some(m));
        let plain = Management::new("m", [192, 168, 1, 1], 16, None).unwrap();
        assert_eq!(Management::decode(&plain.encode()), Some(plain));
        for (net, addr, prefix, syslog) in [
            ("", [10, 0, 9, 1], 24, None),
            ("a b", [10, 0, 9, 1], 24, None),
            ("mgmt", [10, 0, 9, 0], 24, None),
            ("mgmt", [10, 0, 9, 255], 24, None),
            ("mgmt", [10, 0, 9, 1], 31, None),
            ("mgmt", [10, 0, 9, 1], 0, None),
            ("mgmt", [127, 0, 0, 1], 8, None),
            ("mgmt", [224, 0, 0, 1], 8, None),
            ("mgmt", [10, 0, 9, 1], 24, Some(([10, 0, 9, 2], 0))),
            ("mgmt", [10, 0, 9, 1], 24, Some(([10, 0, 9, 1], 514))),
            ("mgmt", [10, 0, 9, 1], 24, Some(([10, 0, 8, 2], 514))),
            ("mgmt", [10, 0, 9, 1], 24, Some(([10, 0, 9, 255], 514))),
        ] {
            assert!(
                Management::new(net, addr, prefix, syslog).is_none(),
                "{net} {addr:?}/{prefix} {syslog:?}"
            );
        }
    }

    #[test]
    fn decode_refuses_stray_bytes() {
        let m = Management::new("mgmt", [10, 0, 9, 1], 24, None).unwrap();
        let good = m.encode();
        for (at, v) in [
            (0, 0),
            (0, 33),
            (NAME + 5, b'x'),
            (FLAGS, 2),
            (PORT, 1),
            (COLLECTOR, 1),
            (PREFIX, 31),
        ] {
            let mut b = good;
            b[at] = v;
            assert_eq!(Management::decode(&b), None, "byte {at} = {v}");
        }
        assert_eq!(Management::decode(&good[1..]), None);
    }
}
