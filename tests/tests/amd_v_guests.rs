//! AMD-V under QEMU's software-emulated SVM with nested paging: eight tiny guests at
//! once, in every CPU mode, probing the CPUID/MSR/port/hypercall policy, and three
//! hostile ones (a write beyond RAM, an endless spin with interrupts off, a triple
//! fault). Each must be answered as hardware or a real hypervisor would, and only the
//! misbehaving VM stops.

use tests::*;
use xtask::emulator::EXIT_SUCCESS;

fn run(test: &str, firmware: Firmware) -> RunOutput {
    let opts = QemuOptions {
        firmware,
        memory_mib: 256,
        cpus: 1,
        force_tcg: true,
        ..Default::default()
    };
    boot_qemu(test, GuestSet::Tiny, &opts, QEMU_LIMIT)
}

/// Index of the first line containing `needle`.
fn position(out: &RunOutput, needle: &str) -> usize {
    out.serial
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| {
            out.expect_line(needle);
            unreachable!()
        })
}

#[test]
fn tiny_guests_run_isolated_under_amd_v() {
    let out = run("amd_v_guests_bios", Firmware::Bios);
    out.expect_line("hv: guest bundle holds 9 VM(s)")
        // An image only the kernel sees is broken: refused alone, with the reason.
        .expect_line("hv: vm broken64 not started: malformed ELF image: Could not read bytes")
        .expect_line("hv: 1 VM(s) could not be started")
        // Every CPU mode, relayed as `name | text`.
        .expect_line("real16 | real16: hello from real mode")
        .expect_line("prot32 | prot32: hello from protected mode")
        .expect_line("prot32 | prot32: hypervisor signature hv-baremetal")
        .expect_line("hello64 | hello64: hello from long mode")
        // CPUID policy: no VMX/SVM, hypervisor bit, our signature.
        .expect_line("hello64 | hello64: cpuid hypervisor=1 vmx=0 svm=0 signature=hv-baremetal")
        // MSR policy: allowed ones read, forbidden ones #GP; EFER without SVME.
        .expect_line("msr64 | msr64: apic_base=0xfee00900")
        .expect_line("msr64 | msr64: rdmsr 0xc0010117 -> #GP")
        .expect_line("msr64 | msr64: wrmsr 0xc0010114 -> #GP")
        .expect_line("msr64 | msr64: done")
        // Unknown ports float high and are counted; hypercalls answer.
        .expect_line("ports64 | ports64: in8=0xff in16=0xffff in32=0xffffffff")
        .expect_line("ports64 | ports64: hypercall version=0x1")
        .expect_line("ports64 | ports64: hypercall unknown=0xffffffffffffffff")
        .expect_line("hv: vm ports64 unknown port accesses: 6")
        // Containment.
        .expect_line("hv: vm oob64 stopped: write outside its memory: guest-physical 0x30000000")
        .expect_no("oob64: ERROR")
        .expect_line("hv: vm triple64 stopped: triple fault (shutdown)")
        .expect_no("triple64: ERROR")
        .expect_line("spin64 | spin64: spinning forever")
        .expect_line("hv: vm spin64 stopped: background VM: every foreground VM has stopped")
        // Exit statistics per VM.
        .expect_line("hv: vm ports64 exits: total ")
        .expect_line("hypercall=2")
        .expect_line("hv: vm oob64 exits: total ")
        .expect_line("npf=1")
        .expect_line("shutdown=1")
        .expect_line("hv: all VMs stopped; host memory returned: all")
        .expect_no("EXCEPTION")
        .expect_no("PANIC")
        .expect_exit(EXIT_SUCCESS);
    // The healthy VM makes progress next to the spinner: the spinner started before
    // hello64's first "alive" line and is only stopped after hello64 finished. Had the
    // spinner starved the others, the run would not end and the time limit would fail
    // the test.
    assert!(
        position(&out, "spin64 | spin64: spinning forever")
            < position(&out, "hello64 | hello64: alive 1")
    );
    assert!(position(&out, "hello64 | hello64: done") < position(&out, "hv: vm spin64 stopped"));
    // The EFER the guest reads shows long mode, never SVME (bit 12).
    let efer_line = out.line_with("msr64 | msr64: efer=");
    let efer = u64::from_str_radix(efer_line.rsplit("0x").next().unwrap().trim(), 16).unwrap();
    assert_eq!(efer & 0x500, 0x500, "LME|LMA in {efer_line}");
    assert_eq!(efer & (1 << 12), 0, "SVME leaked: {efer_line}");
}

#[test]
fn tiny_guests_under_amd_v_from_uefi() {
    let out = run("amd_v_guests_uefi", Firmware::Uefi);
    out.expect_line("real16 | real16: hello from real mode")
        .expect_line("hello64 | hello64: done")
        .expect_line("hv: vm triple64 stopped: triple fault (shutdown)")
        .expect_line("hv: all VMs stopped; host memory returned: all")
        .expect_exit(EXIT_SUCCESS);
}
