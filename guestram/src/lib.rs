//! `guestram`: a VM's RAM as the host backs it, page by page.
//!
//! Guest RAM used to be one contiguous host block. Ballooning (virtio 1.2 §5.5)
//! takes single 4 KiB pages out of a running guest and hands their frames to other
//! VMs, and a VM started after that must be able to use such scattered frames; so
//! the RAM is a table of 2 MiB chunks, each either one 2 MiB host frame (mapped with
//! one large nested-page entry: fewer TLB misses and page walks) or 512 separately
//! backed 4 KiB pages, any of which may be absent (ballooned). [`RamMap`] is that
//! table: allocation (2 MiB frames first, 4 KiB frames where no 2 MiB one is left),
//! translation of guest-physical ranges for the hypervisor's accessors, the runs the
//! nested page tables are built from, and taking and giving back pages.
//!
//! [`sync`] decides when a frame unmapped from a running VM may go to someone else:
//! only once no vCPU of that VM can still reach it through its nested page tables
//! or a stale TLB entry.
//!
//! No hardware access and no globals: frames come from a [`Frames`] the owner
//! implements (the kernel's frame allocator; a model in the tests).

#![no_std]

extern crate alloc;

pub mod sync;

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;

/// A small page.
pub const PAGE: u64 = 4096;
/// A large page: one chunk of the table.
pub const HUGE: u64 = 2 << 20;
const PAGES_PER_CHUNK: usize = (HUGE / PAGE) as usize;
/// A 4 KiB page with no frame (ballooned, or past the end of the RAM).
const ABSENT: u64 = u64::MAX;
/// In a page entry: the frame is shared copy-on-write with other VMs (a clone's
/// RAM over a snapshot's copy); it belongs to none of them and is never freed
/// through the map. Frames are page aligned, so bit 0 is free.
const SHARED: u64 = 1;

/// Where host frames come from and go back to.
pub trait Frames {
    /// `size` bytes (a multiple of [`PAGE`]) of zeroed host memory aligned to
    /// `align`; `None` when there is none.
    fn alloc(&mut self, size: u64, align: u64) -> Option<u64>;
    /// Gives back what `alloc` returned (or a page-aligned part of it).
    fn free(&mut self, hpa: u64, size: u64);
}

/// Why a request on the map was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RamError {
    /// A RAM size of 0 or not a multiple of 4 KiB.
    BadSize(u64),
    /// Not enough host memory: `backed` of `size` bytes could be found.
    OutOfMemory { size: u64, backed: u64 },
    /// The guest page number lies outside the RAM.
    OutOfRange(u64),
    /// The page already has a frame.
    Backed(u64),
    /// The page has no frame.
    Absent(u64),
    /// A host frame address that is not page aligned.
    Unaligned(u64),
}

impl fmt::Display for RamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RamError::BadSize(s) => write!(
                f,
                "a RAM size of {s} bytes is not a positive multiple of 4 KiB"
            ),
            RamError::OutOfMemory { size, backed } => write!(
                f,
                "out of host memory: {} of {} KiB backed",
                backed / 1024,
                size / 1024
            ),
            RamError::OutOfRange(gfn) => write!(f, "page {gfn:#x} lies outside the RAM"),
            RamError::Backed(gfn) => write!(f, "page {gfn:#x} is backed already"),
            RamError::Absent(gfn) => write!(f, "page {gfn:#x} has no host frame"),
            RamError::Unaligned(hpa) => write!(f, "host address {hpa:#x} is not page aligned"),
        }
    }
}

/// One stretch of guest-physical RAM backed by one stretch of host memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub gpa: u64,
    pub hpa: u64,
    pub len: u64,
    /// Shared copy-on-write: mapped read-only.
    pub shared: bool,
}

enum Chunk {
    /// No frame at all (a map released, or never backed).
    Empty,
    /// One 2 MiB frame.
    Huge(u64),
    /// 512 page frames, [`ABSENT`] where there is none.
    Pages(Box<[u64; PAGES_PER_CHUNK]>),
}

/// Which host frame backs each page of a VM's RAM (guest-physical 0 to `size`).
pub struct RamMap {
    size: u64,
    chunks: Vec<Chunk>,
    /// Pages below `size` with no frame.
    absent: u64,
    /// Pages whose frame is shared copy-on-write.
    shared: u64,
}

impl fmt::Debug for RamMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RamMap")
            .field("size", &self.size)
            .field("absent_pages", &self.absent)
            .field("huge_chunks", &self.huge_chunks())
            .finish()
    }
}

impl RamMap {
    /// `size` bytes of RAM from `frames`: each whole 2 MiB chunk one 2 MiB frame if
    /// the allocator has one, else 512 page frames; a partial last chunk in pages.
    /// On failure everything taken is given back.
    pub fn allocate(size: u64, frames: &mut impl Frames) -> Result<Self, RamError> {
        if size == 0 || !size.is_multiple_of(PAGE) {
            return Err(RamError::BadSize(size));
        }
        let mut map = Self::empty(size);
        let mut backed = 0;
        for c in 0..map.chunks.len() {
            let base = c as u64 * HUGE;
            let len = (size - base).min(HUGE);
            if len == HUGE {
                if let Some(hpa) = frames.alloc(HUGE, HUGE) {
                    map.chunks[c] = Chunk::Huge(hpa);
                    map.absent -= PAGES_PER_CHUNK as u64;
                    backed += HUGE;
                    continue;
                }
            }
            for p in 0..(len / PAGE) {
                let Some(hpa) = frames.alloc(PAGE, PAGE) else {
                    map.release(frames);
                    return Err(RamError::OutOfMemory { size, backed });
                };
                // A fresh map holds page tables for partial chunks only.
                map.set_page(base / PAGE + p, hpa);
                map.absent -= 1;
                backed += PAGE;
            }
        }
        Ok(map)
    }

    /// RAM backed by `size` bytes of host memory starting at `hpa` (2 MiB chunks
    /// where `hpa` is 2 MiB aligned): tests, and RAM the caller already holds.
    pub fn contiguous(hpa: u64, size: u64) -> Result<Self, RamError> {
        if size == 0 || !size.is_multiple_of(PAGE) {
            return Err(RamError::BadSize(size));
        }
        if !hpa.is_multiple_of(PAGE) {
            return Err(RamError::Unaligned(hpa));
        }
        let mut map = Self::empty(size);
        for c in 0..map.chunks.len() {
            let base = c as u64 * HUGE;
            let len = (size - base).min(HUGE);
            if len == HUGE && (hpa + base).is_multiple_of(HUGE) {
                map.chunks[c] = Chunk::Huge(hpa + base);
                map.absent -= PAGES_PER_CHUNK as u64;
            } else {
                for p in 0..len / PAGE {
                    map.set_page(base / PAGE + p, hpa + base + p * PAGE);
                    map.absent -= 1;
                }
            }
        }
        Ok(map)
    }

    /// `size` bytes of RAM with no frame behind any page (a VM that is not running).
    pub fn unbacked(size: u64) -> Result<Self, RamError> {
        if size == 0 || !size.is_multiple_of(PAGE) {
            return Err(RamError::BadSize(size));
        }
        Ok(Self::empty(size))
    }

    /// Every page absent.
    fn empty(size: u64) -> Self {
        let chunks = size.div_ceil(HUGE) as usize;
        Self {
            size,
            chunks: (0..chunks).map(|_| Chunk::Empty).collect(),
            absent: size / PAGE,
            shared: 0,
        }
    }

    /// RAM of `size` bytes whose every page is shared copy-on-write with the frames
    /// of `size` bytes at `hpa` (a snapshot's copy, which the caller keeps alive
    /// and unchanged while any map refers to it).
    pub fn shared(hpa: u64, size: u64) -> Result<Self, RamError> {
        if size == 0 || !size.is_multiple_of(PAGE) {
            return Err(RamError::BadSize(size));
        }
        if !hpa.is_multiple_of(PAGE) {
            return Err(RamError::Unaligned(hpa));
        }
        let mut map = Self::empty(size);
        for gfn in 0..size / PAGE {
            map.set_page(gfn, (hpa + gfn * PAGE) | SHARED);
        }
        map.absent = 0;
        map.shared = size / PAGE;
        Ok(map)
    }

    /// Pages still shared copy-on-write.
    pub fn shared_pages(&self) -> u64 {
        self.shared
    }

    /// Whether page `gfn` has a frame that is shared copy-on-write.
    pub fn is_shared(&self, gfn: u64) -> bool {
        self.raw(gfn).is_some_and(|e| e & SHARED != 0)
    }

    /// Gives the shared page `gfn` its own frame `hpa` (the caller copied the
    /// shared one into it); returns the shared frame, which stays its owner's.
    pub fn unshare(&mut self, gfn: u64, hpa: u64) -> Result<u64, RamError> {
        if !hpa.is_multiple_of(PAGE) {
            return Err(RamError::Unaligned(hpa));
        }
        match self.raw(gfn) {
            None => Err(RamError::Absent(gfn)),
            Some(e) if e & SHARED == 0 => Err(RamError::Backed(gfn)),
            Some(e) => {
                self.set_page(gfn, hpa);
                self.shared -= 1;
                Ok(e & !SHARED)
            }
        }
    }

    /// The page entry of `gfn` with its flags, if it has a frame.
    fn raw(&self, gfn: u64) -> Option<u64> {
        if gfn >= self.size / PAGE {
            return None;
        }
        let (c, p) = split(gfn);
        match &self.chunks[c] {
            Chunk::Empty => None,
            Chunk::Huge(hpa) => Some(hpa + p as u64 * PAGE),
            Chunk::Pages(pages) => (pages[p] != ABSENT).then_some(pages[p]),
        }
    }

    /// The RAM's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Pages with no frame (ballooned).
    pub fn absent_pages(&self) -> u64 {
        self.absent
    }

    /// Bytes of host memory backing the RAM.
    pub fn backed_bytes(&self) -> u64 {
        self.size - self.absent * PAGE
    }

    /// Chunks still backed by one 2 MiB frame.
    pub fn huge_chunks(&self) -> usize {
        self.chunks
            .iter()
            .filter(|c| matches!(c, Chunk::Huge(_)))
            .count()
    }

    /// The host frame of page `gfn`, if it has one.
    pub fn frame(&self, gfn: u64) -> Option<u64> {
        self.raw(gfn).map(|e| e & !SHARED)
    }

    /// The host address of `gpa` and how many bytes from there, at most `len`, are
    /// backed contiguously in the host (within one chunk); `None` if `gpa` lies
    /// outside the RAM or on an absent page.
    pub fn span(&self, gpa: u64, len: u64) -> Option<(u64, u64)> {
        if gpa >= self.size {
            return None;
        }
        let (c, _) = split(gpa / PAGE);
        let chunk_end = ((c as u64 + 1) * HUGE).min(self.size);
        let want = len.min(chunk_end - gpa);
        match &self.chunks[c] {
            Chunk::Empty => None,
            Chunk::Huge(hpa) => Some((hpa + gpa % HUGE, want)),
            Chunk::Pages(pages) => {
                let first = pages[(gpa % HUGE / PAGE) as usize];
                if first == ABSENT {
                    return None;
                }
                // Further pages count while their frames follow on (with the same
                // sharing: the flag is in the entries compared).
                let mut got = (PAGE - gpa % PAGE).min(want);
                let mut expect = first + PAGE;
                while got < want {
                    let p = ((gpa + got) % HUGE / PAGE) as usize;
                    if pages[p] != expect {
                        break;
                    }
                    got = (got + PAGE).min(want);
                    expect += PAGE;
                }
                Some(((first & !SHARED) + gpa % PAGE, got))
            }
        }
    }

    /// Whether every page of `[gpa, gpa + len)` lies in the RAM and has a frame.
    pub fn backed(&self, gpa: u64, len: u64) -> bool {
        let Some(end) = gpa.checked_add(len).filter(|&e| e <= self.size) else {
            return false;
        };
        let mut at = gpa;
        while at < end {
            match self.span(at, end - at) {
                Some((_, n)) => at += n,
                None => return false,
            }
        }
        true
    }

    /// The backed RAM as runs, adjacent pieces that continue in the host merged:
    /// what the nested page tables map (2 MiB leaves wherever a run allows them).
    pub fn runs(&self) -> Vec<Run> {
        let mut out: Vec<Run> = Vec::new();
        let mut push = |gpa: u64, hpa: u64, len: u64, shared: bool| match out.last_mut() {
            Some(last)
                if last.gpa + last.len == gpa
                    && last.hpa + last.len == hpa
                    && last.shared == shared =>
            {
                last.len += len
            }
            _ => out.push(Run {
                gpa,
                hpa,
                len,
                shared,
            }),
        };
        for (c, chunk) in self.chunks.iter().enumerate() {
            let base = c as u64 * HUGE;
            match chunk {
                Chunk::Empty => {}
                Chunk::Huge(hpa) => push(base, *hpa, HUGE, false),
                Chunk::Pages(pages) => {
                    for (p, &hpa) in pages.iter().enumerate() {
                        if hpa != ABSENT {
                            push(
                                base + p as u64 * PAGE,
                                hpa & !SHARED,
                                PAGE,
                                hpa & SHARED != 0,
                            );
                        }
                    }
                }
            }
        }
        out
    }

    /// Guest page numbers with no frame, in order.
    pub fn absent(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.size / PAGE).filter(|&gfn| self.frame(gfn).is_none())
    }

    /// Takes page `gfn`'s frame out of the map and returns it and whether it was
    /// shared (the caller unmaps it from the guest and, unless shared, frees it
    /// when [`sync`] says it may). A 2 MiB chunk becomes 512 pages first.
    pub fn take_page(&mut self, gfn: u64) -> Result<(u64, bool), RamError> {
        if gfn >= self.size / PAGE {
            return Err(RamError::OutOfRange(gfn));
        }
        let (c, p) = split(gfn);
        if matches!(self.chunks[c], Chunk::Empty) {
            return Err(RamError::Absent(gfn));
        }
        if let Chunk::Huge(hpa) = self.chunks[c] {
            let mut pages = Box::new([0; PAGES_PER_CHUNK]);
            for (i, page) in pages.iter_mut().enumerate() {
                *page = hpa + i as u64 * PAGE;
            }
            self.chunks[c] = Chunk::Pages(pages);
        }
        let Chunk::Pages(pages) = &mut self.chunks[c] else {
            unreachable!("split just above");
        };
        let entry = core::mem::replace(&mut pages[p], ABSENT);
        if entry == ABSENT {
            return Err(RamError::Absent(gfn));
        }
        self.absent += 1;
        let shared = entry & SHARED != 0;
        if shared {
            self.shared -= 1;
        }
        Ok((entry & !SHARED, shared))
    }

    /// Backs the absent page `gfn` with the frame at `hpa`.
    pub fn put_page(&mut self, gfn: u64, hpa: u64) -> Result<(), RamError> {
        if gfn >= self.size / PAGE {
            return Err(RamError::OutOfRange(gfn));
        }
        if !hpa.is_multiple_of(PAGE) {
            return Err(RamError::Unaligned(hpa));
        }
        if self.frame(gfn).is_some() {
            return Err(RamError::Backed(gfn));
        }
        self.set_page(gfn, hpa);
        self.absent -= 1;
        Ok(())
    }

    /// Backs every absent page with a fresh frame (a restart or a restore gives
    /// the guest all its RAM again). On failure the pages backed so far stay.
    pub fn fill(&mut self, frames: &mut impl Frames) -> Result<u64, RamError> {
        let missing: Vec<u64> = self.absent().collect();
        for &gfn in &missing {
            let hpa = frames.alloc(PAGE, PAGE).ok_or(RamError::OutOfMemory {
                size: self.size,
                backed: self.backed_bytes(),
            })?;
            self.set_page(gfn, hpa);
            self.absent -= 1;
        }
        Ok(missing.len() as u64)
    }

    /// Gives every frame back (shared ones stay their owner's).
    pub fn release(self, frames: &mut impl Frames) {
        for run in self.runs().into_iter().filter(|r| !r.shared) {
            frames.free(run.hpa, run.len);
        }
    }

    /// Takes every frame out, leaving a map of the same size with none (what a VM
    /// that is gone still answers accessors with); the old map is returned for
    /// [`RamMap::release`].
    pub fn take_all(&mut self) -> RamMap {
        let size = self.size;
        core::mem::replace(self, Self::empty(size))
    }

    /// Writes a page entry of a chunk that is not [`Chunk::Huge`] (callers make
    /// sure).
    fn set_page(&mut self, gfn: u64, hpa: u64) {
        let (c, p) = split(gfn);
        if let Chunk::Empty = self.chunks[c] {
            self.chunks[c] = Chunk::Pages(Box::new([ABSENT; PAGES_PER_CHUNK]));
        }
        if let Chunk::Pages(pages) = &mut self.chunks[c] {
            pages[p] = hpa;
        }
    }
}

/// Chunk index and page index inside it.
fn split(gfn: u64) -> (usize, usize) {
    (
        (gfn / PAGES_PER_CHUNK as u64) as usize,
        (gfn % PAGES_PER_CHUNK as u64) as usize,
    )
}

#[cfg(test)]
mod tests;
