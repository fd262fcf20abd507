//! The snapshot byte format of [`crate::VirtioPci::state`]: the tag `hvvirtio` and a
//! little-endian u16 version ([`STATE_VERSION`]), then the fields in a fixed order,
//! all little-endian, the device type's own state last with a u32 length. The
//! reader, writer and [`StateError`] are the `devices` crate's ([`devices::state`]),
//! so virtio devices and platform devices snapshot alike: a reader refuses another
//! tag or version, truncated data and trailing bytes.

pub use devices::state::{Reader, StateError, Tag, Writer};

/// The first 8 bytes of a virtio-pci snapshot.
pub const STATE_MAGIC: Tag = *b"hvvirtio";
/// Bumped whenever the field list changes.
pub const STATE_VERSION: u16 = 1;
