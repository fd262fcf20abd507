//! Physical memory bookkeeping that needs no hardware: turning the firmware's memory
//! map into usable ranges, sizing the heap, and a first-fit range allocator for host
//! frames. Host-tested; the kernel wraps it in `memory.rs`.

use alloc::vec::Vec;

pub const PAGE_SIZE: u64 = 4096;

/// A half-open physical range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub start: u64,
    pub end: u64,
}

impl Range {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// Memory below 1 MiB holds the real-mode IVT, BIOS data and option ROMs on PCs; the
/// hypervisor never hands it out, even where the map calls it usable.
pub const LOW_MEMORY_END: u64 = 0x10_0000;

const fn align_up(x: u64, a: u64) -> u64 {
    (x + a - 1) & !(a - 1)
}
const fn align_down(x: u64, a: u64) -> u64 {
    x & !(a - 1)
}

/// Sorts, page-aligns (inwards) and merges the usable ranges, dropping everything
/// below [`LOW_MEMORY_END`]. Firmware maps may be unsorted and split adjacent ranges.
pub fn normalize(usable: impl IntoIterator<Item = Range>) -> Vec<Range> {
    let mut v: Vec<Range> = usable
        .into_iter()
        .map(|r| Range {
            start: align_up(r.start.max(LOW_MEMORY_END), PAGE_SIZE),
            end: align_down(r.end, PAGE_SIZE),
        })
        .filter(|r| !r.is_empty())
        .collect();
    v.sort_by_key(|r| r.start);
    let mut out: Vec<Range> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// The heap grows with the machine: 1/32 of usable memory, at least 4 MiB and at most
/// 64 MiB. Guest RAM and page tables come from the frame allocator, not the heap.
pub fn heap_size_for(usable_bytes: u64) -> u64 {
    align_down((usable_bytes / 32).clamp(4 << 20, 64 << 20), PAGE_SIZE)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocError {
    OutOfMemory { requested: u64, largest_free: u64 },
    BadAlignment,
}

/// A first-fit allocator over free physical ranges. Allocations are page multiples;
/// freed ranges merge with their neighbours so a stopped VM's RAM can be reused whole.
#[derive(Debug, Default)]
pub struct RangeAllocator {
    free: Vec<Range>,
    total: u64,
}

impl RangeAllocator {
    pub fn new(ranges: Vec<Range>) -> Self {
        let total = ranges.iter().map(Range::len).sum();
        Self {
            free: ranges,
            total,
        }
    }

    pub fn free_bytes(&self) -> u64 {
        self.free.iter().map(Range::len).sum()
    }

    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    pub fn largest_free(&self) -> u64 {
        self.free.iter().map(Range::len).max().unwrap_or(0)
    }

    /// Allocates `size` bytes (rounded up to pages) aligned to `align` (a power of two,
    /// at least a page).
    pub fn alloc(&mut self, size: u64, align: u64) -> Result<u64, AllocError> {
        if !align.is_power_of_two() || align < PAGE_SIZE {
            return Err(AllocError::BadAlignment);
        }
        let size = align_up(size.max(1), PAGE_SIZE);
        for i in 0..self.free.len() {
            let r = self.free[i];
            let start = align_up(r.start, align);
            if start >= r.end || r.end - start < size {
                continue;
            }
            let end = start + size;
            // Split into the part before the aligned start and the part after the end.
            let before = Range {
                start: r.start,
                end: start,
            };
            let after = Range {
                start: end,
                end: r.end,
            };
            self.free.remove(i);
            let mut at = i;
            for piece in [before, after] {
                if !piece.is_empty() {
                    self.free.insert(at, piece);
                    at += 1;
                }
            }
            return Ok(start);
        }
        Err(AllocError::OutOfMemory {
            requested: size,
            largest_free: self.largest_free(),
        })
    }

    /// Takes `r` out of the pool (memory handed out before the allocator existed,
    /// such as the heap).
    pub fn reserve(&mut self, r: Range) {
        let mut out = Vec::with_capacity(self.free.len() + 1);
        for f in self.free.drain(..) {
            if f.end <= r.start || r.end <= f.start {
                out.push(f);
                continue;
            }
            for piece in [
                Range {
                    start: f.start,
                    end: r.start,
                },
                Range {
                    start: r.end,
                    end: f.end,
                },
            ] {
                if !piece.is_empty() {
                    out.push(piece);
                }
            }
        }
        self.free = out;
    }

    /// Returns a range to the pool. Freeing memory that is already free is a kernel
    /// bug and panics rather than corrupting the free list.
    pub fn free(&mut self, start: u64, size: u64) {
        let size = align_up(size, PAGE_SIZE);
        let new = Range {
            start,
            end: start + size,
        };
        let at = self.free.partition_point(|r| r.start < start);
        if let Some(prev) = at.checked_sub(1).map(|p| self.free[p]) {
            assert!(prev.end <= new.start, "double free of {start:#x}");
        }
        if let Some(next) = self.free.get(at) {
            assert!(new.end <= next.start, "double free of {start:#x}");
        }
        self.free.insert(at, new);
        // Merge with the following and then the preceding neighbour.
        if at + 1 < self.free.len() && self.free[at].end == self.free[at + 1].start {
            self.free[at].end = self.free[at + 1].end;
            self.free.remove(at + 1);
        }
        if at > 0 && self.free[at - 1].end == self.free[at].start {
            self.free[at - 1].end = self.free[at].end;
            self.free.remove(at);
        }
    }
}

/// Where conventional memory ends: 0xA0000 up is video memory and ROMs.
pub const CONVENTIONAL_END: u64 = 0xA_0000;

/// Whole 4 KiB pages below [`CONVENTIONAL_END`] inside the usable ranges, lowest of
/// each range first, never page 0 (the real-mode IVT and BIOS data area). A STARTUP
/// IPI can only start a processor in such a page (its vector is the page number).
pub fn low_free_pages(usable: impl IntoIterator<Item = Range>) -> impl Iterator<Item = u64> {
    usable.into_iter().flat_map(|r| {
        let start = align_up(r.start.max(PAGE_SIZE), PAGE_SIZE);
        let end = align_down(r.end.min(CONVENTIONAL_END), PAGE_SIZE);
        (start..end.max(start)).step_by(PAGE_SIZE as usize)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn low_free_pages_are_whole_pages_below_640k_never_page_0() {
        let pages: Vec<u64> = low_free_pages([
            r(0, 0x3000),
            r(0x5800, 0x7100),
            r(0x9E000, 0x10_0000),
            r(0x10_0000, 0x20_0000),
        ])
        .collect();
        assert_eq!(pages, vec![0x1000, 0x2000, 0x6000, 0x9E000, 0x9F000]);
        assert_eq!(low_free_pages([r(0x500, 0xFFF)]).count(), 0);
    }

    fn r(start: u64, end: u64) -> Range {
        Range { start, end }
    }

    #[test]
    fn normalize_sorts_merges_aligns_and_drops_low_memory() {
        let got = normalize(vec![
            r(0x20_0000, 0x30_0000),
            r(0x0, 0x9_f000),
            r(0x10_0800, 0x20_0000),
            r(0x40_0000, 0x40_0fff),
        ]);
        assert_eq!(got, vec![r(0x10_1000, 0x30_0000)]);
    }

    #[test]
    fn heap_size_is_clamped() {
        assert_eq!(heap_size_for(16 << 20), 4 << 20);
        assert_eq!(heap_size_for(512 << 20), 16 << 20);
        assert_eq!(heap_size_for(64 << 30), 64 << 20);
    }

    #[test]
    fn alloc_respects_alignment_and_splits() {
        let mut a = RangeAllocator::new(vec![r(0x10_1000, 0x80_0000)]);
        let big = a.alloc(0x20_0000, 0x20_0000).unwrap();
        assert_eq!(big, 0x20_0000);
        assert_eq!(
            a.free,
            vec![r(0x10_1000, 0x20_0000), r(0x40_0000, 0x80_0000)]
        );
        let small = a.alloc(1, PAGE_SIZE).unwrap();
        assert_eq!(small, 0x10_1000);
        assert_eq!(a.free_bytes(), (0x80_0000 - 0x10_1000) - 0x20_0000 - 0x1000);
    }

    #[test]
    fn reserve_cuts_a_hole() {
        let mut a = RangeAllocator::new(vec![r(0x10_0000, 0x20_0000), r(0x30_0000, 0x40_0000)]);
        a.reserve(r(0x18_0000, 0x31_0000));
        assert_eq!(
            a.free,
            vec![r(0x10_0000, 0x18_0000), r(0x31_0000, 0x40_0000)]
        );
    }

    #[test]
    fn free_merges_neighbours() {
        let mut a = RangeAllocator::new(vec![r(0x10_0000, 0x20_0000)]);
        let x = a.alloc(0x1000, 0x1000).unwrap();
        let y = a.alloc(0x1000, 0x1000).unwrap();
        let z = a.alloc(0x1000, 0x1000).unwrap();
        a.free(y, 0x1000);
        a.free(x, 0x1000);
        a.free(z, 0x1000);
        assert_eq!(a.free, vec![r(0x10_0000, 0x20_0000)]);
    }

    #[test]
    #[should_panic(expected = "double free")]
    fn double_free_panics() {
        let mut a = RangeAllocator::new(vec![r(0x10_0000, 0x20_0000)]);
        let x = a.alloc(0x2000, 0x1000).unwrap();
        a.free(x, 0x2000);
        a.free(x, 0x1000);
    }

    #[test]
    fn out_of_memory_reports_largest_free() {
        let mut a = RangeAllocator::new(vec![r(0x10_0000, 0x12_0000), r(0x20_0000, 0x20_4000)]);
        assert_eq!(
            a.alloc(0x40_0000, 0x1000),
            Err(AllocError::OutOfMemory {
                requested: 0x40_0000,
                largest_free: 0x2_0000
            })
        );
        assert_eq!(a.alloc(0x1000, 3), Err(AllocError::BadAlignment));
    }
}
