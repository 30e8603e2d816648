//! FastCGI records (docs/protocols.md §2.1–§2.3, §2.6, §2.7): the 8-byte header framing every
//! record, the BEGIN_REQUEST body, and the encoders for what an app sends back.

use super::{ProtocolStatus, GET_VALUES_RESULT, HEADER_LEN, MAX_CONTENT, UNKNOWN_TYPE, VERSION_1};
use crate::proto::ProtoError;

/// One record: its type, request id and content, padding already skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub kind: u8,
    pub request_id: u16,
    pub content: &'a [u8],
}

/// The FCGI_BEGIN_REQUEST body (§2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BeginRequest {
    pub role: u16,
    /// FCGI_KEEP_CONN: the web server keeps the connection for another request.
    pub keep_conn: bool,
}

/// Parses the record at the start of `buf`.
///
/// `Ok(None)`: need more bytes. `Ok(Some((n, r)))`: the first `n` bytes (header, content
/// and padding) are one record. `Err`: the peer is not speaking FastCGI; close the
/// connection. The version is checked as soon as the first byte is here, but for one
/// that may start another protocol's request (a uwsgi header, an SCGI length), which
/// waits for the few bytes (at most 8, a header's) that tell
/// ([`ProtoError::WrongProtocol`], [`crate::proto::looks_like`]); an uppercase
/// first byte waits for the word it starts ([`crate::proto::method_word`]): a method
/// word and a space (`GET `, `POST `…) read as [`ProtoError::HttpOnFastcgi`], anything
/// else as a wrong version; one that starts a PROXY
/// protocol header or a TLS handshake waits until it is one
/// ([`ProtoError::ProxyProtocol`], [`ProtoError::Tls`]) or cannot be.
pub fn parse_record(buf: &[u8]) -> Result<Option<(usize, Record<'_>)>, ProtoError> {
    match buf.first() {
        None => return Ok(None),
        Some(&VERSION_1) => {}
        Some(&version) => return wrong_version(buf, version),
    }
    // Read by hand (no parser combinator): this runs for every record of every request.
    let Some(&[_version, kind, id0, id1, len0, len1, padding_len, _reserved]) =
        buf.get(..HEADER_LEN)
    else {
        return Ok(None);
    };
    let request_id = u16::from_be_bytes([id0, id1]);
    let content_len = u16::from_be_bytes([len0, len1]);
    let rest = &buf[HEADER_LEN..];
    let content_len = usize::from(content_len);
    // At most 8 + 65535 + 255: no overflow, and no limit beyond the u16 is needed.
    let len = HEADER_LEN + content_len + usize::from(padding_len);
    if buf.len() < len {
        return Ok(None);
    }
    Ok(Some((
        len,
        Record {
            kind,
            request_id,
            content: &rest[..content_len],
        },
    )))
}

/// A first byte that is not version 1: HTTP sent to a FastCGI port, or anything else.
fn wrong_version<T>(buf: &[u8], version: u8) -> Result<Option<T>, ProtoError> {
    // A PROXY protocol header or a TLS handshake: say what they are, not "version 22".
    match crate::proto::sniff(buf) {
        crate::proto::Sniff::Proxy => return Err(ProtoError::ProxyProtocol { socket: "FastCGI" }),
        crate::proto::Sniff::Tls => {
            return Err(ProtoError::Tls {
                socket: "FastCGI",
                pass: "fastcgi_pass",
            })
        }
        crate::proto::Sniff::Partial => return Ok(None),
        crate::proto::Sniff::Other => {}
    }
    // HTTP sent to a FastCGI port reads as version 'G'/'P'/'H'… (§1.6 for uwsgi). It is
    // the commonest misconfiguration, so it gets its own message.
    // Only a method word and its space (`GET `, `OPTIONS `) is HTTP: other uppercase
    // bytes are a wrong version, not a reason to suggest `fastcgi_pass`.
    // regression (probe 374): any four uppercase bytes (`GARBAGE…` after a kept
    // connection's request) were logged as an HTTP request.
    if !version.is_ascii_uppercase() {
        let fastcgi = crate::proto::Spoken::FastCgi;
        return match crate::proto::looks_like(buf) {
            Ok(Some(got)) if got != fastcgi => Err(ProtoError::WrongProtocol {
                got,
                socket: fastcgi,
            }),
            Err(()) => Ok(None),
            _ => Err(ProtoError::FcgiVersion(version)),
        };
    }
    match crate::proto::method_word(buf) {
        Some(true) => Err(ProtoError::HttpOnFastcgi),
        Some(false) => Err(ProtoError::FcgiVersion(version)),
        None => Ok(None),
    }
}

/// Parses an FCGI_BEGIN_REQUEST body: exactly 8 bytes (§2.3), else
/// [`ProtoError::FcgiBeginBody`].
pub fn parse_begin(content: &[u8]) -> Result<BeginRequest, ProtoError> {
    // u16 BE role | u8 flags | u8[5] reserved
    let &[r0, r1, flags, _, _, _, _, _] = content else {
        return Err(ProtoError::FcgiBeginBody(content.len()));
    };
    Ok(BeginRequest {
        role: u16::from_be_bytes([r0, r1]),
        keep_conn: flags & super::FLAG_KEEP_CONN != 0,
    })
}

/// The header of a record of `kind` with `len` content bytes, and the number of zero
/// padding bytes that should follow the content (up to the next multiple of 8, as nginx
/// pads). Lets a server write header, payload and padding with one `writev`, no copy.
///
/// `len` must be at most [`MAX_CONTENT`] (checked in debug builds only); split larger
/// payloads first, as [`encode_stream`] does.
pub fn stream_header(kind: u8, request_id: u16, len: usize) -> ([u8; HEADER_LEN], usize) {
    debug_assert!(len <= MAX_CONTENT, "FastCGI record content of {len} bytes");
    let padding = (8 - len % 8) % 8;
    let [id0, id1] = request_id.to_be_bytes();
    let [len0, len1] = (len as u16).to_be_bytes();
    let header = [VERSION_1, kind, id0, id1, len0, len1, padding as u8, 0];
    (header, padding)
}

/// The records that end a complete response of request `id`, without allocating: an
/// empty STDERR record if that stream was used (`stderr`), the empty STDOUT record and
/// END_REQUEST (appStatus 0, REQUEST_COMPLETE) (§2.6). The first `n` bytes of the array.
pub fn response_tail(request_id: u16, stderr: bool) -> ([u8; 4 * HEADER_LEN], usize) {
    let mut out = [0u8; 4 * HEADER_LEN];
    let mut n = 0;
    if stderr {
        out[..HEADER_LEN].copy_from_slice(&stream_header(super::STDERR, request_id, 0).0);
        n = HEADER_LEN;
    }
    out[n..n + HEADER_LEN].copy_from_slice(&stream_header(super::STDOUT, request_id, 0).0);
    n += HEADER_LEN;
    out[n..n + HEADER_LEN].copy_from_slice(&stream_header(super::END_REQUEST, request_id, 8).0);
    // u32 BE appStatus 0 | u8 protocolStatus | u8[3] reserved: all zero.
    out[n + HEADER_LEN + 4] = ProtocolStatus::RequestComplete as u8;
    (out, n + 2 * HEADER_LEN)
}

/// Appends one record: header, `content` (at most [`MAX_CONTENT`] bytes, checked in
/// debug builds only; use [`encode_stream`] for longer data), and zero padding up to a
/// multiple of 8.
pub fn encode_record(out: &mut Vec<u8>, kind: u8, request_id: u16, content: &[u8]) {
    let (header, padding) = stream_header(kind, request_id, content.len());
    out.reserve(HEADER_LEN + content.len() + padding);
    out.extend_from_slice(&header);
    out.extend_from_slice(content);
    out.resize(out.len() + padding, 0);
}

/// Appends `data` as records of `kind` with at most [`MAX_CONTENT`] bytes each. Appends
/// nothing for empty `data`: the empty record that ends a stream is written on its own,
/// `encode_record(out, kind, id, &[])`.
pub fn encode_stream(out: &mut Vec<u8>, kind: u8, request_id: u16, data: &[u8]) {
    let records = data.len().div_ceil(MAX_CONTENT);
    out.reserve(data.len() + records * (HEADER_LEN + 7));
    for chunk in data.chunks(MAX_CONTENT) {
        encode_record(out, kind, request_id, chunk);
    }
}

/// Appends `data` as records of `kind` for `request_id`, as [`encode_stream`] does, but
/// first grows the record starting at `last` when that one is a record of the same
/// kind and request, padded as [`stream_header`] pads, and ends `out` (its padding
/// included): chunks queued while a send is in flight then leave as one record instead
/// of a record each (record boundaries mean nothing inside a stream, docs/protocols.md
/// §2.2; Apache's mod_proxy_fcgi hands every record on to its client on its own). Returns where the last record of `out` now starts, for the next
/// call (`last` itself when `data` is empty: an empty record would end the stream).
pub fn append_stream(
    out: &mut Vec<u8>,
    last: Option<usize>,
    kind: u8,
    request_id: u16,
    mut data: &[u8],
) -> Option<usize> {
    let open = last.and_then(|at| open_record(out, at, kind, request_id).map(|len| (at, len)));
    if let Some((at, len)) = open {
        let take = data.len().min(MAX_CONTENT - len);
        if take > 0 {
            let (header, padding) = stream_header(kind, request_id, len + take);
            out.truncate(at + HEADER_LEN + len);
            out[at..at + HEADER_LEN].copy_from_slice(&header);
            out.extend_from_slice(&data[..take]);
            out.resize(out.len() + padding, 0);
            data = &data[take..];
        }
    }
    let mut last = open.map(|(at, _)| at);
    for chunk in data.chunks(MAX_CONTENT) {
        last = Some(out.len());
        encode_record(out, kind, request_id, chunk);
    }
    last
}

/// The content length of the record at `at` in `out` when it is a `kind` record of
/// `request_id` with [`stream_header`]'s padding that ends `out` exactly.
fn open_record(out: &[u8], at: usize, kind: u8, request_id: u16) -> Option<usize> {
    let &[version, k, id0, id1, len0, len1, padding, _] =
        out.get(at..at.checked_add(HEADER_LEN)?)?
    else {
        return None;
    };
    let len = usize::from(u16::from_be_bytes([len0, len1]));
    let fits = version == VERSION_1
        && k == kind
        && u16::from_be_bytes([id0, id1]) == request_id
        && usize::from(padding) == (8 - len % 8) % 8
        && at + HEADER_LEN + len + usize::from(padding) == out.len();
    fits.then_some(len)
}

/// Of `records` (whole records, as a server writes them), the first `sent` bytes have
/// left: how many content bytes that is (headers and padding are framing), and where
/// the record `sent` falls inside ends (`sent` itself between two records). What a
/// send that stopped part way means: the figures count the content, and a record cut
/// in the middle must be finished before anything else may follow it (§2.1: a record
/// is read whole by its length). Bytes past the last whole header count as nothing.
pub fn sent_split(records: &[u8], sent: usize) -> (u64, usize) {
    let sent = sent.min(records.len());
    let (mut pos, mut content) = (0usize, 0u64);
    while pos < sent {
        let Some(&[_version, _kind, _, _, len0, len1, padding, _]) =
            records.get(pos..pos + HEADER_LEN)
        else {
            return (content, records.len());
        };
        let start = pos + HEADER_LEN;
        // At most 8 + 65535 + 255 past `pos`: no overflow.
        let body_end = start + usize::from(u16::from_be_bytes([len0, len1]));
        let end = (body_end + usize::from(padding)).min(records.len());
        content += sent.clamp(start, body_end.min(records.len())) as u64 - start as u64;
        if end > sent {
            return (content, end);
        }
        pos = end;
    }
    (content, sent)
}

/// Of `len` content bytes written as stream records the way [`encode_stream`] lays them
/// out (records of [`MAX_CONTENT`] bytes, the last shorter, each padded as
/// [`stream_header`] pads), then anything else, the first `sent` bytes have left: how
/// many content bytes that is. [`sent_split`]'s count without the records in memory
/// (a large response is sent from the app's buffer, framed by slices).
pub fn stream_content_sent(len: usize, sent: usize) -> u64 {
    let full = HEADER_LEN + MAX_CONTENT + (8 - MAX_CONTENT % 8) % 8;
    let before = (sent / full).saturating_mul(MAX_CONTENT);
    if before >= len {
        return len as u64;
    }
    let into = sent % full;
    let record = (len - before).min(MAX_CONTENT);
    (before + into.saturating_sub(HEADER_LEN).min(record)) as u64
}

/// Of `data` written as stream records of `kind` for `request_id` the way a vectored
/// send frames it (records of [`MAX_CONTENT`] bytes from its start, each headed and
/// padded by [`stream_header`]), then `tail` (whole records), the first `sent` bytes
/// have left: the rest of the record they stopped inside, which must go before
/// anything else may follow (§2.1); empty when they stopped between two records.
/// [`sent_split`]'s end without the records in memory.
pub fn stream_rest(kind: u8, request_id: u16, data: &[u8], tail: &[u8], sent: usize) -> Vec<u8> {
    const PAD: [u8; 7] = [0; 7];
    let mut pos = 0;
    for chunk in data.chunks(MAX_CONTENT) {
        let (head, pad) = stream_header(kind, request_id, chunk.len());
        let len = HEADER_LEN + chunk.len() + pad;
        if sent < pos + len {
            let mut skip = sent - pos;
            if skip == 0 {
                return Vec::new();
            }
            let mut rest = Vec::with_capacity(len - skip);
            for part in [&head[..], chunk, &PAD[..pad]] {
                if skip >= part.len() {
                    skip -= part.len();
                } else {
                    rest.extend_from_slice(&part[skip..]);
                    skip = 0;
                }
            }
            return rest;
        }
        pos += len;
    }
    let into = (sent - pos).min(tail.len());
    let (_, end) = sent_split(tail, into);
    tail[into..end].to_vec()
}

/// Appends an FCGI_BEGIN_REQUEST record (what a web server sends; for tests and clients).
pub fn encode_begin_request(out: &mut Vec<u8>, request_id: u16, role: u16, keep_conn: bool) {
    let [r0, r1] = role.to_be_bytes();
    let flags = if keep_conn { super::FLAG_KEEP_CONN } else { 0 };
    // u16 BE role | u8 flags | u8[5] reserved
    let body = [r0, r1, flags, 0, 0, 0, 0, 0];
    encode_record(out, super::BEGIN_REQUEST, request_id, &body);
}

/// Appends request `request_id`'s head as a front server sends it: BEGIN_REQUEST
/// (responder), `params` as PARAMS records, and the empty PARAMS record that ends them.
/// (A request read here, framed again to travel to another worker.)
pub fn encode_head(out: &mut Vec<u8>, request_id: u16, keep_conn: bool, params: &[u8]) {
    encode_begin_request(out, request_id, super::ROLE_RESPONDER, keep_conn);
    encode_stream(out, super::PARAMS, request_id, params);
    encode_record(out, super::PARAMS, request_id, &[]);
}

/// Appends an FCGI_END_REQUEST record (§2.6). After it, `request_id` is free again.
pub fn encode_end_request(
    out: &mut Vec<u8>,
    request_id: u16,
    app_status: u32,
    status: ProtocolStatus,
) {
    let [a0, a1, a2, a3] = app_status.to_be_bytes();
    // u32 BE appStatus | u8 protocolStatus | u8[3] reserved
    let body = [a0, a1, a2, a3, status as u8, 0, 0, 0];
    encode_record(out, super::END_REQUEST, request_id, &body);
}

/// Appends an FCGI_UNKNOWN_TYPE management record (requestId 0) naming `kind` (§2.7).
pub fn encode_unknown_type(out: &mut Vec<u8>, kind: u8) {
    // u8 type | u8[7] reserved
    let body = [kind, 0, 0, 0, 0, 0, 0, 0];
    encode_record(out, UNKNOWN_TYPE, 0, &body);
}

/// Appends an empty FCGI_GET_VALUES_RESULT (used for a malformed query).
pub(crate) fn encode_empty_values_result(out: &mut Vec<u8>) {
    encode_record(out, GET_VALUES_RESULT, 0, &[]);
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::*;

    #[test]
    fn accepts_a_whole_record() {
        // version 1, PARAMS, id 1, content 3, padding 5, reserved; "abc"; 5 padding bytes
        let buf = [1, 4, 0, 1, 0, 3, 5, 0, b'a', b'b', b'c', 9, 9, 9, 9, 9];
        let (n, r) = parse_record(&buf).unwrap().unwrap();
        assert_eq!(n, 16);
        assert_eq!(
            r,
            Record {
                kind: PARAMS,
                request_id: 1,
                content: b"abc"
            }
        );
    }

    #[test]
    fn sent_split_counts_content_and_finds_the_cut_records_end() {
        let mut out = Vec::new();
        encode_record(&mut out, STDOUT, 1, b"abc"); // 8 + 3 + 5 padding = 16
        encode_record(&mut out, STDOUT, 1, b"12345678"); // 8 + 8 = 16
        assert_eq!(sent_split(&out, 0), (0, 0));
        // Inside the first header: no content yet; its record ends at 16.
        assert_eq!(sent_split(&out, 5), (0, 16));
        assert_eq!(sent_split(&out, 10), (2, 16));
        // In its padding: all its content, same end.
        assert_eq!(sent_split(&out, 13), (3, 16));
        assert_eq!(sent_split(&out, 16), (3, 16));
        assert_eq!(sent_split(&out, 27), (6, 32));
        assert_eq!(sent_split(&out, 32), (11, 32));
        assert_eq!(sent_split(&out, 99), (11, 32));
        // A header cut short of its 8 bytes (never written so): nothing more counts.
        assert_eq!(sent_split(&out[..20], 20), (3, 20));
    }

    #[test]
    fn append_stream_grows_only_its_own_last_record() {
        let mut out = Vec::new();
        let last = append_stream(&mut out, None, STDOUT, 3, b"abc");
        assert_eq!(last, Some(0));
        let last = append_stream(&mut out, last, STDOUT, 3, b"defghi");
        assert_eq!(last, Some(0));
        let mut expected = Vec::new();
        encode_record(&mut expected, STDOUT, 3, b"abcdefghi");
        assert_eq!(out, expected);
        // Nothing to add: no empty record (it would end the stream).
        assert_eq!(append_stream(&mut out, last, STDOUT, 3, b""), Some(0));
        assert_eq!(out, expected);
        // Another request's, another kind's, or a record that is not last: a new record.
        for (kind, id, at) in [(STDOUT, 4, 0), (STDERR, 3, 0), (STDOUT, 3, 8)] {
            let mut o = expected.clone();
            let next = append_stream(&mut o, Some(at), kind, id, b"x");
            assert_eq!(next, Some(expected.len()));
            let mut e = expected.clone();
            encode_record(&mut e, kind, id, b"x");
            assert_eq!(o, e);
        }
        // Another record after it (END_REQUEST, say): not grown.
        let mut o = expected.clone();
        encode_record(&mut o, STDERR, 3, b"y");
        let before = o.clone();
        assert_eq!(
            append_stream(&mut o, Some(0), STDOUT, 3, b"z"),
            Some(before.len())
        );
        assert_eq!(&o[..before.len()], &before[..]);
        // A full record stays full; the rest goes to new ones.
        let mut o = Vec::new();
        let big = vec![7u8; MAX_CONTENT - 2];
        let last = append_stream(&mut o, None, STDOUT, 1, &big);
        let last = append_stream(&mut o, last, STDOUT, 1, b"12345");
        let (n, r) = parse_record(&o).unwrap().unwrap();
        assert_eq!(last, Some(n));
        assert_eq!(r.content.len(), MAX_CONTENT);
        assert_eq!(&r.content[MAX_CONTENT - 2..], b"12");
        let (_, r) = parse_record(&o[n..]).unwrap().unwrap();
        assert_eq!(r.content, b"345");
        // An offset past the end (a queue taken since): a new record.
        let mut o = Vec::new();
        assert_eq!(append_stream(&mut o, Some(64), STDOUT, 1, b"q"), Some(0));
    }

    #[test]
    fn waits_on_every_prefix() {
        for content_len in [0usize, 1, 7, 8, 300] {
            for padding in [0u8, 1, 7, 255] {
                let mut buf = vec![1, STDIN, 0x12, 0x34];
                buf.extend_from_slice(&(content_len as u16).to_be_bytes());
                buf.extend_from_slice(&[padding, 0]);
                buf.extend(std::iter::repeat_n(b'x', content_len));
                buf.extend(std::iter::repeat_n(0, usize::from(padding)));
                for i in 0..buf.len() {
                    assert_eq!(parse_record(&buf[..i]), Ok(None), "prefix {i}");
                }
                let (n, r) = parse_record(&buf).unwrap().unwrap();
                assert_eq!(n, buf.len());
                assert_eq!(r.request_id, 0x1234);
                assert_eq!(r.content.len(), content_len);
            }
        }
    }

    #[test]
    fn honours_every_padding_length() {
        for padding in 0..=255u8 {
            // version 1, STDIN, id 1, content 2, `padding`, reserved
            let mut buf = vec![1, STDIN, 0, 1, 0, 2, padding, 0, b'h', b'i'];
            buf.extend(std::iter::repeat_n(0xee, usize::from(padding)));
            let len = buf.len();
            // The next record follows the padding.
            encode_record(&mut buf, STDIN, 1, &[]);
            let (n, r) = parse_record(&buf).unwrap().unwrap();
            assert_eq!(n, len, "padding {padding}");
            assert_eq!(r.content, b"hi");
            let (m, next) = parse_record(&buf[n..]).unwrap().unwrap();
            assert_eq!((m, next.content.len()), (8, 0));
        }
    }

    #[test]
    fn leaves_the_next_record_in_the_buffer() {
        let mut buf = Vec::new();
        encode_record(&mut buf, PARAMS, 1, b"abc");
        let first = buf.len();
        encode_record(&mut buf, PARAMS, 1, &[]);
        let (n, _) = parse_record(&buf).unwrap().unwrap();
        assert_eq!(n, first);
    }

    #[test]
    fn round_trips_records_of_every_interesting_length() {
        for len in [0usize, 1, 7, 8, 9, 127, 128, 4096, 65534, MAX_CONTENT] {
            let content: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut out = Vec::new();
            encode_record(&mut out, STDOUT, 0xbeef, &content);
            assert_eq!(out.len() % 8, 0, "len {len} is padded to 8");
            assert_eq!(out[7], 0, "reserved byte");
            let (n, r) = parse_record(&out).unwrap().unwrap();
            assert_eq!(n, out.len());
            assert_eq!((r.kind, r.request_id), (STDOUT, 0xbeef));
            assert_eq!(r.content, &content[..]);
            assert!(out[HEADER_LEN + len..].iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn response_tail_matches_the_encoders() {
        for stderr in [false, true] {
            let mut want = Vec::new();
            if stderr {
                encode_record(&mut want, STDERR, 0x1234, &[]);
            }
            encode_record(&mut want, STDOUT, 0x1234, &[]);
            encode_end_request(&mut want, 0x1234, 0, ProtocolStatus::RequestComplete);
            let (tail, n) = response_tail(0x1234, stderr);
            assert_eq!(tail[..n], want[..], "stderr {stderr}");
        }
    }

    #[test]
    fn stream_content_sent_agrees_with_the_records() {
        let tail = [9u8; 24];
        for len in [
            0,
            1,
            7,
            8,
            9,
            65534,
            65535,
            65536,
            65535 * 2,
            65535 * 2 + 5,
            200_000,
        ] {
            let mut out = Vec::new();
            encode_stream(&mut out, STDOUT, 1, &vec![1u8; len]);
            out.extend_from_slice(&tail);
            let mut sents: Vec<usize> = (0..out.len()).step_by(997).collect();
            for r in 0..len.div_ceil(MAX_CONTENT) {
                let at = r * (HEADER_LEN + MAX_CONTENT + 1);
                sents.extend([at, at + 1, at + HEADER_LEN, at + HEADER_LEN + 1]);
            }
            sents.extend([out.len() - tail.len(), out.len(), out.len() + 10]);
            for sent in sents {
                assert_eq!(
                    stream_content_sent(len, sent),
                    sent_split(&out, sent).0.min(len as u64),
                    "len {len}, sent {sent}"
                );
            }
        }
    }

    #[test]
    fn stream_rest_is_the_rest_of_the_record_a_send_stopped_inside() {
        let (tail, n) = response_tail(7, true);
        let tail = &tail[..n];
        for len in [0usize, 1, 7, 8, 9, 65535, 65536, 65535 * 2 + 5] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            // Framed as `write_stream` frames it.
            let mut out = Vec::new();
            for chunk in data.chunks(MAX_CONTENT) {
                let (head, pad) = stream_header(STDOUT, 7, chunk.len());
                out.extend_from_slice(&head);
                out.extend_from_slice(chunk);
                out.extend(std::iter::repeat_n(0, pad));
            }
            out.extend_from_slice(tail);
            let mut sents: Vec<usize> = (0..out.len()).step_by(4093).collect();
            for r in 0..len.div_ceil(MAX_CONTENT) {
                let at = r * (HEADER_LEN + MAX_CONTENT + 1);
                sents.extend([at, at + 1, at + HEADER_LEN, at + HEADER_LEN + 1]);
            }
            let t = out.len() - tail.len();
            sents.extend([
                t.saturating_sub(1),
                t,
                t + 1,
                t + HEADER_LEN,
                t + 9,
                out.len() - 1,
                out.len(),
            ]);
            for sent in sents.into_iter().filter(|&s| s <= out.len()) {
                let (_, end) = sent_split(&out, sent);
                assert_eq!(
                    stream_rest(STDOUT, 7, &data, tail, sent),
                    out[sent..end],
                    "len {len}, sent {sent}"
                );
            }
        }
    }

    #[test]
    fn stream_header_matches_encode_record() {
        for len in [0usize, 1, 5, 8, 13, 65535] {
            let content = vec![b'z'; len];
            let mut out = Vec::new();
            encode_record(&mut out, STDERR, 3, &content);
            let (header, padding) = stream_header(STDERR, 3, len);
            assert_eq!(header[..], out[..HEADER_LEN]);
            assert_eq!(HEADER_LEN + len + padding, out.len());
            assert_eq!(usize::from(header[6]), padding);
        }
        // version 1, STDOUT, id 1, content 13 BE, padding 3, reserved
        assert_eq!(stream_header(STDOUT, 1, 13), ([1, 6, 0, 1, 0, 13, 3, 0], 3));
    }

    #[test]
    fn encode_stream_splits_at_65535() {
        let mut out = Vec::new();
        encode_stream(&mut out, STDOUT, 1, &[]);
        assert!(out.is_empty(), "empty data writes no record");

        let data: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
        encode_stream(&mut out, STDOUT, 1, &data);
        let mut pos = 0;
        let mut lens = Vec::new();
        let mut joined = Vec::new();
        while let Some((n, r)) = parse_record(&out[pos..]).unwrap() {
            assert_eq!((r.kind, r.request_id), (STDOUT, 1));
            lens.push(r.content.len());
            joined.extend_from_slice(r.content);
            pos += n;
        }
        assert_eq!(pos, out.len());
        assert_eq!(lens, vec![65535, 65535, 150_000 - 2 * 65535]);
        assert_eq!(joined, data);
    }

    #[test]
    fn round_trips_begin_request() {
        for (role, keep_conn) in [
            (ROLE_RESPONDER, false),
            (ROLE_RESPONDER, true),
            (ROLE_AUTHORIZER, true),
            (ROLE_FILTER, false),
            (0xffff, true),
        ] {
            let mut out = Vec::new();
            encode_begin_request(&mut out, 1, role, keep_conn);
            assert_eq!(out.len(), 16);
            let (_, r) = parse_record(&out).unwrap().unwrap();
            assert_eq!(r.kind, BEGIN_REQUEST);
            assert_eq!(parse_begin(r.content), Ok(BeginRequest { role, keep_conn }));
        }
    }

    #[test]
    fn reads_what_nginx_sends_as_begin_request() {
        // version 1, BEGIN_REQUEST, id 1, content 8, padding 0, reserved;
        // role 1 BE, flags KEEP_CONN, 5 reserved
        let buf = [1, 1, 0, 1, 0, 8, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0];
        let (n, r) = parse_record(&buf).unwrap().unwrap();
        assert_eq!(n, 16);
        assert_eq!(
            parse_begin(r.content),
            Ok(BeginRequest {
                role: ROLE_RESPONDER,
                keep_conn: true
            })
        );
        // Other flag bits are ignored.
        assert!(!parse_begin(&[0, 1, 0xfe, 0, 0, 0, 0, 0]).unwrap().keep_conn);
    }

    #[test]
    fn rejects_a_begin_body_that_is_not_8_bytes() {
        for len in [0usize, 1, 2, 7, 9, 16, 300] {
            assert_eq!(
                parse_begin(&vec![0; len]),
                Err(ProtoError::FcgiBeginBody(len))
            );
        }
    }

    #[test]
    fn round_trips_end_request() {
        for (app_status, status) in [
            (0, ProtocolStatus::RequestComplete),
            (1, ProtocolStatus::CantMpxConn),
            (0xdead_beef, ProtocolStatus::Overloaded),
            (u32::MAX, ProtocolStatus::UnknownRole),
        ] {
            let mut out = Vec::new();
            encode_end_request(&mut out, 7, app_status, status);
            let (n, r) = parse_record(&out).unwrap().unwrap();
            assert_eq!((n, r.kind, r.request_id), (16, END_REQUEST, 7));
            assert_eq!(r.content[..4], app_status.to_be_bytes());
            assert_eq!(r.content[4], status as u8);
            assert_eq!(r.content[5..], [0, 0, 0]);
        }
        // The uWSGI-style 24-byte tail: empty STDOUT + END_REQUEST(0, COMPLETE), id 1.
        let mut tail = Vec::new();
        encode_record(&mut tail, STDOUT, 1, &[]);
        encode_end_request(&mut tail, 1, 0, ProtocolStatus::RequestComplete);
        assert_eq!(
            tail,
            [
                1, 6, 0, 1, 0, 0, 0, 0, // STDOUT id 1, empty
                1, 3, 0, 1, 0, 8, 0, 0, // END_REQUEST id 1, 8 bytes
                0, 0, 0, 0, 0, 0, 0, 0, // appStatus 0, REQUEST_COMPLETE
            ]
        );
    }

    #[test]
    fn encodes_unknown_type_on_the_management_id() {
        let mut out = Vec::new();
        encode_unknown_type(&mut out, 42);
        // version 1, UNKNOWN_TYPE, id 0, content 8; type 42 + 7 reserved
        assert_eq!(out, [1, 11, 0, 0, 0, 8, 0, 0, 42, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn rejects_a_wrong_version_at_the_first_byte() {
        for v in [0u8, 2, 3, 0x7f, 0x80, 0xff, b'a', b'{'] {
            if v != 0 {
                assert_eq!(parse_record(&[v]), Err(ProtoError::FcgiVersion(v)));
            }
            assert_eq!(
                parse_record(&[v, 1, 0, 1, 0, 0, 0, 0]),
                Err(ProtoError::FcgiVersion(v))
            );
        }
        // `\r` starts the PROXY protocol v2 signature: it waits for the next byte.
        assert_eq!(parse_record(b"\r"), Ok(None));
        assert_eq!(
            parse_record(&[b'\r', 1, 0, 1, 0, 0, 0, 0]),
            Err(ProtoError::FcgiVersion(b'\r'))
        );
        // An uppercase first byte not followed by a method-like word.
        assert_eq!(parse_record(b"G\x01"), Err(ProtoError::FcgiVersion(b'G')));
        assert_eq!(
            parse_record(b"AB1 xxxx"),
            Err(ProtoError::FcgiVersion(b'A'))
        );
    }

    // regression: a PROXY protocol line read as HTTP ("use fastcgi_pass, not proxy_pass")
    // and a TLS ClientHello as byte 22 of the protocol's own header.
    #[test]
    fn names_proxy_protocol_and_tls_on_the_fastcgi_port() {
        let proxy = ProtoError::ProxyProtocol { socket: "FastCGI" };
        for line in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"[..],
            b"PROXY ",
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\0\x0c",
        ] {
            assert_eq!(parse_record(line), Err(proxy.clone()), "{line:?}");
        }
        let tls = ProtoError::Tls {
            socket: "FastCGI",
            pass: "fastcgi_pass",
        };
        assert_eq!(
            parse_record(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03][..]),
            Err(tls)
        );
        // Until the bytes say which, they wait.
        for prefix in [&b"PROX"[..], b"\r\n\r\n", &[0x16, 0x03]] {
            assert_eq!(parse_record(prefix), Ok(None), "{prefix:?}");
        }
    }

    #[test]
    fn rejects_http_text_on_the_fastcgi_port() {
        for req in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /x HTTP/1.1",
            b"HEAD /",
            b"PUT /a",
            b"DELETE /a",
            b"PRI * HTTP/2.0\r\n",
        ] {
            assert_eq!(parse_record(req), Err(ProtoError::HttpOnFastcgi));
            // The method word still arriving: wait for more.
            let word = req.iter().position(|&b| b == b' ').unwrap();
            for i in 1..=word {
                assert_eq!(parse_record(&req[..i]), Ok(None), "{req:?} prefix {i}");
            }
        }
        // Uppercase bytes that are no method word and a space: a wrong version.
        for buf in [
            &b"GARBAGEGARBAGE\x01\x01"[..],
            b"GET/",
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZ",
        ] {
            assert_eq!(
                parse_record(buf),
                Err(ProtoError::FcgiVersion(buf[0])),
                "{buf:?}"
            );
        }
    }
}
