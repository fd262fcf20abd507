//! Segment-register loads whose source is a device or unbacked space: `MOV Sreg, m16`
//! (8E), `POP Sreg` from a stack in device space (07, 17, 1F, 0F A1, 0F A9), and the
//! far-pointer loads `LDS`/`LES`/`LFS`/`LGS`/`LSS r, m16:16/32/64` (SDM Vol. 2B `MOV`,
//! `POP`, Vol. 2A `LDS/LES/LFS/LGS/LSS`).
//!
//! In real-address and virtual-8086 mode a segment load is no descriptor load: the
//! selector is the value loaded and the base is the selector shifted left by 4, while
//! the limit and attributes keep their cached values (SDM Vol. 3A 20.1.1; the "big
//! real mode" a guest set up stays as it was). The result goes to the vCPU through
//! [`vcpu::Vcpu::set_segment`].
//!
//! Accesses: `MOV Sreg` reads 2 bytes; `POP Sreg` reads the operand size at the
//! stack slot (which must be the exit's, as in [`super::mmio_stack`]) and uses the low
//! 16 bits; a far pointer is the offset (operand size) at the exit's address, then the
//! 16-bit selector right after it, each a device access.
//!
//! In protected and long mode the load is a descriptor load with the SDM's checks and
//! faults (#GP(selector), #NP, #SS, the null-selector rules, SS's RPL/DPL = CPL):
//! [`Step::LoadSelector`], which [`super::mmio::emulate`] completes with
//! [`super::descriptor_load`] (it needs the vCPU's GDTR, LDTR and CPL); a fault there
//! leaves the registers as they were. An emulated `MOV SS`/`POP SS` blocks
//! interrupts, NMIs and debug traps for one instruction as the processor's does
//! (`Vcpu::set_interrupt_shadow`, set by [`super::mmio::emulate`]).

use super::guest_walk::GuestMemoryMut;
use super::mmio::{
    gpr, mask, seg_reg, set_reg, set_width, Access, MmioError, MmioInstruction, Reg, Step,
};
use super::mmio_memory::Env;
use iced_x86::{Code, Instruction, OpKind};
use vcpu::state::Segment;
use vcpu::SegReg;

/// A segment-register load; [`MmioInstruction::size`] is the access width (2 for
/// `MOV Sreg`, the operand size for `POP Sreg`, the offset's for a far pointer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentLoad {
    /// `MOV seg, m16`.
    Move(SegReg),
    /// `POP seg` (the stack is the device).
    Pop(SegReg),
    /// `LDS`/`LES`/`LFS`/`LGS`/`LSS reg, m16:size`.
    FarPointer { seg: SegReg, reg: Reg },
}

impl SegmentLoad {
    pub fn segment(self) -> SegReg {
        match self {
            Self::Move(s) | Self::Pop(s) | Self::FarPointer { seg: s, .. } => s,
        }
    }
}

/// The segment loads among decoded instructions (`None`: not one of them).
pub(crate) fn decode(insn: &Instruction) -> Option<Result<MmioInstruction, MmioError>> {
    use Code as C;
    let unsupported = MmioError::Unsupported {
        mnemonic: insn.mnemonic(),
        code: insn.code(),
    };
    let seg0 = seg_reg(insn.op_register(0));
    let (size, load) = match insn.code() {
        C::Mov_Sreg_rm16 | C::Mov_Sreg_r32m16 | C::Mov_Sreg_r64m16 => {
            if insn.op_kind(1) != OpKind::Memory {
                return Some(Err(MmioError::NoMemoryOperand {
                    mnemonic: insn.mnemonic(),
                }));
            }
            (2, seg0.map(SegmentLoad::Move))
        }
        C::Popw_ES | C::Popw_SS | C::Popw_DS | C::Popw_FS | C::Popw_GS => {
            (2, seg0.map(SegmentLoad::Pop))
        }
        C::Popd_ES | C::Popd_SS | C::Popd_DS | C::Popd_FS | C::Popd_GS => {
            (4, seg0.map(SegmentLoad::Pop))
        }
        C::Popq_FS | C::Popq_GS => (8, seg0.map(SegmentLoad::Pop)),
        code => {
            let (seg, size) = match code {
                C::Lds_r16_m1616 => (SegReg::Ds, 2),
                C::Lds_r32_m1632 => (SegReg::Ds, 4),
                C::Les_r16_m1616 => (SegReg::Es, 2),
                C::Les_r32_m1632 => (SegReg::Es, 4),
                C::Lfs_r16_m1616 => (SegReg::Fs, 2),
                C::Lfs_r32_m1632 => (SegReg::Fs, 4),
                C::Lfs_r64_m1664 => (SegReg::Fs, 8),
                C::Lgs_r16_m1616 => (SegReg::Gs, 2),
                C::Lgs_r32_m1632 => (SegReg::Gs, 4),
                C::Lgs_r64_m1664 => (SegReg::Gs, 8),
                C::Lss_r16_m1616 => (SegReg::Ss, 2),
                C::Lss_r32_m1632 => (SegReg::Ss, 4),
                C::Lss_r64_m1664 => (SegReg::Ss, 8),
                _ => return None,
            };
            let reg = gpr(insn.op_register(0)).map(|(r, _)| r);
            (size, reg.map(|reg| SegmentLoad::FarPointer { seg, reg }))
        }
    };
    Some(
        load.map(|load| MmioInstruction {
            len: insn.len(),
            size,
            kind: Access::SegmentLoad(load),
        })
        .ok_or(unsupported),
    )
}

/// Carries out `load` (access width `size`) against the device at `gpa`: in
/// real-address or virtual-8086 mode, [`Step::LoadSegment`] with the new register;
/// otherwise [`Step::LoadSelector`] with the selector read.
#[allow(clippy::too_many_arguments)]
pub fn execute<M: GuestMemoryMut>(
    load: SegmentLoad,
    size: u8,
    regs: &mut vcpu::GuestRegisters,
    rsp: &mut u64,
    rflags: u64,
    gpa: u64,
    device: &mut dyn FnMut(u64, u8, Option<u64>) -> u64,
    env: &mut Env<'_, M>,
) -> Result<Step, MmioError> {
    const VM: u64 = 1 << 17;
    let seg = load.segment();
    let real_like = env.cr.cr0 & 1 == 0 || rflags & VM != 0;
    let cached = if real_like {
        Some(env.segment(seg)?)
    } else {
        None
    };
    let selector = match load {
        SegmentLoad::Move(_) => device(gpa, 2, None) as u16,
        SegmentLoad::Pop(_) => {
            let ss = env.stack_size()?;
            let top = *rsp & mask(ss);
            super::mmio_stack::stack_is_exit(env, top, size, gpa)?;
            let selector = device(gpa, size, None) as u16;
            set_width(rsp, ss, top.wrapping_add(u64::from(size)) & mask(ss));
            selector
        }
        SegmentLoad::FarPointer { reg, .. } => {
            let offset = device(gpa, size, None) & mask(size);
            let selector = device(gpa.wrapping_add(u64::from(size)), 2, None) as u16;
            set_reg(regs, rsp, reg, size, offset);
            selector
        }
    };
    Ok(match cached {
        Some(cached) => Step::LoadSegment(
            seg,
            Segment {
                selector,
                base: u64::from(selector) << 4,
                ..cached
            },
        ),
        None => Step::LoadSelector(seg, selector),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::guest_walk::GuestMemory;
    use crate::vmm::mmio::{decode, execute as mmio_execute};
    use alloc::vec;
    use alloc::vec::Vec;
    use vcpu::state::attrib;
    use vcpu::{ControlRegs, GuestRegisters};

    struct Ram(Vec<u8>);

    impl GuestMemory for Ram {
        fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), ()> {
            let start = usize::try_from(gpa).map_err(|_| ())?;
            buf.copy_from_slice(self.0.get(start..start + buf.len()).ok_or(())?);
            Ok(())
        }
    }

    impl GuestMemoryMut for Ram {
        fn write(&mut self, _: u64, _: &[u8]) -> Result<(), ()> {
            Err(())
        }
    }

    /// Real mode (or protected mode with `cr0` 1); SS based at 0x10000 (device
    /// space); DS with a 4 GiB "big real mode" limit to see it kept.
    fn env(ram: &mut Ram, cr0: u64) -> Env<'_, Ram> {
        let seg = |base: u64, limit| {
            Some(Segment {
                selector: (base >> 4) as u16,
                base,
                limit,
                attrib: attrib::P | attrib::S | 3,
            })
        };
        Env {
            mem: ram,
            cr: ControlRegs {
                cr0,
                ..Default::default()
            },
            segments: [
                seg(0, 0xffff),
                seg(0, 0xffff),
                seg(0x10000, 0xffff),
                seg(0, u32::MAX),
                seg(0, 0xffff),
                seg(0, 0xffff),
            ],
        }
    }

    type Log = Vec<(u64, u8, Option<u64>)>;

    #[allow(clippy::too_many_arguments)]
    fn run(
        bytes: &[u8],
        bits: u32,
        cr0: u64,
        rflags: u64,
        regs: &mut GuestRegisters,
        rsp: &mut u64,
        gpa: u64,
        replies: &[u64],
    ) -> (Result<Step, MmioError>, Log) {
        let mut ram = Ram(vec![0; 0x1000]);
        let insn = decode(bytes, bits).unwrap();
        assert!(insn.reads() && !insn.writes());
        let mut log = Vec::new();
        let mut next = replies.iter().copied();
        let mut flags = rflags;
        let r = mmio_execute(
            regs,
            rsp,
            &mut flags,
            &insn,
            gpa,
            &mut |a, s, v| {
                log.push((a, s, v));
                next.next().unwrap_or(u64::MAX)
            },
            &mut env(&mut ram, cr0),
        );
        assert_eq!(flags, rflags);
        (r, log)
    }

    #[test]
    fn decodes_the_segment_loads() {
        let k = |b: &[u8], bits| {
            let i = decode(b, bits).unwrap();
            (i.size, i.kind)
        };
        let l = Access::SegmentLoad;
        assert_eq!(k(&[0x8e, 0x1f], 16), (2, l(SegmentLoad::Move(SegReg::Ds))));
        assert_eq!(k(&[0x07], 16), (2, l(SegmentLoad::Pop(SegReg::Es))));
        assert_eq!(k(&[0x66, 0x1f], 16), (4, l(SegmentLoad::Pop(SegReg::Ds))));
        assert_eq!(k(&[0x0f, 0xa9], 64), (8, l(SegmentLoad::Pop(SegReg::Gs))));
        assert_eq!(
            k(&[0xc4, 0x1f], 16),
            (
                2,
                l(SegmentLoad::FarPointer {
                    seg: SegReg::Es,
                    reg: Reg::Rbx
                })
            )
        );
        assert_eq!(
            k(&[0x0f, 0xb2, 0x07], 32),
            (
                4,
                l(SegmentLoad::FarPointer {
                    seg: SegReg::Ss,
                    reg: Reg::Rax
                })
            )
        );
        // mov ds, ax: no memory.
        assert!(matches!(
            decode(&[0x8e, 0xd8], 16),
            Err(MmioError::NoMemoryOperand { .. })
        ));
    }

    #[test]
    fn real_mode_loads_set_the_base_and_keep_the_cached_limit() {
        let (mut regs, mut rsp) = (GuestRegisters::default(), 0xfffe);
        // mov ds, [bx]: DS keeps its 4 GiB limit.
        let (r, log) = run(
            &[0x8e, 0x1f],
            16,
            0,
            2,
            &mut regs,
            &mut rsp,
            0xa0000,
            &[0xb800],
        );
        assert_eq!(log, [(0xa0000, 2, None)]);
        let Ok(Step::LoadSegment(SegReg::Ds, s)) = r else {
            panic!("{r:?}")
        };
        assert_eq!((s.selector, s.base, s.limit), (0xb800, 0xb8000, u32::MAX));
        // les bx, [si]: the offset, then the selector after it.
        let (r, log) = run(
            &[0xc4, 0x1c],
            16,
            0,
            2,
            &mut regs,
            &mut rsp,
            0xa0010,
            &[0x1234, 0xa000],
        );
        assert_eq!(log, [(0xa0010, 2, None), (0xa0012, 2, None)]);
        assert_eq!(regs.rbx, 0x1234);
        assert!(matches!(
            r,
            Ok(Step::LoadSegment(
                SegReg::Es,
                Segment {
                    selector: 0xa000,
                    base: 0xa0000,
                    ..
                }
            ))
        ));
        // pop es at SP 0xfffe (SS based at 0x10000): the slot, SP wraps to 0.
        let (r, log) = run(&[0x07], 16, 0, 2, &mut regs, &mut rsp, 0x1fffe, &[0x40]);
        assert_eq!(log, [(0x1fffe, 2, None)]);
        assert_eq!(rsp, 0);
        assert!(matches!(
            r,
            Ok(Step::LoadSegment(SegReg::Es, Segment { base: 0x400, .. }))
        ));
        // Virtual-8086 mode is the same.
        let vm = 2 | 1 << 17;
        let (r, _) = run(&[0x8e, 0x07], 16, 1, vm, &mut regs, &mut rsp, 0xa0000, &[1]);
        assert!(matches!(
            r,
            Ok(Step::LoadSegment(SegReg::Es, Segment { base: 0x10, .. }))
        ));
    }

    #[test]
    fn protected_mode_loads_leave_the_descriptor_to_emulate() {
        let (mut regs, mut rsp) = (GuestRegisters::default(), 0x100);
        let (r, log) = run(
            &[0x8e, 0x1f],
            32,
            1,
            2,
            &mut regs,
            &mut rsp,
            0xa0000,
            &[0x2b],
        );
        assert_eq!(r, Ok(Step::LoadSelector(SegReg::Ds, 0x2b)));
        assert_eq!(log, [(0xa0000, 2, None)]);
        assert_eq!((regs, rsp), (GuestRegisters::default(), 0x100));
    }
}
