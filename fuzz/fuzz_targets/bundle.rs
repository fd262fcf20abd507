//! The guest bundle reader (`bundle::read`), which the kernel runs on the ramdisk:
//! arbitrary bytes give VMs or an error, never a panic; what it accepts, the writer
//! packs again into a bundle that reads back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Half the inputs get the magic, so the fuzzer spends its time past it.
    let mut owned;
    let blob = if data.first().is_some_and(|b| b & 1 == 1) {
        owned = bundle::MAGIC.to_vec();
        owned.extend_from_slice(&data[1..]);
        &owned[..]
    } else {
        data
    };
    if let Ok(vms) = bundle::read(blob) {
        let again = bundle::write(&vms).expect("what the reader accepts, the writer packs");
        assert_eq!(bundle::read(&again).expect("a written bundle reads"), vms);
    }
});
