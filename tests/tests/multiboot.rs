//! A Multiboot v1 kernel (`mb32`, the guests crate's QEMU-compatible test kernel)
//! under AMD-V, QEMU's software-emulated SVM with nested paging, next to `hello64`.
//!
//! `mb32` prints what the hypervisor's Multiboot loader put in the information
//! structure (memory sizes, command line, module, memory map) and what the VM's
//! fw_cfg device reports, then ends through the `isa-debug-exit` port as QEMU test
//! kernels do. Every value is checked against the VM definition of
//! `GuestSet::Multiboot` (16 MiB, "mb32 hello=world", one 4 KiB module "testmod"),
//! and the debug-exit must stop only that VM: `hello64` still finishes and the
//! hypervisor itself ends with success.

use tests::*;
use xtask::emulator::EXIT_SUCCESS;
use xtask::guests::{multiboot_test_module, MULTIBOOT_TEST_MODULE_LEN};

#[test]
fn multiboot_kernel_under_amd_v() {
    let opts = QemuOptions {
        memory_mib: 256,
        cpus: 1,
        force_tcg: true,
        ..Default::default()
    };
    let out = boot_qemu("multiboot_amd_v", GuestSet::Multiboot, &opts, QEMU_LIMIT);

    // The byte sum mb32 prints for its first module: proves the data arrived, not
    // only the size.
    let sum: u32 = multiboot_test_module().iter().map(|&b| u32::from(b)).sum();
    // mem_upper is the KiB from 1 MiB to the end of the VM's 16 MiB; mem_lower the
    // conventional memory below the EBDA (639 KiB), as in the memory map: 0..EBDA
    // usable, the EBDA and the BIOS area reserved, 1 MiB..16 MiB usable.
    out.expect_line("hv: guest bundle holds 2 VM(s)")
        .expect_line("mb32 | mb32: multiboot magic ok")
        .expect_line("mb32 | mb32: mem_lower=639 mem_upper=15360")
        .expect_line("mb32 | mb32: cmdline=mb32 hello=world")
        .expect_line(&format!(
            "mb32 | mb32: modules=1 first=testmod size={MULTIBOOT_TEST_MODULE_LEN}"
        ))
        .expect_line(&format!("mb32 | mb32: module page-aligned=1 sum={sum}"))
        .expect_line("mb32 | mb32: mmap entries=4 available=15999")
        .expect_line("mb32 | mb32: fw_cfg signature=QEMU")
        .expect_line("mb32 | mb32: fw_cfg ram=16 MiB")
        .expect_line("mb32 | mb32: fw_cfg cpus=1")
        .expect_line("hv: vm mb32 stopped: guest wrote to the debug-exit port: exit code 99")
        .expect_line("hello64 | hello64: done")
        .expect_line("hv: all VMs stopped; host memory returned: all")
        .expect_no("mb32: bad magic")
        .expect_no("mb32: no ")
        .expect_no("EXCEPTION")
        .expect_no("PANIC")
        .expect_exit(EXIT_SUCCESS);
}
