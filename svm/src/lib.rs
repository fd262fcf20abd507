#![no_std]

pub mod caps;
pub use caps::{SvmCaps, SvmUnavailable};
