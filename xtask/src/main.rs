//! `cargo xtask <command>`: the developer workflow. See `cargo xtask help`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use xtask::build::{self, BuildOptions};
use xtask::emulator::{self, BochsOptions, Firmware, QemuOptions};

const HELP: &str = "\
cargo xtask <command> [options]

commands:
  build                 build the kernel and the BIOS and UEFI disk images
  run                   build when needed and boot the hypervisor with its guests:
                        by default Debian's Linux (fetched with apt, cached) to a
                        shell on the serial console, next to a tiny demo guest;
                        Ctrl-A X quits (QEMU and Bochs), Ctrl-C goes to the guest
      --guests <demo|tiny>  a built-in set (tiny: the eight test guests)
      --config <file.toml>  the VMs described in a TOML file (see vms.example.toml)
      --kernel <image>      one VM (named after the file) from a bzImage,
                            Multiboot or tiny image, with
      --initrd <file>       its initrd (Linux) or modules (Multiboot: f1 args,f2),
      --append <cmdline>    its command line, and
      --memory <size>       its memory (e.g. 256M), as QEMU's -kernel takes them
      --uefi | --bios       firmware (default: BIOS)
      --memory <MiB>        machine memory without --kernel (default: the guests' + 96 + the largest guest's, for a snapshot; at least 512 in QEMU, 128 in Bochs)
      --cpus <n>            processors (default: 2 in QEMU, 1 in Bochs)
      --gdb                 QEMU: GDB stub on tcp::1234, wait for the debugger
      --emulator <qemu|bochs>  bochs boots with VT-x (EPT) instead of AMD-V
      --tcg                 QEMU: software emulation even if a nested KVM exists
      --forward <[tcp:|udp:][HOSTADDR:]HOSTPORT=VM:PORT>  (repeatable)
                            with a configuration that has an [uplink]: TCP
                            (no prefix, or tcp:) or UDP (udp:) port HOSTPORT
                            on the host's HOSTADDR (127.0.0.1 unless given;
                            0.0.0.0 is every interface) reaches PORT of VM at its
                            NIC's `ip` on the uplink's network (QEMU user
                            networking, 10.0.2.0/24; the host is 10.0.2.2
                            from the VMs), e.g. udp:5353=web:53; VM `hv` is
                            the hypervisor's station ([management] on the
                            uplink's network), TCP PORT 80 its /metrics (it
                            serves nothing on UDP). The default run forwards
                            9100=hv:80 (a TCP forward of your own to hv:80 or
                            on host port 9100 replaces it)
  test                  host unit tests, then integration tests that boot images
      --host                only the host unit tests
  bench                 speed figures: Linux to /init under the hypervisor against
                        QEMU's direct boot (ratio), its exits per reason, and the
                        CPUID exit round trip against a bare VMRUN/VMRESUME loop,
                        and the IPI round trip between two vCPUs on one host
                        processor against two, and VM-to-VM TCP throughput and
                        ping through the switch against two plain QEMUs joined
                        by a socket netdev
      --runs <n>            repetitions, shown as median [min-max] (default 3)
      --only net            only the VM-to-VM figures
      --emulator <qemu|bochs>  bochs: the hypervisor run under VT-x only
                        (also takes --debug and --log)
  fuzz [target...]      build the libFuzzer targets in fuzz/ and run each for a
                        bounded time: images, bundle, config, devices (default:
                        all); reports executions and crashes
      --seconds <n>         time per target (default 20)
      --jobs <n>            parallel libFuzzer workers per target (default 1)
  flash <device>        write the disk image to a USB stick (removable whole disk)
      --uefi | --bios       which image (default: BIOS; UEFI for UEFI-only machines)
      --yes                 do not ask for confirmation
options for build, run, test and flash:
  --debug               unoptimised kernel (boots much slower under emulators)
  --log <level>         kernel log level: off, error, warn, info, debug, trace
";

struct Args {
    rest: Vec<String>,
}

impl Args {
    fn flag(&mut self, name: &str) -> bool {
        let before = self.rest.len();
        self.rest.retain(|a| a != name);
        before != self.rest.len()
    }
    fn value(&mut self, name: &str) -> Result<Option<String>, String> {
        match self.rest.iter().position(|a| a == name) {
            None => Ok(None),
            Some(i) if i + 1 < self.rest.len() => {
                let v = self.rest.remove(i + 1);
                self.rest.remove(i);
                Ok(Some(v))
            }
            Some(_) => Err(format!("{name} needs a value")),
        }
    }
    fn number(&mut self, name: &str) -> Result<Option<u32>, String> {
        self.value(name)?
            .map(|v| {
                v.parse::<u32>()
                    .map_err(|_| format!("{name}: {v:?} is not a number"))
            })
            .transpose()
    }
    fn finish(self) -> Result<Vec<String>, String> {
        if let Some(unknown) = self.rest.iter().find(|a| a.starts_with("--")) {
            return Err(format!("unknown option {unknown} (see `cargo xtask help`)"));
        }
        Ok(self.rest)
    }
}

fn build_options(args: &mut Args) -> Result<BuildOptions, String> {
    let mut opts = BuildOptions::default();
    if args.flag("--debug") {
        opts.release = false;
    }
    if let Some(level) = args.value("--log")? {
        opts.log_level = level;
    }
    Ok(opts)
}

fn firmware(args: &mut Args) -> Result<Firmware, String> {
    match (args.flag("--uefi"), args.flag("--bios")) {
        (true, true) => Err("choose one of --uefi and --bios".into()),
        (true, false) => Ok(Firmware::Uefi),
        _ => Ok(Firmware::Bios),
    }
}

/// What `run` boots, from a TOML file, one QEMU-style `--kernel` VM, or a named set.
struct Chosen {
    /// The directory under `target/hv/` the images go to.
    dir: String,
    vms: Vec<xtask::vms::VmDef>,
    /// The persistent disk (a config file's `[storage]`, the default run's).
    storage: Option<xtask::vms::StorageDef>,
    /// The console's administrator passphrase, the management network and the
    /// uplink (a config file's `[console]`, `[management]` and `[uplink]`, the
    /// default run's).
    machine: xtask::vms::MachineDef,
    /// The machine memory asked for (`--memory` without `--kernel`).
    machine_memory: Option<u32>,
    /// Forwards the set makes unless `--forward` overrides them (the default run's
    /// metrics port).
    default_forwards: Vec<xtask::uplink::Forward>,
}

/// The VMs to run; `machine_cpus` (the processors of the machine they will run on)
/// bounds the `cpus` lists of a config file.
fn chosen_vms(args: &mut Args, machine_cpus: u32) -> Result<Chosen, String> {
    let config = args.value("--config")?;
    let kernel = args.value("--kernel")?;
    let initrd = args.value("--initrd")?;
    let append = args.value("--append")?;
    let guests = args.value("--guests")?;
    if kernel.is_none() && (initrd.is_some() || append.is_some()) {
        return Err("--initrd and --append go with --kernel".into());
    }
    // With --kernel, --memory is the VM's size (QEMU's meaning); otherwise the machine's.
    let vm_memory = if kernel.is_some() {
        args.value("--memory")?
    } else {
        None
    };
    let machine_memory = args.number("--memory")?;
    let mut storage = None;
    let mut machine = xtask::vms::MachineDef::default();
    let mut default_forwards = Vec::new();
    let vms = match (config, kernel, guests.as_deref()) {
        (Some(path), None, None) => {
            let config = xtask::config::load_for_machine(Path::new(&path), Some(machine_cpus))?;
            machine = config.machine();
            storage = config.storage;
            ("custom".into(), config.vms)
        }
        (None, Some(k), None) => {
            let vm = xtask::config::single_vm(
                Path::new(&k),
                initrd.as_deref().map(Path::new),
                append.as_deref(),
                vm_memory.as_deref(),
            )?;
            ("custom".into(), vec![vm])
        }
        (None, None, None | Some("demo")) => {
            // The disk first: it makes the key file the Linux VM's disk names.
            storage = build::GuestSet::Demo.storage()?;
            machine = build::GuestSet::Demo.machine()?;
            default_forwards = build::GuestSet::Demo.forwards();
            ("demo".into(), build::GuestSet::Demo.vms()?)
        }
        (None, None, Some("tiny")) => {
            machine = build::GuestSet::Tiny.machine()?;
            ("tiny".into(), build::GuestSet::Tiny.vms()?)
        }
        (None, None, Some(other)) => {
            return Err(format!("unknown guest set {other:?}: use demo or tiny"))
        }
        _ => return Err("choose one of --config, --kernel and --guests".into()),
    };
    Ok(Chosen {
        dir: vms.0,
        vms: vms.1,
        storage,
        machine,
        machine_memory,
        default_forwards,
    })
}

/// The smallest default machine per emulator (`--memory` may go lower, down to what
/// the VMs need).
const QEMU_FLOOR_MIB: u32 = 512;
const BOCHS_FLOOR_MIB: u32 = 128;

fn run(mut args: Args) -> Result<(), String> {
    let bopts = build_options(&mut args)?;
    let fw = firmware(&mut args)?;
    let cpus = args.number("--cpus")?;
    let emulator = args.value("--emulator")?.unwrap_or_else(|| "qemu".into());
    let mut machine_cpus = cpus.unwrap_or(if emulator == "bochs" { 1 } else { 2 });
    let Chosen {
        dir,
        mut vms,
        storage,
        machine,
        machine_memory: memory,
        default_forwards,
    } = chosen_vms(&mut args, machine_cpus)?;
    let gdb = args.flag("--gdb");
    let tcg = args.flag("--tcg");
    let mut forwards = Vec::new();
    while let Some(f) = args.value("--forward")? {
        forwards.push(xtask::uplink::parse_forward(&f)?);
    }
    args.finish()?;
    // Under QEMU's multi-threaded TCG, guests that load x87 state race the boot
    // processor's SVM state (README, Known problems): keep them off it.
    let tcg_plan = if emulator == "qemu"
        && (tcg || !xtask::tools::nested_kvm_available())
        && emulator::TcgThread::from_env()? != Some(emulator::TcgThread::Single)
    {
        let own_guests = build::target_dir().join("hv").join("guests");
        xtask::boot_cpu::plan(&vms, machine_cpus, &own_guests)
    } else {
        xtask::boot_cpu::Plan::AsAsked
    };
    if let xtask::boot_cpu::Plan::SpareBootProcessor { cpus } = tcg_plan {
        xtask::boot_cpu::keep_off_boot_processor(&mut vms, cpus);
        machine_cpus = cpus;
    }
    // Under Bochs there is no uplink (refused below for a configuration that has
    // one), so the default run's metrics forward is not made there.
    if emulator != "bochs" {
        forwards = xtask::uplink::with_defaults(forwards, &default_forwards);
    }
    let hostfwds = xtask::uplink::resolve(
        &forwards,
        &vms,
        machine.uplink.as_ref(),
        machine.management.as_ref(),
    )?;
    if machine.uplink.is_some() && emulator == "bochs" {
        return Err(
            "the configuration has an [uplink], an e1000 NIC on QEMU's user network, which \
             this Bochs run does not attach: run it under QEMU"
                .into(),
        );
    }
    // Before anything is built: a busy host port would stop QEMU at its start.
    if machine.uplink.is_some() {
        xtask::uplink::check_host_ports(&forwards)?;
    }
    // The machine needs the guests' RAM plus room for the hypervisor, in either
    // emulator; checked before anything is built.
    let floor = match emulator.as_str() {
        "bochs" => BOCHS_FLOOR_MIB,
        _ => QEMU_FLOOR_MIB,
    };
    let machine_mib = xtask::vms::machine_memory_mib(&vms, memory, floor)?;
    // The persistent disk: QEMU attaches it as an NVMe disk, Bochs (which has no
    // NVMe) as the second ATA disk; the hypervisor drives either.
    let disk_image = storage
        .as_ref()
        .map(|s| xtask::storage::prepare(s, &build::target_dir()))
        .transpose()?;
    // With a bundle partition on the persistent disk, the bundle goes there and the boot
    // image carries only a reference to it (a faster start).
    let bundle_on_disk = storage.as_ref().is_some_and(|s| {
        s.partitions
            .iter()
            .any(|p| p.name == build::BUNDLE_PARTITION)
    });
    let built = match &disk_image {
        Some(disk) if bundle_on_disk => {
            build::build_with_bundle_on_disk(&bopts, &dir, &vms, &machine, disk)?
        }
        _ => build::build_with_vms(&bopts, &dir, &vms, &machine)?,
    };
    let work = build::target_dir().join("hv").join("run");
    match emulator.as_str() {
        "qemu" => {
            let opts = QemuOptions {
                firmware: fw,
                memory_mib: machine_mib,
                cpus: machine_cpus,
                gdb,
                cpu: None,
                force_tcg: tcg,
                // The uplink: an e1000 on QEMU's user network, with the forwards.
                extra_args: if machine.uplink.is_some() {
                    xtask::uplink::qemu_args(&hostfwds)
                } else {
                    Vec::new()
                },
                nvme_disk: disk_image,
                tcg_thread: matches!(tcg_plan, xtask::boot_cpu::Plan::SingleThread { .. })
                    .then_some(emulator::TcgThread::Single),
            };
            let image = if fw == Firmware::Uefi {
                &built.images.uefi
            } else {
                &built.images.bios
            };
            let mut cmd = emulator::qemu_interactive_command(image, &opts, &work)?;
            let (cpu, accel) = opts.cpu_and_accel()?;
            eprintln!(
                "xtask: booting {} in QEMU ({accel}, -cpu {cpu}, {machine_mib} MiB); quit with Ctrl-A X",
                image.display()
            );
            if let Some(what) = xtask::boot_cpu::describe(&tcg_plan) {
                eprintln!("xtask: {what}");
            }
            for (f, h) in forwards.iter().zip(&hostfwds) {
                // 0.0.0.0 listens everywhere; the loopback reaches it from here.
                let reach = if f.host_addr.is_unspecified() {
                    std::net::Ipv4Addr::LOCALHOST
                } else {
                    f.host_addr
                };
                let what = if f.vm == xtask::uplink::STATION {
                    format!(
                        "the hypervisor's metrics: curl http://{reach}:{}/metrics",
                        f.host_port
                    )
                } else {
                    format!("VM {} {} port {}", f.vm, f.protocol.upper(), f.guest_port)
                };
                eprintln!(
                    "xtask: {} {}:{} -> {}:{} ({what})",
                    f.protocol.name(),
                    f.host_addr,
                    f.host_port,
                    h.guest,
                    h.guest_port
                );
            }
            if gdb {
                eprintln!("xtask: QEMU waits for GDB on localhost:1234 (target remote :1234)");
            }
            let status = cmd.status().map_err(|e| format!("starting QEMU: {e}"))?;
            match status.code() {
                Some(emulator::EXIT_SUCCESS) => eprintln!("xtask: the hypervisor stopped cleanly"),
                Some(code) => eprintln!("xtask: QEMU exited with status {code}"),
                None => eprintln!("xtask: QEMU was stopped by a signal"),
            }
            Ok(())
        }
        "bochs" => {
            if fw == Firmware::Uefi {
                return Err("Bochs boots the BIOS image only".into());
            }
            let opts = BochsOptions {
                memory_mib: machine_mib,
                cpus: machine_cpus,
                ata_disk: disk_image,
            };
            eprintln!(
                "xtask: booting {} in Bochs ({machine_mib} MiB, VT-x with EPT; slow, be patient); quit with Ctrl-A X",
                built.images.bios.display()
            );
            emulator::run_bochs_interactive(&built.images.bios, &opts, &work.join("bochs"))
        }
        other => Err(format!("unknown emulator {other:?}: use qemu or bochs")),
    }
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(build::workspace_root());
    cmd
}

fn test(mut args: Args) -> Result<(), String> {
    let bopts = build_options(&mut args)?;
    let host_only = args.flag("--host");
    args.finish()?;
    eprintln!("xtask: host unit tests");
    let ok = cargo()
        .args([
            "test",
            "--workspace",
            "--exclude",
            "tests",
            "--exclude",
            "kernel",
            "--exclude",
            "guests",
        ])
        .status()
        .map_err(|e| e.to_string())?
        .success()
        && cargo()
            .args(["test", "--package", "kernel", "--lib"])
            .status()
            .map_err(|e| e.to_string())?
            .success();
    if !ok {
        return Err("host unit tests failed".into());
    }
    if host_only {
        return Ok(());
    }
    // Every emulator package, installed once here: tests that each found a package
    // missing would otherwise run apt-get at the same time (tools.rs also makes them
    // take turns, for `cargo test -p tests` run directly).
    xtask::tools::require(xtask::tools::ALL, "run the integration tests")?;
    for set in [
        build::GuestSet::None,
        build::GuestSet::Tiny,
        build::GuestSet::LinuxTest,
        build::GuestSet::LinuxApicTest,
        build::GuestSet::Multiboot,
    ] {
        build::build_all(&bopts, set)?;
    }
    eprintln!(
        "xtask: integration tests (boot the images under QEMU with AMD-V and Bochs with VT-x)"
    );
    let ok = cargo()
        .args(["test", "--package", "tests", "--", "--test-threads=2"])
        .env("HV_RELEASE", if bopts.release { "1" } else { "0" })
        .env("HV_LOG", &bopts.log_level)
        .status()
        .map_err(|e| e.to_string())?
        .success();
    if ok {
        Ok(())
    } else {
        Err("integration tests failed".into())
    }
}

fn bench(mut args: Args) -> Result<(), String> {
    let build = build_options(&mut args)?;
    let runs = args.number("--runs")?.unwrap_or(3);
    let emulator = args
        .value("--emulator")?
        .unwrap_or_else(|| "qemu".into())
        .parse()?;
    let only_net = match args.value("--only")?.as_deref() {
        None => false,
        Some("net") => true,
        Some(other) => return Err(format!("--only {other:?}: the one part is `net`")),
    };
    if let Some(extra) = args.finish()?.first() {
        return Err(format!("bench takes no argument {extra:?}"));
    }
    xtask::bench::bench(&xtask::bench::Options {
        build,
        runs,
        emulator,
        only_net,
    })
}

fn flash(mut args: Args) -> Result<(), String> {
    let bopts = build_options(&mut args)?;
    let fw = firmware(&mut args)?;
    let yes = args.flag("--yes");
    let rest = args.finish()?;
    let [device] = rest.as_slice() else {
        return Err("usage: cargo xtask flash <device> [--yes] [--uefi]".into());
    };
    let built = build::build_all(&bopts, build::GuestSet::Demo)?;
    let image = if fw == Firmware::Uefi {
        built.images.uefi
    } else {
        built.images.bios
    };
    xtask::flash::flash(&image, &PathBuf::from(device), yes)
}

fn fuzz(mut args: Args) -> Result<(), String> {
    let seconds = args.number("--seconds")?.unwrap_or(20);
    let jobs = args.number("--jobs")?.unwrap_or(1).max(1);
    let targets = args.finish()?;
    xtask::fuzz::fuzz(&targets, u64::from(seconds), jobs).map(|_| ())
}

fn main() -> ExitCode {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.is_empty() {
        eprint!("{HELP}");
        return ExitCode::FAILURE;
    }
    let command = argv.remove(0);
    let mut args = Args { rest: argv };
    let result = match command.as_str() {
        "build" => build_options(&mut args).and_then(|o| {
            args.finish()?;
            let built = build::build_all(&o, build::GuestSet::Demo)?;
            println!(
                "{}\n{}",
                built.images.bios.display(),
                built.images.uefi.display()
            );
            Ok(())
        }),
        "run" => run(args),
        "test" => test(args),
        "bench" => bench(args),
        "flash" => flash(args),
        "fuzz" => fuzz(args),
        "help" | "--help" | "-h" => {
            print!("{HELP}");
            Ok(())
        }
        other => Err(format!(
            "unknown command {other:?} (see `cargo xtask help`)"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}
