//! Time: the TSC, calibrated once at boot against the 8254 PIT, gives uptime for log
//! timestamps and cycle budgets for guest time slices.

use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::instructions::port::Port;

static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static TSC_AT_BOOT: AtomicU64 = AtomicU64::new(0);
/// Nanoseconds per TSC cycle as a 32.32 fixed-point number: `uptime_ns` runs on
/// every VM exit, so it multiplies instead of dividing.
static NS_PER_CYCLE_FP32: AtomicU64 = AtomicU64::new(0);

const PIT_HZ: u64 = 1_193_182;

pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects; CR4.TSD is clear in ring 0 anyway.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Measures the TSC over 10 ms of PIT channel 2 (gated through port 0x61, the speaker
/// gate, so no interrupt is needed).
pub fn calibrate() {
    TSC_AT_BOOT.store(rdtsc(), Ordering::Relaxed);
    const TICKS: u16 = (PIT_HZ / 100) as u16; // 10 ms
    let mut gate: Port<u8> = Port::new(0x61);
    let mut cmd: Port<u8> = Port::new(0x43);
    let mut ch2: Port<u8> = Port::new(0x42);
    // SAFETY: ports 0x42/0x43/0x61 are the PIT and its gate; the hypervisor owns them.
    let hz = unsafe {
        let g = gate.read();
        gate.write((g & !0x02) | 0x01); // gate on, speaker off
        cmd.write(0b1011_0000); // channel 2, lobyte/hibyte, mode 0, binary
        ch2.write(TICKS as u8);
        ch2.write((TICKS >> 8) as u8);
        let start = rdtsc();
        // OUT2 (bit 5 of port 0x61) goes high when the count reaches zero.
        let mut spins: u64 = 0;
        while gate.read() & 0x20 == 0 {
            spins += 1;
            if spins > 200_000_000 {
                break;
            }
        }
        let end = rdtsc();
        gate.write(g);
        (end - start) * 100
    };
    // An emulator without a PIT would leave us at 0: fall back to a plausible 1 GHz
    // so time still moves forward.
    let hz = if hz > 1_000_000 { hz } else { 1_000_000_000 };
    TSC_HZ.store(hz, Ordering::Relaxed);
    NS_PER_CYCLE_FP32.store(
        ((1_000_000_000u128 << 32) / hz as u128) as u64,
        Ordering::Relaxed,
    );
}

pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// The TSC when [`uptime_ns`] was 0: what the processor had counted since power-on
/// before the hypervisor calibrated it (seconds of firmware and boot loader).
pub fn tsc_at_boot() -> u64 {
    TSC_AT_BOOT.load(Ordering::Relaxed)
}

pub fn uptime_micros() -> u64 {
    uptime_ns() / 1000
}

pub fn micros_to_tsc(micros: u64) -> u64 {
    ((micros as u128) * tsc_hz() as u128 / 1_000_000) as u64
}

/// Nanoseconds since boot: one multiply (the VM run loop asks on every exit).
pub fn uptime_ns() -> u64 {
    uptime_ns_at(rdtsc())
}

/// Nanoseconds since boot when the TSC read `tsc` (for a caller that has just read
/// it for something else: one RDTSC fewer on the exit path).
pub fn uptime_ns_at(tsc: u64) -> u64 {
    let cycles = tsc.saturating_sub(TSC_AT_BOOT.load(Ordering::Relaxed));
    ((cycles as u128 * NS_PER_CYCLE_FP32.load(Ordering::Relaxed) as u128) >> 32) as u64
}

/// The host's wall-clock time from its CMOS RTC, as Unix nanoseconds, read once at
/// boot for the guests' RTCs. Waits out an update in progress (status A bit 7) and
/// handles BCD/binary and 12/24-hour formats (status B bits 2 and 1).
pub fn read_rtc_unix_ns() -> u64 {
    let mut index: Port<u8> = Port::new(0x70);
    let mut data: Port<u8> = Port::new(0x71);
    // SAFETY: the CMOS index/data ports; reading RTC registers has no side effects
    // (bit 7 of the index keeps NMIs disabled, as firmware leaves them).
    let mut reg = |r: u8| unsafe {
        index.write(0x80 | r);
        data.read()
    };
    for _ in 0..1_000_000 {
        if reg(0x0A) & 0x80 == 0 {
            break;
        }
    }
    let status_b = reg(0x0B);
    let bcd = status_b & 0x04 == 0;
    let conv = |v: u8| if bcd { (v >> 4) * 10 + (v & 0x0F) } else { v };
    let sec = conv(reg(0x00)) as u64;
    let min = conv(reg(0x02)) as u64;
    let raw_hour = reg(0x04);
    let mut hour = conv(raw_hour & 0x7F) as u64;
    if status_b & 0x02 == 0 && raw_hour & 0x80 != 0 {
        hour = (hour % 12) + 12;
    }
    let day = conv(reg(0x07));
    let month = conv(reg(0x08));
    let year = conv(reg(0x09)) as i64;
    let century = conv(reg(0x32)) as i64;
    let century = if (19..=21).contains(&century) {
        century
    } else {
        20
    };
    let days = devices::cmos::days_from_civil(century * 100 + year, month.max(1), day.max(1));
    let secs = (days.max(0) as u64) * 86_400 + hour * 3600 + min * 60 + sec;
    secs * 1_000_000_000
}
