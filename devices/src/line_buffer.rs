//! Assembles a guest's serial output into printable lines for the hypervisor's console
//! relay (`name | text`).
//!
//! Guests write bytes, not lines, and not always text: this turns the byte stream into
//! lines that cannot corrupt the host console or its log. A line ends at `'\n'`; `'\r'`
//! is dropped (guests send CRLF); every other control byte except tab, and every byte
//! that is not part of valid UTF-8, becomes `'.'` so that escape sequences and binary
//! noise stay visible but inert. A line longer than the buffer is cut into chunks
//! flagged as wrapped / continued, never at a point that would split a UTF-8 character.
//!
//! Everything is fixed-size and allocation-free; a yielded [`Line`] borrows the buffer
//! until the next call.

/// The default line length: two classic 80-column rows.
pub const LINE_CAPACITY: usize = 160;

/// One completed line (or chunk of an over-long line), without its newline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Line<'a> {
    /// Printable text: no control characters other than tab, always valid UTF-8.
    pub text: &'a str,
    /// This chunk is the rest of a line that an earlier chunk wrapped.
    pub continued: bool,
    /// The buffer filled before a newline: the line goes on in the next chunk.
    pub wrapped: bool,
}

/// A line assembler holding up to `N` bytes of one line (`N >= 4`, so that a carried-over
/// partial UTF-8 character plus the byte that overflowed always fit).
#[derive(Clone, Debug)]
pub struct LineBuffer<const N: usize = LINE_CAPACITY> {
    buf: [u8; N],
    len: usize,
    /// `buf[..consumed]` was handed out as the last [`Line`]; the caller may still be
    /// reading it, so it is dropped lazily at the start of the next call.
    consumed: usize,
    /// The byte that overflowed a full buffer, appended once the chunk is dropped.
    overflow: Option<u8>,
    /// The line being assembled continues a wrapped chunk.
    continued: bool,
}

impl<const N: usize> Default for LineBuffer<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> LineBuffer<N> {
    pub const fn new() -> Self {
        const { assert!(N >= 4, "LineBuffer needs room for a UTF-8 character") };
        Self {
            buf: [0; N],
            len: 0,
            consumed: 0,
            overflow: None,
            continued: false,
        }
    }

    /// Feeds one byte; returns a line when `byte` completes one (`'\n'`) or overflows
    /// the buffer (then the line is `wrapped` and the byte starts the next chunk).
    pub fn push(&mut self, byte: u8) -> Option<Line<'_>> {
        self.settle();
        match byte {
            b'\r' => None,
            b'\n' => Some(self.take(self.len, false)),
            _ => {
                let byte = if byte == b'\t' || !(byte < 0x20 || byte == 0x7F) {
                    byte
                } else {
                    b'.'
                };
                if self.len < N {
                    self.buf[self.len] = byte;
                    self.len += 1;
                    None
                } else {
                    // Wrap only when a byte actually overflows, so a line of exactly
                    // N bytes followed by '\n' stays one unwrapped line.
                    let split = utf8_split_point(&self.buf);
                    self.overflow = Some(byte);
                    Some(self.take(split, true))
                }
            }
        }
    }

    /// Yields whatever partial line is buffered (e.g. the guest stopped mid-line), or
    /// `None` if there is none. The next byte starts a fresh line.
    pub fn flush_partial(&mut self) -> Option<Line<'_>> {
        self.settle();
        if self.len == 0 {
            self.continued = false;
            return None;
        }
        Some(self.take(self.len, false))
    }

    /// The line in progress as far as it is text already: sanitised as a finished
    /// line would be, without a trailing UTF-8 character whose bytes have not all
    /// arrived. For showing a line before its newline (a shell's prompt); the line
    /// stays buffered, and [`LineBuffer::push`] hands it out whole when it ends.
    pub fn peek(&mut self) -> &str {
        self.settle();
        let end = utf8_split_point(&self.buf[..self.len]);
        sanitize(&mut self.buf[..end])
    }

    /// Bytes buffered for the line in progress.
    pub fn len(&self) -> usize {
        self.len - self.consumed + usize::from(self.overflow.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Discards the line in progress.
    pub fn clear(&mut self) {
        self.len = 0;
        self.consumed = 0;
        self.overflow = None;
        self.continued = false;
    }

    /// Drops the chunk handed out last: moves the carried-over tail to the front and
    /// appends the overflow byte.
    fn settle(&mut self) {
        if self.consumed > 0 {
            self.buf.copy_within(self.consumed..self.len, 0);
            self.len -= self.consumed;
            self.consumed = 0;
        }
        if let Some(byte) = self.overflow.take() {
            self.buf[self.len] = byte;
            self.len += 1;
        }
    }

    /// Hands out `buf[..end]` as a line; `buf[end..len]` carries over to the next one.
    fn take(&mut self, end: usize, wrapped: bool) -> Line<'_> {
        let continued = self.continued;
        self.continued = wrapped;
        if end == self.len {
            // Nothing carries over. The bytes stay in `buf` for the returned slice;
            // `len == 0` already marks them free for the next line.
            self.len = 0;
        } else {
            self.consumed = end;
        }
        Line {
            text: sanitize(&mut self.buf[..end]),
            continued,
            wrapped,
        }
    }
}

/// Where to cut a full buffer: before a trailing UTF-8 character whose remaining bytes
/// have not arrived yet, so they can be completed in the next chunk.
fn utf8_split_point(buf: &[u8]) -> usize {
    let n = buf.len();
    // A UTF-8 character is at most 4 bytes, so only the last 3 can start an incomplete one.
    for back in 1..=3.min(n) {
        let b = buf[n - back];
        if b & 0xC0 == 0x80 {
            continue; // continuation byte: keep looking for its lead byte
        }
        let needed = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1, // ASCII or invalid: nothing to carry over
        };
        return if needed > back && n - back > 0 {
            n - back
        } else {
            n
        };
    }
    n
}

/// Replaces every invalid UTF-8 sequence in `bytes` with dots (one per byte, so the
/// length is unchanged) and returns the now-valid text.
fn sanitize(bytes: &mut [u8]) -> &str {
    let mut start = 0;
    while let Err(e) = core::str::from_utf8(&bytes[start..]) {
        let bad = start + e.valid_up_to();
        // `None`: the input ends inside a character; everything left is bad.
        let bad_len = e.error_len().unwrap_or(bytes.len() - bad);
        bytes[bad..bad + bad_len].fill(b'.');
        start = bad + bad_len;
    }
    // C1 controls (U+0080-U+009F: some terminals act on them as on ESC sequences)
    // and the bidirectional overrides and isolates (U+202A-U+202E, U+2066-U+2069,
    // and the marks U+200E, U+200F, U+061C: they reorder what the operator reads,
    // CVE-2021-42574) become dots too, one per byte.
    let mut at = 0;
    while at < bytes.len() {
        let len = match bytes[at] {
            0x00..=0x7F => 1,
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            _ => 4,
        }
        .min(bytes.len() - at);
        let c = core::str::from_utf8(&bytes[at..at + len])
            .ok()
            .and_then(|s| s.chars().next());
        if c.is_some_and(hidden_from_terminal) {
            bytes[at..at + len].fill(b'.');
        }
        at += len;
    }
    // Valid by construction; the fallback only keeps this free of panics.
    core::str::from_utf8(bytes).unwrap_or("")
}

/// Characters a guest's console line must not carry to the operator's terminal.
fn hidden_from_terminal(c: char) -> bool {
    matches!(
        c,
        '\u{80}'..='\u{9F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2066}'..='\u{2069}'
            | '\u{200E}'
            | '\u{200F}'
            | '\u{061C}'
    )
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::{String, ToString};
    use std::vec::Vec;

    /// Feeds `input` and collects every yielded line as (text, continued, wrapped).
    fn feed<const N: usize>(lb: &mut LineBuffer<N>, input: &[u8]) -> Vec<(String, bool, bool)> {
        let mut out = Vec::new();
        for &b in input {
            if let Some(line) = lb.push(b) {
                out.push((line.text.to_string(), line.continued, line.wrapped));
            }
        }
        out
    }

    fn plain(text: &str) -> (String, bool, bool) {
        (text.to_string(), false, false)
    }

    #[test]
    fn lines_split_on_newline_without_it() {
        let mut lb: LineBuffer = LineBuffer::new();
        let lines = feed(&mut lb, b"hello\nworld\n");
        assert_eq!(lines, [plain("hello"), plain("world")]);
        assert!(lb.is_empty());
    }

    #[test]
    fn carriage_returns_vanish_and_empty_lines_survive() {
        let mut lb: LineBuffer = LineBuffer::new();
        let lines = feed(&mut lb, b"a\r\n\r\n\nb\rc\n");
        assert_eq!(lines, [plain("a"), plain(""), plain(""), plain("bc")]);
    }

    #[test]
    fn control_bytes_become_dots_except_tab() {
        let mut lb: LineBuffer = LineBuffer::new();
        let lines = feed(&mut lb, b"\x1b[31mred\x1b[0m\tx\x00\x07\x7f~\n");
        assert_eq!(lines, [plain(".[31mred.[0m\tx...~")]);
    }

    #[test]
    fn utf8_passes_and_garbage_is_dotted() {
        let mut lb: LineBuffer = LineBuffer::new();
        let mut input = "héllo → ✓".as_bytes().to_vec();
        input.extend_from_slice(b" \xff\xfe \xe2\x82 ok\n");
        let lines = feed(&mut lb, &input);
        assert_eq!(lines, [plain("héllo → ✓ .. .. ok")]);
        // A truncated character at the end of a line is dotted too.
        let lines = feed(&mut lb, b"end\xe2\x82\n");
        assert_eq!(lines, [plain("end..")]);
    }

    #[test]
    fn exactly_full_line_is_not_wrapped() {
        let mut lb = LineBuffer::<8>::new();
        let lines = feed(&mut lb, b"12345678\nx\n");
        assert_eq!(lines, [plain("12345678"), plain("x")]);
    }

    #[test]
    fn overflow_wraps_with_continuation_flags() {
        let mut lb = LineBuffer::<4>::new();
        let lines = feed(&mut lb, b"abcdefghij\nk\n");
        assert_eq!(
            lines,
            [
                ("abcd".to_string(), false, true),
                ("efgh".to_string(), true, true),
                ("ij".to_string(), true, false),
                plain("k"),
            ]
        );
    }

    #[test]
    fn wrap_exactly_at_boundary_then_newline() {
        let mut lb = LineBuffer::<4>::new();
        // 8 bytes: the 5th overflows, the 2nd chunk is exactly full at '\n'.
        let lines = feed(&mut lb, b"abcdefgh\n");
        assert_eq!(
            lines,
            [
                ("abcd".to_string(), false, true),
                ("efgh".to_string(), true, false),
            ]
        );
    }

    #[test]
    fn wrap_never_splits_a_utf8_character() {
        let mut lb = LineBuffer::<6>::new();
        // "abcd" + "€" (3 bytes) + "!": the buffer fills mid-'€'.
        let lines = feed(&mut lb, "abcd€!\n".as_bytes());
        assert_eq!(
            lines,
            [
                ("abcd".to_string(), false, true),
                ("€!".to_string(), true, false),
            ]
        );
        // A 4-byte character cut after each of its first three bytes.
        for prefix in 1..=3 {
            let mut lb = LineBuffer::<6>::new();
            let mut input = std::vec![b'x'; 6 - prefix];
            input.extend_from_slice("😀".as_bytes());
            input.push(b'\n');
            let lines = feed(&mut lb, &input);
            assert_eq!(lines.len(), 2, "prefix {prefix}");
            assert_eq!(lines[0].0, "x".repeat(6 - prefix));
            assert_eq!(lines[1], ("😀".to_string(), true, false));
        }
    }

    #[test]
    fn flush_partial_yields_the_rest_once() {
        let mut lb: LineBuffer = LineBuffer::new();
        assert!(lb.flush_partial().is_none());
        assert!(feed(&mut lb, b"done\npartial").len() == 1);
        assert_eq!(lb.len(), 7);
        let line = lb.flush_partial().unwrap();
        assert_eq!(
            line,
            Line {
                text: "partial",
                continued: false,
                wrapped: false
            }
        );
        assert!(lb.flush_partial().is_none());
        // The next byte starts a fresh line.
        assert_eq!(feed(&mut lb, b"next\n"), [plain("next")]);
    }

    #[test]
    fn flush_partial_after_wrap_is_a_continuation() {
        let mut lb = LineBuffer::<4>::new();
        assert_eq!(feed(&mut lb, b"abcdef").len(), 1);
        assert_eq!(lb.len(), 2);
        let line = lb.flush_partial().unwrap();
        assert_eq!(
            (line.text, line.continued, line.wrapped),
            ("ef", true, false)
        );
        assert_eq!(feed(&mut lb, b"g\n"), [plain("g")]);
    }

    #[test]
    fn clear_discards() {
        let mut lb = LineBuffer::<4>::new();
        feed(&mut lb, b"abcdef");
        lb.clear();
        assert!(lb.is_empty());
        assert_eq!(feed(&mut lb, b"z\n"), [plain("z")]);
    }

    #[test]
    fn long_stream_of_default_capacity() {
        let mut lb: LineBuffer = LineBuffer::new();
        let input = [b'y'; 2 * LINE_CAPACITY + 5];
        let mut lines = feed(&mut lb, &input);
        lines.extend(
            lb.flush_partial()
                .map(|l| (l.text.to_string(), l.continued, l.wrapped)),
        );
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].0.len(), LINE_CAPACITY);
        assert_eq!(lines[1].0.len(), LINE_CAPACITY);
        assert_eq!(lines[2], ("yyyyy".to_string(), true, false));
    }

    #[test]
    fn c1_controls_and_bidi_overrides_become_dots() {
        let mut lb: LineBuffer = LineBuffer::new();
        // U+009B (CSI, C1), U+202E (right-to-left override), U+2066 (LRI), é kept.
        let lines = feed(&mut lb, "a\u{9B}31mb\u{202E}cé\u{2066}d\n".as_bytes());
        assert_eq!(lines, [plain("a..31mb...cé...d")]);
    }

    #[test]
    fn peek_shows_the_line_so_far() {
        let mut b: LineBuffer<16> = LineBuffer::new();
        assert_eq!(b.peek(), "");
        for &c in b"$ ls\x1b" {
            assert!(b.push(c).is_none());
        }
        assert_eq!(b.peek(), "$ ls.");
        // Half a character is not shown until it is whole.
        b.push(0xC3);
        assert_eq!(b.peek(), "$ ls.");
        b.push(0xA9);
        assert_eq!(b.peek(), "$ ls.\u{e9}");
        // Peeking changes nothing: the whole line comes out at its end.
        assert_eq!(b.push(b'\n').map(|l| l.text), Some("$ ls.\u{e9}"));
        assert_eq!(b.peek(), "");
        // After a wrap, the carried-over part.
        for &c in b"0123456789abcdefXY" {
            b.push(c);
        }
        assert_eq!(b.peek(), "XY");
    }
}
