//! Building the kernel ELF and the BIOS/UEFI disk images.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_path_buf()
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// Release (optimised) kernel: it boots several times faster under emulators.
    pub release: bool,
    /// The kernel's log level: off, error, warn, info, debug or trace.
    pub log_level: String,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            release: true,
            log_level: "info".into(),
        }
    }
}

pub const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// What one build produced.
#[derive(Clone, Debug)]
pub struct Built {
    pub kernel: PathBuf,
    pub images: boot::Images,
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Builds the kernel for `x86_64-unknown-none`.
pub fn build_kernel(opts: &BuildOptions) -> Result<PathBuf, String> {
    if !LOG_LEVELS.contains(&opts.log_level.as_str()) {
        return Err(format!(
            "unknown log level {:?}: use one of {}",
            opts.log_level,
            LOG_LEVELS.join(", ")
        ));
    }
    eprintln!(
        "xtask: building the kernel ({} profile, log level {})",
        if opts.release { "release" } else { "dev" },
        opts.log_level
    );
    let mut cmd = cargo();
    cmd.current_dir(workspace_root())
        .args([
            "build",
            "--package",
            "kernel",
            "--target",
            "x86_64-unknown-none",
        ])
        .env("HV_LOG", &opts.log_level);
    if opts.release {
        cmd.arg("--release");
    }
    let status = cmd.status().map_err(|e| format!("running cargo: {e}"))?;
    if !status.success() {
        return Err("building the kernel failed (see cargo's messages above)".into());
    }
    let profile = if opts.release { "release" } else { "debug" };
    Ok(target_dir()
        .join("x86_64-unknown-none")
        .join(profile)
        .join("kernel"))
}

/// The rate limit of every port on [`GuestSet::NetworkTest`]'s network "lan" (the
/// `[[network]]` key `rate_mbit`): far above what the Linux VMs' ping and 64 KiB
/// need, far below what `flood64` sends.
pub const NETWORK_TEST_RATE_MBIT: u32 = 2;
/// Its burst (`burst_kib`).
pub const NETWORK_TEST_BURST_KIB: u32 = 256;

/// Which VMs an image carries in its ramdisk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestSet {
    /// No bundle: the hypervisor boots, reports and stops.
    None,
    /// `cargo xtask run`: Debian's Linux to a shell on the serial console (2 vCPUs,
    /// an encrypted persistent disk on /data, 10.0.0.1 on network "lan" and
    /// 10.0.2.15 on the management network "mgmt", where the hypervisor is
    /// [`DEMO_STATION`]), a second Linux `peer` (10.0.0.2 on "lan"), and `net64`
    /// alone on network "other". "mgmt" is also the uplink's network (the
    /// machine's e1000 on QEMU's user network, 10.0.2.0/24), and the host's
    /// 127.0.0.1:[`DEMO_METRICS_PORT`] is forwarded to the hypervisor's port 80
    /// ([`GuestSet::forwards`]).
    Demo,
    /// The eight tiny guests (three CPU modes, policy probes, hostile ones).
    Tiny,
    /// Linux in test mode (it prints, then powers off) next to `hello64`.
    LinuxTest,
    /// Linux in test mode with its local APIC and IOAPIC in use (found through the MP
    /// table; symmetric I/O mode), 4 vCPUs and a blank 4 MiB RAM-backed virtio-blk
    /// disk (PCI), next to `hello64`.
    LinuxApicTest,
    /// The Multiboot v1 test kernel `mb32` (16 MiB, a command line and one module)
    /// next to `hello64`.
    Multiboot,
    /// The CPUID exit benchmark `bench64` next to Linux in test mode (so the figures
    /// are taken with another VM busy, as in real use).
    Bench,
    /// Guest SMP: `smp64` (2 vCPUs: AP start-up, IPI ping-pong) next to `hello64`
    /// (pinned to processor 1), with the hostile `ipistorm64` (2 vCPUs) and the
    /// spinner `spin64` (pinned to processor 0) in the background. Needs a machine
    /// with two processors.
    Smp,
    /// `Smp` without `ipistorm64` (no test uses it since the host-state failures
    /// under multi-threaded TCG were explained, README Known problems; kept for
    /// comparing runs with and without the storm).
    SmpWithoutStorm,
    /// `cargo xtask bench`'s IPI round trip with both vCPUs on one host processor:
    /// `smp64` (2 vCPUs) alone, pinned to processor 0, so its vCPUs take turns there.
    BenchIpiShared,
    /// `cargo xtask bench`'s IPI round trip across processors: `smp64` (2 vCPUs)
    /// alone, allowed on processors 0 and 1 (on a 2-processor machine with nothing
    /// else to run, each vCPU has a processor of its own).
    BenchIpiSplit,
    /// Hostile instructions next to `hello64`: `dbloop64` (a #DB delivery loop that
    /// ends in a triple fault), two VMs of `dr64` (debug registers and TSC_AUX kept
    /// per vCPU), `insn64` (WBINVD/INVD complete, RDPMC #GP, MONITOR #UD, unbacked
    /// space all ones), `timer64` (a count-1 periodic local APIC timer), `acloop32`
    /// (the #AC delivery loop of CVE-2015-5307) and `usercall32` (hypercalls from
    /// ring 3, then a spin there; in the background).
    Hostile,
    /// `crcheck64` (control-register, EFER and XCR0 writes that must fault) next to
    /// `hello64`, `blk64` with its RAM-backed virtio-blk disk (reads, a write,
    /// requests past the end), and `vq64`, hostile hand-built virtqueues on a copy
    /// of that disk (the device must end in NEEDS_RESET, then work after a reset),
    /// and `balloon64`, which inflates and deflates 1 MiB of its RAM through its
    /// virtio-balloon (the pages unbacked while ballooned, fresh zeroed ones after).
    CrCheck,
    /// Linux in test mode with a persistent, encrypted disk (partition "linux-data"
    /// of the NVMe disk, its passphrase from a key file) mounted on /data, next to
    /// `hello64`, which is given the encrypted partition "vault" with a wrong
    /// passphrase (it must be refused, and the partition left as it was). The disk
    /// image is [`GuestSet::storage`]'s.
    LinuxDiskTest,
    /// [`GuestSet::LinuxDiskTest`] for VT-x under Bochs: the same VMs, Linux with 1
    /// vCPU and 128 MiB, and a disk image of its own (the same partitions and
    /// [`BUNDLE_PARTITION`] for the guest bundle), which Bochs attaches as its
    /// second ATA disk.
    LinuxDiskVtxTest,
    /// `cargo xtask bench`'s disk throughput: Linux in test mode with
    /// `hv.bench=disk` (64 MiB written and read back with direct I/O on its raw
    /// disk) and the plain partition "bench-plain" of the bench disk image.
    BenchDisk,
    /// The same on the encrypted partition "bench-enc".
    BenchDiskEncrypted,
    /// The network: two Linux VMs in test mode (1 vCPU, 160 MiB each) on network
    /// "lan", `lan-a` at 10.0.0.1 listening on TCP port 5000 and `lan-b` at
    /// 10.0.0.2, which pings it and sends it 64 KiB; and `net64` with a NIC on
    /// network "other", which sends a broadcast and a frame with a forged source
    /// there and must see none of their frames (nor they its). The hypervisor's
    /// station is on network "mgmt" (10.0.9.1), where `lan-b` has a second NIC
    /// (10.0.9.2): it scrapes `/metrics` and collects the syslog; `lan-a` tries
    /// the metrics from "lan" with an address of that subnet, and must fail.
    NetworkTest,
    /// Two Linux VMs on network "lan" as in [`GuestSet::NetworkTest`] (ping and 64
    /// KiB over TCP), without the management network and `net64`: the network
    /// test's VT-x (Bochs) run.
    NetworkVtxTest,
    /// `cargo xtask bench`'s VM-to-VM figures: two Linux VMs in test mode with
    /// `hv.bench=net` (1 vCPU, 160 MiB each) on network "lan", `net-sink` at
    /// 10.0.0.1 counting what a TCP connection to its port brings, and
    /// `net-source` at 10.0.0.2, which pings it and sends it
    /// [`crate::bench::NET_BENCH_MIB`] MiB. The bench boots the same kernel,
    /// initramfs and command lines in two plain QEMUs as the reference.
    BenchNet,
    /// The uplink: one Linux VM in test mode (`web`, 1 vCPU, 160 MiB) at 10.0.2.15
    /// on network "lan", whose uplink is the machine's e1000 on QEMU's user network:
    /// it sends a line to [`UPLINK_TEST_SERVER_PORT`] on the gateway 10.0.2.2 (the
    /// test's server on the host's loopback) and prints the answer, and answers a
    /// connection to its TCP port [`UPLINK_TEST_GUEST_PORT`] (which the test
    /// forwards from the host). Beside it [`UPLINK_TEST_UDP_VM`] (`udpecho64`) at
    /// [`udpecho::GUEST_ADDRESS`] (10.0.2.16) echoes UDP port
    /// [`udpecho::ECHO_PORT`], which the test forwards a host UDP port to.
    UplinkTest,
    /// The management console: two `count64` VMs (`count64` and `other`), driven
    /// through the console from a pipe, with the administrator passphrase of
    /// [`CONSOLE_TEST_PASSPHRASE`].
    ConsoleTest,
    /// Linux (2 vCPUs, 256 MiB, its shell on the console, no disk) alone, for the
    /// console's snapshot test (a file written after a snapshot is gone after the
    /// restore) and the bench's snapshot figures.
    ConsoleLinuxTest,
    /// `count64` alone, with the snapshot area (partition "hv-snapshots") on the
    /// NVMe disk of [`GuestSet::storage`]: snapshots outlive a restart.
    SnapshotDiskTest,
    /// Linux (interactive, 2 vCPUs) on the disk of [`GuestSet::LinuxDiskTest`]
    /// ("linux-data" mounted on /data), driven through the console: a snapshot of
    /// a VM with a writable disk, restored (the disk rolled back) and cloned (the
    /// clone sees the disk as it was at the snapshot).
    LinuxDiskConsoleTest,
}

/// The console test's administrator passphrase.
pub const CONSOLE_TEST_PASSPHRASE: &str = "hv console test";

/// [`GuestSet::UplinkTest`]: the port of the test's server on the host's loopback,
/// which the guest reaches as 10.0.2.2 through QEMU's user network ...
pub const UPLINK_TEST_SERVER_PORT: u16 = 47_611;
/// ... and the guest's own listening port, which the test forwards from the host.
pub const UPLINK_TEST_GUEST_PORT: u16 = 5000;
/// ... and the VM that echoes UDP on "lan" (the `udpecho64` guest).
pub const UPLINK_TEST_UDP_VM: &str = "udpecho64";

/// [`GuestSet::Demo`]: the hypervisor's address on "mgmt", in QEMU's user network ...
pub const DEMO_STATION: [u8; 4] = [10, 0, 2, 10];
/// ... and the host port forwarded to its `/metrics` (9100: the port Prometheus'
/// node exporter made customary for a machine's metrics).
pub const DEMO_METRICS_PORT: u16 = 9100;
/// [`GuestSet::UplinkTest`]: the hypervisor's address on "lan", beside `web`.
pub const UPLINK_TEST_STATION: [u8; 4] = [10, 0, 2, 10];

/// Where the default run and the disk test keep their disk images and key files.
pub fn disks_dir() -> PathBuf {
    target_dir().join("hv").join("disks")
}

/// A key file holding a random passphrase, made on first use and kept (the default
/// run's disk must open again at the next run). Weaker than a typed passphrase: it
/// lies next to the disk image and is packed into the bundle.
fn random_key_file(path: &Path) -> Result<PathBuf, String> {
    use std::io::Read;
    if !path.is_file() {
        let mut random = [0u8; 16];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut random))
            .map_err(|e| format!("reading /dev/urandom: {e}"))?;
        let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::write(path, format!("{hex}\n")).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(path.to_path_buf())
}

/// A key file with fixed contents (tests).
fn fixed_key_file(path: &Path, passphrase: &str) -> Result<PathBuf, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(path, passphrase).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path.to_path_buf())
}

impl GuestSet {
    /// The persistent disk the set's VMs use, if any: the default run's Linux VM
    /// has a 64 MiB encrypted partition "linux-data" (key file
    /// `target/hv/disks/demo.key`, a random passphrase made on first use), and the
    /// guest bundle has a partition of its own ([`BUNDLE_PARTITION`]); the disk
    /// test has "linux-data" and "vault".
    pub fn storage(self) -> Result<Option<crate::vms::StorageDef>, String> {
        use crate::vms::{StorageDef, StoragePartition};
        let dir = disks_dir();
        let part = |name: &str, key: PathBuf| StoragePartition {
            name: name.into(),
            bytes: 64 << 20,
            contents: None,
            encrypted: true,
            key_file: Some(key),
        };
        match self {
            GuestSet::Demo => Ok(Some(StorageDef {
                image: None,
                config_stem: "demo".into(),
                bytes: 160 << 20,
                partitions: vec![
                    part("linux-data", random_key_file(&dir.join("demo.key"))?),
                    // The guest bundle (the Linux kernel and initramfs): the
                    // hypervisor reads it over NVMe, faster than the firmware would.
                    StoragePartition {
                        name: BUNDLE_PARTITION.into(),
                        bytes: 64 << 20,
                        contents: None,
                        encrypted: false,
                        key_file: None,
                    },
                ],
            })),
            // The VT-x test's own image, with the guest bundle on it too: the
            // hypervisor reads its 13 MB over ATA (about 1 s of Bochs' time), a
            // large PIO read that the bundle's checksum checks.
            GuestSet::LinuxDiskVtxTest => {
                let mut disk = GuestSet::LinuxDiskTest
                    .storage()?
                    .ok_or("the disk test has a disk")?;
                disk.config_stem = "linux-disk-vtx-test".into();
                disk.bytes += 64 << 20;
                disk.partitions.push(StoragePartition {
                    name: BUNDLE_PARTITION.into(),
                    bytes: 64 << 20,
                    contents: None,
                    encrypted: false,
                    key_file: None,
                });
                Ok(Some(disk))
            }
            GuestSet::LinuxDiskTest | GuestSet::LinuxDiskConsoleTest => Ok(Some(StorageDef {
                image: None,
                config_stem: "linux-disk-test".into(),
                bytes: 160 << 20,
                partitions: vec![
                    part(
                        "linux-data",
                        fixed_key_file(&dir.join("linux-disk-test.key"), "hv disk test\n")?,
                    ),
                    part(
                        "vault",
                        fixed_key_file(&dir.join("vault.key"), "the right one\n")?,
                    ),
                ],
            })),
            GuestSet::Bench | GuestSet::BenchDisk | GuestSet::BenchDiskEncrypted => {
                let bundle = StoragePartition {
                    name: BUNDLE_PARTITION.into(),
                    bytes: 64 << 20,
                    contents: None,
                    encrypted: false,
                    key_file: None,
                };
                let plain = StoragePartition {
                    name: "bench-plain".into(),
                    bytes: 72 << 20,
                    contents: None,
                    encrypted: false,
                    key_file: None,
                };
                Ok(Some(StorageDef {
                    image: None,
                    config_stem: "bench".into(),
                    bytes: 256 << 20,
                    partitions: vec![
                        bundle,
                        plain,
                        part(
                            "bench-enc",
                            fixed_key_file(&dir.join("bench.key"), "hv bench\n")?,
                        ),
                    ],
                }))
            }
            GuestSet::SnapshotDiskTest => Ok(Some(StorageDef {
                image: None,
                config_stem: "snapshot-disk-test".into(),
                bytes: 48 << 20,
                partitions: vec![StoragePartition {
                    name: "hv-snapshots".into(),
                    bytes: 32 << 20,
                    contents: None,
                    encrypted: false,
                    key_file: None,
                }],
            })),
            _ => Ok(None),
        }
    }

    /// The management console administrator's passphrase file of the set, if it has
    /// one: the default run's is `target/hv/console.pass`, a random passphrase made on
    /// first use (readable by its owner only) and kept, so it stays the same from run
    /// to run (put one of your own in it to choose it); the other sets have none.
    /// Its Argon2id hash goes into the bundle ([`GuestSet::console`]), never the
    /// passphrase.
    pub fn admin_passphrase_file(self) -> Result<Option<PathBuf>, String> {
        match self {
            GuestSet::Demo => {
                let path = target_dir().join("hv").join("console.pass");
                if crate::admin::random_passphrase_file(&path)? {
                    eprintln!(
                        "xtask: made the console's administrator passphrase (random) in {}",
                        path.display()
                    );
                }
                Ok(Some(path))
            }
            GuestSet::ConsoleTest
            | GuestSet::ConsoleLinuxTest
            | GuestSet::SnapshotDiskTest
            | GuestSet::LinuxDiskConsoleTest => Ok(Some(fixed_key_file(
                &target_dir().join("hv").join("console-test.pass"),
                &format!("{CONSOLE_TEST_PASSPHRASE}\n"),
            )?)),
            _ => Ok(None),
        }
    }

    /// The set's console settings: its [`GuestSet::admin_passphrase_file`], hashed at
    /// the default Argon2id cost.
    pub fn console(self) -> Result<Option<crate::vms::ConsoleDef>, String> {
        Ok(self
            .admin_passphrase_file()?
            .map(crate::vms::ConsoleDef::new))
    }

    /// The set's management network, if it has one (see [`GuestSet::vms`] for the
    /// network the VMs share with the hypervisor).
    pub fn management(self) -> Option<crate::vms::ManagementDef> {
        let station = |network: &str, address, syslog| {
            Some(crate::vms::ManagementDef {
                network: network.into(),
                address,
                prefix: 24,
                syslog,
            })
        };
        match self {
            // On "mgmt", which is also the uplink's network: the host reaches it
            // through a forward (busybox has no UDP listener to show a syslog in
            // the default run).
            GuestSet::Demo => station(MANAGEMENT_NETWORK, DEMO_STATION, None),
            // 10.0.9.1 on "mgmt"; its log goes to lan-b's 10.0.9.2.
            GuestSet::NetworkTest => station(
                MANAGEMENT_NETWORK,
                [10, 0, 9, 1],
                Some(([10, 0, 9, 2], 514)),
            ),
            // Beside `web` on the uplink's network: the test scrapes it from the host.
            GuestSet::UplinkTest => station("lan", UPLINK_TEST_STATION, None),
            _ => None,
        }
    }

    /// The set's uplink: the default run's on "mgmt" (the host reaches the
    /// hypervisor's metrics, and `linux`'s eth1), [`GuestSet::UplinkTest`]'s on "lan".
    pub fn uplink(self) -> Option<crate::vms::UplinkDef> {
        let network = match self {
            GuestSet::Demo => MANAGEMENT_NETWORK,
            GuestSet::UplinkTest => "lan",
            _ => return None,
        };
        Some(crate::vms::UplinkDef {
            network: network.into(),
        })
    }

    /// The host ports `cargo xtask run` forwards for the set unless told otherwise
    /// (see [`crate::uplink::with_defaults`]): the default run's
    /// [`DEMO_METRICS_PORT`] to the hypervisor's `/metrics`.
    pub fn forwards(self) -> Vec<crate::uplink::Forward> {
        match self {
            GuestSet::Demo => vec![crate::uplink::Forward::tcp(
                DEMO_METRICS_PORT,
                crate::uplink::STATION,
                mgmtnet::HTTP_PORT,
            )],
            _ => Vec::new(),
        }
    }

    /// The set's machine-wide settings: [`GuestSet::console`],
    /// [`GuestSet::management`] and [`GuestSet::uplink`].
    pub fn machine(self) -> Result<crate::vms::MachineDef, String> {
        Ok(crate::vms::MachineDef {
            console: self.console()?,
            management: self.management(),
            uplink: self.uplink(),
        })
    }

    fn dir_name(self) -> &'static str {
        match self {
            GuestSet::None => "plain",
            GuestSet::Demo => "demo",
            GuestSet::Tiny => "tiny",
            GuestSet::LinuxTest => "linux-test",
            GuestSet::LinuxApicTest => "linux-apic-test",
            GuestSet::Multiboot => "multiboot",
            GuestSet::Bench => "bench",
            GuestSet::Smp => "smp",
            GuestSet::SmpWithoutStorm => "smp-without-storm",
            GuestSet::BenchIpiShared => "bench-ipi-shared",
            GuestSet::BenchIpiSplit => "bench-ipi-split",
            GuestSet::Hostile => "hostile",
            GuestSet::CrCheck => "crcheck",
            GuestSet::LinuxDiskTest => "linux-disk-test",
            GuestSet::LinuxDiskVtxTest => "linux-disk-vtx-test",
            GuestSet::BenchDisk => "bench-disk",
            GuestSet::BenchDiskEncrypted => "bench-disk-encrypted",
            GuestSet::NetworkTest => "network-test",
            GuestSet::NetworkVtxTest => "network-vtx-test",
            GuestSet::BenchNet => "bench-net",
            GuestSet::UplinkTest => "uplink-test",
            GuestSet::ConsoleTest => "console-test",
            GuestSet::ConsoleLinuxTest => "console-linux-test",
            GuestSet::SnapshotDiskTest => "snapshot-disk-test",
            GuestSet::LinuxDiskConsoleTest => "linux-disk-console-test",
        }
    }

    /// The VMs of this set, building or fetching their images as needed.
    pub fn vms(self) -> Result<Vec<crate::vms::VmDef>, String> {
        let tiny = || {
            crate::vms::build_tiny_guests(
                &workspace_root(),
                &target_dir().join("hv").join("guests"),
            )
            .map(|images| crate::vms::tiny_guests(&images))
        };
        let guest_dir = target_dir().join("hv").join("guests");
        let all_guests = || crate::guests::build_all_guests(&workspace_root(), &guest_dir);
        // The Linux guest's VM before `config::check`, for sets that adjust it.
        let linux_vm = |test_mode| -> Result<crate::vms::VmDef, String> {
            let guest = crate::linux::debian_linux(&crate::linux::default_cache_dir())?;
            Ok(crate::linux::linux_vm(&guest, test_mode))
        };
        let linux = |test_mode| -> Result<crate::vms::VmDef, String> {
            Ok(crate::config::check(&linux_vm(test_mode)?)?)
        };
        let with_hello = |linux: crate::vms::VmDef| -> Result<Vec<crate::vms::VmDef>, String> {
            let hello = tiny()?
                .into_iter()
                .find(|v| v.name == "hello64")
                .ok_or("no hello64 guest")?;
            Ok(vec![linux, hello])
        };
        match self {
            GuestSet::None => Ok(Vec::new()),
            GuestSet::Tiny => {
                // Plus one image the kernel must refuse on its own (the bundle skips
                // xtask's host-side checks here): the rest must run regardless.
                let mut vms = tiny()?;
                let hello = vms
                    .iter()
                    .find(|v| v.name == "hello64")
                    .ok_or("no hello64 guest")?;
                let image = std::fs::read(&hello.image)
                    .map_err(|e| format!("{}: {e}", hello.image.display()))?;
                let broken = target_dir().join("hv").join("guests").join("broken64.elf");
                std::fs::write(&broken, &image[..image.len().min(200)])
                    .map_err(|e| format!("{}: {e}", broken.display()))?;
                let mut vm = crate::vms::VmDef::new("broken64", broken, 4096);
                vm.format = bundle::ImageFormat::Tiny;
                vms.push(vm);
                Ok(vms)
            }
            GuestSet::Demo => {
                self.storage()?; // makes the key file on first use
                let mut vm = linux_vm(false)?;
                vm.partition = Some(crate::vms::PartitionUse {
                    name: "linux-data".into(),
                    read_only: false,
                    encrypted: true,
                    key_file: Some(disks_dir().join("demo.key")),
                });
                // Networks: "linux" (10.0.0.1) and "peer" (10.0.0.2) share "lan";
                // net64 sits alone on "other" and reaches neither. "linux" is on
                // the management network too (10.0.2.15; the hypervisor is
                // 10.0.2.10), which is the uplink's: QEMU's user network, where
                // the host is 10.0.2.2 (its `ip` lets `--forward` reach it).
                use crate::vms::NicDef;
                vm.cmdline
                    .push_str(" hv.ip=10.0.0.1/24 hv.ip1=10.0.2.15/24");
                let mut mgmt = NicDef::on(MANAGEMENT_NETWORK, "linux", 1);
                mgmt.ip = Some((std::net::Ipv4Addr::new(10, 0, 2, 15), 24));
                vm.nics = vec![NicDef::on("lan", "linux", 0), mgmt];
                vm.balloon = true;
                let mut peer = linux_vm(false)?.renamed("peer");
                peer.balloon = true;
                peer.memory_kib = 192 * 1024;
                peer.cmdline.push_str(" hv.ip=10.0.0.2/24");
                peer.nics = vec![NicDef::on("lan", "peer", 0)];
                let mut net64 = tiny_vm(&all_guests()?, "net64")?;
                net64.nics = vec![NicDef::on("other", "net64", 0)];
                Ok(vec![
                    crate::config::check(&vm)?,
                    crate::config::check(&peer)?,
                    crate::config::check(&net64)?,
                ])
            }
            GuestSet::BenchDisk | GuestSet::BenchDiskEncrypted => {
                self.storage()?; // writes the key file
                let mut vm = linux_vm(true)?;
                vm.cmdline.push_str(" hv.bench=disk");
                let encrypted = self == GuestSet::BenchDiskEncrypted;
                vm.partition = Some(crate::vms::PartitionUse {
                    name: if encrypted {
                        "bench-enc"
                    } else {
                        "bench-plain"
                    }
                    .into(),
                    read_only: false,
                    encrypted,
                    key_file: encrypted.then(|| disks_dir().join("bench.key")),
                });
                Ok(vec![crate::config::check(&vm)?])
            }
            GuestSet::LinuxDiskTest | GuestSet::LinuxDiskVtxTest => {
                self.storage()?; // writes the key files
                let mut vm = linux_vm(true)?;
                if self == GuestSet::LinuxDiskVtxTest {
                    // Bochs runs about 60 million instructions a second: one
                    // processor, one vCPU, as little RAM as the guest needs.
                    vm.vcpus = 1;
                    vm.memory_kib = 128 * 1024;
                }
                vm.partition = Some(crate::vms::PartitionUse {
                    name: "linux-data".into(),
                    read_only: false,
                    encrypted: true,
                    key_file: Some(disks_dir().join("linux-disk-test.key")),
                });
                let mut vms = with_hello(crate::config::check(&vm)?)?;
                let wrong = fixed_key_file(&disks_dir().join("vault-wrong.key"), "a wrong one\n")?;
                vms[1].partition = Some(crate::vms::PartitionUse {
                    name: "vault".into(),
                    read_only: false,
                    encrypted: true,
                    key_file: Some(wrong),
                });
                Ok(vms)
            }
            GuestSet::LinuxDiskConsoleTest => {
                self.storage()?; // writes the key files
                let mut vm = linux_vm(false)?;
                vm.partition = Some(crate::vms::PartitionUse {
                    name: "linux-data".into(),
                    read_only: false,
                    encrypted: true,
                    key_file: Some(disks_dir().join("linux-disk-test.key")),
                });
                Ok(vec![crate::config::check(&vm)?])
            }
            GuestSet::LinuxTest => with_hello(linux(true)?),
            GuestSet::SnapshotDiskTest => Ok(vec![tiny_vm(&all_guests()?, "count64")?]),
            GuestSet::ConsoleLinuxTest => {
                let mut vm = linux_vm(false)?;
                vm.memory_kib = crate::bench::SNAPSHOT_VM_MIB as u32 * 1024;
                vm.balloon = true;
                // Too large to start beside `linux` in the test's machine until
                // `linux`'s balloon gave memory back (tests/tests/console.rs).
                let mut spare = tiny_vm(&all_guests()?, "count64")?.renamed("spare");
                spare.memory_kib = CONSOLE_SPARE_MIB * 1024;
                spare.background = true;
                Ok(vec![crate::config::check(&vm)?, spare])
            }
            GuestSet::ConsoleTest => {
                let images = all_guests()?;
                Ok(vec![
                    tiny_vm(&images, "count64")?,
                    tiny_vm(&images, "count64")?.renamed("other"),
                ])
            }
            GuestSet::NetworkVtxTest => {
                use crate::vms::NicDef;
                let lan = |name: &str, args: &str| -> Result<crate::vms::VmDef, String> {
                    let mut vm = linux_vm(true)?.renamed(name);
                    vm.vcpus = 1;
                    vm.memory_kib = 128 * 1024;
                    vm.cmdline = format!("{} {args}", vm.cmdline);
                    vm.nics = vec![NicDef::on("lan", name, 0)];
                    Ok(crate::config::check(&vm)?)
                };
                Ok(vec![
                    lan("lan-a", "hv.ip=10.0.0.1/24 hv.listen=5000")?,
                    lan("lan-b", "hv.ip=10.0.0.2/24 hv.ping=10.0.0.1 hv.send=5000")?,
                ])
            }
            GuestSet::NetworkTest => {
                use crate::vms::NicDef;
                let lan =
                    |name: &str, args: &str, mgmt: bool| -> Result<crate::vms::VmDef, String> {
                        let mut vm = linux_vm(true)?.renamed(name);
                        vm.vcpus = 1;
                        vm.memory_kib = 160 * 1024;
                        vm.cmdline = format!("{} {args}", vm.cmdline);
                        vm.nics = vec![NicDef::on("lan", name, 0)];
                        if mgmt {
                            vm.nics.push(NicDef::on(MANAGEMENT_NETWORK, name, 1));
                        }
                        Ok(crate::config::check(&vm)?)
                    };
                // lan-b is on the management network as well: it scrapes the
                // hypervisor's metrics and collects its syslog; lan-a is not, and
                // must not reach them even with an address of that subnet.
                let mut vms = vec![
                    lan(
                        "lan-a",
                        "hv.ip=10.0.0.1/24 hv.listen=5000 hv.probe=10.0.9.3/24@10.0.9.1",
                        false,
                    )?,
                    lan(
                        "lan-b",
                        "hv.ip=10.0.0.2/24 hv.ping=10.0.0.1 hv.send=5000 hv.ip1=10.0.9.2/24 \
                         hv.metrics=10.0.9.1 hv.syslog=1",
                        true,
                    )?,
                ];
                let guests = all_guests()?;
                let mut net64 = tiny_vm(&guests, "net64")?;
                net64.nics = vec![NicDef::on("other", "net64", 0)];
                vms.push(crate::config::check(&net64)?);
                // A flooder on "lan" beside the two Linux VMs, in the background
                // (stopped once they finish): every "lan" port is limited to
                // NETWORK_TEST_RATE_MBIT, so its broadcasts are dropped at its own
                // port, and the Linux VMs' traffic goes through.
                let mut flood64 = tiny_vm(&guests, "flood64")?;
                flood64.nics = vec![NicDef::on("lan", "flood64", 0)];
                flood64.background = true;
                vms.push(crate::config::check(&flood64)?);
                for nic in vms.iter_mut().flat_map(|v| v.nics.iter_mut()) {
                    if nic.network == "lan" {
                        nic.rate_mbit = NETWORK_TEST_RATE_MBIT;
                        nic.burst_kib = NETWORK_TEST_BURST_KIB;
                    }
                }
                // Run under multi-threaded TCG with a spare boot processor.
                crate::boot_cpu::keep_off_boot_processor(&mut vms, crate::boot_cpu::SPARED_CPUS);
                Ok(vms)
            }
            GuestSet::BenchNet => {
                use crate::bench::{NET_BENCH_MIB, NET_BENCH_PORT};
                let lan = |name: &str, args: String| -> Result<crate::vms::VmDef, String> {
                    let mut vm = linux_vm(true)?.renamed(name);
                    vm.vcpus = 1;
                    vm.memory_kib = 160 * 1024;
                    vm.cmdline = format!("{} hv.bench=net {args}", vm.cmdline);
                    vm.nics = vec![crate::vms::NicDef::on("lan", name, 0)];
                    Ok(crate::config::check(&vm)?)
                };
                let mut vms = vec![
                    lan(
                        "net-sink",
                        format!("hv.ip=10.0.0.1/24 hv.netsink={NET_BENCH_PORT}"),
                    )?,
                    lan(
                        "net-source",
                        format!(
                            "hv.ip=10.0.0.2/24 hv.netsource=10.0.0.1:{NET_BENCH_PORT} \
                             hv.netmib={NET_BENCH_MIB}"
                        ),
                    )?,
                ];
                // Under multi-threaded TCG with a spare boot processor, each VM on
                // a processor (and a TCG thread) of its own, as each plain QEMU of
                // the reference has one.
                vms[0].cpus = vec![1];
                vms[1].cpus = vec![2];
                Ok(vms)
            }
            GuestSet::UplinkTest => {
                let mut vm = linux_vm(true)?.renamed("web");
                vm.vcpus = 1;
                vm.memory_kib = 160 * 1024;
                vm.cmdline = format!(
                    "{} hv.ip=10.0.2.15/24 hv.fetch=10.0.2.2:{UPLINK_TEST_SERVER_PORT} hv.serve={UPLINK_TEST_GUEST_PORT}",
                    vm.cmdline
                );
                let mut nic = crate::vms::NicDef::on("lan", "web", 0);
                nic.ip = Some((std::net::Ipv4Addr::new(10, 0, 2, 15), 24));
                vm.nics = vec![nic];
                // The UDP echo server a UDP forward reaches (busybox has no UDP
                // listener), at the one address it answers on.
                let mut echo = tiny_vm(&all_guests()?, UPLINK_TEST_UDP_VM)?;
                let mut nic = crate::vms::NicDef::on("lan", UPLINK_TEST_UDP_VM, 0);
                nic.ip = Some((udpecho::GUEST_ADDRESS.into(), 24));
                echo.nics = vec![nic];
                Ok(vec![
                    crate::config::check(&vm)?,
                    crate::config::check(&echo)?,
                ])
            }
            GuestSet::LinuxApicTest => {
                let mut vm = linux_vm(true)?;
                vm.cmdline = format!("{} hv.test=1", crate::linux::LINUX_APIC_CMDLINE);
                // Over-committed: more vCPUs than the test machine's two processors.
                vm.vcpus = 4;
                // A blank RAM-backed virtio-blk disk: PCI, MSI-X and the virtio
                // drivers in the same boot; /init makes a filesystem on it.
                vm.disk = Some(crate::vms::DiskDef {
                    path: crate::guests::write_blank_disk(&guest_dir, "linux-scratch", 4 << 20)?,
                    read_only: false,
                });
                with_hello(crate::config::check(&vm)?)
            }
            GuestSet::Multiboot => {
                use crate::vms::{ImageFormat, ModuleDef, VmDef};
                let images = all_guests()?;
                let image = |name| crate::guests::find_image(&images, name).map(|g| g.path.clone());
                // Named as QEMU's `-kernel mb32 -append hello=world -initrd testmod`
                // names it: the loader puts the image path in front of the command
                // line as QEMU does, so mb32 prints the same lines under both.
                let mb32 = VmDef {
                    format: ImageFormat::Multiboot,
                    image_path: "mb32".into(),
                    cmdline: "hello=world".into(),
                    modules: vec![ModuleDef {
                        path: crate::guests::write_multiboot_test_module(&guest_dir)?,
                        cmdline: "testmod".into(),
                    }],
                    ..VmDef::new("mb32", image("mb32")?, 16 * 1024)
                };
                Ok(vec![
                    crate::config::check(&mb32)?,
                    tiny_vm(&images, "hello64")?,
                ])
            }
            GuestSet::Bench => {
                let bench = crate::vms::VmDef {
                    bench_hypercalls: true,
                    ..tiny_vm(&all_guests()?, "bench64")?
                };
                Ok(vec![linux(true)?, bench])
            }
            GuestSet::CrCheck => {
                let images = all_guests()?;
                let vm = |name: &str| tiny_vm(&images, name);
                // blk64 rides along (one boot per vendor either way): not in the
                // Hostile set, whose dbloop64 breakpoint at 0x100010 outlives its VM
                // under QEMU's TCG and fires in the next guest that runs there.
                let blk64 = crate::vms::VmDef {
                    disk: Some(crate::vms::DiskDef {
                        path: crate::guests::write_blk64_disk(&guest_dir)?,
                        read_only: false,
                    }),
                    ..vm("blk64")?
                };
                // vq64 (hostile virtqueues) on the same disk file (each VM's
                // RAM-backed disk is a copy of its own), with 20 MiB: its len-sum
                // scenario needs buffers of 17 MiB inside its RAM.
                let vq64 = crate::vms::VmDef {
                    memory_kib: VQ64_MEMORY_KIB,
                    disk: blk64.disk.clone(),
                    ..vm("vq64")?
                };
                // balloon64 rides along too: its virtio-balloon (00:02.0) inflated
                // and deflated under each vendor's nested paging, in the tiny
                // default 4 MiB (its 1 MiB range crosses the 2 MiB boundary).
                let balloon64 = crate::vms::VmDef {
                    balloon: true,
                    ..vm("balloon64")?
                };
                Ok(vec![
                    vm("crcheck64")?,
                    vm("hello64")?,
                    crate::config::check(&blk64)?,
                    crate::config::check(&vq64)?,
                    crate::config::check(&balloon64)?,
                ])
            }
            GuestSet::Smp | GuestSet::SmpWithoutStorm => {
                use crate::vms::VmDef;
                let images = all_guests()?;
                let vm = |name: &str, vcpus: u32| -> Result<VmDef, String> {
                    Ok(VmDef {
                        vcpus,
                        ..tiny_vm(&images, name)?
                    })
                };
                // hello64 pinned to processor 1 and the spinner to processor 0: a
                // vCPU spinning with interrupts off on one processor does not delay
                // the other's.
                let mut vms = vec![
                    vm("smp64", 2)?,
                    VmDef {
                        cpus: vec![1],
                        ..vm("hello64", 1)?
                    },
                    VmDef {
                        background: true,
                        run_limit_ms: 60_000,
                        ..vm("ipistorm64", 2)?
                    },
                    // Stopped by its CPU-time limit long before the others finish
                    // (under Bochs it gets about 450 ms of CPU time before they do).
                    VmDef {
                        background: true,
                        run_limit_ms: 250,
                        cpus: vec![0],
                        ..vm("spin64", 1)?
                    },
                    // Not opted in to the benchmark hypercalls: its bare CPUID loop
                    // must be refused.
                    vm("bench64", 1)?,
                    // Resets at once: restarted (on_reset's default), until the
                    // restart loop is cut off.
                    vm("reset64", 1)?,
                    // Pinned to a processor the 2-processor machine does not have:
                    // the kernel must refuse it alone.
                    VmDef {
                        cpus: vec![5],
                        ..vm("hello64", 1)?
                    }
                    .renamed("pinned5"),
                ];
                if self == GuestSet::SmpWithoutStorm {
                    vms.retain(|v| v.name != "ipistorm64");
                }
                Ok(vms)
            }
            GuestSet::BenchIpiShared | GuestSet::BenchIpiSplit => {
                let smp64 = crate::vms::VmDef {
                    vcpus: 2,
                    cpus: if self == GuestSet::BenchIpiShared {
                        vec![0]
                    } else {
                        vec![0, 1]
                    },
                    ..tiny_vm(&all_guests()?, "smp64")?
                };
                Ok(vec![smp64])
            }
            GuestSet::Hostile => {
                let images = all_guests()?;
                let vm = |name: &str| tiny_vm(&images, name);
                Ok(vec![
                    vm("dbloop64")?,
                    vm("dr64")?,
                    vm("dr64")?.renamed("dr64b"),
                    vm("insn64")?,
                    vm("timer64")?,
                    vm("acloop32")?,
                    // Opted in to the benchmark hypercalls, so that only its CPL keeps
                    // its 0x100 from the bare loop; it spins in ring 3 afterwards,
                    // until every other VM has finished.
                    crate::vms::VmDef {
                        bench_hypercalls: true,
                        background: true,
                        ..vm("usercall32")?
                    },
                    vm("hello64")?,
                ])
            }
        }
    }
}

/// `vq64`'s memory: more than the 17 MiB buffers of its len-sum scenario, whose
/// chain of 256 of them adds up past 4 GiB only with every buffer inside RAM.
const VQ64_MEMORY_KIB: u32 = 20 * 1024;

/// The built tiny guest `name` as a VM with 4 MiB of memory.
/// The memory of `GuestSet::ConsoleLinuxTest`'s `spare` VM (MiB).
pub const CONSOLE_SPARE_MIB: u32 = 400;

fn tiny_vm(images: &[crate::guests::GuestImage], name: &str) -> Result<crate::vms::VmDef, String> {
    Ok(crate::vms::VmDef {
        format: crate::vms::ImageFormat::Tiny,
        ..crate::vms::VmDef::new(
            name,
            crate::guests::find_image(images, name)?.path.clone(),
            4096,
        )
    })
}

/// Builds the kernel, the guests of `set`, and both disk images for it, in
/// `target/hv/<set>/`.
pub fn build_all(opts: &BuildOptions, set: GuestSet) -> Result<Built, String> {
    let machine = set.machine()?;
    build_with_vms(opts, set.dir_name(), &set.vms()?, &machine)
}

/// The management network of the default run and the network test.
pub const MANAGEMENT_NETWORK: &str = "mgmt";

/// The partition of a `[storage]` disk that, when the configuration has one, holds
/// the guest bundle (see [`build_with_bundle_on_disk`]).
pub const BUNDLE_PARTITION: &str = "hv-bundle";

/// Like [`build_with_vms`], but the bundle goes to the start of partition
/// [`BUNDLE_PARTITION`] of the disk image `disk` (attached to the machine as its
/// NVMe disk, or under Bochs as its second ATA disk) and the boot images' ramdisk is only a `bundle::BundleRef` to it: the
/// firmware then loads a few bytes instead of the guests' images, and the
/// hypervisor reads them with its own NVMe driver (much faster under emulators).
/// The bundle is the same as [`build_with_vms`] packs, `machine`'s settings
/// included.
pub fn build_with_bundle_on_disk(
    opts: &BuildOptions,
    dir: &str,
    vms: &[crate::vms::VmDef],
    machine: &crate::vms::MachineDef,
    disk: &Path,
) -> Result<Built, String> {
    use std::io::{Seek, SeekFrom, Write};
    let kernel = build_kernel(opts)?;
    let out = target_dir().join("hv").join(dir);
    let blob = crate::vms::bundle_bytes_with(vms, machine)?;
    let table = gptdisk::image::read_image(disk).map_err(|e| format!("{}: {e}", disk.display()))?;
    let part = table
        .find(BUNDLE_PARTITION)
        .map_err(|_| format!("{} has no partition {BUNDLE_PARTITION:?}", disk.display()))?;
    let room = (part.lbas.end - part.lbas.start) * gptdisk::SECTOR_SIZE as u64;
    if blob.len() as u64 > room {
        return Err(format!(
            "the guest bundle ({} KiB) does not fit partition {BUNDLE_PARTITION:?} ({} KiB) of {}",
            blob.len() / 1024,
            room / 1024,
            disk.display()
        ));
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(disk)
        .map_err(|e| format!("{}: {e}", disk.display()))?;
    file.seek(SeekFrom::Start(
        part.lbas.start * gptdisk::SECTOR_SIZE as u64,
    ))
    .and_then(|_| file.write_all(&blob))
    .and_then(|_| file.sync_all())
    .map_err(|e| format!("{}: writing the bundle: {e}", disk.display()))?;
    let reference = out.join("bundle-ref.bin");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let r = bundle::write_ref(BUNDLE_PARTITION, &blob);
    if std::fs::read(&reference).ok().as_deref() != Some(&r[..]) {
        std::fs::write(&reference, &r).map_err(|e| format!("{}: {e}", reference.display()))?;
    }
    eprintln!(
        "xtask: the guest bundle ({} KiB) is on partition {BUNDLE_PARTITION:?} of {}; \
         writing BIOS and UEFI disk images with a reference to it to {}",
        blob.len() / 1024,
        disk.display(),
        out.display()
    );
    let images = boot::build_images(&kernel, Some(&reference), &out)?;
    Ok(Built { kernel, images })
}

/// Builds the kernel and both disk images with `vms` and `machine`'s settings
/// (the administrator credential, the management network, the uplink) in the
/// ramdisk (none of them: no ramdisk), in `target/hv/<dir>/`.
pub fn build_with_vms(
    opts: &BuildOptions,
    dir: &str,
    vms: &[crate::vms::VmDef],
    machine: &crate::vms::MachineDef,
) -> Result<Built, String> {
    let kernel = build_kernel(opts)?;
    let out = target_dir().join("hv").join(dir);
    let ramdisk = if vms.is_empty() && machine.is_empty() {
        None
    } else {
        Some(crate::vms::write_bundle_with(
            vms,
            machine,
            &out.join("bundle.bin"),
        )?)
    };
    let ramdisk = ramdisk.as_deref();
    eprintln!(
        "xtask: writing BIOS and UEFI disk images to {}",
        out.display()
    );
    let images = boot::build_images(&kernel, ramdisk, &out)?;
    Ok(Built { kernel, images })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default run's metrics forward resolves against its own machine (an
    /// uplink and the station on one network, in QEMU's user network), and so
    /// does the uplink test's station; the other sets forward nothing.
    #[test]
    fn the_default_runs_station_is_reachable_from_the_host() {
        for (set, station) in [
            (GuestSet::Demo, DEMO_STATION),
            (GuestSet::UplinkTest, UPLINK_TEST_STATION),
        ] {
            let uplink = set.uplink().unwrap();
            let ip = crate::uplink::station_address(
                crate::uplink::Protocol::Tcp,
                mgmtnet::HTTP_PORT,
                &uplink,
                set.management().as_ref(),
            );
            assert_eq!(ip, Ok(std::net::Ipv4Addr::from(station)), "{set:?}");
        }
        let demo = GuestSet::Demo.forwards();
        assert_eq!(demo.len(), 1);
        assert_eq!(
            (demo[0].host_port, demo[0].vm.as_str(), demo[0].guest_port),
            (DEMO_METRICS_PORT, crate::uplink::STATION, 80)
        );
        assert!(GuestSet::NetworkTest.forwards().is_empty());
        assert!(GuestSet::NetworkTest.uplink().is_none());
    }
}
