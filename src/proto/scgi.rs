//! The SCGI request head (docs/protocols.md §3): one netstring whose payload is a block of
//! NUL-terminated name/value pairs, then the body. Pure: bytes in, borrowed views
//! out; no I/O, and nothing here imports tokio, pyo3 or tracing.
//!
//! ```text
//! <decimal length, no leading zero> ":" <headers> "," <body: CONTENT_LENGTH bytes>
//! headers = repeated ( name NUL value NUL )      name non-empty, value may be empty
//! first header: CONTENT_LENGTH (decimal, "0" without a body); SCGI = "1" somewhere
//! ```

use nom::bytes::complete::{tag, take_till};
use nom::sequence::terminated;
use nom::{IResult, Parser};

use super::cgi::{content_length_again, parse_content_length};
use super::ProtoError;

/// Byte ranges of one name/value pair inside a headers block (as for uwsgi).
pub type VarRange = super::uwsgi::VarRange;

/// Most digits accepted in the netstring length (7: up to 9_999_999 bytes; the limit
/// check comes first anyway). §3 asks for a cap on the length prefix.
pub const MAX_LENGTH_DIGITS: usize = 7;
/// The longest headers block [`MAX_LENGTH_DIGITS`] digits can announce.
pub const MAX_LENGTH: usize = 9_999_999;
/// The header every request must start with (§3).
pub const CONTENT_LENGTH: &[u8] = b"CONTENT_LENGTH";
/// The header naming the protocol version; its value is `1` (§3).
pub const SCGI: &[u8] = b"SCGI";
/// Parses the netstring head at the start of `buf`: `<len>:<headers>,`.
///
/// `Ok(None)`: need more bytes. `Ok(Some((n, headers)))`: the first `n` bytes are the
/// whole netstring (length, `:`, headers and `,`), and the body, if any, starts at
/// `buf[n]`; `headers` is the block between `:` and `,`, for [`parse_headers`].
///
/// `limit` caps the headers block. It is checked on the length digits alone, before
/// any of the block is awaited: as soon as the digits read so far exceed `limit`,
/// the result is [`ProtoError::HeadTooLarge`] with that value as `size` (exact when
/// the whole length was read, a lower bound while its digits are still arriving).
///
/// Errors (the peer is not speaking SCGI as we serve it; close the connection):
/// - [`ProtoError::HttpOnScgi`]: the bytes start with an uppercase method word and a
///   space (`GET `, `POST `…), i.e. nginx has `proxy_pass` where `scgi_pass` belongs.
/// - [`ProtoError::ScgiLength`]: the length does not start with a digit, starts with
///   `0` (a leading zero; `0` alone is refused too, as CONTENT_LENGTH is mandatory),
///   has more than [`MAX_LENGTH_DIGITS`] digits, or is not followed by `:`.
/// - [`ProtoError::HeadTooLarge`]: the length is over `limit` (see above).
/// - [`ProtoError::ScgiComma`]: the byte after the block is not `,`.
pub fn parse_head(buf: &[u8], limit: usize) -> Result<Option<(usize, &[u8])>, ProtoError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    // A PROXY protocol header or a TLS handshake: say what they are.
    if !first.is_ascii_digit() {
        match super::sniff(buf) {
            super::Sniff::Proxy => return Err(ProtoError::ProxyProtocol { socket: "SCGI" }),
            super::Sniff::Tls => {
                return Err(ProtoError::Tls {
                    socket: "SCGI",
                    pass: "scgi_pass",
                })
            }
            super::Sniff::Partial => return Ok(None),
            super::Sniff::Other => {}
        }
    }
    if first.is_ascii_uppercase() {
        return match super::method_word(buf) {
            Some(true) => Err(ProtoError::HttpOnScgi),
            Some(false) => Err(ProtoError::ScgiLength),
            None => Ok(None),
        };
    }
    // A leading zero is not a netstring (§3), and the length `0` would leave no room
    // for the mandatory CONTENT_LENGTH header.
    if !first.is_ascii_digit() || first == b'0' {
        return match super::looks_like(buf) {
            Ok(Some(got)) if got != super::Spoken::Scgi => Err(ProtoError::WrongProtocol {
                got,
                socket: super::Spoken::Scgi,
            }),
            Err(()) => Ok(None),
            _ => Err(ProtoError::ScgiLength),
        };
    }

    // Read at most one digit past the cap: that is enough to refuse the length, and
    // keeps `size` below 10^8, so the arithmetic cannot overflow on any target.
    let digits = buf
        .iter()
        .take(MAX_LENGTH_DIGITS + 1)
        .take_while(|b| b.is_ascii_digit())
        .count();
    let size = buf[..digits]
        .iter()
        .fold(0usize, |n, &d| n * 10 + usize::from(d - b'0'));
    // Refuse an oversized head before waiting for (or reserving room for) its block.
    if size > limit {
        // Named with every digit that came, not the first few read above.
        // regression (probe 380): `123456789012:` was logged as 12345678 bytes.
        let size = buf
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .fold(0usize, |n, &d| {
                n.saturating_mul(10).saturating_add(usize::from(d - b'0'))
            });
        return Err(ProtoError::HeadTooLarge { size, limit });
    }
    if digits > MAX_LENGTH_DIGITS {
        return Err(ProtoError::ScgiLength);
    }
    match buf.get(digits) {
        None => return Ok(None),
        Some(b':') => {}
        Some(_) => return Err(ProtoError::ScgiLength),
    }

    let start = digits + 1;
    let Some(end) = start.checked_add(size) else {
        return Err(ProtoError::HeadTooLarge { size, limit });
    };
    match buf.get(end) {
        None => Ok(None),
        Some(b',') => Ok(Some((end + 1, &buf[start..end]))),
        Some(_) => Err(ProtoError::ScgiComma),
    }
}

/// Splits a complete headers block into name/value byte ranges (offsets into `block`),
/// in arrival order.
///
/// The block is repeated `name NUL value NUL` and must end right after a value's NUL.
/// The first header must be `CONTENT_LENGTH`, and its value must be a valid length
/// ([`parse_content_length`]; [`ProtoError::BadContentLength`] otherwise).
///
/// Leniencies, on purpose:
/// - A repeated name is kept: nginx sends one header per repeated HTTP header line,
///   and [`super::cgi::normalise`] joins them. The one exception is `CONTENT_LENGTH`:
///   it frames the body, so a repeat must carry the same value, byte for byte (a
///   different one, empty included, is a request-smuggling shape:
///   [`ProtoError::ConflictingLength`], the rule of uwsgi and FastCGI too,
///   [`super::cgi::content_length_again`]).
/// - A missing `SCGI` header (or a value other than `1`) is accepted: §3 makes it
///   mandatory, but it carries nothing we use, and some clients leave it out.
///
/// Errors are [`ProtoError::ScgiHeaders`] for a name or value without its terminating
/// NUL, an empty name, a first header that is not `CONTENT_LENGTH` (including an empty
/// block); [`ProtoError::HeadTooLarge`]
/// for a block longer than [`MAX_LENGTH`], which no valid netstring can carry.
pub fn parse_headers(block: &[u8]) -> Result<Vec<VarRange>, ProtoError> {
    // Offsets are stored as u32; the 7-digit length keeps real blocks far below that.
    if block.len() > MAX_LENGTH {
        return Err(ProtoError::HeadTooLarge {
            size: block.len(),
            limit: MAX_LENGTH,
        });
    }
    if block.is_empty() {
        return Err(ProtoError::ScgiHeaders(
            "empty header block; CONTENT_LENGTH is required",
        ));
    }
    // Every pair takes at least 3 bytes (`n NUL NUL`); most are far longer.
    let mut headers: Vec<VarRange> = Vec::with_capacity(block.len() / 16 + 4);
    let mut first_length: &[u8] = b"";
    let mut rest = block;
    while !rest.is_empty() {
        let name_start = block.len() - rest.len();
        let Ok((after_name, name)) = cstring(rest) else {
            return Err(ProtoError::ScgiHeaders(
                "header name without its terminating NUL",
            ));
        };
        if name.is_empty() {
            return Err(ProtoError::ScgiHeaders("empty header name"));
        }
        let value_start = block.len() - after_name.len();
        let Ok((after_value, value)) = cstring(after_name) else {
            return Err(ProtoError::ScgiHeaders(
                "header value without its terminating NUL",
            ));
        };

        if headers.is_empty() {
            if name != CONTENT_LENGTH {
                return Err(ProtoError::ScgiHeaders(
                    "the first header is not CONTENT_LENGTH",
                ));
            }
            parse_content_length(value)?;
            first_length = value;
        } else if name == CONTENT_LENGTH {
            content_length_again(first_length, value)?;
        }

        // `block.len() <= MAX_LENGTH`, so every offset fits in u32.
        let name_end = name_start + name.len();
        let value_end = value_start + value.len();
        headers.push((
            name_start as u32..name_end as u32,
            value_start as u32..value_end as u32,
        ));
        rest = after_value;
    }
    Ok(headers)
}

/// One NUL-terminated string; the block is complete, so a missing NUL is malformed.
fn cstring(input: &[u8]) -> IResult<&[u8], &[u8]> {
    terminated(take_till(|b| b == 0), tag(&b"\0"[..])).parse_complete(input)
}

/// Encodes a request head (the netstring only; the body follows as raw bytes), as
/// nginx's `scgi_pass` does: `CONTENT_LENGTH` first, computed from `body_len`, then
/// `SCGI` = `1`, then `pairs` in order.
///
/// Any `CONTENT_LENGTH` or `SCGI` in `pairs` is skipped, as are empty names (they
/// cannot be sent). Names and values must not contain NUL, and a block over
/// [`MAX_LENGTH`] bytes is written but refused by [`parse_head`]; for tests and the
/// `postern request` client, which build small heads from typed input.
pub fn encode_head(pairs: &[(&[u8], &[u8])], body_len: u64, out: &mut Vec<u8>) {
    let body_len = body_len.to_string();
    let fixed: [(&[u8], &[u8]); 2] = [(CONTENT_LENGTH, body_len.as_bytes()), (SCGI, b"1")];
    let all = fixed.into_iter().chain(
        pairs
            .iter()
            .copied()
            .filter(|(k, _)| !k.is_empty() && *k != CONTENT_LENGTH && *k != SCGI),
    );
    let size: usize = all.clone().map(|(k, v)| k.len() + v.len() + 2).sum();
    debug_assert!(all.clone().all(|(k, v)| !k.contains(&0) && !v.contains(&0)));

    let size_digits = size.to_string();
    out.reserve(size_digits.len() + size + 2);
    out.extend_from_slice(size_digits.as_bytes());
    out.push(b':');
    for (k, v) in all {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out.push(b',');
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 65535;

    fn sample(body_len: u64) -> Vec<u8> {
        let mut out = Vec::new();
        encode_head(
            &[
                (b"REQUEST_METHOD", b"POST"),
                (b"REQUEST_URI", b"/hello?x=1"),
                (b"QUERY_STRING", b"x=1"),
                (b"CONTENT_TYPE", b""),
            ],
            body_len,
            &mut out,
        );
        out
    }

    fn pairs<'a>(block: &'a [u8], headers: &[VarRange]) -> Vec<(&'a [u8], &'a [u8])> {
        headers
            .iter()
            .map(|(k, v)| {
                (
                    &block[k.start as usize..k.end as usize],
                    &block[v.start as usize..v.end as usize],
                )
            })
            .collect()
    }

    fn headers_error(block: &[u8]) -> &'static str {
        match parse_headers(block) {
            Err(ProtoError::ScgiHeaders(what)) => what,
            other => panic!("expected ScgiHeaders, got {other:?}"),
        }
    }

    #[test]
    fn encodes_the_exact_bytes_nginx_sends() {
        let mut out = Vec::new();
        encode_head(&[(b"REQUEST_METHOD", b"GET")], 0, &mut out);
        // 17 (CONTENT_LENGTH NUL 0 NUL) + 7 (SCGI NUL 1 NUL) + 19 (REQUEST_METHOD…) = 43
        assert_eq!(
            out,
            b"43:CONTENT_LENGTH\x000\x00SCGI\x001\x00REQUEST_METHOD\x00GET\x00,"
        );
    }

    #[test]
    fn accepts_a_whole_head_and_round_trips() {
        let buf = sample(5);
        let (n, block) = parse_head(&buf, LIMIT).unwrap().unwrap();
        assert_eq!(n, buf.len());
        let headers = parse_headers(block).unwrap();
        assert_eq!(
            pairs(block, &headers),
            vec![
                (&b"CONTENT_LENGTH"[..], &b"5"[..]),
                (b"SCGI", b"1"),
                (b"REQUEST_METHOD", b"POST"),
                (b"REQUEST_URI", b"/hello?x=1"),
                (b"QUERY_STRING", b"x=1"),
                (b"CONTENT_TYPE", b""),
            ]
        );
    }

    #[test]
    fn waits_on_every_prefix() {
        let buf = sample(0);
        for i in 0..buf.len() {
            assert_eq!(parse_head(&buf[..i], LIMIT), Ok(None), "prefix {i}");
        }
    }

    #[test]
    fn leaves_the_body_after_the_comma() {
        let mut buf = sample(10);
        let len = buf.len();
        buf.extend_from_slice(b"body bytes");
        let (n, block) = parse_head(&buf, LIMIT).unwrap().unwrap();
        assert_eq!(n, len);
        assert_eq!(&buf[n..], b"body bytes");
        assert!(parse_headers(block).is_ok());
        // A body that itself looks like a netstring is not read.
        let buf = b"24:CONTENT_LENGTH\x005\x00SCGI\x001\x00,3:a\x00b,";
        let (n, _) = parse_head(buf, LIMIT).unwrap().unwrap();
        assert_eq!(&buf[n..], b"3:a\x00b,");
    }

    #[test]
    fn rejects_a_leading_zero() {
        for buf in [&b"0"[..], b"0:", b"0:,", b"012:", b"00"] {
            assert_eq!(
                parse_head(buf, LIMIT),
                Err(ProtoError::ScgiLength),
                "{buf:?}"
            );
        }
    }

    #[test]
    fn rejects_eight_digits() {
        // Only reachable when the limit allows 8-digit heads; otherwise the limit
        // check fires first.
        assert_eq!(
            parse_head(b"12345678", usize::MAX),
            Err(ProtoError::ScgiLength)
        );
        assert_eq!(
            parse_head(b"12345678:", usize::MAX),
            Err(ProtoError::ScgiLength)
        );
        // Seven digits still wait for the colon and the block.
        assert_eq!(parse_head(b"1234567", usize::MAX), Ok(None));
        assert_eq!(parse_head(b"1234567:abc", usize::MAX), Ok(None));
    }

    #[test]
    fn rejects_a_length_not_followed_by_a_colon() {
        for buf in [&b"12,"[..], b"12 :", b"12a", b"5\x00", b"1;"] {
            assert_eq!(
                parse_head(buf, LIMIT),
                Err(ProtoError::ScgiLength),
                "{buf:?}"
            );
        }
    }

    #[test]
    fn rejects_a_length_that_does_not_start_with_a_digit() {
        for buf in [
            &b":"[..],
            b",",
            b"\x00\x01\x02\x03",
            b"-1:",
            b"+1:",
            b" 1:",
            b"\xff",
            b"get / HTTP",
        ] {
            assert_eq!(
                parse_head(buf, LIMIT),
                Err(ProtoError::ScgiLength),
                "{buf:?}"
            );
        }
    }

    #[test]
    fn rejects_a_block_not_followed_by_a_comma() {
        // 3:abc then ';' where ',' belongs.
        assert_eq!(parse_head(b"3:abc;", LIMIT), Err(ProtoError::ScgiComma));
        // A length one short of the block: the last NUL lands where ',' belongs.
        let mut buf = sample(0);
        let (_, block) = parse_head(&buf, LIMIT).unwrap().unwrap();
        let wrong = format!("{}:", block.len() - 1);
        let colon = buf.iter().position(|&b| b == b':').unwrap();
        buf.splice(..=colon, wrong.bytes());
        assert_eq!(parse_head(&buf, LIMIT), Err(ProtoError::ScgiComma));
    }

    #[test]
    fn rejects_a_head_over_the_limit_with_only_the_length_typed() {
        let too_large = Err(ProtoError::HeadTooLarge {
            size: 100_000,
            limit: LIMIT,
        });
        assert_eq!(parse_head(b"100000:", LIMIT), too_large);
        // Before the colon too: more digits could only make it larger.
        assert_eq!(parse_head(b"100000", LIMIT), too_large);
        // Every digit that came is in the size, past those the parser reads.
        assert_eq!(
            parse_head(b"123456789012:", LIMIT),
            Err(ProtoError::HeadTooLarge {
                size: 123_456_789_012,
                limit: LIMIT
            })
        );
        assert!(matches!(
            parse_head(&[b'9'; 40], LIMIT),
            Err(ProtoError::HeadTooLarge {
                size: usize::MAX,
                ..
            })
        ));
        // The limit is on the block, not the whole netstring.
        assert_eq!(parse_head(b"4096:", 4096), Ok(None));
        assert_eq!(
            parse_head(b"4097:", 4096),
            Err(ProtoError::HeadTooLarge {
                size: 4097,
                limit: 4096
            })
        );
        // A whole head one byte over a limit set to its exact size.
        let buf = sample(0);
        let (_, block) = parse_head(&buf, LIMIT).unwrap().unwrap();
        assert!(parse_head(&buf, block.len()).unwrap().is_some());
        assert!(matches!(
            parse_head(&buf, block.len() - 1),
            Err(ProtoError::HeadTooLarge { .. })
        ));
    }

    // regression: a PROXY protocol line read as HTTP ("use scgi_pass, not proxy_pass")
    // and a TLS ClientHello as byte 22 of the protocol's own header.
    #[test]
    fn names_proxy_protocol_and_tls_on_the_scgi_port() {
        let proxy = ProtoError::ProxyProtocol { socket: "SCGI" };
        for line in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"[..],
            b"PROXY ",
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\0\x0c",
        ] {
            assert_eq!(parse_head(line, 4096), Err(proxy.clone()), "{line:?}");
        }
        let tls = ProtoError::Tls {
            socket: "SCGI",
            pass: "scgi_pass",
        };
        assert_eq!(
            parse_head(
                &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03][..],
                4096
            ),
            Err(tls)
        );
        // Until the bytes say which, they wait.
        for prefix in [&b"PROX"[..], b"\r\n\r\n", &[0x16, 0x03]] {
            assert_eq!(parse_head(prefix, 4096), Ok(None), "{prefix:?}");
        }
    }

    #[test]
    fn rejects_http_text_on_the_scgi_port() {
        for req in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"POST /x HTTP/1.1",
            b"HEAD / HTTP/1.0",
            b"PUT /a",
            b"OPTIONS * HTTP/1.1",
            b"PRI * HTTP/2.0\r\n",
            b"VERSION-CONTROL /",
        ] {
            assert_eq!(
                parse_head(req, LIMIT),
                Err(ProtoError::HttpOnScgi),
                "{req:?}"
            );
        }
        // The method word is still arriving.
        for part in [&b"G"[..], b"GE", b"GET", b"POS"] {
            assert_eq!(parse_head(part, LIMIT), Ok(None), "{part:?}");
        }
        // Uppercase bytes that are not a method word.
        for buf in [&b"GET/"[..], b"ABC:", b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"] {
            assert_eq!(
                parse_head(buf, LIMIT),
                Err(ProtoError::ScgiLength),
                "{buf:?}"
            );
        }
    }

    #[test]
    fn rejects_an_empty_name() {
        let block = b"CONTENT_LENGTH\x000\x00\x00value\x00"; // "" = "value"
        assert_eq!(headers_error(block), "empty header name");
        assert_eq!(headers_error(b"\x000\x00"), "empty header name");
    }

    #[test]
    fn rejects_a_missing_nul() {
        let name = "header name without its terminating NUL";
        let value = "header value without its terminating NUL";
        assert_eq!(headers_error(b"CONTENT_LENGTH"), name);
        assert_eq!(headers_error(b"CONTENT_LENGTH\x000"), value);
        assert_eq!(headers_error(b"CONTENT_LENGTH\x000\x00SCGI"), name);
        assert_eq!(headers_error(b"CONTENT_LENGTH\x000\x00SCGI\x001"), value);
        // Every strict prefix of a valid block ends inside a name or a value, or is
        // itself a shorter valid block (at a pair boundary).
        let buf = sample(0);
        let (_, block) = parse_head(&buf, LIMIT).unwrap().unwrap();
        let full = parse_headers(block).unwrap();
        let boundaries: Vec<usize> = full.iter().map(|(_, v)| v.end as usize + 1).collect();
        for i in 1..block.len() {
            if parse_headers(&block[..i]).is_ok() {
                assert!(boundaries.contains(&i), "prefix {i} parsed");
            }
        }
    }

    #[test]
    fn rejects_content_length_not_first() {
        let what = "the first header is not CONTENT_LENGTH";
        assert_eq!(headers_error(b"SCGI\x001\x00CONTENT_LENGTH\x000\x00"), what);
        assert_eq!(headers_error(b"content_length\x000\x00"), what);
        assert_eq!(headers_error(b"CONTENT_LENGTH \x000\x00"), what);
        assert_eq!(
            headers_error(b""),
            "empty header block; CONTENT_LENGTH is required"
        );
    }

    #[test]
    fn rejects_a_bad_content_length() {
        for v in [
            &b""[..],
            b"-1",
            b"+5",
            b" 5",
            b"5 ",
            b"0x10",
            b"1e3",
            b"99999999999999999999",
        ] {
            let mut block = b"CONTENT_LENGTH\x00".to_vec();
            block.extend_from_slice(v);
            block.extend_from_slice(b"\x00SCGI\x001\x00");
            assert!(
                matches!(parse_headers(&block), Err(ProtoError::BadContentLength(_))),
                "{v:?}"
            );
        }
    }

    #[test]
    fn accepts_repeated_names_and_a_matching_content_length_repeat() {
        let block =
            b"CONTENT_LENGTH\x0012\x00HTTP_X\x00a\x00HTTP_X\x00b\x00CONTENT_LENGTH\x0012\x00";
        let headers = parse_headers(block).unwrap();
        assert_eq!(
            pairs(block, &headers),
            vec![
                (&b"CONTENT_LENGTH"[..], &b"12"[..]),
                (b"HTTP_X", b"a"),
                (b"HTTP_X", b"b"),
                (b"CONTENT_LENGTH", b"12"),
            ]
        );
    }

    #[test]
    fn rejects_a_conflicting_content_length_repeat() {
        // Two lengths for one body is how requests get smuggled.
        let block = b"CONTENT_LENGTH\x005\x00CONTENT_LENGTH\x0050\x00";
        assert!(matches!(
            parse_headers(block),
            Err(ProtoError::ConflictingLength { .. })
        ));
        // regression: "5" then "05" was taken (the same number); uwsgi and FastCGI
        // refuse two different values, so SCGI does too.
        let block = b"CONTENT_LENGTH\x005\x00CONTENT_LENGTH\x0005\x00";
        assert!(matches!(
            parse_headers(block),
            Err(ProtoError::ConflictingLength { .. })
        ));
        let block = b"CONTENT_LENGTH\x005\x00CONTENT_LENGTH\x00x\x00";
        assert!(matches!(
            parse_headers(block),
            Err(ProtoError::ConflictingLength { .. })
        ));
    }

    #[test]
    fn accepts_a_head_without_the_scgi_header() {
        let block = b"CONTENT_LENGTH\x000\x00REQUEST_METHOD\x00GET\x00";
        let headers = parse_headers(block).unwrap();
        assert_eq!(headers.len(), 2);
        let (n, got) = parse_head(b"23:CONTENT_LENGTH\x000\x00SCGI\x00\x00,", LIMIT)
            .unwrap()
            .unwrap();
        assert_eq!(n, 27);
        assert_eq!(parse_headers(got).unwrap().len(), 2); // SCGI="" tolerated too
    }

    #[test]
    fn round_trips_binary_and_latin1_values() {
        // Everything but NUL, which SCGI cannot carry inside a value.
        let vals: Vec<Vec<u8>> = vec![
            vec![],
            (1..=255).collect(),
            "café ☃".as_bytes().to_vec(),
            b"caf\xe9".to_vec(),
            vec![b'x'; 1000],
        ];
        let sent: Vec<(&[u8], &[u8])> = vals.iter().map(|v| (&b"HTTP_X"[..], &v[..])).collect();
        let mut out = Vec::new();
        encode_head(&sent, 0, &mut out);
        let (n, block) = parse_head(&out, LIMIT).unwrap().unwrap();
        assert_eq!(n, out.len());
        let parsed = parse_headers(block).unwrap();
        assert_eq!(pairs(block, &parsed)[2..], sent[..]);
    }

    #[test]
    fn encode_skips_reserved_and_empty_names() {
        let mut out = Vec::new();
        encode_head(
            &[
                (b"CONTENT_LENGTH", b"999"),
                (b"SCGI", b"2"),
                (b"", b"x"),
                (b"A", b"b"),
            ],
            7,
            &mut out,
        );
        let (_, block) = parse_head(&out, LIMIT).unwrap().unwrap();
        let headers = parse_headers(block).unwrap();
        assert_eq!(
            pairs(block, &headers),
            vec![
                (&b"CONTENT_LENGTH"[..], &b"7"[..]),
                (b"SCGI", b"1"),
                (b"A", b"b"),
            ]
        );
    }

    #[test]
    fn encodes_a_large_body_length() {
        let mut out = Vec::new();
        encode_head(&[], u64::MAX >> 1, &mut out);
        let (_, block) = parse_head(&out, LIMIT).unwrap().unwrap();
        let headers = parse_headers(block).unwrap();
        let (_, v) = &headers[0];
        assert_eq!(
            &block[v.start as usize..v.end as usize],
            (u64::MAX >> 1).to_string().as_bytes()
        );
    }

    #[test]
    fn rejects_a_block_too_long_for_any_netstring() {
        let block = vec![b'a'; MAX_LENGTH + 1];
        assert!(matches!(
            parse_headers(&block),
            Err(ProtoError::HeadTooLarge { .. })
        ));
    }
}
