//! The hypervisor's IDT. Every exception goes through a small stub that saves all
//! general-purpose registers, so the report on the serial line shows the vector, the
//! error code, RIP and the registers instead of a silent triple fault. Exceptions in
//! the hypervisor are bugs: the report is followed by a stop with a failure status.
//!
//! A host NMI is not a bug (a watchdog, a platform error signal, another processor's
//! NMI IPI): it is logged, rate-limited, and the interrupted code continues.
//! Every processor loads the same IDT; the IST indices refer to each one's own TSS.

use core::arch::{global_asm, naked_asm};
use core::sync::atomic::{AtomicU64, Ordering};
use spin::Once;
use x86_64::structures::idt::{InterruptDescriptorTable, InterruptStackFrame};
use x86_64::VirtAddr;

use crate::gdt;

/// What the stubs push, lowest address first.
#[repr(C)]
#[derive(Debug)]
pub struct ExceptionFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

// The CPU aligns RSP to 16 before pushing its 5-word frame (SDM Vol. 3A 6.14.2); with
// the error code, the vector and 15 registers the stack stays 16-byte aligned at the
// call, as the System V ABI wants.
global_asm!(
    ".global hv_exception_common",
    "hv_exception_common:",
    "push rax", "push rbx", "push rcx", "push rdx", "push rsi", "push rdi", "push rbp",
    "push r8", "push r9", "push r10", "push r11", "push r12", "push r13", "push r14", "push r15",
    "mov rdi, rsp",
    "cld",
    "call {handler}",
    "ud2",
    handler = sym exception_handler,
);

macro_rules! stub {
    ($name:ident, $vector:literal) => {
        #[unsafe(naked)]
        extern "C" fn $name() {
            naked_asm!("push 0", "push {v}", "jmp hv_exception_common", v = const $vector)
        }
    };
    ($name:ident, $vector:literal, error_code) => {
        #[unsafe(naked)]
        extern "C" fn $name() {
            naked_asm!("push {v}", "jmp hv_exception_common", v = const $vector)
        }
    };
}

stub!(de, 0);
stub!(db, 1);
stub!(bp, 3);
stub!(of, 4);
stub!(br, 5);
stub!(ud, 6);
stub!(nm, 7);
stub!(df, 8, error_code);
stub!(ts, 10, error_code);
stub!(np, 11, error_code);
stub!(ss, 12, error_code);
stub!(gp, 13, error_code);
stub!(pf, 14, error_code);
stub!(mf, 16);
stub!(ac, 17, error_code);
stub!(mc, 18);
stub!(xm, 19);
stub!(ve, 20);
stub!(cp, 21, error_code);

const NAMES: [&str; 22] = [
    "divide error (#DE)",
    "debug (#DB)",
    "non-maskable interrupt (NMI)",
    "breakpoint (#BP)",
    "overflow (#OF)",
    "BOUND range exceeded (#BR)",
    "invalid opcode (#UD)",
    "device not available (#NM)",
    "double fault (#DF)",
    "coprocessor segment overrun",
    "invalid TSS (#TS)",
    "segment not present (#NP)",
    "stack-segment fault (#SS)",
    "general protection (#GP)",
    "page fault (#PF)",
    "reserved",
    "x87 floating-point (#MF)",
    "alignment check (#AC)",
    "machine check (#MC)",
    "SIMD floating-point (#XM)",
    "virtualization exception (#VE)",
    "control protection (#CP)",
];

extern "C" fn exception_handler(f: &ExceptionFrame) -> ! {
    let name = NAMES.get(f.vector as usize).copied().unwrap_or("unknown");
    let p = crate::serial::emergency_write_fmt;
    p(format_args!(
        "\nhv: EXCEPTION {} vector {} error code {:#x} at RIP {:#018x}\n",
        name, f.vector, f.error_code, f.rip
    ));
    if f.vector == 14 {
        let cr2 = x86_64::registers::control::Cr2::read_raw();
        p(format_args!("hv:   CR2 (faulting address) {cr2:#018x}\n"));
    }
    p(format_args!(
        "hv:   RAX {:#018x} RBX {:#018x} RCX {:#018x} RDX {:#018x}\n",
        f.rax, f.rbx, f.rcx, f.rdx
    ));
    p(format_args!(
        "hv:   RSI {:#018x} RDI {:#018x} RBP {:#018x} RSP {:#018x}\n",
        f.rsi, f.rdi, f.rbp, f.rsp
    ));
    p(format_args!(
        "hv:   R8  {:#018x} R9  {:#018x} R10 {:#018x} R11 {:#018x}\n",
        f.r8, f.r9, f.r10, f.r11
    ));
    p(format_args!(
        "hv:   R12 {:#018x} R13 {:#018x} R14 {:#018x} R15 {:#018x}\n",
        f.r12, f.r13, f.r14, f.r15
    ));
    p(format_args!(
        "hv:   CS {:#06x} SS {:#06x} RFLAGS {:#010x}\n",
        f.cs, f.ss, f.rflags
    ));
    crate::shutdown::exit(crate::shutdown::Status::Failure)
}

static NMI_COUNT: AtomicU64 = AtomicU64::new(0);

/// Logs the first host NMIs, then every power of two, and returns. Runs on its IST
/// stack; the serial lock may be held by the code it interrupted, hence the
/// emergency writer.
extern "x86-interrupt" fn nmi(frame: InterruptStackFrame) {
    let n = NMI_COUNT.fetch_add(1, Ordering::Relaxed) + 1;
    if n <= 4 || n.is_power_of_two() {
        crate::serial::emergency_write_fmt(format_args!(
            "hv: host NMI on cpu {} ({n} so far) at RIP {:#x}, ignored\n",
            crate::smp::this_cpu(),
            frame.instruction_pointer.as_u64()
        ));
    }
}

/// Host NMIs taken so far, on every processor.
pub fn nmi_count() -> u64 {
    NMI_COUNT.load(Ordering::Relaxed)
}

static IDT: Once<InterruptDescriptorTable> = Once::new();

/// Handlers for hardware interrupts the hypervisor itself uses (its timer).
pub type IrqHandler = extern "x86-interrupt" fn(x86_64::structures::idt::InterruptStackFrame);

pub fn init(irqs: impl IntoIterator<Item = (u8, IrqHandler)>) {
    let idt = IDT.call_once(|| {
        let mut idt = InterruptDescriptorTable::new();
        let a = |f: extern "C" fn()| VirtAddr::new(f as usize as u64);
        // SAFETY: every address is a stub above that saves state and never returns to
        // the faulting code; the IST indices exist in the TSS built by `gdt::init`.
        unsafe {
            idt.divide_error.set_handler_addr(a(de));
            idt.debug.set_handler_addr(a(db));
            idt.non_maskable_interrupt
                .set_handler_fn(nmi)
                .set_stack_index(gdt::NMI_IST);
            idt.breakpoint.set_handler_addr(a(bp));
            idt.overflow.set_handler_addr(a(of));
            idt.bound_range_exceeded.set_handler_addr(a(br));
            idt.invalid_opcode.set_handler_addr(a(ud));
            idt.device_not_available.set_handler_addr(a(nm));
            idt.double_fault
                .set_handler_addr(a(df))
                .set_stack_index(gdt::DOUBLE_FAULT_IST);
            idt.invalid_tss.set_handler_addr(a(ts));
            idt.segment_not_present.set_handler_addr(a(np));
            idt.stack_segment_fault.set_handler_addr(a(ss));
            idt.general_protection_fault.set_handler_addr(a(gp));
            idt.page_fault.set_handler_addr(a(pf));
            idt.x87_floating_point.set_handler_addr(a(mf));
            idt.alignment_check.set_handler_addr(a(ac));
            idt.machine_check
                .set_handler_addr(a(mc))
                .set_stack_index(gdt::MACHINE_CHECK_IST);
            idt.simd_floating_point.set_handler_addr(a(xm));
            idt.virtualization.set_handler_addr(a(ve));
            idt.cp_protection_exception.set_handler_addr(a(cp));
        }
        for (vector, handler) in irqs {
            idt[vector].set_handler_fn(handler);
        }
        idt
    });
    idt.load();
}

/// Loads the IDT built by [`init`] on the calling processor (an AP at bring-up).
pub fn load() {
    IDT.get().expect("IDT built by the boot processor").load();
}
