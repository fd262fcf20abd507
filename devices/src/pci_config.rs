//! PCI configuration mechanism #1 (ports 0xCF8-0xCFF) and the PCI root behind it,
//! plus the PIIX reset control register at 0xCF9.
//!
//! Guests probe for PCI even when there is nothing to find: Linux's
//! `pci_check_type1` writes 0x8000_0000 to 0xCF8 and needs it back before it scans,
//! firmware and hobby kernels walk bus 0 reading vendor IDs. With this device the
//! probe sees a working host bridge interface. Functions registered with
//! [`PciConfig::add_function`] (a [`crate::pci::HostBridge`] at 00:00.0, then devices)
//! answer their configuration cycles; every other read finds no device: all ones,
//! the value a master abort returns (PCI Local Bus Specification 3.0, section 6.1: a
//! read of a non-existent function returns 0xFFFF as vendor ID). [`PciConfig::new`]
//! has no functions at all, which is what a VM without PCI devices gets.
//!
//! The root also decodes the functions' memory BARs ([`PciConfig::mmio_read`],
//! [`PciConfig::mmio_write`]): the platform registers the PCI hole on its MMIO bus
//! for it, and the root finds the function whose BAR holds the address now, so a
//! guest that moves a BAR needs nothing from the platform. [`PciConfig::assign_bars`]
//! places the BARs in the hole as firmware would (sizing each through configuration
//! space, largest first) and programs each function's interrupt line.
//!
//! INTx: a function's pin (INTA#-INTD#, from its interrupt pin register) is swizzled
//! by its device number onto PIRQA-D as on a PC, and each PIRQ goes to an ISA IRQ
//! ([`PciConfig::set_intx_routing`]); the root ORs the functions sharing a PIRQ and
//! reports level changes as [`IrqLine::Level`]. MSI-X messages pass through as
//! [`Effects::msi`].
//!
//! Decoding follows the Intel PIIX3 datasheet (order no. 290550), CONFADD/CONFDATA
//! and RC: CONFADD at 0xCF8 answers 32-bit accesses only; byte and word accesses to
//! 0xCF8-0xCFB go to the ISA bus, where only the reset control register (0xCF9, a byte
//! register) listens. A write that sets RC.RST_CPU (bit 2) resets the machine, which
//! is how Linux's `reboot=pci` restarts; [`PciConfig::take_reset_request`] reports it.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::any::Any;

use crate::bus::{all_ones, PortDevice};
use crate::device::{Access, BusDevice, Effects, IrqLine};
use crate::pci::{self, BarAllocator, PciAddress, PciEffects, PciFunction};
use crate::state::{Reader, StateError, Tag, Writer};

/// The configuration address register; the device spans [`PCI_CONFIG_PORT_COUNT`]
/// ports from here (address, then data at 0xCFC-0xCFF).
pub const PCI_CONFIG_BASE: u16 = 0xCF8;
pub const PCI_CONFIG_PORT_COUNT: u16 = 8;
/// Offset of the PIIX reset control register.
const RESET_CONTROL: u16 = 1;

/// CONFADD bit 31: the next data access is a configuration cycle.
pub const CONFIG_ENABLE: u32 = 1 << 31;
/// CONFADD's implemented bits: enable, bus, device, function, dword register.
/// Bits 30:24 and 1:0 are reserved and read 0.
const ADDRESS_MASK: u32 = 0x80FF_FFFC;

/// Reset control register bits.
pub mod reset_control {
    /// System reset: 1 makes the reset a hard (cold) one; stored only.
    pub const SYS_RST: u8 = 1 << 1;
    /// Reset CPU: the 0 -> 1 transition resets the machine.
    pub const RST_CPU: u8 = 1 << 2;
    /// Full reset (ICH): also drops power briefly; stored only.
    pub const FULL_RST: u8 = 1 << 3;
}

/// Why [`PciConfig::add_function`] refused a function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PciError {
    /// Device above 31 or function above 7.
    BadAddress(PciAddress),
    /// A function is already registered there.
    Occupied(PciAddress),
}

/// Why [`PciConfig::assign_bars`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarError {
    /// The hole has no room for this BAR of this function.
    NoRoom {
        function: PciAddress,
        bar: u8,
        size: u64,
    },
}

/// The default PIRQA-D routing: ISA IRQs 10, 11, 10, 11 (free on the VM's PC:
/// 0-4, 8 and 12 are the platform's).
pub const DEFAULT_INTX_ROUTING: [u8; 4] = [10, 11, 10, 11];

/// The ISA IRQ that INTx `pin` (1 = INTA# ... 4 = INTD#) of a device on bus 0
/// reaches under [`DEFAULT_INTX_ROUTING`]: the PIIX-style swizzle the root applies,
/// PIRQ (device + pin - 1) mod 4. For the firmware tables, which are written before
/// the root exists.
pub const fn default_intx_irq(device: u8, pin: u8) -> u8 {
    DEFAULT_INTX_ROUTING[((pin.wrapping_sub(1) & 3) as usize + device as usize) % 4]
}

struct Slot {
    address: PciAddress,
    function: Box<dyn PciFunction>,
    /// The function's INTx pin level as it last reported it.
    intx: bool,
}

/// The configuration address/data ports and the PCI root: the functions behind them.
pub struct PciConfig {
    address: u32,
    reset_control: u8,
    reset_request: bool,
    slots: Vec<Slot>,
    routing: [u8; 4],
    /// The level each PIRQ was last reported at.
    pirq_level: [bool; 4],
    /// Effects of [`PciConfig::with_function`] calls, for the next poll.
    pending: Vec<(usize, PciEffects)>,
}

impl core::fmt::Debug for PciConfig {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PciConfig")
            .field("address", &self.address)
            .field("reset_control", &self.reset_control)
            .field("functions", &self.slots.len())
            .finish()
    }
}

impl Default for PciConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl PciConfig {
    /// Configuration mechanism #1 with no functions behind it.
    pub const fn new() -> Self {
        Self {
            address: 0,
            reset_control: 0,
            reset_request: false,
            slots: Vec::new(),
            routing: DEFAULT_INTX_ROUTING,
            pirq_level: [false; 4],
            pending: Vec::new(),
        }
    }

    /// The last configuration address written (reserved bits cleared).
    pub fn address(&self) -> u32 {
        self.address
    }

    /// Whether the guest asked for a machine reset through 0xCF9 since the last call.
    /// The VMM restarts (or stops) the VM; this device's state is reset with it.
    pub fn take_reset_request(&mut self) -> bool {
        core::mem::take(&mut self.reset_request)
    }

    /// Puts `function` at `address` (00:00.0 should be a host bridge).
    pub fn add_function(
        &mut self,
        address: PciAddress,
        function: Box<dyn PciFunction>,
    ) -> Result<(), PciError> {
        if !address.is_valid() {
            return Err(PciError::BadAddress(address));
        }
        if self.slots.iter().any(|s| s.address == address) {
            return Err(PciError::Occupied(address));
        }
        self.slots.push(Slot {
            address,
            function,
            intx: false,
        });
        Ok(())
    }

    /// Runs `f` on the function at `address` from outside the guest (an
    /// operator's request to a device); the effects it returns (an interrupt) are
    /// delivered at the next [`Self::poll_functions`]. `None` if no function is
    /// there.
    pub fn with_function<R>(
        &mut self,
        address: PciAddress,
        f: impl FnOnce(&mut dyn PciFunction) -> (R, PciEffects),
    ) -> Option<R> {
        let i = self.slots.iter().position(|s| s.address == address)?;
        let (r, e) = f(&mut *self.slots[i].function);
        if e != PciEffects::NONE {
            self.pending.push((i, e));
        }
        Some(r)
    }

    /// The function at `address`, for typed access (`as_any_mut().downcast_mut()`).
    pub fn function_mut(&mut self, address: PciAddress) -> Option<&mut dyn PciFunction> {
        self.slots
            .iter_mut()
            .find(|s| s.address == address)
            .map(|s| &mut *s.function as &mut dyn PciFunction)
    }

    /// Which ISA IRQ each of PIRQA-D drives.
    pub fn set_intx_routing(&mut self, routing: [u8; 4]) {
        self.routing = routing;
    }

    /// The PIRQ (0-3) a slot's INTx pin lands on, if it has a pin: the usual
    /// swizzle, (pin - 1 + device) mod 4.
    // Keep in step with `default_intx_irq`.
    fn pirq(slot: &mut Slot) -> Option<usize> {
        let pin = (slot.function.config_read(pci::reg::INTERRUPT_LINE) >> 8) as u8;
        (1..=4)
            .contains(&pin)
            .then(|| (usize::from(pin - 1) + usize::from(slot.address.device)) % 4)
    }

    /// The ISA IRQ `address`'s INTx pin is routed to.
    pub fn intx_irq(&mut self, address: PciAddress) -> Option<u8> {
        let slot = self.slots.iter_mut().find(|s| s.address == address)?;
        Self::pirq(slot).map(|p| self.routing[p])
    }

    /// Folds what slot `i` reported into the platform's effects: its INTx level into
    /// its PIRQ's line (ORed with the other functions on it), its messages as they are.
    fn absorb(&mut self, i: usize, e: PciEffects, out: &mut Effects) {
        for msg in e.msis() {
            out.push_msi(msg);
        }
        let Some(level) = e.intx else { return };
        self.slots[i].intx = level;
        let Some(pirq) = Self::pirq(&mut self.slots[i]) else {
            return;
        };
        let mut any = false;
        for s in 0..self.slots.len() {
            if self.slots[s].intx && Self::pirq(&mut self.slots[s]) == Some(pirq) {
                any = true;
            }
        }
        if any != self.pirq_level[pirq] {
            self.pirq_level[pirq] = any;
            *out = out.with_line(IrqLine::Level(self.routing[pirq], any));
        }
    }

    /// One access to 0xCF8-0xCFF (`offset` 0-7) with its effects.
    pub fn port_access(
        &mut self,
        offset: u16,
        size: u8,
        write: bool,
        value: u32,
    ) -> (u32, Effects) {
        let mut out = Effects::NONE;
        let v = match (offset, size, write) {
            (0, 4, false) => self.address,
            (0, 4, true) => {
                self.address = value & ADDRESS_MASK;
                0
            }
            (RESET_CONTROL, 1, false) => u32::from(self.reset_control),
            (RESET_CONTROL, 1, true) => {
                let value = value as u8
                    & (reset_control::SYS_RST | reset_control::RST_CPU | reset_control::FULL_RST);
                if value & reset_control::RST_CPU != 0
                    && self.reset_control & reset_control::RST_CPU == 0
                {
                    self.reset_request = true;
                }
                self.reset_control = value;
                0
            }
            (4..=7, 1 | 2 | 4, _) if self.address & CONFIG_ENABLE != 0 => {
                let byte = u32::from(offset - 4);
                // An access that runs past 0xCFF is not a configuration cycle.
                if byte + u32::from(size) > 4 {
                    return (if write { 0 } else { all_ones(size) }, out);
                }
                let target = PciAddress::from_config_address(self.address);
                let reg = (self.address & 0xFC) as u16;
                let Some(i) = self.slots.iter().position(|s| s.address == target) else {
                    // Master abort: reads float high, writes are dropped.
                    return (if write { 0 } else { all_ones(size) }, out);
                };
                let shift = 8 * byte;
                if write {
                    let mask = all_ones(size) << shift;
                    let e = self.slots[i]
                        .function
                        .config_write(reg, value << shift, mask);
                    self.absorb(i, e, &mut out);
                    0
                } else {
                    (self.slots[i].function.config_read(reg) >> shift) & all_ones(size)
                }
            }
            // With the enable bit clear the data window is plain ISA I/O that nothing
            // decodes; other widths at 0xCF8 are ISA too. The bus floats to all ones.
            (_, _, false) => all_ones(size),
            (_, _, true) => 0,
        };
        (v, out)
    }

    /// The slot and BAR decoding guest-physical `addr`, with the offset into the BAR.
    fn decode(&self, addr: u64) -> Option<(usize, u8, u64)> {
        self.slots.iter().enumerate().find_map(|(i, s)| {
            (0..6).find_map(|b| {
                let bar = s.function.bar(b)?;
                bar.offset_of(addr).map(|off| (i, b, off))
            })
        })
    }

    /// A memory read at guest-physical `addr` in the PCI hole: `None` when no BAR
    /// decodes it (the platform then reads all ones, a master abort).
    pub fn mmio_read(&mut self, addr: u64, size: u8) -> Option<(u64, Effects)> {
        let (i, bar, offset) = self.decode(addr)?;
        let (v, e) = self.slots[i].function.bar_read(bar, offset, size);
        let mut out = Effects::NONE;
        self.absorb(i, e, &mut out);
        Some((v & pci::all_ones64(size), out))
    }

    /// A memory write at guest-physical `addr`; `None` when no BAR decodes it (the
    /// write is dropped).
    pub fn mmio_write(&mut self, addr: u64, size: u8, value: u64) -> Option<Effects> {
        let (i, bar, offset) = self.decode(addr)?;
        let e = self.slots[i].function.bar_write(bar, offset, size, value);
        let mut out = Effects::NONE;
        self.absorb(i, e, &mut out);
        Some(out)
    }

    /// Continues work the functions left for later (see [`PciFunction::has_work`]).
    /// Effects have room for two messages and two lines, which one function's poll
    /// can fill: once one produced something, the others wait for the next poll
    /// (they still have work, so [`BusDevice::next_deadline_ns`] says it is due).
    pub fn poll_functions(&mut self) -> Effects {
        let mut out = Effects::NONE;
        if !self.pending.is_empty() {
            let (i, e) = self.pending.remove(0);
            self.absorb(i, e, &mut out);
            return out;
        }
        for i in 0..self.slots.len() {
            if out != Effects::NONE {
                break;
            }
            if self.slots[i].function.has_work() {
                let e = self.slots[i].function.poll();
                self.absorb(i, e, &mut out);
            }
        }
        out
    }

    /// Whether a function has work left for [`Self::poll_functions`].
    pub fn has_work(&self) -> bool {
        !self.pending.is_empty() || self.slots.iter().any(|s| s.function.has_work())
    }

    /// What firmware does before the OS runs: sizes every memory BAR of every
    /// function through configuration space (write all ones, read the mask back,
    /// PCI 3.0 section 6.2.5.1), places them in `hole` largest first, enables memory
    /// decoding, and writes each function's routed IRQ to its interrupt line
    /// register. I/O BARs are left unassigned.
    pub fn assign_bars(&mut self, hole: &mut BarAllocator) -> Result<(), BarError> {
        // (slot, BAR index, size, 64-bit)
        let mut bars: Vec<(usize, u8, u64, bool)> = Vec::new();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let f = &mut slot.function;
            let mut b = 0u8;
            while b < 6 {
                let reg = pci::reg::BAR0 + 4 * u16::from(b);
                let saved = f.config_read(reg);
                f.config_write(reg, u32::MAX, u32::MAX);
                let low = f.config_read(reg);
                f.config_write(reg, saved, u32::MAX);
                let is_64 = low & 0x7 == 0x4;
                if low == 0 || low & 1 == 1 {
                    b += 1; // not implemented, or I/O space
                    continue;
                }
                let mut mask = u64::from(low & !0xF) | 0xFFFF_FFFF_0000_0000;
                if is_64 && b < 5 {
                    let saved_hi = f.config_read(reg + 4);
                    f.config_write(reg + 4, u32::MAX, u32::MAX);
                    let high = f.config_read(reg + 4);
                    f.config_write(reg + 4, saved_hi, u32::MAX);
                    mask = u64::from(high) << 32 | u64::from(low & !0xF);
                }
                let size = (!mask).wrapping_add(1);
                if size != 0 {
                    bars.push((i, b, size, is_64));
                }
                b += if is_64 { 2 } else { 1 };
            }
        }
        bars.sort_by_key(|b| core::cmp::Reverse(b.2));
        for (i, b, size, is_64) in bars {
            let function = self.slots[i].address;
            let base = hole.allocate(size).ok_or(BarError::NoRoom {
                function,
                bar: b,
                size,
            })?;
            let f = &mut self.slots[i].function;
            let reg = pci::reg::BAR0 + 4 * u16::from(b);
            f.config_write(reg, base as u32, u32::MAX);
            if is_64 {
                f.config_write(reg + 4, (base >> 32) as u32, u32::MAX);
            }
        }
        for i in 0..self.slots.len() {
            let irq = Self::pirq(&mut self.slots[i]).map(|p| self.routing[p]);
            let f = &mut self.slots[i].function;
            f.config_write(
                pci::reg::COMMAND,
                u32::from(pci::command::MEMORY),
                u32::from(pci::command::MEMORY),
            );
            if let Some(irq) = irq {
                f.config_write(pci::reg::INTERRUPT_LINE, irq.into(), 0xFF);
            }
        }
        Ok(())
    }
}

impl PciConfig {
    /// The tag of [`Self::state`] (see [`crate::state`]).
    pub const STATE_TAG: Tag = *b"pci-root";
    /// Bumped whenever the field list changes.
    pub const STATE_VERSION: u16 = 1;

    /// The configuration address, the reset control register and a reset request
    /// not yet taken, the PIRQ levels last reported, and per function its INTx
    /// level and its own snapshot ([`PciFunction::snapshot`]), in the format of
    /// [`crate::state`]. The INTx routing and the functions' addresses are the
    /// VM's shape: stored to be compared.
    ///
    /// Fails when a function has no snapshot support.
    pub fn state(&self) -> Result<Vec<u8>, StateError> {
        let mut w = Writer::new(&Self::STATE_TAG, Self::STATE_VERSION);
        w.u32(self.address);
        w.u8(self.reset_control);
        w.bool(self.reset_request);
        w.raw(&self.routing);
        for &level in &self.pirq_level {
            w.bool(level);
        }
        w.u32(self.slots.len() as u32);
        for slot in &self.slots {
            w.u32(Self::address_key(slot.address));
            w.bool(slot.intx);
            w.bytes(&slot.function.snapshot()?);
        }
        Ok(w.finish())
    }

    /// Takes back what [`Self::state`] returned, for a root with the same INTx
    /// routing and the same functions at the same addresses, each restoring its
    /// own part. Nothing changes on an error: functions restored before one that
    /// refused its part get back the state they had (from their own snapshots,
    /// taken first).
    pub fn restore(&mut self, data: &[u8]) -> Result<(), StateError> {
        let mut r = Reader::new(data, &Self::STATE_TAG, Self::STATE_VERSION)?;
        let address = r.u32()?;
        r.check(address & !ADDRESS_MASK == 0, "configuration address")?;
        let reset_control = r.u8()?;
        let rc_bits = reset_control::SYS_RST | reset_control::RST_CPU | reset_control::FULL_RST;
        r.check(reset_control & !rc_bits == 0, "reset control register")?;
        let reset_request = r.bool()?;
        let routing = r.array::<4>()?;
        r.expect(
            "INTx routing (PIRQA-D IRQs, little-endian)",
            u32::from_le_bytes(routing).into(),
            u32::from_le_bytes(self.routing).into(),
        )?;
        let mut pirq_level = [false; 4];
        for level in &mut pirq_level {
            *level = r.bool()?;
        }
        let count = r.u32()?;
        r.expect("PCI function count", count.into(), self.slots.len() as u64)?;
        let mut parts = Vec::with_capacity(self.slots.len());
        for slot in &self.slots {
            let key = r.u32()?;
            r.expect(
                "PCI function address (bus << 16 | device << 8 | function)",
                key.into(),
                Self::address_key(slot.address).into(),
            )?;
            let intx = r.bool()?;
            parts.push((intx, r.bytes()?));
        }
        r.end()?;
        // Everything of the root is acceptable; now the functions, all or none.
        let backups = self
            .slots
            .iter()
            .map(|s| s.function.snapshot())
            .collect::<Result<Vec<_>, _>>()?;
        for (i, (_, part)) in parts.iter().enumerate() {
            if let Err(e) = self.slots[i].function.restore_snapshot(part) {
                for (slot, backup) in self.slots[..i].iter_mut().zip(&backups) {
                    // The function's own snapshot of a moment ago: accepted unless
                    // the function contradicts itself, which leaves nothing better.
                    let _ = slot.function.restore_snapshot(backup);
                }
                return Err(e);
            }
        }
        for (slot, (intx, _)) in self.slots.iter_mut().zip(parts) {
            slot.intx = intx;
        }
        self.address = address;
        self.reset_control = reset_control;
        self.reset_request = reset_request;
        self.pirq_level = pirq_level;
        Ok(())
    }

    /// A function's address as one number, for snapshots.
    fn address_key(a: PciAddress) -> u32 {
        u32::from(a.bus) << 16 | u32::from(a.device) << 8 | u32::from(a.function)
    }
}

/// Whether an access on the platform's buses is one to the configuration ports
/// (rather than to the PCI hole the same device decodes).
fn is_port_access(a: &Access) -> bool {
    (u64::from(PCI_CONFIG_BASE)..u64::from(PCI_CONFIG_BASE + PCI_CONFIG_PORT_COUNT))
        .contains(&a.addr)
}

/// The root on both of the platform's buses: registered on the port bus at
/// [`PCI_CONFIG_BASE`] and, for BARs, on the MMIO bus over the PCI hole. An access
/// whose address is one of the ports 0xCF8-0xCFF is a configuration-port access
/// (the hole never covers that low range); anything else is an MMIO access at
/// guest-physical `addr`, all ones (reads) or dropped (writes) where no BAR decodes.
impl BusDevice for PciConfig {
    fn name(&self) -> &'static str {
        "pci"
    }
    fn read(&mut self, a: &Access) -> (u64, Effects) {
        if is_port_access(a) {
            let (v, e) = self.port_access(a.offset as u16, a.size, false, 0);
            (v.into(), e)
        } else {
            self.mmio_read(a.addr, a.size)
                .unwrap_or((pci::all_ones64(a.size), Effects::NONE))
        }
    }
    fn write(&mut self, a: &Access, value: u64) -> Effects {
        if is_port_access(a) {
            let mut e = self
                .port_access(a.offset as u16, a.size, true, value as u32)
                .1;
            e.reset = self.take_reset_request();
            e
        } else {
            self.mmio_write(a.addr, a.size, value)
                .unwrap_or(Effects::NONE)
        }
    }
    fn poll(&mut self, _now_ns: u64) -> Effects {
        self.poll_functions()
    }
    fn next_deadline_ns(&self) -> Option<u64> {
        // Left-over work is due at once.
        self.has_work().then_some(0)
    }
    fn snapshot(&self) -> Result<Vec<u8>, StateError> {
        self.state()
    }
    fn restore_snapshot(&mut self, data: &[u8]) -> Result<(), StateError> {
        self.restore(data)
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// The configuration ports alone, for callers that want no effects: MSI-X messages
/// and INTx changes a configuration write causes are dropped (the reset request is
/// kept for [`PciConfig::take_reset_request`]). The platform uses [`BusDevice`].
impl PortDevice for PciConfig {
    fn read(&mut self, offset: u16, size: u8) -> u32 {
        self.port_access(offset, size, false, 0).0
    }

    fn write(&mut self, offset: u16, size: u8, value: u32) {
        self.port_access(offset, size, true, value);
    }
}

#[cfg(test)]
mod tests {
    // The port interface alone: the existing tests use `read`/`write` unqualified.
    use super::{PciConfig, PortDevice};

    #[test]
    fn linux_type1_probe_sees_the_address_register() {
        // arch/x86/pci/direct.c pci_check_type1.
        let mut pci = PciConfig::new();
        pci.write(3, 1, 0x01); // outb(0x01, 0xCFB): not CONFADD
        let saved = pci.read(0, 4);
        pci.write(0, 4, 0x8000_0000);
        assert_eq!(pci.read(0, 4), 0x8000_0000);
        pci.write(0, 4, saved);
        assert_eq!(pci.address(), 0);
    }

    #[test]
    fn address_register_keeps_only_implemented_bits() {
        let mut pci = PciConfig::new();
        pci.write(0, 4, 0xFFFF_FFFF);
        assert_eq!(pci.read(0, 4), 0x80FF_FFFC);
        // Byte and word accesses do not touch CONFADD and read all ones (0xCF9 aside).
        pci.write(0, 2, 0);
        pci.write(2, 1, 0);
        assert_eq!(pci.read(0, 4), 0x80FF_FFFC);
        assert_eq!(pci.read(0, 1), 0xFF);
        assert_eq!(pci.read(2, 2), 0xFFFF);
        assert_eq!(pci.read(3, 1), 0xFF);
    }

    #[test]
    fn no_device_anywhere() {
        let mut pci = PciConfig::new();
        for address in [0x8000_0000u32, 0x8000_0800, 0x80FF_FF00, 0x8000_003C, 0] {
            pci.write(0, 4, address);
            assert_eq!(pci.read(4, 4), 0xFFFF_FFFF);
            for offset in 4..8 {
                assert_eq!(pci.read(offset, 1), 0xFF);
            }
            assert_eq!(pci.read(4, 2), 0xFFFF);
            assert_eq!(pci.read(6, 2), 0xFFFF);
            // Writes vanish.
            pci.write(4, 4, 0x1234_5678);
            pci.write(5, 1, 0x12);
            assert_eq!(pci.read(4, 4), 0xFFFF_FFFF);
        }
    }

    #[test]
    fn reset_control_register() {
        // Linux's reboot=pci (BOOT_CF9_SAFE): hard-reset request, then the reset.
        let mut pci = PciConfig::new();
        assert!(!pci.take_reset_request());
        let cf9 = pci.read(1, 1) as u8 & !0x0E;
        pci.write(1, 1, u32::from(cf9 | 0x02));
        assert!(!pci.take_reset_request());
        assert_eq!(pci.read(1, 1), 0x02);
        pci.write(1, 1, u32::from(cf9 | 0x0E));
        assert!(pci.take_reset_request());
        assert!(!pci.take_reset_request());
        // Only a 0 -> 1 transition of RST_CPU resets.
        pci.write(1, 1, 0x06);
        assert!(!pci.take_reset_request());
        pci.write(1, 1, 0x00);
        pci.write(1, 1, 0x04);
        assert!(pci.take_reset_request());
        // A dword write to 0xCF8 is CONFADD, not the reset register.
        pci.write(0, 4, 0x0000_0400);
        assert!(!pci.take_reset_request());
    }
}

#[cfg(test)]
mod root_tests {
    extern crate std;
    use super::*;
    use crate::device::MsiMessage;
    use crate::pci::{command, merge, Bar, HostBridge};

    /// A function with a 4 KiB 32-bit memory BAR 0, a 64-bit 64 KiB BAR 2, pin INTA#,
    /// and one register at BAR offset 0 whose write value is its INTx level (bit 0)
    /// or, with bit 1, an MSI.
    struct Mock {
        command: u16,
        bar0: u32,
        bar2: u64,
        line: u8,
        reg: u64,
    }

    impl Mock {
        fn new() -> Self {
            Self {
                command: 0,
                bar0: 0,
                bar2: 0,
                line: 0,
                reg: 0,
            }
        }
    }

    impl PciFunction for Mock {
        fn name(&self) -> &'static str {
            "mock"
        }
        fn config_read(&mut self, reg: u16) -> u32 {
            match reg {
                0x00 => 0x1234_1AF4,
                0x04 => self.command.into(),
                0x10 => self.bar0,
                0x18 => self.bar2 as u32 | 0x4,
                0x1C => (self.bar2 >> 32) as u32,
                0x3C => 0x0100 | u32::from(self.line),
                _ => 0,
            }
        }
        fn config_write(&mut self, reg: u16, value: u32, mask: u32) -> PciEffects {
            match reg {
                0x04 => self.command = merge(self.command.into(), value, mask & 0x7) as u16,
                0x10 => self.bar0 = merge(self.bar0, value, mask) & !0xFFF,
                0x18 => {
                    let low = merge(self.bar2 as u32, value, mask) & !0xFFFF;
                    self.bar2 = self.bar2 & !0xFFFF_FFFF | u64::from(low);
                }
                0x1C => {
                    let high = merge((self.bar2 >> 32) as u32, value, mask);
                    self.bar2 = self.bar2 & 0xFFFF_FFFF | u64::from(high) << 32;
                }
                0x3C => self.line = merge(self.line.into(), value, mask & 0xFF) as u8,
                _ => {}
            }
            PciEffects::NONE
        }
        fn bar(&self, index: u8) -> Option<Bar> {
            if self.command & command::MEMORY == 0 {
                return None;
            }
            match index {
                0 => Some(Bar {
                    address: self.bar0.into(),
                    size: 0x1000,
                }),
                2 => Some(Bar {
                    address: self.bar2,
                    size: 0x10000,
                }),
                _ => None,
            }
        }
        fn bar_read(&mut self, index: u8, offset: u64, _size: u8) -> (u64, PciEffects) {
            (u64::from(index) << 32 | offset ^ self.reg, PciEffects::NONE)
        }
        fn bar_write(&mut self, _index: u8, _offset: u64, _size: u8, value: u64) -> PciEffects {
            self.reg = value;
            let mut e = PciEffects::NONE;
            if value & 2 != 0 {
                e.push_msi(MsiMessage {
                    address: 0xFEE0_0000,
                    data: 0x41,
                });
            } else {
                e.intx = Some(value & 1 != 0);
            }
            e
        }
        fn snapshot(&self) -> Result<Vec<u8>, StateError> {
            let mut w = Writer::new(b"mock    ", 1);
            w.u16(self.command);
            w.u32(self.bar0);
            w.u64(self.bar2);
            w.u8(self.line);
            w.u64(self.reg);
            Ok(w.finish())
        }
        fn restore_snapshot(&mut self, data: &[u8]) -> Result<(), StateError> {
            let mut r = Reader::new(data, b"mock    ", 1)?;
            let command = r.u16()?;
            r.check(command <= 7, "command")?;
            let bar0 = r.u32()?;
            r.check(bar0 & 0xFFF == 0, "BAR 0")?;
            let bar2 = r.u64()?;
            r.check(bar2 & 0xFFFF == 0, "BAR 2")?;
            let line = r.u8()?;
            let reg = r.u64()?;
            r.end()?;
            *self = Mock {
                command,
                bar0,
                bar2,
                line,
                reg,
            };
            Ok(())
        }
        fn as_any_mut(&mut self) -> &mut dyn Any {
            self
        }
    }

    fn cfg_read(pci: &mut PciConfig, dev: u8, reg: u8, size: u8) -> u32 {
        let addr = CONFIG_ENABLE | u32::from(dev) << 11 | u32::from(reg & 0xFC);
        pci.port_access(0, 4, true, addr);
        pci.port_access(4 + u16::from(reg & 3), size, false, 0).0
    }

    fn cfg_write(pci: &mut PciConfig, dev: u8, reg: u8, size: u8, value: u32) -> Effects {
        let addr = CONFIG_ENABLE | u32::from(dev) << 11 | u32::from(reg & 0xFC);
        pci.port_access(0, 4, true, addr);
        pci.port_access(4 + u16::from(reg & 3), size, true, value).1
    }

    fn root() -> PciConfig {
        let mut pci = PciConfig::new();
        pci.add_function(PciAddress::new(0, 0, 0), Box::new(HostBridge::i440fx()))
            .unwrap();
        pci.add_function(PciAddress::new(0, 3, 0), Box::new(Mock::new()))
            .unwrap();
        pci
    }

    #[test]
    fn an_outside_request_delivers_its_interrupt_at_the_next_poll() {
        let mut pci = root();
        let msg = MsiMessage {
            address: 0xFEE0_0000,
            data: 0x52,
        };
        // Nothing at 00:05.0.
        assert_eq!(
            pci.with_function(PciAddress::new(0, 5, 0), |_| ((), PciEffects::NONE)),
            None
        );
        assert!(!pci.has_work());
        let got = pci.with_function(PciAddress::new(0, 3, 0), |f| {
            let mut e = PciEffects::NONE;
            e.push_msi(msg);
            (f.name(), e)
        });
        assert_eq!(got, Some("mock"));
        assert!(pci.has_work());
        let out = pci.poll_functions();
        assert_eq!(out.msis().collect::<Vec<_>>(), [msg]);
        assert!(!pci.has_work());
        assert_eq!(pci.poll_functions(), Effects::NONE);
        // No effects: nothing waits.
        pci.with_function(PciAddress::new(0, 3, 0), |_| ((), PciEffects::NONE));
        assert!(!pci.has_work());
    }

    #[test]
    fn enumeration_finds_the_bridge_and_the_device_and_nothing_else() {
        let mut pci = root();
        assert_eq!(cfg_read(&mut pci, 0, 0, 4), 0x1237_8086);
        assert_eq!(cfg_read(&mut pci, 0, 2, 2), 0x1237);
        assert_eq!(cfg_read(&mut pci, 0, 0x0B, 1), 0x06, "class: bridge");
        assert_eq!(cfg_read(&mut pci, 3, 0, 4), 0x1234_1AF4);
        for dev in [1u8, 2, 4, 31] {
            assert_eq!(cfg_read(&mut pci, dev, 0, 4), 0xFFFF_FFFF);
            assert_eq!(cfg_read(&mut pci, dev, 0, 2), 0xFFFF);
        }
        // Another function number or bus is absent too.
        pci.port_access(0, 4, true, CONFIG_ENABLE | 3 << 11 | 1 << 8);
        assert_eq!(pci.port_access(4, 4, false, 0).0, 0xFFFF_FFFF);
        pci.port_access(0, 4, true, CONFIG_ENABLE | 1 << 16 | 3 << 11);
        assert_eq!(pci.port_access(4, 4, false, 0).0, 0xFFFF_FFFF);
        // A word access that runs past 0xCFF is no configuration cycle.
        pci.port_access(0, 4, true, CONFIG_ENABLE);
        assert_eq!(pci.port_access(7, 2, false, 0).0, 0xFFFF);
        // Without the enable bit nothing answers.
        pci.port_access(0, 4, true, 0);
        assert_eq!(pci.port_access(4, 4, false, 0).0, 0xFFFF_FFFF);
    }

    #[test]
    fn functions_are_refused_twice_or_out_of_range() {
        let mut pci = root();
        assert_eq!(
            pci.add_function(PciAddress::new(0, 3, 0), Box::new(Mock::new())),
            Err(PciError::Occupied(PciAddress::new(0, 3, 0)))
        );
        assert_eq!(
            pci.add_function(PciAddress::new(0, 32, 0), Box::new(Mock::new())),
            Err(PciError::BadAddress(PciAddress::new(0, 32, 0)))
        );
        assert!(pci.function_mut(PciAddress::new(0, 3, 0)).is_some());
        assert!(pci.function_mut(PciAddress::new(0, 4, 0)).is_none());
    }

    #[test]
    fn byte_writes_reach_the_function_with_byte_enables() {
        let mut pci = root();
        cfg_write(&mut pci, 3, 0x3C, 1, 0xAB);
        assert_eq!(cfg_read(&mut pci, 3, 0x3C, 4), 0x01AB);
        assert_eq!(cfg_read(&mut pci, 3, 0x3D, 1), 0x01, "pin INTA#");
        // A byte write to 0x3D leaves the line byte alone.
        cfg_write(&mut pci, 3, 0x3D, 1, 0x55);
        assert_eq!(cfg_read(&mut pci, 3, 0x3C, 1), 0xAB);
    }

    #[test]
    fn firmware_style_bar_assignment_and_mmio_routing() {
        let mut pci = root();
        let mut hole = BarAllocator::new(0xE000_0000, 0xFEC0_0000);
        pci.assign_bars(&mut hole).unwrap();
        // Largest first: the 64 KiB BAR 2 at the start, then BAR 0.
        assert_eq!(cfg_read(&mut pci, 3, 0x18, 4), 0xE000_0004);
        assert_eq!(cfg_read(&mut pci, 3, 0x1C, 4), 0);
        assert_eq!(cfg_read(&mut pci, 3, 0x10, 4), 0xE001_0000);
        assert_eq!(cfg_read(&mut pci, 3, 0x04, 2) & 2, 2, "memory decoding on");
        // The interrupt line: device 3, INTA# -> PIRQD -> IRQ 11.
        assert_eq!(cfg_read(&mut pci, 3, 0x3C, 1), 11);
        assert_eq!(pci.intx_irq(PciAddress::new(0, 3, 0)), Some(11));
        assert_eq!(default_intx_irq(3, 1), 11);
        assert_eq!(default_intx_irq(1, 1), 11);
        assert_eq!(default_intx_irq(1, 2), 10);
        assert_eq!(pci.intx_irq(PciAddress::new(0, 0, 0)), None);

        assert_eq!(pci.mmio_read(0xE001_0010, 4).unwrap().0, 0x10);
        assert_eq!(pci.mmio_read(0xE000_0020, 4).unwrap().0 >> 32, 0);
        assert_eq!(pci.mmio_read(0xE000_0020, 8).unwrap().0 >> 32, 2);
        assert!(pci.mmio_read(0xE001_1000, 4).is_none());
        assert!(pci.mmio_write(0xDFFF_FFFF, 4, 0).is_none());
        // Moving the BAR moves the decode; turning memory decoding off removes it.
        cfg_write(&mut pci, 3, 0x10, 4, 0xF000_0000);
        assert!(pci.mmio_read(0xE001_0010, 4).is_none());
        assert_eq!(pci.mmio_read(0xF000_0010, 4).unwrap().0, 0x10);
        cfg_write(&mut pci, 3, 0x04, 2, 0);
        assert!(pci.mmio_read(0xF000_0010, 4).is_none());
        // Through the platform interface, an unclaimed hole address floats high.
        let a = Access {
            addr: 0xF000_0010,
            offset: 0x1000_0010,
            size: 4,
            now_ns: 0,
        };
        assert_eq!(BusDevice::read(&mut pci, &a).0, 0xFFFF_FFFF);
    }

    #[test]
    fn a_full_hole_is_reported() {
        let mut pci = root();
        let mut hole = BarAllocator::new(0xE000_0000, 0xE000_8000);
        assert_eq!(
            pci.assign_bars(&mut hole),
            Err(BarError::NoRoom {
                function: PciAddress::new(0, 3, 0),
                bar: 2,
                size: 0x10000
            })
        );
    }

    #[test]
    fn intx_levels_are_routed_and_shared_lines_are_ored() {
        let mut pci = root();
        pci.add_function(PciAddress::new(0, 7, 0), Box::new(Mock::new()))
            .unwrap();
        pci.assign_bars(&mut BarAllocator::new(0xE000_0000, 0xF000_0000))
            .unwrap();
        // Device 3 and device 7 both land on PIRQD (IRQ 11).
        assert_eq!(pci.intx_irq(PciAddress::new(0, 7, 0)), Some(11));
        let bar3 = u64::from(cfg_read(&mut pci, 3, 0x10, 4));
        let bar7 = u64::from(cfg_read(&mut pci, 7, 0x10, 4));
        let e = pci.mmio_write(bar3, 4, 1).unwrap();
        assert_eq!(e.lines[0], Some(IrqLine::Level(11, true)));
        assert_eq!(pci.mmio_write(bar7, 4, 1).unwrap(), Effects::NONE);
        assert_eq!(pci.mmio_write(bar3, 4, 0).unwrap(), Effects::NONE);
        let e = pci.mmio_write(bar7, 4, 0).unwrap();
        assert_eq!(e.lines[0], Some(IrqLine::Level(11, false)));
        // Another routing.
        pci.set_intx_routing([5, 9, 10, 11]);
        assert_eq!(pci.intx_irq(PciAddress::new(0, 3, 0)), Some(11));
        pci.set_intx_routing([5, 9, 10, 7]);
        let e = pci.mmio_write(bar3, 4, 1).unwrap();
        assert_eq!(e.lines[0], Some(IrqLine::Level(7, true)));
        // MSI messages pass through.
        let e = pci.mmio_write(bar3, 4, 2).unwrap();
        assert_eq!(
            e.msi[0],
            Some(MsiMessage {
                address: 0xFEE0_0000,
                data: 0x41
            })
        );
    }

    #[test]
    fn bus_device_keeps_the_reset_register_and_config_ports() {
        let mut pci = root();
        let port = |addr: u16, size: u8| Access {
            addr: addr.into(),
            offset: u64::from(addr - PCI_CONFIG_BASE),
            size,
            now_ns: 0,
        };
        BusDevice::write(&mut pci, &port(0xCF8, 4), 0x8000_0000);
        assert_eq!(BusDevice::read(&mut pci, &port(0xCFC, 4)).0, 0x1237_8086);
        assert!(BusDevice::write(&mut pci, &port(0xCF9, 1), 0x06).reset);
        assert!(!pci.take_reset_request(), "the effect took it");
        assert_eq!(BusDevice::read(&mut pci, &port(0xCF9, 1)).0, 0x06);
        assert_eq!(pci.next_deadline_ns(), None);
    }

    impl crate::state::testing::Snap for PciConfig {
        fn snap(&self) -> Vec<u8> {
            self.state().unwrap()
        }
        fn load(&mut self, data: &[u8]) -> Result<(), StateError> {
            self.restore(data)
        }
    }

    /// A random configuration-port or BAR access; returns the value and effects.
    fn random_op(pci: &mut PciConfig, rng: &mut crate::state::testing::Rng) -> (u64, Effects) {
        let dev = [0u8, 3, 7][rng.below(3) as usize];
        let reg = [0u8, 4, 0x10, 0x18, 0x1C, 0x3C][rng.below(6) as usize];
        match rng.below(6) {
            0 => (cfg_read(pci, dev, reg, 4).into(), Effects::NONE),
            1 => {
                // Keep BARs in the hole mostly, so that BAR accesses find them.
                let v = if reg == 0x1C {
                    0
                } else {
                    0xE000_0000 | rng.next() as u32 & 0x0FFF_FFFF
                };
                (0, cfg_write(pci, dev, reg, 4, v))
            }
            2 => {
                let addr = 0xE000_0000 | rng.below(0x4_0000);
                pci.mmio_read(addr, 4).unwrap_or((u64::MAX, Effects::NONE))
            }
            3 => {
                let addr = 0xE000_0000 | rng.below(0x4_0000);
                (
                    0,
                    pci.mmio_write(addr, 4, rng.below(4))
                        .unwrap_or(Effects::NONE),
                )
            }
            4 => {
                let (v, e) = pci.port_access(1, 1, rng.chance(2), rng.below(16) as u32);
                (u64::from(v) | u64::from(pci.take_reset_request()) << 32, e)
            }
            _ => (pci.port_access(0, 4, false, 0).0.into(), Effects::NONE),
        }
    }

    /// The bridge and two mocks with BARs placed, both mocks' INTx asserted (sharing
    /// PIRQD, which is high), the address register left on a function, CF9's hard-reset bit
    /// set and a reset request not yet taken.
    fn busy_root() -> PciConfig {
        let mut pci = root();
        pci.add_function(PciAddress::new(0, 7, 0), Box::new(Mock::new()))
            .unwrap();
        pci.assign_bars(&mut BarAllocator::new(0xE000_0000, 0xF000_0000))
            .unwrap();
        let bar3 = u64::from(cfg_read(&mut pci, 3, 0x10, 4));
        let bar7 = u64::from(cfg_read(&mut pci, 7, 0x10, 4));
        pci.mmio_write(bar3, 4, 1).unwrap();
        pci.mmio_write(bar7, 4, 1).unwrap();
        pci.port_access(1, 1, true, 0x06);
        cfg_read(&mut pci, 7, 0x3C, 4);
        pci
    }

    #[test]
    fn snapshot_restores_identical_behaviour() {
        let mut a = busy_root();
        let snap = a.state().unwrap();
        assert_eq!(&snap[..8], b"pci-root");
        let mut b = root();
        b.add_function(PciAddress::new(0, 7, 0), Box::new(Mock::new()))
            .unwrap();
        b.restore(&snap).unwrap();
        assert_eq!(b.state().unwrap(), snap);
        assert!(b.take_reset_request());
        assert!(a.take_reset_request());
        // The BARs came back with the functions, and the INTx bookkeeping: the
        // line drops only when both functions drop theirs.
        let bar3 = u64::from(cfg_read(&mut b, 3, 0x10, 4));
        let bar7 = u64::from(cfg_read(&mut b, 7, 0x10, 4));
        assert_eq!(cfg_read(&mut a, 3, 0x10, 4), bar3 as u32);
        for pci in [&mut a, &mut b] {
            assert_eq!(pci.mmio_write(bar3, 4, 0).unwrap(), Effects::NONE);
            let e = pci.mmio_write(bar7, 4, 0).unwrap();
            assert_eq!(e.lines[0], Some(IrqLine::Level(11, false)));
        }
        crate::state::testing::lockstep(&mut a, &mut b, 16, random_op);
        assert_eq!(a.state(), b.state());
    }

    #[test]
    fn snapshot_needs_the_same_functions_and_restores_all_or_none() {
        let snap = busy_root().state().unwrap();
        // Fewer functions, another address, another routing: another VM.
        let what = |mut pci: PciConfig| match pci.restore(&snap) {
            Err(StateError::Mismatch { what, .. }) => what,
            r => panic!("{r:?}"),
        };
        assert_eq!(what(root()), "PCI function count");
        let mut moved = root();
        moved
            .add_function(PciAddress::new(0, 6, 0), Box::new(Mock::new()))
            .unwrap();
        assert!(what(moved).starts_with("PCI function address"));
        let mut rerouted = root();
        rerouted.set_intx_routing([5, 9, 10, 11]);
        assert!(what(rerouted).starts_with("INTx routing"));

        // A function without snapshot support is named.
        struct Opaque;
        impl PciFunction for Opaque {
            fn name(&self) -> &'static str {
                "opaque"
            }
            fn config_read(&mut self, _reg: u16) -> u32 {
                0
            }
            fn config_write(&mut self, _reg: u16, _value: u32, _mask: u32) -> PciEffects {
                PciEffects::NONE
            }
            fn as_any_mut(&mut self) -> &mut dyn Any {
                self
            }
        }
        let mut opaque = root();
        opaque
            .add_function(PciAddress::new(0, 9, 0), Box::new(Opaque))
            .unwrap();
        let unsupported = Err(StateError::Unsupported { device: "opaque" });
        assert_eq!(opaque.state(), unsupported);
        assert_eq!(opaque.snapshot(), unsupported);

        // The bridge's part is fine, the second mock's is not: the bridge (and the
        // first mock) keep the state they had.
        let mut pci = root();
        pci.add_function(PciAddress::new(0, 7, 0), Box::new(Mock::new()))
            .unwrap();
        let before = pci.state().unwrap();
        let mut bad = snap.clone();
        let mock_tag = bad.windows(8).rposition(|w| w == b"mock    ").unwrap();
        bad[mock_tag] = b'n';
        assert_eq!(
            pci.restore(&bad),
            Err(StateError::WrongDevice {
                expected: *b"mock    "
            })
        );
        assert_eq!(pci.state().unwrap(), before);
        assert_eq!(cfg_read(&mut pci, 3, 0x10, 4), 0, "first mock rolled back");
    }

    #[test]
    fn snapshot_refusals_and_corruption() {
        let snap = busy_root().state().unwrap();
        let mut pci = root();
        pci.add_function(PciAddress::new(0, 7, 0), Box::new(Mock::new()))
            .unwrap();
        crate::state::testing::check_refusals(&mut pci, &snap, |d| {
            let mut rng = crate::state::testing::Rng::new(17);
            for _ in 0..40 {
                random_op(d, &mut rng);
            }
        });
    }
}
