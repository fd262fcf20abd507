//! The PC's CMOS RAM and real-time clock (an MC146818A, as integrated in every PC
//! chipset) at ports 0x70 (index) and 0x71 (data).
//!
//! Register layout and status bits follow the Motorola MC146818A datasheet; the memory
//! size bytes are the ones QEMU and SeaBIOS agree on (what firmware and old OS loaders
//! read instead of an e820 map).
//!
//! ## Time
//!
//! The clock reads the caller's wall clock: every access takes `now_unix_ns`,
//! nanoseconds since 1970-01-01 00:00:00 UTC. A guest that sets the clock (through
//! status B's SET bit, or by simply writing a time register) moves its own offset
//! from that time, as on a PC where each machine keeps its own RTC. The calendar
//! arithmetic is done here, on proleptic Gregorian dates (no globals, no libc).
//!
//! ## Not modelled
//!
//! * Interrupts (IRQ 8): periodic, alarm and update-ended interrupts are never raised.
//!   Status C's update-ended flag (UF) is still set once per second so code that polls
//!   for it works; alarm and periodic flags stay 0.
//! * The update cycle: UIP (status A bit 7) always reads 0, so the time registers can
//!   be read at any moment (Linux's `mc146818_get_time` waits for UIP clear).
//! * Daylight saving (status B DSE) and the divider's effect on the clock.
//! * The second 128-byte bank at 0x72/0x73.

use alloc::vec::Vec;

use crate::bus::{read_bytewise, write_bytewise};
use crate::state::{Reader, StateError, Tag, Writer};

/// The index port; the data port is the next one.
pub const CMOS_BASE: u16 = 0x70;
/// Ports decoded from [`CMOS_BASE`].
pub const CMOS_PORT_COUNT: u16 = 2;
/// The ISA IRQ of the RTC (never raised by this model).
pub const RTC_IRQ: u8 = 8;
/// Bytes of CMOS RAM, clock registers included.
pub const CMOS_SIZE: usize = 128;

/// Register indexes.
pub mod reg {
    pub const SECONDS: u8 = 0x00;
    pub const SECONDS_ALARM: u8 = 0x01;
    pub const MINUTES: u8 = 0x02;
    pub const MINUTES_ALARM: u8 = 0x03;
    pub const HOURS: u8 = 0x04;
    pub const HOURS_ALARM: u8 = 0x05;
    /// 1-7, Sunday = 1.
    pub const DAY_OF_WEEK: u8 = 0x06;
    pub const DAY_OF_MONTH: u8 = 0x07;
    pub const MONTH: u8 = 0x08;
    /// The year within the century, 0-99.
    pub const YEAR: u8 = 0x09;
    pub const STATUS_A: u8 = 0x0A;
    pub const STATUS_B: u8 = 0x0B;
    pub const STATUS_C: u8 = 0x0C;
    pub const STATUS_D: u8 = 0x0D;
    /// Base memory in KiB (up to 640), low byte; high byte at 0x16.
    pub const BASE_MEM_LO: u8 = 0x15;
    pub const BASE_MEM_HI: u8 = 0x16;
    /// Extended memory above 1 MiB in KiB (up to 65535), low byte; high at 0x18.
    pub const EXT_MEM_LO: u8 = 0x17;
    pub const EXT_MEM_HI: u8 = 0x18;
    /// The same value again, as the POST "actual extended memory" bytes.
    pub const EXT_MEM_ACTUAL_LO: u8 = 0x30;
    pub const EXT_MEM_ACTUAL_HI: u8 = 0x31;
    /// The century (ACPI FADT's default `CENTURY` index).
    pub const CENTURY: u8 = 0x32;
    /// RAM between 16 MiB and 4 GiB in 64 KiB units, low byte; high byte at 0x35.
    pub const MEM_ABOVE_16M_LO: u8 = 0x34;
    pub const MEM_ABOVE_16M_HI: u8 = 0x35;
    /// RAM above 4 GiB in 64 KiB units, three bytes, least significant first.
    pub const MEM_ABOVE_4G: u8 = 0x5B;
}

/// Status A bits.
pub mod status_a {
    /// Update in progress (read-only; always 0 here).
    pub const UIP: u8 = 1 << 7;
    /// Divider 010 (32.768 kHz time base) and rate 0110 (1024 Hz), the PC default.
    pub const DEFAULT: u8 = 0x26;
}

/// Status B bits.
pub mod status_b {
    /// Updates inhibited so the time can be set.
    pub const SET: u8 = 1 << 7;
    pub const PIE: u8 = 1 << 6;
    pub const AIE: u8 = 1 << 5;
    pub const UIE: u8 = 1 << 4;
    pub const SQWE: u8 = 1 << 3;
    /// Data mode: binary (else BCD).
    pub const DM_BINARY: u8 = 1 << 2;
    /// Hours in 24-hour mode (else 12-hour with bit 7 = PM).
    pub const HOURS_24: u8 = 1 << 1;
    pub const DSE: u8 = 1 << 0;
    /// The PC default: 24-hour, BCD, no interrupts.
    pub const DEFAULT: u8 = HOURS_24;
}

/// Status C bits.
pub mod status_c {
    pub const IRQF: u8 = 1 << 7;
    pub const PF: u8 = 1 << 6;
    pub const AF: u8 = 1 << 5;
    pub const UF: u8 = 1 << 4;
}

/// Status D: valid RAM and time (the battery is good).
pub const STATUS_D_VRT: u8 = 1 << 7;

const SECS_PER_DAY: i64 = 86_400;

/// The proleptic Gregorian date of `days` since 1970-01-01, as (year, month 1-12,
/// day 1-31).
///
/// The era-based method of Howard Hinnant's "chrono-Compatible Low-Level Date
/// Algorithms": shift the epoch to 0000-03-01 so the leap day ends the year, split
/// into 400-year eras (146097 days each), then derive year-of-era and day-of-year.
pub fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days + 719_468; // days from 0000-03-01
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365], from March 1
    let mp = (5 * doy + 2) / 153; // month from March, [0, 11]
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month as u8, day as u8)
}

/// The inverse of [`civil_from_days`]: days since 1970-01-01 of a proleptic
/// Gregorian date (month 1-12, day 1-31; not range-checked against the month).
pub fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let (month, day) = (i64::from(month), i64::from(day));
    let y = year - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u8) -> u8 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// A broken-down time of day and date.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Civil {
    year: i64,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
}

impl Civil {
    fn from_unix(secs: i64) -> Self {
        let (year, month, day) = civil_from_days(secs.div_euclid(SECS_PER_DAY));
        let tod = secs.rem_euclid(SECS_PER_DAY);
        Self {
            year,
            month,
            day,
            hour: (tod / 3600) as u8,
            minute: (tod / 60 % 60) as u8,
            second: (tod % 60) as u8,
        }
    }

    fn to_unix(self) -> i64 {
        days_from_civil(self.year, self.month, self.day) * SECS_PER_DAY
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }

    /// 1-7 with Sunday = 1; 1970-01-01 was a Thursday.
    fn day_of_week(self) -> u8 {
        let days = days_from_civil(self.year, self.month, self.day);
        ((days + 4).rem_euclid(7) + 1) as u8
    }
}

/// The CMOS RAM and RTC.
#[derive(Clone, Debug)]
pub struct Cmos {
    ram: [u8; CMOS_SIZE],
    index: u8,
    nmi_disabled: bool,
    /// Guest time minus host time, in seconds.
    offset_secs: i64,
    /// While status B's SET bit is on: the guest's time, frozen.
    frozen: Option<i64>,
    /// The guest second at the last status C read, for UF.
    c_read_at: Option<i64>,
    /// The RAM sizes the memory bytes were filled from (the VM's shape, for
    /// [`Self::restore`]'s check).
    ram_below_4g: u64,
    ram_above_4g: u64,
}

impl Cmos {
    /// CMOS contents as QEMU's PC machine fills them for a guest with
    /// `ram_below_4g` bytes of RAM mapped below 4 GiB and `ram_above_4g` above it:
    /// base memory (0x15/0x16), extended memory (0x17/0x18, 0x30/0x31), memory above
    /// 16 MiB (0x34/0x35), memory above 4 GiB (0x5B-0x5D); status A 0x26, B 0x02
    /// (24-hour BCD), D 0x80. Everything else is 0; [`Self::set_byte`] fills more.
    pub fn new(ram_below_4g: u64, ram_above_4g: u64) -> Self {
        const KIB: u64 = 1024;
        const MIB: u64 = 1024 * KIB;
        let mut ram = [0u8; CMOS_SIZE];
        let mut put16 = |index: u8, value: u64| {
            let [lo, hi] = (value.min(0xFFFF) as u16).to_le_bytes();
            ram[usize::from(index)] = lo;
            ram[usize::from(index) + 1] = hi;
        };
        put16(reg::BASE_MEM_LO, (ram_below_4g / KIB).min(640));
        let extended = ram_below_4g.saturating_sub(MIB) / KIB;
        put16(reg::EXT_MEM_LO, extended);
        put16(reg::EXT_MEM_ACTUAL_LO, extended);
        put16(
            reg::MEM_ABOVE_16M_LO,
            ram_below_4g.saturating_sub(16 * MIB) / (64 * KIB),
        );
        let high = (ram_above_4g / (64 * KIB)).min(0xFF_FFFF) as u32;
        let start = usize::from(reg::MEM_ABOVE_4G);
        ram[start..start + 3].copy_from_slice(&high.to_le_bytes()[..3]);
        ram[usize::from(reg::STATUS_A)] = status_a::DEFAULT;
        ram[usize::from(reg::STATUS_B)] = status_b::DEFAULT;
        Self {
            ram,
            index: 0,
            nmi_disabled: false,
            offset_secs: 0,
            frozen: None,
            c_read_at: None,
            ram_below_4g,
            ram_above_4g,
        }
    }

    /// A byte read from `port` (0x70 or 0x71). The index register is write-only and
    /// reads 0xFF, as on QEMU; other ports read 0xFF too.
    pub fn read_port(&mut self, port: u16, now_unix_ns: u64) -> u8 {
        match port {
            0x71 => self.read_reg(self.index, now_unix_ns),
            _ => 0xFF,
        }
    }

    /// A byte written to `port` (0x70 or 0x71); other ports are ignored.
    pub fn write_port(&mut self, port: u16, value: u8, now_unix_ns: u64) {
        match port {
            // Bit 7 is the chipset's NMI mask, not part of the index.
            0x70 => {
                self.index = value & 0x7F;
                self.nmi_disabled = value & 0x80 != 0;
            }
            0x71 => self.write_reg(self.index, value, now_unix_ns),
            _ => {}
        }
    }

    /// One port-I/O exit at absolute `port`; wide accesses become byte accesses at
    /// consecutive ports.
    pub fn port_io(
        &mut self,
        port: u16,
        size: u8,
        write: bool,
        value: u32,
        now_unix_ns: u64,
    ) -> u32 {
        if write {
            write_bytewise(port, size, value, |p, b| self.write_port(p, b, now_unix_ns));
            0
        } else {
            read_bytewise(port, size, |p| self.read_port(p, now_unix_ns))
        }
    }

    /// Register `index` (0-127) as the guest reads it, with side effects (status C
    /// clears).
    pub fn read_reg(&mut self, index: u8, now_unix_ns: u64) -> u8 {
        let index = index & 0x7F;
        match index {
            reg::SECONDS
            | reg::MINUTES
            | reg::HOURS
            | reg::DAY_OF_WEEK
            | reg::DAY_OF_MONTH
            | reg::MONTH
            | reg::YEAR
            | reg::CENTURY => self.time_register(index, now_unix_ns),
            reg::STATUS_A => self.ram[usize::from(index)] & !status_a::UIP,
            reg::STATUS_C => {
                let now = self.guest_secs(now_unix_ns);
                let mut flags = 0;
                if self.frozen.is_none() && self.c_read_at != Some(now) {
                    flags |= status_c::UF;
                    if self.status_b() & status_b::UIE != 0 {
                        flags |= status_c::IRQF;
                    }
                }
                self.c_read_at = Some(now);
                flags
            }
            reg::STATUS_D => STATUS_D_VRT,
            _ => self.ram[usize::from(index)],
        }
    }

    /// Writes register `index` (0-127) as the guest does. Writing a time register
    /// sets the guest's clock; status C and D are read-only.
    pub fn write_reg(&mut self, index: u8, value: u8, now_unix_ns: u64) {
        let index = index & 0x7F;
        match index {
            reg::SECONDS
            | reg::MINUTES
            | reg::HOURS
            | reg::DAY_OF_MONTH
            | reg::MONTH
            | reg::YEAR
            | reg::CENTURY => self.set_time_register(index, value, now_unix_ns),
            // The day of week follows from the date here, so writes are dropped.
            reg::DAY_OF_WEEK | reg::STATUS_C | reg::STATUS_D => {}
            reg::STATUS_A => self.ram[usize::from(index)] = value & !status_a::UIP,
            reg::STATUS_B => {
                let old = self.status_b();
                let mut value = value;
                if value & status_b::SET != 0 {
                    // Setting SET also clears UIE (datasheet).
                    value &= !status_b::UIE;
                    if old & status_b::SET == 0 {
                        self.frozen = Some(self.guest_secs(now_unix_ns));
                    }
                } else if let Some(frozen) = self.frozen.take() {
                    // The clock runs again from the time the guest set.
                    self.offset_secs = frozen - host_secs(now_unix_ns);
                }
                self.ram[usize::from(index)] = value;
            }
            _ => self.ram[usize::from(index)] = value,
        }
    }

    /// A raw CMOS byte (no time computation, no side effects), for the VMM.
    pub fn byte(&self, index: u8) -> u8 {
        self.ram[usize::from(index & 0x7F)]
    }

    /// Sets a raw CMOS byte, for the VMM filling configuration bytes (the equipment
    /// byte 0x14, the CPU count SeaBIOS reads at 0x5F, boot order...).
    pub fn set_byte(&mut self, index: u8, value: u8) {
        self.ram[usize::from(index & 0x7F)] = value;
    }

    /// The index register (bits 6:0 of the last write to port 0x70).
    pub fn index(&self) -> u8 {
        self.index
    }

    /// Bit 7 of the last write to port 0x70: the guest asked for NMIs to be masked.
    pub fn nmi_disabled(&self) -> bool {
        self.nmi_disabled
    }

    /// The guest's clock, in seconds since the Unix epoch.
    pub fn guest_secs(&self, now_unix_ns: u64) -> i64 {
        self.frozen
            .unwrap_or_else(|| host_secs(now_unix_ns) + self.offset_secs)
    }

    fn status_b(&self) -> u8 {
        self.ram[usize::from(reg::STATUS_B)]
    }

    fn binary(&self) -> bool {
        self.status_b() & status_b::DM_BINARY != 0
    }

    fn encode(&self, value: u8) -> u8 {
        if self.binary() {
            value
        } else {
            ((value / 10) << 4) | (value % 10)
        }
    }

    /// Decodes a guest-written field; `None` for a malformed BCD digit.
    fn decode(&self, value: u8) -> Option<u8> {
        if self.binary() {
            Some(value)
        } else if value & 0x0F > 9 || value >> 4 > 9 {
            None
        } else {
            Some((value >> 4) * 10 + (value & 0x0F))
        }
    }

    fn time_register(&self, index: u8, now_unix_ns: u64) -> u8 {
        let t = Civil::from_unix(self.guest_secs(now_unix_ns));
        match index {
            reg::SECONDS => self.encode(t.second),
            reg::MINUTES => self.encode(t.minute),
            reg::HOURS => {
                if self.status_b() & status_b::HOURS_24 != 0 {
                    self.encode(t.hour)
                } else {
                    // 12-hour mode: 12, 1-11 with bit 7 set for PM.
                    let pm = if t.hour >= 12 { 0x80 } else { 0 };
                    let h12 = match t.hour % 12 {
                        0 => 12,
                        h => h,
                    };
                    self.encode(h12) | pm
                }
            }
            reg::DAY_OF_WEEK => self.encode(t.day_of_week()),
            reg::DAY_OF_MONTH => self.encode(t.day),
            reg::MONTH => self.encode(t.month),
            reg::YEAR => self.encode(t.year.rem_euclid(100) as u8),
            _ => self.encode(t.year.div_euclid(100).clamp(0, 99) as u8),
        }
    }

    /// Replaces one field of the guest's time. Malformed values (bad BCD, out of
    /// range) are dropped; a day past the end of the new month is clamped to it.
    fn set_time_register(&mut self, index: u8, value: u8, now_unix_ns: u64) {
        let mut t = Civil::from_unix(self.guest_secs(now_unix_ns));
        let field = if index == reg::HOURS && self.status_b() & status_b::HOURS_24 == 0 {
            // 12-hour mode: bit 7 is PM, the rest is 12, 1-11.
            self.decode(value & 0x7F)
                .filter(|h| (1..=12).contains(h))
                .map(|h| h % 12 + if value & 0x80 != 0 { 12 } else { 0 })
        } else {
            self.decode(value)
        };
        let Some(v) = field else {
            return;
        };
        match index {
            reg::SECONDS if v < 60 => t.second = v,
            reg::MINUTES if v < 60 => t.minute = v,
            reg::HOURS if v < 24 => t.hour = v,
            reg::DAY_OF_MONTH if (1..=31).contains(&v) => t.day = v,
            reg::MONTH if (1..=12).contains(&v) => t.month = v,
            reg::YEAR if v < 100 => t.year = t.year.div_euclid(100) * 100 + i64::from(v),
            reg::CENTURY if v < 100 => t.year = i64::from(v) * 100 + t.year.rem_euclid(100),
            _ => return,
        }
        t.day = t.day.min(days_in_month(t.year, t.month));
        let secs = t.to_unix();
        match self.frozen.as_mut() {
            Some(frozen) => *frozen = secs,
            None => self.offset_secs = secs - host_secs(now_unix_ns),
        }
    }
}

/// The largest guest time (or offset from the host's) in seconds, either way, a
/// snapshot may hold: about 34,800 years. The registers reach years 0-9999 and the
/// host clock (u64 ns) 584 years past 1970, so every real value is far inside, and
/// the calendar arithmetic on anything inside stays far from overflowing.
const MAX_SNAPSHOT_SECS: i64 = 1 << 40;

impl Cmos {
    /// The tag of [`Self::state`] (see [`crate::state`]).
    pub const STATE_TAG: Tag = *b"cmos-rtc";
    /// Bumped whenever the field list changes.
    pub const STATE_VERSION: u16 = 1;

    /// The 128 bytes of CMOS RAM (status registers included), the index register
    /// and NMI mask bit, the guest's clock as its offset from the host's wall clock
    /// (seconds) or the time it froze at while status B's SET bit is on, and the
    /// guest second of the last status C read, in the format of [`crate::state`].
    /// The RAM sizes the device was made for are stored to be compared.
    ///
    /// The clock follows the wall clock it is given (see the module notes): a
    /// restored guest reads the restoring host's time moved by its own offset, as a
    /// PC's battery-backed clock keeps time across a suspend.
    pub fn state(&self) -> Vec<u8> {
        let mut w = Writer::new(&Self::STATE_TAG, Self::STATE_VERSION);
        w.u64(self.ram_below_4g);
        w.u64(self.ram_above_4g);
        w.raw(&self.ram);
        w.u8(self.index);
        w.bool(self.nmi_disabled);
        w.i64(self.offset_secs);
        w.opt_i64(self.frozen);
        w.opt_i64(self.c_read_at);
        w.finish()
    }

    /// Takes back what [`Self::state`] returned, for a CMOS made for the same RAM
    /// sizes; nothing changes on an error. The memory-size bytes come from the
    /// snapshot like the rest of the RAM (the guest can write them).
    pub fn restore(&mut self, data: &[u8]) -> Result<(), StateError> {
        let mut r = Reader::new(data, &Self::STATE_TAG, Self::STATE_VERSION)?;
        r.expect_u64("RAM below 4 GiB (bytes)", self.ram_below_4g)?;
        r.expect_u64("RAM above 4 GiB (bytes)", self.ram_above_4g)?;
        let ram = r.array::<CMOS_SIZE>()?;
        let index = r.u8()?;
        r.check(index <= 0x7F, "index register (bit 7 is the NMI mask)")?;
        let nmi_disabled = r.bool()?;
        let offset_secs = r.i64()?;
        let frozen = r.opt_i64()?;
        let c_read_at = r.opt_i64()?;
        r.end()?;
        let in_range = |v: i64| (-MAX_SNAPSHOT_SECS..=MAX_SNAPSHOT_SECS).contains(&v);
        r.check(in_range(offset_secs), "clock offset")?;
        r.check(frozen.is_none_or(in_range), "frozen time")?;
        r.check(c_read_at.is_none_or(in_range), "status C read time")?;
        self.ram = ram;
        self.index = index;
        self.nmi_disabled = nmi_disabled;
        self.offset_secs = offset_secs;
        self.frozen = frozen;
        self.c_read_at = c_read_at;
        Ok(())
    }
}

fn host_secs(now_unix_ns: u64) -> i64 {
    (now_unix_ns / 1_000_000_000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;
    const NS: u64 = 1_000_000_000;

    /// 2024-02-29 13:45:07 UTC, a Thursday.
    const LEAP_DAY: u64 = 1_709_214_307;

    fn cmos() -> Cmos {
        Cmos::new(128 * MIB, 0)
    }

    fn read(c: &mut Cmos, index: u8, now: u64) -> u8 {
        c.write_port(0x70, index, now);
        c.read_port(0x71, now)
    }

    fn write(c: &mut Cmos, index: u8, value: u8, now: u64) {
        c.write_port(0x70, index, now);
        c.write_port(0x71, value, now);
    }

    #[test]
    fn calendar_round_trips_and_known_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(47_541), (2100, 3, 1)); // 2100 is not leap
        assert_eq!(
            days_from_civil(2100, 2, 28) + 1,
            days_from_civil(2100, 3, 1)
        );
        for days in (-800_000..800_000).step_by(97) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
            assert!((1..=days_in_month(y, m)).contains(&d));
        }
    }

    #[test]
    fn time_in_bcd_24h_by_default() {
        let mut c = cmos();
        let now = LEAP_DAY * NS + 999_999_999;
        assert_eq!(read(&mut c, reg::SECONDS, now), 0x07);
        assert_eq!(read(&mut c, reg::MINUTES, now), 0x45);
        assert_eq!(read(&mut c, reg::HOURS, now), 0x13);
        assert_eq!(read(&mut c, reg::DAY_OF_WEEK, now), 5); // Thursday
        assert_eq!(read(&mut c, reg::DAY_OF_MONTH, now), 0x29);
        assert_eq!(read(&mut c, reg::MONTH, now), 0x02);
        assert_eq!(read(&mut c, reg::YEAR, now), 0x24);
        assert_eq!(read(&mut c, reg::CENTURY, now), 0x20);
        assert_eq!(read(&mut c, reg::STATUS_A, now), 0x26);
        assert_eq!(read(&mut c, reg::STATUS_B, now), 0x02);
        assert_eq!(read(&mut c, reg::STATUS_D, now), 0x80);
        // The NMI-disable bit does not take part in indexing.
        c.write_port(0x70, 0x80 | reg::MINUTES, now);
        assert!(c.nmi_disabled());
        assert_eq!(c.index(), reg::MINUTES);
        assert_eq!(c.read_port(0x71, now), 0x45);
        assert_eq!(c.read_port(0x70, now), 0xFF);
    }

    #[test]
    fn binary_and_12_hour_modes() {
        let mut c = cmos();
        let now = LEAP_DAY * NS;
        write(
            &mut c,
            reg::STATUS_B,
            status_b::DM_BINARY | status_b::HOURS_24,
            now,
        );
        assert_eq!(read(&mut c, reg::HOURS, now), 13);
        assert_eq!(read(&mut c, reg::YEAR, now), 24);
        assert_eq!(read(&mut c, reg::CENTURY, now), 20);
        write(&mut c, reg::STATUS_B, 0, now); // BCD, 12-hour
        assert_eq!(read(&mut c, reg::HOURS, now), 0x81); // 1 PM
        let midnight = (LEAP_DAY - 13 * 3600 - 45 * 60 - 7) * NS;
        assert_eq!(read(&mut c, reg::HOURS, midnight), 0x12); // 12 AM
        assert_eq!(read(&mut c, reg::HOURS, midnight + 12 * 3600 * NS), 0x92); // 12 PM
        write(&mut c, reg::STATUS_B, status_b::DM_BINARY, now);
        assert_eq!(read(&mut c, reg::HOURS, now), 0x81);
    }

    #[test]
    fn status_c_reports_updates_and_clears_on_read() {
        let mut c = cmos();
        let now = LEAP_DAY * NS;
        assert_eq!(read(&mut c, reg::STATUS_C, now), status_c::UF);
        assert_eq!(read(&mut c, reg::STATUS_C, now), 0);
        assert_eq!(read(&mut c, reg::STATUS_C, now + NS / 2), 0);
        write(
            &mut c,
            reg::STATUS_B,
            status_b::DEFAULT | status_b::UIE,
            now,
        );
        assert_eq!(
            read(&mut c, reg::STATUS_C, now + NS),
            status_c::UF | status_c::IRQF
        );
        assert_eq!(read(&mut c, reg::STATUS_C, now + NS), 0);
        // Writes to C and D are ignored; A's UIP bit is read-only.
        write(&mut c, reg::STATUS_C, 0xFF, now);
        write(&mut c, reg::STATUS_D, 0x00, now);
        write(&mut c, reg::STATUS_A, 0xA6, now);
        assert_eq!(read(&mut c, reg::STATUS_D, now), 0x80);
        assert_eq!(read(&mut c, reg::STATUS_A, now), 0x26);
    }

    #[test]
    fn guest_sets_the_clock_with_set_bit() {
        let mut c = cmos();
        let now = LEAP_DAY * NS;
        // Linux's mc146818_set_time: SET, write the fields, clear SET.
        write(
            &mut c,
            reg::STATUS_B,
            status_b::DEFAULT | status_b::SET,
            now,
        );
        write(&mut c, reg::YEAR, 0x99, now);
        write(&mut c, reg::CENTURY, 0x19, now);
        write(&mut c, reg::MONTH, 0x12, now);
        write(&mut c, reg::DAY_OF_MONTH, 0x31, now);
        write(&mut c, reg::HOURS, 0x23, now);
        write(&mut c, reg::MINUTES, 0x59, now);
        write(&mut c, reg::SECONDS, 0x50, now);
        // Frozen while SET is on.
        assert_eq!(read(&mut c, reg::SECONDS, now + 5 * NS), 0x50);
        let later = now + 100 * NS;
        write(&mut c, reg::STATUS_B, status_b::DEFAULT, later);
        assert_eq!(read(&mut c, reg::SECONDS, later + 15 * NS), 0x05);
        assert_eq!(read(&mut c, reg::MINUTES, later + 15 * NS), 0x00);
        assert_eq!(read(&mut c, reg::YEAR, later + 15 * NS), 0x00);
        assert_eq!(read(&mut c, reg::CENTURY, later + 15 * NS), 0x20);
        assert_eq!(read(&mut c, reg::MONTH, later + 15 * NS), 0x01);
        assert_eq!(read(&mut c, reg::DAY_OF_WEEK, later + 15 * NS), 7); // Saturday
                                                                        // Direct writes without SET move the clock too; bad values are dropped.
        write(&mut c, reg::MINUTES, 0x30, later);
        assert_eq!(read(&mut c, reg::MINUTES, later), 0x30);
        write(&mut c, reg::MINUTES, 0x7A, later);
        write(&mut c, reg::MONTH, 0x13, later);
        assert_eq!(read(&mut c, reg::MINUTES, later), 0x30);
        assert_eq!(read(&mut c, reg::MONTH, later), 0x12);
        // 12-hour writes: 12 AM is hour 0.
        write(&mut c, reg::STATUS_B, 0, later);
        write(&mut c, reg::HOURS, 0x12, later);
        write(&mut c, reg::STATUS_B, status_b::DEFAULT, later);
        assert_eq!(read(&mut c, reg::HOURS, later), 0x00);
    }

    #[test]
    fn memory_size_registers_like_qemu() {
        let word = |c: &Cmos, lo: u8| u16::from_le_bytes([c.byte(lo), c.byte(lo + 1)]);
        let mut c = Cmos::new(32 * MIB, 0);
        assert_eq!(word(&c, reg::BASE_MEM_LO), 640);
        assert_eq!(word(&c, reg::EXT_MEM_LO), 31 * 1024);
        assert_eq!(word(&c, reg::EXT_MEM_ACTUAL_LO), 31 * 1024);
        assert_eq!(word(&c, reg::MEM_ABOVE_16M_LO), 16 * 16);
        assert_eq!(read(&mut c, reg::MEM_ABOVE_4G, 0), 0);

        // 3 GiB below the hole, 1 GiB above 4 GiB: extended memory saturates (it
        // does from 64 MiB on, which is why the 0x34/0x35 bytes exist).
        let mut c = Cmos::new(3072 * MIB, 1024 * MIB);
        assert_eq!(word(&c, reg::EXT_MEM_LO), 0xFFFF);
        assert_eq!(word(&c, reg::EXT_MEM_ACTUAL_LO), 0xFFFF);
        assert_eq!(word(&c, reg::MEM_ABOVE_16M_LO), ((3072 - 16) * 16) as u16);
        assert_eq!(read(&mut c, 0x5B, 0), 0x00);
        assert_eq!(read(&mut c, 0x5C, 0), 0x40);
        assert_eq!(read(&mut c, 0x5D, 0), 0x00);

        // Tiny guests.
        let c = Cmos::new(512 * 1024, 0);
        assert_eq!(c.byte(reg::BASE_MEM_LO), 0x00);
        assert_eq!(c.byte(reg::BASE_MEM_HI), 0x02);
        assert_eq!(c.byte(reg::EXT_MEM_LO), 0);
        assert_eq!(c.byte(reg::MEM_ABOVE_16M_LO), 0);
    }

    #[test]
    fn nvram_is_plain_storage() {
        let mut c = cmos();
        for index in 0x0E..0x80u8 {
            if index == reg::CENTURY {
                continue; // part of the clock
            }
            write(&mut c, index, index ^ 0xA5, 0);
            assert_eq!(read(&mut c, index, 0), index ^ 0xA5);
        }
        // Alarm registers are storage too.
        write(&mut c, reg::HOURS_ALARM, 0xC0, 0);
        assert_eq!(read(&mut c, reg::HOURS_ALARM, 0), 0xC0);
        c.set_byte(0x5F, 1);
        assert_eq!(read(&mut c, 0x5F, 0), 1);
        // Index bit 7 never reaches past the 128 bytes.
        assert_eq!(c.byte(0xFF), c.byte(0x7F));
        // Wide accesses: outw 0x70 writes the index then the data.
        c.port_io(0x70, 2, true, 0x5A_40, 0);
        assert_eq!(c.byte(0x40), 0x5A);
    }

    crate::state::testing::snap_impl!(Cmos);

    /// A random guest access at `*now` (the host's wall clock, moving on).
    fn random_op(c: &mut Cmos, rng: &mut crate::state::testing::Rng, now: &mut u64) -> u32 {
        *now += rng.below(700_000_000);
        let index = if rng.chance(2) {
            rng.below(14) as u8
        } else {
            rng.byte()
        };
        match rng.below(4) {
            0 => {
                c.write_port(0x70, index, *now);
                0
            }
            1 => {
                // BCD-looking values mostly, so that time writes take.
                let v = if rng.chance(2) {
                    rng.byte()
                } else {
                    (rng.below(6) as u8) << 4 | 5
                };
                c.write_port(0x71, v, *now);
                0
            }
            _ => c.read_port(0x71, *now).into(),
        }
    }

    /// The guest set its clock 3 days back and stopped it (SET) half-way through a
    /// second change, switched to binary 12-hour mode, read status C, wrote a
    /// configuration byte and left the index on the minutes with NMIs masked.
    fn busy_cmos() -> (Cmos, u64) {
        let mut c = Cmos::new(512 * MIB, 64 * MIB);
        let now = LEAP_DAY * NS;
        write(&mut c, reg::DAY_OF_MONTH, 0x26, now);
        write(&mut c, reg::STATUS_B, status_b::DM_BINARY, now + NS);
        read(&mut c, reg::STATUS_C, now + 2 * NS);
        write(&mut c, 0x40, 0xAB, now + 2 * NS);
        write(
            &mut c,
            reg::STATUS_B,
            status_b::SET | status_b::DM_BINARY,
            now + 5 * NS,
        );
        write(&mut c, reg::SECONDS, 30, now + 6 * NS);
        c.write_port(0x70, 0x80 | reg::MINUTES, now + 7 * NS);
        (c, now + 7 * NS)
    }

    #[test]
    fn snapshot_restores_identical_behaviour() {
        let (mut a, now) = busy_cmos();
        let snap = a.state();
        assert_eq!(&snap[..8], b"cmos-rtc");
        let mut b = Cmos::new(512 * MIB, 64 * MIB);
        b.restore(&snap).unwrap();
        assert_eq!(b.state(), snap);
        assert_eq!(
            (b.index(), b.nmi_disabled(), b.byte(0x40)),
            (reg::MINUTES, true, 0xAB)
        );
        // Frozen at 13:45:30 on the 26th, in binary 12-hour mode (1 PM is 0x81);
        // released later, it runs from the frozen time. Both see the same.
        for c in [&mut a, &mut b] {
            assert_eq!(c.read_port(0x71, now + 100 * NS), 45);
            assert_eq!(read(c, reg::SECONDS, now + 100 * NS), 30);
            assert_eq!(read(c, reg::HOURS, now), 0x81);
            assert_eq!(read(c, reg::DAY_OF_MONTH, now), 26);
            write(c, reg::STATUS_B, status_b::DM_BINARY, now + 10 * NS);
            assert_eq!(read(c, reg::SECONDS, now + 15 * NS), 35);
        }
        let (mut a, mut b) = ((a, now + 15 * NS), (b, now + 15 * NS));
        crate::state::testing::lockstep(&mut a, &mut b, 12, |(d, t), r| random_op(d, r, t));
        assert_eq!(a.0.state(), b.0.state());
    }

    #[test]
    fn snapshot_keeps_the_offset_from_the_wall_clock() {
        // A running clock set 3 days back: restored a day later (by the wall clock),
        // it is still 3 days behind the wall clock.
        let mut a = cmos();
        let now = LEAP_DAY * NS;
        write(&mut a, reg::DAY_OF_MONTH, 0x26, now);
        let mut b = cmos();
        b.restore(&a.state()).unwrap();
        let later = now + 86_400 * NS;
        assert_eq!(read(&mut b, reg::DAY_OF_MONTH, later), 0x27);
        assert_eq!(read(&mut b, reg::MONTH, later), 0x02);
    }

    #[test]
    fn snapshot_refusals_and_corruption() {
        let (c, now) = busy_cmos();
        let snap = c.state();
        let mut fresh = Cmos::new(512 * MIB, 64 * MIB);
        crate::state::testing::check_refusals(&mut fresh, &snap, |d| {
            let mut rng = crate::state::testing::Rng::new(13);
            let mut t = now;
            for _ in 0..60 {
                random_op(d, &mut rng, &mut t);
            }
            for i in 0..14 {
                read(d, i, u64::MAX);
            }
            write(d, reg::YEAR, 0x99, u64::MAX);
            write(d, reg::STATUS_B, 0x80, u64::MAX);
            write(d, reg::STATUS_B, 0x00, u64::MAX);
        });
        // Another RAM size is another VM.
        assert_eq!(
            Cmos::new(256 * MIB, 64 * MIB).restore(&snap),
            Err(StateError::Mismatch {
                device: Cmos::STATE_TAG,
                what: "RAM below 4 GiB (bytes)",
                snapshot: 512 * MIB,
                here: 256 * MIB
            })
        );
        assert!(matches!(
            Cmos::new(512 * MIB, 0).restore(&snap),
            Err(StateError::Mismatch {
                what: "RAM above 4 GiB (bytes)",
                ..
            })
        ));
    }
}
