//! Applies the transient-execution mitigations `vcpu::mitigation` decides: reads
//! CPUID and IA32_ARCH_CAPABILITIES once (the MSR only where CPUID enumerates it),
//! issues the indirect branch prediction barrier when a processor switches VMs, and
//! hands the VT-x backend its entry flush. The RSB refill after every exit lives in
//! the entry stubs themselves.

use core::arch::x86_64::{__cpuid, __cpuid_count};
use spin::Once;
use vcpu::mitigation::MSR_PRED_CMD;
use vcpu::mitigation::{leaf7_edx, CpuFacts, Mitigations, Vendor, MSR_ARCH_CAPABILITIES};
use x86_64::registers::model_specific::Msr;

use crate::smp;

static POLICY: Once<Mitigations> = Once::new();

/// This machine's mitigations, decided on the first call (the processors of one
/// machine are alike). `vendor` is the CPUID vendor string.
pub fn detect(vendor: &str) -> &'static Mitigations {
    POLICY.call_once(|| Mitigations::decide(&facts(vendor)))
}

fn facts(vendor: &str) -> CpuFacts {
    let vendor = match vendor {
        "GenuineIntel" => Vendor::Intel,
        "AuthenticAMD" | "HygonGenuine" => Vendor::Amd,
        _ => Vendor::Other,
    };
    let (leaf7_ebx, leaf7_edx) = if __cpuid(0).eax >= 7 {
        let r = __cpuid_count(7, 0);
        (r.ebx, r.edx)
    } else {
        (0, 0)
    };
    let ext8_ebx = if __cpuid(0x8000_0000).eax >= 0x8000_0008 {
        __cpuid(0x8000_0008).ebx
    } else {
        0
    };
    let arch_capabilities = (leaf7_edx & leaf7_edx::ARCH_CAPABILITIES != 0).then(|| {
        // SAFETY: CPUID.(7,0):EDX[29] says IA32_ARCH_CAPABILITIES exists; reading it
        // has no side effects.
        unsafe { Msr::new(MSR_ARCH_CAPABILITIES).read() }
    });
    CpuFacts {
        vendor,
        leaf7_ebx,
        leaf7_edx,
        ext8_ebx,
        arch_capabilities,
    }
}

/// Called on the processor that is about to enter a vCPU of VM `vm` (once per time
/// slice): when it last ran a different VM (or none), an IBPB keeps that VM's
/// branch predictions from steering this one's, where the processor has IBPB.
pub fn before_vm(vm: usize) {
    let previous = smp::switch_vm(vm);
    if previous != vm && POLICY.get().is_some_and(|m| m.ibpb_on_vm_switch.active()) {
        // SAFETY: CPUID enumerates IBPB (`Mitigations::decide`), so IA32_PRED_CMD
        // exists; writing bit 0 only issues the barrier.
        unsafe { Msr::new(MSR_PRED_CMD).write(1) };
    }
}
