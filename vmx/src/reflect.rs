//! Exceptions the VT-x backend intercepts (exception bitmap bits 1 and 17) only to
//! give them straight back: #DB and #AC. A guest can make the delivery of either
//! raise the same exception again, forever and inside the processor, where no
//! interrupt ends it (CVE-2015-5307: #AC while pushing the #AC frame on a misaligned
//! stack; CVE-2015-8104: #DB from a data breakpoint on the #DB frame). With the
//! intercepts each round trip is a VM exit: the loop is preemptible by the host's
//! timer and ends only when the guest's own state ends it (a triple fault).
//!
//! Pure apart from the [`VmcsAccess`] it is given: host-tested on a fake VMCS.

use vcpu::slice::dr6_after_db;
use vcpu::Exception;

use crate::exit::ExitInfo;
use crate::vmcs::{control32, guest_nat, intr_info, reason, ro32, VmcsAccess};

/// After an exception exit for #DB or #AC (`info`), queues the exception for the
/// guest again and returns the guest's new DR6 (the processor left DR6 alone, SDM
/// Vol. 3C 27.1: for #DB the exit qualification holds what the processor would have
/// put in it). `dr6` is the guest's DR6 now. `None` when `info` is another exit.
///
/// Call after `ops::reinject_vectoring`: an event whose delivery raised the exception
/// is queued then. An interrupted exception or software interrupt is replaced by the
/// new exception (two benign exceptions are handled serially, SDM Vol. 3A Table 6-5;
/// a fault re-raises the first when its instruction restarts). An interrupted
/// external interrupt or NMI was already accepted from the guest's interrupt
/// controller and cannot be dropped: it stays queued, and a fault its delivery raises
/// recurs then.
///
/// #DB raised by INT1 (ICEBP) exits as a privileged software exception (SDM Vol. 3C
/// 28.2.2) and is re-injected as one, with the instruction length, so the guest
/// returns after the INT1; it does not change DR6. A hardware #DB clears DR7.GD, as
/// its delivery would (SDM Vol. 3A 18.2.4).
pub fn reflect_exception(vmcs: &mut impl VmcsAccess, info: &ExitInfo, dr6: u64) -> Option<u64> {
    if info.basic() != reason::EXCEPTION_OR_NMI || info.interruption_info & intr_info::VALID == 0 {
        return None;
    }
    let vector = (info.interruption_info & intr_info::VECTOR_MASK) as u8;
    let kind = info.interruption_info & intr_info::TYPE_MASK;
    if kind == intr_info::TYPE_NMI
        || !(vector == Exception::DB_VECTOR || vector == Exception::AC_VECTOR)
    {
        return None;
    }
    let queued = vmcs.read(control32::VM_ENTRY_INTERRUPTION_INFO) as u32;
    if queued & intr_info::VALID != 0
        && matches!(
            queued & intr_info::TYPE_MASK,
            intr_info::TYPE_EXTERNAL_INTERRUPT | intr_info::TYPE_NMI
        )
    {
        return Some(dr6);
    }
    let mut entry = intr_info::VALID | kind | vector as u32;
    if kind == intr_info::TYPE_PRIVILEGED_SOFTWARE_EXCEPTION {
        let len = vmcs.read(ro32::VM_EXIT_INSTRUCTION_LENGTH);
        vmcs.write(control32::VM_ENTRY_INSTRUCTION_LENGTH, len);
    }
    if info.interruption_info & intr_info::DELIVER_ERROR_CODE != 0 {
        entry |= intr_info::DELIVER_ERROR_CODE;
        let code = vmcs.read(ro32::VM_EXIT_INTERRUPTION_ERROR_CODE);
        vmcs.write(control32::VM_ENTRY_EXCEPTION_ERROR_CODE, code);
    }
    vmcs.write(control32::VM_ENTRY_INTERRUPTION_INFO, entry as u64);
    if vector == Exception::DB_VECTOR && kind == intr_info::TYPE_HARDWARE_EXCEPTION {
        let dr7 = vmcs.read(guest_nat::DR7);
        vmcs.write(guest_nat::DR7, dr7 & !(1 << 13));
        return Some(dr6_after_db(dr6, info.qualification));
    }
    Some(dr6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmcs::fake::FakeVmcs;
    use vcpu::slice::DR6_INIT;

    fn exception(vector: u32, kind: u32, error: bool, qualification: u64) -> ExitInfo {
        ExitInfo {
            reason: reason::EXCEPTION_OR_NMI,
            qualification,
            interruption_info: intr_info::VALID
                | kind
                | vector
                | if error {
                    intr_info::DELIVER_ERROR_CODE
                } else {
                    0
                },
            ..ExitInfo::default()
        }
    }

    #[test]
    fn ac_goes_back_with_its_error_code() {
        let mut v = FakeVmcs::default();
        v.write(ro32::VM_EXIT_INTERRUPTION_ERROR_CODE, 0);
        let info = exception(17, intr_info::TYPE_HARDWARE_EXCEPTION, true, 0);
        assert_eq!(reflect_exception(&mut v, &info, DR6_INIT), Some(DR6_INIT));
        assert_eq!(
            v.get(control32::VM_ENTRY_INTERRUPTION_INFO) as u32,
            intr_info::VALID
                | intr_info::TYPE_HARDWARE_EXCEPTION
                | intr_info::DELIVER_ERROR_CODE
                | 17
        );
        assert_eq!(v.get(control32::VM_ENTRY_EXCEPTION_ERROR_CODE), 0);
    }

    #[test]
    fn ac_replaces_the_interrupted_ac() {
        // #AC while delivering #AC: reinject_vectoring queued the first one.
        let mut v = FakeVmcs::default();
        v.write(
            control32::VM_ENTRY_INTERRUPTION_INFO,
            (intr_info::VALID
                | intr_info::TYPE_HARDWARE_EXCEPTION
                | intr_info::DELIVER_ERROR_CODE
                | 17) as u64,
        );
        let info = exception(17, intr_info::TYPE_HARDWARE_EXCEPTION, true, 0);
        assert!(reflect_exception(&mut v, &info, DR6_INIT).is_some());
        assert_eq!(
            v.get(control32::VM_ENTRY_INTERRUPTION_INFO) as u32,
            intr_info::VALID
                | intr_info::TYPE_HARDWARE_EXCEPTION
                | intr_info::DELIVER_ERROR_CODE
                | 17
        );
    }

    #[test]
    fn db_sets_dr6_from_the_qualification_and_clears_gd() {
        let mut v = FakeVmcs::default();
        v.write(guest_nat::DR7, 0x2402);
        // B0 (an instruction or data breakpoint) and BS.
        let info = exception(1, intr_info::TYPE_HARDWARE_EXCEPTION, false, (1 << 14) | 1);
        assert_eq!(
            reflect_exception(&mut v, &info, 0xFFFF_0FF2),
            Some(0xFFFF_4FF1)
        );
        assert_eq!(v.get(guest_nat::DR7), 0x402);
        assert_eq!(
            v.get(control32::VM_ENTRY_INTERRUPTION_INFO) as u32,
            intr_info::VALID | intr_info::TYPE_HARDWARE_EXCEPTION | 1
        );
        assert!(!v
            .fields
            .contains_key(&control32::VM_ENTRY_EXCEPTION_ERROR_CODE));
    }

    #[test]
    fn int1_is_reinjected_after_the_instruction() {
        let mut v = FakeVmcs::default();
        v.write(ro32::VM_EXIT_INSTRUCTION_LENGTH, 1);
        let info = exception(1, intr_info::TYPE_PRIVILEGED_SOFTWARE_EXCEPTION, false, 0);
        assert_eq!(reflect_exception(&mut v, &info, DR6_INIT), Some(DR6_INIT));
        assert_eq!(v.get(control32::VM_ENTRY_INSTRUCTION_LENGTH), 1);
        assert_eq!(
            v.get(control32::VM_ENTRY_INTERRUPTION_INFO) as u32,
            intr_info::VALID | intr_info::TYPE_PRIVILEGED_SOFTWARE_EXCEPTION | 1
        );
    }

    #[test]
    fn an_interrupted_external_interrupt_stays_queued() {
        let mut v = FakeVmcs::default();
        let irq = intr_info::VALID | intr_info::TYPE_EXTERNAL_INTERRUPT | 0x30;
        v.write(control32::VM_ENTRY_INTERRUPTION_INFO, irq as u64);
        let info = exception(17, intr_info::TYPE_HARDWARE_EXCEPTION, true, 0);
        assert_eq!(reflect_exception(&mut v, &info, DR6_INIT), Some(DR6_INIT));
        assert_eq!(v.get(control32::VM_ENTRY_INTERRUPTION_INFO) as u32, irq);
    }

    #[test]
    fn other_exits_are_left_alone() {
        let mut v = FakeVmcs::default();
        let pf = exception(14, intr_info::TYPE_HARDWARE_EXCEPTION, true, 0);
        assert_eq!(reflect_exception(&mut v, &pf, DR6_INIT), None);
        let nmi = exception(2, intr_info::TYPE_NMI, false, 0);
        assert_eq!(reflect_exception(&mut v, &nmi, DR6_INIT), None);
        let cpuid = ExitInfo {
            reason: reason::CPUID,
            ..ExitInfo::default()
        };
        assert_eq!(reflect_exception(&mut v, &cpuid, DR6_INIT), None);
        assert!(v.fields.is_empty());
    }
}
