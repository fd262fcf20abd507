#![no_std]

pub mod caps;
pub use caps::{adjust_controls, FeatureControlState, VmxCaps, VmxUnavailable};
