//! virtio-net (virtio 1.2 §5.1): one receive and one transmit queue, a MAC from
//! the configuration ([`mac_from_name`] derives a stable one), link status always
//! up, and optionally transmit checksum offload (VIRTIO_NET_F_CSUM).
//!
//! Every buffer starts with the 12-byte `virtio_net_hdr` (§5.1.6: with
//! VIRTIO_F_VERSION_1 it always has `num_buffers`), followed by the Ethernet frame
//! without FCS.
//!
//! * **Transmit** (queue 1): each chain's readable part is header + frame. A
//!   frame that passes the checks goes into a bounded output queue that the owner
//!   drains with [`Net::take_transmitted`] and hands to the switch. While that
//!   queue is full the device takes no more transmit chains (the guest waits, as
//!   on a busy NIC); [`VirtioPci::device_work`] resumes once the owner drained it.
//!   Dropped and counted ([`NetStats`]), the chain still returned used: a header
//!   shorter than 12 bytes, `gso_type` other than NONE (no GSO feature is offered,
//!   §5.1.6.2.1: the driver MUST then set NONE), NEEDS_CSUM without CSUM negotiated
//!   or with `csum_start`/`csum_offset` outside the frame, frames shorter than the
//!   Ethernet header or longer than [`MAX_FRAME`].
//! * **Receive** (queue 0) is device-initiated: [`Net::receive`] (or
//!   [`VirtioPci::deliver`]) puts a frame in a bounded backlog, and the transport
//!   takes a receive chain only while a frame waits ([`VirtioDevice::can_take`]),
//!   so posted buffers are filled when frames arrive, not when the driver kicks,
//!   and frames wait while the driver has posted none. A full backlog drops the
//!   new frame (tail drop, as a NIC whose ring is full; the frames already waiting
//!   keep their order) and counts it. A chain too small for header + frame gets
//!   nothing: the frame is dropped and counted, the chain returned with length 0
//!   (§5.1.6.3.1: without MRG_RXBUF the driver SHOULD post buffers of at least
//!   1526 bytes; MRG_RXBUF is not offered).
//!
//! Segmentation offload (VIRTIO_NET_F_HOST_TSO4, §5.1.6.2; offered with CSUM, which
//! it requires, §5.1.3.1): a transmit chain with `gso_type` TCPV4, NEEDS_CSUM and
//! `gso_size` carries one IPv4 TCP packet of up to 64 KiB, which the device cuts
//! into frames of at most `gso_size` payload bytes ([`tso`]) before they reach the
//! owner. Each of those frames is counted in `tx_frames`; a chain the device could
//! not cut is dropped and counted in `tx_bad_header`. One chain can become up to
//! 745 frames (65535 bytes at the smallest MSS), so the output queue may run over
//! `tx_backlog` by one chain's frames; no new chain is taken while it is over.
//!
//! Checksum offload: with CSUM negotiated the driver may leave a transmit frame's
//! TCP/UDP checksum partial (NEEDS_CSUM, §5.1.6.2); the device completes it, the
//! Internet checksum (RFC 1071) of the bytes from `csum_start` to the end stored at
//! `csum_start + csum_offset`, so every frame that leaves is fully checksummed.
//! GUEST_CSUM is not offered: frames delivered to guests are always complete.

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;

use crate::blk::Cursor;
use crate::device::{device_id, VirtioDevice};
use crate::memory::GuestMemory;
use crate::pci::VirtioPci;
use crate::queue::Chain;
use devices::pci::PciEffects;

/// Feature bits (§5.1.3).
pub mod features {
    /// The device completes partial checksums of transmitted frames.
    pub const CSUM: u64 = 1 << 0;
    /// The driver handles partial checksums of received frames (not offered).
    pub const GUEST_CSUM: u64 = 1 << 1;
    /// The configuration space has a MAC.
    pub const MAC: u64 = 1 << 5;
    /// The device segments TCP over IPv4 (requires CSUM, §5.1.3.1).
    pub const HOST_TSO4: u64 = 1 << 11;
    /// Receive buffers may be merged (not offered).
    pub const MRG_RXBUF: u64 = 1 << 15;
    /// The configuration space has a link status.
    pub const STATUS: u64 = 1 << 16;
}

/// `virtio_net_hdr.flags` (§5.1.6).
pub mod hdr_flags {
    pub const NEEDS_CSUM: u8 = 1;
    pub const DATA_VALID: u8 = 2;
    pub const RSC_INFO: u8 = 4;
}

/// `virtio_net_hdr.gso_type` NONE, TCPV4 (§5.1.6); the ECN bit (0x80) needs
/// HOST_ECN, which is not offered, so a type with it is refused.
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
/// The header's size with VIRTIO_F_VERSION_1 (§5.1.6).
pub const HDR_LEN: usize = 12;
/// Ethernet header: destination, source, EtherType.
pub const ETH_HEADER: usize = 14;
/// The largest frame either way: 1514 bytes plus one 802.1Q tag, no FCS.
pub const MAX_FRAME: usize = 1518;
/// The largest transmit chain's frame with HOST_TSO4: a 65535-byte IPv4 packet
/// behind an Ethernet header with one 802.1Q tag.
pub const MAX_TSO_FRAME: usize = 18 + 65_535;
/// The link-up bit of the configuration's `status` (§5.1.4).
pub const STATUS_LINK_UP: u16 = 1;
pub const RX_QUEUE: u16 = 0;
pub const TX_QUEUE: u16 = 1;
/// The size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// The version byte of [`Net`]'s part of a snapshot.
const STATE_VERSION: u8 = 1;

/// A MAC for NIC `nic` of the VM called `name`, the same on every boot: the first
/// six bytes of the 64-bit FNV-1a hash of the name's bytes, a zero byte and `nic`
/// (little-endian u16), with the first byte's bit 1 set (locally administered)
/// and bit 0 clear (unicast), IEEE 802-2014 §8.2. 46 bits of hash: two names
/// collide with a chance of about n^2 / 2^47 for n NICs on one network; a
/// configuration that cares gives MACs explicitly.
///
/// FNV-1a (Fowler, Noll, Vo; draft-eastlake-fnv) is written out here: it is a few
/// lines, needs no table, and a stable identifier needs no cryptographic hash.
pub fn mac_from_name(name: &str, nic: u16) -> [u8; 6] {
    let mut input = Vec::with_capacity(name.len() + 3);
    input.extend_from_slice(name.as_bytes());
    input.push(0);
    input.extend_from_slice(&nic.to_le_bytes());
    let b = fnv1a64(&input).to_be_bytes();
    [b[0] & 0xFC | 0x02, b[1], b[2], b[3], b[4], b[5]]
}

/// The 64-bit FNV-1a hash of `data`.
fn fnv1a64(data: &[u8]) -> u64 {
    const OFFSET: u64 = 0xCBF2_9CE4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01B3;
    data.iter()
        .fold(OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// How a NIC looks and how much it buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfig {
    pub mac: [u8; 6],
    /// Offer VIRTIO_NET_F_CSUM.
    pub checksum_offload: bool,
    /// Offer VIRTIO_NET_F_HOST_TSO4 (only together with CSUM, which it requires).
    pub segmentation_offload: bool,
    /// Received frames waiting for receive buffers.
    pub rx_backlog: usize,
    /// Transmitted frames waiting for the owner.
    pub tx_backlog: usize,
}

impl NetConfig {
    pub fn new(mac: [u8; 6]) -> Self {
        Self {
            mac,
            checksum_offload: true,
            segmentation_offload: true,
            rx_backlog: 64,
            tx_backlog: 64,
        }
    }
}

/// The device's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames (and their bytes, without the header) the guest sent that passed.
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Transmit chains dropped for a header the device does not accept.
    pub tx_bad_header: u64,
    /// Transmitted frames shorter than the Ethernet header.
    pub tx_runt: u64,
    /// Transmitted frames longer than [`MAX_FRAME`] (or [`MAX_TSO_FRAME`] for a
    /// TCPV4 chain).
    pub tx_oversized: u64,
    /// TCPV4 chains cut into frames (HOST_TSO4).
    pub tx_segmented: u64,
    /// Frames (and bytes) placed into the guest's receive buffers.
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Frames dropped because the receive backlog was full.
    pub rx_backlog_full: u64,
    /// Frames offered to [`Net::receive`] outside the size limits.
    pub rx_bad_frame: u64,
    /// Frames dropped because the receive chain was too small for them.
    pub rx_buffer_too_small: u64,
}

/// A virtio network device.
pub struct Net {
    config: NetConfig,
    negotiated: u64,
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
    stats: NetStats,
}

/// The Internet checksum (RFC 1071) of `data`: the one's complement of the one's
/// complement sum of its 16-bit big-endian words (an odd last byte padded with 0).
fn internet_checksum(data: &[u8]) -> u16 {
    let (words, rest) = data.as_chunks::<2>();
    let mut sum: u64 = words
        .iter()
        .map(|w| u64::from(u16::from_be_bytes(*w)))
        .sum();
    if let [last] = rest {
        sum += u64::from(*last) << 8;
    }
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

impl Net {
    pub fn new(config: NetConfig) -> Self {
        Self {
            config,
            negotiated: 0,
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            stats: NetStats::default(),
        }
    }

    pub fn mac(&self) -> [u8; 6] {
        self.config.mac
    }

    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// Queues a frame for the guest; `false` (and counted) when it is outside the
    /// size limits or the backlog is full. The transport must then take a receive
    /// chain: use [`VirtioPci::deliver`], or call [`VirtioPci::device_work`] after
    /// this.
    pub fn receive(&mut self, frame: &[u8]) -> bool {
        if !(ETH_HEADER..=MAX_FRAME).contains(&frame.len()) {
            self.stats.rx_bad_frame += 1;
            return false;
        }
        if self.rx.len() >= self.config.rx_backlog {
            self.stats.rx_backlog_full += 1;
            return false;
        }
        self.rx.push_back(frame.to_vec());
        true
    }

    /// How many more frames [`Self::receive`] takes now: the owner leaves the rest
    /// in the switch's queue for this port (where a guest that never drains costs
    /// only its own port's drops).
    pub fn rx_room(&self) -> usize {
        self.config.rx_backlog.saturating_sub(self.rx.len())
    }

    /// The oldest frame the guest sent, for the switch.
    pub fn take_transmitted(&mut self) -> Option<Vec<u8>> {
        self.tx.pop_front()
    }

    /// The configuration space (§5.1.4): mac, status, max_virtqueue_pairs.
    fn config_bytes(&self) -> [u8; 10] {
        let mut c = [0u8; 10];
        c[0..6].copy_from_slice(&self.config.mac);
        c[6..8].copy_from_slice(&STATUS_LINK_UP.to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c
    }

    fn transmit(&mut self, chain: &Chain, mem: &dyn GuestMemory) {
        let len = chain.readable_len();
        if len < HDR_LEN as u64 {
            self.stats.tx_bad_header += 1;
            return;
        }
        // The header decides how long the frame may be: read it first.
        let mut hdr = [0u8; HDR_LEN];
        let mut cursor = Cursor::new(chain, false);
        if cursor.read(mem, &mut hdr).is_err() {
            // The segments were checked against RAM when the chain was taken.
            self.stats.tx_bad_header += 1;
            return;
        }
        let flags = hdr[0];
        let gso_type = hdr[1];
        let gso_size = usize::from(u16::from_le_bytes([hdr[4], hdr[5]]));
        let csum_start = usize::from(u16::from_le_bytes([hdr[6], hdr[7]]));
        let csum_offset = usize::from(u16::from_le_bytes([hdr[8], hdr[9]]));
        // §5.1.6.2.1: a driver uses a GSO type only if its feature was negotiated,
        // and then sets NEEDS_CSUM; anything else is a bad header.
        let tso = match gso_type {
            GSO_NONE => false,
            GSO_TCPV4
                if self.negotiated & features::HOST_TSO4 != 0
                    && flags & hdr_flags::NEEDS_CSUM != 0 =>
            {
                true
            }
            _ => {
                self.stats.tx_bad_header += 1;
                return;
            }
        };
        let frame_len = len - HDR_LEN as u64;
        if frame_len > if tso { MAX_TSO_FRAME } else { MAX_FRAME } as u64 {
            self.stats.tx_oversized += 1;
            return;
        }
        let mut frame = vec![0u8; frame_len as usize];
        if cursor.read(mem, &mut frame).is_err() {
            self.stats.tx_bad_header += 1;
            return;
        }
        if frame.len() < ETH_HEADER {
            self.stats.tx_runt += 1;
            return;
        }
        if tso {
            match tso::segment(&frame, csum_start, csum_offset, gso_size, MAX_FRAME) {
                Ok(frames) => {
                    self.stats.tx_segmented += 1;
                    for f in frames {
                        self.stats.tx_frames += 1;
                        self.stats.tx_bytes += f.len() as u64;
                        self.tx.push_back(f);
                    }
                }
                Err(_) => self.stats.tx_bad_header += 1,
            }
            return;
        }
        // §5.1.6.2.2: other flag bits are ignored (DATA_VALID and RSC_INFO mean
        // nothing on transmit).
        if flags & hdr_flags::NEEDS_CSUM != 0 {
            let at = csum_start + csum_offset;
            if self.negotiated & features::CSUM == 0
                || csum_start >= frame.len()
                || at + 2 > frame.len()
            {
                self.stats.tx_bad_header += 1;
                return;
            }
            // The driver put the pseudo-header sum in the field; summing over it
            // completes the checksum. 0 goes out as 0xFFFF (the same value in one's
            // complement, and what UDP needs: RFC 768, 0 means "no checksum").
            let sum = match internet_checksum(&frame[csum_start..]) {
                0 => 0xFFFF,
                s => s,
            };
            frame[at..at + 2].copy_from_slice(&sum.to_be_bytes());
        }
        self.stats.tx_frames += 1;
        self.stats.tx_bytes += frame.len() as u64;
        self.tx.push_back(frame);
    }

    /// Fills a receive chain with the oldest waiting frame; returns the bytes
    /// written.
    fn fill_receive(&mut self, chain: &Chain, mem: &mut dyn GuestMemory) -> u32 {
        let Some(frame) = self.rx.pop_front() else {
            return 0;
        };
        let total = HDR_LEN + frame.len();
        if chain.writable_len() < total as u64 {
            self.stats.rx_buffer_too_small += 1;
            return 0;
        }
        let mut hdr = [0u8; HDR_LEN];
        // flags 0 (the checksum is complete), gso_type NONE, num_buffers 1
        // (§5.1.6.4: one buffer per frame without MRG_RXBUF).
        hdr[10..12].copy_from_slice(&1u16.to_le_bytes());
        let mut out = Cursor::new(chain, true);
        if out.write(mem, &hdr).is_err() || out.write(mem, &frame).is_err() {
            return 0;
        }
        self.stats.rx_frames += 1;
        self.stats.rx_bytes += frame.len() as u64;
        total as u32
    }
}

fn put_frames(out: &mut Vec<u8>, frames: &VecDeque<Vec<u8>>) {
    out.extend_from_slice(&(frames.len() as u32).to_le_bytes());
    for f in frames {
        out.extend_from_slice(&(f.len() as u16).to_le_bytes());
        out.extend_from_slice(f);
    }
}

/// Reads what [`put_frames`] wrote, at most `max` frames of valid sizes.
fn take_frames(data: &mut &[u8], max: usize) -> Option<VecDeque<Vec<u8>>> {
    fn take<'a>(data: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if data.len() < n {
            return None;
        }
        let (a, b) = data.split_at(n);
        *data = b;
        Some(a)
    }
    let n = u32::from_le_bytes(take(data, 4)?.try_into().ok()?) as usize;
    if n > max {
        return None;
    }
    let mut frames = VecDeque::new();
    for _ in 0..n {
        let len = usize::from(u16::from_le_bytes(take(data, 2)?.try_into().ok()?));
        if !(ETH_HEADER..=MAX_FRAME).contains(&len) {
            return None;
        }
        frames.push_back(take(data, len)?.to_vec());
    }
    Some(frames)
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u16 {
        device_id::NET
    }

    fn device_features(&self) -> u64 {
        let csum = if self.config.checksum_offload {
            features::CSUM
        } else {
            0
        };
        // §5.1.3.1: HOST_TSO4 requires CSUM.
        let tso = if self.config.checksum_offload && self.config.segmentation_offload {
            features::HOST_TSO4
        } else {
            0
        };
        features::MAC | features::STATUS | csum | tso
    }

    fn num_queues(&self) -> u16 {
        2
    }

    fn queue_max_size(&self) -> u16 {
        QUEUE_SIZE
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::device::read_config_bytes(&self.config_bytes(), offset, data);
    }

    /// §2.2.1: a driver accepts no feature without those it requires, and
    /// HOST_TSO4 requires CSUM (§5.1.3.1); such a set is not a valid subset, so
    /// FEATURES_OK stays clear (§3.1.1).
    fn accepts_features(&self, driver_features: u64) -> bool {
        driver_features & features::HOST_TSO4 == 0 || driver_features & features::CSUM != 0
    }

    fn set_features(&mut self, negotiated: u64) {
        self.negotiated = negotiated;
    }

    /// §2.4: a reset forgets negotiation and every frame in flight.
    fn reset(&mut self) {
        self.negotiated = 0;
        self.rx.clear();
        self.tx.clear();
    }

    fn can_take(&self, queue: u16) -> bool {
        match queue {
            RX_QUEUE => !self.rx.is_empty(),
            TX_QUEUE => self.tx.len() < self.config.tx_backlog,
            _ => false,
        }
    }

    fn process(&mut self, queue: u16, chain: &Chain, mem: &mut dyn GuestMemory) -> u32 {
        match queue {
            RX_QUEUE => self.fill_receive(chain, mem),
            TX_QUEUE => {
                // Nothing is written into a transmit chain (§5.1.6.2: used length 0).
                self.transmit(chain, mem);
                0
            }
            _ => 0,
        }
    }

    /// Version byte, negotiated features, the frames waiting either way (the
    /// counters are not state: they restart).
    fn state(&self) -> Vec<u8> {
        let mut out = vec![STATE_VERSION];
        out.extend_from_slice(&self.negotiated.to_le_bytes());
        put_frames(&mut out, &self.rx);
        put_frames(&mut out, &self.tx);
        out
    }

    fn restore(&mut self, data: &[u8]) -> bool {
        let Some((&STATE_VERSION, mut rest)) = data.split_first() else {
            return false;
        };
        let Some(neg) = rest.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
            return false;
        };
        rest = &rest[8..];
        let Some(rx) = take_frames(&mut rest, self.config.rx_backlog) else {
            return false;
        };
        // The output queue may run over its bound by one chain's frames (TSO).
        let Some(tx) = take_frames(&mut rest, self.config.tx_backlog + tso::MAX_SEGMENTS) else {
            return false;
        };
        if !rest.is_empty() {
            return false;
        }
        self.negotiated = u64::from_le_bytes(neg);
        self.rx = rx;
        self.tx = tx;
        true
    }
}

impl<M: GuestMemory> VirtioPci<Net, M> {
    /// A frame from the switch for this NIC: queued ([`Net::receive`]) and placed
    /// into a posted receive buffer at once if there is one, with its interrupt.
    /// Returns whether the frame was taken (else it was dropped and counted).
    pub fn deliver(&mut self, frame: &[u8]) -> (bool, PciEffects) {
        let taken = self.device_mut().receive(frame);
        (taken, self.device_work())
    }
}

pub mod tso;

#[cfg(test)]
mod tests;
