//! The machine's own Ethernet controller for the virtual switch's uplink: the first
//! Intel 8254x/82574 function on the host's PCI buses that the `e1000` crate knows
//! (QEMU `-device e1000` or `e1000e`), brought up only when the configuration names
//! an uplink network.
//!
//! This module owns what the driver cannot do itself: finding the PCI function,
//! mapping BAR0 uncached ([`probe`], at boot on the boot processor, before the other
//! processors start, as `host_disk` does: the mapping changes page attributes they
//! share), enabling memory decoding and bus mastering, and DMA memory (the NVMe
//! disk's frame allocator, reused through `host_disk::KernelDma`). Moving frames
//! between the NIC and the switch is `vmm::uplink`'s.

use core::sync::atomic::{AtomicU32, Ordering};
use spin::Mutex;

use crate::{host_disk, memory, pci, time};

pub type HostNic = e1000::Nic<Bar, NicDma>;

/// A NIC found by [`probe`] and not yet brought up.
struct Found {
    function: pci::Function,
    model: e1000::Model,
    device_id: u16,
    bar: Bar,
}

static FOUND: Mutex<Option<Found>> = Mutex::new(None);
/// Whether [`probe`] found a NIC its BAR could not be mapped for (the reason is
/// told when an uplink asks for it).
static PROBE_ERROR: AtomicU32 = AtomicU32::new(0);

/// Registers and the first MTA/RAL block: everything the driver touches lies below
/// 0x5800 (8254x SDM §13, Table 13-2); the BAR is 128 KiB.
const MAPPED: u64 = 0x6000;

/// Finds the first supported NIC and maps its BAR0, touching nothing else (the
/// device stays as the firmware left it until [`bring_up`]). Boot processor, before
/// the other processors start.
pub fn probe() {
    let Some((function, model, device_id)) = pci::functions().find_map(|f| {
        let (vendor, device) = f.vendor_device();
        e1000::model_for(vendor, device).map(|m| (f, m, device))
    }) else {
        return;
    };
    let Some(bar) = function
        .memory_bar(0)
        .filter(|b| b.base != 0 && b.size >= MAPPED)
    else {
        PROBE_ERROR.store(1, Ordering::Relaxed);
        return;
    };
    match memory::map_mmio(bar.base, MAPPED) {
        Ok(va) => {
            *FOUND.lock() = Some(Found {
                function,
                model,
                device_id,
                bar: Bar {
                    base: va as u64,
                    len: MAPPED as usize,
                },
            })
        }
        Err(_) => PROBE_ERROR.store(2, Ordering::Relaxed),
    }
}

/// Brings up the NIC [`probe`] found: its PCI location and device id, and the
/// running driver; or why not.
pub fn bring_up() -> Result<(pci::Function, u16, HostNic), alloc::string::String> {
    use alloc::format;
    let Some(found) = FOUND.lock().take() else {
        return Err(match PROBE_ERROR.load(Ordering::Relaxed) {
            1 => "the Intel NIC's BAR0 is unassigned or too small".into(),
            2 => "the Intel NIC's BAR0 could not be mapped".into(),
            _ => "no Intel e1000/e1000e NIC (8086:100e, 100f, 1010, 1026, 10d3) on the PCI buses"
                .into(),
        });
    };
    let f = found.function;
    // Memory decoding and bus mastering on (the NIC DMAs into our rings), INTx off:
    // the run loop polls.
    f.set_command(
        f.command() | pci::COMMAND_MEMORY | pci::COMMAND_BUS_MASTER | pci::COMMAND_INTX_DISABLE,
    );
    let nic = e1000::Nic::new(
        found.bar,
        NicDma(host_disk::KernelDma::default()),
        &mut Clock,
        found.model,
    )
    .map_err(|e| format!("{f}: bring-up failed: {e}"))?;
    Ok((f, found.device_id, nic))
}

/// BAR0 through its uncached mapping; an access outside it reads all ones and
/// writes nothing (the driver then sees a dead device).
pub struct Bar {
    base: u64,
    len: usize,
}

impl e1000::Registers for Bar {
    fn read32(&mut self, offset: usize) -> u32 {
        if !offset.is_multiple_of(4) || offset + 4 > self.len {
            return u32::MAX;
        }
        // SAFETY: inside the BAR's uncached mapping (checked), 4-byte aligned: one
        // 32-bit MMIO read.
        unsafe { ((self.base + offset as u64) as *const u32).read_volatile() }
    }

    fn write32(&mut self, offset: usize, value: u32) {
        if !offset.is_multiple_of(4) || offset + 4 > self.len {
            return;
        }
        // SAFETY: as in `read32`; the driver writes registers the 8254x manual
        // defines.
        unsafe { ((self.base + offset as u64) as *mut u32).write_volatile(value) }
    }
}

/// The NVMe driver's DMA allocator (frames of the host allocator, every access
/// checked against the live allocations), under the e1000 driver's trait.
pub struct NicDma(host_disk::KernelDma);

impl e1000::Dma for NicDma {
    fn alloc(&mut self, pages: usize) -> Option<u64> {
        nvme::Dma::alloc(&mut self.0, pages)
    }
    fn free(&mut self, phys: u64, pages: usize) {
        nvme::Dma::free(&mut self.0, phys, pages)
    }
    fn read(&mut self, phys: u64, buf: &mut [u8]) {
        nvme::Dma::read(&mut self.0, phys, buf)
    }
    fn write(&mut self, phys: u64, data: &[u8]) {
        nvme::Dma::write(&mut self.0, phys, data)
    }
    fn read_u32(&mut self, phys: u64) -> u32 {
        nvme::Dma::read_u32(&mut self.0, phys)
    }
}

/// Uptime from the calibrated TSC, for the bring-up's time limits.
pub struct Clock;

impl e1000::Clock for Clock {
    fn now_us(&mut self) -> u64 {
        time::uptime_micros()
    }
    fn relax(&mut self) {
        core::hint::spin_loop();
    }
}
