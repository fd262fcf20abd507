//! The switch's behaviour as a whole: learning, flooding, segmentation, spoofing,
//! rate limits over simulated time, queue isolation, ageing, table bounds.

use super::*;
use alloc::vec;
use alloc::vec::Vec;

const S: u64 = 1_000_000_000;

fn mac(n: u8) -> Mac {
    [0x02, 0, 0, 0, 0, n]
}

fn eth(dst: Mac, src: Mac, len: usize) -> Vec<u8> {
    let mut f = vec![0xA5; len];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f
}

/// One network "lan" with VM ports for mac(1), mac(2), mac(3).
fn lan() -> (Switch, [PortId; 3]) {
    let mut sw = Switch::new(SwitchConfig::default());
    let n = sw.add_network("lan").unwrap();
    let p = [1, 2, 3].map(|i| sw.add_port(n, PortConfig::vm(mac(i)), 0).unwrap());
    (sw, p)
}

fn drain(sw: &mut Switch, p: PortId) -> Vec<Vec<u8>> {
    core::iter::from_fn(|| sw.receive(p)).collect()
}

#[test]
fn unknown_destination_floods_then_unicast_after_learning() {
    let (mut sw, [a, b, c]) = lan();
    let f = eth(mac(2), mac(1), 60);
    assert_eq!(
        sw.transmit(a, &f, 0),
        Ok(Forwarded::Flooded { delivered: 2 })
    );
    assert_eq!(drain(&mut sw, b), vec![f.clone()]);
    assert_eq!(drain(&mut sw, c), vec![f.clone()]);
    assert!(drain(&mut sw, a).is_empty(), "never back to the source");
    // b answers: a is known now, so only a gets it; b is learned on the way.
    let r = eth(mac(1), mac(2), 80);
    assert_eq!(sw.transmit(b, &r, 1), Ok(Forwarded::Unicast(a)));
    assert_eq!(drain(&mut sw, a), vec![r]);
    assert!(drain(&mut sw, c).is_empty());
    assert_eq!(sw.transmit(a, &f, 2), Ok(Forwarded::Unicast(b)));
    assert!(drain(&mut sw, c).is_empty());
    let ns = sw.network_stats(NetworkId(0)).unwrap();
    assert_eq!((ns.flooded, ns.unicast, ns.table_entries), (1, 2, 2));
    let sa = sw.port_stats(a).unwrap();
    assert_eq!(
        sa.input,
        Count {
            frames: 2,
            bytes: 120
        }
    );
    assert_eq!(
        sa.output,
        Count {
            frames: 1,
            bytes: 80
        }
    );
    assert_eq!(sa.dropped_total().frames, 0);
}

#[test]
fn broadcast_and_multicast_always_flood() {
    let (mut sw, [a, b, c]) = lan();
    sw.transmit(b, &eth(mac(1), mac(2), 60), 0).unwrap();
    sw.transmit(c, &eth(mac(1), mac(3), 60), 0).unwrap();
    for p in [a, b, c] {
        drain(&mut sw, p);
    }
    for dst in [frame::BROADCAST, [0x01, 0x00, 0x5E, 0, 0, 1]] {
        assert_eq!(
            sw.transmit(a, &eth(dst, mac(1), 60), 1),
            Ok(Forwarded::Flooded { delivered: 2 })
        );
    }
    assert_eq!(sw.queued(b), 2);
    assert_eq!(sw.queued(c), 2);
    assert_eq!(sw.queued(a), 0, "never back to the source");
}

#[test]
fn networks_are_segmented_even_with_the_same_macs() {
    let mut sw = Switch::new(SwitchConfig::default());
    let red = sw.add_network("red").unwrap();
    let blue = sw.add_network("blue").unwrap();
    assert_eq!(
        sw.add_network("red"),
        Err(SwitchError::DuplicateNetwork("red".into()))
    );
    assert_eq!(sw.network("blue"), Some(blue));
    let r1 = sw.add_port(red, PortConfig::vm(mac(1)), 0).unwrap();
    let r2 = sw.add_port(red, PortConfig::vm(mac(2)), 0).unwrap();
    let b1 = sw.add_port(blue, PortConfig::vm(mac(1)), 0).unwrap();
    let b2 = sw.add_port(blue, PortConfig::vm(mac(2)), 0).unwrap();
    let up = sw.add_port(blue, PortConfig::uplink(), 0).unwrap();
    // Learn mac(2) on both networks.
    sw.transmit(r2, &eth(frame::BROADCAST, mac(2), 60), 0)
        .unwrap();
    sw.transmit(b2, &eth(frame::BROADCAST, mac(2), 60), 0)
        .unwrap();
    assert_eq!(drain(&mut sw, r1).len(), 1);
    assert_eq!(drain(&mut sw, b1).len(), 1);
    assert_eq!(drain(&mut sw, up).len(), 1);
    // Unicast to mac(2) goes to that network's port only.
    assert_eq!(
        sw.transmit(r1, &eth(mac(2), mac(1), 60), 1),
        Ok(Forwarded::Unicast(r2))
    );
    assert_eq!(
        sw.transmit(b1, &eth(mac(2), mac(1), 60), 1),
        Ok(Forwarded::Unicast(b2))
    );
    assert_eq!(sw.queued(r2), 1);
    assert_eq!(sw.queued(b2), 1);
    assert_eq!(
        sw.queued(up),
        0,
        "learned unicast does not reach the uplink"
    );
    assert_eq!(sw.queued(r1) + sw.queued(b1), 0);
}

#[test]
fn forged_and_group_sources_are_dropped() {
    let (mut sw, [a, b, c]) = lan();
    assert_eq!(
        sw.transmit(a, &eth(mac(2), mac(9), 60), 0),
        Ok(Forwarded::Dropped(DropReason::ForgedSource))
    );
    // Pretending to be b must not steal b's traffic either.
    assert_eq!(
        sw.transmit(a, &eth(frame::BROADCAST, mac(2), 60), 0),
        Ok(Forwarded::Dropped(DropReason::ForgedSource))
    );
    assert_eq!(
        sw.transmit(a, &eth(mac(2), frame::BROADCAST, 60), 0),
        Ok(Forwarded::Dropped(DropReason::MulticastSource))
    );
    assert_eq!(sw.queued(b) + sw.queued(c), 0);
    assert_eq!(sw.network_stats(NetworkId(0)).unwrap().table_entries, 0);
    let s = sw.port_stats(a).unwrap();
    assert_eq!(s.dropped(DropReason::ForgedSource).frames, 2);
    assert_eq!(s.dropped(DropReason::MulticastSource).frames, 1);
    assert_eq!(s.input.frames, 3);
    // An uplink may carry any unicast source, but not a group source.
    let up = sw.add_port(NetworkId(0), PortConfig::uplink(), 0).unwrap();
    assert!(matches!(
        sw.transmit(up, &eth(mac(1), mac(77), 60), 0),
        Ok(Forwarded::Flooded { .. })
    ));
    assert_eq!(
        sw.transmit(up, &eth(mac(1), [0x33, 0x33, 0, 0, 0, 1], 60), 0),
        Ok(Forwarded::Dropped(DropReason::MulticastSource))
    );
    // A port allowed to forge (nested bridging in the guest) may.
    let mut cfg = PortConfig::vm(mac(5));
    cfg.kind = PortKind::Vm {
        mac: mac(5),
        allow_forged_source: true,
    };
    let free = sw.add_port(NetworkId(0), cfg, 0).unwrap();
    assert!(matches!(
        sw.transmit(free, &eth(mac(1), mac(55), 60), 0),
        Ok(Forwarded::Unicast(_)) | Ok(Forwarded::Flooded { .. })
    ));
}

#[test]
fn malformed_frames_are_dropped_and_counted() {
    let (mut sw, [a, b, _]) = lan();
    assert_eq!(
        sw.transmit(a, &[0u8; 13], 0),
        Ok(Forwarded::Dropped(DropReason::Runt))
    );
    assert_eq!(
        sw.transmit(a, &[], 0),
        Ok(Forwarded::Dropped(DropReason::Runt))
    );
    assert_eq!(
        sw.transmit(a, &eth(mac(2), mac(1), 1515), 0),
        Ok(Forwarded::Dropped(DropReason::Oversized))
    );
    let mut tagged = eth(mac(2), mac(1), 1518);
    tagged[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
    assert!(matches!(
        sw.transmit(a, &tagged, 0),
        Ok(Forwarded::Flooded { .. })
    ));
    // 14 bytes is a frame: forwarded as it is, not padded.
    sw.transmit(a, &eth(mac(2), mac(1), 14), 0).unwrap();
    assert_eq!(drain(&mut sw, b).last().map(Vec::len), Some(14));
    let s = sw.port_stats(a).unwrap();
    assert_eq!(
        s.dropped(DropReason::Runt),
        Count {
            frames: 2,
            bytes: 13
        }
    );
    assert_eq!(s.dropped(DropReason::Oversized).bytes, 1515);
    assert_eq!(
        sw.transmit(PortId(99), &tagged, 0),
        Err(SwitchError::UnknownPort(PortId(99)))
    );
}

#[test]
fn rate_limit_over_simulated_time() {
    let mut sw = Switch::new(SwitchConfig::default());
    let n = sw.add_network("lan").unwrap();
    // 100 kB/s, burst of 10 full frames; and at most 1000 frames/s, burst 20.
    let limit = RateLimit {
        bytes_per_s: 100_000,
        burst_bytes: 15_140,
        frames: Some((1000, 20)),
    };
    let noisy = sw
        .add_port(n, PortConfig::vm(mac(1)).with_rate_limit(limit), 0)
        .unwrap();
    let quiet = sw.add_port(n, PortConfig::vm(mac(2)), 0).unwrap();
    let big = eth(frame::BROADCAST, mac(1), 1514);
    // The burst passes at once, the 11th full frame does not.
    let passed = (0..100)
        .filter(|_| !matches!(sw.transmit(noisy, &big, 0), Ok(Forwarded::Dropped(_))))
        .count();
    assert_eq!(passed, 10);
    // Over 10 simulated seconds, one attempt per ms: 100 kB/s lets ~66 frames
    // of 1514 bytes through per second.
    let mut passed = 0;
    for ms in 1..=10_000u64 {
        if !matches!(
            sw.transmit(noisy, &big, ms * 1_000_000),
            Ok(Forwarded::Dropped(_))
        ) {
            passed += 1;
        }
        drain(&mut sw, quiet);
    }
    assert!((655..=662).contains(&passed), "{passed} frames in 10 s");
    let s = sw.port_stats(noisy).unwrap();
    assert_eq!(
        s.dropped(DropReason::RateLimited).frames,
        10_100 - 10 - passed
    );
    // Small frames hit the frame bucket instead: 20 at once, then 1 per ms.
    let small = eth(frame::BROADCAST, mac(1), 60);
    let t = 100 * S;
    let burst = (0..100)
        .filter(|_| !matches!(sw.transmit(noisy, &small, t), Ok(Forwarded::Dropped(_))))
        .count();
    assert_eq!(burst, 20);
    assert!(!matches!(
        sw.transmit(noisy, &small, t + 1_000_000),
        Ok(Forwarded::Dropped(_))
    ));
    // The other port is not limited.
    for _ in 0..100 {
        assert!(matches!(
            sw.transmit(quiet, &eth(frame::BROADCAST, mac(2), 1514), t),
            Ok(Forwarded::Flooded { .. })
        ));
    }
    assert_eq!(
        sw.add_port(
            n,
            PortConfig::vm(mac(3)).with_rate_limit(RateLimit {
                bytes_per_s: 1,
                burst_bytes: 100,
                frames: None
            }),
            0
        ),
        Err(SwitchError::BurstTooSmall)
    );
}

#[test]
fn a_full_receive_queue_drops_for_that_port_only() {
    let mut sw = Switch::new(SwitchConfig::default());
    let n = sw.add_network("lan").unwrap();
    let a = sw.add_port(n, PortConfig::vm(mac(1)), 0).unwrap();
    let stuck = sw
        .add_port(n, PortConfig::vm(mac(2)).with_receive_queue(4), 0)
        .unwrap();
    let ok = sw.add_port(n, PortConfig::vm(mac(3)), 0).unwrap();
    for i in 0..10u64 {
        let r = sw.transmit(a, &eth(frame::BROADCAST, mac(1), 100), i);
        let expect = if i < 4 { 2 } else { 1 };
        assert_eq!(r, Ok(Forwarded::Flooded { delivered: expect }));
        drain(&mut sw, ok);
    }
    assert_eq!(sw.queued(stuck), 4);
    let s = sw.port_stats(stuck).unwrap();
    assert_eq!(
        s.dropped(DropReason::ReceiveQueueFull),
        Count {
            frames: 6,
            bytes: 600
        }
    );
    assert_eq!(s.output.frames, 4);
    assert_eq!(sw.port_stats(ok).unwrap().output.frames, 10);
    assert_eq!(sw.port_stats(a).unwrap().dropped_total().frames, 0);
    // Unicast to the stuck port is dropped there too, and counted there.
    assert_eq!(
        sw.transmit(ok, &eth(mac(1), mac(3), 60), 20),
        Ok(Forwarded::Unicast(a))
    );
    sw.transmit(stuck, &eth(frame::BROADCAST, mac(2), 60), 20)
        .unwrap();
    assert_eq!(
        sw.transmit(a, &eth(mac(2), mac(1), 60), 21),
        Ok(Forwarded::Unicast(stuck))
    );
    assert_eq!(
        sw.port_stats(stuck)
            .unwrap()
            .dropped(DropReason::ReceiveQueueFull)
            .frames,
        7
    );
    // Once drained it takes frames again.
    assert_eq!(drain(&mut sw, stuck).len(), 4);
    sw.transmit(a, &eth(mac(2), mac(1), 60), 22).unwrap();
    assert_eq!(sw.queued(stuck), 1);
}

#[test]
fn ageing_and_moves() {
    let mut sw = Switch::new(SwitchConfig {
        table_capacity: 16,
        ageing_ns: 10 * S,
    });
    let n = sw.add_network("lan").unwrap();
    let a = sw.add_port(n, PortConfig::uplink(), 0).unwrap();
    let b = sw.add_port(n, PortConfig::uplink(), 0).unwrap();
    let c = sw.add_port(n, PortConfig::vm(mac(3)), 0).unwrap();
    sw.transmit(a, &eth(frame::BROADCAST, mac(1), 60), 0)
        .unwrap();
    assert_eq!(
        sw.transmit(c, &eth(mac(1), mac(3), 60), S),
        Ok(Forwarded::Unicast(a))
    );
    // mac(1) moves behind b: relearned at once.
    sw.transmit(b, &eth(frame::BROADCAST, mac(1), 60), 2 * S)
        .unwrap();
    assert_eq!(
        sw.transmit(c, &eth(mac(1), mac(3), 60), 3 * S),
        Ok(Forwarded::Unicast(b))
    );
    assert_eq!(sw.network_stats(n).unwrap().moves, 1);
    // Silent for the ageing time: flooded again.
    assert_eq!(
        sw.transmit(c, &eth(mac(1), mac(3), 60), 12 * S),
        Ok(Forwarded::Flooded { delivered: 2 })
    );
    sw.age(20 * S);
    let ns = sw.network_stats(n).unwrap();
    assert_eq!(ns.table_entries, 1, "only mac(3), seen at 12 s");
    assert_eq!(ns.aged_out, 1);
    // A port that goes away takes its addresses along.
    sw.transmit(a, &eth(frame::BROADCAST, mac(1), 60), 21 * S)
        .unwrap();
    sw.remove_port(a).unwrap();
    assert_eq!(
        sw.transmit(c, &eth(mac(1), mac(3), 60), 21 * S),
        Ok(Forwarded::Flooded { delivered: 1 })
    );
    assert_eq!(sw.remove_port(a), Err(SwitchError::UnknownPort(a)));
    assert_eq!(sw.ports().count(), 2);
}

#[test]
fn a_mac_flood_cannot_grow_the_table() {
    let mut sw = Switch::new(SwitchConfig {
        table_capacity: 64,
        ageing_ns: 300 * S,
    });
    let n = sw.add_network("lan").unwrap();
    let up = sw
        .add_port(n, PortConfig::uplink().with_receive_queue(1), 0)
        .unwrap();
    let vm = sw
        .add_port(n, PortConfig::vm(mac(1)).with_receive_queue(1), 0)
        .unwrap();
    sw.transmit(vm, &eth(frame::BROADCAST, mac(1), 60), 0)
        .unwrap();
    for i in 0..100_000u32 {
        let b = i.to_be_bytes();
        let src = [0x02, 0xFF, b[0], b[1], b[2], b[3]];
        sw.transmit(up, &eth(mac(1), src, 60), u64::from(i))
            .unwrap();
    }
    let ns = sw.network_stats(n).unwrap();
    assert_eq!(ns.table_entries, 64);
    assert_eq!(ns.table_full, 100_000 - 63);
    // The VM's entry survived the flood: traffic to it is still unicast.
    assert_eq!(
        sw.transmit(up, &eth(mac(1), [2, 0xFF, 0, 0, 0, 5], 60), 1),
        Ok(Forwarded::Unicast(vm))
    );
    // Queues stayed bounded too.
    assert_eq!(sw.queued(vm), 1);
}

#[test]
fn configuration_errors_and_reports() {
    let mut sw = Switch::new(SwitchConfig::default());
    assert_eq!(
        sw.add_port(NetworkId(0), PortConfig::uplink(), 0),
        Err(SwitchError::UnknownNetwork(NetworkId(0)))
    );
    let n = sw.add_network("lan").unwrap();
    for bad in [[0u8; 6], frame::BROADCAST, [1, 0, 0, 0, 0, 1]] {
        assert_eq!(
            sw.add_port(n, PortConfig::vm(bad), 0),
            Err(SwitchError::BadMac(bad))
        );
    }
    assert_eq!(
        sw.add_port(n, PortConfig::uplink().with_receive_queue(0), 0),
        Err(SwitchError::EmptyReceiveQueue)
    );
    let p = sw.add_port(n, PortConfig::vm(mac(1)), 0).unwrap();
    sw.transmit(p, &[0; 3], 0).unwrap();
    let r: Vec<_> = sw.ports().collect();
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].port, r[0].network_name), (p, "lan"));
    assert_eq!(r[0].stats.dropped(DropReason::Runt).frames, 1);
    let nets: Vec<_> = sw.networks().map(|(id, name, _)| (id, name)).collect();
    assert_eq!(nets, vec![(n, "lan")]);
    let names: Vec<_> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(names.len(), 7);
}
