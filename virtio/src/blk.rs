//! virtio-blk (virtio 1.2 §5.2): requests VIRTIO_BLK_T_IN, OUT, FLUSH and GET_ID on a
//! [`BlockBackend`] of 512-byte sectors, with read-only disks and a 20-byte serial.
//!
//! A request is one descriptor chain read as a byte stream (§2.7.4, message framing
//! is free in virtio 1.x): the device-readable part starts with the 16-byte header
//! (type, reserved, sector) and, for OUT, continues with the data; the device-writable
//! part holds the data of IN or GET_ID and ends with the status byte. Data moves
//! through a bounce buffer of [`BOUNCE_SIZE`] bytes, so a request of any length
//! allocates nothing.

use alloc::vec;
use alloc::vec::Vec;

use crate::device::{device_id, VirtioDevice};
use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, Ordering};

/// A request header's type field.
fn kind_of(header: &[u8; 16]) -> u32 {
    u32::from_le_bytes([header[0], header[1], header[2], header[3]])
}
use crate::memory::{GuestMemory, MemError};
use crate::queue::{Chain, Segment};

/// Bytes per sector: the unit of the header's `sector` and of `capacity` (§5.2.4),
/// whatever `blk_size` says.
pub const SECTOR_SIZE: u64 = 512;
/// The size of the one bounce buffer a device keeps: one backend call moves at most
/// this much. As large as an NVMe command of the host driver's (128 KiB), so a
/// guest's large request is a few backend calls rather than one per page (each a
/// command and a completion wait on a real disk).
pub const BOUNCE_SIZE: usize = 128 * 1024;
/// The queue size the device offers.
pub const QUEUE_SIZE: u16 = 256;
/// The length of a GET_ID answer (§5.2.6: VIRTIO_BLK_ID_BYTES).
pub const ID_BYTES: usize = 20;

/// Feature bits (§5.2.3).
pub mod features {
    pub const SIZE_MAX: u64 = 1 << 1;
    pub const SEG_MAX: u64 = 1 << 2;
    pub const RO: u64 = 1 << 5;
    pub const BLK_SIZE: u64 = 1 << 6;
    pub const FLUSH: u64 = 1 << 9;
}

/// Request types (§5.2.6).
pub mod request {
    pub const IN: u32 = 0;
    pub const OUT: u32 = 1;
    pub const FLUSH: u32 = 4;
    pub const GET_ID: u32 = 8;
}

/// Status byte values (§5.2.6).
pub mod status {
    pub const OK: u8 = 0;
    pub const IOERR: u8 = 1;
    pub const UNSUPP: u8 = 2;
}

/// A backend failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockError {
    /// The sector range is not on the disk.
    OutOfRange,
    /// The medium failed.
    Io,
}

/// The storage behind a disk, in 512-byte sectors. `buf` lengths are multiples of
/// [`SECTOR_SIZE`].
pub trait BlockBackend: Send {
    /// The disk's size in sectors.
    fn sectors(&self) -> u64;
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError>;
    fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), BlockError>;
    /// Makes every completed write durable.
    fn flush(&mut self) -> Result<(), BlockError>;
}

/// A disk in RAM (whole sectors; a trailing partial sector is not part of the disk).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RamDisk {
    bytes: Vec<u8>,
    /// How many flushes happened (for tests).
    pub flushes: u64,
}

impl RamDisk {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self { bytes, flushes: 0 }
    }

    /// A zeroed disk of `sectors` sectors.
    pub fn zeroed(sectors: usize) -> Self {
        Self::new(vec![0; sectors * SECTOR_SIZE as usize])
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes
    }

    fn range(&self, sector: u64, len: usize) -> Result<core::ops::Range<usize>, BlockError> {
        let start = sector
            .checked_mul(SECTOR_SIZE)
            .ok_or(BlockError::OutOfRange)?;
        let end = start
            .checked_add(len as u64)
            .ok_or(BlockError::OutOfRange)?;
        if end > self.sectors() * SECTOR_SIZE {
            return Err(BlockError::OutOfRange);
        }
        Ok(start as usize..end as usize)
    }
}

/// A boxed backend is one (owners that choose the backend at run time).
impl<T: BlockBackend + ?Sized> BlockBackend for alloc::boxed::Box<T> {
    fn sectors(&self) -> u64 {
        (**self).sectors()
    }
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        (**self).read(sector, buf)
    }
    fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), BlockError> {
        (**self).write(sector, data)
    }
    fn flush(&mut self) -> Result<(), BlockError> {
        (**self).flush()
    }
}

impl BlockBackend for RamDisk {
    fn sectors(&self) -> u64 {
        self.bytes.len() as u64 / SECTOR_SIZE
    }
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let r = self.range(sector, buf.len())?;
        buf.copy_from_slice(&self.bytes[r]);
        Ok(())
    }
    fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), BlockError> {
        let r = self.range(sector, data.len())?;
        self.bytes[r].copy_from_slice(data);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), BlockError> {
        self.flushes += 1;
        Ok(())
    }
}

/// A sequential position in the readable or the writable segments of a chain.
pub(crate) struct Cursor<'a> {
    segments: Vec<&'a Segment>,
    index: usize,
    offset: u32,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(chain: &'a Chain, write: bool) -> Self {
        Self {
            segments: chain.segments.iter().filter(|s| s.write == write).collect(),
            index: 0,
            offset: 0,
        }
    }

    /// Calls `f(addr, start, len)` for consecutive pieces covering `len` bytes;
    /// stops at the end of the segments.
    fn each(
        &mut self,
        len: usize,
        mut f: impl FnMut(u64, usize, usize) -> Result<(), MemError>,
    ) -> Result<usize, MemError> {
        let mut done = 0;
        while done < len {
            let Some(seg) = self.segments.get(self.index) else {
                break;
            };
            let left = (seg.len - self.offset) as usize;
            if left == 0 {
                self.index += 1;
                self.offset = 0;
                continue;
            }
            let n = left.min(len - done);
            f(seg.addr + u64::from(self.offset), done, n)?;
            done += n;
            self.offset += n as u32;
        }
        Ok(done)
    }

    pub(crate) fn read(
        &mut self,
        mem: &dyn GuestMemory,
        buf: &mut [u8],
    ) -> Result<usize, MemError> {
        self.each(buf.len(), |addr, start, n| {
            mem.read(addr, &mut buf[start..start + n])
        })
    }

    pub(crate) fn write(
        &mut self,
        mem: &mut dyn GuestMemory,
        data: &[u8],
    ) -> Result<usize, MemError> {
        self.each(data.len(), |addr, start, n| {
            mem.write(addr, &data[start..start + n])
        })
    }
}

/// How a disk looks to the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockConfig {
    /// Writes fail with IOERR, and VIRTIO_BLK_F_RO is offered.
    pub read_only: bool,
    /// GET_ID's answer, NUL-padded to 20 bytes.
    pub serial: [u8; ID_BYTES],
}

impl BlockConfig {
    /// A writable disk with serial `serial` (cut to 20 bytes).
    pub fn new(serial: &str) -> Self {
        let mut s = [0; ID_BYTES];
        let n = serial.len().min(ID_BYTES);
        s[..n].copy_from_slice(&serial.as_bytes()[..n]);
        Self {
            read_only: false,
            serial: s,
        }
    }

    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }
}

/// What a disk has done, counted as requests complete (for operators' reports):
/// atomics, so whoever reports reads them without the device's lock.
#[derive(Debug, Default)]
pub struct BlockStats {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub flushes: AtomicU64,
    pub read_bytes: AtomicU64,
    pub written_bytes: AtomicU64,
    /// Requests answered with IOERR or UNSUPP.
    pub errors: AtomicU64,
}

impl BlockStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// A virtio block device on `backend`.
pub struct Block<B: BlockBackend> {
    backend: B,
    config: BlockConfig,
    negotiated: u64,
    bounce: Vec<u8>,
    stats: Arc<BlockStats>,
}

impl<B: BlockBackend> Block<B> {
    pub fn new(backend: B, config: BlockConfig) -> Self {
        Self {
            backend,
            config,
            negotiated: 0,
            bounce: vec![0; BOUNCE_SIZE],
            stats: Arc::default(),
        }
    }

    /// Counts into `stats` (shared with whoever reports them).
    pub fn with_stats(mut self, stats: Arc<BlockStats>) -> Self {
        self.stats = stats;
        self
    }

    pub fn stats(&self) -> &Arc<BlockStats> {
        &self.stats
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// The configuration space (§5.2.4) up to `blk_size`: capacity, size_max (not
    /// offered: 0), seg_max, geometry (0), blk_size.
    fn config_bytes(&self) -> [u8; 24] {
        let mut c = [0u8; 24];
        c[0..8].copy_from_slice(&self.backend.sectors().to_le_bytes());
        let seg_max = u32::from(QUEUE_SIZE - 2);
        c[12..16].copy_from_slice(&seg_max.to_le_bytes());
        c[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        c
    }

    /// Checks that `len` bytes from `sector` are whole sectors on the disk (§5.2.6:
    /// a request past the end fails with IOERR); returns the sector count.
    fn sector_range(&self, sector: u64, len: u64) -> Option<u64> {
        if !len.is_multiple_of(SECTOR_SIZE) {
            return None;
        }
        let count = len / SECTOR_SIZE;
        let end = sector.checked_add(count)?;
        (end <= self.backend.sectors()).then_some(count)
    }

    /// IN: disk to guest. Returns the status and the data bytes written.
    fn read_request(
        &mut self,
        mem: &mut dyn GuestMemory,
        out: &mut Cursor,
        sector: u64,
        len: u64,
    ) -> (u8, u64) {
        let Some(count) = self.sector_range(sector, len) else {
            return (status::IOERR, 0);
        };
        let per = (BOUNCE_SIZE as u64) / SECTOR_SIZE;
        let mut done = 0u64;
        while done < count {
            let n = per.min(count - done);
            let buf = &mut self.bounce[..(n * SECTOR_SIZE) as usize];
            if self.backend.read(sector + done, buf).is_err() {
                return (status::IOERR, done * SECTOR_SIZE);
            }
            if out.write(mem, buf).is_err() {
                return (status::IOERR, done * SECTOR_SIZE);
            }
            done += n;
        }
        (status::OK, len)
    }

    /// OUT: guest to disk.
    fn write_request(
        &mut self,
        mem: &dyn GuestMemory,
        input: &mut Cursor,
        sector: u64,
        len: u64,
    ) -> u8 {
        if self.config.read_only {
            return status::IOERR;
        }
        let Some(count) = self.sector_range(sector, len) else {
            return status::IOERR;
        };
        let per = (BOUNCE_SIZE as u64) / SECTOR_SIZE;
        let mut done = 0u64;
        while done < count {
            let n = per.min(count - done);
            let buf = &mut self.bounce[..(n * SECTOR_SIZE) as usize];
            if input.read(mem, buf).is_err() || self.backend.write(sector + done, buf).is_err() {
                return status::IOERR;
            }
            done += n;
        }
        status::OK
    }
}

impl<B: BlockBackend> VirtioDevice for Block<B> {
    fn device_type(&self) -> u16 {
        device_id::BLOCK
    }

    fn device_features(&self) -> u64 {
        let ro = if self.config.read_only {
            features::RO
        } else {
            0
        };
        features::SEG_MAX | features::BLK_SIZE | features::FLUSH | ro
    }

    fn num_queues(&self) -> u16 {
        1
    }

    fn queue_max_size(&self) -> u16 {
        QUEUE_SIZE
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::device::read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn set_features(&mut self, negotiated: u64) {
        self.negotiated = negotiated;
    }

    fn reset(&mut self) {
        self.negotiated = 0;
    }

    fn state(&self) -> Vec<u8> {
        self.negotiated.to_le_bytes().to_vec()
    }

    fn restore(&mut self, data: &[u8]) -> bool {
        match <[u8; 8]>::try_from(data) {
            Ok(b) => {
                self.negotiated = u64::from_le_bytes(b);
                true
            }
            Err(_) => false,
        }
    }

    fn process(&mut self, _queue: u16, chain: &Chain, mem: &mut dyn GuestMemory) -> u32 {
        let writable = chain.writable_len();
        // Without a writable byte there is nowhere to put the status: the request is
        // returned unanswered (used length 0).
        let Some(status_at) = chain
            .segments
            .iter()
            .rev()
            .find(|s| s.write && s.len > 0)
            .map(|s| s.addr + u64::from(s.len) - 1)
        else {
            return 0;
        };
        let data_out = writable - 1;
        let mut input = Cursor::new(chain, false);
        let mut output = Cursor::new(chain, true);
        let mut header = [0u8; 16];
        let (st, written) = if input.read(mem, &mut header) != Ok(16) {
            (status::IOERR, 0)
        } else {
            let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
            let sector = u64::from_le_bytes([
                header[8], header[9], header[10], header[11], header[12], header[13], header[14],
                header[15],
            ]);
            match kind {
                request::IN => self.read_request(mem, &mut output, sector, data_out),
                request::OUT => {
                    let len = chain.readable_len() - 16;
                    (self.write_request(mem, &mut input, sector, len), 0)
                }
                request::FLUSH if self.negotiated & features::FLUSH != 0 => {
                    match self.backend.flush() {
                        Ok(()) => (status::OK, 0),
                        Err(_) => (status::IOERR, 0),
                    }
                }
                // §5.2.6: the answer is 20 bytes, NUL-padded; a smaller buffer cannot
                // take it.
                request::GET_ID if data_out >= ID_BYTES as u64 => {
                    match output.write(mem, &self.config.serial) {
                        Ok(_) => (status::OK, ID_BYTES as u64),
                        Err(_) => (status::IOERR, 0),
                    }
                }
                request::GET_ID => (status::IOERR, 0),
                _ => (status::UNSUPP, 0),
            }
        };
        let stats = &self.stats;
        if st != status::OK {
            BlockStats::add(&stats.errors, 1);
        } else if kind_of(&header) == request::IN {
            BlockStats::add(&stats.reads, 1);
            BlockStats::add(&stats.read_bytes, written);
        } else if kind_of(&header) == request::OUT {
            BlockStats::add(&stats.writes, 1);
            BlockStats::add(&stats.written_bytes, chain.readable_len() - 16);
        } else if kind_of(&header) == request::FLUSH {
            BlockStats::add(&stats.flushes, 1);
        }
        // The segments were checked against RAM when the chain was taken.
        let _ = mem.write(status_at, &[st]);
        // Data plus the status byte; the chain's length fits in u32.
        (written + 1) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::VecMemory;

    fn seg(addr: u64, len: u32, write: bool) -> Segment {
        Segment { addr, len, write }
    }

    fn header(mem: &mut VecMemory, at: u64, kind: u32, sector: u64) {
        mem.write_u32(at, kind).unwrap();
        mem.write_u32(at + 4, 0).unwrap();
        mem.write_u64(at + 8, sector).unwrap();
    }

    fn disk(sectors: usize) -> Block<RamDisk> {
        let mut d = RamDisk::zeroed(sectors);
        for (i, b) in d.bytes.iter_mut().enumerate() {
            *b = (i / 512) as u8 ^ (i as u8);
        }
        let mut b = Block::new(d, BlockConfig::new("hv-disk-0"));
        b.set_features(features::FLUSH);
        b
    }

    #[test]
    fn config_space() {
        let b = disk(100);
        let mut c = [0u8; 8];
        b.read_config(0, &mut c);
        assert_eq!(u64::from_le_bytes(c), 100);
        let mut w = [0u8; 4];
        b.read_config(12, &mut w);
        assert_eq!(u32::from_le_bytes(w), 254, "seg_max");
        b.read_config(20, &mut w);
        assert_eq!(u32::from_le_bytes(w), 512, "blk_size");
        b.read_config(21, &mut w);
        assert_eq!(w, [2, 0, 0, 0], "past the end reads 0");
        b.read_config(u64::MAX, &mut w);
        assert_eq!(w, [0; 4]);
        assert_eq!(
            b.device_features(),
            features::SEG_MAX | features::BLK_SIZE | features::FLUSH
        );
        let ro = Block::new(RamDisk::zeroed(1), BlockConfig::new("x").read_only());
        assert_ne!(ro.device_features() & features::RO, 0);
    }

    #[test]
    fn read_across_odd_segments() {
        let mut b = disk(64);
        let mut m = VecMemory::new(0x10000);
        header(&mut m, 0x100, request::IN, 3);
        // Header split in two, 1024 data bytes over three segments, status alone.
        let chain = Chain {
            head: 0,
            segments: vec![
                seg(0x100, 5, false),
                seg(0x105, 11, false),
                seg(0x1000, 100, true),
                seg(0x2000, 900, true),
                seg(0x3000, 24, true),
                seg(0x4000, 1, true),
            ],
        };
        assert_eq!(b.process(0, &chain, &mut m), 1025);
        assert_eq!(m.as_slice()[0x4000], status::OK);
        let want = &b.backend().as_slice()[3 * 512..5 * 512];
        let mut got = Vec::new();
        got.extend_from_slice(&m.as_slice()[0x1000..0x1064]);
        got.extend_from_slice(&m.as_slice()[0x2000..0x2384]);
        got.extend_from_slice(&m.as_slice()[0x3000..0x3018]);
        assert_eq!(got, want);
    }

    #[test]
    fn header_data_and_status_in_one_buffer_each_direction() {
        // §2.7.4: framing is free; data and status share a segment.
        let mut b = disk(8);
        let mut m = VecMemory::new(0x10000);
        header(&mut m, 0x100, request::IN, 7);
        let chain = Chain {
            head: 0,
            segments: vec![seg(0x100, 16, false), seg(0x1000, 513, true)],
        };
        assert_eq!(b.process(0, &chain, &mut m), 513);
        assert_eq!(m.as_slice()[0x1200], status::OK);
        assert_eq!(
            &m.as_slice()[0x1000..0x1200],
            &b.backend().as_slice()[7 * 512..]
        );
    }

    #[test]
    fn past_capacity_misaligned_and_read_only() {
        let mut b = disk(8);
        let mut m = VecMemory::new(0x10000);
        let io = |b: &mut Block<RamDisk>, m: &mut VecMemory, kind, sector, len: u32| {
            header(m, 0x100, kind, sector);
            m.write(0x4000, &[0xEE]).unwrap();
            let write = kind == request::IN;
            let chain = Chain {
                head: 0,
                segments: vec![
                    seg(0x100, 16, false),
                    seg(0x1000, len, write),
                    seg(0x4000, 1, true),
                ],
            };
            b.process(0, &chain, m);
            m.as_slice()[0x4000]
        };
        assert_eq!(io(&mut b, &mut m, request::IN, 7, 512), status::OK);
        assert_eq!(io(&mut b, &mut m, request::IN, 7, 1024), status::IOERR);
        assert_eq!(io(&mut b, &mut m, request::IN, 8, 512), status::IOERR);
        assert_eq!(io(&mut b, &mut m, request::OUT, 8, 512), status::IOERR);
        assert_eq!(
            io(&mut b, &mut m, request::IN, u64::MAX, 512),
            status::IOERR
        );
        assert_eq!(
            io(&mut b, &mut m, request::OUT, u64::MAX, 512),
            status::IOERR
        );
        assert_eq!(io(&mut b, &mut m, request::IN, 0, 100), status::IOERR);
        assert_eq!(io(&mut b, &mut m, request::OUT, 0, 512), status::OK);
        assert_eq!(io(&mut b, &mut m, 99, 0, 512), status::UNSUPP);
        // Counted: the one good read and the one good write; the rest are errors.
        let st = b.stats();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        assert_eq!((get(&st.reads), get(&st.read_bytes)), (1, 512));
        assert_eq!((get(&st.writes), get(&st.written_bytes)), (1, 512));
        assert_eq!(
            get(&st.errors),
            7,
            "six bad requests and the unsupported one"
        );
        assert_eq!(get(&st.flushes), 0);
        let before = b.backend().clone();
        let mut ro = Block::new(before.clone(), BlockConfig::new("ro").read_only());
        m.write(0x1000, &[0x55; 512]).unwrap();
        assert_eq!(io(&mut ro, &mut m, request::OUT, 0, 512), status::IOERR);
        assert_eq!(ro.backend(), &before);
        assert_eq!(io(&mut ro, &mut m, request::IN, 0, 512), status::OK);
    }

    #[test]
    fn flush_only_when_negotiated_and_get_id() {
        let mut b = disk(8);
        let mut m = VecMemory::new(0x10000);
        header(&mut m, 0x100, request::FLUSH, 0);
        let chain = Chain {
            head: 0,
            segments: vec![seg(0x100, 16, false), seg(0x4000, 1, true)],
        };
        assert_eq!(b.process(0, &chain, &mut m), 1);
        assert_eq!(m.as_slice()[0x4000], status::OK);
        assert_eq!(b.backend().flushes, 1);
        b.set_features(0);
        b.process(0, &chain, &mut m);
        assert_eq!(m.as_slice()[0x4000], status::UNSUPP);

        header(&mut m, 0x100, request::GET_ID, 0);
        let chain = Chain {
            head: 0,
            segments: vec![
                seg(0x100, 16, false),
                seg(0x1000, 20, true),
                seg(0x4000, 1, true),
            ],
        };
        assert_eq!(b.process(0, &chain, &mut m), 21);
        assert_eq!(
            &m.as_slice()[0x1000..0x1014],
            b"hv-disk-0\0\0\0\0\0\0\0\0\0\0\0"
        );
        assert_eq!(m.as_slice()[0x4000], status::OK);
        let short = Chain {
            head: 0,
            segments: vec![seg(0x100, 16, false), seg(0x1000, 8, true)],
        };
        assert_eq!(b.process(0, &short, &mut m), 1);
        assert_eq!(m.as_slice()[0x1007], status::IOERR);
    }

    #[test]
    fn malformed_requests_get_ioerr_or_nothing() {
        let mut b = disk(8);
        let mut m = VecMemory::new(0x10000);
        // A header shorter than 16 bytes.
        let chain = Chain {
            head: 0,
            segments: vec![seg(0x100, 8, false), seg(0x4000, 1, true)],
        };
        assert_eq!(b.process(0, &chain, &mut m), 1);
        assert_eq!(m.as_slice()[0x4000], status::IOERR);
        // Nowhere to write the status.
        let chain = Chain {
            head: 0,
            segments: vec![seg(0x100, 16, false)],
        };
        assert_eq!(b.process(0, &chain, &mut m), 0);
    }

    #[test]
    fn large_requests_stream_through_the_bounce_buffer() {
        // 300 sectors: two full bounce buffers (256 sectors) and a part.
        const N: usize = 300;
        const _: () = assert!(N * 512 > BOUNCE_SIZE);
        let mut b = disk(N);
        let mut m = VecMemory::new(0x60000);
        for (i, x) in (0x1000..0x1000 + N * 512).enumerate() {
            m.write(x as u64, &[(i % 251) as u8]).unwrap();
        }
        header(&mut m, 0x100, request::OUT, 0);
        let chain = Chain {
            head: 0,
            segments: vec![
                seg(0x100, 16, false),
                seg(0x1000, (N * 512) as u32, false),
                seg(0x400, 1, true),
            ],
        };
        assert_eq!(b.process(0, &chain, &mut m), 1);
        assert_eq!(m.as_slice()[0x400], status::OK);
        assert_eq!(
            b.backend().as_slice(),
            &m.as_slice()[0x1000..0x1000 + N * 512]
        );
    }
}
