//! `cargo xtask`: builds the kernel and its disk images, boots them in QEMU or Bochs,
//! runs the tests and writes USB sticks. The integration tests use this library too.

pub mod admin;
#[cfg(feature = "disk-images")]
pub mod bench;
pub mod boot_cpu;
#[cfg(feature = "disk-images")]
pub mod build;
pub mod config;
#[cfg(feature = "disk-images")]
pub mod console;
#[cfg(feature = "disk-images")]
pub mod emulator;
#[cfg(feature = "disk-images")]
pub mod flash;
#[cfg(feature = "disk-images")]
pub mod fuzz;
pub mod guests;
#[cfg(feature = "disk-images")]
pub mod linux;
pub mod storage;
pub mod uplink;
pub mod vms;

#[cfg(feature = "disk-images")]
pub mod tools;
