//! The terminal side of an interactive emulator run whose serial port xtask relays
//! itself (Bochs): the terminal in raw mode while the run lasts, and QEMU's escape
//! keys (`Ctrl-A X` quits, `Ctrl-A Ctrl-A` sends one Ctrl-A), so both emulators are
//! driven the same way.

use std::io::IsTerminal;
use std::process::{Command, Stdio};

/// The escape key, as QEMU's `mon:stdio` has it.
pub const CTRL_A: u8 = 0x01;

/// What one typed byte means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    /// Bytes for the guest (none while an escape is pending).
    Send(Vec<u8>),
    /// `Ctrl-A X`: end the run.
    Quit,
}

/// Splits typed input into bytes for the guest and the escape sequences.
#[derive(Debug, Default)]
pub struct Escapes {
    after_ctrl_a: bool,
}

impl Escapes {
    pub fn feed(&mut self, byte: u8) -> Key {
        if std::mem::take(&mut self.after_ctrl_a) {
            return match byte {
                b'x' | b'X' => Key::Quit,
                CTRL_A => Key::Send(vec![CTRL_A]),
                // Not an escape we know: the guest gets both keys.
                other => Key::Send(vec![CTRL_A, other]),
            };
        }
        if byte == CTRL_A {
            self.after_ctrl_a = true;
            return Key::Send(Vec::new());
        }
        Key::Send(vec![byte])
    }
}

/// The terminal on stdin in raw mode (keys one at a time, no local echo, Ctrl-C to the
/// guest) with output processing kept (as QEMU does: `\n` still starts a new line),
/// until dropped. Does nothing when stdin is not a terminal.
pub struct RawTerminal {
    saved: Option<String>,
}

fn stty(args: &[&str]) -> Option<String> {
    let out = Command::new("stty")
        .args(args)
        .stdin(Stdio::inherit())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl RawTerminal {
    pub fn enter() -> RawTerminal {
        if !std::io::stdin().is_terminal() {
            return RawTerminal { saved: None };
        }
        let saved = stty(&["-g"]);
        if saved.is_some() && stty(&["raw", "-echo", "opost"]).is_none() {
            eprintln!("xtask: could not put the terminal in raw mode; keys go by line");
        }
        RawTerminal { saved }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = stty(&[saved]);
        }
    }
}

/// Whether `tail` (the end of the output so far, `new` appended) now holds `marker`;
/// keeps `tail` short enough to carry a marker split across reads.
pub fn seen_across_reads(tail: &mut Vec<u8>, new: &[u8], marker: &str) -> bool {
    tail.extend_from_slice(new);
    let found = tail.windows(marker.len()).any(|w| w == marker.as_bytes());
    let keep = marker.len().saturating_sub(1);
    if tail.len() > keep {
        tail.drain(..tail.len() - keep);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(bytes: &[u8]) -> (Vec<u8>, bool) {
        let mut e = Escapes::default();
        let mut sent = Vec::new();
        for &b in bytes {
            match e.feed(b) {
                Key::Send(v) => sent.extend(v),
                Key::Quit => return (sent, true),
            }
        }
        (sent, false)
    }

    #[test]
    fn ctrl_a_x_quits_and_other_keys_pass() {
        assert_eq!(typed(b"ls\r"), (b"ls\r".to_vec(), false));
        assert_eq!(typed(b"ab\x01xcd"), (b"ab".to_vec(), true));
        assert_eq!(typed(b"\x01X"), (Vec::new(), true));
        // Ctrl-A Ctrl-A sends one; Ctrl-A then another key sends both.
        assert_eq!(typed(b"\x01\x01x"), (b"\x01x".to_vec(), false));
        assert_eq!(typed(b"\x01c"), (b"\x01c".to_vec(), false));
        // Ctrl-C is the guest's.
        assert_eq!(typed(b"\x03"), (b"\x03".to_vec(), false));
    }

    #[test]
    fn marker_split_across_reads_is_found() {
        let marker = "hv: stopping with status";
        let mut tail = Vec::new();
        assert!(!seen_across_reads(&mut tail, b"hello\nhv: stop", marker));
        assert!(tail.len() < marker.len());
        assert!(seen_across_reads(&mut tail, b"ping with status 16", marker));
        let mut tail = Vec::new();
        assert!(seen_across_reads(&mut tail, marker.as_bytes(), marker));
        assert!(!seen_across_reads(&mut Vec::new(), b"hv: stopping", marker));
    }
}
