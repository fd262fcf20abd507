//! Typing a secret on the hypervisor's serial console: [`SecretLine`] turns the bytes
//! of a terminal into one line without echoing them (the disk passphrase asked for
//! when a VM with an encrypted disk starts and no key file was packed for it).
//!
//! What a terminal sends is taken as a line editor would: Enter (CR or LF) ends the
//! line, Backspace (DEL 0x7F or BS 0x08) removes the last byte, Ctrl-U clears the
//! line, Ctrl-C or Ctrl-D cancels; other control bytes and the escape sequences of
//! arrow keys are ignored rather than becoming part of the passphrase. The line is
//! bounded ([`MAX_SECRET`]) and its bytes are wiped when it is dropped. A CR LF pair
//! ends one line, not a line and an empty one.

use alloc::vec::Vec;

/// The longest secret accepted (bytes); more is refused, not cut.
pub const MAX_SECRET: usize = 512;

/// What one byte did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Keep reading.
    More,
    /// The line is complete: take it with [`SecretLine::take`].
    Done,
    /// The user cancelled (Ctrl-C, Ctrl-D).
    Cancelled,
    /// The line grew past [`MAX_SECRET`].
    TooLong,
}

/// A line being typed (see the module documentation).
#[derive(Default)]
pub struct SecretLine {
    bytes: Vec<u8>,
    /// Inside an escape sequence: ESC seen, then `[` or `O` and parameters.
    escape: u8,
    /// The last byte ended a line with CR (a following LF is its pair).
    after_cr: bool,
}

impl SecretLine {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one byte from the terminal.
    pub fn push(&mut self, byte: u8) -> Step {
        let after_cr = core::mem::take(&mut self.after_cr);
        if self.escape != 0 {
            // ESC [ ... final byte (0x40-0x7E), or ESC O x, or ESC x.
            match (self.escape, byte) {
                (1, b'[') | (1, b'O') => self.escape = byte,
                (b'[', 0x20..=0x3F) => {}
                _ => self.escape = 0,
            }
            return Step::More;
        }
        match byte {
            b'\n' if after_cr && self.bytes.is_empty() => Step::More,
            b'\r' | b'\n' => {
                self.after_cr = byte == b'\r';
                Step::Done
            }
            0x7F | 0x08 => {
                self.bytes.pop();
                Step::More
            }
            0x15 => {
                self.wipe();
                Step::More
            }
            0x03 | 0x04 => {
                self.wipe();
                Step::Cancelled
            }
            0x1B => {
                self.escape = 1;
                Step::More
            }
            0x00..=0x1F => Step::More,
            _ if self.bytes.len() >= MAX_SECRET => {
                self.wipe();
                Step::TooLong
            }
            _ => {
                self.bytes.push(byte);
                Step::More
            }
        }
    }

    /// The line typed so far (after [`Step::Done`]: the whole line), leaving this
    /// empty for the next one. The caller wipes what it takes.
    pub fn take(&mut self) -> Vec<u8> {
        core::mem::take(&mut self.bytes)
    }

    fn wipe(&mut self) {
        wipe(&mut self.bytes);
        self.bytes.clear();
    }
}

impl Drop for SecretLine {
    fn drop(&mut self) {
        wipe(&mut self.bytes);
    }
}

/// Overwrites `bytes` with zeros in a way the compiler does not drop as a dead
/// store (the buffer is about to be freed or reused).
pub fn wipe(bytes: &mut [u8]) {
    for b in bytes.iter_mut() {
        // SAFETY: `b` is a valid, aligned, exclusive reference to one byte.
        unsafe { core::ptr::write_volatile(b, 0) };
    }
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(input: &[u8]) -> (Step, Vec<u8>) {
        let mut line = SecretLine::new();
        let mut last = Step::More;
        for &b in input {
            last = line.push(b);
            if last != Step::More {
                break;
            }
        }
        (last, line.take())
    }

    #[test]
    fn enter_ends_the_line_and_editing_keys_edit_it() {
        assert_eq!(typed(b"hunter2\r"), (Step::Done, b"hunter2".to_vec()));
        assert_eq!(typed(b"hunter2\n"), (Step::Done, b"hunter2".to_vec()));
        assert_eq!(typed(b"huntx\x7fer2\r"), (Step::Done, b"hunter2".to_vec()));
        assert_eq!(typed(b"ab\x08\x08\x08cd\r"), (Step::Done, b"cd".to_vec()));
        assert_eq!(typed(b"wrong\x15right\r"), (Step::Done, b"right".to_vec()));
        assert_eq!(typed(b"with space\r"), (Step::Done, b"with space".to_vec()));
    }

    #[test]
    fn control_bytes_and_arrow_keys_are_not_part_of_it() {
        // Up arrow (ESC [ A), F5 (ESC [ 1 5 ~), SS3 (ESC O P), a tab, a bell.
        let (step, got) = typed(b"a\x1b[Ab\x1b[15~c\x1bOPd\t\x07e\r");
        assert_eq!((step, got), (Step::Done, b"abcde".to_vec()));
    }

    #[test]
    fn cancel_and_overlong_lines() {
        assert_eq!(typed(b"secret\x03"), (Step::Cancelled, Vec::new()));
        assert_eq!(typed(b"\x04"), (Step::Cancelled, Vec::new()));
        let long = alloc::vec![b'x'; MAX_SECRET + 1];
        assert_eq!(typed(&long), (Step::TooLong, Vec::new()));
        let mut exact = alloc::vec![b'y'; MAX_SECRET];
        exact.push(b'\r');
        assert_eq!(typed(&exact).1.len(), MAX_SECRET);
    }

    #[test]
    fn cr_lf_is_one_line_end() {
        let mut line = SecretLine::new();
        for &b in b"one\r" {
            line.push(b);
        }
        assert_eq!(line.take(), b"one");
        // The LF of the pair is swallowed; the next line is read as typed.
        assert_eq!(line.push(b'\n'), Step::More);
        for &b in b"two" {
            assert_eq!(line.push(b), Step::More);
        }
        assert_eq!(line.push(b'\n'), Step::Done);
        assert_eq!(line.take(), b"two");
        // An empty line is a line (an empty passphrase is refused by its caller).
        assert_eq!(line.push(b'\r'), Step::Done);
        assert!(line.take().is_empty());
    }
}
