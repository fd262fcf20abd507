//! Finding the processors in the Intel MultiProcessor Specification 1.4 tables, the
//! way an SMP guest's boot code does; pure, host-testable.
//!
//! The firmware (here the hypervisor) puts a 16-byte *floating pointer structure*
//! ("_MP_", MP spec table 4-1) on a 16-byte boundary in one of the places spec 4
//! names: the first KiB of the EBDA, the last KiB of base memory, or the BIOS ROM
//! area 0xF0000-0xFFFFF. It points to the *configuration table* ("PCMP", table 4-2):
//! a 44-byte header and variable-length entries, of which the processor entries
//! (type 0, 20 bytes, table 4-4) give each CPU's local APIC ID and flags (bit 0
//! enabled, bit 1 bootstrap processor). Both structures carry a byte checksum over
//! their length that must sum to zero.
//!
//! The guest hands in byte slices of its own memory ([`find_floating_pointer`] for a
//! search area, [`processors`] for the configuration table), so the parsing is
//! independent of how memory is reached and is tested on the host.

/// Bytes of the floating pointer structure (length field 1 = one paragraph).
pub const FLOATING_SIZE: usize = 16;
/// Bytes of the configuration table header.
pub const CONFIG_HEADER_SIZE: usize = 44;
/// Largest number of processors [`processors`] returns.
pub const MAX_PROCESSORS: usize = 16;

/// Entry types (MP spec table 4-3) and their sizes.
const ENTRY_PROCESSOR: u8 = 0;
const PROCESSOR_SIZE: usize = 20;
/// Bus, I/O APIC, I/O interrupt and local interrupt entries (types 1-4).
const OTHER_ENTRY_SIZE: usize = 8;

/// One processor entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Processor {
    pub apic_id: u8,
    /// Flags bit 1: this is the bootstrap processor.
    pub bsp: bool,
}

/// The enabled processors of a configuration table, in table order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Processors {
    list: [Processor; MAX_PROCESSORS],
    len: usize,
    /// The local APIC address from the header.
    pub lapic_address: u32,
}

impl Processors {
    pub fn as_slice(&self) -> &[Processor] {
        &self.list[..self.len]
    }
}

/// Why a table was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MpError {
    /// No "PCMP" signature at the address the floating pointer gives.
    BadConfigSignature,
    /// The header's base table length is shorter than the header or longer than
    /// the bytes available.
    BadConfigLength(u16),
    /// The configuration table's checksum is not zero.
    BadConfigChecksum,
    /// An entry of unknown type (entries must be parsed in order: the size of an
    /// unknown one is unknown).
    UnknownEntry { offset: usize, kind: u8 },
    /// The entries run past the table's length.
    Truncated,
    /// More enabled processors than [`MAX_PROCESSORS`].
    TooManyProcessors,
}

impl core::fmt::Display for MpError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MpError::BadConfigSignature => f.write_str("no PCMP signature"),
            MpError::BadConfigLength(n) => write!(f, "bad base table length {n}"),
            MpError::BadConfigChecksum => f.write_str("configuration table checksum"),
            MpError::UnknownEntry { offset, kind } => {
                write!(f, "unknown entry type {kind} at offset {offset}")
            }
            MpError::Truncated => f.write_str("entries run past the table"),
            MpError::TooManyProcessors => {
                write!(f, "more than {MAX_PROCESSORS} enabled processors")
            }
        }
    }
}

fn sums_to_zero(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |s, &b| s.wrapping_add(b)) == 0
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Searches `area` (guest memory starting at physical `area_base`, which must be
/// 16-byte aligned) for a floating pointer structure with a valid checksum and
/// returns the physical address of the configuration table it points to. `None`
/// when there is none, or when it has no configuration table (a "default
/// configuration", feature byte 1 non-zero, or a zero pointer).
pub fn find_floating_pointer(area: &[u8], area_base: u64) -> Option<u64> {
    debug_assert!(area_base.is_multiple_of(16));
    area.as_chunks::<FLOATING_SIZE>()
        .0
        .iter()
        .find(|fp| &fp[0..4] == b"_MP_" && fp[8] == 1 && sums_to_zero(&fp[..]))
        .and_then(|fp| {
            let config = u32_at(fp, 4);
            (config != 0 && fp[11] == 0).then_some(u64::from(config))
        })
}

/// The length the configuration table header at the start of `header` announces
/// (at least [`CONFIG_HEADER_SIZE`] bytes must be given), so the caller knows how
/// much memory to hand to [`processors`].
pub fn config_length(header: &[u8]) -> Result<usize, MpError> {
    if header.len() < CONFIG_HEADER_SIZE || &header[0..4] != b"PCMP" {
        return Err(MpError::BadConfigSignature);
    }
    let len = u16_at(header, 4);
    if usize::from(len) < CONFIG_HEADER_SIZE {
        return Err(MpError::BadConfigLength(len));
    }
    Ok(usize::from(len))
}

/// Parses a whole configuration table (at least its base table length) and
/// returns its enabled processors.
pub fn processors(table: &[u8]) -> Result<Processors, MpError> {
    let len = config_length(table)?;
    if len > table.len() {
        return Err(MpError::BadConfigLength(len as u16));
    }
    let table = &table[..len];
    if !sums_to_zero(table) {
        return Err(MpError::BadConfigChecksum);
    }
    let count = u16_at(table, 34);
    let mut out = Processors {
        list: [Processor::default(); MAX_PROCESSORS],
        len: 0,
        lapic_address: u32_at(table, 36),
    };
    let mut at = CONFIG_HEADER_SIZE;
    for _ in 0..count {
        let kind = *table.get(at).ok_or(MpError::Truncated)?;
        let size = match kind {
            ENTRY_PROCESSOR => PROCESSOR_SIZE,
            1..=4 => OTHER_ENTRY_SIZE,
            _ => return Err(MpError::UnknownEntry { offset: at, kind }),
        };
        let entry = table.get(at..at + size).ok_or(MpError::Truncated)?;
        if kind == ENTRY_PROCESSOR && entry[3] & 1 != 0 {
            if out.len == MAX_PROCESSORS {
                return Err(MpError::TooManyProcessors);
            }
            out.list[out.len] = Processor {
                apic_id: entry[1],
                bsp: entry[3] & 2 != 0,
            };
            out.len += 1;
        }
        at += size;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix_checksum(b: &mut [u8], at: usize) {
        b[at] = 0;
        b[at] = 0u8.wrapping_sub(b.iter().fold(0u8, |s, &x| s.wrapping_add(x)));
    }

    /// A floating pointer to `config` followed by a table with processors
    /// `(apic_id, flags)`, a bus and an I/O APIC entry, as the hypervisor lays it out.
    fn tables(config: u32, cpus: &[(u8, u8)]) -> (Vec<u8>, Vec<u8>) {
        let mut fp = vec![0u8; 16];
        fp[0..4].copy_from_slice(b"_MP_");
        fp[4..8].copy_from_slice(&config.to_le_bytes());
        fp[8] = 1;
        fp[9] = 4;
        fix_checksum(&mut fp, 10);
        let mut t = vec![0u8; 44];
        t[0..4].copy_from_slice(b"PCMP");
        t[6] = 4;
        t[36..40].copy_from_slice(&0xFEE0_0000u32.to_le_bytes());
        for &(id, flags) in cpus {
            let mut e = [0u8; 20];
            e[1] = id;
            e[2] = 0x14;
            e[3] = flags;
            t.extend_from_slice(&e);
        }
        t.extend_from_slice(&[1, 0, b'I', b'S', b'A', b' ', b' ', b' ']);
        t.extend_from_slice(&[2, 0, 0x11, 1, 0, 0, 0xC0, 0xFE]);
        let count = cpus.len() as u16 + 2;
        t[34..36].copy_from_slice(&count.to_le_bytes());
        let len = t.len() as u16;
        t[4..6].copy_from_slice(&len.to_le_bytes());
        fix_checksum(&mut t, 7);
        (fp, t)
    }

    #[test]
    fn finds_the_floating_pointer_on_a_paragraph() {
        let (fp, _) = tables(0xF0010, &[(0, 3)]);
        let mut area = vec![0u8; 0x100];
        // A stray signature with a bad checksum first, then the real one.
        area[0x20..0x24].copy_from_slice(b"_MP_");
        area[0x40..0x50].copy_from_slice(&fp);
        assert_eq!(find_floating_pointer(&area, 0xF0000), Some(0xF0010));
        // Not on a 16-byte boundary: not found.
        let mut odd = vec![0u8; 0x100];
        odd[0x44..0x54].copy_from_slice(&fp);
        assert_eq!(find_floating_pointer(&odd, 0xF0000), None);
        // A default configuration (feature byte 1 set) has no table to parse.
        let mut default = fp.clone();
        default[11] = 5;
        fix_checksum(&mut default, 10);
        assert_eq!(find_floating_pointer(&default, 0xF0000), None);
    }

    #[test]
    fn lists_enabled_processors_in_order() {
        let (_, t) = tables(0, &[(0, 3), (1, 1), (2, 0), (3, 1)]);
        assert_eq!(config_length(&t), Ok(t.len()));
        let p = processors(&t).unwrap();
        assert_eq!(p.lapic_address, 0xFEE0_0000);
        let ids: Vec<(u8, bool)> = p.as_slice().iter().map(|c| (c.apic_id, c.bsp)).collect();
        assert_eq!(ids, [(0, true), (1, false), (3, false)]);
    }

    #[test]
    fn rejects_broken_tables() {
        let (_, t) = tables(0, &[(0, 3), (1, 1)]);
        let mut bad_sum = t.clone();
        bad_sum[20] ^= 1;
        assert_eq!(processors(&bad_sum), Err(MpError::BadConfigChecksum));
        assert_eq!(
            processors(&t[..t.len() - 1]),
            Err(MpError::BadConfigLength(t.len() as u16))
        );
        let mut sig = t.clone();
        sig[0] = b'X';
        assert_eq!(processors(&sig), Err(MpError::BadConfigSignature));
        // One entry more than the table holds.
        let mut count = t.clone();
        count[34] += 1;
        fix_checksum(&mut count, 7);
        assert_eq!(processors(&count), Err(MpError::Truncated));
        // An entry type the spec does not define.
        let mut kind = t.clone();
        kind[44 + 40] = 9;
        fix_checksum(&mut kind, 7);
        assert_eq!(
            processors(&kind),
            Err(MpError::UnknownEntry {
                offset: 84,
                kind: 9
            })
        );
        let many: Vec<(u8, u8)> = (0..17).map(|i| (i, 1)).collect();
        let (_, t) = tables(0, &many);
        assert_eq!(processors(&t), Err(MpError::TooManyProcessors));
    }
}
