/work/wt/blk/fuzz/target/debug/build/hv-fuzz/7a2d45f4dcd2d7b2/out/devices-7a2d45f4dcd2d7b2.d: fuzz_targets/devices.rs

/work/wt/blk/fuzz/target/debug/build/hv-fuzz/7a2d45f4dcd2d7b2/out/libdevices-7a2d45f4dcd2d7b2.rmeta: fuzz_targets/devices.rs

fuzz_targets/devices.rs:
