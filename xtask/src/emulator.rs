//! Booting the disk images: QEMU (AMD-V under software emulation, or a nested-capable
//! KVM) and Bochs (VT-x with EPT). Runs are either interactive (`cargo xtask run`) or
//! captured with a time limit (tests).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::{console, tools};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    Bios,
    Uefi,
}

/// QEMU exits with `(value << 1) | 1` for a value written to isa-debug-exit; these are
/// the kernel's `shutdown::Status` values.
pub const EXIT_SUCCESS: i32 = (0x10 << 1) | 1;
pub const EXIT_FAILURE: i32 = (0x11 << 1) | 1;
pub const EXIT_UNSUPPORTED: i32 = (0x12 << 1) | 1;

#[derive(Clone, Debug)]
pub struct QemuOptions {
    pub firmware: Firmware,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Open a GDB stub on tcp::1234 and wait for the debugger before starting.
    pub gdb: bool,
    /// The `-cpu` model; `None` picks one (see [`QemuOptions::cpu_and_accel`]).
    pub cpu: Option<String>,
    /// Force software emulation even when a nested-capable KVM is present.
    pub force_tcg: bool,
    /// More arguments for the machine, after the others (host devices for the
    /// hypervisor's own drivers: `-drive ... -device nvme,...`).
    pub extra_args: Vec<String>,
    /// The persistent disk image (`[storage]`), attached writable as an NVMe disk:
    /// see [`nvme_args`].
    pub nvme_disk: Option<PathBuf>,
    /// The TCG threading this run needs (`HV_TCG_THREAD` overrides it); `None`:
    /// QEMU's default (multi-threaded).
    pub tcg_thread: Option<TcgThread>,
}

impl Default for QemuOptions {
    fn default() -> Self {
        Self {
            firmware: Firmware::Bios,
            memory_mib: 512,
            cpus: 2,
            gdb: false,
            cpu: None,
            force_tcg: false,
            extra_args: Vec::new(),
            nvme_disk: None,
            tcg_thread: None,
        }
    }
}

/// QEMU's arguments for the persistent disk: the image, raw and writable (no
/// `snapshot`: what the guests write stays in the file), behind an NVMe controller
/// with one namespace of 512-byte sectors, which the hypervisor's NVMe driver
/// reads the GPT from. Commas in the path are doubled, as QEMU's option syntax
/// wants.
pub fn nvme_args(image: &Path) -> [String; 4] {
    let file = image.display().to_string().replace(',', ",,");
    [
        "-drive".into(),
        format!("file={file},if=none,id=hvdisk,format=raw"),
        "-device".into(),
        "nvme,serial=hv-disk,drive=hvdisk".into(),
    ]
}

/// How QEMU's software emulator (TCG) runs the emulated processors: `Multi` is
/// multi-threaded TCG (one host thread per processor, QEMU's default for x86 guests
/// on x86 hosts), `Single` runs every processor in one host thread, round-robin
/// (`-accel tcg,thread=single`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcgThread {
    Single,
    Multi,
}

impl TcgThread {
    /// The environment variable that chooses the TCG threading for every QEMU run
    /// that boots the hypervisor: `single` or `multi`.
    pub const ENV: &'static str = "HV_TCG_THREAD";

    /// `HV_TCG_THREAD` parsed; `None` when it is unset or empty.
    pub fn from_env() -> Result<Option<Self>, String> {
        match std::env::var(Self::ENV) {
            Ok(v) => Self::parse(&v),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(e) => Err(format!("{}: {e}", Self::ENV)),
        }
    }

    fn parse(value: &str) -> Result<Option<Self>, String> {
        match value.trim() {
            "" => Ok(None),
            "single" => Ok(Some(Self::Single)),
            "multi" => Ok(Some(Self::Multi)),
            other => Err(format!(
                "{}={other}: expected `single` or `multi`",
                Self::ENV
            )),
        }
    }

    /// The value of QEMU's `-accel tcg,thread=` option.
    pub fn name(self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::Multi => "multi",
        }
    }
}

impl QemuOptions {
    /// KVM only where it can run a hypervisor (nested virtualization on); otherwise
    /// TCG with an AMD model that has SVM and nested paging, threaded as
    /// [`QemuOptions::tcg_thread`] says. The accelerator is the `-accel` argument.
    pub fn cpu_and_accel(&self) -> Result<(String, String), String> {
        if !self.force_tcg && self.cpu.is_none() && tools::nested_kvm_available() {
            return Ok(("host".into(), "kvm".into()));
        }
        let cpu = self
            .cpu
            .clone()
            .unwrap_or_else(|| "qemu64,+svm,+npt,+aes".into());
        let accel = match self.tcg_thread()? {
            Some(thread) => format!("tcg,thread={}", thread.name()),
            None => "tcg".into(),
        };
        Ok((cpu, accel))
    }

    /// The TCG threading for this machine: `HV_TCG_THREAD` when set, otherwise
    /// QEMU's own default (`None`: multi-threaded for x86 on an x86 host).
    /// Single-threaded TCG did not make the two-processor AMD-V runs more reliable
    /// and made them slower (see the README's known problems), so it is not the
    /// default.
    pub fn tcg_thread(&self) -> Result<Option<TcgThread>, String> {
        Ok(TcgThread::from_env()?.or(self.tcg_thread))
    }
}

/// The QEMU command line for `image` with its serial port on stdout, for captured
/// runs. `work_dir` holds the writable OVMF variables.
pub fn qemu_command(image: &Path, opts: &QemuOptions, work_dir: &Path) -> Result<Command, String> {
    qemu_command_with_serial(image, opts, work_dir, &["-serial", "stdio"])
}

/// The serial port of an interactive run: on the terminal, multiplexed with QEMU's
/// monitor as `-serial mon:stdio` does (`Ctrl-A X` quits, `Ctrl-A C` switches to the
/// monitor, `Ctrl-A H` lists the keys; plain `stdio` hands Ctrl-A to the guest and
/// nothing quits), and with `signal=off` so Ctrl-C reaches the guest, as it does in
/// the Bochs relay (see console.rs), instead of killing QEMU.
pub const QEMU_INTERACTIVE_SERIAL: [&str; 6] = [
    "-chardev",
    "stdio,id=console,mux=on,signal=off",
    "-serial",
    "chardev:console",
    "-mon",
    "chardev=console",
];

/// The QEMU command line for an interactive run (serial port and monitor on the
/// terminal: [`QEMU_INTERACTIVE_SERIAL`]).
pub fn qemu_interactive_command(
    image: &Path,
    opts: &QemuOptions,
    work_dir: &Path,
) -> Result<Command, String> {
    qemu_command_with_serial(image, opts, work_dir, &QEMU_INTERACTIVE_SERIAL)
}

fn qemu_command_with_serial(
    image: &Path,
    opts: &QemuOptions,
    work_dir: &Path,
    serial: &[&str],
) -> Result<Command, String> {
    let mut needed = vec![tools::QEMU];
    if opts.firmware == Firmware::Uefi {
        needed.extend([tools::OVMF_CODE, tools::OVMF_VARS]);
    }
    let paths = tools::require(&needed, "boot the hypervisor in QEMU")?;
    let (cpu, accel) = opts.cpu_and_accel()?;
    let mut cmd = Command::new(&paths[0]);
    cmd.args(["-machine", "q35", "-accel", &accel, "-cpu", &cpu])
        .args([
            "-m",
            &opts.memory_mib.to_string(),
            "-smp",
            &opts.cpus.to_string(),
        ])
        .args(serial)
        .args(["-display", "none", "-no-reboot"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
    match opts.firmware {
        Firmware::Bios => {
            cmd.arg("-drive")
                .arg(format!("format=raw,snapshot=on,file={}", image.display()));
        }
        Firmware::Uefi => {
            std::fs::create_dir_all(work_dir)
                .map_err(|e| format!("{}: {e}", work_dir.display()))?;
            let vars = work_dir.join("OVMF_VARS.fd");
            std::fs::copy(&paths[2], &vars).map_err(|e| format!("copying OVMF variables: {e}"))?;
            cmd.arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,readonly=on,file={}",
                    paths[1].display()
                ))
                .arg("-drive")
                .arg(format!("if=pflash,format=raw,file={}", vars.display()))
                .arg("-drive")
                .arg(format!("format=raw,snapshot=on,file={}", image.display()));
        }
    }
    cmd.args(&opts.extra_args);
    if let Some(disk) = &opts.nvme_disk {
        cmd.args(nvme_args(disk));
    }
    if opts.gdb {
        cmd.args(["-s", "-S"]);
    }
    // Extra arguments for debugging a run (`-d cpu_reset -D qemu.log`, ...).
    if let Ok(extra) = std::env::var("HV_QEMU_ARGS") {
        cmd.args(extra.split_whitespace());
    }
    Ok(cmd)
}

#[derive(Clone, Debug)]
pub struct BochsOptions {
    pub memory_mib: u32,
    pub cpus: u32,
    /// The persistent disk image (`[storage]`), attached writable as the second
    /// ATA disk (`ata0-slave`), in place: what the guests write stays in the file.
    /// See [`ata_disk_line`].
    pub ata_disk: Option<PathBuf>,
}

impl Default for BochsOptions {
    fn default() -> Self {
        Self {
            memory_mib: 128,
            cpus: 1,
            ata_disk: None,
        }
    }
}

/// The bochsrc line that attaches `image` (`bytes` long) as `ata0-slave`, a flat
/// image used in place. Bochs wants a whole number of 512-byte sectors, and its
/// CHS geometry, which it would otherwise guess as 16 heads and 63 sectors per
/// track and leave the rest of the image "outside of CHS address range", is given
/// so that it covers the image exactly: the most heads (up to 16) and sectors per
/// track (up to 63) that divide the image, when there are some. The hypervisor
/// addresses the disk by 48-bit LBA, whatever the geometry.
pub fn ata_disk_line(image: &Path, bytes: u64) -> Result<String, String> {
    let path = image.display().to_string();
    if path.contains([',', '\n', '"']) {
        return Err(format!(
            "{path}: Bochs cannot take a disk path with a comma, a quote or a newline"
        ));
    }
    if bytes == 0 || !bytes.is_multiple_of(512) {
        return Err(format!(
            "{path}: {bytes} bytes is not a whole number of 512-byte sectors, which Bochs needs"
        ));
    }
    let sectors = bytes / 512;
    let geometry = (1..=16u64)
        .rev()
        .flat_map(|heads| (1..=63u64).rev().map(move |spt| (heads, spt)))
        .find(|&(heads, spt)| {
            sectors.is_multiple_of(heads * spt) && sectors / (heads * spt) <= 65_535
        })
        .map(|(heads, spt)| {
            format!(
                ", cylinders={}, heads={heads}, spt={spt}",
                sectors / (heads * spt)
            )
        })
        .unwrap_or_default();
    Ok(format!(
        "ata0-slave: type=disk, path={path}, mode=flat{geometry}"
    ))
}

/// A prepared Bochs run: its configuration directory, the serial log it writes, and
/// the Xvfb display it needs (the bootloader wants true-colour VESA modes, which only
/// the X display library offers; see shared/PLATFORM.md).
pub struct BochsRun {
    pub serial_log: PathBuf,
    bochs: Child,
    xvfb: Child,
}

impl Drop for BochsRun {
    fn drop(&mut self) {
        let _ = self.bochs.kill();
        let _ = self.bochs.wait();
        let _ = self.xvfb.kill();
        let _ = self.xvfb.wait();
    }
}

fn free_display() -> u32 {
    // Displays from :90 upward; a lock file means taken.
    let base = 90 + (std::process::id() % 500);
    (base..base + 400)
        .find(|n| !Path::new(&format!("/tmp/.X{n}-lock")).exists())
        .unwrap_or(base)
}

/// Where Bochs connects the machine's first serial port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Com1 {
    /// Output to the run's `serial.txt`, no input (captured runs).
    LogFile,
    /// Bochs listens on 127.0.0.1:port and waits, before the machine starts, for one
    /// client that then carries the port both ways (interactive runs).
    SocketServer(u16),
}

impl Com1 {
    /// The bochsrc line, `serial_log` being the run's `serial.txt`.
    pub fn bochsrc_line(&self, serial_log: &Path) -> String {
        match self {
            Com1::LogFile => format!("com1: enabled=1, mode=file, dev={}", serial_log.display()),
            Com1::SocketServer(port) => {
                format!("com1: enabled=1, mode=socket-server, dev=127.0.0.1:{port}")
            }
        }
    }
}

/// Starts Bochs with its serial output in `work_dir/serial.txt`.
pub fn start_bochs(image: &Path, opts: &BochsOptions, work_dir: &Path) -> Result<BochsRun, String> {
    start_bochs_with(image, opts, work_dir, Com1::LogFile)
}

/// Starts Bochs with its first serial port on `com1`. `serial_log` of the result is
/// `work_dir/serial.txt` either way (with a socket, the relay writes it).
pub fn start_bochs_with(
    image: &Path,
    opts: &BochsOptions,
    work_dir: &Path,
    com1: Com1,
) -> Result<BochsRun, String> {
    let paths = tools::require(
        &[
            tools::BOCHS,
            tools::BOCHS_BIOS,
            tools::VGABIOS,
            tools::BOCHS_X,
            tools::XVFB,
        ],
        "boot the hypervisor in Bochs (VT-x)",
    )?;
    std::fs::create_dir_all(work_dir).map_err(|e| format!("{}: {e}", work_dir.display()))?;
    // Bochs takes the disk by path and leaves `<image>.lock` behind when killed: give
    // it a private copy so parallel runs and stale locks cannot interfere.
    let disk = work_dir.join("disk.img");
    std::fs::copy(image, &disk).map_err(|e| format!("copying {}: {e}", image.display()))?;
    let _ = std::fs::remove_file(work_dir.join("disk.img.lock"));
    let serial_log = work_dir.join("serial.txt");
    let _ = std::fs::remove_file(&serial_log);
    // The persistent disk is used in place (it must keep what the guests write), so
    // a lock a killed Bochs left on it is removed here.
    let slave = match &opts.ata_disk {
        Some(image) => {
            let bytes = std::fs::metadata(image)
                .map_err(|e| format!("{}: {e}", image.display()))?
                .len();
            let mut lock = image.as_os_str().to_owned();
            lock.push(".lock");
            let _ = std::fs::remove_file(PathBuf::from(lock));
            format!("{}\n", ata_disk_line(image, bytes)?)
        }
        None => String::new(),
    };
    let bochsrc = format!(
        "megs: {mem}\n\
         romimage: file={bios}\n\
         vgaromimage: file={vga}\n\
         vga: extension=vbe\n\
         display_library: x\n\
         cpu: model=corei7_skylake_x, count={cpus}, ips=100000000, reset_on_triple_fault=0\n\
         ata0-master: type=disk, path={disk}, mode=flat\n\
         {slave}\
         boot: disk\n\
         {com1}\n\
         clock: sync=none, time0=local\n\
         port_e9_hack: enabled=1\n\
         log: {log}\n\
         panic: action=fatal\n\
         error: action=report\n",
        mem = opts.memory_mib,
        bios = paths[1].display(),
        vga = paths[2].display(),
        cpus = opts.cpus,
        disk = disk.display(),
        com1 = com1.bochsrc_line(&serial_log),
        log = work_dir.join("bochs.log").display(),
    );
    let rc = work_dir.join("bochsrc");
    std::fs::write(&rc, bochsrc).map_err(|e| format!("writing bochsrc: {e}"))?;
    // Debian's Bochs has its debugger built in: `c` runs, `quit` ends at shutdown.
    let cmds = work_dir.join("debugger.rc");
    std::fs::write(&cmds, "c\nquit\n").map_err(|e| format!("writing debugger commands: {e}"))?;

    let display = free_display();
    let xvfb = Command::new(&paths[4])
        .arg(format!(":{display}"))
        .args(["-screen", "0", "1280x1024x24", "-nolisten", "tcp"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting Xvfb: {e}"))?;
    std::thread::sleep(Duration::from_millis(500));
    let bochs = Command::new(&paths[0])
        .args(["-q", "-f"])
        .arg(&rc)
        .arg("-rc")
        .arg(&cmds)
        .env("DISPLAY", format!(":{display}"))
        .current_dir(work_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let bochs = match bochs {
        Ok(b) => b,
        Err(e) => {
            let mut xvfb = xvfb;
            let _ = xvfb.kill();
            let _ = xvfb.wait();
            return Err(format!("starting bochs: {e}"));
        }
    };
    Ok(BochsRun {
        serial_log,
        bochs,
        xvfb,
    })
}

/// The outcome of a captured run.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// What the machine wrote to its first serial port.
    pub serial: String,
    /// The emulator's exit code (`None` when killed at the time limit).
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub elapsed: Duration,
}

/// Runs QEMU with its serial port on stdout, until it exits or `limit` passes.
pub fn run_qemu_captured(cmd: Command, limit: Duration) -> Result<RunOutput, String> {
    let start = Instant::now();
    let run = run_streaming(cmd, limit, |_| false)?;
    let mut serial: String = run.lines.iter().map(|l| format!("{}\n", l.text)).collect();
    if !run.stderr.trim().is_empty() {
        serial.push_str("\n[qemu stderr]\n");
        serial.push_str(&run.stderr);
    }
    Ok(RunOutput {
        serial,
        exit_code: run.exit_code,
        timed_out: run.timed_out,
        elapsed: start.elapsed(),
    })
}

/// A serial line and the wall-clock time, since the emulator started, at which it
/// arrived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimedLine {
    pub at: Duration,
    pub text: String,
}

/// The outcome of a streamed run.
#[derive(Debug, Default)]
pub struct Streamed {
    pub lines: Vec<TimedLine>,
    /// The emulator's exit code (`None` when killed).
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    /// `stop` asked to end the run.
    pub stopped: bool,
    pub stderr: String,
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs `cmd` (QEMU with its serial port on stdout) and timestamps each stdout line
/// when it is read, relative to just before the process was started. Ends when the
/// process closes its stdout, when `limit` passes, or when `stop` returns true for a
/// line (the process is then killed: it is our own child).
pub fn run_streaming(
    mut cmd: Command,
    limit: Duration,
    mut stop: impl FnMut(&str) -> bool,
) -> Result<Streamed, String> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", cmd.get_program().to_string_lossy()))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    // A thread reads, so the time limit holds even while the emulator is silent.
    let reader = read_lines(stdout, start, String::new(), tx);
    let err_rx = collect_stderr(&mut child);
    let mut out = Streamed::default();
    // End of stdout (the channel disconnected): the emulator is exiting.
    collect_until(&rx, start, limit, &mut stop, &mut out);
    if out.stopped || out.timed_out {
        kill(&mut child);
    } else {
        // Stdout closed; give the process a moment to finish exiting.
        let grace = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    out.exit_code = status.code();
                    break;
                }
                Ok(None) if grace.elapsed() < Duration::from_secs(10) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    kill(&mut child);
                    break;
                }
            }
        }
    }
    // Lines that arrived after the decision still belong to the log.
    out.lines.extend(rx.try_iter());
    // The reader threads end when the pipes close. They are not joined: a
    // grandchild that inherited a pipe could keep it open long after the emulator
    // is gone, and the run must not wait for that.
    drop(reader);
    out.stderr = err_rx
        .recv_timeout(Duration::from_secs(2))
        .unwrap_or_default();
    Ok(out)
}

/// A thread that reads `stdout` line by line and sends each, timestamped from
/// `start` and after `prefix`, until the pipe closes or nobody listens.
fn read_lines(
    stdout: impl std::io::Read + Send + 'static,
    start: Instant,
    prefix: String,
    tx: mpsc::Sender<TimedLine>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let at = start.elapsed();
                    let text = String::from_utf8_lossy(&buf);
                    let text = format!("{prefix}{}", text.trim_end_matches(['\r', '\n']));
                    if tx.send(TimedLine { at, text }).is_err() {
                        break;
                    }
                }
            }
        }
    })
}

/// Takes lines from `rx` into `out` until `stop` says so (`out.stopped`), `limit`
/// after `start` passes (`out.timed_out`) or every sender is gone.
fn collect_until(
    rx: &mpsc::Receiver<TimedLine>,
    start: Instant,
    limit: Duration,
    stop: &mut impl FnMut(&str) -> bool,
    out: &mut Streamed,
) {
    loop {
        let left = limit.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let hit = stop(&line.text);
                out.lines.push(line);
                if hit {
                    out.stopped = true;
                    return;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                out.timed_out = true;
                return;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Runs several emulators side by side (each with its serial port on stdout), one
/// after the other `stagger` apart, and timestamps their lines on one clock, each
/// as `label | text` (the form the hypervisor relays its VMs' consoles in, so the
/// same parser reads both). Ends when all have closed their stdout, when `limit`
/// passes, or when `stop` returns true for a (labelled) line; then every one still
/// running is killed (they are our own children). `exit_code` stays `None`;
/// `stderr` holds each one's error output after its label.
pub fn run_streaming_labelled(
    cmds: Vec<(String, Command)>,
    stagger: Duration,
    limit: Duration,
    mut stop: impl FnMut(&str) -> bool,
) -> Result<Streamed, String> {
    let start = Instant::now();
    let (tx, rx) = mpsc::channel();
    let mut children: Vec<(String, Child, mpsc::Receiver<String>)> = Vec::new();
    for (k, (label, mut cmd)) in cmds.into_iter().enumerate() {
        if k > 0 {
            std::thread::sleep(stagger);
        }
        let spawned = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                for (_, c, _) in &mut children {
                    kill(c);
                }
                return Err(format!(
                    "starting {} ({label}): {e}",
                    cmd.get_program().to_string_lossy()
                ));
            }
        };
        let stdout = child.stdout.take().expect("piped stdout");
        let tx = tx.clone();
        let prefix = format!("{label} | ");
        // A thread per emulator reads, so the limit holds while all are silent.
        read_lines(stdout, start, prefix, tx);
        let err_rx = collect_stderr(&mut child);
        children.push((label, child, err_rx));
    }
    // Only the readers hold senders now: the channel closes when all stdouts do.
    drop(tx);
    let mut out = Streamed::default();
    collect_until(&rx, start, limit, &mut stop, &mut out);
    for (_, child, _) in &mut children {
        kill(child);
    }
    out.lines.extend(rx.try_iter());
    for (label, _, err_rx) in children {
        let text = err_rx
            .recv_timeout(Duration::from_secs(2))
            .unwrap_or_default();
        if !text.trim().is_empty() {
            out.stderr.push_str(&format!("{label}: {}\n", text.trim()));
        }
    }
    Ok(out)
}

/// One step of a scripted console session ([`run_qemu_scripted`]): wait until the
/// serial output, after where the previous step's text was found, contains
/// `wait_for`; then wait `pause` more and type `send`.
#[derive(Clone, Debug)]
pub struct ScriptStep {
    pub wait_for: String,
    pub pause: Duration,
    pub send: Vec<u8>,
}

impl ScriptStep {
    pub fn new(wait_for: &str, send: &[u8]) -> Self {
        Self {
            wait_for: wait_for.into(),
            pause: Duration::ZERO,
            send: send.to_vec(),
        }
    }

    /// The same, typed `pause` after the text appeared.
    pub fn after(mut self, pause: Duration) -> Self {
        self.pause = pause;
        self
    }
}

/// A thread that reads all of `child`'s (piped) stderr and sends it when the pipe
/// closes.
fn collect_stderr(child: &mut Child) -> mpsc::Receiver<String> {
    let mut stderr = child.stderr.take().expect("piped stderr");
    let (err_tx, err_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        let _ = err_tx.send(s);
    });
    err_rx
}

/// Plays `steps` against a console: `seen` is what the machine wrote so far (a
/// reader thread appends to it and signals `ended` when the output closes),
/// `input` its keyboard. Returns a note naming the step that failed (empty when
/// all ran) and whether the time limit ended it.
fn drive_script(
    seen: &std::sync::Mutex<Vec<u8>>,
    ended: &mpsc::Receiver<()>,
    input: &mut dyn Write,
    steps: &[ScriptStep],
    limit: Duration,
    start: Instant,
) -> (String, bool) {
    let find =
        |hay: &[u8], needle: &[u8]| hay.windows(needle.len().max(1)).position(|w| w == needle);
    let mut from = 0;
    for (i, step) in steps.iter().enumerate() {
        loop {
            let at = {
                let seen = seen.lock().expect("output buffer");
                find(&seen[from.min(seen.len())..], step.wait_for.as_bytes())
            };
            if let Some(at) = at {
                from += at + step.wait_for.len();
                break;
            }
            let gone = ended.try_recv().is_ok();
            if gone || start.elapsed() > limit {
                let note = format!(
                    "\n[script] step {i}: {:?} did not appear ({})\n",
                    step.wait_for,
                    if gone {
                        "the emulator exited"
                    } else {
                        "time limit"
                    }
                );
                return (note, !gone);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(step.pause);
        if input
            .write_all(&step.send)
            .and_then(|()| input.flush())
            .is_err()
        {
            return (
                format!("\n[script] step {i}: the emulator no longer takes input\n"),
                false,
            );
        }
    }
    (String::new(), false)
}

/// Starts a thread that appends everything `from` yields to the returned buffer
/// and sends on the returned channel when it ends.
fn collect_output(
    mut from: impl Read + Send + 'static,
) -> (
    std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    mpsc::Receiver<()>,
) {
    use std::sync::{Arc, Mutex};
    let seen = Arc::new(Mutex::new(Vec::<u8>::new()));
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let sink = Arc::clone(&seen);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => sink
                    .lock()
                    .expect("output buffer")
                    .extend_from_slice(&buf[..n]),
            }
        }
        let _ = done_tx.send(());
    });
    (seen, done_rx)
}

/// Boots `image` in Bochs with its serial port on a local socket and types into it
/// as `steps` say (see [`run_qemu_scripted`]); ends when the hypervisor stops Bochs,
/// or at `limit`.
pub fn run_bochs_scripted(
    image: &Path,
    opts: &BochsOptions,
    work_dir: &Path,
    steps: &[ScriptStep],
    limit: Duration,
) -> Result<RunOutput, String> {
    let start = Instant::now();
    let port = free_tcp_port()?;
    let mut run = start_bochs_with(image, opts, work_dir, Com1::SocketServer(port))?;
    let stream = connect_console(&mut run, port, work_dir)?;
    let _ = stream.set_nodelay(true);
    let mut to_guest = stream
        .try_clone()
        .map_err(|e| format!("Bochs console socket: {e}"))?;
    let (seen, done_rx) = collect_output(stream);
    let (note, mut timed_out) = drive_script(&seen, &done_rx, &mut to_guest, steps, limit, start);
    let mut exit_code = None;
    if note.is_empty() {
        loop {
            if let Ok(Some(status)) = run.bochs.try_wait() {
                exit_code = status.code();
                break;
            }
            if done_rx.try_recv().is_ok() {
                break;
            }
            if start.elapsed() > limit {
                timed_out = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    drop(to_guest);
    let mut serial = String::from_utf8_lossy(&seen.lock().expect("output buffer")).into_owned();
    let _ = std::fs::write(&run.serial_log, &serial);
    serial.push_str(&note);
    drop(run);
    Ok(RunOutput {
        serial,
        exit_code,
        timed_out,
        elapsed: start.elapsed(),
    })
}

/// Runs QEMU (serial port on stdio) and types into its serial port as `steps` say,
/// as an operator at the console would, from a pipe. Matching is on the raw output
/// stream, so a prompt without a newline can be waited for. When a step's text does
/// not come within `limit`, the run ends and the output says which step waited.
pub fn run_qemu_scripted(
    mut cmd: Command,
    limit: Duration,
    steps: &[ScriptStep],
) -> Result<RunOutput, String> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", cmd.get_program().to_string_lossy()))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let stdout = child.stdout.take().expect("piped stdout");
    let (seen, done_rx) = collect_output(stdout);
    let err_rx = collect_stderr(&mut child);
    let (note, mut timed_out) = drive_script(&seen, &done_rx, &mut stdin, steps, limit, start);
    // The steps are done (or failed): wait for the machine to end on its own.
    let mut exit_code = None;
    if note.is_empty() {
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    exit_code = status.code();
                    break;
                }
                Ok(None) if start.elapsed() < limit => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    timed_out = true;
                    break;
                }
            }
        }
    }
    if exit_code.is_none() {
        kill(&mut child);
    }
    drop(stdin);
    let _ = done_rx.recv_timeout(Duration::from_secs(2));
    let mut serial = String::from_utf8_lossy(&seen.lock().expect("output buffer")).into_owned();
    serial.push_str(&note);
    let stderr = err_rx
        .recv_timeout(Duration::from_secs(2))
        .unwrap_or_default();
    if !stderr.trim().is_empty() {
        serial.push_str("\n[qemu stderr]\n");
        serial.push_str(&stderr);
    }
    Ok(RunOutput {
        serial,
        exit_code,
        timed_out,
        elapsed: start.elapsed(),
    })
}

/// Runs Bochs until it exits, `limit` passes, or the serial log contains `done_marker`
/// (Bochs has no exit status of its own to carry the hypervisor's).
pub fn run_bochs_captured(
    image: &Path,
    opts: &BochsOptions,
    work_dir: &Path,
    done_marker: &str,
    limit: Duration,
) -> Result<RunOutput, String> {
    let start = Instant::now();
    let mut run = start_bochs(image, opts, work_dir)?;
    let mut exit_code = None;
    let mut timed_out = false;
    loop {
        let serial = std::fs::read_to_string(&run.serial_log).unwrap_or_default();
        if serial.contains(done_marker) {
            // Give Bochs a moment to act on the shutdown port itself.
            std::thread::sleep(Duration::from_millis(300));
            if let Ok(Some(s)) = run.bochs.try_wait() {
                exit_code = s.code();
            }
            break;
        }
        if let Ok(Some(s)) = run.bochs.try_wait() {
            exit_code = s.code();
            break;
        }
        if start.elapsed() > limit {
            timed_out = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut serial = std::fs::read_to_string(&run.serial_log).unwrap_or_default();
    // Bochs reports the guest's use of its shutdown port as a "panic" and exits with 1,
    // so its exit code says nothing: the serial log's end marker does.
    if timed_out || !serial.contains(done_marker) {
        let log = std::fs::read_to_string(work_dir.join("bochs.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        serial.push_str("\n[bochs.log tail]\n");
        for l in tail.into_iter().rev() {
            serial.push_str(l);
            serial.push('\n');
        }
    }
    drop(run);
    Ok(RunOutput {
        serial,
        exit_code,
        timed_out,
        elapsed: start.elapsed(),
    })
}

/// The line the hypervisor prints as it stops the machine.
const STOP_MARKER: &str = "hv: stopping with status";

/// What ends an interactive Bochs run.
enum Event {
    /// `Ctrl-A X` typed.
    Quit,
    /// The hypervisor said it is stopping.
    Stopping,
    /// Bochs closed the serial connection.
    Closed,
}

/// A port on 127.0.0.1 that is free now (the system picks it).
fn free_tcp_port() -> Result<u16, String> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("finding a free TCP port for the Bochs console: {e}"))
}

/// Connects to the serial port Bochs serves once it listens (before the machine
/// starts), unless Bochs exits first.
fn connect_console(run: &mut BochsRun, port: u16, work_dir: &Path) -> Result<TcpStream, String> {
    let start = Instant::now();
    loop {
        if let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) {
            return Ok(stream);
        }
        if let Ok(Some(status)) = run.bochs.try_wait() {
            return Err(format!(
                "Bochs exited ({status}) before opening its serial port; see {}",
                work_dir.join("bochs.log").display()
            ));
        }
        if start.elapsed() > Duration::from_secs(60) {
            return Err(format!(
                "Bochs did not open its serial port on 127.0.0.1:{port} within 60 s"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An interactive Bochs run (`cargo xtask run --emulator bochs`): Bochs serves the
/// machine's first serial port on a local TCP socket and xtask relays it to and from
/// the terminal (raw mode; `Ctrl-A X` quits as in QEMU), keeping a copy of the output
/// in `work_dir/serial.txt`. Ends when the hypervisor stops, Bochs exits, or the user
/// quits.
pub fn run_bochs_interactive(
    image: &Path,
    opts: &BochsOptions,
    work_dir: &Path,
) -> Result<(), String> {
    let port = free_tcp_port()?;
    let mut run = start_bochs_with(image, opts, work_dir, Com1::SocketServer(port))?;
    let stream = connect_console(&mut run, port, work_dir)?;
    // Keys go out as they are typed.
    let _ = stream.set_nodelay(true);
    let mut to_guest = stream
        .try_clone()
        .map_err(|e| format!("Bochs console socket: {e}"))?;
    let mut from_guest = stream;
    let mut log = std::fs::File::create(&run.serial_log)
        .map_err(|e| format!("{}: {e}", run.serial_log.display()))?;
    let _raw = console::RawTerminal::enter();
    let (tx, rx) = mpsc::channel();
    let out_tx = tx.clone();
    std::thread::spawn(move || {
        let mut out = std::io::stdout();
        let mut buf = [0u8; 4096];
        let mut tail = Vec::new();
        loop {
            match from_guest.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = out_tx.send(Event::Closed);
                    break;
                }
                Ok(n) => {
                    let _ = out.write_all(&buf[..n]);
                    let _ = out.flush();
                    let _ = log.write_all(&buf[..n]);
                    if console::seen_across_reads(&mut tail, &buf[..n], STOP_MARKER) {
                        let _ = out_tx.send(Event::Stopping);
                    }
                }
            }
        }
    });
    // Not joined: it may sit in a read of the terminal when the run ends.
    std::thread::spawn(move || {
        let mut keys = console::Escapes::default();
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 256];
        // End of input (a pipe that ran dry) leaves the run going.
        while let Ok(n @ 1..) = stdin.read(&mut buf) {
            for &b in &buf[..n] {
                match keys.feed(b) {
                    console::Key::Send(bytes) => {
                        if to_guest.write_all(&bytes).is_err() {
                            return;
                        }
                    }
                    console::Key::Quit => {
                        let _ = tx.send(Event::Quit);
                        return;
                    }
                }
            }
        }
    });
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Event::Quit) => {
                eprint!("\r\nxtask: quit (Ctrl-A X)\r\n");
                break;
            }
            Ok(Event::Stopping) => {
                // Let the last lines arrive before Bochs goes.
                std::thread::sleep(Duration::from_millis(500));
                break;
            }
            Ok(Event::Closed) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                if let Ok(Some(_)) = run.bochs.try_wait() {
                    break;
                }
            }
        }
    }
    // Dropping the run stops Bochs and Xvfb; the raw terminal is restored after.
    drop(run);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ata_disk_geometry_covers_the_image() {
        let line = |bytes| ata_disk_line(Path::new("/t/hv/disks/d.img"), bytes);
        // 160 MiB: 327,680 sectors = 512 x 16 x 40.
        assert_eq!(
            line(160 << 20).unwrap(),
            "ata0-slave: type=disk, path=/t/hv/disks/d.img, mode=flat, cylinders=512, heads=16, spt=40"
        );
        // 16 x 63 divides it: the classic geometry.
        assert_eq!(
            line(1008 * 512 * 10).unwrap(),
            "ata0-slave: type=disk, path=/t/hv/disks/d.img, mode=flat, cylinders=10, heads=16, spt=63"
        );
        // A prime number of sectors beyond 65,535 cylinders of 1 x 1: Bochs guesses.
        assert_eq!(
            line(1_000_003 * 512).unwrap(),
            "ata0-slave: type=disk, path=/t/hv/disks/d.img, mode=flat"
        );
        assert!(line(1000)
            .unwrap_err()
            .contains("not a whole number of 512-byte sectors"));
        assert!(line(0).is_err());
        assert!(ata_disk_line(Path::new("/a,b.img"), 512)
            .unwrap_err()
            .contains("comma"));
    }

    #[test]
    fn tcg_thread_values() {
        assert_eq!(TcgThread::parse("single"), Ok(Some(TcgThread::Single)));
        assert_eq!(TcgThread::parse(" multi "), Ok(Some(TcgThread::Multi)));
        assert_eq!(TcgThread::parse(""), Ok(None));
        let err = TcgThread::parse("one").unwrap_err();
        assert!(err.contains("HV_TCG_THREAD=one"), "{err}");
        assert_eq!(TcgThread::Single.name(), "single");
        assert_eq!(TcgThread::Multi.name(), "multi");
    }

    #[test]
    fn nvme_disk_arguments() {
        assert_eq!(
            nvme_args(Path::new("/t/hv/disks/vms.img")),
            [
                "-drive",
                "file=/t/hv/disks/vms.img,if=none,id=hvdisk,format=raw",
                "-device",
                "nvme,serial=hv-disk,drive=hvdisk"
            ]
        );
        // A comma in the path is doubled, or QEMU would take the rest as options.
        assert_eq!(
            nvme_args(Path::new("/a,b/x.img"))[1],
            "file=/a,,b/x.img,if=none,id=hvdisk,format=raw"
        );
    }
}
