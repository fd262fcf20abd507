//! Finding the host tools the emulators need, with messages that name the package to
//! install; on Debian/Ubuntu as root, installing them after saying so, one installer
//! at a time (a lock file in the target directory).

use std::fs::{File, OpenOptions, TryLockError};
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

/// Every tool the emulators need: what `cargo xtask test` installs once, before any
/// integration test starts.
pub const ALL: &[Tool] = &[
    QEMU, OVMF_CODE, OVMF_VARS, BOCHS, BOCHS_BIOS, VGABIOS, BOCHS_X, XVFB,
];

/// The Debian packages that provide `missing`, each once, in first-seen order.
pub fn packages_of(missing: &[&Tool]) -> Vec<&'static str> {
    let mut packages: Vec<&'static str> = Vec::new();
    for t in missing {
        if !packages.contains(&t.package) {
            packages.push(t.package);
        }
    }
    packages
}

/// How missing packages get installed: `apt-get`, one installer at a time.
#[derive(Clone, Debug)]
pub struct Installer {
    /// The `apt-get` program.
    pub apt_get: PathBuf,
    /// The file whose exclusive lock (flock(2), taken through `File::lock`) every
    /// installer holds while it checks and installs: two test processes that both
    /// miss a package must not run apt-get at once, or one loses dpkg's lock.
    pub lock: PathBuf,
}

impl Installer {
    /// The system's installer when allowed: as root, with apt-get on the PATH, and
    /// `HV_NO_AUTO_INSTALL` unset. The lock file lives in the target directory.
    pub fn system() -> Option<Installer> {
        // Root check without unsafe code: the process owner's id via /proc.
        let root = std::fs::read_to_string("/proc/self/status")
            .map(|s| {
                s.lines()
                    .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
            })
            .unwrap_or(false);
        if !root || std::env::var_os("HV_NO_AUTO_INSTALL").is_some() {
            return None;
        }
        Some(Installer {
            apt_get: which("apt-get")?,
            lock: crate::build::target_dir()
                .join("hv")
                .join("apt-install.lock"),
        })
    }

    /// Holds the installer lock until the returned file is dropped (closing the file
    /// releases the lock, also when the process dies).
    fn lock(&self) -> Result<File, String> {
        if let Some(dir) = self.lock.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock)
            .map_err(|e| format!("{}: {e}", self.lock.display()))?;
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(TryLockError::WouldBlock) => eprintln!(
                "xtask: waiting for another xtask that is installing packages (lock {})",
                self.lock.display()
            ),
            Err(TryLockError::Error(e)) => {
                return Err(format!("locking {}: {e}", self.lock.display()))
            }
        }
        file.lock()
            .map_err(|e| format!("locking {}: {e}", self.lock.display()))?;
        Ok(file)
    }

    fn apt_get(&self, args: &[&str]) -> bool {
        Command::new(&self.apt_get)
            // Waits for dpkg's own lock too, should something outside xtask hold it.
            .args(["-o", "DPkg::Lock::Timeout=300"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Installs `packages`; on failure refreshes the package lists and tries again.
    fn install(&self, packages: &[&str]) -> Result<(), String> {
        let install: Vec<&str> = ["install", "-y", "--no-install-recommends"]
            .into_iter()
            .chain(packages.iter().copied())
            .collect();
        if self.apt_get(&install) {
            return Ok(());
        }
        eprintln!("xtask: apt-get install failed; refreshing the package lists and trying again");
        if self.apt_get(&["update"]) && self.apt_get(&install) {
            Ok(())
        } else {
            Err(format!("installing {} failed", packages.join(" ")))
        }
    }
}

/// Finds every tool, installing the missing ones with apt-get when allowed (as root on
/// Debian/Ubuntu, unless `HV_NO_AUTO_INSTALL` is set). Returns the paths in order.
pub fn require(tools: &[Tool], purpose: &str) -> Result<Vec<PathBuf>, String> {
    require_with(tools, purpose, Installer::system().as_ref())
}

/// [`require`] with an explicit installer (`None`: only say what to install).
/// Installers in different processes take turns: each checks again under the lock,
/// so the second finds what the first installed and runs nothing.
pub fn require_with(
    tools: &[Tool],
    purpose: &str,
    installer: Option<&Installer>,
) -> Result<Vec<PathBuf>, String> {
    let missing_of = |tools: &[Tool]| -> Vec<Tool> {
        tools
            .iter()
            .filter(|t| find(t).is_none())
            .copied()
            .collect()
    };
    if !missing_of(tools).is_empty() {
        let Some(installer) = installer else {
            let missing = missing_of(tools);
            let packages = packages_of(&missing.iter().collect::<Vec<_>>()).join(" ");
            let names: Vec<&str> = missing.iter().map(|t| t.what).collect();
            return Err(format!(
                "{} needed to {purpose} but not found: install the package(s) {packages} (Debian/Ubuntu: sudo apt-get install {packages})",
                names.join(", "),
            ));
        };
        let _held = installer.lock()?;
        let missing = missing_of(tools);
        if !missing.is_empty() {
            let packages = packages_of(&missing.iter().collect::<Vec<_>>());
            let names: Vec<&str> = missing.iter().map(|t| t.what).collect();
            eprintln!(
                "xtask: {} needed to {purpose} but missing; installing Debian packages with apt-get: {}",
                names.join(", "),
                packages.join(" ")
            );
            installer.install(&packages)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hv-tools-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A tool found at `path` once it exists, from the package `hv-fake`.
    fn fake_tool(path: &Path) -> Tool {
        let path: &'static str = Box::leak(path.to_string_lossy().into_owned().into_boxed_str());
        Tool {
            what: "fake tool",
            candidates: Box::leak(Box::new([path])),
            package: "hv-fake",
        }
    }

    #[test]
    fn packages_are_named_once_in_order() {
        let all: Vec<&Tool> = ALL.iter().collect();
        assert_eq!(
            packages_of(&all),
            [
                "qemu-system-x86",
                "ovmf",
                "bochs",
                "bochsbios",
                "vgabios",
                "bochs-x",
                "xvfb"
            ]
        );
        assert_eq!(
            packages_of(&[&OVMF_VARS, &QEMU, &OVMF_CODE]),
            ["ovmf", "qemu-system-x86"]
        );
    }

    #[test]
    fn without_an_installer_the_error_names_the_package() {
        let dir = scratch("none");
        let e = require_with(&[fake_tool(&dir.join("tool"))], "test things", None).unwrap_err();
        assert!(
            e.contains("fake tool needed to test things")
                && e.contains("sudo apt-get install hv-fake"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Two installers that both miss a package at the same moment: the lock makes
    /// them take turns, so apt-get runs once and neither meets a busy dpkg (the fake
    /// apt-get fails as apt-get does when another one holds dpkg's lock).
    #[test]
    fn concurrent_installers_take_turns() {
        let dir = scratch("turns");
        let apt = dir.join("apt-get");
        std::fs::write(
            &apt,
            "#!/bin/sh\n\
             d=$(dirname \"$0\")\n\
             if [ -e \"$d/dpkg-busy\" ]; then echo lost >>\"$d/log\"; exit 100; fi\n\
             touch \"$d/dpkg-busy\"\n\
             echo \"$*\" >>\"$d/log\"\n\
             sleep 0.5\n\
             touch \"$d/tool\"\n\
             rm \"$d/dpkg-busy\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&apt, std::fs::Permissions::from_mode(0o755)).unwrap();
        let installer = Installer {
            apt_get: apt,
            lock: dir.join("locks").join("install.lock"),
        };
        let tool = fake_tool(&dir.join("tool"));
        let results: Vec<Result<Vec<PathBuf>, String>> = std::thread::scope(|s| {
            let runs: Vec<_> = (0..2)
                .map(|_| s.spawn(|| require_with(&[tool], "test things", Some(&installer))))
                .collect();
            runs.into_iter().map(|r| r.join().unwrap()).collect()
        });
        for r in &results {
            assert_eq!(r.as_deref(), Ok(&[dir.join("tool")][..]));
        }
        let log = std::fs::read_to_string(dir.join("log")).unwrap();
        assert_eq!(
            log,
            "-o DPkg::Lock::Timeout=300 install -y --no-install-recommends hv-fake\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
