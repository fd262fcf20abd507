//! Routing an inter-processor interrupt across the local APICs of one VM (SDM Vol. 3A
//! 11.6: "Issuing Interprocessor Interrupts", 11.6.2 destinations, 11.6.2.4 lowest
//! priority).
//!
//! A [`LocalApic`] hands every IPI that may reach other APICs to the VMM
//! ([`LocalApic::take_outgoing_ipi`]); [`route`] decides which APICs it reaches:
//!
//! * shorthands: all including self, all excluding self; no shorthand uses the
//!   destination field in physical or logical mode, as each target APIC's own
//!   destination logic (its ID, LDR and DFR) answers it;
//! * fixed and NMI go to every target; lowest priority to the one target with the
//!   lowest task priority (ties to the lowest index, a fixed "focus", which the SDM
//!   leaves model-specific); INIT and STARTUP are returned as [`Action`]s because they
//!   change the vCPU's run state, which only the VMM owns. An INIT level de-assert
//!   (level-triggered, assert = 0) has no effect on processors since the Pentium 4
//!   (SDM 11.6.1) and is dropped; SMI and the reserved encoding are dropped too.
//!
//! The result also says which vCPUs got something, so the VMM can wake or kick them.

use crate::lapic::{DeliveryMode, Ipi, LocalApic, Shorthand};

/// What an IPI asks of a target vCPU beyond its APIC's IRR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// INIT: the target resets and waits for a STARTUP IPI.
    Init,
    /// STARTUP with this vector: a vCPU waiting for SIPI starts in real mode at
    /// `vector << 12` (CS = `vector << 8`, IP = 0); others ignore it.
    StartUp(u8),
}

/// The outcome of routing one IPI; bit `i` of each mask stands for vCPU `i`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Routed {
    /// Received an interrupt or NMI (wake it, kick it out of guest mode so it
    /// notices).
    pub interrupted: u64,
    /// Received INIT.
    pub init: u64,
    /// Received STARTUP with [`Routed::vector`].
    pub startup: u64,
    pub vector: u8,
}

/// At most this many APICs (vCPUs) per VM take part in routing.
pub const MAX_TARGETS: usize = 64;

impl Routed {
    /// The INIT/STARTUP actions, by vCPU index.
    pub fn actions(&self) -> impl Iterator<Item = (usize, Action)> + '_ {
        (0..MAX_TARGETS).filter_map(|i| {
            if self.init & (1 << i) != 0 {
                Some((i, Action::Init))
            } else if self.startup & (1 << i) != 0 {
                Some((i, Action::StartUp(self.vector)))
            } else {
                None
            }
        })
    }
}

/// Whether `ipi`, sent by the APIC at index `sender`, reaches `apic` at index `index`.
fn reaches(ipi: &Ipi, sender: usize, index: usize, apic: &LocalApic) -> bool {
    match ipi.shorthand {
        Shorthand::SelfOnly => index == sender,
        Shorthand::AllIncludingSelf => true,
        Shorthand::AllExcludingSelf => index != sender,
        Shorthand::None => apic.matches_destination(ipi.dest, ipi.logical),
    }
}

/// Delivers `ipi` from `apics[sender]` to its targets among `apics` (index = vCPU
/// index; at most [`MAX_TARGETS`] take part). See the module documentation.
pub fn route(ipi: &Ipi, sender: usize, apics: &mut [&mut LocalApic]) -> Routed {
    let mut out = Routed::default();
    let n = apics.len().min(MAX_TARGETS);
    // A bitmask, so the APICs can be borrowed mutably while delivering.
    let mask = (0..n)
        .filter(|&i| reaches(ipi, sender, i, apics[i]))
        .fold(0u64, |m, i| m | 1 << i);
    let targets = (0..n).filter(move |i| mask & (1 << i) != 0);
    match ipi.mode {
        DeliveryMode::Fixed | DeliveryMode::Nmi => {
            for i in targets {
                apics[i].receive_ipi(ipi);
                out.interrupted |= 1 << i;
            }
        }
        DeliveryMode::LowestPriority => {
            // Only software-enabled APICs take part in the arbitration.
            let chosen = targets
                .filter(|&i| apics[i].sw_enabled())
                .min_by_key(|&i| (apics[i].tpr(), i));
            if let Some(i) = chosen {
                apics[i].receive_ipi(ipi);
                out.interrupted |= 1 << i;
            }
        }
        DeliveryMode::Init if !ipi.assert && ipi.level_triggered => {}
        DeliveryMode::Init => {
            for i in targets {
                apics[i].init();
                out.init |= 1 << i;
            }
        }
        DeliveryMode::StartUp => {
            out.vector = ipi.vector;
            for i in targets {
                out.startup |= 1 << i;
            }
        }
        DeliveryMode::Smi | DeliveryMode::ExtInt | DeliveryMode::Reserved => {}
    }
    out
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::lapic::LapicConfig;
    use std::vec::Vec;

    fn apics(n: u32) -> Vec<LocalApic> {
        (0..n)
            .map(|id| {
                let mut a = LocalApic::new(LapicConfig {
                    apic_id: id,
                    bsp: id == 0,
                    ..LapicConfig::new(1_000_000_000)
                });
                // Software-enable through SVR, flat logical model, LDR = 1 << id.
                a.mmio_write(0xF0, 4, 0x1FF, 0);
                a.mmio_write(0xD0, 4, 1 << (24 + id), 0);
                a
            })
            .collect()
    }

    fn send(apics: &mut [LocalApic], sender: usize, high: u32, low: u32) -> Routed {
        apics[sender].mmio_write(0x310, 4, high, 0);
        apics[sender].mmio_write(0x300, 4, low, 0);
        let ipi = apics[sender].take_outgoing_ipi().expect("routed IPI");
        let mut refs: Vec<&mut LocalApic> = apics.iter_mut().collect();
        route(&ipi, sender, &mut refs)
    }

    fn pending(apics: &[LocalApic]) -> Vec<Option<u8>> {
        apics.iter().map(|a| a.pending_vector()).collect()
    }

    #[test]
    fn physical_fixed_reaches_only_its_target() {
        let mut a = apics(3);
        let r = send(&mut a, 0, 2 << 24, 0x40);
        assert_eq!(r.interrupted, 0b100);
        assert_eq!(pending(&a), [None, None, Some(0x40)]);
        // Physical broadcast 0xFF reaches everyone, the sender too.
        let r = send(&mut a, 1, 0xFF << 24, 0x50);
        assert_eq!(r.interrupted, 0b111);
        assert_eq!(pending(&a), [Some(0x50), Some(0x50), Some(0x50)]);
    }

    #[test]
    fn logical_flat_destinations_are_bitmaps() {
        let mut a = apics(4);
        // Logical (bit 11), destination 0b1010: APICs 1 and 3.
        let r = send(&mut a, 0, 0b1010 << 24, (1 << 11) | 0x61);
        assert_eq!(r.interrupted, 0b1010);
        assert_eq!(pending(&a), [None, Some(0x61), None, Some(0x61)]);
    }

    #[test]
    fn shorthands() {
        let mut a = apics(3);
        let r = send(&mut a, 1, 0, (3 << 18) | 0x70); // all excluding self
        assert_eq!(r.interrupted, 0b101);
        let r = send(&mut a, 1, 0, (2 << 18) | 0x71); // all including self
        assert_eq!(r.interrupted, 0b111);
        assert_eq!(pending(&a), [Some(0x71), Some(0x71), Some(0x71)]);
    }

    #[test]
    fn lowest_priority_picks_one_target() {
        let mut a = apics(3);
        a[0].set_tpr(0x20);
        a[2].set_tpr(0x10);
        // Logical broadcast to 0b111, lowest priority (mode 1).
        let r = send(&mut a, 0, 0b111 << 24, (1 << 11) | (1 << 8) | 0x80);
        assert_eq!(r.interrupted, 0b010, "APIC 1 has TPR 0");
        assert_eq!(pending(&a), [None, Some(0x80), None]);
    }

    #[test]
    fn init_and_startup_become_actions() {
        let mut a = apics(2);
        // Something in APIC 1's IRR that INIT must clear.
        a[1].deliver(0x90, false);
        let r = send(&mut a, 0, 1 << 24, 0x4500); // INIT, level assert
        assert_eq!(r.actions().collect::<Vec<_>>(), [(1, Action::Init)]);
        assert_eq!(a[1].pending_vector(), None, "INIT reset the APIC");
        assert_eq!(a[1].id(), 1, "but not its ID");
        // INIT de-assert (level-triggered, assert clear): no effect.
        let r = send(&mut a, 0, 1 << 24, 0x8500);
        assert_eq!(r.actions().count(), 0);
        let r = send(&mut a, 0, 1 << 24, 0x4609); // SIPI vector 9
        assert_eq!(r.actions().collect::<Vec<_>>(), [(1, Action::StartUp(9))]);
        assert_eq!(r.interrupted, 0);
    }

    #[test]
    fn nmi_ipi_is_pending_at_the_target() {
        let mut a = apics(2);
        let r = send(&mut a, 0, 1 << 24, 0x4400);
        assert_eq!(r.interrupted, 0b10);
        assert!(a[1].take_nmi());
        assert!(!a[0].take_nmi());
    }

    #[test]
    fn a_storm_to_every_destination_stays_within_the_vm() {
        let mut a = apics(2);
        for dest in 0..=0xFFu32 {
            for low in [0x4500, 0x4608, 0x4400, 0x30, (1 << 11) | 0x31, 0xC_0040] {
                let r = send(&mut a, (dest & 1) as usize, dest << 24, low);
                assert_eq!(r.interrupted & !0b11, 0);
                assert!(r.actions().all(|(i, _)| i < 2));
            }
        }
    }
}
