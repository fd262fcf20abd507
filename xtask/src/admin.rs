//! The management console's administrator credential, host side: the passphrase
//! file (`[console] admin_passphrase_file`, or the default run's
//! `target/hv/console.pass`, made with a random passphrase), its checks, and the
//! Argon2id hash of it that the bundle's machine record carries
//! (`bundle::AdminCredential`). Only the hash goes into the bundle: the passphrase
//! stays on the host, and the console derives the same hash from what is typed.
//!
//! The hashing is the `argon2` crate's (RustCrypto), as `diskcrypt` uses it; the
//! salt comes from the host's `/dev/urandom`, as an encrypted partition's does
//! (`storage.rs`).

use std::path::Path;

use bundle::{AdminCredential, ADMIN_HASH_LEN, ADMIN_SALT_LEN};

/// Longest passphrase, in bytes: what a partition's key file may hold
/// ([`bundle::KEY_MAX`]); a longer file is more likely the wrong file than
/// something anyone types.
pub const PASSPHRASE_MAX: usize = bundle::KEY_MAX;
/// Argon2id memory when the configuration names none: 19 MiB, with
/// [`DEFAULT_PASSES`] the smallest setting OWASP's password storage guidance accepts
/// for Argon2id, and what `diskcrypt` uses for encrypted disks.
pub const DEFAULT_MEMORY_KIB: u32 = 19 * 1024;
/// Argon2id passes when the configuration names none.
pub const DEFAULT_PASSES: u32 = 2;
/// Lanes: one. The kernel computes lanes one after the other, so more of them cost
/// the console time without slowing an attacker's parallel hardware.
pub const LANES: u32 = 1;

/// Whether `passphrase` can be the administrator's: not empty, at most
/// [`PASSPHRASE_MAX`] bytes, and no ASCII control characters (it is typed on the
/// serial console, whose line editor takes those as keys: Enter, Backspace, Ctrl-C).
pub fn check_passphrase(passphrase: &[u8]) -> Result<(), String> {
    if passphrase.is_empty() {
        return Err("holds no passphrase".into());
    }
    if passphrase.len() > PASSPHRASE_MAX {
        return Err(format!(
            "holds {} bytes: a passphrase is at most {PASSPHRASE_MAX} bytes",
            passphrase.len()
        ));
    }
    if let Some(at) = passphrase.iter().position(|&b| b.is_ascii_control()) {
        return Err(format!(
            "holds a control character (byte {:#04x} at offset {at}): the passphrase is \
             typed on the serial console, where those are keys",
            passphrase[at]
        ));
    }
    Ok(())
}

/// The passphrase in the file at `path`: its contents without one trailing newline
/// ([`crate::vms::passphrase`]), checked with [`check_passphrase`].
pub fn read_passphrase(path: &Path) -> Result<Vec<u8>, String> {
    let passphrase = std::fs::read(path)
        .map(crate::vms::passphrase)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    check_passphrase(&passphrase).map_err(|why| format!("{} {why}", path.display()))?;
    Ok(passphrase)
}

/// The least Argon2id memory with [`LANES`] lanes, in KiB (RFC 9106 §3.1: 8 per
/// lane).
pub const MEMORY_KIB_MIN: u32 = 8 * LANES;

/// Whether Argon2id `memory_kib` and `passes` (with [`LANES`] lanes) are within
/// what the bundle carries ([`bundle::admin_ok`]); the message names the bounds.
pub fn check_cost(memory_kib: u32, passes: u32) -> Result<(), String> {
    if !(MEMORY_KIB_MIN..=bundle::ADMIN_MEMORY_KIB_MAX).contains(&memory_kib) {
        return Err(format!(
            "Argon2id memory of {memory_kib} KiB: it must be {MEMORY_KIB_MIN} KiB to {} GiB",
            bundle::ADMIN_MEMORY_KIB_MAX >> 20
        ));
    }
    if !(1..=bundle::ADMIN_ITERATIONS_MAX).contains(&passes) {
        return Err(format!(
            "{passes} Argon2id passes: there must be 1 to {}",
            bundle::ADMIN_ITERATIONS_MAX
        ));
    }
    Ok(())
}

/// The credential for `passphrase`: its Argon2id hash (version 0x13, [`LANES`]
/// lane, 32 bytes out, no secret or associated data) under a fresh random salt.
pub fn admin_credential(
    passphrase: &[u8],
    memory_kib: u32,
    passes: u32,
) -> Result<AdminCredential, String> {
    let mut salt = [0u8; ADMIN_SALT_LEN];
    os_random(&mut salt)?;
    admin_credential_with_salt(passphrase, memory_kib, passes, salt)
}

/// [`admin_credential`] with the salt given (the tests' known answers).
pub fn admin_credential_with_salt(
    passphrase: &[u8],
    memory_kib: u32,
    passes: u32,
    salt: [u8; ADMIN_SALT_LEN],
) -> Result<AdminCredential, String> {
    use argon2::{Algorithm, Argon2, Block, Params, Version};
    check_passphrase(passphrase).map_err(|why| format!("the passphrase {why}"))?;
    check_cost(memory_kib, passes)?;
    // Within check_cost's bounds the crate's own limits hold, so this fails only on
    // a bug; its message then says which.
    let params = Params::new(memory_kib, passes, LANES, Some(ADMIN_HASH_LEN))
        .map_err(|e| format!("Argon2id parameters: {e}"))?;
    let mut memory = vec![Block::default(); params.block_count()];
    let mut hash = [0u8; ADMIN_HASH_LEN];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into_with_memory(passphrase, &salt, &mut hash, &mut memory[..])
        .map_err(|e| format!("Argon2id: {e}"))?;
    let credential = AdminCredential {
        memory_kib,
        iterations: passes,
        lanes: LANES,
        salt,
        hash,
    };
    debug_assert!(bundle::admin_ok(&credential));
    Ok(credential)
}

/// Fills `buf` from the host's `/dev/urandom`.
pub fn os_random(buf: &mut [u8]) -> Result<(), String> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .map_err(|e| format!("reading /dev/urandom: {e}"))
}

/// RFC 4648's base32 alphabet, in lower case (easier to type).
const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// A random passphrase of 20 base32 characters (100 bits) in four groups of five:
/// `k3vqa-m7xdp-...`. Each character takes the low 5 bits of one random byte: 256 is
/// a multiple of 32, so every character is equally likely.
pub fn random_passphrase() -> Result<String, String> {
    let mut random = [0u8; 20];
    os_random(&mut random)?;
    let groups: Vec<String> = random
        .chunks(5)
        .map(|g| {
            g.iter()
                .map(|&b| BASE32[usize::from(b & 31)] as char)
                .collect()
        })
        .collect();
    random.fill(0);
    Ok(groups.join("-"))
}

/// Makes the passphrase file `path` with a [`random_passphrase`] (owner read/write
/// only) when there is none; an existing file is kept as it is (its owner may have
/// put a passphrase of their choosing in it). Returns whether it was made.
pub fn random_passphrase_file(path: &Path) -> Result<bool, String> {
    use std::io::Write;
    if path.exists() {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let passphrase = random_passphrase()?;
    options
        .open(path)
        .and_then(|mut f| f.write_all(format!("{passphrase}\n").as_bytes()))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(true)
}

/// The credential for `console`: its passphrase file read and hashed at its cost.
pub fn credential(console: &crate::vms::ConsoleDef) -> Result<AdminCredential, String> {
    let passphrase = read_passphrase(&console.admin_passphrase_file)?;
    admin_credential(&passphrase, console.kdf_memory_kib, console.kdf_passes)
        .map_err(|e| format!("{}: {e}", console.admin_passphrase_file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    /// Known answers from the reference C implementation (Debian's `argon2` 0~20171227,
    /// an implementation independent of the `argon2` crate):
    /// `printf '%s' PASSPHRASE | argon2 SALT -id -t PASSES -k MEMORY_KIB -p 1 -l 32 -r`.
    #[test]
    fn known_answers_of_the_reference_implementation() {
        let c = admin_credential_with_salt(
            b"correct horse battery staple",
            DEFAULT_MEMORY_KIB,
            DEFAULT_PASSES,
            *b"hv-console-salt!",
        )
        .unwrap();
        assert_eq!(
            c.hash,
            hex("9f6d301d0a92b543cc54007fdc9d682f7eb49d3625ffc41da3a732869c5254d1")
        );
        assert_eq!(
            (c.memory_kib, c.iterations, c.lanes, &c.salt),
            (19 * 1024, 2, 1, b"hv-console-salt!")
        );
        let c = admin_credential_with_salt(b"admin", 64, 1, *b"0123456789abcdef").unwrap();
        assert_eq!(
            c.hash,
            hex("e018102dc84019ad32ce7d639c8d3b94b29084efc2d50d16da230f3c1bd1a898")
        );
    }

    /// A random salt each time; the hash is what the `argon2` crate, called on its
    /// own with the same salt and cost, computes for the passphrase, and another
    /// passphrase gives another hash.
    #[test]
    fn fresh_salts_and_an_independent_call_agree() {
        let a = admin_credential(b"open sesame", 256, 3).unwrap();
        let b = admin_credential(b"open sesame", 256, 3).unwrap();
        assert_ne!(a.salt, b.salt);
        assert_ne!(a.hash, b.hash);
        for c in [a, b] {
            let mut expected = [0u8; 32];
            argon2::Argon2::new(
                argon2::Algorithm::Argon2id,
                argon2::Version::V0x13,
                argon2::Params::new(256, 3, 1, Some(32)).unwrap(),
            )
            .hash_password_into_with_memory(
                b"open sesame",
                &c.salt,
                &mut expected,
                vec![argon2::Block::default(); 256],
            )
            .unwrap();
            assert_eq!(c.hash, expected);
            assert!(bundle::admin_ok(&c));
        }
        let other = admin_credential_with_salt(b"open sesame!", 256, 3, a.salt).unwrap();
        assert_ne!(other.hash, a.hash);
    }

    /// The bundle's bounds are diskcrypt's: an encrypted disk and the console take
    /// the same Argon2id costs.
    #[test]
    fn bounds_match_diskcrypt() {
        assert_eq!(bundle::ADMIN_MEMORY_KIB_MAX, diskcrypt::key::MAX_MEMORY_KIB);
        assert_eq!(bundle::ADMIN_ITERATIONS_MAX, diskcrypt::key::MAX_ITERATIONS);
        assert_eq!(bundle::ADMIN_LANES_MAX, diskcrypt::key::MAX_LANES);
        for (m, t, p) in [
            (8, 1, 1),
            (7, 1, 1),
            (1 << 20, 64, 16),
            ((1 << 20) + 1, 1, 1),
            (16, 65, 1),
            (16, 0, 1),
            (127, 1, 16),
            (128, 1, 16),
            (136, 1, 17),
            (8, 1, 0),
        ] {
            let kdf = diskcrypt::KdfParams {
                memory_kib: m,
                iterations: t,
                lanes: p,
            };
            let c = AdminCredential {
                memory_kib: m,
                iterations: t,
                lanes: p,
                salt: [0; 16],
                hash: [0; 32],
            };
            assert_eq!(bundle::admin_ok(&c), kdf.check().is_ok(), "{kdf:?}");
        }
    }

    #[test]
    fn passphrases_and_costs_are_checked() {
        assert!(check_passphrase(b"x").is_ok());
        assert!(check_passphrase("grüße aus köln".as_bytes()).is_ok());
        assert!(check_passphrase(&[b'k'; PASSPHRASE_MAX]).is_ok());
        assert_eq!(check_passphrase(b""), Err("holds no passphrase".into()));
        let e = check_passphrase(&[b'k'; PASSPHRASE_MAX + 1]).unwrap_err();
        assert!(
            e.contains("1025 bytes") && e.contains("at most 1024"),
            "{e}"
        );
        let e = check_passphrase(b"two\nlines").unwrap_err();
        assert!(e.contains("byte 0x0a at offset 3"), "{e}");
        assert!(check_passphrase(b"tab\there").is_err());
        assert!(check_passphrase(b"del\x7f").is_err());
        assert!(admin_credential(b"", 64, 1).is_err());
        let e = admin_credential(b"x", 7, 1).unwrap_err();
        assert!(e.contains("7 KiB") && e.contains("8 KiB to 1 GiB"), "{e}");
        assert!(admin_credential(b"x", (1 << 20) + 1, 1).is_err());
        let e = admin_credential(b"x", 64, 0).unwrap_err();
        assert!(e.contains("1 to 64"), "{e}");
        assert!(admin_credential(b"x", 64, 65).is_err());
    }

    #[test]
    fn random_passphrase_files() {
        let dir = std::env::temp_dir().join(format!("hv-admin-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub").join("console.pass");
        assert!(random_passphrase_file(&path).unwrap());
        let text = std::fs::read_to_string(&path).unwrap();
        let passphrase = text.strip_suffix('\n').unwrap();
        assert_eq!(passphrase.len(), 23, "{passphrase}");
        let groups: Vec<&str> = passphrase.split('-').collect();
        assert_eq!(groups.len(), 4);
        assert!(groups
            .iter()
            .all(|g| g.len() == 5 && g.bytes().all(|b| BASE32.contains(&b))));
        assert_eq!(read_passphrase(&path).unwrap(), passphrase.as_bytes());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Kept once made (and another one differs).
        std::fs::write(&path, "my own\n").unwrap();
        assert!(!random_passphrase_file(&path).unwrap());
        assert_eq!(read_passphrase(&path).unwrap(), b"my own");
        assert_ne!(random_passphrase().unwrap(), random_passphrase().unwrap());
        // A file that holds nothing usable.
        std::fs::write(&path, "\n").unwrap();
        let e = read_passphrase(&path).unwrap_err();
        assert!(e.ends_with("console.pass holds no passphrase"), "{e}");
        let e = read_passphrase(&dir.join("missing")).unwrap_err();
        assert!(e.starts_with("cannot read") && e.contains("missing"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
