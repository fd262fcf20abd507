//! The management network, wired to the running machine: the boot processor
//! polls the hypervisor's station between time slices ([`Machine::management_tick`],
//! see `vmm::mgmt_net`), and a request for `/metrics` is answered with what the
//! console's `stats` reads (per VM: state, vCPUs, CPU time since it (re)started,
//! RAM and what of it is ballooned or shared, exits by reason, disk and NIC
//! counters) and the switch's own counters,
//! filled into a `mgmtnet::Metrics`.
//!
//! Locks: called with the station's lock held and no other; takes each VM's
//! `life` and exit-count locks one VM at a time, then the hub's (the order of
//! `vmm::mgmt_net`).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use mgmtnet::{DiskMetrics, Metrics, NicMetrics, VmMetrics};
use vcpu::{Backend, ExitKind};
use vswitch::{PortId, PortReport};

use super::{ExitStats, Machine};
use crate::time;

/// One VM's NIC, as the switch report names its port.
struct Owner {
    port: PortId,
    name: String,
}

impl<B: Backend> Machine<'_, B> {
    /// Polls the management station, if the machine has one.
    pub(super) fn management_tick(&self) {
        // Only the boot processor calls this; `try_lock` keeps it from ever waiting.
        let Some(mut guard) = self.mgmt_net.try_lock() else {
            return;
        };
        let Some(station) = guard.as_mut() else {
            return;
        };
        let hv_port = station.port();
        station.tick(time::uptime_ns(), &mut |m| self.fill_metrics(m, hv_port));
    }

    /// Everything `/metrics` reports about the machine.
    fn fill_metrics(&self, m: &mut Metrics, hv_port: PortId) {
        m.uptime(time::uptime_ns());
        let tsc_hz = time::tsc_hz().max(1);
        let mut owners = alloc::vec![Owner {
            port: hv_port,
            name: "hv".into(),
        }];
        for v in 0..self.vms.len() {
            let vm = &self.vms[v];
            let state = self.vm_state(v).name();
            let mut exits = ExitStats::default();
            for e in &vm.exits {
                exits.add(&e.lock());
            }
            let life = vm.life.lock();
            let run_tsc = vm
                .run_tsc
                .load(Ordering::Relaxed)
                .saturating_sub(life.run_tsc_at_start);
            let cpu_ns = (u128::from(run_tsc) * 1_000_000_000 / u128::from(tsc_hz)) as u64;
            let disk = life.machine.disk.as_ref().map(|_| {
                let d = &life.machine.disk_stats;
                let get = |c: &core::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
                DiskMetrics {
                    reads: get(&d.reads),
                    writes: get(&d.writes),
                    flushes: get(&d.flushes),
                    read_bytes: get(&d.read_bytes),
                    written_bytes: get(&d.written_bytes),
                    errors: get(&d.errors),
                }
            });
            // A stopped VM has no RAM at all, which is no balloon (as `stats`).
            let ram = (state != "stopped").then(|| life.machine.ram.usage());
            let names: Vec<String> = (0..life.machine.nics.len())
                .map(|i| format!("eth{i}"))
                .collect();
            let mut nics = Vec::new();
            for (i, n) in life.machine.nics.iter().enumerate() {
                // A stopped VM's ports are detached: no counters.
                let Some(s) = n.hub.lock().port_stats(n.port) else {
                    continue;
                };
                owners.push(Owner {
                    port: n.port,
                    name: format!("{}/{}", vm.name, names[i]),
                });
                nics.push(NicMetrics {
                    nic: &names[i],
                    network: &n.network,
                    tx_frames: s.input.frames,
                    tx_bytes: s.input.bytes,
                    rx_frames: s.output.frames,
                    rx_bytes: s.output.bytes,
                    dropped_frames: s.dropped_total().frames,
                });
            }
            m.vm(&VmMetrics {
                name: &vm.name,
                state,
                vcpus: vm.slots.len() as u64,
                cpu_ns,
                memory_bytes: life.ram_size,
                ballooned_bytes: ram.as_ref().map_or(0, |r| r.ballooned),
                shared_bytes: ram.as_ref().map_or(0, |r| r.shared),
                exits: ExitKind::ALL
                    .iter()
                    .map(|&k| (k.name(), exits.count(k)))
                    .collect(),
                disk,
                nics,
            });
        }
        let hub = self.hub.lock();
        let sw = hub.switch();
        let owner = |p: &PortReport| {
            owners
                .iter()
                .find(|o| o.port == p.port)
                .map_or_else(|| String::from("uplink"), |o| o.name.clone())
        };
        m.switch(
            sw.networks().map(|(_, name, s)| (name, s)),
            sw.ports(),
            &owner,
        );
        drop(hub);
        let (sent, dropped) = crate::vmm::mgmt_net::syslog_counts();
        m.syslog(sent, dropped);
    }
}
