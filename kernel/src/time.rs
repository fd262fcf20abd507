//! Time: the TSC, calibrated once at boot against the 8254 PIT, gives uptime for log
//! timestamps and cycle budgets for guest time slices.

use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::instructions::port::Port;

static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static TSC_AT_BOOT: AtomicU64 = AtomicU64::new(0);

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
    TSC_HZ.store(
        if hz > 1_000_000 { hz } else { 1_000_000_000 },
        Ordering::Relaxed,
    );
}

pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

pub fn uptime_micros() -> u64 {
    let hz = tsc_hz();
    if hz == 0 {
        return 0;
    }
    let cycles = rdtsc().saturating_sub(TSC_AT_BOOT.load(Ordering::Relaxed));
    ((cycles as u128) * 1_000_000 / hz as u128) as u64
}

pub fn micros_to_tsc(micros: u64) -> u64 {
    ((micros as u128) * tsc_hz() as u128 / 1_000_000) as u64
}
