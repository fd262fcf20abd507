//! Split virtqueues (virtio 1.2 §2.7): the descriptor table, the driver area (the
//! available ring) and the device area (the used ring), all in guest RAM and all
//! read and written through [`GuestMemory`], so nothing the driver writes can make
//! the device touch memory outside the guest's RAM.
//!
//! Layout for a queue of size N (§2.7, table "Virtqueue Part Alignment and Size"):
//!
//! | part | alignment | size |
//! | --- | --- | --- |
//! | descriptor table | 16 | 16 * N |
//! | available ring: flags, idx, ring[N], used_event | 2 | 6 + 2 * N |
//! | used ring: flags, idx, ring[N] of (id, len), avail_event | 4 | 6 + 8 * N |
//!
//! Everything a hostile driver can get wrong is a [`QueueError`], which the transport
//! turns into DEVICE_NEEDS_RESET (§2.1.2): descriptor loops, indices past the table,
//! addresses outside RAM, chain lengths over u32, nested indirect tables, an
//! available index that moved by more than the queue size.

use alloc::vec::Vec;
use core::sync::atomic::{fence, Ordering};

use crate::memory::{GuestMemory, MemError};

/// The largest split queue (§2.7: Queue Size is at most 32768).
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Descriptor flags (§2.7.5).
pub mod desc_flags {
    /// The buffer continues in the descriptor named by `next`.
    pub const NEXT: u16 = 1;
    /// Device-writable (otherwise device-readable).
    pub const WRITE: u16 = 2;
    /// The buffer holds a table of descriptors (§2.7.5.3).
    pub const INDIRECT: u16 = 4;
}

/// Available ring flag: the driver needs no interrupt for used buffers (§2.7.7).
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used ring flag: the device needs no notifications (§2.7.10).
pub const VIRTQ_USED_F_NO_NOTIFY: u16 = 1;

/// What is wrong with a queue. Each one is the driver's fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// Queue Size 0, not a power of two, or above the device's maximum.
    BadSize(u16),
    /// A ring part is not aligned as §2.7 requires.
    Misaligned(u64),
    /// A ring part, descriptor or buffer lies (partly) outside guest RAM.
    Memory(MemError),
    /// The available index moved by more than the queue size since the last buffer
    /// the device took: it cannot be a count of new buffers.
    AvailJump { last: u16, idx: u16 },
    /// A head or `next` index past the descriptor table (or indirect table).
    IndexOutOfRange(u16),
    /// More descriptors in one chain than the queue size: a loop, or a chain the
    /// driver may not build (§2.7.5.2, §2.7.5.3.1).
    ChainTooLong,
    /// The chain's buffers add up to more than 2^32 - 1 bytes.
    LengthOverflow,
    /// An indirect descriptor inside an indirect table (§2.7.5.3.1: MUST NOT).
    NestedIndirect,
    /// INDIRECT together with NEXT (§2.7.5.3.1: MUST NOT).
    IndirectWithNext,
    /// An indirect table whose length is 0, not a multiple of 16, or holds more
    /// descriptors than the queue size.
    BadIndirectLength(u32),
    /// INDIRECT used without VIRTIO_F_INDIRECT_DESC negotiated.
    IndirectNotNegotiated,
    /// A device-readable descriptor after a device-writable one (§2.7.4.2).
    ReadAfterWrite,
}

impl From<MemError> for QueueError {
    fn from(e: MemError) -> Self {
        QueueError::Memory(e)
    }
}

/// One buffer of a chain: `len` bytes of guest RAM at `addr`, already checked to be
/// inside RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub addr: u64,
    pub len: u32,
    /// Device-writable.
    pub write: bool,
}

/// A descriptor chain taken from the available ring: device-readable segments first,
/// then device-writable ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// The head index, which goes back in the used ring.
    pub head: u16,
    pub segments: Vec<Segment>,
}

impl Chain {
    /// Bytes the device may read (at most 2^32 - 1: checked when the chain was built).
    pub fn readable_len(&self) -> u64 {
        self.segments
            .iter()
            .filter(|s| !s.write)
            .map(|s| u64::from(s.len))
            .sum()
    }

    /// Bytes the device may write.
    pub fn writable_len(&self) -> u64 {
        self.segments
            .iter()
            .filter(|s| s.write)
            .map(|s| u64::from(s.len))
            .sum()
    }
}

/// The features that change how a queue is read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueFeatures {
    /// VIRTIO_F_INDIRECT_DESC.
    pub indirect: bool,
    /// VIRTIO_F_EVENT_IDX: used_event/avail_event replace the ring flags (§2.7.10).
    pub event_idx: bool,
}

/// One split virtqueue's configuration (as the driver set it up through the
/// transport) and the device's position in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitQueue {
    /// The device's maximum, shown to the driver as the initial size.
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    /// Descriptor table, driver area (available ring), device area (used ring).
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
    /// The next available ring entry the device will take.
    pub last_avail: u16,
    /// The used index the device will publish next.
    pub next_used: u16,
}

/// A raw descriptor (§2.7.5).
#[derive(Clone, Copy, Debug)]
struct Descriptor {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

impl SplitQueue {
    pub const fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size,
            ready: false,
            desc: 0,
            driver: 0,
            device: 0,
            last_avail: 0,
            next_used: 0,
        }
    }

    /// Back to the state after a device reset (§2.4): disabled, maximum size, no
    /// addresses, indices 0.
    pub fn reset(&mut self) {
        *self = Self::new(self.max_size);
    }

    /// Checks what the driver configured before the queue is enabled: the size is
    /// a power of two no larger than the maximum (§2.7: "Queue Size value is always a
    /// power of 2"), the parts are aligned and entirely inside guest RAM.
    pub fn validate(&self, mem: &dyn GuestMemory) -> Result<(), QueueError> {
        let n = self.size;
        if n == 0 || !n.is_power_of_two() || n > self.max_size || n > MAX_QUEUE_SIZE {
            return Err(QueueError::BadSize(n));
        }
        let n = u64::from(n);
        for (addr, align, len) in [
            (self.desc, 16, 16 * n),
            (self.driver, 2, 6 + 2 * n),
            (self.device, 4, 6 + 8 * n),
        ] {
            if addr % align != 0 {
                return Err(QueueError::Misaligned(addr));
            }
            mem.check(addr, len)?;
        }
        Ok(())
    }

    /// The driver's available index.
    fn avail_idx(&self, mem: &dyn GuestMemory) -> Result<u16, QueueError> {
        Ok(mem.read_u16(self.driver + 2)?)
    }

    /// Whether buffers are waiting (an available index that jumped is an error).
    pub fn has_available(&self, mem: &dyn GuestMemory) -> Result<bool, QueueError> {
        let idx = self.avail_idx(mem)?;
        let pending = idx.wrapping_sub(self.last_avail);
        if pending > self.size {
            return Err(QueueError::AvailJump {
                last: self.last_avail,
                idx,
            });
        }
        Ok(pending != 0)
    }

    fn read_descriptor(mem: &dyn GuestMemory, addr: u64) -> Result<Descriptor, QueueError> {
        let mut b = [0u8; 16];
        mem.read(addr, &mut b)?;
        Ok(Descriptor {
            addr: u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            flags: u16::from_le_bytes([b[12], b[13]]),
            next: u16::from_le_bytes([b[14], b[15]]),
        })
    }

    /// Takes the next available chain, or `None` when the ring is empty. The queue
    /// must be enabled (its parts were validated then).
    pub fn pop(
        &mut self,
        mem: &dyn GuestMemory,
        features: QueueFeatures,
    ) -> Result<Option<Chain>, QueueError> {
        if !self.has_available(mem)? {
            return Ok(None);
        }
        // virtio 1.2 §2.7.13.3 (and Linux's virtio_rmb before reading ring
        // entries): the driver wrote the ring entry and the descriptors before it
        // published the index; read them only after the index.
        fence(Ordering::Acquire);
        let slot = u64::from(self.last_avail % self.size);
        let head = mem.read_u16(self.driver + 4 + 2 * slot)?;
        let segments = self.walk(mem, head, features)?;
        self.last_avail = self.last_avail.wrapping_add(1);
        Ok(Some(Chain { head, segments }))
    }

    /// Follows the chain at `head` through the descriptor table and at most one
    /// indirect table, checking every rule of §2.7.5.
    fn walk(
        &self,
        mem: &dyn GuestMemory,
        head: u16,
        features: QueueFeatures,
    ) -> Result<Vec<Segment>, QueueError> {
        let mut segments = Vec::new();
        // (table address, entries): the ring's table, or the indirect table once the
        // chain moved there.
        let mut table = (self.desc, u32::from(self.size));
        let mut indirect = false;
        let mut index = head;
        let mut total: u64 = 0;
        let mut writing = false;
        loop {
            if u32::from(index) >= table.1 {
                return Err(QueueError::IndexOutOfRange(index));
            }
            let d = Self::read_descriptor(mem, table.0 + 16 * u64::from(index))?;
            if d.flags & desc_flags::INDIRECT != 0 {
                // §2.7.5.3.1: the driver MUST NOT set INDIRECT inside an indirect
                // table, nor INDIRECT and NEXT together; the device ignores the
                // WRITE flag of the descriptor that refers to the table.
                if indirect {
                    return Err(QueueError::NestedIndirect);
                }
                if !features.indirect {
                    return Err(QueueError::IndirectNotNegotiated);
                }
                if d.flags & desc_flags::NEXT != 0 {
                    return Err(QueueError::IndirectWithNext);
                }
                let entries = d.len / 16;
                if d.len == 0 || d.len % 16 != 0 || entries > u32::from(self.size) {
                    return Err(QueueError::BadIndirectLength(d.len));
                }
                mem.check(d.addr, d.len.into())?;
                table = (d.addr, entries);
                indirect = true;
                index = 0;
                continue;
            }
            // Loop detection: no chain (ring descriptors and indirect ones together)
            // holds more buffers than the queue size (§2.7.5.3.1), so a longer one is
            // a loop or a driver bug; either way it ends here.
            if segments.len() >= usize::from(self.size) {
                return Err(QueueError::ChainTooLong);
            }
            total += u64::from(d.len);
            if total > u64::from(u32::MAX) {
                return Err(QueueError::LengthOverflow);
            }
            mem.check(d.addr, d.len.into())?;
            let write = d.flags & desc_flags::WRITE != 0;
            if writing && !write {
                return Err(QueueError::ReadAfterWrite);
            }
            writing = write;
            segments.push(Segment {
                addr: d.addr,
                len: d.len,
                write,
            });
            if d.flags & desc_flags::NEXT == 0 {
                return Ok(segments);
            }
            index = d.next;
        }
    }

    /// Returns the chain at `head` to the driver with `len` bytes written into it.
    pub fn add_used(
        &mut self,
        mem: &mut dyn GuestMemory,
        head: u16,
        len: u32,
    ) -> Result<(), QueueError> {
        let slot = u64::from(self.next_used % self.size);
        let elem = self.device + 4 + 8 * slot;
        mem.write_u32(elem, head.into())?;
        mem.write_u32(elem + 4, len)?;
        // virtio 1.2 §2.7.8.2 / §2.7.13.3: the used element (and the data written
        // into the buffer) must be visible before the driver can see the new index.
        fence(Ordering::Release);
        self.next_used = self.next_used.wrapping_add(1);
        mem.write_u16(self.device + 2, self.next_used)?;
        Ok(())
    }

    /// With VIRTIO_F_EVENT_IDX: tells the driver to notify once it makes the entry
    /// after the ones the device has taken available (avail_event, §2.7.10).
    pub fn set_avail_event(&self, mem: &mut dyn GuestMemory) -> Result<(), QueueError> {
        let at = self.device + 4 + 8 * u64::from(self.size);
        mem.write_u16(at, self.last_avail)?;
        Ok(())
    }

    /// Whether the driver wants an interrupt for the buffers used since the used
    /// index was `old_used` (§2.7.10, the driver's side of notification
    /// suppression).
    pub fn needs_interrupt(
        &self,
        mem: &dyn GuestMemory,
        features: QueueFeatures,
        old_used: u16,
    ) -> Result<bool, QueueError> {
        if self.next_used == old_used {
            return Ok(false);
        }
        // The new used index is published before the driver's suppression state is
        // read (a full barrier, as Linux's virtqueue_kick_prepare pairs with): a
        // driver that re-enables interrupts and then re-checks the used index either
        // sees our entries or we see its flags.
        fence(Ordering::SeqCst);
        if features.event_idx {
            let at = self.driver + 4 + 2 * u64::from(self.size);
            let used_event = mem.read_u16(at)?;
            Ok(need_event(used_event, self.next_used, old_used))
        } else {
            let flags = mem.read_u16(self.driver)?;
            Ok(flags & VIRTQ_AVAIL_F_NO_INTERRUPT == 0)
        }
    }
}

/// §2.7.10's vring_need_event: whether moving an index from `old` to `new` passed
/// `event` (all modulo 2^16).
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::memory::VecMemory;
    use alloc::vec;

    pub const DESC: u64 = 0x1000;
    pub const AVAIL: u64 = 0x2000;
    pub const USED: u64 = 0x3000;

    /// Writes descriptor `i` of the table at `table`, as a driver would.
    pub fn desc(
        mem: &mut VecMemory,
        table: u64,
        i: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let at = table + 16 * u64::from(i);
        mem.write_u64(at, addr).unwrap();
        mem.write_u32(at + 8, len).unwrap();
        mem.write_u16(at + 12, flags).unwrap();
        mem.write_u16(at + 14, next).unwrap();
    }

    /// A driver's view of a queue's available ring in a VecMemory, for tests.
    pub struct Driver {
        pub size: u16,
        pub avail_idx: u16,
    }

    impl Driver {
        pub fn publish(&mut self, mem: &mut VecMemory, head: u16) {
            self.publish_at(mem, AVAIL, head);
        }

        /// Makes chain `head` available in the ring at `avail`.
        pub fn publish_at(&mut self, mem: &mut VecMemory, avail: u64, head: u16) {
            let slot = u64::from(self.avail_idx % self.size);
            mem.write_u16(avail + 4 + 2 * slot, head).unwrap();
            self.avail_idx = self.avail_idx.wrapping_add(1);
            mem.write_u16(avail + 2, self.avail_idx).unwrap();
        }
    }

    fn queue(size: u16) -> (SplitQueue, VecMemory, Driver) {
        let mut q = SplitQueue::new(256);
        q.size = size;
        q.desc = DESC;
        q.driver = AVAIL;
        q.device = USED;
        q.ready = true;
        (q, VecMemory::new(0x10000), Driver { size, avail_idx: 0 })
    }

    const IND: QueueFeatures = QueueFeatures {
        indirect: true,
        event_idx: false,
    };

    #[test]
    fn validation_of_size_alignment_and_placement() {
        let (mut q, m, _) = queue(8);
        assert_eq!(q.validate(&m), Ok(()));
        for bad in [0u16, 3, 6, 512] {
            q.size = bad;
            assert_eq!(q.validate(&m), Err(QueueError::BadSize(bad)), "size {bad}");
        }
        q.size = 8;
        q.desc = DESC + 8;
        assert_eq!(q.validate(&m), Err(QueueError::Misaligned(DESC + 8)));
        q.desc = DESC;
        q.device = USED + 2;
        assert_eq!(q.validate(&m), Err(QueueError::Misaligned(USED + 2)));
        q.device = 0x10000 - 16;
        assert!(matches!(q.validate(&m), Err(QueueError::Memory(_))));
        q.device = u64::MAX - 3;
        assert!(matches!(q.validate(&m), Err(QueueError::Memory(_))));
    }

    #[test]
    fn direct_chain_with_readable_then_writable_buffers() {
        let (mut q, mut m, mut d) = queue(8);
        desc(&mut m, DESC, 0, 0x4000, 16, desc_flags::NEXT, 5);
        desc(
            &mut m,
            DESC,
            5,
            0x5000,
            512,
            desc_flags::NEXT | desc_flags::WRITE,
            2,
        );
        desc(&mut m, DESC, 2, 0x6000, 1, desc_flags::WRITE, 0);
        assert_eq!(q.pop(&m, IND), Ok(None));
        d.publish(&mut m, 0);
        let c = q.pop(&m, IND).unwrap().unwrap();
        assert_eq!(c.head, 0);
        assert_eq!(c.segments.len(), 3);
        assert_eq!((c.readable_len(), c.writable_len()), (16, 513));
        assert_eq!(q.pop(&m, IND), Ok(None));

        let old = q.next_used;
        q.add_used(&mut m, c.head, 513).unwrap();
        assert_eq!(m.read_u16(USED + 2).unwrap(), 1);
        assert_eq!(m.read_u32(USED + 4).unwrap(), 0);
        assert_eq!(m.read_u32(USED + 8).unwrap(), 513);
        assert_eq!(q.needs_interrupt(&m, IND, old), Ok(true));
        // VIRTQ_AVAIL_F_NO_INTERRUPT suppresses it.
        m.write_u16(AVAIL, VIRTQ_AVAIL_F_NO_INTERRUPT).unwrap();
        assert_eq!(q.needs_interrupt(&m, IND, old), Ok(false));
        assert_eq!(q.needs_interrupt(&m, IND, q.next_used), Ok(false));
    }

    #[test]
    fn indices_wrap_around_the_ring_and_u16() {
        let (mut q, mut m, mut d) = queue(4);
        desc(&mut m, DESC, 1, 0x4000, 4, 0, 0);
        q.last_avail = 0xFFFE;
        q.next_used = 0xFFFE;
        d.avail_idx = 0xFFFE;
        for _ in 0..4 {
            d.publish(&mut m, 1);
            let c = q.pop(&m, IND).unwrap().unwrap();
            q.add_used(&mut m, c.head, 0).unwrap();
        }
        assert_eq!(q.last_avail, 2);
        assert_eq!(m.read_u16(USED + 2).unwrap(), 2);
    }

    #[test]
    fn indirect_table() {
        let (mut q, mut m, mut d) = queue(8);
        let table = 0x8000;
        desc(
            &mut m,
            DESC,
            3,
            table,
            48,
            desc_flags::INDIRECT | desc_flags::WRITE,
            0,
        );
        desc(&mut m, table, 0, 0x4000, 16, desc_flags::NEXT, 1);
        desc(
            &mut m,
            table,
            1,
            0x4100,
            8,
            desc_flags::NEXT | desc_flags::WRITE,
            2,
        );
        desc(&mut m, table, 2, 0x4200, 1, desc_flags::WRITE, 0);
        d.publish(&mut m, 3);
        let c = q.pop(&m, IND).unwrap().unwrap();
        assert_eq!(c.head, 3);
        assert_eq!(
            c.segments,
            vec![
                Segment {
                    addr: 0x4000,
                    len: 16,
                    write: false
                },
                Segment {
                    addr: 0x4100,
                    len: 8,
                    write: true
                },
                Segment {
                    addr: 0x4200,
                    len: 1,
                    write: true
                },
            ]
        );
        // Direct descriptors may precede the indirect one (§2.7.5.3.2).
        desc(&mut m, DESC, 4, 0x4000, 16, desc_flags::NEXT, 3);
        d.publish(&mut m, 4);
        assert_eq!(q.pop(&m, IND).unwrap().unwrap().segments.len(), 4);
        // Without the feature it is an error.
        d.publish(&mut m, 3);
        assert_eq!(
            q.pop(&m, QueueFeatures::default()),
            Err(QueueError::IndirectNotNegotiated)
        );
    }

    fn hostile(setup: impl FnOnce(&mut VecMemory)) -> QueueError {
        let (mut q, mut m, mut d) = queue(8);
        setup(&mut m);
        d.publish(&mut m, 0);
        q.pop(&m, IND).unwrap_err()
    }

    #[test]
    fn descriptor_loops_end() {
        // 0 -> 1 -> 0 -> ...
        let e = hostile(|m| {
            desc(m, DESC, 0, 0x4000, 1, desc_flags::NEXT, 1);
            desc(m, DESC, 1, 0x4000, 1, desc_flags::NEXT, 0);
        });
        assert_eq!(e, QueueError::ChainTooLong);
        // A self-loop inside an indirect table.
        let e = hostile(|m| {
            desc(m, DESC, 0, 0x8000, 32, desc_flags::INDIRECT, 0);
            desc(m, 0x8000, 0, 0x4000, 1, desc_flags::NEXT, 1);
            desc(m, 0x8000, 1, 0x4000, 1, desc_flags::NEXT, 1);
        });
        assert_eq!(e, QueueError::ChainTooLong);
    }

    #[test]
    fn addresses_past_ram_and_bad_indices() {
        let e = hostile(|m| desc(m, DESC, 0, 0xFFF0, 0x20, 0, 0));
        assert!(matches!(e, QueueError::Memory(_)));
        let e = hostile(|m| desc(m, DESC, 0, u64::MAX - 4, 0x20, 0, 0));
        assert!(matches!(e, QueueError::Memory(_)));
        let e = hostile(|m| desc(m, DESC, 0, 0x4000, 1, desc_flags::NEXT, 8));
        assert_eq!(e, QueueError::IndexOutOfRange(8));
        // An indirect table outside RAM.
        let e = hostile(|m| desc(m, DESC, 0, 0xFFF0, 32, desc_flags::INDIRECT, 0));
        assert!(matches!(e, QueueError::Memory(_)));
        // A head past the table.
        let (mut q, mut m, mut d) = queue(8);
        d.publish(&mut m, 9);
        assert_eq!(q.pop(&m, IND), Err(QueueError::IndexOutOfRange(9)));
    }

    #[test]
    fn lengths_past_u32() {
        // 4096 buffers of 1 MiB (all the same RAM: nothing forbids that) add up to
        // 4 GiB, one byte more than the used ring's u32 length can say.
        let mut q = SplitQueue::new(MAX_QUEUE_SIZE);
        q.size = 8192;
        q.desc = 0x80000;
        q.driver = AVAIL;
        q.device = USED;
        q.ready = true;
        let mut m = VecMemory::new(1 << 20);
        let mut d = Driver {
            size: 8192,
            avail_idx: 0,
        };
        for i in 0..4096u16 {
            desc(&mut m, q.desc, i, 0, 1 << 20, desc_flags::NEXT, i + 1);
        }
        desc(&mut m, q.desc, 4095, 0, 1 << 20, 0, 0);
        d.publish(&mut m, 0);
        assert_eq!(q.pop(&m, IND), Err(QueueError::LengthOverflow));
        // One byte less is a valid chain.
        desc(&mut m, q.desc, 4095, 0, (1 << 20) - 1, 0, 0);
        q.last_avail = 0;
        let c = q.pop(&m, IND).unwrap().unwrap();
        assert_eq!(c.readable_len(), u64::from(u32::MAX));
        // One buffer of 4 GiB - 1 is within u32 but not within this RAM.
        let e = hostile(|m| desc(m, DESC, 0, 0x4000, u32::MAX, 0, 0));
        assert!(matches!(e, QueueError::Memory(_)));
    }

    #[test]
    fn broken_indirect_tables() {
        let e = hostile(|m| {
            desc(m, DESC, 0, 0x8000, 32, desc_flags::INDIRECT, 0);
            desc(m, 0x8000, 0, 0x9000, 16, desc_flags::INDIRECT, 0);
        });
        assert_eq!(e, QueueError::NestedIndirect);
        let e = hostile(|m| {
            desc(
                m,
                DESC,
                0,
                0x8000,
                32,
                desc_flags::INDIRECT | desc_flags::NEXT,
                1,
            )
        });
        assert_eq!(e, QueueError::IndirectWithNext);
        for len in [0u32, 17, 16 * 9, u32::MAX - 15] {
            let e = hostile(|m| desc(m, DESC, 0, 0x8000, len, desc_flags::INDIRECT, 0));
            assert_eq!(e, QueueError::BadIndirectLength(len));
        }
    }

    #[test]
    fn readable_after_writable_is_refused() {
        let e = hostile(|m| {
            desc(
                m,
                DESC,
                0,
                0x4000,
                1,
                desc_flags::WRITE | desc_flags::NEXT,
                1,
            );
            desc(m, DESC, 1, 0x4000, 1, 0, 0);
        });
        assert_eq!(e, QueueError::ReadAfterWrite);
    }

    #[test]
    fn avail_index_jumping_past_the_queue_size() {
        let (mut q, mut m, _) = queue(8);
        m.write_u16(AVAIL + 2, 9).unwrap();
        assert_eq!(
            q.pop(&m, IND),
            Err(QueueError::AvailJump { last: 0, idx: 9 })
        );
        // Exactly a full ring is fine.
        m.write_u16(AVAIL + 2, 8).unwrap();
        assert!(q.has_available(&m).unwrap());
    }

    #[test]
    fn event_idx_suppression() {
        let ev = QueueFeatures {
            indirect: false,
            event_idx: true,
        };
        assert!(need_event(0, 1, 0));
        assert!(!need_event(1, 1, 0));
        assert!(need_event(0xFFFF, 0, 0xFFFE));
        let (mut q, mut m, mut d) = queue(8);
        desc(&mut m, DESC, 0, 0x4000, 1, 0, 0);
        // The driver asks for an interrupt only after the second used buffer.
        m.write_u16(AVAIL + 4 + 2 * 8, 1).unwrap();
        // Flags are ignored with EVENT_IDX.
        m.write_u16(AVAIL, VIRTQ_AVAIL_F_NO_INTERRUPT).unwrap();
        for expect in [false, true, false] {
            d.publish(&mut m, 0);
            let c = q.pop(&m, ev).unwrap().unwrap();
            let old = q.next_used;
            q.add_used(&mut m, c.head, 0).unwrap();
            assert_eq!(q.needs_interrupt(&m, ev, old), Ok(expect));
        }
        q.set_avail_event(&mut m).unwrap();
        assert_eq!(m.read_u16(USED + 4 + 8 * 8).unwrap(), 3);
    }
}
