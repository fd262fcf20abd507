//! What can go wrong talking to a controller, each case specific enough to act on.

use core::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// A capability or identify field the driver needs is missing or out of range.
    Unsupported(&'static str),
    /// A wait exceeded its limit: `what` names the condition waited for.
    Timeout { what: &'static str, waited_ms: u64 },
    /// CSTS.CFS: the controller reports a fatal status (NVMe 1.4 §3.1.6, §10.5).
    ControllerFatal,
    /// A command completed with a non-zero status (NVMe 1.4 §4.6.1.2): status code
    /// type `sct` and status code `sc`; `dnr` says retrying will not help.
    Command {
        opcode: u8,
        admin: bool,
        sct: u8,
        sc: u8,
        dnr: bool,
    },
    /// A completion entry that does not answer the command waited for.
    BadCompletion {
        expected_cid: u16,
        cid: u16,
        sqid: u16,
    },
    /// Namespace 1 is not usable: inactive (NSZE 0) or the controller has none.
    NoNamespace,
    /// The namespace's LBA format is one the driver refuses: data size other than
    /// 512 or 4096 bytes, or metadata with each LBA.
    LbaFormat {
        data_bytes: u64,
        metadata_bytes: u16,
    },
    /// A transfer outside the disk: sectors `lba..lba + count` of a disk with
    /// `sectors` 512-byte sectors.
    OutOfRange { lba: u64, count: u64, sectors: u64 },
    /// A buffer whose length is not a whole number of 512-byte sectors.
    BufferLength(usize),
    /// DMA memory could not be allocated.
    OutOfMemory,
    /// An earlier command timed out or was answered out of turn, or the controller
    /// reported a fatal status: the controller may still be using the driver's
    /// memory, so nothing more is sent to it.
    Unusable,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unsupported(what) => write!(f, "unsupported controller: {what}"),
            Error::Timeout { what, waited_ms } => {
                write!(f, "timed out after {waited_ms} ms waiting for {what}")
            }
            Error::ControllerFatal => write!(f, "controller fatal status (CSTS.CFS)"),
            Error::Command {
                opcode,
                admin,
                sct,
                sc,
                dnr,
            } => write!(
                f,
                "{} command {opcode:#04x} failed: status code type {sct:#x}, status code {sc:#04x}{}",
                if *admin { "admin" } else { "I/O" },
                if *dnr { " (do not retry)" } else { "" }
            ),
            Error::BadCompletion {
                expected_cid,
                cid,
                sqid,
            } => write!(
                f,
                "completion for command {cid} of queue {sqid} while waiting for command {expected_cid}"
            ),
            Error::NoNamespace => write!(f, "namespace 1 is not active"),
            Error::LbaFormat {
                data_bytes,
                metadata_bytes,
            } => write!(
                f,
                "LBA format with {data_bytes}-byte data and {metadata_bytes}-byte metadata is not supported (512 or 4096 bytes without metadata)"
            ),
            Error::OutOfRange { lba, count, sectors } => write!(
                f,
                "sectors {lba}..{} are outside the disk ({sectors} sectors)",
                lba.saturating_add(*count)
            ),
            Error::BufferLength(len) => {
                write!(f, "buffer of {len} bytes is not a whole number of 512-byte sectors")
            }
            Error::OutOfMemory => write!(f, "out of DMA memory"),
            Error::Unusable => write!(f, "controller unusable after an earlier failure"),
        }
    }
}
