//! The snapshot area: where snapshots are kept on the machine's disk (a GPT
//! partition named [`PARTITION`]) so that they survive a restart of the
//! hypervisor. This module is the area's layout and bookkeeping only; the kernel
//! does the sector I/O.
//!
//! ```text
//! sectors 0..16   the index (8 KiB): magic "HVSNAPIX", version u32, entry count
//!                 u32, then ENTRIES_MAX entries of ENTRY bytes (VM name [24],
//!                 tag [32], zero-padded; first sector u64, state length u64, RAM
//!                 length u64, SHA-256 of the RAM [32]), zero padding, and the
//!                 SHA-256 of everything before it in the last 32 bytes
//! sectors 16..    per entry from its first sector: the packed snapshot (see the
//!                 crate documentation, with its own checksum), zero-padded to a
//!                 sector, then the guest RAM
//! ```
//!
//! An all-zero index is an empty area (a fresh partition). Anything else must pass
//! every check, or the area is refused as a whole: it is never overwritten on a
//! guess.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use sha2::{Digest, Sha256};

/// The GPT partition name of the snapshot area.
pub const PARTITION: &str = "hv-snapshots";
pub const SECTOR: u64 = 512;
/// The index's size in sectors.
pub const INDEX_SECTORS: u64 = 16;
const INDEX_BYTES: usize = (INDEX_SECTORS * SECTOR) as usize;
const MAGIC: [u8; 8] = *b"HVSNAPIX";
const VERSION: u32 = 1;
const HEADER: usize = 16;
const ENTRY: usize = 24 + 32 + 8 + 8 + 8 + 32;
/// The most snapshots an area holds.
pub const ENTRIES_MAX: usize = 64;
/// The largest packed state an entry may have (a 16-vCPU VM's is well under
/// 100 KiB): the reader allocates it, so a forged index must not ask for more.
pub const STATE_MAX: u64 = 1 << 20;
const VM_MAX: usize = 24;
const TAG_MAX: usize = 32;

const _: () = assert!(HEADER + ENTRIES_MAX * ENTRY + 32 <= INDEX_BYTES);

/// One snapshot in the area.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub vm: String,
    pub tag: String,
    /// Its first sector, from the area's start (at least [`INDEX_SECTORS`]).
    pub start: u64,
    pub state_len: u64,
    pub ram_len: u64,
    pub ram_sha256: [u8; 32],
}

impl Entry {
    /// Where its RAM starts (sector).
    pub fn ram_start(&self) -> u64 {
        self.start + self.state_len.div_ceil(SECTOR)
    }

    /// The sectors it takes.
    pub fn sectors(&self) -> u64 {
        self.state_len.div_ceil(SECTOR) + self.ram_len.div_ceil(SECTOR)
    }
}

/// Why an area's index cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AreaError {
    Magic,
    Version(u32),
    Checksum,
    Count(u32),
    /// Entry `.0` is malformed (names, lengths, or it lies outside the area or over
    /// another entry).
    Entry(usize),
}

impl fmt::Display for AreaError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            AreaError::Magic => f.write_str("the partition holds something else (bad magic)"),
            AreaError::Version(v) => write!(f, "index format version {v} is not supported"),
            AreaError::Checksum => f.write_str("its index is corrupted (SHA-256 mismatch)"),
            AreaError::Count(n) => write!(f, "its index claims {n} snapshots"),
            AreaError::Entry(i) => write!(f, "index entry {i} is malformed"),
        }
    }
}

/// The area's index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Index {
    pub entries: Vec<Entry>,
}

fn name_field(bytes: &[u8]) -> Option<String> {
    let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    if len == 0 || bytes[len..].iter().any(|&b| b != 0) {
        return None;
    }
    core::str::from_utf8(&bytes[..len]).ok().map(String::from)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

impl Index {
    /// Reads an index of an area of `sectors` sectors.
    pub fn parse(bytes: &[u8], sectors: u64) -> Result<Index, AreaError> {
        if bytes.len() < INDEX_BYTES {
            return Err(AreaError::Magic);
        }
        let bytes = &bytes[..INDEX_BYTES];
        if bytes.iter().all(|&b| b == 0) {
            return Ok(Index::default());
        }
        if bytes[..8] != MAGIC {
            return Err(AreaError::Magic);
        }
        let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if version != VERSION {
            return Err(AreaError::Version(version));
        }
        let body = INDEX_BYTES - 32;
        if Sha256::digest(&bytes[..body])[..] != bytes[body..] {
            return Err(AreaError::Checksum);
        }
        let count = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
        if count as usize > ENTRIES_MAX {
            return Err(AreaError::Count(count));
        }
        let mut index = Index::default();
        for i in 0..count as usize {
            let e = &bytes[HEADER + i * ENTRY..HEADER + (i + 1) * ENTRY];
            let bad = || AreaError::Entry(i);
            let mut sha = [0; 32];
            sha.copy_from_slice(&e[80..112]);
            let entry = Entry {
                vm: name_field(&e[..VM_MAX]).ok_or_else(bad)?,
                tag: name_field(&e[VM_MAX..VM_MAX + TAG_MAX]).ok_or_else(bad)?,
                start: u64_at(e, 56),
                state_len: u64_at(e, 64),
                ram_len: u64_at(e, 72),
                ram_sha256: sha,
            };
            let end = entry
                .start
                .checked_add(entry.state_len.div_ceil(SECTOR))
                .and_then(|s| s.checked_add(entry.ram_len.div_ceil(SECTOR)));
            if entry.start < INDEX_SECTORS
                || entry.state_len == 0
                || entry.state_len > STATE_MAX
                || !end.is_some_and(|end| end <= sectors)
                || index.overlaps(entry.start, entry.sectors())
                || index.find(&entry.vm, &entry.tag).is_some()
            {
                return Err(bad());
            }
            index.entries.push(entry);
        }
        if bytes[HEADER + count as usize * ENTRY..body]
            .iter()
            .any(|&b| b != 0)
        {
            return Err(AreaError::Count(count));
        }
        Ok(index)
    }

    /// The index's bytes ([`INDEX_SECTORS`] sectors).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = alloc::vec![0u8; INDEX_BYTES];
        out[..8].copy_from_slice(&MAGIC);
        out[8..12].copy_from_slice(&VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for (i, e) in self.entries.iter().enumerate().take(ENTRIES_MAX) {
            let at = HEADER + i * ENTRY;
            let o = &mut out[at..at + ENTRY];
            o[..e.vm.len().min(VM_MAX)].copy_from_slice(&e.vm.as_bytes()[..e.vm.len().min(VM_MAX)]);
            let t = e.tag.len().min(TAG_MAX);
            o[VM_MAX..VM_MAX + t].copy_from_slice(&e.tag.as_bytes()[..t]);
            o[56..64].copy_from_slice(&e.start.to_le_bytes());
            o[64..72].copy_from_slice(&e.state_len.to_le_bytes());
            o[72..80].copy_from_slice(&e.ram_len.to_le_bytes());
            o[80..112].copy_from_slice(&e.ram_sha256);
        }
        let body = INDEX_BYTES - 32;
        let digest = Sha256::digest(&out[..body]);
        out[body..].copy_from_slice(&digest);
        out
    }

    fn overlaps(&self, start: u64, len: u64) -> bool {
        self.entries
            .iter()
            .any(|e| start < e.start + e.sectors() && e.start < start + len)
    }

    pub fn find(&self, vm: &str, tag: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.vm == vm && e.tag == tag)
    }

    /// The first sector of a free run of `len` sectors in an area of `sectors`
    /// sectors (first fit), if the index has room for another entry.
    pub fn place(&self, len: u64, sectors: u64) -> Option<u64> {
        if self.entries.len() >= ENTRIES_MAX {
            return None;
        }
        let mut used: Vec<(u64, u64)> = self
            .entries
            .iter()
            .map(|e| (e.start, e.start + e.sectors()))
            .collect();
        used.sort_unstable();
        let mut at = INDEX_SECTORS;
        for (start, end) in used {
            if start >= at && start - at >= len {
                return Some(at);
            }
            at = at.max(end);
        }
        (sectors.checked_sub(at)? >= len).then_some(at)
    }

    /// Whether `vm` and `tag` fit the index's fields.
    pub fn names_fit(vm: &str, tag: &str) -> bool {
        (1..=VM_MAX).contains(&vm.len())
            && (1..=TAG_MAX).contains(&tag.len())
            && !vm.contains('\0')
            && !tag.contains('\0')
    }

    /// Forgets `vm`'s snapshot `tag`; returns whether there was one.
    pub fn remove(&mut self, vm: &str, tag: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| !(e.vm == vm && e.tag == tag));
        self.entries.len() != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    fn entry(vm: &str, tag: &str, start: u64, ram_len: u64) -> Entry {
        Entry {
            vm: vm.into(),
            tag: tag.into(),
            start,
            state_len: 1000,
            ram_len,
            ram_sha256: [7; 32],
        }
    }

    #[test]
    fn blank_round_trip_and_placement() {
        let sectors = 10_000;
        let blank = alloc::vec![0u8; INDEX_BYTES];
        let mut idx = Index::parse(&blank, sectors).unwrap();
        assert!(idx.entries.is_empty());
        let first = idx.place(2 + 8, sectors).unwrap();
        assert_eq!(first, INDEX_SECTORS);
        idx.entries.push(entry("a", "t1", first, 8 * 512));
        let second = idx.place(100, sectors).unwrap();
        assert_eq!(second, INDEX_SECTORS + 10);
        idx.entries.push(entry("b", "t1", second, 98 * 512));
        // A gap left by a removed entry is reused when it is large enough.
        assert!(idx.remove("a", "t1"));
        assert!(!idx.remove("a", "t1"));
        assert_eq!(idx.place(10, sectors), Some(INDEX_SECTORS));
        assert_eq!(idx.place(11, sectors), Some(INDEX_SECTORS + 110));
        assert_eq!(idx.place(sectors, sectors), None, "too large");
        let bytes = idx.to_bytes();
        assert_eq!(Index::parse(&bytes, sectors), Ok(idx.clone()));
        assert_eq!(idx.find("b", "t1").unwrap().ram_start(), second + 2);
    }

    #[test]
    fn refuses_corruption_and_bad_entries() {
        let sectors = 10_000;
        let mut idx = Index::default();
        idx.entries.push(entry("vm", "t", INDEX_SECTORS, 4096));
        let good = idx.to_bytes();
        let mut b = good.clone();
        b[HEADER + 3] ^= 1;
        assert_eq!(Index::parse(&b, sectors), Err(AreaError::Checksum));
        let mut b = good.clone();
        b[0] = b'X';
        assert_eq!(Index::parse(&b, sectors), Err(AreaError::Magic));
        let mut b = good.clone();
        b[8] = 9;
        assert_eq!(Index::parse(&b, sectors), Err(AreaError::Version(9)));
        assert!(Index::parse(&good[..100], sectors).is_err());
        // Entries beyond the area, over the index, over each other, or twice.
        let huge_state = Entry {
            state_len: STATE_MAX + 1,
            ..entry("vm", "t", INDEX_SECTORS, 512)
        };
        for bad in [
            entry("vm", "t", sectors - 1, 4096),
            entry("vm", "t", 3, 4096),
            huge_state,
        ] {
            let i = Index {
                entries: alloc::vec![bad],
            };
            assert_eq!(
                Index::parse(&i.to_bytes(), sectors),
                Err(AreaError::Entry(0))
            );
        }
        let i = Index {
            entries: alloc::vec![
                entry("a", "t", INDEX_SECTORS, 4096),
                entry("b", "t", INDEX_SECTORS + 5, 4096),
            ],
        };
        assert_eq!(
            Index::parse(&i.to_bytes(), sectors),
            Err(AreaError::Entry(1))
        );
        let i = Index {
            entries: alloc::vec![
                entry("a", "t", INDEX_SECTORS, 512),
                entry("a", "t", INDEX_SECTORS + 100, 512),
            ],
        };
        assert_eq!(
            Index::parse(&i.to_bytes(), sectors),
            Err(AreaError::Entry(1))
        );
        assert!(AreaError::Checksum.to_string().contains("corrupted"));
    }

    #[test]
    fn names_fit_the_fields() {
        assert!(Index::names_fit("count64", "t1"));
        assert!(!Index::names_fit("", "t"));
        assert!(!Index::names_fit(&"v".repeat(25), "t"));
        assert!(!Index::names_fit("v", &"t".repeat(33)));
    }
}
