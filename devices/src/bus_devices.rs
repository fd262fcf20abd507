//! [`BusDevice`] for the legacy PC devices of this crate: how each one's registers,
//! interrupt lines and side effects look through the platform's one device interface.
//! The devices themselves stay plain state machines with their own narrower APIs;
//! this file only adapts them.

use alloc::vec::Vec;
use core::any::Any;

use crate::bus::{all_ones, PortDevice};
use crate::device::{Access, BusDevice, Effects, IrqLine};
use crate::state::{Reader, StateError, Tag, Writer};
use crate::{
    Cmos, DebugExit, FwCfg, Pit8254, SerialSink, SystemControlA, Uart16550, AUX_IRQ, I8042,
    KBD_IRQ, PIT_IRQ,
};

/// Ports are 16 bits; a port bus never hands out a larger address.
fn port(access: &Access) -> u16 {
    access.addr as u16
}

/// A UART on `irq`: its line follows its interrupt output after every access and
/// after console input ([`BusDevice::poll`]).
pub struct SerialPort<S: SerialSink> {
    pub uart: Uart16550<S>,
    pub irq: u8,
}

impl<S: SerialSink + Send + 'static> BusDevice for SerialPort<S> {
    fn name(&self) -> &'static str {
        "uart16550"
    }
    fn read(&mut self, a: &Access) -> (u64, Effects) {
        let v = self.uart.access(a.offset as u16, a.size, false, 0);
        (v.into(), self.poll(a.now_ns))
    }
    fn write(&mut self, a: &Access, value: u64) -> Effects {
        self.uart
            .access(a.offset as u16, a.size, true, value as u32);
        self.poll(a.now_ns)
    }
    fn poll(&mut self, _now_ns: u64) -> Effects {
        Effects::level(self.irq, self.uart.interrupt_pending())
    }
    /// The UART's state; the IRQ is the platform's wiring.
    fn snapshot(&self) -> Result<Vec<u8>, StateError> {
        Ok(self.uart.state())
    }
    fn restore_snapshot(&mut self, data: &[u8]) -> Result<(), StateError> {
        self.uart.restore(data)
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// The 8254 on ports 0x40-0x43 and 0x61, with lost-tick catch-up: IRQ 0 pulses once
/// per elapsed period of channel 0, and periods that elapsed while the previous tick
/// still waited in the interrupt controllers (or while the VM did not run at all: a
/// descheduled vCPU, an over-committed or busy host) are owed and pulsed one at a
/// time as soon as the previous one has been taken, up to [`Self::MAX_OWED`].
///
/// Why: a real PC never misses a tick, and guests count them. Linux checks at boot
/// that jiffies advance by more than 4 during a ~60 ms TSC delay
/// (`timer_irq_works`) and panics ("IO-APIC + timer doesn't work!") otherwise; with
/// ticks merged while its vCPU waits for a processor, that check fails under load.
/// KVM's PIT re-injects lost ticks the same way by default.
///
/// The platform says whether the last tick is still waiting
/// ([`SystemTimer::set_tick_waiting`], from the PIC's IRR and the local APICs' IRR
/// for the IOAPIC pin's vector), before every poll.
pub struct SystemTimer {
    pub pit: Pit8254,
    owed: u32,
    waiting: bool,
    last_poll_ns: u64,
    last_pulse_ns: u64,
}

impl SystemTimer {
    /// Ticks owed at most: a guest stopped for a long time gets at most this many
    /// in a row (10 s of a 10 Hz timer, 100 ms at Linux's 1000 Hz), not a storm.
    pub const MAX_OWED: u32 = 100;
    /// A tick still waiting this long after its pulse is taken to be stuck (a path
    /// the platform thinks live, but that nothing drains): pulse anyway, merging, as
    /// without catch-up, rather than stop the timer.
    pub const STUCK_NS: u64 = 50_000_000;

    pub fn new() -> Self {
        Self {
            pit: Pit8254::new(),
            owed: 0,
            waiting: false,
            last_poll_ns: 0,
            last_pulse_ns: 0,
        }
    }

    /// Whether IRQ 0's last tick is still pending in an interrupt controller that
    /// would deliver it (a masked path does not count: its ticks are dropped).
    pub fn set_tick_waiting(&mut self, waiting: bool) {
        self.waiting = waiting;
    }

    /// Ticks owed now.
    pub fn owed(&self) -> u32 {
        self.owed
    }

    /// The tag of [`Self::state`] (see [`crate::state`]).
    pub const STATE_TAG: Tag = *b"systimer";
    /// Bumped whenever the field list changes.
    pub const STATE_VERSION: u16 = 1;

    /// The PIT's state ([`Pit8254::state`]) and the catch-up bookkeeping: ticks
    /// owed, whether the last one still waits, and the guest times of the last
    /// poll and pulse (absolute `now_ns`, like the PIT's).
    pub fn state(&self) -> Vec<u8> {
        let mut w = Writer::new(&Self::STATE_TAG, Self::STATE_VERSION);
        w.bytes(&self.pit.state());
        w.u32(self.owed);
        w.bool(self.waiting);
        w.u64(self.last_poll_ns);
        w.u64(self.last_pulse_ns);
        w.finish()
    }

    /// Takes back what [`Self::state`] returned; nothing changes on an error.
    pub fn restore(&mut self, data: &[u8]) -> Result<(), StateError> {
        let mut r = Reader::new(data, &Self::STATE_TAG, Self::STATE_VERSION)?;
        let pit = r.bytes()?;
        let owed = r.u32()?;
        r.check(owed <= Self::MAX_OWED, "ticks owed (more than MAX_OWED)")?;
        let waiting = r.bool()?;
        let last_poll_ns = r.u64()?;
        let last_pulse_ns = r.u64()?;
        r.end()?;
        self.pit.restore(pit)?;
        self.owed = owed;
        self.waiting = waiting;
        self.last_poll_ns = last_poll_ns;
        self.last_pulse_ns = last_pulse_ns;
        Ok(())
    }
}

impl Default for SystemTimer {
    fn default() -> Self {
        Self::new()
    }
}

impl BusDevice for SystemTimer {
    fn name(&self) -> &'static str {
        "pit8254"
    }
    fn read(&mut self, a: &Access) -> (u64, Effects) {
        let v = self.pit.port_io(port(a), a.size, false, 0, a.now_ns);
        (v.into(), Effects::NONE)
    }
    fn write(&mut self, a: &Access, value: u64) -> Effects {
        self.pit
            .port_io(port(a), a.size, true, value as u32, a.now_ns);
        Effects::NONE
    }
    fn poll(&mut self, now_ns: u64) -> Effects {
        self.last_poll_ns = now_ns;
        let new = self.pit.irq0_pending(now_ns);
        self.owed = self.owed.saturating_add(new).min(Self::MAX_OWED);
        let stuck = now_ns.saturating_sub(self.last_pulse_ns) >= Self::STUCK_NS;
        if self.owed == 0 || (self.waiting && !stuck) {
            return Effects::NONE;
        }
        self.owed -= 1;
        self.last_pulse_ns = now_ns;
        // Until the platform says otherwise at the next poll.
        self.waiting = true;
        Effects::NONE.with_line(IrqLine::Pulse(PIT_IRQ))
    }
    fn next_deadline_ns(&self) -> Option<u64> {
        if self.owed > 0 {
            // Due now: the next entry polls again and pulses once the last tick
            // has been taken.
            return Some(self.last_poll_ns);
        }
        self.pit.next_irq0_deadline_ns()
    }
    fn snapshot(&self) -> Result<Vec<u8>, StateError> {
        Ok(self.state())
    }
    fn restore_snapshot(&mut self, data: &[u8]) -> Result<(), StateError> {
        self.restore(data)
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// The CMOS/RTC with the wall clock it shows: guest time `now_ns` is
/// `epoch_unix_ns + now_ns` in Unix time.
pub struct RtcCmos {
    pub cmos: Cmos,
    pub epoch_unix_ns: u64,
}

impl BusDevice for RtcCmos {
    fn name(&self) -> &'static str {
        "cmos"
    }
    fn read(&mut self, a: &Access) -> (u64, Effects) {
        let t = self.epoch_unix_ns + a.now_ns;
        (
            self.cmos.port_io(port(a), a.size, false, 0, t).into(),
            Effects::NONE,
        )
    }
    fn write(&mut self, a: &Access, value: u64) -> Effects {
        let t = self.epoch_unix_ns + a.now_ns;
        self.cmos.port_io(port(a), a.size, true, value as u32, t);
        Effects::NONE
    }
    /// The CMOS's state. `epoch_unix_ns` is the restoring machine's: the guest's
    /// clock keeps its offset from the wall clock (see [`Cmos::state`]).
    fn snapshot(&self) -> Result<Vec<u8>, StateError> {
        Ok(self.cmos.state())
    }
    fn restore_snapshot(&mut self, data: &[u8]) -> Result<(), StateError> {
        self.cmos.restore(data)
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// The i8042 on 0x60/0x64: IRQ 1 and IRQ 12 follow its output buffer; a pulse of
/// the CPU reset line is a reset request.
impl BusDevice for I8042 {
    fn name(&self) -> &'static str {
        "i8042"
    }
    fn read(&mut self, a: &Access) -> (u64, Effects) {
        let v = self.port_io(port(a), a.size, false, 0);
        (v.into(), self.poll(a.now_ns))
    }
    fn write(&mut self, a: &Access, value: u64) -> Effects {
        self.port_io(port(a), a.size, true, value as u32);
        let mut e = self.poll(a.now_ns);
        e.reset = self.take_reset_request();
        e
    }
    fn poll(&mut self, _now_ns: u64) -> Effects {
        Effects::level(KBD_IRQ, self.kbd_irq_level())
            .with_line(IrqLine::Level(AUX_IRQ, self.aux_irq_level()))
    }
    fn snapshot(&self) -> Result<Vec<u8>, StateError> {
        Ok(self.state())
    }
    fn restore_snapshot(&mut self, data: &[u8]) -> Result<(), StateError> {
        self.restore(data)
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Implements [`BusDevice`] for a [`PortDevice`] addressed by offset, with the
/// effects `after` computes after a write.
macro_rules! port_device {
    ($ty:ty, $name:literal, |$dev:ident| $after:expr) => {
        impl BusDevice for $ty {
            fn name(&self) -> &'static str {
                $name
            }
            fn read(&mut self, a: &Access) -> (u64, Effects) {
                (
                    PortDevice::read(self, a.offset as u16, a.size).into(),
                    Effects::NONE,
                )
            }
            fn write(&mut self, a: &Access, value: u64) -> Effects {
                PortDevice::write(self, a.offset as u16, a.size, value as u32);
                let $dev = self;
                $after
            }
            fn snapshot(&self) -> Result<Vec<u8>, StateError> {
                Ok(self.state())
            }
            fn restore_snapshot(&mut self, data: &[u8]) -> Result<(), StateError> {
                self.restore(data)
            }
            fn as_any_mut(&mut self) -> &mut dyn Any {
                self
            }
        }
    };
}

port_device!(SystemControlA, "port92", |d| Effects {
    reset: d.take_reset_request(),
    ..Effects::NONE
});
port_device!(DebugExit, "debug-exit", |d| Effects {
    exit: d.take_exit(),
    ..Effects::NONE
});
port_device!(FwCfg<'static, 1>, "fw_cfg", |_d| Effects::NONE);

/// A range nobody decodes, for completeness of the interface: reads float high.
pub struct Empty;

impl Empty {
    /// The tag of [`Self::state`] (see [`crate::state`]).
    pub const STATE_TAG: Tag = *b"empty   ";
    /// Bumped whenever the field list changes.
    pub const STATE_VERSION: u16 = 1;

    /// No fields: the tag and version alone.
    pub fn state(&self) -> Vec<u8> {
        Writer::new(&Self::STATE_TAG, Self::STATE_VERSION).finish()
    }

    /// Takes back what [`Self::state`] returned.
    pub fn restore(&mut self, data: &[u8]) -> Result<(), StateError> {
        Reader::new(data, &Self::STATE_TAG, Self::STATE_VERSION)?.end()
    }
}

impl BusDevice for Empty {
    fn name(&self) -> &'static str {
        "empty"
    }
    fn read(&mut self, a: &Access) -> (u64, Effects) {
        (all_ones(a.size).into(), Effects::NONE)
    }
    fn write(&mut self, _a: &Access, _value: u64) -> Effects {
        Effects::NONE
    }
    fn snapshot(&self) -> Result<Vec<u8>, StateError> {
        Ok(self.state())
    }
    fn restore_snapshot(&mut self, data: &[u8]) -> Result<(), StateError> {
        self.restore(data)
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NullSink, COM1_BASE, COM1_IRQ};

    fn at(addr: u64, base: u64, size: u8) -> Access {
        Access {
            addr,
            offset: addr - base,
            size,
            now_ns: 0,
        }
    }

    #[test]
    fn uart_line_follows_its_interrupt() {
        let mut d = SerialPort {
            uart: Uart16550::new(NullSink),
            irq: COM1_IRQ,
        };
        let base = u64::from(COM1_BASE);
        // MCR.OUT2 gates the line; IER: THR empty.
        d.write(&at(base + 4, base, 1), 0x08);
        let e = d.write(&at(base + 1, base, 1), 0x02);
        assert_eq!(e.lines[0], Some(IrqLine::Level(COM1_IRQ, true)));
        // Reading IIR reports (and clears) the THR-empty interrupt.
        let (_, e) = d.read(&at(base + 2, base, 1));
        assert_eq!(e.lines[0], Some(IrqLine::Level(COM1_IRQ, false)));
    }

    #[test]
    fn resets_and_exit_codes_are_effects() {
        let mut kbc = I8042::new();
        assert!(kbc.write(&at(0x64, 0x64, 1), 0xFE).reset);
        let mut p92 = SystemControlA::new();
        assert!(BusDevice::write(&mut p92, &at(0x92, 0x92, 1), 1).reset);
        let mut exit = DebugExit::new();
        let e = BusDevice::write(&mut exit, &at(0xF4, 0xF4, 4), 0x10);
        assert_eq!(e.exit, Some(0x21));
        assert_eq!(BusDevice::read(&mut exit, &at(0xF4, 0xF4, 1)).0, 0xFF);
    }

    #[test]
    fn pit_pulses_irq0_when_a_period_elapsed() {
        let mut pit = SystemTimer::new();
        // Channel 0, lo/hi, mode 2, divisor 1193 (~1 ms).
        pit.write(&at(0x43, 0x40, 1), 0x34);
        pit.write(&at(0x40, 0x40, 1), 1193 & 0xFF);
        pit.write(&at(0x40, 0x40, 1), 1193 >> 8);
        let due = pit.next_deadline_ns().unwrap();
        assert_eq!(pit.poll(due.saturating_sub(1000)), Effects::NONE);
        assert_eq!(pit.poll(due).lines[0], Some(IrqLine::Pulse(PIT_IRQ)));
    }

    #[test]
    fn pit_ticks_missed_while_one_waits_are_owed_and_caught_up() {
        let mut pit = SystemTimer::new();
        pit.write(&at(0x43, 0x40, 1), 0x34);
        pit.write(&at(0x40, 0x40, 1), 1193 & 0xFF);
        pit.write(&at(0x40, 0x40, 1), 1193 >> 8);
        let due = pit.next_deadline_ns().unwrap();
        let period = 1_000_000u64; // ~1 ms
                                   // The VM did not run for ~10 periods: one pulse now, 9 owed.
        let late = due + 9 * period + period / 2;
        assert_eq!(pit.poll(late).lines[0], Some(IrqLine::Pulse(PIT_IRQ)));
        assert_eq!(pit.owed(), 9);
        // While that tick waits in the controllers, nothing more (no merging).
        pit.set_tick_waiting(true);
        assert_eq!(pit.next_deadline_ns(), Some(late), "owed ticks want a poll");
        assert_eq!(pit.poll(late + 1000), Effects::NONE);
        assert_eq!(pit.owed(), 9);
        // Taken: one more per poll until the debt is paid.
        for left in (0..9).rev() {
            pit.set_tick_waiting(false);
            assert_eq!(
                pit.poll(late + 2000).lines[0],
                Some(IrqLine::Pulse(PIT_IRQ))
            );
            assert_eq!(pit.owed(), left);
        }
        pit.set_tick_waiting(false);
        assert_eq!(pit.poll(late + 3000), Effects::NONE);
        // Back to the channel's own deadline.
        assert!(pit.next_deadline_ns().unwrap() > late + 3000);
        // A tick that stays "waiting" past STUCK_NS does not stop the timer.
        let t = late + 3 * period;
        pit.set_tick_waiting(false);
        assert!(pit.poll(t).lines[0].is_some());
        pit.set_tick_waiting(true);
        assert_eq!(pit.poll(t + period + 1000), Effects::NONE);
        let later = t + SystemTimer::STUCK_NS;
        assert!(pit.poll(later).lines[0].is_some(), "pulsed although stuck");
        // A long stop owes at most MAX_OWED (one of them pulsed at once: the
        // previous tick has waited past STUCK_NS).
        pit.set_tick_waiting(true);
        pit.poll(later + 10_000 * period);
        assert_eq!(pit.owed(), SystemTimer::MAX_OWED - 1);
    }

    crate::state::testing::snap_impl!(SystemTimer);

    fn programmed_timer() -> SystemTimer {
        let mut pit = SystemTimer::new();
        pit.write(&at(0x43, 0x40, 1), 0x34);
        pit.write(&at(0x40, 0x40, 1), 1193 & 0xFF);
        pit.write(&at(0x40, 0x40, 1), 1193 >> 8);
        pit
    }

    #[test]
    fn system_timer_snapshot_keeps_owed_ticks() {
        let mut a = programmed_timer();
        let due = a.next_deadline_ns().unwrap();
        let late = due + 5 * 1_000_000 + 500_000;
        assert!(a.poll(late).lines[0].is_some());
        a.set_tick_waiting(true);
        assert_eq!(a.owed(), 5);
        let snap = a.snapshot().unwrap();
        assert_eq!(&snap[..8], b"systimer");
        let mut b = SystemTimer::new();
        b.restore_snapshot(&snap).unwrap();
        assert_eq!(b.owed(), 5);
        assert_eq!(b.next_deadline_ns(), a.next_deadline_ns());
        // Both pay the debt the same way and then tick on the same edges.
        let mut t = late;
        for i in 0..40u64 {
            t += 250_000 + 10_000 * (i % 7);
            let waiting = i % 3 == 0;
            a.set_tick_waiting(waiting);
            b.set_tick_waiting(waiting);
            assert_eq!(a.poll(t), b.poll(t), "poll {i}");
            assert_eq!(a.next_deadline_ns(), b.next_deadline_ns());
        }
        assert_eq!(a.state(), b.state());
        let mut fresh = SystemTimer::new();
        crate::state::testing::check_refusals(&mut fresh, &snap, |d| {
            d.set_tick_waiting(false);
            d.poll(late + 1_000_000);
            d.poll(u64::MAX);
            d.next_deadline_ns();
        });
    }

    /// A device that cannot be snapshotted.
    struct Opaque;

    impl BusDevice for Opaque {
        fn name(&self) -> &'static str {
            "opaque"
        }
        fn read(&mut self, _a: &Access) -> (u64, Effects) {
            (0, Effects::NONE)
        }
        fn write(&mut self, _a: &Access, _value: u64) -> Effects {
            Effects::NONE
        }
        fn as_any_mut(&mut self) -> &mut dyn Any {
            self
        }
    }

    /// The devices of a VM's platform, as the kernel builds it.
    fn platform_devices() -> alloc::vec::Vec<alloc::boxed::Box<dyn BusDevice>> {
        use crate::{HostBridge, PciAddress, PciConfig};
        let mut pci = PciConfig::new();
        pci.add_function(
            PciAddress::new(0, 0, 0),
            alloc::boxed::Box::new(HostBridge::i440fx()),
        )
        .unwrap();
        alloc::vec![
            alloc::boxed::Box::new(SerialPort {
                uart: Uart16550::new(NullSink),
                irq: COM1_IRQ,
            }),
            alloc::boxed::Box::new(programmed_timer()),
            alloc::boxed::Box::new(RtcCmos {
                cmos: Cmos::new(64 << 20, 0),
                epoch_unix_ns: 1_700_000_000_000_000_000,
            }),
            alloc::boxed::Box::new(I8042::new()),
            alloc::boxed::Box::new(SystemControlA::new()),
            alloc::boxed::Box::new(FwCfg::<'static, 1>::new(64 << 20, 2)),
            alloc::boxed::Box::new(DebugExit::new()),
            alloc::boxed::Box::new(pci),
            alloc::boxed::Box::new(Empty),
        ]
    }

    #[test]
    fn a_whole_platform_through_platform_state() {
        use crate::{IoApic, LapicConfig, LocalApic, Pic8259, PlatformState, StateError};
        let mut devices = platform_devices();
        // Give each something to remember.
        let base = u64::from(COM1_BASE);
        devices[0].write(&at(base + 7, base, 1), 0x42); // scratch register
        devices[1].poll(50_000_000);
        devices[2].write(&at(0x70, 0x70, 1), 0x0B);
        devices[3].write(&at(0x64, 0x64, 1), 0xAA);
        devices[4].write(&at(0x92, 0x92, 1), 0x00);
        devices[5].write(&at(0x510, 0x510, 2), 0x0019);
        devices[7].write(&at(0xCF8, 0xCF8, 4), 0x8000_0004);
        let mut pic = Pic8259::new();
        pic.pulse_irq(0);
        let ioapic = IoApic::new(0);
        let mut lapics: alloc::vec::Vec<LocalApic> = (0..2)
            .map(|i| {
                LocalApic::new(LapicConfig {
                    apic_id: i,
                    bsp: i == 0,
                    ..LapicConfig::new(1_000_000_000)
                })
            })
            .collect();
        lapics[1].deliver_nmi();

        let saved = PlatformState {
            pic: pic.state(),
            ioapic: ioapic.state(),
            lapics: lapics.iter().map(LocalApic::state).collect(),
            bus_devices: devices.iter().map(|d| d.snapshot().unwrap()).collect(),
        };
        let blob = saved.encode();

        // A new VM of the same shape takes it back, part by part.
        let parts = PlatformState::decode(&blob, 2, devices.len()).unwrap();
        assert_eq!(parts, saved);
        let mut fresh = platform_devices();
        for (d, part) in fresh.iter_mut().zip(&parts.bus_devices) {
            d.restore_snapshot(part).unwrap();
        }
        for (a, b) in devices.iter().zip(&fresh) {
            assert_eq!(a.snapshot(), b.snapshot(), "{}", a.name());
        }
        let mut pic2 = Pic8259::new();
        pic2.restore(&parts.pic).unwrap();
        assert_eq!(pic2.irr(), 1);
        let mut apic1 = LocalApic::new(LapicConfig {
            apic_id: 1,
            bsp: false,
            ..LapicConfig::new(1_000_000_000)
        });
        apic1.restore(&parts.lapics[1]).unwrap();
        assert!(apic1.take_nmi());
        // The guest sees it: the scratch register, the self-test's answer.
        let (v, _) = fresh[0].read(&at(base + 7, base, 1));
        assert_eq!(v, 0x42);
        assert_eq!(fresh[3].read(&at(0x60, 0x60, 1)).0, 0x55);

        // Parts in the wrong place are refused by their tag, the device unchanged.
        let before = fresh[3].snapshot().unwrap();
        assert_eq!(
            fresh[3].restore_snapshot(&parts.bus_devices[4]),
            Err(StateError::WrongDevice {
                expected: I8042::STATE_TAG
            })
        );
        assert_eq!(fresh[3].snapshot().unwrap(), before);
        // Another number of vCPUs is another VM.
        assert!(matches!(
            PlatformState::decode(&blob, 4, devices.len()),
            Err(StateError::Mismatch {
                what: "vCPU count",
                ..
            })
        ));
        // A device without snapshot support is named, not skipped.
        assert_eq!(
            Opaque.snapshot(),
            Err(StateError::Unsupported { device: "opaque" })
        );
        assert_eq!(
            Opaque.restore_snapshot(&blob),
            Err(StateError::Unsupported { device: "opaque" })
        );
    }
}
