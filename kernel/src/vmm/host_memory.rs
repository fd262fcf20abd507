//! The host-memory services a vendor backend needs, over the kernel's frame allocator
//! and physical-memory mapping.

use vcpu::paging::TableMemory;
use vcpu::HostMemory;

use crate::memory;

pub struct KernelMemory;

impl TableMemory for KernelMemory {
    fn alloc_table(&mut self) -> Option<u64> {
        memory::alloc_zeroed(4096, 4096).ok()
    }

    fn table(&mut self, hpa: u64) -> &mut [u64; 512] {
        // SAFETY: tables come from `alloc_table` (page-aligned frames owned by the
        // caller's page-table structure) and every frame is mapped at the offset.
        unsafe { &mut *(memory::phys_to_virt(hpa) as *mut [u64; 512]) }
    }
}

impl HostMemory for KernelMemory {
    fn alloc(&mut self, size: u64, align: u64) -> Option<u64> {
        memory::alloc_zeroed(size, align).ok()
    }

    fn free(&mut self, pa: u64, size: u64) {
        memory::free(pa, size)
    }

    fn virt(&mut self, pa: u64) -> *mut u8 {
        memory::phys_to_virt(pa)
    }
}
