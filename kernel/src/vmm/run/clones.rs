//! Clones: `clone NAME NEW` starts VM NEW from a snapshot of VM NAME taken at that
//! instant. The snapshot's RAM copy becomes the clone's RAM, shared copy-on-write:
//! every page is mapped read-only in the clone's nested page tables, and the first
//! write to one (by a vCPU, or by the hypervisor for a device) gives the clone its
//! own copy of that page (`GuestRam::map_on_fault`, `guestram::RamMap::unshare`).
//! So clones of one VM share every page none of them has written; `stats` shows
//! how many. The copy is freed when the last clone made from it is gone.
//!
//! A clone gets the source's configuration with its own name and NIC MACs (derived
//! from the new name, as for a VM configured without one), fresh devices and vCPUs
//! with the snapshot's state, and its own switch ports. Its guest keeps using the
//! MAC it read at boot until its driver reads the configuration space again, and
//! the switch drops frames from the old MAC as forged until then: give clones
//! their address and MAC through their own configuration if they must talk at once.
//!
//! A writable disk of the source is seen by the clone as it was at the snapshot
//! (`virtio::cow::CloneDisk`: the snapshot's record of what the source overwrote
//! since, the live disk for the rest), and the clone's own writes stay in memory,
//! gone when it stops.
//!
//! Not yet: clones of VMs with a writable RAM-backed disk, and deleting a clone's
//! slot (a stopped clone stays listed and `start` boots it from the source's image,
//! without the source's disk).

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use core::sync::atomic::Ordering;

use guestram::RamMap;
use snapshot::Shape;
use vcpu::{Backend, Vcpu};

use super::snapshots::{disk_budget, RamCopy};
use super::VmDisk;

/// The most a clone's own disk writes may take (in the hypervisor's heap; more
/// is an I/O error for its guest).
const CLONE_DISK_MAX: u64 = 16 << 20;
use super::{
    affinity, attach_nics, detach_nics, kick_cpus, machine_info, relay, GuestRam, Life, Machine,
    VmEntry, VmShared, CLONE_SLOTS, KERNEL_RAM,
};
use crate::{smp, time};

impl<B: Backend> Machine<'_, B> {
    /// `clone NAME NEW [TAG]`: from snapshot TAG of NAME (whose RAM copy the
    /// snapshot and all its clones share), or from one taken now.
    pub(super) fn clone_vm(
        &self,
        v: usize,
        new: &str,
        tag: Option<&str>,
    ) -> Result<String, String> {
        let began = time::uptime_micros();
        let source = &self.vms[v];
        if self.vms.iter().any(|vm| vm.name == new) {
            return Err(format!("a VM is named {new:?} already"));
        }
        if self.vms.len() >= self.vms.capacity() {
            return Err(format!(
                "no room for another VM: a machine holds {CLONE_SLOTS} clones at most"
            ));
        }
        let spec = {
            let life = source.life.lock();
            if life.stop.is_some() {
                return Err(format!("VM {} is stopped: start it first", source.name));
            }
            if matches!(&life.machine.disk, Some(VmDisk::Ram(d)) if !d.read_only) {
                return Err(format!(
                    "VM {} has a writable RAM-backed disk, which a clone cannot share yet",
                    source.name
                ));
            }
            let mut spec = life.spec.clone();
            // Its disk is a view of the source's (below), not the partition.
            spec.partition = None;
            // One leaked name per clone, at most CLONE_SLOTS per run: the
            // specification's strings live as long as the hypervisor.
            spec.name = alloc::boxed::Box::leak(String::from(new).into_boxed_str());
            for (i, nic) in spec.nics.iter_mut().enumerate() {
                nic.mac = virtio::net::mac_from_name(new, i as u16);
            }
            spec
        };
        let stored = match tag {
            Some(tag) => self.loaded_snapshot(v, tag)?,
            None => {
                // The source at this instant.
                let was_running = self.quiesce(v)?;
                let taken = self.capture(v, "clone");
                self.unquiesce(v, was_running);
                taken?.0
            }
        };
        let Some(copy) = stored.ram.clone() else {
            return Err(String::from("the snapshot holds no RAM copy"));
        };
        if stored.ram_size != source.life.lock().ram_size {
            return Err(String::from(
                "the snapshot's RAM is not the size of the VM's",
            ));
        }
        let snap = snapshot::read(&stored.state).map_err(|e| format!("{e}"))?;
        let shape = Shape::from_bytes(snap.get(Shape::SECTION).map_err(|e| format!("{e}"))?)
            .map_err(|e| format!("{e}"))?;
        // Its disk: the source's as of the snapshot, its own writes in memory; or
        // the source's read-only disk itself.
        let source_disk = source.life.lock().machine.disk.clone();
        let disk = match (&stored.disk, source_disk) {
            (Some((backend, record)), _) => Some(VmDisk::View(backend.clone_view(
                record.clone(),
                CLONE_DISK_MAX,
                disk_budget(),
            ))),
            (None, Some(d)) if d.read_only() => Some(d),
            (None, None) => None,
            (None, Some(_)) => {
                return Err(String::from(
                    "the snapshot holds no record of the VM's writable disk (taken in an \
                     earlier run)",
                ))
            }
        };
        let entry = clone_entry::<B::Vcpu>(&spec, self.epoch_unix_ns, &self.hub, &copy, disk)?;
        let cpus = entry.slots.len();
        let n = match self.vms.push(entry) {
            Some(n) => n,
            None => return Err(String::from("no room for another VM")),
        };
        {
            let allowed = affinity(&spec, smp::cpu_count()).unwrap_or(u64::MAX);
            let mut queue = self.queue.lock();
            for i in 0..cpus {
                queue.add(n, i, allowed, false);
            }
        }
        // Devices and vCPUs from the snapshot; the RAM is its copy already.
        if let Err(e) = self.apply_with(n, &snap, &stored, &shape, false) {
            self.stop(n, format!("its clone state did not apply: {e}"));
            return Err(e);
        }
        self.vms[n].life.lock().started_tsc = time::rdtsc();
        self.unquiesce(n, true);
        kick_cpus(self.idle.load(Ordering::Acquire));
        let ms = (time::uptime_micros() - began) / 1000;
        Ok(format!(
            "VM {new} cloned from {}{} in {ms} ms: {} MiB shared copy-on-write",
            source.name,
            tag.map_or(String::new(), |t| format!("'s snapshot {t:?}")),
            stored.ram_size >> 20
        ))
    }
}

/// VM `spec`'s entry for a clone: its NICs attached, its RAM the snapshot's copy
/// shared copy-on-write, placeholder devices and no vCPUs until the snapshot's
/// state is applied (paused until then).
fn clone_entry<V: Vcpu>(
    spec: &bundle::VmSpec<'static>,
    epoch_unix_ns: u64,
    hub: &super::SharedHub,
    copy: &Arc<RamCopy>,
    disk: Option<VmDisk>,
) -> Result<VmEntry<V>, String> {
    let cpus = spec.vcpus as usize;
    let map = RamMap::shared(copy.pa, copy.size).map_err(|e| format!("{e}"))?;
    let ram = GuestRam::new(map, cpus, &KERNEL_RAM);
    ram.keep_alive(copy.clone());
    let (nics, net_wake) = attach_nics(spec, hub)?;
    let machine = machine_info(spec, ram, epoch_unix_ns, disk, nics, net_wake);
    let shared = match VmShared::new(spec.name, &machine, relay) {
        Ok(s) => s,
        Err(e) => {
            detach_nics(&machine.nics);
            machine.ram.release();
            return Err(e);
        }
    };
    // Paused until the snapshot's state is in place.
    let mut life = Life::new(spec, machine, copy.size);
    life.paused = true;
    Ok(VmEntry::new(spec.name, shared, life, cpus))
}
