//! `smp64`: a long-mode guest that starts the other CPUs of its VM and sends IPIs
//! between them (run it with `vcpus = 2` or more).
//!
//! The bootstrap processor (BSP, the vCPU that starts at `e_entry`):
//!
//! 1. installs a GDT and an IDT with entry stubs for the vectors below, masks the
//!    8259 PICs, software-enables its local APIC and reads its APIC ID (the APIC ID
//!    register and CPUID.1:EBX[31:24] must agree);
//! 2. calibrates the TSC against the PIT ([`guests::tsc`]);
//! 3. reads the processors from the MP table ([`guests::smp::mp_processors`]) and
//!    starts every AP it lists with INIT-SIPI-SIPI through the real-mode trampoline
//!    ([`guests::smp`]), one at a time, each with [`CHECKIN_TIMEOUT_MS`]; each AP
//!    reports its APIC ID from the register and from CPUID, which must match the
//!    MP table;
//! 4. waits until every AP is ready (IDT loaded, APIC enabled, interrupts on);
//! 5. ping-pong with AP 1: [`ROUNDS`] times, the BSP sends fixed IPI [`PING`] to AP
//!    1 (physical destination) and waits for AP 1's fixed IPI [`PONG`] back; each
//!    round trip is timed with the TSC;
//! 6. sends an NMI IPI to AP 1 and waits for its NMI handler to count it;
//! 7. sends fixed IPI [`BROADCAST`] with shorthand "all excluding self" and waits
//!    until every AP took it, then a fixed IPI [`SELF_IPI`] with shorthand "self";
//! 8. prints `smp64: done`, tells the APs to stop (and wakes them with a broadcast
//!    [`TICK`] IPI), and stops with `cli; hlt`; the APs stop the same way. So the
//!    VM ends whether the hypervisor ends it when its BSP stops or when all its
//!    vCPUs have.
//!
//! Every wait is bounded: each CPU runs its APIC timer periodically ([`TICK`], every
//! 4,000,000 x 16 bus clocks: 64 ms at the hypervisor's 1 GHz) so that a CPU
//! waiting in HLT for an IPI that never comes wakes up and sees its TSC deadline
//! pass. On any failure the BSP prints one `smp64: FAIL <reason>` line and stops.
//!
//! Interrupt handlers are small assembly stubs: count (LOCK INC), EOI (one 32-bit
//! MOV of 0 to the APIC's EOI register), IRETQ. The NMI stub only counts.
//!
//! Prints (for `vcpus = 2`; the number of `ap` lines follows the MP table):
//! ```text
//! smp64: bsp apic id 0
//! smp64: tsc <cycles per ms> cycles/ms
//! smp64: mp table lists 2 cpus
//! smp64: cpus online 2
//! smp64: ap 1 apic id 1
//! smp64: ipi ping-pong 1000 round trips ok
//! smp64: ipi round trip median=<cycles> min=<cycles> max=<cycles> cycles
//! smp64: nmi ipi to ap 1 ok
//! smp64: broadcast ipi reached 1 aps
//! smp64: self ipi ok
//! smp64: done
//! ```

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(target_os = "none")]
mod guest {
    use core::arch::{asm, global_asm};
    use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering::SeqCst};

    use guests::apic::{self, icr, reg};
    use guests::cpu::{cpuid, halt_forever, outb};
    use guests::smp::{self, MAX_CPUS};
    use guests::tsc::{self, rdtsc, TscRate};
    use guests::{idt, println};

    /// Fixed IPI BSP -> AP 1.
    pub const PING: u8 = 0x40;
    /// Fixed IPI AP 1 -> BSP.
    pub const PONG: u8 = 0x41;
    /// Fixed IPI to all APs (shorthand all excluding self).
    pub const BROADCAST: u8 = 0x42;
    /// Fixed IPI of the BSP to itself (shorthand self).
    pub const SELF_IPI: u8 = 0x43;
    /// Each CPU's periodic APIC timer.
    pub const TICK: u8 = 0x30;
    /// The APIC's spurious-interrupt vector (low nibble 1111b for old APICs).
    pub const SPURIOUS: u8 = 0xFF;

    /// Ping-pong round trips.
    pub const ROUNDS: usize = 1000;
    /// How long each AP has to check in after its second STARTUP IPI.
    pub const CHECKIN_TIMEOUT_MS: u64 = 5000;
    /// How long any other wait may take (one round trip, the APs getting ready, an
    /// NMI, a broadcast).
    pub const WAIT_TIMEOUT_MS: u64 = 5000;
    /// APIC timer initial count for [`TICK`] (divide by 16).
    const TICK_COUNT: u32 = 4_000_000;
    const TIMER_DIVIDE_16: u32 = 0b0011;

    /// What the BSP tells the APs.
    const PHASE_START: u32 = 0;
    const PHASE_FINISHED: u32 = 1;

    // Counters the handlers increment (each vector is taken by one CPU, except
    // BROADCAST, which every AP takes once).
    static PINGS: AtomicU64 = AtomicU64::new(0);
    static PONGS: AtomicU64 = AtomicU64::new(0);
    static BROADCASTS: AtomicU64 = AtomicU64::new(0);
    static SELF_IPIS: AtomicU64 = AtomicU64::new(0);
    static NMIS: AtomicU64 = AtomicU64::new(0);

    static PHASE: AtomicU32 = AtomicU32::new(PHASE_START);
    /// APs that finished their set-up.
    static READY: AtomicU32 = AtomicU32::new(0);
    static BSP_APIC_ID: AtomicU8 = AtomicU8::new(0);

    global_asm!(
        // A stub that counts in `counter`, signals EOI and returns.
        ".macro smp64_counting_stub name, counter",
        ".global \\name",
        ".hidden \\name",
        "\\name:",
        "    push rax",
        "    lock inc qword ptr [rip + \\counter]",
        "    mov eax, {eoi}",
        "    mov dword ptr [rax], 0",
        "    pop rax",
        "    iretq",
        ".endm",
        ".pushsection .text.smp64_stubs, \"ax\"",
        "smp64_counting_stub smp64_ping_entry, {pings}",
        "smp64_counting_stub smp64_pong_entry, {pongs}",
        "smp64_counting_stub smp64_broadcast_entry, {broadcasts}",
        "smp64_counting_stub smp64_self_entry, {self_ipis}",
        // The tick only wakes HLT.
        ".global smp64_tick_entry",
        ".hidden smp64_tick_entry",
        "smp64_tick_entry:",
        "    push rax",
        "    mov eax, {eoi}",
        "    mov dword ptr [rax], 0",
        "    pop rax",
        "    iretq",
        // NMIs have no EOI (SDM 10.8.1: only fixed, lowest-priority interrupts).
        ".global smp64_nmi_entry",
        ".hidden smp64_nmi_entry",
        "smp64_nmi_entry:",
        "    lock inc qword ptr [rip + {nmis}]",
        "    iretq",
        // Spurious interrupts are not acknowledged either (SDM 10.9).
        ".global smp64_spurious_entry",
        ".hidden smp64_spurious_entry",
        "smp64_spurious_entry:",
        "    iretq",
        ".popsection",
        eoi = const apic::BASE + reg::EOI as u64,
        pings = sym PINGS,
        pongs = sym PONGS,
        broadcasts = sym BROADCASTS,
        self_ipis = sym SELF_IPIS,
        nmis = sym NMIS,
    );

    unsafe extern "C" {
        fn smp64_ping_entry();
        fn smp64_pong_entry();
        fn smp64_broadcast_entry();
        fn smp64_self_entry();
        fn smp64_tick_entry();
        fn smp64_nmi_entry();
        fn smp64_spurious_entry();
    }

    fn sti() {
        // SAFETY: every vector that can arrive has a gate (installed before).
        unsafe { asm!("sti", options(nomem, nostack)) };
    }

    fn cli() {
        // SAFETY: disabling interrupts only delays them.
        unsafe { asm!("cli", options(nomem, nostack)) };
    }

    /// Sleeps until the next interrupt: STI's one-instruction shadow makes
    /// `sti; hlt` atomic, so an interrupt that is already pending wakes the HLT.
    fn wait_for_interrupt() {
        // SAFETY: as for `sti`; HLT with interrupts on returns at the next one
        // (the tick at the latest).
        unsafe { asm!("sti", "hlt", options(nomem, nostack)) };
    }

    /// Waits, in HLT, until `done()` holds or `timeout_ms` pass; returns whether
    /// it held. Leaves interrupts enabled.
    fn wait_until(rate: TscRate, timeout_ms: u64, done: impl Fn() -> bool) -> bool {
        let deadline = rate.deadline_ms(timeout_ms);
        loop {
            cli();
            if done() {
                sti();
                return true;
            }
            if rdtsc() > deadline {
                sti();
                return false;
            }
            wait_for_interrupt();
        }
    }

    /// Sends an IPI and waits (bounded) until the ICR shows it sent.
    fn send(dest: u8, low: u32) -> bool {
        // SAFETY: fixed and NMI IPIs to this guest's own CPUs, whose handlers exist.
        unsafe { apic::send_ipi(dest, low) };
        apic::wait_idle(1_000_000)
    }

    /// Runs the APIC timer periodically as [`TICK`].
    fn start_tick() {
        // SAFETY: the TICK gate is installed; the timer only interrupts this CPU.
        unsafe {
            apic::write(reg::TIMER_DIVIDE, TIMER_DIVIDE_16);
            apic::write(reg::LVT_TIMER, apic::LVT_TIMER_PERIODIC | u32::from(TICK));
            apic::write(reg::TIMER_INITIAL, TICK_COUNT);
        }
    }

    fn stop_tick() {
        // SAFETY: masking and stopping this CPU's own timer.
        unsafe {
            apic::write(reg::LVT_TIMER, apic::LVT_MASKED | u32::from(TICK));
            apic::write(reg::TIMER_INITIAL, 0);
        }
    }

    /// Reports a failure, lets the APs stop, and stops.
    fn fail(args: core::fmt::Arguments) -> ! {
        cli();
        println!("smp64: FAIL {}", args);
        PHASE.store(PHASE_FINISHED, SeqCst);
        stop_tick();
        halt_forever()
    }

    macro_rules! fail {
        ($($arg:tt)*) => { fail(format_args!($($arg)*)) };
    }

    fn cpuid_apic_id() -> u8 {
        (cpuid(1, 0).ebx >> 24) as u8
    }

    /// Every AP: load the BSP's tables, enable the APIC and the tick, check in as
    /// ready, then answer pings (AP 1 only) until the BSP says it is finished.
    extern "C" fn ap_main(index: usize) -> ! {
        let Some(handlers) = idt::installed() else {
            halt_forever()
        };
        handlers.load_on_this_cpu();
        apic::enable(SPURIOUS);
        start_tick();
        READY.fetch_add(1, SeqCst);
        let bsp = BSP_APIC_ID.load(SeqCst);
        let mut answered = 0;
        loop {
            cli();
            if PHASE.load(SeqCst) == PHASE_FINISHED {
                break;
            }
            if index == 1 && PINGS.load(SeqCst) > answered {
                answered += 1;
                sti();
                // A failed send shows up on the BSP as a missing pong.
                send(bsp, icr::FIXED | u32::from(PONG));
                continue;
            }
            wait_for_interrupt();
        }
        stop_tick();
        halt_forever()
    }

    fn median(samples: &mut [u64]) -> u64 {
        let mid = samples.len() / 2;
        *samples.select_nth_unstable(mid).1
    }

    guests::entry_point!(main);

    fn main() {
        let handlers = idt::install();
        // SAFETY: interrupts are off and no other CPU runs yet.
        unsafe {
            handlers.set_interrupt_gate(2, smp64_nmi_entry);
            handlers.set_interrupt_gate(PING, smp64_ping_entry);
            handlers.set_interrupt_gate(PONG, smp64_pong_entry);
            handlers.set_interrupt_gate(BROADCAST, smp64_broadcast_entry);
            handlers.set_interrupt_gate(SELF_IPI, smp64_self_entry);
            handlers.set_interrupt_gate(TICK, smp64_tick_entry);
            handlers.set_interrupt_gate(SPURIOUS, smp64_spurious_entry);
            // OCW1: mask every 8259 line; only the local APIC interrupts here.
            outb(0x21, 0xFF);
            outb(0xA1, 0xFF);
        }
        apic::enable(SPURIOUS);
        let bsp = apic::id();
        if cpuid_apic_id() != bsp {
            fail!(
                "bsp apic id register {bsp} but cpuid says {}",
                cpuid_apic_id()
            );
        }
        BSP_APIC_ID.store(bsp, SeqCst);
        println!("smp64: bsp apic id {bsp}");

        let rate = tsc::calibrate().unwrap_or_else(|e| fail!("tsc calibration: {e}"));
        println!("smp64: tsc {} cycles/ms", rate.per_ms);

        let cpus = smp::mp_processors().unwrap_or_else(|e| fail!("mp table: {e}"));
        let cpus = cpus.as_slice();
        println!("smp64: mp table lists {} cpus", cpus.len());
        if cpus.len() > MAX_CPUS {
            fail!("smp64 starts at most {MAX_CPUS} cpus");
        }
        match cpus.iter().find(|c| c.bsp) {
            Some(c) if c.apic_id == bsp => {}
            Some(c) => fail!("mp table bsp has apic id {}, this cpu {bsp}", c.apic_id),
            None => fail!("mp table lists no bsp"),
        }
        if let Err(e) = smp::install_trampoline() {
            fail!("trampoline: {e}");
        }

        // Start the APs one by one, in table order.
        let mut ap_ids = [0u8; MAX_CPUS];
        let mut aps = 0;
        for cpu in cpus.iter().filter(|c| !c.bsp) {
            let index = aps + 1;
            match smp::start_ap(index, cpu.apic_id, ap_main, rate, CHECKIN_TIMEOUT_MS) {
                Ok(c) if c.apic_id == cpu.apic_id && c.cpuid_apic_id == cpu.apic_id => {}
                Ok(c) => fail!(
                    "ap {index}: mp table apic id {}, apic id register {}, cpuid {}",
                    cpu.apic_id,
                    c.apic_id,
                    c.cpuid_apic_id
                ),
                Err(e) => fail!("ap {index}: {e}"),
            }
            ap_ids[index] = cpu.apic_id;
            aps += 1;
        }
        println!("smp64: cpus online {}", aps + 1);
        for (index, id) in ap_ids.iter().enumerate().take(aps + 1).skip(1) {
            println!("smp64: ap {index} apic id {id}");
        }
        if aps == 0 {
            fail!("no application processor (run with vcpus = 2 or more)");
        }

        start_tick();
        sti();
        if !wait_until(rate, WAIT_TIMEOUT_MS, || READY.load(SeqCst) == aps as u32) {
            fail!("only {} of {aps} aps got ready", READY.load(SeqCst));
        }

        // Ping-pong with AP 1.
        let ap1 = ap_ids[1];
        static mut SAMPLES: [u64; ROUNDS] = [0; ROUNDS];
        // SAFETY: only the BSP touches the samples, once.
        let samples = unsafe { &mut *core::ptr::addr_of_mut!(SAMPLES) };
        for (round, sample) in samples.iter_mut().enumerate() {
            let start = rdtsc();
            if !send(ap1, icr::FIXED | u32::from(PING)) {
                fail!("ping {round}: ICR still pending");
            }
            let want = round as u64 + 1;
            if !wait_until(rate, WAIT_TIMEOUT_MS, || PONGS.load(SeqCst) >= want) {
                fail!(
                    "ping {round}: no pong within {WAIT_TIMEOUT_MS} ms (ap took {} pings, bsp {} pongs)",
                    PINGS.load(SeqCst),
                    PONGS.load(SeqCst)
                );
            }
            *sample = rdtsc().wrapping_sub(start);
        }
        let (pings, pongs) = (PINGS.load(SeqCst), PONGS.load(SeqCst));
        if pings != ROUNDS as u64 || pongs != ROUNDS as u64 {
            fail!("ping-pong counted {pings} pings and {pongs} pongs for {ROUNDS} rounds");
        }
        println!("smp64: ipi ping-pong {ROUNDS} round trips ok");
        let (min, max) = (
            samples.iter().copied().min().unwrap_or(0),
            samples.iter().copied().max().unwrap_or(0),
        );
        println!(
            "smp64: ipi round trip median={} min={min} max={max} cycles",
            median(samples)
        );

        // NMI to AP 1 (the vector field is ignored for NMI; SDM 10.6.1 wants 0).
        if !send(ap1, icr::NMI) {
            fail!("nmi: ICR still pending");
        }
        if !wait_until(rate, WAIT_TIMEOUT_MS, || NMIS.load(SeqCst) >= 1) {
            fail!("nmi ipi to ap 1 not taken within {WAIT_TIMEOUT_MS} ms");
        }
        if NMIS.load(SeqCst) != 1 {
            fail!("one nmi ipi sent, {} taken", NMIS.load(SeqCst));
        }
        println!("smp64: nmi ipi to ap 1 ok");

        // Fixed IPI to all but self: every AP once. The destination field is
        // ignored with a shorthand.
        if !send(
            0,
            icr::ALL_EXCLUDING_SELF | icr::FIXED | u32::from(BROADCAST),
        ) {
            fail!("broadcast: ICR still pending");
        }
        let expected = aps as u64;
        if !wait_until(rate, WAIT_TIMEOUT_MS, || {
            BROADCASTS.load(SeqCst) >= expected
        }) {
            fail!(
                "broadcast ipi reached {} of {aps} aps",
                BROADCASTS.load(SeqCst)
            );
        }
        // Give a wrongly delivered extra copy (e.g. to the BSP) time to show up.
        rate.delay_us(10_000);
        if BROADCASTS.load(SeqCst) != expected {
            fail!(
                "broadcast ipi taken {} times by {aps} aps",
                BROADCASTS.load(SeqCst)
            );
        }
        println!("smp64: broadcast ipi reached {aps} aps");

        if !send(0, icr::SELF | icr::FIXED | u32::from(SELF_IPI)) {
            fail!("self ipi: ICR still pending");
        }
        if !wait_until(rate, WAIT_TIMEOUT_MS, || SELF_IPIS.load(SeqCst) >= 1) {
            fail!("self ipi not taken within {WAIT_TIMEOUT_MS} ms");
        }
        println!("smp64: self ipi ok");

        cli();
        stop_tick();
        println!("smp64: done");
        PHASE.store(PHASE_FINISHED, SeqCst);
        // Wake the APs from HLT so they see it now rather than at their next tick
        // (it is their TICK vector: EOI only). Returning stops this CPU with
        // `cli; hlt`.
        send(0, icr::ALL_EXCLUDING_SELF | icr::FIXED | u32::from(TICK));
    }
}
