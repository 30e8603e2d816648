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

/// What a head over `limit` bytes can do about it.
fn buffer_hint(limit: &usize) -> &'static str {
    if *limit < 65535 {
        "raise --buffer-size, up to 65535"
    } else {
        "--buffer-size is at its most, 65535: the request must carry fewer or shorter headers"
    }
}

/// A request the peer framed wrongly. Every variant is the peer's fault: log it at
/// `warn` with the peer, and close the connection.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    #[error("uwsgi modifier1 {0} is not a WSGI request; only 0 (and 30) are served")]
    Modifier(u8),
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
    #[error("SCGI netstring length is not 1-7 decimal digits (no leading zero) followed by ':'")]
    ScgiLength,
    #[error("SCGI header block is not followed by ','")]
    ScgiComma,
    #[error("malformed SCGI headers: {0}")]
    ScgiHeaders(&'static str),
}

#[cfg(test)]
mod tests {
    use super::ProtoError;

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
