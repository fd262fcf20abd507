//! The driver against the model channel (`model/`): probing (ATA, ATAPI, absent,
//! floating), IDENTIFY DEVICE checks, 48-bit reads and writes split into commands,
//! bounds, error and fault reports, and time limits.

mod model;

use ata::{identify_device, probe, reset_channel, Disk, Drive, Error, Identity};
use model::{identify_words, rig, seal, Device, Kind, CHANNEL, TIMEOUTS};

/// Bytes that differ per sector and per pass, so misplaced data shows.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i / 512) as u8 ^ (i as u8).wrapping_mul(7) ^ seed)
        .collect()
}

fn open(master: Device) -> (Disk<model::ModelPorts, model::StepClock>, model::ModelPorts) {
    let (ports, clock) = rig(Some(master), None);
    let d = Disk::open(ports.clone(), clock, CHANNEL, Drive::Master, TIMEOUTS).expect("identify");
    (d, ports)
}

#[test]
fn probe_tells_a_disk_from_a_packet_device_and_an_empty_slot() {
    let (mut ports, mut clock) = rig(Some(Device::disk(1 << 20)), Some(Device::atapi()));
    let found = probe(&mut ports, &mut clock, CHANNEL, TIMEOUTS).unwrap();
    let id = found.master.unwrap();
    assert_eq!(id.model, "Model ATA Disk");
    assert_eq!(id.serial, "hv-ata-1");
    assert_eq!(id.firmware, "1.0");
    assert_eq!(id.sectors, 1 << 20);
    assert!(id.write_cache);
    assert_eq!(
        found.slave,
        Err(Error::NotAta {
            kind: "ATAPI",
            mid: 0x14,
            high: 0xEB
        })
    );
    assert_eq!(ports.0.borrow().resets, 1);

    let (mut ports, mut clock) = rig(Some(Device::disk(4096)), None);
    let found = probe(&mut ports, &mut clock, CHANNEL, TIMEOUTS).unwrap();
    assert!(found.master.is_ok());
    assert_eq!(found.slave, Err(Error::NoDevice { status: 0 }));
}

#[test]
fn a_floating_bus_has_no_devices() {
    let (mut ports, mut clock) = rig(None, None);
    ports.0.borrow_mut().floating = true;
    assert_eq!(
        reset_channel(&mut ports, &mut clock, CHANNEL, TIMEOUTS),
        Err(Error::NoDevice { status: 0xFF })
    );
    assert!(ports.0.borrow().issued.is_empty());
}

#[test]
fn a_device_that_stays_busy_times_out_with_a_name() {
    let mut d = Device::disk(4096);
    d.stuck_busy = true;
    let (mut ports, mut clock) = rig(Some(d), None);
    match reset_channel(&mut ports, &mut clock, CHANNEL, TIMEOUTS) {
        Err(Error::Timeout {
            what,
            waited_ms,
            status,
        }) => {
            assert_eq!(what, "BSY to clear after the software reset");
            assert!(waited_ms >= 100, "{waited_ms}");
            assert_eq!(status, 0x80);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn identify_data_are_checked() {
    let check = |words: [u16; 256]| {
        let (mut ports, mut clock) = rig(
            Some(Device::new(Kind::Ata {
                sectors: 4096,
                identify: Box::new(words),
            })),
            None,
        );
        identify_device(&mut ports, &mut clock, CHANNEL, Drive::Master, TIMEOUTS)
    };
    let good = identify_words("Model", "s", 4096);
    assert!(check(good).is_ok());

    let mut bad_sum = good;
    bad_sum[255] ^= 0x0100;
    assert_eq!(
        check(bad_sum),
        Err(Error::Identify("the checksum in word 255 does not match"))
    );

    let mut no48 = good;
    no48[83] &= !(1 << 10);
    seal(&mut no48);
    assert!(matches!(check(no48), Err(Error::Identify(w)) if w.contains("48-bit addressing")));

    let mut no_lba = good;
    no_lba[49] = 0;
    seal(&mut no_lba);
    assert!(matches!(check(no_lba), Err(Error::Identify(w)) if w.contains("LBA")));

    let mut big_sectors = good;
    big_sectors[106] = 0x4000 | (1 << 12);
    big_sectors[117] = 2048;
    seal(&mut big_sectors);
    assert!(matches!(check(big_sectors), Err(Error::Identify(w)) if w.contains("not 512 bytes")));

    let mut zero = good;
    zero[100..104].fill(0);
    seal(&mut zero);
    assert!(matches!(check(zero), Err(Error::Identify(w)) if w.contains("words 100-103 are 0")));

    let mut huge = good;
    huge[103] = 1;
    seal(&mut huge);
    assert!(matches!(check(huge), Err(Error::Identify(w)) if w.contains("beyond 2^48")));

    let mut packet = good;
    packet[0] = 0x8580;
    seal(&mut packet);
    assert!(matches!(check(packet), Err(Error::Identify(w)) if w.contains("word 0")));

    // Without word 255's signature there is no checksum to check.
    let mut unsigned = identify_words("Model\u{7}\u{1b}", "s", 4096);
    unsigned[255] = 0;
    let id = check(unsigned).unwrap();
    assert_eq!(
        id.model, "Model??",
        "control characters do not reach the log"
    );
}

#[test]
fn identify_parses_a_plain_table() {
    let words = identify_words("QEMU HARDDISK", "QM00001", 0x1_2345_6789);
    let id = Identity::parse(&words).unwrap();
    assert_eq!(id.model, "QEMU HARDDISK");
    assert_eq!(id.serial, "QM00001");
    assert_eq!(id.sectors, 0x1_2345_6789);
}

#[test]
fn data_round_trips_across_command_splits_and_high_lbas() {
    // Past 2^32 sectors: the high-order LBA bytes must go through the HOB.
    let sectors = (1u64 << 33) + 4096;
    let (mut d, ports) = open(Device::disk(sectors));
    assert_eq!(d.sectors(), sectors);
    let at = (1u64 << 32) - 100; // straddles 2^32
    let data = pattern(3, 600 * 512);
    d.write(at, &data).unwrap();
    let mut back = vec![0u8; data.len()];
    d.read(at, &mut back).unwrap();
    assert!(back == data, "read back what was written");

    let m = ports.0.borrow();
    let cmds: Vec<(u8, u64, u64)> = m
        .issued
        .iter()
        .map(|i| (i.command, i.lba, i.count))
        .collect();
    assert_eq!(
        cmds,
        vec![
            (0xEC, 0, 65_536),
            (0x34, at, 256),
            (0x34, at + 256, 256),
            (0x34, at + 512, 88),
            (0x24, at, 256),
            (0x24, at + 256, 256),
            (0x24, at + 512, 88),
        ]
    );
    assert!(m.issued.iter().all(|i| i.masked), "interrupts stay masked");
    // Sector by sector on the device, in order.
    let dev = m.devices[0].as_ref().unwrap();
    assert_eq!(dev.data[&(at + 599)][..], data[599 * 512..]);
}

#[test]
fn the_slave_is_addressed_as_the_slave() {
    let (ports, clock) = rig(Some(Device::disk(4096)), Some(Device::disk(8192)));
    let mut d = Disk::open(ports.clone(), clock, CHANNEL, Drive::Slave, TIMEOUTS).unwrap();
    assert_eq!(d.sectors(), 8192);
    d.write(8191, &pattern(9, 512)).unwrap();
    let m = ports.0.borrow();
    assert!(m.issued.iter().all(|i| i.drive == 1));
    assert!(m.devices[0].as_ref().unwrap().data.is_empty());
    assert!(m.devices[1].as_ref().unwrap().data.contains_key(&8191));
}

#[test]
fn requests_outside_the_disk_or_of_odd_length_send_nothing() {
    let (mut d, ports) = open(Device::disk(1000));
    let mut buf = vec![0u8; 1024];
    assert_eq!(
        d.read(999, &mut buf),
        Err(Error::OutOfRange {
            lba: 999,
            count: 2,
            sectors: 1000
        })
    );
    assert_eq!(
        d.write(u64::MAX, &buf),
        Err(Error::OutOfRange {
            lba: u64::MAX,
            count: 2,
            sectors: 1000
        })
    );
    assert_eq!(d.read(0, &mut buf[..100]), Err(Error::BufferLength(100)));
    assert_eq!(ports.0.borrow().issued.len(), 1, "only IDENTIFY DEVICE");
    // An empty request is no command either.
    d.read(1000, &mut []).unwrap();
    assert_eq!(ports.0.borrow().issued.len(), 1);
}

#[test]
fn an_unreadable_sector_is_reported_with_the_error_register() {
    let mut dev = Device::disk(4096);
    dev.bad_sector = Some(10);
    let (mut d, _) = open(dev);
    let mut buf = vec![0u8; 16 * 512];
    let e = d.read(5, &mut buf).unwrap_err();
    assert_eq!(
        e,
        Error::Command {
            command: 0x24,
            status: 0x41,
            error: 0x40
        }
    );
    assert_eq!(
        e.to_string(),
        "READ SECTORS EXT (0x24) failed: status 0x41, error 0x40 (uncorrectable data)"
    );
    // The disk works on after the failed command.
    d.read(11, &mut buf).unwrap();
}

#[test]
fn flush_is_sent_and_a_device_fault_is_reported() {
    let (mut d, ports) = open(Device::disk(4096));
    d.flush().unwrap();
    assert_eq!(ports.0.borrow().devices[0].as_ref().unwrap().flushes, 1);
    assert_eq!(ports.0.borrow().issued.last().unwrap().command, 0xEA);

    let mut dev = Device::disk(4096);
    dev.fault_on_flush = true;
    let (mut d, _) = open(dev);
    let e = d.flush().unwrap_err();
    assert!(
        e.to_string().starts_with("FLUSH CACHE EXT (0xea) failed")
            && e.to_string().contains("(device fault)"),
        "{e}"
    );
}

#[test]
fn a_device_that_stops_answering_mid_command_times_out() {
    let (mut d, ports) = open(Device::disk(4096));
    ports.0.borrow_mut().devices[0].as_mut().unwrap().stuck_busy = true;
    let mut buf = vec![0u8; 512];
    match d.read(0, &mut buf) {
        Err(Error::Timeout { what, .. }) => {
            assert_eq!(what, "the channel to be idle before selecting a device")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_device_with_more_data_than_asked_for_is_a_protocol_error() {
    let mut dev = Device::disk(4096);
    dev.identify_extra_block = true;
    let (ports, clock) = rig(Some(dev), None);
    match Disk::open(ports, clock, CHANNEL, Drive::Master, TIMEOUTS) {
        Err(e @ Error::DataLeft { command: 0xEC, .. }) => assert!(
            e.to_string()
                .starts_with("IDENTIFY DEVICE (0xec) ended with DRQ still set"),
            "{e}"
        ),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("opened"),
    }
}

#[test]
fn the_device_refusing_a_command_is_an_error_not_data() {
    // A read past the end as the device sees it (a device smaller than it said).
    let mut dev = Device::disk(4096);
    if let Kind::Ata { sectors, .. } = &mut dev.kind {
        *sectors = 100;
    }
    let (mut d, _) = open(dev);
    let mut buf = vec![0u8; 512];
    let e = d.read(200, &mut buf).unwrap_err();
    assert!(e.to_string().contains("(address not found)"), "{e}");
}
