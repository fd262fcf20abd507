//! Snapshots outlive a restart of the hypervisor (AMD-V under QEMU): `count64` with
//! the snapshot area (partition "hv-snapshots") on the machine's NVMe disk. Boot 1
//! takes a snapshot (saved in the area); boot 2 finds it there, restores it (its
//! RAM read back and checked) and the count goes back to the snapshot's; then a
//! byte of the snapshot's RAM on the disk image is flipped, and boot 3 refuses the
//! restore as corrupted, the VM running on unchanged.

use std::time::Duration;
use tests::*;
use xtask::build::CONSOLE_TEST_PASSPHRASE;
use xtask::emulator::{ScriptStep as Step, EXIT_SUCCESS};

const ESC: &[u8] = b"\x1d";

#[test]
fn snapshots_survive_a_restart_under_amd_v() {
    let storage = GuestSet::SnapshotDiskTest.storage().unwrap().unwrap();
    let target = xtask::build::target_dir();
    // A fresh disk (an empty snapshot area) for every run of the test.
    let _ = std::fs::remove_file(storage.image_path(&target));
    let image = xtask::storage::prepare(&storage, &target).expect("making the disk image");
    let opts = QemuOptions {
        memory_mib: 256,
        cpus: 2,
        force_tcg: true,
        tcg_thread: Some(xtask::emulator::TcgThread::Single),
        nvme_disk: Some(image.clone()),
        ..Default::default()
    };
    let pass = format!("{CONSOLE_TEST_PASSPHRASE}\r");

    let first = scripted_qemu(
        "snapshot_disk_first",
        GuestSet::SnapshotDiskTest,
        &opts,
        &[
            Step::new("count64 | count64: 2", b"a\r"),
            Step::new("count64 | count64: got a at ", ESC),
            Step::new("hv> ", b"snapshot count64 t1\r"),
            Step::new("administrator passphrase: ", pass.as_bytes()),
            Step::new("\"snapshot count64 t1\": done", b"stop count64\r"),
        ],
        QEMU_LIMIT,
    );
    first
        .expect_line("hv: snapshot area: partition \"hv-snapshots\", 32 MiB, 0 snapshot(s)")
        .expect_line("saved in the disk's snapshot area")
        .expect_line("hv: vm count64 stopped: stopped by the operator")
        .expect_no("[script]")
        .expect_exit(EXIT_SUCCESS);
    let a = count64_at(&first.serial, "a");

    let second = scripted_qemu(
        "snapshot_disk_second",
        GuestSet::SnapshotDiskTest,
        &opts,
        &[
            Step::new("count64 | count64: 4", ESC),
            Step::new("hv> ", b"snapshots\r"),
            Step::new("earlier run", b""),
            Step::new("hv> ", b"restore count64 t1\r"),
            Step::new("administrator passphrase: ", pass.as_bytes()),
            Step::new("\"restore count64 t1\": done", b"console count64\r"),
            Step::new("the keyboard is count64's", b"c\r"),
            Step::new("count64 | count64: got c at ", ESC),
            Step::new("hv> ", b"stop count64\r"),
            Step::new("administrator passphrase: ", pass.as_bytes()),
        ],
        QEMU_LIMIT,
    );
    second
        .expect_line("hv: snapshot area: partition \"hv-snapshots\", 32 MiB, 1 snapshot(s)")
        .expect_line("hv: VM count64 restored to snapshot \"t1\" (from the disk's snapshot area)")
        .expect_no("[script]")
        .expect_exit(EXIT_SUCCESS);
    let c = count64_at(&second.serial, "c");
    assert!(
        c >= a && c <= a + 3,
        "restored from the disk, count64 counts on from the snapshot's {a}: got c at {c}"
    );

    // Flip a byte of the snapshot's RAM on the disk image.
    let mut bytes = std::fs::read(&image).unwrap();
    let part = {
        let mut read = |lba: u64, buf: &mut [u8; 512]| -> Result<(), ()> {
            let at = lba as usize * 512;
            buf.copy_from_slice(bytes.get(at..at + 512).ok_or(())?);
            Ok(())
        };
        gptdisk::find_partition(&mut read, (bytes.len() / 512) as u64, "hv-snapshots")
            .expect("the snapshot area")
            .lbas
    };
    let base = part.start as usize * 512;
    let sectors = part.end - part.start;
    let index =
        snapshot::area::Index::parse(&bytes[base..base + 8192], sectors).expect("its index");
    let entry = index.find("count64", "t1").expect("t1 in the index");
    let at = base + entry.ram_start() as usize * 512 + 0x1234;
    bytes[at] ^= 0x40;
    std::fs::write(&image, &bytes).unwrap();

    let third = scripted_qemu(
        "snapshot_disk_third",
        GuestSet::SnapshotDiskTest,
        &opts,
        &[
            Step::new("count64 | count64: 2", ESC),
            Step::new("hv> ", b"restore count64 t1\r"),
            Step::new("administrator passphrase: ", pass.as_bytes()),
            Step::new("\"restore count64 t1\": failed", b""),
            Step::new("hv> ", b"delete-snapshot count64 t1\r"),
            Step::new("\"delete-snapshot count64 t1\": done", b"exit\r"),
            Step::new("count64 | count64: 6", ESC).after(Duration::from_millis(100)),
            Step::new("hv> ", b"stop count64\r"),
            Step::new("administrator passphrase: ", pass.as_bytes()),
        ],
        QEMU_LIMIT,
    );
    third
        .expect_line("hv: the snapshot's RAM on the disk is corrupted (SHA-256 mismatch)")
        .expect_line("and from the disk's snapshot area")
        .expect_line("hv: vm count64 stopped: stopped by the operator")
        .expect_no("[script]")
        .expect_exit(EXIT_SUCCESS);
    // The area is empty again.
    let bytes = std::fs::read(&image).unwrap();
    let index = snapshot::area::Index::parse(&bytes[base..base + 8192], sectors).unwrap();
    assert!(index.entries.is_empty(), "{index:?}");
}
