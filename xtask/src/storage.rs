//! The persistent disk of a configuration with `[storage]`: the GPT image file is
//! created, or reconciled with the configuration (new partitions added, the disk
//! grown), before every boot that attaches it, and kept between runs. The GPT
//! work is `gptdisk`'s; this module decides where the image lives, reports what
//! changed, and is where encrypted partitions get their `diskcrypt` header.

use std::path::{Path, PathBuf};

use gptdisk::image::{self, Action};

use crate::vms::StorageDef;

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
                // DISKCRYPT: the `diskcrypt` crate's `format` writes the header at the
                // partition's start here (with the key file's passphrase when there is
                // one), for a partition created just now and only then. Until it is
                // wired in, an encrypted partition is made but left unformatted.
                eprintln!(
                    "xtask: partition {:?} is to be encrypted, but diskcrypt formatting is not \
                     wired in yet: it was left unformatted",
                    placed.name
                );
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
