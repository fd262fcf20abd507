//! Controller registers (NVMe 1.4 §3.1, Figure 78) and the fields the driver uses.

pub const CAP: usize = 0x00;
pub const VS: usize = 0x08;
pub const INTMS: usize = 0x0C;
pub const CC: usize = 0x14;
pub const CSTS: usize = 0x1C;
pub const AQA: usize = 0x24;
pub const ASQ: usize = 0x28;
pub const ACQ: usize = 0x30;
/// Doorbells start here (NVMe 1.4 §3.1.24); each is 4 << CAP.DSTRD bytes apart.
pub const DOORBELL_BASE: usize = 0x1000;

pub const CC_EN: u32 = 1;
/// CC.IOSQES (bits 19:16) = 6: 64-byte submission entries; CC.IOCQES (bits 23:20) =
/// 4: 16-byte completion entries (NVMe 1.4 §3.1.5). CSS 000 (NVM command set), MPS 0
/// (4 KiB pages), AMS 000 (round robin), SHN 00.
pub const CC_CONFIG: u32 = (6 << 16) | (4 << 20);
/// CC.SHN = 01b: normal shutdown notification (NVMe 1.4 §3.1.5).
pub const CC_SHN_NORMAL: u32 = 0b01 << 14;
pub const CSTS_RDY: u32 = 1;
/// CSTS.SHST (bits 3:2) = 10b: shutdown processing complete (NVMe 1.4 §3.1.6).
pub const CSTS_SHST_MASK: u32 = 0b11 << 2;
pub const CSTS_SHST_COMPLETE: u32 = 0b10 << 2;
pub const CSTS_CFS: u32 = 1 << 1;

/// The fields of CAP (NVMe 1.4 §3.1.1) the driver checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Maximum queue entries supported, 0's based (at least 1).
    pub mqes: u16,
    /// Worst-case time for CSTS.RDY to follow CC.EN, in 500 ms units.
    pub to: u8,
    /// Doorbell stride: doorbells are 4 << dstrd bytes apart.
    pub dstrd: u8,
    /// Command sets supported; bit 0 the NVM command set.
    pub css: u8,
    /// Minimum memory page size, 2 ^ (12 + mpsmin) bytes.
    pub mpsmin: u8,
}

impl Capabilities {
    pub fn decode(cap: u64) -> Self {
        Self {
            mqes: cap as u16,
            to: (cap >> 24) as u8,
            dstrd: ((cap >> 32) & 0xF) as u8,
            css: (cap >> 37) as u8,
            mpsmin: ((cap >> 48) & 0xF) as u8,
        }
    }

    /// The offset of queue `qid`'s submission tail (`completion` false) or
    /// completion head doorbell (NVMe 1.4 §3.1.24, §3.1.25).
    pub fn doorbell(&self, qid: u16, completion: bool) -> usize {
        DOORBELL_BASE + (2 * qid as usize + completion as usize) * (4usize << self.dstrd)
    }

    /// How long CSTS.RDY may take to follow CC.EN, in milliseconds (TO 0 is read as
    /// one unit rather than no time at all).
    pub fn ready_timeout_ms(&self) -> u64 {
        u64::from(self.to.max(1)) * 500
    }
}
