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

    /// Gives a body that came without a length its own `CONTENT_LENGTH` (apps that trust
    /// only CONTENT_LENGTH, Django, would otherwise read nothing). Call it only where
    /// [`Head::announced_length`] is `Ok(None)`: any CONTENT_LENGTH sent is then empty
    /// (nginx's `$content_length` for a body it streams), and the one added takes its
    /// place, not its side (beside it, `""` and `13` would be two lengths for one body).
    pub fn give_length(&mut self, len: u64) {
        let buf = &self.buf;
        self.vars
            .retain(|(k, _)| &buf[k.start as usize..k.end as usize] != b"CONTENT_LENGTH");
        self.push_var(b"CONTENT_LENGTH", len.to_string().as_bytes());
        self.content_length = len;
    }

    /// The last value of `key`, if any. Inlined: its callers pass a fixed name, whose
    /// length then compares as a constant (the request id and span look-ups: ~140
    /// instructions a request when it was a call).
    #[inline]
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
        Ok(self.framing()?.length)
    }

    /// What the head says of its body's framing, from one walk of its variables (the
    /// uwsgi/SCGI codec's, once per request: nothing else walks them before the app).
    pub fn framing(&self) -> Result<Framing, ProtoError> {
        // CONTENT_LENGTH repeated with another value (empty included) is refused, two
        // lengths for one body (proto::cgi::content_length_again); an identical repeat
        // counts once. The last value of each name counts. Ranges are kept, not slices:
        // one register each through the loop.
        let mut cgi: Option<&Range<u32>> = None;
        let mut http: Option<&Range<u32>> = None;
        let mut coding: Option<&Range<u32>> = None;
        let at = |r: &Range<u32>| &self.buf[r.start as usize..r.end as usize];
        for (k, v) in &self.vars {
            // Lengths first: most names are none of these, and are not sliced at all.
            match k.end - k.start {
                14 if at(k) == b"CONTENT_LENGTH" => {
                    if let Some(first) = cgi {
                        proto::cgi::content_length_again(at(first), at(v))?;
                    }
                    cgi = Some(v);
                }
                19 if at(k) == b"HTTP_CONTENT_LENGTH" => http = Some(v),
                22 if coding.is_none() && at(k) == b"HTTP_TRANSFER_ENCODING" => {
                    let c = at(v).trim_ascii();
                    if !c.is_empty() && !c.eq_ignore_ascii_case(b"identity") {
                        coding = Some(v);
                    }
                }
                _ => {}
            }
        }
        let length = cgi
            .filter(|v| !v.is_empty())
            .or_else(|| http.filter(|v| !v.is_empty()))
            .map(|v| proto::cgi::parse_content_length(at(v)))
            .transpose()?;
        Ok(Framing {
            length,
            coding: coding.cloned(),
        })
    }
}

/// What a head says of its body's framing ([`Head::framing`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framing {
    /// [`Head::announced_length`].
    pub length: Option<u64>,
    /// Where the value of the first `HTTP_TRANSFER_ENCODING` that names a coding (not
    /// empty, not `identity`) sits in [`Head::buf`].
    pub coding: Option<Range<u32>>,
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
