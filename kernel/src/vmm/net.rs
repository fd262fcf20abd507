//! The machine's virtual network: one `vswitch::Switch` shared by every VM behind
//! one spin lock ([`Hub`]), and each VM NIC as a PCI function
//! ([`NicFunction`]: virtio-net behind the virtio-pci transport) attached to one
//! switch port.
//!
//! Frame movement, always inside the owning VM's exit handling or poll:
//! - transmit: after every BAR write (the guest's queue notification) and every
//!   poll, the frames the device took from the guest go to `Switch::transmit`;
//! - receive: when the device has room, frames queued at its port move into it
//!   and `device_work` places them into posted buffers with the queue's interrupt.
//!
//! A frame queued for another VM's port sets that VM's wake flag (which makes its
//! platform poll at once, see `Platform::poll`) and [`NET_KICK`], which the run loop
//! checks between exits and slices to kick the VM's vCPUs (a halted one is woken on
//! an idle processor or at the next pick).
//!
//! Lock order: a VM's lock (`VmShared`), then the hub's. The hub's holder never
//! takes a VM's lock or the run queue's, and waking another VM is two atomic
//! stores, so two VMs sending to each other at once cannot deadlock.

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::any::Any;
use core::sync::atomic::{AtomicBool, Ordering};

use devices::{Bar, PciEffects, PciFunction};
use spin::Mutex;
use virtio::net::{Net, NetConfig};
use virtio::VirtioPci;
use vswitch::{Forwarded, PortConfig, PortId, PortStats, RateLimit, Switch, SwitchConfig};

use super::vm::GuestRam;

/// Set whenever a frame was queued for a port whose VM may be waiting: the run
/// loop then kicks the VMs whose wake flag is set.
pub static NET_KICK: AtomicBool = AtomicBool::new(false);

/// The first NIC's PCI device number: NIC `i` is 00:(4 + i).0, after the disk at
/// 00:03.0.
pub const FIRST_NIC_DEVICE: u8 = 4;

/// The switch and, per port, the wake flag of the VM that owns it.
pub struct Hub {
    switch: Switch,
    /// Indexed by port id.
    wake: Vec<Option<Arc<AtomicBool>>>,
}

/// The hub as the VMs share it.
pub type SharedHub = Arc<Mutex<Hub>>;

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub fn new() -> Self {
        Self {
            switch: Switch::new(SwitchConfig::default()),
            wake: Vec::new(),
        }
    }

    /// A port for a VM NIC with `mac` on `network` (created on first use), limited
    /// to `rate_mbit` (0: no limit) with a burst of `burst_kib`; frames queued for it
    /// set `wake`.
    pub fn attach(
        &mut self,
        network: &str,
        mac: [u8; 6],
        rate_mbit: u32,
        burst_kib: u32,
        wake: Arc<AtomicBool>,
        now_ns: u64,
    ) -> Result<PortId, String> {
        let net = match self.switch.network(network) {
            Some(n) => n,
            None => self
                .switch
                .add_network(network)
                .map_err(|e| format!("network {network:?}: {e:?}"))?,
        };
        let mut config = PortConfig::vm(mac);
        if rate_mbit > 0 {
            config = config.with_rate_limit(RateLimit {
                bytes_per_s: u64::from(rate_mbit) * 125_000,
                burst_bytes: u64::from(burst_kib.max(bundle::BURST_KIB_MIN)) * 1024,
                frames: None,
            });
        }
        let port = self
            .switch
            .add_port(net, config, now_ns)
            .map_err(|e| format!("network {network:?}: {e:?}"))?;
        let i = usize::from(port.0);
        if self.wake.len() <= i {
            self.wake.resize(i + 1, None);
        }
        self.wake[i] = Some(wake);
        Ok(port)
    }

    /// The port of the machine's own NIC on `network` (created on first use): an
    /// uplink, which may send from any unicast source and has no wake flag (the run
    /// loop polls it, see `uplink`).
    pub fn attach_uplink(&mut self, network: &str, now_ns: u64) -> Result<PortId, String> {
        let net = match self.switch.network(network) {
            Some(n) => n,
            None => self
                .switch
                .add_network(network)
                .map_err(|e| format!("network {network:?}: {e:?}"))?,
        };
        self.switch
            .add_port(net, PortConfig::uplink(), now_ns)
            .map_err(|e| format!("network {network:?}: {e:?}"))
    }

    /// Detaches a port (its VM is gone).
    pub fn detach(&mut self, port: PortId) {
        let _ = self.switch.remove_port(port);
        if let Some(w) = self.wake.get_mut(usize::from(port.0)) {
            *w = None;
        }
    }

    fn wake(&self, port: PortId) {
        if let Some(Some(w)) = self.wake.get(usize::from(port.0)) {
            w.store(true, Ordering::Release);
            NET_KICK.store(true, Ordering::Release);
        }
    }

    /// A frame `port` sent: switched, and the owners of the ports it was queued for
    /// woken.
    pub fn transmit(&mut self, port: PortId, frame: &[u8], now_ns: u64) {
        match self.switch.transmit(port, frame, now_ns) {
            Ok(Forwarded::Unicast(to)) => self.wake(to),
            Ok(Forwarded::Flooded { delivered }) if delivered > 0 => {
                let Some(net) = self
                    .switch
                    .ports()
                    .find(|p| p.port == port)
                    .map(|p| p.network)
                else {
                    return;
                };
                let waiting: Vec<PortId> = self
                    .switch
                    .ports()
                    .filter(|p| p.network == net && p.port != port && p.queued > 0)
                    .map(|p| p.port)
                    .collect();
                for p in waiting {
                    self.wake(p);
                }
            }
            _ => {}
        }
    }

    /// The next frame waiting for `port`.
    pub fn receive(&mut self, port: PortId) -> Option<Vec<u8>> {
        self.switch.receive(port)
    }

    /// Frames waiting for `port`.
    pub fn queued(&self, port: PortId) -> usize {
        self.switch.queued(port)
    }

    /// The counters of `port`.
    pub fn port_stats(&self, port: PortId) -> Option<PortStats> {
        self.switch.port_stats(port)
    }

    /// The switch, for reports.
    pub fn switch(&self) -> &Switch {
        &self.switch
    }
}

/// One NIC of a VM: its port on the shared switch.
#[derive(Clone)]
pub struct NicPort {
    pub hub: SharedHub,
    pub port: PortId,
    pub mac: [u8; 6],
    pub network: String,
    /// The time in ns, for the port's rate limit and the switch's ageing.
    pub clock: fn() -> u64,
}

impl core::fmt::Debug for NicPort {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "NicPort(port {}, network {:?}, mac {:02x?})",
            self.port.0, self.network, self.mac
        )
    }
}

/// A VM's virtio-net NIC as a PCI function, moving frames between its device and
/// its switch port (see the module documentation).
pub struct NicFunction {
    pci: VirtioPci<Net, GuestRam>,
    port: NicPort,
}

impl NicFunction {
    pub fn new(port: NicPort, ram: GuestRam) -> Self {
        Self {
            pci: VirtioPci::new(Net::new(NetConfig::new(port.mac)), ram),
            port,
        }
    }

    /// The device's own counters.
    pub fn stats(&self) -> virtio::net::NetStats {
        self.pci.device().stats()
    }

    /// Hands every frame the guest sent to the switch.
    fn pump_tx(&mut self) {
        let Some(first) = self.pci.device_mut().take_transmitted() else {
            return;
        };
        let now = (self.port.clock)();
        let mut hub = self.port.hub.lock();
        hub.transmit(self.port.port, &first, now);
        while let Some(frame) = self.pci.device_mut().take_transmitted() {
            hub.transmit(self.port.port, &frame, now);
        }
    }

    /// Moves frames waiting at the port into the device while it has room; whether
    /// any moved.
    fn pump_rx(&mut self) -> bool {
        let room = self.pci.device().rx_room();
        if room == 0 {
            return false;
        }
        let mut hub = self.port.hub.lock();
        let mut moved = false;
        for _ in 0..room {
            let Some(frame) = hub.receive(self.port.port) else {
                break;
            };
            // A frame outside the size limits is dropped and counted by the device.
            self.pci.device_mut().receive(&frame);
            moved = true;
        }
        moved
    }

    fn rx_waiting(&self) -> bool {
        self.pci.device().rx_room() > 0 && self.port.hub.lock().queued(self.port.port) > 0
    }
}

impl PciFunction for NicFunction {
    fn name(&self) -> &'static str {
        "virtio-net"
    }
    fn config_read(&mut self, reg: u16) -> u32 {
        PciFunction::config_read(&mut self.pci, reg)
    }
    fn config_write(&mut self, reg: u16, value: u32, mask: u32) -> PciEffects {
        PciFunction::config_write(&mut self.pci, reg, value, mask)
    }
    fn bar(&self, index: u8) -> Option<Bar> {
        PciFunction::bar(&self.pci, index)
    }
    fn bar_read(&mut self, index: u8, offset: u64, size: u8) -> (u64, PciEffects) {
        PciFunction::bar_read(&mut self.pci, index, offset, size)
    }
    fn bar_write(&mut self, index: u8, offset: u64, size: u8, value: u64) -> PciEffects {
        let e = PciFunction::bar_write(&mut self.pci, index, offset, size, value);
        // A transmit notification has just filled the device's output queue.
        self.pump_tx();
        e
    }
    fn has_work(&self) -> bool {
        self.pci.has_work() || self.rx_waiting()
    }
    fn poll(&mut self) -> PciEffects {
        let e = PciFunction::poll(&mut self.pci);
        // Room again in the output queue may have let more frames through.
        self.pump_tx();
        if e != PciEffects::NONE {
            // Its messages fill the effects; received frames wait for the next poll
            // (`has_work` still says so).
            return e;
        }
        if self.pump_rx() {
            self.pci.device_work()
        } else {
            PciEffects::NONE
        }
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    /// The device's state; frames waiting at the switch port are the network's,
    /// not the VM's, and stay out of a snapshot.
    fn snapshot(&self) -> Result<Vec<u8>, devices::StateError> {
        PciFunction::snapshot(&self.pci)
    }
    fn restore_snapshot(&mut self, data: &[u8]) -> Result<(), devices::StateError> {
        PciFunction::restore_snapshot(&mut self.pci, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x08, 0x00]);
        f.resize(60, 0xAB);
        f
    }

    const A: [u8; 6] = [2, 0, 0, 0, 0, 0xA];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 0xB];
    const C: [u8; 6] = [2, 0, 0, 0, 0, 0xC];

    #[test]
    fn frames_wake_their_owner_only() {
        let mut hub = Hub::new();
        let flags: Vec<Arc<AtomicBool>> =
            (0..3).map(|_| Arc::new(AtomicBool::new(false))).collect();
        let a = hub.attach("lan", A, 0, 0, flags[0].clone(), 0).unwrap();
        let b = hub.attach("lan", B, 0, 0, flags[1].clone(), 0).unwrap();
        let c = hub.attach("other", C, 0, 0, flags[2].clone(), 0).unwrap();
        // A broadcast from a reaches b, not c on another network, and not a.
        hub.transmit(a, &frame([0xFF; 6], A), 1);
        assert!(flags[1].swap(false, Ordering::AcqRel));
        assert!(!flags[0].load(Ordering::Acquire) && !flags[2].load(Ordering::Acquire));
        assert_eq!(hub.queued(b), 1);
        assert_eq!(hub.queued(c), 0);
        // b answers a by unicast (a was learned).
        hub.transmit(b, &frame(A, B), 2);
        assert!(flags[0].swap(false, Ordering::AcqRel));
        assert_eq!(hub.receive(a).unwrap(), frame(A, B));
        // A forged source is dropped: nobody is woken.
        hub.transmit(c, &frame([0xFF; 6], A), 3);
        assert!(flags.iter().all(|f| !f.load(Ordering::Acquire)));
        let s = hub.port_stats(c).unwrap();
        assert_eq!(s.dropped_total().frames, 1);
        // A detached port gets nothing and wakes nobody.
        hub.detach(b);
        hub.transmit(a, &frame([0xFF; 6], A), 4);
        assert!(!flags[1].load(Ordering::Acquire));
    }

    #[test]
    fn the_uplink_carries_any_source_and_gets_what_is_not_learned_elsewhere() {
        let mut hub = Hub::new();
        let wa = Arc::new(AtomicBool::new(false));
        let a = hub.attach("lan", A, 0, 0, wa.clone(), 0).unwrap();
        let up = hub.attach_uplink("lan", 0).unwrap();
        let _other = hub
            .attach("other", C, 0, 0, Arc::new(AtomicBool::new(false)), 0)
            .unwrap();
        // A's broadcast (an ARP request) goes out of the uplink, not to "other".
        hub.transmit(a, &frame([0xFF; 6], A), 1);
        assert_eq!(hub.receive(up).unwrap(), frame([0xFF; 6], A));
        // The answer from a host outside (any source MAC) reaches A and wakes it.
        const OUTSIDE: [u8; 6] = [0x52, 0x55, 10, 0, 2, 2];
        hub.transmit(up, &frame(A, OUTSIDE), 2);
        assert!(wa.swap(false, Ordering::AcqRel));
        assert_eq!(hub.receive(a).unwrap(), frame(A, OUTSIDE));
        // Learned: A's unicast to it goes to the uplink alone.
        hub.transmit(a, &frame(OUTSIDE, A), 3);
        assert_eq!(hub.queued(up), 1);
        assert_eq!(hub.port_stats(up).unwrap().dropped_total().frames, 0);
        // The uplink on a network no VM has yet creates it.
        assert!(hub.attach_uplink("new", 4).is_ok());
    }

    #[test]
    fn rate_limits_apply() {
        let mut hub = Hub::new();
        let w = Arc::new(AtomicBool::new(false));
        // 1 Mbit/s with the smallest burst: two 1514-byte frames do not both pass.
        let a = hub.attach("lan", A, 1, 2, w.clone(), 0).unwrap();
        let _b = hub.attach("lan", B, 0, 0, w, 0).unwrap();
        let mut big = frame([0xFF; 6], A);
        big.resize(1514, 0);
        hub.transmit(a, &big, 0);
        hub.transmit(a, &big, 0);
        let s = hub.port_stats(a).unwrap();
        assert_eq!(s.input.frames, 2);
        assert_eq!(s.dropped_total().frames, 1);
    }
}
