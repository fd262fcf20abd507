//! The metrics the hypervisor serves, rendered in the Prometheus text exposition
//! format, version 0.0.4 (`# HELP` and `# TYPE` lines, then one sample per line:
//! `name{label="value",...} value`).
//!
//! [`Metrics`] is a builder: the kernel adds what it knows in any order, typed
//! through [`VmMetrics`], [`NicMetrics`] and the switch's own counters
//! ([`Metrics::switch`]), and [`Metrics::render`] writes every family's samples
//! together (the format requires a family's lines to be contiguous, and its
//! `# TYPE` before its first sample).
//!
//! Escaping (the format's specification): in label values a backslash, a double
//! quote and a line feed become `\\`, `\"` and `\n`; in `# HELP` text a backslash
//! and a line feed. Metric and label names are this module's constants.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use vswitch::{DropReason, NetworkStats, PortKind, PortReport};

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// A sample's value: integers print exactly, seconds with up to nine decimals.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Int(u64),
    /// Nanoseconds, printed as seconds.
    Nanos(u64),
}

struct Sample {
    labels: Vec<(&'static str, String)>,
    value: Value,
}

struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    samples: Vec<Sample>,
}

/// One VM's figures, as the kernel gathers them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmMetrics<'a> {
    pub name: &'a str,
    /// `running`, `paused`, `restarting`, `stopped`.
    pub state: &'a str,
    pub vcpus: u64,
    /// CPU time of all its vCPUs since it (re)started.
    pub cpu_ns: u64,
    /// Guest RAM.
    pub memory_bytes: u64,
    /// Of it, given back through the balloon ...
    pub ballooned_bytes: u64,
    /// ... and still shared copy-on-write with a snapshot (a clone's).
    pub shared_bytes: u64,
    /// Exits since it (re)started, by reason (`vcpu::ExitKind::name`).
    pub exits: Vec<(&'static str, u64)>,
    pub disk: Option<DiskMetrics>,
    pub nics: Vec<NicMetrics<'a>>,
}

/// A VM disk's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskMetrics {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub read_bytes: u64,
    pub written_bytes: u64,
    pub errors: u64,
}

/// A VM NIC's counters: its switch port's, seen from the guest (tx: what the
/// guest sent to the switch; rx: what the switch queued for it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NicMetrics<'a> {
    /// `eth0`, `eth1`, ... in the order of the configuration.
    pub nic: &'a str,
    pub network: &'a str,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub dropped_frames: u64,
}

/// Families in the order they are rendered.
const FAMILIES: &[(&str, Kind, &str)] = &[
    (
        "hv_uptime_seconds",
        Kind::Gauge,
        "Time since the hypervisor booted.",
    ),
    (
        "hv_vm_up",
        Kind::Gauge,
        "1 for each VM and its state (running, paused, restarting, stopped).",
    ),
    ("hv_vm_vcpus", Kind::Gauge, "Virtual CPUs of the VM."),
    (
        "hv_vm_cpu_seconds_total",
        Kind::Counter,
        "CPU time of all the VM's vCPUs since it (re)started.",
    ),
    ("hv_vm_memory_bytes", Kind::Gauge, "Guest RAM of the VM."),
    (
        "hv_vm_memory_ballooned_bytes",
        Kind::Gauge,
        "Guest RAM the VM gave back through its balloon.",
    ),
    (
        "hv_vm_memory_shared_bytes",
        Kind::Gauge,
        "Guest RAM still shared copy-on-write with the snapshot the VM was cloned from.",
    ),
    (
        "hv_vm_exits_total",
        Kind::Counter,
        "VM exits since the VM (re)started, by reason.",
    ),
    (
        "hv_vm_disk_requests_total",
        Kind::Counter,
        "Disk requests completed, by operation (read, write, flush).",
    ),
    (
        "hv_vm_disk_bytes_total",
        Kind::Counter,
        "Bytes moved by the VM's disk, by direction (read, written).",
    ),
    (
        "hv_vm_disk_errors_total",
        Kind::Counter,
        "Disk requests that ended in an error.",
    ),
    (
        "hv_vm_nic_frames_total",
        Kind::Counter,
        "Frames through a VM NIC's switch port, by direction (tx: sent by the guest, rx: queued for it).",
    ),
    (
        "hv_vm_nic_bytes_total",
        Kind::Counter,
        "Bytes through a VM NIC's switch port, by direction.",
    ),
    (
        "hv_vm_nic_dropped_frames_total",
        Kind::Counter,
        "Frames of or for a VM NIC that the switch dropped.",
    ),
    (
        "hv_switch_dropped_frames_total",
        Kind::Counter,
        "Frames the virtual switch dropped, by network, port and reason.",
    ),
    (
        "hv_switch_forwarded_frames_total",
        Kind::Counter,
        "Frames the virtual switch forwarded, by network and how (unicast, flooded).",
    ),
    (
        "hv_switch_mac_table_entries",
        Kind::Gauge,
        "Learned MAC addresses per network.",
    ),
    (
        "hv_http_requests_total",
        Kind::Counter,
        "Requests to this endpoint, by response status.",
    ),
    (
        "hv_syslog_messages_total",
        Kind::Counter,
        "Log records for the syslog collector, by outcome (sent, dropped).",
    ),
];

/// The builder: see the module documentation.
pub struct Metrics {
    families: Vec<Family>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self {
            families: FAMILIES
                .iter()
                .map(|&(name, kind, help)| Family {
                    name,
                    help,
                    kind,
                    samples: Vec::new(),
                })
                .collect(),
        }
    }

    /// Adds a sample to the family `name` (one of this module's names; another
    /// name is ignored, which only a change here can cause).
    fn add(&mut self, name: &str, labels: &[(&'static str, &str)], value: Value) {
        if let Some(f) = self.families.iter_mut().find(|f| f.name == name) {
            f.samples.push(Sample {
                labels: labels.iter().map(|&(k, v)| (k, String::from(v))).collect(),
                value,
            });
        }
    }

    pub fn uptime(&mut self, ns: u64) {
        self.add("hv_uptime_seconds", &[], Value::Nanos(ns));
    }

    /// One VM's figures.
    pub fn vm(&mut self, vm: &VmMetrics) {
        let n = vm.name;
        self.add("hv_vm_up", &[("vm", n), ("state", vm.state)], Value::Int(1));
        self.add("hv_vm_vcpus", &[("vm", n)], Value::Int(vm.vcpus));
        self.add(
            "hv_vm_cpu_seconds_total",
            &[("vm", n)],
            Value::Nanos(vm.cpu_ns),
        );
        self.add(
            "hv_vm_memory_bytes",
            &[("vm", n)],
            Value::Int(vm.memory_bytes),
        );
        self.add(
            "hv_vm_memory_ballooned_bytes",
            &[("vm", n)],
            Value::Int(vm.ballooned_bytes),
        );
        self.add(
            "hv_vm_memory_shared_bytes",
            &[("vm", n)],
            Value::Int(vm.shared_bytes),
        );
        for &(reason, count) in &vm.exits {
            self.add(
                "hv_vm_exits_total",
                &[("vm", n), ("reason", reason)],
                Value::Int(count),
            );
        }
        if let Some(d) = vm.disk {
            for (op, c) in [("read", d.reads), ("write", d.writes), ("flush", d.flushes)] {
                self.add(
                    "hv_vm_disk_requests_total",
                    &[("vm", n), ("op", op)],
                    Value::Int(c),
                );
            }
            for (dir, c) in [("read", d.read_bytes), ("written", d.written_bytes)] {
                self.add(
                    "hv_vm_disk_bytes_total",
                    &[("vm", n), ("direction", dir)],
                    Value::Int(c),
                );
            }
            self.add(
                "hv_vm_disk_errors_total",
                &[("vm", n)],
                Value::Int(d.errors),
            );
        }
        for nic in &vm.nics {
            let l = |dir| [("vm", n), ("nic", nic.nic), ("network", nic.network), dir];
            for (dir, frames, bytes) in [
                ("tx", nic.tx_frames, nic.tx_bytes),
                ("rx", nic.rx_frames, nic.rx_bytes),
            ] {
                self.add(
                    "hv_vm_nic_frames_total",
                    &l(("direction", dir)),
                    Value::Int(frames),
                );
                self.add(
                    "hv_vm_nic_bytes_total",
                    &l(("direction", dir)),
                    Value::Int(bytes),
                );
            }
            self.add(
                "hv_vm_nic_dropped_frames_total",
                &[("vm", n), ("nic", nic.nic), ("network", nic.network)],
                Value::Int(nic.dropped_frames),
            );
        }
    }

    /// The switch's counters: drops per port and reason (every reason, zero or
    /// not, so a rate can be taken from the first scrape), forwarding and table
    /// size per network. `owner` names a port's user (`vm/eth0`, `hv`, `uplink`).
    pub fn switch<'a>(
        &mut self,
        networks: impl Iterator<Item = (&'a str, NetworkStats)>,
        ports: impl Iterator<Item = PortReport<'a>>,
        owner: &dyn Fn(&PortReport<'a>) -> String,
    ) {
        for p in ports {
            let who = owner(&p);
            let id = port_label(p.port.0);
            let kind = match p.kind {
                PortKind::Vm { .. } => "vm",
                PortKind::Uplink => "uplink",
            };
            for reason in DropReason::ALL {
                self.add(
                    "hv_switch_dropped_frames_total",
                    &[
                        ("network", p.network_name),
                        ("port", &id),
                        ("owner", &who),
                        ("kind", kind),
                        ("reason", reason.as_str()),
                    ],
                    Value::Int(p.stats.dropped(reason).frames),
                );
            }
        }
        for (name, s) in networks {
            for (how, c) in [("unicast", s.unicast), ("flooded", s.flooded)] {
                self.add(
                    "hv_switch_forwarded_frames_total",
                    &[("network", name), ("how", how)],
                    Value::Int(c),
                );
            }
            self.add(
                "hv_switch_mac_table_entries",
                &[("network", name)],
                Value::Int(s.table_entries),
            );
        }
    }

    /// This endpoint's own answers, by status code.
    pub fn http(&mut self, by_status: &[(u16, u64)]) {
        for &(status, count) in by_status {
            let mut code = String::new();
            let _ = write!(code, "{status}");
            self.add(
                "hv_http_requests_total",
                &[("code", &code)],
                Value::Int(count),
            );
        }
    }

    /// Syslog records sent and dropped (a full queue or an unreachable collector).
    pub fn syslog(&mut self, sent: u64, dropped: u64) {
        self.add(
            "hv_syslog_messages_total",
            &[("outcome", "sent")],
            Value::Int(sent),
        );
        self.add(
            "hv_syslog_messages_total",
            &[("outcome", "dropped")],
            Value::Int(dropped),
        );
    }

    /// The exposition text. Families without samples are left out.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in self.families.iter().filter(|f| !f.samples.is_empty()) {
            out.push_str("# HELP ");
            out.push_str(f.name);
            out.push(' ');
            escape_into(&mut out, f.help, false);
            out.push('\n');
            let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind.as_str());
            for s in &f.samples {
                out.push_str(f.name);
                if !s.labels.is_empty() {
                    out.push('{');
                    for (i, (k, v)) in s.labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        out.push_str(k);
                        out.push_str("=\"");
                        escape_into(&mut out, v, true);
                        out.push('"');
                    }
                    out.push('}');
                }
                let _ = match s.value {
                    Value::Int(v) => writeln!(out, " {v}"),
                    Value::Nanos(ns) => {
                        writeln!(out, " {}.{:09}", ns / 1_000_000_000, ns % 1_000_000_000)
                    }
                };
            }
        }
        out
    }
}

fn port_label(port: u16) -> String {
    let mut s = String::new();
    let _ = write!(s, "{port}");
    s
}

/// Escapes `text` for a label value (`quotes`) or for `# HELP` text.
fn escape_into(out: &mut String, text: &str, quotes: bool) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quotes => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn valid_name(n: &str) -> bool {
        let mut chars = n.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    #[test]
    fn family_names_are_valid_and_counters_end_in_total() {
        for (name, kind, help) in FAMILIES {
            assert!(valid_name(name), "{name}");
            assert_eq!(*kind == Kind::Counter, name.ends_with("_total"), "{name}");
            assert!(!help.contains('\n'));
        }
    }

    #[test]
    fn renders_families_together_with_escaped_labels() {
        let mut m = Metrics::new();
        m.vm(&VmMetrics {
            name: "a\"b\\c\nd",
            state: "running",
            vcpus: 2,
            cpu_ns: 1_500_000_001,
            memory_bytes: 64 << 20,
            exits: vec![("io", 3), ("cpuid", 0)],
            ..Default::default()
        });
        m.uptime(2_000_000_000);
        m.vm(&VmMetrics {
            name: "b",
            state: "paused",
            vcpus: 1,
            ..Default::default()
        });
        let text = m.render();
        let expected_start = "# HELP hv_uptime_seconds Time since the hypervisor booted.\n\
             # TYPE hv_uptime_seconds gauge\n\
             hv_uptime_seconds 2.000000000\n";
        assert!(text.starts_with(expected_start), "{text}");
        assert!(text.contains(
            "# TYPE hv_vm_cpu_seconds_total counter\n\
             hv_vm_cpu_seconds_total{vm=\"a\\\"b\\\\c\\nd\"} 1.500000001\n\
             hv_vm_cpu_seconds_total{vm=\"b\"} 0.000000000\n"
        ));
        assert!(text.contains("hv_vm_exits_total{vm=\"a\\\"b\\\\c\\nd\",reason=\"io\"} 3\n"));
        // No samples, no family.
        assert!(!text.contains("hv_vm_disk"));
        assert!(!text.contains("hv_syslog"));
        // Every line is a comment or a sample of the family typed just before.
        let mut typed = "";
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed = rest.split(' ').next().unwrap();
            } else if !line.starts_with("# HELP ") {
                assert!(line.starts_with(typed), "{line} outside {typed}");
            }
        }
    }

    #[test]
    fn help_text_escapes_backslash_and_newline_only() {
        let mut s = String::new();
        escape_into(&mut s, "a\\b\n\"c\"", false);
        assert_eq!(s, "a\\\\b\\n\"c\"");
    }
}
