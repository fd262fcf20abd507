//! The hypervisor's management console, as host-tested logic (the kernel wires it
//! to the serial line and to the VMs in `kernel/src/vmm/operator.rs`):
//!
//! - [`input`]: what each byte typed on the serial console means: keys for the VM
//!   that has the keyboard, or, after the escape key (Ctrl-], as in telnet and
//!   `virsh console`), the `hv>` prompt's line editor;
//! - [`command`]: the commands, their parser and their help;
//! - [`auth`]: the administrator passphrase (an Argon2id hash packed in the bundle)
//!   and the growing delay after wrong attempts;
//! - [`report`]: the `list` and `stats` tables.
#![no_std]

extern crate alloc;

pub mod auth;
pub mod command;
pub mod input;
pub mod report;

pub use auth::{Credential, Gate};
pub use command::{parse, Command, Level, ParseError};
pub use input::{Input, Step, ESCAPE};
