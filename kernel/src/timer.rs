//! The hypervisor's own time source for time slices. Each processor runs its local
//! APIC timer, periodic at [`TICK_HZ`], calibrated once against the TSC; its interrupt
//! ends a guest's run on that processor (a VM exit for a physical interrupt) or wakes
//! it from [`idle`]. Where no usable local APIC exists, the 8254 PIT channel 0 through
//! the 8259 PIC (IRQ 0, remapped to vector 32) ticks the boot processor instead, and
//! no other processor runs. Guests never reach these devices: every I/O port a guest
//! touches is intercepted, and the APIC pages are emulated.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use x86_64::instructions::port::Port;
use x86_64::structures::idt::InterruptStackFrame;

use crate::{apic, smp, time};

/// 1 kHz: the resolution at which halted guests are woken for their timers and busy
/// guests are switched.
pub const TICK_HZ: u32 = 1000;
pub const PIC_VECTOR_BASE: u8 = 32;
pub const LAPIC_TIMER_VECTOR: u8 = 0xF0;
/// The local APIC's spurious-interrupt vector (low nibble all ones, as P6-family
/// APICs require, SDM 11.9).
pub const SPURIOUS_VECTOR: u8 = 0xFF;
const PIT_HZ: u32 = 1_193_182;

/// APIC timer initial count for one tick; 0 while the PIT is the source.
static LAPIC_PERIOD: AtomicU32 = AtomicU32::new(0);
/// Timer interrupts taken, per processor.
static INTERRUPTS: [AtomicU64; smp::MAX_CPUS] = [const { AtomicU64::new(0) }; smp::MAX_CPUS];

/// Milliseconds (ticks of [`TICK_HZ`]) since boot, the same on every processor: it is
/// derived from the TSC, not counted by interrupts, so a tick that arrives while a
/// processor has interrupts off is not lost, and a VM keeps its clock when it moves
/// between processors.
pub fn ticks() -> u64 {
    time::uptime_ns() / (1_000_000_000 / TICK_HZ as u64)
}

/// Timer interrupts processor `cpu` has taken.
pub fn interrupts(cpu: usize) -> u64 {
    INTERRUPTS[cpu].load(Ordering::Relaxed)
}

/// What drives time slices, for the boot report.
pub fn source_name() -> &'static str {
    if LAPIC_PERIOD.load(Ordering::Relaxed) != 0 {
        "the LAPIC timer"
    } else {
        "the PIT"
    }
}

extern "x86-interrupt" fn lapic_tick(_frame: InterruptStackFrame) {
    INTERRUPTS[smp::this_cpu()].fetch_add(1, Ordering::Relaxed);
    apic::eoi();
}

/// A spurious APIC interrupt needs no EOI (SDM 11.9).
extern "x86-interrupt" fn lapic_spurious(_frame: InterruptStackFrame) {}

extern "x86-interrupt" fn pit_tick(_frame: InterruptStackFrame) {
    INTERRUPTS[smp::this_cpu()].fetch_add(1, Ordering::Relaxed);
    // SAFETY: non-specific EOI to the master PIC for the IRQ just delivered.
    unsafe { Port::<u8>::new(0x20).write(0x20) };
}

/// IRQ 7 / IRQ 15 can arrive spuriously (8259A datasheet); they need no EOI from the
/// master for IRQ 7, and a master EOI only for IRQ 15 (cascade).
extern "x86-interrupt" fn spurious_master(_frame: InterruptStackFrame) {}

extern "x86-interrupt" fn spurious_slave(_frame: InterruptStackFrame) {
    // SAFETY: EOI for the cascade line on the master.
    unsafe { Port::<u8>::new(0x20).write(0x20) };
}

pub fn handlers() -> [(u8, crate::interrupts::IrqHandler); 5] {
    [
        (PIC_VECTOR_BASE, pit_tick),
        (PIC_VECTOR_BASE + 7, spurious_master),
        (PIC_VECTOR_BASE + 15, spurious_slave),
        (LAPIC_TIMER_VECTOR, lapic_tick),
        (SPURIOUS_VECTOR, lapic_spurious),
    ]
}

/// Waits for the next interrupt on this processor (its timer tick at the latest) with
/// the processor halted: used when every guest is halted, and by parked processors.
pub fn idle() {
    // STI takes effect after the next instruction, so no interrupt can slip in
    // between it and HLT (SDM Vol. 2B STI).
    x86_64::instructions::interrupts::enable_and_hlt();
    x86_64::instructions::interrupts::disable();
}

/// The boot processor's time source. Remaps the PICs above the exception vectors (so
/// a stray IRQ cannot look like an exception); then, with a usable local APIC
/// (`apic::init_bsp` ran), masks every PIC line and starts the APIC timer, otherwise
/// unmasks only IRQ 0 and starts the PIT in rate-generator mode. Interrupts stay
/// disabled (IF=0) in the hypervisor; they are taken only around guest entries and
/// in [`idle`].
pub fn init() {
    let period = apic::calibrate_timer(TICK_HZ, LAPIC_TIMER_VECTOR);
    let divisor = (PIT_HZ / TICK_HZ) as u16;
    // SAFETY: the standard ICW1-ICW4 initialisation of the 8259A pair and the 8254's
    // mode/command port; the hypervisor owns these devices.
    unsafe {
        let mut m_cmd: Port<u8> = Port::new(0x20);
        let mut m_data: Port<u8> = Port::new(0x21);
        let mut s_cmd: Port<u8> = Port::new(0xA0);
        let mut s_data: Port<u8> = Port::new(0xA1);
        m_cmd.write(0x11);
        s_cmd.write(0x11);
        m_data.write(PIC_VECTOR_BASE);
        s_data.write(PIC_VECTOR_BASE + 8);
        m_data.write(4); // slave on IRQ 2
        s_data.write(2);
        m_data.write(1); // 8086 mode
        s_data.write(1);
        s_data.write(0xFF);
        if period.is_some() {
            m_data.write(0xFF);
        } else {
            m_data.write(!0x01); // only IRQ 0
            Port::<u8>::new(0x43).write(0b0011_0100); // channel 0, lo/hi, mode 2
            let mut ch0: Port<u8> = Port::new(0x40);
            ch0.write(divisor as u8);
            ch0.write((divisor >> 8) as u8);
        }
    }
    if let Some(period) = period {
        LAPIC_PERIOD.store(period, Ordering::Relaxed);
        apic::start_periodic_timer(LAPIC_TIMER_VECTOR, period);
    }
}

/// Starts the calling AP's APIC timer with the boot processor's calibration and
/// checks that it interrupts (two ticks, halted in between). False if the APIC timer
/// is not the time source or no tick came.
pub fn start_this_cpu() -> bool {
    let period = LAPIC_PERIOD.load(Ordering::Relaxed);
    if period == 0 {
        return false;
    }
    apic::start_periodic_timer(LAPIC_TIMER_VECTOR, period);
    let cpu = smp::this_cpu();
    let before = interrupts(cpu);
    // Each HLT ends at the next interrupt; a timer that never fires leaves the
    // processor halted, and the boot processor's bring-up time limit reports it.
    while interrupts(cpu) < before + 2 {
        idle();
    }
    true
}
