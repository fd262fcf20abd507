//! Encrypted-at-rest VM disks (issue: storage): the on-disk format, unlocking it with
//! a passphrase, per-sector AES-256-XTS, and a [`virtio::BlockBackend`] adapter that
//! en/decrypts a partition's data area.
//!
//! Every cryptographic primitive comes from a RustCrypto crate (`aes`, `aes-kw`,
//! `argon2`, `hmac`, `sha2`) or from `xts-mode`, which builds IEEE 1619 XTS on
//! RustCrypto's `cipher` traits; nothing here is hand-written cryptography. This crate
//! only lays out bytes, validates them, and chooses the parameters.
//!
//! * [`header`]: the header ([`Header::parse`], [`Header::format`], [`Header::unlock`]).
//! * [`key`]: the master key ([`MasterKey`], zeroized on drop) and KDF parameters.
//! * [`sector`]: [`SectorCipher`], AES-256-XTS on 512-byte sectors.
//! * [`backend`]: [`EncryptedBackend`], the decrypted view of a whole partition.
//!
//! # On-disk layout (format version 1)
//!
//! A partition (or whole disk image) holds a 4096-byte header at byte 0 and the
//! encrypted data area at `data_offset`. All integers are little-endian.
//!
//! | bytes        | field            | meaning |
//! | ------------ | ---------------- | ------- |
//! | 0..8         | magic            | `b"HVCRYPT\0"` |
//! | 8..10        | version          | `1` |
//! | 10..12       | cipher           | `1` = AES-256-XTS, 512-byte sectors, tweak = data-area sector number as a 128-bit little-endian integer (dm-crypt's `aes-xts-plain64`) |
//! | 12..16       | header length    | `4096` |
//! | 16..24       | data offset      | bytes from the partition start to the data area; a multiple of 4096, at least 4096 |
//! | 24..32       | data sectors     | size of the data area in 512-byte sectors, at least 1 |
//! | 32..36       | kdf              | `1` = Argon2id (RFC 9106) |
//! | 36..40       | Argon2 version   | `0x13` |
//! | 40..44       | Argon2 memory    | m in KiB, 8 x lanes ..= 1 GiB (1,048,576) |
//! | 44..48       | Argon2 passes    | t, 1 ..= 64 |
//! | 48..52       | Argon2 lanes     | p, 1 ..= 16 |
//! | 52..56       | reserved         | zero |
//! | 56..88       | salt             | 32 random bytes |
//! | 88..160      | wrapped key      | the 64-byte master key wrapped with AES-256 key wrap (RFC 3394) under the 32-byte Argon2id output: 72 bytes |
//! | 160..192     | key check        | HMAC-SHA256(master key, `"hv diskcrypt key check v1"`) |
//! | 192..4064    | reserved         | zero |
//! | 4064..4096   | checksum         | SHA-256 of bytes 0..4064 |
//!
//! The master key's first 32 bytes are XTS key 1 (data), the last 32 key 2 (tweak),
//! the order of IEEE 1619-2007 §5.1 and of the 64-byte key dm-crypt takes.
//!
//! Reading a header checks, in order: length, magic, version (a later version may
//! move the checksum), checksum, then every field. A header whose checksum fails was
//! damaged ([`HeaderError::Checksum`]); a sound header whose key does not unwrap was
//! given the wrong passphrase ([`UnlockError::WrongPassphrase`]). RFC 3394's integrity
//! check detects the wrong key encryption key with certainty 1 - 2^-64; the key check
//! then binds the unwrapped key to the header a second time (and lets a master key
//! from elsewhere, such as a future recovery slot, be verified without a passphrase).

#![no_std]

extern crate alloc;

#[cfg(test)]
extern crate std;

pub mod backend;
pub mod header;
pub mod key;
pub mod sector;

/// One 1 KiB block of Argon2 working memory (64-byte aligned): what
/// [`Header::unlock`] and [`EncryptedBackend::open`] take a slice of, re-exported so
/// that callers need no direct `argon2` dependency.
pub use argon2::Block as KdfBlock;
pub use backend::{encrypt_image, EncryptedBackend, OpenError};
pub use header::{FormatError, Header, HeaderError, UnlockError, HEADER_LEN};
pub use key::{KdfParams, MasterKey, MASTER_KEY_LEN, RANDOM_LEN, SALT_LEN};
pub use sector::{LengthError, SectorCipher, XtsEngine, SECTOR_SIZE};
