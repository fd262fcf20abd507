//! The hypervisor's log as RFC 5424 syslog messages, and the bounded queue they
//! wait in until the station sends them over UDP (RFC 5426).
//!
//! A message is `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG`
//! (RFC 5424 §6): PRI is facility × 8 + severity (§6.2.1), the timestamp is UTC
//! with microseconds (§6.2.3), HOSTNAME is `hv`, PROCID and STRUCTURED-DATA are
//! the NILVALUE `-`. Header fields are printable US-ASCII of bounded length
//! (§6.2.5-6.2.7: APP-NAME 48, MSGID 32), replaced by `-` when empty. MSG is the
//! record's text with control characters replaced by spaces (a collector writes
//! one message per line; §8.2 warns about them), cut at a character boundary so
//! the whole message stays within [`MAX_MESSAGE`] bytes: RFC 5426 §3.2 asks
//! senders to keep to 480 bytes unless they know the path, and a receiver must
//! accept 480; one Ethernet frame carries up to 1,472 bytes of UDP payload.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

/// The largest message sent, header included.
pub const MAX_MESSAGE: usize = 1024;

/// The HOSTNAME field of every message.
pub const HOSTNAME: &str = "hv";

/// Syslog facilities (RFC 5424 §6.2.1, table 1) the hypervisor may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Facility {
    Kernel = 0,
    User = 1,
    Daemon = 3,
    Local0 = 16,
}

/// Syslog severities (RFC 5424 §6.2.1, table 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Emergency = 0,
    Alert = 1,
    Critical = 2,
    Error = 3,
    Warning = 4,
    Notice = 5,
    Informational = 6,
    Debug = 7,
}

/// One log record to send.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    pub facility: Facility,
    pub severity: Severity,
    /// When it happened, in ns since the Unix epoch (UTC).
    pub unix_ns: u64,
    pub app_name: &'a str,
    /// What part of the hypervisor logged it (the `log` target), or `""`.
    pub msgid: &'a str,
    pub msg: &'a str,
}

/// The date of `days` after 1970-01-01 as (year, month, day) in the proleptic
/// Gregorian calendar: the days are counted from 0000-03-01 so that a leap day
/// ends each year, in 400-year eras of 146,097 days.
fn civil(days: u64) -> (u64, u64, u64) {
    // 0000-03-01 to 1970-01-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months from March: 153 days per five months.
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

/// `YYYY-MM-DDThh:mm:ss.uuuuuuZ` (RFC 5424 §6.2.3, RFC 3339).
pub fn timestamp(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let micros = unix_ns % 1_000_000_000 / 1000;
    let (y, mo, d) = civil(secs / 86_400);
    let s = secs % 86_400;
    let mut out = String::new();
    let _ = write!(
        out,
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        s / 3600,
        s % 3600 / 60,
        s % 60
    );
    out
}

/// `field` as printable US-ASCII (33-126) of at most `max` characters, or `-`.
fn header_field(out: &mut String, field: &str, max: usize) {
    let start = out.len();
    out.extend(field.chars().filter(|c| ('!'..='~').contains(c)).take(max));
    if out.len() == start {
        out.push('-');
    }
}

/// The message for `r`.
pub fn format(r: &Record) -> Vec<u8> {
    let mut out = String::new();
    let pri = (r.facility as u8) * 8 + r.severity as u8;
    let _ = write!(out, "<{pri}>1 {} {HOSTNAME} ", timestamp(r.unix_ns));
    header_field(&mut out, r.app_name, 48);
    out.push_str(" - ");
    header_field(&mut out, r.msgid, 32);
    out.push_str(" - ");
    for c in r.msg.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > MAX_MESSAGE {
            break;
        }
        out.push(c);
    }
    out.into_bytes()
}

/// The severity of a `log` level.
pub fn severity(level: LogLevel) -> Severity {
    match level {
        LogLevel::Error => Severity::Error,
        LogLevel::Warn => Severity::Warning,
        LogLevel::Info => Severity::Informational,
        LogLevel::Debug | LogLevel::Trace => Severity::Debug,
    }
}

/// The `log` crate's levels, without depending on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// Bytes of a record's text kept (the rest is cut at a character boundary); with
/// the header it stays within [`MAX_MESSAGE`].
pub const RECORD_TEXT: usize = 900;
/// Bytes of a record's MSGID kept (RFC 5424 §6.2.7).
const MSGID_MAX: usize = 32;

/// One record as the ring keeps it: fixed-size, so queueing allocates nothing.
#[derive(Clone, Copy)]
struct Slot {
    severity: Severity,
    unix_ns: u64,
    msgid_len: u8,
    msgid: [u8; MSGID_MAX],
    text_len: u16,
    text: [u8; RECORD_TEXT],
}

impl Slot {
    const EMPTY: Slot = Slot {
        severity: Severity::Debug,
        unix_ns: 0,
        msgid_len: 0,
        msgid: [0; MSGID_MAX],
        text_len: 0,
        text: [0; RECORD_TEXT],
    };
}

/// Copies what fits of `s` into `buf[*len..]`, whole characters only.
fn append(buf: &mut [u8], len: &mut usize, s: &str) -> bool {
    let room = buf.len() - *len;
    let mut n = s.len().min(room);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    buf[*len..*len + n].copy_from_slice(&s.as_bytes()[..n]);
    *len += n;
    n == s.len()
}

struct SlotWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl Write for SlotWriter<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        // Cut, not failed: the record keeps what fits.
        append(self.buf, &mut self.len, s);
        Ok(())
    }
}

/// Log records waiting to be sent, `N` at most: [`RecordRing::push`] copies a
/// record into a fixed slot (no allocation, so a logger may call it wherever it
/// runs); when the ring is full new records are dropped and counted (the oldest
/// are kept: they say how the trouble began). [`RecordRing::pop_message`] gives
/// the oldest as an RFC 5424 message.
pub struct RecordRing<const N: usize> {
    slots: [Slot; N],
    head: usize,
    len: usize,
    dropped: u64,
    sent: u64,
}

impl<const N: usize> Default for RecordRing<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> RecordRing<N> {
    pub const fn new() -> Self {
        Self {
            slots: [Slot::EMPTY; N],
            head: 0,
            len: 0,
            dropped: 0,
            sent: 0,
        }
    }

    /// Queues a record: `text` formatted into its slot (cut at
    /// [`RECORD_TEXT`] bytes); false (and counted) when the ring is full.
    pub fn push(
        &mut self,
        severity: Severity,
        unix_ns: u64,
        msgid: &str,
        text: core::fmt::Arguments,
    ) -> bool {
        if self.len >= N {
            self.dropped += 1;
            return false;
        }
        let slot = &mut self.slots[(self.head + self.len) % N];
        slot.severity = severity;
        slot.unix_ns = unix_ns;
        let mut n = 0;
        append(&mut slot.msgid, &mut n, msgid);
        slot.msgid_len = n as u8;
        let mut w = SlotWriter {
            buf: &mut slot.text,
            len: 0,
        };
        let _ = w.write_fmt(text);
        slot.text_len = w.len as u16;
        self.len += 1;
        true
    }

    /// The oldest record as a message from `app_name` with `facility`, counted
    /// as sent.
    pub fn pop_message(&mut self, facility: Facility, app_name: &str) -> Option<Vec<u8>> {
        if self.len == 0 {
            return None;
        }
        let slot = &self.slots[self.head];
        self.head = (self.head + 1) % N;
        self.len -= 1;
        self.sent += 1;
        // Only whole characters were copied in.
        let text = core::str::from_utf8(&slot.text[..usize::from(slot.text_len)]).unwrap_or("");
        let msgid = core::str::from_utf8(&slot.msgid[..usize::from(slot.msgid_len)]).unwrap_or("");
        Some(format(&Record {
            facility,
            severity: slot.severity,
            unix_ns: slot.unix_ns,
            app_name,
            msgid,
            msg: text,
        }))
    }

    /// Counts `n` records lost elsewhere (a busy lock, a full socket) as dropped,
    /// and a popped one that was not sent after all as not sent.
    pub fn count_dropped(&mut self, n: u64, unsent: u64) {
        self.dropped += n + unsent;
        self.sent -= unsent.min(self.sent);
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn sent(&self) -> u64 {
        self.sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(59), (1970, 3, 1));
        // 2000 is a leap year (divisible by 400), 2100 is not.
        assert_eq!(civil(11_016), (2000, 2, 29));
        assert_eq!(civil(11_017), (2000, 3, 1));
        assert_eq!(civil(47_540), (2100, 2, 28));
        assert_eq!(civil(47_541), (2100, 3, 1));
        assert_eq!(civil(20_787), (2026, 11, 30));
        assert_eq!(civil(20_818), (2026, 12, 31));
        assert_eq!(civil(20_819), (2027, 1, 1));
        assert_eq!(
            timestamp(1_796_021_679_123_456_789),
            "2026-11-30T06:54:39.123456Z"
        );
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000000Z");
    }

    fn rec(msg: &str) -> Record<'_> {
        Record {
            facility: Facility::Local0,
            severity: Severity::Warning,
            unix_ns: 1_796_021_679_000_000_000,
            app_name: "hv",
            msgid: "vmm::run",
            msg,
        }
    }

    #[test]
    fn rfc5424_header_and_message() {
        let m = format(&rec("vm linux stopped"));
        assert_eq!(
            core::str::from_utf8(&m).unwrap(),
            "<132>1 2026-11-30T06:54:39.000000Z hv hv - vmm::run - vm linux stopped"
        );
        let mut r = rec("a\nb\x1b[31mc\td\u{85}é");
        r.facility = Facility::Kernel;
        r.severity = Severity::Emergency;
        r.app_name = "h v\u{e9}";
        r.msgid = "";
        let m = format(&r);
        assert_eq!(
            core::str::from_utf8(&m).unwrap(),
            "<0>1 2026-11-30T06:54:39.000000Z hv hv - - - a b [31mc d é"
        );
    }

    #[test]
    fn long_fields_and_messages_are_cut() {
        let long = "x".repeat(100);
        let mut r = rec("");
        r.app_name = &long;
        r.msgid = &long;
        let m = String::from_utf8(format(&r)).unwrap();
        let fields: Vec<&str> = m.split(' ').collect();
        assert_eq!(fields[3].len(), 48);
        assert_eq!(fields[5].len(), 32);
        // A multi-byte character at the limit is left out whole.
        let msg = "é".repeat(2000);
        let m = format(&rec(&msg));
        assert!(m.len() <= MAX_MESSAGE && m.len() >= MAX_MESSAGE - 1);
        assert!(String::from_utf8(m).is_ok());
    }

    #[test]
    fn ring_drops_new_records_when_full_and_cuts_long_ones() {
        let mut q = RecordRing::<2>::new();
        let at = 1_796_021_679_000_000_000;
        assert!(q.push(Severity::Error, at, "a", format_args!("one {}", 1)));
        assert!(q.push(Severity::Warning, at, "b", format_args!("two")));
        assert!(!q.push(Severity::Warning, at, "c", format_args!("three")));
        q.count_dropped(2, 0);
        assert_eq!(q.dropped(), 3);
        let m = q.pop_message(Facility::Local0, "hv").unwrap();
        assert_eq!(m, b"<131>1 2026-11-30T06:54:39.000000Z hv hv - a - one 1");
        let long = "\u{e9}".repeat(1000);
        assert!(q.push(Severity::Debug, at, &"m".repeat(40), format_args!("{long}")));
        assert_eq!(q.len(), 2);
        assert!(q
            .pop_message(Facility::Local0, "hv")
            .unwrap()
            .ends_with(b"- two"));
        let m = String::from_utf8(q.pop_message(Facility::Local0, "hv").unwrap()).unwrap();
        let fields: Vec<&str> = m.splitn(8, ' ').collect();
        assert_eq!(fields[5], "m".repeat(32));
        assert_eq!(fields[7].len(), RECORD_TEXT);
        assert!(q.pop_message(Facility::Local0, "hv").is_none());
        assert!(q.is_empty());
        // A popped message the socket did not take counts as dropped, not sent.
        q.count_dropped(0, 1);
        assert_eq!((q.sent(), q.dropped()), (2, 4));
    }
}
