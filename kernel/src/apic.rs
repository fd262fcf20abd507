//! The host's local APIC (SDM Vol. 3A chapter 11, "Advanced Programmable Interrupt
//! Controller"): enabling it on each processor, end of interrupt, inter-processor
//! interrupts (INIT, STARTUP, fixed) and the APIC timer.
//!
//! **xAPIC or x2APIC.** The registers are reached by MMIO (xAPIC) unless the firmware
//! handed over in x2APIC mode, in which case they are MSRs (SDM 11.12). xAPIC works on
//! every machine this hypervisor targets, including QEMU 7.2's software emulation,
//! which has no x2APIC; a machine whose APIC IDs exceed 255 is booted by its firmware
//! in x2APIC mode, and leaving x2APIC mode would need the APIC disabled first (SDM
//! 11.12.5), so we then stay in it. The MMIO page is made uncacheable in the
//! physical-memory mapping (SDM 11.4.1 wants the APIC page UC); every processor sees
//! its own APIC at the same address.
//!
//! Every function acts on the local APIC of the processor that calls it. Callers run
//! with interrupts disabled (the hypervisor's normal state), so the two-register ICR
//! write of xAPIC mode is not torn by an interrupt handler.

use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use x86_64::registers::model_specific::Msr;

use crate::memory;

const IA32_APIC_BASE: u32 = 0x1B;
const BASE_X2APIC: u64 = 1 << 10;
const BASE_ENABLE: u64 = 1 << 11;
const BASE_ADDRESS_MASK: u64 = 0x000F_FFFF_FFFF_F000;
/// x2APIC register MSRs are 0x800 + (xAPIC offset >> 4) (SDM 11.12.1.2).
const X2APIC_MSR_BASE: u32 = 0x800;

/// xAPIC register offsets (SDM Vol. 3A Table 11-1).
mod reg {
    pub const ID: u32 = 0x20;
    pub const TPR: u32 = 0x80;
    pub const EOI: u32 = 0xB0;
    pub const SVR: u32 = 0xF0;
    pub const ESR: u32 = 0x280;
    pub const ICR_LOW: u32 = 0x300;
    pub const ICR_HIGH: u32 = 0x310;
    pub const LVT_TIMER: u32 = 0x320;
    pub const LVT_LINT0: u32 = 0x350;
    pub const LVT_ERROR: u32 = 0x370;
    pub const TIMER_INITIAL: u32 = 0x380;
    pub const TIMER_CURRENT: u32 = 0x390;
    pub const TIMER_DIVIDE: u32 = 0x3E0;
}

const LVT_MASKED: u32 = 1 << 16;
const LVT_TIMER_PERIODIC: u32 = 1 << 17;
const SVR_ENABLE: u32 = 1 << 8;
const ICR_DELIVERY_PENDING: u32 = 1 << 12;
/// ICR delivery modes and flags (SDM 11.6.1).
pub const ICR_FIXED: u32 = 0b000 << 8;
pub const ICR_NMI: u32 = 0b100 << 8;
pub const ICR_INIT: u32 = 0b101 << 8;
pub const ICR_STARTUP: u32 = 0b110 << 8;
pub const ICR_LEVEL_ASSERT: u32 = 1 << 14;
/// Divide configuration 0b0011: the timer counts at the bus clock / 16.
const TIMER_DIVIDE_16: u32 = 0b0011;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No usable local APIC (CPUID.1:EDX.APIC clear): the PIT and PIC drive time
    /// slices and no other processor can be started.
    None = 0,
    XApic = 1,
    X2Apic = 2,
}

static MODE: AtomicU8 = AtomicU8::new(Mode::None as u8);
/// Where the xAPIC register page is mapped (uncached), 0 in x2APIC mode.
static MMIO: AtomicU64 = AtomicU64::new(0);
/// The boot processor's IA32_APIC_BASE physical address, given to every AP.
static BASE_PA: AtomicU64 = AtomicU64::new(0);

pub fn mode() -> Mode {
    match MODE.load(Ordering::Relaxed) {
        1 => Mode::XApic,
        2 => Mode::X2Apic,
        _ => Mode::None,
    }
}

pub fn mode_name() -> &'static str {
    match mode() {
        Mode::None => "none",
        Mode::XApic => "xAPIC (MMIO)",
        Mode::X2Apic => "x2APIC (MSRs)",
    }
}

fn read(offset: u32) -> u32 {
    match mode() {
        // SAFETY: in x2APIC mode every register named in `reg` (but ICR_HIGH, never
        // read here) exists as an MSR; reads have no side effects.
        Mode::X2Apic => unsafe { Msr::new(X2APIC_MSR_BASE + (offset >> 4)).read() as u32 },
        Mode::XApic => {
            let base = MMIO.load(Ordering::Relaxed);
            // SAFETY: `init_bsp` mapped the APIC page uncached at `base`; the offset
            // is one of the 16-byte-aligned registers, read as a 32-bit access as the
            // APIC requires (SDM 11.4.1).
            unsafe { ((base + offset as u64) as *const u32).read_volatile() }
        }
        Mode::None => 0,
    }
}

fn write(offset: u32, value: u32) {
    match mode() {
        // SAFETY: as in `read`; the values written are ones the SDM defines for the
        // register, and only the calling processor's APIC is affected.
        Mode::X2Apic => unsafe { Msr::new(X2APIC_MSR_BASE + (offset >> 4)).write(value as u64) },
        Mode::XApic => {
            let base = MMIO.load(Ordering::Relaxed);
            // SAFETY: as in `read`.
            unsafe { ((base + offset as u64) as *mut u32).write_volatile(value) }
        }
        Mode::None => {}
    }
}

/// Finds the boot processor's local APIC and decides how to reach it. Needs the
/// physical-memory mapping (`memory::init`) for the xAPIC page.
pub fn init_bsp() -> Mode {
    let has_apic = raw_cpuid::CpuId::new()
        .get_feature_info()
        .is_some_and(|f| f.has_apic());
    if !has_apic {
        return Mode::None;
    }
    // SAFETY: IA32_APIC_BASE exists when CPUID reports an APIC (SDM Vol. 4 Table 2-2).
    let base = unsafe { Msr::new(IA32_APIC_BASE).read() };
    let pa = base & BASE_ADDRESS_MASK;
    BASE_PA.store(pa, Ordering::Relaxed);
    let mode = if base & (BASE_X2APIC | BASE_ENABLE) == BASE_X2APIC | BASE_ENABLE {
        Mode::X2Apic
    } else {
        match memory::map_uncached(pa) {
            Ok(va) => MMIO.store(va as u64, Ordering::Relaxed),
            Err(why) => {
                log::warn!("local APIC at {pa:#x} unusable: {why}");
                return Mode::None;
            }
        }
        Mode::XApic
    };
    MODE.store(mode as u8, Ordering::Relaxed);
    mode
}

/// Enables the calling processor's local APIC: globally (IA32_APIC_BASE, in the mode
/// the boot processor uses) and in software (spurious-interrupt vector register), with
/// the task priority at 0 and the error LVT masked. `bsp` keeps LINT0 as the firmware
/// set it (virtual-wire mode for the PIC); an AP masks it.
pub fn enable_this_cpu(spurious_vector: u8, bsp: bool) {
    let mode = mode();
    if mode == Mode::None {
        return;
    }
    // SAFETY: IA32_APIC_BASE exists (the boot processor's CPUID said so and the
    // processors of one machine match); the value keeps the boot processor's base and
    // sets EN (and EXTD in x2APIC mode; xAPIC -> x2APIC is an allowed transition,
    // SDM 11.12.5).
    unsafe {
        let mut msr = Msr::new(IA32_APIC_BASE);
        let old = msr.read();
        let mut new = (old & !BASE_ADDRESS_MASK) | BASE_PA.load(Ordering::Relaxed) | BASE_ENABLE;
        if mode == Mode::X2Apic {
            new |= BASE_X2APIC;
        }
        if new != old {
            msr.write(new);
        }
    }
    write(reg::TPR, 0);
    write(reg::LVT_ERROR, LVT_MASKED);
    if !bsp {
        write(reg::LVT_LINT0, LVT_MASKED);
    }
    // Writing ESR arms it; the read clears the errors latched so far (SDM 11.5.3).
    write(reg::ESR, 0);
    let _ = read(reg::ESR);
    write(reg::SVR, SVR_ENABLE | spurious_vector as u32);
}

/// The calling processor's local APIC ID.
pub fn id() -> u32 {
    match mode() {
        Mode::X2Apic => read(reg::ID),
        _ => read(reg::ID) >> 24,
    }
}

pub fn eoi() {
    write(reg::EOI, 0);
}

/// Sends an IPI with ICR low bits `icr_low` (vector, delivery mode, level) to the
/// processor with local APIC ID `apic_id` (physical destination mode). Returns false
/// if the xAPIC still reports the IPI pending after a generous wait.
/// Sends an IPI without waiting for the delivery status (for kicks: on every
/// processor since the Pentium 4 the status clears at once, and waiting on an
/// emulated APIC that keeps it set while the target is busy would stall the sender).
pub fn send_ipi_nowait(apic_id: u32, icr_low: u32) {
    match mode() {
        Mode::None => {}
        Mode::X2Apic => {
            // SAFETY: as in `send_ipi`.
            unsafe { Msr::new(0x830).write(((apic_id as u64) << 32) | icr_low as u64) };
        }
        Mode::XApic => {
            write(reg::ICR_HIGH, apic_id << 24);
            write(reg::ICR_LOW, icr_low);
        }
    }
}

pub fn send_ipi(apic_id: u32, icr_low: u32) -> bool {
    match mode() {
        Mode::None => false,
        Mode::X2Apic => {
            // SAFETY: the x2APIC ICR is one 64-bit MSR, destination in bits 63:32
            // (SDM 11.12.9); sending an IPI affects only its target.
            unsafe { Msr::new(0x830).write(((apic_id as u64) << 32) | icr_low as u64) };
            true
        }
        Mode::XApic => {
            write(reg::ICR_HIGH, apic_id << 24);
            write(reg::ICR_LOW, icr_low);
            for _ in 0..1_000_000 {
                if read(reg::ICR_LOW) & ICR_DELIVERY_PENDING == 0 {
                    return true;
                }
                core::hint::spin_loop();
            }
            false
        }
    }
}

/// Measures the APIC timer against the TSC (`time::calibrate` ran) over 10 ms and
/// returns the initial count for a period of `1/hz` seconds at divide-by-16, or
/// `None` if the timer does not count. The timer is stopped afterwards.
pub fn calibrate_timer(hz: u32, vector: u8) -> Option<u32> {
    if mode() == Mode::None {
        return None;
    }
    write(reg::TIMER_DIVIDE, TIMER_DIVIDE_16);
    write(reg::LVT_TIMER, LVT_MASKED | vector as u32);
    write(reg::TIMER_INITIAL, u32::MAX);
    let start = crate::time::rdtsc();
    let window = crate::time::tsc_hz() / 100;
    while crate::time::rdtsc().wrapping_sub(start) < window {
        core::hint::spin_loop();
    }
    let counted = u32::MAX - read(reg::TIMER_CURRENT);
    write(reg::TIMER_INITIAL, 0);
    let per_period = counted as u64 * 100 / hz as u64;
    (per_period > 0 && per_period <= u32::MAX as u64).then_some(per_period as u32)
}

/// Starts the calling processor's APIC timer in periodic mode (SDM 11.5.4): an
/// interrupt on `vector` every `initial_count` timer clocks at divide-by-16.
pub fn start_periodic_timer(vector: u8, initial_count: u32) {
    write(reg::TIMER_DIVIDE, TIMER_DIVIDE_16);
    write(reg::LVT_TIMER, LVT_TIMER_PERIODIC | vector as u32);
    write(reg::TIMER_INITIAL, initial_count);
}
