//! The MAC address table of one network: which port a source address was last
//! seen on, bounded in size and aged (IEEE 802.1Q §8.8.3, the filtering database's
//! dynamic entries, with an ageing time).
//!
//! The bound is what keeps a MAC flood (random source addresses from a port
//! without a source check, such as an uplink) from growing memory: a full table
//! first drops entries that have aged out; if none has, the new address is not
//! learned (its frames are still forwarded, and frames to it are flooded) and the
//! refusal is counted. Existing entries are kept rather than evicted, so a flood
//! cannot push the addresses of well-behaved VMs out and turn the switch into a
//! hub.

use alloc::collections::BTreeMap;

use crate::frame::Mac;
use crate::PortId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    port: PortId,
    last_seen_ns: u64,
}

/// What [`MacTable::learn`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learned {
    /// A new entry.
    New,
    /// The entry was there, on the same port; its age restarts.
    Refreshed,
    /// The address moved from the port given to the one learned now.
    Moved(PortId),
    /// The table is full of live entries: not learned.
    TableFull,
}

/// A bounded, aging MAC table.
#[derive(Clone, Debug)]
pub struct MacTable {
    entries: BTreeMap<Mac, Entry>,
    capacity: usize,
    ageing_ns: u64,
    /// No entry can have aged out before this time (the oldest `last_seen` at the
    /// last sweep, plus the ageing time): a full table under a flood is not swept
    /// again and again for nothing.
    no_expiry_before_ns: u64,
    aged_out: u64,
}

impl MacTable {
    pub fn new(capacity: usize, ageing_ns: u64) -> Self {
        Self {
            entries: BTreeMap::new(),
            capacity,
            ageing_ns,
            no_expiry_before_ns: 0,
            aged_out: 0,
        }
    }

    fn live(&self, e: &Entry, now_ns: u64) -> bool {
        now_ns.saturating_sub(e.last_seen_ns) < self.ageing_ns
    }

    /// The port `mac` was last seen on, unless that has aged out.
    pub fn lookup(&self, mac: &Mac, now_ns: u64) -> Option<PortId> {
        self.entries
            .get(mac)
            .filter(|e| self.live(e, now_ns))
            .map(|e| e.port)
    }

    /// Records that `mac` was the source of a frame from `port` at `now_ns`.
    pub fn learn(&mut self, mac: Mac, port: PortId, now_ns: u64) -> Learned {
        if let Some(e) = self.entries.get_mut(&mac) {
            let old = e.port;
            e.port = port;
            e.last_seen_ns = e.last_seen_ns.max(now_ns);
            return if old == port {
                Learned::Refreshed
            } else {
                Learned::Moved(old)
            };
        }
        if self.entries.len() >= self.capacity {
            self.sweep(now_ns);
            if self.entries.len() >= self.capacity {
                return Learned::TableFull;
            }
        }
        self.entries.insert(
            mac,
            Entry {
                port,
                last_seen_ns: now_ns,
            },
        );
        Learned::New
    }

    /// Drops aged-out entries (at most once per ageing period while nothing can
    /// have expired).
    pub fn sweep(&mut self, now_ns: u64) {
        if now_ns < self.no_expiry_before_ns {
            return;
        }
        let before = self.entries.len();
        let ageing = self.ageing_ns;
        self.entries
            .retain(|_, e| now_ns.saturating_sub(e.last_seen_ns) < ageing);
        self.aged_out += (before - self.entries.len()) as u64;
        let oldest = self.entries.values().map(|e| e.last_seen_ns).min();
        self.no_expiry_before_ns = oldest.map_or(0, |t| t.saturating_add(ageing));
    }

    /// Forgets every address learned on `port` (the port went away).
    pub fn forget_port(&mut self, port: PortId) {
        self.entries.retain(|_, e| e.port != port);
    }

    /// Entries held (live or not yet swept).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries removed because they aged out, so far.
    pub fn aged_out(&self) -> u64 {
        self.aged_out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn mac(i: u32) -> Mac {
        let b = i.to_be_bytes();
        [2, 0, b[0], b[1], b[2], b[3]]
    }

    #[test]
    fn learn_refresh_move_and_age() {
        let mut t = MacTable::new(4, 300 * S);
        assert_eq!(t.learn(mac(1), PortId(0), 0), Learned::New);
        assert_eq!(t.lookup(&mac(1), 0), Some(PortId(0)));
        assert_eq!(t.learn(mac(1), PortId(0), 100 * S), Learned::Refreshed);
        assert_eq!(
            t.learn(mac(1), PortId(3), 200 * S),
            Learned::Moved(PortId(0))
        );
        assert_eq!(t.lookup(&mac(1), 499 * S), Some(PortId(3)));
        assert_eq!(t.lookup(&mac(1), 500 * S), None, "aged out");
        assert_eq!(t.lookup(&mac(2), 0), None);
    }

    #[test]
    fn full_table_refuses_until_entries_age_out() {
        let mut t = MacTable::new(3, 10 * S);
        for i in 0..3 {
            assert_eq!(t.learn(mac(i), PortId(1), i as u64 * S), Learned::New);
        }
        for i in 3..10_000 {
            assert_eq!(t.learn(mac(i), PortId(2), 5 * S), Learned::TableFull);
        }
        assert_eq!(t.len(), 3);
        assert_eq!(
            t.lookup(&mac(0), 5 * S),
            Some(PortId(1)),
            "kept, not evicted"
        );
        // At 10 s mac(0) (seen at 0) has aged out and makes room.
        assert_eq!(t.learn(mac(7), PortId(2), 10 * S), Learned::New);
        assert_eq!(t.len(), 3);
        assert_eq!(t.aged_out(), 1);
        assert_eq!(t.lookup(&mac(0), 10 * S), None);
        t.forget_port(PortId(2));
        assert_eq!(t.len(), 2);
    }
}
