//! The configuration's `[console]` table: the management console's administrator
//! passphrase file and the Argon2id cost of the hash that xtask packs into the
//! bundle in its place (see `admin.rs`). The file is read and checked here, at its
//! key's position, so a missing or unusable passphrase is reported before anything
//! is built; it is hashed when the bundle is packed.

use toml_edit::{Item, Value};

use super::{get_str, parse_size, show_size, type_error, unknown_key, ConfigError, Loc, Source};
use super::{KIB, MIB};
use crate::admin;
use crate::vms::ConsoleDef;

const CONSOLE_KEYS: &[&str] = &[
    "admin_passphrase_file",
    "admin_kdf_memory",
    "admin_kdf_passes",
];

/// Parses `[console]`.
pub(super) fn parse(src: &Source, item: &Item, loc: &Loc) -> Result<ConsoleDef, ConfigError> {
    let Some(table) = item.as_table_like() else {
        return Err(src.err(loc, type_error("a [console] table", item)));
    };
    let mut def = ConsoleDef::new("");
    let mut file = false;
    for (key, value) in table.iter() {
        let (key_loc, value_loc) = src.entry_locs(
            table.key(key).and_then(|k| k.span()),
            value.span().filter(|_| value.is_value()),
            &format!("console.{key}"),
        );
        match key {
            "admin_passphrase_file" => {
                let path = src.resolve(get_str(src, value, &value_loc)?);
                admin::read_passphrase(&path).map_err(|m| src.err(&value_loc, m))?;
                def.admin_passphrase_file = path;
                file = true;
            }
            "admin_kdf_memory" => def.kdf_memory_kib = kdf_memory(src, value, &value_loc)?,
            "admin_kdf_passes" => {
                let n = value
                    .as_integer()
                    .ok_or_else(|| src.err(&value_loc, type_error("an integer", value)))?;
                let passes = u32::try_from(n).unwrap_or(0);
                if !(1..=bundle::ADMIN_ITERATIONS_MAX).contains(&passes) {
                    return Err(src.err(
                        &value_loc,
                        format!(
                            "{n} Argon2id passes: there must be 1 to {}",
                            bundle::ADMIN_ITERATIONS_MAX
                        ),
                    ));
                }
                def.kdf_passes = passes;
            }
            other => return Err(src.err(&key_loc, unknown_key(other, CONSOLE_KEYS))),
        }
    }
    if !file {
        return Err(src.err(
            &Loc {
                pos: loc.pos,
                key: "console.admin_passphrase_file".into(),
            },
            "missing key `admin_passphrase_file` (the file holding the administrator's \
             passphrase, which commands that change a VM ask for)",
        ));
    }
    Ok(def)
}

/// `admin_kdf_memory`: a size as `memory` takes it (a string such as "19M", or an
/// integer number of MiB), in whole KiB, within the bundle's bounds; in KiB.
fn kdf_memory(src: &Source, item: &Item, loc: &Loc) -> Result<u32, ConfigError> {
    let bytes = match item {
        Item::Value(Value::Integer(i)) => {
            let mib = *i.value();
            if mib <= 0 {
                return Err(src.err(loc, format!("{mib} MiB: must be positive")));
            }
            (mib as u64).saturating_mul(MIB)
        }
        Item::Value(Value::String(s)) => parse_size(s.value()).map_err(|m| src.err(loc, m))?,
        other => {
            return Err(src.err(
                loc,
                type_error(
                    "a string such as \"19M\" or an integer number of MiB",
                    other,
                ),
            ))
        }
    };
    if !bytes.is_multiple_of(KIB) {
        return Err(src.err(
            loc,
            format!("{}: not a whole number of KiB", show_size(bytes)),
        ));
    }
    let min = u64::from(admin::MEMORY_KIB_MIN) * KIB;
    let max = u64::from(bundle::ADMIN_MEMORY_KIB_MAX) * KIB;
    if !(min..=max).contains(&bytes) {
        return Err(src.err(
            loc,
            format!(
                "{}: the Argon2id memory must be {} to {}",
                show_size(bytes),
                show_size(min),
                show_size(max)
            ),
        ));
    }
    Ok((bytes / KIB) as u32)
}

#[cfg(test)]
mod tests {

    use crate::config::load_config;
    use crate::vms::{Config, ConsoleDef};

    use crate::config::scratch::Scratch;
    fn scratch(name: &str) -> Scratch {
        Scratch::with_boot_sector("console", name)
    }
    trait Loads {
        fn load(&self, console: &str) -> Result<Config, String>;
        fn err(&self, console: &str) -> String;
    }
    impl Loads for Scratch {
        /// `console` (the table's lines) before one VM.
        fn load(&self, console: &str) -> Result<Config, String> {
            let toml = format!("{console}{VM}");
            load_config(&self.file("vms.toml", toml.as_bytes())).map_err(|e| e.to_string())
        }
        fn err(&self, console: &str) -> String {
            self.load(console).expect_err("config should be rejected")
        }
    }

    const VM: &str = "[[vm]]\nname = \"a\"\nmemory = 4\nkernel = \"boot.bin\"\n";

    #[test]
    fn console_table() {
        let s = scratch("ok");
        std::fs::create_dir_all(s.0.join("keys")).unwrap();
        s.file("keys/admin.pass", b"correct horse\n");
        // The defaults; the path relative to the file.
        let c = s
            .load("[console]\nadmin_passphrase_file = \"keys/admin.pass\"\n")
            .unwrap();
        assert_eq!(
            c.console,
            Some(ConsoleDef::new(s.0.join("keys/admin.pass")))
        );
        assert_eq!(
            c.console.as_ref().map(|c| (c.kdf_memory_kib, c.kdf_passes)),
            Some((19 * 1024, 2))
        );
        // A cost of one's own: a size string or whole MiB, and passes.
        let c = s
            .load(
                "[console]\nadmin_passphrase_file = \"keys/admin.pass\"\n\
                 admin_kdf_memory = \"64K\"\nadmin_kdf_passes = 3\n",
            )
            .unwrap()
            .console
            .unwrap();
        assert_eq!((c.kdf_memory_kib, c.kdf_passes), (64, 3));
        let c = s
            .load(
                "[console]\nadmin_passphrase_file = \"keys/admin.pass\"\nadmin_kdf_memory = 1024\n",
            )
            .unwrap()
            .console
            .unwrap();
        assert_eq!(c.kdf_memory_kib, 1 << 20);
        // Without [console], none.
        assert_eq!(s.load("").unwrap().console, None);
    }

    #[test]
    fn console_errors_name_the_place() {
        let s = scratch("errors");
        s.file("admin.pass", b"pass\n");
        let with =
            |extra: &str| format!("[console]\nadmin_passphrase_file = \"admin.pass\"\n{extra}");
        let m = s.err("[console]\nadmin_passphrase_fil = \"admin.pass\"\n");
        assert!(
            m.contains("vms.toml:2:1: console.admin_passphrase_fil: unknown key `admin_passphrase_fil` (did you mean `admin_passphrase_file`?)"),
            "{m}"
        );
        let m = s.err("[console]\nadmin_kdf_passes = 2\n");
        assert!(
            m.contains(
                "vms.toml:1:2: console.admin_passphrase_file: missing key `admin_passphrase_file`"
            ),
            "{m}"
        );
        let m = s.err("[consol]\n");
        assert!(m.contains("(did you mean `console`?)"), "{m}");
        let m = s.err("console = 1\n");
        assert!(
            m.contains("1:1: console: expected a [console] table, found an integer"),
            "{m}"
        );
        // The passphrase file: missing, empty, with a control character, too long.
        let m = s.err("[console]\nadmin_passphrase_file = \"gone.pass\"\n");
        assert!(
            m.contains("2:25: console.admin_passphrase_file: cannot read")
                && m.contains("gone.pass"),
            "{m}"
        );
        s.file("empty.pass", b"\n");
        let m = s.err("[console]\nadmin_passphrase_file = \"empty.pass\"\n");
        assert!(
            m.contains("2:25: console.admin_passphrase_file: ")
                && m.ends_with("empty.pass holds no passphrase"),
            "{m}"
        );
        s.file("two.pass", b"line one\nline two\n");
        let m = s.err("[console]\nadmin_passphrase_file = \"two.pass\"\n");
        assert!(
            m.contains("control character (byte 0x0a at offset 8)"),
            "{m}"
        );
        s.file("long.pass", &[b'k'; crate::admin::PASSPHRASE_MAX + 1]);
        let m = s.err("[console]\nadmin_passphrase_file = \"long.pass\"\n");
        assert!(
            m.contains("holds 1025 bytes: a passphrase is at most 1024"),
            "{m}"
        );
        let m = s.err("[console]\nadmin_passphrase_file = 7\n");
        assert!(
            m.contains("2:25: console.admin_passphrase_file: expected a string"),
            "{m}"
        );
        // The cost.
        let m = s.err(&with("admin_kdf_memory = \"4K\"\n"));
        assert!(
            m.contains(
                "3:20: console.admin_kdf_memory: 4 KiB: the Argon2id memory must be 8 KiB to 1 GiB"
            ),
            "{m}"
        );
        let m = s.err(&with("admin_kdf_memory = \"2G\"\n"));
        assert!(m.contains("2 GiB: the Argon2id memory must be"), "{m}");
        let m = s.err(&with("admin_kdf_memory = 0\n"));
        assert!(m.contains("0 MiB: must be positive"), "{m}");
        let m = s.err(&with("admin_kdf_memory = \"19X\"\n"));
        assert!(
            m.contains("console.admin_kdf_memory: bad size suffix"),
            "{m}"
        );
        let m = s.err(&with("admin_kdf_memory = true\n"));
        assert!(m.contains("expected a string such as \"19M\""), "{m}");
        for (passes, at) in [("0", "3:20"), ("65", "3:20"), ("-1", "3:20")] {
            let m = s.err(&with(&format!("admin_kdf_passes = {passes}\n")));
            assert!(
                m.contains(&format!(
                    "{at}: console.admin_kdf_passes: {passes} Argon2id passes: there must be 1 to 64"
                )),
                "{m}"
            );
        }
        let m = s.err(&with("admin_kdf_passes = \"2\"\n"));
        assert!(
            m.contains("console.admin_kdf_passes: expected an integer"),
            "{m}"
        );
    }

    /// What the bundle gets: the hash of the file's passphrase (without its
    /// newline) at the configured cost, never the passphrase.
    #[test]
    fn the_bundle_carries_the_hash_only() {
        let s = scratch("pack");
        s.file("admin.pass", b"swordfish-42\r\n");
        let c = s
            .load(
                "[console]\nadmin_passphrase_file = \"admin.pass\"\n\
                 admin_kdf_memory = \"256K\"\nadmin_kdf_passes = 3\n",
            )
            .unwrap();
        let blob = crate::vms::bundle_bytes_with(&c.vms, &c.machine()).unwrap();
        let admin = bundle::read_settings(&blob).unwrap().admin.unwrap();
        assert_eq!(
            (admin.memory_kib, admin.iterations, admin.lanes),
            (256, 3, 1)
        );
        let again =
            crate::admin::admin_credential_with_salt(b"swordfish-42", 256, 3, admin.salt).unwrap();
        assert_eq!(again, admin);
        assert!(!blob.windows(9).any(|w| w == b"swordfish"));
        assert_eq!(bundle::read(&blob).unwrap()[0].name, "a");
        // Without a console: no credential.
        let blob = crate::vms::bundle_bytes(&c.vms).unwrap();
        assert_eq!(bundle::read_settings(&blob).unwrap().admin, None);
        // A passphrase file spoiled after the check is caught when packing.
        s.file("admin.pass", b"");
        let e = crate::vms::bundle_bytes_with(&c.vms, &c.machine()).unwrap_err();
        assert!(
            e.starts_with("the console's administrator passphrase: ")
                && e.contains("admin.pass holds no passphrase"),
            "{e}"
        );
    }
}
