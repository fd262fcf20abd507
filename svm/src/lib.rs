#![no_std]

pub mod caps;
pub use caps::{SvmCaps, SvmUnavailable};

pub mod backend;
pub mod exit;
pub mod npt;
pub mod permission_maps;
pub mod reflect;
pub mod state;
pub mod vmcb;
