//! Builds the tiny test guests (the `guests/` crate) into the images the
//! hypervisor loads.
//!
//! `cargo build -p guests --release --target x86_64-unknown-none` links every guest
//! as an x86_64 ELF at a fixed address (see `guests/build.rs` and its linker
//! scripts). The post-processing here turns those into what each CPU mode needs:
//!
//! - `real16`: `llvm-objcopy -O binary`, padded to 510 bytes, plus the 0x55 0xAA
//!   boot signature: `real16.bin`, a 512-byte boot sector for 0000:7C00.
//! - `prot32`: `llvm-objcopy -O elf32-i386`: `prot32.elf`, an ELF32 (EM_386).
//! - `*64`: `llvm-objcopy --strip-debug`: `<name>.elf`, an ELF64 (EM_X86_64).
//! - `mb32`: as `prot32`, an ELF32 that is also a Multiboot v1 kernel.
//!
//! Every ELF is checked (class, machine, entry, PT_LOAD at physical >= 1 MiB)
//! before it is handed out, and `mb32` also for its Multiboot header (in the first
//! 8 KiB of the *converted* file, where loaders look: objcopy decides the file
//! layout), so a toolchain change shows up here and not as a puzzling guest crash
//! or a loader's "no Multiboot header". Only `std` is used.
//!
//! The eight tiny guests ([`build_guests`]) form the tiny VM set; `mb32`,
//! `bench64`, the SMP guests `smp64` and `ipistorm64` (which need `vcpus = 2`), the
//! hostile guests `dbloop64`, `dr64`, `insn64`, `timer64`, `acloop32` and
//! `usercall32`, `reset64`, `crcheck64`
//! the virtio-blk guest `blk64`, the hostile virtqueue guest `vq64` and the
//! virtio-balloon guest `balloon64` are built with
//! them ([`build_all_guests`]) but booted in their own sets.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A built guest image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestImage {
    /// The guest's name (`real16`, `prot32`, `hello64`, ...).
    pub name: String,
    /// `<out_dir>/<name>.bin` for the boot sector, `<out_dir>/<name>.elf` otherwise.
    pub path: PathBuf,
}

/// How a linked guest becomes an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// 512-byte boot sector, loaded at 0x7C00 and run in real mode.
    BootSector,
    /// ELF32 (EM_386), run in 32-bit protected mode without paging.
    Elf32,
    /// ELF64 (EM_X86_64), run in long mode on an identity map.
    Elf64,
    /// ELF32 (EM_386) carrying a Multiboot v1 header, started by a Multiboot loader.
    Multiboot32,
}

/// Every guest, in the order [`build_guests`] returns them.
const GUESTS: &[(&str, Kind)] = &[
    ("real16", Kind::BootSector),
    ("prot32", Kind::Elf32),
    ("hello64", Kind::Elf64),
    ("msr64", Kind::Elf64),
    ("ports64", Kind::Elf64),
    ("oob64", Kind::Elf64),
    ("spin64", Kind::Elf64),
    ("triple64", Kind::Elf64),
];

/// Guests built with the others but not part of the tiny set, in the order
/// [`build_all_guests`] returns them after [`GUESTS`].
const EXTRA_GUESTS: &[(&str, Kind)] = &[
    ("mb32", Kind::Multiboot32),
    ("bench64", Kind::Elf64),
    ("smp64", Kind::Elf64),
    ("ipistorm64", Kind::Elf64),
    ("reset64", Kind::Elf64),
    ("dbloop64", Kind::Elf64),
    ("dr64", Kind::Elf64),
    ("insn64", Kind::Elf64),
    ("timer64", Kind::Elf64),
    ("crcheck64", Kind::Elf64),
    ("blk64", Kind::Elf64),
    ("vq64", Kind::Elf64),
    ("net64", Kind::Elf64),
    ("flood64", Kind::Elf64),
    ("udpecho64", Kind::Elf64),
    ("count64", Kind::Elf64),
    ("balloon64", Kind::Elf64),
    ("acloop32", Kind::Elf32),
    ("usercall32", Kind::Elf32),
];

/// The Multiboot header flags `mb32` must carry: bit 0 (modules page-aligned) and
/// bit 1 (memory information); nothing else, in particular not bit 16 (a.out
/// kludge: the loaders must use its ELF headers).
pub const MB32_HEADER_FLAGS: u32 = 0x3;

/// The bare-metal target the guests are compiled for.
const TARGET: &str = "x86_64-unknown-none";

/// Where ELF guests must load: the hypervisor keeps the first MiB for real-mode
/// use (boot sector at 0x7C00, its own structures).
pub const MIN_ELF_LOAD_ADDR: u64 = 0x10_0000;

/// Builds all guests and returns the images of the tiny set, in a fixed order:
/// real16, prot32, hello64, msr64, ports64, oob64, spin64, triple64. The others
/// ([`build_all_guests`]) are written to `out_dir` too.
pub fn build_guests(workspace_root: &Path, out_dir: &Path) -> Result<Vec<GuestImage>, String> {
    let mut images = build_all_guests(workspace_root, out_dir)?;
    images.truncate(GUESTS.len());
    Ok(images)
}

/// The image called `name` among `images`.
pub fn find_image<'a>(images: &'a [GuestImage], name: &str) -> Result<&'a GuestImage, String> {
    images
        .iter()
        .find(|g| g.name == name)
        .ok_or_else(|| format!("guests: no `{name}` among the built guests"))
}

/// Builds every guest and writes their images into `out_dir` (created if needed).
///
/// Runs cargo in `workspace_root` with the workspace's target directory (or
/// `CARGO_TARGET_DIR` when the caller's environment sets it), then post-processes
/// each binary with the toolchain's `llvm-objcopy` (component
/// `llvm-tools-preview`). Returns the images in a fixed order: the tiny set as
/// [`build_guests`] lists it, then the others in [`EXTRA_GUESTS`] order (mb32 ...
/// crcheck64, blk64, vq64).
pub fn build_all_guests(workspace_root: &Path, out_dir: &Path) -> Result<Vec<GuestImage>, String> {
    // Tests build several guest sets from parallel threads; one build at a time
    // in this process (cargo already serialises across processes).
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    let linked = cargo_build(workspace_root)?;
    let objcopy = llvm_tool(workspace_root, "llvm-objcopy")?;
    fs::create_dir_all(out_dir)
        .map_err(|e| format!("guests: cannot create {}: {e}", out_dir.display()))?;

    let mut images = Vec::with_capacity(GUESTS.len() + EXTRA_GUESTS.len());
    for &(name, kind) in GUESTS.iter().chain(EXTRA_GUESTS) {
        let elf = linked
            .iter()
            .find(|(bin, _)| bin == name)
            .map(|(_, path)| path)
            .ok_or_else(|| {
                format!("guests: cargo reported no executable for `{name}` (is it a [[bin]] of guests/?)")
            })?;
        let path = match kind {
            Kind::BootSector => {
                let flat = tmp_beside(&out_dir.join(format!("{name}.flat")));
                run_objcopy(&objcopy, &["-O", "binary"], elf, &flat)?;
                let code = fs::read(&flat)
                    .map_err(|e| format!("guests: cannot read {}: {e}", flat.display()))?;
                let _ = fs::remove_file(&flat);
                let sector = boot_sector(&code).map_err(|e| format!("guests: {name}: {e}"))?;
                let path = out_dir.join(format!("{name}.bin"));
                write(&path, &sector)?;
                path
            }
            Kind::Elf32 => {
                // llvm-objcopy rewrites the ELF64 (headers, program header,
                // sections, symbols) as ELF32; the addresses all fit in 32 bits.
                let path = out_dir.join(format!("{name}.elf"));
                run_objcopy(&objcopy, &["-O", "elf32-i386", "--strip-debug"], elf, &path)?;
                check_image(name, &path, ElfClass::Elf32)?;
                path
            }
            Kind::Multiboot32 => {
                let path = out_dir.join(format!("{name}.elf"));
                run_objcopy(&objcopy, &["-O", "elf32-i386", "--strip-debug"], elf, &path)?;
                check_image(name, &path, ElfClass::Elf32)?;
                let bytes = fs::read(&path)
                    .map_err(|e| format!("guests: cannot read {}: {e}", path.display()))?;
                let header = check_multiboot(&bytes)
                    .map_err(|e| format!("guests: {name} ({}): {e}", path.display()))?;
                if header.flags != MB32_HEADER_FLAGS {
                    return Err(format!(
                        "guests: {name} ({}): Multiboot header flags {:#x}, expected {MB32_HEADER_FLAGS:#x}",
                        path.display(),
                        header.flags
                    ));
                }
                path
            }
            Kind::Elf64 => {
                // Debug info is most of the file (core's); symbols stay so a RIP in
                // a failure report can be looked up.
                let path = out_dir.join(format!("{name}.elf"));
                run_objcopy(&objcopy, &["--strip-debug"], elf, &path)?;
                check_image(name, &path, ElfClass::Elf64)?;
                path
            }
        };
        images.push(GuestImage {
            name: name.to_string(),
            path,
        });
    }
    Ok(images)
}

/// Runs `cargo build` for the guests and returns `(bin name, executable)` pairs.
fn cargo_build(workspace_root: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace_root)
        .args(["build", "-p", "guests", "--release", "--target", TARGET])
        // JSON on stdout tells us where the executables are, whatever the target
        // directory; diagnostics still arrive rendered on stderr.
        .arg("--message-format=json-render-diagnostics")
        // Set by cargo for build scripts; it would override the RUSTFLAGS of the
        // nested build if this runs inside one.
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    let shown = format!(
        "{} build -p guests --release --target {TARGET}",
        Path::new(&cargo).display()
    );
    let output = cmd
        .output()
        .map_err(|e| format!("guests: cannot run `{shown}`: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "guests: `{shown}` failed ({}) in {}:\n{}",
            output.status,
            workspace_root.display(),
            tail(&String::from_utf8_lossy(&output.stderr), 8000)
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut linked = Vec::new();
    for line in stdout.lines() {
        if json_string_field(line, "reason").as_deref() != Some("compiler-artifact") {
            continue;
        }
        let Some(exe) = json_string_field(line, "executable") else {
            continue;
        };
        let exe = PathBuf::from(exe);
        if let Some(name) = exe.file_stem().and_then(|s| s.to_str()) {
            linked.push((name.to_string(), exe.clone()));
        }
    }
    Ok(linked)
}

/// Finds an LLVM tool shipped with the toolchain that builds the workspace:
/// `$(rustc --print sysroot)/lib/rustlib/<host>/bin/<tool>`.
fn llvm_tool(workspace_root: &Path, tool: &str) -> Result<PathBuf, String> {
    // Run in the workspace so rustup picks the pinned toolchain (rust-toolchain.toml).
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let query = |args: &[&str]| -> Result<String, String> {
        let out = Command::new(&rustc)
            .current_dir(workspace_root)
            .args(args)
            .output()
            .map_err(|e| format!("guests: cannot run `rustc {}`: {e}", args.join(" ")))?;
        if !out.status.success() {
            return Err(format!(
                "guests: `rustc {}` failed ({}):\n{}",
                args.join(" "),
                out.status,
                tail(&String::from_utf8_lossy(&out.stderr), 4000)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let sysroot = query(&["--print", "sysroot"])?;
    let version = query(&["-vV"])?;
    let host = version
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .ok_or_else(|| format!("guests: no `host:` line in `rustc -vV`:\n{version}"))?;
    let path = Path::new(sysroot.trim())
        .join("lib/rustlib")
        .join(host.trim())
        .join("bin")
        .join(format!("{tool}{}", env::consts::EXE_SUFFIX));
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "guests: {} not found; install it with `rustup component add llvm-tools-preview` \
             (in {})",
            path.display(),
            workspace_root.display()
        ))
    }
}

/// `llvm-objcopy <args> <input> <output>`.
/// A per-process temporary name beside `path`: a test binary and `cargo xtask
/// run` may build into the same directory at once, and each renames its own
/// finished file into place, so no reader ever sees a half-written image.
/// The counter keeps two threads of one process (tests building different guest
/// sets at once) apart too.
fn tmp_beside(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.{n}.tmp", std::process::id()));
    path.with_file_name(name)
}

fn run_objcopy(objcopy: &Path, args: &[&str], input: &Path, output: &Path) -> Result<(), String> {
    let tmp = tmp_beside(output);
    let out = Command::new(objcopy)
        .args(args)
        .arg(input)
        .arg(&tmp)
        .output()
        .map_err(|e| format!("guests: cannot run {}: {e}", objcopy.display()))?;
    if out.status.success() {
        fs::rename(&tmp, output).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            format!("guests: cannot move {} into place: {e}", output.display())
        })
    } else {
        let _ = fs::remove_file(&tmp);
        Err(format!(
            "guests: `llvm-objcopy {} {} {}` failed ({}):\n{}",
            args.join(" "),
            input.display(),
            output.display(),
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr), 4000)
        ))
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = tmp_beside(path);
    fs::write(&tmp, bytes)
        .and_then(|_| fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = fs::remove_file(&tmp);
            format!("guests: cannot write {}: {e}", path.display())
        })
}

/// Reads a converted image back and checks it with [`check_elf`].
fn check_image(name: &str, path: &Path, class: ElfClass) -> Result<ElfInfo, String> {
    let bytes =
        fs::read(path).map_err(|e| format!("guests: cannot read {}: {e}", path.display()))?;
    check_elf(&bytes, class).map_err(|e| format!("guests: {name} ({}): {e}", path.display()))
}

/// The last `max` bytes of `s` (cut at a character boundary): enough of cargo's
/// stderr to show the error without flooding the caller.
fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Turns the flat code of a boot sector into the 512-byte sector: zero padding
/// up to offset 510, then the 0x55 0xAA signature a BIOS (and the hypervisor's
/// mode detection) looks for.
pub fn boot_sector(code: &[u8]) -> Result<Vec<u8>, String> {
    const SIGNATURE_AT: usize = 510;
    if code.is_empty() {
        return Err("boot sector code is empty".to_string());
    }
    if code.len() > SIGNATURE_AT {
        return Err(format!(
            "boot sector code is {} bytes; at most {SIGNATURE_AT} fit before the 0x55AA signature",
            code.len()
        ));
    }
    let mut sector = vec![0u8; 512];
    sector[..code.len()].copy_from_slice(code);
    sector[SIGNATURE_AT] = 0x55;
    sector[SIGNATURE_AT + 1] = 0xAA;
    Ok(sector)
}

/// ELF class to expect from [`check_elf`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfClass {
    /// ELFCLASS32, EM_386.
    Elf32,
    /// ELFCLASS64, EM_X86_64.
    Elf64,
}

/// What [`check_elf`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElfInfo {
    pub entry: u64,
    /// `(p_paddr, p_filesz, p_memsz)` of each PT_LOAD.
    pub loads: Vec<(u64, u64, u64)>,
}

const PT_LOAD: u32 = 1;
const ET_EXEC: u16 = 2;
const EM_386: u16 = 3;
const EM_X86_64: u16 = 62;

/// Checks that `bytes` is an executable the hypervisor's loader accepts for
/// `class`: little-endian ET_EXEC of the right class and machine, at least one
/// PT_LOAD, every PT_LOAD at physical >= [`MIN_ELF_LOAD_ADDR`] with its file bytes
/// inside the file and `p_filesz <= p_memsz`, and the entry inside a PT_LOAD.
pub fn check_elf(bytes: &[u8], class: ElfClass) -> Result<ElfInfo, String> {
    let u16_at = |off: usize| -> Result<u16, String> {
        bytes
            .get(off..off + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or_else(|| format!("truncated ELF (need byte {})", off + 2))
    };
    let u32_at = |off: usize| -> Result<u32, String> {
        bytes
            .get(off..off + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| format!("truncated ELF (need byte {})", off + 4))
    };
    let u64_at = |off: usize| -> Result<u64, String> {
        let lo = u64::from(u32_at(off)?);
        let hi = u64::from(u32_at(off + 4)?);
        Ok(lo | (hi << 32))
    };

    if bytes.get(0..4) != Some(b"\x7fELF") {
        return Err("not an ELF file (bad magic)".to_string());
    }
    let (want_class, want_machine, machine_name) = match class {
        ElfClass::Elf32 => (1u8, EM_386, "EM_386"),
        ElfClass::Elf64 => (2u8, EM_X86_64, "EM_X86_64"),
    };
    if bytes.get(4) != Some(&want_class) {
        return Err(format!(
            "EI_CLASS is {:?}, expected {want_class}",
            bytes.get(4)
        ));
    }
    if bytes.get(5) != Some(&1) {
        return Err("not little-endian (EI_DATA != 1)".to_string());
    }
    let e_type = u16_at(16)?;
    if e_type != ET_EXEC {
        return Err(format!(
            "e_type is {e_type}, expected ET_EXEC (2): linked as PIE?"
        ));
    }
    let machine = u16_at(18)?;
    if machine != want_machine {
        return Err(format!(
            "e_machine is {machine}, expected {machine_name} ({want_machine})"
        ));
    }

    // Header fields whose offsets differ between the classes.
    let (entry, phoff, phentsize, phnum) = match class {
        ElfClass::Elf32 => (
            u64::from(u32_at(24)?),
            u64::from(u32_at(28)?),
            u16_at(42)?,
            u16_at(44)?,
        ),
        ElfClass::Elf64 => (u64_at(24)?, u64_at(32)?, u16_at(54)?, u16_at(56)?),
    };
    let min_phentsize = match class {
        ElfClass::Elf32 => 32,
        ElfClass::Elf64 => 56,
    };
    if phentsize < min_phentsize {
        return Err(format!("e_phentsize {phentsize} < {min_phentsize}"));
    }

    let mut loads = Vec::new();
    for i in 0..u64::from(phnum) {
        let ph = usize::try_from(phoff + i * u64::from(phentsize))
            .map_err(|_| "program header offset overflows".to_string())?;
        if u32_at(ph)? != PT_LOAD {
            continue;
        }
        let (offset, paddr, filesz, memsz) = match class {
            ElfClass::Elf32 => (
                u64::from(u32_at(ph + 4)?),
                u64::from(u32_at(ph + 12)?),
                u64::from(u32_at(ph + 16)?),
                u64::from(u32_at(ph + 20)?),
            ),
            ElfClass::Elf64 => (
                u64_at(ph + 8)?,
                u64_at(ph + 24)?,
                u64_at(ph + 32)?,
                u64_at(ph + 40)?,
            ),
        };
        if paddr < MIN_ELF_LOAD_ADDR {
            return Err(format!(
                "PT_LOAD {i} at physical {paddr:#x}, below {MIN_ELF_LOAD_ADDR:#x}"
            ));
        }
        if filesz > memsz {
            return Err(format!(
                "PT_LOAD {i}: p_filesz {filesz:#x} > p_memsz {memsz:#x}"
            ));
        }
        if offset
            .checked_add(filesz)
            .is_none_or(|end| end > bytes.len() as u64)
        {
            return Err(format!(
                "PT_LOAD {i}: file bytes {offset:#x}+{filesz:#x} beyond the end of the file ({:#x})",
                bytes.len()
            ));
        }
        loads.push((paddr, filesz, memsz));
    }
    if loads.is_empty() {
        return Err("no PT_LOAD program header".to_string());
    }
    if !loads
        .iter()
        .any(|&(paddr, _, memsz)| (paddr..paddr + memsz).contains(&entry))
    {
        return Err(format!("entry {entry:#x} is outside every PT_LOAD"));
    }
    Ok(ElfInfo { entry, loads })
}

/// Multiboot v1 header magic (spec 3.1.2).
pub const MULTIBOOT_MAGIC: u32 = 0x1BAD_B002;
/// Loaders search the first 8192 bytes of the file for the header (spec 3.1.1).
pub const MULTIBOOT_SEARCH: usize = 8192;

/// What [`check_multiboot`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MultibootHeader {
    /// File offset of the magic.
    pub offset: usize,
    pub flags: u32,
}

/// Finds the Multiboot v1 header as a loader would (spec 3.1.1): the magic 4-byte
/// aligned with the whole 12-byte header inside the first 8192 bytes, and
/// `magic + flags + checksum == 0` (mod 2^32). Rejects a header that needs the
/// a.out kludge fields (flag 16) without room for them, or that asks for
/// requirement bits (0-15) other than 0-2, which no loader here provides.
pub fn check_multiboot(bytes: &[u8]) -> Result<MultibootHeader, String> {
    let u32_at = |off: usize| {
        u32::from_le_bytes([bytes[off], bytes[off + 1], bytes[off + 2], bytes[off + 3]])
    };
    let end = bytes.len().min(MULTIBOOT_SEARCH);
    let offset = (0..end.saturating_sub(11))
        .step_by(4)
        .find(|&off| {
            u32_at(off) == MULTIBOOT_MAGIC
                && MULTIBOOT_MAGIC
                    .wrapping_add(u32_at(off + 4))
                    .wrapping_add(u32_at(off + 8))
                    == 0
        })
        .ok_or_else(|| {
            format!(
                "no Multiboot header (magic {MULTIBOOT_MAGIC:#x}, valid checksum, 4-byte aligned) in the first {MULTIBOOT_SEARCH} bytes"
            )
        })?;
    let flags = u32_at(offset + 4);
    if flags & 0xFFF8 != 0 {
        return Err(format!(
            "Multiboot header at {offset:#x} has requirement flags {flags:#x} beyond bits 0-2"
        ));
    }
    if flags & (1 << 16) != 0 && offset + 32 > end {
        return Err(format!(
            "Multiboot header at {offset:#x} sets flag 16 but its address fields do not fit in the first {MULTIBOOT_SEARCH} bytes"
        ));
    }
    Ok(MultibootHeader { offset, flags })
}

/// The contents of the module the Multiboot VM set hands `mb32`: byte `i` is
/// `i % 251`, so a page-sized shift or a truncated copy changes the byte sum
/// `mb32` prints (251 is prime, no divisor of the page size).
pub fn multiboot_test_module() -> Vec<u8> {
    (0..MULTIBOOT_TEST_MODULE_LEN)
        .map(|i| (i % 251) as u8)
        .collect()
}

/// Size of [`multiboot_test_module`]: one page.
pub const MULTIBOOT_TEST_MODULE_LEN: usize = 4096;

/// Writes [`multiboot_test_module`] to `out_dir/mb32-module.bin` (left alone when
/// unchanged, so its timestamp means something) and returns the path.
pub fn write_multiboot_test_module(out_dir: &Path) -> Result<PathBuf, String> {
    fs::create_dir_all(out_dir)
        .map_err(|e| format!("guests: cannot create {}: {e}", out_dir.display()))?;
    let path = out_dir.join("mb32-module.bin");
    let data = multiboot_test_module();
    if fs::read(&path).ok().as_deref() != Some(&data[..]) {
        write(&path, &data)?;
    }
    Ok(path)
}

/// Sectors of the disk `blk64` is given.
pub const BLK64_DISK_SECTORS: usize = 128;

/// The contents of `blk64`'s disk: sector 0 starts with `hv-blk64 disk v1`, every
/// other byte mixes its sector number and offset (the guest's `pattern` checks the
/// same rule).
pub fn blk64_disk() -> Vec<u8> {
    const MAGIC: &[u8; 16] = b"hv-blk64 disk v1";
    (0..BLK64_DISK_SECTORS * 512)
        .map(|k| {
            if k < MAGIC.len() {
                MAGIC[k]
            } else {
                ((k / 512) as u8).wrapping_mul(31) ^ (k % 512) as u8
            }
        })
        .collect()
}

/// Writes `blk64`'s disk file into `out_dir` (left alone when unchanged).
pub fn write_blk64_disk(out_dir: &Path) -> Result<PathBuf, String> {
    fs::create_dir_all(out_dir)
        .map_err(|e| format!("guests: cannot create {}: {e}", out_dir.display()))?;
    let path = out_dir.join("blk64-disk.img");
    let data = blk64_disk();
    if fs::read(&path).ok().as_deref() != Some(&data[..]) {
        write(&path, &data)?;
    }
    Ok(path)
}

/// Writes (or keeps) `<out_dir>/<name>.img`: `bytes` zero bytes, for a blank disk.
pub fn write_blank_disk(out_dir: &Path, name: &str, bytes: usize) -> Result<PathBuf, String> {
    fs::create_dir_all(out_dir)
        .map_err(|e| format!("guests: cannot create {}: {e}", out_dir.display()))?;
    let path = out_dir.join(format!("{name}.img"));
    let data = vec![0u8; bytes];
    if fs::read(&path).ok().as_deref() != Some(&data[..]) {
        write(&path, &data)?;
    }
    Ok(path)
}

/// The value of the string field `key` in one line of cargo's JSON output, or
/// `None` when absent or not a string (e.g. `"executable":null`).
///
/// Cargo's messages are one JSON object per line and the fields we need
/// (`reason`, `executable`) are top-level strings; this finds the first
/// `"key":"..."` and unescapes it, which is enough for those messages without a
/// JSON dependency.
fn json_string_field(line: &str, key: &str) -> Option<String> {
    let pattern = format!("\"{key}\":\"");
    let start = line.find(&pattern)? + pattern.len();
    let mut value = String::new();
    let mut chars = line[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(value),
            '\\' => match chars.next()? {
                'n' => value.push('\n'),
                't' => value.push('\t'),
                'r' => value.push('\r'),
                'b' => value.push('\u{8}'),
                'f' => value.push('\u{c}'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    value.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                other => value.push(other), // \" \\ \/
            },
            c => value.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_sector_is_padded_and_signed() {
        let sector = boot_sector(&[0xfa, 0xf4]).unwrap();
        assert_eq!(sector.len(), 512);
        assert_eq!(&sector[..2], &[0xfa, 0xf4]);
        assert!(sector[2..510].iter().all(|&b| b == 0));
        assert_eq!(&sector[510..], &[0x55, 0xaa]);
    }

    #[test]
    fn boot_sector_size_limits() {
        assert!(boot_sector(&[0x90; 510]).is_ok());
        let err = boot_sector(&[0x90; 511]).unwrap_err();
        assert!(err.contains("511 bytes"), "{err}");
        assert!(boot_sector(&[]).is_err());
    }

    /// A minimal ELF with one PT_LOAD, laid out like the converted guests.
    fn elf(class: ElfClass, machine: u16, e_type: u16, entry: u64, paddr: u64) -> Vec<u8> {
        let mut b = vec![0u8; 0x200];
        b[..4].copy_from_slice(b"\x7fELF");
        b[5] = 1;
        b[6] = 1;
        b[16..18].copy_from_slice(&e_type.to_le_bytes());
        b[18..20].copy_from_slice(&machine.to_le_bytes());
        match class {
            ElfClass::Elf32 => {
                b[4] = 1;
                b[24..28].copy_from_slice(&(entry as u32).to_le_bytes());
                b[28..32].copy_from_slice(&52u32.to_le_bytes()); // e_phoff
                b[40..42].copy_from_slice(&52u16.to_le_bytes()); // e_ehsize
                b[42..44].copy_from_slice(&32u16.to_le_bytes()); // e_phentsize
                b[44..46].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
                let ph = 52;
                b[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
                b[ph + 4..ph + 8].copy_from_slice(&0x100u32.to_le_bytes()); // p_offset
                b[ph + 8..ph + 12].copy_from_slice(&(paddr as u32).to_le_bytes());
                b[ph + 12..ph + 16].copy_from_slice(&(paddr as u32).to_le_bytes());
                b[ph + 16..ph + 20].copy_from_slice(&0x100u32.to_le_bytes()); // p_filesz
                b[ph + 20..ph + 24].copy_from_slice(&0x1000u32.to_le_bytes()); // p_memsz
            }
            ElfClass::Elf64 => {
                b[4] = 2;
                b[24..32].copy_from_slice(&entry.to_le_bytes());
                b[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
                b[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
                b[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
                b[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
                let ph = 64;
                b[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
                b[ph + 8..ph + 16].copy_from_slice(&0x100u64.to_le_bytes()); // p_offset
                b[ph + 16..ph + 24].copy_from_slice(&paddr.to_le_bytes());
                b[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
                b[ph + 32..ph + 40].copy_from_slice(&0x100u64.to_le_bytes()); // p_filesz
                b[ph + 40..ph + 48].copy_from_slice(&0x1000u64.to_le_bytes()); // p_memsz
            }
        }
        b
    }

    #[test]
    fn elf32_header_check() {
        let good = elf(ElfClass::Elf32, EM_386, ET_EXEC, 0x100000, 0x100000);
        let info = check_elf(&good, ElfClass::Elf32).unwrap();
        assert_eq!(info.entry, 0x100000);
        assert_eq!(info.loads, vec![(0x100000, 0x100, 0x1000)]);

        // Wrong class, machine, type; load too low; entry outside the segment.
        assert!(check_elf(&good, ElfClass::Elf64).is_err());
        let x86_64 = elf(ElfClass::Elf32, EM_X86_64, ET_EXEC, 0x100000, 0x100000);
        assert!(check_elf(&x86_64, ElfClass::Elf32)
            .unwrap_err()
            .contains("EM_386"));
        let pie = elf(ElfClass::Elf32, EM_386, 3, 0x100000, 0x100000);
        assert!(check_elf(&pie, ElfClass::Elf32)
            .unwrap_err()
            .contains("ET_EXEC"));
        let low = elf(ElfClass::Elf32, EM_386, ET_EXEC, 0x7c00, 0x7c00);
        assert!(check_elf(&low, ElfClass::Elf32)
            .unwrap_err()
            .contains("below"));
        let stray = elf(ElfClass::Elf32, EM_386, ET_EXEC, 0x200000, 0x100000);
        assert!(check_elf(&stray, ElfClass::Elf32)
            .unwrap_err()
            .contains("entry"));
        assert!(check_elf(&good[..60], ElfClass::Elf32).is_err());
        assert!(check_elf(b"MZ\x90\x00", ElfClass::Elf32).is_err());
    }

    #[test]
    fn elf64_header_check() {
        let good = elf(ElfClass::Elf64, EM_X86_64, ET_EXEC, 0x100010, 0x100000);
        let info = check_elf(&good, ElfClass::Elf64).unwrap();
        assert_eq!(info.entry, 0x100010);
        assert!(check_elf(&good, ElfClass::Elf32).is_err());
        let i386 = elf(ElfClass::Elf64, EM_386, ET_EXEC, 0x100000, 0x100000);
        assert!(check_elf(&i386, ElfClass::Elf64).is_err());
    }

    /// A file with a Multiboot header of `flags` at `offset` (checksum `fix`ed or
    /// off by one).
    fn multiboot(offset: usize, flags: u32, fix: bool) -> Vec<u8> {
        let mut b = vec![0u8; 0x3000];
        let sum = 0u32
            .wrapping_sub(MULTIBOOT_MAGIC)
            .wrapping_sub(flags)
            .wrapping_add(u32::from(!fix));
        b[offset..offset + 4].copy_from_slice(&MULTIBOOT_MAGIC.to_le_bytes());
        b[offset + 4..offset + 8].copy_from_slice(&flags.to_le_bytes());
        b[offset + 8..offset + 12].copy_from_slice(&sum.to_le_bytes());
        b
    }

    #[test]
    fn multiboot_header_check() {
        assert_eq!(
            check_multiboot(&multiboot(0x1000, 3, true)),
            Ok(MultibootHeader {
                offset: 0x1000,
                flags: 3
            })
        );
        // The last place a whole header fits.
        assert!(check_multiboot(&multiboot(8192 - 12, 3, true)).is_ok());
        // Too late, misaligned, bad checksum, unknown requirements, truncated file.
        assert!(check_multiboot(&multiboot(8192 - 8, 3, true)).is_err());
        assert!(check_multiboot(&multiboot(0x1002, 3, true)).is_err());
        assert!(check_multiboot(&multiboot(0x1000, 3, false))
            .unwrap_err()
            .contains("no Multiboot header"));
        assert!(check_multiboot(&multiboot(0x1000, 1 << 3, true))
            .unwrap_err()
            .contains("requirement"));
        assert!(check_multiboot(&multiboot(8192 - 16, 1 << 16, true)).is_err());
        assert!(check_multiboot(&[0x02, 0xb0, 0xad]).is_err());
        // A stray magic without a checksum before the real header is skipped.
        let mut b = multiboot(0x1000, 3, true);
        b[0x100..0x104].copy_from_slice(&MULTIBOOT_MAGIC.to_le_bytes());
        assert_eq!(check_multiboot(&b).unwrap().offset, 0x1000);
    }

    #[test]
    fn multiboot_module_pattern() {
        let m = multiboot_test_module();
        assert_eq!(m.len(), 4096);
        assert_eq!(
            (m[0], m[250], m[251], m[4095]),
            (0, 250, 0, (4095 % 251) as u8)
        );
        // The sum mb32 prints for it (and the multiboot test expects).
        assert_eq!(m.iter().map(|&b| u32::from(b)).sum::<u32>(), 505_160);
    }

    #[test]
    fn cargo_json_fields() {
        let line = r#"{"reason":"compiler-artifact","package_id":"path+file:///w/guests#0.1.0","target":{"kind":["bin"],"name":"real16"},"executable":"/w/target/x86_64-unknown-none/release/real16","fresh":true}"#;
        assert_eq!(
            json_string_field(line, "reason").as_deref(),
            Some("compiler-artifact")
        );
        assert_eq!(
            json_string_field(line, "executable").as_deref(),
            Some("/w/target/x86_64-unknown-none/release/real16")
        );
        let lib = r#"{"reason":"compiler-artifact","executable":null}"#;
        assert_eq!(json_string_field(lib, "executable"), None);
        let escaped = r#"{"executable":"C:\\t\"x\u0041"}"#;
        assert_eq!(
            json_string_field(escaped, "executable").as_deref(),
            Some("C:\\t\"xA")
        );
    }

    #[test]
    fn tail_keeps_the_end() {
        assert_eq!(tail("abcdef", 10), "abcdef");
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(tail("aé", 1), "");
    }

    /// The real build: `cargo test -p xtask guests -- --ignored`. Needs the pinned
    /// toolchain with llvm-tools-preview and the x86_64-unknown-none target.
    #[test]
    #[ignore]
    fn build_all_guests() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let out = env::temp_dir().join(format!("guests-build-test-{}", std::process::id()));
        let images = build_guests(root, &out).unwrap();
        let names: Vec<&str> = images.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            names,
            ["real16", "prot32", "hello64", "msr64", "ports64", "oob64", "spin64", "triple64"]
        );
        let sector = fs::read(&images[0].path).unwrap();
        assert_eq!(sector.len(), 512);
        assert_eq!(&sector[510..], &[0x55, 0xaa]);
        let prot32 = check_elf(&fs::read(&images[1].path).unwrap(), ElfClass::Elf32).unwrap();
        assert_eq!(prot32.entry, 0x100000);
        for image in &images[2..] {
            let info = check_elf(&fs::read(&image.path).unwrap(), ElfClass::Elf64).unwrap();
            assert_eq!(info.entry, 0x100000, "{}", image.name);
        }
        // The guests outside the tiny set come after it.
        let all = super::build_all_guests(root, &out).unwrap();
        assert_eq!(all[..images.len()], images[..]);
        let mb32 = fs::read(&find_image(&all, "mb32").unwrap().path).unwrap();
        assert!(check_elf(&mb32, ElfClass::Elf32).is_ok());
        assert_eq!(check_multiboot(&mb32).unwrap().flags, MB32_HEADER_FLAGS);
        for name in [
            "bench64",
            "smp64",
            "ipistorm64",
            "dbloop64",
            "dr64",
            "insn64",
            "reset64",
            "crcheck64",
            "blk64",
            "vq64",
            "timer64",
        ] {
            let image = fs::read(&find_image(&all, name).unwrap().path).unwrap();
            assert_eq!(
                check_elf(&image, ElfClass::Elf64).unwrap().entry,
                0x100000,
                "{name}"
            );
        }
        fs::remove_dir_all(&out).unwrap();
    }
}
