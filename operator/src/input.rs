//! What a byte typed on the hypervisor's serial console means.
//!
//! The console has two modes. In *guest* mode every byte goes to the VM that has the
//! keyboard, except the escape key, Ctrl-] (0x1D, what telnet and `virsh console`
//! use, because no shell or editor binds it), which opens the `hv>` prompt. At the
//! prompt a small line editor collects a command: printable ASCII is echoed,
//! Backspace/DEL erases, Ctrl-U erases the line, Ctrl-C abandons it, Enter (CR, LF or
//! CR LF, so both terminals and pipes work) hands it over, and Ctrl-] goes back to the
//! guest. A *secret* line (the administrator passphrase) is edited the same way but
//! never echoed.
//!
//! The terminal is in raw mode (QEMU's stdio, a USB-serial adapter), so the echo is
//! ours to write; it is appended to the caller's buffer rather than written here, so
//! that this stays pure logic.

use alloc::string::String;
use alloc::vec::Vec;
use zeroize::Zeroize;

/// Ctrl-]: switches between the guest's console and the prompt.
pub const ESCAPE: u8 = 0x1D;
/// The longest command line; more is not taken (and not echoed).
pub const LINE_MAX: usize = 200;
/// The longest passphrase accepted (the bundle's passphrase limit as well).
pub const SECRET_MAX: usize = 1024;

const CTRL_C: u8 = 0x03;
const CTRL_U: u8 = 0x15;
const BACKSPACE: u8 = 0x08;
const DEL: u8 = 0x7F;
const ERASE: &[u8] = b"\x08 \x08";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Guest,
    Prompt,
    Secret,
}

/// What the caller does with one byte (echo aside).
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing more (an edit, an ignored byte).
    None,
    /// Give the byte to the VM that has the keyboard.
    Guest(u8),
    /// The escape key was typed in guest mode: the prompt is open (the caller
    /// prints its banner and `hv> `).
    Opened,
    /// The escape key was typed at the prompt (or a secret was being typed): back to
    /// the guest's console.
    Closed,
    /// A command line was entered (possibly empty).
    Line(String),
    /// The line being typed was abandoned with Ctrl-C (the caller prints the prompt
    /// again; a secret being asked for is not given).
    Cancelled,
    /// A secret line was entered. The caller wipes it when done.
    Secret(Vec<u8>),
}

/// The console's input state; see the module documentation.
pub struct Input {
    mode: Mode,
    line: Vec<u8>,
    /// The last byte ended a line with CR: an LF right after it is the same Enter.
    after_cr: bool,
}

impl Default for Input {
    fn default() -> Self {
        Self::new()
    }
}

impl Input {
    pub const fn new() -> Self {
        Self {
            mode: Mode::Guest,
            line: Vec::new(),
            after_cr: false,
        }
    }

    /// The prompt is open (a command or a secret is being typed).
    pub fn at_prompt(&self) -> bool {
        self.mode != Mode::Guest
    }

    /// A secret is being typed.
    pub fn reading_secret(&self) -> bool {
        self.mode == Mode::Secret
    }

    /// The next line is a secret (not echoed); the prompt must be open.
    pub fn ask_secret(&mut self) {
        if self.mode != Mode::Guest {
            self.clear_line();
            self.mode = Mode::Secret;
        }
    }

    /// Opens the prompt as if the escape key had been typed (for a command that must
    /// not go to a guest, or when no VM is left to have the keyboard).
    pub fn open(&mut self) {
        if self.mode == Mode::Guest {
            self.clear_line();
            self.mode = Mode::Prompt;
        }
    }

    /// Back to the guest's console (`exit`, `console NAME`).
    pub fn close(&mut self) {
        self.clear_line();
        self.mode = Mode::Guest;
    }

    fn clear_line(&mut self) {
        self.line.zeroize();
        self.line.clear();
    }

    /// Takes one byte; the echo, if any, is appended to `echo`.
    pub fn feed(&mut self, byte: u8, echo: &mut Vec<u8>) -> Step {
        let after_cr = core::mem::replace(&mut self.after_cr, false);
        if self.mode == Mode::Guest {
            return if byte == ESCAPE {
                self.mode = Mode::Prompt;
                self.clear_line();
                Step::Opened
            } else {
                Step::Guest(byte)
            };
        }
        let secret = self.mode == Mode::Secret;
        match byte {
            ESCAPE => {
                self.close();
                echo.extend_from_slice(b"\r\n");
                Step::Closed
            }
            b'\n' if after_cr => Step::None,
            b'\r' | b'\n' => {
                self.after_cr = byte == b'\r';
                echo.extend_from_slice(b"\r\n");
                let line = core::mem::take(&mut self.line);
                if secret {
                    self.mode = Mode::Prompt;
                    Step::Secret(line)
                } else {
                    // Only printable ASCII was taken, so this cannot fail.
                    Step::Line(String::from_utf8(line).unwrap_or_default())
                }
            }
            CTRL_C => {
                self.clear_line();
                echo.extend_from_slice(b"^C\r\n");
                if secret {
                    self.mode = Mode::Prompt;
                }
                Step::Cancelled
            }
            CTRL_U => {
                if !secret {
                    for _ in 0..self.line.len() {
                        echo.extend_from_slice(ERASE);
                    }
                }
                self.clear_line();
                Step::None
            }
            BACKSPACE | DEL => {
                if let Some(b) = self.line.pop() {
                    if !secret {
                        echo.extend_from_slice(ERASE);
                    }
                    let mut b = b;
                    b.zeroize();
                }
                Step::None
            }
            // A passphrase may hold any byte but the editing keys (UTF-8 included).
            _ if secret && byte >= 0x20 => {
                if self.line.len() < SECRET_MAX {
                    self.line.push(byte);
                }
                Step::None
            }
            0x20..=0x7E if self.line.len() < LINE_MAX => {
                self.line.push(byte);
                echo.push(byte);
                Step::None
            }
            // Other control bytes, escape sequences' bytes, a full line: ignored.
            _ => Step::None,
        }
    }
}

impl Drop for Input {
    fn drop(&mut self) {
        self.clear_line();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn feed_all(input: &mut Input, bytes: &[u8]) -> (Vec<Step>, Vec<u8>) {
        let mut echo = Vec::new();
        let steps = bytes
            .iter()
            .map(|&b| input.feed(b, &mut echo))
            .filter(|s| *s != Step::None)
            .collect();
        (steps, echo)
    }

    #[test]
    fn guest_mode_passes_everything_but_the_escape() {
        let mut i = Input::new();
        let (steps, echo) = feed_all(&mut i, b"ls\r\x03\x1b[A");
        assert_eq!(
            steps,
            vec![
                Step::Guest(b'l'),
                Step::Guest(b's'),
                Step::Guest(b'\r'),
                Step::Guest(0x03),
                Step::Guest(0x1b),
                Step::Guest(b'['),
                Step::Guest(b'A'),
            ]
        );
        assert!(echo.is_empty(), "the guest echoes its own input");
        assert!(!i.at_prompt());
    }

    #[test]
    fn escape_opens_and_closes_the_prompt() {
        let mut i = Input::new();
        let (steps, _) = feed_all(&mut i, &[ESCAPE]);
        assert_eq!(steps, vec![Step::Opened]);
        assert!(i.at_prompt());
        let (steps, echo) = feed_all(&mut i, b"li\x1d");
        assert_eq!(steps, vec![Step::Closed]);
        assert_eq!(echo, b"li\r\n");
        assert!(!i.at_prompt());
        // The abandoned line does not come back.
        let (steps, _) = feed_all(&mut i, b"\x1d\r");
        assert_eq!(steps, vec![Step::Opened, Step::Line(String::new())]);
    }

    #[test]
    fn lines_end_at_cr_lf_or_crlf() {
        let mut i = Input::new();
        i.open();
        let (steps, echo) = feed_all(&mut i, b"list\r\nstats a\nhelp\r");
        assert_eq!(
            steps,
            vec![
                Step::Line("list".into()),
                Step::Line("stats a".into()),
                Step::Line("help".into()),
            ]
        );
        assert_eq!(echo, b"list\r\nstats a\r\nhelp\r\n");
        // CR CR is two (empty) lines.
        let (steps, _) = feed_all(&mut i, b"\r\r");
        assert_eq!(steps.len(), 2);
    }

    #[test]
    fn editing_keys() {
        let mut i = Input::new();
        i.open();
        let (steps, echo) = feed_all(&mut i, b"lisx\x08t\r");
        assert_eq!(steps, vec![Step::Line("list".into())]);
        assert_eq!(echo, b"lisx\x08 \x08t\r\n");
        let (steps, echo) = feed_all(&mut i, b"stop a\x15list\x7f\x7f\x7f\x7f\x7fhelp\n");
        assert_eq!(steps, vec![Step::Line("help".into())]);
        assert_eq!(
            echo.iter().filter(|&&b| b == 0x08).count(),
            2 * (6 + 4),
            "Ctrl-U erased 6, DEL 4 (the fifth had nothing to erase)"
        );
        let (steps, echo) = feed_all(&mut i, b"stop\x03");
        assert_eq!(steps, vec![Step::Cancelled]);
        assert!(echo.ends_with(b"^C\r\n"));
        assert!(i.at_prompt(), "Ctrl-C abandons the line, not the prompt");
    }

    #[test]
    fn control_bytes_and_escape_sequences_are_not_taken() {
        let mut i = Input::new();
        i.open();
        let (steps, echo) = feed_all(&mut i, b"a\x1b[Ab\x01\xc3\xa9\r");
        assert_eq!(steps, vec![Step::Line("a[Ab".into())]);
        assert_eq!(echo, b"a[Ab\r\n");
    }

    #[test]
    fn a_long_line_is_cut() {
        let mut i = Input::new();
        i.open();
        let mut bytes = vec![b'x'; LINE_MAX + 50];
        bytes.push(b'\r');
        let (steps, _) = feed_all(&mut i, &bytes);
        assert_eq!(steps, vec![Step::Line("x".repeat(LINE_MAX))]);
    }

    #[test]
    fn secrets_are_not_echoed() {
        let mut i = Input::new();
        i.open();
        i.ask_secret();
        assert!(i.reading_secret());
        let (steps, echo) = feed_all(&mut i, "pa\u{e9}ss x\x08\r\n".as_bytes());
        assert_eq!(steps, vec![Step::Secret("pa\u{e9}ss ".as_bytes().to_vec())]);
        assert_eq!(echo, b"\r\n", "only the Enter");
        assert!(i.at_prompt() && !i.reading_secret());
        // Ctrl-C cancels the secret, Ctrl-] leaves the prompt.
        i.ask_secret();
        let (steps, echo) = feed_all(&mut i, b"abc\x03");
        assert_eq!(steps, vec![Step::Cancelled]);
        assert_eq!(echo, b"^C\r\n");
        assert!(!i.reading_secret());
        i.ask_secret();
        let (steps, _) = feed_all(&mut i, b"abc\x1d");
        assert_eq!(steps, vec![Step::Closed]);
        assert!(!i.at_prompt());
    }

    #[test]
    fn a_secret_is_bounded() {
        let mut i = Input::new();
        i.open();
        i.ask_secret();
        let mut bytes = vec![b'k'; SECRET_MAX + 10];
        bytes.push(b'\n');
        let (steps, _) = feed_all(&mut i, &bytes);
        assert_eq!(steps, vec![Step::Secret(vec![b'k'; SECRET_MAX])]);
    }

    #[test]
    fn ask_secret_needs_the_prompt() {
        let mut i = Input::new();
        i.ask_secret();
        assert!(!i.reading_secret());
        assert_eq!(i.feed(b'a', &mut Vec::new()), Step::Guest(b'a'));
    }
}
