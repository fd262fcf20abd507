//! Every guest image format the hypervisor boots, parsed and planned in one place so
//! that the kernel's loader and xtask's host-side configuration check reach the same
//! verdict through the same code. The format is decided by the image itself (or by
//! the caller, through [`ImageFormat`]):
//!
//! - a Linux bzImage (setup header "HdrS" at 0x202 and boot flag 0xAA55 at 0x1FE) starts
//!   at its 64-bit entry point with a zero page, see [`linux`];
//! - a Multiboot v1 kernel (header magic 0x1BADB002 in the first 8 KiB) starts in
//!   32-bit protected mode with a Multiboot information structure, see [`multiboot`];
//! - otherwise the tiny-guest rules ([`tiny`]): a 512-byte boot sector starts in real
//!   mode at 0000:7C00 as a BIOS would start it; an ELF32 (EM_386) executable starts in
//!   32-bit protected mode with paging off; an ELF64 (EM_X86_64) executable starts in
//!   long mode on identity-mapped page tables the loader builds.
//!
//! Pure and `no_std`: the plan names what to copy where; the kernel's VM carries it
//! out. Every image, module and boot structure is checked against the VM's RAM before
//! anything is copied. Images are untrusted input: every field is bounds- and
//! overflow-checked, and a bad image gives an error, never a panic (fuzzed by
//! `cargo xtask fuzz images`).
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod linux;
pub mod multiboot;
pub mod tiny;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use vcpu::StartState;

pub const BOOT_SECTOR_GPA: u64 = 0x7C00;
/// The long-mode page tables: a PML4, a PDPT and one page directory per identity-mapped
/// GiB (2 MiB pages), consecutive pages from here. Tiny ELF64 guests get 1 GiB (3
/// pages, up to 0x4000), Linux gets 4 GiB (6 pages, up to 0x7000).
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
    /// The image's pieces and the boot modules (initrd), borrowed from the caller.
    pub segments: Vec<Segment<'a>>,
    pub start: StartState,
    /// Long mode: the page-table pages to write consecutively from
    /// [`PAGE_TABLES_GPA`] (the PML4 first; `start.cr3` points at it).
    pub page_tables: Option<Vec<[u64; 512]>>,
    /// Boot structures the loader built (Multiboot information, zero page, GDT,
    /// command line): bytes to copy to the given guest-physical address, after the
    /// segments. Checked to lie inside the RAM.
    pub extra: Vec<(u64, Vec<u8>)>,
    /// A GDT the loader placed in guest memory (base, limit) whose selectors 0x10
    /// (code) and 0x18 (data) match the hidden segment state the vCPU starts with.
    /// The backend should load GDTR with it, so that a guest reloading a segment
    /// register before it has its own GDT (Linux's 64-bit entry requires this GDT,
    /// boot.rst "64-bit Boot Protocol") gets the same flat segments. `None`: GDTR
    /// may stay empty.
    pub gdtr: Option<(u64, u16)>,
}

/// How to interpret a guest image: `Auto` tries a Linux bzImage, then a Multiboot v1
/// header, then the tiny-guest rules; the others force one format. A boot module is
/// `Module { data, cmdline }`: the initrd for Linux (only `modules[0]`, its `cmdline`
/// unused), a Multiboot module with its string otherwise. Both are the guest bundle's
/// own types, so a `VmSpec`'s `format` and `modules` pass straight through.
pub use bundle::{ImageFormat, Module};

/// Everything a boot needs, as the guest bundle carries it for one VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootRequest<'r, 'a> {
    pub image: &'a [u8],
    /// The image's path as the user named it (`-kernel` argument, `kernel` key). A
    /// Multiboot kernel's command line starts with it, as QEMU (`"kernel_filename
    /// cmdline"`) and GRUB pass it; empty: the command line is passed alone.
    pub image_path: &'r str,
    pub format: ImageFormat,
    pub cmdline: &'r str,
    pub modules: &'r [Module<'a>],
    /// The VM's RAM at guest-physical 0, in bytes.
    pub ram: u64,
}

impl<'r, 'a> BootRequest<'r, 'a> {
    /// The request for one VM of the guest bundle in `ram` bytes of RAM.
    pub fn for_vm(vm: &'r bundle::VmSpec<'a>, ram: u64) -> Self {
        BootRequest {
            image: vm.image,
            image_path: vm.image_path,
            format: vm.format,
            cmdline: vm.cmdline,
            modules: &vm.modules,
            ram,
        }
    }
}

/// Makes a plan for `image` in a VM with `ram` bytes of RAM at guest-physical 0,
/// detecting the format, with an empty command line and no modules.
pub fn plan(image: &[u8], ram: u64) -> Result<LoadPlan<'_>, String> {
    plan_with(image, ImageFormat::Auto, "", &[], ram)
}

/// Makes a plan for `image` in the given (or detected) format, passing `cmdline` and
/// `modules` the way the format's boot protocol does (no image path: a Multiboot
/// kernel gets `cmdline` alone).
pub fn plan_with<'a>(
    image: &'a [u8],
    format: ImageFormat,
    cmdline: &str,
    modules: &[Module<'a>],
    ram: u64,
) -> Result<LoadPlan<'a>, String> {
    plan_request(&BootRequest {
        image,
        image_path: "",
        format,
        cmdline,
        modules,
        ram,
    })
}

/// The format `image` boots as: `format` itself unless it is `Auto`, which tries a
/// Linux bzImage, then a Multiboot v1 header (a Multiboot kernel is often also an
/// ELF file), then the tiny-guest rules.
pub fn detect(image: &[u8], format: ImageFormat) -> ImageFormat {
    match format {
        ImageFormat::Auto if linux::is_bzimage(image) => ImageFormat::Linux,
        ImageFormat::Auto if multiboot::find_header(image).is_some() => ImageFormat::Multiboot,
        ImageFormat::Auto => ImageFormat::Tiny,
        f => f,
    }
}

/// Makes the plan for a boot request: the one verdict on whether (and how) an image
/// boots, for the kernel and for xtask's check alike.
pub fn plan_request<'a>(req: &BootRequest<'_, 'a>) -> Result<LoadPlan<'a>, String> {
    let (image, cmdline, modules, ram) = (req.image, req.cmdline, req.modules, req.ram);
    let mut plan = match detect(image, req.format) {
        ImageFormat::Linux => linux::plan(image, cmdline, modules, ram)?,
        ImageFormat::Multiboot => {
            let cmdline = multiboot::command_line(req.image_path, cmdline);
            multiboot::plan(image, &cmdline, modules, ram)?
        }
        _ => {
            if !cmdline.is_empty() || !modules.is_empty() {
                return Err(String::from(
                    "a tiny guest image (boot sector or plain ELF) takes no command line or modules",
                ));
            }
            tiny::plan_tiny(image, ram)?
        }
    };
    plan.start.gdtr = plan.gdtr;
    // The VM copies without further checks: everything must lie inside the RAM. The
    // format planners check as they place; this is the backstop for the structures.
    for s in &plan.segments {
        check_fits(s.gpa, s.mem_len.max(s.data.len() as u64), ram)?;
    }
    if let Some(t) = &plan.page_tables {
        check_fits(PAGE_TABLES_GPA, t.len() as u64 * 4096, ram)?;
    }
    for (gpa, bytes) in &plan.extra {
        check_fits(*gpa, bytes.len() as u64, ram)?;
    }
    Ok(plan)
}

/// The most RAM [`min_ram`] considers: the configuration's limit for one VM.
pub const RAM_MAX: u64 = 64 << 30;

/// The least RAM (a multiple of 4 KiB) in which `req` plans, its own `ram` ignored;
/// or the planner's error when it does not plan even in [`RAM_MAX`] (then no amount
/// of memory helps: the image, command line or modules are at fault). The planners
/// only ever need more room, never less, so a bisection finds the bound.
pub fn min_ram(req: &BootRequest<'_, '_>) -> Result<u64, String> {
    const PAGE: u64 = 4096;
    let fits = |ram: u64| plan_request(&BootRequest { ram, ..*req }).is_ok();
    plan_request(&BootRequest {
        ram: RAM_MAX,
        ..*req
    })?;
    // Invariant: `hi` plans, `lo` does not (0 bytes never does: nothing fits).
    let (mut lo, mut hi) = (0u64, RAM_MAX / PAGE);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid * PAGE) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(hi * PAGE)
}

pub(crate) fn check_fits(gpa: u64, len: u64, ram: u64) -> Result<(), String> {
    match gpa.checked_add(len) {
        Some(end) if end <= ram => Ok(()),
        _ => Err(format!(
            "image segment at {gpa:#x} ({len} bytes) does not fit in the VM's {} KiB of RAM",
            ram / 1024
        )),
    }
}

/// PML4 -> PDPT -> `gib` page directories, mapping guest-virtual = guest-physical for
/// the first `gib` GiB with present, writable 2 MiB pages; the pages are meant for
/// [`PAGE_TABLES_GPA`] onwards. Addresses beyond the VM's RAM stay mapped here on
/// purpose: the nested page tables decide what the guest may reach.
pub(crate) fn identity_tables(gib: usize) -> Vec<[u64; 512]> {
    const P_RW: u64 = 0b11;
    const PS: u64 = 1 << 7;
    assert!((1..=512).contains(&gib));
    let mut t = alloc::vec![[0u64; 512]; 2 + gib];
    t[0][0] = (PAGE_TABLES_GPA + 0x1000) | P_RW;
    for g in 0..gib {
        t[1][g] = (PAGE_TABLES_GPA + 0x2000 + 0x1000 * g as u64) | P_RW;
        for (i, e) in t[2 + g].iter_mut().enumerate() {
            *e = (((g * 512 + i) as u64) << 21) | P_RW | PS;
        }
    }
    t
}

/// A GDT for the boot selectors the vCPU's start state uses: 0x00 and 0x08 null, 0x10
/// a flat 4 GiB code segment (64-bit if `long`, else 32-bit), 0x18 a flat 4 GiB
/// read/write data segment. The accessed bits are preset so the CPU never needs to
/// write the table. Returns the bytes; the limit is `len - 1` = 31.
pub(crate) fn boot_gdt(long: bool) -> [u8; 32] {
    let code: u64 = if long {
        0x00AF_9B00_0000_FFFF // G, L, P, DPL0, code execute/read, accessed
    } else {
        0x00CF_9B00_0000_FFFF // G, D/B, P, DPL0, code execute/read, accessed
    };
    let data: u64 = 0x00CF_9300_0000_FFFF; // G, D/B, P, DPL0, data read/write, accessed
    let mut g = [0u8; 32];
    g[0x10..0x18].copy_from_slice(&code.to_le_bytes());
    g[0x18..0x20].copy_from_slice(&data.to_le_bytes());
    g
}

/// Types of a PC memory-map entry (ACPI address range types, as INT 15h E820 and the
/// Multiboot memory map both use them).
pub(crate) const MEM_USABLE: u32 = 1;
pub(crate) const MEM_RESERVED: u32 = 2;
/// Where a PC's conventional memory ends and the extended BIOS data area starts.
pub(crate) const EBDA_START: u64 = 0x9_FC00;

/// The memory map every VM is described with, as a PC BIOS would report it and QEMU
/// does: conventional memory up to the EBDA, the EBDA and the BIOS ROM area reserved,
/// the VGA/option-ROM hole 0xA0000..0xF0000 left out, everything from 1 MiB to the end
/// of RAM usable. Entries are clipped to `ram`. (base, length, type).
pub(crate) fn pc_memory_map(ram: u64) -> Vec<(u64, u64, u32)> {
    let regions = [
        (0, EBDA_START, MEM_USABLE),
        (EBDA_START, 0xA_0000 - EBDA_START, MEM_RESERVED),
        (0xF_0000, 0x1_0000, MEM_RESERVED),
        (0x10_0000, u64::MAX, MEM_USABLE),
    ];
    regions
        .iter()
        .filter(|&&(base, _, _)| base < ram)
        .map(|&(base, len, ty)| (base, len.min(ram - base), ty))
        .collect()
}

/// Rejects command lines the protocols cannot pass: they are NUL-terminated strings.
pub(crate) fn check_cmdline(cmdline: &str) -> Result<(), String> {
    if cmdline.as_bytes().contains(&0) {
        return Err(String::from("the command line contains a NUL byte"));
    }
    Ok(())
}

pub(crate) fn align_up(v: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    Some(v.checked_add(align - 1)? & !(align - 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vcpu::CpuMode;

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

    #[test]
    fn auto_detection_and_forced_formats() {
        // A bzImage: HdrS at 0x202 and 55 AA at 0x1FE.
        let mut bz = alloc::vec![0u8; 0x1400];
        bz[0x1F1] = 1; // setup_sects
        bz[0x1FE..0x200].copy_from_slice(&[0x55, 0xAA]);
        bz[0x201] = 0x6A;
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x206..0x208].copy_from_slice(&0x020Fu16.to_le_bytes());
        bz[0x211] = 1; // LOADED_HIGH
        bz[0x234] = 1; // relocatable
        bz[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes());
        bz[0x236] = 1; // XLF_KERNEL_64
        bz[0x238..0x23C].copy_from_slice(&255u32.to_le_bytes());
        bz[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes());
        bz[0x260..0x264].copy_from_slice(&0x10_0000u32.to_le_bytes());
        let p = plan_with(&bz, ImageFormat::Auto, "quiet", &[], 64 * MIB).unwrap();
        assert_eq!(p.start.rip, 0x100_0200);
        assert_eq!(p.page_tables.as_ref().unwrap().len(), 6);
        assert!(plan(&bz, 64 * MIB).is_ok());
        // Forced tiny: a bzImage is neither an ELF nor a 512-byte boot sector.
        assert!(plan_with(&bz, ImageFormat::Tiny, "", &[], 64 * MIB)
            .unwrap_err()
            .contains("unrecognised guest image"));
        // A Multiboot header inside an ELF32: Multiboot wins over the tiny rules.
        let mut payload = Vec::new();
        for v in [0x1BAD_B002u32, 0, 0u32.wrapping_sub(0x1BAD_B002)] {
            payload.extend_from_slice(&v.to_le_bytes());
        }
        let img = elf(false, 3, 0x10_0000, 0x10_0000, &payload, 0x1000);
        let p = plan(&img, 4 * MIB).unwrap();
        assert_eq!(p.start.regs.rax, 0x2BAD_B002);
        assert!(p.gdtr.is_some());
        let p = plan_with(&img, ImageFormat::Tiny, "", &[], 4 * MIB).unwrap();
        assert_eq!(p.start.regs.rax, 0);
        assert!(p.gdtr.is_none() && p.extra.is_empty());
        // Forcing a format the image does not have.
        assert!(plan_with(&img, ImageFormat::Linux, "", &[], 4 * MIB)
            .unwrap_err()
            .contains("not a Linux bzImage"));
        let tiny = elf(false, 3, 0x10_0000, 0x10_0000, b"abcd", 4);
        assert!(plan_with(&tiny, ImageFormat::Multiboot, "", &[], 4 * MIB)
            .unwrap_err()
            .contains("no Multiboot header"));
        // Tiny guests take no command line or modules.
        assert!(plan_with(&tiny, ImageFormat::Auto, "x", &[], 4 * MIB)
            .unwrap_err()
            .contains("no command line or modules"));
        let m = Module {
            data: b"m",
            cmdline: "",
        };
        assert!(plan_with(&tiny, ImageFormat::Tiny, "", &[m], 4 * MIB)
            .unwrap_err()
            .contains("no command line or modules"));
    }

    #[test]
    fn min_ram_is_the_least_ram_that_plans() {
        let img = elf(true, 62, 0x30_0000, 0x30_0000, b"x", 0x1234);
        let req = BootRequest {
            image: &img,
            image_path: "",
            format: ImageFormat::Auto,
            cmdline: "",
            modules: &[],
            ram: 0,
        };
        // The segment ends at 0x301234: the next page boundary.
        assert_eq!(min_ram(&req), Ok(0x30_2000));
        assert!(plan(&img, 0x30_2000).is_ok());
        assert!(plan(&img, 0x30_1000).is_err());
        let mut s = [0u8; 512];
        s[510..].copy_from_slice(&[0x55, 0xAA]);
        let req = BootRequest { image: &s, ..req };
        assert_eq!(min_ram(&req), Ok(0x8000));
        // No amount of RAM helps a broken image: the planner's own error.
        let req = BootRequest {
            image: b"hello",
            ..req
        };
        assert!(min_ram(&req).unwrap_err().contains("unrecognised"));
    }

    #[test]
    fn identity_tables_map_each_gib() {
        let t = identity_tables(4);
        assert_eq!(t.len(), 6);
        assert_eq!(t[0][0], 0x2003);
        assert!(t[0][1..].iter().all(|&e| e == 0));
        for g in 0..4u64 {
            assert_eq!(t[1][g as usize], (0x3000 + g * 0x1000) | 3);
            assert_eq!(t[2 + g as usize][0], (g << 30) | 0x83);
            assert_eq!(t[2 + g as usize][511], ((g << 30) + (511 << 21)) | 0x83);
        }
        assert!(t[1][4..].iter().all(|&e| e == 0));
    }

    #[test]
    fn memory_map_is_clipped_to_ram() {
        assert_eq!(
            pc_memory_map(64 * MIB),
            alloc::vec![
                (0, 0x9FC00, 1),
                (0x9FC00, 0x400, 2),
                (0xF0000, 0x10000, 2),
                (0x10_0000, 63 * MIB, 1)
            ]
        );
        assert_eq!(pc_memory_map(0x9_0000), alloc::vec![(0, 0x9_0000, 1)]);
        assert_eq!(
            pc_memory_map(0xF_8000),
            alloc::vec![(0, 0x9FC00, 1), (0x9FC00, 0x400, 2), (0xF0000, 0x8000, 2)]
        );
    }

    #[test]
    fn boot_gdt_descriptors() {
        let g = boot_gdt(true);
        assert_eq!(&g[..16], &[0; 16]);
        // 64-bit code: L set, D clear; data: flat read/write.
        assert_eq!(
            u64::from_le_bytes(g[16..24].try_into().unwrap()) >> 52 & 0xF,
            0xA
        );
        assert_eq!(
            u64::from_le_bytes(g[24..32].try_into().unwrap()),
            0x00CF_9300_0000_FFFF
        );
        let g = boot_gdt(false);
        assert_eq!(
            u64::from_le_bytes(g[16..24].try_into().unwrap()),
            0x00CF_9B00_0000_FFFF
        );
    }
}
