//! An NVMe host driver: the hypervisor drives a real disk itself (QEMU `-device nvme`,
//! NVMe SSDs on real machines) through this crate.
//!
//! The crate is pure logic over three small traits the kernel implements:
//! [`Registers`] (the controller's BAR0), [`Dma`] (physically contiguous memory the
//! controller reads and writes) and [`Clock`] (every wait has a time limit). It holds
//! no `unsafe`: memory the controller sees is only reached through [`Dma`]'s
//! accessors, so the host tests run it against a model controller (`tests/`).
//!
//! What it does (NVMe Base Specification 1.4, cited as "NVMe 1.4 §x"): controller
//! bring-up ([`Controller::new`], §7.6.1), Identify Controller and Identify Namespace 1,
//! one polled I/O queue pair, and Read, Write and Flush with PRPs through driver-owned
//! bounce pages ([`Controller::read`] and friends, in 512-byte sectors: [`disk`]).

#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

mod command;
mod controller;
pub mod disk;
mod error;
pub mod identify;
mod queue;
pub mod regs;

pub use controller::{Controller, Info, ADMIN_QUEUE_ENTRIES, IO_QUEUE_ENTRIES, MAX_BOUNCE_BYTES};
pub use error::Error;

/// The page size the driver programs (CC.MPS = 0: 4 KiB, NVMe 1.4 §3.1.5) and the unit
/// of every DMA allocation.
pub const PAGE_SIZE: usize = 4096;

/// Access to the controller's registers in BAR0 (NVMe 1.4 §3.1), byte offsets from
/// the start of the BAR. The implementation must make each call one access of that
/// width to the device (uncached MMIO), in program order.
pub trait Registers {
    fn read32(&mut self, offset: usize) -> u32;
    fn write32(&mut self, offset: usize, value: u32);
    fn read64(&mut self, offset: usize) -> u64;
    fn write64(&mut self, offset: usize, value: u64);
}

/// Memory the controller reaches by DMA: zeroed, page-aligned, physically contiguous
/// buffers named by their physical address.
///
/// Ordering contract: every `write` is visible to the device before any later
/// register write (a doorbell), and a `read_u32`/`read` returns what the device
/// wrote, not a stale copy (on x86 with write-back RAM and uncached MMIO a compiler
/// fence around the copies is enough; the bus keeps DMA coherent).
pub trait Dma {
    /// `pages` zeroed, 4 KiB-aligned, physically contiguous 4 KiB pages; returns the
    /// physical address of the first, or `None` when memory is exhausted.
    fn alloc(&mut self, pages: usize) -> Option<u64>;
    /// Gives back an allocation made by [`Dma::alloc`] with the same `pages`.
    fn free(&mut self, phys: u64, pages: usize);
    /// Copies `buf.len()` bytes out of DMA memory at `phys` (inside one allocation).
    fn read(&mut self, phys: u64, buf: &mut [u8]);
    /// Copies `data` into DMA memory at `phys` (inside one allocation).
    fn write(&mut self, phys: u64, data: &[u8]);
    /// One volatile 32-bit read at `phys` (4-byte aligned): polls a completion
    /// entry's phase tag, which the device writes behind the CPU's back.
    fn read_u32(&mut self, phys: u64) -> u32;
}

/// A monotonic clock for the driver's time limits.
pub trait Clock {
    /// Microseconds since any fixed point.
    fn now_us(&mut self) -> u64;
    /// Called in every polling loop: a place to pause the processor (`PAUSE`).
    fn relax(&mut self) {}
}
