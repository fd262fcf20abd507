//! Controller bring-up (NVMe 1.4 §7.6.1), the admin commands that set up one I/O queue
//! pair, and synchronous command execution with polled completions and time limits.

use alloc::string::String;

use crate::command::{admin, Completion, Submission};
use crate::identify::{self, ControllerData, NamespaceData};
use crate::queue::QueuePair;
use crate::regs::{self, Capabilities};
use crate::{Clock, Dma, Error, Registers, PAGE_SIZE};

/// Admin queue entries (fewer if CAP.MQES allows fewer): the driver has one admin
/// command outstanding at a time, so a small queue is enough.
pub const ADMIN_QUEUE_ENTRIES: u16 = 32;
/// I/O queue entries (fewer if CAP.MQES allows fewer).
pub const IO_QUEUE_ENTRIES: u16 = 64;
/// Bytes of driver-owned bounce pages, the most one command moves (less if MDTS
/// says so). 32 pages: one PRP list page always suffices (NVMe 1.4 §4.3).
pub const MAX_BOUNCE_BYTES: usize = 128 * 1024;
/// How long one command may take before the controller is declared unusable.
pub const COMMAND_TIMEOUT_MS: u64 = 5_000;

const BOUNCE_PAGES: usize = MAX_BOUNCE_BYTES / PAGE_SIZE;

/// What the controller and namespace 1 told the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    /// Version register (VS): major in bits 31:16, minor 15:8.
    pub version: u32,
    pub vid: u16,
    pub model: String,
    pub serial: String,
    pub firmware: String,
    /// MDTS in bytes; `None` when the controller sets no limit.
    pub mdts_bytes: Option<u64>,
    /// The most one command transfers: MDTS or the bounce buffer, the smaller.
    pub max_transfer_bytes: usize,
    /// Namespace 1: logical blocks and their data size (512 or 4096).
    pub lba_count: u64,
    pub lba_bytes: u32,
    pub io_queue_entries: u16,
}

/// A controller brought up with namespace 1 and one I/O queue pair. Dropping it
/// disables the controller and, once it has stopped, frees its DMA memory.
pub struct Controller<R: Registers, D: Dma, C: Clock> {
    pub(crate) regs: R,
    pub(crate) dma: D,
    pub(crate) clock: C,
    pub(crate) cap: Capabilities,
    admin: QueuePair,
    io: Option<QueuePair>,
    /// `BOUNCE_PAGES` contiguous pages: data of every transfer and identify data.
    pub(crate) bounce: u64,
    /// One page of PRP entries for transfers over two pages.
    pub(crate) prp_list: u64,
    pub(crate) info: Info,
    /// Set when a command timed out or an unexpected completion arrived: the
    /// controller may still write to the queues and the bounce pages, so nothing
    /// more is submitted.
    pub(crate) broken: bool,
}

impl<R: Registers, D: Dma, C: Clock> Controller<R, D, C> {
    /// Brings the controller up (NVMe 1.4 §7.6.1): checks CAP, disables it, sets up
    /// the admin queues and CC, enables it, identifies it and namespace 1 and creates
    /// one I/O completion and submission queue (polled, interrupts off).
    pub fn new(mut regs: R, mut dma: D, mut clock: C) -> Result<Self, Error> {
        let cap = Capabilities::decode(regs.read64(regs::CAP));
        if cap.css & 1 == 0 {
            return Err(Error::Unsupported(
                "NVM command set not supported (CAP.CSS)",
            ));
        }
        if cap.mpsmin != 0 {
            return Err(Error::Unsupported(
                "memory pages of 4 KiB not supported (CAP.MPSMIN)",
            ));
        }
        if cap.mqes == 0 {
            return Err(Error::Unsupported("CAP.MQES is 0 (reserved)"));
        }
        // NVMe 1.4 §3.1.6: changing CC.EN while CSTS.RDY still shows the previous
        // change has undefined results, so a controller in transition is waited for.
        let cc = regs.read32(regs::CC);
        if cc & regs::CC_EN != 0 {
            wait_ready(&mut regs, &mut clock, &cap, true)?;
            regs.write32(regs::CC, cc & !regs::CC_EN);
        }
        wait_ready(&mut regs, &mut clock, &cap, false)?;

        let admin_entries = ADMIN_QUEUE_ENTRIES.min(cap.mqes.saturating_add(1));
        let admin = QueuePair::new(&mut dma, 0, admin_entries).ok_or(Error::OutOfMemory)?;
        let Some(bounce) = dma.alloc(BOUNCE_PAGES) else {
            admin.free(&mut dma);
            return Err(Error::OutOfMemory);
        };
        let Some(prp_list) = dma.alloc(1) else {
            admin.free(&mut dma);
            dma.free(bounce, BOUNCE_PAGES);
            return Err(Error::OutOfMemory);
        };
        let mut ctrl = Self {
            regs,
            dma,
            clock,
            cap,
            admin,
            io: None,
            bounce,
            prp_list,
            info: Info {
                version: 0,
                vid: 0,
                model: String::new(),
                serial: String::new(),
                firmware: String::new(),
                mdts_bytes: None,
                max_transfer_bytes: 0,
                lba_count: 0,
                lba_bytes: 0,
                io_queue_entries: 0,
            },
            broken: false,
        };
        // On failure `ctrl` is dropped, which disables the controller before its
        // memory goes back.
        ctrl.enable()?;
        ctrl.identify()?;
        ctrl.create_io_queues()?;
        Ok(ctrl)
    }

    pub fn info(&self) -> &Info {
        &self.info
    }

    fn enable(&mut self) -> Result<(), Error> {
        let n = u32::from(self.admin.entries - 1);
        // Polled: mask every pin-based interrupt vector (NVMe 1.4 §3.1.3).
        self.regs.write32(regs::INTMS, u32::MAX);
        self.regs.write32(regs::AQA, n | (n << 16));
        self.regs.write64(regs::ASQ, self.admin.sq_phys);
        self.regs.write64(regs::ACQ, self.admin.cq_phys);
        self.regs.write32(regs::CC, regs::CC_CONFIG);
        self.regs.write32(regs::CC, regs::CC_CONFIG | regs::CC_EN);
        wait_ready(&mut self.regs, &mut self.clock, &self.cap, true)?;
        self.info.version = self.regs.read32(regs::VS);
        Ok(())
    }

    fn identify(&mut self) -> Result<(), Error> {
        let mut page = [0u8; PAGE_SIZE];
        // CNS 01h: Identify Controller (NVMe 1.4 Figure 244).
        self.admin_command(&Submission {
            opcode: admin::IDENTIFY,
            prp1: self.bounce,
            cdw: [1, 0, 0, 0, 0, 0],
            ..Default::default()
        })?;
        self.dma.read(self.bounce, &mut page);
        let ControllerData {
            vid,
            serial,
            model,
            firmware,
            mdts,
            nn,
        } = identify::parse_controller(&page)?;
        if nn == 0 {
            return Err(Error::NoNamespace);
        }
        // CNS 00h: Identify Namespace 1.
        self.admin_command(&Submission {
            opcode: admin::IDENTIFY,
            nsid: 1,
            prp1: self.bounce,
            ..Default::default()
        })?;
        self.dma.read(self.bounce, &mut page);
        let NamespaceData { nsze, lba_bytes } = identify::parse_namespace(&page)?;
        // MDTS counts CAP.MPSMIN-sized pages, 4 KiB here (checked above).
        let mdts_bytes = match mdts {
            0 => None,
            m => Some(if m < 52 {
                (PAGE_SIZE as u64) << m
            } else {
                u64::MAX
            }),
        };
        let max_transfer_bytes = mdts_bytes.map_or(MAX_BOUNCE_BYTES, |m| {
            (MAX_BOUNCE_BYTES as u64).min(m) as usize
        });
        // The namespace must be addressable in 512-byte units without overflow.
        if nsze.checked_mul(u64::from(lba_bytes)).is_none() {
            return Err(Error::Unsupported("namespace size overflows (NSZE)"));
        }
        self.info = Info {
            vid,
            model,
            serial,
            firmware,
            mdts_bytes,
            max_transfer_bytes,
            lba_count: nsze,
            lba_bytes,
            ..self.info.clone()
        };
        Ok(())
    }

    fn create_io_queues(&mut self) -> Result<(), Error> {
        let entries = IO_QUEUE_ENTRIES.min(self.cap.mqes.saturating_add(1));
        let io = QueuePair::new(&mut self.dma, 1, entries).ok_or(Error::OutOfMemory)?;
        let size_and_id = (u32::from(entries - 1) << 16) | u32::from(io.qid);
        let (sq, cq) = (io.sq_phys, io.cq_phys);
        // Kept before the commands so that a failure frees it with the controller.
        self.io = Some(io);
        // Create I/O Completion Queue (NVMe 1.4 §5.3): physically contiguous (PC,
        // bit 0), interrupts disabled (IEN, bit 1, clear): completions are polled.
        self.admin_command(&Submission {
            opcode: admin::CREATE_IO_CQ,
            prp1: cq,
            cdw: [size_and_id, 1, 0, 0, 0, 0],
            ..Default::default()
        })?;
        // Create I/O Submission Queue (§5.4): completions to CQ 1, contiguous.
        self.admin_command(&Submission {
            opcode: admin::CREATE_IO_SQ,
            prp1: sq,
            cdw: [size_and_id, (1 << 16) | 1, 0, 0, 0, 0],
            ..Default::default()
        })?;
        self.info.io_queue_entries = entries;
        Ok(())
    }

    /// Normal shutdown (NVMe 1.4 §7.6.2): deletes the I/O queues, sets CC.SHN and
    /// waits for CSTS.SHST to report completion, so the controller commits its
    /// volatile state (a real SSD otherwise counts an unsafe shutdown). Nothing can
    /// be sent afterwards: later calls fail with [`Error::Unusable`].
    pub fn shutdown(&mut self) -> Result<(), Error> {
        if self.io.is_some() {
            let qid = 1;
            self.admin_command(&Submission {
                opcode: admin::DELETE_IO_SQ,
                cdw: [qid, 0, 0, 0, 0, 0],
                ..Default::default()
            })?;
            self.admin_command(&Submission {
                opcode: admin::DELETE_IO_CQ,
                cdw: [qid, 0, 0, 0, 0, 0],
                ..Default::default()
            })?;
        }
        // From here on the queues are gone: whatever happens, nothing more is sent.
        self.broken = true;
        let cc = self.regs.read32(regs::CC);
        self.regs.write32(regs::CC, cc | regs::CC_SHN_NORMAL);
        let start = self.clock.now_us();
        loop {
            let csts = self.regs.read32(regs::CSTS);
            if csts & regs::CSTS_SHST_MASK == regs::CSTS_SHST_COMPLETE {
                return Ok(());
            }
            if csts & regs::CSTS_CFS != 0 {
                return Err(Error::ControllerFatal);
            }
            let waited = self.clock.now_us().saturating_sub(start);
            if waited > COMMAND_TIMEOUT_MS * 1000 {
                return Err(Error::Timeout {
                    what: "CSTS.SHST to report shutdown complete",
                    waited_ms: waited / 1000,
                });
            }
            self.clock.relax();
        }
    }

    fn admin_command(&mut self, cmd: &Submission) -> Result<Completion, Error> {
        self.execute(true, cmd)
    }

    /// Submits `cmd` on the admin or the I/O queue and polls for its completion.
    pub(crate) fn execute(
        &mut self,
        is_admin: bool,
        cmd: &Submission,
    ) -> Result<Completion, Error> {
        if self.broken {
            return Err(Error::Unusable);
        }
        let q = if is_admin {
            &mut self.admin
        } else {
            self.io.as_mut().ok_or(Error::Unusable)?
        };
        let cid = q.submit(&mut self.dma, &mut self.regs, &self.cap, cmd);
        let start = self.clock.now_us();
        loop {
            let q = if is_admin {
                &mut self.admin
            } else {
                self.io.as_mut().ok_or(Error::Unusable)?
            };
            if let Some(c) = q.poll(&mut self.dma, &mut self.regs, &self.cap) {
                if c.cid != cid || c.sqid != q.qid {
                    self.broken = true;
                    return Err(Error::BadCompletion {
                        expected_cid: cid,
                        cid: c.cid,
                        sqid: c.sqid,
                    });
                }
                if c.status != 0 {
                    return Err(Error::Command {
                        opcode: cmd.opcode,
                        admin: is_admin,
                        sct: c.sct(),
                        sc: c.sc(),
                        dnr: c.dnr(),
                    });
                }
                return Ok(c);
            }
            if self.regs.read32(regs::CSTS) & regs::CSTS_CFS != 0 {
                self.broken = true;
                return Err(Error::ControllerFatal);
            }
            let waited = self.clock.now_us().saturating_sub(start);
            if waited > COMMAND_TIMEOUT_MS * 1000 {
                self.broken = true;
                return Err(Error::Timeout {
                    what: if is_admin {
                        "an admin command's completion"
                    } else {
                        "an I/O command's completion"
                    },
                    waited_ms: waited / 1000,
                });
            }
            self.clock.relax();
        }
    }
}

/// Waits until CSTS.RDY equals `ready`, at most CAP.TO (NVMe 1.4 §3.1.1). CSTS.CFS
/// while enabling is a failure of its own.
fn wait_ready<R: Registers, C: Clock>(
    regs: &mut R,
    clock: &mut C,
    cap: &Capabilities,
    ready: bool,
) -> Result<(), Error> {
    let limit_us = cap.ready_timeout_ms() * 1000;
    let start = clock.now_us();
    loop {
        let csts = regs.read32(regs::CSTS);
        // All ones: the device is gone (a read of absent MMIO).
        if csts == u32::MAX {
            return Err(Error::Unsupported("CSTS reads all ones: no device answers"));
        }
        if ready && csts & regs::CSTS_CFS != 0 {
            return Err(Error::ControllerFatal);
        }
        if (csts & regs::CSTS_RDY != 0) == ready {
            return Ok(());
        }
        let waited = clock.now_us().saturating_sub(start);
        if waited > limit_us {
            return Err(Error::Timeout {
                what: if ready {
                    "CSTS.RDY to become 1 (enable)"
                } else {
                    "CSTS.RDY to become 0 (disable)"
                },
                waited_ms: waited / 1000,
            });
        }
        clock.relax();
    }
}

impl<R: Registers, D: Dma, C: Clock> Drop for Controller<R, D, C> {
    fn drop(&mut self) {
        // A controller reset (CC.EN 1 -> 0) deletes the I/O queues and stops all
        // DMA (NVMe 1.4 §7.3.2); the memory is only given back once it has stopped.
        let cc = self.regs.read32(regs::CC);
        self.regs.write32(regs::CC, cc & !regs::CC_EN);
        if wait_ready(&mut self.regs, &mut self.clock, &self.cap, false).is_err() {
            return;
        }
        self.admin.free(&mut self.dma);
        if let Some(io) = &self.io {
            io.free(&mut self.dma);
        }
        self.dma.free(self.bounce, BOUNCE_PAGES);
        self.dma.free(self.prp_list, 1);
    }
}
