//! Guest console lines on their way to the host's serial line. Writing a line to a
//! 115,200-baud UART takes about 87 us per character, far too long to spend inside
//! an exit handler holding the VM's lock; so a guest's finished lines are queued here
//! (per VM, bounded) and written out later, round-robin across VMs, by the boot
//! processor between time slices within a time budget. A chatty guest therefore
//! fills only its own queue: when it is full its oldest lines are dropped (and
//! counted), and it never gets more than its turn at the serial line.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;

/// Lines a VM may have waiting; more drop its oldest.
pub const LINES_PER_VM: usize = 512;

/// What kind of console output an entry is (see [`super::console::Piece`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Line,
    Partial,
    /// The whole line; its first `shown` bytes went out as a `Partial`.
    Rest {
        shown: usize,
    },
}

struct VmLines {
    name: String,
    lines: VecDeque<(Kind, String)>,
    dropped: u64,
}

/// See the module documentation.
#[derive(Default)]
pub struct ConsoleQueue {
    vms: Vec<VmLines>,
    /// Where the round-robin continues.
    next: usize,
}

/// What [`ConsoleQueue::pop`] hands out.
#[derive(Debug, PartialEq, Eq)]
pub enum Out {
    /// `vm | text`.
    Line(String, String),
    /// A line's beginning, without its newline.
    Partial(String, String),
    /// A line whose first `.2` bytes went out as a `Partial`.
    Rest(String, String, usize),
    /// Lines of this VM were dropped because its queue was full.
    Dropped(String, u64),
}

fn out(kind: Kind, vm: String, text: String) -> Out {
    match kind {
        Kind::Line => Out::Line(vm, text),
        Kind::Partial => Out::Partial(vm, text),
        Kind::Rest { shown } => Out::Rest(vm, text, shown),
    }
}

impl ConsoleQueue {
    pub const fn new() -> Self {
        Self {
            vms: Vec::new(),
            next: 0,
        }
    }

    fn vm(&mut self, name: &str) -> &mut VmLines {
        match self.vms.iter().position(|v| v.name == name) {
            Some(i) => &mut self.vms[i],
            None => {
                self.vms.push(VmLines {
                    name: name.into(),
                    lines: VecDeque::new(),
                    dropped: 0,
                });
                self.vms.last_mut().expect("just pushed")
            }
        }
    }

    /// Queues one finished line of VM `name`.
    pub fn push(&mut self, name: &str, text: &str) {
        self.push_piece(name, Kind::Line, text);
    }

    /// Queues one piece of VM `name`'s output.
    pub fn push_piece(&mut self, name: &str, kind: Kind, text: &str) {
        let vm = self.vm(name);
        if vm.lines.len() >= LINES_PER_VM {
            vm.lines.pop_front();
            vm.dropped += 1;
        }
        vm.lines.push_back((kind, text.into()));
    }

    /// The next thing to write, taking the VMs in turn.
    pub fn pop(&mut self) -> Option<Out> {
        let n = self.vms.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            let vm = &mut self.vms[i];
            if vm.dropped > 0 {
                self.next = (i + 1) % n;
                return Some(Out::Dropped(
                    vm.name.clone(),
                    core::mem::take(&mut vm.dropped),
                ));
            }
            if let Some((kind, text)) = vm.lines.pop_front() {
                self.next = (i + 1) % n;
                return Some(out(kind, vm.name.clone(), text));
            }
        }
        None
    }

    /// Everything VM `name` still has, in order (its last lines before it stops).
    pub fn take_vm(&mut self, name: &str) -> Vec<Out> {
        let Some(vm) = self.vms.iter_mut().find(|v| v.name == name) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if vm.dropped > 0 {
            out.push(Out::Dropped(
                vm.name.clone(),
                core::mem::take(&mut vm.dropped),
            ));
        }
        let name = vm.name.clone();
        out.extend(
            vm.lines
                .drain(..)
                .map(|(k, t)| self::out(k, name.clone(), t)),
        );
        out
    }

    pub fn is_empty(&self) -> bool {
        self.vms
            .iter()
            .all(|v| v.lines.is_empty() && v.dropped == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    fn line(vm: &str, text: &str) -> Option<Out> {
        Some(Out::Line(vm.to_string(), text.to_string()))
    }

    #[test]
    fn vms_take_turns() {
        let mut q = ConsoleQueue::new();
        for i in 0..3 {
            q.push("chatty", &alloc::format!("c{i}"));
        }
        q.push("quiet", "q0");
        assert_eq!(q.pop(), line("chatty", "c0"));
        assert_eq!(q.pop(), line("quiet", "q0"));
        assert_eq!(q.pop(), line("chatty", "c1"));
        assert_eq!(q.pop(), line("chatty", "c2"));
        assert_eq!(q.pop(), None);
        assert!(q.is_empty());
    }

    #[test]
    fn a_full_queue_drops_its_oldest_lines_and_says_so() {
        let mut q = ConsoleQueue::new();
        for i in 0..LINES_PER_VM + 2 {
            q.push("chatty", &alloc::format!("{i}"));
        }
        assert_eq!(q.pop(), Some(Out::Dropped("chatty".into(), 2)));
        assert_eq!(q.pop(), line("chatty", "2"));
        let rest = q.take_vm("chatty");
        assert_eq!(rest.len(), LINES_PER_VM - 1);
        assert_eq!(
            rest.last(),
            Some(&Out::Line(
                "chatty".into(),
                alloc::format!("{}", LINES_PER_VM + 1)
            ))
        );
        assert!(q.take_vm("nobody").is_empty());
    }

    #[test]
    fn pieces_keep_their_kind_and_order() {
        let mut q = ConsoleQueue::new();
        q.push_piece("sh", Kind::Partial, "$ ");
        q.push_piece("sh", Kind::Rest { shown: 2 }, "$ ls");
        q.push("sh", "a");
        assert_eq!(q.pop(), Some(Out::Partial("sh".into(), "$ ".into())));
        assert_eq!(
            q.take_vm("sh"),
            [
                Out::Rest("sh".into(), "$ ls".into(), 2),
                Out::Line("sh".into(), "a".into())
            ]
        );
    }
}
