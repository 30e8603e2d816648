//! What an app may put in `start_response` (PEP 3333, docs/protocols.md §5.2, §5.6) and the
//! raw HTTP/1.1 response head that uwsgi sends back (§1.5, §6). Header values are
//! latin-1 text; anything that could split a header (CR, LF, other controls) is refused
//! so a request can never inject a response header.
//!
//! The other direction too: a CGI response (FastCGI, SCGI) read back into a status and
//! headers, and turned into the HTTP response nginx would send ([`cgi_to_http`]), for
//! `postern request` and `postern bench`.

/// Why `start_response` refused a status or header. The app is to blame: the request
/// answers 500 and the message names the offending value.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("status {0:?} is not '<3 digits> <reason>' without control characters")]
    Status(String),
    #[error("status {0:?} is not a code from 100 to 999: a status code is 3 digits, the first 1 to 9 (RFC 9110 §15)")]
    Range(String),
    #[error("status {0:?} is an interim (1xx) response, which cannot be sent to the front server (nginx takes it as final)")]
    Interim(String),
    #[error("header name {0:?} is not an HTTP token")]
    Name(String),
    #[error("header {name:?} has a value with CR, LF or another control character (ASCII: C0 but the tab, or DEL)")]
    Control { name: String },
    #[error("header {name:?} has text outside latin-1; encode it (e.g. RFC 8187) first")]
    NotLatin1 { name: String },
    #[error("Content-Length {0:?} is not a decimal number")]
    ContentLength(String),
    #[error("Content-Length is set twice with different values ({first}, then {then})")]
    DuplicateContentLength { first: u64, then: u64 },
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

/// A hop-by-hop header that only says what to do with the connection: `Keep-Alive`, or
/// `Connection` with nothing but `keep-alive`/`close` in it. Frameworks set these on
/// server-sent event streams (Litestar does on every one): dropped like any hop-by-hop
/// header, but at debug level, as nothing the app meant is lost (the front server keeps
/// or closes the client's connection itself).
pub fn is_connection_noise(name: &str, value: &[u8]) -> bool {
    if name.eq_ignore_ascii_case("keep-alive") {
        return true;
    }
    name.eq_ignore_ascii_case("connection")
        && value.split(|&b| b == b',').all(|t| {
            let t = t.trim_ascii();
            t.eq_ignore_ascii_case(b"keep-alive") || t.eq_ignore_ascii_case(b"close")
        })
}

/// Checks a WSGI status string and returns its code. A bare code (`"200"`) is taken
/// too, though PEP 3333 asks for a reason: uWSGI and gunicorn pass it, so apps that
/// send it exist, and the response gets the usual reason ([`complete_status`]).
pub fn parse_status(status: &str) -> Result<u16, HeaderError> {
    let bad = || HeaderError::Status(status.to_owned());
    let b = status.as_bytes();
    if b.len() < 3 || (b.len() > 3 && b[3] != b' ') || !b[..3].iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    // The usual status is printable ASCII: one table lookup a byte (a tab is a control
    // here); anything else is read as text.
    // 0x80-0xFF pass (obs-text, as in header values); ASCII controls do not.
    // regression (review of 8928b26): C1 was refused here still.
    let printable = all_bytes(b, PLAIN) && !b.contains(&b'\t');
    if !printable
        && status
            .chars()
            .any(|c| c < ' ' || c == '\u{7f}' || u32::from(c) > 0xff)
    {
        return Err(bad());
    }
    let code = b[..3]
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    check_code(code, || status.to_owned())
}

/// Checks the code of a final response, WSGI's or ASGI's: 200 to 999. `shown` gives the
/// status as the app wrote it, for the error.
pub fn check_code(code: u16, shown: impl FnOnce() -> String) -> Result<u16, HeaderError> {
    match code {
        // docs/protocols.md §5.6: never an interim response (100 Continue, 101 Upgrade…).
        100..=199 => Err(HeaderError::Interim(shown())),
        // RFC 9110 §15 defines 100 to 599 only, but the status line's grammar is 3 digits,
        // and nginx, uWSGI and gunicorn pass 600 to 999 on as sent (999 is a common
        // anti-bot answer): so do we; the caller warns (`PAST_DEFINED`).
        200..=999 => Ok(code),
        _ => Err(HeaderError::Range(shown())),
    }
}

/// Codes past this one are outside those RFC 9110 §15 defines: passed on, with a warning.
pub const PAST_DEFINED: u16 = 599;

/// What a byte may be in a response header, one table lookup per byte (this runs for
/// every byte of every header of every response): bit [`TCHAR`] a name's byte (an
/// RFC 9110 token character), bit [`PLAIN`] a value's byte in the usual case
/// (printable ASCII or a tab; anything else is checked as latin-1 text).
static HEADER_BYTE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        let tchar = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        if tchar {
            t[b] |= TCHAR;
        }
        if (c >= b' ' && c < 0x7f) || c == b'\t' {
            t[b] |= PLAIN;
        }
        b += 1;
    }
    t
};
const TCHAR: u8 = 1;
const PLAIN: u8 = 2;

/// True when every byte of `s` has `bit` in [`HEADER_BYTE`] (no early exit: the usual
/// header passes, and a branch per byte costs more than the lookups).
#[inline]
fn all_bytes(s: &[u8], bit: u8) -> bool {
    s.iter()
        .fold(bit, |acc, &b| acc & HEADER_BYTE[usize::from(b)])
        == bit
}

/// True when every byte of `name` is an RFC 9110 token character (what a header name
/// may be made of; empty is not checked here).
#[inline]
pub fn is_token(name: &[u8]) -> bool {
    all_bytes(name, TCHAR)
}

/// Checks one response header; names are tokens, values latin-1 without ASCII
/// controls (C0 but the horizontal tab, DEL). Bytes 0x80-0xFF pass, 0x80-0x9F too: RFC
/// 9110's obs-text, and what a UTF-8 value sent as latin-1 text (PEP 3333's way to
/// send bytes) is made of ('—', '€', 'ł' each have such a byte); gunicorn, uWSGI, h11
/// and nginx pass them.
pub fn check_header(name: &str, value: &str) -> Result<(), HeaderError> {
    if name.is_empty() || !all_bytes(name.as_bytes(), TCHAR) {
        return Err(HeaderError::Name(name.to_owned()));
    }
    // The usual value: printable ASCII (and tabs).
    if all_bytes(value.as_bytes(), PLAIN) {
        return Ok(());
    }
    for c in value.chars() {
        if u32::from(c) > 0xff {
            return Err(HeaderError::NotLatin1 {
                name: name.to_owned(),
            });
        }
        // regression (audit): C1 (U+0080-U+009F) was refused too, so a UTF-8 filename
        // in Content-Disposition answered 500.
        if (c < ' ' && c != '\t') || c == '\u{7f}' {
            return Err(HeaderError::Control {
                name: name.to_owned(),
            });
        }
    }
    Ok(())
}

/// The response's Content-Length once the app set one (`then`) after `first` (the one
/// it set before, if any). The same value twice is one length, sent once: RFC 9110
/// §8.6 lets a recipient take identical values as one, and a second line would make
/// nginx refuse the response (`upstream sent duplicate header line`, a 502). Different
/// values are refused: no length can be trusted.
pub fn one_length(first: Option<u64>, then: u64) -> Result<u64, HeaderError> {
    match first {
        Some(first) if first != then => Err(HeaderError::DuplicateContentLength { first, then }),
        _ => Ok(then),
    }
}

/// Parses an app's Content-Length value.
pub fn parse_content_length(value: &str) -> Result<u64, HeaderError> {
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let b = value.as_bytes();
    let start = b.iter().position(|c| !blank(c)).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !blank(c)).map_or(start, |i| i + 1);
    let v = &b[start..end];
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(HeaderError::ContentLength(value.to_owned()));
    }
    // At most 19 digits: below u64::MAX, no overflow.
    Ok(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
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
        push_header_line(out, name, value);
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends one `Name: value\r\n` line (the value as latin-1): a header [`check_header`]
/// accepted, as [`write_head`] writes it. With [`write_head_lines`], a head can be
/// built while the headers are checked and written later without reading them again.
pub fn push_header_line(out: &mut Vec<u8>, name: &str, value: &str) {
    out.reserve(name.len() + value.len() + 4);
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    push_latin1(out, value);
    out.extend_from_slice(b"\r\n");
}

/// [`write_head`] from parts already encoded: `status` as latin-1 bytes, `lines` as
/// [`push_header_line`] wrote them.
pub fn write_head_lines(out: &mut Vec<u8>, style: HeadStyle, status: &[u8], lines: &[u8]) {
    out.reserve(status.len() + lines.len() + 12);
    out.extend_from_slice(match style {
        HeadStyle::Http => b"HTTP/1.1 ",
        HeadStyle::Cgi => b"Status: ",
    });
    out.extend_from_slice(status);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(lines);
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

/// Why a response head could not be read: a CGI response (FastCGI STDOUT, SCGI; RFC 3875
/// §6) whose header block is malformed, or a status line without a code. The server that
/// sent it is to blame.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CgiHeadError {
    #[error("the response is empty (no CGI header block)")]
    Empty,
    #[error("the CGI header block does not end (no empty line after the headers)")]
    Unterminated,
    #[error("CGI header line {0:?} has no ':'")]
    NoColon(String),
    #[error("bad CGI header name in {0:?}")]
    Name(String),
    #[error("bad Status header {0:?}")]
    Status(String),
    #[error("the CGI response has two Status headers")]
    TwoStatus,
    #[error("the HTTP status line has no status code")]
    StatusLine,
}

/// A CGI response head, read in place.
#[derive(Debug, PartialEq, Eq)]
pub struct CgiHead<'a> {
    /// From the `Status` header; without one, 302 when `Location` is set, else 200.
    pub code: u16,
    /// The `Status` header's reason phrase, or the usual one for the code ("" if none).
    pub reason: &'a [u8],
    /// Every header line but `Status`, in order, without its line end.
    pub headers: Vec<&'a [u8]>,
    /// Where the body starts: just after the empty line.
    pub body_start: usize,
}

impl<'a> CgiHead<'a> {
    /// The value of the first header called `name` (ASCII case-insensitive), trimmed.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers.iter().find_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            line[..colon]
                .eq_ignore_ascii_case(name.as_bytes())
                .then(|| line[colon + 1..].trim_ascii())
        })
    }
}

/// Status code from a first line `HTTP/1.x NNN …` or `Status: NNN …`.
pub fn status_code(resp: &[u8]) -> Option<u16> {
    let first = resp.split(|&b| b == b'\n').next()?;
    let line = String::from_utf8_lossy(first);
    let code = if line.starts_with("HTTP/") {
        line.split_whitespace().nth(1)?
    } else {
        line.strip_prefix("Status:")?.split_whitespace().next()?
    };
    code.parse().ok()
}

/// Reads a CGI response head (RFC 3875 §6): header lines up to the first empty one (CRLF
/// or bare LF endings, as CGI allows), each `Name: value`, at most one `Status`.
/// `resp` must hold the whole head; bytes after it are the body, left unread.
pub fn parse_cgi_head(resp: &[u8]) -> Result<CgiHead<'_>, CgiHeadError> {
    let mut head = CgiHead {
        code: 200,
        reason: b"",
        headers: Vec::new(),
        body_start: 0,
    };
    let mut status: Option<(u16, &[u8])> = None;
    let mut has_location = false;
    let mut pos = 0;
    loop {
        let Some(nl) = resp[pos..].iter().position(|&b| b == b'\n') else {
            return Err(if resp.is_empty() {
                CgiHeadError::Empty
            } else {
                CgiHeadError::Unterminated
            });
        };
        let line = &resp[pos..pos + nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        pos += nl + 1;
        if line.is_empty() {
            break;
        }
        let lossy = || String::from_utf8_lossy(line).into_owned();
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| CgiHeadError::NoColon(lossy()))?;
        let name = &line[..colon];
        if name.is_empty() || name.iter().any(|b| b.is_ascii_whitespace()) {
            return Err(CgiHeadError::Name(lossy()));
        }
        if name.eq_ignore_ascii_case(b"Status") {
            if status.is_some() {
                return Err(CgiHeadError::TwoStatus);
            }
            status = Some(parse_cgi_status(line[colon + 1..].trim_ascii())?);
            continue;
        }
        has_location |= name.eq_ignore_ascii_case(b"Location");
        head.headers.push(line);
    }
    (head.code, head.reason) = status.unwrap_or_else(|| {
        let code = if has_location { 302 } else { 200 };
        (code, reason_phrase(code).as_bytes())
    });
    head.body_start = pos;
    Ok(head)
}

/// Turns a CGI response into the HTTP/1.1 response nginx would send: the `Status` header
/// becomes the status line (see [`parse_cgi_head`]), the other headers follow in order
/// with CRLF endings, then the body untouched. Returns the status code too.
///
/// A response that already starts with an HTTP status line (nginx accepts one over SCGI)
/// is returned as it is.
pub fn cgi_to_http(resp: &[u8]) -> Result<(u16, Vec<u8>), CgiHeadError> {
    if resp.starts_with(b"HTTP/") {
        let code = status_code(resp).ok_or(CgiHeadError::StatusLine)?;
        return Ok((code, resp.to_vec()));
    }
    let head = parse_cgi_head(resp)?;
    let mut out = Vec::with_capacity(resp.len() + 16);
    out.extend_from_slice(format!("HTTP/1.1 {} ", head.code).as_bytes());
    out.extend_from_slice(head.reason);
    out.extend_from_slice(b"\r\n");
    for line in &head.headers {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&resp[head.body_start..]);
    Ok((head.code, out))
}

/// A `Status` value: three digits (100–999), then an optional reason phrase; without
/// one, the usual phrase for the code.
fn parse_cgi_status(value: &[u8]) -> Result<(u16, &[u8]), CgiHeadError> {
    let bad = || CgiHeadError::Status(String::from_utf8_lossy(value).into_owned());
    let digits = value.get(..3).ok_or_else(bad)?;
    if !digits.iter().all(u8::is_ascii_digit) || value.get(3).is_some_and(|&b| b != b' ') {
        return Err(bad());
    }
    let code = digits
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    if code < 100 {
        return Err(bad());
    }
    let reason = value[3..].trim_ascii();
    Ok((
        code,
        if reason.is_empty() {
            reason_phrase(code).as_bytes()
        } else {
            reason
        },
    ))
}

/// Completes a status [`parse_status`] took as a bare code in `head` (where the status
/// was just written): `"200"` is sent as `"200 OK"`, `"999"` as `"999 Unknown"`
/// ([`reason_or_unknown`]). A reason of spaces alone (`"200 "`) is none: over FastCGI
/// and SCGI nginx trims it and sends a status line without the space RFC 9112 asks for.
/// regression (probe 338): `"200 "` went out as `HTTP/1.1 200` through `fastcgi_pass`.
pub fn complete_status(head: &mut Vec<u8>, status: &str, code: u16) {
    if status.len() == 3 || status.as_bytes()[3..].iter().all(|&b| b == b' ') {
        // parse_status let through nothing but spaces after the code: one byte each.
        head.truncate(head.len() - (status.len() - 3));
        head.push(b' ');
        head.extend_from_slice(reason_or_unknown(code).as_bytes());
    }
}

/// The reason phrase postern gives a status that came without one (a WSGI bare code,
/// every ASGI status): the standard one, else "Unknown", so that WSGI and ASGI, and
/// every protocol, send the same status line for a code without a standard phrase.
pub fn reason_or_unknown(code: u16) -> &'static str {
    match reason_phrase(code) {
        "" => "Unknown",
        r => r,
    }
}

/// The standard reason phrase of a registered status code: the IANA registry's, in the
/// words of RFC 9110 as Python 3.13's `http.HTTPStatus` has them (418 included); "" for
/// the others.
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Continue",
        101 => "Switching Protocols",
        102 => "Processing",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        207 => "Multi-Status",
        208 => "Already Reported",
        226 => "IM Used",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        305 => "Use Proxy",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        418 => "I'm a Teapot",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        423 => "Locked",
        424 => "Failed Dependency",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        506 => "Variant Also Negotiates",
        507 => "Insufficient Storage",
        508 => "Loop Detected",
        510 => "Not Extended",
        511 => "Network Authentication Required",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_keep_alive_and_close_are_noise_other_hop_by_hop_headers_not() {
        assert!(is_connection_noise("Connection", b"keep-alive"));
        assert!(is_connection_noise("connection", b"Close"));
        assert!(is_connection_noise("Connection", b" keep-alive , close"));
        assert!(is_connection_noise("Keep-Alive", b"timeout=5"));
        assert!(!is_connection_noise("Connection", b"upgrade"));
        assert!(!is_connection_noise("Connection", b"keep-alive, X-Secret"));
        assert!(!is_connection_noise("Transfer-Encoding", b"chunked"));
        assert!(!is_connection_noise("Upgrade", b"websocket"));
    }

    #[test]
    fn a_head_built_from_lines_is_the_head_write_head_builds() {
        let headers = [("Content-Type", "text/plain"), ("X-Name", "Zoë\tx")];
        for style in [HeadStyle::Http, HeadStyle::Cgi] {
            let mut whole = Vec::new();
            write_head(&mut whole, style, "200 Très bien", headers);
            let (mut status, mut lines) = (Vec::new(), Vec::new());
            push_latin1(&mut status, "200 Très bien");
            for (n, v) in headers {
                push_header_line(&mut lines, n, v);
            }
            let mut parts = Vec::new();
            write_head_lines(&mut parts, style, &status, &lines);
            assert_eq!(parts, whole);
        }
    }

    #[test]
    fn header_bytes_follow_the_token_and_value_rules() {
        for b in 0..=255u8 {
            let c = b as char;
            let name = c.to_string();
            let tchar = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            assert_eq!(check_header(&name, "v").is_ok(), tchar, "name byte {b:#x}");
            // As a value: tabs, printable ASCII and 0x80-0xFF (obs-text) pass, ASCII
            // controls (C0, DEL) do not.
            let ok = b == b'\t' || (b' '..0x7f).contains(&b) || b >= 0x80;
            assert_eq!(check_header("X", &name).is_ok(), ok, "value char {b:#x}");
        }
        assert_eq!(parse_content_length(" 0019\t"), Ok(19));
        assert_eq!(
            parse_content_length("9999999999999999999"),
            Ok(9_999_999_999_999_999_999)
        );
    }

    #[test]
    fn accepts_good_statuses() {
        assert_eq!(parse_status("200 OK"), Ok(200));
        assert_eq!(parse_status("404 "), Ok(404));
        assert_eq!(parse_status("599 Très bien"), Ok(599));
        // regression (review of 8928b26): obs-text 0x80-0x9F, as a UTF-8 '—' sent as
        // latin-1 text has (E2 80 94), was refused in the reason.
        assert_eq!(parse_status("200 Ok \u{e2}\u{80}\u{94}"), Ok(200));
        // A bare code, which uWSGI and gunicorn pass, completed with the usual reason.
        assert_eq!(parse_status("200"), Ok(200));
        // regression: a code without a standard phrase went out as "999 " (uwsgi) or
        // "999" (FastCGI) where ASGI sends "999 Unknown".
        for (status, sent) in [
            ("200", "200 OK"),
            ("299", "299 Unknown"),
            ("999", "999 Unknown"),
            ("404 Nope", "404 Nope"),
            ("299 ", "299 Unknown"),
            ("200   ", "200 OK"),
            ("200  x", "200  x"),
        ] {
            let mut head = status.as_bytes().to_vec();
            complete_status(&mut head, status, parse_status(status).unwrap());
            assert_eq!(head, sent.as_bytes());
        }
    }

    #[test]
    fn rejects_bad_statuses() {
        for s in [
            "20",
            "2000",
            "OK 200",
            "20 OK",
            "2000 OK",
            "200\tOK",
            "200 OK\r\nX: y",
            "200 O\u{7f}K",
            "200 O\u{1}K",
            "200 €",
        ] {
            assert!(parse_status(s).is_err(), "{s:?}");
        }
        // Not a code from 100 to 999 (600 to 999 pass: see accepts_codes_past_599).
        for s in ["099 x", "000"] {
            assert_eq!(
                parse_status(s),
                Err(HeaderError::Range(s.to_owned())),
                "{s:?}"
            );
        }
        for s in ["100 Continue", "101 Switching Protocols", "103 Early Hints"] {
            assert!(
                matches!(parse_status(s), Err(HeaderError::Interim(_))),
                "{s:?}"
            );
        }
    }

    // regression: codes 600 to 999 were refused (500), though nginx, uWSGI and gunicorn pass
    // them on; an app answering 999 to bots worked under uWSGI.
    #[test]
    fn accepts_codes_past_599() {
        for (s, code) in [
            ("600 Odd", 600),
            ("999 Odd", 999),
            ("999", 999),
            ("599 X", 599),
        ] {
            assert_eq!(parse_status(s), Ok(code), "{s:?}");
        }
        for code in [0, 42, 99, 1000, u16::MAX] {
            assert_eq!(
                check_code(code, || code.to_string()),
                Err(HeaderError::Range(code.to_string()))
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

    #[test]
    fn reads_status_codes() {
        assert_eq!(status_code(b"HTTP/1.1 503 Busy\r\n\r\n"), Some(503));
        assert_eq!(status_code(b"Status: 200 OK\r\n\r\n"), Some(200));
        assert_eq!(status_code(b"garbage"), None);
    }

    #[test]
    fn converts_cgi_heads_to_http() {
        let (code, http) =
            cgi_to_http(b"Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nnope").unwrap();
        assert_eq!(code, 404);
        assert_eq!(
            http,
            b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n\r\nnope"
        );
        // No Status: 200; the Status header may come anywhere; LF line ends become CRLF.
        let (code, http) = cgi_to_http(b"Content-Type: text/html\n\n<p>\r\n\r\n").unwrap();
        assert_eq!(code, 200);
        assert_eq!(
            http,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<p>\r\n\r\n"
        );
        let (code, http) = cgi_to_http(b"X-A: 1\r\nstatus:503\r\nX-B: 2\r\n\r\n").unwrap();
        assert_eq!(code, 503);
        assert_eq!(
            http,
            b"HTTP/1.1 503 Service Unavailable\r\nX-A: 1\r\nX-B: 2\r\n\r\n"
        );
        // Location without Status: 302.
        let (code, http) = cgi_to_http(b"Location: /there\r\n\r\n").unwrap();
        assert_eq!(code, 302);
        assert_eq!(http, b"HTTP/1.1 302 Found\r\nLocation: /there\r\n\r\n");
        // Status wins over Location; an unknown code keeps an empty reason.
        let (code, http) = cgi_to_http(b"Status: 301\r\nLocation: /x\r\n\r\n").unwrap();
        assert_eq!(code, 301);
        assert!(http.starts_with(b"HTTP/1.1 301 Moved Permanently\r\n"));
        let (code, http) = cgi_to_http(b"Status: 599 Odd\r\n\r\n").unwrap();
        assert_eq!((code, &http[..]), (599, &b"HTTP/1.1 599 Odd\r\n\r\n"[..]));
        let (_, http) = cgi_to_http(b"Status: 299\r\n\r\n").unwrap();
        assert_eq!(http, b"HTTP/1.1 299 \r\n\r\n");
        // An HTTP status line (nginx accepts one over SCGI) is kept as it is.
        let (code, http) = cgi_to_http(b"HTTP/1.1 500 Oops\r\n\r\nx").unwrap();
        assert_eq!((code, &http[..]), (500, &b"HTTP/1.1 500 Oops\r\n\r\nx"[..]));
    }

    #[test]
    fn rejects_broken_cgi_heads() {
        assert_eq!(cgi_to_http(b""), Err(CgiHeadError::Empty));
        assert_eq!(
            cgi_to_http(b"Content-Type: text/plain\r\n"),
            Err(CgiHeadError::Unterminated)
        );
        assert!(matches!(
            cgi_to_http(b"no colon here\r\n\r\n"),
            Err(CgiHeadError::NoColon(_))
        ));
        assert!(matches!(
            cgi_to_http(b"Bad Name: x\r\n\r\n"),
            Err(CgiHeadError::Name(_))
        ));
        for bad in ["abc", "2000", "099"] {
            let resp = format!("Status: {bad}\r\n\r\n");
            assert!(
                matches!(cgi_to_http(resp.as_bytes()), Err(CgiHeadError::Status(_))),
                "{bad}"
            );
        }
        assert_eq!(
            cgi_to_http(b"Status: 200\r\nStatus: 500\r\n\r\n"),
            Err(CgiHeadError::TwoStatus)
        );
        assert_eq!(
            cgi_to_http(b"HTTP/1.1\r\n\r\n"),
            Err(CgiHeadError::StatusLine)
        );
    }

    #[test]
    fn reads_a_cgi_head_in_place() {
        let resp = b"Content-Type: text/plain\nStatus: 201\r\ncontent-length: 2 \r\n\r\nok";
        let head = parse_cgi_head(resp).unwrap();
        assert_eq!((head.code, head.reason), (201, &b"Created"[..]));
        assert_eq!(head.header("Content-Length"), Some(&b"2"[..]));
        assert_eq!(head.header("Status"), None);
        assert_eq!(&resp[head.body_start..], b"ok");
        // Every prefix that stops before the empty line is incomplete or empty.
        let end = head.body_start;
        for i in 0..end {
            assert!(
                matches!(
                    parse_cgi_head(&resp[..i]),
                    Err(CgiHeadError::Empty | CgiHeadError::Unterminated)
                ),
                "{i}"
            );
        }
    }
}
