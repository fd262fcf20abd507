//! Keeping guests off QEMU's boot processor under multi-threaded TCG.
//!
//! QEMU (7.2; 8.1 still does) keeps IGNNE in the boot processor's `hflags2`, the
//! word that also holds its nested-paging, GIF and virtual-interrupt flags, and any
//! processor that loads an x87 status word with ES clear (FXRSTOR, XRSTOR, FRSTOR,
//! FLDENV) clears that bit from its own thread with a plain read-modify-write
//! (README, Known problems). The hypervisor's own FXRSTOR avoids it
//! (`vcpu::fpu::fxrstor`), but a guest that uses x87/SSE (Linux restores a task's
//! FPU state at every switch) runs those instructions itself, without an exit.
//! The write-back is harmful only when it races a change the boot processor makes
//! to the same word, and only VMRUN, #VMEXIT, CLGI and STGI change it: so a boot
//! processor that runs no guest has nothing to lose, and the other processors may
//! run any guest in parallel, one host thread each.
//!
//! So for a QEMU run under multi-threaded TCG with a guest that may load x87 state,
//! xtask gives the machine one processor more than asked for and lets no VM run on
//! processor 0 (the VMs' `cpus`); a VM pinned to processor 0 by its configuration
//! keeps the old remedy, every processor in one TCG thread.

use crate::vms::{ImageFormat, VmDef};
use std::path::Path;

/// The processors of the test and bench machines that run two Linux VMs under
/// multi-threaded TCG: the spared boot processor and one for each VM.
pub const SPARED_CPUS: u32 = 3;

/// How a multi-processor QEMU run under TCG shares its processors with the guests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Nothing to do: one processor, no guest that may load x87 state, or one TCG
    /// thread anyway.
    AsAsked,
    /// `cpus` processors (one more than asked for); the VMs run on 1 to `cpus - 1`.
    SpareBootProcessor { cpus: u32 },
    /// A VM pinned to processor 0 may load x87 state: one TCG thread for all.
    SingleThread { vm: String },
}

/// Whether `vm` may load x87 state itself: Linux and Multiboot kernels, and any
/// image but the tiny guests xtask builds (`guests/`, a soft-float target with no
/// x87 or SSE instruction) found in `own_guests`.
pub fn may_load_x87(vm: &VmDef, own_guests: &Path) -> bool {
    match vm.format {
        ImageFormat::Linux | ImageFormat::Multiboot => true,
        ImageFormat::Tiny | ImageFormat::Auto => !vm.image.starts_with(own_guests),
    }
}

/// The plan for `vms` on a machine of `cpus` processors under multi-threaded TCG
/// (the caller knows that: not KVM, not `HV_TCG_THREAD=single`).
pub fn plan(vms: &[VmDef], cpus: u32, own_guests: &Path) -> Plan {
    if cpus < 2 || !vms.iter().any(|v| may_load_x87(v, own_guests)) {
        return Plan::AsAsked;
    }
    match vms.iter().find(|v| v.cpus.contains(&0)) {
        Some(vm) => Plan::SingleThread {
            vm: vm.name.clone(),
        },
        None => Plan::SpareBootProcessor { cpus: cpus + 1 },
    }
}

/// Applies [`Plan::SpareBootProcessor`]: every VM that may run anywhere gets
/// processors 1 to `cpus - 1`; a VM pinned by its configuration keeps its set
/// (which, by the plan, has no processor 0).
pub fn keep_off_boot_processor(vms: &mut [VmDef], cpus: u32) {
    for vm in vms.iter_mut().filter(|v| v.cpus.is_empty()) {
        vm.cpus = (1..cpus).collect();
    }
}

/// What xtask says about the plan when QEMU starts.
pub fn describe(plan: &Plan) -> Option<String> {
    match plan {
        Plan::AsAsked => None,
        Plan::SpareBootProcessor { cpus } => Some(format!(
            "multi-threaded TCG: the machine has {cpus} processors and processor 0 runs no \
             guest (QEMU's boot-processor race with guests' x87 loads, README Known \
             problems); the VMs run on 1 to {}",
            cpus - 1
        )),
        Plan::SingleThread { vm } => Some(format!(
            "one TCG thread: VM {vm} is pinned to processor 0, which under multi-threaded \
             TCG must run no guest that loads x87 state (README Known problems)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(name: &str, format: ImageFormat, image: &str) -> VmDef {
        let mut v = VmDef::new(name, image, 65536);
        v.format = format;
        v
    }

    #[test]
    fn guests_that_may_load_x87_state() {
        let own = Path::new("/t/hv/guests");
        assert!(may_load_x87(
            &vm("l", ImageFormat::Linux, "/t/hv/linux/bzImage"),
            own
        ));
        assert!(may_load_x87(
            &vm("m", ImageFormat::Multiboot, "/t/hv/guests/mb32.elf"),
            own
        ));
        assert!(!may_load_x87(
            &vm("h", ImageFormat::Tiny, "/t/hv/guests/hello64.elf"),
            own
        ));
        assert!(!may_load_x87(
            &vm("h", ImageFormat::Auto, "/t/hv/guests/hello64.elf"),
            own
        ));
        // Someone else's ELF, even as a tiny guest, may use x87 or SSE.
        assert!(may_load_x87(
            &vm("x", ImageFormat::Tiny, "/home/me/kernel.elf"),
            own
        ));
    }

    #[test]
    fn plans() {
        let own = Path::new("/t/hv/guests");
        let linux = vm("linux", ImageFormat::Linux, "/t/bzImage");
        let tiny = vm("hello64", ImageFormat::Tiny, "/t/hv/guests/hello64.elf");
        assert_eq!(plan(std::slice::from_ref(&tiny), 2, own), Plan::AsAsked);
        assert_eq!(plan(&[linux.clone(), tiny.clone()], 1, own), Plan::AsAsked);
        assert_eq!(
            plan(&[linux.clone(), tiny.clone()], 2, own),
            Plan::SpareBootProcessor { cpus: 3 }
        );
        // Any VM pinned to processor 0 (even one without x87 code) makes the boot
        // processor run VMRUN, which another processor's guest may race.
        let mut pinned_tiny = tiny.clone();
        pinned_tiny.cpus = vec![0];
        assert_eq!(
            plan(&[linux.clone(), pinned_tiny], 2, own),
            Plan::SingleThread {
                vm: "hello64".into()
            }
        );
    }

    #[test]
    fn vms_that_may_run_anywhere_leave_processor_0() {
        let mut vms = vec![
            vm("a", ImageFormat::Linux, "/t/bzImage"),
            vm("b", ImageFormat::Linux, "/t/bzImage"),
        ];
        vms[1].cpus = vec![2];
        keep_off_boot_processor(&mut vms, 3);
        assert_eq!(vms[0].cpus, [1, 2]);
        assert_eq!(vms[1].cpus, [2]);
        assert!(describe(&Plan::SpareBootProcessor { cpus: 3 })
            .unwrap()
            .contains("the VMs run on 1 to 2"));
        assert_eq!(describe(&Plan::AsAsked), None);
    }
}
