//! Ethernet frames as the switch sees them (IEEE 802.3 §3.1): MAC addresses and
//! the checks a frame passes before it is forwarded.
//!
//! Frames carry no preamble and no FCS (virtio-net and NIC drivers hand over
//! frames without them). Sizes:
//!
//! * shorter than the 14-byte header: a runt, dropped (there is no destination to
//!   forward to);
//! * 14 to 59 bytes: accepted as they are, not padded. Ethernet's 60-byte minimum
//!   (64 with the FCS) exists for collision detection on a shared medium; guests'
//!   drivers hand over short frames (a 42-byte ARP request) and expect the NIC to
//!   pad, which a physical uplink's hardware does when it transmits. Padding here
//!   would only copy bytes.
//! * longer than 1514 bytes (1518 with one IEEE 802.1Q tag, EtherType 0x8100 at
//!   offset 12): oversized, dropped. Jumbo frames are not supported.

/// A MAC address (EUI-48), most significant byte first as on the wire.
pub type Mac = [u8; 6];

/// The broadcast address.
pub const BROADCAST: Mac = [0xFF; 6];
/// The Ethernet header: destination, source, EtherType.
pub const HEADER_LEN: usize = 14;
/// The largest untagged frame without FCS (1500-byte payload).
pub const MAX_FRAME: usize = 1514;
/// The largest frame with one 802.1Q tag.
pub const MAX_TAGGED_FRAME: usize = MAX_FRAME + 4;
/// The 802.1Q tag protocol identifier (IEEE 802.1Q §9.5).
pub const ETHERTYPE_VLAN: u16 = 0x8100;

/// Group (multicast or broadcast) addresses have the I/G bit, bit 0 of the first
/// byte, set (IEEE 802-2014 §8.2).
pub fn is_multicast(mac: &Mac) -> bool {
    mac[0] & 1 != 0
}

/// Why a frame is not well formed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Shorter than the Ethernet header.
    Runt,
    /// Longer than [`MAX_FRAME`] ([`MAX_TAGGED_FRAME`] with an 802.1Q tag).
    Oversized,
}

/// A checked frame's addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub destination: Mac,
    pub source: Mac,
}

/// Checks the size rules of this module's header and returns the addresses.
pub fn parse(frame: &[u8]) -> Result<Header, FrameError> {
    if frame.len() < HEADER_LEN {
        return Err(FrameError::Runt);
    }
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let max = if ethertype == ETHERTYPE_VLAN {
        MAX_TAGGED_FRAME
    } else {
        MAX_FRAME
    };
    if frame.len() > max {
        return Err(FrameError::Oversized);
    }
    let mut destination = [0; 6];
    let mut source = [0; 6];
    destination.copy_from_slice(&frame[0..6]);
    source.copy_from_slice(&frame[6..12]);
    Ok(Header {
        destination,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn frame(len: usize, ethertype: u16) -> alloc::vec::Vec<u8> {
        let mut f = vec![0u8; len];
        if len >= HEADER_LEN {
            f[0..6].copy_from_slice(&BROADCAST);
            f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
            f[12..14].copy_from_slice(&ethertype.to_be_bytes());
        }
        f
    }

    #[test]
    fn sizes() {
        assert_eq!(parse(&frame(0, 0)), Err(FrameError::Runt));
        assert_eq!(parse(&frame(13, 0)), Err(FrameError::Runt));
        let h = parse(&frame(14, 0x0800)).unwrap();
        assert_eq!(h.destination, BROADCAST);
        assert_eq!(h.source, [2, 0, 0, 0, 0, 1]);
        assert!(
            parse(&frame(42, 0x0806)).is_ok(),
            "short frames are not padded"
        );
        assert!(parse(&frame(MAX_FRAME, 0x0800)).is_ok());
        assert_eq!(
            parse(&frame(MAX_FRAME + 1, 0x0800)),
            Err(FrameError::Oversized)
        );
        assert!(parse(&frame(MAX_TAGGED_FRAME, ETHERTYPE_VLAN)).is_ok());
        assert_eq!(
            parse(&frame(MAX_TAGGED_FRAME + 1, ETHERTYPE_VLAN)),
            Err(FrameError::Oversized)
        );
    }

    #[test]
    fn group_addresses() {
        assert!(is_multicast(&BROADCAST));
        assert!(is_multicast(&[0x01, 0x00, 0x5E, 0, 0, 1]));
        assert!(is_multicast(&[0x33, 0x33, 0, 0, 0, 1]));
        assert!(!is_multicast(&[0x02, 0, 0, 0, 0, 1]));
    }
}
