//! `insn64`: instructions the hypervisor intercepts because they reach beyond the VM.
//!
//! WBINVD and INVD must complete (the hypervisor skips them: their machine-wide cache
//! effects are not the guest's to have), RDPMC must raise #GP(0) (no performance
//! counters are offered), and MONITOR, which CPUID hides, must raise #UD: the last
//! one ends the guest through the guest library's report of an unexpected exception
//! (`vector=6`). Before that, guest-physical space with neither RAM nor a device
//! (0x3000_0000, inside the identity map the loader builds, far beyond RAM) must
//! answer as a PC's bus does: reads all ones, writes dropped.
//!
//! The same space through instruction forms beyond `MOV` (each emulated by the
//! hypervisor, issue 8): `INC` (all ones + 1 = 0: ZF, and CF as it was), `BTS` (bit
//! 5 of all ones: CF), `XADD` (the old all ones into the register), `REP MOVSB` of
//! 16 bytes from unbacked space into RAM (16 bytes of 0xFF, RCX 0), `REP STOSD` of
//! 4 dwords into it, and `REP STOSB` of 300 bytes (more than the hypervisor does per
//! exit, so the instruction is re-executed until RCX is 0). Then `LODSQ` and
//! `REP MOVSB` through an FS override with FS's base (set by WRMSR) at that space.
//!
//! Then the MMX/SSE moves (issue 8), with CR4.OSFXSR set: `MOVDQU` of 16 bytes from
//! unbacked space into XMM0 (both halves all ones: the low one by `MOVQ`, the high
//! one by `PSRLDQ` and `MOVQ`), `MOVDQU` of XMM1 into it, `MOVQ` into MM0 from it,
//! `MOVNTI` of RAX into it, and `MOVDQA` from a misaligned address there, which must
//! raise #GP(0) (from the processor, or from the hypervisor where the emulator
//! skipped the alignment check and the access reached it).
//!
//! And the x87 loads and stores: `FLD m64fp` of all ones (a quiet NaN) then `FISTP`
//! into RAM gives the integer indefinite 0x8000000000000000 (invalid operation,
//! masked); `FLD m80fp` of all ones (10 bytes) and `FSTP m80fp` back into unbacked
//! space leave the x87 stack empty again.
//!
//! Then the last forms of issue 8 there: `LOCK CMPXCHG16B` (the all-ones operand
//! differs from RDX:RAX: ZF clear, RDX:RAX loaded with all ones), a stack in
//! unbacked space (`PUSH imm` dropped, `POP` all ones, `CALL` whose pushed return
//! address is dropped while RSP still moves by 8; not `RET`, which would jump to all
//! ones), and `REP INSB` of 200 bytes from the unclaimed port 0x1234 into unbacked
//! space (dropped, two exits' batches, RCX 0).
//!
//! Last, computations with a memory source there (issue 8), each one exit: `ADDPD`
//! of 1.0s with all ones (a quiet NaN, which is the result), `PCMPEQB` of a register
//! whose low byte is 0 against all ones, `UCOMISD` against the NaN (unordered: ZF,
//! PF, CF printed as 111), `CVTTSD2SI` of it (the integer indefinite), the x87 `FADD
//! m64fp` of it to 1.0 then `FISTP` into RAM (the indefinite again, printed after
//! `fadd`), and a `MASKMOVDQU` of 7 selected bytes into that space (dropped).
//!
//! Prints:
//! ```text
//! insn64: wbinvd ok
//! insn64: invd ok
//! insn64: rdpmc -> #GP(0x0)
//! insn64: unbacked read 0xffffffffffffffff, after a write 0xffffffffffffffff
//! insn64: inc -> zf=1 cf=1, bts -> cf=1, xadd -> 0xffffffffffffffff
//! insn64: rep movsb from unbacked: 16 bytes of 0xff, rcx 0
//! insn64: rep stosd 4 and rep stosb 300 into unbacked: rcx 0 and 0
//! insn64: fs-relative lodsq 0xffffffffffffffff, rep movsb 8 bytes of 0xff
//! insn64: sse from unbacked: movdqu 0xffffffffffffffff 0xffffffffffffffff, movq mm0 0xffffffffffffffff; movdqu and movnti into it done
//! insn64: movdqa misaligned unbacked -> #GP(0x0)
//! insn64: x87 from unbacked: fld m64 then fistp 0x8000000000000000, fld/fstp m80 tags 0x0
//! insn64: cmpxchg16b on unbacked: zf=0, rdx:rax=0xffffffffffffffff:0xffffffffffffffff
//! insn64: stack in unbacked: pop -> 0xffffffffffffffff, call moved rsp by -8
//! insn64: rep insb 200 from port 0x1234 into unbacked: rcx 0
//! insn64: on unbacked: addpd 0xffffffffffffffff pcmpeqb 0xffffffffffffff00 ucomisd 111 cvttsd2si 0x8000000000000000 fadd 0x8000000000000000 maskmovdqu ok
//! insn64: monitor next
//! guest: unexpected exception vector=6 error=0x0 rip=0x...
//! ```

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(target_os = "none")]
mod guest {
    use core::arch::asm;
    use guests::{idt, println};

    guests::entry_point!(main);

    fn main() {
        let handlers = idt::install();
        // SAFETY: WBINVD/INVD inside a VM: the hypervisor completes them as no-ops;
        // this guest has no dirty data it depends on losing or keeping.
        unsafe { asm!("wbinvd") };
        println!("insn64: wbinvd ok");
        // SAFETY: as above.
        unsafe { asm!("invd") };
        println!("insn64: invd ok");
        // SAFETY: exactly the 2-byte RDPMC, skipped by the armed #GP handler.
        let r = unsafe {
            handlers.guarded(2, || {
                asm!("rdpmc", in("ecx") 0u32, out("eax") _, out("edx") _);
            })
        };
        match r {
            Ok(()) => println!("insn64: rdpmc -> no fault (ERROR)"),
            Err(f) => println!("insn64: rdpmc -> #GP({:#x})", f.error_code),
        }
        const UNBACKED: usize = 0x3000_0000;
        // SAFETY: guest-physical space without RAM behind it: the hypervisor
        // completes both accesses (volatile, so both are really made); nothing of
        // this guest lives there.
        let (before, after) = unsafe {
            let p = UNBACKED as *mut u64;
            let before = core::ptr::read_volatile(p);
            core::ptr::write_volatile(p, 0x1234_5678);
            (before, core::ptr::read_volatile(p))
        };
        println!("insn64: unbacked read {before:#x}, after a write {after:#x}");
        unbacked_forms(UNBACKED);
        fs_relative(UNBACKED);
        simd_forms(handlers, UNBACKED);
        x87_forms(UNBACKED);
        last_unbacked_forms(UNBACKED);
        computations(UNBACKED);
        println!("insn64: monitor next");
        let line = 0u64;
        // SAFETY: MONITOR on a line of this guest's own stack; #UD is expected.
        unsafe { asm!("monitor", in("rax") &line, in("ecx") 0u32, in("edx") 0u32) };
        println!("insn64: monitor -> no fault (ERROR)");
    }

    /// MMX/SSE moves on unbacked space at `at`. This guest is built without SSE
    /// (soft-float target), so nothing of the compiler's lives in the XMM or MMX
    /// registers these blocks use; EMMS leaves the x87 state empty again.
    fn simd_forms(handlers: idt::Handlers, at: usize) {
        let (low, high, mm): (u64, u64, u64);
        // SAFETY: CR4.OSFXSR lets SSE instructions run (the hypervisor allows the
        // bit); the loads read unbacked space (all ones), the stores go to it and
        // are dropped; no memory of this guest is written.
        unsafe {
            asm!(
                "mov {t}, cr4",
                "or {t}, 0x200",
                "mov cr4, {t}",
                "pxor xmm0, xmm0",
                "movdqu xmm0, [{p}]",
                "movq {lo}, xmm0",
                "psrldq xmm0, 8",
                "movq {hi}, xmm0",
                "pxor xmm1, xmm1",
                "movdqu [{p}], xmm1",
                "movq mm0, [{p}]",
                "movq {mm}, mm0",
                "emms",
                "movnti [{p}], {t}",
                p = in(reg) at,
                t = out(reg) _,
                lo = out(reg) low,
                hi = out(reg) high,
                mm = out(reg) mm,
            )
        };
        println!(
            "insn64: sse from unbacked: movdqu {low:#x} {high:#x}, movq mm0 {mm:#x}; \
             movdqu and movnti into it done"
        );
        // SAFETY: exactly the 5-byte `movdqa xmm0, [rax + 8]` (66 0F 6F 40 08),
        // skipped by the armed #GP handler; it only reads.
        let r = unsafe {
            handlers.guarded(5, || {
                asm!("movdqa xmm0, [rax + 8]", in("rax") at);
            })
        };
        match r {
            Ok(()) => println!("insn64: movdqa misaligned unbacked -> no fault (ERROR)"),
            Err(f) => println!(
                "insn64: movdqa misaligned unbacked -> #GP({:#x})",
                f.error_code
            ),
        }
    }

    /// x87 loads and stores on unbacked space at `at` (no x87 state of the compiler's
    /// exists on this soft-float target).
    fn x87_forms(at: usize) {
        let mut int = 0u64;
        let mut env = [0u16; 14];
        // SAFETY: loads from unbacked space (all ones), a store into `int`, a store
        // into unbacked space (dropped), and FNSTENV of the 28-byte environment into
        // `env`; every value pushed is popped again.
        unsafe {
            asm!(
                "fninit",
                "fld qword ptr [{p}]",
                "fistp qword ptr [{i}]",
                "fld tbyte ptr [{p}]",
                "fstp tbyte ptr [{p}]",
                "fnstenv [{e}]",
                "fninit",
                p = in(reg) at,
                i = in(reg) &mut int,
                e = in(reg) &mut env,
            )
        };
        // The 32-bit environment's tag word (bytes 8-9): 0xffff is an empty stack.
        println!(
            "insn64: x87 from unbacked: fld m64 then fistp {int:#x}, fld/fstp m80 tags {:#x}",
            !env[4]
        );
    }

    /// Instruction forms beyond MOV on unbacked space at `at`.
    fn unbacked_forms(at: usize) {
        let (zf, cf, bts_cf): (u8, u8, u8);
        let mut xadd = 5u64;
        // SAFETY: `at` is guest-physical space without RAM (identity-mapped): the
        // hypervisor emulates each access; STC first so INC's kept CF shows.
        unsafe {
            asm!(
                "stc",
                "inc qword ptr [{p}]",
                "setz {zf}",
                "setc {cf}",
                "clc",
                "bts qword ptr [{p}], 5",
                "setc {bcf}",
                "xadd qword ptr [{p}], {x}",
                p = in(reg) at,
                zf = out(reg_byte) zf,
                cf = out(reg_byte) cf,
                bcf = out(reg_byte) bts_cf,
                x = inout(reg) xadd,
            )
        };
        println!("insn64: inc -> zf={zf} cf={cf}, bts -> cf={bts_cf}, xadd -> {xadd:#x}");
        let mut buf = [0u8; 17];
        let left: usize;
        // SAFETY: 16 bytes from unbacked space into `buf` (17 bytes: the last one
        // must stay 0); DF is clear (the ABI's state).
        unsafe {
            asm!(
                "rep movsb",
                inout("rsi") at => _,
                inout("rdi") buf.as_mut_ptr() => _,
                inout("rcx") 16usize => left,
            )
        };
        let all = buf[..16].iter().all(|&b| b == 0xff) && buf[16] == 0;
        println!(
            "insn64: rep movsb from unbacked: 16 bytes of {}, rcx {left}",
            if all {
                "0xff"
            } else {
                "something else (ERROR)"
            }
        );
        let (left_d, left_b): (usize, usize);
        // SAFETY: stores into unbacked space only; the hypervisor drops them.
        unsafe {
            asm!(
                "rep stosd",
                inout("rdi") at => _,
                inout("rcx") 4usize => left_d,
                in("eax") 0x1234_5678u32,
            );
            asm!(
                "rep stosb",
                inout("rdi") at + 0x100 => _,
                inout("rcx") 300usize => left_b,
                in("al") 0x5au8,
            );
        }
        println!("insn64: rep stosd 4 and rep stosb 300 into unbacked: rcx {left_d} and {left_b}");
    }

    /// String instructions through an FS override, with FS's base (set by WRMSR to
    /// IA32_FS_BASE, which neither backend intercepts) at unbacked space `at`: the
    /// hypervisor must use the base the guest set, so it must read the live FS.
    fn fs_relative(at: usize) {
        const IA32_FS_BASE: u32 = 0xC000_0100;
        let loaded: u64;
        let mut buf = [0u8; 9];
        // SAFETY: FS is used by nothing else in this guest; its base goes back to 0
        // at the end. The reads are of unbacked space at FS:0 and FS:8, the write
        // into `buf` (8 of its 9 bytes); DF is clear.
        unsafe {
            asm!(
                "wrmsr",
                in("ecx") IA32_FS_BASE,
                in("eax") at as u32,
                in("edx") (at as u64 >> 32) as u32,
            );
            asm!(
                "lods rax, qword ptr fs:[rsi]",
                "mov rsi, 8",
                "mov rcx, 8",
                "rep movs byte ptr es:[rdi], byte ptr fs:[rsi]",
                inout("rsi") 0usize => _,
                inout("rdi") buf.as_mut_ptr() => _,
                out("rcx") _,
                out("rax") loaded,
            );
            asm!("wrmsr", in("ecx") IA32_FS_BASE, in("eax") 0u32, in("edx") 0u32);
        }
        let all = buf[..8].iter().all(|&b| b == 0xff) && buf[8] == 0;
        println!(
            "insn64: fs-relative lodsq {loaded:#x}, rep movsb 8 bytes of {}",
            if all {
                "0xff"
            } else {
                "something else (ERROR)"
            }
        );
    }

    /// CMPXCHG16B, a stack, and REP INSB on unbacked space at `at` (see the header).
    fn last_unbacked_forms(at: usize) {
        let (mut rax, mut rdx) = (1u64, 2u64);
        let zf: u8;
        // SAFETY: `at + 0x200` is 16-byte aligned unbacked space; RBX is reserved by
        // LLVM, so it is exchanged with a scratch register around the instruction.
        unsafe {
            asm!(
                "xchg {b}, rbx",
                "lock cmpxchg16b xmmword ptr [{p}]",
                "setz {zf}",
                "xchg {b}, rbx",
                p = in(reg) at + 0x200,
                b = inout(reg) 3u64 => _,
                zf = out(reg_byte) zf,
                inout("rax") rax,
                inout("rdx") rdx,
                in("rcx") 4u64,
            )
        };
        println!("insn64: cmpxchg16b on unbacked: zf={zf}, rdx:rax={rdx:#x}:{rax:#x}");
        let (popped, moved): (u64, u64);
        // SAFETY: RSP points into unbacked space only between the two MOVs, with
        // interrupts off (RFLAGS is saved and restored around it), so nothing but
        // these three instructions uses that stack; the CALL lands on the next
        // instruction. The target has no red zone to lose.
        unsafe {
            asm!(
                "pushfq",
                "pop {flags}",
                "cli",
                "mov {saved}, rsp",
                "mov rsp, {top}",
                "push 0x7f",
                "pop {popped}",
                "call 2f",
                "2:",
                "mov {moved}, rsp",
                "mov rsp, {saved}",
                "sub {moved}, {top}",
                "push {flags}",
                "popfq",
                top = in(reg) at + 0x1000,
                flags = out(reg) _,
                saved = out(reg) _,
                popped = out(reg) popped,
                moved = out(reg) moved,
            )
        };
        println!(
            "insn64: stack in unbacked: pop -> {popped:#x}, call moved rsp by {}",
            moved as i64
        );
        let left: usize;
        // SAFETY: port 0x1234 belongs to no device (reads all ones); the stores go to
        // unbacked space, where the hypervisor drops them. DF is clear.
        unsafe {
            asm!(
                "rep insb",
                inout("rdi") at + 0x2000 => _,
                inout("rcx") 200usize => left,
                in("dx") 0x1234u16,
            )
        };
        println!("insn64: rep insb 200 from port 0x1234 into unbacked: rcx {left}");
    }

    /// SSE and x87 computations with a memory source on unbacked space at `at`, and
    /// a masked store into it (see the header). CR4.OSFXSR is set by `simd_forms`.
    fn computations(at: usize) {
        let (sum, eq, flags, int): (u64, u64, u64, u64);
        let mut fint = 0u64;
        // SAFETY: reads of unbacked space (all ones) and a masked store into it
        // (dropped), a store into `fint`; the x87 stack is empty again at the end.
        unsafe {
            asm!(
                "mov {t}, 0x3FF0000000000000",
                "movq xmm0, {t}",
                "punpcklqdq xmm0, xmm0",
                "addpd xmm0, xmmword ptr [{p}]",
                "movq {sum}, xmm0",
                "mov {t}, -256",
                "movq xmm1, {t}",
                "pcmpeqb xmm1, xmmword ptr [{p}]",
                "movq {eq}, xmm1",
                "pxor xmm2, xmm2",
                "ucomisd xmm2, qword ptr [{p}]",
                "pushfq",
                "pop {flags}",
                "cvttsd2si {int}, qword ptr [{p}]",
                "fninit",
                "fld1",
                "fadd qword ptr [{p}]",
                "fistp qword ptr [{f}]",
                "fninit",
                "mov {t}, -256",
                "movq xmm1, {t}",
                "maskmovdqu xmm1, xmm1",
                p = in(reg) at,
                f = in(reg) &mut fint,
                t = out(reg) _,
                sum = out(reg) sum,
                eq = out(reg) eq,
                flags = out(reg) flags,
                int = out(reg) int,
                in("rdi") at + 0x300,
            )
        };
        println!(
            // At most 160 characters reach the console as one line.
            "insn64: on unbacked: addpd {sum:#x} pcmpeqb {eq:#x} ucomisd {}{}{} cvttsd2si \
             {int:#x} fadd {fint:#x} maskmovdqu ok",
            flags >> 6 & 1,
            flags >> 2 & 1,
            flags & 1
        );
    }
}
