//! An I/O APIC compatible with the Intel 82093AA (datasheet order no. 290566): 24
//! interrupt input pins, each routed by a 64-bit redirection table entry to a local
//! APIC as an interrupt message.
//!
//! Software reaches it through two memory-mapped registers at [`IOAPIC_BASE`]: IOREGSEL
//! (offset 0x00) selects an internal register, IOWIN (offset 0x10) reads or writes it.
//! The internal registers (datasheet 3.2): the ID (0), the version (1, reading
//! [`IOAPIC_VERSION`]: 24 entries, version 0x11), the arbitration ID (2), and the
//! redirection table at 0x10-0x3F, two dwords per pin (low dword first).
//!
//! ## Pins
//!
//! [`IoApic::set_irq`] drives a pin with the *asserted* state of the device's interrupt
//! line, not its electrical level: a virtual wire has no polarity, so the polarity bit
//! an OS programs (to match what the MP/ACPI tables claim) is stored and read back but
//! does not invert anything. KVM's IOAPIC works the same way. Then, per the datasheet:
//!
//! * edge-triggered entries send a message on each rising edge; an edge that arrives
//!   while the entry is masked is lost;
//! * level-triggered entries send a message while the pin is asserted and remote IRR is
//!   clear, and set remote IRR; the local APIC's EOI for the vector
//!   ([`IoApic::eoi`]) clears it, and an entry whose pin is still asserted sends again.
//!   Unmasking an asserted level-triggered entry sends it too.
//!
//! Messages are returned as a [`Delivery`] for the VMM to route to the local APIC (or,
//! for NMI/ExtINT, to the CPU); nothing is queued here. The delivery-status bit always
//! reads idle, since a message is handed over at once.
//!
//! ## PC wiring
//!
//! ISA IRQ n is pin n, except that the PIT's IRQ 0 is pin 2 ([`isa_irq_pin`]); this is
//! what the MP table's I/O interrupt entries and the MADT's interrupt source override
//! built by [`crate::mptable`] describe. IOAPICs of version 0x20 and later have an EOI
//! register at offset 0x40; this one (0x11) has not, so Linux clears a stuck remote IRR
//! by flipping the entry to edge-triggered and back, which clears remote IRR here as on
//! the chip.

use alloc::vec::Vec;

use crate::bus::all_ones;
use crate::lapic::DeliveryMode;
use crate::state::{Reader, StateError, Tag, Writer};

/// The architectural base of the first IOAPIC.
pub const IOAPIC_BASE: u64 = 0xFEC0_0000;
/// The size of the window the VMM traps (the chip decodes far less; the rest reads 0).
pub const IOAPIC_MMIO_SIZE: u64 = 0x1000;
/// The number of input pins (redirection entries).
pub const IOAPIC_PINS: usize = 24;
/// The version register: maximum redirection entry 23 in bits 23:16, version 0x11.
pub const IOAPIC_VERSION: u32 = 0x0017_0011;

/// MMIO offsets from [`IOAPIC_BASE`] and the indices of the indirect registers.
pub mod reg {
    /// The register select (8 bits).
    pub const IOREGSEL: u64 = 0x00;
    /// The data window onto the selected register.
    pub const IOWIN: u64 = 0x10;
    /// Indirect: the IOAPIC ID in bits 27:24.
    pub const ID: u8 = 0x00;
    /// Indirect: [`super::IOAPIC_VERSION`].
    pub const VERSION: u8 = 0x01;
    /// Indirect: the arbitration ID in bits 27:24.
    pub const ARBITRATION: u8 = 0x02;
    /// Indirect: pin n's entry is at `REDIRECTION + 2n` (low) and `+ 2n + 1` (high).
    pub const REDIRECTION: u8 = 0x10;
}

/// Redirection table entry bits (datasheet 3.2.4).
pub mod entry {
    pub const VECTOR: u64 = 0xFF;
    /// Bits 10:8, the delivery mode.
    pub const DELIVERY_MODE: u64 = 0x700;
    pub const DEST_LOGICAL: u64 = 1 << 11;
    /// Delivery status (read-only; always idle here).
    pub const SEND_PENDING: u64 = 1 << 12;
    /// Input pin polarity: 1 = active low (stored only, see the module docs).
    pub const POLARITY_LOW: u64 = 1 << 13;
    /// Remote IRR (read-only): a level-triggered message is in service.
    pub const REMOTE_IRR: u64 = 1 << 14;
    pub const LEVEL: u64 = 1 << 15;
    pub const MASKED: u64 = 1 << 16;
    /// Bits 63:56, the destination APIC ID or logical destination.
    pub const DEST_SHIFT: u32 = 56;
    /// What software can write: everything but delivery status and remote IRR in the
    /// low dword, and the destination field in the high dword.
    pub const WRITABLE: u64 = 0xFF00_0000_0001_AFFF;
}

/// The pin an ISA IRQ arrives on in a PC: the identity, except that the 8254 PIT's
/// output (IRQ 0) is wired to pin 2, where the 8259's cascade input would be.
pub const fn isa_irq_pin(irq: u8) -> u8 {
    if irq == 0 {
        2
    } else {
        irq
    }
}

/// One interrupt message the IOAPIC sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The pin it came from.
    pub pin: u8,
    pub vector: u8,
    pub mode: DeliveryMode,
    /// Logical (true) or physical destination mode.
    pub logical: bool,
    /// The 8-bit destination (an APIC ID, or a logical destination).
    pub dest: u8,
    /// Level-triggered: the local APIC must set TMR so that its EOI is reported back
    /// ([`crate::LocalApic::deliver`] with `level_triggered` = this).
    pub level_triggered: bool,
}

impl Delivery {
    fn from_entry(pin: u8, e: u64) -> Self {
        let mode = DeliveryMode::from_bits(((e & entry::DELIVERY_MODE) >> 8) as u32);
        Self {
            pin,
            vector: (e & entry::VECTOR) as u8,
            mode,
            logical: e & entry::DEST_LOGICAL != 0,
            dest: (e >> entry::DEST_SHIFT) as u8,
            level_triggered: is_level(e),
        }
    }
}

/// [`Delivery::pin`] of a message that came from a PCI function (MSI/MSI-X), not
/// from an IOAPIC pin.
pub const MSI_PIN: u8 = 0xFF;

/// Decodes a message-signalled interrupt as the local APICs receive it (SDM Vol. 3A
/// 11.11): the address must lie in the 0xFEEx_xxxx window (bits 19:12 destination
/// ID, bit 2 destination mode: 1 logical; the redirection hint, bit 3, only allows
/// lowest-priority redirection, which the delivery mode asks for anyway); the data
/// holds the vector (7:0), the delivery mode (10:8), level (14) and trigger mode (15).
///
/// Messages are delivered edge-triggered: a level-triggered MSI's assert is handed
/// on as an edge (nothing would report its EOI back to the function) and its
/// deassert (level bit clear) is no interrupt. A write outside the window is a plain
/// memory write, not an interrupt: `None` (the platform drops it: it never writes
/// guest RAM on a device's behalf here). INIT, STARTUP, SMI, ExtINT and the reserved
/// mode are decoded as such; the VM delivers only fixed, lowest-priority and NMI.
pub fn msi_delivery(address: u64, data: u32) -> Option<Delivery> {
    if address >> 20 != 0xFEE {
        return None;
    }
    let level_triggered = data & (1 << 15) != 0;
    if level_triggered && data & (1 << 14) == 0 {
        return None;
    }
    Some(Delivery {
        pin: MSI_PIN,
        vector: data as u8,
        mode: DeliveryMode::from_bits((data >> 8) & 7),
        logical: address & (1 << 2) != 0,
        dest: (address >> 12) as u8,
        level_triggered: false,
    })
}

/// Whether an entry behaves level-triggered. Only fixed and lowest-priority messages
/// can be: the datasheet requires SMI, NMI, INIT and ExtINT entries to be programmed
/// edge-triggered, so their trigger bit is not honoured.
fn is_level(e: u64) -> bool {
    e & entry::LEVEL != 0
        && matches!(
            DeliveryMode::from_bits(((e & entry::DELIVERY_MODE) >> 8) as u32),
            DeliveryMode::Fixed | DeliveryMode::LowestPriority
        )
}

/// The messages an [`IoApic::eoi`] sent again: one per level-triggered entry with the
/// EOI'd vector whose pin is still asserted.
#[derive(Clone, Debug)]
pub struct Redeliveries {
    pins: u32,
    entries: [u64; IOAPIC_PINS],
}

impl Iterator for Redeliveries {
    type Item = Delivery;

    fn next(&mut self) -> Option<Delivery> {
        if self.pins == 0 {
            return None;
        }
        let pin = self.pins.trailing_zeros();
        self.pins &= self.pins - 1;
        Some(Delivery::from_entry(pin as u8, self.entries[pin as usize]))
    }
}

/// An 82093AA-compatible IOAPIC. See the module documentation.
#[derive(Clone, Debug)]
pub struct IoApic {
    /// Bits 27:24 of the ID register.
    id: u8,
    ioregsel: u8,
    redirection: [u64; IOAPIC_PINS],
    /// The asserted state of each pin.
    asserted: u32,
}

impl IoApic {
    /// An IOAPIC with the given ID (which the MP table and MADT must name) in its reset
    /// state: every entry masked.
    pub const fn new(id: u8) -> Self {
        Self {
            id: id & 0x0F,
            ioregsel: 0,
            redirection: [entry::MASKED; IOAPIC_PINS],
            asserted: 0,
        }
    }

    /// Back to the reset state (the ID and the pins' levels are kept).
    pub fn reset(&mut self) {
        self.ioregsel = 0;
        self.redirection = [entry::MASKED; IOAPIC_PINS];
    }

    pub fn id(&self) -> u8 {
        self.id
    }

    /// Pin `pin`'s redirection entry (for inspection).
    pub fn entry(&self, pin: u8) -> Option<u64> {
        self.redirection.get(usize::from(pin)).copied()
    }

    /// Whether `pin` is asserted.
    pub fn pin_asserted(&self, pin: u8) -> bool {
        usize::from(pin) < IOAPIC_PINS && self.asserted & (1 << pin) != 0
    }

    fn read_indirect(&self, index: u8) -> u32 {
        match index {
            reg::ID => u32::from(self.id) << 24,
            reg::VERSION => IOAPIC_VERSION,
            reg::ARBITRATION => u32::from(self.id) << 24,
            0x10..=0x3F => {
                let e = self.redirection[usize::from((index - reg::REDIRECTION) / 2)];
                if index & 1 == 0 {
                    e as u32
                } else {
                    (e >> 32) as u32
                }
            }
            // Nothing else is implemented; the window floats (as KVM's does).
            _ => u32::MAX,
        }
    }

    fn write_indirect(&mut self, index: u8, value: u32) -> Option<Delivery> {
        match index {
            reg::ID => self.id = ((value >> 24) & 0x0F) as u8,
            0x10..=0x3F => {
                let pin = (index - reg::REDIRECTION) / 2;
                let old = self.redirection[usize::from(pin)];
                let written = if index & 1 == 0 {
                    (old & !0xFFFF_FFFF) | u64::from(value)
                } else {
                    (old & 0xFFFF_FFFF) | (u64::from(value) << 32)
                };
                let mut e = (written & entry::WRITABLE) | (old & entry::REMOTE_IRR);
                if e & entry::LEVEL == 0 {
                    // An edge-triggered entry has no message in service; this is how
                    // software clears a stuck remote IRR on IOAPICs without an EOI
                    // register.
                    e &= !entry::REMOTE_IRR;
                }
                self.redirection[usize::from(pin)] = e;
                // An asserted level-triggered pin that has just become deliverable
                // (unmasked, or remote IRR cleared) sends now.
                if is_level(e) && self.pin_asserted(pin) {
                    return self.send(pin);
                }
            }
            // Version and arbitration ID are read-only.
            _ => {}
        }
        None
    }

    /// The message pin `pin` sends now, if its entry is unmasked and (level-triggered)
    /// not already in service; sets remote IRR for a level-triggered one.
    fn send(&mut self, pin: u8) -> Option<Delivery> {
        let e = &mut self.redirection[usize::from(pin)];
        if *e & entry::MASKED != 0 {
            return None;
        }
        if is_level(*e) {
            if *e & entry::REMOTE_IRR != 0 {
                return None;
            }
            *e |= entry::REMOTE_IRR;
        }
        Some(Delivery::from_entry(pin, *e))
    }

    /// A guest read at `offset` from [`IOAPIC_BASE`], `size` 1, 2 or 4 bytes.
    pub fn mmio_read(&mut self, offset: u64, size: u8) -> u32 {
        let offset = offset & (IOAPIC_MMIO_SIZE - 1);
        let value = match offset & !3 {
            reg::IOREGSEL => u32::from(self.ioregsel),
            reg::IOWIN => self.read_indirect(self.ioregsel),
            _ => 0,
        };
        (value >> (8 * (offset & 3))) & all_ones(size)
    }

    /// A guest write at `offset` from [`IOAPIC_BASE`]. Returns the message an
    /// unmasked, asserted level-triggered entry sends as a result.
    ///
    /// IOREGSEL is 8 bits wide (a wider write sets it from the low byte); a write
    /// narrower than 32 bits to IOWIN merges into the selected register.
    pub fn mmio_write(&mut self, offset: u64, size: u8, value: u32) -> Option<Delivery> {
        let offset = offset & (IOAPIC_MMIO_SIZE - 1);
        let shift = 8 * (offset & 3);
        match offset & !3 {
            reg::IOREGSEL => {
                if shift == 0 {
                    self.ioregsel = value as u8;
                }
                None
            }
            reg::IOWIN => {
                let value = if size >= 4 && shift == 0 {
                    value
                } else {
                    let mask = all_ones(size) << shift;
                    (self.read_indirect(self.ioregsel) & !mask) | ((value << shift) & mask)
                };
                self.write_indirect(self.ioregsel, value)
            }
            _ => None,
        }
    }

    /// Drives pin `pin` (asserted or not). Returns the message to deliver, if this
    /// change sends one (see the module documentation). Pins past 23 are ignored.
    pub fn set_irq(&mut self, pin: u8, asserted: bool) -> Option<Delivery> {
        if usize::from(pin) >= IOAPIC_PINS {
            return None;
        }
        let bit = 1u32 << pin;
        let was = self.asserted & bit != 0;
        if asserted {
            self.asserted |= bit;
        } else {
            self.asserted &= !bit;
            return None;
        }
        if is_level(self.redirection[usize::from(pin)]) || !was {
            self.send(pin)
        } else {
            None
        }
    }

    /// One edge on `pin`: asserts and deasserts it (what an ISA device's interrupt, or
    /// a timer tick, is to an edge-triggered entry).
    pub fn pulse_irq(&mut self, pin: u8) -> Option<Delivery> {
        let delivery = self.set_irq(pin, true);
        self.set_irq(pin, false);
        delivery
    }

    /// The EOI broadcast of a local APIC for a level-triggered `vector`: clears remote
    /// IRR of the level-triggered entries with that vector; those whose pin is still
    /// asserted (and unmasked) send again, and are returned.
    pub fn eoi(&mut self, vector: u8) -> Redeliveries {
        let mut pins = 0u32;
        for pin in 0..IOAPIC_PINS as u8 {
            let e = &mut self.redirection[usize::from(pin)];
            if *e & entry::REMOTE_IRR == 0 || (*e & entry::VECTOR) as u8 != vector {
                continue;
            }
            *e &= !entry::REMOTE_IRR;
            if self.pin_asserted(pin) && self.send(pin).is_some() {
                pins |= 1 << pin;
            }
        }
        Redeliveries {
            pins,
            entries: self.redirection,
        }
    }
}

impl IoApic {
    /// The tag of [`Self::state`] (see [`crate::state`]).
    pub const STATE_TAG: Tag = *b"ioapic  ";
    /// Bumped whenever the field list changes.
    pub const STATE_VERSION: u16 = 1;

    /// The ID register (the guest can write it), IOREGSEL, the 24 redirection
    /// entries with their remote IRR bits, and which pins are asserted, in the
    /// format of [`crate::state`].
    pub fn state(&self) -> Vec<u8> {
        let mut w = Writer::new(&Self::STATE_TAG, Self::STATE_VERSION);
        w.u8(self.id);
        w.u8(self.ioregsel);
        for &e in &self.redirection {
            w.u64(e);
        }
        w.u32(self.asserted);
        w.finish()
    }

    /// Takes back what [`Self::state`] returned; nothing changes on an error. No
    /// message is sent: one an asserted pin owes was sent before the snapshot (its
    /// remote IRR says so) or is sent at its next change, as before.
    pub fn restore(&mut self, data: &[u8]) -> Result<(), StateError> {
        let mut r = Reader::new(data, &Self::STATE_TAG, Self::STATE_VERSION)?;
        let id = r.u8()?;
        r.check(id <= 0x0F, "IOAPIC ID (more than 4 bits)")?;
        let ioregsel = r.u8()?;
        let mut redirection = [0u64; IOAPIC_PINS];
        for e in &mut redirection {
            *e = r.u64()?;
            r.check(
                *e & !(entry::WRITABLE | entry::REMOTE_IRR) == 0,
                "redirection entry (reserved bits set)",
            )?;
            r.check(
                *e & entry::REMOTE_IRR == 0 || *e & entry::LEVEL != 0,
                "redirection entry (remote IRR on an edge-triggered entry)",
            )?;
        }
        let asserted = r.u32()?;
        r.check(asserted >> IOAPIC_PINS == 0, "asserted pins (past pin 23)")?;
        r.end()?;
        self.id = id;
        self.ioregsel = ioregsel;
        self.redirection = redirection;
        self.asserted = asserted;
        Ok(())
    }
}

#[cfg(test)]
mod msi_tests {
    use super::*;

    #[test]
    fn msi_address_and_data_decode_as_the_sdm_says() {
        // Linux's usual message: physical destination APIC 1, fixed, vector 0x41.
        let d = msi_delivery(0xFEE0_1000, 0x0041).unwrap();
        assert_eq!(
            d,
            Delivery {
                pin: MSI_PIN,
                vector: 0x41,
                mode: DeliveryMode::Fixed,
                logical: false,
                dest: 1,
                level_triggered: false,
            }
        );
        // Logical destination 0x0C, redirection hint, lowest priority.
        let d = msi_delivery(0xFEE0_C00C, 0x0122).unwrap();
        assert_eq!(
            (d.dest, d.logical, d.mode, d.vector),
            (0x0C, true, DeliveryMode::LowestPriority, 0x22)
        );
        // NMI.
        assert_eq!(
            msi_delivery(0xFEE0_0000, 0x0400).unwrap().mode,
            DeliveryMode::Nmi
        );
        // A level-triggered assert is an edge; its deassert is nothing.
        assert!(!msi_delivery(0xFEE0_0000, 0xC031).unwrap().level_triggered);
        assert_eq!(msi_delivery(0xFEE0_0000, 0x8031), None);
        // Outside the interrupt window: a memory write, not an interrupt.
        assert_eq!(msi_delivery(0xFED0_0000, 0x41), None);
        assert_eq!(msi_delivery(0x1_FEE0_0000, 0x41), None);
        assert_eq!(msi_delivery(0, 0), None);
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    fn select(io: &mut IoApic, index: u8) {
        io.mmio_write(reg::IOREGSEL, 4, u32::from(index));
    }

    fn read(io: &mut IoApic, index: u8) -> u32 {
        select(io, index);
        io.mmio_read(reg::IOWIN, 4)
    }

    fn write(io: &mut IoApic, index: u8, value: u32) -> Option<Delivery> {
        select(io, index);
        io.mmio_write(reg::IOWIN, 4, value)
    }

    /// Programs pin `pin`: low dword `low`, destination APIC `dest`.
    fn program(io: &mut IoApic, pin: u8, low: u32, dest: u8) -> Option<Delivery> {
        write(io, reg::REDIRECTION + 2 * pin + 1, u32::from(dest) << 24);
        write(io, reg::REDIRECTION + 2 * pin, low)
    }

    #[test]
    fn identification_registers() {
        let mut io = IoApic::new(2);
        assert_eq!(read(&mut io, reg::ID), 2 << 24);
        assert_eq!(read(&mut io, reg::VERSION), 0x0017_0011);
        assert_eq!(read(&mut io, reg::ARBITRATION), 2 << 24);
        write(&mut io, reg::ID, 0x0500_0000);
        assert_eq!(read(&mut io, reg::ID), 5 << 24);
        assert_eq!(io.id(), 5);
        write(&mut io, reg::VERSION, 0);
        assert_eq!(read(&mut io, reg::VERSION), 0x0017_0011);
        // IOREGSEL reads back; unimplemented indices float.
        select(&mut io, 0x40);
        assert_eq!(io.mmio_read(reg::IOREGSEL, 4), 0x40);
        assert_eq!(io.mmio_read(reg::IOWIN, 4), 0xFFFF_FFFF);
        assert_eq!(io.mmio_read(0x20, 4), 0);
    }

    #[test]
    fn redirection_entries_reset_masked_and_round_trip() {
        let mut io = IoApic::new(0);
        for pin in 0..24u8 {
            assert_eq!(read(&mut io, 0x10 + 2 * pin), 0x1_0000);
            assert_eq!(read(&mut io, 0x11 + 2 * pin), 0);
        }
        // Read-only bits (delivery status 12, remote IRR 14) and the reserved high bits
        // do not stick.
        write(&mut io, 0x12, 0xFFFF_FFFF);
        assert_eq!(read(&mut io, 0x12), 0x0001_AFFF);
        write(&mut io, 0x13, 0xFFFF_FFFF);
        assert_eq!(read(&mut io, 0x13), 0xFF00_0000);
        assert_eq!(io.entry(1), Some(0xFF00_0000_0001_AFFF));
        assert_eq!(io.entry(24), None);
        // Byte access to IOWIN merges.
        select(&mut io, 0x12);
        io.mmio_write(reg::IOWIN + 2, 1, 0x00);
        assert_eq!(read(&mut io, 0x12), 0x0000_AFFF);
        assert_eq!(io.mmio_read(reg::IOWIN + 1, 1), 0xAF);
    }

    #[test]
    fn edge_triggered_delivers_on_rising_edges_only() {
        let mut io = IoApic::new(0);
        assert_eq!(program(&mut io, 4, 0x34, 0), None);
        let d = io.set_irq(4, true).unwrap();
        assert_eq!(
            d,
            Delivery {
                pin: 4,
                vector: 0x34,
                mode: DeliveryMode::Fixed,
                logical: false,
                dest: 0,
                level_triggered: false
            }
        );
        assert_eq!(io.set_irq(4, true), None, "no edge");
        assert_eq!(io.set_irq(4, false), None);
        assert!(io.set_irq(4, true).is_some());
        io.set_irq(4, false);
        assert!(io.pulse_irq(4).is_some());
        assert!(io.pulse_irq(4).is_some());
        // Masked edges are lost, and unmasking does not replay them.
        program(&mut io, 4, 0x1_0034, 0);
        assert_eq!(io.pulse_irq(4), None);
        assert_eq!(program(&mut io, 4, 0x34, 0), None);
        // Edge entries have no remote IRR, so EOIs do nothing.
        assert_eq!(io.eoi(0x34).count(), 0);
    }

    #[test]
    fn level_triggered_remote_irr_and_eoi() {
        let mut io = IoApic::new(0);
        // Level, active low (as PCI INTx), fixed, logical destination 1.
        program(&mut io, 16, 0xA841, 1);
        let d = io.set_irq(16, true).unwrap();
        assert!(d.level_triggered && d.logical);
        assert_eq!((d.vector, d.dest, d.pin), (0x41, 1, 16));
        assert_eq!(read(&mut io, 0x30) & (1 << 14), 1 << 14, "remote IRR");
        // Still asserted, in service: nothing more.
        assert_eq!(io.set_irq(16, true), None);
        // EOI with another vector does nothing; with ours, the still-asserted pin sends
        // again.
        assert_eq!(io.eoi(0x42).count(), 0);
        let again: Vec<Delivery> = io.eoi(0x41).collect();
        assert_eq!(again, [d]);
        // The device deasserts; the next EOI clears remote IRR for good.
        io.set_irq(16, false);
        assert_eq!(io.eoi(0x41).count(), 0);
        assert_eq!(read(&mut io, 0x30) & (1 << 14), 0);
        // A new assertion delivers.
        assert!(io.set_irq(16, true).is_some());
    }

    #[test]
    fn unmasking_an_asserted_level_pin_delivers() {
        let mut io = IoApic::new(0);
        program(&mut io, 10, 0x1_8050, 0);
        assert_eq!(io.set_irq(10, true), None); // masked: held
        assert!(io.pin_asserted(10));
        let d = program(&mut io, 10, 0x8050, 0).unwrap();
        assert_eq!(d.vector, 0x50);
        // Rewriting the entry while in service sends nothing more.
        assert_eq!(program(&mut io, 10, 0x8050, 0), None);
    }

    #[test]
    fn switching_to_edge_clears_remote_irr() {
        let mut io = IoApic::new(0);
        program(&mut io, 9, 0x8060, 0);
        io.set_irq(9, true).unwrap();
        // Linux's remote-IRR clearing sequence: mask + edge, then level again.
        program(&mut io, 9, 0x1_0060, 0);
        assert_eq!(read(&mut io, 0x10 + 18) & (1 << 14), 0);
        // Back to level, unmasked, pin still asserted: sends.
        assert!(program(&mut io, 9, 0x8060, 0).is_some());
    }

    #[test]
    fn several_entries_share_an_eoi() {
        let mut io = IoApic::new(0);
        program(&mut io, 5, 0x8070, 0);
        program(&mut io, 7, 0x8070, 0);
        io.set_irq(5, true).unwrap();
        io.set_irq(7, true).unwrap();
        let pins: Vec<u8> = io.eoi(0x70).map(|d| d.pin).collect();
        assert_eq!(pins, [5, 7]);
    }

    #[test]
    fn special_delivery_modes_are_edge() {
        let mut io = IoApic::new(0);
        // NMI with the level bit set still behaves edge-triggered.
        program(&mut io, 3, 0x8400, 0);
        let d = io.set_irq(3, true).unwrap();
        assert_eq!(d.mode, DeliveryMode::Nmi);
        assert!(!d.level_triggered);
        assert_eq!(io.set_irq(3, true), None);
        // ExtINT (the 8259 through pin 0).
        program(&mut io, 0, 0x700, 0);
        assert_eq!(io.pulse_irq(0).unwrap().mode, DeliveryMode::ExtInt);
    }

    #[test]
    fn out_of_range_pins_and_isa_mapping() {
        let mut io = IoApic::new(0);
        assert_eq!(io.set_irq(24, true), None);
        assert!(!io.pin_asserted(24));
        assert_eq!(isa_irq_pin(0), 2);
        assert_eq!(isa_irq_pin(1), 1);
        assert_eq!(isa_irq_pin(4), 4);
        assert_eq!(isa_irq_pin(15), 15);
    }

    crate::state::testing::snap_impl!(IoApic);

    /// A random guest access, pin change or EOI; returns every message it sends and
    /// what a read returns.
    fn random_op(io: &mut IoApic, rng: &mut crate::state::testing::Rng) -> (u32, Vec<Delivery>) {
        match rng.below(6) {
            0 => (io.mmio_read(rng.below(0x20) & !3, 4), Vec::new()),
            1 => {
                let index = [0u8, 1, 2, 0x10 + rng.below(48) as u8][rng.below(4) as usize];
                (
                    io.mmio_write(reg::IOREGSEL, 4, index.into())
                        .is_some()
                        .into(),
                    Vec::new(),
                )
            }
            2 => {
                // Mostly plausible entries: a vector, level or edge, masked or not.
                let v = rng.next() as u32 & 0x0001_AFFF;
                (0, io.mmio_write(reg::IOWIN, 4, v).into_iter().collect())
            }
            3 => (
                0,
                io.set_irq(rng.below(24) as u8, rng.chance(2))
                    .into_iter()
                    .collect(),
            ),
            4 => (0, io.pulse_irq(rng.below(24) as u8).into_iter().collect()),
            _ => (0, io.eoi(0x30 + rng.below(4) as u8).collect()),
        }
    }

    /// Linux's usual set-up: the timer edge-triggered on pin 2, the UART on pin 4,
    /// two level-triggered PCI pins, one of them asserted and in service (remote
    /// IRR), the other asserted while masked; ID changed, IOREGSEL left on an entry.
    fn busy_ioapic() -> IoApic {
        let mut io = IoApic::new(0);
        write(&mut io, reg::ID, 0x0300_0000);
        program(&mut io, 2, 0x30, 0);
        program(&mut io, 4, 0x31, 1);
        program(
            &mut io,
            10,
            0x32 | entry::LEVEL as u32 | entry::POLARITY_LOW as u32,
            0,
        );
        program(&mut io, 11, 0x33 | (entry::LEVEL | entry::MASKED) as u32, 0);
        assert!(io.set_irq(10, true).is_some());
        assert!(io.set_irq(11, true).is_none());
        io.set_irq(4, true);
        select(&mut io, reg::REDIRECTION + 2 * 11);
        io
    }

    #[test]
    fn snapshot_restores_identical_behaviour() {
        let mut a = busy_ioapic();
        let snap = a.state();
        assert_eq!(&snap[..8], b"ioapic  ");
        let mut b = IoApic::new(0);
        b.restore(&snap).unwrap();
        assert_eq!(b.state(), snap);
        assert_eq!(b.id(), 3);
        assert_ne!(b.entry(10).unwrap() & entry::REMOTE_IRR, 0);
        // Unmasking pin 11 (IOREGSEL still points at it) sends the held level.
        let unmask = 0x33 | entry::LEVEL as u32;
        let sent = b.mmio_write(reg::IOWIN, 4, unmask);
        assert_eq!(sent.map(|d| (d.pin, d.vector)), Some((11, 0x33)));
        assert_eq!(a.mmio_write(reg::IOWIN, 4, unmask), sent);
        // The EOI for pin 10's vector sends it again: still asserted.
        assert_eq!(b.eoi(0x32).map(|d| d.pin).collect::<Vec<_>>(), [10]);
        assert_eq!(a.eoi(0x32).map(|d| d.pin).collect::<Vec<_>>(), [10]);
        crate::state::testing::lockstep(&mut a, &mut b, 7, random_op);
        assert_eq!(a.state(), b.state());
    }

    #[test]
    fn snapshot_refusals_and_corruption() {
        let snap = busy_ioapic().state();
        let mut io = IoApic::new(0);
        crate::state::testing::check_refusals(&mut io, &snap, |io| {
            let mut rng = crate::state::testing::Rng::new(8);
            for _ in 0..60 {
                random_op(io, &mut rng);
            }
        });
        // Remote IRR on an edge-triggered entry (pin 2) cannot happen.
        let mut bad = snap.clone();
        bad[12 + 2 * 8 + 1] |= (entry::REMOTE_IRR >> 8) as u8;
        assert!(matches!(
            io.restore(&bad),
            Err(StateError::Invalid { what, .. }) if what.contains("remote IRR")
        ));
    }
}
