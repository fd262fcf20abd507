//! `ipistorm64`: a hostile two-vCPU guest that floods the interrupt command register
//! with every kind of IPI to every destination, forever (run it as a background VM
//! with a run limit, beside a guest whose output must stay on schedule).
//!
//! The BSP starts AP 1 as `smp64` does ([`guests::smp`]), prints
//! `ipistorm64: storming`, and then both CPUs run [`storm`] with interrupts enabled:
//! sweep after sweep, for every destination 0..=255, in physical mode (APIC ID; 0xFF
//! is the broadcast) and in flat logical mode (a bit mask; 0xFF is the broadcast):
//!
//! - fixed and lowest-priority IPIs with vectors cycling through 0x20-0xFE, and
//!   fixed IPIs with the illegal vectors 0-15 (SDM 10.5.3: the sending APIC refuses
//!   them with a "send illegal vector" error);
//! - NMI IPIs;
//! - INIT (level assert) and INIT level de-assert;
//! - STARTUP IPIs: with the trampoline's vector ([`smp::SIPI_VECTOR`]) to every
//!   destination that can include this VM's AP (physical 1 and 0xFF, any logical
//!   mask), with the destination number as vector to the others, none of which
//!   exists in this VM;
//!
//! and, once per sweep, fixed, NMI, INIT and STARTUP IPIs with each shorthand
//! (self, all including self, all excluding self). The ICR's delivery status is
//! never waited for.
//!
//! The storm stays inside its own VM only if the hypervisor keeps it there: other
//! VMs have vCPUs with the same APIC IDs (0, 1, ...). What it does to itself is
//! architectural: an INIT puts AP 1 in wait-for-SIPI, and the next STARTUP from the
//! BSP restarts it through the trampoline (its data block stays set), so the AP
//! keeps coming back. Only the BSP is spared INIT (and INIT de-assert): an INIT
//! restarts a BSP at the reset vector 0xFFFFFFF0 (SDM 9.1.1), which is not RAM in a
//! VM, so the hypervisor would end the VM and with it the storm. So INIT goes to
//! physical destinations other than the BSP's APIC ID, logical masks without the
//! BSP's bit, and "all excluding self" only from the BSP.
//!
//! AP 1 INITs itself on its way through the destinations and the BSP INITs it in
//! every sweep, so the AP's lives are short: each starts its sweep at another
//! destination, so that together they cover all of them.
//!
//! Every [`REPORT_EVERY`] sweeps the BSP prints how far both CPUs got (the AP
//! never prints: an INIT could stop it while it holds the console lock). `ap
//! starts` counts the AP's arrivals from the trampoline (1 = only the first start),
//! `ap destinations` the destinations it has gone through in all its lives.
//!
//! Prints:
//! ```text
//! ipistorm64: bsp apic id 0, ap apic id 1
//! ipistorm64: storming
//! ipistorm64: bsp sweeps 8, ap starts <n>, ap destinations <n>
//! ipistorm64: bsp sweeps 16, ap starts <n>, ap destinations <n>
//! ...
//! ```
//! and never stops on its own. On a failure before the storm it prints
//! `ipistorm64: FAIL <reason>` and stops with `cli; hlt`.

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(target_os = "none")]
mod guest {
    use core::arch::{asm, global_asm};
    use core::sync::atomic::{AtomicU64, AtomicU8, Ordering::SeqCst};

    use guests::apic::{self, icr, reg};
    use guests::cpu::{halt_forever, outb};
    use guests::smp;
    use guests::{idt, println, tsc};

    /// The spurious-interrupt vector; never sent as a fixed IPI.
    const SPURIOUS: u8 = 0xFF;
    /// Fixed vectors sent (and handled by the EOI stub).
    const FIRST_VECTOR: u8 = 0x20;
    const LAST_VECTOR: u8 = 0xFE;
    /// The BSP prints progress every this many of its sweeps.
    pub const REPORT_EVERY: u64 = 8;
    /// How long AP 1 has to check in at the start.
    const CHECKIN_TIMEOUT_MS: u64 = 5000;

    static BSP_APIC_ID: AtomicU8 = AtomicU8::new(0);
    static AP_STARTS: AtomicU64 = AtomicU64::new(0);
    /// Destinations AP 1 has gone through (it rarely finishes a sweep: it INITs
    /// itself on the way, and the BSP INITs it every sweep).
    static AP_DESTINATIONS: AtomicU64 = AtomicU64::new(0);
    static NMIS: AtomicU64 = AtomicU64::new(0);

    global_asm!(
        ".pushsection .text.ipistorm64_stubs, \"ax\"",
        // Every fixed vector: EOI and return.
        ".global ipistorm64_eoi_entry",
        ".hidden ipistorm64_eoi_entry",
        "ipistorm64_eoi_entry:",
        "    push rax",
        "    mov eax, {eoi}",
        "    mov dword ptr [rax], 0",
        "    pop rax",
        "    iretq",
        ".global ipistorm64_nmi_entry",
        ".hidden ipistorm64_nmi_entry",
        "ipistorm64_nmi_entry:",
        "    lock inc qword ptr [rip + {nmis}]",
        "    iretq",
        ".global ipistorm64_spurious_entry",
        ".hidden ipistorm64_spurious_entry",
        "ipistorm64_spurious_entry:",
        "    iretq",
        ".popsection",
        eoi = const apic::BASE + reg::EOI as u64,
        nmis = sym NMIS,
    );

    unsafe extern "C" {
        fn ipistorm64_eoi_entry();
        fn ipistorm64_nmi_entry();
        fn ipistorm64_spurious_entry();
    }

    fn fail(args: core::fmt::Arguments) -> ! {
        println!("ipistorm64: FAIL {}", args);
        halt_forever()
    }

    /// This CPU's flat-model logical ID: bit `apic id` (IDs 0-7).
    fn logical_bit(apic_id: u8) -> u8 {
        1 << (apic_id & 7)
    }

    /// Enables this CPU's APIC in the flat logical model and turns interrupts on.
    fn setup_cpu() -> u8 {
        apic::enable(SPURIOUS);
        let id = apic::id();
        // SAFETY: DFR and LDR only decide which logical IPIs this CPU accepts.
        unsafe {
            apic::write(reg::DFR, apic::DFR_FLAT);
            apic::write(reg::LDR, u32::from(logical_bit(id)) << 24);
            // Every vector that can arrive has a gate.
            asm!("sti", options(nomem, nostack));
        }
        id
    }

    fn send(dest: u8, low: u32) {
        // SAFETY: this is the point of the guest; the one IPI that would end its
        // own VM (INIT to its BSP) is filtered out by `storm`.
        unsafe { apic::send_ipi(dest, low) };
    }

    /// One sweep over every destination, mode and shorthand (see the module
    /// documentation), destinations in order from `first`. `me` is this CPU's
    /// APIC ID, `ap` the AP's; `progress` counts destinations done.
    fn sweep(n: u64, first: u8, me: u8, bsp: u8, ap: u8, progress: &AtomicU64) {
        let bsp_bit = logical_bit(bsp);
        let span = u64::from(LAST_VECTOR - FIRST_VECTOR) + 1;
        for k in 0..=255u8 {
            let dest = first.wrapping_add(k);
            let vector = u32::from(FIRST_VECTOR) + ((n + u64::from(dest)) % span) as u32;
            let sipi = if dest == ap || dest == 0xFF {
                u32::from(smp::SIPI_VECTOR)
            } else {
                u32::from(dest)
            };
            let init_ok = dest != bsp && dest != 0xFF;
            // Physical destination.
            send(dest, icr::FIXED | vector);
            send(dest, icr::LOWEST_PRIORITY | vector);
            send(dest, icr::FIXED | u32::from(dest & 0xF));
            send(dest, icr::NMI);
            if init_ok {
                send(dest, icr::INIT | icr::ASSERT);
                send(dest, icr::INIT | icr::LEVEL);
            }
            send(dest, icr::STARTUP | icr::ASSERT | sipi);
            // Logical destination (flat model: `dest` is a mask).
            let logical = icr::LOGICAL;
            send(dest, logical | icr::FIXED | vector);
            send(dest, logical | icr::LOWEST_PRIORITY | vector);
            send(dest, logical | icr::NMI);
            if dest & bsp_bit == 0 {
                send(dest, logical | icr::INIT | icr::ASSERT);
                send(dest, logical | icr::INIT | icr::LEVEL);
            }
            send(
                dest,
                logical | icr::STARTUP | icr::ASSERT | u32::from(smp::SIPI_VECTOR),
            );
            progress.fetch_add(1, SeqCst);
        }
        let vector = u32::from(FIRST_VECTOR) + (n % 0xDF) as u32;
        for shorthand in [icr::SELF, icr::ALL_INCLUDING_SELF, icr::ALL_EXCLUDING_SELF] {
            send(0, shorthand | icr::FIXED | vector);
            send(0, shorthand | icr::NMI);
            send(
                0,
                shorthand | icr::STARTUP | icr::ASSERT | u32::from(smp::SIPI_VECTOR),
            );
        }
        if me == bsp {
            send(0, icr::ALL_EXCLUDING_SELF | icr::INIT | icr::ASSERT);
            send(0, icr::ALL_EXCLUDING_SELF | icr::INIT | icr::LEVEL);
        }
    }

    /// AP 1, every time a STARTUP IPI brings it back: set up and storm.
    extern "C" fn ap_main(_index: usize) -> ! {
        let Some(handlers) = idt::installed() else {
            halt_forever()
        };
        handlers.load_on_this_cpu();
        let me = setup_cpu();
        let starts = AP_STARTS.fetch_add(1, SeqCst);
        let bsp = BSP_APIC_ID.load(SeqCst);
        // Start each life somewhere else (97 is odd: every start point comes up),
        // so the short lives between INITs cover all destinations between them.
        let mut first = (starts * 97) as u8;
        let mut n = starts;
        loop {
            sweep(n, first, me, bsp, me, &AP_DESTINATIONS);
            first = first.wrapping_add(97);
            n = n.wrapping_add(1);
        }
    }

    guests::entry_point!(main);

    fn main() {
        let handlers = idt::install();
        // SAFETY: interrupts are off and no other CPU runs yet.
        unsafe {
            handlers.set_interrupt_gate(2, ipistorm64_nmi_entry);
            for vector in FIRST_VECTOR..=LAST_VECTOR {
                handlers.set_interrupt_gate(vector, ipistorm64_eoi_entry);
            }
            handlers.set_interrupt_gate(SPURIOUS, ipistorm64_spurious_entry);
            // OCW1: mask every 8259 line.
            outb(0x21, 0xFF);
            outb(0xA1, 0xFF);
        }
        apic::enable(SPURIOUS);
        let bsp = apic::id();
        BSP_APIC_ID.store(bsp, SeqCst);
        let rate = tsc::calibrate().unwrap_or_else(|e| fail(format_args!("tsc: {e}")));
        let cpus = smp::mp_processors().unwrap_or_else(|e| fail(format_args!("mp table: {e}")));
        let Some(ap) = cpus.as_slice().iter().find(|c| !c.bsp).map(|c| c.apic_id) else {
            fail(format_args!(
                "no application processor (run with vcpus = 2)"
            ))
        };
        if let Err(e) = smp::install_trampoline() {
            fail(format_args!("trampoline: {e}"));
        }
        if let Err(e) = smp::start_ap(1, ap, ap_main, rate, CHECKIN_TIMEOUT_MS) {
            fail(format_args!("ap: {e}"));
        }
        println!("ipistorm64: bsp apic id {bsp}, ap apic id {ap}");
        println!("ipistorm64: storming");
        setup_cpu();
        let bsp_destinations = AtomicU64::new(0);
        let mut n = 0;
        loop {
            sweep(n, 0, bsp, bsp, ap, &bsp_destinations);
            n += 1;
            if n % REPORT_EVERY == 0 {
                println!(
                    "ipistorm64: bsp sweeps {n}, ap starts {}, ap destinations {}",
                    AP_STARTS.load(SeqCst),
                    AP_DESTINATIONS.load(SeqCst)
                );
            }
        }
    }
}
