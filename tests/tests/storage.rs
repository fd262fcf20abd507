//! Persistent, encrypted VM disks (AMD-V under QEMU, which has the NVMe controller
//! the hypervisor drives; Bochs has none). xtask makes a GPT disk image with two
//! encrypted partitions; Linux gets "linux-data" (passphrase from its key file),
//! makes a filesystem on it, writes, and powers off; a second boot of the same
//! image finds what the first wrote. From the host: the marker the guest wrote is
//! nowhere in the image (it is encrypted at rest), and `hello64`, given "vault"
//! with a wrong passphrase, is refused and "vault" is left byte for byte as it was.

use tests::*;
use xtask::emulator::EXIT_SUCCESS;

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
    assert!(
        before[vault.clone()] == after[vault.clone()],
        "the partition opened with a wrong passphrase was written"
    );
}
