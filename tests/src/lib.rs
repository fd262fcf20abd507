//! Shared helpers for the integration tests: get the disk images (built by
//! `cargo xtask test`, or built here when run directly), boot them with a time limit,
//! and check the serial output, printing the whole log when a check fails.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

pub use xtask::emulator::{BochsOptions, Firmware, QemuOptions, RunOutput};
use xtask::{build, emulator};

pub use xtask::build::GuestSet;

pub struct Images {
    pub bios: PathBuf,
    pub uefi: PathBuf,
}

/// The images for `set`, built once per test binary (a no-op rebuild when
/// `cargo xtask test` already built them with the same options, passed in
/// `HV_RELEASE` and `HV_LOG`).
pub fn images(set: GuestSet) -> &'static Images {
    static PLAIN: OnceLock<Images> = OnceLock::new();
    static TINY: OnceLock<Images> = OnceLock::new();
    static DEMO: OnceLock<Images> = OnceLock::new();
    static LINUX: OnceLock<Images> = OnceLock::new();
    static MULTIBOOT: OnceLock<Images> = OnceLock::new();
    static BENCH: OnceLock<Images> = OnceLock::new();
    let cell = match set {
        GuestSet::None => &PLAIN,
        GuestSet::Tiny => &TINY,
        GuestSet::Demo => &DEMO,
        GuestSet::LinuxTest => &LINUX,
        GuestSet::Multiboot => &MULTIBOOT,
        GuestSet::Bench => &BENCH,
    };
    cell.get_or_init(|| {
        let opts = build::BuildOptions {
            release: std::env::var("HV_RELEASE").map_or(true, |v| v != "0"),
            log_level: std::env::var("HV_LOG").unwrap_or_else(|_| "info".into()),
        };
        let built = build::build_all(&opts, set)
            .unwrap_or_else(|e| panic!("building the images failed: {e}"));
        Images {
            bios: built.images.bios,
            uefi: built.images.uefi,
        }
    })
}

/// A private scratch directory per test (UEFI variables, Bochs files).
pub fn work_dir(test: &str) -> PathBuf {
    build::target_dir().join("hv").join("tests").join(test)
}

pub fn boot_qemu(test: &str, set: GuestSet, opts: &QemuOptions, limit: Duration) -> RunOutput {
    let imgs = images(set);
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
    set: GuestSet,
    opts: &BochsOptions,
    done_marker: &str,
    limit: Duration,
) -> RunOutput {
    let out =
        emulator::run_bochs_captured(&images(set).bios, opts, &work_dir(test), done_marker, limit)
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
