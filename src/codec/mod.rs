//! tokio-util `Decoder`s over the pure parsers in [`crate::proto`]: bookkeeping only
//! (state, limits, `split_to(..).freeze()`), no Python and no sockets.

pub mod fastcgi;
#[cfg(test)]
mod props;
pub mod uwsgi;

use std::ops::Range;

use bytes::Bytes;

use crate::proto::{self, ProtoError};

/// The protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    Uwsgi,
    FastCgi,
    Scgi,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Uwsgi => "uwsgi",
            Protocol::FastCgi => "fastcgi",
            Protocol::Scgi => "scgi",
        }
    }

    /// nginx's stock params file for this protocol (for hints in log lines).
    pub fn params_file(self) -> &'static str {
        match self {
            Protocol::Uwsgi => "uwsgi_params",
            Protocol::FastCgi => "fastcgi_params",
            Protocol::Scgi => "scgi_params",
        }
    }

    /// How responses start: a status line over uwsgi, a CGI `Status:` header over
    /// FastCGI and SCGI.
    pub fn head_style(self) -> proto::response::HeadStyle {
        match self {
            Protocol::Uwsgi => proto::response::HeadStyle::Http,
            _ => proto::response::HeadStyle::Cgi,
        }
    }
}

/// One request head, protocol-neutral: the bytes as received and where each variable
/// sits in them (hyper's record-the-indices trick: no copy per variable).
#[derive(Debug, Clone)]
pub struct Head {
    pub buf: Bytes,
    pub vars: Vec<(Range<u32>, Range<u32>)>,
    /// uwsgi modifier1 30 asks to strip SCRIPT_NAME from PATH_INFO.
    pub modifier30: bool,
    /// Body length announced by CONTENT_LENGTH (0 when absent).
    pub content_length: u64,
}

impl Head {
    /// The raw `(key, value)` pairs, in arrival order.
    pub fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.vars.iter().map(|(k, v)| {
            (
                &self.buf[k.start as usize..k.end as usize],
                &self.buf[v.start as usize..v.end as usize],
            )
        })
    }

    /// Appends a variable (copies the head once: for rare repairs only).
    pub fn push_var(&mut self, key: &[u8], value: &[u8]) {
        let mut buf = Vec::with_capacity(self.buf.len() + key.len() + value.len());
        buf.extend_from_slice(&self.buf);
        let k = buf.len() as u32..(buf.len() + key.len()) as u32;
        buf.extend_from_slice(key);
        let v = buf.len() as u32..(buf.len() + value.len()) as u32;
        buf.extend_from_slice(value);
        self.buf = Bytes::from(buf);
        self.vars.push((k, v));
    }

    /// The last value of `key`, if any.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        let at = |r: &Range<u32>| &self.buf[r.start as usize..r.end as usize];
        self.vars
            .iter()
            .rev()
            .find(|(k, _)| (k.end - k.start) as usize == key.len() && at(k) == key)
            .map(|(_, v)| at(v))
    }

    /// Body length per CGI: `CONTENT_LENGTH`, else `HTTP_CONTENT_LENGTH`, else 0; the
    /// same rule [`proto::cgi::normalise`] applies for the environ.
    pub fn body_length(&self) -> Result<u64, ProtoError> {
        Ok(self.announced_length()?.unwrap_or(0))
    }

    /// The body length the front server announced; `None` when it sent none (an empty
    /// value counts as none), as for a FastCGI body streamed to its end.
    pub fn announced_length(&self) -> Result<Option<u64>, ProtoError> {
        // One pass for both names (the last value of each counts). CONTENT_LENGTH
        // repeated with another non-empty value is refused (two lengths for one body);
        // an identical repeat counts once.
        let (mut cgi, mut http, mut seen): (Option<&[u8]>, _, Option<&[u8]>) = (None, None, None);
        let at = |r: &Range<u32>| &self.buf[r.start as usize..r.end as usize];
        for (k, v) in &self.vars {
            // Lengths first: most names are neither, and are not sliced at all.
            match k.end - k.start {
                14 if at(k) == b"CONTENT_LENGTH" => {
                    match seen {
                        Some(first) if !at(v).is_empty() && first != at(v) => {
                            return Err(proto::cgi::conflicting_length(first, at(v)))
                        }
                        _ if !at(v).is_empty() => seen = Some(at(v)),
                        _ => {}
                    }
                    cgi = Some(at(v));
                }
                19 if at(k) == b"HTTP_CONTENT_LENGTH" => http = Some(at(v)),
                _ => {}
            }
        }
        cgi.filter(|v| !v.is_empty())
            .or_else(|| http.filter(|v| !v.is_empty()))
            .map(proto::cgi::parse_content_length)
            .transpose()
    }
}

/// What goes wrong while framing a request. The peer is to blame for every variant
/// but `Io`.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Proto(#[from] ProtoError),
    #[error("connection closed after {got} bytes of an incomplete request head")]
    HeadTruncated { got: usize },
    #[error("connection closed after {got} of {expected} body bytes")]
    BodyTruncated { got: u64, expected: u64 },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A decoded piece of a request.
#[derive(Debug)]
pub enum Frame {
    Head(Head),
    /// Body bytes, in order; the last one completes CONTENT_LENGTH.
    Body(Bytes),
}
