//! A protected-mode (and long-mode) load of a data segment register or SS from a
//! selector, as `MOV Sreg`, `POP Sreg` and `LDS`/`LES`/`LFS`/`LGS`/`LSS` do it (SDM
//! Vol. 2B `MOV` "IF SS is loaded" / "IF DS, ES, FS, or GS is loaded", Vol. 3A 3.4.5
//! and 5.5-5.7): the descriptor is read from the GDT or the LDT (TI) through the
//! guest's page tables, checked, its accessed bit set in the table, and the register
//! built from it.
//!
//! Checks and faults, in the SDM's order (error codes are the selector without its
//! RPL bits):
//! - a null selector loads DS/ES/FS/GS as unusable; for SS it is #GP(0), except in
//!   64-bit mode at CPL < 3 with RPL = CPL;
//! - the descriptor beyond the table's limit (or an LDT selector with no usable LDT):
//!   #GP(selector);
//! - SS: RPL and DPL must equal CPL and the segment be a writable data segment, else
//!   #GP(selector); not present: #SS(selector);
//! - DS/ES/FS/GS: a data segment or a readable code segment, else #GP(selector); for
//!   data and non-conforming code, RPL and CPL must not exceed DPL, else
//!   #GP(selector); not present: #NP(selector).
//!
//! A descriptor table that does not translate or is not RAM is an error (the VM
//! stops), never a guess.

use super::guest_walk::{self, GuestMemoryMut};
use super::mmio::MmioError;
use vcpu::state::{attrib, Segment, TableRegister};
use vcpu::{ControlRegs, Exception, SegReg};

/// #NP and #SS vectors (SDM Vol. 3A 6.15), with an error code.
const NP_VECTOR: u8 = 11;
const SS_VECTOR: u8 = 12;
const GP_VECTOR: u8 = 13;

fn fault(vector: u8, selector: u16) -> Exception {
    Exception {
        vector,
        error_code: Some(u32::from(selector & 0xfffc)),
    }
}

/// What the load needs of the vCPU besides guest memory.
#[derive(Clone, Copy, Debug)]
pub struct Context {
    pub cr: ControlRegs,
    pub gdtr: TableRegister,
    pub ldtr: Segment,
    pub cpl: u8,
}

/// Loads `seg` with `selector`: the register, or the exception the processor raises
/// (nothing written to the tables then). `Err` when the descriptor cannot be read.
pub fn load<M: GuestMemoryMut>(
    mem: &mut M,
    ctx: &Context,
    seg: SegReg,
    selector: u16,
) -> Result<Result<Segment, Exception>, MmioError> {
    let rpl = selector & 3;
    let cpl = u16::from(ctx.cpl);
    let long = guest_walk::code_bitness(&ctx.cr) == 64;
    let gp = Ok(Err(fault(GP_VECTOR, selector)));
    if selector & !3 == 0 {
        if seg != SegReg::Ss {
            return Ok(Ok(Segment {
                selector,
                attrib: attrib::UNUSABLE,
                limit: 0,
                base: 0,
            }));
        }
        if !long || cpl == 3 || rpl != cpl {
            return Ok(Err(fault(GP_VECTOR, 0)));
        }
        return Ok(Ok(Segment {
            selector,
            attrib: attrib::UNUSABLE | cpl << attrib::DPL_SHIFT,
            limit: 0,
            base: 0,
        }));
    }
    let (base, limit) = if selector & 4 != 0 {
        if !ctx.ldtr.usable() {
            return gp;
        }
        (ctx.ldtr.base, u64::from(ctx.ldtr.limit))
    } else {
        (ctx.gdtr.base, u64::from(ctx.gdtr.limit))
    };
    let offset = u64::from(selector & !7);
    if offset + 7 > limit {
        return gp;
    }
    let mut linear = base.wrapping_add(offset);
    if !long {
        linear &= 0xffff_ffff;
    }
    let gpa = guest_walk::translate(&*mem, &ctx.cr, linear)
        .map_err(|err| MmioError::Operand { linear, err })?;
    let mut raw = [0u8; 8];
    // A descriptor straddling a page is read as two pieces, each translated.
    let first = (0x1000 - (linear & 0xfff)).min(8) as usize;
    let second = if first < 8 {
        let la = linear.wrapping_add(first as u64);
        Some(
            guest_walk::translate(&*mem, &ctx.cr, la)
                .map_err(|err| MmioError::Operand { linear: la, err })?,
        )
    } else {
        None
    };
    let not_ram = MmioError::DescriptorNotRam { gpa };
    mem.read(gpa, &mut raw[..first]).map_err(|()| not_ram)?;
    if let Some(g) = second {
        mem.read(g, &mut raw[first..]).map_err(|()| not_ram)?;
    }
    let d = u64::from_le_bytes(raw);
    let hi = (d >> 32) as u32;
    let ty = (hi >> 8) & 0xf;
    let system = hi & (1 << 12) == 0;
    let dpl = ((hi >> 13) & 3) as u16;
    let present = hi & (1 << 15) != 0;
    let code = ty & 8 != 0;
    if seg == SegReg::Ss {
        // A writable data segment: S = 1, type bit 3 (code) clear, bit 1 (W) set.
        if rpl != cpl || system || code || ty & 2 == 0 || dpl != cpl {
            return gp;
        }
        if !present {
            return Ok(Err(fault(SS_VECTOR, selector)));
        }
    } else {
        // Data, or code with bit 1 (R) set; conforming code is type bit 2.
        if system || (code && ty & 2 == 0) {
            return gp;
        }
        let conforming = code && ty & 4 != 0;
        if !conforming && (rpl > dpl || cpl > dpl) {
            return gp;
        }
        if !present {
            return Ok(Err(fault(NP_VECTOR, selector)));
        }
    }
    // The accessed bit (type bit 0, byte 5 of the descriptor), as the processor sets
    // it on a load.
    if ty & 1 == 0 {
        let byte5 = ((hi >> 8) as u8) | 1;
        let at = if first > 5 {
            gpa + 5
        } else {
            second.unwrap_or(gpa) + (5 - first) as u64
        };
        mem.write(at, &[byte5]).map_err(|()| not_ram)?;
    }
    let lo = d as u32;
    let raw_limit = (lo & 0xffff) | (hi & 0xf_0000);
    let granular = hi & (1 << 23) != 0;
    Ok(Ok(Segment {
        selector,
        attrib: (((hi >> 8) & 0xff) | (((hi >> 20) & 0xf) << 8)) as u16 | 1,
        limit: if granular {
            raw_limit << 12 | 0xfff
        } else {
            raw_limit
        },
        base: u64::from((lo >> 16) | ((hi & 0xff) << 16) | (hi & 0xff00_0000)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    use crate::vmm::test_ram::Ram;

    /// A descriptor: base, 20-bit limit, access byte (P DPL S type), flags (G D/B L
    /// AVL).
    fn desc(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
        u64::from(limit & 0xffff)
            | u64::from(base & 0xff_ffff) << 16
            | u64::from(access) << 40
            | u64::from(limit >> 16 & 0xf) << 48
            | u64::from(flags & 0xf) << 52
            | u64::from(base >> 24) << 56
    }

    /// 32-bit protected mode without paging; a GDT at 0x1000 with 8 entries, an LDT
    /// at 0x2000 with 2.
    fn setup(cpl: u8, entries: &[(usize, u64)]) -> (Ram, Context) {
        let mut ram = Ram(vec![0; 0x3000]);
        for &(i, d) in entries {
            ram.0[0x1000 + 8 * i..0x1008 + 8 * i].copy_from_slice(&d.to_le_bytes());
        }
        let ctx = Context {
            cr: ControlRegs {
                cr0: 1,
                ..Default::default()
            },
            gdtr: TableRegister {
                base: 0x1000,
                limit: 8 * 8 - 1,
            },
            ldtr: Segment {
                base: 0x2000,
                limit: 15,
                attrib: attrib::P | 2,
                selector: 0x38,
            },
            cpl,
        };
        (ram, ctx)
    }

    const FLAT_DATA: u8 = 0x92; // P, DPL 0, S, data read/write, not accessed
    const GP: u8 = 13;

    #[test]
    fn a_flat_data_segment_loads_and_is_marked_accessed() {
        let (mut ram, ctx) = setup(0, &[(2, desc(0x10_0000, 0xfffff, FLAT_DATA, 0xc))]);
        let s = load(&mut ram, &ctx, SegReg::Ds, 0x10).unwrap().unwrap();
        assert_eq!((s.selector, s.base, s.limit), (0x10, 0x10_0000, u32::MAX));
        assert_eq!(s.attrib, 0x93 | attrib::DB | attrib::G);
        assert_eq!(ram.0[0x1010 + 5], 0x93);
        // SS too (RPL = DPL = CPL 0, writable).
        assert!(load(&mut ram, &ctx, SegReg::Ss, 0x10).unwrap().is_ok());
    }

    #[test]
    fn null_selectors() {
        let (mut ram, ctx) = setup(0, &[]);
        let s = load(&mut ram, &ctx, SegReg::Es, 3).unwrap().unwrap();
        assert!(!s.usable());
        assert_eq!(
            load(&mut ram, &ctx, SegReg::Ss, 0).unwrap(),
            Err(fault(GP, 0))
        );
        // 64-bit mode, CPL 0, RPL 0: a null SS is allowed.
        let mut long = ctx;
        long.cr = ControlRegs {
            cr0: 0x8000_0011,
            cr4: 0x20,
            efer: 0x500,
            cs_long: true,
            ..Default::default()
        };
        let s = load(&mut ram, &long, SegReg::Ss, 0).unwrap().unwrap();
        assert!(!s.usable());
        assert_eq!(
            load(&mut ram, &long, SegReg::Ss, 1).unwrap(),
            Err(fault(GP, 0))
        );
    }

    #[test]
    fn the_sdm_checks_raise_their_faults() {
        let user_data = 0xf2; // DPL 3 data
        let (mut ram, ctx) = setup(
            3,
            &[
                (1, desc(0, 0xffff, FLAT_DATA, 0)), // DPL 0 data
                (2, desc(0, 0xffff, user_data, 0)), // DPL 3 data
                (3, desc(0, 0xffff, 0xfa, 0)),      // DPL 3 code, readable
                (4, desc(0, 0xffff, 0xf8, 0)),      // DPL 3 code, execute-only
                (5, desc(0, 0xffff, 0x72, 0)),      // DPL 3 data, not present
                (6, desc(0, 0xffff, 0xe9, 0)),      // system (TSS)
                (7, desc(0, 0xffff, 0xf0, 0)),      // DPL 3 data, read-only
            ],
        );
        let l = |ram: &mut Ram, seg, sel| load(ram, &ctx, seg, sel).unwrap();
        // CPL 3 cannot load a DPL 0 data segment.
        assert_eq!(l(&mut ram, SegReg::Ds, 0x0b), Err(fault(GP, 0x08)));
        assert!(l(&mut ram, SegReg::Ds, 0x13).is_ok());
        // Readable code may go in DS; execute-only and system segments may not.
        assert!(l(&mut ram, SegReg::Ds, 0x1b).is_ok());
        assert_eq!(l(&mut ram, SegReg::Ds, 0x23), Err(fault(GP, 0x20)));
        assert_eq!(l(&mut ram, SegReg::Fs, 0x33), Err(fault(GP, 0x30)));
        // Not present: #NP for DS, #SS for SS.
        assert_eq!(l(&mut ram, SegReg::Gs, 0x2b), Err(fault(NP_VECTOR, 0x28)));
        assert_eq!(l(&mut ram, SegReg::Ss, 0x2b), Err(fault(SS_VECTOR, 0x28)));
        // SS: RPL must be CPL; code and read-only data are refused.
        assert_eq!(l(&mut ram, SegReg::Ss, 0x10), Err(fault(GP, 0x10)));
        assert!(l(&mut ram, SegReg::Ss, 0x13).is_ok());
        assert_eq!(l(&mut ram, SegReg::Ss, 0x1b), Err(fault(GP, 0x18)));
        assert_eq!(l(&mut ram, SegReg::Ss, 0x3b), Err(fault(GP, 0x38)));
        // Beyond the GDT's limit, and an LDT selector beyond the LDT's.
        assert_eq!(l(&mut ram, SegReg::Ds, 0x43), Err(fault(GP, 0x40)));
        assert_eq!(l(&mut ram, SegReg::Ds, 0x17), Err(fault(GP, 0x14)));
        // A fault writes nothing to the table.
        assert_eq!(ram.0[0x1008 + 5], FLAT_DATA);
    }

    #[test]
    fn ldt_selectors_and_unreadable_tables() {
        let (mut ram, mut ctx) = setup(0, &[]);
        ram.0[0x2008..0x2010].copy_from_slice(&desc(0x5000, 0xff, FLAT_DATA, 4).to_le_bytes());
        let s = load(&mut ram, &ctx, SegReg::Es, 0x0c).unwrap().unwrap();
        assert_eq!((s.base, s.limit), (0x5000, 0xff));
        // No usable LDT: #GP(selector).
        ctx.ldtr.attrib = attrib::UNUSABLE;
        assert_eq!(
            load(&mut ram, &ctx, SegReg::Es, 0x0c).unwrap(),
            Err(fault(GP, 0x0c))
        );
        // A GDT outside RAM: an error, not a guess.
        ctx.gdtr.base = 0x10_0000;
        assert_eq!(
            load(&mut ram, &ctx, SegReg::Es, 0x08),
            Err(MmioError::DescriptorNotRam { gpa: 0x10_0008 })
        );
    }
}
