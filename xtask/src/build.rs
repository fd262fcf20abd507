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

/// Which VMs an image carries in its ramdisk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestSet {
    /// No bundle: the hypervisor boots, reports and stops.
    None,
    /// The tiny guests (`cargo xtask run`).
    Demo,
    /// The tiny guests, as the integration tests boot them.
    Test,
}

impl GuestSet {
    fn dir_name(self) -> &'static str {
        match self {
            GuestSet::None => "plain",
            GuestSet::Demo => "demo",
            GuestSet::Test => "test",
        }
    }
}

/// Builds the kernel, the guests of `set`, and both disk images for it, in
/// `target/hv/<set>/`.
pub fn build_all(opts: &BuildOptions, set: GuestSet) -> Result<Built, String> {
    let kernel = build_kernel(opts)?;
    let out = target_dir().join("hv").join(set.dir_name());
    let ramdisk = match set {
        GuestSet::None => None,
        GuestSet::Demo | GuestSet::Test => {
            let images = crate::vms::build_tiny_guests(
                &workspace_root(),
                &target_dir().join("hv").join("guests"),
            )?;
            let vms = crate::vms::tiny_guests(&images);
            Some(crate::vms::write_bundle(&vms, &out.join("bundle.bin"))?)
        }
    };
    let ramdisk = ramdisk.as_deref();
    eprintln!(
        "xtask: writing BIOS and UEFI disk images to {}",
        out.display()
    );
    let images = boot::build_images(&kernel, ramdisk, &out)?;
    Ok(Built { kernel, images })
}
