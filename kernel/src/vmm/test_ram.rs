//! Guest RAM for the host tests of the instruction emulators: a byte vector at
//! guest-physical 0, readable and writable through the checked accessors
//! ([`GuestMemory`], [`GuestMemoryMut`]) the emulators use; an access beyond its end
//! fails, as one beyond a VM's RAM does. [`NoRam`] is a guest without any.

use super::guest_walk::{GuestMemory, GuestMemoryMut};
use std::vec;
use std::vec::Vec;

/// `self.0[gpa]` is the byte at guest-physical `gpa`.
#[derive(Clone)]
pub(crate) struct Ram(pub Vec<u8>);

impl Ram {
    /// `len` zero bytes.
    pub fn new(len: usize) -> Ram {
        Ram(vec![0; len])
    }

    pub fn put(&mut self, gpa: u64, bytes: &[u8]) {
        self.0[gpa as usize..gpa as usize + bytes.len()].copy_from_slice(bytes);
    }

    pub fn put32(&mut self, gpa: u64, v: u32) {
        self.put(gpa, &v.to_le_bytes());
    }

    pub fn put64(&mut self, gpa: u64, v: u64) {
        self.put(gpa, &v.to_le_bytes());
    }

    /// The bytes at `gpa..gpa + len`, if all are RAM.
    fn span(&self, gpa: u64, len: usize) -> Option<core::ops::Range<usize>> {
        let start = usize::try_from(gpa).ok()?;
        let end = start.checked_add(len)?;
        (end <= self.0.len()).then_some(start..end)
    }
}

impl GuestMemory for Ram {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), ()> {
        let span = self.span(gpa, buf.len()).ok_or(())?;
        buf.copy_from_slice(&self.0[span]);
        Ok(())
    }
}

impl GuestMemoryMut for Ram {
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), ()> {
        let span = self.span(gpa, data.len()).ok_or(())?;
        self.0[span].copy_from_slice(data);
        Ok(())
    }
}

/// No RAM at all: every access fails.
pub(crate) struct NoRam;

impl GuestMemory for NoRam {
    fn read(&self, _: u64, _: &mut [u8]) -> Result<(), ()> {
        Err(())
    }
}

impl GuestMemoryMut for NoRam {
    fn write(&mut self, _: u64, _: &[u8]) -> Result<(), ()> {
        Err(())
    }
}
