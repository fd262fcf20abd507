//! The hypervisor kernel: boot-time bring-up, host memory, and the vendor-neutral VMM
//! core. Pure logic is host-tested (`cargo test -p kernel --lib`); the rest runs on the
//! machine (or emulator) and is tested by booting images.
#![cfg_attr(not(test), no_std)]
#![cfg_attr(target_os = "none", feature(abi_x86_interrupt))]

extern crate alloc;

pub mod memory_map;
pub mod secret_line;
pub mod vmm;

#[cfg(target_os = "none")]
pub mod acpi_info;
#[cfg(target_os = "none")]
pub mod aesni;
#[cfg(target_os = "none")]
pub mod ap_trampoline;
#[cfg(target_os = "none")]
pub mod apic;
#[cfg(target_os = "none")]
pub mod boot;
#[cfg(target_os = "none")]
pub mod bundle_source;
#[cfg(target_os = "none")]
pub mod detect;
#[cfg(target_os = "none")]
pub mod gdt;
#[cfg(target_os = "none")]
pub mod host_disk;
#[cfg(target_os = "none")]
pub mod host_nic;
#[cfg(target_os = "none")]
pub mod interrupts;
#[cfg(target_os = "none")]
pub mod memory;
#[cfg(target_os = "none")]
pub mod migration_check;
#[cfg(target_os = "none")]
pub mod mitigation;
#[cfg(target_os = "none")]
pub mod pci;
#[cfg(target_os = "none")]
pub mod serial;
#[cfg(target_os = "none")]
pub mod shutdown;
#[cfg(target_os = "none")]
pub mod smp;
#[cfg(target_os = "none")]
pub mod time;
#[cfg(target_os = "none")]
pub mod timer;

/// Reports a panic with its location and message, then stops the machine.
#[cfg(target_os = "none")]
pub fn panic(info: &core::panic::PanicInfo) -> ! {
    serial::emergency_write_fmt(format_args!("\nhv: PANIC: {info}\n"));
    shutdown::exit(shutdown::Status::Failure)
}
