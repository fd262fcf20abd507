//! The HTTP/1.1 requests the station answers, as pure logic: a request head is
//! collected up to [`MAX_REQUEST`] bytes, judged by [`judge`], and answered with
//! one response after which the connection closes (`Connection: close`, RFC 9112
//! §9.6), so neither keep-alive nor pipelining needs handling.
//!
//! Served: `GET` (and `HEAD`, RFC 9110 §9.1 requires both of a general-purpose
//! server) of `/metrics`. Anything else gets its status: 404 for another path,
//! 405 with `Allow` for another method (RFC 9110 §15.5.6), 400 for a request line
//! that is not `METHOD SP TARGET SP HTTP/1.x` (RFC 9112 §3), 431 for a head that
//! does not fit (RFC 6585 §5). A request body is never read.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// The largest request head taken (request line and header fields).
pub const MAX_REQUEST: usize = 4096;

/// The path served.
pub const METRICS_PATH: &str = "/metrics";

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The metrics; `head_only` for HEAD.
    Metrics { head_only: bool },
    /// An error response with this status.
    Error(u16),
}

/// Where a request head ends in `buf` (the index after its blank line), if it
/// is complete. A bare LF ends lines too (RFC 9112 §2.2 lets a recipient accept
/// it).
pub fn head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(nl) = buf[i..].iter().position(|&b| b == b'\n') {
        let line_end = i + nl + 1;
        let line = &buf[i..line_end];
        if line == b"\n" || line == b"\r\n" {
            // An empty line before the request line is skipped by RFC 9112 §2.2;
            // only a blank line after some content ends the head.
            if i > 0 {
                return Some(line_end);
            }
        }
        i = line_end;
    }
    None
}

/// The verdict on a complete request head (`head` without its blank line).
pub fn judge(head: &[u8]) -> Verdict {
    // Leading empty lines are allowed before the request line (RFC 9112 §2.2).
    let start = head
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(head.len());
    let head = &head[start..];
    let line_len = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let mut line = &head[..line_len];
    if let Some(l) = line.strip_suffix(b"\r") {
        line = l;
    }
    let Ok(line) = core::str::from_utf8(line) else {
        return Verdict::Error(400);
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Verdict::Error(400);
    };
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    if !token(method)
        || !target.starts_with('/')
        || target.bytes().any(|b| b <= b' ' || b == 0x7F)
        || !matches!(version, "HTTP/1.0" | "HTTP/1.1")
    {
        return Verdict::Error(400);
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Verdict::Error(405),
    };
    let path = target.split(['?', '#']).next().unwrap_or("");
    if path == METRICS_PATH {
        Verdict::Metrics { head_only }
    } else {
        Verdict::Error(404)
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    }
}

/// A whole response: status line, header fields, and `body` unless `head_only`.
pub fn response(status: u16, content_type: &str, body: &[u8], head_only: bool) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n",
        reason(status),
        body.len()
    );
    if status == 405 {
        head.push_str("Allow: GET, HEAD\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

/// An error response with a one-line text body.
pub fn error_response(status: u16) -> Vec<u8> {
    let mut body = String::from(reason(status));
    if status == 404 {
        body = format!("{body}: only {METRICS_PATH} is served");
    }
    body.push('\n');
    response(status, "text/plain; charset=utf-8", body.as_bytes(), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_ends_at_the_first_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.0\n\n"), Some(16));
        // Leading blank lines are not the end.
        assert_eq!(head_end(b"\r\n\r\n"), Some(4));
        assert_eq!(head_end(b"\r\n"), None);
        assert_eq!(head_end(b""), None);
    }

    #[test]
    fn verdicts() {
        let m = Verdict::Metrics { head_only: false };
        assert_eq!(judge(b"GET /metrics HTTP/1.1\r\nHost: a\r\n"), m);
        assert_eq!(judge(b"\r\nGET /metrics?x=1 HTTP/1.0\r\n"), m);
        assert_eq!(
            judge(b"HEAD /metrics HTTP/1.1\r\n"),
            Verdict::Metrics { head_only: true }
        );
        assert_eq!(judge(b"GET / HTTP/1.1\r\n"), Verdict::Error(404));
        assert_eq!(judge(b"GET /metricsx HTTP/1.1\r\n"), Verdict::Error(404));
        assert_eq!(judge(b"POST /metrics HTTP/1.1\r\n"), Verdict::Error(405));
        assert_eq!(judge(b"DELETE /x HTTP/1.1\r\n"), Verdict::Error(405));
        for bad in [
            &b"GET /metrics\r\n"[..],
            b"GET  /metrics HTTP/1.1\r\n",
            b"GET /metrics HTTP/2.0\r\n",
            b"GET metrics HTTP/1.1\r\n",
            b"G(T /metrics HTTP/1.1\r\n",
            b"GET /m\x01 HTTP/1.1\r\n",
            b"GET /metrics HTTP/1.1 extra\r\n",
            b"\xff\xfe /metrics HTTP/1.1\r\n",
            b"",
        ] {
            assert_eq!(judge(bad), Verdict::Error(400), "{bad:?}");
        }
    }

    #[test]
    fn responses_carry_length_and_close() {
        let r = response(200, "text/plain", b"abc", false);
        let t = core::str::from_utf8(&r).unwrap();
        assert!(t.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(t.contains("Content-Length: 3\r\n") && t.contains("Connection: close\r\n"));
        assert!(t.ends_with("\r\n\r\nabc"));
        let h = response(200, "text/plain", b"abc", true);
        assert!(core::str::from_utf8(&h).unwrap().ends_with("\r\n\r\n"));
        let e = error_response(405);
        let t = core::str::from_utf8(&e).unwrap();
        assert!(t.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(t.contains("Allow: GET, HEAD\r\n"));
    }
}
