//! The guest bundle reader (`bundle::read`, `bundle::read_settings`), which the
//! kernel runs on the ramdisk: arbitrary bytes give VMs and machine settings or an
//! error, never a panic; both readers give the same verdict; what they accept, the
//! writer packs again into a bundle that reads back the same.
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
    let settings = bundle::read_settings(blob);
    match bundle::read(blob) {
        Ok(vms) => {
            let settings = settings.expect("read accepts the bundle, so read_settings does");
            let again = bundle::write_with(&settings, &vms)
                .expect("what the reader accepts, the writer packs");
            assert_eq!(
                bundle::read_with(&again).expect("a written bundle reads"),
                (settings, vms)
            );
        }
        Err(e) => assert_eq!(settings, Err(e), "the two readers disagree"),
    }
});
