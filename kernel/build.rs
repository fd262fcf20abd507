//! Builds the `aesni` crate (AES-256-XTS with AES-NI) for `aesni/x86_64-hv-sse.json`,
//! the kernel's own target with SSE and the hard-float ABI, and hands the kernel binary
//! one relocatable object of it whose only global symbols are the `hv_aesni_*`
//! functions (see `kernel/src/aesni.rs` for why, and why SSE code is sound there).
//!
//! Steps: a nested `cargo build -Zbuild-std` of `aesni` into `OUT_DIR` (its own target
//! directory, so it never waits for the outer build's lock); `rust-lld -r` of the
//! whole static library into one object, so that references between its crates
//! (its own `core`, `compiler_builtins`) resolve inside it; `llvm-objcopy
//! --keep-global-symbol` to make every other symbol local, so nothing of it clashes
//! with the kernel's `core` or panic handler. `rust-lld` and `llvm-objcopy` come from
//! the toolchain's `llvm-tools` component (rust-toolchain.toml). Host builds (the
//! kernel's unit tests, clippy on the host) skip all of this.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The object's global symbols: the functions `kernel/src/aesni.rs` declares.
const EXPORTS: [&str; 4] = [
    "hv_aesni_layout",
    "hv_aesni_init",
    "hv_aesni_crypt",
    "hv_aesni_drop",
];

fn main() {
    let kernel = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = kernel
        .parent()
        .expect("the kernel crate is in the workspace");
    let crate_dir = root.join("aesni");
    for path in ["src", "Cargo.toml", "x86_64-hv-sse.json"] {
        println!("cargo:rerun-if-changed={}", crate_dir.join(path).display());
    }
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("none") {
        return;
    }
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let target_dir = out.join("aesni-target");
    let mut cargo = Command::new(env::var_os("CARGO").expect("set by cargo"));
    cargo
        .current_dir(root)
        .args([
            "build",
            "-Zjson-target-spec",
            "-Zbuild-std=core,compiler_builtins",
        ])
        .args(["--package", "aesni", "--lib", "--release", "--target"])
        .arg(crate_dir.join("x86_64-hv-sse.json"))
        .arg("--target-dir")
        .arg(&target_dir)
        // No debug information: the object is linked into a kernel that keeps its own.
        .args(["--config", "profile.release.debug=0"]);
    // The outer build's flags and wrappers are for the kernel's target (its
    // `aes_force_soft` cfg, clippy's driver): none of them applies here.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        cargo.env_remove(var);
    }
    run(&mut cargo, "build the aesni crate for the SSE target");

    let library = target_dir.join("x86_64-hv-sse/release/libaesni.a");
    let tools = toolchain_bin();
    let whole = out.join("aesni-whole.o");
    run(
        Command::new(tools.join("rust-lld"))
            .args(["-flavor", "gnu", "-r", "--whole-archive"])
            .arg(&library)
            .arg("-o")
            .arg(&whole),
        "link the aesni library into one object",
    );
    let object = out.join("aesni.o");
    let mut objcopy = Command::new(tools.join("llvm-objcopy"));
    for name in EXPORTS {
        objcopy.arg(format!("--keep-global-symbol={name}"));
    }
    run(
        objcopy.arg(&whole).arg(&object),
        "make the aesni object's other symbols local",
    );
    println!("cargo:rustc-link-arg-bins={}", object.display());
}

/// The toolchain's `lib/rustlib/<host>/bin`, where `llvm-tools` puts its programs.
fn toolchain_bin() -> PathBuf {
    let rustc = env::var_os("RUSTC").expect("set by cargo");
    let output = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .expect("rustc runs");
    let sysroot = String::from_utf8(output.stdout).expect("a UTF-8 path");
    let host = env::var("HOST").expect("set by cargo");
    Path::new(sysroot.trim())
        .join("lib/rustlib")
        .join(host)
        .join("bin")
}

fn run(cmd: &mut Command, what: &str) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot {what}: {cmd:?}: {e}"));
    if !status.success() {
        panic!("cannot {what}: {cmd:?} exited with {status}");
    }
}
