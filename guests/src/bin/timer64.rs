//! `timer64`: a local APIC timer set to livelock its own guest.
//!
//! The timer runs periodic with an initial count of 1 at divide-by-1, the shortest
//! period a guest can ask for: taken literally it would interrupt the guest after
//! every few instructions, so the guest would never get past its first interrupt
//! handler. The hypervisor clamps the period (200 us, as KVM's
//! `min_timer_period_us`), so the main loop must keep making progress while ticks
//! arrive, and no more than one tick per clamped period may be delivered.
//!
//! Prints:
//! ```text
//! timer64: tsc <n> cycles/ms, periodic timer count 1 divide 1
//! timer64: round 1 of 4 done (<t> ticks)
//! ...
//! timer64: <total> ticks in <ms> ms: rate ok (at most <max>)
//! ```
//! or `timer64: FAIL ...` when no tick arrived or too many did.

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(target_os = "none")]
mod guest {
    use core::arch::{asm, global_asm};
    use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

    use guests::apic::{self, reg, LVT_MASKED, LVT_TIMER_PERIODIC};
    use guests::tsc::{self, rdtsc};
    use guests::{idt, println};

    const TICK: u8 = 0x40;
    const SPURIOUS: u8 = 0xFF;
    /// Rounds of busy work the main loop must get through.
    const ROUNDS: u64 = 4;
    const ROUND_MS: u64 = 100;
    /// The clamp: at most one tick per 200 us, plus slack for the edges of the
    /// measurement.
    const MAX_PER_SECOND: u64 = 5_000;

    static TICKS: AtomicU64 = AtomicU64::new(0);

    global_asm!(
        ".pushsection .text.timer64_stubs, \"ax\"",
        ".global timer64_tick_entry",
        ".hidden timer64_tick_entry",
        "timer64_tick_entry:",
        "    push rax",
        "    lock inc qword ptr [rip + {ticks}]",
        "    mov eax, {eoi}",
        "    mov dword ptr [rax], 0",
        "    pop rax",
        "    iretq",
        // Spurious interrupts get no EOI (SDM 10.9).
        ".global timer64_spurious_entry",
        ".hidden timer64_spurious_entry",
        "timer64_spurious_entry:",
        "    iretq",
        ".popsection",
        ticks = sym TICKS,
        eoi = const apic::BASE + reg::EOI as u64,
    );

    unsafe extern "C" {
        fn timer64_tick_entry();
        fn timer64_spurious_entry();
    }

    guests::entry_point!(main);

    fn main() {
        let handlers = idt::install();
        // SAFETY: interrupts are off; both vectors get their gates before the APIC
        // can deliver them.
        unsafe {
            handlers.set_interrupt_gate(TICK, timer64_tick_entry);
            handlers.set_interrupt_gate(SPURIOUS, timer64_spurious_entry);
        }
        let rate = match tsc::calibrate() {
            Ok(r) => r,
            Err(e) => {
                println!("timer64: FAIL no TSC rate: {e}");
                return;
            }
        };
        apic::enable(SPURIOUS);
        // SAFETY: the guest's own local APIC timer, with its handler installed.
        unsafe {
            apic::write(reg::TIMER_DIVIDE, 0b1011); // divide by 1
            apic::write(reg::LVT_TIMER, LVT_TIMER_PERIODIC | u32::from(TICK));
            apic::write(reg::TIMER_INITIAL, 1);
        }
        println!(
            "timer64: tsc {} cycles/ms, periodic timer count 1 divide 1",
            rate.per_ms
        );
        let start = rdtsc();
        // SAFETY: every vector that can arrive has a gate.
        unsafe { asm!("sti", options(nomem, nostack)) };
        for round in 1..=ROUNDS {
            let end = rate.deadline_ms(ROUND_MS);
            while rdtsc() < end {
                core::hint::spin_loop();
            }
            println!(
                "timer64: round {round} of {ROUNDS} done ({} ticks)",
                TICKS.load(SeqCst)
            );
        }
        // SAFETY: masking the timer and disabling interrupts only stops ticks.
        unsafe {
            apic::write(reg::LVT_TIMER, LVT_MASKED | u32::from(TICK));
            asm!("cli", options(nomem, nostack));
        }
        let ms = (rdtsc() - start) / rate.per_ms.max(1);
        let ticks = TICKS.load(SeqCst);
        let max = MAX_PER_SECOND * (ms + 1) / 1000 + 10;
        if ticks == 0 {
            println!("timer64: FAIL no tick in {ms} ms");
        } else if ticks > max {
            println!("timer64: FAIL {ticks} ticks in {ms} ms (more than {max})");
        } else {
            println!("timer64: {ticks} ticks in {ms} ms: rate ok (at most {max})");
        }
    }
}
