//! An Echo Protocol responder (RFC 862, UDP based: "any UDP datagram received is
//! sent back as an answer") over raw Ethernet frames, as pure logic: a frame in,
//! at most one frame out, no clock, no I/O, no allocation. The `udpecho64` test
//! guest runs it over its virtio-net NIC, so that a UDP forward from the host
//! (`cargo xtask run --forward udp:HOSTPORT=udpecho64:7`) has something in a VM
//! that answers: the Linux guest's busybox has no UDP listener.
//!
//! [`Responder::answer`] takes one received frame and writes the reply:
//! - an ARP request (RFC 826) for the responder's address gets the ARP reply the
//!   sender needs before it can send it a datagram;
//! - an IPv4 datagram (RFC 791; header checksum checked, fragments refused) to
//!   the responder's MAC and address, carrying UDP (RFC 768; checksum checked
//!   unless the sender sent none, which RFC 768 allows over IPv4) to its port, is
//!   sent back to its source address and port with the same data, checksums
//!   computed anew (not to port 0, nor to another echo port: two echo servers
//!   would answer each other forever);
//! - anything else is [`Ignored`] with the reason, never a panic: the frames
//!   come from the network.
//!
//! Headers are parsed and emitted with `smoltcp::wire` (see Cargo.toml).
#![cfg_attr(not(test), no_std)]

use core::ops::Range;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, IpAddress, IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr,
    ETHERNET_HEADER_LEN, UDP_HEADER_LEN,
};

/// The Echo Protocol's port (RFC 862).
pub const ECHO_PORT: u16 = 7;

/// The address the `udpecho64` test guest answers at, on QEMU's user network
/// (10.0.2.0/24) beside the uplink test's Linux VM (.15) and the hypervisor's
/// station (.10). A tiny guest takes no command line, so it cannot be told
/// another: its NIC's `ip` in the configuration must be this one.
pub const GUEST_ADDRESS: [u8; 4] = [10, 0, 2, 16];

/// The largest frame a reply can be: Ethernet header and a 1500-byte IPv4
/// datagram (no frame check sequence: the NIC adds it).
pub const MAX_FRAME: usize = ETHERNET_HEADER_LEN + 1500;

/// The IPv4 time to live of the replies (RFC 1700's recommended default).
const TTL: u8 = 64;

/// Who answers: the NIC's MAC, the address it answers ARP and IPv4 for, the
/// UDP port it echoes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Responder {
    mac: EthernetAddress,
    address: Ipv4Address,
    port: u16,
}

/// What [`Responder::answer`] wrote to its output buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// An ARP reply of `len` bytes, to `asker` (its IPv4 address).
    Arp { len: usize, asker: [u8; 4] },
    /// An echoed datagram: a frame of `len` bytes back to `to` (address and
    /// port), whose UDP data is `out[data]`.
    Echo {
        len: usize,
        to: ([u8; 4], u16),
        data: Range<usize>,
    },
}

/// Why a frame got no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ignored {
    /// Shorter than an Ethernet header, or malformed at its Ethernet layer.
    BadFrame,
    /// Not to this responder's MAC (nor, for ARP, to broadcast).
    NotOurMac,
    /// From a broadcast or multicast MAC, which no reply may go to.
    BadSourceMac,
    /// Neither ARP nor IPv4 (IPv6, LLDP, ...).
    OtherEtherType,
    /// An ARP packet that is malformed or not Ethernet/IPv4.
    BadArp,
    /// An ARP reply, or a request for another address.
    ArpNotForUs,
    /// A malformed IPv4 header: too short, bad length, bad checksum, not version 4.
    BadIpv4,
    /// A fragment: this responder does not reassemble.
    Fragment,
    /// To another IPv4 address.
    NotOurAddress,
    /// From an address no reply may go to: broadcast, multicast, unspecified
    /// (RFC 1122 §3.2.1.3: such a source is invalid).
    BadSourceAddress,
    /// IPv4 carrying something other than UDP.
    NotUdp,
    /// A malformed UDP header: too short, bad length, bad checksum, port 0.
    BadUdp,
    /// To another UDP port.
    OtherPort,
    /// From UDP port 0: the sender expects no reply (RFC 768).
    NoSourcePort,
    /// From the echo port itself: another echo server, which would answer the
    /// answer, and so on forever (the classic echo loop, CVE-1999-0103).
    FromEchoPort,
    /// The reply does not fit the output buffer.
    TooLarge,
}

impl Responder {
    pub fn new(mac: [u8; 6], address: [u8; 4], port: u16) -> Self {
        Self {
            mac: EthernetAddress(mac),
            address: Ipv4Address::from(address),
            port,
        }
    }

    /// Answers `frame` (an Ethernet frame without its frame check sequence, as a
    /// NIC hands it over; padding after the IPv4 datagram is allowed) into
    /// `out`, or says why not.
    pub fn answer(&self, frame: &[u8], out: &mut [u8]) -> Result<Reply, Ignored> {
        let eth = EthernetFrame::new_checked(frame).map_err(|_| Ignored::BadFrame)?;
        let eth = EthernetRepr::parse(&eth).map_err(|_| Ignored::BadFrame)?;
        if !eth.src_addr.is_unicast() {
            return Err(Ignored::BadSourceMac);
        }
        let payload = &frame[ETHERNET_HEADER_LEN..];
        match eth.ethertype {
            EthernetProtocol::Arp if eth.dst_addr == self.mac || eth.dst_addr.is_broadcast() => {
                self.arp(payload, out)
            }
            EthernetProtocol::Ipv4 if eth.dst_addr == self.mac => {
                self.udp(eth.src_addr, payload, out)
            }
            EthernetProtocol::Arp | EthernetProtocol::Ipv4 => Err(Ignored::NotOurMac),
            _ => Err(Ignored::OtherEtherType),
        }
    }

    /// RFC 826: a request for our address gets a reply to the requester.
    fn arp(&self, payload: &[u8], out: &mut [u8]) -> Result<Reply, Ignored> {
        let packet = ArpPacket::new_checked(payload).map_err(|_| Ignored::BadArp)?;
        let ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
            ..
        } = ArpRepr::parse(&packet).map_err(|_| Ignored::BadArp)?
        else {
            return Err(Ignored::BadArp);
        };
        if operation != ArpOperation::Request || target_protocol_addr != self.address {
            return Err(Ignored::ArpNotForUs);
        }
        if !source_hardware_addr.is_unicast() {
            return Err(Ignored::BadSourceMac);
        }
        let reply = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr: self.mac,
            source_protocol_addr: self.address,
            target_hardware_addr: source_hardware_addr,
            target_protocol_addr: source_protocol_addr,
        };
        let len = ETHERNET_HEADER_LEN + reply.buffer_len();
        let out = out.get_mut(..len).ok_or(Ignored::TooLarge)?;
        let mut frame = EthernetFrame::new_unchecked(&mut *out);
        EthernetRepr {
            src_addr: self.mac,
            dst_addr: source_hardware_addr,
            ethertype: EthernetProtocol::Arp,
        }
        .emit(&mut frame);
        reply.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
        Ok(Reply::Arp {
            len,
            asker: source_protocol_addr.octets(),
        })
    }

    /// RFC 862 over RFC 768/791: the datagram's data back to where it came from.
    fn udp(&self, mac: EthernetAddress, payload: &[u8], out: &mut [u8]) -> Result<Reply, Ignored> {
        let ip = Ipv4Packet::new_checked(payload).map_err(|_| Ignored::BadIpv4)?;
        // Said before the parse, which refuses fragments without saying why.
        if ip.more_frags() || ip.frag_offset() != 0 {
            return Err(Ignored::Fragment);
        }
        let caps = ChecksumCapabilities::default();
        let ip_repr = Ipv4Repr::parse(&ip, &caps).map_err(|_| Ignored::BadIpv4)?;
        if ip_repr.dst_addr != self.address {
            return Err(Ignored::NotOurAddress);
        }
        let source = ip_repr.src_addr;
        if source.is_broadcast() || source.is_multicast() || source.is_unspecified() {
            return Err(Ignored::BadSourceAddress);
        }
        if ip_repr.next_header != IpProtocol::Udp {
            return Err(Ignored::NotUdp);
        }
        let udp = UdpPacket::new_checked(ip.payload()).map_err(|_| Ignored::BadUdp)?;
        let (src, dst) = (IpAddress::Ipv4(source), IpAddress::Ipv4(self.address));
        let udp_repr = UdpRepr::parse(&udp, &src, &dst, &caps).map_err(|_| Ignored::BadUdp)?;
        if udp_repr.dst_port != self.port {
            return Err(Ignored::OtherPort);
        }
        if udp_repr.src_port == 0 {
            return Err(Ignored::NoSourcePort);
        }
        if udp_repr.src_port == self.port {
            return Err(Ignored::FromEchoPort);
        }
        let data = udp.payload();
        let reply_ip = Ipv4Repr {
            src_addr: self.address,
            dst_addr: source,
            next_header: IpProtocol::Udp,
            payload_len: UDP_HEADER_LEN + data.len(),
            hop_limit: TTL,
        };
        let ip_start = ETHERNET_HEADER_LEN;
        let udp_start = ip_start + reply_ip.buffer_len();
        let len = udp_start + reply_ip.payload_len;
        if len > MAX_FRAME {
            return Err(Ignored::TooLarge);
        }
        let out = out.get_mut(..len).ok_or(Ignored::TooLarge)?;
        EthernetRepr {
            src_addr: self.mac,
            dst_addr: mac,
            ethertype: EthernetProtocol::Ipv4,
        }
        .emit(&mut EthernetFrame::new_unchecked(&mut *out));
        reply_ip.emit(&mut Ipv4Packet::new_unchecked(&mut out[ip_start..]), &caps);
        UdpRepr {
            src_port: self.port,
            dst_port: udp_repr.src_port,
        }
        .emit(
            &mut UdpPacket::new_unchecked(&mut out[udp_start..]),
            &dst,
            &src,
            data.len(),
            |d| d.copy_from_slice(data),
            &caps,
        );
        Ok(Reply::Echo {
            len,
            to: (source.octets(), udp_repr.src_port),
            data: udp_start + UDP_HEADER_LEN..len,
        })
    }
}

#[cfg(test)]
mod tests;
