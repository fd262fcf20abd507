//! The local APIC in xAPIC mode, reached through its MMIO page at 0xFEE00000 (SDM
//! Vol. 3A chapter 10 "Advanced Programmable Interrupt Controller", chapter 11 in
//! current editions; section numbers below are the 10.x ones).
//!
//! Every access is one plain 32-bit `mov` to or from the register, written out in
//! `asm!`: the hypervisor emulates the page by decoding the faulting instruction, and
//! the SDM (10.4.1) requires aligned 32-bit accesses anyway. No read-modify-write
//! instruction ever touches the page. The identity map the hypervisor (and the SMP
//! trampoline) provide covers the first 4 GiB, so the physical address is the
//! virtual one.

use core::arch::asm;

/// The xAPIC page (SDM 10.4.1, the power-up value of `IA32_APIC_BASE`).
pub const BASE: u64 = 0xFEE0_0000;

/// Register offsets (SDM table 10-1).
pub mod reg {
    pub const ID: u32 = 0x20;
    pub const EOI: u32 = 0xB0;
    pub const LDR: u32 = 0xD0;
    pub const DFR: u32 = 0xE0;
    pub const SVR: u32 = 0xF0;
    pub const ESR: u32 = 0x280;
    pub const ICR_LOW: u32 = 0x300;
    pub const ICR_HIGH: u32 = 0x310;
    pub const LVT_TIMER: u32 = 0x320;
    pub const TIMER_INITIAL: u32 = 0x380;
    pub const TIMER_DIVIDE: u32 = 0x3E0;
}

/// Fields of the interrupt command register's low half (SDM 10.6.1, figure 10-12).
/// The destination is bits 63:56, i.e. bits 31:24 of [`reg::ICR_HIGH`].
pub mod icr {
    /// Delivery mode, bits 10:8.
    pub const FIXED: u32 = 0b000 << 8;
    pub const LOWEST_PRIORITY: u32 = 0b001 << 8;
    pub const NMI: u32 = 0b100 << 8;
    pub const INIT: u32 = 0b101 << 8;
    pub const STARTUP: u32 = 0b110 << 8;
    /// Bit 11: logical destination mode (0: physical).
    pub const LOGICAL: u32 = 1 << 11;
    /// Bit 12 (read-only): the previous IPI has not been sent yet.
    pub const DELIVERY_PENDING: u32 = 1 << 12;
    /// Bit 14: level assert (0: de-assert, only meaningful for INIT level de-assert).
    pub const ASSERT: u32 = 1 << 14;
    /// Bit 15: level-triggered (0: edge).
    pub const LEVEL: u32 = 1 << 15;
    /// Destination shorthand, bits 19:18.
    pub const SELF: u32 = 0b01 << 18;
    pub const ALL_INCLUDING_SELF: u32 = 0b10 << 18;
    pub const ALL_EXCLUDING_SELF: u32 = 0b11 << 18;
}

/// SVR bit 8: APIC software enable (SDM 10.9).
pub const SVR_ENABLE: u32 = 1 << 8;
/// LVT bit 16: masked; timer bit 17: periodic (SDM 10.5.1, figure 10-8).
pub const LVT_MASKED: u32 = 1 << 16;
pub const LVT_TIMER_PERIODIC: u32 = 1 << 17;
/// DFR value of the flat logical model (SDM 10.6.2.2): bits 31:28 = 1111b.
pub const DFR_FLAT: u32 = 0xFFFF_FFFF;

/// Reads an APIC register with one 32-bit `mov`.
pub fn read(offset: u32) -> u32 {
    let value: u32;
    // SAFETY: an aligned 32-bit load from the APIC page, which the identity map
    // covers; reads of APIC registers have no side effects on memory.
    unsafe {
        asm!(
            "mov {v:e}, dword ptr [{a}]",
            a = in(reg) BASE + u64::from(offset),
            v = out(reg) value,
            options(nostack, preserves_flags, readonly),
        );
    }
    value
}

/// Writes an APIC register with one 32-bit `mov`.
///
/// # Safety
/// APIC writes send interrupts and change how this CPU takes them; the caller
/// must mean it (an INIT sent to itself resets this CPU).
pub unsafe fn write(offset: u32, value: u32) {
    // Not `nomem`: an IPI or EOI orders with the memory accesses around it (the
    // other CPU reads what this one wrote before the IPI).
    asm!(
        "mov dword ptr [{a}], {v:e}",
        a = in(reg) BASE + u64::from(offset),
        v = in(reg) value,
        options(nostack, preserves_flags),
    );
}

/// This CPU's local APIC ID (ID register bits 31:24, SDM 10.4.6).
pub fn id() -> u8 {
    (read(reg::ID) >> 24) as u8
}

/// Software-enables the APIC with spurious vector `spurious` (SDM 10.9), as an OS
/// does before it sends or takes interrupts through it.
pub fn enable(spurious: u8) {
    // SAFETY: enabling the APIC only lets interrupts through that the caller has
    // handlers for (the spurious vector among them).
    unsafe { write(reg::SVR, SVR_ENABLE | u32::from(spurious)) };
}

/// Signals end of interrupt (SDM 10.8.5: write 0).
pub fn eoi() {
    // SAFETY: EOI retires the interrupt being handled and nothing else.
    unsafe { write(reg::EOI, 0) };
}

/// Sends an IPI: `dest` into ICR bits 63:56, then `low` into the low half, whose
/// write is what sends it (SDM 10.6.1). Does not wait for delivery; see
/// [`wait_idle`].
///
/// # Safety
/// As for [`write`]: an IPI can reset or interrupt other CPUs and this one.
pub unsafe fn send_ipi(dest: u8, low: u32) {
    write(reg::ICR_HIGH, u32::from(dest) << 24);
    write(reg::ICR_LOW, low);
}

/// Polls ICR delivery status until the previous IPI has gone out (SDM 10.6.1: bit 12
/// is 0 when idle), at most `max_polls` reads. Returns whether it went idle.
pub fn wait_idle(max_polls: u64) -> bool {
    (0..max_polls).any(|_| read(reg::ICR_LOW) & icr::DELIVERY_PENDING == 0)
}
