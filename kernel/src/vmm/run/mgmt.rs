//! The operator's console on the serial line, wired to the running machine (the
//! `operator` crate holds its logic: input modes, line editing, commands,
//! authentication, tables).
//!
//! The boot processor calls [`Machine::console_tick`] between time slices. Keys go
//! to the VM that has the keyboard until Ctrl-] opens the `hv>` prompt; while the
//! prompt is open, guest console lines wait in their queues so that they do not cut
//! into what the operator types. Commands that change a VM or the hypervisor ask
//! for the administrator passphrase once per prompt session; a wrong one is logged
//! and makes the next attempt wait (doubling each time). Every command is logged
//! with its outcome.

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use ::operator::report::{self, DiskCounters, ExitCount, ListRow, NicCounters, VmState, VmStats};
use ::operator::{command, Command, Credential, Gate, Input, Step};
use vcpu::{Backend, ExitKind};

use super::{build, kick_cpus, ExitStats, Machine};
use crate::{memory, println, serial, smp, time};

/// Keys typed for a VM whose UART cannot take them yet wait here; beyond this they
/// are dropped (a guest that never reads its console must not block the escape key).
const TO_GUEST_MAX: usize = 4096;
/// Bytes taken from the host UART per call (its FIFO is 16 bytes; the rest waits
/// in the emulator or the USB-serial adapter).
const READ_PER_TICK: usize = 64;

/// Where `stats` last looked at a VM, for the rates since then.
#[derive(Clone, Default)]
struct Sample {
    tsc: u64,
    run_tsc: u64,
    exits: ExitStats,
}

/// The console's state: see the module documentation.
pub(in crate::vmm) struct Console {
    input: Input,
    gate: Gate,
    credential: Option<Credential>,
    /// The VM that has the keyboard (`console NAME`); `None`, or a VM that has
    /// stopped: the first running VM.
    focus: Option<usize>,
    to_guest: VecDeque<u8>,
    dropped_keys: u64,
    /// A privileged command waiting for the passphrase.
    pending: Option<String>,
    samples: Vec<Sample>,
}

impl Console {
    pub fn new(credential: Option<Credential>, vms: usize) -> Self {
        Self {
            input: Input::new(),
            gate: Gate::new(),
            credential,
            focus: None,
            to_guest: VecDeque::new(),
            dropped_keys: 0,
            pending: None,
            samples: alloc::vec![Sample::default(); vms],
        }
    }

    pub fn at_prompt(&self) -> bool {
        self.input.at_prompt()
    }
}

fn now_ms() -> u64 {
    time::uptime_micros() / 1000
}

fn write_bytes(bytes: &[u8]) {
    if !bytes.is_empty() {
        // Echo is printable ASCII, CR and LF, and backspaces.
        serial::write_raw(&String::from_utf8_lossy(bytes));
    }
}

fn prompt() {
    serial::write_raw("hv> ");
}

/// Checks `passphrase` against `credential` with Argon2's working memory taken
/// from page frames (19 MiB by default: more than the kernel heap should give).
fn verify(credential: &Credential, passphrase: &[u8]) -> Result<bool, String> {
    let blocks = credential.memory_blocks().map_err(|e| format!("{e}"))?;
    let bytes = (blocks * core::mem::size_of::<::operator::auth::Block>()) as u64;
    let pa = memory::alloc_zeroed(bytes, 4096)
        .map_err(|e| format!("cannot take {} KiB for Argon2id: {e:?}", bytes / 1024))?;
    // SAFETY: `alloc_zeroed` gave `bytes` bytes of page-aligned RAM that nothing else
    // uses until `free` below; all zeros is a valid `Block` (an array of u64), and
    // the page alignment exceeds its alignment.
    let memory_blocks = unsafe {
        core::slice::from_raw_parts_mut(
            memory::phys_to_virt(pa) as *mut ::operator::auth::Block,
            blocks,
        )
    };
    let same = credential.verify(passphrase, memory_blocks);
    memory::free(pa, bytes);
    same.map_err(|e| format!("{e}"))
}

impl<B: Backend> Machine<'_, B> {
    fn vm_index(&self, name: &str) -> Result<usize, String> {
        self.vms
            .iter()
            .position(|v| v.name == name)
            .ok_or_else(|| format!("no VM is named {name:?} (list shows them)"))
    }

    pub(super) fn vm_state(&self, v: usize) -> VmState {
        let life = self.vms[v].life.lock();
        if life.stop.is_some() {
            VmState::Stopped
        } else if life.restart.is_some() {
            VmState::Restarting
        } else if life.paused {
            VmState::Paused
        } else {
            VmState::Running
        }
    }

    /// The VM that gets the keys: the chosen one while it runs, else the first
    /// that runs (`first`, from housekeeping).
    fn keyboard(&self, con: &Console, first: Option<usize>) -> Option<usize> {
        con.focus
            .filter(|&v| self.vms[v].life.lock().stop.is_none())
            .or(first)
    }

    /// Reads what was typed and acts on it; gives waiting keys to the VM that has
    /// the keyboard. `first` is the first VM still running.
    pub(super) fn console_tick(&self, first: Option<usize>) {
        let mut con = self.console.lock();
        let mut echo = Vec::new();
        for _ in 0..READ_PER_TICK {
            let Some(byte) = serial::try_read_byte() else {
                break;
            };
            echo.clear();
            let step = con.input.feed(byte, &mut echo);
            write_bytes(&echo);
            match step {
                Step::None => {}
                Step::Guest(b) => {
                    if con.to_guest.len() < TO_GUEST_MAX {
                        con.to_guest.push_back(b);
                    } else {
                        con.dropped_keys += 1;
                    }
                }
                Step::Opened => {
                    let to = self
                        .keyboard(&con, first)
                        .map_or(String::from("no VM"), |v| self.vms[v].name.clone());
                    println!(
                        "\nhv: management console: help lists the commands; Ctrl-] or exit \
                         returns the keyboard to {to}"
                    );
                    prompt();
                }
                Step::Closed => {
                    con.gate.end_session();
                    con.pending = None;
                    self.back_to_guest(&con, first);
                }
                Step::Cancelled => {
                    if let Some(line) = con.pending.take() {
                        log::info!("console: {line:?}: cancelled at the passphrase prompt");
                    }
                    prompt();
                }
                Step::Line(line) => {
                    self.command_line(&mut con, first, line);
                    if con.input.at_prompt() && !con.input.reading_secret() {
                        prompt();
                    }
                }
                Step::Secret(mut secret) => {
                    self.passphrase(&mut con, first, &secret);
                    zeroize::Zeroize::zeroize(&mut secret);
                    if con.input.at_prompt() && !con.input.reading_secret() {
                        prompt();
                    }
                }
            }
        }
        if con.dropped_keys > 0 {
            println!(
                "hv: console: {} key(s) dropped: the VM does not read its console",
                con.dropped_keys
            );
            con.dropped_keys = 0;
        }
        let Some(v) = self.keyboard(&con, first) else {
            con.to_guest.clear();
            return;
        };
        let mut shared = self.vms[v].shared.lock();
        // The VM with the keyboard has its line in progress shown (a prompt).
        if !con.input.at_prompt() {
            shared.show_console_partial(time::uptime_ns());
        }
        // Waiting keys go to it as fast as its UART takes them.
        let mut given = false;
        while let Some(&b) = con.to_guest.front() {
            if !shared.console_input(b) {
                break;
            }
            con.to_guest.pop_front();
            given = true;
        }
        drop(shared);
        if given {
            self.kick_vcpus(v, 1);
        }
    }

    fn back_to_guest(&self, con: &Console, first: Option<usize>) {
        match self.keyboard(con, first) {
            Some(v) => println!("hv: console: the keyboard is {}'s again", self.vms[v].name),
            None => println!("hv: console: no VM is running to take the keyboard"),
        }
    }

    fn command_line(&self, con: &mut Console, first: Option<usize>, line: String) {
        let cmd = match command::parse(&line) {
            Ok(None) => return,
            Ok(Some(c)) => c,
            Err(e) => {
                println!("hv: {e}");
                log::info!("console: {line:?}: refused: {e}");
                return;
            }
        };
        if cmd.privileged() && !con.gate.authorised(now_ms()) {
            let Some(_) = con.credential else {
                println!(
                    "hv: {} needs the administrator passphrase, and none is configured \
                     ([console] admin_passphrase_file): commands that change VMs are disabled",
                    cmd.name()
                );
                log::warn!("console: {line:?}: refused: no administrator passphrase configured");
                return;
            };
            if let Err(ms) = con.gate.may_try(now_ms()) {
                println!(
                    "hv: after a wrong passphrase the next attempt waits: try again in {}.{} s",
                    ms / 1000,
                    ms % 1000 / 100
                );
                log::warn!("console: {line:?}: refused: passphrase attempt too soon");
                return;
            }
            con.pending = Some(line);
            con.input.ask_secret();
            serial::write_raw("hv: administrator passphrase: ");
            return;
        }
        let outcome = self.run_command(con, first, cmd);
        match &outcome {
            Ok(()) => log::info!("console: {line:?}: done"),
            Err(e) => {
                println!("hv: {e}");
                log::info!("console: {line:?}: failed: {e}");
            }
        }
    }

    fn passphrase(&self, con: &mut Console, first: Option<usize>, secret: &[u8]) {
        let (Some(line), Some(credential)) = (con.pending.take(), con.credential) else {
            return;
        };
        match verify(&credential, secret) {
            Ok(true) => {
                con.gate.succeeded(now_ms());
                log::info!("console: administrator passphrase accepted");
                self.command_line(con, first, line);
            }
            Ok(false) => {
                let delay = con.gate.failed(now_ms());
                println!(
                    "hv: wrong passphrase: {line:?} refused; the next attempt is taken in {} s",
                    delay / 1000
                );
                log::warn!(
                    "console: {line:?}: refused: wrong administrator passphrase ({} in a row)",
                    con.gate.failures()
                );
            }
            Err(e) => {
                println!("hv: the passphrase could not be checked: {e}");
                log::error!("console: {line:?}: refused: passphrase check failed: {e}");
            }
        }
    }

    fn run_command(
        &self,
        con: &mut Console,
        first: Option<usize>,
        cmd: Command,
    ) -> Result<(), String> {
        match cmd {
            Command::Help(topic) => {
                for l in command::help(topic).map_err(|e| format!("{e}"))? {
                    println!("{l}");
                }
                Ok(())
            }
            Command::List => {
                self.list();
                Ok(())
            }
            Command::Stats(name) => {
                let which: Vec<usize> = match name {
                    Some(n) => alloc::vec![self.vm_index(n)?],
                    None => (0..self.vms.len()).collect(),
                };
                for v in which {
                    self.stats(con, v);
                }
                Ok(())
            }
            Command::Console(name) => {
                let v = self.vm_index(name)?;
                if self.vms[v].life.lock().stop.is_some() {
                    return Err(format!("VM {name} is stopped (start it first)"));
                }
                con.focus = Some(v);
                con.to_guest.clear();
                con.input.close();
                con.gate.end_session();
                println!("hv: console: the keyboard is {name}'s (Ctrl-] for the prompt)");
                Ok(())
            }
            Command::Exit => {
                con.input.close();
                con.gate.end_session();
                self.back_to_guest(con, first);
                Ok(())
            }
            Command::Logout => {
                con.gate.end_session();
                println!("hv: administrator session ended");
                Ok(())
            }
            Command::Log(level) => {
                log::set_max_level(match level {
                    ::operator::Level::Off => log::LevelFilter::Off,
                    ::operator::Level::Error => log::LevelFilter::Error,
                    ::operator::Level::Warn => log::LevelFilter::Warn,
                    ::operator::Level::Info => log::LevelFilter::Info,
                    ::operator::Level::Debug => log::LevelFilter::Debug,
                    ::operator::Level::Trace => log::LevelFilter::Trace,
                });
                println!("hv: log level {}", level.name());
                Ok(())
            }
            Command::Pause(name) => self.pause(self.vm_index(name)?),
            Command::Resume(name) => self.resume(self.vm_index(name)?),
            Command::Stop(name) => {
                let v = self.vm_index(name)?;
                if self.vms[v].life.lock().stop.is_some() {
                    return Err(format!("VM {name} is stopped already"));
                }
                self.stop(v, String::from("stopped by the operator"));
                Ok(())
            }
            Command::Start(name) => self.start_again(self.vm_index(name)?),
            Command::Snapshot(name, tag) => {
                println!("hv: {}", self.take_snapshot(self.vm_index(name)?, tag)?);
                Ok(())
            }
            Command::Restore(name, tag) => {
                println!("hv: {}", self.restore_snapshot(self.vm_index(name)?, tag)?);
                Ok(())
            }
            Command::Snapshots(name) => {
                if let Some(n) = name {
                    self.vm_index(n)?;
                }
                for l in self.list_snapshots(name) {
                    println!("{l}");
                }
                Ok(())
            }
            Command::DeleteSnapshot(name, tag) => {
                println!("hv: {}", self.delete_snapshot(name, tag)?);
                Ok(())
            }
            Command::Restart(name) => self.operator_restart(self.vm_index(name)?),
            Command::Clone(name, new, tag) => {
                let v = self.vm_index(name)?;
                println!("hv: {}", self.clone_vm(v, new, tag)?);
                Ok(())
            }
            Command::Balloon(name, keep) => {
                let v = self.vm_index(name)?;
                println!("hv: vm {name}: {}", self.balloon(v, keep)?);
                Ok(())
            }
        }
    }

    /// `balloon NAME SIZE`: sets the target; the guest's driver follows it (its
    /// vCPU 0 is kicked so a halted guest sees the interrupt at once).
    fn balloon(&self, v: usize, keep: u64) -> Result<String, String> {
        let vm = &self.vms[v];
        let ram_size = {
            let life = vm.life.lock();
            if life.stop.is_some() {
                return Err(format!("VM {} is stopped", vm.name));
            }
            life.ram_size
        };
        let said = super::super::balloon::set_memory(&mut vm.shared.lock(), ram_size, keep)?;
        self.kick_vcpus(v, 1);
        Ok(said)
    }

    fn list(&self) {
        let tsc_per_ms = (time::tsc_hz() / 1000).max(1);
        let now = time::rdtsc();
        let lives: Vec<(VmState, u64, usize, u64)> = (0..self.vms.len())
            .map(|v| {
                let state = self.vm_state(v);
                let life = self.vms[v].life.lock();
                (
                    state,
                    life.ram_size / 1024,
                    self.vms[v].slots.len(),
                    now.saturating_sub(life.started_tsc) / tsc_per_ms,
                )
            })
            .collect();
        let rows: Vec<ListRow> = self
            .vms
            .iter()
            .zip(&lives)
            .map(|(vm, &(state, memory_kib, vcpus, up))| ListRow {
                name: &vm.name,
                state,
                vcpus,
                memory_kib,
                uptime_ms: (state != VmState::Stopped).then_some(up),
            })
            .collect();
        for l in report::list(&rows) {
            println!("{l}");
        }
    }

    fn stats(&self, con: &mut Console, v: usize) {
        let vm = &self.vms[v];
        let tsc_per_ms = (time::tsc_hz() / 1000).max(1);
        let now = time::rdtsc();
        let state = self.vm_state(v);
        let mut exits = ExitStats::default();
        for e in &vm.exits {
            exits.add(&e.lock());
        }
        let balloon = super::super::balloon::status(&mut vm.shared.lock());
        let (memory_kib, started, nics, disk, run_tsc, ram) = {
            let life = vm.life.lock();
            // Since it (re)started.
            let run_tsc = vm
                .run_tsc
                .load(Ordering::Relaxed)
                .saturating_sub(life.run_tsc_at_start);
            let nics: Vec<NicCounters> = life
                .machine
                .nics
                .iter()
                .filter_map(|n| {
                    let s = n.hub.lock().port_stats(n.port)?;
                    Some(NicCounters {
                        network: n.network.clone(),
                        tx_frames: s.input.frames,
                        tx_bytes: s.input.bytes,
                        rx_frames: s.output.frames,
                        rx_bytes: s.output.bytes,
                        dropped: s.dropped_total().frames,
                    })
                })
                .collect();
            let disk = life.machine.disk.as_ref().map(|_| {
                let d = &life.machine.disk_stats;
                let get = |c: &core::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
                DiskCounters {
                    reads: get(&d.reads),
                    writes: get(&d.writes),
                    flushes: get(&d.flushes),
                    read_bytes: get(&d.read_bytes),
                    written_bytes: get(&d.written_bytes),
                    errors: get(&d.errors),
                }
            });
            (
                life.ram_size / 1024,
                life.started_tsc,
                nics,
                disk,
                run_tsc,
                life.machine.ram.usage(),
            )
        };
        // Rates since the previous look, or since the VM (re)started.
        let mut base = con.samples[v].clone();
        if base.tsc < started {
            base = Sample {
                tsc: started,
                ..Sample::default()
            };
        }
        let counts: Vec<ExitCount> = ExitKind::ALL
            .iter()
            .map(|&k| ExitCount {
                reason: k.name(),
                total: exits.count(k),
                recent: exits.count(k).saturating_sub(base.exits.count(k)),
            })
            .collect();
        let s = VmStats {
            name: &vm.name,
            state,
            vcpus: vm.slots.len(),
            cpu_ms: run_tsc / tsc_per_ms,
            recent_cpu_ms: run_tsc.saturating_sub(base.run_tsc) / tsc_per_ms,
            interval_ms: now.saturating_sub(base.tsc) / tsc_per_ms,
            pcpus: smp::cpu_count(),
            memory_kib,
            // A stopped VM has no RAM at all, which is no balloon.
            ballooned_kib: if state == VmState::Stopped {
                0
            } else {
                ram.ballooned / 1024
            },
            shared_kib: if state == VmState::Stopped {
                0
            } else {
                ram.shared / 1024
            },
            balloon_target_kib: balloon.map(|b| b.target / 1024),
            host_free_kib: memory::free_bytes() / 1024,
            exits: counts,
            disk,
            nics,
        };
        for l in report::stats(&s) {
            println!("{l}");
        }
        con.samples[v] = Sample {
            tsc: now,
            run_tsc,
            exits,
        };
    }

    fn pause(&self, v: usize) -> Result<(), String> {
        let name = &self.vms[v].name;
        {
            let mut life = self.vms[v].life.lock();
            if life.stop.is_some() {
                return Err(format!("VM {name} is stopped"));
            }
            if life.restart.is_some() {
                return Err(format!("VM {name} is restarting; pause it when it runs"));
            }
            if life.paused {
                return Err(format!("VM {name} is paused already"));
            }
            life.paused = true;
        }
        // Its vCPUs leave their processors at once and are not picked again.
        let running = {
            let mut queue = self.queue.lock();
            for i in 0..self.vms[v].slots.len() {
                queue.set_runnable(v, i, false);
            }
            queue.cpus_running(v)
        };
        kick_cpus(running);
        println!("hv: vm {name} paused");
        Ok(())
    }

    fn resume(&self, v: usize) -> Result<(), String> {
        let name = &self.vms[v].name;
        {
            let mut life = self.vms[v].life.lock();
            if !life.paused || life.stop.is_some() {
                return Err(format!("VM {name} is not paused"));
            }
            life.paused = false;
        }
        self.sync_runnable(v);
        kick_cpus(self.idle.load(Ordering::Acquire));
        println!("hv: vm {name} resumed");
        Ok(())
    }

    fn operator_restart(&self, v: usize) -> Result<(), String> {
        let name = &self.vms[v].name;
        {
            let mut life = self.vms[v].life.lock();
            if life.stop.is_some() {
                return Err(format!("VM {name} is stopped (start starts it)"));
            }
            if life.restart.is_some() {
                return Err(format!("VM {name} is restarting already"));
            }
            // An operator's restart does not count towards the restart-loop limit.
            life.restart = Some(String::from("restarted by the operator"));
        }
        self.settle_restart(v);
        Ok(())
    }

    /// Starts a stopped VM again from its image, with fresh RAM, devices and vCPUs.
    pub(super) fn start_again(&self, v: usize) -> Result<(), String> {
        let vm = &self.vms[v];
        let mut life = vm.life.lock();
        if life.stop.is_none() {
            return Err(format!("VM {} is not stopped", vm.name));
        }
        if !life.finished {
            return Err(format!("VM {} is still stopping; try again", vm.name));
        }
        let spec = life.spec.clone();
        let (shared, slots, fresh) = {
            let mut backend = self.backend.lock();
            build(&mut **backend, &spec, self.epoch_unix_ns, &self.hub)?
        };
        vm.install(shared, slots);
        *vm.net_wake.lock() = fresh.machine.net_wake.clone();
        vm.run_tsc.store(0, Ordering::Relaxed);
        *life = fresh;
        drop(life);
        self.queue.lock().revive_vm(v);
        kick_cpus(self.idle.load(Ordering::Acquire));
        Ok(())
    }
}
