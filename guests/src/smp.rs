//! Starting application processors (APs): the MP table's processor list, a real-mode
//! trampoline that takes an AP from its start-up state to long mode, and the
//! INIT-SIPI-SIPI sequence of SDM Vol. 3A 9.4.4 ("MP Initialization Example").
//!
//! ## The trampoline page
//!
//! A STARTUP IPI with vector VV starts a waiting AP in real mode at CS = VV00h,
//! IP = 0, i.e. at physical VV000h (SDM 9.4.4, 10.6.1). The trampoline lives at
//! [`TRAMPOLINE_BASE`] (vector [`SIPI_VECTOR`]): above the hypervisor's long-mode
//! page tables (0x1000-0x6FFF for a tiny ELF64 guest) and the real-mode IVT and BDA,
//! far below the MP/ACPI tables at 0xF0000 and the ELF image at 1 MiB. The
//! bootstrap CPU copies the code there and fills in, at fixed offsets:
//!
//! | offset | contents |
//! | --- | --- |
//! | 0x000 | the code (`guests_smp_trampoline_start` .. `_end`, at most 0x300 bytes) |
//! | 0x300 | data block: CR3, stack top, 64-bit entry, AP index, AP main (5 x u64) |
//! | 0x330 | GDTR operand (limit u16, base u32) |
//! | 0x338 | IDTR operand (limit u16, base u32) |
//! | 0x340 | the trampoline IDT (48 bytes, see below) |
//! | 0x400 | the trampoline GDT, 257 descriptors (to 0xC08) |
//! | 0x1000 | top of the trampoline's own stack (used only by NMIs) |
//!
//! The code (SDM 9.9.1 "Switching to Protected Mode", 9.8.5 "Initializing IA-32e
//! Mode"): real mode: CLI, DS = SS = CS, LIDT/LGDT, CR0.PE, far jump to 32-bit code;
//! protected mode: flat data segments, CR4.PAE, CR3 from the data block (the BSP's
//! CR3: the hypervisor's identity map of the first 4 GiB, which covers this page,
//! the image, the stacks and the APIC), `IA32_EFER.LME`, CR0.PG (with WP and NE, and
//! CD/NW cleared from their reset value), far jump to 64-bit code; long mode: RSP
//! from the data block, then `call entry(index, main)` (System V: RDI, RSI).
//!
//! GDT: 0x08 64-bit code, 0x10 flat data and nothing else of note in the slots
//! [`crate::idt`] uses, so the selectors stay valid when the AP switches to that
//! GDT; 0x18 flat 32-bit code; and descriptor 256 (selector 0x800) a 16-bit code
//! segment with base 0x8000, see below.
//!
//! ## NMIs during the trampoline
//!
//! Interrupts are off throughout, but an NMI can arrive at any instruction (the
//! `ipistorm64` guest sends them on purpose). Every step therefore has an NMI
//! handler that only returns, found through one 48-byte table that is valid in all
//! three modes because their vector-2 entries do not overlap: bytes 8-11 are the
//! real-mode IVT entry (offset:segment of an IRET), bytes 16-23 a 32-bit interrupt
//! gate (to an IRETD, selector 0x18), bytes 32-47 a 64-bit gate (to an IRETQ,
//! selector 0x08). The real IVT entry at physical 0x8 points to the same IRET for
//! the first instructions, before the LIDT. One instruction boundary remains
//! special: right after CR0.PE is set, CS still holds the real-mode value 0x0800;
//! an NMI there returns with IRETD to selector 0x800, which is why the GDT has 257
//! entries: descriptor 256 is a 16-bit code segment with the same base (0x8000),
//! so execution resumes at the far jump as intended. The NMI handlers run on a
//! small stack at the top of the trampoline page (SS:SP = 0800:1000 in real mode,
//! the same linear address 0x9000 afterwards).
//!
//! ## Starting an AP
//!
//! [`start_ap`] writes the data block for one AP, sends INIT (assert, edge), waits
//! 10 ms, sends STARTUP twice with 200 us waits, as SDM 9.4.4.1 does, and waits a
//! bounded time for the AP to check in. APs are started one at a time: they share
//! the data block and the NMI stack. The AP's check-in records its APIC ID twice,
//! from the APIC ID register and from CPUID.1:EBX[31:24], so the caller can check
//! both against the MP table.

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU32, Ordering};

use crate::apic::{self, icr};
use crate::cpu::cpuid;
use crate::mptable::{self, Processors};
use crate::tsc::TscRate;

/// Physical address of the trampoline page.
pub const TRAMPOLINE_BASE: u64 = 0x8000;
/// STARTUP vector: the page number of [`TRAMPOLINE_BASE`].
pub const SIPI_VECTOR: u8 = (TRAMPOLINE_BASE >> 12) as u8;
/// Most CPUs (BSP included) this module starts and gives stacks to.
pub const MAX_CPUS: usize = 8;
/// Stack size of each AP.
pub const AP_STACK_SIZE: usize = 16 * 1024;

/// Trampoline page layout (see the module documentation).
const CODE_MAX: usize = 0x300;
const DATA_CR3: u64 = 0x300;
const DATA_STACK: u64 = 0x308;
const DATA_ENTRY: u64 = 0x310;
const DATA_INDEX: u64 = 0x318;
const DATA_MAIN: u64 = 0x320;
const GDTR: u64 = 0x330;
const IDTR: u64 = 0x338;
const IDT: u64 = 0x340;
const IDT_LIMIT: u16 = 47;
const GDT: u64 = 0x400;
const GDT_ENTRIES: u64 = 257;
const STACK_TOP: u64 = 0x1000;

/// Trampoline selectors.
const CODE64_SEL: u16 = 0x08;
const DATA_SEL: u16 = 0x10;
const CODE32_SEL: u16 = 0x18;
/// The real-mode CS after the STARTUP IPI, also a selector (descriptor 256).
const REAL_CS: u16 = (TRAMPOLINE_BASE >> 4) as u16;

/// CR0 in protected mode: PE, ET, NE (CD and NW, set at reset, cleared).
const CR0_PROTECTED: u32 = 0x0000_0031;
/// CR0 in long mode: PG and WP added.
const CR0_PAGED: u32 = 0x8001_0031;

const _: () = assert!(GDT + GDT_ENTRIES * 8 <= STACK_TOP - 0x100);
const _: () = assert!(REAL_CS as u64 / 8 == GDT_ENTRIES - 1);
const _: () = assert!(IDT + (IDT_LIMIT as u64) < GDT);

global_asm!(
    ".pushsection .rodata.guests_smp_trampoline, \"a\"",
    ".balign 16",
    ".global guests_smp_trampoline_start",
    ".hidden guests_smp_trampoline_start",
    "guests_smp_trampoline_start:",
    ".code16",
    "    cli",
    "    mov ax, cs",
    "    mov ds, ax",
    "    mov ss, ax",
    "    mov sp, {stack_top}",
    "    lidt [{idtr}]",
    "    lgdt [{gdtr}]",
    "    mov eax, {cr0_pe}",
    "    mov cr0, eax",
    // jmp far ptr16:32 (66 EA): CS = 32-bit code, EIP = linear address of .Lpm32.
    "    .byte 0x66, 0xEA",
    "    .long {base} + (.Lguests_smp_pm32 - guests_smp_trampoline_start)",
    "    .word {code32}",
    ".code32",
    ".Lguests_smp_pm32:",
    "    mov ax, {data}",
    "    mov ds, ax",
    "    mov es, ax",
    "    mov ss, ax",
    "    mov esp, {base} + {stack_top}",
    "    mov eax, cr4",
    "    or eax, 0x20",           // PAE
    "    mov cr4, eax",
    "    mov eax, dword ptr [{base} + {cr3}]",
    "    mov cr3, eax",
    "    mov ecx, 0xC0000080",    // IA32_EFER
    "    rdmsr",
    "    or eax, 0x100",          // LME
    "    wrmsr",
    "    mov eax, {cr0_pg}",
    "    mov cr0, eax",
    // jmp far ptr16:32 (EA): CS = 64-bit code.
    "    .byte 0xEA",
    "    .long {base} + (.Lguests_smp_lm64 - guests_smp_trampoline_start)",
    "    .word {code64}",
    ".code64",
    ".Lguests_smp_lm64:",
    "    mov rsp, qword ptr [{base} + {stack}]",
    "    mov rdi, qword ptr [{base} + {index}]",
    "    mov rsi, qword ptr [{base} + {main}]",
    "    mov rax, qword ptr [{base} + {entry}]",
    "    xor ebp, ebp",
    "    call rax",
    "    ud2",
    ".code16",
    ".global guests_smp_nmi16",
    ".hidden guests_smp_nmi16",
    "guests_smp_nmi16:",
    "    iret",
    ".code32",
    ".global guests_smp_nmi32",
    ".hidden guests_smp_nmi32",
    "guests_smp_nmi32:",
    "    iretd",
    ".code64",
    ".global guests_smp_nmi64",
    ".hidden guests_smp_nmi64",
    "guests_smp_nmi64:",
    "    iretq",
    ".global guests_smp_trampoline_end",
    ".hidden guests_smp_trampoline_end",
    "guests_smp_trampoline_end:",
    ".popsection",
    base = const TRAMPOLINE_BASE,
    stack_top = const STACK_TOP,
    idtr = const IDTR,
    gdtr = const GDTR,
    cr0_pe = const CR0_PROTECTED,
    cr0_pg = const CR0_PAGED,
    code32 = const CODE32_SEL,
    code64 = const CODE64_SEL,
    data = const DATA_SEL,
    cr3 = const DATA_CR3,
    stack = const DATA_STACK,
    index = const DATA_INDEX,
    main = const DATA_MAIN,
    entry = const DATA_ENTRY,
);

unsafe extern "C" {
    static guests_smp_trampoline_start: u8;
    static guests_smp_trampoline_end: u8;
    static guests_smp_nmi16: u8;
    static guests_smp_nmi32: u8;
    static guests_smp_nmi64: u8;
}

/// What an AP runs once it is in long mode on its own stack: `main(index)`, with
/// interrupts off, the trampoline's GDT and NMI-only IDT loaded (load real ones,
/// e.g. with [`crate::idt::Handlers::load_on_this_cpu`]), the local APIC as it came
/// out of INIT (software-disabled).
pub type ApMain = extern "C" fn(usize) -> !;

/// The APs' stacks, indexed by AP index - 1.
#[repr(C, align(16))]
struct Stacks([[u8; AP_STACK_SIZE]; MAX_CPUS - 1]);
static mut STACKS: Stacks = Stacks([[0; AP_STACK_SIZE]; MAX_CPUS - 1]);

/// Check-ins by AP index: 0 until the AP arrives, then [`CHECKED_IN`] | CPUID APIC
/// ID << 8 | APIC ID register.
static CHECKIN: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];
const CHECKED_IN: u32 = 1 << 16;

/// Where every AP arrives from the trampoline.
extern "C" fn ap_entry(index: u64, main: ApMain) -> ! {
    let index = index as usize;
    if index == 0 || index >= MAX_CPUS {
        crate::cpu::halt_forever();
    }
    let register = apic::id();
    let from_cpuid = (cpuid(1, 0).ebx >> 24) as u8;
    CHECKIN[index].store(
        CHECKED_IN | u32::from(from_cpuid) << 8 | u32::from(register),
        Ordering::Release,
    );
    main(index)
}

/// Why an AP could not be started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmpError {
    /// The BSP's CR3 is above 4 GiB, out of reach of the 32-bit MOV to CR3.
    Cr3TooHigh(u64),
    /// The trampoline code does not fit below its data block.
    TrampolineTooBig(usize),
    /// The AP index is 0 or not below [`MAX_CPUS`].
    BadIndex(usize),
    /// The ICR still showed "send pending" after an INIT or STARTUP IPI.
    IpiStuck(&'static str),
    /// The AP did not check in within the timeout.
    NoCheckIn { apic_id: u8, timeout_ms: u64 },
}

impl core::fmt::Display for SmpError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SmpError::Cr3TooHigh(cr3) => write!(f, "CR3 {cr3:#x} is above 4 GiB"),
            SmpError::TrampolineTooBig(n) => {
                write!(f, "trampoline code is {n} bytes, room for {CODE_MAX}")
            }
            SmpError::BadIndex(i) => write!(f, "AP index {i} not in 1..{MAX_CPUS}"),
            SmpError::IpiStuck(what) => write!(f, "{what} IPI still pending in the ICR"),
            SmpError::NoCheckIn {
                apic_id,
                timeout_ms,
            } => write!(
                f,
                "AP with APIC ID {apic_id} did not check in within {timeout_ms} ms"
            ),
        }
    }
}

/// What an AP reported when it checked in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckIn {
    /// From its local APIC ID register.
    pub apic_id: u8,
    /// From CPUID.1:EBX[31:24].
    pub cpuid_apic_id: u8,
}

/// The enabled processors of the MP table, found as an OS finds it (MP spec 4):
/// the first KiB of the EBDA and the last KiB of base memory when the BIOS data
/// area names them, then the BIOS ROM area 0xF0000-0xFFFFF.
pub fn mp_processors() -> Result<Processors, &'static str> {
    // SAFETY: all of the first MiB is the VM's RAM (a VM has at least 1 MiB),
    // identity-mapped; these reads have no side effects.
    let low =
        |addr: u64, len: usize| unsafe { core::slice::from_raw_parts(addr as *const u8, len) };
    let bda_u16 = |addr: u64| {
        let b = low(addr, 2);
        u64::from(u16::from_le_bytes([b[0], b[1]]))
    };
    let ebda = bda_u16(0x40E) << 4;
    let base_end = bda_u16(0x413) * 1024;
    let mut areas = [(0u64, 0usize); 3];
    if (0x500..0xA_0000).contains(&ebda) {
        areas[0] = (ebda & !0xF, 1024);
    }
    if (0x1000..=0xA_0000).contains(&base_end) {
        areas[1] = (base_end - 1024, 1024);
    }
    areas[2] = (0xF_0000, 0x1_0000);
    let config = areas
        .iter()
        .filter(|&&(_, len)| len != 0)
        .find_map(|&(addr, len)| mptable::find_floating_pointer(low(addr, len), addr))
        .ok_or("no MP floating pointer structure")?;
    if !(0x500..0x10_0000 - mptable::CONFIG_HEADER_SIZE as u64).contains(&config) {
        return Err("MP configuration table outside the first MiB");
    }
    let len = mptable::config_length(low(config, mptable::CONFIG_HEADER_SIZE))
        .map_err(|_| "bad MP configuration table header")?;
    if config + len as u64 > 0x10_0000 {
        return Err("MP configuration table runs past the first MiB");
    }
    mptable::processors(low(config, len)).map_err(|e| match e {
        mptable::MpError::BadConfigChecksum => "MP configuration table checksum",
        mptable::MpError::TooManyProcessors => "too many processors in the MP table",
        _ => "malformed MP configuration table",
    })
}

/// This CPU's CR3.
fn cr3() -> u64 {
    let value: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

fn page_write<T>(offset: u64, value: T) {
    // SAFETY: only called with offsets inside the trampoline page (identity-mapped
    // RAM the guest owns, unused by anything else), on the BSP while no AP runs the
    // trampoline; unaligned-safe.
    unsafe { core::ptr::write_unaligned((TRAMPOLINE_BASE + offset) as *mut T, value) };
}

/// Copies the trampoline to [`TRAMPOLINE_BASE`] and builds its GDT, IDT and the
/// real-mode IVT entry for NMIs. Call once on the BSP before [`start_ap`].
pub fn install_trampoline() -> Result<(), SmpError> {
    let cr3 = cr3();
    if cr3 >> 32 != 0 {
        return Err(SmpError::Cr3TooHigh(cr3));
    }
    let start = &raw const guests_smp_trampoline_start as u64;
    let len = (&raw const guests_smp_trampoline_end as u64 - start) as usize;
    if len > CODE_MAX {
        return Err(SmpError::TrampolineTooBig(len));
    }
    let offset_of = |sym: *const u8| sym as u64 - start;
    let nmi16 = offset_of(&raw const guests_smp_nmi16);
    let nmi32 = TRAMPOLINE_BASE + offset_of(&raw const guests_smp_nmi32);
    let nmi64 = TRAMPOLINE_BASE + offset_of(&raw const guests_smp_nmi64);

    // SAFETY: the source is the assembled trampoline (`len` bytes of .rodata), the
    // destination the trampoline page, which nothing else uses; they do not overlap.
    unsafe {
        core::ptr::write_bytes(TRAMPOLINE_BASE as *mut u8, 0, 0x1000);
        core::ptr::copy_nonoverlapping(start as *const u8, TRAMPOLINE_BASE as *mut u8, len);
    }
    page_write(DATA_CR3, cr3);

    // GDT: see the module documentation. Accessed bits preset (no writes needed).
    let gdt = [
        (0, 0u64),
        (1, 0x00AF_9B00_0000_FFFF), // 0x08: 64-bit code (L), DPL 0
        (2, 0x00CF_9300_0000_FFFF), // 0x10: flat 4 GiB data
        (3, 0x00CF_9B00_0000_FFFF), // 0x18: flat 4 GiB 32-bit code (D)
        // 0x800: 16-bit code, base 0x8000, limit 0xFFFF, byte granular.
        (
            GDT_ENTRIES - 1,
            0x0000_9B00_0000_FFFF | (TRAMPOLINE_BASE << 16),
        ),
    ];
    for (index, descriptor) in gdt {
        page_write(GDT + 8 * index, descriptor);
    }
    page_write(GDTR, (GDT_ENTRIES * 8 - 1) as u16);
    page_write(GDTR + 2, (TRAMPOLINE_BASE + GDT) as u32);

    // IDT: real-mode vector 2 at +8, 32-bit gate 2 at +16, 64-bit gate 2 at +32.
    let real_mode_nmi = u32::from(REAL_CS) << 16 | nmi16 as u32;
    page_write(IDT + 8, real_mode_nmi);
    let gate32 = (nmi32 & 0xFFFF)
        | u64::from(CODE32_SEL) << 16
        | 0x8E_u64 << 40 // present, DPL 0, 32-bit interrupt gate
        | (nmi32 >> 16) << 48;
    page_write(IDT + 16, gate32);
    let gate64_low = (nmi64 & 0xFFFF)
        | u64::from(CODE64_SEL) << 16
        | 0x8E_u64 << 40 // present, DPL 0, 64-bit interrupt gate
        | ((nmi64 >> 16) & 0xFFFF) << 48;
    page_write(IDT + 32, gate64_low);
    page_write(IDT + 40, nmi64 >> 32);
    page_write(IDTR, IDT_LIMIT);
    page_write(IDTR + 2, (TRAMPOLINE_BASE + IDT) as u32);

    // The real IVT's vector 2 (physical 0x8), used before the trampoline's LIDT.
    // SAFETY: the IVT is unused RAM in a long-mode guest; an aligned u32 store.
    unsafe { core::ptr::write_volatile(0x8 as *mut u32, real_mode_nmi) };
    Ok(())
}

/// Sends one IPI and waits (bounded) until the ICR shows it sent.
fn send(dest: u8, low: u32, what: &'static str) -> Result<(), SmpError> {
    // SAFETY: INIT and STARTUP to an AP that is not running yet; the caller
    // (`start_ap`) has prepared the trampoline it will run.
    unsafe { apic::send_ipi(dest, low) };
    if apic::wait_idle(1_000_000) {
        Ok(())
    } else {
        Err(SmpError::IpiStuck(what))
    }
}

/// Starts the AP with local APIC ID `apic_id` as AP number `index` (1 ..
/// [`MAX_CPUS`]) running `main`, with INIT-SIPI-SIPI (SDM 9.4.4.1), and waits up
/// to `timeout_ms` for it to check in. [`install_trampoline`] must have run. The
/// data block stays set afterwards, so a later STARTUP IPI to the same AP (after
/// an INIT) starts it the same way again.
pub fn start_ap(
    index: usize,
    apic_id: u8,
    main: ApMain,
    rate: TscRate,
    timeout_ms: u64,
) -> Result<CheckIn, SmpError> {
    if index == 0 || index >= MAX_CPUS {
        return Err(SmpError::BadIndex(index));
    }
    let stacks = &raw mut STACKS;
    // SAFETY: only the address is taken; the AP that owns the stack writes it.
    let stack_top = unsafe { (&raw mut (*stacks).0[index - 1]) as u64 } + AP_STACK_SIZE as u64;
    page_write(DATA_STACK, stack_top);
    page_write(DATA_ENTRY, ap_entry as *const () as u64);
    page_write(DATA_INDEX, index as u64);
    page_write(DATA_MAIN, main as *const () as u64);
    CHECKIN[index].store(0, Ordering::Relaxed);

    // INIT, level assert, edge (SDM 9.4.4.1 uses 000C4500h, the broadcast form).
    send(apic_id, icr::INIT | icr::ASSERT, "INIT")?;
    rate.delay_us(10_000);
    for _ in 0..2 {
        send(
            apic_id,
            icr::STARTUP | icr::ASSERT | u32::from(SIPI_VECTOR),
            "STARTUP",
        )?;
        rate.delay_us(200);
    }
    let deadline = rate.deadline_ms(timeout_ms);
    loop {
        let c = CHECKIN[index].load(Ordering::Acquire);
        if c & CHECKED_IN != 0 {
            return Ok(CheckIn {
                apic_id: c as u8,
                cpuid_apic_id: (c >> 8) as u8,
            });
        }
        if crate::tsc::rdtsc() > deadline {
            return Err(SmpError::NoCheckIn {
                apic_id,
                timeout_ms,
            });
        }
        crate::cpu::pause();
    }
}
