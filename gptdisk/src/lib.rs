//! GUID Partition Tables for the hypervisor's persistent disk: finding a VM's
//! partition by name on a disk read 512-byte sector by sector (`no_std` + `alloc`,
//! what the kernel runs over its NVMe driver), and, with the `std` feature, creating
//! and reconciling the disk image file that xtask attaches to QEMU.
//!
//! The on-disk structures (protective MBR, header, partition entry, GUIDs) are
//! `gpt_disk_types`'s; this crate owns the validation (every field a disk supplies is
//! checked before it is used: UEFI 2.10 §5.3.2 and §5.3.3) and the layout policy.

#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

#[cfg(feature = "std")]
pub mod image;
mod lookup;

pub use gpt_disk_types::{GptPartitionType, Guid};
pub use lookup::{
    find_partition, read_table, Error, Partition, Problem, SectorRead, Table, WhichHeader,
};

/// The only sector size this crate handles: the NVMe namespace QEMU gives and the
/// size every GPT tool assumes for an image file.
pub const SECTOR_SIZE: usize = 512;

/// Longest partition name: the entry's 72-byte name field holds 36 UTF-16 code units
/// (UEFI 2.10 §5.3.3, table 5-7).
pub const NAME_UNITS: usize = 36;

/// The partition type GUID of a VM disk partition made by xtask.
///
/// Generated at random (a version 4 UUID) for this project; it is not registered
/// anywhere and means "a raw block device handed to one hv guest, possibly with a
/// `diskcrypt` header at its start". Other tools show it as an unknown type, which
/// keeps them from offering to mount it. Lookups go by name, not by type: a partition
/// of another type with the right name is found too (its type is in
/// [`Partition::type_guid`] for the caller to judge).
pub const HV_PARTITION_TYPE: GptPartitionType =
    GptPartitionType(Guid::parse_or_panic("14fe928c-d7e6-431d-8fdf-2dc38a7e73db"));

/// Bounds on what a header may ask to be read, so that a hostile or corrupt disk
/// cannot make the reader loop for long or allocate much: at most this many entries
/// (the usual table has 128) ...
pub const MAX_ENTRIES: u32 = 4096;
/// ... of at most this many bytes each (128 everywhere in practice; UEFI allows
/// 128 x 2^n).
pub const MAX_ENTRY_SIZE: u32 = 4096;

/// The UTF-16 code units of `name`, or `None` when it is empty, longer than
/// [`NAME_UNITS`] units, or holds a NUL (which would end the name on disk).
pub fn name_units(name: &str) -> Option<([u16; NAME_UNITS], usize)> {
    let mut units = [0u16; NAME_UNITS];
    let mut n = 0;
    for u in name.encode_utf16() {
        if u == 0 || n == NAME_UNITS {
            return None;
        }
        units[n] = u;
        n += 1;
    }
    (n > 0).then_some((units, n))
}
