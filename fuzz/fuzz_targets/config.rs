//! The VM configuration (`xtask::config`): arbitrary TOML text, validated against a
//! scratch directory holding one image of each kind, gives VMs or a positioned error,
//! never a panic.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// A directory with `boot.bin` (boot sector), `mb.bin` (Multiboot, a.out kludge) and
/// `m.bin` (a module), made once per process.
fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("hv-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut boot = vec![0x90u8; 512];
        boot[510] = 0x55;
        boot[511] = 0xAA;
        std::fs::write(dir.join("boot.bin"), boot).unwrap();
        let mut mb = vec![0u8; 4096];
        let magic: u32 = 0x1BAD_B002;
        let flags: u32 = (1 << 16) | 0b11;
        let fields = [
            magic,
            flags,
            0u32.wrapping_sub(magic).wrapping_sub(flags),
            0x10_0040,
            0x10_0000,
            0,
            0x10_2000,
            0x10_0100,
        ];
        for (i, f) in fields.iter().enumerate() {
            mb[0x40 + 4 * i..0x44 + 4 * i].copy_from_slice(&f.to_le_bytes());
        }
        std::fs::write(dir.join("mb.bin"), mb).unwrap();
        std::fs::write(dir.join("m.bin"), b"module").unwrap();
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Absolute paths would read arbitrary host files: keep the fuzzer to the
    // scratch directory's names.
    if text.contains('/') || text.contains('\\') {
        return;
    }
    match xtask::config::parse_text("fuzz.toml", text, scratch()) {
        Ok(vms) => {
            for vm in vms {
                assert!(!vm.name.is_empty() && (1..=bundle::MAX_VCPUS).contains(&vm.vcpus));
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
