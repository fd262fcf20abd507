//! A VM's console: the guest's COM1 output assembled into lines and relayed to the
//! host console as `name | text`.

use alloc::string::String;
use devices::{LineBuffer, SerialSink};

/// Where finished console lines of a VM go: `(vm name, line)`.
pub type ConsoleOut = fn(&str, &str);

/// The guest's COM1 output, assembled into lines and relayed as `name | text`.
pub struct Relay {
    name: String,
    line: LineBuffer,
    out: ConsoleOut,
}

impl Relay {
    pub fn new(name: &str, out: ConsoleOut) -> Self {
        Self {
            name: name.into(),
            line: LineBuffer::new(),
            out,
        }
    }

    /// Relays what the guest printed without a final newline.
    pub fn flush(&mut self) {
        if let Some(line) = self.line.flush_partial() {
            (self.out)(&self.name, line.text);
        }
    }
}

impl SerialSink for Relay {
    fn write_byte(&mut self, byte: u8) {
        if let Some(line) = self.line.push(byte) {
            (self.out)(&self.name, line.text);
        }
    }
}
