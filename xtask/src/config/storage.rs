//! The configuration's `[storage]` table: the persistent GPT disk image and its
//! partitions, checked as far as the host can (names, whole-MiB sizes, that the
//! partitions fit the disk as `gptdisk` will lay them out, initial contents and
//! key files), and the VMs' `disk = { partition = "..." }` references to it
//! (the partition exists, no partition written by one VM is used by another).
//! Errors point at the key, as everywhere in the configuration.

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml_edit::{Item, TableLike, Value};

use super::{
    get_str, levenshtein, parse_size, show_size, table_list, type_error, unknown_key, ConfigError,
    Loc, Source, MIB,
};
use crate::vms::{StorageDef, StoragePartition, VmDef};

const STORAGE_KEYS: &[&str] = &["image", "size", "partition"];
const PARTITION_KEYS: &[&str] = &["name", "size", "contents", "encrypted", "key_file"];

/// A size in whole MiB: an integer number of MiB or a string such as "1G".
fn size(src: &Source, item: &Item, loc: &Loc) -> Result<u64, ConfigError> {
    let bytes = match item {
        Item::Value(Value::Integer(i)) => {
            let mib = *i.value();
            if mib <= 0 {
                return Err(src.err(loc, format!("{mib} MiB: must be positive")));
            }
            (mib as u64)
                .checked_mul(MIB)
                .ok_or_else(|| src.err(loc, format!("{mib} MiB is too large")))?
        }
        Item::Value(Value::String(s)) => parse_size(s.value()).map_err(|m| src.err(loc, m))?,
        other => {
            return Err(src.err(
                loc,
                type_error("an integer number of MiB or a string such as \"1G\"", other),
            ))
        }
    };
    if bytes == 0 || !bytes.is_multiple_of(MIB) {
        return Err(src.err(
            loc,
            format!(
                "{} is not a whole number of MiB (partitions are placed on 1 MiB boundaries)",
                show_size(bytes)
            ),
        ));
    }
    Ok(bytes)
}

/// A regular file's size, or an error naming it.
fn file_len(src: &Source, path: &Path, loc: &Loc) -> Result<u64, ConfigError> {
    super::file_size(src, path, loc)
}

/// Parses `[storage]` and its `[[storage.partition]]` tables.
pub(super) fn parse(src: &Source, item: &Item, loc: &Loc) -> Result<StorageDef, ConfigError> {
    let Some(table) = item.as_table_like() else {
        return Err(src.err(loc, type_error("a [storage] table", item)));
    };
    let mut image: Option<PathBuf> = None;
    let mut disk: Option<(u64, Loc)> = None;
    let mut partitions = Vec::new();
    let mut locs = Vec::new();
    for (key, value) in table.iter() {
        let (key_loc, value_loc) = src.entry_locs(
            table.key(key).and_then(|k| k.span()),
            value.span().filter(|_| value.is_value()),
            &format!("storage.{key}"),
        );
        match key {
            "image" => image = Some(src.resolve(get_str(src, value, &value_loc)?)),
            "size" => disk = Some((size(src, value, &value_loc)?, value_loc)),
            "partition" => {
                for (i, (t, span)) in
                    table_list(src, value, &key_loc, "[[storage.partition]] tables")?
                        .into_iter()
                        .enumerate()
                {
                    let (p, l) = parse_partition(src, t, span, i)?;
                    partitions.push(p);
                    locs.push(l);
                }
            }
            other => return Err(src.err(&key_loc, unknown_key(other, STORAGE_KEYS))),
        }
    }
    let (bytes, size_loc) = disk.ok_or_else(|| {
        src.err(
            &Loc {
                pos: loc.pos,
                key: "storage.size".into(),
            },
            "missing key `size` (the disk image's size, e.g. \"1G\")",
        )
    })?;
    // Names: valid GPT names, each once.
    for (i, p) in partitions.iter().enumerate() {
        let at = &locs[i].0;
        if gptdisk::name_units(&p.name).is_none() {
            return Err(src.err(
                at,
                format!(
                    "{:?} cannot be a GPT partition name: 1 to {} UTF-16 units, no NUL",
                    p.name,
                    gptdisk::NAME_UNITS
                ),
            ));
        }
        if let Some(j) = partitions[..i].iter().position(|o| o.name == p.name) {
            let line = locs[j]
                .0
                .pos
                .map(|(l, _)| format!(" (first on line {l})"))
                .unwrap_or_default();
            return Err(src.err(
                at,
                format!("partition name {:?} is used twice{line}", p.name),
            ));
        }
    }
    let def = StorageDef {
        image,
        config_stem: Path::new(&src.label)
            .file_stem()
            .map_or_else(|| "storage".into(), |s| s.to_string_lossy().into_owned()),
        bytes,
        partitions,
    };
    // The layout gptdisk will write: every partition must fit, and its initial
    // contents fit it.
    let places: Vec<Range<u64>> = gptdisk::image::plan(def.bytes, &def.specs()).map_err(|e| {
        use gptdisk::image::ImageError;
        match &e {
            ImageError::DoesNotFit { name, .. } => {
                let i = def
                    .partitions
                    .iter()
                    .position(|p| &p.name == name)
                    .unwrap_or(0);
                let used: u64 = def.partitions[..i].iter().map(|p| p.bytes).sum();
                src.err(
                    &locs[i].1,
                    format!(
                        "partition {name:?} ({}) does not fit: the disk is {} and {} of it \
                         is taken by the partitions before it and the GPT (1 MiB at the \
                         start, the backup at the end)",
                        show_size(def.partitions[i].bytes),
                        show_size(def.bytes),
                        show_size(used + MIB)
                    ),
                )
            }
            _ => src.err(&size_loc, e.to_string()),
        }
    })?;
    for (i, p) in def.partitions.iter().enumerate() {
        if let Some(c) = &p.contents {
            let len = file_len(src, c, &locs[i].1)?;
            let room = (places[i].end - places[i].start) * 512;
            if len > room {
                return Err(src.err(
                    &locs[i].1,
                    format!(
                        "{} ({}) does not fit partition {:?} ({})",
                        c.display(),
                        show_size(len),
                        p.name,
                        show_size(room)
                    ),
                ));
            }
        }
    }
    Ok(def)
}

fn parse_partition(
    src: &Source,
    table: &dyn TableLike,
    span: Option<Range<usize>>,
    index: usize,
) -> Result<(StoragePartition, (Loc, Loc)), ConfigError> {
    let prefix = format!("storage.partition[{index}]");
    let at = src.loc(span, &prefix);
    let mut name: Option<(String, Loc)> = None;
    let mut bytes: Option<(u64, Loc)> = None;
    let mut contents: Option<(PathBuf, Loc)> = None;
    let mut encrypted = false;
    let mut key_file: Option<(PathBuf, Loc)> = None;
    for (key, value) in table.iter() {
        let (key_loc, value_loc) = src.entry_locs(
            table.key(key).and_then(|k| k.span()),
            value.span(),
            &format!("{prefix}.{key}"),
        );
        match key {
            "name" => name = Some((get_str(src, value, &value_loc)?.to_string(), value_loc)),
            "size" => bytes = Some((size(src, value, &value_loc)?, value_loc)),
            "contents" => {
                contents = Some((src.resolve(get_str(src, value, &value_loc)?), value_loc))
            }
            "encrypted" => {
                encrypted = value
                    .as_bool()
                    .ok_or_else(|| src.err(&value_loc, type_error("true or false", value)))?;
            }
            "key_file" => {
                key_file = Some((src.resolve(get_str(src, value, &value_loc)?), value_loc))
            }
            other => return Err(src.err(&key_loc, unknown_key(other, PARTITION_KEYS))),
        }
    }
    let missing = |key: &str, what: &str| {
        src.err(
            &Loc {
                pos: at.pos,
                key: format!("{prefix}.{key}"),
            },
            format!("missing key `{key}` ({what})"),
        )
    };
    let (name, name_loc) = name.ok_or_else(|| missing("name", "the GPT partition name VMs use"))?;
    let (bytes, size_loc) = bytes.ok_or_else(|| missing("size", "e.g. \"256M\""))?;
    if let Some((_, loc)) = &contents {
        if encrypted {
            // diskcrypt would have to encrypt them on the way in; not there yet.
            return Err(src.err(
                loc,
                "initial contents for an encrypted partition are not supported: leave out \
                 `contents` (the guest formats the decrypted disk) or `encrypted`",
            ));
        }
    }
    if let Some((path, loc)) = &key_file {
        if !encrypted {
            return Err(src.err(
                loc,
                "a key file is for an encrypted partition: add `encrypted = true`",
            ));
        }
        let len = file_len(src, path, loc)?;
        let key = std::fs::read(path)
            .map(crate::vms::passphrase)
            .map_err(|e| src.err(loc, format!("cannot read {}: {e}", path.display())))?;
        if key.is_empty() {
            return Err(src.err(loc, format!("{} holds no passphrase", path.display())));
        }
        if key.len() > bundle::KEY_MAX {
            return Err(src.err(
                loc,
                format!(
                    "{} is {len} bytes: a passphrase is at most {} bytes",
                    path.display(),
                    bundle::KEY_MAX
                ),
            ));
        }
    }
    Ok((
        StoragePartition {
            name,
            bytes,
            contents: contents.map(|(p, _)| p),
            encrypted,
            key_file: key_file.map(|(p, _)| p),
        },
        (name_loc, size_loc),
    ))
}

/// Cross-checks the VMs' partition references against `[storage]` and completes
/// them (encryption, key file): each names an existing partition, and a partition
/// a VM writes is given to no other VM (two writers, or a reader beside a writer,
/// would each see the other's writes as corruption).
pub(super) fn check_uses(
    src: &Source,
    storage: &StorageDef,
    vms: &mut [VmDef],
    uses: &[Option<(String, bool, Loc)>],
) -> Result<(), ConfigError> {
    let mut taken: Vec<(&str, usize, bool, &Loc)> = Vec::new();
    for (i, u) in uses.iter().enumerate() {
        let Some((name, read_only, loc)) = u else {
            continue;
        };
        let Some(part) = storage.partitions.iter().find(|p| &p.name == name) else {
            let known: Vec<&str> = storage.partitions.iter().map(|p| p.name.as_str()).collect();
            let close = known
                .iter()
                .min_by_key(|k| levenshtein(name, k))
                .filter(|k| levenshtein(name, k) <= (k.len() / 3).max(1));
            let hint = close
                .map(|k| format!(" (did you mean {k:?}?)"))
                .unwrap_or_default();
            let list = if known.is_empty() {
                "[storage] has no partitions".to_string()
            } else {
                format!("[storage] has {}", known.join(", "))
            };
            return Err(src.err(loc, format!("no partition {name:?}{hint}; {list}")));
        };
        if let Some((_, j, other_ro, other_loc)) = taken
            .iter()
            .find(|(n, _, ro, _)| *n == name && !(*ro && *read_only))
        {
            let line = other_loc
                .pos
                .map(|(l, _)| format!(" on line {l}"))
                .unwrap_or_default();
            let how = if !read_only && !other_ro {
                "both would write it"
            } else {
                "one writes it while the other reads it"
            };
            return Err(src.err(
                loc,
                format!(
                    "partition {name:?} is already given to VM {:?}{line}: {how}; give each \
                     VM its own partition, or make every user read_only",
                    vms[*j].name
                ),
            ));
        }
        taken.push((name.as_str(), i, *read_only, loc));
        if let Some(p) = vms[i].partition.as_mut() {
            p.encrypted = part.encrypted;
            p.key_file = part.key_file.clone();
        }
    }
    Ok(())
}
