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
    use guests::cpu::{inb, inl, inw, outb, outl, outw};
    use guests::hypercall::Hypercall;
    use guests::{idt, println};

    /// A port no device should claim.
    const PORT: u16 = 0x1234;
    /// Hypercall numbers (RAX).
    const HC_VERSION: u64 = 0;
    const HC_UNKNOWN: u64 = 0xdead;

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

        let kind = match Hypercall::detect() {
            Ok(kind) => kind,
            Err(other) => {
                println!(
                    "ports64: unknown CPU vendor {}, no hypercall instruction",
                    other.as_str()
                );
                return;
            }
        };
        let version = kind.call(HC_VERSION);
        println!("ports64: hypercall version={version:#x}");
        let unknown = kind.call(HC_UNKNOWN);
        println!("ports64: hypercall unknown={unknown:#x}");
        println!("ports64: done");
    }
}
