//! `usercall32`: hypercalls from ring 3, then a spin there.
//!
//! Hypercalls are the guest kernel's: from CPL > 0 the hypervisor must answer every
//! number with KVM's error, -KVM_EPERM (-1), and must not act on it, even on the
//! benchmark's bare CPUID loop (0x100) in a VM that opted in to it (this guest's VM
//! does: only the CPL keeps it out). In 32-bit protected mode without paging, so
//! ring 3 needs no page tables: a GDT with ring-3 segments and an IRET are enough.
//!
//! Prints, with the hypercall instruction picked from the CPUID vendor (VMMCALL on
//! AMD, VMCALL on Intel) and each result as the 32-bit EAX:
//! ```text
//! usercall32: ring 0 hypercall 0x0 -> 0x00000001
//! usercall32: ring 3 hypercall 0x100 -> 0xffffffff
//! usercall32: ring 3 hypercall 0x0 -> 0xffffffff
//! usercall32: spinning in ring 3
//! ```
//! then spins at CPL 3 with interrupts disabled (IOPL 3 lets it print from ring 3,
//! not stop itself): the hypervisor's timer must still share the processor, and
//! the VM ends when the run does (a background VM).
//!
//! All 32-bit assembly, linked like `prot32` (`link32.ld`) and rewritten as ELF32.

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
    mov $.Luc_stack_top, %esp
    cld
    lgdt .Luc_gdtr
    ljmp $0x08, $.Luc_flat
.Luc_flat:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %eax, %fs
    mov %eax, %gs

    // "AuthenticAMD" starts with "Auth" in EBX: VMMCALL; anything else VMCALL.
    xor %eax, %eax
    cpuid
    cmp $0x68747541, %ebx
    sete .Luc_amd

    xor %eax, %eax
    call .Luc_hypercall
    mov $.Luc_msg_r0_version, %esi
    call .Luc_result

    // To ring 3: SS, ESP, EFLAGS (IOPL 3 for the serial port, IF clear), CS, EIP.
    push $0x2b
    push $.Luc_stack_top - 1024
    push $0x3002
    push $0x23
    push $.Luc_user
    iret

.Luc_user:
    // DS still held ring 0's selector, which the IRET replaced by null.
    mov $0x2b, %eax
    mov %eax, %ds
    mov %eax, %es
    mov $0x100, %eax
    call .Luc_hypercall
    mov $.Luc_msg_r3_bench, %esi
    call .Luc_result
    xor %eax, %eax
    call .Luc_hypercall
    mov $.Luc_msg_r3_version, %esi
    call .Luc_result
    mov $.Luc_msg_spin, %esi
    call .Luc_puts
.Luc_spin:
    jmp .Luc_spin

// Hypercall EAX (the upper half of RAX is zero from the start); EAX = the result.
.Luc_hypercall:
    cmpb $0, .Luc_amd
    je .Luc_vmcall
    vmmcall
    ret
.Luc_vmcall:
    vmcall
    ret

// Prints the string at ESI, then EAX in hex and a newline.
.Luc_result:
    push %eax
    call .Luc_puts
    pop %eax
    call .Luc_puthex
    mov $0x0a, %al
    call .Luc_putc
    ret

// Prints the NUL-terminated string at ESI. Clobbers EAX, ESI.
.Luc_puts:
    lodsb
    test %al, %al
    jz .Luc_puts_end
    call .Luc_putc
    jmp .Luc_puts
.Luc_puts_end:
    ret

// Prints EAX as 0x and 8 hex digits. Clobbers EAX, ECX, EDX.
.Luc_puthex:
    mov %eax, %edx
    mov $0x30, %al
    call .Luc_putc
    mov $0x78, %al
    call .Luc_putc
    mov $8, %ecx
.Luc_puthex_next:
    rol $4, %edx
    mov %dl, %al
    and $0xf, %al
    add $0x30, %al
    cmp $0x39, %al
    jbe .Luc_puthex_put
    add $0x27, %al
.Luc_puthex_put:
    call .Luc_putc
    loop .Luc_puthex_next
    ret

// Writes AL to COM1 once LSR bit 5 (THR empty) is set. Preserves all but flags.
.Luc_putc:
    push %edx
    push %eax
    mov $0x3fd, %dx
.Luc_putc_wait:
    in %dx, %al
    test $0x20, %al
    jz .Luc_putc_wait
    pop %eax
    mov $0x3f8, %dx
    out %al, %dx
    pop %edx
    ret
    .code64
    .popsection

    .pushsection .rodata.usercall32, "a"
.Luc_msg_r0_version:
    .asciz "usercall32: ring 0 hypercall 0x0 -> "
.Luc_msg_r3_bench:
    .asciz "usercall32: ring 3 hypercall 0x100 -> "
.Luc_msg_r3_version:
    .asciz "usercall32: ring 3 hypercall 0x0 -> "
.Luc_msg_spin:
    .asciz "usercall32: spinning in ring 3\n"
    .popsection

    .pushsection .data.usercall32, "aw"
    .balign 16
    // null; 0x08 code and 0x10 data, ring 0; 0x18 unused; 0x20 code and 0x28
    // data, ring 3 (flat 4 GiB, 32-bit).
.Luc_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0
    .quad 0x00cffa000000ffff
    .quad 0x00cff2000000ffff
.Luc_gdt_end:
    .balign 4
    .word 0
.Luc_gdtr:
    .word .Luc_gdt_end - .Luc_gdt - 1
    .long .Luc_gdt
.Luc_amd:
    .byte 0
    .popsection

    .pushsection .bss.usercall32, "aw", @nobits
    .balign 16
    .skip 4096
.Luc_stack_top:
    .popsection
    "#,
    options(att_syntax)
);
