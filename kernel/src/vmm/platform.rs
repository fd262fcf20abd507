//! One VM's chipset: the devices every vCPU of the VM shares, on a port-I/O bus and an
//! MMIO bus, and the two interrupt controllers their lines go to (the 8259A pair and
//! the IOAPIC). Devices answer the one [`BusDevice`] interface and return
//! [`Effects`]; the platform applies the line changes and hands the rest (IOAPIC
//! messages for the local APICs, reset, debug exit) to the VM. The local APICs are
//! per vCPU and live with the VM (`vm.rs`), not here.
//!
//! Adding a device is one registration ([`Platform::add_port_device`],
//! [`Platform::add_mmio_device`]); a range that overlaps another is an error.
//!
//! PCI: the root (`devices::PciConfig`) answers configuration mechanism #1 on the
//! port bus, with a 440FX host bridge at 00:00.0 in every VM. A VM with PCI
//! functions ([`PlatformSpec::pci`], e.g. its virtio-blk disk) gets their BARs
//! placed in the PCI hole ([`pci_hole`]: above its RAM, below the IOAPIC) as
//! firmware would, and the same
//! root registered on the MMIO bus over the hole, so BAR accesses (nested page
//! faults, decoded by `mmio::emulate`) reach it wherever the guest moves the BARs.
//! INTx changes come back as level lines (PIC and IOAPIC), MSI-X messages are
//! decoded (`devices::msi_delivery`) and delivered like IOAPIC messages.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use devices::{
    all_ones, isa_irq_pin, msi_delivery, Access, BarAllocator, Bus, BusDevice, Cmos, DebugExit,
    Delivery, Effects, FwCfg, HostBridge, IoApic, IrqLine, MapError, PciAddress, PciConfig,
    PciFunction, Pic8259, RtcCmos, SerialPort, SystemControlA, SystemTimer, Uart16550, CMOS_BASE,
    CMOS_PORT_COUNT, COM1_BASE, COM1_IRQ, DEBUG_EXIT_BASE, DEBUG_EXIT_PORT_COUNT, FW_CFG_BASE,
    FW_CFG_PORT_COUNT, I8042, IOAPIC_BASE, IOAPIC_MMIO_SIZE, PCI_CONFIG_BASE,
    PCI_CONFIG_PORT_COUNT, PIT_BASE, PIT_PORT_COUNT, PORT_61, PORT_COUNT, SYSTEM_CONTROL_A_PORT,
};

use super::console::Relay;

/// What a bus address leads to: one of the interrupt controllers the platform owns,
/// or a registered device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Pic,
    IoApic,
    Device(usize),
}

/// What the VM must do after an access or a poll, besides returning the data.
#[derive(Debug, Default)]
pub struct Outcome {
    /// IOAPIC messages for the local APICs.
    pub deliveries: Vec<Delivery>,
    pub reset: bool,
    pub exit: Option<u32>,
}

/// How the VM's machine looks (fw_cfg and CMOS report it).
pub struct PlatformSpec {
    pub ram_bytes: u64,
    pub cpus: u16,
    /// Unix time (ns) at guest time 0, for the RTC.
    pub epoch_unix_ns: u64,
    pub console: Relay,
    /// PCI functions on bus 0 besides the host bridge (none: no PCI devices at all).
    pub pci: Vec<(PciAddress, Box<dyn PciFunction>)>,
    /// Set from outside when a device has news (a frame for the VM's NIC, see
    /// `net`): the next poll then polls every device.
    pub wake: Option<Arc<AtomicBool>>,
}

/// The lowest start of the PCI hole: 3.5 GiB, where PC chipsets put it.
pub const PCI_HOLE_BASE: u64 = 0xE000_0000;

/// Where BARs go for a VM with `ram_bytes` of RAM (one range from 0): from
/// [`PCI_HOLE_BASE`], or from the first MiB above RAM that reaches past it, up to the
/// IOAPIC (the local APICs lie above that). Empty when RAM leaves no room.
pub fn pci_hole(ram_bytes: u64) -> core::ops::Range<u64> {
    let start = PCI_HOLE_BASE.max(ram_bytes.next_multiple_of(1 << 20));
    start..IOAPIC_BASE.max(start)
}

pub struct Platform {
    devices: Vec<Box<dyn BusDevice>>,
    ports: Bus<Target, 32>,
    mmio: Bus<Target, 8>,
    pub pic: Pic8259,
    pub ioapic: IoApic,
    /// The console UART's index in `devices`.
    console: usize,
    /// The system timer's (8254) index in `devices`.
    timer: usize,
    /// Accesses to ports that nothing decodes.
    pub unknown_port_accesses: u64,
    /// Accesses to guest-physical space with neither RAM nor a device behind it
    /// (answered as a PC's bus does: all ones, writes dropped), and the first such
    /// address.
    pub unbacked_accesses: u64,
    pub first_unbacked: u64,
    /// The earliest device deadline (a timer's next expiry), recomputed after every
    /// access and poll: polling before it finds nothing new.
    deadline: Option<u64>,
    /// Something changed a device from outside the guest (console input): poll.
    poll_now: bool,
    /// The PCI root's index in `devices`.
    pci_root: usize,
    /// The same, set by other VMs' NICs without this VM's lock ([`PlatformSpec::wake`]).
    wake: Option<Arc<AtomicBool>>,
}

impl Platform {
    /// The PC every VM gets: COM1, the 8259 pair, the 8254 (with port 0x61), CMOS/RTC,
    /// the i8042 and port 0x92, fw_cfg, the debug-exit port, the IOAPIC, and PCI
    /// configuration space: the host bridge, and `spec.pci` with their BARs in the
    /// PCI hole.
    pub fn pc(spec: PlatformSpec) -> Result<Self, String> {
        let fit = |e: MapError| format!("the platform's devices do not fit its buses: {e}");
        let mut p = Platform {
            devices: Vec::new(),
            ports: Bus::new(0x1_0000),
            mmio: Bus::new(0),
            pic: Pic8259::new(),
            ioapic: IoApic::new(0),
            console: 0,
            timer: 0,
            unknown_port_accesses: 0,
            unbacked_accesses: 0,
            first_unbacked: 0,
            deadline: None,
            poll_now: true,
            pci_root: 0,
            wake: None,
        };
        p.ports.register(0x20, 2, Target::Pic).map_err(fit)?;
        p.ports.register(0xA0, 2, Target::Pic).map_err(fit)?;
        p.ports.register(0x4D0, 2, Target::Pic).map_err(fit)?;
        p.mmio
            .register(IOAPIC_BASE, IOAPIC_MMIO_SIZE, Target::IoApic)
            .map_err(fit)?;
        let PlatformSpec {
            ram_bytes,
            cpus,
            epoch_unix_ns,
            console,
            pci,
            wake,
        } = spec;
        p.wake = wake;
        p.add_isa_devices(ram_bytes, cpus, epoch_unix_ns, console)
            .map_err(fit)?;
        let has_pci = !pci.is_empty();
        let hole = pci_hole(ram_bytes);
        let pci = Self::pci_root(pci, hole.clone())?;
        let root = p
            .add_port_device(&[(PCI_CONFIG_BASE, PCI_CONFIG_PORT_COUNT)], Box::new(pci))
            .map_err(fit)?;
        p.pci_root = root;
        if has_pci {
            // The same root, for BAR accesses anywhere in the hole.
            p.mmio
                .register(hole.start, hole.end - hole.start, Target::Device(root))
                .map_err(fit)?;
        }
        Ok(p)
    }

    /// The PCI root: the host bridge, as on every PC (an OS that scans finds bus 0
    /// and no "no PCI" alarm), and `functions`, BARs placed in `hole` and interrupt
    /// lines written, as firmware leaves them (the tiny guests and Linux boot
    /// without a BIOS).
    fn pci_root(
        functions: Vec<(PciAddress, Box<dyn PciFunction>)>,
        hole: core::ops::Range<u64>,
    ) -> Result<PciConfig, String> {
        let mut pci = PciConfig::new();
        let bridge = PciAddress::new(0, 0, 0);
        pci.add_function(bridge, Box::new(HostBridge::i440fx()))
            .map_err(|e| format!("PCI host bridge: {e:?}"))?;
        if functions.is_empty() {
            return Ok(pci);
        }
        for (address, function) in functions {
            pci.add_function(address, function)
                .map_err(|e| format!("PCI function {address:?}: {e:?}"))?;
        }
        pci.assign_bars(&mut BarAllocator::new(hole.start, hole.end))
            .map_err(|e| {
                format!(
                    "no room for the PCI BARs in the hole {:#x}-{:#x} above the VM's RAM: {e:?}",
                    hole.start, hole.end
                )
            })?;
        Ok(pci)
    }

    /// The ISA side of the PC: COM1, the PIT, CMOS/RTC, the i8042, port 0x92, fw_cfg
    /// and the debug-exit port.
    fn add_isa_devices(
        &mut self,
        ram_bytes: u64,
        cpus: u16,
        epoch_unix_ns: u64,
        console: Relay,
    ) -> Result<(), MapError> {
        let p = self;
        p.console = p.add_port_device(
            &[(COM1_BASE, PORT_COUNT)],
            Box::new(SerialPort {
                uart: Uart16550::new(console),
                irq: COM1_IRQ,
            }),
        )?;
        p.timer = p.add_port_device(
            &[(PIT_BASE, PIT_PORT_COUNT), (PORT_61, 1)],
            Box::new(SystemTimer::new()),
        )?;
        // The VM's RAM is one range from 0: all of it counts as below 4 GiB.
        p.add_port_device(
            &[(CMOS_BASE, CMOS_PORT_COUNT)],
            Box::new(RtcCmos {
                cmos: Cmos::new(ram_bytes, 0),
                epoch_unix_ns,
            }),
        )?;
        p.add_port_device(&[(0x60, 1), (0x64, 1)], Box::new(I8042::new()))?;
        p.add_port_device(
            &[(SYSTEM_CONTROL_A_PORT, 1)],
            Box::new(SystemControlA::new()),
        )?;
        p.add_port_device(
            &[(FW_CFG_BASE, FW_CFG_PORT_COUNT)],
            Box::new(FwCfg::<'static, 1>::new(ram_bytes, cpus)),
        )?;
        p.add_port_device(
            &[(DEBUG_EXIT_BASE, DEBUG_EXIT_PORT_COUNT)],
            Box::new(DebugExit::new()),
        )?;
        Ok(())
    }

    /// Registers `device` on the port bus at each `(base, len)` range; returns its
    /// index. Nothing is registered if any range is refused.
    pub fn add_port_device(
        &mut self,
        ranges: &[(u16, u16)],
        device: Box<dyn BusDevice>,
    ) -> Result<usize, MapError> {
        let index = self.devices.len();
        let saved = self.ports.clone();
        for &(base, len) in ranges {
            if let Err(e) = self
                .ports
                .register(base.into(), len.into(), Target::Device(index))
            {
                self.ports = saved;
                return Err(e);
            }
        }
        self.devices.push(device);
        Ok(index)
    }

    /// Registers `device` on the MMIO bus at `[base, base + len)`; returns its index.
    pub fn add_mmio_device(
        &mut self,
        base: u64,
        len: u64,
        device: Box<dyn BusDevice>,
    ) -> Result<usize, MapError> {
        let index = self.devices.len();
        self.mmio.register(base, len, Target::Device(index))?;
        self.devices.push(device);
        Ok(index)
    }

    /// The names of the bus devices, in registration order (a snapshot's shape).
    pub fn device_names(&self) -> Vec<&'static str> {
        self.devices.iter().map(|d| d.name()).collect()
    }

    /// Every bus device's state for a snapshot (see `devices::PlatformState`), in
    /// registration order.
    pub fn device_states(&self) -> Result<Vec<Vec<u8>>, devices::StateError> {
        self.devices.iter().map(|d| d.snapshot()).collect()
    }

    /// Restores what [`Platform::device_states`] gave, device by device (each one
    /// all or nothing; the caller restores into a fresh platform and discards it on
    /// an error). Interrupt lines and deadlines are recomputed at the next poll.
    pub fn restore_device_states(&mut self, states: &[Vec<u8>]) -> Result<(), devices::StateError> {
        if states.len() != self.devices.len() {
            return Err(devices::StateError::Mismatch {
                device: devices::PlatformState::TAG,
                what: "bus device count",
                snapshot: states.len() as u64,
                here: self.devices.len() as u64,
            });
        }
        for (d, s) in self.devices.iter_mut().zip(states) {
            d.restore_snapshot(s)?;
        }
        self.poll_now = true;
        self.deadline = None;
        Ok(())
    }

    /// The console UART. Its interrupt line is brought up to date at the next poll
    /// (console input changes it from outside the guest).
    pub fn console(&mut self) -> &mut SerialPort<Relay> {
        self.poll_now = true;
        self.devices[self.console]
            .as_any_mut()
            .downcast_mut()
            .expect("the console device is the UART registered in `pc`")
    }

    /// Runs `f` on the PCI function at `address` from outside the guest (the
    /// operator's request to a device); its interrupt goes out at the VM's next
    /// poll. `None` if the VM has no function there.
    pub fn with_pci_function<R>(
        &mut self,
        address: PciAddress,
        f: impl FnOnce(&mut dyn PciFunction) -> (R, devices::PciEffects),
    ) -> Option<R> {
        let root = self.devices[self.pci_root]
            .as_any_mut()
            .downcast_mut::<PciConfig>()?;
        let r = root.with_function(address, f);
        self.poll_now = true;
        r
    }

    /// Applies the line changes of `e` to the PIC and IOAPIC (ISA IRQ n is PIC IRQ n
    /// and IOAPIC pin `isa_irq_pin(n)`) and collects the rest into `out`.
    fn apply(&mut self, e: Effects, out: &mut Outcome) {
        for line in e.lines() {
            let delivery = match line {
                IrqLine::Level(irq, high) => {
                    self.pic.set_irq(irq, high);
                    self.ioapic.set_irq(isa_irq_pin(irq), high)
                }
                IrqLine::Pulse(irq) => {
                    self.pic.pulse_irq(irq);
                    self.ioapic.pulse_irq(isa_irq_pin(irq))
                }
            };
            out.deliveries.extend(delivery);
        }
        // MSI-X: decoded as the local APICs receive it; a message outside the
        // interrupt window would be a memory write, which is dropped.
        for msg in e.msis() {
            out.deliveries.extend(msi_delivery(msg.address, msg.data));
        }
        out.reset |= e.reset;
        out.exit = out.exit.or(e.exit);
    }

    /// A port access; returns the value read (all ones for a port nothing decodes).
    pub fn port_io(
        &mut self,
        port: u16,
        size: u8,
        write: bool,
        value: u32,
        now_ns: u64,
        out: &mut Outcome,
    ) -> u32 {
        let Some((target, offset)) = self.ports.lookup(port.into()) else {
            // Nothing there: reads float high, writes vanish, as on a PC bus.
            self.unknown_port_accesses += 1;
            return all_ones(size);
        };
        match target {
            Target::Pic => self.pic.port_io(port, size, write, value),
            Target::IoApic => all_ones(size),
            Target::Device(i) => {
                let access = Access {
                    addr: port.into(),
                    offset,
                    size,
                    now_ns,
                };
                let (v, e) = if write {
                    (0, self.devices[i].write(&access, value.into()))
                } else {
                    let (v, e) = self.devices[i].read(&access);
                    (v as u32 & all_ones(size), e)
                };
                self.apply(e, out);
                // The access may have (re)programmed a timer: poll before the next
                // entry, which also brings `deadline` up to date.
                self.poll_now = true;
                v
            }
        }
    }

    /// An access to the MMIO bus; `None` when nothing is registered at `gpa`.
    pub fn mmio(
        &mut self,
        gpa: u64,
        size: u8,
        value: Option<u64>,
        now_ns: u64,
        out: &mut Outcome,
    ) -> Option<u64> {
        let (target, offset) = self.mmio.lookup(gpa)?;
        Some(match target {
            Target::IoApic => match value {
                Some(v) => {
                    out.deliveries
                        .extend(self.ioapic.mmio_write(offset, size, v as u32));
                    0
                }
                None => self.ioapic.mmio_read(offset, size).into(),
            },
            Target::Pic => u64::MAX,
            Target::Device(i) => {
                let access = Access {
                    addr: gpa,
                    offset,
                    size,
                    now_ns,
                };
                let (v, e) = match value {
                    Some(v) => (0, self.devices[i].write(&access, v)),
                    None => self.devices[i].read(&access),
                };
                self.apply(e, out);
                self.poll_now = true;
                v
            }
        })
    }

    /// Whether `gpa` is on the MMIO bus.
    pub fn decodes_mmio(&self, gpa: u64) -> bool {
        self.mmio.lookup(gpa).is_some()
    }

    /// Brings every device's lines up to `now_ns` (timers, console input), with
    /// `lapics` the VM's local APICs (for the system timer's catch-up, see
    /// [`Self::note_timer_tick`]). Cheap when nothing can have changed: before the
    /// earliest deadline, with no input; then the timer is not even asked, since
    /// only its poll reads what the note says (this runs before every VM entry).
    pub fn poll(&mut self, now_ns: u64, lapics: &[devices::LocalApic], out: &mut Outcome) {
        let woken = self
            .wake
            .as_ref()
            .is_some_and(|w| w.swap(false, Ordering::AcqRel));
        if !self.poll_now && !woken && self.deadline.is_none_or(|d| now_ns < d) {
            return;
        }
        self.note_timer_tick(lapics);
        for i in 0..self.devices.len() {
            let e = self.devices[i].poll(now_ns);
            self.apply(e, out);
        }
        self.poll_now = false;
        self.deadline = self
            .devices
            .iter()
            .filter_map(|d| d.next_deadline_ns())
            .min();
    }

    /// Whether [`Self::poll`] at `now_ns` would poll the devices (and so might raise
    /// an interrupt): an access since the last poll, a wake from another processor,
    /// or a device deadline reached. Reads only: the wake flag stays for the poll.
    pub fn poll_due(&self, now_ns: u64) -> bool {
        self.poll_now
            || self
                .wake
                .as_ref()
                .is_some_and(|w| w.load(Ordering::Acquire))
            || self.deadline.is_some_and(|d| now_ns >= d)
    }

    /// The earliest time a device wants to be polled (as of the last poll; an
    /// access since then forces the next poll anyway).
    pub fn next_deadline_ns(&self) -> Option<u64> {
        if self
            .wake
            .as_ref()
            .is_some_and(|w| w.load(Ordering::Acquire))
        {
            return Some(0);
        }
        if self.poll_now {
            self.devices
                .iter()
                .filter_map(|d| d.next_deadline_ns())
                .min()
        } else {
            self.deadline
        }
    }

    /// Tells the system timer whether IRQ 0's last tick still waits to be taken, on
    /// a path that would deliver it: the PIC's IRR with IRQ 0 unmasked while the BSP
    /// takes PIC interrupts (LINT0 ExtINT), or a local APIC's IRR holding the vector
    /// of the IOAPIC pin IRQ 0 is wired to, unmasked. Called before every poll of
    /// the devices, so owed ticks are pulsed one at a time as they are taken (see
    /// `SystemTimer`, which reads the note only in its poll).
    fn note_timer_tick(&mut self, lapics: &[devices::LocalApic]) {
        let pic = self.pic.irr() & 1 != 0
            && self.pic.imr() & 1 == 0
            && lapics.first().is_some_and(|l| l.accepts_pic_interrupts());
        let apic = self
            .ioapic
            .entry(isa_irq_pin(devices::PIT_IRQ))
            .filter(|e| e & devices::ioapic::entry::MASKED == 0)
            .is_some_and(|e| lapics.iter().any(|l| l.irr_has(e as u8)));
        if let Some(timer) = self.devices[self.timer]
            .as_any_mut()
            .downcast_mut::<SystemTimer>()
        {
            timer.set_tick_waiting(pic || apic);
        }
    }

    /// A level-triggered vector's EOI at a local APIC reaches the IOAPIC, which
    /// delivers again if the line is still asserted (SDM Vol. 3A 11.8.5).
    pub fn eoi(&mut self, vector: u8, out: &mut Outcome) {
        out.deliveries.extend(self.ioapic.eoi(vector));
    }
}
