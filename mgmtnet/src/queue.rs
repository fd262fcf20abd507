//! The station's Ethernet device for smoltcp: two bounded frame queues. The
//! kernel fills the receive queue from the station's switch port and drains the
//! transmit queue into the switch; smoltcp sees a [`smoltcp::phy::Device`].

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// The largest Ethernet frame without FCS (no 802.1Q tag: the station is on an
/// untagged network), as the switch checks it.
pub const MTU: usize = 1514;

/// Counters of the queues.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub received: u64,
    pub sent: u64,
    /// Frames refused because the receive queue was full or the frame too long.
    pub rx_dropped: u64,
    /// Frames smoltcp could not send because the transmit queue was full (it
    /// retries: TCP retransmits, ARP asks again).
    pub tx_full: u64,
}

/// See the module documentation.
pub struct FrameQueue {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
    capacity: usize,
    stats: QueueStats,
}

impl FrameQueue {
    pub fn new(capacity: usize) -> Self {
        Self {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            capacity,
            stats: QueueStats::default(),
        }
    }

    /// A frame from the network; false when it is dropped (queue full, or longer
    /// than [`MTU`]).
    pub fn push_rx(&mut self, frame: &[u8]) -> bool {
        if self.rx.len() >= self.capacity || frame.len() > MTU {
            self.stats.rx_dropped += 1;
            return false;
        }
        self.rx.push_back(frame.to_vec());
        true
    }

    /// The next frame for the network.
    pub fn pop_tx(&mut self) -> Option<Vec<u8>> {
        self.tx.pop_front()
    }

    pub fn stats(&self) -> QueueStats {
        self.stats
    }
}

/// A received frame.
pub struct RxToken(Vec<u8>);

/// Room for one frame in the transmit queue.
pub struct TxToken<'a>(&'a mut FrameQueue);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let r = f(&mut frame);
        self.0.stats.sent += 1;
        self.0.tx.push_back(frame);
        r
    }
}

impl phy::Device for FrameQueue {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken, TxToken<'_>)> {
        // The answer to a frame may need room as well (an ARP reply, an echo
        // reply); smoltcp asks again later if there is none.
        if self.tx.len() >= self.capacity {
            self.stats.tx_full += 1;
            return None;
        }
        let frame = self.rx.pop_front()?;
        self.stats.received += 1;
        Some((RxToken(frame), TxToken(self)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        if self.tx.len() >= self.capacity {
            self.stats.tx_full += 1;
            return None;
        }
        Some(TxToken(self))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MTU;
        caps.max_burst_size = Some(1);
        caps
    }
}
