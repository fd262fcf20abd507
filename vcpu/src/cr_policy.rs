//! Which values a guest may load into CR0, CR4, EFER and XCR0, judged against the
//! CPUID the *guest* sees: a bit whose feature the guest's CPUID hides is reserved
//! for it, and setting it raises #GP as on a processor without the feature (SDM Vol.
//! 3A 2.5 and 2.6, Vol. 2 "MOV - Move to/from Control Registers", "WRMSR", "XSETBV";
//! APM Vol. 2 3.1). Pure and vendor-neutral: the VMM core calls it for every
//! intercepted write and hands only accepted values to the backend, so a guest can
//! never put the VMCB/VMCS into a state VM entry refuses.
//!
//! Checks the processor makes before any intercept (CPL > 0 gives #GP, MOV CR in
//! virtual-8086 mode) are not repeated here: a write that reaches the hypervisor
//! came from CPL 0 (SDM Vol. 3C 26.1.1, APM Vol. 2 15.7.1).

use crate::{ControlRegs, Exception};

pub mod cr0 {
    pub const PE: u64 = 1 << 0;
    pub const MP: u64 = 1 << 1;
    pub const EM: u64 = 1 << 2;
    pub const TS: u64 = 1 << 3;
    pub const ET: u64 = 1 << 4;
    pub const NE: u64 = 1 << 5;
    pub const WP: u64 = 1 << 16;
    pub const AM: u64 = 1 << 18;
    pub const NW: u64 = 1 << 29;
    pub const CD: u64 = 1 << 30;
    pub const PG: u64 = 1 << 31;
    /// The defined bits; the other bits of 31:0 are reserved and a write to them is
    /// ignored (SDM Vol. 3A 2.5: software should write them as read; processors keep
    /// them 0), bits 63:32 must be 0.
    pub const DEFINED: u64 = PE | MP | EM | TS | ET | NE | WP | AM | NW | CD | PG;
}

pub mod cr4 {
    pub const VME: u64 = 1 << 0;
    pub const PVI: u64 = 1 << 1;
    pub const TSD: u64 = 1 << 2;
    pub const DE: u64 = 1 << 3;
    pub const PSE: u64 = 1 << 4;
    pub const PAE: u64 = 1 << 5;
    pub const MCE: u64 = 1 << 6;
    pub const PGE: u64 = 1 << 7;
    pub const PCE: u64 = 1 << 8;
    pub const OSFXSR: u64 = 1 << 9;
    pub const OSXMMEXCPT: u64 = 1 << 10;
    pub const UMIP: u64 = 1 << 11;
    pub const LA57: u64 = 1 << 12;
    pub const VMXE: u64 = 1 << 13;
    pub const SMXE: u64 = 1 << 14;
    pub const FSGSBASE: u64 = 1 << 16;
    pub const PCIDE: u64 = 1 << 17;
    pub const OSXSAVE: u64 = 1 << 18;
    pub const KL: u64 = 1 << 19;
    pub const SMEP: u64 = 1 << 20;
    pub const SMAP: u64 = 1 << 21;
    pub const PKE: u64 = 1 << 22;
    pub const CET: u64 = 1 << 23;
    pub const PKS: u64 = 1 << 24;
    pub const UINTR: u64 = 1 << 25;
    pub const LAM_SUP: u64 = 1 << 28;
    pub const FRED: u64 = 1 << 32;

    /// Every CR4 bit with its name, for reports and tests.
    pub const NAMES: [(u64, &str); 27] = [
        (VME, "vme"),
        (PVI, "pvi"),
        (TSD, "tsd"),
        (DE, "de"),
        (PSE, "pse"),
        (PAE, "pae"),
        (MCE, "mce"),
        (PGE, "pge"),
        (PCE, "pce"),
        (OSFXSR, "osfxsr"),
        (OSXMMEXCPT, "osxmmexcpt"),
        (UMIP, "umip"),
        (LA57, "la57"),
        (VMXE, "vmxe"),
        (SMXE, "smxe"),
        (FSGSBASE, "fsgsbase"),
        (PCIDE, "pcide"),
        (OSXSAVE, "osxsave"),
        (KL, "kl"),
        (SMEP, "smep"),
        (SMAP, "smap"),
        (PKE, "pke"),
        (CET, "cet"),
        (PKS, "pks"),
        (UINTR, "uintr"),
        (LAM_SUP, "lam_sup"),
        (FRED, "fred"),
    ];
}

pub mod efer {
    pub const SCE: u64 = 1 << 0;
    pub const LME: u64 = 1 << 8;
    pub const LMA: u64 = 1 << 10;
    pub const NXE: u64 = 1 << 11;
}

/// What the guest's CPUID says about the control-register features: computed once
/// per vCPU from the CPUID view the guest gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestFeatures {
    /// CR4 bits the guest may set.
    pub cr4_allowed: u64,
    /// EFER bits the guest may set (LMA is the processor's: see [`check_efer`]).
    pub efer_allowed: u64,
    /// XCR0 bits the guest may set (0 without XSAVE).
    pub xcr0_allowed: u64,
    /// Linear-address width: 57 with LA57, else 48 (canonical checks).
    pub la57: bool,
}

/// (leaf, subleaf, register index 0..4 = EAX..EDX, bit) -> the CR4 bits it allows.
/// Bits not listed here (VMXE, SMXE: no VMX/SMX for guests) are never allowed.
const CR4_FEATURES: [(u32, u32, usize, u32, u64); 23] = [
    (1, 0, 3, 1, cr4::VME | cr4::PVI),
    (1, 0, 3, 4, cr4::TSD),
    (1, 0, 3, 2, cr4::DE),
    (1, 0, 3, 3, cr4::PSE),
    (1, 0, 3, 6, cr4::PAE),
    (1, 0, 3, 7, cr4::MCE),
    (1, 0, 3, 13, cr4::PGE),
    // PCE has no CPUID bit: every processor with RDPMC accepts it.
    (1, 0, 3, 0, cr4::PCE),
    (1, 0, 3, 24, cr4::OSFXSR),
    (1, 0, 3, 25, cr4::OSXMMEXCPT),
    (7, 0, 2, 2, cr4::UMIP),
    (7, 0, 2, 16, cr4::LA57),
    (7, 0, 1, 0, cr4::FSGSBASE),
    (1, 0, 2, 17, cr4::PCIDE),
    (1, 0, 2, 26, cr4::OSXSAVE),
    (7, 0, 2, 23, cr4::KL),
    (7, 0, 1, 7, cr4::SMEP),
    (7, 0, 1, 20, cr4::SMAP),
    (7, 0, 2, 3, cr4::PKE),
    (7, 0, 2, 7, cr4::CET),
    (7, 0, 2, 31, cr4::PKS),
    (7, 0, 3, 5, cr4::UINTR),
    (7, 1, 0, 26, cr4::LAM_SUP),
];

impl GuestFeatures {
    /// Derives the features from the guest's CPUID view: `cpuid(leaf, subleaf)`
    /// returns `[eax, ebx, ecx, edx]` as the guest would read them.
    pub fn from_cpuid(cpuid: impl Fn(u32, u32) -> [u32; 4]) -> Self {
        let max_basic = cpuid(0, 0)[0];
        let max_ext = cpuid(0x8000_0000, 0)[0];
        let leaf = |l: u32, s: u32| {
            let present = if l >= 0x8000_0000 {
                l <= max_ext
            } else {
                l <= max_basic
            };
            if present {
                cpuid(l, s)
            } else {
                [0; 4]
            }
        };
        let has = |l: u32, s: u32, r: usize, bit: u32| leaf(l, s)[r] & (1 << bit) != 0;
        let mut cr4_allowed = 0;
        for (l, s, r, bit, bits) in CR4_FEATURES {
            if has(l, s, r, bit) {
                cr4_allowed |= bits;
            }
        }
        // CET: shadow stacks (leaf 7 ECX 7) or indirect-branch tracking (EDX 20).
        if has(7, 0, 3, 20) {
            cr4_allowed |= cr4::CET;
        }
        // FRED: leaf 7 subleaf 1 EAX 17.
        if has(7, 1, 0, 17) {
            cr4_allowed |= cr4::FRED;
        }
        let long_mode = has(0x8000_0001, 0, 3, 29);
        let mut efer_allowed = 0;
        // SYSCALL (EDX 11; Intel reports it only in 64-bit mode, so long mode implies it).
        if has(0x8000_0001, 0, 3, 11) || long_mode {
            efer_allowed |= efer::SCE;
        }
        if long_mode {
            efer_allowed |= efer::LME | efer::LMA;
        }
        if has(0x8000_0001, 0, 3, 20) {
            efer_allowed |= efer::NXE;
        }
        let xcr0_allowed = if cr4_allowed & cr4::OSXSAVE != 0 {
            let d = leaf(0xD, 0);
            (d[0] as u64 | (d[3] as u64) << 32) | 1
        } else {
            0
        };
        Self {
            cr4_allowed,
            efer_allowed,
            xcr0_allowed,
            la57: cr4_allowed & cr4::LA57 != 0,
        }
    }
}

/// Whether `addr` is canonical for a processor with 48-bit (or with LA57, 57-bit)
/// linear addresses (SDM Vol. 1 3.3.7.1): the bits above the width copy the top one.
pub const fn is_canonical(addr: u64, la57: bool) -> bool {
    let bits = if la57 { 57 } else { 48 };
    let shift = 64 - bits;
    (((addr << shift) as i64) >> shift) as u64 == addr
}

const GP: Exception = Exception::GP0;

fn in_64bit_code(cur: &ControlRegs) -> bool {
    cur.efer & efer::LMA != 0 && cur.cs_long
}

/// A MOV to CR0 (or CLTS / LMSW, given as the CR0 value they produce) of `value`
/// while the guest's control state is `cur`. Returns the value CR0 takes (reserved
/// bits 31:0 dropped, ET set as on every processor since the i486), or #GP(0) where
/// SDM Vol. 2 MOV CR / APM Vol. 2 3.1.1 require it:
/// bits 63:32 set; PG without PE; NW without CD; enabling paging with EFER.LME but
/// not CR4.PAE; clearing PG in 64-bit code or with CR4.PCIDE; clearing WP with
/// CR4.CET.
pub fn check_cr0(cur: &ControlRegs, value: u64) -> Result<u64, Exception> {
    if value >> 32 != 0 {
        return Err(GP);
    }
    if value & cr0::PG != 0 && value & cr0::PE == 0 {
        return Err(GP);
    }
    if value & cr0::NW != 0 && value & cr0::CD == 0 {
        return Err(GP);
    }
    let paging_before = cur.cr0 & cr0::PG != 0;
    let paging_after = value & cr0::PG != 0;
    if !paging_before && paging_after && cur.efer & efer::LME != 0 && cur.cr4 & cr4::PAE == 0 {
        return Err(GP);
    }
    if paging_before && !paging_after && (in_64bit_code(cur) || cur.cr4 & cr4::PCIDE != 0) {
        return Err(GP);
    }
    if value & cr0::WP == 0 && cur.cr4 & cr4::CET != 0 {
        return Err(GP);
    }
    Ok((value & cr0::DEFINED) | cr0::ET)
}

/// A MOV to CR4 of `value`. #GP(0) for a bit the guest's CPUID does not offer
/// (reserved for it, and VMXE/SMXE always), and for the transitions SDM Vol. 2 MOV CR
/// forbids: clearing PAE or changing LA57 in IA-32e mode; setting PCIDE outside
/// IA-32e mode or with CR3[11:0] != 0; setting CET while CR0.WP is clear.
pub fn check_cr4(f: &GuestFeatures, cur: &ControlRegs, value: u64) -> Result<u64, Exception> {
    if value & !f.cr4_allowed != 0 {
        return Err(GP);
    }
    let lma = cur.efer & efer::LMA != 0;
    if lma && value & cr4::PAE == 0 {
        return Err(GP);
    }
    if lma && (value ^ cur.cr4) & cr4::LA57 != 0 {
        return Err(GP);
    }
    if value & cr4::PCIDE != 0 && cur.cr4 & cr4::PCIDE == 0 && (!lma || cur.cr3 & 0xFFF != 0) {
        return Err(GP);
    }
    if value & cr4::CET != 0 && cur.cr0 & cr0::WP == 0 {
        return Err(GP);
    }
    Ok(value)
}

/// A WRMSR to EFER of `value`. #GP(0) for a bit the guest's CPUID does not offer and
/// for changing LME while paging is on (SDM Vol. 4 IA32_EFER, APM Vol. 2 14.6.1).
/// LMA is the processor's (set and cleared when paging is switched with LME): what
/// the guest writes there is ignored, the returned value keeps the current LMA.
pub fn check_efer(f: &GuestFeatures, cur: &ControlRegs, value: u64) -> Result<u64, Exception> {
    if value & !f.efer_allowed != 0 {
        return Err(GP);
    }
    if cur.cr0 & cr0::PG != 0 && (value ^ cur.efer) & efer::LME != 0 {
        return Err(GP);
    }
    Ok((value & !efer::LMA) | (cur.efer & efer::LMA))
}

/// XSETBV of `value` into XCR `xcr` (SDM Vol. 2 XSETBV): #UD while CR4.OSXSAVE is
/// clear (always, when the guest's CPUID hides XSAVE); #GP(0) for an XCR other than
/// 0, a bit the guest's CPUID leaf 0xD does not offer, x87 (bit 0) clear, AVX (bit 2)
/// without SSE (bit 1), or only one of the two AVX-512 groups' bits.
pub fn check_xsetbv(
    f: &GuestFeatures,
    cur: &ControlRegs,
    xcr: u32,
    value: u64,
) -> Result<u64, Exception> {
    if cur.cr4 & cr4::OSXSAVE == 0 || f.cr4_allowed & cr4::OSXSAVE == 0 {
        return Err(Exception::UD);
    }
    if xcr != 0 || value & !f.xcr0_allowed != 0 || value & 1 == 0 {
        return Err(GP);
    }
    if value & 0b100 != 0 && value & 0b10 == 0 {
        return Err(GP);
    }
    let avx512 = value & 0xE0;
    if avx512 != 0 && (avx512 != 0xE0 || value & 0b100 == 0) {
        return Err(GP);
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guest CPUID with `l1` ECX/EDX, leaf 7 EBX/ECX/EDX and 0x8000_0001 EDX.
    fn features(l1_ecx: u32, l1_edx: u32, l7: [u32; 3], ext_edx: u32) -> GuestFeatures {
        GuestFeatures::from_cpuid(|leaf, sub| match (leaf, sub) {
            (0, _) => [0xD, 0, 0, 0],
            (0x8000_0000, _) => [0x8000_0008, 0, 0, 0],
            (1, _) => [0, 0, l1_ecx, l1_edx],
            (7, 0) => [0, l7[0], l7[1], l7[2]],
            (0xD, 0) => [0x7, 0, 0, 0],
            (0x8000_0001, _) => [0, 0, 0, ext_edx],
            _ => [0; 4],
        })
    }

    /// What the hypervisor's policy shows on a typical host: FPU..SSE2 in leaf 1 EDX
    /// (but MCE/MCA hidden), no XSAVE/PCID, SMEP/SMAP/FSGSBASE/UMIP, no PKU.
    fn typical() -> GuestFeatures {
        let l1_edx = 0x0789_FBFF & !(1 << 7) & !(1 << 14);
        features(
            0x8000_0201,
            l1_edx,
            [1 | 1 << 7 | 1 << 20, 1 << 2, 0],
            1 << 11 | 1 << 20 | 1 << 29,
        )
    }

    fn long_mode() -> ControlRegs {
        ControlRegs {
            cr0: cr0::PE | cr0::ET | cr0::NE | cr0::WP | cr0::PG,
            cr3: 0x1000,
            cr4: cr4::PAE,
            efer: efer::LME | efer::LMA,
            cs_base: 0,
            cs_long: true,
        }
    }

    fn protected() -> ControlRegs {
        ControlRegs {
            cr0: cr0::PE | cr0::ET,
            cs_long: false,
            ..Default::default()
        }
    }

    #[test]
    fn every_cr4_bit_against_the_typical_guest() {
        let f = typical();
        let cur = long_mode();
        let allowed = [
            cr4::VME,
            cr4::PVI,
            cr4::TSD,
            cr4::DE,
            cr4::PSE,
            cr4::PGE,
            cr4::PCE,
            cr4::OSFXSR,
            cr4::OSXMMEXCPT,
            cr4::UMIP,
            cr4::FSGSBASE,
            cr4::SMEP,
            cr4::SMAP,
        ];
        for bit in 0..64 {
            let b = 1u64 << bit;
            if b == cr4::PAE {
                continue;
            }
            let r = check_cr4(&f, &cur, cr4::PAE | b);
            if allowed.contains(&b) {
                assert_eq!(r, Ok(cr4::PAE | b), "bit {bit} allowed");
            } else {
                assert_eq!(r, Err(Exception::GP0), "bit {bit} refused");
            }
        }
        // MCE, OSXSAVE, PCIDE, PKE, VMXE, SMXE, LA57 named: hidden or never.
        for b in [
            cr4::MCE,
            cr4::OSXSAVE,
            cr4::PCIDE,
            cr4::PKE,
            cr4::VMXE,
            cr4::SMXE,
        ] {
            assert_eq!(f.cr4_allowed & b, 0);
        }
    }

    #[test]
    fn cr4_bits_follow_their_cpuid_bits() {
        let all = features(!0, !0, [!0, !0, !0], !0);
        let expected = cr4::NAMES
            .iter()
            .map(|&(b, _)| b)
            .filter(|&b| ![cr4::VMXE, cr4::SMXE, cr4::LAM_SUP, cr4::FRED].contains(&b))
            .fold(0, |a, b| a | b);
        assert_eq!(
            all.cr4_allowed, expected,
            "all but VMXE/SMXE (and leaf 7.1's)"
        );
        let sub1 = GuestFeatures::from_cpuid(|leaf, sub| match (leaf, sub) {
            (0, _) => [7, 0, 0, 0],
            (7, 1) => [1 << 26 | 1 << 17, 0, 0, 0],
            _ => [0; 4],
        });
        assert_eq!(sub1.cr4_allowed, cr4::LAM_SUP | cr4::FRED);
        let none = features(0, 0, [0; 3], 0);
        assert_eq!(none.cr4_allowed, 0);
        assert_eq!(none.efer_allowed, 0);
        assert_eq!(none.xcr0_allowed, 0);
        for (l1_ecx, l1_edx, l7, bit) in [
            (1 << 26, 0, [0, 0, 0], cr4::OSXSAVE),
            (1 << 17, 0, [0, 0, 0], cr4::PCIDE),
            (0, 1 << 7, [0, 0, 0], cr4::MCE),
            (0, 1 << 1, [0, 0, 0], cr4::VME | cr4::PVI),
            (0, 0, [0, 1 << 3, 0], cr4::PKE),
            (0, 0, [0, 1 << 16, 0], cr4::LA57),
            (0, 0, [0, 1 << 7, 0], cr4::CET),
            (0, 0, [0, 0, 1 << 20], cr4::CET),
            (0, 0, [1 << 7, 0, 0], cr4::SMEP),
        ] {
            let f = features(l1_ecx, l1_edx, l7, 0);
            assert_eq!(f.cr4_allowed, bit);
        }
        assert!(features(0, 0, [0, 1 << 16, 0], 0).la57);
    }

    #[test]
    fn cr4_transitions() {
        let f = features(1 << 17, 1 << 6, [0, 1 << 16, 0], 1 << 29);
        let mut cur = long_mode();
        cur.cr3 = 0x1008; // PWT
        assert_eq!(
            check_cr4(&f, &cur, 0),
            Err(GP),
            "PAE cleared in IA-32e mode"
        );
        assert_eq!(
            check_cr4(&f, &cur, cr4::PAE | cr4::LA57),
            Err(GP),
            "LA57 changed"
        );
        assert_eq!(
            check_cr4(&f, &cur, cr4::PAE | cr4::PCIDE),
            Err(GP),
            "CR3[11:0] != 0"
        );
        cur.cr3 = 0x2000;
        assert_eq!(
            check_cr4(&f, &cur, cr4::PAE | cr4::PCIDE),
            Ok(cr4::PAE | cr4::PCIDE)
        );
        cur.cr4 |= cr4::PCIDE;
        cur.cr3 = 0x2005; // PCID 5 in use: keeping PCIDE is fine
        assert_eq!(
            check_cr4(&f, &cur, cr4::PAE | cr4::PCIDE),
            Ok(cr4::PAE | cr4::PCIDE)
        );
        let p = protected();
        assert_eq!(
            check_cr4(&f, &p, cr4::PCIDE),
            Err(GP),
            "PCIDE outside IA-32e mode"
        );
        assert_eq!(
            check_cr4(&f, &p, cr4::LA57),
            Ok(cr4::LA57),
            "LA57 before long mode"
        );
        assert_eq!(check_cr4(&f, &p, 0), Ok(0));
        // CET needs CR0.WP.
        let f = features(0, 0, [0, 1 << 7, 0], 0);
        assert_eq!(check_cr4(&f, &p, cr4::CET), Err(GP));
        let wp = ControlRegs {
            cr0: p.cr0 | cr0::WP,
            ..p
        };
        assert_eq!(check_cr4(&f, &wp, cr4::CET), Ok(cr4::CET));
    }

    #[test]
    fn cr0_rules() {
        let lm = long_mode();
        let v = lm.cr0;
        assert_eq!(check_cr0(&lm, v), Ok(v));
        assert_eq!(check_cr0(&lm, v | 1 << 32), Err(GP), "bits 63:32");
        assert_eq!(check_cr0(&lm, v & !cr0::PE), Err(GP), "PG without PE");
        assert_eq!(check_cr0(&lm, v | cr0::NW), Err(GP), "NW without CD");
        assert_eq!(
            check_cr0(&lm, v | cr0::NW | cr0::CD),
            Ok(v | cr0::NW | cr0::CD)
        );
        assert_eq!(check_cr0(&lm, v | cr0::CD), Ok(v | cr0::CD));
        assert_eq!(
            check_cr0(&lm, v & !cr0::PG),
            Err(GP),
            "leave paging in 64-bit code"
        );
        let compat = ControlRegs {
            cs_long: false,
            ..lm
        };
        assert_eq!(
            check_cr0(&compat, v & !cr0::PG),
            Ok(v & !cr0::PG),
            "from compatibility mode"
        );
        let pcid = ControlRegs {
            cr4: lm.cr4 | cr4::PCIDE,
            ..compat
        };
        assert_eq!(check_cr0(&pcid, v & !cr0::PG), Err(GP), "PCIDE set");
        let cet = ControlRegs {
            cr4: lm.cr4 | cr4::CET,
            ..lm
        };
        assert_eq!(check_cr0(&cet, v & !cr0::WP), Err(GP), "WP with CET");
        assert_eq!(check_cr0(&lm, v & !cr0::WP), Ok(v & !cr0::WP));
        // Reserved bits 31:0 are dropped, ET reads 1.
        assert_eq!(check_cr0(&lm, v | 1 << 7 | 1 << 20), Ok(v));
        assert_eq!(check_cr0(&lm, v & !cr0::ET), Ok(v));
        // Enabling paging with LME needs PAE.
        let p = ControlRegs {
            efer: efer::LME,
            ..protected()
        };
        assert_eq!(check_cr0(&p, cr0::PE | cr0::PG), Err(GP));
        let pae = ControlRegs { cr4: cr4::PAE, ..p };
        assert_eq!(
            check_cr0(&pae, cr0::PE | cr0::PG),
            Ok(cr0::PE | cr0::ET | cr0::PG)
        );
        // Real mode: PE may go, PG without PE may not.
        let real = ControlRegs {
            cr0: cr0::ET,
            ..Default::default()
        };
        assert_eq!(check_cr0(&real, cr0::PE), Ok(cr0::PE | cr0::ET));
        assert_eq!(check_cr0(&real, cr0::PG), Err(GP));
    }

    #[test]
    fn efer_rules() {
        let f = typical();
        let lm = long_mode();
        let e = efer::LME | efer::LMA;
        assert_eq!(
            check_efer(&f, &lm, e | efer::SCE | efer::NXE),
            Ok(e | efer::SCE | efer::NXE)
        );
        assert_eq!(
            check_efer(&f, &lm, efer::LMA),
            Err(GP),
            "LME cleared while paging"
        );
        assert_eq!(check_efer(&f, &lm, e | 1 << 12), Err(GP), "SVME");
        assert_eq!(
            check_efer(&f, &lm, e | 1 << 14),
            Err(GP),
            "FFXSR not offered"
        );
        assert_eq!(check_efer(&f, &lm, efer::LME), Ok(e), "LMA write ignored");
        let p = protected();
        assert_eq!(
            check_efer(&f, &p, efer::LME),
            Ok(efer::LME),
            "LME before paging"
        );
        assert_eq!(check_efer(&f, &p, efer::LMA), Ok(0), "LMA write ignored");
        let paging32 = ControlRegs {
            cr0: p.cr0 | cr0::PG,
            ..p
        };
        assert_eq!(
            check_efer(&f, &paging32, efer::LME),
            Err(GP),
            "LME set while paging"
        );
        assert_eq!(check_efer(&f, &paging32, efer::NXE), Ok(efer::NXE));
        let no_nx = features(0, 0, [0; 3], 1 << 29);
        assert_eq!(check_efer(&no_nx, &p, efer::NXE), Err(GP));
        assert_eq!(no_nx.efer_allowed, efer::SCE | efer::LME | efer::LMA);
    }

    #[test]
    fn xsetbv_rules() {
        let hidden = typical();
        let mut cur = long_mode();
        assert_eq!(check_xsetbv(&hidden, &cur, 0, 1), Err(Exception::UD));
        cur.cr4 |= cr4::OSXSAVE; // cannot happen through check_cr4, but still #UD
        assert_eq!(check_xsetbv(&hidden, &cur, 0, 1), Err(Exception::UD));
        let x = GuestFeatures::from_cpuid(|leaf, _| match leaf {
            0 => [0xD, 0, 0, 0],
            1 => [0, 0, 1 << 26, 0],
            0xD => [0xE7, 0, 0, 0],
            _ => [0; 4],
        });
        assert_eq!(x.xcr0_allowed, 0xE7);
        assert_eq!(check_xsetbv(&x, &cur, 0, 0b111), Ok(0b111));
        assert_eq!(check_xsetbv(&x, &cur, 1, 0b1), Err(GP), "XCR1");
        assert_eq!(check_xsetbv(&x, &cur, 0, 0b10), Err(GP), "x87 clear");
        assert_eq!(check_xsetbv(&x, &cur, 0, 0b101), Err(GP), "AVX without SSE");
        assert_eq!(check_xsetbv(&x, &cur, 0, 0b1011), Err(GP), "not offered");
        assert_eq!(check_xsetbv(&x, &cur, 0, 0xE7), Ok(0xE7));
        assert_eq!(check_xsetbv(&x, &cur, 0, 0x27), Err(GP), "partial AVX-512");
    }

    #[test]
    fn canonical_addresses() {
        assert!(is_canonical(0x0000_7FFF_FFFF_FFFF, false));
        assert!(is_canonical(0xFFFF_8000_0000_0000, false));
        assert!(!is_canonical(0x0000_8000_0000_0000, false));
        assert!(is_canonical(0x0000_8000_0000_0000, true));
        assert!(!is_canonical(0x8000_0000_0000_0000, true));
    }
}
