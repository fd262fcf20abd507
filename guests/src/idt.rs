//! A minimal GDT + IDT for 64-bit guests that want to survive a `#GP`.
//!
//! The hypervisor starts long-mode guests with hidden segment state set directly
//! and no GDT or IDT in guest memory. Delivering an exception reads the gate's code
//! selector from the GDT, and IRETQ reloads SS from the GDT, so a guest that wants
//! to take exceptions needs both tables in its own memory and its segment registers
//! reloaded from them. [`install`] does that.
//!
//! Vector 13 (`#GP`) gets a recoverable handler: when a `try_*` wrapper has armed
//! it with the faulting instruction's length, it records the fault, advances the
//! saved RIP past the instruction and returns. Every other vector (and an
//! unexpected `#GP`) prints the vector, error code and RIP on COM1 and halts, so a
//! broken hypervisor shows up as a readable line instead of a triple fault.
//!
//! The IDT has all 256 gates; vectors 32-255 start out not present (a stray
//! interrupt there becomes a `#NP` whose error code names the vector, reported like
//! any exception) until a guest installs its own entry stub with
//! [`Handlers::set_interrupt_gate`] (interrupt handlers, and the NMI, vector 2).
//!
//! SMP: the tables are shared. The bootstrap CPU calls [`install`] and sets its
//! gates before it starts other CPUs; each of those then loads the same tables
//! with [`Handlers::load_on_this_cpu`]. The `#GP` recovery state is global, so only
//! one CPU at a time may use the `try_*` wrappers.

use core::arch::{asm, global_asm};
use core::sync::atomic::{
    AtomicBool, AtomicU64, Ordering::Acquire, Ordering::Release, Ordering::SeqCst,
};

use crate::cpu::halt_forever;

/// Code selector of the guest's GDT (64-bit, DPL 0).
pub const CODE_SELECTOR: u16 = 0x08;
/// Data/stack selector of the guest's GDT.
pub const DATA_SELECTOR: u16 = 0x10;

/// null; 0x08: 64-bit code (L=1, P, DPL 0, execute/read); 0x10: flat data
/// (read/write). The accessed bits are preset so the CPU never writes here.
static GDT: [u64; 3] = [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];

/// Length of RDMSR (0F 32) and WRMSR (0F 30).
const MSR_INSN_LEN: u64 = 2;

/// `#GP`s taken while armed; [`try_rdmsr`]/[`try_wrmsr`] compare it before/after.
static GP_COUNT: AtomicU64 = AtomicU64::new(0);
/// Error code of the last `#GP`.
static GP_ERROR: AtomicU64 = AtomicU64::new(0);
/// RIP of the last `#GP`.
static GP_RIP: AtomicU64 = AtomicU64::new(0);
/// Bytes the `#GP` handler skips; 0 means no fault is expected (fatal).
static GP_SKIP: AtomicU64 = AtomicU64::new(0);

/// Operand of LGDT/LIDT.
#[repr(C, packed)]
struct DescriptorPointer {
    limit: u16,
    base: u64,
}

/// A 64-bit interrupt gate.
#[derive(Clone, Copy)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

impl Gate {
    const MISSING: Gate = Gate {
        offset_low: 0,
        selector: 0,
        ist: 0,
        type_attr: 0,
        offset_mid: 0,
        offset_high: 0,
        reserved: 0,
    };

    /// Present, DPL 0, 64-bit interrupt gate (type 0xE: IF cleared on entry).
    fn interrupt(handler: u64) -> Gate {
        Gate {
            offset_low: handler as u16,
            selector: CODE_SELECTOR,
            ist: 0,
            type_attr: 0x8e,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

/// The 32 exception vectors, which get stubs here.
const VECTORS: usize = 32;
/// Gates in the IDT: every vector, so guests can add interrupt handlers.
const GATES: usize = 256;

#[repr(C, align(16))]
struct Idt([Gate; GATES]);

static mut IDT: Idt = Idt([Gate::MISSING; GATES]);

// Exception entry stubs. Vectors without a CPU-pushed error code push a dummy 0 so
// the common path sees the same frame: [rsp] vector, [rsp+8] error, [rsp+16] RIP.
global_asm!(
    ".pushsection .text.guests_exceptions, \"ax\"",
    ".irp vec, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31",
    "guests_exc_\\vec:",
    "    push 0",
    "    push \\vec",
    "    jmp guests_exc_common",
    ".endr",
    ".irp vec, 8,10,11,12,13,14,17,21,29,30",
    "guests_exc_\\vec:",
    "    push \\vec",
    "    jmp guests_exc_common",
    ".endr",
    "guests_exc_common:",
    "    mov rdi, [rsp]",
    "    mov rsi, [rsp + 8]",
    "    mov rdx, [rsp + 16]",
    "    and rsp, -16",
    "    call {fatal}",
    "    ud2",
    // #GP: [rsp] error code, [rsp+8] RIP, then CS, RFLAGS, RSP, SS.
    ".global guests_gp_entry",
    ".hidden guests_gp_entry",
    "guests_gp_entry:",
    "    push rax",
    "    mov rax, [rsp + 8]",
    "    mov [rip + {gp_error}], rax",
    "    mov rax, [rsp + 16]",
    "    mov [rip + {gp_rip}], rax",
    "    mov rax, [rip + {gp_skip}]",
    "    test rax, rax",
    "    jz .Lguests_gp_fatal",
    "    add [rsp + 16], rax",
    "    lock inc qword ptr [rip + {gp_count}]",
    "    pop rax",
    "    add rsp, 8",
    "    iretq",
    ".Lguests_gp_fatal:",
    "    pop rax",
    "    jmp guests_exc_13",
    ".popsection",
    // Absolute addresses of the stubs, indexed by vector (the image is linked at a
    // fixed address, so lld fills these in).
    ".pushsection .rodata.guests_exc_table, \"a\"",
    ".balign 8",
    ".global guests_exc_table",
    ".hidden guests_exc_table",
    "guests_exc_table:",
    ".irp vec, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    "    .quad guests_exc_\\vec",
    ".endr",
    ".popsection",
    fatal = sym unexpected_exception,
    gp_error = sym GP_ERROR,
    gp_rip = sym GP_RIP,
    gp_skip = sym GP_SKIP,
    gp_count = sym GP_COUNT,
);

unsafe extern "C" {
    static guests_exc_table: [u64; VECTORS];
    fn guests_gp_entry();
}

extern "C" fn unexpected_exception(vector: u64, error: u64, rip: u64) -> ! {
    // Bounded: the exception may have hit while this CPU held the console lock.
    let _guard = crate::serial::lock_bounded(crate::serial::FATAL_LOCK_SPINS);
    crate::serial::write_fmt(format_args!(
        "guest: unexpected exception vector={vector} error={error:#x} rip={rip:#x}\n"
    ));
    halt_forever()
}

/// Proof that [`install`] ran: the `try_*` wrappers need the `#GP` handler.
#[derive(Clone, Copy)]
pub struct Handlers(());

/// Set by [`install`] once the tables are complete, for [`installed`].
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The tables, if [`install`] has run (on another CPU, typically): what an
/// application processor needs for [`Handlers::load_on_this_cpu`].
pub fn installed() -> Option<Handlers> {
    INSTALLED.load(Acquire).then_some(Handlers(()))
}

/// A `#GP` taken by a `try_*` wrapper.
#[derive(Clone, Copy, Debug)]
pub struct GpFault {
    pub error_code: u64,
    pub rip: u64,
}

/// Loads the guest's GDT, reloads every segment register from it, and loads an
/// IDT with stubs for the 32 exception vectors (the others not present).
///
/// Call it once, on the bootstrap CPU, before any other CPU runs guest code.
pub fn install() -> Handlers {
    load_gdt();
    let idt = &raw mut IDT;
    // SAFETY: only the bootstrap CPU runs (see above) and interrupts are off, so
    // nothing else reads or writes the IDT. `guests_exc_table` is initialised by
    // the linker.
    unsafe {
        for (vector, gate) in (*idt).0.iter_mut().take(VECTORS).enumerate() {
            *gate = Gate::interrupt(guests_exc_table[vector]);
        }
        (*idt).0[13] = Gate::interrupt(guests_gp_entry as *const () as u64);
    }
    load_idt();
    INSTALLED.store(true, Release);
    Handlers(())
}

/// Loads the IDT [`install`] filled.
fn load_idt() {
    let idtr = DescriptorPointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: &raw const IDT as u64,
    };
    // SAFETY: the IDT is static and valid for every vector (present gates with
    // handlers, or not-present ones that raise #NP, which has a handler).
    unsafe { asm!("lidt [{}]", in(reg) &idtr, options(readonly, nostack, preserves_flags)) };
}

impl Handlers {
    /// Loads the same GDT and IDT on the calling CPU (an application processor
    /// that [`install`] did not run on), reloading its segment registers.
    pub fn load_on_this_cpu(self) {
        load_gdt();
        load_idt();
    }

    /// Points IDT vector `vector` at `entry`, a 64-bit interrupt gate (interrupts
    /// off on entry). `entry` must be an assembly stub that preserves every
    /// register and ends in IRETQ (and signals EOI itself when the vector comes
    /// from the local APIC).
    ///
    /// # Safety
    /// No CPU may take `vector` while its 16-byte gate is being written: call it
    /// before the vector can arrive (before enabling interrupts or starting the
    /// CPUs that would send it). Exception vectors keep their stubs unless the
    /// caller means to replace one (the NMI, vector 2, is the usual case).
    pub unsafe fn set_interrupt_gate(self, vector: u8, entry: unsafe extern "C" fn()) {
        let idt = &raw mut IDT;
        (*idt).0[usize::from(vector)] = Gate::interrupt(entry as *const () as u64);
    }
}

/// Loads the guest's GDT and reloads every segment register from it.
fn load_gdt() {
    let gdtr = DescriptorPointer {
        limit: (core::mem::size_of_val(&GDT) - 1) as u16,
        base: GDT.as_ptr() as u64,
    };
    // SAFETY: the GDT is static and its descriptors match what the CPU runs on
    // (flat 64-bit code, flat data: the hypervisor's start state, or the SMP
    // trampoline's), so reloading the selectors changes nothing but where the CPU
    // will find them. The far return reloads CS.
    unsafe {
        asm!(
            "lgdt [{gdtr}]",
            "mov {tmp:e}, {data}",
            "mov ds, {tmp:e}",
            "mov es, {tmp:e}",
            "mov ss, {tmp:e}",
            "mov fs, {tmp:e}",
            "mov gs, {tmp:e}",
            "push {code}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            gdtr = in(reg) &gdtr,
            tmp = out(reg) _,
            data = const DATA_SELECTOR as u32,
            code = const CODE_SELECTOR as u32,
        );
    }
}

/// Runs `f` with the `#GP` handler armed to skip `len` bytes: see
/// [`Handlers::guarded`].
fn armed<T>(len: u64, f: impl FnOnce() -> T) -> Result<T, GpFault> {
    let before = GP_COUNT.load(SeqCst);
    GP_SKIP.store(len, SeqCst);
    let value = f();
    GP_SKIP.store(0, SeqCst);
    if GP_COUNT.load(SeqCst) == before {
        Ok(value)
    } else {
        Err(GpFault {
            error_code: GP_ERROR.load(SeqCst),
            rip: GP_RIP.load(SeqCst),
        })
    }
}

impl Handlers {
    /// Runs `f` with the `#GP` handler armed: if an instruction in `f` raises
    /// `#GP`, the handler records it and resumes `len` bytes after it, and this
    /// returns `Err` with the error code and faulting RIP.
    ///
    /// # Safety
    /// `f` must execute exactly one instruction that can `#GP` (an `asm!` block
    /// holding just that instruction), `len` bytes long, and must be correct
    /// whether or not that instruction took effect.
    pub unsafe fn guarded<T>(self, len: u64, f: impl FnOnce() -> T) -> Result<T, GpFault> {
        armed(len, f)
    }

    /// RDMSR that reports a `#GP` instead of dying of it.
    pub fn try_rdmsr(self, msr: u32) -> Result<u64, GpFault> {
        armed(MSR_INSN_LEN, || {
            let (lo, hi): (u32, u32);
            // SAFETY: reading an MSR has no memory effects; a #GP is skipped by the
            // armed handler (the asm is exactly the 2-byte RDMSR; if it faults the
            // outputs are garbage and are discarded by `armed`). Not `nomem`: the
            // handler writes GP_COUNT behind the compiler's back.
            unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi) };
            (u64::from(hi) << 32) | u64::from(lo)
        })
    }

    /// WRMSR that reports a `#GP` instead of dying of it.
    ///
    /// # Safety
    /// Writing an MSR that exists can change anything about the CPU.
    pub unsafe fn try_wrmsr(self, msr: u32, value: u64) -> Result<(), GpFault> {
        armed(MSR_INSN_LEN, || {
            // SAFETY: the caller vouches for the write; the asm is exactly the
            // 2-byte WRMSR the armed handler skips on a #GP.
            unsafe {
                asm!(
                    "wrmsr",
                    in("ecx") msr,
                    in("eax") value as u32,
                    in("edx") (value >> 32) as u32,
                )
            };
        })
    }
}
