//! Everything Intel VT-x: capability detection ([`caps`]), the VMCS and its controls,
//! EPT, exit decoding, and the runtime backend ([`VmxBackend`], [`VmxVcpu`]) that
//! implements the vendor-neutral [`vcpu::Backend`] / [`vcpu::Vcpu`] interface.
//!
//! The design mirrors the `svm` crate: pure modules that compute what to put in the
//! hardware structures and decode what comes back, tested on the host, and one small
//! runtime module with the unsafe VMX instructions and the entry stub.
//!
//! - [`vmcs`]: field encodings, control bits, and [`vmcs::VmcsAccess`].
//! - [`controls`]: control values from the capability MSRs.
//! - [`guest_state`]: the guest-state area for each start mode.
//! - [`checks`]: a software copy of the VM-entry guest-state checks.
//! - [`ops`]: control/host-state set-up, instruction skipping, event injection, CR
//!   access emulation.
//! - [`ept`], [`vpid`], [`bitmaps`]: EPT format, VPID allocation, I/O and MSR bitmaps
//!   and MSR switch areas.
//! - [`exit`]: exit decoding and the VM-instruction error table.
//! - [`reflect`]: #AC and #DB, always intercepted, given back to the guest.
//! - [`state`]: the vCPU's state as a `vcpu::state::CpuState` and back.
//! - [`backend`]: the runtime (VMXON, VMCS life cycle, VM entry).
#![no_std]

pub mod caps;
pub use caps::{adjust_controls, FeatureControlState, VmxCaps, VmxUnavailable};

pub mod arch;
pub mod backend;
pub mod bitmaps;
pub mod checks;
pub mod controls;
pub mod ept;
pub mod exit;
pub mod guest_state;
pub mod ops;
pub mod reflect;
pub mod state;
pub mod vmcs;
pub mod vpid;

pub use backend::{VmxBackend, VmxVcpu};
