//! The hypervisor's own station on its management network (`[management]` in
//! the configuration, `mgmtnet` for the logic): a port of the machine's switch
//! with its own MAC (`mgmtnet::station_mac`, forged-transmit checked like a VM's
//! NIC), polled by the boot processor between time slices ([`MgmtNet::tick`]),
//! serving `/metrics` and sending the hypervisor's log to a syslog collector.
//!
//! Log records reach the station through [`SYSLOG`], a fixed ring the `log`
//! facade's logger fills without allocating ([`forward`]), taking its lock only
//! with `try_lock` (a record logged while the ring is being drained on the same
//! processor, e.g. from an NMI, is counted as dropped instead of deadlocking).
//!
//! Lock order: the station's lock (`Machine::mgmt_net`), then a VM's locks (the
//! metrics read them), then the hub's. Nobody holding a VM's lock or the hub's
//! takes the station's; [`SYSLOG`] is a leaf.

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use mgmtnet::{Facility, Metrics, RecordRing, Severity, Station, StationConfig};
use spin::Mutex;
use vswitch::PortId;

use super::net::SharedHub;

/// Records waiting for the collector (about 60 KiB of fixed slots).
static SYSLOG: Mutex<RecordRing<64>> = Mutex::new(RecordRing::new());
/// Set once a station with a collector runs: until then the logger queues nothing.
static SYSLOG_ON: AtomicBool = AtomicBool::new(false);
/// Records lost to a busy ring lock, added to its drop count at the next tick.
static SYSLOG_BUSY: AtomicU64 = AtomicU64::new(0);
/// Unix time at uptime 0, for the records' timestamps.
static EPOCH_UNIX_NS: AtomicU64 = AtomicU64::new(0);
/// The APP-NAME of every message.
const APP_NAME: &str = "hv";
/// Local use 0: the hypervisor is an appliance of its own, not the collector's
/// kernel (RFC 5424 §6.2.1).
const FACILITY: Facility = Facility::Local0;
/// Syslog messages handed to the station per tick.
const SYSLOG_PER_TICK: usize = 16;
/// Frames moved from the port to the station per tick (its queue holds 64).
const FRAMES_PER_TICK: usize = 32;

/// Queues a `log` record for the collector (called by the serial logger after it
/// wrote the record). Allocates nothing; never waits.
pub fn forward(record: &log::Record) {
    if !SYSLOG_ON.load(Ordering::Acquire) {
        return;
    }
    let severity = match record.level() {
        log::Level::Error => Severity::Error,
        log::Level::Warn => Severity::Warning,
        log::Level::Info => Severity::Informational,
        log::Level::Debug | log::Level::Trace => Severity::Debug,
    };
    let at = EPOCH_UNIX_NS
        .load(Ordering::Relaxed)
        .wrapping_add(crate::time::uptime_ns());
    match SYSLOG.try_lock() {
        Some(mut ring) => {
            ring.push(severity, at, record.target(), *record.args());
        }
        None => {
            SYSLOG_BUSY.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Syslog records sent and dropped so far.
pub fn syslog_counts() -> (u64, u64) {
    let ring = SYSLOG.lock();
    (
        ring.sent(),
        ring.dropped() + SYSLOG_BUSY.load(Ordering::Relaxed),
    )
}

/// The station and its switch port.
pub struct MgmtNet {
    station: Station,
    hub: SharedHub,
    port: PortId,
    network: String,
}

impl MgmtNet {
    /// Attaches the station to `m`'s network on `hub`.
    pub fn new(
        m: &bundle::Management,
        hub: &SharedHub,
        epoch_unix_ns: u64,
        now_ns: u64,
    ) -> Result<Self, String> {
        let mac = mgmtnet::station_mac(m.network());
        let mut config = StationConfig::new(mac, m.address, m.prefix);
        config.syslog = m.syslog;
        // TCP initial sequence numbers and ports from the TSC: not predictable
        // from one boot to the next.
        config.seed = crate::time::rdtsc();
        let station =
            Station::new(config, now_ns).map_err(|e| format!("the management station: {e:?}"))?;
        // The hub wakes the owner of a port with frames; the station is polled
        // between slices anyway, so its flag is not read.
        let wake = Arc::new(AtomicBool::new(false));
        let port = hub
            .lock()
            .attach(m.network(), mac, 0, 0, wake, now_ns)
            .map_err(|e| format!("the management station's port: {e}"))?;
        EPOCH_UNIX_NS.store(epoch_unix_ns, Ordering::Relaxed);
        SYSLOG_ON.store(m.syslog.is_some(), Ordering::Release);
        Ok(Self {
            station,
            hub: hub.clone(),
            port,
            network: m.network().into(),
        })
    }

    /// The station's counters, for the report when the machine stops.
    pub fn report(&self) -> String {
        let q = self.station.queue_stats();
        let answered: u64 = self.station.answered().iter().map(|(_, n)| n).sum();
        let (sent, dropped) = syslog_counts();
        let port = self.hub.lock().port_stats(self.port);
        format!(
            "frames in {} out {} (queue drops {}), port tx {} rx {} dropped {}, {answered} \
             HTTP request(s) answered, syslog sent {sent} dropped {dropped}",
            q.received,
            q.sent,
            q.rx_dropped,
            port.map_or(0, |p| p.input.frames),
            port.map_or(0, |p| p.output.frames),
            port.map_or(0, |p| p.dropped_total().frames),
        )
    }

    pub fn port(&self) -> PortId {
        self.port
    }

    pub fn network(&self) -> &str {
        &self.network
    }

    /// Frames in, the stack polled (`fill` adds the machine's metrics when a
    /// request asks for them), log records and frames out.
    pub fn tick(&mut self, now_ns: u64, fill: &mut dyn FnMut(&mut Metrics)) {
        {
            let mut hub = self.hub.lock();
            for _ in 0..FRAMES_PER_TICK {
                let Some(frame) = hub.receive(self.port) else {
                    break;
                };
                // A full station queue drops it (counted there); TCP and ARP retry.
                self.station.receive_frame(&frame);
            }
        }
        self.station.poll(now_ns, fill);
        // The access log: into the hypervisor's log, and so to the collector.
        for a in self.station.take_answers() {
            let ([w, x, y, z], port) = a.peer;
            log::info!(
                "management: HTTP {} ({} bytes) to {w}.{x}.{y}.{z}:{port}",
                a.status,
                a.bytes
            );
        }
        {
            let busy = SYSLOG_BUSY.swap(0, Ordering::Relaxed);
            let mut ring = SYSLOG.lock();
            ring.count_dropped(busy, 0);
            for _ in 0..SYSLOG_PER_TICK {
                if !self.station.syslog_ready() {
                    break;
                }
                let Some(m) = ring.pop_message(FACILITY, APP_NAME) else {
                    break;
                };
                if !self.station.send_syslog(&m) {
                    ring.count_dropped(0, 1);
                }
            }
        }
        // The datagrams just queued go out in this tick.
        self.station.poll(now_ns, fill);
        let mut hub = self.hub.lock();
        while let Some(frame) = self.station.take_frame() {
            hub.transmit(self.port, &frame, now_ns);
        }
    }
}
