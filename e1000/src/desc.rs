//! The legacy descriptor formats: 16 bytes each, little-endian.

/// Receive descriptor (8254x SDM §3.2.3): buffer address (0..8), length (8..10),
/// packet checksum (10..12), status (12), errors (13), special (14..16).
pub const RX_LENGTH: u64 = 8;
/// The dword holding status, errors and special.
pub const RX_STATUS_DWORD: u64 = 12;
/// Status bits (§3.2.3.1): Descriptor Done, End Of Packet.
pub const RX_DD: u8 = 1 << 0;
pub const RX_EOP: u8 = 1 << 1;

/// Transmit descriptor, legacy format (§3.3.3): buffer address (0..8), length
/// (8..10), CSO (10), CMD (11), STA (12), CSS (13), special (14..16).
pub const TX_STATUS_DWORD: u64 = 12;
/// CMD bits (§3.3.3.1): End Of Packet, Insert FCS, Report Status.
pub const TX_CMD_EOP: u8 = 1 << 0;
pub const TX_CMD_IFCS: u8 = 1 << 1;
pub const TX_CMD_RS: u8 = 1 << 3;
/// STA: Descriptor Done (§3.3.3.2).
pub const TX_DD: u8 = 1 << 0;

pub const SIZE: usize = 16;

/// A receive descriptor handed to the device: its buffer, everything else zero (so
/// a stale DD from the previous round cannot be mistaken for a new frame).
pub fn rx(buffer: u64) -> [u8; SIZE] {
    let mut d = [0; SIZE];
    d[..8].copy_from_slice(&buffer.to_le_bytes());
    d
}

/// A transmit descriptor for one whole frame of `len` bytes at `buffer`: end of
/// packet, the device appends the CRC, and reports status (DD) when done.
pub fn tx(buffer: u64, len: u16) -> [u8; SIZE] {
    let mut d = [0; SIZE];
    d[..8].copy_from_slice(&buffer.to_le_bytes());
    d[8..10].copy_from_slice(&len.to_le_bytes());
    d[11] = TX_CMD_EOP | TX_CMD_IFCS | TX_CMD_RS;
    d
}
