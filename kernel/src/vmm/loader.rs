//! Guest image loading, decided by the image itself: a 512-byte boot sector starts in
//! real mode at 0000:7C00 as a BIOS would start it; an ELF32 (EM_386) executable starts
//! in 32-bit protected mode with paging off; an ELF64 (EM_X86_64) executable starts in
//! long mode on identity-mapped page tables the loader builds. Pure: the plan names
//! what to copy where; the VM carries it out. Every image is checked against the VM's
//! RAM before anything is copied.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use elf::endian::AnyEndian;
use elf::ElfBytes;
use vcpu::{CpuMode, GuestRegisters, StartState};

pub const BOOT_SECTOR_GPA: u64 = 0x7C00;
/// The long-mode page tables: PML4, PDPT and one page directory, identity-mapping the
/// first 1 GiB with 2 MiB pages.
pub const PAGE_TABLES_GPA: u64 = 0x1000;
const PAGE_TABLES_END: u64 = PAGE_TABLES_GPA + 3 * 4096;
const _: () = assert!(
    PAGE_TABLES_END <= LOWEST_ELF_LOAD,
    "page tables overlap ELF loads"
);
/// Below this the real-mode IVT, BIOS data area and the page tables live.
pub const LOWEST_ELF_LOAD: u64 = 0x10_0000;

/// One piece of the image to place in guest RAM; `mem_len - data.len()` bytes of zeros
/// follow the data (ELF .bss), which freshly wiped guest RAM already provides.
#[derive(Debug, PartialEq, Eq)]
pub struct Segment<'a> {
    pub gpa: u64,
    pub data: &'a [u8],
    pub mem_len: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub struct LoadPlan<'a> {
    pub segments: Vec<Segment<'a>>,
    pub start: StartState,
    /// Long mode: the three page-table pages to write at [`PAGE_TABLES_GPA`].
    pub page_tables: Option<[[u64; 512]; 3]>,
}

/// Makes a plan for `image` in a VM with `ram` bytes of RAM at guest-physical 0.
pub fn plan(image: &[u8], ram: u64) -> Result<LoadPlan<'_>, String> {
    if image.starts_with(b"\x7fELF") {
        return plan_elf(image, ram);
    }
    if image.len() == 512 && image[510..] == [0x55, 0xAA] {
        check_fits(BOOT_SECTOR_GPA, 512, ram)?;
        let regs = GuestRegisters {
            rdx: 0x80,
            ..Default::default()
        };
        return Ok(LoadPlan {
            segments: alloc::vec![Segment {
                gpa: BOOT_SECTOR_GPA,
                data: image,
                mem_len: 512
            }],
            start: StartState {
                mode: CpuMode::Real,
                rip: BOOT_SECTOR_GPA,
                rsp: BOOT_SECTOR_GPA,
                cr3: 0,
                regs,
            },
            page_tables: None,
        });
    }
    Err(format!(
        "unrecognised guest image ({} bytes): neither an ELF executable nor a 512-byte boot sector ending in 55 AA",
        image.len()
    ))
}

fn check_fits(gpa: u64, len: u64, ram: u64) -> Result<(), String> {
    match gpa.checked_add(len) {
        Some(end) if end <= ram => Ok(()),
        _ => Err(format!(
            "image segment at {gpa:#x} ({len} bytes) does not fit in the VM's {} KiB of RAM",
            ram / 1024
        )),
    }
}

fn plan_elf(image: &[u8], ram: u64) -> Result<LoadPlan<'_>, String> {
    let file = ElfBytes::<AnyEndian>::minimal_parse(image)
        .map_err(|e| format!("malformed ELF image: {e}"))?;
    let h = &file.ehdr;
    let mode = match (h.class, h.e_machine) {
        (elf::file::Class::ELF32, elf::abi::EM_386) => CpuMode::Protected,
        (elf::file::Class::ELF64, elf::abi::EM_X86_64) => CpuMode::Long,
        (class, machine) => {
            return Err(format!(
                "ELF image for machine {machine} ({class:?}) is not an x86 executable"
            ));
        }
    };
    if h.e_type != elf::abi::ET_EXEC {
        return Err(format!(
            "ELF image has type {} (want ET_EXEC, a fixed-address executable)",
            h.e_type
        ));
    }
    let table = file.segments().ok_or("ELF image has no program headers")?;
    let mut segments = Vec::new();
    for ph in table
        .iter()
        .filter(|p| p.p_type == elf::abi::PT_LOAD && p.p_memsz > 0)
    {
        let data = usize::try_from(ph.p_offset)
            .ok()
            .zip(usize::try_from(ph.p_filesz).ok())
            .and_then(|(off, len)| image.get(off..off.checked_add(len)?))
            .ok_or_else(|| {
                format!(
                    "ELF segment at {:#x} lies outside the file (truncated image?)",
                    ph.p_paddr
                )
            })?;
        if ph.p_filesz > ph.p_memsz {
            return Err(format!(
                "ELF segment at {:#x} has file size > memory size",
                ph.p_paddr
            ));
        }
        if ph.p_paddr < LOWEST_ELF_LOAD {
            return Err(format!(
                "ELF segment at {:#x} is below {LOWEST_ELF_LOAD:#x}, where the loader keeps its own structures",
                ph.p_paddr
            ));
        }
        check_fits(ph.p_paddr, ph.p_memsz, ram)?;
        segments.push(Segment {
            gpa: ph.p_paddr,
            data,
            mem_len: ph.p_memsz,
        });
    }
    if segments.is_empty() {
        return Err("ELF image has no loadable segments".into());
    }
    let entry_ok = segments
        .iter()
        .any(|s| (s.gpa..s.gpa + s.mem_len).contains(&h.e_entry));
    if !entry_ok {
        return Err(format!(
            "ELF entry point {:#x} is not inside a loaded segment",
            h.e_entry
        ));
    }
    let long = mode == CpuMode::Long;
    Ok(LoadPlan {
        segments,
        start: StartState {
            mode,
            rip: h.e_entry,
            // The stack grows down from the top of RAM (16-byte aligned).
            rsp: ram & !0xF,
            cr3: if long { PAGE_TABLES_GPA } else { 0 },
            regs: GuestRegisters::default(),
        },
        page_tables: long.then(identity_tables),
    })
}

/// PML4 -> PDPT -> PD, mapping guest-virtual = guest-physical for the first 1 GiB with
/// present, writable 2 MiB pages. Addresses beyond the VM's RAM stay mapped here on
/// purpose: the nested page tables decide what the guest may reach.
fn identity_tables() -> [[u64; 512]; 3] {
    const P_RW: u64 = 0b11;
    const PS: u64 = 1 << 7;
    let mut t = [[0u64; 512]; 3];
    t[0][0] = (PAGE_TABLES_GPA + 0x1000) | P_RW;
    t[1][0] = (PAGE_TABLES_GPA + 0x2000) | P_RW;
    for (i, e) in t[2].iter_mut().enumerate() {
        *e = ((i as u64) << 21) | P_RW | PS;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF with one PT_LOAD segment, class and machine as given.
    fn elf(
        class64: bool,
        machine: u16,
        paddr: u64,
        entry: u64,
        payload: &[u8],
        memsz: u64,
    ) -> Vec<u8> {
        let mut f = Vec::new();
        let (ehsize, phsize): (usize, usize) = if class64 { (64, 56) } else { (52, 32) };
        f.extend_from_slice(b"\x7fELF");
        f.extend_from_slice(&[if class64 { 2 } else { 1 }, 1, 1, 0]);
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f.extend_from_slice(&machine.to_le_bytes());
        f.extend_from_slice(&1u32.to_le_bytes());
        let data_off = (ehsize + phsize) as u64;
        if class64 {
            f.extend_from_slice(&entry.to_le_bytes());
            f.extend_from_slice(&(ehsize as u64).to_le_bytes()); // phoff
            f.extend_from_slice(&0u64.to_le_bytes()); // shoff
        } else {
            f.extend_from_slice(&(entry as u32).to_le_bytes());
            f.extend_from_slice(&(ehsize as u32).to_le_bytes());
            f.extend_from_slice(&0u32.to_le_bytes());
        }
        f.extend_from_slice(&0u32.to_le_bytes()); // flags
        for v in [ehsize as u16, phsize as u16, 1, 0, 0, 0] {
            f.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(f.len(), ehsize);
        f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        if class64 {
            f.extend_from_slice(&5u32.to_le_bytes());
            for v in [data_off, paddr, paddr, payload.len() as u64, memsz, 0x1000] {
                f.extend_from_slice(&v.to_le_bytes());
            }
        } else {
            for v in [
                data_off as u32,
                paddr as u32,
                paddr as u32,
                payload.len() as u32,
                memsz as u32,
                5,
                0x1000,
            ] {
                f.extend_from_slice(&v.to_le_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn boot_sector_starts_in_real_mode() {
        let mut s = [0x90u8; 512];
        s[510] = 0x55;
        s[511] = 0xAA;
        let p = plan(&s, MIB).unwrap();
        assert_eq!(p.start.mode, CpuMode::Real);
        assert_eq!(p.start.rip, 0x7C00);
        assert_eq!(p.start.regs.rdx, 0x80);
        assert_eq!(p.segments[0].gpa, 0x7C00);
    }

    #[test]
    fn elf32_starts_in_protected_mode() {
        let img = elf(false, 3, 0x10_0000, 0x10_0004, b"abcdefgh", 0x2000);
        let p = plan(&img, 4 * MIB).unwrap();
        assert_eq!(p.start.mode, CpuMode::Protected);
        assert_eq!(p.start.rip, 0x10_0004);
        assert_eq!(p.start.rsp, 4 * MIB);
        assert!(p.page_tables.is_none());
        assert_eq!(
            p.segments,
            alloc::vec![Segment {
                gpa: 0x10_0000,
                data: b"abcdefgh",
                mem_len: 0x2000
            }]
        );
    }

    #[test]
    fn elf64_starts_in_long_mode_with_identity_tables() {
        let img = elf(true, 62, 0x20_0000, 0x20_0000, b"\xf4", 1);
        let p = plan(&img, 4 * MIB).unwrap();
        assert_eq!(p.start.mode, CpuMode::Long);
        assert_eq!(p.start.cr3, PAGE_TABLES_GPA);
        let t = p.page_tables.unwrap();
        assert_eq!(t[0][0], 0x2003);
        assert_eq!(t[1][0], 0x3003);
        assert_eq!(t[2][1], 0x20_0000 | 0x83);
        assert_eq!(t[2][511], (511 << 21) | 0x83);
    }

    #[test]
    fn refuses_images_that_do_not_fit_or_are_malformed() {
        let img = elf(true, 62, 0x30_0000, 0x30_0000, b"x", 2 * MIB);
        assert!(plan(&img, 4 * MIB)
            .unwrap_err()
            .contains("does not fit in the VM's 4096 KiB"));
        let img = elf(true, 62, 0x1000, 0x1000, b"x", 1);
        assert!(plan(&img, 4 * MIB).unwrap_err().contains("below 0x100000"));
        let img = elf(true, 62, 0x10_0000, 0x50_0000, b"x", 1);
        assert!(plan(&img, 8 * MIB).unwrap_err().contains("entry point"));
        let img = elf(true, 40, 0x10_0000, 0x10_0000, b"x", 1);
        assert!(plan(&img, 8 * MIB)
            .unwrap_err()
            .contains("not an x86 executable"));
        let img = elf(true, 62, 0x10_0000, 0x10_0000, b"xyz", 3);
        assert!(plan(&img[..img.len() - 2], 8 * MIB)
            .unwrap_err()
            .contains("outside the file"));
        assert!(plan(b"\x7fELF\x02", MIB)
            .unwrap_err()
            .contains("malformed ELF"));
        assert!(plan(b"hello", MIB)
            .unwrap_err()
            .contains("unrecognised guest image"));
    }
}
