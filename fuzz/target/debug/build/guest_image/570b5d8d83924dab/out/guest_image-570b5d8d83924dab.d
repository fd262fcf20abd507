/work/wt/blk/fuzz/target/debug/build/guest_image/570b5d8d83924dab/out/guest_image-570b5d8d83924dab.d: /work/wt/blk/images/src/lib.rs /work/wt/blk/images/src/linux.rs /work/wt/blk/images/src/multiboot.rs /work/wt/blk/images/src/tiny.rs

/work/wt/blk/fuzz/target/debug/build/guest_image/570b5d8d83924dab/out/libguest_image-570b5d8d83924dab.rmeta: /work/wt/blk/images/src/lib.rs /work/wt/blk/images/src/linux.rs /work/wt/blk/images/src/multiboot.rs /work/wt/blk/images/src/tiny.rs

/work/wt/blk/images/src/lib.rs:
/work/wt/blk/images/src/linux.rs:
/work/wt/blk/images/src/multiboot.rs:
/work/wt/blk/images/src/tiny.rs:
