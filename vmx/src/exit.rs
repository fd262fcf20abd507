//! Decoding a VM exit into the vendor-neutral [`vcpu::Exit`], the VM-instruction error
//! numbers, and the exit qualifications the backend handles itself (control-register
//! accesses).
//!
//! Everything here is a pure function of values the runtime reads from the VMCS (exit
//! reason, qualification, guest-physical address, interruption information) and the
//! guest registers, so it is tested on the host. Exit reasons: SDM Vol. 3D Appendix C;
//! qualifications: SDM Vol. 3C 28.2.1 (27.2.1 in older editions).

use vcpu::{Exit, PortIo};

use crate::vmcs::{intr_info, reason};

/// What the decoder needs from one VM exit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitInfo {
    /// The exit-reason field (0x4402), bit 31 included.
    pub reason: u32,
    /// The exit qualification (0x6400).
    pub qualification: u64,
    /// The guest-physical address (0x2400), for EPT violations and misconfigurations.
    pub guest_physical: u64,
    /// VM-exit interruption information (0x4404), for exception/NMI exits.
    pub interruption_info: u32,
    /// IDT-vectoring information (0x4408): the event whose delivery the exit
    /// interrupted (SDM Vol. 3C 28.2.4).
    pub idt_vectoring: u32,
    /// Guest RAX, RCX, RDX (from the entry stub's register save area).
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
}

impl ExitInfo {
    /// The basic exit reason, bits 15:0.
    pub const fn basic(&self) -> u32 {
        self.reason & 0xFFFF
    }
    /// Bit 31: VM entry failed (SDM Vol. 3C 27.8).
    pub const fn entry_failed(&self) -> bool {
        self.reason & reason::ENTRY_FAILURE != 0
    }
}

/// I/O-instruction exit qualification (SDM Vol. 3C Table 28-5).
pub mod io {
    /// Size of access minus one, bits 2:0 (0 = 1 byte, 1 = 2 bytes, 3 = 4 bytes).
    pub const SIZE_MASK: u64 = 7;
    /// Direction, bit 3: 1 = IN, 0 = OUT.
    pub const DIRECTION_IN: u64 = 1 << 3;
    /// String instruction (INS/OUTS), bit 4.
    pub const STRING: u64 = 1 << 4;
    /// REP prefix, bit 5.
    pub const REP: u64 = 1 << 5;
    /// Operand encoding, bit 6: 1 = immediate port, 0 = DX.
    pub const IMMEDIATE: u64 = 1 << 6;
    /// Port number, bits 31:16.
    pub const PORT_SHIFT: u64 = 16;
}

/// EPT-violation exit qualification (SDM Vol. 3C Table 28-7).
pub mod ept_violation {
    pub const READ: u64 = 1 << 0;
    pub const WRITE: u64 = 1 << 1;
    pub const FETCH: u64 = 1 << 2;
    /// Bits 5:3: the rights the EPT entries granted (all 0: not mapped at all).
    pub const READABLE: u64 = 1 << 3;
    pub const WRITABLE: u64 = 1 << 4;
    pub const EXECUTABLE: u64 = 1 << 5;
    /// The guest linear-address field is valid.
    pub const LINEAR_VALID: u64 = 1 << 7;
    /// With `LINEAR_VALID`: 1 = the access was to the translated address, 0 = to a
    /// guest paging structure during the guest's own walk.
    pub const TRANSLATED_ACCESS: u64 = 1 << 8;
}

/// Reason texts for [`Exit::EntryFailure`].
pub mod entry_failure {
    pub const INVALID_GUEST_STATE: &str =
        "VM entry failed: invalid guest state (exit reason 33, SDM Vol. 3C 27.3.1); the software pre-check found no fault, see the processor's or emulator's log";
    pub const INVALID_GUEST_STATE_PDPTE: &str =
        "VM entry failed: invalid guest state: a PAE page-directory-pointer-table entry failed to load (exit reason 33, qualification 2)";
    pub const INVALID_GUEST_STATE_LINK: &str =
        "VM entry failed: invalid guest state: invalid VMCS link pointer (exit reason 33, qualification 4)";
    pub const MSR_LOADING: &str =
        "VM entry failed while loading MSRs from the VM-entry MSR-load area (exit reason 34): an entry names an MSR that cannot be loaded or a non-canonical/reserved value; the qualification is the 1-based index";
    pub const MACHINE_CHECK: &str =
        "VM entry failed: a machine-check event occurred during VM entry (exit reason 41)";
    pub const OTHER: &str = "VM entry failed with an undocumented exit reason";
    pub const EPT_MISCONFIGURATION: &str =
        "EPT misconfiguration (exit reason 49): an EPT entry has reserved bits, write without read, or an invalid memory type; the backend built bad EPT tables";
    pub const VMFAIL_INVALID: &str =
        "VMLAUNCH/VMRESUME failed with VMfailInvalid: there is no valid current VMCS (VMPTRLD did not succeed)";
}

/// Translate one VM exit.
///
/// EPT violations always come back as [`Exit::NestedPageFault`]: whether the GPA is
/// MMIO is the VMM core's knowledge. NMIs (exception-or-NMI exits with interruption
/// type 2) are reported as [`Exit::ExternalInterrupt`], as the SVM backend does; the
/// runtime hands them to the host's NMI handler first.
pub fn decode(info: &ExitInfo) -> Exit {
    let code = info.reason as u64;
    if info.entry_failed() {
        let why = match info.basic() {
            reason::INVALID_GUEST_STATE => match info.qualification {
                2 => entry_failure::INVALID_GUEST_STATE_PDPTE,
                4 => entry_failure::INVALID_GUEST_STATE_LINK,
                _ => entry_failure::INVALID_GUEST_STATE,
            },
            reason::MSR_LOADING => entry_failure::MSR_LOADING,
            reason::MACHINE_CHECK => entry_failure::MACHINE_CHECK,
            _ => entry_failure::OTHER,
        };
        return Exit::EntryFailure { code, reason: why };
    }
    match info.basic() {
        reason::IO_INSTRUCTION => decode_io(info.qualification).unwrap_or(Exit::Unknown { code }),
        reason::RDMSR => Exit::Rdmsr {
            msr: info.rcx as u32,
        },
        reason::WRMSR => Exit::Wrmsr {
            msr: info.rcx as u32,
            value: (info.rdx << 32) | (info.rax & 0xFFFF_FFFF),
        },
        reason::CPUID => Exit::Cpuid {
            leaf: info.rax as u32,
            subleaf: info.rcx as u32,
        },
        reason::HLT => Exit::Halt,
        reason::VMCALL => Exit::Hypercall,
        reason::TRIPLE_FAULT => Exit::Shutdown,
        reason::EPT_VIOLATION => Exit::NestedPageFault {
            gpa: info.guest_physical,
            write: info.qualification & ept_violation::WRITE != 0,
            fetch: info.qualification & ept_violation::FETCH != 0,
        },
        reason::EPT_MISCONFIGURATION => Exit::EntryFailure {
            code,
            reason: entry_failure::EPT_MISCONFIGURATION,
        },
        reason::EXTERNAL_INTERRUPT => Exit::ExternalInterrupt,
        reason::EXCEPTION_OR_NMI
            if info.interruption_info & intr_info::VALID != 0
                && info.interruption_info & intr_info::TYPE_MASK == intr_info::TYPE_NMI =>
        {
            Exit::ExternalInterrupt
        }
        // #DB and #AC, already queued for the guest again by `reflect`.
        reason::EXCEPTION_OR_NMI
            if info.interruption_info & intr_info::VALID != 0
                && matches!(
                    (info.interruption_info & intr_info::VECTOR_MASK) as u8,
                    vcpu::Exception::DB_VECTOR | vcpu::Exception::AC_VECTOR
                ) =>
        {
            let vector = info.interruption_info & intr_info::VECTOR_MASK;
            Exit::ExceptionReflected {
                vector: vector as u8,
                redelivered: info.idt_vectoring
                    & (intr_info::VALID | intr_info::TYPE_MASK | intr_info::VECTOR_MASK)
                    == intr_info::VALID | intr_info::TYPE_HARDWARE_EXCEPTION | vector,
            }
        }
        // INVD exits unconditionally (SDM Vol. 3C 26.1.2), WBINVD with "WBINVD exiting".
        reason::INVD | reason::WBINVD => Exit::CacheFlush,
        reason::RDPMC => Exit::Rdpmc,
        reason::MONITOR | reason::MWAIT => Exit::HiddenInstruction,
        reason::INTERRUPT_WINDOW | reason::NMI_WINDOW => Exit::InterruptWindow,
        reason::PREEMPTION_TIMER => Exit::Preempted,
        reason::VMCLEAR
        | reason::VMLAUNCH
        | reason::VMPTRLD
        | reason::VMPTRST
        | reason::VMREAD
        | reason::VMRESUME
        | reason::VMWRITE
        | reason::VMXOFF
        | reason::VMXON
        | reason::INVEPT
        | reason::INVVPID
        | reason::VMFUNC => Exit::VirtInstruction,
        // XSETBV always exits (SDM Vol. 3C 26.1.2); the core validates it against
        // the guest's CPUID (XCR0 is not switched, XSAVE is hidden).
        reason::XSETBV => Exit::Xsetbv {
            xcr: info.rcx as u32,
            value: (info.rdx << 32) | (info.rax & 0xFFFF_FFFF),
        },
        _ => Exit::Unknown { code },
    }
}

/// The port access an I/O exit qualification describes; `None` for a size encoding
/// that is not 1, 2 or 4 bytes.
pub fn decode_io(qualification: u64) -> Option<Exit> {
    let size = match qualification & io::SIZE_MASK {
        0 => 1,
        1 => 2,
        3 => 4,
        _ => return None,
    };
    Some(Exit::PortIo(PortIo {
        port: (qualification >> io::PORT_SHIFT) as u16,
        size,
        write: qualification & io::DIRECTION_IN == 0,
        string: qualification & io::STRING != 0,
        rep: qualification & io::REP != 0,
    }))
}

/// Whether the VM-exit instruction-length field (0x440C) is valid after an exit with
/// this basic reason: only for exits caused by executing an instruction (SDM Vol. 3C
/// 28.2.5). After an EPT violation, an external interrupt or a preemption-timer exit
/// the field is undefined, so the backend does not skip anything then.
pub const fn has_instruction_length(basic_reason: u32) -> bool {
    matches!(
        basic_reason,
        reason::CPUID
            | reason::GETSEC
            | reason::HLT
            | reason::INVD
            | reason::INVLPG
            | reason::RDPMC
            | reason::RDTSC
            | reason::RSM
            | reason::VMCALL
            ..=reason::VMXON
                | reason::CR_ACCESS
                | reason::MOV_DR
                | reason::IO_INSTRUCTION
                | reason::RDMSR
                | reason::WRMSR
                | reason::MWAIT
                | reason::MONITOR
                | reason::PAUSE
                | reason::GDTR_IDTR_ACCESS
                | reason::LDTR_TR_ACCESS
                | reason::INVEPT
                | reason::RDTSCP
                | reason::INVVPID
                | reason::WBINVD
                | reason::XSETBV
                | reason::RDRAND
                | reason::INVPCID
                | reason::VMFUNC
                | reason::ENCLS
                | reason::RDSEED
                | reason::XSAVES
                | reason::XRSTORS
    )
}

/// A control-register access, decoded from its exit qualification (SDM Vol. 3C Table
/// 28-3). General-purpose registers are numbered as in the instruction encoding
/// (0 RAX, 1 RCX, 2 RDX, 3 RBX, 4 RSP, 5 RBP, 6 RSI, 7 RDI, 8-15 R8-R15).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrAccess {
    MovToCr {
        cr: u8,
        gpr: u8,
    },
    MovFromCr {
        cr: u8,
        gpr: u8,
    },
    Clts,
    /// LMSW with its 16-bit source operand.
    Lmsw {
        source: u16,
    },
}

impl CrAccess {
    pub const fn decode(qualification: u64) -> CrAccess {
        let cr = (qualification & 0xF) as u8;
        let gpr = ((qualification >> 8) & 0xF) as u8;
        match (qualification >> 4) & 3 {
            0 => CrAccess::MovToCr { cr, gpr },
            1 => CrAccess::MovFromCr { cr, gpr },
            2 => CrAccess::Clts,
            _ => CrAccess::Lmsw {
                source: (qualification >> 16) as u16,
            },
        }
    }
}

/// The VM-instruction error numbers (SDM Vol. 3C 31.4, "VM Instruction Error Numbers";
/// 30.4 in older editions), read from field 0x4400 after a VMfailValid.
pub fn instruction_error(number: u32) -> &'static str {
    match number {
        1 => "VMCALL executed in VMX root operation",
        2 => "VMCLEAR with invalid physical address",
        3 => "VMCLEAR with VMXON pointer",
        4 => "VMLAUNCH with non-clear VMCS",
        5 => "VMRESUME with non-launched VMCS",
        6 => "VMRESUME after VMXOFF (VMXOFF and VMXON between VMLAUNCH and VMRESUME)",
        7 => "VM entry with invalid control field(s)",
        8 => "VM entry with invalid host-state field(s)",
        9 => "VMPTRLD with invalid physical address",
        10 => "VMPTRLD with VMXON pointer",
        11 => "VMPTRLD with incorrect VMCS revision identifier",
        12 => "VMREAD/VMWRITE from/to unsupported VMCS component",
        13 => "VMWRITE to read-only VMCS component",
        15 => "VMXON executed in VMX root operation",
        16 => "VM entry with invalid executive-VMCS pointer",
        17 => "VM entry with non-launched executive VMCS",
        18 => "VM entry with executive-VMCS pointer not VMXON pointer",
        19 => "VMCALL with non-clear VMCS",
        20 => "VMCALL with invalid VM-exit control fields",
        22 => "VMCALL with incorrect MSEG revision identifier",
        23 => "VMXOFF under dual-monitor treatment of SMIs and SMM",
        24 => "VMCALL with invalid SMM-monitor features",
        25 => "VM entry with invalid VM-execution control fields in executive VMCS",
        26 => "VM entry with events blocked by MOV SS",
        28 => "Invalid operand to INVEPT/INVVPID",
        _ => "unknown VM-instruction error number",
    }
}

/// [`instruction_error`] prefixed for an [`Exit::EntryFailure`] after VMLAUNCH or
/// VMRESUME failed with VMfailValid; the texts are static so the failure can be
/// reported without allocating.
pub fn entry_instruction_error(number: u32) -> &'static str {
    match number {
        4 => "VMLAUNCH failed (VMfailValid, error 4): VMLAUNCH with non-clear VMCS",
        5 => "VMRESUME failed (VMfailValid, error 5): VMRESUME with non-launched VMCS",
        6 => "VMRESUME failed (VMfailValid, error 6): VMRESUME after VMXOFF (VMXOFF and VMXON between VMLAUNCH and VMRESUME)",
        7 => "VM entry failed (VMfailValid, error 7): VM entry with invalid control field(s) (SDM Vol. 3C 27.2.1)",
        8 => "VM entry failed (VMfailValid, error 8): VM entry with invalid host-state field(s) (SDM Vol. 3C 27.2.2)",
        26 => "VM entry failed (VMfailValid, error 26): VM entry with events blocked by MOV SS",
        _ => "VM entry failed (VMfailValid) with an unexpected VM-instruction error; the code is its number",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(reason: u32, qualification: u64) -> ExitInfo {
        ExitInfo {
            reason,
            qualification,
            ..Default::default()
        }
    }

    #[test]
    fn port_io() {
        // OUT DX, AL to 0x3F8.
        let q = 0x3F8 << 16;
        assert_eq!(
            decode(&exit(30, q)),
            Exit::PortIo(PortIo {
                port: 0x3F8,
                size: 1,
                write: true,
                string: false,
                rep: false
            })
        );
        // IN EAX, 0x60 (immediate).
        let q = (0x60 << 16) | io::IMMEDIATE | io::DIRECTION_IN | 3;
        assert_eq!(
            decode(&exit(30, q)),
            Exit::PortIo(PortIo {
                port: 0x60,
                size: 4,
                write: false,
                string: false,
                rep: false
            })
        );
        // REP OUTSW to 0x1F0.
        let q = (0x1F0 << 16) | io::STRING | io::REP | 1;
        assert_eq!(
            decode(&exit(30, q)),
            Exit::PortIo(PortIo {
                port: 0x1F0,
                size: 2,
                write: true,
                string: true,
                rep: true
            })
        );
        // Size encoding 2 is undefined.
        assert_eq!(decode(&exit(30, 2)), Exit::Unknown { code: 30 });
    }

    #[test]
    fn hardening_exits() {
        assert_eq!(decode(&exit(reason::INVD, 0)), Exit::CacheFlush);
        assert_eq!(decode(&exit(reason::WBINVD, 0)), Exit::CacheFlush);
        assert_eq!(decode(&exit(reason::RDPMC, 0)), Exit::Rdpmc);
        assert_eq!(decode(&exit(reason::MONITOR, 0)), Exit::HiddenInstruction);
        assert_eq!(decode(&exit(reason::MWAIT, 0)), Exit::HiddenInstruction);
        for r in [reason::INVD, reason::WBINVD, reason::RDPMC, reason::MONITOR] {
            assert!(has_instruction_length(r), "{r}");
        }
        let exc = |vector: u32| ExitInfo {
            reason: reason::EXCEPTION_OR_NMI,
            interruption_info: intr_info::VALID | intr_info::TYPE_HARDWARE_EXCEPTION | vector,
            ..Default::default()
        };
        let reflected = |vector, redelivered| Exit::ExceptionReflected {
            vector,
            redelivered,
        };
        assert_eq!(decode(&exc(17)), reflected(17, false));
        assert_eq!(decode(&exc(1)), reflected(1, false));
        // #AC raised while delivering #AC (IDT-vectoring information: a hardware
        // exception 17 with its error code): the CVE-2015-5307 loop.
        let during = |idt_vectoring| ExitInfo {
            idt_vectoring,
            ..exc(17)
        };
        let hw_ac = intr_info::VALID
            | intr_info::TYPE_HARDWARE_EXCEPTION
            | intr_info::DELIVER_ERROR_CODE
            | 17;
        assert_eq!(decode(&during(hw_ac)), reflected(17, true));
        for other in [
            intr_info::VALID | intr_info::TYPE_EXTERNAL_INTERRUPT | 17,
            intr_info::VALID | intr_info::TYPE_HARDWARE_EXCEPTION | 14,
            intr_info::TYPE_HARDWARE_EXCEPTION | 17,
        ] {
            assert_eq!(decode(&during(other)), reflected(17, false), "{other:#x}");
        }
        assert_eq!(
            decode(&exc(14)),
            Exit::Unknown {
                code: reason::EXCEPTION_OR_NMI as u64
            }
        );
    }

    #[test]
    fn msrs_and_cpuid() {
        let info = ExitInfo {
            reason: 32,
            rax: 0xFFFF_FFFF_1234_5678,
            rcx: 0xC000_0080,
            rdx: 0x9ABC_DEF0,
            ..Default::default()
        };
        assert_eq!(
            decode(&info),
            Exit::Wrmsr {
                msr: 0xC000_0080,
                value: 0x9ABC_DEF0_1234_5678
            }
        );
        assert_eq!(
            decode(&ExitInfo { reason: 31, ..info }),
            Exit::Rdmsr { msr: 0xC000_0080 }
        );
        assert_eq!(
            decode(&ExitInfo {
                reason: 10,
                rax: 0x4000_0000,
                rcx: 7,
                ..Default::default()
            }),
            Exit::Cpuid {
                leaf: 0x4000_0000,
                subleaf: 7
            }
        );
    }

    #[test]
    fn simple_reasons() {
        assert_eq!(decode(&exit(12, 0)), Exit::Halt);
        assert_eq!(decode(&exit(18, 0)), Exit::Hypercall);
        assert_eq!(decode(&exit(2, 0)), Exit::Shutdown);
        assert_eq!(decode(&exit(1, 0)), Exit::ExternalInterrupt);
        assert_eq!(decode(&exit(7, 0)), Exit::InterruptWindow);
        assert_eq!(decode(&exit(52, 0)), Exit::Preempted);
        for r in [19, 20, 21, 22, 23, 24, 25, 26, 27, 50, 53, 59] {
            assert_eq!(decode(&exit(r, 0)), Exit::VirtInstruction, "reason {r}");
        }
        assert_eq!(decode(&exit(55, 0)), Exit::Xsetbv { xcr: 0, value: 0 });
        assert_eq!(decode(&exit(11, 0)), Exit::Unknown { code: 11 });
        assert_eq!(decode(&exit(28, 0)), Exit::Unknown { code: 28 });
    }

    #[test]
    fn nmi_and_exceptions() {
        let nmi = ExitInfo {
            reason: 0,
            interruption_info: intr_info::VALID | intr_info::TYPE_NMI | 2,
            ..Default::default()
        };
        assert_eq!(decode(&nmi), Exit::ExternalInterrupt);
        let ud = ExitInfo {
            interruption_info: intr_info::VALID | intr_info::TYPE_HARDWARE_EXCEPTION | 6,
            ..nmi
        };
        assert_eq!(decode(&ud), Exit::Unknown { code: 0 });
    }

    #[test]
    fn ept_violation_and_misconfiguration() {
        let info = ExitInfo {
            reason: 48,
            qualification: ept_violation::WRITE | ept_violation::LINEAR_VALID,
            guest_physical: 0xFEE0_0300,
            ..Default::default()
        };
        assert_eq!(
            decode(&info),
            Exit::NestedPageFault {
                gpa: 0xFEE0_0300,
                write: true,
                fetch: false
            }
        );
        let fetch = ExitInfo {
            qualification: ept_violation::FETCH | ept_violation::READ,
            ..info
        };
        assert_eq!(
            decode(&fetch),
            Exit::NestedPageFault {
                gpa: 0xFEE0_0300,
                write: false,
                fetch: true
            }
        );
        match decode(&exit(49, 0)) {
            Exit::EntryFailure { code: 49, reason } => {
                assert!(reason.contains("EPT misconfiguration"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn entry_failures() {
        let cases = [
            (0x8000_0021, 0, "invalid guest state"),
            (0x8000_0021, 2, "page-directory-pointer"),
            (0x8000_0021, 4, "link pointer"),
            (0x8000_0022, 3, "MSR-load area"),
            (0x8000_0029, 0, "machine-check"),
            (0x8000_0030, 0, "undocumented"),
        ];
        for (r, q, text) in cases {
            match decode(&exit(r, q)) {
                Exit::EntryFailure { code, reason } => {
                    assert_eq!(code, r as u64);
                    assert!(reason.contains(text), "{reason}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn instruction_length_validity() {
        for r in [10, 12, 18, 19, 27, 28, 30, 31, 32, 55] {
            assert!(has_instruction_length(r), "{r}");
        }
        for r in [0, 1, 2, 7, 33, 48, 49, 52] {
            assert!(!has_instruction_length(r), "{r}");
        }
    }

    #[test]
    fn cr_access_qualification() {
        // MOV CR0, RAX.
        assert_eq!(
            CrAccess::decode(0x0000),
            CrAccess::MovToCr { cr: 0, gpr: 0 }
        );
        // MOV CR4, R9.
        assert_eq!(
            CrAccess::decode(0x0904),
            CrAccess::MovToCr { cr: 4, gpr: 9 }
        );
        // MOV RSI, CR3.
        assert_eq!(
            CrAccess::decode(0x0613),
            CrAccess::MovFromCr { cr: 3, gpr: 6 }
        );
        assert_eq!(CrAccess::decode(0x20), CrAccess::Clts);
        assert_eq!(CrAccess::decode(0x0001_0030), CrAccess::Lmsw { source: 1 });
    }

    #[test]
    fn instruction_error_table() {
        assert_eq!(
            instruction_error(7),
            "VM entry with invalid control field(s)"
        );
        assert_eq!(
            instruction_error(8),
            "VM entry with invalid host-state field(s)"
        );
        assert_eq!(
            instruction_error(11),
            "VMPTRLD with incorrect VMCS revision identifier"
        );
        assert_eq!(instruction_error(28), "Invalid operand to INVEPT/INVVPID");
        assert_eq!(instruction_error(14), "unknown VM-instruction error number");
        assert_eq!(instruction_error(0), "unknown VM-instruction error number");
        for n in [4, 5, 6, 7, 8, 26] {
            assert!(
                entry_instruction_error(n).contains(instruction_error(n)),
                "{n}"
            );
        }
        assert!(entry_instruction_error(12).contains("unexpected"));
    }
}
