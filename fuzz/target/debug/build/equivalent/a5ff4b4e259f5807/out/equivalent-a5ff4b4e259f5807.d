/work/wt/blk/fuzz/target/debug/build/equivalent/a5ff4b4e259f5807/out/equivalent-a5ff4b4e259f5807.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/equivalent-1.0.3/src/lib.rs

/work/wt/blk/fuzz/target/debug/build/equivalent/a5ff4b4e259f5807/out/libequivalent-a5ff4b4e259f5807.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/equivalent-1.0.3/src/lib.rs

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/equivalent-1.0.3/src/lib.rs:
