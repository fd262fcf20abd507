//! Parsing the 256 words of IDENTIFY DEVICE data (ACS, IDENTIFY DEVICE, the data
//! table): every field comes from the device and is checked before it is used.

use alloc::string::String;

use crate::{Error, SECTOR_SIZE};

/// What the driver uses from IDENTIFY DEVICE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Model number (words 27-46), ASCII, trailing spaces removed.
    pub model: String,
    /// Serial number (words 10-19).
    pub serial: String,
    /// Firmware revision (words 23-26).
    pub firmware: String,
    /// User-addressable sectors with 48-bit commands (words 100-103).
    pub sectors: u64,
    /// The device reports a volatile write cache (word 82 bit 5): FLUSH CACHE EXT
    /// matters.
    pub write_cache: bool,
}

/// A word of the data, little-endian as it arrived through the Data register.
fn word(data: &[u16; 256], i: usize) -> u16 {
    data[i]
}

/// A word pair (82/83, 84/85, 106...) is valid only with bit 14 set and 15 clear.
fn valid(w: u16) -> bool {
    w & 0xC000 == 0x4000
}

/// The ASCII text of a string field: each word holds two characters, the first in
/// its high byte. Other bytes than printable ASCII become `?` so a hostile device
/// cannot put control characters into the log.
fn text(data: &[u16; 256], words: core::ops::Range<usize>) -> String {
    let mut s = String::new();
    for i in words {
        for b in word(data, i).to_be_bytes() {
            s.push(if (0x20..0x7F).contains(&b) {
                b as char
            } else {
                '?'
            });
        }
    }
    s.trim_end_matches(' ').trim_start_matches(' ').into()
}

impl Identity {
    /// Checks and parses the data of an IDENTIFY DEVICE command.
    pub fn parse(data: &[u16; 256]) -> Result<Identity, Error> {
        // Word 255: bits 7:0 = A5h mean bits 15:8 hold a checksum that makes the
        // sum of all 512 bytes zero (mod 256).
        let integrity = word(data, 255);
        if integrity & 0xFF == 0xA5 {
            let sum = data
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .fold(0u8, |a, b| a.wrapping_add(b));
            if sum != 0 {
                return Err(Error::Identify("the checksum in word 255 does not match"));
            }
        }
        // Word 0 bit 15: zero for an ATA device.
        if word(data, 0) & 0x8000 != 0 {
            return Err(Error::Identify("word 0 says it is not an ATA device"));
        }
        // Word 49 bit 9: LBA supported.
        if word(data, 49) & (1 << 9) == 0 {
            return Err(Error::Identify("no LBA addressing (word 49 bit 9)"));
        }
        // Word 83 bit 10: the 48-bit Address feature set (and with it READ/WRITE
        // SECTORS EXT and FLUSH CACHE EXT).
        let w83 = word(data, 83);
        if !valid(w83) || w83 & (1 << 10) == 0 {
            return Err(Error::Identify(
                "no 48-bit addressing (word 83 bit 10 clear or word 83 not valid)",
            ));
        }
        let sectors = (0..4).fold(0u64, |acc, i| {
            acc | u64::from(word(data, 100 + i)) << (16 * i)
        });
        if sectors == 0 {
            return Err(Error::Identify(
                "no 48-bit sector count (words 100-103 are 0)",
            ));
        }
        if sectors > 1 << 48 {
            return Err(Error::Identify(
                "48-bit sector count beyond 2^48 (words 100-103)",
            ));
        }
        // Words 106 and 117-118: a logical sector longer than 256 words is refused
        // (the rest of the hypervisor works in 512-byte sectors).
        let w106 = word(data, 106);
        if valid(w106) && w106 & (1 << 12) != 0 {
            let words = u32::from(word(data, 117)) | (u32::from(word(data, 118)) << 16);
            if words as usize * 2 != SECTOR_SIZE {
                return Err(Error::Identify(
                    "logical sectors are not 512 bytes (words 106, 117-118)",
                ));
            }
        }
        let w82 = word(data, 82);
        Ok(Identity {
            model: text(data, 27..47),
            serial: text(data, 10..20),
            firmware: text(data, 23..27),
            sectors,
            write_cache: valid(w83) && w82 & (1 << 5) != 0,
        })
    }
}
