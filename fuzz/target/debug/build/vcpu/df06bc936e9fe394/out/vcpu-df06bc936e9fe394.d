/work/wt/blk/fuzz/target/debug/build/vcpu/df06bc936e9fe394/out/vcpu-df06bc936e9fe394.d: /work/wt/blk/vcpu/src/lib.rs /work/wt/blk/vcpu/src/cr_policy.rs /work/wt/blk/vcpu/src/fpu.rs /work/wt/blk/vcpu/src/mitigation.rs /work/wt/blk/vcpu/src/paging.rs /work/wt/blk/vcpu/src/slice.rs

/work/wt/blk/fuzz/target/debug/build/vcpu/df06bc936e9fe394/out/libvcpu-df06bc936e9fe394.rmeta: /work/wt/blk/vcpu/src/lib.rs /work/wt/blk/vcpu/src/cr_policy.rs /work/wt/blk/vcpu/src/fpu.rs /work/wt/blk/vcpu/src/mitigation.rs /work/wt/blk/vcpu/src/paging.rs /work/wt/blk/vcpu/src/slice.rs

/work/wt/blk/vcpu/src/lib.rs:
/work/wt/blk/vcpu/src/cr_policy.rs:
/work/wt/blk/vcpu/src/fpu.rs:
/work/wt/blk/vcpu/src/mitigation.rs:
/work/wt/blk/vcpu/src/paging.rs:
/work/wt/blk/vcpu/src/slice.rs:
