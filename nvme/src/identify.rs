//! Parsing the Identify data structures (NVMe 1.4 §5.15.2): the controller's (CNS 01h,
//! Figure 247) and a namespace's (CNS 00h, Figure 245). Every field read comes from
//! the device and is checked before use.

use alloc::string::String;

use crate::Error;

/// What the driver uses from Identify Controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerData {
    /// PCI vendor ID (bytes 1:0).
    pub vid: u16,
    /// Serial number (bytes 23:4), ASCII, trailing spaces removed.
    pub serial: String,
    /// Model number (bytes 63:24).
    pub model: String,
    /// Firmware revision (bytes 71:64).
    pub firmware: String,
    /// Maximum data transfer size (byte 77): 2^mdts minimum-size pages, 0 = no limit.
    pub mdts: u8,
    /// Number of namespaces (bytes 519:516).
    pub nn: u32,
}

/// What the driver uses from Identify Namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NamespaceData {
    /// Namespace size in logical blocks (bytes 7:0).
    pub nsze: u64,
    /// Bytes of data per logical block in the format in use (FLBAS, LBAF.LBADS).
    pub lba_bytes: u32,
}

/// The ASCII text of a fixed-width, space-padded field; other bytes become `?` so a
/// hostile device cannot put control characters into the log.
fn ascii(field: &[u8]) -> String {
    let text: String = field
        .iter()
        .map(|&b| {
            if (0x20..0x7F).contains(&b) {
                b as char
            } else {
                '?'
            }
        })
        .collect();
    String::from(text.trim_end_matches([' ', '?']).trim_start())
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from(le32(b, at)) | (u64::from(le32(b, at + 4)) << 32)
}

pub fn parse_controller(data: &[u8; 4096]) -> Result<ControllerData, Error> {
    // SQES/CQES (bytes 512, 513): bits 3:0 are the required (minimum) entry size as
    // a power of two; the driver uses 64 and 16 bytes (NVMe 1.4 Figure 247).
    if data[512] & 0xF > 6 || data[512] >> 4 < 6 {
        return Err(Error::Unsupported(
            "64-byte submission queue entries not supported (SQES)",
        ));
    }
    if data[513] & 0xF > 4 || data[513] >> 4 < 4 {
        return Err(Error::Unsupported(
            "16-byte completion queue entries not supported (CQES)",
        ));
    }
    Ok(ControllerData {
        vid: le16(data, 0),
        serial: ascii(&data[4..24]),
        model: ascii(&data[24..64]),
        firmware: ascii(&data[64..72]),
        mdts: data[77],
        nn: le32(data, 516),
    })
}

pub fn parse_namespace(data: &[u8; 4096]) -> Result<NamespaceData, Error> {
    let nsze = le64(data, 0);
    if nsze == 0 {
        return Err(Error::NoNamespace);
    }
    // FLBAS bits 3:0 select one of NLBAF + 1 formats (NLBAF is 0's based, at most
    // 15); LBAF n is at byte 128 + 4n: MS bits 15:0, LBADS bits 23:16 (Figure 245).
    let nlbaf = data[25];
    let index = data[26] & 0xF;
    if index > nlbaf {
        return Err(Error::Unsupported(
            "FLBAS selects an LBA format beyond NLBAF",
        ));
    }
    let lbaf = le32(data, 128 + 4 * usize::from(index));
    let metadata_bytes = lbaf as u16;
    let lbads = (lbaf >> 16) as u8;
    // LBADS below 9 is not supported by the specification; large values cannot be
    // shifted. Report the refused size exactly where it is representable.
    let data_bytes = if lbads < 64 { 1u64 << lbads } else { u64::MAX };
    if metadata_bytes != 0 || !(data_bytes == 512 || data_bytes == 4096) {
        return Err(Error::LbaFormat {
            data_bytes,
            metadata_bytes,
        });
    }
    Ok(NamespaceData {
        nsze,
        lba_bytes: data_bytes as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controller_page() -> [u8; 4096] {
        let mut p = [0u8; 4096];
        p[512] = 0x66;
        p[513] = 0x44;
        p
    }

    #[test]
    fn text_fields_are_trimmed_and_control_bytes_replaced() {
        let mut p = controller_page();
        p[4..24].copy_from_slice(b"  sn\x1b[2J            ");
        p[24..64].fill(b' ');
        p[24..29].copy_from_slice(b"Disk\n");
        let c = parse_controller(&p).unwrap();
        assert_eq!(c.serial, "sn?[2J");
        assert_eq!(c.model, "Disk");
    }

    #[test]
    fn queue_entry_sizes_are_checked() {
        let mut p = controller_page();
        p[512] = 0x77; // requires 128-byte submission entries
        assert!(matches!(parse_controller(&p), Err(Error::Unsupported(w)) if w.contains("SQES")));
        let mut p = controller_page();
        p[513] = 0x33; // at most 8-byte completion entries
        assert!(matches!(parse_controller(&p), Err(Error::Unsupported(w)) if w.contains("CQES")));
    }

    #[test]
    fn namespace_checks() {
        let mut p = [0u8; 4096];
        assert_eq!(parse_namespace(&p), Err(Error::NoNamespace));
        p[0] = 8;
        p[25] = 0;
        p[26] = 1; // format 1 of a single format
        assert!(matches!(parse_namespace(&p), Err(Error::Unsupported(_))));
        p[26] = 0;
        p[130] = 255; // LBADS 255
        assert!(matches!(
            parse_namespace(&p),
            Err(Error::LbaFormat {
                data_bytes: u64::MAX,
                metadata_bytes: 0
            })
        ));
        p[130] = 12;
        assert_eq!(
            parse_namespace(&p),
            Ok(NamespaceData {
                nsze: 8,
                lba_bytes: 4096
            })
        );
    }
}
