//! `cargo xtask bench`: the hypervisor's speed figures and ratios, from one run.
//!
//! What it measures, each `--runs` times (default 3), reported as median [min-max]:
//!
//! - **Linux to /init**: the Debian kernel and initramfs of the Linux guest, booted
//!   by the hypervisor (the `Bench` guest set, in QEMU with software-emulated AMD-V)
//!   against the same bzImage, initrd and command line booted directly by QEMU's
//!   `-kernel`. Both are timed from QEMU's start to the serial line
//!   `hv-linux: init running`, by the wall clock at which the line arrived (the
//!   captured runner of `emulator.rs` only returns the whole log at the end, so this
//!   file has a line-streaming one). The ratio is what running under us costs.
//!   The hypervisor's total also holds the firmware loading it and its own boot,
//!   which `-kernel` does not pay, so a second row times from `hv: vm linux
//!   started`. Under QEMU the guest bundle (some 13 MB) is on an NVMe disk's
//!   `hv-bundle` partition, as `cargo xtask run` starts it, so the firmware does
//!   not read it through BIOS calls; the hypervisor reads it with its NVMe driver.
//! - **Exits per reason** of that Linux VM (its `hv: vm linux exits:` line, printed
//!   when it powers off, so it covers boot, init and power-off).
//! - **The CPUID round trip** in guest TSC cycles, measured by the `bench64` guest:
//!   through our full exit path, and through a bare VMRUN/VMRESUME loop that only
//!   skips the instruction. The bare loop is the floor the (emulated) hardware sets;
//!   the ratio shows what our exit path adds on top.
//! - **The IPI round trip** between the two vCPUs of one VM, in guest TSC cycles,
//!   as the `smp64` guest reports it (the median of 1,000 ping-pongs, each timed
//!   from the BSP's fixed IPI to the AP's answer): `smp64` alone on a 2-processor
//!   machine, once with both vCPUs pinned to host processor 0 (they take turns on
//!   it) and once allowed on processors 0 and 1 (each has one of its own). The
//!   ratio is what sharing a processor costs a VM's vCPUs that talk to each other.
//!   Where the vCPUs actually ran comes from the kernel's `cpu time` line; a
//!   pinned VM found elsewhere is reported as a failure, not measured.
//! - **VM to VM** through the switch: two Linux VMs with `hv.bench=net`
//!   ([`GuestSet::BenchNet`]) send [`NET_BENCH_MIB`] MiB over TCP and ping 100
//!   times back to back, against the same kernels, initramfs and command lines in
//!   two plain QEMUs joined by `-netdev socket`, and once more with both plain
//!   QEMUs pinned to one host core (`taskset -c 0`, as hv's two VMs share one TCG
//!   thread). Both are timed by the host from the arrival of the guests' serial
//!   lines (their clocks tick in jiffies); the ratios are hv/direct, and hv against
//!   the pinned pair. `--only net` measures just these.
//!
//! These are figures, not tests: emulators on shared machines are noisy, so nothing
//! here has a pass mark. Hypervisor and direct runs alternate so that a slow spell of
//! the machine hits both sides alike. A part that fails is named with its reason and
//! the other figures are still printed; the command fails only when nothing at all
//! could be measured. Each run's serial output, every line with its arrival time,
//! is kept in `target/hv/bench/logs/` for finding where the time went.
//!
//! `--emulator bochs` measures the hypervisor run under Bochs (VT-x with EPT)
//! instead. Bochs has no direct Linux boot comparable to QEMU's `-kernel`, so there
//! is no ratio there; it is said so in the output.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::build::{self, BuildOptions, GuestSet};
use crate::emulator::{
    self, run_streaming, BochsOptions, Firmware, QemuOptions, Streamed, TimedLine,
};
use crate::linux::{self, LinuxGuest};
use crate::tools;

/// The CPU model of every QEMU run here: the software-emulated AMD-V the project's
/// tests use, named explicitly so a nested-capable KVM never changes what is measured.
pub const QEMU_CPU: &str = "qemu64,+svm,+npt,+aes";
/// The machine for the hypervisor run: as in the Linux integration test.
const HV_MEMORY_MIB: u32 = 512;
/// Per-run limits: Linux under the hypervisor in TCG takes about 17 s, the direct
/// boot about 6 s, Linux under the hypervisor in Bochs about 2 minutes; the limits
/// leave room for a machine busy with other work.
const QEMU_HV_LIMIT: Duration = Duration::from_secs(300);
const QEMU_DIRECT_LIMIT: Duration = Duration::from_secs(180);
/// A disk throughput run: boot, then 128 MiB of direct I/O (software AES under TCG
/// moves a few MiB/s on the encrypted disk).
const QEMU_DISK_LIMIT: Duration = Duration::from_secs(420);
const BOCHS_LIMIT: Duration = Duration::from_secs(1200);
/// Bochs gives no exit status to watch (see `emulator.rs`): a serial log that stops
/// growing this long means it is gone or stuck.
const BOCHS_STALL: Duration = Duration::from_secs(300);

/// The IPI benchmark's machine: two processors (one per vCPU of `smp64` when they
/// may be split), and memory for the hypervisor and a 4 MiB guest.
const IPI_PROCESSORS: u32 = 2;
const IPI_MEMORY_MIB: u32 = 128;
/// `smp64` alone boots and finishes in seconds under TCG, in minutes under Bochs.
const QEMU_IPI_LIMIT: Duration = Duration::from_secs(120);
const BOCHS_IPI_LIMIT: Duration = Duration::from_secs(900);

/// The serial line that ends the Linux boot we time (the first line of /init).
pub const INIT_LINE: &str = "hv-linux: init running";

/// Which emulator runs the hypervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emulator {
    Qemu,
    Bochs,
}

impl std::str::FromStr for Emulator {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "qemu" => Ok(Emulator::Qemu),
            "bochs" => Ok(Emulator::Bochs),
            other => Err(format!("unknown emulator {other:?}: use qemu or bochs")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub build: BuildOptions,
    pub runs: u32,
    pub emulator: Emulator,
    /// `--only net`: only the VM-to-VM figures (QEMU only).
    pub only_net: bool,
}

// ---------------------------------------------------------------------------------
// The pure parts: parsing serial lines, statistics, formatting (host-tested below).
// ---------------------------------------------------------------------------------

/// A VM's exit counts, from `hv: vm <name> exits: total N: io=3 cpuid=2 ...`
/// (reasons that never happened are left out by the kernel).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exits {
    pub total: u64,
    /// In the kernel's order.
    pub reasons: Vec<(String, u64)>,
}

impl std::fmt::Display for Exits {
    /// The kernel's own format, so the figure reads like the log line.
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "total {}:", self.total)?;
        for (name, n) in &self.reasons {
            write!(f, " {name}={n}")?;
        }
        Ok(())
    }
}

/// The exit counts of VM `vm` if `line` is its exits line.
pub fn parse_exits(line: &str, vm: &str) -> Option<Exits> {
    let marker = format!("hv: vm {vm} exits: total ");
    let rest = &line[line.find(&marker)? + marker.len()..];
    let (total, reasons) = rest.split_once(':')?;
    let total = total.trim().parse().ok()?;
    let reasons = reasons
        .split_whitespace()
        .map(|pair| {
            let (name, n) = pair.split_once('=')?;
            Some((name.to_string(), n.parse().ok()?))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Exits { total, reasons })
}

/// One CPUID round-trip figure reported by `bench64`: the median of round trips
/// timed one by one (so time slices given to other VMs do not count).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuidFigure {
    /// Average TSC cycles per round trip.
    pub cycles: f64,
    /// How many round trips the median is taken over.
    pub count: u64,
}

/// What a `bench64` line says.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bench64Line {
    /// `bench64: cpuid full-path median=<cycles> cycles over <n>`
    FullPath(CpuidFigure),
    /// `bench64: cpuid bare-loop median=<cycles> cycles over <n>`
    BareLoop(CpuidFigure),
    /// `bench64: bare loop unsupported`
    BareUnsupported,
    /// `bench64: done`
    Done,
}

/// Parses a `bench64:` line, relayed (`bench64 | bench64: ...`) or not.
pub fn parse_bench64(line: &str) -> Option<Bench64Line> {
    const TAG: &str = "bench64: ";
    let rest = line[line.rfind(TAG)? + TAG.len()..].trim();
    // `<cycles> cycles over <n>`
    let figure = |s: &str| -> Option<CpuidFigure> {
        let words: Vec<&str> = s.split_whitespace().collect();
        match words.as_slice() {
            [cycles, "cycles", "over", n] => Some(CpuidFigure {
                cycles: cycles.parse().ok().filter(|a: &f64| a.is_finite())?,
                count: n.parse().ok()?,
            }),
            _ => None,
        }
    };
    if let Some(s) = rest.strip_prefix("cpuid full-path median=") {
        figure(s).map(Bench64Line::FullPath)
    } else if let Some(s) = rest.strip_prefix("cpuid bare-loop median=") {
        figure(s).map(Bench64Line::BareLoop)
    } else if rest == "bare loop unsupported" {
        Some(Bench64Line::BareUnsupported)
    } else if rest == "done" {
        Some(Bench64Line::Done)
    } else {
        None
    }
}

/// The bare loop's outcome in one run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bare {
    Measured(CpuidFigure),
    Unsupported,
}

/// What one hypervisor run showed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HvRun {
    /// `hv: vm linux started`.
    pub vm_started: Option<Duration>,
    /// `linux | hv-linux: init running`.
    pub init: Option<Duration>,
    pub exits: Option<Exits>,
    pub full: Option<CpuidFigure>,
    pub bare: Option<Bare>,
    pub bench_done: bool,
    /// The text after `hv: stopping with status ` (e.g. `16 (Success)`).
    pub stop_status: Option<String>,
    /// Lines that mean something went wrong (panics, exceptions).
    pub alarms: Vec<String>,
    pub last_line: Option<String>,
}

/// Reads a hypervisor run's serial lines.
pub fn analyse_hv(lines: &[TimedLine]) -> HvRun {
    let mut run = HvRun::default();
    for l in lines {
        let t = l.text.as_str();
        if t.contains("hv: vm linux started") {
            run.vm_started.get_or_insert(l.at);
        } else if t.contains(&format!("linux | {INIT_LINE}")) {
            run.init.get_or_insert(l.at);
        } else if let Some(e) = parse_exits(t, "linux") {
            run.exits = Some(e);
        } else if let Some(s) = t.split_once("hv: stopping with status ") {
            run.stop_status = Some(s.1.trim().to_string());
        } else if t.starts_with("bench64 | ") {
            match parse_bench64(t) {
                Some(Bench64Line::FullPath(f)) => run.full = Some(f),
                Some(Bench64Line::BareLoop(f)) => run.bare = Some(Bare::Measured(f)),
                Some(Bench64Line::BareUnsupported) => run.bare = Some(Bare::Unsupported),
                Some(Bench64Line::Done) => run.bench_done = true,
                None => {}
            }
        }
        if LINUX_ALARMS.iter().any(|a| t.contains(a)) {
            run.alarms.push(t.to_string());
        }
    }
    run.last_line = last_line(lines).map(|l| l.text.clone());
    run
}

/// Lines of a Linux run that mean it went wrong.
const LINUX_ALARMS: [&str; 3] = ["Kernel panic", "EXCEPTION", "PANIC"];

/// The last serial line with anything on it.
fn last_line(lines: &[TimedLine]) -> Option<&TimedLine> {
    lines.iter().rev().find(|l| !l.text.trim().is_empty())
}

/// The run's last serial line, for a problem message.
fn last_serial_line(line: Option<&str>) -> String {
    line.map_or("no serial output at all".to_string(), |l| {
        format!("last serial line: {l:?}")
    })
}

/// The message for a run that did not end within `limit`, if it timed out.
fn timeout_problem(timed_out: bool, limit: Duration, line: Option<&str>) -> Option<String> {
    timed_out.then(|| {
        format!(
            "the run did not end within {} s ({})",
            limit.as_secs(),
            last_serial_line(line)
        )
    })
}

/// What went wrong in a hypervisor run, one message per missing figure.
pub fn hv_problems(run: &HvRun, timed_out: bool, limit: Duration) -> Vec<String> {
    let mut p = Vec::new();
    let last = || last_serial_line(run.last_line.as_deref());
    p.extend(timeout_problem(timed_out, limit, run.last_line.as_deref()));
    if run.init.is_none() {
        p.push(format!(
            "no `linux | {INIT_LINE}` line: Linux did not reach /init ({})",
            last()
        ));
    }
    if run.exits.is_none() {
        p.push("no `hv: vm linux exits:` line (the Linux VM never stopped)".into());
    }
    if run.full.is_none() {
        p.push("no `bench64: cpuid full-path` line".into());
    }
    if run.bare.is_none() {
        p.push("no `bench64: cpuid bare-loop` line".into());
    }
    match run.stop_status.as_deref() {
        Some(s) if !s.starts_with("16 ") && s != "16" => {
            p.push(format!("the hypervisor stopped with status {s}"))
        }
        _ => {}
    }
    for a in &run.alarms {
        p.push(format!("alarm on the serial line: {a:?}"));
    }
    p
}

/// The IPI round trip `smp64` reports after its ping-pong, in its guest's TSC cycles:
/// `smp64: ipi round trip median=<N> min=<N> max=<N> cycles`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpiFigure {
    pub median: u64,
    pub min: u64,
    pub max: u64,
}

/// Parses an `smp64: ipi round trip` line, relayed (`smp64 | smp64: ...`) or not.
pub fn parse_smp64_ipi(line: &str) -> Option<IpiFigure> {
    const TAG: &str = "smp64: ipi round trip ";
    let rest = line[line.rfind(TAG)? + TAG.len()..].trim();
    let words: Vec<&str> = rest.split_whitespace().collect();
    let [median, min, max, "cycles"] = words.as_slice() else {
        return None;
    };
    let value = |word: &str, key: &str| -> Option<u64> { word.strip_prefix(key)?.parse().ok() };
    let f = IpiFigure {
        median: value(median, "median=")?,
        min: value(min, "min=")?,
        max: value(max, "max=")?,
    };
    (f.min <= f.median && f.median <= f.max).then_some(f)
}

/// The host processors each vCPU of VM `vm` ran on, from the kernel's
/// `hv: vm <vm> cpu time: T ms (vCPUs: a ms on cpu 0+1, b ms on cpu none)` line
/// (`none`: a vCPU that never entered the guest gives an empty list).
pub fn parse_cpu_time(line: &str, vm: &str) -> Option<Vec<Vec<u32>>> {
    let marker = format!("hv: vm {vm} cpu time: ");
    let rest = &line[line.find(&marker)? + marker.len()..];
    let list = rest
        .split_once("(vCPUs: ")?
        .1
        .trim_end()
        .strip_suffix(')')?;
    list.split(", ")
        .map(|vcpu| {
            let (ms, cpus) = vcpu.split_once(" ms on cpu ")?;
            ms.parse::<u64>().ok()?;
            match cpus {
                "none" => Some(Vec::new()),
                _ => cpus.split('+').map(|c| c.parse().ok()).collect(),
            }
        })
        .collect()
}

/// `cpu 0 and cpu 0+1`: where each vCPU ran, for the report.
pub fn fmt_placement(vcpus: &[Vec<u32>]) -> String {
    vcpus
        .iter()
        .map(|cpus| {
            if cpus.is_empty() {
                "no cpu".to_string()
            } else {
                let list: Vec<String> = cpus.iter().map(u32::to_string).collect();
                format!("cpu {}", list.join("+"))
            }
        })
        .collect::<Vec<_>>()
        .join(" and ")
}

/// Where the IPI benchmark's two vCPUs may run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Both pinned to host processor 0 ([`GuestSet::BenchIpiShared`]).
    SameProcessor,
    /// Allowed on processors 0 and 1 of a 2-processor machine
    /// ([`GuestSet::BenchIpiSplit`]).
    TwoProcessors,
}

impl Placement {
    pub fn guest_set(self) -> GuestSet {
        match self {
            Placement::SameProcessor => GuestSet::BenchIpiShared,
            Placement::TwoProcessors => GuestSet::BenchIpiSplit,
        }
    }

    /// For progress lines, failures and log names.
    pub fn name(self) -> &'static str {
        match self {
            Placement::SameProcessor => "ipi-same-cpu",
            Placement::TwoProcessors => "ipi-two-cpus",
        }
    }
}

/// What one IPI benchmark run (`smp64` alone) showed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IpiRun {
    pub ipi: Option<IpiFigure>,
    /// The host processors each vCPU ran on.
    pub ran_on: Option<Vec<Vec<u32>>>,
    /// `smp64: done`.
    pub done: bool,
    /// The reason on an `smp64: FAIL <reason>` line.
    pub fail: Option<String>,
    pub stop_status: Option<String>,
    pub alarms: Vec<String>,
    pub last_line: Option<String>,
}

/// Reads an IPI benchmark run's serial lines.
pub fn analyse_ipi(lines: &[TimedLine]) -> IpiRun {
    let mut run = IpiRun::default();
    for l in lines {
        let t = l.text.as_str();
        if t.starts_with("smp64 | ") {
            if let Some(f) = parse_smp64_ipi(t) {
                run.ipi = Some(f);
            } else if let Some((_, why)) = t.split_once("smp64: FAIL ") {
                run.fail.get_or_insert(why.trim().to_string());
            } else if t.trim_end().ends_with("smp64: done") {
                run.done = true;
            }
        } else if let Some(cpus) = parse_cpu_time(t, "smp64") {
            run.ran_on = Some(cpus);
        } else if let Some(s) = t.split_once("hv: stopping with status ") {
            run.stop_status = Some(s.1.trim().to_string());
        }
        if ["EXCEPTION", "PANIC"].iter().any(|a| t.contains(a)) {
            run.alarms.push(t.to_string());
        }
    }
    run.last_line = last_line(lines).map(|l| l.text.clone());
    run
}

/// What went wrong in an IPI benchmark run. A figure from vCPUs that did not stay
/// where `placement` put them is a problem too: it would measure something else.
pub fn ipi_problems(
    run: &IpiRun,
    placement: Placement,
    timed_out: bool,
    limit: Duration,
) -> Vec<String> {
    let mut p = Vec::new();
    let last = || last_serial_line(run.last_line.as_deref());
    p.extend(timeout_problem(timed_out, limit, run.last_line.as_deref()));
    if let Some(why) = &run.fail {
        p.push(format!("smp64 failed: {why}"));
    }
    if run.ipi.is_none() {
        p.push(format!("no `smp64: ipi round trip` line ({})", last()));
    }
    match &run.ran_on {
        None => p.push("no `hv: vm smp64 cpu time:` line (the VM never stopped)".into()),
        Some(vcpus) if vcpus.len() != 2 => {
            p.push(format!("smp64 had {} vCPUs, not 2", vcpus.len()))
        }
        Some(vcpus)
            if placement == Placement::SameProcessor
                && vcpus.iter().any(|cpus| cpus.as_slice() != [0]) =>
        {
            p.push(format!(
                "smp64 was pinned to processor 0 but its vCPUs ran on {}",
                fmt_placement(vcpus)
            ))
        }
        Some(_) => {}
    }
    match run.stop_status.as_deref() {
        Some(s) if !s.starts_with("16 ") && s != "16" => {
            p.push(format!("the hypervisor stopped with status {s}"))
        }
        _ => {}
    }
    for a in &run.alarms {
        p.push(format!("alarm on the serial line: {a:?}"));
    }
    p
}

/// The VM-to-VM transfer of [`GuestSet::BenchNet`]: MiB of zeros from
/// `net-source` to `net-sink`, through busybox nc to this TCP port.
pub const NET_BENCH_MIB: u32 = 8;
pub const NET_BENCH_PORT: u16 = 5001;
/// The two VMs of [`GuestSet::BenchNet`], as the hypervisor names them in its
/// relayed console lines (`net-sink | ...`); the direct runs label theirs alike.
pub const NET_SINK: &str = "net-sink";
pub const NET_SOURCE: &str = "net-source";
/// Two Linux boots (one TCG thread under hv, some 30-60 s), 20 pings 0.2 s apart,
/// and the transfer (a few MiB/s under TCG); room for a busy machine.
const QEMU_NET_LIMIT: Duration = Duration::from_secs(360);

/// The source's ping summary: `ping ADDR: N packets transmitted, M packets
/// received, L% packet loss; round-trip min/avg/max = a/b/c ms` (busybox's two
/// summary lines joined; the round trips only when an answer came).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PingFigure {
    pub transmitted: u32,
    pub received: u32,
    /// min, avg, max in ms, by the source guest's clock.
    pub rtt_ms: Option<(f64, f64, f64)>,
}

/// What a `hv-linux: net bench:` line says.
#[derive(Clone, Debug, PartialEq)]
pub enum NetLine {
    Ping(PingFigure),
    /// `tcp start N bytes to ADDR:PORT` (the source, just before nc starts).
    TcpStart(u64),
    /// `tcp received N bytes` (the sink, when the connection closed).
    TcpReceived(u64),
    /// `tcp sent, nc exit status N` (the source, once its data was acknowledged).
    TcpSent(i32),
    /// `FAIL <reason>`.
    Fail(String),
    /// `ping burst start N to ADDR`: N echo requests back to back follow.
    BurstStart(u32),
    /// `ping burst done: N packets transmitted, M packets received, ...`.
    BurstDone {
        transmitted: u32,
        received: u32,
    },
    /// `clocksource NAME`: the source guest's clock, which ping reads (`tsc`;
    /// `refined-jiffies` ticks in whole jiffies, 4 ms in Debian's kernel).
    Clocksource(String),
}

/// Parses a `hv-linux: net bench:` line, relayed (`net-sink | ...`) or not.
pub fn parse_net_line(line: &str) -> Option<NetLine> {
    const TAG: &str = "hv-linux: net bench: ";
    let rest = line[line.find(TAG)? + TAG.len()..].trim();
    if let Some(why) = rest.strip_prefix("FAIL ") {
        return Some(NetLine::Fail(why.to_string()));
    }
    if let Some(r) = rest.strip_prefix("tcp start ") {
        let (n, _) = r.split_once(" bytes to ")?;
        return n.parse().ok().map(NetLine::TcpStart);
    }
    if let Some(r) = rest.strip_prefix("tcp received ") {
        return r
            .strip_suffix(" bytes")?
            .parse()
            .ok()
            .map(NetLine::TcpReceived);
    }
    if let Some(r) = rest.strip_prefix("tcp sent, nc exit status ") {
        return r.parse().ok().map(NetLine::TcpSent);
    }
    if let Some(r) = rest.strip_prefix("clocksource ") {
        return (!r.is_empty() && !r.contains(' ')).then(|| NetLine::Clocksource(r.into()));
    }
    if let Some(r) = rest.strip_prefix("ping burst start ") {
        let (n, _) = r.split_once(" to ")?;
        return n.parse().ok().map(NetLine::BurstStart);
    }
    if let Some(r) = rest.strip_prefix("ping burst done: ") {
        let (transmitted, received) = ping_counts(r)?;
        return (received <= transmitted).then_some(NetLine::BurstDone {
            transmitted,
            received,
        });
    }
    let r = rest.strip_prefix("ping ")?;
    let (_, summary) = r.split_once(": ")?;
    let (counts, rtt) = summary.split_once(';')?;
    let (transmitted, received) = ping_counts(counts)?;
    let rtt = rtt.trim();
    let rtt_ms = if rtt.is_empty() {
        None
    } else {
        let values = rtt
            .strip_prefix("round-trip min/avg/max = ")?
            .strip_suffix(" ms")?;
        let v: Vec<f64> = values
            .split('/')
            .map(|x| x.parse().ok().filter(|x: &f64| x.is_finite() && *x >= 0.0))
            .collect::<Option<_>>()?;
        match v.as_slice() {
            &[min, avg, max] if min <= avg && avg <= max => Some((min, avg, max)),
            _ => return None,
        }
    };
    // Busybox prints round trips exactly when some answer came.
    if received > transmitted || (received > 0) != rtt_ms.is_some() {
        return None;
    }
    Some(NetLine::Ping(PingFigure {
        transmitted,
        received,
        rtt_ms,
    }))
}

/// `N packets transmitted, M packets received, ...` (busybox ping's summary).
fn ping_counts(text: &str) -> Option<(u32, u32)> {
    let (transmitted, rest) = text.split_once(" packets transmitted, ")?;
    let (received, _) = rest.split_once(" packets received")?;
    Some((
        transmitted.trim().parse().ok()?,
        received.trim().parse().ok()?,
    ))
}

/// What one VM-to-VM run (under hv or between two plain QEMUs) showed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NetRun {
    pub ping: Option<PingFigure>,
    /// When the source's `tcp start` line arrived, and the bytes it sends.
    pub start: Option<(Duration, u64)>,
    /// When the sink's `tcp received` line arrived, and the bytes it counted.
    pub received: Option<(Duration, u64)>,
    pub sent_status: Option<i32>,
    /// When the burst's start line arrived and its count of echo requests ...
    pub burst_start: Option<(Duration, u32)>,
    /// ... and when its end line did, with busybox's counts.
    pub burst_done: Option<(Duration, u32, u32)>,
    /// The source guest's clocksource.
    pub clocksource: Option<String>,
    /// `vm: reason` of each `FAIL` line.
    pub fails: Vec<String>,
    pub alarms: Vec<String>,
    pub last_line: Option<String>,
}

impl NetRun {
    /// MiB/s of the transfer, from the host's arrival times of the source's start
    /// line and the sink's end line; only when the sink got every byte.
    pub fn tcp_mib_s(&self) -> Option<f64> {
        let ((t0, sent), (t1, got)) = (self.start?, self.received?);
        let secs = t1.checked_sub(t0)?.as_secs_f64();
        (sent > 0 && got == sent && secs > 0.0).then(|| got as f64 / (1 << 20) as f64 / secs)
    }

    /// busybox's average ping round trip in ms (the guest's clock), when there
    /// was one.
    pub fn ping_avg_ms(&self) -> Option<f64> {
        self.ping?.rtt_ms.map(|(_, avg, _)| avg)
    }

    /// The round trip of the back-to-back burst in ms, by the host's clock: the
    /// time between its two lines over the count; only when every request was
    /// answered (a lost one would wait out its timeout).
    pub fn burst_ms(&self) -> Option<f64> {
        let ((t0, n), (t1, sent, got)) = (self.burst_start?, self.burst_done?);
        let secs = t1.checked_sub(t0)?.as_secs_f64();
        (n > 0 && sent == n && got == n && secs > 0.0).then(|| secs * 1000.0 / f64::from(n))
    }
}

/// Whether a VM-to-VM run is over with `line`: the sink's count arrived, a guest
/// failed or its kernel panicked, the source's nc failed (the sink would wait for
/// its own time limit), or the hypervisor stopped.
pub fn net_run_over(line: &str) -> bool {
    match parse_net_line(line) {
        Some(NetLine::TcpReceived(_)) => line.starts_with(&format!("{NET_SINK} | ")),
        Some(NetLine::Fail(_)) => true,
        Some(NetLine::TcpSent(status)) => status != 0,
        _ => line.contains("Kernel panic") || line.contains("hv: stopping with status"),
    }
}

/// Reads a VM-to-VM run's serial lines (`net-sink | ...`, `net-source | ...`).
pub fn analyse_net(lines: &[TimedLine]) -> NetRun {
    let mut run = NetRun::default();
    let source = format!("{NET_SOURCE} | ");
    let sink = format!("{NET_SINK} | ");
    for l in lines {
        let t = l.text.as_str();
        let from_source = t.starts_with(&source);
        let from_sink = t.starts_with(&sink);
        match parse_net_line(t) {
            Some(NetLine::Ping(p)) if from_source => run.ping = Some(p),
            Some(NetLine::TcpStart(n)) if from_source => {
                run.start.get_or_insert((l.at, n));
            }
            Some(NetLine::TcpSent(s)) if from_source => run.sent_status = Some(s),
            Some(NetLine::BurstStart(n)) if from_source => {
                run.burst_start.get_or_insert((l.at, n));
            }
            Some(NetLine::BurstDone {
                transmitted,
                received,
            }) if from_source => {
                run.burst_done.get_or_insert((l.at, transmitted, received));
            }
            Some(NetLine::Clocksource(name)) if from_source => run.clocksource = Some(name),
            Some(NetLine::TcpReceived(n)) if from_sink => {
                run.received.get_or_insert((l.at, n));
            }
            Some(NetLine::Fail(why)) => {
                let vm = t.split(" | ").next().unwrap_or("?");
                run.fails.push(format!("{vm}: {why}"));
            }
            _ => {}
        }
        if LINUX_ALARMS.iter().any(|a| t.contains(a)) {
            run.alarms.push(t.to_string());
        }
    }
    run.last_line = last_line(lines).map(|l| l.text.clone());
    run
}

/// What went wrong in a VM-to-VM run, one message per missing figure.
pub fn net_problems(run: &NetRun, timed_out: bool, limit: Duration) -> Vec<String> {
    let mut p = Vec::new();
    p.extend(timeout_problem(timed_out, limit, run.last_line.as_deref()));
    for f in &run.fails {
        p.push(format!("guest failed: {f}"));
    }
    match run.ping {
        None => p.push(format!(
            "no `{NET_SOURCE} | hv-linux: net bench: ping` line ({})",
            last_serial_line(run.last_line.as_deref())
        )),
        Some(f) if f.rtt_ms.is_none() => p.push(format!(
            "no ping answered ({} sent, {} answered)",
            f.transmitted, f.received
        )),
        Some(_) => {}
    }
    match (run.burst_start, run.burst_done) {
        (Some((_, n)), Some((_, sent, got))) if sent != n || got != n => p.push(format!(
            "ping burst: {got} of {sent} echo requests answered ({n} asked for)"
        )),
        (Some(_), Some(_)) => {}
        _ => p.push(format!(
            "no `{NET_SOURCE} | ... ping burst` start and done lines"
        )),
    }
    match (run.start, run.received) {
        (None, _) => p.push(format!("no `{NET_SOURCE} | ... tcp start` line")),
        (Some(_), None) => p.push(format!(
            "no `{NET_SINK} | ... tcp received` line: the transfer did not end ({})",
            last_serial_line(run.last_line.as_deref())
        )),
        (Some((_, sent)), Some((_, got))) if got != sent => {
            p.push(format!("the sink received {got} bytes of {sent}"))
        }
        _ => {}
    }
    if let Some(s) = run.sent_status.filter(|&s| s != 0) {
        p.push(format!("the source's nc exited with status {s}"));
    }
    for a in &run.alarms {
        p.push(format!("alarm on the serial line: {a:?}"));
    }
    p
}

/// Median and spread of a set of measurements.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

/// `None` for no values; the median of an even count is the mean of the middle two.
pub fn summarize(values: &[f64]) -> Option<Summary> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Summary {
        median,
        min: v[0],
        max: v[n - 1],
        n,
    })
}

/// The per-reason median of several runs' exit counts, reasons in first-seen order
/// (a reason missing from a run counts 0 there).
pub fn median_exits(runs: &[Exits]) -> Option<Exits> {
    if runs.is_empty() {
        return None;
    }
    let mut names: Vec<&str> = Vec::new();
    for r in runs {
        for (name, _) in &r.reasons {
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
    }
    let med = |values: Vec<f64>| summarize(&values).map_or(0, |s| s.median.round() as u64);
    Some(Exits {
        total: med(runs.iter().map(|r| r.total as f64).collect()),
        reasons: names
            .iter()
            .map(|&name| {
                let counts = runs
                    .iter()
                    .map(|r| {
                        r.reasons
                            .iter()
                            .find(|(n, _)| n == name)
                            .map_or(0.0, |(_, c)| *c as f64)
                    })
                    .collect();
                (name.to_string(), med(counts))
            })
            .collect(),
    })
}

/// `52300` -> `52,300`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `a / b` as `1.27x`; `None` when `b` is not positive.
pub fn ratio(a: f64, b: f64) -> Option<String> {
    (b > 0.0 && a.is_finite()).then(|| format!("{:.2}x", a / b))
}

/// `8.1 s  [7.9-8.4]` (the range only when there is more than one value).
pub fn fmt_secs(s: &Summary) -> String {
    if s.n > 1 {
        format!("{:.1} s  [{:.1}-{:.1}]", s.median, s.min, s.max)
    } else {
        format!("{:.1} s", s.median)
    }
}

/// `52,300 cycles  [51,000-53,100]`.
pub fn fmt_cycles(s: &Summary) -> String {
    let c = |x: f64| thousands(x.round().max(0.0) as u64);
    if s.n > 1 {
        format!("{} cycles  [{}-{}]", c(s.median), c(s.min), c(s.max))
    } else {
        format!("{} cycles", c(s.median))
    }
}

/// `7.2.22` from `QEMU emulator version 7.2.22 (Debian ...)`.
pub fn qemu_version(text: &str) -> Option<&str> {
    let rest = &text[text.find("version ")? + "version ".len()..];
    rest.split_whitespace().next()
}

/// Everything measured, ready to print.
#[derive(Clone, Debug, Default)]
pub struct Collected {
    /// The emulator and CPU, e.g. `QEMU 7.2.22 TCG, -cpu qemu64,+svm,+npt`.
    pub setup: String,
    pub runs: u32,
    pub emulator_name: String,
    /// Seconds from QEMU start to /init, booted directly.
    pub direct: Vec<f64>,
    /// Why there is no direct figure, when there is none by design (Bochs).
    pub direct_absent: Option<String>,
    pub hv: Vec<HvRun>,
    /// The Linux VM's vCPUs (the direct boot's `-smp`) and the processors of the
    /// machine the hypervisor ran it on; 0: not known.
    pub linux_vcpus: u32,
    pub hv_cpus: u32,
    /// The IPI benchmark runs, both vCPUs on one processor and on two.
    pub ipi_same: Vec<IpiRun>,
    pub ipi_two: Vec<IpiRun>,
    /// Disk throughput: QEMU's own virtio-blk, ours on a plain and on an encrypted
    /// partition of the NVMe disk.
    pub disk_direct: Vec<DiskFigure>,
    pub disk_plain: Vec<DiskFigure>,
    pub disk_encrypted: Vec<DiskFigure>,
    /// Snapshot and restore of the console test's Linux VM, from the console.
    pub snapshots: Vec<SnapshotFigure>,
    /// VM-to-VM runs: two Linux VMs through the hypervisor's switch, and the same
    /// two in plain QEMUs joined by a socket netdev.
    pub net_hv: Vec<NetRun>,
    pub net_direct: Vec<NetRun>,
    /// The same two plain QEMUs with every thread of both on one host core
    /// (`taskset -c 0`): what sharing one core costs the reference by itself.
    pub net_one_core: Vec<NetRun>,
    /// Only the VM-to-VM figures were asked for (`--only net`): the other rows
    /// are left out rather than shown as failed.
    pub only_net: bool,
    /// `part: reason` lines.
    pub failures: Vec<String>,
}

impl Collected {
    /// Whether any figure at all was measured.
    pub fn anything(&self) -> bool {
        !self.direct.is_empty()
            || !self.disk_direct.is_empty()
            || !self.disk_plain.is_empty()
            || self
                .net_hv
                .iter()
                .chain(&self.net_direct)
                .any(|r| r.tcp_mib_s().is_some() || r.burst_ms().is_some())
            || self.hv.iter().any(|r| {
                r.init.is_some() || r.exits.is_some() || r.full.is_some() || r.bare.is_some()
            })
            || self
                .ipi_same
                .iter()
                .chain(&self.ipi_two)
                .any(|r| r.ipi.is_some())
    }
}

/// `s` for counts other than one.
fn plural(n: u32) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The label columns of the table.
fn row(label: &str, sub: &str, value: &str) -> String {
    format!("{label:<17}{sub:<16}{value}")
}

/// The `failed:` list that ends the table.
fn push_failures(out: &mut Vec<String>, failures: &[String]) {
    if !failures.is_empty() {
        out.push("failed:".into());
        for f in failures {
            out.push(format!("  {f}"));
        }
    }
}

/// `12.3 MiB/s  [11.0-13.1]` (the range only when the values differ).
fn fmt_figure(s: &Summary, decimals: usize, unit: &str) -> String {
    if s.n > 1 && s.min != s.max {
        format!(
            "{:.d$} {unit}  [{:.d$}-{:.d$}]",
            s.median,
            s.min,
            s.max,
            d = decimals
        )
    } else {
        format!("{:.d$} {unit}", s.median, d = decimals)
    }
}

/// One VM-to-VM figure's row: its labels, how a run gives it, decimals, unit.
type NetRow = (
    &'static str,
    String,
    fn(&NetRun) -> Option<f64>,
    usize,
    &'static str,
);

/// The VM-to-VM rows: TCP throughput and ping round trip, direct and under hv,
/// with the ratio hv/direct. Nothing when no VM-to-VM run was made.
fn net_rows(c: &Collected) -> Vec<String> {
    let mut out = Vec::new();
    if c.net_hv.is_empty() && c.net_direct.is_empty() {
        return out;
    }
    let figures = |runs: &[NetRun], f: fn(&NetRun) -> Option<f64>| {
        summarize(&runs.iter().filter_map(f).collect::<Vec<_>>())
    };
    let rows: [NetRow; 2] = [
        (
            "VM-to-VM TCP",
            format!("  {NET_BENCH_MIB} MiB, nc"),
            NetRun::tcp_mib_s,
            1,
            "MiB/s",
        ),
        (
            "VM-to-VM ping",
            "  100 in a row".to_string(),
            NetRun::burst_ms,
            2,
            "ms",
        ),
    ];
    for (head, sub, f, decimals, unit) in rows {
        let direct = figures(&c.net_direct, f);
        let under = figures(&c.net_hv, f);
        let show = |s: &Option<Summary>| {
            s.as_ref().map_or("failed (see below)".to_string(), |s| {
                fmt_figure(s, decimals, unit)
            })
        };
        let one_core = figures(&c.net_one_core, f);
        let against =
            |s: &Option<Summary>, reference: &Option<Summary>, what: &str| match (s, reference) {
                (Some(u), Some(d)) => format!(
                    "{:<30}  ratio {}{what}",
                    show(s),
                    ratio(u.median, d.median).unwrap_or("n/a".into())
                ),
                _ => show(s),
            };
        out.push(row(head, "direct QEMU", &show(&direct)));
        if !c.net_one_core.is_empty() {
            out.push(row(
                "",
                "direct, 1 core",
                &against(&one_core, &direct, " of direct"),
            ));
        }
        out.push(row(&sub, "under hv", &against(&under, &direct, "")));
        if !c.net_one_core.is_empty() {
            out.push(row(
                "",
                "",
                &format!(
                    "{:<30}  ratio {} (hv against direct on 1 core)",
                    "",
                    match (&under, &one_core) {
                        (Some(u), Some(d)) => ratio(u.median, d.median).unwrap_or("n/a".into()),
                        _ => "n/a".into(),
                    }
                ),
            ));
        }
    }
    // busybox's own average of 20 pings by the guest's clock, and that clock
    // (each distinct name once).
    let avg = |runs: &[NetRun]| {
        figures(runs, NetRun::ping_avg_ms).map_or("failed".into(), |s| fmt_figure(&s, 2, "ms"))
    };
    out.push(row(
        "",
        "",
        &format!(
            "(busybox's average of 20, 0.2 s apart: {} direct, {} under hv)",
            avg(&c.net_direct),
            avg(&c.net_hv)
        ),
    ));
    let clocks = |runs: &[NetRun]| {
        let mut seen: Vec<&str> = Vec::new();
        for name in runs.iter().filter_map(|r| r.clocksource.as_deref()) {
            if !seen.contains(&name) {
                seen.push(name);
            }
        }
        seen.join("/")
    };
    let (direct, under) = (clocks(&c.net_direct), clocks(&c.net_hv));
    if !direct.is_empty() || !under.is_empty() {
        let or_unknown = |s: String| if s.is_empty() { "unknown".into() } else { s };
        out.push(row(
            "",
            "",
            &format!(
                "(its clock, the source guest's clocksource: {} direct, {} under hv)",
                or_unknown(direct),
                or_unknown(under)
            ),
        ));
    }
    out
}

/// What the VM-to-VM rows measure, under the table.
const NET_NOTES: [&str; 13] = [
    "VM-to-VM: two Linux VMs (1 vCPU, 160 MiB, virtio-net) on one network: under hv",
    "  through its switch (one QEMU, multi-threaded TCG, 3 processors: each VM on one",
    "  of its own, processor 0 runs none; README, Known problems);",
    "  direct: the same kernel, initramfs and command lines in two plain QEMUs",
    "  (-kernel, one TCG thread each) joined by -netdev socket on 127.0.0.1.",
    "  TCP: zeros through busybox nc, timed by the host from the arrival of the",
    "  source's start line to that of the sink's line counting every byte; ratio",
    "  hv/direct, below 1 is slower. ping: 100 echo requests back to back (ping",
    "  -A), timed by the host between the lines before and after them, per round",
    "  trip; ratio hv/direct, above 1 is slower. busybox's own average reads the",
    "  guest's clock, which with refined-jiffies ticks in 4 ms steps.",
    "  direct, 1 core: the two plain QEMUs with all their threads on host core 0",
    "  (taskset -c 0): what the pair gets when the host's cores are busy.",
];

/// The printed table.
pub fn report(c: &Collected) -> String {
    let mut out = Vec::new();
    let runs = if c.runs == 1 {
        "1 run".to_string()
    } else {
        format!("{} runs, median [min-max]", c.runs)
    };
    out.push(format!("hv bench ({}, {runs})", c.setup));
    if c.only_net {
        out.extend(net_rows(c));
        out.extend(NET_NOTES.map(String::from));
        push_failures(&mut out, &c.failures);
        let mut text = out.join("\n");
        text.push('\n');
        return text;
    }
    let failed = || "failed (see below)".to_string();
    // A figure with its ratio in a column of its own (two spaces after a longer one).
    let with_ratio = |value: String, ratio: String| format!("{value:<30}  ratio {ratio}");
    let secs = |f: &dyn Fn(&HvRun) -> Option<f64>| -> Option<Summary> {
        summarize(&c.hv.iter().filter_map(f).collect::<Vec<_>>())
    };
    let ratio_of = |a: &Summary, b: &Summary| ratio(a.median, b.median).unwrap_or("n/a".into());

    // Linux to /init.
    let direct = summarize(&c.direct);
    let under = secs(&|r| r.init.map(|d| d.as_secs_f64()));
    out.push(row(
        "Linux to /init",
        &format!("direct {}", c.emulator_name),
        &match (&direct, &c.direct_absent) {
            (Some(s), _) => fmt_secs(s),
            (None, Some(why)) => format!("not measured: {why}"),
            (None, None) => failed(),
        },
    ));
    let vcpus_label = if c.linux_vcpus > 0 {
        format!("  {} vCPU{}", c.linux_vcpus, plural(c.linux_vcpus))
    } else {
        String::new()
    };
    out.push(row(
        &vcpus_label,
        "under hv",
        &match (&under, &direct) {
            (Some(u), Some(d)) => with_ratio(fmt_secs(u), ratio_of(u, d)),
            (Some(u), None) => fmt_secs(u),
            (None, _) => failed(),
        },
    ));
    // The hv figure includes the firmware reading the hypervisor's image (guest
    // images included) from disk and the hypervisor's own boot, which QEMU's
    // `-kernel` does not pay: this row leaves them out.
    if let Some(s) = secs(&|r| Some(r.init?.checked_sub(r.vm_started?)?.as_secs_f64())) {
        out.push(row(
            "",
            "from VM start",
            &match &direct {
                Some(d) => with_ratio(fmt_secs(&s), ratio_of(&s, d)),
                None => fmt_secs(&s),
            },
        ));
    }

    // Disk throughput.
    let mib = |v: &[DiskFigure], f: fn(&DiskFigure) -> f64| {
        summarize(&v.iter().map(f).collect::<Vec<_>>())
    };
    let fmt_mib = |s: &Summary| {
        if s.min == s.max {
            format!("{:.1} MiB/s", s.median)
        } else {
            format!("{:.1} MiB/s [{:.1}-{:.1}]", s.median, s.min, s.max)
        }
    };
    let disk_rows = [
        ("direct QEMU", &c.disk_direct),
        ("under hv", &c.disk_plain),
        ("hv, encrypted", &c.disk_encrypted),
    ];
    if disk_rows.iter().any(|(_, v)| !v.is_empty()) {
        let base_w = mib(&c.disk_direct, |f| f.write_mib_s);
        let base_r = mib(&c.disk_direct, |f| f.read_mib_s);
        let plain_w = mib(&c.disk_plain, |f| f.write_mib_s);
        let plain_r = mib(&c.disk_plain, |f| f.read_mib_s);
        for (k, (label, v)) in disk_rows.iter().enumerate() {
            let head = match k {
                0 => "Disk 64 MiB",
                1 => "  direct I/O",
                _ => "",
            };
            let (w, r) = (mib(v, |f| f.write_mib_s), mib(v, |f| f.read_mib_s));
            let (Some(w), Some(r)) = (w, r) else {
                out.push(row(head, label, &failed()));
                continue;
            };
            let value = format!("write {}, read {}", fmt_mib(&w), fmt_mib(&r));
            // Throughput: higher is better, so the ratio is ours over the reference.
            let against = match k {
                1 => base_w.as_ref().zip(base_r.as_ref()).map(|(bw, br)| {
                    format!("{} / {} of QEMU's", ratio_of(&w, bw), ratio_of(&r, br))
                }),
                2 => plain_w.as_ref().zip(plain_r.as_ref()).map(|(pw, pr)| {
                    format!("{} / {} of plain", ratio_of(&w, pw), ratio_of(&r, pr))
                }),
                _ => None,
            };
            out.push(row(
                head,
                label,
                &match against {
                    Some(a) => format!("{value:<44}  {a}"),
                    None => value,
                },
            ));
        }
    }

    // Snapshots.
    if !c.snapshots.is_empty() {
        let ms = |f: fn(&SnapshotFigure) -> u64| {
            summarize(&c.snapshots.iter().map(|s| f(s) as f64).collect::<Vec<_>>())
        };
        let fmt_ms = |s: &Summary| {
            if s.min == s.max {
                format!("{:.0} ms", s.median)
            } else {
                format!("{:.0} ms [{:.0}-{:.0}]", s.median, s.min, s.max)
            }
        };
        let figures = [
            (
                "Snapshot",
                "take",
                ms(|s| s.take_ms),
                ms(|s| s.take_copy_ms),
            ),
            (
                &*format!("  {} MiB Linux", SNAPSHOT_VM_MIB),
                "restore",
                ms(|s| s.restore_ms),
                ms(|s| s.restore_copy_ms),
            ),
        ];
        for (label, what, total, copy) in figures {
            match (total, copy) {
                (Some(t), Some(cp)) => out.push(row(
                    label,
                    what,
                    &with_ratio(
                        format!("{} (RAM copy {})", fmt_ms(&t), fmt_ms(&cp)),
                        format!("{} of the copy", ratio_of(&t, &cp)),
                    ),
                )),
                _ => out.push(row(label, what, &failed())),
            }
        }
        // Clones: start time against the RAM copy a snapshot's restore makes, and
        // the memory four clones share.
        let clones: Vec<CloneFigure> = c.snapshots.iter().filter_map(|s| s.clones).collect();
        let start = summarize(&clones.iter().map(|f| f.start_ms as f64).collect::<Vec<_>>());
        match (start, ms(|s| s.restore_copy_ms)) {
            (Some(st), Some(cp)) => out.push(row(
                "Clone",
                "start",
                &with_ratio(fmt_ms(&st), format!("{} of a RAM copy", ratio_of(&st, &cp))),
            )),
            _ => out.push(row("Clone", "start", &failed())),
        }
        match clones.last() {
            Some(f) if f.total_kib > 0 => out.push(row(
                "  4 clones",
                "shared",
                &format!(
                    "{} MiB of {} MiB ({}%) after 2 s at their shells",
                    f.shared_kib / 1024,
                    f.total_kib / 1024,
                    f.shared_kib * 100 / f.total_kib
                ),
            )),
            _ => out.push(row("  4 clones", "shared", &failed())),
        }
    }

    // VM-to-VM network figures.
    out.extend(net_rows(c));

    // Exits.
    let exits: Vec<Exits> = c.hv.iter().filter_map(|r| r.exits.clone()).collect();
    match median_exits(&exits) {
        Some(e) => {
            out.push(format!("{:<17}{e}", "Linux exits"));
            if exits.len() > 1 {
                out.push(row(
                    "",
                    "",
                    &format!("(median per reason over {} runs)", exits.len()),
                ));
            }
        }
        None => out.push(format!("{:<17}{}", "Linux exits", failed())),
    }

    // CPUID round trip.
    let full_values: Vec<f64> =
        c.hv.iter()
            .filter_map(|r| r.full.map(|f| f.cycles))
            .collect();
    let full = summarize(&full_values);
    let bare_values: Vec<f64> =
        c.hv.iter()
            .filter_map(|r| match r.bare {
                Some(Bare::Measured(f)) => Some(f.cycles),
                _ => None,
            })
            .collect();
    let bare = summarize(&bare_values);
    let unsupported = c.hv.iter().any(|r| r.bare == Some(Bare::Unsupported));
    out.push(row(
        "CPUID round trip",
        "full exit path",
        &full.as_ref().map_or_else(failed, fmt_cycles),
    ));
    out.push(row(
        "",
        "bare loop",
        &match (&bare, &full) {
            (Some(b), Some(f)) => format!(
                "{}  (our exit path adds {} cycles)",
                with_ratio(fmt_cycles(b), ratio_of(f, b)),
                if f.median >= b.median {
                    thousands((f.median - b.median).round() as u64)
                } else {
                    format!("-{}", thousands((b.median - f.median).round() as u64))
                }
            ),
            (Some(b), None) => fmt_cycles(b),
            (None, _) if unsupported => {
                "not measured (bench64: bare loop unsupported by this hypervisor)".into()
            }
            (None, _) => failed(),
        },
    ));
    if let Some(n) = c.hv.iter().find_map(|r| r.full.map(|f| f.count)) {
        out.push(row(
            "",
            "",
            &format!(
                "(each run's figure: the median of {} CPUIDs timed one by one in bench64)",
                thousands(n)
            ),
        ));
    }
    // IPI round trip.
    let ipi = |runs: &[IpiRun]| {
        summarize(
            &runs
                .iter()
                .filter_map(|r| r.ipi.map(|f| f.median as f64))
                .collect::<Vec<_>>(),
        )
    };
    let (two, same) = (ipi(&c.ipi_two), ipi(&c.ipi_same));
    out.push(row(
        "IPI round trip",
        "two processors",
        &two.as_ref().map_or_else(failed, fmt_cycles),
    ));
    out.push(row(
        "  smp64, 2 vCPUs",
        "same processor",
        &match (&same, &two) {
            (Some(s), Some(t)) => format!(
                "{}  (sharing one processor)",
                with_ratio(fmt_cycles(s), ratio_of(s, t))
            ),
            (Some(s), None) => fmt_cycles(s),
            (None, _) => failed(),
        },
    ));
    // Where the vCPUs ran (each distinct placement once), from the kernel's line.
    let placements = |runs: &[IpiRun]| {
        let mut seen: Vec<String> = Vec::new();
        for p in runs
            .iter()
            .filter_map(|r| r.ran_on.as_deref().map(fmt_placement))
        {
            if !seen.contains(&p) {
                seen.push(p);
            }
        }
        seen.join(" / ")
    };
    if same.is_some() || two.is_some() {
        out.push(row(
            "",
            "",
            "(each run's figure: the median of 1,000 ping-pongs timed one by one in smp64)",
        ));
        for (what, runs) in [
            ("two processors", &c.ipi_two),
            ("same processor", &c.ipi_same),
        ] {
            let p = placements(runs);
            if !p.is_empty() {
                out.push(row("", "", &format!("({what}: the vCPUs ran on {p})")));
            }
        }
    }
    // Notes, wrapped to the table's width.
    if c.linux_vcpus > 0 {
        out.push(format!(
            "{n} vCPU{s}: the Linux VM's, under hv on a machine with {p} processor{ps};",
            n = c.linux_vcpus,
            s = plural(c.linux_vcpus),
            p = c.hv_cpus,
            ps = plural(c.hv_cpus),
        ));
        out.push(format!(
            "  QEMU's direct boot gets as many (-smp {}).",
            c.linux_vcpus
        ));
    }
    out.extend(
        [
            "from VM start: from `hv: vm linux started`, leaving out what the direct boot",
            "  does not pay: the firmware loading the hypervisor image with the guests'",
            "  images in it, and the hypervisor's own boot.",
            "bare loop: the same CPUID from the same guest, taken by a VMRUN/VMRESUME loop",
            "  that only skips the instruction and re-enters (no exit dispatch, policy or",
            "  statistics): the emulator's own world-switch cost. Under QEMU's emulated",
            "  AMD-V it is about 47,000-51,000 cycles; KVM in the same emulator pays about",
            "  123,000.",
            "cycles: the guest's TSC (under QEMU TCG it runs at the host's TSC rate; under",
            "  Bochs it counts emulated cycles).",
            "IPI round trip: smp64's BSP sends a fixed IPI to its AP and waits in HLT for",
            "  the answer; each round trip takes several exits (ICR and EOI writes to the",
            "  xAPIC page, HLT, interrupt windows). same processor: both vCPUs pinned to",
            "  processor 0; a vCPU that halts gives the processor back at once, so the",
            "  other does not wait for the 1 ms time slice to end. two processors: either",
            "  vCPU may run on processor 0 or 1 (they move as they halt); an IPI kicks the",
            "  processor running its target, or wakes an idle one to run it.",
        ]
        .map(String::from),
    );
    if !c.net_hv.is_empty() || !c.net_direct.is_empty() {
        out.extend(NET_NOTES.map(String::from));
    }
    push_failures(&mut out, &c.failures);
    let mut text = out.join("\n");
    text.push('\n');
    text
}

// ---------------------------------------------------------------------------------
// Running the emulators.
// ---------------------------------------------------------------------------------

/// Boots a Bochs image and timestamps serial lines as they appear in its log file
/// (polled every 100 ms: Bochs writes COM1 to a file, not to a pipe). Ends at
/// `hv: stopping with status`, at `limit`, or when the log stops growing.
fn run_bochs_streaming(
    image: &Path,
    opts: &BochsOptions,
    work: &Path,
    limit: Duration,
) -> Result<Streamed, String> {
    // `start_bochs` waits for Xvfb before it starts Bochs: time from its return.
    let bochs = emulator::start_bochs(image, opts, work)?;
    let start = Instant::now();
    let mut out = Streamed::default();
    let mut seen = 0usize;
    let mut last_growth = Instant::now();
    loop {
        let log = std::fs::read(&bochs.serial_log).unwrap_or_default();
        if log.len() > seen {
            last_growth = Instant::now();
            // Only whole lines; a partial one waits for its newline.
            if let Some(end) = log[seen..].iter().rposition(|&b| b == b'\n') {
                let at = start.elapsed();
                let chunk = String::from_utf8_lossy(&log[seen..seen + end + 1]).into_owned();
                seen += end + 1;
                for l in chunk.lines() {
                    out.lines.push(TimedLine {
                        at,
                        text: l.trim_end_matches('\r').to_string(),
                    });
                }
            }
        }
        if out
            .lines
            .iter()
            .any(|l| l.text.contains("hv: stopping with status"))
        {
            out.stopped = true;
            break;
        }
        if start.elapsed() > limit || last_growth.elapsed() > BOCHS_STALL {
            out.timed_out = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(bochs); // kills Bochs and its Xvfb
    Ok(out)
}

/// The QEMU options of the hypervisor run: as many processors as the Linux VM has
/// vCPUs, as the direct boot gets.
fn hv_qemu_options() -> QemuOptions {
    QemuOptions {
        firmware: Firmware::Bios,
        memory_mib: HV_MEMORY_MIB,
        cpus: linux::LINUX_VCPUS,
        gdb: false,
        cpu: Some(QEMU_CPU.into()),
        force_tcg: true,
        extra_args: Vec::new(),
        nvme_disk: None,
        tcg_thread: None,
    }
}

/// The QEMU options of an IPI benchmark run: two processors, so the split
/// placement gives each vCPU one of its own.
fn ipi_qemu_options() -> QemuOptions {
    QemuOptions {
        firmware: Firmware::Bios,
        memory_mib: IPI_MEMORY_MIB,
        cpus: IPI_PROCESSORS,
        gdb: false,
        cpu: Some(QEMU_CPU.into()),
        force_tcg: true,
        extra_args: Vec::new(),
        nvme_disk: None,
        tcg_thread: None,
    }
}

/// The Bochs machine of the hypervisor's Linux run (one processor: Bochs steps its
/// processors in turn, so a second one mostly halves the speed of each).
const BOCHS_HV: BochsOptions = BochsOptions {
    memory_mib: HV_MEMORY_MIB,
    cpus: 1,
    ata_disk: None,
};
/// The Bochs machine of an IPI benchmark run.
const BOCHS_IPI: BochsOptions = BochsOptions {
    memory_mib: IPI_MEMORY_MIB,
    cpus: IPI_PROCESSORS,
    ata_disk: None,
};

/// The same Linux guest booted by QEMU itself: the VM's bzImage, initrd, command
/// line, memory and vCPU count (`-smp`), with the hypervisor run's machine type and
/// CPU model.
/// The Linux VM the snapshot figures are of (`GuestSet::ConsoleLinuxTest`).
pub const SNAPSHOT_VM_MIB: u64 = 256;

/// Boots the console's Linux set and, at its shell, takes a snapshot and restores
/// it through the console (typed from a pipe), as an operator would.
fn snapshot_run(
    build_opts: &BuildOptions,
    work: &Path,
    log: &Path,
) -> Result<SnapshotFigure, String> {
    use crate::emulator::ScriptStep;
    let built = build::build_all(build_opts, GuestSet::ConsoleLinuxTest)?;
    let pass = format!("{}\r", build::CONSOLE_TEST_PASSPHRASE);
    let steps = [
        ScriptStep::new(" # ", b"\x1d"),
        ScriptStep::new("hv> ", b"snapshot linux bench\r"),
        ScriptStep::new("administrator passphrase: ", pass.as_bytes()),
        ScriptStep::new("\"snapshot linux bench\": done", b"restore linux bench\r"),
        // Four clones of the snapshot; after a while at their shells, how much of
        // their RAM they still share.
        ScriptStep::new("\"restore linux bench\": done", b"clone linux k1 bench\r"),
        ScriptStep::new("\"clone linux k1 bench\": done", b"clone linux k2 bench\r"),
        ScriptStep::new("\"clone linux k2 bench\": done", b"clone linux k3 bench\r"),
        ScriptStep::new("\"clone linux k3 bench\": done", b"clone linux k4 bench\r"),
        ScriptStep::new("\"clone linux k4 bench\": done", b"stats k1\r")
            .after(Duration::from_secs(2)),
        ScriptStep::new("\"stats k1\": done", b"stats k2\r"),
        ScriptStep::new("\"stats k2\": done", b"stats k3\r"),
        ScriptStep::new("\"stats k3\": done", b"stats k4\r"),
        ScriptStep::new("\"stats k4\": done", b"stop k1\r"),
        ScriptStep::new("\"stop k1\": done", b"stop k2\r"),
        ScriptStep::new("\"stop k2\": done", b"stop k3\r"),
        ScriptStep::new("\"stop k3\": done", b"stop k4\r"),
        ScriptStep::new("\"stop k4\": done", b"stop linux\r"),
    ];
    let opts = QemuOptions {
        memory_mib: 2 * SNAPSHOT_VM_MIB as u32 + 128,
        tcg_thread: Some(crate::emulator::TcgThread::Single),
        ..hv_qemu_options()
    };
    let cmd = emulator::qemu_command(&built.images.bios, &opts, work)?;
    let out = emulator::run_qemu_scripted(cmd, Duration::from_secs(300), &steps)?;
    if let Some(dir) = log.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::write(log, &out.serial);
    parse_snapshot(&out.serial).ok_or_else(|| {
        format!(
            "no snapshot and restore figures in the serial output (see {})",
            log.display()
        )
    })
}

fn direct_command(qemu: &Path, guest: &LinuxGuest, extra_cmdline: &str) -> Command {
    let vm = linux::linux_vm(guest, true);
    let mut cmd = Command::new(qemu);
    cmd.args(["-machine", "q35", "-accel", "tcg", "-cpu", QEMU_CPU])
        .args(["-m", &format!("{}K", vm.memory_kib)])
        .args(["-smp", &vm.vcpus.to_string()])
        .args(["-serial", "stdio", "-display", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(&guest.bzimage)
        .arg("-initrd")
        .arg(&guest.initrd)
        .arg("-append")
        .arg(format!("{}{extra_cmdline}", vm.cmdline));
    cmd
}

/// One direct boot: seconds to /init, or why not.
fn direct_run(qemu: &Path, guest: &LinuxGuest, log: &Path) -> Result<f64, String> {
    let out = run_streaming(direct_command(qemu, guest, ""), QEMU_DIRECT_LIMIT, |l| {
        l.contains(INIT_LINE) || l.contains("reboot: System halted") || l.contains("Kernel panic")
    })?;
    save_log(log, &out);
    if let Some(l) = out.lines.iter().find(|l| l.text.contains(INIT_LINE)) {
        return Ok(l.at.as_secs_f64());
    }
    let last = last_line(&out.lines).map_or("no serial output".into(), |l| {
        format!("last line {:?}", l.text)
    });
    let why = if out.timed_out {
        format!("no `{INIT_LINE}` within {} s", QEMU_DIRECT_LIMIT.as_secs())
    } else {
        format!("no `{INIT_LINE}` line (QEMU exit code {:?})", out.exit_code)
    };
    let stderr = out.stderr.trim();
    Err(if stderr.is_empty() {
        format!("{why}; {last}")
    } else {
        format!("{why}; {last}; QEMU said: {stderr}")
    })
}

/// Sequential throughput of one disk run, from the guest's
/// `hv-linux: disk bench: write 64 MiB X s, read 64 MiB Y s` line.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DiskFigure {
    pub write_mib_s: f64,
    pub read_mib_s: f64,
}

/// One snapshot and restore of a VM from the console, in ms, each with the part
/// its RAM copy took (the reference: a snapshot cannot take less than copying the
/// VM's RAM once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotFigure {
    pub take_ms: u64,
    pub take_copy_ms: u64,
    pub restore_ms: u64,
    pub restore_copy_ms: u64,
    /// Clones of the snapshot: the slowest one's start, and the memory (KiB)
    /// the four still shared after two seconds at their shells; `None` if the
    /// run made none.
    pub clones: Option<CloneFigure>,
}

/// Four clones of one snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloneFigure {
    pub start_ms: u64,
    pub shared_kib: u64,
    pub total_kib: u64,
}

/// Parses `hv: VM kN cloned from ... in N ms: M MiB shared copy-on-write` and the
/// clones' `stats` lines (`kN: running, ..., X shared (P pages), ...`).
pub fn parse_clones(serial: &str) -> Option<CloneFigure> {
    let mut start_ms = 0;
    let mut total_kib = 0;
    let mut names = Vec::new();
    for l in serial
        .lines()
        .filter(|l| l.starts_with("hv: VM ") && l.contains(" cloned from "))
    {
        let name = l.strip_prefix("hv: VM ")?.split(' ').next()?;
        let rest = l.rsplit(" in ").next()?;
        let ms: u64 = rest.split(" ms").next()?.trim().parse().ok()?;
        let mib: u64 = rest
            .split(": ")
            .nth(1)?
            .split(" MiB")
            .next()?
            .trim()
            .parse()
            .ok()?;
        start_ms = start_ms.max(ms);
        total_kib += mib * 1024;
        names.push(name);
    }
    if names.is_empty() {
        return None;
    }
    let mut shared_kib = 0;
    for name in names {
        let line = serial
            .lines()
            .find(|l| l.starts_with(&format!("{name}: ")) && l.contains(" shared ("))?;
        let pages: u64 = number_between(line, " shared (", " pages)")?;
        shared_kib += pages * 4;
    }
    Some(CloneFigure {
        start_ms,
        shared_kib,
        total_kib,
    })
}

/// The number after `before` in `text`, up to `after`.
fn number_between(text: &str, before: &str, after: &str) -> Option<u64> {
    let rest = text.split(before).nth(1)?;
    rest.split(after).next()?.trim().parse().ok()
}

/// Parses the hypervisor's `snapshot "T" of VM V taken in N ms (RAM copy M ms; ...)`
/// and `VM V restored to snapshot "T" (...) in N ms (RAM copy M ms)` lines.
pub fn parse_snapshot(serial: &str) -> Option<SnapshotFigure> {
    let taken = serial
        .lines()
        .find(|l| l.contains(" taken in ") && l.starts_with("hv: snapshot "))?;
    let restored = serial
        .lines()
        .find(|l| l.starts_with("hv: VM ") && l.contains(" restored to snapshot "))?;
    let restore_tail = restored.rsplit(") in ").next()?;
    Some(SnapshotFigure {
        take_ms: number_between(taken, " taken in ", " ms")?,
        take_copy_ms: number_between(taken, "(RAM copy ", " ms")?,
        restore_ms: restore_tail.split(" ms").next()?.trim().parse().ok()?,
        restore_copy_ms: number_between(restore_tail, "(RAM copy ", " ms")?,
        clones: parse_clones(serial),
    })
}

/// Parses the guest's disk bench line (64 MiB each way).
pub fn parse_disk_bench(line: &str) -> Option<DiskFigure> {
    let rest = line.split("hv-linux: disk bench: write 64 MiB ").nth(1)?;
    let (w, rest) = rest.split_once(" s, read 64 MiB ")?;
    let r = rest.trim().strip_suffix(" s")?;
    let (w, r): (f64, f64) = (w.trim().parse().ok()?, r.trim().parse().ok()?);
    (w > 0.0 && r > 0.0).then(|| DiskFigure {
        write_mib_s: 64.0 / w,
        read_mib_s: 64.0 / r,
    })
}

/// One disk throughput run: boots `cmd`, waits for the bench line.
fn disk_run(cmd: Command, log: &Path) -> Result<DiskFigure, String> {
    let out = run_streaming(cmd, QEMU_DISK_LIMIT, |l| {
        l.contains("hv-linux: disk bench:") || l.contains("Kernel panic")
    })?;
    save_log(log, &out);
    out.lines
        .iter()
        .find_map(|l| parse_disk_bench(&l.text))
        .ok_or_else(|| match last_line(&out.lines) {
            Some(l) => format!("no disk bench line; last line {:?}", l.text),
            None => "no serial output".into(),
        })
}

/// The direct QEMU boot of the same kernel and initrd with `hv.bench=disk` and a
/// blank raw image as QEMU's own virtio-blk-pci device.
fn direct_disk_command(qemu: &Path, guest: &LinuxGuest, image: &Path) -> Command {
    let mut cmd = direct_command(qemu, guest, " hv.bench=disk");
    cmd.arg("-drive")
        .arg(format!(
            "file={},if=none,id=benchdisk,format=raw,cache=writeback",
            image.display()
        ))
        // Modern-only (1af4:1042), as ours: the guest's /init looks for that ID.
        .args([
            "-device",
            "virtio-blk-pci,drive=benchdisk,disable-legacy=on",
        ]);
    cmd
}

/// The VM-to-VM run under the hypervisor: [`GuestSet::BenchNet`] on the network
/// test's machine: multi-threaded TCG, each VM on a processor of its own and the
/// boot processor running none ([`crate::boot_cpu`]).
fn net_hv_run(opts: &BuildOptions, work: &Path) -> Result<Streamed, String> {
    let built = build::build_all(opts, GuestSet::BenchNet)?;
    let qemu_opts = QemuOptions {
        memory_mib: 512,
        cpus: crate::boot_cpu::SPARED_CPUS,
        tcg_thread: Some(crate::emulator::TcgThread::Multi),
        ..hv_qemu_options()
    };
    let cmd = emulator::qemu_command(&built.images.bios, &qemu_opts, work)?;
    run_streaming(cmd, QEMU_NET_LIMIT, net_run_over)
}

/// A VM of [`GuestSet::BenchNet`] booted by QEMU itself: its bzImage, initrd,
/// command line, memory and vCPUs, with its NIC's MAC on a virtio-net-pci
/// (modern only, 1af4:1041, as ours: the guest's /init looks for that ID) on
/// `-netdev socket,<socket>`.
fn direct_net_command(
    qemu: &Path,
    vm: &crate::vms::VmDef,
    socket: &str,
) -> Result<Command, String> {
    let initrd = vm
        .modules
        .first()
        .ok_or(format!("VM {} has no initrd", vm.name))?;
    let nic = vm
        .nics
        .first()
        .ok_or(format!("VM {} has no NIC", vm.name))?;
    let mac: Vec<String> = nic.mac.iter().map(|b| format!("{b:02x}")).collect();
    let mut cmd = Command::new(qemu);
    cmd.args(["-machine", "q35", "-accel", "tcg", "-cpu", QEMU_CPU])
        .args(["-m", &format!("{}K", vm.memory_kib)])
        .args(["-smp", &vm.vcpus.to_string()])
        .args(["-serial", "stdio", "-display", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(&vm.image)
        .arg("-initrd")
        .arg(&initrd.path)
        .arg("-append")
        .arg(&vm.cmdline)
        .args(["-netdev", &format!("socket,id=n0,{socket}")])
        .args([
            "-device",
            &format!(
                "virtio-net-pci,netdev=n0,disable-legacy=on,mac={}",
                mac.join(":")
            ),
        ]);
    Ok(cmd)
}

/// The VM-to-VM reference: the same two VMs in two plain QEMUs, the sink's
/// listening on a free port of 127.0.0.1 and the source's connecting to it a
/// second later (QEMU opens the socket before the guest starts). With
/// `one_core`, both run under `taskset -c 0`: every thread of both on host core 0.
fn net_direct_run(qemu: &Path, one_core: bool) -> Result<Streamed, String> {
    let vms = GuestSet::BenchNet.vms()?;
    let vm = |name: &str| {
        vms.iter()
            .find(|v| v.name == name)
            .ok_or(format!("no VM {name} in the bench-net set"))
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("finding a free port on 127.0.0.1: {e}"))?
        .port();
    let pinned = |cmd: Command| -> Command {
        if !one_core {
            return cmd;
        }
        let mut t = Command::new("taskset");
        t.args(["-c", "0"])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        t
    };
    let cmds = vec![
        (
            NET_SINK.to_string(),
            pinned(direct_net_command(
                qemu,
                vm(NET_SINK)?,
                &format!("listen=127.0.0.1:{port}"),
            )?),
        ),
        (
            NET_SOURCE.to_string(),
            pinned(direct_net_command(
                qemu,
                vm(NET_SOURCE)?,
                &format!("connect=127.0.0.1:{port}"),
            )?),
        ),
    ];
    emulator::run_streaming_labelled(cmds, Duration::from_secs(1), QEMU_NET_LIMIT, net_run_over)
}

/// Notes a VM-to-VM run's figures and problems (`side`: `hv` or `direct`).
fn record_net(c: &mut Collected, i: u32, side: &str, out: Result<Streamed, String>, log: &Path) {
    let name = format!("net {side} run {i}");
    let out = match out {
        Ok(out) => out,
        Err(e) => {
            c.failures.push(format!("{name}: {e}"));
            return;
        }
    };
    save_log(log, &out);
    let run = analyse_net(&out.lines);
    let mut problems = net_problems(&run, out.timed_out, QEMU_NET_LIMIT);
    let stderr = out.stderr.trim();
    if !stderr.is_empty() && run.tcp_mib_s().is_none() {
        problems.push(format!("QEMU said: {stderr}"));
    }
    progress(&format!(
        "run {i}/{}: VM-to-VM {side}: tcp {}, ping {} (busybox's average {}){}",
        c.runs,
        run.tcp_mib_s()
            .map_or("(none)".into(), |m| format!("{m:.1} MiB/s")),
        run.burst_ms()
            .map_or("(none)".into(), |m| format!("{m:.2} ms")),
        run.ping_avg_ms()
            .map_or("(none)".into(), |m| format!("{m:.2} ms")),
        if problems.is_empty() {
            String::new()
        } else {
            format!(" ({} problem(s))", problems.len())
        }
    ));
    for p in problems {
        c.failures.push(format!("{name}: {p}"));
    }
    match side {
        "hv" => c.net_hv.push(run),
        "direct-1core" => c.net_one_core.push(run),
        _ => c.net_direct.push(run),
    }
}

/// Builds the image with the Linux VM in test mode and `bench64`.
fn bench_image(opts: &BuildOptions) -> Result<PathBuf, String> {
    Ok(build::build_all(opts, GuestSet::Bench)?.images.bios)
}

/// The same VMs as `cargo xtask run` starts them in QEMU: the bundle on the
/// `hv-bundle` partition of an NVMe disk image (`target/hv/disks/bench.img`), the
/// boot image holding only a reference to it. Returns the boot image and the disk.
fn bench_image_bundle_on_disk(opts: &BuildOptions) -> Result<(PathBuf, PathBuf), String> {
    let storage = GuestSet::Bench.storage()?.ok_or("no bench disk")?;
    let disk = crate::storage::prepare(&storage, &build::target_dir())?;
    let vms = GuestSet::Bench.vms()?;
    let machine = GuestSet::Bench.machine()?;
    let built = build::build_with_bundle_on_disk(opts, "bench-nvme", &vms, &machine, &disk)?;
    Ok((built.images.bios, disk))
}

/// Builds the image with `smp64` alone, its vCPUs placed as `placement` says.
fn ipi_image(opts: &BuildOptions, placement: Placement) -> Result<PathBuf, String> {
    Ok(build::build_all(opts, placement.guest_set())?.images.bios)
}

/// Notes an IPI benchmark run's figure and problems.
fn record_ipi(
    c: &mut Collected,
    i: u32,
    placement: Placement,
    out: Streamed,
    limit: Duration,
    log: &Path,
) {
    save_log(log, &out);
    let run = analyse_ipi(&out.lines);
    let mut problems = ipi_problems(&run, placement, out.timed_out, limit);
    let stderr = out.stderr.trim();
    if !stderr.is_empty() && run.ipi.is_none() {
        problems.push(format!("{} said: {stderr}", c.emulator_name));
    }
    progress(&format!(
        "run {i}/{}: {}, round trip median {}{}",
        c.runs,
        placement.name(),
        run.ipi.map_or("(none)".into(), |f| format!(
            "{} cycles",
            thousands(f.median)
        )),
        if problems.is_empty() {
            String::new()
        } else {
            format!(" ({} problem(s))", problems.len())
        }
    ));
    for p in problems {
        c.failures
            .push(format!("{} run {i}: {p}", placement.name()));
    }
    match placement {
        Placement::SameProcessor => c.ipi_same.push(run),
        Placement::TwoProcessors => c.ipi_two.push(run),
    }
}

/// Keeps a run's serial output with each line's arrival time (`[  12.345] text`),
/// for finding where the time went. Best effort: the figures do not depend on it.
fn save_log(path: &Path, out: &Streamed) {
    let mut text: String = out
        .lines
        .iter()
        .map(|l| format!("[{:>9.3}] {}\n", l.at.as_secs_f64(), l.text))
        .collect();
    if !out.stderr.trim().is_empty() {
        text.push_str("[emulator stderr]\n");
        text.push_str(&out.stderr);
    }
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::write(path, text);
}

fn progress(msg: &str) {
    eprintln!("xtask: bench: {msg}");
}

/// Notes a hypervisor run's figures and problems.
fn record_hv(c: &mut Collected, i: u32, out: Streamed, limit: Duration, log: &Path) {
    save_log(log, &out);
    let run = analyse_hv(&out.lines);
    let mut problems = hv_problems(&run, out.timed_out, limit);
    let stderr = out.stderr.trim();
    if !stderr.is_empty() && run.init.is_none() {
        problems.push(format!("{} said: {stderr}", c.emulator_name));
    }
    progress(&format!(
        "run {i}/{}: under hv, /init after {}{}",
        c.runs,
        run.init
            .map_or("(never)".into(), |d| format!("{:.1} s", d.as_secs_f64())),
        if problems.is_empty() {
            String::new()
        } else {
            format!(" ({} problem(s))", problems.len())
        }
    ));
    for p in problems {
        c.failures.push(format!("hv run {i}: {p}"));
    }
    c.hv.push(run);
}

/// Runs the benchmark and prints its table.
pub fn bench(opts: &Options) -> Result<(), String> {
    if opts.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    let work = build::target_dir().join("hv").join("bench");
    let log = |i: u32, what: &str| work.join("logs").join(format!("{what}-{i}.log"));
    // Logs of an earlier, longer run would read as this one's.
    let _ = std::fs::remove_dir_all(work.join("logs"));
    let mut c = Collected {
        runs: opts.runs,
        only_net: opts.only_net,
        ..Default::default()
    };
    if opts.only_net {
        if opts.emulator != Emulator::Qemu {
            return Err("--only net needs QEMU: its reference is two plain QEMUs".into());
        }
        let qemu = tools::require(&[tools::QEMU], "benchmark")?.remove(0);
        c.setup = qemu_setup(&qemu);
        c.emulator_name = "QEMU".into();
        for i in 1..=opts.runs {
            net_runs(&mut c, i, &opts.build, &qemu, &work, &log);
        }
        return finish(&c, &work);
    }
    // Build first: a failure is one part's failure, not the end of the command.
    // QEMU gets the bundle over NVMe, as `cargo xtask run` does; Bochs (no NVMe)
    // the bundle in the boot image.
    let (image, disk) = match opts.emulator {
        Emulator::Qemu => match bench_image_bundle_on_disk(&opts.build) {
            Ok((image, disk)) => (Ok(image), Some(disk)),
            Err(e) => (Err(e), None),
        },
        _ => (bench_image(&opts.build), None),
    };
    if let Err(e) = &image {
        c.failures
            .push(format!("hypervisor: building the bench image failed: {e}"));
    }
    let placements = [Placement::TwoProcessors, Placement::SameProcessor];
    let ipi_images: Vec<(Placement, PathBuf)> = placements
        .into_iter()
        .filter_map(|p| match ipi_image(&opts.build, p) {
            Ok(image) => Some((p, image)),
            Err(e) => {
                c.failures.push(format!(
                    "{}: building the IPI benchmark image failed: {e}",
                    p.name()
                ));
                None
            }
        })
        .collect();
    c.linux_vcpus = linux::LINUX_VCPUS;
    match opts.emulator {
        Emulator::Qemu => {
            c.hv_cpus = hv_qemu_options().cpus;
            let qemu = tools::require(&[tools::QEMU], "run the benchmark in QEMU")?.remove(0);
            c.setup = qemu_setup(&qemu);
            c.emulator_name = "QEMU".into();
            let guest = linux::debian_linux(&linux::default_cache_dir());
            if let Err(e) = &guest {
                c.failures
                    .push(format!("direct boot: no Linux guest to boot: {e}"));
            }
            // Alternate the two sides, so that drift in the machine's speed over the
            // minutes this takes affects both alike.
            for i in 1..=opts.runs {
                if let Ok(image) = &image {
                    let hv_opts = QemuOptions {
                        nvme_disk: disk.clone(),
                        ..hv_qemu_options()
                    };
                    let out = emulator::qemu_command(image, &hv_opts, &work)
                        .and_then(|cmd| run_streaming(cmd, QEMU_HV_LIMIT, |_| false));
                    match out {
                        Ok(out) => record_hv(&mut c, i, out, QEMU_HV_LIMIT, &log(i, "hv")),
                        Err(e) => c.failures.push(format!("hv run {i}: {e}")),
                    }
                }
                if let Ok(guest) = &guest {
                    match direct_run(&qemu, guest, &log(i, "direct")) {
                        Ok(s) => {
                            progress(&format!(
                                "run {i}/{}: direct QEMU, /init after {s:.1} s",
                                opts.runs
                            ));
                            c.direct.push(s);
                        }
                        Err(e) => c.failures.push(format!("direct run {i}: {e}")),
                    }
                }
                for (placement, image) in &ipi_images {
                    let log = log(i, placement.name());
                    let out = emulator::qemu_command(image, &ipi_qemu_options(), &work)
                        .and_then(|cmd| run_streaming(cmd, QEMU_IPI_LIMIT, |_| false));
                    match out {
                        Ok(out) => record_ipi(&mut c, i, *placement, out, QEMU_IPI_LIMIT, &log),
                        Err(e) => c
                            .failures
                            .push(format!("{} run {i}: {e}", placement.name())),
                    }
                }
                // Disk throughput: QEMU's virtio-blk on a blank raw file, ours on the
                // plain and the encrypted partition of the bench disk.
                if let Ok(guest) = &guest {
                    let raw = build::disks_dir().join("bench-direct.img");
                    let made = std::fs::File::create(&raw)
                        .and_then(|f| f.set_len(72 << 20))
                        .map_err(|e| format!("{}: {e}", raw.display()));
                    match made.and_then(|_| {
                        disk_run(
                            direct_disk_command(&qemu, guest, &raw),
                            &log(i, "disk-direct"),
                        )
                    }) {
                        Ok(f) => c.disk_direct.push(f),
                        Err(e) => c.failures.push(format!("disk direct run {i}: {e}")),
                    }
                }
                // Snapshot and restore of a Linux VM at its shell, from the console.
                match snapshot_run(&opts.build, &work, &log(i, "snapshot")) {
                    Ok(f) => {
                        progress(&format!(
                            "run {i}/{}: snapshot {} ms, restore {} ms",
                            opts.runs, f.take_ms, f.restore_ms
                        ));
                        c.snapshots.push(f);
                    }
                    Err(e) => c.failures.push(format!("snapshot run {i}: {e}")),
                }
                for (set, name) in [
                    (GuestSet::BenchDisk, "disk-plain"),
                    (GuestSet::BenchDiskEncrypted, "disk-encrypted"),
                ] {
                    let figure = build::build_all(&opts.build, set).and_then(|built| {
                        let hv_opts = QemuOptions {
                            nvme_disk: disk.clone(),
                            ..hv_qemu_options()
                        };
                        disk_run(
                            emulator::qemu_command(&built.images.bios, &hv_opts, &work)?,
                            &log(i, name),
                        )
                    });
                    match (figure, set) {
                        (Ok(f), GuestSet::BenchDisk) => c.disk_plain.push(f),
                        (Ok(f), _) => c.disk_encrypted.push(f),
                        (Err(e), _) => c.failures.push(format!("{name} run {i}: {e}")),
                    }
                }
                net_runs(&mut c, i, &opts.build, &qemu, &work, &log);
            }
        }
        Emulator::Bochs => {
            c.setup = "Bochs, corei7_skylake_x with VT-x and EPT".into();
            c.emulator_name = "Bochs".into();
            c.direct_absent = Some("Bochs has no -kernel boot; compare the QEMU figures".into());
            c.hv_cpus = BOCHS_HV.cpus;
            for i in 1..=opts.runs {
                if let Ok(image) = &image {
                    progress(&format!(
                        "run {i}/{}: under hv in Bochs (slow: minutes per run)",
                        opts.runs
                    ));
                    let bochs_work = work.join("bochs");
                    match run_bochs_streaming(image, &BOCHS_HV, &bochs_work, BOCHS_LIMIT) {
                        Ok(out) => record_hv(&mut c, i, out, BOCHS_LIMIT, &log(i, "hv-bochs")),
                        Err(e) => c.failures.push(format!("hv run {i}: {e}")),
                    }
                }
                for (placement, image) in &ipi_images {
                    let log = log(i, &format!("{}-bochs", placement.name()));
                    let bochs_work = work.join("bochs");
                    match run_bochs_streaming(image, &BOCHS_IPI, &bochs_work, BOCHS_IPI_LIMIT) {
                        Ok(out) => record_ipi(&mut c, i, *placement, out, BOCHS_IPI_LIMIT, &log),
                        Err(e) => c
                            .failures
                            .push(format!("{} run {i}: {e}", placement.name())),
                    }
                }
            }
        }
    }
    finish(&c, &work)
}

/// `QEMU 7.2.22 TCG, -cpu qemu64,+svm,+npt`.
fn qemu_setup(qemu: &Path) -> String {
    let version = Command::new(qemu)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| qemu_version(&String::from_utf8_lossy(&o.stdout)).map(str::to_string))
        .unwrap_or_else(|| "(version unknown)".into());
    format!("QEMU {version} TCG, -cpu {QEMU_CPU}")
}

/// One VM-to-VM run under hv, then its reference (one emulator at a time).
fn net_runs(
    c: &mut Collected,
    i: u32,
    build: &BuildOptions,
    qemu: &Path,
    work: &Path,
    log: &dyn Fn(u32, &str) -> PathBuf,
) {
    record_net(c, i, "hv", net_hv_run(build, work), &log(i, "net-hv"));
    record_net(
        c,
        i,
        "direct",
        net_direct_run(qemu, false),
        &log(i, "net-direct"),
    );
    record_net(
        c,
        i,
        "direct-1core",
        net_direct_run(qemu, true),
        &log(i, "net-direct-1core"),
    );
}

/// Prints the table; an error only when nothing at all was measured.
fn finish(c: &Collected, work: &Path) -> Result<(), String> {
    progress(&format!(
        "serial logs with each line's arrival time: {}",
        work.join("logs").display()
    ));
    print!("{}", report(c));
    if c.anything() {
        Ok(())
    } else {
        Err("nothing could be measured (see the failures above)".into())
    }
}

#[cfg(test)]
mod disk_tests {
    use super::*;

    #[test]
    fn the_guest_disk_bench_line_gives_mib_per_second() {
        let f =
            parse_disk_bench("linux | hv-linux: disk bench: write 64 MiB 3.2 s, read 64 MiB 1.6 s")
                .unwrap();
        assert!((f.write_mib_s - 20.0).abs() < 1e-9);
        assert!((f.read_mib_s - 40.0).abs() < 1e-9);
        assert!(
            parse_disk_bench("hv-linux: disk bench: write 64 MiB 0 s, read 64 MiB 1 s").is_none()
        );
        assert!(
            parse_disk_bench("hv-linux: disk bench: write 64 MiB x s, read 64 MiB 1 s").is_none()
        );
        assert!(parse_disk_bench("hv-linux: userspace ok").is_none());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The snapshot, restore and clone figures alone, for working on them
    /// without the whole bench (about a minute of QEMU).
    #[test]
    #[ignore = "boots QEMU: cargo test -p xtask -- --ignored snapshot_figures_alone --nocapture"]
    fn snapshot_figures_alone() {
        let opts = BuildOptions {
            release: true,
            log_level: "info".into(),
        };
        let work = build::target_dir().join("hv").join("bench-snapshot");
        let log = work.join("serial.txt");
        let f = snapshot_run(&opts, &work, &log).unwrap();
        std::println!("{f:?}");
        let clones = f.clones.expect("clone figures");
        assert!(clones.total_kib == 4 * SNAPSHOT_VM_MIB * 1024, "{clones:?}");
        assert!(clones.shared_kib > clones.total_kib / 2, "{clones:?}");
    }

    #[test]
    fn snapshot_lines_parse() {
        let serial = "hv> snapshot linux bench\n\
            hv: snapshot \"bench\" of VM linux taken in 959 ms (RAM copy 700 ms; 262147 KiB)\n\
            hv: VM linux restored to snapshot \"bench\" (taken 0 s ago) in 962 ms (RAM copy 650 ms)\n";
        assert_eq!(
            parse_snapshot(serial),
            Some(SnapshotFigure {
                take_ms: 959,
                take_copy_ms: 700,
                restore_ms: 962,
                restore_copy_ms: 650,
                clones: None,
            })
        );
        let clones = "hv: VM k1 cloned from linux's snapshot \"bench\" in 12 ms: 256 MiB shared copy-on-write\n\
            hv: VM k2 cloned from linux's snapshot \"bench\" in 15 ms: 256 MiB shared copy-on-write\n\
            k1: running, 2 vCPUs, memory 6 MiB private, 250 MiB shared (64000 pages), 0 KiB ballooned\n\
            k2: running, 2 vCPUs, memory 7 MiB private, 249 MiB shared (63744 pages), 0 KiB ballooned\n";
        assert_eq!(
            parse_clones(clones),
            Some(CloneFigure {
                start_ms: 15,
                shared_kib: (64000 + 63744) * 4,
                total_kib: 2 * 256 * 1024,
            })
        );
        assert_eq!(
            parse_clones("hv: VM k1 cloned from a in 3 ms: 4 MiB shared"),
            None
        );
        assert_eq!(
            parse_snapshot("hv: snapshot \"x\" of VM a taken in 5 ms"),
            None
        );
    }

    fn line(ms: u64, text: &str) -> TimedLine {
        TimedLine {
            at: Duration::from_millis(ms),
            text: text.into(),
        }
    }

    #[test]
    fn exits_lines() {
        let e = parse_exits(
            "hv: vm linux exits: total 123456: io=120000 cpuid=40 hlt=3000 extint=416",
            "linux",
        )
        .unwrap();
        assert_eq!(e.total, 123456);
        assert_eq!(
            e.reasons,
            [
                ("io".to_string(), 120000),
                ("cpuid".to_string(), 40),
                ("hlt".to_string(), 3000),
                ("extint".to_string(), 416)
            ]
        );
        // The kernel's own format round-trips through Display.
        assert_eq!(
            e.to_string(),
            "total 123456: io=120000 cpuid=40 hlt=3000 extint=416"
        );
        assert_eq!(
            parse_exits("hv: vm linux exits: total 0:", "linux"),
            Some(Exits::default())
        );
        // Another VM's line, a malformed pair, a missing total.
        assert_eq!(
            parse_exits("hv: vm bench64 exits: total 3: cpuid=3", "linux"),
            None
        );
        assert_eq!(
            parse_exits("hv: vm linux exits: total 3: cpuid", "linux"),
            None
        );
        assert_eq!(parse_exits("hv: vm linux exits: total x: ", "linux"), None);
        assert_eq!(
            parse_exits("hv: vm linux exits: total 2: intr-window=2", "linux")
                .unwrap()
                .reasons,
            [("intr-window".to_string(), 2)]
        );
    }

    #[test]
    fn bench64_lines() {
        assert_eq!(
            parse_bench64("bench64 | bench64: cpuid full-path median=52300 cycles over 1000"),
            Some(Bench64Line::FullPath(CpuidFigure {
                cycles: 52300.0,
                count: 1000
            }))
        );
        assert_eq!(
            parse_bench64("bench64: cpuid bare-loop median=48900.5 cycles over 200"),
            Some(Bench64Line::BareLoop(CpuidFigure {
                cycles: 48900.5,
                count: 200
            }))
        );
        assert_eq!(
            parse_bench64("bench64 | bench64: bare loop unsupported"),
            Some(Bench64Line::BareUnsupported)
        );
        assert_eq!(
            parse_bench64("bench64 | bench64: done\r"),
            Some(Bench64Line::Done)
        );
        for bad in [
            "bench64 | bench64: cpuid full-path median=abc cycles over 10",
            "bench64 | bench64: cpuid full-path median=5 cycles",
            "bench64 | bench64: starting",
            "hello64 | hello64: done",
        ] {
            assert_eq!(parse_bench64(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_hypervisor_run() {
        let lines = [
            line(100, "hv: boot report"),
            line(
                2500,
                "hv: vm linux started: 262144 KiB RAM (262144 KiB in 2 MiB frames), ...",
            ),
            line(
                2600,
                "bench64 | bench64: cpuid full-path median=52300 cycles over 1000",
            ),
            line(
                2700,
                "bench64 | bench64: cpuid bare-loop median=48900 cycles over 1000",
            ),
            line(2750, "bench64 | bench64: done"),
            line(5000, "linux | [    0.000000] Linux version 6.1.0"),
            line(8100, "linux | hv-linux: init running"),
            line(8200, "linux | hv-linux: init running"),
            line(
                8300,
                "hv: vm linux stopped: halted with interrupts disabled",
            ),
            line(8300, "hv: vm linux exits: total 10: io=7 cpuid=3"),
            line(8400, "hv: stopping with status 16 (Success)"),
        ];
        let r = analyse_hv(&lines);
        assert_eq!(r.vm_started, Some(Duration::from_millis(2500)));
        assert_eq!(r.init, Some(Duration::from_millis(8100)), "the first one");
        assert_eq!(r.exits.as_ref().unwrap().total, 10);
        assert_eq!(r.full.unwrap().cycles, 52300.0);
        assert_eq!(
            r.bare,
            Some(Bare::Measured(CpuidFigure {
                cycles: 48900.0,
                count: 1000
            }))
        );
        assert!(r.bench_done);
        assert_eq!(r.stop_status.as_deref(), Some("16 (Success)"));
        assert!(hv_problems(&r, false, QEMU_HV_LIMIT).is_empty());

        // A run that failed part-way: each missing figure is named.
        let r = analyse_hv(&lines[..3]);
        let p = hv_problems(&r, true, Duration::from_secs(300));
        assert!(
            p[0].contains("300 s") && p[0].contains("cpuid full-path median=52300"),
            "{p:?}"
        );
        assert!(p.iter().any(|m| m.contains("did not reach /init")));
        assert!(p.iter().any(|m| m.contains("exits:")));
        assert!(p.iter().any(|m| m.contains("bare-loop")));
        assert!(!p.iter().any(|m| m.contains("full-path line")));

        let r = analyse_hv(&[
            line(1, "bench64 | bench64: bare loop unsupported"),
            line(2, "hv: PANIC at kernel/src/main.rs:1: oops"),
            line(3, "hv: stopping with status 17 (Failure)"),
        ]);
        assert_eq!(r.bare, Some(Bare::Unsupported));
        let p = hv_problems(&r, false, QEMU_HV_LIMIT);
        assert!(p.iter().any(|m| m.contains("status 17 (Failure)")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("PANIC")), "{p:?}");
    }

    #[test]
    fn smp64_lines() {
        assert_eq!(
            parse_smp64_ipi(
                "smp64 | smp64: ipi round trip median=183000 min=150000 max=2400000 cycles"
            ),
            Some(IpiFigure {
                median: 183000,
                min: 150000,
                max: 2400000
            })
        );
        assert_eq!(
            parse_smp64_ipi("smp64: ipi round trip median=5 min=5 max=5 cycles\r"),
            Some(IpiFigure {
                median: 5,
                min: 5,
                max: 5
            })
        );
        for bad in [
            // Out of order: min above the median.
            "smp64 | smp64: ipi round trip median=5 min=6 max=9 cycles",
            "smp64 | smp64: ipi round trip median=5 min=1 max=9",
            "smp64 | smp64: ipi round trip median=x min=1 max=9 cycles",
            "smp64 | smp64: ipi round trip min=1 median=5 max=9 cycles",
            "smp64 | smp64: ipi ping-pong 1000 round trips ok",
            "bench64 | bench64: cpuid full-path median=52300 cycles over 1000",
        ] {
            assert_eq!(parse_smp64_ipi(bad), None, "{bad}");
        }
    }

    #[test]
    fn cpu_time_lines() {
        assert_eq!(
            parse_cpu_time(
                "hv: vm smp64 cpu time: 812 ms (vCPUs: 500 ms on cpu 0, 312 ms on cpu 0+1)",
                "smp64"
            ),
            Some(vec![vec![0], vec![0, 1]])
        );
        assert_eq!(
            parse_cpu_time(
                "hv: vm smp64 cpu time: 0 ms (vCPUs: 0 ms on cpu 1, 0 ms on cpu none)",
                "smp64"
            ),
            Some(vec![vec![1], vec![]])
        );
        assert_eq!(
            fmt_placement(&[vec![0], vec![0, 1], vec![]]),
            "cpu 0 and cpu 0+1 and no cpu"
        );
        for bad in [
            "hv: vm linux cpu time: 5 ms (vCPUs: 5 ms on cpu 0)",
            "hv: vm smp64 cpu time: 5 ms (vCPUs: 5 ms on cpu 0",
            "hv: vm smp64 cpu time: 5 ms (vCPUs: 5 ms on cpu x)",
            "hv: vm smp64 cpu time: 5 ms (vCPUs: 5 ms)",
            "hv: vm smp64 cpu time: 5 ms",
        ] {
            assert_eq!(parse_cpu_time(bad, "smp64"), None, "{bad}");
        }
    }

    #[test]
    fn an_ipi_run() {
        let lines = [
            line(100, "hv: boot report"),
            line(900, "smp64 | smp64: cpus online 2"),
            line(1000, "smp64 | smp64: ipi ping-pong 1000 round trips ok"),
            line(
                1000,
                "smp64 | smp64: ipi round trip median=2000000 min=900000 max=3100000 cycles",
            ),
            line(1100, "smp64 | smp64: done"),
            line(
                1100,
                "hv: vm smp64 stopped: halted with interrupts disabled",
            ),
            line(1100, "hv: vm smp64 exits: total 9000: hlt=4000 apic=5000"),
            line(
                1100,
                "hv: vm smp64 cpu time: 900 ms (vCPUs: 500 ms on cpu 0, 400 ms on cpu 0)",
            ),
            line(1200, "hv: stopping with status 16 (Success)"),
        ];
        let r = analyse_ipi(&lines);
        assert_eq!(r.ipi.unwrap().median, 2000000);
        assert_eq!(r.ran_on, Some(vec![vec![0], vec![0]]));
        assert!(r.done && r.fail.is_none());
        let limit = QEMU_IPI_LIMIT;
        assert!(ipi_problems(&r, Placement::SameProcessor, false, limit).is_empty());
        assert!(ipi_problems(&r, Placement::TwoProcessors, false, limit).is_empty());

        // Pinned to processor 0 but a vCPU ran elsewhere: the figure is not what
        // the row says.
        let moved = IpiRun {
            ran_on: Some(vec![vec![0], vec![0, 1]]),
            ..r.clone()
        };
        let p = ipi_problems(&moved, Placement::SameProcessor, false, limit);
        assert_eq!(
            p,
            ["smp64 was pinned to processor 0 but its vCPUs ran on cpu 0 and cpu 0+1"]
        );
        assert!(ipi_problems(&moved, Placement::TwoProcessors, false, limit).is_empty());

        // A failed guest, a missing figure, a hypervisor that never finished.
        let r = analyse_ipi(&[
            line(900, "smp64 | smp64: cpus online 2"),
            line(
                950,
                "smp64 | smp64: FAIL ping 3: no pong within 5000 ms (ap took 4 pings, bsp 3 pongs)",
            ),
        ]);
        assert!(!r.done);
        let p = ipi_problems(&r, Placement::TwoProcessors, true, limit);
        assert!(
            p[0].contains("120 s") && p[0].contains("FAIL ping 3"),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m.contains("smp64 failed: ping 3: no pong")),
            "{p:?}"
        );
        assert!(p
            .iter()
            .any(|m| m.contains("no `smp64: ipi round trip` line")));
        assert!(p.iter().any(|m| m.contains("cpu time")));
        let r = analyse_ipi(&[
            line(1, "hv: vm smp64 cpu time: 1 ms (vCPUs: 1 ms on cpu 0)"),
            line(2, "hv: stopping with status 17 (Failure)"),
        ]);
        let p = ipi_problems(&r, Placement::TwoProcessors, false, limit);
        assert!(p.iter().any(|m| m.contains("1 vCPUs, not 2")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("status 17")), "{p:?}");
    }

    #[test]
    fn statistics() {
        assert_eq!(summarize(&[]), None);
        let s = summarize(&[8.4, 7.9, 8.1]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (8.1, 7.9, 8.4, 3));
        let s = summarize(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
        assert_eq!(summarize(&[5.0]).unwrap().median, 5.0);
        assert_eq!(summarize(&[f64::NAN, 2.0]).unwrap().n, 1);

        let e = |total, r: &[(&str, u64)]| Exits {
            total,
            reasons: r.iter().map(|(n, c)| (n.to_string(), *c)).collect(),
        };
        let m = median_exits(&[
            e(10, &[("io", 8), ("hlt", 2)]),
            e(14, &[("io", 10), ("cpuid", 4)]),
            e(12, &[("io", 9), ("hlt", 1), ("cpuid", 2)]),
        ])
        .unwrap();
        assert_eq!(m, e(12, &[("io", 9), ("hlt", 1), ("cpuid", 2)]));
        assert_eq!(median_exits(&[]), None);
    }

    #[test]
    fn formatting() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(52300), "52,300");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(ratio(8.1, 6.4).as_deref(), Some("1.27x"));
        assert_eq!(ratio(52300.0, 48900.0).as_deref(), Some("1.07x"));
        assert_eq!(ratio(1.0, 0.0), None);
        let s = summarize(&[7.94, 8.1, 8.36]).unwrap();
        assert_eq!(fmt_secs(&s), "8.1 s  [7.9-8.4]");
        assert_eq!(fmt_secs(&summarize(&[6.44]).unwrap()), "6.4 s");
        let s = summarize(&[51000.0, 52300.4, 53100.0]).unwrap();
        assert_eq!(fmt_cycles(&s), "52,300 cycles  [51,000-53,100]");
        assert_eq!(
            qemu_version("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7)\nCopyright"),
            Some("7.2.22")
        );
        assert_eq!(qemu_version("nothing"), None);
    }

    fn hv_run(init_ms: u64, full: f64, bare: Option<Bare>) -> HvRun {
        HvRun {
            vm_started: Some(Duration::from_millis(2000)),
            init: Some(Duration::from_millis(init_ms)),
            exits: Some(Exits {
                total: 5,
                reasons: vec![("io".into(), 5)],
            }),
            full: Some(CpuidFigure {
                cycles: full,
                count: 1000,
            }),
            bare,
            ..Default::default()
        }
    }

    fn ipi_run(median: u64, cpus: &[u32]) -> IpiRun {
        IpiRun {
            ipi: Some(IpiFigure {
                median,
                min: median / 2,
                max: median * 2,
            }),
            ran_on: Some(cpus.iter().map(|&c| vec![c]).collect()),
            done: true,
            ..Default::default()
        }
    }

    #[test]
    fn the_table() {
        let bare = |cycles| {
            Some(Bare::Measured(CpuidFigure {
                cycles,
                count: 1000,
            }))
        };
        let c = Collected {
            setup: "QEMU 7.2.22 TCG, -cpu qemu64,+svm,+npt".into(),
            runs: 3,
            emulator_name: "QEMU".into(),
            direct: vec![6.3, 6.4, 6.6],
            hv: vec![
                hv_run(8100, 52300.0, bare(48900.0)),
                hv_run(7900, 52000.0, bare(48000.0)),
                hv_run(8400, 53000.0, bare(49000.0)),
            ],
            linux_vcpus: 2,
            hv_cpus: 2,
            ipi_two: vec![
                ipi_run(180000, &[0, 1]),
                ipi_run(175000, &[0, 1]),
                ipi_run(190000, &[1, 0]),
            ],
            ipi_same: vec![
                ipi_run(1800000, &[0, 0]),
                ipi_run(1750000, &[0, 0]),
                ipi_run(1900000, &[0, 0]),
            ],
            ..Default::default()
        };
        assert!(c.anything());
        let t = report(&c);
        // The whole table, column by column, up to the notes.
        let expected = [
            "hv bench (QEMU 7.2.22 TCG, -cpu qemu64,+svm,+npt, 3 runs, median [min-max])",
            "Linux to /init   direct QEMU     6.4 s  [6.3-6.6]",
            "  2 vCPUs        under hv        8.1 s  [7.9-8.4]                ratio 1.27x",
            "                 from VM start   6.1 s  [5.9-6.4]                ratio 0.95x",
            "Linux exits      total 5: io=5",
            "                                 (median per reason over 3 runs)",
            "CPUID round trip full exit path  52,300 cycles  [52,000-53,000]",
            "                 bare loop       48,900 cycles  [48,000-49,000]  ratio 1.07x  (our exit path adds 3,400 cycles)",
            "                                 (each run's figure: the median of 1,000 CPUIDs timed one by one in bench64)",
            "IPI round trip   two processors  180,000 cycles  [175,000-190,000]",
            "  smp64, 2 vCPUs same processor  1,800,000 cycles  [1,750,000-1,900,000]  ratio 10.00x  (sharing one processor)",
            "                                 (each run's figure: the median of 1,000 ping-pongs timed one by one in smp64)",
            "                                 (two processors: the vCPUs ran on cpu 0 and cpu 1 / cpu 1 and cpu 0)",
            "                                 (same processor: the vCPUs ran on cpu 0 and cpu 0)",
            "2 vCPUs: the Linux VM's, under hv on a machine with 2 processors;",
            "  QEMU's direct boot gets as many (-smp 2).",
            "from VM start: ",
        ]
        .join("\n");
        assert!(t.starts_with(&expected), "{t}");
        assert!(t.contains("\nbare loop: the same CPUID"), "{t}");
        assert!(t.contains("\nIPI round trip: smp64's BSP"), "{t}");
        assert!(!t.contains("failed"), "{t}");

        // One part failed: the others still show, and the failure says why.
        let c = Collected {
            runs: 1,
            emulator_name: "QEMU".into(),
            direct: vec![],
            hv: vec![hv_run(8100, 52300.0, Some(Bare::Unsupported))],
            failures: vec!["direct run 1: no `hv-linux: init running` within 180 s".into()],
            ..c
        };
        let t = report(&c);
        assert!(t.contains(", 1 run)\n"), "{t}");
        assert!(t.contains("direct QEMU     failed (see below)"), "{t}");
        assert!(t.contains("under hv        8.1 s\n"), "{t}");
        assert!(
            t.contains("IPI round trip   two processors  180,000 cycles  [175,000-190,000]\n"),
            "{t}"
        );
        assert!(t.contains("full exit path  52,300 cycles\n"), "{t}");
        // No ratios without a direct figure.
        assert!(t.contains("from VM start   6.1 s\n"), "{t}");
        assert!(
            t.contains("bare loop       not measured (bench64: bare loop unsupported"),
            "{t}"
        );
        assert!(
            t.contains("failed:\n  direct run 1: no `hv-linux: init running`"),
            "{t}"
        );

        // Bochs: no direct figure by design, and it says so.
        let c = Collected {
            emulator_name: "Bochs".into(),
            direct_absent: Some("no direct boot".into()),
            failures: vec![],
            ..c
        };
        assert!(report(&c).contains("direct Bochs    not measured: no direct boot"));

        // No IPI figure on one side: no ratio, and the missing side says so.
        let c = Collected {
            ipi_two: vec![IpiRun::default()],
            hv_cpus: 1,
            ..c
        };
        let t = report(&c);
        assert!(
            t.contains("IPI round trip   two processors  failed (see below)\n"),
            "{t}"
        );
        assert!(
            t.contains(
                "  smp64, 2 vCPUs same processor  1,800,000 cycles  [1,750,000-1,900,000]\n"
            ),
            "{t}"
        );
        assert!(t.contains("under hv on a machine with 1 processor;"), "{t}");
        let ipi_only = Collected {
            ipi_same: vec![ipi_run(5, &[0, 0])],
            ..Default::default()
        };
        assert!(ipi_only.anything());

        let nothing = Collected {
            hv: vec![HvRun::default()],
            ..Default::default()
        };
        assert!(!nothing.anything());
    }

    /// The direct boot on this machine (QEMU and the Linux guest, cached or
    /// downloaded; about 7 s): `cargo test -p xtask -- --ignored direct_boot`.
    #[test]
    #[ignore]
    fn direct_boot_reaches_init() {
        let qemu = tools::require(&[tools::QEMU], "boot Linux")
            .unwrap()
            .remove(0);
        let guest = linux::debian_linux(&linux::default_cache_dir()).unwrap();
        let log = std::env::temp_dir().join(format!("hv-bench-{}.log", std::process::id()));
        let s = direct_run(&qemu, &guest, &log).unwrap();
        assert!(std::fs::read_to_string(&log).unwrap().contains(INIT_LINE));
        let _ = std::fs::remove_file(&log);
        eprintln!("direct QEMU boot: /init after {s:.1} s");
        assert!(s > 0.5 && s < QEMU_DIRECT_LIMIT.as_secs_f64());
    }

    #[test]
    fn streaming_timestamps_lines() {
        // A stand-in for QEMU: two lines a moment apart, then one that stops the run.
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "echo one; sleep 0.3; printf 'two\\r\\n'; echo stop; exec sleep 30",
        ]);
        let out = run_streaming(cmd, Duration::from_secs(20), |l| l == "stop").unwrap();
        let texts: Vec<&str> = out.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["one", "two", "stop"]);
        assert!(out.stopped && !out.timed_out);
        let gap = out.lines[1].at - out.lines[0].at;
        assert!(gap >= Duration::from_millis(250), "{gap:?}");

        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo a; exit 3"]);
        let out = run_streaming(cmd, Duration::from_secs(20), |_| false).unwrap();
        assert_eq!(
            (out.exit_code, out.timed_out, out.lines.len()),
            (Some(3), false, 1)
        );

        let mut cmd = Command::new("sh");
        cmd.args(["-c", "exec sleep 30"]);
        let out = run_streaming(cmd, Duration::from_millis(200), |_| false).unwrap();
        assert!(out.timed_out && out.lines.is_empty());
    }
}

#[cfg(test)]
mod net_tests {
    use super::*;

    fn line(ms: u64, text: &str) -> TimedLine {
        TimedLine {
            at: Duration::from_millis(ms),
            text: text.into(),
        }
    }

    const PING: &str = "net-source | hv-linux: net bench: ping 10.0.0.1: 20 packets transmitted, \
        20 packets received, 0% packet loss; round-trip min/avg/max = 0.512/1.250/3.400 ms";

    #[test]
    fn net_bench_lines() {
        assert_eq!(
            parse_net_line(PING),
            Some(NetLine::Ping(PingFigure {
                transmitted: 20,
                received: 20,
                rtt_ms: Some((0.512, 1.25, 3.4)),
            }))
        );
        // Every echo request lost: busybox prints no round trips.
        assert_eq!(
            parse_net_line(
                "hv-linux: net bench: ping 10.0.0.1: 20 packets transmitted, 0 packets received, \
                 100% packet loss; "
            ),
            Some(NetLine::Ping(PingFigure {
                transmitted: 20,
                received: 0,
                rtt_ms: None,
            }))
        );
        assert_eq!(
            parse_net_line(
                "net-source | hv-linux: net bench: tcp start 8388608 bytes to 10.0.0.1:5001"
            ),
            Some(NetLine::TcpStart(8388608))
        );
        assert_eq!(
            parse_net_line("net-sink | hv-linux: net bench: tcp received 8388608 bytes\r"),
            Some(NetLine::TcpReceived(8388608))
        );
        assert_eq!(
            parse_net_line("hv-linux: net bench: ping burst start 100 to 10.0.0.1"),
            Some(NetLine::BurstStart(100))
        );
        assert_eq!(
            parse_net_line(
                "hv-linux: net bench: ping burst done: 100 packets transmitted, 98 packets received, 2% packet loss"
            ),
            Some(NetLine::BurstDone {
                transmitted: 100,
                received: 98
            })
        );
        assert_eq!(
            parse_net_line("hv-linux: net bench: ping burst done: "),
            None
        );
        assert_eq!(
            parse_net_line(
                "hv-linux: net bench: ping burst done: 1 packets transmitted, 2 packets received, 0% packet loss"
            ),
            None
        );
        assert_eq!(
            parse_net_line("hv-linux: net bench: tcp sent, nc exit status 1"),
            Some(NetLine::TcpSent(1))
        );
        assert_eq!(
            parse_net_line("net-source | hv-linux: net bench: clocksource refined-jiffies"),
            Some(NetLine::Clocksource("refined-jiffies".into()))
        );
        assert_eq!(parse_net_line("hv-linux: net bench: clocksource "), None);
        assert_eq!(
            parse_net_line("hv-linux: net bench: FAIL no network (no eth0 with an address)"),
            Some(NetLine::Fail("no network (no eth0 with an address)".into()))
        );
        for bad in [
            // Answers without round trips, round trips without answers.
            "hv-linux: net bench: ping 10.0.0.1: 20 packets transmitted, 3 packets received, 85% packet loss; ",
            "hv-linux: net bench: ping 10.0.0.1: 20 packets transmitted, 0 packets received, 100% packet loss; round-trip min/avg/max = 1/2/3 ms",
            // More answers than requests; min/avg/max out of order; a bad number.
            "hv-linux: net bench: ping a: 2 packets transmitted, 3 packets received, 0% packet loss; round-trip min/avg/max = 1/2/3 ms",
            "hv-linux: net bench: ping a: 2 packets transmitted, 2 packets received, 0% packet loss; round-trip min/avg/max = 3/2/1 ms",
            "hv-linux: net bench: ping a: 2 packets transmitted, 2 packets received, 0% packet loss; round-trip min/avg/max = 1/x/3 ms",
            "hv-linux: net bench: ping a: 2 packets transmitted, 2 packets received, 0% packet loss; round-trip min/avg/max = 1/2 ms",
            "hv-linux: net bench: tcp start many bytes to a:1",
            "hv-linux: net bench: tcp received -1 bytes",
            "hv-linux: net bench: listening on port 5001",
            "hv-linux: disk bench: write 64 MiB 1 s, read 64 MiB 1 s",
        ] {
            assert_eq!(parse_net_line(bad), None, "{bad}");
        }
    }

    #[test]
    fn when_a_net_run_is_over() {
        assert!(net_run_over(
            "net-sink | hv-linux: net bench: tcp received 5 bytes"
        ));
        // The source does not count what arrived.
        assert!(!net_run_over(
            "net-source | hv-linux: net bench: tcp received 5 bytes"
        ));
        assert!(!net_run_over(
            "net-source | hv-linux: net bench: tcp sent, nc exit status 0"
        ));
        assert!(net_run_over(
            "net-source | hv-linux: net bench: tcp sent, nc exit status 1"
        ));
        assert!(net_run_over(
            "net-sink | hv-linux: net bench: FAIL no network"
        ));
        assert!(net_run_over("net-sink | [ 1.0] Kernel panic - not syncing"));
        assert!(net_run_over("hv: stopping with status 17 (Failure)"));
        assert!(!net_run_over(PING));
    }

    #[test]
    fn a_net_run() {
        let lines = [
            line(
                30_000,
                "net-sink | hv-linux: net bench: listening on port 5001",
            ),
            line(39_000, "net-source | hv-linux: net bench: clocksource tsc"),
            line(40_000, PING),
            line(
                40_010,
                "net-source | hv-linux: net bench: ping burst start 100 to 10.0.0.1",
            ),
            line(
                40_060,
                "net-source | hv-linux: net bench: ping burst done: 100 packets transmitted, \
                 100 packets received, 0% packet loss",
            ),
            line(
                40_100,
                "net-source | hv-linux: net bench: tcp start 8388608 bytes to 10.0.0.1:5001",
            ),
            line(
                42_100,
                "net-sink | hv-linux: net bench: tcp received 8388608 bytes",
            ),
            line(
                42_300,
                "net-source | hv-linux: net bench: tcp sent, nc exit status 0",
            ),
        ];
        let r = analyse_net(&lines);
        assert_eq!(r.ping_avg_ms(), Some(1.25));
        // 8 MiB in the 2.0 s between the two lines' arrivals.
        assert!((r.tcp_mib_s().unwrap() - 4.0).abs() < 1e-9);
        assert_eq!(r.sent_status, Some(0));
        assert_eq!(r.clocksource.as_deref(), Some("tsc"));
        // 100 round trips in the 50 ms between the burst's lines.
        assert!((r.burst_ms().unwrap() - 0.5).abs() < 1e-9);
        assert!(net_problems(&r, false, QEMU_NET_LIMIT).is_empty());

        // A short count gives no figure, and says so.
        let mut short = lines.clone();
        short[6] = line(
            42_100,
            "net-sink | hv-linux: net bench: tcp received 4096 bytes",
        );
        let r = analyse_net(&short);
        assert_eq!(r.tcp_mib_s(), None);
        assert_eq!(
            net_problems(&r, false, QEMU_NET_LIMIT),
            ["the sink received 4096 bytes of 8388608"]
        );

        // The lines only count from the VM whose part they are.
        let swapped = [
            line(1, &PING.replace("net-source", "net-sink")),
            line(2, "net-source | hv-linux: net bench: tcp received 5 bytes"),
        ];
        let r = analyse_net(&swapped);
        assert!(r.ping.is_none() && r.received.is_none());

        // A run that timed out part-way, with a failed guest and a failed nc.
        let r = analyse_net(&[
            line(1, "net-sink | hv-linux: net bench: FAIL no network (no eth0 with an address)"),
            line(2, "net-source | hv-linux: net bench: ping 10.0.0.1: 20 packets transmitted, 0 packets received, 100% packet loss; "),
            line(3, "net-source | hv-linux: net bench: tcp start 8 bytes to 10.0.0.1:5001"),
            line(4, "net-source | hv-linux: net bench: tcp sent, nc exit status 1"),
        ]);
        let p = net_problems(&r, true, Duration::from_secs(360));
        assert!(
            p[0].contains("360 s") && p[0].contains("nc exit status 1"),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m == "guest failed: net-sink: no network (no eth0 with an address)"),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m == "no ping answered (20 sent, 0 answered)"),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m.contains("tcp received` line: the transfer did not end")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m == "the source's nc exited with status 1"),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m.contains("ping burst` start and done lines")),
            "{p:?}"
        );
        // A burst with a lost answer gives no figure.
        let r = analyse_net(&[
            line(1, "net-source | hv-linux: net bench: ping burst start 100 to a"),
            line(2, "net-source | hv-linux: net bench: ping burst done: 100 packets transmitted, 99 packets received, 1% packet loss"),
        ]);
        assert_eq!(r.burst_ms(), None);
        let p = net_problems(&r, false, QEMU_NET_LIMIT);
        assert!(
            p.contains(&"ping burst: 99 of 100 echo requests answered (100 asked for)".to_string()),
            "{p:?}"
        );
        let p = net_problems(&analyse_net(&[]), false, QEMU_NET_LIMIT);
        assert!(
            p.iter()
                .any(|m| m.contains("ping` line (no serial output at all)")),
            "{p:?}"
        );
        assert!(p.iter().any(|m| m.contains("tcp start` line")), "{p:?}");
    }

    fn net_run(mib_s: f64, ping_ms: f64) -> NetRun {
        let bytes = u64::from(NET_BENCH_MIB) << 20;
        let secs = f64::from(NET_BENCH_MIB) / mib_s;
        NetRun {
            ping: Some(PingFigure {
                transmitted: 20,
                received: 20,
                rtt_ms: Some((ping_ms / 2.0, ping_ms, ping_ms * 2.0)),
            }),
            burst_start: Some((Duration::from_secs(5), 100)),
            burst_done: Some((
                Duration::from_secs(5) + Duration::from_secs_f64(ping_ms / 10.0),
                100,
                100,
            )),
            start: Some((Duration::from_secs(10), bytes)),
            received: Some((
                Duration::from_secs(10) + Duration::from_secs_f64(secs),
                bytes,
            )),
            ..Default::default()
        }
    }

    #[test]
    fn the_net_rows() {
        let c = Collected {
            setup: "QEMU 7.2.22 TCG, -cpu qemu64,+svm,+npt".into(),
            runs: 1,
            only_net: true,
            net_direct: vec![NetRun {
                clocksource: Some("tsc".into()),
                ..net_run(20.0, 0.5)
            }],
            net_hv: vec![net_run(5.0, 1.5)],
            ..Default::default()
        };
        assert!(c.anything());
        let t = report(&c);
        let expected = [
            "hv bench (QEMU 7.2.22 TCG, -cpu qemu64,+svm,+npt, 1 run)",
            "VM-to-VM TCP     direct QEMU     20.0 MiB/s",
            "  8 MiB, nc      under hv        5.0 MiB/s                       ratio 0.25x",
            "VM-to-VM ping    direct QEMU     0.50 ms",
            "  100 in a row   under hv        1.50 ms                         ratio 3.00x",
            "                                 (busybox's average of 20, 0.2 s apart: 0.50 ms direct, 1.50 ms under hv)",
            "                                 (its clock, the source guest's clocksource: tsc direct, unknown under hv)",
            "VM-to-VM: two Linux VMs",
        ]
        .join("\n");
        assert!(t.starts_with(&expected), "{t}");
        // Only the network was asked for: no other row shows as failed.
        assert!(
            !t.contains("Linux to /init") && !t.contains("failed"),
            "{t}"
        );

        // With the one-core reference: its row against direct, and hv against it.
        let pinned = Collected {
            net_one_core: vec![net_run(10.0, 1.0)],
            ..c.clone()
        };
        let t = report(&pinned);
        let expected = [
            "VM-to-VM TCP     direct QEMU     20.0 MiB/s",
            "                 direct, 1 core  10.0 MiB/s                      ratio 0.50x of direct",
            "  8 MiB, nc      under hv        5.0 MiB/s                       ratio 0.25x",
            "                                                                 ratio 0.50x (hv against direct on 1 core)",
            "VM-to-VM ping    direct QEMU     0.50 ms",
            "                 direct, 1 core  1.00 ms                         ratio 2.00x of direct",
            "  100 in a row   under hv        1.50 ms                         ratio 3.00x",
            "                                                                 ratio 1.50x (hv against direct on 1 core)",
        ]
        .join("\n");
        assert!(t.contains(&expected), "{t}");

        // The reference failed: no ratio, and the failure is listed.
        let c = Collected {
            runs: 3,
            net_direct: vec![NetRun::default()],
            net_hv: vec![net_run(5.0, 1.5), net_run(4.0, 1.0), net_run(6.0, 2.0)],
            failures: vec!["net direct run 1: no `net-source | ... tcp start` line".into()],
            ..c
        };
        let t = report(&c);
        assert!(
            t.contains("VM-to-VM TCP     direct QEMU     failed (see below)\n"),
            "{t}"
        );
        assert!(t.contains("under hv        5.0 MiB/s  [4.0-6.0]\n"), "{t}");
        assert!(t.contains("under hv        1.50 ms  [1.00-2.00]\n"), "{t}");
        assert!(
            t.contains("failed:\n  net direct run 1: no `net-source"),
            "{t}"
        );

        // In the full table the rows come with the others; without runs, not at all.
        let full = Collected {
            only_net: false,
            ..c.clone()
        };
        let t = report(&full);
        assert!(
            t.contains("Linux to /init") && t.contains("\nVM-to-VM TCP "),
            "{t}"
        );
        let none = Collected {
            net_hv: vec![],
            net_direct: vec![],
            ..full
        };
        assert!(!report(&none).contains("VM-to-VM"));
        let nothing = Collected {
            net_hv: vec![NetRun::default()],
            ..Default::default()
        };
        assert!(!nothing.anything());
    }

    #[test]
    fn labelled_streaming_merges_emulators_on_one_clock() {
        let sh = |script: &str| {
            let mut cmd = Command::new("sh");
            cmd.args(["-c", script]);
            cmd
        };
        let out = emulator::run_streaming_labelled(
            vec![
                (
                    "a".into(),
                    sh("echo one; sleep 0.4; echo three; exec sleep 30"),
                ),
                ("b".into(), sh("echo two; echo oops >&2; exec sleep 30")),
            ],
            Duration::from_millis(100),
            Duration::from_secs(20),
            |l| l == "a | three",
        )
        .unwrap();
        let texts: Vec<&str> = out.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["a | one", "b | two", "a | three"]);
        assert!(out.stopped && !out.timed_out);
        // b started 100 ms after a; a's third line 400 ms after its first.
        assert!(out.lines[2].at - out.lines[0].at >= Duration::from_millis(350));
        assert!(
            out.lines[1].at >= Duration::from_millis(90),
            "{:?}",
            out.lines[1].at
        );
        assert_eq!(out.stderr, "b: oops\n");

        // Both end by themselves: the run ends when both outputs close.
        let out = emulator::run_streaming_labelled(
            vec![("a".into(), sh("echo x")), ("b".into(), sh("echo y"))],
            Duration::ZERO,
            Duration::from_secs(20),
            |_| false,
        )
        .unwrap();
        assert_eq!(out.lines.len(), 2);
        assert!(!out.stopped && !out.timed_out);

        let out = emulator::run_streaming_labelled(
            vec![("a".into(), sh("exec sleep 30"))],
            Duration::ZERO,
            Duration::from_millis(200),
            |_| false,
        )
        .unwrap();
        assert!(out.timed_out && out.lines.is_empty());
    }
}

#[cfg(test)]
mod net_machine_tests {
    use super::*;

    /// The VM-to-VM reference on this machine (two plain QEMUs, the Linux guest
    /// cached or downloaded; about a minute):
    /// `cargo test -p xtask -- --ignored direct_vm_to_vm`.
    #[test]
    #[ignore]
    fn direct_vm_to_vm_transfer_completes() {
        let qemu = tools::require(&[tools::QEMU], "boot Linux")
            .unwrap()
            .remove(0);
        let out = net_direct_run(&qemu, false).unwrap();
        let run = analyse_net(&out.lines);
        let problems = net_problems(&run, out.timed_out, QEMU_NET_LIMIT);
        let log: Vec<String> = out
            .lines
            .iter()
            .map(|l| format!("[{:>8.3}] {}", l.at.as_secs_f64(), l.text))
            .collect();
        assert!(
            problems.is_empty(),
            "{problems:?}\n{}\n{}",
            log.join("\n"),
            out.stderr
        );
        eprintln!(
            "direct VM-to-VM: {:.1} MiB/s, ping {:.2} ms",
            run.tcp_mib_s().unwrap(),
            run.ping_avg_ms().unwrap()
        );
    }
}
