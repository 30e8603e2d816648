//! What an app may put in `start_response` (PEP 3333, PROTOCOLS.md §5.2, §5.6) and the
//! raw HTTP/1.1 response head that uwsgi sends back (§1.5, §6). Header values are
//! latin-1 text; anything that could split a header (CR, LF, other controls) is refused
//! so a request can never inject a response header.

/// Why `start_response` refused a status or header. The app is to blame: the request
/// answers 500 and the message names the offending value.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("status {0:?} is not '<3 digits> <reason>' without control characters")]
    Status(String),
    #[error("status {0:?} is an interim (1xx) response, which cannot be sent to the front server (nginx takes it as final)")]
    Interim(String),
    #[error("header name {0:?} is not an HTTP token")]
    Name(String),
    #[error("header {name:?} has a value with CR, LF or another control character")]
    Control { name: String },
    #[error("header {name:?} has text outside latin-1; encode it (e.g. RFC 8187) first")]
    NotLatin1 { name: String },
    #[error("Content-Length {0:?} is not a decimal number")]
    ContentLength(String),
    #[error("Content-Length is set twice")]
    DuplicateContentLength,
}

/// Hop-by-hop headers an app must not set (PEP 3333, RFC 9110 §7.6.1). The front server
/// owns the connection to the client, so these are dropped with a warning.
pub fn is_hop_by_hop(name: &str) -> bool {
    const HOP: &[&str] = &[
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    ];
    HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Checks a WSGI status string and returns its code.
pub fn parse_status(status: &str) -> Result<u16, HeaderError> {
    let bad = || HeaderError::Status(status.to_owned());
    let b = status.as_bytes();
    if b.len() < 4 || b[3] != b' ' || !b[..3].iter().all(u8::is_ascii_digit) || b[0] == b'0' {
        return Err(bad());
    }
    if status
        .chars()
        .any(|c| c.is_control() || u32::from(c) > 0xff)
    {
        return Err(bad());
    }
    let code = b[..3]
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    // PROTOCOLS.md §5.6: never an interim response (100 Continue, 101 Upgrade…).
    if code < 200 {
        return Err(HeaderError::Interim(status.to_owned()));
    }
    Ok(code)
}

/// RFC 9110 `token` characters.
fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// Checks one response header; names are tokens, values latin-1 without controls
/// (horizontal tab allowed).
pub fn check_header(name: &str, value: &str) -> Result<(), HeaderError> {
    if name.is_empty() || !name.bytes().all(is_tchar) {
        return Err(HeaderError::Name(name.to_owned()));
    }
    for c in value.chars() {
        if u32::from(c) > 0xff {
            return Err(HeaderError::NotLatin1 {
                name: name.to_owned(),
            });
        }
        if (c.is_control() && c != '\t') || c == '\u{7f}' {
            return Err(HeaderError::Control {
                name: name.to_owned(),
            });
        }
    }
    Ok(())
}

/// Parses an app's Content-Length value.
pub fn parse_content_length(value: &str) -> Result<u64, HeaderError> {
    let v = value.trim_matches([' ', '\t']);
    if v.is_empty() || v.len() > 19 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HeaderError::ContentLength(value.to_owned()));
    }
    v.parse()
        .map_err(|_| HeaderError::ContentLength(value.to_owned()))
}

/// Appends `text` as latin-1 bytes. The caller has checked every char is ≤ U+00FF.
pub fn push_latin1(out: &mut Vec<u8>, text: &str) {
    if text.is_ascii() {
        out.extend_from_slice(text.as_bytes());
    } else {
        out.extend(text.chars().map(|c| c as u32 as u8));
    }
}

/// How a response head starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadStyle {
    /// `HTTP/1.1 200 OK`: what nginx and Apache's mod_proxy_uwsgi accept over uwsgi (§1.5).
    Http,
    /// `Status: 200 OK` (CGI, RFC 3875 §6.3.3): FastCGI has no status line (nginx
    /// silently turns one into 200, Apache refuses it) and SCGI follows CGI (§2.10, §3).
    Cgi,
}

/// Writes `HTTP/1.1 <status>\r\n`, each `Name: value\r\n`, and the blank line.
pub fn write_http_head<'h>(
    out: &mut Vec<u8>,
    status: &str,
    headers: impl IntoIterator<Item = (&'h str, &'h str)>,
) {
    write_head(out, HeadStyle::Http, status, headers)
}

/// Writes the status line or `Status:` header, each `Name: value\r\n`, and the blank line.
pub fn write_head<'h>(
    out: &mut Vec<u8>,
    style: HeadStyle,
    status: &str,
    headers: impl IntoIterator<Item = (&'h str, &'h str)>,
) {
    out.extend_from_slice(match style {
        HeadStyle::Http => b"HTTP/1.1 ",
        HeadStyle::Cgi => b"Status: ",
    });
    push_latin1(out, status);
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        push_latin1(out, value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A small plain-text response postern answers by itself (400, 413, 431, 500 …).
pub fn plain_response(style: HeadStyle, code: u16, reason: &str, body: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + body.len());
    write_head(
        &mut out,
        style,
        &format!("{code} {reason}"),
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", body.len().to_string().as_str()),
        ],
    );
    out.extend_from_slice(body.as_bytes());
    out
}

/// True when this status never carries a body (RFC 9110 §6.4.1).
pub fn status_has_no_body(code: u16) -> bool {
    (100..200).contains(&code) || code == 204 || code == 304
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_good_statuses() {
        assert_eq!(parse_status("200 OK"), Ok(200));
        assert_eq!(parse_status("404 "), Ok(404));
        assert_eq!(parse_status("599 Très bien"), Ok(599));
    }

    #[test]
    fn rejects_bad_statuses() {
        for s in [
            "200",
            "OK 200",
            "20 OK",
            "2000 OK",
            "200\tOK",
            "200 OK\r\nX: y",
            "099 x",
            "200 €",
        ] {
            assert!(parse_status(s).is_err(), "{s:?}");
        }
        for s in ["100 Continue", "101 Switching Protocols", "103 Early Hints"] {
            assert!(
                matches!(parse_status(s), Err(HeaderError::Interim(_))),
                "{s:?}"
            );
        }
    }

    #[test]
    fn rejects_header_injection() {
        assert!(matches!(
            check_header("X-A", "a\r\nSet-Cookie: x=1"),
            Err(HeaderError::Control { .. })
        ));
        assert!(matches!(
            check_header("X-A", "a\nb"),
            Err(HeaderError::Control { .. })
        ));
        assert!(matches!(
            check_header("X-A", "a\0b"),
            Err(HeaderError::Control { .. })
        ));
        assert!(matches!(
            check_header("X A", "v"),
            Err(HeaderError::Name(_))
        ));
        assert!(matches!(
            check_header("X:A", "v"),
            Err(HeaderError::Name(_))
        ));
        assert!(matches!(check_header("", "v"), Err(HeaderError::Name(_))));
        assert!(matches!(
            check_header("X-A", "€"),
            Err(HeaderError::NotLatin1 { .. })
        ));
        assert_eq!(check_header("X-A", "caf\u{e9}\tok"), Ok(()));
    }

    #[test]
    fn writes_a_latin1_head() {
        let mut out = Vec::new();
        write_http_head(
            &mut out,
            "200 OK",
            [("X-A", "caf\u{e9}"), ("Set-Cookie", "a=1")],
        );
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nX-A: caf\xe9\r\nSet-Cookie: a=1\r\n\r\n"
        );
    }

    #[test]
    fn knows_hop_by_hop_headers() {
        assert!(is_hop_by_hop("Connection"));
        assert!(is_hop_by_hop("transfer-encoding"));
        assert!(!is_hop_by_hop("Content-Length"));
    }

    #[test]
    fn parses_content_length() {
        assert_eq!(parse_content_length("12"), Ok(12));
        assert!(parse_content_length("-1").is_err());
        assert!(parse_content_length("").is_err());
    }
}
