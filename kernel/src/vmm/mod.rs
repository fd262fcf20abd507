//! The vendor-neutral VMM core: guest loading (planned by the `guest_image` crate),
//! the CPUID/MSR/hypercall policy, exit dispatch to devices, per-VM statistics, and
//! the run loop that time-slices VMs.
//! It sees only `vcpu::Backend` and `vcpu::Vcpu`; which vendor runs underneath is
//! decided once, in `boot`.

pub mod balloon;
pub mod cmpxchg_wide;
pub mod console;
pub mod console_queue;
pub mod cr_insn;
pub mod descriptor_load;
pub mod guest_ram;
pub mod guest_walk;
pub mod loader;
pub mod mmio;
pub mod mmio_memory;
pub mod mmio_segment;
pub mod mmio_simd_alu;
pub mod mmio_sse;
pub mod mmio_stack;
pub mod mmio_x87;
pub mod net;
pub mod platform;
pub mod policy;
pub mod sched;
pub mod stats;
pub mod string_io;
#[cfg(test)]
mod test_ram;
pub mod vm;
pub mod vm_disk;
pub mod x86_arith;

#[cfg(target_os = "none")]
pub mod host_memory;
#[cfg(target_os = "none")]
pub mod mgmt_net;
#[cfg(target_os = "none")]
mod persistent;
#[cfg(target_os = "none")]
mod run;
#[cfg(target_os = "none")]
pub use run::run_all;
#[cfg(target_os = "none")]
pub mod uplink;
