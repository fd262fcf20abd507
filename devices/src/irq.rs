//! Edge detection for device interrupt lines.
//!
//! Devices here expose their interrupt output as a level (`interrupt_pending()`), which
//! is what the hardware pin does. ISA interrupts are edge-triggered at the 8259 PIC (and
//! the IOAPIC's ISA entries are programmed edge, active-high), so what the VM has to act
//! on is the 0 -> 1 transition. [`IrqEdge`] remembers the last sampled level and reports
//! rising edges; the VM samples after every access to the device (and after feeding it
//! input) and raises the IRQ when it reports one.

/// The last sampled level of one interrupt line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IrqEdge {
    level: bool,
}

impl IrqEdge {
    pub const fn new() -> Self {
        Self { level: false }
    }

    /// Records the line's current `level`; `true` if it just went from low to high.
    pub fn update(&mut self, level: bool) -> bool {
        let rising = level && !self.level;
        self.level = level;
        rising
    }

    /// The level recorded by the last [`Self::update`].
    pub fn level(&self) -> bool {
        self.level
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_only_rising_edges() {
        let mut edge = IrqEdge::new();
        assert!(!edge.update(false));
        assert!(edge.update(true));
        assert!(!edge.update(true));
        assert!(edge.level());
        assert!(!edge.update(false));
        assert!(edge.update(true));
    }
}
