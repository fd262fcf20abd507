//! Reading a GPT from a disk given as a sector reader, and finding a partition by
//! name: the kernel's side. Everything on the disk is untrusted: each header field
//! is checked (UEFI 2.10 §5.3.2) before it steers a read, the entry array is
//! streamed one sector at a time through its CRC32 (no buffer sized by the disk),
//! and each used entry is checked against the usable range and the others
//! (§5.3.3). A bad primary header or array falls back to the backup at the last
//! LBA (§5.3.2: "if the primary GPT is corrupt, software must check the backup").

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

use gpt_disk_types::crc::{Crc, Digest};
use gpt_disk_types::{
    Crc32, GptHeader, GptHeaderRevision, GptPartitionEntry, GptPartitionType, Guid,
    MasterBootRecord,
};

use crate::{name_units, MAX_ENTRIES, MAX_ENTRY_SIZE, NAME_UNITS, SECTOR_SIZE};

/// Size of the header fields UEFI 2.10 defines (table 5-5); `header_size` may be
/// larger (the rest reserved and zero), never smaller.
const HEADER_MIN: usize = core::mem::size_of::<GptHeader>();
/// Size of the fields of a partition entry (table 5-6); larger entries carry
/// reserved bytes after them.
const ENTRY_BYTES: usize = core::mem::size_of::<GptPartitionEntry>();

/// The GPT's CRC32 (ISO-HDLC, UEFI 2.10 §5.3.2), over `header_size` bytes of the
/// header: `gpt_disk_types`'s own header CRC covers the first 92 only.
static CRC32: Crc<u32> = Crc::<u32>::new(&Crc32::ALGORITHM);

/// A disk read 512 bytes at a time. Implemented for closures
/// `FnMut(u64, &mut [u8; 512]) -> Result<(), E>`.
pub trait SectorRead {
    type Error;
    /// Reads sector `lba` (0-based) into `buf`.
    fn read(&mut self, lba: u64, buf: &mut [u8; SECTOR_SIZE]) -> Result<(), Self::Error>;
}

impl<E, F: FnMut(u64, &mut [u8; SECTOR_SIZE]) -> Result<(), E>> SectorRead for F {
    type Error = E;
    fn read(&mut self, lba: u64, buf: &mut [u8; SECTOR_SIZE]) -> Result<(), E> {
        self(lba, buf)
    }
}

/// Which copy of the GPT a problem was found in, or a table was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhichHeader {
    /// LBA 1.
    Primary,
    /// The disk's last LBA.
    Backup,
}

/// Something wrong with one copy of the GPT (or with the protective MBR). Each
/// carries the values that were wrong, for a report that can be acted on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// LBA 0 lacks the 0x55 0xAA signature or has no partition record of type 0xEE
    /// (UEFI 2.10 §5.2.3): not a GPT disk, or an MBR disk with a stale GPT.
    NoProtectiveMbr,
    /// Not "EFI PART".
    BadSignature,
    /// Not revision 1.0 (0x00010000).
    BadRevision(u32),
    /// `header_size` below 92 or above the sector.
    BadHeaderSize(u32),
    /// The header's CRC32 does not match its contents.
    HeaderCrc { stored: u32, computed: u32 },
    /// `my_lba` is not the LBA the header was read from.
    WrongMyLba { expected: u64, found: u64 },
    /// `alternate_lba` points outside the disk or at the header itself.
    BadAlternateLba(u64),
    /// First/last usable LBA reversed, or not inside the disk between the headers.
    BadUsableRange { first: u64, last: u64 },
    /// `size_of_partition_entry` not a multiple of 128, or above [`MAX_ENTRY_SIZE`].
    BadEntrySize(u32),
    /// `number_of_partition_entries` zero or above [`MAX_ENTRIES`].
    BadEntryCount(u32),
    /// The entry array overlaps LBA 0, this header, the usable range, or runs past
    /// the disk.
    BadEntryArray { lba: u64, sectors: u64 },
    /// The entry array's CRC32 does not match.
    EntriesCrc { stored: u32, computed: u32 },
    /// A used entry ends before it starts.
    ReversedEntry { index: u32, first: u64, last: u64 },
    /// A used entry reaches outside the usable range.
    EntryOutsideUsable { index: u32, first: u64, last: u64 },
    /// Two used entries share sectors.
    OverlappingEntries { a: u32, b: u32 },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match *self {
            Self::NoProtectiveMbr => {
                write!(f, "LBA 0 is no protective MBR (no 55 AA signature or no type 0xEE record)")
            }
            Self::BadSignature => write!(f, "no \"EFI PART\" signature"),
            Self::BadRevision(r) => write!(f, "revision {r:#010x}, expected 0x00010000"),
            Self::BadHeaderSize(n) => write!(f, "header size {n}: 92 to 512 bytes"),
            Self::HeaderCrc { stored, computed } => {
                write!(f, "header CRC32 {stored:#010x}, computed {computed:#010x}")
            }
            Self::WrongMyLba { expected, found } => {
                write!(f, "my_lba is {found}, read from LBA {expected}")
            }
            Self::BadAlternateLba(l) => write!(f, "alternate_lba {l} is not another LBA of the disk"),
            Self::BadUsableRange { first, last } => {
                write!(f, "usable LBAs {first}..={last} are not inside the disk between the tables")
            }
            Self::BadEntrySize(n) => {
                write!(f, "entry size {n}: a multiple of 128, at most {MAX_ENTRY_SIZE}")
            }
            Self::BadEntryCount(n) => write!(f, "{n} entries: 1 to {MAX_ENTRIES}"),
            Self::BadEntryArray { lba, sectors } => write!(
                f,
                "entry array at LBA {lba} ({sectors} sectors) overlaps the header, the usable LBAs or the disk's end"
            ),
            Self::EntriesCrc { stored, computed } => {
                write!(f, "entry array CRC32 {stored:#010x}, computed {computed:#010x}")
            }
            Self::ReversedEntry { index, first, last } => {
                write!(f, "entry {index} ends (LBA {last}) before it starts (LBA {first})")
            }
            Self::EntryOutsideUsable { index, first, last } => {
                write!(f, "entry {index} (LBAs {first}..={last}) reaches outside the usable LBAs")
            }
            Self::OverlappingEntries { a, b } => write!(f, "entries {a} and {b} overlap"),
        }
    }
}

/// Why a lookup failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error<E> {
    /// The reader failed on this sector.
    Read { lba: u64, error: E },
    /// Fewer sectors than a protective MBR, two headers and their arrays need.
    DiskTooSmall { sectors: u64 },
    /// The protective MBR is missing or not protective.
    NotGpt,
    /// Neither copy of the GPT is valid: what is wrong with each.
    NoValidTable { primary: Problem, backup: Problem },
    /// The name asked for is empty, longer than 36 UTF-16 units, or holds a NUL.
    BadName,
    /// No used entry has this name.
    NotFound,
    /// More than one used entry has this name (entry indices).
    Ambiguous { first: u32, second: u32 },
}

impl<E: fmt::Display> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Self::Read { lba, error } => write!(f, "reading LBA {lba}: {error}"),
            Self::DiskTooSmall { sectors } => {
                write!(f, "a disk of {sectors} sectors cannot hold a GPT")
            }
            Self::NotGpt => write!(f, "{}", Problem::NoProtectiveMbr),
            Self::NoValidTable { primary, backup } => {
                write!(f, "no valid GPT: primary: {primary}; backup: {backup}")
            }
            Self::BadName => write!(
                f,
                "a partition name is 1 to {NAME_UNITS} UTF-16 units, no NUL"
            ),
            Self::NotFound => write!(f, "no partition of that name"),
            Self::Ambiguous { first, second } => {
                write!(f, "entries {first} and {second} have the same name")
            }
        }
    }
}

/// A used partition entry, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// Its index in the entry array.
    pub index: u32,
    /// Its name's UTF-16 code units (up to the first NUL).
    pub name: Vec<u16>,
    /// The sectors it covers: `first..last + 1` of the entry's inclusive pair.
    pub lbas: Range<u64>,
    pub type_guid: GptPartitionType,
    pub unique_guid: Guid,
    pub attributes: u64,
}

impl Partition {
    /// The name, with unpaired surrogates shown as U+FFFD.
    pub fn name_string(&self) -> String {
        char::decode_utf16(self.name.iter().copied())
            .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect()
    }

    /// Its size in sectors.
    pub fn sectors(&self) -> u64 {
        self.lbas.end - self.lbas.start
    }
}

/// A valid GPT as read: the header fields that matter and the used entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// The copy it was read from.
    pub source: WhichHeader,
    /// When the backup was used: what was wrong with the primary.
    pub primary_problem: Option<Problem>,
    pub disk_guid: Guid,
    /// Partitions may use `first_usable..=last_usable`.
    pub first_usable: u64,
    pub last_usable: u64,
    /// The `alternate_lba` of the header read: for the primary, where the backup
    /// should be (not the last LBA when the disk grew and nobody moved it).
    pub alternate_lba: u64,
    pub entry_count: u32,
    pub entry_size: u32,
    /// Used entries in array order.
    pub partitions: Vec<Partition>,
}

impl Table {
    /// The partition named `name` (compared as UTF-16 code units, exactly).
    pub fn find(&self, name: &str) -> Result<&Partition, Error<core::convert::Infallible>> {
        let (units, n) = name_units(name).ok_or(Error::BadName)?;
        let mut found: Option<&Partition> = None;
        for p in &self.partitions {
            if p.name[..] == units[..n] {
                if let Some(first) = found {
                    return Err(Error::Ambiguous {
                        first: first.index,
                        second: p.index,
                    });
                }
                found = Some(p);
            }
        }
        found.ok_or(Error::NotFound)
    }
}

/// Reads and validates the GPT of a disk of `sectors` sectors: the primary, or the
/// backup when the primary (header, array or entries) is bad.
pub fn read_table<R: SectorRead>(disk: &mut R, sectors: u64) -> Result<Table, Error<R::Error>> {
    // LBA 0, 1 and 2 (header and one sector of entries) at the start, the same at
    // the end: anything smaller has no room for a partition.
    if sectors < 6 {
        return Err(Error::DiskTooSmall { sectors });
    }
    let mut buf = [0u8; SECTOR_SIZE];
    read(disk, 0, &mut buf)?;
    if !protective(&buf) {
        return Err(Error::NotGpt);
    }
    let primary = match read_copy(disk, sectors, WhichHeader::Primary)? {
        Ok(table) => return Ok(table),
        Err(problem) => problem,
    };
    match read_copy(disk, sectors, WhichHeader::Backup)? {
        Ok(table) => Ok(Table {
            primary_problem: Some(primary),
            ..table
        }),
        Err(backup) => Err(Error::NoValidTable { primary, backup }),
    }
}

/// Finds the partition named `name` on the disk ([`read_table`], then
/// [`Table::find`]).
pub fn find_partition<R: SectorRead>(
    disk: &mut R,
    sectors: u64,
    name: &str,
) -> Result<Partition, Error<R::Error>> {
    name_units(name).ok_or(Error::BadName)?;
    let table = read_table(disk, sectors)?;
    match table.find(name) {
        Ok(p) => Ok(p.clone()),
        Err(Error::NotFound) => Err(Error::NotFound),
        Err(Error::Ambiguous { first, second }) => Err(Error::Ambiguous { first, second }),
        Err(_) => Err(Error::BadName),
    }
}

fn read<R: SectorRead>(
    disk: &mut R,
    lba: u64,
    buf: &mut [u8; SECTOR_SIZE],
) -> Result<(), Error<R::Error>> {
    disk.read(lba, buf)
        .map_err(|error| Error::Read { lba, error })
}

/// Loose protective MBR check (UEFI 2.10 §5.2.3): the boot signature and a record of
/// type 0xEE anywhere. Its sizes are not checked: tools disagree on them for disks
/// over 2 TiB, and hybrid MBRs carry other records beside it.
fn protective(sector: &[u8; SECTOR_SIZE]) -> bool {
    let mbr: MasterBootRecord = bytemuck::pod_read_unaligned(sector);
    mbr.signature == [0x55, 0xAA] && mbr.partitions.iter().any(|p| p.os_indicator == 0xEE)
}

/// One copy of the GPT: `Ok(Err(problem))` when it is invalid, `Err` when the disk
/// could not be read.
fn read_copy<R: SectorRead>(
    disk: &mut R,
    sectors: u64,
    which: WhichHeader,
) -> Result<Result<Table, Problem>, Error<R::Error>> {
    let last = sectors - 1;
    let lba = match which {
        WhichHeader::Primary => 1,
        WhichHeader::Backup => last,
    };
    let mut buf = [0u8; SECTOR_SIZE];
    read(disk, lba, &mut buf)?;
    let header = match check_header(&buf, lba, sectors) {
        Ok(h) => h,
        Err(p) => return Ok(Err(p)),
    };
    let entry_lba = header.partition_entry_lba.to_u64();
    let count = header.number_of_partition_entries.to_u32();
    let size = header.size_of_partition_entry.to_u32();
    let first_usable = header.first_usable_lba.to_u64();
    let last_usable = header.last_usable_lba.to_u64();

    // Stream the array: CRC over exactly count * size bytes, and the first 128
    // bytes of each entry (entries start on 128-byte boundaries since their size
    // is a multiple of 128) kept if used. Bounded by MAX_ENTRIES sectors' worth of
    // reads and MAX_ENTRIES kept entries.
    let total = u64::from(count) * u64::from(size);
    let mut digest: Digest<u32> = CRC32.digest();
    let mut used: Vec<(u32, GptPartitionEntry)> = Vec::new();
    let mut offset = 0u64;
    let mut sector = entry_lba;
    while offset < total {
        read(disk, sector, &mut buf)?;
        let take = (total - offset).min(SECTOR_SIZE as u64) as usize;
        digest.update(&buf[..take]);
        for chunk in (0..take).step_by(ENTRY_BYTES) {
            let at = offset + chunk as u64;
            if at.is_multiple_of(u64::from(size)) {
                let entry: GptPartitionEntry =
                    bytemuck::pod_read_unaligned(&buf[chunk..chunk + ENTRY_BYTES]);
                if entry.is_used() {
                    used.push(((at / u64::from(size)) as u32, entry));
                }
            }
        }
        offset += take as u64;
        sector += 1;
    }
    let computed = digest.finalize();
    let stored = header.partition_entry_array_crc32.0.to_u32();
    if computed != stored {
        return Ok(Err(Problem::EntriesCrc { stored, computed }));
    }

    let mut partitions = Vec::with_capacity(used.len());
    for (index, e) in used {
        let (first, last) = (e.starting_lba.to_u64(), e.ending_lba.to_u64());
        if first > last {
            return Ok(Err(Problem::ReversedEntry { index, first, last }));
        }
        if first < first_usable || last > last_usable {
            return Ok(Err(Problem::EntryOutsideUsable { index, first, last }));
        }
        let raw = e.name.0;
        let name: Vec<u16> = raw
            .as_chunks::<2>()
            .0
            .iter()
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        partitions.push(Partition {
            index,
            name,
            lbas: first..last + 1,
            type_guid: e.partition_type_guid,
            unique_guid: e.unique_partition_guid,
            attributes: e.attributes.0.to_u64(),
        });
    }
    // Overlaps: sort a copy of the ranges by start; each must end before the next.
    let mut ranges: Vec<(Range<u64>, u32)> = partitions
        .iter()
        .map(|p| (p.lbas.clone(), p.index))
        .collect();
    ranges.sort_by_key(|(r, _)| r.start);
    for pair in ranges.windows(2) {
        if pair[0].0.end > pair[1].0.start {
            return Ok(Err(Problem::OverlappingEntries {
                a: pair[0].1,
                b: pair[1].1,
            }));
        }
    }
    Ok(Ok(Table {
        source: which,
        primary_problem: None,
        disk_guid: header.disk_guid,
        first_usable,
        last_usable,
        alternate_lba: header.alternate_lba.to_u64(),
        entry_count: count,
        entry_size: size,
        partitions,
    }))
}

/// The header at `lba`, checked field by field against a disk of `sectors`.
fn check_header(sector: &[u8; SECTOR_SIZE], lba: u64, sectors: u64) -> Result<GptHeader, Problem> {
    let h: GptHeader = bytemuck::pod_read_unaligned(&sector[..HEADER_MIN]);
    if !h.is_signature_valid() {
        return Err(Problem::BadSignature);
    }
    if h.revision != GptHeaderRevision::VERSION_1_0 {
        return Err(Problem::BadRevision(h.revision.0.to_u32()));
    }
    let size = h.header_size.to_u32();
    if (size as usize) < HEADER_MIN || size as usize > SECTOR_SIZE {
        return Err(Problem::BadHeaderSize(size));
    }
    // The CRC covers header_size bytes with its own field taken as zero (§5.3.2).
    let mut bytes = [0u8; SECTOR_SIZE];
    bytes[..size as usize].copy_from_slice(&sector[..size as usize]);
    bytes[16..20].fill(0);
    let computed = CRC32.checksum(&bytes[..size as usize]);
    let stored = h.header_crc32.0.to_u32();
    if computed != stored {
        return Err(Problem::HeaderCrc { stored, computed });
    }
    let my = h.my_lba.to_u64();
    if my != lba {
        return Err(Problem::WrongMyLba {
            expected: lba,
            found: my,
        });
    }
    let alt = h.alternate_lba.to_u64();
    if alt == 0 || alt == lba || alt >= sectors {
        return Err(Problem::BadAlternateLba(alt));
    }
    let entry_size = h.size_of_partition_entry.to_u32();
    if entry_size == 0 || !entry_size.is_multiple_of(128) || entry_size > MAX_ENTRY_SIZE {
        return Err(Problem::BadEntrySize(entry_size));
    }
    let count = h.number_of_partition_entries.to_u32();
    if count == 0 || count > MAX_ENTRIES {
        return Err(Problem::BadEntryCount(count));
    }
    let (first, last) = (h.first_usable_lba.to_u64(), h.last_usable_lba.to_u64());
    // Usable space lies strictly between the two header LBAs (1 and the last).
    if first > last || first < 2 || last > sectors - 2 {
        return Err(Problem::BadUsableRange { first, last });
    }
    let array_lba = h.partition_entry_lba.to_u64();
    let array_sectors = (u64::from(count) * u64::from(entry_size)).div_ceil(SECTOR_SIZE as u64);
    let bad_array = Problem::BadEntryArray {
        lba: array_lba,
        sectors: array_sectors,
    };
    let Some(array_end) = array_lba.checked_add(array_sectors) else {
        return Err(bad_array);
    };
    // Not LBA 0, not this header, inside the disk, clear of the usable range.
    let clear_of_header = array_end <= lba || array_lba > lba;
    let clear_of_usable = array_end <= first || array_lba > last;
    if array_lba == 0 || array_end > sectors || !clear_of_header || !clear_of_usable {
        return Err(bad_array);
    }
    Ok(h)
}
