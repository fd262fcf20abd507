//! The emulated devices' register files (`devices`): arbitrary sequences of port and
//! MMIO accesses, MSR accesses, interrupt lines and time steps, as a guest can issue
//! them. Every device must answer every access, never panic: a panic in a device is a
//! panic in the hypervisor.
//!
//! Snapshots too: some operations restore a device from a corrupted copy of its own
//! current snapshot, or from the rest of the input (a snapshot from an untrusted
//! file). Restore must never panic, a refused snapshot must leave the device as it
//! was, and an accepted one must be what `state()` gives back.
#![no_main]

use devices::{
    Cmos, DebugExit, FwCfg, IoApic, LapicConfig, LocalApic, NullSink, PciConfig, Pic8259, Pit8254,
    PortDevice, StateError, SystemControlA, Uart16550, I8042,
};
use libfuzzer_sys::fuzz_target;

/// Sizes a port-I/O exit can report, and two it should not (which the devices must
/// still survive: 0 and 3 come from a corrupt exit decode).
const SIZES: [u8; 8] = [1, 2, 4, 1, 2, 4, 0, 3];

fuzz_target!(|data: &[u8]| {
    let mut uart = Uart16550::new(NullSink);
    let mut pic = Pic8259::new();
    let mut pit = Pit8254::new();
    let mut cmos = Cmos::new(64 << 20, 0);
    let mut kbd = I8042::new();
    let mut sysa = SystemControlA::new();
    let mut pci = PciConfig::new();
    let file = [0x5Au8; 40];
    let mut fw: FwCfg<'_, 1> = FwCfg::new(64 << 20, 1);
    let _ = fw.add_file("etc/fuzz", &file);
    let mut ioapic = IoApic::new(0);
    let mut lapic = LocalApic::new(LapicConfig::new(1_000_000_000));
    let mut exit = DebugExit::new();
    let mut now: u64 = 0;

    // One operation per 8 bytes: device/kind, offset (2), size, value (4).
    for (index, op) in data.chunks_exact(8).enumerate() {
        let kind = op[0];
        let off = u16::from_le_bytes([op[1], op[2]]);
        let size = SIZES[(op[3] & 7) as usize];
        let value = u32::from_le_bytes([op[4], op[5], op[6], op[7]]);
        let write = kind & 0x80 != 0;
        // Time moves forward by a few microseconds to seconds per step.
        now = now.saturating_add(u64::from(op[3] >> 3) * 997_331);
        match kind & 0x7F {
            0 => {
                uart.access(off & 7, size, write, value);
            }
            1 => {
                pic.port_io(
                    if off & 1 == 0 { 0x20 } else { 0xA0 } + (off >> 1 & 1),
                    size,
                    write,
                    value,
                );
            }
            2 => {
                pit.port_io(0x40 + (off & 3), size, write, value, now);
            }
            3 => {
                if write {
                    cmos.write_port(0x70 + (off & 1), value as u8, now);
                } else {
                    cmos.read_port(0x70 + (off & 1), now);
                }
            }
            4 => {
                if write {
                    kbd.write_port(if off & 1 == 0 { 0x60 } else { 0x64 }, value as u8);
                } else {
                    kbd.read_port(if off & 1 == 0 { 0x60 } else { 0x64 });
                }
            }
            5 => {
                sysa.access(0, size, write, value);
            }
            6 => {
                pci.access(off & 7, size, write, value);
            }
            7 => {
                fw.access(off % 12, size, write, value);
            }
            8 => {
                if write {
                    let _ = ioapic.mmio_write(u64::from(off), size, value);
                } else {
                    ioapic.mmio_read(u64::from(off), size);
                }
            }
            9 => {
                let _ = ioapic.set_irq((off & 31) as u8, value & 1 != 0);
            }
            10 => {
                let _ = ioapic.eoi(value as u8).count();
            }
            11 => {
                let offset = u64::from(off) & 0xFFF;
                if write {
                    let _ = lapic.mmio_write(offset, size, value, now);
                } else {
                    lapic.mmio_read(offset, size, now);
                }
            }
            12 => {
                let msr = 0x800 + u32::from(off & 0x3FF);
                let msr = if value & 0x8000_0000 != 0 { 0x1B } else { msr };
                if write {
                    let wide = u64::from(value) | u64::from(off) << 32;
                    let _ = lapic.write_msr(msr, wide, now);
                } else {
                    let _ = lapic.read_msr(msr, now);
                }
            }
            13 => {
                lapic.deliver(value as u8, off & 1 != 0);
                let _ = lapic.pending_vector();
                lapic.acknowledge();
                lapic.eoi();
            }
            14 => {
                let _ = lapic.poll_timer(now);
                let _ = lapic.next_deadline_ns();
                for ch in 0..3 {
                    pit.out(ch, now);
                }
            }
            15 => {
                pic.set_irq((off & 15) as u8, value & 1 != 0);
                let _ = pic.acknowledge();
            }
            16 => {
                uart.enqueue_input(value as u8);
            }
            17 | 18 => {
                // 17: the device's own snapshot with two bytes changed; 18: the
                // rest of the input as a snapshot.
                let rest = &data[(index + 1) * 8..];
                let blob = |state: Vec<u8>| {
                    if kind & 0x7F == 18 {
                        return rest.to_vec();
                    }
                    let mut s = state;
                    let at = usize::from(off) % s.len();
                    s[at] ^= op[4];
                    let next = (at + usize::from(op[5])) % s.len();
                    s[next] ^= op[6];
                    s
                };
                // The blob is made before the device is borrowed for the check.
                macro_rules! restore {
                    ($dev:expr) => {{
                        let b = blob($dev.state());
                        check(&mut $dev, b, |d| d.state(), |d, b| d.restore(b))
                    }};
                }
                match value % 11 {
                    0 => restore!(uart),
                    1 => restore!(pic),
                    2 => restore!(pit),
                    3 => restore!(cmos),
                    4 => restore!(kbd),
                    5 => restore!(sysa),
                    6 => {
                        let b = blob(pci.state().expect("no functions"));
                        check(&mut pci, b, |d| d.state().unwrap(), |d, b| d.restore(b))
                    }
                    7 => restore!(fw),
                    8 => restore!(ioapic),
                    9 => restore!(lapic),
                    _ => restore!(exit),
                }
            }
            _ => {}
        }
    }
});

/// Restores `dev` from `blob`: a refusal leaves it as it was, an acceptance is
/// exactly what it reports back.
fn check<D>(
    dev: &mut D,
    blob: Vec<u8>,
    state: impl Fn(&D) -> Vec<u8>,
    restore: impl Fn(&mut D, &[u8]) -> Result<(), StateError>,
) {
    let before = state(dev);
    match restore(dev, &blob) {
        Ok(()) => assert_eq!(state(dev), blob, "accepted but not canonical"),
        Err(_) => assert_eq!(state(dev), before, "refused but changed"),
    }
}
