//! `prot32`: a 32-bit protected-mode guest.
//!
//! Loaded from an ELF32 (EM_386) at 1 MiB and entered at `e_entry` with flat 4 GiB
//! code/data segments, paging and interrupts off. The hypervisor does not promise
//! a stack, so the guest sets ESP to its own 4 KiB `.bss` stack first.
//! All 32-bit assembly: xtask links it at 0x100000 as an x86_64 ELF (`link32.ld`)
//! and rewrites it as ELF32.
//!
//! Prints `prot32: hello from protected mode`, then CPUID leaf 0x4000_0000's
//! EBX/ECX/EDX as `prot32: hypervisor signature <12 chars>` (bytes outside
//! printable ASCII shown as `.`), then stops with `cli; hlt`.

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

// `guests` provides the panic handler the no_std binary needs.
#[cfg(target_os = "none")]
use guests as _;

#[cfg(target_os = "none")]
core::arch::global_asm!(
    r#"
    .pushsection .text.entry, "ax"
    .code32
    .global _start
_start:
    cli
    mov $.Lprot32_stack_top, %esp
    cld
    mov $.Lprot32_hello, %esi
    call .Lprot32_puts

    mov $.Lprot32_sig_prefix, %esi
    call .Lprot32_puts
    mov $0x40000000, %eax
    xor %ecx, %ecx
    cpuid
    mov %ebx, .Lprot32_sig
    mov %ecx, .Lprot32_sig + 4
    mov %edx, .Lprot32_sig + 8
    mov $.Lprot32_sig, %esi
    mov $12, %ecx
.Lprot32_sig_next:
    lodsb
    // Keep the line clean: signatures are often NUL-padded.
    cmp $0x20, %al
    jb .Lprot32_sig_dot
    cmp $0x7e, %al
    jbe .Lprot32_sig_put
.Lprot32_sig_dot:
    mov $0x2e, %al
.Lprot32_sig_put:
    call .Lprot32_putc
    loop .Lprot32_sig_next
    mov $0x0a, %al
    call .Lprot32_putc

.Lprot32_halt:
    cli
    hlt
    jmp .Lprot32_halt

// Prints the NUL-terminated string at ESI. Clobbers EAX, ESI.
.Lprot32_puts:
    lodsb
    test %al, %al
    jz .Lprot32_puts_end
    call .Lprot32_putc
    jmp .Lprot32_puts
.Lprot32_puts_end:
    ret

// Writes AL to COM1 once LSR bit 5 (THR empty) is set. Preserves all but flags.
.Lprot32_putc:
    push %edx
    push %eax
    mov $0x3fd, %dx
.Lprot32_putc_wait:
    in %dx, %al
    test $0x20, %al
    jz .Lprot32_putc_wait
    pop %eax
    mov $0x3f8, %dx
    out %al, %dx
    pop %edx
    ret
    .code64
    .popsection

    .pushsection .rodata.prot32, "a"
.Lprot32_hello:
    .asciz "prot32: hello from protected mode\n"
.Lprot32_sig_prefix:
    .asciz "prot32: hypervisor signature "
    .popsection

    .pushsection .bss.prot32, "aw", @nobits
    .balign 16
.Lprot32_sig:
    .skip 12
    .balign 16
    .skip 4096
.Lprot32_stack_top:
    .popsection
    "#,
    options(att_syntax)
);
