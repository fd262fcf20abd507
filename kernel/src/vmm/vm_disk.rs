//! Opening a VM's persistent disk: the GPT partition its configuration names, on the
//! machine's disk that every VM's partitions share, decrypted when it is encrypted.
//!
//! [`open_partition`] is generic over the shared device (the NVMe drive in the
//! kernel, a RAM disk in tests) and runs when the VM is first started, never again
//! for its restarts: the result is a [`SharedBackend`] that the VM's virtio-blk
//! device model uses and that a restart reuses, so a passphrase is asked for once
//! and an unlocked key is not derived again.
//!
//! Isolation rests on three checks here, beside xtask's on the configuration:
//! * the partition is found by its exact GPT name, from a table whose CRCs are
//!   valid (`gptdisk`), and lies inside the device;
//! * the guest sees only that window ([`virtio::Partition`]): a request past its
//!   end is an I/O error, never a neighbour's sector;
//! * no two VMs hold the same partition unless both only read it ([`Claims`]).
//!
//! An encrypted partition is opened only with the right passphrase: its header is
//! read and checked, the key unwrapped (Argon2id, then AES key wrap whose integrity
//! check fails under a wrong key), and nothing is written on any failure.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use spin::Mutex;
use virtio::cow::{Budget, CloneDisk, RollBackError, Tracked, UndoRecord};
use virtio::{BlockBackend, BlockError, Partition};

/// A disk several owners (a VM's successive platforms, a clone) share, each access
/// under its lock.
pub struct Shared<T>(Arc<Mutex<T>>);

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T: BlockBackend> BlockBackend for Shared<T> {
    fn sectors(&self) -> u64 {
        self.0.lock().sectors()
    }
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        self.0.lock().read(sector, buf)
    }
    fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), BlockError> {
        self.0.lock().write(sector, data)
    }
    fn flush(&mut self) -> Result<(), BlockError> {
        self.0.lock().flush()
    }
}

/// A VM's disk, tracked for snapshots (`virtio::cow`: a snapshot keeps the old
/// contents of the blocks written after it).
pub type SharedBackend = Shared<Tracked<Box<dyn BlockBackend>>>;

/// A clone's disk view.
pub type SharedView = Shared<CloneDisk<Box<dyn BlockBackend>>>;

impl SharedBackend {
    pub fn new(backend: Box<dyn BlockBackend>) -> Self {
        Self(Arc::new(Mutex::new(Tracked::new(backend))))
    }

    /// Whether both are the same disk (not only the same partition reopened).
    pub fn same(&self, other: &SharedBackend) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Starts keeping, for a snapshot taken now, the old contents of what is
    /// written from now on (at most `limit_bytes`).
    pub fn track(&self, limit_bytes: u64, budget: &Budget) -> UndoRecord {
        self.0.lock().track(limit_bytes, budget)
    }

    /// Puts the disk back as it was when `record` began.
    pub fn roll_back(&self, record: &UndoRecord) -> Result<u64, RollBackError> {
        self.0.lock().roll_back(record)
    }

    /// A clone's disk: this one as `record` keeps it, the clone's writes in at most
    /// `limit_bytes` of memory.
    pub fn clone_view(&self, record: UndoRecord, limit_bytes: u64, budget: &Budget) -> SharedView {
        Shared(Arc::new(Mutex::new(CloneDisk::new(
            self.0.clone(),
            record,
            limit_bytes,
            budget.clone(),
        ))))
    }
}

/// Which VM holds which sectors of the shared device, and how.
#[derive(Default)]
pub struct Claims {
    held: Vec<(String, core::ops::Range<u64>, bool)>,
}

impl Claims {
    pub const fn new() -> Self {
        Self { held: Vec::new() }
    }

    /// Records that `vm` holds `sectors` (writable or not); refused when it overlaps
    /// a range another VM holds and either of them may write.
    pub fn claim(
        &mut self,
        vm: &str,
        sectors: core::ops::Range<u64>,
        writable: bool,
    ) -> Result<(), String> {
        for (owner, range, w) in &self.held {
            let overlaps = range.start < sectors.end && sectors.start < range.end;
            if overlaps && owner != vm && (writable || *w) {
                return Err(format!(
                    "its partition is already in use by VM {owner}{}",
                    if *w { " (writable)" } else { "" }
                ));
            }
        }
        self.held.push((String::from(vm), sectors, writable));
        Ok(())
    }

    /// Forgets what `vm` holds (it is gone for good).
    pub fn release(&mut self, vm: &str) {
        self.held.retain(|(owner, _, _)| owner != vm);
    }
}

/// What [`open_partition`] needs to unlock an encrypted partition: the passphrase
/// (from the bundle's key file, or typed on the console) and Argon2's working memory
/// for the parameters the header asks for.
pub trait Unlocker {
    /// The passphrase for `vm`'s partition `partition`; the caller wipes it.
    fn passphrase(&mut self, vm: &str, partition: &str) -> Result<Vec<u8>, String>;
    /// Unlocks `header` with `passphrase` (Argon2id in memory the implementation
    /// provides and returns); the error is a sentence.
    fn unlock(
        &mut self,
        header: &diskcrypt::Header,
        passphrase: &[u8],
    ) -> Result<diskcrypt::MasterKey, String>;
    /// The cipher for a partition unlocked with `key` (the kernel's may use AES-NI).
    fn cipher(&self, key: &diskcrypt::MasterKey) -> diskcrypt::SectorCipher {
        diskcrypt::SectorCipher::new(key)
    }
}

/// The opened disk and where it lies on the device (for the boot log).
#[derive(Clone)]
pub struct Opened {
    pub backend: SharedBackend,
    /// The partition's sectors on the device.
    pub sectors: core::ops::Range<u64>,
    /// What the guest sees, in 512-byte sectors (less than the partition when the
    /// encryption header takes its start).
    pub guest_sectors: u64,
}

/// Opens `vm`'s partition `spec` on the shared `device`: finds it in the GPT,
/// claims it, and for an encrypted one unlocks it through `unlocker`. Every failure
/// is a sentence for the VM's "not started" report, and leaves the device and the
/// claims as they were.
pub fn open_partition<D: BlockBackend + 'static>(
    device: &Arc<Mutex<D>>,
    vm: &str,
    spec: &bundle::PartitionDisk,
    claims: &mut Claims,
    unlocker: &mut dyn Unlocker,
) -> Result<Opened, String> {
    let name = spec.name;
    let range = find_partition(&mut *device.lock(), name)?;
    let window = Partition::new(device.clone(), range.start, range.end - range.start)
        .ok_or_else(|| format!("partition \"{name}\" does not lie inside the disk"))?;
    if !spec.encrypted {
        claims.claim(vm, range.clone(), !spec.read_only)?;
        return Ok(Opened {
            guest_sectors: window.sectors(),
            backend: SharedBackend::new(Box::new(window)),
            sectors: range,
        });
    }
    let mut window = window;
    let mut raw = vec![0u8; diskcrypt::HEADER_LEN];
    window
        .read(0, &mut raw)
        .map_err(|e| format!("partition \"{name}\": cannot read its encryption header: {e:?}"))?;
    let header = diskcrypt::Header::parse(&raw)
        .map_err(|e| format!("partition \"{name}\" is marked encrypted but: {e}"))?;
    // Claimed before asking for a passphrase: a second VM on the same partition
    // is refused without making anyone type.
    claims.claim(vm, range.clone(), !spec.read_only)?;
    let opened = (|| {
        let mut passphrase = unlocker.passphrase(vm, name)?;
        let key = unlocker.unlock(&header, &passphrase);
        crate::secret_line::wipe(&mut passphrase);
        let key = key.map_err(|e| format!("partition \"{name}\": {e}"))?;
        let backend =
            diskcrypt::EncryptedBackend::with_cipher(window, &header, unlocker.cipher(&key))
                .map_err(|e| format!("partition \"{name}\": {e}"))?;
        Ok(Opened {
            guest_sectors: backend.sectors(),
            backend: SharedBackend::new(Box::new(backend)),
            sectors: range.clone(),
        })
    })();
    if opened.is_err() {
        claims.release(vm);
    }
    opened
}

/// The sectors of the GPT partition named `name` on `device`; every failure is a
/// sentence (the VM's "not started" report, the boot's bundle error).
pub fn find_partition<D: BlockBackend + ?Sized>(
    device: &mut D,
    name: &str,
) -> Result<core::ops::Range<u64>, String> {
    let sectors = device.sectors();
    let mut read = |lba: u64, buf: &mut [u8; 512]| device.read(lba, buf);
    gptdisk::find_partition(&mut read, sectors, name)
        .map(|p| p.lbas)
        .map_err(|e| match e {
            gptdisk::Error::NotFound => {
                format!("the machine's disk has no partition named \"{name}\"")
            }
            e => format!("partition \"{name}\": {}", lookup_error(&e)),
        })
}

fn lookup_error<E: core::fmt::Debug>(e: &gptdisk::Error<E>) -> String {
    match e {
        gptdisk::Error::Read { lba, error } => format!("reading LBA {lba} failed: {error:?}"),
        gptdisk::Error::DiskTooSmall { sectors } => {
            format!("a disk of {sectors} sectors cannot hold a GPT")
        }
        gptdisk::Error::NotGpt => String::from("the machine's disk has no GPT"),
        gptdisk::Error::NoValidTable { primary, backup } => {
            format!("no valid GPT (primary: {primary}; backup: {backup})")
        }
        gptdisk::Error::BadName => String::from("not a valid GPT partition name"),
        gptdisk::Error::NotFound => String::from("no partition of that name"),
        gptdisk::Error::Ambiguous { first, second } => {
            format!("GPT entries {first} and {second} have the same name")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::string::ToString;
    use virtio::RamDisk;

    const PASS: &[u8] = b"correct horse";

    /// A GPT disk image with partitions "a" (1 MiB, plain), "sec" (1 MiB, encrypted
    /// under PASS) and "b" (1 MiB), written by gptdisk's writer as xtask does.
    fn device() -> Arc<Mutex<RamDisk>> {
        let dir = std::env::temp_dir().join(format!("hv-vm-disk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{:?}.img", std::thread::current().id()));
        let spec = |name: &str| gptdisk::image::PartSpec {
            name: name.into(),
            bytes: 1 << 20,
            contents: None,
        };
        let report =
            gptdisk::image::create(&path, 8 << 20, &[spec("a"), spec("sec"), spec("b")]).unwrap();
        let mut bytes = Vec::new();
        std::fs::File::open(&path)
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        let sec = report
            .partitions
            .iter()
            .find(|p| p.name == "sec")
            .unwrap()
            .lbas
            .clone();
        let random: [u8; diskcrypt::RANDOM_LEN] =
            core::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0x5A);
        let plain = vec![0u8; (1 << 20) - diskcrypt::HEADER_LEN];
        let image = diskcrypt::encrypt_image(
            PASS,
            diskcrypt::KdfParams {
                memory_kib: 64,
                iterations: 1,
                lanes: 1,
            },
            &random,
            &plain,
        )
        .unwrap();
        let at = sec.start as usize * 512;
        bytes[at..at + image.len()].copy_from_slice(&image);
        Arc::new(Mutex::new(RamDisk::new(bytes)))
    }

    struct Typed(&'static [u8], usize);

    impl Unlocker for Typed {
        fn passphrase(&mut self, _: &str, _: &str) -> Result<Vec<u8>, String> {
            self.1 += 1;
            Ok(self.0.to_vec())
        }
        fn unlock(
            &mut self,
            header: &diskcrypt::Header,
            passphrase: &[u8],
        ) -> Result<diskcrypt::MasterKey, String> {
            header.unlock_alloc(passphrase).map_err(|e| e.to_string())
        }
    }

    fn plain(name: &'static str, read_only: bool) -> bundle::PartitionDisk<'static> {
        bundle::PartitionDisk {
            name,
            read_only,
            encrypted: false,
            key: b"",
        }
    }

    #[test]
    fn a_plain_partition_is_its_window_of_the_disk() {
        let dev = device();
        let mut claims = Claims::default();
        let mut opened = open_partition(
            &dev,
            "vm1",
            &plain("b", false),
            &mut claims,
            &mut Typed(PASS, 0),
        )
        .unwrap();
        assert_eq!(opened.guest_sectors, 2048);
        assert_eq!(opened.sectors.end - opened.sectors.start, 2048);
        opened.backend.write(2047, &[0xAB; 512]).unwrap();
        assert_eq!(
            opened.backend.write(2048, &[0xAB; 512]),
            Err(BlockError::OutOfRange)
        );
        let at = (opened.sectors.end - 1) as usize * 512;
        assert!(dev.lock().as_slice()[at..at + 512]
            .iter()
            .all(|&x| x == 0xAB));
        // A clone (the VM's restart) sees the same disk.
        let mut again = opened.backend.clone();
        let mut buf = [0u8; 512];
        again.read(2047, &mut buf).unwrap();
        assert_eq!(buf, [0xAB; 512]);
    }

    #[test]
    fn missing_names_and_shared_writable_partitions_are_refused() {
        let dev = device();
        let mut claims = Claims::default();
        let mut typed = Typed(PASS, 0);
        let e = open_partition(&dev, "vm1", &plain("nope", false), &mut claims, &mut typed)
            .err()
            .unwrap();
        assert_eq!(e, "the machine's disk has no partition named \"nope\"");
        open_partition(&dev, "vm1", &plain("a", false), &mut claims, &mut typed).unwrap();
        let e = open_partition(&dev, "vm2", &plain("a", true), &mut claims, &mut typed)
            .err()
            .unwrap();
        assert!(e.contains("already in use by VM vm1"), "{e}");
        // Two readers may share one.
        open_partition(&dev, "vm3", &plain("b", true), &mut claims, &mut typed).unwrap();
        open_partition(&dev, "vm4", &plain("b", true), &mut claims, &mut typed).unwrap();
        // A disk without a GPT.
        let blank = Arc::new(Mutex::new(RamDisk::zeroed(4096)));
        let e = open_partition(&blank, "vm5", &plain("a", false), &mut claims, &mut typed)
            .err()
            .unwrap();
        assert!(e.contains("has no GPT"), "{e}");
    }

    #[test]
    fn an_encrypted_partition_opens_with_its_passphrase_only() {
        let dev = device();
        let before = dev.lock().as_slice().to_vec();
        let spec = bundle::PartitionDisk {
            name: "sec",
            read_only: false,
            encrypted: true,
            key: b"",
        };
        let mut claims = Claims::default();
        let mut wrong = Typed(b"wrong", 0);
        let e = open_partition(&dev, "vm1", &spec, &mut claims, &mut wrong)
            .err()
            .unwrap();
        assert!(e.contains("wrong passphrase"), "{e}");
        assert_eq!(wrong.1, 1);
        assert_eq!(
            dev.lock().as_slice(),
            &before[..],
            "a refusal writes nothing"
        );
        // The refused VM released its claim; the right passphrase opens it.
        let mut right = Typed(PASS, 0);
        let mut opened = open_partition(&dev, "vm2", &spec, &mut claims, &mut right).unwrap();
        assert_eq!(opened.guest_sectors, 2048 - 8);
        opened.backend.write(0, &[b'M'; 512]).unwrap();
        let mut buf = [0u8; 512];
        opened.backend.read(0, &mut buf).unwrap();
        assert_eq!(buf, [b'M'; 512]);
        let on_disk = dev.lock().as_slice().to_vec();
        assert!(!on_disk.windows(512).any(|w| w == [b'M'; 512]));
        // A plain partition marked encrypted is refused for its missing header.
        let spec = bundle::PartitionDisk { name: "a", ..spec };
        let e = open_partition(&dev, "vm3", &spec, &mut claims, &mut right)
            .err()
            .unwrap();
        assert!(e.contains("marked encrypted but"), "{e}");
    }
}
