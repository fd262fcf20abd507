//! Build script for the test guests: hands each binary its own linker script.
//!
//! The guests are linked at fixed addresses (0x7C00 for the boot sector, 0x100000
//! for the ELF guests; `mb32` puts its Multiboot header first, hence its own script). `x86_64-unknown-none` links static-PIE by default, which
//! would leave absolute pointers to be patched by a dynamic loader that the
//! hypervisor does not have, and which rejects the 16-bit absolute relocations of
//! the boot sector. `--no-pie` (it comes after rustc's `-pie`, and the last one wins
//! in lld) makes a plain `ET_EXEC`: the position-independent code rustc emits is
//! fine at a fixed address, lld resolves its GOT entries at link time. This keeps
//! a plain `cargo build -p guests --target x86_64-unknown-none` correct without
//! any workspace-wide `-C relocation-model=static`.

use std::env;
use std::path::PathBuf;

/// Which linker script each binary uses.
const BINS: &[(&str, &str)] = &[
    ("real16", "link16.ld"),
    ("prot32", "link32.ld"),
    ("hello64", "link64.ld"),
    ("msr64", "link64.ld"),
    ("ports64", "link64.ld"),
    ("oob64", "link64.ld"),
    ("spin64", "link64.ld"),
    ("triple64", "link64.ld"),
    ("mb32", "linkmb32.ld"),
    ("bench64", "link64.ld"),
    ("smp64", "link64.ld"),
    ("ipistorm64", "link64.ld"),
    ("reset64", "link64.ld"),
    ("dbloop64", "link64.ld"),
    ("dr64", "link64.ld"),
    ("insn64", "link64.ld"),
    ("timer64", "link64.ld"),
    ("crcheck64", "link64.ld"),
    ("blk64", "link64.ld"),
    ("vq64", "link64.ld"),
    ("net64", "link64.ld"),
    ("flood64", "link64.ld"),
    ("udpecho64", "link64.ld"),
    ("count64", "link64.ld"),
    ("balloon64", "link64.ld"),
    ("acloop32", "link32.ld"),
    ("usercall32", "link32.ld"),
];

fn main() {
    let dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    for script in ["link16.ld", "link32.ld", "link64.ld", "linkmb32.ld"] {
        println!("cargo:rerun-if-changed={}", dir.join(script).display());
    }
    println!("cargo:rerun-if-changed=build.rs");

    // On the host the binaries are empty stubs linked by the system linker: the
    // scripts (and lld's flags) only make sense for the bare-metal target.
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("none") {
        return;
    }
    for (bin, script) in BINS {
        let script = dir.join(script);
        println!("cargo:rustc-link-arg-bin={bin}=-T{}", script.display());
        println!("cargo:rustc-link-arg-bin={bin}=--no-pie");
        // No build ID note: it would be an extra allocated section in the image.
        println!("cargo:rustc-link-arg-bin={bin}=--build-id=none");
    }
}
