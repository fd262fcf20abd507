//! The SVM I/O and MSR permission maps: which port accesses and which RDMSR/WRMSR the
//! processor lets the guest perform directly and which cause a #VMEXIT.
//!
//! Both are plain byte arrays the processor reads by host-physical address
//! (IOPM_BASE_PA, MSRPM_BASE_PA in the VMCB). They only take effect while the
//! IOIO_PROT / MSR_PROT intercepts are set; with those clear, nothing is intercepted.
//! The types are 4 KiB aligned so the kernel can place them directly in frames from its
//! allocator (the hardware ignores the low 12 bits of the base addresses). Their
//! physical pages must be contiguous.

/// Size of the I/O permission map: 12 KiB (APM Vol. 2 15.10.1).
pub const IOPM_SIZE: usize = 3 * 4096;
/// Size of the MSR permission map: 8 KiB (APM Vol. 2 15.11).
pub const MSRPM_SIZE: usize = 2 * 4096;

/// The I/O permission map: one bit per port, set = intercept (APM Vol. 2 15.10.1).
///
/// A multi-byte access (16- or 32-bit IN/OUT) is intercepted if the bit of *any* port
/// it touches is set (APM 15.10.2): allowing port 0x60 does not let a 16-bit access to
/// 0x5F through while 0x5F is intercepted. The bits after port 0xFFFF (the third page)
/// cover accesses that wrap past 0xFFFF; they stay set, so such accesses always exit.
#[repr(C, align(4096))]
#[derive(Clone, PartialEq, Eq)]
pub struct IoPermissionMap {
    bits: [u8; IOPM_SIZE],
}

impl IoPermissionMap {
    /// Every port intercepted.
    pub const fn intercept_all() -> Self {
        IoPermissionMap {
            bits: [0xFF; IOPM_SIZE],
        }
    }

    /// Reset to every port intercepted, in place (no 12 KiB temporary).
    pub fn reset_intercept_all(&mut self) {
        self.bits.fill(0xFF);
    }

    /// Let the guest access `port` directly (byte accesses; see the type's docs for
    /// wider ones).
    pub fn allow(&mut self, port: u16) {
        self.bits[port as usize / 8] &= !(1 << (port % 8));
    }

    /// Intercept accesses to `port`.
    pub fn intercept(&mut self, port: u16) {
        self.bits[port as usize / 8] |= 1 << (port % 8);
    }

    /// Let the guest access `count` ports starting at `first` directly (clamped at
    /// port 0xFFFF).
    pub fn allow_range(&mut self, first: u16, count: u32) {
        for port in Self::range(first, count) {
            self.allow(port);
        }
    }

    /// Intercept `count` ports starting at `first` (clamped at port 0xFFFF).
    pub fn intercept_range(&mut self, first: u16, count: u32) {
        for port in Self::range(first, count) {
            self.intercept(port);
        }
    }

    /// Whether the bit for `port` is set.
    pub fn intercepted(&self, port: u16) -> bool {
        self.bit(port as usize)
    }

    /// Whether an access of `size` bytes (1, 2 or 4) at `port` causes a #VMEXIT: the
    /// processor checks the bits of every byte-port it touches (APM 15.10.2).
    pub fn access_intercepted(&self, port: u16, size: u8) -> bool {
        (0..size.max(1) as usize).any(|i| self.bit(port as usize + i))
    }

    /// The raw map, for copying into guest-visible frames or inspection.
    pub fn as_bytes(&self) -> &[u8; IOPM_SIZE] {
        &self.bits
    }

    fn bit(&self, index: usize) -> bool {
        self.bits[index / 8] & (1 << (index % 8)) != 0
    }

    fn range(first: u16, count: u32) -> impl Iterator<Item = u16> {
        let end = (first as u32 + count).min(0x1_0000);
        (first as u32..end).map(|p| p as u16)
    }
}

impl core::fmt::Debug for IoPermissionMap {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let allowed = (0..=u16::MAX).filter(|&p| !self.intercepted(p)).count();
        f.debug_struct("IoPermissionMap")
            .field("allowed_ports", &allowed)
            .finish()
    }
}

/// An MSR that the map cannot describe: accesses to it are always intercepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsrOutsideMap(pub u32);

/// The MSR permission map: two bits per MSR, the lower for RDMSR and the higher for
/// WRMSR, set = intercept (APM Vol. 2 15.11). It covers three ranges of 8192 MSRs:
///
/// | bytes           | MSRs                      |
/// |-----------------|---------------------------|
/// | 0x0000 - 0x07FF | 0000_0000 - 0000_1FFF     |
/// | 0x0800 - 0x0FFF | C000_0000 - C000_1FFF     |
/// | 0x1000 - 0x17FF | C001_0000 - C001_1FFF     |
/// | 0x1800 - 0x1FFF | reserved (kept set)       |
///
/// RDMSR/WRMSR of any MSR outside these ranges always causes a #VMEXIT when MSR_PROT
/// is set, whatever the map holds; [`allow`](Self::allow) reports such MSRs.
#[repr(C, align(4096))]
#[derive(Clone, PartialEq, Eq)]
pub struct MsrPermissionMap {
    bits: [u8; MSRPM_SIZE],
}

impl MsrPermissionMap {
    /// Every MSR intercepted, for reads and writes.
    pub const fn intercept_all() -> Self {
        MsrPermissionMap {
            bits: [0xFF; MSRPM_SIZE],
        }
    }

    /// Reset to every MSR intercepted, in place.
    pub fn reset_intercept_all(&mut self) {
        self.bits.fill(0xFF);
    }

    /// Set how `msr` is handled: after the call RDMSR passes through to the hardware
    /// iff `read`, and WRMSR iff `write`; the other direction is intercepted.
    pub fn allow(&mut self, msr: u32, read: bool, write: bool) -> Result<(), MsrOutsideMap> {
        let (byte, shift) = Self::locate(msr).ok_or(MsrOutsideMap(msr))?;
        let read_bit = 1u8 << shift;
        let write_bit = 1u8 << (shift + 1);
        let b = &mut self.bits[byte];
        *b |= read_bit | write_bit;
        if read {
            *b &= !read_bit;
        }
        if write {
            *b &= !write_bit;
        }
        Ok(())
    }

    /// Intercept both directions of `msr` (a no-op outside the map, where that holds
    /// anyway).
    pub fn intercept(&mut self, msr: u32) {
        let _ = self.allow(msr, false, false);
    }

    /// Whether RDMSR (`write == false`) or WRMSR (`write == true`) of `msr` exits.
    pub fn intercepted(&self, msr: u32, write: bool) -> bool {
        match Self::locate(msr) {
            Some((byte, shift)) => self.bits[byte] & (1 << (shift + write as u32)) != 0,
            None => true,
        }
    }

    /// The raw map.
    pub fn as_bytes(&self) -> &[u8; MSRPM_SIZE] {
        &self.bits
    }

    /// Byte offset and bit position of `msr`'s read bit.
    fn locate(msr: u32) -> Option<(usize, u32)> {
        let (range_offset, index) = match msr {
            0x0000_0000..=0x0000_1FFF => (0x0000, msr),
            0xC000_0000..=0xC000_1FFF => (0x0800, msr - 0xC000_0000),
            0xC001_0000..=0xC001_1FFF => (0x1000, msr - 0xC001_0000),
            _ => return None,
        };
        let bit = index as usize * 2;
        Some((range_offset + bit / 8, (bit % 8) as u32))
    }
}

impl core::fmt::Debug for MsrPermissionMap {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let clear = self.bits.iter().map(|b| b.count_zeros()).sum::<u32>();
        f.debug_struct("MsrPermissionMap")
            .field("passthrough_bits", &clear)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::boxed::Box;

    #[test]
    fn layout() {
        assert_eq!(core::mem::size_of::<IoPermissionMap>(), IOPM_SIZE);
        assert_eq!(core::mem::align_of::<IoPermissionMap>(), 4096);
        assert_eq!(core::mem::size_of::<MsrPermissionMap>(), MSRPM_SIZE);
        assert_eq!(core::mem::align_of::<MsrPermissionMap>(), 4096);
    }

    #[test]
    fn io_allow_and_intercept() {
        let mut m = Box::new(IoPermissionMap::intercept_all());
        assert!(m.intercepted(0x3F8));
        m.allow(0x3F8);
        assert!(!m.intercepted(0x3F8));
        assert!(m.intercepted(0x3F9));
        assert_eq!(m.as_bytes()[0x3F8 / 8], 0xFE);
        m.intercept(0x3F8);
        assert!(m.intercepted(0x3F8));

        m.allow(0xFFFF);
        assert_eq!(m.as_bytes()[0x1FFF], 0x7F);
        assert!(!m.intercepted(0xFFFF));
    }

    #[test]
    fn io_ranges() {
        let mut m = Box::new(IoPermissionMap::intercept_all());
        m.allow_range(0x40, 4);
        assert!(m.intercepted(0x3F));
        assert!((0x40..0x44).all(|p| !m.intercepted(p)));
        assert!(m.intercepted(0x44));
        m.intercept_range(0x41, 2);
        assert!(!m.intercepted(0x40) && m.intercepted(0x41) && m.intercepted(0x42));
        assert!(!m.intercepted(0x43));
        // Clamped at the top of the port space; the wrap-around bits stay set.
        m.allow_range(0xFFF0, 100);
        assert!((0xFFF0..=0xFFFF).all(|p| !m.intercepted(p)));
        assert_eq!(m.as_bytes()[0x2000], 0xFF);
        m.reset_intercept_all();
        assert!(m.intercepted(0x40));
    }

    #[test]
    fn io_multibyte_access_checks_every_port() {
        let mut m = Box::new(IoPermissionMap::intercept_all());
        m.allow_range(0xCF8, 4);
        assert!(!m.access_intercepted(0xCF8, 4));
        assert!(!m.access_intercepted(0xCFA, 2));
        assert!(m.access_intercepted(0xCFA, 4));
        assert!(m.access_intercepted(0xCF7, 2));
        // An access wrapping past 0xFFFF hits the third page.
        m.allow(0xFFFF);
        assert!(!m.access_intercepted(0xFFFF, 1));
        assert!(m.access_intercepted(0xFFFF, 2));
    }

    #[test]
    fn msr_bits_land_where_the_apm_says() {
        let mut m = Box::new(MsrPermissionMap::intercept_all());
        // MSR 0: bits 0 (read) and 1 (write) of byte 0.
        m.allow(0, true, false).unwrap();
        assert_eq!(m.as_bytes()[0], 0xFE);
        // EFER C000_0080: index 0x80, bit 0x100, byte 0x800 + 0x20.
        m.allow(0xC000_0080, false, true).unwrap();
        assert_eq!(m.as_bytes()[0x820], 0xFD);
        // C001_0000 starts at byte 0x1000; C001_1FFF ends at 0x17FF bits 6-7.
        m.allow(0xC001_1FFF, true, true).unwrap();
        assert_eq!(m.as_bytes()[0x17FF], 0x3F);
        // 0000_1FFF: byte 0x7FF, bits 6-7.
        m.allow(0x1FFF, true, true).unwrap();
        assert_eq!(m.as_bytes()[0x7FF], 0x3F);
        // The reserved quarter is untouched.
        assert!(m.as_bytes()[0x1800..].iter().all(|&b| b == 0xFF));
    }

    #[test]
    fn msr_allow_sets_both_directions() {
        let mut m = Box::new(MsrPermissionMap::intercept_all());
        let lstar = 0xC000_0082;
        assert!(m.intercepted(lstar, false) && m.intercepted(lstar, true));
        m.allow(lstar, true, true).unwrap();
        assert!(!m.intercepted(lstar, false) && !m.intercepted(lstar, true));
        m.allow(lstar, true, false).unwrap();
        assert!(!m.intercepted(lstar, false) && m.intercepted(lstar, true));
        m.allow(lstar, false, true).unwrap();
        assert!(m.intercepted(lstar, false) && !m.intercepted(lstar, true));
        m.intercept(lstar);
        assert!(m.intercepted(lstar, false) && m.intercepted(lstar, true));
        // Neighbours are unaffected.
        m.allow(0xC000_0081, true, true).unwrap();
        assert!(m.intercepted(0xC000_0080, false) && m.intercepted(0xC000_0082, true));
    }

    #[test]
    fn msrs_outside_the_ranges_always_exit() {
        let mut m = Box::new(MsrPermissionMap::intercept_all());
        for msr in [0x2000, 0x4000_0000, 0xC000_2000, 0xC001_2000, 0xFFFF_FFFF] {
            assert_eq!(m.allow(msr, true, true), Err(MsrOutsideMap(msr)));
            assert!(m.intercepted(msr, false) && m.intercepted(msr, true));
        }
        m.intercept(0x4000_0000);
        assert!(m.as_bytes().iter().all(|&b| b == 0xFF));
        m.allow(0x10, true, true).unwrap();
        m.reset_intercept_all();
        assert!(m.intercepted(0x10, false));
    }
}
