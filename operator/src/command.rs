//! The console's commands: what they are called, what they take, whether they need
//! the administrator passphrase, their help, and the parser.
//!
//! Least privilege: looking (`list`, `stats`, `help`) and moving the keyboard
//! (`console`, `exit`) are open to whoever has the serial line; everything that
//! changes a VM or the hypervisor needs the administrator passphrase.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// A log level for `log` (the `log` crate's filter, spelt as `--log` takes it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl Level {
    pub const ALL: [Level; 6] = [
        Level::Off,
        Level::Error,
        Level::Warn,
        Level::Info,
        Level::Debug,
        Level::Trace,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Level::Off => "off",
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        }
    }

    pub fn from_name(name: &str) -> Option<Level> {
        Level::ALL
            .into_iter()
            .find(|l| l.name().eq_ignore_ascii_case(name))
    }
}

/// One parsed command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command<'a> {
    Help(Option<&'a str>),
    List,
    Stats(Option<&'a str>),
    Pause(&'a str),
    Resume(&'a str),
    Stop(&'a str),
    Start(&'a str),
    Restart(&'a str),
    Console(&'a str),
    Log(Level),
    Logout,
    Exit,
    /// `snapshot NAME TAG`
    Snapshot(&'a str, &'a str),
    /// `restore NAME TAG`
    Restore(&'a str, &'a str),
    /// `snapshots [NAME]`
    Snapshots(Option<&'a str>),
    /// `delete-snapshot NAME TAG`
    DeleteSnapshot(&'a str, &'a str),
    /// `balloon NAME SIZE`: the bytes the VM should keep.
    Balloon(&'a str, u64),
    /// `clone NAME NEW [TAG]`
    Clone(&'a str, &'a str, Option<&'a str>),
}

/// The longest VM name (the bundle's name field).
pub const VM_NAME_MAX: usize = 24;

/// Whether `name` can name a new VM: 1 to [`VM_NAME_MAX`] of `A-Z a-z 0-9 . _ -`.
pub fn vm_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= VM_NAME_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// A memory size as typed: a number with an optional unit, `K`, `M` (the
/// default, as QEMU's `balloon` takes it) or `G` (also `KiB`, `MiB`, `GiB`, any
/// case); whole 4 KiB pages, below 1 TiB.
pub fn parse_size(text: &str) -> Option<u64> {
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let n: u64 = number.parse().ok()?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "k" | "kib" | "kb" => 10,
        "" | "m" | "mib" | "mb" => 20,
        "g" | "gib" | "gb" => 30,
        _ => return None,
    };
    let bytes = n.checked_mul(1 << shift)?;
    (bytes < 1 << 40 && bytes.is_multiple_of(4096)).then_some(bytes)
}

/// Whether `tag` can name a snapshot: 1 to [`TAG_MAX`] of `A-Z a-z 0-9 . _ -`.
pub fn tag_ok(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= TAG_MAX
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The longest snapshot tag.
pub const TAG_MAX: usize = 32;

/// What the help says about a command.
pub struct Info {
    pub name: &'static str,
    pub args: &'static str,
    pub summary: &'static str,
    pub privileged: bool,
}

/// Every command, in the order `help` lists them.
pub const COMMANDS: &[Info] = &[
    Info {
        name: "help",
        args: "[COMMAND]",
        summary: "list the commands, or explain one",
        privileged: false,
    },
    Info {
        name: "list",
        args: "",
        summary: "every VM: name, state, vCPUs, memory, uptime",
        privileged: false,
    },
    Info {
        name: "stats",
        args: "[NAME]",
        summary: "CPU time and share, exits per second by reason, memory, disk and network counters",
        privileged: false,
    },
    Info {
        name: "console",
        args: "NAME",
        summary: "give VM NAME the keyboard and leave the prompt",
        privileged: false,
    },
    Info {
        name: "exit",
        args: "",
        summary: "leave the prompt (as Ctrl-] does); ends the administrator session",
        privileged: false,
    },
    Info {
        name: "logout",
        args: "",
        summary: "end the administrator session and stay at the prompt",
        privileged: false,
    },
    Info {
        name: "pause",
        args: "NAME",
        summary: "stop running VM NAME's vCPUs, keeping all its state",
        privileged: true,
    },
    Info {
        name: "resume",
        args: "NAME",
        summary: "let a paused VM run again",
        privileged: true,
    },
    Info {
        name: "stop",
        args: "NAME",
        summary: "stop VM NAME and return its memory and devices (the last VM's stop ends the hypervisor)",
        privileged: true,
    },
    Info {
        name: "start",
        args: "NAME",
        summary: "start a stopped VM again from its image",
        privileged: true,
    },
    Info {
        name: "restart",
        args: "NAME",
        summary: "restart VM NAME from its image, as a machine reset does",
        privileged: true,
    },
    Info {
        name: "snapshots",
        args: "[NAME]",
        summary: "the snapshots held (of VM NAME): VM, tag, size, age",
        privileged: false,
    },
    Info {
        name: "snapshot",
        args: "NAME TAG",
        summary: "capture VM NAME (vCPUs, devices, memory) as snapshot TAG; it runs on",
        privileged: true,
    },
    Info {
        name: "restore",
        args: "NAME TAG",
        summary: "roll VM NAME (running, paused or stopped) back to its snapshot TAG",
        privileged: true,
    },
    Info {
        name: "delete-snapshot",
        args: "NAME TAG",
        summary: "forget VM NAME's snapshot TAG and free its memory",
        privileged: true,
    },
    Info {
        name: "clone",
        args: "NAME NEW [TAG]",
        summary: "start VM NEW from VM NAME's snapshot TAG (or one taken now), its memory shared copy-on-write with the snapshot's other clones, its own MACs",
        privileged: true,
    },
    Info {
        name: "balloon",
        args: "NAME SIZE",
        summary: "let VM NAME keep SIZE of its RAM (e.g. 128M, 1G): its balloon takes the rest back for other VMs, or gives it back",
        privileged: true,
    },
    Info {
        name: "log",
        args: "LEVEL",
        summary: "set the hypervisor's log level: off, error, warn, info, debug or trace",
        privileged: true,
    },
];

impl Command<'_> {
    pub fn name(&self) -> &'static str {
        match self {
            Command::Help(_) => "help",
            Command::List => "list",
            Command::Stats(_) => "stats",
            Command::Pause(_) => "pause",
            Command::Resume(_) => "resume",
            Command::Stop(_) => "stop",
            Command::Start(_) => "start",
            Command::Restart(_) => "restart",
            Command::Console(_) => "console",
            Command::Log(_) => "log",
            Command::Logout => "logout",
            Command::Exit => "exit",
            Command::Snapshot(..) => "snapshot",
            Command::Restore(..) => "restore",
            Command::Snapshots(_) => "snapshots",
            Command::DeleteSnapshot(..) => "delete-snapshot",
            Command::Balloon(..) => "balloon",
            Command::Clone(..) => "clone",
        }
    }

    /// Needs the administrator passphrase.
    pub fn privileged(&self) -> bool {
        info(self.name()).is_some_and(|i| i.privileged)
    }

    /// The VM the command names, if it names one.
    pub fn vm(&self) -> Option<&str> {
        match *self {
            Command::Stats(vm) | Command::Snapshots(vm) => vm,
            Command::Snapshot(vm, _) | Command::Restore(vm, _) | Command::DeleteSnapshot(vm, _) => {
                Some(vm)
            }
            Command::Balloon(vm, _) | Command::Clone(vm, ..) => Some(vm),
            Command::Pause(vm)
            | Command::Resume(vm)
            | Command::Stop(vm)
            | Command::Start(vm)
            | Command::Restart(vm)
            | Command::Console(vm) => Some(vm),
            _ => None,
        }
    }
}

/// How a command line is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    Unknown(String),
    Missing {
        command: &'static str,
        args: &'static str,
    },
    TooMany {
        command: &'static str,
        args: &'static str,
    },
    BadLevel(String),
    BadTag(String),
    BadSize(String),
    BadName(String),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            ParseError::Unknown(c) => write!(f, "unknown command {c:?} (help lists them)"),
            ParseError::Missing { command, args } => {
                write!(f, "{command} needs {args} (usage: {command} {args})")
            }
            ParseError::TooMany { command, args: "" } => {
                write!(f, "{command} takes no arguments")
            }
            ParseError::TooMany { command, args } => {
                write!(f, "too many arguments (usage: {command} {args})")
            }
            ParseError::BadTag(t) => write!(
                f,
                "bad snapshot tag {t:?}: 1 to {TAG_MAX} of A-Z a-z 0-9 . _ -"
            ),
            ParseError::BadName(n) => write!(
                f,
                "bad VM name {n:?}: 1 to {VM_NAME_MAX} of A-Z a-z 0-9 . _ -"
            ),
            ParseError::BadSize(t) => write!(
                f,
                "bad size {t:?}: a number of whole 4 KiB pages with K, M (the default) or G"
            ),
            ParseError::BadLevel(l) => write!(
                f,
                "unknown log level {l:?}: off, error, warn, info, debug or trace"
            ),
        }
    }
}

fn info(name: &str) -> Option<&'static Info> {
    COMMANDS.iter().find(|i| i.name == name)
}

/// Parses one command line; `Ok(None)` for a blank one. Words are separated by
/// spaces or tabs; command names are case-insensitive, VM names are not.
pub fn parse(line: &str) -> Result<Option<Command<'_>>, ParseError> {
    let mut words = line.split([' ', '\t']).filter(|w| !w.is_empty());
    let Some(first) = words.next() else {
        return Ok(None);
    };
    let lower = first.to_ascii_lowercase();
    let name = match lower.as_str() {
        "quit" => "exit",
        "?" => "help",
        other => other,
    };
    let info = info(name).ok_or_else(|| ParseError::Unknown(first.into()))?;
    let args: Vec<&str> = words.collect();
    let max = info.args.split(' ').filter(|a| !a.is_empty()).count();
    let needed = info
        .args
        .split(' ')
        .filter(|a| !a.is_empty() && !a.starts_with('['))
        .count();
    if args.len() > max {
        return Err(ParseError::TooMany {
            command: info.name,
            args: info.args,
        });
    }
    if args.len() < needed {
        return Err(ParseError::Missing {
            command: info.name,
            args: info.args,
        });
    }
    let arg = args.first().copied();
    let required = arg.unwrap_or("");
    let second = args.get(1).copied().unwrap_or("");
    let tag = || {
        if tag_ok(second) {
            Ok(second)
        } else {
            Err(ParseError::BadTag(second.into()))
        }
    };
    Ok(Some(match info.name {
        "help" => Command::Help(arg),
        "list" => Command::List,
        "stats" => Command::Stats(arg),
        "console" => Command::Console(required),
        "exit" => Command::Exit,
        "logout" => Command::Logout,
        "pause" => Command::Pause(required),
        "resume" => Command::Resume(required),
        "stop" => Command::Stop(required),
        "start" => Command::Start(required),
        "restart" => Command::Restart(required),
        "snapshot" => Command::Snapshot(required, tag()?),
        "restore" => Command::Restore(required, tag()?),
        "snapshots" => Command::Snapshots(arg),
        "delete-snapshot" => Command::DeleteSnapshot(required, tag()?),
        "clone" if !vm_name_ok(second) => return Err(ParseError::BadName(second.into())),
        "clone" => Command::Clone(
            required,
            second,
            match args.get(2).copied() {
                Some(t) if !tag_ok(t) => return Err(ParseError::BadTag(t.into())),
                t => t,
            },
        ),
        "balloon" => Command::Balloon(
            required,
            parse_size(second).ok_or_else(|| ParseError::BadSize(second.into()))?,
        ),
        "log" => Command::Log(
            Level::from_name(required).ok_or_else(|| ParseError::BadLevel(required.into()))?,
        ),
        _ => return Err(ParseError::Unknown(first.into())),
    }))
}

/// The help: every command on one line each, or one command in full.
pub fn help(topic: Option<&str>) -> Result<Vec<String>, ParseError> {
    let line = |i: &Info| {
        let usage = if i.args.is_empty() {
            String::from(i.name)
        } else {
            format!("{} {}", i.name, i.args)
        };
        format!(
            "  {usage:<16} {}{}",
            i.summary,
            if i.privileged { " [admin]" } else { "" }
        )
    };
    match topic {
        None => {
            let mut out = Vec::new();
            out.push(String::from(
                "commands ([admin]: asks for the administrator passphrase once per prompt session):",
            ));
            out.extend(COMMANDS.iter().map(line));
            out.push(String::from(
                "keys: Ctrl-] switches between the prompt and the guest console; Ctrl-C abandons a line",
            ));
            Ok(out)
        }
        Some(t) => {
            let lower = t.to_ascii_lowercase();
            let i = info(&lower).ok_or_else(|| ParseError::Unknown(t.into()))?;
            Ok(alloc::vec![line(i)])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn clone_takes_a_vm_and_a_new_name() {
        assert_eq!(
            parse("clone web web-2"),
            Ok(Some(Command::Clone("web", "web-2", None)))
        );
        assert_eq!(
            parse("clone web web-3 base"),
            Ok(Some(Command::Clone("web", "web-3", Some("base"))))
        );
        assert_eq!(
            parse("clone web web-3 b@se"),
            Err(ParseError::BadTag("b@se".into()))
        );
        for bad in ["a b c", "x/y", "a-name-longer-than-24-bytes"] {
            let line = format!("clone web {bad}");
            assert!(parse(&line).is_err(), "{line}");
        }
        assert_eq!(
            parse("clone web sp@ce"),
            Err(ParseError::BadName("sp@ce".into()))
        );
        assert!(Command::Clone("a", "b", None).privileged());
    }

    #[test]
    fn balloon_takes_a_vm_and_a_size() {
        assert_eq!(
            parse("balloon a 128M"),
            Ok(Some(Command::Balloon("a", 128 << 20)))
        );
        assert_eq!(
            parse("balloon a 96"),
            Ok(Some(Command::Balloon("a", 96 << 20)))
        );
        assert_eq!(
            parse("balloon a 1g"),
            Ok(Some(Command::Balloon("a", 1 << 30)))
        );
        assert_eq!(
            parse("balloon a 8192KiB"),
            Ok(Some(Command::Balloon("a", 8 << 20)))
        );
        for bad in ["12x", "M", "-1", "6K", "99999999999999999999", "2048G"] {
            assert_eq!(
                parse(&format!("balloon a {bad}")),
                Err(ParseError::BadSize(bad.into())),
                "{bad}"
            );
        }
        assert!(matches!(
            parse("balloon a"),
            Err(ParseError::Missing { .. })
        ));
        assert!(Command::Balloon("a", 0).privileged());
        assert_eq!(Command::Balloon("a", 0).vm(), Some("a"));
    }

    #[test]
    fn parses_every_command() {
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("  \t "), Ok(None));
        assert_eq!(parse("list"), Ok(Some(Command::List)));
        assert_eq!(parse("LIST"), Ok(Some(Command::List)));
        assert_eq!(parse("help"), Ok(Some(Command::Help(None))));
        assert_eq!(parse("? stop"), Ok(Some(Command::Help(Some("stop")))));
        assert_eq!(parse("stats"), Ok(Some(Command::Stats(None))));
        assert_eq!(parse("stats  Web"), Ok(Some(Command::Stats(Some("Web")))));
        assert_eq!(parse("pause a"), Ok(Some(Command::Pause("a"))));
        assert_eq!(parse("resume a"), Ok(Some(Command::Resume("a"))));
        assert_eq!(parse("stop a"), Ok(Some(Command::Stop("a"))));
        assert_eq!(parse("start a"), Ok(Some(Command::Start("a"))));
        assert_eq!(parse("\trestart a "), Ok(Some(Command::Restart("a"))));
        assert_eq!(parse("console linux"), Ok(Some(Command::Console("linux"))));
        assert_eq!(parse("log Debug"), Ok(Some(Command::Log(Level::Debug))));
        assert_eq!(parse("logout"), Ok(Some(Command::Logout)));
        assert_eq!(parse("exit"), Ok(Some(Command::Exit)));
        assert_eq!(parse("quit"), Ok(Some(Command::Exit)));
        assert_eq!(
            parse("snapshot a t1"),
            Ok(Some(Command::Snapshot("a", "t1")))
        );
        assert_eq!(parse("restore a t1"), Ok(Some(Command::Restore("a", "t1"))));
        assert_eq!(parse("snapshots"), Ok(Some(Command::Snapshots(None))));
        assert_eq!(
            parse("snapshots a"),
            Ok(Some(Command::Snapshots(Some("a"))))
        );
        assert_eq!(
            parse("delete-snapshot a before-upgrade_2.1"),
            Ok(Some(Command::DeleteSnapshot("a", "before-upgrade_2.1")))
        );
    }

    #[test]
    fn refuses_bad_lines_with_reasons() {
        assert_eq!(
            parse("frobnicate"),
            Err(ParseError::Unknown("frobnicate".into()))
        );
        let e = parse("stop").unwrap_err();
        assert_eq!(e.to_string(), "stop needs NAME (usage: stop NAME)");
        let e = parse("stop a b").unwrap_err();
        assert_eq!(e.to_string(), "too many arguments (usage: stop NAME)");
        let e = parse("list x").unwrap_err();
        assert_eq!(e.to_string(), "list takes no arguments");
        let e = parse("log loud").unwrap_err();
        assert!(e.to_string().contains("\"loud\""));
        assert!(parse("log").is_err());
        assert_eq!(
            parse("snapshot a").unwrap_err().to_string(),
            "snapshot needs NAME TAG (usage: snapshot NAME TAG)"
        );
        assert!(parse("snapshot a b c").is_err());
        assert_eq!(
            parse("snapshot a b/c"),
            Err(ParseError::BadTag("b/c".into()))
        );
        assert!(parse(&alloc::format!("restore a {}", "t".repeat(TAG_MAX + 1))).is_err());
    }

    #[test]
    fn privilege_follows_the_table() {
        let open = [
            "help",
            "list",
            "stats",
            "console a",
            "exit",
            "logout",
            "snapshots",
        ];
        let admin = [
            "pause a",
            "resume a",
            "stop a",
            "start a",
            "restart a",
            "log info",
            "snapshot a t",
            "restore a t",
            "delete-snapshot a t",
        ];
        for l in open {
            assert!(!parse(l).unwrap().unwrap().privileged(), "{l}");
        }
        for l in admin {
            assert!(parse(l).unwrap().unwrap().privileged(), "{l}");
        }
        assert_eq!(parse("stop web").unwrap().unwrap().vm(), Some("web"));
        assert_eq!(parse("list").unwrap().unwrap().vm(), None);
    }

    #[test]
    fn help_covers_every_command() {
        let all = help(None).unwrap();
        for i in COMMANDS {
            assert!(
                all.iter().any(|l| l.trim_start().starts_with(i.name)),
                "{}",
                i.name
            );
            let one = help(Some(i.name)).unwrap();
            assert_eq!(one.len(), 1);
            assert!(one[0].contains(i.summary));
            assert_eq!(one[0].ends_with("[admin]"), i.privileged);
        }
        assert!(help(Some("nope")).is_err());
        // Every command the table names parses.
        for i in COMMANDS {
            let line = match i.args {
                "" | "[COMMAND]" | "[NAME]" => String::from(i.name),
                "LEVEL" => format!("{} info", i.name),
                "NAME TAG" => format!("{} x t", i.name),
                "NAME SIZE" => format!("{} x 64M", i.name),
                "NAME NEW [TAG]" => format!("{} x y", i.name),
                _ => format!("{} x", i.name),
            };
            assert_eq!(parse(&line).unwrap().unwrap().name(), i.name);
        }
    }
}
