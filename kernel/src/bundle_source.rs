//! Where the guest bundle comes from: the bootloader's ramdisk, or, when the ramdisk
//! holds only a `bundle::BundleRef`, the start of a GPT partition of the host disk
//! (NVMe or ATA, see `host_disk`), which the hypervisor reads itself. The second
//! way starts faster under emulators, whose firmware disk services are slow (see
//! `bundle::reference`).

use alloc::format;
use alloc::string::String;

use crate::{host_disk, memory, println, time};

/// The bundle's bytes: the ramdisk itself, or what the reference in it names, read
/// into page frames that stay allocated for the hypervisor's life (VM specs borrow
/// from them).
pub fn bundle_bytes(ramdisk: &'static [u8]) -> Result<&'static [u8], String> {
    let Some(reference) = bundle::read_ref(ramdisk) else {
        return Ok(ramdisk);
    };
    let r = reference.map_err(|e| format!("{e}"))?;
    let start = time::uptime_micros();
    let mut disk = host_disk::HostDisk::get().ok_or_else(|| {
        format!(
            "the ramdisk says the bundle is on partition \"{}\" of the machine's disk, but \
             the hypervisor has no disk of its own (see the boot log's nvme and ata lines)",
            r.partition
        )
    })?;
    let lbas = crate::vmm::vm_disk::find_partition(&mut disk, r.partition)
        .map_err(|e| format!("the bundle: {e}"))?;
    let capacity = (lbas.end - lbas.start) * 512;
    if r.len == 0 || r.len > capacity {
        return Err(format!(
            "the bundle ({} bytes) does not fit partition \"{}\" ({capacity} bytes)",
            r.len, r.partition
        ));
    }
    let len = r.len.next_multiple_of(512);
    let pa = memory::alloc_zeroed(len, 4096)
        .map_err(|e| format!("no memory for the {} KiB bundle: {e:?}", len / 1024))?;
    // SAFETY: `alloc_zeroed` gave `len` bytes of RAM, reached through the physical
    // mapping, that nothing else uses; they are never freed, so the slice may live
    // for the hypervisor's life.
    let buf: &'static mut [u8] =
        unsafe { core::slice::from_raw_parts_mut(memory::phys_to_virt(pa), len as usize) };
    const CHUNK: usize = 1 << 20;
    for (i, chunk) in buf.chunks_mut(CHUNK).enumerate() {
        let lba = lbas.start + (i * CHUNK / 512) as u64;
        host_disk::with(|d| d.read(lba, chunk))
            .ok_or("the host disk went away")?
            .map_err(|e| format!("reading the bundle at LBA {lba}: {e}"))?;
    }
    let bytes = &buf[..r.len as usize];
    if bundle::reference::checksum(bytes) != r.checksum {
        memory::free(pa, len);
        return Err(format!(
            "the bundle on partition \"{}\" does not match the boot image's reference \
             (checksum): a stale or partly written copy",
            r.partition
        ));
    }
    let kind = host_disk::with(|d| d.kind()).unwrap_or("host");
    println!(
        "hv: guest bundle read from partition \"{}\" of the {kind} disk: {} KiB in {} ms",
        r.partition,
        r.len / 1024,
        (time::uptime_micros() - start) / 1000
    );
    Ok(bytes)
}
