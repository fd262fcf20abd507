//! A VM's RAM as the hypervisor reaches it ([`GuestRam`]): the `guestram` map of
//! which host frame backs each guest page, behind the VM's own lock, with checked,
//! volatile accessors for device DMA (virtio rings and buffers) and for reading guest
//! instructions and page tables; and the protocol by which a page taken from a
//! running VM (a balloon inflation) leaves every vCPU's nested page tables before
//! its frame is reused (`guestram::sync`).
//!
//! Generic over nothing hardware: host frames come through [`RamHost`], which the
//! kernel backs with its frame allocator and the host tests with a buffer.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use guestram::sync::{TlbSync, UnmapLog};
use guestram::{Frames, RamError, RamMap, PAGE};
use spin::Mutex;
use vcpu::{HostMemory, Vcpu};

use super::guest_walk::GuestMemory;

/// Host memory services the RAM needs: frames for pages given back to a guest and
/// for freeing taken ones, and the table memory of nested page-table changes.
pub trait RamHost: Sync {
    /// Where host-physical 0 is mapped (host-physical memory is mapped linearly).
    fn virt_base(&self) -> usize;
    /// A zeroed 4 KiB frame.
    fn alloc_page(&self) -> Option<u64>;
    fn free(&self, hpa: u64, len: u64);
    /// Runs `f` with the memory nested page tables are allocated from.
    fn with_tables(&self, f: &mut dyn FnMut(&mut dyn HostMemory));
}

/// A host that has no memory to give (host tests of devices, RAM held elsewhere).
pub struct NoHost(pub usize);

impl RamHost for NoHost {
    fn virt_base(&self) -> usize {
        self.0
    }
    fn alloc_page(&self) -> Option<u64> {
        None
    }
    fn free(&self, _: u64, _: u64) {}
    fn with_tables(&self, _: &mut dyn FnMut(&mut dyn HostMemory)) {}
}

/// [`Frames`] over a [`RamHost`] (4 KiB frames only: pages given back).
struct HostFrames<'a>(&'a dyn RamHost);

impl Frames for HostFrames<'_> {
    fn alloc(&mut self, size: u64, _align: u64) -> Option<u64> {
        (size == PAGE).then(|| self.0.alloc_page()).flatten()
    }
    fn free(&mut self, hpa: u64, size: u64) {
        self.0.free(hpa, size)
    }
}

struct Inner {
    map: RamMap,
    log: UnmapLog,
    /// What owns the frames shared copy-on-write (a snapshot's copy), kept while
    /// the map refers to them.
    keep: Option<Arc<dyn Send + Sync>>,
}

/// A page that became private under a vCPU's feet: a frame copied from the shared
/// one. Returns the new frame. Callers hold the map's lock.
fn unshare(
    inner: &mut Inner,
    sync: &TlbSync,
    barrier: &AtomicU64,
    host: &dyn RamHost,
    gfn: u64,
) -> Result<u64, RamError> {
    let Some(shared) = inner.map.frame(gfn) else {
        return Err(RamError::Absent(gfn));
    };
    let own = host.alloc_page().ok_or(RamError::OutOfMemory {
        size: inner.map.size(),
        backed: inner.map.backed_bytes(),
    })?;
    let base = host.virt_base();
    // SAFETY: both are whole page frames mapped linearly at `base`: the shared one
    // is kept alive by `keep` and never written, the new one was just allocated.
    unsafe {
        core::ptr::copy_nonoverlapping(
            (base + shared as usize) as *const u8,
            (base + own as usize) as *mut u8,
            PAGE as usize,
        )
    };
    if let Err(e) = inner.map.unshare(gfn, own) {
        host.free(own, PAGE);
        return Err(e);
    }
    // Every vCPU drops its read-only mapping of the shared frame; the writer
    // waits before it runs on until the others have ([`GuestRam::wait_for_others`]).
    let g = inner.log.record_unmap(gfn);
    sync.publish(g);
    barrier.fetch_max(g, Ordering::SeqCst);
    Ok(own)
}

struct Shared {
    inner: Mutex<Inner>,
    sync: TlbSync,
    /// Frames wait in the log for vCPUs to leave the guest.
    retired: AtomicBool,
    /// The latest generation that made a shared page private: no vCPU that wrote
    /// it may run on before every other vCPU dropped the shared frame.
    barrier: AtomicU64,
    size: u64,
    host: &'static dyn RamHost,
}

/// The VM's RAM as the hypervisor reaches it. Cloning shares it.
#[derive(Clone)]
pub struct GuestRam(Arc<Shared>);

impl core::fmt::Debug for GuestRam {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "GuestRam({} KiB)", self.0.size / 1024)
    }
}

/// A guest-physical range that is not all RAM with frames behind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unbacked {
    pub gpa: u64,
    pub len: u64,
}

impl core::fmt::Display for Unbacked {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "guest-physical {:#x}+{:#x} is not all backed RAM",
            self.gpa, self.len
        )
    }
}

/// What `stats` shows of a VM's memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RamUsage {
    pub size: u64,
    /// Host bytes backing it.
    pub backed: u64,
    /// Bytes taken by the balloon.
    pub ballooned: u64,
    /// Bytes still shared copy-on-write (a clone's).
    pub shared: u64,
    /// 2 MiB chunks still mapped whole.
    pub huge_chunks: usize,
}

impl GuestRam {
    /// RAM of `map` for a VM of `vcpus` vCPUs; frames come from and go back to
    /// `host`.
    pub fn new(map: RamMap, vcpus: usize, host: &'static dyn RamHost) -> Self {
        Self(Arc::new(Shared {
            size: map.size(),
            inner: Mutex::new(Inner {
                map,
                log: UnmapLog::default(),
                keep: None,
            }),
            sync: TlbSync::new(vcpus),
            retired: AtomicBool::new(false),
            barrier: AtomicU64::new(0),
            host,
        }))
    }

    /// RAM that is `len` bytes at `base` in the hypervisor's address space (host
    /// tests).
    ///
    /// # Safety
    /// `base..base + len` must stay readable and writable while the result lives,
    /// and belong to the VM alone.
    #[cfg(test)]
    pub unsafe fn contiguous(base: *mut u8, len: u64, vcpus: usize) -> Self {
        let host: &'static NoHost =
            alloc::boxed::Box::leak(alloc::boxed::Box::new(NoHost(base as usize)));
        let map = RamMap::contiguous(0, len).expect("a test RAM of whole pages");
        Self::new(map, vcpus, host)
    }

    /// Keeps `owner` (of the frames the map shares) alive as long as the map may
    /// refer to them.
    pub fn keep_alive(&self, owner: Arc<dyn Send + Sync>) {
        self.0.inner.lock().keep = Some(owner);
    }

    /// The RAM's size in bytes.
    pub fn len(&self) -> u64 {
        self.0.size
    }

    pub fn is_empty(&self) -> bool {
        self.0.size == 0
    }

    /// The backed runs, for building a vCPU's nested page tables.
    pub fn mappings(&self) -> Vec<vcpu::GuestMapping> {
        self.0
            .inner
            .lock()
            .map
            .runs()
            .into_iter()
            .map(|r| vcpu::GuestMapping {
                gpa: r.gpa,
                hpa: r.hpa,
                len: r.len,
                // A write to a shared page faults and makes it private.
                writable: !r.shared,
                executable: true,
            })
            .collect()
    }

    pub fn usage(&self) -> RamUsage {
        let inner = self.0.inner.lock();
        RamUsage {
            size: inner.map.size(),
            backed: inner.map.backed_bytes(),
            ballooned: inner.map.absent_pages() * PAGE,
            shared: inner.map.shared_pages() * PAGE,
            huge_chunks: inner.map.huge_chunks(),
        }
    }

    /// The host frame of the guest page holding `gpa`, if it has one.
    pub fn frame(&self, gpa: u64) -> Option<u64> {
        self.0.inner.lock().map.frame(gpa / PAGE)
    }

    /// Copies between guest RAM and `host` (`len` bytes), piece by piece along the
    /// host frames; fails without copying anything if some page is missing.
    fn copy(&self, gpa: u64, host: *mut u8, len: usize, to_guest: bool) -> Result<(), Unbacked> {
        let err = Unbacked {
            gpa,
            len: len as u64,
        };
        let mut inner = self.0.inner.lock();
        // Every page present first: a copy is all or nothing.
        if !inner.map.backed(gpa, len as u64) {
            return Err(err);
        }
        if to_guest {
            self.unshare_range(&mut inner, gpa, gpa + len as u64)
                .map_err(|_| err)?;
        }
        for_each_span(
            &inner.map,
            self.0.host.virt_base(),
            gpa,
            len,
            |frames, done, n| {
                // SAFETY: `n` bytes of host frames backing this VM's RAM, kept while the
                // map's lock is held; `host` is the caller's buffer of `len` bytes, not
                // guest RAM.
                unsafe { copy_volatile(frames, host.add(done), n, to_guest) }
            },
        );
        Ok(())
    }

    /// Makes the shared pages of `[gpa, end)` private before the hypervisor writes
    /// there (a device's DMA, an emulated instruction, an image load): the shared
    /// frames belong to a snapshot and every clone of it. vCPUs inside the guest
    /// are kicked by the run loop and drop the shared frame at their next entry.
    fn unshare_range(&self, inner: &mut Inner, gpa: u64, end: u64) -> Result<(), RamError> {
        if inner.map.shared_pages() == 0 {
            return Ok(());
        }
        let mut gfn = gpa / PAGE;
        while gfn * PAGE < end {
            if inner.map.is_shared(gfn) {
                unshare(inner, &self.0.sync, &self.0.barrier, self.0.host, gfn)?;
            }
            gfn += 1;
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `gpa`.
    pub fn read_bytes(&self, gpa: u64, buf: &mut [u8]) -> Result<(), Unbacked> {
        self.copy(gpa, buf.as_mut_ptr(), buf.len(), false)
    }

    /// Writes `data` at `gpa`.
    pub fn write_bytes(&self, gpa: u64, data: &[u8]) -> Result<(), Unbacked> {
        self.copy(gpa, data.as_ptr() as *mut u8, data.len(), true)
    }

    /// Writes `data` at `gpa` with plain copies: loading an image, while no vCPU
    /// of the VM exists or runs.
    pub fn load(&self, gpa: u64, data: &[u8]) -> Result<(), Unbacked> {
        let err = Unbacked {
            gpa,
            len: data.len() as u64,
        };
        let mut inner = self.0.inner.lock();
        if !inner.map.backed(gpa, data.len() as u64) {
            return Err(err);
        }
        self.unshare_range(&mut inner, gpa, gpa + data.len() as u64)
            .map_err(|_| err)?;
        let base = self.0.host.virt_base();
        for_each_span(&inner.map, base, gpa, data.len(), |frames, done, n| {
            // SAFETY: `n` bytes of this VM's frames; no vCPU runs, so nothing writes
            // them concurrently; `data` is the hypervisor's.
            unsafe { core::ptr::copy_nonoverlapping(data.as_ptr().add(done), frames, n) }
        });
        Ok(())
    }

    /// Copies all of the RAM to `dst` (`len()` bytes), pages the balloon holds as
    /// zeros; `progress` runs between pieces (the copy of a large VM is long).
    ///
    /// # Safety
    /// `dst` is valid for `len()` bytes of hypervisor memory, not guest RAM; no
    /// vCPU of the VM runs (a snapshot quiesces it), so plain copies are exact.
    pub unsafe fn save_all(&self, dst: *mut u8, progress: &mut dyn FnMut()) {
        let runs = self.0.inner.lock().map.runs();
        let base = self.0.host.virt_base();
        let mut at = 0u64;
        for r in runs.iter().copied().chain(core::iter::once(guestram::Run {
            gpa: self.0.size,
            hpa: 0,
            len: 0,
            shared: false,
        })) {
            // SAFETY (all three): inside `dst`'s `len()` bytes (runs lie in the
            // RAM); the run's frames belong to this VM and are mapped at `base`.
            unsafe {
                core::ptr::write_bytes(dst.add(at as usize), 0, (r.gpa - at) as usize);
            }
            let mut done = 0;
            while done < r.len {
                let n = (r.len - done).min(16 << 20);
                unsafe {
                    core::ptr::copy_nonoverlapping(
                        (base + (r.hpa + done) as usize) as *const u8,
                        dst.add((r.gpa + done) as usize),
                        n as usize,
                    )
                };
                done += n;
                progress();
            }
            at = r.gpa + r.len;
        }
    }

    /// Backs every page and copies `len()` bytes from `src` over the RAM.
    ///
    /// # Safety
    /// As [`GuestRam::save_all`], with `src` read.
    pub unsafe fn load_all(
        &self,
        src: *const u8,
        progress: &mut dyn FnMut(),
    ) -> Result<(), RamError> {
        self.fill()?;
        let runs = {
            let mut inner = self.0.inner.lock();
            // A clone restored: its shared pages become its own before they are
            // overwritten (the shared frames are a snapshot's).
            let size = self.0.size;
            self.unshare_range(&mut inner, 0, size)?;
            inner.map.runs()
        };
        let base = self.0.host.virt_base();
        for r in runs {
            let mut done = 0;
            while done < r.len {
                let n = (r.len - done).min(16 << 20);
                // SAFETY: see `save_all`.
                unsafe {
                    core::ptr::copy_nonoverlapping(
                        src.add((r.gpa + done) as usize),
                        (base + (r.hpa + done) as usize) as *mut u8,
                        n as usize,
                    )
                };
                done += n;
                progress();
            }
        }
        Ok(())
    }

    /// Writes zeros over all of the RAM (a restart).
    pub fn zero(&self) {
        let inner = self.0.inner.lock();
        let base = self.0.host.virt_base();
        for r in inner.map.runs() {
            // SAFETY: the run is this VM's frames (see `copy`); no vCPU of it runs
            // while it is reloaded.
            unsafe {
                core::ptr::write_bytes((base + r.hpa as usize) as *mut u8, 0, r.len as usize)
            };
        }
    }

    /// Takes guest page `gfn` away (balloon inflation): out of the map now, out of
    /// every vCPU's tables before its next entry, its frame freed once no vCPU
    /// inside the guest can reach it.
    pub fn take_page(&self, gfn: u64) -> Result<(), RamError> {
        {
            let mut inner = self.0.inner.lock();
            let (hpa, shared) = inner.map.take_page(gfn)?;
            // A shared frame stays its owner's: only the mapping goes.
            let g = if shared {
                inner.log.record_unmap(gfn)
            } else {
                self.0.retired.store(true, Ordering::SeqCst);
                inner.log.record(gfn, hpa)
            };
            self.0.sync.publish(g);
        }
        self.reclaim();
        Ok(())
    }

    /// Gives guest page `gfn` a fresh zeroed frame (balloon deflation); vCPUs map
    /// it when they first touch it ([`GuestRam::frame`] on their nested page fault).
    pub fn put_page(&self, gfn: u64) -> Result<(), RamError> {
        let mut inner = self.0.inner.lock();
        if inner.map.frame(gfn).is_some() {
            return Err(RamError::Backed(gfn));
        }
        let size = inner.map.size();
        let hpa = self.0.host.alloc_page().ok_or(RamError::OutOfMemory {
            size,
            backed: inner.map.backed_bytes(),
        })?;
        inner
            .map
            .put_page(gfn, hpa)
            .inspect_err(|_| self.0.host.free(hpa, PAGE))
    }

    /// Backs every taken page again (a restart, a restore: the guest owns all its
    /// RAM). vCPUs map the pages on first touch.
    pub fn fill(&self) -> Result<u64, RamError> {
        let mut inner = self.0.inner.lock();
        inner.map.fill(&mut HostFrames(self.0.host))
    }

    /// Frees the frames no vCPU inside the guest can reach any more and forgets
    /// what every vCPU has unmapped.
    pub fn reclaim(&self) {
        if !self.0.retired.load(Ordering::SeqCst) {
            return;
        }
        let mut inner = self.0.inner.lock();
        for hpa in inner.log.reusable(self.0.sync.safe_generation()) {
            self.0.host.free(hpa, PAGE);
        }
        let oldest = self.0.sync.oldest_unapplied();
        inner.log.trim(oldest);
        self.0
            .retired
            .store(inner.log.retired_len() > 0, Ordering::SeqCst);
    }

    /// vCPU `i` is about to enter the guest: pages taken since it last entered
    /// leave its tables first (the backend then flushes at this entry).
    pub fn enter<V: Vcpu>(&self, i: usize, vcpu: &mut V) -> Result<(), String> {
        match self.0.sync.enter(i) {
            Some(g) => self.apply(i, g, vcpu),
            None => Ok(()),
        }
    }

    /// Pages were taken since vCPU `i` last entered: its tables must drop them at
    /// its next entry ([`GuestRam::enter`]) before it runs on.
    pub fn needs_apply(&self, i: usize) -> bool {
        self.0.sync.applied_by(i) < self.0.sync.generation()
    }

    /// vCPU `i` left the guest.
    pub fn left(&self, i: usize) {
        self.0.sync.left(i);
        self.reclaim();
    }

    /// Brings vCPU `i`, which is outside the guest, up to date (so the log need not
    /// keep pages for a vCPU that does not run).
    pub fn update_idle<V: Vcpu>(&self, i: usize, vcpu: &mut V) -> Result<(), String> {
        let g = self.0.sync.generation();
        if self.0.sync.applied_by(i) < g {
            self.apply(i, g, vcpu)?;
        }
        Ok(())
    }

    /// Some vCPU has pages to unmap still (see [`GuestRam::update_idle`]).
    pub fn unmaps_pending(&self) -> bool {
        self.0.sync.oldest_unapplied() < self.0.sync.generation()
    }

    /// vCPU `i` is new, built from the map as it is now.
    pub fn fresh_vcpu(&self, i: usize) {
        self.0.sync.reset_vcpu(i);
    }

    fn apply<V: Vcpu>(&self, i: usize, g: u64, vcpu: &mut V) -> Result<(), String> {
        let inner = self.0.inner.lock();
        let after = self.0.sync.applied_by(i);
        let mut result = Ok(());
        self.0.host.with_tables(&mut |mem| {
            for gfn in inner.log.pages_between(after, g) {
                if let Err(e) = vcpu.unmap_page(mem, gfn * PAGE) {
                    result = Err(alloc::format!(
                        "cannot unmap guest page {gfn:#x} from vCPU {i}: {e}"
                    ));
                    return;
                }
            }
        });
        result?;
        self.0.sync.applied(i, g);
        Ok(())
    }

    /// Maps the page of `gpa` into `vcpu`'s tables if the RAM has a frame for it
    /// (a page given back after a balloon deflation); `false` if it has none.
    ///
    /// A write to a page shared copy-on-write (mapped read-only) gives the VM its
    /// own copy of the page first: this vCPU maps the copy writable now, the
    /// others drop the shared frame before they run again, and this vCPU waits for
    /// that before its next entry (the run loop calls
    /// [`GuestRam::wait_for_others`]), so no vCPU reads the old frame after the
    /// write.
    pub fn map_on_fault<V: Vcpu>(
        &self,
        vcpu: &mut V,
        gpa: u64,
        write: bool,
    ) -> Result<bool, String> {
        let gfn = gpa / PAGE;
        let page = gfn * PAGE;
        let mut inner = self.0.inner.lock();
        if inner.map.frame(gfn).is_none() {
            return Ok(false);
        }
        let shared = inner.map.is_shared(gfn);
        let hpa = if shared && write {
            unshare(&mut inner, &self.0.sync, &self.0.barrier, self.0.host, gfn)
                .map_err(|e| alloc::format!("cannot give guest page {gfn:#x} its own copy: {e}"))?
        } else {
            inner.map.frame(gfn).unwrap_or_default()
        };
        let writable = !(shared && !write);
        let mut result = Ok(true);
        self.0.host.with_tables(&mut |mem| {
            // A read-only mapping of the shared frame may be there (the write
            // fault): replace it.
            let mapped = vcpu.map_page(mem, page, hpa, writable).or_else(|_| {
                vcpu.unmap_page(mem, page)?;
                vcpu.map_page(mem, page, hpa, writable)
            });
            if let Err(e) = mapped {
                result = Err(alloc::format!("cannot map guest page {gpa:#x}: {e}"));
            }
        });
        result
    }

    /// Before vCPU `i` enters again after it made a shared page private: waits,
    /// outside the guest, until every other vCPU is outside or has dropped the
    /// shared frame, kicking those inside (`kick` takes a vCPU mask).
    pub fn wait_for_others(&self, i: usize, kick: &mut dyn FnMut(u64)) {
        let barrier = self.0.barrier.load(Ordering::SeqCst);
        if barrier == 0 || self.0.sync.safe_generation_excluding(i) >= barrier {
            return;
        }
        let mut kicked = 0u64;
        while self.0.sync.safe_generation_excluding(i) < barrier {
            let inside = self.0.sync.inside_mask() & !(1 << i);
            if inside & !kicked != 0 {
                kick(inside & !kicked);
                kicked |= inside;
            }
            core::hint::spin_loop();
        }
    }

    /// Gives every frame back (the VM is gone: none of its vCPUs exists any more).
    /// Clones that devices still hold find no RAM from then on.
    pub fn release(&self) {
        let mut inner = self.0.inner.lock();
        for hpa in inner.log.reusable(u64::MAX) {
            self.0.host.free(hpa, PAGE);
        }
        inner.log = UnmapLog::default();
        inner.map.take_all().release(&mut HostFrames(self.0.host));
        inner.keep = None;
        self.0.retired.store(false, Ordering::SeqCst);
    }
}

/// Calls `f(host address, offset, bytes)` for each host-contiguous piece of the
/// guest range `[gpa, gpa + len)`, which the caller checked is backed
/// ([`RamMap::backed`]); `base` is where host-physical 0 is mapped.
fn for_each_span(
    map: &RamMap,
    base: usize,
    gpa: u64,
    len: usize,
    mut f: impl FnMut(*mut u8, usize, usize),
) {
    let mut done = 0usize;
    while done < len {
        let Some((hpa, n)) = map.span(gpa + done as u64, (len - done) as u64) else {
            return;
        };
        f((base + hpa as usize) as *mut u8, done, n as usize);
        done += n as usize;
    }
}

/// Copies `n` bytes between guest RAM and the hypervisor with volatile accesses
/// (8 bytes at a time where the guest side is aligned), never through a reference to
/// RAM the guest's vCPUs may be writing.
///
/// # Safety
/// `guest` must be valid for `n` bytes (checked by the caller against the map);
/// `host` is a hypervisor buffer of `n` bytes that does not overlap guest RAM.
unsafe fn copy_volatile(guest: *mut u8, host: *mut u8, n: usize, to_guest: bool) {
    let mut i = 0;
    while i < n {
        let g = guest.wrapping_add(i);
        let h = host.wrapping_add(i);
        if (g as usize).is_multiple_of(8) && n - i >= 8 {
            // SAFETY: 8 bytes in bounds on both sides; `g` is aligned, `h` is
            // accessed unaligned.
            unsafe {
                if to_guest {
                    (g as *mut u64).write_volatile((h as *const u64).read_unaligned());
                } else {
                    (h as *mut u64).write_unaligned((g as *const u64).read_volatile());
                }
            }
            i += 8;
        } else {
            // SAFETY: one byte in bounds on both sides.
            unsafe {
                if to_guest {
                    g.write_volatile(*h);
                } else {
                    *h = g.read_volatile();
                }
            }
            i += 1;
        }
    }
}

/// What virtio devices see of the VM's RAM: every range checked, copies volatile.
impl virtio::GuestMemory for GuestRam {
    fn check(&self, addr: u64, len: u64) -> Result<(), virtio::MemError> {
        if self.0.inner.lock().map.backed(addr, len) {
            Ok(())
        } else {
            Err(virtio::MemError { addr, len })
        }
    }
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), virtio::MemError> {
        self.read_bytes(addr, buf).map_err(|_| virtio::MemError {
            addr,
            len: buf.len() as u64,
        })
    }
    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), virtio::MemError> {
        self.write_bytes(addr, data).map_err(|_| virtio::MemError {
            addr,
            len: data.len() as u64,
        })
    }
}

impl GuestMemory for GuestRam {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), ()> {
        self.read_bytes(gpa, buf).map_err(|_| ())
    }
}

impl super::guest_walk::GuestMemoryMut for GuestRam {
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), ()> {
        self.write_bytes(gpa, data).map_err(|_| ())
    }
}
