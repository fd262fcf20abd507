//! Emulated platform devices for the hypervisor's guests.
//!
//! Every device is a plain state machine: it owns its register state, touches no
//! hardware, uses no globals and allocates nothing (the PCI root alone keeps its
//! functions in a `Vec` of boxes), so each one is unit-tested on the
//! host and a VM simply embeds the devices it offers as fields. The pieces:
//!
//! * [`bus`]: the [`PortDevice`] trait and [`PortMap`], which routes a guest port
//!   access to a VM-chosen device id and register offset.
//! * [`uart16550`]: a 16550A UART ([`Uart16550`]) whose output goes to a [`SerialSink`].
//! * [`line_buffer`]: [`LineBuffer`], which turns a guest's serial byte stream into
//!   sanitized lines for the console relay.
//! * [`irq`]: [`IrqEdge`], turning a device's interrupt level into the edges an ISA
//!   interrupt controller acts on.
//! * [`state`]: snapshots. Every device model has a versioned `state()` (bytes) and
//!   `restore()` (checked, all or nothing), and [`PlatformState`] lists what one
//!   VM's platform snapshot holds.
//!
//! # Wiring a UART into a VM
//!
//! The VM owns its devices and a [`PortMap`] naming them; the console relay is the
//! UART's [`SerialSink`]; a port-I/O exit is looked up, dispatched, and followed by an
//! interrupt-edge check.
//!
//! ```
//! use devices::{all_ones, IrqEdge, LineBuffer, PortDevice, PortMap, SerialSink, Uart16550};
//! use devices::{COM1_BASE, COM1_IRQ, PORT_COUNT};
//!
//! /// Relays one VM's serial output to the host console, a line at a time.
//! struct Relay {
//!     name: &'static str,
//!     line: LineBuffer,
//! }
//!
//! impl SerialSink for Relay {
//!     fn write_byte(&mut self, byte: u8) {
//!         if let Some(line) = self.line.push(byte) {
//!             let mark = if line.continued { '+' } else { '|' };
//!             println!("{} {mark} {}", self.name, line.text); // the kernel: log/serial
//!         }
//!     }
//! }
//!
//! #[derive(Clone, Copy)]
//! enum Dev {
//!     Com1,
//! }
//!
//! struct Vm {
//!     ports: PortMap<Dev, 8>,
//!     com1: Uart16550<Relay>,
//!     com1_irq: IrqEdge,
//! }
//!
//! impl Vm {
//!     /// A port-I/O exit: returns the value for AL/AX/EAX on a read.
//!     fn port_io(&mut self, port: u16, size: u8, write: bool, value: u32) -> u32 {
//!         match self.ports.lookup(port) {
//!             Some((Dev::Com1, offset)) => {
//!                 let r = self.com1.access(offset, size, write, value);
//!                 // ISA IRQs are edge-triggered: raise on the line's 0 -> 1 transition.
//!                 if self.com1_irq.update(self.com1.interrupt_pending()) {
//!                     self.raise_irq(COM1_IRQ);
//!                 }
//!                 r
//!             }
//!             // Nothing decodes the port: reads float high, writes vanish.
//!             None if write => 0,
//!             None => all_ones(size),
//!         }
//!     }
//!
//!     fn raise_irq(&mut self, _irq: u8) { /* the virtual PIC / injection */ }
//! }
//!
//! let mut vm = Vm {
//!     ports: PortMap::new(),
//!     com1: Uart16550::new(Relay { name: "linux", line: LineBuffer::new() }),
//!     com1_irq: IrqEdge::new(),
//! };
//! vm.ports.register(COM1_BASE, PORT_COUNT, Dev::Com1).unwrap();
//! for &b in b"hello\r\n" {
//!     vm.port_io(COM1_BASE, 1, true, u32::from(b)); // prints "linux | hello"
//! }
//! assert_eq!(vm.port_io(COM1_BASE + 5, 1, false, 0), 0x60); // LSR: THRE | TEMT
//! assert_eq!(vm.port_io(0x2F8, 1, false, 0), 0xFF); // no COM2
//! // When the VM stops, emit what is left of an unterminated line.
//! if let Some(line) = vm.com1.sink_mut().line.flush_partial() {
//!     println!("linux | {}", line.text);
//! }
//! ```
#![no_std]

extern crate alloc;

pub mod bus;
pub mod bus_devices;
pub mod cmos;
pub mod debug_exit;
pub mod device;
pub mod fw_cfg;
pub mod i8042;
pub mod ioapic;
pub mod ipi;
pub mod irq;
pub mod lapic;
pub mod line_buffer;
pub mod mptable;
pub mod pci;
pub mod pci_config;
pub mod pic8259;
pub mod pit8254;
pub mod state;
pub mod uart16550;

pub use bus::{
    all_ones, all_ones64, read_bytewise, write_bytewise, Bus, BusRange, MapError, PortDevice,
    PortMap, PortRange,
};
pub use bus_devices::{RtcCmos, SerialPort, SystemTimer};
pub use cmos::{Cmos, CMOS_BASE, CMOS_PORT_COUNT, RTC_IRQ};
pub use debug_exit::{DebugExit, DEBUG_EXIT_BASE, DEBUG_EXIT_PORT_COUNT};
pub use device::{Access, BusDevice, Effects, IrqLine, MsiMessage};
pub use fw_cfg::{FwCfg, FwCfgError, FW_CFG_BASE, FW_CFG_PORT_COUNT};
pub use i8042::{SystemControlA, AUX_IRQ, I8042, KBD_IRQ, SYSTEM_CONTROL_A_PORT};
pub use ioapic::{
    isa_irq_pin, msi_delivery, Delivery, IoApic, Redeliveries, IOAPIC_BASE, IOAPIC_MMIO_SIZE,
    IOAPIC_PINS, MSI_PIN,
};
pub use irq::IrqEdge;
pub use lapic::{
    ApicError, DeliveryMode, Ipi, LapicConfig, LocalApic, Shorthand, TimerMode, DEFAULT_TIMER_HZ,
    LAPIC_BASE, LAPIC_MMIO_SIZE,
};
pub use line_buffer::{Line, LineBuffer, LINE_CAPACITY};
pub use mptable::{
    write_acpi_tables, write_mp_table, AcpiLayout, PciIntx, PlatformConfig, TableError,
    ACPI_TABLES_ADDRESS, ACPI_TABLES_SIZE, MP_TABLE_ADDRESS, MP_TABLE_SIZE,
};
pub use pci::{Bar, BarAllocator, HostBridge, PciAddress, PciEffects, PciFunction};
pub use pci_config::{
    default_intx_irq, BarError, PciConfig, PciError, DEFAULT_INTX_ROUTING, PCI_CONFIG_BASE,
    PCI_CONFIG_PORT_COUNT,
};
pub use pic8259::Pic8259;
pub use pit8254::{Pit8254, PIT_BASE, PIT_HZ, PIT_IRQ, PIT_PORT_COUNT, PORT_61};
pub use state::{PlatformState, StateError};
pub use uart16550::{
    NullSink, SerialSink, Uart16550, COM1_BASE, COM1_IRQ, COM2_BASE, COM2_IRQ, PORT_COUNT,
};
