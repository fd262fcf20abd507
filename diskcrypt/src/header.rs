//! The 4096-byte header at the start of an encrypted partition (layout in the crate
//! documentation): parsing and validating it, writing a new one, and unlocking the
//! master key with a passphrase.

use aes_kw::KekAes256;
use alloc::vec;
use alloc::vec::Vec;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use crate::key::{KdfParams, MasterKey, ARGON2_VERSION, MASTER_KEY_LEN, RANDOM_LEN, SALT_LEN};
use crate::sector::SECTOR_SIZE;

/// Bytes in the header; also the data area's alignment.
pub const HEADER_LEN: usize = 4096;
pub const MAGIC: [u8; 8] = *b"HVCRYPT\0";
pub const VERSION: u16 = 1;
/// AES-256-XTS, 512-byte sectors, plain64 tweak.
pub const CIPHER_AES256_XTS_PLAIN64: u16 = 1;
/// Argon2id.
pub const KDF_ARGON2ID: u32 = 1;
/// RFC 3394 adds one 64-bit block to the wrapped key.
pub const WRAPPED_LEN: usize = MASTER_KEY_LEN + 8;
/// The HMAC message whose tag under the master key is the key check.
const KEY_CHECK_LABEL: &[u8] = b"hv diskcrypt key check v1";

mod off {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 8;
    pub const CIPHER: usize = 10;
    pub const HEADER_LEN: usize = 12;
    pub const DATA_OFFSET: usize = 16;
    pub const DATA_SECTORS: usize = 24;
    pub const KDF: usize = 32;
    pub const KDF_VERSION: usize = 36;
    pub const MEMORY: usize = 40;
    pub const ITERATIONS: usize = 44;
    pub const LANES: usize = 48;
    pub const RESERVED0: usize = 52;
    pub const SALT: usize = 56;
    pub const WRAPPED: usize = 88;
    pub const KEY_CHECK: usize = 160;
    pub const RESERVED1: usize = 192;
    pub const CHECKSUM: usize = 4064;
}

/// What is wrong with a header's bytes (or with parameters for a new one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer than 4096 bytes were given.
    TooShort(usize),
    /// Not an encrypted disk (or a damaged first sector).
    BadMagic,
    UnsupportedVersion(u16),
    /// The SHA-256 of the header does not match: the header was damaged.
    Checksum,
    UnsupportedCipher(u16),
    BadHeaderLength(u32),
    UnsupportedKdf(u32),
    UnsupportedKdfVersion(u32),
    KdfMemory(u32),
    KdfIterations(u32),
    KdfLanes(u32),
    /// A reserved byte (its offset) is not zero.
    ReservedNotZero(usize),
    /// The data offset is below the header's end or not 4096-aligned.
    DataOffset(u64),
    /// An empty data area.
    NoDataSectors,
    /// The data area ends past the partition (or past 2^64 bytes).
    DataBeyondPartition {
        data_offset: u64,
        data_sectors: u64,
        partition_sectors: u64,
    },
}

impl core::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::TooShort(n) => write!(f, "encryption header: {n} bytes, need {HEADER_LEN}"),
            Self::BadMagic => f.write_str("not an encrypted disk (no HVCRYPT header)"),
            Self::UnsupportedVersion(v) => {
                write!(f, "encryption header version {v} is not supported (this build reads {VERSION})")
            }
            Self::Checksum => f.write_str("encryption header is corrupted (checksum mismatch)"),
            Self::UnsupportedCipher(c) => write!(f, "encryption header: unknown cipher {c}"),
            Self::BadHeaderLength(n) => write!(f, "encryption header: header length {n}, expected {HEADER_LEN}"),
            Self::UnsupportedKdf(k) => write!(f, "encryption header: unknown key derivation {k}"),
            Self::UnsupportedKdfVersion(v) => {
                write!(f, "encryption header: Argon2 version {v:#x}, only 0x13 is supported")
            }
            Self::KdfMemory(m) => write!(
                f,
                "encryption header: Argon2 memory {m} KiB is outside 8 x lanes ..= {} KiB",
                crate::key::MAX_MEMORY_KIB
            ),
            Self::KdfIterations(t) => write!(
                f,
                "encryption header: Argon2 passes {t} outside 1..={}",
                crate::key::MAX_ITERATIONS
            ),
            Self::KdfLanes(p) => write!(
                f,
                "encryption header: Argon2 lanes {p} outside 1..={}",
                crate::key::MAX_LANES
            ),
            Self::ReservedNotZero(o) => write!(f, "encryption header: reserved byte {o} is not zero"),
            Self::DataOffset(o) => write!(
                f,
                "encryption header: data offset {o} is not a multiple of {HEADER_LEN} past the header"
            ),
            Self::NoDataSectors => f.write_str("encryption header: empty data area"),
            Self::DataBeyondPartition {
                data_offset,
                data_sectors,
                partition_sectors,
            } => write!(
                f,
                "encryption header: data area ({data_sectors} sectors at byte {data_offset}) does not fit the {partition_sectors}-sector partition"
            ),
        }
    }
}

/// Why a sound header did not give up its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnlockError {
    /// The key did not unwrap under the passphrase's key: the passphrase is wrong.
    WrongPassphrase,
    /// The key unwrapped but does not match the header's key check: the header was
    /// altered and its checksum recomputed.
    KeyCheckMismatch,
    /// The caller's Argon2 working memory is smaller than the header's parameters ask.
    KdfMemoryTooSmall {
        needed_blocks: usize,
        given_blocks: usize,
    },
    /// Argon2 refused its inputs (e.g. a passphrase longer than 2^32-1 bytes).
    Kdf(argon2::Error),
    /// The header's own parameters are invalid (only for a `Header` built by hand).
    Header(HeaderError),
}

impl core::fmt::Display for UnlockError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::WrongPassphrase => f.write_str("wrong passphrase for the encrypted disk"),
            Self::KeyCheckMismatch => {
                f.write_str("encryption header was altered: the unwrapped key fails its key check")
            }
            Self::KdfMemoryTooSmall {
                needed_blocks,
                given_blocks,
            } => write!(
                f,
                "Argon2 needs {needed_blocks} KiB of working memory, {given_blocks} KiB were given"
            ),
            Self::Kdf(e) => write!(f, "Argon2 refused its input: {e}"),
            Self::Header(e) => e.fmt(f),
        }
    }
}

/// Why a new header could not be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatError {
    /// The KDF parameters are outside the bounds a header may carry.
    Params(HeaderError),
    /// The partition has no room for a data area after the header.
    PartitionTooSmall(u64),
    /// The plaintext of an image is not whole sectors.
    NotWholeSectors(usize),
    /// The RNG gave a master key whose halves are equal.
    WeakKey,
    Kdf(argon2::Error),
}

impl core::fmt::Display for FormatError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Params(e) => e.fmt(f),
            Self::PartitionTooSmall(n) => write!(
                f,
                "a {n}-sector partition has no room for data after the {HEADER_LEN}-byte header"
            ),
            Self::NotWholeSectors(n) => write!(f, "{n} bytes is not a whole number of sectors"),
            Self::WeakKey => {
                f.write_str("the random master key has equal XTS halves (broken RNG?)")
            }
            Self::Kdf(e) => write!(f, "Argon2 refused its input: {e}"),
        }
    }
}

/// A parsed, validated header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Byte offset of the data area in the partition.
    pub data_offset: u64,
    /// Data area size in 512-byte sectors.
    pub data_sectors: u64,
    pub kdf: KdfParams,
    pub salt: [u8; SALT_LEN],
    pub wrapped_key: [u8; WRAPPED_LEN],
    pub key_check: [u8; 32],
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]))
}

fn key_check(key: &MasterKey) -> [u8; 32] {
    // HMAC accepts keys of any length: `new_from_slice` cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(KEY_CHECK_LABEL);
    mac.finalize().into_bytes().into()
}

impl Header {
    /// Parses and validates a header (`bytes` may be longer: only the first 4096
    /// count). Does not know the partition's size: see [`Header::check_fits`].
    pub fn parse(bytes: &[u8]) -> Result<Header, HeaderError> {
        let b = bytes
            .get(..HEADER_LEN)
            .ok_or(HeaderError::TooShort(bytes.len()))?;
        if b[off::MAGIC..off::MAGIC + 8] != MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let version = u16_at(b, off::VERSION);
        if version != VERSION {
            return Err(HeaderError::UnsupportedVersion(version));
        }
        let sum: [u8; 32] = Sha256::digest(&b[..off::CHECKSUM]).into();
        if sum != b[off::CHECKSUM..] {
            return Err(HeaderError::Checksum);
        }
        let cipher = u16_at(b, off::CIPHER);
        if cipher != CIPHER_AES256_XTS_PLAIN64 {
            return Err(HeaderError::UnsupportedCipher(cipher));
        }
        let hlen = u32_at(b, off::HEADER_LEN);
        if hlen as usize != HEADER_LEN {
            return Err(HeaderError::BadHeaderLength(hlen));
        }
        let kdf = u32_at(b, off::KDF);
        if kdf != KDF_ARGON2ID {
            return Err(HeaderError::UnsupportedKdf(kdf));
        }
        let kdf_version = u32_at(b, off::KDF_VERSION);
        if kdf_version != ARGON2_VERSION {
            return Err(HeaderError::UnsupportedKdfVersion(kdf_version));
        }
        let params = KdfParams {
            memory_kib: u32_at(b, off::MEMORY),
            iterations: u32_at(b, off::ITERATIONS),
            lanes: u32_at(b, off::LANES),
        };
        params.check()?;
        let reserved = (off::RESERVED0..off::SALT).chain(off::RESERVED1..off::CHECKSUM);
        if let Some(o) = reserved.into_iter().find(|&o| b[o] != 0) {
            return Err(HeaderError::ReservedNotZero(o));
        }
        let h = Header {
            data_offset: u64_at(b, off::DATA_OFFSET),
            data_sectors: u64_at(b, off::DATA_SECTORS),
            kdf: params,
            salt: b[off::SALT..off::WRAPPED]
                .try_into()
                .unwrap_or([0; SALT_LEN]),
            wrapped_key: b[off::WRAPPED..off::KEY_CHECK]
                .try_into()
                .unwrap_or([0; WRAPPED_LEN]),
            key_check: b[off::KEY_CHECK..off::RESERVED1]
                .try_into()
                .unwrap_or([0; 32]),
        };
        h.check_layout()?;
        Ok(h)
    }

    /// The checks that do not need the partition's size.
    fn check_layout(&self) -> Result<(), HeaderError> {
        if self.data_offset < HEADER_LEN as u64
            || !self.data_offset.is_multiple_of(HEADER_LEN as u64)
        {
            return Err(HeaderError::DataOffset(self.data_offset));
        }
        if self.data_sectors == 0 {
            return Err(HeaderError::NoDataSectors);
        }
        self.data_end_sector().map(|_| ())
    }

    /// The partition sector just past the data area.
    fn data_end_sector(&self) -> Result<u64, HeaderError> {
        (self.data_offset / SECTOR_SIZE as u64)
            .checked_add(self.data_sectors)
            .filter(|end| end.checked_mul(SECTOR_SIZE as u64).is_some())
            .ok_or(self.beyond(u64::MAX))
    }

    fn beyond(&self, partition_sectors: u64) -> HeaderError {
        HeaderError::DataBeyondPartition {
            data_offset: self.data_offset,
            data_sectors: self.data_sectors,
            partition_sectors,
        }
    }

    /// The first data-area sector, in partition sectors.
    pub fn data_start_sector(&self) -> u64 {
        self.data_offset / SECTOR_SIZE as u64
    }

    /// Checks that the data area lies inside a partition of `partition_sectors`.
    pub fn check_fits(&self, partition_sectors: u64) -> Result<(), HeaderError> {
        if self.data_end_sector()? > partition_sectors {
            return Err(self.beyond(partition_sectors));
        }
        Ok(())
    }

    /// The header's 4096 bytes, checksum included.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN];
        b[off::MAGIC..off::MAGIC + 8].copy_from_slice(&MAGIC);
        b[off::VERSION..][..2].copy_from_slice(&VERSION.to_le_bytes());
        b[off::CIPHER..][..2].copy_from_slice(&CIPHER_AES256_XTS_PLAIN64.to_le_bytes());
        b[off::HEADER_LEN..][..4].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        b[off::DATA_OFFSET..][..8].copy_from_slice(&self.data_offset.to_le_bytes());
        b[off::DATA_SECTORS..][..8].copy_from_slice(&self.data_sectors.to_le_bytes());
        b[off::KDF..][..4].copy_from_slice(&KDF_ARGON2ID.to_le_bytes());
        b[off::KDF_VERSION..][..4].copy_from_slice(&ARGON2_VERSION.to_le_bytes());
        b[off::MEMORY..][..4].copy_from_slice(&self.kdf.memory_kib.to_le_bytes());
        b[off::ITERATIONS..][..4].copy_from_slice(&self.kdf.iterations.to_le_bytes());
        b[off::LANES..][..4].copy_from_slice(&self.kdf.lanes.to_le_bytes());
        b[off::SALT..off::WRAPPED].copy_from_slice(&self.salt);
        b[off::WRAPPED..off::KEY_CHECK].copy_from_slice(&self.wrapped_key);
        b[off::KEY_CHECK..off::RESERVED1].copy_from_slice(&self.key_check);
        seal(&mut b);
        b
    }

    /// Writes a header for a new partition of `partition_sectors`: the data area
    /// starts right after the header and fills the rest. `random` is 96 bytes from
    /// the caller's RNG (salt, then master key). Allocates Argon2's working memory.
    pub fn format(
        passphrase: &[u8],
        kdf: KdfParams,
        random: &[u8; RANDOM_LEN],
        partition_sectors: u64,
    ) -> Result<(Vec<u8>, MasterKey), FormatError> {
        kdf.check().map_err(FormatError::Params)?;
        let header_sectors = (HEADER_LEN / SECTOR_SIZE) as u64;
        let data_sectors = partition_sectors
            .checked_sub(header_sectors)
            .filter(|&n| n > 0)
            .ok_or(FormatError::PartitionTooSmall(partition_sectors))?;
        let salt: [u8; SALT_LEN] = random[..SALT_LEN].try_into().unwrap_or([0; SALT_LEN]);
        let mut key_bytes = Zeroizing::new([0u8; MASTER_KEY_LEN]);
        key_bytes.copy_from_slice(&random[SALT_LEN..]);
        let key = MasterKey::from_bytes(*key_bytes);
        if !key.halves_differ() {
            return Err(FormatError::WeakKey);
        }
        let kek = derive_kek(passphrase, &salt, &kdf, None).map_err(|e| match e {
            UnlockError::Kdf(e) => FormatError::Kdf(e),
            UnlockError::Header(e) => FormatError::Params(e),
            _ => FormatError::Params(HeaderError::KdfMemory(kdf.memory_kib)),
        })?;
        let mut wrapped_key = [0u8; WRAPPED_LEN];
        KekAes256::from(*kek)
            .wrap(key.as_bytes(), &mut wrapped_key)
            .unwrap_or_else(|_| unreachable!("64 bytes wrap into 72"));
        let header = Header {
            data_offset: HEADER_LEN as u64,
            data_sectors,
            kdf,
            salt,
            wrapped_key,
            key_check: key_check(&key),
        };
        Ok((header.to_bytes(), key))
    }

    /// Derives the key encryption key from `passphrase` with Argon2id in the caller's
    /// working memory (at least [`KdfParams::memory_blocks`] blocks; it is zeroized
    /// afterwards), unwraps the master key and checks it.
    pub fn unlock(
        &self,
        passphrase: &[u8],
        kdf_memory: &mut [crate::KdfBlock],
    ) -> Result<MasterKey, UnlockError> {
        let kek = derive_kek(passphrase, &self.salt, &self.kdf, Some(kdf_memory))?;
        let mut bytes = Zeroizing::new([0u8; MASTER_KEY_LEN]);
        // RFC 3394 §2.2.3: the integrity check value fails under any other KEK.
        KekAes256::from(*kek)
            .unwrap(&self.wrapped_key, &mut *bytes)
            .map_err(|_| UnlockError::WrongPassphrase)?;
        let key = MasterKey::from_bytes(*bytes);
        if !bool::from(key_check(&key).ct_eq(&self.key_check)) {
            return Err(UnlockError::KeyCheckMismatch);
        }
        Ok(key)
    }

    /// [`Header::unlock`] with working memory from the heap.
    pub fn unlock_alloc(&self, passphrase: &[u8]) -> Result<MasterKey, UnlockError> {
        let blocks = self.kdf.memory_blocks().map_err(UnlockError::Header)?;
        let mut memory = vec![crate::KdfBlock::default(); blocks];
        self.unlock(passphrase, &mut memory)
    }
}

/// Writes the SHA-256 of bytes 0..4064 into the last 32.
pub(crate) fn seal(b: &mut [u8]) {
    let sum: [u8; 32] = Sha256::digest(&b[..off::CHECKSUM]).into();
    b[off::CHECKSUM..HEADER_LEN].copy_from_slice(&sum);
}

/// Argon2id(passphrase, salt) -> 32-byte KEK, in `memory` or in a heap buffer.
fn derive_kek(
    passphrase: &[u8],
    salt: &[u8; SALT_LEN],
    kdf: &KdfParams,
    memory: Option<&mut [crate::KdfBlock]>,
) -> Result<Zeroizing<[u8; 32]>, UnlockError> {
    let params = kdf.argon2().map_err(UnlockError::Header)?;
    let needed = params.block_count();
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut kek = Zeroizing::new([0u8; 32]);
    let mut owned;
    let memory = match memory {
        Some(m) => m,
        None => {
            owned = vec![crate::KdfBlock::default(); needed];
            &mut owned[..]
        }
    };
    if memory.len() < needed {
        return Err(UnlockError::KdfMemoryTooSmall {
            needed_blocks: needed,
            given_blocks: memory.len(),
        });
    }
    let result = argon.hash_password_into_with_memory(passphrase, salt, &mut *kek, &mut *memory);
    // The blocks hold values derived from the passphrase.
    memory[..needed].iter_mut().for_each(Zeroize::zeroize);
    result.map_err(UnlockError::Kdf)?;
    Ok(kek)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fast parameters for tests: 64 KiB, one pass.
    pub const FAST: KdfParams = KdfParams {
        memory_kib: 64,
        iterations: 1,
        lanes: 1,
    };

    fn random() -> [u8; RANDOM_LEN] {
        let mut r = [0u8; RANDOM_LEN];
        for (i, b) in r.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(11);
        }
        r
    }

    fn formatted() -> (Vec<u8>, MasterKey) {
        Header::format(b"correct horse", FAST, &random(), 1000).unwrap()
    }

    #[test]
    fn round_trip() {
        let (bytes, key) = formatted();
        assert_eq!(bytes.len(), HEADER_LEN);
        let h = Header::parse(&bytes).unwrap();
        assert_eq!(h.data_offset, 4096);
        assert_eq!(h.data_sectors, 992);
        assert_eq!(h.kdf, FAST);
        assert_eq!(h.salt[..], random()[..32]);
        assert_eq!(h.to_bytes(), bytes);
        h.check_fits(1000).unwrap();
        let mut mem = vec![crate::KdfBlock::default(); FAST.memory_blocks().unwrap()];
        let got = h.unlock(b"correct horse", &mut mem).unwrap();
        assert_eq!(got.as_bytes(), key.as_bytes());
        assert_eq!(key.as_bytes()[..], random()[32..]);
        // The key is stored only wrapped.
        assert!(!bytes.windows(16).any(|w| w == &key.as_bytes()[..16]));
        assert_eq!(
            h.unlock_alloc(b"correct horse").unwrap().as_bytes(),
            key.as_bytes()
        );
    }

    #[test]
    fn wrong_passphrase_refused() {
        let (bytes, _) = formatted();
        let h = Header::parse(&bytes).unwrap();
        assert_eq!(
            h.unlock_alloc(b"correct horsf").unwrap_err(),
            UnlockError::WrongPassphrase
        );
        assert_eq!(
            h.unlock_alloc(b"").unwrap_err(),
            UnlockError::WrongPassphrase
        );
    }

    #[test]
    fn small_kdf_memory_refused() {
        let (bytes, _) = formatted();
        let h = Header::parse(&bytes).unwrap();
        let mut mem = vec![crate::KdfBlock::default(); 63];
        assert_eq!(
            h.unlock(b"correct horse", &mut mem).unwrap_err(),
            UnlockError::KdfMemoryTooSmall {
                needed_blocks: 64,
                given_blocks: 63
            }
        );
    }

    #[test]
    fn any_flipped_byte_is_caught() {
        let (bytes, _) = formatted();
        // Every byte past the version is covered by the checksum (the magic and the
        // version are checked before it: their errors come first).
        for i in 0..HEADER_LEN {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            let want = match i {
                0..=7 => HeaderError::BadMagic,
                8 => HeaderError::UnsupportedVersion(VERSION ^ 0x40),
                9 => HeaderError::UnsupportedVersion(VERSION ^ 0x4000),
                _ => HeaderError::Checksum,
            };
            assert_eq!(Header::parse(&b), Err(want), "byte {i}");
        }
        assert_eq!(
            Header::parse(&bytes[..4095]),
            Err(HeaderError::TooShort(4095))
        );
    }

    /// Sets a field and recomputes the checksum: a header that is consistent but
    /// says something unacceptable.
    fn with(bytes: &[u8], at: usize, value: &[u8]) -> Vec<u8> {
        let mut b = bytes.to_vec();
        b[at..at + value.len()].copy_from_slice(value);
        seal(&mut b);
        b
    }

    #[test]
    fn each_field_validated() {
        let (bytes, _) = formatted();
        let cases: &[(usize, &[u8], HeaderError)] = &[
            (
                off::CIPHER,
                &2u16.to_le_bytes(),
                HeaderError::UnsupportedCipher(2),
            ),
            (
                off::HEADER_LEN,
                &512u32.to_le_bytes(),
                HeaderError::BadHeaderLength(512),
            ),
            (
                off::KDF,
                &2u32.to_le_bytes(),
                HeaderError::UnsupportedKdf(2),
            ),
            (
                off::KDF_VERSION,
                &0x10u32.to_le_bytes(),
                HeaderError::UnsupportedKdfVersion(0x10),
            ),
            (
                off::MEMORY,
                &((1u32 << 20) + 1).to_le_bytes(),
                HeaderError::KdfMemory((1 << 20) + 1),
            ),
            (off::MEMORY, &7u32.to_le_bytes(), HeaderError::KdfMemory(7)),
            (
                off::ITERATIONS,
                &0u32.to_le_bytes(),
                HeaderError::KdfIterations(0),
            ),
            (
                off::ITERATIONS,
                &65u32.to_le_bytes(),
                HeaderError::KdfIterations(65),
            ),
            (off::LANES, &0u32.to_le_bytes(), HeaderError::KdfLanes(0)),
            (off::LANES, &17u32.to_le_bytes(), HeaderError::KdfLanes(17)),
            (off::LANES, &9u32.to_le_bytes(), HeaderError::KdfMemory(64)),
            (off::RESERVED0 + 3, &[1], HeaderError::ReservedNotZero(55)),
            (2000, &[1], HeaderError::ReservedNotZero(2000)),
            (off::CHECKSUM - 1, &[1], HeaderError::ReservedNotZero(4063)),
            (
                off::DATA_OFFSET,
                &0u64.to_le_bytes(),
                HeaderError::DataOffset(0),
            ),
            (
                off::DATA_OFFSET,
                &4608u64.to_le_bytes(),
                HeaderError::DataOffset(4608),
            ),
            (
                off::DATA_SECTORS,
                &0u64.to_le_bytes(),
                HeaderError::NoDataSectors,
            ),
            (
                off::DATA_SECTORS,
                &u64::MAX.to_le_bytes(),
                HeaderError::DataBeyondPartition {
                    data_offset: 4096,
                    data_sectors: u64::MAX,
                    partition_sectors: u64::MAX,
                },
            ),
        ];
        for (at, value, want) in cases {
            let b = with(&bytes, *at, value);
            assert_eq!(Header::parse(&b), Err(*want), "field at {at}");
            // Every error has a message.
            assert!(!alloc::format!("{want}").is_empty());
        }
        // A version this build does not know, even with a valid checksum.
        assert_eq!(
            Header::parse(&with(&bytes, off::VERSION, &2u16.to_le_bytes())),
            Err(HeaderError::UnsupportedVersion(2))
        );
    }

    #[test]
    fn data_area_must_fit_partition() {
        let (bytes, _) = formatted();
        let h = Header::parse(&bytes).unwrap();
        h.check_fits(1000).unwrap();
        assert_eq!(
            h.check_fits(999),
            Err(HeaderError::DataBeyondPartition {
                data_offset: 4096,
                data_sectors: 992,
                partition_sectors: 999
            })
        );
        let far =
            Header::parse(&with(&bytes, off::DATA_OFFSET, &(1u64 << 40).to_le_bytes())).unwrap();
        assert!(far.check_fits(1000).is_err());
    }

    #[test]
    fn altered_wrapped_key_or_check() {
        let (bytes, _) = formatted();
        // A resealed header whose key check belongs to another key.
        let b = with(&bytes, off::KEY_CHECK, &[0u8; 32]);
        assert_eq!(
            Header::parse(&b)
                .unwrap()
                .unlock_alloc(b"correct horse")
                .unwrap_err(),
            UnlockError::KeyCheckMismatch
        );
        // A resealed header with a damaged wrapped key cannot be told from a wrong
        // passphrase by the key alone; the checksum is what catches damage.
        let mut w = bytes.clone();
        w[off::WRAPPED] ^= 1;
        assert_eq!(Header::parse(&w), Err(HeaderError::Checksum));
    }

    #[test]
    fn format_refusals() {
        assert_eq!(
            Header::format(b"p", FAST, &random(), 8).unwrap_err(),
            FormatError::PartitionTooSmall(8)
        );
        let bad = KdfParams {
            iterations: 0,
            ..FAST
        };
        assert_eq!(
            Header::format(b"p", bad, &random(), 100).unwrap_err(),
            FormatError::Params(HeaderError::KdfIterations(0))
        );
        let mut r = random();
        r[64..].copy_from_slice(&[9; 32]);
        r[32..64].copy_from_slice(&[9; 32]);
        assert_eq!(
            Header::format(b"p", FAST, &r, 100).unwrap_err(),
            FormatError::WeakKey
        );
    }

    #[test]
    fn salt_and_passphrase_change_the_wrapping() {
        let (a, _) = Header::format(b"one", FAST, &random(), 100).unwrap();
        let (b, _) = Header::format(b"two", FAST, &random(), 100).unwrap();
        let mut r = random();
        r[0] ^= 1;
        let (c, _) = Header::format(b"one", FAST, &r, 100).unwrap();
        let w = |x: &[u8]| x[off::WRAPPED..off::KEY_CHECK].to_vec();
        assert_ne!(w(&a), w(&b));
        assert_ne!(w(&a), w(&c));
        // Same key, same check.
        assert_eq!(
            a[off::KEY_CHECK..off::RESERVED1],
            b[off::KEY_CHECK..off::RESERVED1]
        );
    }
}
