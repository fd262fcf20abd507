//! `cargo xtask fuzz [--seconds N] [--jobs N] [target...]`: builds the coverage-guided
//! fuzz targets in `fuzz/` (libFuzzer through `libfuzzer-sys`) and runs each for a
//! bounded time, reporting executions and crashes.
//!
//! The targets are built the way cargo-fuzz builds them, without needing it
//! installed: release, on the pinned nightly, for the host triple (so RUSTFLAGS reach
//! only the target crates, not build scripts), with LLVM's sanitizer-coverage pass
//! (inline 8-bit counters, PC table, comparison tracing) that libFuzzer's coverage
//! feedback reads, and `--cfg fuzzing`. No AddressSanitizer: the code under test is
//! safe Rust, where bounds and overflow checks (kept on in `fuzz/Cargo.toml`) turn
//! memory bugs into panics, and ASan would halve the executions per second.
//!
//! Per target: a corpus in `target/fuzz/corpus/<target>/` (kept between runs, so long
//! runs build on short ones) and crash inputs in `target/fuzz/artifacts/<target>/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::build::{target_dir, workspace_root};

/// Every target, in the order `cargo xtask fuzz` runs them.
pub const TARGETS: [&str; 8] = [
    "images", "bundle", "config", "devices", "virtio", "net", "gpt", "mmio",
];

/// The flags cargo-fuzz passes for libFuzzer's coverage feedback (its `BuildOptions`
/// defaults without a sanitizer).
const RUSTFLAGS: &[&str] = &[
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
    "--cfg",
    "fuzzing",
    "-Cdebug-assertions",
    "-Coverflow-checks",
    "-Cforce-frame-pointers",
];

/// What one target's run found.
#[derive(Clone, Debug)]
pub struct FuzzResult {
    pub target: String,
    pub execs: u64,
    pub seconds: u64,
    /// Files libFuzzer wrote for crashes, leaks, timeouts or out-of-memory.
    pub crashes: Vec<PathBuf>,
    pub corpus: usize,
}

fn host_triple() -> Result<String, String> {
    let out = Command::new("rustc")
        .current_dir(workspace_root())
        .arg("-vV")
        .output()
        .map_err(|e| format!("cannot run rustc -vV: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .ok_or_else(|| "rustc -vV names no host triple".into())
}

/// Builds every fuzz target; returns the directory holding the binaries.
pub fn build_targets() -> Result<PathBuf, String> {
    let root = workspace_root();
    let triple = host_triple()?;
    let target = target_dir().join("fuzz").join("build");
    eprintln!("xtask: building the fuzz targets ({triple}, sanitizer coverage)");
    // `cargo` from PATH (rustup's proxy), run in the workspace so the pinned nightly
    // in rust-toolchain.toml applies; the fuzz crate is its own workspace.
    let status = Command::new("cargo")
        .current_dir(&root)
        .env_remove("RUSTFLAGS")
        .env("CARGO_ENCODED_RUSTFLAGS", RUSTFLAGS.join("\x1f"))
        .args(["build", "--release", "--bins", "--manifest-path"])
        .arg(root.join("fuzz").join("Cargo.toml"))
        .arg("--target")
        .arg(&triple)
        .arg("--target-dir")
        .arg(&target)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err("building the fuzz targets failed".into());
    }
    Ok(target.join(triple).join("release"))
}

/// Runs `target` for `seconds` with `jobs` libFuzzer workers.
pub fn run_target(
    bin_dir: &Path,
    target: &str,
    seconds: u64,
    jobs: u32,
) -> Result<FuzzResult, String> {
    let dir = target_dir().join("fuzz");
    let corpus = dir.join("corpus").join(target);
    let artifacts = dir.join("artifacts").join(target);
    for d in [&corpus, &artifacts] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    if list(&corpus).is_empty() {
        for (i, seed) in seeds(target).iter().enumerate() {
            let path = corpus.join(format!("seed-{i}"));
            std::fs::write(&path, seed).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    let before = list(&artifacts);
    let log = dir.join(format!("{target}.log"));
    let log_file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    eprintln!(
        "xtask: fuzzing {target} for {seconds} s (log: {})",
        log.display()
    );
    let started = Instant::now();
    let mut cmd = Command::new(bin_dir.join(target));
    cmd.arg(&corpus)
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(format!("-max_total_time={seconds}"))
        .arg("-max_len=65536")
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg("-print_final_stats=1")
        .stdout(Stdio::null())
        .stderr(log_file);
    if jobs > 1 {
        cmd.arg(format!("-fork={jobs}"));
    }
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run the {target} fuzz target: {e}"))?;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let crashes: Vec<PathBuf> = list(&artifacts)
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    if !status.success() && crashes.is_empty() {
        return Err(format!(
            "the {target} fuzz target failed ({status}) without a crash file; see {}",
            log.display()
        ));
    }
    Ok(FuzzResult {
        target: target.to_string(),
        execs: execs_from_log(&text),
        seconds: started.elapsed().as_secs(),
        crashes,
        corpus: list(&corpus).len(),
    })
}

/// Valid inputs to start a new corpus from, so the fuzzer begins past the magic
/// numbers and checksums it would take long to guess.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "bundle" => {
            let vm = |name, image: &'static [u8], format| bundle::VmSpec {
                name,
                memory_kib: 4096,
                run_limit_ms: 0,
                background: false,
                bench_hypercalls: false,
                on_reset: bundle::Policy::Restart,
                on_crash: bundle::Policy::Stop,
                unmapped_stops: false,
                balloon: false,
                image,
                image_path: name,
                format,
                cmdline: "a b",
                vcpus: 1,
                affinity: 0,
                modules: vec![bundle::Module {
                    data: b"module",
                    cmdline: "m",
                }],
                disk: Some(bundle::Disk {
                    data: &[0xA5; 1024],
                    read_only: format == bundle::ImageFormat::Linux,
                }),
                partition: None,
                nics: Vec::new(),
            };
            let one = [vm("mb", b"image", bundle::ImageFormat::Multiboot)];
            let two = [
                vm("a", b"x", bundle::ImageFormat::Auto),
                vm("linux", b"bz", bundle::ImageFormat::Linux),
            ];
            // A partition disk instead of a RAM-backed one (version 6).
            let stored = [bundle::VmSpec {
                disk: None,
                partition: Some(bundle::PartitionDisk {
                    name: "data",
                    read_only: false,
                    encrypted: true,
                    key: b"key",
                }),
                ..vm("st", b"y", bundle::ImageFormat::Auto)
            }];
            // The console administrator's credential in the machine record
            // (version 8).
            let admin = bundle::MachineSettings {
                admin: Some(bundle::AdminCredential {
                    memory_kib: 64,
                    iterations: 1,
                    lanes: 1,
                    salt: [0x5A; bundle::ADMIN_SALT_LEN],
                    hash: [0xC3; bundle::ADMIN_HASH_LEN],
                }),
                // And the management network (version 9).
                management: bundle::Management::new(
                    "mgmt",
                    [10, 0, 9, 1],
                    24,
                    Some(([10, 0, 9, 2], 514)),
                ),
                uplink: bundle::NetworkName::new("lan"),
            };
            let plain = bundle::MachineSettings::default();
            [
                (&plain, &one[..]),
                (&plain, &two[..]),
                (&plain, &stored[..]),
                (&admin, &two[..]),
            ]
            .iter()
            .filter_map(|(settings, vms)| bundle::write_with(settings, vms).ok())
            .collect()
        }
        "images" => {
            // The target's header: format 0 (auto), RAM 64 MiB, no command line or
            // path, no modules; then the image.
            let with_header = |image: &[u8]| {
                let mut v = vec![0, 4, 0, 0, 0];
                v.extend_from_slice(image);
                v
            };
            let mut sector = vec![0x90u8; 512];
            sector[510..].copy_from_slice(&[0x55, 0xAA]);
            let mut mb = vec![0u8; 0x100];
            let flags: u32 = (1 << 16) | 0b11;
            let magic: u32 = 0x1BAD_B002;
            let fields = [magic, flags, 0u32.wrapping_sub(magic).wrapping_sub(flags),
                0x10_0040, 0x10_0000, 0, 0x10_2000, 0x10_0080];
            for (i, f) in fields.iter().enumerate() {
                mb[0x40 + 4 * i..0x44 + 4 * i].copy_from_slice(&f.to_le_bytes());
            }
            let mut bz = vec![0u8; 5 * 512 + 0x400];
            bz[0x1F1] = 4;
            bz[0x1FE..0x200].copy_from_slice(&[0x55, 0xAA]);
            bz[0x201] = 0x6A;
            bz[0x202..0x206].copy_from_slice(b"HdrS");
            bz[0x206..0x208].copy_from_slice(&0x020Fu16.to_le_bytes());
            bz[0x211] = 1;
            bz[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes());
            bz[0x234] = 1;
            bz[0x236] = 1;
            bz[0x238..0x23C].copy_from_slice(&255u32.to_le_bytes());
            bz[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes());
            bz[0x260..0x264].copy_from_slice(&0x10_0000u32.to_le_bytes());
            vec![with_header(&sector), with_header(&mb), with_header(&bz), with_header(b"\x7fELF\x02\x01\x01")]
        }
        "config" => vec![
            b"[[vm]]\nname = \"a\"\nmemory = \"4M\"\nkernel = \"boot.bin\"\n".to_vec(),
            b"[[vm]]\nname = \"mb\"\nmemory = 16\nkernel = \"mb.bin\"\nformat = \"multiboot\"\ncmdline = \"x\"\nmodules = [{ path = \"m.bin\", cmdline = \"m\" }]\nbackground = true\nrun_limit_ms = 5\nvcpus = 1\n".to_vec(),
        ],
        "gpt" => {
            // A real image from the writer: its sector count, then its first 34
            // sectors (MBR, primary header and entries) and its last 33 (the
            // backup's entries and header), which the target mirrors to the end.
            let path = std::env::temp_dir().join(format!("hv-fuzz-gpt-{}.img", std::process::id()));
            let spec = |name: &str, mib: u64| gptdisk::image::PartSpec {
                name: name.into(),
                bytes: mib << 20,
                contents: None,
            };
            let made = gptdisk::image::create(&path, 4 << 20, &[spec("linux-data", 1), spec("b", 1)]);
            let image = made.ok().and_then(|_| std::fs::read(&path).ok());
            let _ = std::fs::remove_file(&path);
            let Some(image) = image else {
                return Vec::new();
            };
            let mut seed = ((image.len() / 512) as u32).to_le_bytes().to_vec();
            seed.extend_from_slice(&image[..34 * 512]);
            seed.extend_from_slice(&image[image.len() - 33 * 512..]);
            vec![seed]
        }
        "mmio" => {
            // Protected mode without paging (mode byte 1), RIP and CS base 0, every
            // register and device value zero but RAX = 0xfee000f0 and RFLAGS.CF, then
            // the instruction as the guest's RAM: MMIO forms drivers use.
            let insns: [&[u8]; 8] = [
                &[0x8b, 0x03],             // mov eax, [ebx]
                &[0x89, 0x37],             // mov [edi], esi
                &[0xf6, 0x00, 0x01],       // test byte [eax], 1
                &[0x01, 0x08],             // add [eax], ecx
                &[0x87, 0x08],             // xchg [eax], ecx
                &[0x0f, 0xb7, 0x00],       // movzx eax, word [eax]
                &[0x83, 0x38, 0x05],       // cmp dword [eax], 5
                &[0x66, 0x0f, 0xbe, 0x00], // movsx ax, byte [eax]
            ];
            insns
                .iter()
                .map(|insn| {
                    let mut seed = vec![0u8; 1 + 3 * 8 + 17 * 8 + 4 * 8];
                    seed[0] = 1;
                    seed[25..33].copy_from_slice(&0xfee0_00f0u64.to_le_bytes());
                    seed[25 + 16 * 8] = 1;
                    seed.extend_from_slice(insn);
                    seed
                })
                .collect()
        }
        _ => Vec::new(),
    }
}

fn list(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

/// The executions libFuzzer reports: `stat::number_of_executed_units` at the end
/// (single process), or the largest `#N` status line (fork mode prints no stats).
fn execs_from_log(log: &str) -> u64 {
    let stat = log.lines().filter_map(|l| {
        l.strip_prefix("stat::number_of_executed_units:")
            .and_then(|v| v.trim().parse::<u64>().ok())
    });
    let status = log.lines().filter_map(|l| {
        l.strip_prefix('#')
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.trim_end_matches(':').parse::<u64>().ok())
    });
    stat.chain(status).max().unwrap_or(0)
}

/// Builds and runs `targets` (all when empty) for `seconds` each; Err if any crashed.
pub fn fuzz(targets: &[String], seconds: u64, jobs: u32) -> Result<Vec<FuzzResult>, String> {
    let chosen: Vec<&str> = if targets.is_empty() {
        TARGETS.to_vec()
    } else {
        for t in targets {
            if !TARGETS.contains(&t.as_str()) {
                return Err(format!(
                    "unknown fuzz target {t:?}: one of {}",
                    TARGETS.join(", ")
                ));
            }
        }
        targets.iter().map(String::as_str).collect()
    };
    let bin_dir = build_targets()?;
    let mut results = Vec::new();
    for t in chosen {
        let r = run_target(&bin_dir, t, seconds, jobs)?;
        eprintln!(
            "xtask: fuzz {:<8} {:>12} execs in {:>4} s, corpus {:>5}, crashes {}",
            r.target,
            r.execs,
            r.seconds,
            r.corpus,
            r.crashes.len()
        );
        for c in &r.crashes {
            eprintln!("xtask:   crash input: {}", c.display());
        }
        results.push(r);
    }
    let crashed: Vec<&str> = results
        .iter()
        .filter(|r| !r.crashes.is_empty())
        .map(|r| r.target.as_str())
        .collect();
    if crashed.is_empty() {
        Ok(results)
    } else {
        Err(format!(
            "fuzz targets crashed: {} (reproduce: the target binary in {} with the crash file as its argument)",
            crashed.join(", "),
            bin_dir.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execs_are_read_from_either_log_form() {
        let single = "#1024\tpulse  cov: 10 ft: 11 corp: 2/3b exec/s: 0 rss: 30Mb\n\
                      stat::number_of_executed_units: 123456\nstat::average_exec_per_sec: 6000\n";
        assert_eq!(execs_from_log(single), 123456);
        let fork = "#5000: cov: 12 ft: 15 corp: 3 exec/s 2500 oom/timeout/crash: 0/0/0 time: 2s\n\
                    #9000: cov: 12 ft: 15 corp: 3 exec/s 2000 oom/timeout/crash: 0/0/0 time: 4s\n";
        assert_eq!(execs_from_log(fork), 9000);
        assert_eq!(execs_from_log("nothing"), 0);
    }
}
