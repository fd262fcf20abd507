//! A window onto a shared disk: [`Partition`] is the [`BlockBackend`] of one VM's
//! disk when that disk is a range of sectors (a GPT partition) of a larger device
//! that several VMs' disks live on (the hypervisor's NVMe drive).
//!
//! Every request is checked against the window before it reaches the device, so a
//! guest addresses sectors 0 to `sectors - 1` of its own partition and nothing else:
//! a request that starts or ends outside is [`BlockError::OutOfRange`] (the device
//! model answers VIRTIO_BLK_S_IOERR), never a touch of a neighbour's sectors. The
//! device sits behind a lock because the VMs that share it run on different
//! processors; a request holds it for its own transfer only.

use alloc::sync::Arc;

use spin::Mutex;

use crate::blk::{BlockBackend, BlockError, SECTOR_SIZE};

/// Sectors `first .. first + sectors` of the shared device `disk`.
pub struct Partition<D: BlockBackend> {
    disk: Arc<Mutex<D>>,
    first: u64,
    sectors: u64,
}

impl<D: BlockBackend> Partition<D> {
    /// The window, or `None` when it does not lie inside the device (or is empty).
    pub fn new(disk: Arc<Mutex<D>>, first: u64, sectors: u64) -> Option<Self> {
        let end = first.checked_add(sectors)?;
        if sectors == 0 || end > disk.lock().sectors() {
            return None;
        }
        Some(Self {
            disk,
            first,
            sectors,
        })
    }

    /// The device sector of the window's `sector`, when `len` bytes from there stay
    /// inside the window.
    fn translate(&self, sector: u64, len: usize) -> Result<u64, BlockError> {
        let count = (len as u64).div_ceil(SECTOR_SIZE);
        let end = sector.checked_add(count).ok_or(BlockError::OutOfRange)?;
        if end > self.sectors {
            return Err(BlockError::OutOfRange);
        }
        Ok(self.first + sector)
    }

    /// The first device sector of the window.
    pub fn first(&self) -> u64 {
        self.first
    }
}

impl<D: BlockBackend> BlockBackend for Partition<D> {
    fn sectors(&self) -> u64 {
        self.sectors
    }

    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let at = self.translate(sector, buf.len())?;
        self.disk.lock().read(at, buf)
    }

    fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), BlockError> {
        let at = self.translate(sector, data.len())?;
        self.disk.lock().write(at, data)
    }

    fn flush(&mut self) -> Result<(), BlockError> {
        self.disk.lock().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blk::RamDisk;
    use alloc::vec;

    fn disk() -> Arc<Mutex<RamDisk>> {
        let mut bytes = vec![0u8; 64 * SECTOR_SIZE as usize];
        for (i, s) in bytes.chunks_mut(SECTOR_SIZE as usize).enumerate() {
            s.fill(i as u8);
        }
        Arc::new(Mutex::new(RamDisk::new(bytes)))
    }

    #[test]
    fn a_window_reads_and_writes_its_own_sectors_only() {
        let d = disk();
        let mut a = Partition::new(d.clone(), 8, 16).unwrap();
        let mut b = Partition::new(d.clone(), 24, 16).unwrap();
        assert_eq!(a.sectors(), 16);
        let mut buf = vec![0u8; 2 * SECTOR_SIZE as usize];
        a.read(0, &mut buf).unwrap();
        assert!(buf[..512].iter().all(|&x| x == 8) && buf[512..].iter().all(|&x| x == 9));
        b.write(15, &[0xEE; 512]).unwrap();
        assert!(d.lock().as_slice()[39 * 512..40 * 512]
            .iter()
            .all(|&x| x == 0xEE));
        // The last sector is in, one past it is not, nor a request across the end,
        // nor one whose end overflows.
        assert!(a.read(15, &mut buf[..512]).is_ok());
        assert_eq!(a.read(16, &mut buf[..512]), Err(BlockError::OutOfRange));
        assert_eq!(a.read(15, &mut buf), Err(BlockError::OutOfRange));
        assert_eq!(a.write(u64::MAX, &[0; 512]), Err(BlockError::OutOfRange));
        // a's neighbour b is untouched by a's refused write.
        assert_eq!(a.write(16, &[0xAA; 512]), Err(BlockError::OutOfRange));
        assert!(d.lock().as_slice()[24 * 512..25 * 512]
            .iter()
            .all(|&x| x == 24));
        a.flush().unwrap();
        assert_eq!(d.lock().flushes, 1);
    }

    #[test]
    fn a_window_must_lie_inside_the_device() {
        let d = disk();
        assert!(Partition::new(d.clone(), 0, 64).is_some());
        assert!(Partition::new(d.clone(), 1, 64).is_none());
        assert!(Partition::new(d.clone(), 10, 0).is_none());
        assert!(Partition::new(d, u64::MAX, 2).is_none());
    }
}
