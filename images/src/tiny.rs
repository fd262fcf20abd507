//! The tiny-guest rules: a 512-byte boot sector started in real mode at 0000:7C00 as a
//! BIOS starts one (DL = 0x80, the first hard disk), or an x86 ELF executable: ELF32
//! (EM_386) in 32-bit protected mode with paging off, ELF64 (EM_X86_64) in long mode
//! on identity-mapped page tables. Also the ELF program-header reading that the
//! Multiboot loader shares.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use elf::endian::AnyEndian;
use elf::ElfBytes;
use vcpu::{CpuMode, GuestRegisters, StartState};

use crate::{
    check_fits, identity_tables, LoadPlan, Segment, BOOT_SECTOR_GPA, LOWEST_ELF_LOAD,
    PAGE_TABLES_GPA,
};

/// A BIOS boot sector: exactly 512 bytes ending in the signature 55 AA.
pub fn is_boot_sector(image: &[u8]) -> bool {
    image.len() == 512 && image[510..] == [0x55, 0xAA]
}

/// The tiny-guest rules: an ELF executable or a 512-byte boot sector.
pub(crate) fn plan_tiny(image: &[u8], ram: u64) -> Result<LoadPlan<'_>, String> {
    if image.starts_with(b"\x7fELF") {
        return plan_elf(image, ram);
    }
    if is_boot_sector(image) {
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
                gdtr: None,
            },
            page_tables: None,
            extra: Vec::new(),
            gdtr: None,
        });
    }
    Err(format!(
        "unrecognised guest image ({} bytes): neither an ELF executable nor a 512-byte boot sector ending in 55 AA",
        image.len()
    ))
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
    let mut segments = Vec::new();
    for (ph, data) in load_segments(image, &file, "ELF image")? {
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
            gdtr: None,
        },
        // 4 GiB, so the guest can reach the local APIC and IOAPIC pages near 4 GiB.
        page_tables: long.then(|| identity_tables(4)),
        extra: Vec::new(),
        gdtr: None,
    })
}

/// The PT_LOAD segments of an ELF file with their bytes, each checked to lie inside
/// the file and to have no more file bytes than memory bytes. `what` names the image
/// in errors ("ELF image", "Multiboot ELF image").
pub fn load_segments<'a>(
    image: &'a [u8],
    file: &ElfBytes<'a, AnyEndian>,
    what: &str,
) -> Result<Vec<(elf::segment::ProgramHeader, &'a [u8])>, String> {
    let table = file
        .segments()
        .ok_or_else(|| format!("{what} has no program headers"))?;
    let mut out = Vec::new();
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
                    "{what}: the segment at {:#x} lies outside the file (truncated image?)",
                    ph.p_paddr
                )
            })?;
        if ph.p_filesz > ph.p_memsz {
            return Err(format!(
                "{what}: the segment at {:#x} has file size > memory size",
                ph.p_paddr
            ));
        }
        out.push((ph, data));
    }
    Ok(out)
}
