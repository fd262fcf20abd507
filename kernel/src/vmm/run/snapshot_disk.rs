//! The snapshot area on the machine's disk (the GPT partition
//! `snapshot::area::PARTITION`, layout in `snapshot::area`): snapshots written
//! there survive a restart of the hypervisor. Each one's RAM is written with its
//! SHA-256 in the index and checked when it is read back; the packed state has its
//! own checksum. An area whose index does not pass its checks is reported and not
//! used (never overwritten on a guess).

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use sha2::{Digest, Sha256};
use snapshot::area::{Entry, Index, INDEX_SECTORS, PARTITION, SECTOR};
use spin::Mutex;
use virtio::{BlockBackend, Partition};

use super::LAST_HOUSEKEEPING;
use crate::host_disk::HostDisk;
use crate::vmm::persistent;
use crate::vmm::vm_disk::find_partition;
use crate::{memory, println, time};

/// Bytes moved per disk request (the NVMe driver splits further as it must).
const CHUNK: usize = 1 << 20;

/// An open snapshot area.
pub(in crate::vmm) struct Area {
    part: Partition<HostDisk>,
    sectors: u64,
    pub index: Index,
}

/// Opens the snapshot area if the machine's disk has one; says so either way it
/// matters (a machine without a disk or without the partition has none, silently).
pub(in crate::vmm) fn open() -> Option<Area> {
    let disk: Arc<Mutex<HostDisk>> = persistent::host_disk()?;
    let lbas = find_partition(&mut *disk.lock(), PARTITION).ok()?;
    let sectors = lbas.end - lbas.start;
    let Some(part) = Partition::new(disk, lbas.start, sectors) else {
        println!("hv: snapshot area: partition \"{PARTITION}\" lies outside the disk; not used");
        return None;
    };
    let mut area = Area {
        part,
        sectors,
        index: Index::default(),
    };
    let mut bytes = alloc::vec![0u8; (INDEX_SECTORS * SECTOR) as usize];
    if let Err(e) = area.part.read(0, &mut bytes) {
        println!("hv: snapshot area: reading its index failed: {e:?}; not used");
        return None;
    }
    match Index::parse(&bytes, sectors) {
        Ok(index) => {
            area.index = index;
            println!(
                "hv: snapshot area: partition \"{PARTITION}\", {} MiB, {} snapshot(s)",
                (sectors * SECTOR) >> 20,
                area.index.entries.len()
            );
            Some(area)
        }
        Err(e) => {
            println!("hv: snapshot area: partition \"{PARTITION}\": {e}; not used");
            None
        }
    }
}

/// A slice of page frames (a VM's RAM or a snapshot's copy of it).
///
/// # Safety
/// `pa..pa + len` must be frames the caller owns for the slice's lifetime.
unsafe fn frames<'a>(pa: u64, len: u64) -> &'a mut [u8] {
    // SAFETY: upheld by the caller; frames are reached through the physical map.
    unsafe { core::slice::from_raw_parts_mut(memory::phys_to_virt(pa), len as usize) }
}

impl Area {
    fn write_index(&mut self) -> Result<(), String> {
        let bytes = self.index.to_bytes();
        self.part
            .write(0, &bytes)
            .and_then(|()| self.part.flush())
            .map_err(|e| format!("writing the snapshot area's index failed: {e:?}"))
    }

    /// Writes a snapshot: its packed `state` and the RAM in `ram_pa..+ram_len`
    /// (frames the caller owns), then the index naming it.
    pub fn save(
        &mut self,
        vm: &str,
        tag: &str,
        state: &[u8],
        ram_pa: u64,
        ram_len: u64,
    ) -> Result<(), String> {
        if !Index::names_fit(vm, tag) {
            return Err(String::from(
                "its name or tag does not fit the area's index",
            ));
        }
        if self.index.find(vm, tag).is_some() {
            return Err(format!(
                "the area holds a snapshot {tag:?} of VM {vm} already"
            ));
        }
        let state_sectors = (state.len() as u64).div_ceil(SECTOR);
        let need = state_sectors + ram_len.div_ceil(SECTOR);
        let start = self.index.place(need, self.sectors).ok_or_else(|| {
            format!(
                "no room in the snapshot area ({} MiB needed, {} snapshot(s) there)",
                (need * SECTOR).div_ceil(1 << 20),
                self.index.entries.len()
            )
        })?;
        let io = |e| format!("writing to the snapshot area failed: {e:?}");
        let mut padded = state.to_vec();
        padded.resize((state_sectors * SECTOR) as usize, 0);
        self.part.write(start, &padded).map_err(io)?;
        // SAFETY: the caller owns the frames while this runs.
        let ram = unsafe { frames(ram_pa, ram_len) };
        let mut sha = Sha256::new();
        let ram_start = start + state_sectors;
        for (i, piece) in ram.chunks(CHUNK).enumerate() {
            sha.update(piece);
            self.part
                .write(ram_start + (i * CHUNK) as u64 / SECTOR, piece)
                .map_err(io)?;
            LAST_HOUSEKEEPING.store(time::rdtsc(), core::sync::atomic::Ordering::Relaxed);
        }
        self.part.flush().map_err(io)?;
        self.index.entries.push(Entry {
            vm: vm.into(),
            tag: tag.into(),
            start,
            state_len: state.len() as u64,
            ram_len,
            ram_sha256: sha.finalize().into(),
        });
        self.write_index()
    }

    /// Reads a snapshot's packed state (checked by the caller, `snapshot::read`).
    pub fn read_state(&mut self, e: &Entry) -> Result<Vec<u8>, String> {
        // At most `snapshot::area::STATE_MAX` (the index's check), and taken
        // without panicking when the heap has less.
        let len = (e.state_len.div_ceil(SECTOR) * SECTOR) as usize;
        let mut buf = Vec::new();
        buf.try_reserve_exact(len)
            .map_err(|_| format!("no heap for its {} KiB state", len / 1024))?;
        buf.resize(len, 0);
        self.part
            .read(e.start, &mut buf)
            .map_err(|err| format!("reading the snapshot area failed: {err:?}"))?;
        buf.truncate(e.state_len as usize);
        Ok(buf)
    }

    /// Reads a snapshot's RAM into `pa..+e.ram_len` (frames the caller owns) and
    /// checks it against the index's SHA-256.
    pub fn read_ram(&mut self, e: &Entry, pa: u64) -> Result<(), String> {
        // SAFETY: the caller owns the frames while this runs.
        let ram = unsafe { frames(pa, e.ram_len) };
        let mut sha = Sha256::new();
        for (i, piece) in ram.chunks_mut(CHUNK).enumerate() {
            self.part
                .read(e.ram_start() + (i * CHUNK) as u64 / SECTOR, piece)
                .map_err(|err| format!("reading the snapshot area failed: {err:?}"))?;
            sha.update(&*piece);
            LAST_HOUSEKEEPING.store(time::rdtsc(), core::sync::atomic::Ordering::Relaxed);
        }
        if sha.finalize()[..] != e.ram_sha256 {
            return Err(String::from(
                "the snapshot's RAM on the disk is corrupted (SHA-256 mismatch)",
            ));
        }
        Ok(())
    }

    /// Forgets a snapshot (its sectors become free).
    pub fn delete(&mut self, vm: &str, tag: &str) -> Result<bool, String> {
        if !self.index.remove(vm, tag) {
            return Ok(false);
        }
        self.write_index().map(|()| true)
    }
}
