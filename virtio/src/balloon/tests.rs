//! virtio-balloon driven through the virtio-pci transport as a guest driver drives
//! it (BAR accesses, rings and buffers in a `VecMemory`, notifications,
//! interrupts), and the device alone on hand-built chains where a test needs more
//! RAM than it wants to allocate.

use super::*;
use crate::device::features as vf;
use crate::device::status as st;
use crate::memory::VecMemory;
use crate::pci::tests::{
    negotiate, offered, rd, set_status, setup_queue_at, used_at, used_idx_at, wr,
};
use crate::pci::{common, isr, CAP_MSIX, DEVICE_CFG, ISR_CFG, MSIX_TABLE, NOTIFY_CFG};
use crate::queue::desc_flags::{INDIRECT, NEXT, WRITE};
use crate::queue::tests::{desc, Driver};
use crate::queue::Segment;
use devices::pci::{reg, PciFunction};
use devices::MsiMessage;

type Dev = VirtioPci<Balloon<CountingBackend>, VecMemory>;

/// 1 MiB of guest RAM: 256 pages.
const RAM: u64 = 0x10_0000;
const PAGES: u64 = RAM / PAGE_SIZE;
const SIZE: u16 = 8;
/// (descriptor table, available ring, used ring) of each queue.
const INFQ: (u64, u64, u64) = (0x1000, 0x2000, 0x3000);
const DEFQ: (u64, u64, u64) = (0x4000, 0x5000, 0x6000);
const STQ: (u64, u64, u64) = (0x7000, 0x8000, 0x9000);
/// Where each queue's buffers are: 8 KiB per descriptor index.
const INFBUF: u64 = 0x1_0000;
const DEFBUF: u64 = 0x3_0000;
const STBUF: u64 = 0x5_0000;
/// Free host pages the test backend starts with.
const POOL: u64 = 1000;

/// A driver's side of one queue's available ring.
struct Ring {
    q: (u64, u64, u64),
    buf: u64,
    drv: Driver,
}

impl Ring {
    fn publish(&mut self, m: &mut VecMemory, head: u16) {
        self.drv.publish_at(m, self.q.1, head);
    }

    /// Puts `bytes` in buffer `i` (descriptor i, device-readable) and publishes it.
    fn post_bytes(&mut self, d: &mut Dev, i: u16, bytes: &[u8]) {
        let m = d.memory_mut();
        let at = self.buf + 0x2000 * u64::from(i);
        m.write(at, bytes).unwrap();
        desc(m, self.q.0, i, at, bytes.len() as u32, 0, 0);
        self.publish(m, i);
    }

    /// Posts page numbers as the Linux driver does: one buffer of le32s.
    fn post(&mut self, d: &mut Dev, i: u16, pfns: &[u32]) {
        self.post_bytes(d, i, &le32s(pfns));
    }
}

struct Guest {
    d: Dev,
    inf: Ring,
    def: Ring,
    st: Ring,
}

fn le32s(pfns: &[u32]) -> Vec<u8> {
    pfns.iter().flat_map(|p| p.to_le_bytes()).collect()
}

fn stat_entries(entries: &[(u16, u64)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (t, v) in entries {
        b.extend_from_slice(&t.to_le_bytes());
        b.extend_from_slice(&v.to_le_bytes());
    }
    b
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

fn new_dev(backend: CountingBackend) -> Dev {
    VirtioPci::new(
        Balloon::new(backend, BalloonConfig::new(RAM)),
        VecMemory::new(RAM as usize),
    )
}

fn base() -> u64 {
    vf::VERSION_1 | features::MUST_TELL_HOST | features::STATS_VQ
}

/// The driver's bring-up (§5.5.5) with features `f`: all three queues, DRIVER_OK.
fn guest_with(backend: CountingBackend, f: u64) -> Guest {
    let mut d = new_dev(backend);
    d.config_write(reg::COMMAND, 0x6, 0xFFFF);
    assert_ne!(negotiate(&mut d, f) & st::FEATURES_OK, 0);
    setup_queue(&mut d, INFLATE_QUEUE, INFQ);
    setup_queue(&mut d, DEFLATE_QUEUE, DEFQ);
    setup_queue(&mut d, STATS_QUEUE, STQ);
    set_status(&mut d, 0xF);
    Guest {
        d,
        inf: Ring {
            q: INFQ,
            buf: INFBUF,
            drv: Driver {
                size: SIZE,
                avail_idx: 0,
            },
        },
        def: Ring {
            q: DEFQ,
            buf: DEFBUF,
            drv: Driver {
                size: SIZE,
                avail_idx: 0,
            },
        },
        st: Ring {
            q: STQ,
            buf: STBUF,
            drv: Driver {
                size: SIZE,
                avail_idx: 0,
            },
        },
    }
}

fn guest() -> Guest {
    guest_with(CountingBackend::new(POOL), base())
}

fn kick(d: &mut Dev, q: u16) -> PciEffects {
    wr(d, NOTIFY_CFG + 4 * u64::from(q), 2, q.into())
}

/// The driver's interrupt handler with INTx: reads (and so clears) the ISR.
fn ack(d: &mut Dev) -> u8 {
    rd(d, ISR_CFG, 1) as u8
}

fn ballooned(d: &Dev) -> Vec<u32> {
    d.device().ballooned_pfns().collect()
}

fn counters(d: &Dev) -> BalloonCounters {
    d.device().counters()
}

#[test]
fn identity_features_and_configuration_space() {
    let mut d = new_dev(CountingBackend::new(0));
    assert_eq!(
        d.config_read(0x00),
        0x1045_1AF4,
        "1af4:1045, virtio-balloon"
    );
    assert_eq!(d.config_read(0x08) >> 8, 0xFF_0000, "class FF/00/00");
    let f = offered(&mut d);
    assert_eq!(
        f,
        vf::VERSION_1
            | vf::INDIRECT_DESC
            | vf::EVENT_IDX
            | features::MUST_TELL_HOST
            | features::STATS_VQ
    );
    assert_eq!(f & features::DEFLATE_ON_OOM, 0, "not offered");
    assert_eq!(rd(&mut d, common::NUM_QUEUES, 2), 3);
    wr(&mut d, common::QUEUE_SELECT, 2, 2);
    assert_eq!(rd(&mut d, common::QUEUE_SIZE, 2), u64::from(QUEUE_SIZE));

    // A driver that will not tell the host before reusing pages is refused
    // (§5.5.3.2); so is one asking for what was not offered.
    assert_eq!(
        negotiate(&mut d, vf::VERSION_1 | features::STATS_VQ) & st::FEATURES_OK,
        0
    );
    set_status(&mut d, 0);
    assert_eq!(
        negotiate(&mut d, base() | features::DEFLATE_ON_OOM) & st::FEATURES_OK,
        0
    );
    set_status(&mut d, 0);
    assert_ne!(
        negotiate(&mut d, vf::VERSION_1 | features::MUST_TELL_HOST) & st::FEATURES_OK,
        0,
        "STATS_VQ is optional"
    );

    // num_pages and actual (§5.5.4), both 0; nothing past them.
    assert_eq!(rd(&mut d, DEVICE_CFG, 8), 0);
    assert_eq!(rd(&mut d, DEVICE_CFG + 8, 8), 0);
    // The driver writes actual whole, or byte by byte (§5.5.6.2.1).
    wr(&mut d, DEVICE_CFG + 4, 4, 0x1234_5678);
    assert_eq!(rd(&mut d, DEVICE_CFG + 4, 4), 0x1234_5678);
    for (i, b) in [0x11u64, 0x22, 0x33, 0x44].into_iter().enumerate() {
        wr(&mut d, DEVICE_CFG + 4 + i as u64, 1, b);
    }
    assert_eq!(d.device().actual_pages(), 0x4433_2211);
    // num_pages is the device's: a driver write is ignored and counted.
    wr(&mut d, DEVICE_CFG, 4, 77);
    wr(&mut d, DEVICE_CFG + 2, 4, 0xFFFF_FFFF);
    assert_eq!(rd(&mut d, DEVICE_CFG, 4), 0);
    assert_eq!(
        d.device().actual_pages(),
        0x4433_FFFF,
        "only its actual part"
    );
    assert_eq!(counters(&d).readonly_writes, 2);
}

#[test]
fn a_new_target_is_a_configuration_change_notification() {
    let mut g = guest();
    let gen0 = rd(&mut g.d, common::CONFIG_GENERATION, 1);
    let e = g.d.set_target_pages(100).unwrap();
    assert_eq!(e.intx, Some(true), "INTx with the ISR's configuration bit");
    assert_eq!(rd(&mut g.d, DEVICE_CFG, 4), 100, "num_pages");
    assert_eq!(rd(&mut g.d, common::CONFIG_GENERATION, 1), gen0 + 1);
    let (isr_bits, e) = g.d.bar_read(ISR_CFG, 1);
    assert_eq!(isr_bits, u64::from(isr::CONFIG));
    assert_eq!(e.intx, Some(false), "the ISR read deasserted it");

    // The same target again changes nothing and says nothing.
    assert_eq!(g.d.set_target_pages(100).unwrap(), PciEffects::NONE);
    assert_eq!(rd(&mut g.d, common::CONFIG_GENERATION, 1), gen0 + 1);
    // More than the guest has: refused, nothing changes.
    assert_eq!(
        g.d.set_target_pages(PAGES + 1),
        Err(TargetError::TooLarge {
            requested: PAGES + 1,
            max: PAGES
        })
    );
    assert_eq!(g.d.device().target_pages(), 100);
    assert_eq!(rd(&mut g.d, ISR_CFG, 1), 0);
    g.d.set_target_pages(PAGES).unwrap();
    assert_eq!(g.d.device().target_pages() as u64, PAGES);

    // Before DRIVER_OK the value changes but no notification is sent: the driver
    // reads num_pages when it starts.
    let mut d = new_dev(CountingBackend::new(0));
    d.config_write(reg::COMMAND, 0x6, 0xFFFF);
    negotiate(&mut d, base());
    assert_eq!(d.set_target_pages(5).unwrap(), PciEffects::NONE);
    assert_eq!(rd(&mut d, ISR_CFG, 1), 0);
    assert_eq!(rd(&mut d, DEVICE_CFG, 4), 5);
    assert_eq!(rd(&mut d, common::CONFIG_GENERATION, 1), 1);
}

#[test]
fn the_guest_keeps_its_floor() {
    let b = Balloon::new(
        CountingBackend::new(0),
        BalloonConfig::new(RAM).min_guest_pages(56),
    );
    let mut d = VirtioPci::new(b, VecMemory::new(0x1000));
    assert_eq!(d.device().max_target_pages(), 200);
    assert!(d.set_target_pages(200).is_ok());
    let e = d.set_target_pages(201).unwrap_err();
    assert_eq!(
        e,
        TargetError::TooLarge {
            requested: 201,
            max: 200
        }
    );
    assert!(std::format!("{e}").contains("more than the guest can give"));
    assert!(d.set_target_pages(u64::MAX).is_err());
}

#[test]
fn configuration_changes_through_msix() {
    let mut g = guest();
    g.d.config_write(CAP_MSIX, 0x8000_0000, 0xFFFF_0000);
    // Vector 3 (after the three queues') for configuration changes.
    wr(&mut g.d, MSIX_TABLE + 48, 8, 0xFEE0_0000);
    wr(&mut g.d, MSIX_TABLE + 56, 4, 0x61);
    wr(&mut g.d, MSIX_TABLE + 60, 4, 0);
    // No vector assigned yet: nothing is sent.
    assert_eq!(g.d.set_target_pages(1).unwrap(), PciEffects::NONE);
    wr(&mut g.d, common::CONFIG_MSIX_VECTOR, 2, 3);
    let e = g.d.set_target_pages(2).unwrap();
    assert_eq!(
        e.msi[0],
        Some(MsiMessage {
            address: 0xFEE0_0000,
            data: 0x61
        })
    );
    assert_eq!(e.intx, None);
    assert_eq!(rd(&mut g.d, ISR_CFG, 1), 0, "no ISR bit with MSI-X");
}

#[test]
fn inflate_then_deflate_moves_pages_between_guest_and_pool() {
    let mut g = guest();
    g.d.set_target_pages(3).unwrap();
    assert_eq!(ack(&mut g.d), isr::CONFIG);
    g.inf.post(&mut g.d, 0, &[0x90, 0x80, 0x81]);
    let e = kick(&mut g.d, INFLATE_QUEUE);
    assert_eq!(e.intx, Some(true), "the used buffer's interrupt");
    assert_eq!(ack(&mut g.d), isr::QUEUE);
    assert_eq!(used_idx(&g.d, INFQ), 1);
    assert_eq!(used(&g.d, INFQ, 0), (0, 0), "acknowledged, nothing written");
    assert_eq!(ballooned(&g.d), [0x80, 0x81, 0x90]);
    assert_eq!(g.d.device().ballooned_pages(), 3);
    assert!(g.d.device().is_ballooned(0x81));
    assert!(!g.d.device().is_ballooned(0x82));
    assert!(!g.d.device().is_ballooned(u64::MAX));
    let b = g.d.device().backend();
    assert_eq!(b.held, [0x80, 0x81, 0x90], "sorted for the backend");
    assert_eq!(b.free_pages, POOL + 3, "the pages are the host's now");
    // The driver reports actual; the device shows it but counts its own.
    wr(&mut g.d, DEVICE_CFG + 4, 4, 3);
    assert_eq!(g.d.device().actual_pages(), 3);

    g.d.set_target_pages(1).unwrap();
    g.def.post(&mut g.d, 0, &[0x81, 0x90]);
    kick(&mut g.d, DEFLATE_QUEUE);
    assert_eq!(used_idx(&g.d, DEFQ), 1);
    assert_eq!(ballooned(&g.d), [0x80]);
    assert_eq!(g.d.device().backend().free_pages, POOL + 1);
    let c = counters(&g.d);
    assert_eq!((c.inflate_buffers, c.deflate_buffers), (1, 1));
    assert_eq!((c.pages_inflated, c.pages_deflated), (3, 2));
    assert_eq!(g.d.device().backend().violations, 0);

    // Deflating a page that is not in the balloon, inflating one that is: the
    // bitmap refuses both, the backend never hears of them.
    g.def.post(&mut g.d, 1, &[0x81]);
    kick(&mut g.d, DEFLATE_QUEUE);
    g.inf.post(&mut g.d, 1, &[0x80]);
    kick(&mut g.d, INFLATE_QUEUE);
    let c = counters(&g.d);
    assert_eq!((c.not_ballooned, c.already_ballooned), (1, 1));
    assert_eq!(ballooned(&g.d), [0x80]);
    assert_eq!(g.d.device().backend().inflate_calls, 1);
    assert_eq!(g.d.device().backend().deflate_calls, 1);
    assert_eq!(used_idx(&g.d, INFQ), 2, "acknowledged all the same");
    assert_eq!(used_idx(&g.d, DEFQ), 2);
    assert_eq!(g.d.device().backend().violations, 0);
}

#[test]
fn hostile_page_buffers_are_refused_and_counted_without_touching_the_bitmap() {
    let mut g = guest();
    // Odd length: not an array of u32 (§5.5.6).
    g.inf.post_bytes(&mut g.d, 0, &[0x80, 0, 0, 0, 0x81, 0]);
    // One page number more than a buffer may hold.
    let many: Vec<u32> = (0..MAX_PFNS_PER_BUFFER as u32 + 1)
        .map(|i| i % 200)
        .collect();
    g.inf.post(&mut g.d, 1, &many);
    // Outside RAM (page 256 is the first past 1 MiB; the largest u32), next to
    // good ones.
    g.inf
        .post(&mut g.d, 2, &[PAGES as u32, 0x85, u32::MAX, 0x86]);
    // Duplicates: the first of each is taken.
    g.inf.post(&mut g.d, 3, &[0x87, 0x87, 0x88, 0x87]);
    // Empty.
    g.inf.post(&mut g.d, 4, &[]);
    kick(&mut g.d, INFLATE_QUEUE);
    assert_eq!(used_idx(&g.d, INFQ), 5, "every buffer acknowledged");
    let c = counters(&g.d);
    assert_eq!(c.bad_length, 1);
    assert_eq!(c.oversized, 1);
    assert_eq!(c.out_of_ram, 2);
    assert_eq!(c.duplicates, 2);
    assert_eq!(ballooned(&g.d), [0x85, 0x86, 0x87, 0x88]);
    assert_eq!(g.d.device().backend().held, [0x85, 0x86, 0x87, 0x88]);

    // The largest buffer allowed is taken.
    let full: Vec<u32> = (0..MAX_PFNS_PER_BUFFER as u32).map(|i| i % 0x80).collect();
    g.inf.post(&mut g.d, 5, &full);
    kick(&mut g.d, INFLATE_QUEUE);
    assert_eq!(g.d.device().ballooned_pages(), 0x80 + 4);
    assert_eq!(
        counters(&g.d).duplicates,
        2 + MAX_PFNS_PER_BUFFER as u64 - 0x80
    );

    // A deflate buffer with the same faults.
    g.def.post(&mut g.d, 0, &[0x85, 0x85, 0xFFFF_0000, 0x99]);
    g.def.post_bytes(&mut g.d, 1, &[1, 2, 3]);
    kick(&mut g.d, DEFLATE_QUEUE);
    let c = counters(&g.d);
    assert_eq!(c.duplicates, 3 + MAX_PFNS_PER_BUFFER as u64 - 0x80);
    assert_eq!((c.out_of_ram, c.not_ballooned, c.bad_length), (3, 1, 2));
    assert!(!g.d.device().is_ballooned(0x85));
    assert_eq!(g.d.device().ballooned_pages(), 0x80 + 3);
    assert_eq!(g.d.device().backend().violations, 0);
    assert_eq!(g.d.status(), 0xF, "the driver's mistakes need no reset");
}

#[test]
fn a_page_array_may_span_descriptors_and_indirect_tables() {
    let mut g = guest_with(CountingBackend::new(POOL), base() | vf::INDIRECT_DESC);
    // Page 0x91's four bytes are split 2 + 2 across two descriptors; a third,
    // device-writable descriptor is not part of the array.
    let bytes = le32s(&[0x90, 0x91]);
    let m = g.d.memory_mut();
    m.write(INFBUF, &bytes[..6]).unwrap();
    m.write(INFBUF + 0x100, &bytes[6..]).unwrap();
    desc(m, INFQ.0, 0, INFBUF, 6, NEXT, 1);
    desc(m, INFQ.0, 1, INFBUF + 0x100, 2, NEXT, 2);
    desc(m, INFQ.0, 2, INFBUF + 0x200, 4, WRITE, 0);
    g.inf.publish(m, 0);
    // An indirect table of one descriptor.
    m.write(INFBUF + 0x400, &le32s(&[0x92])).unwrap();
    desc(m, INFBUF + 0x600, 0, INFBUF + 0x400, 4, 0, 0);
    desc(m, INFQ.0, 3, INFBUF + 0x600, 16, INDIRECT, 0);
    g.inf.publish(m, 3);
    kick(&mut g.d, INFLATE_QUEUE);
    assert_eq!(ballooned(&g.d), [0x90, 0x91, 0x92]);
    assert_eq!(used(&g.d, INFQ, 0), (0, 0));
    assert_eq!(used(&g.d, INFQ, 1), (3, 0));
}

#[test]
fn malformed_queues_need_a_reset_and_balloon_nothing() {
    // What the queue layer refuses (a loop, a buffer past RAM) never reaches the
    // device: DEVICE_NEEDS_RESET, nothing ballooned.
    for (name, build) in [
        ("descriptor loop", 0u8),
        ("buffer past RAM", 1),
        ("indirect without the feature", 2),
    ] {
        let mut g = guest();
        let m = g.d.memory_mut();
        m.write(INFBUF, &le32s(&[0x80])).unwrap();
        match build {
            0 => {
                desc(m, INFQ.0, 0, INFBUF, 4, NEXT, 1);
                desc(m, INFQ.0, 1, INFBUF, 4, NEXT, 0);
            }
            1 => desc(m, INFQ.0, 0, RAM - 2, 4, 0, 0),
            _ => desc(m, INFQ.0, 0, INFBUF, 16, INDIRECT, 0),
        }
        g.inf.publish(m, 0);
        let e = kick(&mut g.d, INFLATE_QUEUE);
        assert_ne!(g.d.status() & st::DEVICE_NEEDS_RESET, 0, "{name}");
        assert_eq!(e.intx, Some(true), "{name}: configuration change");
        assert_eq!(g.d.device().ballooned_pages(), 0, "{name}");
        assert_eq!(g.d.device().backend().inflate_calls, 0, "{name}");
    }
}

#[test]
fn backend_failures_leave_pages_where_they_were() {
    let mut backend = CountingBackend::new(1);
    backend.busy = vec![0x84];
    let mut g = guest_with(backend, base());
    g.inf.post(&mut g.d, 0, &[0x83, 0x84, 0x85, 0x86]);
    kick(&mut g.d, INFLATE_QUEUE);
    assert_eq!(ballooned(&g.d), [0x83, 0x85, 0x86], "past the busy page");
    let c = counters(&g.d);
    assert_eq!(c.inflate_failed, 1);
    assert_eq!(c.last_backend_error, Some(BackendError::Busy));
    assert_eq!(g.d.device().backend().inflate_calls, 2, "again after it");

    // Room in the pool for two of the three pages: the third fails NoMemory.
    g.d.device_mut().backend_mut().free_pages = 2;
    g.def.post(&mut g.d, 0, &[0x83, 0x85, 0x86]);
    kick(&mut g.d, DEFLATE_QUEUE);
    assert_eq!(ballooned(&g.d), [0x86], "still ballooned: not backed");
    let c = counters(&g.d);
    assert_eq!((c.deflate_failed, c.pages_deflated), (1, 2));
    assert_eq!(c.last_backend_error, Some(BackendError::NoMemory));
    assert_eq!(used_idx(&g.d, DEFQ), 1, "the guest is answered");
    assert_eq!(g.d.device().backend().violations, 0);
}

/// A backend that claims more than it was given: the device must not trust the
/// index.
struct Overreaching;

impl BalloonBackend for Overreaching {
    fn inflate(&mut self, pfns: &[u32]) -> Result<(), Failed> {
        Err(Failed {
            index: pfns.len() + 5,
            error: BackendError::Failed,
        })
    }
    fn deflate(&mut self, _pfns: &[u32]) -> Result<(), Failed> {
        Ok(())
    }
}

/// A chain of one readable segment.
fn chain(addr: u64, len: u32) -> Chain {
    Chain {
        head: 0,
        segments: vec![Segment {
            addr,
            len,
            write: false,
        }],
    }
}

#[test]
fn a_backend_index_past_the_batch_means_all_done() {
    let mut b = Balloon::new(Overreaching, BalloonConfig::new(RAM));
    let mut m = VecMemory::new(0x1000);
    m.write(0, &le32s(&[1, 2])).unwrap();
    b.process(INFLATE_QUEUE, &chain(0, 8), &mut m);
    assert_eq!(b.ballooned_pfns().collect::<Vec<_>>(), [1, 2]);
}

#[test]
fn ram_ranges_pages_and_holes() {
    // Whole pages only; a hole between two ranges; beyond 16 TiB nothing.
    let cfg = BalloonConfig::with_ranges(&[
        0x800..0x3800,
        0x10_0000..0x20_0000,
        0x1_0000_0000_0000..0x1_0000_0001_0000,
    ]);
    let mut b = Balloon::new(CountingBackend::new(0), cfg);
    assert_eq!(b.ram_pages(), 2 + 256);
    let mut m = VecMemory::new(0x1000);
    m.write(0, &le32s(&[0, 1, 2, 3, 0xFF, 0x100, 0x1FF, 0x200]))
        .unwrap();
    b.process(INFLATE_QUEUE, &chain(0, 32), &mut m);
    assert_eq!(b.ballooned_pfns().collect::<Vec<_>>(), [1, 2, 0x100, 0x1FF]);
    assert_eq!(b.counters().out_of_ram, 4);
}

#[test]
fn a_reset_gives_every_page_back_in_batches() {
    // 64 MiB of RAM, a balloon of 5000 pages: several batches of the backend.
    let mut b = Balloon::new(CountingBackend::new(0), BalloonConfig::new(64 << 20));
    let mut m = VecMemory::new(0x1000);
    for start in (0..5000u32).step_by(1000) {
        let pfns: Vec<u32> = (start..start + 1000).map(|p| p * 3).collect();
        m.write(0, &le32s(&pfns)).unwrap();
        b.process(INFLATE_QUEUE, &chain(0, 4000), &mut m);
    }
    assert_eq!(b.ballooned_pages(), 5000);
    assert_eq!(b.ballooned_pfns().nth(4999), Some(4999 * 3));
    assert_eq!(b.set_target_pages(5000), Ok(true));
    b.write_config(4, &5000u32.to_le_bytes());
    b.backend_mut().free_pages = 4500;
    b.reset();
    assert_eq!(b.ballooned_pages(), 500, "the pool ran dry");
    assert_eq!(b.counters().deflate_failed, 500);
    assert_eq!(b.backend().deflate_calls, 5, "no call after the shortage");
    assert_eq!(
        b.counters().last_backend_error,
        Some(BackendError::NoMemory)
    );
    assert_eq!(b.target_pages(), 5000, "the host's target stays");
    assert_eq!(b.actual_pages(), 0, "the driver's report is gone");
    b.backend_mut().free_pages = 500;
    assert_eq!(b.deflate_all(), 500);
    assert_eq!(b.ballooned_pages(), 0);
    assert!(b.backend().held.is_empty());
    assert_eq!(b.backend().violations, 0);
}

#[test]
fn a_driver_reset_through_the_transport_deflates() {
    let mut g = guest();
    g.inf.post(&mut g.d, 0, &[0x80, 0x81]);
    kick(&mut g.d, INFLATE_QUEUE);
    assert_eq!(g.d.device().ballooned_pages(), 2);
    set_status(&mut g.d, 0);
    assert_eq!(g.d.device().ballooned_pages(), 0);
    assert!(g.d.device().backend().held.is_empty());
}

#[test]
fn statistics_round_trip() {
    let mut g = guest();
    // §5.5.5: the driver's first buffer, already filled in (Linux does), with
    // a tag this device does not know and a partial entry at the end.
    let mut report = stat_entries(&[
        (tag::MEMFREE, 100 << 20),
        (tag::MEMTOT, 200 << 20),
        (99, 1),
        (tag::AVAIL, 150 << 20),
    ]);
    report.extend_from_slice(&[1, 2, 3, 4]);
    g.st.post_bytes(&mut g.d, 0, &report);
    let e = kick(&mut g.d, STATS_QUEUE);
    assert_eq!(e, PciEffects::NONE, "kept, not returned");
    assert_eq!(used_idx(&g.d, STQ), 0);
    assert!(g.d.device().holds_stats_buffer());
    let s = g.d.device().guest_stats();
    assert_eq!(s.free, Some(100 << 20));
    assert_eq!(s.total, Some(200 << 20));
    assert_eq!(s.available, Some(150 << 20));
    assert_eq!(s.caches, None);
    let c = counters(&g.d);
    assert_eq!(
        (c.stats_reports, c.stats_unknown_tags, c.stats_ignored_bytes),
        (1, 1, 4)
    );

    // The host asks: the buffer goes back used with its interrupt.
    let (asked, e) = g.d.request_stats();
    assert!(asked);
    assert_eq!(e.intx, Some(true));
    assert_eq!(used_idx(&g.d, STQ), 1);
    assert_eq!(used(&g.d, STQ, 0), (0, 0));
    assert_eq!(ack(&mut g.d), isr::QUEUE);
    assert!(!g.d.device().holds_stats_buffer());
    // Nothing held: a second request has nothing to return.
    assert!(!g.d.request_stats().0);
    assert_eq!(used_idx(&g.d, STQ), 1);

    // The driver answers with a new buffer: a whole new report.
    g.st.post_bytes(
        &mut g.d,
        1,
        &stat_entries(&[(tag::MEMTOT, 200 << 20), (tag::MEMFREE, 90 << 20)]),
    );
    kick(&mut g.d, STATS_QUEUE);
    let s = g.d.device().guest_stats();
    assert_eq!(
        (s.free, s.total, s.available),
        (Some(90 << 20), Some(200 << 20), None)
    );
    assert_eq!(counters(&g.d).stats_reports, 2);
    assert!(g.d.device().holds_stats_buffer());

    // A driver that sends another while one is held (§5.5.6.3.1: at most one):
    // the older goes back, the newer is kept.
    g.st.post_bytes(&mut g.d, 2, &stat_entries(&[(tag::MINFLT, 7)]));
    let e = kick(&mut g.d, STATS_QUEUE);
    assert_eq!(e.intx, Some(true));
    assert_eq!(used_idx(&g.d, STQ), 2);
    assert_eq!(used(&g.d, STQ, 1), (1, 0));
    assert_eq!(counters(&g.d).stats_protocol, 1);
    assert_eq!(g.d.device().guest_stats().minor_faults, Some(7));
    g.d.request_stats();
    assert_eq!(used(&g.d, STQ, 2), (2, 0));

    // A huge buffer: only the first MAX_STATS_ENTRIES entries are read.
    let big = stat_entries(&vec![(tag::SWAP_IN, 5); MAX_STATS_ENTRIES + 3]);
    g.st.post_bytes(&mut g.d, 3, &big);
    kick(&mut g.d, STATS_QUEUE);
    assert_eq!(g.d.device().guest_stats().swap_in, Some(5));
    assert_eq!(
        counters(&g.d).stats_ignored_bytes,
        4 + 3 * STAT_ENTRY_LEN as u64
    );
}

#[test]
fn a_stats_request_waits_until_the_driver_can_take_it() {
    let mut g = guest();
    g.st.post_bytes(&mut g.d, 0, &stat_entries(&[(tag::MEMFREE, 1)]));
    kick(&mut g.d, STATS_QUEUE);
    // Bus mastering off: the ring cannot be written now.
    g.d.config_write(reg::COMMAND, 0x2, 0xFFFF);
    let (asked, e) = g.d.request_stats();
    assert!(asked);
    assert_eq!(e, PciEffects::NONE);
    assert_eq!(used_idx(&g.d, STQ), 0);
    assert!(!PciFunction::has_work(&g.d));
    g.d.config_write(reg::COMMAND, 0x6, 0xFFFF);
    assert!(PciFunction::has_work(&g.d));
    let e = PciFunction::poll(&mut g.d);
    assert_eq!(e.intx, Some(true));
    assert_eq!(used_idx(&g.d, STQ), 1);
    assert!(!PciFunction::has_work(&g.d));
}

#[test]
fn without_stats_vq_the_stats_queue_returns_buffers_at_once() {
    let mut g = guest_with(
        CountingBackend::new(POOL),
        vf::VERSION_1 | features::MUST_TELL_HOST,
    );
    g.st.post_bytes(&mut g.d, 0, &stat_entries(&[(tag::MEMFREE, 1)]));
    kick(&mut g.d, STATS_QUEUE);
    assert_eq!(used_idx(&g.d, STQ), 1);
    assert_eq!(g.d.device().guest_stats(), GuestMemStats::default());
    assert_eq!(counters(&g.d).stats_protocol, 1);
    assert!(!g.d.device().holds_stats_buffer());
}

#[test]
fn a_stats_request_uses_event_idx_like_any_used_buffer() {
    let mut g = guest_with(CountingBackend::new(POOL), base() | vf::EVENT_IDX);
    g.st.post_bytes(&mut g.d, 0, &stat_entries(&[(tag::MEMFREE, 1)]));
    kick(&mut g.d, STATS_QUEUE);
    // used_event (after the available ring's entries) = 5: the driver wants no
    // interrupt for the first used buffer.
    let used_event = STQ.1 + 4 + 2 * u64::from(SIZE);
    g.d.memory_mut().write_u16(used_event, 5).unwrap();
    let (_, e) = g.d.request_stats();
    assert_eq!(e, PciEffects::NONE);
    assert_eq!(used_idx(&g.d, STQ), 1);
    g.d.memory_mut().write_u16(used_event, 1).unwrap();
    g.st.post_bytes(&mut g.d, 1, &stat_entries(&[(tag::MEMFREE, 2)]));
    kick(&mut g.d, STATS_QUEUE);
    let (_, e) = g.d.request_stats();
    assert_eq!(e.intx, Some(true));
}

/// A device in a state worth saving: pages ballooned, a target, actual, a
/// statistics buffer held and its report.
fn busy_guest() -> Guest {
    let mut g = guest();
    g.d.set_target_pages(40).unwrap();
    g.inf.post(&mut g.d, 0, &[0x80, 0xC3, 0xFF]);
    kick(&mut g.d, INFLATE_QUEUE);
    wr(&mut g.d, DEVICE_CFG + 4, 4, 3);
    g.st.post_bytes(&mut g.d, 0, &stat_entries(&[(tag::MEMFREE, 123)]));
    kick(&mut g.d, STATS_QUEUE);
    g
}

#[test]
fn snapshots_keep_the_balloon_and_the_held_buffer() {
    let g = busy_guest();
    let snap = g.d.state();
    let mut d = VirtioPci::new(
        Balloon::new(CountingBackend::new(0), BalloonConfig::new(RAM)),
        g.d.memory().clone(),
    );
    d.restore(&snap).unwrap();
    assert_eq!(d.state(), snap);
    assert_eq!(
        ack(&mut d),
        isr::CONFIG | isr::QUEUE,
        "pending in the snapshot"
    );
    assert_eq!(
        d.device().ballooned_pfns().collect::<Vec<_>>(),
        [0x80, 0xC3, 0xFF]
    );
    assert_eq!(d.device().target_pages(), 40);
    assert_eq!(d.device().actual_pages(), 3);
    assert_eq!(d.device().guest_stats().free, Some(123));
    assert_eq!(
        d.device().backend().inflate_calls,
        0,
        "restore calls no backend"
    );
    // The held buffer goes back at the restored device's first request.
    let (asked, e) = d.request_stats();
    assert!(asked);
    assert_eq!(e.intx, Some(true));
    assert_eq!(used_idx(&d, STQ), 1);
    // The bitmap is the restored one: deflating a restored page works, inflating
    // it again is refused.
    let mut def = Ring {
        q: DEFQ,
        buf: DEFBUF,
        drv: Driver {
            size: SIZE,
            avail_idx: 0,
        },
    };
    d.device_mut().backend_mut().free_pages = 5;
    d.device_mut().backend_mut().held = vec![0x80, 0xC3, 0xFF];
    def.post(&mut d, 0, &[0xC3]);
    kick(&mut d, DEFLATE_QUEUE);
    assert_eq!(
        d.device().ballooned_pfns().collect::<Vec<_>>(),
        [0x80, 0xFF]
    );
    assert_eq!(d.device().backend().violations, 0);
}

/// The device's part of a transport snapshot of `d`: the last field.
fn device_part(d: &Dev, snap: &[u8]) -> std::ops::Range<usize> {
    let len = d.device().state().len();
    snap.len() - len..snap.len()
}

#[test]
fn snapshot_refusals_change_nothing() {
    let g = busy_guest();
    let snap = g.d.state();
    let part = device_part(&g.d, &snap);
    assert_eq!(&snap[part.start..part.start + 8], b"vballoon");
    let mut d = busy_guest().d;
    d.device_mut().set_target_pages(7).unwrap();
    let before = d.state();
    let refused = |d: &mut Dev, data: &[u8], why: &str| {
        assert!(d.restore(data).is_err(), "{why}: accepted");
        assert_eq!(d.state(), before, "{why}: changed the device");
    };
    // Truncated anywhere, one byte too many.
    for cut in [
        0,
        10,
        part.start,
        part.start + 9,
        part.start + 20,
        snap.len() - 1,
    ] {
        refused(&mut d, &snap[..cut], "truncated");
    }
    let mut long = snap.clone();
    long.push(0);
    refused(&mut d, &long, "trailing byte");
    // The device part's own version and tag.
    let mut bad = snap.clone();
    bad[part.start + 8] ^= 1;
    refused(&mut d, &bad, "device part version");
    bad = snap.clone();
    bad[part.start] = b'X';
    refused(&mut d, &bad, "device part tag");
    // Another RAM size (the ram_pages field).
    bad = snap.clone();
    bad[part.start + 10] ^= 1;
    refused(&mut d, &bad, "RAM size");
    // A target above RAM.
    let target_at = part.start + 10 + 16;
    bad = snap.clone();
    bad[target_at..target_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    refused(&mut d, &bad, "target");
    // Features never offered (DEFLATE_ON_OOM).
    let features_at = target_at + 8;
    bad = snap.clone();
    bad[features_at] |= features::DEFLATE_ON_OOM as u8;
    refused(&mut d, &bad, "features");
    // A held head past the queue.
    let held_at = features_at + 8 + 1;
    bad = snap.clone();
    bad[held_at..held_at + 8].copy_from_slice(&u64::from(QUEUE_SIZE).to_le_bytes());
    refused(&mut d, &bad, "held head");
    // A snapshot of a device with a different RAM size.
    let mut other = VirtioPci::new(
        Balloon::new(CountingBackend::new(0), BalloonConfig::new(RAM * 2)),
        g.d.memory().clone(),
    );
    assert!(other.restore(&snap).is_err());

    // Every byte of the device part corrupted, one at a time: refused or taken
    // whole, never a panic, and a taken one reads back as given.
    for at in part.clone() {
        for flip in [0x01u8, 0x80, 0xFF] {
            let mut bad = snap.clone();
            bad[at] ^= flip;
            let mut e = busy_guest().d;
            let before = e.state();
            match e.restore(&bad) {
                Ok(()) => assert_eq!(e.state(), bad, "byte {at}"),
                Err(_) => assert_eq!(e.state(), before, "byte {at}"),
            }
        }
    }
}

#[test]
fn a_snapshot_cannot_balloon_a_hole() {
    // RAM with a hole at pages 0x80-0xBF: a bitmap bit there is refused.
    let cfg = BalloonConfig::with_ranges(&[0..0x8_0000, 0xC_0000..RAM]);
    let b = Balloon::new(CountingBackend::new(0), cfg.clone());
    let good = b.state();
    let mut bitmap_word_2 = good.clone();
    // The bitmap is the last 4 words; word 2 holds pages 0x80-0xBF.
    let at = good.len() - 2 * 8;
    bitmap_word_2[at] = 1;
    let mut c = Balloon::new(CountingBackend::new(0), cfg);
    assert!(!c.restore(&bitmap_word_2));
    assert_eq!(c.state(), good);
    // The same bit in RAM (word 3, page 0xC0) is taken.
    let mut word_3 = good.clone();
    word_3[good.len() - 8] = 1;
    assert!(c.restore(&word_3));
    assert!(c.is_ballooned(0xC0));
    assert_eq!(c.ballooned_pages(), 1);
}
