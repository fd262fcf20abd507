//! The driver against the model controller (`model/`): bring-up, identify, data round
//! trips across PRP lists and MDTS splits, queue wrap-around and phase flips, error
//! statuses, time limits, fatal status and bounds.

mod model;

use model::{Config, Rig};
use nvme::Error;

/// Bytes that differ per sector and per pass, so misplaced data shows.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i / 512) as u8 ^ (i as u8).wrapping_mul(7) ^ seed)
        .collect()
}

#[test]
fn bring_up_reads_identify_data() {
    let rig = Rig::new(Config::default());
    let d = rig.start().expect("bring-up");
    let info = d.info();
    assert_eq!(info.model, "Model NVMe Ctrl");
    assert_eq!(info.serial, "hv-disk");
    assert_eq!(info.firmware, "1.0");
    assert_eq!(info.vid, 0x1b36);
    assert_eq!(info.version, 0x0001_0400);
    assert_eq!(info.mdts_bytes, Some(128 * 1024));
    assert_eq!(info.max_transfer_bytes, 128 * 1024);
    assert_eq!(info.lba_count, 4096);
    assert_eq!(info.lba_bytes, 512);
    assert_eq!(info.io_queue_entries, 64);
    assert_eq!(d.sectors(), 4096);
    assert_eq!(d.sector_size(), 512);
    let m = rig.model.borrow();
    assert_eq!(
        m.io_cq_interrupts,
        Some(false),
        "I/O CQ interrupts must be off"
    );
    assert_eq!(m.intms, u32::MAX, "pin interrupts masked");
    assert_eq!(m.disables, 0);
}

#[test]
fn an_enabled_controller_is_disabled_first() {
    let rig = Rig::new(Config {
        start_enabled: true,
        ..Default::default()
    });
    let _d = rig.start().expect("bring-up");
    assert_eq!(rig.model.borrow().disables, 1);
}

#[test]
fn doorbell_stride_comes_from_cap() {
    // 16-byte doorbell stride: the model asserts every doorbell offset.
    let rig = Rig::new(Config {
        dstrd: 2,
        ..Default::default()
    });
    let mut d = rig.start().expect("bring-up");
    let data = pattern(1, 4096);
    d.write(10, &data).unwrap();
    let mut back = vec![0; 4096];
    d.read(10, &mut back).unwrap();
    assert_eq!(back, data);
}

#[test]
fn round_trips_one_two_and_many_pages() {
    let rig = Rig::new(Config::default());
    let mut d = rig.start().expect("bring-up");
    // 1 sector (PRP1), 16 sectors (PRP1 + PRP2), 24 sectors (a PRP list), 300
    // sectors (more than one command's 128 KiB).
    for (i, (lba, sectors)) in [(0u64, 1usize), (7, 16), (100, 24), (1000, 300)]
        .into_iter()
        .enumerate()
    {
        let data = pattern(i as u8, sectors * 512);
        d.write(lba, &data).unwrap();
        let at = lba as usize * 512;
        assert_eq!(
            rig.model.borrow().disk[at..at + data.len()],
            data[..],
            "data on the namespace"
        );
        let mut back = vec![0; data.len()];
        d.read(lba, &mut back).unwrap();
        assert_eq!(back, data);
    }
    let m = rig.model.borrow();
    let shapes: Vec<(u8, u32, usize, bool)> =
        m.io.iter()
            .map(|r| (r.opcode, r.blocks, r.pages, r.prp_list))
            .collect();
    assert_eq!(
        shapes,
        [
            (1, 1, 1, false),
            (2, 1, 1, false),
            (1, 16, 2, false),
            (2, 16, 2, false),
            (1, 24, 3, true),
            (2, 24, 3, true),
            (1, 256, 32, true),
            (1, 44, 6, true),
            (2, 256, 32, true),
            (2, 44, 6, true),
        ]
    );
    // The untouched space around the writes stayed zero.
    assert!(m.disk[512..7 * 512].iter().all(|&b| b == 0));
}

#[test]
fn transfers_split_at_mdts() {
    let rig = Rig::new(Config {
        mdts: 1, // 8 KiB
        ..Default::default()
    });
    let mut d = rig.start().expect("bring-up");
    assert_eq!(d.info().max_transfer_bytes, 8192);
    let data = pattern(3, 64 * 1024 + 512);
    d.write(5, &data).unwrap();
    let mut back = vec![0; data.len()];
    d.read(5, &mut back).unwrap();
    assert_eq!(back, data);
    let m = rig.model.borrow();
    // The model refuses any command above MDTS; 129 sectors are 8 + 1 commands.
    let writes: Vec<(u64, u32)> =
        m.io.iter()
            .filter(|r| r.opcode == 1)
            .map(|r| (r.slba, r.blocks))
            .collect();
    let expected: Vec<(u64, u32)> = (0..8).map(|i| (5 + 16 * i, 16)).chain([(133, 1)]).collect();
    assert_eq!(writes, expected);
}

#[test]
fn no_mdts_uses_the_whole_bounce_buffer() {
    let rig = Rig::new(Config {
        mdts: 0,
        ..Default::default()
    });
    let mut d = rig.start().expect("bring-up");
    assert_eq!(d.info().mdts_bytes, None);
    let data = pattern(4, 128 * 1024);
    d.write(0, &data).unwrap();
    let m = rig.model.borrow();
    assert_eq!(m.io.len(), 1);
    assert_eq!((m.io[0].pages, m.io[0].prp_list), (32, true));
}

#[test]
fn queues_wrap_and_the_phase_flips() {
    // Four entries per queue: 100 commands wrap each queue 25 times; a driver that
    // kept looking for phase 1 would take the stale entries of the first pass.
    let rig = Rig::new(Config {
        mqes: 3,
        ..Default::default()
    });
    let mut d = rig.start().expect("bring-up");
    assert_eq!(d.info().io_queue_entries, 4);
    for i in 0..50u64 {
        let data = pattern(i as u8, 1024);
        d.write(i * 2, &data).unwrap();
        let mut back = vec![0; 1024];
        d.read(i * 2, &mut back).unwrap();
        assert_eq!(back, data, "pass {i}");
    }
    let m = rig.model.borrow();
    assert_eq!(m.cq_wraps.get(&1).copied(), Some(25));
    // The admin queue (4 entries too) wrapped during bring-up's 4 commands.
    assert_eq!(m.cq_wraps.get(&0).copied(), Some(1));
}

#[test]
fn flush_reaches_the_controller() {
    let rig = Rig::new(Config::default());
    let mut d = rig.start().expect("bring-up");
    d.flush().unwrap();
    d.flush().unwrap();
    assert_eq!(rig.model.borrow().flushes, 2);
}

#[test]
fn four_kib_lbas_in_512_byte_sectors() {
    let rig = Rig::new(Config {
        lba_shift: 12,
        lbas: 256,
        ..Default::default()
    });
    let mut d = rig.start().expect("bring-up");
    assert_eq!(d.lba_bytes(), 4096);
    assert_eq!(d.sectors(), 256 * 8);
    let base = pattern(9, 3 * 4096);
    d.write(8, &base).unwrap();
    assert_eq!(rig.model.borrow().io.len(), 1, "aligned: no read first");
    // Sectors 11..14 sit inside LBA 1: read-modify-write keeps its other sectors.
    let patch = pattern(10, 3 * 512);
    d.write(11, &patch).unwrap();
    let mut expected = base.clone();
    expected[3 * 512..6 * 512].copy_from_slice(&patch);
    let mut back = vec![0; 3 * 4096];
    d.read(8, &mut back).unwrap();
    assert_eq!(back, expected);
    // A write across LBA boundaries at both ends.
    let span = pattern(11, 10 * 512);
    d.write(13, &span).unwrap();
    expected[5 * 512..15 * 512].copy_from_slice(&span);
    d.read(8, &mut back).unwrap();
    assert_eq!(back, expected);
    // An unaligned read of one sector.
    let mut one = vec![0; 512];
    d.read(14, &mut one).unwrap();
    assert_eq!(one, expected[6 * 512..7 * 512]);
    assert_eq!(rig.model.borrow().disk[4096..4 * 4096], expected[..]);
}

#[test]
fn unsupported_lba_formats_are_refused() {
    for (shift, metadata, data_bytes) in [(10u8, 0u16, 1024u64), (9, 8, 512), (12, 64, 4096)] {
        let rig = Rig::new(Config {
            lba_shift: shift,
            metadata,
            lbas: 16,
            ..Default::default()
        });
        let e = rig.start().err().expect("refused");
        assert_eq!(
            e,
            Error::LbaFormat {
                data_bytes,
                metadata_bytes: metadata
            }
        );
        // Refused after enabling: disabled again and every DMA page returned.
        assert_eq!(rig.model.borrow().disables, 1);
        assert_eq!(rig.live_allocations(), 0);
    }
}

#[test]
fn command_errors_carry_their_status() {
    let rig = Rig::new(Config::default());
    let mut d = rig.start().expect("bring-up");
    // Media error: Unrecovered Read Error (SCT 2, SC 81h) with Do Not Retry.
    rig.model.borrow_mut().fail_next = Some((0x02, (1 << 14) | (2 << 8) | 0x81));
    let mut buf = vec![0; 512];
    let e = d.read(0, &mut buf).unwrap_err();
    assert_eq!(
        e,
        Error::Command {
            opcode: 0x02,
            admin: false,
            sct: 2,
            sc: 0x81,
            dnr: true
        }
    );
    // A failed command leaves the queues consistent: the next one works.
    d.write(0, &pattern(1, 512)).unwrap();
    d.read(0, &mut buf).unwrap();
    assert_eq!(buf, pattern(1, 512));
}

#[test]
fn a_controller_that_never_becomes_ready_times_out() {
    let rig = Rig::new(Config {
        never_ready: true,
        to: 4,
        ..Default::default()
    });
    let start = rig.clock.get();
    let e = rig.start().err().expect("timeout");
    assert!(
        matches!(e, Error::Timeout { what, waited_ms } if what.contains("become 1") && waited_ms >= 2000),
        "{e:?}"
    );
    // CAP.TO = 4: two seconds, not much more.
    assert!(rig.clock.get() - start < 2_100_000);
}

#[test]
fn fatal_status_on_enable() {
    let rig = Rig::new(Config {
        fatal_on_enable: true,
        ..Default::default()
    });
    assert_eq!(rig.start().err(), Some(Error::ControllerFatal));
}

#[test]
fn a_lost_completion_times_out_and_stops_the_driver() {
    let rig = Rig::new(Config::default());
    let mut d = rig.start().expect("bring-up");
    rig.model.borrow_mut().drop_next = Some(0x01);
    let e = d.write(0, &pattern(1, 512)).unwrap_err();
    assert!(
        matches!(e, Error::Timeout { what, .. } if what.contains("I/O")),
        "{e:?}"
    );
    // The command may still complete into the driver's memory: nothing more goes out.
    let mut buf = vec![0; 512];
    assert_eq!(d.read(0, &mut buf), Err(Error::Unusable));
}

#[test]
fn capabilities_the_driver_cannot_use() {
    for (cfg, why) in [
        (
            Config {
                css: 0x40,
                ..Default::default()
            },
            "NVM command set",
        ),
        (
            Config {
                mpsmin: 1,
                ..Default::default()
            },
            "MPSMIN",
        ),
    ] {
        let e = Rig::new(cfg).start().err().expect("refused");
        assert!(
            matches!(e, Error::Unsupported(w) if w.contains(why)),
            "{e:?}"
        );
    }
}

#[test]
fn out_of_range_and_odd_lengths_are_refused() {
    let rig = Rig::new(Config::default());
    let mut d = rig.start().expect("bring-up");
    let mut buf = vec![0; 1024];
    assert_eq!(
        d.read(4095, &mut buf),
        Err(Error::OutOfRange {
            lba: 4095,
            count: 2,
            sectors: 4096
        })
    );
    assert!(matches!(
        d.write(u64::MAX, &buf),
        Err(Error::OutOfRange { .. })
    ));
    assert_eq!(d.read(0, &mut buf[..100]), Err(Error::BufferLength(100)));
    assert!(
        rig.model.borrow().io.is_empty(),
        "nothing reached the controller"
    );
    // The last sector itself is fine, and an empty request is a no-op.
    d.read(4095, &mut buf[..512]).unwrap();
    d.read(4096, &mut []).unwrap();
}

#[test]
fn out_of_dma_memory_is_an_error() {
    let rig = Rig::new(Config::default());
    assert_eq!(rig.start_with_limit(8).err(), Some(Error::OutOfMemory));
    assert_eq!(rig.live_allocations(), 0);
}

#[test]
fn dropping_the_driver_disables_the_controller_and_frees_memory() {
    let rig = Rig::new(Config::default());
    let d = rig.start().expect("bring-up");
    assert!(rig.live_allocations() > 0);
    drop(d);
    assert_eq!(rig.model.borrow().disables, 1);
    assert_eq!(rig.live_allocations(), 0);
}

#[test]
fn shutdown_deletes_the_queues_then_notifies() {
    let rig = Rig::new(Config::default());
    let mut d = rig.start().expect("bring-up");
    d.write(0, &pattern(2, 512)).unwrap();
    d.shutdown().unwrap();
    assert_eq!(rig.model.borrow().shutdowns, 1);
    let mut buf = vec![0; 512];
    assert_eq!(d.read(0, &mut buf), Err(Error::Unusable));
    assert_eq!(d.shutdown(), Err(Error::Unusable));
    drop(d);
    assert_eq!(rig.live_allocations(), 0);
}
