//! The guest bundle: the VMs to start and their images, and the settings of the
//! machine as a whole, packed by xtask into one blob that the bootloader hands the
//! kernel as its ramdisk. Writer and reader live here together so the format has one
//! definition.
//!
//! Layout, version 9 (all integers little endian, all offsets from the blob's start):
//!
//! ```text
//! header   16 bytes   MAGIC "HVBUNDL9", entry count u32, total length u32
//! entries  count * 96 bytes, one per VM:
//!            0  name         [u8; 24], UTF-8, zero-padded
//!           24  memory_kib   u32
//!           28  run_limit_ms u32
//!           32  image        offset u32, length u32
//!           40  flags        u32 (bit 0: background, bit 1: benchmark hypercalls,
//!                             bit 2: stop on reset, bit 3: restart on crash,
//!                             bit 4: stop on an unbacked access, bit 5: has a
//!                             RAM-backed disk, bit 6: the disk (either kind) is
//!                             read-only, bit 7: has a partition disk, bit 8: the
//!                             partition is encrypted, bit 9: has a memory balloon)
//!           44  format       u32 (0 auto, 1 tiny, 2 multiboot, 3 linux)
//!           48  vcpus        u32 (1 to MAX_VCPUS)
//!           52  cmdline      offset u32, length u32 (UTF-8, at most CMDLINE_MAX)
//!           60  modules      offset u32 of the module table, count u32
//!           68  image_path   offset u32, length u32 (UTF-8, at most IMAGE_PATH_MAX)
//!           76  affinity     u64: bit n set = may run on host processor n; 0 = any
//!           84  disk         offset u32, length u32 (with flag bit 5: a multiple of
//!                            SECTOR_SIZE, 1 sector to DISK_MAX; without: zero)
//!           92  partition    offset u32 of the partition record (with flag bit 7;
//!                            without: zero)
//! nic table  count * 8 bytes, one per VM (version 7): offset u32 of the VM's NIC
//!          records, NIC count u32 (0 to NICS_MAX; offset 0 without NICs)
//! machine  8 bytes (version 8): offset u32 and length u32 of the machine record
//!          (always MACHINE_RECORD bytes, in the data area)
//! data     everything else: the machine record (112 bytes: flags u32, bit 0: an
//!          administrator credential follows, bit 2: the management network
//!          follows, other bits zero; then the credential, all zero without one:
//!          Argon2id memory_kib u32, iterations u32, lanes u32, salt [u8; 16], hash
//!          [u8; 32]; at 64 the management block, all zero without one, 48 bytes:
//!          see [`management`]); per VM its module table (count * 16
//!          bytes: data offset, data length, cmdline offset, cmdline length), its
//!          cmdline strings and image path, partition record (16 bytes: name
//!          offset, name length, key offset, key length; the name UTF-8 without NUL,
//!          1 to 36 UTF-16 units; the key 0 to KEY_MAX bytes, only with flag bit 8),
//!          partition name and key, its NIC records (24 bytes each: network name
//!          offset u32, length u32; MAC [u8; 6]; 2 zero bytes; rate_mbit u32, 0 = no
//!          limit; burst_kib u32, 0 = the default) and their network names, then the
//!          images, module data and disk contents, each starting 16-byte aligned.
//! ```
//!
//! Version 3 added `image_path` (the image's name as the user gave it, which a
//! Multiboot kernel gets at the start of its command line, as QEMU and GRUB pass it);
//! version 4 the processor `affinity` (Xen's `cpus=`); version 5 the `disk` (the
//! initial contents of a RAM-backed virtio-blk disk) in bytes that version 4 kept
//! reserved and zero; version 6 the `partition` (a GPT partition of the machine's
//! persistent disk, named, with its passphrase when it is encrypted) through the
//! last word version 5 kept reserved; version 7 the NICs (each on a named network
//! of the machine's virtual switch), through a table of its own after the entries,
//! since the entry had no word left; version 8 the machine record (what belongs to
//! the machine rather than to one VM: for now the management console's
//! administrator credential, an Argon2id hash of the passphrase, never the
//! passphrase), through a pointer after the NIC table, so that the header and the
//! tables before it stay where version 7 has them; version 9 the management network
//! (the network the hypervisor's own station joins, its address, the syslog
//! collector) in 48 bytes more of the machine record, which version 8 has 64 bytes
//! long. The magic names the version: the reader takes versions 4 to 9 (a version 4
//! entry has no disk, a version 4 or 5 entry no partition, and their flags must be
//! clear; before version 7 no VM has a NIC; before version 8 the machine has the
//! default settings, no credential; before version 9 no management network); any
//! other version is refused as a whole, with a message that names the versions
//! read. A VM has at most one disk: a RAM-backed one
//! or a partition.
//!
//! The reader trusts nothing: every offset and length is checked (with overflow
//! checks) against the data area `[end of the tables, total)` before use, counts are
//! bounded by the blob's size before anything is allocated, strings must be UTF-8,
//! and the credential's Argon2id parameters must lie within [`admin_ok`]'s bounds
//! (the kernel would allocate and compute what they ask for). A truncated or corrupt
//! bundle is an error, never a panic or an out-of-bounds read (the tests feed it
//! truncated and randomly corrupted blobs). The bundle crate does no cryptography:
//! it carries the hash and checks its parameters' bounds.
#![no_std]

extern crate alloc;

pub mod management;
pub mod reference;
pub use management::Management;
pub use reference::{read_ref, write_ref, BundleRef, RefError};

use alloc::vec::Vec;
use core::fmt;

pub const MAGIC: [u8; 8] = *b"HVBUNDL9";
/// The previous versions, still read: a shorter machine record without the
/// management network ...
pub const MAGIC_V8: [u8; 8] = *b"HVBUNDL8";
/// ... no machine record ...
pub const MAGIC_V7: [u8; 8] = *b"HVBUNDL7";
/// ... no NICs ...
pub const MAGIC_V6: [u8; 8] = *b"HVBUNDL6";
/// ... their entries have no partition ...
pub const MAGIC_V5: [u8; 8] = *b"HVBUNDL5";
/// ... and, in version 4, no disk.
pub const MAGIC_V4: [u8; 8] = *b"HVBUNDL4";
const HEADER: usize = 16;
const ENTRY: usize = 96;
const PARTITION_RECORD: usize = 16;
const MODULE_ENTRY: usize = 16;
/// Per VM in the NIC table: offset and count of its NIC records.
const NIC_TABLE_ENTRY: usize = 8;
const NIC_RECORD: usize = 24;
/// After the NIC table (version 8): offset and length of the machine record.
const MACHINE_POINTER: usize = 8;
/// The machine record's length in version 9 ...
pub const MACHINE_RECORD: usize = MACHINE_RECORD_V8 + management::MANAGEMENT_BLOCK;
/// ... and in version 8.
pub const MACHINE_RECORD_V8: usize = 64;
/// Machine record flag: an administrator credential follows.
const MACHINE_ADMIN: u32 = 1;
/// Machine record flag (version 9): the management block is in use.
const MACHINE_MANAGEMENT: u32 = 4;
/// Where the management block starts in the machine record.
const M_MANAGEMENT: usize = MACHINE_RECORD_V8;
// Byte offsets inside the machine record.
const M_FLAGS: usize = 0;
const M_MEMORY: usize = 4;
const M_ITERATIONS: usize = 8;
const M_LANES: usize = 12;
const M_SALT: usize = 16;
const M_HASH: usize = M_SALT + ADMIN_SALT_LEN;
const _: () = assert!(M_HASH + ADMIN_HASH_LEN == MACHINE_RECORD_V8);
/// Bytes of Argon2 salt in an [`AdminCredential`].
pub const ADMIN_SALT_LEN: usize = 16;
/// Bytes of Argon2 output (the hash) in an [`AdminCredential`].
pub const ADMIN_HASH_LEN: usize = 32;
/// The credential's Argon2id bounds, the ones `diskcrypt::KdfParams::check` puts on
/// an encrypted disk's header (xtask's tests hold the two equal): the kernel
/// allocates and computes what the parameters ask for, so a corrupt bundle must not
/// ask for more. Memory: at least 8 KiB per lane (RFC 9106 §3.1), at most 1 GiB ...
pub const ADMIN_MEMORY_KIB_MAX: u32 = 1 << 20;
/// ... 1 to 64 passes ...
pub const ADMIN_ITERATIONS_MAX: u32 = 64;
/// ... and 1 to 16 lanes.
pub const ADMIN_LANES_MAX: u32 = 16;
/// Most NICs one VM may have (its PCI devices 00:04.0 to 00:07.0).
pub const NICS_MAX: usize = 4;
/// Longest network name, in bytes.
pub const NETWORK_NAME_MAX: usize = 32;
/// Highest rate limit, in Mbit/s (100 Gbit/s).
pub const RATE_MBIT_MAX: u32 = 100_000;
/// Smallest burst of a rate limit, in KiB: one full-size tagged frame (1518 bytes)
/// must fit.
pub const BURST_KIB_MIN: u32 = 2;
/// Largest burst, in KiB (1 GiB).
pub const BURST_KIB_MAX: u32 = 1 << 20;
/// Longest VM name, in bytes.
pub const NAME_MAX: usize = 24;
/// Longest command line (VM or module), in bytes. Linux's own limit on x86 is 2048
/// by default; 4 KiB leaves room for kernels built with a larger one.
pub const CMDLINE_MAX: usize = 4096;
/// Longest image path, in bytes (Linux's PATH_MAX).
pub const IMAGE_PATH_MAX: usize = 4096;
/// Most modules one VM may carry. Bounds what a corrupt count could make the
/// reader allocate, and what a guest's module list has to describe.
pub const MODULES_MAX: usize = 64;
const FLAG_BACKGROUND: u32 = 1;
const FLAG_BENCH_HYPERCALLS: u32 = 2;
const FLAG_RESET_STOPS: u32 = 4;
const FLAG_CRASH_RESTARTS: u32 = 8;
const FLAG_UNMAPPED_STOPS: u32 = 16;
const FLAG_DISK: u32 = 32;
const FLAG_DISK_READ_ONLY: u32 = 64;
const FLAG_PARTITION: u32 = 128;
const FLAG_ENCRYPTED: u32 = 256;
const FLAG_BALLOON: u32 = 512;
/// Longest partition name in UTF-16 code units (the GPT entry's 72-byte field).
pub const PARTITION_NAME_UNITS: usize = 36;
/// Longest passphrase carried for an encrypted partition, in bytes.
pub const KEY_MAX: usize = 1024;
/// A disk's size is a whole number of these.
pub const SECTOR_SIZE: usize = 512;
/// The largest disk: the hypervisor keeps a RAM-backed disk in its own heap (1/32 of
/// the machine's memory, 4 to 64 MiB), so disks are for tests and tiny guests.
pub const DISK_MAX: usize = 16 << 20;
/// Images and module data start at multiples of this within the blob, so the
/// kernel may read them with aligned loads if it wants to.
const DATA_ALIGN: usize = 16;

// Byte offsets inside an entry.
const E_MEMORY: usize = NAME_MAX;
const E_RUN_LIMIT: usize = NAME_MAX + 4;
const E_IMAGE: usize = NAME_MAX + 8;
const E_FLAGS: usize = NAME_MAX + 16;
const E_FORMAT: usize = NAME_MAX + 20;
const E_VCPUS: usize = NAME_MAX + 24;

/// The most vCPUs a VM may have (what the guest's MP table and MADT can list).
pub const MAX_VCPUS: u32 = 16;
const E_CMDLINE: usize = NAME_MAX + 28;
const E_MODULES: usize = NAME_MAX + 36;
const E_IMAGE_PATH: usize = NAME_MAX + 44;
const E_AFFINITY: usize = NAME_MAX + 52;
const E_DISK: usize = NAME_MAX + 60;
const E_PARTITION: usize = NAME_MAX + 68;
const E_END: usize = NAME_MAX + 72;
const _: () = assert!(E_END <= ENTRY);

/// How the kernel should load a VM's image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    /// Decided by the image: a 512-byte boot sector or an ELF executable (the tiny
    /// guests' loader).
    #[default]
    Auto,
    /// A boot sector, ELF32 or ELF64 executable, started as the tiny guests are.
    Tiny,
    /// A Multiboot (version 1) kernel, with its modules.
    Multiboot,
    /// A Linux bzImage started through the 64-bit boot protocol; module 0 is the
    /// initrd.
    Linux,
}

impl ImageFormat {
    pub const ALL: [ImageFormat; 4] = [
        ImageFormat::Auto,
        ImageFormat::Tiny,
        ImageFormat::Multiboot,
        ImageFormat::Linux,
    ];

    /// The value stored in the bundle.
    pub fn as_u8(self) -> u8 {
        match self {
            ImageFormat::Auto => 0,
            ImageFormat::Tiny => 1,
            ImageFormat::Multiboot => 2,
            ImageFormat::Linux => 3,
        }
    }

    pub fn from_u8(value: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_u8() == value)
    }

    /// The lower-case name used in configuration files and messages.
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Auto => "auto",
            ImageFormat::Tiny => "tiny",
            ImageFormat::Multiboot => "multiboot",
            ImageFormat::Linux => "linux",
        }
    }

    /// The inverse of [`ImageFormat::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A module handed to the guest with its image: for Multiboot a boot module, for
/// Linux module 0 is the initrd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module<'a> {
    pub data: &'a [u8],
    pub cmdline: &'a str,
}

/// The initial contents of a VM's RAM-backed virtio-blk disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Disk<'a> {
    /// A whole number of [`SECTOR_SIZE`] sectors, 1 sector to [`DISK_MAX`] bytes.
    pub data: &'a [u8],
    /// Writes fail (the guest is told the disk is read-only).
    pub read_only: bool,
}

/// A VM's disk that is a GPT partition of the machine's persistent disk (found by
/// name when the VM starts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionDisk<'a> {
    /// The partition's GPT name: 1 to [`PARTITION_NAME_UNITS`] UTF-16 units, no NUL.
    pub name: &'a str,
    /// Writes fail (the guest is told the disk is read-only).
    pub read_only: bool,
    /// The partition starts with a `diskcrypt` header; the guest sees the
    /// decrypted sectors after it.
    pub encrypted: bool,
    /// The passphrase from the configuration's key file (encrypted only; empty: none
    /// packed, to be supplied another way). At most [`KEY_MAX`] bytes.
    pub key: &'a [u8],
}

/// Whether `p` can be packed: a GPT-sized name without NUL, and a key only for an
/// encrypted partition, at most [`KEY_MAX`] bytes.
pub fn partition_ok(p: &PartitionDisk) -> bool {
    let units = p.name.encode_utf16().count();
    (1..=PARTITION_NAME_UNITS).contains(&units)
        && !p.name.contains('\0')
        && p.key.len() <= KEY_MAX
        && (p.encrypted || p.key.is_empty())
}

/// A VM's virtio-net NIC: a port of the machine's virtual switch on the network
/// named `network` (version 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nic<'a> {
    /// 1 to [`NETWORK_NAME_MAX`] bytes of `A-Z a-z 0-9 _ . -`.
    pub network: &'a str,
    /// A unicast address, not all zeros; unique on its network.
    pub mac: [u8; 6],
    /// The port's rate limit in Mbit/s; 0: none.
    pub rate_mbit: u32,
    /// The rate limit's burst in KiB ([`BURST_KIB_MIN`] to [`BURST_KIB_MAX`]); 0:
    /// the default. Only with a rate.
    pub burst_kib: u32,
}

/// Whether `name` can name a network: 1 to [`NETWORK_NAME_MAX`] bytes of
/// `A-Z a-z 0-9 _ . -` (what VM names allow: it is printed in reports).
pub fn network_name_ok(name: &str) -> bool {
    (1..=NETWORK_NAME_MAX).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Whether `mac` can be a NIC's address: unicast (IEEE 802-2014 §8.2: bit 0 of the
/// first byte clear) and not all zeros.
pub fn mac_ok(mac: &[u8; 6]) -> bool {
    mac[0] & 1 == 0 && *mac != [0; 6]
}

/// Whether `nic` can be packed on its own (the network name, the MAC, the rate
/// limit's range; a burst only with a rate).
pub fn nic_ok(nic: &Nic) -> bool {
    network_name_ok(nic.network)
        && mac_ok(&nic.mac)
        && nic.rate_mbit <= RATE_MBIT_MAX
        && (nic.burst_kib == 0
            || (nic.rate_mbit != 0 && (BURST_KIB_MIN..=BURST_KIB_MAX).contains(&nic.burst_kib)))
}

/// The first NIC (VM index, NIC index) whose MAC another NIC before it on the same
/// network has: two ports with one address would take each other's frames.
fn duplicate_mac(vms: &[VmSpec]) -> Option<(usize, usize)> {
    let all: Vec<(usize, usize, &Nic)> = vms
        .iter()
        .enumerate()
        .flat_map(|(i, vm)| vm.nics.iter().enumerate().map(move |(j, n)| (i, j, n)))
        .collect();
    all.iter().enumerate().find_map(|(k, (i, j, n))| {
        all[..k]
            .iter()
            .any(|(_, _, o)| o.mac == n.mac && o.network == n.network)
            .then_some((*i, *j))
    })
}

/// Whether `len` bytes make a disk: whole sectors, at least one, at most
/// [`DISK_MAX`].
pub fn disk_size_ok(len: usize) -> bool {
    len > 0 && len.is_multiple_of(SECTOR_SIZE) && len <= DISK_MAX
}

/// The management console administrator's passphrase as an Argon2id hash (RFC
/// 9106, version 0x13, no secret, no associated data), with its salt and cost: the
/// console derives the same hash from what is typed and compares. The passphrase
/// itself is never in the bundle.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AdminCredential {
    /// Argon2 memory in KiB: 8 per lane to [`ADMIN_MEMORY_KIB_MAX`].
    pub memory_kib: u32,
    /// Argon2 passes: 1 to [`ADMIN_ITERATIONS_MAX`].
    pub iterations: u32,
    /// Argon2 lanes: 1 to [`ADMIN_LANES_MAX`].
    pub lanes: u32,
    pub salt: [u8; ADMIN_SALT_LEN],
    /// The Argon2id output for the passphrase, [`ADMIN_HASH_LEN`] bytes.
    pub hash: [u8; ADMIN_HASH_LEN],
}

/// The parameters only: a hash and its salt in a log line would let anyone who
/// reads the log guess passphrases offline.
impl fmt::Debug for AdminCredential {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("AdminCredential")
            .field("memory_kib", &self.memory_kib)
            .field("iterations", &self.iterations)
            .field("lanes", &self.lanes)
            .finish_non_exhaustive()
    }
}

/// Whether `c`'s Argon2id parameters lie within the bounds the reader accepts
/// (those of `diskcrypt::KdfParams::check`): 1 to [`ADMIN_LANES_MAX`] lanes, 8 KiB
/// per lane (RFC 9106 §3.1: m >= 8p) to [`ADMIN_MEMORY_KIB_MAX`] of memory, 1 to
/// [`ADMIN_ITERATIONS_MAX`] passes.
pub fn admin_ok(c: &AdminCredential) -> bool {
    (1..=ADMIN_LANES_MAX).contains(&c.lanes)
        && (8 * c.lanes..=ADMIN_MEMORY_KIB_MAX).contains(&c.memory_kib)
        && (1..=ADMIN_ITERATIONS_MAX).contains(&c.iterations)
}

/// What the bundle says about the machine as a whole rather than one VM (version 8;
/// older bundles give the default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MachineSettings {
    /// The management console's administrator credential; `None`: none configured.
    pub admin: Option<AdminCredential>,
    /// The hypervisor's station on a management network (version 9); `None`:
    /// none.
    pub management: Option<Management>,
}

/// What happens to a VM that resets or crashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Start it again from its image with fresh RAM.
    Restart,
    /// Stop it.
    Stop,
}

/// One VM to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmSpec<'a> {
    /// Shown in front of the VM's console lines (`name | text`).
    pub name: &'a str,
    pub memory_kib: u32,
    /// Stop the VM once its vCPUs together have used this much CPU time (0: no
    /// limit).
    pub run_limit_ms: u32,
    /// A background VM is stopped once every other (foreground) VM has stopped, so a
    /// guest that never ends by itself does not keep the hypervisor running.
    pub background: bool,
    /// The benchmark hypercalls (the bare CPUID loop) are allowed: an explicit
    /// opt-in, since a VM in that loop sees nothing but its own exits.
    pub bench_hypercalls: bool,
    /// What a reset request (i8042, port 0x92, 0xCF9) does: restart the VM from its
    /// image with fresh RAM, as a machine reboots (the default), or stop it.
    pub on_reset: Policy,
    /// What a crash (triple fault) does: stop the VM (the default, as libvirt's
    /// `on_crash = destroy`), or restart it.
    pub on_crash: Policy,
    /// A guest-physical access that reaches neither RAM nor a device: reads return
    /// all ones and writes vanish, as on a PC bus (false, the default), or the VM
    /// stops (true: `on_unmapped = "stop"`).
    pub unmapped_stops: bool,
    /// The VM has a virtio-balloon device (`balloon = true`), through which the
    /// operator's `balloon` command takes memory from it and gives it back.
    pub balloon: bool,
    pub image: &'a [u8],
    /// The image's path as the user named it (`kernel` key, `--kernel`); may be
    /// empty. Multiboot kernels get it in front of their command line.
    pub image_path: &'a str,
    pub format: ImageFormat,
    /// The kernel command line (Linux, Multiboot); empty when there is none.
    pub cmdline: &'a str,
    /// Virtual processors: 1 to [`MAX_VCPUS`].
    pub vcpus: u32,
    /// The host processors its vCPUs may run on (bit n: processor n); 0 = any.
    pub affinity: u64,
    pub modules: Vec<Module<'a>>,
    /// A RAM-backed virtio-blk disk and its initial contents (version 5).
    pub disk: Option<Disk<'a>>,
    /// A disk that is a partition of the persistent disk (version 6); never
    /// together with `disk`.
    pub partition: Option<PartitionDisk<'a>>,
    /// Its NICs, at most [`NICS_MAX`] (version 7).
    pub nics: Vec<Nic<'a>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BundleError {
    BadMagic,
    Truncated {
        needed: usize,
        have: usize,
    },
    BadName {
        index: usize,
    },
    ImageOutOfBounds {
        index: usize,
    },
    NameTooLong {
        index: usize,
    },
    TooLarge,
    /// The header's entry count or total length is impossible for this blob.
    BadHeader,
    BadFormat {
        index: usize,
        value: u32,
    },
    BadVcpus {
        index: usize,
    },
    CmdlineOutOfBounds {
        index: usize,
    },
    /// A command line is not UTF-8 or contains a NUL byte.
    BadCmdline {
        index: usize,
    },
    CmdlineTooLong {
        index: usize,
    },
    /// The image path is out of bounds, too long, not UTF-8 or holds a NUL.
    BadImagePath {
        index: usize,
    },
    TooManyModules {
        index: usize,
    },
    ModuleOutOfBounds {
        index: usize,
        module: usize,
    },
    /// A module's command line is out of bounds, too long or not UTF-8.
    BadModuleCmdline {
        index: usize,
        module: usize,
    },
    /// The disk lies outside the bundle, is empty, not whole sectors or larger than
    /// [`DISK_MAX`] (or a version 4 entry claims one).
    BadDisk {
        index: usize,
    },
    /// The partition's name or key is out of bounds, not UTF-8, of a bad length, a
    /// key without encryption, or a partition together with a RAM-backed disk (or
    /// in a version 4 or 5 entry).
    BadPartition {
        index: usize,
    },
    /// More than [`NICS_MAX`] NICs, or the NIC table lies outside the bundle (or a
    /// bundle before version 7 claims NICs).
    BadNicTable {
        index: usize,
    },
    /// A NIC record out of bounds, or its network name, MAC or rate limit not what
    /// [`nic_ok`] takes, or its MAC used by another NIC on the same network.
    BadNic {
        index: usize,
        nic: usize,
    },
    /// The machine record lies outside the data area, is not [`MACHINE_RECORD`]
    /// bytes, has an unknown flag, or bytes where its flags say nothing is.
    BadMachineRecord,
    /// The machine record's management block names no valid network, address,
    /// prefix or collector.
    BadManagement,
    /// The administrator credential's Argon2id parameters are not what
    /// [`admin_ok`] takes.
    BadAdminCredential,
}

impl fmt::Display for BundleError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            BundleError::BadMagic => write!(
                f,
                "not a guest bundle of this version (bad magic; expected HVBUNDL9, 8, 7, 6, 5 or 4)"
            ),
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
            BundleError::BadHeader => write!(f, "bundle header is inconsistent"),
            BundleError::BadFormat { index, value } => {
                write!(f, "entry {index}: unknown image format {value}")
            }
            BundleError::BadVcpus { index } => {
                write!(f, "entry {index}: vCPU count not between 1 and {MAX_VCPUS}")
            }
            BundleError::CmdlineOutOfBounds { index } => {
                write!(f, "entry {index}: command line lies outside the bundle")
            }
            BundleError::BadCmdline { index } => {
                write!(f, "entry {index}: command line is not UTF-8 or holds NUL")
            }
            BundleError::CmdlineTooLong { index } => {
                write!(
                    f,
                    "entry {index}: command line longer than {CMDLINE_MAX} bytes"
                )
            }
            BundleError::BadImagePath { index } => write!(
                f,
                "entry {index}: image path out of bounds, longer than {IMAGE_PATH_MAX} bytes, \
                 not UTF-8 or holding NUL"
            ),
            BundleError::TooManyModules { index } => {
                write!(f, "entry {index}: more than {MODULES_MAX} modules")
            }
            BundleError::ModuleOutOfBounds { index, module } => {
                write!(f, "entry {index}: module {module} lies outside the bundle")
            }
            BundleError::BadModuleCmdline { index, module } => write!(
                f,
                "entry {index}: module {module}: command line out of bounds, longer than \
                 {CMDLINE_MAX} bytes, or not UTF-8"
            ),
            BundleError::BadDisk { index } => write!(
                f,
                "entry {index}: disk out of bounds, empty, not whole {SECTOR_SIZE}-byte \
                 sectors or larger than {} MiB",
                DISK_MAX >> 20
            ),
            BundleError::BadPartition { index } => write!(
                f,
                "entry {index}: partition name out of bounds, not UTF-8 or not 1 to \
                 {PARTITION_NAME_UNITS} UTF-16 units; key out of bounds, longer than \
                 {KEY_MAX} bytes or without encryption; or both a partition and a \
                 RAM-backed disk"
            ),
            BundleError::BadNicTable { index } => write!(
                f,
                "entry {index}: NIC table out of bounds or more than {NICS_MAX} NICs"
            ),
            BundleError::BadNic { index, nic } => write!(
                f,
                "entry {index}: NIC {nic}: record out of bounds, network name not 1 to \
                 {NETWORK_NAME_MAX} bytes of A-Z a-z 0-9 _ . -, MAC multicast, zero or \
                 used twice on the network, or rate limit out of range"
            ),
            BundleError::BadMachineRecord => write!(
                f,
                "machine record out of bounds, not {MACHINE_RECORD} bytes ({MACHINE_RECORD_V8} \
                 before version 9), or with unknown flags or stray bytes"
            ),
            BundleError::BadManagement => write!(
                f,
                "management network: a bad network name, an address that is no host of its \
                 /1 to /30 network, or a syslog collector that is not another host of it"
            ),
            BundleError::BadAdminCredential => write!(
                f,
                "administrator credential: Argon2id parameters out of bounds (1 to \
                 {ADMIN_LANES_MAX} lanes, 8 KiB per lane to {} MiB, 1 to \
                 {ADMIN_ITERATIONS_MAX} passes)",
                ADMIN_MEMORY_KIB_MAX / 1024
            ),
        }
    }
}

/// The u32 at `at`, or `None` past the end: the reader never indexes unchecked.
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let bytes = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

fn align_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

/// A command line the kernel can hand on as a C string: UTF-8 (by type), no NUL,
/// not too long.
fn cmdline_ok(s: &str) -> Result<(), bool> {
    if s.len() > CMDLINE_MAX {
        Err(true)
    } else if s.as_bytes().contains(&0) {
        Err(false)
    } else {
        Ok(())
    }
}

/// Packs `vms` into a bundle with the default machine settings (no administrator
/// credential).
pub fn write(vms: &[VmSpec]) -> Result<Vec<u8>, BundleError> {
    write_with(&MachineSettings::default(), vms)
}

/// Packs `settings` and `vms` into a bundle.
pub fn write_with(settings: &MachineSettings, vms: &[VmSpec]) -> Result<Vec<u8>, BundleError> {
    // Validate first, so the layout pass below cannot fail halfway.
    if settings.admin.is_some_and(|a| !admin_ok(&a)) {
        return Err(BundleError::BadAdminCredential);
    }
    for (index, vm) in vms.iter().enumerate() {
        if vm.name.is_empty() || vm.name.as_bytes().contains(&0) {
            return Err(BundleError::BadName { index });
        }
        if vm.name.len() > NAME_MAX {
            return Err(BundleError::NameTooLong { index });
        }
        if !(1..=MAX_VCPUS).contains(&vm.vcpus) {
            return Err(BundleError::BadVcpus { index });
        }
        cmdline_ok(vm.cmdline).map_err(|long| {
            if long {
                BundleError::CmdlineTooLong { index }
            } else {
                BundleError::BadCmdline { index }
            }
        })?;
        if vm.image_path.len() > IMAGE_PATH_MAX || vm.image_path.as_bytes().contains(&0) {
            return Err(BundleError::BadImagePath { index });
        }
        if vm.modules.len() > MODULES_MAX {
            return Err(BundleError::TooManyModules { index });
        }
        for (module, m) in vm.modules.iter().enumerate() {
            if cmdline_ok(m.cmdline).is_err() {
                return Err(BundleError::BadModuleCmdline { index, module });
            }
        }
        if vm.disk.is_some_and(|d| !disk_size_ok(d.data.len())) {
            return Err(BundleError::BadDisk { index });
        }
        if let Some(p) = &vm.partition {
            if !partition_ok(p) || vm.disk.is_some() {
                return Err(BundleError::BadPartition { index });
            }
        }
        if vm.nics.len() > NICS_MAX {
            return Err(BundleError::BadNicTable { index });
        }
        if let Some(nic) = vm.nics.iter().position(|n| !nic_ok(n)) {
            return Err(BundleError::BadNic { index, nic });
        }
    }
    if let Some((index, nic)) = duplicate_mac(vms) {
        return Err(BundleError::BadNic { index, nic });
    }

    // Layout: entry table, NIC table, machine pointer, machine record, then per VM:
    // module table, strings; then all blobs.
    let table_end = HEADER + ENTRY * vms.len();
    let nic_table = table_end;
    let machine_pointer = nic_table + NIC_TABLE_ENTRY * vms.len();
    let machine_at = machine_pointer + MACHINE_POINTER;
    let mut cursor = machine_at + MACHINE_RECORD;
    struct Placed {
        modules_at: usize,
        cmdline_at: usize,
        module_cmdlines_at: Vec<usize>,
        image_path_at: usize,
        partition_at: usize,
        key_at: usize,
        nics_at: usize,
        network_names_at: Vec<usize>,
    }
    let mut placed = Vec::with_capacity(vms.len());
    for vm in vms {
        let modules_at = cursor;
        cursor += MODULE_ENTRY * vm.modules.len();
        let cmdline_at = cursor;
        cursor += vm.cmdline.len();
        let mut module_cmdlines_at = Vec::with_capacity(vm.modules.len());
        for m in &vm.modules {
            module_cmdlines_at.push(cursor);
            cursor += m.cmdline.len();
        }
        let image_path_at = cursor;
        cursor += vm.image_path.len();
        let partition_at = cursor;
        if let Some(p) = &vm.partition {
            cursor += PARTITION_RECORD + p.name.len();
        }
        let key_at = cursor;
        cursor += vm.partition.map_or(0, |p| p.key.len());
        let nics_at = cursor;
        cursor += NIC_RECORD * vm.nics.len();
        let mut network_names_at = Vec::with_capacity(vm.nics.len());
        for n in &vm.nics {
            network_names_at.push(cursor);
            cursor += n.network.len();
        }
        placed.push(Placed {
            modules_at,
            cmdline_at,
            module_cmdlines_at,
            image_path_at,
            partition_at,
            key_at,
            nics_at,
            network_names_at,
        });
    }
    let mut image_at = Vec::with_capacity(vms.len());
    let mut module_data_at = Vec::with_capacity(vms.len());
    let mut disk_at = Vec::with_capacity(vms.len());
    for vm in vms {
        cursor = align_up(cursor, DATA_ALIGN);
        image_at.push(cursor);
        cursor = cursor
            .checked_add(vm.image.len())
            .ok_or(BundleError::TooLarge)?;
        let mut at = Vec::with_capacity(vm.modules.len());
        for m in &vm.modules {
            cursor = align_up(cursor, DATA_ALIGN);
            at.push(cursor);
            cursor = cursor
                .checked_add(m.data.len())
                .ok_or(BundleError::TooLarge)?;
        }
        module_data_at.push(at);
        if vm.disk.is_some() {
            cursor = align_up(cursor, DATA_ALIGN);
        }
        disk_at.push(cursor);
        if let Some(d) = &vm.disk {
            cursor = cursor
                .checked_add(d.data.len())
                .ok_or(BundleError::TooLarge)?;
        }
    }
    let total = cursor;
    if total > u32::MAX as usize {
        return Err(BundleError::TooLarge);
    }
    // Every offset and length below is <= total, so the `as u32` casts are exact.
    let u = |n: usize| (n as u32).to_le_bytes();

    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&u(vms.len()));
    out.extend_from_slice(&u(total));
    for (i, vm) in vms.iter().enumerate() {
        let mut e = [0u8; ENTRY];
        e[..vm.name.len()].copy_from_slice(vm.name.as_bytes());
        let flags = if vm.background { FLAG_BACKGROUND } else { 0 }
            | if vm.bench_hypercalls {
                FLAG_BENCH_HYPERCALLS
            } else {
                0
            }
            | if vm.on_reset == Policy::Stop {
                FLAG_RESET_STOPS
            } else {
                0
            }
            | if vm.on_crash == Policy::Restart {
                FLAG_CRASH_RESTARTS
            } else {
                0
            }
            | if vm.unmapped_stops {
                FLAG_UNMAPPED_STOPS
            } else {
                0
            }
            | if vm.balloon { FLAG_BALLOON } else { 0 }
            | match vm.disk {
                Some(d) if d.read_only => FLAG_DISK | FLAG_DISK_READ_ONLY,
                Some(_) => FLAG_DISK,
                None => 0,
            }
            | match vm.partition {
                Some(p) => {
                    FLAG_PARTITION
                        | if p.read_only { FLAG_DISK_READ_ONLY } else { 0 }
                        | if p.encrypted { FLAG_ENCRYPTED } else { 0 }
                }
                None => 0,
            };
        let (disk_offset, disk_len) = match vm.disk {
            Some(d) => (disk_at[i] as u32, d.data.len() as u32),
            None => (0, 0),
        };
        let partition_record = match vm.partition {
            Some(_) => placed[i].partition_at as u32,
            None => 0,
        };
        let fields: [(usize, u32); 16] = [
            (E_MEMORY, vm.memory_kib),
            (E_RUN_LIMIT, vm.run_limit_ms),
            (E_IMAGE, image_at[i] as u32),
            (E_IMAGE + 4, vm.image.len() as u32),
            (E_FLAGS, flags),
            (E_FORMAT, vm.format.as_u8().into()),
            (E_VCPUS, vm.vcpus),
            (E_CMDLINE, placed[i].cmdline_at as u32),
            (E_CMDLINE + 4, vm.cmdline.len() as u32),
            (E_MODULES, placed[i].modules_at as u32),
            (E_MODULES + 4, vm.modules.len() as u32),
            (E_IMAGE_PATH, placed[i].image_path_at as u32),
            (E_IMAGE_PATH + 4, vm.image_path.len() as u32),
            (E_DISK, disk_offset),
            (E_DISK + 4, disk_len),
            (E_PARTITION, partition_record),
        ];
        for (at, v) in fields {
            e[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        e[E_AFFINITY..E_AFFINITY + 8].copy_from_slice(&vm.affinity.to_le_bytes());
        out.extend_from_slice(&e);
    }
    for (i, vm) in vms.iter().enumerate() {
        let at = if vm.nics.is_empty() {
            0
        } else {
            placed[i].nics_at
        };
        out.extend_from_slice(&u(at));
        out.extend_from_slice(&u(vm.nics.len()));
    }
    debug_assert_eq!(out.len(), machine_pointer);
    out.extend_from_slice(&u(machine_at));
    out.extend_from_slice(&u(MACHINE_RECORD));
    out.extend_from_slice(&machine_record(settings));
    for (i, vm) in vms.iter().enumerate() {
        debug_assert_eq!(out.len(), placed[i].modules_at);
        for (j, m) in vm.modules.iter().enumerate() {
            out.extend_from_slice(&u(module_data_at[i][j]));
            out.extend_from_slice(&u(m.data.len()));
            out.extend_from_slice(&u(placed[i].module_cmdlines_at[j]));
            out.extend_from_slice(&u(m.cmdline.len()));
        }
        out.extend_from_slice(vm.cmdline.as_bytes());
        for m in &vm.modules {
            out.extend_from_slice(m.cmdline.as_bytes());
        }
        out.extend_from_slice(vm.image_path.as_bytes());
        if let Some(p) = &vm.partition {
            let name_at = placed[i].partition_at + PARTITION_RECORD;
            out.extend_from_slice(&u(name_at));
            out.extend_from_slice(&u(p.name.len()));
            out.extend_from_slice(&u(placed[i].key_at));
            out.extend_from_slice(&u(p.key.len()));
            out.extend_from_slice(p.name.as_bytes());
            out.extend_from_slice(p.key);
        }
        debug_assert_eq!(out.len(), placed[i].nics_at);
        for (j, n) in vm.nics.iter().enumerate() {
            out.extend_from_slice(&u(placed[i].network_names_at[j]));
            out.extend_from_slice(&u(n.network.len()));
            out.extend_from_slice(&n.mac);
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&n.rate_mbit.to_le_bytes());
            out.extend_from_slice(&n.burst_kib.to_le_bytes());
        }
        for n in &vm.nics {
            out.extend_from_slice(n.network.as_bytes());
        }
    }
    for (i, vm) in vms.iter().enumerate() {
        out.resize(image_at[i], 0);
        out.extend_from_slice(vm.image);
        for (j, m) in vm.modules.iter().enumerate() {
            out.resize(module_data_at[i][j], 0);
            out.extend_from_slice(m.data);
        }
        if let Some(d) = &vm.disk {
            out.resize(disk_at[i], 0);
            out.extend_from_slice(d.data);
        }
    }
    debug_assert_eq!(out.len(), total);
    Ok(out)
}

/// `settings` as the machine record.
fn machine_record(settings: &MachineSettings) -> [u8; MACHINE_RECORD] {
    let mut r = [0u8; MACHINE_RECORD];
    let mut flags = 0;
    if let Some(m) = &settings.management {
        flags |= MACHINE_MANAGEMENT;
        r[M_MANAGEMENT..].copy_from_slice(&m.encode());
    }
    if let Some(a) = &settings.admin {
        flags |= MACHINE_ADMIN;
        for (at, v) in [
            (M_MEMORY, a.memory_kib),
            (M_ITERATIONS, a.iterations),
            (M_LANES, a.lanes),
        ] {
            r[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        r[M_SALT..M_HASH].copy_from_slice(&a.salt);
        r[M_HASH..MACHINE_RECORD_V8].copy_from_slice(&a.hash);
    }
    r[M_FLAGS..M_FLAGS + 4].copy_from_slice(&flags.to_le_bytes());
    r
}

/// The machine settings from the machine pointer `pointer` (offset, length) of a
/// bundle of `version` (8 or 9).
fn read_machine(
    blob: &[u8],
    data_start: usize,
    pointer: &[u8],
    version: u8,
) -> Result<MachineSettings, BundleError> {
    let bad = BundleError::BadMachineRecord;
    let offset = u32_at(pointer, 0).ok_or(bad)?;
    let len = u32_at(pointer, 4).ok_or(bad)?;
    let (expected, known) = if version >= 9 {
        (MACHINE_RECORD, MACHINE_ADMIN | MACHINE_MANAGEMENT)
    } else {
        (MACHINE_RECORD_V8, MACHINE_ADMIN)
    };
    if len as usize != expected {
        return Err(bad);
    }
    let r = region(blob, data_start, offset, len).ok_or(bad)?;
    let field = |at: usize| u32_at(r, at).unwrap_or(0);
    let flags = field(M_FLAGS);
    if flags & !known != 0 {
        return Err(bad);
    }
    let block = r.get(M_MANAGEMENT..).unwrap_or(&[]);
    let management = if flags & MACHINE_MANAGEMENT != 0 {
        Some(Management::decode(block).ok_or(BundleError::BadManagement)?)
    } else if block.iter().any(|&b| b != 0) {
        return Err(bad);
    } else {
        None
    };
    let rest = r.get(M_MEMORY..MACHINE_RECORD_V8).ok_or(bad)?;
    if flags & MACHINE_ADMIN == 0 {
        // Without a credential its bytes are zero, as every unused field.
        return if rest.iter().all(|&b| b == 0) {
            Ok(MachineSettings {
                admin: None,
                management,
            })
        } else {
            Err(bad)
        };
    }
    let admin = AdminCredential {
        memory_kib: field(M_MEMORY),
        iterations: field(M_ITERATIONS),
        lanes: field(M_LANES),
        salt: r
            .get(M_SALT..M_HASH)
            .and_then(|s| s.try_into().ok())
            .ok_or(bad)?,
        hash: r
            .get(M_HASH..MACHINE_RECORD_V8)
            .and_then(|h| h.try_into().ok())
            .ok_or(bad)?,
    };
    if !admin_ok(&admin) {
        return Err(BundleError::BadAdminCredential);
    }
    Ok(MachineSettings {
        admin: Some(admin),
        management,
    })
}

/// The slice `[offset, offset + len)` of `blob` if it lies inside the data area
/// `[data_start, blob.len())`.
fn region(blob: &[u8], data_start: usize, offset: u32, len: u32) -> Option<&[u8]> {
    let (offset, len) = (offset as usize, len as usize);
    let end = offset.checked_add(len)?;
    if offset < data_start {
        return None;
    }
    blob.get(offset..end)
}

/// Why a string field of the bundle is unusable.
enum StrError {
    TooLong,
    OutOfBounds,
    Invalid,
}

/// A string read from the data area (command line or image path): in bounds, not
/// too long, UTF-8, no NUL.
fn string(blob: &[u8], data_start: usize, offset: u32, len: u32) -> Result<&str, StrError> {
    const _: () = assert!(IMAGE_PATH_MAX == CMDLINE_MAX);
    if len as usize > CMDLINE_MAX {
        return Err(StrError::TooLong);
    }
    let bytes = region(blob, data_start, offset, len).ok_or(StrError::OutOfBounds)?;
    let s = core::str::from_utf8(bytes).map_err(|_| StrError::Invalid)?;
    if s.as_bytes().contains(&0) {
        return Err(StrError::Invalid);
    }
    Ok(s)
}

/// Reads every VM description out of `blob` (the whole bundle is checked, the
/// machine record too).
pub fn read(blob: &[u8]) -> Result<Vec<VmSpec<'_>>, BundleError> {
    read_with(blob).map(|(_, vms)| vms)
}

/// Reads the machine settings out of `blob` (the default before version 8). The
/// whole bundle is checked: this fails exactly when [`read`] does.
pub fn read_settings(blob: &[u8]) -> Result<MachineSettings, BundleError> {
    read_with(blob).map(|(settings, _)| settings)
}

/// The bundle's version from its magic (4 to 9).
fn version(magic: &[u8]) -> Option<u8> {
    [
        (MAGIC_V4, 4),
        (MAGIC_V5, 5),
        (MAGIC_V6, 6),
        (MAGIC_V7, 7),
        (MAGIC_V8, 8),
        (MAGIC, 9),
    ]
    .into_iter()
    .find_map(|(m, v)| (magic == m).then_some(v))
}

/// Reads the machine settings and every VM description out of `blob`: what
/// [`write_with`] packed.
pub fn read_with(blob: &[u8]) -> Result<(MachineSettings, Vec<VmSpec<'_>>), BundleError> {
    if blob.len() < HEADER {
        return Err(BundleError::Truncated {
            needed: HEADER,
            have: blob.len(),
        });
    }
    let version = version(&blob[..8]).ok_or(BundleError::BadMagic)?;
    let v4 = version == 4;
    let v5 = version == 5;

    let count = u32_at(blob, 8).ok_or(BundleError::BadHeader)? as usize;
    let total = u32_at(blob, 12).ok_or(BundleError::BadHeader)? as usize;
    let per_vm = if version >= 7 {
        ENTRY + NIC_TABLE_ENTRY
    } else {
        ENTRY
    };
    let entries_end = count
        .checked_mul(ENTRY)
        .and_then(|t| t.checked_add(HEADER))
        .ok_or(BundleError::TooLarge)?;
    // After the entries and (version 7) the NIC table: (version 8) the machine
    // pointer.
    let machine_pointer = count
        .checked_mul(per_vm)
        .and_then(|t| t.checked_add(HEADER))
        .ok_or(BundleError::TooLarge)?;
    // Where the data area starts.
    let table_end = if version >= 8 {
        machine_pointer
            .checked_add(MACHINE_POINTER)
            .ok_or(BundleError::TooLarge)?
    } else {
        machine_pointer
    };
    if total < table_end {
        return Err(BundleError::BadHeader);
    }
    if blob.len() < total {
        return Err(BundleError::Truncated {
            needed: total,
            have: blob.len(),
        });
    }
    // The bootloader may pad the ramdisk; only the first `total` bytes are ours.
    let blob = &blob[..total];
    let settings = if version >= 8 {
        read_machine(blob, table_end, &blob[machine_pointer..table_end], version)?
    } else {
        MachineSettings::default()
    };
    // `count` is now bounded by the blob's size, so this allocation is too.
    let mut vms = Vec::with_capacity(count);
    for index in 0..count {
        let e = &blob[HEADER + index * ENTRY..HEADER + (index + 1) * ENTRY];
        let field = |at: usize| u32_at(e, at).unwrap_or(0);
        let name_len = e[..NAME_MAX]
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(NAME_MAX);
        let name = core::str::from_utf8(&e[..name_len])
            .ok()
            .filter(|n| !n.is_empty())
            .ok_or(BundleError::BadName { index })?;
        let image = region(blob, table_end, field(E_IMAGE), field(E_IMAGE + 4))
            .ok_or(BundleError::ImageOutOfBounds { index })?;
        let raw_format = field(E_FORMAT);
        let format = u8::try_from(raw_format)
            .ok()
            .and_then(ImageFormat::from_u8)
            .ok_or(BundleError::BadFormat {
                index,
                value: raw_format,
            })?;
        let vcpus = field(E_VCPUS);
        if !(1..=MAX_VCPUS).contains(&vcpus) {
            return Err(BundleError::BadVcpus { index });
        }
        let cmdline = string(blob, table_end, field(E_CMDLINE), field(E_CMDLINE + 4)).map_err(
            |e| match e {
                StrError::TooLong => BundleError::CmdlineTooLong { index },
                StrError::OutOfBounds => BundleError::CmdlineOutOfBounds { index },
                StrError::Invalid => BundleError::BadCmdline { index },
            },
        )?;
        let module_count = field(E_MODULES + 4) as usize;
        if module_count > MODULES_MAX {
            return Err(BundleError::TooManyModules { index });
        }
        let table = region(
            blob,
            table_end,
            field(E_MODULES),
            (module_count * MODULE_ENTRY) as u32,
        )
        .ok_or(BundleError::ModuleOutOfBounds { index, module: 0 })?;
        let mut modules = Vec::with_capacity(module_count);
        for (module, m) in table.as_chunks::<MODULE_ENTRY>().0.iter().enumerate() {
            let mfield = |at: usize| u32_at(m, at).unwrap_or(0);
            let data = region(blob, table_end, mfield(0), mfield(4))
                .ok_or(BundleError::ModuleOutOfBounds { index, module })?;
            let cmdline = string(blob, table_end, mfield(8), mfield(12))
                .map_err(|_| BundleError::BadModuleCmdline { index, module })?;
            modules.push(Module { data, cmdline });
        }
        let image_path = string(
            blob,
            table_end,
            field(E_IMAGE_PATH),
            field(E_IMAGE_PATH + 4),
        )
        .map_err(|_| BundleError::BadImagePath { index })?;
        let flags = field(E_FLAGS);
        let has_partition = flags & FLAG_PARTITION != 0;
        let disk = if flags & FLAG_DISK == 0 {
            // Without a disk its fields (reserved in version 4) and flags are zero;
            // the read-only flag only with a disk of either kind.
            let read_only_alone = flags & FLAG_DISK_READ_ONLY != 0 && !has_partition;
            if field(E_DISK) != 0 || field(E_DISK + 4) != 0 || read_only_alone {
                return Err(BundleError::BadDisk { index });
            }
            None
        } else {
            let data = region(blob, table_end, field(E_DISK), field(E_DISK + 4))
                .filter(|d| !v4 && disk_size_ok(d.len()))
                .ok_or(BundleError::BadDisk { index })?;
            Some(Disk {
                data,
                read_only: flags & FLAG_DISK_READ_ONLY != 0,
            })
        };
        let bad_partition = BundleError::BadPartition { index };
        let partition = if !has_partition {
            // Without a partition its word (reserved before version 6) and flag are
            // zero.
            if field(E_PARTITION) != 0 || flags & FLAG_ENCRYPTED != 0 {
                return Err(bad_partition);
            }
            None
        } else {
            if v4 || v5 || disk.is_some() {
                return Err(bad_partition);
            }
            let record = region(blob, table_end, field(E_PARTITION), PARTITION_RECORD as u32)
                .ok_or(bad_partition)?;
            let rfield = |at: usize| u32_at(record, at).unwrap_or(0);
            let name = string(blob, table_end, rfield(0), rfield(4)).map_err(|_| bad_partition)?;
            let key = region(blob, table_end, rfield(8), rfield(12)).ok_or(bad_partition)?;
            let p = PartitionDisk {
                name,
                read_only: flags & FLAG_DISK_READ_ONLY != 0,
                encrypted: flags & FLAG_ENCRYPTED != 0,
                key,
            };
            if !partition_ok(&p) {
                return Err(bad_partition);
            }
            Some(p)
        };
        let nics = if version >= 7 {
            let t = entries_end + index * NIC_TABLE_ENTRY;
            read_nics(blob, table_end, &blob[t..t + NIC_TABLE_ENTRY], index)?
        } else {
            Vec::new()
        };
        vms.push(VmSpec {
            name,
            memory_kib: field(E_MEMORY),
            run_limit_ms: field(E_RUN_LIMIT),
            background: field(E_FLAGS) & FLAG_BACKGROUND != 0,
            bench_hypercalls: field(E_FLAGS) & FLAG_BENCH_HYPERCALLS != 0,
            on_reset: if field(E_FLAGS) & FLAG_RESET_STOPS != 0 {
                Policy::Stop
            } else {
                Policy::Restart
            },
            on_crash: if field(E_FLAGS) & FLAG_CRASH_RESTARTS != 0 {
                Policy::Restart
            } else {
                Policy::Stop
            },
            unmapped_stops: field(E_FLAGS) & FLAG_UNMAPPED_STOPS != 0,
            balloon: field(E_FLAGS) & FLAG_BALLOON != 0,
            image,
            image_path,
            format,
            cmdline,
            vcpus,
            affinity: u64::from(field(E_AFFINITY)) | u64::from(field(E_AFFINITY + 4)) << 32,
            modules,
            disk,
            partition,
            nics,
        });
    }
    if let Some((index, nic)) = duplicate_mac(&vms) {
        return Err(BundleError::BadNic { index, nic });
    }
    Ok((settings, vms))
}

/// The NICs of VM `index` from its NIC table entry `entry` (offset, count).
fn read_nics<'a>(
    blob: &'a [u8],
    data_start: usize,
    entry: &[u8],
    index: usize,
) -> Result<Vec<Nic<'a>>, BundleError> {
    let bad_table = BundleError::BadNicTable { index };
    let offset = u32_at(entry, 0).ok_or(bad_table)?;
    let count = u32_at(entry, 4).ok_or(bad_table)? as usize;
    if count == 0 {
        // Without NICs the offset is zero, as every unused field.
        return if offset == 0 {
            Ok(Vec::new())
        } else {
            Err(bad_table)
        };
    }
    if count > NICS_MAX {
        return Err(bad_table);
    }
    let records = region(blob, data_start, offset, (count * NIC_RECORD) as u32).ok_or(bad_table)?;
    let mut nics = Vec::with_capacity(count);
    for (nic, r) in records.as_chunks::<NIC_RECORD>().0.iter().enumerate() {
        let bad = BundleError::BadNic { index, nic };
        let field = |at: usize| u32_at(r, at).unwrap_or(0);
        let network = string(blob, data_start, field(0), field(4)).map_err(|_| bad)?;
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&r[8..14]);
        let n = Nic {
            network,
            mac,
            rate_mbit: field(16),
            burst_kib: field(20),
        };
        if r[14..16] != [0, 0] || !nic_ok(&n) {
            return Err(bad);
        }
        nics.push(n);
    }
    Ok(nics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;
    use alloc::vec;

    fn tiny(name: &'static str, image: &'static [u8]) -> VmSpec<'static> {
        VmSpec {
            name,
            memory_kib: 4096,
            run_limit_ms: 0,
            background: false,
            bench_hypercalls: false,
            on_reset: Policy::Restart,
            on_crash: Policy::Stop,
            unmapped_stops: false,
            balloon: false,
            image,
            image_path: name,
            format: ImageFormat::Auto,
            cmdline: "",
            vcpus: 1,
            affinity: 0,
            modules: Vec::new(),
            disk: None,
            partition: None,
            nics: Vec::new(),
        }
    }

    static DISK: [u8; 1024] = [0x5A; 1024];

    fn specs() -> Vec<VmSpec<'static>> {
        vec![
            tiny("a", b"first"),
            VmSpec {
                memory_kib: 2048,
                run_limit_ms: 1500,
                background: true,
                bench_hypercalls: true,
                on_reset: Policy::Stop,
                on_crash: Policy::Restart,
                unmapped_stops: true,
                balloon: true,
                ..tiny("spin", b"xy")
            },
            VmSpec {
                name: "linux",
                memory_kib: 256 * 1024,
                run_limit_ms: 0,
                background: false,
                bench_hypercalls: false,
                on_reset: Policy::Restart,
                on_crash: Policy::Stop,
                unmapped_stops: false,
                balloon: false,
                image: b"bzImage bytes",
                image_path: "/boot/vmlinuz",
                format: ImageFormat::Linux,
                cmdline: "console=ttyS0 quiet",
                vcpus: 2,
                affinity: 0x8000_0000_0000_0006,
                modules: vec![Module {
                    data: b"070701 initrd",
                    cmdline: "",
                }],
                disk: Some(Disk {
                    data: &DISK,
                    read_only: true,
                }),
                partition: None,
                nics: vec![
                    Nic {
                        network: "lan",
                        mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
                        rate_mbit: 100,
                        burst_kib: 64,
                    },
                    Nic {
                        network: "mgmt.v-2",
                        mac: [0x02, 0, 0, 0, 0, 1],
                        rate_mbit: 0,
                        burst_kib: 0,
                    },
                ],
            },
            VmSpec {
                format: ImageFormat::Multiboot,
                cmdline: "kernel arg",
                modules: vec![
                    Module {
                        data: b"m0",
                        cmdline: "first module",
                    },
                    Module {
                        data: b"",
                        cmdline: "",
                    },
                ],
                disk: Some(Disk {
                    data: &DISK[..512],
                    read_only: false,
                }),
                nics: vec![Nic {
                    network: "lan",
                    mac: [0x02, 0, 0, 0, 0, 2],
                    rate_mbit: 1,
                    burst_kib: 0,
                }],
                ..tiny("mb", b"multiboot")
            },
            VmSpec {
                partition: Some(PartitionDisk {
                    name: "linux-data",
                    read_only: false,
                    encrypted: true,
                    key: b"correct horse",
                }),
                ..tiny("store", b"s")
            },
            VmSpec {
                partition: Some(PartitionDisk {
                    name: "données-ü",
                    read_only: true,
                    encrypted: false,
                    key: b"",
                }),
                ..tiny("ro", b"r")
            },
        ]
    }

    /// Machine settings with every field set to something of its own.
    fn settings() -> MachineSettings {
        MachineSettings {
            admin: Some(AdminCredential {
                memory_kib: 19 * 1024,
                iterations: 2,
                lanes: 1,
                salt: core::array::from_fn(|i| i as u8 + 1),
                hash: core::array::from_fn(|i| 0xA0 ^ i as u8),
            }),
            management: Management::new("mgmt", [10, 0, 9, 1], 24, Some(([10, 0, 9, 2], 514))),
        }
    }

    fn blob() -> Vec<u8> {
        write_with(&settings(), &specs()).unwrap()
    }

    /// Where the machine pointer of a version 8 bundle of `count` VMs is.
    fn machine_pointer(count: usize) -> usize {
        HEADER + (ENTRY + NIC_TABLE_ENTRY) * count
    }

    #[test]
    fn round_trip() {
        let blob = blob();
        assert_eq!(read(&blob).unwrap(), specs());
        // Padding after the bundle (as a bootloader may add) is ignored.
        let mut padded = blob.clone();
        padded.resize(blob.len() + 4096, 0xee);
        assert_eq!(read(&padded).unwrap(), specs());
        assert_eq!(read(&write(&[]).unwrap()).unwrap(), Vec::new());
    }

    #[test]
    fn data_is_aligned() {
        let blob = blob();
        for vm in read(&blob).unwrap() {
            let at = vm.image.as_ptr() as usize - blob.as_ptr() as usize;
            assert_eq!(at % DATA_ALIGN, 0, "{}", vm.name);
            for m in &vm.modules {
                let at = m.data.as_ptr() as usize - blob.as_ptr() as usize;
                assert_eq!(at % DATA_ALIGN, 0, "{} module", vm.name);
            }
        }
    }

    #[test]
    fn formats_round_trip() {
        for f in ImageFormat::ALL {
            assert_eq!(ImageFormat::from_u8(f.as_u8()), Some(f));
            assert_eq!(ImageFormat::from_name(f.name()), Some(f));
        }
        assert_eq!(ImageFormat::from_u8(4), None);
        assert_eq!(ImageFormat::from_name("elf"), None);
    }

    #[test]
    fn rejects_bad_magic_and_truncation() {
        let mut blob = blob();
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
        blob[7] = b'1';
        assert_eq!(read(&blob), Err(BundleError::BadMagic));
    }

    fn put(blob: &mut [u8], at: usize, v: u32) {
        blob[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn rejects_images_outside_the_data_area() {
        let mut blob = blob();
        // Point entry 0's image into the entry table.
        put(&mut blob, HEADER + E_IMAGE, 16);
        assert_eq!(read(&blob), Err(BundleError::ImageOutOfBounds { index: 0 }));
        let mut blob = self::blob();
        put(&mut blob, HEADER + E_IMAGE + 4, u32::MAX);
        assert_eq!(read(&blob), Err(BundleError::ImageOutOfBounds { index: 0 }));
    }

    #[test]
    fn rejects_bad_fields() {
        let linux = HEADER + 2 * ENTRY;
        let mut b = blob();
        put(&mut b, linux + E_FORMAT, 9);
        assert_eq!(read(&b), Err(BundleError::BadFormat { index: 2, value: 9 }));
        let mut b = blob();
        put(&mut b, linux + E_VCPUS, 0);
        assert_eq!(read(&b), Err(BundleError::BadVcpus { index: 2 }));
        let mut b = blob();
        put(&mut b, linux + E_CMDLINE + 4, CMDLINE_MAX as u32 + 1);
        assert_eq!(read(&b), Err(BundleError::CmdlineTooLong { index: 2 }));
        let mut b = blob();
        put(&mut b, linux + E_CMDLINE, 0);
        assert_eq!(read(&b), Err(BundleError::CmdlineOutOfBounds { index: 2 }));
        let mut b = blob();
        put(&mut b, linux + E_MODULES + 4, 1000);
        assert_eq!(read(&b), Err(BundleError::TooManyModules { index: 2 }));
        let mut b = blob();
        put(&mut b, linux + E_MODULES + 4, MODULES_MAX as u32);
        assert!(matches!(
            read(&b),
            Err(BundleError::ModuleOutOfBounds { index: 2, .. })
        ));
        // The module's data length runs past the end.
        let mut b = blob();
        let table = u32_at(&b, linux + E_MODULES).unwrap() as usize;
        put(&mut b, table + 4, u32::MAX - 3);
        assert_eq!(
            read(&b),
            Err(BundleError::ModuleOutOfBounds {
                index: 2,
                module: 0
            })
        );
        // A cmdline byte that is not UTF-8.
        let mut b = blob();
        let at = u32_at(&b, linux + E_CMDLINE).unwrap() as usize;
        b[at] = 0xff;
        assert_eq!(read(&b), Err(BundleError::BadCmdline { index: 2 }));
        // The image path: out of bounds, too long, not UTF-8.
        let mut b = blob();
        put(&mut b, linux + E_IMAGE_PATH, 0);
        assert_eq!(read(&b), Err(BundleError::BadImagePath { index: 2 }));
        let mut b = blob();
        put(&mut b, linux + E_IMAGE_PATH + 4, IMAGE_PATH_MAX as u32 + 1);
        assert_eq!(read(&b), Err(BundleError::BadImagePath { index: 2 }));
        let mut b = blob();
        let at = u32_at(&b, linux + E_IMAGE_PATH).unwrap() as usize;
        assert_eq!(&b[at..at + 13], b"/boot/vmlinuz");
        b[at] = 0xff;
        assert_eq!(read(&b), Err(BundleError::BadImagePath { index: 2 }));
        // An entry count that the blob cannot hold.
        let mut b = blob();
        put(&mut b, 8, u32::MAX);
        assert!(read(&b).is_err());
        let mut b = blob();
        put(&mut b, 12, 17);
        assert_eq!(read(&b), Err(BundleError::BadHeader));
    }

    #[test]
    fn writer_rejects_what_the_reader_would() {
        let long = "x".repeat(NAME_MAX + 1);
        let spec = VmSpec {
            name: &long,
            ..tiny("", b"")
        };
        assert_eq!(write(&[spec]), Err(BundleError::NameTooLong { index: 0 }));
        assert_eq!(
            write(&[tiny("", b"")]),
            Err(BundleError::BadName { index: 0 })
        );
        let mut b = blob();
        b[HEADER] = 0xff;
        assert_eq!(read(&b), Err(BundleError::BadName { index: 0 }));
        let zero = VmSpec {
            vcpus: 0,
            ..tiny("z", b"")
        };
        assert_eq!(write(&[zero]), Err(BundleError::BadVcpus { index: 0 }));
        let long: String = "c".repeat(CMDLINE_MAX + 1);
        let spec = VmSpec {
            cmdline: &long,
            ..tiny("c", b"")
        };
        assert_eq!(
            write(&[spec]),
            Err(BundleError::CmdlineTooLong { index: 0 })
        );
        let spec = VmSpec {
            cmdline: "a\0b",
            ..tiny("c", b"")
        };
        assert_eq!(write(&[spec]), Err(BundleError::BadCmdline { index: 0 }));
        let spec = VmSpec {
            modules: vec![
                Module {
                    data: b"",
                    cmdline: ""
                };
                MODULES_MAX + 1
            ],
            ..tiny("m", b"")
        };
        assert_eq!(
            write(&[spec]),
            Err(BundleError::TooManyModules { index: 0 })
        );
        let long: String = "p".repeat(IMAGE_PATH_MAX + 1);
        let spec = VmSpec {
            image_path: &long,
            ..tiny("p", b"")
        };
        assert_eq!(write(&[spec]), Err(BundleError::BadImagePath { index: 0 }));
        let spec = VmSpec {
            image_path: "a\0b",
            ..tiny("p", b"")
        };
        assert_eq!(write(&[spec]), Err(BundleError::BadImagePath { index: 0 }));
        // Exactly at the limits is fine.
        let max: String = "c".repeat(CMDLINE_MAX);
        let name: String = "n".repeat(NAME_MAX);
        let spec = VmSpec {
            name: &name,
            cmdline: &max,
            ..tiny("", b"")
        };
        let b = write(core::slice::from_ref(&spec)).unwrap();
        assert_eq!(read(&b).unwrap(), vec![spec]);
    }

    #[test]
    fn disks_round_trip_aligned() {
        let blob = blob();
        let vms = read(&blob).unwrap();
        let linux = vms[2].disk.unwrap();
        assert!(linux.read_only);
        assert_eq!(linux.data, &DISK[..]);
        let mb = vms[3].disk.unwrap();
        assert!(!mb.read_only);
        assert_eq!(mb.data.len(), 512);
        assert_eq!(vms[0].disk, None);
        let at = linux.data.as_ptr() as usize - blob.as_ptr() as usize;
        assert_eq!(at % DATA_ALIGN, 0);
    }

    #[test]
    fn malformed_disks_are_refused() {
        let linux = HEADER + 2 * ENTRY;
        let hello = HEADER;
        // Not whole sectors, empty, out of bounds, larger than DISK_MAX.
        for (at, v) in [
            (E_DISK + 4, 1000u32),
            (E_DISK + 4, 0),
            (E_DISK, 0),
            (E_DISK, u32::MAX - 100),
            (E_DISK + 4, (DISK_MAX + SECTOR_SIZE) as u32),
        ] {
            let mut b = blob();
            put(&mut b, linux + at, v);
            assert_eq!(read(&b), Err(BundleError::BadDisk { index: 2 }), "{at} {v}");
        }
        // Disk fields or the read-only flag without the disk flag.
        let mut b = blob();
        put(&mut b, hello + E_DISK + 4, 512);
        assert_eq!(read(&b), Err(BundleError::BadDisk { index: 0 }));
        let mut b = blob();
        put(&mut b, hello + E_FLAGS, FLAG_DISK_READ_ONLY);
        assert_eq!(read(&b), Err(BundleError::BadDisk { index: 0 }));
        // The writer refuses what the reader would.
        for len in [0, 100, DISK_MAX + SECTOR_SIZE] {
            let data = vec![0u8; len];
            let spec = VmSpec {
                disk: Some(Disk {
                    data: &data,
                    read_only: false,
                }),
                ..tiny("d", b"x")
            };
            assert_eq!(
                write(&[spec]),
                Err(BundleError::BadDisk { index: 0 }),
                "{len}"
            );
        }
        let big = vec![7u8; DISK_MAX];
        let spec = VmSpec {
            disk: Some(Disk {
                data: &big,
                read_only: false,
            }),
            ..tiny("d", b"x")
        };
        let b = write(core::slice::from_ref(&spec)).unwrap();
        assert_eq!(read(&b).unwrap(), vec![spec]);
    }

    #[test]
    fn partitions_round_trip() {
        let blob = blob();
        let vms = read(&blob).unwrap();
        let p = vms[4].partition.unwrap();
        assert_eq!(
            (p.name, p.read_only, p.encrypted),
            ("linux-data", false, true)
        );
        assert_eq!(p.key, b"correct horse");
        let p = vms[5].partition.unwrap();
        assert_eq!(
            (p.name, p.read_only, p.encrypted, p.key),
            ("données-ü", true, false, &b""[..])
        );
        assert_eq!(vms[4].disk, None);
        assert!(vms[..4].iter().all(|v| v.partition.is_none()));
        // 36 UTF-16 units (a character outside the BMP counts two) and the longest
        // key are accepted.
        let name: String = "\u{1F600}".repeat(18);
        let key = vec![0xA5u8; KEY_MAX];
        let spec = VmSpec {
            partition: Some(PartitionDisk {
                name: &name,
                read_only: false,
                encrypted: true,
                key: &key,
            }),
            ..tiny("long", b"x")
        };
        let b = write(core::slice::from_ref(&spec)).unwrap();
        assert_eq!(read(&b).unwrap(), vec![spec]);
    }

    #[test]
    fn malformed_partitions_are_refused() {
        let store = HEADER + 4 * ENTRY;
        let hello = HEADER;
        let good = blob();
        let record = u32_at(&good, store + E_PARTITION).unwrap() as usize;
        let bad = Err(BundleError::BadPartition { index: 4 });
        // The record out of bounds, before the data area, past the end.
        for v in [0u32, 16, good.len() as u32 - 8, u32::MAX] {
            let mut b = good.clone();
            put(&mut b, store + E_PARTITION, v);
            assert_eq!(read(&b), bad, "record at {v}");
        }
        // Name: out of bounds, empty, 37 units, not UTF-8.
        for (at, v) in [(0, u32::MAX - 3), (4, 0), (4, 5000)] {
            let mut b = good.clone();
            put(&mut b, record + at, v);
            assert_eq!(read(&b), bad, "name field {at} = {v}");
        }
        let mut b = good.clone();
        let name_at = u32_at(&b, record).unwrap() as usize;
        b[name_at] = 0xFF;
        assert_eq!(read(&b), bad);
        let mut b = good.clone();
        b[name_at] = 0;
        assert_eq!(read(&b), bad);
        // Key: out of bounds, longer than KEY_MAX (even where the blob holds it).
        let mut b = good.clone();
        put(&mut b, record + 8, u32::MAX);
        assert_eq!(read(&b), bad);
        let mut b = good.clone();
        b.resize(b.len() + 2 * KEY_MAX, 0);
        let total = b.len() as u32;
        put(&mut b, 12, total);
        put(&mut b, record + 12, KEY_MAX as u32 + 1);
        assert_eq!(read(&b), bad);
        // A key without encryption.
        let mut b = good.clone();
        let flags = u32_at(&b, store + E_FLAGS).unwrap();
        put(&mut b, store + E_FLAGS, flags & !FLAG_ENCRYPTED);
        assert_eq!(read(&b), bad);
        // A partition beside a RAM-backed disk (entry 2 has one).
        let mut b = good.clone();
        let linux = HEADER + 2 * ENTRY;
        let flags = u32_at(&b, linux + E_FLAGS).unwrap();
        put(&mut b, linux + E_FLAGS, flags | FLAG_PARTITION);
        put(&mut b, linux + E_PARTITION, record as u32);
        assert_eq!(read(&b), Err(BundleError::BadPartition { index: 2 }));
        // The word or the encrypted flag without the partition flag.
        let mut b = good.clone();
        put(&mut b, hello + E_PARTITION, record as u32);
        assert_eq!(read(&b), Err(BundleError::BadPartition { index: 0 }));
        let mut b = good.clone();
        put(&mut b, hello + E_FLAGS, FLAG_ENCRYPTED);
        assert_eq!(read(&b), Err(BundleError::BadPartition { index: 0 }));
        // Version 5 knew no partitions.
        let mut b = good.clone();
        b[..8].copy_from_slice(&MAGIC_V5);
        assert_eq!(read(&b), bad);

        // The writer refuses what the reader would.
        let long = "x".repeat(PARTITION_NAME_UNITS + 1);
        let key = vec![0u8; KEY_MAX + 1];
        let p = |name, encrypted, key| PartitionDisk {
            name,
            read_only: false,
            encrypted,
            key,
        };
        for part in [
            p("", false, b""),
            p(&long, false, b""),
            p("a\0b", false, b""),
            p("plain", false, b"key"),
            p("enc", true, &key),
        ] {
            let spec = VmSpec {
                partition: Some(part),
                ..tiny("d", b"x")
            };
            assert_eq!(
                write(&[spec]),
                Err(BundleError::BadPartition { index: 0 }),
                "{part:?}"
            );
        }
        let both = VmSpec {
            partition: Some(p("a", false, b"")),
            disk: Some(Disk {
                data: &DISK,
                read_only: false,
            }),
            ..tiny("d", b"x")
        };
        assert_eq!(write(&[both]), Err(BundleError::BadPartition { index: 0 }));
    }

    #[test]
    fn version_5_bundles_are_read_without_partitions() {
        let no_partitions: Vec<VmSpec> = specs()
            .into_iter()
            .map(|s| VmSpec {
                partition: None,
                nics: Vec::new(),
                ..s
            })
            .collect();
        let mut b = write(&no_partitions).unwrap();
        b[..8].copy_from_slice(&MAGIC_V5);
        assert_eq!(read(&b).unwrap(), no_partitions);
    }

    #[test]
    fn version_4_bundles_are_read_without_disks() {
        let no_disks: Vec<VmSpec> = specs()
            .into_iter()
            .map(|s| VmSpec {
                disk: None,
                partition: None,
                nics: Vec::new(),
                ..s
            })
            .collect();
        let mut b = write(&no_disks).unwrap();
        b[..8].copy_from_slice(&MAGIC_V4);
        assert_eq!(read(&b).unwrap(), no_disks);
        // A version 4 entry cannot carry a disk.
        let with_disks: Vec<VmSpec> = specs()
            .into_iter()
            .map(|s| VmSpec {
                partition: None,
                nics: Vec::new(),
                ..s
            })
            .collect();
        let mut b = write(&with_disks).unwrap();
        b[..8].copy_from_slice(&MAGIC_V4);
        assert_eq!(read(&b), Err(BundleError::BadDisk { index: 2 }));
    }

    /// `blob` (of `specs`) with the `n` bytes at `at` cut out, where `at` is the end
    /// of the tables an older version has, and every offset into the data area
    /// moved back by `n`: the bundle as that version lays it out (with
    /// `nic_table`, the version 7 NIC table is still there and fixed up too).
    fn cut(blob: &[u8], specs: &[VmSpec], at: usize, n: usize, nic_table: bool) -> Vec<u8> {
        let mut b = blob[..at].to_vec();
        b.extend_from_slice(&blob[at + n..]);
        put(&mut b, 12, (blob.len() - n) as u32);
        let back = |b: &mut Vec<u8>, field: usize| {
            let v = u32_at(b, field).unwrap();
            if v != 0 {
                assert!(
                    v as usize >= at + n,
                    "offset {v} at {field} not in the data"
                );
                put(b, field, v - n as u32);
            }
        };
        for (i, spec) in specs.iter().enumerate() {
            let e = HEADER + i * ENTRY;
            for field in [
                E_IMAGE,
                E_CMDLINE,
                E_MODULES,
                E_IMAGE_PATH,
                E_DISK,
                E_PARTITION,
            ] {
                back(&mut b, e + field);
            }
            // The tables in the data area, where they are now.
            let modules = u32_at(&b, e + E_MODULES).unwrap() as usize;
            for m in 0..spec.modules.len() {
                for field in [0, 8] {
                    back(&mut b, modules + m * MODULE_ENTRY + field);
                }
            }
            if spec.partition.is_some() {
                let record = u32_at(&b, e + E_PARTITION).unwrap() as usize;
                for field in [0, 8] {
                    back(&mut b, record + field);
                }
            }
            if nic_table {
                let t = HEADER + specs.len() * ENTRY + i * NIC_TABLE_ENTRY;
                back(&mut b, t);
                let records = u32_at(&b, t).unwrap() as usize;
                for j in 0..spec.nics.len() {
                    back(&mut b, records + j * NIC_RECORD);
                }
            }
        }
        b
    }

    /// `specs` packed as version 7 packs them: a version 8 bundle without the
    /// machine pointer and record (the record comes right after the pointer).
    fn version_7(specs: &[VmSpec]) -> Vec<u8> {
        let b8 = write_with(&settings(), specs).unwrap();
        let at = machine_pointer(specs.len());
        let mut b7 = cut(&b8, specs, at, MACHINE_POINTER + MACHINE_RECORD, true);
        b7[..8].copy_from_slice(&MAGIC_V7);
        b7
    }

    /// `specs` packed as version 8 packs them with `settings()`'s credential: a
    /// version 9 bundle whose machine record ends before the management block.
    fn version_8(specs: &[VmSpec]) -> Vec<u8> {
        let b9 = write_with(&no_management(), specs).unwrap();
        let pointer = machine_pointer(specs.len());
        let record = pointer + MACHINE_POINTER;
        let n = management::MANAGEMENT_BLOCK;
        let mut b8 = cut(&b9, specs, record + MACHINE_RECORD_V8, n, true);
        put(&mut b8, pointer + 4, MACHINE_RECORD_V8 as u32);
        b8[..8].copy_from_slice(&MAGIC_V8);
        b8
    }

    fn no_management() -> MachineSettings {
        MachineSettings {
            management: None,
            ..settings()
        }
    }

    #[test]
    fn version_8_bundles_are_read_without_management() {
        let b8 = version_8(&specs());
        assert_eq!(read_with(&b8).unwrap(), (no_management(), specs()));
        // A version 9 bundle stamped version 8 has a record too long for it, and
        // a version 8 bundle stamped version 9 one too short: refused, not misread.
        let mut b = blob();
        b[..8].copy_from_slice(&MAGIC_V8);
        assert_eq!(read(&b), Err(BundleError::BadMachineRecord));
        let mut b = b8.clone();
        b[..8].copy_from_slice(&MAGIC);
        assert_eq!(read(&b), Err(BundleError::BadMachineRecord));
        // Any other magic is refused with the versions read named.
        let mut b = blob();
        b[..8].copy_from_slice(b"HVBUNDLA");
        assert_eq!(read(&b), Err(BundleError::BadMagic));
        assert!(alloc::format!("{}", BundleError::BadMagic).contains("HVBUNDL9, 8, 7"));
    }

    #[test]
    fn management_blocks_are_checked() {
        let good = blob();
        let record = u32_at(&good, machine_pointer(specs().len())).unwrap() as usize;
        let block = record + M_MANAGEMENT;
        // An address that is its network's broadcast address.
        let mut b = good.clone();
        b[block + 36..block + 40].copy_from_slice(&[10, 0, 9, 255]);
        assert_eq!(read(&b), Err(BundleError::BadManagement));
        // Without the flag, the block must be zero.
        let mut b = good.clone();
        put(&mut b, record, MACHINE_ADMIN);
        assert_eq!(read(&b), Err(BundleError::BadMachineRecord));
        // An unknown flag.
        let mut b = good.clone();
        put(&mut b, record, MACHINE_ADMIN | MACHINE_MANAGEMENT | 2);
        assert_eq!(read(&b), Err(BundleError::BadMachineRecord));
        // Management without a credential.
        let s = MachineSettings {
            admin: None,
            ..settings()
        };
        let b = write_with(&s, &specs()).unwrap();
        assert_eq!(read_settings(&b), Ok(s));
    }

    #[test]
    fn version_7_bundles_are_read_without_settings() {
        let b7 = version_7(&specs());
        assert_eq!(
            read_with(&b7).unwrap(),
            (MachineSettings::default(), specs())
        );
        assert_eq!(read_settings(&b7), Ok(MachineSettings::default()));
        // Stamped version 7, a version 8 bundle's machine pointer and record are
        // data: the settings are never read from them.
        let mut b = blob();
        b[..8].copy_from_slice(&MAGIC_V7);
        assert_eq!(
            read_with(&b).unwrap(),
            (MachineSettings::default(), specs())
        );
        // And a version 7 bundle stamped version 8 has no pointer where version 8
        // looks for one: refused, not misread.
        let mut b = b7.clone();
        b[..8].copy_from_slice(&MAGIC);
        assert!(read(&b).is_err());
    }

    #[test]
    fn version_6_bundles_are_read_without_nics() {
        let no_nics: Vec<VmSpec> = specs()
            .into_iter()
            .map(|s| VmSpec {
                nics: Vec::new(),
                ..s
            })
            .collect();
        // A version 6 bundle is a version 7 one without the NIC table.
        let count = no_nics.len();
        let b7 = version_7(&no_nics);
        let mut b6 = cut(
            &b7,
            &no_nics,
            HEADER + ENTRY * count,
            NIC_TABLE_ENTRY * count,
            false,
        );
        b6[..8].copy_from_slice(&MAGIC_V6);
        assert_eq!(read(&b6).unwrap(), no_nics);
        assert_eq!(read_settings(&b6), Ok(MachineSettings::default()));
        // Stamped version 6, a version 8 bundle's NIC table is data: NICs are
        // never read from it.
        let mut b = write(&specs()).unwrap();
        b[..8].copy_from_slice(&MAGIC_V6);
        assert!(read(&b).unwrap().iter().all(|vm| vm.nics.is_empty()));
    }

    #[test]
    fn machine_settings_round_trip() {
        let b = blob();
        assert_eq!(read_with(&b).unwrap(), (settings(), specs()));
        assert_eq!(read_settings(&b), Ok(settings()));
        // `write` packs the default: a record of zeros.
        let plain = write(&specs()).unwrap();
        assert_eq!(read_settings(&plain), Ok(MachineSettings::default()));
        let record = u32_at(&plain, machine_pointer(specs().len())).unwrap() as usize;
        assert_eq!(plain[record..record + MACHINE_RECORD], [0; MACHINE_RECORD]);
        // A machine with a credential and no VMs.
        let empty = write_with(&settings(), &[]).unwrap();
        assert_eq!(read_with(&empty).unwrap(), (settings(), Vec::new()));
        // The bounds, exactly.
        for (memory_kib, iterations, lanes) in [
            (8, 1, 1),
            (ADMIN_MEMORY_KIB_MAX, ADMIN_ITERATIONS_MAX, ADMIN_LANES_MAX),
            (8 * ADMIN_LANES_MAX, 1, ADMIN_LANES_MAX),
        ] {
            let s = MachineSettings {
                admin: Some(AdminCredential {
                    memory_kib,
                    iterations,
                    lanes,
                    ..settings().admin.unwrap()
                }),
                management: None,
            };
            let b = write_with(&s, &specs()).unwrap();
            assert_eq!(read_settings(&b), Ok(s));
        }
        // Older versions have the default.
        for magic in [MAGIC_V4, MAGIC_V5] {
            let mut b = write(&[tiny("a", b"x")]).unwrap();
            b[..8].copy_from_slice(&magic);
            assert_eq!(read_settings(&b), Ok(MachineSettings::default()));
        }
        // The hash and salt stay out of debug output.
        let shown = alloc::format!("{:?}", settings());
        assert!(
            shown.contains("memory_kib: 19456")
                && !shown.contains("hash")
                && !shown.contains("salt"),
            "{shown}"
        );
    }

    #[test]
    fn malformed_machine_records_are_refused() {
        let good = blob();
        let pointer = machine_pointer(specs().len());
        let record = u32_at(&good, pointer).unwrap() as usize;
        assert_eq!(record, pointer + MACHINE_POINTER);
        let bad = Err(BundleError::BadMachineRecord);
        // The record before the data area, past the end; a length other than 64.
        for (at, v) in [
            (0, 0u32),
            (0, pointer as u32),
            (0, good.len() as u32 - 32),
            (0, u32::MAX),
            (4, 0),
            (4, MACHINE_RECORD as u32 - 1),
            (4, MACHINE_RECORD as u32 + 1),
            (4, u32::MAX),
        ] {
            let mut b = good.clone();
            put(&mut b, pointer + at, v);
            assert_eq!(read_settings(&b), bad, "pointer field {at} = {v}");
            assert_eq!(
                read(&b),
                Err(BundleError::BadMachineRecord),
                "pointer field {at} = {v}"
            );
        }
        // An unknown flag; a credential's bytes without the flag.
        let mut b = good.clone();
        put(&mut b, record + M_FLAGS, MACHINE_ADMIN | 2);
        assert_eq!(read_settings(&b), bad);
        let mut b = good.clone();
        put(&mut b, record + M_FLAGS, 0);
        assert_eq!(read_settings(&b), bad);
        let mut plain = write(&specs()).unwrap();
        plain[record + MACHINE_RECORD - 1] = 1;
        assert_eq!(read_settings(&plain), bad);
        // Parameters out of bounds: memory below 8 KiB per lane or above 1 GiB,
        // passes and lanes 0 or too many.
        let bad = Err(BundleError::BadAdminCredential);
        for (at, v) in [
            (M_MEMORY, 7),
            (M_MEMORY, ADMIN_MEMORY_KIB_MAX + 1),
            (M_MEMORY, u32::MAX),
            (M_ITERATIONS, 0),
            (M_ITERATIONS, ADMIN_ITERATIONS_MAX + 1),
            (M_LANES, 0),
            (M_LANES, ADMIN_LANES_MAX + 1),
            (M_LANES, u32::MAX),
        ] {
            let mut b = good.clone();
            put(&mut b, record + at, v);
            assert_eq!(read_settings(&b), bad, "field {at} = {v}");
        }
        let mut b = good.clone();
        put(&mut b, record + M_LANES, 4);
        put(&mut b, record + M_MEMORY, 31);
        assert_eq!(read_settings(&b), bad);
        put(&mut b, record + M_MEMORY, 32);
        assert!(read_settings(&b).is_ok());
        // A bad VM spoils the settings too: the bundle is read as a whole.
        let mut b = good.clone();
        put(&mut b, HEADER + E_VCPUS, 0);
        assert_eq!(read_settings(&b), Err(BundleError::BadVcpus { index: 0 }));

        // The writer refuses what the reader would.
        let admin = settings().admin.unwrap();
        for a in [
            AdminCredential {
                memory_kib: 7,
                ..admin
            },
            AdminCredential {
                memory_kib: ADMIN_MEMORY_KIB_MAX + 1,
                ..admin
            },
            AdminCredential {
                iterations: 0,
                ..admin
            },
            AdminCredential {
                iterations: ADMIN_ITERATIONS_MAX + 1,
                ..admin
            },
            AdminCredential { lanes: 0, ..admin },
            AdminCredential {
                lanes: ADMIN_LANES_MAX + 1,
                ..admin
            },
            AdminCredential {
                lanes: 2,
                memory_kib: 15,
                ..admin
            },
        ] {
            let s = MachineSettings {
                admin: Some(a),
                management: None,
            };
            assert_eq!(
                write_with(&s, &specs()),
                Err(BundleError::BadAdminCredential),
                "{a:?}"
            );
        }
    }

    #[test]
    fn malformed_nics_are_refused() {
        let good = blob();
        let count = specs().len();
        let table = HEADER + ENTRY * count;
        let linux = table + 2 * NIC_TABLE_ENTRY;
        let records = u32_at(&good, linux).unwrap() as usize;
        assert_eq!(u32_at(&good, linux + 4), Some(2));
        let bad_table = Err(BundleError::BadNicTable { index: 2 });
        // The records out of bounds, before the data area; too many NICs.
        for (at, v) in [(0, 0u32), (0, 16), (0, u32::MAX - 8), (4, 5), (4, u32::MAX)] {
            let mut b = good.clone();
            put(&mut b, linux + at, v);
            assert_eq!(read(&b), bad_table, "table field {at} = {v}");
        }
        // An offset without NICs.
        let mut b = good.clone();
        put(&mut b, table, records as u32);
        assert_eq!(read(&b), Err(BundleError::BadNicTable { index: 0 }));
        let bad = |nic| Err(BundleError::BadNic { index: 2, nic });
        // Network name: out of bounds, empty, too long, a character outside the set.
        for (at, v) in [(0, u32::MAX - 3), (4, 0), (4, 33)] {
            let mut b = good.clone();
            put(&mut b, records + at, v);
            assert_eq!(read(&b), bad(0), "record field {at} = {v}");
        }
        let mut b = good.clone();
        let name_at = u32_at(&b, records).unwrap() as usize;
        b[name_at] = b' ';
        assert_eq!(read(&b), bad(0));
        // MAC: multicast, broadcast, zero.
        for mac in [[1, 0, 0, 0, 0, 1], [0xFF; 6], [0; 6]] {
            let mut b = good.clone();
            b[records + 8..records + 14].copy_from_slice(&mac);
            assert_eq!(read(&b), bad(0), "{mac:x?}");
        }
        // The reserved bytes, a rate too high, a burst too small or without a rate.
        let mut b = good.clone();
        b[records + 15] = 1;
        assert_eq!(read(&b), bad(0));
        for (at, v) in [(16, RATE_MBIT_MAX + 1), (20, 1), (20, BURST_KIB_MAX + 1)] {
            let mut b = good.clone();
            put(&mut b, records + at, v);
            assert_eq!(read(&b), bad(0), "record field {at} = {v}");
        }
        let mut b = good.clone();
        put(&mut b, records + NIC_RECORD + 20, 64);
        assert_eq!(read(&b), bad(1));
        // Two NICs with one MAC on one network: the later one is refused (entry
        // 3's NIC is on "lan" as entry 2's first).
        let mut b = good.clone();
        let mb = u32_at(&b, table + 3 * NIC_TABLE_ENTRY).unwrap() as usize;
        b.copy_within(records + 8..records + 14, mb + 8);
        assert_eq!(read(&b), Err(BundleError::BadNic { index: 3, nic: 0 }));

        // The writer refuses what the reader would.
        let nic = |network, mac, rate_mbit, burst_kib| Nic {
            network,
            mac,
            rate_mbit,
            burst_kib,
        };
        let ok = [2, 0, 0, 0, 0, 9];
        let long = "n".repeat(NETWORK_NAME_MAX + 1);
        for n in [
            nic("", ok, 0, 0),
            nic(&long, ok, 0, 0),
            nic("a b", ok, 0, 0),
            nic("lan", [3, 0, 0, 0, 0, 9], 0, 0),
            nic("lan", [0; 6], 0, 0),
            nic("lan", ok, RATE_MBIT_MAX + 1, 0),
            nic("lan", ok, 0, 64),
            nic("lan", ok, 10, 1),
        ] {
            let spec = VmSpec {
                nics: vec![n],
                ..tiny("n", b"x")
            };
            assert_eq!(
                write(&[spec]),
                Err(BundleError::BadNic { index: 0, nic: 0 }),
                "{n:?}"
            );
        }
        let five = VmSpec {
            nics: vec![nic("lan", ok, 0, 0); NICS_MAX + 1],
            ..tiny("n", b"x")
        };
        assert_eq!(write(&[five]), Err(BundleError::BadNicTable { index: 0 }));
        let twice = |net2| {
            vec![
                VmSpec {
                    nics: vec![nic("lan", ok, 0, 0)],
                    ..tiny("a", b"x")
                },
                VmSpec {
                    nics: vec![nic(net2, ok, 0, 0)],
                    ..tiny("b", b"x")
                },
            ]
        };
        assert_eq!(
            write(&twice("lan")),
            Err(BundleError::BadNic { index: 1, nic: 0 })
        );
        // The same MAC on two networks is fine: they never meet.
        let other = twice("other");
        assert_eq!(read(&write(&other).unwrap()).unwrap(), other);
    }

    /// xorshift64*: deterministic pseudo-random bytes without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// The reader must answer every input with a value or an error, never a panic
    /// (a panic in the kernel stops the machine): every truncation, random byte
    /// corruptions, random header/offset fields, and plain random blobs.
    #[test]
    fn never_panics_on_corrupt_input() {
        let good = blob();
        for len in 0..good.len() {
            assert!(read(&good[..len]).is_err(), "truncated to {len} accepted");
            assert!(read_settings(&good[..len]).is_err(), "truncated to {len}");
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut accepted = 0;
        for round in 0..20_000 {
            let mut b = good.clone();
            let flips = 1 + rng.below(8);
            for _ in 0..flips {
                // Aim most corruptions at the header, entries and module tables,
                // where the offsets live.
                let span = if round % 4 == 0 {
                    b.len()
                } else {
                    b.len().min(512)
                };
                let at = rng.below(span);
                if round % 3 == 0 {
                    // A whole field: offsets near the ends are the interesting ones.
                    let at = at & !3;
                    let v = match rng.below(4) {
                        0 => u32::MAX - rng.below(64) as u32,
                        1 => b.len() as u32 + rng.below(64) as u32 - 32,
                        2 => rng.below(4096) as u32,
                        _ => rng.next() as u32,
                    };
                    if at + 4 <= b.len() {
                        put(&mut b, at, v);
                    }
                } else {
                    b[at] = rng.next() as u8;
                }
            }
            if rng.below(8) == 0 {
                let keep = rng.below(b.len() + 1);
                b.truncate(keep);
            }
            let vms = read(&b);
            // One verdict for the bundle, whichever part is asked for.
            assert_eq!(read_settings(&b).is_ok(), vms.is_ok());
            if vms.is_ok() {
                accepted += 1;
            }
        }
        // Corrupting string or image bytes keeps a bundle valid; that is fine, as
        // long as nothing panicked.
        assert!(accepted < 20_000);
        for _ in 0..5_000 {
            let len = rng.below(1024);
            let mut b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if b.len() >= 16 && rng.below(2) == 0 {
                b[..8].copy_from_slice(&MAGIC);
                put(&mut b, 8, rng.below(4) as u32);
                put(&mut b, 12, rng.below(len + 1) as u32);
            }
            let _ = read(&b);
            let _ = read_settings(&b);
        }
    }
}
