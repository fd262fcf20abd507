//! `acloop32`: the #AC delivery loop of CVE-2015-5307, in 32-bit protected mode.
//!
//! With CR0.AM and EFLAGS.AC set, a data access at CPL 3 to a misaligned address
//! raises #AC (SDM Vol. 3A 6.15, "Interrupt 17"). The #AC gate here leads to a
//! conforming code segment, so the processor delivers the exception without a
//! privilege change: on the same CPL-3 stack, which is misaligned, so pushing the
//! frame raises #AC again before anything is written, and again, with ESP, EIP and
//! every register unchanged. A processor never leaves that loop, and answers no
//! interrupt inside it; a hypervisor that intercepts #AC takes one VM exit per
//! round and must end the VM as a triple fault would. (Long mode cannot be used:
//! there the processor aligns RSP to 16 bytes before it pushes a frame, SDM Vol. 3A
//! 6.14.2, so the frame never misaligns.)
//!
//! Prints `acloop32: entering the #AC loop`, sets CR0.AM and goes to ring 3 (IRET,
//! EFLAGS.AC and IOPL 3) on a stack two bytes off alignment, where it pushes a word.
//! The hypervisor then reports the shutdown. If the push completes (an emulator
//! without alignment checks: QEMU's TCG raises no #AC at all) the guest prints
//! `acloop32: no #AC from the misaligned access`; if the handler runs after all, it
//! prints `acloop32: the #AC handler ran`. Both reports go through software
//! interrupts 0x30/0x31 to ring 0 (through the TSS's ring-0 stack), which then stops
//! with `cli; hlt`. Any other exception prints `acloop32: unexpected exception
//! 0x<vector>` and stops the same way.
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
    mov $.Lac_kstack_top, %esp
    cld
    lgdt .Lac_gdtr
    ljmp $0x08, $.Lac_flat
.Lac_flat:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %eax, %fs
    mov %eax, %gs

    // The TSS descriptor (selector 0x30) splits its base over three fields.
    mov $.Lac_tss, %eax
    mov %ax, .Lac_gdt + 0x30 + 2
    shr $16, %eax
    mov %al, .Lac_gdt + 0x30 + 4
    mov %ah, .Lac_gdt + 0x30 + 7
    // Ring 0's stack for interrupts from ring 3 (ESP0, SS0); no I/O bitmap.
    movl $.Lac_kstack_top, .Lac_tss + 4
    movl $0x10, .Lac_tss + 8
    movw $104, .Lac_tss + 102
    mov $0x30, %eax
    ltr %ax

    // Exceptions 0-31: ring-0 stubs that report the vector.
    xor %ecx, %ecx
.Lac_gates:
    mov .Lac_stubs(,%ecx,4), %eax
    mov $0x08, %edx
    mov $0x8e00, %ebx
    call .Lac_set_gate
    inc %ecx
    cmp $32, %ecx
    jb .Lac_gates
    // #AC: an interrupt gate into the conforming segment (no privilege change).
    mov $17, %ecx
    mov $.Lac_handler, %eax
    mov $0x18, %edx
    call .Lac_set_gate
    // INT 0x30 / 0x31 from ring 3 (gate DPL 3) into ring 0.
    mov $0x30, %ecx
    mov $.Lac_no_ac, %eax
    mov $0x08, %edx
    mov $0xee00, %ebx
    call .Lac_set_gate
    mov $0x31, %ecx
    mov $.Lac_handler_ran, %eax
    call .Lac_set_gate
    lidt .Lac_idtr

    mov $.Lac_msg_enter, %esi
    call .Lac_puts
    // CR0.AM (bit 18): alignment checks at CPL 3 where EFLAGS.AC is set.
    mov %cr0, %eax
    or $0x40000, %eax
    mov %eax, %cr0
    // To ring 3: SS, ESP (two bytes off), EFLAGS (AC, IOPL 3, IF clear), CS, EIP.
    push $0x2b
    push $.Lac_ustack_top - 2
    push $0x43002
    push $0x23
    push $.Lac_user
    iret

.Lac_user:
    // A 4-byte push to a misaligned address: #AC, whose delivery pushes its frame
    // to the same misaligned stack.
    push %eax
    int $0x30

    // The #AC handler (conforming: it runs at CPL 3 on the misaligned stack).
.Lac_handler:
    int $0x31

    // Ring 0 again, through the TSS: the IRET to ring 3 left DS null.
.Lac_no_ac:
    mov $.Lac_msg_no_ac, %esi
    jmp .Lac_report

.Lac_handler_ran:
    mov $.Lac_msg_ran, %esi
.Lac_report:
    mov $0x10, %edx
    mov %edx, %ds
    call .Lac_puts
    jmp .Lac_halt

    // EAX = the vector.
.Lac_fatal:
    mov $0x10, %edx
    mov %edx, %ds
    mov %eax, %edi
    mov $.Lac_msg_unexpected, %esi
    call .Lac_puts
    mov %edi, %eax
    call .Lac_puthex
    mov $0x0a, %al
    call .Lac_putc

.Lac_halt:
    cli
    hlt
    jmp .Lac_halt

    .irp vec, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
.Lac_exc_\vec:
    mov $\vec, %eax
    jmp .Lac_fatal
    .endr

// Gate ECX := offset EAX, selector EDX, type/attributes EBX (a 32-bit interrupt
// gate: 0x8e00 with DPL 0, 0xee00 with DPL 3). Preserves all but flags.
.Lac_set_gate:
    push %eax
    push %edx
    shl $16, %edx
    mov %ax, %dx
    mov %edx, .Lac_idt(,%ecx,8)
    and $0xffff0000, %eax
    or %ebx, %eax
    mov %eax, .Lac_idt + 4(,%ecx,8)
    pop %edx
    pop %eax
    ret

// Prints the NUL-terminated string at ESI. Clobbers EAX, ESI.
.Lac_puts:
    lodsb
    test %al, %al
    jz .Lac_puts_end
    call .Lac_putc
    jmp .Lac_puts
.Lac_puts_end:
    ret

// Prints EAX as 0x and 8 hex digits. Clobbers EAX, ECX, EDX.
.Lac_puthex:
    mov %eax, %edx
    mov $0x30, %al
    call .Lac_putc
    mov $0x78, %al
    call .Lac_putc
    mov $8, %ecx
.Lac_puthex_next:
    rol $4, %edx
    mov %dl, %al
    and $0xf, %al
    add $0x30, %al
    cmp $0x39, %al
    jbe .Lac_puthex_put
    add $0x27, %al
.Lac_puthex_put:
    call .Lac_putc
    loop .Lac_puthex_next
    ret

// Writes AL to COM1 once LSR bit 5 (THR empty) is set. Preserves all but flags.
.Lac_putc:
    push %edx
    push %eax
    mov $0x3fd, %dx
.Lac_putc_wait:
    in %dx, %al
    test $0x20, %al
    jz .Lac_putc_wait
    pop %eax
    mov $0x3f8, %dx
    out %al, %dx
    pop %edx
    ret
    .code64
    .popsection

    .pushsection .rodata.acloop32, "a"
    .balign 4
.Lac_stubs:
    .irp vec, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .long .Lac_exc_\vec
    .endr
.Lac_msg_enter:
    .asciz "acloop32: entering the #AC loop\n"
.Lac_msg_no_ac:
    .asciz "acloop32: no #AC from the misaligned access\n"
.Lac_msg_ran:
    .asciz "acloop32: the #AC handler ran\n"
.Lac_msg_unexpected:
    .asciz "acloop32: unexpected exception "
    .popsection

    .pushsection .data.acloop32, "aw"
    .balign 16
    // null; 0x08 code and 0x10 data, ring 0; 0x18 conforming code (DPL 0, so
    // callable from every ring, running at the caller's); 0x20 code and 0x28 data,
    // ring 3; 0x30 the TSS (32-bit, available; base filled in at start).
.Lac_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0x00cf9e000000ffff
    .quad 0x00cffa000000ffff
    .quad 0x00cff2000000ffff
    .quad 0x0000890000000067
.Lac_gdt_end:
    .balign 4
    .word 0
.Lac_gdtr:
    .word .Lac_gdt_end - .Lac_gdt - 1
    .long .Lac_gdt
    .balign 4
    .word 0
.Lac_idtr:
    .word 64 * 8 - 1
    .long .Lac_idt
    .popsection

    .pushsection .bss.acloop32, "aw", @nobits
    .balign 16
.Lac_idt:
    .skip 64 * 8
.Lac_tss:
    .skip 104
    .balign 16
    .skip 4096
.Lac_kstack_top:
    .skip 1024
.Lac_ustack_top:
    .popsection
    "#,
    options(att_syntax)
);
