//! The VM sets that xtask bundles into the kernel's ramdisk: the demo set that
//! `cargo xtask run` boots, and the sets the integration tests boot.

use std::path::{Path, PathBuf};

use crate::guests::{self, GuestImage};

/// One VM of a set, before bundling.
#[derive(Clone, Debug)]
pub struct VmDef {
    pub name: String,
    pub image: PathBuf,
    pub memory_kib: u32,
    pub run_limit_ms: u32,
    pub background: bool,
}

/// The tiny test guests: one per CPU mode, the policy probes, and the hostile ones
/// (out-of-memory access, endless spin with interrupts off, triple fault). The spinner
/// runs in the background: it is stopped once all the others have finished, so it
/// shows that it cannot starve them, and the run still ends.
pub fn tiny_guests(images: &[GuestImage]) -> Vec<VmDef> {
    images
        .iter()
        .map(|g| VmDef {
            name: g.name.clone(),
            image: g.path.clone(),
            memory_kib: 4096,
            run_limit_ms: 0,
            background: g.name == "spin64",
        })
        .collect()
}

/// Builds the test guests into `out_dir`.
pub fn build_tiny_guests(workspace: &Path, out_dir: &Path) -> Result<Vec<GuestImage>, String> {
    eprintln!("xtask: building the tiny test guests");
    guests::build_guests(workspace, out_dir)
}

/// Packs `vms` into a bundle file for the bootloader's ramdisk.
pub fn write_bundle(vms: &[VmDef], out: &Path) -> Result<PathBuf, String> {
    let images: Vec<Vec<u8>> = vms
        .iter()
        .map(|v| {
            std::fs::read(&v.image)
                .map_err(|e| format!("reading guest image {}: {e}", v.image.display()))
        })
        .collect::<Result<_, _>>()?;
    let specs: Vec<bundle::VmSpec> = vms
        .iter()
        .zip(&images)
        .map(|(v, image)| bundle::VmSpec {
            name: &v.name,
            memory_kib: v.memory_kib,
            run_limit_ms: v.run_limit_ms,
            background: v.background,
            image,
        })
        .collect();
    let blob = bundle::write(&specs).map_err(|e| format!("packing the guest bundle: {e}"))?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(out, blob).map_err(|e| format!("writing {}: {e}", out.display()))?;
    Ok(out.to_path_buf())
}
