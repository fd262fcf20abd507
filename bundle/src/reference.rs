//! A bundle kept on the machine's disk instead of in the boot image: the boot image's
//! ramdisk then holds only a [`BundleRef`] naming the GPT partition the bundle lies
//! at the start of, its length and a checksum.
//!
//! Why: the firmware reads the ramdisk through the BIOS (or UEFI) disk services,
//! which under an emulator is the slowest part of starting (seconds for the Linux
//! guest's ~15 MB); the hypervisor's own NVMe driver reads the same bytes in a
//! fraction of that. xtask writes the bundle into the partition before every boot.
//!
//! Layout (little endian):
//!
//! ```text
//!  0  magic     "HVBNDREF"
//!  8  version   u32 = 1
//! 12  name_len  u32 (1 to NAME_BYTES_MAX)
//! 16  length    u64: the bundle's bytes, from the partition's first sector
//! 24  checksum  u64: FNV-1a 64 of those bytes
//! 32  name      the partition's GPT name, UTF-8
//! ```
//!
//! The checksum catches a stale or torn copy (the partition written by an older
//! run, or an interrupted one): it is not a defence against an attacker, who could
//! as well change the boot image that carries the reference.

use alloc::vec::Vec;
use core::fmt;

pub const REF_MAGIC: [u8; 8] = *b"HVBNDREF";
const REF_VERSION: u32 = 1;
const REF_HEADER: usize = 32;
/// A GPT name is at most 36 UTF-16 units: at most 108 bytes of UTF-8.
pub const NAME_BYTES_MAX: usize = 108;

/// Where the bundle is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BundleRef<'a> {
    /// The GPT partition the bundle starts at.
    pub partition: &'a str,
    /// The bundle's length in bytes.
    pub len: u64,
    /// [`checksum`] of the bundle's bytes.
    pub checksum: u64,
}

/// Why a reference is unusable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefError {
    Truncated,
    UnsupportedVersion(u32),
    BadName,
}

impl fmt::Display for RefError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefError::Truncated => f.write_str("the bundle reference is truncated"),
            RefError::UnsupportedVersion(v) => {
                write!(f, "the bundle reference has unsupported version {v}")
            }
            RefError::BadName => f.write_str("the bundle reference's partition name is invalid"),
        }
    }
}

/// FNV-1a, 64 bits, of `bytes`.
pub fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// The reference to `bundle` stored at the start of partition `partition`.
pub fn write_ref(partition: &str, bundle: &[u8]) -> Vec<u8> {
    assert!(!partition.is_empty() && partition.len() <= NAME_BYTES_MAX);
    let mut out = Vec::with_capacity(REF_HEADER + partition.len());
    out.extend_from_slice(&REF_MAGIC);
    out.extend_from_slice(&REF_VERSION.to_le_bytes());
    out.extend_from_slice(&(partition.len() as u32).to_le_bytes());
    out.extend_from_slice(&(bundle.len() as u64).to_le_bytes());
    out.extend_from_slice(&checksum(bundle).to_le_bytes());
    out.extend_from_slice(partition.as_bytes());
    out
}

/// The reference in `blob`: `None` when `blob` is not one (a bundle itself).
pub fn read_ref(blob: &[u8]) -> Option<Result<BundleRef<'_>, RefError>> {
    if !blob.starts_with(&REF_MAGIC) {
        return None;
    }
    Some(parse(blob))
}

fn parse(blob: &[u8]) -> Result<BundleRef<'_>, RefError> {
    let header = blob.get(..REF_HEADER).ok_or(RefError::Truncated)?;
    let u32_at = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap());
    let version = u32_at(8);
    if version != REF_VERSION {
        return Err(RefError::UnsupportedVersion(version));
    }
    let name_len = u32_at(12) as usize;
    if name_len == 0 || name_len > NAME_BYTES_MAX {
        return Err(RefError::BadName);
    }
    let name = blob
        .get(REF_HEADER..REF_HEADER + name_len)
        .ok_or(RefError::Truncated)?;
    let partition = core::str::from_utf8(name).map_err(|_| RefError::BadName)?;
    if partition.contains('\0') {
        return Err(RefError::BadName);
    }
    Ok(BundleRef {
        partition,
        len: u64_at(16),
        checksum: u64_at(24),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_references() {
        let bundle = b"HVBUNDL6 and the rest";
        let r = write_ref("hv-bundle", bundle);
        let got = read_ref(&r).unwrap().unwrap();
        assert_eq!(got.partition, "hv-bundle");
        assert_eq!(got.len, bundle.len() as u64);
        assert_eq!(got.checksum, checksum(bundle));
        assert_ne!(checksum(b"a"), checksum(b"b"));
        // Not a reference at all: a bundle.
        assert!(read_ref(b"HVBUNDL6....").is_none());
        // Truncated header, truncated name, version, bad names.
        assert_eq!(read_ref(&r[..20]), Some(Err(RefError::Truncated)));
        assert_eq!(read_ref(&r[..r.len() - 1]), Some(Err(RefError::Truncated)));
        let mut v = r.clone();
        v[8] = 2;
        assert_eq!(read_ref(&v), Some(Err(RefError::UnsupportedVersion(2))));
        let mut n = r.clone();
        n[12..16].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(read_ref(&n), Some(Err(RefError::BadName)));
        let mut n = r.clone();
        n[12..16].copy_from_slice(&200u32.to_le_bytes());
        assert_eq!(read_ref(&n), Some(Err(RefError::BadName)));
        let mut u = r.clone();
        let last = u.len() - 1;
        u[last] = 0xFF;
        assert_eq!(read_ref(&u), Some(Err(RefError::BadName)));
    }
}
