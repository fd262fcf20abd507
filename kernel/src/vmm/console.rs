//! A VM's console: the guest's COM1 output assembled into lines and relayed to the
//! host console as `name | text`.
//!
//! A line is normally relayed when it ends. The VM that has the keyboard may also
//! have the line in progress shown before its newline (a shell's prompt must be
//! visible while the user types): [`Relay::show_partial`] relays what is new of it,
//! and when the line ends only the rest follows, marked so the writer continues the
//! line on the terminal instead of starting another.

use alloc::string::String;
use devices::{LineBuffer, SerialSink};

/// One piece of a VM's console output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// A whole line.
    Line(&'a str),
    /// The beginning (or a further part) of a line that has not ended yet.
    Partial(&'a str),
    /// A line whose beginning, `line[..shown]`, went out as [`Piece::Partial`]: the
    /// writer continues it with the rest, or writes it whole if other output came
    /// in between.
    Rest { line: &'a str, shown: usize },
}

/// How long the line in progress must stay unchanged before it is shown: a prompt
/// waits for input, while a line still being written would only be cut up (a line
/// cut by a time slice all the same is written whole at its end; the fragment stays
/// in the log).
pub const PARTIAL_IDLE_NS: u64 = 200_000_000;

/// Where a VM's console pieces go: `(vm name, piece)`.
pub type ConsoleOut = fn(&str, Piece);

/// The guest's COM1 output, assembled into lines and relayed as `name | text`.
pub struct Relay {
    name: String,
    line: LineBuffer,
    /// Bytes of the line in progress already relayed as [`Piece::Partial`].
    shown: usize,
    /// The line in progress's length at the last look, and since when (ns).
    seen_len: usize,
    seen_at: u64,
    out: ConsoleOut,
}

impl Relay {
    pub fn new(name: &str, out: ConsoleOut) -> Self {
        Self {
            name: name.into(),
            line: LineBuffer::new(),
            shown: 0,
            seen_len: 0,
            seen_at: 0,
            out,
        }
    }

    /// Relays a finished line (or chunk), only what was not shown of it before.
    fn finished(name: &str, out: ConsoleOut, text: &str, shown: usize) {
        if shown == 0 {
            out(name, Piece::Line(text));
        } else {
            // `shown` counts bytes of `peek`, which ends on a character boundary of
            // the same text.
            out(
                name,
                Piece::Rest {
                    line: text,
                    shown: shown.min(text.len()),
                },
            );
        }
    }

    /// Relays what the guest printed without a final newline.
    pub fn flush(&mut self) {
        let shown = core::mem::take(&mut self.shown);
        if let Some(line) = self.line.flush_partial() {
            Self::finished(&self.name, self.out, line.text, shown);
        } else if shown > 0 {
            (self.out)(&self.name, Piece::Rest { line: "", shown: 0 });
        }
    }

    /// Relays what is new of the line in progress, once it has stayed unchanged for
    /// [`PARTIAL_IDLE_NS`] (`now_ns`: the time of this look).
    pub fn show_partial(&mut self, now_ns: u64) {
        let len = self.line.len();
        if len != self.seen_len {
            self.seen_len = len;
            self.seen_at = now_ns;
            return;
        }
        if now_ns.saturating_sub(self.seen_at) < PARTIAL_IDLE_NS {
            return;
        }
        let text = self.line.peek();
        if text.len() > self.shown {
            let new = text.get(self.shown..).unwrap_or("");
            (self.out)(&self.name, Piece::Partial(new));
            self.shown = text.len();
        }
    }
}

impl SerialSink for Relay {
    fn write_byte(&mut self, byte: u8) {
        if let Some(line) = self.line.push(byte) {
            let shown = core::mem::take(&mut self.shown);
            Self::finished(&self.name, self.out, line.text, shown);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec::Vec;
    use spin::Mutex;

    static SEEN: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

    fn record(_: &str, piece: Piece) {
        let (kind, text) = match piece {
            Piece::Line(t) => ("line", t),
            Piece::Partial(t) => ("partial", t),
            Piece::Rest { line, shown } => ("rest", &line[shown..]),
        };
        SEEN.lock().push((kind.to_string(), text.to_string()));
    }

    #[test]
    fn partial_lines_then_the_rest() {
        let mut r = Relay::new("vm", record);
        for &b in b"one\n$ " {
            r.write_byte(b);
        }
        // Shown only once it stayed the same for a while.
        r.show_partial(0);
        r.show_partial(PARTIAL_IDLE_NS - 1);
        r.show_partial(PARTIAL_IDLE_NS);
        r.show_partial(2 * PARTIAL_IDLE_NS); // nothing new
        for &b in b"ls" {
            r.write_byte(b);
        }
        r.show_partial(3 * PARTIAL_IDLE_NS);
        r.show_partial(4 * PARTIAL_IDLE_NS);
        for &b in b" -l\nlast" {
            r.write_byte(b);
        }
        r.show_partial(5 * PARTIAL_IDLE_NS);
        r.show_partial(6 * PARTIAL_IDLE_NS);
        r.flush();
        r.write_byte(b'x');
        r.flush();
        let seen: Vec<(String, String)> = core::mem::take(&mut *SEEN.lock());
        let pairs: Vec<(&str, &str)> = seen.iter().map(|(k, t)| (k.as_str(), t.as_str())).collect();
        assert_eq!(
            pairs,
            [
                ("line", "one"),
                ("partial", "$ "),
                ("partial", "ls"),
                ("rest", " -l"),
                ("partial", "last"),
                ("rest", ""),
                ("line", "x"),
            ]
        );
    }
}
