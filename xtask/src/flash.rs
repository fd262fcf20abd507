//! `cargo xtask flash <device>`: write the hypervisor's disk image to a USB stick so a
//! real test machine can boot it.
//!
//! Writing a raw image to the wrong disk destroys it, so almost all of this module is
//! about refusing: the target must be a whole-disk block device that is removable (or
//! hangs off a USB bus), is not read-only, has a medium, and neither it nor any of its
//! partitions is mounted, used as swap, or held by device-mapper/RAID. Only then is the
//! user asked to type `yes`.
//!
//! The decisions are pure functions over injected inputs (a sysfs root directory and the
//! text of `/proc/self/mounts` and `/proc/swaps`) so they are tested on the host against
//! a fake sysfs tree; [`flash`] only gathers the real inputs, asks, and copies.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Size of each read/write: large enough that per-syscall overhead is irrelevant, small
/// enough that progress updates often on a slow stick.
pub const CHUNK_SIZE: usize = 4 * 1024 * 1024;

/// `size` in sysfs is always counted in 512-byte sectors, whatever the logical block
/// size of the device.
const SECTOR_SIZE: u64 = 512;

/// `O_EXCL` on a block device (without `O_CREAT`) makes Linux fail the open with EBUSY
/// when the kernel itself uses the device (mounted, swap, dm/md member). It closes the
/// window between our checks and the write. std exposes no constant, and the value is
/// 0o200 on the generic Linux ABI (x86, x86_64, arm, aarch64, riscv); on others we skip it.
#[cfg(all(
    target_os = "linux",
    any(
        target_arch = "x86",
        target_arch = "x86_64",
        target_arch = "arm",
        target_arch = "aarch64",
        target_arch = "riscv64"
    )
))]
const O_EXCL: i32 = 0o200;
#[cfg(not(all(
    target_os = "linux",
    any(
        target_arch = "x86",
        target_arch = "x86_64",
        target_arch = "arm",
        target_arch = "aarch64",
        target_arch = "riscv64"
    )
)))]
const O_EXCL: i32 = 0;

/// Why a device was accepted as a flash target; printed so the user can see which
/// heuristic vouched for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Criterion {
    /// sysfs `removable` reads 1 (USB sticks, SD card readers).
    Removable,
    /// `removable` reads 0 but the device sits on a USB bus (most USB SSDs and
    /// USB-NVMe enclosures report themselves as fixed disks).
    Usb,
}

impl fmt::Display for Criterion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Criterion::Removable => f.write_str("removable=1"),
            Criterion::Usb => f.write_str("attached over USB (removable=0)"),
        }
    }
}

/// What the checks learned about an acceptable target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Kernel name, e.g. `sdb`.
    pub name: String,
    /// `vendor model` from sysfs, or `unknown model`.
    pub model: String,
    /// Capacity in bytes.
    pub size_bytes: u64,
    /// Which criterion made it acceptable.
    pub criterion: Criterion,
}

/// Writes `image` to the whole-disk block device `device` after the safety checks and,
/// unless `assume_yes`, an interactive `yes` confirmation.
pub fn flash(image: &Path, device: &Path, assume_yes: bool) -> Result<(), String> {
    let image_meta =
        fs::metadata(image).map_err(|e| format!("cannot read image {}: {e}", image.display()))?;
    if !image_meta.is_file() {
        return Err(format!("image {} is not a regular file", image.display()));
    }
    let image_size = image_meta.len();
    if image_size == 0 {
        return Err(format!("image {} is empty", image.display()));
    }

    let (dev_path, rdev) = resolve_block_device(device)?;
    let sys_root = Path::new("/sys");
    let name = sysfs_name(sys_root, &dev_path, rdev);
    let mounts = fs::read_to_string("/proc/self/mounts")
        .map_err(|e| format!("cannot read /proc/self/mounts: {e}"))?;
    // A kernel without swap support has no /proc/swaps: nothing can be swapped on then.
    let swaps = fs::read_to_string("/proc/swaps").unwrap_or_default();
    let info = check_device(sys_root, &name, &mounts, &swaps)?;
    check_fits(image_size, info.size_bytes, &dev_path)?;

    let dev = dev_path.display();
    let size = human_size(info.size_bytes);
    eprintln!(
        "target: {dev} ({}, {size}; accepted: {})",
        info.model, info.criterion
    );
    if device != dev_path {
        eprintln!("        (resolved from {})", device.display());
    }
    eprintln!("image:  {} ({})", image.display(), human_size(image_size));

    if !assume_yes {
        let stdin = io::stdin();
        if !stdin.is_terminal() {
            return Err(
                "stdin is not a terminal, so cannot ask for confirmation; pass --yes to \
                 write without asking"
                    .to_string(),
            );
        }
        eprint!("{}", confirmation_prompt(image, &dev_path, &info));
        io::stderr().flush().ok();
        let mut answer = String::new();
        stdin
            .lock()
            .read_line(&mut answer)
            .map_err(|e| format!("cannot read the answer: {e}"))?;
        if !parse_confirmation(&answer) {
            return Err("aborted; nothing was written".to_string());
        }
    }

    let mut src =
        File::open(image).map_err(|e| format!("cannot open image {}: {e}", image.display()))?;
    // No truncate/create: it is a device node. Buffered (no O_SYNC) writes go through the
    // page cache at full speed; the single fsync at the end makes them durable.
    let mut dst = OpenOptions::new()
        .write(true)
        .custom_flags(O_EXCL)
        .open(&dev_path)
        .map_err(|e| {
            // 16 is EBUSY on Linux: what O_EXCL returns for a device the kernel uses.
            if e.raw_os_error() == Some(16) {
                format!("{dev} is busy (mounted or in use by the kernel); unmount it first")
            } else {
                format!("cannot open {dev} for writing: {e} (try sudo, or join the disk group)")
            }
        })?;
    // The node could have been replaced since it was checked (stick swapped, udev
    // renaming); make sure we opened the very device we vetted.
    let opened = dst
        .metadata()
        .map_err(|e| format!("cannot stat {dev}: {e}"))?;
    if !opened.file_type().is_block_device() || opened.rdev() != rdev {
        return Err(format!(
            "{dev} changed while it was being checked; try again"
        ));
    }

    let mut stderr = io::stderr();
    write_image(&mut src, &mut dst, image_size, &mut stderr)?;
    eprintln!("flushing cached writes to {dev} (can take a while on slow sticks)...");
    dst.sync_all()
        .map_err(|e| format!("fsync of {dev} failed: {e}"))?;
    eprintln!("synced; it is safe to remove {dev}");
    Ok(())
}

/// Resolves symlinks such as `/dev/disk/by-id/usb-...` and requires a block device.
/// Returns the canonical path and its device number.
fn resolve_block_device(device: &Path) -> Result<(PathBuf, u64), String> {
    let dev_path = fs::canonicalize(device)
        .map_err(|e| format!("cannot resolve {}: {e}", device.display()))?;
    let meta =
        fs::metadata(&dev_path).map_err(|e| format!("cannot stat {}: {e}", dev_path.display()))?;
    if !meta.file_type().is_block_device() {
        return Err(format!(
            "{} is not a block device; pass a whole disk such as /dev/sdb \
             (see `lsblk -o NAME,TRAN,RM,SIZE,MODEL`)",
            dev_path.display()
        ));
    }
    Ok((dev_path, meta.rdev()))
}

/// Splits a Linux `dev_t` (glibc encoding) into major and minor numbers.
fn dev_major_minor(rdev: u64) -> (u64, u64) {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major, minor)
}

/// The kernel's name for the device. A /dev node may carry any name (custom udev rules),
/// so prefer `<sys_root>/dev/block/MAJ:MIN`, which links to the real sysfs node; fall
/// back to the node's file name.
fn sysfs_name(sys_root: &Path, dev_path: &Path, rdev: u64) -> String {
    let (major, minor) = dev_major_minor(rdev);
    let link = sys_root.join(format!("dev/block/{major}:{minor}"));
    fs::canonicalize(link)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| {
            dev_path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
}

/// Reads a sysfs attribute, trimmed; `None` when absent or unreadable.
fn read_attr(dir: &Path, attr: &str) -> Option<String> {
    fs::read_to_string(dir.join(attr))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Virtual or optical kinds that are never a USB stick, whatever `removable` says
/// (optical drives report removable=1).
const VIRTUAL_PREFIXES: &[(&str, &str)] = &[
    ("loop", "a loop device"),
    ("ram", "a RAM disk"),
    ("zram", "a compressed RAM disk"),
    ("dm-", "a device-mapper (LVM/LUKS) volume"),
    ("md", "a software RAID array"),
    ("nbd", "a network block device"),
    ("sr", "an optical drive"),
    ("fd", "a floppy drive"),
    ("mtdblock", "an on-board flash chip"),
];

/// Decides whether `<sys_root>/class/block/<dev_name>` is an acceptable flash target,
/// given the contents of `/proc/self/mounts` and `/proc/swaps`.
pub fn check_device(
    sys_root: &Path,
    dev_name: &str,
    mounts: &str,
    swaps: &str,
) -> Result<DeviceInfo, String> {
    let dev = format!("/dev/{dev_name}");
    let node = sys_root.join("class/block").join(dev_name);
    if dev_name.is_empty() || dev_name.contains('/') || !node.is_dir() {
        return Err(format!(
            "{dev} is unknown to the kernel (no {}); pass a whole disk such as /dev/sdb",
            node.display()
        ));
    }

    if node.join("partition").exists() {
        let disk = parent_disk(&node, dev_name);
        return Err(format!(
            "{dev} is a partition; pass the whole disk /dev/{disk} (the image carries its own \
             partition table)"
        ));
    }

    for (prefix, what) in VIRTUAL_PREFIXES {
        if dev_name.starts_with(prefix) {
            return Err(format!("{dev} is {what}, not a USB stick; refusing"));
        }
    }

    // In real sysfs `device` links to e.g. /sys/devices/pci0000:00/0000:00:14.0/usb2/2-1/…
    let on_usb = fs::canonicalize(node.join("device"))
        .map(|p| p.to_string_lossy().contains("/usb"))
        .unwrap_or(false);
    let removable = read_attr(&node, "removable");
    let criterion = if dev_name.starts_with("nvme") && !on_usb {
        return Err(format!(
            "{dev} is an internal NVMe disk (not on a USB bus); refusing"
        ));
    } else if removable.as_deref() == Some("1") {
        Criterion::Removable
    } else if on_usb {
        Criterion::Usb
    } else {
        return Err(format!(
            "{dev} is not removable (removable={}) and not on a USB bus; refusing to \
             overwrite what looks like an internal disk",
            removable.as_deref().unwrap_or("?")
        ));
    };

    if read_attr(&node, "ro").as_deref() == Some("1") {
        return Err(format!(
            "{dev} is read-only (write-protect switch on the stick or card?)"
        ));
    }

    let sectors: u64 = read_attr(&node, "size")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("cannot read the size of {dev} from sysfs"))?;
    if sectors == 0 {
        return Err(format!(
            "{dev} has no medium (size 0); insert the card or stick"
        ));
    }

    let mut members = vec![dev_name.to_string()];
    members.extend(partitions(&node));
    check_not_in_use(sys_root, &members, mounts, swaps)?;

    let device_dir = node.join("device");
    let model = [
        read_attr(&device_dir, "vendor"),
        read_attr(&device_dir, "model"),
    ]
    .into_iter()
    .flatten()
    .filter(|s| !s.is_empty())
    .collect::<Vec<_>>()
    .join(" ");
    let model = if model.is_empty() {
        "unknown model".to_string()
    } else {
        model
    };

    Ok(DeviceInfo {
        name: dev_name.to_string(),
        model,
        size_bytes: sectors.saturating_mul(SECTOR_SIZE),
        criterion,
    })
}

/// The whole disk a partition belongs to: in sysfs a partition's directory sits inside
/// its disk's directory. Falls back to stripping the partition number (`sdb1` → `sdb`,
/// `mmcblk0p1` → `mmcblk0`) if the tree is not shaped that way.
fn parent_disk(node: &Path, part_name: &str) -> String {
    if let Some(parent) = fs::canonicalize(node)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        if parent.join("dev").exists() || parent.join("size").exists() {
            if let Some(n) = parent.file_name() {
                return n.to_string_lossy().into_owned();
            }
        }
    }
    let base = part_name.trim_end_matches(|c: char| c.is_ascii_digit());
    match base.strip_suffix('p') {
        Some(b) if b.ends_with(|c: char| c.is_ascii_digit()) => b.to_string(),
        _ => base.to_string(),
    }
}

/// Names of the partitions of a disk: subdirectories of its sysfs node that carry a
/// `partition` attribute.
fn partitions(node: &Path) -> Vec<String> {
    let mut parts: Vec<String> = fs::read_dir(node)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("partition").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    parts.sort();
    parts
}

/// Refuses when the disk or a partition is mounted, used as swap, or held by another
/// block device (LUKS, LVM, RAID), naming what uses it.
fn check_not_in_use(
    sys_root: &Path,
    members: &[String],
    mounts: &str,
    swaps: &str,
) -> Result<(), String> {
    let mut problems = Vec::new();
    for (source, target) in parse_mounts(mounts) {
        if let Some(name) = dev_source_name(&source) {
            if members.contains(&name) {
                problems.push(format!(
                    "/dev/{name} is mounted on {target}; unmount it first (umount {target})"
                ));
            }
        }
    }
    for source in parse_swaps(swaps) {
        if let Some(name) = dev_source_name(&source) {
            if members.contains(&name) {
                problems.push(format!(
                    "/dev/{name} is in use as swap; run `swapoff /dev/{name}` first"
                ));
            }
        }
    }
    // A partition opened by dm-crypt/LVM/md is mounted through /dev/dm-N, which the
    // mount table names instead of the partition; sysfs `holders` exposes that link.
    for member in members {
        let holders = sys_root.join("class/block").join(member).join("holders");
        let mut held_by: Vec<String> = fs::read_dir(holders)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        held_by.sort();
        for holder in held_by {
            problems.push(format!(
                "/dev/{member} is in use by /dev/{holder} (LUKS/LVM/RAID); close or \
                 deactivate it first"
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// `(source, mount point)` pairs of a `/proc/self/mounts` text, with the octal escapes
/// the kernel uses for spaces and friends decoded.
fn parse_mounts(mounts: &str) -> Vec<(String, String)> {
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let source = fields.next()?;
            let target = fields.next()?;
            Some((unescape_octal(source), unescape_octal(target)))
        })
        .collect()
}

/// Swap areas of a `/proc/swaps` text (the first line is a header).
fn parse_swaps(swaps: &str) -> Vec<String> {
    swaps
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().next())
        .map(unescape_octal)
        .collect()
}

/// Decodes `\040`-style escapes (space, tab, newline, backslash) from /proc tables.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            if let Ok(b) = u8::try_from(v) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Kernel device name behind a mount/swap source such as `/dev/sdb1` or
/// `/dev/disk/by-uuid/…`; `None` for non-device sources (tmpfs, proc, swap files).
fn dev_source_name(source: &str) -> Option<String> {
    if !source.starts_with("/dev/") {
        return None;
    }
    // Symlinks (by-uuid, by-label, /dev/mapper/x → /dev/dm-0) resolve on the live
    // system; a path that does not resolve is taken literally.
    let path = fs::canonicalize(source).unwrap_or_else(|_| PathBuf::from(source));
    path.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// Refuses an image that does not fit on the device.
fn check_fits(image_size: u64, device_size: u64, dev: &Path) -> Result<(), String> {
    if image_size > device_size {
        Err(format!(
            "the image ({}) is larger than {} ({})",
            human_size(image_size),
            dev.display(),
            human_size(device_size)
        ))
    } else {
        Ok(())
    }
}

/// Binary-unit size with one decimal (`14.9 GiB`), as `lsblk` shows it.
pub fn human_size(bytes: u64) -> String {
    const UNITS: &[&str] = &["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The question asked before writing.
fn confirmation_prompt(image: &Path, dev: &Path, info: &DeviceInfo) -> String {
    format!(
        "Write {} to {} ({}, {})? All data on it will be lost. Type yes to continue: ",
        image.display(),
        dev.display(),
        info.model,
        human_size(info.size_bytes)
    )
}

/// Only the exact word `yes` (surrounding whitespace and the newline ignored) confirms;
/// `y`, `YES` or an empty line abort, since this destroys a disk.
pub fn parse_confirmation(answer: &str) -> bool {
    answer.trim() == "yes"
}

/// One progress line: percent done and average throughput.
fn progress_line(written: u64, total: u64, elapsed: Duration) -> String {
    let percent = if total == 0 {
        100.0
    } else {
        written as f64 * 100.0 / total as f64
    };
    let secs = elapsed.as_secs_f64();
    let mib = written as f64 / (1024.0 * 1024.0);
    let rate = if secs > 0.0 { mib / secs } else { 0.0 };
    format!("{percent:5.1}%  {mib:.0} MiB  {rate:.1} MiB/s")
}

/// Copies `total` bytes from `src` to `dst` in [`CHUNK_SIZE`] chunks, redrawing one
/// progress line (`\r`) on `progress`. Fails if the image is shorter than `total`
/// (it changed under us).
fn write_image(
    src: &mut impl Read,
    dst: &mut impl Write,
    total: u64,
    progress: &mut impl Write,
) -> Result<u64, String> {
    let mut buf = vec![0u8; CHUNK_SIZE];
    let start = Instant::now();
    let mut written = 0u64;
    while written < total {
        let want = usize::try_from(total - written).map_or(CHUNK_SIZE, |r| r.min(CHUNK_SIZE));
        let n = fill(src, &mut buf[..want]).map_err(|e| format!("reading the image: {e}"))?;
        if n == 0 {
            return Err(format!(
                "the image ended after {written} of {total} bytes; was it rebuilt while \
                 flashing?"
            ));
        }
        dst.write_all(&buf[..n])
            .map_err(|e| format!("writing at byte {written}: {e}"))?;
        written += n as u64;
        write!(
            progress,
            "\r{}",
            progress_line(written, total, start.elapsed())
        )
        .ok();
        progress.flush().ok();
    }
    writeln!(progress).ok();
    dst.flush().map_err(|e| format!("writing: {e}"))?;
    Ok(written)
}

/// Reads until `buf` is full or the source ends; `read` may return short counts.
fn fill(src: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match src.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A unique scratch directory, removed on drop (std only, no tempfile crate).
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let dir = std::env::temp_dir().join(format!(
                "xtask-flash-{tag}-{}-{n}-{nanos}",
                std::process::id()
            ));
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A fake sysfs shaped like the real one: nodes live under `devices/…/block/<name>`
    /// and `class/block/<name>` symlinks to them.
    struct FakeSys {
        dir: TempDir,
    }

    const USB_PARENT: &str =
        "devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0";
    const SATA_PARENT: &str = "devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0";

    impl FakeSys {
        fn new(tag: &str) -> Self {
            let dir = TempDir::new(tag);
            fs::create_dir_all(dir.0.join("class/block")).unwrap();
            FakeSys { dir }
        }

        fn root(&self) -> &Path {
            &self.dir.0
        }

        /// Adds a disk of `sectors` 512-byte sectors; returns its node.
        fn disk(&self, name: &str, removable: &str, usb: bool, sectors: u64) -> PathBuf {
            let parent = self.root().join(if usb { USB_PARENT } else { SATA_PARENT });
            fs::create_dir_all(&parent).unwrap();
            fs::write(parent.join("vendor"), "SanDisk \n").unwrap();
            fs::write(parent.join("model"), "Cruzer Blade    \n").unwrap();
            let node = parent.join("block").join(name);
            fs::create_dir_all(node.join("holders")).unwrap();
            fs::write(node.join("removable"), format!("{removable}\n")).unwrap();
            fs::write(node.join("size"), format!("{sectors}\n")).unwrap();
            fs::write(node.join("ro"), "0\n").unwrap();
            fs::write(node.join("dev"), "8:16\n").unwrap();
            symlink(&parent, node.join("device")).unwrap();
            symlink(&node, self.root().join("class/block").join(name)).unwrap();
            node
        }

        fn partition(&self, disk_node: &Path, name: &str) -> PathBuf {
            let node = disk_node.join(name);
            fs::create_dir_all(node.join("holders")).unwrap();
            fs::write(node.join("partition"), "1\n").unwrap();
            fs::write(node.join("size"), "2048\n").unwrap();
            fs::write(node.join("dev"), "8:17\n").unwrap();
            symlink(&node, self.root().join("class/block").join(name)).unwrap();
            node
        }
    }

    /// Fake names (`sdx…`) that do not exist on the test host, so mount sources are
    /// taken literally.
    const GIB16: u64 = 16 * 1024 * 1024 * 1024 / 512;

    #[test]
    fn partition_is_refused_with_whole_disk_hint() {
        let sys = FakeSys::new("part");
        let disk = sys.disk("sdx", "1", true, GIB16);
        sys.partition(&disk, "sdx1");
        let err = check_device(sys.root(), "sdx1", "", "").unwrap_err();
        assert!(err.contains("/dev/sdx1 is a partition"), "{err}");
        assert!(err.contains("pass the whole disk /dev/sdx"), "{err}");
    }

    #[test]
    fn parent_disk_fallback_strips_partition_number() {
        let nowhere = Path::new("/nonexistent-sysfs/none");
        assert_eq!(parent_disk(nowhere, "sdb1"), "sdb");
        assert_eq!(parent_disk(nowhere, "sdb12"), "sdb");
        assert_eq!(parent_disk(nowhere, "mmcblk0p1"), "mmcblk0");
        assert_eq!(parent_disk(nowhere, "nvme0n1p2"), "nvme0n1");
    }

    #[test]
    fn non_removable_sata_disk_is_refused() {
        let sys = FakeSys::new("sata");
        sys.disk("sdx", "0", false, GIB16);
        let err = check_device(sys.root(), "sdx", "", "").unwrap_err();
        assert!(err.contains("not removable"), "{err}");
        assert!(err.contains("not on a USB bus"), "{err}");
    }

    #[test]
    fn removable_disk_is_accepted() {
        let sys = FakeSys::new("rm");
        let disk = sys.disk("sdx", "1", false, GIB16);
        sys.partition(&disk, "sdx1");
        let info = check_device(sys.root(), "sdx", "", "").unwrap();
        assert_eq!(info.name, "sdx");
        assert_eq!(info.criterion, Criterion::Removable);
        assert_eq!(info.size_bytes, 16 * 1024 * 1024 * 1024);
        assert_eq!(info.model, "SanDisk Cruzer Blade");
        assert_eq!(info.criterion.to_string(), "removable=1");
    }

    #[test]
    fn usb_disk_with_removable_zero_is_accepted() {
        let sys = FakeSys::new("usb");
        sys.disk("sdx", "0", true, GIB16);
        let info = check_device(sys.root(), "sdx", "", "").unwrap();
        assert_eq!(info.criterion, Criterion::Usb);
        assert!(info.criterion.to_string().contains("USB"));
    }

    #[test]
    fn virtual_and_internal_kinds_are_refused() {
        let sys = FakeSys::new("virt");
        for name in ["loop0", "ram0", "zram0", "dm-0", "md0", "sr0"] {
            // Even claiming removable=1 (as optical drives do) must not help.
            sys.disk(name, "1", false, GIB16);
            let err = check_device(sys.root(), name, "", "").unwrap_err();
            assert!(err.contains("refusing"), "{name}: {err}");
        }
        sys.disk("nvme0n1", "1", false, GIB16);
        let err = check_device(sys.root(), "nvme0n1", "", "").unwrap_err();
        assert!(err.contains("NVMe"), "{err}");
    }

    #[test]
    fn nvme_on_usb_is_accepted() {
        let sys = FakeSys::new("nvmeusb");
        sys.disk("nvme1n1", "0", true, GIB16);
        let info = check_device(sys.root(), "nvme1n1", "", "").unwrap();
        assert_eq!(info.criterion, Criterion::Usb);
    }

    #[test]
    fn unknown_device_read_only_and_empty_reader_are_refused() {
        let sys = FakeSys::new("misc");
        let err = check_device(sys.root(), "sdq", "", "").unwrap_err();
        assert!(err.contains("unknown to the kernel"), "{err}");

        let node = sys.disk("sdx", "1", true, GIB16);
        fs::write(node.join("ro"), "1\n").unwrap();
        let err = check_device(sys.root(), "sdx", "", "").unwrap_err();
        assert!(err.contains("read-only"), "{err}");

        sys.disk("sdy", "1", true, 0);
        let err = check_device(sys.root(), "sdy", "", "").unwrap_err();
        assert!(err.contains("no medium"), "{err}");
    }

    #[test]
    fn mounted_partition_is_refused_naming_mount_point() {
        let sys = FakeSys::new("mnt");
        let disk = sys.disk("sdx", "1", true, GIB16);
        sys.partition(&disk, "sdx1");
        sys.partition(&disk, "sdx2");
        let mounts = "proc /proc proc rw 0 0\n\
                      /dev/nvme0n1p2 / ext4 rw 0 0\n\
                      /dev/sdx2 /media/me/MY\\040STICK vfat rw 0 0\n";
        let err = check_device(sys.root(), "sdx", mounts, "").unwrap_err();
        assert!(
            err.contains("/dev/sdx2 is mounted on /media/me/MY STICK"),
            "{err}"
        );
        // Another disk's mounts do not matter.
        assert!(!err.contains("nvme"), "{err}");
    }

    #[test]
    fn mounted_whole_disk_is_refused() {
        let sys = FakeSys::new("mntdisk");
        sys.disk("sdx", "1", true, GIB16);
        let err = check_device(sys.root(), "sdx", "/dev/sdx /mnt vfat rw 0 0\n", "").unwrap_err();
        assert!(err.contains("mounted on /mnt"), "{err}");
    }

    #[test]
    fn swap_partition_is_refused() {
        let sys = FakeSys::new("swap");
        let disk = sys.disk("sdx", "1", true, GIB16);
        sys.partition(&disk, "sdx1");
        let swaps = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n\
                     /swapfile                               file\t\t2097148\t\t0\t\t-2\n\
                     /dev/sdx1                               partition\t1048572\t\t0\t\t-3\n";
        let err = check_device(sys.root(), "sdx", "", swaps).unwrap_err();
        assert!(err.contains("/dev/sdx1 is in use as swap"), "{err}");
        // A swap file elsewhere is irrelevant.
        let only_file = "Filename Type Size Used Priority\n/swapfile file 2097148 0 -2\n";
        assert!(check_device(sys.root(), "sdx", "", only_file).is_ok());
    }

    #[test]
    fn partition_held_by_device_mapper_is_refused() {
        let sys = FakeSys::new("holder");
        let disk = sys.disk("sdx", "1", true, GIB16);
        let part = sys.partition(&disk, "sdx1");
        fs::create_dir_all(part.join("holders/dm-3")).unwrap();
        let err = check_device(sys.root(), "sdx", "", "").unwrap_err();
        assert!(err.contains("/dev/sdx1 is in use by /dev/dm-3"), "{err}");
    }

    #[test]
    fn image_larger_than_device_is_refused() {
        let dev = Path::new("/dev/sdx");
        let err = check_fits(2 * 1024 * 1024 * 1024, 1024 * 1024 * 1024, dev).unwrap_err();
        assert!(err.contains("larger than /dev/sdx"), "{err}");
        assert!(err.contains("2.0 GiB") && err.contains("1.0 GiB"), "{err}");
        assert!(check_fits(1024, 1024, dev).is_ok());
    }

    #[test]
    fn human_size_formats_binary_units() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1.0 KiB");
        assert_eq!(human_size(64 * 1024 * 1024), "64.0 MiB");
        assert_eq!(human_size(16_008_609_792), "14.9 GiB");
        assert_eq!(human_size(2 * 1024u64.pow(4)), "2.0 TiB");
        assert_eq!(human_size(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn confirmation_requires_exact_yes() {
        assert!(parse_confirmation("yes\n"));
        assert!(parse_confirmation("  yes \r\n"));
        for no in ["", "\n", "y\n", "YES\n", "Yes", "no", "yes please", "yess"] {
            assert!(!parse_confirmation(no), "{no:?}");
        }
    }

    #[test]
    fn prompt_names_image_device_model_and_size() {
        let info = DeviceInfo {
            name: "sdx".into(),
            model: "SanDisk Cruzer Blade".into(),
            size_bytes: 16_008_609_792,
            criterion: Criterion::Removable,
        };
        let p = confirmation_prompt(Path::new("hv.img"), Path::new("/dev/sdx"), &info);
        assert_eq!(
            p,
            "Write hv.img to /dev/sdx (SanDisk Cruzer Blade, 14.9 GiB)? All data on it will \
             be lost. Type yes to continue: "
        );
    }

    #[test]
    fn mount_table_escapes_are_decoded() {
        assert_eq!(unescape_octal("/a\\040b\\011c\\134d"), "/a b\tc\\d");
        assert_eq!(unescape_octal("trailing\\04"), "trailing\\04");
        assert_eq!(unescape_octal("\\999"), "\\999");
        assert_eq!(dev_source_name("tmpfs"), None);
        assert_eq!(dev_source_name("/dev/sdx9").as_deref(), Some("sdx9"));
    }

    #[test]
    fn dev_t_splits_into_major_minor() {
        assert_eq!(dev_major_minor(0x0810), (8, 16));
        assert_eq!(dev_major_minor(0x10301), (259, 1));
        // Minor 300 spills into the high minor bits.
        let rdev = (8u64 << 8) | (300 & 0xff) | ((300 & !0xff) << 12);
        assert_eq!(dev_major_minor(rdev), (8, 300));
    }

    #[test]
    fn sysfs_name_follows_dev_block_link() {
        let sys = FakeSys::new("devblock");
        let node = sys.disk("sdx", "1", true, GIB16);
        fs::create_dir_all(sys.root().join("dev/block")).unwrap();
        symlink(&node, sys.root().join("dev/block/8:16")).unwrap();
        assert_eq!(
            sysfs_name(sys.root(), Path::new("/dev/mystick"), 0x0810),
            "sdx"
        );
        // No link: the /dev node's own name.
        assert_eq!(sysfs_name(sys.root(), Path::new("/dev/sdz"), 0x0820), "sdz");
    }

    #[test]
    fn write_image_copies_everything_with_progress() {
        let total = 2 * CHUNK_SIZE + 3;
        let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
        let mut out = Vec::new();
        let mut progress = Vec::new();
        let n = write_image(&mut &data[..], &mut out, total as u64, &mut progress).unwrap();
        assert_eq!(n, total as u64);
        assert_eq!(out, data);
        let progress = String::from_utf8(progress).unwrap();
        assert_eq!(progress.matches('\r').count(), 3, "{progress:?}");
        assert!(
            progress.contains("100.0%") && progress.contains("MiB/s"),
            "{progress:?}"
        );
        assert!(progress.ends_with('\n'));
    }

    #[test]
    fn write_image_fails_on_short_image() {
        let data = [0u8; 10];
        let err = write_image(&mut &data[..], &mut Vec::new(), 20, &mut io::sink()).unwrap_err();
        assert!(err.contains("ended after 10 of 20"), "{err}");
    }

    #[test]
    fn flash_refuses_regular_file_target() {
        let dir = TempDir::new("regular");
        let image = dir.0.join("hv.img");
        let target = dir.0.join("not-a-disk");
        fs::write(&image, b"image").unwrap();
        fs::write(&target, b"precious").unwrap();
        let err = flash(&image, &target, true).unwrap_err();
        assert!(err.contains("is not a block device"), "{err}");
        assert_eq!(fs::read(&target).unwrap(), b"precious");

        // A symlink to it is resolved, then refused the same way.
        let link = dir.0.join("by-id-link");
        symlink(&target, &link).unwrap();
        let err = flash(&image, &link, true).unwrap_err();
        assert!(err.contains("is not a block device"), "{err}");

        let err = flash(&image, &dir.0.join("missing"), true).unwrap_err();
        assert!(err.contains("cannot resolve"), "{err}");
    }
}
