//! virtio-net behind its virtio-pci transport, wired to a `vswitch` network as the
//! platform will wire it, driven by a hostile guest and a hostile network:
//! configuration-space and BAR accesses of every width, notifications, guest RAM
//! (rings, descriptors, headers, frames) rewritten between them, frames of any
//! size arriving from other switch ports (a VM port and an uplink) at arbitrary
//! times, the guest's frames passed to the switch, polls, resets, and snapshots
//! restored from arbitrary bytes. Nothing may panic, and every bound holds: the
//! switch's queues and MAC table, the device's backlogs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtio::pci::BAR_SIZE;
use virtio::{GuestMemory, Net, NetConfig, VecMemory, VirtioPci};
use vswitch::{PortConfig, RateLimit, Switch, SwitchConfig};

const RAM: usize = 64 * 1024;
const SIZES: [u8; 8] = [1, 2, 4, 8, 1, 4, 0, 3];
const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const QUEUE: usize = 8;
const TABLE: usize = 16;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, ops)) = data.split_first() else {
        return;
    };
    let mut config = NetConfig::new(MAC);
    config.checksum_offload = flags & 1 != 0;
    // Segmentation offload (offered only with checksum offload): TCPV4 chains the
    // device cuts into frames.
    config.segmentation_offload = flags & 2 != 0;
    config.rx_backlog = 4;
    config.tx_backlog = 4;
    let mut memory = VecMemory::new(RAM);
    let _ = memory.write(0, &ops[..ops.len().min(RAM)]);
    let mut dev = VirtioPci::new(Net::new(config), memory);

    let mut sw = Switch::new(SwitchConfig {
        table_capacity: TABLE,
        ageing_ns: 1_000_000,
    });
    let lan = sw.add_network("lan").unwrap();
    let other = sw.add_network("other").unwrap();
    let limit = RateLimit {
        bytes_per_s: 1_000_000,
        burst_bytes: 4000,
        frames: Some((1000, 4)),
    };
    let nic = sw
        .add_port(
            lan,
            PortConfig::vm(MAC)
                .with_rate_limit(limit)
                .with_receive_queue(QUEUE),
            0,
        )
        .unwrap();
    let peer = sw
        .add_port(
            lan,
            PortConfig::vm([2, 0, 0, 0, 0, 2]).with_receive_queue(QUEUE),
            0,
        )
        .unwrap();
    let uplink = sw
        .add_port(lan, PortConfig::uplink().with_receive_queue(QUEUE), 0)
        .unwrap();
    let island = sw
        .add_port(other, PortConfig::uplink().with_receive_queue(QUEUE), 0)
        .unwrap();
    let mut now = 0u64;

    // One operation per 8 bytes: kind, offset (2), size, value (4).
    let mut rest = ops;
    while rest.len() >= 8 {
        let (op, tail) = rest.split_at(8);
        rest = tail;
        let off = u16::from_le_bytes([op[1], op[2]]);
        let size = SIZES[usize::from(op[3] & 7)];
        let value = u32::from_le_bytes([op[4], op[5], op[6], op[7]]);
        let wide = u64::from(value) | u64::from(value) << 32;
        match op[0] % 12 {
            0 => {
                dev.bar_write(u64::from(off) % (BAR_SIZE + 16), size, wide);
            }
            1 => {
                dev.bar_read(u64::from(off) % (BAR_SIZE + 16), size);
            }
            2 => {
                dev.config_write(off & 0xFFC, value, u32::MAX);
            }
            3 => {
                dev.notify(off % 3);
            }
            4 => {
                let at = u64::from(off) * 4;
                let _ = dev.memory_mut().write(at, &value.to_le_bytes());
            }
            5 => {
                // A frame from the rest of the input (its length from the op)
                // arrives from the peer, the uplink or the other network.
                let len = usize::from(off) % 1600;
                let n = len.min(rest.len());
                let (frame, tail) = rest.split_at(n);
                rest = tail;
                let from = [peer, uplink, island][usize::from(op[3] % 3)];
                let _ = sw.transmit(from, frame, now);
            }
            6 => {
                // The platform's NIC poll: the guest's frames to the switch, the
                // switch's frames into the device while it has room.
                while let Some(f) = dev.device_mut().take_transmitted() {
                    let _ = sw.transmit(nic, &f, now);
                }
                while dev.device().rx_room() > 0 {
                    let Some(f) = sw.receive(nic) else { break };
                    dev.deliver(&f);
                }
                dev.device_work();
            }
            7 => {
                use devices::PciFunction;
                if PciFunction::has_work(&dev) {
                    PciFunction::poll(&mut dev);
                }
            }
            8 => {
                now = now.saturating_add(u64::from(value) * 1000);
                sw.age(now);
            }
            9 => {
                let state = dev.state();
                assert!(dev.restore(&state).is_ok(), "own snapshot refused");
                let _ = dev.restore(&op[1..]);
            }
            10 => {
                for p in [peer, uplink, island] {
                    while sw.receive(p).is_some() {}
                }
            }
            _ => {
                dev.reset();
            }
        }
        for r in sw.ports() {
            assert!(r.queued <= QUEUE, "receive queue over its bound");
        }
        for (_, _, s) in sw.networks() {
            assert!(s.table_entries <= TABLE as u64, "MAC table over its bound");
        }
        assert!(dev.device().rx_room() <= 4);
        // Frames never cross networks.
        assert_eq!(sw.port_stats(island).unwrap().output.frames, 0);
    }
});
