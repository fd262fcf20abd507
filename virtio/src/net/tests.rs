//! virtio-net driven through the virtio-pci transport as a guest driver drives it:
//! BAR accesses for negotiation and queue setup, descriptors and rings in a
//! `VecMemory`, notifications, interrupts.

use super::*;
use crate::device::features as vf;
use crate::device::status as st;
use crate::memory::VecMemory;
use crate::pci::tests::{
    negotiate, offered, rd, set_status, setup_queue_at, used_at, used_idx_at, wr,
};
use crate::pci::{common, isr, CAP_MSIX, DEVICE_CFG, ISR_CFG, MSIX_TABLE, NOTIFY_CFG};
use crate::queue::desc_flags::{NEXT, WRITE};
use crate::queue::tests::{desc, Driver};
use devices::pci::{reg, PciFunction};
use devices::MsiMessage;

type Dev = VirtioPci<Net, VecMemory>;

const RAM: usize = 0x20000;
const SIZE: u16 = 8;
/// (descriptor table, available ring, used ring) of the receive and transmit queues.
const RXQ: (u64, u64, u64) = (0x1000, 0x2000, 0x3000);
const TXQ: (u64, u64, u64) = (0x4000, 0x5000, 0x6000);
/// Receive buffers: 2 KiB each from here.
const RXBUF: u64 = 0x8000;
/// Transmit header and frame buffers.
const TXHDR: u64 = 0xC000;
const TXBUF: u64 = 0xD000;
const MAC: [u8; 6] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];

/// A driver's side of one queue's available ring.
struct Ring {
    q: (u64, u64, u64),
    drv: Driver,
}

fn ring(q: (u64, u64, u64)) -> Ring {
    Ring {
        q,
        drv: Driver {
            size: SIZE,
            avail_idx: 0,
        },
    }
}

impl Ring {
    fn publish(&mut self, m: &mut VecMemory, head: u16) {
        self.drv.publish_at(m, self.q.1, head);
    }
}

fn used_idx(d: &Dev, q: (u64, u64, u64)) -> u16 {
    used_idx_at(d, q)
}

/// The used element `n` of a queue: (head, len).
fn used(d: &Dev, q: (u64, u64, u64), n: u16) -> (u32, u32) {
    used_at(d, q, SIZE, n)
}

fn setup_queue(d: &mut Dev, index: u16, q: (u64, u64, u64)) {
    setup_queue_at(d, index, q, SIZE);
}

fn base() -> u64 {
    vf::VERSION_1 | features::MAC | features::STATUS
}

fn dev_with(config: NetConfig, f: u64) -> (Dev, Ring, Ring) {
    let mut d = VirtioPci::new(Net::new(config), VecMemory::new(RAM));
    d.config_write(reg::COMMAND, 0x6, 0xFFFF);
    assert_ne!(negotiate(&mut d, f) & st::FEATURES_OK, 0);
    setup_queue(&mut d, RX_QUEUE, RXQ);
    setup_queue(&mut d, TX_QUEUE, TXQ);
    set_status(&mut d, 0xF);
    (d, ring(RXQ), ring(TXQ))
}

fn dev() -> (Dev, Ring, Ring) {
    dev_with(NetConfig::new(MAC), base())
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_add(seed)).collect();
    f[0..6].copy_from_slice(&[0xFF; 6]);
    f[6..12].copy_from_slice(&MAC);
    f
}

/// Posts receive buffer `i` (descriptor i, `len` bytes at RXBUF + 2 KiB * i).
fn post_rx(d: &mut Dev, r: &mut Ring, i: u16, len: u32) {
    let m = d.memory_mut();
    desc(m, RXQ.0, i, RXBUF + 0x800 * u64::from(i), len, WRITE, 0);
    r.publish(m, i);
}

/// Puts header `hdr` and `data` on transmit descriptors 2i, 2i+1 and publishes.
fn post_tx(d: &mut Dev, r: &mut Ring, i: u16, hdr: [u8; HDR_LEN], data: &[u8]) {
    let m = d.memory_mut();
    let (h, b) = (TXHDR + 0x10 * u64::from(i), TXBUF + 0x800 * u64::from(i));
    m.write(h, &hdr).unwrap();
    m.write(b, data).unwrap();
    desc(m, TXQ.0, 2 * i, h, HDR_LEN as u32, NEXT, 2 * i + 1);
    desc(m, TXQ.0, 2 * i + 1, b, data.len() as u32, 0, 0);
    r.publish(m, 2 * i);
}

fn kick(d: &mut Dev, q: u16) -> PciEffects {
    wr(d, NOTIFY_CFG + 4 * u64::from(q), 2, q.into())
}

fn rx_bytes(d: &Dev, i: u16, len: usize) -> Vec<u8> {
    let mut b = vec![0; len];
    d.memory()
        .read(RXBUF + 0x800 * u64::from(i), &mut b)
        .unwrap();
    b
}

#[test]
fn identity_features_and_configuration_space() {
    let mut d = VirtioPci::new(Net::new(NetConfig::new(MAC)), VecMemory::new(RAM));
    assert_eq!(d.config_read(0x00), 0x1041_1AF4, "1af4:1041, virtio-net");
    assert_eq!(d.config_read(0x08) >> 8, 0x02_0000, "class 02/00/00");
    let f = offered(&mut d);
    assert_eq!(
        f,
        vf::VERSION_1
            | vf::INDIRECT_DESC
            | vf::EVENT_IDX
            | features::MAC
            | features::STATUS
            | features::CSUM
            | features::HOST_TSO4
    );
    assert_eq!(f & (features::GUEST_CSUM | features::MRG_RXBUF), 0);
    // HOST_TSO4 without the CSUM it requires (§5.1.3.1) is not a valid set.
    assert_eq!(
        negotiate(&mut d, base() | features::HOST_TSO4) & st::FEATURES_OK,
        0
    );
    set_status(&mut d, 0);
    // Features not offered are refused (FEATURES_OK stays clear).
    assert_eq!(
        negotiate(&mut d, base() | features::GUEST_CSUM) & st::FEATURES_OK,
        0
    );
    set_status(&mut d, 0);
    assert_ne!(
        negotiate(&mut d, base() | features::CSUM) & st::FEATURES_OK,
        0
    );
    let mut mac = [0u8; 6];
    for (i, b) in mac.iter_mut().enumerate() {
        *b = rd(&mut d, DEVICE_CFG + i as u64, 1) as u8;
    }
    assert_eq!(mac, MAC);
    assert_eq!(rd(&mut d, DEVICE_CFG + 6, 2), u64::from(STATUS_LINK_UP));
    assert_eq!(rd(&mut d, DEVICE_CFG + 8, 2), 1, "max_virtqueue_pairs");
    assert_eq!(rd(&mut d, DEVICE_CFG + 10, 2), 0);
    assert_eq!(rd(&mut d, common::NUM_QUEUES, 2), 2);
    // Without checksum offload in the configuration neither CSUM nor HOST_TSO4 is
    // offered; without segmentation offload, CSUM alone.
    let mut c = NetConfig::new(MAC);
    c.checksum_offload = false;
    let mut e = VirtioPci::new(Net::new(c), VecMemory::new(RAM));
    assert_eq!(offered(&mut e) & (features::CSUM | features::HOST_TSO4), 0);
    let mut c = NetConfig::new(MAC);
    c.segmentation_offload = false;
    let mut e = VirtioPci::new(Net::new(c), VecMemory::new(RAM));
    assert_eq!(
        offered(&mut e) & (features::CSUM | features::HOST_TSO4),
        features::CSUM
    );
}

#[test]
fn transmit_hands_the_frame_to_the_owner() {
    let (mut d, _, mut tx) = dev();
    let f = frame(60, 1);
    post_tx(&mut d, &mut tx, 0, [0; HDR_LEN], &f);
    let e = kick(&mut d, TX_QUEUE);
    assert_eq!(e.intx, Some(true));
    assert_eq!(rd(&mut d, ISR_CFG, 1), u64::from(isr::QUEUE));
    assert_eq!(used_idx(&d, TXQ), 1);
    assert_eq!(used(&d, TXQ, 0), (0, 0), "nothing written into a tx chain");
    assert_eq!(d.device_mut().take_transmitted(), Some(f));
    assert_eq!(d.device_mut().take_transmitted(), None);
    // Header and frame in one buffer work the same (§2.7.4: framing is free).
    let mut one = vec![0u8; HDR_LEN];
    one.extend_from_slice(&frame(100, 2));
    d.memory_mut().write(TXBUF, &one).unwrap();
    desc(d.memory_mut(), TXQ.0, 3, TXBUF, one.len() as u32, 0, 0);
    tx.publish(d.memory_mut(), 3);
    kick(&mut d, TX_QUEUE);
    assert_eq!(d.device_mut().take_transmitted(), Some(frame(100, 2)));
    let s = d.device().stats();
    assert_eq!((s.tx_frames, s.tx_bytes), (2, 160));
}

#[test]
fn receive_fills_posted_buffers_when_frames_arrive_with_an_interrupt() {
    let (mut d, mut rx, _) = dev();
    post_rx(&mut d, &mut rx, 0, 1526);
    post_rx(&mut d, &mut rx, 1, 1526);
    // The kick alone uses nothing: no frame waits.
    assert_eq!(kick(&mut d, RX_QUEUE).intx, None);
    assert_eq!(used_idx(&d, RXQ), 0);
    assert!(!PciFunction::has_work(&d));
    let f = frame(1514, 3);
    let (taken, e) = d.deliver(&f);
    assert!(taken);
    assert_eq!(e.intx, Some(true));
    assert_eq!(used(&d, RXQ, 0), (0, 1526));
    let got = rx_bytes(&d, 0, 1526);
    assert_eq!(
        &got[..10],
        &[0; 10],
        "flags, gso, lengths, checksum fields 0"
    );
    assert_eq!(&got[10..12], &[1, 0], "num_buffers = 1");
    assert_eq!(&got[12..], &f[..]);
    // A second frame takes the second buffer; the ISR read lowered INTx.
    assert_eq!(rd(&mut d, ISR_CFG, 1), 1);
    let (_, e) = d.deliver(&frame(42, 4));
    assert_eq!(e.intx, Some(true));
    assert_eq!(used(&d, RXQ, 1), (1, 54));
    let s = d.device().stats();
    assert_eq!((s.rx_frames, s.rx_bytes), (2, 1556));
}

#[test]
fn receive_interrupts_through_msix() {
    let (mut d, mut rx, _) = dev();
    wr(&mut d, MSIX_TABLE, 8, 0xFEE0_0000);
    wr(&mut d, MSIX_TABLE + 8, 4, 0x45);
    wr(&mut d, MSIX_TABLE + 12, 4, 0);
    d.config_write(CAP_MSIX, 0x8000_0000, 0xFFFF_0000);
    wr(&mut d, common::QUEUE_SELECT, 2, RX_QUEUE.into());
    wr(&mut d, common::QUEUE_MSIX_VECTOR, 2, 0);
    post_rx(&mut d, &mut rx, 0, 2048);
    let (_, e) = d.deliver(&frame(60, 0));
    assert_eq!(
        e.msi[0],
        Some(MsiMessage {
            address: 0xFEE0_0000,
            data: 0x45
        })
    );
    assert_eq!(e.intx, None);
}

#[test]
fn frames_wait_for_buffers_and_a_full_backlog_drops_new_ones() {
    let mut c = NetConfig::new(MAC);
    c.rx_backlog = 3;
    let (mut d, mut rx, _) = dev_with(c, base());
    for i in 0..5u8 {
        let (taken, e) = d.deliver(&frame(60, i));
        assert_eq!(taken, i < 3, "frame {i}");
        assert_eq!(e, PciEffects::NONE);
    }
    assert_eq!(d.device().rx_room(), 0);
    assert_eq!(d.device().stats().rx_backlog_full, 2);
    assert_eq!(used_idx(&d, RXQ), 0);
    // Two buffers and a kick: the two oldest frames, in order.
    post_rx(&mut d, &mut rx, 0, 2048);
    post_rx(&mut d, &mut rx, 1, 2048);
    assert_eq!(kick(&mut d, RX_QUEUE).intx, Some(true));
    assert_eq!(used_idx(&d, RXQ), 2);
    assert_eq!(&rx_bytes(&d, 0, 72)[12..], &frame(60, 0)[..]);
    assert_eq!(&rx_bytes(&d, 1, 72)[12..], &frame(60, 1)[..]);
    // The third waits for the next buffer, taken at its kick.
    post_rx(&mut d, &mut rx, 2, 2048);
    kick(&mut d, RX_QUEUE);
    assert_eq!(used_idx(&d, RXQ), 3);
    assert_eq!(&rx_bytes(&d, 2, 72)[12..], &frame(60, 2)[..]);
    assert_eq!(d.device().rx_room(), 3);
    // A buffer posted without a kick is still found when a frame arrives.
    post_rx(&mut d, &mut rx, 3, 2048);
    d.deliver(&frame(60, 9));
    assert_eq!(used_idx(&d, RXQ), 4);
}

#[test]
fn buffers_posted_while_frames_wait_are_found_by_a_poll() {
    let (mut d, mut rx, _) = dev();
    post_rx(&mut d, &mut rx, 0, 2048);
    kick(&mut d, RX_QUEUE); // no frame: the buffer stays available
    assert!(d.device_mut().receive(&frame(60, 0)));
    // The owner forgot device_work: the transport's poll finds the waiting work.
    assert!(PciFunction::has_work(&d));
    assert_eq!(PciFunction::poll(&mut d).intx, Some(true));
    assert_eq!(used_idx(&d, RXQ), 1);
    assert!(!PciFunction::has_work(&d), "no spinning once done");
}

#[test]
fn bad_headers_are_dropped_and_counted_and_the_chain_returned() {
    let (mut d, _, mut tx) = dev();
    let f = frame(60, 0);
    let mut gso = [0u8; HDR_LEN];
    gso[1] = 1; // VIRTIO_NET_HDR_GSO_TCPV4, not negotiated
    post_tx(&mut d, &mut tx, 0, gso, &f);
    let mut csum = [0u8; HDR_LEN];
    csum[0] = hdr_flags::NEEDS_CSUM; // CSUM not negotiated
    csum[6] = 34;
    csum[8] = 6;
    post_tx(&mut d, &mut tx, 1, csum, &f);
    // A chain of 8 bytes: not even a header.
    desc(d.memory_mut(), TXQ.0, 4, TXHDR, 8, 0, 0);
    tx.publish(d.memory_mut(), 4);
    // A runt: header and 10 bytes.
    post_tx(&mut d, &mut tx, 3, [0; HDR_LEN], &f[..10]);
    kick(&mut d, TX_QUEUE);
    assert_eq!(used_idx(&d, TXQ), 4, "every chain returned");
    assert_eq!(d.status(), 0xF, "no reset needed: the queue itself is fine");
    assert_eq!(d.device_mut().take_transmitted(), None);
    let s = d.device().stats();
    assert_eq!((s.tx_bad_header, s.tx_runt, s.tx_frames), (3, 1, 0));
}

#[test]
fn checksum_offload_completes_the_checksum() {
    assert_eq!(
        internet_checksum(&[0x00, 0x01, 0xF2, 0x03, 0xF4, 0xF5, 0xF6, 0xF7]),
        !0xDDF2,
        "RFC 1071 §3's example"
    );
    let (mut d, _, mut tx) = dev_with(NetConfig::new(MAC), base() | features::CSUM);
    // Ethernet + IPv4 (20) + UDP (8) + 13 bytes of payload.
    let mut f = frame(14 + 20 + 8 + 13, 7);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let (src, dst) = ([10, 0, 0, 1], [10, 0, 0, 2]);
    f[26..30].copy_from_slice(&src);
    f[30..34].copy_from_slice(&dst);
    f[23] = 17;
    let udp_len: u16 = 8 + 13;
    f[38..40].copy_from_slice(&udp_len.to_be_bytes());
    // As Linux does for CHECKSUM_PARTIAL: the folded pseudo-header sum in the field.
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&udp_len.to_be_bytes());
    f[40..42].copy_from_slice(&(!internet_checksum(&pseudo)).to_be_bytes());
    let mut hdr = [0u8; HDR_LEN];
    hdr[0] = hdr_flags::NEEDS_CSUM;
    hdr[6..8].copy_from_slice(&34u16.to_le_bytes());
    hdr[8..10].copy_from_slice(&6u16.to_le_bytes());
    post_tx(&mut d, &mut tx, 0, hdr, &f);
    // csum_offset past the end of the frame: refused.
    hdr[8..10].copy_from_slice(&100u16.to_le_bytes());
    post_tx(&mut d, &mut tx, 1, hdr, &f);
    kick(&mut d, TX_QUEUE);
    let out = d.device_mut().take_transmitted().unwrap();
    assert_eq!(d.device_mut().take_transmitted(), None);
    assert_eq!(d.device().stats().tx_bad_header, 1);
    assert_eq!(&out[..40], &f[..40]);
    assert_eq!(&out[42..], &f[42..]);
    // The receiver's check: pseudo-header + segment sum to all ones.
    let mut check = pseudo.clone();
    check.extend_from_slice(&out[34..]);
    assert_eq!(internet_checksum(&check), 0);
    assert_ne!(&out[40..42], &[0, 0]);
}

/// A TCP over IPv4 packet of `payload` bytes from MAC, Linux's way for TSO: the
/// total length of the whole, the pseudo-header sum (without length) left in the
/// TCP checksum field.
fn tcp_packet(payload: usize) -> Vec<u8> {
    let mut f = frame(14 + 20 + 20 + payload, 3);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&((40 + payload) as u16).to_be_bytes());
    f[20..22].copy_from_slice(&[0x40, 0]);
    f[23] = 6;
    f[26..30].copy_from_slice(&[10, 0, 0, 2]);
    f[30..34].copy_from_slice(&[10, 0, 0, 1]);
    f[46] = 0x50;
    f[47] = 0x18; // ACK, PSH
    f
}

fn tso_header(mss: u16) -> [u8; HDR_LEN] {
    let mut hdr = [0u8; HDR_LEN];
    hdr[0] = hdr_flags::NEEDS_CSUM;
    hdr[1] = GSO_TCPV4;
    hdr[2..4].copy_from_slice(&54u16.to_le_bytes());
    hdr[4..6].copy_from_slice(&mss.to_le_bytes());
    hdr[6..8].copy_from_slice(&34u16.to_le_bytes());
    hdr[8..10].copy_from_slice(&16u16.to_le_bytes());
    hdr
}

/// Puts header `hdr` and `data` on transmit descriptors 2i, 2i+1, the data at
/// `at`, and publishes.
fn post_tx_at(d: &mut Dev, r: &mut Ring, i: u16, hdr: [u8; HDR_LEN], data: &[u8], at: u64) {
    let m = d.memory_mut();
    let h = TXHDR + 0x10 * u64::from(i);
    m.write(h, &hdr).unwrap();
    m.write(at, data).unwrap();
    desc(m, TXQ.0, 2 * i, h, HDR_LEN as u32, NEXT, 2 * i + 1);
    desc(m, TXQ.0, 2 * i + 1, at, data.len() as u32, 0, 0);
    r.publish(m, 2 * i);
}

#[test]
fn segmentation_offload_cuts_a_tcp_packet_into_frames() {
    let f = base() | features::CSUM | features::HOST_TSO4;
    let (mut d, _, mut tx) = dev_with(NetConfig::new(MAC), f);
    // 10,000 bytes of payload at an MSS of 1448: 7 frames, in one chain.
    let big = tcp_packet(10_000);
    post_tx_at(&mut d, &mut tx, 0, tso_header(1448), &big, 0x10000);
    // GSO without NEEDS_CSUM (§5.1.6.2.1: the driver MUST set it): refused.
    let mut no_csum = tso_header(1448);
    no_csum[0] = 0;
    post_tx_at(&mut d, &mut tx, 1, no_csum, &big, 0x10000);
    // The ECN bit without HOST_ECN, and UDP fragmentation offload: refused.
    let mut ecn = tso_header(1448);
    ecn[1] |= 0x80;
    post_tx_at(&mut d, &mut tx, 2, ecn, &big, 0x10000);
    let mut ufo = tso_header(1448);
    ufo[1] = 3;
    post_tx_at(&mut d, &mut tx, 3, ufo, &big, 0x10000);
    kick(&mut d, TX_QUEUE);
    assert_eq!(used_idx(&d, TXQ), 4, "every chain returned");
    let mut out = Vec::new();
    while let Some(frame) = d.device_mut().take_transmitted() {
        out.push(frame);
    }
    assert_eq!(out.len(), 7);
    assert!(out.iter().all(|f| f.len() <= 1514));
    let payload: Vec<u8> = out.iter().flat_map(|f| f[54..].to_vec()).collect();
    assert_eq!(&payload[..], &big[54..]);
    let s = d.device().stats();
    assert_eq!((s.tx_segmented, s.tx_frames, s.tx_bad_header), (1, 7, 3));
    assert_eq!(s.tx_bytes, out.iter().map(|f| f.len() as u64).sum::<u64>());
    // A 65536-byte IPv4 packet: one byte too long for IPv4, refused.
    let huge = tcp_packet(65_536 - 40);
    post_tx_at(&mut d, &mut tx, 0, tso_header(1448), &huge, 0xFF00);
    kick(&mut d, TX_QUEUE);
    assert_eq!(d.device_mut().take_transmitted(), None);
    assert_eq!(d.device().stats().tx_bad_header, 4);
    // The largest (65535 bytes) is cut: 46 frames.
    post_tx_at(
        &mut d,
        &mut tx,
        1,
        tso_header(1448),
        &huge[..huge.len() - 1],
        0xFF00,
    );
    kick(&mut d, TX_QUEUE);
    let mut n = 0;
    while d.device_mut().take_transmitted().is_some() {
        n += 1;
    }
    assert_eq!(n, (65_535 - 40usize).div_ceil(1448));
}

#[test]
fn segmentation_offload_needs_its_feature() {
    // CSUM only: a TCPV4 chain is a bad header (§5.1.6.2.1).
    let (mut d, _, mut tx) = dev_with(NetConfig::new(MAC), base() | features::CSUM);
    post_tx_at(
        &mut d,
        &mut tx,
        0,
        tso_header(1448),
        &tcp_packet(3000),
        0x10000,
    );
    kick(&mut d, TX_QUEUE);
    assert_eq!(d.device_mut().take_transmitted(), None);
    assert_eq!(d.device().stats().tx_bad_header, 1);
}

#[test]
fn oversized_frames_are_dropped_either_way() {
    let (mut d, mut rx, mut tx) = dev();
    let big = frame(MAX_FRAME + 1, 0);
    let max = frame(MAX_FRAME, 0);
    post_tx(&mut d, &mut tx, 0, [0; HDR_LEN], &big);
    post_tx(&mut d, &mut tx, 1, [0; HDR_LEN], &max);
    kick(&mut d, TX_QUEUE);
    assert_eq!(used_idx(&d, TXQ), 2);
    assert_eq!(d.device_mut().take_transmitted(), Some(max.clone()));
    assert_eq!(d.device().stats().tx_oversized, 1);
    post_rx(&mut d, &mut rx, 0, 2048);
    assert!(!d.deliver(&big).0);
    assert!(!d.deliver(&max[..13]).0);
    assert_eq!(d.device().stats().rx_bad_frame, 2);
    assert_eq!(used_idx(&d, RXQ), 0);
    assert!(d.deliver(&max).0);
    assert_eq!(used(&d, RXQ, 0), (0, (HDR_LEN + MAX_FRAME) as u32));
}

#[test]
fn a_receive_buffer_too_small_gets_nothing() {
    let (mut d, mut rx, _) = dev();
    d.memory_mut().write(RXBUF, &[0xEE; 0x800]).unwrap();
    post_rx(&mut d, &mut rx, 0, 100);
    post_rx(&mut d, &mut rx, 1, 2048);
    let (taken, e) = d.deliver(&frame(200, 0));
    assert!(taken, "taken into the backlog; dropped at the buffer");
    assert_eq!(e.intx, Some(true), "the used buffer is still signalled");
    assert_eq!(used(&d, RXQ, 0), (0, 0));
    assert_eq!(rx_bytes(&d, 0, 0x800), vec![0xEE; 0x800], "nothing written");
    assert_eq!(d.device().stats().rx_buffer_too_small, 1);
    // The next frame uses the next buffer as usual.
    d.deliver(&frame(60, 1));
    assert_eq!(used(&d, RXQ, 1), (1, 72));
}

#[test]
fn chains_outside_ram_need_a_reset() {
    for q in [RX_QUEUE, TX_QUEUE] {
        let (mut d, mut rx, mut tx) = dev();
        let (table, ring) = if q == RX_QUEUE {
            (RXQ.0, &mut rx)
        } else {
            (TXQ.0, &mut tx)
        };
        let flags = if q == RX_QUEUE { WRITE } else { 0 };
        desc(d.memory_mut(), table, 0, RAM as u64 - 8, 64, flags, 0);
        ring.publish(d.memory_mut(), 0);
        let e = if q == RX_QUEUE {
            d.deliver(&frame(60, 0)).1
        } else {
            kick(&mut d, q)
        };
        assert_ne!(d.status() & st::DEVICE_NEEDS_RESET, 0, "queue {q}");
        assert_eq!(e.intx, Some(true), "configuration change interrupt");
        assert_eq!(rd(&mut d, ISR_CFG, 1), u64::from(isr::CONFIG));
        assert_eq!(d.device_mut().take_transmitted(), None);
        // Nothing more happens until the driver resets; the reset empties the
        // backlogs.
        assert_eq!(d.deliver(&frame(60, 1)).1, PciEffects::NONE);
        set_status(&mut d, 0);
        assert_eq!(d.device().rx_room(), NetConfig::new(MAC).rx_backlog);
    }
}

#[test]
fn a_full_transmit_output_holds_the_guest_back() {
    let mut c = NetConfig::new(MAC);
    c.tx_backlog = 2;
    let (mut d, _, mut tx) = dev_with(c, base());
    for i in 0..3 {
        post_tx(&mut d, &mut tx, i, [0; HDR_LEN], &frame(60, i as u8));
    }
    kick(&mut d, TX_QUEUE);
    assert_eq!(used_idx(&d, TXQ), 2, "the third chain stays available");
    assert!(!PciFunction::has_work(&d));
    assert_eq!(d.device_mut().take_transmitted(), Some(frame(60, 0)));
    assert!(
        PciFunction::has_work(&d),
        "room again: the transport goes on"
    );
    PciFunction::poll(&mut d);
    assert_eq!(used_idx(&d, TXQ), 3);
    assert_eq!(d.device_mut().take_transmitted(), Some(frame(60, 1)));
    assert_eq!(d.device_mut().take_transmitted(), Some(frame(60, 2)));
    assert_eq!(d.device().stats().tx_frames, 3);
}

#[test]
fn snapshots_keep_negotiation_and_waiting_frames() {
    let (mut d, mut rx, mut tx) = dev_with(NetConfig::new(MAC), base() | features::CSUM);
    d.deliver(&frame(60, 1));
    d.deliver(&frame(80, 2));
    post_tx(&mut d, &mut tx, 0, [0; HDR_LEN], &frame(70, 3));
    kick(&mut d, TX_QUEUE);
    let snap = d.state();
    let mut e = VirtioPci::new(Net::new(NetConfig::new(MAC)), d.memory().clone());
    e.restore(&snap).unwrap();
    assert_eq!(e.state(), snap);
    assert_eq!(e.negotiated_features(), base() | features::CSUM);
    assert_eq!(e.device_mut().take_transmitted(), Some(frame(70, 3)));
    post_rx(&mut e, &mut rx, 0, 2048);
    post_rx(&mut e, &mut rx, 1, 2048);
    kick(&mut e, RX_QUEUE);
    assert_eq!(used(&e, RXQ, 0), (0, 72));
    assert_eq!(used(&e, RXQ, 1), (1, 92));
    // Refusals: another version, frames of impossible sizes, more than fits,
    // truncation, trailing bytes.
    let dev_state = d.device().state();
    let mut n = Net::new(NetConfig::new(MAC));
    assert!(n.restore(&dev_state));
    let mut bad = dev_state.clone();
    bad[0] = 2;
    assert!(!n.restore(&bad));
    bad = dev_state.clone();
    bad[13..15].copy_from_slice(&5u16.to_le_bytes());
    assert!(!n.restore(&bad));
    bad = dev_state.clone();
    bad[9..13].copy_from_slice(&1000u32.to_le_bytes());
    assert!(!n.restore(&bad));
    for cut in 0..dev_state.len() {
        assert!(!n.restore(&dev_state[..cut]), "cut at {cut}");
    }
    bad = dev_state.clone();
    bad.push(0);
    assert!(!n.restore(&bad));
}

#[test]
fn macs_from_names_are_stable_local_unicast_and_distinct() {
    // FNV-1a 64 test vectors (draft-eastlake-fnv).
    assert_eq!(fnv1a64(b""), 0xCBF2_9CE4_8422_2325);
    assert_eq!(fnv1a64(b"a"), 0xAF63_DC4C_8601_EC8C);
    assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_F739_67E8);
    let m = mac_from_name("web-1", 0);
    assert_eq!(m, mac_from_name("web-1", 0));
    assert_eq!(m[0] & 3, 2, "locally administered, unicast");
    // The value itself is part of the interface: a guest's MAC must not change
    // between hypervisor versions.
    let h = fnv1a64(b"web-1\0\0\0").to_be_bytes();
    assert_eq!(m, [h[0] & 0xFC | 2, h[1], h[2], h[3], h[4], h[5]]);
    assert_eq!(m, [0x02, 0xDC, 0x29, 0xB4, 0xF0, 0x5E]);
    let mut seen = alloc::collections::BTreeSet::new();
    for name in ["web-1", "web-2", "db", "", "a-very-long-vm-name-24ch"] {
        for nic in 0..4 {
            let m = mac_from_name(name, nic);
            assert_eq!(m[0] & 3, 2);
            assert!(seen.insert(m), "{name} {nic}");
        }
    }
}
