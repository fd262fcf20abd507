//! The guest bundle: the VMs to start and their images, packed by xtask into one blob
//! that the bootloader hands the kernel as its ramdisk. Writer and reader live here
//! together so the format has one definition.
//!
//! Layout (little endian): a 16-byte header (`MAGIC`, entry count u32, total length
//! u32), then `count` fixed 64-byte entries (name, memory KiB, run limit, image offset,
//! image length, flags), then the image bytes. Every offset is
//! checked against the blob before use: a truncated or corrupt bundle is an error,
//! never an out-of-bounds read.
#![no_std]

extern crate alloc;

use alloc::vec::Vec;
use core::fmt;

pub const MAGIC: [u8; 8] = *b"HVBUNDL1";
const HEADER: usize = 16;
const ENTRY: usize = 64;
pub const NAME_MAX: usize = 24;
const FLAG_BACKGROUND: u32 = 1;

/// One VM to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmSpec<'a> {
    /// Shown in front of the VM's console lines (`name | text`).
    pub name: &'a str,
    pub memory_kib: u32,
    /// Stop the VM after this much wall-clock run time (0: no limit).
    pub run_limit_ms: u32,
    /// A background VM is stopped once every other (foreground) VM has stopped, so a
    /// guest that never ends by itself does not keep the hypervisor running.
    pub background: bool,
    pub image: &'a [u8],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BundleError {
    BadMagic,
    Truncated { needed: usize, have: usize },
    BadName { index: usize },
    ImageOutOfBounds { index: usize },
    NameTooLong { index: usize },
    TooLarge,
}

impl fmt::Display for BundleError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            BundleError::BadMagic => write!(f, "not a guest bundle (bad magic)"),
            BundleError::Truncated { needed, have } => {
                write!(f, "bundle truncated: needs {needed} bytes, has {have}")
            }
            BundleError::BadName { index } => {
                write!(f, "entry {index}: name is empty or not UTF-8")
            }
            BundleError::ImageOutOfBounds { index } => {
                write!(f, "entry {index}: image lies outside the bundle")
            }
            BundleError::NameTooLong { index } => {
                write!(f, "entry {index}: name longer than {NAME_MAX} bytes")
            }
            BundleError::TooLarge => write!(f, "bundle larger than 4 GiB"),
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// Packs `vms` into a bundle.
pub fn write(vms: &[VmSpec]) -> Result<Vec<u8>, BundleError> {
    let data_start = HEADER + ENTRY * vms.len();
    let total: usize = data_start + vms.iter().map(|v| v.image.len()).sum::<usize>();
    if total > u32::MAX as usize {
        return Err(BundleError::TooLarge);
    }
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(vms.len() as u32).to_le_bytes());
    out.extend_from_slice(&(total as u32).to_le_bytes());
    let mut offset = data_start;
    for (index, vm) in vms.iter().enumerate() {
        if vm.name.is_empty() {
            return Err(BundleError::BadName { index });
        }
        if vm.name.len() > NAME_MAX {
            return Err(BundleError::NameTooLong { index });
        }
        let mut name = [0u8; NAME_MAX];
        name[..vm.name.len()].copy_from_slice(vm.name.as_bytes());
        out.extend_from_slice(&name);
        let flags = if vm.background { FLAG_BACKGROUND } else { 0 };
        for v in [
            vm.memory_kib,
            vm.run_limit_ms,
            offset as u32,
            vm.image.len() as u32,
            flags,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&[0u8; ENTRY - NAME_MAX - 20]);
        offset += vm.image.len();
    }
    for vm in vms {
        out.extend_from_slice(vm.image);
    }
    Ok(out)
}

/// Reads every VM description out of `blob`.
pub fn read(blob: &[u8]) -> Result<Vec<VmSpec<'_>>, BundleError> {
    if blob.len() < HEADER {
        return Err(BundleError::Truncated {
            needed: HEADER,
            have: blob.len(),
        });
    }
    if blob[..8] != MAGIC {
        return Err(BundleError::BadMagic);
    }
    let count = u32_at(blob, 8) as usize;
    let total = u32_at(blob, 12) as usize;
    let table_end = count
        .checked_mul(ENTRY)
        .and_then(|t| t.checked_add(HEADER))
        .ok_or(BundleError::TooLarge)?;
    let needed = table_end.max(total);
    if blob.len() < needed {
        return Err(BundleError::Truncated {
            needed,
            have: blob.len(),
        });
    }
    let mut vms = Vec::with_capacity(count);
    for index in 0..count {
        let e = &blob[HEADER + index * ENTRY..HEADER + (index + 1) * ENTRY];
        let name_len = e[..NAME_MAX]
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(NAME_MAX);
        let name = core::str::from_utf8(&e[..name_len])
            .ok()
            .filter(|n| !n.is_empty())
            .ok_or(BundleError::BadName { index })?;
        let offset = u32_at(e, NAME_MAX + 8) as usize;
        let len = u32_at(e, NAME_MAX + 12) as usize;
        let image = offset
            .checked_add(len)
            .filter(|&end| offset >= table_end && end <= total)
            .map(|end| &blob[offset..end])
            .ok_or(BundleError::ImageOutOfBounds { index })?;
        vms.push(VmSpec {
            name,
            memory_kib: u32_at(e, NAME_MAX),
            run_limit_ms: u32_at(e, NAME_MAX + 4),
            background: u32_at(e, NAME_MAX + 16) & FLAG_BACKGROUND != 0,
            image,
        });
    }
    Ok(vms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two() -> Vec<u8> {
        write(&[
            VmSpec {
                name: "a",
                memory_kib: 4096,
                run_limit_ms: 0,
                background: false,
                image: b"first",
            },
            VmSpec {
                name: "spin",
                memory_kib: 2048,
                run_limit_ms: 1500,
                background: true,
                image: b"xy",
            },
        ])
        .unwrap()
    }

    #[test]
    fn round_trip() {
        let blob = two();
        let vms = read(&blob).unwrap();
        assert_eq!(vms.len(), 2);
        assert_eq!(
            vms[0],
            VmSpec {
                name: "a",
                memory_kib: 4096,
                run_limit_ms: 0,
                background: false,
                image: b"first"
            }
        );
        assert!(vms[1].background);
        assert_eq!(vms[1].name, "spin");
        assert_eq!(vms[1].run_limit_ms, 1500);
        assert_eq!(vms[1].image, b"xy");
    }

    #[test]
    fn rejects_bad_magic_and_truncation() {
        let mut blob = two();
        assert_eq!(
            read(&blob[..10]),
            Err(BundleError::Truncated {
                needed: 16,
                have: 10
            })
        );
        let n = blob.len();
        assert!(matches!(
            read(&blob[..n - 1]),
            Err(BundleError::Truncated { .. })
        ));
        blob[0] = b'X';
        assert_eq!(read(&blob), Err(BundleError::BadMagic));
    }

    #[test]
    fn rejects_images_outside_the_data_area() {
        let mut blob = two();
        // Point entry 0's image into the entry table.
        let at = HEADER + NAME_MAX + 8;
        blob[at..at + 4].copy_from_slice(&16u32.to_le_bytes());
        assert_eq!(read(&blob), Err(BundleError::ImageOutOfBounds { index: 0 }));
        let mut blob = two();
        blob[at + 4..at + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(read(&blob), Err(BundleError::ImageOutOfBounds { index: 0 }));
    }

    #[test]
    fn rejects_bad_names() {
        let long = "x".repeat(NAME_MAX + 1);
        let spec = VmSpec {
            name: &long,
            memory_kib: 1,
            run_limit_ms: 0,
            background: false,
            image: b"",
        };
        assert_eq!(write(&[spec]), Err(BundleError::NameTooLong { index: 0 }));
        let mut blob = two();
        blob[HEADER] = 0xff;
        assert_eq!(read(&blob), Err(BundleError::BadName { index: 0 }));
        let empty = VmSpec {
            name: "",
            memory_kib: 1,
            run_limit_ms: 0,
            background: false,
            image: b"",
        };
        assert_eq!(write(&[empty]), Err(BundleError::BadName { index: 0 }));
    }
}
