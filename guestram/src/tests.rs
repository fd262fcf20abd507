//! Host tests of the RAM map and the unmap protocol against a model allocator.

extern crate std;

use super::sync::{TlbSync, UnmapLog};
use super::*;
use std::collections::BTreeSet;
use std::vec;

/// A host-memory model: hands out frames of `[0, size)` first-fit, refuses 2 MiB
/// frames when told to, and checks nothing is freed twice or never taken.
struct Model {
    size: u64,
    taken: BTreeSet<u64>,
    no_huge: bool,
}

impl Model {
    fn new(size: u64) -> Self {
        Self {
            size,
            taken: BTreeSet::new(),
            no_huge: false,
        }
    }
    fn free_pages(&self) -> u64 {
        self.size / PAGE - self.taken.len() as u64
    }
}

impl Frames for Model {
    fn alloc(&mut self, size: u64, align: u64) -> Option<u64> {
        if self.no_huge && size > PAGE {
            return None;
        }
        let mut at = 0;
        while at + size <= self.size {
            if (0..size / PAGE).all(|p| !self.taken.contains(&(at + p * PAGE))) {
                for p in 0..size / PAGE {
                    self.taken.insert(at + p * PAGE);
                }
                return Some(at);
            }
            at += align;
        }
        None
    }
    fn free(&mut self, hpa: u64, size: u64) {
        for p in 0..size / PAGE {
            assert!(
                self.taken.remove(&(hpa + p * PAGE)),
                "{:#x} freed but not taken",
                hpa + p * PAGE
            );
        }
    }
}

#[test]
fn allocation_prefers_2mib_frames_and_falls_back_to_pages() {
    let mut host = Model::new(16 << 20);
    let map = RamMap::allocate((4 << 20) + 3 * PAGE, &mut host).unwrap();
    assert_eq!(map.huge_chunks(), 2);
    assert_eq!(map.absent_pages(), 0);
    assert_eq!(map.backed_bytes(), (4 << 20) + 3 * PAGE);
    assert_eq!(host.free_pages(), (16 << 20) / PAGE - 1024 - 3);
    // Runs: the two 2 MiB frames and the three pages merge into one.
    assert_eq!(
        map.runs(),
        vec![Run {
            gpa: 0,
            hpa: 0,
            len: (4 << 20) + 3 * PAGE,
            shared: false
        }]
    );

    let mut frag = Model::new(8 << 20);
    frag.no_huge = true;
    let map = RamMap::allocate(4 << 20, &mut frag).unwrap();
    assert_eq!(map.huge_chunks(), 0);
    assert_eq!(map.frame(1000), Some(1000 * PAGE));
}

#[test]
fn allocation_failure_gives_everything_back() {
    let mut host = Model::new(3 << 20);
    let err = RamMap::allocate(4 << 20, &mut host).unwrap_err();
    assert!(
        matches!(err, RamError::OutOfMemory { size, backed } if size == 4 << 20 && backed == 3 << 20)
    );
    assert!(host.taken.is_empty());
    assert_eq!(
        RamMap::allocate(0, &mut host).unwrap_err(),
        RamError::BadSize(0)
    );
    assert_eq!(
        RamMap::allocate(100, &mut host).unwrap_err(),
        RamError::BadSize(100)
    );
}

#[test]
fn taking_a_page_splits_its_chunk_and_leaves_a_hole() {
    let mut host = Model::new(8 << 20);
    let mut map = RamMap::allocate(4 << 20, &mut host).unwrap();
    let (hpa, shared) = map.take_page(513).unwrap();
    assert!(!shared);
    assert_eq!(hpa, (2 << 20) + PAGE);
    assert_eq!(map.huge_chunks(), 1);
    assert_eq!(map.frame(513), None);
    assert_eq!(map.frame(514), Some((2 << 20) + 2 * PAGE));
    assert_eq!(map.absent_pages(), 1);
    assert_eq!(map.absent().collect::<std::vec::Vec<_>>(), vec![513]);
    assert_eq!(map.take_page(513), Err(RamError::Absent(513)));
    assert_eq!(map.take_page(1024), Err(RamError::OutOfRange(1024)));
    assert_eq!(
        map.runs(),
        vec![
            Run {
                gpa: 0,
                hpa: 0,
                len: (2 << 20) + PAGE,
                shared: false
            },
            Run {
                gpa: (2 << 20) + 2 * PAGE,
                hpa: (2 << 20) + 2 * PAGE,
                len: (2 << 20) - 2 * PAGE,
                shared: false
            },
        ]
    );
    // The span stops at the hole; reads inside the hole find nothing.
    assert_eq!(map.span(2 << 20, 3 * PAGE), Some((2 << 20, PAGE)));
    assert_eq!(map.span((2 << 20) + PAGE + 8, 8), None);
    assert_eq!(map.span((4 << 20) - 8, 64), Some(((4 << 20) - 8, 8)));
    assert_eq!(map.span(4 << 20, 1), None);
    // Whole ranges: all backed, or not.
    assert!(map.backed(0, (2 << 20) + PAGE));
    assert!(!map.backed(0, (2 << 20) + PAGE + 1));
    assert!(map.backed((2 << 20) + 2 * PAGE, (2 << 20) - 2 * PAGE));
    assert!(!map.backed((4 << 20) - 8, 16));
    assert!(!map.backed(u64::MAX, 2));
    host.free(hpa, PAGE);
    map.release(&mut host);
    assert!(host.taken.is_empty());
}

#[test]
fn put_and_fill_back_pages() {
    let mut host = Model::new(8 << 20);
    let mut map = RamMap::allocate(2 << 20, &mut host).unwrap();
    // The taken frames stay taken (given to someone else), so the fresh ones come
    // from elsewhere.
    let taken: std::vec::Vec<u64> = [3, 4, 200]
        .iter()
        .map(|&g| map.take_page(g).unwrap().0)
        .collect();
    assert_eq!(map.put_page(3, 0x1234), Err(RamError::Unaligned(0x1234)));
    assert_eq!(map.put_page(5, 0x7000), Err(RamError::Backed(5)));
    assert_eq!(map.put_page(512, 0x7000), Err(RamError::OutOfRange(512)));
    let fresh = host.alloc(PAGE, PAGE).unwrap();
    map.put_page(3, fresh).unwrap();
    assert_eq!(map.frame(3), Some(fresh));
    assert_eq!(map.fill(&mut host).unwrap(), 2);
    assert_eq!(map.absent_pages(), 0);
    // Scattered frames: spans end where the host frames stop following on.
    assert_eq!(map.span(0, 2 << 20), Some((0, 3 * PAGE)));
    map.release(&mut host);
    for hpa in taken {
        host.free(hpa, PAGE);
    }
    assert!(host.taken.is_empty());
}

#[test]
fn fill_reports_what_it_could_not_back() {
    let mut host = Model::new(2 << 20);
    let mut map = RamMap::allocate(2 << 20, &mut host).unwrap();
    let (a, _) = map.take_page(0).unwrap();
    let _b = map.take_page(1).unwrap();
    host.free(a, PAGE);
    assert!(matches!(
        map.fill(&mut host),
        Err(RamError::OutOfMemory { .. })
    ));
    assert_eq!(map.absent_pages(), 1);
}

#[test]
fn contiguous_maps_use_chunks_only_where_aligned() {
    let map = RamMap::contiguous(0x20_0000, 4 << 20).unwrap();
    assert_eq!(map.huge_chunks(), 2);
    let map = RamMap::contiguous(0x1000, 4 << 20).unwrap();
    assert_eq!(map.huge_chunks(), 0);
    assert_eq!(map.span(0, 4 << 20), Some((0x1000, 2 << 20)));
    assert_eq!(map.runs().len(), 1);
    assert_eq!(
        RamMap::contiguous(0x10, 4096).unwrap_err(),
        RamError::Unaligned(0x10)
    );
}

#[test]
fn a_frame_waits_for_every_vcpu_inside_the_guest() {
    let sync = TlbSync::new(3);
    let mut log = UnmapLog::default();
    // vCPU 0 runs in the guest; 1 and 2 are outside.
    assert_eq!(sync.enter(0), None);
    let g = log.record(7, 0x7000);
    sync.publish(g);
    // vCPU 0 may still reach the frame.
    assert!(sync.safe_generation() < g);
    assert!(log.reusable(sync.safe_generation()).is_empty());
    // vCPU 1 enters: it must apply the generation first.
    assert_eq!(sync.enter(1), Some(g));
    assert_eq!(
        log.pages_between(sync.applied_by(1), g)
            .collect::<std::vec::Vec<_>>(),
        vec![7]
    );
    sync.applied(1, g);
    // vCPU 0 leaves: nothing inside the guest can reach the frame now.
    sync.left(0);
    assert_eq!(sync.safe_generation(), g);
    assert_eq!(log.reusable(sync.safe_generation()), vec![0x7000]);
    // The page stays in the log until vCPUs 0 and 2 have unmapped it too.
    log.trim(sync.oldest_unapplied());
    assert_eq!(log.pending_len(), 1);
    assert_eq!(sync.enter(0), Some(g));
    sync.applied(0, g);
    sync.reset_vcpu(2);
    log.trim(sync.oldest_unapplied());
    assert_eq!(log.pending_len(), 0);
    assert_eq!(log.retired_len(), 0);
}

#[test]
fn the_owner_and_a_vcpu_racing_never_both_miss_each_other() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    // Many rounds of: a vCPU thread enters (and would run with stale tables unless
    // it sees the generation); the owner publishes and frees if it sees the vCPU
    // outside. Never both "freed" and "entered without applying".
    for _ in 0..2000 {
        let sync = Arc::new(TlbSync::new(1));
        let freed = Arc::new(AtomicBool::new(false));
        let s = sync.clone();
        let vcpu = std::thread::spawn(move || s.enter(0).is_some());
        sync.publish(1);
        let may_free = sync.safe_generation() >= 1;
        freed.store(may_free, Ordering::SeqCst);
        let applied_first = vcpu.join().unwrap();
        assert!(
            applied_first || !may_free,
            "a frame was freed while a vCPU entered with stale tables"
        );
    }
}

#[test]
fn take_all_leaves_an_empty_map_of_the_same_size() {
    let mut host = Model::new(8 << 20);
    let mut map = RamMap::allocate((2 << 20) + PAGE, &mut host).unwrap();
    let old = map.take_all();
    assert_eq!(map.size(), (2 << 20) + PAGE);
    assert_eq!(map.absent_pages(), 513);
    assert_eq!(map.frame(0), None);
    assert_eq!(map.span(0, 8), None);
    assert!(map.runs().is_empty());
    assert_eq!(map.take_page(0), Err(RamError::Absent(0)));
    old.release(&mut host);
    assert!(host.taken.is_empty());
    // An empty chunk can be backed page by page again.
    assert_eq!(map.fill(&mut host).unwrap(), 513);
    assert_eq!(map.backed_bytes(), (2 << 20) + PAGE);
}

#[test]
fn shared_pages_are_read_only_runs_until_unshared_and_never_freed() {
    let mut host = Model::new(16 << 20);
    let copy = host.alloc(4 << 20, HUGE).unwrap();
    let mut map = RamMap::shared(copy, 4 << 20).unwrap();
    assert_eq!(map.shared_pages(), 1024);
    assert_eq!(map.backed_bytes(), 4 << 20);
    assert_eq!(
        map.runs(),
        vec![Run {
            gpa: 0,
            hpa: copy,
            len: 4 << 20,
            shared: true
        }]
    );
    assert!(map.is_shared(5));
    assert_eq!(map.frame(5), Some(copy + 5 * PAGE));
    assert_eq!(map.span(5 * PAGE + 8, 64), Some((copy + 5 * PAGE + 8, 64)));
    // A write to page 5: it gets its own frame.
    let own = host.alloc(PAGE, PAGE).unwrap();
    assert_eq!(map.unshare(5, own), Ok(copy + 5 * PAGE));
    assert!(!map.is_shared(5));
    assert_eq!(map.frame(5), Some(own));
    assert_eq!(map.unshare(5, own), Err(RamError::Backed(5)));
    assert_eq!(map.shared_pages(), 1023);
    let runs = map.runs();
    assert_eq!(runs.len(), 3);
    assert_eq!(
        runs[1],
        Run {
            gpa: 5 * PAGE,
            hpa: own,
            len: PAGE,
            shared: false
        }
    );
    assert!(runs[0].shared && runs[2].shared);
    // The span stops where sharing changes.
    assert_eq!(map.span(4 * PAGE, 2 * PAGE), Some((copy + 4 * PAGE, PAGE)));
    // Ballooning a shared page: its frame is reported shared (not to be freed).
    assert_eq!(map.take_page(6), Ok((copy + 6 * PAGE, true)));
    assert_eq!(map.shared_pages(), 1022);
    // Release frees the page of its own only; the copy stays its owner's.
    map.release(&mut host);
    assert_eq!(host.taken.len(), 1024);
    host.free(copy, 4 << 20);
    assert!(host.taken.is_empty());
}

#[test]
fn a_writer_waits_only_for_the_other_vcpus_inside() {
    let sync = TlbSync::new(3);
    let mut log = UnmapLog::default();
    assert_eq!(sync.enter(1), None);
    let g = log.record_unmap(9);
    sync.publish(g);
    assert_eq!(log.retired_len(), 0);
    // vCPU 0 (the writer, outside) waits for vCPU 1.
    assert!(sync.safe_generation_excluding(0) < g);
    assert_eq!(sync.inside_mask(), 0b010);
    sync.left(1);
    assert_eq!(sync.safe_generation_excluding(0), g);
    assert_eq!(sync.inside_mask(), 0);
}
