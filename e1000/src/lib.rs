//! A host driver for Intel's 8254x gigabit Ethernet controllers (QEMU `-device
//! e1000`, the 82540EM) and the 82574 (QEMU `-device e1000e`): the hypervisor's
//! uplink to the machine's own network.
//!
//! Pure logic over three small traits the kernel implements — [`Registers`] (BAR0,
//! uncached MMIO), [`Dma`] (physically contiguous memory the device reads and
//! writes) and [`Clock`] (every wait is bounded) — and no `unsafe`, so the host
//! tests run it against a model of the device (`tests/`).
//!
//! What it does (Intel 8254x Software Developer's Manual, 317453, "8254x SDM §x"):
//! - bring-up ([`Nic::new`]): device reset (§13.4.1), interrupts masked (polled
//!   operation: the hypervisor moves frames from its run loop), the MAC from Receive
//!   Address 0 (loaded from the EEPROM at reset, §13.5.2) or else from EEPROM words
//!   0-2 through EERD (§13.4.4, §5.6.1), link up through CTRL.SLU with auto-speed
//!   detection (§14.3), the multicast table cleared;
//! - one legacy receive ring ([`RX_ENTRIES`] descriptors of [`BUFFER_BYTES`],
//!   §3.2, initialised as §14.4 says) and one legacy transmit ring ([`TX_ENTRIES`],
//!   §3.3-3.4, §14.5), each with driver-owned buffers: frames are copied in and out,
//!   so no caller memory is ever handed to the device;
//! - bounded work per call: [`Nic::receive`] takes at most its budget of frames,
//!   [`Nic::transmit`] queues one frame or says the ring is full. Nothing waits for
//!   the device after bring-up; a device that never completes a descriptor fills
//!   the transmit ring and gets [`TxError::RingFull`], never a hang.
//!
//! What the device writes back is not trusted either: a receive length beyond the
//! buffer, a frame spread over several descriptors (which cannot happen with
//! 2 KiB buffers and long packets off) and a descriptor with error bits are
//! dropped and counted ([`Stats`]).

#![no_std]
#![forbid(unsafe_code)]

mod desc;
mod nic;
pub mod regs;

pub use nic::{
    Error, Model, Nic, Stats, TxError, BUFFER_BYTES, MAX_FRAME, MIN_FRAME, RX_ENTRIES, TX_ENTRIES,
};

/// The unit of every DMA allocation.
pub const PAGE_SIZE: usize = 4096;

/// Intel's PCI vendor id.
pub const VENDOR_INTEL: u16 = 0x8086;

/// Access to the controller's registers in BAR0 (8254x SDM §13), byte offsets from
/// the start of the BAR. Each call must be one 32-bit access to the device
/// (uncached MMIO), in program order.
pub trait Registers {
    fn read32(&mut self, offset: usize) -> u32;
    fn write32(&mut self, offset: usize, value: u32);
}

/// Memory the controller reaches by DMA: zeroed, page-aligned, physically contiguous
/// buffers named by their physical address.
///
/// Ordering contract: every `write` is visible to the device before any later
/// register write (a tail update), and `read`/`read_u32` return what the device
/// wrote, not a stale copy.
pub trait Dma {
    /// `pages` zeroed, 4 KiB-aligned, physically contiguous pages; the physical
    /// address of the first, or `None` when memory is exhausted.
    fn alloc(&mut self, pages: usize) -> Option<u64>;
    /// Gives back an allocation made by [`Dma::alloc`] with the same `pages`.
    fn free(&mut self, phys: u64, pages: usize);
    /// Copies `buf.len()` bytes out of DMA memory at `phys`.
    fn read(&mut self, phys: u64, buf: &mut [u8]);
    /// Copies `data` into DMA memory at `phys`.
    fn write(&mut self, phys: u64, data: &[u8]);
    /// One volatile 32-bit read at `phys` (4-byte aligned): a descriptor's status,
    /// which the device writes behind the processor's back.
    fn read_u32(&mut self, phys: u64) -> u32;
}

/// A monotonic clock for the bring-up's time limits.
pub trait Clock {
    /// Microseconds since any fixed point.
    fn now_us(&mut self) -> u64;
    /// Called in every polling loop: a place to pause the processor.
    fn relax(&mut self) {}
}

/// The controller model behind a PCI vendor/device id, for the ids this driver
/// knows (QEMU's two and their close relatives): `None` for anything else.
pub fn model_for(vendor: u16, device: u16) -> Option<Model> {
    if vendor != VENDOR_INTEL {
        return None;
    }
    match device {
        // 82540EM (QEMU e1000), 82545EM copper, 82546EB copper, 82545GM copper.
        0x100E | 0x100F | 0x1010 | 0x1026 => Some(Model::I8254x),
        // 82574L (QEMU e1000e).
        0x10D3 => Some(Model::I82574),
        _ => None,
    }
}
