//! A 16550A UART model (the PC's COM ports), complete enough for Linux's 8250 driver,
//! firmware and hobby kernels: all eight registers, the divisor latch, the receive
//! FIFO, loopback, and the interrupt logic including the THR-empty quirks drivers
//! depend on.
//!
//! The model has no clock. A byte written to THR is handed to the [`SerialSink`] at
//! once, so the transmitter is always idle again by the next access: LSR.THRE and
//! LSR.TEMT always read 1, and "the byte has been sent" happens inside the THR write.
//! Input arrives through [`Uart16550::enqueue_input`]; the receiver's character
//! timeout is treated as already expired (see [`Uart16550`]'s IIR notes).
//!
//! ## Interrupt output
//!
//! The chip's INTR pin is [`Uart16550::interrupt_pending_raw`]. On a PC that pin reaches
//! the interrupt controller only through a buffer enabled by the chip's OUT2 output
//! (MCR bit 3), which is why every PC serial driver sets OUT2 before expecting
//! interrupts. [`Uart16550::interrupt_pending`] is the line as the PIC/IOAPIC sees it:
//! INTR gated by MCR.OUT2, and forced low in loopback mode, where the datasheet says the
//! modem outputs (OUT2 included) are held inactive. ISA IRQs are edge-triggered: the
//! caller samples this level after each access and raises IRQ 4 (COM1) / 3 (COM2) on a
//! 0 -> 1 transition (see [`crate::IrqEdge`]).

use alloc::vec::Vec;

use crate::bus::{read_bytewise, write_bytewise, PortDevice};
use crate::state::{Reader, StateError, Tag, Writer};

/// The conventional base port of COM1; the UART occupies [`PORT_COUNT`] ports from it.
pub const COM1_BASE: u16 = 0x3F8;
/// The ISA IRQ COM1 is wired to.
pub const COM1_IRQ: u8 = 4;
/// The conventional base port of COM2.
pub const COM2_BASE: u16 = 0x2F8;
/// The ISA IRQ COM2 is wired to.
pub const COM2_IRQ: u8 = 3;
/// How many consecutive ports a 16550 decodes.
pub const PORT_COUNT: u16 = 8;

/// The receive FIFO depth of a 16550A.
pub const FIFO_SIZE: usize = 16;

/// The divisor-1 baud rate (the 1.8432 MHz crystal divided by 16).
pub const BASE_BAUD: u32 = 115_200;

/// Register offsets from the base port. Several share an offset and are told apart by
/// the direction of the access or by LCR.DLAB.
pub mod reg {
    /// Receiver buffer (read) / transmitter holding (write); DLL when DLAB=1.
    pub const DATA: u16 = 0;
    /// Interrupt enable; DLM when DLAB=1.
    pub const IER: u16 = 1;
    /// Interrupt identification (read) / FIFO control (write).
    pub const IIR_FCR: u16 = 2;
    pub const LCR: u16 = 3;
    pub const MCR: u16 = 4;
    pub const LSR: u16 = 5;
    pub const MSR: u16 = 6;
    pub const SCR: u16 = 7;
}

/// Interrupt enable register bits.
pub mod ier {
    /// ERBFI: received data available (and character timeout).
    pub const RDA: u8 = 1 << 0;
    /// ETBEI: transmitter holding register empty.
    pub const THRE: u8 = 1 << 1;
    /// ELSI: receiver line status.
    pub const RLS: u8 = 1 << 2;
    /// EDSSI: modem status.
    pub const MS: u8 = 1 << 3;
}

/// Interrupt identification register values (datasheet table 4) and flags.
pub mod iir {
    /// Bit 0 set: no interrupt pending.
    pub const NONE: u8 = 0x01;
    pub const RLS: u8 = 0x06;
    pub const RDA: u8 = 0x04;
    /// Character timeout (FIFO mode only): data below the trigger level has waited.
    pub const TIMEOUT: u8 = 0x0C;
    pub const THRE: u8 = 0x02;
    pub const MS: u8 = 0x00;
    /// Bits 7:6 read 11 while the FIFOs are enabled; that is how drivers tell a 16550A.
    pub const FIFO_ENABLED: u8 = 0xC0;
}

/// FIFO control register bits.
pub mod fcr {
    pub const ENABLE: u8 = 1 << 0;
    pub const CLEAR_RX: u8 = 1 << 1;
    pub const CLEAR_TX: u8 = 1 << 2;
    /// Bits 7:6: receive trigger level 1, 4, 8 or 14 bytes.
    pub const TRIGGER_MASK: u8 = 0xC0;
}

/// Line control register bits.
pub mod lcr {
    /// Divisor latch access bit: offsets 0/1 become DLL/DLM.
    pub const DLAB: u8 = 1 << 7;
}

/// Modem control register bits.
pub mod mcr {
    pub const DTR: u8 = 1 << 0;
    pub const RTS: u8 = 1 << 1;
    pub const OUT1: u8 = 1 << 2;
    /// On PCs, enables the UART's interrupt onto the ISA IRQ line.
    pub const OUT2: u8 = 1 << 3;
    pub const LOOP: u8 = 1 << 4;
    /// Bits 7:5 are hard-wired to 0 on a 16550A.
    pub const MASK: u8 = 0x1F;
}

/// Line status register bits.
pub mod lsr {
    pub const DR: u8 = 1 << 0;
    pub const OE: u8 = 1 << 1;
    pub const PE: u8 = 1 << 2;
    pub const FE: u8 = 1 << 3;
    pub const BI: u8 = 1 << 4;
    pub const THRE: u8 = 1 << 5;
    pub const TEMT: u8 = 1 << 6;
    /// The error bits whose presence raises a receiver line status interrupt.
    pub const ERRORS: u8 = OE | PE | FE | BI;
}

/// Modem status register bits.
pub mod msr {
    pub const DCTS: u8 = 1 << 0;
    pub const DDSR: u8 = 1 << 1;
    pub const TERI: u8 = 1 << 2;
    pub const DDCD: u8 = 1 << 3;
    pub const CTS: u8 = 1 << 4;
    pub const DSR: u8 = 1 << 5;
    pub const RI: u8 = 1 << 6;
    pub const DCD: u8 = 1 << 7;
    pub const DELTAS: u8 = 0x0F;
}

/// The divisor firmware commonly leaves programmed (9600 baud); the real reset value is
/// undefined, so pick the common one.
const DEFAULT_DIVISOR: u16 = 12;

/// Where transmitted bytes go. The kernel implements this on whatever relays a VM's
/// console (e.g. a [`crate::LineBuffer`] plus the VM's name).
pub trait SerialSink {
    fn write_byte(&mut self, byte: u8);
}

impl<S: SerialSink + ?Sized> SerialSink for &mut S {
    fn write_byte(&mut self, byte: u8) {
        (**self).write_byte(byte);
    }
}

/// A sink that drops everything: for a UART whose output nobody wants.
#[derive(Clone, Copy, Debug, Default)]
pub struct NullSink;

impl SerialSink for NullSink {
    fn write_byte(&mut self, _byte: u8) {}
}

/// A fixed 16-byte ring: the receive FIFO (also the single holding register when the
/// FIFOs are disabled, with the capacity limited to 1).
#[derive(Clone, Debug)]
struct RxFifo {
    buf: [u8; FIFO_SIZE],
    head: usize,
    len: usize,
}

impl RxFifo {
    const fn new() -> Self {
        Self {
            buf: [0; FIFO_SIZE],
            head: 0,
            len: 0,
        }
    }

    fn push(&mut self, byte: u8) {
        debug_assert!(self.len < FIFO_SIZE);
        self.buf[(self.head + self.len) % FIFO_SIZE] = byte;
        self.len += 1;
    }

    fn pop(&mut self) -> Option<u8> {
        if self.len == 0 {
            return None;
        }
        let byte = self.buf[self.head];
        self.head = (self.head + 1) % FIFO_SIZE;
        self.len -= 1;
        Some(byte)
    }

    /// Replaces the newest byte: a non-FIFO overrun overwrites the holding register.
    fn overwrite_last(&mut self, byte: u8) {
        if self.len == 0 {
            self.push(byte);
        } else {
            self.buf[(self.head + self.len - 1) % FIFO_SIZE] = byte;
        }
    }

    fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
    }
}

/// A 16550A UART whose transmitter feeds `S`.
///
/// Register behaviour worth knowing (beyond the datasheet's bit layouts):
///
/// * **IIR** reports the highest-priority pending source: receiver line status (0x06) >
///   received data (0x04, or 0x0C "character timeout" in FIFO mode while the FIFO holds
///   fewer bytes than the trigger level; the model has no clock, so the timeout counts
///   as expired as soon as such data is waiting) > THR empty (0x02) > modem status
///   (0x00); 0x01 when none. Bits 7:6 read 11 while the FIFOs are enabled.
/// * **THR empty** is pending after ETBEI goes 0 -> 1 (the THR is always empty here)
///   and after every transmitted byte; a read of IIR that *reports* THRE clears it,
///   as does a THR write (which in this model immediately "sends" the byte and makes
///   it pending again) or clearing ETBEI. Linux's 8250 driver relies on all of this:
///   its startup probe toggles ETBEI and expects THRE to reassert, and its TX path
///   writes up to 16 bytes per THRE interrupt.
/// * **RLS** (OE here; parity, framing and break never happen on a virtual wire) is
///   cleared by reading LSR; **RDA** by draining the FIFO; **modem status** by reading
///   MSR.
/// * **Modem inputs** outside loopback read as a modem that is always ready: CTS, DSR
///   and DCD asserted, RI not. In loopback they mirror RTS, DTR, OUT1 and OUT2, which
///   is what Linux's probe checks (MCR = LOOP|OUT2|RTS must read MSR bits 7:4 = 0x9).
#[derive(Clone, Debug)]
pub struct Uart16550<S: SerialSink> {
    sink: S,
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    divisor: u16,
    fifo_enabled: bool,
    /// Receive trigger level in bytes (1, 4, 8 or 14).
    rx_trigger: u8,
    rx: RxFifo,
    /// What RBR reads when the FIFO is empty: the last byte received, as on hardware.
    last_rx: u8,
    /// LSR error bits (OE) latched until LSR is read.
    lsr_errors: u8,
    /// MSR delta bits (3:0) latched until MSR is read.
    msr_deltas: u8,
    /// The THRE interrupt source (only meaningful while IER.ETBEI is set).
    thre_pending: bool,
}

impl<S: SerialSink> Uart16550<S> {
    /// A UART in its power-on state, transmitting into `sink`.
    pub const fn new(sink: S) -> Self {
        Self {
            sink,
            ier: 0,
            lcr: 0,
            mcr: 0,
            scr: 0,
            divisor: DEFAULT_DIVISOR,
            fifo_enabled: false,
            rx_trigger: 1,
            rx: RxFifo::new(),
            last_rx: 0,
            lsr_errors: 0,
            msr_deltas: 0,
            thre_pending: false,
        }
    }

    /// Back to the power-on state (the MR pin), keeping the sink.
    pub fn reset(&mut self) {
        // Field by field because the sink cannot be moved out through `&mut self`;
        // keep this in step with `new`.
        self.ier = 0;
        self.lcr = 0;
        self.mcr = 0;
        self.scr = 0;
        self.divisor = DEFAULT_DIVISOR;
        self.fifo_enabled = false;
        self.rx_trigger = 1;
        self.rx.clear();
        self.last_rx = 0;
        self.lsr_errors = 0;
        self.msr_deltas = 0;
        self.thre_pending = false;
    }

    pub fn sink(&self) -> &S {
        &self.sink
    }

    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.sink
    }

    pub fn into_sink(self) -> S {
        self.sink
    }

    /// Reads register `offset` (0..8) with its side effects: RBR pops the FIFO, IIR may
    /// clear THRE, LSR clears error bits, MSR clears deltas. Offsets past 7 read 0xFF.
    pub fn read_reg(&mut self, offset: u16) -> u8 {
        match offset {
            reg::DATA if self.dlab() => self.divisor as u8,
            reg::DATA => {
                if let Some(byte) = self.rx.pop() {
                    self.last_rx = byte;
                }
                self.last_rx
            }
            reg::IER if self.dlab() => (self.divisor >> 8) as u8,
            reg::IER => self.ier,
            reg::IIR_FCR => {
                let id = self.interrupt_id();
                // Reading IIR acknowledges a THRE interrupt, but only when IIR is the
                // one reporting it: a higher-priority source shadows it and THRE
                // must still be there once that is serviced.
                if id == iir::THRE {
                    self.thre_pending = false;
                }
                id | if self.fifo_enabled {
                    iir::FIFO_ENABLED
                } else {
                    0
                }
            }
            reg::LCR => self.lcr,
            reg::MCR => self.mcr,
            reg::LSR => {
                let value = self.lsr();
                self.lsr_errors = 0;
                value
            }
            reg::MSR => {
                let value = self.msr();
                self.msr_deltas = 0;
                value
            }
            reg::SCR => self.scr,
            _ => 0xFF,
        }
    }

    /// Writes register `offset` (0..8). LSR and MSR are read-only here (their writable
    /// bits only exist for factory test); offsets past 7 are ignored.
    pub fn write_reg(&mut self, offset: u16, value: u8) {
        match offset {
            reg::DATA if self.dlab() => self.divisor = (self.divisor & 0xFF00) | u16::from(value),
            reg::DATA => self.transmit(value),
            reg::IER if self.dlab() => {
                self.divisor = (self.divisor & 0x00FF) | (u16::from(value) << 8);
            }
            reg::IER => {
                let old = self.ier;
                self.ier = value & 0x0F;
                // Enabling ETBEI while THR is empty (always, here) raises THRE even if
                // an IIR read had acknowledged it: the rising edge resamples. Linux's
                // startup test and Windows both depend on this. Disabling drops it.
                if (old ^ self.ier) & ier::THRE != 0 {
                    self.thre_pending = self.ier & ier::THRE != 0;
                }
            }
            reg::IIR_FCR => self.write_fcr(value),
            reg::LCR => self.lcr = value,
            reg::MCR => {
                let old_inputs = self.modem_inputs();
                self.mcr = value & mcr::MASK;
                let new_inputs = self.modem_inputs();
                self.note_modem_change(old_inputs, new_inputs);
            }
            reg::SCR => self.scr = value,
            _ => {}
        }
    }

    /// Delivers one byte from the outside world to the receiver.
    ///
    /// Returns `false` if the byte was not received cleanly: in loopback mode (the
    /// receiver listens to the transmitter, the input pin is disconnected; the byte is
    /// dropped), or on overrun (the FIFO is full, or the holding register is full with
    /// FIFOs disabled). Overrun sets LSR.OE; in FIFO mode the new byte is lost, without
    /// FIFOs it replaces the unread one, both as the datasheet describes. Callers that
    /// can hold input back should check [`Self::rx_space`] first.
    pub fn enqueue_input(&mut self, byte: u8) -> bool {
        if self.loopback() {
            return false;
        }
        self.receive(byte)
    }

    /// How many more bytes the receiver takes before overrunning.
    pub fn rx_space(&self) -> usize {
        self.rx_capacity() - self.rx.len
    }

    /// Bytes waiting in the receive FIFO.
    pub fn rx_len(&self) -> usize {
        self.rx.len
    }

    /// The level of the chip's INTR pin: some enabled source is pending.
    pub fn interrupt_pending_raw(&self) -> bool {
        self.interrupt_id() != iir::NONE
    }

    /// The IRQ line as a PC's interrupt controller sees it: INTR passed through the
    /// OUT2-enabled buffer. Loopback holds OUT2 inactive, so the line is low then too.
    pub fn interrupt_pending(&self) -> bool {
        self.mcr & mcr::OUT2 != 0 && !self.loopback() && self.interrupt_pending_raw()
    }

    /// The programmed divisor latch (DLM:DLL).
    pub fn divisor(&self) -> u16 {
        self.divisor
    }

    /// The baud rate the divisor selects, or `None` for the meaningless divisor 0.
    pub fn baud_rate(&self) -> Option<u32> {
        match self.divisor {
            0 => None,
            d => Some(BASE_BAUD / u32::from(d)),
        }
    }

    pub fn ier(&self) -> u8 {
        self.ier
    }

    pub fn lcr(&self) -> u8 {
        self.lcr
    }

    pub fn mcr(&self) -> u8 {
        self.mcr
    }

    pub fn fifo_enabled(&self) -> bool {
        self.fifo_enabled
    }

    pub fn loopback(&self) -> bool {
        self.mcr & mcr::LOOP != 0
    }

    fn dlab(&self) -> bool {
        self.lcr & lcr::DLAB != 0
    }

    fn rx_capacity(&self) -> usize {
        if self.fifo_enabled {
            FIFO_SIZE
        } else {
            1
        }
    }

    fn lsr(&self) -> u8 {
        // The transmitter is never busy: output is immediate.
        let mut value = lsr::THRE | lsr::TEMT | self.lsr_errors;
        if self.rx.len > 0 {
            value |= lsr::DR;
        }
        // Bit 7 (error in FIFO) tracks PE/FE/BI on queued bytes; none ever occur.
        value
    }

    /// The modem input lines as MSR bits 7:4.
    fn modem_inputs(&self) -> u8 {
        if self.loopback() {
            let m = self.mcr;
            let mut lines = 0;
            if m & mcr::RTS != 0 {
                lines |= msr::CTS;
            }
            if m & mcr::DTR != 0 {
                lines |= msr::DSR;
            }
            if m & mcr::OUT1 != 0 {
                lines |= msr::RI;
            }
            if m & mcr::OUT2 != 0 {
                lines |= msr::DCD;
            }
            lines
        } else {
            msr::CTS | msr::DSR | msr::DCD
        }
    }

    fn note_modem_change(&mut self, old: u8, new: u8) {
        // DCTS/DDSR/DDCD flag any change; TERI only RI's trailing (1 -> 0) edge.
        let changed = old ^ new;
        let mut deltas = 0;
        if changed & msr::CTS != 0 {
            deltas |= msr::DCTS;
        }
        if changed & msr::DSR != 0 {
            deltas |= msr::DDSR;
        }
        if changed & msr::DCD != 0 {
            deltas |= msr::DDCD;
        }
        if old & msr::RI != 0 && new & msr::RI == 0 {
            deltas |= msr::TERI;
        }
        self.msr_deltas |= deltas;
    }

    fn msr(&self) -> u8 {
        self.modem_inputs() | self.msr_deltas
    }

    fn write_fcr(&mut self, value: u8) {
        let enable = value & fcr::ENABLE != 0;
        // Changing the FIFO enable bit resets both FIFOs.
        if enable != self.fifo_enabled {
            self.rx.clear();
        }
        self.fifo_enabled = enable;
        // "FCR0 must be 1 when other FCR bits are written to or they will not be
        // programmed."
        if !enable {
            return;
        }
        if value & fcr::CLEAR_RX != 0 {
            self.rx.clear();
        }
        // CLEAR_TX: the transmit FIFO is always empty here.
        self.rx_trigger = match value & fcr::TRIGGER_MASK {
            0x00 => 1,
            0x40 => 4,
            0x80 => 8,
            _ => 14,
        };
    }

    fn transmit(&mut self, byte: u8) {
        if self.loopback() {
            // The serial output is held marking; the byte goes straight back in.
            self.receive(byte);
        } else {
            self.sink.write_byte(byte);
        }
        // Writing THR acknowledges THRE; the byte is then "sent" at once, leaving THR
        // empty again, which raises THRE anew.
        self.thre_pending = true;
    }

    fn receive(&mut self, byte: u8) -> bool {
        if self.rx.len < self.rx_capacity() {
            self.rx.push(byte);
            true
        } else {
            self.lsr_errors |= lsr::OE;
            if !self.fifo_enabled {
                self.rx.overwrite_last(byte);
            }
            false
        }
    }

    /// IIR bits 3:0 for the highest-priority pending, enabled source.
    fn interrupt_id(&self) -> u8 {
        if self.ier & ier::RLS != 0 && self.lsr_errors & lsr::ERRORS != 0 {
            iir::RLS
        } else if self.ier & ier::RDA != 0 && self.rx.len > 0 {
            if self.fifo_enabled && self.rx.len < usize::from(self.rx_trigger) {
                iir::TIMEOUT
            } else {
                iir::RDA
            }
        } else if self.ier & ier::THRE != 0 && self.thre_pending {
            iir::THRE
        } else if self.ier & ier::MS != 0 && self.msr_deltas != 0 {
            iir::MS
        } else {
            iir::NONE
        }
    }
}

impl<S: SerialSink> Uart16550<S> {
    /// The tag of [`Self::state`] (see [`crate::state`]).
    pub const STATE_TAG: Tag = *b"ns16550a";
    /// Bumped whenever the field list changes.
    pub const STATE_VERSION: u16 = 1;

    /// Every register (IER, LCR, MCR, SCR, the divisor latch, the FIFO mode and
    /// trigger level), the bytes waiting in the receive FIFO in order, the last byte
    /// received, the latched line-status and modem-status bits and the THR-empty
    /// interrupt source, in the format of [`crate::state`]. The sink is not part of
    /// it: bytes already transmitted are gone.
    pub fn state(&self) -> Vec<u8> {
        let mut w = Writer::new(&Self::STATE_TAG, Self::STATE_VERSION);
        w.u8(self.ier);
        w.u8(self.lcr);
        w.u8(self.mcr);
        w.u8(self.scr);
        w.u16(self.divisor);
        w.bool(self.fifo_enabled);
        w.u8(self.rx_trigger);
        w.u8(self.rx.len as u8);
        for i in 0..self.rx.len {
            w.u8(self.rx.buf[(self.rx.head + i) % FIFO_SIZE]);
        }
        w.u8(self.last_rx);
        w.u8(self.lsr_errors);
        w.u8(self.msr_deltas);
        w.bool(self.thre_pending);
        w.finish()
    }

    /// Takes back what [`Self::state`] returned; nothing changes on an error.
    pub fn restore(&mut self, data: &[u8]) -> Result<(), StateError> {
        let mut r = Reader::new(data, &Self::STATE_TAG, Self::STATE_VERSION)?;
        let [ier, lcr, mcr, scr] = r.array::<4>()?;
        r.check(ier & !0x0F == 0, "IER (bits 7:4 set)")?;
        r.check(mcr & !mcr::MASK == 0, "MCR (bits 7:5 set)")?;
        let divisor = r.u16()?;
        let fifo_enabled = r.bool()?;
        let rx_trigger = r.u8()?;
        r.check(
            matches!(rx_trigger, 1 | 4 | 8 | 14),
            "receive trigger level",
        )?;
        let len = usize::from(r.u8()?);
        let capacity = if fifo_enabled { FIFO_SIZE } else { 1 };
        r.check(len <= capacity, "receive FIFO length")?;
        let mut rx = RxFifo::new();
        for _ in 0..len {
            rx.push(r.u8()?);
        }
        let last_rx = r.u8()?;
        let lsr_errors = r.u8()?;
        // Overrun is the only line error a virtual wire has.
        r.check(lsr_errors & !lsr::OE == 0, "latched line status")?;
        let msr_deltas = r.u8()?;
        r.check(msr_deltas & !msr::DELTAS == 0, "latched modem status")?;
        let thre_pending = r.bool()?;
        r.end()?;
        self.ier = ier;
        self.lcr = lcr;
        self.mcr = mcr;
        self.scr = scr;
        self.divisor = divisor;
        self.fifo_enabled = fifo_enabled;
        self.rx_trigger = rx_trigger;
        self.rx = rx;
        self.last_rx = last_rx;
        self.lsr_errors = lsr_errors;
        self.msr_deltas = msr_deltas;
        self.thre_pending = thre_pending;
        Ok(())
    }
}

impl<S: SerialSink> PortDevice for Uart16550<S> {
    /// Wide accesses are split into byte accesses at consecutive offsets, as the ISA
    /// bus does for an 8-bit device.
    fn read(&mut self, offset: u16, size: u8) -> u32 {
        read_bytewise(offset, size, |off| self.read_reg(off))
    }

    fn write(&mut self, offset: u16, size: u8, value: u32) {
        write_bytewise(offset, size, value, |off, byte| self.write_reg(off, byte));
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::IrqEdge;
    use std::vec::Vec;

    #[derive(Default)]
    struct VecSink(Vec<u8>);

    impl SerialSink for VecSink {
        fn write_byte(&mut self, byte: u8) {
            self.0.push(byte);
        }
    }

    fn uart() -> Uart16550<VecSink> {
        Uart16550::new(VecSink::default())
    }

    /// `inb`/`outb` as a guest performs them, through the port-device interface.
    fn inb(u: &mut Uart16550<VecSink>, off: u16) -> u8 {
        u.read(off, 1) as u8
    }

    fn outb(u: &mut Uart16550<VecSink>, off: u16, value: u8) {
        u.write(off, 1, u32::from(value));
    }

    #[test]
    fn power_on_state() {
        let mut u = uart();
        assert_eq!(inb(&mut u, reg::IER), 0);
        assert_eq!(inb(&mut u, reg::IIR_FCR), iir::NONE);
        assert_eq!(inb(&mut u, reg::LCR), 0);
        assert_eq!(inb(&mut u, reg::MCR), 0);
        assert_eq!(inb(&mut u, reg::LSR), lsr::THRE | lsr::TEMT);
        assert_eq!(inb(&mut u, reg::MSR), msr::CTS | msr::DSR | msr::DCD);
        assert_eq!(inb(&mut u, reg::SCR), 0);
        assert!(!u.interrupt_pending_raw());
        assert!(!u.interrupt_pending());
        assert!(!u.fifo_enabled());
    }

    #[test]
    fn divisor_latch_behind_dlab() {
        let mut u = uart();
        outb(&mut u, reg::IER, ier::RDA);
        outb(&mut u, reg::LCR, lcr::DLAB | 0x03);
        outb(&mut u, reg::DATA, 0x01);
        outb(&mut u, reg::IER, 0x00);
        assert_eq!(u.divisor(), 1);
        assert_eq!(u.baud_rate(), Some(115_200));
        assert_eq!(inb(&mut u, reg::DATA), 0x01);
        assert_eq!(inb(&mut u, reg::IER), 0x00);
        // The latch is a full 16 bits.
        outb(&mut u, reg::IER, 0x04);
        outb(&mut u, reg::DATA, 0x80);
        assert_eq!(u.divisor(), 0x0480);
        assert_eq!(inb(&mut u, reg::IER), 0x04);
        // Neither THR nor IER was touched while DLAB was set.
        assert!(u.sink().0.is_empty());
        outb(&mut u, reg::LCR, 0x03);
        assert_eq!(inb(&mut u, reg::IER), ier::RDA);
        assert_eq!(u.lcr(), 0x03);
        outb(&mut u, reg::DATA, b'k');
        assert_eq!(u.sink().0, b"k");
        assert_eq!(u.divisor(), 0x0480);
        // Divisor 0 selects no meaningful rate.
        outb(&mut u, reg::LCR, lcr::DLAB);
        outb(&mut u, reg::DATA, 0);
        outb(&mut u, reg::IER, 0);
        assert_eq!(u.baud_rate(), None);
        // Default before anyone programs it: 9600 baud.
        assert_eq!(uart().baud_rate(), Some(9600));
    }

    #[test]
    fn thr_output_reaches_sink_in_order() {
        let mut u = uart();
        for &b in b"hello\r\n" {
            outb(&mut u, reg::DATA, b);
        }
        assert_eq!(u.sink().0, b"hello\r\n");
        // The transmitter is never busy.
        assert_eq!(inb(&mut u, reg::LSR), lsr::THRE | lsr::TEMT);
        assert_eq!(u.into_sink().0, b"hello\r\n");
    }

    #[test]
    fn sink_by_reference() {
        let mut out = VecSink::default();
        {
            let mut u = Uart16550::new(&mut out);
            u.write(reg::DATA, 1, u32::from(b'r'));
        }
        assert_eq!(out.0, b"r");
        let mut null = Uart16550::new(NullSink);
        null.write(reg::DATA, 1, 0x41);
        assert_eq!(null.read(reg::LSR, 1), u32::from(lsr::THRE | lsr::TEMT));
    }

    #[test]
    fn wide_accesses_split_into_byte_registers() {
        let mut u = uart();
        // outw 0x3F8, 0x0041: 'A' to THR, then 0 to IER.
        outb(&mut u, reg::IER, ier::RDA);
        u.write(reg::DATA, 2, 0x0041);
        assert_eq!(u.sink().0, b"A");
        assert_eq!(u.ier(), 0);
        outb(&mut u, reg::SCR, 0x5A);
        // inw at offset 6 reads MSR then SCR; offsets past the UART float high.
        assert_eq!(u.read(reg::MSR, 2), 0x5AB0);
        assert_eq!(u.read(reg::SCR, 2), 0xFF5A);
        assert_eq!(u.read(reg::LCR, 4), 0xB060_0000);
        // Writes past the end are dropped.
        u.write(reg::SCR, 2, 0xFFA5);
        assert_eq!(inb(&mut u, reg::SCR), 0xA5);
    }

    #[test]
    fn scratch_register_holds_any_byte() {
        let mut u = uart();
        for v in [0x00, 0x55, 0xAA, 0xFF] {
            outb(&mut u, reg::SCR, v);
            assert_eq!(inb(&mut u, reg::SCR), v);
        }
        // Independent of DLAB.
        outb(&mut u, reg::LCR, lcr::DLAB);
        assert_eq!(inb(&mut u, reg::SCR), 0xFF);
    }

    #[test]
    fn ier_and_mcr_keep_only_implemented_bits() {
        let mut u = uart();
        // Linux's existence probe: IER=0 reads 0, IER=0x0F reads 0x0F.
        outb(&mut u, reg::IER, 0);
        assert_eq!(inb(&mut u, reg::IER) & 0x0F, 0);
        outb(&mut u, reg::IER, 0x0F);
        assert_eq!(inb(&mut u, reg::IER) & 0x0F, 0x0F);
        outb(&mut u, reg::IER, 0xFF);
        assert_eq!(inb(&mut u, reg::IER), 0x0F);
        outb(&mut u, reg::MCR, 0xFF);
        assert_eq!(inb(&mut u, reg::MCR), 0x1F);
    }

    #[test]
    fn lsr_and_msr_ignore_writes() {
        let mut u = uart();
        outb(&mut u, reg::LSR, 0xFF);
        outb(&mut u, reg::MSR, 0x00);
        assert_eq!(inb(&mut u, reg::LSR), lsr::THRE | lsr::TEMT);
        assert_eq!(inb(&mut u, reg::MSR), 0xB0);
    }

    #[test]
    fn receive_without_fifo_holds_one_byte() {
        let mut u = uart();
        assert_eq!(u.rx_space(), 1);
        assert!(u.enqueue_input(b'a'));
        assert_eq!(inb(&mut u, reg::LSR), lsr::DR | lsr::THRE | lsr::TEMT);
        // The holding register is full: the new byte overwrites it and OE is set.
        assert!(!u.enqueue_input(b'b'));
        assert_eq!(
            inb(&mut u, reg::LSR),
            lsr::DR | lsr::OE | lsr::THRE | lsr::TEMT
        );
        // Reading LSR cleared OE.
        assert_eq!(inb(&mut u, reg::LSR), lsr::DR | lsr::THRE | lsr::TEMT);
        assert_eq!(inb(&mut u, reg::DATA), b'b');
        assert_eq!(inb(&mut u, reg::LSR) & lsr::DR, 0);
        // An empty RBR keeps reading the last byte, like the hardware latch.
        assert_eq!(inb(&mut u, reg::DATA), b'b');
    }

    #[test]
    fn receive_fifo_order_overrun_and_dr() {
        let mut u = uart();
        outb(&mut u, reg::IIR_FCR, fcr::ENABLE);
        assert!(u.fifo_enabled());
        assert_eq!(u.rx_space(), FIFO_SIZE);
        for i in 0..FIFO_SIZE as u8 {
            assert!(u.enqueue_input(b'a' + i));
        }
        assert_eq!(u.rx_space(), 0);
        assert_eq!(u.rx_len(), FIFO_SIZE);
        // The 17th byte is lost and flags an overrun.
        assert!(!u.enqueue_input(b'!'));
        assert_eq!(
            inb(&mut u, reg::LSR) & (lsr::DR | lsr::OE),
            lsr::DR | lsr::OE
        );
        assert_eq!(inb(&mut u, reg::LSR) & lsr::OE, 0);
        let mut got = Vec::new();
        while inb(&mut u, reg::LSR) & lsr::DR != 0 {
            got.push(inb(&mut u, reg::DATA));
        }
        assert_eq!(got, b"abcdefghijklmnop");
        assert_eq!(u.rx_len(), 0);
    }

    #[test]
    fn fcr_clears_and_mode_changes_reset_the_fifo() {
        let mut u = uart();
        outb(&mut u, reg::IIR_FCR, fcr::ENABLE);
        u.enqueue_input(1);
        u.enqueue_input(2);
        outb(
            &mut u,
            reg::IIR_FCR,
            fcr::ENABLE | fcr::CLEAR_RX | fcr::CLEAR_TX,
        );
        assert_eq!(u.rx_len(), 0);
        assert_eq!(inb(&mut u, reg::LSR) & lsr::DR, 0);
        // Disabling the FIFOs empties them and drops IIR[7:6].
        u.enqueue_input(3);
        outb(&mut u, reg::IIR_FCR, 0);
        assert_eq!(u.rx_len(), 0);
        assert_eq!(inb(&mut u, reg::IIR_FCR), iir::NONE);
        // FCR0=0: the other bits are not programmed (the trigger stays at 1 byte).
        outb(&mut u, reg::IIR_FCR, fcr::TRIGGER_MASK);
        assert!(!u.fifo_enabled());
        outb(&mut u, reg::IER, ier::RDA);
        u.enqueue_input(4);
        assert_eq!(inb(&mut u, reg::IIR_FCR), iir::RDA);
    }

    #[test]
    fn rda_interrupt_and_character_timeout() {
        let mut u = uart();
        outb(&mut u, reg::MCR, mcr::OUT2);
        outb(&mut u, reg::IER, ier::RDA);
        // Linux programs a 16550A with FIFOs on and an 8-byte trigger.
        outb(&mut u, reg::IIR_FCR, fcr::ENABLE | fcr::CLEAR_RX | 0x80);
        assert_eq!(inb(&mut u, reg::IIR_FCR), iir::FIFO_ENABLED | iir::NONE);
        assert!(!u.interrupt_pending());
        for &b in b"abc" {
            u.enqueue_input(b);
        }
        // Below the trigger: reported as an (already expired) character timeout.
        assert!(u.interrupt_pending());
        assert_eq!(inb(&mut u, reg::IIR_FCR), iir::FIFO_ENABLED | iir::TIMEOUT);
        for &b in b"defgh" {
            u.enqueue_input(b);
        }
        assert_eq!(inb(&mut u, reg::IIR_FCR), iir::FIFO_ENABLED | iir::RDA);
        // Reading IIR does not acknowledge received data; only draining does.
        assert_eq!(inb(&mut u, reg::IIR_FCR), iir::FIFO_ENABLED | iir::RDA);
        for _ in 0..7 {
            inb(&mut u, reg::DATA);
        }
        assert_eq!(inb(&mut u, reg::IIR_FCR), iir::FIFO_ENABLED | iir::TIMEOUT);
        assert_eq!(inb(&mut u, reg::DATA), b'h');
        assert_eq!(inb(&mut u, reg::IIR_FCR), iir::FIFO_ENABLED | iir::NONE);
        assert!(!u.interrupt_pending());
        // Data without ERBFI raises nothing.
        outb(&mut u, reg::IER, 0);
        u.enqueue_input(b'z');
        assert!(!u.interrupt_pending_raw());
    }

    #[test]
    fn overrun_raises_line_status_interrupt_until_lsr_read() {
        let mut u = uart();
        outb(&mut u, reg::IER, ier::RLS);
        u.enqueue_input(1);
        assert!(!u.interrupt_pending_raw());
        u.enqueue_input(2);
        assert_eq!(inb(&mut u, reg::IIR_FCR), iir::RLS);
        assert_eq!(inb(&mut u, reg::IIR_FCR), iir::RLS);
        assert_ne!(inb(&mut u, reg::LSR) & lsr::OE, 0);
        assert_eq!(inb(&mut u, reg::IIR_FCR), iir::NONE);
    }

    #[test]
    fn interrupt_priorities() {
        let mut u = uart();
        // Modem status: entering loopback drops CTS/DSR/DCD (MCR lines all 0).
        outb(&mut u, reg::MCR, mcr::LOOP);
        outb(&mut u, reg::MCR, 0);
        // Received data plus an overrun (no FIFO: the second byte overruns).
        u.enqueue_input(b'x');
        u.enqueue_input(b'y');
        // All four sources enabled; ETBEI 0 -> 1 also makes THRE pending.
        outb(&mut u, reg::IER, 0x0F);
        assert_eq!(inb(&mut u, reg::IIR_FCR), iir::RLS);
        inb(&mut u, reg::LSR);
        // Reading IIR while it reports RDA must not eat the pending THRE.
        assert_eq!(inb(&mut u, reg::IIR_FCR), iir::RDA);
        assert_eq!(inb(&mut u, reg::IIR_FCR), iir::RDA);
        assert_eq!(inb(&mut u, reg::DATA), b'y');
        assert_eq!(inb(&mut u, reg::IIR_FCR), iir::THRE);
        // That read acknowledged THRE.
        assert_eq!(inb(&mut u, reg::IIR_FCR), iir::MS);
        assert_eq!(
            inb(&mut u, reg::MSR),
            0xB0 | msr::DCTS | msr::DDSR | msr::DDCD
        );
        assert_eq!(inb(&mut u, reg::IIR_FCR), iir::NONE);
        assert_eq!(inb(&mut u, reg::MSR), 0xB0);
    }

    #[test]
    fn thre_follows_etbei_edges_and_transmits() {
        let mut u = uart();
        // A transmit with ETBEI clear raises nothing visible...
        outb(&mut u, reg::DATA, b'a');
        assert_eq!(inb(&mut u, reg::IIR_FCR), iir::NONE);
        // ...but enabling ETBEI with THR empty does.
        outb(&mut u, reg::IER, ier::THRE);
        assert_eq!(inb(&mut u, reg::IIR_FCR), iir::THRE);
        assert_eq!(inb(&mut u, reg::IIR_FCR), iir::NONE);
        // Rewriting the same IER value is not an edge.
        outb(&mut u, reg::IER, ier::THRE);
        assert_eq!(inb(&mut u, reg::IIR_FCR), iir::NONE);
        // Each transmitted byte leaves THR empty again.
        outb(&mut u, reg::DATA, b'b');
        assert_eq!(inb(&mut u, reg::IIR_FCR), iir::THRE);
        // Clearing ETBEI drops a pending THRE for good.
        outb(&mut u, reg::DATA, b'c');
        outb(&mut u, reg::IER, 0);
        assert_eq!(inb(&mut u, reg::IIR_FCR), iir::NONE);
        assert_eq!(u.sink().0, b"abc");
    }

    /// The probes in Linux's `serial8250_do_startup`, in order.
    #[test]
    fn linux_startup_probes_see_a_good_16550a() {
        let mut u = uart();
        // UART_BUG_THRE test: THRE must reassert when ETBEI is toggled.
        outb(&mut u, reg::IER, ier::THRE);
        let iir1 = inb(&mut u, reg::IIR_FCR);
        outb(&mut u, reg::IER, 0);
        outb(&mut u, reg::IER, ier::THRE);
        let iir2 = inb(&mut u, reg::IIR_FCR);
        outb(&mut u, reg::IER, 0);
        let bug_thre = iir1 & iir::NONE == 0 && iir2 & iir::NONE != 0;
        assert!(!bug_thre);
        assert_eq!(iir2, iir::THRE);

        // Clear interrupts: LSR, RX, IIR, MSR.
        inb(&mut u, reg::LSR);
        inb(&mut u, reg::DATA);
        inb(&mut u, reg::IIR_FCR);
        inb(&mut u, reg::MSR);
        outb(&mut u, reg::LCR, 0x03);
        outb(&mut u, reg::MCR, mcr::OUT2 | mcr::RTS | mcr::DTR);

        // UART_BUG_TXEN test: enabling THRI with an idle transmitter must interrupt.
        outb(&mut u, reg::IER, ier::THRE);
        let lsr_v = inb(&mut u, reg::LSR);
        let iir_v = inb(&mut u, reg::IIR_FCR);
        outb(&mut u, reg::IER, 0);
        let bug_txen = lsr_v & lsr::TEMT != 0 && iir_v & iir::NONE != 0;
        assert!(!bug_txen);
    }

    /// Linux's `autoconfig`: existence test, loopback test, FIFO identification.
    #[test]
    fn linux_autoconfig_identifies_16550a() {
        let mut u = uart();
        let saved = inb(&mut u, reg::IER);
        outb(&mut u, reg::IER, 0);
        let s2 = inb(&mut u, reg::IER) & 0x0F;
        outb(&mut u, reg::IER, 0x0F);
        let s3 = inb(&mut u, reg::IER) & 0x0F;
        outb(&mut u, reg::IER, saved);
        assert_eq!((s2, s3), (0, 0x0F));

        let save_mcr = inb(&mut u, reg::MCR);
        outb(&mut u, reg::MCR, mcr::LOOP | 0x0A);
        let status1 = inb(&mut u, reg::MSR) & 0xF0;
        outb(&mut u, reg::MCR, save_mcr);
        assert_eq!(status1, 0x90);

        outb(&mut u, reg::LCR, 0xBF);
        outb(&mut u, reg::IIR_FCR, 0); // EFR on a 16650; FCR here
        outb(&mut u, reg::LCR, 0);
        outb(&mut u, reg::IIR_FCR, fcr::ENABLE);
        assert_eq!(inb(&mut u, reg::IIR_FCR) >> 6, 3);
        // No 16750 64-byte FIFO bit, no EFR: bits 5:4 read 0.
        assert_eq!(inb(&mut u, reg::IIR_FCR) & 0x30, 0);
    }

    /// The interrupt-driven transmit path of Linux's 8250 driver, watched through the
    /// edge detector the VM uses.
    #[test]
    fn linux_interrupt_driven_transmit() {
        let mut u = uart();
        let mut edge = IrqEdge::new();
        outb(&mut u, reg::LCR, 0x03);
        outb(
            &mut u,
            reg::IIR_FCR,
            fcr::ENABLE | fcr::CLEAR_RX | fcr::CLEAR_TX | 0x80,
        );
        outb(&mut u, reg::MCR, mcr::OUT2 | mcr::RTS | mcr::DTR);
        assert!(!edge.update(u.interrupt_pending()));

        // start_tx: set THRI -> the IRQ rises.
        outb(&mut u, reg::IER, ier::RDA | ier::THRE);
        assert!(edge.update(u.interrupt_pending()));

        let message = b"0123456789abcdefghijklmnopqrstuvwxyz\n";
        let mut pending = &message[..];
        let mut interrupts = 1;
        loop {
            // serial8250_handle_irq
            let iir_v = inb(&mut u, reg::IIR_FCR);
            assert_eq!(iir_v, iir::FIFO_ENABLED | iir::THRE);
            // The IIR read acknowledged THRE: the line fell.
            assert!(!edge.update(u.interrupt_pending()));
            assert!(!edge.level());
            let lsr_v = inb(&mut u, reg::LSR);
            assert_ne!(lsr_v & lsr::THRE, 0);
            // serial8250_tx_chars: up to a FIFO's worth per interrupt.
            let n = pending.len().min(FIFO_SIZE);
            for &b in &pending[..n] {
                outb(&mut u, reg::DATA, b);
            }
            pending = &pending[n..];
            if pending.is_empty() {
                // __stop_tx: clear THRI.
                outb(&mut u, reg::IER, ier::RDA);
                assert!(!edge.update(u.interrupt_pending()));
                break;
            }
            // THR emptied again: a fresh rising edge for the next round.
            assert!(edge.update(u.interrupt_pending()));
            interrupts += 1;
        }
        assert_eq!(interrupts, 3);
        assert_eq!(u.sink().0, message);
        assert_eq!(inb(&mut u, reg::IIR_FCR), iir::FIFO_ENABLED | iir::NONE);
    }

    /// Linux's polled console write saves IER, clears it, writes, restores it.
    #[test]
    fn console_write_restoring_ier_reraises_thre() {
        let mut u = uart();
        outb(&mut u, reg::MCR, mcr::OUT2);
        outb(&mut u, reg::IER, ier::RDA | ier::THRE);
        assert_eq!(inb(&mut u, reg::IIR_FCR), iir::THRE);
        let saved = inb(&mut u, reg::IER);
        outb(&mut u, reg::IER, 0);
        for &b in b"log\n" {
            while inb(&mut u, reg::LSR) & lsr::THRE == 0 {}
            outb(&mut u, reg::DATA, b);
        }
        assert!(!u.interrupt_pending());
        outb(&mut u, reg::IER, saved);
        assert!(u.interrupt_pending());
        assert_eq!(inb(&mut u, reg::IIR_FCR), iir::THRE);
        assert_eq!(u.sink().0, b"log\n");
    }

    #[test]
    fn loopback_routes_thr_to_receiver() {
        let mut u = uart();
        outb(&mut u, reg::IIR_FCR, fcr::ENABLE);
        outb(&mut u, reg::MCR, mcr::LOOP);
        assert!(u.loopback());
        for &b in b"ping" {
            outb(&mut u, reg::DATA, b);
        }
        assert!(u.sink().0.is_empty());
        assert_ne!(inb(&mut u, reg::LSR) & lsr::DR, 0);
        // External input is disconnected while looping back.
        assert!(!u.enqueue_input(b'X'));
        let mut got = Vec::new();
        while inb(&mut u, reg::LSR) & lsr::DR != 0 {
            got.push(inb(&mut u, reg::DATA));
        }
        assert_eq!(got, b"ping");
        // Looped-back bytes overrun the FIFO like any others.
        for i in 0..=FIFO_SIZE as u8 {
            outb(&mut u, reg::DATA, i);
        }
        assert_eq!(inb(&mut u, reg::LSR) & lsr::OE, lsr::OE);
        // Leaving loopback reconnects both ends.
        outb(&mut u, reg::MCR, 0);
        outb(&mut u, reg::IIR_FCR, fcr::ENABLE | fcr::CLEAR_RX);
        outb(&mut u, reg::DATA, b'o');
        assert_eq!(u.sink().0, b"o");
        assert!(u.enqueue_input(b'i'));
        assert_eq!(inb(&mut u, reg::DATA), b'i');
    }

    #[test]
    fn loopback_modem_lines_and_deltas() {
        let mut u = uart();
        outb(&mut u, reg::MCR, mcr::LOOP);
        // Entering loopback: CTS, DSR, DCD fell.
        assert_eq!(inb(&mut u, reg::MSR), msr::DCTS | msr::DDSR | msr::DDCD);
        outb(
            &mut u,
            reg::MCR,
            mcr::LOOP | mcr::DTR | mcr::RTS | mcr::OUT1 | mcr::OUT2,
        );
        assert_eq!(
            inb(&mut u, reg::MSR),
            msr::CTS | msr::DSR | msr::RI | msr::DCD | msr::DCTS | msr::DDSR | msr::DDCD
        );
        // RI rising is not an event; RI falling (trailing edge) is TERI.
        outb(
            &mut u,
            reg::MCR,
            mcr::LOOP | mcr::DTR | mcr::RTS | mcr::OUT2,
        );
        assert_eq!(
            inb(&mut u, reg::MSR),
            msr::CTS | msr::DSR | msr::DCD | msr::TERI
        );
        outb(
            &mut u,
            reg::MCR,
            mcr::LOOP | mcr::DTR | mcr::RTS | mcr::OUT1 | mcr::OUT2,
        );
        assert_eq!(
            inb(&mut u, reg::MSR),
            msr::CTS | msr::DSR | msr::RI | msr::DCD
        );
        // Modem status interrupt, cleared by reading MSR.
        outb(&mut u, reg::IER, ier::MS);
        outb(&mut u, reg::MCR, mcr::LOOP | mcr::RTS);
        assert!(u.interrupt_pending_raw());
        assert_eq!(inb(&mut u, reg::IIR_FCR), iir::MS);
        inb(&mut u, reg::MSR);
        assert_eq!(inb(&mut u, reg::IIR_FCR), iir::NONE);
    }

    #[test]
    fn out2_gates_the_irq_line() {
        let mut u = uart();
        outb(&mut u, reg::IER, ier::THRE);
        assert!(u.interrupt_pending_raw());
        assert!(!u.interrupt_pending());
        outb(&mut u, reg::MCR, mcr::OUT2);
        assert!(u.interrupt_pending());
        // Loopback forces OUT2 inactive at the pin, whatever MCR.3 says.
        outb(&mut u, reg::MCR, mcr::OUT2 | mcr::LOOP);
        assert!(u.interrupt_pending_raw());
        assert!(!u.interrupt_pending());
        outb(&mut u, reg::MCR, mcr::OUT2);
        assert!(u.interrupt_pending());
        // Acknowledging the source drops both levels.
        inb(&mut u, reg::IIR_FCR);
        assert!(!u.interrupt_pending_raw());
        assert!(!u.interrupt_pending());
    }

    #[test]
    fn reset_restores_power_on_state_but_keeps_output() {
        let mut u = uart();
        outb(&mut u, reg::LCR, lcr::DLAB);
        outb(&mut u, reg::DATA, 3);
        outb(&mut u, reg::LCR, 0x03);
        outb(&mut u, reg::IIR_FCR, fcr::ENABLE);
        outb(&mut u, reg::IER, 0x0F);
        outb(&mut u, reg::MCR, mcr::OUT2 | mcr::LOOP);
        outb(&mut u, reg::SCR, 9);
        outb(&mut u, reg::DATA, 1);
        outb(&mut u, reg::MCR, mcr::OUT2);
        outb(&mut u, reg::DATA, b'z');
        u.reset();
        assert_eq!(u.sink().0, b"z");
        assert_eq!(u.baud_rate(), Some(9600));
        assert_eq!(u.read(reg::DATA, 4), 0x0001_0000); // LCR, IIR, IER, RBR
        assert_eq!(u.read(reg::MCR, 4), 0x00B0_6000);
        assert_eq!(inb(&mut u, reg::IIR_FCR), iir::NONE);
        assert_eq!(u.rx_len(), 0);
        assert_eq!(u.mcr(), 0);
    }

    impl crate::state::testing::Snap for Uart16550<VecSink> {
        fn snap(&self) -> Vec<u8> {
            self.state()
        }
        fn load(&mut self, data: &[u8]) -> Result<(), crate::StateError> {
            self.restore(data)
        }
    }

    /// A random guest access or console input byte; returns what the guest and the
    /// interrupt controller would observe.
    fn random_op(u: &mut Uart16550<VecSink>, rng: &mut crate::state::testing::Rng) -> (u32, bool) {
        let off = rng.below(8) as u16;
        let v = match rng.below(5) {
            0 | 1 => u.read(off, 1),
            2 => {
                // Keep loopback and DLAB rarer so the other paths run too.
                let mut value = rng.byte();
                if off == reg::MCR && !rng.chance(4) {
                    value &= !mcr::LOOP;
                }
                if off == reg::LCR && !rng.chance(4) {
                    value &= !lcr::DLAB;
                }
                u.write(off, 1, value.into());
                0
            }
            _ => u32::from(u.enqueue_input(rng.byte())),
        };
        (v, u.interrupt_pending())
    }

    /// FIFOs on at trigger level 8 with 5 bytes waiting and an overrun latched,
    /// every interrupt enabled, THRE pending, modem deltas latched, a divisor and
    /// the scratch register set.
    fn busy_uart() -> Uart16550<VecSink> {
        let mut u = uart();
        outb(&mut u, reg::LCR, 0x83);
        outb(&mut u, reg::DATA, 0x01);
        outb(&mut u, reg::IER, 0x00);
        outb(&mut u, reg::LCR, 0x03);
        outb(&mut u, reg::IIR_FCR, 0x87);
        outb(&mut u, reg::MCR, mcr::LOOP | mcr::OUT2 | mcr::RTS);
        outb(&mut u, reg::MCR, mcr::OUT2 | mcr::DTR | mcr::RTS);
        outb(&mut u, reg::SCR, 0x5A);
        for b in 0..18u8 {
            u.enqueue_input(b'a' + b);
        }
        for _ in 0..11 {
            inb(&mut u, reg::DATA);
        }
        outb(&mut u, reg::IER, 0x0F);
        outb(&mut u, reg::DATA, b'x');
        u
    }

    #[test]
    fn snapshot_restores_identical_behaviour() {
        let mut a = busy_uart();
        let snap = a.state();
        assert_eq!(&snap[..8], b"ns16550a");
        let mut b = uart();
        b.restore(&snap).unwrap();
        assert_eq!(b.state(), snap);
        assert_eq!((b.rx_len(), b.divisor(), b.fifo_enabled()), (5, 1, true));
        // The line status interrupt (overrun) comes first, then the data.
        assert_eq!(inb(&mut b, reg::IIR_FCR), 0xC0 | iir::RLS);
        assert_eq!(inb(&mut a, reg::IIR_FCR), 0xC0 | iir::RLS);
        crate::state::testing::lockstep(&mut a, &mut b, 5, random_op);
        assert_eq!(a.state(), b.state());
        // What the restored one sent is what the original sent after the snapshot.
        assert_eq!(&a.sink().0[1..], &b.sink().0[..]);
    }

    #[test]
    fn snapshot_refusals_and_corruption() {
        let snap = busy_uart().state();
        let mut u = uart();
        crate::state::testing::check_refusals(&mut u, &snap, |u| {
            let mut rng = crate::state::testing::Rng::new(6);
            for _ in 0..60 {
                random_op(u, &mut rng);
            }
        });
        // More bytes than a disabled FIFO's one holding register.
        let mut bad = snap.clone();
        bad[10 + 6] = 0;
        assert!(matches!(
            u.restore(&bad),
            Err(crate::StateError::Invalid { what, .. }) if what.contains("FIFO")
        ));
    }
}
