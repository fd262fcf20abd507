/work/wt/blk/fuzz/target/debug/build/devices/68b6b102b5d82c14/out/devices-68b6b102b5d82c14.d: /work/wt/blk/devices/src/lib.rs /work/wt/blk/devices/src/bus.rs /work/wt/blk/devices/src/bus_devices.rs /work/wt/blk/devices/src/cmos.rs /work/wt/blk/devices/src/debug_exit.rs /work/wt/blk/devices/src/device.rs /work/wt/blk/devices/src/fw_cfg.rs /work/wt/blk/devices/src/i8042.rs /work/wt/blk/devices/src/ioapic.rs /work/wt/blk/devices/src/ipi.rs /work/wt/blk/devices/src/irq.rs /work/wt/blk/devices/src/lapic.rs /work/wt/blk/devices/src/line_buffer.rs /work/wt/blk/devices/src/mptable.rs /work/wt/blk/devices/src/pci.rs /work/wt/blk/devices/src/pci_config.rs /work/wt/blk/devices/src/pic8259.rs /work/wt/blk/devices/src/pit8254.rs /work/wt/blk/devices/src/uart16550.rs

/work/wt/blk/fuzz/target/debug/build/devices/68b6b102b5d82c14/out/libdevices-68b6b102b5d82c14.rmeta: /work/wt/blk/devices/src/lib.rs /work/wt/blk/devices/src/bus.rs /work/wt/blk/devices/src/bus_devices.rs /work/wt/blk/devices/src/cmos.rs /work/wt/blk/devices/src/debug_exit.rs /work/wt/blk/devices/src/device.rs /work/wt/blk/devices/src/fw_cfg.rs /work/wt/blk/devices/src/i8042.rs /work/wt/blk/devices/src/ioapic.rs /work/wt/blk/devices/src/ipi.rs /work/wt/blk/devices/src/irq.rs /work/wt/blk/devices/src/lapic.rs /work/wt/blk/devices/src/line_buffer.rs /work/wt/blk/devices/src/mptable.rs /work/wt/blk/devices/src/pci.rs /work/wt/blk/devices/src/pci_config.rs /work/wt/blk/devices/src/pic8259.rs /work/wt/blk/devices/src/pit8254.rs /work/wt/blk/devices/src/uart16550.rs

/work/wt/blk/devices/src/lib.rs:
/work/wt/blk/devices/src/bus.rs:
/work/wt/blk/devices/src/bus_devices.rs:
/work/wt/blk/devices/src/cmos.rs:
/work/wt/blk/devices/src/debug_exit.rs:
/work/wt/blk/devices/src/device.rs:
/work/wt/blk/devices/src/fw_cfg.rs:
/work/wt/blk/devices/src/i8042.rs:
/work/wt/blk/devices/src/ioapic.rs:
/work/wt/blk/devices/src/ipi.rs:
/work/wt/blk/devices/src/irq.rs:
/work/wt/blk/devices/src/lapic.rs:
/work/wt/blk/devices/src/line_buffer.rs:
/work/wt/blk/devices/src/mptable.rs:
/work/wt/blk/devices/src/pci.rs:
/work/wt/blk/devices/src/pci_config.rs:
/work/wt/blk/devices/src/pic8259.rs:
/work/wt/blk/devices/src/pit8254.rs:
/work/wt/blk/devices/src/uart16550.rs:
