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

#[cfg(test)]
mod tests {
    use super::*;

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
}
