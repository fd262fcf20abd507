//! The management console (AMD-V under QEMU, 2 processors), driven from a pipe as
//! an operator would type: two `count64` VMs (`count64`, `other`). One boot checks
//! that keys reach the VM with the keyboard and its prompt shows before its newline;
//! Ctrl-] opens the `hv>` prompt; `list`, `stats` and `console NAME` need no
//! passphrase; `pause` asks for it, a wrong one is refused and logged and the next
//! attempt must wait; with the right one the VM pauses (no CPU time while paused),
//! resumes, restarts, stops and starts again; stopping both VMs ends the run.

use std::time::Duration;
use tests::*;
use xtask::build::CONSOLE_TEST_PASSPHRASE;
use xtask::emulator::{ScriptStep as Step, EXIT_SUCCESS};

const ESC: &[u8] = b"\x1d";

/// The answers to the command lines that start with `command`, in order: the
/// text after each `hv> ` that begins with it, up to the next prompt.
fn answers<'a>(serial: &'a str, command: &str) -> Vec<&'a str> {
    serial
        .split("hv> ")
        .filter(|part| part.starts_with(command))
        .collect()
}

/// After a snapshot `t1` of `count64` (the prompt open): gives `count64` the
/// keyboard, lets it count on for `wait_ms`, has it answer `b`, restores `t1`
/// (the passphrase asked again), and has it answer `c`; ends with Ctrl-] typed
/// (the prompt opening).
fn count_on_and_restore(pass: &str, wait_ms: u64) -> Vec<Step> {
    vec![
        Step::new("hv> ", b"console count64\r"),
        Step::new("the keyboard is count64's", b"b\r").after(Duration::from_millis(wait_ms)),
        Step::new("count64 | count64: got b at ", ESC),
        Step::new("hv> ", b"restore count64 t1\r"),
        Step::new("administrator passphrase: ", pass.as_bytes()),
        Step::new("\"restore count64 t1\": done", b""),
        Step::new("hv> ", b"console count64\r"),
        Step::new("the keyboard is count64's", b"c\r"),
        Step::new("count64 | count64: got c at ", ESC),
    ]
}

#[test]
fn console_drives_vms_under_amd_v() {
    let pass = format!("{CONSOLE_TEST_PASSPHRASE}\r");
    let mut steps = vec![
        // Keys go to the first VM until Ctrl-].
        Step::new("count64 | count64: 3", b"hello\r"),
        Step::new("count64 | count64: got hello", b"quiet\r"),
        // A prompt without a newline is shown at once.
        Step::new("count64 | count64> ", b"loud\r"),
        Step::new("count64 | count64: got loud", ESC),
        Step::new("hv> ", b"list\r"),
        Step::new("UPTIME", b""),
        Step::new("hv> ", b"console other\r"),
        Step::new("the keyboard is other's", b"hi\r"),
        Step::new("other | count64: got hi", ESC),
        Step::new("hv> ", b"stats count64\r"),
        Step::new("exits:", b""),
        Step::new("hv> ", b"pause count64\r"),
        Step::new("administrator passphrase: ", b"not it\r"),
        Step::new("wrong passphrase", b""),
        // Too soon: refused without asking.
        Step::new("hv> ", b"pause count64\r"),
        Step::new("try again in", b""),
        Step::new("hv> ", b"pause count64\r").after(Duration::from_millis(1500)),
        Step::new("administrator passphrase: ", pass.as_bytes()),
        Step::new("\"pause count64\": done", b""),
        Step::new("hv> ", b"stats count64\r").after(Duration::from_millis(300)),
        Step::new("exits:", b""),
        Step::new("hv> ", b"stats count64\r").after(Duration::from_millis(1000)),
        Step::new("exits:", b""),
        Step::new("hv> ", b"resume count64\r"),
        Step::new("\"resume count64\": done", b""),
        Step::new("hv> ", b"restart count64\r"),
        Step::new("\"restart count64\": done", b""),
        Step::new("hv> ", b"stop other\r"),
        Step::new("\"stop other\": done", b""),
        Step::new("hv> ", b"start other\r"),
        Step::new("\"start other\": done", b""),
        // Snapshots of count64: taken, counted on, restored (running, then
        // stopped); each "got X at N" line says where its count was.
        Step::new("hv> ", b"console count64\r"),
        Step::new("the keyboard is count64's", b"a\r"),
        Step::new("count64 | count64: got a at ", ESC),
        Step::new("hv> ", b"snapshot count64 t1\r"),
        Step::new("administrator passphrase: ", pass.as_bytes()),
        Step::new("\"snapshot count64 t1\": done", b""),
        Step::new("hv> ", b"snapshot count64 t1\r"),
        Step::new("has a snapshot \"t1\" already", b""),
        Step::new("hv> ", b"snapshots\r"),
        Step::new("\"snapshots\": done", b""),
    ];
    steps.extend(count_on_and_restore(&pass, 1500));
    steps.extend([
        Step::new("hv> ", b"stop count64\r"),
        Step::new("administrator passphrase: ", pass.as_bytes()),
        Step::new("\"stop count64\": done", b""),
        Step::new("hv> ", b"restore count64 nope\r"),
        Step::new("has no snapshot \"nope\"", b""),
        Step::new("hv> ", b"restore count64 t1\r"),
        Step::new("\"restore count64 t1\": done", b""),
        Step::new("hv> ", b"console count64\r"),
        Step::new("the keyboard is count64's", b"d\r"),
        Step::new("count64 | count64: got d at ", ESC),
        // Two clones of snapshot t1, its RAM shared copy-on-write: each counts on
        // from t1's count, and the pages each writes become its own.
        Step::new("hv> ", b"clone count64 c1 t1\r"),
        Step::new("administrator passphrase: ", pass.as_bytes()),
        Step::new("\"clone count64 c1 t1\": done", b"clone count64 c2 t1\r"),
        Step::new("\"clone count64 c2 t1\": done", b"clone count64 c2 t1\r"),
        Step::new("a VM is named \"c2\" already", b"stats c1\r"),
        Step::new("\"stats c1\": done", b"console c1\r"),
        Step::new("the keyboard is c1's", b"e\r"),
        Step::new("c1 | count64: got e at ", ESC),
        Step::new("hv> ", b"console c2\r"),
        Step::new("the keyboard is c2's", b"f\r"),
        Step::new("c2 | count64: got f at ", ESC),
        Step::new("hv> ", b"stats c2\r"),
        Step::new("\"stats c2\": done", b"list\r"),
        Step::new("\"list\": done", b"delete-snapshot count64 t1\r"),
        Step::new("administrator passphrase: ", pass.as_bytes()),
        Step::new("\"delete-snapshot count64 t1\": done", b"stop c1\r"),
        Step::new("\"stop c1\": done", b"stop c2\r"),
        Step::new("\"stop c2\": done", b""),
        Step::new("hv> ", b"console other\r"),
        Step::new("the keyboard is other's", ESC),
        Step::new("hv> ", b"frobnicate\r"),
        Step::new("unknown command", b""),
        Step::new("hv> ", b"exit\r"),
        // Back at the guests' console (held lines come out), then both stop.
        Step::new("the keyboard is other's again", b""),
        Step::new("other | count64: 2", ESC),
        Step::new("hv> ", b"stop other\r"),
        // `exit` ended the administrator session: the passphrase again.
        Step::new("administrator passphrase: ", pass.as_bytes()),
        Step::new("vm other stopped", b"stop count64\r"),
    ]);
    let opts = QemuOptions {
        memory_mib: 256,
        cpus: 2,
        force_tcg: true,
        // Multi-threaded TCG: `count64` has no x87/SSE code, so it cannot trigger
        // QEMU's IGNNE race (README, Known problems), and pausing and snapshots
        // then meet vCPUs that truly run in parallel.
        ..Default::default()
    };
    let out = scripted_qemu(
        "console_amd_v",
        GuestSet::ConsoleTest,
        &opts,
        &steps,
        QEMU_LIMIT,
    );
    out.expect_line("count64 | count64: got hello")
        .expect_line("other | count64: got hi")
        .expect_line("hv: wrong passphrase: \"pause count64\" refused")
        .expect_line(
            "console: \"pause count64\": refused: wrong administrator passphrase (1 in a row)",
        )
        .expect_line("console: administrator passphrase accepted")
        .expect_line("console: \"pause count64\": done")
        .expect_line("hv: vm count64 restarting: restarted by the operator")
        .expect_line("hv: vm other stopped: stopped by the operator")
        .expect_line("hv: vm count64 stopped: stopped by the operator")
        .expect_line("hv: all VMs stopped; host memory returned: all")
        .expect_no("[script]")
        .expect_no("PANIC")
        .expect_exit(EXIT_SUCCESS);
    let s = &out.serial;
    // The prompt line was shown without its newline, before anything else of it.
    assert!(
        s.contains("count64 | count64> \r\n") || s.contains("count64 | count64> \n"),
        "{s}"
    );
    // list: both VMs, running.
    let list = answers(s, "list")[0];
    assert!(list.contains("NAME"), "{list}");
    assert!(
        list.lines()
            .any(|l| l.starts_with("count64") && l.contains("running")),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with("other") && l.contains("running")),
        "{list}"
    );
    // stats: CPU time and exit rates; while paused, no CPU time at all.
    let stats = answers(s, "stats count64")[0];
    assert!(
        stats.contains("count64: running, 1 vCPU, memory"),
        "{stats}"
    );
    assert!(stats.contains("exits: "), "{stats}");
    let paused: Vec<&str> = answers(s, "stats count64")
        .into_iter()
        .filter(|p| p.contains("count64: paused, 1 vCPU"))
        .collect();
    assert_eq!(paused.len(), 2, "two stats while paused:\n{s}");
    assert!(
        paused[1].contains(" 0 ms in the last") && paused[1].contains("exits: 0/s"),
        "no CPU time and no exits while paused:\n{}",
        paused[1]
    );
    // Restarted and started again: each VM printed "started" twice.
    // (count64 may print it a third time: restored while stopped, it is started
    // again first and may run a moment before the snapshot replaces it.)
    assert!(s.matches("count64 | count64: started").count() >= 2, "{s}");
    assert_eq!(s.matches("other | count64: started").count(), 2, "{s}");
    // The snapshot's restores rolled count64's count back: "got b" came after
    // the snapshot, "got c" (restored while running) and "got d" (restored while
    // stopped) carry counts from just after "got a", below "got b"'s.
    let at = |word: &str| count64_at(s, word);
    let (a, b, c, d) = (at("a"), at("b"), at("c"), at("d"));
    assert!(
        b >= a + 3,
        "counting went on after the snapshot: a {a}, b {b}"
    );
    assert!(
        c >= a && c < b,
        "restored while running: a {a}, b {b}, c {c}"
    );
    assert!(
        d >= a && d < b,
        "restored while stopped: a {a}, b {b}, d {d}"
    );
    // The clones: from t1's count (after "got a"), sharing their RAM with the
    // snapshot until they write; each made a few pages its own.
    let clone_at = |vm: &str, word: &str| {
        let marker = format!("{vm} | count64: got {word} at ");
        let at = s.find(&marker).unwrap_or_else(|| panic!("no {marker:?}"));
        s[at + marker.len()..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap()
    };
    let (e, f) = (clone_at("c1", "e"), clone_at("c2", "f"));
    assert!(
        e >= a && f >= a,
        "clones count from t1: a {a}, e {e}, f {f}"
    );
    let shared_pages = |answer: &str| -> u64 {
        let at = answer.find(" shared (").expect("shared pages") + 9;
        answer[at..]
            .split(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .expect("a page count")
    };
    let c1 = answers(s, "stats c1")[0];
    let c2 = answers(s, "stats c2")[0];
    let (p1, p2) = (shared_pages(c1), shared_pages(c2));
    // count64 has 4 MiB (1024 pages); it writes its stack and a few variables.
    assert!(p1 > 900 && p1 < 1024, "c1 shares most of its pages:\n{c1}");
    assert!(p2 > 900 && p2 < 1024, "c2 shares most of its pages:\n{c2}");
    assert!(
        s.contains("hv: VM c1 cloned from count64's snapshot \"t1\" in "),
        "{s}"
    );
    let list = answers(s, "list").pop().expect("the second list");
    assert!(
        list.lines()
            .any(|l| l.starts_with("c1") && l.contains("running"))
            && list
                .lines()
                .any(|l| l.starts_with("c2") && l.contains("running")),
        "{list}"
    );
    let list = answers(s, "snapshots")[0];
    assert!(
        list.lines()
            .any(|l| l.starts_with("count64") && l.contains("t1")),
        "{list}"
    );
    // Counting went on after the resume.
    let after = &s[s.find("vm count64 resumed").expect("resumed")..];
    assert!(after.contains("count64 | count64: "), "{after}");
}

/// The answers to `stats linux`: the lines after each echo of the command (a log
/// line may stand between the prompt and the echo), up to its outcome.
fn linux_stats(serial: &str) -> Vec<String> {
    let lines: Vec<&str> = serial.lines().collect();
    lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.ends_with("stats linux"))
        .map(|(i, _)| {
            lines[i + 1..]
                .iter()
                .take_while(|l| !l.contains("\"stats linux\": done"))
                .copied()
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect()
}

/// "host free memory N MiB" of the `n`-th `stats linux` answer.
fn host_free_mib(serial: &str, n: usize) -> u64 {
    let stats = linux_stats(serial);
    let answer = stats
        .get(n)
        .unwrap_or_else(|| panic!("no stats linux answer {n}:\n{serial}"));
    let at = answer.find("host free memory ").expect("host free memory") + 17;
    let rest = &answer[at..];
    let number: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let value: u64 = number.parse().expect("a number");
    match &rest[number.len()..] {
        r if r.starts_with(" MiB") => value,
        r if r.starts_with(".") => value * 1024 + 1024, // "N.d GiB": enough here
        r => panic!("unexpected unit in {r:?}"),
    }
}

/// A Linux VM (2 vCPUs, 256 MiB, with a balloon) is snapshotted at its shell,
/// writes a file, is restored, and the file is gone; the shell goes on working.
/// Then memory ballooning: `spare` (a tiny guest too large to start beside it at
/// boot) still does not start; `balloon linux 96M` takes 160 MiB back from the
/// guest, the hypervisor's free memory grows by that much, and `spare` starts;
/// every frame comes back when both stop.
#[test]
fn linux_snapshot_restore_and_balloon_under_amd_v() {
    let pass = format!("{CONSOLE_TEST_PASSPHRASE}\r");
    // Shell commands whose answer differs from their echo ($((...)) expands).
    let steps = [
        Step::new(" # ", b"echo ready-$((40+2))\r"),
        Step::new("ready-42", b""),
        Step::new(" # ", ESC),
        Step::new("hv> ", b"snapshot linux s1\r"),
        Step::new("administrator passphrase: ", pass.as_bytes()),
        Step::new("\"snapshot linux s1\": done", b""),
        Step::new("hv> ", b"console linux\r"),
        Step::new(
            "the keyboard is linux's",
            b"echo written-$((40+2)) > /tmp/f1; cat /tmp/f1\r",
        ),
        Step::new("written-42", ESC),
        Step::new("hv> ", b"restore linux s1\r"),
        Step::new("administrator passphrase: ", pass.as_bytes()),
        Step::new("\"restore linux s1\": done", b""),
        Step::new("hv> ", b"console linux\r"),
        Step::new(
            "the keyboard is linux's",
            b"cat /tmp/f1 || echo gone-$((40+2))\r",
        ),
        Step::new("gone-42", b"echo alive-$((40+2)) on $(nproc) cpus\r"),
        Step::new("alive-42 on 2 cpus", ESC),
        // A clone of s1 (2 vCPUs, its RAM shared copy-on-write): a shell of its
        // own, without the file written after the snapshot.
        Step::new("hv> ", b"clone linux l2 s1\r"),
        Step::new("administrator passphrase: ", pass.as_bytes()),
        Step::new("\"clone linux l2 s1\": done", b"console l2\r"),
        Step::new(
            "the keyboard is l2's",
            b"echo clone-$((40+2)) on $(nproc) cpus; cat /tmp/f1 || echo none-$((40+2))\r",
        ),
        Step::new("none-42", ESC),
        Step::new("hv> ", b"stats l2\r"),
        Step::new("\"stats l2\": done", b"stop l2\r"),
        Step::new("administrator passphrase: ", pass.as_bytes()),
        // Ballooning: the snapshot's copy goes first, `spare` still does not fit.
        Step::new("\"stop l2\": done", b"delete-snapshot linux s1\r"),
        Step::new("\"delete-snapshot linux s1\": done", b"start spare\r"),
        Step::new("\"start spare\": failed", b"stats linux\r"),
        Step::new("\"stats linux\": done", b"balloon linux 96M\r"),
        Step::new("\"balloon linux 96M\": done", b""),
        Step::new("vm linux balloon at its target", b"stats linux\r"),
        Step::new("\"stats linux\": done", b"start spare\r"),
        // Its lines wait while the prompt is open: give it the keyboard.
        Step::new("\"start spare\": done", b"console spare\r"),
        Step::new("spare | count64: 3", ESC),
        Step::new("hv> ", b"console linux\r"),
        Step::new(
            "the keyboard is linux's",
            b"echo after-$((40+2)) $(free -m | grep Mem:)\r",
        ),
        Step::new("after-42", ESC),
        Step::new("hv> ", b"stop spare\r"),
        Step::new("administrator passphrase: ", pass.as_bytes()),
        Step::new("\"stop spare\": done", b"stop linux\r"),
    ];
    let opts = QemuOptions {
        // The VM's 256 MiB and as much again for its snapshot.
        memory_mib: 640,
        cpus: 2,
        force_tcg: true,
        tcg_thread: Some(xtask::emulator::TcgThread::Single),
        ..Default::default()
    };
    let out = scripted_qemu(
        "console_linux_amd_v",
        GuestSet::ConsoleLinuxTest,
        &opts,
        &steps,
        QEMU_LIMIT * 2,
    );
    out.expect_line("hv: vm spare not started: cannot allocate")
        .expect_line("hv: snapshot \"s1\" of VM linux taken in ")
        .expect_line("hv: VM linux restored to snapshot \"s1\"")
        .expect_line("gone-42")
        .expect_line("alive-42 on 2 cpus")
        .expect_line("hv: VM l2 cloned from linux's snapshot \"s1\" in ")
        .expect_line("clone-42 on 2 cpus")
        .expect_line("none-42")
        .expect_line("hv-linux: memory balloon driver loaded")
        .expect_line("vm linux balloon at its target: 160 MiB taken back, the guest keeps 96 MiB")
        .expect_line("after-42")
        .expect_line("hv: vm linux stopped: stopped by the operator")
        .expect_line("hv: all VMs stopped; host memory returned: all")
        .expect_no("[script]")
        .expect_no("Kernel panic")
        .expect_no("PANIC")
        .expect_exit(EXIT_SUCCESS);
    let s = &out.serial;
    // The clone shared most of its 256 MiB with the snapshot while its shell ran.
    let l2 = answers(s, "stats l2")[0];
    let at = l2.find(" shared (").expect("shared pages") + 9;
    let pages: u64 = l2[at..].split(' ').next().unwrap().parse().unwrap();
    assert!(pages > 50_000 && pages < 65_536, "{l2}");
    let stats = linux_stats(s);
    assert!(
        stats[0].contains("0 KiB ballooned") && stats[1].contains("160 MiB ballooned"),
        "{stats:?}"
    );
    let (before, after) = (host_free_mib(s, 0), host_free_mib(s, 1));
    // The balloon's 160 MiB, less the page tables its holes took (a few hundred
    // KiB) and rounding.
    assert!(
        after >= before + 158 && after <= before + 160,
        "free memory {before} MiB before the balloon, {after} MiB after"
    );
}

/// The console and snapshots on VT-x (Bochs, one processor): keys to a VM, the
/// prompt, `list`, a snapshot of `count64` restored after it counted on, and a
/// `pause`; stopping both VMs ends the run.
#[test]
fn console_snapshots_under_vt_x() {
    let pass = format!("{CONSOLE_TEST_PASSPHRASE}\r");
    let mut steps = vec![
        Step::new("count64 | count64: 2", b"a\r"),
        Step::new("count64 | count64: got a at ", ESC),
        Step::new("hv> ", b"list\r"),
        Step::new("\"list\": done", b""),
        Step::new("hv> ", b"snapshot count64 t1\r"),
        Step::new("administrator passphrase: ", pass.as_bytes()),
        Step::new("\"snapshot count64 t1\": done", b""),
    ];
    steps.extend(count_on_and_restore(&pass, 2500));
    steps.extend([
        Step::new("hv> ", b"pause other\r"),
        Step::new("administrator passphrase: ", pass.as_bytes()),
        Step::new("\"pause other\": done", b"stop other\r"),
        Step::new("\"stop other\": done", b"stop count64\r"),
    ]);
    let out = scripted_bochs(
        "console_vt_x",
        GuestSet::ConsoleTest,
        &BochsOptions::default(),
        &steps,
        QEMU_LIMIT * 2,
    );
    out.expect_line("hv: using VT-x")
        .expect_line("hv: snapshot \"t1\" of VM count64 taken in ")
        .expect_line("hv: VM count64 restored to snapshot \"t1\"")
        .expect_line("hv: vm other paused")
        .expect_line("hv: all VMs stopped; host memory returned: all")
        .expect_no("[script]")
        .expect_no("PANIC");
    let s = &out.serial;
    let at = |word: &str| count64_at(s, word);
    let (a, b, c) = (at("a"), at("b"), at("c"));
    assert!(b > a && c >= a && c < b, "a {a}, b {b}, c {c}:\n{s}");
}
