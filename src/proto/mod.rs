//! PURE protocol code: no tokio, pyo3, tracing or I/O. `&[u8]` in, typed views out,
//! so that every function here can be unit-tested and fuzzed on its own.
//!
//! - [`uwsgi`]: the uwsgi packet header and vars block (docs/protocols.md §1).
//! - [`fastcgi`]: FastCGI records, name/value pairs and the per-connection state
//!   machine (§2).
//! - [`scgi`]: the SCGI netstring head (§3).
//! - [`cgi`]: CGI → WSGI environ rules that do not need Python (§4).
//! - [`asgi`]: the same variables → ASGI HTTP scope fields (§7).
//! - [`response`]: status/header validation and the raw HTTP/1.1 response head (§5, §6);
//!   a CGI response head read back as HTTP (what a client or nginx makes of it).

pub mod asgi;
pub mod cgi;
pub mod fastcgi;
#[cfg(test)]
pub(crate) mod props;
pub mod response;
pub mod scgi;
pub mod uwsgi;

/// One of the three protocols a front server may speak to a socket, as
/// [`looks_like`] tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spoken {
    Uwsgi,
    FastCgi,
    Scgi,
}

impl Spoken {
    pub fn name(self) -> &'static str {
        match self {
            Spoken::Uwsgi => "uwsgi",
            Spoken::FastCgi => "FastCGI",
            Spoken::Scgi => "SCGI",
        }
    }

    /// nginx's directive for it.
    pub fn pass(self) -> &'static str {
        match self {
            Spoken::Uwsgi => "uwsgi_pass",
            Spoken::FastCgi => "fastcgi_pass",
            Spoken::Scgi => "scgi_pass",
        }
    }

    /// postern's listener option for it.
    pub fn option(self) -> &'static str {
        match self {
            Spoken::Uwsgi => "--uwsgi",
            Spoken::FastCgi => "--fastcgi",
            Spoken::Scgi => "--scgi",
        }
    }
}

impl std::fmt::Display for Spoken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which protocol the start of a request looks like, for the error when a front server
/// speaks another one than the socket's (nginx `fastcgi_pass` to a `--uwsgi`
/// listener): a uwsgi header as nginx writes it (modifier1 0 or 30, modifier2 0), a
/// FastCGI record of version 1 that begins a request or asks for values, an SCGI
/// netstring length (digits, no leading zero, then `:`). `Err(())`: too few bytes to
/// say (at most 8 are needed); `Ok(None)`: none of them.
pub(crate) fn looks_like(buf: &[u8]) -> Result<Option<Spoken>, ()> {
    match buf {
        [1, 1 | 9, ..] => Ok(Some(Spoken::FastCgi)),
        [1] => Err(()),
        [0 | 30, _, _, 0, ..] => Ok(Some(Spoken::Uwsgi)),
        [0 | 30, rest @ ..] if rest.len() < 3 => Err(()),
        [b'1'..=b'9', rest @ ..] => {
            let digits = rest
                .iter()
                .take(7)
                .take_while(|b| b.is_ascii_digit())
                .count();
            // At most 7 digits in all.
            match rest.get(digits) {
                Some(b':') if digits < 7 => Ok(Some(Spoken::Scgi)),
                None if digits < 7 => Err(()),
                _ => Ok(None),
            }
        }
        _ => Ok(None),
    }
}

/// The article's `n` before a protocol's name ("an SCGI", "a uwsgi").
fn an(socket: &str) -> &'static str {
    if socket.starts_with('S') {
        "n"
    } else {
        ""
    }
}

/// What a head over `limit` bytes can do about it.
fn buffer_hint(limit: &usize) -> &'static str {
    if *limit < 65535 {
        "raise --buffer-size, up to 65535"
    } else {
        "--buffer-size is at its most, 65535: the request must carry fewer or shorter headers"
    }
}

/// What the first bytes on a connection say about a protocol other than the socket's
/// that a front server can be set to speak to postern by mistake ([`sniff`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sniff {
    /// A PROXY protocol header, v1 (`PROXY TCP4 …`) or v2 (its 12-byte signature).
    Proxy,
    /// A TLS record: handshake (22), version 3.x.
    Tls,
    /// The bytes so far start one of those: wait for more before saying what they are.
    Partial,
    /// Neither.
    Other,
}

/// The PROXY protocol v1 line starts with this.
const PROXY_V1: &[u8] = b"PROXY ";
/// The PROXY protocol v2 signature.
const PROXY_V2: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// Tells a PROXY protocol header (HAProxy's `send-proxy`, nginx stream's
/// `proxy_protocol on`) or a TLS handshake (a front server speaking https or
/// `suwsgi://`) from the first bytes of a connection. None of them can start a uwsgi
/// packet (modifier1 0 or 30), a FastCGI record (version 1) or an SCGI netstring (a
/// digit), so the callers ask only when the bytes are not their protocol's.
pub(crate) fn sniff(buf: &[u8]) -> Sniff {
    if buf.is_empty() {
        return Sniff::Other;
    }
    let mut partial = false;
    for sig in [PROXY_V1, PROXY_V2] {
        if buf.starts_with(sig) {
            return Sniff::Proxy;
        }
        partial |= sig.starts_with(buf);
    }
    match buf {
        // A TLS record header: content type 22 (handshake), then major version 3 and a
        // minor one up to 4 (SSL 3.0 to TLS 1.3, which still says 3.1 or 3.3 here).
        [0x16, 0x03, minor, ..] if *minor <= 4 => Sniff::Tls,
        [0x16] | [0x16, 0x03] => Sniff::Partial,
        _ if partial => Sniff::Partial,
        _ => Sniff::Other,
    }
}

/// Longest HTTP method word waited for before bytes that start with an uppercase letter
/// are called "not HTTP" (`BASELINE-CONTROL`, WebDAV, is 16).
const MAX_METHOD_LEN: usize = 20;

/// Classifies bytes that start with an uppercase letter, as HTTP sent to a uwsgi,
/// FastCGI or SCGI socket does (nginx's `proxy_pass` where `uwsgi_pass`,
/// `fastcgi_pass` or `scgi_pass` belongs): `Some(true)` for an HTTP method word
/// (uppercase letters, `-`, `_`) followed by a space, `Some(false)` for anything else,
/// `None` while the word is still arriving (at most [`MAX_METHOD_LEN`] + 1 bytes).
pub(crate) fn method_word(buf: &[u8]) -> Option<bool> {
    let word = buf
        .iter()
        .take(MAX_METHOD_LEN + 1)
        .take_while(|&&b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
        .count();
    match buf.get(word) {
        Some(&b) => Some(b == b' ' && word <= MAX_METHOD_LEN),
        None if word > MAX_METHOD_LEN => Some(false),
        None => None,
    }
}

/// A request the peer framed wrongly. Every variant is the peer's fault: log it at
/// `warn` with the peer, and close the connection.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    #[error("uwsgi modifier1 {0} is not a WSGI request; only 0 (and 30) are served")]
    Modifier(u8),
    /// The bytes are another protocol's ([`looks_like`]): `socket` is the listener's.
    #[error("{got} request received on a{} {socket} socket: the front server speaks {got} to it (nginx: {}); point it at this socket with {} (Apache: the matching ProxyPass scheme), or serve this socket as {} instead", an(.socket.name()), .got.pass(), .socket.pass(), .got.option())]
    WrongProtocol { got: Spoken, socket: Spoken },
    #[error("request head is {size} bytes, over the {limit}-byte limit ({})", buffer_hint(.limit))]
    HeadTooLarge { size: usize, limit: usize },
    #[error(
        "a uwsgi variable length at offset {offset} runs past the end of the {block}-byte vars block"
    )]
    VarOverrun { offset: usize, block: usize },
    #[error("HTTP request received on a uwsgi socket (use uwsgi_pass, not proxy_pass, in nginx)")]
    HttpOnUwsgi,
    #[error("CONTENT_LENGTH {0:?} is not a valid length (decimal digits, below 2^63)")]
    BadContentLength(String),
    /// A mounted path that reads as split at the mount by one front server's reading of
    /// REQUEST_URI and as the whole path by another (see `cgi::split_already`).
    #[error("REQUEST_URI {uri:?} reads both as the mount point then the path PATH_INFO holds and as that path whole, depending on how the front server treats `//` or `%2F` beside `..`: refused rather than guess which path the front server's rules saw")]
    AmbiguousPath { uri: String },
    /// Two lengths for one body: a request-smuggling shape, refused over every protocol.
    #[error("CONTENT_LENGTH sent twice with different values ({first:?}, then {then:?}): the body length is ambiguous")]
    ConflictingLength { first: String, then: String },
    #[error("FastCGI record version {0}, expected 1 (is the peer speaking FastCGI?)")]
    FcgiVersion(u8),
    #[error(
        "HTTP request received on a FastCGI socket (use fastcgi_pass, not proxy_pass, in nginx)"
    )]
    HttpOnFastcgi,
    #[error("FCGI_BEGIN_REQUEST body is {0} bytes, expected 8")]
    FcgiBeginBody(usize),
    #[error("FastCGI params of request {id} are {size} bytes, over the {limit}-byte limit ({})", buffer_hint(.limit))]
    FcgiParamsTooLarge { id: u16, size: usize, limit: usize },
    /// Refused as soon as the pair's lengths were read ([`fastcgi::pair_over_limit`]).
    #[error("FastCGI params of request {id} announce a name-value pair of {size} bytes, over the {limit}-byte limit ({}): refused without waiting for the rest", buffer_hint(.limit))]
    FcgiPairTooLarge { id: u16, size: usize, limit: usize },
    #[error(
        "a FastCGI name/value length at offset {offset} runs past the end of the {block}-byte block"
    )]
    FcgiPairOverrun { offset: usize, block: usize },
    #[error("FastCGI request {id}: {what}")]
    FcgiOutOfOrder { id: u16, what: &'static str },
    #[error("HTTP request received on an SCGI socket (use scgi_pass, not proxy_pass, in nginx)")]
    HttpOnScgi,
    /// `socket`: the socket's protocol; `pass`: nginx's directive for it.
    #[error("PROXY protocol header received on a{} {socket} socket: postern does not read it, and the front server passes the client's address (REMOTE_ADDR) itself: turn it off for postern (HAProxy: no send-proxy on this server; nginx: no proxy_protocol on in the stream block in front of postern; a proxy_protocol on a listen is about what nginx accepts from clients, not for postern)", an(socket))]
    ProxyProtocol { socket: &'static str },
    #[error("TLS handshake received on a{} {socket} socket: postern speaks plain {socket} and leaves TLS to the front server: point it at postern without TLS (nginx: {pass} host:port, without https://, suwsgi:// or ssl)", an(socket))]
    Tls {
        socket: &'static str,
        pass: &'static str,
    },
    #[error("SCGI netstring length is not 1-7 decimal digits (no leading zero) followed by ':'")]
    ScgiLength,
    #[error("SCGI header block is not followed by ','")]
    ScgiComma,
    #[error("malformed SCGI headers: {0}")]
    ScgiHeaders(&'static str),
}

#[cfg(test)]
mod tests {
    use super::{looks_like, sniff, ProtoError, Sniff, Spoken};

    // regression (probe 427): FastCGI sent to a uwsgi socket was `uwsgi modifier1 1 is
    // not a WSGI request`, SCGI `modifier1 50`: nothing said what the front server
    // spoke. Each parser names the protocol it got and the directive for its own.
    #[test]
    fn another_protocol_s_request_is_named_as_that_protocol() {
        let fastcgi = [1u8, 1, 0, 1, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        let uwsgi = [0u8, 0x20, 0, 0, 9, 0];
        let scgi = b"70:CONTENT_LENGTH\x000\x00";
        assert_eq!(looks_like(&fastcgi), Ok(Some(Spoken::FastCgi)));
        assert_eq!(looks_like(&uwsgi), Ok(Some(Spoken::Uwsgi)));
        assert_eq!(looks_like(scgi), Ok(Some(Spoken::Scgi)));
        for partial in [&[1u8][..], &[0], &[0, 5, 0], b"7", b"1234567"] {
            assert_eq!(looks_like(partial), Err(()), "{partial:?}");
        }
        for other in [
            &[1u8, 2][..],
            &[0, 5, 0, 1],
            b"0:",
            b"12345678:",
            b"7x",
            b"GET ",
        ] {
            assert_eq!(looks_like(other), Ok(None), "{other:?}");
        }
        let wrong = |got, socket| Some(ProtoError::WrongProtocol { got, socket });
        let max = super::uwsgi::MAX_DATASIZE;
        assert_eq!(
            super::uwsgi::parse_packet(&fastcgi, max).err(),
            wrong(Spoken::FastCgi, Spoken::Uwsgi)
        );
        assert_eq!(
            super::uwsgi::parse_packet(scgi, max).err(),
            wrong(Spoken::Scgi, Spoken::Uwsgi)
        );
        assert_eq!(
            super::fastcgi::parse_record(&uwsgi).err(),
            wrong(Spoken::Uwsgi, Spoken::FastCgi)
        );
        assert_eq!(
            super::fastcgi::parse_record(scgi).err(),
            wrong(Spoken::Scgi, Spoken::FastCgi)
        );
        assert_eq!(
            super::scgi::parse_head(&uwsgi, max).err(),
            wrong(Spoken::Uwsgi, Spoken::Scgi)
        );
        assert_eq!(
            super::scgi::parse_head(&fastcgi, max).err(),
            wrong(Spoken::FastCgi, Spoken::Scgi)
        );
        let said = ProtoError::WrongProtocol {
            got: Spoken::FastCgi,
            socket: Spoken::Uwsgi,
        }
        .to_string();
        assert_eq!(said, "FastCGI request received on a uwsgi socket: the front server speaks FastCGI to it (nginx: fastcgi_pass); point it at this socket with uwsgi_pass (Apache: the matching ProxyPass scheme), or serve this socket as --fastcgi instead");
        assert!(ProtoError::WrongProtocol {
            got: Spoken::Uwsgi,
            socket: Spoken::Scgi
        }
        .to_string()
        .starts_with("uwsgi request received on an SCGI socket"));
    }

    #[test]
    fn sniffs_proxy_protocol_and_tls() {
        assert_eq!(sniff(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"), Sniff::Proxy);
        assert_eq!(sniff(b"PROXY UNKNOWN\r\n"), Sniff::Proxy);
        assert_eq!(sniff(b"\r\n\r\n\0\r\nQUIT\n\x21\x11"), Sniff::Proxy);
        // A TLS 1.2/1.3 ClientHello's record header, and SSL 3.0's.
        assert_eq!(sniff(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]), Sniff::Tls);
        assert_eq!(sniff(&[0x16, 0x03, 0x00]), Sniff::Tls);
        // Prefixes wait; a byte off is neither.
        for partial in [
            &b"P"[..],
            b"PROX",
            b"PROXY",
            b"\r\n\r\n\0",
            &[0x16],
            &[0x16, 0x03],
        ] {
            assert_eq!(sniff(partial), Sniff::Partial, "{partial:?}");
        }
        for other in [
            &b"POST / HTTP/1.1\r\n"[..],
            b"PROXYX",
            b"PUT ",
            b"\r\n\r\nX",
            &[0x16, 0x03, 0x05],
            &[0x16, 0x02],
            &[0, 10, 0, 0],
            &[1, 1, 0, 1],
            b"70:",
            b"",
        ] {
            assert_eq!(sniff(other), Sniff::Other, "{other:?}");
        }
    }

    #[test]
    fn names_the_protocol_and_what_to_do() {
        let e = ProtoError::ProxyProtocol { socket: "uwsgi" };
        assert!(
            e.to_string().starts_with(
                "PROXY protocol header received on a uwsgi socket: postern does not read it"
            ),
            "{e}"
        );
        let e = ProtoError::Tls {
            socket: "FastCGI",
            pass: "fastcgi_pass",
        };
        assert!(e.to_string().starts_with("TLS handshake received on a FastCGI socket: postern speaks plain FastCGI and leaves TLS to the front server"), "{e}");
        assert!(
            e.to_string().contains("nginx: fastcgi_pass host:port"),
            "{e}"
        );
        let e = ProtoError::Tls {
            socket: "SCGI",
            pass: "scgi_pass",
        };
        assert!(e.to_string().contains("on an SCGI socket"), "{e}");
    }

    #[test]
    fn a_head_over_the_largest_buffer_does_not_say_raise_it() {
        let e = ProtoError::HeadTooLarge {
            size: 70_000,
            limit: 4096,
        };
        assert!(
            e.to_string()
                .ends_with("(raise --buffer-size, up to 65535)"),
            "{e}"
        );
        let e = ProtoError::HeadTooLarge {
            size: 70_000,
            limit: 65535,
        };
        assert!(!e.to_string().contains("raise"), "{e}");
        assert!(e.to_string().contains("at its most"), "{e}");
    }
}
