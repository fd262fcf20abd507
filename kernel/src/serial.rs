//! The host serial line (COM1): the hypervisor's log and the relay of guest consoles.
//! `log` records carry a timestamp in seconds since boot and the level.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};
use spin::Mutex;
use uart_16550::SerialPort;

const COM1: u16 = 0x3F8;

static PORT: Mutex<Option<SerialPort>> = Mutex::new(None);

/// The last thing written was a guest's line without its newline (see
/// [`write_piece`]): the next ordinary write starts a new line first.
static LINE_OPEN: AtomicBool = AtomicBool::new(false);

pub fn init() {
    // SAFETY: COM1 is the standard PC serial port; nothing else in the hypervisor
    // drives these I/O ports.
    let mut port = unsafe { SerialPort::new(COM1) };
    port.init();
    *PORT.lock() = Some(port);
}

/// Writes straight to the port. Used by the logger and the console relay. A guest
/// line left open by [`write_piece`] is ended first, so this starts at a line's
/// beginning.
pub fn write_fmt(args: fmt::Arguments) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        if let Some(port) = PORT.lock().as_mut() {
            if LINE_OPEN.swap(false, Ordering::Relaxed) {
                let _ = port.write_str("\n");
            }
            let _ = port.write_fmt(args);
        }
    });
}

/// Writes a piece of a guest's console line: `text` goes on the line left open if
/// `continues` and nothing else was written since, else on a new line after
/// `prefix`; `ends` finishes the line, otherwise it stays open.
pub fn write_piece(prefix: &str, text: &str, continues: bool, ends: bool) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        if let Some(port) = PORT.lock().as_mut() {
            let open = LINE_OPEN.load(Ordering::Relaxed);
            if !(continues && open) {
                if open {
                    let _ = port.write_str("\n");
                }
                let _ = port.write_str(prefix);
            }
            let _ = port.write_str(text);
            if ends {
                let _ = port.write_str("\n");
            }
            LINE_OPEN.store(!ends, Ordering::Relaxed);
        }
    });
}

/// Whether a guest's line is open on the terminal (see [`write_piece`]).
pub fn line_open() -> bool {
    LINE_OPEN.load(Ordering::Relaxed)
}

/// Writes the operator console's prompt and echo: on the current line, as typed.
pub fn write_raw(text: &str) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        if let Some(port) = PORT.lock().as_mut() {
            let _ = port.write_str(text);
        }
    });
}

/// A byte typed on the host console, if one arrived (LSR.DR).
pub fn try_read_byte() -> Option<u8> {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let mut lsr: x86_64::instructions::port::PortReadOnly<u8> =
            x86_64::instructions::port::PortReadOnly::new(COM1 + 5);
        let mut rbr: x86_64::instructions::port::PortReadOnly<u8> =
            x86_64::instructions::port::PortReadOnly::new(COM1);
        let _guard = PORT.lock();
        // SAFETY: reading LSR has no side effects; RBR is read only when DR says a
        // byte is there, which consumes exactly that byte.
        unsafe { (lsr.read() & 1 != 0).then(|| rbr.read()) }
    })
}

/// Why no secret came from [`read_secret`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretError {
    /// Nothing complete was typed within the time allowed.
    Timeout,
    /// The user pressed Ctrl-C or Ctrl-D.
    Cancelled,
    /// More than [`crate::secret_line::MAX_SECRET`] bytes.
    TooLong,
}

/// Prints `prompt` and reads one line from the console without echoing it (see
/// [`crate::secret_line`]), waiting at most `timeout_ms`. The caller wipes the
/// returned bytes when done with them.
pub fn read_secret(
    prompt: fmt::Arguments,
    timeout_ms: u64,
) -> Result<alloc::vec::Vec<u8>, SecretError> {
    use crate::secret_line::{SecretLine, Step};
    write_fmt(prompt);
    let deadline = crate::time::uptime_micros() + timeout_ms * 1000;
    let mut line = SecretLine::new();
    let result = loop {
        if crate::time::uptime_micros() > deadline {
            break Err(SecretError::Timeout);
        }
        let Some(byte) = try_read_byte() else {
            core::hint::spin_loop();
            continue;
        };
        match line.push(byte) {
            Step::More => {}
            Step::Done => break Ok(line.take()),
            Step::Cancelled => break Err(SecretError::Cancelled),
            Step::TooLong => break Err(SecretError::TooLong),
        }
    };
    // The Enter the user typed was not echoed either.
    write_fmt(format_args!("\n"));
    result
}

/// Waits until the UART has shifted out everything written (LSR.TEMT), so that a
/// power-off right after the last line does not cut it short in emulators that model
/// the baud rate.
pub fn drain() {
    let mut lsr: x86_64::instructions::port::PortReadOnly<u8> =
        x86_64::instructions::port::PortReadOnly::new(COM1 + 5);
    for _ in 0..1_000_000 {
        // SAFETY: reading the line status register has no side effects.
        if unsafe { lsr.read() } & 0x40 != 0 {
            return;
        }
        core::hint::spin_loop();
    }
}

/// For reports from a processor that is not itself in trouble about one that may be
/// (the watchdog): waits for the lock about `tries` times, so the report does not cut
/// into another processor's line, and takes the port over without it only if the
/// lock stays held (its holder may be the stuck processor).
pub fn write_fmt_or_take_over(args: fmt::Arguments, tries: u32) {
    for _ in 0..tries {
        if let Some(mut guard) = PORT.try_lock() {
            if let Some(port) = guard.as_mut() {
                let _ = port.write_fmt(args);
            }
            return;
        }
        core::hint::spin_loop();
    }
    emergency_write_fmt(args);
}

/// For the exception and panic paths: the lock may be held by the code that faulted,
/// so take the port over without it. Output may interleave; losing the report would
/// be worse.
pub fn emergency_write_fmt(args: fmt::Arguments) {
    if let Some(mut guard) = PORT.try_lock() {
        if let Some(port) = guard.as_mut() {
            let _ = port.write_fmt(args);
            return;
        }
    }
    // SAFETY: see `init`; we only write bytes, and the machine is about to stop.
    let mut port = unsafe { SerialPort::new(COM1) };
    let _ = port.write_fmt(args);
}

#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => { $crate::serial::write_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}

struct SerialLogger;

impl log::Log for SerialLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let micros = crate::time::uptime_micros();
        write_fmt(format_args!(
            "[{:5}.{:06}] {:5} {}\n",
            micros / 1_000_000,
            micros % 1_000_000,
            record.level(),
            record.args()
        ));
        // And to the management network's syslog collector, if there is one.
        crate::vmm::mgmt_net::forward(record);
    }

    fn flush(&self) {}
}

static LOGGER: SerialLogger = SerialLogger;

/// The level is fixed when the image is built (`HV_LOG` at build time, set by
/// `cargo xtask build --log <level>`); the default is `info`.
pub const BUILD_LOG_LEVEL: log::LevelFilter = match option_env!("HV_LOG") {
    Some(s) => parse_level(s.as_bytes()),
    None => log::LevelFilter::Info,
};

const fn parse_level(s: &[u8]) -> log::LevelFilter {
    match s {
        b"off" => log::LevelFilter::Off,
        b"error" => log::LevelFilter::Error,
        b"warn" => log::LevelFilter::Warn,
        b"debug" => log::LevelFilter::Debug,
        b"trace" => log::LevelFilter::Trace,
        _ => log::LevelFilter::Info,
    }
}

pub fn init_logger() {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(BUILD_LOG_LEVEL);
}
