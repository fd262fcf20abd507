//! The I/O bitmaps, the MSR bitmap and the VM-entry/VM-exit MSR areas: what the
//! processor lets a guest do directly and which MSRs it switches on entry and exit.
//!
//! All are plain 4 KiB pages the processor reads by host-physical address; the types
//! here are `repr(C, align(4096))` so the runtime can place them straight into frames.
//!
//! **MSR policy.** Every MSR access exits except for the MSRs whose guest values the
//! processor keeps apart from the host's:
//!
//! - IA32_SYSENTER_CS/ESP/EIP (0x174-0x176) and IA32_FS_BASE/GS_BASE: guest-state
//!   fields of the VMCS, saved on every exit and loaded on every entry, with the host's
//!   values loaded from the host-state area (SDM Vol. 3C 28.3.2, 28.5.1).
//! - IA32_STAR, LSTAR, CSTAR, FMASK (0xC000_0081-84) and IA32_KERNEL_GS_BASE: VMX does
//!   *not* switch these. They are passed through only because the backend switches them
//!   itself with the MSR areas ([`MsrArea`]): the VM-entry MSR-load area loads the
//!   guest's values (SDM 27.4), the VM-exit MSR-store area saves them back into the
//!   same list (SDM 28.4), and the VM-exit MSR-load area restores the host's
//!   (SDM 28.6). One guest's values therefore never stay in the processor when the
//!   host or another guest runs.
//! - IA32_EFER and IA32_PAT are switched by the VMCS ("load/save IA32_EFER/PAT"), but
//!   stay intercepted: the core's MSR policy decides which values a guest may write.

use crate::vmcs::msr;

pub const PAGE_SIZE: usize = 4096;

/// I/O bitmap A (ports 0x0000-0x7FFF) or B (0x8000-0xFFFF): one bit per port, set =
/// exit (SDM Vol. 3C 25.6.4). An access that spans several ports exits if any of their
/// bits is set, and one that wraps past 0xFFFF always exits.
#[repr(C, align(4096))]
pub struct IoBitmap(pub [u8; PAGE_SIZE]);

impl IoBitmap {
    /// Every port intercepted, in place.
    pub fn intercept_all(&mut self) {
        self.0.fill(0xFF);
    }
}

/// The MSR bitmap (SDM Vol. 3C 25.6.9): four 1 KiB bitmaps, read-low (MSRs
/// 0-0x1FFF), read-high (0xC000_0000-0xC000_1FFF), write-low, write-high. A set bit
/// makes the access exit; MSRs outside both ranges always exit.
#[repr(C, align(4096))]
pub struct MsrBitmap(pub [u8; PAGE_SIZE]);

/// MSRs the guest accesses directly; see the module documentation for why each is safe.
pub const PASS_THROUGH_MSRS: [u32; 10] = [
    msr::IA32_SYSENTER_CS,
    msr::IA32_SYSENTER_ESP,
    msr::IA32_SYSENTER_EIP,
    msr::IA32_FS_BASE,
    msr::IA32_GS_BASE,
    msr::IA32_STAR,
    msr::IA32_LSTAR,
    msr::IA32_CSTAR,
    msr::IA32_FMASK,
    msr::IA32_KERNEL_GS_BASE,
];

/// The MSRs the MSR areas switch (those VMX does not switch by itself).
pub const SWITCHED_MSRS: [u32; 5] = [
    msr::IA32_STAR,
    msr::IA32_LSTAR,
    msr::IA32_CSTAR,
    msr::IA32_FMASK,
    msr::IA32_KERNEL_GS_BASE,
];

impl MsrBitmap {
    /// Byte offset and bit of `msr` in the read bitmap (add 2048 for the write bitmap);
    /// `None` for an MSR outside both ranges.
    pub const fn position(msr: u32) -> Option<(usize, u8)> {
        let (base, index) = match msr {
            0..=0x1FFF => (0, msr),
            0xC000_0000..=0xC000_1FFF => (1024, msr - 0xC000_0000),
            _ => return None,
        };
        Some((base + index as usize / 8, (index % 8) as u8))
    }

    /// Every MSR intercepted, in place.
    pub fn intercept_all(&mut self) {
        self.0.fill(0xFF);
    }

    /// Let the guest read and write `msr` directly. Returns false for an MSR the bitmap
    /// cannot express (it then keeps exiting).
    pub fn pass_through(&mut self, msr: u32) -> bool {
        match Self::position(msr) {
            Some((byte, bit)) => {
                self.0[byte] &= !(1 << bit);
                self.0[byte + 2048] &= !(1 << bit);
                true
            }
            None => false,
        }
    }

    /// Whether a read (`write` false) or write of `msr` exits.
    pub fn intercepted(&self, msr: u32, write: bool) -> bool {
        match Self::position(msr) {
            Some((byte, bit)) => {
                let byte = if write { byte + 2048 } else { byte };
                self.0[byte] & (1 << bit) != 0
            }
            None => true,
        }
    }

    /// The backend's bitmap: everything intercepted except [`PASS_THROUGH_MSRS`].
    pub fn init(&mut self) {
        self.intercept_all();
        for m in PASS_THROUGH_MSRS {
            self.pass_through(m);
        }
    }
}

/// One entry of a VM-entry/VM-exit MSR area (SDM Vol. 3C 25.7.2, Table 25-14).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsrEntry {
    pub index: u32,
    pub reserved: u32,
    pub value: u64,
}

/// The MSR-area page of one vCPU: the guest list (VM-entry MSR-load area *and* VM-exit
/// MSR-store area, the same memory, so what exit stores the next entry loads) and the
/// host list (VM-exit MSR-load area). Both are 16-byte aligned as required.
#[repr(C, align(4096))]
pub struct MsrArea {
    pub guest: [MsrEntry; SWITCHED_MSRS.len()],
    pub host: [MsrEntry; SWITCHED_MSRS.len()],
}

impl MsrArea {
    /// Byte offset of the host list in the page.
    pub const HOST_OFFSET: u64 = core::mem::offset_of!(MsrArea, host) as u64;
    /// Entries in each list (the counts for the VMCS).
    pub const COUNT: u32 = SWITCHED_MSRS.len() as u32;

    /// Guest values start at 0 (their reset values); host values are read with
    /// `rdmsr`, which is only called for [`SWITCHED_MSRS`].
    pub fn init(&mut self, mut rdmsr: impl FnMut(u32) -> u64) {
        for (i, m) in SWITCHED_MSRS.into_iter().enumerate() {
            self.guest[i] = MsrEntry {
                index: m,
                reserved: 0,
                value: 0,
            };
            self.host[i] = MsrEntry {
                index: m,
                reserved: 0,
                value: rdmsr(m),
            };
        }
    }

    /// The guest's value of a switched MSR.
    pub fn guest_value(&self, msr: u32) -> Option<u64> {
        self.guest.iter().find(|e| e.index == msr).map(|e| e.value)
    }

    /// The guest's values of [`SWITCHED_MSRS`], in that order.
    pub fn guest_values(&self) -> [u64; SWITCHED_MSRS.len()] {
        SWITCHED_MSRS.map(|m| self.guest_value(m).unwrap_or(0))
    }

    /// Sets the guest's values of [`SWITCHED_MSRS`], in that order (the next VM entry
    /// loads them).
    pub fn set_guest_values(&mut self, values: [u64; SWITCHED_MSRS.len()]) {
        for (m, v) in SWITCHED_MSRS.into_iter().zip(values) {
            if let Some(e) = self.guest.iter_mut().find(|e| e.index == m) {
                e.value = v;
            }
        }
    }
}

/// The maximum number of entries an MSR list may hold: 512 * (N + 1) with N in
/// IA32_VMX_MISC bits 27:25 (SDM Vol. 3D A.6).
pub const fn max_msr_list(misc: u64) -> u32 {
    512 * (((misc >> 25) & 7) as u32 + 1)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::boxed::Box;

    #[test]
    fn io_bitmaps_intercept_everything() {
        let mut a = Box::new(IoBitmap([0; PAGE_SIZE]));
        a.intercept_all();
        assert!(a.0.iter().all(|&b| b == 0xFF));
        assert_eq!(core::mem::align_of::<IoBitmap>(), 4096);
        assert_eq!(core::mem::size_of::<IoBitmap>(), 4096);
    }

    #[test]
    fn msr_bitmap_layout() {
        assert_eq!(MsrBitmap::position(0), Some((0, 0)));
        assert_eq!(MsrBitmap::position(0x174), Some((0x2E, 4)));
        assert_eq!(MsrBitmap::position(0x1FFF), Some((1023, 7)));
        assert_eq!(MsrBitmap::position(0xC000_0080), Some((1024 + 16, 0)));
        assert_eq!(MsrBitmap::position(0xC000_0102), Some((1024 + 32, 2)));
        assert_eq!(MsrBitmap::position(0x2000), None);
        assert_eq!(MsrBitmap::position(0xC001_0000), None);
        assert_eq!(MsrBitmap::position(0x4000_0000), None);
    }

    #[test]
    fn msr_bitmap_policy() {
        let mut m = Box::new(MsrBitmap([0; PAGE_SIZE]));
        m.init();
        for msr in PASS_THROUGH_MSRS {
            assert!(!m.intercepted(msr, false), "{msr:#x} read");
            assert!(!m.intercepted(msr, true), "{msr:#x} write");
        }
        for msr in [
            0x10,
            0x1B,
            0x3A,
            0x173,
            0x177,
            0x277,
            0x480,
            0xC000_0080,
            0xC000_0103,
            0xC001_0117,
        ] {
            assert!(m.intercepted(msr, false), "{msr:#x} read");
            assert!(m.intercepted(msr, true), "{msr:#x} write");
        }
        // Exactly ten read and ten write bits are clear.
        let clear: u32 = m.0.iter().map(|b| b.count_zeros()).sum();
        assert_eq!(clear, 20);
        assert!(!m.pass_through(0xC001_0000));
    }

    #[test]
    fn msr_area() {
        assert_eq!(core::mem::size_of::<MsrEntry>(), 16);
        assert_eq!(MsrArea::HOST_OFFSET % 16, 0);
        assert_eq!(MsrArea::COUNT, 5);
        let mut area = Box::new(MsrArea {
            guest: [MsrEntry::default(); 5],
            host: [MsrEntry::default(); 5],
        });
        area.init(|m| m as u64 + 1);
        for (i, m) in SWITCHED_MSRS.into_iter().enumerate() {
            assert_eq!(
                area.guest[i],
                MsrEntry {
                    index: m,
                    reserved: 0,
                    value: 0
                }
            );
            assert_eq!(area.host[i].value, m as u64 + 1);
        }
        assert_eq!(area.guest_value(msr::IA32_LSTAR), Some(0));
        assert_eq!(area.guest_value(msr::IA32_EFER), None);
        area.set_guest_values([1, 2, 3, 4, 5]);
        assert_eq!(area.guest_value(msr::IA32_STAR), Some(1));
        assert_eq!(area.guest_value(msr::IA32_KERNEL_GS_BASE), Some(5));
        assert_eq!(area.guest_values(), [1, 2, 3, 4, 5]);
        assert_eq!(
            area.host[1].value,
            msr::IA32_LSTAR as u64 + 1,
            "host list untouched"
        );
        // The VMX-switched and area-switched MSRs together are the policy's list.
        for m in SWITCHED_MSRS {
            assert!(PASS_THROUGH_MSRS.contains(&m));
        }
        assert!(max_msr_list(0) >= MsrArea::COUNT);
        assert_eq!(max_msr_list(0x7004_C1E7), 512);
        assert_eq!(max_msr_list(3 << 25), 2048);
    }
}
