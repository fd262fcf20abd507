//! virtio 1.x devices for the hypervisor's guests, as plain state machines: no
//! hardware access, no globals, `no_std` with `alloc`, every rule unit-tested on the
//! host.
//!
//! * [`memory`]: [`GuestMemory`], the checked guest-physical accessors every ring
//!   and buffer access goes through, and [`VecMemory`] for tests.
//! * [`queue`]: split virtqueues (virtio 1.2 §2.7): [`SplitQueue`] takes descriptor
//!   chains ([`Chain`]) and returns them used; everything a hostile driver can do
//!   wrong is a [`QueueError`].
//! * [`pci`]: the modern virtio-pci transport (§4.1): [`VirtioPci`] is a
//!   [`devices::PciFunction`] with the configuration space, the one memory BAR, the
//!   feature/status rules, MSI-X and INTx.
//! * [`blk`]: virtio-blk (§5.2): [`Block`] on a [`BlockBackend`] ([`RamDisk`]).
//! * [`partition`]: [`Partition`], a disk that is a window of sectors onto a
//!   device shared by several VMs (a GPT partition of the hypervisor's NVMe drive).
//! * [`net`]: virtio-net (§5.1): [`Net`], one receive/transmit queue pair whose
//!   frames the owner exchanges with a switch; receive is device-initiated
//!   ([`VirtioPci::deliver`], [`VirtioPci::device_work`]).
//! * [`balloon`]: virtio-balloon (§5.5): [`Balloon`] on a [`BalloonBackend`] that
//!   takes and gives back guest pages, with a bitmap of ballooned pages, the
//!   guest's memory statistics and a host-set target
//!   ([`VirtioPci::set_target_pages`], a configuration change notification).
//! * [`state`]: the versioned snapshot format of [`VirtioPci::state`] and
//!   [`VirtioPci::restore`].
//!
//! # Wiring a disk into a VM
//!
//! The PCI root is `devices::PciConfig` (configuration mechanism #1 at 0xCF8, already
//! on every VM's port bus). The platform builds it with a host bridge and the disk,
//! places the BARs as firmware would, and registers the root on the MMIO bus over
//! the PCI hole as well:
//!
//! ```
//! use devices::{BarAllocator, HostBridge, PciAddress, PciConfig};
//! use virtio::{Block, BlockConfig, RamDisk, VecMemory, VirtioPci};
//!
//! // The kernel passes its GuestMemory for the VM's RAM instead of a VecMemory.
//! let disk = Block::new(RamDisk::zeroed(2048), BlockConfig::new("hv-disk-0"));
//! let mut pci = PciConfig::new();
//! pci.add_function(PciAddress::new(0, 0, 0), Box::new(HostBridge::i440fx())).unwrap();
//! pci.add_function(
//!     PciAddress::new(0, 1, 0),
//!     Box::new(VirtioPci::new(disk, VecMemory::new(16 << 20))),
//! )
//! .unwrap();
//! // The hole: above the VM's RAM, below the IOAPIC.
//! pci.assign_bars(&mut BarAllocator::new(0xE000_0000, 0xFEC0_0000)).unwrap();
//! let irq = pci.intx_irq(PciAddress::new(0, 1, 0)); // for the MP table's entry
//! assert_eq!(irq, Some(11));
//! ```
//!
//! Then, in the platform (`kernel/src/vmm/platform.rs`):
//!
//! * **Configuration-space access** (port I/O at 0xCF8-0xCFF): unchanged, the root is
//!   the `BusDevice` registered there; it answers the host bridge and the disk and
//!   all ones for every absent function, and keeps the 0xCF9 reset register.
//! * **BAR access** (a nested page fault in the PCI hole, decoded like the IOAPIC's
//!   MMIO): register the *same* root on the MMIO bus over the hole
//!   (`Bus::register(hole_start, hole_len, Target::Device(root_index))`; today
//!   `add_mmio_device` pushes a new device, so it needs a variant that reuses an
//!   index). The root tells MMIO from port accesses by `Access::addr` and routes to
//!   the BAR the guest programmed, wherever it moved it; an address no BAR decodes
//!   reads all ones.
//! * **Queue notification**: a write to the notification area of the BAR. It is an
//!   ordinary BAR write and is processed synchronously inside it: the device takes
//!   the chains, does the I/O against its backend and fills the used ring before the
//!   write returns. A platform with a faster exit path for these writes may call
//!   [`VirtioPci::notify`] (via `function_mut(..).as_any_mut().downcast_mut()`)
//!   instead. One call handles at most a queue's worth of chains; the rest is done
//!   by `BusDevice::poll`, which `next_deadline_ns() == Some(0)` asks for.
//! * **Interrupt results** come back in the `Effects` of every access and poll:
//!   - `Effects::lines`: `IrqLine::Level(irq, level)` for INTx (PIRQA-D routed to
//!     ISA IRQs 10/11 by default, `PciConfig::set_intx_routing`): apply them to the
//!     PIC and IOAPIC as every other line. The IOAPIC pin must be level-triggered,
//!     active high for these IRQs, and the MP table needs an I/O interrupt entry
//!     for bus PCI, device 1 INTA# (Linux booted with `acpi=off` reads it from
//!     there, which `devices::mptable` writes from `PlatformConfig::pci_intx`).
//!   - `Effects::msi`: `MsiMessage { address, data }` for MSI-X. Decode it as the
//!     IOAPIC's redirection entries are decoded (address bits 19:12 destination
//!     APIC ID, bit 2 logical mode; data bits 7:0 vector, 10:8 delivery mode, SDM
//!     Vol. 3A 11.11) and hand it to the local APICs like an IOAPIC `Delivery`. The
//!     kernel's `Platform::apply` ignores this field today.
//!
//! The `GuestMemory` the kernel passes must copy to and from the VM's RAM with
//! volatile (or atomic) accesses, never through a Rust reference to RAM that the
//! guest's vCPUs write at the same time; the queue code places the fences virtio's
//! ordering rules need. Snapshots ([`VirtioPci::state`]) leave out RAM and the disk.
#![no_std]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod balloon;
pub mod blk;
pub mod cow;
pub mod device;
pub mod memory;
pub mod net;
pub mod partition;
pub mod pci;
pub mod queue;
pub mod state;

pub use balloon::{
    BackendError, Balloon, BalloonBackend, BalloonConfig, BalloonCounters, CountingBackend,
    GuestMemStats, TargetError,
};
pub use blk::{Block, BlockBackend, BlockConfig, BlockError, RamDisk, SECTOR_SIZE};
pub use device::VirtioDevice;
pub use memory::{GuestMemory, MemError, VecMemory};
pub use net::{mac_from_name, Net, NetConfig, NetStats};
pub use partition::Partition;
pub use pci::{VirtioPci, NO_VECTOR};
pub use queue::{Chain, QueueError, QueueFeatures, Segment, SplitQueue, MAX_QUEUE_SIZE};
pub use state::{StateError, STATE_VERSION};
