//! Finding the host tools the emulators need, with messages that name the package to
//! install; on Debian/Ubuntu as root, installing them after saying so.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A program (or file) and the Debian package that provides it.
#[derive(Clone, Copy, Debug)]
pub struct Tool {
    pub what: &'static str,
    pub candidates: &'static [&'static str],
    pub package: &'static str,
}

pub const QEMU: Tool = Tool {
    what: "qemu-system-x86_64",
    candidates: &["qemu-system-x86_64"],
    package: "qemu-system-x86",
};
pub const OVMF_CODE: Tool = Tool {
    what: "OVMF firmware (code)",
    candidates: &[
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
        "/usr/share/OVMF/OVMF_CODE.fd",
    ],
    package: "ovmf",
};
pub const OVMF_VARS: Tool = Tool {
    what: "OVMF firmware (variables)",
    candidates: &[
        "/usr/share/OVMF/OVMF_VARS_4M.fd",
        "/usr/share/OVMF/OVMF_VARS.fd",
    ],
    package: "ovmf",
};
pub const BOCHS: Tool = Tool {
    what: "bochs",
    candidates: &["bochs"],
    package: "bochs",
};
pub const BOCHS_X: Tool = Tool {
    what: "Bochs X11 display plugin",
    candidates: &[
        "/usr/lib/x86_64-linux-gnu/bochs/plugins/libbx_x_gui.so",
        "/usr/lib/bochs/plugins/libbx_x_gui.so",
    ],
    package: "bochs-x",
};
pub const BOCHS_BIOS: Tool = Tool {
    what: "Bochs BIOS",
    candidates: &["/usr/share/bochs/BIOS-bochs-latest"],
    package: "bochsbios",
};
pub const VGABIOS: Tool = Tool {
    what: "VGA BIOS for Bochs",
    candidates: &["/usr/share/bochs/VGABIOS-lgpl-latest"],
    package: "vgabios",
};
pub const XVFB: Tool = Tool {
    what: "Xvfb",
    candidates: &["Xvfb"],
    package: "xvfb",
};

fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = Path::new(name);
        // A dangling link (VGABIOS-lgpl-latest before vgabios is installed) is missing.
        return std::fs::metadata(p).is_ok().then(|| p.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

pub fn find(tool: &Tool) -> Option<PathBuf> {
    tool.candidates.iter().find_map(|c| which(c))
}

fn can_auto_install() -> bool {
    // SAFETY-free check for root: the id of the process owner via /proc.
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    root && which("apt-get").is_some() && std::env::var_os("HV_NO_AUTO_INSTALL").is_none()
}

/// Finds every tool, installing the missing ones with apt-get when allowed (as root on
/// Debian/Ubuntu, unless `HV_NO_AUTO_INSTALL` is set). Returns the paths in order.
pub fn require(tools: &[Tool], purpose: &str) -> Result<Vec<PathBuf>, String> {
    let missing: Vec<&Tool> = tools.iter().filter(|t| find(t).is_none()).collect();
    if !missing.is_empty() {
        let mut packages: Vec<&str> = missing.iter().map(|t| t.package).collect();
        packages.dedup();
        let names: Vec<&str> = missing.iter().map(|t| t.what).collect();
        if can_auto_install() {
            eprintln!(
                "xtask: {} needed to {purpose} but missing; installing Debian packages with apt-get: {}",
                names.join(", "),
                packages.join(" ")
            );
            let ok = Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends"])
                .args(&packages)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            let ok = ok || {
                eprintln!(
                    "xtask: apt-get install failed; refreshing the package lists and trying again"
                );
                Command::new("apt-get").arg("update").status().is_ok()
                    && Command::new("apt-get")
                        .args(["install", "-y", "--no-install-recommends"])
                        .args(&packages)
                        .env("DEBIAN_FRONTEND", "noninteractive")
                        .status()
                        .map(|s| s.success())
                        .unwrap_or(false)
            };
            if !ok {
                return Err(format!("installing {} failed", packages.join(" ")));
            }
        } else {
            return Err(format!(
                "{} needed to {purpose} but not found: install the package(s) {} (Debian/Ubuntu: sudo apt-get install {})",
                names.join(", "),
                packages.join(" "),
                packages.join(" ")
            ));
        }
    }
    tools
        .iter()
        .map(|t| {
            find(t)
                .ok_or_else(|| format!("{} still not found after installing {}", t.what, t.package))
        })
        .collect()
}

/// KVM can run this hypervisor only when the host's kvm_intel/kvm_amd module allows
/// nested virtualization; a `/dev/kvm` alone may be a paravirtual KVM without VT-x or
/// AMD-V (see shared/PLATFORM.md).
pub fn nested_kvm_available() -> bool {
    let nested = |m: &str| {
        std::fs::read_to_string(format!("/sys/module/{m}/parameters/nested"))
            .map(|s| matches!(s.trim(), "Y" | "y" | "1"))
            .unwrap_or(false)
    };
    Path::new("/dev/kvm").exists() && (nested("kvm_intel") || nested("kvm_amd"))
}
