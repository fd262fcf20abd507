//! VT-x under Bochs (corei7_skylake_x: EPT, unrestricted guest, VPID, preemption
//! timer): the same eight tiny guests, through the same core, with the same answers as
//! on AMD-V. One Bochs run covers every behaviour: Bochs is slow.

use tests::*;

#[test]
fn tiny_guests_run_isolated_under_vt_x() {
    let out = boot_bochs(
        "vt_x_guests",
        GuestSet::Tiny,
        &BochsOptions::default(),
        "hv: stopping with status",
        BOCHS_LIMIT,
    );
    out.expect_line("extension: VT-x")
        .expect_line("hv: guest bundle holds 9 VM(s)")
        // An image only the kernel sees is broken: refused alone, with the reason.
        .expect_line("hv: vm broken64 not started: malformed ELF image: Could not read bytes")
        .expect_line("hv: 1 VM(s) could not be started")
        .expect_line("real16 | real16: hello from real mode")
        .expect_line("prot32 | prot32: hello from protected mode")
        .expect_line("prot32 | prot32: hypervisor signature hv-baremetal")
        .expect_line("hello64 | hello64: cpuid hypervisor=1 vmx=0 svm=0 signature=hv-baremetal")
        .expect_line("msr64 | msr64: efer=0x500")
        .expect_line("msr64 | msr64: apic_base=0xfee00900")
        .expect_line("msr64 | msr64: rdmsr 0xc0010117 -> #GP")
        .expect_line("msr64 | msr64: wrmsr 0xc0010114 -> #GP")
        .expect_line("ports64 | ports64: in8=0xff in16=0xffff in32=0xffffffff")
        .expect_line("ports64 | ports64: hypercall version=0x1")
        .expect_line("ports64 | ports64: hypercall unknown=0xffffffffffffffff")
        .expect_line("hv: vm ports64 unknown port accesses: 6")
        .expect_line("hv: vm oob64 stopped: write outside its memory: guest-physical 0x30000000")
        .expect_no("oob64: ERROR")
        .expect_line("hv: vm triple64 stopped: triple fault (shutdown)")
        .expect_no("triple64: ERROR")
        .expect_line("hello64 | hello64: done")
        .expect_line("hv: vm spin64 stopped: background VM: every foreground VM has stopped")
        .expect_line("hv: vm hello64 exits: total ")
        .expect_line("hv: all VMs stopped; host memory returned: all")
        .expect_line("hv: stopping with status 16 (Success)")
        .expect_no("EXCEPTION")
        .expect_no("PANIC");
    let pos = |needle: &str| out.serial.lines().position(|l| l.contains(needle)).unwrap();
    assert!(pos("spin64 | spin64: spinning forever") < pos("hello64 | hello64: alive 1"));
    assert!(pos("hello64 | hello64: done") < pos("hv: vm spin64 stopped"));
}
