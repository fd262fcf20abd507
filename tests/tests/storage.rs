//! Persistent, encrypted VM disks (AMD-V under QEMU, which has the NVMe controller
//! the hypervisor drives; Bochs has none). xtask makes a GPT disk image with two
//! encrypted partitions; Linux gets "linux-data" (passphrase from its key file),
//! makes a filesystem on it, writes, and powers off; a second boot of the same
//! image finds what the first wrote. From the host: the marker the guest wrote is
//! nowhere in the image (it is encrypted at rest) but is there once the host
//! decrypts the partition (the kernel's AES-NI cipher is standard XTS), and
//! `hello64`, given "vault" with a wrong passphrase, is refused and "vault" is left
//! byte for byte as it was.
//! A third boot, interactive and driven through the console, snapshots Linux with
//! that disk, writes a file, clones the snapshot (the clone does not see the file;
//! what it writes stays its own) and restores it: the file is gone from the disk.

use tests::*;
use xtask::build::CONSOLE_TEST_PASSPHRASE;
use xtask::emulator::{ScriptStep as Step, EXIT_SUCCESS};

const ESC: &[u8] = b"\x1d";

fn partition(image: &[u8], name: &str) -> std::ops::Range<usize> {
    let mut read = |lba: u64, buf: &mut [u8; 512]| -> Result<(), ()> {
        let at = lba as usize * 512;
        buf.copy_from_slice(image.get(at..at + 512).ok_or(())?);
        Ok(())
    };
    let p = gptdisk::find_partition(&mut read, (image.len() / 512) as u64, name)
        .unwrap_or_else(|e| panic!("partition {name}: {e:?}"));
    p.lbas.start as usize * 512..p.lbas.end as usize * 512
}

#[test]
fn linux_keeps_its_encrypted_disk_between_boots_under_amd_v() {
    let storage = GuestSet::LinuxDiskTest.storage().unwrap().unwrap();
    let target = xtask::build::target_dir();
    // A fresh disk for every run of the test: the first boot must make the
    // filesystem.
    let _ = std::fs::remove_file(storage.image_path(&target));
    let image = xtask::storage::prepare(&storage, &target).expect("making the disk image");
    let before = std::fs::read(&image).unwrap();
    let vault = partition(&before, "vault");
    let opts = QemuOptions {
        memory_mib: 512,
        cpus: 1,
        force_tcg: true,
        nvme_disk: Some(image.clone()),
        ..Default::default()
    };
    let check = |out: &RunOutput, boot: u32, how: &str| {
        out.expect_line("hv: nvme: 00:")
            // QEMU's CPU has AES-NI (`+aes`): the sectors go through the `aesni`
            // object, checked at boot against the software cipher.
            .expect_line("hv:   disk encryption: AES-NI (checked against the software cipher)")
            .expect_line("hv: vm linux: disk = partition \"linux-data\" of the machine's disk")
            .expect_line(", encrypted, unlocked")
            .expect_line(
                "hv: vm hello64 not started: partition \"vault\": wrong passphrase for the encrypted disk",
            )
            .expect_line("linux | hv-linux: userspace ok")
            .expect_line(&format!("linux | hv-linux: /data mounted, {how}"))
            .expect_line(&format!("linux | hv-linux: /data boots {boot}, unmounted"))
            .expect_line("hv: vm linux stopped: halted with interrupts disabled")
            .expect_line("hv: nvme: controller shut down")
            .expect_no("Kernel panic")
            .expect_no("EXCEPTION")
            .expect_exit(EXIT_SUCCESS);
    };
    let first = boot_qemu(
        "linux_disk_amd_v_first",
        GuestSet::LinuxDiskTest,
        &opts,
        QEMU_LIMIT * 3,
    );
    check(&first, 1, "new filesystem");
    let second = boot_qemu(
        "linux_disk_amd_v_second",
        GuestSet::LinuxDiskTest,
        &opts,
        QEMU_LIMIT * 3,
    );
    check(&second, 2, "existing filesystem");

    // A third boot, interactive, driven through the console: a snapshot of Linux
    // with its writable disk, a file written after it, a clone of the snapshot
    // (which sees the disk as it was then, and whose own writes stay its own),
    // and a restore that rolls the disk back.
    let pass = format!("{CONSOLE_TEST_PASSPHRASE}\r");
    let steps = [
        Step::new("hv-linux: /data mounted", b""),
        Step::new(" # ", b"echo ready-$((40+2))\r"),
        Step::new("ready-42", ESC),
        Step::new("hv> ", b"snapshot linux d1\r"),
        Step::new("administrator passphrase: ", pass.as_bytes()),
        Step::new("\"snapshot linux d1\": done", b"console linux\r"),
        Step::new(
            "the keyboard is linux's",
            b"echo late > /data/late.txt; sync; cat /data/late.txt && echo wrote-$((40+2))\r",
        ),
        Step::new("wrote-42", ESC),
        Step::new("hv> ", b"clone linux l2 d1\r"),
        Step::new("administrator passphrase: ", pass.as_bytes()),
        Step::new("\"clone linux l2 d1\": done", b"console l2\r"),
        Step::new(
            "the keyboard is l2's",
            b"cat /data/late.txt || echo clone-clean-$((40+2))\r",
        ),
        Step::new(
            "clone-clean-42",
            b"echo mine > /data/mine.txt; sync; cat /data/mine.txt && echo clone-wrote-$((40+2))\r",
        ),
        Step::new("clone-wrote-42", ESC),
        Step::new("hv> ", b"restore linux d1\r"),
        Step::new("administrator passphrase: ", pass.as_bytes()),
        Step::new("\"restore linux d1\": done", b"console linux\r"),
        Step::new(
            "the keyboard is linux's",
            b"cat /data/late.txt /data/mine.txt || echo rolled-back-$((40+2)); cat /data/hv-boots\r",
        ),
        Step::new("rolled-back-42", ESC),
        Step::new("hv> ", b"stop l2\r"),
        Step::new("administrator passphrase: ", pass.as_bytes()),
        Step::new("\"stop l2\": done", b"stop linux\r"),
    ];
    let console_opts = QemuOptions {
        // Linux's 256 MiB, its snapshot's copy, the clone's own pages.
        memory_mib: 768,
        cpus: 2,
        tcg_thread: Some(xtask::emulator::TcgThread::Single),
        ..opts.clone()
    };
    let third = scripted_qemu(
        "linux_disk_console_amd_v",
        GuestSet::LinuxDiskConsoleTest,
        &console_opts,
        &steps,
        QEMU_LIMIT * 3,
    );
    third
        .expect_line("hv: snapshot \"d1\" of VM linux taken in ")
        .expect_line("hv: VM l2 cloned from linux's snapshot \"d1\"")
        .expect_line("clone-clean-42")
        .expect_line("clone-wrote-42")
        .expect_line("vm linux: disk rolled back to the snapshot")
        .expect_line("rolled-back-42")
        .expect_line("hv: vm linux stopped: stopped by the operator")
        .expect_line("hv: all VMs stopped; host memory returned: all")
        .expect_no("[script]")
        .expect_no("Kernel panic")
        .expect_no("EXT2-fs error")
        .expect_exit(EXIT_SUCCESS);
    // The restored guest's disk is the one of the second boot: "2" boots.
    let tail = &third.serial[third.serial.find("rolled-back-42").unwrap()..];
    assert!(tail.contains("linux | 2"), "{tail}");

    let after = std::fs::read(&image).unwrap();
    let linux = partition(&after, "linux-data");
    assert_ne!(
        before[linux.clone()],
        after[linux.clone()],
        "the guest's writes reached the disk image"
    );
    let marker = b"hv-persist-marker";
    assert!(
        !after.windows(marker.len()).any(|w| w == marker),
        "the marker the guest wrote is in the image in plain text"
    );
    // ... and the host's own `diskcrypt` (the same cipher as the software one the
    // kernel checked AES-NI against) decrypts it: what the guest wrote through the
    // kernel's AES-NI is standard AES-256-XTS (plain64) under the header's key.
    let spec = storage
        .partitions
        .iter()
        .find(|p| p.name == "linux-data")
        .unwrap();
    let key_file = spec.key_file.as_ref().expect("linux-data has a key file");
    let passphrase = xtask::vms::passphrase(std::fs::read(key_file).unwrap());
    let sealed = &after[linux];
    let header = diskcrypt::Header::parse(&sealed[..diskcrypt::HEADER_LEN]).unwrap();
    let key = header.unlock_alloc(&passphrase).unwrap();
    let start = header.data_start_sector() as usize * diskcrypt::SECTOR_SIZE;
    let mut plain =
        sealed[start..start + header.data_sectors as usize * diskcrypt::SECTOR_SIZE].to_vec();
    diskcrypt::SectorCipher::new(&key)
        .decrypt_sectors(0, &mut plain)
        .unwrap();
    assert!(
        plain.windows(marker.len()).any(|w| w == marker),
        "the host's decryption of linux-data does not hold the marker the guest wrote"
    );
    assert!(
        before[vault.clone()] == after[vault.clone()],
        "the partition opened with a wrong passphrase was written"
    );
}
