//! `cargo xtask`: builds the kernel and its disk images, boots them in QEMU or Bochs,
//! runs the tests and writes USB sticks. The integration tests use this library too.

pub mod bench;
pub mod build;
pub mod config;
pub mod console;
pub mod emulator;
pub mod flash;
pub mod guests;
pub mod linux;
pub mod vms;

pub mod tools;
