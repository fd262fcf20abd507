//! The responder against frames built by hand here (not by smoltcp), and its
//! replies checked byte by byte with an RFC 1071 checksum written here, so the
//! test does not take the crate's word for the layout or the sums.

use super::*;

const OURS: [u8; 6] = [0x02, 0x68, 0x76, 0x00, 0x00, 0x10];
const HOST_MAC: [u8; 6] = [0x52, 0x55, 0x0a, 0x00, 0x02, 0x02];
const HOST: [u8; 4] = [10, 0, 2, 2];

fn responder() -> Responder {
    Responder::new(OURS, GUEST_ADDRESS, ECHO_PORT)
}

/// The Internet checksum (RFC 1071): the ones' complement of the ones'
/// complement sum of 16-bit big-endian words, an odd byte padded with zero.
fn ones_sum(parts: &[&[u8]]) -> u16 {
    let mut bytes = Vec::new();
    for p in parts {
        bytes.extend_from_slice(p);
    }
    if bytes.len() % 2 == 1 {
        bytes.push(0);
    }
    let mut sum: u32 = 0;
    for w in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    sum as u16
}

fn checksum(parts: &[&[u8]]) -> u16 {
    !ones_sum(parts)
}

fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn arp_request(sender_mac: [u8; 6], sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut f = ethernet([0xFF; 6], sender_mac, 0x0806);
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]); // Ethernet, IPv4, request
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&sender);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f.resize(60, 0); // the minimum frame, as a NIC pads it
    f
}

/// An IPv4 header (no options) for `payload_len` bytes of `protocol`.
fn ipv4_header(src: [u8; 4], dst: [u8; 4], protocol: u8, payload_len: usize) -> Vec<u8> {
    let total = (20 + payload_len) as u16;
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0x12, 0x34, 0x40, 0]); // ident, DF, offset 0
    h.extend_from_slice(&[64, protocol, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let sum = checksum(&[&h]);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h
}

/// The UDP pseudo-header of RFC 768.
fn pseudo(src: [u8; 4], dst: [u8; 4], udp_len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&[0, 17]);
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p
}

fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, data: &[u8], sum: bool) -> Vec<u8> {
    let len = 8 + data.len();
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&(len as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(data);
    if sum {
        let mut c = checksum(&[&pseudo(src, dst, len), &u]);
        // RFC 768: a computed zero is sent as all ones.
        if c == 0 {
            c = 0xFFFF;
        }
        u[6..8].copy_from_slice(&c.to_be_bytes());
    }
    u
}

fn datagram(data: &[u8], sport: u16) -> Vec<u8> {
    let u = udp(HOST, GUEST_ADDRESS, sport, ECHO_PORT, data, true);
    let mut f = ethernet(OURS, HOST_MAC, 0x0800);
    f.extend_from_slice(&ipv4_header(HOST, GUEST_ADDRESS, 17, u.len()));
    f.extend_from_slice(&u);
    f
}

#[test]
fn an_arp_request_for_its_address_gets_a_reply_to_the_asker() {
    let mut out = [0u8; MAX_FRAME];
    let r = responder()
        .answer(&arp_request(HOST_MAC, HOST, GUEST_ADDRESS), &mut out)
        .unwrap();
    assert_eq!(
        r,
        Reply::Arp {
            len: 42,
            asker: HOST
        }
    );
    let mut expected = ethernet(HOST_MAC, OURS, 0x0806);
    expected.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 2]); // reply
    expected.extend_from_slice(&OURS);
    expected.extend_from_slice(&GUEST_ADDRESS);
    expected.extend_from_slice(&HOST_MAC);
    expected.extend_from_slice(&HOST);
    assert_eq!(&out[..42], &expected[..]);
    // Sent to its MAC rather than broadcast: the same.
    let mut unicast = arp_request(HOST_MAC, HOST, GUEST_ADDRESS);
    unicast[..6].copy_from_slice(&OURS);
    assert_eq!(responder().answer(&unicast, &mut out), Ok(r));
}

#[test]
fn a_datagram_to_its_port_comes_back_with_the_same_data_and_right_checksums() {
    for data in [&b"hv-udp-probe 1"[..], b"", b"odd", &[0xA5; 1472]] {
        let frame = datagram(data, 40_000);
        let mut out = [0u8; MAX_FRAME];
        let Ok(Reply::Echo {
            len,
            to,
            data: range,
        }) = responder().answer(&frame, &mut out)
        else {
            panic!("no echo of {} bytes", data.len());
        };
        assert_eq!(to, (HOST, 40_000));
        assert_eq!(len, 14 + 20 + 8 + data.len());
        assert_eq!(&out[range.clone()], data);
        assert_eq!(range.end, len);
        let reply = &out[..len];
        // Ethernet: back to the sender, from us.
        assert_eq!(reply[..12], [HOST_MAC, OURS].concat()[..]);
        assert_eq!(reply[12..14], [0x08, 0x00]);
        // IPv4 (RFC 791): version 4, 20-byte header, the lengths, not a
        // fragment, UDP, from us to the sender, and a header whose ones'
        // complement sum is all ones.
        let ip = &reply[14..34];
        assert_eq!(ip[0], 0x45);
        assert_eq!(
            u16::from_be_bytes([ip[2], ip[3]]) as usize,
            20 + 8 + data.len()
        );
        assert_eq!(u16::from_be_bytes([ip[6], ip[7]]) & 0x3FFF, 0);
        assert!(ip[8] > 0);
        assert_eq!(ip[9], 17);
        assert_eq!(ip[12..16], GUEST_ADDRESS);
        assert_eq!(ip[16..20], HOST);
        assert_eq!(ones_sum(&[ip]), 0xFFFF);
        // UDP (RFC 768): the ports swapped, the length, a checksum over the
        // pseudo-header that sums to all ones (and is not the "none" zero).
        let u = &reply[34..];
        assert_eq!(u16::from_be_bytes([u[0], u[1]]), ECHO_PORT);
        assert_eq!(u16::from_be_bytes([u[2], u[3]]), 40_000);
        assert_eq!(u16::from_be_bytes([u[4], u[5]]) as usize, u.len());
        assert_ne!(u16::from_be_bytes([u[6], u[7]]), 0);
        assert_eq!(
            ones_sum(&[&pseudo(GUEST_ADDRESS, HOST, u.len()), u]),
            0xFFFF
        );
    }
}

#[test]
fn a_datagram_without_a_checksum_is_echoed_and_padding_is_not_data() {
    let u = udp(HOST, GUEST_ADDRESS, 5000, ECHO_PORT, b"ab", false);
    let mut frame = ethernet(OURS, HOST_MAC, 0x0800);
    frame.extend_from_slice(&ipv4_header(HOST, GUEST_ADDRESS, 17, u.len()));
    frame.extend_from_slice(&u);
    frame.resize(60, 0xEE);
    let mut out = [0u8; MAX_FRAME];
    let Ok(Reply::Echo { data, .. }) = responder().answer(&frame, &mut out) else {
        panic!("no echo");
    };
    assert_eq!(&out[data], b"ab");
}

#[test]
fn everything_else_is_ignored_with_the_reason() {
    let r = responder();
    let mut out = [0u8; MAX_FRAME];
    let mut answer = |f: &[u8]| r.answer(f, &mut out).unwrap_err();
    let good = datagram(b"x", 40_000);
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut g = good.clone();
        f(&mut g);
        g
    };
    // The frame and its Ethernet header.
    assert_eq!(answer(&[]), Ignored::BadFrame);
    assert_eq!(answer(&good[..13]), Ignored::BadFrame);
    assert_eq!(answer(&with(&|g| g[0] = 0x04)), Ignored::NotOurMac);
    assert_eq!(
        answer(&with(&|g| g[..6].copy_from_slice(&[0xFF; 6]))),
        Ignored::NotOurMac
    );
    assert_eq!(answer(&with(&|g| g[6] = 0x01)), Ignored::BadSourceMac);
    assert_eq!(
        answer(&with(&|g| g[12..14].copy_from_slice(&[0x86, 0xDD]))),
        Ignored::OtherEtherType
    );
    // ARP.
    assert_eq!(
        answer(&arp_request(HOST_MAC, HOST, [10, 0, 2, 15])),
        Ignored::ArpNotForUs
    );
    let mut reply = arp_request(HOST_MAC, HOST, GUEST_ADDRESS);
    reply[21] = 2;
    assert_eq!(answer(&reply), Ignored::ArpNotForUs);
    let mut other_hw = arp_request(HOST_MAC, HOST, GUEST_ADDRESS);
    other_hw[15] = 6; // IEEE 802 hardware
    assert_eq!(answer(&other_hw), Ignored::BadArp);
    assert_eq!(
        answer(&arp_request(HOST_MAC, HOST, GUEST_ADDRESS)[..30]),
        Ignored::BadArp
    );
    let mut spoofed = arp_request(HOST_MAC, HOST, GUEST_ADDRESS);
    spoofed[22..28].copy_from_slice(&[0xFF; 6]); // the sender hardware address
    assert_eq!(answer(&spoofed), Ignored::BadSourceMac);
    // IPv4.
    assert_eq!(answer(&good[..14 + 19]), Ignored::BadIpv4);
    assert_eq!(answer(&with(&|g| g[14 + 10] ^= 1)), Ignored::BadIpv4); // checksum
    assert_eq!(answer(&with(&|g| g[14] = 0x65)), Ignored::BadIpv4); // version 6
    assert_eq!(answer(&with(&|g| g[14 + 3] = 0xFF)), Ignored::BadIpv4); // longer than the frame
    let fragment = |flags: u8, offset: u8| {
        let u = udp(HOST, GUEST_ADDRESS, 40_000, ECHO_PORT, b"x", true);
        let mut h = ipv4_header(HOST, GUEST_ADDRESS, 17, u.len());
        h[6] = flags;
        h[7] = offset;
        h[10..12].copy_from_slice(&[0, 0]);
        let sum = checksum(&[&h]);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        let mut f = ethernet(OURS, HOST_MAC, 0x0800);
        f.extend_from_slice(&h);
        f.extend_from_slice(&u);
        f
    };
    assert_eq!(answer(&fragment(0x20, 0)), Ignored::Fragment); // more fragments
    assert_eq!(answer(&fragment(0x00, 1)), Ignored::Fragment); // an offset
    let to = |dst: [u8; 4], src: [u8; 4], protocol: u8| {
        let u = udp(src, dst, 40_000, ECHO_PORT, b"x", true);
        let mut f = ethernet(OURS, HOST_MAC, 0x0800);
        f.extend_from_slice(&ipv4_header(src, dst, protocol, u.len()));
        f.extend_from_slice(&u);
        f
    };
    assert_eq!(
        answer(&to([10, 0, 2, 15], HOST, 17)),
        Ignored::NotOurAddress
    );
    assert_eq!(
        answer(&to(GUEST_ADDRESS, [255; 4], 17)),
        Ignored::BadSourceAddress
    );
    assert_eq!(
        answer(&to(GUEST_ADDRESS, [224, 0, 0, 1], 17)),
        Ignored::BadSourceAddress
    );
    assert_eq!(
        answer(&to(GUEST_ADDRESS, [0; 4], 17)),
        Ignored::BadSourceAddress
    );
    assert_eq!(answer(&to(GUEST_ADDRESS, HOST, 6)), Ignored::NotUdp);
    // UDP.
    let udp_at = 14 + 20;
    assert_eq!(answer(&with(&|g| g[udp_at + 7] ^= 1)), Ignored::BadUdp); // checksum
    assert_eq!(answer(&with(&|g| g[udp_at + 8] ^= 1)), Ignored::BadUdp); // data changed
    assert_eq!(answer(&with(&|g| g[udp_at + 5] = 4)), Ignored::BadUdp); // length < 8
    assert_eq!(answer(&datagram(b"x", 0)), Ignored::NoSourcePort);
    assert_eq!(answer(&datagram(b"x", ECHO_PORT)), Ignored::FromEchoPort);
    let other_port = {
        let u = udp(HOST, GUEST_ADDRESS, 40_000, 9, b"x", true);
        let mut f = ethernet(OURS, HOST_MAC, 0x0800);
        f.extend_from_slice(&ipv4_header(HOST, GUEST_ADDRESS, 17, u.len()));
        f.extend_from_slice(&u);
        f
    };
    assert_eq!(answer(&other_port), Ignored::OtherPort);
    // A reply that does not fit the caller's buffer.
    let mut small = [0u8; 40];
    assert_eq!(r.answer(&good, &mut small), Err(Ignored::TooLarge));
    assert_eq!(
        r.answer(&arp_request(HOST_MAC, HOST, GUEST_ADDRESS), &mut small),
        Err(Ignored::TooLarge)
    );
}

/// A small xorshift generator: the same inputs on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Arbitrary bytes, and valid frames with bytes flipped or cut short: never a
/// panic, and an echo only ever carries data of the received frame's length.
#[test]
fn arbitrary_frames_never_panic() {
    let r = responder();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let seeds = [
        datagram(b"hv-udp-probe", 40_000),
        arp_request(HOST_MAC, HOST, GUEST_ADDRESS),
    ];
    let mut out = [0u8; MAX_FRAME];
    for i in 0..20_000 {
        let frame: Vec<u8> = if i % 4 == 0 {
            let len = (rng.next() % 1600) as usize;
            (0..len).map(|_| rng.next() as u8).collect()
        } else {
            let mut f = seeds[i % 2].clone();
            for _ in 0..1 + rng.next() % 4 {
                let at = (rng.next() as usize) % f.len();
                f[at] ^= 1 << (rng.next() % 8);
            }
            let cut = (rng.next() as usize) % (f.len() + 1);
            f.truncate(if i % 3 == 0 { cut } else { f.len() });
            f
        };
        if let Ok(Reply::Echo { len, data, .. }) = r.answer(&frame, &mut out) {
            assert!(len <= frame.len() && data.end == len, "{frame:?}");
        }
    }
}
