//! The driver against the device model (`model/`): bring-up, both rings, wrap,
//! descriptor write-back and DD, and the device's misbehaviour.

mod model;

use e1000::regs::*;
use e1000::{Error, Model, Nic, TxError, MAX_FRAME, RX_ENTRIES, TX_ENTRIES};
use model::{Clock, Device, Dma, Regs, Shared, MAC};

type Driver = Nic<Regs, Dma>;

fn up(dev: &Shared) -> Result<Driver, Error> {
    let model = dev.borrow().model;
    Nic::new(
        Regs(dev.clone()),
        Dma {
            device: dev.clone(),
            budget: 1000,
        },
        &mut Clock::default(),
        model,
    )
}

fn frame(n: u32, len: usize) -> Vec<u8> {
    let mut f = vec![0xFF; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&n.to_le_bytes());
    f.resize(len, n as u8);
    f
}

fn take(nic: &mut Driver, budget: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let n = nic.receive(budget, |f| got.push(f.to_vec()));
    assert_eq!(n, got.len());
    got
}

#[test]
fn bring_up_programs_the_rings_and_reads_the_mac() {
    let dev = Device::new(Model::I8254x);
    let mut nic = up(&dev).unwrap();
    assert_eq!(nic.mac(), MAC);
    assert!(nic.link_up());
    let d = dev.borrow();
    assert_eq!(d.resets, 1);
    assert_eq!(d.reg(IMC), u32::MAX, "interrupts masked: the driver polls");
    assert_eq!(d.reg(RDLEN) as usize, RX_ENTRIES * 16);
    assert_eq!(d.reg(TDLEN) as usize, TX_ENTRIES * 16);
    assert_eq!(d.reg(RDLEN) % 128, 0);
    assert_eq!(d.reg(RDH), 0);
    assert_eq!(d.reg(RDT) as usize, RX_ENTRIES - 1);
    assert_eq!((d.reg(TDH), d.reg(TDT)), (0, 0));
    let rctl = d.reg(RCTL);
    assert_eq!(
        rctl & (RCTL_EN | RCTL_BAM | RCTL_SECRC),
        RCTL_EN | RCTL_BAM | RCTL_SECRC
    );
    assert_eq!(
        rctl & (RCTL_UPE | RCTL_MPE),
        RCTL_UPE | RCTL_MPE,
        "an uplink takes frames for every MAC"
    );
    assert_eq!(rctl & (1 << 5), 0, "no long packets");
    assert_eq!(d.reg(RCTL) & (0b11 << 16), 0, "2 KiB buffers");
    assert_ne!(d.reg(TCTL) & TCTL_EN, 0);
    assert_ne!(d.reg(TCTL) & TCTL_PSP, 0);
    assert_eq!(d.reg(TIPG), TIPG_COPPER);
    let ctrl = d.reg(CTRL);
    assert_ne!(ctrl & CTRL_SLU, 0);
    assert_eq!(ctrl & (CTRL_LRST | CTRL_PHY_RST | CTRL_RST), 0);
    // The rings are 16-byte aligned and inside DMA memory.
    assert_eq!(d.reg(RDBAL) % 16, 0);
    assert_eq!(d.reg(TDBAL) % 16, 0);
    assert_ne!(
        d.reg(RDBAH),
        0,
        "the high half of a >4 GiB address is programmed"
    );
}

#[test]
fn mac_from_the_eeprom_in_both_layouts() {
    for model in [Model::I8254x, Model::I82574] {
        let dev = Device::new(model);
        {
            let mut d = dev.borrow_mut();
            d.load_ral_from_eeprom = false;
            d.eeprom[0] = 0x1102;
            d.eeprom[1] = 0x3322;
            d.eeprom[2] = 0x5544;
        }
        let nic = up(&dev).unwrap();
        assert_eq!(nic.mac(), [0x02, 0x11, 0x22, 0x33, 0x44, 0x55], "{model:?}");
        // The address read is programmed as the unicast filter.
        let d = dev.borrow();
        assert_eq!(d.reg(RAL0), 0x3322_1102);
        assert_eq!(d.reg(RAH0), 0x5544 | RAH_AV);
    }
}

#[test]
fn no_usable_mac_is_an_error() {
    let dev = Device::new(Model::I8254x);
    {
        let mut d = dev.borrow_mut();
        d.load_ral_from_eeprom = false;
        d.eeprom[..3].copy_from_slice(&[0xFFFF; 3]); // multicast
    }
    assert_eq!(up(&dev).err(), Some(Error::NoMac));
}

#[test]
fn dead_and_stuck_devices_fail_cleanly() {
    let dev = Device::new(Model::I8254x);
    dev.borrow_mut().dead = true;
    assert_eq!(up(&dev).err(), Some(Error::NoDevice));

    let dev = Device::new(Model::I8254x);
    dev.borrow_mut().reset_sticks = true;
    assert_eq!(up(&dev).err(), Some(Error::ResetTimeout));
    assert!(
        dev.borrow().memory.is_empty(),
        "nothing allocated before the reset"
    );
}

#[test]
fn out_of_memory_gives_back_what_it_took() {
    let dev = Device::new(Model::I8254x);
    let err = Nic::new(
        Regs(dev.clone()),
        Dma {
            device: dev.clone(),
            budget: 20,
        },
        &mut Clock::default(),
        Model::I8254x,
    )
    .err();
    assert_eq!(err, Some(Error::OutOfMemory));
    assert!(dev.borrow().memory.is_empty());
}

#[test]
fn transmitted_frames_reach_the_wire_across_ring_wraps() {
    let dev = Device::new(Model::I8254x);
    let mut nic = up(&dev).unwrap();
    let frames: Vec<Vec<u8>> = (0..3 * TX_ENTRIES as u32 + 5)
        .map(|i| frame(i, 60 + (i as usize * 7) % 1400))
        .collect();
    for f in &frames {
        nic.transmit(f).unwrap();
    }
    assert_eq!(dev.borrow().sent, frames);
    assert_eq!(nic.tx_in_flight(), 0);
    let s = nic.stats();
    assert_eq!(s.tx_frames, frames.len() as u64);
    assert_eq!(
        s.tx_bytes,
        frames.iter().map(|f| f.len() as u64).sum::<u64>()
    );
}

#[test]
fn a_device_that_never_completes_fills_the_ring_and_nothing_hangs() {
    let dev = Device::new(Model::I8254x);
    let mut nic = up(&dev).unwrap();
    dev.borrow_mut().never_complete_tx = true;
    for i in 0..TX_ENTRIES - 1 {
        nic.transmit(&frame(i as u32, 60)).unwrap();
    }
    assert_eq!(nic.transmit(&frame(99, 60)), Err(TxError::RingFull));
    assert_eq!(nic.transmit(&frame(99, 60)), Err(TxError::RingFull));
    assert_eq!(nic.stats().tx_ring_full, 2);
    assert_eq!(nic.tx_in_flight(), TX_ENTRIES - 1);
    // The tail never catches up with the head: one descriptor stays unused.
    assert_eq!(dev.borrow().reg(TDT) as usize, TX_ENTRIES - 1);
    // The device recovers: the queued frames go out, the ring frees up.
    dev.borrow_mut().never_complete_tx = false;
    nic.transmit(&frame(100, 60)).unwrap_err();
    let tdt = dev.borrow().reg(TDT);
    dev.borrow_mut().write32_public(TDT, tdt);
    assert_eq!(dev.borrow().sent.len(), TX_ENTRIES - 1);
    nic.transmit(&frame(100, 60)).unwrap();
    assert_eq!(dev.borrow().sent.len(), TX_ENTRIES);
}

#[test]
fn frame_sizes_are_checked() {
    let dev = Device::new(Model::I8254x);
    let mut nic = up(&dev).unwrap();
    assert_eq!(
        nic.transmit(&frame(1, MAX_FRAME + 1)),
        Err(TxError::TooLarge)
    );
    assert_eq!(nic.transmit(&[0; 13]), Err(TxError::TooShort));
    nic.transmit(&frame(2, MAX_FRAME)).unwrap();
    nic.transmit(&frame(3, 14)).unwrap();
    assert_eq!(dev.borrow().sent.len(), 2);
    assert_eq!(nic.stats().tx_bad_size, 2);
}

#[test]
fn received_frames_come_in_order_within_the_budget() {
    let dev = Device::new(Model::I8254x);
    let mut nic = up(&dev).unwrap();
    assert!(take(&mut nic, 8).is_empty(), "nothing without DD");
    for i in 0..10 {
        assert!(dev.borrow_mut().receive(&frame(i, 64)));
    }
    let got = take(&mut nic, 4);
    assert_eq!(got, (0..4).map(|i| frame(i, 64)).collect::<Vec<_>>());
    // The tail follows what was given back: the last descriptor taken.
    assert_eq!(dev.borrow().reg(RDT), 3);
    let got = take(&mut nic, 100);
    assert_eq!(got, (4..10).map(|i| frame(i, 64)).collect::<Vec<_>>());
    assert_eq!(nic.stats().rx_frames, 10);
}

#[test]
fn the_receive_ring_wraps_and_a_full_ring_refuses_frames() {
    let dev = Device::new(Model::I82574);
    let mut nic = up(&dev).unwrap();
    // The device can fill all but one descriptor before the driver takes any.
    let mut n = 0u32;
    while dev.borrow_mut().receive(&frame(n, 100)) {
        n += 1;
    }
    assert_eq!(n as usize, RX_ENTRIES - 1);
    // Rounds across the wrap, each frame checked.
    let mut next = 0u32;
    for _ in 0..5 {
        let got = take(&mut nic, RX_ENTRIES);
        for f in got {
            assert_eq!(f, frame(next, 100));
            next += 1;
        }
        for _ in 0..RX_ENTRIES / 2 + 3 {
            assert!(dev.borrow_mut().receive(&frame(n, 100)));
            n += 1;
        }
    }
    for f in take(&mut nic, RX_ENTRIES) {
        assert_eq!(f, frame(next, 100));
        next += 1;
    }
    assert_eq!(next, n);
}

#[test]
fn bad_write_backs_are_dropped_and_counted() {
    let dev = Device::new(Model::I8254x);
    let mut nic = up(&dev).unwrap();
    {
        let mut d = dev.borrow_mut();
        // DD without EOP, then its EOP part: one frame over two descriptors.
        assert!(d.receive_with(&frame(1, 64), 0b01, 0, None));
        assert!(d.receive_with(&frame(2, 64), 0b11, 0, None));
        // A CRC error.
        assert!(d.receive_with(&frame(3, 64), 0b11, 0x01, None));
        // A length beyond the 2 KiB buffer, and a zero length.
        assert!(d.receive_with(&frame(4, 64), 0b11, 0, Some(4000)));
        assert!(d.receive_with(&frame(5, 64), 0b11, 0, Some(0)));
        // A good one after them.
        assert!(d.receive(&frame(6, 64)));
    }
    let got = take(&mut nic, 100);
    assert_eq!(got, vec![frame(6, 64)]);
    let s = nic.stats();
    assert_eq!((s.rx_fragmented, s.rx_errors, s.rx_bad_length), (1, 1, 2));
    // Every descriptor went back to the device with DD clear.
    assert_eq!(dev.borrow().reg(RDT), 5);
}

#[test]
fn a_descriptor_is_taken_only_once_dd_is_set() {
    let dev = Device::new(Model::I8254x);
    let mut nic = up(&dev).unwrap();
    // Length written, DD not yet (the device is still writing the buffer).
    assert!(dev.borrow_mut().receive_with(&frame(1, 64), 0, 0, None));
    assert!(take(&mut nic, 8).is_empty());
    assert_eq!(
        dev.borrow().reg(RDT) as usize,
        RX_ENTRIES - 1,
        "nothing given back"
    );
}

#[test]
fn shutdown_stops_the_device_and_frees_its_memory() {
    let dev = Device::new(Model::I8254x);
    let mut nic = up(&dev).unwrap();
    nic.shutdown(&mut Clock::default());
    let d = dev.borrow();
    assert!(d.memory.is_empty(), "{} allocations left", d.memory.len());
    assert_eq!(d.resets, 2);
    assert_eq!(d.reg(RCTL) & RCTL_EN, 0);
    drop(d);
    assert_eq!(nic.transmit(&frame(1, 64)), Err(TxError::RingFull));
    assert_eq!(nic.receive(8, |_| panic!("no frames after shutdown")), 0);
}

#[test]
fn known_ids() {
    assert_eq!(e1000::model_for(0x8086, 0x100E), Some(Model::I8254x));
    assert_eq!(e1000::model_for(0x8086, 0x10D3), Some(Model::I82574));
    assert_eq!(e1000::model_for(0x8086, 0x1234), None);
    assert_eq!(e1000::model_for(0x1AF4, 0x100E), None);
}
