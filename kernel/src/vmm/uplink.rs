//! The virtual switch's uplink: the machine's own NIC (`host_nic`, the `e1000`
//! driver) as an uplink port (`vswitch::PortKind::Uplink`: any unicast source
//! accepted) of the network the configuration's `[uplink]` names.
//!
//! Frames move in [`pump`], which every processor's run loop calls between slices
//! and after idling (at least once per 1 ms timer tick while the machine runs):
//! frames the NIC received go to `Switch::transmit` from the uplink port (waking
//! the VMs they are queued for, as a VM's NIC does), and frames queued at the
//! uplink port go to the NIC while its transmit ring has room. Work per call is
//! bounded ([`BUDGET`] frames each way), and only one processor pumps at a time
//! (the others skip: `try_lock`).
//!
//! Lock order: the uplink's lock, then the hub's (never both the other way); no
//! VM's lock is held or taken here, and the hub is not held across the NIC's
//! register accesses.

use alloc::string::String;
use alloc::vec::Vec;
use spin::Mutex;

use vswitch::PortId;

use super::net::SharedHub;
use crate::{host_nic, println, time};

/// Frames moved each way per [`pump`].
pub const BUDGET: usize = 32;

struct Uplink {
    nic: host_nic::HostNic,
    port: PortId,
    network: String,
    /// Frames the switch queued for the uplink that the NIC's full ring refused.
    tx_dropped: u64,
}

static UPLINK: Mutex<Option<Uplink>> = Mutex::new(None);

/// The network the bundle names for the uplink, until the run loop attaches it.
static CONFIGURED: Mutex<Option<bundle::NetworkName>> = Mutex::new(None);

/// Records the bundle's uplink network (boot, before `run_all`).
pub fn configure(network: Option<bundle::NetworkName>) {
    *CONFIGURED.lock() = network;
}

/// Attaches the configured uplink, if any, to `hub` (see [`attach`]).
pub fn attach_configured(hub: &SharedHub) {
    let network = *CONFIGURED.lock();
    if let Some(n) = network {
        attach(hub, n.as_str());
    }
}

/// Brings up the host NIC and attaches it to `network` as its uplink, saying so in
/// one line; without a NIC (or when it fails) says why, and the VMs run without an
/// uplink.
pub fn attach(hub: &SharedHub, network: &str) {
    let (function, device, mut nic) = match host_nic::bring_up() {
        Ok(up) => up,
        Err(why) => {
            println!("hv: uplink: {why}; network {network:?} has no uplink");
            return;
        }
    };
    let port = match hub.lock().attach_uplink(network, time::uptime_ns()) {
        Ok(port) => port,
        Err(why) => {
            println!("hv: uplink: {why}; network {network:?} has no uplink");
            nic.shutdown(&mut host_nic::Clock);
            return;
        }
    };
    let mac = nic.mac();
    let link = if nic.link_up() { "up" } else { "down" };
    println!(
        "hv: uplink: {function} Intel 8086:{device:04x} ({:?}), MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}, link {link}, on network {network:?}",
        nic.model(),
        mac[0],
        mac[1],
        mac[2],
        mac[3],
        mac[4],
        mac[5]
    );
    *UPLINK.lock() = Some(Uplink {
        nic,
        port,
        network: network.into(),
        tx_dropped: 0,
    });
}

/// Moves up to [`BUDGET`] frames each way between the NIC and the switch (see the
/// module documentation). Cheap when there is no uplink or another processor is
/// pumping.
pub fn pump(hub: &SharedHub) {
    let Some(mut guard) = UPLINK.try_lock() else {
        return;
    };
    let Some(up) = guard.as_mut() else { return };
    // In: from the wire to the switch.
    let mut frames: Vec<Vec<u8>> = Vec::new();
    up.nic.receive(BUDGET, |f| frames.push(f.to_vec()));
    if !frames.is_empty() {
        let now = time::uptime_ns();
        let mut h = hub.lock();
        for f in &frames {
            h.transmit(up.port, f, now);
        }
    }
    // Out: from the switch to the wire, as far as the ring has room.
    let room = (e1000::TX_ENTRIES - 1)
        .saturating_sub(up.nic.tx_in_flight())
        .min(BUDGET);
    if room == 0 {
        // The ring is full (a stuck or slow device): what waits at the port stays
        // there, and the port's bounded queue drops the excess.
        return;
    }
    frames.clear();
    {
        let mut h = hub.lock();
        while frames.len() < room {
            match h.receive(up.port) {
                Some(f) => frames.push(f),
                None => break,
            }
        }
    }
    for f in &frames {
        // Sizes were checked by the switch; a refusal here is counted.
        if up.nic.transmit(f).is_err() {
            up.tx_dropped += 1;
        }
    }
}

/// The uplink's counters in one line, then the NIC stopped (its rings freed), when
/// the machine stops.
pub fn stop(hub: &SharedHub) {
    let Some(mut up) = UPLINK.lock().take() else {
        return;
    };
    let s = up.nic.stats();
    let port = hub.lock().port_stats(up.port).unwrap_or_default();
    println!(
        "hv: uplink ({}): to the wire {} frames {} bytes, from the wire {} frames {} bytes, \
         dropped: receive errors {}, bad length {}, ring full {}, switch {}",
        up.network,
        s.tx_frames,
        s.tx_bytes,
        s.rx_frames,
        s.rx_bytes,
        s.rx_errors,
        s.rx_bad_length + s.rx_fragmented,
        up.tx_dropped,
        port.dropped_total().frames
    );
    up.nic.shutdown(&mut host_nic::Clock);
}
