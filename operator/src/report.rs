//! The `list` and `stats` tables, from numbers the kernel gathers.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// Where a VM is in its life, as `list` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmState {
    Running,
    Paused,
    Restarting,
    Stopped,
}

impl VmState {
    pub fn name(self) -> &'static str {
        match self {
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Restarting => "restarting",
            VmState::Stopped => "stopped",
        }
    }
}

/// One VM in `list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListRow<'a> {
    pub name: &'a str,
    pub state: VmState,
    pub vcpus: usize,
    pub memory_kib: u64,
    /// Since it (re)started; `None` once stopped.
    pub uptime_ms: Option<u64>,
}

/// `1.5 s`, `2 min 03 s`, `1 h 02 min`.
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    if s < 60 {
        format!("{}.{} s", s, (ms % 1000) / 100)
    } else if s < 3600 {
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        format!("{} h {:02} min", s / 3600, (s % 3600) / 60)
    }
}

/// `512 KiB`, `256 MiB`, `1.5 GiB`.
pub fn size_kib(kib: u64) -> String {
    if kib < 1024 || !kib.is_multiple_of(1024) && kib < 10 * 1024 {
        format!("{kib} KiB")
    } else if kib < 1024 * 1024 {
        format!("{} MiB", kib / 1024)
    } else {
        format!(
            "{}.{} GiB",
            kib / (1024 * 1024),
            (kib % (1024 * 1024)) * 10 / (1024 * 1024)
        )
    }
}

/// The `list` table, header first.
pub fn list(rows: &[ListRow]) -> Vec<String> {
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(4);
    let mut out = Vec::with_capacity(rows.len() + 1);
    out.push(format!(
        "{:<width$}  {:<10}  {:>5}  {:>9}  UPTIME",
        "NAME", "STATE", "VCPUS", "MEMORY"
    ));
    for r in rows {
        out.push(format!(
            "{:<width$}  {:<10}  {:>5}  {:>9}  {}",
            r.name,
            r.state.name(),
            r.vcpus,
            size_kib(r.memory_kib),
            r.uptime_ms.map_or(String::from("-"), duration)
        ));
    }
    out
}

/// A count over an interval as a rate per second (rounded down).
pub fn per_second(count: u64, interval_ms: u64) -> u64 {
    if interval_ms == 0 {
        return 0;
    }
    (u128::from(count) * 1000 / u128::from(interval_ms)).min(u128::from(u64::MAX)) as u64
}

/// One exit reason's count in `stats`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitCount {
    pub reason: &'static str,
    /// Since the VM (re)started.
    pub total: u64,
    /// Within the interval.
    pub recent: u64,
}

/// One NIC's counters in `stats`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NicCounters {
    pub network: String,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub dropped: u64,
}

/// A disk's counters in `stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskCounters {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub read_bytes: u64,
    pub written_bytes: u64,
    pub errors: u64,
}

/// Everything `stats NAME` reports about one VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmStats<'a> {
    pub name: &'a str,
    pub state: VmState,
    pub vcpus: usize,
    /// CPU time of all its vCPUs since it (re)started, and within the interval.
    pub cpu_ms: u64,
    pub recent_cpu_ms: u64,
    /// The interval's wall-clock length (since the previous `stats`, or since the
    /// VM started) and the physical CPUs it could use in it.
    pub interval_ms: u64,
    pub pcpus: usize,
    pub memory_kib: u64,
    /// Memory its balloon took back (no host memory behind it).
    pub ballooned_kib: u64,
    /// Memory shared copy-on-write with other clones of the same snapshot.
    pub shared_kib: u64,
    /// Its balloon's target, if it has a balloon.
    pub balloon_target_kib: Option<u64>,
    /// The hypervisor's free memory, for what a balloon gave back.
    pub host_free_kib: u64,
    pub exits: Vec<ExitCount>,
    pub disk: Option<DiskCounters>,
    pub nics: Vec<NicCounters>,
}

/// Exit reasons shown per VM (the busiest; the rest are summed up).
pub const EXIT_REASONS_SHOWN: usize = 8;

/// The lines of `stats` for one VM.
pub fn stats(s: &VmStats) -> Vec<String> {
    let mut out = Vec::new();
    let capacity = s.interval_ms.saturating_mul(s.pcpus.max(1) as u64);
    // Per mille of the machine's processor time in the interval.
    let share = if capacity == 0 {
        0
    } else {
        (u128::from(s.recent_cpu_ms) * 1000 / u128::from(capacity)).min(1000) as u64
    };
    out.push(format!(
        "{}: {}, {} vCPU{}, memory {} private, {} shared ({} pages), {} ballooned",
        s.name,
        s.state.name(),
        s.vcpus,
        if s.vcpus == 1 { "" } else { "s" },
        size_kib(
            s.memory_kib
                .saturating_sub(s.ballooned_kib)
                .saturating_sub(s.shared_kib)
        ),
        size_kib(s.shared_kib),
        s.shared_kib / 4,
        size_kib(s.ballooned_kib)
    ));
    out.push(match s.balloon_target_kib {
        Some(target) => format!(
            "  balloon: target {}, the guest keeps {} of {}; host free memory {}",
            size_kib(target),
            size_kib(s.memory_kib.saturating_sub(target)),
            size_kib(s.memory_kib),
            size_kib(s.host_free_kib)
        ),
        None => format!(
            "  balloon: none; host free memory {}",
            size_kib(s.host_free_kib)
        ),
    });
    out.push(format!(
        "  cpu: {} ms in total, {} ms in the last {} = {}.{}% of {} processor{}",
        s.cpu_ms,
        s.recent_cpu_ms,
        duration(s.interval_ms),
        share / 10,
        share % 10,
        s.pcpus,
        if s.pcpus == 1 { "" } else { "s" }
    ));
    let mut exits: Vec<ExitCount> = s.exits.iter().copied().filter(|e| e.total > 0).collect();
    exits.sort_by(|a, b| b.recent.cmp(&a.recent).then(b.total.cmp(&a.total)));
    let total: u64 = exits.iter().map(|e| e.total).sum();
    let recent: u64 = exits.iter().map(|e| e.recent).sum();
    let mut line = format!(
        "  exits: {}/s ({} in total)",
        per_second(recent, s.interval_ms),
        total
    );
    for e in exits.iter().take(EXIT_REASONS_SHOWN) {
        line.push_str(&format!(
            " {}={}/s",
            e.reason,
            per_second(e.recent, s.interval_ms)
        ));
    }
    if exits.len() > EXIT_REASONS_SHOWN {
        let rest: u64 = exits[EXIT_REASONS_SHOWN..].iter().map(|e| e.recent).sum();
        line.push_str(&format!(" other={}/s", per_second(rest, s.interval_ms)));
    }
    out.push(line);
    if let Some(d) = s.disk {
        out.push(format!(
            "  disk: {} reads ({} KiB), {} writes ({} KiB), {} flushes, {} errors",
            d.reads,
            d.read_bytes / 1024,
            d.writes,
            d.written_bytes / 1024,
            d.flushes,
            d.errors
        ));
    }
    for (i, n) in s.nics.iter().enumerate() {
        out.push(format!(
            "  eth{i} ({}): tx {} frames {} bytes, rx {} frames {} bytes, dropped {}",
            n.network, n.tx_frames, n.tx_bytes, n.rx_frames, n.rx_bytes, n.dropped
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(duration(0), "0.0 s");
        assert_eq!(duration(1_540), "1.5 s");
        assert_eq!(duration(123_000), "2 min 03 s");
        assert_eq!(duration(3_725_000), "1 h 02 min");
        assert_eq!(size_kib(512), "512 KiB");
        assert_eq!(size_kib(1536), "1536 KiB");
        assert_eq!(size_kib(256 * 1024), "256 MiB");
        assert_eq!(size_kib(3 * 512 * 1024), "1.5 GiB");
    }

    #[test]
    fn list_table() {
        let rows = [
            ListRow {
                name: "linux",
                state: VmState::Running,
                vcpus: 2,
                memory_kib: 256 * 1024,
                uptime_ms: Some(12_300),
            },
            ListRow {
                name: "a-long-vm-name",
                state: VmState::Stopped,
                vcpus: 1,
                memory_kib: 2048,
                uptime_ms: None,
            },
        ];
        let t = list(&rows);
        assert_eq!(t.len(), 3);
        assert!(t[0].starts_with("NAME            STATE"));
        assert_eq!(t[1], "linux           running         2    256 MiB  12.3 s");
        assert_eq!(t[2], "a-long-vm-name  stopped         1      2 MiB  -");
    }

    #[test]
    fn rates() {
        assert_eq!(per_second(10, 0), 0);
        assert_eq!(per_second(10, 2_000), 5);
        assert_eq!(per_second(u64::MAX, 1), u64::MAX, "saturates");
    }

    #[test]
    fn stats_lines() {
        let mut exits: Vec<ExitCount> = (0..10)
            .map(|i| ExitCount {
                reason: ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"][i],
                total: 100 + i as u64,
                recent: 10 * i as u64,
            })
            .collect();
        exits.push(ExitCount {
            reason: "never",
            total: 0,
            recent: 0,
        });
        let s = VmStats {
            name: "web",
            state: VmState::Running,
            vcpus: 2,
            cpu_ms: 5_000,
            recent_cpu_ms: 500,
            interval_ms: 1_000,
            pcpus: 2,
            memory_kib: 128 * 1024,
            ballooned_kib: 32 * 1024,
            shared_kib: 8 * 1024,
            balloon_target_kib: Some(48 * 1024),
            host_free_kib: 512 * 1024,
            exits,
            disk: Some(DiskCounters {
                reads: 3,
                read_bytes: 4096,
                ..DiskCounters::default()
            }),
            nics: vec![NicCounters {
                network: "lan".into(),
                tx_frames: 1,
                tx_bytes: 60,
                rx_frames: 2,
                rx_bytes: 120,
                dropped: 0,
            }],
        };
        let mut l = stats(&s);
        assert_eq!(
            l[0],
            "web: running, 2 vCPUs, memory 88 MiB private, 8 MiB shared (2048 pages), 32 MiB ballooned"
        );
        assert_eq!(
            l.remove(1),
            "  balloon: target 48 MiB, the guest keeps 80 MiB of 128 MiB; host free memory 512 MiB"
        );
        assert_eq!(
            l[1],
            "  cpu: 5000 ms in total, 500 ms in the last 1.0 s = 25.0% of 2 processors"
        );
        // Busiest first, eight shown, the other two summed (10 + 0), "never" left out.
        assert!(
            l[2].starts_with("  exits: 450/s (1045 in total) j=90/s i=80/s"),
            "{}",
            l[2]
        );
        assert!(l[2].ends_with(" other=10/s"), "{}", l[2]);
        assert!(!l[2].contains("never"));
        assert_eq!(
            l[3],
            "  disk: 3 reads (4 KiB), 0 writes (0 KiB), 0 flushes, 0 errors"
        );
        assert_eq!(
            l[4],
            "  eth0 (lan): tx 1 frames 60 bytes, rx 2 frames 120 bytes, dropped 0"
        );
    }
}
