//! One submission/completion queue pair in DMA memory, driven one command at a time
//! (NVMe 1.4 §4.1: circular queues, tail doorbells, phase tags).

use crate::command::{Completion, Submission};
use crate::regs::Capabilities;
use crate::{Dma, Registers, PAGE_SIZE};

pub const SQ_ENTRY_BYTES: usize = 64;
pub const CQ_ENTRY_BYTES: usize = 16;

pub struct QueuePair {
    pub qid: u16,
    /// Entries in each of the two queues (at least 2).
    pub entries: u16,
    pub sq_phys: u64,
    pub cq_phys: u64,
    sq_tail: u16,
    cq_head: u16,
    /// The phase tag that marks a new completion entry: 1 on the first pass through
    /// the completion queue, inverted at each wrap (NVMe 1.4 §4.6).
    phase: bool,
    next_cid: u16,
}

/// Pages for `entries` entries of `entry_bytes`.
pub fn pages_for(entries: u16, entry_bytes: usize) -> usize {
    (usize::from(entries) * entry_bytes).div_ceil(PAGE_SIZE)
}

impl QueuePair {
    /// Allocates both queues (zeroed: no entry carries phase 1 yet).
    pub fn new<D: Dma>(dma: &mut D, qid: u16, entries: u16) -> Option<Self> {
        let sq_phys = dma.alloc(pages_for(entries, SQ_ENTRY_BYTES))?;
        let Some(cq_phys) = dma.alloc(pages_for(entries, CQ_ENTRY_BYTES)) else {
            dma.free(sq_phys, pages_for(entries, SQ_ENTRY_BYTES));
            return None;
        };
        Some(Self {
            qid,
            entries,
            sq_phys,
            cq_phys,
            sq_tail: 0,
            cq_head: 0,
            phase: true,
            next_cid: 0,
        })
    }

    pub fn free<D: Dma>(&self, dma: &mut D) {
        dma.free(self.sq_phys, pages_for(self.entries, SQ_ENTRY_BYTES));
        dma.free(self.cq_phys, pages_for(self.entries, CQ_ENTRY_BYTES));
    }

    /// Places `cmd` at the tail and rings the tail doorbell; returns its command ID.
    /// With one command outstanding at a time the queue can never be full.
    pub fn submit<D: Dma, R: Registers>(
        &mut self,
        dma: &mut D,
        regs: &mut R,
        cap: &Capabilities,
        cmd: &Submission,
    ) -> u16 {
        let cid = self.next_cid;
        self.next_cid = self.next_cid.wrapping_add(1);
        let slot = self.sq_phys + u64::from(self.sq_tail) * SQ_ENTRY_BYTES as u64;
        dma.write(slot, &cmd.encode(cid));
        self.sq_tail = (self.sq_tail + 1) % self.entries;
        regs.write32(cap.doorbell(self.qid, false), u32::from(self.sq_tail));
        cid
    }

    /// The entry at the completion head if the controller has posted it (its phase
    /// tag matches the current phase); consumes it and rings the head doorbell.
    pub fn poll<D: Dma, R: Registers>(
        &mut self,
        dma: &mut D,
        regs: &mut R,
        cap: &Capabilities,
    ) -> Option<Completion> {
        let slot = self.cq_phys + u64::from(self.cq_head) * CQ_ENTRY_BYTES as u64;
        // Dword 3 holds the phase tag; the controller writes the entry before it
        // can be seen with the new phase, so dword 2 is read only after.
        let dw3 = dma.read_u32(slot + 12);
        if (dw3 & (1 << 16) != 0) != self.phase {
            return None;
        }
        let dw2 = dma.read_u32(slot + 8);
        self.cq_head += 1;
        if self.cq_head == self.entries {
            self.cq_head = 0;
            self.phase = !self.phase;
        }
        regs.write32(cap.doorbell(self.qid, true), u32::from(self.cq_head));
        Some(Completion::decode(dw2, dw3))
    }
}
