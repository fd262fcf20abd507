//! What can go wrong talking to an ATA device, each case specific enough to act on.

use core::fmt;

use crate::regs::{error as err, status};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// Nothing answers: the status register floats (FFh, no controller or no
    /// device on an undriven bus) or reads 0 after IDENTIFY DEVICE (no device).
    NoDevice { status: u8 },
    /// The device is not an ATA disk: its signature (LBA Mid, LBA High) is an
    /// ATAPI one (a CD drive) or unknown.
    NotAta {
        kind: &'static str,
        mid: u8,
        high: u8,
    },
    /// A wait exceeded its limit: `what` names the condition waited for; `status`
    /// is the last Status read.
    Timeout {
        what: &'static str,
        waited_ms: u64,
        status: u8,
    },
    /// A command ended with ERR or DF set in Status; `error` is the Error register.
    Command { command: u8, status: u8, error: u8 },
    /// A command ended with DRQ still set: the device has more data to move than
    /// the command asked for (a protocol mismatch; nothing of it was trusted).
    DataLeft { command: u8, status: u8 },
    /// The IDENTIFY DEVICE data lack something the driver needs, or fail their
    /// checks; `what` says which.
    Identify(&'static str),
    /// A transfer outside the disk: sectors `lba..lba + count` of a disk with
    /// `sectors` sectors.
    OutOfRange { lba: u64, count: u64, sectors: u64 },
    /// A buffer whose length is not a whole number of 512-byte sectors.
    BufferLength(usize),
}

/// The command's name for messages.
fn command_name(op: u8) -> &'static str {
    use crate::regs::command::*;
    match op {
        READ_SECTORS_EXT => "READ SECTORS EXT",
        WRITE_SECTORS_EXT => "WRITE SECTORS EXT",
        FLUSH_CACHE_EXT => "FLUSH CACHE EXT",
        IDENTIFY_DEVICE => "IDENTIFY DEVICE",
        _ => "command",
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoDevice { status } => {
                write!(f, "no device answers (status {status:#04x})")
            }
            Error::NotAta { kind, mid, high } => write!(
                f,
                "not an ATA disk: {kind} signature (LBA mid {mid:#04x}, high {high:#04x})"
            ),
            Error::Timeout {
                what,
                waited_ms,
                status,
            } => write!(
                f,
                "timed out after {waited_ms} ms waiting for {what} (status {status:#04x})"
            ),
            Error::Command {
                command,
                status: st,
                error,
            } => {
                write!(
                    f,
                    "{} ({command:#04x}) failed: status {st:#04x}, error {error:#04x}",
                    command_name(*command)
                )?;
                if st & status::DF != 0 {
                    write!(f, " (device fault)")?;
                }
                for (bit, name) in [
                    (err::ABRT, "aborted"),
                    (err::IDNF, "address not found"),
                    (err::UNC, "uncorrectable data"),
                    (err::ICRC, "interface CRC error"),
                ] {
                    if st & status::ERR != 0 && error & bit != 0 {
                        write!(f, " ({name})")?;
                    }
                }
                Ok(())
            }
            Error::DataLeft { command, status } => write!(
                f,
                "{} ({command:#04x}) ended with DRQ still set (status {status:#04x}): the device \
                 has more data than the command asked for",
                command_name(*command)
            ),
            Error::Identify(what) => write!(f, "IDENTIFY DEVICE data unusable: {what}"),
            Error::OutOfRange {
                lba,
                count,
                sectors,
            } => write!(
                f,
                "sectors {lba}..{} are outside the disk ({sectors} sectors)",
                lba.saturating_add(*count)
            ),
            Error::BufferLength(len) => {
                write!(
                    f,
                    "buffer of {len} bytes is not a whole number of 512-byte sectors"
                )
            }
        }
    }
}
