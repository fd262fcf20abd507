//! The hypervisor's own disk, one interface over two drivers: the first NVMe
//! controller on the host's PCI buses if there is one (`nvme_disk`), else the
//! first ATA disk on an IDE channel that carries the hypervisor's GPT (`ata_disk`:
//! Bochs has no NVMe, only IDE). Brought up once at boot and shared by every
//! processor behind one lock; VM partitions, the snapshot area and the guest bundle
//! reach it through [`with`] and [`HostDisk`] without knowing which it is.

mod ata_disk;
mod nvme_disk;

use core::fmt;
use core::sync::atomic::Ordering;
use spin::Mutex;

pub use nvme_disk::KernelDma;

use crate::{println, time};

/// The disk and its driver.
pub enum Disk {
    Nvme(nvme_disk::NvmeDisk),
    Ata(ata_disk::AtaDisk),
}

/// A driver's error, whichever driver.
#[derive(Debug)]
pub enum DiskError {
    Nvme(nvme::Error),
    Ata(ata::Error),
}

impl fmt::Display for DiskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiskError::Nvme(e) => write!(f, "{e}"),
            DiskError::Ata(e) => write!(f, "{e}"),
        }
    }
}

impl Disk {
    /// 512-byte sectors on the disk.
    pub fn sectors(&self) -> u64 {
        match self {
            Disk::Nvme(d) => d.sectors(),
            Disk::Ata(d) => d.sectors(),
        }
    }

    /// Reads `buf.len() / 512` sectors starting at sector `lba`.
    pub fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        match self {
            Disk::Nvme(d) => d.read(lba, buf).map_err(DiskError::Nvme),
            Disk::Ata(d) => d.read(lba, buf).map_err(DiskError::Ata),
        }
    }

    /// Writes `data.len() / 512` sectors starting at sector `lba`.
    pub fn write(&mut self, lba: u64, data: &[u8]) -> Result<(), DiskError> {
        match self {
            Disk::Nvme(d) => d.write(lba, data).map_err(DiskError::Nvme),
            Disk::Ata(d) => d.write(lba, data).map_err(DiskError::Ata),
        }
    }

    /// Commits the device's volatile write cache.
    pub fn flush(&mut self) -> Result<(), DiskError> {
        match self {
            Disk::Nvme(d) => d.flush().map_err(DiskError::Nvme),
            Disk::Ata(d) => d.flush().map_err(DiskError::Ata),
        }
    }

    /// What kind of disk it is, for log lines ("NVMe", "ATA").
    pub fn kind(&self) -> &'static str {
        match self {
            Disk::Nvme(_) => "NVMe",
            Disk::Ata(_) => "ATA",
        }
    }
}

static DISK: Mutex<Option<Disk>> = Mutex::new(None);

/// Runs `f` on the host disk, if there is one. Callable from any processor; callers
/// run with interrupts disabled (the hypervisor's normal state), so the spin lock is
/// never held by an interrupted holder on the same processor.
pub fn with<R>(f: impl FnOnce(&mut Disk) -> R) -> Option<R> {
    DISK.lock().as_mut().map(f)
}

/// Brings up the host disk and reports it: NVMe if the machine has a controller
/// that comes up, else an ATA disk with the hypervisor's GPT (or none: the
/// hypervisor carries on without a disk). Boot time, on the boot processor, before
/// the other processors start (the NVMe BAR mapping changes page attributes in the
/// shared page tables, and the IDE probe owns the channels' ports).
pub fn init() {
    let disk = match nvme_disk::init() {
        Some(d) => Some(Disk::Nvme(d)),
        None => ata_disk::init().map(Disk::Ata),
    };
    *DISK.lock() = disk;
}

/// Stops the disk cleanly: an NVMe controller gets its shutdown notification (NVMe
/// 1.4 §7.6.2), an ATA disk's write cache is flushed. Takes the lock only if it is
/// free: this runs on the way out, possibly from a panic on a processor that holds
/// it.
pub fn shutdown() {
    let Some(mut guard) = DISK.try_lock() else {
        println!("hv: host disk: WARNING: the disk is busy; stopping without shutting it down");
        return;
    };
    match guard.as_mut() {
        Some(Disk::Nvme(d)) => nvme_disk::shutdown(d),
        Some(Disk::Ata(d)) => ata_disk::shutdown(d),
        None => {}
    }
}

/// Uptime from the calibrated TSC, for both drivers' time limits.
pub struct TscClock;

impl nvme::Clock for TscClock {
    fn now_us(&mut self) -> u64 {
        time::uptime_micros()
    }

    fn relax(&mut self) {
        core::hint::spin_loop();
    }
}

impl ata::Clock for TscClock {
    fn now_us(&mut self) -> u64 {
        time::uptime_micros()
    }

    fn relax(&mut self) {
        core::hint::spin_loop();
    }
}

/// The host disk as the device VM partitions are windows onto
/// ([`virtio::Partition`]): every call takes the disk's lock for its own transfer.
/// A driver error is an I/O error for the guest's request (logged, the first few).
pub struct HostDisk {
    sectors: u64,
}

impl HostDisk {
    /// The disk, if the hypervisor has one.
    pub fn get() -> Option<Self> {
        with(|d| d.sectors()).map(|sectors| Self { sectors })
    }
}

fn io_error(what: &str, sector: u64, e: DiskError) -> virtio::BlockError {
    use core::sync::atomic::AtomicU32;
    static REPORTED: AtomicU32 = AtomicU32::new(0);
    if REPORTED.fetch_add(1, Ordering::Relaxed) < 8 {
        let driver = match e {
            DiskError::Nvme(_) => "nvme",
            DiskError::Ata(_) => "ata",
        };
        println!("hv: {driver}: WARNING: {what} at sector {sector} failed: {e}");
    }
    virtio::BlockError::Io
}

impl virtio::BlockBackend for HostDisk {
    fn sectors(&self) -> u64 {
        self.sectors
    }

    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), virtio::BlockError> {
        with(|d| d.read(sector, buf))
            .ok_or(virtio::BlockError::Io)?
            .map_err(|e| io_error("read", sector, e))
    }

    fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), virtio::BlockError> {
        with(|d| d.write(sector, data))
            .ok_or(virtio::BlockError::Io)?
            .map_err(|e| io_error("write", sector, e))
    }

    fn flush(&mut self) -> Result<(), virtio::BlockError> {
        with(|d| d.flush())
            .ok_or(virtio::BlockError::Io)?
            .map_err(|e| io_error("flush", 0, e))
    }
}
