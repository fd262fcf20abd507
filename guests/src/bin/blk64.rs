//! `blk64`: the VM's RAM-backed virtio-blk disk, driven by the `virtio-drivers` crate
//! (the guest side that rCore, Hafnium and others use) in polling mode.
//!
//! It scans PCI bus 0 through configuration mechanism #1 (ports 0xCF8/0xCFC), lists
//! every function, finds the virtio block device, turns on memory decoding and bus
//! mastering, and hands the function to `virtio_drivers::transport::pci::PciTransport`
//! (the BAR is where the hypervisor placed it, as firmware would; the guest runs
//! identity-mapped, so physical addresses are virtual addresses). DMA memory comes
//! from a bump allocator over a static buffer. Then, against the pattern xtask writes
//! into the disk file ([`pattern`]): reads sectors 0-3 in one request and the last
//! sector, writes sector 5 and reads it back, checks that its neighbours are
//! unchanged, and finally makes two requests the device must refuse with IOERR (one
//! past the end of the disk, one across it).
//!
//! Prints:
//! ```text
//! blk64: pci 00:00.0 8086:1237 class 06
//! blk64: pci 00:03.0 1af4:1042 class 01
//! blk64: virtio-blk at 00:03.0, BAR 0 ...
//! blk64: capacity 128 sectors, read-only no
//! blk64: read sectors 0-3 ok: hv-blk64 disk v1
//! blk64: read sector 127 ok
//! blk64: wrote sector 5, read back ok
//! blk64: sectors 4 and 6 unchanged
//! blk64: read past the end -> IoError
//! blk64: read across the end -> IoError
//! blk64: done
//! ```
//! Any failure is one `blk64: FAIL <reason>` line.

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

/// What the disk file holds at byte `offset` (xtask writes the same): sector 0 starts
/// with [`MAGIC`], every other byte mixes its sector number and its offset in the
/// sector, so a sector read from the wrong place or misaligned does not match.
#[cfg(target_os = "none")]
fn pattern(offset: usize) -> u8 {
    if offset < MAGIC.len() {
        return MAGIC[offset];
    }
    ((offset / 512) as u8).wrapping_mul(31) ^ (offset % 512) as u8
}

#[cfg(target_os = "none")]
const MAGIC: &[u8; 16] = b"hv-blk64 disk v1";

#[cfg(target_os = "none")]
mod guest {

    use guests::println;
    use guests::virtio_hal::{BumpHal, PortCam};
    use virtio_drivers::device::blk::{VirtIOBlk, SECTOR_SIZE};
    use virtio_drivers::transport::pci::bus::{Command, PciRoot};
    use virtio_drivers::transport::pci::{virtio_device_type, PciTransport};
    use virtio_drivers::transport::DeviceType;

    use super::{pattern, MAGIC};

    guests::entry_point!(main);

    const SECTOR: usize = SECTOR_SIZE;

    /// The first byte offset where `buf`, read from `sector` on, differs from the
    /// disk file's pattern.
    fn mismatch(sector: usize, buf: &[u8]) -> Option<usize> {
        (0..buf.len()).find(|&i| buf[i] != pattern(sector * SECTOR + i))
    }

    fn main() {
        // An unexpected exception is reported (vector, RIP) instead of a triple fault.
        guests::idt::install();
        if let Err(why) = run() {
            println!("blk64: FAIL {why}");
        }
    }

    fn run() -> Result<(), &'static str> {
        let mut root = PciRoot::new(PortCam);
        let mut found = None;
        for (df, info) in root.enumerate_bus(0) {
            println!(
                "blk64: pci {:02x}:{:02x}.{} {:04x}:{:04x} class {:02x}",
                df.bus, df.device, df.function, info.vendor_id, info.device_id, info.class
            );
            if virtio_device_type(&info) == Some(DeviceType::Block) && found.is_none() {
                found = Some(df);
            }
        }
        let df = found.ok_or("no virtio-blk function on bus 0")?;
        let bar = root
            .bar_info(df, 0)
            .map_err(|_| "BAR 0 cannot be read")?
            .ok_or("no BAR 0")?;
        let (address, size) = bar.memory_address_size().ok_or("BAR 0 is not memory")?;
        println!(
            "blk64: virtio-blk at {:02x}:{:02x}.{}, BAR 0 {address:#x} size {size:#x}",
            df.bus, df.device, df.function
        );
        root.set_command(df, Command::MEMORY_SPACE | Command::BUS_MASTER);
        let transport = PciTransport::new::<BumpHal, _>(&mut root, df)
            .map_err(|_| "the PCI transport refused the function")?;
        let mut blk = VirtIOBlk::<BumpHal, _>::new(transport)
            .map_err(|_| "the virtio-blk driver did not initialise")?;
        let capacity = blk.capacity() as usize;
        println!(
            "blk64: capacity {capacity} sectors, read-only {}",
            if blk.readonly() { "yes" } else { "no" }
        );
        if capacity < 8 {
            return Err("the disk is smaller than 8 sectors");
        }

        let mut four = [0u8; 4 * SECTOR];
        blk.read_blocks(0, &mut four)
            .map_err(|_| "reading sectors 0-3 failed")?;
        if let Some(at) = mismatch(0, &four) {
            println!("blk64: sectors 0-3 differ at byte {at}: {:#x}", four[at]);
            return Err("sectors 0-3 do not hold the disk file's pattern");
        }
        let magic = core::str::from_utf8(&four[..MAGIC.len()]).unwrap_or("?");
        println!("blk64: read sectors 0-3 ok: {magic}");

        let mut one = [0u8; SECTOR];
        blk.read_blocks(capacity - 1, &mut one)
            .map_err(|_| "reading the last sector failed")?;
        if mismatch(capacity - 1, &one).is_some() {
            return Err("the last sector does not hold the disk file's pattern");
        }
        println!("blk64: read sector {} ok", capacity - 1);

        let mut data = [0u8; SECTOR];
        for (i, b) in data.iter_mut().enumerate() {
            *b = 0xC3 ^ i as u8;
        }
        blk.write_blocks(5, &data)
            .map_err(|_| "writing sector 5 failed")?;
        let mut back = [0u8; SECTOR];
        blk.read_blocks(5, &mut back)
            .map_err(|_| "reading sector 5 back failed")?;
        if back != data {
            return Err("sector 5 read back differs from what was written");
        }
        println!("blk64: wrote sector 5, read back ok");
        let mut three = [0u8; 3 * SECTOR];
        blk.read_blocks(4, &mut three)
            .map_err(|_| "reading sectors 4-6 failed")?;
        if mismatch(4, &three[..SECTOR]).is_some()
            || mismatch(6, &three[2 * SECTOR..]).is_some()
            || three[SECTOR..2 * SECTOR] != data
        {
            return Err("the write to sector 5 changed its neighbours");
        }
        println!("blk64: sectors 4 and 6 unchanged");

        // Requests the device must refuse: the driver reports the IOERR status.
        match blk.read_blocks(capacity, &mut one) {
            Err(e) => println!("blk64: read past the end -> {e:?}"),
            Ok(()) => return Err("a read past the end of the disk succeeded"),
        }
        let mut two = [0u8; 2 * SECTOR];
        match blk.read_blocks(capacity - 1, &mut two) {
            Err(e) => println!("blk64: read across the end -> {e:?}"),
            Ok(()) => return Err("a read across the end of the disk succeeded"),
        }
        println!("blk64: done");
        // The driver's drop unsets the queue, and PciTransport's drop resets the
        // device and polls its status with `test byte [status], imm8` until it
        // reads 0: a flag-setting MMIO read the hypervisor emulates.
        drop(blk);
        println!("blk64: driver dropped, device reset");
        Ok(())
    }
}
