//! Ending a run with a status: QEMU's isa-debug-exit port (exit code `(v << 1) | 1`)
//! and Bochs's shutdown port, then a halt loop for real hardware.

use x86_64::instructions::port::Port;

/// Values written to the debug-exit port. QEMU exits with `(value << 1) | 1`, so these
/// give 33, 35 and 37; nothing else in a run produces those codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    Success = 0x10,
    Failure = 0x11,
    /// No usable virtualization extension: the machine cannot host guests.
    Unsupported = 0x12,
}

pub fn exit(status: Status) -> ! {
    crate::host_disk::shutdown();
    crate::println!("hv: stopping with status {} ({:?})", status as u32, status);
    crate::serial::drain();
    // SAFETY: writes to I/O ports that either stop the emulator or are ignored
    // (0xF4 is the conventional debug-exit port, 0x8900 Bochs's shutdown port; on a PC
    // without them the writes go nowhere).
    unsafe {
        Port::<u32>::new(0xF4).write(status as u32);
        let mut bochs: Port<u8> = Port::new(0x8900);
        for b in b"Shutdown" {
            bochs.write(*b);
        }
    }
    halt_forever()
}

pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
