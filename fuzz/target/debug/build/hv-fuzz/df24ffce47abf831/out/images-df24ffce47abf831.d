/work/wt/blk/fuzz/target/debug/build/hv-fuzz/df24ffce47abf831/out/images-df24ffce47abf831.d: fuzz_targets/images.rs

/work/wt/blk/fuzz/target/debug/build/hv-fuzz/df24ffce47abf831/out/libimages-df24ffce47abf831.rmeta: fuzz_targets/images.rs

fuzz_targets/images.rs:
