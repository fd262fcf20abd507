//! Guest-physical memory as a device sees it: [`GuestMemory`], every access checked
//! against the guest's RAM, and [`VecMemory`], a `Vec`-backed RAM for tests.
//!
//! Everything a driver hands a virtio device (ring addresses, buffer addresses and
//! lengths) is guest-controlled, so every range is checked with u64 arithmetic that
//! cannot overflow; anything outside RAM is an [`MemError`], never a panic.

use alloc::vec;
use alloc::vec::Vec;

/// An access that is not entirely inside guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemError {
    pub addr: u64,
    pub len: u64,
}

impl core::fmt::Display for MemError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{} bytes at {:#x} are not guest RAM",
            self.len, self.addr
        )
    }
}

/// A VM's RAM. Implementations check the whole range `[addr, addr + len)` before
/// touching anything; a failed access has no effect.
///
/// The kernel's implementation reads and writes RAM that the guest's vCPUs use at the
/// same time: it must copy with volatile (or relaxed atomic) accesses, never form a
/// Rust reference to guest RAM, and leave ordering to the fences the virtqueue code
/// issues (`core::sync::atomic::fence`).
pub trait GuestMemory {
    /// Whether `[addr, addr + len)` is guest RAM (a zero-length range at the end of
    /// RAM counts as inside).
    fn check(&self, addr: u64, len: u64) -> Result<(), MemError>;
    /// Copies guest RAM at `addr` into `buf`.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError>;
    /// Copies `data` into guest RAM at `addr`.
    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), MemError>;

    fn read_u16(&self, addr: u64) -> Result<u16, MemError> {
        let mut b = [0; 2];
        self.read(addr, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }
    fn read_u32(&self, addr: u64) -> Result<u32, MemError> {
        let mut b = [0; 4];
        self.read(addr, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn read_u64(&self, addr: u64) -> Result<u64, MemError> {
        let mut b = [0; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn write_u16(&mut self, addr: u64, v: u16) -> Result<(), MemError> {
        self.write(addr, &v.to_le_bytes())
    }
    fn write_u32(&mut self, addr: u64, v: u32) -> Result<(), MemError> {
        self.write(addr, &v.to_le_bytes())
    }
    fn write_u64(&mut self, addr: u64, v: u64) -> Result<(), MemError> {
        self.write(addr, &v.to_le_bytes())
    }
}

/// RAM at `[base, base + len)` held in a `Vec` (tests, tools).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VecMemory {
    base: u64,
    bytes: Vec<u8>,
}

impl VecMemory {
    /// `len` bytes of zeroed RAM at guest-physical 0.
    pub fn new(len: usize) -> Self {
        Self::at(0, len)
    }

    /// `len` bytes of zeroed RAM at guest-physical `base`.
    pub fn at(base: u64, len: usize) -> Self {
        Self {
            base,
            bytes: vec![0; len],
        }
    }

    /// The bytes backing `[addr, addr + len)`, when that is RAM.
    fn range(&self, addr: u64, len: u64) -> Result<core::ops::Range<usize>, MemError> {
        let err = MemError { addr, len };
        let start = addr.checked_sub(self.base).ok_or(err)?;
        let end = start.checked_add(len).ok_or(err)?;
        if end > self.bytes.len() as u64 {
            return Err(err);
        }
        // Both fit in usize: they are at most the Vec's length.
        Ok(start as usize..end as usize)
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes
    }
}

impl GuestMemory for VecMemory {
    fn check(&self, addr: u64, len: u64) -> Result<(), MemError> {
        self.range(addr, len).map(|_| ())
    }
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let r = self.range(addr, buf.len() as u64)?;
        buf.copy_from_slice(&self.bytes[r]);
        Ok(())
    }
    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), MemError> {
        let r = self.range(addr, data.len() as u64)?;
        self.bytes[r].copy_from_slice(data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inside_ram_works_and_outside_fails_without_side_effects() {
        let mut m = VecMemory::at(0x1000, 0x100);
        m.write_u32(0x1000, 0xDEAD_BEEF).unwrap();
        assert_eq!(m.read_u32(0x1000).unwrap(), 0xDEAD_BEEF);
        m.write_u64(0x10F8, 7).unwrap();
        assert_eq!(m.read_u64(0x10F8).unwrap(), 7);
        assert_eq!(
            m.write_u64(0x10F9, 1),
            Err(MemError {
                addr: 0x10F9,
                len: 8
            })
        );
        assert_eq!(
            m.read_u64(0x10F8).unwrap(),
            7,
            "a failed write changes nothing"
        );
        assert!(m.read_u16(0xFFF).is_err(), "below the base");
        assert!(m.check(0x1100, 0).is_ok());
        assert!(m.check(0x1101, 0).is_err());
    }

    #[test]
    fn overflowing_ranges_are_errors() {
        let m = VecMemory::new(0x100);
        assert!(m.check(u64::MAX, 2).is_err());
        assert!(m.check(0x10, u64::MAX).is_err());
        assert!(m.check(u64::MAX - 1, u64::MAX).is_err());
        let mut b = [0u8; 4];
        assert!(m.read(u64::MAX - 1, &mut b).is_err());
    }
}
