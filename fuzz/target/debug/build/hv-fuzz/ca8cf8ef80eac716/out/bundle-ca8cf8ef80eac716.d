/work/wt/blk/fuzz/target/debug/build/hv-fuzz/ca8cf8ef80eac716/out/bundle-ca8cf8ef80eac716.d: fuzz_targets/bundle.rs

/work/wt/blk/fuzz/target/debug/build/hv-fuzz/ca8cf8ef80eac716/out/libbundle-ca8cf8ef80eac716.rmeta: fuzz_targets/bundle.rs

fuzz_targets/bundle.rs:
