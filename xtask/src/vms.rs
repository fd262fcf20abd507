//! The VM sets that xtask bundles into the kernel's ramdisk: the demo set that
//! `cargo xtask run` boots, the sets the integration tests boot, and sets described
//! by a TOML file (see `config.rs`).

use std::path::{Path, PathBuf};

pub use bundle::ImageFormat;

use crate::guests::{self, GuestImage};

/// A module handed to a guest with its image (Multiboot module; for Linux, module 0
/// is the initrd).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleDef {
    pub path: PathBuf,
    /// The module's string (Multiboot's per-module command line); empty for an initrd.
    pub cmdline: String,
}

/// A VM's RAM-backed virtio-blk disk: its initial contents come from `path` (packed
/// into the bundle), and what the guest writes is gone when the VM stops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskDef {
    pub path: PathBuf,
    pub read_only: bool,
}

/// A VM's disk that is a partition of the persistent disk (`[storage]`): the
/// kernel finds it by name on the NVMe disk xtask attaches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionUse {
    /// The partition's GPT name.
    pub name: String,
    pub read_only: bool,
    /// The partition carries a `diskcrypt` header (from its `[[storage.partition]]`).
    pub encrypted: bool,
    /// The passphrase file, packed into the bundle (encrypted partitions only).
    pub key_file: Option<PathBuf>,
}

/// A VM's virtio-net NIC: a port on the named network of the hypervisor's virtual
/// switch (`nics = [ { network = "lan" } ]`). The NICs of a VM are its PCI devices
/// 00:04.0 onwards, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NicDef {
    pub network: String,
    /// As configured, or derived from the VM's name ([`virtio::net::mac_from_name`]).
    pub mac: [u8; 6],
    /// The port's rate limit from its `[[network]]` (0: none) ...
    pub rate_mbit: u32,
    /// ... and burst (0 without a rate).
    pub burst_kib: u32,
}

impl NicDef {
    /// NIC `index` of VM `vm` on `network`: the MAC derived from the VM's name, no
    /// rate limit.
    pub fn on(network: &str, vm: &str, index: u16) -> Self {
        Self {
            network: network.into(),
            mac: virtio::net::mac_from_name(vm, index),
            rate_mbit: 0,
            burst_kib: 0,
        }
    }
}

/// One partition of the persistent disk, as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoragePartition {
    /// Its GPT name: 1 to 36 UTF-16 units.
    pub name: String,
    /// Its size in bytes: a whole number of MiB.
    pub bytes: u64,
    /// Written at its start when the partition is created, never later.
    pub contents: Option<PathBuf>,
    pub encrypted: bool,
    pub key_file: Option<PathBuf>,
}

/// The persistent disk (`[storage]`): a GPT disk image kept between runs and
/// attached to QEMU as an NVMe disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageDef {
    /// The image file; `None`: `target/hv/disks/<config file stem>.img`.
    pub image: Option<PathBuf>,
    /// The config file's stem, for the default image name.
    pub config_stem: String,
    /// The disk's size in bytes: a whole number of MiB.
    pub bytes: u64,
    pub partitions: Vec<StoragePartition>,
}

impl StorageDef {
    /// The image file, given the target directory for the default.
    pub fn image_path(&self, target_dir: &Path) -> PathBuf {
        self.image.clone().unwrap_or_else(|| {
            target_dir
                .join("hv")
                .join("disks")
                .join(format!("{}.img", self.config_stem))
        })
    }

    /// The partitions as the GPT writer takes them.
    pub fn specs(&self) -> Vec<gptdisk::image::PartSpec> {
        self.partitions
            .iter()
            .map(|p| gptdisk::image::PartSpec {
                name: p.name.clone(),
                bytes: p.bytes,
                contents: p.contents.clone(),
            })
            .collect()
    }
}

/// The management console (`[console]`): the administrator's passphrase file and
/// the Argon2id cost of the hash of it that the bundle carries (see `admin.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleDef {
    /// Its contents without one trailing newline are the passphrase.
    pub admin_passphrase_file: PathBuf,
    /// Argon2id memory, in KiB (`admin_kdf_memory`).
    pub kdf_memory_kib: u32,
    /// Argon2id passes (`admin_kdf_passes`).
    pub kdf_passes: u32,
}

impl ConsoleDef {
    /// The passphrase in `file`, hashed at the default cost (19 MiB, 2 passes).
    pub fn new(file: impl Into<PathBuf>) -> Self {
        Self {
            admin_passphrase_file: file.into(),
            kdf_memory_kib: crate::admin::DEFAULT_MEMORY_KIB,
            kdf_passes: crate::admin::DEFAULT_PASSES,
        }
    }
}

/// The management network (`[management]`): the hypervisor's station on a
/// declared network, its address and prefix, the syslog collector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagementDef {
    pub network: String,
    pub address: [u8; 4],
    pub prefix: u8,
    pub syslog: Option<([u8; 4], u16)>,
}

/// What the bundle's machine record carries: the console's credential (hashed
/// when packed) and the management network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MachineDef {
    pub console: Option<ConsoleDef>,
    pub management: Option<ManagementDef>,
}

impl MachineDef {
    /// Nothing to carry: no machine record settings.
    pub fn is_empty(&self) -> bool {
        self.console.is_none() && self.management.is_none()
    }
}

/// A configuration file's contents: the VMs, the persistent disk, the console and
/// the management network, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub vms: Vec<VmDef>,
    pub storage: Option<StorageDef>,
    pub console: Option<ConsoleDef>,
    pub management: Option<ManagementDef>,
}

impl Config {
    /// The machine-wide settings.
    pub fn machine(&self) -> MachineDef {
        MachineDef {
            console: self.console.clone(),
            management: self.management.clone(),
        }
    }
}

/// One VM of a set, before bundling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmDef {
    pub name: String,
    pub image: PathBuf,
    /// The image's path as the user named it (the config's `kernel` string,
    /// `--kernel`): a Multiboot kernel's command line starts with it, as under
    /// QEMU. [`VmDef::new`] takes `image` as given.
    pub image_path: String,
    pub memory_kib: u32,
    pub run_limit_ms: u32,
    pub background: bool,
    /// May use the benchmark hypercalls (the bare CPUID loop of `bench64`).
    pub bench_hypercalls: bool,
    /// A reset request restarts the VM (default) or stops it.
    pub on_reset: bundle::Policy,
    /// A crash (triple fault) stops the VM (default) or restarts it.
    pub on_crash: bundle::Policy,
    /// An access to unbacked guest-physical space stops the VM (`on_unmapped =
    /// "stop"`); by default it reads all ones and writes vanish.
    pub unmapped_stops: bool,
    /// A virtio-balloon device (`balloon = true`).
    pub balloon: bool,
    /// How the kernel loads `image`. Sets read from a config file carry the format
    /// detected on the host, never `Auto`.
    pub format: ImageFormat,
    pub cmdline: String,
    /// Virtual processors, 1 to `bundle::MAX_VCPUS`.
    pub vcpus: u32,
    /// The host processors its vCPUs may run on (the config's `cpus`); empty: any.
    pub cpus: Vec<u32>,
    pub modules: Vec<ModuleDef>,
    /// A RAM-backed virtio-blk disk (the config's `disk`).
    pub disk: Option<DiskDef>,
    /// Or a partition of the persistent disk (`disk = { partition = "..." }`).
    pub partition: Option<PartitionUse>,
    /// Its NICs (`nics`), at most `bundle::NICS_MAX`.
    pub nics: Vec<NicDef>,
}

impl VmDef {
    /// A VM with one vCPU, no command line and no modules, its format detected by the
    /// kernel.
    pub fn new(name: impl Into<String>, image: impl Into<PathBuf>, memory_kib: u32) -> Self {
        let image = image.into();
        Self {
            name: name.into(),
            image_path: image.display().to_string(),
            image,
            memory_kib,
            run_limit_ms: 0,
            background: false,
            bench_hypercalls: false,
            on_reset: bundle::Policy::Restart,
            on_crash: bundle::Policy::Stop,
            unmapped_stops: false,
            balloon: false,
            format: ImageFormat::Auto,
            cmdline: String::new(),
            vcpus: 1,
            cpus: Vec::new(),
            modules: Vec::new(),
            disk: None,
            partition: None,
            nics: Vec::new(),
        }
    }

    /// The same VM under another name.
    pub fn renamed(self, name: &str) -> Self {
        Self {
            name: name.into(),
            ..self
        }
    }

    /// [`VmDef::cpus`] as the bundle's affinity mask (0: any processor).
    pub fn affinity(&self) -> u64 {
        self.cpus
            .iter()
            .filter(|&&c| c < 64)
            .fold(0, |m, &c| m | 1 << c)
    }
}

/// The tiny test guests: one per CPU mode, the policy probes, and the hostile ones
/// (out-of-memory access, endless spin with interrupts off, triple fault). The spinner
/// runs in the background: it is stopped once all the others have finished, so it
/// shows that it cannot starve them, and the run still ends.
pub fn tiny_guests(images: &[GuestImage]) -> Vec<VmDef> {
    images
        .iter()
        .map(|g| VmDef {
            background: g.name == "spin64",
            // oob64 checks the strict policy: its write beyond RAM stops it.
            unmapped_stops: g.name == "oob64",
            format: ImageFormat::Tiny,
            ..VmDef::new(g.name.clone(), g.path.clone(), 4096)
        })
        .collect()
}

/// Room the hypervisor itself needs next to its guests (its image, page tables,
/// per-VM structures, firmware holes).
pub const HYPERVISOR_MIB: u32 = 96;

/// The machine memory for running `vms`, in MiB: `requested` when it is enough
/// (the guests' memory plus [`HYPERVISOR_MIB`]), otherwise that plus room for a
/// snapshot of the largest VM, at least `floor_mib` (the emulator's usual size). The same rule for QEMU and Bochs, so a configuration that
/// starts in one starts in the other.
pub fn machine_memory_mib(
    vms: &[VmDef],
    requested: Option<u32>,
    floor_mib: u32,
) -> Result<u32, String> {
    let guest_mib: u32 = vms.iter().map(|v| v.memory_kib.div_ceil(1024)).sum();
    let needed = guest_mib + HYPERVISOR_MIB;
    // By default also room for one snapshot of the largest VM (the console's
    // `snapshot` copies its RAM), so that snapshots can be tried at once.
    let snapshot_mib = vms
        .iter()
        .map(|v| v.memory_kib.div_ceil(1024))
        .max()
        .unwrap_or(0);
    match requested {
        Some(m) if m < needed => Err(format!(
            "--memory {m}: the VMs need {guest_mib} MiB, so give the machine at least {needed} MiB"
        )),
        Some(m) => Ok(m),
        None => Ok((needed + snapshot_mib).max(floor_mib)),
    }
}

/// Builds the test guests into `out_dir`.
pub fn build_tiny_guests(workspace: &Path, out_dir: &Path) -> Result<Vec<GuestImage>, String> {
    eprintln!("xtask: building the tiny test guests");
    guests::build_guests(workspace, out_dir)
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("reading {what} {}: {e}", path.display()))
}

/// A passphrase file's bytes as the passphrase: one trailing newline (`\n` or
/// `\r\n`, as `echo` and editors leave) is not part of it.
pub fn passphrase(mut file: Vec<u8>) -> Vec<u8> {
    if file.ends_with(b"\n") {
        file.pop();
        if file.ends_with(b"\r") {
            file.pop();
        }
    }
    file
}

/// Packs `vms` into bundle bytes (images and modules read from disk), without
/// machine settings.
pub fn bundle_bytes(vms: &[VmDef]) -> Result<Vec<u8>, String> {
    bundle_bytes_with(vms, &MachineDef::default())
}

/// Packs `vms` into bundle bytes with `machine`'s settings: the management
/// network, and, when the console has one, the administrator credential: its
/// passphrase file is read and hashed now (a fresh salt each time, so two packs of
/// one configuration differ in those bytes).
pub fn bundle_bytes_with(vms: &[VmDef], machine: &MachineDef) -> Result<Vec<u8>, String> {
    let settings = bundle::MachineSettings {
        admin: machine
            .console
            .as_ref()
            .map(|c| {
                crate::admin::credential(c)
                    .map_err(|e| format!("the console's administrator passphrase: {e}"))
            })
            .transpose()?,
        management: machine
            .management
            .as_ref()
            .map(|m| {
                bundle::Management::new(&m.network, m.address, m.prefix, m.syslog).ok_or_else(
                    || {
                        format!(
                            "the management network {:?}: {}",
                            m.network,
                            bundle::BundleError::BadManagement
                        )
                    },
                )
            })
            .transpose()?,
    };
    // Read everything first: the specs borrow from these buffers.
    let images: Vec<Vec<u8>> = vms
        .iter()
        .map(|v| read("guest image", &v.image))
        .collect::<Result<_, _>>()?;
    let modules: Vec<Vec<Vec<u8>>> = vms
        .iter()
        .map(|v| {
            v.modules
                .iter()
                .map(|m| read(&format!("module of VM {}", v.name), &m.path))
                .collect::<Result<_, _>>()
        })
        .collect::<Result<_, _>>()?;
    let disks: Vec<Option<Vec<u8>>> = vms
        .iter()
        .map(|v| {
            v.disk
                .as_ref()
                .map(|d| read(&format!("disk of VM {}", v.name), &d.path))
                .transpose()
        })
        .collect::<Result<_, _>>()?;
    let keys: Vec<Vec<u8>> = vms
        .iter()
        .map(
            |v| match v.partition.as_ref().and_then(|p| p.key_file.as_ref()) {
                Some(path) => read(&format!("key file of VM {}", v.name), path).map(passphrase),
                None => Ok(Vec::new()),
            },
        )
        .collect::<Result<_, _>>()?;
    let specs: Vec<bundle::VmSpec> = vms
        .iter()
        .zip(&images)
        .zip(&modules)
        .zip(&disks)
        .zip(&keys)
        .map(|((((v, image), data), disk), key)| bundle::VmSpec {
            name: &v.name,
            memory_kib: v.memory_kib,
            run_limit_ms: v.run_limit_ms,
            background: v.background,
            bench_hypercalls: v.bench_hypercalls,
            on_reset: v.on_reset,
            on_crash: v.on_crash,
            unmapped_stops: v.unmapped_stops,
            balloon: v.balloon,
            image,
            image_path: &v.image_path,
            format: v.format,
            cmdline: &v.cmdline,
            vcpus: v.vcpus,
            affinity: v.affinity(),
            modules: v
                .modules
                .iter()
                .zip(data)
                .map(|(m, data)| bundle::Module {
                    data,
                    cmdline: &m.cmdline,
                })
                .collect(),
            disk: v
                .disk
                .as_ref()
                .zip(disk.as_deref())
                .map(|(d, data)| bundle::Disk {
                    data,
                    read_only: d.read_only,
                }),
            partition: v.partition.as_ref().map(|p| bundle::PartitionDisk {
                name: &p.name,
                read_only: p.read_only,
                encrypted: p.encrypted,
                key,
            }),
            nics: v
                .nics
                .iter()
                .map(|n| bundle::Nic {
                    network: &n.network,
                    mac: n.mac,
                    rate_mbit: n.rate_mbit,
                    burst_kib: n.burst_kib,
                })
                .collect(),
        })
        .collect();
    bundle::write_with(&settings, &specs).map_err(|e| {
        // Name the VM: the bundle's errors only know entry indices.
        let vm = match e {
            bundle::BundleError::BadName { index }
            | bundle::BundleError::NameTooLong { index }
            | bundle::BundleError::BadVcpus { index }
            | bundle::BundleError::BadCmdline { index }
            | bundle::BundleError::CmdlineTooLong { index }
            | bundle::BundleError::TooManyModules { index }
            | bundle::BundleError::BadDisk { index }
            | bundle::BundleError::BadPartition { index }
            | bundle::BundleError::BadNicTable { index }
            | bundle::BundleError::BadNic { index, .. }
            | bundle::BundleError::BadModuleCmdline { index, .. } => {
                format!(" (VM {:?})", vms[index].name)
            }
            _ => String::new(),
        };
        format!("packing the guest bundle: {e}{vm}")
    })
}

/// Packs `vms` into a bundle file for the bootloader's ramdisk. The file is left
/// alone when its contents would not change, so its timestamp means something.
pub fn write_bundle(vms: &[VmDef], out: &Path) -> Result<PathBuf, String> {
    write_bundle_with(vms, &MachineDef::default(), out)
}

/// [`write_bundle`] with the machine's settings (see [`bundle_bytes_with`]).
pub fn write_bundle_with(
    vms: &[VmDef],
    machine: &MachineDef,
    out: &Path,
) -> Result<PathBuf, String> {
    let blob = bundle_bytes_with(vms, machine)?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    if std::fs::read(out).ok().as_deref() != Some(&blob[..]) {
        std::fs::write(out, blob).map_err(|e| format!("writing {}: {e}", out.display()))?;
    }
    Ok(out.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_memory_follows_the_guests() {
        let vm = |mib: u32| VmDef::new("v", "v.elf", mib * 1024);
        // Seven VMs of 16-32 MiB: 160 MiB of guests, more than Bochs's 128 alone,
        // and room for a snapshot of a 32 MiB one.
        let seven: Vec<VmDef> = [16, 32, 16, 32, 16, 32, 16].map(vm).into();
        assert_eq!(machine_memory_mib(&seven, None, 128), Ok(160 + 96 + 32));
        assert_eq!(machine_memory_mib(&seven, None, 512), Ok(512));
        // Small sets get the emulator's floor.
        assert_eq!(machine_memory_mib(&[vm(4)], None, 128), Ok(128));
        // A VM of 4100 KiB counts as 5 MiB.
        let odd = VmDef::new("v", "v.elf", 4100);
        assert_eq!(machine_memory_mib(&[odd], None, 0), Ok(5 + 96 + 5));
        assert_eq!(machine_memory_mib(&seven, Some(300), 512), Ok(300));
        let e = machine_memory_mib(&seven, Some(200), 128).unwrap_err();
        assert!(
            e.contains("need 160 MiB") && e.contains("at least 256 MiB"),
            "{e}"
        );
    }

    #[test]
    fn packs_every_field() {
        let dir = std::env::temp_dir().join(format!("hv-vms-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let image = dir.join("k.bin");
        let initrd = dir.join("initrd");
        std::fs::write(&image, b"kernel").unwrap();
        std::fs::write(&initrd, b"070701").unwrap();
        let disk = dir.join("disk.img");
        std::fs::write(&disk, [0x11u8; 1024]).unwrap();
        let vm = VmDef {
            disk: Some(DiskDef {
                path: disk,
                read_only: true,
            }),
            format: ImageFormat::Linux,
            cmdline: "console=ttyS0".into(),
            modules: vec![ModuleDef {
                path: initrd.clone(),
                cmdline: String::new(),
            }],
            run_limit_ms: 5,
            background: true,
            vcpus: 2,
            cpus: vec![0, 3],
            ..VmDef::new("linux", &image, 256 * 1024)
        };
        let out = dir.join("bundle.bin");
        write_bundle(std::slice::from_ref(&vm), &out).unwrap();
        let blob = std::fs::read(&out).unwrap();
        let specs = bundle::read(&blob).unwrap();
        assert_eq!(
            specs,
            vec![bundle::VmSpec {
                name: "linux",
                memory_kib: 256 * 1024,
                run_limit_ms: 5,
                background: true,
                bench_hypercalls: false,
                on_reset: bundle::Policy::Restart,
                on_crash: bundle::Policy::Stop,
                unmapped_stops: false,
                balloon: false,
                image: b"kernel",
                image_path: &image.display().to_string(),
                format: ImageFormat::Linux,
                cmdline: "console=ttyS0",
                vcpus: 2,
                affinity: 0b1001,
                modules: vec![bundle::Module {
                    data: b"070701",
                    cmdline: ""
                }],
                disk: Some(bundle::Disk {
                    data: &[0x11; 1024],
                    read_only: true
                }),
                partition: None,
                nics: Vec::new(),
            }]
        );
        let missing = VmDef {
            modules: vec![ModuleDef {
                path: dir.join("nope"),
                cmdline: String::new(),
            }],
            ..vm
        };
        let err = write_bundle(&[missing], &out).unwrap_err();
        assert!(
            err.contains("module of VM linux") && err.contains("nope"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
