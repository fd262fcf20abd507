//! Linux bzImage kernels, started at their 64-bit entry point as the x86 boot protocol
//! describes it (Documentation/arch/x86/boot.rst, cited as "boot.rst" with its section
//! names; the zero page layout is Documentation/arch/x86/zero-page.rst).
//!
//! The real-mode setup code (the first `setup_sects + 1` sectors of the file) never
//! runs: the loader does its job instead, filling the zero page (`struct boot_params`)
//! with a copy of the image's setup header, the command line pointer, the initrd and an
//! E820 memory map, and enters the protected-mode kernel at load address + 0x200
//! ("64-bit Boot Protocol"). Guest-physical layout:
//!
//! | guest-physical | contents |
//! | --- | --- |
//! | 0x0000..0x1000 | left zero (real-mode IVT, BIOS data area: no EBDA pointer) |
//! | 0x1000..0x7000 | page tables: PML4, PDPT, 4 page directories identity-mapping 4 GiB with 2 MiB pages |
//! | 0x7000..0x8000 | zero page (`boot_params`), RSI at entry |
//! | 0x8000..0x8020 | GDT: 0x10 64-bit code, 0x18 data (`__BOOT_CS`/`__BOOT_DS`) |
//! | 0x8020..0x10000 | stack, RSP = 0x10000 at entry |
//! | 0x20000.. | command line, NUL-terminated (at most 64 KiB) |
//! | `pref_address` (16 MiB for x86-64 kernels) | the protected-mode kernel, `init_size` bytes reserved from its runtime start |
//! | below min(RAM, `initrd_addr_max` + 1), 4 KiB aligned | the initrd (`modules[0]`) |
//!
//! Everything below 1 MiB except the kernel's own needs is untouched, and the E820
//! map reports it usable: the kernel copies the zero page and command line early and
//! builds its own page tables and GDT, after which these structures are garbage.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use vcpu::{CpuMode, GuestRegisters, StartState};

use crate::{
    align_up, boot_gdt, check_cmdline, check_fits, identity_tables, pc_memory_map, LoadPlan,
    Module, Segment, PAGE_TABLES_GPA,
};

pub const ZERO_PAGE_GPA: u64 = 0x7000;
pub const GDT_GPA: u64 = 0x8000;
pub const STACK_TOP: u64 = 0x1_0000;
pub const CMDLINE_GPA: u64 = 0x2_0000;
/// Room for the command line (with its NUL) at [`CMDLINE_GPA`].
const CMDLINE_AREA: u64 = 0x1_0000;
/// The page tables map 4 GiB: 2 + 4 pages from [`PAGE_TABLES_GPA`].
const MAPPED_GIB: usize = 4;
const _: () = assert!(PAGE_TABLES_GPA + (2 + MAPPED_GIB as u64) * 4096 <= ZERO_PAGE_GPA);
const _: () = assert!(GDT_GPA + 32 <= STACK_TOP && STACK_TOP <= CMDLINE_GPA);
/// The protected-mode kernel is never loaded below 1 MiB (boot.rst "Loading The Rest
/// of The Kernel": bzImage kernels load at 0x100000 or above).
const ONE_MIB: u64 = 0x10_0000;

// Setup header fields: offsets into the image and the zero page alike (boot.rst "The
// Real-Mode Kernel Header"; the zero page carries the header at the same offset).
pub const HDR_START: usize = 0x1F1;
pub const SETUP_SECTS: usize = 0x1F1;
pub const SYSSIZE: usize = 0x1F4;
pub const BOOT_FLAG: usize = 0x1FE;
/// The second byte of the `jump` instruction: the header ends at 0x202 + this.
pub const JUMP_OFFSET: usize = 0x201;
pub const HEADER: usize = 0x202;
pub const VERSION: usize = 0x206;
pub const TYPE_OF_LOADER: usize = 0x210;
pub const LOADFLAGS: usize = 0x211;
pub const CODE32_START: usize = 0x214;
pub const RAMDISK_IMAGE: usize = 0x218;
pub const RAMDISK_SIZE: usize = 0x21C;
pub const HEAP_END_PTR: usize = 0x224;
pub const CMD_LINE_PTR: usize = 0x228;
pub const INITRD_ADDR_MAX: usize = 0x22C;
pub const KERNEL_ALIGNMENT: usize = 0x230;
pub const RELOCATABLE_KERNEL: usize = 0x234;
pub const XLOADFLAGS: usize = 0x236;
pub const CMDLINE_SIZE: usize = 0x238;
pub const SETUP_DATA: usize = 0x250;
pub const PREF_ADDRESS: usize = 0x258;
pub const INIT_SIZE: usize = 0x260;
/// The last field this loader reads ends here; a header ending earlier is malformed.
const HDR_MIN_END: usize = INIT_SIZE + 4;
/// `edd_mbr_sig_buffer` follows the header in `boot_params` (zero-page.rst).
const HDR_MAX_END: usize = 0x290;

// Zero-page fields outside the setup header (zero-page.rst).
pub const EXT_RAMDISK_IMAGE: usize = 0x0C0;
pub const EXT_RAMDISK_SIZE: usize = 0x0C4;
pub const EXT_CMD_LINE_PTR: usize = 0x0C8;
pub const E820_ENTRIES: usize = 0x1E8;
pub const E820_TABLE: usize = 0x2D0;
/// `struct boot_e820_entry`: addr u64, size u64, type u32, packed.
pub const E820_ENTRY: usize = 20;
const E820_MAX: usize = 128;

/// "loadflags" bits (boot.rst): the protected-mode code loads at 0x100000 (a bzImage,
/// not a zImage); the loader has set heap_end_ptr.
const LOADED_HIGH: u8 = 1 << 0;
const CAN_USE_HEAP: u8 = 1 << 7;
/// "xloadflags" bit 0: the kernel has the legacy 64-bit entry point at 0x200.
const XLF_KERNEL_64: u16 = 1 << 0;
/// The 64-bit entry point is this far into the protected-mode kernel.
const ENTRY_64_OFFSET: u64 = 0x200;
/// Boot protocol 2.12 introduced xloadflags, which says whether the 64-bit entry
/// exists.
const MIN_VERSION: u16 = 0x020C;
/// "type_of_loader": 0xFF means undefined (no assigned boot loader ID).
const LOADER_UNDEFINED: u8 = 0xFF;
/// heap_end_ptr as bootloaders set it for setup code at 0x90000 (QEMU's value). The
/// setup code does not run on the 64-bit path; the field is set for completeness.
const HEAP_END: u16 = 0xFE00;
/// initrd_addr_max before protocol 2.03 (boot.rst); never needed at 2.12+, but a
/// zero field would otherwise mean "nowhere".
const DEFAULT_INITRD_ADDR_MAX: u32 = 0x37FF_FFFF;

fn rd16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}
fn rd32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn rd64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}
fn wr16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
fn wr32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// A bzImage carries "HdrS" at 0x202 and the boot sector signature 0xAA55 at 0x1FE
/// (boot.rst "Details of Header Fields": header, boot_flag).
pub fn is_bzimage(image: &[u8]) -> bool {
    image.len() >= VERSION && image[HEADER..VERSION] == *b"HdrS" && rd16(image, BOOT_FLAG) == 0xAA55
}

/// Plans a 64-bit boot of bzImage `image` with `cmdline` and the initrd `modules[0]`.
pub fn plan<'a>(
    image: &'a [u8],
    cmdline: &str,
    modules: &[Module<'a>],
    ram: u64,
) -> Result<LoadPlan<'a>, String> {
    if !is_bzimage(image) {
        return Err(String::from(
            "not a Linux bzImage: no \"HdrS\" setup header at 0x202 with boot flag 0xAA55 at 0x1FE",
        ));
    }
    if image.len() < HDR_MIN_END {
        return Err(format!(
            "truncated bzImage: {} bytes, shorter than its setup header",
            image.len()
        ));
    }
    let version = rd16(image, VERSION);
    if version < MIN_VERSION {
        return Err(format!(
            "Linux boot protocol {}.{:02} is too old: the 64-bit entry needs 2.12 or later",
            version >> 8,
            version & 0xFF
        ));
    }
    let hdr_end = HEADER + image[JUMP_OFFSET] as usize;
    if !(HDR_MIN_END..=HDR_MAX_END).contains(&hdr_end) {
        return Err(format!(
            "malformed bzImage: the setup header would end at {hdr_end:#x} (jump offset at 0x201)"
        ));
    }
    if rd16(image, XLOADFLAGS) & XLF_KERNEL_64 == 0 {
        return Err(String::from(
            "this kernel has no 64-bit entry point (xloadflags XLF_KERNEL_64 clear)",
        ));
    }
    if image[LOADFLAGS] & LOADED_HIGH == 0 {
        return Err(String::from(
            "not a bzImage: loadflags LOADED_HIGH is clear (a zImage loads at 0x10000)",
        ));
    }
    if modules.len() > 1 {
        return Err(format!(
            "Linux takes one initrd (the first module), not {} modules",
            modules.len()
        ));
    }
    check_cmdline(cmdline)?;

    // The protected-mode kernel is the rest of the file after the setup sectors
    // (boot.rst "Loading The Rest of The Kernel"), as QEMU's `-kernel` loads it.
    // syssize (2.04+, in 16-byte paragraphs) is not a bound on the file: build tools
    // round it up, so it may run up to 15 bytes past the end of a good image, and
    // QEMU never reads it. The one hard need is the 64-bit entry point inside the
    // file.
    let setup_sects = match image[SETUP_SECTS] {
        0 => 4,
        n => n as usize,
    };
    let kernel_off = (setup_sects + 1) * 512;
    let kernel = image.get(kernel_off..).unwrap_or(&[]);
    if kernel.len() as u64 <= ENTRY_64_OFFSET {
        return Err(format!(
            "truncated bzImage: {} bytes of protected-mode kernel after {setup_sects} setup sectors (the file has {}), too short to hold the 64-bit entry point at {ENTRY_64_OFFSET:#x}",
            kernel.len(),
            image.len()
        ));
    }

    // Where the kernel goes and where it runs (boot.rst "init_size"): a relocatable
    // kernel runs at its load address rounded up to kernel_alignment but never below
    // pref_address, a non-relocatable one at pref_address. Loading a relocatable
    // kernel below pref_address therefore saves no memory; it is loaded at
    // pref_address itself, as boot.rst "pref_address" asks of a relocating loader.
    let relocatable = image[RELOCATABLE_KERNEL] != 0;
    let alignment = rd32(image, KERNEL_ALIGNMENT) as u64;
    if relocatable && !alignment.is_power_of_two() {
        return Err(format!(
            "malformed bzImage: kernel_alignment {alignment:#x} is not a power of two"
        ));
    }
    let pref = rd64(image, PREF_ADDRESS);
    let load = if pref >= ONE_MIB {
        pref
    } else if relocatable {
        align_up(ONE_MIB, alignment).unwrap_or(u64::MAX)
    } else {
        ONE_MIB
    };
    let runtime_start = if relocatable {
        align_up(load.max(pref), alignment).unwrap_or(u64::MAX)
    } else {
        pref.max(load)
    };
    let init_size = rd32(image, INIT_SIZE) as u64;
    let kernel_end = match (
        load.checked_add(kernel.len() as u64),
        runtime_start.checked_add(init_size),
    ) {
        (Some(a), Some(b)) if a.max(b) <= ram && a.max(b) <= 1 << 32 => a.max(b),
        _ => {
            return Err(format!(
                "the kernel does not fit in the VM's {} KiB of RAM: it loads at {load:#x} ({} bytes) and needs {init_size:#x} bytes (init_size) from {runtime_start:#x}",
                ram / 1024,
                kernel.len()
            ))
        }
    };

    // Command line (boot.rst "cmdline_size": the maximum length without the NUL).
    let cmdline_size = rd32(image, CMDLINE_SIZE) as u64;
    let len = cmdline.len() as u64;
    if len > cmdline_size || len + 1 > CMDLINE_AREA {
        return Err(format!(
            "the command line is {len} bytes; this kernel accepts at most {}",
            cmdline_size.min(CMDLINE_AREA - 1)
        ));
    }
    check_fits(0, CMDLINE_GPA + len + 1, ram)?;

    let mut segments = alloc::vec![Segment {
        gpa: load,
        data: kernel,
        mem_len: kernel.len() as u64,
    }];

    // The initrd goes as high as allowed (boot.rst "initrd_addr_max": the highest
    // address it may occupy), page-aligned, clear of the kernel's runtime area.
    let (initrd_addr, initrd_size) = match modules.first() {
        Some(m) if !m.data.is_empty() => {
            let size = m.data.len() as u64;
            let max = match rd32(image, INITRD_ADDR_MAX) {
                0 => DEFAULT_INITRD_ADDR_MAX,
                m => m,
            };
            let top = ram.min(max as u64 + 1);
            match top.checked_sub(size).map(|a| a & !0xFFF) {
                Some(addr) if addr >= kernel_end => {
                    segments.push(Segment {
                        gpa: addr,
                        data: m.data,
                        mem_len: size,
                    });
                    (addr, size)
                }
                _ => {
                    return Err(format!(
                        "the initrd ({size} bytes) does not fit between the kernel's end at {kernel_end:#x} and {top:#x} (RAM {} KiB, initrd_addr_max {max:#x})",
                        ram / 1024
                    ))
                }
            }
        }
        _ => (0, 0),
    };

    // The zero page: the image's setup header at its own offset, then what the loader
    // must fill in (boot.rst "Details of Header Fields", fields marked "write").
    let mut zp = alloc::vec![0u8; 4096];
    zp[HDR_START..hdr_end].copy_from_slice(&image[HDR_START..hdr_end]);
    zp[TYPE_OF_LOADER] = LOADER_UNDEFINED;
    zp[LOADFLAGS] |= CAN_USE_HEAP;
    wr16(&mut zp, HEAP_END_PTR, HEAP_END);
    // "code32_start": a loader that loads a kernel at a non-standard address sets it.
    wr32(&mut zp, CODE32_START, load as u32);
    wr32(&mut zp, CMD_LINE_PTR, CMDLINE_GPA as u32);
    wr32(&mut zp, RAMDISK_IMAGE, initrd_addr as u32);
    wr32(&mut zp, RAMDISK_SIZE, initrd_size as u32);
    // "setup_data" is the loader's linked list of extra boot data; there is none.
    zp[SETUP_DATA..SETUP_DATA + 8].fill(0);
    // Everything lies below 4 GiB: the high halves stay zero.
    wr32(&mut zp, EXT_RAMDISK_IMAGE, 0);
    wr32(&mut zp, EXT_RAMDISK_SIZE, 0);
    wr32(&mut zp, EXT_CMD_LINE_PTR, 0);
    let e820 = pc_memory_map(ram);
    debug_assert!(e820.len() <= E820_MAX);
    zp[E820_ENTRIES] = e820.len() as u8;
    for (i, &(base, len, ty)) in e820.iter().enumerate() {
        let e = E820_TABLE + i * E820_ENTRY;
        zp[e..e + 8].copy_from_slice(&base.to_le_bytes());
        zp[e + 8..e + 16].copy_from_slice(&len.to_le_bytes());
        wr32(&mut zp, e + 16, ty);
    }

    let mut cmd = Vec::with_capacity(cmdline.len() + 1);
    cmd.extend_from_slice(cmdline.as_bytes());
    cmd.push(0);

    Ok(LoadPlan {
        segments,
        // boot.rst "64-bit Boot Protocol": long mode with paging, the kernel, zero page
        // and command line identity-mapped, __BOOT_CS/__BOOT_DS loaded, interrupts
        // off, RSI = boot_params.
        start: StartState {
            mode: CpuMode::Long,
            rip: load + ENTRY_64_OFFSET,
            rsp: STACK_TOP,
            cr3: PAGE_TABLES_GPA,
            regs: GuestRegisters {
                rsi: ZERO_PAGE_GPA,
                ..Default::default()
            },
            gdtr: None,
        },
        page_tables: Some(identity_tables(MAPPED_GIB)),
        extra: alloc::vec![
            (ZERO_PAGE_GPA, zp),
            (GDT_GPA, boot_gdt(true).to_vec()),
            (CMDLINE_GPA, cmd),
        ],
        gdtr: Some((GDT_GPA, 31)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{plan_with, ImageFormat};

    const MIB: u64 = 1 << 20;

    /// Header fields of the synthetic bzImage, defaults like Debian's 6.1 kernel.
    struct Fake {
        setup_sects: u8,
        version: u16,
        loadflags: u8,
        xloadflags: u16,
        relocatable: u8,
        alignment: u32,
        pref_address: u64,
        init_size: u32,
        cmdline_size: u32,
        initrd_addr_max: u32,
        kernel_len: usize,
    }

    impl Default for Fake {
        fn default() -> Self {
            Fake {
                setup_sects: 27,
                version: 0x020F,
                loadflags: LOADED_HIGH,
                xloadflags: 0x7F,
                relocatable: 1,
                alignment: 0x20_0000,
                pref_address: 0x100_0000,
                init_size: 0x200_0000,
                cmdline_size: 2047,
                initrd_addr_max: 0x7FFF_FFFF,
                kernel_len: 0x1000,
            }
        }
    }

    impl Fake {
        fn build(&self) -> Vec<u8> {
            let sects = if self.setup_sects == 0 {
                4
            } else {
                self.setup_sects as usize
            };
            let mut img = alloc::vec![0u8; (sects + 1) * 512 + self.kernel_len];
            img[SETUP_SECTS] = self.setup_sects;
            wr32(&mut img, SYSSIZE, (self.kernel_len / 16) as u32);
            wr16(&mut img, 0x1FA, 0xFFFF); // vid_mode "normal"
            wr16(&mut img, BOOT_FLAG, 0xAA55);
            img[0x200] = 0xEB;
            img[JUMP_OFFSET] = 0x6A; // header ends at 0x26C (kernel_info_offset)
            img[HEADER..VERSION].copy_from_slice(b"HdrS");
            wr16(&mut img, VERSION, self.version);
            img[LOADFLAGS] = self.loadflags;
            wr32(&mut img, CODE32_START, 0x10_0000);
            wr32(&mut img, INITRD_ADDR_MAX, self.initrd_addr_max);
            wr32(&mut img, KERNEL_ALIGNMENT, self.alignment);
            img[RELOCATABLE_KERNEL] = self.relocatable;
            img[0x235] = 21; // min_alignment
            wr16(&mut img, XLOADFLAGS, self.xloadflags);
            wr32(&mut img, CMDLINE_SIZE, self.cmdline_size);
            img[PREF_ADDRESS..PREF_ADDRESS + 8].copy_from_slice(&self.pref_address.to_le_bytes());
            wr32(&mut img, INIT_SIZE, self.init_size);
            wr32(&mut img, 0x268, 0x1234); // kernel_info_offset, copied verbatim
            img[SETUP_DATA] = 0x55; // garbage the loader must not pass on
            img[0x26C] = 0xEE; // beyond the header: must not be copied
            let k = (sects + 1) * 512;
            img[k + 0x200] = 0x48; // the 64-bit entry's first byte
            img
        }
    }

    fn linux<'a>(
        img: &'a [u8],
        cmdline: &str,
        initrd: Option<&'a [u8]>,
        ram: u64,
    ) -> Result<LoadPlan<'a>, String> {
        let mods: Vec<Module<'a>> = initrd
            .map(|d| Module {
                data: d,
                cmdline: "",
            })
            .into_iter()
            .collect();
        plan_with(img, ImageFormat::Auto, cmdline, &mods, ram)
    }

    fn zero_page<'p>(p: &'p LoadPlan<'_>) -> &'p [u8] {
        let (gpa, zp) = &p.extra[0];
        assert_eq!(*gpa, ZERO_PAGE_GPA);
        zp
    }

    /// Walks the plan's page tables (at PAGE_TABLES_GPA) like the MMU does.
    fn translate(p: &LoadPlan<'_>, va: u64) -> Option<u64> {
        let t = p.page_tables.as_ref()?;
        let page = |pa: u64| &t[((pa & !0xFFF) - PAGE_TABLES_GPA) as usize / 4096];
        assert_eq!(p.start.cr3, PAGE_TABLES_GPA);
        let pml4e = page(p.start.cr3)[(va >> 39 & 511) as usize];
        if pml4e & 1 == 0 {
            return None;
        }
        let pdpte = page(pml4e & 0xF_FFFF_FFFF_F000)[(va >> 30 & 511) as usize];
        if pdpte & 1 == 0 {
            return None;
        }
        let pde = page(pdpte & 0xF_FFFF_FFFF_F000)[(va >> 21 & 511) as usize];
        if pde & 1 == 0 || pde & 0x80 == 0 || pde & 2 == 0 {
            return None;
        }
        Some((pde & 0xF_FFFF_FFE0_0000) | (va & 0x1F_FFFF))
    }

    #[test]
    fn detects_bzimages() {
        let img = Fake::default().build();
        assert!(is_bzimage(&img));
        let mut not = img.clone();
        not[BOOT_FLAG] = 0;
        assert!(!is_bzimage(&not));
        let mut not = img.clone();
        not[HEADER] = b'X';
        assert!(!is_bzimage(&not));
        assert!(!is_bzimage(&img[..0x204]));
    }

    #[test]
    fn loads_at_pref_address_and_enters_at_0x200() {
        let f = Fake::default();
        let img = f.build();
        let p = linux(&img, "console=ttyS0", None, 96 * MIB).unwrap();
        let k = 28 * 512;
        assert_eq!(
            p.segments,
            alloc::vec![Segment {
                gpa: 0x100_0000,
                data: &img[k..],
                mem_len: 0x1000
            }]
        );
        assert_eq!(p.start.mode, CpuMode::Long);
        assert_eq!(p.start.rip, 0x100_0200);
        assert_eq!(p.start.regs.rsi, ZERO_PAGE_GPA);
        assert_eq!(p.start.rsp, STACK_TOP);
        assert_eq!(p.start.regs.rax, 0);
        assert_eq!(p.gdtr, Some((GDT_GPA, 31)));
        let gdt = &p.extra[1];
        assert_eq!(gdt.0, GDT_GPA);
        assert_eq!(rd64(&gdt.1, 0x10), 0x00AF_9B00_0000_FFFF);
        assert_eq!(rd64(&gdt.1, 0x18), 0x00CF_9300_0000_FFFF);
        assert_eq!(p.extra[2], (CMDLINE_GPA, b"console=ttyS0\0".to_vec()));
        // setup_sects 0 means 4.
        let img = Fake {
            setup_sects: 0,
            ..Default::default()
        }
        .build();
        let p = linux(&img, "", None, 96 * MIB).unwrap();
        assert_eq!(p.segments[0].data, &img[5 * 512..]);
    }

    #[test]
    fn zero_page_fields() {
        let img = Fake::default().build();
        let initrd = [0x30u8; 10_000];
        let ram = 96 * MIB;
        let p = linux(&img, "root=/dev/ram0", Some(&initrd), ram).unwrap();
        let zp = zero_page(&p);
        assert_eq!(zp.len(), 4096);
        // The setup header is a copy, up to 0x202 + the jump offset, nothing beyond.
        assert_eq!(zp[SETUP_SECTS], 27);
        assert_eq!(&zp[HEADER..VERSION], b"HdrS");
        assert_eq!(rd16(zp, VERSION), 0x020F);
        assert_eq!(rd16(zp, 0x1FA), 0xFFFF);
        assert_eq!(rd32(zp, 0x268), 0x1234);
        assert_eq!(zp[0x26C], 0);
        assert!(zp[..HDR_START]
            .iter()
            .enumerate()
            .all(|(i, &b)| b == 0 || i == E820_ENTRIES));
        // Loader-written fields.
        assert_eq!(zp[TYPE_OF_LOADER], 0xFF);
        assert_eq!(zp[LOADFLAGS], LOADED_HIGH | CAN_USE_HEAP);
        assert_eq!(rd16(zp, HEAP_END_PTR), 0xFE00);
        assert_eq!(rd32(zp, CODE32_START), 0x100_0000);
        assert_eq!(rd32(zp, CMD_LINE_PTR), 0x2_0000);
        assert_eq!(rd64(zp, SETUP_DATA), 0);
        assert_eq!(rd32(zp, EXT_CMD_LINE_PTR), 0);
        assert_eq!(rd32(zp, EXT_RAMDISK_IMAGE), 0);
        assert_eq!(rd32(zp, EXT_RAMDISK_SIZE), 0);
        // The initrd: at the top of RAM, page-aligned down.
        let addr = (ram - 10_000) & !0xFFF;
        assert_eq!(rd32(zp, RAMDISK_IMAGE) as u64, addr);
        assert_eq!(rd32(zp, RAMDISK_SIZE), 10_000);
        assert_eq!(
            p.segments[1],
            Segment {
                gpa: addr,
                data: &initrd[..],
                mem_len: 10_000
            }
        );
        // E820.
        assert_eq!(zp[E820_ENTRIES], 4);
        let expect = [
            (0, 0x9FC00, 1),
            (0x9FC00, 0x400, 2),
            (0xF0000, 0x10000, 2),
            (0x10_0000, ram - 0x10_0000, 1),
        ];
        for (i, (base, len, ty)) in expect.into_iter().enumerate() {
            let e = E820_TABLE + i * E820_ENTRY;
            assert_eq!(
                (rd64(zp, e), rd64(zp, e + 8), rd32(zp, e + 16)),
                (base, len, ty)
            );
        }
        assert!(zp[E820_TABLE + 4 * E820_ENTRY..].iter().all(|&b| b == 0));
        // Without an initrd both fields are zero.
        let p = linux(&img, "", None, ram).unwrap();
        assert_eq!(rd32(zero_page(&p), RAMDISK_IMAGE), 0);
        assert_eq!(rd32(zero_page(&p), RAMDISK_SIZE), 0);
    }

    #[test]
    fn initrd_respects_initrd_addr_max() {
        let img = Fake {
            initrd_addr_max: 0x37FF_FFFF,
            ..Default::default()
        }
        .build();
        let initrd = [1u8; 0x1800];
        let p = linux(&img, "", Some(&initrd), 2048 * MIB).unwrap();
        let zp = zero_page(&p);
        assert_eq!(rd32(zp, RAMDISK_IMAGE), 0x3800_0000 - 0x2000);
        assert_eq!(zp[E820_ENTRIES], 4);
        assert_eq!(rd64(zp, E820_TABLE + 3 * E820_ENTRY + 8), 2047 * MIB);
    }

    #[test]
    fn page_tables_identity_map_the_first_4_gib() {
        let img = Fake::default().build();
        let initrd = [1u8; 4096];
        let p = linux(&img, "", Some(&initrd), 128 * MIB).unwrap();
        assert_eq!(p.page_tables.as_ref().unwrap().len(), 6);
        let initrd_gpa = p.segments[1].gpa;
        for va in [
            0,
            ZERO_PAGE_GPA,
            GDT_GPA,
            CMDLINE_GPA,
            p.start.rip,
            0x100_0000 + 0x200_0000 - 1,
            initrd_gpa,
            initrd_gpa + 4095,
            0x4000_0000,
            0xFEE0_0123,
            0xFFFF_FFFF,
        ] {
            assert_eq!(translate(&p, va), Some(va), "{va:#x}");
        }
        assert_eq!(translate(&p, 0x1_0000_0000), None);
    }

    /// syssize counts 16-byte paragraphs and build tools round it up, so it may
    /// reach past the end of a good image. QEMU's `-kernel` loads the rest of the file
    /// after the setup sectors and never reads syssize; so do we.
    #[test]
    fn syssize_rounded_up_past_the_end_of_the_file_is_accepted() {
        let f = Fake {
            kernel_len: 0x1000 - 5,
            ..Default::default()
        };
        let mut img = f.build();
        wr32(&mut img, SYSSIZE, f.kernel_len.div_ceil(16) as u32);
        let p = linux(&img, "", None, 96 * MIB).unwrap();
        assert_eq!(p.segments[0].data.len(), 0x1000 - 5);
        assert_eq!(p.segments[0].mem_len, 0x1000 - 5);
        // Even a syssize far beyond the file does not matter, as under QEMU.
        wr32(&mut img, SYSSIZE, u32::MAX);
        assert!(linux(&img, "", None, 96 * MIB).is_ok());
    }

    #[test]
    fn non_relocatable_and_low_pref_address() {
        // A relocatable kernel with no usable pref_address loads at the first aligned
        // address from 1 MiB.
        let img = Fake {
            pref_address: 0,
            alignment: 0x40_0000,
            ..Default::default()
        }
        .build();
        let p = linux(&img, "", None, 64 * MIB).unwrap();
        assert_eq!(p.segments[0].gpa, 0x40_0000);
        // Non-relocatable: pref_address, and it must fit there.
        let f = Fake {
            relocatable: 0,
            pref_address: 0x200_0000,
            ..Default::default()
        };
        let img = f.build();
        let p = linux(&img, "", None, 64 * MIB).unwrap();
        assert_eq!(p.segments[0].gpa, 0x200_0000);
        assert!(linux(&img, "", None, 48 * MIB)
            .unwrap_err()
            .contains("does not fit"));
    }

    #[test]
    fn errors() {
        let ram = 96 * MIB;
        let err = |f: Fake| {
            let img = f.build();
            linux(&img, "", None, ram).unwrap_err()
        };
        let e = plan_with(b"not a kernel", ImageFormat::Linux, "", &[], ram).unwrap_err();
        assert!(e.contains("not a Linux bzImage"), "{e}");
        assert!(err(Fake {
            version: 0x020B,
            ..Default::default()
        })
        .contains("2.11 is too old"));
        assert!(err(Fake {
            xloadflags: 0x7E,
            ..Default::default()
        })
        .contains("no 64-bit entry"));
        assert!(err(Fake {
            loadflags: 0,
            ..Default::default()
        })
        .contains("zImage"));
        assert!(err(Fake {
            alignment: 0x30_0000,
            ..Default::default()
        })
        .contains("kernel_alignment"));
        // Kernel (runtime start + init_size) beyond RAM.
        let img = Fake::default().build();
        let e = linux(&img, "", None, 40 * MIB).unwrap_err();
        assert!(e.contains("does not fit in the VM's 40960 KiB"), "{e}");
        // Truncated: below the header, or the 64-bit entry beyond the file.
        let e = plan_with(&img[..0x240], ImageFormat::Linux, "", &[], ram).unwrap_err();
        assert!(e.contains("truncated bzImage"), "{e}");
        let e = linux(&img[..28 * 512 + 0x200], "", None, ram).unwrap_err();
        assert!(e.contains("truncated bzImage"), "{e}");
        assert!(e.contains("64-bit entry point"), "{e}");
        assert!(linux(&img[..28 * 512 + 0x201], "", None, ram).is_ok());
        let mut bad = img.clone();
        bad[JUMP_OFFSET] = 0x20;
        assert!(linux(&bad, "", None, ram)
            .unwrap_err()
            .contains("setup header"));
        // Command line too long for cmdline_size.
        let img = Fake {
            cmdline_size: 8,
            ..Default::default()
        }
        .build();
        assert!(linux(&img, "12345678", None, ram).is_ok());
        let e = linux(&img, "123456789", None, ram).unwrap_err();
        assert!(e.contains("at most 8"), "{e}");
        // The initrd does not fit above the kernel (which reserves up to 48 MiB).
        let img = Fake::default().build();
        let initrd = alloc::vec![0u8; (17 * MIB) as usize];
        let e = linux(&img, "", Some(&initrd), 64 * MIB).unwrap_err();
        assert!(e.contains("initrd"), "{e}");
        assert!(linux(&img, "", Some(&initrd[..(16 * MIB) as usize]), 64 * MIB).is_ok());
        // More than one module.
        let m = Module {
            data: b"x",
            cmdline: "",
        };
        let e = plan_with(&img, ImageFormat::Auto, "", &[m.clone(), m], ram).unwrap_err();
        assert!(e.contains("one initrd"), "{e}");
    }

    /// Opt-in check against a real kernel (e.g. Debian's
    /// `/boot/vmlinuz-6.1.0-*-amd64`): set `HV_TEST_BZIMAGE` to its path. Without it
    /// the test does nothing, so the suite never depends on a kernel being present.
    #[test]
    fn real_bzimage_if_given() {
        let Some(path) = std::env::var_os("HV_TEST_BZIMAGE") else {
            return;
        };
        let img = std::fs::read(path).unwrap();
        let initrd = alloc::vec![0u8; 2 << 20];
        let ram = 128 * MIB;
        let p = linux(&img, "console=ttyS0 quiet", Some(&initrd), ram).unwrap();
        let zp = zero_page(&p);
        let load = p.segments[0].gpa;
        assert_eq!(load, rd64(&img, PREF_ADDRESS));
        assert_eq!(p.start.rip, load + 0x200);
        let runtime_end = load + rd32(&img, INIT_SIZE) as u64;
        assert!(p.segments[1].gpa >= runtime_end);
        assert_eq!(rd32(zp, RAMDISK_IMAGE) as u64, p.segments[1].gpa);
        assert_eq!(zp[TYPE_OF_LOADER], 0xFF);
        std::println!(
            "bzImage: protocol {:#x}, load {load:#x}, runtime end {runtime_end:#x}, initrd at {:#x}",
            rd16(zp, VERSION),
            p.segments[1].gpa
        );
    }
}
