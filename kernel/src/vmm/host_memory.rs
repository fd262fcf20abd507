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

/// Guest RAM's host side: frames from the kernel's allocator, reached through the
/// complete physical mapping.
pub struct KernelRam;

/// The one [`KernelRam`] every VM's RAM uses.
pub static KERNEL_RAM: KernelRam = KernelRam;

impl super::guest_ram::RamHost for KernelRam {
    fn virt_base(&self) -> usize {
        memory::phys_to_virt(0) as usize
    }

    fn alloc_page(&self) -> Option<u64> {
        memory::alloc_zeroed(4096, 4096).ok()
    }

    fn free(&self, hpa: u64, len: u64) {
        memory::free(hpa, len)
    }

    fn with_tables(&self, f: &mut dyn FnMut(&mut dyn HostMemory)) {
        f(&mut KernelMemory)
    }
}

/// Guest RAM frames for `guestram::RamMap::allocate`: zeroed, so one guest's or
/// the hypervisor's old data never reaches another guest.
pub struct RamFrames;

impl guestram::Frames for RamFrames {
    fn alloc(&mut self, size: u64, align: u64) -> Option<u64> {
        memory::alloc_zeroed(size, align).ok()
    }

    fn free(&mut self, hpa: u64, size: u64) {
        memory::free(hpa, size)
    }
}
