//! A Linux guest for the hypervisor: Debian's own amd64 kernel and a tiny busybox
//! initramfs, fetched with `apt-get download` and cached by package version.
//!
//! Why Debian's packages: they are signed and mirrored, apt is already on the
//! machines this project runs on, and the standard amd64 kernel boots under the
//! hypervisor's minimal platform (see shared/PLATFORM.md: protocol 2.15 bzImage,
//! `acpi=off`, PCI on). Building a kernel would take far longer
//! than the rest of the project's build.
//!
//! The initramfs is a newc ("070701") cpio written here in plain Rust, uncompressed
//! (Linux unpacks an uncompressed initramfs as readily as a gzipped one, and a
//! static busybox is only about 2 MB): directories, `/bin/busybox`, applet symlinks,
//! the console device nodes, and an `/init` script that reports
//! `hv-linux: init running`, the kernel release and `hv-linux: userspace ok`, then
//! either powers off (`hv.test=1` on the kernel command line) or starts a shell on
//! the serial console.
//!
//! Cache layout: `<cache>/<kernel package>_<version>+busybox_<version>/` holding
//! `bzImage`, `busybox`, `kernel-release`, `initrd.cpio` and a `complete` marker,
//! and `<cache>/current`, a symlink to the entry last used (for config files).
//! Resolving the versions only reads apt's local lists (`apt-cache`), so a second
//! call does no network access.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::vms::{ImageFormat, ModuleDef, VmDef};

/// The metapackage that points at the current standard amd64 kernel.
const KERNEL_META: &str = "linux-image-amd64";
const BUSYBOX: &str = "busybox-static";

/// The kernel modules the guest's initramfs carries (paths under
/// `lib/modules/<release>/kernel/`): Debian builds virtio-pci, virtio-blk and ext4 as
/// modules (shared/PLATFORM.md). `/init` loads them only when the VM has a virtio
/// device. crc32c_generic is ext4's soft dependency (its metadata checksums ask the
/// crypto API for "crc32c" by name, which `depends=` does not list).
pub const MODULES: &[&str] = &[
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci.ko",
    // The memory balloon (`balloon = true`): the operator's `balloon` command.
    "drivers/virtio/virtio_balloon.ko",
    "drivers/block/virtio_blk.ko",
    "crypto/crc32c_generic.ko",
    "lib/crc16.ko",
    "fs/mbcache.ko",
    "fs/jbd2/jbd2.ko",
    "fs/ext4/ext4.ko",
    // virtio-net and what it depends on (its standby/failover support).
    "net/core/failover.ko",
    "drivers/net/net_failover.ko",
    "drivers/net/virtio_net.ko",
];

/// The `depends=` field of a module's `.modinfo` section (NUL-separated
/// `key=value` strings; Debian's .deb has no modules.dep, depmod writes it at
/// install time): the names of the modules it needs loaded first.
pub fn module_depends(ko: &[u8]) -> Vec<String> {
    ko.split(|&b| b == 0)
        .find_map(|field| field.strip_prefix(b"depends="))
        .map(|deps| {
            String::from_utf8_lossy(deps)
                .split(',')
                .filter(|d| !d.is_empty())
                .map(|d| d.replace('-', "_"))
                .collect()
        })
        .unwrap_or_default()
}

/// A module's name as `depends=` spells it: the file name without `.ko`, `-` as `_`.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.strip_suffix(".ko").unwrap_or(file).replace('-', "_")
}

/// `modules` (name, contents) in an order that loads every module after what it
/// depends on; an error names a dependency that is not among them, or a cycle.
pub fn load_order(modules: &[(String, Vec<u8>)]) -> Result<Vec<String>, String> {
    let mut order: Vec<String> = Vec::new();
    let mut left: Vec<(&String, Vec<String>)> = modules
        .iter()
        .map(|(name, ko)| (name, module_depends(ko)))
        .collect();
    for (name, deps) in &left {
        if let Some(d) = deps.iter().find(|d| !modules.iter().any(|(n, _)| n == *d)) {
            return Err(format!(
                "module {name} needs {d}, which the guest does not carry"
            ));
        }
    }
    while !left.is_empty() {
        let before = left.len();
        let mut i = 0;
        while i < left.len() {
            if left[i].1.iter().all(|d| order.contains(d)) {
                order.push(left.remove(i).0.clone());
            } else {
                i += 1;
            }
        }
        if left.len() == before {
            return Err(format!(
                "the dependencies of modules {} form a cycle",
                left.iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    Ok(order)
}

/// A fetched Linux guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinuxGuest {
    pub bzimage: PathBuf,
    pub initrd: PathBuf,
}

/// The kernel command line for the hypervisor's platform: serial console, the
/// processors and interrupt controllers from the MP table (`acpi=off`: there is no
/// FADT/DSDT), local APICs and the IOAPIC, PCI through configuration mechanism #1
/// with INTx routing from the MP table (MSI-X where a device has it). `tsc=reliable` keeps Linux from
/// distrusting a TSC that jumps while the VM is descheduled.
pub const LINUX_CMDLINE: &str =
    "console=ttyS0 earlyprintk=serial,ttyS0 acpi=off tsc=reliable quiet";

/// vCPUs of the default Linux VM.
pub const LINUX_VCPUS: u32 = 2;

/// The same guest using its local APIC and IOAPIC (found through the MP table, as
/// `acpi=off` asks), in symmetric I/O mode; verbose, so the APIC setup can be checked.
pub const LINUX_APIC_CMDLINE: &str = "console=ttyS0 earlyprintk=serial,ttyS0 acpi=off tsc=reliable";

/// The Linux VM: 256 MiB, [`LINUX_VCPUS`] vCPUs, format linux, the initrd as module
/// 0. In test mode the guest's /init prints its lines and powers off.
pub fn linux_vm(guest: &LinuxGuest, test_mode: bool) -> VmDef {
    let mut cmdline = LINUX_CMDLINE.to_string();
    if test_mode {
        cmdline.push_str(" hv.test=1");
    }
    VmDef {
        format: ImageFormat::Linux,
        cmdline,
        modules: vec![ModuleDef {
            path: guest.initrd.clone(),
            cmdline: String::new(),
        }],
        vcpus: LINUX_VCPUS,
        ..VmDef::new("linux", guest.bzimage.clone(), 256 * 1024)
    }
}

/// Where xtask keeps the Linux guest: `<target>/hv/linux`.
pub fn default_cache_dir() -> PathBuf {
    crate::build::target_dir().join("hv").join("linux")
}

/// A Debian package at one version.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Package {
    name: String,
    version: String,
}

/// Runs `cmd`; an error names the command line and carries its stderr.
fn run(cmd: &mut Command) -> Result<Output, String> {
    let line = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running `{line}`: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn is_root() -> bool {
    // The effective uid is the second number of the `Uid:` line.
    fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
            .unwrap_or(false)
    })
}

/// One package record of `apt-cache show --no-all-versions` output (records are
/// separated by blank lines): its `Version` and `Depends` fields.
fn record<'a>(text: &'a str, package: &str) -> Option<(&'a str, &'a str)> {
    text.split("\n\n").find_map(|rec| {
        let field = |name: &str| {
            rec.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        (field("Package")? == package).then(|| {
            (
                field("Version").unwrap_or(""),
                field("Depends").unwrap_or(""),
            )
        })
    })
}

/// The real kernel package behind the metapackage and the version it pins, from
/// its `Depends` (`linux-image-6.1.0-56-amd64 (= 6.1.192-2)`).
fn kernel_from_depends(depends: &str) -> Option<(String, Option<String>)> {
    depends
        .split([',', '|'])
        .map(str::trim)
        .find(|d| d.starts_with("linux-image-") && !d.starts_with(KERNEL_META))
        .map(|d| {
            let name = d.split_whitespace().next().unwrap_or(d).to_string();
            let version = d
                .split_once("(=")
                .and_then(|(_, v)| v.split_once(')'))
                .map(|(v, _)| v.trim().to_string());
            (name, version)
        })
}

fn show(packages: &[&str]) -> Result<String, String> {
    let out = run(Command::new("apt-cache")
        .args(["show", "--no-all-versions"])
        .args(packages))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The candidate versions of the kernel and busybox packages, from apt's local
/// package lists (no network; one `apt-cache` call in the usual case, as each
/// takes most of a second).
fn resolve_packages() -> Result<(Package, Package), String> {
    let text = show(&[KERNEL_META, BUSYBOX])?;
    let (_, depends) = record(&text, KERNEL_META)
        .ok_or_else(|| format!("`apt-cache show {KERNEL_META}` gives no record"))?;
    let (name, pinned) = kernel_from_depends(depends).ok_or_else(|| {
        format!("{KERNEL_META} depends on no linux-image-* package (Depends: {depends})")
    })?;
    let version = match pinned {
        Some(v) => v,
        None => {
            let text = show(&[&name])?;
            record(&text, &name)
                .map(|(v, _)| v.to_string())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("`apt-cache show {name}` gives no version"))?
        }
    };
    let busybox = record(&text, BUSYBOX)
        .map(|(v, _)| v.to_string())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("`apt-cache show {BUSYBOX}` gives no version"))?;
    Ok((
        Package { name, version },
        Package {
            name: BUSYBOX.into(),
            version: busybox,
        },
    ))
}

fn apt_get_update() -> Result<(), String> {
    eprintln!("xtask: apt's package lists are missing or stale; running `apt-get update` once");
    run(Command::new("apt-get").arg("update")).map(|_| ())
}

/// A directory name from package versions (epochs bring a ':').
fn cache_key(kernel: &Package, busybox: &Package) -> String {
    format!(
        "{}_{}+busybox_{}",
        kernel.name, kernel.version, busybox.version
    )
    .chars()
    .map(|c| {
        if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-') {
            c
        } else {
            '_'
        }
    })
    .collect()
}

fn manual_instructions(cache_dir: &Path) -> String {
    format!(
        "to fetch the Linux guest by hand, download from a Debian mirror (amd64) the package \
         that `{KERNEL_META}` depends on (linux-image-<version>-amd64, e.g. \
         linux-image-6.1.0-*-amd64 for bookworm) and `{BUSYBOX}`, extract them with \
         `dpkg-deb -x` (or `ar x` and `tar`), and copy boot/vmlinuz-* to {0}/bzImage and \
         bin/busybox to {0}/busybox",
        cache_dir.join("manual").display()
    )
}

/// The newest complete cache entry, for when apt cannot tell the current versions.
fn newest_cached(cache_dir: &Path) -> Option<PathBuf> {
    let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
    for entry in fs::read_dir(cache_dir).ok()?.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_symlink()) {
            continue; // `current`
        }
        let dir = entry.path();
        let marker = dir.join("complete");
        let manual = dir.file_name().is_some_and(|n| n == "manual");
        let ready = if manual {
            dir.join("bzImage").is_file() && dir.join("busybox").is_file()
        } else {
            ready(&dir)
        };
        if !ready {
            continue;
        }
        let when = fs::metadata(if manual { dir.join("bzImage") } else { marker })
            .and_then(|m| m.modified())
            .unwrap_or(std::time::UNIX_EPOCH);
        if best.as_ref().is_none_or(|(t, _)| when > *t) {
            best = Some((when, dir));
        }
    }
    best.map(|(_, d)| d)
}

/// Fetches (or finds in `cache_dir`) Debian's standard amd64 kernel and a busybox
/// initramfs for it.
pub fn debian_linux(cache_dir: &Path) -> Result<LinuxGuest, String> {
    // Tests ask for the guest from parallel threads: one fetch at a time, so they
    // neither download twice nor share the pid-named temporaries.
    static FETCHING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = FETCHING.lock().unwrap_or_else(|e| e.into_inner());
    fs::create_dir_all(cache_dir).map_err(|e| format!("{}: {e}", cache_dir.display()))?;
    if !have("apt-cache") || !have("apt-get") || !have("dpkg-deb") {
        if let Some(dir) = newest_cached(cache_dir) {
            eprintln!(
                "xtask: apt is not available; using the cached Linux guest in {}",
                dir.display()
            );
            return finish(&dir);
        }
        return Err(format!(
            "apt-get, apt-cache and dpkg-deb are needed to fetch the Linux guest (Debian or \
             Ubuntu); {}",
            manual_instructions(cache_dir)
        ));
    }
    let mut updated = false;
    let (kernel, busybox) = match resolve_packages() {
        Ok(p) => p,
        Err(e) => {
            // Empty or broken lists: a cached guest is better than the network.
            if let Some(dir) = newest_cached(cache_dir) {
                eprintln!(
                    "xtask: cannot resolve the Linux packages ({e}); using the cached guest in {}",
                    dir.display()
                );
                return finish(&dir);
            }
            if !is_root() {
                return Err(format!(
                    "{e}\nxtask: apt's package lists may be empty: run `sudo apt-get update`, \
                     then try again"
                ));
            }
            apt_get_update()?;
            updated = true;
            resolve_packages()?
        }
    };
    let dir = cache_dir.join(cache_key(&kernel, &busybox));
    if !ready(&dir) {
        match download(&dir, &kernel, &busybox) {
            Ok(()) => {}
            // A 404 from a mirror that moved on: refresh the lists once and retry
            // with whatever versions they now name.
            Err(e) if !updated && is_root() => {
                eprintln!("xtask: {e}");
                apt_get_update()?;
                let (kernel, busybox) = resolve_packages()?;
                let dir = cache_dir.join(cache_key(&kernel, &busybox));
                if !ready(&dir) {
                    download(&dir, &kernel, &busybox)?;
                }
                return finish(&dir);
            }
            Err(e) if !is_root() => {
                return Err(format!(
                    "{e}\nxtask: if apt's package lists are stale, run `sudo apt-get update` \
                     and try again"
                ))
            }
            Err(e) => return Err(e),
        }
    }
    finish(&dir)
}

/// Downloads and unpacks both packages into `dir` (via `dir.partial`, renamed at the
/// end, so an interrupted run leaves no half-filled cache entry).
fn download(dir: &Path, kernel: &Package, busybox: &Package) -> Result<(), String> {
    let partial = dir.with_extension("partial");
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial).map_err(|e| format!("{}: {e}", partial.display()))?;
    eprintln!(
        "xtask: downloading {} {} and {} {} (about 70 MB) into {}",
        kernel.name,
        kernel.version,
        busybox.name,
        busybox.version,
        dir.display()
    );
    run(Command::new("apt-get").current_dir(&partial).args([
        "download",
        "-q",
        &format!("{}={}", kernel.name, kernel.version),
        &format!("{}={}", busybox.name, busybox.version),
    ]))?;
    let deb = |name: &str| -> Result<PathBuf, String> {
        fs::read_dir(&partial)
            .map_err(|e| format!("{}: {e}", partial.display()))?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{name}_")) && n.ends_with(".deb"))
            })
            .ok_or_else(|| {
                format!(
                    "apt-get download left no {name}_*.deb in {}",
                    partial.display()
                )
            })
    };
    let kernel_deb = deb(&kernel.name)?;
    let busybox_deb = deb(&busybox.name)?;

    // The kernel package unpacks to ~400 MB of modules; take only /boot from it.
    let root = partial.join("root");
    fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    extract_boot(&kernel_deb, &root)?;
    extract_modules(&kernel_deb, &root, &partial.join("modules"))?;
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&busybox_deb)
        .arg(&root))?;

    let boot = root.join("boot");
    let vmlinuz = fs::read_dir(&boot)
        .map_err(|e| format!("{}: {e}", boot.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .ok_or_else(|| format!("{} holds no boot/vmlinuz-*", kernel_deb.display()))?;
    let release = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .unwrap_or_default()
        .to_string();
    let busybox_bin = ["bin/busybox", "usr/bin/busybox"]
        .iter()
        .map(|p| root.join(p))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("{} holds no bin/busybox", busybox_deb.display()))?;
    let copy = |from: &Path, to: &str| {
        fs::copy(from, partial.join(to))
            .map(|_| ())
            .map_err(|e| format!("copying {}: {e}", from.display()))
    };
    copy(&vmlinuz, "bzImage")?;
    copy(&busybox_bin, "busybox")?;
    let write = |name: &str, text: &str| {
        fs::write(partial.join(name), text).map_err(|e| format!("{name}: {e}"))
    };
    write("kernel-release", &format!("{release}\n"))?;
    // The .debs and the unpacked tree are not needed any more (the kernel's is 70 MB).
    for p in [&kernel_deb, &busybox_deb] {
        let _ = fs::remove_file(p);
    }
    let _ = fs::remove_dir_all(&root);
    write(
        "complete",
        &format!(
            "{} {}\n{} {}\n",
            kernel.name, kernel.version, busybox.name, busybox.version
        ),
    )?;
    let _ = fs::remove_dir_all(dir);
    fs::rename(&partial, dir).map_err(|e| format!("renaming {}: {e}", partial.display()))
}

/// Takes [`MODULES`] out of the kernel package into `to` (flat, by file name), and
/// writes `to/order`, their load order.
fn extract_modules(deb: &Path, root: &Path, to: &Path) -> Result<(), String> {
    let patterns: Vec<String> = MODULES
        .iter()
        .map(|m| format!("./lib/modules/*/kernel/{m}"))
        .collect();
    pipe_tar(deb, root, &patterns)?;
    fs::create_dir_all(to).map_err(|e| format!("{}: {e}", to.display()))?;
    let release_dir = fs::read_dir(root.join("lib/modules"))
        .map_err(|e| format!("{} holds no lib/modules: {e}", deb.display()))?
        .flatten()
        .map(|e| e.path())
        .next()
        .ok_or_else(|| format!("{} holds no lib/modules/<release>", deb.display()))?;
    let mut modules = Vec::new();
    for m in MODULES {
        let from = release_dir.join("kernel").join(m);
        let bytes = fs::read(&from).map_err(|e| {
            format!(
                "the kernel package {} has no {m} ({e}); the guest needs it for virtio disks",
                deb.display()
            )
        })?;
        let name = module_name(m);
        fs::write(to.join(format!("{name}.ko")), &bytes)
            .map_err(|e| format!("{}: {e}", to.display()))?;
        modules.push((name, bytes));
    }
    let order = load_order(&modules)?;
    fs::write(to.join("order"), order.join("\n") + "\n")
        .map_err(|e| format!("{}: {e}", to.display()))
}

/// `dpkg-deb --fsys-tarfile DEB | tar -x -C ROOT --wildcards PATTERNS`.
fn pipe_tar(deb: &Path, root: &Path, patterns: &[String]) -> Result<(), String> {
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running `dpkg-deb --fsys-tarfile {}`: {e}", deb.display()))?;
    let tar_out = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(root)
        .arg("--wildcards")
        .args(patterns)
        .stdin(dpkg.stdout.take().expect("piped"))
        .output()
        .map_err(|e| format!("running `tar`: {e}"))?;
    let dpkg_out = dpkg
        .wait_with_output()
        .map_err(|e| format!("waiting for dpkg-deb: {e}"))?;
    if !dpkg_out.status.success() {
        return Err(format!(
            "`dpkg-deb --fsys-tarfile {}` failed ({}): {}",
            deb.display(),
            dpkg_out.status,
            String::from_utf8_lossy(&dpkg_out.stderr).trim()
        ));
    }
    if !tar_out.status.success() {
        return Err(format!(
            "`tar -x {}` from {} failed ({}): {}",
            patterns.join(" "),
            deb.display(),
            tar_out.status,
            String::from_utf8_lossy(&tar_out.stderr).trim()
        ));
    }
    Ok(())
}

/// `dpkg-deb --fsys-tarfile DEB | tar -x -C ROOT ./boot`.
fn extract_boot(deb: &Path, root: &Path) -> Result<(), String> {
    pipe_tar(deb, root, &["./boot/vmlinuz-*".to_string()])
}

/// Whether a downloaded cache entry is complete: entries from before the guest
/// carried kernel modules lack `modules/order` and are fetched again.
fn ready(dir: &Path) -> bool {
    // An entry made before a module joined MODULES is made again.
    let order = fs::read_to_string(dir.join("modules").join("order")).unwrap_or_default();
    dir.join("complete").is_file()
        && MODULES
            .iter()
            .all(|m| order.lines().any(|l| l == module_name(m)))
}

/// The modules of a cache entry in load order (none in a `manual` entry without a
/// `modules/order`).
fn cached_modules(dir: &Path) -> Result<Vec<(String, Vec<u8>)>, String> {
    let modules = dir.join("modules");
    let Ok(order) = fs::read_to_string(modules.join("order")) else {
        return Ok(Vec::new());
    };
    order
        .lines()
        .filter(|l| !l.is_empty())
        .map(|name| {
            let path = modules.join(format!("{name}.ko"));
            fs::read(&path)
                .map(|bytes| (name.to_string(), bytes))
                .map_err(|e| format!("reading {}: {e}", path.display()))
        })
        .collect()
}

/// Builds (or keeps) the initramfs in a ready cache entry.
fn finish(dir: &Path) -> Result<LinuxGuest, String> {
    let bzimage = dir.join("bzImage");
    let busybox = fs::read(dir.join("busybox"))
        .map_err(|e| format!("reading {}: {e}", dir.join("busybox").display()))?;
    let cpio = initramfs(&busybox, &cached_modules(dir)?);
    let initrd = dir.join("initrd.cpio");
    // Rewritten only when the init script or busybox changed.
    if fs::read(&initrd).ok().as_deref() != Some(&cpio[..]) {
        let tmp = dir.join(format!("initrd.cpio.{}.tmp", std::process::id()));
        fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(&cpio))
            .and_then(|_| fs::rename(&tmp, &initrd))
            .map_err(|e| format!("writing {}: {e}", initrd.display()))?;
    }
    point_current(dir);
    Ok(LinuxGuest { bzimage, initrd })
}

/// Points `<cache>/current` at `dir`, so a config file can name
/// `.../current/bzImage` without knowing the package version. Best effort: the
/// returned paths never go through it.
fn point_current(dir: &Path) {
    let (Some(cache), Some(name)) = (dir.parent(), dir.file_name()) else {
        return;
    };
    let link = cache.join("current");
    if fs::read_link(&link).is_ok_and(|t| t == Path::new(name)) {
        return;
    }
    let tmp = cache.join(format!(".current.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&tmp);
    if std::os::unix::fs::symlink(name, &tmp).is_ok() {
        let _ = fs::rename(&tmp, &link);
    }
}

/// The guest's `/init`. Lines starting `hv-linux:` are what the tests look for.
///
/// With a virtio-blk disk (PCI 1af4:1042) it loads the modules in `/lib/modules`
/// (in the order of `/lib/modules/order`) and mounts the disk on `/data`, making an
/// ext2 filesystem first when the disk has none (no ext2 superblock magic 0xEF53 at
/// byte 1080); a read-only disk without one is left unmounted. In test mode it counts
/// its boots in `/data/hv-boots`, appends a marker line to `/data/hv-marker.txt` (the
/// encrypted-disk test looks for it in the disk image), and unmounts before powering
/// off.
pub const INIT_SCRIPT: &str = r#"#!/bin/sh
# /init of the hv Linux guest (busybox initramfs, written by xtask/src/linux.rs).
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
# devtmpfs brings every device node; the cpio's own console nodes are the fallback.
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "hv-linux: init running"
echo "hv-linux: kernel $(uname -r)"
echo "hv-linux: userspace ok"
echo "hv-linux: cpus online $(nproc) of $(cat /sys/devices/system/cpu/possible)"

# A virtio device with PCI device ID $1 (1042 block, 1041 network) is present.
virtio_dev() {
    for d in /sys/bus/pci/devices/*; do
        [ "$(cat $d/vendor 2>/dev/null)" = 0x1af4 ] && [ "$(cat $d/device 2>/dev/null)" = $1 ] && return 0
    done
    return 1
}
# The value of hv.$1=... on the kernel command line.
arg() {
    for w in $(cat /proc/cmdline); do
        case "$w" in hv.$1=*) echo "${w#*=}"; return ;; esac
    done
}
# hv.bench=disk: the disk is for `cargo xtask bench`'s throughput figures, not /data.
diskbench=
case " $(cat /proc/cmdline) " in *" hv.bench=disk "*) diskbench=1 ;; esac
# The drivers, once, for any virtio device (the disk's and the NIC's share the core).
if virtio_dev 0x1042 || virtio_dev 0x1041 || virtio_dev 0x1045; then
    for m in $(cat /lib/modules/order); do
        insmod /lib/modules/$m.ko || echo "hv-linux: insmod $m failed"
    done
fi
virtio_dev 0x1045 && echo "hv-linux: memory balloon driver loaded"
# A virtio-net NIC: eth0 up with the address from hv.ip= (e.g. hv.ip=10.0.0.1/24).
net=
if virtio_dev 0x1041; then
    i=0
    while [ ! -d /sys/class/net/eth0 ] && [ $i -lt 100 ]; do usleep 50000; i=$((i+1)); done
    if [ -d /sys/class/net/eth0 ]; then
        ip link set lo up
        ip link set eth0 up
        addr=$(arg ip)
        if [ -z "$addr" ]; then
            echo "hv-linux: eth0 up without an address (no hv.ip=)"
        elif ip addr add "$addr" dev eth0; then
            net=1
            echo "hv-linux: eth0 $addr up"
        else
            echo "hv-linux: eth0: cannot set address $addr"
        fi
    else
        echo "hv-linux: virtio-net device found but no eth0"
    fi
fi
# A second NIC (the management network in the default run): eth1 with hv.ip1=.
mgmt=
addr1=$(arg ip1)
if [ -n "$addr1" ]; then
    i=0
    while [ ! -d /sys/class/net/eth1 ] && [ $i -lt 100 ]; do usleep 50000; i=$((i+1)); done
    if [ -d /sys/class/net/eth1 ] && ip link set eth1 up && ip addr add "$addr1" dev eth1; then
        mgmt=1
        echo "hv-linux: eth1 $addr1 up"
    else
        echo "hv-linux: eth1: cannot set address $addr1"
    fi
fi
mkdir -p /tmp
# Datagrams that came to a closed UDP port (Udp NoPorts in /proc/net/snmp): how
# the test sees the hypervisor's syslog arrive, since busybox has no UDP listener.
udp_noports() { awk '/^Udp:/ { if (h) print $3; h = 1 }' /proc/net/snmp; }
# The TCP check's receiving side (hv.listen=PORT): listening from now on, so the
# sender finds it once ping gets through. Its stdin is a FIFO that this shell
# keeps open for writing (fd 3) and never writes: a background job's stdin is
# /dev/null, and at that end of file busybox nc shuts its sending side down,
# whereupon the sender's nc, seeing the end of the connection, exits with the
# rest of its input unsent (4 KiB chunks: the transfers that "stalled" after 4
# or 12 KiB). (Not a pipe from `sleep`: `wait` would wait for the sleep too.)
listener=
if [ -n "$net" ] && [ -n "$(arg listen)" ] && grep -q " hv.test=1" /proc/cmdline; then
    mkfifo /tmp/rx-in
    timeout 90 nc -l -p "$(arg listen)" < /tmp/rx-in > /tmp/rx &
    listener=$!
    exec 3> /tmp/rx-in
fi
# The uplink test's answering side (hv.serve=PORT): a line for whoever connects
# (the host, through a forwarded port), keeping what it sends.
server=
if [ -n "$net" ] && [ -n "$(arg serve)" ] && grep -q " hv.test=1" /proc/cmdline; then
    echo "hv-linux-served" | timeout 90 nc -l -p "$(arg serve)" > /tmp/served &
    server=$!
fi
# A virtio-blk disk: /data.
data=
if virtio_dev 0x1042; then
    i=0
    while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do usleep 50000; i=$((i+1)); done
    if [ -b /dev/vda ] && [ -n "$diskbench" ]; then
        # Sequential, direct I/O (no page cache), 64 MiB each way; seconds from
        # the guest's clock.
        now() { cut -d' ' -f1 /proc/uptime; }
        t0=$(now)
        dd if=/dev/zero of=/dev/vda bs=1M count=64 oflag=direct 2>/dev/null
        t1=$(now)
        dd if=/dev/vda of=/dev/null bs=1M count=64 iflag=direct 2>/dev/null
        t2=$(now)
        echo "hv-linux: disk bench: write 64 MiB $(awk "BEGIN {print $t1 - $t0}") s, read 64 MiB $(awk "BEGIN {print $t2 - $t1}") s"
    elif [ -b /dev/vda ]; then
        mkdir -p /data
        how="existing filesystem"
        case "$(dd if=/dev/vda bs=1 skip=1080 count=2 2>/dev/null | od -An -tx1)" in
        *"53 ef"*) ;;
        *)
            how="new filesystem"
            mke2fs -q -F /dev/vda >/dev/null 2>&1 || how="no filesystem (mke2fs failed)"
            ;;
        esac
        if mount -t ext2 /dev/vda /data; then
            data=1
            echo "hv-linux: /data mounted, $how, $(df -k /data | tail -1 | awk '{print $2}') KiB"
        else
            echo "hv-linux: /data not mounted ($how)"
        fi
    else
        echo "hv-linux: virtio disk found but no /dev/vda"
    fi
fi

# hv.bench=net: `cargo xtask bench`'s VM-to-VM figures, between two VMs of this
# kernel and initramfs on one network. The sink (hv.netsink=PORT) counts what one
# TCP connection brings it; the source (hv.netsource=ADDR:PORT) pings ADDR 20
# times 0.2 s apart (busybox prints min/avg/max by the guest's clock), then sends
# hv.netmib MiB of zeros through busybox nc. The transfer is timed by the host,
# from the arrival of the source's `tcp start` line to that of the sink's `tcp
# received` line on the serial ports: the source's nc ends at the end of its
# input with data still in flight, so only the receiving end sees the transfer end.
case " $(cat /proc/cmdline) " in
*" hv.bench=net "*)
    sinkport=$(arg netsink)
    source=$(arg netsource)
    if [ -z "$net" ]; then
        echo "hv-linux: net bench: FAIL no network (no eth0 with an address)"
    elif [ -n "$sinkport" ]; then
        # Its stdin a FIFO this shell holds open and never writes (see the TCP
        # check's listener above: at end of input nc would close the connection).
        mkfifo /tmp/sink-in
        ( timeout 300 nc -l -p "$sinkport" < /tmp/sink-in | wc -c > /tmp/sunk ) &
        sink=$!
        exec 3> /tmp/sink-in
        echo "hv-linux: net bench: listening on port $sinkport"
        wait $sink
        echo "hv-linux: net bench: tcp received $(cat /tmp/sunk) bytes"
    elif [ -n "$source" ]; then
        peer=${source%:*}
        port=${source##*:}
        mib=$(arg netmib)
        # The sink may still be booting: wait (up to about 2 minutes) for it.
        i=0
        while ! ping -c 1 -W 2 "$peer" >/dev/null 2>&1 && [ $i -lt 60 ]; do i=$((i+1)); done
        # Ping's round trips are only as fine as the clock it reads.
        echo "hv-linux: net bench: clocksource $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
        ping -c 20 -i 0.2 -W 2 "$peer" > /tmp/ping 2>&1
        echo "hv-linux: net bench: ping $peer: $(grep 'packet loss' /tmp/ping); $(grep 'round-trip' /tmp/ping)"
        # 100 echo requests back to back (-A: the next one as soon as the answer
        # came), timed by the host between these two lines: finer than a clock
        # that ticks in jiffies.
        echo "hv-linux: net bench: ping burst start 100 to $peer"
        ping -A -c 100 -W 2 -q "$peer" > /tmp/burst 2>&1
        echo "hv-linux: net bench: ping burst done: $(grep 'packet loss' /tmp/burst)"
        echo "hv-linux: net bench: tcp start $((mib * 1048576)) bytes to $peer:$port"
        dd if=/dev/zero bs=64k count=$((mib * 16)) 2>/dev/null | timeout 300 nc "$peer" "$port"
        rc=$?
        # Power off only once the data is out: while the connection is still
        # ESTABLISHED (01), FIN_WAIT1 (04) or CLOSING (0B) in /proc/net/tcp, the
        # sink has not acknowledged everything (at most 60 s).
        hex=$(awk "BEGIN { printf \"%04X\", $port }")
        i=0
        while [ $i -lt 600 ] && awk -v p=":$hex" '$3 ~ p"$" && ($4 == "01" || $4 == "04" || $4 == "0B") { f = 1 } END { exit !f }' /proc/net/tcp; do
            usleep 100000; i=$((i+1))
        done
        echo "hv-linux: net bench: tcp sent, nc exit status $rc"
    else
        echo "hv-linux: net bench: FAIL neither hv.netsink= nor hv.netsource="
    fi
    poweroff -f
    ;;
esac

case " $(cat /proc/cmdline) " in
*" hv.test=1 "*)
    # A parallel workload: one busy worker per online CPU, all to finish.
    n=$(nproc)
    i=0
    while [ $i -lt $n ]; do
        ( k=0; while [ $k -lt 2000 ]; do k=$((k+1)); done ) &
        i=$((i+1))
    done
    wait
    echo "hv-linux: parallel workload done ($n workers)"
    # The hypervisor's metrics (hv.metrics=ADDR): fetched once it answers, and
    # printed line by line for the test to parse.
    hv=$(arg metrics)
    if [ -n "$hv" ]; then
        udp0=$(udp_noports)
        i=0
        # (busybox 1.35's wget has no -T: timeout bounds it.)
        while ! timeout 5 wget -q -O /tmp/metrics "http://$hv/metrics" 2>/dev/null && [ $i -lt 30 ]; do
            i=$((i+1)); sleep 1
        done
        if [ -s /tmp/metrics ]; then
            echo "hv-linux: metrics from $hv: $(wc -l < /tmp/metrics) lines"
            while read -r line; do echo "hv-metrics: $line"; done < /tmp/metrics
            echo "hv-linux: metrics end"
        else
            echo "hv-linux: metrics from $hv: no answer"
        fi
        # The access log of that request comes as syslog to this VM's closed
        # port 514 (hv.syslog=1 says this VM is the collector).
        if [ -n "$(arg syslog)" ]; then
            sleep 2
            echo "hv-linux: udp datagrams to closed ports since the scrape: $(($(udp_noports) - udp0))"
        fi
    fi
    # The hypervisor seen from a network that is not the management network
    # (hv.probe=ADDR/PREFIX@HV): eth0 gets an address of the management subnet,
    # and the metrics must stay out of reach.
    probe=$(arg probe)
    if [ -n "$net" ] && [ -n "$probe" ]; then
        ip addr add "${probe%@*}" dev eth0
        if timeout 5 wget -q -O /tmp/probe "http://${probe#*@}/metrics" 2>/dev/null; then
            echo "hv-linux: probe ${probe#*@}: reached the metrics"
        else
            echo "hv-linux: probe ${probe#*@}: unreachable"
        fi
        ip addr del "${probe%@*}" dev eth0
    fi
    peer=$(arg ping)
    if [ -n "$net" ] && [ -n "$peer" ]; then
        # The peer may still be booting: wait (up to about 2 minutes) for a first
        # answer, then the measured ping.
        i=0
        while ! ping -c 1 -W 2 "$peer" >/dev/null 2>&1 && [ $i -lt 60 ]; do i=$((i+1)); done
        ping -c 3 -W 2 "$peer" > /tmp/ping 2>&1
        echo "hv-linux: ping $peer: $(grep 'packet loss' /tmp/ping)"
        port=$(arg send)
        if [ -n "$port" ]; then
            dd if=/dev/urandom of=/tmp/tx bs=1024 count=64 2>/dev/null
            timeout 30 nc "$peer" "$port" < /tmp/tx
            # nc ends at the end of its input, with the last segments still in the
            # kernel's send buffer: give them time to go out before powering off.
            sleep 3
            echo "hv-linux: tcp sent $(wc -c < /tmp/tx) bytes sha256 $(sha256sum /tmp/tx | cut -d' ' -f1)"
        fi
    fi
    fetch=$(arg fetch)
    if [ -n "$net" ] && [ -n "$fetch" ]; then
        # Through the uplink (hv.fetch=ADDR:PORT): a line to a server outside, and
        # its answer.
        echo "hv-linux-hello" | timeout 30 nc "${fetch%:*}" "${fetch##*:}" > /tmp/fetched 2>&1
        echo "hv-linux: fetch $fetch: $(cat /tmp/fetched)"
    fi
    if [ -n "$server" ]; then
        wait $server
        echo "hv-linux: served: $(cat /tmp/served)"
    fi
    if [ -n "$listener" ]; then
        wait $listener
        echo "hv-linux: tcp received $(wc -c < /tmp/rx) bytes sha256 $(sha256sum /tmp/rx | cut -d' ' -f1)"
    fi
    if [ -n "$net" ]; then
        echo "hv-linux: eth0 counters rx $(cat /sys/class/net/eth0/statistics/rx_packets) tx $(cat /sys/class/net/eth0/statistics/tx_packets)"
    fi
    if [ -n "$data" ]; then
        # Per virtio interrupt (MSI-X vectors are named virtio0-config and
        # virtio0-req.0; an INTx line just virtio0): its name and count.
        echo "hv-linux: virtio interrupts: $(awk '/virtio/ {n=0; for (i=2; i<=NF-3; i++) n+=$i; printf "%s=%d ", $NF, n}' /proc/interrupts)"
        boots=$(cat /data/hv-boots 2>/dev/null || echo 0)
        boots=$((boots+1))
        echo $boots > /data/hv-boots
        echo "hv-persist-marker boot $boots" >> /data/hv-marker.txt
        sync
        umount /data && echo "hv-linux: /data boots $boots, unmounted"
    fi
    poweroff -f
    ;;
esac
# A shell on the serial console, as its controlling terminal (job control works).
exec /bin/busybox setsid /bin/busybox cttyhack /bin/sh </dev/ttyS0 >/dev/ttyS0 2>&1
"#;

/// Busybox applets linked into /bin (the init script and a usable shell).
const APPLETS: &[&str] = &[
    "sh",
    "mount",
    "umount",
    "echo",
    "cat",
    "uname",
    "ls",
    "poweroff",
    "nproc",
    "insmod",
    "lsmod",
    "mkdir",
    "mke2fs",
    "dd",
    "od",
    "df",
    "awk",
    "tail",
    "head",
    "grep",
    "sync",
    "usleep",
    "sleep",
    "rm",
    "cp",
    "mv",
    "touch",
    "dmesg",
    "ps",
    "free",
    "vi",
    "hexdump",
    "sha256sum",
    "[",
    "test",
    "ip",
    "ping",
    "nc",
    "timeout",
    "mkfifo",
    "cut",
    "wc",
    "wget",
];

/// The initramfs: a newc cpio with busybox, its applet links, the console device
/// nodes, and `/init`.
pub fn initramfs(busybox: &[u8], modules: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut c = Cpio::default();
    for d in [
        "bin",
        "sbin",
        "proc",
        "sys",
        "dev",
        "etc",
        "lib",
        "lib/modules",
    ] {
        c.dir(d, 0o755);
    }
    let mut order = String::new();
    for (name, ko) in modules {
        c.file(&format!("lib/modules/{name}.ko"), 0o644, ko);
        order.push_str(name);
        order.push('\n');
    }
    c.file("lib/modules/order", 0o644, order.as_bytes());
    // Linux opens /dev/console for init's stdio before /init runs, so it must be in
    // the archive (the kernel's built-in initramfs usually has it too).
    c.char_dev("dev/console", 0o600, 5, 1);
    c.char_dev("dev/ttyS0", 0o660, 4, 64);
    c.char_dev("dev/null", 0o666, 1, 3);
    c.file("bin/busybox", 0o755, busybox);
    for a in APPLETS {
        c.symlink(&format!("bin/{a}"), "busybox");
    }
    c.file("init", 0o755, INIT_SCRIPT.as_bytes());
    c.finish()
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;
const TRAILER: &str = "TRAILER!!!";

/// A writer for the newc ("070701") cpio format that Linux unpacks as its
/// initramfs: per entry a 110-byte ASCII header (magic, then 13 fields of 8 hex
/// digits), the NUL-terminated name padded to 4 bytes, and the data padded to 4
/// bytes; the archive ends with an entry named `TRAILER!!!`. Times are 0, owners
/// root, so the archive is reproducible.
#[derive(Default)]
pub struct Cpio {
    out: Vec<u8>,
    next_ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        self.next_ino += 1;
        let ino = if name == TRAILER { 0 } else { self.next_ino };
        let fields = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            data.len() as u32,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check (newc has no checksum)
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    pub fn dir(&mut self, name: &str, perm: u32) {
        self.entry(name, S_IFDIR | perm, 2, (0, 0), b"");
    }

    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, S_IFREG | perm, 1, (0, 0), data);
    }

    pub fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes());
    }

    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) {
        self.entry(name, S_IFCHR | perm, 1, (major, minor), b"");
    }

    /// Appends the trailer and returns the archive.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry(TRAILER, 0, 1, (0, 0), b"");
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    struct Entry {
        name: String,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: Vec<u8>,
        at: usize,
    }

    /// An independent newc reader: checks magic, hex fields, NUL, and that every
    /// header, name and data block is padded to 4 bytes with zeros.
    fn parse(mut b: &[u8]) -> Vec<Entry> {
        let total = b.len();
        let mut entries = Vec::new();
        loop {
            let at = total - b.len();
            assert_eq!(at % 4, 0, "header at {at} not 4-byte aligned");
            assert_eq!(&b[..6], b"070701", "magic at {at}");
            let field = |i: usize| {
                let s = std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).unwrap();
                u32::from_str_radix(s, 16).unwrap()
            };
            let (mode, nlink, size, namesize) = (field(1), field(4), field(6), field(11));
            let rdev = (field(9), field(10));
            let name_end = 110 + namesize as usize;
            assert_eq!(b[name_end - 1], 0, "name not NUL-terminated");
            let name = std::str::from_utf8(&b[110..name_end - 1])
                .unwrap()
                .to_string();
            let data_at = name_end.next_multiple_of(4);
            assert!(b[name_end..data_at].iter().all(|&x| x == 0));
            let data_end = data_at + size as usize;
            let next = data_end.next_multiple_of(4);
            assert!(b[data_end..next].iter().all(|&x| x == 0));
            let data = b[data_at..data_end].to_vec();
            b = &b[next..];
            let done = name == TRAILER;
            entries.push(Entry {
                name,
                mode,
                nlink,
                rdev,
                data,
                at,
            });
            if done {
                assert!(b.is_empty(), "bytes after the trailer");
                return entries;
            }
        }
    }

    #[test]
    fn cpio_round_trip() {
        let mut c = Cpio::default();
        c.dir("bin", 0o755);
        c.file("bin/a", 0o644, b"12345"); // 5 bytes: data needs padding
        c.symlink("bin/sh", "busybox");
        c.char_dev("dev/console", 0o600, 5, 1);
        c.file("e", 0o600, b"");
        let b = c.finish();
        assert_eq!(b.len() % 4, 0);
        let e = parse(&b);
        let names: Vec<&str> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            ["bin", "bin/a", "bin/sh", "dev/console", "e", "TRAILER!!!"]
        );
        assert_eq!((e[0].mode, e[0].nlink), (0o040755, 2));
        assert_eq!((e[1].mode, e[1].data.as_slice()), (0o100644, &b"12345"[..]));
        assert_eq!(
            (e[2].mode, e[2].data.as_slice()),
            (0o120777, &b"busybox"[..])
        );
        assert_eq!((e[3].mode, e[3].rdev), (0o020600, (5, 1)));
        assert_eq!(e[4].data, b"");
        assert_eq!((e[5].mode, e[5].data.len()), (0, 0));
        // The first header: "070701", inode 1, the name "bin" padded: 110 + 4 = 114
        // -> the next header at 116.
        assert_eq!(&b[..14], b"07070100000001");
        assert_eq!(e[1].at, 116);
    }

    #[test]
    fn modules_load_after_what_they_depend_on() {
        let ko = |deps: &str| format!("license=GPL\0depends={deps}\0vermagic=6.1\0").into_bytes();
        let mods = vec![
            ("ext4".to_string(), ko("jbd2,mbcache,crc16")),
            ("virtio_pci".to_string(), ko("virtio_ring,virtio")),
            ("crc16".to_string(), ko("")),
            ("virtio".to_string(), ko("virtio_ring")),
            ("jbd2".to_string(), ko("")),
            ("mbcache".to_string(), ko("")),
            ("virtio_ring".to_string(), ko("")),
        ];
        assert_eq!(module_depends(&mods[0].1), ["jbd2", "mbcache", "crc16"]);
        assert!(module_depends(b"depends=\0").is_empty());
        let order = load_order(&mods).unwrap();
        assert_eq!(order.len(), mods.len());
        let at = |n: &str| order.iter().position(|o| o == n).unwrap();
        assert!(at("jbd2") < at("ext4") && at("mbcache") < at("ext4") && at("crc16") < at("ext4"));
        assert!(at("virtio_ring") < at("virtio") && at("virtio") < at("virtio_pci"));
        // A dependency the guest does not carry, and a cycle, are errors.
        let missing = vec![("ext4".to_string(), ko("jbd2"))];
        assert!(load_order(&missing).unwrap_err().contains("needs jbd2"));
        let cycle = vec![("a".to_string(), ko("b")), ("b".to_string(), ko("a"))];
        assert!(load_order(&cycle).unwrap_err().contains("cycle"));
        assert_eq!(module_name("drivers/virtio/virtio-x.ko"), "virtio_x");
    }

    #[test]
    fn initramfs_carries_the_modules_and_their_order() {
        let mods = vec![
            ("a".to_string(), b"A".to_vec()),
            ("b".to_string(), b"B".to_vec()),
        ];
        let e = parse(&initramfs(b"bb", &mods));
        let file = |n: &str| e.iter().find(|x| x.name == n).map(|x| x.data.clone());
        assert_eq!(file("lib/modules/a.ko").unwrap(), b"A");
        assert_eq!(file("lib/modules/b.ko").unwrap(), b"B");
        assert_eq!(file("lib/modules/order").unwrap(), b"a\nb\n");
        assert!(INIT_SCRIPT.contains("insmod /lib/modules/$m.ko"));
    }

    #[test]
    fn initramfs_has_what_init_needs() {
        let e = parse(&initramfs(b"\x7fELF busybox", &[]));
        let find = |n: &str| {
            e.iter()
                .find(|e| e.name == n)
                .unwrap_or_else(|| panic!("{n}"))
        };
        for d in ["bin", "sbin", "proc", "sys", "dev", "etc"] {
            assert_eq!(find(d).mode & 0o170000, S_IFDIR, "{d}");
        }
        assert_eq!(find("bin/busybox").data, b"\x7fELF busybox");
        assert_eq!(find("bin/busybox").mode, 0o100755);
        for a in ["sh", "mount", "echo", "cat", "uname", "ls", "poweroff"] {
            let l = find(&format!("bin/{a}"));
            assert_eq!((l.mode, l.data.as_slice()), (0o120777, &b"busybox"[..]));
        }
        assert_eq!(find("dev/console").rdev, (5, 1));
        assert_eq!(find("dev/ttyS0").rdev, (4, 64));
        let init = find("init");
        assert_eq!(init.mode, 0o100755);
        let script = std::str::from_utf8(&init.data).unwrap();
        assert!(script.starts_with("#!/bin/sh\n"));
        for needed in [
            "mount -t proc proc /proc",
            "mount -t sysfs sysfs /sys",
            "echo \"hv-linux: init running\"",
            "$(uname -r)",
            "echo \"hv-linux: userspace ok\"",
            "/proc/cmdline",
            "hv.test=1",
            "poweroff -f",
            "/bin/sh </dev/ttyS0",
        ] {
            assert!(script.contains(needed), "{needed}");
        }
        assert_eq!(e.last().unwrap().name, "TRAILER!!!");
    }

    #[test]
    fn apt_output_parsing() {
        let show = "Package: linux-image-amd64\nSource: linux-signed-amd64 (6.1.192+2)\n\
                    Version: 6.1.192-2\nDepends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)\n\
                    Description: Linux for 64-bit PCs (meta-package)\n\n\
                    Package: busybox-static\nVersion: 1:1.35.0-4+deb12u1+b1\nSize: 1\n\n";
        let (_, depends) = record(show, KERNEL_META).unwrap();
        assert_eq!(
            kernel_from_depends(depends),
            Some((
                "linux-image-6.1.0-56-amd64".into(),
                Some("6.1.192-2".into())
            ))
        );
        assert_eq!(
            kernel_from_depends("linux-image-6.12.9-amd64, other"),
            Some(("linux-image-6.12.9-amd64".into(), None))
        );
        assert_eq!(kernel_from_depends("initramfs-tools"), None);
        assert_eq!(
            record(show, BUSYBOX).map(|r| r.0),
            Some("1:1.35.0-4+deb12u1+b1")
        );
        assert_eq!(record(show, "nope"), None);
        let k = Package {
            name: "linux-image-6.1.0-56-amd64".into(),
            version: "6.1.192-2".into(),
        };
        let b = Package {
            name: BUSYBOX.into(),
            version: "1:1.35.0-4".into(),
        };
        assert_eq!(
            cache_key(&k, &b),
            "linux-image-6.1.0-56-amd64_6.1.192-2+busybox_1_1.35.0-4"
        );
    }

    #[test]
    fn the_linux_vm() {
        let g = LinuxGuest {
            bzimage: "/c/bzImage".into(),
            initrd: "/c/initrd.cpio".into(),
        };
        let vm = linux_vm(&g, false);
        assert_eq!(vm.name, "linux");
        assert_eq!(vm.memory_kib, 256 * 1024);
        assert_eq!(vm.format, ImageFormat::Linux);
        assert_eq!(vm.cmdline, LINUX_CMDLINE);
        assert_eq!(vm.modules[0].path, g.initrd);
        assert!(linux_vm(&g, true).cmdline.ends_with(" quiet hv.test=1"));
    }

    #[test]
    fn a_cached_guest_needs_no_apt() {
        let cache = std::env::temp_dir().join(format!("hv-linux-cache-{}", std::process::id()));
        let manual = cache.join("manual");
        fs::create_dir_all(&manual).unwrap();
        fs::write(manual.join("bzImage"), b"k").unwrap();
        fs::write(manual.join("busybox"), b"b").unwrap();
        assert_eq!(newest_cached(&cache), Some(manual.clone()));
        let g = finish(&manual).unwrap();
        assert_eq!(g.initrd, manual.join("initrd.cpio"));
        assert_eq!(fs::read(&g.initrd).unwrap(), initramfs(b"b", &[]));
        assert_eq!(
            fs::read_link(cache.join("current")).unwrap(),
            Path::new("manual")
        );
        assert_eq!(newest_cached(&cache), Some(manual.clone()));
        fs::remove_dir_all(&cache).unwrap();
    }

    /// The real download (network, ~70 MB): `cargo test -p xtask -- --ignored
    /// debian_download`. Prints what it got.
    #[test]
    #[ignore]
    fn debian_download() {
        let cache = default_cache_dir();
        let g = debian_linux(&cache).unwrap();
        let vm = crate::config::check(&linux_vm(&g, true)).unwrap();
        let dir = g.bzimage.parent().unwrap();
        eprintln!(
            "{}: bzImage {} bytes, initrd {} bytes, kernel release {}",
            dir.display(),
            fs::metadata(&g.bzimage).unwrap().len(),
            fs::metadata(&g.initrd).unwrap().len(),
            fs::read_to_string(dir.join("kernel-release"))
                .unwrap()
                .trim()
        );
        assert_eq!(vm.format, ImageFormat::Linux);
        // The second call finds the cache.
        assert_eq!(debian_linux(&cache).unwrap(), g);
    }
}
