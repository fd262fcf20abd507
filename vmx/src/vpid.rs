//! VPID allocation (SDM Vol. 3C 29.1, "Virtual Processor Identifiers").
//!
//! With "enable VPID" the processor tags linear translations with the VPID of the
//! vCPU that created them, so they survive VM entries and exits. VPID 0 is the host's
//! (a VMCS may not use it, SDM 27.2.1.1); guests get 1..=65535. Translations tagged
//! with a VPID outlive the vCPU that used it, so the backend invalidates a VPID with
//! INVVPID both when it frees it and when it hands it out again.

/// The VPIDs in use, one bit each; bit 0 (the host's) is always set.
#[derive(Clone)]
pub struct VpidAllocator {
    used: [u64; 1024],
    /// Where the next search starts, so freed VPIDs are not reused at once (fewer
    /// flushes needed in practice; correctness does not depend on it).
    next: u16,
}

impl Default for VpidAllocator {
    fn default() -> Self {
        Self::new()
    }
}

impl VpidAllocator {
    pub const fn new() -> Self {
        let mut used = [0; 1024];
        used[0] = 1;
        VpidAllocator { used, next: 1 }
    }

    fn is_used(&self, vpid: u16) -> bool {
        self.used[vpid as usize / 64] & (1 << (vpid % 64)) != 0
    }

    /// A free VPID in 1..=65535, or `None` when all are taken.
    pub fn alloc(&mut self) -> Option<u16> {
        let start = self.next.max(1);
        let found = (start..=u16::MAX)
            .chain(1..start)
            .find(|&v| !self.is_used(v))?;
        self.used[found as usize / 64] |= 1 << (found % 64);
        self.next = found.wrapping_add(1).max(1);
        Some(found)
    }

    /// Return `vpid` (ignored for 0, the host's).
    pub fn free(&mut self, vpid: u16) {
        if vpid != 0 {
            self.used[vpid as usize / 64] &= !(1 << (vpid % 64));
        }
    }

    pub fn in_use(&self) -> usize {
        self.used
            .iter()
            .map(|w| w.count_ones() as usize)
            .sum::<usize>()
            - 1
    }
}

/// INVVPID types (SDM Vol. 3C 31.3 INVVPID; support in IA32_VMX_EPT_VPID_CAP bits
/// 40-43).
pub mod invvpid {
    pub const INDIVIDUAL_ADDRESS: u64 = 0;
    pub const SINGLE_CONTEXT: u64 = 1;
    pub const ALL_CONTEXT: u64 = 2;
    pub const CAP_SINGLE_CONTEXT: u64 = 1 << 41;
    pub const CAP_ALL_CONTEXT: u64 = 1 << 42;
}

/// The INVVPID type that invalidates one VPID: single-context when supported, else
/// all-context; `None` when neither is (the backend then does not use VPIDs).
pub const fn invvpid_type(ept_vpid_cap: u64) -> Option<u64> {
    if ept_vpid_cap & invvpid::CAP_SINGLE_CONTEXT != 0 {
        Some(invvpid::SINGLE_CONTEXT)
    } else if ept_vpid_cap & invvpid::CAP_ALL_CONTEXT != 0 {
        Some(invvpid::ALL_CONTEXT)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_from_one_and_never_zero() {
        let mut a = VpidAllocator::new();
        assert_eq!(a.alloc(), Some(1));
        assert_eq!(a.alloc(), Some(2));
        assert_eq!(a.in_use(), 2);
        a.free(1);
        // Not reused immediately.
        assert_eq!(a.alloc(), Some(3));
        a.free(0);
        assert_eq!(a.in_use(), 2);
    }

    #[test]
    fn exhausts_at_65535_and_wraps_to_freed() {
        let mut a = VpidAllocator::new();
        for expected in 1..=u16::MAX {
            assert_eq!(a.alloc(), Some(expected));
        }
        assert_eq!(a.in_use(), 65535);
        assert_eq!(a.alloc(), None);
        a.free(7);
        assert_eq!(a.alloc(), Some(7));
        assert_eq!(a.alloc(), None);
        a.free(65535);
        assert_eq!(a.alloc(), Some(65535));
    }

    #[test]
    fn invvpid_types() {
        assert_eq!(
            invvpid_type((1 << 41) | (1 << 42)),
            Some(invvpid::SINGLE_CONTEXT)
        );
        assert_eq!(invvpid_type(1 << 42), Some(invvpid::ALL_CONTEXT));
        assert_eq!(invvpid_type(1 << 32), None);
    }
}
