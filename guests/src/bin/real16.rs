//! `real16`: a boot sector that says hello from real mode.
//!
//! The hypervisor (like a BIOS) loads the 512-byte sector at 0000:7C00 and jumps
//! there in real mode with DL = 0x80. The code prints one line on COM1 and stops
//! with `cli; hlt`. It is all 16-bit assembly: linked at 0x7C00 by `link16.ld`,
//! flattened with `llvm-objcopy -O binary` and given its 0x55AA signature by xtask.
//!
//! Prints: `real16: hello from real mode`

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

// `guests` provides the panic handler the no_std binary needs; nothing else of it
// is linked (the boot sector has room for none of it).
#[cfg(target_os = "none")]
use guests as _;

#[cfg(target_os = "none")]
core::arch::global_asm!(
    r#"
    .pushsection .boot, "ax"
    .code16
    .global _start
_start:
    cli
    // Some BIOSes enter at 07C0:0000 instead of 0000:7C00: the far jump makes
    // CS = 0 so the absolute addresses below (linked at 0x7C00) are right.
    ljmp $0, $.Lreal16_flat
.Lreal16_flat:
    xor %ax, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $0x7c00, %sp
    cld
    mov $.Lreal16_msg, %si
.Lreal16_next:
    lodsb
    test %al, %al
    jz .Lreal16_done
    mov %al, %bl
    // Poll the line status register until THR is empty (bit 5)...
    mov $0x3fd, %dx
.Lreal16_wait:
    in %dx, %al
    test $0x20, %al
    jz .Lreal16_wait
    // ...then hand the byte to the transmit holding register.
    mov $0x3f8, %dx
    mov %bl, %al
    out %al, %dx
    jmp .Lreal16_next
.Lreal16_done:
    cli
    hlt
    jmp .Lreal16_done
.Lreal16_msg:
    .asciz "real16: hello from real mode\n"
    .code64
    .popsection
    "#,
    options(att_syntax)
);
