//! The virtio-pci modern transport (virtio 1.2 §4.1) for one [`VirtioDevice`]: the
//! function's PCI configuration space (type 0 header, the virtio vendor capabilities
//! and MSI-X) and its one memory BAR, which holds every structure:
//!
//! | BAR 0 offset | structure | capability |
//! | --- | --- | --- |
//! | 0x0000 | common configuration (§4.1.4.3) | cfg_type 1 at 0x40 |
//! | 0x1000 | ISR status (§4.1.4.5) | cfg_type 3 at 0x64 |
//! | 0x2000 | device-specific configuration (§4.1.4.6) | cfg_type 4 at 0x74 |
//! | 0x3000 | notifications, queue n at 0x3000 + 4n (§4.1.4.4) | cfg_type 2 at 0x50 |
//! | 0x4000 | MSI-X table, one entry per queue plus one for configuration changes | MSI-X at 0x98 |
//! | 0x5000 | MSI-X pending bit array | |
//!
//! plus the PCI configuration access capability (cfg_type 5 at 0x84, §4.1.4.9), a
//! window into the BAR through configuration space.
//!
//! Interrupts (§4.1.5): with MSI-X enabled, a used buffer sends the message of its
//! queue's vector and a configuration change that of `config_msix_vector`; a masked
//! vector's message waits in the pending bit array until it is unmasked. Without
//! MSI-X the ISR status bits drive INTA#, and reading the ISR clears them.
//!
//! A configuration change comes from the device (DEVICE_NEEDS_RESET) or from its
//! owner ([`VirtioPci::config_changed`], e.g. a new virtio-balloon target): the
//! generation moves on (§4.1.4.3.1) and, once the driver is running, the
//! configuration change notification goes out (§4.1.4.5: ISR bit 1 or the
//! `config_msix_vector` message).

use alloc::vec;
use alloc::vec::Vec;
use core::any::Any;
use core::sync::atomic::{fence, Ordering};

use devices::pci::{command, merge, reg, Bar, PciEffects, PciFunction};
use devices::MsiMessage;

use crate::device::{features, status, VirtioDevice};
use crate::memory::GuestMemory;
use crate::queue::{QueueError, QueueFeatures, SplitQueue};
use crate::state::{Reader, StateError, Writer, STATE_MAGIC, STATE_VERSION};

pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1AF4;
/// Modern (non-transitional) device IDs are 0x1040 + the virtio device ID (§4.1.2).
pub const VIRTIO_PCI_DEVICE_ID_BASE: u16 = 0x1040;
/// Revision 1: a modern device (§4.1.2.1: MUST have a Revision ID of 1 or higher).
pub const VIRTIO_PCI_REVISION: u8 = 1;
/// The subsystem ID QEMU gives its modern devices.
pub const VIRTIO_PCI_SUBSYSTEM_ID: u16 = 0x1100;
/// "No MSI-X vector" for config_msix_vector and queue_msix_vector (§4.1.5.1.2).
pub const NO_VECTOR: u16 = 0xFFFF;

/// The BAR that holds everything, and its size.
pub const BAR_INDEX: u8 = 0;
pub const BAR_SIZE: u64 = 0x8000;
pub const COMMON_CFG: u64 = 0x0000;
pub const ISR_CFG: u64 = 0x1000;
pub const DEVICE_CFG: u64 = 0x2000;
pub const NOTIFY_CFG: u64 = 0x3000;
pub const MSIX_TABLE: u64 = 0x4000;
pub const MSIX_PBA: u64 = 0x5000;
/// Each structure's window in the BAR.
const REGION: u64 = 0x1000;
/// queue_notify_off * this = a queue's notification offset (§4.1.4.4).
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;

/// Capability positions in configuration space.
pub const CAP_COMMON: u16 = 0x40;
pub const CAP_NOTIFY: u16 = 0x50;
pub const CAP_ISR: u16 = 0x64;
pub const CAP_DEVICE: u16 = 0x74;
pub const CAP_PCI_CFG: u16 = 0x84;
pub const CAP_MSIX: u16 = 0x98;

/// virtio_pci_cap.cfg_type values (§4.1.4).
pub mod cfg_type {
    pub const COMMON: u8 = 1;
    pub const NOTIFY: u8 = 2;
    pub const ISR: u8 = 3;
    pub const DEVICE: u8 = 4;
    pub const PCI_CFG: u8 = 5;
}

/// ISR status bits (§4.1.4.5).
pub mod isr {
    pub const QUEUE: u8 = 1;
    pub const CONFIG: u8 = 2;
}

/// Common configuration field offsets (§4.1.4.3).
pub mod common {
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    pub const DEVICE_FEATURE: u64 = 0x04;
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    pub const DRIVER_FEATURE: u64 = 0x0C;
    pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
    pub const NUM_QUEUES: u64 = 0x12;
    pub const DEVICE_STATUS: u64 = 0x14;
    pub const CONFIG_GENERATION: u64 = 0x15;
    pub const QUEUE_SELECT: u64 = 0x16;
    pub const QUEUE_SIZE: u64 = 0x18;
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1A;
    pub const QUEUE_ENABLE: u64 = 0x1C;
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1E;
    pub const QUEUE_DESC: u64 = 0x20;
    pub const QUEUE_DRIVER: u64 = 0x28;
    pub const QUEUE_DEVICE: u64 = 0x30;
    /// The structure's size with the virtio 1.2 fields (notif_config_data,
    /// queue_reset), which read 0: their features are not offered.
    pub const SIZE: usize = 0x3C;
}

/// MSI-X message control bits.
const MSIX_MASK_ALL: u16 = 1 << 14;
const MSIX_ENABLE: u16 = 1 << 15;
/// MSI-X vector control: masked.
const MSIX_ENTRY_MASKED: u32 = 1;

/// The byte layout of a virtio_pci_cap (§4.1.4) at `at` in `cfg`.
fn put_cap(cfg: &mut [u8; 256], at: u16, next: u16, len: u8, kind: u8, offset: u64, length: u64) {
    let a = usize::from(at);
    cfg[a] = devices::pci::cap_id::VENDOR;
    cfg[a + 1] = next as u8;
    cfg[a + 2] = len;
    cfg[a + 3] = kind;
    cfg[a + 4] = BAR_INDEX;
    cfg[a + 8..a + 12].copy_from_slice(&(offset as u32).to_le_bytes());
    cfg[a + 12..a + 16].copy_from_slice(&(length as u32).to_le_bytes());
}

/// Little-endian bytes `[offset, offset + size)` of `bytes` as a u64; bytes past the
/// end read 0.
fn extract(bytes: &[u8], offset: u64, size: u8) -> u64 {
    let mut v = 0u64;
    for i in 0..u64::from(size.min(8)) {
        let b = offset
            .checked_add(i)
            .and_then(|o| bytes.get(usize::try_from(o).ok()?))
            .copied()
            .unwrap_or(0);
        v |= u64::from(b) << (8 * i);
    }
    v
}

/// A virtio device on the modern PCI transport, with the guest RAM it reaches
/// (`M`: the kernel's view of the VM's RAM, or a [`crate::VecMemory`] in tests).
pub struct VirtioPci<D: VirtioDevice, M: GuestMemory> {
    device: D,
    memory: M,
    /// The read-only part of configuration space.
    template: [u8; 256],
    // PCI function state.
    command: u16,
    bar0: u32,
    cache_line: u8,
    latency: u8,
    interrupt_line: u8,
    cfg_bar: u8,
    cfg_offset: u32,
    cfg_length: u32,
    msix_control: u16,
    msix_table: Vec<[u32; 4]>,
    msix_pending: Vec<bool>,
    // virtio transport state.
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    config_generation: u8,
    queue_select: u16,
    config_vector: u16,
    queues: Vec<SplitQueue>,
    queue_vectors: Vec<u16>,
    /// Queues with chains left over from a notification (see [`Self::notify`]).
    queue_work: Vec<bool>,
    /// Queues whose available chains the device could not take when it last
    /// looked ([`VirtioDevice::can_take`]): looked at again once it can. Not in
    /// snapshots: a restored device looks at every queue once.
    blocked: Vec<bool>,
    isr: u8,
    /// The INTx level last reported.
    intx: bool,
}

impl<D: VirtioDevice, M: GuestMemory> VirtioPci<D, M> {
    pub fn new(device: D, memory: M) -> Self {
        let n = device.num_queues();
        let vectors = usize::from(n) + 1;
        let mut t = [0u8; 256];
        let id = VIRTIO_PCI_DEVICE_ID_BASE + device.device_type();
        t[0..2].copy_from_slice(&VIRTIO_PCI_VENDOR_ID.to_le_bytes());
        t[2..4].copy_from_slice(&id.to_le_bytes());
        t[6] = devices::pci::status::CAP_LIST as u8;
        t[8] = VIRTIO_PCI_REVISION;
        // The class code QEMU shows for each type: 02/00/00 network (Ethernet)
        // controller, 01/00/00 mass storage (SCSI), else FF/00/00 (unassigned).
        t[0x0B] = match device.device_type() {
            crate::device::device_id::NET => 0x02,
            crate::device::device_id::BLOCK => 0x01,
            _ => 0xFF,
        };
        t[0x2C..0x2E].copy_from_slice(&VIRTIO_PCI_VENDOR_ID.to_le_bytes());
        t[0x2E..0x30].copy_from_slice(&VIRTIO_PCI_SUBSYSTEM_ID.to_le_bytes());
        t[usize::from(reg::CAPABILITIES)] = CAP_COMMON as u8;
        t[usize::from(reg::INTERRUPT_PIN)] = 1; // INTA#
        put_cap(
            &mut t,
            CAP_COMMON,
            CAP_NOTIFY,
            16,
            cfg_type::COMMON,
            COMMON_CFG,
            REGION,
        );
        put_cap(
            &mut t,
            CAP_NOTIFY,
            CAP_ISR,
            20,
            cfg_type::NOTIFY,
            NOTIFY_CFG,
            REGION,
        );
        let m = usize::from(CAP_NOTIFY) + 16;
        t[m..m + 4].copy_from_slice(&NOTIFY_OFF_MULTIPLIER.to_le_bytes());
        put_cap(
            &mut t,
            CAP_ISR,
            CAP_DEVICE,
            16,
            cfg_type::ISR,
            ISR_CFG,
            REGION,
        );
        put_cap(
            &mut t,
            CAP_DEVICE,
            CAP_PCI_CFG,
            16,
            cfg_type::DEVICE,
            DEVICE_CFG,
            REGION,
        );
        // The PCI configuration access capability: bar/offset/length are the
        // driver's to set (zero here), followed by the data window.
        put_cap(&mut t, CAP_PCI_CFG, CAP_MSIX, 20, cfg_type::PCI_CFG, 0, 0);
        let x = usize::from(CAP_MSIX);
        t[x] = devices::pci::cap_id::MSIX;
        t[x + 1] = 0; // end of the list
        t[x + 2..x + 4].copy_from_slice(&(vectors as u16 - 1).to_le_bytes());
        t[x + 4..x + 8].copy_from_slice(&(MSIX_TABLE as u32 | u32::from(BAR_INDEX)).to_le_bytes());
        t[x + 8..x + 12].copy_from_slice(&(MSIX_PBA as u32 | u32::from(BAR_INDEX)).to_le_bytes());
        let max = device.queue_max_size();
        Self {
            device,
            memory,
            template: t,
            command: 0,
            bar0: 0,
            cache_line: 0,
            latency: 0,
            interrupt_line: 0,
            cfg_bar: 0,
            cfg_offset: 0,
            cfg_length: 0,
            msix_control: 0,
            // Entries start masked (PCI 3.0 §6.8.2.9).
            msix_table: vec![[0, 0, 0, MSIX_ENTRY_MASKED]; vectors],
            msix_pending: vec![false; vectors],
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            queue_select: 0,
            config_vector: NO_VECTOR,
            queues: (0..n).map(|_| SplitQueue::new(max)).collect(),
            queue_vectors: vec![NO_VECTOR; usize::from(n)],
            queue_work: vec![false; usize::from(n)],
            blocked: vec![false; usize::from(n)],
            isr: 0,
            intx: false,
        }
    }

    pub fn device(&self) -> &D {
        &self.device
    }
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }
    pub fn memory(&self) -> &M {
        &self.memory
    }
    pub fn memory_mut(&mut self) -> &mut M {
        &mut self.memory
    }
    /// The device status byte (§2.1).
    pub fn status(&self) -> u8 {
        self.status
    }
    /// The queue `index`, as configured.
    pub fn queue(&self, index: u16) -> Option<&SplitQueue> {
        self.queues.get(usize::from(index))
    }

    /// Every feature offered: the device's and the transport's.
    pub fn offered_features(&self) -> u64 {
        self.device.device_features()
            | features::VERSION_1
            | features::INDIRECT_DESC
            | features::EVENT_IDX
    }

    /// The features negotiated (0 until FEATURES_OK is set).
    pub fn negotiated_features(&self) -> u64 {
        if self.status & status::FEATURES_OK != 0 {
            self.driver_features
        } else {
            0
        }
    }

    fn queue_features(&self) -> QueueFeatures {
        let f = self.negotiated_features();
        QueueFeatures {
            indirect: f & features::INDIRECT_DESC != 0,
            event_idx: f & features::EVENT_IDX != 0,
        }
    }

    /// A device reset (§2.4, writing 0 to device_status): virtio state back to its
    /// initial values. The PCI function (BAR, command, MSI-X table) is untouched: it
    /// is the bus's, not the device's.
    pub fn reset(&mut self) {
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.status = 0;
        self.queue_select = 0;
        self.config_vector = NO_VECTOR;
        for q in &mut self.queues {
            q.reset();
        }
        self.queue_vectors.fill(NO_VECTOR);
        self.queue_work.fill(false);
        self.blocked.fill(false);
        self.isr = 0;
        self.device.reset();
    }

    // ---------------------------------------------------------------- interrupts

    fn msix_enabled(&self) -> bool {
        self.msix_control & MSIX_ENABLE != 0
    }

    /// Signals `vector` (MSI-X) or sets `isr_bit` (INTx), §4.1.5.
    fn interrupt(&mut self, vector: u16, isr_bit: u8, e: &mut PciEffects) {
        if self.msix_enabled() {
            if let Some(p) = self.msix_pending.get_mut(usize::from(vector)) {
                *p = true;
                self.deliver_pending(e);
            }
        } else {
            self.isr |= isr_bit;
        }
    }

    fn msix_message(&self, v: usize) -> MsiMessage {
        let e = self.msix_table[v];
        MsiMessage {
            address: u64::from(e[1]) << 32 | u64::from(e[0]),
            data: e[2],
        }
    }

    /// Whether a pending MSI-X vector can be sent now.
    fn deliverable(&self, v: usize) -> bool {
        self.msix_pending[v]
            && self.msix_table[v][3] & MSIX_ENTRY_MASKED == 0
            && self.msix_enabled()
            && self.msix_control & MSIX_MASK_ALL == 0
            // An MSI is a memory write by the function: bus mastering must be on.
            && self.command & command::BUS_MASTER != 0
    }

    /// Sends pending, unmasked vectors as room in `e` allows (PCI 3.0 §6.8.2.9).
    fn deliver_pending(&mut self, e: &mut PciEffects) {
        for v in 0..self.msix_pending.len() {
            if self.deliverable(v) && e.has_room() {
                e.push_msi(self.msix_message(v));
                self.msix_pending[v] = false;
            }
        }
    }

    fn intx_level(&self) -> bool {
        !self.msix_enabled() && self.isr != 0 && self.command & command::INTX_DISABLE == 0
    }

    /// Every entry point ends here: pending messages go out, INTx follows the ISR.
    fn finish(&mut self, mut e: PciEffects) -> PciEffects {
        self.deliver_pending(&mut e);
        let level = self.intx_level();
        if level != self.intx {
            self.intx = level;
            e.intx = Some(level);
        }
        e
    }

    /// §2.1.2: the device hit an error it cannot recover from (a malformed queue);
    /// the driver must reset it. With DRIVER_OK set the device sends a configuration
    /// change notification.
    fn needs_reset(&mut self, e: &mut PciEffects) {
        if self.status & status::DEVICE_NEEDS_RESET != 0 {
            return;
        }
        self.status |= status::DEVICE_NEEDS_RESET;
        if self.status & status::DRIVER_OK != 0 {
            self.interrupt(self.config_vector, isr::CONFIG, e);
        }
    }

    // -------------------------------------------------------------- queue work

    /// A notification for queue `queue` (a write to its notification address, or the
    /// platform's fast path for one): takes the available chains, has the device
    /// process them, returns them used, and interrupts as the driver asked.
    ///
    /// At most one queue's worth of chains is processed per call, so a driver that
    /// keeps the ring full from another vCPU cannot hold the calling processor; what
    /// is left shows as [`PciFunction::has_work`] and [`PciFunction::poll`] goes on.
    pub fn notify(&mut self, queue: u16) -> PciEffects {
        let mut e = PciEffects::NONE;
        self.run_queue(queue, &mut e);
        self.finish(e)
    }

    /// The device has something new for its queues (a received frame, room again
    /// in a full transmit buffer): every queue it can take chains for now is
    /// processed as at a notification, with the interrupt the driver asked for
    /// (MSI-X or INTx, as for any used buffer). This is how device-initiated work
    /// such as network receive gets into the guest without waiting for a kick.
    pub fn device_work(&mut self) -> PciEffects {
        let mut e = PciEffects::NONE;
        for q in 0..self.queues.len() as u16 {
            if self.device.can_take(q) {
                self.run_queue(q, &mut e);
            }
        }
        self.finish(e)
    }

    /// Whether the device may take chains from queue `qi` and return them: the
    /// driver enabled it and is running (DRIVER_OK, no reset pending), and bus
    /// mastering is on (ring accesses are the function's DMA).
    fn usable(&self, qi: usize) -> bool {
        self.queues.get(qi).is_some_and(|q| q.ready)
            && self.status & status::DRIVER_OK != 0
            && self.status & status::DEVICE_NEEDS_RESET == 0
            && self.command & command::BUS_MASTER != 0
    }

    fn run_queue(&mut self, queue: u16, e: &mut PciEffects) {
        let qi = usize::from(queue);
        if qi >= self.queues.len() {
            return;
        }
        self.queue_work[qi] = false;
        self.blocked[qi] = false;
        if !self.usable(qi) {
            return;
        }
        let features = self.queue_features();
        let old_used = self.queues[qi].next_used;
        let result = self.drain(queue, features).and_then(|more| {
            self.queue_work[qi] = more;
            // Chains the device gave back while it took new ones (virtio-balloon's
            // statsq returns the buffer it held when the driver sends another)
            // share the interrupt decision with them.
            self.give_back(queue)?;
            self.queues[qi].needs_interrupt(&self.memory, features, old_used)
        });
        match result {
            Ok(true) => self.interrupt(self.queue_vectors[qi], isr::QUEUE, e),
            Ok(false) => {}
            Err(_) => self.needs_reset(e),
        }
    }

    /// Puts the chains of `queue` the device held and now returns
    /// ([`VirtioDevice::take_returned`]) in the used ring. The queue is usable.
    fn give_back(&mut self, queue: u16) -> Result<(), QueueError> {
        let qi = usize::from(queue);
        while let Some((head, len)) = self.device.take_returned(queue) {
            self.queues[qi].add_used(&mut self.memory, head, len)?;
        }
        Ok(())
    }

    /// Returns the held chains of `queue` that the device has let go of, with the
    /// used buffer notification the driver asked for; nothing while the queue
    /// cannot be used (they wait in the device).
    fn return_queue(&mut self, queue: u16, e: &mut PciEffects) {
        let qi = usize::from(queue);
        if !self.usable(qi) || !self.device.has_returned(queue) {
            return;
        }
        let features = self.queue_features();
        let old_used = self.queues[qi].next_used;
        let result = self
            .give_back(queue)
            .and_then(|()| self.queues[qi].needs_interrupt(&self.memory, features, old_used));
        match result {
            Ok(true) => self.interrupt(self.queue_vectors[qi], isr::QUEUE, e),
            Ok(false) => {}
            Err(_) => self.needs_reset(e),
        }
    }

    /// The device let go of chains it held (a virtio-balloon statistics request,
    /// §5.5.6.3): they go back to the driver now, with their interrupts. Chains
    /// of a queue that cannot be used now wait for [`PciFunction::poll`].
    pub fn return_held(&mut self) -> PciEffects {
        let mut e = PciEffects::NONE;
        for q in 0..self.queues.len() as u16 {
            self.return_queue(q, &mut e);
        }
        self.finish(e)
    }

    /// The device configuration space changed on the owner's side (a new
    /// virtio-balloon target): `config_generation` moves on, so a driver reading
    /// a multi-field configuration sees the change (§4.1.4.3.1, §2.5.1), and a
    /// running driver (DRIVER_OK) gets the configuration change notification,
    /// the `config_msix_vector` message or ISR bit 1 with INTx (§4.1.4.5,
    /// §4.1.5.1.2). A driver that is not running yet reads the new values when it
    /// initialises.
    pub fn config_changed(&mut self) -> PciEffects {
        let mut e = PciEffects::NONE;
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.status & status::DRIVER_OK != 0 {
            self.interrupt(self.config_vector, isr::CONFIG, &mut e);
        }
        self.finish(e)
    }

    /// Processes chains of `queue` until it is empty or a queue's worth is done;
    /// returns whether chains are left.
    fn drain(&mut self, queue: u16, features: QueueFeatures) -> Result<bool, QueueError> {
        let qi = usize::from(queue);
        let mut budget = self.queues[qi].size;
        loop {
            let q = &mut self.queues[qi];
            if budget == 0 {
                return q.has_available(&self.memory);
            }
            if !self.device.can_take(queue) {
                // Leave the chains available; remember to come back for them.
                self.blocked[qi] = q.has_available(&self.memory)?;
                return Ok(false);
            }
            let Some(chain) = q.pop(&self.memory, features)? else {
                if features.event_idx {
                    // §2.7.10: ask for a notification at the next buffer, then look
                    // again: the driver may have added one after our last look but
                    // before it could see the new avail_event.
                    q.set_avail_event(&mut self.memory)?;
                    fence(Ordering::SeqCst);
                    if q.has_available(&self.memory)? {
                        continue;
                    }
                }
                return Ok(false);
            };
            budget -= 1;
            let len = self.device.process(queue, &chain, &mut self.memory);
            if !self.device.holds_chains(queue) {
                self.queues[qi].add_used(&mut self.memory, chain.head, len)?;
            }
        }
    }

    // ----------------------------------------------------- common configuration

    fn common_bytes(&self) -> [u8; common::SIZE] {
        let mut c = [0u8; common::SIZE];
        let mut put = |at: u64, bytes: &[u8]| {
            let at = at as usize;
            c[at..at + bytes.len()].copy_from_slice(bytes);
        };
        let offered = self.offered_features();
        let word = |f: u64, sel: u32| match sel {
            0 => f as u32,
            1 => (f >> 32) as u32,
            _ => 0,
        };
        put(
            common::DEVICE_FEATURE_SELECT,
            &self.device_feature_select.to_le_bytes(),
        );
        put(
            common::DEVICE_FEATURE,
            &word(offered, self.device_feature_select).to_le_bytes(),
        );
        put(
            common::DRIVER_FEATURE_SELECT,
            &self.driver_feature_select.to_le_bytes(),
        );
        put(
            common::DRIVER_FEATURE,
            &word(self.driver_features, self.driver_feature_select).to_le_bytes(),
        );
        put(
            common::CONFIG_MSIX_VECTOR,
            &self.config_vector.to_le_bytes(),
        );
        put(
            common::NUM_QUEUES,
            &(self.queues.len() as u16).to_le_bytes(),
        );
        put(common::DEVICE_STATUS, &[self.status]);
        put(common::CONFIG_GENERATION, &[self.config_generation]);
        put(common::QUEUE_SELECT, &self.queue_select.to_le_bytes());
        let qi = usize::from(self.queue_select);
        // §4.1.4.3.1: an unavailable queue shows size 0 (and nothing else).
        if let Some(q) = self.queues.get(qi) {
            put(common::QUEUE_SIZE, &q.size.to_le_bytes());
            put(
                common::QUEUE_MSIX_VECTOR,
                &self.queue_vectors[qi].to_le_bytes(),
            );
            put(common::QUEUE_ENABLE, &u16::from(q.ready).to_le_bytes());
            put(common::QUEUE_NOTIFY_OFF, &self.queue_select.to_le_bytes());
            put(common::QUEUE_DESC, &q.desc.to_le_bytes());
            put(common::QUEUE_DRIVER, &q.driver.to_le_bytes());
            put(common::QUEUE_DEVICE, &q.device.to_le_bytes());
        }
        c
    }

    /// A vector the driver asks for: kept when the table has it, else NO_VECTOR
    /// (§4.1.5.1.2: the device reports a mapping it cannot make as NO_VECTOR).
    fn checked_vector(&self, v: u16) -> u16 {
        if usize::from(v) < self.msix_table.len() {
            v
        } else {
            NO_VECTOR
        }
    }

    fn write_common(&mut self, offset: u64, size: u8, value: u64, e: &mut PciEffects) {
        let qi = usize::from(self.queue_select);
        let enabled = self.queues.get(qi).map(|q| q.ready);
        // 64-bit queue addresses may be written whole or as two 32-bit halves.
        let set64 = |old: u64, field: u64| -> Option<u64> {
            match (offset - field, size) {
                (0, 8) => Some(value),
                (0, 4) => Some(old & !0xFFFF_FFFF | value & 0xFFFF_FFFF),
                (4, 4) => Some(old & 0xFFFF_FFFF | value << 32),
                _ => None,
            }
        };
        match (offset, size) {
            (common::DEVICE_FEATURE_SELECT, 4) => self.device_feature_select = value as u32,
            (common::DRIVER_FEATURE_SELECT, 4) => self.driver_feature_select = value as u32,
            (common::DRIVER_FEATURE, 4) => {
                // §3.1.1: features are accepted before FEATURES_OK; later writes are
                // ignored (the driver MUST NOT make them).
                if self.status & status::FEATURES_OK == 0 {
                    let shift = match self.driver_feature_select {
                        0 => 0,
                        1 => 32,
                        _ => return,
                    };
                    let mask = 0xFFFF_FFFFu64 << shift;
                    self.driver_features = self.driver_features & !mask | (value << shift) & mask;
                }
            }
            (common::CONFIG_MSIX_VECTOR, 2) => {
                self.config_vector = self.checked_vector(value as u16)
            }
            (common::DEVICE_STATUS, 1) => self.write_status(value as u8),
            (common::QUEUE_SELECT, 2) => self.queue_select = value as u16,
            (common::QUEUE_MSIX_VECTOR, 2) if enabled.is_some() => {
                self.queue_vectors[qi] = self.checked_vector(value as u16)
            }
            (common::QUEUE_ENABLE, 2) if enabled == Some(false) && value == 1 => {
                self.enable_queue(qi, e)
            }
            // Queue configuration is frozen once the queue is enabled.
            (common::QUEUE_SIZE, 2) if enabled == Some(false) => {
                self.queues[qi].size = value as u16
            }
            (common::QUEUE_DESC..=0x37, _) if enabled == Some(false) => {
                let q = &mut self.queues[qi];
                let field = offset & !7;
                let slot = match field {
                    common::QUEUE_DESC => &mut q.desc,
                    common::QUEUE_DRIVER => &mut q.driver,
                    _ => &mut q.device,
                };
                if let Some(v) = set64(*slot, field) {
                    *slot = v;
                }
            }
            // Read-only fields, queue_enable = 0 (§4.1.4.3.2: the driver MUST NOT),
            // odd widths: ignored.
            _ => {}
        }
    }

    /// The device_status rules (§2.1.2, §2.2, §3.1.1).
    fn write_status(&mut self, value: u8) {
        if value == 0 {
            // §4.1.4.3.1: writing 0 resets the device; it reads 0 once done.
            self.reset();
            return;
        }
        let old = self.status;
        // §2.1.2: the driver MUST NOT clear a status bit. Such a write is ignored.
        if old & !value & !status::DEVICE_NEEDS_RESET != 0 {
            return;
        }
        // DEVICE_NEEDS_RESET is the device's to set.
        let mut new = value & !status::DEVICE_NEEDS_RESET | old & status::DEVICE_NEEDS_RESET;
        // §3.1.1's order: ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK; a bit whose
        // predecessor is missing is not taken.
        if new & status::ACKNOWLEDGE == 0 {
            new &= !status::DRIVER;
        }
        if new & status::DRIVER == 0 {
            new &= !status::FEATURES_OK;
        }
        if new & status::FEATURES_OK != 0 && old & status::FEATURES_OK == 0 {
            // §2.2.1 / §3.1.1 step 5-6: the driver may not accept what was not
            // offered, and a modern device needs VERSION_1 (§6.1); otherwise
            // FEATURES_OK stays clear and the driver sees the features refused.
            let f = self.driver_features;
            if f & !self.offered_features() != 0
                || f & features::VERSION_1 == 0
                || !self.device.accepts_features(f)
            {
                new &= !status::FEATURES_OK;
            } else {
                self.device.set_features(f);
            }
        }
        if new & status::FEATURES_OK == 0 {
            new &= !status::DRIVER_OK;
        }
        self.status = new;
    }

    /// queue_enable = 1 (§4.1.4.3.2): only after FEATURES_OK (the features fix the
    /// ring layout) and with a valid configuration; a driver that enables a
    /// malformed queue (size not a power of two, parts misaligned or outside RAM)
    /// gets DEVICE_NEEDS_RESET.
    fn enable_queue(&mut self, qi: usize, e: &mut PciEffects) {
        if self.status & status::FEATURES_OK == 0 {
            return;
        }
        let q = &mut self.queues[qi];
        match q.validate(&self.memory) {
            Ok(()) => {
                q.ready = true;
                q.last_avail = 0;
                q.next_used = 0;
            }
            Err(_) => self.needs_reset(e),
        }
    }

    // -------------------------------------------------------------------- BAR

    /// A read of `size` bytes at `offset` in the BAR.
    pub fn bar_read(&mut self, offset: u64, size: u8) -> (u64, PciEffects) {
        let mut e = PciEffects::NONE;
        let v = self.bar_read_inner(offset, size, &mut e);
        (v, self.finish(e))
    }

    /// A write of the low `size` bytes of `value` at `offset` in the BAR.
    pub fn bar_write(&mut self, offset: u64, size: u8, value: u64) -> PciEffects {
        let mut e = PciEffects::NONE;
        self.bar_write_inner(offset, size, value, &mut e);
        self.finish(e)
    }

    fn bar_read_inner(&mut self, offset: u64, size: u8, _e: &mut PciEffects) -> u64 {
        if !matches!(size, 1 | 2 | 4 | 8) || offset >= BAR_SIZE {
            return 0;
        }
        let region = offset & !(REGION - 1);
        let off = offset - region;
        match region {
            COMMON_CFG => extract(&self.common_bytes(), off, size),
            ISR_CFG if off == 0 => {
                // §4.1.4.5: reading the ISR clears it (and so deasserts INTx).
                u64::from(core::mem::take(&mut self.isr))
            }
            DEVICE_CFG => {
                let mut b = [0u8; 8];
                let b = &mut b[..usize::from(size)];
                self.device.read_config(off, b);
                extract(b, 0, size)
            }
            MSIX_TABLE => {
                let bytes: Vec<u8> = self
                    .msix_table
                    .iter()
                    .flat_map(|e| e.iter().flat_map(|d| d.to_le_bytes()))
                    .collect();
                extract(&bytes, off, size)
            }
            MSIX_PBA => {
                let mut bytes = vec![0u8; self.msix_pending.len().div_ceil(64) * 8];
                for (v, &p) in self.msix_pending.iter().enumerate() {
                    bytes[v / 8] |= u8::from(p) << (v % 8);
                }
                extract(&bytes, off, size)
            }
            // Notification addresses read 0; so does every gap.
            _ => 0,
        }
    }

    fn bar_write_inner(&mut self, offset: u64, size: u8, value: u64, e: &mut PciEffects) {
        if !matches!(size, 1 | 2 | 4 | 8) || offset >= BAR_SIZE {
            return;
        }
        let value = value & devices::pci::all_ones64(size);
        let region = offset & !(REGION - 1);
        let off = offset - region;
        match region {
            COMMON_CFG => self.write_common(off, size, value, e),
            DEVICE_CFG => {
                let bytes = value.to_le_bytes();
                self.device.write_config(off, &bytes[..usize::from(size)]);
            }
            NOTIFY_CFG => {
                // The queue is the one whose address this is; the value (the queue
                // index, §4.1.5.2) adds nothing without NOTIFICATION_DATA.
                let q = off / u64::from(NOTIFY_OFF_MULTIPLIER);
                if let Ok(q) = u16::try_from(q) {
                    self.run_queue(q, e);
                }
            }
            MSIX_TABLE => {
                let entry = (off / 16) as usize;
                let dword = ((off % 16) / 4) as usize;
                if entry >= self.msix_table.len() || !off.is_multiple_of(u64::from(size)) {
                    return;
                }
                // PCI 3.0 §6.8.2: software uses aligned dword or qword accesses.
                match size {
                    4 => self.msix_table[entry][dword] = value as u32,
                    8 if dword.is_multiple_of(2) => {
                        self.msix_table[entry][dword] = value as u32;
                        self.msix_table[entry][dword + 1] = (value >> 32) as u32;
                    }
                    _ => return,
                }
                // Only the mask bit of vector control is implemented.
                self.msix_table[entry][3] &= MSIX_ENTRY_MASKED;
            }
            // The ISR and the pending bit array are read-only.
            _ => {}
        }
    }

    // ------------------------------------------------------ configuration space

    /// The configuration dword at `reg` (dword-aligned, below 256).
    pub fn config_read(&mut self, reg: u16) -> u32 {
        let r = usize::from(reg & 0xFC);
        let t = u32::from_le_bytes([
            self.template[r],
            self.template[r + 1],
            self.template[r + 2],
            self.template[r + 3],
        ]);
        match reg & 0xFC {
            reg::COMMAND => {
                let mut st = devices::pci::status::CAP_LIST;
                if !self.msix_enabled() && self.isr != 0 {
                    st |= devices::pci::status::INTERRUPT;
                }
                u32::from(st) << 16 | u32::from(self.command)
            }
            reg::CACHE_LINE => t | u32::from(self.latency) << 8 | u32::from(self.cache_line),
            reg::BAR0 => self.bar0,
            reg::INTERRUPT_LINE => t | u32::from(self.interrupt_line),
            r if r == CAP_PCI_CFG + 4 => t & !0xFF | u32::from(self.cfg_bar),
            r if r == CAP_PCI_CFG + 8 => self.cfg_offset,
            r if r == CAP_PCI_CFG + 12 => self.cfg_length,
            r if r == CAP_PCI_CFG + 16 => {
                let mut e = PciEffects::NONE;
                // A read through the window has the BAR read's side effects (an ISR
                // read clears it); the INTx change it causes is reported by the
                // next access or poll (`has_work`).
                match self.cfg_window() {
                    Some((offset, len)) => self.bar_read_inner(offset, len, &mut e) as u32,
                    None => 0,
                }
            }
            r if r == CAP_MSIX => t | u32::from(self.msix_control) << 16,
            _ => t,
        }
    }

    /// The BAR access the PCI configuration access capability describes, when it is
    /// one the device performs (§4.1.4.9.1: BAR 0, length 1, 2 or 4, offset aligned
    /// to the length and inside the BAR).
    fn cfg_window(&self) -> Option<(u64, u8)> {
        let len = self.cfg_length;
        let ok = self.cfg_bar == BAR_INDEX
            && matches!(len, 1 | 2 | 4)
            && self.cfg_offset.is_multiple_of(len)
            && u64::from(self.cfg_offset) + u64::from(len) <= BAR_SIZE;
        ok.then_some((self.cfg_offset.into(), len as u8))
    }

    /// A configuration write of the bytes of `value` that `mask` enables.
    pub fn config_write(&mut self, reg: u16, value: u32, mask: u32) -> PciEffects {
        let mut e = PciEffects::NONE;
        match reg & 0xFC {
            reg::COMMAND => {
                let writable = command::MEMORY
                    | command::BUS_MASTER
                    | command::PARITY
                    | command::SERR
                    | command::INTX_DISABLE;
                let m = mask & u32::from(writable);
                self.command = merge(self.command.into(), value, m) as u16;
                // The status half has no write-one-to-clear bits set here.
            }
            reg::CACHE_LINE => {
                let v = merge(
                    u32::from(self.latency) << 8 | u32::from(self.cache_line),
                    value,
                    mask & 0xFFFF,
                );
                self.cache_line = v as u8;
                self.latency = (v >> 8) as u8;
            }
            reg::BAR0 => {
                // Sizing (PCI 3.0 §6.2.5.1): the low bits of the size read back 0;
                // type bits 0 say a 32-bit, non-prefetchable memory BAR.
                self.bar0 = merge(self.bar0, value, mask) & !(BAR_SIZE as u32 - 1);
            }
            reg::INTERRUPT_LINE => {
                self.interrupt_line = merge(self.interrupt_line.into(), value, mask & 0xFF) as u8
            }
            r if r == CAP_PCI_CFG + 4 => {
                self.cfg_bar = merge(self.cfg_bar.into(), value, mask & 0xFF) as u8
            }
            r if r == CAP_PCI_CFG + 8 => self.cfg_offset = merge(self.cfg_offset, value, mask),
            r if r == CAP_PCI_CFG + 12 => self.cfg_length = merge(self.cfg_length, value, mask),
            r if r == CAP_PCI_CFG + 16 => {
                if let Some((offset, len)) = self.cfg_window() {
                    self.bar_write_inner(offset, len, value.into(), &mut e);
                }
            }
            r if r == CAP_MSIX => {
                // Message control, the upper half: enable and function mask.
                let m = (mask >> 16) as u16 & (MSIX_ENABLE | MSIX_MASK_ALL);
                self.msix_control = self.msix_control & !m | (value >> 16) as u16 & m;
            }
            _ => {}
        }
        self.finish(e)
    }

    /// Where the BAR is decoded now (memory decoding on).
    pub fn bar(&self) -> Option<Bar> {
        (self.command & command::MEMORY != 0).then_some(Bar {
            address: self.bar0.into(),
            size: BAR_SIZE,
        })
    }

    // --------------------------------------------------------------- snapshots

    /// The state of the function, the transport, the queues and the device type in
    /// a versioned byte format (see [`crate::state`]). The guest RAM and the disk are
    /// not part of it.
    pub fn state(&self) -> Vec<u8> {
        let mut w = Writer::new(&STATE_MAGIC, STATE_VERSION);
        w.u16(self.device.device_type());
        w.u16(self.queues.len() as u16);
        w.u16(self.msix_table.len() as u16);
        w.u16(self.command);
        w.u32(self.bar0);
        w.u8(self.cache_line);
        w.u8(self.latency);
        w.u8(self.interrupt_line);
        w.u8(self.cfg_bar);
        w.u32(self.cfg_offset);
        w.u32(self.cfg_length);
        w.u16(self.msix_control);
        for (entry, &pending) in self.msix_table.iter().zip(&self.msix_pending) {
            for &d in entry {
                w.u32(d);
            }
            w.u8(pending.into());
        }
        w.u32(self.device_feature_select);
        w.u32(self.driver_feature_select);
        w.u64(self.driver_features);
        w.u8(self.status);
        w.u8(self.config_generation);
        w.u16(self.queue_select);
        w.u16(self.config_vector);
        w.u8(self.isr);
        w.u8(self.intx.into());
        for (i, q) in self.queues.iter().enumerate() {
            w.u16(q.size);
            w.u8(q.ready.into());
            w.u64(q.desc);
            w.u64(q.driver);
            w.u64(q.device);
            w.u16(q.last_avail);
            w.u16(q.next_used);
            w.u16(self.queue_vectors[i]);
            w.u8(self.queue_work[i].into());
        }
        w.bytes(&self.device.state());
        w.finish()
    }

    /// Takes back what [`Self::state`] returned, for a device of the same type and
    /// shape. Nothing changes unless all of `data` is accepted.
    pub fn restore(&mut self, data: &[u8]) -> Result<(), StateError> {
        let mut r = Reader::new(data, &STATE_MAGIC, STATE_VERSION)?;
        let device_type = r.u16()?;
        r.expect(
            "virtio device type",
            device_type.into(),
            self.device.device_type().into(),
        )?;
        let queues = r.u16()?;
        r.expect("virtqueue count", queues.into(), self.queues.len() as u64)?;
        let vectors = r.u16()?;
        r.expect(
            "MSI-X table size",
            vectors.into(),
            self.msix_table.len() as u64,
        )?;
        let command = r.u16()?;
        let bar0 = r.u32()?;
        let (cache_line, latency, interrupt_line, cfg_bar) = (r.u8()?, r.u8()?, r.u8()?, r.u8()?);
        let (cfg_offset, cfg_length) = (r.u32()?, r.u32()?);
        let msix_control = r.u16()?;
        let mut table = Vec::new();
        let mut pending = Vec::new();
        for _ in 0..self.msix_table.len() {
            table.push([r.u32()?, r.u32()?, r.u32()?, r.u32()?]);
            pending.push(r.bool()?);
        }
        let (dfs, drfs, driver_features) = (r.u32()?, r.u32()?, r.u64()?);
        let (status, generation) = (r.u8()?, r.u8()?);
        let (queue_select, config_vector) = (r.u16()?, r.u16()?);
        let (isr, intx) = (r.u8()?, r.bool()?);
        let mut queues = Vec::new();
        let mut vectors = Vec::new();
        let mut work = Vec::new();
        for q in &self.queues {
            let mut n = SplitQueue::new(q.max_size);
            n.size = r.u16()?;
            n.ready = r.bool()?;
            n.desc = r.u64()?;
            n.driver = r.u64()?;
            n.device = r.u64()?;
            n.last_avail = r.u16()?;
            n.next_used = r.u16()?;
            // An enabled queue was validated when it was enabled; a snapshot that
            // says otherwise is not one this device wrote.
            r.check(
                !n.ready || n.validate(&self.memory).is_ok(),
                "enabled virtqueue (its rings are not in guest RAM)",
            )?;
            queues.push(n);
            vectors.push(r.u16()?);
            work.push(r.bool()?);
        }
        let device_state = r.bytes()?;
        r.end()?;
        // The device type's part last: it is the only one that changes anything.
        r.check(
            self.device.restore(device_state),
            "device-type state (the virtio-blk, -net or -balloon part)",
        )?;
        self.command = command;
        self.bar0 = bar0 & !(BAR_SIZE as u32 - 1);
        self.cache_line = cache_line;
        self.latency = latency;
        self.interrupt_line = interrupt_line;
        self.cfg_bar = cfg_bar;
        self.cfg_offset = cfg_offset;
        self.cfg_length = cfg_length;
        self.msix_control = msix_control & (MSIX_ENABLE | MSIX_MASK_ALL);
        self.msix_table = table;
        self.msix_pending = pending;
        self.device_feature_select = dfs;
        self.driver_feature_select = drfs;
        self.driver_features = driver_features;
        self.status = status;
        self.config_generation = generation;
        self.queue_select = queue_select;
        self.config_vector = config_vector;
        self.isr = isr;
        self.intx = intx;
        self.queues = queues;
        self.queue_vectors = vectors;
        self.queue_work = work;
        self.blocked = vec![true; self.queues.len()];
        Ok(())
    }
}

impl<D: VirtioDevice + 'static, M: GuestMemory + Send + 'static> PciFunction for VirtioPci<D, M> {
    fn name(&self) -> &'static str {
        "virtio-pci"
    }
    fn config_read(&mut self, reg: u16) -> u32 {
        VirtioPci::config_read(self, reg)
    }
    fn config_write(&mut self, reg: u16, value: u32, mask: u32) -> PciEffects {
        VirtioPci::config_write(self, reg, value, mask)
    }
    fn bar(&self, index: u8) -> Option<Bar> {
        if index == BAR_INDEX {
            VirtioPci::bar(self)
        } else {
            None
        }
    }
    fn bar_read(&mut self, index: u8, offset: u64, size: u8) -> (u64, PciEffects) {
        if index == BAR_INDEX {
            VirtioPci::bar_read(self, offset, size)
        } else {
            (devices::pci::all_ones64(size), PciEffects::NONE)
        }
    }
    fn bar_write(&mut self, index: u8, offset: u64, size: u8, value: u64) -> PciEffects {
        if index == BAR_INDEX {
            VirtioPci::bar_write(self, offset, size, value)
        } else {
            PciEffects::NONE
        }
    }
    fn has_work(&self) -> bool {
        self.queue_work.iter().any(|&w| w)
            || (0..self.queues.len()).any(|q| self.blocked[q] && self.device.can_take(q as u16))
            || (0..self.queues.len()).any(|q| self.usable(q) && self.device.has_returned(q as u16))
            || (0..self.msix_pending.len()).any(|v| self.deliverable(v))
            || self.intx_level() != self.intx
    }
    fn poll(&mut self) -> PciEffects {
        let mut e = PciEffects::NONE;
        for q in 0..self.queues.len() {
            if self.queue_work[q] || self.blocked[q] && self.device.can_take(q as u16) {
                self.run_queue(q as u16, &mut e);
            }
            self.return_queue(q as u16, &mut e);
        }
        self.finish(e)
    }
    fn snapshot(&self) -> Result<Vec<u8>, StateError> {
        Ok(VirtioPci::state(self))
    }
    fn restore_snapshot(&mut self, data: &[u8]) -> Result<(), StateError> {
        VirtioPci::restore(self, data)
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::blk::{self, request, BlockBackend, BlockConfig, RamDisk};
    use crate::device::status as st;
    use crate::memory::VecMemory;
    use crate::queue::desc_flags::{INDIRECT, NEXT, WRITE};
    use crate::queue::tests::{desc, Driver, AVAIL, DESC, USED};
    use crate::Block;
    use alloc::boxed::Box;
    use devices::{BarAllocator, BusDevice, HostBridge, IrqLine, PciAddress, PciConfig};

    type Dev = VirtioPci<Block<RamDisk>, VecMemory>;

    const HDR: u64 = 0x8000;
    const DATA: u64 = 0x9000;
    const STATUS: u64 = 0xA000;
    const SECTORS: usize = 64;

    fn dev_with(config: BlockConfig) -> Dev {
        let mut disk = RamDisk::zeroed(SECTORS);
        disk.write(5, &[0x5A; 512]).unwrap();
        VirtioPci::new(Block::new(disk, config), VecMemory::new(0x10000))
    }

    fn dev() -> Dev {
        dev_with(BlockConfig::new("hv-serial-0123456789abc"))
    }

    // The driver's side of the transport, for any device type (the device types'
    // own tests use these too).

    pub(crate) fn rd<D: VirtioDevice, M: GuestMemory>(
        d: &mut VirtioPci<D, M>,
        offset: u64,
        size: u8,
    ) -> u64 {
        d.bar_read(offset, size).0
    }

    pub(crate) fn wr<D: VirtioDevice, M: GuestMemory>(
        d: &mut VirtioPci<D, M>,
        offset: u64,
        size: u8,
        value: u64,
    ) -> PciEffects {
        d.bar_write(offset, size, value)
    }

    pub(crate) fn set_status<D: VirtioDevice, M: GuestMemory>(
        d: &mut VirtioPci<D, M>,
        s: u8,
    ) -> u8 {
        wr(d, common::DEVICE_STATUS, 1, s.into());
        rd(d, common::DEVICE_STATUS, 1) as u8
    }

    fn write_features<D: VirtioDevice, M: GuestMemory>(d: &mut VirtioPci<D, M>, f: u64) {
        wr(d, common::DRIVER_FEATURE_SELECT, 4, 0);
        wr(d, common::DRIVER_FEATURE, 4, f & 0xFFFF_FFFF);
        wr(d, common::DRIVER_FEATURE_SELECT, 4, 1);
        wr(d, common::DRIVER_FEATURE, 4, f >> 32);
    }

    pub(crate) fn offered<D: VirtioDevice, M: GuestMemory>(d: &mut VirtioPci<D, M>) -> u64 {
        wr(d, common::DEVICE_FEATURE_SELECT, 4, 0);
        let lo = rd(d, common::DEVICE_FEATURE, 4);
        wr(d, common::DEVICE_FEATURE_SELECT, 4, 1);
        lo | rd(d, common::DEVICE_FEATURE, 4) << 32
    }

    /// §3.1.1 steps 1-6 with the features `f`; returns the status read back.
    pub(crate) fn negotiate<D: VirtioDevice, M: GuestMemory>(
        d: &mut VirtioPci<D, M>,
        f: u64,
    ) -> u8 {
        set_status(d, st::ACKNOWLEDGE);
        set_status(d, st::ACKNOWLEDGE | st::DRIVER);
        write_features(d, f);
        set_status(d, st::ACKNOWLEDGE | st::DRIVER | st::FEATURES_OK)
    }

    /// Sets up queue `index` of `size` entries with its (descriptor table,
    /// available ring, used ring) at `q`, and enables it.
    pub(crate) fn setup_queue_at<D: VirtioDevice, M: GuestMemory>(
        d: &mut VirtioPci<D, M>,
        index: u16,
        q: (u64, u64, u64),
        size: u16,
    ) {
        wr(d, common::QUEUE_SELECT, 2, index.into());
        wr(d, common::QUEUE_SIZE, 2, size.into());
        wr(d, common::QUEUE_DESC, 8, q.0);
        wr(d, common::QUEUE_DRIVER, 8, q.1);
        wr(d, common::QUEUE_DEVICE, 8, q.2);
        wr(d, common::QUEUE_ENABLE, 2, 1);
    }

    /// The used ring's index of a queue whose used ring is `q.2`.
    pub(crate) fn used_idx_at<D: VirtioDevice>(
        d: &VirtioPci<D, VecMemory>,
        q: (u64, u64, u64),
    ) -> u16 {
        d.memory().read_u16(q.2 + 2).unwrap()
    }

    /// Used element `n` of a queue of `size` entries: (head, len).
    pub(crate) fn used_at<D: VirtioDevice>(
        d: &VirtioPci<D, VecMemory>,
        q: (u64, u64, u64),
        size: u16,
        n: u16,
    ) -> (u32, u32) {
        let at = q.2 + 4 + 8 * u64::from(n % size);
        let m = d.memory();
        (m.read_u32(at).unwrap(), m.read_u32(at + 4).unwrap())
    }

    fn setup_queue(d: &mut Dev, size: u16) -> PciEffects {
        wr(d, common::QUEUE_SELECT, 2, 0);
        wr(d, common::QUEUE_SIZE, 2, size.into());
        wr(d, common::QUEUE_DESC, 8, DESC);
        wr(d, common::QUEUE_DRIVER, 4, AVAIL);
        wr(d, common::QUEUE_DRIVER + 4, 4, 0);
        wr(d, common::QUEUE_DEVICE, 8, USED);
        wr(d, common::QUEUE_ENABLE, 2, 1)
    }

    /// The whole bring-up with INTx: memory and bus mastering on, features, queue,
    /// DRIVER_OK.
    fn ready(d: &mut Dev, f: u64) {
        d.config_write(reg::COMMAND, 0x6, 0xFFFF);
        assert_ne!(negotiate(d, f) & st::FEATURES_OK, 0);
        setup_queue(d, 8);
        set_status(
            d,
            st::ACKNOWLEDGE | st::DRIVER | st::FEATURES_OK | st::DRIVER_OK,
        );
    }

    fn base_features() -> u64 {
        features::VERSION_1 | blk::features::FLUSH | blk::features::BLK_SIZE
    }

    /// Puts a request (header, `data_len` bytes at DATA, status) on descriptors 0-2
    /// and makes it available.
    fn request(d: &mut Dev, drv: &mut Driver, kind: u32, sector: u64, data_len: u32) {
        let m = d.memory_mut();
        m.write_u32(HDR, kind).unwrap();
        m.write_u32(HDR + 4, 0).unwrap();
        m.write_u64(HDR + 8, sector).unwrap();
        m.write(STATUS, &[0xEE]).unwrap();
        let data_flags = if kind == request::OUT {
            NEXT
        } else {
            NEXT | WRITE
        };
        desc(m, DESC, 0, HDR, 16, NEXT, 1);
        desc(m, DESC, 1, DATA, data_len, data_flags, 2);
        desc(m, DESC, 2, STATUS, 1, WRITE, 0);
        drv.publish(m, 0);
    }

    fn used(d: &Dev, n: u16) -> (u32, u32) {
        let m = d.memory();
        let at = USED + 4 + 8 * u64::from(n % 8);
        (m.read_u32(at).unwrap(), m.read_u32(at + 4).unwrap())
    }

    fn status_byte(d: &Dev) -> u8 {
        d.memory().as_slice()[STATUS as usize]
    }

    /// Walks the capability list; returns (offset, id, cfg_type) triples.
    fn caps(d: &mut Dev) -> Vec<(u16, u8, u8)> {
        let mut out = Vec::new();
        let mut at = (d.config_read(reg::CAPABILITIES) & 0xFF) as u16;
        while at != 0 && out.len() < 16 {
            let dw = d.config_read(at);
            out.push((at, dw as u8, (dw >> 24) as u8));
            at = (dw >> 8 & 0xFF) as u16;
        }
        out
    }

    #[test]
    fn configuration_space_identifies_a_modern_virtio_block_device() {
        let mut d = dev();
        assert_eq!(d.config_read(0x00), 0x1042_1AF4);
        assert_eq!(
            d.config_read(0x08),
            0x0100_0001,
            "class 01/00/00, revision 1"
        );
        assert_eq!(d.config_read(0x0C) >> 16 & 0xFF, 0, "header type 0");
        assert_eq!(d.config_read(0x2C), 0x1100_1AF4);
        assert_eq!(d.config_read(0x04) >> 16 & 0x10, 0x10, "capability list");
        assert_eq!(d.config_read(0x3C) >> 8 & 0xFF, 1, "INTA#");
        assert_eq!(d.config_read(0x30), 0, "no expansion ROM");
        assert_eq!(
            caps(&mut d),
            vec![
                (CAP_COMMON, 9, cfg_type::COMMON),
                (CAP_NOTIFY, 9, cfg_type::NOTIFY),
                (CAP_ISR, 9, cfg_type::ISR),
                (CAP_DEVICE, 9, cfg_type::DEVICE),
                (CAP_PCI_CFG, 9, cfg_type::PCI_CFG),
                (CAP_MSIX, 0x11, 0), // the MSI-X capability ends the list
            ]
        );
        // The notify capability: BAR 0, offset, length, multiplier.
        assert_eq!(d.config_read(CAP_NOTIFY + 4) & 0xFF, 0);
        assert_eq!(u64::from(d.config_read(CAP_NOTIFY + 8)), NOTIFY_CFG);
        assert_eq!(d.config_read(CAP_NOTIFY + 16), NOTIFY_OFF_MULTIPLIER);
        assert_eq!(u64::from(d.config_read(CAP_DEVICE + 8)), DEVICE_CFG);
        // MSI-X: 2 vectors (queue + config), table and PBA in BAR 0.
        assert_eq!(d.config_read(CAP_MSIX) >> 16, 1);
        assert_eq!(u64::from(d.config_read(CAP_MSIX + 4)), MSIX_TABLE);
        assert_eq!(u64::from(d.config_read(CAP_MSIX + 8)), MSIX_PBA);
        // Read-only registers ignore writes.
        d.config_write(0x00, 0, u32::MAX);
        d.config_write(0x08, 0, u32::MAX);
        assert_eq!(d.config_read(0x00), 0x1042_1AF4);
        assert_eq!(d.config_read(0x08), 0x0100_0001);
    }

    #[test]
    fn bar_sizing_and_memory_decoding() {
        let mut d = dev();
        d.config_write(reg::BAR0, u32::MAX, u32::MAX);
        assert_eq!(d.config_read(reg::BAR0), !(BAR_SIZE as u32 - 1));
        for b in 1..6u16 {
            d.config_write(reg::BAR0 + 4 * b, u32::MAX, u32::MAX);
            assert_eq!(d.config_read(reg::BAR0 + 4 * b), 0, "BAR {b} unimplemented");
        }
        d.config_write(reg::BAR0, 0xE000_1234, u32::MAX);
        assert_eq!(d.config_read(reg::BAR0), 0xE000_0000);
        assert_eq!(d.bar(), None, "memory decoding is off");
        d.config_write(reg::COMMAND, 0xFFFF, 0xFFFF);
        assert_eq!(
            d.config_read(reg::COMMAND) & 0xFFFF,
            0x0546,
            "only the writable bits"
        );
        assert_eq!(
            d.bar(),
            Some(Bar {
                address: 0xE000_0000,
                size: BAR_SIZE
            })
        );
        // A byte write to the interrupt line.
        d.config_write(reg::INTERRUPT_LINE, 0x0B, 0xFF);
        assert_eq!(d.config_read(reg::INTERRUPT_LINE) & 0xFFFF, 0x010B);
    }

    #[test]
    fn feature_negotiation_follows_the_status_order() {
        let mut d = dev();
        let all = offered(&mut d);
        assert_eq!(
            all,
            features::VERSION_1
                | features::INDIRECT_DESC
                | features::EVENT_IDX
                | blk::features::SEG_MAX
                | blk::features::BLK_SIZE
                | blk::features::FLUSH
        );
        wr(&mut d, common::DEVICE_FEATURE_SELECT, 4, 2);
        assert_eq!(rd(&mut d, common::DEVICE_FEATURE, 4), 0);
        // DRIVER without ACKNOWLEDGE, FEATURES_OK without DRIVER: not taken.
        assert_eq!(set_status(&mut d, st::DRIVER), 0);
        assert_eq!(set_status(&mut d, st::ACKNOWLEDGE | st::FEATURES_OK), 1);
        // DRIVER_OK before FEATURES_OK: not taken.
        set_status(&mut d, st::ACKNOWLEDGE | st::DRIVER);
        assert_eq!(set_status(&mut d, 0x7), 0x3);
        // FEATURES_OK refused: a bit not offered (RO on a writable disk).
        write_features(&mut d, base_features() | blk::features::RO);
        assert_eq!(set_status(&mut d, 0xB), 0x3);
        // ... or no VERSION_1 (a legacy driver).
        write_features(&mut d, blk::features::FLUSH);
        assert_eq!(set_status(&mut d, 0xB), 0x3);
        assert_eq!(d.negotiated_features(), 0);
        // Accepted: a subset of what was offered, with VERSION_1.
        write_features(&mut d, base_features());
        assert_eq!(set_status(&mut d, 0xB), 0xB);
        assert_eq!(d.negotiated_features(), base_features());
        // Features are frozen after FEATURES_OK.
        write_features(&mut d, all);
        assert_eq!(d.negotiated_features(), base_features());
        wr(&mut d, common::DRIVER_FEATURE_SELECT, 4, 0);
        assert_eq!(
            rd(&mut d, common::DRIVER_FEATURE, 4),
            base_features() & 0xFFFF_FFFF
        );
        // Clearing a bit is ignored; FAILED may be added.
        assert_eq!(set_status(&mut d, 0x3), 0xB);
        assert_eq!(set_status(&mut d, 0x8B), 0x8B);
        // Writing 0 resets: status 0, features forgotten.
        assert_eq!(set_status(&mut d, 0), 0);
        assert_eq!(d.negotiated_features(), 0);
        wr(&mut d, common::DRIVER_FEATURE_SELECT, 4, 0);
        assert_eq!(rd(&mut d, common::DRIVER_FEATURE, 4), 0);
    }

    #[test]
    fn read_only_disks_offer_ro_and_accept_it() {
        let mut d = dev_with(BlockConfig::new("ro").read_only());
        assert_ne!(offered(&mut d) & blk::features::RO, 0);
        assert_ne!(
            negotiate(&mut d, base_features() | blk::features::RO) & st::FEATURES_OK,
            0
        );
    }

    #[test]
    fn queue_registers_and_enable_rules() {
        let mut d = dev();
        assert_eq!(rd(&mut d, common::NUM_QUEUES, 2), 1);
        assert_eq!(rd(&mut d, common::QUEUE_SIZE, 2), 256, "the maximum");
        assert_eq!(rd(&mut d, common::QUEUE_NOTIFY_OFF, 2), 0);
        assert_eq!(
            rd(&mut d, common::QUEUE_MSIX_VECTOR, 2),
            u64::from(NO_VECTOR)
        );
        // An absent queue reads size 0 and takes nothing.
        wr(&mut d, common::QUEUE_SELECT, 2, 1);
        assert_eq!(rd(&mut d, common::QUEUE_SIZE, 2), 0);
        wr(&mut d, common::QUEUE_SIZE, 2, 8);
        wr(&mut d, common::QUEUE_ENABLE, 2, 1);
        assert_eq!(rd(&mut d, common::QUEUE_ENABLE, 2), 0);
        // Enabling before FEATURES_OK is ignored.
        setup_queue(&mut d, 8);
        assert_eq!(rd(&mut d, common::QUEUE_ENABLE, 2), 0);
        assert_eq!(rd(&mut d, common::QUEUE_DESC, 8), DESC);
        assert_eq!(rd(&mut d, common::QUEUE_DRIVER + 4, 4), 0);
        assert_eq!(rd(&mut d, common::QUEUE_DEVICE, 4), USED);
        negotiate(&mut d, base_features());
        setup_queue(&mut d, 8);
        assert_eq!(rd(&mut d, common::QUEUE_ENABLE, 2), 1);
        // Frozen once enabled; queue_enable = 0 is not a way to disable.
        wr(&mut d, common::QUEUE_SIZE, 2, 16);
        wr(&mut d, common::QUEUE_DESC, 8, 0x4000);
        wr(&mut d, common::QUEUE_ENABLE, 2, 0);
        assert_eq!(rd(&mut d, common::QUEUE_SIZE, 2), 8);
        assert_eq!(rd(&mut d, common::QUEUE_DESC, 8), DESC);
        assert_eq!(rd(&mut d, common::QUEUE_ENABLE, 2), 1);
        // A reset disables it and brings the maximum back.
        set_status(&mut d, 0);
        assert_eq!(rd(&mut d, common::QUEUE_ENABLE, 2), 0);
        assert_eq!(rd(&mut d, common::QUEUE_SIZE, 2), 256);
    }

    #[test]
    fn queue_size_3_or_a_queue_outside_ram_needs_reset() {
        for (size, desc_addr) in [(3u16, DESC), (8, 0xFFF0), (8, DESC + 4)] {
            let mut d = dev();
            negotiate(&mut d, base_features());
            wr(&mut d, common::QUEUE_SIZE, 2, size.into());
            wr(&mut d, common::QUEUE_DESC, 8, desc_addr);
            wr(&mut d, common::QUEUE_DRIVER, 8, AVAIL);
            wr(&mut d, common::QUEUE_DEVICE, 8, USED);
            wr(&mut d, common::QUEUE_ENABLE, 2, 1);
            assert_eq!(rd(&mut d, common::QUEUE_ENABLE, 2), 0);
            assert_ne!(d.status() & st::DEVICE_NEEDS_RESET, 0);
            // The driver cannot clear it; a reset does.
            assert_eq!(set_status(&mut d, 0x4B) & st::DEVICE_NEEDS_RESET, 0x40);
            assert_eq!(set_status(&mut d, 0), 0);
        }
    }

    #[test]
    fn read_write_flush_get_id_round_trip_with_intx() {
        let mut d = dev();
        ready(&mut d, base_features());
        assert_eq!(d.status(), 0xF);
        let mut drv = Driver {
            size: 8,
            avail_idx: 0,
        };
        // Config space: capacity and blk_size.
        assert_eq!(rd(&mut d, DEVICE_CFG, 8), SECTORS as u64);
        assert_eq!(rd(&mut d, DEVICE_CFG + 20, 4), 512);

        // Read sector 5.
        request(&mut d, &mut drv, request::IN, 5, 512);
        let e = wr(&mut d, NOTIFY_CFG, 2, 0);
        assert_eq!(e.intx, Some(true));
        assert_eq!(status_byte(&d), blk::status::OK);
        assert_eq!(&d.memory().as_slice()[DATA as usize..][..512], &[0x5A; 512]);
        assert_eq!(used(&d, 0), (0, 513));
        assert_eq!(d.memory().read_u16(USED + 2).unwrap(), 1);
        assert_eq!(
            d.config_read(reg::COMMAND) >> 16 & 0x8,
            0x8,
            "interrupt status"
        );
        // Reading the ISR returns the queue bit, clears it and drops INTx.
        let (isr, e) = d.bar_read(ISR_CFG, 1);
        assert_eq!(isr, u64::from(isr::QUEUE));
        assert_eq!(e.intx, Some(false));
        assert_eq!(rd(&mut d, ISR_CFG, 1), 0);

        // Write sector 9, then read it back.
        d.memory_mut().write(DATA, &[0xC3; 512]).unwrap();
        request(&mut d, &mut drv, request::OUT, 9, 512);
        wr(&mut d, NOTIFY_CFG, 2, 0);
        assert_eq!(status_byte(&d), blk::status::OK);
        assert_eq!(used(&d, 1), (0, 1));
        assert_eq!(
            &d.device().backend().as_slice()[9 * 512..10 * 512],
            &[0xC3; 512]
        );

        // Flush.
        request(&mut d, &mut drv, request::FLUSH, 0, 0);
        wr(&mut d, NOTIFY_CFG, 2, 0);
        assert_eq!(status_byte(&d), blk::status::OK);
        assert_eq!(d.device().backend().flushes, 1);

        // Get ID: 20 bytes of the serial.
        request(&mut d, &mut drv, request::GET_ID, 0, 20);
        wr(&mut d, NOTIFY_CFG, 2, 0);
        assert_eq!(status_byte(&d), blk::status::OK);
        assert_eq!(
            &d.memory().as_slice()[DATA as usize..][..20],
            b"hv-serial-0123456789"
        );
        assert_eq!(used(&d, 3), (0, 21));

        // A request past the end of the disk fails with IOERR (§5.2.6).
        request(&mut d, &mut drv, request::IN, SECTORS as u64 - 1, 1024);
        wr(&mut d, NOTIFY_CFG, 2, 0);
        assert_eq!(status_byte(&d), blk::status::IOERR);
        assert_eq!(d.status(), 0xF, "a bad request is not a bad queue");

        // INTX_DISABLE keeps the line low while the ISR is set.
        d.config_write(reg::COMMAND, 0x406, 0xFFFF);
        request(&mut d, &mut drv, request::FLUSH, 0, 0);
        assert_eq!(wr(&mut d, NOTIFY_CFG, 2, 0).intx, None);
        let e = d.config_write(reg::COMMAND, 0x006, 0xFFFF);
        assert_eq!(e.intx, Some(true));
    }

    #[test]
    fn writes_to_a_read_only_disk_fail() {
        let mut d = dev_with(BlockConfig::new("ro").read_only());
        ready(&mut d, base_features() | blk::features::RO);
        let mut drv = Driver {
            size: 8,
            avail_idx: 0,
        };
        d.memory_mut().write(DATA, &[0xC3; 512]).unwrap();
        request(&mut d, &mut drv, request::OUT, 0, 512);
        wr(&mut d, NOTIFY_CFG, 2, 0);
        assert_eq!(status_byte(&d), blk::status::IOERR);
        assert_eq!(&d.device().backend().as_slice()[..512], &[0; 512]);
    }

    #[test]
    fn no_interrupt_flag_and_event_idx() {
        let mut d = dev();
        ready(&mut d, base_features());
        let mut drv = Driver {
            size: 8,
            avail_idx: 0,
        };
        d.memory_mut()
            .write_u16(AVAIL, crate::queue::VIRTQ_AVAIL_F_NO_INTERRUPT)
            .unwrap();
        request(&mut d, &mut drv, request::FLUSH, 0, 0);
        assert_eq!(wr(&mut d, NOTIFY_CFG, 2, 0), PciEffects::NONE);
        assert_eq!(status_byte(&d), blk::status::OK, "processed all the same");

        let mut d = dev();
        ready(&mut d, base_features() | features::EVENT_IDX);
        let mut drv = Driver {
            size: 8,
            avail_idx: 0,
        };
        // used_event = 1: no interrupt for the first used buffer, one for the second.
        d.memory_mut().write_u16(AVAIL + 4 + 16, 1).unwrap();
        request(&mut d, &mut drv, request::FLUSH, 0, 0);
        assert_eq!(wr(&mut d, NOTIFY_CFG, 2, 0).intx, None);
        // avail_event tells the driver which index to notify at.
        assert_eq!(d.memory().read_u16(USED + 4 + 64).unwrap(), 1);
        request(&mut d, &mut drv, request::FLUSH, 0, 0);
        assert_eq!(wr(&mut d, NOTIFY_CFG, 2, 0).intx, Some(true));
    }

    #[test]
    fn hostile_queues_set_needs_reset_and_a_reset_recovers() {
        type Setup = fn(&mut Dev, &mut Driver);
        let cases: [(&str, Setup); 6] = [
            ("descriptor loop", |d, drv| {
                let m = d.memory_mut();
                desc(m, DESC, 0, HDR, 16, NEXT, 1);
                desc(m, DESC, 1, HDR, 16, NEXT, 0);
                drv.publish(m, 0);
            }),
            ("address past RAM", |d, drv| {
                let m = d.memory_mut();
                desc(m, DESC, 0, 0x1_0000_0000, 16, 0, 0);
                drv.publish(m, 0);
            }),
            ("length past u64", |d, drv| {
                let m = d.memory_mut();
                desc(m, DESC, 0, u64::MAX - 8, 16, 0, 0);
                drv.publish(m, 0);
            }),
            ("nested indirect", |d, drv| {
                let m = d.memory_mut();
                desc(m, DESC, 0, 0x6000, 32, INDIRECT, 0);
                desc(m, 0x6000, 0, 0x7000, 16, INDIRECT, 0);
                drv.publish(m, 0);
            }),
            ("avail index jump", |d, _| {
                d.memory_mut().write_u16(AVAIL + 2, 9).unwrap();
            }),
            ("head past the table", |d, drv| {
                drv.publish(d.memory_mut(), 8);
            }),
        ];
        for (name, setup) in cases {
            let mut d = dev();
            ready(&mut d, base_features() | features::INDIRECT_DESC);
            let mut drv = Driver {
                size: 8,
                avail_idx: 0,
            };
            setup(&mut d, &mut drv);
            let e = wr(&mut d, NOTIFY_CFG, 2, 0);
            assert_ne!(d.status() & st::DEVICE_NEEDS_RESET, 0, "{name}");
            // The configuration change interrupt (§2.1.2).
            assert_eq!(e.intx, Some(true), "{name}");
            assert_eq!(rd(&mut d, ISR_CFG, 1), u64::from(isr::CONFIG), "{name}");
            // Further notifications do nothing.
            assert_eq!(wr(&mut d, NOTIFY_CFG, 2, 0), PciEffects::NONE, "{name}");
            // The driver resets and starts over; the device works again.
            set_status(&mut d, 0);
            d.memory_mut().write(0, &[0; 0x8000]).unwrap();
            ready(&mut d, base_features());
            let mut drv = Driver {
                size: 8,
                avail_idx: 0,
            };
            request(&mut d, &mut drv, request::IN, 5, 512);
            wr(&mut d, NOTIFY_CFG, 2, 0);
            assert_eq!(status_byte(&d), blk::status::OK, "{name}");
            assert_eq!(d.status(), 0xF, "{name}");
        }
    }

    #[test]
    fn notifications_need_driver_ok_and_bus_mastering() {
        let mut d = dev();
        d.config_write(reg::COMMAND, 0x2, 0xFFFF);
        negotiate(&mut d, base_features());
        setup_queue(&mut d, 8);
        let mut drv = Driver {
            size: 8,
            avail_idx: 0,
        };
        request(&mut d, &mut drv, request::FLUSH, 0, 0);
        wr(&mut d, NOTIFY_CFG, 2, 0);
        assert_eq!(status_byte(&d), 0xEE, "no DRIVER_OK yet");
        set_status(&mut d, 0xF);
        wr(&mut d, NOTIFY_CFG, 2, 0);
        assert_eq!(status_byte(&d), 0xEE, "no bus mastering");
        d.config_write(reg::COMMAND, 0x6, 0xFFFF);
        wr(&mut d, NOTIFY_CFG + 4, 2, 1); // another queue's address: nothing
        assert_eq!(status_byte(&d), 0xEE);
        wr(&mut d, NOTIFY_CFG, 4, 0);
        assert_eq!(status_byte(&d), blk::status::OK);
    }

    fn msix_entry(d: &mut Dev, v: u64, address: u64, data: u32, masked: bool) {
        let at = MSIX_TABLE + 16 * v;
        wr(d, at, 8, address);
        wr(d, at + 8, 4, data.into());
        wr(d, at + 12, 4, masked.into());
    }

    #[test]
    fn msix_table_vectors_masking_and_pending_bits() {
        let mut d = dev();
        // Entries start masked.
        assert_eq!(rd(&mut d, MSIX_TABLE + 12, 4), 1);
        msix_entry(&mut d, 0, 0xFEE0_1000, 0x41, false);
        msix_entry(&mut d, 1, 0xFEE0_2000, 0x42, true);
        assert_eq!(rd(&mut d, MSIX_TABLE, 4), 0xFEE0_1000);
        assert_eq!(rd(&mut d, MSIX_TABLE + 4, 4), 0);
        assert_eq!(rd(&mut d, MSIX_TABLE + 24, 4), 0x42);
        assert_eq!(rd(&mut d, MSIX_TABLE + 16, 8), 0xFEE0_2000);
        // Reserved vector control bits read 0; out-of-table writes vanish.
        wr(&mut d, MSIX_TABLE + 12, 4, 0xFFFF_FFFE);
        assert_eq!(rd(&mut d, MSIX_TABLE + 12, 4), 0);
        wr(&mut d, MSIX_TABLE + 32, 4, 0x1234);
        assert_eq!(rd(&mut d, MSIX_TABLE + 32, 4), 0);
        // Enable MSI-X (message control, upper half of the capability's dword).
        let e = d.config_write(CAP_MSIX, MSIX_ENABLE as u32 * 0x1_0000, 0xFFFF_0000);
        assert_eq!(e, PciEffects::NONE);
        assert_eq!(d.config_read(CAP_MSIX) >> 16, 0x8001);

        ready(&mut d, base_features());
        // Vector numbers past the table read back as NO_VECTOR.
        wr(&mut d, common::CONFIG_MSIX_VECTOR, 2, 2);
        assert_eq!(
            rd(&mut d, common::CONFIG_MSIX_VECTOR, 2),
            u64::from(NO_VECTOR)
        );
        wr(&mut d, common::CONFIG_MSIX_VECTOR, 2, 1);
        wr(&mut d, common::QUEUE_MSIX_VECTOR, 2, 0);
        assert_eq!(rd(&mut d, common::QUEUE_MSIX_VECTOR, 2), 0);

        let mut drv = Driver {
            size: 8,
            avail_idx: 0,
        };
        request(&mut d, &mut drv, request::FLUSH, 0, 0);
        let e = wr(&mut d, NOTIFY_CFG, 2, 0);
        let msg = MsiMessage {
            address: 0xFEE0_1000,
            data: 0x41,
        };
        assert_eq!(e.msi, [Some(msg), None]);
        assert_eq!(e.intx, None, "no INTx with MSI-X");
        assert_eq!(rd(&mut d, ISR_CFG, 1), 0);

        // The function mask holds the message in the PBA until it is lifted.
        d.config_write(CAP_MSIX, 0xC000_0000, 0xFFFF_0000);
        request(&mut d, &mut drv, request::FLUSH, 0, 0);
        assert_eq!(wr(&mut d, NOTIFY_CFG, 2, 0), PciEffects::NONE);
        assert_eq!(rd(&mut d, MSIX_PBA, 8), 1);
        let e = d.config_write(CAP_MSIX, 0x8000_0000, 0xFFFF_0000);
        assert_eq!(e.msi[0], Some(msg));
        assert_eq!(rd(&mut d, MSIX_PBA, 4), 0);

        // A masked entry (vector 1, the config vector) pends until unmasked.
        d.memory_mut().write_u16(AVAIL + 2, 200).unwrap(); // hostile: needs reset
        assert_eq!(wr(&mut d, NOTIFY_CFG, 2, 0), PciEffects::NONE);
        assert_eq!(rd(&mut d, MSIX_PBA, 4), 2);
        let e = wr(&mut d, MSIX_TABLE + 16 + 12, 4, 0);
        assert_eq!(
            e.msi[0],
            Some(MsiMessage {
                address: 0xFEE0_2000,
                data: 0x42
            })
        );
        // Without bus mastering no message goes out either.
        d.config_write(reg::COMMAND, 0x2, 0xFFFF);
        set_status(&mut d, 0);
        ready(&mut d, base_features());
        d.config_write(reg::COMMAND, 0x2, 0xFFFF);
        wr(&mut d, common::QUEUE_MSIX_VECTOR, 2, 0);
        assert!(!PciFunction::has_work(&d));
    }

    #[test]
    fn pci_cfg_access_capability_reaches_the_bar() {
        let mut d = dev();
        // cap.bar = 0, cap.offset = device_feature (select 1), length 4.
        wr(&mut d, common::DEVICE_FEATURE_SELECT, 4, 1);
        d.config_write(CAP_PCI_CFG + 4, 0, 0xFF);
        d.config_write(CAP_PCI_CFG + 8, common::DEVICE_FEATURE as u32, u32::MAX);
        d.config_write(CAP_PCI_CFG + 12, 4, u32::MAX);
        assert_eq!(d.config_read(CAP_PCI_CFG + 16), 1, "VERSION_1 is bit 32");
        // A write through the window: device_status = ACKNOWLEDGE.
        d.config_write(CAP_PCI_CFG + 8, common::DEVICE_STATUS as u32, u32::MAX);
        d.config_write(CAP_PCI_CFG + 12, 1, u32::MAX);
        d.config_write(CAP_PCI_CFG + 16, 1, u32::MAX);
        assert_eq!(d.status(), st::ACKNOWLEDGE);
        // Misaligned, oversized or another BAR: ignored, reads 0.
        d.config_write(CAP_PCI_CFG + 8, 1, u32::MAX);
        d.config_write(CAP_PCI_CFG + 12, 4, u32::MAX);
        assert_eq!(d.config_read(CAP_PCI_CFG + 16), 0);
        d.config_write(CAP_PCI_CFG + 12, 3, u32::MAX);
        assert_eq!(d.config_read(CAP_PCI_CFG + 16), 0);
        d.config_write(CAP_PCI_CFG + 8, 0, u32::MAX);
        d.config_write(CAP_PCI_CFG + 12, 4, u32::MAX);
        d.config_write(CAP_PCI_CFG + 4, 2, 0xFF);
        assert_eq!(d.config_read(CAP_PCI_CFG + 16), 0);
        assert_eq!(d.config_read(CAP_PCI_CFG + 4) & 0xFF, 2);
    }

    #[test]
    fn owner_side_configuration_changes_notify_a_running_driver() {
        let mut d = dev();
        d.config_write(reg::COMMAND, 0x6, 0xFFFF);
        // Before DRIVER_OK: the generation moves, nothing is signalled.
        negotiate(&mut d, base_features());
        assert_eq!(d.config_changed(), PciEffects::NONE);
        assert_eq!(rd(&mut d, common::CONFIG_GENERATION, 1), 1);
        assert_eq!(rd(&mut d, ISR_CFG, 1), 0);
        set_status(&mut d, 0);
        ready(&mut d, base_features());
        // INTx: ISR bit 1 (§4.1.4.5), cleared by the driver's read.
        let e = d.config_changed();
        assert_eq!(e.intx, Some(true));
        assert_eq!(rd(&mut d, common::CONFIG_GENERATION, 1), 2);
        let (bits, e) = d.bar_read(ISR_CFG, 1);
        assert_eq!(bits, u64::from(isr::CONFIG));
        assert_eq!(e.intx, Some(false));
        // MSI-X: the configuration vector's message, none without a vector.
        d.config_write(CAP_MSIX, 0x8000_0000, 0xFFFF_0000);
        msix_entry(&mut d, 1, 0xFEE0_3000, 0x43, false);
        assert_eq!(d.config_changed(), PciEffects::NONE, "NO_VECTOR");
        wr(&mut d, common::CONFIG_MSIX_VECTOR, 2, 1);
        let e = d.config_changed();
        assert_eq!(
            e.msi,
            [
                Some(MsiMessage {
                    address: 0xFEE0_3000,
                    data: 0x43
                }),
                None
            ]
        );
        assert_eq!(rd(&mut d, ISR_CFG, 1), 0, "no ISR bit with MSI-X");
        // The generation (4 changes so far) wraps.
        for _ in 0..252 {
            d.config_changed();
        }
        assert_eq!(rd(&mut d, common::CONFIG_GENERATION, 1), 0);
    }

    #[test]
    fn an_isr_read_through_the_window_drops_intx_at_the_next_poll() {
        let mut d = dev();
        ready(&mut d, base_features());
        let mut drv = Driver {
            size: 8,
            avail_idx: 0,
        };
        request(&mut d, &mut drv, request::FLUSH, 0, 0);
        assert_eq!(wr(&mut d, NOTIFY_CFG, 2, 0).intx, Some(true));
        d.config_write(CAP_PCI_CFG + 8, ISR_CFG as u32, u32::MAX);
        d.config_write(CAP_PCI_CFG + 12, 1, u32::MAX);
        assert_eq!(d.config_read(CAP_PCI_CFG + 16), 1);
        assert!(PciFunction::has_work(&d));
        assert_eq!(PciFunction::poll(&mut d).intx, Some(false));
        assert!(!PciFunction::has_work(&d));
    }

    #[test]
    fn state_round_trip_and_refusals() {
        let mut d = dev();
        d.config_write(reg::BAR0, 0xE000_0000, u32::MAX);
        d.config_write(CAP_MSIX, 0x8000_0000, 0xFFFF_0000);
        msix_entry(&mut d, 0, 0xFEE0_0000, 0x30, false);
        ready(&mut d, base_features());
        wr(&mut d, common::QUEUE_MSIX_VECTOR, 2, 0);
        let mut drv = Driver {
            size: 8,
            avail_idx: 0,
        };
        request(&mut d, &mut drv, request::FLUSH, 0, 0);
        wr(&mut d, NOTIFY_CFG, 2, 0);
        let snap = d.state();
        assert_eq!(&snap[..8], b"hvvirtio");
        assert_eq!(
            u16::from_le_bytes([snap[8], snap[9]]),
            crate::state::STATE_VERSION
        );

        // A fresh device with the same RAM continues where the first one stopped.
        let mut e = VirtioPci::new(
            Block::new(d.device().backend().clone(), BlockConfig::new("x")),
            d.memory().clone(),
        );
        e.restore(&snap).unwrap();
        assert_eq!(e.state(), snap);
        assert_eq!(e.status(), 0xF);
        assert_eq!(e.negotiated_features(), base_features());
        assert_eq!(e.queue(0).unwrap().next_used, 1);
        request(&mut e, &mut drv, request::IN, 5, 512);
        let fx = wr(&mut e, NOTIFY_CFG, 2, 0);
        assert_eq!(fx.msi[0].map(|m| m.data), Some(0x30));
        assert_eq!(used(&e, 1), (0, 513));
        assert_eq!(
            e.device().backend().flushes,
            1,
            "FLUSH negotiated state came back"
        );

        // Refusals leave the device as it was.
        let before = e.state();
        let mut bad = snap.clone();
        bad[8] = 2;
        assert_eq!(
            e.restore(&bad),
            Err(StateError::Version {
                device: *b"hvvirtio",
                found: 2,
                supported: 1
            })
        );
        bad = snap.clone();
        bad[0] = b'X';
        assert_eq!(
            e.restore(&bad),
            Err(StateError::WrongDevice {
                expected: *b"hvvirtio"
            })
        );
        for cut in [0, 5, 10, snap.len() / 2, snap.len() - 1] {
            assert!(e.restore(&snap[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = snap.clone();
        long.push(0);
        assert_eq!(
            e.restore(&long),
            Err(StateError::TrailingBytes {
                device: *b"hvvirtio"
            })
        );
        bad = snap.clone();
        bad[10] = 3; // device type
        assert_eq!(
            e.restore(&bad),
            Err(StateError::Mismatch {
                device: *b"hvvirtio",
                what: "virtio device type",
                snapshot: 3,
                here: 2
            })
        );
        assert_eq!(e.state(), before);
    }

    #[test]
    fn through_the_pci_root_with_msix() {
        let mut pci = PciConfig::new();
        pci.add_function(PciAddress::new(0, 0, 0), Box::new(HostBridge::i440fx()))
            .unwrap();
        pci.add_function(PciAddress::new(0, 1, 0), Box::new(dev()))
            .unwrap();
        pci.assign_bars(&mut BarAllocator::new(0xE000_0000, 0xFEC0_0000))
            .unwrap();
        let cfg = |pci: &mut PciConfig, reg: u32| {
            pci.port_access(0, 4, true, 0x8000_0800 | reg);
            pci.port_access(4, 4, false, 0).0
        };
        assert_eq!(cfg(&mut pci, 0), 0x1042_1AF4);
        assert_eq!(cfg(&mut pci, 0x10), 0xE000_0000);
        assert_eq!(
            cfg(&mut pci, 0x3C) & 0xFF,
            11,
            "device 1 INTA# -> PIRQB -> IRQ 11"
        );
        let bar = 0xE000_0000u64;
        // Bus mastering, MSI-X on, vector 0 for the queue.
        pci.port_access(0, 4, true, 0x8000_0804);
        pci.port_access(4, 2, true, 0x6);
        pci.port_access(0, 4, true, 0x8000_0800 | u32::from(CAP_MSIX));
        pci.port_access(6, 2, true, 0x8000);
        pci.mmio_write(bar + MSIX_TABLE, 8, 0xFEE0_0000).unwrap();
        pci.mmio_write(bar + MSIX_TABLE + 8, 4, 0x51).unwrap();
        pci.mmio_write(bar + MSIX_TABLE + 12, 4, 0).unwrap();
        {
            let d: &mut Dev = pci
                .function_mut(PciAddress::new(0, 1, 0))
                .unwrap()
                .as_any_mut()
                .downcast_mut()
                .unwrap();
            negotiate(d, base_features());
            setup_queue(d, 8);
            wr(d, common::QUEUE_MSIX_VECTOR, 2, 0);
            set_status(d, 0xF);
            let mut drv = Driver {
                size: 8,
                avail_idx: 0,
            };
            request(d, &mut drv, request::IN, 5, 512);
        }
        let e = pci.mmio_write(bar + NOTIFY_CFG, 2, 0).unwrap();
        assert_eq!(
            e.msi[0],
            Some(MsiMessage {
                address: 0xFEE0_0000,
                data: 0x51
            })
        );
        assert_eq!(e.lines[0], None);
        // Reads through the platform interface: capacity.
        let a = devices::Access {
            addr: bar + DEVICE_CFG,
            offset: 0,
            size: 8,
            now_ns: 0,
        };
        assert_eq!(BusDevice::read(&mut pci, &a).0, SECTORS as u64);
        // With MSI-X off the same completion raises IRQ 11 instead.
        pci.port_access(0, 4, true, 0x8000_0800 | u32::from(CAP_MSIX));
        pci.port_access(6, 2, true, 0);
        {
            let d: &mut Dev = pci
                .function_mut(PciAddress::new(0, 1, 0))
                .unwrap()
                .as_any_mut()
                .downcast_mut()
                .unwrap();
            let mut drv = Driver {
                size: 8,
                avail_idx: 1,
            };
            request(d, &mut drv, request::FLUSH, 0, 0);
        }
        let e = pci.mmio_write(bar + NOTIFY_CFG, 2, 0).unwrap();
        assert_eq!(e.lines[0], Some(IrqLine::Level(11, true)));
        let (_, e) = pci.mmio_read(bar + ISR_CFG, 1).unwrap();
        assert_eq!(e.lines[0], Some(IrqLine::Level(11, false)));
    }
}
