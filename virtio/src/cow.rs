//! Disk state for snapshots and clones, without copying the disk.
//!
//! A VM's writable disk goes on being written after a snapshot, durably, as before:
//! the snapshot keeps the *old* contents of every 4 KiB block the VM overwrites
//! after it (copy-before-write, as an LVM snapshot does), in an [`Undo`] record.
//! * Restoring the snapshot writes those blocks back ([`Tracked::roll_back`]):
//!   the disk is as it was at the snapshot, and the record stays valid for another
//!   restore (the blocks it holds now equal the disk's).
//! * A clone of the snapshot sees the disk as it was then ([`CloneDisk`]): a block
//!   the record holds comes from there, any other from the live disk (unchanged
//!   since the snapshot, or the record would hold it); what the clone writes stays
//!   in its own blocks in memory (gone when it stops), so the source's disk and
//!   the clone's never mix.
//!
//! [`Tracked`] wraps the disk: each write first saves, into every live record
//! that does not have them yet, the old contents of the blocks it covers. A record
//! has a size limit; one that would outgrow it is marked overflowed and keeps
//! nothing more (restoring it is refused), and the VM's writes go on.
//!
//! Locking: the owner keeps a [`Tracked`] behind one lock and takes it for every
//! access, a clone's reads included, so a record is read and the disk behind it
//! under the same hold as a write that fills it.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use spin::Mutex;

use crate::blk::{BlockBackend, BlockError, SECTOR_SIZE};

/// The unit of copy-before-write.
pub const BLOCK: u64 = 4096;
const SECTORS_PER_BLOCK: u64 = BLOCK / SECTOR_SIZE;

/// One block's contents (the disk's last block may be partial: only its first
/// sectors are used).
type Block = Box<[u8; BLOCK as usize]>;

/// Memory all records and clone disks of an owner may take together (the
/// hypervisor's heap is small): each block is taken from it and given back when
/// its record or clone disk goes.
#[derive(Clone, Debug)]
pub struct Budget(Arc<AtomicU64>);

impl Budget {
    pub fn new(bytes: u64) -> Self {
        Self(Arc::new(AtomicU64::new(bytes)))
    }

    /// Bytes left.
    pub fn left(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn take_block(&self) -> bool {
        self.0
            .try_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(BLOCK)
            })
            .is_ok()
    }

    fn give(&self, blocks: usize) {
        self.0.fetch_add(blocks as u64 * BLOCK, Ordering::AcqRel);
    }
}

/// The old contents of the blocks written since a snapshot.
#[derive(Debug)]
pub struct Undo {
    blocks: BTreeMap<u64, Block>,
    limit_blocks: usize,
    overflowed: bool,
    budget: Budget,
}

impl Drop for Undo {
    fn drop(&mut self) {
        self.budget.give(self.blocks.len());
    }
}

impl Undo {
    /// A record that keeps at most `limit_bytes` (whole blocks) from `budget`.
    pub fn new(limit_bytes: u64, budget: Budget) -> Self {
        Self {
            blocks: BTreeMap::new(),
            limit_blocks: (limit_bytes / BLOCK) as usize,
            overflowed: false,
            budget,
        }
    }

    /// Drops every block: it can no longer roll anything back.
    fn overflow(&mut self) {
        self.overflowed = true;
        self.budget.give(self.blocks.len());
        self.blocks.clear();
    }

    /// Bytes it holds.
    pub fn bytes(&self) -> u64 {
        self.blocks.len() as u64 * BLOCK
    }

    /// It lost blocks to its limit: the disk cannot be rolled back with it.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    fn get(&self, block: u64) -> Option<&Block> {
        self.blocks.get(&block)
    }
}

/// A shared handle on a record.
pub type UndoRecord = Arc<Mutex<Undo>>;

/// A disk whose writes save old contents into the live records first.
pub struct Tracked<B> {
    inner: B,
    records: Vec<Weak<Mutex<Undo>>>,
}

impl<B: BlockBackend> Tracked<B> {
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            records: Vec::new(),
        }
    }

    /// Starts a record for a snapshot taken now, of at most `limit_bytes`; it
    /// lives as long as the returned handle (the snapshot, its clones).
    pub fn track(&mut self, limit_bytes: u64, budget: &Budget) -> UndoRecord {
        self.records.retain(|w| w.strong_count() > 0);
        let record = Arc::new(Mutex::new(Undo::new(limit_bytes, budget.clone())));
        self.records.push(Arc::downgrade(&record));
        record
    }

    /// Live records.
    pub fn tracking(&self) -> usize {
        self.records.iter().filter(|w| w.strong_count() > 0).count()
    }

    /// Sectors of block `b` that are on the disk.
    fn block_sectors(&self, b: u64) -> u64 {
        self.inner
            .sectors()
            .saturating_sub(b * SECTORS_PER_BLOCK)
            .min(SECTORS_PER_BLOCK)
    }

    /// Reads block `b` from the disk (zeros past its end).
    fn read_block(&mut self, b: u64) -> Result<Block, BlockError> {
        let mut block: Block = Box::new([0; BLOCK as usize]);
        let n = self.block_sectors(b);
        self.inner.read(
            b * SECTORS_PER_BLOCK,
            &mut block[..(n * SECTOR_SIZE) as usize],
        )?;
        Ok(block)
    }

    /// Saves the old contents of blocks `first..=last` into every live record
    /// that lacks them.
    fn save_old(&mut self, first: u64, last: u64) -> Result<(), BlockError> {
        let live: Vec<UndoRecord> = self.records.iter().filter_map(Weak::upgrade).collect();
        if live.is_empty() {
            return Ok(());
        }
        for b in first..=last {
            let wanted = live.iter().any(|r| {
                let r = r.lock();
                !r.overflowed && !r.blocks.contains_key(&b)
            });
            if !wanted {
                continue;
            }
            let old = self.read_block(b)?;
            for r in &live {
                let mut r = r.lock();
                if r.overflowed || r.blocks.contains_key(&b) {
                    continue;
                }
                if r.blocks.len() >= r.limit_blocks || !r.budget.take_block() {
                    r.overflow();
                    continue;
                }
                r.blocks.insert(b, old.clone());
            }
        }
        Ok(())
    }

    /// Writes every block `record` holds back to the disk (through the tracking
    /// path, so newer records keep what this overwrites): the disk is as it was
    /// when the record began.
    pub fn roll_back(&mut self, record: &UndoRecord) -> Result<u64, RollBackError> {
        let blocks: Vec<(u64, Block)> = {
            let r = record.lock();
            if r.overflowed {
                return Err(RollBackError::Overflowed);
            }
            r.blocks.iter().map(|(&b, d)| (b, d.clone())).collect()
        };
        for (b, data) in &blocks {
            let n = self.block_sectors(*b);
            self.write(b * SECTORS_PER_BLOCK, &data[..(n * SECTOR_SIZE) as usize])
                .map_err(RollBackError::Disk)?;
        }
        Ok(blocks.len() as u64)
    }

    /// Reads as the disk was when `record` began (a clone's view of it).
    pub fn read_as_of(
        &mut self,
        record: &Undo,
        sector: u64,
        buf: &mut [u8],
    ) -> Result<(), BlockError> {
        let sectors = buf.len() as u64 / SECTOR_SIZE;
        let end = sector.checked_add(sectors).ok_or(BlockError::OutOfRange)?;
        if end > self.inner.sectors() {
            return Err(BlockError::OutOfRange);
        }
        for (i, s) in (sector..end).enumerate() {
            let out = &mut buf[i * SECTOR_SIZE as usize..(i + 1) * SECTOR_SIZE as usize];
            let (b, within) = (s / SECTORS_PER_BLOCK, s % SECTORS_PER_BLOCK);
            match record.get(b) {
                Some(old) => out.copy_from_slice(
                    &old[(within * SECTOR_SIZE) as usize..((within + 1) * SECTOR_SIZE) as usize],
                ),
                None => self.inner.read(s, out)?,
            }
        }
        Ok(())
    }
}

/// Why a snapshot's disk state could not be put back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RollBackError {
    /// More was written after the snapshot than its record could keep.
    Overflowed,
    Disk(BlockError),
}

impl<B: BlockBackend> BlockBackend for Tracked<B> {
    fn sectors(&self) -> u64 {
        self.inner.sectors()
    }
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        self.inner.read(sector, buf)
    }
    fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), BlockError> {
        let sectors = data.len() as u64 / SECTOR_SIZE;
        if sectors > 0 {
            let end = sector.checked_add(sectors).ok_or(BlockError::OutOfRange)?;
            if end > self.inner.sectors() {
                return Err(BlockError::OutOfRange);
            }
            self.save_old(sector / SECTORS_PER_BLOCK, (end - 1) / SECTORS_PER_BLOCK)?;
        }
        self.inner.write(sector, data)
    }
    fn flush(&mut self) -> Result<(), BlockError> {
        self.inner.flush()
    }
}

/// A clone's disk: the source's disk as of a snapshot (its record), with the
/// clone's own writes in memory over it.
pub struct CloneDisk<B> {
    disk: Arc<Mutex<Tracked<B>>>,
    record: UndoRecord,
    own: BTreeMap<u64, Block>,
    limit_blocks: usize,
    budget: Budget,
}

impl<B> Drop for CloneDisk<B> {
    fn drop(&mut self) {
        self.budget.give(self.own.len());
    }
}

impl<B: BlockBackend> CloneDisk<B> {
    /// Over `disk` as `record` keeps it; the clone's own writes take at most
    /// `limit_bytes` of memory from `budget` (more is an I/O error for the guest).
    pub fn new(
        disk: Arc<Mutex<Tracked<B>>>,
        record: UndoRecord,
        limit_bytes: u64,
        budget: Budget,
    ) -> Self {
        Self {
            disk,
            record,
            own: BTreeMap::new(),
            limit_blocks: (limit_bytes / BLOCK) as usize,
            budget,
        }
    }

    /// Bytes of its own.
    pub fn own_bytes(&self) -> u64 {
        self.own.len() as u64 * BLOCK
    }

    /// Reads sectors as the clone sees them.
    fn read_sectors(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let record = self.record.clone();
        let mut disk = self.disk.lock();
        let record = record.lock();
        if record.overflowed {
            // The source wrote more than the record keeps: what the clone would
            // read is gone.
            return Err(BlockError::Io);
        }
        let sectors = buf.len() as u64 / SECTOR_SIZE;
        for i in 0..sectors {
            let s = sector + i;
            let out = &mut buf[(i * SECTOR_SIZE) as usize..((i + 1) * SECTOR_SIZE) as usize];
            let (b, within) = (s / SECTORS_PER_BLOCK, s % SECTORS_PER_BLOCK);
            match self.own.get(&b) {
                Some(mine) => out.copy_from_slice(
                    &mine[(within * SECTOR_SIZE) as usize..((within + 1) * SECTOR_SIZE) as usize],
                ),
                None => disk.read_as_of(&record, s, out)?,
            }
        }
        Ok(())
    }
}

impl<B: BlockBackend> BlockBackend for CloneDisk<B> {
    fn sectors(&self) -> u64 {
        self.disk.lock().sectors()
    }
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let end = sector
            .checked_add(buf.len() as u64 / SECTOR_SIZE)
            .ok_or(BlockError::OutOfRange)?;
        if end > self.sectors() {
            return Err(BlockError::OutOfRange);
        }
        self.read_sectors(sector, buf)
    }
    fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), BlockError> {
        let sectors = data.len() as u64 / SECTOR_SIZE;
        let end = sector.checked_add(sectors).ok_or(BlockError::OutOfRange)?;
        if end > self.sectors() {
            return Err(BlockError::OutOfRange);
        }
        for i in 0..sectors {
            let s = sector + i;
            let (b, within) = (s / SECTORS_PER_BLOCK, s % SECTORS_PER_BLOCK);
            if !self.own.contains_key(&b) {
                if self.own.len() >= self.limit_blocks || !self.budget.take_block() {
                    return Err(BlockError::Io);
                }
                // The block as the clone sees it, then its own copy.
                let mut block: Block = Box::new([0; BLOCK as usize]);
                let first = b * SECTORS_PER_BLOCK;
                let n = (self.sectors() - first).min(SECTORS_PER_BLOCK);
                if let Err(e) = self.read_sectors(first, &mut block[..(n * SECTOR_SIZE) as usize]) {
                    self.budget.give(1);
                    return Err(e);
                }
                self.own.insert(b, block);
            }
            let mine = self.own.get_mut(&b).expect("inserted above");
            mine[(within * SECTOR_SIZE) as usize..((within + 1) * SECTOR_SIZE) as usize]
                .copy_from_slice(
                    &data[(i * SECTOR_SIZE) as usize..((i + 1) * SECTOR_SIZE) as usize],
                );
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<(), BlockError> {
        // Its writes live in memory: nothing to make durable.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blk::RamDisk;
    use alloc::vec;

    const S: usize = SECTOR_SIZE as usize;

    fn disk(sectors: usize) -> Tracked<RamDisk> {
        let mut bytes = vec![0u8; sectors * S];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i / S) as u8;
        }
        Tracked::new(RamDisk::new(bytes))
    }

    fn budget() -> Budget {
        Budget::new(64 << 20)
    }

    #[test]
    fn every_block_comes_from_the_budget_and_goes_back() {
        let b = Budget::new(3 * BLOCK);
        let shared = Arc::new(Mutex::new(disk(64)));
        let r = shared.lock().track(1 << 20, &b);
        shared.lock().write(0, &[1; S]).unwrap();
        assert_eq!(b.left(), 2 * BLOCK);
        let mut c = CloneDisk::new(shared.clone(), r.clone(), 1 << 20, b.clone());
        c.write(8, &[2; S]).unwrap();
        c.write(16, &[2; S]).unwrap();
        assert_eq!(b.left(), 0);
        // The budget is spent: the clone's next block is an I/O error, the
        // record's next one overflows it (and gives back what it held).
        assert_eq!(c.write(24, &[2; S]), Err(BlockError::Io));
        shared.lock().write(32, &[3; S]).unwrap();
        assert!(r.lock().overflowed());
        assert_eq!(b.left(), BLOCK);
        drop(c);
        assert_eq!(b.left(), 3 * BLOCK);
    }

    fn sector(d: &mut impl BlockBackend, s: u64) -> [u8; S] {
        let mut b = [0u8; S];
        d.read(s, &mut b).unwrap();
        b
    }

    #[test]
    fn a_record_keeps_old_blocks_and_rolls_the_disk_back() {
        let mut d = disk(20); // 2.5 blocks: the last one partial
        let r = d.track(1 << 20, &budget());
        d.write(3, &[0xAA; S]).unwrap();
        d.write(3, &[0xBB; S]).unwrap(); // the block is saved once
        d.write(17, &[0xCC; 2 * S]).unwrap(); // the partial last block
        assert_eq!(r.lock().bytes(), 2 * BLOCK);
        assert_eq!(sector(&mut d, 3), [0xBB; S]);
        assert_eq!(d.roll_back(&r), Ok(2));
        for s in 0..20 {
            assert_eq!(sector(&mut d, s), [s as u8; S], "sector {s}");
        }
        // Still valid: the same record rolls back again after more writes.
        d.write(8, &[1; S]).unwrap();
        assert_eq!(d.roll_back(&r), Ok(3));
        assert_eq!(sector(&mut d, 8), [8; S]);
        // Out of range writes are refused before anything is saved.
        assert_eq!(d.write(19, &[0; 2 * S]), Err(BlockError::OutOfRange));
    }

    #[test]
    fn records_are_independent_and_die_with_their_handles() {
        let mut d = disk(32);
        let first = d.track(1 << 20, &budget());
        d.write(0, &[1; S]).unwrap();
        let second = d.track(1 << 20, &budget());
        d.write(0, &[2; S]).unwrap();
        d.write(8, &[2; S]).unwrap();
        // Rolling back to the second keeps the first's view valid.
        d.roll_back(&second).unwrap();
        assert_eq!(sector(&mut d, 0), [1; S]);
        assert_eq!(sector(&mut d, 8), [8; S]);
        d.roll_back(&first).unwrap();
        assert_eq!(sector(&mut d, 0), [0; S]);
        drop(second);
        assert_eq!(d.tracking(), 1);
        drop(first);
        assert_eq!(d.tracking(), 0);
        d.write(0, &[5; S]).unwrap();
    }

    #[test]
    fn an_overflowing_record_is_refused_and_the_disk_goes_on() {
        let mut d = disk(64);
        let r = d.track(2 * BLOCK, &budget());
        for b in 0..3u64 {
            d.write(b * 8, &[9; S]).unwrap();
        }
        assert!(r.lock().overflowed());
        assert_eq!(r.lock().bytes(), 0);
        assert_eq!(d.roll_back(&r), Err(RollBackError::Overflowed));
        assert_eq!(sector(&mut d, 16), [9; S]);
    }

    #[test]
    fn a_clone_sees_the_snapshot_and_its_own_writes_only() {
        let shared = Arc::new(Mutex::new(disk(24)));
        let record = shared.lock().track(1 << 20, &budget());
        let mut clone = CloneDisk::new(shared.clone(), record.clone(), 1 << 20, budget());
        // The source writes after the snapshot; the clone does not see it.
        shared.lock().write(2, &[0xEE; S]).unwrap();
        assert_eq!(sector(&mut clone, 2), [2; S]);
        // The clone writes; the source does not see it.
        clone.write(3, &[0x77; S]).unwrap();
        assert_eq!(sector(&mut clone, 3), [0x77; S]);
        assert_eq!(
            sector(&mut clone, 2),
            [2; S],
            "its block copy kept the snapshot's"
        );
        assert_eq!(sector(&mut *shared.lock(), 3), [3; S]);
        // A write by the source after the clone copied the block changes nothing.
        shared.lock().write(4, &[0xDD; S]).unwrap();
        assert_eq!(sector(&mut clone, 4), [4; S]);
        assert_eq!(clone.own_bytes(), BLOCK);
        assert_eq!(clone.read(23, &mut [0; 2 * S]), Err(BlockError::OutOfRange));
        // Its own memory is bounded.
        let mut small = CloneDisk::new(shared.clone(), record, BLOCK, budget());
        small.write(0, &[1; S]).unwrap();
        assert_eq!(small.write(8, &[1; S]), Err(BlockError::Io));
    }
}
