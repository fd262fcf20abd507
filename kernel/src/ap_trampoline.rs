//! The application processors' start-up code: a STARTUP IPI starts an AP in real mode
//! at `vector << 12` (SDM Vol. 3A 9.4.4, "MP Initialization Example"); this blob, copied
//! to a free page below 1 MiB, takes it through protected mode into long mode and calls
//! the kernel's AP entry on its own stack.
//!
//! The blob is position independent: in real mode it derives its base from CS, and
//! every later access is relative to that base (EBX/RBX). The boot processor fills the
//! parameter block at [`DATA`] before each STARTUP IPI: a temporary GDT (32-bit code,
//! data, 64-bit code), the far pointers of the two mode switches, a PML4 below 4 GiB
//! for the 32-bit CR3 load, EFER/CR0/CR4 as the boot processor has them, and the
//! kernel's CR3, stack, CPU index and entry point.

use core::arch::global_asm;

/// Where the parameter block starts in the page (after a 2-byte jump, 16-aligned).
pub const DATA: usize = 16;
/// Parameter block layout (offsets from [`DATA`]).
pub const D_GDT: usize = 0; // 4 descriptors
pub const D_GDTR: usize = 32; // u16 limit, u32 base (real-mode LGDT takes 24 bits)
pub const D_PM_PTR: usize = 40; // m16:32 far pointer to the 32-bit code
pub const D_LM_PTR: usize = 48; // m16:32 far pointer to the 64-bit code
pub const D_CR3_LOW: usize = 56; // PML4 below 4 GiB for the 32-bit MOV CR3
pub const D_EFER: usize = 64; // SCE/LME/NXE
pub const D_KERNEL_CR3: usize = 72;
pub const D_CR4: usize = 80;
pub const D_CR0: usize = 88;
pub const D_STACK: usize = 96;
pub const D_CPU: usize = 104;
pub const D_ENTRY: usize = 112;
pub const DATA_SIZE: usize = 120;

/// Temporary GDT selectors and descriptors (flat 4 GiB; SDM Vol. 3A 3.4.5).
pub const SEL_CODE32: u16 = 0x08;
pub const SEL_CODE64: u16 = 0x18;
pub const GDT: [u64; 4] = [
    0,
    0x00CF_9A00_0000_FFFF, // 32-bit code, DPL 0
    0x00CF_9200_0000_FFFF, // data, DPL 0
    0x00AF_9A00_0000_FFFF, // 64-bit code (L=1), DPL 0
];

// Far jumps through memory are spelled as bytes so the operand size is certain:
// 66 FF 2E disp16 is JMP m16:32 in 16-bit code; FF AB disp32 is JMP m16:32 [EBX+disp32]
// in 32-bit code.
global_asm!(
    ".section .text.hv_ap_trampoline,\"ax\",@progbits",
    ".code16",
    ".global hv_ap_trampoline_start",
    "hv_ap_trampoline_start:",
    "jmp 2f",
    ".balign 16",
    "hv_ap_trampoline_data:",
    ".skip {size}",
    "2:",
    "cli",
    "cld",
    "mov ax, cs",
    "mov ds, ax",
    "xor ebx, ebx",
    "mov bx, ax",
    "shl ebx, 4",
    "lgdt [{data} + {gdtr}]",
    "mov eax, cr0",
    "or eax, 1",
    "mov cr0, eax",
    ".byte 0x66, 0xFF, 0x2E",
    ".word {data} + {pm_ptr}",
    ".code32",
    ".global hv_ap_trampoline_pm",
    "hv_ap_trampoline_pm:",
    "mov ax, 0x10",
    "mov ds, ax",
    "mov es, ax",
    "mov ss, ax",
    "mov eax, cr4",
    "or eax, 0x20", // PAE
    "mov cr4, eax",
    "mov eax, [ebx + {data} + {cr3_low}]",
    "mov cr3, eax",
    "mov ecx, 0xC0000080", // IA32_EFER
    "mov eax, [ebx + {data} + {efer}]",
    "xor edx, edx",
    "wrmsr",
    "mov eax, cr0",
    "or eax, 0x80000001", // PG | PE: IA-32e mode, compatibility submode
    "mov cr0, eax",
    ".byte 0xFF, 0xAB",
    ".long {data} + {lm_ptr}",
    ".code64",
    ".global hv_ap_trampoline_lm",
    "hv_ap_trampoline_lm:",
    "mov ebx, ebx", // the upper half is undefined after the mode switch
    "mov rax, [rbx + {data} + {cr4}]",
    "mov cr4, rax",
    "mov rax, [rbx + {data} + {kernel_cr3}]",
    "mov cr3, rax",
    "mov rax, [rbx + {data} + {cr0}]",
    "mov cr0, rax",
    "mov rsp, [rbx + {data} + {stack}]",
    "mov rdi, [rbx + {data} + {cpu}]",
    "mov rax, [rbx + {data} + {entry}]",
    "call rax",
    "ud2",
    ".global hv_ap_trampoline_end",
    "hv_ap_trampoline_end:",
    ".text",
    size = const DATA_SIZE,
    data = const DATA,
    gdtr = const D_GDTR,
    pm_ptr = const D_PM_PTR,
    lm_ptr = const D_LM_PTR,
    cr3_low = const D_CR3_LOW,
    efer = const D_EFER,
    kernel_cr3 = const D_KERNEL_CR3,
    cr4 = const D_CR4,
    cr0 = const D_CR0,
    stack = const D_STACK,
    cpu = const D_CPU,
    entry = const D_ENTRY,
);

unsafe extern "C" {
    static hv_ap_trampoline_start: u8;
    static hv_ap_trampoline_data: u8;
    static hv_ap_trampoline_pm: u8;
    static hv_ap_trampoline_lm: u8;
    static hv_ap_trampoline_end: u8;
}

/// The blob and the offsets of its 32-bit and 64-bit entry points.
pub struct Blob {
    pub bytes: &'static [u8],
    pub pm_offset: u32,
    pub lm_offset: u32,
}

pub fn blob() -> Blob {
    let start = &raw const hv_ap_trampoline_start as usize;
    let data = &raw const hv_ap_trampoline_data as usize;
    let pm = &raw const hv_ap_trampoline_pm as usize;
    let lm = &raw const hv_ap_trampoline_lm as usize;
    let end = &raw const hv_ap_trampoline_end as usize;
    assert_eq!(data - start, DATA, "trampoline parameter block misplaced");
    assert!(end - start <= 4096, "trampoline larger than a page");
    Blob {
        // SAFETY: start..end is the assembled blob above, in the kernel's text, which
        // stays mapped and unchanged.
        bytes: unsafe { core::slice::from_raw_parts(start as *const u8, end - start) },
        pm_offset: (pm - start) as u32,
        lm_offset: (lm - start) as u32,
    }
}
