//! QEMU's firmware configuration device (fw_cfg), I/O port interface: selector at
//! 0x510, data at 0x511.
//!
//! Firmware and kernels written for QEMU read their configuration from it: the
//! signature "QEMU" says the device is there, then RAM size, CPU counts, and named
//! blobs ("files") such as `etc/e820` or `opt/...` listed in a file directory. The
//! layout follows QEMU's docs/specs/fw_cfg.rst and the key numbers Linux's
//! include/uapi/linux/qemu_fw_cfg.h names.
//!
//! ## Interface
//!
//! * A 16-bit write to the selector port picks an item and rewinds its data offset
//!   to 0. Bit 14 (the old write channel) is ignored for reads; bit 15 selects the
//!   architecture-specific item range.
//! * Each byte read from the data port returns the item's next byte; past the end of
//!   the item (or for a selector with no item) reads return 0.
//! * As on QEMU's x86 machines, the two ports form one region: a byte read at either
//!   port reads data, and only a 16-bit write selects. Data writes are ignored (QEMU
//!   stopped honouring them in v2.4).
//! * The DMA interface (0x514) is not provided: `FW_CFG_ID` has only bit 0
//!   (traditional interface) set, so guests do not look for it, and its ports stay
//!   unclaimed.
//!
//! ## Items
//!
//! Built in: signature (0x0000), ID (0x0001), RAM size (0x0003, u64 LE), CPU count
//! (0x0005, u16 LE), max CPUs (0x000F, u16 LE) and the file directory (0x0019). The
//! VMM adds named files with [`FwCfg::add_file`] (selectors from 0x0020 up, in the
//! order added; lookups go by name, so order does not matter to guests) and other
//! numbered items with [`FwCfg::add_item`] (e.g. the kernel command line keys, or
//! x86-specific ones at 0x8000+). Contents are borrowed (`&'a [u8]`) and the table
//! holds up to `N` added items: no allocation.

use alloc::vec::Vec;

use crate::bus::{all_ones, PortDevice};
use crate::state::{Fingerprint, Reader, StateError, Tag, Writer};

/// The selector port; the data port is the next one.
pub const FW_CFG_BASE: u16 = 0x510;
/// Ports decoded from [`FW_CFG_BASE`] (selector and data; no DMA).
pub const FW_CFG_PORT_COUNT: u16 = 2;
/// Longest file name, including its terminating NUL.
pub const FW_CFG_MAX_FILE_PATH: usize = 56;
/// Size of one file directory entry.
pub const FILE_ENTRY_SIZE: usize = 64;

/// Selector keys.
pub mod key {
    pub const SIGNATURE: u16 = 0x0000;
    pub const ID: u16 = 0x0001;
    pub const UUID: u16 = 0x0002;
    pub const RAM_SIZE: u16 = 0x0003;
    pub const NOGRAPHIC: u16 = 0x0004;
    pub const NB_CPUS: u16 = 0x0005;
    pub const MACHINE_ID: u16 = 0x0006;
    pub const KERNEL_ADDR: u16 = 0x0007;
    pub const KERNEL_SIZE: u16 = 0x0008;
    pub const KERNEL_CMDLINE: u16 = 0x0009;
    pub const INITRD_ADDR: u16 = 0x000A;
    pub const INITRD_SIZE: u16 = 0x000B;
    pub const BOOT_DEVICE: u16 = 0x000C;
    pub const NUMA: u16 = 0x000D;
    pub const BOOT_MENU: u16 = 0x000E;
    pub const MAX_CPUS: u16 = 0x000F;
    pub const KERNEL_ENTRY: u16 = 0x0010;
    pub const KERNEL_DATA: u16 = 0x0011;
    pub const INITRD_DATA: u16 = 0x0012;
    pub const CMDLINE_ADDR: u16 = 0x0013;
    pub const CMDLINE_SIZE: u16 = 0x0014;
    pub const CMDLINE_DATA: u16 = 0x0015;
    pub const SETUP_ADDR: u16 = 0x0016;
    pub const SETUP_SIZE: u16 = 0x0017;
    pub const SETUP_DATA: u16 = 0x0018;
    pub const FILE_DIR: u16 = 0x0019;
    /// The first selector of a named file.
    pub const FILE_FIRST: u16 = 0x0020;
    /// Legacy write-enable bit; ignored.
    pub const WRITE_CHANNEL: u16 = 0x4000;
    /// Architecture-specific item range.
    pub const ARCH_LOCAL: u16 = 0x8000;
}

/// FW_CFG_ID: bit 0, the traditional (port) interface. Bit 1 (DMA) is clear.
pub const ID_TRADITIONAL: u32 = 1 << 0;

/// Why an item could not be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FwCfgError {
    /// All `N` slots are taken.
    Full,
    /// The file name is empty, contains a NUL, or needs more than 55 bytes.
    BadName,
    /// A file of this name already exists.
    DuplicateName,
    /// The key is built in, in the file range, already used, or has the write-channel
    /// bit set.
    BadKey,
    /// The contents do not fit the directory's 32-bit size field.
    TooLarge,
}

impl core::fmt::Display for FwCfgError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            FwCfgError::Full => "fw_cfg item table is full",
            FwCfgError::BadName => "fw_cfg file name is empty, has a NUL or is too long",
            FwCfgError::DuplicateName => "fw_cfg file name already used",
            FwCfgError::BadKey => "fw_cfg key is reserved or already used",
            FwCfgError::TooLarge => "fw_cfg item is larger than 4 GiB",
        })
    }
}

#[derive(Clone, Copy, Debug)]
struct Item<'a> {
    key: u16,
    /// NUL-padded name for files; `None` for numbered items.
    name: Option<[u8; FW_CFG_MAX_FILE_PATH]>,
    data: &'a [u8],
}

/// An fw_cfg device with room for `N` added items (files and numbered items).
#[derive(Clone, Debug)]
pub struct FwCfg<'a, const N: usize> {
    ram_size: u64,
    nb_cpus: u16,
    max_cpus: u16,
    items: [Option<Item<'a>>; N],
    files: u16,
    selector: u16,
    offset: u32,
}

impl<'a, const N: usize> FwCfg<'a, N> {
    /// A device reporting `ram_size` bytes of RAM and `cpus` CPUs (also the maximum;
    /// see [`Self::set_max_cpus`]).
    pub const fn new(ram_size: u64, cpus: u16) -> Self {
        Self {
            ram_size,
            nb_cpus: cpus,
            max_cpus: cpus,
            items: [None; N],
            files: 0,
            selector: key::SIGNATURE,
            offset: 0,
        }
    }

    pub fn set_max_cpus(&mut self, max_cpus: u16) {
        self.max_cpus = max_cpus;
    }

    /// Adds a named file and returns its selector. Names are ASCII paths such as
    /// `"etc/e820"` or `"opt/org.example/config"`, at most 55 bytes.
    pub fn add_file(&mut self, name: &str, data: &'a [u8]) -> Result<u16, FwCfgError> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() >= FW_CFG_MAX_FILE_PATH || bytes.contains(&0) {
            return Err(FwCfgError::BadName);
        }
        let mut padded = [0u8; FW_CFG_MAX_FILE_PATH];
        padded[..bytes.len()].copy_from_slice(bytes);
        if self.files().any(|item| item.name == Some(padded)) {
            return Err(FwCfgError::DuplicateName);
        }
        if u32::try_from(data.len()).is_err() {
            return Err(FwCfgError::TooLarge);
        }
        let key = key::FILE_FIRST + self.files;
        self.insert(Item {
            key,
            name: Some(padded),
            data,
        })?;
        self.files += 1;
        Ok(key)
    }

    /// Adds a numbered item (no directory entry). The built-in keys, the file range
    /// (0x0020-0x3FFF) and keys with the write-channel bit are refused.
    pub fn add_item(&mut self, key: u16, data: &'a [u8]) -> Result<(), FwCfgError> {
        let builtin = matches!(
            key,
            key::SIGNATURE | key::ID | key::RAM_SIZE | key::NB_CPUS | key::MAX_CPUS | key::FILE_DIR
        );
        let file_range = (key::FILE_FIRST..key::WRITE_CHANNEL).contains(&key);
        if builtin
            || file_range
            || key & key::WRITE_CHANNEL != 0
            || self.items.iter().flatten().any(|item| item.key == key)
        {
            return Err(FwCfgError::BadKey);
        }
        if u32::try_from(data.len()).is_err() {
            return Err(FwCfgError::TooLarge);
        }
        self.insert(Item {
            key,
            name: None,
            data,
        })
    }

    /// What a 16-bit write to the selector port does: picks `selector`'s item and
    /// rewinds to its first byte.
    pub fn select(&mut self, selector: u16) {
        self.selector = selector;
        self.offset = 0;
    }

    /// What a byte read from the data port does: the selected item's next byte, or 0
    /// past its end or when nothing is selected.
    pub fn read_data(&mut self) -> u8 {
        let key = self.selector & !key::WRITE_CHANNEL;
        match self.item_byte(key, self.offset) {
            Some(byte) => {
                self.offset += 1;
                byte
            }
            None => 0,
        }
    }

    /// The last selector written.
    pub fn selector(&self) -> u16 {
        self.selector
    }

    /// The number of named files.
    pub fn file_count(&self) -> usize {
        usize::from(self.files)
    }

    fn insert(&mut self, item: Item<'a>) -> Result<(), FwCfgError> {
        let slot = self
            .items
            .iter_mut()
            .find(|slot| slot.is_none())
            .ok_or(FwCfgError::Full)?;
        *slot = Some(item);
        Ok(())
    }

    /// The named files in selector order.
    fn files(&self) -> impl Iterator<Item = &Item<'a>> {
        // Files are only ever appended, so slot order is selector order.
        self.items
            .iter()
            .flatten()
            .filter(|item| item.name.is_some())
    }

    /// Byte `offset` of item `key`, or `None` past its end / for an unknown key.
    fn item_byte(&self, key: u16, offset: u32) -> Option<u8> {
        let offset = usize::try_from(offset).ok()?;
        match key {
            key::SIGNATURE => b"QEMU".get(offset).copied(),
            key::ID => ID_TRADITIONAL.to_le_bytes().get(offset).copied(),
            key::RAM_SIZE => self.ram_size.to_le_bytes().get(offset).copied(),
            key::NB_CPUS => self.nb_cpus.to_le_bytes().get(offset).copied(),
            key::MAX_CPUS => self.max_cpus.to_le_bytes().get(offset).copied(),
            key::FILE_DIR => self.directory_byte(offset),
            _ => self
                .items
                .iter()
                .flatten()
                .find(|item| item.key == key)
                .and_then(|item| item.data.get(offset).copied()),
        }
    }

    /// Byte `offset` of the file directory, generated on the fly: a big-endian u32
    /// count, then per file a big-endian u32 size, big-endian u16 selector, u16
    /// reserved and the NUL-padded 56-byte name.
    fn directory_byte(&self, offset: usize) -> Option<u8> {
        if offset < 4 {
            return Some(u32::from(self.files).to_be_bytes()[offset]);
        }
        let index = (offset - 4) / FILE_ENTRY_SIZE;
        let within = (offset - 4) % FILE_ENTRY_SIZE;
        let file = self.files().nth(index)?;
        Some(match within {
            0..=3 => (file.data.len() as u32).to_be_bytes()[within],
            4..=5 => file.key.to_be_bytes()[within - 4],
            6..=7 => 0,
            _ => file.name.unwrap_or([0; FW_CFG_MAX_FILE_PATH])[within - 8],
        })
    }
}

impl<const N: usize> FwCfg<'_, N> {
    /// The tag of [`Self::state`] (see [`crate::state`]).
    pub const STATE_TAG: Tag = *b"fw_cfg  ";
    /// Bumped whenever the field list changes.
    pub const STATE_VERSION: u16 = 1;

    /// The selector and the data offset into the selected item, in the format of
    /// [`crate::state`]. The items come from the VM's configuration, so they are
    /// not in it: the RAM size, the CPU counts and a fingerprint of the added items
    /// (keys, names and contents) are stored to be compared.
    pub fn state(&self) -> Vec<u8> {
        let mut w = Writer::new(&Self::STATE_TAG, Self::STATE_VERSION);
        w.u64(self.ram_size);
        w.u16(self.nb_cpus);
        w.u16(self.max_cpus);
        w.u64(self.items_fingerprint());
        w.u16(self.selector);
        w.u32(self.offset);
        w.finish()
    }

    /// Takes back what [`Self::state`] returned, for a device with the same RAM
    /// size, CPU counts and items; nothing changes on an error.
    pub fn restore(&mut self, data: &[u8]) -> Result<(), StateError> {
        let mut r = Reader::new(data, &Self::STATE_TAG, Self::STATE_VERSION)?;
        r.expect_u64("RAM size (bytes)", self.ram_size)?;
        let cpus = r.u16()?;
        r.expect("CPU count", cpus.into(), self.nb_cpus.into())?;
        let max_cpus = r.u16()?;
        r.expect("maximum CPU count", max_cpus.into(), self.max_cpus.into())?;
        let fingerprint = r.u64()?;
        r.expect(
            "fingerprint of the fw_cfg files and items",
            fingerprint,
            self.items_fingerprint(),
        )?;
        let selector = r.u16()?;
        let offset = r.u32()?;
        r.end()?;
        // Reads stop advancing at an item's end; nothing else moves the offset.
        let len = self.item_len(selector & !key::WRITE_CHANNEL).unwrap_or(0);
        r.check(
            usize::try_from(offset).is_ok_and(|o| o <= len),
            "data offset (past the selected item's end)",
        )?;
        self.selector = selector;
        self.offset = offset;
        Ok(())
    }

    /// The length of item `key`, `None` for a key with no item.
    fn item_len(&self, key: u16) -> Option<usize> {
        Some(match key {
            key::SIGNATURE | key::ID => 4,
            key::RAM_SIZE => 8,
            key::NB_CPUS | key::MAX_CPUS => 2,
            key::FILE_DIR => 4 + FILE_ENTRY_SIZE * usize::from(self.files),
            _ => self
                .items
                .iter()
                .flatten()
                .find(|item| item.key == key)?
                .data
                .len(),
        })
    }

    /// What a snapshot compares the added items by: each one's key, name and
    /// contents, in table order.
    fn items_fingerprint(&self) -> u64 {
        let mut f = Fingerprint::new();
        for item in self.items.iter().flatten() {
            f.add(&item.key.to_le_bytes());
            f.add(&[u8::from(item.name.is_some())]);
            f.add(&item.name.unwrap_or([0; FW_CFG_MAX_FILE_PATH]));
            f.add(&(item.data.len() as u64).to_le_bytes());
            f.add(item.data);
        }
        f.finish()
    }
}

impl<const N: usize> PortDevice for FwCfg<'_, N> {
    fn read(&mut self, offset: u16, size: u8) -> u32 {
        // QEMU accepts only byte reads of the pair, and both ports read data.
        if size == 1 && offset < FW_CFG_PORT_COUNT {
            u32::from(self.read_data())
        } else {
            all_ones(size)
        }
    }

    fn write(&mut self, offset: u16, size: u8, value: u32) {
        // Only a 16-bit write selects; byte writes are data writes, ignored.
        if size == 2 && offset == 0 {
            self.select(value as u16);
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::String;
    use std::vec::Vec;

    /// A guest's view: select with `outw`, read `len` bytes with `inb`.
    fn read_item<const N: usize>(dev: &mut FwCfg<'_, N>, key: u16, len: usize) -> Vec<u8> {
        dev.write(0, 2, u32::from(key));
        (0..len).map(|_| dev.read(1, 1) as u8).collect()
    }

    #[test]
    fn signature_and_id() {
        let mut dev: FwCfg<'_, 4> = FwCfg::new(0, 1);
        assert_eq!(read_item(&mut dev, key::SIGNATURE, 6), b"QEMU\0\0");
        let id = read_item(&mut dev, key::ID, 4);
        assert_eq!(u32::from_le_bytes(id.try_into().unwrap()), 1);
        // The write-channel bit does not change what is read.
        assert_eq!(read_item(&mut dev, key::WRITE_CHANNEL, 4), b"QEMU");
        // A byte read at the selector port reads data too.
        dev.write(0, 2, 0);
        assert_eq!(dev.read(0, 1), u32::from(b'Q'));
        assert_eq!(dev.read(1, 1), u32::from(b'E'));
        // Wide reads are not part of the interface and have no effect.
        assert_eq!(dev.read(1, 2), 0xFFFF);
        assert_eq!(dev.read(1, 1), u32::from(b'M'));
        // Byte writes (data writes) are ignored, selection stays.
        dev.write(1, 1, 0x55);
        dev.write(0, 1, 0x01);
        assert_eq!(dev.read(1, 1), u32::from(b'U'));
        assert_eq!(dev.selector(), 0);
    }

    #[test]
    fn ram_size_and_cpus() {
        let mut dev: FwCfg<'_, 1> = FwCfg::new(0x1_2345_6000, 2);
        let ram = read_item(&mut dev, key::RAM_SIZE, 8);
        assert_eq!(u64::from_le_bytes(ram.try_into().unwrap()), 0x1_2345_6000);
        assert_eq!(read_item(&mut dev, key::NB_CPUS, 3), [2, 0, 0]);
        dev.set_max_cpus(8);
        assert_eq!(read_item(&mut dev, key::MAX_CPUS, 2), [8, 0]);
        // Unknown keys read as zeros.
        assert_eq!(read_item(&mut dev, key::UUID, 4), [0; 4]);
        assert_eq!(read_item(&mut dev, 0x8003, 4), [0; 4]);
    }

    /// Parses the directory the way SeaBIOS/OVMF do.
    fn parse_directory<const N: usize>(dev: &mut FwCfg<'_, N>) -> Vec<(String, u32, u16)> {
        dev.write(0, 2, u32::from(key::FILE_DIR));
        let mut next = |n: usize| (0..n).map(|_| dev.read(1, 1) as u8).collect::<Vec<u8>>();
        let count = u32::from_be_bytes(next(4).try_into().unwrap());
        (0..count)
            .map(|_| {
                let size = u32::from_be_bytes(next(4).try_into().unwrap());
                let select = u16::from_be_bytes(next(2).try_into().unwrap());
                assert_eq!(next(2), [0, 0]);
                let name = next(FW_CFG_MAX_FILE_PATH);
                let len = name.iter().position(|&b| b == 0).unwrap();
                (
                    String::from_utf8(name[..len].to_vec()).unwrap(),
                    size,
                    select,
                )
            })
            .collect()
    }

    #[test]
    fn file_directory_round_trip() {
        static E820: [u8; 20] = [7; 20];
        let owned: Vec<u8> = (0..=255u8).collect();
        let mut dev: FwCfg<'_, 4> = FwCfg::new(64 << 20, 1);
        assert!(parse_directory(&mut dev).is_empty());
        assert_eq!(dev.add_file("etc/e820", &E820), Ok(0x20));
        assert_eq!(dev.add_file("opt/org.example/blob", &owned), Ok(0x21));
        dev.add_item(key::KERNEL_CMDLINE, b"console=ttyS0\0")
            .unwrap();
        let longest = "a".repeat(FW_CFG_MAX_FILE_PATH - 1);
        assert_eq!(dev.add_file(&longest, b""), Ok(0x22));
        assert_eq!(dev.file_count(), 3);
        assert_eq!(
            parse_directory(&mut dev),
            [
                (String::from("etc/e820"), 20, 0x20),
                (String::from("opt/org.example/blob"), 256, 0x21),
                (longest.clone(), 0, 0x22),
            ]
        );
        // Past the directory's end: zeros.
        let len = 4 + 3 * FILE_ENTRY_SIZE;
        assert!(read_item(&mut dev, key::FILE_DIR, len + 8)[len..]
            .iter()
            .all(|&b| b == 0));
        // File contents by selector, zeros past the end.
        assert_eq!(
            read_item(&mut dev, 0x20, 22),
            [[7; 20].as_slice(), &[0, 0]].concat()
        );
        assert_eq!(read_item(&mut dev, 0x21, 256), owned);
        assert_eq!(read_item(&mut dev, 0x22, 2), [0, 0]);
        assert_eq!(
            read_item(&mut dev, key::KERNEL_CMDLINE, 14),
            b"console=ttyS0\0"
        );
        // Reselecting rewinds.
        assert_eq!(read_item(&mut dev, 0x21, 3), [0, 1, 2]);
    }

    #[test]
    fn add_errors() {
        let mut dev: FwCfg<'_, 2> = FwCfg::new(0, 1);
        let long = "b".repeat(FW_CFG_MAX_FILE_PATH);
        assert_eq!(dev.add_file(&long, b""), Err(FwCfgError::BadName));
        assert_eq!(dev.add_file("", b""), Err(FwCfgError::BadName));
        assert_eq!(dev.add_file("a\0b", b""), Err(FwCfgError::BadName));
        assert_eq!(dev.add_item(key::RAM_SIZE, b""), Err(FwCfgError::BadKey));
        assert_eq!(dev.add_item(0x20, b""), Err(FwCfgError::BadKey));
        assert_eq!(dev.add_item(0x4009, b""), Err(FwCfgError::BadKey));
        dev.add_item(0x8003, b"x").unwrap();
        assert_eq!(dev.add_item(0x8003, b"y"), Err(FwCfgError::BadKey));
        dev.add_file("etc/x", b"").unwrap();
        assert_eq!(dev.add_file("etc/x", b""), Err(FwCfgError::DuplicateName));
        assert_eq!(dev.add_file("etc/y", b""), Err(FwCfgError::Full));
        assert_eq!(dev.file_count(), 1);
        assert_eq!(read_item(&mut dev, 0x8003, 2), b"x\0");
    }

    impl crate::state::testing::Snap for FwCfg<'_, 4> {
        fn snap(&self) -> Vec<u8> {
            self.state()
        }
        fn load(&mut self, data: &[u8]) -> Result<(), crate::StateError> {
            self.restore(data)
        }
    }

    const CMDLINE: &[u8] = b"console=ttyS0 quiet\0";
    const E820: [u8; 40] = [0x5A; 40];

    fn configured() -> FwCfg<'static, 4> {
        let mut dev: FwCfg<'static, 4> = FwCfg::new(256 << 20, 2);
        dev.add_file("etc/e820", &E820).unwrap();
        dev.add_item(key::CMDLINE_DATA, CMDLINE).unwrap();
        dev
    }

    #[test]
    fn snapshot_resumes_a_read_half_way() {
        let mut a = configured();
        a.write(0, 2, u32::from(key::CMDLINE_DATA));
        assert_eq!(a.read(1, 1), u32::from(b'c'));
        let snap = a.state();
        assert_eq!(&snap[..8], b"fw_cfg  ");
        let mut b = configured();
        b.restore(&snap).unwrap();
        assert_eq!(b.selector(), key::CMDLINE_DATA);
        for _ in 0..CMDLINE.len() + 3 {
            assert_eq!(b.read(1, 1), a.read(1, 1));
        }
        assert_eq!(a.state(), b.state());
        // At the end of the directory too.
        let dir = read_item(&mut a, key::FILE_DIR, 200);
        assert_eq!(dir.len(), 200);
        b.restore(&a.state()).unwrap();
        assert_eq!(b.read(1, 1), 0);
    }

    #[test]
    fn snapshot_of_another_configuration_is_refused() {
        let mut a = configured();
        a.write(0, 2, u32::from(key::FILE_FIRST));
        a.read(1, 1);
        let snap = a.state();
        let what = |mut dev: FwCfg<'static, 4>| match dev.restore(&snap) {
            Err(crate::StateError::Mismatch { what, .. }) => what,
            r => panic!("{r:?}"),
        };
        assert_eq!(what(FwCfg::new(128 << 20, 2)), "RAM size (bytes)");
        let mut more = configured();
        more.set_max_cpus(4);
        assert_eq!(what(more), "maximum CPU count");
        assert_eq!(what(FwCfg::new(256 << 20, 1)), "CPU count");
        // Same name, other contents: another VM's files.
        let mut other: FwCfg<'static, 4> = FwCfg::new(256 << 20, 2);
        other.add_file("etc/e820", &[0x5B; 40]).unwrap();
        other.add_item(key::CMDLINE_DATA, CMDLINE).unwrap();
        assert_eq!(what(other), "fingerprint of the fw_cfg files and items");
        assert_eq!(
            what(FwCfg::new(256 << 20, 2)),
            "fingerprint of the fw_cfg files and items"
        );
    }

    #[test]
    fn snapshot_refusals_and_corruption() {
        let mut a = configured();
        a.write(0, 2, u32::from(key::FILE_FIRST));
        for _ in 0..7 {
            a.read(1, 1);
        }
        let snap = a.state();
        crate::state::testing::check_refusals(&mut configured(), &snap, |d| {
            for _ in 0..50 {
                d.read(1, 1);
            }
            d.write(0, 2, 0x19);
            d.read(1, 1);
        });
        // An offset past the item's end.
        let mut bad = snap.clone();
        let at = bad.len() - 4;
        bad[at..].copy_from_slice(&41u32.to_le_bytes());
        assert!(matches!(
            configured().restore(&bad),
            Err(crate::StateError::Invalid { what, .. }) if what.contains("offset")
        ));
        bad[at..].copy_from_slice(&40u32.to_le_bytes());
        assert_eq!(configured().restore(&bad), Ok(()));
    }
}
