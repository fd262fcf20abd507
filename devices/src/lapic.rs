//! A local APIC for one virtual CPU, in xAPIC (MMIO) and x2APIC (MSR) mode, following
//! the Intel SDM Vol. 3A chapter "Advanced Programmable Interrupt Controller (APIC)"
//! (chapter 11 in current editions, 10 in older ones; section numbers below are the
//! current ones).
//!
//! What is modelled:
//!
//! * every architectural register (SDM table 11-1 / 11-6): ID, version, TPR, APR and
//!   PPR (computed), EOI, LDR, DFR, SVR, ISR/TMR/IRR, ESR, the seven LVT entries,
//!   ICR, the timer's initial/current count and divide configuration;
//! * interrupt acceptance and priority (SDM 11.8.3-11.8.5): [`LocalApic::deliver`] puts
//!   a vector in IRR (and TMR for level-triggered ones), [`LocalApic::pending_vector`]
//!   is the highest IRR vector whose priority class beats PPR, [`LocalApic::acknowledge`]
//!   moves it to ISR, EOI retires the highest ISR vector and reports level-triggered
//!   vectors for the EOI broadcast to the IOAPIC;
//! * the timer in one-shot, periodic and TSC-deadline mode (SDM 11.5.4), a periodic
//!   one firing at most every [`MIN_PERIODIC_NS`];
//! * the `IA32_APIC_BASE` MSR with its enable, x2APIC-enable and BSP bits and the
//!   mode transitions of SDM 11.12.5, and the x2APIC MSR interface (SDM 11.12.1) with
//!   the 64-bit ICR and the SELF IPI register;
//! * IPIs: one with the "self" shorthand is delivered here at once (fixed: IRR; NMI:
//!   [`LocalApic::take_nmi`]). Every other IPI can reach several APICs, this one
//!   included, so it is handed to the VMM ([`LocalApic::take_outgoing_ipi`]), which
//!   routes it across the VM's APICs ([`crate::ipi::route`]): delivery to each target
//!   (this one too) goes through [`LocalApic::deliver`] / [`LocalApic::deliver_nmi`],
//!   and INIT/SIPI change the target vCPU's run state, which is the VMM's.
//!
//! ## Time
//!
//! The model has no clock of its own. Every call that can observe time takes `now_ns`,
//! the guest's time in nanoseconds, which must never go backwards. The same timeline
//! defines the guest's TSC, which `IA32_TSC_DEADLINE` is compared with (SDM 11.5.4.1):
//! `TSC = tsc_at_zero + now_ns * tsc_hz / 10^9` ([`LapicConfig::tsc_at_zero`]; a VMM
//! whose `now_ns` starts later than the guest's TSC, at its own boot say, or whose
//! guest wrote its TSC, says so there or through [`LocalApic::set_guest_tsc`]:
//! otherwise every deadline fires late, or early, by the difference). The timer counts at
//! [`LapicConfig::timer_hz`] (the "bus clock" or "core crystal clock" of SDM 11.5.4)
//! divided by the divide configuration; the default, [`DEFAULT_TIMER_HZ`], is 1 GHz so
//! that one timer tick at divide-by-1 is one nanosecond. Guests calibrate the timer
//! against the PIT (Linux) or read the rate from CPUID, so any rate works as long as
//! the VMM reports the same one wherever it reports one.
//!
//! Every access first brings the timer up to `now_ns` (a due expiry sets IRR then), so
//! the state a guest reads is always current; [`LocalApic::poll_timer`] does the same
//! explicitly and [`LocalApic::next_deadline_ns`] says when the VMM must poll next.
//!
//! ## Deliberate simplifications
//!
//! * The base address cannot move: a write of `IA32_APIC_BASE` with a different base
//!   is refused (#GP). No OS relocates the APIC, and a movable MMIO page would need the
//!   VMM to remap its nested page tables on an MSR write.
//! * The xAPIC ID register is read-only (it is model-specific whether it is writable;
//!   nothing a guest needs writes it). The BSP flag of `IA32_APIC_BASE` is fixed at
//!   construction; writes of that bit are ignored.
//! * Accesses narrower than 32 bits are undefined in the SDM (11.4.1): reads return the
//!   addressed bytes of the register, writes at the register's first byte write the
//!   zero-extended value, writes elsewhere in the 16-byte slot are ignored.
//! * In x2APIC mode, reserved bits are faulted where the SDM makes it explicit and
//!   guests rely on it (EOI and ESR must be written with 0, the ICR's reserved bits);
//!   reserved bits of other registers are ignored, as KVM does.
//! * EOI-broadcast suppression is not offered (version bit 24 is 0), so every EOI of a
//!   level-triggered vector is reported for the IOAPIC.
//! * ExtINT (the 8259 PIC's INTR through LINT0) never goes through IRR: it bypasses the
//!   APIC's priority logic on real hardware too. [`LocalApic::accepts_pic_interrupts`]
//!   tells the VMM whether the PIC may interrupt the CPU.
//!
//! ## Wiring into a VM
//!
//! The VM keeps the xAPIC page ([`LAPIC_BASE`]) and the IOAPIC's page
//! ([`crate::IOAPIC_BASE`]) unmapped in its nested page tables and forwards the
//! faulting accesses; it intercepts RDMSR/WRMSR of the MSRs [`LocalApic::handles_msr`]
//! names. Every ISA interrupt goes to both the 8259 PIC (IRQ n) and the IOAPIC
//! (pin [`crate::isa_irq_pin`]`(n)`); the guest masks whichever it does not use.
//!
//! ```
//! use devices::{isa_irq_pin, Delivery, DeliveryMode, IoApic, LapicConfig, LocalApic};
//! use devices::{IOAPIC_BASE, IOAPIC_MMIO_SIZE, LAPIC_BASE, LAPIC_MMIO_SIZE};
//!
//! struct Platform {
//!     lapic: LocalApic,
//!     ioapic: IoApic,
//!     // pic: Pic8259, pit: ..., the other devices
//! }
//!
//! impl Platform {
//!     /// An IOAPIC message goes to the local APIC if it is addressed to it.
//!     fn route(&mut self, d: Delivery) {
//!         match d.mode {
//!             DeliveryMode::Fixed | DeliveryMode::LowestPriority => {
//!                 if self.lapic.matches_ioapic_destination(d.dest, d.logical) {
//!                     self.lapic.deliver(d.vector, d.level_triggered);
//!                 }
//!             }
//!             // NMI: inject an NMI. ExtINT: the PIC's INTR through the IOAPIC
//!             // (not described by the tables, so guests do not use it).
//!             _ => {}
//!         }
//!     }
//!
//!     /// An ISA device's interrupt edge (the PIT's IRQ 0, COM1's IRQ 4, ...).
//!     fn isa_edge(&mut self, irq: u8) {
//!         // self.pic.pulse_irq(irq);
//!         if let Some(d) = self.ioapic.pulse_irq(isa_irq_pin(irq)) {
//!             self.route(d);
//!         }
//!     }
//!
//!     /// A nested-page fault on one of the two pages; returns what a read reads.
//!     fn mmio(&mut self, gpa: u64, size: u8, write: bool, value: u32, now_ns: u64) -> u32 {
//!         if (LAPIC_BASE..LAPIC_BASE + LAPIC_MMIO_SIZE).contains(&gpa) {
//!             let offset = gpa - LAPIC_BASE;
//!             if !write {
//!                 return self.lapic.mmio_read(offset, size, now_ns);
//!             }
//!             // A level-triggered EOI is broadcast to the IOAPIC, which may resend.
//!             if let Some(vector) = self.lapic.mmio_write(offset, size, value, now_ns) {
//!                 for d in self.ioapic.eoi(vector) {
//!                     self.route(d);
//!                 }
//!             }
//!         } else if (IOAPIC_BASE..IOAPIC_BASE + IOAPIC_MMIO_SIZE).contains(&gpa) {
//!             let offset = gpa - IOAPIC_BASE;
//!             if !write {
//!                 return self.ioapic.mmio_read(offset, size);
//!             }
//!             if let Some(d) = self.ioapic.mmio_write(offset, size, value) {
//!                 self.route(d);
//!             }
//!         }
//!         0
//!     }
//!
//!     /// Before VM entry, when the guest can take an interrupt (IF=1, no shadow): the
//!     /// vector to inject. When it cannot but one is pending, ask for an
//!     /// interrupt-window exit instead. A halted vCPU sleeps until an interrupt
//!     /// source fires or `lapic.next_deadline_ns()`.
//!     fn next_interrupt(&mut self, now_ns: u64) -> Option<u8> {
//!         self.lapic.poll_timer(now_ns);
//!         // ExtINT first, as it bypasses the APIC's priorities:
//!         // if self.lapic.accepts_pic_interrupts() && self.pic.pending_vector().is_some() {
//!         //     return self.pic.acknowledge();
//!         // }
//!         self.lapic.acknowledge()
//!     }
//! }
//!
//! let mut p = Platform {
//!     lapic: LocalApic::new(LapicConfig::new(2_000_000_000)),
//!     ioapic: IoApic::new(0),
//! };
//! p.lapic.setup_virtual_wire(); // the VMM plays firmware
//! // The guest routes COM1 (IRQ 4) to vector 0x34 on APIC 0, edge-triggered.
//! p.mmio(IOAPIC_BASE, 4, true, 0x10 + 2 * 4, 0); // IOREGSEL: entry 4, low dword
//! p.mmio(IOAPIC_BASE + 0x10, 4, true, 0x34, 0); // IOWIN: vector 0x34, unmasked
//! p.isa_edge(4);
//! assert_eq!(p.next_interrupt(0), Some(0x34));
//! p.mmio(LAPIC_BASE + 0xB0, 4, true, 0, 0); // EOI
//! // The guest starts the APIC timer: periodic, vector 0xEC, divide by 1, 1 ms.
//! p.mmio(LAPIC_BASE + 0x3E0, 4, true, 0b1011, 0);
//! p.mmio(LAPIC_BASE + 0x320, 4, true, (1 << 17) | 0xEC, 0);
//! p.mmio(LAPIC_BASE + 0x380, 4, true, 1_000_000, 0);
//! assert_eq!(p.lapic.next_deadline_ns(), Some(1_000_000));
//! assert_eq!(p.next_interrupt(999_999), None);
//! assert_eq!(p.next_interrupt(1_000_000), Some(0xEC));
//! ```

use alloc::vec::Vec;
use core::fmt;

use crate::bus::all_ones;
use crate::state::{Reader, StateError, Tag, Writer};

/// The architectural physical base of the xAPIC register page.
pub const LAPIC_BASE: u64 = 0xFEE0_0000;
/// The size of the register page the VMM traps.
pub const LAPIC_MMIO_SIZE: u64 = 0x1000;
/// The default timer input clock: 1 GHz, one tick per nanosecond at divide-by-1.
pub const DEFAULT_TIMER_HZ: u64 = 1_000_000_000;
/// The version register: version 0x14 (an integrated APIC of the Pentium 4 / Xeon
/// generation and later), "Max LVT Entry" 5 in bits 23:16 (SDM 11.4.8), bit 24
/// (EOI-broadcast suppression) clear.
pub const LAPIC_VERSION: u32 = 0x0005_0014;

const NS_PER_SEC: u128 = 1_000_000_000;

/// MSRs the local APIC answers.
pub mod msr {
    /// `IA32_APIC_BASE`: base address, enable (bit 11), x2APIC enable (bit 10), BSP (bit 8).
    pub const IA32_APIC_BASE: u32 = 0x1B;
    /// `IA32_TSC_DEADLINE`: the TSC-deadline timer's target (SDM 11.5.4.1).
    pub const IA32_TSC_DEADLINE: u32 = 0x6E0;
    /// The first MSR of the x2APIC range: MSR = 0x800 + xAPIC offset / 16.
    pub const X2APIC_FIRST: u32 = 0x800;
    /// The last MSR of the x2APIC range.
    pub const X2APIC_LAST: u32 = 0x8FF;
    /// The 64-bit x2APIC ICR (xAPIC offsets 0x300 and 0x310 in one register).
    pub const X2APIC_ICR: u32 = 0x830;
    /// The x2APIC SELF IPI register (write-only, x2APIC mode only).
    pub const X2APIC_SELF_IPI: u32 = 0x83F;
}

/// `IA32_APIC_BASE` bits (SDM 11.4.4 and 11.12.1).
pub mod base {
    /// This processor is the bootstrap processor.
    pub const BSP: u64 = 1 << 8;
    /// EXTD: x2APIC mode.
    pub const X2APIC_ENABLE: u64 = 1 << 10;
    /// EN: the APIC is globally enabled.
    pub const ENABLE: u64 = 1 << 11;
    /// The base address field (bits 12 up to MAXPHYADDR-1; 52 bits allowed here).
    pub const ADDRESS_MASK: u64 = 0x000F_FFFF_FFFF_F000;
}

/// Register offsets in the xAPIC page (SDM table 11-1). The x2APIC MSR of a register is
/// `0x800 + offset / 16`.
pub mod reg {
    pub const ID: u32 = 0x20;
    pub const VERSION: u32 = 0x30;
    pub const TPR: u32 = 0x80;
    /// Arbitration priority (xAPIC only).
    pub const APR: u32 = 0x90;
    pub const PPR: u32 = 0xA0;
    pub const EOI: u32 = 0xB0;
    /// Remote read (xAPIC only, reads 0).
    pub const RRD: u32 = 0xC0;
    pub const LDR: u32 = 0xD0;
    /// Destination format (xAPIC only).
    pub const DFR: u32 = 0xE0;
    pub const SVR: u32 = 0xF0;
    /// ISR bits 31:0; the eight ISR registers are 16 bytes apart up to 0x170.
    pub const ISR: u32 = 0x100;
    /// TMR bits 31:0, up to 0x1F0.
    pub const TMR: u32 = 0x180;
    /// IRR bits 31:0, up to 0x270.
    pub const IRR: u32 = 0x200;
    pub const ESR: u32 = 0x280;
    pub const LVT_CMCI: u32 = 0x2F0;
    pub const ICR_LOW: u32 = 0x300;
    /// ICR bits 63:32 (xAPIC only; in x2APIC mode the ICR is one 64-bit MSR).
    pub const ICR_HIGH: u32 = 0x310;
    pub const LVT_TIMER: u32 = 0x320;
    pub const LVT_THERMAL: u32 = 0x330;
    pub const LVT_PERF: u32 = 0x340;
    pub const LVT_LINT0: u32 = 0x350;
    pub const LVT_LINT1: u32 = 0x360;
    pub const LVT_ERROR: u32 = 0x370;
    pub const TIMER_INITIAL: u32 = 0x380;
    pub const TIMER_CURRENT: u32 = 0x390;
    pub const TIMER_DIVIDE: u32 = 0x3E0;
    /// SELF IPI (x2APIC only, write-only).
    pub const SELF_IPI: u32 = 0x3F0;
}

/// Local vector table entry bits (SDM figure 11-8).
pub mod lvt {
    pub const VECTOR: u32 = 0xFF;
    /// Bits 10:8, the delivery mode (not in the timer and error entries).
    pub const DELIVERY_MODE: u32 = 0x700;
    pub const DM_FIXED: u32 = 0x000;
    pub const DM_SMI: u32 = 0x200;
    pub const DM_NMI: u32 = 0x400;
    pub const DM_INIT: u32 = 0x500;
    pub const DM_EXTINT: u32 = 0x700;
    /// Delivery status (read-only; always idle here).
    pub const SEND_PENDING: u32 = 1 << 12;
    /// LINT0/1: input pin polarity, 1 = active low.
    pub const POLARITY_LOW: u32 = 1 << 13;
    /// LINT0/1: remote IRR (read-only).
    pub const REMOTE_IRR: u32 = 1 << 14;
    /// LINT0/1: 1 = level-triggered.
    pub const LEVEL: u32 = 1 << 15;
    pub const MASKED: u32 = 1 << 16;
    /// Timer: bits 18:17, the timer mode.
    pub const TIMER_MODE: u32 = 3 << 17;
    pub const TIMER_ONE_SHOT: u32 = 0;
    pub const TIMER_PERIODIC: u32 = 1 << 17;
    pub const TIMER_TSC_DEADLINE: u32 = 2 << 17;
}

/// Spurious-interrupt vector register bits (SDM 11.9).
pub mod svr {
    pub const VECTOR: u32 = 0xFF;
    /// APIC software enable.
    pub const ENABLE: u32 = 1 << 8;
    /// Focus processor checking (stored, meaningless with one CPU).
    pub const FOCUS_DISABLE: u32 = 1 << 9;
}

/// Error status register bits (SDM 11.5.3; the Pentium 4 and later set).
pub mod esr {
    /// An IPI this APIC sent had a vector 0-15.
    pub const SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
    /// An interrupt this APIC received (or generated locally) had a vector 0-15.
    pub const RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;
    /// Software accessed an offset with no register behind it.
    pub const ILLEGAL_REGISTER: u32 = 1 << 7;
}

/// Interrupt command register bits (SDM figure 11-12).
pub mod icr {
    pub const VECTOR: u64 = 0xFF;
    pub const DELIVERY_MODE: u64 = 0x700;
    pub const DEST_LOGICAL: u64 = 1 << 11;
    /// Delivery status (xAPIC; read-only and always idle here, reserved in x2APIC).
    pub const SEND_PENDING: u64 = 1 << 12;
    /// Level: 1 = assert (everything but the INIT level de-assert IPI).
    pub const ASSERT: u64 = 1 << 14;
    pub const TRIGGER_LEVEL: u64 = 1 << 15;
    /// Bits 19:18, the destination shorthand.
    pub const SHORTHAND: u64 = 3 << 18;
    /// The bits of the low half software can write (both modes).
    pub const LOW_WRITABLE: u64 = 0x000C_CFFF;
    /// Low-half bits that are reserved in x2APIC mode (writing them is #GP).
    pub const X2APIC_RESERVED: u64 = 0xFFF3_3000;
}

/// The local vector table, in the order the array below keeps it.
const LVT_CMCI: usize = 0;
const LVT_TIMER: usize = 1;
const LVT_THERMAL: usize = 2;
const LVT_PERF: usize = 3;
const LVT_LINT0: usize = 4;
const LVT_LINT1: usize = 5;
const LVT_ERROR: usize = 6;
const LVT_COUNT: usize = 7;

/// The software-writable bits of each LVT entry (SDM figure 11-8): the delivery status
/// and remote IRR bits are read-only, the timer and error entries have no delivery
/// mode, only LINT0/1 have polarity and trigger mode.
const LVT_WRITABLE: [u32; LVT_COUNT] = [
    lvt::VECTOR | lvt::DELIVERY_MODE | lvt::MASKED, // CMCI
    lvt::VECTOR | lvt::MASKED | lvt::TIMER_MODE,    // timer
    lvt::VECTOR | lvt::DELIVERY_MODE | lvt::MASKED, // thermal
    lvt::VECTOR | lvt::DELIVERY_MODE | lvt::MASKED, // perf
    lvt::VECTOR | lvt::DELIVERY_MODE | lvt::POLARITY_LOW | lvt::LEVEL | lvt::MASKED, // LINT0
    lvt::VECTOR | lvt::DELIVERY_MODE | lvt::POLARITY_LOW | lvt::LEVEL | lvt::MASKED, // LINT1
    lvt::VECTOR | lvt::MASKED,                      // error
];

/// Why an MSR access failed. Every variant means the guest gets #GP(0), which is what
/// the hardware raises in each case (SDM 11.12.1.2, 11.12.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicError {
    /// The MSR is not one the local APIC answers (see [`LocalApic::handles_msr`]).
    NotApicMsr,
    /// An x2APIC MSR (0x800-0x8FF) while the APIC is not in x2APIC mode.
    NotX2apicMode,
    /// An x2APIC MSR with no register behind it.
    NoSuchRegister,
    /// A write to a read-only register.
    ReadOnly,
    /// A read of a write-only register (EOI, SELF IPI).
    WriteOnly,
    /// A write that sets reserved bits.
    ReservedBits,
    /// An `IA32_APIC_BASE` write asking for an invalid state or transition (EXTD
    /// without EN, x2APIC back to xAPIC, disabled straight to x2APIC, or x2APIC when
    /// the CPU does not offer it).
    InvalidTransition,
    /// An `IA32_APIC_BASE` write with a different base address; relocation is not
    /// supported.
    Relocation,
}

impl fmt::Display for ApicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ApicError::NotApicMsr => "not a local APIC MSR",
            ApicError::NotX2apicMode => "x2APIC MSR accessed outside x2APIC mode",
            ApicError::NoSuchRegister => "no x2APIC register at this MSR",
            ApicError::ReadOnly => "write to a read-only APIC register",
            ApicError::WriteOnly => "read of a write-only APIC register",
            ApicError::ReservedBits => "reserved bits set in an APIC register write",
            ApicError::InvalidTransition => "invalid APIC mode transition",
            ApicError::Relocation => "relocating the APIC base is not supported",
        })
    }
}

/// The delivery mode of an IPI, LVT entry or IOAPIC redirection entry (SDM 11.6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryMode {
    Fixed,
    LowestPriority,
    Smi,
    Nmi,
    Init,
    StartUp,
    ExtInt,
    /// Encoding 3 (reserved everywhere).
    Reserved,
}

impl DeliveryMode {
    /// Decodes bits 2:0 of `bits` (the field already shifted down from bits 10:8).
    /// The encoding [`Self::from_bits`] decodes (bits 2:0).
    pub const fn bits(self) -> u32 {
        match self {
            DeliveryMode::Fixed => 0,
            DeliveryMode::LowestPriority => 1,
            DeliveryMode::Smi => 2,
            DeliveryMode::Reserved => 3,
            DeliveryMode::Nmi => 4,
            DeliveryMode::Init => 5,
            DeliveryMode::StartUp => 6,
            DeliveryMode::ExtInt => 7,
        }
    }

    pub const fn from_bits(bits: u32) -> Self {
        match bits & 7 {
            0 => DeliveryMode::Fixed,
            1 => DeliveryMode::LowestPriority,
            2 => DeliveryMode::Smi,
            4 => DeliveryMode::Nmi,
            5 => DeliveryMode::Init,
            6 => DeliveryMode::StartUp,
            7 => DeliveryMode::ExtInt,
            _ => DeliveryMode::Reserved,
        }
    }
}

/// The destination shorthand of an IPI (ICR bits 19:18).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shorthand {
    /// Use the destination field.
    None,
    SelfOnly,
    AllIncludingSelf,
    AllExcludingSelf,
}

/// One IPI as written to the ICR, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipi {
    pub vector: u8,
    pub mode: DeliveryMode,
    /// Logical (true) or physical destination mode.
    pub logical: bool,
    /// The level bit: false only for the INIT level de-assert IPI.
    pub assert: bool,
    pub level_triggered: bool,
    pub shorthand: Shorthand,
    /// The destination: 8 bits (ICR bits 63:56) in xAPIC mode, 32 (63:32) in x2APIC.
    pub dest: u32,
}

impl Ipi {
    /// Decodes a 64-bit ICR value in the format of the given mode.
    pub const fn from_icr(icr: u64, x2apic: bool) -> Self {
        Ipi {
            vector: (icr & icr::VECTOR) as u8,
            mode: DeliveryMode::from_bits(((icr & icr::DELIVERY_MODE) >> 8) as u32),
            logical: icr & icr::DEST_LOGICAL != 0,
            assert: icr & icr::ASSERT != 0,
            level_triggered: icr & icr::TRIGGER_LEVEL != 0,
            shorthand: match (icr & icr::SHORTHAND) >> 18 {
                0 => Shorthand::None,
                1 => Shorthand::SelfOnly,
                2 => Shorthand::AllIncludingSelf,
                _ => Shorthand::AllExcludingSelf,
            },
            dest: if x2apic {
                (icr >> 32) as u32
            } else {
                (icr >> 56) as u32
            },
        }
    }
}

/// The timer mode selected by LVT timer bits 18:17 (SDM table 11-2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerMode {
    OneShot,
    Periodic,
    TscDeadline,
}

/// What the VMM decides about this APIC when it creates it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LapicConfig {
    /// The APIC ID: the full 32 bits in x2APIC mode, the low 8 bits in xAPIC mode.
    /// It must match CPUID.1:EBX bits 31:24 (and CPUID.0xB:EDX) and the MP/ACPI tables.
    pub apic_id: u32,
    /// Whether this is the bootstrap processor (`IA32_APIC_BASE` bit 8).
    pub bsp: bool,
    /// The timer's input clock before the divider, in Hz.
    pub timer_hz: u64,
    /// The guest's TSC rate in Hz, for the TSC-deadline timer.
    pub tsc_hz: u64,
    /// The guest's TSC (what its RDTSC returns) when `now_ns` is 0; the TSC-deadline
    /// timer fires once `tsc_at_zero + now_ns * tsc_hz / 10^9` reaches the deadline.
    pub tsc_at_zero: u64,
    /// Whether x2APIC mode may be entered; must equal CPUID.1:ECX bit 21 as the guest sees
    /// it (setting EXTD on a CPU without x2APIC is #GP).
    pub x2apic: bool,
}

impl LapicConfig {
    /// The BSP with APIC ID 0, the 1 GHz timer clock, x2APIC not offered.
    pub const fn new(tsc_hz: u64) -> Self {
        Self {
            apic_id: 0,
            bsp: true,
            timer_hz: DEFAULT_TIMER_HZ,
            tsc_hz,
            tsc_at_zero: 0,
            x2apic: false,
        }
    }
}

/// The one-shot/periodic count-down. The current count is computed from the count at
/// `base_ns` and the time since, so nothing has to tick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct CountDown {
    /// The initial-count register (the periodic reload value).
    initial: u32,
    /// The current count at `base_ns`; 0 when the timer is stopped.
    count_at_base: u32,
    base_ns: u64,
    /// When the next expiry is due; `None` when stopped or a one-shot has expired.
    next_fire_ns: Option<u64>,
}

/// The APIC mode that `IA32_APIC_BASE` bits 11:10 select (SDM table 11-5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Disabled,
    XApic,
    X2Apic,
}

fn mode_of(base_msr: u64) -> Option<Mode> {
    match (
        base_msr & base::ENABLE != 0,
        base_msr & base::X2APIC_ENABLE != 0,
    ) {
        (false, false) => Some(Mode::Disabled),
        (true, false) => Some(Mode::XApic),
        (true, true) => Some(Mode::X2Apic),
        (false, true) => None,
    }
}

/// The highest set bit of a 256-bit vector register, as a vector number.
fn highest(bits: &[u32; 8]) -> Option<u8> {
    (0..8)
        .rev()
        .find(|&i| bits[i] != 0)
        .map(|i| (i as u32 * 32 + 31 - bits[i].leading_zeros()) as u8)
}

fn set_bit(bits: &mut [u32; 8], vector: u8) {
    bits[usize::from(vector >> 5)] |= 1 << (vector & 31);
}

fn clear_bit(bits: &mut [u32; 8], vector: u8) {
    bits[usize::from(vector >> 5)] &= !(1 << (vector & 31));
}

fn test_bit(bits: &[u32; 8], vector: u8) -> bool {
    bits[usize::from(vector >> 5)] & (1 << (vector & 31)) != 0
}

/// The LVT array index of an LVT register offset.
fn lvt_index(offset: u32) -> Option<usize> {
    match offset {
        reg::LVT_CMCI => Some(LVT_CMCI),
        reg::LVT_TIMER => Some(LVT_TIMER),
        reg::LVT_THERMAL => Some(LVT_THERMAL),
        reg::LVT_PERF => Some(LVT_PERF),
        reg::LVT_LINT0 => Some(LVT_LINT0),
        reg::LVT_LINT1 => Some(LVT_LINT1),
        reg::LVT_ERROR => Some(LVT_ERROR),
        _ => None,
    }
}

/// The shortest time between two interrupts of a periodic timer (200 us, KVM's
/// default `min_timer_period_us`): a guest that programs a period of a few timer
/// ticks still runs between its interrupts instead of livelocking.
pub const MIN_PERIODIC_NS: u64 = 200_000;

/// One virtual CPU's local APIC. See the module documentation.
#[derive(Clone, Debug)]
pub struct LocalApic {
    config: LapicConfig,
    /// `IA32_APIC_BASE` as the guest reads it.
    apic_base: u64,
    tpr: u32,
    ldr: u32,
    dfr: u32,
    svr: u32,
    isr: [u32; 8],
    tmr: [u32; 8],
    irr: [u32; 8],
    /// ESR as software reads it: the errors latched by the last ESR write.
    esr: u32,
    /// Errors detected since the last ESR write (SDM 11.5.3).
    esr_pending: u32,
    lvt: [u32; LVT_COUNT],
    /// ICR low in bits 31:0, the high half in 63:32 (in xAPIC format the destination is
    /// bits 63:56).
    icr: u64,
    divide: u32,
    countdown: CountDown,
    /// `IA32_TSC_DEADLINE`; 0 = disarmed.
    tsc_deadline: u64,
    nmi_pending: bool,
    /// The last IPI written to the ICR that is not for this APIC alone, until the VMM
    /// takes it for routing.
    outgoing: Option<Ipi>,
    /// IPIs sent through the ICR in all (for statistics).
    sent_ipis: u64,
}

impl LocalApic {
    /// The APIC in its power-up state (SDM 11.4.7.1): globally enabled in xAPIC mode
    /// at [`LAPIC_BASE`], but software-disabled (SVR = 0xFF) with every LVT entry
    /// masked. Firmware normally enables it and sets up virtual-wire mode; a VMM that
    /// boots guests without firmware calls [`Self::setup_virtual_wire`] for the BSP.
    pub fn new(config: LapicConfig) -> Self {
        let mut apic = Self {
            config: LapicConfig {
                timer_hz: config.timer_hz.max(1),
                tsc_hz: config.tsc_hz.max(1),
                ..config
            },
            apic_base: 0,
            tpr: 0,
            ldr: 0,
            dfr: 0,
            svr: 0,
            isr: [0; 8],
            tmr: [0; 8],
            irr: [0; 8],
            esr: 0,
            esr_pending: 0,
            lvt: [0; LVT_COUNT],
            icr: 0,
            divide: 0,
            countdown: CountDown::default(),
            tsc_deadline: 0,
            nmi_pending: false,
            outgoing: None,
            sent_ipis: 0,
        };
        apic.reset();
        apic
    }

    /// Power-up / RESET: xAPIC mode at the architectural base, every register at its
    /// reset value (SDM 11.4.7.1). The recorded-IPI counters survive.
    pub fn reset(&mut self) {
        self.apic_base = LAPIC_BASE | base::ENABLE | if self.config.bsp { base::BSP } else { 0 };
        self.reset_registers();
    }

    /// The register reset values of SDM 11.4.7.1 (also the state after the APIC is
    /// globally disabled and re-enabled).
    fn reset_registers(&mut self) {
        self.tpr = 0;
        self.ldr = 0;
        self.dfr = 0xFFFF_FFFF;
        self.svr = 0xFF;
        self.isr = [0; 8];
        self.tmr = [0; 8];
        self.irr = [0; 8];
        self.esr = 0;
        self.esr_pending = 0;
        self.lvt = [lvt::MASKED; LVT_COUNT];
        self.icr = 0;
        self.divide = 0;
        self.countdown = CountDown::default();
        self.tsc_deadline = 0;
        self.nmi_pending = false;
    }

    /// What PC firmware leaves behind (SeaBIOS, and what KVM resets the BSP to): the
    /// APIC software-enabled, LINT0 as ExtINT (the 8259's INTR, "virtual wire mode",
    /// MP spec 3.6.2.2) and LINT1 as NMI, both unmasked. Without this, a guest that
    /// never programs the APIC gets no PIC interrupts, since LINT0 is masked at reset.
    pub fn setup_virtual_wire(&mut self) {
        self.svr |= svr::ENABLE;
        self.lvt[LVT_LINT0] = lvt::DM_EXTINT;
        self.lvt[LVT_LINT1] = lvt::DM_NMI;
    }

    /// The APIC ID.
    pub fn id(&self) -> u32 {
        self.config.apic_id
    }

    /// `IA32_APIC_BASE` as the guest reads it.
    pub fn apic_base(&self) -> u64 {
        self.apic_base
    }

    fn mode(&self) -> Mode {
        // apic_base only ever holds valid combinations.
        mode_of(self.apic_base).unwrap_or(Mode::Disabled)
    }

    /// The APIC is globally enabled (`IA32_APIC_BASE.EN`).
    pub fn hw_enabled(&self) -> bool {
        self.mode() != Mode::Disabled
    }

    /// The APIC is software-enabled (SVR bit 8) as well as globally enabled.
    pub fn sw_enabled(&self) -> bool {
        self.hw_enabled() && self.svr & svr::ENABLE != 0
    }

    /// The APIC is in x2APIC mode: the MSRs work and the MMIO page does not.
    pub fn x2apic_mode(&self) -> bool {
        self.mode() == Mode::X2Apic
    }

    /// The xAPIC page at [`LAPIC_BASE`] decodes (globally enabled, not x2APIC). When
    /// it does not, [`Self::mmio_read`] floats to all ones and writes vanish.
    pub fn mmio_enabled(&self) -> bool {
        self.mode() == Mode::XApic
    }

    /// The task priority register (bits 7:0).
    pub fn tpr(&self) -> u8 {
        self.tpr as u8
    }

    /// Writes the TPR, e.g. from an intercepted MOV to CR8 (CR8 is TPR bits 7:4, so
    /// pass `cr8 << 4`; SDM 11.8.6).
    pub fn set_tpr(&mut self, tpr: u8) {
        self.tpr = u32::from(tpr);
    }

    /// The highest in-service vector, or 0 (the "ISRV" of SDM 11.8.3.1).
    fn isrv(&self) -> u8 {
        highest(&self.isr).unwrap_or(0)
    }

    /// The processor priority (SDM 11.8.3.1): the TPR if its class is at least that of
    /// the highest in-service vector, otherwise that vector's class.
    pub fn ppr(&self) -> u8 {
        let tpr = self.tpr as u8;
        let isrv = self.isrv();
        if tpr >> 4 >= isrv >> 4 {
            tpr
        } else {
            isrv & 0xF0
        }
    }

    /// The arbitration priority (SDM 11.8.3.1's P6-family definition; xAPIC only):
    /// the TPR if it outranks both the highest requested and in-service classes,
    /// otherwise the highest of the three classes.
    fn apr(&self) -> u8 {
        let tpr = self.tpr as u8;
        let isrv = self.isrv();
        let irrv = highest(&self.irr).unwrap_or(0);
        if tpr >> 4 >= irrv >> 4 && tpr >> 4 > isrv >> 4 {
            tpr
        } else {
            (tpr & 0xF0).max(isrv & 0xF0).max(irrv & 0xF0)
        }
    }

    // ----------------------------------------------------------------------------
    // Interrupt acceptance, priority, EOI.

    /// Whether `vector` is requested and not yet in service (its IRR bit).
    pub fn irr_has(&self, vector: u8) -> bool {
        test_bit(&self.irr, vector)
    }

    /// Accepts an edge-triggered fixed interrupt (the IOAPIC's edge entries, an MSI,
    /// an IPI): sets its IRR bit. See [`Self::deliver`].
    pub fn set_irr(&mut self, vector: u8) {
        self.deliver(vector, false);
    }

    /// Accepts a fixed interrupt: sets IRR, and sets TMR for a level-triggered one
    /// (clears it for an edge-triggered one) so its EOI is reported for broadcast
    /// (SDM 11.8.4). Returns whether it was accepted.
    ///
    /// Refused: while the APIC is globally disabled or software-disabled (SDM 11.4.7.2:
    /// a software-disabled APIC holds what is already pending but takes no new fixed
    /// interrupts), and vectors 0-15, which set ESR's "receive illegal vector" instead.
    /// A vector whose IRR bit is already set is merged with it, as on hardware.
    pub fn deliver(&mut self, vector: u8, level_triggered: bool) -> bool {
        self.accept(vector, level_triggered, esr::RECEIVE_ILLEGAL_VECTOR)
    }

    fn accept(&mut self, vector: u8, level_triggered: bool, illegal: u32) -> bool {
        if !self.sw_enabled() {
            return false;
        }
        if vector < 16 {
            self.record_error(illegal);
            return false;
        }
        set_bit(&mut self.irr, vector);
        if level_triggered {
            set_bit(&mut self.tmr, vector);
        } else {
            clear_bit(&mut self.tmr, vector);
        }
        true
    }

    /// Notes an error for ESR and raises the error LVT's interrupt unless it is masked
    /// (SDM 11.5.3).
    fn record_error(&mut self, bits: u32) {
        self.esr_pending |= bits;
        let entry = self.lvt[LVT_ERROR];
        let vector = (entry & lvt::VECTOR) as u8;
        // An error vector below 16 would itself be an error; drop it rather than loop.
        if entry & lvt::MASKED == 0 && vector >= 16 && self.sw_enabled() {
            set_bit(&mut self.irr, vector);
            clear_bit(&mut self.tmr, vector);
        }
    }

    /// The vector the CPU would take now: the highest IRR vector whose priority class
    /// (vector bits 7:4) is above the PPR's (SDM 11.8.3.1). `None` when nothing
    /// qualifies or the APIC is globally disabled. Whether the guest can take it
    /// (RFLAGS.IF, interrupt shadow) is the VMM's check.
    pub fn pending_vector(&self) -> Option<u8> {
        if !self.hw_enabled() {
            return None;
        }
        let vector = highest(&self.irr)?;
        (vector >> 4 > self.ppr() >> 4).then_some(vector)
    }

    /// The INTA cycle: moves [`Self::pending_vector`] from IRR to ISR and returns it.
    /// Call it only when the vector is really injected (if the injection is then cut
    /// short by an exit, re-inject the same vector without acknowledging again).
    pub fn acknowledge(&mut self) -> Option<u8> {
        let vector = self.pending_vector()?;
        clear_bit(&mut self.irr, vector);
        set_bit(&mut self.isr, vector);
        Some(vector)
    }

    /// End of interrupt: retires the highest in-service vector (SDM 11.8.5). Returns
    /// the vector if it was level-triggered (its TMR bit is set): the VMM passes it to
    /// the IOAPIC's EOI ([`crate::IoApic::eoi`]). An EOI with nothing in service does
    /// nothing.
    pub fn eoi(&mut self) -> Option<u8> {
        let vector = highest(&self.isr)?;
        clear_bit(&mut self.isr, vector);
        test_bit(&self.tmr, vector).then_some(vector)
    }

    /// Whether the 8259 PIC's INTR reaches the CPU: when the APIC is globally disabled
    /// LINT0 is the processor's INTR pin itself (SDM 11.4.3); otherwise only while
    /// LVT LINT0 is unmasked with delivery mode ExtINT. ExtINT bypasses IRR and the
    /// priority logic (SDM 11.6.1), so the VMM takes the PIC's vector straight from
    /// the PIC.
    pub fn accepts_pic_interrupts(&self) -> bool {
        if !self.hw_enabled() {
            return true;
        }
        let lint0 = self.lvt[LVT_LINT0];
        lint0 & lvt::MASKED == 0 && lint0 & lvt::DELIVERY_MODE == lvt::DM_EXTINT
    }

    /// Takes a pending NMI (from an NMI IPI).
    pub fn take_nmi(&mut self) -> bool {
        core::mem::take(&mut self.nmi_pending)
    }

    /// Whether an NMI is pending (see [`Self::take_nmi`]).
    pub fn nmi_pending(&self) -> bool {
        self.nmi_pending
    }

    /// An NMI arrives (an NMI IPI or an NMI-mode IOAPIC/LVT message). NMIs are not
    /// masked by the APIC's enable bits; the VMM injects it when the CPU can take one.
    pub fn deliver_nmi(&mut self) {
        self.nmi_pending = true;
    }

    /// The IPI last written to the ICR that may reach other APICs (any shorthand but
    /// "self"), for the VMM to route. Taking it clears the record.
    pub fn take_outgoing_ipi(&mut self) -> Option<Ipi> {
        self.outgoing.take()
    }

    /// How many IPIs this APIC has sent through its ICR.
    pub fn sent_ipis(&self) -> u64 {
        self.sent_ipis
    }

    /// The INIT signal (INIT IPI or INIT reset, SDM 11.4.7.3): every register returns
    /// to its power-up value except the APIC ID, and `IA32_APIC_BASE` keeps its base,
    /// enable and mode bits. A pending NMI is discarded with the rest.
    pub fn init(&mut self) {
        self.reset_registers();
    }

    /// Whether an IPI with this destination reaches this APIC (SDM 11.6.2), in the
    /// format of the current mode: physical compares the APIC ID (all ones is a
    /// broadcast), logical matches the LDR in the DFR's flat or cluster model (xAPIC)
    /// or the x2APIC cluster/bitmap format.
    pub fn matches_destination(&self, dest: u32, logical: bool) -> bool {
        if self.x2apic_mode() {
            if dest == u32::MAX {
                return true;
            }
            if !logical {
                return dest == self.config.apic_id;
            }
            dest >> 16 == self.ldr >> 16 && dest & self.ldr & 0xFFFF != 0
        } else {
            self.matches_xapic_destination(dest as u8, logical)
        }
    }

    /// Whether an IOAPIC message (8-bit destination) reaches this APIC. IOAPIC messages
    /// carry xAPIC-format destinations; in x2APIC mode (without interrupt remapping)
    /// an 8-bit physical destination still names the low APIC IDs, and 0xFF is a
    /// broadcast, as on hardware.
    pub fn matches_ioapic_destination(&self, dest: u8, logical: bool) -> bool {
        if self.x2apic_mode() {
            if dest == 0xFF {
                return true;
            }
            if logical {
                self.ldr >> 16 == 0 && u32::from(dest) & self.ldr & 0xFFFF != 0
            } else {
                u32::from(dest) == self.config.apic_id
            }
        } else {
            self.matches_xapic_destination(dest, logical)
        }
    }

    fn matches_xapic_destination(&self, dest: u8, logical: bool) -> bool {
        if dest == 0xFF {
            return true;
        }
        if !logical {
            return u32::from(dest) == self.config.apic_id & 0xFF;
        }
        let ldr = (self.ldr >> 24) as u8;
        if self.dfr >> 28 == 0xF {
            // Flat model: the 8-bit LDR is a bitmap.
            ldr & dest != 0
        } else {
            // Cluster model: bits 7:4 name the cluster, bits 3:0 a bitmap within it.
            dest >> 4 == ldr >> 4 && dest & ldr & 0x0F != 0
        }
    }

    fn send_ipi(&mut self, ipi: Ipi) {
        self.sent_ipis += 1;
        if ipi.shorthand != Shorthand::SelfOnly {
            // May reach any APIC of the VM, this one included: the VMM routes it.
            self.outgoing = Some(ipi);
            return;
        }
        // The self shorthand allows only fixed delivery (SDM table 11-3, "self": fixed
        // only); NMI to self is what Linux's `apic->send_IPI_self(NMI_VECTOR)` relies
        // on, so it is honoured too. Anything else has no defined effect: dropped.
        match ipi.mode {
            DeliveryMode::Fixed | DeliveryMode::LowestPriority => {
                self.accept(ipi.vector, false, esr::SEND_ILLEGAL_VECTOR);
            }
            DeliveryMode::Nmi => self.nmi_pending = true,
            _ => {}
        }
    }

    /// An IPI routed here by the VMM: a fixed or lowest-priority interrupt lands in
    /// IRR (an illegal vector sets "receive illegal vector"), an NMI becomes pending.
    /// Other delivery modes (INIT, SIPI) act on the vCPU and are the VMM's.
    pub fn receive_ipi(&mut self, ipi: &Ipi) {
        match ipi.mode {
            DeliveryMode::Fixed | DeliveryMode::LowestPriority => {
                self.accept(ipi.vector, false, esr::RECEIVE_ILLEGAL_VECTOR);
            }
            DeliveryMode::Nmi => self.nmi_pending = true,
            _ => {}
        }
    }

    // ----------------------------------------------------------------------------
    // The timer.

    /// The timer mode LVT timer selects (the reserved encoding 3 acts as one-shot).
    pub fn timer_mode(&self) -> TimerMode {
        match self.lvt[LVT_TIMER] & lvt::TIMER_MODE {
            lvt::TIMER_PERIODIC => TimerMode::Periodic,
            lvt::TIMER_TSC_DEADLINE => TimerMode::TscDeadline,
            _ => TimerMode::OneShot,
        }
    }

    /// The divider of the divide configuration register (SDM figure 11-10): bits 3 and
    /// 1:0 encode 2, 4, ... 128, and 0b111 divide-by-1.
    fn divisor(&self) -> u128 {
        let code = ((self.divide >> 1) & 0b100) | (self.divide & 0b11);
        if code == 0b111 {
            1
        } else {
            2 << code
        }
    }

    /// Whole timer ticks in `ns` nanoseconds.
    fn ticks_in(&self, ns: u64) -> u128 {
        u128::from(ns) * u128::from(self.config.timer_hz) / (NS_PER_SEC * self.divisor())
    }

    /// Nanoseconds until `ticks` ticks have elapsed (rounded up).
    fn ns_for(&self, ticks: u128) -> u64 {
        let num = ticks * NS_PER_SEC * self.divisor();
        let ns = num.div_ceil(u128::from(self.config.timer_hz));
        u64::try_from(ns).unwrap_or(u64::MAX)
    }

    /// When (in `now_ns`) the guest's TSC reaches the armed deadline: at once (0) for
    /// a deadline the TSC had passed at `now_ns` = 0. The distance is taken modulo
    /// 2^64 as a signed number, so a `tsc_at_zero` below 0 (a guest that set its TSC
    /// to less than the time elapsed) works too.
    fn tsc_deadline_ns(&self) -> u64 {
        let distance = self.tsc_deadline.wrapping_sub(self.config.tsc_at_zero) as i64;
        let Ok(cycles) = u64::try_from(distance) else {
            return 0;
        };
        let ns = (u128::from(cycles) * NS_PER_SEC).div_ceil(u128::from(self.config.tsc_hz));
        u64::try_from(ns).unwrap_or(u64::MAX)
    }

    /// The guest's TSC was set to `tsc` at `now_ns` (a WRMSR of `IA32_TIME_STAMP_COUNTER`
    /// that the VMM carried out by changing the vCPU's TSC offset): an armed
    /// TSC deadline is compared with the new count from now on, as the processor
    /// compares it with whatever the TSC holds (SDM 11.5.4.1).
    pub fn set_guest_tsc(&mut self, tsc: u64, now_ns: u64) {
        let elapsed = u128::from(now_ns) * u128::from(self.config.tsc_hz) / NS_PER_SEC;
        self.config.tsc_at_zero = tsc.wrapping_sub(elapsed as u64);
    }

    /// The guest's TSC at `now_ns` = 0 as the TSC-deadline timer assumes it (see
    /// [`LapicConfig::tsc_at_zero`]): after a restore, the VMM sets the vCPU's TSC
    /// offset to match (or calls [`Self::set_guest_tsc`]).
    pub fn tsc_at_zero(&self) -> u64 {
        self.config.tsc_at_zero
    }

    /// The guest's TSC at `now_ns` = 0 again (a vCPU rebuilt with its TSC offset back
    /// at the VMM's start value); see [`LapicConfig::tsc_at_zero`].
    pub fn set_tsc_at_zero(&mut self, tsc_at_zero: u64) {
        self.config.tsc_at_zero = tsc_at_zero;
    }

    /// The current-count register at `now_ns` (SDM 11.5.4): counts down from the
    /// initial count; a one-shot stays at 0, a periodic timer reloads. Always 0 in
    /// TSC-deadline mode.
    fn current_count(&self, now_ns: u64) -> u32 {
        let c = &self.countdown;
        if self.timer_mode() == TimerMode::TscDeadline || c.count_at_base == 0 {
            return 0;
        }
        let elapsed = self.ticks_in(now_ns.saturating_sub(c.base_ns));
        let at_base = u128::from(c.count_at_base);
        if elapsed < at_base {
            (at_base - elapsed) as u32
        } else if self.timer_mode() == TimerMode::Periodic && c.initial != 0 {
            let initial = u128::from(c.initial);
            (initial - (elapsed - at_base) % initial) as u32
        } else {
            0
        }
    }

    /// Restarts the count-down at `now_ns` from `count` (0 stops it).
    fn start_countdown(&mut self, count: u32, now_ns: u64) {
        self.countdown.count_at_base = count;
        self.countdown.base_ns = now_ns;
        self.countdown.next_fire_ns =
            (count != 0).then(|| now_ns.saturating_add(self.ns_for(u128::from(count))));
    }

    /// Changes something the count-down rate or reload depends on (the divider, the
    /// one-shot/periodic choice) without disturbing the count reached so far.
    fn rebase(&mut self, now_ns: u64, change: impl FnOnce(&mut Self)) {
        let count = self.current_count(now_ns);
        change(self);
        self.start_countdown(count, now_ns);
    }

    /// Brings the timer up to `now_ns`: if it has expired, the LVT timer vector goes to
    /// IRR (unless masked) and a periodic timer rearms, a TSC deadline disarms.
    /// Several periods missed between polls give one interrupt, as an IRR bit holds
    /// one. Returns whether an interrupt was set pending.
    pub fn poll_timer(&mut self, now_ns: u64) -> bool {
        if !self.hw_enabled() {
            return false;
        }
        match self.timer_mode() {
            TimerMode::TscDeadline => {
                if self.tsc_deadline == 0 || now_ns < self.tsc_deadline_ns() {
                    return false;
                }
                // SDM 11.5.4.1: the MSR reads 0 once the deadline has passed.
                self.tsc_deadline = 0;
            }
            mode => {
                match self.countdown.next_fire_ns {
                    Some(due) if due <= now_ns => {}
                    _ => return false,
                }
                self.countdown.next_fire_ns = if mode == TimerMode::Periodic {
                    // A tiny period (count 1, divide by 1) would interrupt the guest
                    // again before it can make progress: at most one expiry per
                    // MIN_PERIODIC_NS, as KVM's min_timer_period_us does.
                    Some(
                        self.next_periodic_expiry(now_ns)
                            .max(now_ns.saturating_add(MIN_PERIODIC_NS)),
                    )
                } else {
                    None
                };
            }
        }
        let entry = self.lvt[LVT_TIMER];
        entry & lvt::MASKED == 0
            && self.accept(
                (entry & lvt::VECTOR) as u8,
                false,
                esr::RECEIVE_ILLEGAL_VECTOR,
            )
    }

    /// The first periodic expiry strictly after `now_ns`: expiries are at ticks
    /// `count_at_base + k * initial` after `base_ns`, computed from the base each time
    /// so that rounding never accumulates.
    fn next_periodic_expiry(&self, now_ns: u64) -> u64 {
        let c = &self.countdown;
        let at_base = u128::from(c.count_at_base);
        let initial = u128::from(c.initial.max(1));
        let elapsed = self.ticks_in(now_ns.saturating_sub(c.base_ns));
        let tick = if elapsed < at_base {
            at_base
        } else {
            at_base + ((elapsed - at_base) / initial + 1) * initial
        };
        c.base_ns.saturating_add(self.ns_for(tick))
    }

    /// When the timer next needs [`Self::poll_timer`] to raise an interrupt: `None`
    /// when it is stopped, masked, or the APIC is disabled. A VMM halting the vCPU
    /// sleeps at most until then.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        if !self.hw_enabled() || self.lvt[LVT_TIMER] & lvt::MASKED != 0 {
            return None;
        }
        match self.timer_mode() {
            TimerMode::TscDeadline => (self.tsc_deadline != 0).then(|| self.tsc_deadline_ns()),
            _ => self.countdown.next_fire_ns,
        }
    }

    fn write_lvt_timer(&mut self, value: u32, now_ns: u64) {
        let old = self.timer_mode();
        let set = |apic: &mut Self| apic.lvt[LVT_TIMER] = value;
        let new = match value & lvt::TIMER_MODE {
            lvt::TIMER_PERIODIC => TimerMode::Periodic,
            lvt::TIMER_TSC_DEADLINE => TimerMode::TscDeadline,
            _ => TimerMode::OneShot,
        };
        if (old == TimerMode::TscDeadline) != (new == TimerMode::TscDeadline) {
            // Switching into or out of TSC-deadline mode disarms the timer (SDM 11.5.4.1).
            set(self);
            self.countdown = CountDown::default();
            self.tsc_deadline = 0;
        } else if old != new {
            self.rebase(now_ns, set);
        } else {
            set(self);
        }
    }

    // ----------------------------------------------------------------------------
    // Register access.

    /// Reads the register at xAPIC `offset` (16-byte aligned) in the given interface.
    fn read_reg(&self, offset: u32, now_ns: u64, x2apic: bool) -> Result<u32, ApicError> {
        let xapic_only = |v: u32| {
            if x2apic {
                Err(ApicError::NoSuchRegister)
            } else {
                Ok(v)
            }
        };
        let index = ((offset >> 4) & 7) as usize;
        Ok(match offset {
            reg::ID if x2apic => self.config.apic_id,
            reg::ID => self.config.apic_id << 24,
            reg::VERSION => LAPIC_VERSION,
            reg::TPR => self.tpr,
            reg::APR => return xapic_only(u32::from(self.apr())),
            reg::PPR => u32::from(self.ppr()),
            // Write-only; xAPIC reads of it return 0.
            reg::EOI if x2apic => return Err(ApicError::WriteOnly),
            reg::EOI => 0,
            reg::RRD => return xapic_only(0),
            reg::LDR => self.ldr,
            reg::DFR => return xapic_only(self.dfr),
            reg::SVR => self.svr,
            0x100..=0x170 => self.isr[index],
            0x180..=0x1F0 => self.tmr[index],
            0x200..=0x270 => self.irr[index],
            reg::ESR => self.esr,
            reg::ICR_LOW => self.icr as u32,
            reg::ICR_HIGH => return xapic_only((self.icr >> 32) as u32),
            reg::TIMER_INITIAL => self.countdown.initial,
            reg::TIMER_CURRENT => self.current_count(now_ns),
            reg::TIMER_DIVIDE => self.divide,
            reg::SELF_IPI if x2apic => return Err(ApicError::WriteOnly),
            _ => match lvt_index(offset) {
                Some(i) => self.lvt[i],
                None => return Err(ApicError::NoSuchRegister),
            },
        })
    }

    /// Writes the register at xAPIC `offset` (the ICR's low half only; the 64-bit
    /// x2APIC ICR is handled by [`Self::write_msr`]). Returns a level-triggered EOI.
    fn write_reg(
        &mut self,
        offset: u32,
        value: u32,
        now_ns: u64,
        x2apic: bool,
    ) -> Result<Option<u8>, ApicError> {
        match offset {
            reg::TPR => self.tpr = value & 0xFF,
            reg::EOI => {
                // SDM 11.12.1.2: a non-zero EOI write in x2APIC mode is #GP.
                if x2apic && value != 0 {
                    return Err(ApicError::ReservedBits);
                }
                return Ok(self.eoi());
            }
            reg::LDR if x2apic => return Err(ApicError::ReadOnly),
            reg::LDR => self.ldr = value & 0xFF00_0000,
            reg::DFR if x2apic => return Err(ApicError::NoSuchRegister),
            // Bits 27:0 are reserved and read as ones.
            reg::DFR => self.dfr = value | 0x0FFF_FFFF,
            reg::SVR => {
                self.svr = value & (svr::VECTOR | svr::ENABLE | svr::FOCUS_DISABLE);
                if self.svr & svr::ENABLE == 0 {
                    // SDM 11.4.7.2: software disabling masks every LVT entry.
                    for entry in &mut self.lvt {
                        *entry |= lvt::MASKED;
                    }
                }
            }
            reg::ESR => {
                // SDM 11.5.3: a write latches the errors seen since the last write
                // (x2APIC: only 0 may be written).
                if x2apic && value != 0 {
                    return Err(ApicError::ReservedBits);
                }
                self.esr = core::mem::take(&mut self.esr_pending);
            }
            reg::ICR_LOW => {
                self.icr = (self.icr & !0xFFFF_FFFF) | (u64::from(value) & icr::LOW_WRITABLE);
                self.send_ipi(Ipi::from_icr(self.icr, x2apic));
            }
            reg::ICR_HIGH if x2apic => return Err(ApicError::NoSuchRegister),
            reg::ICR_HIGH => {
                self.icr = (self.icr & 0xFFFF_FFFF) | (u64::from(value & 0xFF00_0000) << 32);
            }
            reg::TIMER_INITIAL => {
                // Ignored in TSC-deadline mode (SDM 11.5.4.1); 0 stops the timer.
                if self.timer_mode() != TimerMode::TscDeadline {
                    self.countdown.initial = value;
                    self.start_countdown(value, now_ns);
                }
            }
            reg::TIMER_DIVIDE => self.rebase(now_ns, |apic| apic.divide = value & 0b1011),
            reg::SELF_IPI if x2apic => {
                let vector = (value & 0xFF) as u8;
                self.accept(vector, false, esr::SEND_ILLEGAL_VECTOR);
            }
            reg::ID
            | reg::VERSION
            | reg::APR
            | reg::PPR
            | reg::RRD
            | reg::TIMER_CURRENT
            | 0x100..=0x270 => {
                // Read-only: ignored in xAPIC mode, #GP in x2APIC mode. (APR and RRD
                // do not exist in x2APIC mode at all.)
                if x2apic {
                    return Err(match offset {
                        reg::APR | reg::RRD => ApicError::NoSuchRegister,
                        _ => ApicError::ReadOnly,
                    });
                }
            }
            _ => {
                let i = lvt_index(offset).ok_or(ApicError::NoSuchRegister)?;
                let mut value = value & LVT_WRITABLE[i];
                if self.svr & svr::ENABLE == 0 {
                    // The mask cannot be cleared while software-disabled.
                    value |= lvt::MASKED;
                }
                if i == LVT_TIMER {
                    self.write_lvt_timer(value, now_ns);
                } else {
                    self.lvt[i] = value;
                }
            }
        }
        Ok(None)
    }

    /// A guest read of the xAPIC page: `offset` from [`LAPIC_BASE`], `size` 1, 2 or 4
    /// bytes. Reads of a missing register return 0 and set ESR's illegal-register bit.
    pub fn mmio_read(&mut self, offset: u64, size: u8, now_ns: u64) -> u32 {
        if !self.mmio_enabled() {
            return all_ones(size);
        }
        self.poll_timer(now_ns);
        let offset = (offset & (LAPIC_MMIO_SIZE - 1)) as u32;
        let within = offset & 0xF;
        if within >= 4 {
            return 0; // bytes 4-15 of each 16-byte slot are reserved
        }
        let value = match self.read_reg(offset & !0xF, now_ns, false) {
            Ok(v) => v,
            Err(_) => {
                self.record_error(esr::ILLEGAL_REGISTER);
                0
            }
        };
        (value >> (8 * within)) & all_ones(size)
    }

    /// A guest write of the xAPIC page. Returns the vector of a level-triggered EOI,
    /// which the VMM passes to the IOAPIC ([`crate::IoApic::eoi`]).
    pub fn mmio_write(&mut self, offset: u64, size: u8, value: u32, now_ns: u64) -> Option<u8> {
        let _ = size; // narrower writes act as 32-bit ones (see the module docs)
        if !self.mmio_enabled() {
            return None;
        }
        let offset = (offset & (LAPIC_MMIO_SIZE - 1)) as u32;
        if offset & 0xF != 0 {
            return None;
        }
        self.poll_timer(now_ns);
        let eoi = match self.write_reg(offset, value, now_ns, false) {
            Ok(eoi) => eoi,
            Err(_) => {
                self.record_error(esr::ILLEGAL_REGISTER);
                None
            }
        };
        self.poll_timer(now_ns);
        eoi
    }

    /// Whether `msr` is one [`Self::read_msr`] / [`Self::write_msr`] answer:
    /// `IA32_APIC_BASE`, `IA32_TSC_DEADLINE` and the x2APIC range 0x800-0x8FF.
    pub const fn handles_msr(msr: u32) -> bool {
        matches!(
            msr,
            msr::IA32_APIC_BASE | msr::IA32_TSC_DEADLINE | msr::X2APIC_FIRST..=msr::X2APIC_LAST
        )
    }

    /// RDMSR of one of the APIC's MSRs. An error means #GP(0) for the guest.
    pub fn read_msr(&mut self, msr: u32, now_ns: u64) -> Result<u64, ApicError> {
        match msr {
            msr::IA32_APIC_BASE => Ok(self.apic_base),
            msr::IA32_TSC_DEADLINE => {
                self.poll_timer(now_ns);
                // Reads 0 outside TSC-deadline mode (SDM 11.5.4.1).
                Ok(if self.timer_mode() == TimerMode::TscDeadline {
                    self.tsc_deadline
                } else {
                    0
                })
            }
            msr::X2APIC_FIRST..=msr::X2APIC_LAST => {
                if !self.x2apic_mode() {
                    return Err(ApicError::NotX2apicMode);
                }
                self.poll_timer(now_ns);
                if msr == msr::X2APIC_ICR {
                    return Ok(self.icr);
                }
                let offset = (msr - msr::X2APIC_FIRST) << 4;
                self.read_reg(offset, now_ns, true).map(u64::from)
            }
            _ => Err(ApicError::NotApicMsr),
        }
    }

    /// WRMSR of one of the APIC's MSRs. `Ok(Some(vector))` is a level-triggered EOI
    /// for the IOAPIC; an error means #GP(0) for the guest (and nothing changed).
    pub fn write_msr(
        &mut self,
        msr: u32,
        value: u64,
        now_ns: u64,
    ) -> Result<Option<u8>, ApicError> {
        match msr {
            msr::IA32_APIC_BASE => self.write_apic_base(value).map(|()| None),
            msr::IA32_TSC_DEADLINE => {
                self.poll_timer(now_ns);
                // Ignored outside TSC-deadline mode; 0 disarms (SDM 11.5.4.1).
                if self.timer_mode() == TimerMode::TscDeadline && self.hw_enabled() {
                    self.tsc_deadline = value;
                    self.poll_timer(now_ns);
                }
                Ok(None)
            }
            msr::X2APIC_FIRST..=msr::X2APIC_LAST => {
                if !self.x2apic_mode() {
                    return Err(ApicError::NotX2apicMode);
                }
                self.poll_timer(now_ns);
                let result = if msr == msr::X2APIC_ICR {
                    if value & icr::X2APIC_RESERVED != 0 {
                        return Err(ApicError::ReservedBits);
                    }
                    self.icr = value & (0xFFFF_FFFF_0000_0000 | icr::LOW_WRITABLE);
                    self.send_ipi(Ipi::from_icr(self.icr, true));
                    Ok(None)
                } else {
                    // Every other x2APIC register is 32 bits wide; bits 63:32 are
                    // reserved (SDM 11.12.1.2).
                    if value >> 32 != 0 {
                        return Err(ApicError::ReservedBits);
                    }
                    let offset = (msr - msr::X2APIC_FIRST) << 4;
                    self.write_reg(offset, value as u32, now_ns, true)
                };
                self.poll_timer(now_ns);
                result
            }
            _ => Err(ApicError::NotApicMsr),
        }
    }

    /// `IA32_APIC_BASE` writes, with the transitions of SDM figure 11-27 / 11.12.5.
    fn write_apic_base(&mut self, value: u64) -> Result<(), ApicError> {
        let mut allowed = base::ADDRESS_MASK | base::ENABLE | base::BSP;
        if self.config.x2apic {
            allowed |= base::X2APIC_ENABLE;
        }
        if value & !allowed != 0 {
            return Err(if value & base::X2APIC_ENABLE != 0 {
                ApicError::InvalidTransition
            } else {
                ApicError::ReservedBits
            });
        }
        if value & base::ADDRESS_MASK != LAPIC_BASE {
            return Err(ApicError::Relocation);
        }
        let new = mode_of(value).ok_or(ApicError::InvalidTransition)?;
        let old = self.mode();
        match (old, new) {
            (Mode::X2Apic, Mode::XApic) | (Mode::Disabled, Mode::X2Apic) => {
                return Err(ApicError::InvalidTransition)
            }
            // SDM 11.4.3: a globally disabled APIC loses its state; re-enabling it
            // starts from the reset values.
            (Mode::XApic | Mode::X2Apic, Mode::Disabled) => self.reset_registers(),
            // SDM 11.12.10.2: entering x2APIC mode derives the logical ID from the APIC
            // ID (cluster in bits 31:16, a one-hot bit in 15:0).
            (Mode::XApic, Mode::X2Apic) => {
                let id = self.config.apic_id;
                self.ldr = ((id >> 4) << 16) | (1 << (id & 0xF));
            }
            _ => {}
        }
        let bsp = self.apic_base & base::BSP;
        self.apic_base = (value & !base::BSP) | bsp;
        Ok(())
    }
}

impl LocalApic {
    /// The tag of [`Self::state`] (see [`crate::state`]).
    pub const STATE_TAG: Tag = *b"lapic   ";
    /// Bumped whenever the field list changes.
    /// Version 2 dropped the TSC rate (version 1 compared it): the rate is the
    /// host's, measured anew at every boot of the hypervisor, and a snapshot kept on
    /// the disk must restore after a restart that measured it a little differently.
    pub const STATE_VERSION: u16 = 2;

    /// The APIC's registers and pending work, in the format of [`crate::state`]:
    /// `IA32_APIC_BASE`, TPR, LDR, DFR, SVR, ISR/TMR/IRR, ESR (latched and pending),
    /// the LVT, ICR, the divide configuration, the timer (initial count, the count
    /// at its base time, the base and the next expiry, as absolute guest `now_ns`),
    /// the TSC deadline, the guest TSC at time 0, a pending NMI and an IPI not yet
    /// taken for routing.
    ///
    /// The APIC ID, the BSP flag, the APIC timer's clock and whether x2APIC is
    /// offered are the VM's shape: stored to be compared, never restored. The TSC
    /// rate is not stored: the guest's TSC runs at the host's rate, which the
    /// hypervisor measures at every boot (as after a migration without TSC scaling). The count of IPIs
    /// sent is a statistic and restarts.
    pub fn state(&self) -> Vec<u8> {
        let c = &self.config;
        let mut w = Writer::new(&Self::STATE_TAG, Self::STATE_VERSION);
        w.u32(c.apic_id);
        w.bool(c.bsp);
        w.u64(c.timer_hz);
        w.bool(c.x2apic);
        w.u64(c.tsc_at_zero);
        w.u64(self.apic_base);
        for v in [self.tpr, self.ldr, self.dfr, self.svr] {
            w.u32(v);
        }
        for bits in [&self.isr, &self.tmr, &self.irr] {
            for &v in bits {
                w.u32(v);
            }
        }
        w.u32(self.esr);
        w.u32(self.esr_pending);
        for &v in &self.lvt {
            w.u32(v);
        }
        w.u64(self.icr);
        w.u32(self.divide);
        let t = &self.countdown;
        w.u32(t.initial);
        w.u32(t.count_at_base);
        w.u64(t.base_ns);
        w.opt_u64(t.next_fire_ns);
        w.u64(self.tsc_deadline);
        w.bool(self.nmi_pending);
        w.bool(self.outgoing.is_some());
        let ipi = self.outgoing.unwrap_or(Ipi::from_icr(0, false));
        w.u8(ipi.vector);
        w.u8(ipi.mode.bits() as u8);
        w.bool(ipi.logical);
        w.bool(ipi.assert);
        w.bool(ipi.level_triggered);
        w.u8(match ipi.shorthand {
            Shorthand::None => 0,
            Shorthand::SelfOnly => 1,
            Shorthand::AllIncludingSelf => 2,
            Shorthand::AllExcludingSelf => 3,
        });
        w.u32(ipi.dest);
        w.finish()
    }

    /// Takes back what [`Self::state`] returned, for an APIC of the same shape
    /// (ID, BSP flag, APIC timer clock, x2APIC offered; the TSC rate may differ);
    /// nothing changes on an error.
    /// No timer expiry is delivered here: the next access or
    /// [`Self::poll_timer`] brings the timer up to date.
    pub fn restore(&mut self, data: &[u8]) -> Result<(), StateError> {
        let mut r = Reader::new(data, &Self::STATE_TAG, Self::STATE_VERSION)?;
        let c = self.config;
        let id = r.u32()?;
        r.expect("APIC ID", id.into(), c.apic_id.into())?;
        let bsp = r.bool()?;
        r.expect("bootstrap processor flag", bsp.into(), c.bsp.into())?;
        r.expect_u64("APIC timer clock (Hz)", c.timer_hz)?;
        let x2apic = r.bool()?;
        r.expect("x2APIC offered", x2apic.into(), c.x2apic.into())?;

        let mut a = self.clone();
        a.config.tsc_at_zero = r.u64()?;
        a.apic_base = r.u64()?;
        let mut allowed = base::ADDRESS_MASK | base::ENABLE | base::BSP;
        if c.x2apic {
            allowed |= base::X2APIC_ENABLE;
        }
        r.check(
            a.apic_base & !allowed == 0,
            "IA32_APIC_BASE (reserved bits set)",
        )?;
        r.check(
            a.apic_base & base::ADDRESS_MASK == LAPIC_BASE,
            "IA32_APIC_BASE (moved base)",
        )?;
        r.check(
            (a.apic_base & base::BSP != 0) == c.bsp,
            "IA32_APIC_BASE (BSP flag)",
        )?;
        r.check(
            mode_of(a.apic_base).is_some(),
            "IA32_APIC_BASE (x2APIC without enable)",
        )?;
        let x2 = a.x2apic_mode();
        let [tpr, ldr, dfr, svr] = [r.u32()?, r.u32()?, r.u32()?, r.u32()?];
        r.check(tpr <= 0xFF, "TPR")?;
        let derived_ldr = ((c.apic_id >> 4) << 16) | (1 << (c.apic_id & 0xF));
        r.check(
            if x2 {
                // Derived on entering x2APIC mode; INIT clears it.
                ldr == derived_ldr || ldr == 0
            } else {
                ldr & 0x00FF_FFFF == 0
            },
            "LDR",
        )?;
        r.check(dfr | 0x0FFF_FFFF == dfr, "DFR (bits 27:0 clear)")?;
        r.check(
            svr & !(svr::VECTOR | svr::ENABLE | svr::FOCUS_DISABLE) == 0,
            "SVR",
        )?;
        (a.tpr, a.ldr, a.dfr, a.svr) = (tpr, ldr, dfr, svr);
        for bits in [&mut a.isr, &mut a.tmr, &mut a.irr] {
            for v in bits.iter_mut() {
                *v = r.u32()?;
            }
            // Vectors 0-15 are refused on arrival; none can be set.
            r.check(
                bits[0] & 0xFFFF == 0,
                "ISR/TMR/IRR bit for a vector below 16",
            )?;
        }
        a.esr = r.u32()?;
        a.esr_pending = r.u32()?;
        let esr_bits =
            esr::SEND_ILLEGAL_VECTOR | esr::RECEIVE_ILLEGAL_VECTOR | esr::ILLEGAL_REGISTER;
        r.check((a.esr | a.esr_pending) & !esr_bits == 0, "ESR")?;
        for (i, v) in a.lvt.iter_mut().enumerate() {
            *v = r.u32()?;
            r.check(*v & !LVT_WRITABLE[i] == 0, "LVT entry (read-only bits set)")?;
            // SDM 11.4.7.2: a software-disabled APIC has every entry masked.
            r.check(
                svr & svr::ENABLE != 0 || *v & lvt::MASKED != 0,
                "LVT entry unmasked while software-disabled",
            )?;
        }
        a.icr = r.u64()?;
        r.check(
            a.icr & !(0xFFFF_FFFF_0000_0000 | icr::LOW_WRITABLE) == 0,
            "ICR (reserved bits set)",
        )?;
        r.check(
            x2 || a.icr >> 32 & 0x00FF_FFFF == 0,
            "ICR (x2APIC destination outside x2APIC mode)",
        )?;
        a.divide = r.u32()?;
        r.check(a.divide & !0b1011 == 0, "divide configuration")?;
        a.countdown = CountDown {
            initial: r.u32()?,
            count_at_base: r.u32()?,
            base_ns: r.u64()?,
            next_fire_ns: r.opt_u64()?,
        };
        r.check(
            a.countdown.next_fire_ns.is_none() || a.countdown.count_at_base != 0,
            "timer expiry without a count",
        )?;
        a.tsc_deadline = r.u64()?;
        if a.timer_mode() == TimerMode::TscDeadline {
            // Entering TSC-deadline mode stops the count-down, which then ignores
            // the initial-count register (SDM 11.5.4.1).
            r.check(
                a.countdown.initial == 0
                    && a.countdown.count_at_base == 0
                    && a.countdown.next_fire_ns.is_none(),
                "count-down in TSC-deadline mode",
            )?;
        } else {
            r.check(
                a.tsc_deadline == 0,
                "TSC deadline outside TSC-deadline mode",
            )?;
        }
        a.nmi_pending = r.bool()?;
        let has_ipi = r.bool()?;
        let vector = r.u8()?;
        let mode = r.u8()?;
        r.check(mode <= 7, "IPI delivery mode")?;
        let (logical, assert, level_triggered) = (r.bool()?, r.bool()?, r.bool()?);
        let shorthand = match r.u8()? {
            0 => Shorthand::None,
            // A self IPI is delivered at once, never left for routing.
            2 => Shorthand::AllIncludingSelf,
            3 => Shorthand::AllExcludingSelf,
            _ => return Err(r.invalid("IPI shorthand")),
        };
        let dest = r.u32()?;
        let ipi = Ipi {
            vector,
            mode: DeliveryMode::from_bits(mode.into()),
            logical,
            assert,
            level_triggered,
            shorthand,
            dest,
        };
        r.check(
            has_ipi || ipi == Ipi::from_icr(0, false),
            "absent IPI stored as non-zero",
        )?;
        a.outgoing = has_ipi.then_some(ipi);
        r.end()?;
        *self = a;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TSC_HZ: u64 = 2_000_000_000;

    fn apic() -> LocalApic {
        LocalApic::new(LapicConfig::new(TSC_HZ))
    }

    /// An APIC software-enabled the way an OS does it: SVR = enable | spurious 0xFF.
    fn enabled() -> LocalApic {
        let mut a = apic();
        a.mmio_write(reg::SVR.into(), 4, 0x1FF, 0);
        a
    }

    fn x2apic() -> LocalApic {
        let mut a = LocalApic::new(LapicConfig {
            apic_id: 0x23,
            x2apic: true,
            ..LapicConfig::new(TSC_HZ)
        });
        let b = a.read_msr(msr::IA32_APIC_BASE, 0).unwrap();
        a.write_msr(msr::IA32_APIC_BASE, b | base::X2APIC_ENABLE, 0)
            .unwrap();
        a.write_msr(0x80F, 0x1FF, 0).unwrap();
        a
    }

    fn read(a: &mut LocalApic, offset: u32) -> u32 {
        a.mmio_read(offset.into(), 4, 0)
    }

    fn write(a: &mut LocalApic, offset: u32, value: u32) -> Option<u8> {
        a.mmio_write(offset.into(), 4, value, 0)
    }

    #[test]
    fn power_up_state() {
        let mut a = apic();
        assert_eq!(a.apic_base(), 0xFEE0_0900);
        assert_eq!(read(&mut a, reg::ID), 0);
        assert_eq!(read(&mut a, reg::VERSION), 0x0005_0014);
        assert_eq!(read(&mut a, reg::SVR), 0xFF);
        assert_eq!(read(&mut a, reg::DFR), 0xFFFF_FFFF);
        for off in [0x2F0, 0x320, 0x330, 0x340, 0x350, 0x360, 0x370] {
            assert_eq!(read(&mut a, off), lvt::MASKED, "LVT {off:#x}");
        }
        assert!(!a.sw_enabled());
        assert!(!a.accepts_pic_interrupts());
        // Software-disabled: fixed interrupts are not accepted.
        a.set_irr(0x30);
        assert_eq!(a.pending_vector(), None);
    }

    #[test]
    fn id_is_in_bits_31_24() {
        let mut a = LocalApic::new(LapicConfig {
            apic_id: 3,
            bsp: false,
            ..LapicConfig::new(TSC_HZ)
        });
        assert_eq!(read(&mut a, reg::ID), 3 << 24);
        assert_eq!(a.apic_base(), 0xFEE0_0800);
        write(&mut a, reg::ID, 7 << 24); // read-only here
        assert_eq!(read(&mut a, reg::ID), 3 << 24);
    }

    #[test]
    fn enable_via_svr_and_lvt_masking() {
        let mut a = apic();
        // Clearing an LVT mask is ignored while software-disabled.
        write(&mut a, reg::LVT_LINT0, 0x700);
        assert_eq!(read(&mut a, reg::LVT_LINT0), 0x1_0700);
        write(&mut a, reg::SVR, 0x1FF);
        assert!(a.sw_enabled());
        write(&mut a, reg::LVT_LINT0, 0x700);
        assert_eq!(read(&mut a, reg::LVT_LINT0), 0x700);
        assert!(a.accepts_pic_interrupts());
        // Software-disable again: every LVT gets masked.
        write(&mut a, reg::SVR, 0xFF);
        assert_eq!(read(&mut a, reg::LVT_LINT0), 0x1_0700);
        assert!(!a.accepts_pic_interrupts());
    }

    #[test]
    fn virtual_wire_like_firmware() {
        let mut a = apic();
        a.setup_virtual_wire();
        assert!(a.sw_enabled());
        assert!(a.accepts_pic_interrupts());
        assert_eq!(read(&mut a, reg::LVT_LINT0), 0x700);
        assert_eq!(read(&mut a, reg::LVT_LINT1), 0x400);
        // Globally disabled: LINT0 is the INTR pin, the PIC always gets through.
        a.write_msr(msr::IA32_APIC_BASE, 0xFEE0_0100, 0).unwrap();
        assert!(!a.hw_enabled());
        assert!(a.accepts_pic_interrupts());
        assert_eq!(a.mmio_read(reg::ID.into(), 4, 0), 0xFFFF_FFFF);
    }

    #[test]
    fn irr_isr_eoi_cycle_and_priority() {
        let mut a = enabled();
        a.set_irr(0x31);
        a.set_irr(0x52);
        assert_eq!(read(&mut a, reg::IRR + 0x10), 1 << 0x11); // IRR 32-63
        assert_eq!(read(&mut a, reg::IRR + 0x20), 1 << 0x12); // IRR 64-95
        assert_eq!(a.pending_vector(), Some(0x52));
        assert_eq!(a.acknowledge(), Some(0x52));
        assert_eq!(read(&mut a, reg::ISR + 0x20), 1 << 0x12);
        assert_eq!(read(&mut a, reg::PPR), 0x50);
        // 0x31's class (3) does not beat PPR's (5): blocked until EOI.
        assert_eq!(a.pending_vector(), None);
        // A higher class nests.
        a.set_irr(0x61);
        assert_eq!(a.acknowledge(), Some(0x61));
        assert_eq!(read(&mut a, reg::PPR), 0x60);
        assert_eq!(write(&mut a, reg::EOI, 0), None); // edge: no broadcast
        assert_eq!(read(&mut a, reg::PPR), 0x50);
        assert_eq!(write(&mut a, reg::EOI, 0), None);
        assert_eq!(read(&mut a, reg::PPR), 0);
        assert_eq!(a.acknowledge(), Some(0x31));
        write(&mut a, reg::EOI, 0);
        assert_eq!(a.acknowledge(), None);
        // A spare EOI with nothing in service is harmless.
        assert_eq!(write(&mut a, reg::EOI, 0), None);
    }

    #[test]
    fn same_class_does_not_nest() {
        let mut a = enabled();
        a.set_irr(0x40);
        assert_eq!(a.acknowledge(), Some(0x40));
        a.set_irr(0x4F); // higher vector, same class 4
        assert_eq!(a.pending_vector(), None);
        write(&mut a, reg::EOI, 0);
        assert_eq!(a.pending_vector(), Some(0x4F));
    }

    #[test]
    fn tpr_masks_by_class() {
        let mut a = enabled();
        write(&mut a, reg::TPR, 0x55);
        assert_eq!(read(&mut a, reg::PPR), 0x55);
        a.set_irr(0x5F);
        assert_eq!(
            a.pending_vector(),
            None,
            "class 5 does not beat TPR class 5"
        );
        a.set_irr(0x60);
        assert_eq!(a.pending_vector(), Some(0x60));
        write(&mut a, reg::TPR, 0x70);
        assert_eq!(a.pending_vector(), None);
        a.set_tpr(0);
        assert_eq!(a.pending_vector(), Some(0x60));
        // With 0x60 in service, PPR = max(TPR, ISRV class).
        a.acknowledge();
        write(&mut a, reg::TPR, 0x20);
        assert_eq!(read(&mut a, reg::PPR), 0x60);
        assert_eq!(a.pending_vector(), None);
        // APR: TPR is below the in-service class, so APR is the highest class.
        assert_eq!(read(&mut a, reg::APR), 0x60);
    }

    #[test]
    fn level_triggered_eoi_is_reported() {
        let mut a = enabled();
        assert!(a.deliver(0x41, true));
        assert_eq!(read(&mut a, reg::TMR + 0x20), 1 << 1);
        assert_eq!(a.acknowledge(), Some(0x41));
        assert_eq!(write(&mut a, reg::EOI, 0), Some(0x41));
        // Redelivered edge-triggered: TMR is cleared on acceptance.
        a.set_irr(0x41);
        assert_eq!(read(&mut a, reg::TMR + 0x20), 0);
        a.acknowledge();
        assert_eq!(a.eoi(), None);
    }

    #[test]
    fn illegal_vectors_and_esr_latching() {
        let mut a = enabled();
        write(&mut a, reg::LVT_ERROR, 0xFE);
        assert!(!a.deliver(5, false));
        // ESR shows nothing until written (SDM 11.5.3).
        assert_eq!(read(&mut a, reg::ESR), 0);
        write(&mut a, reg::ESR, 0);
        assert_eq!(read(&mut a, reg::ESR), esr::RECEIVE_ILLEGAL_VECTOR);
        write(&mut a, reg::ESR, 0);
        assert_eq!(read(&mut a, reg::ESR), 0);
        // The error LVT raised its vector.
        assert_eq!(a.acknowledge(), Some(0xFE));
        // A missing register sets "illegal register address".
        assert_eq!(read(&mut a, 0x3C0), 0);
        write(&mut a, reg::ESR, 0);
        assert_eq!(read(&mut a, reg::ESR), esr::ILLEGAL_REGISTER);
    }

    #[test]
    fn narrow_reads_and_unaligned_slots() {
        let mut a = enabled();
        assert_eq!(a.mmio_read(0x30, 1, 0), 0x14);
        assert_eq!(a.mmio_read(0x32, 1, 0), 0x05);
        assert_eq!(a.mmio_read(0x30, 2, 0), 0x14);
        assert_eq!(a.mmio_read(0x34, 4, 0), 0);
        // A write into the middle of a slot does nothing.
        a.mmio_write(0x84, 4, 0xFF, 0);
        assert_eq!(a.tpr(), 0);
    }

    #[test]
    fn logical_destinations() {
        let mut a = enabled();
        write(&mut a, reg::LDR, 0x0400_0000);
        assert!(a.matches_destination(0x04, true));
        assert!(a.matches_destination(0x0C, true));
        assert!(!a.matches_destination(0x03, true));
        assert!(a.matches_destination(0xFF, true));
        assert!(a.matches_destination(0, false));
        assert!(!a.matches_destination(1, false));
        // Cluster model: cluster 2, member bit 1.
        write(&mut a, reg::DFR, 0x0000_0000);
        assert_eq!(read(&mut a, reg::DFR), 0x0FFF_FFFF);
        write(&mut a, reg::LDR, 0x2200_0000);
        assert!(a.matches_destination(0x23, true));
        assert!(!a.matches_destination(0x13, true));
        assert!(!a.matches_destination(0x21, true));
        assert!(a.matches_ioapic_destination(0x22, true));
    }

    #[test]
    fn self_ipi_through_icr() {
        let mut a = enabled();
        // Shorthand "self", fixed, vector 0x40.
        write(&mut a, reg::ICR_LOW, (1 << 18) | 0x40);
        assert_eq!(a.pending_vector(), Some(0x40));
        assert_eq!(read(&mut a, reg::ICR_LOW) & (1 << 12), 0, "delivery idle");
        a.acknowledge();
        write(&mut a, reg::EOI, 0);
        // Physical destination = own ID, no shorthand: for the VMM to route (it may
        // name several APICs), nothing delivered here directly.
        write(&mut a, reg::ICR_HIGH, 0);
        write(&mut a, reg::ICR_LOW, 0x41);
        assert_eq!(a.pending_vector(), None);
        let ipi = a.take_outgoing_ipi().unwrap();
        assert_eq!(
            (ipi.vector, ipi.dest, ipi.shorthand),
            (0x41, 0, Shorthand::None)
        );
        a.receive_ipi(&ipi);
        assert_eq!(a.pending_vector(), Some(0x41));
        a.acknowledge();
        write(&mut a, reg::EOI, 0);
        // INIT to all-excluding-self: routed too.
        write(&mut a, reg::ICR_LOW, (3 << 18) | 0x4500);
        let ipi = a.take_outgoing_ipi().unwrap();
        assert_eq!(
            (ipi.mode, ipi.shorthand, a.sent_ipis()),
            (DeliveryMode::Init, Shorthand::AllExcludingSelf, 3)
        );
        assert!(a.take_outgoing_ipi().is_none());
        // NMI to self.
        write(&mut a, reg::ICR_LOW, (1 << 18) | 0x400);
        assert!(a.take_nmi());
        assert!(!a.take_nmi());
        // Illegal vector to self: "send illegal vector".
        write(&mut a, reg::ICR_LOW, (1 << 18) | 0x05);
        write(&mut a, reg::ESR, 0);
        assert_eq!(read(&mut a, reg::ESR), esr::SEND_ILLEGAL_VECTOR);
    }

    #[test]
    fn divide_configuration_decoding() {
        let mut a = enabled();
        for (dcr, div) in [
            (0b0000, 2),
            (0b0001, 4),
            (0b0010, 8),
            (0b0011, 16),
            (0b1000, 32),
            (0b1001, 64),
            (0b1010, 128),
            (0b1011, 1),
        ] {
            write(&mut a, reg::TIMER_DIVIDE, dcr);
            assert_eq!(a.divisor(), div, "dcr {dcr:#b}");
        }
        write(&mut a, reg::TIMER_DIVIDE, 0xFFFF_FFFF);
        assert_eq!(read(&mut a, reg::TIMER_DIVIDE), 0b1011);
    }

    #[test]
    fn one_shot_timer() {
        let mut a = enabled();
        a.mmio_write(reg::TIMER_DIVIDE.into(), 4, 0b0011, 0); // /16
        a.mmio_write(reg::LVT_TIMER.into(), 4, 0x30, 0); // one-shot, vector 0x30
        a.mmio_write(reg::TIMER_INITIAL.into(), 4, 1000, 100); // 16 us at 1 GHz
        assert_eq!(a.next_deadline_ns(), Some(100 + 16_000));
        assert_eq!(a.mmio_read(reg::TIMER_CURRENT.into(), 4, 100), 1000);
        assert_eq!(a.mmio_read(reg::TIMER_CURRENT.into(), 4, 100 + 1600), 900);
        assert_eq!(a.mmio_read(reg::TIMER_CURRENT.into(), 4, 100 + 1615), 900);
        assert!(!a.poll_timer(100 + 15_999));
        assert!(a.poll_timer(100 + 16_000));
        assert_eq!(a.pending_vector(), Some(0x30));
        assert_eq!(a.mmio_read(reg::TIMER_CURRENT.into(), 4, 100 + 16_000), 0);
        assert_eq!(a.next_deadline_ns(), None);
        assert!(!a.poll_timer(1_000_000));
        assert_eq!(a.mmio_read(reg::TIMER_INITIAL.into(), 4, 0), 1000);
    }

    #[test]
    fn timer_fires_on_access_and_writing_zero_stops_it() {
        let mut a = enabled();
        write(&mut a, reg::TIMER_DIVIDE, 0b1011); // /1
        a.mmio_write(reg::LVT_TIMER.into(), 4, 0x30, 0);
        a.mmio_write(reg::TIMER_INITIAL.into(), 4, 50, 0);
        // Any access after the expiry brings the timer up to date.
        a.mmio_read(reg::TPR.into(), 4, 60);
        assert_eq!(a.pending_vector(), Some(0x30));
        a.acknowledge();
        a.mmio_write(reg::TIMER_INITIAL.into(), 4, 50, 100);
        a.mmio_write(reg::TIMER_INITIAL.into(), 4, 0, 120);
        assert_eq!(a.next_deadline_ns(), None);
        assert_eq!(a.mmio_read(reg::TIMER_CURRENT.into(), 4, 130), 0);
        assert!(!a.poll_timer(1_000));
    }

    #[test]
    fn periodic_timer_counts_down_and_reloads() {
        let mut a = enabled();
        a.mmio_write(reg::TIMER_DIVIDE.into(), 4, 0b0001, 0); // /4
        a.mmio_write(reg::LVT_TIMER.into(), 4, lvt::TIMER_PERIODIC | 0xEC, 0);
        a.mmio_write(reg::TIMER_INITIAL.into(), 4, 250_000, 0); // period 1 ms
        let cur = |a: &mut LocalApic, t| a.mmio_read(reg::TIMER_CURRENT.into(), 4, t);
        assert_eq!(cur(&mut a, 4_000), 249_000);
        assert_eq!(cur(&mut a, 996_000), 1_000);
        assert_eq!(a.pending_vector(), None);
        assert_eq!(cur(&mut a, 1_000_000), 250_000); // reloaded; the interrupt is pending
        assert_eq!(a.pending_vector(), Some(0xEC));
        assert_eq!(a.next_deadline_ns(), Some(2_000_000));
        assert_eq!(cur(&mut a, 1_500_000), 125_000);
        a.acknowledge();
        a.eoi();
        assert!(a.poll_timer(2_000_000));
        assert_eq!(a.next_deadline_ns(), Some(3_000_000));
        a.acknowledge();
        a.eoi();
        // Missed periods coalesce into one interrupt; the next expiry is in step.
        assert!(a.poll_timer(7_300_000));
        assert_eq!(a.next_deadline_ns(), Some(8_000_000));
        assert_eq!(cur(&mut a, 7_300_000), 175_000);
        // Changing the divider keeps the count and changes the rate: 175,000 ticks at
        // /8 are 1.4 ms.
        a.mmio_write(reg::TIMER_DIVIDE.into(), 4, 0b0010, 7_300_000);
        assert_eq!(cur(&mut a, 7_300_000), 175_000);
        assert_eq!(a.next_deadline_ns(), Some(8_700_000));
        // and the reload period is now 250,000 * 8 = 2 ms.
        a.acknowledge();
        a.eoi();
        assert!(a.poll_timer(8_700_000));
        assert_eq!(a.next_deadline_ns(), Some(10_700_000));
    }

    #[test]
    fn masked_timer_counts_but_does_not_interrupt() {
        let mut a = enabled();
        write(&mut a, reg::TIMER_DIVIDE, 0b1011);
        a.mmio_write(
            reg::LVT_TIMER.into(),
            4,
            lvt::MASKED | lvt::TIMER_PERIODIC | 0x30,
            0,
        );
        a.mmio_write(reg::TIMER_INITIAL.into(), 4, 1_000_000, 0); // 1 ms
        assert_eq!(a.next_deadline_ns(), None);
        assert!(!a.poll_timer(1_500_000));
        assert_eq!(a.pending_vector(), None);
        assert_eq!(
            a.mmio_read(reg::TIMER_CURRENT.into(), 4, 1_500_000),
            500_000
        );
        // Unmasking resumes interrupts at the next expiry.
        a.mmio_write(
            reg::LVT_TIMER.into(),
            4,
            lvt::TIMER_PERIODIC | 0x30,
            1_500_000,
        );
        assert_eq!(a.next_deadline_ns(), Some(2_000_000));
        assert!(a.poll_timer(2_000_000));
    }

    #[test]
    fn tsc_deadline_timer() {
        let mut a = enabled();
        // Outside TSC-deadline mode the MSR reads 0 and ignores writes.
        a.write_msr(msr::IA32_TSC_DEADLINE, 1234, 0).unwrap();
        assert_eq!(a.read_msr(msr::IA32_TSC_DEADLINE, 0), Ok(0));
        a.mmio_write(reg::LVT_TIMER.into(), 4, lvt::TIMER_TSC_DEADLINE | 0xEF, 0);
        // At 2 GHz, TSC 20_000 is 10 us.
        a.write_msr(msr::IA32_TSC_DEADLINE, 20_000, 0).unwrap();
        assert_eq!(a.read_msr(msr::IA32_TSC_DEADLINE, 0), Ok(20_000));
        assert_eq!(a.next_deadline_ns(), Some(10_000));
        // The count registers are inert in this mode.
        a.mmio_write(reg::TIMER_INITIAL.into(), 4, 5, 0);
        assert_eq!(a.mmio_read(reg::TIMER_CURRENT.into(), 4, 1), 0);
        assert!(!a.poll_timer(9_999));
        assert!(a.poll_timer(10_000));
        assert_eq!(a.acknowledge(), Some(0xEF));
        a.eoi();
        assert_eq!(a.read_msr(msr::IA32_TSC_DEADLINE, 10_000), Ok(0));
        assert_eq!(a.next_deadline_ns(), None);
        // A deadline already past fires at once.
        a.write_msr(msr::IA32_TSC_DEADLINE, 1, 20_000).unwrap();
        assert_eq!(a.pending_vector(), Some(0xEF));
        a.acknowledge();
        a.eoi();
        // Leaving TSC-deadline mode disarms.
        a.write_msr(msr::IA32_TSC_DEADLINE, 100_000, 20_000)
            .unwrap();
        a.mmio_write(reg::LVT_TIMER.into(), 4, 0xEF, 20_000);
        assert_eq!(a.next_deadline_ns(), None);
        a.mmio_write(
            reg::LVT_TIMER.into(),
            4,
            lvt::TIMER_TSC_DEADLINE | 0xEF,
            20_000,
        );
        assert_eq!(a.read_msr(msr::IA32_TSC_DEADLINE, 20_000), Ok(0));
    }

    /// The deadline is a value of the guest's TSC, which need not be 0 where the
    /// VMM's clock is: a hypervisor's `now_ns` counts from its own boot, seconds after
    /// the TSC started at power-on. Found under Bochs: every Linux timer tick came
    /// 5.3 s (the firmware's boot time) late, and a quiet boot stalled.
    #[test]
    fn tsc_deadline_is_measured_from_the_guest_tsc_at_time_zero() {
        // At 2 GHz, the guest TSC reads 10_000_000_000 (5 s) when now_ns is 0.
        let mut a = LocalApic::new(LapicConfig {
            tsc_at_zero: 10_000_000_000,
            ..LapicConfig::new(TSC_HZ)
        });
        write(&mut a, reg::SVR, 0x1FF);
        a.mmio_write(reg::LVT_TIMER.into(), 4, lvt::TIMER_TSC_DEADLINE | 0xEF, 0);
        // 1 ms into the hypervisor's time the guest arms a deadline 1 ms ahead.
        let now = 1_000_000;
        a.write_msr(msr::IA32_TSC_DEADLINE, 10_000_000_000 + 4_000_000, now)
            .unwrap();
        assert_eq!(a.next_deadline_ns(), Some(2_000_000));
        assert!(!a.poll_timer(1_999_999));
        assert!(a.poll_timer(2_000_000), "not 5 s late");
        assert_eq!(a.acknowledge(), Some(0xEF));
        a.eoi();
        // A deadline below the TSC at time 0 is long past: it fires at once.
        a.write_msr(msr::IA32_TSC_DEADLINE, 5, 2_000_000).unwrap();
        assert_eq!(a.pending_vector(), Some(0xEF));
        a.acknowledge();
        a.eoi();
        // The guest writes its TSC: 0 at 3 ms. A deadline of 2 ms in the new count
        // is due at 5 ms.
        a.set_guest_tsc(0, 3_000_000);
        a.write_msr(msr::IA32_TSC_DEADLINE, 4_000_000, 3_000_000)
            .unwrap();
        assert_eq!(a.next_deadline_ns(), Some(5_000_000));
        assert!(!a.poll_timer(4_999_999));
        assert!(a.poll_timer(5_000_000));
        a.acknowledge();
        a.eoi();
        // And back to the start value.
        a.set_tsc_at_zero(10_000_000_000);
        a.write_msr(
            msr::IA32_TSC_DEADLINE,
            10_000_000_000 + 12_000_000,
            5_000_000,
        )
        .unwrap();
        assert_eq!(a.next_deadline_ns(), Some(6_000_000));
    }

    #[test]
    fn apic_base_msr_transitions() {
        let mut a = apic();
        let b = 0xFEE0_0900;
        // Relocation and x2APIC (not offered by this config) are refused.
        assert_eq!(
            a.write_msr(msr::IA32_APIC_BASE, 0xFED0_0900, 0),
            Err(ApicError::Relocation)
        );
        assert_eq!(
            a.write_msr(msr::IA32_APIC_BASE, b | base::X2APIC_ENABLE, 0),
            Err(ApicError::InvalidTransition)
        );
        assert_eq!(
            a.write_msr(msr::IA32_APIC_BASE, b | 1, 0),
            Err(ApicError::ReservedBits)
        );
        // Rewriting the same value is fine; so is disabling and re-enabling, which
        // resets the registers.
        a.write_msr(msr::IA32_APIC_BASE, b, 0).unwrap();
        write(&mut a, reg::SVR, 0x1FF);
        write(&mut a, reg::TPR, 0x40);
        a.write_msr(msr::IA32_APIC_BASE, 0xFEE0_0100, 0).unwrap();
        assert_eq!(a.read_msr(msr::IA32_APIC_BASE, 0), Ok(0xFEE0_0100));
        a.write_msr(msr::IA32_APIC_BASE, b, 0).unwrap();
        assert_eq!(read(&mut a, reg::SVR), 0xFF);
        assert_eq!(read(&mut a, reg::TPR), 0);
        // The BSP bit cannot be changed.
        a.write_msr(msr::IA32_APIC_BASE, 0xFEE0_0800, 0).unwrap();
        assert_eq!(a.apic_base(), b);
        // x2APIC MSRs are #GP outside x2APIC mode.
        assert_eq!(a.read_msr(0x802, 0), Err(ApicError::NotX2apicMode));
        assert_eq!(a.read_msr(0x10, 0), Err(ApicError::NotApicMsr));
        assert!(LocalApic::handles_msr(0x1B));
        assert!(LocalApic::handles_msr(0x6E0));
        assert!(LocalApic::handles_msr(0x83F));
        assert!(!LocalApic::handles_msr(0x900));
    }

    #[test]
    fn x2apic_transitions() {
        let mut a = x2apic();
        let b = 0xFEE0_0900 | base::X2APIC_ENABLE;
        assert!(a.x2apic_mode());
        assert!(!a.mmio_enabled());
        // x2APIC -> xAPIC directly is invalid; through disabled is fine.
        assert_eq!(
            a.write_msr(msr::IA32_APIC_BASE, 0xFEE0_0900, 0),
            Err(ApicError::InvalidTransition)
        );
        assert_eq!(
            a.write_msr(msr::IA32_APIC_BASE, 0xFEE0_0000 | base::X2APIC_ENABLE, 0),
            Err(ApicError::InvalidTransition)
        );
        a.write_msr(msr::IA32_APIC_BASE, 0xFEE0_0100, 0).unwrap();
        // Disabled -> x2APIC directly is invalid.
        assert_eq!(
            a.write_msr(msr::IA32_APIC_BASE, b, 0),
            Err(ApicError::InvalidTransition)
        );
        a.write_msr(msr::IA32_APIC_BASE, 0xFEE0_0900, 0).unwrap();
        a.write_msr(msr::IA32_APIC_BASE, b, 0).unwrap();
        assert_eq!(a.read_msr(msr::IA32_APIC_BASE, 0), Ok(b));
    }

    #[test]
    fn x2apic_msr_mapping() {
        let mut a = x2apic();
        assert_eq!(a.read_msr(0x802, 0), Ok(0x23)); // full 32-bit ID
        assert_eq!(a.read_msr(0x803, 0), Ok(0x0005_0014));
        // Logical ID: cluster 0x23 >> 4 = 2, bit 0x23 & 0xF = 3.
        assert_eq!(a.read_msr(0x80D, 0), Ok((2 << 16) | (1 << 3)));
        assert_eq!(a.read_msr(0x80F, 0), Ok(0x1FF));
        a.write_msr(0x808, 0x20, 0).unwrap();
        assert_eq!(a.read_msr(0x808, 0), Ok(0x20));
        assert_eq!(a.read_msr(0x80A, 0), Ok(0x20)); // PPR
        a.write_msr(0x835, 0x700, 0).unwrap(); // LINT0 ExtINT
        assert_eq!(a.read_msr(0x835, 0), Ok(0x700));
        a.write_msr(0x83E, 0b1011, 0).unwrap();
        assert_eq!(a.read_msr(0x83E, 0), Ok(0b1011));
        // Registers without an x2APIC MSR, write-only and read-only ones.
        for missing in [
            0x800, 0x801, 0x809, 0x80C, 0x80E, 0x831, 0x83A, 0x840, 0x8FF,
        ] {
            assert_eq!(
                a.read_msr(missing, 0),
                Err(ApicError::NoSuchRegister),
                "{missing:#x}"
            );
        }
        assert_eq!(a.read_msr(0x80B, 0), Err(ApicError::WriteOnly));
        assert_eq!(a.read_msr(0x83F, 0), Err(ApicError::WriteOnly));
        assert_eq!(a.write_msr(0x802, 0, 0), Err(ApicError::ReadOnly));
        assert_eq!(a.write_msr(0x80D, 0, 0), Err(ApicError::ReadOnly));
        assert_eq!(a.write_msr(0x839, 0, 0), Err(ApicError::ReadOnly));
        assert_eq!(a.write_msr(0x820, 0, 0), Err(ApicError::ReadOnly));
        assert_eq!(a.write_msr(0x80E, 0, 0), Err(ApicError::NoSuchRegister));
        // EOI and ESR take only 0; every register is 32 bits.
        assert_eq!(a.write_msr(0x80B, 1, 0), Err(ApicError::ReservedBits));
        assert_eq!(a.write_msr(0x828, 1, 0), Err(ApicError::ReservedBits));
        assert_eq!(a.write_msr(0x808, 1 << 32, 0), Err(ApicError::ReservedBits));
        // The xAPIC page does not decode in x2APIC mode.
        assert_eq!(a.mmio_read(0x30, 4, 0), 0xFFFF_FFFF);
        // The timer through MSRs.
        a.write_msr(0x832, 0x31, 0).unwrap();
        a.write_msr(0x838, 10, 0).unwrap();
        assert_eq!(a.read_msr(0x838, 0), Ok(10));
        assert_eq!(a.read_msr(0x839, 4), Ok(6));
        assert_eq!(a.read_msr(0x820 + 1, 10), Ok(1 << 0x11)); // IRR 32-63: 0x31
    }

    #[test]
    fn x2apic_self_ipi_icr_and_eoi() {
        let mut a = x2apic();
        a.write_msr(msr::X2APIC_SELF_IPI, 0x50, 0).unwrap();
        assert_eq!(a.pending_vector(), Some(0x50));
        assert_eq!(a.acknowledge(), Some(0x50));
        assert_eq!(a.read_msr(0x812, 0), Ok(1 << 0x10)); // ISR 64-95
        assert_eq!(a.write_msr(0x80B, 0, 0), Ok(None));
        assert_eq!(a.read_msr(0x812, 0), Ok(0));
        // ICR: physical destination = own 32-bit ID, fixed vector 0x60.
        a.write_msr(msr::X2APIC_ICR, (0x23 << 32) | 0x60, 0)
            .unwrap();
        assert_eq!(a.read_msr(msr::X2APIC_ICR, 0), Ok((0x23 << 32) | 0x60));
        // Routed by the VMM; the destination logic says it is ours.
        let ipi = a.take_outgoing_ipi().unwrap();
        assert!(a.matches_destination(ipi.dest, ipi.logical));
        a.receive_ipi(&ipi);
        assert_eq!(a.pending_vector(), Some(0x60));
        // Logical: cluster 2, bit 3.
        a.write_msr(msr::X2APIC_ICR, (0x0002_0008 << 32) | (1 << 11) | 0x70, 0)
            .unwrap();
        let ipi = a.take_outgoing_ipi().unwrap();
        assert!(a.matches_destination(ipi.dest, ipi.logical));
        a.receive_ipi(&ipi);
        assert_eq!(a.pending_vector(), Some(0x70));
        // Delivery status (bit 12) is reserved in x2APIC mode.
        assert_eq!(
            a.write_msr(msr::X2APIC_ICR, (1 << 12) | 0x70, 0),
            Err(ApicError::ReservedBits)
        );
        // Broadcast reaches us too.
        a.write_msr(msr::X2APIC_ICR, (0xFFFF_FFFF << 32) | 0x80, 0)
            .unwrap();
        let ipi = a.take_outgoing_ipi().unwrap();
        assert!(a.matches_destination(ipi.dest, ipi.logical));
        a.receive_ipi(&ipi);
        assert_eq!(a.pending_vector(), Some(0x80));
    }

    #[test]
    fn a_tiny_periodic_period_is_clamped() {
        let mut a = enabled();
        write(&mut a, reg::TIMER_DIVIDE, 0b1011); // divide by 1
        write(&mut a, reg::LVT_TIMER, (1 << 17) | 0x40); // periodic, vector 0x40
        write(&mut a, reg::TIMER_INITIAL, 1); // 1 ns at the 1 GHz timer clock
        assert!(a.poll_timer(10));
        let next = a.next_deadline_ns().unwrap();
        assert!(next >= 10 + MIN_PERIODIC_NS, "{next}");
        a.acknowledge();
        write(&mut a, reg::EOI, 0);
        assert!(!a.poll_timer(next - 1));
        assert!(a.poll_timer(next));
    }

    crate::state::testing::snap_impl!(LocalApic);

    /// What a random operation lets the guest or the VMM observe.
    type Seen = (u64, Option<u8>, Option<u64>, bool, Option<Ipi>);

    /// A random guest access (MMIO or MSR), interrupt arrival, acknowledgement, EOI,
    /// timer poll or INIT at `*now`, mostly with values a guest would use.
    fn random_op(a: &mut LocalApic, rng: &mut crate::state::testing::Rng, now: &mut u64) -> Seen {
        const REGS: [u32; 20] = [
            0x20, 0x30, 0x80, 0x90, 0xA0, 0xB0, 0xD0, 0xE0, 0xF0, 0x100, 0x180, 0x200, 0x280,
            0x300, 0x310, 0x320, 0x350, 0x370, 0x380, 0x390,
        ];
        *now += rng.below(300_000);
        let t = *now;
        let reg = REGS[rng.below(20) as usize];
        let value = match reg {
            reg::LVT_TIMER => {
                [0, lvt::TIMER_PERIODIC, lvt::TIMER_TSC_DEADLINE][rng.below(3) as usize]
                    | 0x40
                    | if rng.chance(5) { lvt::MASKED } else { 0 }
            }
            reg::TIMER_INITIAL => rng.below(400_000) as u32,
            reg::TIMER_DIVIDE => rng.below(16) as u32,
            reg::SVR => 0xFF | if rng.chance(6) { 0 } else { svr::ENABLE },
            reg::ICR_LOW => {
                (rng.byte() as u32) | (rng.below(8) as u32) << 8 | (rng.below(4) as u32) << 18
            }
            _ => rng.next() as u32,
        };
        let v: u64 = match rng.below(14) {
            0 | 1 => a.mmio_read(reg.into(), 4, t).into(),
            2 | 3 => a
                .mmio_write(reg.into(), 4, value, t)
                .map_or(0x100, u64::from),
            4 => {
                let msr = 0x800 + (reg >> 4);
                let r = if rng.chance(2) {
                    a.read_msr(msr, t)
                } else {
                    let wide = if reg == reg::ICR_LOW {
                        u64::from(rng.byte()) << 32
                    } else {
                        0
                    };
                    a.write_msr(msr, u64::from(value) | wide, t)
                        .map(|e| e.map_or(0x100, u64::from))
                };
                r.unwrap_or_else(|e| 0x1000 + e as u64)
            }
            5 => {
                let r = if rng.chance(2) {
                    a.read_msr(msr::IA32_TSC_DEADLINE, t)
                } else {
                    let deadline = a.tsc_at_zero() + t * 2 + rng.below(1_000_000);
                    a.write_msr(msr::IA32_TSC_DEADLINE, deadline, t).map(|_| 0)
                };
                r.unwrap_or(0x2000)
            }
            6 => {
                let b = a.apic_base();
                let new = match rng.below(4) {
                    0 => b | base::X2APIC_ENABLE,
                    1 => b & !(base::ENABLE | base::X2APIC_ENABLE),
                    2 => b | base::ENABLE,
                    _ => b,
                };
                a.write_msr(msr::IA32_APIC_BASE, new, t)
                    .map_or(0x3000, |_| 0)
            }
            7 => a.deliver(rng.byte(), rng.chance(3)).into(),
            8 => a.acknowledge().map_or(0x100, u64::from),
            9 => a.eoi().map_or(0x100, u64::from),
            10 => a.poll_timer(t).into(),
            11 => a.take_nmi().into(),
            12 => {
                let ipi = Ipi::from_icr(rng.next() & 0xFF_FFFF, a.x2apic_mode());
                a.receive_ipi(&ipi);
                0
            }
            _ => {
                if rng.chance(8) {
                    a.init();
                } else {
                    a.set_tpr(rng.byte() & 0x70);
                }
                0
            }
        };
        (
            v,
            a.pending_vector(),
            a.next_deadline_ns(),
            a.nmi_pending(),
            a.take_outgoing_ipi(),
        )
    }

    /// xAPIC mode: a periodic timer at divide 4 part-way through a period,
    /// interrupts in IRR and in service (one level-triggered), the TPR raised, the
    /// error LVT unmasked with errors latched and pending, cluster logical
    /// addressing, an IPI waiting to be routed and an NMI pending.
    fn busy_xapic() -> (LocalApic, u64) {
        let mut a = LocalApic::new(LapicConfig {
            apic_id: 3,
            bsp: false,
            x2apic: true,
            tsc_at_zero: 77,
            ..LapicConfig::new(TSC_HZ)
        });
        write(&mut a, reg::SVR, 0x1FF);
        write(&mut a, reg::LVT_ERROR, 0xFE);
        write(&mut a, reg::DFR, 0x0FFF_FFFF);
        write(&mut a, reg::LDR, 0x2400_0000);
        a.mmio_write(reg::TIMER_DIVIDE.into(), 4, 0b0001, 1000);
        a.mmio_write(reg::LVT_TIMER.into(), 4, lvt::TIMER_PERIODIC | 0xEC, 1000);
        a.mmio_write(reg::TIMER_INITIAL.into(), 4, 250_000, 1000);
        assert!(a.deliver(0x61, true));
        assert_eq!(a.acknowledge(), Some(0x61));
        a.deliver(0x45, false);
        a.deliver(0x3, false); // illegal: ESR bit and the error vector
        write(&mut a, reg::ESR, 0);
        a.mmio_read(0x3F0, 4, 1000); // missing register: pending error
        write(&mut a, reg::TPR, 0x20);
        write(&mut a, reg::ICR_HIGH, 0x0100_0000);
        write(&mut a, reg::ICR_LOW, 0x4000 | 0x0400); // NMI to APIC 1
        a.deliver_nmi();
        let t = 1_500_000;
        assert!(a.poll_timer(t)); // one period passed
        (a, t)
    }

    /// x2APIC mode with the TSC-deadline timer armed and an interrupt in service.
    fn busy_x2apic() -> (LocalApic, u64) {
        let mut a = x2apic();
        a.write_msr(0x832, lvt::TIMER_TSC_DEADLINE as u64 | 0xD0, 0)
            .unwrap();
        a.write_msr(msr::IA32_TSC_DEADLINE, 5_000_000, 100).unwrap();
        a.write_msr(msr::X2APIC_SELF_IPI, 0x90, 100).unwrap();
        assert_eq!(a.acknowledge(), Some(0x90));
        a.write_msr(msr::X2APIC_ICR, (0x0002_0008 << 32) | (1 << 11) | 0x70, 100)
            .unwrap();
        (a, 200)
    }

    fn compare_after_restore(a: LocalApic, now: u64, fresh: LocalApic, seed: u64) {
        let snap = a.state();
        assert_eq!(&snap[..8], b"lapic   ");
        let mut b = fresh;
        b.restore(&snap).unwrap();
        assert_eq!(b.state(), snap);
        assert_eq!(b.next_deadline_ns(), a.next_deadline_ns());
        assert_eq!(b.pending_vector(), a.pending_vector());
        let (mut a, mut b) = ((a, now), (b, now));
        crate::state::testing::lockstep(&mut a, &mut b, seed, |(d, t), r| random_op(d, r, t));
        assert_eq!(a.0.state(), b.0.state());
    }

    #[test]
    fn snapshot_restores_identical_behaviour() {
        let same_shape = || {
            LocalApic::new(LapicConfig {
                apic_id: 3,
                bsp: false,
                x2apic: true,
                ..LapicConfig::new(TSC_HZ)
            })
        };
        let (a, now) = busy_xapic();
        let mut b = same_shape();
        b.restore(&a.state()).unwrap();
        // What the snapshot holds shows through the guest's interface.
        assert_eq!(b.tsc_at_zero(), 77);
        assert_eq!(
            b.take_outgoing_ipi().map(|i| (i.dest, i.mode)),
            Some((1, DeliveryMode::Nmi))
        );
        assert!(b.take_nmi());
        assert_eq!(read(&mut b, reg::ESR), esr::RECEIVE_ILLEGAL_VECTOR);
        assert_eq!(
            b.eoi(),
            Some(0x61),
            "the level-triggered vector's EOI is reported"
        );
        assert_eq!(b.mmio_read(reg::TIMER_CURRENT.into(), 4, now), 125_250);
        assert_eq!(b.next_deadline_ns(), Some(2_001_000));
        compare_after_restore(a, now, same_shape(), 9);

        let (a, now) = busy_x2apic();
        let mut b = x2apic();
        b.init();
        b.restore(&a.state()).unwrap();
        assert_eq!(b.read_msr(msr::IA32_TSC_DEADLINE, now), Ok(5_000_000));
        assert_eq!(b.next_deadline_ns(), Some(2_500_000));
        assert!(!b.poll_timer(2_499_999));
        assert!(b.poll_timer(2_500_000));
        compare_after_restore(a, now, x2apic(), 10);
    }

    #[test]
    fn snapshot_of_another_shape_is_refused_by_name() {
        let (a, _) = busy_xapic();
        let snap = a.state();
        let other = |config: LapicConfig| LocalApic::new(config).restore(&snap);
        let base = LapicConfig {
            apic_id: 3,
            bsp: false,
            x2apic: true,
            ..LapicConfig::new(TSC_HZ)
        };
        let what = |r: Result<(), StateError>| match r {
            Err(StateError::Mismatch {
                what,
                snapshot,
                here,
                ..
            }) => (what, snapshot, here),
            r => panic!("{r:?}"),
        };
        assert_eq!(
            what(other(LapicConfig { apic_id: 1, ..base })),
            ("APIC ID", 3, 1)
        );
        assert_eq!(
            what(other(LapicConfig { bsp: true, ..base })).0,
            "bootstrap processor flag"
        );
        assert_eq!(what(other(LapicConfig::new(TSC_HZ / 2))).0, "APIC ID");
        // Another TSC rate is the host's (measured anew after a restart): accepted.
        assert_eq!(
            other(LapicConfig {
                tsc_hz: TSC_HZ / 2,
                ..base
            }),
            Ok(())
        );
        assert_eq!(
            what(other(LapicConfig {
                timer_hz: 5,
                ..base
            }))
            .0,
            "APIC timer clock (Hz)"
        );
        assert_eq!(
            what(other(LapicConfig {
                x2apic: false,
                ..base
            }))
            .0,
            "x2APIC offered"
        );
        // The guest's TSC origin is state, not shape.
        assert_eq!(
            other(LapicConfig {
                tsc_at_zero: 5,
                ..base
            }),
            Ok(())
        );
    }

    #[test]
    fn snapshot_refusals_and_corruption() {
        for (a, now) in [busy_xapic(), busy_x2apic()] {
            let snap = a.state();
            let mut fresh = a.clone();
            fresh.reset();
            crate::state::testing::check_refusals(&mut fresh, &snap, |d| {
                let mut rng = crate::state::testing::Rng::new(11);
                let mut t = now;
                for _ in 0..40 {
                    random_op(d, &mut rng, &mut t);
                }
                let _ = d.poll_timer(u64::MAX);
                let _ = d.next_deadline_ns();
                let _ = d.mmio_read(reg::TIMER_CURRENT.into(), 4, u64::MAX);
            });
        }
    }
}
