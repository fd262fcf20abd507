//! What the transport needs from a device type ([`VirtioDevice`]), and the generic
//! constants of virtio 1.2 chapters 2 and 6.

use crate::memory::GuestMemory;
use crate::queue::Chain;

/// Device status bits (§2.1).
pub mod status {
    pub const ACKNOWLEDGE: u8 = 1;
    pub const DRIVER: u8 = 2;
    pub const DRIVER_OK: u8 = 4;
    pub const FEATURES_OK: u8 = 8;
    pub const DEVICE_NEEDS_RESET: u8 = 0x40;
    pub const FAILED: u8 = 0x80;
}

/// Reserved feature bits (§6) this implementation knows.
pub mod features {
    pub const INDIRECT_DESC: u64 = 1 << 28;
    pub const EVENT_IDX: u64 = 1 << 29;
    pub const VERSION_1: u64 = 1 << 32;
    pub const ACCESS_PLATFORM: u64 = 1 << 33;
    pub const RING_PACKED: u64 = 1 << 34;
}

/// Device IDs (§5).
pub mod device_id {
    pub const NET: u16 = 1;
    pub const BLOCK: u16 = 2;
    pub const BALLOON: u16 = 5;
}

/// Reads a device configuration space held as `bytes`: byte `offset` on into
/// `data`, zeros past its end (and for offsets that overflow).
pub fn read_config_bytes(bytes: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = offset
            .checked_add(i as u64)
            .and_then(|o| bytes.get(usize::try_from(o).ok()?))
            .copied()
            .unwrap_or(0);
    }
}

/// A virtio device type (block, ...) behind a transport. The transport owns feature
/// negotiation, status, queues and interrupts; the device supplies its features,
/// its configuration space and what one request does.
pub trait VirtioDevice: Send {
    /// The virtio device ID (§5).
    fn device_type(&self) -> u16;
    /// The device-specific feature bits offered (the transport adds VERSION_1,
    /// INDIRECT_DESC and EVENT_IDX).
    fn device_features(&self) -> u64;
    /// How many virtqueues the device has.
    fn num_queues(&self) -> u16;
    /// The largest size of each queue.
    fn queue_max_size(&self) -> u16;
    /// The device configuration space, byte `offset` on; bytes past its end read 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// A driver write to the device configuration space (ignored by default).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Whether the device can work with the features the driver accepted (all of
    /// them offered): `false` keeps FEATURES_OK clear, which is how a device
    /// refuses a combination (§2.2.2, §3.1.1 step 6). Yes by default.
    fn accepts_features(&self, _driver_features: u64) -> bool {
        true
    }
    /// The features the driver accepted, once FEATURES_OK is set.
    fn set_features(&mut self, _negotiated: u64) {}
    /// A device reset (§2.4): forget negotiated state.
    fn reset(&mut self) {}
    /// Whether the device can use a chain of `queue` now. A queue the driver fills
    /// with requests (a disk's, a transmit queue) says yes by default; a queue the
    /// device fills on its own (a network receive queue) says yes only while
    /// something waits for a buffer, and a transmit queue whose output is full may
    /// say no to hold the guest back. Chains stay available meanwhile: the
    /// transport takes them at the next notification, at
    /// [`crate::VirtioPci::device_work`], or at a poll once this turns true again.
    fn can_take(&self, _queue: u16) -> bool {
        true
    }
    /// Does what the chain taken from `queue` asks; returns the number of bytes
    /// written into its device-writable part (the used element's `len`). Every
    /// segment of `chain` lies in guest RAM.
    fn process(&mut self, queue: u16, chain: &Chain, mem: &mut dyn GuestMemory) -> u32;
    /// Whether the chains taken from `queue` stay with the device instead of being
    /// returned when [`Self::process`] ends (whose result is then ignored): a queue
    /// whose buffers the device uses to start an exchange later, as virtio-balloon's
    /// statsq (§5.5.6.3). The device gives them back through
    /// [`Self::take_returned`]. No by default.
    fn holds_chains(&self, _queue: u16) -> bool {
        false
    }
    /// Whether a chain of `queue` the device held is ready to go back to the driver.
    fn has_returned(&self, _queue: u16) -> bool {
        false
    }
    /// The next held chain of `queue` to return used: its head and the bytes
    /// written into it. The transport asks only while it can use the queue (the
    /// driver set it up, DRIVER_OK, bus mastering on), so nothing is lost while it
    /// cannot.
    fn take_returned(&mut self, _queue: u16) -> Option<(u16, u32)> {
        None
    }
    /// The device type's own state for a snapshot (empty by default).
    fn state(&self) -> alloc::vec::Vec<u8> {
        alloc::vec::Vec::new()
    }
    /// Takes back what [`Self::state`] returned; `false` when it is not acceptable.
    fn restore(&mut self, data: &[u8]) -> bool {
        data.is_empty()
    }
}
