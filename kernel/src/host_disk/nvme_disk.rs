//! The host disk over NVMe: the first NVMe controller on the host's PCI buses
//! (class 01h, subclass 08h, interface 02h), brought up by the `nvme` crate.
//!
//! This module owns the three things the driver cannot do itself: finding and
//! enabling the PCI function, mapping BAR0 uncached, and handing out DMA memory
//! (frames of the host frame allocator, reached through the physical mapping).

use alloc::collections::BTreeMap;
use core::sync::atomic::{compiler_fence, Ordering};

use super::TscClock;
use crate::memory_map::PAGE_SIZE;
use crate::{memory, pci, println};

pub type NvmeDisk = nvme::Controller<Bar, KernelDma, TscClock>;

/// Finds, enables and brings up the first NVMe controller and reports it in one
/// line (or a warning). `None`: no NVMe controller, or one that failed.
pub(super) fn init() -> Option<NvmeDisk> {
    let Some(function) = pci::functions().find(|f| f.class() == (0x01, 0x08, 0x02)) else {
        println!("hv: nvme: no NVMe controller found");
        return None;
    };
    match bring_up(function) {
        Ok(mut disk) => {
            let info = disk.info();
            println!(
                "hv: nvme: {function} {:?} serial {}, {} sectors of 512 bytes ({}-byte LBAs, {} KiB per command)",
                info.model,
                info.serial,
                disk.sectors(),
                info.lba_bytes,
                info.max_transfer_bytes / 1024
            );
            report_partition_table(&mut disk);
            Some(disk)
        }
        Err(why) => {
            println!("hv: nvme: WARNING: {function}: {why}; no host disk");
            None
        }
    }
}

/// Tells the controller the hypervisor stops (a normal shutdown, NVMe 1.4 §7.6.2),
/// so a real SSD commits its cache instead of counting an unsafe shutdown.
pub(super) fn shutdown(disk: &mut NvmeDisk) {
    match disk.shutdown() {
        Ok(()) => println!("hv: nvme: controller shut down"),
        Err(e) => println!("hv: nvme: WARNING: shutdown failed: {e}"),
    }
}

fn bring_up(function: pci::Function) -> Result<NvmeDisk, alloc::string::String> {
    use alloc::format;
    let bar = function
        .memory_bar(0)
        .ok_or("BAR0 is an I/O BAR, not memory")?;
    if bar.base == 0 || bar.size < 0x2000 {
        return Err(format!(
            "BAR0 unusable (base {:#x}, size {:#x}: unassigned or too small)",
            bar.base, bar.size
        ));
    }
    // Registers and the first doorbells; a larger BAR (an MSI-X table behind them)
    // needs no mapping here.
    let len = bar.size.min(MAX_MAPPED);
    let va = memory::map_mmio(bar.base, len)
        .map_err(|e| format!("mapping BAR0 at {:#x}: {e}", bar.base))?;
    // Memory decoding and bus mastering on (the controller DMAs into our pages),
    // INTx off: completions are polled.
    function.set_command(
        function.command()
            | pci::COMMAND_MEMORY
            | pci::COMMAND_BUS_MASTER
            | pci::COMMAND_INTX_DISABLE,
    );
    let regs = Bar {
        base: va as u64,
        len: len as usize,
    };
    nvme::Controller::new(regs, KernelDma::default(), TscClock)
        .map_err(|e| format!("bring-up failed: {e}"))
}

/// The GPT header's place: LBA 1 in the namespace's own block size (UEFI 2.10 §5.3.1).
fn report_partition_table(disk: &mut NvmeDisk) {
    let mut block = [0u8; 512];
    let sector = u64::from(disk.lba_bytes()) / 512;
    match disk.read(sector, &mut block) {
        Ok(()) if &block[..8] == b"EFI PART" => {
            println!("hv: nvme: LBA 1 holds a GPT header (\"EFI PART\")")
        }
        Ok(()) => println!("hv: nvme: LBA 1 holds no GPT header"),
        Err(e) => println!("hv: nvme: WARNING: reading LBA 1 failed: {e}"),
    }
}

/// At most this much of BAR0 is mapped: the registers (4 KiB) and the doorbells of
/// queues 0 and 1 even at the largest doorbell stride (4 << 15 bytes apart).
const MAX_MAPPED: u64 = 0x1000 + 4 * (4 << 15);

/// BAR0 through its uncached mapping. An access outside the mapped length (a
/// doorbell stride the device made too large) reads all ones and writes nothing,
/// which the driver reports as a dead controller or a timeout.
pub struct Bar {
    base: u64,
    len: usize,
}

impl Bar {
    fn ptr(&self, offset: usize) -> Option<u64> {
        (offset.is_multiple_of(4) && offset.checked_add(4)? <= self.len)
            .then(|| self.base + offset as u64)
    }
}

impl nvme::Registers for Bar {
    fn read32(&mut self, offset: usize) -> u32 {
        match self.ptr(offset) {
            // SAFETY: inside the BAR's uncached mapping (checked), 4-byte aligned:
            // one 32-bit MMIO read.
            Some(p) => unsafe { (p as *const u32).read_volatile() },
            None => u32::MAX,
        }
    }

    fn write32(&mut self, offset: usize, value: u32) {
        if let Some(p) = self.ptr(offset) {
            // SAFETY: as in `read32`; the driver writes registers the NVMe
            // specification defines.
            unsafe { (p as *mut u32).write_volatile(value) }
        }
    }

    // 64-bit registers as two 32-bit accesses, low dword first: NVMe 1.4 §3 allows
    // it, and CAP is constant while ASQ/ACQ are only written with the controller
    // disabled, so no torn value is ever seen.
    fn read64(&mut self, offset: usize) -> u64 {
        u64::from(self.read32(offset)) | (u64::from(self.read32(offset + 4)) << 32)
    }

    fn write64(&mut self, offset: usize, value: u64) {
        self.write32(offset, value as u32);
        self.write32(offset + 4, (value >> 32) as u32);
    }
}

/// DMA memory from the host frame allocator. It remembers its allocations and
/// refuses to copy outside them, so a driver bug cannot reach other memory.
#[derive(Default)]
pub struct KernelDma {
    /// Physical start -> length in bytes.
    live: BTreeMap<u64, u64>,
}

impl KernelDma {
    fn inside(&self, phys: u64, len: usize) -> bool {
        self.live
            .range(..=phys)
            .next_back()
            .is_some_and(|(&start, &size)| {
                phys.checked_add(len as u64)
                    .is_some_and(|end| end <= start + size)
            })
    }
}

impl nvme::Dma for KernelDma {
    fn alloc(&mut self, pages: usize) -> Option<u64> {
        let size = pages as u64 * PAGE_SIZE;
        let pa = memory::alloc_zeroed(size, PAGE_SIZE).ok()?;
        self.live.insert(pa, size);
        Some(pa)
    }

    fn free(&mut self, phys: u64, pages: usize) {
        if let Some(size) = self.live.remove(&phys) {
            debug_assert_eq!(size, pages as u64 * PAGE_SIZE);
            memory::free(phys, size);
        }
    }

    fn read(&mut self, phys: u64, buf: &mut [u8]) {
        if !self.inside(phys, buf.len()) {
            buf.fill(0);
            return;
        }
        compiler_fence(Ordering::SeqCst);
        // SAFETY: inside one of our allocations (checked), RAM reached through the
        // physical mapping; the device may write it concurrently only in places the
        // driver does not read until a completion says the transfer is done.
        unsafe {
            core::ptr::copy_nonoverlapping(memory::phys_to_virt(phys), buf.as_mut_ptr(), buf.len())
        };
    }

    fn write(&mut self, phys: u64, data: &[u8]) {
        if !self.inside(phys, data.len()) {
            return;
        }
        // SAFETY: as in `read`; the device reads these bytes only after the doorbell
        // write that follows (the fence keeps the compiler from moving the copy past
        // it; x86 keeps stores in order).
        unsafe {
            core::ptr::copy_nonoverlapping(data.as_ptr(), memory::phys_to_virt(phys), data.len())
        };
        compiler_fence(Ordering::SeqCst);
    }

    fn read_u32(&mut self, phys: u64) -> u32 {
        if !phys.is_multiple_of(4) || !self.inside(phys, 4) {
            return 0;
        }
        // SAFETY: an aligned dword inside our allocation; volatile, because the
        // device writes it behind the compiler's back.
        unsafe { (memory::phys_to_virt(phys) as *const u32).read_volatile() }
    }
}
