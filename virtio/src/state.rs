//! The snapshot byte format of [`crate::VirtioPci::state`]: the magic `hvvirtio`, a
//! little-endian u16 version ([`STATE_VERSION`]), then the fields in a fixed order,
//! all little-endian, the device type's own state last with a u32 length. A reader
//! refuses another magic or version, truncated data and trailing bytes.

use alloc::vec::Vec;

pub const STATE_MAGIC: [u8; 8] = *b"hvvirtio";
/// Bumped whenever the field list changes.
pub const STATE_VERSION: u16 = 1;

/// Why a snapshot was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateError {
    /// Not a virtio snapshot.
    BadMagic,
    /// A snapshot of another format version.
    Version(u16),
    /// The data ends early.
    Truncated,
    /// Bytes left after the last field.
    TrailingBytes,
    /// Another device type, queue count or MSI-X table size.
    Mismatch,
    /// A value this device could not have written (an enabled queue that is not
    /// valid, device state of the wrong shape).
    Invalid,
}

pub(crate) struct Writer(Vec<u8>);

impl Writer {
    pub fn new() -> Self {
        let mut v = Vec::new();
        v.extend_from_slice(&STATE_MAGIC);
        v.extend_from_slice(&STATE_VERSION.to_le_bytes());
        Self(v)
    }
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// A u32 length, then the bytes.
    pub fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    pub fn finish(self) -> Vec<u8> {
        self.0
    }
}

pub(crate) struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// Checks the magic and version.
    pub fn new(data: &'a [u8]) -> Result<Self, StateError> {
        let mut r = Reader(data);
        if r.take(8).map_err(|_| StateError::BadMagic)? != STATE_MAGIC {
            return Err(StateError::BadMagic);
        }
        match r.u16()? {
            STATE_VERSION => Ok(r),
            v => Err(StateError::Version(v)),
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], StateError> {
        if self.0.len() < n {
            return Err(StateError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    pub fn u8(&mut self) -> Result<u8, StateError> {
        Ok(self.take(1)?[0])
    }
    pub fn bool(&mut self) -> Result<bool, StateError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(StateError::Invalid),
        }
    }
    pub fn u16(&mut self) -> Result<u16, StateError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    pub fn u32(&mut self) -> Result<u32, StateError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn u64(&mut self) -> Result<u64, StateError> {
        Ok(u64::from(self.u32()?) | u64::from(self.u32()?) << 32)
    }
    pub fn bytes(&mut self) -> Result<&'a [u8], StateError> {
        let n = self.u32()?;
        self.take(usize::try_from(n).map_err(|_| StateError::Truncated)?)
    }
    pub fn end(&self) -> Result<(), StateError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(StateError::TrailingBytes)
        }
    }
}
