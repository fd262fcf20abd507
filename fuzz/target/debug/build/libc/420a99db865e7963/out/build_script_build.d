/work/wt/blk/fuzz/target/debug/build/libc/420a99db865e7963/out/build_script_build.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/libc-0.2.191/build.rs

/work/wt/blk/fuzz/target/debug/build/libc/420a99db865e7963/out/build_script_build: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/libc-0.2.191/build.rs

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/libc-0.2.191/build.rs:
