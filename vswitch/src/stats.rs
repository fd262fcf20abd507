//! Counters per port and per network, kept as plain integers the metrics
//! endpoint can read through [`crate::Switch::ports`] and
//! [`crate::Switch::networks`] and format as it likes.

/// Why the switch dropped a frame. Each drop is counted on one port: the port
/// that sent the frame, except [`DropReason::ReceiveQueueFull`], which is counted
/// on the port that could not take it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Shorter than the Ethernet header.
    Runt,
    /// Longer than the largest frame (untagged or with one 802.1Q tag).
    Oversized,
    /// A multicast or broadcast source address: no station sends from a group
    /// address (IEEE 802-2014 §8.2), and learning one would misdirect traffic.
    MulticastSource,
    /// A VM port's frame whose source is not the port's own MAC (forged transmit).
    ForgedSource,
    /// Over the port's rate limit.
    RateLimited,
    /// The destination was learned on the sending port itself: the frame would go
    /// back where it came from.
    Hairpin,
    /// The receiving port's queue was full (its owner does not drain it).
    ReceiveQueueFull,
}

impl DropReason {
    pub const ALL: [DropReason; 7] = [
        DropReason::Runt,
        DropReason::Oversized,
        DropReason::MulticastSource,
        DropReason::ForgedSource,
        DropReason::RateLimited,
        DropReason::Hairpin,
        DropReason::ReceiveQueueFull,
    ];

    /// A stable name for metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Runt => "runt",
            DropReason::Oversized => "oversized",
            DropReason::MulticastSource => "multicast_source",
            DropReason::ForgedSource => "forged_source",
            DropReason::RateLimited => "rate_limited",
            DropReason::Hairpin => "hairpin",
            DropReason::ReceiveQueueFull => "receive_queue_full",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Frames and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count {
    pub frames: u64,
    pub bytes: u64,
}

impl Count {
    pub(crate) fn add(&mut self, bytes: usize) {
        self.frames += 1;
        self.bytes += bytes as u64;
    }
}

/// One port's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Every frame the port handed the switch, dropped or not.
    pub input: Count,
    /// Frames placed in the port's receive queue.
    pub output: Count,
    dropped: [Count; DropReason::ALL.len()],
}

impl PortStats {
    pub(crate) fn drop(&mut self, reason: DropReason, bytes: usize) {
        self.dropped[reason.index()].add(bytes);
    }

    /// Drops for `reason`.
    pub fn dropped(&self, reason: DropReason) -> Count {
        self.dropped[reason.index()]
    }

    /// All drops counted on this port.
    pub fn dropped_total(&self) -> Count {
        self.dropped.iter().fold(Count::default(), |a, c| Count {
            frames: a.frames + c.frames,
            bytes: a.bytes + c.bytes,
        })
    }
}

/// One network's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetworkStats {
    /// Frames sent to the one learned port of their destination.
    pub unicast: u64,
    /// Frames flooded (broadcast, multicast, unknown destination).
    pub flooded: u64,
    /// Addresses that moved from one port to another.
    pub moves: u64,
    /// Source addresses not learned because the table was full.
    pub table_full: u64,
    /// Entries in the MAC table now.
    pub table_entries: u64,
    /// Entries removed because they aged out.
    pub aged_out: u64,
}
