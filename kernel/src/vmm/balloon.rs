//! A VM's memory balloon: the `virtio` crate's virtio-balloon device (virtio 1.2
//! §5.5) behind the virtio-pci transport at 00:02.0, on a backend that takes the
//! pages the guest gives up out of its RAM ([`GuestRam::take_page`]: out of every
//! vCPU's nested page tables, the frame back to the hypervisor's free pool once no
//! vCPU can reach it) and backs the pages it takes back with fresh zeroed frames;
//! and the operator's side: setting the target and reading where the balloon
//! stands.

use alloc::format;
use alloc::string::String;

use devices::{PciAddress, PciEffects, PciFunction};
use guestram::{RamError, PAGE};
use virtio::balloon::{BackendError, Balloon, BalloonBackend, BalloonConfig, Failed};
use virtio::VirtioPci;

use super::guest_ram::GuestRam;
use super::vm::VmShared;

/// Where the balloon sits on the VM's PCI bus (the disk is at 00:03.0, NICs from
/// 00:04.0).
pub const BALLOON_PCI_ADDRESS: PciAddress = PciAddress::new(0, 2, 0);

/// What a guest keeps whatever the target: enough to stay alive (Linux needs a
/// few tens of MiB), never more than its RAM.
const MIN_GUEST_BYTES: u64 = 32 << 20;

/// The balloon's backend: the VM's RAM.
pub struct RamBalloon {
    name: String,
    ram: GuestRam,
    /// The target as the operator last set it (pages), to say when it is reached.
    target: u64,
    /// The guest reached the target since it was set (said once).
    reached: bool,
}

impl RamBalloon {
    /// Tells the operator once the guest's balloon stands at the target.
    fn note_progress(&mut self) {
        let ballooned = self.ram.usage().ballooned / PAGE;
        if ballooned == self.target && !self.reached {
            self.reached = true;
            log::info!(
                "vm {} balloon at its target: {} MiB taken back, the guest keeps {} MiB",
                self.name,
                (ballooned * PAGE) >> 20,
                (self.ram.len() - ballooned * PAGE) >> 20
            );
        }
    }
}

impl BalloonBackend for RamBalloon {
    fn inflate(&mut self, pfns: &[u32]) -> Result<(), Failed> {
        let done = self.take(pfns);
        self.note_progress();
        done
    }

    fn deflate(&mut self, pfns: &[u32]) -> Result<(), Failed> {
        let done = self.give(pfns);
        self.note_progress();
        done
    }
}

impl RamBalloon {
    fn take(&mut self, pfns: &[u32]) -> Result<(), Failed> {
        for (index, &pfn) in pfns.iter().enumerate() {
            match self.ram.take_page(u64::from(pfn)) {
                // Absent already: a restored snapshot's balloon can name a page
                // the RAM never had back; it is gone either way.
                Ok(()) | Err(RamError::Absent(_)) => {}
                Err(_) => {
                    return Err(Failed {
                        index,
                        error: BackendError::Failed,
                    })
                }
            }
        }
        Ok(())
    }

    fn give(&mut self, pfns: &[u32]) -> Result<(), Failed> {
        for (index, &pfn) in pfns.iter().enumerate() {
            match self.ram.put_page(u64::from(pfn)) {
                // Backed already: a restore gave the whole RAM back.
                Ok(()) | Err(RamError::Backed(_)) => {}
                Err(RamError::OutOfMemory { .. }) => {
                    return Err(Failed {
                        index,
                        error: BackendError::NoMemory,
                    })
                }
                Err(_) => {
                    return Err(Failed {
                        index,
                        error: BackendError::Failed,
                    })
                }
            }
        }
        Ok(())
    }
}

/// The device as a PCI function.
pub type BalloonFunction = VirtioPci<Balloon<RamBalloon>, GuestRam>;

/// A balloon for VM `name` with RAM `ram`.
pub fn function(name: &str, ram: &GuestRam) -> BalloonFunction {
    let pages = ram.len() / PAGE;
    let config = BalloonConfig::new(ram.len()).min_guest_pages((MIN_GUEST_BYTES / PAGE).min(pages));
    let backend = RamBalloon {
        name: name.into(),
        ram: ram.clone(),
        target: 0,
        reached: true,
    };
    VirtioPci::new(Balloon::new(backend, config), ram.clone())
}

/// Where a VM's balloon stands, for `stats` and the `balloon` command.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// Bytes the host asked for.
    pub target: u64,
    /// Bytes the guest has given.
    pub ballooned: u64,
    /// The most the balloon may take.
    pub max: u64,
}

fn with_balloon<R>(
    shared: &mut VmShared,
    f: impl FnOnce(&mut BalloonFunction) -> (R, PciEffects),
) -> Option<R> {
    shared
        .platform
        .with_pci_function(
            BALLOON_PCI_ADDRESS,
            |function: &mut dyn PciFunction| match function
                .as_any_mut()
                .downcast_mut::<BalloonFunction>()
            {
                Some(b) => {
                    let (r, e) = f(b);
                    (Some(r), e)
                }
                None => (None, PciEffects::NONE),
            },
        )
        .flatten()
}

/// The VM's balloon, if it has one.
pub fn status(shared: &mut VmShared) -> Option<Status> {
    with_balloon(shared, |b| {
        let d = b.device();
        (
            Status {
                target: u64::from(d.target_pages()) * PAGE,
                ballooned: d.ballooned_pages() * PAGE,
                max: d.max_target_pages() * PAGE,
            },
            PciEffects::NONE,
        )
    })
}

/// The stop report's line on the VM's balloon, if it has one: the pages the
/// device took and gave back, what it holds still (given back with the VM's RAM)
/// and the page numbers and buffers it refused.
pub fn report(shared: &mut VmShared) -> Option<String> {
    with_balloon(shared, |b| {
        let d = b.device();
        let c = d.counters();
        let refused = c.bad_length
            + c.oversized
            + c.unreadable
            + c.duplicates
            + c.out_of_ram
            + c.already_ballooned
            + c.not_ballooned;
        (
            format!(
                "{} pages inflated, {} deflated, {} held at the stop; refused: {refused}, \
                 failed: {}",
                c.pages_inflated,
                c.pages_deflated,
                d.ballooned_pages(),
                c.inflate_failed + c.deflate_failed
            ),
            PciEffects::NONE,
        )
    })
}

/// `balloon NAME SIZE`: the guest should keep `keep` bytes of its RAM (as QEMU's
/// `balloon` and `xl mem-set` take it); the balloon's target is the rest. The
/// guest's driver inflates or deflates when it sees the new target.
pub fn set_memory(shared: &mut VmShared, ram_bytes: u64, keep: u64) -> Result<String, String> {
    if keep > ram_bytes {
        return Err(format!(
            "it has {} MiB of RAM: it cannot keep {} MiB",
            ram_bytes >> 20,
            keep >> 20
        ));
    }
    let pages = (ram_bytes - keep) / PAGE;
    let result = with_balloon(shared, |b| match b.set_target_pages(pages) {
        Ok(e) => {
            let backend = b.device_mut().backend_mut();
            backend.target = pages;
            backend.reached = false;
            backend.note_progress();
            (Ok(()), e)
        }
        Err(e) => (Err(e), PciEffects::NONE),
    })
    .ok_or_else(|| String::from("it has no balloon (`balloon = true` in its configuration)"))?;
    result.map_err(|e| {
        format!(
            "{e}: it keeps at least {} MiB",
            (ram_bytes - status(shared).map_or(0, |s| s.max)) >> 20
        )
    })?;
    Ok(format!(
        "balloon target {} MiB: the guest keeps {} MiB of {} MiB",
        (pages * PAGE) >> 20,
        keep >> 20,
        ram_bytes >> 20
    ))
}
