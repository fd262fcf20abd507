//! Time for guests that need delays and timeouts: the TSC, calibrated once against
//! the 8254 PIT's channel 2.
//!
//! The guest cannot know its TSC rate from CPUID (leaves 0x15/0x16 may be absent),
//! so it measures it the way Linux's `pit_calibrate_tsc` does: channel 2 in mode 0
//! ("interrupt on terminal count", 8254 data sheet) counts [`CALIBRATION_COUNT`]
//! ticks of the 1.193182 MHz input while the TSC runs; its OUT line, readable as
//! port 0x61 bit 5, goes high at terminal count. Port 0x61 bit 0 is channel 2's
//! GATE (high: counting), bit 1 the speaker enable (kept off).
//!
//! A VM's TSC and PIT both follow the hypervisor's guest time, so the rate holds
//! across the time slices a VM loses to others.

use core::arch::asm;

use crate::cpu::{inb, outb};

/// PIT input clock in Hz.
const PIT_HZ: u64 = 1_193_182;
/// 50 ms of PIT ticks (the largest round figure below the 16-bit counter's 54.9 ms).
const CALIBRATION_MS: u64 = 50;
const CALIBRATION_COUNT: u16 = (PIT_HZ * CALIBRATION_MS / 1000) as u16;
/// Reads of port 0x61 before calibration gives up on a PIT that never counts down.
const MAX_POLLS: u64 = 2_000_000;

/// The TSC, with LFENCE on both sides so it is not read early or late.
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: LFENCE and RDTSC only read the TSC into EDX:EAX.
    unsafe {
        asm!(
            "lfence",
            "rdtsc",
            "lfence",
            out("eax") lo,
            out("edx") hi,
            options(nomem, nostack, preserves_flags),
        );
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// The measured TSC rate.
#[derive(Clone, Copy, Debug)]
pub struct TscRate {
    /// TSC cycles per millisecond (at least 1).
    pub per_ms: u64,
}

impl TscRate {
    /// The TSC value `ms` milliseconds from now.
    pub fn deadline_ms(self, ms: u64) -> u64 {
        rdtsc().saturating_add(self.per_ms.saturating_mul(ms))
    }

    /// Busy-waits `us` microseconds.
    pub fn delay_us(self, us: u64) {
        let end = rdtsc().saturating_add(self.per_ms.saturating_mul(us) / 1000);
        while rdtsc() < end {
            crate::cpu::pause();
        }
    }
}

/// Measures the TSC rate against PIT channel 2 over 50 ms. Only one CPU may use
/// the PIT at a time (the caller runs it before starting other CPUs).
pub fn calibrate() -> Result<TscRate, &'static str> {
    // SAFETY: ports 0x42, 0x43 and 0x61 are the guest's own PIT channel 2 and its
    // gate; nothing else in the guest uses them.
    unsafe {
        // Gate low and speaker off while programming, then the count, then gate high.
        let port61 = inb(0x61) & !0b11;
        outb(0x61, port61);
        // Channel 2, lobyte/hibyte, mode 0, binary.
        outb(0x43, 0b1011_0000);
        outb(0x42, CALIBRATION_COUNT as u8);
        outb(0x42, (CALIBRATION_COUNT >> 8) as u8);
        let start = rdtsc();
        outb(0x61, port61 | 1);
        let mut polls = 0;
        while inb(0x61) & (1 << 5) == 0 {
            polls += 1;
            if polls == MAX_POLLS {
                outb(0x61, port61);
                return Err("PIT channel 2 never reached terminal count");
            }
        }
        let cycles = rdtsc().wrapping_sub(start);
        outb(0x61, port61);
        let per_ms = cycles / CALIBRATION_MS;
        if per_ms == 0 {
            return Err("TSC did not advance while the PIT counted");
        }
        Ok(TscRate { per_ms })
    }
}
