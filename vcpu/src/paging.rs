//! A vendor-neutral builder for 4-level nested page tables (Intel EPT, AMD NPT).
//!
//! Both vendors walk the same radix tree (PML4 -> PDPT -> PD -> PT, 9 bits of the
//! guest-physical address per level, 4 KiB tables of 512 eight-byte entries) and differ
//! only in how an entry encodes presence, permissions and large pages. That encoding is
//! the [`EntryFormat`] a backend supplies; the tree walking, large-page selection and
//! overlap detection live here once and are tested on the host.
//!
//! Where the tables live is abstracted by [`TableMemory`]: the kernel implements it over
//! its frame allocator and its mapping of physical memory, the tests over boxed arrays.
//!
//! The builder only ever adds mappings. It never splits an existing large page and never
//! frees tables: a VM's nested tables are built once before it runs and dropped with it.

use core::marker::PhantomData;

use crate::GuestMapping;

/// Number of entries in one table.
pub const ENTRIES: usize = 512;
/// Size of one table (and of the smallest page).
pub const TABLE_SIZE: u64 = 4096;
/// Guest-physical addresses must lie below this: four levels translate 48 bits.
pub const GPA_LIMIT: u64 = 1 << 48;

/// Where the nested tables live.
pub trait TableMemory {
    /// A zeroed, 4 KiB-aligned 4 KiB frame for a new table; its host-physical address.
    /// `None` when memory is exhausted.
    fn alloc_table(&mut self) -> Option<u64>;
    /// The table at host-physical address `hpa` (one returned by `alloc_table`).
    fn table(&mut self, hpa: u64) -> &mut [u64; ENTRIES];
}

/// A level of the tree. Leaves can sit at `Pt` (4 KiB), `Pd` (2 MiB) and `Pdpt`
/// (1 GiB); `Pml4` entries always point at tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Level {
    Pt = 1,
    Pd = 2,
    Pdpt = 3,
    Pml4 = 4,
}

impl Level {
    /// Bit position of the lowest address bit this level's index selects.
    pub const fn shift(self) -> u32 {
        12 + 9 * (self as u32 - 1)
    }

    /// Bytes covered by one entry at this level (the page size of a leaf here).
    pub const fn page_size(self) -> u64 {
        1 << self.shift()
    }

    /// Index of `gpa` in a table at this level.
    pub const fn index(self, gpa: u64) -> usize {
        ((gpa >> self.shift()) & (ENTRIES as u64 - 1)) as usize
    }

    /// The level below (`None` for `Pt`).
    pub const fn next_lower(self) -> Option<Level> {
        match self {
            Level::Pml4 => Some(Level::Pdpt),
            Level::Pdpt => Some(Level::Pd),
            Level::Pd => Some(Level::Pt),
            Level::Pt => None,
        }
    }
}

/// Access rights of a guest-physical mapping. Reads are always allowed: neither EPT
/// (write-only and execute-only without read are misconfigurations or need extra
/// capabilities) nor NPT (no read bit at all) can express a mapping without read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Perms {
    pub write: bool,
    pub execute: bool,
}

impl Perms {
    pub const RO: Perms = Perms {
        write: false,
        execute: false,
    };
    pub const RW: Perms = Perms {
        write: true,
        execute: false,
    };
    pub const RX: Perms = Perms {
        write: false,
        execute: true,
    };
    pub const RWX: Perms = Perms {
        write: true,
        execute: true,
    };

    /// The rights that remain after a walk through an entry with `other` rights: the
    /// hardware grants an access only if every level on the path grants it.
    pub const fn intersect(self, other: Perms) -> Perms {
        Perms {
            write: self.write && other.write,
            execute: self.execute && other.execute,
        }
    }
}

/// How one vendor encodes nested page-table entries.
pub trait EntryFormat {
    /// An entry that points at the next-lower table. It must grant every right the
    /// hardware checks per level (read, write, execute, user) so that the leaf alone
    /// decides the access rights.
    fn table_entry(next_table_hpa: u64) -> u64;
    /// A leaf mapping the `level.page_size()` bytes at `hpa` (aligned to that size).
    /// `level` is `Pt`, `Pd` or `Pdpt`.
    fn leaf_entry(hpa: u64, level: Level, perms: Perms) -> u64;
    fn is_present(entry: u64) -> bool;
    /// Whether a present entry at `level` maps memory rather than pointing at a table.
    fn is_leaf(entry: u64, level: Level) -> bool;
    /// The physical address in a present entry: the next table's for a table entry,
    /// the page's for a leaf. Bits below the page size may hold flags for large leaves
    /// (the PAT bit 12 in both formats); the walker masks them.
    fn address(entry: u64) -> u64;
    /// The rights a present entry grants (for a table entry, what it lets through).
    fn perms(entry: u64) -> Perms;
}

/// Why a mapping could not be installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// `gpa`, `hpa` or `len` is not a multiple of 4 KiB.
    Unaligned,
    /// `TableMemory::alloc_table` returned `None`.
    OutOfMemory,
    /// Some page of the range is already mapped; `gpa` is the first such address found.
    AlreadyMapped { gpa: u64 },
    /// The range reaches at or beyond 2^48 (four-level tables cannot translate it).
    GpaTooLarge,
    /// The host range reaches beyond 2^52, the architectural physical-address limit.
    HpaTooLarge,
}

/// A 4-level nested page table in the format `F`.
pub struct NestedPageTable<F: EntryFormat> {
    root: u64,
    _format: PhantomData<F>,
}

impl<F: EntryFormat> core::fmt::Debug for NestedPageTable<F> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NestedPageTable")
            .field("root", &format_args!("{:#x}", self.root))
            .finish()
    }
}

impl<F: EntryFormat> NestedPageTable<F> {
    /// An empty table: one zeroed PML4.
    pub fn new<M: TableMemory + ?Sized>(mem: &mut M) -> Result<Self, MapError> {
        let root = mem.alloc_table().ok_or(MapError::OutOfMemory)?;
        Ok(Self {
            root,
            _format: PhantomData,
        })
    }

    /// Host-physical address of the PML4 (for N_CR3 or the EPTP).
    pub fn root(&self) -> u64 {
        self.root
    }

    /// Map `len` bytes of guest-physical memory at `gpa` to host-physical `hpa`.
    ///
    /// Each piece uses the largest page that fits: a 1 GiB leaf where `gpa`, `hpa` and the
    /// remaining length are all 1 GiB aligned and `max_leaf_level >= Pdpt` (1 GiB pages
    /// are a CPU capability, hence a parameter), then 2 MiB likewise, else 4 KiB. So
    /// `gpa` and `hpa` must agree modulo 2 MiB for large pages to be used at all.
    ///
    /// Overlap with an existing mapping is detected before anything is written, so an
    /// `AlreadyMapped` error leaves the tables unchanged. `OutOfMemory` can leave part of
    /// the range mapped (and empty tables linked in); the VM cannot run with a partial
    /// memory map anyway, and later calls still work on what is there.
    pub fn map<M: TableMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        gpa: u64,
        hpa: u64,
        len: u64,
        perms: Perms,
        max_leaf_level: Level,
    ) -> Result<(), MapError> {
        let page_mask = TABLE_SIZE - 1;
        if gpa & page_mask != 0 || hpa & page_mask != 0 || len & page_mask != 0 {
            return Err(MapError::Unaligned);
        }
        if len == 0 {
            return Ok(());
        }
        match gpa.checked_add(len) {
            Some(end) if end <= GPA_LIMIT => {}
            _ => return Err(MapError::GpaTooLarge),
        }
        match hpa.checked_add(len) {
            Some(end) if end <= 1 << 52 => {}
            _ => return Err(MapError::HpaTooLarge),
        }
        if let Some(gpa) = self.first_mapped(mem, gpa, gpa + len) {
            return Err(MapError::AlreadyMapped { gpa });
        }
        // The 1 GiB leaf is the largest any format allows.
        let max_leaf = max_leaf_level.min(Level::Pdpt);

        let mut done = 0;
        while done < len {
            done += self.map_one(mem, gpa + done, hpa + done, len - done, perms, max_leaf)?;
        }
        Ok(())
    }

    /// [`map`](Self::map) for a [`GuestMapping`] from the VM description.
    pub fn map_guest<M: TableMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        mapping: &GuestMapping,
        max_leaf_level: Level,
    ) -> Result<(), MapError> {
        let perms = Perms {
            write: mapping.writable,
            execute: mapping.executable,
        };
        self.map(
            mem,
            mapping.gpa,
            mapping.hpa,
            mapping.len,
            perms,
            max_leaf_level,
        )
    }

    /// Install one leaf for the start of `[gpa, gpa + remaining)`; returns its size.
    fn map_one<M: TableMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        gpa: u64,
        hpa: u64,
        remaining: u64,
        perms: Perms,
        max_leaf: Level,
    ) -> Result<u64, MapError> {
        let mut table = self.root;
        let mut level = Level::Pml4;
        loop {
            let index = level.index(gpa);
            let entry = mem.table(table)[index];
            let size = level.page_size();
            let fits = level <= max_leaf
                && gpa.is_multiple_of(size)
                && hpa.is_multiple_of(size)
                && remaining >= size;
            if F::is_present(entry) {
                if F::is_leaf(entry, level) {
                    // The pre-check makes this unreachable unless the caller's memory
                    // changed underneath; report it rather than overwrite.
                    return Err(MapError::AlreadyMapped { gpa });
                }
                // A table is already here (the region is partly mapped, or an earlier
                // call ran out of memory after linking it): use smaller pages inside it
                // instead of replacing it with a large leaf.
                table = F::address(entry) & !(TABLE_SIZE - 1);
            } else if fits {
                mem.table(table)[index] = F::leaf_entry(hpa, level, perms);
                return Ok(size);
            } else {
                let next = mem.alloc_table().ok_or(MapError::OutOfMemory)?;
                mem.table(table)[index] = F::table_entry(next);
                table = next;
            }
            level = match level.next_lower() {
                Some(lower) => lower,
                // A table entry at the PT level is impossible: every present PT entry
                // is a leaf.
                None => return Err(MapError::AlreadyMapped { gpa }),
            };
        }
    }

    /// The lowest address in `[start, end)` that some leaf already maps.
    fn first_mapped<M: TableMemory + ?Sized>(
        &self,
        mem: &mut M,
        start: u64,
        end: u64,
    ) -> Option<u64> {
        Self::first_mapped_in(mem, self.root, Level::Pml4, 0, start, end)
    }

    /// Search the table at `table` (level `level`, covering addresses from `base`).
    fn first_mapped_in<M: TableMemory + ?Sized>(
        mem: &mut M,
        table: u64,
        level: Level,
        base: u64,
        start: u64,
        end: u64,
    ) -> Option<u64> {
        let size = level.page_size();
        let table_span = size * ENTRIES as u64;
        let first = if start > base {
            ((start - base) / size) as usize
        } else {
            0
        };
        let last_end = end.min(base + table_span);
        let mut index = first;
        while index < ENTRIES {
            let entry_base = base + index as u64 * size;
            if entry_base >= last_end {
                break;
            }
            let entry = mem.table(table)[index];
            if F::is_present(entry) {
                let hit = start.max(entry_base);
                if F::is_leaf(entry, level) {
                    return Some(hit);
                }
                if let Some(lower) = level.next_lower() {
                    let next = F::address(entry) & !(TABLE_SIZE - 1);
                    if let Some(found) =
                        Self::first_mapped_in(mem, next, lower, entry_base, start, end)
                    {
                        return Some(found);
                    }
                }
            }
            index += 1;
        }
        None
    }

    /// Removes the 4 KiB page at `gpa` (page aligned) from the guest's view: a larger
    /// leaf that covers it is split first into leaves of the next size down, with
    /// the same rights, until a 4 KiB leaf maps it, and that leaf is cleared. Each
    /// new table is filled before the entry that points to it is written (one
    /// 8-byte store), so a walk in progress sees the old leaf or the complete table.
    /// Returns whether the page was mapped. The caller flushes cached translations
    /// before the guest runs again (the old leaf may be in the TLB).
    pub fn unmap_page<M: TableMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        gpa: u64,
    ) -> Result<bool, MapError> {
        if !gpa.is_multiple_of(TABLE_SIZE) {
            return Err(MapError::Unaligned);
        }
        if gpa >= GPA_LIMIT {
            return Err(MapError::GpaTooLarge);
        }
        let mut table = self.root;
        let mut level = Level::Pml4;
        loop {
            let index = level.index(gpa);
            let entry = mem.table(table)[index];
            if !F::is_present(entry) {
                return Ok(false);
            }
            if F::is_leaf(entry, level) {
                let Some(lower) = level.next_lower() else {
                    mem.table(table)[index] = 0;
                    return Ok(true);
                };
                // Split: the same memory, the same rights, in smaller leaves.
                let size = level.page_size();
                let base = F::address(entry) & !(size - 1);
                let perms = F::perms(entry);
                let next = mem.alloc_table().ok_or(MapError::OutOfMemory)?;
                let step = lower.page_size();
                for i in 0..ENTRIES {
                    mem.table(next)[i] = F::leaf_entry(base + i as u64 * step, lower, perms);
                }
                mem.table(table)[index] = F::table_entry(next);
                table = next;
                level = lower;
                continue;
            }
            table = F::address(entry) & !(TABLE_SIZE - 1);
            level = match level.next_lower() {
                Some(lower) => lower,
                None => return Ok(false),
            };
        }
    }

    /// Calls `free` with every table page of this structure (the root last), so the
    /// owner can return them to its allocator when the guest is torn down.
    pub fn destroy<M: TableMemory + ?Sized>(self, mem: &mut M, mut free: impl FnMut(&mut M, u64)) {
        fn walk<F: EntryFormat, M: TableMemory + ?Sized>(
            mem: &mut M,
            table: u64,
            level: Level,
            free: &mut impl FnMut(&mut M, u64),
        ) {
            if let Some(lower) = level.next_lower() {
                for i in 0..ENTRIES {
                    let e = mem.table(table)[i];
                    if F::is_present(e) && !F::is_leaf(e, level) {
                        walk::<F, M>(mem, F::address(e), lower, free);
                    }
                }
            }
            free(mem, table);
        }
        walk::<F, M>(mem, self.root, Level::Pml4, &mut free);
    }

    /// Walk the tables as the hardware would: the host-physical address `gpa` maps to
    /// and the rights granted along the whole path, or `None` if it is not mapped.
    pub fn translate<M: TableMemory + ?Sized>(
        &self,
        mem: &mut M,
        gpa: u64,
    ) -> Option<(u64, Perms)> {
        if gpa >= GPA_LIMIT {
            return None;
        }
        let mut table = self.root;
        let mut level = Level::Pml4;
        let mut perms = Perms::RWX;
        loop {
            let entry = mem.table(table)[level.index(gpa)];
            if !F::is_present(entry) {
                return None;
            }
            perms = perms.intersect(F::perms(entry));
            let next_table = F::address(entry) & !(TABLE_SIZE - 1);
            if F::is_leaf(entry, level) {
                let offset_mask = level.page_size() - 1;
                let page = F::address(entry) & !offset_mask;
                return Some((page | (gpa & offset_mask), perms));
            }
            table = next_table;
            level = level.next_lower()?;
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::boxed::Box;
    use std::vec::Vec;

    /// Tables at fake host-physical addresses 0x1000, 0x2000, ... (0 stays unused so a
    /// zero entry can never look like a table address).
    struct TestMemory {
        tables: Vec<Box<[u64; ENTRIES]>>,
        limit: usize,
    }

    impl TestMemory {
        fn new() -> Self {
            Self::with_limit(usize::MAX)
        }
        fn with_limit(limit: usize) -> Self {
            TestMemory {
                tables: Vec::new(),
                limit,
            }
        }
        fn count(&self) -> usize {
            self.tables.len()
        }
    }

    impl TableMemory for TestMemory {
        fn alloc_table(&mut self) -> Option<u64> {
            if self.tables.len() >= self.limit {
                return None;
            }
            self.tables.push(Box::new([0; ENTRIES]));
            Some(self.tables.len() as u64 * TABLE_SIZE)
        }
        fn table(&mut self, hpa: u64) -> &mut [u64; ENTRIES] {
            assert_eq!(hpa % TABLE_SIZE, 0);
            &mut self.tables[(hpa / TABLE_SIZE) as usize - 1]
        }
    }

    #[test]
    fn unmapping_a_page_inside_large_leaves_splits_them_and_keeps_the_rest() {
        let mut mem = TestMemory::new();
        let mut t = NestedPageTable::<TestFormat>::new(&mut mem).unwrap();
        // 1 GiB at 0 (one 1 GiB leaf), read/write only.
        t.map(&mut mem, 0, 0x4000_0000, 1 << 30, Perms::RW, Level::Pdpt)
            .unwrap();
        let gpa = 0x0060_3000;
        assert_eq!(t.unmap_page(&mut mem, gpa), Ok(true));
        assert_eq!(t.translate(&mut mem, gpa), None);
        assert_eq!(t.translate(&mut mem, gpa + 0xfff), None);
        // Its neighbours, in the same 2 MiB and elsewhere, keep address and rights.
        for other in [gpa - 0x1000, gpa + 0x1000, 0, 0x3fff_f000, 0x0020_0000] {
            assert_eq!(
                t.translate(&mut mem, other),
                Some((0x4000_0000 + other, Perms::RW)),
                "{other:#x}"
            );
        }
        // Twice: nothing left to unmap. Unaligned or too high: refused.
        assert_eq!(t.unmap_page(&mut mem, gpa), Ok(false));
        assert_eq!(t.unmap_page(&mut mem, 1 << 40), Ok(false));
        assert_eq!(t.unmap_page(&mut mem, gpa + 8), Err(MapError::Unaligned));
        assert_eq!(
            t.unmap_page(&mut mem, GPA_LIMIT),
            Err(MapError::GpaTooLarge)
        );
        // The page can be mapped again, with other memory.
        t.map(&mut mem, gpa, 0x9000, 0x1000, Perms::RWX, Level::Pdpt)
            .unwrap();
        assert_eq!(t.translate(&mut mem, gpa), Some((0x9000, Perms::RWX)));
        // Out of table memory: the split fails cleanly, the page stays mapped.
        let mut small = TestMemory::with_limit(4);
        let mut u = NestedPageTable::<TestFormat>::new(&mut small).unwrap();
        u.map(&mut small, 0, 0x4000_0000, 2 << 20, Perms::RW, Level::Pd)
            .unwrap();
        assert_eq!(small.count(), 3);
        assert_eq!(u.unmap_page(&mut small, 0x1000), Ok(true));
        assert_eq!(u.unmap_page(&mut small, 0x20_0000), Ok(false));
        let mut none = TestMemory::with_limit(3);
        let mut w = NestedPageTable::<TestFormat>::new(&mut none).unwrap();
        w.map(&mut none, 0, 0x4000_0000, 2 << 20, Perms::RW, Level::Pd)
            .unwrap();
        assert_eq!(w.unmap_page(&mut none, 0x1000), Err(MapError::OutOfMemory));
        assert_eq!(
            w.translate(&mut none, 0x1000),
            Some((0x4000_1000, Perms::RW))
        );
    }

    /// A minimal x86-style format: P=0, W=1, X=2 (inverted NX keeps tests simple), PS=7.
    struct TestFormat;
    const P: u64 = 1;
    const W: u64 = 2;
    const X: u64 = 4;
    const PS: u64 = 1 << 7;
    const ADDR: u64 = 0x000F_FFFF_FFFF_F000;

    impl EntryFormat for TestFormat {
        fn table_entry(next: u64) -> u64 {
            next | P | W | X
        }
        fn leaf_entry(hpa: u64, level: Level, perms: Perms) -> u64 {
            let mut e = hpa | P;
            if perms.write {
                e |= W;
            }
            if perms.execute {
                e |= X;
            }
            if level != Level::Pt {
                e |= PS;
            }
            e
        }
        fn is_present(e: u64) -> bool {
            e & P != 0
        }
        fn is_leaf(e: u64, level: Level) -> bool {
            match level {
                Level::Pt => true,
                Level::Pd | Level::Pdpt => e & PS != 0,
                Level::Pml4 => false,
            }
        }
        fn address(e: u64) -> u64 {
            e & ADDR
        }
        fn perms(e: u64) -> Perms {
            Perms {
                write: e & W != 0,
                execute: e & X != 0,
            }
        }
    }

    type Table = NestedPageTable<TestFormat>;
    const K4: u64 = 0x1000;
    const M2: u64 = 0x20_0000;
    const G1: u64 = 0x4000_0000;

    /// The level of the leaf that maps `gpa`.
    fn leaf_level(t: &Table, mem: &mut TestMemory, gpa: u64) -> Option<Level> {
        let mut table = t.root();
        let mut level = Level::Pml4;
        loop {
            let e = mem.table(table)[level.index(gpa)];
            if !TestFormat::is_present(e) {
                return None;
            }
            if TestFormat::is_leaf(e, level) {
                return Some(level);
            }
            table = TestFormat::address(e);
            level = level.next_lower()?;
        }
    }

    #[test]
    fn level_geometry() {
        assert_eq!(Level::Pt.page_size(), K4);
        assert_eq!(Level::Pd.page_size(), M2);
        assert_eq!(Level::Pdpt.page_size(), G1);
        assert_eq!(Level::Pml4.page_size(), 512 * G1);
        assert_eq!(Level::Pml4.index(0x0000_8000_0000_0000 - 1), 255);
        assert_eq!(Level::Pd.index(0x4020_0000), 1);
    }

    #[test]
    fn uses_2m_pages_when_aligned() {
        let mut mem = TestMemory::new();
        let mut t = Table::new(&mut mem).unwrap();
        t.map(&mut mem, 0, 0x4000_0000, 4 * M2, Perms::RWX, Level::Pd)
            .unwrap();
        // PML4 + PDPT + PD, no page table.
        assert_eq!(mem.count(), 3);
        for i in 0..4 {
            assert_eq!(leaf_level(&t, &mut mem, i * M2), Some(Level::Pd));
        }
        assert_eq!(
            t.translate(&mut mem, 3 * M2 + 0x1234),
            Some((0x4000_0000 + 3 * M2 + 0x1234, Perms::RWX))
        );
    }

    #[test]
    fn uses_1g_pages_only_when_allowed() {
        let mut mem = TestMemory::new();
        let mut t = Table::new(&mut mem).unwrap();
        t.map(&mut mem, G1, 2 * G1, G1, Perms::RW, Level::Pdpt)
            .unwrap();
        assert_eq!(leaf_level(&t, &mut mem, G1 + 0x123_4567), Some(Level::Pdpt));
        assert_eq!(mem.count(), 2);
        assert_eq!(
            t.translate(&mut mem, G1 + 0x123_4567),
            Some((2 * G1 + 0x123_4567, Perms::RW))
        );

        let mut mem = TestMemory::new();
        let mut t = Table::new(&mut mem).unwrap();
        t.map(&mut mem, G1, 2 * G1, G1, Perms::RW, Level::Pd)
            .unwrap();
        assert_eq!(leaf_level(&t, &mut mem, G1 + 0x123_4567), Some(Level::Pd));

        // Pml4 as the maximum is clamped to 1 GiB leaves.
        let mut mem = TestMemory::new();
        let mut t = Table::new(&mut mem).unwrap();
        t.map(&mut mem, 0, 0, 2 * G1, Perms::RW, Level::Pml4)
            .unwrap();
        assert_eq!(leaf_level(&t, &mut mem, G1), Some(Level::Pdpt));
    }

    #[test]
    fn one_gig_needs_length_and_both_alignments() {
        let mut mem = TestMemory::new();
        let mut t = Table::new(&mut mem).unwrap();
        // hpa only 2 MiB aligned: 2 MiB pages.
        t.map(&mut mem, 0, G1 + M2, G1, Perms::RW, Level::Pdpt)
            .unwrap();
        assert_eq!(leaf_level(&t, &mut mem, 0), Some(Level::Pd));
        // 1 GiB + 2 MiB aligned region of 1 GiB + 2 MiB: one 1 GiB page then one 2 MiB.
        t.map(&mut mem, 4 * G1, 4 * G1, G1 + M2, Perms::RW, Level::Pdpt)
            .unwrap();
        assert_eq!(leaf_level(&t, &mut mem, 4 * G1), Some(Level::Pdpt));
        assert_eq!(leaf_level(&t, &mut mem, 5 * G1), Some(Level::Pd));
        assert_eq!(leaf_level(&t, &mut mem, 5 * G1 + M2), None);
    }

    #[test]
    fn mixed_region_edges_use_4k() {
        let mut mem = TestMemory::new();
        let mut t = Table::new(&mut mem).unwrap();
        // gpa 0x1000..0x40_1000 with hpa congruent modulo 2 MiB.
        let (gpa, hpa, len) = (0x1000, 0x80_1000, 0x40_0000);
        t.map(&mut mem, gpa, hpa, len, Perms::RWX, Level::Pdpt)
            .unwrap();
        assert_eq!(leaf_level(&t, &mut mem, 0x1000), Some(Level::Pt));
        assert_eq!(leaf_level(&t, &mut mem, 0x1F_F000), Some(Level::Pt));
        assert_eq!(leaf_level(&t, &mut mem, 0x20_0000), Some(Level::Pd));
        assert_eq!(leaf_level(&t, &mut mem, 0x3F_F000), Some(Level::Pd));
        assert_eq!(leaf_level(&t, &mut mem, 0x40_0000), Some(Level::Pt));
        assert_eq!(leaf_level(&t, &mut mem, 0x40_1000), None);
        assert_eq!(leaf_level(&t, &mut mem, 0), None);
        for page in (gpa..gpa + len).step_by(K4 as usize) {
            assert_eq!(
                t.translate(&mut mem, page + 8),
                Some((hpa + (page - gpa) + 8, Perms::RWX))
            );
        }
        assert_eq!(t.translate(&mut mem, 0), None);
        assert_eq!(t.translate(&mut mem, gpa + len), None);
    }

    #[test]
    fn misaligned_hpa_forces_4k() {
        let mut mem = TestMemory::new();
        let mut t = Table::new(&mut mem).unwrap();
        let (gpa, hpa, len) = (0x1000, 0x80_3000, 0x40_0000);
        t.map(&mut mem, gpa, hpa, len, Perms::RW, Level::Pdpt)
            .unwrap();
        for page in (gpa..gpa + len).step_by(K4 as usize) {
            assert_eq!(leaf_level(&t, &mut mem, page), Some(Level::Pt));
            assert_eq!(
                t.translate(&mut mem, page),
                Some((hpa + (page - gpa), Perms::RW))
            );
        }
        // PML4, PDPT, PD and three page tables (the region touches three 2 MiB slots).
        assert_eq!(mem.count(), 6);
    }

    #[test]
    fn permissions_are_kept_per_mapping() {
        let mut mem = TestMemory::new();
        let mut t = Table::new(&mut mem).unwrap();
        let all = [Perms::RO, Perms::RW, Perms::RX, Perms::RWX];
        for (i, p) in all.iter().enumerate() {
            let base = i as u64 * M2;
            t.map(&mut mem, base, base, M2, *p, Level::Pd).unwrap();
            t.map(&mut mem, G1 + base, base, K4, *p, Level::Pd).unwrap();
        }
        for (i, p) in all.iter().enumerate() {
            let base = i as u64 * M2;
            assert_eq!(t.translate(&mut mem, base + 0x10), Some((base + 0x10, *p)));
            assert_eq!(t.translate(&mut mem, G1 + base), Some((base, *p)));
        }
    }

    #[test]
    fn translate_intersects_table_rights() {
        let mut mem = TestMemory::new();
        let mut t = Table::new(&mut mem).unwrap();
        t.map(&mut mem, 0, 0, K4, Perms::RWX, Level::Pd).unwrap();
        // Strip write from the PML4 entry: the walk must report it.
        let root = t.root();
        mem.table(root)[0] &= !W;
        assert_eq!(t.translate(&mut mem, 0), Some((0, Perms::RX)));
    }

    #[test]
    fn overlap_is_rejected_without_changes() {
        let mut mem = TestMemory::new();
        let mut t = Table::new(&mut mem).unwrap();
        t.map(&mut mem, M2, M2, M2, Perms::RW, Level::Pd).unwrap();
        let before = mem.count();
        // Starts in free space and runs into the 2 MiB page.
        assert_eq!(
            t.map(
                &mut mem,
                M2 - 2 * K4,
                0x1000_0000,
                3 * K4,
                Perms::RW,
                Level::Pd
            ),
            Err(MapError::AlreadyMapped { gpa: M2 })
        );
        assert_eq!(mem.count(), before);
        assert_eq!(t.translate(&mut mem, M2 - K4), None);
        // Entirely inside the large page (no splitting).
        assert_eq!(
            t.map(&mut mem, M2 + 5 * K4, 0, K4, Perms::RW, Level::Pd),
            Err(MapError::AlreadyMapped { gpa: M2 + 5 * K4 })
        );
        // A 4 KiB mapping blocks a later large one over it.
        t.map(&mut mem, 4 * M2 + K4, 0, K4, Perms::RW, Level::Pd)
            .unwrap();
        assert_eq!(
            t.map(&mut mem, 4 * M2, 4 * M2, M2, Perms::RW, Level::Pd),
            Err(MapError::AlreadyMapped { gpa: 4 * M2 + K4 })
        );
        // Adjacent ranges are fine, and a large page can sit beside a page table.
        t.map(&mut mem, 2 * M2, 2 * M2, M2, Perms::RW, Level::Pd)
            .unwrap();
        t.map(
            &mut mem,
            4 * M2 + 2 * K4,
            0,
            M2 - 2 * K4,
            Perms::RW,
            Level::Pd,
        )
        .unwrap();
        t.map(&mut mem, 4 * M2, 4 * M2, K4, Perms::RW, Level::Pd)
            .unwrap();
    }

    #[test]
    fn existing_table_is_reused_instead_of_large_leaf() {
        let mut mem = TestMemory::with_limit(3);
        let mut t = Table::new(&mut mem).unwrap();
        // PML4, PDPT and PD fit, the PT does not: the PD stays linked but empty.
        assert_eq!(
            t.map(&mut mem, 0, 0, K4, Perms::RW, Level::Pd),
            Err(MapError::OutOfMemory)
        );
        assert_eq!(mem.count(), 3);
        assert_eq!(t.translate(&mut mem, 0), None);
        // A 1 GiB leaf would replace the PDPT entry that holds the empty PD; the PD is
        // filled with 2 MiB leaves instead, without allocating.
        t.map(&mut mem, 0, 0, G1, Perms::RW, Level::Pdpt).unwrap();
        assert_eq!(leaf_level(&t, &mut mem, 0), Some(Level::Pd));
        assert_eq!(leaf_level(&t, &mut mem, G1 - M2), Some(Level::Pd));
        assert_eq!(mem.count(), 3);
        assert_eq!(t.translate(&mut mem, G1 - 1), Some((G1 - 1, Perms::RW)));
    }

    #[test]
    fn out_of_memory_is_reported() {
        let mut mem = TestMemory::with_limit(0);
        assert!(matches!(Table::new(&mut mem), Err(MapError::OutOfMemory)));

        let mut mem = TestMemory::with_limit(4);
        let mut t = Table::new(&mut mem).unwrap();
        // Needs PML4, PDPT, PD and two PTs.
        assert_eq!(
            t.map(&mut mem, M2 - K4, 0, 2 * K4, Perms::RW, Level::Pd),
            Err(MapError::OutOfMemory)
        );
        // The first page made it; raising the limit lets the rest complete.
        assert_eq!(t.translate(&mut mem, M2 - K4), Some((0, Perms::RW)));
        mem.limit = 5;
        t.map(&mut mem, M2, K4, K4, Perms::RW, Level::Pd).unwrap();
        assert_eq!(t.translate(&mut mem, M2), Some((K4, Perms::RW)));
    }

    #[test]
    fn argument_errors() {
        let mut mem = TestMemory::new();
        let mut t = Table::new(&mut mem).unwrap();
        assert_eq!(
            t.map(&mut mem, 0x800, 0, K4, Perms::RW, Level::Pd),
            Err(MapError::Unaligned)
        );
        assert_eq!(
            t.map(&mut mem, 0, 0x800, K4, Perms::RW, Level::Pd),
            Err(MapError::Unaligned)
        );
        assert_eq!(
            t.map(&mut mem, 0, 0, 0x800, Perms::RW, Level::Pd),
            Err(MapError::Unaligned)
        );
        assert_eq!(
            t.map(&mut mem, GPA_LIMIT - K4, 0, 2 * K4, Perms::RW, Level::Pd),
            Err(MapError::GpaTooLarge)
        );
        assert_eq!(
            t.map(&mut mem, !0xFFF, 0, K4, Perms::RW, Level::Pd),
            Err(MapError::GpaTooLarge)
        );
        assert_eq!(
            t.map(&mut mem, 0, (1 << 52) - K4, 2 * K4, Perms::RW, Level::Pd),
            Err(MapError::HpaTooLarge)
        );
        assert_eq!(mem.count(), 1);
        // Empty ranges are a no-op; the top page below 2^48 works.
        t.map(&mut mem, 0, 0, 0, Perms::RW, Level::Pd).unwrap();
        t.map(&mut mem, GPA_LIMIT - K4, K4, K4, Perms::RW, Level::Pd)
            .unwrap();
        assert_eq!(
            t.translate(&mut mem, GPA_LIMIT - 1),
            Some((2 * K4 - 1, Perms::RW))
        );
        assert_eq!(t.translate(&mut mem, GPA_LIMIT), None);
    }

    #[test]
    fn map_guest_uses_the_mapping_rights() {
        let mut mem = TestMemory::new();
        let mut t = Table::new(&mut mem).unwrap();
        let m = GuestMapping {
            gpa: 0x10_0000,
            hpa: 0x20_0000,
            len: 0x2000,
            writable: false,
            executable: true,
        };
        t.map_guest(&mut mem, &m, Level::Pd).unwrap();
        assert_eq!(
            t.translate(&mut mem, 0x10_1FFF),
            Some((0x20_1FFF, Perms::RX))
        );
    }

    #[test]
    fn destroy_visits_every_table_once() {
        let mut mem = TestMemory::new();
        let mut pt = NestedPageTable::<TestFormat>::new(&mut mem).unwrap();
        pt.map(&mut mem, 0, 0x4000_0000, 0x40_1000, Perms::RWX, Level::Pd)
            .unwrap();
        pt.map(
            &mut mem,
            0x80_0000_0000,
            0x8000_0000,
            0x1000,
            Perms::RWX,
            Level::Pd,
        )
        .unwrap();
        let allocated = mem.tables.len();
        let mut freed = std::vec::Vec::new();
        pt.destroy(&mut mem, |_, t| freed.push(t));
        freed.sort();
        freed.dedup();
        assert_eq!(freed.len(), allocated);
    }
}
