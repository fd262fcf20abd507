//! Multiboot v1 kernels, loaded the way QEMU's `-kernel` and GRUB load them
//! ("Multiboot Specification version 0.6.96", cited below as "spec 3.1.1" etc.).
//!
//! The kernel is found by its Multiboot header (spec 3.1.1: magic 0x1BADB002,
//! 32-bit aligned, within the first 8192 bytes, `magic + flags + checksum == 0`). It is
//! loaded either from its ELF program headers (by physical address) or, when header
//! flag bit 16 is set, from the "a.out kludge" address fields of the header (spec
//! 3.1.3). Modules follow the image, page-aligned. A boot area holds a 4 KiB stack,
//! the Multiboot information structure (MBI, spec 3.3), a GDT and the strings and
//! tables the MBI points at:
//!
//! | guest-physical | contents |
//! | --- | --- |
//! | 0x8000..0x9000 | stack (ESP = 0x9000 at entry) |
//! | 0x9000 | MBI (0x80 bytes), then GDT (32 bytes), memory map, module list, "hv", command line, module strings |
//! | image addresses | the kernel as its ELF/a.out fields say |
//! | page-aligned after the image | modules, one after the other, each page-aligned |
//!
//! The boot area sits at 0x8000 when that range (up to the EBDA at 0x9FC00) is free of
//! the image and modules, which is the case for every kernel loaded at or above 1 MiB;
//! otherwise it goes page-aligned after the last module (or the image). Either way it
//! never overlaps them; the spec lets the boot loader put the MBI anywhere outside
//! the kernel and modules (spec 3.3).
//!
//! Entry state (spec 3.2, "Machine state"): 32-bit protected mode, paging off, flat
//! 4 GiB segments (the vCPU's `Protected` start state), EAX = 0x2BADB002, EBX = MBI
//! address, interrupts off. Header flag bit 2 (video mode wanted) is accepted, but no
//! video information or framebuffer is provided (MBI flags bits 11/12 stay clear):
//! the guest has only the serial console.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use elf::endian::AnyEndian;
use elf::ElfBytes;
use vcpu::{CpuMode, GuestRegisters, StartState};

use crate::tiny::load_segments;
use crate::{
    align_up, boot_gdt, check_cmdline, check_fits, pc_memory_map, LoadPlan, Module, Segment,
    EBDA_START,
};

/// The header's magic (spec 3.1.2).
pub const HEADER_MAGIC: u32 = 0x1BAD_B002;
/// What EAX holds at entry (spec 3.2).
pub const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;
/// The header must lie completely within the first 8192 bytes (spec 3.1.1).
const HEADER_SEARCH: usize = 8192;
/// Where the boot area goes when it is free: the stack page, then the MBI.
pub const BOOT_AREA_GPA: u64 = 0x8000;
const STACK_SIZE: u64 = 0x1000;

// Header flags (spec 3.1.2). Bits 0-15 are requirements: a boot loader that does not
// understand one must refuse the image. Bits 16-31 are optional features.
const HF_PAGE_ALIGN_MODULES: u32 = 1 << 0;
const HF_MEMORY_INFO: u32 = 1 << 1;
const HF_VIDEO_MODE: u32 = 1 << 2;
const HF_AOUT_KLUDGE: u32 = 1 << 16;
const HF_KNOWN_REQUIREMENTS: u32 = HF_PAGE_ALIGN_MODULES | HF_MEMORY_INFO | HF_VIDEO_MODE;

// MBI flags (spec 3.3): which fields are valid.
pub const MBI_MEMORY: u32 = 1 << 0;
pub const MBI_CMDLINE: u32 = 1 << 2;
pub const MBI_MODULES: u32 = 1 << 3;
pub const MBI_MMAP: u32 = 1 << 6;
pub const MBI_LOADER_NAME: u32 = 1 << 9;

// MBI field offsets (spec 3.3).
pub const MBI_FLAGS: usize = 0;
pub const MBI_MEM_LOWER: usize = 4;
pub const MBI_MEM_UPPER: usize = 8;
pub const MBI_CMDLINE_PTR: usize = 16;
pub const MBI_MODS_COUNT: usize = 20;
pub const MBI_MODS_ADDR: usize = 24;
pub const MBI_MMAP_LENGTH: usize = 44;
pub const MBI_MMAP_ADDR: usize = 48;
pub const MBI_LOADER_NAME_PTR: usize = 64;
/// The MBI is 116 bytes with the framebuffer fields of later 0.6.96 revisions; the
/// boot area reserves 0x80 so that every field reads as zero (not provided).
const MBI_SIZE: usize = 0x80;
/// A memory-map entry: `size` (20, not counting itself), base_addr u64, length u64,
/// type u32 (spec 3.3, "mmap_*"); `mmap_addr` points at the first `size` field.
const MMAP_ENTRY: usize = 24;
/// A module entry: mod_start, mod_end (exclusive), string, reserved (spec 3.3).
const MODULE_ENTRY: usize = 16;
const LOADER_NAME: &[u8] = b"hv\0";

/// The command line a Multiboot kernel is given: its image's path, a space, then the
/// user's command line, as QEMU's `-kernel` builds it (`"%s %s"` of kernel_filename
/// and the `-append` text) and as GRUB's `multiboot` command passes its whole line,
/// file name first: kernels that parse their command line skip the first word. An
/// empty `image_path` (a caller that knows none) leaves `cmdline` alone.
pub fn command_line(image_path: &str, cmdline: &str) -> String {
    if image_path.is_empty() {
        String::from(cmdline)
    } else {
        format!("{image_path} {cmdline}")
    }
}

/// The offset of the first Multiboot header with a valid checksum, if any.
pub fn find_header(image: &[u8]) -> Option<usize> {
    candidates(image).find(|&off| {
        off + 12 <= image.len() && {
            let (magic, flags, sum) =
                (rd32(image, off), rd32(image, off + 4), rd32(image, off + 8));
            magic.wrapping_add(flags).wrapping_add(sum) == 0
        }
    })
}

/// 32-bit aligned offsets in the first 8 KiB that hold the magic.
fn candidates(image: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let end = image.len().min(HEADER_SEARCH);
    (0..end.saturating_sub(3))
        .step_by(4)
        .filter(move |&off| rd32(image, off) == HEADER_MAGIC)
}

fn rd32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn wr32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// The kernel's pieces and its (physical) entry point.
struct Kernel<'a> {
    segments: Vec<Segment<'a>>,
    entry: u64,
}

/// Plans a Multiboot boot of `image`: kernel, modules, boot area, entry state.
pub fn plan<'a>(
    image: &'a [u8],
    cmdline: &str,
    modules: &[Module<'a>],
    ram: u64,
) -> Result<LoadPlan<'a>, String> {
    let hoff = match find_header(image) {
        Some(off) => off,
        None => {
            return Err(match candidates(image).next() {
                Some(off) if off + 12 > image.len() => {
                    format!("truncated Multiboot header at file offset {off:#x}")
                }
                Some(off) => format!(
                    "Multiboot header at file offset {off:#x} has a bad checksum (magic + flags + checksum = {:#x}, must be 0)",
                    rd32(image, off)
                        .wrapping_add(rd32(image, off + 4))
                        .wrapping_add(rd32(image, off + 8))
                ),
                None => String::from(
                    "no Multiboot header (magic 0x1BADB002, 4-byte aligned) in the first 8192 bytes",
                ),
            });
        }
    };
    let flags = rd32(image, hoff + 4);
    let unknown = flags & 0xFFFF & !HF_KNOWN_REQUIREMENTS;
    if unknown != 0 {
        return Err(format!(
            "Multiboot header requires features this loader does not provide (flags {unknown:#x})"
        ));
    }
    check_cmdline(cmdline)?;
    for m in modules {
        check_cmdline(m.cmdline)?;
    }

    let kernel = if flags & HF_AOUT_KLUDGE != 0 {
        load_aout(image, hoff, ram)?
    } else {
        load_elf(image, ram)?
    };
    let mut segments = kernel.segments;
    // Claimed guest-physical ranges, to place the boot area clear of them.
    let mut used: Vec<(u64, u64)> = segments
        .iter()
        .map(|s| (s.gpa, s.gpa + s.mem_len))
        .collect();

    // Modules follow the image, each page-aligned (spec 3.1.2 bit 0 asks for that; we
    // always do it, as QEMU does).
    let image_end = used.iter().map(|r| r.1).max().unwrap_or(0);
    let mut next = align_up(image_end, 4096).unwrap_or(u64::MAX);
    let mut module_ranges = Vec::new();
    for (i, m) in modules.iter().enumerate() {
        let len = m.data.len() as u64;
        match next.checked_add(len) {
            Some(end) if end <= ram && end <= 1 << 32 => {
                segments.push(Segment {
                    gpa: next,
                    data: m.data,
                    mem_len: len,
                });
                used.push((next, end));
                module_ranges.push((next, end));
                next = align_up(end, 4096).unwrap_or(u64::MAX);
            }
            _ => {
                return Err(format!(
                    "Multiboot module {i} ({len} bytes) does not fit after the kernel at {next:#x} in the VM's {} KiB of RAM",
                    ram / 1024
                ))
            }
        }
    }

    // The boot area: its size first, then where it can go.
    let mmap = pc_memory_map(ram);
    let strings_len = LOADER_NAME.len()
        + cmdline.len()
        + 1
        + modules.iter().map(|m| m.cmdline.len() + 1).sum::<usize>();
    let gdt_off = MBI_SIZE;
    let mmap_off = gdt_off + 32;
    let mods_off = mmap_off + mmap.len() * MMAP_ENTRY;
    let strings_off = mods_off + modules.len() * MODULE_ENTRY;
    let info_len = strings_off + strings_len;
    let area_len = STACK_SIZE + info_len as u64;
    let overlaps = |a: u64, b: u64| used.iter().any(|&(s, e)| a < e && s < b);
    let area = if BOOT_AREA_GPA + area_len <= EBDA_START
        && !overlaps(BOOT_AREA_GPA, BOOT_AREA_GPA + area_len)
    {
        BOOT_AREA_GPA
    } else {
        next
    };
    match area.checked_add(area_len) {
        Some(end) if end <= ram && end <= 1 << 32 => {}
        _ => {
            return Err(format!(
                "the Multiboot information ({area_len} bytes with its stack) does not fit after the kernel and modules at {area:#x} in the VM's {} KiB of RAM",
                ram / 1024
            ))
        }
    }
    let mbi = area + STACK_SIZE;
    let at = |off: usize| (mbi + off as u64) as u32;

    let mut info = alloc::vec![0u8; info_len];
    // Strings: loader name, command line, module strings, each NUL-terminated.
    let mut s = strings_off;
    let mut put_str = |info: &mut [u8], text: &[u8]| {
        info[s..s + text.len()].copy_from_slice(text);
        let addr = at(s);
        s += text.len() + 1; // the NUL is already there
        addr
    };
    let name_ptr = put_str(&mut info, &LOADER_NAME[..LOADER_NAME.len() - 1]);
    let cmdline_ptr = put_str(&mut info, cmdline.as_bytes());
    for (i, (m, &(start, end))) in modules.iter().zip(&module_ranges).enumerate() {
        let string = put_str(&mut info, m.cmdline.as_bytes());
        let e = mods_off + i * MODULE_ENTRY;
        wr32(&mut info, e, start as u32);
        wr32(&mut info, e + 4, end as u32);
        wr32(&mut info, e + 8, string);
    }
    for (i, &(base, len, ty)) in mmap.iter().enumerate() {
        let e = mmap_off + i * MMAP_ENTRY;
        wr32(&mut info, e, (MMAP_ENTRY - 4) as u32);
        info[e + 4..e + 12].copy_from_slice(&base.to_le_bytes());
        info[e + 12..e + 20].copy_from_slice(&len.to_le_bytes());
        wr32(&mut info, e + 20, ty);
    }
    info[gdt_off..gdt_off + 32].copy_from_slice(&boot_gdt(false));

    // mem_lower: KiB of conventional memory below the EBDA, the same 639 KiB the
    // memory map gives as usable (GRUB and QEMU's BIOS report 639 too); mem_upper:
    // KiB from 1 MiB to the first hole, here the end of RAM (spec 3.3, "mem_*").
    let mem_lower = (ram.min(0x9FC00) / 1024) as u32;
    let mem_upper = (ram.saturating_sub(0x10_0000) / 1024).min(u32::MAX as u64) as u32;
    wr32(
        &mut info,
        MBI_FLAGS,
        MBI_MEMORY | MBI_CMDLINE | MBI_MODULES | MBI_MMAP | MBI_LOADER_NAME,
    );
    wr32(&mut info, MBI_MEM_LOWER, mem_lower);
    wr32(&mut info, MBI_MEM_UPPER, mem_upper);
    wr32(&mut info, MBI_CMDLINE_PTR, cmdline_ptr);
    wr32(&mut info, MBI_MODS_COUNT, modules.len() as u32);
    wr32(&mut info, MBI_MODS_ADDR, at(mods_off));
    wr32(&mut info, MBI_MMAP_LENGTH, (mmap.len() * MMAP_ENTRY) as u32);
    wr32(&mut info, MBI_MMAP_ADDR, at(mmap_off));
    wr32(&mut info, MBI_LOADER_NAME_PTR, name_ptr);

    Ok(LoadPlan {
        segments,
        start: StartState {
            mode: CpuMode::Protected,
            rip: kernel.entry,
            // The spec leaves ESP undefined; the stack page below the MBI is free.
            rsp: mbi,
            cr3: 0,
            regs: GuestRegisters {
                rax: BOOTLOADER_MAGIC as u64,
                rbx: mbi,
                ..Default::default()
            },
            gdtr: None,
        },
        page_tables: None,
        extra: alloc::vec![(mbi, info)],
        gdtr: Some((mbi + gdt_off as u64, 31)),
    })
}

/// Checks that [gpa, gpa + len) fits in the RAM and below 4 GiB (Multiboot addresses
/// are 32-bit).
fn check_fits32(gpa: u64, len: u64, ram: u64) -> Result<(), String> {
    check_fits(gpa, len, ram.min(1 << 32))
}

/// The a.out kludge (spec 3.1.3): the header's address fields say which part of the
/// file goes where. The file offset of the load is found from where the header itself
/// sits: `header offset - (header_addr - load_addr)`.
fn load_aout(image: &[u8], hoff: usize, ram: u64) -> Result<Kernel<'_>, String> {
    if hoff + 32 > image.len() {
        return Err(format!(
            "truncated Multiboot header at file offset {hoff:#x}: the a.out kludge fields (flag 16) are missing"
        ));
    }
    let f = |i: usize| rd32(image, hoff + 12 + 4 * i) as u64;
    let (header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr) =
        (f(0), f(1), f(2), f(3), f(4));
    let inconsistent = |why: &str| {
        Err(format!(
            "Multiboot a.out kludge fields are inconsistent: {why} (header_addr {header_addr:#x}, load_addr {load_addr:#x}, load_end_addr {load_end_addr:#x}, bss_end_addr {bss_end_addr:#x}, entry_addr {entry_addr:#x})"
        ))
    };
    if load_addr > header_addr {
        return inconsistent("load_addr is above header_addr");
    }
    let Some(file_off) = (hoff as u64).checked_sub(header_addr - load_addr) else {
        return inconsistent("the load would start before the beginning of the file");
    };
    // load_end_addr 0: the text and data segments occupy the whole rest of the file.
    let file_len = if load_end_addr == 0 {
        image.len() as u64 - file_off
    } else if load_end_addr <= load_addr {
        return inconsistent("load_end_addr is not above load_addr");
    } else {
        load_end_addr - load_addr
    };
    let data = image
        .get(file_off as usize..)
        .and_then(|rest| rest.get(..file_len as usize))
        .ok_or_else(|| {
            format!(
                "truncated Multiboot image: the a.out kludge loads {file_len} bytes from file offset {file_off:#x}, the file has {} bytes",
                image.len()
            )
        })?;
    let load_end = load_addr + file_len;
    // bss_end_addr 0: no bss.
    let mem_len = if bss_end_addr == 0 {
        file_len
    } else if bss_end_addr < load_end {
        return inconsistent("bss_end_addr is below the end of the loaded data");
    } else {
        bss_end_addr - load_addr
    };
    if !(load_addr..load_addr + mem_len).contains(&entry_addr) {
        return inconsistent("entry_addr is outside the loaded image");
    }
    check_fits32(load_addr, mem_len, ram)?;
    Ok(Kernel {
        segments: alloc::vec![Segment {
            gpa: load_addr,
            data,
            mem_len,
        }],
        entry: entry_addr,
    })
}

/// An ELF kernel: its PT_LOAD segments go to their physical addresses (p_paddr), as
/// GRUB and QEMU load them. ELF32 (EM_386) as the spec describes, and ELF64
/// (EM_X86_64) as GRUB also accepts; either way the entry runs in 32-bit mode.
fn load_elf(image: &[u8], ram: u64) -> Result<Kernel<'_>, String> {
    if !image.starts_with(b"\x7fELF") {
        return Err(String::from(
            "Multiboot header without the a.out kludge (flag 16) needs an ELF image, and this is not one",
        ));
    }
    let file = ElfBytes::<AnyEndian>::minimal_parse(image)
        .map_err(|e| format!("malformed Multiboot ELF image: {e}"))?;
    let h = &file.ehdr;
    match (h.class, h.e_machine) {
        (elf::file::Class::ELF32, elf::abi::EM_386)
        | (elf::file::Class::ELF64, elf::abi::EM_X86_64) => {}
        (class, machine) => {
            return Err(format!(
                "Multiboot ELF image for machine {machine} ({class:?}) is not an x86 executable"
            ))
        }
    }
    if h.e_type != elf::abi::ET_EXEC {
        return Err(format!(
            "Multiboot ELF image has type {} (want ET_EXEC)",
            h.e_type
        ));
    }
    let mut segments = Vec::new();
    let mut vaddrs = Vec::new();
    for (ph, data) in load_segments(image, &file, "Multiboot ELF image")? {
        check_fits32(ph.p_paddr, ph.p_memsz, ram)?;
        vaddrs.push(ph.p_vaddr);
        segments.push(Segment {
            gpa: ph.p_paddr,
            data,
            mem_len: ph.p_memsz,
        });
    }
    if segments.is_empty() {
        return Err(String::from("Multiboot ELF image has no loadable segments"));
    }
    // The entry is normally a physical address inside a segment; a higher-half kernel
    // may give a virtual one, which is translated through its segment as GRUB does.
    let e = h.e_entry;
    let entry = segments
        .iter()
        .find(|s| (s.gpa..s.gpa + s.mem_len).contains(&e))
        .map(|_| e)
        .or_else(|| {
            segments
                .iter()
                .zip(&vaddrs)
                .find(|(s, &v)| (v..v.saturating_add(s.mem_len)).contains(&e))
                .map(|(s, &v)| s.gpa + (e - v))
        })
        .ok_or_else(|| {
            format!("Multiboot ELF entry point {e:#x} is not inside a loaded segment")
        })?;
    Ok(Kernel { segments, entry })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{plan_with, ImageFormat};

    const MIB: u64 = 1 << 20;

    fn header(flags: u32, aout: [u32; 5]) -> Vec<u8> {
        let mut h = Vec::new();
        for v in [
            HEADER_MAGIC,
            flags,
            0u32.wrapping_sub(HEADER_MAGIC.wrapping_add(flags)),
        ] {
            h.extend_from_slice(&v.to_le_bytes());
        }
        if flags & HF_AOUT_KLUDGE != 0 {
            for v in aout {
                h.extend_from_slice(&v.to_le_bytes());
            }
        }
        h
    }

    /// An a.out-kludge kernel: 0x40 bytes of padding, then the header at file offset
    /// 0x40, loaded so that the file's offset 0 lands at `load`. `body` bytes of code
    /// follow the header; bss runs to `load + 0x3000`.
    fn aout_kernel(load: u32, body: usize) -> Vec<u8> {
        let mut img = alloc::vec![0xCCu8; 0x40];
        let total = 0x40 + 32 + body;
        img.extend(header(
            HF_AOUT_KLUDGE | HF_MEMORY_INFO | HF_PAGE_ALIGN_MODULES,
            [
                load + 0x40,
                load,
                load + total as u32,
                load + 0x3000,
                load + 0x60,
            ],
        ));
        img.resize(total, 0x90);
        img
    }

    /// A minimal ELF32 with one PT_LOAD at `paddr` (vaddr `vaddr`) holding a
    /// Multiboot header and some code; entry `entry`.
    fn elf_kernel(paddr: u32, vaddr: u32, entry: u32, flags: u32) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(b"\x7fELF\x01\x01\x01\x00");
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f.extend_from_slice(&3u16.to_le_bytes()); // EM_386
        f.extend_from_slice(&1u32.to_le_bytes());
        for v in [entry, 52, 0, 0] {
            f.extend_from_slice(&v.to_le_bytes()); // entry, phoff, shoff, flags
        }
        for v in [52u16, 32, 1, 0, 0, 0] {
            f.extend_from_slice(&v.to_le_bytes());
        }
        let payload_off = 0x60u32;
        let mut payload = header(flags, [0; 5]);
        payload.extend_from_slice(&[0x90; 0x20]);
        for v in [
            1,
            payload_off,
            vaddr,
            paddr,
            payload.len() as u32,
            0x5000,
            5,
            0x1000,
        ] {
            f.extend_from_slice(&v.to_le_bytes());
        }
        f.resize(payload_off as usize, 0);
        f.extend_from_slice(&payload);
        f
    }

    fn mb<'a>(
        img: &'a [u8],
        cmdline: &str,
        mods: &[Module<'a>],
        ram: u64,
    ) -> Result<LoadPlan<'a>, String> {
        plan_with(img, ImageFormat::Auto, cmdline, mods, ram)
    }

    /// Reads the boot area back as guest memory would hold it.
    fn mem_u32(p: &LoadPlan<'_>, gpa: u64) -> u32 {
        let (base, bytes) = p
            .extra
            .iter()
            .find(|(b, d)| (*b..*b + d.len() as u64).contains(&gpa))
            .expect("address inside the boot area");
        rd32(bytes, (gpa - base) as usize)
    }

    fn mem_u64(p: &LoadPlan<'_>, gpa: u64) -> u64 {
        mem_u32(p, gpa) as u64 | (mem_u32(p, gpa + 4) as u64) << 32
    }

    fn mem_str(p: &LoadPlan<'_>, gpa: u64) -> String {
        let (base, bytes) = p
            .extra
            .iter()
            .find(|(b, d)| (*b..*b + d.len() as u64).contains(&gpa))
            .unwrap();
        let s = &bytes[(gpa - base) as usize..];
        String::from_utf8(s[..s.iter().position(|&b| b == 0).unwrap()].to_vec()).unwrap()
    }

    #[test]
    fn detects_only_valid_headers() {
        let img = aout_kernel(0x10_0000, 0x100);
        assert_eq!(find_header(&img), Some(0x40));
        let mut bad = img.clone();
        bad[0x48] ^= 1;
        assert_eq!(find_header(&bad), None);
        // Misaligned or beyond 8 KiB: not a header.
        let mut mis = alloc::vec![0u8; 2];
        mis.extend(header(0, [0; 5]));
        assert_eq!(find_header(&mis), None);
        let mut far = alloc::vec![0u8; 8192];
        far.extend(header(0, [0; 5]));
        assert_eq!(find_header(&far), None);
    }

    #[test]
    fn aout_kludge_kernel_loads_at_load_addr() {
        let img = aout_kernel(0x10_0000, 0x100);
        let p = mb(&img, "", &[], 16 * MIB).unwrap();
        assert_eq!(p.segments.len(), 1);
        assert_eq!(p.segments[0].gpa, 0x10_0000);
        assert_eq!(p.segments[0].data, &img[..]);
        assert_eq!(p.segments[0].mem_len, 0x3000);
        assert_eq!(p.start.mode, CpuMode::Protected);
        assert_eq!(p.start.rip, 0x10_0060);
        assert_eq!(p.start.cr3, 0);
        assert!(p.page_tables.is_none());
        assert_eq!(p.start.regs.rax, 0x2BAD_B002);
        assert_eq!(p.start.regs.rbx, 0x9000);
        assert_eq!(p.start.rsp, 0x9000);
    }

    #[test]
    fn aout_kludge_file_offset_follows_the_header_position() {
        // The header sits at file offset 0x40 but claims header_addr = load_addr + 0x10:
        // the load starts at file offset 0x30 and covers 0x20 bytes.
        let mut img = alloc::vec![0u8; 0x40];
        img[0x30] = 0xAB;
        img.extend(header(
            HF_AOUT_KLUDGE,
            [0x20_0010, 0x20_0000, 0x20_0020, 0, 0x20_0000],
        ));
        let p = mb(&img, "", &[], 8 * MIB).unwrap();
        assert_eq!(p.segments[0].gpa, 0x20_0000);
        assert_eq!(p.segments[0].data, &img[0x30..0x50]);
        assert_eq!(p.segments[0].mem_len, 0x20);
    }

    #[test]
    fn elf_kernel_loads_by_physical_address() {
        let img = elf_kernel(0x10_0000, 0x10_0000, 0x10_0010, HF_MEMORY_INFO);
        let p = mb(&img, "", &[], 8 * MIB).unwrap();
        assert_eq!(p.segments[0].gpa, 0x10_0000);
        assert_eq!(p.segments[0].mem_len, 0x5000);
        assert_eq!(&p.segments[0].data[..4], &HEADER_MAGIC.to_le_bytes());
        assert_eq!(p.start.rip, 0x10_0010);
        // A higher-half kernel: the entry is virtual and translated to physical.
        let img = elf_kernel(0x10_0000, 0xC010_0000, 0xC010_0010, 0);
        let p = mb(&img, "", &[], 8 * MIB).unwrap();
        assert_eq!(p.segments[0].gpa, 0x10_0000);
        assert_eq!(p.start.rip, 0x10_0010);
    }

    #[test]
    fn boot_information_structure() {
        let img = aout_kernel(0x10_0000, 0x100);
        let m0 = [1u8; 5000];
        let m1 = [2u8; 10];
        let mods = [
            Module {
                data: &m0,
                cmdline: "initrd.img arg",
            },
            Module {
                data: &m1,
                cmdline: "",
            },
        ];
        let ram = 32 * MIB;
        let p = mb(&img, "console=ttyS0 x", &mods, ram).unwrap();
        let mbi = p.start.regs.rbx;
        assert_eq!(mbi, 0x9000);
        assert_eq!(p.extra.len(), 1);
        assert_eq!(p.extra[0].0, 0x9000);
        assert_eq!(mem_u32(&p, mbi), 0x24D, "flags: bits 0, 2, 3, 6, 9");
        assert_eq!(mem_u32(&p, mbi + 4), 639);
        assert_eq!(mem_u32(&p, mbi + 8), 31 * 1024);
        assert_eq!(mem_str(&p, mem_u32(&p, mbi + 16) as u64), "console=ttyS0 x");
        assert_eq!(mem_str(&p, mem_u32(&p, mbi + 64) as u64), "hv");
        // Nothing else claimed: boot device, symbols, drives, APM, VBE all zero.
        for off in [12, 28, 32, 36, 40, 52, 56, 60, 68, 72, 76, 80, 84, 88] {
            assert_eq!(mem_u32(&p, mbi + off), 0, "MBI offset {off}");
        }
        // Modules: page-aligned after the image (which ends at 0x103000 with bss).
        assert_eq!(mem_u32(&p, mbi + 20), 2);
        let mods_addr = mem_u32(&p, mbi + 24) as u64;
        assert_eq!(mem_u32(&p, mods_addr), 0x10_3000);
        assert_eq!(mem_u32(&p, mods_addr + 4), 0x10_3000 + 5000);
        assert_eq!(
            mem_str(&p, mem_u32(&p, mods_addr + 8) as u64),
            "initrd.img arg"
        );
        assert_eq!(mem_u32(&p, mods_addr + 12), 0);
        assert_eq!(mem_u32(&p, mods_addr + 16), 0x10_5000);
        assert_eq!(mem_u32(&p, mods_addr + 20), 0x10_500A);
        assert_eq!(mem_str(&p, mem_u32(&p, mods_addr + 24) as u64), "");
        assert_eq!(p.segments[1].gpa, 0x10_3000);
        assert_eq!(p.segments[1].data, &m0[..]);
        assert_eq!(p.segments[2].gpa, 0x10_5000);
        assert_eq!(p.segments[2].data, &m1[..]);
        // Memory map.
        assert_eq!(mem_u32(&p, mbi + 44), 4 * 24);
        let mmap = mem_u32(&p, mbi + 48) as u64;
        let expect = [
            (0, 0x9FC00, 1),
            (0x9FC00, 0x400, 2),
            (0xF0000, 0x10000, 2),
            (0x10_0000, ram - 0x10_0000, 1),
        ];
        for (i, (base, len, ty)) in expect.into_iter().enumerate() {
            let e = mmap + 24 * i as u64;
            assert_eq!(mem_u32(&p, e), 20);
            assert_eq!(mem_u64(&p, e + 4), base);
            assert_eq!(mem_u64(&p, e + 12), len);
            assert_eq!(mem_u32(&p, e + 20), ty);
        }
        // The GDT: 0x10 32-bit flat code, 0x18 flat data.
        let (gdt, limit) = p.gdtr.unwrap();
        assert_eq!(limit, 31);
        assert_eq!(mem_u64(&p, gdt + 0x10), 0x00CF_9B00_0000_FFFF);
        assert_eq!(mem_u64(&p, gdt + 0x18), 0x00CF_9300_0000_FFFF);
    }

    /// QEMU passes `"kernel_filename cmdline"` and GRUB the whole `multiboot` line:
    /// third-party kernels skip the first word of their command line.
    #[test]
    fn command_line_starts_with_the_image_path() {
        let img = aout_kernel(0x10_0000, 0x100);
        let req = |image_path, cmdline| crate::BootRequest {
            image: &img,
            image_path,
            format: ImageFormat::Auto,
            cmdline,
            modules: &[],
            ram: 16 * MIB,
        };
        let cmdline_of = |p: &LoadPlan<'_>| mem_str(p, mem_u32(p, p.start.regs.rbx + 16) as u64);
        let p = crate::plan_request(&req("/boot/kernel.elf", "console=ttyS0 x")).unwrap();
        assert_eq!(cmdline_of(&p), "/boot/kernel.elf console=ttyS0 x");
        // As QEMU's "%s %s": the separating space stays when there is no command line.
        let p = crate::plan_request(&req("kernel", "")).unwrap();
        assert_eq!(cmdline_of(&p), "kernel ");
        // A caller that knows no path passes the command line alone.
        let p = crate::plan_request(&req("", "a b")).unwrap();
        assert_eq!(cmdline_of(&p), "a b");
        assert_eq!(command_line("k", "a"), "k a");
        // A NUL in the path is refused like one in the command line.
        let e = crate::plan_request(&req("a\0b", "")).unwrap_err();
        assert!(e.contains("NUL"), "{e}");
        // A bundle VM passes its image path through.
        let vm = bundle::VmSpec {
            name: "mb",
            memory_kib: 16 * 1024,
            run_limit_ms: 0,
            background: false,
            bench_hypercalls: false,
            on_reset: bundle::Policy::Restart,
            on_crash: bundle::Policy::Stop,
            unmapped_stops: false,
            balloon: false,
            image: &img,
            image_path: "mb.bin",
            format: ImageFormat::Multiboot,
            cmdline: "hello=world",
            vcpus: 1,
            affinity: 0,
            modules: Vec::new(),
            disk: None,
            partition: None,
            nics: Vec::new(),
        };
        let p = crate::plan_request(&crate::BootRequest::for_vm(&vm, 16 * MIB)).unwrap();
        assert_eq!(cmdline_of(&p), "mb.bin hello=world");
    }

    #[test]
    fn boot_area_moves_when_the_image_is_low() {
        // An image loaded at 0x8000..: the boot area goes after it.
        let img = aout_kernel(0x8000, 0x100);
        let m = [7u8; 3];
        let p = mb(
            &img,
            "",
            &[Module {
                data: &m,
                cmdline: "m",
            }],
            4 * MIB,
        )
        .unwrap();
        assert_eq!(p.segments[1].gpa, 0xB000);
        let area = p.extra[0].0 - 0x1000;
        assert_eq!(area, 0xC000);
        assert!(p.segments.iter().all(|s| s.gpa + s.mem_len <= area));
        assert_eq!(p.start.regs.rbx, 0xD000);
    }

    #[test]
    fn video_mode_request_is_accepted_without_a_framebuffer() {
        let img = elf_kernel(0x10_0000, 0x10_0000, 0x10_0010, HF_VIDEO_MODE);
        let p = mb(&img, "", &[], 8 * MIB).unwrap();
        let flags = mem_u32(&p, p.start.regs.rbx);
        assert_eq!(flags & (1 << 11 | 1 << 12), 0);
    }

    #[test]
    fn errors() {
        let ram = 8 * MIB;
        let explicit =
            |img: &[u8]| plan_with(img, ImageFormat::Multiboot, "", &[], ram).unwrap_err();
        assert!(explicit(b"nothing here").contains("no Multiboot header"));
        let mut img = aout_kernel(0x10_0000, 0x100);
        img[0x48] ^= 1;
        assert!(explicit(&img).contains("bad checksum"));
        assert!(explicit(&HEADER_MAGIC.to_le_bytes()).contains("truncated Multiboot header"));
        // The a.out fields are cut off.
        let img = header(HF_AOUT_KLUDGE, [0; 5]);
        assert!(explicit(&img[..20]).contains("truncated Multiboot header"));
        // Unknown requirement bits.
        let img = header(1 << 3, [0; 5]);
        assert!(explicit(&img).contains("requires features"));
        // Not ELF, no kludge.
        assert!(explicit(&header(0, [0; 5])).contains("needs an ELF image"));
        // Inconsistent kludge fields.
        let bad = |f: [u32; 5]| {
            let mut img = header(HF_AOUT_KLUDGE, f);
            img.resize(0x100, 0);
            explicit(&img)
        };
        assert!(bad([0x10_0000, 0x10_0010, 0, 0, 0x10_0010]).contains("load_addr is above"));
        assert!(bad([0x10_0100, 0x10_0000, 0, 0, 0x10_0000]).contains("before the beginning"));
        assert!(bad([0x10_0000, 0x10_0000, 0x10_0000, 0, 0x10_0000]).contains("load_end_addr"));
        assert!(
            bad([0x10_0000, 0x10_0000, 0x10_0080, 0x10_0040, 0x10_0000]).contains("bss_end_addr")
        );
        assert!(bad([0x10_0000, 0x10_0000, 0, 0, 0x20_0000]).contains("entry_addr"));
        assert!(bad([0x10_0000, 0x10_0000, 0x10_1000, 0, 0x10_0000])
            .contains("truncated Multiboot image"));
        // Does not fit in RAM.
        assert!(bad([0x7F_FF00, 0x7F_FF00, 0, 0x80_1000, 0x7F_FF00]).contains("does not fit"));
        // ELF troubles.
        let img = elf_kernel(0x10_0000, 0x10_0000, 0x40_0000, 0);
        assert!(explicit(&img).contains("entry point"));
        let img = elf_kernel(0x7F_F000, 0x7F_F000, 0x7F_F000, 0);
        assert!(explicit(&img).contains("does not fit"));
        let img = elf_kernel(0x10_0000, 0x10_0000, 0x10_0000, 0);
        assert!(explicit(&img[..0x70]).contains(
            "Multiboot ELF image: the segment at 0x100000 lies outside the file (truncated image?)"
        ));
        // Modules that do not fit.
        let img = aout_kernel(0x10_0000, 0x100);
        let big = alloc::vec![0u8; (7 * MIB) as usize];
        let e = mb(
            &img,
            "",
            &[Module {
                data: &big,
                cmdline: "",
            }],
            ram,
        )
        .unwrap_err();
        assert!(e.contains("module 0"), "{e}");
        // A NUL in a command line.
        assert!(mb(&img, "a\0b", &[], ram).unwrap_err().contains("NUL"));
    }
}
