//! The hypervisor's own NVMe driver on QEMU's `-device nvme` (AMD-V, software
//! emulation): it finds the controller on the host's PCI bus, brings it up, reports
//! what Identify returned (model, serial, size, all set by this test), reads LBA 1
//! to say whether the disk carries a GPT header, and shuts the controller down
//! (I/O queues deleted, CC.SHN) when the hypervisor stops. The two BIOS boots attach
//! images that differ only where the answer must come from: with 512-byte LBAs the
//! signature is at byte 512; with 4096-byte LBAs LBA 1 starts at byte 4096, so the
//! same bytes at 512 must not count.

use std::path::PathBuf;

use tests::*;
use xtask::emulator::EXIT_SUCCESS;

const DISK_BYTES: u64 = 64 << 20;

/// A sparse raw image of 64 MiB with "EFI PART" at `signature_at`.
fn image(test: &str, signature_at: u64) -> PathBuf {
    use std::io::{Seek, SeekFrom, Write};
    let dir = work_dir(test);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("nvme-disk.img");
    let mut f = std::fs::File::create(&path).unwrap();
    f.set_len(DISK_BYTES).unwrap();
    f.seek(SeekFrom::Start(signature_at)).unwrap();
    f.write_all(b"EFI PART").unwrap();
    path
}

fn boot_with_disk(test: &str, img: &std::path::Path, device_extra: &str) -> RunOutput {
    boot_with_disk_on(test, img, device_extra, Firmware::Bios)
}

fn boot_with_disk_on(
    test: &str,
    img: &std::path::Path,
    device_extra: &str,
    firmware: Firmware,
) -> RunOutput {
    let opts = QemuOptions {
        firmware,
        memory_mib: 256,
        cpus: 1,
        force_tcg: true,
        extra_args: vec![
            "-drive".into(),
            format!("file={},if=none,id=hvdisk,format=raw", img.display()),
            "-device".into(),
            format!("nvme,serial={test},drive=hvdisk,addr=0x4{device_extra}"),
        ],
        ..Default::default()
    };
    boot_qemu(test, GuestSet::None, &opts, QEMU_LIMIT)
}

#[test]
fn nvme_disk_with_gpt_signature_512_byte_lbas() {
    let test = "nvme-gpt";
    let img = image(test, 512);
    let out = boot_with_disk(test, &img, "");
    out.expect_line(&format!(
        "hv: nvme: 00:04.0 \"QEMU NVMe Ctrl\" serial {test}, {} sectors of 512 bytes (512-byte LBAs,",
        DISK_BYTES / 512
    ))
    .expect_line("hv: nvme: LBA 1 holds a GPT header (\"EFI PART\")")
    .expect_line("hv: nvme: controller shut down")
    .expect_no("hv: nvme: WARNING")
    .expect_no("PANIC")
    .expect_exit(EXIT_SUCCESS);
}

#[test]
fn nvme_disk_without_gpt_4096_byte_lbas() {
    let test = "nvme-4k";
    // The signature where a 512-byte-LBA disk's LBA 1 would be, not at 4096.
    let img = image(test, 512);
    let out = boot_with_disk(
        test,
        &img,
        ",logical_block_size=4096,physical_block_size=4096",
    );
    out.expect_line(&format!(
        "hv: nvme: 00:04.0 \"QEMU NVMe Ctrl\" serial {test}, {} sectors of 512 bytes (4096-byte LBAs,",
        DISK_BYTES / 512
    ))
    .expect_line("hv: nvme: LBA 1 holds no GPT header")
    .expect_line("hv: nvme: controller shut down")
    .expect_no("hv: nvme: WARNING")
    .expect_no("PANIC")
    .expect_exit(EXIT_SUCCESS);
}

#[test]
fn nvme_disk_under_uefi() {
    // OVMF assigns the BARs instead of SeaBIOS: the BAR must still be found and
    // mapped.
    let test = "nvme-uefi";
    let img = image(test, 512);
    let out = boot_with_disk_on(test, &img, "", Firmware::Uefi);
    out.expect_line(&format!(
        "hv: nvme: 00:04.0 \"QEMU NVMe Ctrl\" serial {test}, {} sectors of 512 bytes (512-byte LBAs,",
        DISK_BYTES / 512
    ))
    .expect_line("hv: nvme: LBA 1 holds a GPT header (\"EFI PART\")")
    .expect_line("hv: nvme: controller shut down")
    .expect_no("hv: nvme: WARNING")
    .expect_exit(EXIT_SUCCESS);
}

#[test]
fn no_nvme_controller_is_one_line() {
    let opts = QemuOptions {
        memory_mib: 256,
        cpus: 1,
        force_tcg: true,
        ..Default::default()
    };
    let out = boot_qemu("nvme-absent", GuestSet::None, &opts, QEMU_LIMIT);
    out.expect_line("hv: nvme: no NVMe controller found")
        .expect_exit(EXIT_SUCCESS);
    let lines = out.serial.lines().filter(|l| l.contains("nvme")).count();
    assert_eq!(lines, 1, "one line about NVMe when there is none");
}
