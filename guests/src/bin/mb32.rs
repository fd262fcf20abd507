//! `mb32`: a Multiboot v1 test kernel ("Multiboot Specification version 0.6.96").
//!
//! An ELF32 (EM_386) kernel linked at 1 MiB (`linkmb32.ld`) whose Multiboot header
//! (magic 0x1BADB002, flags 0x3: page-aligned modules and memory information) starts
//! the image. Any Multiboot loader may start it: the hypervisor's (format
//! `multiboot`), QEMU's `-kernel`, GRUB. It is entered in 32-bit protected mode,
//! paging off, flat segments, with EAX = 0x2BADB002 and EBX = the Multiboot
//! information structure (MBI); it reports what the loader handed it, probes the
//! QEMU devices a VM offers, and ends the way QEMU test kernels do, through
//! `isa-debug-exit`, so the same image is a check of the hypervisor's Multiboot
//! support and of its QEMU compatibility: plain QEMU must print the same lines.
//!
//! Prints on COM1 (each MBI field only when its MBI flag says it is valid, a
//! `mb32: no ...` line otherwise; strings from the MBI are shown with bytes outside
//! printable ASCII as `.` and cut at 200 characters):
//! ```text
//! mb32: multiboot magic ok                    (or: mb32: bad magic 0x<8 hex digits>)
//! mb32: mem_lower=<KiB> mem_upper=<KiB>
//! mb32: cmdline=<string>
//! mb32: modules=<n> first=<first module's string> size=<bytes>
//! mb32: module page-aligned=<0|1> sum=<byte sum of the first module, decimal>
//! mb32: mmap entries=<n> available=<KiB in type-1 entries>
//! mb32: fw_cfg signature=<4 chars>
//! mb32: fw_cfg ram=<MiB> MiB
//! mb32: fw_cfg cpus=<n>
//! ```
//! then writes 0x31 to the debug-exit port 0xF4 with a 32-bit `out`: QEMU exits with
//! status (0x31 << 1) | 1 = 99, the hypervisor stops the VM with that exit code.
//! With a bad magic EBX means nothing: the MBI lines are skipped, fw_cfg is still
//! probed, and the value written is 0x30 (status 97) so the run reads as failed.
//! Should anything resume it after the write, it parks with `cli; hlt`.
//!
//! All 32-bit assembly (the crate is compiled for x86_64; xtask rewrites the linked
//! ELF64 as ELF32, as for `prot32`). The helpers keep every register (`pushad`), so
//! the main line can hold the MBI address in EBP throughout.

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

// `guests` provides the panic handler the no_std binary needs.
#[cfg(target_os = "none")]
use guests as _;

#[cfg(target_os = "none")]
core::arch::global_asm!(
    r#"
    // The Multiboot header (spec 3.1.1): magic, flags, checksum with
    // magic + flags + checksum = 0 (mod 2^32). Flags: bit 0, modules page-aligned;
    // bit 1, mem_* and mmap_* wanted. No bit 16: the loader uses the ELF headers.
    .pushsection .multiboot, "a"
    .balign 4
    .global mb32_multiboot_header
mb32_multiboot_header:
    .long 0x1BADB002
    .long 0x00000003
    .long -(0x1BADB002 + 0x00000003)
    .popsection

    .pushsection .text.entry, "ax"
    .code32
    .global _start
_start:
    cli
    cld
    // The spec leaves ESP undefined: use our own stack before the first call.
    mov esp, offset .Lmb32_stack_top
    mov ebp, ebx
    cmp eax, 0x2BADB002
    je .Lmb32_magic_ok
    mov esi, offset .Lmb32_s_bad_magic
    call .Lmb32_puts
    call .Lmb32_puthex
    call .Lmb32_newline
    mov dword ptr [.Lmb32_exit_value], 0x30
    jmp .Lmb32_fw_cfg

.Lmb32_magic_ok:
    mov esi, offset .Lmb32_s_magic_ok
    call .Lmb32_puts

    // MBI flags bit 0: mem_lower (offset 4) and mem_upper (offset 8), in KiB.
    test dword ptr [ebp], 1 << 0
    jz .Lmb32_no_mem
    mov esi, offset .Lmb32_s_mem_lower
    call .Lmb32_puts
    mov eax, [ebp + 4]
    call .Lmb32_putdec
    mov esi, offset .Lmb32_s_mem_upper
    call .Lmb32_puts
    mov eax, [ebp + 8]
    call .Lmb32_putdec
    call .Lmb32_newline
    jmp .Lmb32_cmdline
.Lmb32_no_mem:
    mov esi, offset .Lmb32_s_no_mem
    call .Lmb32_puts

    // MBI flags bit 2: cmdline (offset 16), a physical address of a C string.
.Lmb32_cmdline:
    test dword ptr [ebp], 1 << 2
    jz .Lmb32_no_cmdline
    mov esi, offset .Lmb32_s_cmdline
    call .Lmb32_puts
    mov esi, [ebp + 16]
    call .Lmb32_puts_safe
    call .Lmb32_newline
    jmp .Lmb32_modules
.Lmb32_no_cmdline:
    mov esi, offset .Lmb32_s_no_cmdline
    call .Lmb32_puts

    // MBI flags bit 3: mods_count (offset 20), mods_addr (offset 24). A module
    // entry: mod_start, mod_end (exclusive), string, reserved.
.Lmb32_modules:
    test dword ptr [ebp], 1 << 3
    jz .Lmb32_no_modules
    mov esi, offset .Lmb32_s_modules
    call .Lmb32_puts
    mov eax, [ebp + 20]
    call .Lmb32_putdec
    test eax, eax
    jnz .Lmb32_first_module
    call .Lmb32_newline
    jmp .Lmb32_mmap
.Lmb32_first_module:
    mov edi, [ebp + 24]
    mov esi, offset .Lmb32_s_first
    call .Lmb32_puts
    mov esi, [edi + 8]
    call .Lmb32_puts_safe
    mov esi, offset .Lmb32_s_size
    call .Lmb32_puts
    mov eax, [edi + 4]
    sub eax, [edi]
    call .Lmb32_putdec
    call .Lmb32_newline
    // The data itself: header flag 0 asked for a page-aligned start, and the byte
    // sum shows the loader copied the file (not only sized it).
    mov esi, offset .Lmb32_s_aligned
    call .Lmb32_puts
    xor eax, eax
    test dword ptr [edi], 0xFFF
    setz al
    call .Lmb32_putdec
    mov esi, offset .Lmb32_s_sum
    call .Lmb32_puts
    mov esi, [edi]
    mov ecx, [edi + 4]
    sub ecx, esi
    xor edx, edx
    jecxz .Lmb32_sum_done
.Lmb32_sum_next:
    movzx eax, byte ptr [esi]
    add edx, eax
    inc esi
    dec ecx
    jnz .Lmb32_sum_next
.Lmb32_sum_done:
    mov eax, edx
    call .Lmb32_putdec
    call .Lmb32_newline
    jmp .Lmb32_mmap
.Lmb32_no_modules:
    mov esi, offset .Lmb32_s_no_modules
    call .Lmb32_puts

    // MBI flags bit 6: mmap_length (offset 44), mmap_addr (offset 48). Each entry
    // is size (not counting itself), base_addr u64, length u64, type u32; the next
    // entry starts size + 4 bytes further. Type 1 is available RAM.
.Lmb32_mmap:
    test dword ptr [ebp], 1 << 6
    jz .Lmb32_no_mmap
    mov esi, [ebp + 48]
    mov edi, esi
    add edi, [ebp + 44]
    xor ecx, ecx
    xor edx, edx
.Lmb32_mmap_next:
    cmp esi, edi
    jae .Lmb32_mmap_done
    inc ecx
    cmp dword ptr [esi + 20], 1
    jne .Lmb32_mmap_skip
    // length / 1024 from the two halves: (hi << 22) | (lo >> 10).
    mov eax, [esi + 12]
    shr eax, 10
    mov ebx, [esi + 16]
    shl ebx, 22
    or eax, ebx
    add edx, eax
.Lmb32_mmap_skip:
    mov eax, [esi]
    lea esi, [esi + eax + 4]
    jmp .Lmb32_mmap_next
.Lmb32_mmap_done:
    mov esi, offset .Lmb32_s_mmap
    call .Lmb32_puts
    mov eax, ecx
    call .Lmb32_putdec
    mov esi, offset .Lmb32_s_available
    call .Lmb32_puts
    mov eax, edx
    call .Lmb32_putdec
    call .Lmb32_newline
    jmp .Lmb32_fw_cfg
.Lmb32_no_mmap:
    mov esi, offset .Lmb32_s_no_mmap
    call .Lmb32_puts

    // fw_cfg (QEMU docs/specs/fw_cfg.rst): a 16-bit write of the key to 0x510
    // selects an item, each byte read from 0x511 returns its next byte.
.Lmb32_fw_cfg:
    xor eax, eax
    mov ecx, 4
    call .Lmb32_fw_cfg_read
    mov esi, offset .Lmb32_s_signature
    call .Lmb32_puts
    mov esi, offset .Lmb32_buf
    mov ecx, 4
    call .Lmb32_putn_safe
    call .Lmb32_newline

    // Key 3: RAM size in bytes, u64 little-endian; MiB = (hi << 12) | (lo >> 20).
    mov eax, 3
    mov ecx, 8
    call .Lmb32_fw_cfg_read
    mov esi, offset .Lmb32_s_ram
    call .Lmb32_puts
    mov eax, [.Lmb32_buf]
    shr eax, 20
    mov ebx, [.Lmb32_buf + 4]
    shl ebx, 12
    or eax, ebx
    call .Lmb32_putdec
    mov esi, offset .Lmb32_s_mib
    call .Lmb32_puts

    // Key 5: CPU count, u16 little-endian.
    mov eax, 5
    mov ecx, 2
    call .Lmb32_fw_cfg_read
    mov esi, offset .Lmb32_s_cpus
    call .Lmb32_puts
    movzx eax, word ptr [.Lmb32_buf]
    call .Lmb32_putdec
    call .Lmb32_newline

    // isa-debug-exit: QEMU exits with (value << 1) | 1.
    mov dx, 0xF4
    mov eax, [.Lmb32_exit_value]
    out dx, eax
.Lmb32_halt:
    cli
    hlt
    jmp .Lmb32_halt

// Selects fw_cfg item AX and reads its first ECX (1..=8) bytes into .Lmb32_buf.
.Lmb32_fw_cfg_read:
    pushad
    mov dx, 0x510
    out dx, ax
    mov dx, 0x511
    mov edi, offset .Lmb32_buf
.Lmb32_fw_cfg_next:
    in al, dx
    stosb
    loop .Lmb32_fw_cfg_next
    popad
    ret

// Prints the NUL-terminated string at ESI as is (our own strings).
.Lmb32_puts:
    pushad
.Lmb32_puts_next:
    lodsb
    test al, al
    jz .Lmb32_puts_end
    call .Lmb32_putc
    jmp .Lmb32_puts_next
.Lmb32_puts_end:
    popad
    ret

// Prints the NUL-terminated string at ESI from the loader: at most 200 bytes,
// anything outside printable ASCII as '.', so a bad pointer cannot flood the line
// or put control bytes on it.
.Lmb32_puts_safe:
    pushad
    mov ecx, 200
.Lmb32_puts_safe_next:
    lodsb
    test al, al
    jz .Lmb32_puts_safe_end
    call .Lmb32_putc_safe
    loop .Lmb32_puts_safe_next
.Lmb32_puts_safe_end:
    popad
    ret

// Prints ECX (> 0) bytes at ESI, unprintable ones as '.'.
.Lmb32_putn_safe:
    pushad
.Lmb32_putn_safe_next:
    lodsb
    call .Lmb32_putc_safe
    loop .Lmb32_putn_safe_next
    popad
    ret

// Prints EAX in decimal, unsigned.
.Lmb32_putdec:
    pushad
    mov ebx, 10
    xor ecx, ecx
.Lmb32_putdec_divide:
    xor edx, edx
    div ebx
    push edx
    inc ecx
    test eax, eax
    jnz .Lmb32_putdec_divide
.Lmb32_putdec_print:
    pop eax
    add al, 0x30
    call .Lmb32_putc
    loop .Lmb32_putdec_print
    popad
    ret

// Prints EAX as 8 hex digits.
.Lmb32_puthex:
    pushad
    mov edx, eax
    mov ecx, 8
.Lmb32_puthex_next:
    rol edx, 4
    mov eax, edx
    and eax, 0xF
    mov al, byte ptr [.Lmb32_hex_digits + eax]
    call .Lmb32_putc
    loop .Lmb32_puthex_next
    popad
    ret

.Lmb32_newline:
    push eax
    mov al, 0x0A
    call .Lmb32_putc
    pop eax
    ret

// AL, or '.' when it is not printable ASCII.
.Lmb32_putc_safe:
    push eax
    cmp al, 0x20
    jb .Lmb32_putc_safe_dot
    cmp al, 0x7E
    jbe .Lmb32_putc_safe_put
.Lmb32_putc_safe_dot:
    mov al, 0x2E
.Lmb32_putc_safe_put:
    call .Lmb32_putc
    pop eax
    ret

// Writes AL to COM1 once LSR bit 5 (transmit holding register empty) is set.
.Lmb32_putc:
    push edx
    push eax
    mov dx, 0x3FD
.Lmb32_putc_wait:
    in al, dx
    test al, 0x20
    jz .Lmb32_putc_wait
    pop eax
    mov dx, 0x3F8
    out dx, al
    pop edx
    ret
    .code64
    .popsection

    .pushsection .rodata.mb32, "a"
.Lmb32_hex_digits:
    .ascii "0123456789abcdef"
.Lmb32_s_magic_ok:
    .asciz "mb32: multiboot magic ok\n"
.Lmb32_s_bad_magic:
    .asciz "mb32: bad magic 0x"
.Lmb32_s_mem_lower:
    .asciz "mb32: mem_lower="
.Lmb32_s_mem_upper:
    .asciz " mem_upper="
.Lmb32_s_no_mem:
    .asciz "mb32: no memory info\n"
.Lmb32_s_cmdline:
    .asciz "mb32: cmdline="
.Lmb32_s_no_cmdline:
    .asciz "mb32: no cmdline\n"
.Lmb32_s_modules:
    .asciz "mb32: modules="
.Lmb32_s_first:
    .asciz " first="
.Lmb32_s_size:
    .asciz " size="
.Lmb32_s_aligned:
    .asciz "mb32: module page-aligned="
.Lmb32_s_sum:
    .asciz " sum="
.Lmb32_s_no_modules:
    .asciz "mb32: no modules\n"
.Lmb32_s_mmap:
    .asciz "mb32: mmap entries="
.Lmb32_s_available:
    .asciz " available="
.Lmb32_s_no_mmap:
    .asciz "mb32: no mmap\n"
.Lmb32_s_signature:
    .asciz "mb32: fw_cfg signature="
.Lmb32_s_ram:
    .asciz "mb32: fw_cfg ram="
.Lmb32_s_mib:
    .asciz " MiB\n"
.Lmb32_s_cpus:
    .asciz "mb32: fw_cfg cpus="
    .popsection

    .pushsection .data.mb32, "aw"
    .balign 4
.Lmb32_exit_value:
    .long 0x31
    .popsection

    .pushsection .bss.mb32, "aw", @nobits
    .balign 16
.Lmb32_buf:
    .skip 8
    .balign 16
    .skip 4096
.Lmb32_stack_top:
    .popsection
    "#
);
