//! The command and control block registers of an ATA channel and the bits the driver
//! uses (ATA-7 v2, the register descriptions of the parallel transport), and the
//! opcodes of the commands it issues (ACS).

/// Offsets from the command block's base.
pub mod offset {
    /// Data (16 bits in PIO).
    pub const DATA: u16 = 0;
    /// Error when read, Features when written.
    pub const ERROR: u16 = 1;
    /// Sector Count (the high byte of a 48-bit count is written first, then the low).
    pub const COUNT: u16 = 2;
    /// LBA Low, Mid and High (48-bit addresses: bits 31:24, 39:32, 47:40 written
    /// first, then 7:0, 15:8, 23:16).
    pub const LBA_LOW: u16 = 3;
    pub const LBA_MID: u16 = 4;
    pub const LBA_HIGH: u16 = 5;
    /// Device: DEV (bit 4) selects the device, LBA (bit 6) the addressing mode.
    pub const DEVICE: u16 = 6;
    /// Status when read (clears a pending interrupt), Command when written.
    pub const STATUS: u16 = 7;
    pub const COMMAND: u16 = 7;
}

/// Status (and Alternate Status) bits.
pub mod status {
    /// BSY: the device owns the command block; nothing else in Status is valid.
    pub const BSY: u8 = 1 << 7;
    /// DRDY: the device accepts commands.
    pub const DRDY: u8 = 1 << 6;
    /// DF: device fault.
    pub const DF: u8 = 1 << 5;
    /// DRQ: the device is ready to move a data block through the Data register.
    pub const DRQ: u8 = 1 << 3;
    /// ERR: the Error register says what went wrong.
    pub const ERR: u8 = 1 << 0;
}

/// Error register bits after a failed command (ACS, the normal and error outputs
/// of each command).
pub mod error {
    /// ICRC: interface CRC error.
    pub const ICRC: u8 = 1 << 7;
    /// UNC: uncorrectable data.
    pub const UNC: u8 = 1 << 6;
    /// IDNF: the address was not found (outside the device, or unreadable ID).
    pub const IDNF: u8 = 1 << 4;
    /// ABRT: the command was aborted (not supported, or a bad parameter).
    pub const ABRT: u8 = 1 << 2;
}

/// Device Control bits (written to the control block port).
pub mod control {
    /// SRST: software reset of both devices on the channel while set.
    pub const SRST: u8 = 1 << 2;
    /// nIEN: the device does not assert INTRQ (the driver polls).
    pub const NIEN: u8 = 1 << 1;
}

/// The Device register's LBA bit (48-bit commands set it; ACS says it is
/// "obsolete" for them but several devices and emulators want it), and the bits 7
/// and 5 that old devices expect set.
pub const DEVICE_LBA: u8 = 1 << 6;
pub const DEVICE_OBSOLETE: u8 = (1 << 7) | (1 << 5);

/// Command opcodes (ACS).
pub mod command {
    /// READ SECTORS EXT: PIO data-in, 48-bit LBA.
    pub const READ_SECTORS_EXT: u8 = 0x24;
    /// WRITE SECTORS EXT: PIO data-out, 48-bit LBA.
    pub const WRITE_SECTORS_EXT: u8 = 0x34;
    /// FLUSH CACHE EXT: commit the volatile write cache.
    pub const FLUSH_CACHE_EXT: u8 = 0xEA;
    /// IDENTIFY DEVICE: 256 words of PIO data-in.
    pub const IDENTIFY_DEVICE: u8 = 0xEC;
}

/// The reset signatures in LBA Mid / LBA High after a reset or a refused IDENTIFY
/// DEVICE (ATA-7 v2, "signature and persistence"; SATA 2.6 for the serial ones).
pub mod signature {
    pub const ATA: (u8, u8) = (0x00, 0x00);
    pub const ATAPI: (u8, u8) = (0x14, 0xEB);
    pub const SATA: (u8, u8) = (0x3C, 0xC3);
    pub const SATAPI: (u8, u8) = (0x69, 0x96);
}
