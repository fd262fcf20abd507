//! The firmware tables a guest reads to find its interrupt controllers: the Intel
//! MultiProcessor Specification 1.4 tables and the ACPI RSDP/RSDT/XSDT/MADT, built as
//! bytes for a given guest-physical placement into a caller's buffer.
//!
//! Both describe the same PC with [`PlatformConfig::cpus`] processors (APIC IDs 0 to
//! cpus - 1, the BSP being 0): their local APICs at [`crate::LAPIC_BASE`], one IOAPIC
//! at [`crate::IOAPIC_BASE`] whose pins carry the ISA IRQs identity-mapped except IRQ 0
//! on pin 2 ([`crate::isa_irq_pin`]), the 8259 pair in virtual-wire mode on LINT0
//! (ExtINT) and NMI on LINT1.
//!
//! Linux reads the MADT when ACPI is on and the MP table with `acpi=off`; Multiboot
//! kernels and hobby OSes read either. Both are found by scanning low memory on
//! 16-byte boundaries (MP spec 4: the first KiB of the EBDA, the last KiB of base
//! memory, 0xF0000-0xFFFFF; ACPI 6.x 5.2.5.1: the first KiB of the EBDA and
//! 0xE0000-0xFFFFF), so the natural home is the BIOS area, e.g. [`MP_TABLE_ADDRESS`]
//! and [`ACPI_TABLES_ADDRESS`], which must be reserved in the E820 map. A Linux loader
//! can also pass the RSDP address in `boot_params.acpi_rsdp_addr`, a Multiboot 2 loader
//! in an ACPI tag.
//!
//! ## Why there is no FADT
//!
//! An OS needs a FADT (and the DSDT it points to) to run the ACPI interpreter, which
//! would want PM1 event/control blocks, a PM timer and an SCI this machine does not
//! have. The MADT alone is enough to find the APICs: Linux parses it early in
//! `acpi_boot_init()`, long before it loads the namespace. Loading then fails for lack
//! of a DSDT, Linux logs that and turns the interpreter off, and the MADT's interrupt
//! configuration stays in use. One consequence is handled here: without a FADT,
//! Linux's `acpi_gbl_FADT.sci_interrupt` is 0, so it takes the interrupt source
//! override of IRQ 0 for the SCI's and would apply the SCI defaults (level-triggered,
//! active-low) to it unless the override spells out its polarity and trigger mode.
//! The override therefore says "edge, active high" explicitly rather than "conforms to
//! the bus".

use crate::ioapic::{isa_irq_pin, IOAPIC_BASE};
use crate::lapic::{LAPIC_BASE, LAPIC_VERSION};

/// A suggested home for the MP tables: the start of the BIOS ROM area, which MP
/// spec 4 has OSes scan and a PC E820 map reserves.
pub const MP_TABLE_ADDRESS: u64 = 0xF_0000;
/// A suggested home for the ACPI tables, in the same reserved 64 KiB after the MP
/// tables.
pub const ACPI_TABLES_ADDRESS: u64 = 0xF_0400;

/// The most processors the tables describe (and so the most vCPUs a VM may have).
pub const MAX_CPUS: u8 = 16;
/// Bytes [`write_mp_table`] uses at most (with [`MAX_CPUS`] processors).
pub const MP_TABLE_SIZE: usize = mp_table_size(MAX_CPUS);
/// Bytes [`write_acpi_tables`] uses at most (with [`MAX_CPUS`] processors).
pub const ACPI_TABLES_SIZE: usize = acpi_tables_size(MAX_CPUS);

/// Bytes [`write_mp_table`] uses at most for `cpus` processors (it returns what it
/// used: fewer without PCI interrupts).
pub const fn mp_table_size(cpus: u8) -> usize {
    MP_FLOATING_SIZE + mp_config_size(cpus)
}

/// Bytes [`write_acpi_tables`] uses for `cpus` processors.
pub const fn acpi_tables_size(cpus: u8) -> usize {
    MADT_OFFSET + madt_size(cpus)
}

/// The most PCI INTx pins [`PlatformConfig::pci_intx`] describes.
pub const MAX_PCI_INTX: usize = 4;

/// One PCI function's INTx pin and the ISA IRQ (= IOAPIC pin) it is routed to, for
/// the MP table's I/O interrupt entry (MP spec 4.3.4, appendix D.3: the source bus
/// IRQ of a PCI entry is `device << 2 | pin`, INTA# being pin 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciIntx {
    /// The device number on PCI bus 0.
    pub device: u8,
    /// The interrupt pin: 1 = INTA# ... 4 = INTD# (the configuration-space value).
    pub pin: u8,
    /// The ISA IRQ it reaches; its IOAPIC pin is [`isa_irq_pin`] of it.
    pub irq: u8,
}

/// The machine the tables describe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlatformConfig {
    /// How many processors (1 to [`MAX_CPUS`]); processor `i` has local APIC ID `i`
    /// ([`crate::LapicConfig::apic_id`]) and ACPI UID `i`; processor 0 is the BSP.
    pub cpus: u8,
    /// The local APIC version byte (bits 7:0 of its version register).
    pub lapic_version: u8,
    /// For the MP processor entry: CPUID.1:EAX (stepping, model, family).
    pub cpu_signature: u32,
    /// For the MP processor entry: CPUID.1:EDX feature flags.
    pub cpu_features: u32,
    /// The IOAPIC's ID ([`crate::IoApic::new`]).
    pub ioapic_id: u8,
    /// The IOAPIC version byte (bits 7:0 of its version register).
    pub ioapic_version: u8,
    pub lapic_address: u32,
    pub ioapic_address: u32,
    /// The PCI functions' INTx routing (the MP table describes it; Linux booted
    /// with `acpi=off` finds a PCI device's IRQ there). Empty: no PCI bus entry.
    pub pci_intx: [Option<PciIntx>; MAX_PCI_INTX],
}

impl PlatformConfig {
    /// One processor (APIC ID 0), IOAPIC ID 0, both at their architectural addresses
    /// with the versions the models in this crate report; the CPU identification the
    /// guest's CPUID shows. Set [`Self::cpus`] for more processors.
    pub const fn new(cpu_signature: u32, cpu_features: u32) -> Self {
        Self {
            cpus: 1,
            lapic_version: LAPIC_VERSION as u8,
            cpu_signature,
            cpu_features,
            ioapic_id: 0,
            ioapic_version: crate::ioapic::IOAPIC_VERSION as u8,
            lapic_address: LAPIC_BASE as u32,
            ioapic_address: IOAPIC_BASE as u32,
            pci_intx: [None; MAX_PCI_INTX],
        }
    }
}

/// Why a table could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableError {
    /// The buffer is shorter than the tables.
    BufferTooSmall { needed: usize },
    /// The guest address is not 16-byte aligned: both the MP floating pointer and the
    /// RSDP are searched for on 16-byte boundaries.
    Misaligned,
    /// The tables would not lie below 4 GiB, which the 32-bit pointers require.
    AboveFourGib,
}

impl core::fmt::Display for TableError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TableError::BufferTooSmall { needed } => {
                write!(f, "table buffer too small: {needed} bytes needed")
            }
            TableError::Misaligned => f.write_str("table address not 16-byte aligned"),
            TableError::AboveFourGib => f.write_str("tables must lie below 4 GiB"),
        }
    }
}

/// The byte that makes `bytes` (which includes it as 0) sum to zero mod 256.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |sum, &b| sum.wrapping_add(b)))
}

fn put16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Checks the placement and hands back the part of `buf` the tables use, zeroed.
fn prepare(buf: &mut [u8], guest_addr: u64, len: usize) -> Result<&mut [u8], TableError> {
    if !guest_addr.is_multiple_of(16) {
        return Err(TableError::Misaligned);
    }
    if guest_addr.saturating_add(len as u64) > 1 << 32 {
        return Err(TableError::AboveFourGib);
    }
    let out = buf
        .get_mut(..len)
        .ok_or(TableError::BufferTooSmall { needed: len })?;
    out.fill(0);
    Ok(out)
}

// ---------------------------------------------------------------------------------
// MP specification 1.4.

/// The ISA IRQs with an I/O interrupt entry: all but 2, the 8259 cascade, which no
/// device raises (its pin carries IRQ 0 instead).
const MP_ISA_IRQS: [u8; 15] = [0, 1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

const MP_FLOATING_SIZE: usize = 16;
const MP_HEADER_SIZE: usize = 44;
const MP_PROCESSOR_SIZE: usize = 20;
const MP_ENTRY_SIZE: usize = 8;
/// Entries besides the processors: the ISA and PCI buses, IOAPIC, ISA and PCI I/O
/// interrupts, two local interrupts (at most: an ISA IRQ that a PCI INTx pin uses
/// has no ISA entry).
const MP_OTHER_ENTRIES: usize = 2 + 1 + MP_ISA_IRQS.len() + MAX_PCI_INTX + 2;
const fn mp_config_size(cpus: u8) -> usize {
    MP_HEADER_SIZE + cpus as usize * MP_PROCESSOR_SIZE + MP_OTHER_ENTRIES * MP_ENTRY_SIZE
}

/// The MP bus ID of PCI bus 0: 0, because Linux takes an MP bus ID for the PCI bus
/// number when it looks up a device's INTx entry (`IO_APIC_get_PCI_irq_vector`),
/// as BIOSes number them. ISA is then bus 1; without PCI it is bus 0.
const MP_PCI_BUS: u8 = 0;
/// I/O interrupt entry flags for PCI INTx (MP spec table 4-10): polarity active
/// low (bits 1:0 = 11b), trigger level (bits 3:2 = 11b), as PCI INTx# lines are.
/// The IOAPIC model treats a pin as a virtual wire whatever its polarity bit says.
const MP_PCI_INTX_FLAGS: u16 = 0b1111;

/// MP configuration table entry types (MP spec table 4-3).
pub mod mp_entry {
    pub const PROCESSOR: u8 = 0;
    pub const BUS: u8 = 1;
    pub const IOAPIC: u8 = 2;
    pub const IO_INTERRUPT: u8 = 3;
    pub const LOCAL_INTERRUPT: u8 = 4;
    /// Interrupt types of I/O and local interrupt entries (MP spec table 4-8).
    pub const INT: u8 = 0;
    pub const NMI: u8 = 1;
    pub const EXTINT: u8 = 3;
}

/// Writes the MP floating pointer structure at `guest_addr` and the configuration
/// table right after it (MP spec 4.1-4.3); returns the bytes used
/// ([`mp_table_size`]); `cfg.cpus` is clamped to 1..=[`MAX_CPUS`].
///
/// Floating pointer (table 4-1): "_MP_", the table's address, length 1 paragraph,
/// revision 4 (1.4), checksum, feature byte 1 = 0 (a configuration table is present,
/// no default configuration), feature byte 2 = 0 (IMCRP clear: virtual-wire mode, the
/// PIC reaches the CPU through LINT0, not an IMCR).
///
/// Configuration table: the header (table 4-2) and, sorted by type as 4.3 requires,
/// the processor entries (4-4: enabled; the first is the BSP), one ISA bus (4-5, id 0), the IOAPIC (4-6,
/// enabled), the I/O interrupt entries (4-7) of ISA IRQ 0 and 1, 3-15, and the local
/// interrupt entries (4-8): ExtINT to LINT0 and NMI to LINT1 of every local APIC.
/// Polarity and trigger "conform to the bus": edge, active high for ISA.
pub fn write_mp_table(
    buf: &mut [u8],
    guest_addr: u64,
    cfg: &PlatformConfig,
) -> Result<usize, TableError> {
    let cpus = cfg.cpus.clamp(1, MAX_CPUS);
    let pci: alloc::vec::Vec<PciIntx> = cfg.pci_intx.iter().flatten().copied().collect();
    let pci_irq = |irq: u8| pci.iter().any(|p| p.irq == irq);
    let isa_irqs = MP_ISA_IRQS.iter().filter(|&&irq| !pci_irq(irq)).count();
    // Processors, ISA bus, [PCI bus,] IOAPIC, ISA and PCI interrupts, 2 local.
    let entries = 1 + usize::from(!pci.is_empty()) + 1 + isa_irqs + pci.len() + 2;
    let config_size =
        MP_HEADER_SIZE + usize::from(cpus) * MP_PROCESSOR_SIZE + entries * MP_ENTRY_SIZE;
    let used = MP_FLOATING_SIZE + config_size;
    let out = prepare(buf, guest_addr, used)?;
    let config_addr = guest_addr + MP_FLOATING_SIZE as u64;

    let (fp, t) = out.split_at_mut(MP_FLOATING_SIZE);
    fp[0..4].copy_from_slice(b"_MP_");
    put32(fp, 4, config_addr as u32);
    fp[8] = 1; // length in 16-byte paragraphs
    fp[9] = 4; // MP spec 1.4
    fp[10] = checksum(fp);

    t[0..4].copy_from_slice(b"PCMP");
    put16(t, 4, config_size as u16);
    t[6] = 4; // spec revision 1.4
    t[8..16].copy_from_slice(b"HV      "); // OEM ID, space-padded
    t[16..28].copy_from_slice(b"HV-VM       "); // product ID
                                                // 28: OEM table pointer, 32: OEM table size: none.
    put16(t, 34, (usize::from(cpus) + entries) as u16);
    put32(t, 36, cfg.lapic_address);
    // 40: extended table length, 42: its checksum: no extended entries.

    let mut at = MP_HEADER_SIZE;
    // Processors (table 4-4): flags EN (bit 0) | BP (bit 1, the first only); 8
    // reserved bytes follow.
    for id in 0..cpus {
        t[at] = mp_entry::PROCESSOR;
        t[at + 1] = id;
        t[at + 2] = cfg.lapic_version;
        t[at + 3] = if id == 0 { 0b11 } else { 0b01 };
        put32(t, at + 4, cfg.cpu_signature);
        put32(t, at + 8, cfg.cpu_features);
        at += MP_PROCESSOR_SIZE;
    }
    // Buses (table 4-5): id, type string padded with blanks to 6 bytes.
    let bus = |t: &mut [u8], at: &mut usize, id: u8, kind: &[u8; 6]| {
        t[*at] = mp_entry::BUS;
        t[*at + 1] = id;
        t[*at + 2..*at + 8].copy_from_slice(kind);
        *at += MP_ENTRY_SIZE;
    };
    let isa_bus = if pci.is_empty() {
        0
    } else {
        bus(t, &mut at, MP_PCI_BUS, b"PCI   ");
        MP_PCI_BUS + 1
    };
    bus(t, &mut at, isa_bus, b"ISA   ");
    // I/O APIC (table 4-6): flags EN.
    t[at] = mp_entry::IOAPIC;
    t[at + 1] = cfg.ioapic_id;
    t[at + 2] = cfg.ioapic_version;
    t[at + 3] = 1;
    put32(t, at + 4, cfg.ioapic_address);
    at += MP_ENTRY_SIZE;
    // I/O interrupt assignments (table 4-7): type, interrupt type, flags (u16, 0 =
    // conforming), source bus id, source bus IRQ, destination IOAPIC id, INTIN#.
    // An ISA IRQ that carries PCI INTx gets only the PCI entry: one pin, one
    // trigger mode.
    for irq in MP_ISA_IRQS.into_iter().filter(|&irq| !pci_irq(irq)) {
        t[at] = mp_entry::IO_INTERRUPT;
        t[at + 1] = mp_entry::INT;
        t[at + 4] = isa_bus;
        t[at + 5] = irq;
        t[at + 6] = cfg.ioapic_id;
        t[at + 7] = isa_irq_pin(irq);
        at += MP_ENTRY_SIZE;
    }
    for p in &pci {
        t[at] = mp_entry::IO_INTERRUPT;
        t[at + 1] = mp_entry::INT;
        put16(t, at + 2, MP_PCI_INTX_FLAGS);
        t[at + 4] = MP_PCI_BUS;
        // Appendix D.3: bits 6:2 the device number, bits 1:0 the pin (INTA# = 0).
        t[at + 5] = (p.device & 0x1F) << 2 | (p.pin.wrapping_sub(1) & 3);
        t[at + 6] = cfg.ioapic_id;
        t[at + 7] = isa_irq_pin(p.irq);
        at += MP_ENTRY_SIZE;
    }
    // Local interrupt assignments (table 4-8): destination 0xFF = every local APIC.
    for (kind, lint) in [(mp_entry::EXTINT, 0), (mp_entry::NMI, 1)] {
        t[at] = mp_entry::LOCAL_INTERRUPT;
        t[at + 1] = kind;
        t[at + 4] = 0;
        t[at + 5] = 0;
        t[at + 6] = 0xFF;
        t[at + 7] = lint;
        at += MP_ENTRY_SIZE;
    }
    debug_assert_eq!(at, config_size);
    t[7] = checksum(&t[..config_size]);
    Ok(used)
}

// ---------------------------------------------------------------------------------
// ACPI.

const RSDP_SIZE: usize = 36;
const SDT_HEADER_SIZE: usize = 36;
const RSDT_OFFSET: usize = 48; // the RSDP rounded up to 16 bytes
const RSDT_SIZE: usize = SDT_HEADER_SIZE + 4;
const XSDT_OFFSET: usize = 96;
const XSDT_SIZE: usize = SDT_HEADER_SIZE + 8;
const MADT_OFFSET: usize = 144;
const fn madt_size(cpus: u8) -> usize {
    SDT_HEADER_SIZE + 8 + 8 * cpus as usize + 12 + 10 + 6
}

/// ACPI OEM identification, the same in every table.
const OEM_ID: &[u8; 6] = b"HV    ";
const OEM_TABLE_ID: &[u8; 8] = b"HV-VM   ";
const CREATOR_ID: &[u8; 4] = b"HV  ";

/// MADT interrupt controller structure types (ACPI 6.x table 5.45).
pub mod madt_entry {
    pub const LOCAL_APIC: u8 = 0;
    pub const IOAPIC: u8 = 1;
    pub const INTERRUPT_SOURCE_OVERRIDE: u8 = 2;
    pub const LOCAL_APIC_NMI: u8 = 4;
    /// MADT flags: the machine also has a PC-AT dual 8259 (ACPI 6.x table 5.44).
    pub const PCAT_COMPAT: u32 = 1;
    /// MPS INTI flags (ACPI 6.x table 5.50): active high (polarity 01), edge
    /// (trigger 01 in bits 3:2).
    pub const INTI_EDGE_HIGH: u16 = 0b0101;
}

/// Where [`write_acpi_tables`] put each table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcpiLayout {
    /// The RSDP: what a loader passes as the ACPI root (e.g. `acpi_rsdp_addr`).
    pub rsdp: u64,
    pub rsdt: u64,
    pub xsdt: u64,
    pub madt: u64,
    /// Bytes used ([`acpi_tables_size`]).
    pub len: usize,
}

/// The 36-byte system description table header (ACPI 6.x 5.2.6), checksum left 0.
fn sdt_header(t: &mut [u8], signature: &[u8; 4], len: usize, revision: u8) {
    t[0..4].copy_from_slice(signature);
    put32(t, 4, len as u32);
    t[8] = revision;
    t[10..16].copy_from_slice(OEM_ID);
    t[16..24].copy_from_slice(OEM_TABLE_ID);
    put32(t, 24, 1); // OEM revision
    t[28..32].copy_from_slice(CREATOR_ID);
    put32(t, 32, 1); // creator revision
}

/// Writes the RSDP at `guest_addr` and after it an RSDT, an XSDT and a MADT.
///
/// * RSDP (ACPI 6.x 5.2.5.3), revision 2: "RSD PTR ", the ACPI 1.0 checksum over the
///   first 20 bytes, the RSDT address, length 36, the XSDT address, the extended
///   checksum over all 36 bytes. Both roots are given: ACPI 1.0-only OSes (and many
///   small kernels) read the RSDT, everything newer the XSDT.
/// * RSDT (5.2.7) and XSDT (5.2.8), revision 1: one entry each, the MADT.
/// * MADT (5.2.12), revision 5 (the ACPI 6.3 layout; every field used here dates from
///   ACPI 1.0): the local APIC address, flags PCAT_COMPAT, then a Processor Local APIC
///   per processor (UID = APIC ID, enabled), an I/O APIC (GSI base 0), an Interrupt Source Override of ISA
///   IRQ 0 to GSI 2 (edge, active high, spelled out: see the module docs), and a
///   Local APIC NMI on LINT1 of every processor (UID 0xFF).
///
/// There is no FADT; see the module documentation for why that is enough.
pub fn write_acpi_tables(
    buf: &mut [u8],
    guest_addr: u64,
    cfg: &PlatformConfig,
) -> Result<AcpiLayout, TableError> {
    let cpus = cfg.cpus.clamp(1, MAX_CPUS);
    let madt_len = madt_size(cpus);
    let out = prepare(buf, guest_addr, acpi_tables_size(cpus))?;
    let layout = AcpiLayout {
        rsdp: guest_addr,
        rsdt: guest_addr + RSDT_OFFSET as u64,
        xsdt: guest_addr + XSDT_OFFSET as u64,
        madt: guest_addr + MADT_OFFSET as u64,
        len: acpi_tables_size(cpus),
    };

    // MADT.
    let m = &mut out[MADT_OFFSET..MADT_OFFSET + madt_len];
    sdt_header(m, b"APIC", madt_len, 5);
    put32(m, 36, cfg.lapic_address);
    put32(m, 40, madt_entry::PCAT_COMPAT);
    let mut at = 44;
    // Processor Local APIC (5.2.12.2): UID, APIC ID, flags (bit 0 enabled).
    for id in 0..cpus {
        m[at..at + 4].copy_from_slice(&[madt_entry::LOCAL_APIC, 8, id, id]);
        put32(m, at + 4, 1);
        at += 8;
    }
    // I/O APIC (5.2.12.3): ID, reserved, address, global system interrupt base.
    m[at..at + 4].copy_from_slice(&[madt_entry::IOAPIC, 12, cfg.ioapic_id, 0]);
    put32(m, at + 4, cfg.ioapic_address);
    put32(m, at + 8, 0);
    at += 12;
    // Interrupt Source Override (5.2.12.5): bus 0 (ISA), source IRQ, GSI, flags.
    m[at..at + 4].copy_from_slice(&[madt_entry::INTERRUPT_SOURCE_OVERRIDE, 10, 0, 0]);
    put32(m, at + 4, u32::from(isa_irq_pin(0)));
    put16(m, at + 8, madt_entry::INTI_EDGE_HIGH);
    at += 10;
    // Local APIC NMI (5.2.12.7): UID 0xFF = all processors, flags (conforming), LINT#.
    m[at..at + 3].copy_from_slice(&[madt_entry::LOCAL_APIC_NMI, 6, 0xFF]);
    put16(m, at + 3, 0);
    m[at + 5] = 1;
    at += 6;
    debug_assert_eq!(at, madt_len);
    m[9] = checksum(m);

    // RSDT and XSDT.
    let r = &mut out[RSDT_OFFSET..RSDT_OFFSET + RSDT_SIZE];
    sdt_header(r, b"RSDT", RSDT_SIZE, 1);
    put32(r, SDT_HEADER_SIZE, layout.madt as u32);
    r[9] = checksum(r);
    let x = &mut out[XSDT_OFFSET..XSDT_OFFSET + XSDT_SIZE];
    sdt_header(x, b"XSDT", XSDT_SIZE, 1);
    put64(x, SDT_HEADER_SIZE, layout.madt);
    x[9] = checksum(x);

    // RSDP.
    let p = &mut out[..RSDP_SIZE];
    p[0..8].copy_from_slice(b"RSD PTR ");
    p[9..15].copy_from_slice(OEM_ID);
    p[15] = 2; // revision: ACPI 2.0+ layout with the XSDT
    put32(p, 16, layout.rsdt as u32);
    put32(p, 20, RSDP_SIZE as u32);
    put64(p, 24, layout.xsdt);
    p[8] = checksum(&p[..20]);
    p[32] = checksum(p);
    Ok(layout)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;
    use std::vec::Vec;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, &b| s.wrapping_add(b))
    }
    fn rd16(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
    }
    fn rd32(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }
    fn rd64(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    const CFG: PlatformConfig = PlatformConfig::new(0x0000_0663, 0x0781_FBFF);

    /// A guest-memory image of the BIOS area with the tables at their suggested homes,
    /// and the scan a guest does.
    fn scan(mem: &[u8], base: u64, signature: &[u8]) -> Option<u64> {
        (0..mem.len())
            .step_by(16)
            .find(|&off| mem[off..].starts_with(signature))
            .map(|off| base + off as u64)
    }

    /// What the MP tables take without PCI interrupts: no PCI bus entry, no PCI
    /// I/O interrupt entries.
    fn isa_only(cpus: u8) -> usize {
        mp_table_size(cpus) - (1 + MAX_PCI_INTX) * MP_ENTRY_SIZE
    }

    #[test]
    fn mp_floating_pointer() {
        let mut buf = [0xAAu8; 512];
        assert_eq!(write_mp_table(&mut buf, 0xF_0000, &CFG), Ok(isa_only(1)));
        let fp = &buf[..16];
        assert_eq!(&fp[0..4], b"_MP_");
        assert_eq!(rd32(fp, 4), 0xF_0010);
        assert_eq!((fp[8], fp[9], fp[11], fp[12]), (1, 4, 0, 0));
        assert_eq!(sum(fp), 0);
        // Nothing past the tables was touched.
        assert!(buf[isa_only(1)..].iter().all(|&b| b == 0xAA));
    }

    #[test]
    fn mp_configuration_table_parses_back() {
        let mut buf = vec![0u8; isa_only(1)];
        write_mp_table(&mut buf, 0x9_FC00, &CFG).unwrap();
        let t = &buf[16..];
        assert_eq!(&t[0..4], b"PCMP");
        let len = usize::from(rd16(t, 4));
        assert_eq!(len, t.len());
        assert_eq!(t[6], 4);
        assert_eq!(sum(&t[..len]), 0);
        assert_eq!(&t[8..16], b"HV      ");
        assert_eq!(rd32(t, 28), 0); // no OEM table
        assert_eq!(rd32(t, 36), 0xFEE0_0000);
        assert_eq!(rd16(t, 40), 0); // no extended table
        let count = usize::from(rd16(t, 34));

        // Walk the entries by type, as an OS does.
        let mut at = 44;
        let mut types = Vec::new();
        let mut io_ints = Vec::new();
        let mut local_ints = Vec::new();
        for _ in 0..count {
            let e = &t[at..];
            types.push(e[0]);
            match e[0] {
                0 => {
                    assert_eq!((e[1], e[2], e[3]), (0, 0x14, 0b11)); // id, version, EN|BP
                    assert_eq!(rd32(e, 4), 0x663);
                    assert_eq!(rd32(e, 8), 0x0781_FBFF);
                    at += 20;
                    continue;
                }
                1 => assert_eq!((e[1], &e[2..8]), (0, &b"ISA   "[..])),
                2 => {
                    assert_eq!((e[1], e[2], e[3]), (0, 0x11, 1));
                    assert_eq!(rd32(e, 4), 0xFEC0_0000);
                }
                3 => {
                    assert_eq!((e[1], rd16(e, 2), e[4], e[6]), (0, 0, 0, 0));
                    io_ints.push((e[5], e[7]));
                }
                4 => {
                    assert_eq!((rd16(e, 2), e[6]), (0, 0xFF));
                    local_ints.push((e[1], e[7]));
                }
                other => panic!("unexpected entry type {other}"),
            }
            at += 8;
        }
        assert_eq!(at, len);
        // Sorted by type, one processor, bus and IOAPIC.
        assert!(types.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(&types[..3], &[0, 1, 2]);
        // IRQ 0 -> INTIN2, the others identity, no IRQ 2.
        let mut expected = vec![(0, 2), (1, 1)];
        expected.extend((3..16).map(|irq| (irq, irq)));
        assert_eq!(io_ints, expected);
        assert_eq!(local_ints, [(3, 0), (1, 1)]); // ExtINT -> LINT0, NMI -> LINT1
    }

    #[test]
    fn pci_intx_gets_a_pci_bus_and_level_low_entries_instead_of_isa_ones() {
        let cfg = PlatformConfig {
            pci_intx: [
                Some(PciIntx {
                    device: 3,
                    pin: 1,
                    irq: 11,
                }),
                Some(PciIntx {
                    device: 4,
                    pin: 2,
                    irq: 11,
                }),
                None,
                None,
            ],
            ..CFG
        };
        let mut buf = vec![0u8; mp_table_size(1)];
        let used = write_mp_table(&mut buf, 0xF_0000, &cfg).unwrap();
        // One PCI bus and two PCI entries more, the ISA entry of IRQ 11 less.
        assert_eq!(used, isa_only(1) + 2 * MP_ENTRY_SIZE);
        let t = &buf[16..used];
        assert_eq!(usize::from(rd16(t, 4)), t.len());
        assert_eq!(sum(t), 0);
        assert_eq!(usize::from(rd16(t, 34)), 1 + 2 + 1 + 14 + 2 + 2);
        let entries: Vec<&[u8]> = t[44 + 20..].chunks(8).collect();
        // PCI bus 0 is MP bus 0 (Linux matches the two), ISA moves to 1.
        assert_eq!(entries[0][..8], [1, 0, b'P', b'C', b'I', b' ', b' ', b' ']);
        assert_eq!(entries[1][..8], [1, 1, b'I', b'S', b'A', b' ', b' ', b' ']);
        let io: Vec<&&[u8]> = entries.iter().filter(|e| e[0] == 3).collect();
        assert_eq!(io.len(), 14 + 2);
        // No ISA entry for IRQ 11 any more; IRQ 0 still on INTIN2.
        assert!(!io.iter().any(|e| e[4] == 1 && e[5] == 11));
        assert!(io.iter().any(|e| e[4] == 1 && e[5] == 0 && e[7] == 2));
        // Bus 0, device 3 INTA# (3 << 2 | 0) and device 4 INTB# (4 << 2 | 1) to
        // INTIN11, active low, level.
        let pci: Vec<(u16, u8, u8)> = io
            .iter()
            .filter(|e| e[4] == 0)
            .map(|e| (rd16(e, 2), e[5], e[7]))
            .collect();
        assert_eq!(pci, [(0b1111, 12, 11), (0b1111, 17, 11)]);
    }

    #[test]
    fn acpi_tables_parse_back() {
        let base = 0xF_0400;
        let mut buf = vec![0u8; 0x400];
        let layout = write_acpi_tables(&mut buf, base, &CFG).unwrap();
        assert_eq!(layout.len, acpi_tables_size(1));
        let at = |addr: u64| (addr - base) as usize;

        // RSDP: found on a 16-byte boundary, both checksums.
        assert_eq!(scan(&buf, base, b"RSD PTR "), Some(layout.rsdp));
        let p = &buf[..36];
        assert_eq!(sum(&p[..20]), 0);
        assert_eq!(sum(p), 0);
        assert_eq!(p[15], 2);
        assert_eq!(rd32(p, 20), 36);
        assert_eq!(u64::from(rd32(p, 16)), layout.rsdt);
        assert_eq!(rd64(p, 24), layout.xsdt);
        assert_eq!(&p[9..15], b"HV    ");

        let table = |addr: u64, sig: &[u8]| {
            let t = &buf[at(addr)..];
            assert_eq!(&t[..4], sig);
            let len = rd32(t, 4) as usize;
            assert_eq!(
                sum(&t[..len]),
                0,
                "{} checksum",
                std::str::from_utf8(sig).unwrap()
            );
            &t[..len]
        };
        // RSDT and XSDT name the MADT.
        let rsdt = table(layout.rsdt, b"RSDT");
        assert_eq!(rsdt.len(), 40);
        assert_eq!(u64::from(rd32(rsdt, 36)), layout.madt);
        let xsdt = table(layout.xsdt, b"XSDT");
        assert_eq!(xsdt.len(), 44);
        assert_eq!(rd64(xsdt, 36), layout.madt);

        let madt = table(rd64(xsdt, 36), b"APIC");
        assert_eq!(madt[8], 5);
        assert_eq!(rd32(madt, 36), 0xFEE0_0000);
        assert_eq!(rd32(madt, 40), 1); // PCAT_COMPAT
        let mut at = 44;
        let mut seen = Vec::new();
        while at < madt.len() {
            let (kind, len) = (madt[at], usize::from(madt[at + 1]));
            let e = &madt[at..at + len];
            match kind {
                0 => {
                    assert_eq!(len, 8);
                    assert_eq!((e[2], e[3], rd32(e, 4)), (0, 0, 1));
                }
                1 => {
                    assert_eq!(len, 12);
                    assert_eq!((e[2], rd32(e, 4), rd32(e, 8)), (0, 0xFEC0_0000, 0));
                }
                2 => {
                    assert_eq!(len, 10);
                    assert_eq!((e[2], e[3], rd32(e, 4), rd16(e, 8)), (0, 0, 2, 0b0101));
                }
                4 => {
                    assert_eq!(len, 6);
                    assert_eq!((e[2], rd16(e, 3), e[5]), (0xFF, 0, 1));
                }
                other => panic!("unexpected MADT entry {other}"),
            }
            seen.push(kind);
            at += len;
        }
        assert_eq!(at, madt.len());
        assert_eq!(seen, [0, 1, 2, 4]);
    }

    #[test]
    fn both_sets_side_by_side_in_the_bios_area() {
        let base = 0xE_0000u64;
        let mut mem = vec![0u8; 0x2_0000];
        let cfg = PlatformConfig {
            cpus: 2,
            ioapic_id: 2,
            ..CFG
        };
        let mp = (MP_TABLE_ADDRESS - base) as usize;
        let acpi = (ACPI_TABLES_ADDRESS - base) as usize;
        write_mp_table(&mut mem[mp..], MP_TABLE_ADDRESS, &cfg).unwrap();
        write_acpi_tables(&mut mem[acpi..], ACPI_TABLES_ADDRESS, &cfg).unwrap();
        assert!(mp + MP_TABLE_SIZE <= acpi);
        assert_eq!(scan(&mem, base, b"_MP_"), Some(MP_TABLE_ADDRESS));
        assert_eq!(scan(&mem, base, b"RSD PTR "), Some(ACPI_TABLES_ADDRESS));
        // Two processors, the first the BSP, and the IOAPIC ID, in both.
        let t = &mem[mp + 16..];
        assert_eq!(rd16(t, 34), 2 + 19);
        assert_eq!(usize::from(rd16(t, 4)), isa_only(2) - 16);
        assert_eq!(sum(&t[..usize::from(rd16(t, 4))]), 0);
        assert_eq!((t[44], t[44 + 1], t[44 + 3]), (0, 0, 0b11)); // BSP, APIC id 0
        assert_eq!((t[64], t[64 + 1], t[64 + 3]), (0, 1, 0b01)); // AP, APIC id 1
        assert_eq!(t[44 + 40 + 8 + 1], 2); // IOAPIC id
        assert_eq!(t[44 + 40 + 16 + 6], 2); // first I/O interrupt's destination
        let m = &mem[acpi + MADT_OFFSET..];
        assert_eq!(rd32(m, 4) as usize, madt_size(2));
        assert_eq!(sum(&m[..madt_size(2)]), 0);
        assert_eq!((m[44], m[44 + 2], m[44 + 3]), (0, 0, 0)); // UID 0, APIC id 0
        assert_eq!((m[52], m[52 + 2], m[52 + 3]), (0, 1, 1)); // UID 1, APIC id 1
        assert_eq!(m[60 + 2], 2);
    }

    #[test]
    fn placement_errors() {
        let mut small = [0u8; 100];
        assert_eq!(
            write_mp_table(&mut small, 0xF_0000, &CFG),
            Err(TableError::BufferTooSmall {
                needed: isa_only(1)
            })
        );
        assert_eq!(
            write_acpi_tables(&mut small, 0xF_0000, &CFG),
            Err(TableError::BufferTooSmall {
                needed: acpi_tables_size(1)
            })
        );
        let mut buf = [0u8; 512];
        assert_eq!(
            write_mp_table(&mut buf, 0xF_0008, &CFG),
            Err(TableError::Misaligned)
        );
        assert_eq!(
            write_acpi_tables(&mut buf, 0xFFFF_FFA0, &CFG),
            Err(TableError::AboveFourGib)
        );
        assert_eq!(
            write_mp_table(&mut buf, u64::MAX - 15, &CFG),
            Err(TableError::AboveFourGib)
        );
        // Ending exactly at 4 GiB is fine.
        let top = (1 << 32) - acpi_tables_size(1) as u64;
        assert!(write_acpi_tables(&mut buf, top, &CFG).is_ok());
        assert_eq!(isa_only(1), 232);
        assert_eq!(mp_table_size(1), 232 + 5 * 8);
        assert_eq!(acpi_tables_size(1), 224);
        // With the most processors, the MP tables still end before the ACPI ones.
        assert!(MP_TABLE_ADDRESS + MP_TABLE_SIZE as u64 <= ACPI_TABLES_ADDRESS);
    }
}
