/work/wt/blk/fuzz/target/debug/build/bundle/9d4786f66dc02688/out/bundle-9d4786f66dc02688.d: /work/wt/blk/bundle/src/lib.rs

/work/wt/blk/fuzz/target/debug/build/bundle/9d4786f66dc02688/out/libbundle-9d4786f66dc02688.rmeta: /work/wt/blk/bundle/src/lib.rs

/work/wt/blk/bundle/src/lib.rs:
