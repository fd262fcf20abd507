//! TEMPORARY measurement of the VM-to-VM path (issue 11): how long a frame waits at
//! a port before its VM takes it, and how the wake-ups went.
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

pub const PORTS: usize = 8;

pub struct PortProbe {
    since: AtomicU64,
    from_cpu: AtomicU64,
    pub waits: AtomicU64,
    pub sum: AtomicU64,
    pub max: AtomicU64,
    pub b: [AtomicU64; 5],
    pub same_cpu: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const Z: AtomicU64 = AtomicU64::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const P: PortProbe = PortProbe {
    since: Z,
    from_cpu: Z,
    waits: Z,
    sum: Z,
    max: Z,
    b: [Z, Z, Z, Z, Z],
    same_cpu: Z,
};
pub static PROBES: [PortProbe; PORTS] = [P, P, P, P, P, P, P, P];
#[allow(clippy::declare_interior_mutable_const)]
pub static BULK: AtomicBool = AtomicBool::new(false);
/// Wake-ups: target vCPU running somewhere / not running, idle CPU kicked / not.
pub static KICK_RUNNING: AtomicU64 = AtomicU64::new(0);
pub static KICK_IDLE: AtomicU64 = AtomicU64::new(0);
pub static KICK_NONE: AtomicU64 = AtomicU64::new(0);
/// Per port: the device's TCPV4 chains cut, receive backlog drops, bad headers.
pub static DEV: [[AtomicU64; 3]; 8] = [
    [Z, Z, Z],
    [Z, Z, Z],
    [Z, Z, Z],
    [Z, Z, Z],
    [Z, Z, Z],
    [Z, Z, Z],
    [Z, Z, Z],
    [Z, Z, Z],
];
pub static LAST_PRINT: AtomicU64 = AtomicU64::new(0);
/// Per VM: interrupts injected, slices, CPU time (TSC).
pub static VMS: [[AtomicU64; 3]; 8] = [
    [Z, Z, Z],
    [Z, Z, Z],
    [Z, Z, Z],
    [Z, Z, Z],
    [Z, Z, Z],
    [Z, Z, Z],
    [Z, Z, Z],
    [Z, Z, Z],
];
pub static IDLES: AtomicU64 = AtomicU64::new(0);
pub static IDLE_TSC: AtomicU64 = AtomicU64::new(0);

pub fn queued(port: usize) {
    if let Some(p) = PROBES.get(port) {
        if p.since.load(Relaxed) == 0 {
            p.from_cpu.store(crate::smp::this_cpu() as u64, Relaxed);
            p.since.store(crate::time::rdtsc(), Relaxed);
        }
    }
}

pub fn taken(port: usize, more: bool) {
    let Some(p) = PROBES.get(port) else { return };
    let since = p.since.swap(0, Relaxed);
    if since == 0 {
        return;
    }
    let now = crate::time::rdtsc();
    let d = now.wrapping_sub(since);
    let us = d / (crate::time::tsc_hz() / 1_000_000).max(1);
    p.waits.fetch_add(1, Relaxed);
    p.sum.fetch_add(us, Relaxed);
    p.max.fetch_max(us, Relaxed);
    let i = match us {
        0..10 => 0,
        10..100 => 1,
        100..500 => 2,
        500..1000 => 3,
        _ => 4,
    };
    p.b[i].fetch_add(1, Relaxed);
    if p.from_cpu.load(Relaxed) == crate::smp::this_cpu() as u64 {
        p.same_cpu.fetch_add(1, Relaxed);
    }
    if more {
        p.from_cpu.store(crate::smp::this_cpu() as u64, Relaxed);
        p.since.store(now, Relaxed);
    }
}

pub fn report(port: usize) {
    let Some(p) = PROBES.get(port) else { return };
    let n = p.waits.load(Relaxed).max(1);
    if let Some(d) = DEV.get(port) {
        crate::println!(
            "netprobe: port {port} device: tso chains {} rx backlog full {} tx bad header {}",
            d[0].load(Relaxed),
            d[1].load(Relaxed),
            d[2].load(Relaxed)
        );
    }
    crate::println!(
        "netprobe: port {port}: {} waits, mean {} us, max {} us, <10us {} <100us {} <500us {} <1ms {} >=1ms {}, taken on the queuing cpu {}",
        p.waits.load(Relaxed),
        p.sum.load(Relaxed) / n,
        p.max.load(Relaxed),
        p.b[0].load(Relaxed),
        p.b[1].load(Relaxed),
        p.b[2].load(Relaxed),
        p.b[3].load(Relaxed),
        p.b[4].load(Relaxed),
        p.same_cpu.load(Relaxed)
    );
    crate::println!(
        "netprobe: kicks: target running {} / not running, idle cpu kicked {} / none idle {}; host idles {} ({} ms)",
        KICK_RUNNING.load(Relaxed),
        KICK_IDLE.load(Relaxed),
        KICK_NONE.load(Relaxed),
        IDLES.load(Relaxed),
        IDLE_TSC.load(Relaxed) / (crate::time::tsc_hz() / 1000).max(1)
    );
}
