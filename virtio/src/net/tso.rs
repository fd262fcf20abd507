//! TCP segmentation for IPv4 (virtio-net's VIRTIO_NET_F_HOST_TSO4, virtio 1.2
//! §5.1.6.2): a transmit chain with `gso_type` TCPV4 carries one TCP segment of up
//! to 64 KiB, and the device cuts it into frames of at most `gso_size` payload
//! bytes each, as a NIC's TSO engine does.
//!
//! Why the device does it: each frame the guest hands over costs it a notification
//! and a used-buffer interrupt, that is exits, and a pass through its TCP/IP stack;
//! with TSO the guest makes one pass and one notification per 64 KiB, and the
//! receiver gets the segments back to back, which its GRO merges again.
//!
//! Every segment gets the headers of the large one with (RFC 791, RFC 9293; the
//! same rules as Linux's software GSO, `tcp_gso_segment`):
//! - IPv4 total length of the segment, identification incremented per segment, the
//!   header checksum recomputed;
//! - TCP sequence number advanced by the payload before it; CWR only in the first
//!   segment, FIN and PSH only in the last; the checksum over the pseudo-header
//!   and the segment computed in full (the driver left only the pseudo-header sum
//!   in the field, NEEDS_CSUM).
//!
//! The headers are parsed from the frame itself (`hdr_len` is only a hint without
//! VIRTIO_NET_F_GUEST_HDRLEN, which is not offered), and anything that is not one
//! unfragmented IPv4 packet with a TCP header at `csum_start` is refused.

use alloc::vec::Vec;

/// Ethernet header, and with one 802.1Q tag.
const ETH: usize = 14;
const ETH_VLAN: usize = 18;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_VLAN: u16 = 0x8100;
const PROTO_TCP: u8 = 6;
/// TCP flags (RFC 9293 §3.1, RFC 3168 §6.1 for CWR).
const FIN: u8 = 0x01;
const PSH: u8 = 0x08;
const CWR: u8 = 0x80;
/// The TCP checksum's offset in the TCP header: `csum_offset` must name it.
pub const TCP_CSUM_OFFSET: usize = 16;
/// The smallest MSS accepted (Linux's TCP_MIN_MSS). It bounds the segments one
/// chain can turn into: at most 65535 / 88 = 745, whatever the guest asks.
pub const MIN_MSS: usize = 88;
/// The largest IPv4 packet (total length is 16 bits).
const MAX_IP_PACKET: usize = 65_535;
/// The most frames one packet becomes (the largest packet at [`MIN_MSS`]).
pub const MAX_SEGMENTS: usize = MAX_IP_PACKET.div_ceil(MIN_MSS);

/// Why a TCPV4 chain was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TsoError {
    /// Not an IPv4 packet (after at most one 802.1Q tag), or its header is cut
    /// short or malformed.
    NotIpv4,
    /// A fragment (MF set or a fragment offset): TCP segments are never fragments.
    Fragment,
    /// The IPv4 protocol is not TCP, or the TCP header is cut short or malformed.
    NotTcp,
    /// `csum_start`/`csum_offset` do not name the TCP header's checksum.
    BadChecksumPlace,
    /// `gso_size` below [`MIN_MSS`], or headers plus `gso_size` over the frame limit.
    BadMss,
    /// The IPv4 packet is longer than 65535 bytes.
    TooLong,
}

/// The one's complement sum of `data` as 16-bit big-endian words (an odd last byte
/// padded with 0), not yet folded or inverted (RFC 1071).
fn sum16(data: &[u8], mut sum: u64) -> u64 {
    let (words, rest) = data.as_chunks::<2>();
    sum += words
        .iter()
        .map(|w| u64::from(u16::from_be_bytes(*w)))
        .sum::<u64>();
    if let [last] = rest {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// The Internet checksum from a [`sum16`] total.
fn fold(mut sum: u64) -> u16 {
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Cuts `frame` (Ethernet, IPv4, TCP) into frames of at most `mss` payload bytes,
/// none longer than `max_frame`, with the headers fixed up as the module says.
/// `csum_start` and `csum_offset` are the virtio header's.
pub fn segment(
    frame: &[u8],
    csum_start: usize,
    csum_offset: usize,
    mss: usize,
    max_frame: usize,
) -> Result<Vec<Vec<u8>>, TsoError> {
    if frame.len() < ETH {
        return Err(TsoError::NotIpv4);
    }
    let ip = match be16(frame, 12) {
        ETHERTYPE_IPV4 => ETH,
        ETHERTYPE_VLAN if frame.len() >= ETH_VLAN && be16(frame, 16) == ETHERTYPE_IPV4 => ETH_VLAN,
        _ => return Err(TsoError::NotIpv4),
    };
    let Some(&vihl) = frame.get(ip) else {
        return Err(TsoError::NotIpv4);
    };
    let ihl = usize::from(vihl & 0x0F) * 4;
    if vihl >> 4 != 4 || ihl < 20 || frame.len() < ip + ihl {
        return Err(TsoError::NotIpv4);
    }
    if frame.len() - ip > MAX_IP_PACKET {
        return Err(TsoError::TooLong);
    }
    // Flags and fragment offset: MF (0x2000) or any offset makes it a fragment.
    if be16(frame, ip + 6) & 0x3FFF != 0 {
        return Err(TsoError::Fragment);
    }
    if frame[ip + 9] != PROTO_TCP {
        return Err(TsoError::NotTcp);
    }
    let tcp = ip + ihl;
    if csum_start != tcp || csum_offset != TCP_CSUM_OFFSET {
        return Err(TsoError::BadChecksumPlace);
    }
    let Some(&doff) = frame.get(tcp + 12) else {
        return Err(TsoError::NotTcp);
    };
    let thl = usize::from(doff >> 4) * 4;
    let headers = tcp + thl;
    if thl < 20 || frame.len() < headers {
        return Err(TsoError::NotTcp);
    }
    if mss < MIN_MSS || headers + mss > max_frame {
        return Err(TsoError::BadMss);
    }
    let payload = &frame[headers..];
    let id = be16(frame, ip + 4);
    let seq = u32::from_be_bytes(frame[tcp + 4..tcp + 8].try_into().unwrap());
    let flags = frame[tcp + 13];
    // A segment without payload (a bare FIN or ACK sent as GSO) is one frame.
    let count = payload.len().div_ceil(mss).max(1);
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let chunk = payload
            .get(i * mss..)
            .map_or(&[][..], |p| &p[..p.len().min(mss)]);
        let mut f = Vec::with_capacity(headers + chunk.len());
        f.extend_from_slice(&frame[..headers]);
        f.extend_from_slice(chunk);
        // IPv4: total length, identification, header checksum.
        let total = (ihl + thl + chunk.len()) as u16;
        f[ip + 2..ip + 4].copy_from_slice(&total.to_be_bytes());
        f[ip + 4..ip + 6].copy_from_slice(&id.wrapping_add(i as u16).to_be_bytes());
        f[ip + 10..ip + 12].copy_from_slice(&[0, 0]);
        let ip_sum = fold(sum16(&f[ip..tcp], 0));
        f[ip + 10..ip + 12].copy_from_slice(&ip_sum.to_be_bytes());
        // TCP: sequence number, flags, checksum.
        let s = seq.wrapping_add((i * mss) as u32);
        f[tcp + 4..tcp + 8].copy_from_slice(&s.to_be_bytes());
        let mut fl = flags;
        if i > 0 {
            fl &= !CWR;
        }
        if i + 1 < count {
            fl &= !(FIN | PSH);
        }
        f[tcp + 13] = fl;
        f[tcp + 16..tcp + 18].copy_from_slice(&[0, 0]);
        let tcp_len = (thl + chunk.len()) as u16;
        let mut pseudo = [0u8; 12];
        pseudo[0..8].copy_from_slice(&f[ip + 12..ip + 20]);
        pseudo[9] = PROTO_TCP;
        pseudo[10..12].copy_from_slice(&tcp_len.to_be_bytes());
        let tcp_sum = fold(sum16(&f[tcp..], sum16(&pseudo, 0)));
        f[tcp + 16..tcp + 18].copy_from_slice(&tcp_sum.to_be_bytes());
        out.push(f);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    const SRC: [u8; 4] = [10, 0, 0, 2];
    const DST: [u8; 4] = [10, 0, 0, 1];

    /// Ethernet + IPv4 (with `ip_opts` bytes of options) + TCP (20 bytes + 12 of
    /// options) + `payload` bytes, as Linux hands a TSO packet over: total length
    /// of the whole, the checksums left for the device.
    fn packet(payload: usize, ip_opts: usize, flags: u8) -> Vec<u8> {
        let ihl = 20 + ip_opts;
        let thl = 32;
        let mut f = vec![0u8; ETH + ihl + thl + payload];
        f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let ip = ETH;
        f[ip] = 0x40 | (ihl / 4) as u8;
        f[ip + 2..ip + 4].copy_from_slice(&((ihl + thl + payload) as u16).to_be_bytes());
        f[ip + 4..ip + 6].copy_from_slice(&0xFFFEu16.to_be_bytes());
        f[ip + 6] = 0x40; // DF
        f[ip + 8] = 64;
        f[ip + 9] = PROTO_TCP;
        f[ip + 12..ip + 16].copy_from_slice(&SRC);
        f[ip + 16..ip + 20].copy_from_slice(&DST);
        let tcp = ip + ihl;
        f[tcp..tcp + 2].copy_from_slice(&40000u16.to_be_bytes());
        f[tcp + 2..tcp + 4].copy_from_slice(&5001u16.to_be_bytes());
        f[tcp + 4..tcp + 8].copy_from_slice(&0xFFFF_FF00u32.to_be_bytes());
        f[tcp + 12] = ((thl / 4) as u8) << 4;
        f[tcp + 13] = flags;
        for (k, b) in f[tcp + thl..].iter_mut().enumerate() {
            *b = (k % 251) as u8;
        }
        f
    }

    /// What a receiver checks: both checksums verify (sum to all ones).
    fn checksums_verify(f: &[u8]) -> bool {
        let ihl = usize::from(f[ETH] & 0xF) * 4;
        let tcp = ETH + ihl;
        let mut pseudo = [0u8; 12];
        pseudo[0..8].copy_from_slice(&f[ETH + 12..ETH + 20]);
        pseudo[9] = PROTO_TCP;
        pseudo[10..12].copy_from_slice(&((f.len() - tcp) as u16).to_be_bytes());
        fold(sum16(&f[ETH..tcp], 0)) == 0 && fold(sum16(&f[tcp..], sum16(&pseudo, 0))) == 0
    }

    #[test]
    fn a_large_segment_becomes_frames_with_consistent_headers() {
        let (mss, payload) = (1448, 3 * 1448 + 100);
        let big = packet(payload, 0, PSH | FIN | CWR | 0x10);
        let tcp = ETH + 20;
        let out = segment(&big, tcp, TCP_CSUM_OFFSET, mss, 1514).unwrap();
        assert_eq!(out.len(), 4);
        let mut data = Vec::new();
        for (i, f) in out.iter().enumerate() {
            let last = i == 3;
            let len = if last { 100 } else { mss };
            assert_eq!(f.len(), ETH + 20 + 32 + len);
            assert!(f.len() <= 1514);
            assert_eq!(be16(f, ETH + 2) as usize, f.len() - ETH, "total length");
            assert_eq!(
                be16(f, ETH + 4),
                0xFFFEu16.wrapping_add(i as u16),
                "id wraps"
            );
            let seq = u32::from_be_bytes(f[tcp + 4..tcp + 8].try_into().unwrap());
            assert_eq!(
                seq,
                0xFFFF_FF00u32.wrapping_add((i * mss) as u32),
                "seq wraps"
            );
            let fl = f[tcp + 13];
            assert_eq!(fl & 0x10, 0x10, "ACK everywhere");
            assert_eq!(fl & CWR != 0, i == 0, "CWR only first");
            assert_eq!(fl & (FIN | PSH) == FIN | PSH, last, "FIN, PSH only last");
            // Only total length, id and checksum change in the IPv4 header; only
            // seq, flags and checksum in the TCP header.
            let changed = [
                ETH + 2..ETH + 6,
                ETH + 10..ETH + 12,
                tcp + 4..tcp + 8,
                tcp + 13..tcp + 14,
                tcp + 16..tcp + 18,
            ];
            for k in 0..tcp + 32 {
                if !changed.iter().any(|r| r.contains(&k)) {
                    assert_eq!(f[k], big[k], "byte {k} of segment {i}");
                }
            }
            assert!(checksums_verify(f), "segment {i}");
            data.extend_from_slice(&f[tcp + 32..]);
        }
        assert_eq!(&data[..], &big[tcp + 32..], "the payload, in order, once");
    }

    #[test]
    fn options_vlan_and_small_packets() {
        // IPv4 options are copied into every segment.
        let big = packet(1000, 8, 0x10);
        let out = segment(&big, ETH + 28, TCP_CSUM_OFFSET, 600, 1514).unwrap();
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|f| checksums_verify(f) && f[ETH] == 0x47));
        // One 802.1Q tag.
        let plain = packet(2000, 0, 0x10);
        let mut tagged = plain[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
        tagged.extend_from_slice(&plain[12..]);
        let out = segment(&tagged, ETH_VLAN + 20, TCP_CSUM_OFFSET, 1448, 1518).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].len(), 1518);
        assert_eq!(&out[1][12..16], &[0x81, 0x00, 0x00, 0x05]);
        // Payload no larger than the MSS, or none: one frame, checksums complete.
        for payload in [0, 500] {
            let out = segment(
                &packet(payload, 0, 0x11),
                ETH + 20,
                TCP_CSUM_OFFSET,
                1448,
                1514,
            )
            .unwrap();
            assert_eq!(out.len(), 1);
            assert!(checksums_verify(&out[0]));
            assert_eq!(out[0][ETH + 20 + 13], 0x11, "FIN kept on the only segment");
        }
    }

    #[test]
    fn what_is_not_one_unfragmented_tcp_over_ipv4_packet_is_refused() {
        let good = packet(3000, 0, 0x10);
        let tcp = ETH + 20;
        let seg = |f: &[u8], start, off, mss, max| segment(f, start, off, mss, max);
        let mut f = good.clone();
        f[12..14].copy_from_slice(&0x86DDu16.to_be_bytes());
        assert_eq!(seg(&f, tcp, 16, 1448, 1514), Err(TsoError::NotIpv4));
        let mut f = good.clone();
        f[ETH] = 0x44; // IHL 4
        assert_eq!(seg(&f, tcp, 16, 1448, 1514), Err(TsoError::NotIpv4));
        assert_eq!(
            seg(&good[..ETH + 10], tcp, 16, 1448, 1514),
            Err(TsoError::NotIpv4)
        );
        assert_eq!(
            seg(&good[..10], tcp, 16, 1448, 1514),
            Err(TsoError::NotIpv4)
        );
        let mut f = good.clone();
        f[ETH + 6] = 0x20; // MF
        assert_eq!(seg(&f, tcp, 16, 1448, 1514), Err(TsoError::Fragment));
        let mut f = good.clone();
        f[ETH + 9] = 17;
        assert_eq!(seg(&f, tcp, 16, 1448, 1514), Err(TsoError::NotTcp));
        let mut f = good.clone();
        f[tcp + 12] = 0x40; // data offset 4
        assert_eq!(seg(&f, tcp, 16, 1448, 1514), Err(TsoError::NotTcp));
        assert_eq!(
            seg(&good[..tcp + 20], tcp, 16, 1448, 1514),
            Err(TsoError::NotTcp)
        );
        assert_eq!(
            seg(&good, tcp + 1, 16, 1448, 1514),
            Err(TsoError::BadChecksumPlace)
        );
        assert_eq!(
            seg(&good, tcp, 6, 1448, 1514),
            Err(TsoError::BadChecksumPlace)
        );
        assert_eq!(
            seg(&good, tcp, 16, MIN_MSS - 1, 1514),
            Err(TsoError::BadMss)
        );
        assert_eq!(seg(&good, tcp, 16, 1449, 1514), Err(TsoError::BadMss));
        assert_eq!(seg(&good, tcp, 16, 0, 1514), Err(TsoError::BadMss));
        let huge = packet(MAX_IP_PACKET, 0, 0x10);
        assert_eq!(seg(&huge, tcp, 16, 1448, 1514), Err(TsoError::TooLong));
        // The smallest MSS bounds the segments of the largest packet.
        let most = packet(MAX_IP_PACKET - 52, 0, 0x10);
        let out = seg(&most, tcp, 16, MIN_MSS, 1514).unwrap();
        assert_eq!(out.len(), (MAX_IP_PACKET - 52).div_ceil(MIN_MSS));
        assert!(out.iter().all(|f| checksums_verify(f)));
    }
}
