//! The persistent disk of a configuration with `[storage]`: the GPT image file is
//! created, or reconciled with the configuration (new partitions added, the disk
//! grown), before every boot that attaches it, and kept between runs. The GPT
//! work is `gptdisk`'s; this module decides where the image lives, reports what
//! changed, and is where encrypted partitions get their `diskcrypt` header.

use std::path::{Path, PathBuf};

use gptdisk::image::{self, Action};

use crate::vms::{StorageDef, StoragePartition};

/// Creates or reconciles the image of `storage` (default place: under
/// `target_dir`/hv/disks/) and returns its path. Refusals (a partition whose size
/// changed, a smaller disk, no room) leave the file as it was.
pub fn prepare(storage: &StorageDef, target_dir: &Path) -> Result<PathBuf, String> {
    let path = storage.image_path(target_dir);
    let report = image::reconcile(&path, storage.bytes, &storage.specs())
        .map_err(|e| format!("disk image {}: {e}", path.display()))?;
    if report.created {
        eprintln!(
            "xtask: created the disk image {} ({} MiB)",
            path.display(),
            storage.bytes >> 20
        );
    }
    if let Some(old) = report.grown_from {
        eprintln!(
            "xtask: grew the disk image {} from {} to {} MiB (the backup GPT moved to its end)",
            path.display(),
            old >> 20,
            storage.bytes >> 20
        );
    }
    if let Some(problem) = report.repaired {
        eprintln!("xtask: the primary GPT was bad ({problem}); rewritten from the backup");
    }
    for placed in &report.partitions {
        let part = storage
            .partitions
            .iter()
            .find(|p| p.name == placed.name)
            .expect("reconcile reports the configured partitions");
        if placed.action == Action::Created {
            eprintln!(
                "xtask: partition {:?}: LBAs {}..{}{}",
                placed.name,
                placed.lbas.start,
                placed.lbas.end,
                match &part.contents {
                    Some(c) => format!(", initial contents from {}", c.display()),
                    None => String::new(),
                }
            );
            if part.encrypted {
                format_encrypted(&path, placed, part)?;
            }
        }
    }
    for name in &report.unconfigured {
        eprintln!(
            "xtask: partition {name:?} in {} is not in the configuration: kept as it is",
            path.display()
        );
    }
    Ok(path)
}

/// Writes the `diskcrypt` header at the start of the encrypted partition just
/// created, and the data area as encrypted zeros (so the guest sees a blank disk,
/// not noise that might pass for a filesystem). The passphrase is the key file's
/// (the bundle carries it too); without a key file the user types it here, twice.
/// The salt and the master key come from the host's `/dev/urandom`.
fn format_encrypted(
    image: &Path,
    placed: &image::Placed,
    part: &StoragePartition,
) -> Result<(), String> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let passphrase = match &part.key_file {
        Some(file) => std::fs::read(file)
            .map(crate::vms::passphrase)
            .map_err(|e| format!("key file {}: {e}", file.display()))?,
        None => typed_passphrase(&placed.name)?,
    };
    if passphrase.is_empty() {
        return Err(format!(
            "partition {:?}: the passphrase is empty",
            placed.name
        ));
    }
    let mut random = [0u8; diskcrypt::RANDOM_LEN];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .map_err(|e| format!("reading /dev/urandom: {e}"))?;
    let bytes = (placed.lbas.end - placed.lbas.start) * gptdisk::SECTOR_SIZE as u64;
    let data = vec![0u8; bytes as usize - diskcrypt::HEADER_LEN];
    let sealed =
        diskcrypt::encrypt_image(&passphrase, diskcrypt::KdfParams::DEFAULT, &random, &data)
            .map_err(|e| format!("partition {:?}: {e}", placed.name))?;
    random.fill(0);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(image)
        .map_err(|e| format!("{}: {e}", image.display()))?;
    file.seek(SeekFrom::Start(
        placed.lbas.start * gptdisk::SECTOR_SIZE as u64,
    ))
    .and_then(|_| file.write_all(&sealed))
    .and_then(|_| file.sync_all())
    .map_err(|e| {
        format!(
            "{}: writing partition {:?}: {e}",
            image.display(),
            placed.name
        )
    })?;
    eprintln!(
        "xtask: partition {:?} encrypted (AES-256-XTS, Argon2id {} MiB, {} passes){}",
        placed.name,
        diskcrypt::KdfParams::DEFAULT.memory_kib / 1024,
        diskcrypt::KdfParams::DEFAULT.iterations,
        match &part.key_file {
            Some(f) => format!(", passphrase from {}", f.display()),
            None => String::new(),
        }
    );
    Ok(())
}

/// Asks for a new partition's passphrase on the terminal (echo off), twice.
fn typed_passphrase(name: &str) -> Result<Vec<u8>, String> {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(format!(
            "partition {name:?} is encrypted and has no key_file: its passphrase must be typed, \
             but standard input is not a terminal"
        ));
    }
    let stty = |arg: &str| {
        let _ = std::process::Command::new("stty")
            .arg(arg)
            .stdin(std::process::Stdio::inherit())
            .status();
    };
    let ask = |prompt: &str| -> Result<Vec<u8>, String> {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
        stty("-echo");
        let mut line = String::new();
        let read = stdin.lock().read_line(&mut line);
        stty("echo");
        eprintln!();
        read.map_err(|e| format!("reading the passphrase: {e}"))?;
        Ok(crate::vms::passphrase(line.into_bytes()))
    };
    let first = ask(&format!(
        "xtask: new passphrase for the encrypted partition {name:?}: "
    ))?;
    let again = ask("xtask: the same passphrase again: ")?;
    if first != again {
        return Err(format!("partition {name:?}: the two passphrases differ"));
    }
    Ok(first)
}
