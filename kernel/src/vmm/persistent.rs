//! The kernel side of VM disks on the host disk ([`super::vm_disk`] holds the
//! logic): the shared device (the NVMe or ATA disk behind `host_disk`), the machine-wide
//! record of which VM holds which partition, and unlocking with what the machine
//! has: the passphrase packed from a key file, or one typed on the serial console,
//! and Argon2's working memory from page frames (19 MiB with the default
//! parameters, more than the kernel heap should give).

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use spin::{Mutex, Once};

use super::vm_disk::{open_partition, Claims, Opened, Unlocker};
use crate::host_disk::HostDisk;
use crate::{memory, serial};

/// How long the console waits for a typed passphrase.
const PASSPHRASE_TIMEOUT_MS: u64 = 120_000;

static DEVICE: Once<Option<Arc<Mutex<HostDisk>>>> = Once::new();
static CLAIMS: Mutex<Claims> = Mutex::new(Claims::new());

/// The machine's disk (NVMe or ATA), shared by every user of it (VM disks, the snapshot
/// area), if it has one.
pub fn host_disk() -> Option<Arc<Mutex<HostDisk>>> {
    DEVICE
        .call_once(|| HostDisk::get().map(|d| Arc::new(Mutex::new(d))))
        .clone()
}

/// Partitions opened, by VM and partition name: a VM stopped and started again
/// gets the same disk (its snapshots' records of what was written since go on
/// applying, and an encrypted one is not unlocked again), unless another VM opened
/// the partition in between.
static OPENED: Mutex<Vec<(String, String, Opened)>> = Mutex::new(Vec::new());

/// Opens `vm`'s partition disk `spec` (see [`open_partition`]), or gives it the
/// disk it had before.
pub fn open(vm: &str, spec: &bundle::PartitionDisk) -> Result<Opened, String> {
    let earlier = OPENED
        .lock()
        .iter()
        .find(|(v, p, _)| v == vm && p == spec.name)
        .map(|(_, _, o)| o.clone());
    if let Some(o) = earlier {
        CLAIMS
            .lock()
            .claim(vm, o.sectors.clone(), !spec.read_only)?;
        return Ok(o);
    }
    let opened = open_fresh(vm, spec)?;
    let mut all = OPENED.lock();
    all.retain(|(v, p, _)| !(p == spec.name && v != vm));
    all.push((vm.into(), spec.name.into(), opened.clone()));
    Ok(opened)
}

fn open_fresh(vm: &str, spec: &bundle::PartitionDisk) -> Result<Opened, String> {
    let device = DEVICE
        .call_once(|| HostDisk::get().map(|d| Arc::new(Mutex::new(d))))
        .as_ref()
        .ok_or_else(|| {
            format!(
                "its disk is partition \"{}\" of the machine's disk, but the hypervisor has no \
                 disk of its own (see the boot log's nvme and ata lines)",
                spec.name
            )
        })?;
    let mut unlocker = KernelUnlocker { key: spec.key };
    open_partition(device, vm, spec, &mut CLAIMS.lock(), &mut unlocker)
}

/// Forgets `vm`'s partition (it stopped for good): another VM may take it.
pub fn release(vm: &str) {
    CLAIMS.lock().release(vm);
}

struct KernelUnlocker<'a> {
    /// The packed passphrase (empty: ask on the console).
    key: &'a [u8],
}

impl Unlocker for KernelUnlocker<'_> {
    fn passphrase(&mut self, vm: &str, partition: &str) -> Result<Vec<u8>, String> {
        if !self.key.is_empty() {
            return Ok(self.key.to_vec());
        }
        let typed = serial::read_secret(
            format_args!("hv: passphrase for the encrypted disk \"{partition}\" of VM {vm}: "),
            PASSPHRASE_TIMEOUT_MS,
        )
        .map_err(|e| match e {
            serial::SecretError::Timeout => format!(
                "no passphrase typed within {} s for its encrypted disk",
                PASSPHRASE_TIMEOUT_MS / 1000
            ),
            serial::SecretError::Cancelled => String::from("the passphrase prompt was cancelled"),
            serial::SecretError::TooLong => String::from("the typed passphrase is too long"),
        })?;
        if typed.is_empty() {
            return Err(String::from("an empty passphrase was typed"));
        }
        Ok(typed)
    }

    fn cipher(&self, key: &diskcrypt::MasterKey) -> diskcrypt::SectorCipher {
        crate::aesni::sector_cipher(key)
    }

    fn unlock(
        &mut self,
        header: &diskcrypt::Header,
        passphrase: &[u8],
    ) -> Result<diskcrypt::MasterKey, String> {
        let blocks = header.kdf.memory_blocks().map_err(|e| format!("{e}"))?;
        let bytes = (blocks * core::mem::size_of::<diskcrypt::KdfBlock>()) as u64;
        let pa = memory::alloc_zeroed(bytes, 4096).map_err(|e| {
            format!(
                "cannot take {} KiB for Argon2id to unlock its disk: {e:?}",
                bytes / 1024
            )
        })?;
        // SAFETY: `alloc_zeroed` gave `bytes` bytes of page-aligned RAM that nothing
        // else uses until `free` below; all zeros is a valid `KdfBlock` (an array of
        // u64), and the page alignment exceeds its alignment.
        let memory_blocks = unsafe {
            core::slice::from_raw_parts_mut(
                memory::phys_to_virt(pa) as *mut diskcrypt::KdfBlock,
                blocks,
            )
        };
        let key = header.unlock(passphrase, memory_blocks);
        memory::free(pa, bytes);
        key.map_err(|e| format!("{e}"))
    }
}
