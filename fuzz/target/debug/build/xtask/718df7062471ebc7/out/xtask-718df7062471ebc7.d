/work/wt/blk/fuzz/target/debug/build/xtask/718df7062471ebc7/out/xtask-718df7062471ebc7.d: /work/wt/blk/xtask/src/lib.rs /work/wt/blk/xtask/src/config.rs /work/wt/blk/xtask/src/guests.rs /work/wt/blk/xtask/src/vms.rs

/work/wt/blk/fuzz/target/debug/build/xtask/718df7062471ebc7/out/libxtask-718df7062471ebc7.rmeta: /work/wt/blk/xtask/src/lib.rs /work/wt/blk/xtask/src/config.rs /work/wt/blk/xtask/src/guests.rs /work/wt/blk/xtask/src/vms.rs

/work/wt/blk/xtask/src/lib.rs:
/work/wt/blk/xtask/src/config.rs:
/work/wt/blk/xtask/src/guests.rs:
/work/wt/blk/xtask/src/vms.rs:
