//! `vq64` (hostile): hand-built malformed virtqueues against the VM's RAM-backed
//! virtio-blk disk, through the hypervisor's real BAR emulation.
//!
//! No driver crate: the guest finds the virtio-blk function on PCI bus 0
//! (configuration mechanism #1), turns on memory decoding and bus mastering (INTx
//! off: it polls), walks the virtio vendor capabilities in configuration space
//! (common configuration, notifications with their multiplier, ISR, device
//! configuration; virtio 1.2 §4.1.4) and then runs one scenario after another. Each
//! starts with a device reset (status 0, polled until it reads 0, §4.1.4.3.1) and the
//! §3.1.1 initialisation (ACKNOWLEDGE, DRIVER, VERSION_1 and, for the indirect ones,
//! INDIRECT_DESC, FEATURES_OK, queue 0 at its maximum size with its rings in this
//! guest's static memory, DRIVER_OK) unless the scenario says otherwise, builds one
//! request by hand, notifies, and reads back what the device did: its status byte
//! (DEVICE_NEEDS_RESET is 0x40), the ISR (bit 1: the configuration change a device
//! sends when it sets NEEDS_RESET after DRIVER_OK, §2.1.2), used.idx and the
//! request's status byte (preset to 0xff, so an untouched request shows).
//!
//! | scenario | what is wrong |
//! | --- | --- |
//! | `early-notify` | a valid read, notified before DRIVER_OK (§3.1.1: nothing may be consumed); then DRIVER_OK and a second notification |
//! | `loop` | descriptors 0 and 1 point at each other with NEXT |
//! | `outside-ram` | the data buffer at 64 GiB |
//! | `straddle` | the data buffer starts 8 bytes before the end of RAM |
//! | `len-4g` | two 0xffff_f000-byte buffers (each alone already past this small VM's RAM) |
//! | `len-sum` | 254 buffers of 17 MiB, each inside RAM: only their sum passes 4 GiB |
//! | `indirect` | none: a valid indirect table (the control for the next one) |
//! | `nested-indirect` | an indirect table whose descriptor is INDIRECT itself (§2.7.5.3.1) |
//! | `queue-size-100` | queue_size 100 (not a power of two, §2.7) written before queue_enable |
//! | `avail-jump` | avail.idx 300 on a queue of 256: more chains than the queue holds |
//! | `read-after-reset` | none: the device must work again after all that |
//!
//! A hostile request must end as either `needs-reset` (DEVICE_NEEDS_RESET set, nothing
//! used, the request untouched) or `failed` (a used entry whose status is IOERR or
//! UNSUPP, no NEEDS_RESET): both are what the spec allows; the test pins which one
//! the hypervisor's device model gives. Anything else (the request completed, the
//! data buffer written, no reaction at all) is a `vq64: FAIL <scenario>: ...` line.
//! Prints, e.g.:
//! ```text
//! vq64: virtio-blk at 00:03.0, BAR 0 0xe0000000
//! vq64: caps: common 0x0 notify 0x3000 (multiplier 4) isr 0x1000 device 0x2000
//! vq64: capacity 128 sectors, ram 20 MiB
//! vq64: loop -> needs-reset (status 0x4f, isr 0x2), used 0, req 0xff
//! ...
//! vq64: read-after-reset -> ok (status 0x0f), used 1 len 513, req 0x00: hv-blk64 disk v1
//! vq64: done
//! ```
//!
//! Every BAR access is a plain volatile load or store of 1, 2, 4 or 8 bytes (a MOV
//! or MOVZX), which the hypervisor's MMIO emulation decodes. The guest runs
//! identity-mapped, so the static ring area's addresses are guest-physical ones.

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(target_os = "none")]
mod guest {
    use core::cell::UnsafeCell;
    use core::ptr::{read_volatile, write_volatile};
    use core::sync::atomic::{fence, Ordering};

    use guests::cpu::{inb, inl, outl, outw};
    use guests::println;

    guests::entry_point!(main);

    // ------------------------------------------------------------------ PCI

    /// Reads the configuration dword at `reg` of 00:`dev`.0 (mechanism #1).
    fn cfg_read32(dev: u8, reg: u8) -> u32 {
        let address = 0x8000_0000 | u32::from(dev) << 11 | u32::from(reg & 0xFC);
        // SAFETY: the PCI configuration ports; this guest (one vCPU) is their only user.
        unsafe {
            outl(0xCF8, address);
            inl(0xCFC)
        }
    }

    fn cfg_read8(dev: u8, reg: u8) -> u8 {
        (cfg_read32(dev, reg) >> (8 * u32::from(reg & 3))) as u8
    }

    fn cfg_write32(dev: u8, reg: u8, value: u32) {
        let address = 0x8000_0000 | u32::from(dev) << 11 | u32::from(reg & 0xFC);
        // SAFETY: as in `cfg_read32`.
        unsafe {
            outl(0xCF8, address);
            outl(0xCFC, value);
        }
    }

    const VIRTIO_VENDOR: u32 = 0x1AF4;
    const VIRTIO_BLK_MODERN: u32 = 0x1042;
    const CAP_VENDOR: u8 = 0x09;
    /// PCI command bits: memory space, bus master, INTx disable.
    const COMMAND: u32 = 1 << 1 | 1 << 2 | 1 << 10;

    // ------------------------------------------------------------ the device

    /// Common configuration offsets (virtio 1.2 §4.1.4.3).
    mod common {
        pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
        pub const DEVICE_FEATURE: u64 = 0x04;
        pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
        pub const DRIVER_FEATURE: u64 = 0x0C;
        pub const DEVICE_STATUS: u64 = 0x14;
        pub const QUEUE_SELECT: u64 = 0x16;
        pub const QUEUE_SIZE: u64 = 0x18;
        pub const QUEUE_ENABLE: u64 = 0x1C;
        pub const QUEUE_NOTIFY_OFF: u64 = 0x1E;
        pub const QUEUE_DESC: u64 = 0x20;
        pub const QUEUE_DRIVER: u64 = 0x28;
        pub const QUEUE_DEVICE: u64 = 0x30;
    }

    /// Device status bits (§2.1).
    const ACKNOWLEDGE: u8 = 1;
    const DRIVER: u8 = 2;
    const DRIVER_OK: u8 = 4;
    const FEATURES_OK: u8 = 8;
    const NEEDS_RESET: u8 = 0x40;
    /// Feature bits (§6): INDIRECT_DESC in the low word, VERSION_1 is bit 0 of the
    /// high word.
    const F_INDIRECT_DESC: u32 = 1 << 28;
    const F_VERSION_1_HIGH: u32 = 1;
    /// Descriptor flags (§2.7.5).
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    const INDIRECT: u16 = 4;
    /// avail.flags: no used-buffer interrupts, this guest polls (§2.7.7).
    const AVAIL_NO_INTERRUPT: u16 = 1;
    /// virtio-blk status values (§5.2.6).
    const BLK_OK: u8 = 0;
    const BLK_IOERR: u8 = 1;
    const BLK_UNSUPP: u8 = 2;
    /// What the request's status byte holds until the device writes it.
    const UNTOUCHED: u8 = 0xFF;
    /// What the data buffer holds until the device writes it.
    const DATA_FILL: u8 = 0xA5;
    const QUEUE_SIZE: u16 = 256;
    /// 64 GiB: far outside any tiny VM's RAM (and outside its identity map).
    const FAR_AWAY: u64 = 64 << 30;
    /// What sector 0 of the disk (blk64's disk file) starts with.
    const MAGIC: &[u8; 16] = b"hv-blk64 disk v1";

    /// The function's BAR and where its structures are in it.
    struct Dev {
        bar: u64,
        common: u64,
        notify: u64,
        multiplier: u32,
        isr: u64,
        device: u64,
    }

    impl Dev {
        /// A volatile load of `T` (1, 2, 4 or 8 bytes: one MOV) at `offset` in the BAR.
        fn read<T: Copy>(&self, offset: u64) -> T {
            // SAFETY: `bar` is the function's memory BAR, which the hypervisor
            // emulates; the guest identity-maps the first 4 GiB, so it is mapped, and
            // callers pass offsets of the BAR's registers, aligned to their size.
            unsafe { read_volatile((self.bar + offset) as *const T) }
        }
        /// A volatile store of `v` at `offset` in the BAR.
        fn write<T: Copy>(&self, offset: u64, v: T) {
            // SAFETY: as in `read`.
            unsafe { write_volatile((self.bar + offset) as *mut T, v) }
        }
        fn r8(&self, offset: u64) -> u8 {
            self.read(offset)
        }
        fn r16(&self, offset: u64) -> u16 {
            self.read(offset)
        }
        fn r32(&self, offset: u64) -> u32 {
            self.read(offset)
        }
        fn r64(&self, offset: u64) -> u64 {
            self.read(offset)
        }
        fn w8(&self, offset: u64, v: u8) {
            self.write(offset, v)
        }
        fn w16(&self, offset: u64, v: u16) {
            self.write(offset, v)
        }
        fn w32(&self, offset: u64, v: u32) {
            self.write(offset, v)
        }
        fn w64(&self, offset: u64, v: u64) {
            self.write(offset, v)
        }

        fn status(&self) -> u8 {
            self.r8(self.common + common::DEVICE_STATUS)
        }
        fn set_status(&self, v: u8) {
            self.w8(self.common + common::DEVICE_STATUS, v)
        }

        /// Writes 0 to device_status and waits until it reads 0 (§4.1.4.3.2).
        fn reset(&self) -> Result<(), &'static str> {
            self.set_status(0);
            for _ in 0..1000 {
                if self.status() == 0 {
                    return Ok(());
                }
            }
            Err("the device status does not read 0 after a reset")
        }

        /// §3.1.1 steps 1-6 after a reset: ACKNOWLEDGE, DRIVER, the features
        /// (VERSION_1, and INDIRECT_DESC when asked), FEATURES_OK read back.
        fn negotiate(&self, indirect: bool) -> Result<(), &'static str> {
            self.reset()?;
            let c = self.common;
            self.set_status(ACKNOWLEDGE);
            self.set_status(ACKNOWLEDGE | DRIVER);
            self.w32(c + common::DEVICE_FEATURE_SELECT, 0);
            let low = self.r32(c + common::DEVICE_FEATURE);
            self.w32(c + common::DEVICE_FEATURE_SELECT, 1);
            let high = self.r32(c + common::DEVICE_FEATURE);
            if high & F_VERSION_1_HIGH == 0 {
                return Err("the device does not offer VERSION_1");
            }
            if indirect && low & F_INDIRECT_DESC == 0 {
                return Err("the device does not offer INDIRECT_DESC");
            }
            self.w32(c + common::DRIVER_FEATURE_SELECT, 0);
            self.w32(
                c + common::DRIVER_FEATURE,
                if indirect { F_INDIRECT_DESC } else { 0 },
            );
            self.w32(c + common::DRIVER_FEATURE_SELECT, 1);
            self.w32(c + common::DRIVER_FEATURE, F_VERSION_1_HIGH);
            self.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK);
            if self.status() & FEATURES_OK == 0 {
                return Err("the device refused VERSION_1 (FEATURES_OK not set)");
            }
            Ok(())
        }

        /// Selects queue 0 (checking that a reset brought back its maximum size and
        /// left it disabled) and writes the rings' addresses.
        fn place_queue(&self) -> Result<(), &'static str> {
            let c = self.common;
            self.w16(c + common::QUEUE_SELECT, 0);
            if self.r16(c + common::QUEUE_SIZE) != QUEUE_SIZE {
                return Err("queue 0 does not show its maximum size 256 after a reset");
            }
            if self.r16(c + common::QUEUE_ENABLE) != 0 {
                return Err("queue 0 is still enabled after a reset");
            }
            clear_rings();
            self.w64(c + common::QUEUE_DESC, addr(DESC));
            self.w64(c + common::QUEUE_DRIVER, addr(AVAIL));
            self.w64(c + common::QUEUE_DEVICE, addr(USED));
            Ok(())
        }

        fn enable_queue(&self) -> Result<(), &'static str> {
            self.w16(self.common + common::QUEUE_ENABLE, 1);
            if self.r16(self.common + common::QUEUE_ENABLE) != 1 {
                return Err("queue 0 did not enable");
            }
            Ok(())
        }

        /// The normal start: negotiated, queue 0 enabled, DRIVER_OK.
        fn start(&self, indirect: bool) -> Result<(), &'static str> {
            self.negotiate(indirect)?;
            self.place_queue()?;
            self.enable_queue()?;
            self.driver_ok()
        }

        fn driver_ok(&self) -> Result<(), &'static str> {
            self.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
            if self.status() & DRIVER_OK == 0 {
                return Err("DRIVER_OK did not stick");
            }
            Ok(())
        }

        /// An available-buffer notification for queue 0 (§4.1.5.2: its index, 16 bits,
        /// at notify + queue_notify_off * multiplier).
        fn notify(&self) {
            // The ring writes must be in memory before the device looks.
            fence(Ordering::SeqCst);
            let off = u64::from(self.r16(self.common + common::QUEUE_NOTIFY_OFF));
            self.w16(self.notify + off * u64::from(self.multiplier), 0);
        }

        /// What the device did.
        fn observe(&self) -> Seen {
            Seen {
                status: self.status(),
                // Reading the ISR clears it (§4.1.4.5).
                isr: self.r8(self.isr),
                used: get16(USED + 2),
                req: get8(REQ_STATUS),
            }
        }
    }

    // ------------------------------------------------ the guest's ring memory

    /// Offsets in [`AREA`]: the descriptor table (256 x 16 bytes), the available ring
    /// (flags, idx, 256 entries, used_event), the used ring (flags, idx, 256 x 8,
    /// avail_event), two indirect tables, the request header and status, the data.
    const DESC: usize = 0x0000;
    const AVAIL: usize = 0x1000;
    const USED: usize = 0x2000;
    const OUTER: usize = 0x3000;
    const INNER: usize = 0x3100;
    const HEADER: usize = 0x4000;
    const REQ_STATUS: usize = 0x4010;
    const DATA: usize = 0x5000;
    const AREA_SIZE: usize = 0x6000;

    #[repr(C, align(4096))]
    struct Area(UnsafeCell<[u8; AREA_SIZE]>);
    // SAFETY: one vCPU; the device reaches it only inside this vCPU's notification
    // exits and status reads, never concurrently with the guest.
    unsafe impl Sync for Area {}

    static AREA: Area = Area(UnsafeCell::new([0; AREA_SIZE]));

    /// The guest-physical address of `offset` in the area (identity-mapped).
    fn addr(offset: usize) -> u64 {
        AREA.0.get() as u64 + offset as u64
    }

    /// A volatile store of `v` at `offset` in [`AREA`] (volatile: the device reads
    /// the rings and requests behind the compiler's back).
    fn put<T: Copy>(offset: usize, v: T) {
        assert!(offset + core::mem::size_of::<T>() <= AREA_SIZE);
        // SAFETY: inside AREA (checked above), which only this vCPU and the device
        // (inside this vCPU's exits) touch; callers' offsets are aligned to `T`.
        unsafe { write_volatile(addr(offset) as *mut T, v) }
    }
    /// A volatile load at `offset` in [`AREA`] (the device writes the used ring and
    /// the request's bytes).
    fn get<T: Copy>(offset: usize) -> T {
        assert!(offset + core::mem::size_of::<T>() <= AREA_SIZE);
        // SAFETY: as in `put`.
        unsafe { read_volatile(addr(offset) as *const T) }
    }
    fn put8(offset: usize, v: u8) {
        put(offset, v)
    }
    fn put16(offset: usize, v: u16) {
        put(offset, v)
    }
    fn put32(offset: usize, v: u32) {
        put(offset, v)
    }
    fn put64(offset: usize, v: u64) {
        put(offset, v)
    }
    fn get8(offset: usize) -> u8 {
        get(offset)
    }
    fn get16(offset: usize) -> u16 {
        get(offset)
    }
    fn get32(offset: usize) -> u32 {
        get(offset)
    }

    /// Zeroes the rings and tables; no used-buffer interrupts.
    fn clear_rings() {
        for i in (0..HEADER).step_by(8) {
            put64(i, 0);
        }
        put16(AVAIL, AVAIL_NO_INTERRUPT);
    }

    /// Descriptor `i` of the table at area offset `table` (§2.7.5).
    fn desc(table: usize, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = table + 16 * usize::from(i);
        put64(at, addr);
        put32(at + 8, len);
        put16(at + 12, flags);
        put16(at + 14, next);
    }

    /// A read (VIRTIO_BLK_T_IN) of sector 0: the header, the status byte preset to
    /// [`UNTOUCHED`], the data buffer filled with [`DATA_FILL`].
    fn prepare_request() {
        put32(HEADER, 0); // type IN
        put32(HEADER + 4, 0);
        put64(HEADER + 8, 0); // sector 0
        put8(REQ_STATUS, UNTOUCHED);
        for i in 0..512 {
            put8(DATA + i, DATA_FILL);
        }
    }

    fn data_untouched() -> bool {
        (0..512).all(|i| get8(DATA + i) == DATA_FILL)
    }

    /// The three descriptors of a valid read in the table at `table`, from `first`.
    fn valid_chain(table: usize, first: u16) {
        desc(table, first, addr(HEADER), 16, NEXT, first + 1);
        desc(table, first + 1, addr(DATA), 512, NEXT | WRITE, first + 2);
        desc(table, first + 2, addr(REQ_STATUS), 1, WRITE, 0);
    }

    /// Puts `head` in the available ring's first slot and sets avail.idx to `idx`
    /// (1 normally; more to claim chains that were never made).
    fn publish(head: u16, idx: u16) {
        put16(AVAIL + 4, head);
        // The entry (and the descriptors) before the index (§2.7.13).
        fence(Ordering::SeqCst);
        put16(AVAIL + 2, idx);
    }

    // ------------------------------------------------------------- verdicts

    /// The device's state after a request.
    struct Seen {
        status: u8,
        isr: u8,
        used: u16,
        req: u8,
    }

    impl core::fmt::Display for Seen {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            write!(
                f,
                "(status {:#04x}, isr {:#x}), used {}, req {:#04x}",
                self.status, self.isr, self.used, self.req
            )
        }
    }

    /// What the spec allows for a malformed request: the device sets
    /// DEVICE_NEEDS_RESET and consumes nothing (§2.1.2), or fails the request with
    /// an error status. Anything else is the reason it is wrong.
    fn hostile_outcome(seen: &Seen) -> Result<&'static str, &'static str> {
        if !data_untouched() {
            return Err("the device wrote into the data buffer");
        }
        let needs_reset = seen.status & NEEDS_RESET != 0;
        match (needs_reset, seen.used, seen.req) {
            (true, 0, UNTOUCHED) => Ok("needs-reset"),
            (false, 1, BLK_IOERR | BLK_UNSUPP) => Ok("failed"),
            (false, 0, UNTOUCHED) => Err("no reaction: neither NEEDS_RESET nor a failed request"),
            (_, _, BLK_OK) => Err("the hostile request completed OK"),
            _ => Err("an inconsistent outcome"),
        }
    }

    /// Reports one hostile scenario; false when it failed.
    fn report(name: &str, seen: &Seen) -> bool {
        match hostile_outcome(seen) {
            Ok(what) => {
                println!("vq64: {name} -> {what} {seen}");
                true
            }
            Err(why) => {
                println!("vq64: FAIL {name}: {why} {seen}");
                false
            }
        }
    }

    /// Whether a valid read of sector 0 completed: used 1 and status OK, the data
    /// the disk file's.
    fn completed(seen: &Seen) -> bool {
        seen.used == 1 && seen.req == BLK_OK && (0..16).all(|i| get8(DATA + i) == MAGIC[i])
    }

    // ------------------------------------------------------------ scenarios

    /// (a) §3.1.1: "The device MUST NOT consume buffers or send any used buffer
    /// notifications to the driver before DRIVER_OK." A valid read, notified with
    /// the queue enabled but before DRIVER_OK: nothing may happen; after DRIVER_OK
    /// and a second notification it completes.
    fn early_notify(dev: &Dev) -> Result<bool, &'static str> {
        dev.negotiate(false)?;
        dev.place_queue()?;
        dev.enable_queue()?;
        prepare_request();
        valid_chain(DESC, 0);
        publish(0, 1);
        dev.notify();
        let early = dev.observe();
        let ignored = early.status & NEEDS_RESET == 0
            && early.used == 0
            && early.req == UNTOUCHED
            && data_untouched();
        if !ignored {
            println!("vq64: FAIL early-notify: the device acted before DRIVER_OK {early}");
            return Ok(false);
        }
        dev.driver_ok()?;
        dev.notify();
        let late = dev.observe();
        if !completed(&late) {
            println!("vq64: FAIL early-notify: after DRIVER_OK the read did not complete {late}");
            return Ok(false);
        }
        println!(
            "vq64: early-notify -> ignored {early}; after driver-ok -> ok, used {}, req {:#04x}",
            late.used, late.req
        );
        Ok(true)
    }

    /// One hostile request on a started device: `build` writes the descriptors
    /// (after [`prepare_request`]) and returns the head; then it is published,
    /// notified and judged.
    fn hostile(
        dev: &Dev,
        name: &str,
        indirect: bool,
        build: impl FnOnce() -> Result<u16, &'static str>,
    ) -> Result<bool, &'static str> {
        dev.start(indirect)?;
        prepare_request();
        let head = build()?;
        publish(head, 1);
        dev.notify();
        Ok(report(name, &dev.observe()))
    }

    /// (g) queue_size 100 before queue_enable: what the device does with it is
    /// printed (queue_size and queue_enable read back); then DRIVER_OK, a valid
    /// request and a notification, which must not be processed on such a queue.
    fn odd_queue_size(dev: &Dev) -> Result<bool, &'static str> {
        let c = dev.common;
        dev.negotiate(false)?;
        dev.place_queue()?;
        dev.w16(c + common::QUEUE_SIZE, 100);
        let size = dev.r16(c + common::QUEUE_SIZE);
        dev.w16(c + common::QUEUE_ENABLE, 1);
        let enabled = dev.r16(c + common::QUEUE_ENABLE);
        let after_enable = dev.status();
        if enabled != 0 && !size.is_power_of_two() {
            println!("vq64: FAIL queue-size-100: enabled with queue_size {size}");
            return Ok(false);
        }
        dev.set_status(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        prepare_request();
        valid_chain(DESC, 0);
        publish(0, 1);
        dev.notify();
        let seen = dev.observe();
        let ok = report("queue-size-100", &seen);
        println!(
            "vq64: queue-size-100: queue_size reads {size}, queue_enable reads {enabled}, status after enable {after_enable:#04x}"
        );
        Ok(ok)
    }

    /// (i) After every hostile scenario, a reset makes the device usable again: a
    /// plain read of sector 0.
    fn read_after_reset(dev: &Dev) -> Result<bool, &'static str> {
        dev.start(false)?;
        prepare_request();
        valid_chain(DESC, 0);
        publish(0, 1);
        dev.notify();
        let seen = dev.observe();
        let id = get32(USED + 4);
        let len = get32(USED + 8);
        if !completed(&seen) || id != 0 || len != 513 || seen.status & NEEDS_RESET != 0 {
            println!("vq64: FAIL read-after-reset: {seen}, used id {id} len {len}");
            return Ok(false);
        }
        let mut text = [0u8; 16];
        for (i, b) in text.iter_mut().enumerate() {
            *b = get8(DATA + i);
        }
        println!(
            "vq64: read-after-reset -> ok (status {:#04x}), used {} len {len}, req {:#04x}: {}",
            seen.status,
            seen.used,
            seen.req,
            core::str::from_utf8(&text).unwrap_or("?")
        );
        Ok(true)
    }

    // ---------------------------------------------------------------- main

    fn main() {
        // An unexpected exception is reported (vector, RIP) instead of a triple fault.
        guests::idt::install();
        match run() {
            Ok(0) => println!("vq64: done"),
            Ok(failed) => println!("vq64: FAIL {failed} scenario(s)"),
            Err(why) => println!("vq64: FAIL {why}"),
        }
    }

    /// The VM's RAM size from fw_cfg (QEMU's docs/specs/fw_cfg.rst: select key 3
    /// with a 16-bit write to 0x510, read its 8 little-endian bytes from 0x511).
    fn ram_size() -> u64 {
        // SAFETY: the fw_cfg ports, which the hypervisor emulates; nothing else here
        // uses them.
        unsafe {
            outw(0x510, 3);
            (0..8).fold(0u64, |v, i| v | u64::from(inb(0x511)) << (8 * i))
        }
    }

    /// Finds the virtio-blk function and its structures.
    fn find() -> Result<(u8, Dev), &'static str> {
        let dev = (0..32u8)
            .find(|&d| {
                let id = cfg_read32(d, 0);
                id & 0xFFFF == VIRTIO_VENDOR && id >> 16 == VIRTIO_BLK_MODERN
            })
            .ok_or("no virtio-blk function (1af4:1042) on bus 0")?;
        let bar0 = cfg_read32(dev, 0x10);
        if bar0 & 1 != 0 || bar0 & 0x6 != 0 {
            return Err("BAR 0 is not a 32-bit memory BAR");
        }
        let command = cfg_read32(dev, 0x04) & 0xFFFF;
        // The status half written as 0: no write-one-to-clear bit is touched.
        cfg_write32(dev, 0x04, command | COMMAND);
        if cfg_read32(dev, 0x04) >> 16 & 1 << 4 == 0 {
            return Err("no capability list");
        }
        let mut found = Dev {
            bar: u64::from(bar0 & !0xF),
            common: u64::MAX,
            notify: u64::MAX,
            multiplier: 0,
            isr: u64::MAX,
            device: u64::MAX,
        };
        let mut at = cfg_read8(dev, 0x34) & 0xFC;
        // Bounded: a looping list ends after as many entries as fit in 256 bytes.
        for _ in 0..48 {
            if at < 0x40 {
                break;
            }
            if cfg_read8(dev, at) == CAP_VENDOR && cfg_read8(dev, at + 4) == 0 {
                let offset = u64::from(cfg_read32(dev, at + 8));
                match cfg_read8(dev, at + 3) {
                    1 => found.common = offset,
                    2 => {
                        found.notify = offset;
                        found.multiplier = cfg_read32(dev, at + 16);
                    }
                    3 => found.isr = offset,
                    4 => found.device = offset,
                    _ => {}
                }
            }
            at = cfg_read8(dev, at + 1) & 0xFC;
        }
        if [found.common, found.notify, found.isr, found.device].contains(&u64::MAX) {
            return Err("a virtio capability (common, notify, ISR, device) is missing");
        }
        Ok((dev, found))
    }

    /// Runs every scenario; returns how many failed.
    fn run() -> Result<u32, &'static str> {
        let (slot, dev) = find()?;
        println!("vq64: virtio-blk at 00:{slot:02x}.0, BAR 0 {:#x}", dev.bar);
        println!(
            "vq64: caps: common {:#x} notify {:#x} (multiplier {}) isr {:#x} device {:#x}",
            dev.common, dev.notify, dev.multiplier, dev.isr, dev.device
        );
        let ram = ram_size();
        let capacity = dev.r64(dev.device);
        println!("vq64: capacity {capacity} sectors, ram {} MiB", ram >> 20);

        let mut failed = 0;
        let count = |ok: bool| u32::from(!ok);

        // (a)
        failed += count(early_notify(&dev)?);

        // (b) 0 -> 1 -> 0 -> ...: both device-readable, so only loop detection
        // (not the readable-after-writable rule) can stop the walk.
        failed += count(hostile(&dev, "loop", false, || {
            desc(DESC, 0, addr(HEADER), 16, NEXT, 1);
            desc(DESC, 1, addr(HEADER), 16, NEXT, 0);
            Ok(0)
        })?);

        // (c) The device-writable data buffer at 64 GiB.
        failed += count(hostile(&dev, "outside-ram", false, || {
            valid_chain(DESC, 0);
            desc(DESC, 1, FAR_AWAY, 512, NEXT | WRITE, 2);
            Ok(0)
        })?);

        // (d) The data buffer starts 8 bytes before the end of RAM: its first 8
        // bytes are the VM's, the rest is not. Those 8 bytes are the slot where the
        // entry stub's CALL put a return address that is never used (RSP starts at
        // the top of RAM), so a device that wrote its in-RAM part would show here
        // without hurting the guest.
        let tail = ram - 8;
        // SAFETY: the last 8 bytes of RAM, identity-mapped; nothing lives there (see
        // above).
        unsafe { write_volatile(tail as *mut u64, 0xA5A5_A5A5_A5A5_A5A5) };
        failed += count(hostile(&dev, "straddle", false, || {
            valid_chain(DESC, 0);
            desc(DESC, 1, tail, 512, NEXT | WRITE, 2);
            Ok(0)
        })?);
        // SAFETY: as above.
        if unsafe { read_volatile(tail as *const u64) } != 0xA5A5_A5A5_A5A5_A5A5 {
            println!("vq64: FAIL straddle: the device wrote the in-RAM part of the buffer");
            failed += 1;
        }

        // (e) Lengths past 4 GiB. Two 0xffff_f000-byte buffers: each one alone is
        // already longer than this VM's RAM, so the device may refuse either for
        // that or for the sum. Device-readable, so a device that took them anyway
        // would only read.
        failed += count(hostile(&dev, "len-4g", false, || {
            desc(DESC, 0, addr(HEADER), 16, NEXT, 1);
            desc(DESC, 1, addr(DATA), 0xFFFF_F000, NEXT, 2);
            desc(DESC, 2, addr(DATA), 0xFFFF_F000, NEXT, 3);
            desc(DESC, 3, addr(REQ_STATUS), 1, WRITE, 0);
            Ok(0)
        })?);
        // ... and a chain of the queue's full length whose every buffer lies inside
        // RAM (the same 17 MiB from address 0, device-readable): only the sum,
        // 16 + 254 * 17 MiB + 1 > 2^32 - 1, is wrong (the used ring's length is a
        // u32).
        const BIG: u32 = 17 << 20;
        if ram < u64::from(BIG) {
            return Err("the VM has less than 17 MiB of RAM: len-sum needs more");
        }
        failed += count(hostile(&dev, "len-sum", false, || {
            desc(DESC, 0, addr(HEADER), 16, NEXT, 1);
            for i in 1..QUEUE_SIZE - 1 {
                desc(DESC, i, 0, BIG, NEXT, i + 1);
            }
            desc(DESC, QUEUE_SIZE - 1, addr(REQ_STATUS), 1, WRITE, 0);
            Ok(0)
        })?);

        // (f) First the control: a valid indirect table (§2.7.5.3) completes.
        dev.start(true)?;
        prepare_request();
        valid_chain(INNER, 0);
        desc(DESC, 0, addr(INNER), 48, INDIRECT, 0);
        publish(0, 1);
        dev.notify();
        let seen = dev.observe();
        if completed(&seen) && seen.status & NEEDS_RESET == 0 {
            println!(
                "vq64: indirect -> ok, used {}, req {:#04x}",
                seen.used, seen.req
            );
        } else {
            println!("vq64: FAIL indirect: a valid indirect table did not complete {seen}");
            failed += 1;
        }
        // Then the same table behind an indirect descriptor inside an indirect
        // table (§2.7.5.3.1: the driver MUST NOT).
        failed += count(hostile(&dev, "nested-indirect", true, || {
            valid_chain(INNER, 0);
            desc(OUTER, 0, addr(INNER), 48, INDIRECT, 0);
            desc(DESC, 0, addr(OUTER), 16, INDIRECT, 0);
            Ok(0)
        })?);

        // (g)
        failed += count(odd_queue_size(&dev)?);

        // (h) avail.idx 300 on a queue of 256 with one chain made: it claims more
        // chains than the ring can hold.
        dev.start(false)?;
        prepare_request();
        valid_chain(DESC, 0);
        publish(0, 300);
        dev.notify();
        failed += count(report("avail-jump", &dev.observe()));

        // (i)
        failed += count(read_after_reset(&dev)?);
        dev.reset()?;
        Ok(failed)
    }
}
