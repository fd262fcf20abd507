//! The PC/AT pair of 8259A programmable interrupt controllers: the master at ports
//! 0x20/0x21 (IRQ 0-7), the slave at 0xA0/0xA1 (IRQ 8-15) cascaded into the master's
//! IR2, and the PIIX/ICH edge/level control registers (ELCR) at 0x4D0/0x4D1.
//!
//! This is the interrupt controller a guest uses when it runs without APICs (Linux with
//! `noapic nolapic`, or a small kernel that never touches the APIC). The model follows
//! the Intel 8259A datasheet (order no. 231468): the ICW1-ICW4 initialisation
//! sequence, OCW1 masking, every OCW2 EOI/rotation command, OCW3 register select,
//! poll and special mask mode, fixed and rotating priority, auto-EOI, special fully
//! nested mode, and the spurious IR7 an INTA cycle gets when the request has gone.
//! The ELCR follows the Intel PIIX3 datasheet (order no. 290550), section 4.1.
//!
//! ## What the VMM does with it
//!
//! * Devices drive input lines with [`Pic8259::set_irq`] (a level; rising edges latch
//!   IRR) or [`Pic8259::pulse_irq`] (one edge, what a timer tick is).
//! * Before entering the guest, [`Pic8259::pending_vector`] says whether INTR is
//!   asserted and what it would deliver. When the guest can take an interrupt (IF=1,
//!   no interrupt shadow), [`Pic8259::acknowledge`] runs the INTA cycle and returns the
//!   vector to inject; if the guest cannot, the VMM asks for an interrupt-window exit.
//! * Port accesses go to [`Pic8259::port_io`] with the absolute port number: the pair
//!   decodes three separate two-port ranges ([`MASTER_PORT`], [`SLAVE_PORT`],
//!   [`ELCR_PORT`]), so a [`crate::PortMap`] entry per range can all name this device.
//!
//! ## Simplifications (each one what QEMU and Bochs do as well)
//!
//! * An edge-triggered request stays latched in IRR if the line drops again before
//!   INTA, so a pulse is enough. (On the chip the line must stay high until the first
//!   INTA pulse, or the CPU gets a spurious IR7.)
//! * ICW1 also clears the in-service register, so a re-initialisation starts clean.
//! * Only 8086 mode exists: ICW4's uPM bit is ignored (MCS-80/85 vectors are call
//!   instructions that no PC guest uses), as are the buffered-mode bits.
//! * The cascade works only through IR2 (the PC wiring): the slave is selected when
//!   the master acknowledges IR2 while its ICW3 marks IR2 as having a slave.

use alloc::vec::Vec;

use crate::bus::{read_bytewise, write_bytewise};
use crate::state::{Reader, StateError, Tag, Writer};

/// The master's command (A0=0) port; its data (A0=1) port is the next one.
pub const MASTER_PORT: u16 = 0x20;
/// The slave's command port; its data port is the next one.
pub const SLAVE_PORT: u16 = 0xA0;
/// The master's ELCR (IRQ 0-7); the slave's (IRQ 8-15) is the next port.
pub const ELCR_PORT: u16 = 0x4D0;
/// How many consecutive ports each of the three ranges spans.
pub const PORT_COUNT: u16 = 2;
/// The master input the slave's INT output is wired to.
pub const CASCADE_IRQ: u8 = 2;
/// The vector base a PC BIOS gives the master (INT 08h-0Fh).
pub const BIOS_MASTER_BASE: u8 = 0x08;
/// The vector base a PC BIOS gives the slave (INT 70h-77h).
pub const BIOS_SLAVE_BASE: u8 = 0x70;

/// ELCR bits that can be set. IRQ 0, 1, 2 (timer, keyboard, cascade) and IRQ 8, 13
/// (RTC, FPU error) are edge-only on PIIX-family chipsets.
const MASTER_ELCR_MASK: u8 = 0xF8;
const SLAVE_ELCR_MASK: u8 = 0xDE;

/// Where a chip is in its initialisation sequence: which ICW the next A0=1 write is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Init {
    Ready,
    Icw2,
    Icw3,
    Icw4,
}

/// One 8259A.
#[derive(Clone, Debug)]
struct Chip {
    /// Interrupt request register: requests latched, not yet acknowledged.
    irr: u8,
    /// In-service register.
    isr: u8,
    /// Interrupt mask register (OCW1).
    imr: u8,
    /// The input pins' current levels, for edge detection and level mode.
    lines: u8,
    /// Lines the ELCR makes level-triggered.
    elcr: u8,
    elcr_mask: u8,
    /// Vector base (ICW2, bits 7:3).
    base: u8,
    /// The IR line that currently has the highest priority: 0 until a rotation.
    top: u8,
    init: Init,
    /// ICW1 LTIM: every line level-triggered.
    ltim: bool,
    /// ICW1 SNGL: no cascade, no ICW3.
    single: bool,
    /// ICW1 IC4: an ICW4 follows.
    ic4: bool,
    /// ICW3: on the master, the lines that have a slave; on the slave, its ID.
    icw3: u8,
    auto_eoi: bool,
    /// Rotate priority on each automatic EOI (OCW2 R=1 SL=0 EOI=0).
    rotate_on_aeoi: bool,
    /// Special fully nested mode (ICW4 SFNM).
    sfnm: bool,
    /// OCW3 RIS: the command port reads ISR (else IRR).
    read_isr: bool,
    /// OCW3 P: the next command-port read is a poll.
    poll: bool,
    /// OCW3 special mask mode.
    special_mask: bool,
    is_master: bool,
}

impl Chip {
    /// The state a BIOS leaves: initialised for 8086 mode, edge-triggered, cascaded,
    /// normal EOI, with `imr` masked.
    const fn bios(is_master: bool, base: u8, imr: u8) -> Self {
        Self {
            irr: 0,
            isr: 0,
            imr,
            lines: 0,
            elcr: 0,
            elcr_mask: if is_master {
                MASTER_ELCR_MASK
            } else {
                SLAVE_ELCR_MASK
            },
            base,
            top: 0,
            init: Init::Ready,
            ltim: false,
            single: false,
            ic4: true,
            icw3: if is_master {
                1 << CASCADE_IRQ
            } else {
                CASCADE_IRQ
            },
            auto_eoi: false,
            rotate_on_aeoi: false,
            sfnm: false,
            read_isr: false,
            poll: false,
            special_mask: false,
            is_master,
        }
    }

    /// Lines whose IRR follows the input level rather than latching edges.
    fn level_lines(&self) -> u8 {
        if self.ltim {
            0xFF
        } else {
            self.elcr
        }
    }

    fn set_line(&mut self, irq: u8, level: bool) {
        let bit = 1u8 << irq;
        if self.level_lines() & bit != 0 {
            if level {
                self.irr |= bit;
            } else {
                self.irr &= !bit;
            }
        } else if level && self.lines & bit == 0 {
            // Edge mode: only the 0 -> 1 transition requests. The latch then holds
            // until INTA (see the module notes on lines that drop early).
            self.irr |= bit;
        }
        if level {
            self.lines |= bit;
        } else {
            self.lines &= !bit;
        }
    }

    /// Rank of the highest-priority line set in `bits`: 0 is the highest priority
    /// (line `top`), 7 the lowest; 8 when `bits` is empty.
    fn rank(&self, bits: u8) -> u8 {
        (0..8)
            .find(|r| bits & (1 << ((r + self.top) & 7)) != 0)
            .unwrap_or(8)
    }

    fn line_of_rank(&self, rank: u8) -> u8 {
        (rank + self.top) & 7
    }

    /// The line this chip's INT output is asserted for, if any: the highest-priority
    /// unmasked request that outranks everything in service.
    fn highest_request(&self) -> Option<u8> {
        let request = self.rank(self.irr & !self.imr);
        if request == 8 {
            return None;
        }
        let mut blocking = self.isr;
        if self.special_mask {
            // Special mask mode: a masked in-service level no longer holds off the
            // others (that is what a handler uses it for: let lower levels in).
            blocking &= !self.imr;
        }
        if self.sfnm && self.is_master {
            // Special fully nested mode: a slave's in-service cascade line does not
            // block further (higher-priority) requests from the same slave.
            blocking &= !self.icw3;
        }
        (request < self.rank(blocking)).then(|| self.line_of_rank(request))
    }

    /// The INTA cycle's effect on this chip for `irq`.
    fn acknowledge(&mut self, irq: u8) {
        let bit = 1u8 << irq;
        if self.auto_eoi {
            // AEOI: the in-service bit is set and cleared again by the second INTA
            // pulse, so it never shows.
            if self.rotate_on_aeoi {
                self.top = (irq + 1) & 7;
            }
        } else {
            self.isr |= bit;
        }
        if self.level_lines() & bit == 0 {
            self.irr &= !bit;
        }
    }

    /// Non-specific EOI: clears the highest-priority in-service bit.
    fn eoi_highest(&mut self, rotate: bool) {
        let rank = self.rank(self.isr);
        if rank < 8 {
            let irq = self.line_of_rank(rank);
            self.isr &= !(1 << irq);
            if rotate {
                self.top = (irq + 1) & 7;
            }
        }
    }

    fn write_command(&mut self, value: u8) {
        if value & 0x10 != 0 {
            self.icw1(value);
        } else if value & 0x08 != 0 {
            self.ocw3(value);
        } else {
            self.ocw2(value);
        }
    }

    fn icw1(&mut self, value: u8) {
        // Datasheet: the edge-sense circuit is reset (a line must go low to high
        // again), IMR is cleared, IR7 gets the lowest priority, special mask mode is
        // cleared and status read selects IRR; without IC4 all ICW4 functions are 0.
        self.ltim = value & 0x08 != 0;
        self.single = value & 0x02 != 0;
        self.ic4 = value & 0x01 != 0;
        self.irr &= self.level_lines();
        self.irr |= self.lines & self.level_lines();
        self.isr = 0;
        self.imr = 0;
        self.top = 0;
        self.read_isr = false;
        self.poll = false;
        self.special_mask = false;
        self.auto_eoi = false;
        self.rotate_on_aeoi = false;
        self.sfnm = false;
        self.init = Init::Icw2;
    }

    fn ocw2(&mut self, value: u8) {
        let level = value & 7;
        match value >> 5 {
            0b000 => self.rotate_on_aeoi = false,
            0b100 => self.rotate_on_aeoi = true,
            0b001 => self.eoi_highest(false),
            0b101 => self.eoi_highest(true),
            0b011 => self.isr &= !(1 << level),
            0b111 => {
                self.isr &= !(1 << level);
                self.top = (level + 1) & 7;
            }
            // Set priority: `level` becomes the lowest.
            0b110 => self.top = (level + 1) & 7,
            // 0b010: no operation.
            _ => {}
        }
    }

    fn ocw3(&mut self, value: u8) {
        // RR=1 selects the register RIS names; RR=0 leaves the selection alone.
        if value & 0x02 != 0 {
            self.read_isr = value & 0x01 != 0;
        }
        if value & 0x04 != 0 {
            self.poll = true;
        }
        // ESMM=1 makes SMM take effect.
        if value & 0x40 != 0 {
            self.special_mask = value & 0x20 != 0;
        }
    }

    fn write_data(&mut self, value: u8) {
        self.init = match self.init {
            Init::Ready => {
                self.imr = value;
                Init::Ready
            }
            Init::Icw2 => {
                // 8086 mode: T7-T3; the low three bits come from the IR level.
                self.base = value & 0xF8;
                if !self.single {
                    Init::Icw3
                } else if self.ic4 {
                    Init::Icw4
                } else {
                    Init::Ready
                }
            }
            Init::Icw3 => {
                self.icw3 = value;
                if self.ic4 {
                    Init::Icw4
                } else {
                    Init::Ready
                }
            }
            Init::Icw4 => {
                self.auto_eoi = value & 0x02 != 0;
                self.sfnm = value & 0x10 != 0;
                Init::Ready
            }
        };
    }

    fn read_command(&mut self) -> u8 {
        if self.poll {
            // Poll: this read is the INTA. Bit 7 says whether a request was pending,
            // bits 2:0 which level.
            self.poll = false;
            return match self.highest_request() {
                Some(irq) => {
                    self.acknowledge(irq);
                    0x80 | irq
                }
                None => 0,
            };
        }
        if self.read_isr {
            self.isr
        } else {
            self.irr
        }
    }

    fn write_elcr(&mut self, value: u8) {
        self.elcr = value & self.elcr_mask;
        // A line that just became level-triggered requests while it is high; one that
        // became edge-triggered keeps what it latched.
        self.irr |= self.lines & self.elcr;
    }
}

/// The master/slave 8259A pair of a PC.
///
/// IRQ numbers are 0-15: 0-7 on the master, 8-15 on the slave. IRQ 2 is the cascade,
/// driven by the slave's INT output; [`Self::set_irq`] ignores it (ISA's IRQ 2 pin is
/// wired to IRQ 9 on an AT).
#[derive(Clone, Debug)]
pub struct Pic8259 {
    master: Chip,
    slave: Chip,
}

impl Default for Pic8259 {
    fn default() -> Self {
        Self::new()
    }
}

impl Pic8259 {
    /// The pair as a PC BIOS leaves it: initialised (8086 mode, edge-triggered,
    /// cascade on IR2, normal EOI) with vector bases 0x08 and 0x70, and every line
    /// masked except the cascade. Guests here start without firmware, so this is the
    /// state a kernel that expects a BIOS to have run will find; Linux and anything
    /// else that takes over the PIC re-initialise it anyway.
    pub const fn new() -> Self {
        Self {
            master: Chip::bios(true, BIOS_MASTER_BASE, !(1 << CASCADE_IRQ)),
            slave: Chip::bios(false, BIOS_SLAVE_BASE, 0xFF),
        }
    }

    /// Back to [`Self::new`]'s state (a machine reset), dropping every request.
    pub fn reset(&mut self) {
        *self = Self::new();
    }

    /// Sets input line `irq` (0-15) to `level`. Edge-triggered lines latch a request
    /// on the 0 -> 1 transition; level-triggered ones (ELCR or ICW1 LTIM) request
    /// while high. IRQ 2 and numbers past 15 are ignored.
    pub fn set_irq(&mut self, irq: u8, level: bool) {
        match irq {
            0 | 1 | 3..=7 => self.master.set_line(irq, level),
            8..=15 => self.slave.set_line(irq - 8, level),
            _ => return,
        }
        self.update_cascade();
    }

    /// One edge on `irq`: raise then lower the line. What the VMM does for each
    /// timer tick or other event of an edge-triggered ISA device.
    pub fn pulse_irq(&mut self, irq: u8) {
        self.set_irq(irq, true);
        self.set_irq(irq, false);
    }

    /// Whether the master's INT output (the CPU's INTR) is asserted.
    pub fn interrupt_output(&self) -> bool {
        self.master.highest_request().is_some()
    }

    /// The vector an INTA cycle would deliver now, or `None` while INTR is low.
    /// Does not change any state.
    pub fn pending_vector(&self) -> Option<u8> {
        let irq = self.master.highest_request()?;
        if irq == CASCADE_IRQ && self.cascaded() {
            let slave = self.slave.highest_request().unwrap_or(7);
            Some(self.slave.base | slave)
        } else {
            Some(self.master.base | irq)
        }
    }

    /// The INTA cycle for an interrupt the VMM is about to inject: moves the request
    /// from IRR to ISR (unless in auto-EOI mode) on the master and, through IR2, on
    /// the slave, and returns the vector. `None` while INTR is low: a CPU does not run
    /// INTA then, and the VMM injects nothing.
    ///
    /// A spurious vector is still possible: when the master latched the cascade line
    /// but the slave's request has since been masked, the slave answers with its IR7
    /// vector (IRQ 15) without setting its ISR, while the master's IR2 is in service
    /// and needs its EOI, exactly as on the hardware.
    pub fn acknowledge(&mut self) -> Option<u8> {
        self.interrupt_output().then(|| self.inta())
    }

    /// A raw INTA cycle, whether or not INTR is asserted: with no request left the
    /// master answers with its IR7 vector (spurious IRQ 7) and sets no ISR bit. For a
    /// VMM that has committed to an injection it sampled earlier; most callers want
    /// [`Self::acknowledge`].
    pub fn inta(&mut self) -> u8 {
        let vector = match self.master.highest_request() {
            None => self.master.base | 7,
            Some(irq) => {
                self.master.acknowledge(irq);
                if irq == CASCADE_IRQ && self.cascaded() {
                    match self.slave.highest_request() {
                        Some(slave) => {
                            self.slave.acknowledge(slave);
                            self.slave.base | slave
                        }
                        None => self.slave.base | 7,
                    }
                } else {
                    self.master.base | irq
                }
            }
        };
        self.update_cascade();
        vector
    }

    /// A byte read from `port` (0x20, 0x21, 0xA0, 0xA1, 0x4D0, 0x4D1), with its side
    /// effects (a poll read acknowledges). Other ports read 0xFF.
    pub fn read_port(&mut self, port: u16) -> u8 {
        let value = match port {
            0x20 => self.master.read_command(),
            0x21 => self.master.imr,
            0xA0 => self.slave.read_command(),
            0xA1 => self.slave.imr,
            0x4D0 => self.master.elcr,
            0x4D1 => self.slave.elcr,
            _ => return 0xFF,
        };
        self.update_cascade();
        value
    }

    /// A byte written to `port`; ports other than the six the pair decodes are ignored.
    pub fn write_port(&mut self, port: u16, value: u8) {
        match port {
            0x20 => self.master.write_command(value),
            0x21 => self.master.write_data(value),
            0xA0 => self.slave.write_command(value),
            0xA1 => self.slave.write_data(value),
            0x4D0 => self.master.write_elcr(value),
            0x4D1 => self.slave.write_elcr(value),
            _ => return,
        }
        self.update_cascade();
    }

    /// One port-I/O exit at absolute `port`. Wide accesses become byte accesses at
    /// consecutive ports, as the ISA bus splits them.
    pub fn port_io(&mut self, port: u16, size: u8, write: bool, value: u32) -> u32 {
        if write {
            write_bytewise(port, size, value, |p, b| self.write_port(p, b));
            0
        } else {
            read_bytewise(port, size, |p| self.read_port(p))
        }
    }

    /// IRR of both chips: master in bits 7:0, slave in bits 15:8.
    pub fn irr(&self) -> u16 {
        u16::from(self.master.irr) | (u16::from(self.slave.irr) << 8)
    }

    /// ISR of both chips, laid out like [`Self::irr`].
    pub fn isr(&self) -> u16 {
        u16::from(self.master.isr) | (u16::from(self.slave.isr) << 8)
    }

    /// IMR of both chips, laid out like [`Self::irr`].
    pub fn imr(&self) -> u16 {
        u16::from(self.master.imr) | (u16::from(self.slave.imr) << 8)
    }

    /// ELCR of both chips, laid out like [`Self::irr`].
    pub fn elcr(&self) -> u16 {
        u16::from(self.master.elcr) | (u16::from(self.slave.elcr) << 8)
    }

    /// The vector bases (ICW2) of the master and the slave.
    pub fn vector_bases(&self) -> (u8, u8) {
        (self.master.base, self.slave.base)
    }

    /// Whether the master's IR2 delivers the slave's vectors.
    fn cascaded(&self) -> bool {
        !self.master.single && self.master.icw3 & (1 << CASCADE_IRQ) != 0
    }

    /// Drives the master's IR2 from the slave's INT output. Called after everything
    /// that can change the slave's output, so the master sees its edges.
    fn update_cascade(&mut self) {
        let slave_int = self.slave.highest_request().is_some();
        self.master.set_line(CASCADE_IRQ, slave_int);
    }
}

impl Chip {
    fn write_state(&self, w: &mut Writer) {
        for v in [
            self.irr, self.isr, self.imr, self.lines, self.elcr, self.base, self.top,
        ] {
            w.u8(v);
        }
        w.u8(match self.init {
            Init::Ready => 0,
            Init::Icw2 => 1,
            Init::Icw3 => 2,
            Init::Icw4 => 3,
        });
        w.u8(self.icw3);
        for b in [
            self.ltim,
            self.single,
            self.ic4,
            self.auto_eoi,
            self.rotate_on_aeoi,
            self.sfnm,
            self.read_isr,
            self.poll,
            self.special_mask,
        ] {
            w.bool(b);
        }
    }

    /// This chip with the registers `r` holds (the ELCR mask and the master/slave
    /// role are the chip's own).
    fn read_state(&self, r: &mut Reader) -> Result<Chip, StateError> {
        let [irr, isr, imr, lines, elcr, base, top] = r.array::<7>()?;
        r.check(elcr & !self.elcr_mask == 0, "ELCR bit on an edge-only line")?;
        r.check(base & 7 == 0, "vector base (ICW2 bits 2:0 set)")?;
        r.check(top < 8, "priority rotation")?;
        let init = match r.u8()? {
            0 => Init::Ready,
            1 => Init::Icw2,
            2 => Init::Icw3,
            3 => Init::Icw4,
            _ => return Err(r.invalid("initialisation step")),
        };
        let icw3 = r.u8()?;
        let mut flags = [false; 9];
        for f in &mut flags {
            *f = r.bool()?;
        }
        let [ltim, single, ic4, auto_eoi, rotate_on_aeoi, sfnm, read_isr, poll, special_mask] =
            flags;
        Ok(Chip {
            irr,
            isr,
            imr,
            lines,
            elcr,
            base,
            top,
            init,
            ltim,
            single,
            ic4,
            icw3,
            auto_eoi,
            rotate_on_aeoi,
            sfnm,
            read_isr,
            poll,
            special_mask,
            ..self.clone()
        })
    }
}

impl Pic8259 {
    /// The tag of [`Self::state`] (see [`crate::state`]).
    pub const STATE_TAG: Tag = *b"pic8259 ";
    /// Bumped whenever the field list changes.
    pub const STATE_VERSION: u16 = 1;

    /// Both chips' registers, initialisation step, modes and input levels, and the
    /// ELCRs, in the format of [`crate::state`].
    pub fn state(&self) -> Vec<u8> {
        let mut w = Writer::new(&Self::STATE_TAG, Self::STATE_VERSION);
        self.master.write_state(&mut w);
        self.slave.write_state(&mut w);
        w.finish()
    }

    /// Takes back what [`Self::state`] returned; nothing changes on an error.
    pub fn restore(&mut self, data: &[u8]) -> Result<(), StateError> {
        let mut r = Reader::new(data, &Self::STATE_TAG, Self::STATE_VERSION)?;
        let master = self.master.read_state(&mut r)?;
        let slave = self.slave.read_state(&mut r)?;
        r.end()?;
        // The master's IR2 input is the slave's INT output, kept in step after every
        // change: a snapshot that disagrees was not written by this model.
        r.check(
            (master.lines & (1 << CASCADE_IRQ) != 0) == slave.highest_request().is_some(),
            "cascade input (master IR2 differs from the slave's output)",
        )?;
        self.master = master;
        self.slave = slave;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Linux's `init_8259A(0)` (arch/x86/kernel/i8259.c) on x86-64, where
    /// `ISA_IRQ_VECTOR(0)` is 0x30, followed by restoring its cached masks.
    fn linux_init(pic: &mut Pic8259, auto_eoi: bool) {
        pic.write_port(0x21, 0xFF); // mask all of the master
        pic.write_port(0x20, 0x11); // ICW1: edge, cascade, ICW4 follows
        pic.write_port(0x21, 0x30); // ICW2: IR0-7 at 0x30
        pic.write_port(0x21, 1 << 2); // ICW3: slave on IR2
        pic.write_port(0x21, if auto_eoi { 0x03 } else { 0x01 }); // ICW4: 8086 (+AEOI)
        pic.write_port(0xA0, 0x11);
        pic.write_port(0xA1, 0x38); // IR8-15 at 0x38
        pic.write_port(0xA1, 2); // slave ID 2
        pic.write_port(0xA1, 0x01);
        pic.write_port(0x21, 0xFB); // cached_master_mask: all but the cascade
        pic.write_port(0xA1, 0xFF);
    }

    fn unmask(pic: &mut Pic8259, irq: u8) {
        let port = if irq < 8 { 0x21 } else { 0xA1 };
        let mask = pic.read_port(port) & !(1 << (irq & 7));
        pic.write_port(port, mask);
    }

    /// Linux's `mask_and_ack_8259A` EOI path: specific EOIs, slave first.
    fn linux_eoi(pic: &mut Pic8259, irq: u8) {
        if irq >= 8 {
            pic.write_port(0xA0, 0x60 + (irq & 7));
            pic.write_port(0x20, 0x60 + 2);
        } else {
            pic.write_port(0x20, 0x60 + irq);
        }
    }

    fn read_isr(pic: &mut Pic8259, port: u16) -> u8 {
        pic.write_port(port, 0x0B);
        let isr = pic.read_port(port);
        pic.write_port(port, 0x0A);
        isr
    }

    #[test]
    fn bios_state() {
        let mut pic = Pic8259::new();
        assert_eq!(pic.vector_bases(), (0x08, 0x70));
        assert_eq!(pic.read_port(0x21), 0xFB);
        assert_eq!(pic.read_port(0xA1), 0xFF);
        pic.pulse_irq(0);
        assert_eq!(pic.pending_vector(), None); // masked
        assert_eq!(pic.irr(), 1); // but latched
        unmask(&mut pic, 0);
        assert_eq!(pic.acknowledge(), Some(0x08));
    }

    #[test]
    fn linux_probe_reads_the_mask_back() {
        // probe_8259A: mask the slave, write ~(1 << 2) to the master IMR, read back.
        let mut pic = Pic8259::new();
        pic.write_port(0xA1, 0xFF);
        pic.write_port(0x21, 0xFB);
        assert_eq!(pic.read_port(0x21), 0xFB);
        pic.write_port(0x21, 0x5A);
        assert_eq!(pic.read_port(0x21), 0x5A);
    }

    #[test]
    fn linux_init_sequence_and_timer_delivery() {
        let mut pic = Pic8259::new();
        linux_init(&mut pic, false);
        assert_eq!(pic.vector_bases(), (0x30, 0x38));
        assert_eq!(pic.imr(), 0xFFFB);
        assert_eq!(pic.isr(), 0);
        assert_eq!(pic.pending_vector(), None);

        unmask(&mut pic, 0);
        for _ in 0..3 {
            pic.pulse_irq(0);
            assert!(pic.interrupt_output());
            assert_eq!(pic.pending_vector(), Some(0x30));
            assert_eq!(pic.acknowledge(), Some(0x30));
            assert_eq!(pic.isr(), 1);
            assert_eq!(pic.irr(), 0);
            // In service: a new tick latches but is held off until the EOI.
            pic.pulse_irq(0);
            assert_eq!(pic.pending_vector(), None);
            assert_eq!(pic.acknowledge(), None);
            linux_eoi(&mut pic, 0);
            assert_eq!(pic.isr(), 0);
            assert_eq!(pic.acknowledge(), Some(0x30));
            pic.write_port(0x20, 0x20); // non-specific EOI works as well
            assert_eq!(pic.isr(), 0);
        }
    }

    #[test]
    fn serial_irq4_with_masks_and_priority() {
        let mut pic = Pic8259::new();
        linux_init(&mut pic, false);
        unmask(&mut pic, 4);
        // A masked IRQ 0 request does not block or preempt IRQ 4.
        pic.pulse_irq(0);
        pic.set_irq(4, true);
        assert_eq!(pic.acknowledge(), Some(0x34));
        // The UART holds its line high; no new edge, so no new request after EOI.
        linux_eoi(&mut pic, 4);
        assert_eq!(pic.pending_vector(), None);
        // Now unmask IRQ 0: its latched request is delivered.
        unmask(&mut pic, 0);
        assert_eq!(pic.acknowledge(), Some(0x30));
        // While IRQ 0 is in service, IRQ 4 (lower priority) waits...
        pic.set_irq(4, false);
        pic.set_irq(4, true);
        assert_eq!(pic.pending_vector(), None);
        // ...but IRQ 0 preempts an in-service IRQ 4 (fully nested).
        linux_eoi(&mut pic, 0);
        assert_eq!(pic.acknowledge(), Some(0x34));
        pic.pulse_irq(0);
        assert_eq!(pic.acknowledge(), Some(0x30));
        assert_eq!(pic.isr(), 0x11);
        // Non-specific EOI ends the highest-priority one: IRQ 0.
        pic.write_port(0x20, 0x20);
        assert_eq!(pic.isr(), 0x10);
        pic.write_port(0x20, 0x20);
        assert_eq!(pic.isr(), 0);
        // Both pending at once: the lower line wins.
        pic.set_irq(4, false);
        pic.set_irq(4, true);
        pic.pulse_irq(0);
        assert_eq!(pic.acknowledge(), Some(0x30));
        pic.write_port(0x20, 0x20);
        assert_eq!(pic.acknowledge(), Some(0x34));
    }

    #[test]
    fn slave_delivery_through_the_cascade() {
        let mut pic = Pic8259::new();
        linux_init(&mut pic, false);
        unmask(&mut pic, 12);
        unmask(&mut pic, 8);
        pic.pulse_irq(12);
        assert_eq!(pic.irr(), 0x1004); // slave IR4 and master IR2
        assert_eq!(pic.pending_vector(), Some(0x3C));
        assert_eq!(pic.acknowledge(), Some(0x3C));
        assert_eq!(pic.isr(), 0x1004);
        assert_eq!(read_isr(&mut pic, 0xA0), 0x10);
        assert_eq!(read_isr(&mut pic, 0x20), 0x04);
        // IRQ 8 outranks the in-service IRQ 12 on the slave, but the master's IR2 is
        // in service, so without special fully nested mode it waits for the EOIs.
        pic.pulse_irq(8);
        assert_eq!(pic.pending_vector(), None);
        linux_eoi(&mut pic, 12);
        assert_eq!(pic.isr(), 0);
        assert_eq!(pic.acknowledge(), Some(0x38));
        linux_eoi(&mut pic, 8);
        assert_eq!(pic.isr(), 0);
        assert_eq!(pic.irr(), 0);
        assert_eq!(pic.acknowledge(), None);
        // Two slave requests: delivered one after the other, the cascade re-latching
        // when the slave's EOI lets the second through.
        pic.pulse_irq(12);
        pic.pulse_irq(8);
        assert_eq!(pic.acknowledge(), Some(0x38));
        linux_eoi(&mut pic, 8);
        assert_eq!(pic.acknowledge(), Some(0x3C));
        linux_eoi(&mut pic, 12);
        assert_eq!(pic.acknowledge(), None);
    }

    #[test]
    fn special_fully_nested_mode_lets_higher_slave_irqs_nest() {
        let mut pic = Pic8259::new();
        linux_init(&mut pic, false);
        pic.write_port(0x20, 0x11);
        pic.write_port(0x21, 0x30);
        pic.write_port(0x21, 0x04);
        pic.write_port(0x21, 0x11); // ICW4: 8086, SFNM
        pic.write_port(0x21, 0xFB);
        pic.write_port(0xA1, 0x00);
        pic.pulse_irq(12);
        assert_eq!(pic.acknowledge(), Some(0x3C));
        pic.pulse_irq(8);
        assert_eq!(pic.acknowledge(), Some(0x38));
        assert_eq!(read_isr(&mut pic, 0xA0), 0x11);
    }

    #[test]
    fn spurious_irq7_and_irq15() {
        let mut pic = Pic8259::new();
        linux_init(&mut pic, false);
        // A raw INTA with nothing pending gets the master's IR7, no ISR bit.
        assert_eq!(pic.inta(), 0x37);
        assert_eq!(pic.isr(), 0);
        assert_eq!(pic.acknowledge(), None);

        // The slave's request is masked after the master latched IR2: the slave answers
        // with its IR7 (IRQ 15) and sets nothing; the master's IR2 is in service.
        unmask(&mut pic, 10);
        pic.pulse_irq(10);
        assert_eq!(pic.pending_vector(), Some(0x3A));
        pic.write_port(0xA1, 0xFF);
        assert_eq!(pic.pending_vector(), Some(0x3F));
        assert_eq!(pic.acknowledge(), Some(0x3F));
        assert_eq!(pic.isr(), 0x0004);
        // Linux's spurious path reads the slave ISR, sees IRQ 15 not in service, and
        // still EOIs the master (it goes on to handle_real_irq).
        assert_eq!(read_isr(&mut pic, 0xA0) & 0x80, 0);
        linux_eoi(&mut pic, 15);
        assert_eq!(pic.isr(), 0);
        // The masked request is still latched in the slave.
        assert_eq!(pic.irr(), 0x0400);
        unmask(&mut pic, 10);
        assert_eq!(pic.acknowledge(), Some(0x3A));
    }

    #[test]
    fn auto_eoi_leaves_no_isr() {
        let mut pic = Pic8259::new();
        linux_init(&mut pic, true);
        unmask(&mut pic, 0);
        pic.pulse_irq(0);
        assert_eq!(pic.acknowledge(), Some(0x30));
        assert_eq!(pic.isr(), 0);
        // The next tick is deliverable at once, no EOI needed.
        pic.pulse_irq(0);
        assert_eq!(pic.acknowledge(), Some(0x30));
    }

    #[test]
    fn ocw3_selects_irr_or_isr_and_poll_acknowledges() {
        let mut pic = Pic8259::new();
        linux_init(&mut pic, false);
        unmask(&mut pic, 3);
        unmask(&mut pic, 5);
        pic.pulse_irq(5);
        pic.pulse_irq(3);
        assert_eq!(pic.read_port(0x20), 0x28); // IRR by default
        pic.write_port(0x20, 0x0B);
        assert_eq!(pic.read_port(0x20), 0x00); // ISR
        pic.write_port(0x20, 0x08); // OCW3 with RR=0 keeps the selection
        assert_eq!(pic.read_port(0x20), 0x00);
        // Poll: the read acknowledges IR3 and reports it.
        pic.write_port(0x20, 0x0C);
        assert_eq!(pic.read_port(0x20), 0x83);
        assert_eq!(pic.isr(), 0x08);
        // The poll is one-shot: the next read is the selected register (ISR).
        assert_eq!(pic.read_port(0x20), 0x08);
        pic.write_port(0x20, 0x20);
        pic.write_port(0x20, 0x0C);
        assert_eq!(pic.read_port(0x20), 0x85);
        pic.write_port(0x20, 0x20);
        pic.write_port(0x20, 0x0C);
        assert_eq!(pic.read_port(0x20), 0x00); // nothing pending
    }

    #[test]
    fn rotation_commands() {
        let mut pic = Pic8259::new();
        linux_init(&mut pic, false);
        pic.write_port(0x21, 0x00);
        // Set priority: IR4 lowest, so IR5 highest.
        pic.write_port(0x20, 0xC4);
        pic.pulse_irq(1);
        pic.pulse_irq(6);
        assert_eq!(pic.acknowledge(), Some(0x36));
        // Rotate on non-specific EOI: IR6 becomes lowest, IR7 highest, then 0, 1...
        pic.write_port(0x20, 0xA0);
        assert_eq!(pic.isr(), 0);
        pic.pulse_irq(0);
        assert_eq!(pic.acknowledge(), Some(0x30));
        // Rotate on specific EOI for IR0: IR1 is now highest.
        pic.write_port(0x20, 0xE0);
        pic.pulse_irq(7);
        assert_eq!(pic.acknowledge(), Some(0x31));
        pic.write_port(0x20, 0x61);
        assert_eq!(pic.acknowledge(), Some(0x37));
        pic.write_port(0x20, 0x67);
        // Rotate in automatic EOI mode.
        let mut pic = Pic8259::new();
        linux_init(&mut pic, true);
        pic.write_port(0x21, 0x00);
        pic.write_port(0x20, 0x80);
        pic.pulse_irq(0);
        pic.pulse_irq(1);
        assert_eq!(pic.acknowledge(), Some(0x30));
        pic.pulse_irq(0);
        // IR0 just became the lowest priority: IR1 goes first.
        assert_eq!(pic.acknowledge(), Some(0x31));
        assert_eq!(pic.acknowledge(), Some(0x30));
        pic.write_port(0x20, 0x00); // clear rotate in AEOI
    }

    #[test]
    fn special_mask_mode_lets_lower_levels_in() {
        let mut pic = Pic8259::new();
        linux_init(&mut pic, false);
        pic.write_port(0x21, 0x00);
        pic.pulse_irq(1);
        assert_eq!(pic.acknowledge(), Some(0x31));
        pic.pulse_irq(5);
        assert_eq!(pic.pending_vector(), None);
        // The IRQ 1 handler masks itself and enters special mask mode.
        pic.write_port(0x21, 0x02);
        pic.write_port(0x20, 0x68);
        assert_eq!(pic.acknowledge(), Some(0x35));
        pic.write_port(0x20, 0x48); // leave special mask mode
        pic.write_port(0x20, 0x65);
        pic.write_port(0x20, 0x61);
        assert_eq!(pic.isr(), 0);
    }

    #[test]
    fn reinitialisation_clears_state_and_needs_a_new_edge() {
        let mut pic = Pic8259::new();
        linux_init(&mut pic, false);
        unmask(&mut pic, 3);
        pic.set_irq(3, true);
        assert_eq!(pic.acknowledge(), Some(0x33));
        pic.set_irq(4, true);
        linux_init(&mut pic, false);
        assert_eq!(pic.isr(), 0);
        assert_eq!(pic.irr(), 0);
        pic.write_port(0x21, 0x00);
        // Lines still high do not request until they go low and high again.
        assert_eq!(pic.pending_vector(), None);
        pic.set_irq(4, false);
        pic.set_irq(4, true);
        assert_eq!(pic.acknowledge(), Some(0x34));
    }

    #[test]
    fn single_mode_skips_icw3_and_no_icw4() {
        let mut pic = Pic8259::new();
        pic.write_port(0x20, 0x12); // ICW1: single, no ICW4
        pic.write_port(0x21, 0x50); // ICW2; the next data write is OCW1
        pic.write_port(0x21, 0xFA);
        assert_eq!(pic.read_port(0x21), 0xFA);
        assert_eq!(pic.vector_bases().0, 0x50);
        pic.pulse_irq(0);
        assert_eq!(pic.acknowledge(), Some(0x50));
        // Not cascaded: a latched IR2 is the master's own vector.
        pic.write_port(0x21, 0x00);
        pic.write_port(0xA1, 0x00);
        pic.write_port(0x20, 0x20);
        pic.pulse_irq(9);
        assert_eq!(pic.acknowledge(), Some(0x52));
    }

    #[test]
    fn elcr_level_triggered_lines() {
        let mut pic = Pic8259::new();
        linux_init(&mut pic, false);
        // IRQ 0-2 and IRQ 8/13 cannot be made level-triggered.
        pic.write_port(0x4D0, 0xFF);
        pic.write_port(0x4D1, 0xFF);
        assert_eq!(pic.read_port(0x4D0), 0xF8);
        assert_eq!(pic.read_port(0x4D1), 0xDE);
        assert_eq!(pic.elcr(), 0xDEF8);
        pic.write_port(0x4D0, 0x20);
        unmask(&mut pic, 5);
        pic.set_irq(5, true);
        assert_eq!(pic.acknowledge(), Some(0x35));
        // Still high after EOI: requested again (level semantics).
        pic.write_port(0x20, 0x65);
        assert_eq!(pic.acknowledge(), Some(0x35));
        pic.write_port(0x20, 0x65);
        // Dropping the line withdraws the request.
        pic.set_irq(5, false);
        assert_eq!(pic.pending_vector(), None);
        assert_eq!(pic.irr(), 0);
    }

    #[test]
    fn port_io_wide_accesses_and_foreign_ports() {
        let mut pic = Pic8259::new();
        linux_init(&mut pic, false);
        // inw 0x20 reads IRR then IMR.
        pic.pulse_irq(1);
        assert_eq!(pic.port_io(0x20, 2, false, 0), 0xFB02);
        assert_eq!(pic.port_io(0x22, 1, false, 0), 0xFF);
        pic.port_io(0xA1, 1, true, 0x7F);
        assert_eq!(pic.imr(), 0x7FFB);
        pic.set_irq(2, true); // the cascade is not an input
        pic.set_irq(16, true);
        assert_eq!(pic.irr(), 0x0002);
        pic.reset();
        assert_eq!(pic.irr(), 0);
        assert_eq!(pic.vector_bases(), (0x08, 0x70));
    }

    crate::state::testing::snap_impl!(Pic8259);

    /// A random guest access to the pair or a device line change; returns what the
    /// guest or the VMM would observe.
    fn random_op(pic: &mut Pic8259, rng: &mut crate::state::testing::Rng) -> (u32, Option<u8>) {
        const PORTS: [u16; 6] = [0x20, 0x21, 0xA0, 0xA1, 0x4D0, 0x4D1];
        let port = PORTS[rng.below(6) as usize];
        let v = match rng.below(6) {
            0 => pic.port_io(port, 1, false, 0),
            1 => pic.port_io(port, 1, true, rng.byte().into()),
            2 => {
                pic.set_irq(rng.below(16) as u8, rng.chance(2));
                0
            }
            3 => {
                pic.pulse_irq(rng.below(16) as u8);
                0
            }
            4 => pic.acknowledge().map_or(0x100, u32::from),
            _ => u32::from(pic.inta()),
        };
        (v, pic.pending_vector())
    }

    /// Linux-initialised, rotated, with requests latched on both chips, one in
    /// service through the cascade, a level-triggered line high, OCW3 reading ISR
    /// and a poll armed on the slave.
    fn busy_pic() -> Pic8259 {
        let mut pic = Pic8259::new();
        linux_init(&mut pic, false);
        pic.write_port(0x4D0, 0x20);
        pic.write_port(0x21, 0x00);
        pic.write_port(0xA1, 0x00);
        pic.write_port(0x20, 0xC4); // IR4 lowest
        pic.pulse_irq(12);
        assert_eq!(pic.acknowledge(), Some(0x3C));
        pic.pulse_irq(1);
        pic.set_irq(5, true);
        pic.pulse_irq(14);
        pic.write_port(0x20, 0x0B);
        pic.write_port(0xA0, 0x0C);
        pic.write_port(0x21, 0x40); // master: IR6 masked
        pic
    }

    #[test]
    fn snapshot_restores_identical_behaviour() {
        let mut a = busy_pic();
        let snap = a.state();
        assert_eq!(&snap[..8], b"pic8259 ");
        let mut b = Pic8259::new();
        b.restore(&snap).unwrap();
        assert_eq!(b.state(), snap);
        assert_eq!(
            (b.irr(), b.isr(), b.imr(), b.elcr()),
            (a.irr(), a.isr(), a.imr(), a.elcr())
        );
        assert_eq!(b.vector_bases(), (0x30, 0x38));
        // The poll armed on the slave came along: its next read acknowledges IR6.
        assert_eq!(b.read_port(0xA0), a.read_port(0xA0));
        crate::state::testing::lockstep(&mut a, &mut b, 1, random_op);
        assert_eq!(a.state(), b.state());
    }

    #[test]
    fn snapshot_refusals_and_corruption() {
        let snap = busy_pic().state();
        let mut pic = Pic8259::new();
        crate::state::testing::check_refusals(&mut pic, &snap, |p| {
            let mut rng = crate::state::testing::Rng::new(2);
            for _ in 0..50 {
                random_op(p, &mut rng);
            }
        });
        // An ELCR bit on IRQ 0 (edge-only) is refused by name.
        let mut bad = snap.clone();
        bad[10 + 4] |= 1;
        assert!(matches!(
            pic.restore(&bad),
            Err(StateError::Invalid { what, .. }) if what.contains("ELCR")
        ));
    }
}
