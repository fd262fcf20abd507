//! Submission and completion queue entries (NVMe 1.4 §4.2, §4.6) and the opcodes the
//! driver sends.

/// Admin opcodes (NVMe 1.4 Figure 139).
pub mod admin {
    pub const DELETE_IO_SQ: u8 = 0x00;
    pub const CREATE_IO_SQ: u8 = 0x01;
    pub const DELETE_IO_CQ: u8 = 0x04;
    pub const CREATE_IO_CQ: u8 = 0x05;
    pub const IDENTIFY: u8 = 0x06;
}

/// NVM command set opcodes (NVMe 1.4 Figure 346).
pub mod io {
    pub const FLUSH: u8 = 0x00;
    pub const WRITE: u8 = 0x01;
    pub const READ: u8 = 0x02;
}

/// A 64-byte submission queue entry (NVMe 1.4 Figure 105): always PRPs (PSDT 00), no
/// fused operation, no metadata pointer.
#[derive(Clone, Copy, Debug, Default)]
pub struct Submission {
    pub opcode: u8,
    pub nsid: u32,
    pub prp1: u64,
    pub prp2: u64,
    /// Command dwords 10 to 15.
    pub cdw: [u32; 6],
}

impl Submission {
    pub fn encode(&self, cid: u16) -> [u8; 64] {
        let mut e = [0u8; 64];
        let cdw0 = u32::from(self.opcode) | (u32::from(cid) << 16);
        e[0..4].copy_from_slice(&cdw0.to_le_bytes());
        e[4..8].copy_from_slice(&self.nsid.to_le_bytes());
        e[24..32].copy_from_slice(&self.prp1.to_le_bytes());
        e[32..40].copy_from_slice(&self.prp2.to_le_bytes());
        for (i, dw) in self.cdw.iter().enumerate() {
            e[40 + 4 * i..44 + 4 * i].copy_from_slice(&dw.to_le_bytes());
        }
        e
    }
}

/// The parts of a 16-byte completion queue entry (NVMe 1.4 Figure 121) the driver
/// reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    pub sq_head: u16,
    pub sqid: u16,
    pub cid: u16,
    pub phase: bool,
    /// The status field without the phase tag (dword 3 bits 31:17).
    pub status: u16,
}

impl Completion {
    pub fn decode(dw2: u32, dw3: u32) -> Self {
        Self {
            sq_head: dw2 as u16,
            sqid: (dw2 >> 16) as u16,
            cid: dw3 as u16,
            phase: dw3 & (1 << 16) != 0,
            status: (dw3 >> 17) as u16,
        }
    }

    /// Status code (bits 7:0 of the status field, NVMe 1.4 Figure 124).
    pub fn sc(&self) -> u8 {
        self.status as u8
    }

    /// Status code type (bits 10:8).
    pub fn sct(&self) -> u8 {
        ((self.status >> 8) & 0x7) as u8
    }

    /// Do Not Retry (bit 14).
    pub fn dnr(&self) -> bool {
        self.status & (1 << 14) != 0
    }
}
