//! Exception-delivery loops that no instruction ever ends.
//!
//! #AC and #DB are always intercepted and given back to the guest (CVE-2015-5307,
//! CVE-2015-8104), so a delivery that raises the same exception again becomes one
//! VM exit per round: preemptible, but endless when nothing in the guest changes.
//! Most loops end by themselves: a #DB from an instruction breakpoint on the
//! handler pushes a frame each round, and the stack walks down into the guest's
//! own tables until it triple-faults. The #AC loop of CVE-2015-5307 does not: at
//! CPL 3 with CR0.AM and EFLAGS.AC set, an #AC handler reached without a privilege
//! change (a conforming code segment in 32-bit protected mode) pushes its frame on
//! the same misaligned stack, and that push raises #AC before anything is written
//! (SDM Vol. 3A 6.15, "Interrupt 17"; two benign exceptions are handled serially,
//! Table 6-5). RSP, RIP and every register stay as they were: a processor would
//! repeat the delivery forever, answering neither interrupts nor NMIs.
//!
//! Such a processor is as dead as one in the shutdown state, so the core ends the
//! loop the way a triple fault ends a VM: [`DeliveryLoop`] counts the exits for an
//! exception raised while delivering the same exception at the same RIP, with no
//! exit in between that the guest's own execution caused, and reports a shutdown
//! after [`LIMIT`] of them. Exits that are the host's business (its timer, the end
//! of a slice, an interrupt window) do not break the count: they change nothing
//! in the guest.

use crate::Exit;

/// Rounds of one unbroken delivery loop before the VM is shut down. A real
/// processor never leaves the loop after the first; the margin only absorbs an
/// event that the hypervisor itself interleaves (an interrupt injected between
/// rounds whose handler ends the loop causes exits of its own, which reset it).
pub const LIMIT: u32 = 1_000;

/// One vCPU's count of consecutive redelivered exceptions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeliveryLoop {
    vector: u8,
    rip: u64,
    rounds: u32,
}

/// A delivery loop that reached [`LIMIT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endless {
    /// The exception raised while delivering itself.
    pub vector: u8,
    /// Where the guest stood (the instruction whose fault started the loop).
    pub rip: u64,
    /// Rounds seen (= [`LIMIT`]).
    pub rounds: u32,
}

impl DeliveryLoop {
    /// Accounts for one exit of the vCPU, taken with the guest at `rip`. Returns the
    /// loop once it has gone [`LIMIT`] rounds; the count then starts again.
    pub fn observe(&mut self, exit: &Exit, rip: u64) -> Option<Endless> {
        match *exit {
            Exit::ExceptionReflected {
                vector,
                redelivered: true,
            } => {
                if self.rounds == 0 || self.vector != vector || self.rip != rip {
                    *self = DeliveryLoop {
                        vector,
                        rip,
                        rounds: 0,
                    };
                }
                self.rounds += 1;
                if self.rounds >= LIMIT {
                    let endless = Endless {
                        vector,
                        rip,
                        rounds: self.rounds,
                    };
                    *self = DeliveryLoop::default();
                    return Some(endless);
                }
            }
            // The host's own exits: the guest did nothing.
            Exit::ExternalInterrupt | Exit::Preempted | Exit::InterruptWindow => {}
            // Anything else the guest did (a delivery that completed, an instruction
            // that exited) means it made progress.
            _ => *self = DeliveryLoop::default(),
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AC: Exit = Exit::ExceptionReflected {
        vector: 17,
        redelivered: true,
    };

    #[test]
    fn an_unbroken_ac_loop_ends_at_the_limit() {
        let mut d = DeliveryLoop::default();
        for round in 1..LIMIT {
            assert_eq!(d.observe(&AC, 0x1000), None, "round {round}");
            // The host's timer between rounds changes nothing.
            assert_eq!(d.observe(&Exit::ExternalInterrupt, 0x1000), None);
            assert_eq!(d.observe(&Exit::Preempted, 0x1000), None);
        }
        assert_eq!(
            d.observe(&AC, 0x1000),
            Some(Endless {
                vector: 17,
                rip: 0x1000,
                rounds: LIMIT
            })
        );
        // Counted afresh after a report.
        assert_eq!(d.observe(&AC, 0x1000), None);
    }

    #[test]
    fn progress_resets_the_count() {
        let mut d = DeliveryLoop::default();
        for _ in 0..LIMIT - 1 {
            d.observe(&AC, 0x1000);
        }
        // An exit of the guest's own (its handler ran and did port I/O, say).
        d.observe(&Exit::Halt, 0x2000);
        for _ in 0..LIMIT - 1 {
            assert_eq!(d.observe(&AC, 0x1000), None);
        }
        // A delivery that completed: the #AC came from the handler's own code.
        d.observe(
            &Exit::ExceptionReflected {
                vector: 17,
                redelivered: false,
            },
            0x1000,
        );
        for _ in 0..LIMIT - 1 {
            assert_eq!(d.observe(&AC, 0x1000), None);
        }
    }

    #[test]
    fn another_rip_or_vector_starts_a_new_loop() {
        let mut d = DeliveryLoop::default();
        for _ in 0..LIMIT - 1 {
            d.observe(&AC, 0x1000);
        }
        assert_eq!(d.observe(&AC, 0x1004), None);
        let db = Exit::ExceptionReflected {
            vector: 1,
            redelivered: true,
        };
        for _ in 0..LIMIT - 1 {
            assert_eq!(d.observe(&db, 0x1004), None);
        }
        assert_eq!(d.observe(&AC, 0x1004), None);
    }

    #[test]
    fn the_db_loop_that_walks_its_stack_is_never_counted() {
        // dbloop64's shape: each #DB is raised after its delivery completed.
        let mut d = DeliveryLoop::default();
        let db = Exit::ExceptionReflected {
            vector: 1,
            redelivered: false,
        };
        for _ in 0..10 * LIMIT {
            assert_eq!(d.observe(&db, 0x1000), None);
        }
    }
}
