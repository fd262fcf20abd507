//! Physical memory for the hypervisor: the heap, the host frame allocator and access
//! to physical memory through the bootloader's complete physical mapping.

use alloc::vec::Vec;
use bootloader_api::info::{MemoryRegionKind, MemoryRegions};
use core::sync::atomic::{AtomicU64, Ordering};
use linked_list_allocator::LockedHeap;
use spin::Mutex;
use x86_64::registers::control::Cr3;
use x86_64::structures::paging::mapper::{MapToError, MappedFrame, TranslateResult};
use x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page, PageTable, PageTableFlags, PhysFrame, Size1GiB,
    Size2MiB, Size4KiB, Translate,
};
use x86_64::{PhysAddr, VirtAddr};

use crate::memory_map::{self, AllocError, Range, RangeAllocator, PAGE_SIZE};

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

static PHYS_OFFSET: AtomicU64 = AtomicU64::new(0);
static FRAMES: Mutex<Option<RangeAllocator>> = Mutex::new(None);

pub struct MemoryReport {
    pub usable_bytes: u64,
    pub heap: Range,
    pub regions: usize,
    /// Page-table frames of the live tables that the memory map listed as usable
    /// (reserved now).
    pub tables_in_usable: u64,
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
    // The page tables the hypervisor runs on are the bootloader's: their frames must
    // never be handed out, whatever the memory map says about them.
    let total_before = frames.free_bytes();
    for table in live_page_table_frames() {
        frames.reserve(Range {
            start: table,
            end: table + PAGE_SIZE,
        });
    }
    let tables_in_usable = (total_before - frames.free_bytes()) / PAGE_SIZE;
    let report = MemoryReport {
        usable_bytes: total,
        heap,
        regions: regions.len(),
        tables_in_usable,
    };
    *FRAMES.lock() = Some(frames);
    Ok(report)
}

/// The physical frames of every page table reachable from CR3 (the PML4 and each
/// table a present, non-huge entry points to), for reserving them.
fn live_page_table_frames() -> Vec<u64> {
    let (l4, _) = Cr3::read();
    let mut out = alloc::vec![l4.start_address().as_u64()];
    let mut level = alloc::vec![l4.start_address().as_u64()];
    // PML4 -> PDPT -> PD -> PT: three levels of tables below the PML4.
    for depth in 0..3 {
        let mut next = Vec::new();
        for &table in &level {
            // SAFETY: `table` is a live page table (CR3's, or one a present entry of
            // a live table names), read through the complete physical mapping.
            let t = unsafe { &*(phys_to_virt(table) as *const PageTable) };
            for e in t.iter() {
                let f = e.flags();
                if !f.contains(PageTableFlags::PRESENT)
                    || (depth > 0 && f.contains(PageTableFlags::HUGE_PAGE))
                {
                    continue;
                }
                next.push(e.addr().as_u64());
            }
        }
        out.extend_from_slice(&next);
        level = next;
    }
    out
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

/// Host-physical memory for a copy that overwrites all of it at once (a snapshot
/// of a VM's RAM): not wiped first, since no byte of its old contents survives the
/// copy; never hand such memory to a guest before it is overwritten.
pub fn alloc_for_copy(size: u64, align: u64) -> Result<u64, AllocError> {
    FRAMES
        .lock()
        .as_mut()
        .expect("frame allocator initialised")
        .alloc(size, align)
}

pub fn free(pa: u64, size: u64) {
    FRAMES
        .lock()
        .as_mut()
        .expect("frame allocator initialised")
        .free(pa, size);
}

/// The hypervisor heap's size in bytes.
pub fn heap_size() -> usize {
    HEAP.lock().size()
}

pub fn free_bytes() -> u64 {
    FRAMES.lock().as_ref().map_or(0, |f| f.free_bytes())
}

/// The active page table (the bootloader's, shared by every processor) through the
/// physical-memory mapping.
///
/// # Safety
/// The caller must be the only code changing the page tables while the result lives
/// (boot-time, on the boot processor, before other processors use the mappings it
/// changes).
unsafe fn active_page_table() -> OffsetPageTable<'static> {
    let (l4, _) = Cr3::read();
    // SAFETY: CR3 names the live PML4, reached through the complete physical mapping;
    // exclusivity is the caller's promise.
    unsafe {
        let table = &mut *(phys_to_virt(l4.start_address().as_u64()) as *mut PageTable);
        OffsetPageTable::new(table, VirtAddr::new(PHYS_OFFSET.load(Ordering::Relaxed)))
    }
}

/// Page-table frames for the x86_64 crate's mapper, from the frame allocator.
struct TableFrames;

// SAFETY: `alloc_zeroed` returns unused, zeroed, page-aligned frames.
unsafe impl FrameAllocator<Size4KiB> for TableFrames {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        alloc_zeroed(PAGE_SIZE, PAGE_SIZE)
            .ok()
            .map(|pa| PhysFrame::containing_address(PhysAddr::new(pa)))
    }
}

/// Makes the physical-mapping page that covers MMIO address `pa` uncacheable (PCD and
/// PWT: PAT entry 3, UC, with the default PAT) and returns where `pa` is mapped. The
/// bootloader maps the first 4 GiB with write-back attributes (2 MiB pages); whatever
/// else shares that page becomes uncached too, which suits the APIC's page
/// (0xFEE00000 starts its own 2 MiB page).
pub fn map_uncached(pa: u64) -> Result<*mut u8, &'static str> {
    let va = VirtAddr::new(phys_to_virt(pa) as u64);
    let uc = PageTableFlags::NO_CACHE | PageTableFlags::WRITE_THROUGH;
    // SAFETY: boot time on the boot processor; the entry keeps its frame, only the
    // cache attributes change.
    unsafe {
        let mut table = active_page_table();
        match table.translate(va) {
            TranslateResult::Mapped { frame, flags, .. } => match frame {
                MappedFrame::Size4KiB(_) => table
                    .update_flags(Page::<Size4KiB>::containing_address(va), flags | uc)
                    .map(|f| f.flush())
                    .map_err(|_| "changing its 4 KiB mapping failed")?,
                MappedFrame::Size2MiB(_) => table
                    .update_flags(Page::<Size2MiB>::containing_address(va), flags | uc)
                    .map(|f| f.flush())
                    .map_err(|_| "changing its 2 MiB mapping failed")?,
                MappedFrame::Size1GiB(_) => table
                    .update_flags(Page::<Size1GiB>::containing_address(va), flags | uc)
                    .map(|f| f.flush())
                    .map_err(|_| "changing its 1 GiB mapping failed")?,
            },
            _ => return Err("the bootloader's physical mapping does not cover it"),
        }
    }
    Ok(va.as_u64() as *mut u8)
}

/// Makes `pa..pa + len` (a device's register BAR) reachable uncached at
/// [`phys_to_virt`]`(pa)` and returns that address. Pages the physical mapping covers
/// get [`map_uncached`]; pages beyond it (firmware may place a 64-bit BAR far above
/// RAM and the 4 GiB the bootloader maps: OVMF put QEMU's NVMe BAR at 0xE0_0000_0000)
/// get new 4 KiB mappings at the same offset, which fails cleanly, never overwrites,
/// if something else already uses that virtual address.
pub fn map_mmio(pa: u64, len: u64) -> Result<*mut u8, &'static str> {
    let end = pa.checked_add(len).ok_or("the range wraps around")?;
    let offset = PHYS_OFFSET.load(Ordering::Relaxed);
    let mut page = pa & !(PAGE_SIZE - 1);
    while page < end {
        let va = offset
            .checked_add(page)
            .and_then(|v| VirtAddr::try_new(v).ok())
            .ok_or("its address is beyond the virtual address space")?;
        // SAFETY: boot time on the boot processor (see `map_uncached`); a new
        // mapping only goes where nothing is mapped, and maps device memory.
        let mapped = unsafe { active_page_table().translate_addr(va).is_some() };
        if mapped {
            map_uncached(page)?;
        } else {
            let flags = PageTableFlags::PRESENT
                | PageTableFlags::WRITABLE
                | PageTableFlags::NO_CACHE
                | PageTableFlags::WRITE_THROUGH;
            // SAFETY: as above; the frame is device memory, not RAM anything owns.
            unsafe {
                active_page_table()
                    .map_to(
                        Page::<Size4KiB>::containing_address(va),
                        PhysFrame::<Size4KiB>::containing_address(PhysAddr::new(page)),
                        flags,
                        &mut TableFrames,
                    )
                    .map(|f| f.flush())
                    .map_err(map_error)?;
            }
        }
        page += PAGE_SIZE;
    }
    Ok(phys_to_virt(pa))
}

/// Why a page could not be mapped, in words.
fn map_error(e: MapToError<Size4KiB>) -> &'static str {
    match e {
        MapToError::PageAlreadyMapped(_) => "its virtual address is already in use",
        MapToError::ParentEntryHugePage => "a huge page covers its virtual address",
        MapToError::FrameAllocationFailed => "out of memory for page tables",
    }
}

/// Maps the 4 KiB page at physical (and virtual) address `pa` identically, writable and
/// executable, in the active page table: the AP start-up code runs there while it
/// turns paging on. Fails if that virtual address is already in use.
pub fn map_identity(pa: u64) -> Result<(), &'static str> {
    let page = Page::<Size4KiB>::containing_address(VirtAddr::new(pa));
    let frame = PhysFrame::<Size4KiB>::containing_address(PhysAddr::new(pa));
    // SAFETY: boot time on the boot processor; the page is free low memory reserved
    // for the trampoline, and the virtual address is checked to be unused.
    unsafe {
        let mut table = active_page_table();
        table
            .map_to(
                page,
                frame,
                PageTableFlags::PRESENT | PageTableFlags::WRITABLE,
                &mut TableFrames,
            )
            .map(|f| f.flush())
            .map_err(map_error)
    }
}

/// Removes a mapping made by [`map_identity`] (its page-table frames stay).
pub fn unmap_identity(pa: u64) {
    let page = Page::<Size4KiB>::containing_address(VirtAddr::new(pa));
    // SAFETY: boot time on the boot processor, after every AP left the trampoline.
    unsafe {
        if let Ok((_, flush)) = active_page_table().unmap(page) {
            flush.flush();
        }
    }
}

/// Free 4 KiB pages below 640 KiB per the firmware map (the frame allocator never
/// hands these out, see `memory_map::LOW_MEMORY_END`); see
/// [`memory_map::low_free_pages`].
pub fn low_free_pages(regions: &MemoryRegions) -> impl Iterator<Item = u64> + '_ {
    memory_map::low_free_pages(
        regions
            .iter()
            .filter(|r| r.kind == MemoryRegionKind::Usable)
            .map(|r| Range {
                start: r.start,
                end: r.end,
            }),
    )
}
