//! The Intel EPT entry format, plugged into the shared nested-page-table builder
//! ([`vcpu::paging`]) as [`EptFormat`]; [`Ept`] is the table type of one guest, and
//! [`eptp`] the EPT pointer that names it in the VMCS.
//!
//! SDM Vol. 3C 29.3.2 (EPT translation mechanism), Tables 29-1..29-6:
//!
//! - Bits 2:0 are read, write, execute. An entry with all three clear is not present;
//!   write without read is a misconfiguration (the builder always grants read, see
//!   [`vcpu::paging::Perms`]). Table entries grant R/W/X so only the leaf decides.
//! - Leaves carry the EPT memory type in bits 5:3: write-back (6) here, for guest RAM.
//!   Bit 6 ("ignore PAT") stays clear so the guest's own PAT still combines with it,
//!   as on bare metal (SDM 29.3.7.2). Bits 5:3 and 7 of table entries are reserved
//!   (must be 0) at the PML4 level and ignored/page-size below it.
//! - Bit 7 marks a 2 MiB (PDE) or 1 GiB (PDPTE) leaf. 1 GiB leaves need
//!   IA32_VMX_EPT_VPID_CAP bit 17 ([`max_leaf_level`]).
//! - Accessed/dirty flags are off (EPTP bit 6 clear), so bits 8 and 9 stay 0.
//!
//! The EPT pointer (SDM 25.6.11): bits 2:0 the memory type used to access the EPT
//! paging structures (WB = 6, IA32_VMX_EPT_VPID_CAP bit 14), bits 5:3 the page-walk
//! length minus one (3 for the 4-level walk of bit 6), bits 51:12 the PML4 address.

use vcpu::paging::{EntryFormat, Level, NestedPageTable, Perms};

use crate::caps::VmxCaps;

/// The EPT entry format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EptFormat;

/// The extended page tables of one guest.
pub type Ept = NestedPageTable<EptFormat>;

pub const READ: u64 = 1 << 0;
pub const WRITE: u64 = 1 << 1;
pub const EXECUTE: u64 = 1 << 2;
/// The EPT memory type of a leaf, bits 5:3.
pub const MEMORY_TYPE_SHIFT: u32 = 3;
pub const MEMORY_TYPE_MASK: u64 = 7 << MEMORY_TYPE_SHIFT;
/// Uncacheable and write-back (SDM Vol. 3A 13.3; the EPT uses the same numbers).
pub const MEMORY_TYPE_UC: u64 = 0;
pub const MEMORY_TYPE_WB: u64 = 6;
/// "Ignore PAT memory type" (leaves only).
pub const IGNORE_PAT: u64 = 1 << 6;
/// A 2 MiB or 1 GiB leaf.
pub const LARGE_PAGE: u64 = 1 << 7;
/// The physical-address field, bits 51:12.
pub const ADDRESS_MASK: u64 = 0x000F_FFFF_FFFF_F000;

impl EntryFormat for EptFormat {
    fn table_entry(next_table_hpa: u64) -> u64 {
        (next_table_hpa & ADDRESS_MASK) | READ | WRITE | EXECUTE
    }

    fn leaf_entry(hpa: u64, level: Level, perms: Perms) -> u64 {
        let mut entry = (hpa & ADDRESS_MASK) | READ | (MEMORY_TYPE_WB << MEMORY_TYPE_SHIFT);
        if perms.write {
            entry |= WRITE;
        }
        if perms.execute {
            entry |= EXECUTE;
        }
        if level != Level::Pt {
            entry |= LARGE_PAGE;
        }
        entry
    }

    fn is_present(entry: u64) -> bool {
        entry & (READ | WRITE | EXECUTE) != 0
    }

    fn is_leaf(entry: u64, level: Level) -> bool {
        match level {
            Level::Pt => true,
            Level::Pd | Level::Pdpt => entry & LARGE_PAGE != 0,
            Level::Pml4 => false,
        }
    }

    fn address(entry: u64) -> u64 {
        entry & ADDRESS_MASK
    }

    fn perms(entry: u64) -> Perms {
        Perms {
            write: entry & WRITE != 0,
            execute: entry & EXECUTE != 0,
        }
    }
}

/// The EPT pointer for tables rooted at `pml4`: write-back paging-structure accesses,
/// a 4-level walk, accessed/dirty flags off.
pub const fn eptp(pml4: u64) -> u64 {
    (pml4 & ADDRESS_MASK) | ((4 - 1) << 3) | MEMORY_TYPE_WB
}

/// The largest leaf the processor supports: 1 GiB with IA32_VMX_EPT_VPID_CAP bit 17,
/// 2 MiB with bit 16, else 4 KiB only.
pub const fn max_leaf_level(caps: &VmxCaps) -> Level {
    if caps.ept_1g {
        Level::Pdpt
    } else if caps.ept_2m {
        Level::Pd
    } else {
        Level::Pt
    }
}

/// INVEPT types (SDM Vol. 3C 31.3 INVEPT; support in IA32_VMX_EPT_VPID_CAP bits 25/26).
pub mod invept {
    pub const SINGLE_CONTEXT: u64 = 1;
    pub const ALL_CONTEXT: u64 = 2;
    pub const CAP_SINGLE_CONTEXT: u64 = 1 << 25;
    pub const CAP_ALL_CONTEXT: u64 = 1 << 26;
}

/// The INVEPT type to invalidate one EPTP's mappings with: single-context when
/// supported, else all-context (which covers it); `None` without INVEPT.
pub const fn invept_type(caps: &VmxCaps) -> Option<u64> {
    if !caps.invept {
        None
    } else if caps.ept_vpid_cap & invept::CAP_SINGLE_CONTEXT != 0 {
        Some(invept::SINGLE_CONTEXT)
    } else if caps.ept_vpid_cap & invept::CAP_ALL_CONTEXT != 0 {
        Some(invept::ALL_CONTEXT)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::controls::tests::skylake;
    use std::boxed::Box;
    use std::vec::Vec;
    use vcpu::paging::{TableMemory, ENTRIES};
    use vcpu::GuestMapping;

    struct Mem(Vec<Box<[u64; ENTRIES]>>);

    const BASE: u64 = 0x8_0000_0000;

    impl TableMemory for Mem {
        fn alloc_table(&mut self) -> Option<u64> {
            self.0.push(Box::new([0; ENTRIES]));
            Some(BASE + self.0.len() as u64 * 0x1000)
        }
        fn table(&mut self, hpa: u64) -> &mut [u64; ENTRIES] {
            &mut self.0[((hpa - BASE) / 0x1000) as usize - 1]
        }
    }

    #[test]
    fn table_entries_grant_everything() {
        let e = EptFormat::table_entry(0x1234_5000);
        assert_eq!(e, 0x1234_5007);
        assert!(EptFormat::is_present(e));
        assert!(!EptFormat::is_leaf(e, Level::Pd));
        assert!(!EptFormat::is_leaf(e, Level::Pml4));
        assert_eq!(EptFormat::address(e), 0x1234_5000);
        assert_eq!(EptFormat::perms(e), Perms::RWX);
        // Memory type and large-page bits are reserved in table entries.
        assert_eq!(e & (MEMORY_TYPE_MASK | LARGE_PAGE | IGNORE_PAT), 0);
    }

    #[test]
    fn leaf_bits() {
        let e = EptFormat::leaf_entry(0x7000, Level::Pt, Perms::RWX);
        assert_eq!(e, 0x7000 | 0b111 | (6 << 3));
        assert!(EptFormat::is_leaf(e, Level::Pt));
        assert_eq!(e & IGNORE_PAT, 0, "the guest PAT still applies");

        let e = EptFormat::leaf_entry(0x20_0000, Level::Pd, Perms::RO);
        assert_eq!(e, 0x20_0000 | READ | (6 << 3) | LARGE_PAGE);
        assert!(EptFormat::is_leaf(e, Level::Pd));
        assert_eq!(EptFormat::perms(e), Perms::RO);

        let e = EptFormat::leaf_entry(0x4000_0000, Level::Pdpt, Perms::RW);
        assert_eq!(e, 0x4000_0000 | READ | WRITE | (6 << 3) | LARGE_PAGE);
        assert!(EptFormat::is_leaf(e, Level::Pdpt));

        let e = EptFormat::leaf_entry(0x5000, Level::Pt, Perms::RX);
        assert_eq!(EptFormat::perms(e), Perms::RX);
        assert!(!EptFormat::is_present(0));
        // Execute-only is present (an EPT entry is present if any of R/W/X is set).
        assert!(EptFormat::is_present(EXECUTE));
    }

    #[test]
    fn eptp_encoding() {
        assert_eq!(eptp(0x1234_5000), 0x1234_5000 | (3 << 3) | 6);
        assert_eq!(eptp(0x1234_5000) & (1 << 6), 0, "accessed/dirty flags off");
    }

    #[test]
    fn builder_output() {
        let mut mem = Mem(Vec::new());
        let mut ept = Ept::new(&mut mem).unwrap();
        let caps = skylake();
        let max = max_leaf_level(&caps);
        assert_eq!(max, Level::Pdpt);
        // 1 GiB + 2 MiB + 4 KiB of RAM at 0, host-side at 4 GiB.
        let ram = GuestMapping {
            gpa: 0,
            hpa: 0x1_0000_0000,
            len: 0x4000_0000 + 0x20_0000 + 0x1000,
            writable: true,
            executable: true,
        };
        ept.map_guest(&mut mem, &ram, max).unwrap();
        let root = ept.root();
        let pml4 = *mem.table(root);
        let pdpt_pa = EptFormat::address(pml4[0]);
        assert_eq!(pml4[0] & 7, 7);
        let pdpt = *mem.table(pdpt_pa);
        assert_eq!(
            pdpt[0],
            0x1_0000_0000 | 7 | (6 << 3) | LARGE_PAGE,
            "1 GiB leaf"
        );
        let pd = *mem.table(EptFormat::address(pdpt[1]));
        assert_eq!(
            pd[0],
            0x1_4000_0000 | 7 | (6 << 3) | LARGE_PAGE,
            "2 MiB leaf"
        );
        let pt = *mem.table(EptFormat::address(pd[1]));
        assert_eq!(pt[0], 0x1_4020_0000 | 7 | (6 << 3), "4 KiB leaf");
        assert_eq!(pt[1], 0);
        assert_eq!(
            ept.translate(&mut mem, 0x4020_0123),
            Some((0x1_4020_0123, Perms::RWX))
        );
        assert_eq!(ept.translate(&mut mem, 0x4020_1000), None);

        // Without 1 GiB support the same RAM uses 2 MiB leaves.
        let mut caps = skylake();
        caps.ept_1g = false;
        assert_eq!(max_leaf_level(&caps), Level::Pd);
        caps.ept_2m = false;
        assert_eq!(max_leaf_level(&caps), Level::Pt);
    }

    #[test]
    fn invept_type_selection() {
        let mut caps = skylake();
        caps.ept_vpid_cap |= invept::CAP_SINGLE_CONTEXT | invept::CAP_ALL_CONTEXT;
        assert_eq!(invept_type(&caps), Some(invept::SINGLE_CONTEXT));
        caps.ept_vpid_cap &= !invept::CAP_SINGLE_CONTEXT;
        assert_eq!(invept_type(&caps), Some(invept::ALL_CONTEXT));
        caps.ept_vpid_cap &= !invept::CAP_ALL_CONTEXT;
        assert_eq!(invept_type(&caps), None);
        let mut caps = skylake();
        caps.invept = false;
        assert_eq!(invept_type(&caps), None);
    }
}
