//! Port I/O routing: the [`PortDevice`] trait every port-mapped device implements, and
//! [`PortMap`], a fixed-capacity table from port ranges to caller-chosen device ids.
//!
//! The map deliberately stores ids, not devices: the VM owns its concrete devices as
//! ordinary fields (`com1: Uart16550<...>`), looks the port up here and `match`es the id
//! to the field. That needs no trait objects, no allocation and no lifetimes tying the
//! map to the devices, and the borrow checker stays out of the way because the map and
//! the devices are disjoint fields of the VM.
//!
//! Ports nobody claims behave like an empty ISA bus: reads float to all ones (see
//! [`all_ones`]) and writes vanish. Guests probe for hardware that way (e.g. Linux
//! reading 0xFF from a missing COM2), so that is the caller's policy for a failed
//! [`PortMap::lookup`].

/// A device reached through `IN`/`OUT`.
///
/// `offset` is relative to the base the device was registered at; `size` is the access
/// width in bytes (1, 2 or 4). For a read, the device returns the value in the low `size`
/// bytes; the caller merges it into the guest's AL/AX/EAX.
pub trait PortDevice {
    fn read(&mut self, offset: u16, size: u8) -> u32;
    fn write(&mut self, offset: u16, size: u8, value: u32);

    /// One access in the shape a port-I/O exit reports it: performs the write (and
    /// returns 0) or the read (ignoring `value`).
    fn access(&mut self, offset: u16, size: u8, write: bool, value: u32) -> u32 {
        if write {
            self.write(offset, size, value);
            0
        } else {
            self.read(offset, size)
        }
    }
}

/// What a read of `size` bytes returns when nothing drives the bus: every bit set.
///
/// Sizes other than 1 and 2 are treated as 4 (the widest x86 port access).
pub const fn all_ones(size: u8) -> u32 {
    match size {
        1 => 0xFF,
        2 => 0xFFFF,
        _ => 0xFFFF_FFFF,
    }
}

/// [`all_ones`] for MMIO, where accesses may also be 8 bytes wide.
pub const fn all_ones64(size: u8) -> u64 {
    match size {
        8 => u64::MAX,
        _ => all_ones(size) as u64,
    }
}

/// Performs a read of `size` bytes on a byte-wide device as the consecutive byte reads
/// the ISA bus turns it into, lowest port first, assembled little-endian.
///
/// A 16-bit `in ax, dx` on a 16550 really does read two registers (`dx` and `dx + 1`),
/// each with its side effects; byte-wide devices call this from
/// [`PortDevice::read`] so wide accesses behave that way too.
pub fn read_bytewise(offset: u16, size: u8, mut read_byte: impl FnMut(u16) -> u8) -> u32 {
    let mut value = 0u32;
    for i in 0..size.min(4) {
        let byte = read_byte(offset.wrapping_add(u16::from(i)));
        value |= u32::from(byte) << (8 * u32::from(i));
    }
    value
}

/// The write counterpart of [`read_bytewise`]: splits `value` into `size` byte writes,
/// lowest port (least significant byte) first.
pub fn write_bytewise(offset: u16, size: u8, value: u32, mut write_byte: impl FnMut(u16, u8)) {
    for i in 0..size.min(4) {
        // Truncation is the point: byte `i` of the little-endian value.
        let byte = (value >> (8 * u32::from(i))) as u8;
        write_byte(offset.wrapping_add(u16::from(i)), byte);
    }
}

/// Why [`Bus::register`] (or [`PortMap::register`]) refused a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// The range shares at least one address with this already registered range.
    Overlap { base: u64, len: u64 },
    /// All `N` slots are taken.
    Full,
    /// `len` was 0.
    Empty,
    /// `base + len` runs past the end of the address space (port 0xFFFF for ports).
    OutOfRange,
}

impl core::fmt::Display for MapError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MapError::Overlap { base, len } => write!(
                f,
                "overlaps the range {base:#x}..{:#x}",
                u128::from(*base) + u128::from(*len)
            ),
            MapError::Full => f.write_str("the bus is full"),
            MapError::Empty => f.write_str("empty range"),
            MapError::OutOfRange => f.write_str("range runs past the end of the address space"),
        }
    }
}

/// One registered range `[base, base + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusRange<T> {
    pub base: u64,
    pub len: u64,
    pub id: T,
}

impl<T> BusRange<T> {
    /// One past the last address, as u128 so that a range ending at the top of the
    /// address space is representable.
    const fn end(&self) -> u128 {
        self.base as u128 + self.len as u128
    }

    const fn contains(&self, addr: u64) -> bool {
        addr >= self.base && (addr as u128) < self.end()
    }
}

/// Up to `N` non-overlapping address ranges below `limit`, each naming a device by an
/// id of type `T`: a VM's port-I/O bus (limit 0x10000) or MMIO bus (limit 2^64).
/// Registering a range that overlaps another is an error: two devices answering one
/// address is a configuration bug worth failing loudly on (rust-vmm's vm-device
/// refuses it the same way).
///
/// A linear scan is the right structure: a VM has a handful of devices and `N` is
/// small, so this beats anything cleverer and stays `const`-constructible.
#[derive(Clone, Debug)]
pub struct Bus<T: Copy, const N: usize> {
    slots: [Option<BusRange<T>>; N],
    limit: u128,
}

impl<T: Copy, const N: usize> Bus<T, N> {
    /// A bus for addresses below `limit` (0 means the whole 64-bit space).
    pub const fn new(limit: u64) -> Self {
        Self {
            slots: [None; N],
            limit: if limit == 0 { 1 << 64 } else { limit as u128 },
        }
    }

    /// Claims `[base, base + len)` for `id`.
    pub fn register(&mut self, base: u64, len: u64, id: T) -> Result<(), MapError> {
        if len == 0 {
            return Err(MapError::Empty);
        }
        let new = BusRange { base, len, id };
        if new.end() > self.limit {
            return Err(MapError::OutOfRange);
        }
        if let Some(old) = self
            .iter()
            .find(|r| u128::from(r.base) < new.end() && u128::from(base) < r.end())
        {
            return Err(MapError::Overlap {
                base: old.base,
                len: old.len,
            });
        }
        let slot = self
            .slots
            .iter_mut()
            .find(|s| s.is_none())
            .ok_or(MapError::Full)?;
        *slot = Some(new);
        Ok(())
    }

    /// Removes the range that starts at `base`, returning its id.
    pub fn unregister(&mut self, base: u64) -> Option<T> {
        let slot = self
            .slots
            .iter_mut()
            .find(|s| matches!(s, Some(r) if r.base == base))?;
        slot.take().map(|r| r.id)
    }

    /// The device owning `addr` and the address's offset from that device's base.
    /// A multi-byte access is routed by its first address alone.
    pub fn lookup(&self, addr: u64) -> Option<(T, u64)> {
        self.iter()
            .find(|r| r.contains(addr))
            .map(|r| (r.id, addr - r.base))
    }

    /// The registered ranges, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &BusRange<T>> {
        self.slots.iter().flatten()
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One registered port range `[base, base + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange<T> {
    pub base: u16,
    pub len: u16,
    pub id: T,
}

/// A [`Bus`] of I/O ports (0 to 0xFFFF) with 16-bit addresses.
#[derive(Clone, Debug)]
pub struct PortMap<T: Copy, const N: usize>(Bus<T, N>);

impl<T: Copy, const N: usize> Default for PortMap<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy, const N: usize> PortMap<T, N> {
    pub const fn new() -> Self {
        Self(Bus::new(0x1_0000))
    }

    /// Claims `[base, base + len)` for `id`; see [`Bus::register`].
    pub fn register(&mut self, base: u16, len: u16, id: T) -> Result<(), MapError> {
        self.0.register(base.into(), len.into(), id)
    }

    /// Removes the range that starts at `base`, returning its id.
    pub fn unregister(&mut self, base: u16) -> Option<T> {
        self.0.unregister(base.into())
    }

    /// The device owning `port` and the port's offset from that device's base.
    ///
    /// A multi-byte access is routed by its first port alone; the device decides what
    /// its bytes past the end of its range read as.
    pub fn lookup(&self, port: u16) -> Option<(T, u16)> {
        // Offsets are below 0x10000: the bus's limit.
        self.0.lookup(port.into()).map(|(id, off)| (id, off as u16))
    }

    /// The registered ranges, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = PortRange<T>> + '_ {
        self.0.iter().map(|r| PortRange {
            base: r.base as u16,
            len: r.len as u16,
            id: r.id,
        })
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Dev {
        Com1,
        Com2,
        Pic,
    }

    #[test]
    fn all_ones_per_size() {
        assert_eq!(all_ones(1), 0xFF);
        assert_eq!(all_ones(2), 0xFFFF);
        assert_eq!(all_ones(4), 0xFFFF_FFFF);
        assert_eq!(all_ones64(4), 0xFFFF_FFFF);
        assert_eq!(all_ones64(8), u64::MAX);
    }

    #[test]
    fn lookup_returns_id_and_offset() {
        let mut map: PortMap<Dev, 4> = PortMap::new();
        map.register(0x3F8, 8, Dev::Com1).unwrap();
        map.register(0x2F8, 8, Dev::Com2).unwrap();
        assert_eq!(map.lookup(0x3F8), Some((Dev::Com1, 0)));
        assert_eq!(map.lookup(0x3FD), Some((Dev::Com1, 5)));
        assert_eq!(map.lookup(0x3FF), Some((Dev::Com1, 7)));
        assert_eq!(map.lookup(0x400), None);
        assert_eq!(map.lookup(0x3F7), None);
        assert_eq!(map.lookup(0x2F9), Some((Dev::Com2, 1)));
        assert_eq!(map.len(), 2);
    }

    #[test]
    fn overlap_is_refused_in_every_shape() {
        let mut map: PortMap<Dev, 8> = PortMap::new();
        map.register(0x3F8, 8, Dev::Com1).unwrap();
        let taken = Err(MapError::Overlap {
            base: 0x3F8,
            len: 8,
        });
        assert_eq!(map.register(0x3F8, 8, Dev::Com2), taken); // identical
        assert_eq!(map.register(0x3F0, 9, Dev::Com2), taken); // tail overlaps head
        assert_eq!(map.register(0x3FF, 4, Dev::Com2), taken); // head overlaps tail
        assert_eq!(map.register(0x3FA, 1, Dev::Com2), taken); // inside
        assert_eq!(map.register(0x300, 0x200, Dev::Com2), taken); // around
                                                                  // Adjacent on either side is fine.
        map.register(0x3F0, 8, Dev::Com2).unwrap();
        map.register(0x400, 1, Dev::Pic).unwrap();
        assert_eq!(map.lookup(0x3F7), Some((Dev::Com2, 7)));
        assert_eq!(map.lookup(0x400), Some((Dev::Pic, 0)));
    }

    #[test]
    fn bad_ranges_and_full_map() {
        let mut map: PortMap<u8, 2> = PortMap::new();
        assert_eq!(map.register(0x20, 0, 0), Err(MapError::Empty));
        assert_eq!(map.register(0xFFFF, 2, 0), Err(MapError::OutOfRange));
        map.register(0xFFFF, 1, 1).unwrap(); // the very last port is allowed
        assert_eq!(map.lookup(0xFFFF), Some((1, 0)));
        map.register(0x20, 2, 2).unwrap();
        assert_eq!(map.register(0xA0, 2, 3), Err(MapError::Full));
    }

    #[test]
    fn unregister_frees_the_slot() {
        let mut map: PortMap<u8, 1> = PortMap::new();
        map.register(0x60, 1, 7).unwrap();
        assert_eq!(map.unregister(0x61), None);
        assert_eq!(map.unregister(0x60), Some(7));
        assert!(map.is_empty());
        assert_eq!(map.lookup(0x60), None);
        map.register(0x64, 1, 8).unwrap();
        assert_eq!(map.lookup(0x64), Some((8, 0)));
    }

    #[test]
    fn const_construction() {
        static MAP: PortMap<u8, 4> = PortMap::new();
        assert!(MAP.is_empty());
    }

    #[test]
    fn bytewise_helpers_are_little_endian_lowest_port_first() {
        let mut seen = Vec::new();
        let v = read_bytewise(3, 2, |off| {
            seen.push(off);
            off as u8 * 0x10
        });
        assert_eq!(v, 0x4030);
        assert_eq!(seen, [3, 4]);

        let mut writes = Vec::new();
        write_bytewise(0, 4, 0xDDCC_BBAA, |off, b| writes.push((off, b)));
        assert_eq!(writes, [(0, 0xAA), (1, 0xBB), (2, 0xCC), (3, 0xDD)]);
    }

    struct Reg(u32);
    impl PortDevice for Reg {
        fn read(&mut self, _offset: u16, size: u8) -> u32 {
            self.0 & all_ones(size)
        }
        fn write(&mut self, _offset: u16, _size: u8, value: u32) {
            self.0 = value;
        }
    }

    #[test]
    fn access_dispatches_on_direction() {
        let mut reg = Reg(0);
        assert_eq!(reg.access(0, 4, true, 0x1234_5678), 0);
        assert_eq!(reg.access(0, 2, false, 0xDEAD), 0x5678);
    }
}
