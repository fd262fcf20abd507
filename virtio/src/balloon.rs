//! virtio-balloon, the traditional memory balloon (virtio 1.2 §5.5): the host sets
//! a target (`num_pages`, 4 KiB pages the guest should give up), the guest's driver
//! hands pages over on the inflate queue and takes them back on the deflate queue,
//! and reports its memory statistics on the stats queue.
//!
//! * **inflateq (0), deflateq (1)**: each buffer's device-readable part is an array
//!   of little-endian u32 page frame numbers (§5.5.6: the guest-physical address
//!   divided by 4096). A buffer whose length is not a multiple of 4, that holds
//!   more than [`MAX_PFNS_PER_BUFFER`] numbers, or that cannot be read is refused
//!   whole; of the rest every number is checked (inside guest RAM, not twice in one
//!   buffer, not ballooned already for inflate, ballooned for deflate) and what
//!   passes goes to the [`BalloonBackend`], which the kernel implements by
//!   unmapping and freeing the host pages (inflate) or backing them with fresh ones
//!   (deflate). Every refusal is counted ([`BalloonCounters`]); the buffer is
//!   always acknowledged (used, length 0: the device writes nothing, and virtio
//!   has no error status for a balloon buffer).
//! * **The bitmap** of ballooned pages, one bit per 4 KiB page of guest RAM, is
//!   the device's record of which pages the hypervisor took. It, not the
//!   driver's `actual` (reported, never trusted), decides what a request may do,
//!   so a page the guest inflates twice, deflates without having inflated, or that
//!   lies outside RAM never reaches the backend, and a backend failure leaves the
//!   page's bit as it was.
//! * **statsq (2)**, with VIRTIO_BALLOON_F_STATS_VQ (§5.5.6.3): the driver's buffer
//!   holds 10-byte entries (le16 tag, le64 value, packed); the device reads it,
//!   keeps the values ([`GuestMemStats`]) and *keeps the buffer*: it goes back to
//!   the driver (used) only when the owner asks for new statistics
//!   ([`VirtioPci::request_stats`]), and the driver answers with a fresh buffer.
//!   Unknown tags are ignored (§5.5.6.3.2).
//!
//! # Features
//!
//! Offered: VIRTIO_F_VERSION_1 (with the transport's ring features),
//! VIRTIO_BALLOON_F_STATS_VQ and VIRTIO_BALLOON_F_MUST_TELL_HOST, which the driver
//! must accept (FEATURES_OK is refused otherwise, as §5.5.3.2 allows). A ballooned
//! page is unmapped from the guest's nested page tables and its host page given to
//! another VM, so the guest must not touch it before the device acknowledged its
//! deflation, which is what MUST_TELL_HOST makes the driver promise (§5.5.6.1:
//! without it the driver may reuse pages before telling the device).
//!
//! Not offered: VIRTIO_BALLOON_F_DEFLATE_ON_OOM. With it the driver may take pages
//! back whenever the guest is short of memory, below the target (§5.5.6.1); but the
//! point of ballooning here is that reclaimed pages start another VM, and a page
//! the host has handed on cannot be handed back on demand. Without it the guest
//! deflates only when the host lowers the target, a decision the host makes when
//! it has the memory. FREE_PAGE_HINT, PAGE_POISON and PAGE_REPORTING are not
//! offered either (no free-page-hint or reporting queue, no poison value).
//!
//! # Reset
//!
//! A device reset (§2.4) ends the driver's knowledge of the balloon: the next
//! driver (after a guest reboot, a module reload or a kexec) believes all RAM is
//! its own. So a reset gives every ballooned page back through the backend
//! ([`Balloon::deflate_all`]) before anything else; the target stays (it is the
//! host's), and the new driver inflates to it again.
//!
//! # Snapshots
//!
//! The device's part of a snapshot holds the target, `actual`, the negotiated
//! features, the statistics buffer held or being returned, the last statistics and
//! the bitmap; a snapshot of a VM with another RAM size is refused. Restoring does
//! not call the backend: the owner restores guest memory and makes the host's
//! mappings match [`Balloon::ballooned_pfns`] itself.

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

use crate::blk::Cursor;
use crate::device::{device_id, features as vfeatures, VirtioDevice};
use crate::memory::GuestMemory;
use crate::pci::VirtioPci;
use crate::queue::Chain;
use crate::state::{Reader, Writer};
use devices::pci::PciEffects;

/// Feature bits (§5.5.3).
pub mod features {
    /// The driver tells the device before it reuses pages from the balloon.
    pub const MUST_TELL_HOST: u64 = 1 << 0;
    /// The stats queue exists.
    pub const STATS_VQ: u64 = 1 << 1;
    /// The driver may deflate on out-of-memory (not offered, see the module text).
    pub const DEFLATE_ON_OOM: u64 = 1 << 2;
    /// Free page hinting (not offered).
    pub const FREE_PAGE_HINT: u64 = 1 << 3;
    /// The driver writes `poison_val` to deflated pages (not offered).
    pub const PAGE_POISON: u64 = 1 << 4;
    /// Free page reporting (not offered).
    pub const PAGE_REPORTING: u64 = 1 << 5;
}

/// Statistics tags (§5.5.6.3.1, "Memory Statistics Tags").
pub mod tag {
    pub const SWAP_IN: u16 = 0;
    pub const SWAP_OUT: u16 = 1;
    pub const MAJFLT: u16 = 2;
    pub const MINFLT: u16 = 3;
    pub const MEMFREE: u16 = 4;
    pub const MEMTOT: u16 = 5;
    pub const AVAIL: u16 = 6;
    pub const CACHES: u16 = 7;
    pub const HTLB_PGALLOC: u16 = 8;
    pub const HTLB_PGFAIL: u16 = 9;
}

pub const INFLATE_QUEUE: u16 = 0;
pub const DEFLATE_QUEUE: u16 = 1;
pub const STATS_QUEUE: u16 = 2;
/// The size of each queue (QEMU's and kvmtool's choice too).
pub const QUEUE_SIZE: u16 = 128;
/// The balloon's page size, whatever the guest's own (§5.5.6: addresses divided by
/// 4096).
pub const PAGE_SHIFT: u32 = 12;
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// The most page numbers one inflate or deflate buffer may hold: one 4 KiB page of
/// them (Linux sends at most 256). It bounds the work one buffer causes inside a
/// queue notification, which the transport bounds to a queue's worth of buffers.
pub const MAX_PFNS_PER_BUFFER: usize = 1024;
/// The size of one statistics entry: le16 tag, le64 value, packed (§5.5.6.3).
pub const STAT_ENTRY_LEN: usize = 10;
/// The most statistics entries read from one buffer (§5.5.6.3.1 defines 10 tags;
/// newer drivers send a few more, which are ignored). The rest of a longer
/// buffer is ignored and counted.
pub const MAX_STATS_ENTRIES: usize = 64;
/// The version of [`Balloon`]'s part of a snapshot.
const STATE_VERSION: u16 = 1;
/// The tag of [`Balloon`]'s part of a snapshot.
const STATE_TAG: [u8; 8] = *b"vballoon";
/// The configuration space: num_pages, actual (§5.5.4).
const CONFIG_LEN: usize = 8;
const ACTUAL_OFFSET: u64 = 4;

/// Why the backend could not take or give back one page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendError {
    /// Deflate: no free host page to back the guest page with.
    NoMemory,
    /// The page cannot leave the guest now (the hypervisor uses it: shared
    /// copy-on-write with a clone, pinned for a device, ...).
    Busy,
    /// Any other failure of the host's page tables (a split of a large mapping
    /// that found no page for the new table, ...).
    Failed,
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendError::NoMemory => "no free host memory",
            BackendError::Busy => "the page is in use by the hypervisor",
            BackendError::Failed => "the nested page tables could not be changed",
        })
    }
}

/// A batch the backend did not finish: `pfns[..index]` were done, `pfns[index]`
/// failed with `error`, and the pages after it were not attempted (the device
/// calls again with them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failed {
    pub index: usize,
    pub error: BackendError,
}

/// What the hypervisor does with the pages the guest gives up and takes back.
///
/// The device calls it only with page frame numbers (guest-physical address >>
/// 12) that are inside guest RAM, appear once in the call, are in ascending order,
/// and are not ballooned (inflate) or ballooned (deflate) according to the
/// device's bitmap, which changes only for the pages the backend reports done.
pub trait BalloonBackend: Send {
    /// The guest gave these pages up: remove them from the VM's nested page
    /// tables (splitting large mappings), flush the VM's TLBs on every processor,
    /// and return their host pages to the free pool. `Ok` when all were taken.
    fn inflate(&mut self, pfns: &[u32]) -> Result<(), Failed>;
    /// The guest takes these pages back: back each with a host page, zeroed (the
    /// previous contents are gone; a guest relies on nothing else), and map it.
    /// `Ok` when all were given back. A page that could not be is still
    /// ballooned: the guest was told and will use it, so the owner must handle a
    /// guest access to it (map it then, or stop the VM).
    fn deflate(&mut self, pfns: &[u32]) -> Result<(), Failed>;
}

/// A backend that keeps count and nothing else, for tests and the fuzz target: a
/// pool of free host pages that inflate fills and deflate drains (failing with
/// [`BackendError::NoMemory`] when it is empty), pages that refuse to be
/// ballooned ([`BackendError::Busy`]), and a record of which pages it holds, with
/// which it checks the device's side of the contract.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CountingBackend {
    /// Free host pages.
    pub free_pages: u64,
    /// Pages whose inflation fails with Busy.
    pub busy: Vec<u32>,
    /// The pages it took from the guest, sorted.
    pub held: Vec<u32>,
    /// Calls that broke the contract (a page twice, out of order, held twice,
    /// given back without being held): must stay 0.
    pub violations: u64,
    pub inflate_calls: u64,
    pub deflate_calls: u64,
}

impl CountingBackend {
    pub fn new(free_pages: u64) -> Self {
        Self {
            free_pages,
            ..Self::default()
        }
    }

    fn check_sorted(&mut self, pfns: &[u32]) {
        if pfns.windows(2).any(|w| w[0] >= w[1]) {
            self.violations += 1;
        }
    }
}

impl BalloonBackend for CountingBackend {
    fn inflate(&mut self, pfns: &[u32]) -> Result<(), Failed> {
        self.inflate_calls += 1;
        self.check_sorted(pfns);
        for (index, &pfn) in pfns.iter().enumerate() {
            if self.busy.contains(&pfn) {
                return Err(Failed {
                    index,
                    error: BackendError::Busy,
                });
            }
            match self.held.binary_search(&pfn) {
                Ok(_) => self.violations += 1,
                Err(at) => self.held.insert(at, pfn),
            }
            self.free_pages += 1;
        }
        Ok(())
    }

    fn deflate(&mut self, pfns: &[u32]) -> Result<(), Failed> {
        self.deflate_calls += 1;
        self.check_sorted(pfns);
        for (index, &pfn) in pfns.iter().enumerate() {
            if self.free_pages == 0 {
                return Err(Failed {
                    index,
                    error: BackendError::NoMemory,
                });
            }
            match self.held.binary_search(&pfn) {
                Ok(at) => {
                    self.held.remove(at);
                }
                Err(_) => self.violations += 1,
            }
            self.free_pages -= 1;
        }
        Ok(())
    }
}

/// The guest's RAM as the balloon sees it and the least it must keep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BalloonConfig {
    /// The guest-physical ranges of RAM, in bytes; only whole 4 KiB pages inside
    /// them (below 16 TiB, the reach of a u32 page number) can be ballooned.
    pub ram: Vec<Range<u64>>,
    /// Pages the guest keeps whatever the target: the largest target is the RAM's
    /// pages less these.
    pub min_guest_pages: u64,
}

impl BalloonConfig {
    /// RAM at guest-physical `[0, bytes)`, as the kernel lays out a VM.
    pub fn new(ram_bytes: u64) -> Self {
        Self {
            // One range (`vec![0..ram_bytes]` reads like a list of numbers).
            ram: core::iter::once(0..ram_bytes).collect(),
            min_guest_pages: 0,
        }
    }

    pub fn with_ranges(ram: &[Range<u64>]) -> Self {
        Self {
            ram: ram.to_vec(),
            min_guest_pages: 0,
        }
    }

    /// The guest keeps at least `pages` pages.
    pub fn min_guest_pages(mut self, pages: u64) -> Self {
        self.min_guest_pages = pages;
        self
    }
}

/// The guest's last memory statistics (§5.5.6.3.1); `None` for what the driver
/// did not report. Sizes are in bytes, as the driver gives them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestMemStats {
    pub swap_in: Option<u64>,
    pub swap_out: Option<u64>,
    pub major_faults: Option<u64>,
    pub minor_faults: Option<u64>,
    /// Memory not used for anything.
    pub free: Option<u64>,
    /// All memory the guest sees (its RAM less the balloon, in Linux).
    pub total: Option<u64>,
    /// An estimate of memory available to new applications without swapping.
    pub available: Option<u64>,
    /// Memory that can be reclaimed quickly (file caches).
    pub caches: Option<u64>,
    pub hugetlb_allocations: Option<u64>,
    pub hugetlb_failures: Option<u64>,
}

impl GuestMemStats {
    /// The value of `tag`, or `None` for a tag this device does not know.
    fn slot(&mut self, t: u16) -> Option<&mut Option<u64>> {
        Some(match t {
            tag::SWAP_IN => &mut self.swap_in,
            tag::SWAP_OUT => &mut self.swap_out,
            tag::MAJFLT => &mut self.major_faults,
            tag::MINFLT => &mut self.minor_faults,
            tag::MEMFREE => &mut self.free,
            tag::MEMTOT => &mut self.total,
            tag::AVAIL => &mut self.available,
            tag::CACHES => &mut self.caches,
            tag::HTLB_PGALLOC => &mut self.hugetlb_allocations,
            tag::HTLB_PGFAIL => &mut self.hugetlb_failures,
            _ => return None,
        })
    }

    fn values(&self) -> [Option<u64>; 10] {
        [
            self.swap_in,
            self.swap_out,
            self.major_faults,
            self.minor_faults,
            self.free,
            self.total,
            self.available,
            self.caches,
            self.hugetlb_allocations,
            self.hugetlb_failures,
        ]
    }
}

/// What the device did and refused, since it was created (not in snapshots).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BalloonCounters {
    /// Inflate and deflate buffers taken.
    pub inflate_buffers: u64,
    pub deflate_buffers: u64,
    /// Pages the backend took and gave back.
    pub pages_inflated: u64,
    pub pages_deflated: u64,
    /// Buffers refused whole: a length that is not a multiple of 4, more than
    /// [`MAX_PFNS_PER_BUFFER`] numbers, or unreadable.
    pub bad_length: u64,
    pub oversized: u64,
    pub unreadable: u64,
    /// Page numbers refused: a second time in one buffer, outside guest RAM,
    /// inflated while ballooned, deflated while not ballooned.
    pub duplicates: u64,
    pub out_of_ram: u64,
    pub already_ballooned: u64,
    pub not_ballooned: u64,
    /// Pages the backend failed to take or give back (after a NoMemory, the rest
    /// of the batch too), and its last reason.
    pub inflate_failed: u64,
    pub deflate_failed: u64,
    pub last_backend_error: Option<BackendError>,
    /// Statistics buffers read, entries with tags this device does not know,
    /// bytes ignored (a partial last entry, entries past [`MAX_STATS_ENTRIES`]).
    pub stats_reports: u64,
    pub stats_unknown_tags: u64,
    pub stats_ignored_bytes: u64,
    /// The driver broke the statsq protocol (§5.5.6.3.1): a second buffer while
    /// the device held one, or statsq used without STATS_VQ.
    pub stats_protocol: u64,
    /// Driver writes to `num_pages` (read-only for it) or past the configuration,
    /// ignored.
    pub readonly_writes: u64,
}

/// A target the device cannot ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetError {
    /// More pages than the guest can give: its RAM less what it keeps.
    TooLarge { requested: u64, max: u64 },
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetError::TooLarge { requested, max } => write!(
                f,
                "a balloon of {requested} pages is more than the guest can give ({max} pages)"
            ),
        }
    }
}

/// Inflate or deflate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Inflate,
    Deflate,
}

/// A virtio memory balloon on a [`BalloonBackend`].
pub struct Balloon<B: BalloonBackend> {
    backend: B,
    /// RAM as page-number ranges, sorted, not overlapping.
    ram: Vec<Range<u64>>,
    ram_pages: u64,
    min_guest_pages: u64,
    /// One bit per page number below `limit`: ballooned.
    bitmap: Vec<u64>,
    limit: u64,
    ballooned: u64,
    /// num_pages, the target the host set, and actual, what the driver says.
    target: u32,
    actual: u32,
    negotiated: u64,
    /// The statistics buffer the device keeps (its head), to return at the next
    /// request (§5.5.6.3 step 5).
    held: Option<u16>,
    /// Statistics buffers let go of, waiting for the transport to return them.
    returned: VecDeque<u16>,
    stats: GuestMemStats,
    counters: BalloonCounters,
    /// Reused for every inflate and deflate buffer.
    scratch_bytes: Vec<u8>,
    scratch_pfns: Vec<u32>,
}

/// The page-number ranges of whole 4 KiB pages in `ram`, below 2^32, sorted and
/// merged.
fn page_ranges(ram: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut pages: Vec<Range<u64>> = ram
        .iter()
        .map(|r| {
            let start = r.start.div_ceil(PAGE_SIZE).min(1 << 32);
            let end = (r.end >> PAGE_SHIFT).min(1 << 32);
            start..end
        })
        .filter(|r| r.start < r.end)
        .collect();
    pages.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::new();
    for r in pages {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}

impl<B: BalloonBackend> Balloon<B> {
    pub fn new(backend: B, config: BalloonConfig) -> Self {
        let ram = page_ranges(&config.ram);
        let ram_pages = ram.iter().map(|r| r.end - r.start).sum();
        let limit = ram.last().map_or(0, |r| r.end);
        Self {
            backend,
            ram,
            ram_pages,
            min_guest_pages: config.min_guest_pages,
            bitmap: vec![0; limit.div_ceil(64) as usize],
            limit,
            ballooned: 0,
            target: 0,
            actual: 0,
            negotiated: 0,
            held: None,
            returned: VecDeque::new(),
            stats: GuestMemStats::default(),
            counters: BalloonCounters::default(),
            scratch_bytes: Vec::new(),
            scratch_pfns: Vec::new(),
        }
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Pages of guest RAM the balloon covers.
    pub fn ram_pages(&self) -> u64 {
        self.ram_pages
    }
    /// The largest target: RAM pages less what the guest keeps.
    pub fn max_target_pages(&self) -> u64 {
        self.ram_pages
            .saturating_sub(self.min_guest_pages)
            .min(u64::from(u32::MAX))
    }
    /// `num_pages`: the target the host set.
    pub fn target_pages(&self) -> u32 {
        self.target
    }
    /// `actual` as the driver last wrote it: what it says is in the balloon. For
    /// display only; [`Self::ballooned_pages`] is what the host took.
    pub fn actual_pages(&self) -> u32 {
        self.actual
    }
    /// Pages the host took and has not given back (the bitmap's count).
    pub fn ballooned_pages(&self) -> u64 {
        self.ballooned
    }
    /// Whether the page with number `pfn` is ballooned (not backed by the host).
    pub fn is_ballooned(&self, pfn: u64) -> bool {
        pfn < self.limit && self.bitmap[(pfn / 64) as usize] & (1 << (pfn % 64)) != 0
    }
    /// Every ballooned page number, ascending.
    pub fn ballooned_pfns(&self) -> impl Iterator<Item = u32> + '_ {
        self.ballooned_from(0)
    }

    /// The ballooned page numbers from `pfn` on, ascending.
    fn ballooned_from(&self, pfn: u64) -> impl Iterator<Item = u32> + '_ {
        let first = (pfn / 64) as usize;
        // The bits of the first word below `pfn` are masked off.
        let low = !0u64 << (pfn % 64);
        self.bitmap
            .iter()
            .enumerate()
            .skip(first)
            .flat_map(move |(w, &word)| {
                let mut bits = if w == first { word & low } else { word };
                core::iter::from_fn(move || {
                    if bits == 0 {
                        return None;
                    }
                    let b = bits.trailing_zeros();
                    bits &= bits - 1;
                    // Below 2^32: the bitmap ends at the last RAM page.
                    Some((w as u64 * 64 + u64::from(b)) as u32)
                })
            })
    }
    /// The guest's last statistics.
    pub fn guest_stats(&self) -> GuestMemStats {
        self.stats
    }
    pub fn counters(&self) -> BalloonCounters {
        self.counters
    }
    /// Whether the device holds a statistics buffer, so that a request can go out.
    pub fn holds_stats_buffer(&self) -> bool {
        self.held.is_some()
    }

    /// Sets `num_pages`; returns whether it changed, in which case the driver must
    /// get a configuration change notification ([`VirtioPci::set_target_pages`]
    /// sends it).
    pub fn set_target_pages(&mut self, pages: u64) -> Result<bool, TargetError> {
        let max = self.max_target_pages();
        if pages > max {
            return Err(TargetError::TooLarge {
                requested: pages,
                max,
            });
        }
        // At most u32::MAX (max_target_pages).
        let pages = pages as u32;
        let changed = pages != self.target;
        self.target = pages;
        Ok(changed)
    }

    /// Lets go of the statistics buffer the device holds so the driver sends new
    /// statistics (§5.5.6.3 step 1); `false` when it holds none (the driver has not
    /// sent one since the last request). The transport returns it
    /// ([`VirtioPci::request_stats`]).
    pub fn request_stats(&mut self) -> bool {
        match self.held.take() {
            Some(head) => {
                self.returned.push_back(head);
                true
            }
            None => false,
        }
    }

    /// Gives every ballooned page back through the backend (as at a device
    /// reset); returns how many it gave back. Pages the backend fails stay
    /// ballooned and counted; at the first NoMemory it stops.
    pub fn deflate_all(&mut self) -> u64 {
        let before = self.counters.pages_deflated;
        let mut batch = core::mem::take(&mut self.scratch_pfns);
        let mut next = 0u64;
        loop {
            batch.clear();
            batch.extend(self.ballooned_from(next).take(MAX_PFNS_PER_BUFFER));
            let Some(&last) = batch.last() else { break };
            next = u64::from(last) + 1;
            if !self.apply(Op::Deflate, &batch) {
                // The host has no memory left to back the rest: they stay
                // ballooned (counted once, above, for this batch).
                break;
            }
        }
        self.scratch_pfns = batch;
        self.counters.pages_deflated - before
    }

    /// Whether the page with number `pfn` lies in guest RAM.
    fn in_ram(&self, pfn: u64) -> bool {
        self.ram.iter().any(|r| r.contains(&pfn))
    }

    fn set_bit(&mut self, pfn: u32, on: bool) {
        let (w, b) = ((pfn / 64) as usize, pfn % 64);
        if on {
            self.bitmap[w] |= 1 << b;
            self.ballooned += 1;
        } else {
            self.bitmap[w] &= !(1 << b);
            self.ballooned -= 1;
        }
    }

    /// Hands `pfns` (checked, ascending, unique) to the backend, going on past
    /// each page it fails, and records what it did. Stops at the first
    /// [`BackendError::NoMemory`] (the pages after it would fail alike; they are
    /// counted as failed) and returns `false` then.
    fn apply(&mut self, op: Op, pfns: &[u32]) -> bool {
        let mut rest = pfns;
        while !rest.is_empty() {
            let result = match op {
                Op::Inflate => self.backend.inflate(rest),
                Op::Deflate => self.backend.deflate(rest),
            };
            let (done, failed) = match result {
                Ok(()) => (rest.len(), None),
                // A backend that names an index past the batch did it all.
                Err(f) if f.index >= rest.len() => (rest.len(), None),
                Err(f) => (f.index, Some(f.error)),
            };
            for &pfn in &rest[..done] {
                self.set_bit(pfn, op == Op::Inflate);
            }
            match op {
                Op::Inflate => self.counters.pages_inflated += done as u64,
                Op::Deflate => self.counters.pages_deflated += done as u64,
            }
            let Some(error) = failed else { break };
            self.counters.last_backend_error = Some(error);
            let out_of_memory = error == BackendError::NoMemory;
            let failed_pages = if out_of_memory { rest.len() - done } else { 1 } as u64;
            match op {
                Op::Inflate => self.counters.inflate_failed += failed_pages,
                Op::Deflate => self.counters.deflate_failed += failed_pages,
            }
            if out_of_memory {
                return false;
            }
            rest = &rest[done + 1..];
        }
        true
    }

    /// An inflate or deflate buffer (§5.5.6).
    fn pages(&mut self, op: Op, chain: &Chain, mem: &dyn GuestMemory) {
        match op {
            Op::Inflate => self.counters.inflate_buffers += 1,
            Op::Deflate => self.counters.deflate_buffers += 1,
        }
        let len = chain.readable_len();
        if !len.is_multiple_of(4) {
            self.counters.bad_length += 1;
            return;
        }
        let n = (len / 4) as usize;
        if n > MAX_PFNS_PER_BUFFER {
            self.counters.oversized += 1;
            return;
        }
        let mut bytes = core::mem::take(&mut self.scratch_bytes);
        bytes.clear();
        bytes.resize(n * 4, 0);
        let read = Cursor::new(chain, false).read(mem, &mut bytes);
        let mut pfns = core::mem::take(&mut self.scratch_pfns);
        pfns.clear();
        if read.is_ok() {
            pfns.extend(
                bytes
                    .as_chunks::<4>()
                    .0
                    .iter()
                    .map(|b| u32::from_le_bytes(*b)),
            );
        } else {
            // The segments were checked against RAM when the chain was taken; RAM
            // that can refuse later (a ballooned page) refuses the whole buffer.
            self.counters.unreadable += 1;
        }
        // Sorted: duplicates side by side, and the backend sees neighbouring pages
        // together (one large mapping split once).
        pfns.sort_unstable();
        let before = pfns.len();
        pfns.dedup();
        self.counters.duplicates += (before - pfns.len()) as u64;
        let mut kept = 0;
        for i in 0..pfns.len() {
            let pfn = pfns[i];
            let ok = if !self.in_ram(pfn.into()) {
                self.counters.out_of_ram += 1;
                false
            } else if self.is_ballooned(pfn.into()) != (op == Op::Deflate) {
                match op {
                    Op::Inflate => self.counters.already_ballooned += 1,
                    Op::Deflate => self.counters.not_ballooned += 1,
                }
                false
            } else {
                true
            };
            if ok {
                pfns[kept] = pfn;
                kept += 1;
            }
        }
        pfns.truncate(kept);
        // A shortage is counted in `apply`; the buffer is acknowledged anyway.
        let _ = self.apply(op, &pfns);
        self.scratch_bytes = bytes;
        self.scratch_pfns = pfns;
    }

    /// A statistics buffer (§5.5.6.3): read, kept until the next request.
    fn stats_buffer(&mut self, head: u16, chain: &Chain, mem: &dyn GuestMemory) {
        if self.negotiated & features::STATS_VQ == 0 {
            // No statsq without the feature (§5.5.2): returned at once, unread.
            self.counters.stats_protocol += 1;
            self.returned.push_back(head);
            return;
        }
        if let Some(old) = self.held.replace(head) {
            // §5.5.6.3.1: at most one buffer at a time. The older one goes back
            // (as QEMU does), the newer one is kept.
            self.counters.stats_protocol += 1;
            self.returned.push_back(old);
        }
        let len = chain.readable_len();
        let entries = ((len / STAT_ENTRY_LEN as u64) as usize).min(MAX_STATS_ENTRIES);
        let mut bytes = vec![0u8; entries * STAT_ENTRY_LEN];
        self.counters.stats_ignored_bytes += len - bytes.len() as u64;
        if Cursor::new(chain, false).read(mem, &mut bytes).is_err() {
            self.counters.stats_ignored_bytes += bytes.len() as u64;
            return;
        }
        // Each buffer is a whole report (§5.5.6.3.1: the same subset every time).
        let mut stats = GuestMemStats::default();
        for e in bytes.as_chunks::<STAT_ENTRY_LEN>().0 {
            let t = u16::from_le_bytes([e[0], e[1]]);
            let value = u64::from_le_bytes([e[2], e[3], e[4], e[5], e[6], e[7], e[8], e[9]]);
            // §5.5.6.3.2: unknown tags are ignored, entries come in any order.
            match stats.slot(t) {
                Some(slot) => *slot = Some(value),
                None => self.counters.stats_unknown_tags += 1,
            }
        }
        self.stats = stats;
        self.counters.stats_reports += 1;
    }

    fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[0..4].copy_from_slice(&self.target.to_le_bytes());
        c[4..8].copy_from_slice(&self.actual.to_le_bytes());
        c
    }
}

impl<B: BalloonBackend> VirtioDevice for Balloon<B> {
    fn device_type(&self) -> u16 {
        device_id::BALLOON
    }

    fn device_features(&self) -> u64 {
        features::MUST_TELL_HOST | features::STATS_VQ
    }

    /// MUST_TELL_HOST is required (§5.5.3.2): ballooned pages are unmapped.
    fn accepts_features(&self, driver_features: u64) -> bool {
        driver_features & features::MUST_TELL_HOST != 0
    }

    fn num_queues(&self) -> u16 {
        3
    }

    fn queue_max_size(&self) -> u16 {
        QUEUE_SIZE
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::device::read_config_bytes(&self.config_bytes(), offset, data);
    }

    /// `actual` takes any write inside it, byte by byte (drivers have written it
    /// one byte at a time, §5.5.6.2.1); `num_pages` is the device's.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut bytes = self.actual.to_le_bytes();
        let mut ignored = false;
        for (i, &b) in data.iter().enumerate() {
            match offset.checked_add(i as u64) {
                Some(at @ ACTUAL_OFFSET..8) => bytes[(at - ACTUAL_OFFSET) as usize] = b,
                _ => ignored = true,
            }
        }
        self.actual = u32::from_le_bytes(bytes);
        self.counters.readonly_writes += u64::from(ignored);
    }

    fn set_features(&mut self, negotiated: u64) {
        self.negotiated = negotiated;
    }

    /// §2.4, and the module text: the balloon is given back, the driver's state
    /// forgotten, the target kept.
    fn reset(&mut self) {
        self.deflate_all();
        self.negotiated = 0;
        self.actual = 0;
        self.held = None;
        self.returned.clear();
        self.stats = GuestMemStats::default();
    }

    fn process(&mut self, queue: u16, chain: &Chain, mem: &mut dyn GuestMemory) -> u32 {
        match queue {
            INFLATE_QUEUE => self.pages(Op::Inflate, chain, mem),
            DEFLATE_QUEUE => self.pages(Op::Deflate, chain, mem),
            STATS_QUEUE => self.stats_buffer(chain.head, chain, mem),
            _ => {}
        }
        // Nothing is written into any balloon buffer.
        0
    }

    fn holds_chains(&self, queue: u16) -> bool {
        queue == STATS_QUEUE
    }

    fn has_returned(&self, queue: u16) -> bool {
        queue == STATS_QUEUE && !self.returned.is_empty()
    }

    fn take_returned(&mut self, queue: u16) -> Option<(u16, u32)> {
        if queue != STATS_QUEUE {
            return None;
        }
        self.returned.pop_front().map(|head| (head, 0))
    }

    fn state(&self) -> Vec<u8> {
        let mut w = Writer::new(&STATE_TAG, STATE_VERSION);
        w.u64(self.ram_pages);
        w.u64(self.limit);
        w.u32(self.target);
        w.u32(self.actual);
        w.u64(self.negotiated);
        w.opt_u64(self.held.map(u64::from));
        w.u16(self.returned.len() as u16);
        for &head in &self.returned {
            w.u16(head);
        }
        for v in self.stats.values() {
            w.opt_u64(v);
        }
        for &word in &self.bitmap {
            w.u64(word);
        }
        w.finish()
    }

    fn restore(&mut self, data: &[u8]) -> bool {
        self.restore_state(data).is_ok()
    }
}

impl<B: BalloonBackend> Balloon<B> {
    /// [`VirtioDevice::restore`] with the reason for a refusal.
    fn restore_state(&mut self, data: &[u8]) -> Result<(), crate::state::StateError> {
        let mut r = Reader::new(data, &STATE_TAG, STATE_VERSION)?;
        r.expect_u64("guest RAM pages", self.ram_pages)?;
        r.expect_u64("highest RAM page number", self.limit)?;
        let target = r.u32()?;
        r.check(
            u64::from(target) <= self.max_target_pages(),
            "balloon target",
        )?;
        let actual = r.u32()?;
        let negotiated = r.u64()?;
        let offered = self.device_features()
            | vfeatures::VERSION_1
            | vfeatures::INDIRECT_DESC
            | vfeatures::EVENT_IDX;
        r.check(
            negotiated == 0
                || negotiated & !offered == 0 && negotiated & features::MUST_TELL_HOST != 0,
            "negotiated features",
        )?;
        let held = r.opt_u64()?;
        r.check(
            held.is_none_or(|h| h < u64::from(QUEUE_SIZE) && negotiated & features::STATS_VQ != 0),
            "held statistics buffer",
        )?;
        let n = r.u16()?;
        r.check(n <= QUEUE_SIZE, "statistics buffers being returned")?;
        let mut returned = VecDeque::new();
        for _ in 0..n {
            let head = r.u16()?;
            r.check(head < QUEUE_SIZE, "statistics buffer head")?;
            returned.push_back(head);
        }
        let mut stats = GuestMemStats::default();
        for t in 0..10u16 {
            let v = r.opt_u64()?;
            if let Some(slot) = stats.slot(t) {
                *slot = v;
            }
        }
        let mut bitmap = Vec::with_capacity(self.bitmap.len());
        let mut ballooned = 0u64;
        for w in 0..self.bitmap.len() {
            let word = r.u64()?;
            // Every set bit must be a page of RAM.
            let ok = (0..64)
                .filter(|b| word & (1 << b) != 0)
                .all(|b| self.in_ram(w as u64 * 64 + b));
            r.check(ok, "ballooned page outside guest RAM")?;
            ballooned += u64::from(word.count_ones());
            bitmap.push(word);
        }
        r.end()?;
        self.target = target;
        self.actual = actual;
        self.negotiated = negotiated;
        self.held = held.map(|h| h as u16);
        self.returned = returned;
        self.stats = stats;
        self.bitmap = bitmap;
        self.ballooned = ballooned;
        Ok(())
    }
}

impl<B: BalloonBackend, M: GuestMemory> VirtioPci<Balloon<B>, M> {
    /// Sets the balloon's target ([`Balloon::set_target_pages`]) and, when it
    /// changed, sends the configuration change notification.
    pub fn set_target_pages(&mut self, pages: u64) -> Result<PciEffects, TargetError> {
        if self.device_mut().set_target_pages(pages)? {
            Ok(self.config_changed())
        } else {
            Ok(PciEffects::NONE)
        }
    }

    /// Asks the driver for new statistics: the held statistics buffer goes back
    /// used, with its interrupt (§5.5.6.3 step 1); the answer arrives as a new
    /// buffer at the driver's next statsq notification. Returns whether a request
    /// was made (`false`: no buffer held, the previous request is unanswered); it
    /// goes out now, or at a [`devices::PciFunction::poll`] once the driver can
    /// take it (queue enabled, DRIVER_OK, bus mastering).
    pub fn request_stats(&mut self) -> (bool, PciEffects) {
        let asked = self.device_mut().request_stats();
        (asked, self.return_held())
    }
}

#[cfg(test)]
mod tests;
