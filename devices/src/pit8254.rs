//! The 8254 programmable interval timer (ports 0x40-0x43) and the PC's port 0x61
//! ("NMI status and control", also called system control port B), which gates
//! channel 2 and reads back its output.
//!
//! Follows the Intel 82C54 datasheet (order no. 231244): all six counter modes, the
//! three access modes (LSB, MSB, LSB then MSB), BCD counting, the counter latch
//! command, the read-back command (count and status), the gate inputs and the "new
//! count takes effect at the end of the cycle" rules of modes 2 and 3. Port 0x61 is
//! as in the Intel PIIX3 datasheet (order no. 290550), NMI status and control.
//!
//! ## Time
//!
//! The model has no clock of its own. Every call that can observe the counters takes
//! `now_ns`, nanoseconds since any epoch the caller likes, as long as it is the same
//! one on every call and never goes backwards. The counters' input clock is
//! [`PIT_HZ`]; its edges sit at fixed points of that time line (edge `k` at
//! `k / PIT_HZ` seconds), so counts stay exact however the accesses are spaced.
//!
//! ## Wiring
//!
//! * Channel 0's OUT is IRQ 0. The VMM calls [`Pit8254::irq0_pending`] (before
//!   entering the guest, and when the deadline from [`Pit8254::next_irq0_deadline_ns`]
//!   passes) and raises one IRQ 0 edge on the PIC per tick it reports (or coalesces
//!   them: the PIC latches one edge anyway).
//! * Channel 1 (DRAM refresh on old PCs) counts but its OUT goes nowhere.
//! * Channel 2's GATE is port 0x61 bit 0 and its OUT reads back as port 0x61 bit 5;
//!   the speaker (bit 1 AND OUT2) is not modelled.
//! * Port 0x61 bit 4 (the refresh-request toggle on real chipsets, a 15 us square
//!   wave) flips on every read, as in QEMU: code that waits for it to change never
//!   hangs, and nothing depends on its exact period.
//!
//! Like QEMU, the model counts IRQ 0 edges only from counting: an OUT step caused by
//! writing a control word (mode 0 to mode 2 raises OUT at once on the chip) is not
//! reported as a tick. The one-clock delay between writing a count and the counter
//! loading it (the datasheet's "N + 1" for mode 0) is modelled.

use alloc::vec::Vec;

use crate::bus::{read_bytewise, write_bytewise};
use crate::state::{Reader, StateError, Tag, Writer};

/// The counters' input clock in Hz, as Linux's `PIT_TICK_RATE` (14.31818 MHz / 12).
pub const PIT_HZ: u64 = 1_193_182;
/// Channel 0's data port; channels 1 and 2 follow, then the control word port.
pub const PIT_BASE: u16 = 0x40;
/// Ports decoded from [`PIT_BASE`]: three counters and the control word register.
pub const PIT_PORT_COUNT: u16 = 4;
/// NMI status and control (system control port B).
pub const PORT_61: u16 = 0x61;
/// The ISA IRQ channel 0's output drives.
pub const PIT_IRQ: u8 = 0;

/// Port 0x61 bits.
pub mod port61 {
    /// Read/write: channel 2's GATE input.
    pub const GATE2: u8 = 1 << 0;
    /// Read/write: speaker data enable.
    pub const SPEAKER: u8 = 1 << 1;
    /// Read/write: parity check (SERR#) NMI disable; stored only.
    pub const PARITY_DISABLE: u8 = 1 << 2;
    /// Read/write: channel check (IOCHK#) NMI disable; stored only.
    pub const IOCHK_DISABLE: u8 = 1 << 3;
    /// Read-only: refresh request toggle.
    pub const REFRESH: u8 = 1 << 4;
    /// Read-only: channel 2's OUT.
    pub const OUT2: u8 = 1 << 5;
    /// The writable bits.
    pub const WRITABLE: u8 = 0x0F;
}

const NS_PER_SEC: u128 = 1_000_000_000;

/// The number of the last input-clock edge at or before `ns`.
fn tick_at(ns: u64) -> u64 {
    // Fits: u64::MAX ns is about 2.2e16 ticks.
    (u128::from(ns) * u128::from(PIT_HZ) / NS_PER_SEC) as u64
}

/// The first nanosecond at which [`tick_at`] reaches `tick`.
fn ns_of_tick(tick: u64) -> u64 {
    let ns = (u128::from(tick) * NS_PER_SEC).div_ceil(u128::from(PIT_HZ));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

fn to_bcd(value: u32) -> u16 {
    let v = value % 10_000;
    (((v / 1000) << 12) | ((v / 100 % 10) << 8) | ((v / 10 % 10) << 4) | (v % 10)) as u16
}

fn from_bcd(value: u16) -> u32 {
    // Nibbles above 9 are not BCD; take them at face value like a decade counter
    // that was loaded with them would roughly do.
    let v = u32::from(value);
    (v >> 12) * 1000 + ((v >> 8) & 0xF) * 100 + ((v >> 4) & 0xF) * 10 + (v & 0xF)
}

/// How a counter's port is read and written (control word bits 5:4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Least significant byte only.
    Lsb = 1,
    /// Most significant byte only.
    Msb = 2,
    /// LSB then MSB.
    Word = 3,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Run {
    /// Not counting: after a control word until the count is written, while a gate
    /// holds a count back, or waiting for a gate trigger (modes 1 and 5).
    Stopped { count: u32, out: bool },
    /// Counting: the counting element held `n` (1 ..= modulus) at input-clock edge
    /// `start` and steps on every edge after it.
    Running { start: u64, n: u32 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Latched {
    value: u16,
    /// With [`Access::Word`], the LSB has been read.
    msb_next: bool,
}

#[derive(Clone, Debug)]
struct Channel {
    mode: u8,
    access: Access,
    bcd: bool,
    gate: bool,
    /// The count register: the last complete count written, as a number of steps
    /// (0 written means the full modulus).
    reload: u32,
    /// A control word was written and no count yet.
    awaiting_count: bool,
    /// Modes 1 and 5: a count was written and no trigger has loaded it yet.
    awaiting_trigger: bool,
    run: Run,
    /// Modes 0 and 4: the terminal count was already reached before the current
    /// anchor (OUT stays high; mode 4's strobe is over).
    fired: bool,
    /// Modes 2 and 3: a count written while counting, and the clock edge at which
    /// the current cycle ends and it is loaded.
    pending: Option<(u32, u64)>,
    /// With [`Access::Word`], the LSB written so far.
    write_lsb: Option<u8>,
    /// With [`Access::Word`] and no latch, the next read returns the MSB.
    read_msb_next: bool,
    latch: Option<Latched>,
    status: Option<u8>,
    /// OUT rising edges produced before the current anchor (IRQ 0 accounting).
    edges_before: u64,
    /// The clock edge of the last re-anchoring.
    anchor: u64,
}

impl Channel {
    const fn new(gate: bool) -> Self {
        Self {
            mode: 0,
            access: Access::Word,
            bcd: false,
            gate,
            reload: 0x1_0000,
            awaiting_count: true,
            awaiting_trigger: false,
            run: Run::Stopped {
                count: 0,
                out: false,
            },
            fired: false,
            pending: None,
            write_lsb: None,
            read_msb_next: false,
            latch: None,
            status: None,
            edges_before: 0,
            anchor: 0,
        }
    }

    fn modulus(&self) -> u32 {
        if self.bcd {
            10_000
        } else {
            0x1_0000
        }
    }

    /// The counting element at `tick`, 0 ..= modulus - 1.
    fn raw_count(&self, tick: u64) -> u32 {
        match self.run {
            Run::Stopped { count, .. } => count % self.modulus(),
            Run::Running { start, n } => {
                let e = tick.saturating_sub(start);
                let m = u64::from(self.modulus());
                let n64 = u64::from(n);
                let value = match self.mode {
                    2 => n64 - e % n64,
                    // Mode 3 steps by two and reloads every half cycle.
                    3 => n64 - (2 * e) % n64,
                    // Modes 0, 1, 4, 5 count down through 0 and wrap.
                    _ => (n64 + m - e % m) % m,
                };
                (value % m) as u32
            }
        }
    }

    fn out(&self, tick: u64) -> bool {
        match self.run {
            Run::Stopped { out, .. } => out,
            Run::Running { start, n } => {
                let e = tick.saturating_sub(start);
                let n = u64::from(n);
                match self.mode {
                    // Low from the count write until the terminal count.
                    0 => self.fired || e >= n,
                    // Low from the trigger until the terminal count.
                    1 => e >= n,
                    // Low for the one clock while the count is 1.
                    2 => e % n != n - 1,
                    // High for the first half of each cycle (the longer half if odd).
                    3 => e % n < n.div_ceil(2),
                    // Modes 4, 5: low for the one clock at the terminal count.
                    _ => self.fired || e != n,
                }
            }
        }
    }

    /// OUT rising edges since the anchor, up to and including clock edge `tick`.
    fn edges_upto(&self, tick: u64) -> u64 {
        let Run::Running { start, n } = self.run else {
            return 0;
        };
        let e = tick.saturating_sub(start);
        let n = u64::from(n);
        match self.mode {
            0 => u64::from(!self.fired && e >= n),
            1 => u64::from(e >= n),
            2 | 3 => e / n,
            _ => u64::from(!self.fired && e > n),
        }
    }

    /// The clock edge of the `k`-th (1-based) OUT rising edge after the anchor.
    fn edge_tick(&self, k: u64) -> Option<u64> {
        let Run::Running { start, n } = self.run else {
            return None;
        };
        let n = u64::from(n);
        match self.mode {
            0 if k == 1 && !self.fired => Some(start + n),
            1 if k == 1 => Some(start + n),
            2 | 3 => {
                // A pending count takes over at the end of the current cycle.
                if let Some((next, at)) = self.pending {
                    let before = at.saturating_sub(start) / n;
                    if k > before {
                        // Saturating: only a restored, inconsistent state gets near
                        // the limits, and it must not panic (see `Pit8254::restore`).
                        return Some(at.saturating_add((k - before).saturating_mul(next.into())));
                    }
                }
                Some(start.saturating_add(k.saturating_mul(n)))
            }
            4 | 5 if k == 1 && !self.fired => Some(start + n + 1),
            _ => None,
        }
    }

    /// Whether modes 0/4 have reached their terminal count by `tick`.
    fn fired_by(&self, tick: u64) -> bool {
        self.fired
            || match self.run {
                Run::Running { start, n } => {
                    let e = tick.saturating_sub(start);
                    match self.mode {
                        0 => e >= u64::from(n),
                        4 => e > u64::from(n),
                        _ => false,
                    }
                }
                Run::Stopped { .. } => false,
            }
    }

    /// Replaces the counting state at `tick`, keeping the IRQ 0 edge count.
    fn rebase(&mut self, tick: u64, run: Run) {
        self.edges_before = self.edges_before.saturating_add(self.edges_upto(tick));
        self.anchor = tick;
        self.run = run;
    }

    /// Applies a pending mode 2/3 count once its cycle boundary has passed.
    fn settle(&mut self, tick: u64) {
        if let Some((n, at)) = self.pending {
            if tick >= at {
                self.pending = None;
                self.rebase(at, Run::Running { start: at, n });
            }
        }
    }

    fn total_edges(&self, tick: u64) -> u64 {
        self.edges_before.saturating_add(self.edges_upto(tick))
    }

    /// The value a read sees: the counting element, in BCD if so programmed.
    fn read_value(&self, tick: u64) -> u16 {
        let raw = self.raw_count(tick);
        if self.bcd {
            to_bcd(raw)
        } else {
            raw as u16
        }
    }

    fn status_byte(&self, tick: u64) -> u8 {
        // NULL COUNT: a count has been written but not yet loaded into the counter.
        let null = self.awaiting_count
            || self.awaiting_trigger
            || self.pending.is_some()
            || matches!(self.run, Run::Running { start, .. } if tick < start);
        (u8::from(self.out(tick)) << 7)
            | (u8::from(null) << 6)
            | ((self.access as u8) << 4)
            | (self.mode << 1)
            | u8::from(self.bcd)
    }

    fn control_word(&mut self, tick: u64, value: u8) {
        self.settle(tick);
        let access = match (value >> 4) & 3 {
            0 => {
                self.latch_count(tick);
                return;
            }
            1 => Access::Lsb,
            2 => Access::Msb,
            _ => Access::Word,
        };
        // Modes 6 and 7 are aliases of 2 and 3.
        let mode = match (value >> 1) & 7 {
            6 => 2,
            7 => 3,
            m => m,
        };
        // "All control logic is reset and OUT goes to a known initial state": low for
        // mode 0, high otherwise. Counting stops until the count is written.
        let count = self.raw_count(tick);
        self.rebase(
            tick,
            Run::Stopped {
                count,
                out: mode != 0,
            },
        );
        self.mode = mode;
        self.access = access;
        self.bcd = value & 1 != 0;
        self.awaiting_count = true;
        self.awaiting_trigger = false;
        self.fired = false;
        self.pending = None;
        self.write_lsb = None;
        self.read_msb_next = false;
        self.latch = None;
        self.status = None;
    }

    fn latch_count(&mut self, tick: u64) {
        // A second latch before the first is read is ignored.
        if self.latch.is_none() {
            self.latch = Some(Latched {
                value: self.read_value(tick),
                msb_next: false,
            });
        }
    }

    fn latch_status(&mut self, tick: u64) {
        if self.status.is_none() {
            self.status = Some(self.status_byte(tick));
        }
    }

    fn write_count(&mut self, tick: u64, byte: u8) {
        self.settle(tick);
        match self.access {
            Access::Lsb => self.load(tick, u16::from(byte)),
            Access::Msb => self.load(tick, u16::from(byte) << 8),
            Access::Word => match self.write_lsb.take() {
                None => {
                    self.write_lsb = Some(byte);
                    if self.mode == 0 {
                        // Mode 0: writing the first byte stops counting and drops OUT.
                        let count = self.raw_count(tick);
                        self.rebase(tick, Run::Stopped { count, out: false });
                        self.fired = false;
                    }
                }
                Some(lsb) => self.load(tick, u16::from(lsb) | (u16::from(byte) << 8)),
            },
        }
    }

    /// A complete count was written.
    fn load(&mut self, tick: u64, value: u16) {
        let steps = if self.bcd {
            from_bcd(value)
        } else {
            u32::from(value)
        };
        let n = if steps == 0 { self.modulus() } else { steps };
        self.reload = n;
        let first = core::mem::replace(&mut self.awaiting_count, false);
        match self.mode {
            0 | 4 => {
                // Loaded on the next clock edge; counts while GATE is high.
                let run = if self.gate {
                    Run::Running { start: tick + 1, n }
                } else {
                    Run::Stopped {
                        count: n,
                        out: self.mode == 4,
                    }
                };
                // Rebase first: the edge count of the old run depends on `fired`.
                self.rebase(tick, run);
                self.fired = false;
            }
            // Gate-triggered: the count waits for the next rising edge of GATE, and
            // a one-shot in progress is not disturbed.
            1 | 5 => self.awaiting_trigger = true,
            _ => match self.run {
                Run::Running { start, n: old } if !first && self.gate => {
                    // Modes 2 and 3: the current cycle finishes first.
                    let old = u64::from(old);
                    let cycle_end = start + old * (tick.saturating_sub(start) / old + 1);
                    self.pending = Some((n, cycle_end));
                }
                _ if self.gate => self.rebase(tick, Run::Running { start: tick + 1, n }),
                // GATE low: counting starts at its rising edge.
                _ => self.rebase(
                    tick,
                    Run::Stopped {
                        count: n,
                        out: true,
                    },
                ),
            },
        }
    }

    fn set_gate(&mut self, tick: u64, level: bool) {
        self.settle(tick);
        let rising = level && !self.gate;
        let falling = !level && self.gate;
        self.gate = level;
        if self.awaiting_count {
            return;
        }
        match self.mode {
            0 | 4 => {
                if falling {
                    // GATE low suspends counting; OUT keeps its level.
                    let count = self.raw_count(tick);
                    let out = self.out(tick);
                    let fired = self.fired_by(tick);
                    self.rebase(tick, Run::Stopped { count, out });
                    self.fired = fired;
                } else if rising {
                    if let Run::Stopped { count, .. } = self.run {
                        let n = if count == 0 { self.modulus() } else { count };
                        self.rebase(tick, Run::Running { start: tick, n });
                    }
                }
            }
            1 | 5 => {
                if rising {
                    // Trigger: load the count on the next clock edge.
                    self.awaiting_trigger = false;
                    let n = self.reload;
                    self.rebase(tick, Run::Running { start: tick + 1, n });
                    self.fired = false;
                }
            }
            _ => {
                if falling {
                    // Counting stops and OUT is forced high at once.
                    let count = self.raw_count(tick);
                    self.pending = None;
                    self.rebase(tick, Run::Stopped { count, out: true });
                } else if rising {
                    // Reload with the count register on the next clock edge.
                    let n = self.reload;
                    self.rebase(tick, Run::Running { start: tick + 1, n });
                }
            }
        }
    }

    fn read(&mut self, tick: u64) -> u8 {
        self.settle(tick);
        // A latched status goes first, then a latched count, then the live counter.
        if let Some(status) = self.status.take() {
            return status;
        }
        if let Some(latch) = self.latch.as_mut() {
            let [lsb, msb] = latch.value.to_le_bytes();
            return match self.access {
                Access::Lsb => {
                    self.latch = None;
                    lsb
                }
                Access::Msb => {
                    self.latch = None;
                    msb
                }
                Access::Word if !latch.msb_next => {
                    latch.msb_next = true;
                    lsb
                }
                Access::Word => {
                    self.latch = None;
                    msb
                }
            };
        }
        // Unlatched reads sample the live counter byte by byte: the two halves of a
        // word may come from different counts, as on the chip.
        let [lsb, msb] = self.read_value(tick).to_le_bytes();
        match self.access {
            Access::Lsb => lsb,
            Access::Msb => msb,
            Access::Word => {
                let msb_next = self.read_msb_next;
                self.read_msb_next = !msb_next;
                if msb_next {
                    msb
                } else {
                    lsb
                }
            }
        }
    }
}

/// The 8254 PIT plus port 0x61.
#[derive(Clone, Debug)]
pub struct Pit8254 {
    channels: [Channel; 3],
    /// Port 0x61's writable bits.
    port61: u8,
    refresh: bool,
    /// IRQ 0 edges already handed to the VMM.
    irq0_reported: u64,
}

impl Default for Pit8254 {
    fn default() -> Self {
        Self::new()
    }
}

impl Pit8254 {
    /// The timer at power-on: no channel programmed (none counts), channel 2's gate
    /// low. See [`Self::bios_init`] for the state a BIOS leaves.
    pub const fn new() -> Self {
        Self {
            // Channels 0 and 1 have GATE tied high on a PC.
            channels: [Channel::new(true), Channel::new(true), Channel::new(false)],
            port61: 0,
            refresh: false,
            irq0_reported: 0,
        }
    }

    /// Programs channel 0 as a PC BIOS does: mode 3, LSB then MSB, count 0 (65536),
    /// so IRQ 0 ticks at 18.2 Hz. For guests that expect firmware to have set up the
    /// timer; Linux and most kernels reprogram it.
    pub fn bios_init(&mut self, now_ns: u64) {
        self.write_port(0x43, 0x36, now_ns);
        self.write_port(0x40, 0x00, now_ns);
        self.write_port(0x40, 0x00, now_ns);
    }

    /// A byte read from `port` (0x40-0x43 or 0x61) at `now_ns`, with its side effects
    /// (latches are consumed, the LSB/MSB flip-flop advances, the refresh bit
    /// toggles). The control word register is write-only and reads 0xFF, as do other
    /// ports.
    pub fn read_port(&mut self, port: u16, now_ns: u64) -> u8 {
        let tick = tick_at(now_ns);
        match port {
            0x40..=0x42 => self.channels[usize::from(port - 0x40)].read(tick),
            PORT_61 => {
                self.refresh = !self.refresh;
                let ch2 = &mut self.channels[2];
                ch2.settle(tick);
                self.port61
                    | if self.refresh { port61::REFRESH } else { 0 }
                    | if ch2.out(tick) { port61::OUT2 } else { 0 }
            }
            _ => 0xFF,
        }
    }

    /// A byte written to `port` (0x40-0x43 or 0x61) at `now_ns`; other ports are
    /// ignored.
    pub fn write_port(&mut self, port: u16, value: u8, now_ns: u64) {
        let tick = tick_at(now_ns);
        match port {
            0x40..=0x42 => self.channels[usize::from(port - 0x40)].write_count(tick, value),
            0x43 => self.control(tick, value),
            PORT_61 => {
                self.port61 = value & port61::WRITABLE;
                self.channels[2].set_gate(tick, value & port61::GATE2 != 0);
            }
            _ => {}
        }
    }

    /// One port-I/O exit at absolute `port`; wide accesses become byte accesses at
    /// consecutive ports, as the ISA bus splits them.
    pub fn port_io(&mut self, port: u16, size: u8, write: bool, value: u32, now_ns: u64) -> u32 {
        if write {
            write_bytewise(port, size, value, |p, b| self.write_port(p, b, now_ns));
            0
        } else {
            read_bytewise(port, size, |p| self.read_port(p, now_ns))
        }
    }

    /// How many IRQ 0 edges (rising edges of channel 0's OUT) happened since the
    /// previous call, up to `now_ns`. The VMM raises IRQ 0 for them.
    pub fn irq0_pending(&mut self, now_ns: u64) -> u32 {
        let tick = tick_at(now_ns);
        let ch0 = &mut self.channels[0];
        ch0.settle(tick);
        let total = ch0.total_edges(tick);
        let new = total.saturating_sub(self.irq0_reported);
        self.irq0_reported = self.irq0_reported.max(total);
        u32::try_from(new).unwrap_or(u32::MAX)
    }

    /// The earliest time at which [`Self::irq0_pending`] will report a tick, or `None`
    /// if channel 0 will not produce one without being reprogrammed. It can lie in the
    /// past (a tick is already due): the VMM then collects it at once.
    pub fn next_irq0_deadline_ns(&self) -> Option<u64> {
        let ch0 = &self.channels[0];
        if self.irq0_reported < ch0.edges_before {
            return Some(ns_of_tick(ch0.anchor));
        }
        let k = self.irq0_reported - ch0.edges_before + 1;
        ch0.edge_tick(k).map(ns_of_tick)
    }

    /// The OUT pin of `channel` (0-2) at `now_ns`.
    pub fn out(&self, channel: usize, now_ns: u64) -> bool {
        let tick = tick_at(now_ns);
        // On a copy: a pending mode 2/3 count may have taken over by now.
        let mut ch = self.channels[channel].clone();
        ch.settle(tick);
        ch.out(tick)
    }

    /// The mode (0-5) `channel` is programmed for.
    pub fn mode(&self, channel: usize) -> u8 {
        self.channels[channel].mode
    }

    /// The count register of `channel` in input-clock steps (1-65536; a written 0
    /// reads 65536): the period of modes 2 and 3.
    pub fn reload(&self, channel: usize) -> u32 {
        self.channels[channel].reload
    }

    /// Channel 2's GATE (port 0x61 bit 0).
    pub fn gate2(&self) -> bool {
        self.channels[2].gate
    }

    fn control(&mut self, tick: u64, value: u8) {
        if value >> 6 == 3 {
            // Read-back: bit 5 clear latches the count, bit 4 clear the status, of
            // each channel selected by bits 3:1.
            for (i, ch) in self.channels.iter_mut().enumerate() {
                if value & (2 << i) == 0 {
                    continue;
                }
                ch.settle(tick);
                if value & 0x10 == 0 {
                    ch.latch_status(tick);
                }
                if value & 0x20 == 0 {
                    ch.latch_count(tick);
                }
            }
        } else {
            self.channels[usize::from(value >> 6)].control_word(tick, value);
        }
    }
}

/// The largest clock-edge number a snapshot may hold: past the last edge of the
/// u64 nanosecond timeline by two full counts (a pending count's cycle end and the
/// run it starts). Anything larger could not have come from `now_ns` values.
fn max_snapshot_tick() -> u64 {
    tick_at(u64::MAX) + 0x2_0000
}

impl Channel {
    fn write_state(&self, w: &mut Writer) {
        w.u8(self.mode);
        w.u8(self.access as u8);
        w.bool(self.bcd);
        w.bool(self.gate);
        w.u32(self.reload);
        w.bool(self.awaiting_count);
        w.bool(self.awaiting_trigger);
        match self.run {
            Run::Stopped { count, out } => {
                w.u8(0);
                w.u32(count);
                w.bool(out);
            }
            Run::Running { start, n } => {
                w.u8(1);
                w.u64(start);
                w.u32(n);
            }
        }
        w.bool(self.fired);
        w.bool(self.pending.is_some());
        let (next, at) = self.pending.unwrap_or((0, 0));
        w.u32(next);
        w.u64(at);
        w.bool(self.write_lsb.is_some());
        w.u8(self.write_lsb.unwrap_or(0));
        w.bool(self.read_msb_next);
        w.bool(self.latch.is_some());
        let latch = self.latch.unwrap_or(Latched {
            value: 0,
            msb_next: false,
        });
        w.u16(latch.value);
        w.bool(latch.msb_next);
        w.bool(self.status.is_some());
        w.u8(self.status.unwrap_or(0));
        w.u64(self.edges_before);
        w.u64(self.anchor);
    }

    /// A channel from `r`; `gate_tied` for channels 0 and 1, whose GATE is wired high.
    fn read_state(r: &mut Reader, gate_tied: bool) -> Result<Channel, StateError> {
        let max_tick = max_snapshot_tick();
        // Counts are steps of 1 ..= 65536 (BCD: 10000); a count read back under one
        // modulus can be held while the other is programmed, so 65536 bounds both.
        let count_ok = |n: u32| (1..=0x1_0000).contains(&n);
        let mode = r.u8()?;
        r.check(mode <= 5, "counter mode")?;
        let access = match r.u8()? {
            1 => Access::Lsb,
            2 => Access::Msb,
            3 => Access::Word,
            _ => return Err(r.invalid("read/write access mode")),
        };
        let bcd = r.bool()?;
        let gate = r.bool()?;
        r.check(gate || !gate_tied, "GATE low on channel 0 or 1")?;
        let reload = r.u32()?;
        r.check(count_ok(reload), "count register")?;
        let awaiting_count = r.bool()?;
        let awaiting_trigger = r.bool()?;
        let run = match r.u8()? {
            0 => {
                let count = r.u32()?;
                r.check(count <= 0x1_0000, "stopped count")?;
                Run::Stopped {
                    count,
                    out: r.bool()?,
                }
            }
            1 => {
                let start = r.u64()?;
                let n = r.u32()?;
                r.check(start <= max_tick, "start clock edge")?;
                r.check(count_ok(n), "running count")?;
                Run::Running { start, n }
            }
            _ => return Err(r.invalid("counting state")),
        };
        let fired = r.bool()?;
        let has_pending = r.bool()?;
        let (next, at) = (r.u32()?, r.u64()?);
        let pending = if has_pending {
            r.check(count_ok(next), "pending count")?;
            r.check(at <= max_tick, "pending count's clock edge")?;
            Some((next, at))
        } else {
            r.check(
                (next, at) == (0, 0),
                "absent pending count stored as non-zero",
            )?;
            None
        };
        let has_lsb = r.bool()?;
        let lsb = r.u8()?;
        r.check(has_lsb || lsb == 0, "absent LSB stored as non-zero")?;
        let read_msb_next = r.bool()?;
        let has_latch = r.bool()?;
        let (value, msb_next) = (r.u16()?, r.bool()?);
        r.check(
            has_latch || (value, msb_next) == (0, false),
            "absent latch stored as non-zero",
        )?;
        let has_status = r.bool()?;
        let status = r.u8()?;
        r.check(
            has_status || status == 0,
            "absent status stored as non-zero",
        )?;
        let edges_before = r.u64()?;
        let anchor = r.u64()?;
        r.check(edges_before <= max_tick, "edge count")?;
        r.check(anchor <= max_tick, "anchor clock edge")?;
        Ok(Channel {
            mode,
            access,
            bcd,
            gate,
            reload,
            awaiting_count,
            awaiting_trigger,
            run,
            fired,
            pending,
            write_lsb: has_lsb.then_some(lsb),
            read_msb_next,
            latch: has_latch.then_some(Latched { value, msb_next }),
            status: has_status.then_some(status),
            edges_before,
            anchor,
        })
    }
}

impl Pit8254 {
    /// The tag of [`Self::state`] (see [`crate::state`]).
    pub const STATE_TAG: Tag = *b"pit8254 ";
    /// Bumped whenever the field list changes.
    pub const STATE_VERSION: u16 = 1;

    /// The three counters (mode, access, count register, the counting element as a
    /// start edge and count, latches, the LSB/MSB flip-flops, pending counts, GATE,
    /// OUT edge accounting), port 0x61 and the IRQ 0 edges already reported, in the
    /// format of [`crate::state`].
    ///
    /// Times are input-clock edge numbers on the guest's `now_ns` timeline (edge `k`
    /// at `k / PIT_HZ` s), absolute: after a restore the device continues exactly
    /// when the VMM's guest clock continues from the snapshot's time.
    pub fn state(&self) -> Vec<u8> {
        let mut w = Writer::new(&Self::STATE_TAG, Self::STATE_VERSION);
        for ch in &self.channels {
            ch.write_state(&mut w);
        }
        w.u8(self.port61);
        w.bool(self.refresh);
        w.u64(self.irq0_reported);
        w.finish()
    }

    /// Takes back what [`Self::state`] returned; nothing changes on an error.
    pub fn restore(&mut self, data: &[u8]) -> Result<(), StateError> {
        let mut r = Reader::new(data, &Self::STATE_TAG, Self::STATE_VERSION)?;
        let channels = [
            Channel::read_state(&mut r, true)?,
            Channel::read_state(&mut r, true)?,
            Channel::read_state(&mut r, false)?,
        ];
        let port61 = r.u8()?;
        r.check(port61 & !port61::WRITABLE == 0, "port 0x61 value")?;
        let refresh = r.bool()?;
        let irq0_reported = r.u64()?;
        r.check(irq0_reported <= max_snapshot_tick(), "reported IRQ 0 edges")?;
        r.end()?;
        r.check(
            channels[2].gate == (port61 & port61::GATE2 != 0),
            "channel 2 GATE (differs from port 0x61 bit 0)",
        )?;
        self.channels = channels;
        self.port61 = port61;
        self.refresh = refresh;
        self.irq0_reported = irq0_reported;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nanoseconds at which input-clock edge `tick` has happened.
    fn at(tick: u64) -> u64 {
        ns_of_tick(tick)
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn tick_conversion_round_trips() {
        for tick in [0, 1, 2, 1193, 1_193_182, 1 << 40] {
            let ns = ns_of_tick(tick);
            assert_eq!(tick_at(ns), tick);
            if ns > 0 {
                assert_eq!(tick_at(ns - 1), tick - 1);
            }
        }
        assert_eq!(tick_at(1_000_000_000), PIT_HZ);
    }

    #[test]
    fn mode2_periodic_ticks_like_linux_hz1000() {
        // Linux's pit_set_periodic: 0x34 (ch0, LSB/MSB, mode 2), LATCH = 1193.
        let mut pit = Pit8254::new();
        assert_eq!(pit.next_irq0_deadline_ns(), None);
        assert_eq!(pit.irq0_pending(0), 0);
        let t0 = at(100);
        pit.write_port(0x43, 0x34, t0);
        pit.write_port(0x40, (1193u16 & 0xFF) as u8, t0);
        pit.write_port(0x40, (1193 >> 8) as u8, t0);
        assert_eq!(pit.mode(0), 2);
        assert_eq!(pit.reload(0), 1193);
        // Loaded on edge 101; the first tick is 1193 edges later.
        assert_eq!(pit.next_irq0_deadline_ns(), Some(at(101 + 1193)));
        assert_eq!(pit.irq0_pending(at(101 + 1192)), 0);
        assert_eq!(pit.irq0_pending(at(101 + 1193)), 1);
        assert_eq!(pit.irq0_pending(at(101 + 1193)), 0);
        assert_eq!(pit.next_irq0_deadline_ns(), Some(at(101 + 2 * 1193)));
        // One second later: about 1000 ticks.
        assert_eq!(pit.irq0_pending(at(101 + 1193) + 1000 * MS), 1000);
        // OUT is low only while the count is 1.
        assert!(pit.out(0, at(101 + 1191)));
        assert!(!pit.out(0, at(101 + 1192)));
        assert!(pit.out(0, at(101 + 1193)));
        // Counter value through a latch: 1193 at the load edge, 1 at the last.
        pit.write_port(0x43, 0x00, at(101 + 5 * 1193));
        assert_eq!(pit.read_port(0x40, 0), 0xA9);
        assert_eq!(pit.read_port(0x40, 0), 0x04);
        pit.write_port(0x43, 0x00, at(101 + 5 * 1193 + 1192));
        assert_eq!(pit.port_io(0x40, 1, false, 0, 0), 1);
        assert_eq!(pit.port_io(0x40, 1, false, 0, 0), 0);
    }

    #[test]
    fn mode2_new_count_waits_for_the_cycle_end() {
        let mut pit = Pit8254::new();
        pit.write_port(0x43, 0x34, at(0));
        pit.write_port(0x40, 100, at(0));
        pit.write_port(0x40, 0, at(0));
        // Start edge 1; cycles end at 101, 201, ... Write 50 in the middle of cycle 2.
        pit.write_port(0x40, 50, at(150));
        pit.write_port(0x40, 0, at(150));
        assert_eq!(pit.next_irq0_deadline_ns(), Some(at(101)));
        assert_eq!(pit.irq0_pending(at(150)), 1);
        assert_eq!(pit.next_irq0_deadline_ns(), Some(at(201)));
        assert_eq!(pit.irq0_pending(at(201)), 1);
        assert_eq!(pit.next_irq0_deadline_ns(), Some(at(251)));
        assert_eq!(pit.irq0_pending(at(301)), 2);
        assert_eq!(pit.reload(0), 50);
        // The status byte shows NULL COUNT while a count waits to be loaded.
        pit.write_port(0x40, 10, at(310));
        pit.write_port(0x40, 0, at(310));
        pit.write_port(0x43, 0xE2, at(310)); // read-back status of channel 0
        assert_eq!(pit.read_port(0x40, at(310)), 0x80 | 0x40 | 0x30 | 0x04);
    }

    #[test]
    fn mode3_square_wave() {
        let mut pit = Pit8254::new();
        pit.bios_init(at(0));
        assert_eq!(pit.mode(0), 3);
        assert_eq!(pit.reload(0), 0x1_0000);
        // High for the first half, low for the second.
        assert!(pit.out(0, at(1)));
        assert!(pit.out(0, at(1 + 0x7FFF)));
        assert!(!pit.out(0, at(1 + 0x8000)));
        assert!(pit.out(0, at(1 + 0x1_0000)));
        // 18.2 Hz.
        assert_eq!(pit.irq0_pending(1_000_000_000), 18);
        // The counter steps by two.
        pit.write_port(0x43, 0x00, at(11));
        let lsb = pit.read_port(0x40, 0);
        let msb = pit.read_port(0x40, 0);
        assert_eq!(u16::from_le_bytes([lsb, msb]), 0u16.wrapping_sub(20));
    }

    #[test]
    fn mode0_one_shot_out_goes_high_once() {
        // Linux's oneshot clockevent: 0x30 then the delta, LSB then MSB.
        let mut pit = Pit8254::new();
        pit.write_port(0x43, 0x30, at(0));
        assert!(!pit.out(0, at(0)));
        pit.write_port(0x40, 0x10, at(0));
        pit.write_port(0x40, 0x00, at(0));
        // N + 1 edges after the write.
        assert_eq!(pit.next_irq0_deadline_ns(), Some(at(17)));
        assert!(!pit.out(0, at(16)));
        assert!(pit.out(0, at(17)));
        assert_eq!(pit.irq0_pending(at(16)), 0);
        assert_eq!(pit.irq0_pending(at(1000)), 1);
        assert_eq!(pit.next_irq0_deadline_ns(), None);
        assert_eq!(pit.irq0_pending(at(1_000_000)), 0);
        assert!(pit.out(0, at(1_000_000)));
        // The counter wrapped and keeps counting down.
        pit.write_port(0x43, 0x00, at(17 + 2));
        assert_eq!(pit.read_port(0x40, 0), 0xFE);
        assert_eq!(pit.read_port(0x40, 0), 0xFF);
        // Re-arming: the first byte drops OUT and stops the counter.
        pit.write_port(0x40, 0x05, at(2000));
        assert!(!pit.out(0, at(3000)));
        assert_eq!(pit.irq0_pending(at(3000)), 0);
        pit.write_port(0x40, 0x00, at(3000));
        assert_eq!(pit.irq0_pending(at(3005)), 0);
        assert_eq!(pit.irq0_pending(at(3006)), 1);
        // Linux's pit_shutdown writes a mode 0 control word without a count: no ticks.
        pit.write_port(0x43, 0x30, at(4000));
        assert!(!pit.out(0, at(100_000)));
        assert_eq!(pit.irq0_pending(at(100_000)), 0);
        assert_eq!(pit.next_irq0_deadline_ns(), None);
    }

    #[test]
    fn reprogramming_keeps_unreported_ticks() {
        let mut pit = Pit8254::new();
        pit.write_port(0x43, 0x34, at(0));
        pit.write_port(0x40, 10, at(0));
        pit.write_port(0x40, 0, at(0));
        // Three ticks happen (edges 11, 21, 31), then the guest reprograms.
        pit.write_port(0x43, 0x34, at(35));
        assert_eq!(pit.next_irq0_deadline_ns(), Some(at(35)));
        assert_eq!(pit.irq0_pending(at(36)), 3);
        assert_eq!(pit.next_irq0_deadline_ns(), None);
        pit.write_port(0x40, 20, at(40));
        pit.write_port(0x40, 0, at(40));
        assert_eq!(pit.irq0_pending(at(61)), 1);
    }

    #[test]
    fn counter_latch_freezes_the_value() {
        let mut pit = Pit8254::new();
        pit.write_port(0x43, 0x34, at(0));
        pit.write_port(0x40, 0xE8, at(0));
        pit.write_port(0x40, 0x03, at(0)); // 1000
        pit.write_port(0x43, 0x00, at(101)); // 900 left
        pit.write_port(0x43, 0x00, at(201)); // ignored: a latch is pending
        assert_eq!(pit.read_port(0x40, at(500)), 0x84);
        assert_eq!(pit.read_port(0x40, at(600)), 0x03);
        // Unlatched: each byte samples the live counter.
        assert_eq!(pit.read_port(0x40, at(701)), (300u16 & 0xFF) as u8);
        assert_eq!(pit.read_port(0x40, at(701)), 1);
        // LSB-only and MSB-only access modes.
        pit.write_port(0x43, 0x14, at(1000)); // LSB only, mode 2
        pit.write_port(0x40, 200, at(1000));
        assert_eq!(pit.reload(0), 200);
        pit.write_port(0x43, 0x00, at(1051));
        assert_eq!(pit.read_port(0x40, 0), 150);
        assert_eq!(pit.read_port(0x40, at(1051)), 150);
        pit.write_port(0x43, 0x24, at(2000)); // MSB only
        pit.write_port(0x40, 0x02, at(2000));
        assert_eq!(pit.reload(0), 0x200);
        assert_eq!(pit.read_port(0x40, at(2001 + 0x100)), 0x01);
    }

    #[test]
    fn read_back_command_latches_count_and_status() {
        let mut pit = Pit8254::new();
        pit.write_port(0x43, 0xB0, at(0)); // ch2, LSB/MSB, mode 0
        pit.write_port(0x61, port61::GATE2, at(0));
        pit.write_port(0x42, 0x00, at(0));
        pit.write_port(0x42, 0x01, at(0)); // 256
                                           // Read-back count and status of channel 2: status first, then the count.
        pit.write_port(0x43, 0xC8, at(11));
        assert_eq!(pit.read_port(0x42, at(50)), 0x30); // OUT low, mode 0, LSB/MSB
        assert_eq!(pit.read_port(0x42, at(50)), 0xF6);
        assert_eq!(pit.read_port(0x42, at(50)), 0x00);
        // Status alone, after the terminal count: OUT high.
        pit.write_port(0x43, 0xE8, at(300));
        assert_eq!(pit.read_port(0x42, at(300)), 0xB0);
        // Right after a control word, NULL COUNT is set.
        pit.write_port(0x43, 0xB6, at(400));
        pit.write_port(0x43, 0xE8, at(400));
        assert_eq!(pit.read_port(0x42, at(400)), 0xF6); // mode 3: OUT high at once
                                                        // Read-back of a channel that is not selected does nothing: the next read is
                                                        // the live LSB of the count held since the control word (0x10000 + 256 - 399).
        pit.write_port(0x43, 0xC2, at(400));
        assert_eq!(pit.read_port(0x42, at(400)), 0x71);
    }

    #[test]
    fn linux_pit_calibrate_tsc_sequence() {
        // arch/x86/kernel/tsc.c pit_calibrate_tsc(latch = 1193182 / 20, ms = 50):
        // gate high, speaker off; ch2 mode 0 LSB/MSB; poll 0x61 bit 5.
        let latch: u16 = (PIT_HZ / 20) as u16;
        let mut pit = Pit8254::new();
        let t = 5 * MS;
        let v = pit.read_port(0x61, t);
        pit.write_port(0x61, (v & !port61::SPEAKER) | port61::GATE2, t);
        pit.write_port(0x43, 0xB0, t);
        pit.write_port(0x42, latch as u8, t);
        pit.write_port(0x42, (latch >> 8) as u8, t);
        let mut now = t;
        let mut polls = 0;
        while pit.read_port(0x61, now) & port61::OUT2 == 0 {
            now += 10_000; // 10 us per poll
            polls += 1;
        }
        // 50 ms worth of polls, give or take one.
        assert!((4999..=5001).contains(&polls), "{polls}");
        assert!(pit.gate2());
        // Channel 2 never touches IRQ 0.
        assert_eq!(pit.irq0_pending(now), 0);
    }

    #[test]
    fn linux_quick_pit_calibrate_sequence() {
        // quick_pit_calibrate: ch2 mode 0, count 0xFFFF, then read the counter
        // unlatched (LSB, MSB) and watch the MSB step down every 256 clocks.
        let mut pit = Pit8254::new();
        let t = at(1000);
        let v = pit.read_port(0x61, t);
        pit.write_port(0x61, (v & !port61::SPEAKER) | port61::GATE2, t);
        pit.write_port(0x43, 0xB0, t);
        pit.write_port(0x42, 0xFF, t);
        pit.write_port(0x42, 0xFF, t);
        let msb_at = |pit: &mut Pit8254, tick: u64| {
            pit.read_port(0x42, at(tick));
            pit.read_port(0x42, at(tick))
        };
        // Loaded at edge 1001: 0xFFFF, then 0xFF00 after 255 more edges.
        assert_eq!(msb_at(&mut pit, 1001), 0xFF);
        assert_eq!(msb_at(&mut pit, 1001 + 255), 0xFF);
        assert_eq!(msb_at(&mut pit, 1001 + 256), 0xFE);
        for i in 1..=100u64 {
            assert_eq!(msb_at(&mut pit, 1001 + 256 * i + 10), 0xFF - i as u8);
        }
        assert_eq!(pit.read_port(0x61, at(1001 + 0xFFFE)) & port61::OUT2, 0);
        assert_ne!(pit.read_port(0x61, at(1001 + 0xFFFF)) & port61::OUT2, 0);
    }

    #[test]
    fn port61_bits_and_refresh_toggle() {
        let mut pit = Pit8254::new();
        assert_eq!(pit.read_port(0x61, 0), port61::REFRESH);
        assert_eq!(pit.read_port(0x61, 0), 0);
        pit.write_port(0x61, 0xFF, 0);
        // Only bits 3:0 are writable; OUT2 is low until channel 2 is programmed
        // (mode 0 after power-on).
        let a = pit.read_port(0x61, 0);
        let b = pit.read_port(0x61, 0);
        assert_eq!(a & 0xEF, 0x0F);
        assert_eq!(a ^ b, port61::REFRESH);
    }

    #[test]
    fn gate_controls_channel2() {
        let mut pit = Pit8254::new();
        // Mode 0 with the gate low: the count is loaded but does not run.
        pit.write_port(0x43, 0xB0, at(0));
        pit.write_port(0x42, 100, at(0));
        pit.write_port(0x42, 0, at(0));
        pit.write_port(0x43, 0x80, at(500));
        assert_eq!(pit.read_port(0x42, 0), 100);
        assert_eq!(pit.read_port(0x42, 0), 0);
        pit.write_port(0x61, port61::GATE2, at(1000));
        assert_eq!(pit.read_port(0x61, at(1059)) & port61::OUT2, 0);
        // Suspend for a while at 40 remaining.
        pit.write_port(0x61, 0, at(1060));
        assert_eq!(pit.read_port(0x61, at(5000)) & port61::OUT2, 0);
        pit.write_port(0x61, port61::GATE2, at(6000));
        assert_eq!(pit.read_port(0x61, at(6039)) & port61::OUT2, 0);
        assert_ne!(pit.read_port(0x61, at(6040)) & port61::OUT2, 0);

        // Mode 2 with gate: low forces OUT high and stops; rising restarts the count.
        pit.write_port(0x43, 0xB4, at(7000));
        pit.write_port(0x42, 10, at(7000));
        pit.write_port(0x42, 0, at(7000));
        assert!(!pit.out(2, at(7010)));
        pit.write_port(0x61, 0, at(7010));
        assert!(pit.out(2, at(7010)));
        pit.write_port(0x43, 0x80, at(7100));
        assert_eq!(pit.read_port(0x42, 0), 1);
        assert_eq!(pit.read_port(0x42, 0), 0);
        pit.write_port(0x61, port61::GATE2, at(8000));
        assert_eq!(pit.read_port(0x42, at(8001)), 10);
        assert_eq!(pit.read_port(0x42, at(8001)), 0);

        // Mode 1: the gate's rising edge triggers the one-shot.
        pit.write_port(0x61, 0, at(9000));
        pit.write_port(0x43, 0xB2, at(9000));
        pit.write_port(0x42, 5, at(9000));
        pit.write_port(0x42, 0, at(9000));
        assert!(pit.out(2, at(9100)));
        pit.write_port(0x61, port61::GATE2, at(9100));
        assert!(!pit.out(2, at(9105)));
        assert!(pit.out(2, at(9106)));
    }

    #[test]
    fn edges_survive_gate_pauses_exactly_once() {
        // Channel 2 has the only gate a guest controls; its OUT edges use the same
        // bookkeeping as IRQ 0's, so check it directly.
        let mut ch = Channel::new(true);
        ch.control_word(0, 0x30); // mode 0, LSB/MSB
        ch.write_count(0, 10);
        ch.write_count(0, 0);
        // Terminal count at edge 11; pause after it, resume, pause, resume.
        ch.set_gate(20, false);
        assert_eq!(ch.total_edges(20), 1);
        ch.set_gate(30, true);
        assert_eq!(ch.total_edges(1000), 1);
        assert!(ch.out(1000));
        ch.set_gate(1001, false);
        ch.set_gate(1002, true);
        assert_eq!(ch.total_edges(100_000), 1);
        // Pause before the terminal count: the edge comes after resuming, once.
        ch.write_count(100_000, 10);
        ch.write_count(100_000, 0);
        ch.set_gate(100_005, false);
        assert_eq!(ch.total_edges(200_000), 1);
        ch.set_gate(200_000, true);
        assert_eq!(ch.total_edges(200_005), 1);
        assert_eq!(ch.total_edges(200_006), 2);
        // Reloading with LSB-only access straight from a fired run.
        ch.control_word(300_000, 0x10);
        ch.write_count(300_000, 3);
        assert_eq!(ch.total_edges(300_004), 3);
        ch.write_count(300_010, 3);
        assert_eq!(ch.total_edges(300_013), 3);
        assert_eq!(ch.total_edges(300_014), 4);
    }

    #[test]
    fn mode4_strobe_is_one_irq() {
        let mut pit = Pit8254::new();
        pit.write_port(0x43, 0x38, at(0));
        pit.write_port(0x40, 10, at(0));
        pit.write_port(0x40, 0, at(0));
        assert!(pit.out(0, at(10)));
        assert!(!pit.out(0, at(11)));
        assert!(pit.out(0, at(12)));
        assert_eq!(pit.next_irq0_deadline_ns(), Some(at(12)));
        assert_eq!(pit.irq0_pending(at(11)), 0);
        assert_eq!(pit.irq0_pending(at(50_000)), 1);
        assert_eq!(pit.next_irq0_deadline_ns(), None);
    }

    #[test]
    fn bcd_counting() {
        let mut pit = Pit8254::new();
        pit.write_port(0x43, 0x35, at(0)); // mode 2, BCD
        pit.write_port(0x40, 0x00, at(0));
        pit.write_port(0x40, 0x10, at(0)); // 1000 decimal
        assert_eq!(pit.reload(0), 1000);
        pit.write_port(0x43, 0x00, at(1 + 1));
        assert_eq!(pit.read_port(0x40, 0), 0x99);
        assert_eq!(pit.read_port(0x40, 0), 0x09);
        assert_eq!(pit.irq0_pending(at(1 + 3000)), 3);
        // A BCD count of 0 means 10000.
        pit.write_port(0x40, 0, at(5000));
        pit.write_port(0x40, 0, at(5000));
        pit.write_port(0x43, 0x35, at(6000));
        pit.write_port(0x40, 0, at(6000));
        pit.write_port(0x40, 0, at(6000));
        assert_eq!(pit.reload(0), 10_000);
    }

    #[test]
    fn wide_and_foreign_ports() {
        let mut pit = Pit8254::new();
        assert_eq!(pit.read_port(0x43, 0), 0xFF);
        assert_eq!(pit.read_port(0x44, 0), 0xFF);
        // outw 0x42 writes the LSB to channel 2 and a control word to 0x43.
        pit.port_io(0x42, 2, true, 0x0000, at(0));
        assert_eq!(pit.mode(0), 0);
        pit.write_port(0x44, 0x12, 0);
        pit.write_port(0x60, 0x12, 0);
    }

    crate::state::testing::snap_impl!(Pit8254);

    /// A random guest access, VMM poll or time step on `pit` at `*now`; returns what
    /// either would observe.
    fn random_op(
        pit: &mut Pit8254,
        rng: &mut crate::state::testing::Rng,
        now: &mut u64,
    ) -> (u32, Option<u64>, bool) {
        *now += rng.below(3_000_000);
        let v = match rng.below(8) {
            0 | 1 => pit.port_io(0x40 + rng.below(3) as u16, 1, false, 0, *now),
            2 => {
                // Control words: counter latch, read-back, or reprogramming.
                let cw = match rng.below(3) {
                    0 => (rng.below(3) as u8) << 6,
                    1 => 0xC0 | (rng.byte() & 0x3E),
                    _ => rng.byte() & 0xBF | 0x30,
                };
                pit.port_io(0x43, 1, true, cw.into(), *now)
            }
            3 => pit.port_io(0x40 + rng.below(3) as u16, 1, true, rng.byte().into(), *now),
            4 => pit.port_io(0x61, 1, false, 0, *now),
            5 => pit.port_io(0x61, 1, true, rng.byte().into(), *now),
            _ => pit.irq0_pending(*now),
        };
        (
            v,
            pit.next_irq0_deadline_ns(),
            pit.out(rng.below(3) as usize, *now),
        )
    }

    /// Channel 0 periodic (Linux's HZ=1000 divisor) with a new count waiting for
    /// the end of its cycle and a count latched half read; channel 1 in mode 3 with
    /// only the LSB of a count written; channel 2 in mode 0 behind its gate with a
    /// status latched; some ticks already reported.
    fn busy_pit() -> (Pit8254, u64) {
        let mut pit = Pit8254::new();
        pit.write_port(0x43, 0x34, at(100));
        pit.write_port(0x40, (1193u16 & 0xFF) as u8, at(100));
        pit.write_port(0x40, (1193 >> 8) as u8, at(100));
        assert_eq!(pit.irq0_pending(at(5000)), 4);
        pit.write_port(0x40, 0x00, at(5100));
        pit.write_port(0x40, 0x02, at(5100)); // 512, from the end of this cycle
        pit.write_port(0x43, 0x00, at(5200));
        assert_eq!(
            pit.read_port(0x40, at(5300)),
            ((1193 - (5200 - 101) % 1193) & 0xFF) as u8
        );
        pit.write_port(0x43, 0x76, at(5300));
        pit.write_port(0x41, 0x10, at(5300));
        pit.write_port(0x61, port61::GATE2, at(5300));
        pit.write_port(0x43, 0xB0, at(5300));
        pit.write_port(0x42, 0x00, at(5300));
        pit.write_port(0x42, 0x10, at(5300));
        pit.write_port(0x61, 0, at(5400));
        pit.write_port(0x43, 0xE8, at(5500));
        (pit, at(5500))
    }

    #[test]
    fn snapshot_restores_identical_behaviour() {
        let (a, now) = busy_pit();
        let snap = a.state();
        assert_eq!(&snap[..8], b"pit8254 ");
        let mut b = Pit8254::new();
        b.restore(&snap).unwrap();
        assert_eq!(b.state(), snap);
        assert_eq!(b.next_irq0_deadline_ns(), a.next_irq0_deadline_ns());
        assert_eq!((b.mode(1), b.reload(0), b.gate2()), (3, 512, false));
        let (mut a, mut b) = ((a, now), (b, now));
        crate::state::testing::lockstep(&mut a, &mut b, 3, |(d, t), r| random_op(d, r, t));
        assert_eq!(a.0.state(), b.0.state());
    }

    #[test]
    fn snapshot_keeps_the_timeline() {
        // A restored PIT ticks on the same edges: the snapshot holds absolute edge
        // numbers and the guest clock continues from the snapshot's time.
        let (a, now) = busy_pit();
        let mut b = Pit8254::new();
        b.restore(&a.state()).unwrap();
        let mut a = a;
        let mut ticks = 0;
        for t in (1..200).map(|i| now + i * 333_333) {
            let n = b.irq0_pending(t);
            assert_eq!(a.irq0_pending(t), n, "at {t}");
            ticks += n;
        }
        // The count written at edge 5100 (512) runs from its cycle's end: about
        // 66.3 ms * PIT_HZ / 512 periods, where the old one (1193) would give 66.
        assert!((153..=156).contains(&ticks), "{ticks}");
    }

    #[test]
    fn snapshot_refusals_and_corruption() {
        let (pit, now) = busy_pit();
        let snap = pit.state();
        let mut p = Pit8254::new();
        crate::state::testing::check_refusals(&mut p, &snap, |p| {
            let mut rng = crate::state::testing::Rng::new(4);
            let mut t = now;
            for _ in 0..40 {
                random_op(p, &mut rng, &mut t);
            }
            // Far in the future too: nothing overflows.
            let _ = p.irq0_pending(u64::MAX);
            let _ = p.next_irq0_deadline_ns();
            let _ = p.read_port(0x40, u64::MAX);
        });
        // Channel 0's GATE is wired high: a snapshot with it low is refused.
        let mut bad = snap.clone();
        bad[10 + 3] = 0;
        assert!(matches!(
            p.restore(&bad),
            Err(StateError::Invalid { what, .. }) if what.contains("GATE")
        ));
    }
}
