//! VM descriptions in a TOML file (`vms.example.toml` at the workspace root shows
//! every key), validated on the host before anything is bundled, and the same
//! validation for a single VM given on the command line (`--kernel`, `--initrd`,
//! `--append`, `--memory`).
//!
//! Everything that can be checked here is, because a mistake found by the
//! hypervisor costs a build and a boot, and its report ("VM linux: cannot load")
//! cannot point into the file. Every error names `<file>:<line>:<col>: <key>` and
//! says what is wrong. Images are inspected too: a Linux kernel must be a bzImage
//! that can be entered in 64-bit mode, a Multiboot kernel must carry a valid header,
//! a tiny guest must be a boot sector or an ELF executable, and the VM's memory must
//! roughly hold what is loaded into it.
//!
//! The TOML is parsed with `toml_edit`'s `Document`, which keeps the byte span of
//! every key and value. Serde-based parsing (`toml` + derive) gives one span per
//! error at best and stops at unknown keys without knowing which keys were
//! expected, so it cannot suggest the closest one; walking the spanned document by
//! hand gives exact positions for every kind of error below.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use bundle::{ImageFormat, CMDLINE_MAX, MODULES_MAX, NAME_MAX};
use toml_edit::{Item, TableLike, Value};

use crate::vms::{Config, DiskDef, ModuleDef, PartitionUse, VmDef};

mod console;
mod management;
mod network;
#[cfg(test)]
mod scratch;
mod storage;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
/// Smallest VM: the real-mode area alone is 1 MiB.
pub const MEMORY_MIN: u64 = MIB;
/// Largest VM: well beyond any host this runs on for now, and it keeps KiB counts
/// in the bundle's u32.
pub const MEMORY_MAX: u64 = 64 * GIB;
use bundle::MAX_VCPUS;

/// The keys of a `[[vm]]` table, in the order the example file uses.
const VM_KEYS: &[&str] = &[
    "name",
    "memory",
    "vcpus",
    "cpus",
    "kernel",
    "format",
    "cmdline",
    "initrd",
    "modules",
    "background",
    "run_limit_ms",
    "bench_hypercalls",
    "on_reset",
    "on_crash",
    "on_unmapped",
    "balloon",
    "disk",
    "nics",
];
const MODULE_KEYS: &[&str] = &["path", "cmdline"];
const DISK_KEYS: &[&str] = &["file", "partition", "read_only"];
/// Top-level keys.
const TOP_KEYS: &[&str] = &["vm", "storage", "network", "console", "management"];
/// Names people bring from other tools (QEMU, libvirt, Firecracker), mapped to ours.
const ALIASES: &[(&str, &str)] = &[
    ("image", "kernel"),
    ("bzimage", "kernel"),
    ("append", "cmdline"),
    ("args", "cmdline"),
    ("bootargs", "cmdline"),
    ("initramfs", "initrd"),
    ("mem", "memory"),
    ("ram", "memory"),
    ("memory_mib", "memory"),
    ("mem_size_mib", "memory"),
    ("vcpu_count", "vcpus"),
    ("smp", "vcpus"),
    ("module", "modules"),
    ("drive", "disk"),
    ("blk", "disk"),
    ("vms", "vm"),
    ("nic", "nics"),
    ("net", "nics"),
    ("networks", "network"),
];

/// A problem with a VM description, located as precisely as possible.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file as given, or `command line` for [`single_vm`].
    pub file: String,
    /// 1-based line and column (in characters), where known.
    pub pos: Option<(usize, usize)>,
    /// The key at fault (`memory`, `modules[1].path`, or `--initrd` on the
    /// command line).
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.pos {
            Some((line, col)) => write!(
                f,
                "{}:{line}:{col}: {}: {}",
                self.file, self.key, self.message
            ),
            None => write!(f, "{}: {}: {}", self.file, self.key, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

impl From<ConfigError> for String {
    fn from(e: ConfigError) -> String {
        e.to_string()
    }
}

/// Where something was written: the position and the key's name.
#[derive(Clone, Debug, Default)]
struct Loc {
    pos: Option<(usize, usize)>,
    key: String,
}

/// The file being read: its name for messages, its text for positions, and the
/// directory relative paths resolve against.
struct Source<'a> {
    label: String,
    text: &'a str,
    dir: PathBuf,
    /// Processors of the machine the VMs will run on, when known (`--cpus`): `cpus`
    /// may name only those.
    machine_cpus: Option<u32>,
}

impl Source<'_> {
    fn loc(&self, span: Option<Range<usize>>, key: &str) -> Loc {
        Loc {
            pos: span.map(|s| line_col(self.text, s.start)),
            key: key.to_string(),
        }
    }

    /// Where a table entry named `name` is (its key) and where its value starts
    /// (`value_span`; the key when there is none, e.g. for a table).
    fn entry_locs(
        &self,
        key_span: Option<Range<usize>>,
        value_span: Option<Range<usize>>,
        name: &str,
    ) -> (Loc, Loc) {
        let key_loc = self.loc(key_span, name);
        let value_loc = match value_span {
            Some(s) => self.loc(Some(s), name),
            None => key_loc.clone(),
        };
        (key_loc, value_loc)
    }

    fn err(&self, loc: &Loc, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.label.clone(),
            pos: loc.pos,
            key: loc.key.clone(),
            message: message.into(),
        }
    }

    fn resolve(&self, path: &str) -> PathBuf {
        let p = Path::new(path);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }
}

/// 1-based line and character column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// "unknown key ..." with the closest known key, if one is close enough to be a
/// plausible typo, or the key another tool uses for the same thing.
fn unknown_key(key: &str, known: &[&str]) -> String {
    let lower = key.to_ascii_lowercase();
    let alias = ALIASES
        .iter()
        .find(|(a, k)| *a == lower && known.contains(k))
        .map(|(_, k)| *k);
    let close = known
        .iter()
        .map(|k| (levenshtein(&lower, k), *k))
        .min()
        .filter(|(d, k)| *d <= (k.len() / 3).max(1) || (*d <= 2 && lower.len() > 2))
        .map(|(_, k)| k)
        // An abbreviation (`cmd`, `mod`): the known key it starts.
        .or_else(|| {
            known
                .iter()
                .find(|k| lower.len() >= 3 && k.starts_with(lower.as_str()))
                .copied()
        });
    let hint = match alias.or(close) {
        Some(k) => format!(" (did you mean `{k}`?)"),
        None => String::new(),
    };
    format!(
        "unknown key `{key}`{hint}; known keys: {}",
        known.join(", ")
    )
}

fn type_error(expected: &str, item: &Item) -> String {
    format!("expected {expected}, found {}", article(item.type_name()))
}

fn article(type_name: &str) -> String {
    let an = matches!(type_name.as_bytes().first(), Some(b'a' | b'i'));
    format!("{} {type_name}", if an { "an" } else { "a" })
}

/// Parses a memory size: an integer number of MiB, or a string with a binary suffix
/// (`"256M"`, `"512K"`, `"2G"`; `KiB`/`MiB`/`GiB` and `KB`/`MB`/`GB` mean the same;
/// no suffix means MiB). Returns bytes, range-checked.
pub fn parse_memory(text: &str) -> Result<u64, String> {
    let bytes = parse_size(text)?;
    check_memory(bytes)?;
    Ok(bytes)
}

/// [`parse_memory`]'s syntax without its range (what `[storage]` sizes use too):
/// bytes, or why the text is no size.
fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.len() - t.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let (number, suffix) = t.split_at(digits);
    if number.is_empty() {
        return Err(format!(
            "{text:?} is not a size: write an integer number of MiB or a string such as \"256M\""
        ));
    }
    let unit = match suffix.trim().to_ascii_uppercase().as_str() {
        "" | "M" | "MB" | "MIB" => MIB,
        "K" | "KB" | "KIB" => KIB,
        "G" | "GB" | "GIB" => GIB,
        other => {
            return Err(format!(
                "bad size suffix {other:?} in {text:?}: use K, M or G (binary units), or no suffix for MiB"
            ))
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| format!("{text:?} is too large"))
}

fn check_memory(bytes: u64) -> Result<(), String> {
    if bytes < MEMORY_MIN {
        Err(format!(
            "{} is too small: a VM needs at least 1 MiB",
            show_size(bytes)
        ))
    } else if bytes > MEMORY_MAX {
        Err(format!("{} is too large: at most 64 GiB", show_size(bytes)))
    } else if !bytes.is_multiple_of(4 * KIB) {
        Err(format!(
            "{} is not a whole number of 4 KiB pages",
            show_size(bytes)
        ))
    } else {
        Ok(())
    }
}

fn show_size(bytes: u64) -> String {
    if bytes >= GIB && bytes.is_multiple_of(GIB) {
        format!("{} GiB", bytes / GIB)
    } else if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

/// A VM as written, before cross-checks: each value with where it came from.
#[derive(Default)]
struct RawVm {
    /// The `[[vm]]` header (or the first key), for errors about missing keys.
    at: Loc,
    name: Option<(String, Loc)>,
    memory: Option<(u64, Loc)>,
    vcpus: Option<(i64, Loc)>,
    cpus: Option<(Vec<u32>, Loc)>,
    kernel: Option<(PathBuf, Loc)>,
    /// The `kernel` path as written (before resolving it against the file's
    /// directory): what a Multiboot kernel is told its path is, as QEMU tells it.
    kernel_name: Option<String>,
    format: Option<(ImageFormat, Loc)>,
    cmdline: Option<(String, Loc)>,
    initrd: Option<(PathBuf, Loc)>,
    modules: Option<(Vec<(ModuleDef, Loc)>, Loc)>,
    background: bool,
    run_limit_ms: u32,
    bench_hypercalls: bool,
    on_reset: Option<bundle::Policy>,
    on_crash: Option<bundle::Policy>,
    unmapped_stops: bool,
    balloon: bool,
    /// The disk, and where its file was named.
    disk: Option<(DiskDef, Loc)>,
    /// Or a partition of `[storage]`: its name, read-only, and where it was named.
    partition: Option<(String, bool, Loc)>,
    /// Its NICs as written (checked against `[[network]]` by the caller).
    nics: Vec<network::RawNic>,
}

/// Reads and validates the VM descriptions in `path` (and its `[storage]`, which
/// this leaves out: see [`load_config`]).
pub fn load(path: &Path) -> Result<Vec<VmDef>, ConfigError> {
    load_for_machine(path, None).map(|c| c.vms)
}

/// Reads and validates the VMs, the persistent disk and the console in `path`.
pub fn load_config(path: &Path) -> Result<Config, ConfigError> {
    load_for_machine(path, None)
}

/// [`load_config`], for a machine with `machine_cpus` processors: a `cpus` list
/// naming a processor it does not have is an error at that element.
pub fn load_for_machine(path: &Path, machine_cpus: Option<u32>) -> Result<Config, ConfigError> {
    let label = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: label.clone(),
        pos: None,
        key: "file".into(),
        message: format!("cannot read the VM config: {e}"),
    })?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    parse(&Source {
        label,
        text: &text,
        dir,
        machine_cpus,
    })
}

/// Validates config `text` as [`load`] does a file named `label` in `dir` (relative
/// paths resolve against `dir`). The fuzz target feeds it arbitrary text.
pub fn parse_text(label: &str, text: &str, dir: &Path) -> Result<Vec<VmDef>, ConfigError> {
    parse(&Source {
        label: label.to_string(),
        text,
        dir: dir.to_path_buf(),
        machine_cpus: None,
    })
    .map(|c| c.vms)
}

/// Parses config text; `dir` resolves relative paths. (The tests use this directly.)
fn parse(src: &Source) -> Result<Config, ConfigError> {
    let doc = toml_edit::Document::parse(src.text).map_err(|e| {
        let loc = src.loc(e.span(), "syntax");
        src.err(&loc, format!("invalid TOML: {}", e.message().trim()))
    })?;
    let top = doc.as_table();
    for (key, _) in top.iter() {
        if !TOP_KEYS.contains(&key) {
            let loc = src.loc(top.key(key).and_then(|k| k.span()), key);
            return Err(src.err(&loc, unknown_key(key, TOP_KEYS)));
        }
    }
    let storage = match top.get("storage") {
        Some(item) => {
            let loc = src.loc(top.key("storage").and_then(|k| k.span()), "storage");
            Some(storage::parse(src, item, &loc)?)
        }
        None => None,
    };
    let console = match top.get("console") {
        Some(item) => {
            let loc = src.loc(top.key("console").and_then(|k| k.span()), "console");
            Some(console::parse(src, item, &loc)?)
        }
        None => None,
    };
    let networks = match top.get("network") {
        Some(item) => {
            let loc = src.loc(top.key("network").and_then(|k| k.span()), "network");
            network::parse_networks(src, item, &loc)?
        }
        None => Vec::new(),
    };
    let management = match top.get("management") {
        Some(item) => {
            let loc = src.loc(top.key("management").and_then(|k| k.span()), "management");
            Some(management::parse(src, item, &loc)?)
        }
        None => None,
    };
    let Some(item) = top.get("vm") else {
        let loc = Loc {
            pos: Some((1, 1)),
            key: "vm".into(),
        };
        return Err(src.err(
            &loc,
            "no [[vm]] table: describe at least one VM (see vms.example.toml)",
        ));
    };
    let vm_loc = src.loc(top.key("vm").and_then(|k| k.span()), "vm");
    let tables = table_list(src, item, &vm_loc, "[[vm]] tables")?;
    if tables.is_empty() {
        return Err(src.err(&vm_loc, "no VMs: describe at least one [[vm]]"));
    }
    let mut vms: Vec<VmDef> = Vec::new();
    let mut names: Vec<(String, Loc)> = Vec::new();
    // Each VM's partition as written, for the cross-checks against [storage].
    let mut uses: Vec<Option<(String, bool, Loc)>> = Vec::new();
    let mut nics: Vec<Vec<network::RawNic>> = Vec::new();
    for (table, span) in tables {
        let raw = parse_vm(src, table, span)?;
        uses.push(raw.partition.clone());
        nics.push(raw.nics.clone());
        if let Some((name, loc)) = &raw.name {
            if let Some((_, first)) = names.iter().find(|(n, _)| n == name) {
                let at = first
                    .pos
                    .map(|(l, _)| format!(" (first used on line {l})"))
                    .unwrap_or_default();
                return Err(src.err(loc, format!("duplicate VM name {name:?}{at}")));
            }
            names.push((name.clone(), loc.clone()));
        }
        vms.push(resolve(src, raw, None)?);
    }
    if let Some(st) = &storage {
        storage::check_uses(src, st, &mut vms, &uses)?;
    } else if let Some((name, _, loc)) = uses.iter().flatten().next() {
        return Err(src.err(
            loc,
            format!("partition {name:?}: there is no [storage] table to take it from"),
        ));
    }
    network::check_nics(src, &networks, &mut vms, &nics)?;
    let names: Vec<&str> = networks.iter().map(|n| n.name.as_str()).collect();
    let management = management
        .map(|m| management::check(src, &m, &names, &vms))
        .transpose()?;
    Ok(Config {
        vms,
        storage,
        console,
        management,
    })
}

/// A table with its span in the file.
type Spanned<'a> = (&'a dyn TableLike, Option<Range<usize>>);

/// The tables of an array of tables (`[[vm]]`) or an array of inline tables
/// (`vm = [{...}]`), each with its span.
fn table_list<'a>(
    src: &Source,
    item: &'a Item,
    loc: &Loc,
    what: &str,
) -> Result<Vec<Spanned<'a>>, ConfigError> {
    match item {
        Item::ArrayOfTables(aot) => Ok(aot
            .iter()
            .map(|t| (t as &dyn TableLike, t.span()))
            .collect()),
        Item::Value(Value::Array(array)) => array
            .iter()
            .map(|v| match v {
                Value::InlineTable(t) => Ok((t as &dyn TableLike, v.span())),
                other => Err(src.err(
                    &src.loc(other.span(), &loc.key),
                    format!(
                        "expected {what}, found an array holding {}",
                        article(other.type_name())
                    ),
                )),
            })
            .collect(),
        Item::Table(_) => Err(src.err(
            loc,
            format!(
                "expected {what}: write [[{0}]] (double brackets), not [{0}]",
                loc.key
            ),
        )),
        other => Err(src.err(loc, type_error(what, other))),
    }
}

/// The host processors a VM may run on: a non-empty array of distinct processor
/// numbers (0 to 63), each one the machine has when that is known.
fn parse_cpus(src: &Source, item: &Item, loc: &Loc) -> Result<Vec<u32>, ConfigError> {
    const WHAT: &str = "an array of host processor numbers, e.g. [0, 1]";
    let Some(array) = item.as_array() else {
        return Err(src.err(loc, type_error(WHAT, item)));
    };
    if array.is_empty() {
        return Err(src.err(
            loc,
            "an empty list: name at least one processor (or leave `cpus` out: any processor)",
        ));
    }
    let mut cpus = Vec::new();
    for (i, v) in array.iter().enumerate() {
        let at = src.loc(v.span(), &format!("cpus[{i}]"));
        let n = v.as_integer().ok_or_else(|| {
            src.err(
                &at,
                format!(
                    "expected a processor number, found {}",
                    article(v.type_name())
                ),
            )
        })?;
        if !(0..64).contains(&n) {
            return Err(src.err(&at, format!("processor {n} is out of range: 0 to 63")));
        }
        let n = n as u32;
        if let Some(m) = src.machine_cpus {
            if n >= m {
                return Err(src.err(
                    &at,
                    format!(
                        "processor {n} does not exist: the machine has {m} (0 to {}; more with --cpus)",
                        m - 1
                    ),
                ));
            }
        }
        if cpus.contains(&n) {
            return Err(src.err(&at, format!("processor {n} is listed twice")));
        }
        cpus.push(n);
    }
    Ok(cpus)
}

fn get_str<'a>(src: &Source, item: &'a Item, loc: &Loc) -> Result<&'a str, ConfigError> {
    item.as_str()
        .ok_or_else(|| src.err(loc, type_error("a string", item)))
}

fn parse_vm(
    src: &Source,
    table: &dyn TableLike,
    span: Option<Range<usize>>,
) -> Result<RawVm, ConfigError> {
    let mut vm = RawVm {
        at: src.loc(span, "vm"),
        ..RawVm::default()
    };
    for (key, item) in table.iter() {
        let key_loc = src.loc(table.key(key).and_then(|k| k.span()), key);
        // Values are reported where the value starts; tables where their key is.
        let loc = match item.span() {
            Some(s) if item.is_value() => src.loc(Some(s), key),
            _ => key_loc.clone(),
        };
        if vm.at.pos.is_none() {
            vm.at.pos = key_loc.pos;
        }
        match key {
            "name" => vm.name = Some((get_str(src, item, &loc)?.to_string(), loc)),
            "memory" => {
                let bytes = match item {
                    Item::Value(Value::Integer(i)) => {
                        let mib = *i.value();
                        if mib <= 0 {
                            return Err(src.err(&loc, format!("{mib} MiB: must be positive")));
                        }
                        let bytes = (mib as u64).saturating_mul(MIB);
                        check_memory(bytes).map_err(|m| src.err(&loc, m))?;
                        bytes
                    }
                    Item::Value(Value::String(s)) => {
                        parse_memory(s.value()).map_err(|m| src.err(&loc, m))?
                    }
                    other => {
                        return Err(src.err(
                            &loc,
                            type_error(
                                "an integer number of MiB or a string such as \"256M\"",
                                other,
                            ),
                        ))
                    }
                };
                vm.memory = Some((bytes, loc));
            }
            "vcpus" => {
                let n = item
                    .as_integer()
                    .ok_or_else(|| src.err(&loc, type_error("an integer", item)))?;
                vm.vcpus = Some((n, loc));
            }
            "cpus" => vm.cpus = Some((parse_cpus(src, item, &loc)?, loc)),
            "kernel" => {
                let name = get_str(src, item, &loc)?;
                vm.kernel_name = Some(name.to_string());
                vm.kernel = Some((src.resolve(name), loc));
            }
            "initrd" => {
                let path = src.resolve(get_str(src, item, &loc)?);
                vm.initrd = Some((path, loc));
            }
            "format" => {
                let name = get_str(src, item, &loc)?;
                let format = ImageFormat::from_name(name).ok_or_else(|| {
                    src.err(
                        &loc,
                        format!("unknown format {name:?}: use one of auto, tiny, multiboot, linux"),
                    )
                })?;
                vm.format = Some((format, loc));
            }
            "cmdline" => vm.cmdline = Some((get_str(src, item, &loc)?.to_string(), loc)),
            "background" => {
                vm.background = item
                    .as_bool()
                    .ok_or_else(|| src.err(&loc, type_error("true or false", item)))?;
            }
            "on_reset" | "on_crash" => {
                let policy = match get_str(src, item, &loc)? {
                    "restart" => bundle::Policy::Restart,
                    "stop" => bundle::Policy::Stop,
                    other => {
                        return Err(src.err(
                            &loc,
                            format!("{other:?} is not a policy: use \"restart\" or \"stop\""),
                        ))
                    }
                };
                if key == "on_reset" {
                    vm.on_reset = Some(policy);
                } else {
                    vm.on_crash = Some(policy);
                }
            }
            "on_unmapped" => {
                vm.unmapped_stops = match get_str(src, item, &loc)? {
                    "ignore" => false,
                    "stop" => true,
                    other => {
                        return Err(src.err(
                            &loc,
                            format!("{other:?} is not a policy: use \"ignore\" or \"stop\""),
                        ))
                    }
                };
            }
            "balloon" => {
                vm.balloon = item
                    .as_bool()
                    .ok_or_else(|| src.err(&loc, type_error("true or false", item)))?;
            }
            "bench_hypercalls" => {
                vm.bench_hypercalls = item
                    .as_bool()
                    .ok_or_else(|| src.err(&loc, type_error("true or false", item)))?;
            }
            "run_limit_ms" => {
                let n = item
                    .as_integer()
                    .ok_or_else(|| src.err(&loc, type_error("an integer", item)))?;
                vm.run_limit_ms = u32::try_from(n).map_err(|_| {
                    src.err(
                        &loc,
                        format!("{n} is out of range: 0 (no limit) to {}", u32::MAX),
                    )
                })?;
            }
            "modules" => vm.modules = Some((parse_modules(src, item, &key_loc)?, loc)),
            "disk" => match parse_disk(src, item, &loc)? {
                DiskChoice::File(def, at) => vm.disk = Some((def, at)),
                DiskChoice::Partition(name, read_only, at) => {
                    vm.partition = Some((name, read_only, at))
                }
            },
            "nics" => vm.nics = network::parse_nics(src, item, &loc)?,
            other => return Err(src.err(&key_loc, unknown_key(other, VM_KEYS))),
        }
    }
    Ok(vm)
}

/// `modules = [ { path = "m.bin", cmdline = "arg" }, "plain.bin" ]` or
/// `[[vm.modules]]` tables.
fn parse_modules(
    src: &Source,
    item: &Item,
    loc: &Loc,
) -> Result<Vec<(ModuleDef, Loc)>, ConfigError> {
    // Each module: a table, or a plain string path; with its span.
    type Entry<'a> = (
        Option<&'a dyn TableLike>,
        Option<&'a str>,
        Option<Range<usize>>,
    );
    let entries: Vec<Entry> = match item {
        Item::ArrayOfTables(aot) => aot
            .iter()
            .map(|t| (Some(t as &dyn TableLike), None, t.span()))
            .collect(),
        Item::Value(Value::Array(array)) => {
            let mut out = Vec::new();
            for (i, v) in array.iter().enumerate() {
                match v {
                    Value::InlineTable(t) => out.push((Some(t as &dyn TableLike), None, v.span())),
                    Value::String(s) => out.push((None, Some(s.value().as_str()), v.span())),
                    other => {
                        return Err(src.err(
                            &src.loc(v.span(), &format!("modules[{i}]")),
                            format!(
                                "expected a module (a string path or {{ path = \"...\", cmdline = \"...\" }}), found {}",
                                article(other.type_name())
                            ),
                        ))
                    }
                }
            }
            out
        }
        other => {
            return Err(src.err(
                loc,
                type_error(
                    "an array of modules ({ path = \"...\", cmdline = \"...\" })",
                    other,
                ),
            ))
        }
    };
    let mut modules = Vec::new();
    for (i, (table, plain, span)) in entries.into_iter().enumerate() {
        let prefix = format!("modules[{i}]");
        let Some(table) = table else {
            // A plain string: the path, with no command line.
            modules.push((
                ModuleDef {
                    path: src.resolve(plain.unwrap_or("")),
                    cmdline: String::new(),
                },
                src.loc(span, &prefix),
            ));
            continue;
        };
        let mut path = None;
        let mut cmdline = String::new();
        for (key, value) in table.iter() {
            let (key_loc, value_loc) = src.entry_locs(
                table.key(key).and_then(|k| k.span()),
                value.span(),
                &format!("{prefix}.{key}"),
            );
            match key {
                "path" => {
                    path = Some((src.resolve(get_str(src, value, &value_loc)?), value_loc));
                }
                "cmdline" => {
                    let s = get_str(src, value, &value_loc)?;
                    if s.len() > CMDLINE_MAX {
                        return Err(src.err(
                            &value_loc,
                            format!("{} bytes: at most {CMDLINE_MAX}", s.len()),
                        ));
                    }
                    cmdline = s.to_string();
                }
                other => {
                    return Err(src.err(&key_loc, unknown_key(other, MODULE_KEYS)));
                }
            }
        }
        let (path, at) = path.ok_or_else(|| {
            src.err(
                &src.loc(span, &format!("{prefix}.path")),
                "missing key `path` (the module's file)",
            )
        })?;
        modules.push((ModuleDef { path, cmdline }, at));
    }
    Ok(modules)
}

/// A VM's disk as written: RAM-backed from a file, or a partition of `[storage]`
/// (its name, read-only), each with where it was named.
enum DiskChoice {
    File(DiskDef, Loc),
    Partition(String, bool, Loc),
}

/// `disk = "disk.img"`, `disk = { file = "disk.img", read_only = true }` or
/// `disk = { partition = "data", read_only = true }` (or a `[vm.disk]` table).
fn parse_disk(src: &Source, item: &Item, loc: &Loc) -> Result<DiskChoice, ConfigError> {
    const WHAT: &str =
        "a file name, { file = \"...\", read_only = false } or { partition = \"...\" }";
    if let Some(path) = item.as_str() {
        let def = DiskDef {
            path: src.resolve(path),
            read_only: false,
        };
        return Ok(DiskChoice::File(def, loc.clone()));
    }
    let Some(table) = item.as_table_like() else {
        return Err(src.err(loc, type_error(WHAT, item)));
    };
    let mut file = None;
    let mut partition: Option<(String, Loc)> = None;
    let mut read_only = false;
    for (key, value) in table.iter() {
        let (key_loc, value_loc) = src.entry_locs(
            table.key(key).and_then(|k| k.span()),
            value.span(),
            &format!("disk.{key}"),
        );
        match key {
            "file" => file = Some((src.resolve(get_str(src, value, &value_loc)?), value_loc)),
            "partition" => {
                partition = Some((get_str(src, value, &value_loc)?.to_string(), value_loc));
            }
            "read_only" => {
                read_only = value
                    .as_bool()
                    .ok_or_else(|| src.err(&value_loc, type_error("true or false", value)))?;
            }
            other => return Err(src.err(&key_loc, unknown_key(other, DISK_KEYS))),
        }
    }
    match (file, partition) {
        (Some(_), Some((_, at))) => Err(src.err(
            &at,
            "a disk is either a file (RAM-backed) or a partition of [storage], not both",
        )),
        (None, Some((name, at))) => Ok(DiskChoice::Partition(name, read_only, at)),
        (Some((path, at)), None) => Ok(DiskChoice::File(DiskDef { path, read_only }, at)),
        (None, None) => Err(src.err(
            &Loc {
                pos: loc.pos,
                key: "disk.file".into(),
            },
            "missing key `file` (the disk's initial contents) or `partition` (a partition \
             of [storage])",
        )),
    }
}

/// A disk file the kernel can serve: whole sectors, at least one, at most
/// `bundle::DISK_MAX`, and no larger than the VM's memory (a RAM-backed disk costs
/// host memory as the VM's RAM does).
fn check_disk(src: &Source, disk: &DiskDef, loc: &Loc, memory: u64) -> Result<(), ConfigError> {
    let size = file_size(src, &disk.path, loc)?;
    let path = disk.path.display();
    let sector = bundle::SECTOR_SIZE as u64;
    let problem = if size == 0 {
        format!("{path} is empty: a disk holds at least one {sector}-byte sector")
    } else if size % sector != 0 {
        format!(
            "{path} is {size} bytes, not a whole number of {sector}-byte sectors \
             ({} bytes left over)",
            size % sector
        )
    } else if size > bundle::DISK_MAX as u64 {
        format!(
            "{path} is {}: a RAM-backed disk lives in the hypervisor's heap, at most {}",
            show_size(size),
            show_size(bundle::DISK_MAX as u64)
        )
    } else if size > memory {
        format!(
            "{path} is {}, larger than the VM's memory ({}): a RAM-backed disk costs host \
             memory as RAM does",
            show_size(size),
            show_size(memory)
        )
    } else {
        return Ok(());
    };
    Err(src.err(loc, problem))
}

/// Where Linux's protected-mode kernel needs room beyond what the loader places
/// (its load address + `init_size`, the initrd, the boot data): early allocations,
/// page tables, the decompressed initramfs. Added to the least memory that plans
/// when the memory is defaulted (`--kernel` without `--memory`); a size written by
/// the user is held to the loader's own verdict only.
const LINUX_HEADROOM: u64 = 8 * MIB;

/// Why the guest_image planner refuses a VM even with all the memory there is: the
/// image itself, the command line, or the modules. Found by asking the planner again
/// with less: the same code the kernel runs decides, xtask only points at the key.
enum Refusal {
    Image(String),
    Cmdline(String),
    Modules(String),
}

/// The least memory `req` boots in, or which part of it no memory can help.
fn least_memory(req: &guest_image::BootRequest<'_, '_>) -> Result<u64, Refusal> {
    use guest_image::{min_ram, BootRequest};
    let e = match min_ram(req) {
        Ok(ram) => return Ok(ram),
        Err(e) => e,
    };
    let bare = BootRequest {
        cmdline: "",
        modules: &[],
        ..*req
    };
    if let Err(e) = min_ram(&bare) {
        return Err(Refusal::Image(e));
    }
    if min_ram(&BootRequest {
        modules: &[],
        ..*req
    })
    .is_err()
    {
        return Err(Refusal::Cmdline(e));
    }
    Err(Refusal::Modules(e))
}
/// The size of a file the VM needs, or an error naming it as resolved.
fn file_size(src: &Source, path: &Path, loc: &Loc) -> Result<u64, ConfigError> {
    std::fs::File::open(path)
        .and_then(|f| f.metadata())
        .and_then(|m| {
            if m.is_file() {
                Ok(m.len())
            } else {
                Err(std::io::Error::other("not a regular file"))
            }
        })
        .map_err(|e| src.err(loc, format!("cannot read {}: {e}", path.display())))
}

/// Cross-checks one VM and turns it into a [`VmDef`]. `default_memory` gives the
/// memory for a format when none was written (the command line); a config file
/// must say.
fn resolve(
    src: &Source,
    raw: RawVm,
    default_memory: Option<fn(ImageFormat) -> u64>,
) -> Result<VmDef, ConfigError> {
    let missing = |key: &str, what: &str| {
        src.err(
            &Loc {
                pos: raw.at.pos,
                key: key.into(),
            },
            format!("missing key `{key}` ({what})"),
        )
    };
    let (name, name_loc) = raw
        .name
        .clone()
        .ok_or_else(|| missing("name", "the VM's name, shown before its console lines"))?;
    let (kernel, kernel_loc) = raw
        .kernel
        .clone()
        .ok_or_else(|| missing("kernel", "the image to boot"))?;
    if raw.memory.is_none() && default_memory.is_none() {
        return Err(missing("memory", "e.g. \"256M\" or 256 (MiB)"));
    }
    if name.is_empty() || name.len() > NAME_MAX {
        return Err(src.err(
            &name_loc,
            format!("{name:?} is {} bytes long: use 1 to {NAME_MAX}", name.len()),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(src.err(
            &name_loc,
            format!("{name:?} contains {c:?}: use only A-Z, a-z, 0-9, '_', '.' and '-'"),
        ));
    }
    if let Some((n, loc)) = &raw.vcpus {
        if !(1..=i64::from(MAX_VCPUS)).contains(n) {
            return Err(src.err(loc, format!("vcpus = {n}: a VM has 1 to {MAX_VCPUS} vCPUs")));
        }
    }
    if let Some((cmdline, loc)) = &raw.cmdline {
        if cmdline.len() > CMDLINE_MAX {
            return Err(src.err(
                loc,
                format!(
                    "the command line is {} bytes: at most {CMDLINE_MAX}",
                    cmdline.len()
                ),
            ));
        }
        if cmdline.contains('\0') {
            return Err(src.err(loc, "the command line contains a NUL character"));
        }
    }

    let bytes = std::fs::read(&kernel).map_err(|e| {
        src.err(
            &kernel_loc,
            format!("cannot read {}: {e}", kernel.display()),
        )
    })?;
    let asked = raw.format.as_ref().map_or(ImageFormat::Auto, |(f, _)| *f);
    // The kernel's own detection (bzImage, then Multiboot, then the tiny rules).
    let format = guest_image::detect(&bytes, asked);
    let image_error = |e: String| {
        let how = match asked {
            ImageFormat::Auto => String::new(),
            f => format!(" (format = {f})"),
        };
        src.err(&kernel_loc, format!("{}: {e}{how}", kernel.display()))
    };
    let image_path = raw
        .kernel_name
        .clone()
        .unwrap_or_else(|| kernel.display().to_string());

    // Modules: for Linux the initrd is module 0; Multiboot takes a list.
    let mut modules: Vec<(ModuleDef, Loc)> = Vec::new();
    if let Some((initrd, loc)) = &raw.initrd {
        if format != ImageFormat::Linux {
            let hint = if format == ImageFormat::Multiboot {
                "; pass Multiboot modules with `modules`"
            } else {
                ""
            };
            return Err(src.err(
                loc,
                format!(
                    "an initrd is only for Linux guests, and {} is a {format} image{hint}",
                    kernel.display()
                ),
            ));
        }
        modules.push((
            ModuleDef {
                path: initrd.clone(),
                cmdline: String::new(),
            },
            loc.clone(),
        ));
    }
    if let Some((list, loc)) = &raw.modules {
        match format {
            ImageFormat::Multiboot => {}
            ImageFormat::Linux => {
                return Err(src.err(
                    loc,
                    "modules are for Multiboot guests; a Linux guest takes one `initrd`",
                ))
            }
            _ => {
                return Err(src.err(
                    loc,
                    format!(
                        "modules are for Multiboot guests, and {} is a {format} image",
                        kernel.display()
                    ),
                ))
            }
        }
        if list.len() > MODULES_MAX {
            return Err(src.err(
                loc,
                format!("{} modules: at most {MODULES_MAX}", list.len()),
            ));
        }
        modules.extend(list.iter().cloned());
    }
    // The modules' bytes: the planner places them as the kernel will.
    let mut module_data = Vec::with_capacity(modules.len());
    for (m, loc) in &modules {
        file_size(src, &m.path, loc)?;
        let data = std::fs::read(&m.path)
            .map_err(|e| src.err(loc, format!("cannot read {}: {e}", m.path.display())))?;
        module_data.push(data);
    }
    let boot_modules: Vec<bundle::Module> = modules
        .iter()
        .zip(&module_data)
        .map(|((m, _), data)| bundle::Module {
            data,
            cmdline: &m.cmdline,
        })
        .collect();

    let cmdline = raw.cmdline.clone().map(|(c, _)| c).unwrap_or_default();
    if let Some((_, loc)) = &raw.cmdline {
        if format == ImageFormat::Tiny && !cmdline.is_empty() {
            return Err(src.err(loc, "tiny guests take no command line"));
        }
    }

    // The verdict: the kernel's own planner (guest_image), on the same bytes.
    let mut req = guest_image::BootRequest {
        image: &bytes,
        image_path: &image_path,
        format,
        cmdline: &cmdline,
        modules: &boot_modules,
        ram: 0,
    };
    let least = least_memory(&req).map_err(|refusal| match refusal {
        Refusal::Image(e) => image_error(e),
        Refusal::Cmdline(e) => {
            let loc = raw.cmdline.as_ref().map_or(&kernel_loc, |(_, l)| l);
            src.err(loc, e)
        }
        Refusal::Modules(e) => {
            let loc = match (&raw.initrd, &raw.modules) {
                (Some((_, l)), _) | (None, Some((_, l))) => l,
                _ => &kernel_loc,
            };
            src.err(loc, e)
        }
    })?;

    let (memory, memory_loc) = match &raw.memory {
        Some((bytes, loc)) => (*bytes, loc.clone()),
        None => {
            let default = default_memory.map_or(0, |f| f(format));
            (default, kernel_loc.clone())
        }
    };
    // For a defaulted size, grow it to fit rather than fail (with headroom for Linux,
    // which allocates beyond what the loader places).
    let memory = if raw.memory.is_none() {
        let headroom = if format == ImageFormat::Linux {
            LINUX_HEADROOM
        } else {
            0
        };
        (least + headroom).next_multiple_of(MIB).max(memory)
    } else {
        memory
    };
    req.ram = memory;
    if let Err(e) = guest_image::plan_request(&req) {
        return Err(src.err(
            &memory_loc,
            format!(
                "{} is too small for {}: it needs at least {} ({e})",
                show_size(memory),
                kernel.display(),
                show_size(least.next_multiple_of(if least >= MIB { MIB } else { KIB }))
            ),
        ));
    }
    if memory > MEMORY_MAX {
        return Err(src.err(
            &memory_loc,
            format!("{} is too large: at most 64 GiB", show_size(memory)),
        ));
    }
    if let Some((disk, loc)) = &raw.disk {
        check_disk(src, disk, loc, memory)?;
    }

    Ok(VmDef {
        name,
        image: kernel,
        image_path,
        memory_kib: (memory / KIB) as u32,
        run_limit_ms: raw.run_limit_ms,
        background: raw.background,
        bench_hypercalls: raw.bench_hypercalls,
        on_reset: raw.on_reset.unwrap_or(bundle::Policy::Restart),
        on_crash: raw.on_crash.unwrap_or(bundle::Policy::Stop),
        unmapped_stops: raw.unmapped_stops,
        balloon: raw.balloon,
        format,
        cmdline,
        // Checked above to be 1..=MAX_VCPUS.
        vcpus: raw.vcpus.map_or(1, |(n, _)| n as u32),
        cpus: raw.cpus.map(|(c, _)| c).unwrap_or_default(),
        modules: modules.into_iter().map(|(m, _)| m).collect(),
        disk: raw.disk.map(|(d, _)| d),
        // Completed from [storage] by the caller (storage::check_uses).
        partition: raw.partition.map(|(name, read_only, _)| PartitionUse {
            name,
            read_only,
            encrypted: false,
            key_file: None,
        }),
        // Filled in from [[network]] by the caller (network::check_nics).
        nics: Vec::new(),
    })
}

/// Memory for a VM given on the command line without `--memory`.
fn default_memory(format: ImageFormat) -> u64 {
    match format {
        ImageFormat::Linux => 256 * MIB,
        ImageFormat::Multiboot => 64 * MIB,
        _ => 4 * MIB,
    }
}

/// A name for a VM from its image's file name (`bzImage`, `vmlinuz-6.1.0-28-amd64`,
/// `hello64` for `hello64.elf`): the file stem, where a version number is not taken
/// for an extension; other characters than the allowed ones become `_`, and it is
/// cut to the bundle's limit.
fn name_from(path: &Path) -> String {
    let file = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = match file.rsplit_once('.') {
        // `.elf`, `.bin`, `.img`: an extension; `-6.1.0-28-amd64`: part of the name.
        Some((stem, ext))
            if !stem.is_empty()
                && ext.starts_with(|c: char| c.is_ascii_alphabetic())
                && ext.chars().all(|c| c.is_ascii_alphanumeric()) =>
        {
            stem
        }
        _ => &file,
    };
    let name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(NAME_MAX)
        .collect();
    if name.is_empty() {
        "vm".into()
    } else {
        name
    }
}

/// One VM from QEMU-style options (`--kernel X --initrd Y --append Z --memory
/// 256M`), with the format detected from the image and the same checks as a
/// config file. Relative paths are taken as given (from the current directory).
/// Without `--memory`: 256 MiB for Linux, 64 MiB for Multiboot, 4 MiB for a tiny
/// guest (grown if the image needs more). For a Multiboot kernel `--initrd` is
/// QEMU's module list: `"file1 arg,file2"`.
pub fn single_vm(
    kernel: &Path,
    initrd: Option<&Path>,
    append: Option<&str>,
    memory: Option<&str>,
) -> Result<VmDef, ConfigError> {
    let src = Source {
        label: "command line".into(),
        text: "",
        dir: PathBuf::from("."),
        machine_cpus: None,
    };
    let opt = |key: &str| Loc {
        pos: None,
        key: key.into(),
    };
    let kernel = kernel.to_path_buf();
    // The module syntax depends on the format; peek at the image (errors come from
    // resolve).
    let detected = std::fs::read(&kernel).ok().map_or(ImageFormat::Auto, |b| {
        guest_image::detect(&b, ImageFormat::Auto)
    });
    let mut raw = RawVm {
        at: opt("--kernel"),
        name: Some((name_from(&kernel), opt("--kernel"))),
        // QEMU hands a Multiboot kernel its `-kernel` argument as given.
        kernel_name: Some(kernel.display().to_string()),
        kernel: Some((kernel, opt("--kernel"))),
        cmdline: append.map(|a| (a.to_string(), opt("--append"))),
        ..RawVm::default()
    };
    if let Some(m) = memory {
        let bytes = parse_memory(m).map_err(|e| src.err(&opt("--memory"), e))?;
        raw.memory = Some((bytes, opt("--memory")));
    }
    if let Some(initrd) = initrd {
        if detected == ImageFormat::Multiboot {
            // QEMU: -initrd "mod1 args,mod2" for Multiboot kernels.
            let list = initrd.to_string_lossy();
            let modules = list
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|item| {
                    // As QEMU does, the module's string is the whole item, path
                    // included (what GRUB's `module` passes too).
                    let item = item.trim();
                    let path = item.split_once(' ').map_or(item, |(p, _)| p);
                    (
                        ModuleDef {
                            path: PathBuf::from(path),
                            cmdline: item.to_string(),
                        },
                        opt("--initrd"),
                    )
                })
                .collect();
            raw.modules = Some((modules, opt("--initrd")));
        } else {
            raw.initrd = Some((initrd.to_path_buf(), opt("--initrd")));
        }
    }
    resolve(&src, raw, Some(default_memory))
}

/// Checks a VM built in code (e.g. [`crate::linux::linux_vm`]) as a config file's
/// would be, and returns it with its format detected.
pub fn check(vm: &VmDef) -> Result<VmDef, ConfigError> {
    let src = Source {
        label: format!("VM {}", vm.name),
        text: "",
        dir: PathBuf::from("."),
        machine_cpus: None,
    };
    let at = |key: &str| Loc {
        pos: None,
        key: key.into(),
    };
    let mut raw = RawVm {
        at: at("vm"),
        name: Some((vm.name.clone(), at("name"))),
        memory: Some((u64::from(vm.memory_kib) * KIB, at("memory"))),
        vcpus: Some((i64::from(vm.vcpus), at("vcpus"))),
        cpus: (!vm.cpus.is_empty()).then(|| (vm.cpus.clone(), at("cpus"))),
        kernel: Some((vm.image.clone(), at("kernel"))),
        kernel_name: Some(vm.image_path.clone()),
        format: Some((vm.format, at("format"))),
        cmdline: Some((vm.cmdline.clone(), at("cmdline"))),
        background: vm.background,
        run_limit_ms: vm.run_limit_ms,
        bench_hypercalls: vm.bench_hypercalls,
        on_reset: Some(vm.on_reset),
        on_crash: Some(vm.on_crash),
        unmapped_stops: vm.unmapped_stops,
        balloon: vm.balloon,
        disk: vm.disk.clone().map(|d| (d, at("disk"))),
        ..RawVm::default()
    };
    // A partition is checked against [storage] when the configuration is read;
    // a VM built in code keeps what it has.
    let partition = vm.partition.clone();
    check_memory(u64::from(vm.memory_kib) * KIB).map_err(|e| src.err(&at("memory"), e))?;
    let mut modules: Vec<(ModuleDef, Loc)> = vm
        .modules
        .iter()
        .enumerate()
        .map(|(i, m)| (m.clone(), at(&format!("modules[{i}]"))))
        .collect();
    // For Linux, module 0 is the initrd; check it as one.
    let linux = vm.format == ImageFormat::Linux
        || (vm.format == ImageFormat::Auto
            && std::fs::read(&vm.image)
                .ok()
                .is_some_and(|b| guest_image::detect(&b, ImageFormat::Auto) == ImageFormat::Linux));
    if linux && !modules.is_empty() {
        let (initrd, _) = modules.remove(0);
        raw.initrd = Some((initrd.path, at("initrd")));
    }
    if !modules.is_empty() {
        raw.modules = Some((modules, at("modules")));
    }
    // So are NICs: a VM built in code keeps them (the bundle writer checks them).
    let nics = vm.nics.clone();
    resolve(&src, raw, None).map(|v| VmDef {
        partition,
        nics,
        ..v
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vms::NicDef;

    /// The tests' scratch directory with their loaders.
    trait Loads {
        fn load(&self, toml: &str) -> Result<Vec<VmDef>, ConfigError>;
        fn err(&self, toml: &str) -> String;
        fn images(&self);
    }
    use super::scratch::Scratch;
    fn scratch(name: &str) -> Scratch {
        Scratch::new("config", name)
    }
    impl Loads for Scratch {
        /// Writes `vms.toml` and loads it.
        fn load(&self, toml: &str) -> Result<Vec<VmDef>, ConfigError> {
            load(&self.file("vms.toml", toml.as_bytes()))
        }
        fn err(&self, toml: &str) -> String {
            let e = self.load(toml).expect_err("config should be rejected");
            e.to_string()
        }
        /// Writes the sample images: a bzImage, a Multiboot kernel, a boot sector
        /// and an ELF64.
        fn images(&self) {
            self.file("bzImage", &bzimage(0x020f, 1));
            self.file("initrd", b"070701initrd");
            self.file("mb.bin", &multiboot());
            self.file("m.bin", b"module");
            self.file("boot.bin", &boot_sector());
            self.file("hello.elf", &elf64(0x20_0000, 0x1000));
        }
    }

    /// A fake bzImage: setup header with `version` and `xloadflags`, 4 setup
    /// sectors, 64 KiB payload, init_size 8 MiB.
    fn bzimage(version: u16, xloadflags: u16) -> Vec<u8> {
        let mut b = vec![0u8; 5 * 512 + 64 * 1024];
        b[0x1f1] = 4;
        b[0x1fe] = 0x55;
        b[0x1ff] = 0xaa;
        b[0x201] = 0x6a; // the header ends at 0x26c
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        b[0x211] = 1; // LOADED_HIGH
        b[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
        b[0x238..0x23c].copy_from_slice(&2048u32.to_le_bytes());
        b[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes());
        b[0x260..0x264].copy_from_slice(&(8 * MIB as u32).to_le_bytes());
        b
    }

    const MULTIBOOT_MAGIC: u32 = 0x1bad_b002;
    const MULTIBOOT_AOUT_KLUDGE: u32 = 1 << 16;

    /// A Multiboot kernel with the a.out kludge: loads at 1 MiB, 4 KiB file.
    fn multiboot() -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        let flags: u32 = MULTIBOOT_AOUT_KLUDGE | 0b11;
        let fields = [
            MULTIBOOT_MAGIC,
            flags,
            0u32.wrapping_sub(MULTIBOOT_MAGIC).wrapping_sub(flags),
            0x10_0040, // header_addr
            0x10_0000, // load_addr
            0,         // load_end: whole file
            0x10_2000, // bss_end
            0x10_0100, // entry
        ];
        for (i, f) in fields.iter().enumerate() {
            b[0x40 + 4 * i..0x44 + 4 * i].copy_from_slice(&f.to_le_bytes());
        }
        b
    }

    fn boot_sector() -> Vec<u8> {
        let mut b = vec![0x90u8; 512];
        b[510] = 0x55;
        b[511] = 0xaa;
        b
    }

    /// An ELF64 executable with one PT_LOAD segment at `paddr` of `memsz` bytes.
    fn elf64(paddr: u64, memsz: u64) -> Vec<u8> {
        let mut b = vec![0u8; 0x78 + 16];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[6] = 1;
        b[16..18].copy_from_slice(&2u16.to_le_bytes());
        b[18..20].copy_from_slice(&62u16.to_le_bytes());
        b[24..32].copy_from_slice(&paddr.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = 64;
        b[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
        b[ph + 8..ph + 16].copy_from_slice(&0x78u64.to_le_bytes());
        b[ph + 16..ph + 24].copy_from_slice(&paddr.to_le_bytes());
        b[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
        b[ph + 32..ph + 40].copy_from_slice(&16u64.to_le_bytes());
        b[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
        b
    }

    const LINUX: &str = r#"
[[vm]]
name = "linux"
memory = "256M"
vcpus = 1
kernel = "bzImage"
format = "linux"
cmdline = "console=ttyS0"
initrd = "initrd"
"#;

    #[test]
    fn loads_every_kind_of_vm() {
        let s = scratch("ok");
        s.images();
        let vms = s
            .load(&format!(
                r#"{LINUX}
[[vm]]
name = "mb"
memory = 64
kernel = "mb.bin"
cmdline = "mb kernel args"
modules = [ {{ path = "m.bin", cmdline = "arg" }}, "m.bin" ]

[[vm]]
name = "boot"
memory = "4096K"
kernel = "{}"
background = true
run_limit_ms = 1500

[[vm]]
name = "hello.64-x_y"
memory = "1G"
kernel = "hello.elf"
format = "tiny"
"#,
                s.0.join("boot.bin").display()
            ))
            .unwrap();
        assert_eq!(vms.len(), 4);
        let linux = &vms[0];
        assert_eq!(linux.format, ImageFormat::Linux);
        assert_eq!(linux.memory_kib, 256 * 1024);
        assert_eq!(linux.image, s.0.join("bzImage"));
        assert_eq!(linux.cmdline, "console=ttyS0");
        assert_eq!(
            linux.modules,
            vec![ModuleDef {
                path: s.0.join("initrd"),
                cmdline: String::new()
            }]
        );
        let mb = &vms[1];
        assert_eq!(mb.format, ImageFormat::Multiboot);
        assert_eq!(mb.memory_kib, 64 * 1024);
        assert_eq!(mb.modules.len(), 2);
        assert_eq!(mb.modules[0].cmdline, "arg");
        assert_eq!(mb.modules[1].cmdline, "");
        let boot = &vms[2];
        assert_eq!(boot.format, ImageFormat::Tiny);
        assert_eq!(boot.memory_kib, 4096);
        assert!(boot.background);
        assert_eq!(boot.run_limit_ms, 1500);
        assert_eq!(vms[3].memory_kib, 1024 * 1024);
        // The result bundles.
        crate::vms::bundle_bytes(&vms).unwrap();
    }

    #[test]
    fn inline_array_of_vms_and_module_tables() {
        let s = scratch("inline");
        s.images();
        let vms = s
            .load(
                r#"
vm = [ { name = "a", memory = 4, kernel = "boot.bin" } ]
"#,
            )
            .unwrap();
        assert_eq!(vms[0].name, "a");
        let vms = s
            .load(
                r#"
[[vm]]
name = "mb"
memory = 64
kernel = "mb.bin"
[[vm.modules]]
path = "m.bin"
cmdline = "x"
"#,
            )
            .unwrap();
        assert_eq!(vms[0].modules[0].cmdline, "x");
    }

    #[test]
    fn syntax_errors_have_positions() {
        let s = scratch("syntax");
        let e = s.err("[[vm]]\nname = \"a\nmemory = 4\n");
        assert!(
            e.contains("vms.toml:2:") && e.contains("syntax: invalid TOML"),
            "{e}"
        );
        let e = s.err("[[vm]]\nname = \"a\"\nname = \"b\"\n");
        assert!(
            e.contains("vms.toml:3:1: syntax:") && e.contains("duplicate"),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_are_named_with_a_suggestion() {
        let s = scratch("unknown");
        s.images();
        let e = s.err("[[vm]]\nname = \"a\"\nmemroy = 4\nkernel = \"boot.bin\"\n");
        assert!(
            e.contains("vms.toml:3:1: memroy: unknown key `memroy` (did you mean `memory`?)"),
            "{e}"
        );
        let e = s.err("[[vm]]\nname = \"a\"\nappend = \"x\"\n");
        assert!(
            e.contains("3:1: append:") && e.contains("did you mean `cmdline`"),
            "{e}"
        );
        let e = s.err("[[vm]]\nname = \"a\"\nfoo = 1\n");
        assert!(
            e.contains("unknown key `foo`; known keys: name, memory"),
            "{e}"
        );
        let e = s.err("[[vms]]\nname = \"a\"\n");
        assert!(
            e.contains("1:3: vms: unknown key `vms` (did you mean `vm`?)"),
            "{e}"
        );
        let e = s.err(
            "[[vm]]\nname = \"a\"\nmemory = 4\nkernel = \"mb.bin\"\nmodules = [ { path = \"m.bin\", cmd = \"x\" } ]\n",
        );
        assert!(
            e.contains("5:31: modules[0].cmd: unknown key `cmd` (did you mean `cmdline`?)"),
            "{e}"
        );
    }

    #[test]
    fn wrong_types() {
        let s = scratch("types");
        let e = s.err("[[vm]]\nname = 5\n");
        assert!(
            e.contains("vms.toml:2:8: name: expected a string, found an integer"),
            "{e}"
        );
        let e = s.err("[[vm]]\nname = \"a\"\nmemory = 1.5\n");
        assert!(
            e.contains("3:10: memory: expected an integer number of MiB"),
            "{e}"
        );
        assert!(e.contains("found a float"), "{e}");
        let e = s.err("[[vm]]\nbackground = \"yes\"\n");
        assert!(
            e.contains("2:14: background: expected true or false, found a string"),
            "{e}"
        );
        let e = s.err("[[vm]]\nrun_limit_ms = -1\n");
        assert!(e.contains("2:16: run_limit_ms: -1 is out of range"), "{e}");
        let e = s.err("[vm]\nname = \"a\"\n");
        assert!(
            e.contains("1:2: vm: expected [[vm]] tables: write [[vm]]"),
            "{e}"
        );
        let e = s.err("[[vm]]\nname = \"a\"\nformat = \"elf\"\n");
        assert!(
            e.contains("3:10: format: unknown format \"elf\": use one of auto"),
            "{e}"
        );
        let e = s.err("[[vm]]\nmodules = 3\n");
        assert!(
            e.contains("2:1: modules: expected an array of modules"),
            "{e}"
        );
    }

    #[test]
    fn missing_keys_and_empty_files() {
        let s = scratch("missing");
        s.images();
        let e = s.err("# nothing\n");
        assert!(e.ends_with("vms.toml:1:1: vm: no [[vm]] table: describe at least one VM (see vms.example.toml)"), "{e}");
        let e = s.err("\n[[vm]]\nmemory = 4\nkernel = \"boot.bin\"\n");
        assert!(e.contains("vms.toml:2:1: name: missing key `name`"), "{e}");
        let e = s.err("[[vm]]\nname = \"a\"\nmemory = 4\n");
        assert!(e.contains("1:1: kernel: missing key `kernel`"), "{e}");
        let e = s.err("[[vm]]\nname = \"a\"\nkernel = \"boot.bin\"\n");
        assert!(e.contains("1:1: memory: missing key `memory`"), "{e}");
        let e = s.err("vm = []\n");
        assert!(e.contains("1:1: vm: no VMs"), "{e}");
        let e = load(&s.0.join("absent.toml")).unwrap_err().to_string();
        assert!(
            e.contains("absent.toml: file: cannot read the VM config"),
            "{e}"
        );
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("256M"), Ok(256 * MIB));
        assert_eq!(parse_memory("256MiB"), Ok(256 * MIB));
        assert_eq!(parse_memory("2g"), Ok(2 * GIB));
        assert_eq!(parse_memory("1024K"), Ok(MIB));
        assert_eq!(parse_memory("64"), Ok(64 * MIB));
        assert_eq!(parse_memory("64G"), Ok(64 * GIB));
        assert!(parse_memory("65G").unwrap_err().contains("too large"));
        assert!(parse_memory("512K").unwrap_err().contains("too small"));
        assert!(parse_memory("1T")
            .unwrap_err()
            .contains("bad size suffix \"T\""));
        assert!(parse_memory("1.5G")
            .unwrap_err()
            .contains("bad size suffix"));
        assert!(parse_memory("M").unwrap_err().contains("is not a size"));
        assert!(parse_memory("1025K").unwrap_err().contains("4 KiB pages"));
        assert!(parse_memory("99999999999999999999G")
            .unwrap_err()
            .contains("too large"));

        let s = scratch("memory");
        s.images();
        let vm =
            |mem: &str| format!("[[vm]]\nname = \"a\"\nkernel = \"boot.bin\"\nmemory = {mem}\n");
        let e = s.err(&vm("\"512K\""));
        assert!(
            e.contains("4:10: memory: 512 KiB is too small: a VM needs at least 1 MiB"),
            "{e}"
        );
        let e = s.err(&vm("\"100G\""));
        assert!(
            e.contains("4:10: memory: 100 GiB is too large: at most 64 GiB"),
            "{e}"
        );
        let e = s.err(&vm("\"12X\""));
        assert!(e.contains("4:10: memory: bad size suffix \"X\""), "{e}");
        let e = s.err(&vm("0"));
        assert!(e.contains("4:10: memory: 0 MiB: must be positive"), "{e}");
        let e = s.err(&vm("65537"));
        assert!(e.contains("too large"), "{e}");
    }

    #[test]
    fn names() {
        let s = scratch("names");
        s.images();
        let vm =
            |name: &str| format!("[[vm]]\nname = \"{name}\"\nkernel = \"boot.bin\"\nmemory = 4\n");
        let e = s.err(&format!("{}{}", vm("a"), vm("a")));
        assert!(
            e.contains("vms.toml:6:8: name: duplicate VM name \"a\" (first used on line 2)"),
            "{e}"
        );
        let e = s.err(&vm(&"x".repeat(NAME_MAX + 1)));
        assert!(
            e.contains("2:8: name:") && e.contains("is 25 bytes long: use 1 to 24"),
            "{e}"
        );
        let e = s.err(&vm("my vm"));
        assert!(
            e.contains("2:8: name: \"my vm\" contains ' ': use only A-Z"),
            "{e}"
        );
        let e = s.err(&vm(""));
        assert!(e.contains("is 0 bytes long"), "{e}");
    }

    #[test]
    fn cpus_lists_host_processors() {
        let s = scratch("cpus");
        s.images();
        let vm = |cpus: &str| {
            format!("[[vm]]\nname = \"a\"\nkernel = \"boot.bin\"\nmemory = 4\ncpus = {cpus}\n")
        };
        let vms = s.load(&vm("[1, 0]")).unwrap();
        assert_eq!(vms[0].cpus, [1, 0]);
        assert_eq!(vms[0].affinity(), 0b11);
        for (bad, at, message) in [
            ("[]", "5:8: cpus", "an empty list"),
            (
                "3",
                "5:8: cpus",
                "expected an array of host processor numbers",
            ),
            (
                "[0, 64]",
                "5:12: cpus[1]",
                "processor 64 is out of range: 0 to 63",
            ),
            ("[2, 2]", "5:12: cpus[1]", "processor 2 is listed twice"),
            (
                "[\"0\"]",
                "5:9: cpus[0]",
                "expected a processor number, found a string",
            ),
        ] {
            let e = s.err(&vm(bad));
            assert!(e.contains(&format!("{at}: {message}")), "{bad}: {e}");
        }
        // Against the machine it will run on.
        let path = s.0.join("vms.toml");
        std::fs::write(&path, vm("[0, 2]")).unwrap();
        let e = load_for_machine(&path, Some(2)).unwrap_err().to_string();
        assert!(
            e.ends_with("vms.toml:5:12: cpus[1]: processor 2 does not exist: the machine has 2 (0 to 1; more with --cpus)"),
            "{e}"
        );
        assert!(load_for_machine(&path, Some(3)).is_ok());
    }

    #[test]
    fn vcpus_between_one_and_the_maximum() {
        let s = scratch("vcpus");
        s.images();
        for bad in ["0", "17", "-1"] {
            let e = s.err(&format!(
                "[[vm]]\nname = \"a\"\nkernel = \"boot.bin\"\nmemory = 4\nvcpus = {bad}\n"
            ));
            assert!(
                e.ends_with(&format!(
                    "vms.toml:5:9: vcpus: vcpus = {bad}: a VM has 1 to 16 vCPUs"
                )),
                "{e}"
            );
        }
    }

    #[test]
    fn files_must_exist() {
        let s = scratch("files");
        s.images();
        let e = s.err("[[vm]]\nname = \"a\"\nkernel = \"nope.bin\"\nmemory = 4\n");
        let resolved = s.0.join("nope.bin");
        assert!(
            e.contains(&format!(
                "3:10: kernel: cannot read {}: ",
                resolved.display()
            )),
            "{e}"
        );
        let e = s.err(&LINUX.replace("initrd = \"initrd\"", "initrd = \"gone\""));
        assert!(
            e.contains("9:10: initrd: cannot read") && e.contains("gone"),
            "{e}"
        );
        let e = s.err(&LINUX.replace("initrd = \"initrd\"", "initrd = \".\""));
        assert!(e.contains("not a regular file"), "{e}");
        let e = s.err("[[vm]]\nname = \"a\"\nmemory = 4\nkernel = \"mb.bin\"\nmodules = [\"m.bin\", { path = \"x\" }]\n");
        assert!(e.contains("5:30: modules[1].path: cannot read"), "{e}");
    }

    #[test]
    fn networks_and_nics() {
        let s = scratch("networks");
        s.images();
        let vm = |name: &str, nics: &str| {
            format!("[[vm]]\nname = \"{name}\"\nmemory = 4\nkernel = \"boot.bin\"\nnics = {nics}\n")
        };
        let lan = "[[network]]\nname = \"lan\"\nrate_mbit = 100\n\
                   [[network]]\nname = \"other\"\nrate_mbit = 10\nburst_kib = 16\n";
        let text = format!(
            "{lan}{}{}{}",
            vm(
                "a",
                "[{ network = \"lan\", mac = \"52:54:00:12:34:56\" }, { network = \"other\" }]"
            ),
            vm("b", "[{ network = \"lan\" }]"),
            "[[vm]]\nname = \"c\"\nmemory = 4\nkernel = \"boot.bin\"\n"
        );
        let vms = s.load(&text).unwrap();
        assert_eq!(
            vms[0].nics,
            vec![
                NicDef {
                    network: "lan".into(),
                    mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
                    rate_mbit: 100,
                    burst_kib: network::DEFAULT_BURST_KIB,
                },
                NicDef {
                    network: "other".into(),
                    mac: virtio::net::mac_from_name("a", 1),
                    rate_mbit: 10,
                    burst_kib: 16,
                }
            ]
        );
        assert_eq!(vms[1].nics[0].mac, virtio::net::mac_from_name("b", 0));
        assert!(vms[2].nics.is_empty());
        // [[vm.nics]] tables work too; `check` keeps NICs; they pack and read back.
        let tables = "[[network]]\nname = \"lan\"\n[[vm]]\nname = \"a\"\nmemory = 4\n\
             kernel = \"boot.bin\"\n[[vm.nics]]\nnetwork = \"lan\"\n";
        let one = s.load(tables).unwrap();
        assert_eq!(one[0].nics, vec![NicDef::on("lan", "a", 0)]);
        assert_eq!(check(&vms[0]).unwrap().nics, vms[0].nics);
        let blob = crate::vms::bundle_bytes(&vms).unwrap();
        let specs = bundle::read(&blob).unwrap();
        assert_eq!(specs[0].nics[1].network, "other");
        assert_eq!(specs[0].nics[0].rate_mbit, 100);
        assert_eq!(specs[1].nics[0].mac, vms[1].nics[0].mac);
    }

    #[test]
    fn network_errors_name_the_place() {
        let s = scratch("network-errors");
        s.images();
        let vm = |name: &str, nics: &str| {
            format!("[[vm]]\nname = \"{name}\"\nmemory = 4\nkernel = \"boot.bin\"\nnics = {nics}\n")
        };
        let lan = "[[network]]\nname = \"lan\"\n";
        // A NIC on an undeclared network: with a suggestion, or without networks.
        let e = s.err(&format!("{lan}{}", vm("a", "[{ network = \"lna\" }]")));
        assert!(
            e.contains("vms.toml:7:21: nics[0].network: no network \"lna\" (did you mean \"lan\"?); the declared networks are lan"),
            "{e}"
        );
        let e = s.err(&vm("a", "[{ network = \"lan\" }]"));
        assert!(
            e.contains("5:21: nics[0].network: no network \"lan\"; there is no [[network]]"),
            "{e}"
        );
        // A declared network no NIC uses.
        let e = s.err(&format!(
            "{lan}[[network]]\nname = \"spare\"\n{}",
            vm("a", "[{ network = \"lan\" }]")
        ));
        assert!(
            e.contains("4:8: network[1].name: network \"spare\" has no NIC"),
            "{e}"
        );
        // Declared twice.
        let e = s.err(&format!("{lan}{lan}{}", vm("a", "[{ network = \"lan\" }]")));
        assert!(
            e.contains("4:8: network[1].name: network \"lan\" is declared twice (first on line 2)"),
            "{e}"
        );
        // Malformed, multicast, zero MACs.
        for (mac, what) in [
            ("52:54:00:12:34", "is not a MAC address"),
            ("52:54:00:12:34:5x", "is not a MAC address"),
            (
                "01:00:5e:00:00:01",
                "01:00:5e:00:00:01 is a multicast address",
            ),
            ("ff:ff:ff:ff:ff:ff", "is a multicast address"),
            ("00:00:00:00:00:00", "is no NIC's address"),
        ] {
            let e = s.err(&format!(
                "{lan}{}",
                vm("a", &format!("[{{ network = \"lan\", mac = \"{mac}\" }}]"))
            ));
            assert!(
                e.contains("7:34: nics[0].mac: ") && e.contains(what),
                "{mac}: {e}"
            );
        }
        // The same MAC twice on one network (given, or given and derived).
        let mac = "[{ network = \"lan\", mac = \"52:54:00:00:00:01\" }]";
        let e = s.err(&format!("{lan}{}{}", vm("a", mac), vm("b", mac)));
        assert!(
            e.contains("12:34: nics[0].mac: MAC 52:54:00:00:00:01 is already used on network \"lan\" by VM \"a\" on line 7"),
            "{e}"
        );
        let derived = virtio::net::mac_from_name("a", 0);
        let given = format!(
            "[{{ network = \"lan\", mac = \"{}\" }}]",
            network::show_mac(&derived)
        );
        let e = s.err(&format!(
            "{lan}{}{}",
            vm("b", &given),
            vm("a", "[{ network = \"lan\" }]")
        ));
        assert!(
            e.contains("12:21: nics[0].network: MAC") && e.contains("derived from the VM's name"),
            "{e}"
        );
        // Too many NICs.
        let five = format!("[{}]", ["{ network = \"lan\" }"; 5].join(", "));
        let e = s.err(&format!("{lan}{}", vm("a", &five)));
        assert!(
            e.contains("7:8: nics: 5 NICs: a VM has at most 4 (PCI devices 00:04.0 to 00:07.0)"),
            "{e}"
        );
        // Keys and values of [[network]] and of a NIC.
        let nic = vm("a", "[{ network = \"lan\" }]");
        let e = s.err(&format!(
            "[[network]]\nname = \"lan\"\nrate_mbits = 5\n{nic}"
        ));
        assert!(
            e.contains(
                "3:1: network[0].rate_mbits: unknown key `rate_mbits` (did you mean `rate_mbit`?)"
            ),
            "{e}"
        );
        let e = s.err(&format!(
            "[[network]]\nname = \"lan\"\nburst_kib = 64\n{nic}"
        ));
        assert!(
            e.contains("3:13: network[0].burst_kib: a burst belongs to a rate limit"),
            "{e}"
        );
        let e = s.err(&format!(
            "[[network]]\nname = \"lan\"\nrate_mbit = 0\n{nic}"
        ));
        assert!(
            e.contains("3:13: network[0].rate_mbit: 0 Mbit/s is out of range: 1 to 100000"),
            "{e}"
        );
        let e = s.err(&format!(
            "[[network]]\nname = \"lan\"\nrate_mbit = 5\nburst_kib = 1\n{nic}"
        ));
        assert!(
            e.contains("4:13: network[0].burst_kib: 1 KiB is out of range: 2 to"),
            "{e}"
        );
        let e = s.err(&format!("[[network]]\nname = \"a b\"\n{nic}"));
        assert!(
            e.contains("2:8: network[0].name: \"a b\": a network name is 1 to 32"),
            "{e}"
        );
        let e = s.err(&format!("[[network]]\nrate_mbit = 5\n{nic}"));
        assert!(e.contains("network[0].name: missing key `name`"), "{e}");
        let e = s.err(&format!("[network]\nname = \"lan\"\n{nic}"));
        assert!(
            e.contains("1:2: network: expected [[network]] tables: write [[network]]"),
            "{e}"
        );
        let e = s.err(&format!("{lan}{}", vm("a", "[{ net = \"lan\" }]")));
        assert!(
            e.contains("7:11: nics[0].net: unknown key `net` (did you mean `network`?)"),
            "{e}"
        );
        let e = s.err(&format!(
            "{lan}{}",
            vm("a", "[{ mac = \"52:54:00:00:00:01\" }]")
        ));
        assert!(
            e.contains("7:9: nics[0].network: missing key `network`"),
            "{e}"
        );
        let e = s.err(&format!("{lan}{}", vm("a", "\"lan\"")));
        assert!(e.contains("7:8: nics: expected an array of NICs"), "{e}");
        let e = s.err(&format!("{lan}{}", vm("a", "[\"lan\"]")));
        assert!(e.contains("7:9: nics[0]: expected a NIC"), "{e}");
    }

    #[test]
    fn disks() {
        let s = scratch("disks");
        s.images();
        s.file("disk.img", &[0x42; 4096]);
        let vm = |disk: &str| {
            format!("[[vm]]\nname = \"a\"\nmemory = 4\nkernel = \"boot.bin\"\ndisk = {disk}\n")
        };
        let vms = s.load(&vm("\"disk.img\"")).unwrap();
        assert_eq!(
            vms[0].disk,
            Some(DiskDef {
                path: s.0.join("disk.img"),
                read_only: false
            })
        );
        let vms = s
            .load(&vm("{ file = \"disk.img\", read_only = true }"))
            .unwrap();
        assert!(vms[0].disk.as_ref().unwrap().read_only);
        // It packs, and `check` keeps it.
        crate::vms::bundle_bytes(&vms).unwrap();
        assert_eq!(check(&vms[0]).unwrap().disk, vms[0].disk);
        let vms = s
            .load("[[vm]]\nname = \"a\"\nmemory = 4\nkernel = \"boot.bin\"\n[vm.disk]\nfile = \"disk.img\"\n")
            .unwrap();
        assert!(vms[0].disk.is_some());

        // Bad input names the file and the key, with the position.
        let e = s.err(&vm("\"gone.img\""));
        assert!(
            e.contains("5:8: disk: cannot read") && e.contains("gone.img"),
            "{e}"
        );
        s.file("empty.img", b"");
        let e = s.err(&vm("\"empty.img\""));
        assert!(
            e.contains("5:8: disk: ") && e.contains("empty.img is empty"),
            "{e}"
        );
        s.file("odd.img", &[0; 1000]);
        let e = s.err(&vm("{ file = \"odd.img\" }"));
        assert!(
            e.contains("5:17: disk.file: ")
                && e.contains("odd.img is 1000 bytes, not a whole number of 512-byte sectors"),
            "{e}"
        );
        s.file("big.img", &vec![0; 5 << 20]);
        let e = s.err(&vm("\"big.img\""));
        assert!(
            e.contains("5:8: disk: ")
                && e.contains("big.img is 5 MiB, larger than the VM's memory (4 MiB)"),
            "{e}"
        );
        let e = s.err(&vm("{ path = \"disk.img\" }"));
        assert!(e.contains("5:10: disk.path: unknown key"), "{e}");
        let e = s.err(&vm("{ read_only = true }"));
        assert!(e.contains("disk.file: missing key `file`"), "{e}");
        let e = s.err(&vm("{ file = \"disk.img\", read_only = 1 }"));
        assert!(e.contains("disk.read_only: expected true or false"), "{e}");
        let e = s.err(&vm("3"));
        assert!(e.contains("5:8: disk: expected a file name"), "{e}");
        let e = s
            .err("[[vm]]\nname = \"a\"\nmemory = 4\nkernel = \"boot.bin\"\ndrive = \"disk.img\"\n");
        assert!(e.contains("`disk`"), "{e}");
    }

    #[test]
    fn initrd_and_modules_match_the_format() {
        let s = scratch("modules");
        s.images();
        let e =
            s.err("[[vm]]\nname = \"a\"\nmemory = 4\nkernel = \"mb.bin\"\ninitrd = \"initrd\"\n");
        assert!(
            e.contains("5:10: initrd: an initrd is only for Linux guests")
                && e.contains("multiboot image; pass Multiboot modules with `modules`"),
            "{e}"
        );
        let e = s.err(&format!("{LINUX}modules = [\"m.bin\"]\n"));
        assert!(e.contains("10:11: modules: modules are for Multiboot guests; a Linux guest takes one `initrd`"), "{e}");
        let e = s.err(
            "[[vm]]\nname = \"a\"\nmemory = 4\nkernel = \"boot.bin\"\nmodules = [\"m.bin\"]\n",
        );
        assert!(
            e.contains("modules are for Multiboot guests") && e.contains("tiny image"),
            "{e}"
        );
        let e = s.err("[[vm]]\nname = \"a\"\nmemory = 4\nkernel = \"mb.bin\"\nmodules = [{ cmdline = \"x\" }]\n");
        assert!(
            e.contains("5:12: modules[0].path: missing key `path`"),
            "{e}"
        );
    }

    #[test]
    fn cmdline_limits() {
        let s = scratch("cmdline");
        s.images();
        let long = "x".repeat(CMDLINE_MAX + 1);
        let e = s.err(&LINUX.replace("console=ttyS0", &long));
        assert!(
            e.contains("8:11: cmdline: the command line is 4097 bytes: at most 4096"),
            "{e}"
        );
        let e = s.err(&LINUX.replace("console=ttyS0", &"x".repeat(3000)));
        assert!(
            e.contains(
                "8:11: cmdline: the command line is 3000 bytes; this kernel accepts at most 2048"
            ),
            "{e}"
        );
        let e = s.err("[[vm]]\nname = \"a\"\nmemory = 4\nkernel = \"boot.bin\"\ncmdline = \"x\"\n");
        assert!(
            e.contains("5:11: cmdline: tiny guests take no command line"),
            "{e}"
        );
    }

    #[test]
    fn images_are_checked() {
        let s = scratch("images");
        s.images();
        s.file("old", &bzimage(0x020b, 1));
        s.file("no64", &bzimage(0x020f, 0));
        s.file("junk", b"just some bytes");
        s.file("low.elf", &elf64(0x1000, 0x1000));
        let vm = |kernel: &str, format: &str| {
            format!("[[vm]]\nname = \"a\"\nmemory = 256\nkernel = \"{kernel}\"\nformat = \"{format}\"\n")
        };
        let path = |f: &str| s.0.join(f).display().to_string();
        let e = s.err(&vm("old", "linux"));
        assert!(
            e.contains(&format!("4:10: kernel: {}: Linux boot protocol 2.11 is too old: the 64-bit entry needs 2.12 or later (format = linux)", path("old"))),
            "{e}"
        );
        let e = s.err(&vm("no64", "auto"));
        assert!(
            e.contains(
                "no64: this kernel has no 64-bit entry point (xloadflags XLF_KERNEL_64 clear)"
            ),
            "{e}"
        );
        let e = s.err(&vm("boot.bin", "linux"));
        assert!(e.contains("boot.bin: not a Linux bzImage: no \"HdrS\" setup header at 0x202 with boot flag 0xAA55 at 0x1FE (format = linux)"), "{e}");
        let e = s.err(&vm("boot.bin", "multiboot"));
        assert!(
            e.contains("boot.bin: no Multiboot header (magic 0x1BADB002, 4-byte aligned) in the first 8192 bytes"),
            "{e}"
        );
        let mut bad = multiboot();
        bad[0x48] ^= 1;
        s.file("badsum", &bad);
        let e = s.err(&vm("badsum", "multiboot"));
        assert!(
            e.contains("Multiboot header at file offset 0x40 has a bad checksum"),
            "{e}"
        );
        let e = s.err(&vm("bzImage", "tiny"));
        assert!(e.contains("bzImage: unrecognised guest image (68096 bytes): neither an ELF executable nor a 512-byte boot sector ending in 55 AA (format = tiny)"), "{e}");
        let e = s.err(&vm("junk", "auto"));
        assert!(
            e.contains(&format!(
                "kernel: {}: unrecognised guest image",
                path("junk")
            )),
            "{e}"
        );
        let e = s.err(&vm("low.elf", "tiny"));
        assert!(e.contains("below 0x100000"), "{e}");
        // Auto detects each.
        for (file, format) in [
            ("bzImage", ImageFormat::Linux),
            ("mb.bin", ImageFormat::Multiboot),
            ("boot.bin", ImageFormat::Tiny),
            ("hello.elf", ImageFormat::Tiny),
        ] {
            let vms = s.load(&vm(file, "auto")).unwrap();
            assert_eq!(vms[0].format, format, "{file}");
        }
    }

    /// The host check and the kernel run the same planner: a bzImage whose syssize
    /// is rounded up past the end of the file boots under QEMU and is accepted by
    /// both; a Multiboot kernel keeps its path as written, for its command line.
    #[test]
    fn same_verdict_as_the_kernel() {
        let s = scratch("verdict");
        s.images();
        let mut bz = bzimage(0x020f, 1);
        bz.truncate(bz.len() - 5);
        let syssize = (bz.len() as u32 - 5 * 512).div_ceil(16);
        bz[0x1f4..0x1f8].copy_from_slice(&syssize.to_le_bytes());
        s.file("rounded", &bz);
        let vms = s
            .load(&LINUX.replace("\"bzImage\"", "\"rounded\""))
            .unwrap();
        let image = std::fs::read(&vms[0].image).unwrap();
        assert!(guest_image::plan_with(&image, vms[0].format, "", &[], 256 * MIB).is_ok());
        let vms = s
            .load("[[vm]]\nname = \"mb\"\nmemory = 16\nkernel = \"mb.bin\"\ncmdline = \"a=1\"\n")
            .unwrap();
        assert_eq!(
            (vms[0].image_path.as_str(), vms[0].cmdline.as_str()),
            ("mb.bin", "a=1")
        );
        assert_eq!(vms[0].image, s.0.join("mb.bin"));
    }

    #[test]
    fn memory_must_hold_the_image() {
        let s = scratch("fit");
        s.images();
        s.file("big.elf", &elf64(0x20_0000, 8 * MIB));
        let e = s.err("[[vm]]\nname = \"a\"\nmemory = 4\nkernel = \"big.elf\"\n");
        assert!(
            e.contains("3:10: memory: 4 MiB is too small for")
                && e.contains("needs at least 10 MiB (image segment at 0x200000"),
            "{e}"
        );
        // The fake bzImage: 16 MiB load + 8 MiB init_size, then a page for the initrd.
        let e = s.err(&LINUX.replace("256M", "24M"));
        assert!(
            e.contains("4:10: memory: 24 MiB is too small") && e.contains("at least 25 MiB"),
            "{e}"
        );
        assert!(s.load(&LINUX.replace("256M", "25M")).is_ok());
    }

    #[test]
    fn names_from_image_files() {
        let name = |p: &str| name_from(Path::new(p));
        assert_eq!(
            name("/boot/vmlinuz-6.1.0-28-amd64"),
            "vmlinuz-6.1.0-28-amd64"
        );
        assert_eq!(name("target/hv/linux/current/bzImage"), "bzImage");
        assert_eq!(name("hello64.elf"), "hello64");
        assert_eq!(name("my kernel+v2.bin"), "my_kernel_v2");
        assert_eq!(name(".bin"), ".bin");
        assert_eq!(name("/"), "vm");
        let long = name("a-rather-long-kernel-image-name-indeed.img");
        assert_eq!(long, "a-rather-long-kernel-ima");
        assert_eq!(long.len(), NAME_MAX);
        assert_eq!(name("ünïcode.elf"), "_n_code");
    }

    #[test]
    fn single_vm_from_the_command_line() {
        let s = scratch("single");
        s.images();
        let k = s.0.join("bzImage");
        let initrd = s.0.join("initrd");
        let vm = single_vm(&k, Some(&initrd), Some("console=ttyS0"), Some("128M")).unwrap();
        assert_eq!(vm.name, "bzImage");
        assert_eq!(vm.format, ImageFormat::Linux);
        assert_eq!(vm.memory_kib, 128 * 1024);
        assert_eq!(vm.modules[0].path, initrd);
        let vm = single_vm(&k, None, None, None).unwrap();
        assert_eq!(vm.memory_kib, 256 * 1024);
        let e = single_vm(&k, None, None, Some("12Q"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("command line: --memory: bad size suffix"),
            "{e}"
        );
        let e = single_vm(&s.0.join("boot.bin"), Some(&initrd), None, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("command line: --initrd: an initrd is only for Linux guests"),
            "{e}"
        );
        let e = single_vm(&s.0.join("nope"), None, None, None)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("command line: --kernel: cannot read"), "{e}");
        // A tiny ELF larger than the default grows the default.
        s.file("big.elf", &elf64(0x20_0000, 8 * MIB));
        let vm = single_vm(&s.0.join("big.elf"), None, None, None).unwrap();
        assert_eq!((vm.name.as_str(), vm.memory_kib), ("big", 10 * 1024));
        // Multiboot: QEMU's module list.
        let m = s.0.join("m.bin");
        let list = format!("{} first arg,{}", m.display(), m.display());
        let vm = single_vm(&s.0.join("mb.bin"), Some(Path::new(&list)), Some("k"), None).unwrap();
        assert_eq!(vm.format, ImageFormat::Multiboot);
        assert_eq!(vm.modules.len(), 2);
        assert_eq!(vm.modules[0].cmdline, format!("{} first arg", m.display()));
        assert_eq!(vm.modules[1].cmdline, m.display().to_string());
    }

    #[test]
    fn check_validates_vms_built_in_code() {
        let s = scratch("check");
        s.images();
        let vm = VmDef {
            format: ImageFormat::Linux,
            cmdline: "console=ttyS0".into(),
            modules: vec![ModuleDef {
                path: s.0.join("initrd"),
                cmdline: String::new(),
            }],
            ..VmDef::new("linux", s.0.join("bzImage"), 256 * 1024)
        };
        assert_eq!(check(&vm).unwrap(), vm);
        let auto = VmDef {
            format: ImageFormat::Auto,
            ..vm.clone()
        };
        assert_eq!(check(&auto).unwrap(), vm);
        let two = VmDef {
            vcpus: 2,
            ..vm.clone()
        };
        assert_eq!(check(&two).unwrap(), two);
        let none = VmDef { vcpus: 0, ..vm };
        assert_eq!(
            check(&none).unwrap_err().to_string(),
            "VM linux: vcpus: vcpus = 0: a VM has 1 to 16 vCPUs"
        );
    }

    /// The example at the workspace root is valid, given images at its paths.
    #[test]
    fn the_example_config_loads() {
        let s = scratch("example");
        for dir in ["target/hv/guests", "target/hv/linux/current"] {
            std::fs::create_dir_all(s.0.join(dir)).unwrap();
        }
        s.file("target/hv/linux/current/bzImage", &bzimage(0x020f, 1));
        s.file("target/hv/linux/current/initrd.cpio", b"070701");
        s.file("target/hv/guests/hello64.elf", &elf64(0x20_0000, 0x1000));
        s.file("target/hv/guests/spin64.elf", &elf64(0x20_0000, 0x1000));
        s.file("target/hv/guests/real16.bin", &boot_sector());
        let vms = s.load(include_str!("../../vms.example.toml")).unwrap();
        let names: Vec<&str> = vms.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["linux", "hello64", "real16", "spin64"]);
        assert_eq!(vms[0].format, ImageFormat::Linux);
        assert_eq!(vms[0].cmdline, crate::linux::LINUX_CMDLINE);
        assert!(vms[3].background);
        assert_eq!(vms[0].nics[0].mac, [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!(
            vms[1].nics,
            vec![NicDef {
                rate_mbit: 1000,
                burst_kib: 64,
                ..NicDef::on("lan", "hello64", 0)
            }]
        );
    }

    #[test]
    fn suggestions() {
        assert_eq!(levenshtein("memroy", "memory"), 2);
        assert!(unknown_key("kernal", VM_KEYS).contains("did you mean `kernel`"));
        assert!(unknown_key("image", VM_KEYS).contains("did you mean `kernel`"));
        assert!(unknown_key("smp", VM_KEYS).contains("did you mean `vcpus`"));
        assert!(!unknown_key("zzzzzz", VM_KEYS).contains("did you mean"));
        assert_eq!(line_col("ab\ncé\nx", 6), (2, 3));
    }
}

#[cfg(test)]
mod storage_tests {
    use super::*;
    use crate::vms::{PartitionUse, StoragePartition};

    /// A scratch directory with a boot sector to boot, removed when dropped.
    use super::scratch::Scratch;
    fn scratch(name: &str) -> Scratch {
        Scratch::with_boot_sector("storage", name)
    }
    trait Loads {
        fn load(&self, toml: &str) -> Result<Config, ConfigError>;
        fn err(&self, toml: &str) -> String;
    }
    impl Loads for Scratch {
        fn load(&self, toml: &str) -> Result<Config, ConfigError> {
            load_config(&self.file("vms.toml", toml.as_bytes()))
        }
        fn err(&self, toml: &str) -> String {
            self.load(toml)
                .expect_err("config should be rejected")
                .to_string()
        }
    }

    const STORAGE: &str = "[storage]\nsize = \"64M\"\n\
        [[storage.partition]]\nname = \"linux-data\"\nsize = \"16M\"\n\
        [[storage.partition]]\nname = \"shared\"\nsize = 8\n";

    fn vm(name: &str, disk: &str) -> String {
        format!("[[vm]]\nname = \"{name}\"\nmemory = 4\nkernel = \"boot.bin\"\ndisk = {disk}\n")
    }

    #[test]
    fn storage_and_partition_disks() {
        let s = scratch("ok");
        s.file("seed.img", b"seed");
        s.file("key.txt", b"correct horse\n");
        let toml = format!(
            "{}{}{}[[storage.partition]]\nname = \"vault\"\nsize = \"1M\"\nencrypted = true\n\
             key_file = \"key.txt\"\n{}",
            STORAGE.replace("size = 8\n", "size = 8\ncontents = \"seed.img\"\n"),
            vm("a", "{ partition = \"linux-data\" }"),
            vm("b", "{ partition = \"shared\", read_only = true }"),
            vm("c", "{ partition = \"vault\" }"),
        );
        // [storage] after the VMs that use it is fine too.
        let c = s.load(&toml).unwrap();
        let st = c.storage.as_ref().unwrap();
        assert_eq!(st.bytes, 64 * MIB);
        assert_eq!(st.config_stem, "vms");
        assert_eq!(st.image, None);
        assert_eq!(
            st.image_path(Path::new("/t")),
            Path::new("/t/hv/disks/vms.img")
        );
        assert_eq!(
            st.partitions[1],
            StoragePartition {
                name: "shared".into(),
                bytes: 8 * MIB,
                contents: Some(s.0.join("seed.img")),
                encrypted: false,
                key_file: None,
            }
        );
        assert_eq!(
            c.vms[0].partition,
            Some(PartitionUse {
                name: "linux-data".into(),
                read_only: false,
                encrypted: false,
                key_file: None,
            })
        );
        assert!(c.vms[1].partition.as_ref().unwrap().read_only);
        let vault = c.vms[2].partition.as_ref().unwrap();
        assert!(vault.encrypted);
        assert_eq!(
            vault.key_file.as_deref(),
            Some(s.0.join("key.txt").as_path())
        );
        // Packed: the passphrase without its newline.
        let blob = crate::vms::bundle_bytes(&c.vms).unwrap();
        let specs = bundle::read(&blob).unwrap();
        let p = specs[2].partition.unwrap();
        assert_eq!(
            (p.name, p.encrypted, p.key),
            ("vault", true, &b"correct horse"[..])
        );
        assert_eq!(specs[0].partition.unwrap().name, "linux-data");
        assert_eq!(specs[0].disk, None);
        // `image` after the partition tables belongs to the last partition table in
        // TOML; written so, it is an unknown partition key.
        let c = s
            .load(&format!(
                "{STORAGE}image = \"d/x.img\"\n{}",
                vm("a", "{ partition = \"shared\", read_only = true }"),
            ))
            .map_err(|e| e.to_string());
        assert!(c
            .unwrap_err()
            .contains("storage.partition[1].image: unknown key"));
        // An image path of one's own, relative to the file; two readers may share.
        let c = s
            .load(&format!(
                "{}{}{}",
                STORAGE.replace("size = \"64M\"\n", "size = \"64M\"\nimage = \"d/x.img\"\n"),
                vm("a", "{ partition = \"shared\", read_only = true }"),
                vm("b", "{ partition = \"shared\", read_only = true }"),
            ))
            .unwrap();
        assert_eq!(c.storage.unwrap().image, Some(s.0.join("d/x.img")));
        // Without [storage], configurations read as before.
        let c = s.load(&vm("a", "{ file = \"boot.bin\" }")).unwrap();
        assert_eq!(c.storage, None);
    }

    #[test]
    fn storage_errors_name_the_place() {
        let s = scratch("errors");
        let e = |toml: &str| s.err(toml);
        // Unknown partition name, with a suggestion, at the value.
        let m = e(&format!(
            "{STORAGE}{}",
            vm("a", "{ partition = \"linux-dat\" }")
        ));
        assert!(
            m.contains("vms.toml:13:22: disk.partition: no partition \"linux-dat\" (did you mean \"linux-data\"?); [storage] has linux-data, shared"),
            "{m}"
        );
        // No [storage] at all.
        let m = e(&vm("a", "{ partition = \"x\" }"));
        assert!(
            m.contains("5:22: disk.partition: partition \"x\": there is no [storage]"),
            "{m}"
        );
        // Both a file and a partition.
        let m = e(&format!(
            "{STORAGE}{}",
            vm("a", "{ file = \"boot.bin\", partition = \"shared\" }")
        ));
        assert!(
            m.contains("13:41: disk.partition: a disk is either a file"),
            "{m}"
        );
        let m = e(&format!("{STORAGE}{}", vm("a", "{ read_only = true }")));
        assert!(
            m.contains("disk.file: missing key `file`") && m.contains("or `partition`"),
            "{m}"
        );
        // Two VMs given one writable partition; a reader beside a writer.
        let m = e(&format!(
            "{STORAGE}{}{}",
            vm("a", "{ partition = \"shared\" }"),
            vm("b", "{ partition = \"shared\" }")
        ));
        assert!(
            m.contains("18:22: disk.partition: partition \"shared\" is already given to VM \"a\" on line 13: both would write it"),
            "{m}"
        );
        let m = e(&format!(
            "{STORAGE}{}{}",
            vm("a", "{ partition = \"shared\", read_only = true }"),
            vm("b", "{ partition = \"shared\" }")
        ));
        assert!(m.contains("one writes it while the other reads it"), "{m}");
        // Partitions that do not fit: 64 MiB holds 62 MiB of partitions.
        let m = e(&STORAGE.replace("size = 8\n", "size = 47\n"));
        assert!(
            m.contains("8:8: storage.partition[1].size: partition \"shared\" (47 MiB) does not fit: the disk is 64 MiB and 17 MiB of it"),
            "{m}"
        );
        let fits = STORAGE.replace("size = 8\n", "size = 46\n");
        assert!(s
            .load(&format!("{fits}{}", vm("a", "\"boot.bin\"")))
            .is_ok());
        // Sizes not whole MiB, zero, nonsense; a disk too small for any GPT.
        let m = e(&STORAGE.replace("\"16M\"", "\"1536K\""));
        assert!(
            m.contains("5:8: storage.partition[0].size: 1536 KiB is not a whole number of MiB"),
            "{m}"
        );
        let m = e(&STORAGE.replace("\"64M\"", "\"64M1\""));
        assert!(m.contains("2:8: storage.size: bad size suffix"), "{m}");
        let m = e(&STORAGE.replace("size = 8", "size = 0"));
        assert!(
            m.contains("storage.partition[1].size: 0 MiB: must be positive"),
            "{m}"
        );
        let m = e(&STORAGE.replace("size = 8", "size = true"));
        assert!(
            m.contains("storage.partition[1].size: expected an integer number of MiB"),
            "{m}"
        );
        let m = e("[storage]\nsize = 2\n");
        assert!(
            m.contains("2:8: storage.size: a disk of 2097152 bytes"),
            "{m}"
        );
        // Names: too long (37 UTF-16 units), twice, missing.
        let m = e(&STORAGE.replace("\"shared\"", &format!("\"{}\"", "x".repeat(37))));
        assert!(
            m.contains("7:8: storage.partition[1].name: ") && m.contains("1 to 36 UTF-16 units"),
            "{m}"
        );
        let m = e(&STORAGE.replace("\"shared\"", "\"linux-data\""));
        assert!(m.contains("7:8: storage.partition[1].name: partition name \"linux-data\" is used twice (first on line 4)"), "{m}");
        let m = e("[storage]\nsize = 64\n[[storage.partition]]\nsize = 1\n");
        assert!(
            m.contains("storage.partition[0].name: missing key `name`"),
            "{m}"
        );
        let m = e("[storage]\n[[storage.partition]]\nname = \"a\"\nsize = 1\n");
        assert!(m.contains("1:2: storage.size: missing key `size`"), "{m}");
        // Unknown keys, with suggestions.
        let m = e("[storage]\nsize = 64\nimg = \"x\"\n");
        assert!(
            m.contains("3:1: storage.img: unknown key `img` (did you mean `image`?)"),
            "{m}"
        );
        let m = e(
            "[storage]\nsize = 64\n[[storage.partition]]\nname = \"a\"\nsize = 1\nkey = \"k\"\n",
        );
        assert!(
            m.contains("storage.partition[0].key: unknown key `key`"),
            "{m}"
        );
        let m = e("[storag]\nsize = 64\n");
        assert!(
            m.contains("1:2: storag: unknown key `storag` (did you mean `storage`?)"),
            "{m}"
        );
        let m = e("[storage]\nsize = 64\n[storage.partition]\nname = \"a\"\n");
        assert!(
            m.contains("write [[partition]]") || m.contains("double brackets"),
            "{m}"
        );
        // Initial contents: missing, larger than the partition, with encryption.
        let m = e(&STORAGE.replace("size = 8\n", "size = 8\ncontents = \"gone.img\"\n"));
        assert!(
            m.contains("storage.partition[1].size: cannot read") && m.contains("gone.img"),
            "{m}"
        );
        s.file("big.img", &vec![1u8; 8 * MIB as usize + 1]);
        let m = e(&STORAGE.replace("size = 8\n", "size = 8\ncontents = \"big.img\"\n"));
        assert!(
            m.contains("(8388609 bytes) does not fit partition \"shared\" (8 MiB)"),
            "{m}"
        );
        s.file("seed.img", b"x");
        let m = e(&STORAGE.replace(
            "size = 8\n",
            "size = 8\nencrypted = true\ncontents = \"seed.img\"\n",
        ));
        assert!(m.contains("10:12: storage.partition[1].contents: initial contents for an encrypted partition are not supported"), "{m}");
        // Key files: without encryption, empty, too long, missing.
        s.file("key.txt", b"k");
        let m = e(&STORAGE.replace("size = 8\n", "size = 8\nkey_file = \"key.txt\"\n"));
        assert!(
            m.contains(
                "9:12: storage.partition[1].key_file: a key file is for an encrypted partition"
            ),
            "{m}"
        );
        s.file("empty.txt", b"\n");
        let m = e(&STORAGE.replace(
            "size = 8\n",
            "size = 8\nencrypted = true\nkey_file = \"empty.txt\"\n",
        ));
        assert!(m.contains("empty.txt holds no passphrase"), "{m}");
        s.file("long.txt", &vec![b'k'; bundle::KEY_MAX + 1]);
        let m = e(&STORAGE.replace(
            "size = 8\n",
            "size = 8\nencrypted = true\nkey_file = \"long.txt\"\n",
        ));
        assert!(
            m.contains("long.txt is 1025 bytes: a passphrase is at most 1024 bytes"),
            "{m}"
        );
        let m = e(&STORAGE.replace(
            "size = 8\n",
            "size = 8\nencrypted = true\nkey_file = \"nokey\"\n",
        ));
        assert!(
            m.contains("key_file: cannot read") && m.contains("nokey"),
            "{m}"
        );
        let m = e(&STORAGE.replace("size = 8\n", "size = 8\nencrypted = 1\n"));
        assert!(
            m.contains("storage.partition[1].encrypted: expected true or false"),
            "{m}"
        );
    }
}
