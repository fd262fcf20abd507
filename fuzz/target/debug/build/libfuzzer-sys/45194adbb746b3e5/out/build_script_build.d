/work/wt/blk/fuzz/target/debug/build/libfuzzer-sys/45194adbb746b3e5/out/build_script_build.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/libfuzzer-sys-0.4.13/build.rs

/work/wt/blk/fuzz/target/debug/build/libfuzzer-sys/45194adbb746b3e5/out/build_script_build: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/libfuzzer-sys-0.4.13/build.rs

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/libfuzzer-sys-0.4.13/build.rs:
