//! Pure text helpers shared by the guests; host-testable.

/// The 12-byte vendor/hypervisor signature that CPUID returns in three registers,
/// made printable.
///
/// Signatures are often NUL-padded (KVM's is `"KVMKVMKVM\0\0\0"`): every byte
/// outside printable ASCII becomes `'.'`, so the guest always prints exactly 12
/// characters and never puts control bytes on the serial line.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Signature([u8; 12]);

impl Signature {
    /// Builds the signature from the registers in the order they are read:
    /// EBX, ECX, EDX for leaf 0x4000_0000, EBX, EDX, ECX for the vendor (leaf 0).
    pub fn from_regs(a: u32, b: u32, c: u32) -> Self {
        let mut bytes = [0u8; 12];
        bytes[0..4].copy_from_slice(&a.to_le_bytes());
        bytes[4..8].copy_from_slice(&b.to_le_bytes());
        bytes[8..12].copy_from_slice(&c.to_le_bytes());
        for byte in &mut bytes {
            if !(0x20..=0x7e).contains(byte) {
                *byte = b'.';
            }
        }
        Signature(bytes)
    }

    /// The 12 printable characters.
    pub fn as_str(&self) -> &str {
        // Every byte is printable ASCII after `from_regs`, hence valid UTF-8.
        core::str::from_utf8(&self.0).unwrap_or("????????????")
    }
}

#[cfg(test)]
mod tests {
    use super::Signature;

    fn regs(s: &[u8; 12]) -> (u32, u32, u32) {
        let r = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
        (r(0), r(4), r(8))
    }

    #[test]
    fn printable_signature_is_kept() {
        let (a, b, c) = regs(b"AuthenticAMD");
        assert_eq!(Signature::from_regs(a, b, c).as_str(), "AuthenticAMD");
    }

    #[test]
    fn nul_padding_becomes_dots() {
        let (a, b, c) = regs(b"KVMKVMKVM\0\0\0");
        assert_eq!(Signature::from_regs(a, b, c).as_str(), "KVMKVMKVM...");
        assert_eq!(Signature::from_regs(0, 0, 0).as_str(), "............");
    }
}
