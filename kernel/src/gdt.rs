//! The hypervisor's GDTs and TSSs, one pair per processor (a TSS is busy once loaded,
//! and each processor needs its own IST stacks). Double fault, NMI and machine check
//! run on stacks of their own (IST) so that a kernel stack overflow still produces a
//! report. Every processor's GDT has the same layout, so the selectors are the same.

use spin::Once;
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

pub const DOUBLE_FAULT_IST: u16 = 0;
pub const NMI_IST: u16 = 1;
pub const MACHINE_CHECK_IST: u16 = 2;

const IST_STACK_SIZE: usize = 16 * 1024;

/// Only the CPU touches the bytes (through the IST pointers), hence no reads in Rust.
#[repr(align(16))]
struct Stack(#[allow(dead_code)] [u8; IST_STACK_SIZE]);

static mut IST_STACKS: [Stack; 3] = [const { Stack([0; IST_STACK_SIZE]) }; 3];

static TSS: Once<TaskStateSegment> = Once::new();
static GDT: Once<(GlobalDescriptorTable, Selectors)> = Once::new();

pub struct Selectors {
    pub code: SegmentSelector,
    pub data: SegmentSelector,
    pub tss: SegmentSelector,
}

pub fn init() {
    let tss = TSS.call_once(|| {
        let mut tss = TaskStateSegment::new();
        for (i, slot) in [DOUBLE_FAULT_IST, NMI_IST, MACHINE_CHECK_IST]
            .into_iter()
            .enumerate()
        {
            // SAFETY: each IST stack is handed to the TSS exactly once, here, and is
            // touched only by the CPU on the matching exception.
            let top = unsafe {
                let base = core::ptr::addr_of!(IST_STACKS[i]) as u64;
                base + IST_STACK_SIZE as u64
            };
            tss.interrupt_stack_table[slot as usize] = VirtAddr::new(top);
        }
        tss
    });
    let (gdt, sel) = GDT.call_once(|| build(tss));
    load(gdt, sel);
}

fn build(tss: &'static TaskStateSegment) -> (GlobalDescriptorTable, Selectors) {
    let mut gdt = GlobalDescriptorTable::new();
    let code = gdt.append(Descriptor::kernel_code_segment());
    let data = gdt.append(Descriptor::kernel_data_segment());
    let tss = gdt.append(Descriptor::tss_segment(tss));
    (gdt, Selectors { code, data, tss })
}

/// An application processor's own GDT, TSS and IST stacks (from the frame allocator,
/// never freed: the processor uses them for the rest of the run), loaded.
pub fn init_ap() -> Result<(), crate::memory_map::AllocError> {
    let mut tss = TaskStateSegment::new();
    for slot in [DOUBLE_FAULT_IST, NMI_IST, MACHINE_CHECK_IST] {
        let pa = crate::memory::alloc_zeroed(IST_STACK_SIZE as u64, 4096)?;
        let top = crate::memory::phys_to_virt(pa) as u64 + IST_STACK_SIZE as u64;
        tss.interrupt_stack_table[slot as usize] = VirtAddr::new(top);
    }
    let tss: &'static TaskStateSegment = alloc::boxed::Box::leak(alloc::boxed::Box::new(tss));
    let pair: &'static (GlobalDescriptorTable, Selectors) =
        alloc::boxed::Box::leak(alloc::boxed::Box::new(build(tss)));
    load(&pair.0, &pair.1);
    Ok(())
}

fn load(gdt: &'static GlobalDescriptorTable, sel: &Selectors) {
    gdt.load();
    // SAFETY: the selectors index the GDT just loaded, with matching descriptor types.
    unsafe {
        CS::set_reg(sel.code);
        SS::set_reg(sel.data);
        DS::set_reg(sel.data);
        ES::set_reg(sel.data);
        load_tss(sel.tss);
    }
}

pub fn selectors() -> &'static Selectors {
    &GDT.get().expect("GDT initialised").1
}
