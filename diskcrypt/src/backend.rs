//! [`EncryptedBackend`]: a [`BlockBackend`] that shows only the data area of an
//! encrypted partition held by an inner backend, decrypting on read and encrypting
//! on write. Plaintext never reaches the inner backend: writes are encrypted in a
//! bounce buffer first. Also [`encrypt_image`], which xtask uses to make an encrypted
//! partition from plaintext contents.

use alloc::vec;
use alloc::vec::Vec;
use virtio::{BlockBackend, BlockError};

use crate::header::{FormatError, Header, HeaderError, UnlockError, HEADER_LEN};
use crate::key::{KdfParams, MasterKey, RANDOM_LEN};
use crate::sector::{SectorCipher, SECTOR_SIZE};

/// The bounce buffer's size: writes are encrypted this many bytes at a time, so a
/// large request does not need an equally large allocation.
const BOUNCE_LEN: usize = 64 * 1024;

/// Why an encrypted partition could not be opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenError {
    /// The inner backend failed to read the header.
    Read(BlockError),
    Header(HeaderError),
    Unlock(UnlockError),
}

impl core::fmt::Display for OpenError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Read(e) => write!(f, "cannot read the encryption header: {e:?}"),
            Self::Header(e) => e.fmt(f),
            Self::Unlock(e) => e.fmt(f),
        }
    }
}

/// The decrypted view of an encrypted partition.
pub struct EncryptedBackend<B: BlockBackend> {
    inner: B,
    cipher: SectorCipher,
    /// The data area's first sector in the inner backend.
    data_start: u64,
    data_sectors: u64,
    bounce: Vec<u8>,
}

impl<B: BlockBackend> EncryptedBackend<B> {
    /// Wraps `inner` (the whole partition) with an already unlocked key. Checks that
    /// the header's data area lies inside `inner`.
    pub fn new(inner: B, header: &Header, key: &MasterKey) -> Result<Self, HeaderError> {
        Self::with_cipher(inner, header, SectorCipher::new(key))
    }

    /// [`EncryptedBackend::new`] with the cipher already made from the header's key
    /// (by an [`crate::XtsEngine`] of the caller's, for instance).
    pub fn with_cipher(
        inner: B,
        header: &Header,
        cipher: SectorCipher,
    ) -> Result<Self, HeaderError> {
        header.check_fits(inner.sectors())?;
        Ok(Self {
            cipher,
            data_start: header.data_start_sector(),
            data_sectors: header.data_sectors,
            inner,
            bounce: Vec::new(),
        })
    }

    /// Reads and checks the header from `inner`, unlocks it with `passphrase` in the
    /// caller's Argon2 working memory, and wraps `inner`. Nothing is written on any
    /// path: a wrong passphrase leaves the partition as it was.
    pub fn open(
        mut inner: B,
        passphrase: &[u8],
        kdf_memory: &mut [crate::KdfBlock],
    ) -> Result<Self, OpenError> {
        let header = read_header(&mut inner)?;
        let key = header
            .unlock(passphrase, kdf_memory)
            .map_err(OpenError::Unlock)?;
        Self::new(inner, &header, &key).map_err(OpenError::Header)
    }

    /// [`EncryptedBackend::open`] with Argon2's working memory from the heap.
    pub fn open_alloc(mut inner: B, passphrase: &[u8]) -> Result<Self, OpenError> {
        let header = read_header(&mut inner)?;
        let key = header.unlock_alloc(passphrase).map_err(OpenError::Unlock)?;
        Self::new(inner, &header, &key).map_err(OpenError::Header)
    }

    /// The inner backend (the partition, still encrypted).
    pub fn into_inner(self) -> B {
        self.inner
    }

    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// The inner sector of data-area sector `sector` for a request of `len` bytes, or
    /// `OutOfRange`. A length that is not whole sectors is refused as `Io`: the trait
    /// promises whole sectors, and XTS has no partial-sector form here.
    fn map(&self, sector: u64, len: usize) -> Result<u64, BlockError> {
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(BlockError::Io);
        }
        let count = (len / SECTOR_SIZE) as u64;
        let end = sector.checked_add(count).ok_or(BlockError::OutOfRange)?;
        if end > self.data_sectors {
            return Err(BlockError::OutOfRange);
        }
        // `check_fits` made data_start + data_sectors fit the inner disk.
        Ok(self.data_start + sector)
    }
}

fn read_header<B: BlockBackend>(inner: &mut B) -> Result<Header, OpenError> {
    let mut bytes = vec![0u8; HEADER_LEN];
    inner.read(0, &mut bytes).map_err(OpenError::Read)?;
    let header = Header::parse(&bytes).map_err(OpenError::Header)?;
    header
        .check_fits(inner.sectors())
        .map_err(OpenError::Header)?;
    Ok(header)
}

impl<B: BlockBackend> BlockBackend for EncryptedBackend<B> {
    fn sectors(&self) -> u64 {
        self.data_sectors
    }

    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let at = self.map(sector, buf.len())?;
        self.inner.read(at, buf)?;
        // `map` checked whole sectors and the range: decryption cannot fail.
        self.cipher
            .decrypt_sectors(sector, buf)
            .map_err(|_| BlockError::Io)
    }

    fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), BlockError> {
        let at = self.map(sector, data.len())?;
        if self.bounce.is_empty() {
            self.bounce = vec![0; BOUNCE_LEN];
        }
        for (i, chunk) in data.chunks(BOUNCE_LEN).enumerate() {
            let done = (i * BOUNCE_LEN / SECTOR_SIZE) as u64;
            let out = &mut self.bounce[..chunk.len()];
            out.copy_from_slice(chunk);
            self.cipher
                .encrypt_sectors(sector + done, out)
                .map_err(|_| BlockError::Io)?;
            self.inner.write(at + done, out)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), BlockError> {
        self.inner.flush()
    }
}

/// A whole encrypted partition image: a header for `passphrase` and the data area
/// holding `plaintext` (whole sectors) encrypted. `random` is the header's salt and
/// master key from the caller's RNG.
pub fn encrypt_image(
    passphrase: &[u8],
    kdf: KdfParams,
    random: &[u8; RANDOM_LEN],
    plaintext: &[u8],
) -> Result<Vec<u8>, FormatError> {
    if plaintext.is_empty() || !plaintext.len().is_multiple_of(SECTOR_SIZE) {
        return Err(FormatError::NotWholeSectors(plaintext.len()));
    }
    let sectors = ((HEADER_LEN + plaintext.len()) / SECTOR_SIZE) as u64;
    let (header, key) = Header::format(passphrase, kdf, random, sectors)?;
    let mut image = header;
    image.extend_from_slice(plaintext);
    SectorCipher::new(&key)
        .encrypt_sectors(0, &mut image[HEADER_LEN..])
        .map_err(|_| FormatError::NotWholeSectors(plaintext.len()))?;
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio::RamDisk;

    const FAST: KdfParams = KdfParams {
        memory_kib: 32,
        iterations: 1,
        lanes: 1,
    };
    const MARKER: &[u8] = b"PLAINTEXT-MARKER-hv-diskcrypt";

    fn random() -> [u8; RANDOM_LEN] {
        core::array::from_fn(|i| (i as u8).wrapping_mul(91).wrapping_add(3))
    }

    /// A 64-sector partition: 8 header sectors, 56 data sectors.
    fn partition() -> RamDisk {
        let (header, _) = Header::format(b"pw", FAST, &random(), 64).unwrap();
        let mut bytes = header;
        bytes.resize(64 * SECTOR_SIZE, 0);
        RamDisk::new(bytes)
    }

    fn marked(sectors: usize) -> Vec<u8> {
        let mut v = vec![0u8; sectors * SECTOR_SIZE];
        for s in v.chunks_mut(SECTOR_SIZE) {
            s[100..100 + MARKER.len()].copy_from_slice(MARKER);
        }
        v
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn plaintext_never_reaches_the_inner_disk() {
        let mut d = EncryptedBackend::open_alloc(partition(), b"pw").unwrap();
        assert_eq!(d.sectors(), 56);
        let data = marked(56);
        d.write(0, &data).unwrap();
        assert!(!contains(d.inner().as_slice(), MARKER));
        let mut back = vec![0u8; 56 * SECTOR_SIZE];
        d.read(0, &mut back).unwrap();
        assert_eq!(back, data);
        // Reopened with the passphrase, the data is there.
        let inner = d.into_inner();
        let mut again = EncryptedBackend::open_alloc(inner, b"pw").unwrap();
        let mut one = vec![0u8; SECTOR_SIZE];
        again.read(55, &mut one).unwrap();
        assert_eq!(one, data[55 * SECTOR_SIZE..]);
        again.flush().unwrap();
        assert_eq!(again.inner().flushes, 1);
    }

    #[test]
    fn writes_land_in_the_data_area_only() {
        let mut d = EncryptedBackend::open_alloc(partition(), b"pw").unwrap();
        let header_before = d.inner().as_slice()[..HEADER_LEN].to_vec();
        d.write(3, &marked(2)).unwrap();
        let inner = d.inner().as_slice();
        assert_eq!(inner[..HEADER_LEN], header_before[..]);
        // Data sector 3 is inner sector 8 + 3; its neighbours are untouched zeros.
        let at = (8 + 3) * SECTOR_SIZE;
        assert!(inner[at - SECTOR_SIZE..at].iter().all(|&b| b == 0));
        assert!(inner[at..at + 2 * SECTOR_SIZE].iter().any(|&b| b != 0));
        assert!(inner[at + 2 * SECTOR_SIZE..][..SECTOR_SIZE]
            .iter()
            .all(|&b| b == 0));
    }

    #[test]
    fn large_writes_go_through_the_bounce_buffer_in_chunks() {
        // 300 data sectors (> 64 KiB) so the write takes several chunks.
        let (header, _) = Header::format(b"pw", FAST, &random(), 308).unwrap();
        let mut bytes = header;
        bytes.resize(308 * SECTOR_SIZE, 0);
        let mut d = EncryptedBackend::open_alloc(RamDisk::new(bytes), b"pw").unwrap();
        let data = marked(299);
        d.write(1, &data).unwrap();
        assert!(!contains(d.inner().as_slice(), MARKER));
        // Each sector was encrypted under its own number, whichever chunk held it.
        let mut one = vec![0u8; SECTOR_SIZE];
        for s in [1u64, 128, 129, 130, 299] {
            d.read(s, &mut one).unwrap();
            assert_eq!(
                one,
                data[(s as usize - 1) * SECTOR_SIZE..][..SECTOR_SIZE],
                "sector {s}"
            );
        }
    }

    #[test]
    fn out_of_range_refused() {
        let mut d = EncryptedBackend::open_alloc(partition(), b"pw").unwrap();
        let mut buf = vec![0u8; SECTOR_SIZE];
        assert_eq!(d.read(56, &mut buf), Err(BlockError::OutOfRange));
        assert_eq!(d.write(56, &buf), Err(BlockError::OutOfRange));
        let mut two = vec![0u8; 2 * SECTOR_SIZE];
        assert_eq!(d.read(55, &mut two), Err(BlockError::OutOfRange));
        assert_eq!(d.write(u64::MAX, &two), Err(BlockError::OutOfRange));
        assert_eq!(d.read(0, &mut [0u8; 100]), Err(BlockError::Io));
        d.read(55, &mut buf).unwrap();
    }

    #[test]
    fn wrong_passphrase_writes_nothing() {
        let disk = partition();
        let before = disk.clone();
        let mut mem = vec![crate::KdfBlock::default(); FAST.memory_blocks().unwrap()];
        let err = EncryptedBackend::open(disk.clone(), b"not pw", &mut mem)
            .err()
            .unwrap();
        assert_eq!(err, OpenError::Unlock(UnlockError::WrongPassphrase));
        assert_eq!(
            alloc::format!("{err}"),
            "wrong passphrase for the encrypted disk"
        );
        assert_eq!(disk, before);
    }

    #[test]
    fn open_refusals() {
        // Not encrypted.
        let plain = RamDisk::zeroed(64);
        assert_eq!(
            EncryptedBackend::open_alloc(plain, b"pw").err(),
            Some(OpenError::Header(HeaderError::BadMagic))
        );
        // Shorter than the header.
        assert_eq!(
            EncryptedBackend::open_alloc(RamDisk::zeroed(4), b"pw").err(),
            Some(OpenError::Read(BlockError::OutOfRange))
        );
        // Header made for 64 sectors on a 63-sector disk.
        let mut bytes = partition().as_slice().to_vec();
        bytes.truncate(63 * SECTOR_SIZE);
        assert!(matches!(
            EncryptedBackend::open_alloc(RamDisk::new(bytes), b"pw").err(),
            Some(OpenError::Header(HeaderError::DataBeyondPartition { .. }))
        ));
    }

    #[test]
    fn image_for_xtask_opens() {
        let plain = marked(10);
        let image = encrypt_image(b"pw", FAST, &random(), &plain).unwrap();
        assert_eq!(image.len(), HEADER_LEN + plain.len());
        assert!(!contains(&image, MARKER));
        let mut d = EncryptedBackend::open_alloc(RamDisk::new(image), b"pw").unwrap();
        let mut back = vec![0u8; plain.len()];
        d.read(0, &mut back).unwrap();
        assert_eq!(back, plain);
        assert_eq!(
            encrypt_image(b"pw", FAST, &random(), &[0; 100]).unwrap_err(),
            FormatError::NotWholeSectors(100)
        );
    }
}
