//! Persistent, encrypted VM disks, on AMD-V under QEMU (the disk is an NVMe
//! controller) and on VT-x under Bochs (which has no NVMe: the disk is the second
//! ATA disk, driven by the hypervisor's ATA driver). xtask makes a GPT disk image
//! with two encrypted partitions; Linux gets "linux-data" (passphrase from its key file),
//! makes a filesystem on it, writes, and powers off; a second boot of the same
//! image finds what the first wrote. From the host: the marker the guest wrote is
//! nowhere in the image (it is encrypted at rest) but is there once the host
//! decrypts the partition (the kernel's AES-NI cipher is standard XTS), and
//! `hello64`, given "vault" with a wrong passphrase, is refused and "vault" is left
//! byte for byte as it was.
//! On AMD-V, a third boot, interactive and driven through the console, snapshots Linux with
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

/// What every boot of the Linux disk guest set says on both vendors: the sectors go
/// through AES-NI (QEMU's `+aes`; Bochs's `corei7_skylake_x`), "linux-data" is
/// unlocked, "vault" with its wrong passphrase is refused, and Linux's /init reports
/// boot `boot` of its filesystem, mounted `how`.
fn expect_linux_disk_boot(out: &RunOutput, boot: u32, how: &str) {
    out.expect_line("hv:   disk encryption: AES-NI (checked against the software cipher)")
        .expect_line("hv: vm linux: disk = partition \"linux-data\" of the machine's disk")
        .expect_line(", encrypted, unlocked")
        .expect_line(
            "hv: vm hello64 not started: partition \"vault\": wrong passphrase for the encrypted disk",
        )
        .expect_line("linux | hv-linux: userspace ok")
        .expect_line(&format!("linux | hv-linux: /data mounted, {how}"))
        .expect_line(&format!("linux | hv-linux: /data boots {boot}, unmounted"))
        .expect_line("hv: vm linux stopped: halted with interrupts disabled")
        .expect_no("Kernel panic")
        .expect_no("EXCEPTION");
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
            .expect_line("hv: nvme: controller shut down")
            .expect_exit(EXIT_SUCCESS);
        expect_linux_disk_boot(out, boot, how);
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

/// The same two boots on VT-x under Bochs (one processor; Linux with 1 vCPU and
/// 128 MiB): the disk image is attached as `ata0-slave` beside the boot image, and
/// the hypervisor must choose it (its GPT has hv partitions), read the guest
/// bundle from it, and leave the boot disk alone. No console boot here: a third Bochs boot of Linux would cost
/// minutes more.
#[test]
fn linux_keeps_its_encrypted_disk_between_boots_under_vt_x() {
    let set = GuestSet::LinuxDiskVtxTest;
    let storage = set.storage().unwrap().unwrap();
    let target = xtask::build::target_dir();
    let _ = std::fs::remove_file(storage.image_path(&target));
    let image = xtask::storage::prepare(&storage, &target).expect("making the disk image");
    // The guest bundle goes to the disk's "hv-bundle" partition and the boot image
    // carries only a reference to it: the hypervisor reads it over ATA.
    let built = xtask::build::build_with_bundle_on_disk(
        &build_options(),
        "linux-disk-vtx-test",
        &set.vms().unwrap(),
        &set.machine().unwrap(),
        &image,
    )
    .unwrap_or_else(|e| panic!("building the images failed: {e}"));
    let before = std::fs::read(&image).unwrap();
    let vault = partition(&before, "vault");
    let opts = BochsOptions {
        memory_mib: 384,
        cpus: 1,
        ata_disk: Some(image.clone()),
    };
    let boot_image = std::fs::read(&built.images.bios).unwrap();
    let check = |out: &RunOutput, boot: u32, how: &str| {
        // The persistent disk is the primary channel's slave, the boot image its
        // master.
        assert!(
            out.line_with("the host disk")
                .starts_with("hv: ata: primary slave "),
            "{}",
            out.line_with("the host disk")
        );
        assert!(out
            .line_with("no usable GPT")
            .starts_with("hv: ata: primary master "));
        out.expect_line("hv: using VT-x")
            .expect_line("hv: guest bundle read from partition \"hv-bundle\" of the ATA disk: ")
            .expect_line(&format!(
                "{} sectors of 512 bytes: GPT with 3 hv partition(s); the host disk",
                before.len() / 512
            ))
            .expect_line(&format!(
                "{} sectors of 512 bytes: no usable GPT",
                boot_image.len() / 512
            ))
            .expect_line("hv: ata: write cache flushed")
            .expect_line("hv: stopping with status 16 (Success)")
            .expect_no("hv: ata: WARNING");
        expect_linux_disk_boot(out, boot, how);
    };
    let first = boot_bochs_image(
        "linux_disk_vt_x_first",
        &built.images.bios,
        &opts,
        "hv: stopping with status",
        BOCHS_LIMIT,
    );
    check(&first, 1, "new filesystem");
    let second = boot_bochs_image(
        "linux_disk_vt_x_second",
        &built.images.bios,
        &opts,
        "hv: stopping with status",
        BOCHS_LIMIT,
    );
    check(&second, 2, "existing filesystem");

    let after = std::fs::read(&image).unwrap();
    assert_eq!(before.len(), after.len());
    let linux = partition(&after, "linux-data");
    assert_ne!(
        before[linux.clone()],
        after[linux.clone()],
        "the guest's writes reached the disk image"
    );
    // The guest's /init writes "hv-persist-marker boot N" to /data: those lines
    // are nowhere in the image; the bare marker only in "hv-bundle", whose
    // initramfs holds the script itself in plain text.
    let has = |bytes: &[u8], needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    for boot in [1, 2] {
        let line = format!("hv-persist-marker boot {boot}\n");
        assert!(
            !has(&after, line.as_bytes()),
            "the line the guest wrote on boot {boot} is in the image in plain text"
        );
    }
    let bundle = partition(&after, "hv-bundle");
    assert!(
        !has(&after[..bundle.start], b"hv-persist-marker")
            && !has(&after[bundle.end..], b"hv-persist-marker"),
        "the marker the guest wrote is in the image in plain text"
    );
    assert!(
        before[vault.clone()] == after[vault.clone()],
        "the partition opened with a wrong passphrase was written"
    );
    // The boot disk (Bochs runs a private copy of the boot image) was only read.
    let booted = work_dir("linux_disk_vt_x_second").join("disk.img");
    assert!(
        std::fs::read(&booted).unwrap() == boot_image,
        "the hypervisor wrote to the boot disk {}",
        booted.display()
    );
}
