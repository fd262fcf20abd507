//! The hypervisor's own time source for time slices: the 8254 PIT channel 0 at 1 kHz
//! through the 8259 PIC (IRQ 0, remapped to vector 32). Guests never reach these
//! devices: every I/O port a guest touches is intercepted.

use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::instructions::port::Port;
use x86_64::structures::idt::InterruptStackFrame;

/// 1 kHz: the resolution at which halted guests are woken for their timers and busy
/// guests are switched.
pub const TICK_HZ: u32 = 1000;
pub const PIC_VECTOR_BASE: u8 = 32;
const PIT_HZ: u32 = 1_193_182;

static TICKS: AtomicU64 = AtomicU64::new(0);

pub fn ticks() -> u64 {
    TICKS.load(Ordering::Relaxed)
}

extern "x86-interrupt" fn tick(_frame: InterruptStackFrame) {
    TICKS.fetch_add(1, Ordering::Relaxed);
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

pub fn handlers() -> [(u8, crate::interrupts::IrqHandler); 3] {
    [
        (PIC_VECTOR_BASE, tick),
        (PIC_VECTOR_BASE + 7, spurious_master),
        (PIC_VECTOR_BASE + 15, spurious_slave),
    ]
}

/// Waits for the next host interrupt (the timer tick at the latest) with the processor
/// halted: used when every guest is halted.
pub fn idle() {
    // STI takes effect after the next instruction, so no interrupt can slip in
    // between it and HLT (SDM Vol. 2B STI).
    x86_64::instructions::interrupts::enable_and_hlt();
    x86_64::instructions::interrupts::disable();
}

/// Remaps the PICs above the exception vectors, unmasks only IRQ 0, and starts the PIT
/// in rate-generator mode. Interrupts stay disabled (IF=0) in the hypervisor; they are
/// taken only around guest entries.
pub fn init() {
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
        m_data.write(!0x01); // only IRQ 0
        s_data.write(0xFF);
        Port::<u8>::new(0x43).write(0b0011_0100); // channel 0, lo/hi, mode 2
        let mut ch0: Port<u8> = Port::new(0x40);
        ch0.write(divisor as u8);
        ch0.write((divisor >> 8) as u8);
    }
}
