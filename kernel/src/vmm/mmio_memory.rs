//! The MMIO instructions with a second memory operand besides the device: `PUSH m` and
//! `POP m` (the other operand is the stack) and the string instructions `MOVS`,
//! `STOS`, `LODS`, `CMPS`, `SCAS`, with and without `REP`/`REPE`/`REPNE`.
//!
//! Every element's operands are located as the processor locates them: segment base
//! plus RSI/RDI/RSP masked to the address size (SDM Vol. 1 3.3.7; in 64-bit mode ES,
//! CS, SS and DS have base 0, FS and GS the base the backend reports), through the
//! guest's own page tables ([`guest_walk::translate`]). A location in guest RAM is read
//! or written there (the checked, all-or-nothing accessors of [`GuestMemoryMut`]);
//! anything else is a device, whose access goes to the same `device` callback as the
//! faulting operand. Nothing the guest supplies is trusted: a linear address that does
//! not translate is a clear error (element 0) or the end of the batch (later elements,
//! see below), never a panic.
//!
//! `REP` (SDM Vol. 2B "REP/REPE/REPZ/REPNE/REPNZ"): the count is RCX/ECX/CX by the
//! address size; a count of 0 does nothing. One device access per element, RSI/RDI
//! stepped by the element size, down when RFLAGS.DF is set; `REPE`/`REPNE` of
//! `CMPS`/`SCAS` also end on ZF. At most [`MAX_BATCH`] elements per exit: then, with
//! count left, RIP stays on the instruction, so the guest re-executes it and pending
//! interrupts are taken in between, as a real `REP` instruction is interruptible
//! between iterations (SDM Vol. 1 7.3.9.3 "Fast-String Operation", Vol. 2B `REP`).
//! A later element whose operand does not translate, or straddles a page boundary,
//! ends the batch the same way, before any of its accesses: the processor then does
//! that element itself (and raises its own #PF if there is one to raise).
//!
//! `PUSH m`: the device is read, then the value stored at SS:(RSP - size); `POP m`: the
//! value is loaded from SS:RSP, then written to the device; RSP moves by the operand
//! size, within the stack's address size (64-bit mode: RSP; else SS.B: ESP or SP).
//! Both stack locations are resolved before the device is touched.
//!
//! Limits: segment limits and access rights are not checked (the processor checked
//! the operand that faulted; the other one is the guest's own memory); an element that
//! straddles a page boundary at element 0 is done in RAM only if both pages are RAM,
//! and otherwise goes to the device as one access at the start of its part that is
//! not RAM.

use super::guest_walk::{self, GuestMemoryMut};
use super::mmio::MmioError;
use vcpu::state::{attrib, Segment};
use vcpu::{ControlRegs, SegReg};

/// At most this many elements of a `REP` string instruction per exit.
pub const MAX_BATCH: u64 = 128;

/// What the instructions here need of the vCPU and the VM besides registers and the
/// device: guest RAM, the paging state, and the segment registers (ES, CS, SS, DS, FS,
/// GS in that order; `None` where unknown).
pub struct Env<'a, M: GuestMemoryMut> {
    pub mem: &'a mut M,
    pub cr: ControlRegs,
    pub segments: [Option<Segment>; 6],
}

/// Where one element of an operand is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// In guest RAM at this guest-physical address (`split`: for an element that
    /// straddles a page boundary, how many bytes are in the first page and the
    /// guest-physical address of the rest).
    Ram {
        gpa: u64,
        split: Option<(usize, u64)>,
    },
    /// Not RAM: a device (or unbacked space) at this guest-physical address.
    Device(u64),
}

/// The vCPU's segment registers in [`Env::segments`]' order (a VMCS read each on
/// VT-x, so only for the instructions that use them).
pub fn segments<V: vcpu::Vcpu>(vcpu: &V) -> [Option<Segment>; 6] {
    [
        SegReg::Es,
        SegReg::Cs,
        SegReg::Ss,
        SegReg::Ds,
        SegReg::Fs,
        SegReg::Gs,
    ]
    .map(|s| vcpu.segment(s))
}

fn seg_index(seg: SegReg) -> usize {
    match seg {
        SegReg::Es => 0,
        SegReg::Cs => 1,
        SegReg::Ss => 2,
        SegReg::Ds => 3,
        SegReg::Fs => 4,
        SegReg::Gs => 5,
    }
}

impl<M: GuestMemoryMut> Env<'_, M> {
    fn long_mode(&self) -> bool {
        guest_walk::code_bitness(&self.cr) == 64
    }

    /// The segment register, or the error that names it.
    pub fn segment(&self, seg: SegReg) -> Result<Segment, MmioError> {
        self.segments[seg_index(seg)].ok_or(MmioError::NoSegment(seg))
    }

    /// The linear address of `seg`:`offset` (`offset` already masked to the address
    /// size).
    pub fn linear(&self, seg: SegReg, offset: u64) -> Result<u64, MmioError> {
        if self.long_mode() {
            // SDM Vol. 1 3.4.2.1: in 64-bit mode only FS and GS have a base.
            return Ok(match seg {
                SegReg::Fs | SegReg::Gs => self.segment(seg)?.base.wrapping_add(offset),
                _ => offset,
            });
        }
        Ok(self.segment(seg)?.base.wrapping_add(offset) & 0xffff_ffff)
    }

    /// The stack's address size in bytes: 8 in 64-bit mode, else 4 or 2 by SS.B.
    pub fn stack_size(&self) -> Result<u8, MmioError> {
        if self.long_mode() {
            return Ok(8);
        }
        Ok(if self.segment(SegReg::Ss)?.attrib & attrib::DB != 0 {
            4
        } else {
            2
        })
    }

    /// Locates a `size`-byte element at `seg`:`offset`.
    pub fn place(&self, seg: SegReg, offset: u64, size: u8) -> Result<Place, MmioError> {
        let linear = self.linear(seg, offset)?;
        let walk = |la: u64| {
            guest_walk::translate(&*self.mem, &self.cr, la)
                .map_err(|err| MmioError::Operand { linear: la, err })
        };
        let gpa = walk(linear)?;
        let in_page = (0x1000 - (linear & 0xfff)) as usize;
        let size = usize::from(size);
        let mut probe = [0u8; 8];
        if size <= in_page {
            return Ok(if self.mem.read(gpa, &mut probe[..size]).is_ok() {
                Place::Ram { gpa, split: None }
            } else {
                Place::Device(gpa)
            });
        }
        let second = walk(linear.wrapping_add(in_page as u64))?;
        let first_ram = self.mem.read(gpa, &mut probe[..in_page]).is_ok();
        let second_ram = self.mem.read(second, &mut probe[..size - in_page]).is_ok();
        Ok(match (first_ram, second_ram) {
            (true, true) => Place::Ram {
                gpa,
                split: Some((in_page, second)),
            },
            // As for the single-operand forms: one device access, at the part that
            // is not RAM (where the processor's exit would point).
            (false, _) => Place::Device(gpa),
            (true, false) => Place::Device(second),
        })
    }

    /// Reads the `size`-byte element at `place`.
    pub fn load(
        &mut self,
        place: Place,
        size: u8,
        device: &mut dyn FnMut(u64, u8, Option<u64>) -> u64,
    ) -> u64 {
        match place {
            Place::Device(gpa) => device(gpa, size, None),
            Place::Ram { gpa, split } => {
                let mut b = [0u8; 8];
                let n = usize::from(size);
                let (first, rest) = match split {
                    Some((k, second)) => (k, Some(second)),
                    None => (n, None),
                };
                // Checked by `place` a moment ago under the same exit; a page taken
                // away since (another vCPU's balloon) reads as unbacked space does.
                if self.mem.read(gpa, &mut b[..first]).is_err() {
                    return device(gpa, size, None);
                }
                if let Some(second) = rest {
                    if self.mem.read(second, &mut b[first..n]).is_err() {
                        return device(gpa, size, None);
                    }
                }
                u64::from_le_bytes(b)
            }
        }
    }

    /// Writes the low `size` bytes of `value` at `place`.
    pub fn store(
        &mut self,
        place: Place,
        size: u8,
        value: u64,
        device: &mut dyn FnMut(u64, u8, Option<u64>) -> u64,
    ) {
        match place {
            Place::Device(gpa) => {
                device(gpa, size, Some(value));
            }
            Place::Ram { gpa, split } => {
                let b = value.to_le_bytes();
                let n = usize::from(size);
                let ok = match split {
                    None => self.mem.write(gpa, &b[..n]).is_ok(),
                    Some((k, second)) => {
                        self.mem.write(gpa, &b[..k]).is_ok()
                            && self.mem.write(second, &b[k..n]).is_ok()
                    }
                };
                if !ok {
                    // As for `load`: gone since, so it behaves as unbacked space.
                    device(gpa, size, Some(value));
                }
            }
        }
    }
}
