//! Which virtualization extension this machine offers, decided at run time from CPUID
//! (one image runs on both vendors). The vendor crates decode the details.

use alloc::format;
use alloc::string::String;
use raw_cpuid::CpuId;
use x86_64::registers::model_specific::Msr;

pub enum Extension {
    Vmx(vmx::caps::VmxCaps),
    Svm(svm::caps::SvmCaps),
}

impl Extension {
    pub fn name(&self) -> &'static str {
        match self {
            Extension::Vmx(_) => "VT-x",
            Extension::Svm(_) => "AMD-V",
        }
    }
}

pub struct CpuIdentity {
    pub vendor: String,
    pub brand: String,
    pub family: u8,
    pub model: u8,
}

pub fn identify() -> CpuIdentity {
    let cpuid = CpuId::new();
    let vendor = cpuid
        .get_vendor_info()
        .map(|v| String::from(v.as_str()))
        .unwrap_or_else(|| String::from("unknown"));
    let brand = cpuid
        .get_processor_brand_string()
        .map(|b| String::from(b.as_str().trim()))
        .unwrap_or_default();
    let (family, model) = cpuid
        .get_feature_info()
        .map(|f| (f.family_id(), f.model_id()))
        .unwrap_or((0, 0));
    CpuIdentity {
        vendor,
        brand,
        family,
        model,
    }
}

fn rdmsr(msr: u32) -> u64 {
    // SAFETY: the vendor crates only ask for MSRs whose existence CPUID established.
    unsafe { Msr::new(msr).read() }
}

/// Detects VT-x on Intel and AMD-V on AMD (and Hygon). The error says what is missing
/// and how to fix it.
pub fn detect(cpu: &CpuIdentity) -> Result<Extension, String> {
    let cpuid = CpuId::new();
    match cpu.vendor.as_str() {
        "GenuineIntel" => vmx::caps::detect(&cpuid, rdmsr)
            .map(Extension::Vmx)
            .map_err(|e| format!("VT-x unavailable: {e}")),
        "AuthenticAMD" | "HygonGenuine" => svm::caps::detect(&cpuid, rdmsr)
            .map(Extension::Svm)
            .map_err(|e| format!("AMD-V unavailable: {e}")),
        other => Err(format!(
            "CPU vendor {other:?} is neither Intel nor AMD: no VT-x or AMD-V to use"
        )),
    }
}
