//! `crcheck64` (hostile): control-register, EFER and XCR0 writes that the
//! architecture answers with #GP or #UD for this guest's CPUID, and a few it must
//! accept. The hypervisor has to raise the same fault a processor with exactly the
//! guest's features would, and never let such a write reach VM entry.
//!
//! Catches #GP through `guests::idt` and #UD (XSETBV, XGETBV, VZEROUPPER, RDPKRU)
//! with its own vector-6 stub;
//! each faulting instruction is skipped. The bits tried are refused on every host
//! whatever it offers: reserved ones, VMXE/SMXE, the ones the hypervisor's CPUID
//! hides (MCE, OSXSAVE, KL, PKE, CET, PKS, UINTR, LAM, FRED), LA57 (cannot change in
//! IA-32e mode) and PAE cleared in IA-32e mode.
//!
//! Prints one line per case, `... -> #GP ok` / `-> #UD ok` / `-> ok` when the
//! outcome is the architectural one, or `... FAIL (...)`, then `crcheck64: done`:
//! ```text
//! crcheck64: cr4 bit 13 (vmxe) -> #GP ok
//! crcheck64: cr0 pg without pe -> #GP ok
//! crcheck64: xsetbv xcr0=1 -> #UD ok
//! crcheck64: xgetbv -> #UD ok
//! crcheck64: vzeroupper -> #UD ok
//! crcheck64: rdpkru -> #UD ok
//! crcheck64: done
//! ```

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(target_os = "none")]
mod guest {
    use core::arch::{asm, global_asm};
    use core::sync::atomic::{AtomicU64, Ordering::SeqCst};
    use guests::idt::{self, Handlers};
    use guests::println;

    const IA32_EFER: u32 = 0xC000_0080;
    const IA32_GS_BASE: u32 = 0xC000_0101;
    /// MOV CR0/CR4, RAX (0F 22 C0 / 0F 22 E0) and XSETBV (0F 01 D1) are 3 bytes.
    const INSN_LEN: u64 = 3;

    /// #UDs taken; the stub skips the 3-byte XSETBV.
    #[unsafe(no_mangle)]
    static CRCHECK_UD_COUNT: AtomicU64 = AtomicU64::new(0);

    global_asm!(
        ".pushsection .text.crcheck_ud, \"ax\"",
        ".global crcheck_ud_entry",
        "crcheck_ud_entry:",
        "    add qword ptr [rsp], 3",
        "    lock inc qword ptr [rip + CRCHECK_UD_COUNT]",
        "    iretq",
        ".popsection",
    );

    unsafe extern "C" {
        fn crcheck_ud_entry();
    }

    /// Refused on every host (see the module header).
    const CR4_REFUSED: [(u32, &str); 22] = [
        (6, "mce"),
        (12, "la57"),
        (13, "vmxe"),
        (14, "smxe"),
        (15, "reserved"),
        (18, "osxsave"),
        (19, "kl"),
        (22, "pke"),
        (23, "cet"),
        (24, "pks"),
        (25, "uintr"),
        (26, "reserved"),
        (27, "reserved"),
        (28, "lam_sup"),
        (29, "reserved"),
        (30, "reserved"),
        (31, "reserved"),
        (32, "fred"),
        (33, "reserved"),
        (40, "reserved"),
        (48, "reserved"),
        (63, "reserved"),
    ];

    fn read_cr0() -> u64 {
        let v;
        // SAFETY: reading CR0 at CPL 0 has no side effects.
        unsafe { asm!("mov {}, cr0", out(reg) v, options(nomem, nostack)) };
        v
    }

    fn read_cr4() -> u64 {
        let v;
        // SAFETY: reading CR4 at CPL 0 has no side effects.
        unsafe { asm!("mov {}, cr4", out(reg) v, options(nomem, nostack)) };
        v
    }

    /// MOV CR4, RAX with the #GP handler armed; true if it faulted.
    fn cr4_faults(h: Handlers, value: u64) -> bool {
        // SAFETY: one 3-byte instruction that may #GP; every value tried here either
        // faults or is harmless for this guest (TSD, PCE, the value CR4 already has).
        unsafe {
            h.guarded(
                INSN_LEN,
                || asm!("mov cr4, rax", in("rax") value, options(nostack)),
            )
        }
        .is_err()
    }

    /// MOV CR0, RAX with the #GP handler armed; true if it faulted.
    fn cr0_faults(h: Handlers, value: u64) -> bool {
        // SAFETY: as for `cr4_faults`: WP toggled or the current value, or a fault.
        unsafe {
            h.guarded(
                INSN_LEN,
                || asm!("mov cr0, rax", in("rax") value, options(nostack)),
            )
        }
        .is_err()
    }

    fn expect_gp(what: core::fmt::Arguments<'_>, faulted: bool) {
        if faulted {
            println!("crcheck64: {what} -> #GP ok");
        } else {
            println!("crcheck64: {what} -> FAIL (no #GP)");
        }
    }

    fn expect_ok(what: core::fmt::Arguments<'_>, faulted: bool) {
        if faulted {
            println!("crcheck64: {what} -> FAIL (#GP)");
        } else {
            println!("crcheck64: {what} -> ok");
        }
    }

    guests::entry_point!(main);

    fn main() {
        let h = idt::install();
        // SAFETY: before anything can raise #UD; the stub preserves every register.
        unsafe { h.set_interrupt_gate(6, crcheck_ud_entry) };

        let cr4 = read_cr4();
        let cr0 = read_cr0();
        println!("crcheck64: cr0={cr0:#x} cr4={cr4:#x}");

        for (bit, name) in CR4_REFUSED {
            let faulted = cr4_faults(h, cr4 | 1 << bit);
            expect_gp(format_args!("cr4 bit {bit} ({name})"), faulted);
            if read_cr4() != cr4 {
                println!("crcheck64: cr4 bit {bit} ({name}) FAIL (cr4 changed)");
            }
        }
        expect_gp(
            format_args!("cr4 pae clear in long mode"),
            cr4_faults(h, cr4 & !(1 << 5)),
        );
        // Allowed: TSD and PCE, then back.
        for (bit, name) in [(2u32, "tsd"), (8, "pce")] {
            let faulted = cr4_faults(h, cr4 | 1 << bit);
            let took = read_cr4() & 1 << bit != 0;
            let restored = !cr4_faults(h, cr4) && read_cr4() == cr4;
            match (faulted, took, restored) {
                (false, true, true) => println!("crcheck64: cr4 bit {bit} ({name}) -> ok"),
                _ => {
                    println!("crcheck64: cr4 bit {bit} ({name}) FAIL ({faulted} {took} {restored})")
                }
            }
        }

        expect_gp(format_args!("cr0 pg without pe"), cr0_faults(h, cr0 & !1));
        expect_gp(
            format_args!("cr0 nw without cd"),
            cr0_faults(h, (cr0 | 1 << 29) & !(1 << 30)),
        );
        expect_gp(format_args!("cr0 bit 32"), cr0_faults(h, cr0 | 1 << 32));
        expect_gp(
            format_args!("cr0 pg clear in 64-bit mode"),
            cr0_faults(h, cr0 & !(1 << 31)),
        );
        let wp_off = cr0_faults(h, cr0 & !(1 << 16));
        let wp_on = cr0_faults(h, cr0);
        expect_ok(
            format_args!("cr0 wp off and on"),
            wp_off || wp_on || read_cr0() != cr0,
        );

        match h.try_rdmsr(IA32_EFER) {
            Ok(efer) => {
                // SAFETY: each write either faults or rewrites EFER's own value.
                unsafe {
                    expect_gp(
                        format_args!("efer lme clear while paging"),
                        h.try_wrmsr(IA32_EFER, efer & !(1 << 8)).is_err(),
                    );
                    expect_gp(
                        format_args!("efer svme"),
                        h.try_wrmsr(IA32_EFER, efer | 1 << 12).is_err(),
                    );
                    expect_ok(
                        format_args!("efer same value"),
                        h.try_wrmsr(IA32_EFER, efer).is_err(),
                    );
                }
            }
            Err(_) => println!("crcheck64: efer read FAIL (#GP)"),
        }

        // GS base is passed through: the processor's WRMSR checks canonicality itself
        // in guest mode (SDM Vol. 2 WRMSR), the hypervisor does not intercept it.
        // QEMU's TCG does not make that check, hence no FAIL here either way.
        // SAFETY: faults (non-canonical) or sets GS base, which this guest never uses
        // (and puts back to 0 right after).
        let gs = unsafe { h.try_wrmsr(IA32_GS_BASE, 0x8000_0000_0000_0000) };
        if gs.is_err() {
            println!("crcheck64: gs_base non-canonical -> #GP ok");
        } else {
            println!("crcheck64: gs_base non-canonical -> accepted (the processor's own check)");
            // SAFETY: as above.
            let _ = unsafe { h.try_wrmsr(IA32_GS_BASE, 0) };
        }

        let before = CRCHECK_UD_COUNT.load(SeqCst);
        // SAFETY: XSETBV with CR4.OSXSAVE clear raises #UD, which the stub skips;
        // were it to succeed, XCR0 = 1 (x87 only) is the reset value.
        unsafe { asm!("xsetbv", in("ecx") 0, in("eax") 1, in("edx") 0, options(nostack)) };
        if CRCHECK_UD_COUNT.load(SeqCst) != before {
            println!("crcheck64: xsetbv xcr0=1 -> #UD ok");
        } else {
            println!("crcheck64: xsetbv xcr0=1 -> FAIL (no #UD)");
        }
        // The state that is not switched between VMs stays out of reach: with
        // CR4.OSXSAVE and CR4.PKE refused, XGETBV, every VEX-encoded instruction
        // (the AVX registers) and RDPKRU raise #UD (SDM Vol. 2 XGETBV, 2.8 "VEX
        // exception conditions", RDPKRU). Each is 3 bytes, as the stub skips.
        let probes: [(&str, fn()); 3] = [
            ("xgetbv", || {
                // SAFETY: #UD is skipped by the stub; were it to run, XGETBV only
                // reads XCR0 into EDX:EAX.
                unsafe { asm!("xgetbv", in("ecx") 0, out("eax") _, out("edx") _, options(nostack)) }
            }),
            ("vzeroupper", || {
                // SAFETY: as above; were it to run, it zeroes the upper YMM halves,
                // which this guest does not use.
                unsafe { asm!(".byte 0xc5, 0xf8, 0x77", options(nostack)) }
            }),
            ("rdpkru", || {
                // SAFETY: as above; were it to run, RDPKRU reads PKRU into EAX.
                unsafe { asm!("rdpkru", in("ecx") 0, out("eax") _, out("edx") _, options(nostack)) }
            }),
        ];
        for (name, probe) in probes {
            let before = CRCHECK_UD_COUNT.load(SeqCst);
            probe();
            if CRCHECK_UD_COUNT.load(SeqCst) != before {
                println!("crcheck64: {name} -> #UD ok");
            } else {
                println!("crcheck64: {name} -> FAIL (no #UD)");
            }
        }
        println!("crcheck64: done");
    }
}
