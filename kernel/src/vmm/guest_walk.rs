//! Guest-virtual to guest-physical translation through the guest's *own* page tables,
//! and fetching the instruction at CS:RIP with it.
//!
//! MMIO emulation needs the bytes of the instruction that touched an MMIO page. The
//! exit gives only the guest-physical address of the data access and the guest RIP (a
//! CS offset), so the core walks the guest's paging structures in guest RAM exactly as
//! the processor would for a fetch (SDM Vol. 3A chapter 4, "Paging").
//!
//! Supported translations, chosen from [`ControlRegs`] as SDM Vol. 3A 4.1.1 describes:
//!
//! | CR0.PE | CR0.PG | CR4.PAE | EFER.LMA | CR4.LA57 | mode                           |
//! |--------|--------|---------|----------|----------|--------------------------------|
//! | 0      | -      | -       | -        | -        | real mode: CS base + IP        |
//! | 1      | 0      | -       | -        | -        | protected, linear = physical   |
//! | 1      | 1      | 0       | 0        | -        | 32-bit paging (4 MiB with PSE) |
//! | 1      | 1      | 1       | 0        | -        | PAE paging (2 MiB pages)       |
//! | 1      | 1      | 1       | 1        | 0        | 4-level paging (1 GiB / 2 MiB) |
//! | 1      | 1      | 1       | 1        | 1        | 5-level paging                 |
//!
//! Limits, all deliberate:
//! - No permission checks (U/S, R/W, NX, SMEP, PKE) and no accessed/dirty updates: the
//!   processor already fetched the instruction successfully before the data access
//!   exited, so the walk only has to find the bytes, not to judge the fetch.
//! - Reserved bits (above MAXPHYADDR, PAE PDPTE bit 7) are not checked; address bits
//!   are taken from bits 51:12 (SDM Vol. 3A 4.5.4 tables 4-15 to 4-20).
//! - PAE PDPTEs are read from memory, not from the PDPTE registers the processor loaded
//!   at the last CR3 write (SDM Vol. 3A 4.4.1); they differ only if the guest edited the
//!   PDPT without reloading CR3.
//! - Real mode assumes the A20 gate is open (CS base + IP may reach 0x10FFEF) and
//!   virtual-8086 mode is not distinguished from protected mode (`ControlRegs` does not
//!   carry RFLAGS.VM).
//! - Only CS's base is known, so segment limits are not checked.

use vcpu::ControlRegs;

/// Read access to the guest's physical memory (its RAM). The kernel implements it over
/// the VM's host allocation; tests implement it over a `Vec`.
pub trait GuestMemory {
    /// Fills `buf` from guest-physical `gpa`. `Err(())` if any byte is outside RAM.
    #[allow(clippy::result_unit_err)]
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), ()>;
}

/// Write access to the guest's RAM as well, for instructions whose second operand is
/// in RAM (the stack of `PUSH`/`POP`, the other side of a string instruction).
pub trait GuestMemoryMut: GuestMemory {
    /// Writes `data` at guest-physical `gpa`. `Err(())` (and nothing written) if any
    /// byte is outside RAM.
    #[allow(clippy::result_unit_err)]
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), ()>;
}

/// Why a guest-virtual address could not be translated or read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkError {
    /// The paging-structure entry at `level` had P = 0. Levels count down to the page:
    /// 5 = PML5E, 4 = PML4E, 3 = PDPTE, 2 = PDE, 1 = PTE (32-bit paging uses 2 and 1).
    NotPresent { level: u8, linear: u64 },
    /// A guest-physical address (a paging structure or the code itself) is not RAM.
    OutsideRam { gpa: u64 },
    /// A 64-bit linear address that is not canonical (SDM Vol. 1 3.3.7.1).
    NonCanonical { linear: u64 },
}

impl WalkError {
    fn level_name(level: u8) -> &'static str {
        match level {
            5 => "PML5E",
            4 => "PML4E",
            3 => "PDPTE",
            2 => "PDE",
            _ => "PTE",
        }
    }
}

impl core::fmt::Display for WalkError {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        match *self {
            WalkError::NotPresent { level, linear } => write!(
                f,
                "linear {linear:#x}: {} (level {level}) not present",
                Self::level_name(level)
            ),
            WalkError::OutsideRam { gpa } => {
                write!(f, "guest-physical {gpa:#x} is outside guest RAM")
            }
            WalkError::NonCanonical { linear } => {
                write!(f, "linear {linear:#x} is not canonical")
            }
        }
    }
}

/// How linear addresses become physical ones (SDM Vol. 3A 4.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PagingMode {
    /// Real mode or protected mode with CR0.PG = 0: linear = physical.
    None,
    /// CR4.PAE = 0: two levels of 32-bit entries; 4 MiB pages if CR4.PSE.
    Bits32,
    /// CR4.PAE = 1, EFER.LMA = 0: a 4-entry PDPT, then 64-bit PD and PT.
    Pae,
    /// EFER.LMA = 1: PML4 .. PT.
    Level4,
    /// EFER.LMA = 1 and CR4.LA57: PML5 .. PT.
    Level5,
}

const CR0_PE: u64 = 1 << 0;
const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const EFER_LMA: u64 = 1 << 10;

const PTE_P: u64 = 1 << 0;
const PTE_PS: u64 = 1 << 7;
/// Physical-address bits 51:12 of a 64-bit paging entry.
const ADDR_MASK_64: u64 = 0x000f_ffff_ffff_f000;
const PAGE_SIZE: u64 = 4096;

/// The paging mode `cr` selects.
pub fn paging_mode(cr: &ControlRegs) -> PagingMode {
    if cr.cr0 & CR0_PE == 0 || cr.cr0 & CR0_PG == 0 {
        PagingMode::None
    } else if cr.efer & EFER_LMA != 0 {
        if cr.cr4 & CR4_LA57 != 0 {
            PagingMode::Level5
        } else {
            PagingMode::Level4
        }
    } else if cr.cr4 & CR4_PAE != 0 {
        PagingMode::Pae
    } else {
        PagingMode::Bits32
    }
}

/// The default code size for decoding at CS:RIP: 16 in real mode, 64 in a 64-bit code
/// segment (EFER.LMA and CS.L), otherwise 32.
///
/// Limitation: `ControlRegs` carries no CS.D bit, so a 16-bit protected-mode code
/// segment (and virtual-8086 mode) is decoded as 32-bit. Guests reach MMIO from such
/// code only in brief mode-switch trampolines, if ever.
pub fn code_bitness(cr: &ControlRegs) -> u32 {
    if cr.cr0 & CR0_PE == 0 {
        16
    } else if cr.efer & EFER_LMA != 0 && cr.cs_long {
        64
    } else {
        32
    }
}

/// The linear address of CS offset `offset`, and how many bytes from there on stay
/// within the segment before the offset wraps (IP wraps at 64 KiB, EIP at 4 GiB;
/// SDM Vol. 3A 5.3). `None` in 64-bit mode means no wrap to worry about.
fn cs_linear(cr: &ControlRegs, offset: u64) -> (u64, Option<u64>) {
    match code_bitness(cr) {
        // Real mode: base + 16-bit IP, up to 0x10FFEF with A20 open. The base may be
        // above 1 MiB just after reset (0xFFFF0000), so only 32 bits are kept.
        16 => {
            let ip = offset & 0xffff;
            (
                cr.cs_base.wrapping_add(ip) & 0xffff_ffff,
                Some(0x1_0000 - ip),
            )
        }
        32 => {
            let eip = offset & 0xffff_ffff;
            (
                cr.cs_base.wrapping_add(eip) & 0xffff_ffff,
                Some(0x1_0000_0000 - eip),
            )
        }
        // 64-bit mode: CS base is treated as 0 (SDM Vol. 1 3.4.2.1).
        _ => (offset, None),
    }
}

fn read_u32(mem: &impl GuestMemory, gpa: u64) -> Result<u32, WalkError> {
    let mut b = [0; 4];
    mem.read(gpa, &mut b)
        .map_err(|()| WalkError::OutsideRam { gpa })?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(mem: &impl GuestMemory, gpa: u64) -> Result<u64, WalkError> {
    let mut b = [0; 8];
    mem.read(gpa, &mut b)
        .map_err(|()| WalkError::OutsideRam { gpa })?;
    Ok(u64::from_le_bytes(b))
}

/// Translates linear address `linear` to guest-physical with the guest's paging
/// structures (no permission checks; see the module notes).
pub fn translate(mem: &impl GuestMemory, cr: &ControlRegs, linear: u64) -> Result<u64, WalkError> {
    match paging_mode(cr) {
        PagingMode::None => Ok(linear & 0xffff_ffff),
        PagingMode::Bits32 => walk_32(mem, cr, linear & 0xffff_ffff),
        PagingMode::Pae => walk_pae(mem, cr, linear & 0xffff_ffff),
        PagingMode::Level4 => walk_long(mem, cr.cr3, linear, 4),
        PagingMode::Level5 => walk_long(mem, cr.cr3, linear, 5),
    }
}

/// 32-bit paging (SDM Vol. 3A 4.3): CR3[31:12] -> PD (1024 x 4 bytes) -> PT or a 4 MiB
/// page when CR4.PSE and PDE.PS.
fn walk_32(mem: &impl GuestMemory, cr: &ControlRegs, la: u64) -> Result<u64, WalkError> {
    let pd = cr.cr3 & 0xffff_f000;
    let pde = read_u32(mem, pd + ((la >> 22) & 0x3ff) * 4)? as u64;
    if pde & PTE_P == 0 {
        return Err(WalkError::NotPresent {
            level: 2,
            linear: la,
        });
    }
    if pde & PTE_PS != 0 && cr.cr4 & CR4_PSE != 0 {
        // PSE-36/40: PDE bits 20:13 hold physical-address bits 39:32 (SDM Vol. 3A
        // table 4-4); bits 31:22 are address bits 31:22.
        let high = ((pde >> 13) & 0xff) << 32;
        return Ok(high | (pde & 0xffc0_0000) | (la & 0x3f_ffff));
    }
    let pt = pde & 0xffff_f000;
    let pte = read_u32(mem, pt + ((la >> 12) & 0x3ff) * 4)? as u64;
    if pte & PTE_P == 0 {
        return Err(WalkError::NotPresent {
            level: 1,
            linear: la,
        });
    }
    Ok((pte & 0xffff_f000) | (la & 0xfff))
}

/// PAE paging (SDM Vol. 3A 4.4): CR3[31:5] -> 4 PDPTEs -> PD -> PT, 2 MiB pages by PS.
fn walk_pae(mem: &impl GuestMemory, cr: &ControlRegs, la: u64) -> Result<u64, WalkError> {
    let pdpt = cr.cr3 & 0xffff_ffe0;
    let pdpte = read_u64(mem, pdpt + ((la >> 30) & 3) * 8)?;
    if pdpte & PTE_P == 0 {
        return Err(WalkError::NotPresent {
            level: 3,
            linear: la,
        });
    }
    walk_levels(mem, pdpte & ADDR_MASK_64, la, 2)
}

/// 4- and 5-level paging (SDM Vol. 3A 4.5).
fn walk_long(mem: &impl GuestMemory, cr3: u64, la: u64, levels: u8) -> Result<u64, WalkError> {
    // Bits 63:47 (63:56 with LA57) must all equal the top implemented bit.
    let bits = if levels == 5 { 57 } else { 48 };
    let sign_extended = (((la << (64 - bits)) as i64) >> (64 - bits)) as u64;
    if sign_extended != la {
        return Err(WalkError::NonCanonical { linear: la });
    }
    walk_levels(mem, cr3 & ADDR_MASK_64, la, levels)
}

/// Walks 64-bit-entry tables from `table` at `level` down to the page. Level L indexes
/// with linear bits (12 + 9(L-1)) + 8 .. 12 + 9(L-1); PS at level 3 maps 1 GiB and at
/// level 2 maps 2 MiB (in PAE mode level 3 is handled by the caller, so PS there never
/// reaches this function).
fn walk_levels(
    mem: &impl GuestMemory,
    mut table: u64,
    la: u64,
    mut level: u8,
) -> Result<u64, WalkError> {
    loop {
        let shift = 12 + 9 * (level as u32 - 1);
        let entry = read_u64(mem, table + ((la >> shift) & 0x1ff) * 8)?;
        if entry & PTE_P == 0 {
            return Err(WalkError::NotPresent { level, linear: la });
        }
        let page_mask = (1u64 << shift) - 1;
        if level == 1 || (entry & PTE_PS != 0 && (level == 2 || level == 3)) {
            // Large pages: bit 12 is PAT, so the frame is bits 51:shift.
            return Ok((entry & ADDR_MASK_64 & !page_mask) | (la & page_mask));
        }
        table = entry & ADDR_MASK_64;
        level -= 1;
    }
}

/// Reads up to 15 bytes (the longest x86 instruction) at CS:`rip` into `buf` and
/// returns how many were read.
///
/// Each page is translated separately, so an instruction that crosses into a page
/// mapped to a non-adjacent frame is read correctly. If a later page is not mapped (or
/// not RAM) the fetch stops there and returns the bytes it has: the instruction may
/// well end before that page; the decoder reports truncation if it does not. Failure on
/// the first byte is an error.
pub fn fetch_instruction(
    mem: &impl GuestMemory,
    cr: &ControlRegs,
    rip: u64,
    buf: &mut [u8; 15],
) -> Result<usize, WalkError> {
    let mut done = 0usize;
    while done < buf.len() {
        let (linear, to_wrap) = cs_linear(cr, rip.wrapping_add(done as u64));
        let gpa = match translate(mem, cr, linear) {
            Ok(gpa) => gpa,
            Err(e) if done == 0 => return Err(e),
            Err(_) => break,
        };
        let to_page_end = PAGE_SIZE - (linear & (PAGE_SIZE - 1));
        let mut chunk = ((buf.len() - done) as u64).min(to_page_end);
        if let Some(w) = to_wrap {
            chunk = chunk.min(w);
        }
        let chunk = chunk as usize;
        if mem.read(gpa, &mut buf[done..done + chunk]).is_err() {
            if done == 0 {
                return Err(WalkError::OutsideRam { gpa });
            }
            break;
        }
        done += chunk;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::vmm::test_ram::Ram;

    const P: u64 = 1;
    const RW: u64 = 2;
    const PS: u64 = 0x80;

    fn real(cs_base: u64) -> ControlRegs {
        ControlRegs {
            cs_base,
            ..Default::default()
        }
    }

    fn prot() -> ControlRegs {
        ControlRegs {
            cr0: CR0_PE,
            ..Default::default()
        }
    }

    fn long(cr3: u64) -> ControlRegs {
        ControlRegs {
            cr0: CR0_PE | CR0_PG,
            cr3,
            cr4: CR4_PAE,
            efer: EFER_LMA | (1 << 8),
            cs_base: 0,
            cs_long: true,
        }
    }

    #[test]
    fn modes_and_bitness_follow_the_control_registers() {
        assert_eq!(paging_mode(&real(0)), PagingMode::None);
        assert_eq!(code_bitness(&real(0)), 16);
        assert_eq!(paging_mode(&prot()), PagingMode::None);
        assert_eq!(code_bitness(&prot()), 32);
        let mut cr = prot();
        cr.cr0 |= CR0_PG;
        assert_eq!(paging_mode(&cr), PagingMode::Bits32);
        cr.cr4 |= CR4_PAE;
        assert_eq!(paging_mode(&cr), PagingMode::Pae);
        let mut l = long(0);
        assert_eq!(paging_mode(&l), PagingMode::Level4);
        assert_eq!(code_bitness(&l), 64);
        l.cs_long = false; // compatibility mode
        assert_eq!(code_bitness(&l), 32);
        l.cr4 |= CR4_LA57;
        assert_eq!(paging_mode(&l), PagingMode::Level5);
    }

    #[test]
    fn real_mode_is_cs_base_plus_ip_with_a20_open_and_ip_wrap() {
        let mut ram = Ram::new(0x11_0000);
        ram.put(0x7c00 + 0x10, &[0xaa; 15]);
        let mut buf = [0; 15];
        assert_eq!(
            fetch_instruction(&ram, &real(0x7c00), 0x10, &mut buf),
            Ok(15)
        );
        assert_eq!(buf, [0xaa; 15]);
        // FFFF:0010 is 0x100000 with A20 open (21-bit addresses).
        ram.put(0x10_0000, &[1, 2, 3]);
        fetch_instruction(&ram, &real(0xffff0), 0x10, &mut buf).unwrap();
        assert_eq!(&buf[..3], &[1, 2, 3]);
        // IP wraps at 64 KiB inside the segment: 1000:FFFE then 1000:0000.
        ram.put(0x1fffe, &[0x11, 0x22]);
        ram.put(0x10000, &[0x33, 0x44]);
        fetch_instruction(&ram, &real(0x10000), 0xfffe, &mut buf).unwrap();
        assert_eq!(&buf[..4], &[0x11, 0x22, 0x33, 0x44]);
        // Bits above IP are ignored in 16-bit code.
        fetch_instruction(&ram, &real(0x7c00), 0xdead_0000_0010, &mut buf).unwrap();
        assert_eq!(buf, [0xaa; 15]);
    }

    #[test]
    fn protected_mode_without_paging_is_flat_plus_cs_base() {
        let mut ram = Ram::new(0x20_0000);
        ram.put(0x10_1234, &[0x8b, 0x03]);
        let mut buf = [0; 15];
        let mut cr = prot();
        assert_eq!(fetch_instruction(&ram, &cr, 0x10_1234, &mut buf), Ok(15));
        assert_eq!(&buf[..2], &[0x8b, 0x03]);
        cr.cs_base = 0x10_0000;
        fetch_instruction(&ram, &cr, 0x1234, &mut buf).unwrap();
        assert_eq!(&buf[..2], &[0x8b, 0x03]);
    }

    #[test]
    fn code_outside_ram_is_an_error_naming_the_address() {
        let ram = Ram::new(0x1000);
        let mut buf = [0; 15];
        assert_eq!(
            fetch_instruction(&ram, &prot(), 0x5000, &mut buf),
            Err(WalkError::OutsideRam { gpa: 0x5000 })
        );
        // ... but running off the end of RAM after some bytes returns those bytes.
        assert_eq!(fetch_instruction(&ram, &prot(), 0xffc, &mut buf), Ok(4));
    }

    /// 32-bit paging: PD at 0x1000, PT at 0x2000.
    #[test]
    fn bits32_paging_4k_and_4m_pages() {
        let mut ram = Ram::new(0x80_0000);
        let mut cr = prot();
        cr.cr0 |= CR0_PG;
        cr.cr3 = 0x1000;
        // 0xC000_0000 -> PT at 0x2000; 0xC000_5000 -> frame 0x9000.
        ram.put32(0x1000 + 0x300 * 4, 0x2000 | (P | RW) as u32);
        ram.put32(0x2000 + 5 * 4, 0x9000 | P as u32);
        assert_eq!(translate(&ram, &cr, 0xc000_5abc), Ok(0x9abc));
        // Not present PTE and PDE.
        assert_eq!(
            translate(&ram, &cr, 0xc000_6000),
            Err(WalkError::NotPresent {
                level: 1,
                linear: 0xc000_6000
            })
        );
        assert_eq!(
            translate(&ram, &cr, 0x8000_0000),
            Err(WalkError::NotPresent {
                level: 2,
                linear: 0x8000_0000
            })
        );
        // A 4 MiB page at 0x0040_0000 (PDE index 1) mapped to 0x0040_0000, with PSE-36
        // bits 20:13 = 1 -> physical 0x1_0040_0000.
        ram.put32(0x1000 + 4, 0x0040_0000 | (P | PS) as u32);
        // Without CR4.PSE the PS bit is ignored: it is read as a PT pointer.
        ram.put32(0x40_0000 + 0x12 * 4, 0x7000 | P as u32);
        assert_eq!(translate(&ram, &cr, 0x0041_2345), Ok(0x7345));
        cr.cr4 |= CR4_PSE;
        assert_eq!(translate(&ram, &cr, 0x0041_2345), Ok(0x41_2345));
        ram.put32(0x1000 + 4, 0x0040_0000 | (1 << 13) | (P | PS) as u32);
        assert_eq!(translate(&ram, &cr, 0x0041_2345), Ok(0x1_0041_2345));
    }

    /// PAE: PDPT at 0x1020 (32-byte aligned), PD at 0x2000, PT at 0x3000.
    #[test]
    fn pae_paging_4k_and_2m_pages() {
        let mut ram = Ram::new(0x40_0000);
        let mut cr = prot();
        cr.cr0 |= CR0_PG;
        cr.cr4 = CR4_PAE;
        cr.cr3 = 0x1020;
        // 0xC000_0000: PDPTE 3.
        ram.put64(0x1020 + 3 * 8, 0x2000 | P);
        ram.put64(0x2000, 0x3000 | P | RW);
        ram.put64(0x3000 + 8, 0x5000 | P);
        assert_eq!(translate(&ram, &cr, 0xc000_1010), Ok(0x5010));
        // 2 MiB page: PDE 1 -> 0x20_0000, NX bit 63 ignored.
        ram.put64(0x2008, 0x20_0000 | P | PS | (1 << 63));
        assert_eq!(translate(&ram, &cr, 0xc02a_bcde), Ok(0x2a_bcde));
        assert_eq!(
            translate(&ram, &cr, 0x4000_0000),
            Err(WalkError::NotPresent {
                level: 3,
                linear: 0x4000_0000
            })
        );
        assert_eq!(
            translate(&ram, &cr, 0xc040_0000),
            Err(WalkError::NotPresent {
                level: 2,
                linear: 0xc040_0000
            })
        );
        assert_eq!(
            translate(&ram, &cr, 0xc000_2000),
            Err(WalkError::NotPresent {
                level: 1,
                linear: 0xc000_2000
            })
        );
    }

    /// 4-level: PML4 0x1000, PDPT 0x2000, PD 0x3000, PT 0x4000.
    fn long_tables(ram: &mut Ram) -> ControlRegs {
        // Higher half: 0xFFFF_8000_0000_0000 -> PML4 index 256.
        ram.put64(0x1000 + 256 * 8, 0x2000 | P | RW);
        ram.put64(0x2000, 0x3000 | P | RW);
        ram.put64(0x3000, 0x4000 | P | RW);
        ram.put64(0x4000 + 8, 0x6000 | P); // page 1 -> frame 0x6000
        ram.put64(0x4000 + 2 * 8, 0x9000 | P); // page 2 -> frame 0x9000 (not adjacent)
        ram.put64(0x3000 + 8, 0x20_0000 | P | PS); // 2 MiB page
        ram.put64(0x2000 + 8, P | PS); // 1 GiB page at 0x4000_0000 -> 0
        long(0x1000)
    }

    #[test]
    fn four_level_paging_all_page_sizes() {
        let mut ram = Ram::new(0x40_0000);
        let cr = long_tables(&mut ram);
        let base = 0xffff_8000_0000_0000u64;
        assert_eq!(translate(&ram, &cr, base + 0x1123), Ok(0x6123));
        assert_eq!(translate(&ram, &cr, base + 0x2fff), Ok(0x9fff));
        assert_eq!(translate(&ram, &cr, base + 0x23_4567), Ok(0x23_4567));
        assert_eq!(translate(&ram, &cr, base + 0x4012_3456), Ok(0x12_3456));
        for (la, level) in [
            (0x1000u64, 4u8),
            (base + 0x8000_0000, 3),
            (base + 0x40_0000, 2),
            (base + 0x3000, 1),
        ] {
            assert_eq!(
                translate(&ram, &cr, la),
                Err(WalkError::NotPresent { level, linear: la })
            );
        }
        assert_eq!(
            translate(&ram, &cr, 0x0000_8000_0000_0000),
            Err(WalkError::NonCanonical {
                linear: 0x0000_8000_0000_0000
            })
        );
        // A table pointer outside RAM.
        ram.put64(0x3000 + 3 * 8, 0x1000_0000 | P);
        assert_eq!(
            translate(&ram, &cr, base + 0x60_0000),
            Err(WalkError::OutsideRam { gpa: 0x1000_0000 })
        );
    }

    #[test]
    fn five_level_paging() {
        let mut ram = Ram::new(0x10_0000);
        let mut cr = long_tables(&mut ram);
        // PML5 at 0x8000: index 511 (the top of the 57-bit space) -> the PML4.
        ram.put64(0x8000 + 511 * 8, 0x1000 | P);
        cr.cr3 = 0x8000;
        cr.cr4 |= CR4_LA57;
        assert_eq!(translate(&ram, &cr, 0xffff_8000_0000_1123), Ok(0x6123));
        assert_eq!(
            translate(&ram, &cr, 0xff00_0000_0000_0000),
            Err(WalkError::NotPresent {
                level: 5,
                linear: 0xff00_0000_0000_0000
            })
        );
    }

    #[test]
    fn fetch_crosses_pages_to_the_right_frames_and_stops_at_unmapped_ones() {
        let mut ram = Ram::new(0x40_0000);
        let cr = long_tables(&mut ram);
        let base = 0xffff_8000_0000_0000u64;
        // Page 1 ends with 5 bytes, page 2 (frame 0x9000) continues.
        ram.put(0x6ffb, &[1, 2, 3, 4, 5]);
        ram.put(0x9000, &[6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
        ram.put(0x7000, &[0xee; 16]); // the adjacent frame must not be read
        let mut buf = [0; 15];
        assert_eq!(
            fetch_instruction(&ram, &cr, base + 0x1ffb, &mut buf),
            Ok(15)
        );
        assert_eq!(buf, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
        // Page 3 is not mapped: only the 3 bytes of page 2 come back.
        assert_eq!(fetch_instruction(&ram, &cr, base + 0x2ffd, &mut buf), Ok(3));
        // Nothing mapped at RIP at all.
        assert_eq!(
            fetch_instruction(&ram, &cr, base + 0x3000, &mut buf),
            Err(WalkError::NotPresent {
                level: 1,
                linear: base + 0x3000
            })
        );
    }

    #[test]
    fn errors_name_the_level() {
        let e = WalkError::NotPresent {
            level: 3,
            linear: 0x4000_0000,
        };
        assert_eq!(
            std::format!("{e}"),
            "linear 0x40000000: PDPTE (level 3) not present"
        );
    }
}
