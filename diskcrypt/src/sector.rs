//! AES-256-XTS on 512-byte sectors (IEEE 1619-2007; NIST SP 800-38E), with the tweak
//! dm-crypt calls `plain64`: the data-area sector number as a 128-bit little-endian
//! integer (IEEE 1619 §5.1 "data unit sequence number").
//!
//! The mode is the `xts-mode` crate's; the block cipher RustCrypto's `aes`, which uses
//! AES-NI where CPUID reports it and its constant-time bitsliced ("fixslice") code
//! otherwise. Where this crate is built without AES-NI (the soft-float kernel target),
//! the program may supply the same cipher built elsewhere as an [`XtsEngine`]
//! ([`SectorCipher::with_engine`]; the kernel's is the `aesni` crate).

use aes::cipher::KeyInit;
use aes::Aes256;
use xts_mode::{get_tweak_default, Xts128};

use crate::key::MasterKey;
use alloc::boxed::Box;

/// The data unit: one 512-byte sector.
pub const SECTOR_SIZE: usize = 512;

/// A multi-sector buffer that is not a whole number of sectors, or a sector range
/// whose last number does not fit in 64 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LengthError {
    NotWholeSectors(usize),
    SectorOverflow { first: u64, count: u64 },
}

impl core::fmt::Display for LengthError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotWholeSectors(len) => {
                write!(f, "{len} bytes is not a whole number of 512-byte sectors")
            }
            Self::SectorOverflow { first, count } => {
                write!(
                    f,
                    "{count} sectors from sector {first} run past sector 2^64-1"
                )
            }
        }
    }
}

/// AES-256-XTS over whole sectors from outside this crate, with the same tweak
/// (`plain64`, IEEE 1619 §5.1) and the same key split as [`SectorCipher::new`]. The
/// caller of each method has checked that `data` is whole 512-byte sectors and that
/// the last sector number fits 64 bits.
pub trait XtsEngine: Send + Sync {
    fn encrypt_area(&self, first: u64, data: &mut [u8]);
    fn decrypt_area(&self, first: u64, data: &mut [u8]);
}

/// The per-sector cipher of one disk. Its AES key schedules are zeroized on drop
/// (the `aes` crate's `zeroize` feature; an engine's own drop for an engine).
pub struct SectorCipher {
    engine: Engine,
}

enum Engine {
    /// Boxed: two AES-256 key schedules are some 2 KiB.
    Own(Box<Xts128<Aes256>>),
    Other(Box<dyn XtsEngine>),
}

impl SectorCipher {
    pub fn new(key: &MasterKey) -> Self {
        let k = key.as_bytes();
        // Both halves are exactly 32 bytes: `new_from_slice` cannot fail here, but a
        // `From` for arrays would hide the split that IEEE 1619 §5.1 defines.
        let data = Aes256::new(k[..32].into());
        let tweak = Aes256::new(k[32..].into());
        Self {
            engine: Engine::Own(Box::new(Xts128::new(data, tweak))),
        }
    }

    /// A cipher whose work `engine` does.
    pub fn with_engine(engine: Box<dyn XtsEngine>) -> Self {
        Self {
            engine: Engine::Other(engine),
        }
    }

    /// Encrypts one sector in place; `sector` is its number in the data area.
    pub fn encrypt_sector(&self, sector: u64, data: &mut [u8; SECTOR_SIZE]) {
        self.crypt(sector, data, true);
    }

    /// Decrypts one sector in place.
    pub fn decrypt_sector(&self, sector: u64, data: &mut [u8; SECTOR_SIZE]) {
        self.crypt(sector, data, false);
    }

    /// Encrypts consecutive sectors starting at `first`, in place.
    pub fn encrypt_sectors(&self, first: u64, data: &mut [u8]) -> Result<(), LengthError> {
        check(first, data.len())?;
        self.crypt(first, data, true);
        Ok(())
    }

    /// Decrypts consecutive sectors starting at `first`, in place.
    pub fn decrypt_sectors(&self, first: u64, data: &mut [u8]) -> Result<(), LengthError> {
        check(first, data.len())?;
        self.crypt(first, data, false);
        Ok(())
    }

    /// `data` is whole sectors from `first` on (checked by the callers).
    fn crypt(&self, first: u64, data: &mut [u8], encrypt: bool) {
        match (&self.engine, encrypt) {
            (Engine::Own(x), true) => {
                x.encrypt_area(data, SECTOR_SIZE, u128::from(first), get_tweak_default)
            }
            (Engine::Own(x), false) => {
                x.decrypt_area(data, SECTOR_SIZE, u128::from(first), get_tweak_default)
            }
            (Engine::Other(e), true) => e.encrypt_area(first, data),
            (Engine::Other(e), false) => e.decrypt_area(first, data),
        }
    }
}

/// `len` is whole sectors and the last sector number fits plain64's 64 bits.
fn check(first: u64, len: usize) -> Result<(), LengthError> {
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err(LengthError::NotWholeSectors(len));
    }
    let count = (len / SECTOR_SIZE) as u64;
    if count > 0 && first.checked_add(count - 1).is_none() {
        return Err(LengthError::SectorOverflow { first, count });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher() -> SectorCipher {
        let mut k = [0u8; 64];
        for (i, b) in k.iter_mut().enumerate() {
            *b = i as u8;
        }
        SectorCipher::new(&MasterKey::from_bytes(k))
    }

    #[test]
    fn same_plaintext_in_two_sectors_differs() {
        let c = cipher();
        let mut a = [0x5Au8; SECTOR_SIZE];
        let mut b = a;
        c.encrypt_sector(7, &mut a);
        c.encrypt_sector(8, &mut b);
        assert_ne!(a, b);
        assert_ne!(a, [0x5Au8; SECTOR_SIZE]);
        c.decrypt_sector(7, &mut a);
        c.decrypt_sector(8, &mut b);
        assert_eq!(a, [0x5Au8; SECTOR_SIZE]);
        assert_eq!(b, a);
    }

    #[test]
    fn multi_sector_equals_sector_by_sector() {
        let c = cipher();
        let mut many = [0u8; 3 * SECTOR_SIZE];
        for (i, b) in many.iter_mut().enumerate() {
            *b = (i * 7) as u8;
        }
        let plain = many;
        c.encrypt_sectors(100, &mut many).unwrap();
        for i in 0..3 {
            let mut one: [u8; SECTOR_SIZE] = plain[i * 512..][..512].try_into().unwrap();
            c.encrypt_sector(100 + i as u64, &mut one);
            assert_eq!(&many[i * 512..][..512], &one);
        }
        c.decrypt_sectors(100, &mut many).unwrap();
        assert_eq!(many, plain);
    }

    #[test]
    fn lengths_and_overflow_refused() {
        let c = cipher();
        let mut odd = [0u8; 513];
        assert_eq!(
            c.encrypt_sectors(0, &mut odd),
            Err(LengthError::NotWholeSectors(513))
        );
        let mut two = [0u8; 1024];
        assert_eq!(
            c.decrypt_sectors(u64::MAX, &mut two),
            Err(LengthError::SectorOverflow {
                first: u64::MAX,
                count: 2
            })
        );
        let mut one = [0u8; 512];
        assert_eq!(c.encrypt_sectors(u64::MAX, &mut one), Ok(()));
        assert_eq!(c.encrypt_sectors(0, &mut []), Ok(()));
    }
}

#[cfg(test)]
mod engine_tests {
    use super::*;
    use core::sync::atomic::{AtomicUsize, Ordering};

    /// An engine that is this crate's own cipher, counting the sectors it is given:
    /// what goes through `with_engine` must reach it, with the same tweaks.
    struct Counting(SectorCipher, &'static AtomicUsize);

    impl XtsEngine for Counting {
        fn encrypt_area(&self, first: u64, data: &mut [u8]) {
            self.1
                .fetch_add(data.len() / SECTOR_SIZE, Ordering::Relaxed);
            self.0.encrypt_sectors(first, data).unwrap();
        }
        fn decrypt_area(&self, first: u64, data: &mut [u8]) {
            self.1
                .fetch_add(data.len() / SECTOR_SIZE, Ordering::Relaxed);
            self.0.decrypt_sectors(first, data).unwrap();
        }
    }

    #[test]
    fn an_engine_does_the_work_with_the_same_checks() {
        static SECTORS: AtomicUsize = AtomicUsize::new(0);
        let key = MasterKey::from_bytes([7; crate::MASTER_KEY_LEN]);
        let own = SectorCipher::new(&key);
        let engine =
            SectorCipher::with_engine(Box::new(Counting(SectorCipher::new(&key), &SECTORS)));
        let plain = alloc::vec![0x3c_u8; 3 * SECTOR_SIZE];
        let (mut a, mut b) = (plain.clone(), plain.clone());
        own.encrypt_sectors(9, &mut a).unwrap();
        engine.encrypt_sectors(9, &mut b).unwrap();
        assert_eq!(a, b);
        let mut one: [u8; SECTOR_SIZE] = b[..SECTOR_SIZE].try_into().unwrap();
        engine.decrypt_sector(9, &mut one);
        assert_eq!(&one[..], &plain[..SECTOR_SIZE]);
        assert_eq!(SECTORS.load(Ordering::Relaxed), 4);
        // The length and range checks stay this crate's: the engine never sees these.
        assert_eq!(
            engine.encrypt_sectors(0, &mut [0; 100]),
            Err(LengthError::NotWholeSectors(100))
        );
        assert!(engine.encrypt_sectors(u64::MAX, &mut b).is_err());
        assert_eq!(SECTORS.load(Ordering::Relaxed), 4);
    }
}
