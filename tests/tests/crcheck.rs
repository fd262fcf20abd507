//! Control registers, EFER and XCR0 as the architecture defines them for the guest's
//! CPUID: `crcheck64` tries reserved and hidden CR4 bits, VMXE, OSXSAVE, PKE, CR0 PG
//! without PE and NW without CD, clearing EFER.LME while paging, XSETBV without
//! OSXSAVE and a non-canonical GS base, and must get #GP or #UD for each (never a
//! VM-entry failure), while the allowed writes work; XGETBV, a VEX instruction
//! (VZEROUPPER) and RDPKRU get #UD (XCR0, the AVX state and PKRU are not switched
//! between VMs, so they stay hidden and out of reach); `hello64` runs beside it.
//!
//! `blk64` rides along (one boot per vendor serves both): its RAM-backed virtio-blk
//! disk, found on PCI bus 0 and driven by the `virtio-drivers` crate in polling mode:
//! the disk file's pattern reads back, a written sector reads back and leaves its
//! neighbours alone, requests past and across the end of the disk get IOERR, and
//! dropping the driver resets the device (its status polled with an emulated `TEST`).
//!
//! `vq64` (hostile) rides along too, on a copy of the same disk: hand-built
//! virtqueues through the real BAR emulation. The device model (`virtio/src/queue.rs`,
//! `pci.rs`) turns every malformed queue into DEVICE_NEEDS_RESET (virtio 1.2 §2.1.2)
//! rather than failing the request, and consumes nothing: so each hostile scenario
//! must show status 0x4f (ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK, NEEDS_RESET)
//! with the ISR's configuration-change bit (the device's notification of
//! NEEDS_RESET after DRIVER_OK), used.idx 0 and the request's status byte untouched
//! (0xff). A notification before DRIVER_OK is ignored (§3.1.1) and the same request
//! completes after DRIVER_OK; queue_size 100 is kept as written but queue_enable
//! stays 0 and the device sets NEEDS_RESET there and then (before DRIVER_OK, so no
//! interrupt: isr 0); after a reset the device reads sector 0 again. blk64 and
//! hello64 (the healthy siblings) still finish and the hypervisor exits with success.
//!
//! `balloon64` rides along as well (4 MiB, `balloon = true`): it drives its
//! virtio-balloon (00:02.0) by hand on the same crate's transport and queues. The
//! device refuses FEATURES_OK without MUST_TELL_HOST; 256 pages across the 2 MiB
//! boundary are inflated with no target set (the device takes any RAM page not
//! ballooned yet), after which each reads all ones and a write does not stick,
//! including the page read just before the inflation (its translation cached: on
//! hardware with tagged TLBs this checks the flush, SVM TLB_CONTROL or VMX
//! INVEPT; QEMU's TCG and Bochs flush at every world switch anyway); deflated, each
//! reads zero and keeps a write, and the pages either side keep their pattern.
//! The stop report counts exactly the guest's 521 accesses to ballooned space, the
//! first at the cached page (0x200000), and every VM's memory comes back.
//!
//! On AMD-V (QEMU) and VT-x (Bochs, one processor).

use tests::*;
use xtask::emulator::EXIT_SUCCESS;

fn expect_blk64(out: &RunOutput) {
    out.expect_line("blk64 | blk64: pci 00:00.0 8086:1237 class 06")
        .expect_line("blk64 | blk64: pci 00:03.0 1af4:1042 class 01")
        .expect_line("blk64 | blk64: virtio-blk at 00:03.0, BAR 0 0xe0000000 size 0x8000")
        .expect_line("blk64 | blk64: capacity 128 sectors, read-only no")
        .expect_line("blk64 | blk64: read sectors 0-3 ok: hv-blk64 disk v1")
        .expect_line("blk64 | blk64: read sector 127 ok")
        .expect_line("blk64 | blk64: wrote sector 5, read back ok")
        .expect_line("blk64 | blk64: sectors 4 and 6 unchanged")
        .expect_line("blk64 | blk64: read past the end -> IoError")
        .expect_line("blk64 | blk64: read across the end -> IoError")
        .expect_line("blk64 | blk64: done")
        .expect_line("blk64 | blk64: driver dropped, device reset")
        .expect_line("hv: vm blk64 stopped: halted with interrupts disabled");
}

/// The outcome of a malformed queue in this device model: NEEDS_RESET after
/// DRIVER_OK (so the ISR's configuration bit), nothing used, the request untouched.
const NEEDS_RESET_AFTER_DRIVER_OK: &str = "-> needs-reset (status 0x4f, isr 0x2), used 0, req 0xff";

fn expect_vq64(out: &RunOutput) {
    out.expect_line("vq64 | vq64: virtio-blk at 00:03.0, BAR 0 0xe0000000")
        .expect_line(
            "vq64 | vq64: caps: common 0x0 notify 0x3000 (multiplier 4) isr 0x1000 device 0x2000",
        )
        .expect_line("vq64 | vq64: capacity 128 sectors, ram 20 MiB")
        .expect_line(
            "vq64 | vq64: early-notify -> ignored (status 0x0b, isr 0x0), used 0, req 0xff; \
             after driver-ok -> ok, used 1, req 0x00",
        );
    for scenario in [
        "loop",
        "outside-ram",
        "straddle",
        "len-4g",
        "len-sum",
        "nested-indirect",
        "avail-jump",
    ] {
        out.expect_line(&format!(
            "vq64 | vq64: {scenario} {NEEDS_RESET_AFTER_DRIVER_OK}"
        ));
    }
    out.expect_line("vq64 | vq64: indirect -> ok, used 1, req 0x00")
        .expect_line(
            "vq64 | vq64: queue-size-100 -> needs-reset (status 0x4f, isr 0x0), used 0, req 0xff",
        )
        .expect_line(
            "vq64 | vq64: queue-size-100: queue_size reads 100, queue_enable reads 0, \
             status after enable 0x4b",
        )
        .expect_line(
            "vq64 | vq64: read-after-reset -> ok (status 0x0f), used 1 len 513, req 0x00: \
             hv-blk64 disk v1",
        )
        .expect_line("vq64 | vq64: done")
        .expect_line("hv: vm vq64 stopped: halted with interrupts disabled")
        // Every access the guest itself made was RAM or the BAR.
        .expect_no("hv: vm vq64 unbacked");
}

fn expect_balloon64(out: &RunOutput) {
    out.expect_line("balloon64 | balloon64: virtio-balloon at 00:02.0")
        .expect_line("balloon64 | balloon64: without MUST_TELL_HOST the device refuses FEATURES_OK")
        .expect_line("balloon64 | balloon64: features 0x100000001 accepted")
        .expect_line("balloon64 | balloon64: inflated 256 pages")
        .expect_line("balloon64 | balloon64: ballooned pages read as all ones")
        .expect_line("balloon64 | balloon64: deflated, pages zeroed and writable")
        .expect_line("balloon64 | balloon64: neighbours kept their pattern")
        .expect_line("balloon64 | balloon64: 521 accesses to ballooned pages")
        .expect_line("balloon64 | balloon64: done")
        .expect_line("hv: vm balloon64 stopped: halted with interrupts disabled")
        // The device's own count: one buffer each way, nothing refused.
        .expect_line(
            "hv: vm balloon64 balloon: 256 pages inflated, 256 deflated, 0 held at the stop; \
             refused: 0, failed: 0",
        )
        // Each of them reached the hypervisor (none went through a stale
        // translation), the first being the page whose translation was cached.
        .expect_line(
            "hv: vm balloon64 unbacked guest-physical accesses: 521 (the first at 0x200000)",
        );
}

fn expect_crcheck(out: &RunOutput) {
    expect_blk64(out);
    expect_vq64(out);
    expect_balloon64(out);
    for (bit, name) in [
        (13, "vmxe"),
        (14, "smxe"),
        (18, "osxsave"),
        (22, "pke"),
        (6, "mce"),
    ] {
        out.expect_line(&format!(
            "crcheck64 | crcheck64: cr4 bit {bit} ({name}) -> #GP ok"
        ));
    }
    out.expect_line("crcheck64 | crcheck64: cr4 bit 15 (reserved) -> #GP ok")
        .expect_line("crcheck64 | crcheck64: cr4 bit 63 (reserved) -> #GP ok")
        .expect_line("crcheck64 | crcheck64: cr4 pae clear in long mode -> #GP ok")
        .expect_line("crcheck64 | crcheck64: cr4 bit 2 (tsd) -> ok")
        .expect_line("crcheck64 | crcheck64: cr0 pg without pe -> #GP ok")
        .expect_line("crcheck64 | crcheck64: cr0 nw without cd -> #GP ok")
        .expect_line("crcheck64 | crcheck64: cr0 bit 32 -> #GP ok")
        .expect_line("crcheck64 | crcheck64: cr0 wp off and on -> ok")
        .expect_line("crcheck64 | crcheck64: efer lme clear while paging -> #GP ok")
        .expect_line("crcheck64 | crcheck64: efer same value -> ok")
        .expect_line("crcheck64 | crcheck64: gs_base non-canonical -> ")
        .expect_line("crcheck64 | crcheck64: xsetbv xcr0=1 -> #UD ok")
        .expect_line("crcheck64 | crcheck64: xgetbv -> #UD ok")
        .expect_line("crcheck64 | crcheck64: vzeroupper -> #UD ok")
        .expect_line("crcheck64 | crcheck64: rdpkru -> #UD ok")
        .expect_line("crcheck64 | crcheck64: done")
        .expect_line("hello64 | hello64: done")
        // The balloon's frames went back to the pool and its deflated pages'
        // fresh frames were freed with the VM.
        .expect_line("hv: all VMs stopped; host memory returned: all")
        .expect_no("FAIL")
        .expect_no("VM entry failed")
        .expect_no("unexpected exception")
        // The hypervisor itself: no exception, no panic.
        .expect_no("hv: EXCEPTION")
        .expect_no("hv: PANIC");
}

#[test]
fn control_registers_under_amd_v() {
    let opts = QemuOptions {
        memory_mib: 256,
        // One processor: this test is about CR/EFER/XCR0 checks and the virtio disk,
        // and AMD-V under QEMU with two processors still has a rare open problem of
        // its own (README, Known problems), which the SMP tests cover.
        cpus: 1,
        force_tcg: true,
        ..Default::default()
    };
    let out = boot_qemu("crcheck_amd_v", GuestSet::CrCheck, &opts, QEMU_LIMIT);
    expect_crcheck(&out);
    out.expect_exit(EXIT_SUCCESS);
}

#[test]
fn control_registers_under_vt_x() {
    let out = boot_bochs(
        "crcheck_vt_x_bochs",
        GuestSet::CrCheck,
        &BochsOptions::default(),
        "hv: stopping with status",
        BOCHS_LIMIT,
    );
    expect_crcheck(&out);
    // GS base is passed through: Bochs's WRMSR makes the canonical check itself, as
    // processors do (QEMU's TCG does not, so the AMD-V run accepts either).
    out.expect_line("crcheck64 | crcheck64: gs_base non-canonical -> #GP ok")
        .expect_line("hv: stopping with status 16 (Success)");
}
