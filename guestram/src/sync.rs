//! When a frame unmapped from a running VM may be reused.
//!
//! Every vCPU has nested page tables of its own, changed only by the processor that
//! holds the vCPU, and the processor it last ran on may still cache translations
//! (TLB, tagged by ASID/VPID or EPTP). So taking a page from a VM is three steps:
//!
//! 1. The owner (holding the VM's lock) takes the frame out of the [`RamMap`](crate::RamMap),
//!    records the page in the [`UnmapLog`] under a new generation, publishes it with
//!    [`TlbSync::publish`], and keeps the frame as *retired* with that generation.
//! 2. Each vCPU, before it enters the guest, calls [`TlbSync::enter`]: if a
//!    generation it has not applied exists, it removes the logged pages from its
//!    tables (which also makes the backend flush its cached translations at that
//!    entry: SVM TLB_CONTROL, APM Vol. 2 15.16; INVEPT, SDM Vol. 3C 29.4.3) and
//!    reports the generation with [`TlbSync::applied`]. After the exit,
//!    [`TlbSync::left`].
//! 3. A retired frame of generation `g` is free to reuse once every vCPU is either
//!    outside the guest (it applies `g` before it enters again) or has applied `g`
//!    ([`TlbSync::safe_generation`]).
//!
//! Correctness rests on the order of two sequentially consistent operations on each
//! side: the vCPU marks itself inside, then reads the generation; the owner
//! publishes the generation, then reads who is inside. Whichever comes first in the
//! single total order, either the owner sees the vCPU inside (and waits for it) or
//! the vCPU sees the new generation (and applies it before it enters).
//!
//! Translations left on a processor the vCPU ran on earlier are not a concern here:
//! a vCPU that arrives on a processor other than its last flushes its tag there
//! (both backends do).

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

/// Who is inside the guest and which generation each vCPU has applied.
pub struct TlbSync {
    generation: AtomicU64,
    inside: Vec<AtomicBool>,
    applied: Vec<AtomicU64>,
}

impl TlbSync {
    /// For a VM with `vcpus` vCPUs whose tables all match the map now.
    pub fn new(vcpus: usize) -> Self {
        Self {
            generation: AtomicU64::new(0),
            inside: (0..vcpus).map(|_| AtomicBool::new(false)).collect(),
            applied: (0..vcpus).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The latest generation published.
    pub fn generation(&self) -> u64 {
        self.generation.load(SeqCst)
    }

    /// Makes generation `g` (greater than any before) the one vCPUs must apply.
    pub fn publish(&self, g: u64) {
        self.generation.fetch_max(g, SeqCst);
    }

    /// vCPU `i` is about to enter the guest: returns the generation it must apply
    /// first, if it has not.
    pub fn enter(&self, i: usize) -> Option<u64> {
        self.inside[i].store(true, SeqCst);
        let g = self.generation.load(SeqCst);
        (self.applied[i].load(SeqCst) < g).then_some(g)
    }

    /// vCPU `i`'s tables (and, at its entry, its cached translations) no longer
    /// hold anything unmapped up to generation `g`. Also for a vCPU outside the
    /// guest brought up to date by its holder.
    pub fn applied(&self, i: usize, g: u64) {
        self.applied[i].fetch_max(g, SeqCst);
    }

    /// The vCPU that applied `g` is a fresh one (built from the map as it is).
    pub fn reset_vcpu(&self, i: usize) {
        let g = self.generation();
        self.applied[i].fetch_max(g, SeqCst);
    }

    /// vCPU `i` left the guest.
    pub fn left(&self, i: usize) {
        self.inside[i].store(false, SeqCst);
    }

    /// vCPU `i`'s applied generation.
    pub fn applied_by(&self, i: usize) -> u64 {
        self.applied[i].load(SeqCst)
    }

    /// Every frame retired at this generation or before may be reused: no vCPU
    /// inside the guest can still reach it.
    pub fn safe_generation(&self) -> u64 {
        let g = self.generation.load(SeqCst);
        self.inside
            .iter()
            .zip(&self.applied)
            .map(|(inside, applied)| {
                if inside.load(SeqCst) {
                    applied.load(SeqCst)
                } else {
                    g
                }
            })
            .min()
            .unwrap_or(g)
    }

    /// As [`TlbSync::safe_generation`] for every vCPU but `me` (a vCPU waiting,
    /// outside the guest, for the others to drop a page it made private).
    pub fn safe_generation_excluding(&self, me: usize) -> u64 {
        let g = self.generation.load(SeqCst);
        self.inside
            .iter()
            .zip(&self.applied)
            .enumerate()
            .filter(|(i, _)| *i != me)
            .map(|(_, (inside, applied))| {
                if inside.load(SeqCst) {
                    applied.load(SeqCst)
                } else {
                    g
                }
            })
            .min()
            .unwrap_or(g)
    }

    /// The vCPUs inside the guest (bit per vCPU).
    pub fn inside_mask(&self) -> u64 {
        self.inside
            .iter()
            .enumerate()
            .filter(|(_, b)| b.load(SeqCst))
            .fold(0, |m, (i, _)| m | 1 << i)
    }

    /// The oldest generation some vCPU has not applied to its tables (inside the
    /// guest or not): log entries before it are no longer needed.
    pub fn oldest_unapplied(&self) -> u64 {
        self.applied
            .iter()
            .map(|a| a.load(SeqCst))
            .min()
            .unwrap_or(0)
    }
}

/// Pages unmapped, by generation, until every vCPU removed them from its tables;
/// and the frames they had, until no vCPU can reach them.
#[derive(Default, Debug)]
pub struct UnmapLog {
    next: u64,
    /// (generation, guest page number), in generation order.
    pages: VecDeque<(u64, u64)>,
    /// (generation, host frame), in generation order.
    retired: VecDeque<(u64, u64)>,
}

impl UnmapLog {
    /// Records that page `gfn` (whose frame was `hpa`) was taken; returns its
    /// generation, to publish.
    pub fn record(&mut self, gfn: u64, hpa: u64) -> u64 {
        self.next += 1;
        self.pages.push_back((self.next, gfn));
        self.retired.push_back((self.next, hpa));
        self.next
    }

    /// Records that page `gfn` must leave every vCPU's tables while its frame stays
    /// with its owner (a shared frame replaced by a private copy); returns the
    /// generation, to publish.
    pub fn record_unmap(&mut self, gfn: u64) -> u64 {
        self.next += 1;
        self.pages.push_back((self.next, gfn));
        self.next
    }

    /// Pages a vCPU that applied up to `after` must still unmap, up to `upto`.
    pub fn pages_between(&self, after: u64, upto: u64) -> impl Iterator<Item = u64> + '_ {
        self.pages
            .iter()
            .filter(move |&&(g, _)| g > after && g <= upto)
            .map(|&(_, gfn)| gfn)
    }

    /// Frames retired at generation `safe` or before, taken out of the log.
    pub fn reusable(&mut self, safe: u64) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some(&(g, hpa)) = self.retired.front() {
            if g > safe {
                break;
            }
            out.push(hpa);
            self.retired.pop_front();
        }
        out
    }

    /// Forgets pages every vCPU has unmapped (generation `oldest` or before).
    pub fn trim(&mut self, oldest: u64) {
        while matches!(self.pages.front(), Some(&(g, _)) if g <= oldest) {
            self.pages.pop_front();
        }
    }

    /// Frames still waiting.
    pub fn retired_len(&self) -> usize {
        self.retired.len()
    }

    /// Pages some vCPU has not unmapped yet.
    pub fn pending_len(&self) -> usize {
        self.pages.len()
    }
}
