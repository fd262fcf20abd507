//! Physical memory for the hypervisor: the heap, the host frame allocator and access
//! to physical memory through the bootloader's complete physical mapping.

use bootloader_api::info::{MemoryRegionKind, MemoryRegions};
use core::sync::atomic::{AtomicU64, Ordering};
use linked_list_allocator::LockedHeap;
use spin::Mutex;

use crate::memory_map::{self, AllocError, Range, RangeAllocator, PAGE_SIZE};

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

static PHYS_OFFSET: AtomicU64 = AtomicU64::new(0);
static FRAMES: Mutex<Option<RangeAllocator>> = Mutex::new(None);

pub struct MemoryReport {
    pub usable_bytes: u64,
    pub heap: Range,
    pub regions: usize,
}

/// Sets up the heap and the frame allocator from the firmware memory map.
pub fn init(regions: &MemoryRegions, phys_offset: u64) -> Result<MemoryReport, &'static str> {
    PHYS_OFFSET.store(phys_offset, Ordering::Relaxed);
    let usable = || {
        regions
            .iter()
            .filter(|r| r.kind == MemoryRegionKind::Usable)
            .map(|r| Range {
                start: r.start,
                end: r.end,
            })
    };
    // The heap comes first, without the heap: the largest usable range above 1 MiB.
    let total: u64 = usable().map(|r| r.len()).sum();
    let heap_size = memory_map::heap_size_for(total);
    let heap_start = usable()
        .map(|r| Range {
            start: r
                .start
                .max(memory_map::LOW_MEMORY_END)
                .next_multiple_of(PAGE_SIZE),
            end: r.end,
        })
        .filter(|r| r.start < r.end && r.len() >= heap_size)
        .max_by_key(|r| r.len())
        .ok_or("no usable memory range is large enough for the hypervisor heap")?
        .start;
    // SAFETY: the range is usable RAM per the firmware map, reserved below from the
    // frame allocator, and reached through the bootloader's physical mapping.
    unsafe {
        HEAP.lock()
            .init((phys_offset + heap_start) as *mut u8, heap_size as usize);
    }
    let heap = Range {
        start: heap_start,
        end: heap_start + heap_size,
    };
    let mut frames = RangeAllocator::new(memory_map::normalize(usable()));
    frames.reserve(heap);
    let report = MemoryReport {
        usable_bytes: total,
        heap,
        regions: regions.len(),
    };
    *FRAMES.lock() = Some(frames);
    Ok(report)
}

/// The virtual address at which host-physical `pa` is mapped.
pub fn phys_to_virt(pa: u64) -> *mut u8 {
    (PHYS_OFFSET.load(Ordering::Relaxed) + pa) as *mut u8
}

/// Host-physical memory handed out by [`alloc_zeroed`], owned until [`free`].
pub fn alloc_zeroed(size: u64, align: u64) -> Result<u64, AllocError> {
    let pa = FRAMES
        .lock()
        .as_mut()
        .expect("frame allocator initialised")
        .alloc(size, align)?;
    let len = size.next_multiple_of(PAGE_SIZE) as usize;
    // SAFETY: the range was just taken from the free pool, so nothing else refers to
    // it; it is RAM reached through the physical mapping. Wiping it keeps one guest's
    // or the hypervisor's old data from reaching another guest.
    unsafe { core::ptr::write_bytes(phys_to_virt(pa), 0, len) };
    Ok(pa)
}

pub fn free(pa: u64, size: u64) {
    FRAMES
        .lock()
        .as_mut()
        .expect("frame allocator initialised")
        .free(pa, size);
}

pub fn free_bytes() -> u64 {
    FRAMES.lock().as_ref().map_or(0, |f| f.free_bytes())
}
