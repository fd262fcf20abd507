//! Per-VM exit statistics: a count per exit reason, printed when the VM stops.

use core::fmt;
use vcpu::ExitKind;

#[derive(Clone, Debug, Default)]
pub struct ExitStats {
    counts: [u64; ExitKind::COUNT],
}

impl ExitStats {
    pub fn record(&mut self, kind: ExitKind) {
        self.counts[kind as usize] += 1;
    }

    pub fn count(&self, kind: ExitKind) -> u64 {
        self.counts[kind as usize]
    }

    /// Adds another vCPU's counts (a VM's statistics are its vCPUs' together).
    pub fn add(&mut self, other: &ExitStats) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// `total N: io=3 cpuid=2 ...`, reasons that never happened left out.
impl fmt::Display for ExitStats {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "total {}:", self.total())?;
        for kind in ExitKind::ALL {
            let n = self.count(kind);
            if n > 0 {
                write!(f, " {}={}", kind.name(), n)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn counts_and_formats() {
        let mut s = ExitStats::default();
        s.record(ExitKind::PortIo);
        s.record(ExitKind::PortIo);
        s.record(ExitKind::Cpuid);
        assert_eq!(s.count(ExitKind::PortIo), 2);
        assert_eq!(s.to_string(), "total 3: io=2 cpuid=1");
    }
}
