//! String port I/O: `INS` and `OUTS` (`INSB/INSW/INSD`, `OUTSB/OUTSW/OUTSD`), with and
//! without `REP`. Both vendors report an I/O exit with the port, the element size and
//! the direction, but not where in memory the elements are; so, as for MMIO, the core
//! fetches and decodes the instruction at CS:RIP and steps through it itself.
//!
//! Per element (SDM Vol. 2A "INS/INSB/INSW/INSD", Vol. 2B "OUTS/OUTSB/OUTSW/OUTSD"):
//! `OUTS` reads DS:RSI (or the segment of an override prefix) and writes it to port DX;
//! `INS` reads port DX and stores it at ES:RDI (no override). RSI/RDI move by the
//! element size, down when RFLAGS.DF is set, masked to the address size; `REP` counts
//! RCX/ECX/CX down and does nothing at 0. At most [`MAX_BATCH`] elements per exit, then
//! RIP stays on the instruction (a real `REP INS/OUTS` is interruptible between
//! iterations), so no guest holds the processor with one.
//!
//! The memory side is located with the segment bases and the guest's own page tables
//! ([`Env::place`]). In guest RAM it is read or written there; anywhere else it is a
//! device, or unbacked space (reads all ones, writes dropped), reached through the
//! same bus as the VM's MMIO ([`BusAccess::Memory`], one access per element after or
//! before its port access): `REP INSB` into a device window, `REP OUTSW` out of a
//! frame buffer. A batch keeps to one kind of memory side, the kind of its first
//! element: an element on the other side of a RAM/device boundary ends the batch
//! (RIP stays on the instruction and the guest runs it again, which starts the next
//! batch there), so the accesses of one exit go either to RAM or to the bus, never
//! interleaved. A memory operand that does not translate is an error at the first
//! element and the end of the batch at a later one (the processor then redoes that
//! element and raises its own fault); so is, at a later element, one that straddles a
//! page boundary. An element at the first that straddles RAM and a device goes to the
//! device as one access at its part that is not RAM (as [`Env::place`] says). The I/O
//! permission checks (IOPL, the TSS bitmap) were the processor's before the exit.

use super::guest_walk::{self, GuestMemoryMut};
use super::mmio::{mask, set_width, MmioError};
use super::mmio_memory::{Env, Place, MAX_BATCH};
use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind};
use vcpu::{PortIo, SegReg, Vcpu};

/// Why a string I/O instruction could not be carried out (the VM's stop report).
#[derive(Debug)]
pub enum StringIoError {
    /// Fetching, decoding or the memory operand, as for MMIO.
    Mmio(MmioError),
    /// The instruction at RIP is not the INS/OUTS the exit reported (another vCPU
    /// rewrote it, or the exit information is wrong).
    NotTheExit { mnemonic: Mnemonic },
}

/// One access of a string I/O element: to the port, or to the memory side where it is
/// not RAM. `write: Some(value)` writes; a read returns the value (the low `size`
/// bytes count).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusAccess {
    Port {
        size: u8,
        write: Option<u32>,
    },
    Memory {
        gpa: u64,
        size: u8,
        write: Option<u64>,
    },
}

impl core::fmt::Display for StringIoError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Mmio(e) => write!(f, "{e}"),
            Self::NotTheExit { mnemonic } => write!(
                f,
                "the instruction at RIP ({mnemonic:?}) is not the INS/OUTS the exit reported"
            ),
        }
    }
}

impl From<MmioError> for StringIoError {
    fn from(e: MmioError) -> Self {
        Self::Mmio(e)
    }
}

/// The decoded instruction: what [`run`] needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StringIo {
    pub len: usize,
    /// `OUTS` (memory to port) or `INS`.
    pub out: bool,
    pub size: u8,
    pub addr_size: u8,
    /// The memory operand's segment: ES for `INS`, DS or an override for `OUTS`.
    pub seg: SegReg,
    pub rep: bool,
}

/// Decodes `bytes` as `bitness`-bit code: an error unless it is INS or OUTS.
pub fn decode(bytes: &[u8], bitness: u32) -> Result<StringIo, StringIoError> {
    let insn = Decoder::new(bitness, bytes, DecoderOptions::NONE).decode();
    if insn.is_invalid() {
        return Err(MmioError::Invalid.into());
    }
    let (out, size) = match insn.mnemonic() {
        Mnemonic::Insb => (false, 1),
        Mnemonic::Insw => (false, 2),
        Mnemonic::Insd => (false, 4),
        Mnemonic::Outsb => (true, 1),
        Mnemonic::Outsw => (true, 2),
        Mnemonic::Outsd => (true, 4),
        mnemonic => return Err(StringIoError::NotTheExit { mnemonic }),
    };
    let addr_size = (0..insn.op_count())
        .find_map(|i| match insn.op_kind(i) {
            OpKind::MemorySegSI | OpKind::MemoryESDI => Some(2),
            OpKind::MemorySegESI | OpKind::MemoryESEDI => Some(4),
            OpKind::MemorySegRSI | OpKind::MemoryESRDI => Some(8),
            _ => None,
        })
        .ok_or(StringIoError::NotTheExit {
            mnemonic: insn.mnemonic(),
        })?;
    let seg = if out {
        match insn.memory_segment() {
            iced_x86::Register::ES => SegReg::Es,
            iced_x86::Register::CS => SegReg::Cs,
            iced_x86::Register::SS => SegReg::Ss,
            iced_x86::Register::FS => SegReg::Fs,
            iced_x86::Register::GS => SegReg::Gs,
            _ => SegReg::Ds,
        }
    } else {
        SegReg::Es
    };
    Ok(StringIo {
        len: insn.len(),
        out,
        size,
        addr_size,
        seg,
        // F2 acts as a repeat prefix too for instructions other than CMPS/SCAS.
        rep: insn.has_rep_prefix() || insn.has_repne_prefix(),
    })
}

/// One batch of `insn` on `regs` (RSI/RDI/RCX) with RFLAGS `rflags`; `bus` does one
/// port access, or one access of the memory side where that is not RAM
/// ([`BusAccess`]). Returns whether the instruction is complete (RIP moves past it)
/// or must run again.
pub fn run<M: GuestMemoryMut>(
    insn: &StringIo,
    regs: &mut vcpu::GuestRegisters,
    rflags: u64,
    env: &mut Env<'_, M>,
    bus: &mut dyn FnMut(BusAccess) -> u64,
) -> Result<bool, StringIoError> {
    const DF: u64 = 1 << 10;
    let am = mask(insn.addr_size);
    let mut count = if insn.rep { regs.rcx & am } else { 1 };
    if count == 0 {
        return Ok(true);
    }
    let size = insn.size;
    let mut done = 0u64;
    // Whether this batch's memory side is RAM (set by its first element).
    let mut in_ram = None;
    loop {
        let index = if insn.out { regs.rsi } else { regs.rdi } & am;
        let place = match env.place(insn.seg, index, size) {
            // A later element that straddles a page or does not translate: the
            // processor redoes it.
            Ok(Place::Ram { split: Some(_), .. }) | Err(_) if done > 0 => return Ok(false),
            Ok(p) => p,
            Err(e) => return Err(e.into()),
        };
        let ram = matches!(place, Place::Ram { .. });
        if *in_ram.get_or_insert(ram) != ram {
            // A RAM/device boundary: the next batch starts here.
            return Ok(false);
        }
        if insn.out {
            let v = env.load(place, size, &mut |gpa, size, write| {
                bus(BusAccess::Memory { gpa, size, write })
            }) & mask(size);
            bus(BusAccess::Port {
                size,
                write: Some(v as u32),
            });
        } else {
            let v = bus(BusAccess::Port { size, write: None });
            env.store(place, size, v & mask(size), &mut |gpa, size, write| {
                bus(BusAccess::Memory { gpa, size, write })
            });
        }
        let step = u64::from(size);
        let next = if rflags & DF != 0 {
            index.wrapping_sub(step)
        } else {
            index.wrapping_add(step)
        } & am;
        if insn.out {
            set_width(&mut regs.rsi, insn.addr_size, next);
        } else {
            set_width(&mut regs.rdi, insn.addr_size, next);
        }
        done += 1;
        if !insn.rep {
            return Ok(true);
        }
        count -= 1;
        set_width(&mut regs.rcx, insn.addr_size, count);
        if count == 0 {
            return Ok(true);
        }
        if done >= MAX_BATCH {
            return Ok(false);
        }
    }
}

/// Carries out the INS/OUTS that made the I/O exit `io` on `vcpu`: fetches and decodes
/// it, checks it is the one the exit reported, runs one batch and steps RIP past it
/// when it is complete. `bus` does the port accesses (on `io.port`) and those of a
/// memory side that is not RAM.
pub fn emulate<V: Vcpu, M: GuestMemoryMut>(
    vcpu: &mut V,
    mem: &mut M,
    io: &PortIo,
    bus: &mut dyn FnMut(BusAccess) -> u64,
) -> Result<(), StringIoError> {
    let cr = vcpu.control_regs();
    let bitness = guest_walk::code_bitness(&cr);
    let mut bytes = [0u8; 15];
    let n = guest_walk::fetch_instruction(&*mem, &cr, vcpu.rip(), &mut bytes)
        .map_err(MmioError::Fetch)?;
    let insn = decode(&bytes[..n], bitness)?;
    if insn.out != io.write || insn.size != io.size {
        return Err(StringIoError::NotTheExit {
            mnemonic: Decoder::new(bitness, &bytes[..n], DecoderOptions::NONE)
                .decode()
                .mnemonic(),
        });
    }
    let segments = super::mmio_memory::segments(vcpu);
    let rflags = vcpu.rflags();
    let mut regs = *vcpu.regs();
    let mut env = Env { mem, cr, segments };
    let complete = run(&insn, &mut regs, rflags, &mut env, bus)?;
    *vcpu.regs() = regs;
    if complete {
        super::mmio::step_over(vcpu, vcpu.rip(), insn.len, bitness);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;
    use vcpu::state::Segment;
    use vcpu::{ControlRegs, GuestRegisters};

    use crate::vmm::test_ram::Ram;

    /// 32-bit protected mode without paging, flat segments but DS based at 0x1000
    /// (to see that OUTS honours the segment base and INS uses ES).
    fn env(ram: &mut Ram) -> Env<'_, Ram> {
        let flat = Some(Segment {
            base: 0,
            limit: u32::MAX,
            ..Default::default()
        });
        let ds = Some(Segment {
            base: 0x1000,
            limit: u32::MAX,
            ..Default::default()
        });
        Env {
            mem: ram,
            cr: ControlRegs {
                cr0: 0x11,
                ..Default::default()
            },
            segments: [flat, flat, flat, ds, flat, flat],
        }
    }

    /// A bus with ports only (the memory side of these tests is RAM).
    fn ports<'a>(
        mut port: impl FnMut(u8, Option<u32>) -> u32 + 'a,
    ) -> impl FnMut(BusAccess) -> u64 + 'a {
        move |a| match a {
            BusAccess::Port { size, write } => u64::from(port(size, write)),
            BusAccess::Memory { .. } => panic!("a device access: {a:?}"),
        }
    }

    #[test]
    fn decodes_ins_and_outs_with_their_sizes_segments_and_prefixes() {
        let d = |b: &[u8], bits| decode(b, bits).unwrap();
        let outsb = d(&[0xf3, 0x6e], 32);
        assert_eq!(
            outsb,
            StringIo {
                len: 2,
                out: true,
                size: 1,
                addr_size: 4,
                seg: SegReg::Ds,
                rep: true
            }
        );
        // insw in 16-bit code; an ES override is the only segment INS knows anyway.
        let insw = d(&[0x6d], 16);
        assert_eq!(
            (insw.out, insw.size, insw.addr_size, insw.seg, insw.rep),
            (false, 2, 2, SegReg::Es, false)
        );
        // outsd with an FS override and a 32-bit address size in 64-bit code.
        let outsd = d(&[0x64, 0x67, 0x6f], 64);
        assert_eq!(
            (outsd.size, outsd.addr_size, outsd.seg, outsd.len),
            (4, 4, SegReg::Fs, 3)
        );
        // F2 repeats too.
        assert!(d(&[0xf2, 0x6c], 64).rep);
        assert!(matches!(
            decode(&[0x8b, 0x07], 32),
            Err(StringIoError::NotTheExit {
                mnemonic: Mnemonic::Mov
            })
        ));
    }

    #[test]
    fn rep_outsb_writes_each_byte_from_ds_si_and_counts_down() {
        let mut ram = Ram(vec![0; 0x4000]);
        ram.0[0x1100..0x1105].copy_from_slice(b"hello");
        let insn = decode(&[0xf3, 0x6e], 32).unwrap();
        let mut regs = GuestRegisters {
            rsi: 0x100,
            rcx: 5,
            ..Default::default()
        };
        let mut sent = Vec::new();
        let mut bus = ports(|size, v| {
            assert_eq!(size, 1);
            sent.push(v.unwrap() as u8);
            0
        });
        let done = run(&insn, &mut regs, 0x2, &mut env(&mut ram), &mut bus).unwrap();
        // `ports` returns an opaque type, which may have drop glue: end its borrow.
        drop(bus);
        assert!(done);
        assert_eq!(sent, b"hello");
        assert_eq!((regs.rsi, regs.rcx), (0x105, 0));
    }

    #[test]
    fn insw_stores_at_es_di_and_df_steps_down() {
        let mut ram = Ram(vec![0; 0x4000]);
        let insn = decode(&[0x66, 0xf3, 0x6d], 32).unwrap(); // rep insw
        let mut regs = GuestRegisters {
            rdi: 0x204,
            rcx: 3,
            ..Default::default()
        };
        let mut next = 0x1111u32;
        let done = run(
            &insn,
            &mut regs,
            0x2 | (1 << 10),
            &mut env(&mut ram),
            &mut ports(|size, v| {
                assert_eq!((size, v), (2, None));
                next += 0x1111;
                next - 0x1111
            }),
        )
        .unwrap();
        assert!(done);
        assert_eq!(&ram.0[0x200..0x206], &[0x33, 0x33, 0x22, 0x22, 0x11, 0x11]);
        assert_eq!((regs.rdi, regs.rcx), (0x1fe, 0));
    }

    #[test]
    fn long_counts_go_in_batches_and_a_zero_count_does_nothing() {
        let mut ram = Ram(vec![0; 0x4000]);
        let insn = decode(&[0xf3, 0x6c], 32).unwrap(); // rep insb
        let mut regs = GuestRegisters {
            rdi: 0,
            rcx: 300,
            ..Default::default()
        };
        let calls = core::cell::Cell::new(0);
        let mut port = ports(|_: u8, _: Option<u32>| {
            calls.set(calls.get() + 1);
            0xff
        });
        assert!(!run(&insn, &mut regs, 2, &mut env(&mut ram), &mut port).unwrap());
        assert_eq!((regs.rdi, regs.rcx), (MAX_BATCH, 300 - MAX_BATCH));
        assert!(!run(&insn, &mut regs, 2, &mut env(&mut ram), &mut port).unwrap());
        assert!(run(&insn, &mut regs, 2, &mut env(&mut ram), &mut port).unwrap());
        assert_eq!(calls.get(), 300);
        assert!(ram.0[..300].iter().all(|&b| b == 0xff) && ram.0[300] == 0);
        regs.rcx = 0;
        assert!(run(&insn, &mut regs, 2, &mut env(&mut ram), &mut port).unwrap());
        assert_eq!(calls.get(), 300);
    }

    #[test]
    fn a_device_memory_side_gets_one_access_per_element_after_or_before_the_port() {
        let mut ram = Ram(vec![0; 0x4000]);
        // rep outsw from DS:0x10000 = guest-physical 0x11000, not RAM.
        let insn = decode(&[0x66, 0xf3, 0x6f], 32).unwrap();
        let mut regs = GuestRegisters {
            rsi: 0x10000,
            rcx: 2,
            ..Default::default()
        };
        let mut log = Vec::new();
        let mut bus = |a: BusAccess| {
            log.push(a);
            0xbeef
        };
        assert!(run(&insn, &mut regs, 2, &mut env(&mut ram), &mut bus).unwrap());
        use BusAccess::*;
        let read = |gpa| Memory {
            gpa,
            size: 2,
            write: None,
        };
        let out = Port {
            size: 2,
            write: Some(0xbeef),
        };
        assert_eq!(log, [read(0x11000), out, read(0x11002), out]);
        assert_eq!((regs.rsi, regs.rcx), (0x10004, 0));
        // rep insb into unbacked space at ES:0x20000: the port, then the write.
        let insn = decode(&[0xf3, 0x6c], 32).unwrap();
        regs.rdi = 0x20000;
        regs.rcx = 300;
        let mut log = Vec::new();
        let mut bus = |a: BusAccess| {
            log.push(a);
            0x1ab
        };
        assert!(!run(&insn, &mut regs, 2, &mut env(&mut ram), &mut bus).unwrap());
        assert_eq!(log.len() as u64, 2 * MAX_BATCH);
        assert_eq!(
            log[..2],
            [
                Port {
                    size: 1,
                    write: None
                },
                Memory {
                    gpa: 0x20000,
                    size: 1,
                    write: Some(0xab)
                }
            ]
        );
        assert_eq!((regs.rdi, regs.rcx), (0x20000 + MAX_BATCH, 300 - MAX_BATCH));
    }

    #[test]
    fn a_batch_ends_at_a_boundary_between_ram_and_a_device() {
        let mut ram = Ram(vec![0; 0x4000]);
        // rep insb at ES:0x3ffe, 4 bytes: two in RAM, then two in device space.
        let insn = decode(&[0xf3, 0x6c], 32).unwrap();
        let mut regs = GuestRegisters {
            rdi: 0x3ffe,
            rcx: 4,
            ..Default::default()
        };
        let mut log = Vec::new();
        let mut bus = |a: BusAccess| {
            log.push(a);
            0x77
        };
        assert!(!run(&insn, &mut regs, 2, &mut env(&mut ram), &mut bus).unwrap());
        assert_eq!((regs.rdi, regs.rcx), (0x4000, 2));
        assert_eq!(ram.0[0x3ffe..], [0x77, 0x77]);
        // The guest runs it again: the device part in one batch.
        assert!(run(&insn, &mut regs, 2, &mut env(&mut ram), &mut bus).unwrap());
        assert_eq!(log.len(), 6);
        assert!(matches!(log[3], BusAccess::Memory { gpa: 0x4000, .. }));
        assert_eq!((regs.rdi, regs.rcx), (0x4002, 0));
    }

    #[test]
    fn a_memory_operand_that_does_not_translate_is_refused_before_any_port_access() {
        let mut ram = Ram(vec![0; 0x4000]);
        // outsb with paging on and an empty PML4 at 0: nothing translates.
        let insn = decode(&[0x6e], 64).unwrap();
        let mut regs = GuestRegisters {
            rsi: 0x1000,
            ..Default::default()
        };
        let mut e = env(&mut ram);
        e.cr = ControlRegs {
            cr0: 0x8000_0011,
            cr4: 0x20,
            efer: 0x500,
            cs_long: true,
            ..Default::default()
        };
        let mut calls = 0;
        let r = run(&insn, &mut regs, 2, &mut e, &mut |_| {
            calls += 1;
            0
        });
        assert!(
            matches!(r, Err(StringIoError::Mmio(MmioError::Operand { .. }))),
            "{r:?}"
        );
        assert_eq!((calls, regs.rsi), (0, 0x1000));
    }
}
