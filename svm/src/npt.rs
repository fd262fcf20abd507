//! The AMD nested-page-table entry format, plugged into the shared builder
//! ([`vcpu::paging`]) as [`NptFormat`]; [`Npt`] is the table type the SVM backend uses.
//!
//! APM Vol. 2 15.25 (Nested Paging): nested tables use the ordinary long-mode page-table
//! format, walked in the host's paging mode. Consequences the kernel must honour:
//!
//! - **U/S on every level.** The nested walk treats every guest access as a user
//!   access (15.25.5), so an entry without U/S=1 makes the access fault with a #NPF
//!   even for CPL-0 guest code. Table and leaf entries here all set it.
//! - **NX needs host EFER.NXE.** Bit 63 is only the no-execute bit while the *host's*
//!   EFER.NXE is 1 at VMRUN; otherwise it is a reserved bit and every walk through a
//!   non-executable leaf ends in a #NPF with the RSV error bit. The kernel sets
//!   EFER.NXE before the first VMRUN.
//! - **4 levels only.** The host runs with 4-level paging (CR4.LA57=0), so the nested
//!   walk is 4-level too, which is all this builder produces.
//! - **1 GiB leaves** need CPUID Fn8000_0001 EDX[26] (Page1GB); pass
//!   [`Level::Pdpt`] as `max_leaf_level` only then, else [`Level::Pd`].
//! - **Memory type.** PWT, PCD and PAT stay 0, selecting entry 0 of the *host* PAT (WB
//!   after reset), which the hardware combines with the guest's own PAT (`G_PAT` in the
//!   VMCB) and MTRRs. The kernel must keep host PAT entry 0 = WB for guest RAM to be
//!   cacheable.
//! - The accessed and dirty bits are left for the hardware to set.
//!
//! N_CR3 in the VMCB takes [`NestedPageTable::root`] as is (PWT=PCD=0).

use vcpu::paging::{EntryFormat, Level, NestedPageTable, Perms};

/// The AMD64 long-mode page-table entry format as used for nested paging.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NptFormat;

/// The nested page table of one SVM guest.
pub type Npt = NestedPageTable<NptFormat>;

/// Present.
pub const PRESENT: u64 = 1 << 0;
/// Read/write: writes allowed through this entry.
pub const WRITABLE: u64 = 1 << 1;
/// User/supervisor: must be 1 on every level for nested paging (see the module docs).
pub const USER: u64 = 1 << 2;
pub const WRITE_THROUGH: u64 = 1 << 3;
pub const CACHE_DISABLE: u64 = 1 << 4;
pub const ACCESSED: u64 = 1 << 5;
pub const DIRTY: u64 = 1 << 6;
/// Page size: a PDPE (1 GiB) or PDE (2 MiB) that maps memory. MBZ in a PML4E.
pub const PAGE_SIZE: u64 = 1 << 7;
/// No-execute (only with host EFER.NXE=1).
pub const NO_EXECUTE: u64 = 1 << 63;
/// The physical-address field (bits 51:12). For 2 MiB / 1 GiB leaves bit 12 is the
/// PAT bit and the low bits up to the page size are reserved.
pub const ADDRESS_MASK: u64 = 0x000F_FFFF_FFFF_F000;

impl EntryFormat for NptFormat {
    fn table_entry(next_table_hpa: u64) -> u64 {
        // Non-leaf entries grant everything (and NX clear) so the leaf decides rights.
        (next_table_hpa & ADDRESS_MASK) | PRESENT | WRITABLE | USER
    }

    fn leaf_entry(hpa: u64, level: Level, perms: Perms) -> u64 {
        let mut entry = (hpa & ADDRESS_MASK) | PRESENT | USER;
        if perms.write {
            entry |= WRITABLE;
        }
        if !perms.execute {
            entry |= NO_EXECUTE;
        }
        if level != Level::Pt {
            entry |= PAGE_SIZE;
        }
        entry
    }

    fn is_present(entry: u64) -> bool {
        entry & PRESENT != 0
    }

    fn is_leaf(entry: u64, level: Level) -> bool {
        match level {
            Level::Pt => true,
            Level::Pd | Level::Pdpt => entry & PAGE_SIZE != 0,
            Level::Pml4 => false,
        }
    }

    fn address(entry: u64) -> u64 {
        entry & ADDRESS_MASK
    }

    fn perms(entry: u64) -> Perms {
        Perms {
            write: entry & WRITABLE != 0,
            // Without the user bit the nested walk denies every access; report no
            // rights at all rather than claim execute.
            execute: entry & NO_EXECUTE == 0 && entry & USER != 0,
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::boxed::Box;
    use std::vec::Vec;
    use vcpu::paging::{TableMemory, ENTRIES};

    struct Mem(Vec<Box<[u64; ENTRIES]>>);

    impl TableMemory for Mem {
        fn alloc_table(&mut self) -> Option<u64> {
            self.0.push(Box::new([0; ENTRIES]));
            // Place the fake tables at a high address to exercise the address mask.
            Some(0x8_0000_0000 + self.0.len() as u64 * 0x1000)
        }
        fn table(&mut self, hpa: u64) -> &mut [u64; ENTRIES] {
            &mut self.0[((hpa - 0x8_0000_0000) / 0x1000) as usize - 1]
        }
    }

    #[test]
    fn table_entries_grant_everything_to_user() {
        let e = NptFormat::table_entry(0x1234_5000);
        assert_eq!(e, 0x1234_5000 | 0b111);
        assert!(NptFormat::is_present(e));
        assert!(!NptFormat::is_leaf(e, Level::Pd));
        assert!(!NptFormat::is_leaf(e, Level::Pml4));
        assert_eq!(NptFormat::address(e), 0x1234_5000);
        assert_eq!(NptFormat::perms(e), Perms::RWX);
    }

    #[test]
    fn leaf_bits() {
        let e = NptFormat::leaf_entry(0x7000, Level::Pt, Perms::RWX);
        assert_eq!(e, 0x7000 | PRESENT | WRITABLE | USER);
        assert!(NptFormat::is_leaf(e, Level::Pt));

        let e = NptFormat::leaf_entry(0x20_0000, Level::Pd, Perms::RO);
        assert_eq!(e, 0x20_0000 | PRESENT | USER | PAGE_SIZE | NO_EXECUTE);
        assert!(NptFormat::is_leaf(e, Level::Pd));
        assert_eq!(NptFormat::perms(e), Perms::RO);

        let e = NptFormat::leaf_entry(0x4000_0000, Level::Pdpt, Perms::RW);
        assert_eq!(
            e,
            0x4000_0000 | PRESENT | WRITABLE | USER | PAGE_SIZE | NO_EXECUTE
        );
        assert!(NptFormat::is_leaf(e, Level::Pdpt));
        assert_eq!(NptFormat::perms(e), Perms::RW);

        let e = NptFormat::leaf_entry(0x5000, Level::Pt, Perms::RX);
        assert_eq!(NptFormat::perms(e), Perms::RX);
        assert_eq!(e & NO_EXECUTE, 0);
        assert_eq!(e & WRITABLE, 0);
    }

    #[test]
    fn every_level_has_user_set() {
        let mut mem = Mem(Vec::new());
        let mut npt = Npt::new(&mut mem).unwrap();
        npt.map(&mut mem, 0x1000, 0x9000, 0x1000, Perms::RO, Level::Pdpt)
            .unwrap();
        let mut table = npt.root();
        for level in [Level::Pml4, Level::Pdpt, Level::Pd, Level::Pt] {
            let e = mem.table(table)[level.index(0x1000)];
            assert_ne!(e & USER, 0, "{level:?}");
            assert_ne!(e & PRESENT, 0, "{level:?}");
            assert_eq!(e & PAGE_SIZE, 0, "{level:?}");
            table = NptFormat::address(e);
        }
        assert_eq!(table, 0x9000);
        assert_eq!(npt.translate(&mut mem, 0x1FFF), Some((0x9FFF, Perms::RO)));
    }

    #[test]
    fn large_pages_round_trip() {
        let mut mem = Mem(Vec::new());
        let mut npt = Npt::new(&mut mem).unwrap();
        npt.map(
            &mut mem,
            0,
            0x1_0000_0000,
            0x4000_0000,
            Perms::RWX,
            Level::Pdpt,
        )
        .unwrap();
        npt.map(
            &mut mem,
            0x4000_0000,
            0x20_0000,
            0x40_0000,
            Perms::RW,
            Level::Pdpt,
        )
        .unwrap();
        assert_eq!(
            npt.translate(&mut mem, 0x3FFF_FFFF),
            Some((0x1_3FFF_FFFF, Perms::RWX))
        );
        assert_eq!(
            npt.translate(&mut mem, 0x4030_0001),
            Some((0x50_0001, Perms::RW))
        );
        let pdpt = NptFormat::address(mem.table(npt.root())[0]);
        let pdpte = mem.table(pdpt)[0];
        assert_ne!(pdpte & PAGE_SIZE, 0);
        assert_eq!(pdpte & NO_EXECUTE, 0);
    }
}
