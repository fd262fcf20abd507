//! Decoding a #VMEXIT into the vendor-neutral [`vcpu::Exit`], and finding the next
//! instruction when the processor does not report it.
//!
//! Everything here is a pure function of values the kernel copies out of the VMCB
//! (EXITCODE, EXITINFO1/2, nRIP) and the guest registers, so it is tested on the host.

use vcpu::{Exit, PortIo};

use crate::vmcb::{event, exit_code};

/// What the decoder needs from one #VMEXIT.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitInfo {
    /// VMCB EXITCODE.
    pub exitcode: u64,
    /// VMCB EXITINFO1.
    pub exitinfo1: u64,
    /// VMCB EXITINFO2.
    pub exitinfo2: u64,
    /// Guest RAX (from the VMCB save area, where VMRUN keeps it).
    pub rax: u64,
    /// Guest RCX and RDX (from the entry stub's register save area).
    pub rcx: u64,
    pub rdx: u64,
    /// VMCB nRIP when the CPU has NRIP save (CPUID Fn8000_000A EDX[3]), else `None`.
    pub nrip: Option<u64>,
    /// VMCB EXITINTINFO: the event whose delivery the intercept interrupted (APM
    /// Vol. 2 15.7.2), in the EVENTINJ encoding.
    pub exitintinfo: u64,
}

/// IOIO EXITINFO1 fields (APM Vol. 2 15.10.2, Figure 15-2).
pub mod ioio {
    /// 1 = IN, 0 = OUT.
    pub const TYPE_IN: u64 = 1 << 0;
    /// INS/OUTS.
    pub const STR: u64 = 1 << 2;
    /// REP prefix.
    pub const REP: u64 = 1 << 3;
    pub const SZ8: u64 = 1 << 4;
    pub const SZ16: u64 = 1 << 5;
    pub const SZ32: u64 = 1 << 6;
    /// Address size of a string instruction, bits 7-9 (A16, A32, A64).
    pub const A16: u64 = 1 << 7;
    pub const A32: u64 = 1 << 8;
    pub const A64: u64 = 1 << 9;
    /// Effective segment of a string instruction, bits 12:10.
    pub const SEG_SHIFT: u64 = 10;
    pub const PORT_SHIFT: u64 = 16;
}

/// #NPF error code in EXITINFO1 (APM Vol. 2 15.25.6): the page-fault error code bits
/// plus where in the walk the fault happened.
pub mod npf {
    /// The translation was present (so this is a permission fault).
    pub const PRESENT: u64 = 1 << 0;
    pub const WRITE: u64 = 1 << 1;
    /// Always set: nested walks are user accesses.
    pub const USER: u64 = 1 << 2;
    /// A reserved bit was set in a nested entry: a table-building bug (for instance
    /// NX while the host's EFER.NXE is clear).
    pub const RESERVED: u64 = 1 << 3;
    /// Instruction fetch.
    pub const FETCH: u64 = 1 << 4;
    /// The fault hit the final guest-physical address of the access.
    pub const FINAL_GPA: u64 = 1 << 32;
    /// The fault hit a guest page-table access during the guest's own walk.
    pub const GUEST_PAGE_TABLE: u64 = 1 << 33;
}

/// The reason text for VMRUN's VMEXIT_INVALID.
pub const ENTRY_FAILURE_REASON: &str =
    "VMRUN failed its consistency checks (VMEXIT_INVALID); Vmcb::consistency_check names the rule";

const CR4_WRITE: u64 = exit_code::CR0_WRITE + 4;

/// With DecodeAssists, EXITINFO1 of a CR write exit holds bit 63 = "MOV to CR" and
/// the source register's number in bits 3:0 (APM Vol. 2 15.33.1); LMSW and CLTS
/// leave bit 63 clear. Returns the register number for a MOV.
pub fn cr_write_gpr(info: &ExitInfo) -> Option<u8> {
    (info.exitinfo1 & (1 << 63) != 0).then_some((info.exitinfo1 & 0xF) as u8)
}

/// Translate one #VMEXIT.
///
/// The exit code is compared on its low 32 bits: hardware stores VMEXIT_INVALID as -1
/// in all 64 bits, QEMU's TCG as 0xFFFF_FFFF; every defined code fits in 32 bits.
///
/// Nested page faults always come back as [`Exit::NestedPageFault`]: whether the GPA is
/// MMIO is the VMM core's knowledge, not the backend's. A physical NMI (when
/// intercepted) is reported as [`Exit::ExternalInterrupt`]: the host takes it once it
/// sets GIF again after the #VMEXIT.
pub fn decode(info: &ExitInfo) -> Exit {
    let code = info.exitcode as u32 as u64;
    let unknown = Exit::Unknown {
        code: info.exitcode,
    };
    match code {
        exit_code::IOIO => decode_ioio(info.exitinfo1).unwrap_or(unknown),
        exit_code::MSR => {
            let msr = info.rcx as u32;
            match info.exitinfo1 {
                0 => Exit::Rdmsr { msr },
                1 => Exit::Wrmsr {
                    msr,
                    value: (info.rdx << 32) | (info.rax & 0xFFFF_FFFF),
                },
                _ => unknown,
            }
        }
        exit_code::NPF => Exit::NestedPageFault {
            gpa: info.exitinfo2,
            write: info.exitinfo1 & npf::WRITE != 0,
            fetch: info.exitinfo1 & npf::FETCH != 0,
        },
        exit_code::CPUID => Exit::Cpuid {
            leaf: info.rax as u32,
            subleaf: info.rcx as u32,
        },
        exit_code::HLT => Exit::Halt,
        exit_code::VMMCALL => Exit::Hypercall,
        // Only CR0 and CR4 writes are intercepted. The source register, when the CPU
        // has DecodeAssists, is filled in by the backend ([`cr_write_gpr`]).
        c @ (exit_code::CR0_WRITE | CR4_WRITE) => Exit::CrWrite {
            cr: (c - exit_code::CR0_WRITE) as u8,
            value: None,
        },
        exit_code::XSETBV => Exit::Xsetbv {
            xcr: info.rcx as u32,
            value: (info.rdx << 32) | (info.rax & 0xFFFF_FFFF),
        },
        exit_code::SHUTDOWN => Exit::Shutdown,
        exit_code::INTR | exit_code::NMI => Exit::ExternalInterrupt,
        // VINTR: the guest can take an interrupt. IRET (intercepted only while an
        // injected NMI's handler runs): NMIs are about to be unblocked.
        exit_code::VINTR | exit_code::IRET => Exit::InterruptWindow,
        exit_code::VMRUN
        | exit_code::VMLOAD
        | exit_code::VMSAVE
        | exit_code::STGI
        | exit_code::CLGI
        | exit_code::SKINIT
        | exit_code::INVLPGA => Exit::VirtInstruction,
        exit_code::INVD | exit_code::WBINVD => Exit::CacheFlush,
        exit_code::RDPMC => Exit::Rdpmc,
        exit_code::MONITOR | exit_code::MWAIT | exit_code::MWAIT_CONDITIONAL | exit_code::RDPRU => {
            Exit::HiddenInstruction
        }
        // Queued for the guest again by the backend (`reflect`).
        c if c == exit_code::EXCEPTION_BASE + vcpu::Exception::DB_VECTOR as u64
            || c == exit_code::EXCEPTION_BASE + vcpu::Exception::AC_VECTOR as u64 =>
        {
            let vector = (c - exit_code::EXCEPTION_BASE) as u8;
            Exit::ExceptionReflected {
                vector,
                redelivered: info.exitintinfo
                    & (event::VALID | event::TYPE_MASK | event::VECTOR_MASK)
                    == event::VALID | event::TYPE_EXCEPTION | vector as u64,
            }
        }
        exit_code::ICEBP => Exit::ExceptionReflected {
            vector: vcpu::Exception::DB_VECTOR,
            redelivered: false,
        },
        0xFFFF_FFFF => Exit::EntryFailure {
            code: info.exitcode,
            reason: ENTRY_FAILURE_REASON,
        },
        0xFFFF_FFFE => Exit::EntryFailure {
            code: info.exitcode,
            reason: "VMRUN failed: the SEV-ES VMSA is busy (VMEXIT_BUSY)",
        },
        _ => unknown,
    }
}

/// The port access an IOIO EXITINFO1 describes; `None` if its size field is not
/// exactly one of SZ8/SZ16/SZ32.
pub fn decode_ioio(exitinfo1: u64) -> Option<Exit> {
    let size = match exitinfo1 & (ioio::SZ8 | ioio::SZ16 | ioio::SZ32) {
        ioio::SZ8 => 1,
        ioio::SZ16 => 2,
        ioio::SZ32 => 4,
        _ => return None,
    };
    Some(Exit::PortIo(PortIo {
        port: (exitinfo1 >> ioio::PORT_SHIFT) as u16,
        size,
        write: exitinfo1 & ioio::TYPE_IN == 0,
        string: exitinfo1 & ioio::STR != 0,
        rep: exitinfo1 & ioio::REP != 0,
    }))
}

/// Length of the intercepted instruction for exits whose instruction has a single
/// encoding, for CPUs without NRIP save (QEMU TCG among them). Prefixes are not
/// accounted for: a guest that puts a redundant prefix on CPUID or HLT would be resumed
/// inside the instruction, which no real guest code does.
///
/// `None` for exits that are not instruction intercepts, for instructions with
/// variable encodings (INVLPG, MOV CR), and for IOIO, whose next RIP the processor
/// always stores in EXITINFO2 (APM 15.10.2).
pub fn instruction_length(exitcode: u64) -> Option<u64> {
    let len = match exitcode as u32 as u64 {
        exit_code::HLT | exit_code::ICEBP => 1,
        exit_code::CPUID
        | exit_code::MSR
        | exit_code::RDTSC
        | exit_code::RDPMC
        | exit_code::INVD
        | exit_code::WBINVD
        // PAUSE is F3 90.
        | exit_code::PAUSE => 2,
        exit_code::VMRUN
        | exit_code::VMMCALL
        | exit_code::VMLOAD
        | exit_code::VMSAVE
        | exit_code::STGI
        | exit_code::CLGI
        | exit_code::SKINIT
        | exit_code::INVLPGA
        | exit_code::RDTSCP
        | exit_code::MONITOR
        | exit_code::MWAIT
        | exit_code::MWAIT_CONDITIONAL
        | exit_code::XSETBV
        | exit_code::RDPRU => 3,
        _ => return None,
    };
    Some(len)
}

/// The guest RIP after the intercepted instruction, for skipping it.
///
/// Preference: nRIP when the CPU saved one (it is 0 for exits that are not instruction
/// intercepts), then EXITINFO2 for IOIO, then `rip` plus [`instruction_length`].
/// `None` when none of these applies (the exit does not end at an instruction boundary
/// the backend can compute; for example an NPF on MMIO needs an instruction decoder).
pub fn next_rip(info: &ExitInfo, rip: u64) -> Option<u64> {
    if let Some(nrip) = info.nrip {
        if nrip != 0 {
            return Some(nrip);
        }
    }
    if info.exitcode as u32 as u64 == exit_code::IOIO {
        return Some(info.exitinfo2);
    }
    instruction_length(info.exitcode).map(|len| rip.wrapping_add(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cr_writes_and_xsetbv() {
        assert_eq!(
            decode(&info(0x14, 1 << 63 | 9, 0)),
            Exit::CrWrite { cr: 4, value: None }
        );
        assert_eq!(cr_write_gpr(&info(0x14, 1 << 63 | 9, 0)), Some(9));
        assert_eq!(
            cr_write_gpr(&info(0x10, 0, 0)),
            None,
            "LMSW/CLTS or no assists"
        );
        assert_eq!(
            decode(&info(0x10, 0, 0)),
            Exit::CrWrite { cr: 0, value: None }
        );
        let x = ExitInfo {
            rax: 0xFFFF_FFFF_0000_0007,
            rcx: 0,
            rdx: 0x1,
            ..info(exit_code::XSETBV, 0, 0)
        };
        assert_eq!(
            decode(&x),
            Exit::Xsetbv {
                xcr: 0,
                value: 0x1_0000_0007
            }
        );
        assert_eq!(next_rip(&x, 0x100), Some(0x103));
    }

    fn info(exitcode: u64, exitinfo1: u64, exitinfo2: u64) -> ExitInfo {
        ExitInfo {
            exitcode,
            exitinfo1,
            exitinfo2,
            ..ExitInfo::default()
        }
    }

    fn io_info1(port: u16, flags: u64) -> u64 {
        ((port as u64) << 16) | flags
    }

    #[test]
    fn ioio_out_byte() {
        let e = decode(&info(exit_code::IOIO, io_info1(0x3F8, ioio::SZ8), 0x1002));
        assert_eq!(
            e,
            Exit::PortIo(PortIo {
                port: 0x3F8,
                size: 1,
                write: true,
                string: false,
                rep: false
            })
        );
    }

    #[test]
    fn ioio_in_sizes_and_flags() {
        let e = decode(&info(
            exit_code::IOIO,
            io_info1(0xCFC, ioio::TYPE_IN | ioio::SZ32 | ioio::A32),
            0,
        ));
        assert_eq!(
            e,
            Exit::PortIo(PortIo {
                port: 0xCFC,
                size: 4,
                write: false,
                string: false,
                rep: false
            })
        );
        let e = decode(&info(
            exit_code::IOIO,
            io_info1(0x1F0, ioio::TYPE_IN | ioio::STR | ioio::REP | ioio::SZ16),
            0,
        ));
        assert_eq!(
            e,
            Exit::PortIo(PortIo {
                port: 0x1F0,
                size: 2,
                write: false,
                string: true,
                rep: true
            })
        );
        // The port is the full upper half of the low 32 bits.
        let e = decode(&info(exit_code::IOIO, io_info1(0xFFFF, ioio::SZ8), 0));
        assert!(matches!(e, Exit::PortIo(PortIo { port: 0xFFFF, .. })));
    }

    #[test]
    fn ioio_bad_size_is_unknown() {
        for flags in [0, ioio::SZ8 | ioio::SZ16] {
            assert_eq!(
                decode(&info(exit_code::IOIO, io_info1(0x80, flags), 0)),
                Exit::Unknown {
                    code: exit_code::IOIO
                }
            );
        }
    }

    #[test]
    fn msr_exits() {
        let mut i = info(exit_code::MSR, 0, 0);
        i.rcx = 0xFFFF_FFFF_C000_0080;
        assert_eq!(decode(&i), Exit::Rdmsr { msr: 0xC000_0080 });
        i.exitinfo1 = 1;
        i.rax = 0xDEAD_BEEF_1234_5678;
        i.rdx = 0xAABB_CCDD;
        assert_eq!(
            decode(&i),
            Exit::Wrmsr {
                msr: 0xC000_0080,
                value: 0xAABB_CCDD_1234_5678
            }
        );
        i.exitinfo1 = 2;
        assert_eq!(
            decode(&i),
            Exit::Unknown {
                code: exit_code::MSR
            }
        );
    }

    #[test]
    fn npf_exits() {
        let e = decode(&info(
            exit_code::NPF,
            npf::USER | npf::WRITE | npf::FINAL_GPA,
            0xFEE0_0030,
        ));
        assert_eq!(
            e,
            Exit::NestedPageFault {
                gpa: 0xFEE0_0030,
                write: true,
                fetch: false
            }
        );
        let e = decode(&info(
            exit_code::NPF,
            npf::USER | npf::PRESENT | npf::FETCH,
            0x20_0000,
        ));
        assert_eq!(
            e,
            Exit::NestedPageFault {
                gpa: 0x20_0000,
                write: false,
                fetch: true
            }
        );
    }

    #[test]
    fn cpuid_uses_eax_and_ecx() {
        let mut i = info(exit_code::CPUID, 0, 0);
        i.rax = 0xFFFF_FFFF_8000_0001;
        i.rcx = 0x1_0000_0002;
        assert_eq!(
            decode(&i),
            Exit::Cpuid {
                leaf: 0x8000_0001,
                subleaf: 2
            }
        );
    }

    #[test]
    fn simple_exits() {
        let cases = [
            (exit_code::HLT, Exit::Halt),
            (exit_code::VMMCALL, Exit::Hypercall),
            (exit_code::SHUTDOWN, Exit::Shutdown),
            (exit_code::INTR, Exit::ExternalInterrupt),
            (exit_code::NMI, Exit::ExternalInterrupt),
            (exit_code::VINTR, Exit::InterruptWindow),
            (exit_code::VMRUN, Exit::VirtInstruction),
            (exit_code::VMLOAD, Exit::VirtInstruction),
            (exit_code::VMSAVE, Exit::VirtInstruction),
            (exit_code::STGI, Exit::VirtInstruction),
            (exit_code::CLGI, Exit::VirtInstruction),
            (exit_code::SKINIT, Exit::VirtInstruction),
            (exit_code::INVLPGA, Exit::VirtInstruction),
            (exit_code::RDTSC, Exit::Unknown { code: 0x6E }),
            (0x40 + 14, Exit::Unknown { code: 0x4E }),
        ];
        for (code, expected) in cases {
            assert_eq!(decode(&info(code, 0, 0)), expected, "{code:#x}");
        }
    }

    #[test]
    fn entry_failure_in_both_encodings() {
        for code in [exit_code::INVALID, 0xFFFF_FFFF] {
            assert_eq!(
                decode(&info(code, 0, 0)),
                Exit::EntryFailure {
                    code,
                    reason: ENTRY_FAILURE_REASON
                }
            );
        }
        assert!(matches!(
            decode(&info(exit_code::BUSY, 0, 0)),
            Exit::EntryFailure { .. }
        ));
    }

    #[test]
    fn lengths() {
        assert_eq!(instruction_length(exit_code::CPUID), Some(2));
        assert_eq!(instruction_length(exit_code::HLT), Some(1));
        assert_eq!(instruction_length(exit_code::VMMCALL), Some(3));
        assert_eq!(instruction_length(exit_code::MSR), Some(2));
        assert_eq!(instruction_length(exit_code::VMRUN), Some(3));
        assert_eq!(instruction_length(exit_code::VMLOAD), Some(3));
        assert_eq!(instruction_length(exit_code::VMSAVE), Some(3));
        assert_eq!(instruction_length(exit_code::STGI), Some(3));
        assert_eq!(instruction_length(exit_code::CLGI), Some(3));
        assert_eq!(instruction_length(exit_code::IOIO), None);
        assert_eq!(instruction_length(exit_code::NPF), None);
        assert_eq!(instruction_length(exit_code::INVLPG), None);
        assert_eq!(instruction_length(exit_code::INTR), None);
    }

    #[test]
    fn hardening_intercepts_decode() {
        assert_eq!(decode(&info(exit_code::INVD, 0, 0)), Exit::CacheFlush);
        assert_eq!(decode(&info(exit_code::WBINVD, 0, 0)), Exit::CacheFlush);
        assert_eq!(decode(&info(exit_code::RDPMC, 0, 0)), Exit::Rdpmc);
        for code in [
            exit_code::MONITOR,
            exit_code::MWAIT,
            exit_code::MWAIT_CONDITIONAL,
            exit_code::RDPRU,
        ] {
            assert_eq!(decode(&info(code, 0, 0)), Exit::HiddenInstruction);
        }
        assert_eq!(
            decode(&info(exit_code::EXCEPTION_BASE + 17, 0, 0)),
            Exit::ExceptionReflected {
                vector: 17,
                redelivered: false
            }
        );
        assert_eq!(
            decode(&info(exit_code::EXCEPTION_BASE + 1, 0, 0)),
            Exit::ExceptionReflected {
                vector: 1,
                redelivered: false
            }
        );
        assert_eq!(
            decode(&info(exit_code::ICEBP, 0, 0)),
            Exit::ExceptionReflected {
                vector: 1,
                redelivered: false
            }
        );
        // #AC raised while delivering #AC (EXITINTINFO: valid exception 17 with its
        // error code): the CVE-2015-5307 loop. Another interrupted event is not.
        let ac = |exitintinfo| ExitInfo {
            exitintinfo,
            ..info(exit_code::EXCEPTION_BASE + 17, 0, 0)
        };
        let during_ac = event::VALID | event::TYPE_EXCEPTION | event::ERROR_CODE_VALID | 17;
        assert_eq!(
            decode(&ac(during_ac)),
            Exit::ExceptionReflected {
                vector: 17,
                redelivered: true
            }
        );
        for other in [
            event::VALID | event::TYPE_INTR | 17,
            event::VALID | event::TYPE_EXCEPTION | 14,
            event::TYPE_EXCEPTION | 17,
        ] {
            assert_eq!(
                decode(&ac(other)),
                Exit::ExceptionReflected {
                    vector: 17,
                    redelivered: false
                },
                "{other:#x}"
            );
        }
        // Other exception vectors are not intercepted: unknown if they ever came.
        assert_eq!(
            decode(&info(exit_code::EXCEPTION_BASE + 14, 0, 0)),
            Exit::Unknown {
                code: exit_code::EXCEPTION_BASE + 14
            }
        );
        // Skipping them needs their lengths where NRIP save is missing.
        assert_eq!(instruction_length(exit_code::WBINVD), Some(2));
        assert_eq!(instruction_length(exit_code::MONITOR), Some(3));
    }

    #[test]
    fn next_rip_preference() {
        // NRIP save present and valid.
        let mut i = info(exit_code::CPUID, 0, 0);
        i.nrip = Some(0x1005);
        assert_eq!(next_rip(&i, 0x1000), Some(0x1005));
        // NRIP save present but 0 (not an instruction intercept), or absent.
        i.nrip = Some(0);
        assert_eq!(next_rip(&i, 0x1000), Some(0x1002));
        i.nrip = None;
        assert_eq!(next_rip(&i, 0x1000), Some(0x1002));
        // IOIO: EXITINFO2 holds the next RIP (covers prefixed and string forms).
        let i = info(exit_code::IOIO, io_info1(0x60, ioio::SZ8), 0x7C03);
        assert_eq!(next_rip(&i, 0x7C01), Some(0x7C03));
        // Nothing to go on.
        let i = info(exit_code::NPF, 0, 0xB8000);
        assert_eq!(next_rip(&i, 0x1000), None);
    }
}
