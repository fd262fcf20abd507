//! The VM snapshot container. A snapshot of a VM is a set of named sections — the
//! VM's shape, each vCPU's architectural and software state, each device's state —
//! that the kernel fills from the devices' and backends' own versioned `state()`
//! encodings; guest memory is kept beside it (in page frames, too large for the
//! heap). This crate only packs and unpacks, and checks everything on the way in:
//!
//! ```text
//! header   64 bytes   magic "HVSNAPSH", version u32, section count u32,
//!                     total length u64, SHA-256 of bytes [64, total) [32 bytes],
//!                     8 zero bytes
//! section  name length u8 (1..=NAME_MAX), name (ASCII graphic), zero padding to
//!          a multiple of 8, data length u64, data, zero padding to a multiple of 8
//! ```
//!
//! All integers little endian. A truncated, corrupted (checksum), wrong-version or
//! malformed snapshot is an error naming what is wrong, never a panic; a restore
//! into a VM of another shape is refused by [`Shape::check`] before anything
//! changes.
#![no_std]

extern crate alloc;

pub mod area;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use sha2::{Digest, Sha256};

pub const MAGIC: [u8; 8] = *b"HVSNAPSH";
pub const VERSION: u32 = 1;
const HEADER: usize = 64;
/// Longest section name.
pub const NAME_MAX: usize = 48;
/// Most sections a snapshot may have (bounds what a corrupt count could make the
/// reader allocate).
pub const SECTIONS_MAX: usize = 4096;

/// Why a snapshot cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    Truncated { needed: u64, have: u64 },
    BadMagic,
    Version { found: u32 },
    Checksum,
    BadHeader,
    BadSection { index: usize },
    Duplicate(String),
    Missing(String),
    BadName(String),
    TooMany,
    Shape(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Error::Truncated { needed, have } => {
                write!(f, "the snapshot is truncated: {needed} bytes needed, {have} there")
            }
            Error::BadMagic => f.write_str("not a snapshot (bad magic)"),
            Error::Version { found } => write!(
                f,
                "snapshot format version {found} is not supported (this hypervisor reads version {VERSION})"
            ),
            Error::Checksum => f.write_str("the snapshot is corrupted (SHA-256 mismatch)"),
            Error::BadHeader => f.write_str("the snapshot's header is malformed"),
            Error::BadSection { index } => write!(f, "section {index} of the snapshot is malformed"),
            Error::Duplicate(n) => write!(f, "the snapshot has section {n:?} twice"),
            Error::Missing(n) => write!(f, "the snapshot has no section {n:?}"),
            Error::BadName(n) => write!(f, "bad section name {n:?}"),
            Error::TooMany => write!(f, "more than {SECTIONS_MAX} sections"),
            Error::Shape(why) => write!(f, "the snapshot is of a VM of another shape: {why}"),
        }
    }
}

fn name_ok(name: &str) -> bool {
    !name.is_empty() && name.len() <= NAME_MAX && name.bytes().all(|b| b.is_ascii_graphic())
}

fn pad8(n: usize) -> usize {
    n.next_multiple_of(8)
}

/// Collects sections and packs them.
#[derive(Default)]
pub struct Builder {
    sections: Vec<(String, Vec<u8>)>,
}

impl Builder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds section `name` (unique, 1 to [`NAME_MAX`] ASCII graphic characters).
    pub fn add(&mut self, name: &str, data: Vec<u8>) -> Result<(), Error> {
        if !name_ok(name) {
            return Err(Error::BadName(name.into()));
        }
        if self.sections.iter().any(|(n, _)| n == name) {
            return Err(Error::Duplicate(name.into()));
        }
        if self.sections.len() >= SECTIONS_MAX {
            return Err(Error::TooMany);
        }
        self.sections.push((name.into(), data));
        Ok(())
    }

    /// The packed snapshot.
    pub fn finish(self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&[0; HEADER]);
        for (name, data) in &self.sections {
            out.push(name.len() as u8);
            out.extend_from_slice(name.as_bytes());
            out.resize(pad8(out.len()), 0);
            out.extend_from_slice(&(data.len() as u64).to_le_bytes());
            out.extend_from_slice(data);
            out.resize(pad8(out.len()), 0);
        }
        let total = out.len() as u64;
        let digest = Sha256::digest(&out[HEADER..]);
        out[0..8].copy_from_slice(&MAGIC);
        out[8..12].copy_from_slice(&VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&(self.sections.len() as u32).to_le_bytes());
        out[16..24].copy_from_slice(&total.to_le_bytes());
        out[24..56].copy_from_slice(&digest);
        out
    }
}

/// A checked snapshot's sections, borrowed from its bytes.
#[derive(Debug)]
pub struct Snapshot<'a> {
    sections: Vec<(&'a str, &'a [u8])>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// Reads and checks a packed snapshot.
pub fn read(bytes: &[u8]) -> Result<Snapshot<'_>, Error> {
    let have = bytes.len() as u64;
    if bytes.len() < HEADER {
        return Err(Error::Truncated {
            needed: HEADER as u64,
            have,
        });
    }
    if bytes[0..8] != MAGIC {
        return Err(Error::BadMagic);
    }
    let version = u32_at(bytes, 8);
    if version != VERSION {
        return Err(Error::Version { found: version });
    }
    let count = u32_at(bytes, 12) as usize;
    let total = u64_at(bytes, 16);
    if total < HEADER as u64 || bytes[56..64] != [0; 8] {
        return Err(Error::BadHeader);
    }
    if total > have {
        return Err(Error::Truncated {
            needed: total,
            have,
        });
    }
    if count > SECTIONS_MAX {
        return Err(Error::TooMany);
    }
    let body = &bytes[..total as usize];
    if Sha256::digest(&body[HEADER..])[..] != body[24..56] {
        return Err(Error::Checksum);
    }
    let mut sections: Vec<(&str, &[u8])> = Vec::with_capacity(count.min(body.len() / 16));
    let mut at = HEADER;
    for index in 0..count {
        let bad = || Error::BadSection { index };
        let len = *body.get(at).ok_or_else(bad)? as usize;
        let name_end = at + 1 + len;
        let name = body
            .get(at + 1..name_end)
            .and_then(|n| core::str::from_utf8(n).ok())
            .filter(|n| name_ok(n))
            .ok_or_else(bad)?;
        let len_at = pad8(name_end);
        if body
            .get(name_end..len_at)
            .is_none_or(|p| p.iter().any(|&b| b != 0))
        {
            return Err(bad());
        }
        let data_len = body
            .get(len_at..len_at + 8)
            .map(|_| u64_at(body, len_at))
            .ok_or_else(bad)?;
        let data_at = len_at + 8;
        let data_end = usize::try_from(data_len)
            .ok()
            .and_then(|l| data_at.checked_add(l))
            .filter(|&e| e <= body.len())
            .ok_or_else(bad)?;
        let next = pad8(data_end);
        if body
            .get(data_end..next)
            .is_none_or(|p| p.iter().any(|&b| b != 0))
        {
            return Err(bad());
        }
        if sections.iter().any(|(n, _)| *n == name) {
            return Err(Error::Duplicate(name.into()));
        }
        sections.push((name, &body[data_at..data_end]));
        at = next;
    }
    if at != body.len() {
        return Err(Error::BadHeader);
    }
    Ok(Snapshot { sections })
}

impl<'a> Snapshot<'a> {
    /// Section `name`'s data.
    pub fn get(&self, name: &str) -> Result<&'a [u8], Error> {
        self.sections
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, d)| *d)
            .ok_or_else(|| Error::Missing(name.into()))
    }

    /// The section names, in order.
    pub fn names(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.sections.iter().map(|(n, _)| *n)
    }
}

/// What a snapshot can be restored into: a VM with as many vCPUs, as much RAM and
/// the same devices (by section name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    pub vcpus: u32,
    pub memory_bytes: u64,
    pub devices: Vec<String>,
}

impl Shape {
    pub const SECTION: &'static str = "shape";

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.vcpus.to_le_bytes());
        out.extend_from_slice(&self.memory_bytes.to_le_bytes());
        out.extend_from_slice(&(self.devices.len() as u32).to_le_bytes());
        for d in &self.devices {
            out.push(d.len().min(255) as u8);
            out.extend_from_slice(&d.as_bytes()[..d.len().min(255)]);
        }
        out
    }

    pub fn from_bytes(b: &[u8]) -> Result<Shape, Error> {
        let bad = || Error::Shape(String::from("its shape record is malformed"));
        if b.len() < 16 {
            return Err(bad());
        }
        let vcpus = u32_at(b, 0);
        let memory_bytes = u64_at(b, 4);
        let count = u32_at(b, 12) as usize;
        if count > SECTIONS_MAX {
            return Err(bad());
        }
        let mut devices = Vec::with_capacity(count.min(b.len()));
        let mut at = 16;
        for _ in 0..count {
            let len = *b.get(at).ok_or_else(bad)? as usize;
            let name = b
                .get(at + 1..at + 1 + len)
                .and_then(|n| core::str::from_utf8(n).ok())
                .ok_or_else(bad)?;
            devices.push(name.into());
            at += 1 + len;
        }
        if at != b.len() {
            return Err(bad());
        }
        Ok(Shape {
            vcpus,
            memory_bytes,
            devices,
        })
    }

    /// Whether a snapshot of shape `self` fits a VM of shape `vm`; the error says
    /// what differs.
    pub fn check(&self, vm: &Shape) -> Result<(), Error> {
        if self.vcpus != vm.vcpus {
            return Err(Error::Shape(format!(
                "{} vCPUs in the snapshot, {} in the VM",
                self.vcpus, vm.vcpus
            )));
        }
        if self.memory_bytes != vm.memory_bytes {
            return Err(Error::Shape(format!(
                "{} KiB of RAM in the snapshot, {} KiB in the VM",
                self.memory_bytes / 1024,
                vm.memory_bytes / 1024
            )));
        }
        if let Some(d) = self.devices.iter().find(|d| !vm.devices.contains(d)) {
            return Err(Error::Shape(format!("device {d} is not in the VM")));
        }
        if let Some(d) = vm.devices.iter().find(|d| !self.devices.contains(d)) {
            return Err(Error::Shape(format!("device {d} is not in the snapshot")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    fn sample() -> Vec<u8> {
        let mut b = Builder::new();
        let shape = Shape {
            vcpus: 2,
            memory_bytes: 4 << 20,
            devices: vec!["pic".into(), "uart".into()],
        };
        b.add(Shape::SECTION, shape.to_bytes()).unwrap();
        b.add("cpu.0", vec![1, 2, 3]).unwrap();
        b.add("cpu.1", Vec::new()).unwrap();
        b.add("pic", vec![9; 17]).unwrap();
        b.finish()
    }

    #[test]
    fn round_trip() {
        let bytes = sample();
        assert_eq!(bytes.len() % 8, 0);
        let s = read(&bytes).unwrap();
        assert_eq!(s.get("cpu.0").unwrap(), &[1, 2, 3]);
        assert_eq!(s.get("cpu.1").unwrap(), &[] as &[u8]);
        assert_eq!(s.get("pic").unwrap(), &[9; 17]);
        assert_eq!(
            s.names().collect::<Vec<_>>(),
            ["shape", "cpu.0", "cpu.1", "pic"]
        );
        assert_eq!(s.get("uart"), Err(Error::Missing("uart".into())));
        let shape = Shape::from_bytes(s.get(Shape::SECTION).unwrap()).unwrap();
        assert_eq!(shape.vcpus, 2);
        assert_eq!(shape.devices, ["pic", "uart"]);
        // Trailing bytes past `total` (a padded disk area) are not read.
        let mut padded = bytes.clone();
        padded.extend_from_slice(&[0xAA; 100]);
        assert!(read(&padded).is_ok());
    }

    #[test]
    fn builder_refuses_bad_names() {
        let mut b = Builder::new();
        assert_eq!(b.add("", vec![]), Err(Error::BadName("".into())));
        assert!(b.add("a b", vec![]).is_err());
        assert!(b.add(&"x".repeat(NAME_MAX + 1), vec![]).is_err());
        b.add("a", vec![]).unwrap();
        assert_eq!(b.add("a", vec![]), Err(Error::Duplicate("a".into())));
    }

    #[test]
    fn refuses_truncated_corrupted_and_other_versions() {
        let bytes = sample();
        for cut in 0..bytes.len() {
            assert!(read(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(matches!(read(&bytes[..10]), Err(Error::Truncated { .. })));
        let mut v = bytes.clone();
        v[8] = 2;
        assert_eq!(read(&v).unwrap_err(), Error::Version { found: 2 });
        assert!(read(&v).unwrap_err().to_string().contains("version 2"));
        let mut m = bytes.clone();
        m[0] = b'X';
        assert_eq!(read(&m).unwrap_err(), Error::BadMagic);
        // Any flipped bit after the header breaks the checksum.
        for at in (HEADER..bytes.len()).step_by(7) {
            let mut c = bytes.clone();
            c[at] ^= 0x10;
            assert_eq!(read(&c).unwrap_err(), Error::Checksum, "byte {at}");
        }
    }

    /// Sections that pass the checksum but lie about their lengths (a writer bug or a
    /// forged snapshot with a recomputed checksum) are refused, never read past.
    #[test]
    fn refuses_malformed_sections_with_a_valid_checksum() {
        let reseal = |mut b: Vec<u8>| {
            let digest = Sha256::digest(&b[HEADER..]);
            b[24..56].copy_from_slice(&digest);
            b
        };
        let bytes = sample();
        // Name length 0.
        let mut b = bytes.clone();
        b[HEADER] = 0;
        assert!(matches!(
            read(&reseal(b)),
            Err(Error::BadSection { index: 0 })
        ));
        // A data length far past the end.
        let mut b = bytes.clone();
        b[HEADER + 8..HEADER + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            read(&reseal(b)),
            Err(Error::BadSection { index: 0 })
        ));
        // More sections claimed than there are.
        let mut b = bytes.clone();
        b[12] = 5;
        assert!(read(&reseal(b)).is_err());
        // Fewer: bytes left over.
        let mut b = bytes.clone();
        b[12] = 3;
        assert_eq!(read(&reseal(b)).unwrap_err(), Error::BadHeader);
        // A random-garbage loop (fixed seed): never a panic.
        let mut x: u64 = 0x1234_5678;
        for _ in 0..2000 {
            let mut g = bytes.clone();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = (x as usize) % g.len();
                g[at] = (x >> 32) as u8;
            }
            let _ = read(&reseal(g));
        }
    }

    #[test]
    fn shape_checks_say_what_differs() {
        let a = Shape {
            vcpus: 1,
            memory_bytes: 4 << 20,
            devices: vec!["pic".into(), "pci.00:03.0".into()],
        };
        assert_eq!(a.check(&a.clone()), Ok(()));
        let more_cpus = Shape {
            vcpus: 2,
            ..a.clone()
        };
        assert!(a
            .check(&more_cpus)
            .unwrap_err()
            .to_string()
            .contains("1 vCPUs in the snapshot, 2 in the VM"));
        let more_ram = Shape {
            memory_bytes: 8 << 20,
            ..a.clone()
        };
        assert!(a
            .check(&more_ram)
            .unwrap_err()
            .to_string()
            .contains("4096 KiB of RAM in the snapshot"));
        let no_disk = Shape {
            devices: vec!["pic".into()],
            ..a.clone()
        };
        assert!(a
            .check(&no_disk)
            .unwrap_err()
            .to_string()
            .contains("device pci.00:03.0 is not in the VM"));
        assert!(no_disk
            .check(&a)
            .unwrap_err()
            .to_string()
            .contains("not in the snapshot"));
        assert_eq!(Shape::from_bytes(&a.to_bytes()), Ok(a.clone()));
        let mut b = a.to_bytes();
        b.pop();
        assert!(Shape::from_bytes(&b).is_err());
        assert!(Shape::from_bytes(&[0; 3]).is_err());
    }
}
