//! Exceptions the AMD-V backend intercepts only to give them straight back: #AC and
//! #DB (and ICEBP, which raises #DB). A guest can make the delivery of either raise
//! the same exception again, forever and inside the processor, where no interrupt
//! ends it (CVE-2015-5307: #AC while pushing the #AC frame on a misaligned stack;
//! CVE-2015-8104: #DB from a data breakpoint on the #DB frame). With the intercepts
//! each round trip is a #VMEXIT: the loop is preemptible by the host's timer and
//! ends only when the guest's own processor state ends it (a triple fault).
//!
//! Pure: the backend passes the VMCB values in and writes EVENTINJ back.

use vcpu::Exception;

use crate::vmcb::{event, exit_code};

/// The EVENTINJ value after an intercepted exception `exitcode` (#AC or #DB, APM
/// Vol. 2 15.12: EXITINFO1 holds the error code of an exception that pushes one), with
/// `pending` the EVENTINJ the backend already queued from EXITINTINFO (the event whose
/// delivery the exception interrupted, APM 15.7.2). `None` for other exit codes.
///
/// The new exception replaces an interrupted exception or software interrupt, as the
/// processor does for two benign exceptions (SDM Vol. 3A Table 6-5: handled
/// serially; a fault re-raises the first when its instruction restarts). An
/// interrupted external interrupt or NMI was already accepted from the guest's
/// interrupt controller and cannot be dropped: it is delivered again first, and a
/// fault its delivery raises recurs then.
pub fn reflected_event(exitcode: u64, exitinfo1: u64, pending: u64) -> Option<u64> {
    let exception = match exitcode as u32 as u64 {
        c if c == exit_code::EXCEPTION_BASE + Exception::DB_VECTOR as u64 => Exception {
            vector: Exception::DB_VECTOR,
            error_code: None,
        },
        c if c == exit_code::EXCEPTION_BASE + Exception::AC_VECTOR as u64 => Exception {
            vector: Exception::AC_VECTOR,
            error_code: Some(exitinfo1 as u32),
        },
        _ => return None,
    };
    let keep = pending & event::VALID != 0
        && matches!(
            pending & event::TYPE_MASK,
            event::TYPE_INTR | event::TYPE_NMI
        );
    Some(if keep {
        pending
    } else {
        event::exception(exception)
    })
}

/// Whether a #DB intercepted with this DR6 and the guest's DR7 is one the guest
/// cannot have caused: no breakpoint enabled in DR7 (L0-L3, G0-G3), and DR6 names
/// no single step (BS), task switch (BT), debug-register access (BD) or bus lock
/// (BLD, bit 11, which reads 0 when set; SDM Vol. 3A 18.2.3). Real processors never
/// raise one; QEMU's TCG does when an instruction breakpoint another guest set
/// outlives that guest's DR7 (its breakpoint list is not rebuilt at VMRUN) and
/// fires in whatever runs at that address next. Such a #DB is dropped, not
/// delivered: the guest would take an exception no debug register of its own
/// explains (and a loader-placed guest dies of it).
pub fn spurious_db(dr6: u64, dr7: u64) -> bool {
    const ENABLES: u64 = 0xFF;
    const BD: u64 = 1 << 13;
    const BS: u64 = 1 << 14;
    const BT: u64 = 1 << 15;
    const BLD_CLEAR: u64 = 1 << 11;
    dr7 & ENABLES == 0 && dr6 & (BD | BS | BT) == 0 && dr6 & BLD_CLEAR != 0
}

/// DR7 with GD (bit 13) cleared: the processor clears it when it delivers #DB, so
/// that the handler may use the debug registers (SDM Vol. 3A 18.2.4); an injected #DB
/// must do the same.
pub const fn dr7_after_db(dr7: u64) -> u64 {
    dr7 & !(1 << 13)
}

#[cfg(test)]
mod tests {
    use super::*;

    const AC: u64 = exit_code::EXCEPTION_BASE + 17;
    const DB: u64 = exit_code::EXCEPTION_BASE + 1;

    #[test]
    fn a_db_no_debug_register_explains_is_spurious() {
        let dr6_idle = 0xFFFF_0FF0;
        // An instruction breakpoint 0 reported while DR7 enables nothing.
        assert!(spurious_db(dr6_idle | 1, 0x400));
        // Enabled breakpoints, single step, task switch, DR access, bus lock: real.
        assert!(!spurious_db(dr6_idle | 1, 0x401));
        assert!(!spurious_db(dr6_idle | 1, 0x402 | 1 << 16));
        assert!(!spurious_db(dr6_idle | 1 << 14, 0x400));
        assert!(!spurious_db(dr6_idle | 1 << 15, 0x400));
        assert!(!spurious_db(dr6_idle | 1 << 13, 0x400));
        assert!(!spurious_db(dr6_idle & !(1 << 11), 0x400));
    }

    #[test]
    fn ac_keeps_its_error_code() {
        let e = reflected_event(AC, 0, 0).unwrap();
        assert_eq!(
            e,
            event::VALID | event::TYPE_EXCEPTION | event::ERROR_CODE_VALID | 17
        );
    }

    #[test]
    fn db_has_no_error_code() {
        assert_eq!(
            reflected_event(DB, 0x1234, 0),
            Some(event::VALID | event::TYPE_EXCEPTION | 1)
        );
    }

    #[test]
    fn an_interrupted_exception_is_replaced() {
        // #AC while delivering #AC (the CVE-2015-5307 loop): the new #AC goes in.
        let pending = event::VALID | event::TYPE_EXCEPTION | event::ERROR_CODE_VALID | 17;
        assert_eq!(
            reflected_event(AC, 0, pending),
            Some(event::VALID | event::TYPE_EXCEPTION | event::ERROR_CODE_VALID | 17)
        );
        let soft = event::VALID | event::TYPE_SOFT_INT | 0x80;
        assert_eq!(
            reflected_event(DB, 0, soft),
            Some(event::VALID | event::TYPE_EXCEPTION | 1)
        );
    }

    #[test]
    fn an_interrupted_interrupt_or_nmi_goes_first() {
        let irq = event::VALID | event::TYPE_INTR | 0x30;
        assert_eq!(reflected_event(AC, 0, irq), Some(irq));
        let nmi = event::VALID | event::TYPE_NMI | 2;
        assert_eq!(reflected_event(DB, 0, nmi), Some(nmi));
    }

    #[test]
    fn other_exits_are_not_reflected() {
        assert_eq!(reflected_event(exit_code::CPUID, 0, 0), None);
        assert_eq!(reflected_event(exit_code::EXCEPTION_BASE + 14, 0, 0), None);
    }

    #[test]
    fn db_clears_general_detect() {
        assert_eq!(dr7_after_db(0x2401), 0x401);
        assert_eq!(dr7_after_db(0x400), 0x400);
    }
}
