//! GPT lookup and image writing, end to end on files in a scratch directory: the
//! writer's tables read back by the lookup (and by `sfdisk`, when installed),
//! corruption in either copy detected or survived through the other, hostile
//! headers with valid CRCs refused with the specific problem, and reconciling an
//! image with a changed configuration without losing data.

use std::path::{Path, PathBuf};

use gpt_disk_types::crc::Crc;
use gpt_disk_types::Crc32;
use gptdisk::image::{self, Action, ImageError, PartSpec};
use gptdisk::{find_partition, read_table, Error, Problem, WhichHeader, HV_PARTITION_TYPE};

const MIB: u64 = 1 << 20;
const S: usize = 512;

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("gptdisk-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn spec(name: &str, mib: u64, contents: Option<&Path>) -> PartSpec {
    PartSpec {
        name: name.into(),
        bytes: mib * MIB,
        contents: contents.map(Path::to_path_buf),
    }
}

/// A reader over bytes in memory that counts its reads.
fn reader<'a>(
    disk: &'a [u8],
    reads: &'a mut u64,
) -> impl FnMut(u64, &mut [u8; S]) -> Result<(), &'static str> + 'a {
    move |lba, buf| {
        *reads += 1;
        let at = usize::try_from(lba).map_err(|_| "lba")? * S;
        let sector = disk.get(at..at + S).ok_or("past the end")?;
        buf.copy_from_slice(sector);
        Ok(())
    }
}

fn table(disk: &[u8]) -> Result<gptdisk::Table, Error<&'static str>> {
    let mut reads = 0;
    let table = read_table(&mut reader(disk, &mut reads), (disk.len() / S) as u64);
    table
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Recomputes the entry array CRC and the header CRC of the header at `lba`, so a
/// test can make a table that is consistent by checksum but wrong by content.
fn reseal(disk: &mut [u8], lba: usize) {
    let crc = Crc::<u32>::new(&Crc32::ALGORITHM);
    let h = lba * S;
    let array = u64_at(disk, h + 72) as usize * S;
    let count = u32_at(disk, h + 80) as usize;
    let size = u32_at(disk, h + 84) as usize;
    if count * size <= 1 << 20 && array + count * size <= disk.len() {
        let c = crc.checksum(&disk[array..array + count * size]);
        disk[h + 88..h + 92].copy_from_slice(&c.to_le_bytes());
    }
    let hsize = (u32_at(disk, h + 12) as usize).clamp(92, S);
    disk[h + 16..h + 20].fill(0);
    let c = crc.checksum(&disk[h..h + hsize]);
    disk[h + 16..h + 20].copy_from_slice(&c.to_le_bytes());
}

/// A 16 MiB image with two partitions, the first with initial contents.
fn two_partitions(s: &Scratch) -> (PathBuf, Vec<u8>) {
    let contents: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
    std::fs::write(s.path("contents.bin"), &contents).unwrap();
    let img = s.path("disk.img");
    let c = s.path("contents.bin");
    let report = image::create(
        &img,
        16 * MIB,
        &[spec("linux-data", 4, Some(&c)), spec("scratch", 2, None)],
    )
    .unwrap();
    assert!(report.created);
    assert_eq!(report.partitions[0].lbas, 2048..2048 + 8192);
    assert_eq!(report.partitions[1].lbas, 10240..10240 + 4096);
    (img, contents)
}

#[test]
fn round_trip() {
    let s = Scratch::new("round-trip");
    let (img, contents) = two_partitions(&s);
    let disk = std::fs::read(&img).unwrap();
    assert_eq!(disk.len() as u64, 16 * MIB);
    let t = table(&disk).unwrap();
    assert_eq!(t.source, WhichHeader::Primary);
    assert_eq!(t.primary_problem, None);
    assert_eq!((t.entry_count, t.entry_size), (128, 128));
    assert_eq!((t.first_usable, t.last_usable), (34, 32768 - 34));
    assert_eq!(t.alternate_lba, 32767);
    assert_eq!(t.partitions.len(), 2);
    assert_eq!(t.partitions[0].name_string(), "linux-data");
    assert_eq!(t.partitions[0].type_guid, HV_PARTITION_TYPE);
    assert_ne!(t.partitions[0].unique_guid, t.partitions[1].unique_guid);
    assert_ne!(t.partitions[0].unique_guid, t.disk_guid);

    let mut reads = 0;
    let p = find_partition(&mut reader(&disk, &mut reads), 32768, "scratch").unwrap();
    assert_eq!((p.lbas, p.index, p.attributes), (10240..14336, 1, 0));
    // MBR, header, 32 sectors of entries: the array is read sector by sector once.
    assert_eq!(reads, 34);
    let start = 2048 * S;
    assert_eq!(&disk[start..start + contents.len()], &contents[..]);
    assert!(disk[start + contents.len()..start + 4 * MIB as usize]
        .iter()
        .all(|&b| b == 0));

    // The backup alone describes the same disk.
    let mut no_primary = disk.clone();
    no_primary[S..2 * S].fill(0);
    let b = table(&no_primary).unwrap();
    assert_eq!(b.source, WhichHeader::Backup);
    assert_eq!(b.primary_problem, Some(Problem::BadSignature));
    assert_eq!(b.partitions, t.partitions);
    assert_eq!(b.disk_guid, t.disk_guid);
    assert_eq!(b.alternate_lba, 1);
}

#[test]
fn names() {
    let s = Scratch::new("names");
    let (img, _) = two_partitions(&s);
    let disk = std::fs::read(&img).unwrap();
    let mut reads = 0;
    let mut r = reader(&disk, &mut reads);
    assert_eq!(find_partition(&mut r, 32768, "linux"), Err(Error::NotFound));
    assert_eq!(
        find_partition(&mut r, 32768, "Scratch"),
        Err(Error::NotFound)
    );
    assert_eq!(find_partition(&mut r, 32768, ""), Err(Error::BadName));
    assert_eq!(
        find_partition(&mut r, 32768, &"x".repeat(37)),
        Err(Error::BadName)
    );
    assert_eq!(find_partition(&mut r, 32768, "a\0b"), Err(Error::BadName));
    // 36 units fill the field with no NUL after them (UEFI allows it).
    let long = "é".repeat(36);
    let img2 = s.path("long.img");
    image::create(&img2, 4 * MIB, &[spec(&long, 1, None)]).unwrap();
    let disk2 = std::fs::read(&img2).unwrap();
    let mut reads = 0;
    let p = find_partition(&mut reader(&disk2, &mut reads), 8192, &long).unwrap();
    assert_eq!(p.name_string(), long);
    assert!(matches!(
        image::create(&img2, 4 * MIB, &[spec(&"x".repeat(37), 1, None)]),
        Err(ImageError::BadName(_))
    ));

    // Two entries with one name: the lookup will not guess.
    let mut dup = disk.clone();
    let e1 = 2 * S + 128;
    let name0 = dup[2 * S + 56..2 * S + 128].to_vec();
    dup[e1 + 56..e1 + 128].copy_from_slice(&name0);
    reseal(&mut dup, 1);
    let mut reads = 0;
    assert_eq!(
        find_partition(&mut reader(&dup, &mut reads), 32768, "linux-data"),
        Err(Error::Ambiguous {
            first: 0,
            second: 1
        })
    );
}

#[test]
fn corruption_falls_back_to_the_backup() {
    let s = Scratch::new("corrupt");
    let (img, _) = two_partitions(&s);
    let good = std::fs::read(&img).unwrap();
    let want = table(&good).unwrap().partitions;
    let last = good.len() / S - 1;

    // Each byte of the primary header (its 92 defined bytes), flipped: detected,
    // and the backup serves.
    for at in 0..92 {
        let mut d = good.clone();
        d[S + at] ^= 0x40;
        let t = table(&d).unwrap_or_else(|e| panic!("byte {at}: {e:?}"));
        assert_eq!(t.source, WhichHeader::Backup, "byte {at}");
        assert_eq!(t.partitions, want, "byte {at}");
        let p = t.primary_problem.unwrap();
        let expected = match at {
            0..=7 => matches!(p, Problem::BadSignature),
            8..=11 => matches!(p, Problem::BadRevision(_)),
            12..=15 => matches!(p, Problem::BadHeaderSize(_)),
            _ => matches!(p, Problem::HeaderCrc { .. }),
        };
        assert!(expected, "byte {at}: {p:?}");
    }
    // A byte of the primary's entries (a used one, and an unused one).
    for at in [2 * S + 40, 2 * S + 128 * 100] {
        let mut d = good.clone();
        d[at] ^= 1;
        let t = table(&d).unwrap();
        assert!(matches!(
            t.primary_problem,
            Some(Problem::EntriesCrc { .. })
        ));
        assert_eq!(t.partitions, want);
    }
    // Both copies bad: both problems named.
    let mut d = good.clone();
    d[S + 20] ^= 1;
    d[(last - 32) * S + 3] ^= 1;
    match table(&d) {
        Err(Error::NoValidTable { primary, backup }) => {
            assert!(matches!(primary, Problem::HeaderCrc { .. }));
            assert!(matches!(backup, Problem::EntriesCrc { .. }));
        }
        other => panic!("{other:?}"),
    }
    // The backup's header in the wrong place: my_lba checked.
    let mut d = good.clone();
    d[S..2 * S].fill(0);
    d[last * S + 24..last * S + 32].copy_from_slice(&5u64.to_le_bytes());
    reseal(&mut d, last);
    assert!(matches!(
        table(&d),
        Err(Error::NoValidTable {
            backup: Problem::WrongMyLba {
                expected: 32767,
                found: 5
            },
            ..
        })
    ));
    // No protective MBR: not a GPT disk at all.
    let mut d = good.clone();
    d[510] = 0;
    assert_eq!(table(&d), Err(Error::NotGpt));
    let mut d = good.clone();
    d[446 + 4] = 0x83;
    assert_eq!(table(&d), Err(Error::NotGpt));
    assert_eq!(
        table(&good[..5 * S]),
        Err(Error::DiskTooSmall { sectors: 5 })
    );
    // A reader that fails: its error and the LBA, not a fallback.
    let mut r = |lba: u64, buf: &mut [u8; S]| {
        if lba == 1 {
            return Err("media error");
        }
        buf.copy_from_slice(&good[lba as usize * S..][..S]);
        Ok(())
    };
    assert_eq!(
        read_table(&mut r, 32768),
        Err(Error::Read {
            lba: 1,
            error: "media error"
        })
    );
}

/// Tables whose CRCs are right but whose contents are not: each refused with its
/// specific problem (both copies edited alike, so there is no fallback).
#[test]
fn inconsistent_tables() {
    let s = Scratch::new("inconsistent");
    let (img, _) = two_partitions(&s);
    let good = std::fs::read(&img).unwrap();
    let last = good.len() / S - 1;
    let edit = |f: &dyn Fn(&mut Vec<u8>, usize, usize)| {
        let mut d = good.clone();
        // (header LBA, array LBA) of each copy.
        for (h, a) in [(1, 2), (last, last - 32)] {
            f(&mut d, h * S, a * S);
            reseal(&mut d, h);
        }
        match table(&d) {
            Err(Error::NoValidTable { primary, backup }) => {
                assert_eq!(primary, backup);
                primary
            }
            other => panic!("{other:?}"),
        }
    };
    let set64 =
        |d: &mut Vec<u8>, at: usize, v: u64| d[at..at + 8].copy_from_slice(&v.to_le_bytes());
    let set32 =
        |d: &mut Vec<u8>, at: usize, v: u32| d[at..at + 4].copy_from_slice(&v.to_le_bytes());

    // Entry 1 starts inside entry 0.
    let p = edit(&|d, _, a| set64(d, a + 128 + 32, 4000));
    assert_eq!(p, Problem::OverlappingEntries { a: 0, b: 1 });
    // Entry 0 ends before it starts.
    let p = edit(&|d, _, a| set64(d, a + 40, 100));
    assert_eq!(
        p,
        Problem::ReversedEntry {
            index: 0,
            first: 2048,
            last: 100
        }
    );
    // Entry 1 past the last usable LBA, and one before the first.
    let p = edit(&|d, _, a| set64(d, a + 128 + 40, 32767));
    assert_eq!(
        p,
        Problem::EntryOutsideUsable {
            index: 1,
            first: 10240,
            last: 32767
        }
    );
    let p = edit(&|d, _, a| set64(d, a + 32, 1));
    assert_eq!(
        p,
        Problem::EntryOutsideUsable {
            index: 0,
            first: 1,
            last: 10239
        }
    );
    // Usable range reversed, or reaching the backup header.
    let p = edit(&|d, h, _| set64(d, h + 40, 40000));
    assert_eq!(
        p,
        Problem::BadUsableRange {
            first: 40000,
            last: 32734
        }
    );
    let p = edit(&|d, h, _| set64(d, h + 48, 32767));
    assert_eq!(
        p,
        Problem::BadUsableRange {
            first: 34,
            last: 32767
        }
    );
    // Entry sizes: not a multiple of 128, zero, huge.
    for size in [0, 100, 8192] {
        let p = edit(&|d, h, _| set32(d, h + 84, size));
        assert_eq!(p, Problem::BadEntrySize(size));
    }
    // Entry counts: zero, and a count that would make a reader loop for long.
    for count in [0, 5000, u32::MAX] {
        let p = edit(&|d, h, _| set32(d, h + 80, count));
        assert_eq!(p, Problem::BadEntryCount(count));
    }
    // An array inside the usable range, over LBA 0, past the end.
    for lba in [100u64, 0, 32760] {
        let p = edit(&|d, h, _| set64(d, h + 72, lba));
        assert_eq!(p, Problem::BadEntryArray { lba, sectors: 32 });
    }
    // Alternate LBA outside the disk.
    let p = edit(&|d, h, _| set64(d, h + 32, 1 << 40));
    assert_eq!(p, Problem::BadAlternateLba(1 << 40));
    // A header size larger than the sector.
    let p = edit(&|d, h, _| set32(d, h + 12, 600));
    assert_eq!(p, Problem::BadHeaderSize(600));
}

#[test]
fn larger_entries_and_headers_are_read() {
    let s = Scratch::new("larger");
    let (img, _) = two_partitions(&s);
    let good = std::fs::read(&img).unwrap();
    // The same partitions as 32 entries of 512 bytes (each straddling nothing, one
    // per sector), and a 128-byte header: valid, and found.
    let mut d = good.clone();
    let a = 2 * S;
    let entries: Vec<u8> = good[a..a + 2 * 128].to_vec();
    d[a..a + 32 * S].fill(0);
    d[a..a + 128].copy_from_slice(&entries[..128]);
    d[a + S..a + S + 128].copy_from_slice(&entries[128..]);
    d[S + 80..S + 84].copy_from_slice(&32u32.to_le_bytes());
    d[S + 84..S + 88].copy_from_slice(&512u32.to_le_bytes());
    d[S + 12..S + 16].copy_from_slice(&128u32.to_le_bytes());
    reseal(&mut d, 1);
    let t = table(&d).unwrap();
    assert_eq!(t.source, WhichHeader::Primary);
    assert_eq!((t.entry_count, t.entry_size), (32, 512));
    assert_eq!(
        t.partitions.iter().map(|p| p.index).collect::<Vec<_>>(),
        [0, 1]
    );
    // Bytes past 92 in a 128-byte header are covered by its CRC.
    d[S + 100] = 1;
    assert!(matches!(
        table(&d).unwrap().primary_problem,
        Some(Problem::HeaderCrc { .. })
    ));
}

#[test]
fn plans_and_refusals() {
    assert_eq!(
        image::plan(1 << 30, &[spec("a", 100, None), spec("b", 1, None)]).unwrap(),
        [2048..2048 + 204800, 206848..206848 + 2048]
    );
    // 16 MiB holds 14 MiB of partitions: the first MiB and the backup's end are GPT.
    assert!(image::plan(16 * MIB, &[spec("a", 14, None)]).is_ok());
    assert!(matches!(
        image::plan(16 * MIB, &[spec("a", 10, None), spec("b", 5, None)]),
        Err(ImageError::DoesNotFit { name, .. }) if name == "b"
    ));
    assert!(matches!(
        image::plan(MIB, &[]),
        Err(ImageError::BadDiskSize(_))
    ));
    assert!(matches!(
        image::plan(16 * MIB + 1, &[]),
        Err(ImageError::BadDiskSize(_))
    ));
    assert!(matches!(
        image::plan(16 * MIB, &[spec("a", 1, None), spec("a", 1, None)]),
        Err(ImageError::DuplicateName(_))
    ));
    let odd = PartSpec {
        name: "a".into(),
        bytes: 1000,
        contents: None,
    };
    assert!(matches!(
        image::plan(16 * MIB, &[odd]),
        Err(ImageError::BadPartitionSize { .. })
    ));
    let s = Scratch::new("refusals");
    std::fs::write(s.path("big"), vec![1u8; 2 * MIB as usize + 1]).unwrap();
    let e = image::create(
        &s.path("x.img"),
        16 * MIB,
        &[spec("a", 2, Some(&s.path("big")))],
    )
    .unwrap_err();
    assert!(matches!(e, ImageError::ContentsTooLarge { .. }), "{e}");
    assert!(!s.path("x.img").exists(), "nothing written on a refusal");
}

#[test]
fn reconcile_keeps_data_and_grows() {
    let s = Scratch::new("reconcile");
    let img = s.path("sub/disk.img");
    let c = s.path("contents.bin");
    std::fs::write(&c, b"initial").unwrap();
    let first = [spec("data", 4, Some(&c))];
    // Made on first use (with its directory).
    let r = image::reconcile(&img, 8 * MIB, &first).unwrap();
    assert!(r.created);
    // What a guest wrote.
    let mut d = std::fs::read(&img).unwrap();
    d[2048 * S..2048 * S + 5].copy_from_slice(b"guest");
    std::fs::write(&img, &d).unwrap();
    let guid = table(&d).unwrap().disk_guid;

    // Same configuration, new contents file: nothing changes.
    std::fs::write(&c, b"changed").unwrap();
    let r = image::reconcile(&img, 8 * MIB, &first).unwrap();
    assert_eq!(r.partitions[0].action, Action::Kept);
    assert_eq!((r.created, r.grown_from), (false, None));
    assert_eq!(std::fs::read(&img).unwrap(), d);

    // A second partition and a larger disk: the file grows, the backup moves, the
    // data stays, the new partition gets its contents.
    let second = [spec("data", 4, Some(&c)), spec("more", 8, Some(&c))];
    let r = image::reconcile(&img, 32 * MIB, &second).unwrap();
    assert_eq!(r.grown_from, Some(8 * MIB));
    assert_eq!(r.partitions[1].action, Action::Created);
    let d2 = std::fs::read(&img).unwrap();
    assert_eq!(d2.len() as u64, 32 * MIB);
    assert_eq!(&d2[2048 * S..2048 * S + 7], b"guestal");
    let more = r.partitions[1].lbas.clone();
    assert_eq!(&d2[more.start as usize * S..][..7], b"changed");
    let t = table(&d2).unwrap();
    assert_eq!(
        (t.last_usable, t.alternate_lba, t.disk_guid),
        (65536 - 34, 65535, guid)
    );
    let mut no_primary = d2.clone();
    no_primary[S..2 * S].fill(0);
    assert_eq!(table(&no_primary).unwrap().partitions, t.partitions);
    // The old backup position is now inside the new partition: zeroed.
    assert!(more.contains(&(8 * MIB / 512 - 1)));
    assert!(d2[(8 * MIB as usize) - S..8 * MIB as usize]
        .iter()
        .all(|&b| b == 0));

    // A partition the configuration no longer names is kept and reported.
    let r = image::reconcile(&img, 32 * MIB, &second[1..]).unwrap();
    assert_eq!(r.unconfigured, ["data"]);
    assert_eq!(std::fs::read(&img).unwrap(), d2);

    // Refusals change nothing.
    let e = image::reconcile(&img, 16 * MIB, &second).unwrap_err();
    assert!(matches!(e, ImageError::WouldShrink { .. }), "{e}");
    let e = image::reconcile(&img, 32 * MIB, &[spec("data", 8, None)]).unwrap_err();
    assert!(
        matches!(e, ImageError::SizeChanged { on_disk, configured, .. }
        if on_disk == 4 * MIB && configured == 8 * MIB),
        "{e}"
    );
    let e = image::reconcile(&img, 32 * MIB, &[spec("data", 2, None)]).unwrap_err();
    assert!(
        e.to_string().contains("is 4 MiB in the image but 2 MiB"),
        "{e}"
    );
    let e = image::reconcile(&img, 32 * MIB, &[spec("huge", 20, None)]).unwrap_err();
    assert!(matches!(e, ImageError::DoesNotFit { .. }), "{e}");
    assert_eq!(std::fs::read(&img).unwrap(), d2);

    // A bad primary is repaired from the backup.
    let mut broken = d2.clone();
    broken[S + 30] ^= 1;
    std::fs::write(&img, &broken).unwrap();
    let r = image::reconcile(&img, 32 * MIB, &second).unwrap();
    assert!(matches!(r.repaired, Some(Problem::HeaderCrc { .. })));
    let t2 = table(&std::fs::read(&img).unwrap()).unwrap();
    assert_eq!(
        (t2.source, t2.partitions),
        (WhichHeader::Primary, t.partitions.clone())
    );

    // A file extended by other means: the backup is moved to the new end.
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.set_len(40 * MIB).unwrap();
    drop(f);
    let r = image::reconcile(&img, 40 * MIB, &second).unwrap();
    assert_eq!((r.grown_from, r.repaired), (None, None));
    let d3 = std::fs::read(&img).unwrap();
    let t3 = table(&d3).unwrap();
    assert_eq!((t3.alternate_lba, t3.last_usable), (81919, 81919 - 33));
    let mut no_primary = d3.clone();
    no_primary[S..2 * S].fill(0);
    assert_eq!(table(&no_primary).unwrap().partitions, t.partitions);

    // A file that is no GPT disk is not overwritten.
    std::fs::write(s.path("junk.img"), vec![0u8; 8 * MIB as usize]).unwrap();
    let e = image::reconcile(&s.path("junk.img"), 8 * MIB, &first).unwrap_err();
    assert!(matches!(e, ImageError::Unreadable(_)), "{e}");
}

/// util-linux's `sfdisk` reads the writer's tables as we do (when it is installed;
/// `apt-get install fdisk`).
#[test]
fn sfdisk_agrees() {
    let Ok(out) = std::process::Command::new("sfdisk")
        .arg("--version")
        .output()
    else {
        eprintln!("sfdisk not installed: skipped");
        return;
    };
    assert!(out.status.success());
    let s = Scratch::new("sfdisk");
    let (img, _) = two_partitions(&s);
    let out = std::process::Command::new("sfdisk")
        .arg("--dump")
        .arg(&img)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("label: gpt"), "{text}");
    assert!(
        text.contains(
            "start=        2048, size=        8192, type=14FE928C-D7E6-431D-8FDF-2DC38A7E73DB"
        ),
        "{text}"
    );
    assert!(text.contains("name=\"linux-data\""), "{text}");
    assert!(
        text.contains("start=       10240, size=        4096"),
        "{text}"
    );
    assert!(text.contains("last-lba: 32734"), "{text}");
    let verify = std::process::Command::new("sfdisk")
        .arg("--verify")
        .arg(&img)
        .output()
        .unwrap();
    let v = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success() && v.contains("No errors detected"),
        "{v}"
    );
}
