//! What the guests that drive a virtio device with the `virtio-drivers` crate
//! (`blk64`, `net64`, `udpecho64`) give it: PCI configuration access through
//! mechanism #1 ([`PortCam`]), DMA memory ([`BumpHal`]: a bump allocator over a
//! static buffer; the guests run identity-mapped, so physical = virtual), and
//! the device's transport found on bus 0 ([`open`]).

use core::cell::UnsafeCell;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use virtio_drivers::transport::pci::bus::{Command, ConfigurationAccess, DeviceFunction, PciRoot};
use virtio_drivers::transport::pci::{virtio_device_type, PciTransport};
use virtio_drivers::transport::DeviceType;
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

use crate::cpu::{inl, outl};

/// Configuration mechanism #1: CONFADD at 0xCF8, CONFDATA at 0xCFC.
pub struct PortCam;

impl PortCam {
    fn select(df: DeviceFunction, register: u8) {
        let address = 0x8000_0000
            | u32::from(df.bus) << 16
            | u32::from(df.device) << 11
            | u32::from(df.function) << 8
            | u32::from(register & 0xFC);
        // SAFETY: the PCI configuration address port; this guest is the only
        // user of it (one vCPU).
        unsafe { outl(0xCF8, address) };
    }
}

impl ConfigurationAccess for PortCam {
    fn read_word(&self, df: DeviceFunction, register: u8) -> u32 {
        Self::select(df, register);
        // SAFETY: the configuration data port, after the address above.
        unsafe { inl(0xCFC) }
    }
    fn write_word(&mut self, df: DeviceFunction, register: u8, data: u32) {
        Self::select(df, register);
        // SAFETY: as above.
        unsafe { outl(0xCFC, data) };
    }
    unsafe fn unsafe_clone(&self) -> Self {
        PortCam
    }
}

/// DMA memory: a bump allocator over a static buffer, never freed (the guest
/// sets up one device once). Physical = virtual: the guest is identity-mapped.
const DMA_PAGES: usize = 16;

#[repr(C, align(4096))]
struct DmaArea(UnsafeCell<[u8; DMA_PAGES * PAGE_SIZE]>);
// SAFETY: handed out in disjoint page ranges (the atomic bump below).
unsafe impl Sync for DmaArea {}

static DMA: DmaArea = DmaArea(UnsafeCell::new([0; DMA_PAGES * PAGE_SIZE]));
static DMA_NEXT: AtomicUsize = AtomicUsize::new(0);

pub struct BumpHal;

// SAFETY: dma_alloc returns zeroed (.bss, never reused), page-aligned, disjoint
// pages whose physical address is their virtual address (identity map); MMIO
// and shared buffers are identity-mapped too.
unsafe impl Hal for BumpHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let len = pages * PAGE_SIZE;
        let start = DMA_NEXT.fetch_add(len, Ordering::Relaxed);
        if start + len > DMA_PAGES * PAGE_SIZE {
            // Physical address 0 tells virtio-drivers the allocation failed.
            return (0, NonNull::dangling());
        }
        let p = (DMA.0.get() as *mut u8).wrapping_add(start);
        (p as PhysAddr, NonNull::new(p).expect("static buffer"))
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, _vaddr: NonNull<u8>, _pages: usize) -> i32 {
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).expect("a BAR at physical 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr() as *mut u8 as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

/// The first virtio function of type `kind` on PCI bus 0, with memory space and
/// bus mastering enabled, and its transport; `missing` when there is none.
pub fn open(
    kind: DeviceType,
    missing: &'static str,
) -> Result<(DeviceFunction, PciTransport), &'static str> {
    let mut root = PciRoot::new(PortCam);
    let df = root
        .enumerate_bus(0)
        .find(|(_, info)| virtio_device_type(info) == Some(kind))
        .map(|(df, _)| df)
        .ok_or(missing)?;
    root.set_command(df, Command::MEMORY_SPACE | Command::BUS_MASTER);
    let transport = PciTransport::new::<BumpHal, _>(&mut root, df)
        .map_err(|_| "the PCI transport refused the function")?;
    Ok((df, transport))
}
