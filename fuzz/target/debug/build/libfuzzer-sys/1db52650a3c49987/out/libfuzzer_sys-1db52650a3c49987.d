/work/wt/blk/fuzz/target/debug/build/libfuzzer-sys/1db52650a3c49987/out/libfuzzer_sys-1db52650a3c49987.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/libfuzzer-sys-0.4.13/src/lib.rs

/work/wt/blk/fuzz/target/debug/build/libfuzzer-sys/1db52650a3c49987/out/liblibfuzzer_sys-1db52650a3c49987.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/libfuzzer-sys-0.4.13/src/lib.rs

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/libfuzzer-sys-0.4.13/src/lib.rs:
