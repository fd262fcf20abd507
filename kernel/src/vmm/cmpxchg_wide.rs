//! `CMPXCHG8B m64` and `CMPXCHG16B m128` (0F C7 /1, REX.W for the 16-byte form) whose
//! operand is a device or unbacked space (SDM Vol. 2A "CMPXCHG8B/CMPXCHG16B").
//!
//! The operand is read, compared with EDX:EAX (RDX:RAX), and ZF set to the outcome
//! (no other flag changes). Equal: ECX:EBX (RCX:RBX) is written. Not equal: the old
//! value is written back - the SDM's "the destination operand is written back if it
//! is not modified", the processor's locked read-modify-write cycle - and loaded into
//! EDX:EAX (RDX:RAX). A 32-bit half written in 64-bit mode zero-extends, as any
//! 32-bit register write does (SDM Vol. 1 3.4.1.1).
//!
//! Devices take accesses of at most 8 bytes: `CMPXCHG8B` is one 8-byte read and one
//! 8-byte write; `CMPXCHG16B` is two 8-byte reads at ascending addresses and then two
//! 8-byte writes at ascending addresses. Both happen under the VM's lock, as every
//! emulated access does, so no other vCPU's emulated access comes between them
//! (`LOCK` is honoured).
//!
//! `CMPXCHG16B` on an operand that is not 16-byte aligned raises #GP(0) (SDM Vol. 2A;
//! the page offset of the exit's guest-physical address is that of the linear one);
//! the guest CPUID's CX16 bit is checked by [`super::mmio::emulate`] (#UD without
//! it).

use super::mmio::{flags, reg_value, set_reg, Fault, Reg};
use vcpu::GuestRegisters;

/// Carries out `CMPXCHG8B` (`half` = 4) or `CMPXCHG16B` (`half` = 8) on the operand at
/// guest-physical `gpa` through `device`; `Err` (nothing accessed, nothing changed)
/// for the #GP(0) of a misaligned `CMPXCHG16B`.
pub fn execute(
    regs: &mut GuestRegisters,
    rflags: &mut u64,
    half: u8,
    gpa: u64,
    device: &mut dyn FnMut(u64, u8, Option<u64>) -> u64,
) -> Result<(), Fault> {
    if half == 8 && gpa & 15 != 0 {
        return Err(Fault::GeneralProtection);
    }
    let r = |regs: &GuestRegisters, reg| reg_value(regs, 0, reg, half);
    let old = if half == 4 {
        let v = device(gpa, 8, None);
        (v & 0xffff_ffff, v >> 32)
    } else {
        let low = device(gpa, 8, None);
        (low, device(gpa.wrapping_add(8), 8, None))
    };
    let expected = (r(regs, Reg::Rax), r(regs, Reg::Rdx));
    let equal = old == expected;
    let write = if equal {
        (r(regs, Reg::Rbx), r(regs, Reg::Rcx))
    } else {
        old
    };
    if half == 4 {
        device(gpa, 8, Some(write.0 | write.1 << 32));
    } else {
        device(gpa, 8, Some(write.0));
        device(gpa.wrapping_add(8), 8, Some(write.1));
    }
    if !equal {
        set_reg(regs, &mut 0, Reg::Rax, half, old.0);
        set_reg(regs, &mut 0, Reg::Rdx, half, old.1);
    }
    *rflags = if equal {
        *rflags | flags::ZF
    } else {
        *rflags & !flags::ZF
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    type Log = Vec<(u64, u8, Option<u64>)>;

    fn run(
        regs: &mut GuestRegisters,
        rflags: &mut u64,
        half: u8,
        gpa: u64,
        memory: &[u64],
    ) -> (Result<(), Fault>, Log) {
        let mut log = Vec::new();
        let r = execute(regs, rflags, half, gpa, &mut |a, size, v| {
            log.push((a, size, v));
            memory[((a - gpa) / 8) as usize]
        });
        (r, log)
    }

    #[test]
    fn cmpxchg8b_success_writes_ecx_ebx_and_sets_zf() {
        let mut regs = GuestRegisters {
            rax: 0xffff_ffff_1111_1111,
            rdx: 0x2222_2222,
            rbx: 0x3333_3333,
            rcx: 0x4444_4444,
            ..Default::default()
        };
        let before = regs;
        let mut rflags = 0x2 | flags::CF;
        let (r, log) = run(&mut regs, &mut rflags, 4, 0x1004, &[0x2222_2222_1111_1111]);
        assert_eq!(r, Ok(()));
        assert_eq!(
            log,
            [(0x1004, 8, None), (0x1004, 8, Some(0x4444_4444_3333_3333))]
        );
        // Success changes no register (not even RAX's upper half) and only ZF.
        assert_eq!(regs, before);
        assert_eq!(rflags, 0x2 | flags::CF | flags::ZF);
    }

    #[test]
    fn cmpxchg8b_failure_writes_back_and_loads_edx_eax() {
        let mut regs = GuestRegisters {
            rax: 0xffff_ffff_0000_0001,
            rdx: 0xffff_ffff_0000_0002,
            ..Default::default()
        };
        let mut rflags = 0x2 | flags::ZF;
        let (r, log) = run(&mut regs, &mut rflags, 4, 0x1000, &[u64::MAX]);
        assert_eq!(r, Ok(()));
        assert_eq!(log, [(0x1000, 8, None), (0x1000, 8, Some(u64::MAX))]);
        // 32-bit register writes zero-extend.
        assert_eq!((regs.rax, regs.rdx), (0xffff_ffff, 0xffff_ffff));
        assert_eq!(rflags, 0x2);
    }

    #[test]
    fn cmpxchg16b_is_two_ascending_accesses_each_way() {
        let mut regs = GuestRegisters {
            rax: 1,
            rdx: 2,
            rbx: 3,
            rcx: 4,
            ..Default::default()
        };
        let mut rflags = 0x2;
        let (r, log) = run(&mut regs, &mut rflags, 8, 0x2010, &[1, 2]);
        assert_eq!(r, Ok(()));
        assert_eq!(
            log,
            [
                (0x2010, 8, None),
                (0x2018, 8, None),
                (0x2010, 8, Some(3)),
                (0x2018, 8, Some(4))
            ]
        );
        assert_eq!(rflags, 0x2 | flags::ZF);
        assert_eq!((regs.rax, regs.rdx), (1, 2));
        // The high half differs: failure, the old value back and in RDX:RAX.
        regs.rdx = 5;
        let (_, log) = run(&mut regs, &mut rflags, 8, 0x2010, &[1, u64::MAX]);
        assert_eq!(
            log[2..],
            [(0x2010, 8, Some(1)), (0x2018, 8, Some(u64::MAX))]
        );
        assert_eq!((regs.rax, regs.rdx, rflags), (1, u64::MAX, 0x2));
    }

    #[test]
    fn misaligned_cmpxchg16b_is_gp_before_any_access() {
        let mut regs = GuestRegisters::default();
        let mut rflags = 0x2;
        for gpa in [0x2008, 0x2001, 0x200f] {
            let (r, log) = run(&mut regs, &mut rflags, 8, gpa, &[0, 0]);
            assert_eq!(r, Err(Fault::GeneralProtection));
            assert!(log.is_empty());
        }
        assert_eq!((regs, rflags), (GuestRegisters::default(), 0x2));
        // CMPXCHG8B has no alignment rule.
        assert_eq!(run(&mut regs, &mut rflags, 4, 0x2001, &[0]).0, Ok(()));
    }
}
