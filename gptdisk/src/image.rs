//! The disk image file xtask keeps between runs (`std` only): planned from the
//! configuration's partitions, created with a protective MBR, primary and backup
//! GPT, and later reconciled with a changed configuration without losing what a
//! guest wrote.
//!
//! Layout (what `sgdisk` and `parted` do by default): 128 entries of 128 bytes
//! (32 sectors) after the primary header at LBA 1 and before the backup header at
//! the last LBA (UEFI 2.10 §5.3.1), partitions aligned to 1 MiB in configuration
//! order. Disk and partition GUIDs are random (version 4, from `/dev/urandom`):
//! they are kept once written, and two images made from one configuration do not
//! claim to be the same disk.
//!
//! Reconciling never moves or shrinks data: an existing partition keeps its place,
//! its GUIDs and its contents; a missing one is placed in free space (its initial
//! contents written then, and only then); a larger configured disk size extends the
//! file and moves the backup GPT to the new end. A partition whose size changed, a
//! smaller disk, or a partition that does not fit is refused with the reason.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use gpt_disk_types::crc::Crc;
use gpt_disk_types::{
    Crc32, GptHeader, GptPartitionAttributes, GptPartitionEntry, GptPartitionName,
    GptPartitionType, Guid, LbaLe, MasterBootRecord, U32Le, U64Le,
};

use crate::lookup::{self, Partition, Table, WhichHeader};
use crate::{name_units, HV_PARTITION_TYPE, SECTOR_SIZE};

const SECTOR: u64 = SECTOR_SIZE as u64;
/// Entries in a table this module writes, and their size.
pub const ENTRIES: u32 = 128;
const ENTRY_SIZE: u32 = 128;
/// Sectors of the entry array: 128 x 128 bytes.
const ARRAY_SECTORS: u64 = (ENTRIES as u64 * ENTRY_SIZE as u64) / SECTOR;
/// Partition alignment: 1 MiB, in sectors.
pub const ALIGN: u64 = (1 << 20) / SECTOR;

/// A partition the configuration asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartSpec {
    /// Its GPT name (1 to 36 UTF-16 units).
    pub name: String,
    /// Its size in bytes: a whole number of sectors.
    pub bytes: u64,
    /// A file written at its start when the partition is created (never later).
    pub contents: Option<PathBuf>,
}

/// What [`reconcile`] did with one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Made now (initial contents written, if any).
    Created,
    /// Found with the configured size, left alone.
    Kept,
}

/// A configured partition's place after [`reconcile`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    pub name: String,
    /// Its sectors on the disk.
    pub lbas: Range<u64>,
    pub action: Action,
}

/// What [`reconcile`] found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The configured partitions, in configuration order.
    pub partitions: Vec<Placed>,
    /// The image file did not exist and was made.
    pub created: bool,
    /// The file was extended from this many bytes (and the backup GPT moved).
    pub grown_from: Option<u64>,
    /// The primary GPT was bad and rewritten from the backup: what was wrong.
    pub repaired: Option<lookup::Problem>,
    /// Partitions on the disk the configuration does not name: kept, untouched.
    pub unconfigured: Vec<String>,
}

/// Why an image cannot be made or reconciled.
#[derive(Debug)]
pub enum ImageError {
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The disk size is not a whole number of sectors, or too small for two GPTs and
    /// one aligned MiB.
    BadDiskSize(u64),
    /// The partition's size is zero or not a whole number of sectors.
    BadPartitionSize { name: String, bytes: u64 },
    /// A name that cannot be a GPT name.
    BadName(String),
    /// Two configured partitions with one name.
    DuplicateName(String),
    /// The partitions do not fit: the one that did not, and the space there was.
    DoesNotFit { name: String, bytes: u64, disk: u64 },
    /// The partition exists with another size: growing would need free space after
    /// it (or moving it), shrinking would cut off its data.
    SizeChanged {
        name: String,
        on_disk: u64,
        configured: u64,
    },
    /// The image is larger than the configured disk size.
    WouldShrink { image: u64, configured: u64 },
    /// The initial contents are larger than the partition.
    ContentsTooLarge {
        name: String,
        file: PathBuf,
        len: u64,
        bytes: u64,
    },
    /// The existing file holds no readable GPT.
    Unreadable(String),
    /// An existing partition lies where this module's tables would go.
    InTheWay { name: String, lbas: Range<u64> },
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Self::Io { path, error } => write!(f, "{}: {error}", path.display()),
            Self::BadDiskSize(n) => write!(
                f,
                "a disk of {n} bytes: a whole number of 512-byte sectors, at least 3 MiB \
                 (1 MiB for the GPT at each end and one partition)"
            ),
            Self::BadPartitionSize { name, bytes } => write!(
                f,
                "partition {name:?}: {bytes} bytes is not a positive whole number of sectors"
            ),
            Self::BadName(n) => write!(
                f,
                "{n:?} cannot be a GPT partition name: 1 to 36 UTF-16 units, no NUL"
            ),
            Self::DuplicateName(n) => write!(f, "two partitions are named {n:?}"),
            Self::DoesNotFit { name, bytes, disk } => write!(
                f,
                "partition {name:?} ({}) does not fit in the free space of a {} disk \
                 (partitions start on 1 MiB boundaries after the first MiB; the backup GPT \
                 takes the end)",
                show(*bytes),
                show(*disk)
            ),
            Self::SizeChanged {
                name,
                on_disk,
                configured,
            } => write!(
                f,
                "partition {name:?} is {} in the image but {} in the configuration: changing \
                 a partition's size is not supported (it would cut off or move its data); \
                 restore its size, or rename it to get a new partition",
                show(*on_disk),
                show(*configured)
            ),
            Self::WouldShrink { image, configured } => write!(
                f,
                "the image is {} but the configuration says {}: shrinking the disk is not \
                 supported (delete the image to start again)",
                show(*image),
                show(*configured)
            ),
            Self::ContentsTooLarge {
                name,
                file,
                len,
                bytes,
            } => write!(
                f,
                "{} ({}) is larger than partition {name:?} ({})",
                file.display(),
                show(*len),
                show(*bytes)
            ),
            Self::Unreadable(why) => write!(f, "the image holds no usable GPT: {why}"),
            Self::InTheWay { name, lbas } => write!(
                f,
                "partition {name:?} (LBAs {}..{}) lies where the GPT's entry arrays go",
                lbas.start, lbas.end
            ),
        }
    }
}

impl std::error::Error for ImageError {}

fn show(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else if bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{bytes} bytes")
    }
}

/// The usable sectors of a disk of `sectors` laid out by this module.
fn usable(sectors: u64) -> Range<u64> {
    2 + ARRAY_SECTORS..sectors - 1 - ARRAY_SECTORS
}

fn check_disk_size(disk_bytes: u64) -> Result<u64, ImageError> {
    if !disk_bytes.is_multiple_of(SECTOR) || disk_bytes < 3 << 20 {
        return Err(ImageError::BadDiskSize(disk_bytes));
    }
    Ok(disk_bytes / SECTOR)
}

fn check_specs(specs: &[PartSpec]) -> Result<(), ImageError> {
    for (i, s) in specs.iter().enumerate() {
        name_units(&s.name).ok_or_else(|| ImageError::BadName(s.name.clone()))?;
        if s.bytes == 0 || s.bytes % SECTOR != 0 {
            return Err(ImageError::BadPartitionSize {
                name: s.name.clone(),
                bytes: s.bytes,
            });
        }
        if specs[..i].iter().any(|o| o.name == s.name) {
            return Err(ImageError::DuplicateName(s.name.clone()));
        }
    }
    Ok(())
}

/// The first 1 MiB-aligned place of `len` sectors in `usable` that overlaps none of
/// `taken`.
fn first_fit(taken: &[Range<u64>], usable: &Range<u64>, len: u64) -> Option<Range<u64>> {
    let mut start = usable.start.next_multiple_of(ALIGN);
    loop {
        let end = start.checked_add(len)?;
        if end > usable.end {
            return None;
        }
        match taken.iter().find(|t| t.start < end && start < t.end) {
            Some(t) => start = t.end.next_multiple_of(ALIGN),
            None => return Some(start..end),
        }
    }
}

/// Where each partition of a fresh disk of `disk_bytes` goes (configuration order,
/// first fit, 1 MiB aligned), or why they do not fit. What `xtask` checks a
/// configuration with, and what [`create`] writes.
pub fn plan(disk_bytes: u64, specs: &[PartSpec]) -> Result<Vec<Range<u64>>, ImageError> {
    let sectors = check_disk_size(disk_bytes)?;
    check_specs(specs)?;
    let area = usable(sectors);
    let mut taken: Vec<Range<u64>> = Vec::new();
    for s in specs {
        let place = first_fit(&taken, &area, s.bytes / SECTOR).ok_or(ImageError::DoesNotFit {
            name: s.name.clone(),
            bytes: s.bytes,
            disk: disk_bytes,
        })?;
        taken.push(place);
    }
    Ok(taken)
}

/// One entry slot as this module writes it.
#[derive(Clone)]
struct Slot {
    type_guid: GptPartitionType,
    unique: Guid,
    lbas: Range<u64>,
    attributes: u64,
    name: Vec<u16>,
}

impl Slot {
    fn entry(&self) -> GptPartitionEntry {
        let mut name = GptPartitionName([0; 72]);
        for (i, u) in self.name.iter().take(36).enumerate() {
            name.0[2 * i..2 * i + 2].copy_from_slice(&u.to_le_bytes());
        }
        GptPartitionEntry {
            partition_type_guid: self.type_guid,
            unique_partition_guid: self.unique,
            starting_lba: LbaLe::from_u64(self.lbas.start),
            ending_lba: LbaLe::from_u64(self.lbas.end - 1),
            attributes: GptPartitionAttributes(U64Le::from_u64(self.attributes)),
            name,
        }
    }

    fn from_partition(p: &Partition) -> Self {
        Self {
            type_guid: p.type_guid,
            unique: p.unique_guid,
            lbas: p.lbas.clone(),
            attributes: p.attributes,
            name: p.name.clone(),
        }
    }
}

fn random_guid(path: &Path) -> Result<Guid, ImageError> {
    let mut bytes = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|error| io(path, error))?;
    Ok(Guid::from_random_bytes(bytes))
}

fn io(path: &Path, error: std::io::Error) -> ImageError {
    ImageError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// Creates (or replaces) the image at `path`: a sparse file of `disk_bytes` with
/// the partitions of [`plan`] and their initial contents.
pub fn create(path: &Path, disk_bytes: u64, specs: &[PartSpec]) -> Result<Report, ImageError> {
    let places = plan(disk_bytes, specs)?;
    check_contents(specs, &places)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    }
    let mut file = File::create(path).map_err(|e| io(path, e))?;
    file.set_len(disk_bytes).map_err(|e| io(path, e))?;
    let mut slots: Vec<Option<Slot>> = vec![None; ENTRIES as usize];
    let mut placed = Vec::new();
    for (i, (s, place)) in specs.iter().zip(&places).enumerate() {
        write_contents(&mut file, path, s, place, disk_bytes)?;
        slots[i] = Some(new_slot(path, s, place.clone())?);
        placed.push(Placed {
            name: s.name.clone(),
            lbas: place.clone(),
            action: Action::Created,
        });
    }
    let disk_guid = random_guid(path)?;
    write_gpt(&mut file, path, disk_bytes / SECTOR, disk_guid, &slots)?;
    file.sync_all().map_err(|e| io(path, e))?;
    Ok(Report {
        partitions: placed,
        created: true,
        grown_from: None,
        repaired: None,
        unconfigured: Vec::new(),
    })
}

fn new_slot(path: &Path, s: &PartSpec, lbas: Range<u64>) -> Result<Slot, ImageError> {
    Ok(Slot {
        type_guid: HV_PARTITION_TYPE,
        unique: random_guid(path)?,
        lbas,
        attributes: 0,
        name: s.name.encode_utf16().collect(),
    })
}

/// Every initial-contents file fits its partition: checked before anything is
/// written, so a mistake leaves the image as it was.
fn check_contents(specs: &[PartSpec], places: &[Range<u64>]) -> Result<(), ImageError> {
    for (s, place) in specs.iter().zip(places) {
        if let Some(file) = &s.contents {
            let len = std::fs::metadata(file).map_err(|e| io(file, e))?.len();
            let bytes = (place.end - place.start) * SECTOR;
            if len > bytes {
                return Err(ImageError::ContentsTooLarge {
                    name: s.name.clone(),
                    file: file.clone(),
                    len,
                    bytes,
                });
            }
        }
    }
    Ok(())
}

/// A new partition's sectors: zeroed where the file already had bytes (a
/// partition made in old free space must not show stale data; past the old end the
/// file is sparse zeros already), then its initial contents, if any.
fn write_contents(
    file: &mut File,
    path: &Path,
    s: &PartSpec,
    place: &Range<u64>,
    old_len: u64,
) -> Result<(), ImageError> {
    let start = place.start * SECTOR;
    let end = place.end * SECTOR;
    let zero_to = end.min(old_len);
    if start < zero_to {
        let zeros = vec![0u8; 1 << 20];
        file.seek(SeekFrom::Start(start)).map_err(|e| io(path, e))?;
        let mut at = start;
        while at < zero_to {
            let n = (zero_to - at).min(zeros.len() as u64) as usize;
            file.write_all(&zeros[..n]).map_err(|e| io(path, e))?;
            at += n as u64;
        }
    }
    if let Some(contents) = &s.contents {
        let mut src = File::open(contents).map_err(|e| io(contents, e))?;
        file.seek(SeekFrom::Start(start)).map_err(|e| io(path, e))?;
        // Bounded by the partition even if the file grew since it was checked.
        let copied =
            std::io::copy(&mut (&mut src).take(end - start), file).map_err(|e| io(contents, e))?;
        debug_assert!(copied <= end - start);
    }
    Ok(())
}

/// Writes the protective MBR, the primary GPT (LBA 1, array at LBA 2) and the
/// backup GPT (array right before the last LBA, header at the last LBA) for
/// `slots`, with their CRCs (UEFI 2.10 §5.3.2).
fn write_gpt(
    file: &mut File,
    path: &Path,
    sectors: u64,
    disk_guid: Guid,
    slots: &[Option<Slot>],
) -> Result<(), ImageError> {
    let crc = Crc::<u32>::new(&Crc32::ALGORITHM);
    let mut array = Vec::with_capacity((ARRAY_SECTORS * SECTOR) as usize);
    for slot in slots.iter().take(ENTRIES as usize) {
        let entry = slot.as_ref().map(Slot::entry).unwrap_or_default();
        array.extend_from_slice(bytemuck::bytes_of(&entry));
    }
    array.resize((ARRAY_SECTORS * SECTOR) as usize, 0);
    let array_crc = crc.checksum(&array);
    let area = usable(sectors);
    let last = sectors - 1;
    let header = |my: u64, alternate: u64, array_lba: u64| {
        let mut h = GptHeader {
            my_lba: LbaLe::from_u64(my),
            alternate_lba: LbaLe::from_u64(alternate),
            first_usable_lba: LbaLe::from_u64(area.start),
            last_usable_lba: LbaLe::from_u64(area.end - 1),
            disk_guid,
            partition_entry_lba: LbaLe::from_u64(array_lba),
            number_of_partition_entries: U32Le::from_u32(ENTRIES),
            size_of_partition_entry: U32Le::from_u32(ENTRY_SIZE),
            partition_entry_array_crc32: Crc32(U32Le::from_u32(array_crc)),
            ..GptHeader::default()
        };
        h.update_header_crc32();
        let mut sector = [0u8; SECTOR_SIZE];
        sector[..core::mem::size_of::<GptHeader>()].copy_from_slice(bytemuck::bytes_of(&h));
        sector
    };
    let mbr = MasterBootRecord::protective_mbr(sectors);
    let mut at = |lba: u64, bytes: &[u8]| -> Result<(), ImageError> {
        file.seek(SeekFrom::Start(lba * SECTOR))
            .and_then(|_| file.write_all(bytes))
            .map_err(|e| io(path, e))
    };
    // Backup first: if this is cut short, the old primary (or the new backup)
    // still describes the disk.
    at(last - ARRAY_SECTORS, &array)?;
    at(last, &header(last, 1, last - ARRAY_SECTORS))?;
    at(0, bytemuck::bytes_of(&mbr))?;
    at(2, &array)?;
    at(1, &header(1, last, 2))?;
    Ok(())
}

/// Reads the GPT of the image file at `path` (for checks and tests).
pub fn read_image(path: &Path) -> Result<Table, ImageError> {
    let mut file = File::open(path).map_err(|e| io(path, e))?;
    let len = file.metadata().map_err(|e| io(path, e))?.len();
    read_file_table(&mut file, len)
}

fn read_file_table(file: &mut File, len: u64) -> Result<Table, ImageError> {
    let mut reader = |lba: u64, buf: &mut [u8; SECTOR_SIZE]| -> std::io::Result<()> {
        file.seek(SeekFrom::Start(lba * SECTOR))?;
        file.read_exact(buf)
    };
    lookup::read_table(&mut reader, len / SECTOR).map_err(|e| ImageError::Unreadable(e.to_string()))
}

/// Brings the image at `path` in line with the configuration: creates it when it
/// does not exist; otherwise keeps every existing partition (and its contents),
/// adds the missing ones in free space, grows the file to `disk_bytes` (moving the
/// backup GPT) and rewrites both tables. Refuses, changing nothing, a partition
/// whose size differs from the configuration, a smaller disk, or partitions that do
/// not fit.
pub fn reconcile(path: &Path, disk_bytes: u64, specs: &[PartSpec]) -> Result<Report, ImageError> {
    if !path.exists() {
        return create(path, disk_bytes, specs);
    }
    let sectors = check_disk_size(disk_bytes)?;
    check_specs(specs)?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| io(path, e))?;
    let old_len = file.metadata().map_err(|e| io(path, e))?.len();
    if old_len > disk_bytes {
        return Err(ImageError::WouldShrink {
            image: old_len,
            configured: disk_bytes,
        });
    }
    let table = read_file_table(&mut file, old_len)?;
    let area = usable(sectors);

    // Existing partitions keep their slots; each must lie in the new usable area.
    let mut slots: Vec<Option<Slot>> = vec![None; ENTRIES as usize];
    let mut overflow: Vec<Slot> = Vec::new();
    for p in &table.partitions {
        if p.lbas.start < area.start || p.lbas.end > area.end {
            return Err(ImageError::InTheWay {
                name: p.name_string(),
                lbas: p.lbas.clone(),
            });
        }
        match slots.get_mut(p.index as usize) {
            Some(s) if s.is_none() => *s = Some(Slot::from_partition(p)),
            _ => overflow.push(Slot::from_partition(p)),
        }
    }
    for slot in overflow {
        let free = slots
            .iter()
            .position(Option::is_none)
            .ok_or_else(|| ImageError::Unreadable(format!("more than {ENTRIES} partitions")))?;
        slots[free] = Some(slot);
    }

    let mut taken: Vec<Range<u64>> = table.partitions.iter().map(|p| p.lbas.clone()).collect();
    let mut placed = Vec::new();
    let mut new: Vec<(&PartSpec, Range<u64>)> = Vec::new();
    for s in specs {
        let units: Vec<u16> = s.name.encode_utf16().collect();
        let same: Vec<&Partition> = table
            .partitions
            .iter()
            .filter(|p| p.name == units)
            .collect();
        if same.len() > 1 {
            return Err(ImageError::DuplicateName(s.name.clone()));
        }
        if let Some(p) = same.first() {
            let on_disk = p.sectors() * SECTOR;
            if on_disk != s.bytes {
                return Err(ImageError::SizeChanged {
                    name: s.name.clone(),
                    on_disk,
                    configured: s.bytes,
                });
            }
            placed.push(Placed {
                name: s.name.clone(),
                lbas: p.lbas.clone(),
                action: Action::Kept,
            });
            continue;
        }
        let place = first_fit(&taken, &area, s.bytes / SECTOR).ok_or(ImageError::DoesNotFit {
            name: s.name.clone(),
            bytes: s.bytes,
            disk: disk_bytes,
        })?;
        taken.push(place.clone());
        new.push((s, place.clone()));
        placed.push(Placed {
            name: s.name.clone(),
            lbas: place,
            action: Action::Created,
        });
    }
    let new_specs: Vec<PartSpec> = new.iter().map(|(s, _)| (*s).clone()).collect();
    let new_places: Vec<Range<u64>> = new.iter().map(|(_, p)| p.clone()).collect();
    check_contents(&new_specs, &new_places)?;
    if new.len() > slots.iter().filter(|s| s.is_none()).count() {
        return Err(ImageError::DoesNotFit {
            name: new[0].0.name.clone(),
            bytes: new[0].0.bytes,
            disk: disk_bytes,
        });
    }

    // Nothing refused: now change the file.
    let grown = disk_bytes > old_len;
    if grown {
        file.set_len(disk_bytes).map_err(|e| io(path, e))?;
    }
    for (s, place) in &new {
        write_contents(&mut file, path, s, place, old_len)?;
        let free = slots
            .iter()
            .position(Option::is_none)
            .expect("counted above");
        slots[free] = Some(new_slot(path, s, place.clone())?);
    }
    // Rewrite the tables when anything changed, and also when they are not laid
    // out as this module writes them (another tool's geometry, or a backup left in
    // the middle when the file was extended by other means).
    let foreign = table.source != WhichHeader::Primary
        || table.alternate_lba != sectors - 1
        || (table.first_usable, table.last_usable) != (area.start, area.end - 1)
        || (table.entry_count, table.entry_size) != (ENTRIES, ENTRY_SIZE);
    let changed = grown || !new.is_empty() || foreign;
    if changed {
        write_gpt(&mut file, path, sectors, table.disk_guid, &slots)?;
        file.sync_all().map_err(|e| io(path, e))?;
    }
    let unconfigured = table
        .partitions
        .iter()
        .filter(|p| {
            !specs
                .iter()
                .any(|s| s.name.encode_utf16().eq(p.name.iter().copied()))
        })
        .map(Partition::name_string)
        .collect();
    Ok(Report {
        partitions: placed,
        created: false,
        grown_from: grown.then_some(old_len),
        repaired: table.primary_problem,
        unconfigured,
    })
}
