//! A boot-time check that a vCPU can move between processors, on the backend the
//! machine has: a tiny real-mode guest counts in BX and writes port 0x80 after each
//! step; it runs on the boot processor, is unloaded (`Vcpu::unload`), runs on processor
//! 1 (a parked AP, through `smp::run_on`), is unloaded there, and runs on the boot
//! processor again. Its count must continue across every move. On VT-x this covers
//! VMCLEAR, VMPTRLD on another processor, VMLAUNCH after a clear and that processor's
//! host state; on AMD-V that processor's host-save pages and the ASID flush.

use vcpu::{Backend, CpuMode, Exit, GuestMapping, StartState, Vcpu};

use crate::vmm::host_memory::KernelMemory;
use crate::{memory, println, smp, time};

const RAM: u64 = 64 * 1024;
const ENTRY: u64 = 0x7C00;
/// `inc bx; out 0x80, al; jmp $-5`
const CODE: [u8; 5] = [0x43, 0xE6, 0x80, 0xEB, 0xFB];

/// Runs the guest until its next OUT to port 0x80 and steps over it; the guest's BX.
fn step(vcpu: &mut impl Vcpu) -> Result<u64, Exit> {
    let slice = time::micros_to_tsc(10_000);
    for _ in 0..1000 {
        match vcpu.run(slice) {
            Exit::PortIo(io) if io.port == 0x80 && io.write => {
                vcpu.skip_instruction();
                return Ok(vcpu.regs().rbx & 0xFFFF);
            }
            Exit::ExternalInterrupt | Exit::Preempted => continue,
            other => return Err(other),
        }
    }
    Err(Exit::Preempted)
}

/// Runs the check if processor 1 is online; reports one line either way it ends.
pub fn run<B: Backend>(backend: &mut B)
where
    B::Vcpu: Send,
{
    if smp::cpu_count() < 2 {
        return;
    }
    let Ok(hpa) = memory::alloc_zeroed(RAM, 4096) else {
        println!("hv: vCPU migration check skipped: no memory");
        return;
    };
    // SAFETY: the frames were just allocated for this guest and are reached through
    // the physical mapping; the code fits in the 64 KiB.
    unsafe {
        core::ptr::copy_nonoverlapping(CODE.as_ptr(), memory::phys_to_virt(hpa + ENTRY), CODE.len())
    };
    let ram = [GuestMapping {
        gpa: 0,
        hpa,
        len: RAM,
        writable: true,
        executable: true,
    }];
    let start = StartState {
        mode: CpuMode::Real,
        rip: ENTRY,
        rsp: 0x7000,
        cr3: 0,
        regs: Default::default(),
        gdtr: None,
    };
    match backend.create_vcpu(&mut KernelMemory, &ram, &start) {
        Ok(mut vcpu) => {
            let outcome = moves(&mut vcpu);
            backend.destroy_vcpu(&mut KernelMemory, vcpu);
            match outcome {
                Ok(()) => println!(
                    "hv: vCPU migration check: a guest ran on cpu 0, 1, 0 in turn and kept its state"
                ),
                Err(why) => println!("hv: vCPU migration check FAILED: {why}"),
            }
        }
        Err(e) => println!("hv: vCPU migration check skipped: {e}"),
    }
    memory::free(hpa, RAM);
}

fn moves<V: Vcpu + Send>(vcpu: &mut V) -> Result<(), alloc::string::String> {
    use alloc::format;
    let expect = |got: Result<u64, Exit>, want: u64, cpu: usize| match got {
        Ok(bx) if bx == want => Ok(()),
        Ok(bx) => Err(format!("on cpu {cpu} the guest counted {bx}, not {want}")),
        Err(exit) => Err(format!("on cpu {cpu} the guest stopped with {exit:?}")),
    };
    expect(step(vcpu), 1, 0)?;
    expect(step(vcpu), 2, 0)?;
    vcpu.unload();
    let mut on_ap = None;
    let ran = smp::run_on(1, 1_000_000, &mut || {
        let r = step(vcpu);
        vcpu.unload();
        on_ap = Some(r);
    });
    if !ran {
        return Err("cpu 1 did not take the call".into());
    }
    expect(on_ap.unwrap_or(Err(Exit::Preempted)), 3, 1)?;
    expect(step(vcpu), 4, 0)
}
