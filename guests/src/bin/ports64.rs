//! `ports64`: port I/O to an unclaimed port, and the hypercall interface.
//!
//! Reads port 0x1234 with IN of each size (nothing is there: the hypervisor should
//! return all ones), writes it with OUT of each size, then makes two hypercalls:
//! `HC_VERSION` (RAX = 0) and an unknown number (RAX = 0xdead), with VMMCALL on
//! AMD and VMCALL on Intel (picked from the CPUID vendor string). Other argument
//! registers are zero. Installs its own GDT and IDT so that a `#UD` from an
//! unhandled hypercall prints a line instead of triple-faulting.
//!
//! Prints:
//! ```text
//! ports64: in8=0x<hex> in16=0x<hex> in32=0x<hex>
//! ports64: out ok
//! ports64: hypercall version=0x<hex>
//! ports64: hypercall unknown=0x<hex>
//! ports64: done
//! ```

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(target_os = "none")]
mod guest {
    use core::arch::asm;
    use guests::cpu::{inb, inl, inw, outb, outl, outw, vendor};
    use guests::{idt, println};

    /// A port no device should claim.
    const PORT: u16 = 0x1234;
    /// Hypercall numbers (RAX).
    const HC_VERSION: u64 = 0;
    const HC_UNKNOWN: u64 = 0xdead;

    #[derive(Clone, Copy)]
    enum Hypercall {
        Vmmcall,
        Vmcall,
    }

    /// Issues a hypercall with `nr` in RAX (other argument registers zero) and
    /// returns RAX.
    fn hypercall(kind: Hypercall, nr: u64) -> u64 {
        let mut rax = nr;
        // SAFETY: the hypervisor handles the exit; the asm declares every
        // register a hypercall ABI might use for arguments or results as clobbered.
        unsafe {
            match kind {
                // VMMCALL = 0F 01 D9
                Hypercall::Vmmcall => asm!(
                    "vmmcall",
                    inout("rax") rax,
                    inout("rcx") 0u64 => _,
                    inout("rdx") 0u64 => _,
                    inout("rsi") 0u64 => _,
                    inout("rdi") 0u64 => _,
                    inout("r8") 0u64 => _,
                    inout("r9") 0u64 => _,
                    inout("r10") 0u64 => _,
                    inout("r11") 0u64 => _,
                ),
                // VMCALL = 0F 01 C1
                Hypercall::Vmcall => asm!(
                    "vmcall",
                    inout("rax") rax,
                    inout("rcx") 0u64 => _,
                    inout("rdx") 0u64 => _,
                    inout("rsi") 0u64 => _,
                    inout("rdi") 0u64 => _,
                    inout("r8") 0u64 => _,
                    inout("r9") 0u64 => _,
                    inout("r10") 0u64 => _,
                    inout("r11") 0u64 => _,
                ),
            }
        }
        rax
    }

    guests::entry_point!(main);

    fn main() {
        idt::install();

        // SAFETY: port 0x1234 belongs to no device; the hypervisor must treat it
        // as unclaimed.
        let (in8, in16, in32) = unsafe { (inb(PORT), inw(PORT), inl(PORT)) };
        println!("ports64: in8={in8:#x} in16={in16:#x} in32={in32:#x}");
        // SAFETY: as above.
        unsafe {
            outb(PORT, 0x5a);
            outw(PORT, 0x5a5a);
            outl(PORT, 0x5a5a_5a5a);
        }
        println!("ports64: out ok");

        let vendor = vendor();
        let kind = match vendor.as_str() {
            "AuthenticAMD" => Hypercall::Vmmcall,
            "GenuineIntel" => Hypercall::Vmcall,
            other => {
                println!("ports64: unknown CPU vendor {other}, no hypercall instruction");
                return;
            }
        };
        let version = hypercall(kind, HC_VERSION);
        println!("ports64: hypercall version={version:#x}");
        let unknown = hypercall(kind, HC_UNKNOWN);
        println!("ports64: hypercall unknown={unknown:#x}");
        println!("ports64: done");
    }
}
