//! The virtio-blk and virtio-balloon devices behind their virtio-pci transport
//! (`virtio`), driven as a hostile guest drives them: configuration-space and BAR
//! accesses of every width at every offset, queue notifications, and guest RAM
//! rewritten between them (so descriptor tables, rings, requests and page arrays
//! are whatever the input makes them, also while the device uses them), plus
//! snapshots restored from arbitrary bytes, and what the host does (a balloon
//! target, a statistics request, a poll). The device must answer everything with a
//! value, an error status or DEVICE_NEEDS_RESET, never a panic: a panic here is a
//! panic in the hypervisor. For the balloon, the pages its backend holds must be
//! exactly the ones its bitmap says are ballooned, and the backend must never be
//! handed a page twice or out of order.
#![no_main]

use devices::PciFunction;
use libfuzzer_sys::fuzz_target;
use virtio::pci::BAR_SIZE;
use virtio::{
    Balloon, BalloonConfig, Block, BlockConfig, CountingBackend, GuestMemory, RamDisk, VecMemory,
    VirtioDevice, VirtioPci,
};

/// Guest RAM the rings and buffers may live in (addresses past it must fail cleanly).
const RAM: usize = 64 * 1024;
/// Access widths, including ones the transport must refuse.
const SIZES: [u8; 8] = [1, 2, 4, 8, 1, 4, 0, 3];

fuzz_target!(|data: &[u8]| {
    let Some((&flags, ops)) = data.split_first() else {
        return;
    };
    let mut memory = VecMemory::new(RAM);
    // The input seeds guest RAM, so the first notification already finds rings.
    for (i, chunk) in ops.chunks(RAM).enumerate().take(1) {
        let _ = memory.write((i * RAM) as u64, chunk);
    }
    if flags & 2 == 0 {
        let mut config = BlockConfig::new("fuzz-disk");
        if flags & 1 != 0 {
            config = config.read_only();
        }
        let disk = Block::new(RamDisk::zeroed(16), config);
        let mut dev = VirtioPci::new(disk, memory);
        drive(&mut dev, ops, |_, _| {}, |_| {});
    } else {
        // A small pool, so deflating can run out; one page that will not leave.
        let mut backend = CountingBackend::new(u64::from(flags >> 4));
        backend.busy = vec![u32::from(flags >> 2 & 3)];
        let config = BalloonConfig::new(RAM as u64).min_guest_pages(u64::from(flags & 1));
        let mut dev = VirtioPci::new(Balloon::new(backend, config), memory);
        drive(
            &mut dev,
            ops,
            |dev, value| {
                if value & 1 == 0 {
                    let _ = dev.set_target_pages(u64::from(value >> 1));
                } else {
                    dev.request_stats();
                }
            },
            |dev| {
                let b = dev.device();
                let ballooned: Vec<u32> = b.ballooned_pfns().collect();
                assert_eq!(b.backend().violations, 0, "backend contract broken");
                assert_eq!(ballooned, b.backend().held, "bitmap and backend disagree");
                assert_eq!(ballooned.len() as u64, b.ballooned_pages());
                assert!(u64::from(b.target_pages()) <= b.max_target_pages());
            },
        );
    }
});

/// Runs the operations: one per 8 bytes, kind, offset (2), size, value (4).
/// `owner` is the host's side (its value), `check` the invariants after each.
fn drive<D: VirtioDevice + 'static>(
    dev: &mut VirtioPci<D, VecMemory>,
    ops: &[u8],
    mut owner: impl FnMut(&mut VirtioPci<D, VecMemory>, u32),
    mut check: impl FnMut(&mut VirtioPci<D, VecMemory>),
) {
    for op in ops.chunks_exact(8) {
        let off = u16::from_le_bytes([op[1], op[2]]);
        let size = SIZES[usize::from(op[3] & 7)];
        let value = u32::from_le_bytes([op[4], op[5], op[6], op[7]]);
        let wide = u64::from(value) | u64::from(value) << 32;
        match op[0] % 10 {
            0 => {
                dev.bar_write(u64::from(off) % (BAR_SIZE + 16), size, wide);
            }
            1 => {
                dev.bar_read(u64::from(off) % (BAR_SIZE + 16), size);
            }
            2 => {
                let mask = match size {
                    1 => 0xFF << (8 * (off & 3)),
                    2 => 0xFFFF << (8 * (off & 2)),
                    _ => u32::MAX,
                };
                dev.config_write(off & 0xFFC, value, mask);
            }
            3 => {
                dev.config_read(off & 0xFFC);
            }
            4 => {
                dev.notify(off);
            }
            5 => {
                // The guest rewrites its RAM, also under the device's feet.
                let at = u64::from(off) * 4;
                let _ = dev.memory_mut().write(at, &value.to_le_bytes());
            }
            6 => {
                // A snapshot of the current state must restore; arbitrary bytes
                // must be refused or restored, never panic.
                let state = dev.state();
                assert!(dev.restore(&state).is_ok(), "own snapshot refused");
                let _ = dev.restore(&op[1..]);
            }
            7 => dev.reset(),
            8 => owner(dev, value),
            _ => {
                PciFunction::poll(dev);
            }
        }
        check(dev);
    }
}
