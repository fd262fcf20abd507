//! Which vCPU a physical CPU runs next: one run queue for every vCPU of every VM,
//! shared by all physical CPUs. Pure bookkeeping, host-tested; the run loop holds it
//! under a lock only while picking or returning a vCPU.
//!
//! Policy: each physical CPU walks the queue round-robin from where it last stopped
//! and takes the next vCPU that is runnable, not running elsewhere and allowed on it
//! (its affinity set, Xen's `cpus=`). A vCPU runs one time slice at a time and is then
//! returned, so a vCPU that spins with interrupts off holds one CPU for one slice and
//! every other vCPU allowed there gets its turn: nothing can starve. A vCPU that
//! waits for SIPI, or is parked in HLT with interrupts off, is not runnable; a vCPU
//! halted with interrupts on stays runnable (its entry finds out whether an
//! interrupt woke it and gives the CPU back at once if not).

use alloc::vec::Vec;

/// The most physical CPUs the scheduler knows (the width of an affinity mask).
pub const MAX_PCPUS: usize = 64;

/// One vCPU in the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Task {
    pub vm: usize,
    pub vcpu: usize,
    /// Bit `c`: may run on physical CPU `c`.
    pub affinity: u64,
    pub runnable: bool,
    /// The physical CPU running it now.
    pub running_on: Option<usize>,
    /// The VM has stopped: never picked again.
    pub gone: bool,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct RunQueue {
    tasks: Vec<Task>,
    /// Per physical CPU: the index after the task it last took.
    cursor: Vec<usize>,
}

impl RunQueue {
    pub fn new(pcpus: usize) -> Self {
        Self {
            tasks: Vec::new(),
            cursor: alloc::vec![0; pcpus.clamp(1, MAX_PCPUS)],
        }
    }

    /// Adds vCPU `vcpu` of VM `vm`; returns its task index.
    pub fn add(&mut self, vm: usize, vcpu: usize, affinity: u64, runnable: bool) -> usize {
        self.tasks.push(Task {
            vm,
            vcpu,
            affinity,
            runnable,
            running_on: None,
            gone: false,
        });
        self.tasks.len() - 1
    }

    pub fn task(&self, index: usize) -> &Task {
        &self.tasks[index]
    }

    /// The next task for physical CPU `cpu`, marked as running there.
    pub fn pick(&mut self, cpu: usize) -> Option<usize> {
        let n = self.tasks.len();
        let start = *self.cursor.get(cpu)?;
        let found = (0..n).map(|k| (start + k) % n).find(|&i| {
            let t = &self.tasks[i];
            t.runnable && !t.gone && t.running_on.is_none() && t.affinity & (1 << cpu) != 0
        })?;
        self.tasks[found].running_on = Some(cpu);
        self.cursor[cpu] = (found + 1) % n;
        Some(found)
    }

    /// Task `index` gave its physical CPU back.
    pub fn put_back(&mut self, index: usize) {
        self.tasks[index].running_on = None;
    }

    /// Sets whether vCPU `vcpu` of VM `vm` can run.
    pub fn set_runnable(&mut self, vm: usize, vcpu: usize, runnable: bool) {
        if let Some(t) = self.tasks.iter_mut().find(|t| t.vm == vm && t.vcpu == vcpu) {
            t.runnable = runnable;
        }
    }

    /// The physical CPUs running vCPUs of VM `vm` (bit per CPU).
    pub fn cpus_running(&self, vm: usize) -> u64 {
        self.tasks
            .iter()
            .filter(|t| t.vm == vm)
            .filter_map(|t| t.running_on)
            .fold(0, |m, c| m | 1 << c)
    }

    /// The physical CPU running vCPU `vcpu` of VM `vm`, if one is.
    pub fn running_on(&self, vm: usize, vcpu: usize) -> Option<usize> {
        self.tasks
            .iter()
            .find(|t| t.vm == vm && t.vcpu == vcpu)
            .and_then(|t| t.running_on)
    }

    /// VM `vm` has stopped: its tasks are never picked again.
    pub fn remove_vm(&mut self, vm: usize) {
        for t in self.tasks.iter_mut().filter(|t| t.vm == vm) {
            t.gone = true;
        }
    }

    /// VM `vm` was started again (by the operator): its tasks come back, vCPU 0
    /// runnable, the others waiting for their STARTUP as at a first start.
    pub fn revive_vm(&mut self, vm: usize) {
        for t in self.tasks.iter_mut().filter(|t| t.vm == vm) {
            t.gone = false;
            t.runnable = t.vcpu == 0;
        }
    }

    /// How many tasks the queue holds (stopped VMs' too).
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Whether any task of any VM remains.
    pub fn any_left(&self) -> bool {
        self.tasks.iter().any(|t| !t.gone)
    }
}

/// What made a vCPU leave guest mode, as far as its time slice is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SliceEvent {
    /// An exit the guest caused (an instruction, a fault, HLT ...).
    Guest,
    /// An interrupt of the host's: its periodic tick, or a kick from another
    /// processor.
    HostInterrupt,
    /// The backend's own slice timer (the VMX-preemption timer) ran out.
    BackendTimer,
}

/// One time slice of one vCPU, in TSC cycles: how long the backend's slice timer
/// may run at each entry, and whether an exit ends the slice.
///
/// The host's tick is periodic and knows nothing of where a slice began, so it cannot
/// end every slice by itself: a vCPU entered just before a tick would get only the
/// rest of that tick period. Where the backend's slice timer ends slices a little
/// before the tick (as the VMX-preemption timer does under Bochs), the round-robin
/// locks onto that phase: one vCPU's slice always ends just before the tick, the
/// other's always begins just before it and is cut off tens of microseconds later,
/// slice after slice (found with Linux's AP spinning, interrupts off, for a BSP that
/// got 3% of the processor). So a host interrupt ends a slice only once half of it
/// has passed; before that the vCPU is entered again with the rest of its slice.
#[derive(Clone, Copy, Debug)]
pub struct SliceClock {
    begin: u64,
    length: u64,
}

impl SliceClock {
    /// A slice of `length` cycles starting at `now`.
    pub fn start(now: u64, length: u64) -> Self {
        Self { begin: now, length }
    }

    fn elapsed(&self, now: u64) -> u64 {
        now.wrapping_sub(self.begin)
    }

    /// What is left of the slice at `now`, for the backend's timer (at least 1).
    pub fn budget(&self, now: u64) -> u64 {
        self.length.saturating_sub(self.elapsed(now)).max(1)
    }

    /// Whether the slice is over after an exit at `now` (see the type's docs).
    pub fn ends(&self, now: u64, event: SliceEvent) -> bool {
        let elapsed = self.elapsed(now);
        match event {
            SliceEvent::BackendTimer => true,
            SliceEvent::HostInterrupt => elapsed >= self.length / 2,
            SliceEvent::Guest => elapsed >= self.length,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One processor, two vCPUs that spin and never exit by themselves, a host tick
    /// every `PERIOD`, a backend slice timer that runs 3% fast, `SWITCH` cycles of
    /// host work around each entry. `policy` gives the budget for an entry and
    /// whether an exit ends the slice. Returns each vCPU's share of the time, in %.
    fn shares(policy: impl Fn(&SliceClock, u64, SliceEvent) -> (u64, bool)) -> [u64; 2] {
        const PERIOD: u64 = 1_000_000;
        const SWITCH: u64 = 3_000;
        let (mut now, mut next_tick) = (0u64, PERIOD);
        let mut used = [0u64; 2];
        for slice in 0..4_000 {
            let clock = SliceClock::start(now, PERIOD);
            let mut event = SliceEvent::Guest;
            loop {
                now += SWITCH;
                let (budget, _) = policy(&clock, now, event);
                let timer = now + budget * 97 / 100;
                // A tick that came while the host had interrupts off exits at once.
                event = if next_tick <= timer {
                    now = now.max(next_tick);
                    next_tick += PERIOD;
                    SliceEvent::HostInterrupt
                } else {
                    now = timer;
                    SliceEvent::BackendTimer
                };
                if policy(&clock, now, event).1 {
                    break;
                }
            }
            used[slice % 2] += now - clock.begin;
        }
        let total = used[0] + used[1];
        [used[0] * 100 / total, used[1] * 100 / total]
    }

    #[test]
    fn two_spinning_vcpus_on_one_processor_share_it_evenly() {
        // Before: every host interrupt ended the slice and each entry got a full
        // slice. The phase locks and one vCPU gets a few percent.
        let before = shares(|c, _, event| (c.length, event != SliceEvent::Guest));
        assert!(before.iter().any(|&s| s < 10), "{before:?}");
        let after = shares(|c, now, event| (c.budget(now), c.ends(now, event)));
        assert!(after.iter().all(|&s| s >= 40), "{after:?}");
    }

    #[test]
    fn slice_clock_budget_and_end() {
        let c = SliceClock::start(1_000, 100);
        assert_eq!(c.budget(1_000), 100);
        assert_eq!(c.budget(1_030), 70);
        assert_eq!(c.budget(1_200), 1, "never 0");
        assert!(!c.ends(1_049, SliceEvent::HostInterrupt));
        assert!(c.ends(1_050, SliceEvent::HostInterrupt));
        assert!(!c.ends(1_099, SliceEvent::Guest));
        assert!(c.ends(1_100, SliceEvent::Guest));
        assert!(c.ends(1_001, SliceEvent::BackendTimer));
    }

    const ALL: u64 = u64::MAX;

    #[test]
    fn round_robin_on_one_cpu() {
        let mut q = RunQueue::new(1);
        for v in 0..3 {
            q.add(0, v, ALL, true);
        }
        let mut order = Vec::new();
        for _ in 0..6 {
            let t = q.pick(0).unwrap();
            order.push(t);
            q.put_back(t);
        }
        assert_eq!(order, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn a_task_runs_on_one_cpu_at_a_time_and_only_where_allowed() {
        let mut q = RunQueue::new(2);
        let a = q.add(0, 0, 0b01, true); // pinned to CPU 0
        let b = q.add(0, 1, ALL, true);
        assert_eq!(q.pick(1), Some(b), "a is not allowed on CPU 1");
        assert_eq!(q.pick(1), None, "b is already running");
        assert_eq!(q.pick(0), Some(a));
        assert_eq!(q.cpus_running(0), 0b11);
        assert_eq!(q.running_on(0, 1), Some(1));
        q.put_back(b);
        q.put_back(a);
        assert_eq!(q.pick(0), Some(b));
        assert_eq!(q.pick(1), None, "a may not run on CPU 1");
    }

    #[test]
    fn a_spinner_cannot_starve_the_others() {
        // Two CPUs, three VMs' vCPUs; every slice goes back to the queue.
        let mut q = RunQueue::new(2);
        for vm in 0..3 {
            q.add(vm, 0, ALL, true);
        }
        let mut slices = [0u32; 3];
        for _ in 0..30 {
            let x = q.pick(0).unwrap();
            let y = q.pick(1).unwrap();
            slices[x] += 1;
            slices[y] += 1;
            q.put_back(x);
            q.put_back(y);
        }
        assert!(slices.iter().all(|&s| s >= 19), "{slices:?}");
    }

    #[test]
    fn waiting_and_stopped_tasks_are_skipped() {
        let mut q = RunQueue::new(1);
        q.add(0, 0, ALL, true);
        q.add(0, 1, ALL, false); // waits for SIPI
        q.add(1, 0, ALL, true);
        assert_eq!(q.pick(0), Some(0));
        q.put_back(0);
        assert_eq!(q.pick(0), Some(2));
        q.put_back(2);
        q.set_runnable(0, 1, true);
        q.remove_vm(0);
        assert_eq!(q.pick(0), Some(2));
        q.put_back(2);
        assert_eq!(q.pick(0), Some(2));
        assert!(q.any_left());
        q.remove_vm(1);
        assert!(!q.any_left());
        assert_eq!(q.pick(0), None);
        assert_eq!(RunQueue::new(1).pick(5), None, "unknown CPU");
    }

    #[test]
    fn a_revived_vm_starts_with_vcpu_0_only() {
        let mut q = RunQueue::new(1);
        q.add(0, 0, ALL, true);
        q.add(0, 1, ALL, true);
        q.remove_vm(0);
        assert!(!q.any_left());
        q.revive_vm(0);
        assert!(q.any_left());
        assert_eq!(q.pick(0), Some(0));
        q.put_back(0);
        assert_eq!(q.pick(0), Some(0), "vCPU 1 waits for its STARTUP again");
    }
}
