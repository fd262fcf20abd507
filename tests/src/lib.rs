//! Shared helpers for the integration tests: get the disk images (built by
//! `cargo xtask test`, or built here when run directly), boot them with a time limit,
//! and check the serial output, printing the whole log when a check fails.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

pub use xtask::emulator::{BochsOptions, Firmware, QemuOptions, RunOutput};
use xtask::{build, emulator};

pub struct Images {
    pub bios: PathBuf,
    pub uefi: PathBuf,
}

/// The images `cargo xtask test` built (passed in the environment), or a fresh build.
pub fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| {
        match (
            std::env::var_os("HV_BIOS_IMAGE"),
            std::env::var_os("HV_UEFI_IMAGE"),
        ) {
            (Some(bios), Some(uefi)) => Images {
                bios: bios.into(),
                uefi: uefi.into(),
            },
            _ => {
                let built = build::build_all(&build::BuildOptions::default(), None)
                    .unwrap_or_else(|e| panic!("building the images failed: {e}"));
                Images {
                    bios: built.images.bios,
                    uefi: built.images.uefi,
                }
            }
        }
    })
}

/// A private scratch directory per test (UEFI variables, Bochs files).
pub fn work_dir(test: &str) -> PathBuf {
    build::target_dir().join("hv").join("tests").join(test)
}

pub fn boot_qemu(test: &str, opts: &QemuOptions, limit: Duration) -> RunOutput {
    let imgs = images();
    let image = match opts.firmware {
        Firmware::Bios => &imgs.bios,
        Firmware::Uefi => &imgs.uefi,
    };
    let cmd = emulator::qemu_command(image, opts, &work_dir(test))
        .unwrap_or_else(|e| panic!("cannot start QEMU: {e}"));
    let out = emulator::run_qemu_captured(cmd, limit).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "[{test}] QEMU ran {:.1} s, exit code {:?}",
        out.elapsed.as_secs_f64(),
        out.exit_code
    );
    out
}

pub fn boot_bochs(
    test: &str,
    opts: &BochsOptions,
    done_marker: &str,
    limit: Duration,
) -> RunOutput {
    let out =
        emulator::run_bochs_captured(&images().bios, opts, &work_dir(test), done_marker, limit)
            .unwrap_or_else(|e| panic!("cannot run Bochs: {e}"));
    eprintln!(
        "[{test}] Bochs ran {:.1} s, exit code {:?}",
        out.elapsed.as_secs_f64(),
        out.exit_code
    );
    out
}

/// Checks on a run's output that print the whole serial log when they fail.
pub trait Expect {
    fn expect_line(&self, needle: &str) -> &Self;
    fn expect_no(&self, needle: &str) -> &Self;
    fn expect_exit(&self, code: i32) -> &Self;
    /// The line that contains `prefix`, for finer checks.
    fn line_with(&self, prefix: &str) -> String;
}

fn fail(out: &RunOutput, why: String) -> ! {
    panic!(
        "{why}\n(timed out: {}, exit code {:?}, {:.1} s)\n----- serial log -----\n{}\n----- end of serial log -----",
        out.timed_out,
        out.exit_code,
        out.elapsed.as_secs_f64(),
        out.serial
    )
}

impl Expect for RunOutput {
    fn expect_line(&self, needle: &str) -> &Self {
        if !self.serial.contains(needle) {
            fail(self, format!("expected {needle:?} in the serial output"));
        }
        self
    }
    fn expect_no(&self, needle: &str) -> &Self {
        if self.serial.contains(needle) {
            fail(
                self,
                format!("did not expect {needle:?} in the serial output"),
            );
        }
        self
    }
    fn expect_exit(&self, code: i32) -> &Self {
        if self.exit_code != Some(code) {
            fail(self, format!("expected exit code {code}"));
        }
        self
    }
    fn line_with(&self, prefix: &str) -> String {
        match self.serial.lines().find(|l| l.contains(prefix)) {
            Some(l) => l.to_string(),
            None => fail(self, format!("no line contains {prefix:?}")),
        }
    }
}

pub const QEMU_LIMIT: Duration = Duration::from_secs(120);
pub const BOCHS_LIMIT: Duration = Duration::from_secs(600);
