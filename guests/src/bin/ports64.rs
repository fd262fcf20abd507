//! `ports64`: port I/O to an unclaimed port, and the hypercall interface.
//!
//! Reads port 0x1234 with IN of each size (nothing is there: the hypervisor should
//! return all ones), writes it with OUT of each size, reads it with REP INSB and
//! writes a line to COM1 with REP OUTSB (string port I/O), then makes two hypercalls:
//! `HC_VERSION` (RAX = 0) and an unknown number (RAX = 0xdead), with VMMCALL on
//! AMD and VMCALL on Intel (picked from the CPUID vendor string). Other argument
//! registers are zero. Installs its own GDT and IDT so that a `#UD` from an
//! unhandled hypercall prints a line instead of triple-faulting.
//!
//! Prints:
//! ```text
//! ports64: in8=0x<hex> in16=0x<hex> in32=0x<hex>
//! ports64: out ok
//! ports64: rep insb=[ff, ff, ff, ff]
//! ports64: rep outsb to COM1
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

        // String port I/O: REP INSB from the unclaimed port (all ones, four exits'
        // worth of elements in one instruction), and REP OUTSB of a whole line to
        // COM1, which must come out as if printed byte by byte.
        let mut from_nothing = [0u8; 4];
        // SAFETY: INSB stores RCX bytes at ES:RDI, inside `from_nothing`; DF is clear
        // (the Rust ABI); port 0x1234 is unclaimed.
        unsafe {
            core::arch::asm!(
                "rep insb",
                in("dx") PORT,
                inout("rdi") from_nothing.as_mut_ptr() => _,
                inout("rcx") from_nothing.len() => _,
                options(nostack, preserves_flags)
            );
        }
        println!("ports64: rep insb={from_nothing:02x?}");
        let line = b"ports64: rep outsb to COM1\n";
        // SAFETY: OUTSB reads RCX bytes at DS:RSI, inside `line`; COM1 is the console.
        unsafe {
            core::arch::asm!(
                "rep outsb",
                in("dx") 0x3f8u16,
                inout("rsi") line.as_ptr() => _,
                inout("rcx") line.len() => _,
                options(nostack, readonly, preserves_flags)
            );
        }

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
