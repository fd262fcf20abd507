//! Host-side image builder: turns the kernel ELF, and optionally a bundle of guest
//! images passed as the bootloader's ramdisk, into BIOS and UEFI disk images.

use std::path::{Path, PathBuf};

use bootloader::{BiosBoot, BootConfig, UefiBoot};

/// The disk images made from one kernel.
#[derive(Debug, Clone)]
pub struct Images {
    pub bios: PathBuf,
    pub uefi: PathBuf,
}

/// The serial line belongs to the hypervisor: the bootloader only reports warnings and
/// errors there, and draws nothing on the framebuffer (that also saves seconds under
/// emulators).
fn boot_config() -> BootConfig {
    let mut config = BootConfig::default();
    config.serial_logging = true;
    config.frame_buffer_logging = false;
    config.log_level = bootloader_boot_config::LevelFilter::Warn;
    config
}

/// Writes `bios.img` and `uefi.img` into `out_dir`.
pub fn build_images(
    kernel: &Path,
    ramdisk: Option<&Path>,
    out_dir: &Path,
) -> Result<Images, String> {
    if !kernel.is_file() {
        return Err(format!("kernel ELF {} does not exist", kernel.display()));
    }
    std::fs::create_dir_all(out_dir).map_err(|e| format!("creating {}: {e}", out_dir.display()))?;
    let config = boot_config();
    let images = Images {
        bios: out_dir.join("bios.img"),
        uefi: out_dir.join("uefi.img"),
    };
    let mut bios = BiosBoot::new(kernel);
    bios.set_boot_config(&config);
    let mut uefi = UefiBoot::new(kernel);
    uefi.set_boot_config(&config);
    if let Some(ramdisk) = ramdisk {
        bios.set_ramdisk(ramdisk);
        uefi.set_ramdisk(ramdisk);
    }
    bios.create_disk_image(&images.bios)
        .map_err(|e| format!("creating the BIOS image {}: {e:#}", images.bios.display()))?;
    uefi.create_disk_image(&images.uefi)
        .map_err(|e| format!("creating the UEFI image {}: {e:#}", images.uefi.display()))?;
    Ok(images)
}
