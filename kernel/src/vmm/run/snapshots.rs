//! VM snapshots held in hypervisor memory: taking one of a running or paused VM,
//! rolling a VM (running, paused or stopped) back to one, listing and deleting
//! them. The `snapshot` crate packs the VM's shape, every vCPU's architectural
//! state (the backend's `save_state`) and software state, and every device's
//! state; guest RAM is copied to page frames beside it (it is far larger than the
//! heap).
//!
//! Taking one pauses the VM until its vCPUs are all off the processors, so the
//! state is of one instant, and lets it run on afterwards. Restoring checks the
//! snapshot (format, checksum, shape) and builds fresh devices and vCPUs from it
//! before anything of the VM changes: a snapshot that does not fit leaves the VM
//! as it was. The VM's clock (`VmEntry::clock_offset`) and its vCPUs' TSC offsets
//! are moved so that both go on from the snapshot's instant: its devices' deadlines
//! and the guest's TSC stay consistent, also after a restart of the hypervisor
//! (snapshots in the disk's area, `snapshot_disk`).
//!
//! A VM's writable (persistent) disk goes on being written after a snapshot; the
//! snapshot keeps the old contents of what the VM overwrites from then on
//! (`virtio::cow`, at most [`DISK_RECORD_MAX`]), which a restore writes back and a
//! clone reads instead of the live disk. Such a snapshot stays in memory only.
//!
//! Not yet: snapshots of VMs with a writable RAM-backed disk, or of a clone with a
//! disk view.

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use snapshot::{Builder, Shape};
use vcpu::state::CpuState;
use vcpu::{Backend, Vcpu};

use super::{create_vcpus, kick_cpus, relay, Machine, VcpuSlot, AP_START, LAST_HOUSEKEEPING};
use crate::vmm::host_memory::KernelMemory;
use crate::vmm::vm::{VmDisk, VmShared};
use crate::vmm::vm_disk::SharedBackend;
use crate::{memory, time};
use virtio::cow::{Budget, RollBackError, UndoRecord};

/// How long a snapshot or restore waits for the VM's vCPUs to leave the processors.
const QUIESCE_MS: u64 = 1_000;

/// The most a snapshot keeps of what its VM overwrites on its disk afterwards;
/// more, and the snapshot can no longer be restored (its disk part is gone).
pub(super) const DISK_RECORD_MAX: u64 = 16 << 20;

/// The memory every snapshot's disk record and every clone's disk writes take
/// together: a quarter of the hypervisor's heap, where they live.
pub(super) fn disk_budget() -> &'static Budget {
    static BUDGET: spin::Once<Budget> = spin::Once::new();
    BUDGET.call_once(|| Budget::new(memory::heap_size() as u64 / 4))
}

/// One snapshot: its packed state, and a copy of the VM's RAM in page frames (or
/// only in the disk's snapshot area, after a restart, until it is restored).
pub(in crate::vmm) struct Stored {
    pub vm: String,
    pub tag: String,
    pub(super) state: Vec<u8>,
    /// The RAM copy, shared with the clones made from the snapshot.
    pub(super) ram: Option<Arc<RamCopy>>,
    /// The VM's writable disk and the record of what was written to it since
    /// (`virtio::cow`): restoring rolls the disk back, a clone reads it as it was.
    pub(super) disk: Option<(SharedBackend, UndoRecord)>,
    pub(super) ram_size: u64,
    /// When it was taken (this run's uptime); `None`: in an earlier run.
    taken_us: Option<u64>,
    /// It is in the disk's snapshot area too.
    on_disk: bool,
}

/// A snapshot's RAM copy in page frames: the snapshot's and, shared
/// copy-on-write, its clones'. Given back to the frame allocator when the last of
/// them is gone.
pub(super) struct RamCopy {
    pub pa: u64,
    pub size: u64,
}

impl Drop for RamCopy {
    fn drop(&mut self) {
        memory::free(self.pa, self.size);
    }
}

impl Stored {
    /// Lets go of the RAM copy: freed unless clones still share it.
    pub fn free(self) {}

    /// Another handle on the same snapshot (its RAM copy shared, not copied).
    pub(super) fn share(&self) -> Stored {
        Stored {
            vm: self.vm.clone(),
            tag: self.tag.clone(),
            state: self.state.clone(),
            ram: self.ram.clone(),
            disk: self.disk.clone(),
            ram_size: self.ram_size,
            taken_us: self.taken_us,
            on_disk: self.on_disk,
        }
    }

    /// Where the RAM copy is, if it is in memory.
    pub(super) fn ram_pa(&self) -> Option<u64> {
        self.ram.as_ref().map(|r| r.pa)
    }
}

/// The snapshots the disk's area holds, as [`Stored`] ones with their state and
/// RAM still on the disk (read, and checked, at the restore: a forged index must
/// not make the boot allocate much).
pub(super) fn from_area(area: &super::snapshot_disk::Area) -> Vec<Stored> {
    area.index
        .entries
        .iter()
        .map(|e| Stored {
            vm: e.vm.clone(),
            tag: e.tag.clone(),
            state: Vec::new(),
            ram: None,
            disk: None,
            ram_size: e.ram_len,
            taken_us: None,
            on_disk: true,
        })
        .collect()
}

/// Copies `len` bytes between two page-frame ranges, in pieces between which the
/// boot processor tells the watchdog it is alive (a large VM's RAM takes seconds to
/// copy under an emulator).
/// Between pieces of a long RAM copy: the housekeeping watchdog sees progress.
fn still_alive() {
    LAST_HOUSEKEEPING.store(time::rdtsc(), core::sync::atomic::Ordering::Relaxed);
}

fn section_cpu(i: usize) -> String {
    format!("cpu.{i}")
}

fn section_soft(i: usize) -> String {
    format!("vcpu.{i}")
}

impl<B: Backend> Machine<'_, B> {
    /// Takes VM `v`'s vCPUs off the processors (pausing it) and waits until every
    /// one is back in its slot. Returns whether it was running (to be resumed).
    pub(super) fn quiesce(&self, v: usize) -> Result<bool, String> {
        let vm = &self.vms[v];
        let was_running = {
            let mut life = vm.life.lock();
            if life.stop.is_some() {
                return Err(format!("VM {} is stopped", vm.name));
            }
            if life.restart.is_some() {
                return Err(format!("VM {} is restarting; try again", vm.name));
            }
            !core::mem::replace(&mut life.paused, true)
        };
        let running = {
            let mut queue = self.queue.lock();
            for i in 0..vm.slots.len() {
                queue.set_runnable(v, i, false);
            }
            queue.cpus_running(v)
        };
        kick_cpus(running);
        let deadline = time::uptime_micros() + QUIESCE_MS * 1000;
        loop {
            let idle = self.queue.lock().cpus_running(v) == 0
                && vm.slots.iter().all(|s| s.lock().is_some());
            if idle {
                return Ok(was_running);
            }
            if time::uptime_micros() > deadline {
                self.unquiesce(v, was_running);
                return Err(format!(
                    "VM {}'s vCPUs did not leave the processors within {QUIESCE_MS} ms",
                    vm.name
                ));
            }
            core::hint::spin_loop();
        }
    }

    /// Lets a VM that [`Machine::quiesce`] paused run again.
    pub(super) fn unquiesce(&self, v: usize, was_running: bool) {
        if was_running {
            self.vms[v].life.lock().paused = false;
            self.sync_runnable(v);
            kick_cpus(self.idle.load(core::sync::atomic::Ordering::Acquire));
        }
    }

    /// `snapshot NAME TAG`.
    pub(super) fn take_snapshot(&self, v: usize, tag: &str) -> Result<String, String> {
        let vm = &self.vms[v];
        if self
            .snapshots
            .lock()
            .iter()
            .any(|s| s.vm == vm.name && s.tag == tag)
        {
            return Err(format!(
                "VM {} has a snapshot {tag:?} already (delete-snapshot it first)",
                vm.name
            ));
        }
        let began = time::uptime_micros();
        let was_running = self.quiesce(v)?;
        let taken = self.capture(v, tag);
        let copy_ms = taken.as_ref().map_or(0, |(_, us)| us / 1000);
        let taken = taken.map(|(s, _)| s);
        self.unquiesce(v, was_running);
        let mut stored = taken?;
        let size = stored.ram_size + stored.state.len() as u64;
        let ms = (time::uptime_micros() - began) / 1000;
        // Also into the disk's snapshot area, if the machine has one.
        let disk = match self.area.lock().as_mut() {
            None => String::new(),
            // The record of its disk lives in memory only.
            Some(_) if stored.disk.is_some() => String::from(
                "; kept in memory only (the disk's snapshot area cannot hold a writable disk's \
                 state yet)",
            ),
            Some(area) => {
                let saved = area.save(
                    &vm.name,
                    tag,
                    &stored.state,
                    stored.ram_pa().unwrap_or(0),
                    stored.ram_size,
                );
                match saved {
                    Ok(()) => {
                        stored.on_disk = true;
                        String::from("; saved in the disk's snapshot area")
                    }
                    Err(e) => format!("; not saved on the disk: {e}"),
                }
            }
        };
        self.snapshots.lock().push(stored);
        Ok(format!(
            "snapshot {tag:?} of VM {} taken in {ms} ms (RAM copy {copy_ms} ms; {} KiB){disk}",
            vm.name,
            size / 1024
        ))
    }

    /// Packs VM `v`'s state and copies its RAM; its vCPUs are all in their slots.
    /// Also returns how long the RAM copy took (µs).
    pub(super) fn capture(&self, v: usize, tag: &str) -> Result<(Stored, u64), String> {
        let vm = &self.vms[v];
        let (ram, ram_size, vm_disk) = {
            let life = vm.life.lock();
            (
                life.machine.ram.clone(),
                life.ram_size,
                life.machine.disk.clone(),
            )
        };
        // A writable disk: from this instant on, what the VM overwrites is kept.
        let disk = match vm_disk {
            None => None,
            Some(d) if d.read_only() => None,
            Some(VmDisk::Shared { backend, .. }) => {
                let record = backend.track(DISK_RECORD_MAX, disk_budget());
                Some((backend, record))
            }
            Some(VmDisk::Ram(_)) => {
                return Err(format!(
                    "VM {} has a writable RAM-backed disk, whose contents a snapshot cannot hold \
                     yet",
                    vm.name
                ))
            }
            Some(VmDisk::View(_)) => {
                return Err(format!(
                    "VM {} is a clone with a disk view, which a snapshot cannot hold yet",
                    vm.name
                ))
            }
        };
        let mut b = Builder::new();
        let add = |b: &mut Builder, name: &str, data: Vec<u8>| {
            b.add(name, data).map_err(|e| format!("{e}"))
        };
        {
            let shared = vm.shared.lock();
            let shape = Shape {
                vcpus: vm.slots.len() as u32,
                memory_bytes: ram_size,
                devices: shared
                    .platform
                    .device_names()
                    .into_iter()
                    .map(String::from)
                    .collect(),
            };
            add(&mut b, Shape::SECTION, shape.to_bytes())?;
            let devices = shared
                .save_devices()
                .map_err(|e| format!("its devices: {e}"))?;
            add(&mut b, "devices", devices)?;
            add(&mut b, "run", shared.run_state())?;
        }
        // The instant: the VM's time and the host's TSC, so that a restore can make
        // both go on from here.
        let mut clock = Vec::new();
        clock.extend_from_slice(&vm.now_ns().to_le_bytes());
        clock.extend_from_slice(&time::rdtsc().to_le_bytes());
        add(&mut b, "clock", clock)?;
        for (i, slot) in vm.slots.iter().enumerate() {
            let mut slot = slot.lock();
            let slot = slot.as_mut().ok_or("a vCPU is still running")?;
            add(
                &mut b,
                &section_cpu(i),
                slot.ctx.vcpu.save_state().to_bytes().to_vec(),
            )?;
            add(&mut b, &section_soft(i), slot.ctx.soft_state())?;
        }
        let state = b.finish();
        let copy = memory::alloc_for_copy(ram_size, 4096).map_err(|e| match e {
            crate::memory_map::AllocError::OutOfMemory { largest_free, .. } => format!(
                "not enough free memory for a copy of its {} KiB of RAM (the largest free \
                 block has {} KiB)",
                ram_size / 1024,
                largest_free / 1024
            ),
            e => format!("cannot take memory for a copy of its RAM: {e:?}"),
        })?;
        let copy_began = time::uptime_micros();
        // SAFETY: `copy` is `ram_size` bytes the frame allocator just gave us (not
        // guest RAM); every vCPU of the VM is in its slot, none runs.
        unsafe { ram.save_all(memory::phys_to_virt(copy), &mut still_alive) };
        let copy_us = time::uptime_micros() - copy_began;
        let stored = Stored {
            vm: vm.name.clone(),
            tag: tag.into(),
            state,
            ram: Some(Arc::new(RamCopy {
                pa: copy,
                size: ram_size,
            })),
            disk,
            ram_size,
            taken_us: Some(time::uptime_micros()),
            on_disk: false,
        };
        Ok((stored, copy_us))
    }

    /// VM `v`'s snapshot `tag`, its state and RAM read from the disk's area if
    /// they are only there (a snapshot of an earlier run: its state is read and
    /// checked before its RAM, which is checked against the index's SHA-256).
    pub(super) fn loaded_snapshot(&self, v: usize, tag: &str) -> Result<Stored, String> {
        let vm = &self.vms[v];
        let mut snapshots = self.snapshots.lock();
        let at = snapshots
            .iter()
            .position(|s| s.vm == vm.name && s.tag == tag)
            .ok_or_else(|| {
                format!(
                    "VM {} has no snapshot {tag:?} (snapshots lists them)",
                    vm.name
                )
            })?;
        if snapshots[at].state.is_empty() {
            self.load_state(&mut snapshots[at])?;
        }
        snapshot::read(&snapshots[at].state).map_err(|e| format!("{e}"))?;
        if snapshots[at].ram.is_none() {
            self.load_ram(&mut snapshots[at])?;
        }
        Ok(snapshots[at].share())
    }

    /// `restore NAME TAG`: the VM continues from the snapshot's instant (a paused
    /// VM stays paused; a stopped one is started first).
    pub(super) fn restore_snapshot(&self, v: usize, tag: &str) -> Result<String, String> {
        let vm = &self.vms[v];
        // Its own handle: the RAM copy stays while it is used, whatever happens to
        // the list.
        let stored = self.loaded_snapshot(v, tag)?;
        let stored = &stored;
        let snap = snapshot::read(&stored.state).map_err(|e| format!("{e}"))?;
        let shape = Shape::from_bytes(snap.get(Shape::SECTION).map_err(|e| format!("{e}"))?)
            .map_err(|e| format!("{e}"))?;
        let (stopped, ram_size) = {
            let life = vm.life.lock();
            (life.stop.is_some(), life.ram_size)
        };
        // What a stopped VM can be checked for before it is started again.
        if shape.vcpus as usize != vm.slots.len() || shape.memory_bytes != ram_size {
            return Err(format!(
                "{}",
                snapshot::Error::Shape(format!(
                    "{} vCPUs and {} KiB in the snapshot, {} and {} KiB in VM {}",
                    shape.vcpus,
                    shape.memory_bytes / 1024,
                    vm.slots.len(),
                    ram_size / 1024,
                    vm.name
                ))
            ));
        }
        let began = time::uptime_micros();
        if stopped {
            self.start_again(v)?;
        }
        let was_running = match self.quiesce(v) {
            Ok(r) => r,
            Err(e) => {
                if stopped {
                    self.stop(v, format!("its restore failed: {e}"));
                }
                return Err(e);
            }
        };
        let result = self.apply(v, &snap, stored, &shape);
        if result.is_err() && stopped {
            self.stop(v, String::from("its restore failed"));
            return result.map(|_| String::new());
        }
        let copy_ms = result.as_ref().map_or(0, |us| us / 1000);
        // A stopped VM was started to be restored: it runs, as `start` would.
        self.unquiesce(v, was_running || stopped);
        result?;
        let ms = (time::uptime_micros() - began) / 1000;
        let when = match stored.taken_us {
            Some(t) => format!("taken {} s ago", (began - t) / 1_000_000),
            None => String::from("from the disk's snapshot area"),
        };
        Ok(format!(
            "VM {} restored to snapshot {tag:?} ({when}) in {ms} ms (RAM copy {copy_ms} ms)",
            vm.name
        ))
    }

    /// Builds fresh devices and vCPUs from `snap` and, only if all of it fits,
    /// puts them and the RAM copy in place of VM `v`'s (whose vCPUs are all off the
    /// processors). Returns how long the RAM copy took (µs).
    pub(super) fn apply(
        &self,
        v: usize,
        snap: &snapshot::Snapshot,
        stored: &Stored,
        shape: &Shape,
    ) -> Result<u64, String> {
        self.apply_with(v, snap, stored, shape, true)
    }

    /// [`Machine::apply`]; `copy_ram` false for a clone, whose RAM is the
    /// snapshot's copy already (shared copy-on-write).
    pub(super) fn apply_with(
        &self,
        v: usize,
        snap: &snapshot::Snapshot,
        stored: &Stored,
        shape: &Shape,
        copy_ram: bool,
    ) -> Result<u64, String> {
        let vm = &self.vms[v];
        let life = vm.life.lock();
        let here = Shape {
            vcpus: vm.slots.len() as u32,
            memory_bytes: life.ram_size,
            devices: vm
                .shared
                .lock()
                .platform
                .device_names()
                .into_iter()
                .map(String::from)
                .collect(),
        };
        shape.check(&here).map_err(|e| format!("{e}"))?;
        let get = |name: &str| snap.get(name).map_err(|e| format!("{e}"));
        // Fresh devices with the snapshot's state.
        let mut shared = VmShared::new(&vm.name, &life.machine, relay)?;
        shared
            .restore_devices(get("devices")?)
            .map_err(|e| format!("its devices: {e}"))?;
        shared.restore_run_state(get("run")?)?;
        // The VM's time and its vCPUs' TSCs go on from the snapshot's instant (its
        // devices' deadlines are in its time; the guest's TSC must not jump, nor go
        // back after a restart of the hypervisor).
        let clock = get("clock")?;
        if clock.len() != 16 {
            return Err(String::from("the snapshot's clock section is malformed"));
        }
        let word = |at: usize| {
            let mut w = [0; 8];
            w.copy_from_slice(&clock[at..at + 8]);
            u64::from_le_bytes(w)
        };
        let (guest_ns, host_tsc) = (word(0), word(8));
        let tsc_now = time::rdtsc();
        let offset = guest_ns.wrapping_sub(time::uptime_ns());
        let tsc_delta = host_tsc.wrapping_sub(tsc_now);
        // Fresh vCPUs with the snapshot's state.
        let states = (0..vm.slots.len())
            .map(|i| {
                let mut s = CpuState::from_bytes(get(&section_cpu(i))?)
                    .map_err(|e| format!("vCPU {i}: {e}"))?;
                s.msrs.tsc_offset = s.msrs.tsc_offset.wrapping_add(tsc_delta);
                Ok(s)
            })
            .collect::<Result<Vec<_>, String>>()?;
        // The snapshot's RAM is all of it: pages the balloon took are backed again
        // (the restored balloon still counts them; the guest gives them back when
        // asked again), before the fresh vCPUs map the RAM.
        life.machine
            .ram
            .fill()
            .map_err(|e| format!("its RAM cannot be backed whole: {e}"))?;
        let mut backend = self.backend.lock();
        let mut fresh: Vec<VcpuSlot<B::Vcpu>> =
            create_vcpus(&mut **backend, &life.machine, &AP_START)?;
        let loaded =
            fresh
                .iter_mut()
                .zip(&states)
                .enumerate()
                .try_for_each(|(i, (slot, state))| {
                    // A fresh vCPU may still be current on this processor (VMX): as at
                    // the end of a slice, so that any processor may load and run it.
                    slot.ctx.vcpu.unload();
                    slot.ctx
                        .vcpu
                        .load_state(state)
                        .map_err(|e| format!("vCPU {i}: {e}"))?;
                    slot.ctx.restore_soft_state(get(&section_soft(i))?)?;
                    // An AP restored running has run: INIT gives it a fresh vCPU.
                    slot.ran = true;
                    Ok::<(), String>(())
                });
        if let Err(e) = loaded {
            for slot in fresh {
                backend.destroy_vcpu(&mut KernelMemory, slot.ctx.vcpu);
            }
            return Err(e);
        }
        // The RAM copy's length comes from the disk's index for a snapshot of an
        // earlier run: it must be the VM's RAM size, whatever the packed state's
        // shape said.
        let ram = match stored.ram_pa() {
            _ if !copy_ram => Ok(0),
            Some(pa) if stored.ram_size == life.ram_size => Ok(pa),
            Some(_) => Err(format!(
                "the snapshot holds {} KiB of RAM, VM {} has {} KiB",
                stored.ram_size / 1024,
                vm.name,
                life.ram_size / 1024
            )),
            None => Err(String::from("the snapshot's RAM is not loaded")),
        };
        let ram_pa = match ram {
            Ok(pa) => pa,
            Err(e) => {
                for slot in fresh {
                    backend.destroy_vcpu(&mut KernelMemory, slot.ctx.vcpu);
                }
                return Err(e);
            }
        };
        // Its disk goes back to the snapshot's instant (before anything else of
        // the VM changes; a disk error leaves it partly rolled back, and says so).
        if let (true, Some((disk, record))) = (copy_ram, &stored.disk) {
            let same = matches!(&life.machine.disk,
                Some(VmDisk::Shared { backend: b, .. }) if b.same(disk));
            let rolled = if !same {
                Err(String::from(
                    "its disk was opened anew since the snapshot (another VM used its \
                     partition): the snapshot's disk state no longer applies",
                ))
            } else {
                disk.roll_back(record).map_err(|e| match e {
                    RollBackError::Overflowed => format!(
                        "more than {} MiB of its disk was overwritten after the snapshot, or the \
                         hypervisor ran short of memory for the record: its disk cannot be \
                         rolled back",
                        DISK_RECORD_MAX >> 20
                    ),
                    RollBackError::Disk(e) => format!(
                        "rolling its disk back failed ({e:?}): the disk may be partly rolled back"
                    ),
                })
            };
            match rolled {
                Ok(blocks) => log::info!(
                    "vm {}: disk rolled back to the snapshot ({} KiB rewritten)",
                    vm.name,
                    blocks * 4
                ),
                Err(e) => {
                    for slot in fresh {
                        backend.destroy_vcpu(&mut KernelMemory, slot.ctx.vcpu);
                    }
                    return Err(e);
                }
            }
        }
        // Everything fits: the VM becomes the snapshot.
        vm.clock_offset
            .store(offset, core::sync::atomic::Ordering::Relaxed);
        let copy_began = time::uptime_micros();
        // SAFETY: the snapshot's copy holds `ram_size` bytes (checked above), its
        // own allocation; the VM's vCPUs are all in their slots.
        let copied = if copy_ram {
            unsafe {
                life.machine
                    .ram
                    .load_all(memory::phys_to_virt(ram_pa), &mut still_alive)
            }
        } else {
            Ok(())
        };
        if let Err(e) = copied {
            // `fill` above backed everything; only a bug gets here.
            log::error!("vm {}: restoring its RAM: {e}", vm.name);
        }
        let copy_us = time::uptime_micros() - copy_began;
        {
            let mut old = vm.shared.lock();
            old.flush_console();
            *old = shared;
        }
        for (i, mut slot) in fresh.into_iter().enumerate() {
            let mut cell = vm.slots[i].lock();
            if let Some(old) = cell.take() {
                slot.ctx.stats = old.ctx.stats.clone();
                slot.cpu_tsc = old.cpu_tsc;
                slot.ran_on = old.ran_on;
                backend.destroy_vcpu(&mut KernelMemory, old.ctx.vcpu);
            }
            *cell = Some(slot);
        }
        Ok(copy_us)
    }

    /// `snapshots [NAME]`.
    pub(super) fn list_snapshots(&self, vm: Option<&str>) -> Vec<String> {
        let now = time::uptime_micros();
        let snapshots = self.snapshots.lock();
        let mut out = alloc::vec![format!(
            "{:<24} {:<32} {:>9}  {:<11}  AGE",
            "VM", "TAG", "SIZE", "WHERE"
        )];
        for s in snapshots.iter().filter(|s| vm.is_none_or(|n| n == s.vm)) {
            let place = match (s.ram.is_some(), s.on_disk) {
                (true, true) => "memory+disk",
                (true, false) => "memory",
                _ => "disk",
            };
            out.push(format!(
                "{:<24} {:<32} {:>9}  {:<11}  {}",
                s.vm,
                s.tag,
                operator::report::size_kib((s.ram_size + s.state.len() as u64) / 1024),
                place,
                s.taken_us.map_or(String::from("earlier run"), |t| {
                    operator::report::duration((now - t) / 1000)
                })
            ));
        }
        if out.len() == 1 {
            out.push(String::from("(none)"));
        }
        out
    }

    /// `delete-snapshot NAME TAG`.
    pub(super) fn delete_snapshot(&self, vm: &str, tag: &str) -> Result<String, String> {
        let mut snapshots = self.snapshots.lock();
        let at = snapshots
            .iter()
            .position(|s| s.vm == vm && s.tag == tag)
            .ok_or_else(|| format!("VM {vm} has no snapshot {tag:?}"))?;
        let s = snapshots.remove(at);
        let on_disk = s.on_disk;
        let size = if s.ram.is_some() {
            s.ram_size / 1024
        } else {
            0
        };
        s.free();
        let disk = match self.area.lock().as_mut() {
            Some(area) if on_disk => match area.delete(vm, tag) {
                Ok(_) => String::from(", and from the disk's snapshot area"),
                Err(e) => format!("; the disk's snapshot area still has it: {e}"),
            },
            _ => String::new(),
        };
        Ok(format!(
            "snapshot {tag:?} of VM {vm} deleted ({size} KiB of memory freed){disk}"
        ))
    }

    /// Reads a snapshot's packed state from the disk's area.
    fn load_state(&self, s: &mut Stored) -> Result<(), String> {
        let mut area = self.area.lock();
        let area = area
            .as_mut()
            .ok_or("it is on the disk, but the snapshot area is not open")?;
        let entry = area
            .index
            .find(&s.vm, &s.tag)
            .cloned()
            .ok_or("the disk's snapshot area no longer has it")?;
        s.state = area.read_state(&entry)?;
        Ok(())
    }

    /// Reads a snapshot's RAM from the disk's area into frames of its own.
    fn load_ram(&self, s: &mut Stored) -> Result<(), String> {
        let mut area = self.area.lock();
        let area = area
            .as_mut()
            .ok_or("its RAM is on the disk, but the snapshot area is not open")?;
        let entry = area
            .index
            .find(&s.vm, &s.tag)
            .cloned()
            .ok_or("the disk's snapshot area no longer has it")?;
        let pa = memory::alloc_for_copy(entry.ram_len, 4096).map_err(|e| {
            format!(
                "not enough free memory to read its {} KiB of RAM: {e:?}",
                entry.ram_len / 1024
            )
        })?;
        if let Err(e) = area.read_ram(&entry, pa) {
            memory::free(pa, entry.ram_len);
            return Err(e);
        }
        s.ram = Some(Arc::new(RamCopy {
            pa,
            size: entry.ram_len,
        }));
        Ok(())
    }
}
