//! The disk the rest of the hypervisor sees: 512-byte sectors, whatever the
//! namespace's LBA size, bounds-checked, moved through the driver's bounce pages.
//!
//! Transfers are split so that no command exceeds MDTS or the bounce buffer. On a
//! namespace with 4096-byte LBAs a request that starts or ends inside an LBA is
//! served by reading the covering LBAs first (read-modify-write for writes), so
//! callers need not know the LBA size.

use crate::command::{io, Submission};
use crate::{Clock, Controller, Dma, Error, Registers, PAGE_SIZE};

/// The unit of [`Controller::read`] and [`Controller::write`].
pub const SECTOR_SIZE: usize = 512;

impl<R: Registers, D: Dma, C: Clock> Controller<R, D, C> {
    /// 512-byte sectors on the disk.
    pub fn sectors(&self) -> u64 {
        // Cannot overflow: checked against NSZE at bring-up.
        self.info.lba_count * u64::from(self.info.lba_bytes) / SECTOR_SIZE as u64
    }

    /// The unit of addresses and lengths in this interface (512 bytes).
    pub fn sector_size(&self) -> usize {
        SECTOR_SIZE
    }

    /// The namespace's own logical block size (512 or 4096): transfers aligned to it
    /// avoid read-modify-write.
    pub fn lba_bytes(&self) -> u32 {
        self.info.lba_bytes
    }

    /// Reads `buf.len() / 512` sectors starting at sector `lba`.
    pub fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), Error> {
        let mut offset = self.check(lba, buf.len())?;
        let mut done = 0;
        while done < buf.len() {
            let chunk = self.chunk(offset, buf.len() - done);
            self.transfer(io::READ, &chunk)?;
            self.dma.read(
                self.bounce + chunk.within as u64,
                &mut buf[done..done + chunk.len],
            );
            done += chunk.len;
            offset += chunk.len as u64;
        }
        Ok(())
    }

    /// Writes `data.len() / 512` sectors starting at sector `lba`.
    pub fn write(&mut self, lba: u64, data: &[u8]) -> Result<(), Error> {
        let mut offset = self.check(lba, data.len())?;
        let mut done = 0;
        let lba_bytes = self.info.lba_bytes as usize;
        while done < data.len() {
            let chunk = self.chunk(offset, data.len() - done);
            // Only the first and the last chunk can be partial LBAs.
            if chunk.within != 0 || !(chunk.within + chunk.len).is_multiple_of(lba_bytes) {
                self.transfer(io::READ, &chunk)?;
            }
            self.dma.write(
                self.bounce + chunk.within as u64,
                &data[done..done + chunk.len],
            );
            self.transfer(io::WRITE, &chunk)?;
            done += chunk.len;
            offset += chunk.len as u64;
        }
        Ok(())
    }

    /// Commits the controller's volatile write cache to media (Flush, NVMe 1.4 §6.8).
    pub fn flush(&mut self) -> Result<(), Error> {
        self.execute(
            false,
            &Submission {
                opcode: io::FLUSH,
                nsid: 1,
                ..Default::default()
            },
        )
        .map(|_| ())
    }

    /// Checks a request of `len` bytes at sector `lba`; returns its byte offset.
    fn check(&self, lba: u64, len: usize) -> Result<u64, Error> {
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(Error::BufferLength(len));
        }
        let count = (len / SECTOR_SIZE) as u64;
        let sectors = self.sectors();
        match lba.checked_add(count) {
            Some(end) if end <= sectors => Ok(lba * SECTOR_SIZE as u64),
            _ => Err(Error::OutOfRange {
                lba,
                count,
                sectors,
            }),
        }
    }

    /// The next command of a request at byte `offset` with `remaining` bytes to go.
    fn chunk(&self, offset: u64, remaining: usize) -> Chunk {
        let lba_bytes = self.info.lba_bytes as usize;
        let within = (offset % lba_bytes as u64) as usize;
        // `max_transfer_bytes` is a multiple of 4096, so of the LBA size.
        let len = remaining.min(self.info.max_transfer_bytes - within);
        let blocks = (within + len).div_ceil(lba_bytes);
        Chunk {
            slba: offset / lba_bytes as u64,
            blocks: blocks as u32,
            within,
            len,
        }
    }

    /// One Read or Write of `chunk.blocks` LBAs between the namespace and the start
    /// of the bounce pages, described by PRPs (NVMe 1.4 §4.3): PRP1 the first page,
    /// PRP2 the second page or, beyond two pages, a PRP list of the others.
    fn transfer(&mut self, opcode: u8, chunk: &Chunk) -> Result<(), Error> {
        let bytes = chunk.blocks as usize * self.info.lba_bytes as usize;
        let pages = bytes.div_ceil(PAGE_SIZE);
        let prp2 = match pages {
            0 | 1 => 0,
            2 => self.bounce + PAGE_SIZE as u64,
            _ => {
                let mut list = [0u8; PAGE_SIZE];
                for i in 1..pages {
                    let entry = self.bounce + (i * PAGE_SIZE) as u64;
                    list[(i - 1) * 8..i * 8].copy_from_slice(&entry.to_le_bytes());
                }
                self.dma.write(self.prp_list, &list[..(pages - 1) * 8]);
                self.prp_list
            }
        };
        self.execute(
            false,
            &Submission {
                opcode,
                nsid: 1,
                prp1: self.bounce,
                prp2,
                // SLBA in CDW10-11, NLB (0's based) in CDW12 bits 15:0 (§6.9, §6.15).
                cdw: [
                    chunk.slba as u32,
                    (chunk.slba >> 32) as u32,
                    chunk.blocks - 1,
                    0,
                    0,
                    0,
                ],
            },
        )
        .map(|_| ())
    }
}

/// One command's share of a request.
struct Chunk {
    /// First LBA of the namespace the command covers.
    slba: u64,
    /// LBAs the command moves (at least 1).
    blocks: u32,
    /// Where the caller's bytes start in the first LBA (0 when aligned).
    within: usize,
    /// The caller's bytes this command serves.
    len: usize,
}
