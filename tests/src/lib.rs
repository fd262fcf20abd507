//! Shared helpers for the integration tests: get the disk images (built by
//! `cargo xtask test`, or built here when run directly), boot them with a time limit,
//! and check the serial output, printing the whole log when a check fails.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

pub use xtask::emulator::{BochsOptions, Firmware, QemuOptions, RunOutput};
use xtask::{build, emulator};

pub use xtask::build::GuestSet;

pub mod prometheus;

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
    static LINUX_APIC: OnceLock<Images> = OnceLock::new();
    static MULTIBOOT: OnceLock<Images> = OnceLock::new();
    static BENCH: OnceLock<Images> = OnceLock::new();
    static SMP: OnceLock<Images> = OnceLock::new();
    static SMP_WITHOUT_STORM: OnceLock<Images> = OnceLock::new();
    static BENCH_IPI_SHARED: OnceLock<Images> = OnceLock::new();
    static BENCH_IPI_SPLIT: OnceLock<Images> = OnceLock::new();
    static HOSTILE: OnceLock<Images> = OnceLock::new();
    static CRCHECK: OnceLock<Images> = OnceLock::new();
    static LINUX_DISK: OnceLock<Images> = OnceLock::new();
    static LINUX_DISK_VTX: OnceLock<Images> = OnceLock::new();
    static BENCH_DISK: OnceLock<Images> = OnceLock::new();
    static BENCH_DISK_ENC: OnceLock<Images> = OnceLock::new();
    static NETWORK: OnceLock<Images> = OnceLock::new();
    static UPLINK: OnceLock<Images> = OnceLock::new();
    static BENCH_NET: OnceLock<Images> = OnceLock::new();
    static CONSOLE: OnceLock<Images> = OnceLock::new();
    static CONSOLE_LINUX: OnceLock<Images> = OnceLock::new();
    static SNAPSHOT_DISK: OnceLock<Images> = OnceLock::new();
    static NETWORK_VTX: OnceLock<Images> = OnceLock::new();
    static LINUX_DISK_CONSOLE: OnceLock<Images> = OnceLock::new();
    let cell = match set {
        GuestSet::None => &PLAIN,
        GuestSet::Tiny => &TINY,
        GuestSet::Demo => &DEMO,
        GuestSet::LinuxTest => &LINUX,
        GuestSet::LinuxApicTest => &LINUX_APIC,
        GuestSet::Multiboot => &MULTIBOOT,
        GuestSet::Bench => &BENCH,
        GuestSet::Smp => &SMP,
        GuestSet::SmpWithoutStorm => &SMP_WITHOUT_STORM,
        GuestSet::BenchIpiShared => &BENCH_IPI_SHARED,
        GuestSet::BenchIpiSplit => &BENCH_IPI_SPLIT,
        GuestSet::Hostile => &HOSTILE,
        GuestSet::CrCheck => &CRCHECK,
        GuestSet::LinuxDiskTest => &LINUX_DISK,
        GuestSet::LinuxDiskVtxTest => &LINUX_DISK_VTX,
        GuestSet::BenchDisk => &BENCH_DISK,
        GuestSet::BenchDiskEncrypted => &BENCH_DISK_ENC,
        GuestSet::NetworkTest => &NETWORK,
        GuestSet::NetworkVtxTest => &NETWORK_VTX,
        GuestSet::UplinkTest => &UPLINK,
        GuestSet::BenchNet => &BENCH_NET,
        GuestSet::ConsoleTest => &CONSOLE,
        GuestSet::ConsoleLinuxTest => &CONSOLE_LINUX,
        GuestSet::SnapshotDiskTest => &SNAPSHOT_DISK,
        GuestSet::LinuxDiskConsoleTest => &LINUX_DISK_CONSOLE,
    };
    cell.get_or_init(|| {
        let built = build::build_all(&build_options(), set)
            .unwrap_or_else(|e| panic!("building the images failed: {e}"));
        Images {
            bios: built.images.bios,
            uefi: built.images.uefi,
        }
    })
}

/// The build options of `cargo xtask test`, passed in `HV_RELEASE` and `HV_LOG`
/// (a release kernel at log level info when run directly).
pub fn build_options() -> build::BuildOptions {
    build::BuildOptions {
        release: std::env::var("HV_RELEASE").map_or(true, |v| v != "0"),
        log_level: std::env::var("HV_LOG").unwrap_or_else(|_| "info".into()),
    }
}

/// A private scratch directory per test (UEFI variables, Bochs files).
pub fn work_dir(test: &str) -> PathBuf {
    build::target_dir().join("hv").join("tests").join(test)
}

/// The image of `set` for the firmware `opts` asks for.
fn image(set: GuestSet, opts: &QemuOptions) -> &'static std::path::Path {
    let imgs = images(set);
    match opts.firmware {
        Firmware::Bios => &imgs.bios,
        Firmware::Uefi => &imgs.uefi,
    }
}

/// Saves a run's whole serial output as `serial.txt` in the test's directory (for
/// when a failure report's shortened log is not enough) and says where.
fn save_log(test: &str, emulator: &str, out: &RunOutput) {
    let log = work_dir(test).join("serial.txt");
    let _ =
        std::fs::create_dir_all(work_dir(test)).and_then(|()| std::fs::write(&log, &out.serial));
    eprintln!(
        "[{test}] {emulator} ran {:.1} s, exit code {:?} (serial log: {})",
        out.elapsed.as_secs_f64(),
        out.exit_code,
        log.display()
    );
}

pub fn boot_qemu(test: &str, set: GuestSet, opts: &QemuOptions, limit: Duration) -> RunOutput {
    let cmd = emulator::qemu_command(image(set, opts), opts, &work_dir(test))
        .unwrap_or_else(|e| panic!("cannot start QEMU: {e}"));
    let out = emulator::run_qemu_captured(cmd, limit).unwrap_or_else(|e| panic!("{e}"));
    save_log(test, "QEMU", &out);
    out
}

/// Boots `set` in QEMU and types into its serial port as `steps` say (see
/// [`xtask::emulator::run_qemu_scripted`]); the output is saved as `boot_qemu` does.
pub fn scripted_qemu(
    test: &str,
    set: GuestSet,
    opts: &QemuOptions,
    steps: &[xtask::emulator::ScriptStep],
    limit: Duration,
) -> RunOutput {
    let cmd = emulator::qemu_command(image(set, opts), opts, &work_dir(test))
        .unwrap_or_else(|e| panic!("cannot start QEMU: {e}"));
    let out = emulator::run_qemu_scripted(cmd, limit, steps).unwrap_or_else(|e| panic!("{e}"));
    save_log(test, "QEMU", &out);
    out
}

/// Boots `set` under Bochs (VT-x) and types into its serial port as `steps` say
/// (see [`xtask::emulator::run_bochs_scripted`]); the output is saved as
/// `boot_qemu` does.
pub fn scripted_bochs(
    test: &str,
    set: GuestSet,
    opts: &BochsOptions,
    steps: &[xtask::emulator::ScriptStep],
    limit: Duration,
) -> RunOutput {
    let out = emulator::run_bochs_scripted(&images(set).bios, opts, &work_dir(test), steps, limit)
        .unwrap_or_else(|e| panic!("cannot run Bochs: {e}"));
    save_log(test, "Bochs", &out);
    out
}

pub fn boot_bochs(
    test: &str,
    set: GuestSet,
    opts: &BochsOptions,
    done_marker: &str,
    limit: Duration,
) -> RunOutput {
    boot_bochs_image(test, &images(set).bios, opts, done_marker, limit)
}

/// [`boot_bochs`] of a BIOS image built otherwise (with the bundle on a disk).
pub fn boot_bochs_image(
    test: &str,
    image: &std::path::Path,
    opts: &BochsOptions,
    done_marker: &str,
    limit: Duration,
) -> RunOutput {
    let out = emulator::run_bochs_captured(image, opts, &work_dir(test), done_marker, limit)
        .unwrap_or_else(|e| panic!("cannot run Bochs: {e}"));
    eprintln!(
        "[{test}] Bochs ran {:.1} s, exit code {:?}",
        out.elapsed.as_secs_f64(),
        out.exit_code
    );
    out
}

/// Checks on a run's output that print the serial log (shortened: [`shortened`]) when
/// they fail.
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
        shortened(&out.serial)
    )
}

/// Lines of a long serial log kept in a failure report: its beginning, the
/// hypervisor's own lines from the middle, and its end (where a run stops, hangs or
/// crashes). CI keeps only the head and tail of a long test output, so two failing
/// tests that each printed a whole Linux boot would hide each other's ends.
const HEAD_LINES: usize = 40;
const TAIL_LINES: usize = 80;

fn shortened(serial: &str) -> String {
    let lines: Vec<&str> = serial.lines().collect();
    if lines.len() <= HEAD_LINES + TAIL_LINES + 40 {
        return serial.to_string();
    }
    let middle = &lines[HEAD_LINES..lines.len() - TAIL_LINES];
    let own: Vec<&str> = middle
        .iter()
        .copied()
        .filter(|l| l.starts_with("hv:"))
        .collect();
    let mut text = lines[..HEAD_LINES].join("\n");
    text.push_str(&format!(
        "\n[... {} lines left out; the hypervisor's own lines among them follow ...]\n",
        middle.len()
    ));
    for l in own.iter().take(40) {
        text.push_str(l);
        text.push('\n');
    }
    if own.len() > 40 {
        text.push_str(&format!(
            "[... {} more hypervisor lines ...]\n",
            own.len() - 40
        ));
    }
    text.push_str("[... the end of the log ...]\n");
    text.push_str(&lines[lines.len() - TAIL_LINES..].join("\n"));
    text
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

/// Index of the first serial line containing `needle` (fails the test if none does).
pub fn position(out: &RunOutput, needle: &str) -> usize {
    match out.serial.lines().position(|l| l.contains(needle)) {
        Some(i) => i,
        None => fail(out, format!("no line contains {needle:?}")),
    }
}

/// The guest-SMP set (`GuestSet::Smp`) on any vendor: `smp64`'s AP started and its
/// IPIs round-tripped, `ipistorm64` stormed without reaching anyone else, `hello64`
/// finished, and the VMs' memory came back.
pub fn expect_smp_guests(out: &RunOutput, storm: bool) {
    out.expect_line(
        "hv: vm pinned5 not started: pinned to processor(s) 5 but this machine has 2 online (0 to 1): processor(s) 5 missing",
    )
    .expect_line("hv: vm smp64 started: 4096 KiB RAM (4096 KiB in 2 MiB frames)")
        .expect_line(", 2 vCPUs, Long mode")
        .expect_line("smp64 | smp64: mp table lists 2 cpus")
        .expect_line("smp64 | smp64: cpus online 2")
        .expect_line("smp64 | smp64: ap 1 apic id 1")
        .expect_line("smp64 | smp64: ipi ping-pong 1000 round trips ok")
        .expect_line("smp64 | smp64: ipi round trip median=")
        .expect_line("smp64 | smp64: nmi ipi to ap 1 ok")
        .expect_line("smp64 | smp64: broadcast ipi reached 1 aps")
        .expect_line("smp64 | smp64: self ipi ok")
        .expect_line("smp64 | smp64: done")
        .expect_line("hv: vm smp64 stopped: halted with interrupts disabled")
        .expect_line("hv: vm smp64 cpu time:")
        .expect_line("hello64 | hello64: alive 5")
        .expect_line("hello64 | hello64: done")
        .expect_line("bench64 | bench64: bare loop unsupported")
        .expect_line("bench64 | bench64: done")
        .expect_line("hv: vm reset64 restarting: guest requested a reset (restart 1 within 10 s)")
        .expect_line("hv: vm reset64 restarting: guest requested a reset (restart 3 within 10 s)")
        .expect_line(
            "hv: vm reset64 stopped: guest requested a reset; restarted 3 times within 10 s: stopping (restart loop)",
        )
        .expect_line("hv: vm spin64 stopped: run-time limit reached (250 ms of CPU time)")
        .expect_line("hv: all VMs stopped; host memory returned: all")
        .expect_no("smp64: FAIL")
        .expect_no("reset64: FAIL")
        .expect_no("ipistorm64: FAIL")
        .expect_no("unexpected exception")
        .expect_no("EXCEPTION")
        .expect_no("PANIC");
    if storm {
        out.expect_line("ipistorm64 | ipistorm64: storming")
            .expect_line("hv: vm ipistorm64 stopped:");
        expect_storm(out);
    }
    // Restarted from its image each time: the banner once per boot.
    let boots = out
        .serial
        .lines()
        .filter(|l| l.contains("reset64 | reset64: booted, resetting"))
        .count();
    assert_eq!(boots, 4, "reset64 boots (1 + 3 restarts)");
    // Pinned: hello64 ran on processor 1 only, the spinner on processor 0 only.
    for (vm, cpu) in [("hello64", 1), ("spin64", 0)] {
        let line = out.line_with(&format!("hv: vm {vm} cpu time:"));
        assert!(line.ends_with(&format!("ms on cpu {cpu})")), "{line}");
    }
}

/// The storm really stormed: thousands of APIC accesses (each an exit).
fn expect_storm(out: &RunOutput) {
    let storm = out.line_with("hv: vm ipistorm64 exits:");
    let npf: u64 = storm
        .split_whitespace()
        .find_map(|w| w.strip_prefix("npf="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(npf > 1000, "the IPI storm barely ran: {storm}");
}

/// What every vendor must show for `GuestSet::Tiny`: the same answers from the same
/// core, whichever extension runs underneath.
pub fn expect_tiny_guests(out: &RunOutput) {
    out.expect_line("hv: guest bundle holds 9 VM(s)")
        // An image only the kernel sees is broken: refused alone, with the reason.
        .expect_line("hv: vm broken64 not started: malformed ELF image: Could not read bytes")
        .expect_line("hv: 1 VM(s) could not be started")
        // Every CPU mode, relayed as `name | text`.
        .expect_line("real16 | real16: hello from real mode")
        .expect_line("prot32 | prot32: hello from protected mode")
        .expect_line("prot32 | prot32: hypervisor signature hv-baremetal")
        .expect_line("hello64 | hello64: hello from long mode")
        // CPUID policy: no VMX/SVM, hypervisor bit, our signature.
        .expect_line("hello64 | hello64: cpuid hypervisor=1 vmx=0 svm=0 signature=hv-baremetal")
        // MSR policy: allowed ones read, forbidden ones #GP.
        .expect_line("msr64 | msr64: apic_base=0xfee00900")
        .expect_line("msr64 | msr64: rdmsr 0xc0010117 -> #GP")
        .expect_line("msr64 | msr64: wrmsr 0xc0010114 -> #GP")
        .expect_line("msr64 | msr64: done")
        // Unknown ports float high and are counted; hypercalls answer.
        .expect_line("ports64 | ports64: in8=0xff in16=0xffff in32=0xffffffff")
        .expect_line("ports64 | ports64: rep insb=[ff, ff, ff, ff]")
        .expect_line("ports64 | ports64: rep outsb to COM1")
        .expect_line("ports64 | ports64: hypercall version=0x1")
        .expect_line("ports64 | ports64: hypercall unknown=0xfffffffffffffc18")
        .expect_line("hv: vm ports64 unknown port accesses: 10")
        // Containment.
        .expect_line("hv: vm oob64 stopped: write outside its memory: guest-physical 0x30000000")
        .expect_no("oob64: ERROR")
        .expect_line("hv: vm triple64 stopped: triple fault (shutdown)")
        .expect_no("triple64: ERROR")
        .expect_line("spin64 | spin64: spinning forever")
        .expect_line("hv: vm spin64 stopped: background VM: every foreground VM has stopped")
        // Exit statistics per VM.
        .expect_line("hv: vm ports64 exits: total ")
        .expect_line("hypercall=2")
        .expect_line("hv: vm oob64 exits: total ")
        .expect_line("npf=1")
        .expect_line("shutdown=1")
        .expect_line("hv: all VMs stopped; host memory returned: all")
        .expect_line("hv: stopping with status 16 (Success)")
        .expect_no("EXCEPTION")
        .expect_no("PANIC");
    // The healthy VM makes progress next to the spinner: the spinner started before
    // hello64's first "alive" line and is only stopped after hello64 finished. Had the
    // spinner starved the others, the run would not end and the time limit would fail
    // the test.
    assert!(
        position(out, "spin64 | spin64: spinning forever")
            < position(out, "hello64 | hello64: alive 1")
    );
    assert!(position(out, "hello64 | hello64: done") < position(out, "hv: vm spin64 stopped"));
    // The EFER the guest reads shows long mode, never SVME (bit 12).
    let efer_line = out.line_with("msr64 | msr64: efer=");
    let efer = u64::from_str_radix(efer_line.rsplit("0x").next().unwrap_or("").trim(), 16)
        .unwrap_or_else(|_| fail(out, format!("malformed EFER line {efer_line:?}")));
    assert_eq!(efer & 0x500, 0x500, "LME|LMA in {efer_line}");
    assert_eq!(efer & (1 << 12), 0, "SVME leaked: {efer_line}");
}

/// The count in `count64`'s answer `count64 | count64: got WORD at N` (the first
/// one) in `serial`.
pub fn count64_at(serial: &str, word: &str) -> u64 {
    let marker = format!("count64 | count64: got {word} at ");
    let at = serial
        .find(&marker)
        .unwrap_or_else(|| panic!("no {marker:?}:\n{serial}"));
    serial[at + marker.len()..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count after {marker:?}"))
}
