//! The persistent disk (`[storage]`): xtask creates the GPT image, the hypervisor
//! boots under AMD-V (QEMU's software-emulated SVM) with it attached as an NVMe
//! disk, beside `hello64` whose disk is the partition `hello-data`, and the image
//! keeps what was written to the partition across a reconcile and a boot.
//!
//! The kernel does not read the NVMe disk yet (its driver and the partition
//! serving are the lead's wiring): this shows the machine boots with the disk
//! attached and the bundle carrying a partition disk, and that xtask's side keeps
//! the data. Once the kernel serves partitions, this test is where to check that
//! the guest sees `hello-data`.

use std::io::{Read, Seek, SeekFrom, Write};

use gptdisk::image::Action;
use tests::*;
use xtask::emulator::EXIT_SUCCESS;

#[test]
fn persistent_disk_over_nvme_under_amd_v() {
    let dir = work_dir("storage_amd_v");
    std::fs::create_dir_all(&dir).unwrap();
    let seed = dir.join("seed.bin");
    std::fs::write(&seed, b"seed contents").unwrap();
    let storage = xtask::build::storage_test_disk(&dir, &seed);
    let image = storage.image_path(&dir);
    let _ = std::fs::remove_file(&image);

    // First run: created, with the seed at the partition's start.
    let path = xtask::storage::prepare(&storage, &dir).unwrap();
    assert_eq!(path, image);
    let table = gptdisk::image::read_image(&image).unwrap();
    let part = table.find("hello-data").unwrap().clone();
    assert_eq!(part.lbas, 2048..2048 + 8192);
    let at = part.lbas.start * 512;
    let read_at = |offset: u64, len: usize| {
        let mut f = std::fs::File::open(&image).unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        let mut buf = vec![0u8; len];
        f.read_exact(&mut buf).unwrap();
        buf
    };
    assert_eq!(read_at(at, 13), b"seed contents");

    // What a guest would write, then a new seed: reconciling keeps the data.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap();
    f.seek(SeekFrom::Start(at + 512)).unwrap();
    f.write_all(b"written by a guest").unwrap();
    drop(f);
    std::fs::write(&seed, b"another seed!").unwrap();
    let report = gptdisk::image::reconcile(&image, storage.bytes, &storage.specs()).unwrap();
    assert_eq!(report.partitions[0].action, Action::Kept);

    let opts = QemuOptions {
        memory_mib: 256,
        cpus: 1,
        force_tcg: true,
        nvme_disk: Some(image.clone()),
        ..Default::default()
    };
    let out = boot_qemu("storage_amd_v", GuestSet::Storage, &opts, QEMU_LIMIT);
    out.expect_line("hv: guest bundle holds 1 VM(s)")
        .expect_line("hello64 | hello64: done")
        .expect_line("hv: all VMs stopped; host memory returned: all")
        .expect_no("EXCEPTION")
        .expect_no("PANIC")
        .expect_exit(EXIT_SUCCESS);

    // After the boot (QEMU had the image open writable): the same table, the data.
    let after = gptdisk::image::read_image(&image).unwrap();
    assert_eq!(after.partitions, table.partitions);
    assert_eq!(read_at(at, 13), b"seed contents");
    assert_eq!(read_at(at + 512, 18), b"written by a guest");
}
