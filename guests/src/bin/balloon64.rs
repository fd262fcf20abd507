//! `balloon64`: the VM's virtio-balloon (virtio 1.2 §5.5, modern PCI 1af4:1045),
//! driven by hand on the `virtio-drivers` crate's PCI transport and `VirtQueue`
//! (the crate has no balloon driver; the queues are plain split queues, §2.7, and
//! the crate's queue code needs nothing device-specific).
//!
//! What it proves, on whichever backend runs it (AMD-V or VT-x):
//!
//! 1. Feature negotiation (§3.1.1, §5.5.3): without VIRTIO_BALLOON_F_MUST_TELL_HOST
//!    the device refuses FEATURES_OK (the hypervisor unmaps ballooned pages, so the
//!    driver must tell it before reusing one, §5.5.6.1); with VERSION_1 +
//!    MUST_TELL_HOST it accepts. Only inflateq (0) and deflateq (1) are set up;
//!    STATS_VQ is declined.
//! 2. Inflation (§5.5.6): [`PAGES`] pages of its own RAM from [`REGION`] on
//!    (0x18_0000..0x28_0000: across the 2 MiB boundary, so both large nested
//!    mappings around it must be split) are filled with a pattern and handed over
//!    in one buffer of page frame numbers (le32 each, guest-physical address >>
//!    12). No target (`num_pages`) is needed: the device takes any page of RAM
//!    that is not ballooned already.
//! 3. The pages are gone: the first and last quadword of every page reads all ones
//!    (guest-physical space without RAM, as a PC's bus answers) and a write does
//!    not stick. One page was read just before the inflation, so its translation
//!    was in the TLB: on a processor whose TLB keeps a guest's translations
//!    across exits (ASID- or VPID-tagged), all ones there shows the hypervisor
//!    flushed them (SVM TLB_CONTROL, VMX INVEPT) before re-entry. QEMU's TCG and
//!    Bochs drop their TLBs at every world switch, so under them this part cannot
//!    catch a missing flush (either flush removed, the test still passed); it
//!    does catch a page left in the nested tables.
//! 4. Deflation: the same numbers on deflateq; every page then reads zero (a fresh
//!    frame, mapped at the first touch) and keeps what is written to it.
//! 5. The pages on either side of the range keep their pattern throughout (the
//!    split left the rest of each 2 MiB mapping in place).
//!
//! Polling only (interrupts stay off). Prints:
//! ```text
//! balloon64: virtio-balloon at 00:02.0
//! balloon64: without MUST_TELL_HOST the device refuses FEATURES_OK
//! balloon64: features 0x100000001 accepted
//! balloon64: inflated 256 pages
//! balloon64: ballooned pages read as all ones
//! balloon64: deflated, pages zeroed and writable
//! balloon64: neighbours kept their pattern
//! balloon64: 521 accesses to ballooned pages
//! balloon64: done
//! ```
//! Any failure is one `balloon64: FAIL <reason>` line. The hypervisor's stop report
//! then counts the accesses to unbacked space: exactly [`UNBACKED_ACCESSES`], the
//! first at [`REGION`] + [`CACHED_PAGE`] pages.

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

/// The first byte of the ballooned range: 1.5 MiB, above the image (at 1 MiB, a
/// few tens of KiB with its DMA area) and far below the stack (at the top of the
/// VM's 4 MiB).
#[cfg(target_os = "none")]
const REGION: usize = 0x18_0000;
/// 1 MiB of 4 KiB pages: 0x18_0000..0x28_0000, across the 2 MiB boundary.
#[cfg(target_os = "none")]
const PAGES: usize = 256;
#[cfg(target_os = "none")]
const PAGE: usize = 4096;
/// The page (index in the range) read just before inflating: the first page of
/// the upper 2 MiB, so its translation is cached when the balloon takes it.
#[cfg(target_os = "none")]
const CACHED_PAGE: usize = (0x20_0000 - REGION) / PAGE;
/// Pages whose first quadword gets a write while ballooned (read back after).
#[cfg(target_os = "none")]
const WRITE_PAGES: [usize; 4] = [0, CACHED_PAGE - 1, CACHED_PAGE, PAGES - 1];
/// Accesses to unbacked space the guest makes: two reads per page, and a write
/// and a read back on each of [`WRITE_PAGES`] (plus one read of the cached page
/// first). The stop report must show this many.
#[cfg(target_os = "none")]
const UNBACKED_ACCESSES: usize = 1 + 2 * PAGES + 2 * WRITE_PAGES.len();

#[cfg(target_os = "none")]
mod guest {
    use core::ptr::{read_volatile, write_volatile};

    use guests::println;
    use guests::virtio_hal::{BumpHal, PortCam};
    use virtio_drivers::queue::VirtQueue;
    use virtio_drivers::transport::pci::bus::{Command, PciRoot};
    use virtio_drivers::transport::pci::{virtio_device_type, PciTransport};
    use virtio_drivers::transport::{DeviceStatus, DeviceType, Transport};

    use super::{CACHED_PAGE, PAGE, PAGES, REGION, UNBACKED_ACCESSES, WRITE_PAGES};

    guests::entry_point!(main);

    /// VIRTIO_F_VERSION_1 (§6) and VIRTIO_BALLOON_F_MUST_TELL_HOST (§5.5.3).
    const VERSION_1: u64 = 1 << 32;
    const MUST_TELL_HOST: u64 = 1 << 0;
    const INFLATEQ: u16 = 0;
    const DEFLATEQ: u16 = 1;
    /// Descriptors per queue: one buffer at a time is all this guest needs.
    const QUEUE_SIZE: usize = 16;
    /// `actual` in the device configuration (§5.5.4: num_pages at 0, actual at 4).
    const ACTUAL: usize = 4;
    /// The pages either side of the range.
    const NEIGHBOURS: [usize; 2] = [REGION - PAGE, REGION + PAGES * PAGE];

    /// What the quadword at `addr` holds before the inflation: its address mixed
    /// (never 0, never all ones), so a page read from the wrong frame differs.
    fn pattern(addr: usize) -> u64 {
        let mixed = (addr as u64)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(17);
        (mixed & !1) | 2
    }

    fn page(i: usize) -> *mut u64 {
        (REGION + i * PAGE) as *mut u64
    }

    /// Fills the page at `base` with [`pattern`].
    fn fill(base: usize) {
        for q in (base..base + PAGE).step_by(8) {
            // SAFETY: a page of this guest's RAM that nothing else uses (the
            // range and its neighbours, see REGION); identity-mapped.
            unsafe { write_volatile(q as *mut u64, pattern(q)) };
        }
    }

    /// Whether the page at `base` holds [`pattern`].
    fn holds_pattern(base: usize) -> bool {
        // SAFETY: as in `fill`.
        (base..base + PAGE)
            .step_by(8)
            .all(|q| unsafe { read_volatile(q as *const u64) } == pattern(q))
    }

    fn main() {
        // An unexpected exception is reported (vector, RIP) instead of a triple fault.
        guests::idt::install();
        if let Err(why) = run() {
            println!("balloon64: FAIL {why}");
        }
    }

    /// Sets the device up with `features` (§3.1.1 steps 1-6); whether it accepted
    /// them (FEATURES_OK reads back set).
    fn negotiate(t: &mut PciTransport, features: u64) -> bool {
        t.set_status(DeviceStatus::empty());
        t.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
        t.write_driver_features(features);
        t.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK);
        t.get_status().contains(DeviceStatus::FEATURES_OK)
    }

    fn run() -> Result<(), &'static str> {
        // The range must be free: the image (its end is the linker's `_end`) lies
        // below it, the stack above it.
        extern "C" {
            static _end: u8;
        }
        let rsp: usize;
        // SAFETY: reads RSP into a register.
        unsafe { core::arch::asm!("mov {}, rsp", out(reg) rsp, options(nomem, nostack)) };
        // Only the symbol's address is taken (`link64.ld` defines it).
        let end = core::ptr::addr_of!(_end) as usize;
        if rsp < NEIGHBOURS[1] + 2 * PAGE || end > NEIGHBOURS[0] {
            return Err("the ballooned range overlaps the image or the stack");
        }

        let mut root = PciRoot::new(PortCam);
        let df = root
            .enumerate_bus(0)
            .find(|(_, info)| virtio_device_type(info) == Some(DeviceType::MemoryBalloon))
            .map(|(df, _)| df)
            .ok_or("no virtio-balloon function on bus 0")?;
        println!(
            "balloon64: virtio-balloon at {:02x}:{:02x}.{}",
            df.bus, df.device, df.function
        );
        root.set_command(df, Command::MEMORY_SPACE | Command::BUS_MASTER);
        let mut t = PciTransport::new::<BumpHal, _>(&mut root, df)
            .map_err(|_| "the PCI transport refused the function")?;

        let offered = t.read_device_features();
        if offered & (VERSION_1 | MUST_TELL_HOST) != VERSION_1 | MUST_TELL_HOST {
            return Err("the device does not offer VERSION_1 and MUST_TELL_HOST");
        }
        if negotiate(&mut t, VERSION_1) {
            return Err("the device accepted features without MUST_TELL_HOST");
        }
        println!("balloon64: without MUST_TELL_HOST the device refuses FEATURES_OK");
        if !negotiate(&mut t, VERSION_1 | MUST_TELL_HOST) {
            return Err("the device refused VERSION_1 | MUST_TELL_HOST");
        }
        println!(
            "balloon64: features {:#x} accepted",
            VERSION_1 | MUST_TELL_HOST
        );
        // §3.1.1 step 7: the queues, then DRIVER_OK. No indirect descriptors, no
        // event index (neither was negotiated).
        let mut inflateq = VirtQueue::<BumpHal, QUEUE_SIZE>::new(&mut t, INFLATEQ, false, false)
            .map_err(|_| "inflateq could not be set up")?;
        let mut deflateq = VirtQueue::<BumpHal, QUEUE_SIZE>::new(&mut t, DEFLATEQ, false, false)
            .map_err(|_| "deflateq could not be set up")?;
        t.finish_init();

        // The page frame numbers, one le32 each (§5.5.6), in one buffer.
        let mut pfns = [0u8; PAGES * 4];
        for (i, pfn) in pfns.as_chunks_mut::<4>().0.iter_mut().enumerate() {
            *pfn = (((REGION + i * PAGE) / PAGE) as u32).to_le_bytes();
        }

        // Before: the range and its neighbours hold the pattern.
        for i in 0..PAGES {
            fill(page(i) as usize);
        }
        NEIGHBOURS.iter().for_each(|&n| fill(n));
        if !(0..PAGES).all(|i| holds_pattern(page(i) as usize)) {
            return Err("the range did not keep its pattern before the inflation");
        }
        // The cached page: its translation is in the TLB when the notification
        // exits (the read is the last access before it).
        let cached = page(CACHED_PAGE);
        // SAFETY: RAM of this guest's, in the range (still backed).
        if unsafe { read_volatile(cached) } != pattern(cached as usize) {
            return Err("the cached page lost its pattern before the inflation");
        }

        // Inflate: the device uses the buffer after the hypervisor took the pages.
        inflateq
            .add_notify_wait_pop(&[&pfns], &mut [], &mut t)
            .map_err(|_| "the inflate buffer was not used")?;
        // §5.5.6.1: the driver reports what the balloon holds in `actual`.
        t.write_config_space(ACTUAL, PAGES as u32)
            .map_err(|_| "actual could not be written")?;
        println!("balloon64: inflated {PAGES} pages");

        // The cached page first: a stale translation would still give the pattern.
        // SAFETY (reads and writes below): guest-physical space this guest gave
        // away; the hypervisor completes each access (reads all ones, writes
        // dropped), volatile so every one is really made.
        let first = unsafe { read_volatile(cached) };
        if first != !0 {
            println!("balloon64: page {CACHED_PAGE} read {first:#x} after the inflation");
            return Err("a ballooned page whose translation was cached is still readable");
        }
        for i in 0..PAGES {
            // SAFETY: as above (the first and the last quadword of page i).
            let (head, tail) = unsafe { (read_volatile(page(i)), read_volatile(page(i).add(511))) };
            if head != !0 || tail != !0 {
                println!("balloon64: page {i} read {head:#x} / {tail:#x}");
                return Err("a ballooned page is still readable");
            }
        }
        for i in WRITE_PAGES {
            // SAFETY: as above.
            let back = unsafe {
                write_volatile(page(i), 0x5A5A_5A5A_0000_0000 | i as u64);
                read_volatile(page(i))
            };
            if back != !0 {
                println!("balloon64: page {i} read {back:#x} after a write");
                return Err("a write to a ballooned page stuck");
            }
        }
        println!("balloon64: ballooned pages read as all ones");

        // Deflate (§5.5.6.1: with MUST_TELL_HOST the pages are touched only after
        // the device used the buffer).
        deflateq
            .add_notify_wait_pop(&[&pfns], &mut [], &mut t)
            .map_err(|_| "the deflate buffer was not used")?;
        t.write_config_space(ACTUAL, 0u32)
            .map_err(|_| "actual could not be written")?;
        for i in 0..PAGES {
            let base = page(i) as usize;
            // SAFETY: RAM of this guest's again (deflated): fresh frames, mapped at
            // this first touch.
            if !(base..base + PAGE)
                .step_by(8)
                .all(|q| unsafe { read_volatile(q as *const u64) } == 0)
            {
                println!("balloon64: page {i} is not zero after the deflation");
                return Err("a deflated page is not zeroed");
            }
            fill(base);
        }
        if !(0..PAGES).all(|i| holds_pattern(page(i) as usize)) {
            return Err("a deflated page did not keep what was written");
        }
        println!("balloon64: deflated, pages zeroed and writable");

        if !NEIGHBOURS.iter().all(|&n| holds_pattern(n)) {
            return Err("a page next to the range lost its pattern");
        }
        println!("balloon64: neighbours kept their pattern");
        println!("balloon64: {UNBACKED_ACCESSES} accesses to ballooned pages");
        println!("balloon64: done");
        // The transport's drop resets the device (§2.4): nothing is ballooned, so
        // the reset gives nothing back.
        drop((inflateq, deflateq));
        drop(t);
        Ok(())
    }
}
