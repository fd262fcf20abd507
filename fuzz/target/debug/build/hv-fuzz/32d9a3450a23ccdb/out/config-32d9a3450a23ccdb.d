/work/wt/blk/fuzz/target/debug/build/hv-fuzz/32d9a3450a23ccdb/out/config-32d9a3450a23ccdb.d: fuzz_targets/config.rs

/work/wt/blk/fuzz/target/debug/build/hv-fuzz/32d9a3450a23ccdb/out/libconfig-32d9a3450a23ccdb.rmeta: fuzz_targets/config.rs

fuzz_targets/config.rs:
