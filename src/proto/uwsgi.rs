//! The uwsgi binary protocol (docs/protocols.md §1): a 4-byte header, then a block of
//! length-prefixed key/value pairs. Pure: bytes in, borrowed views out; no I/O.
//!
//! ```text
//! u8 modifier1 | u16 LE datasize | u8 modifier2 | datasize bytes of vars | body…
//! vars = repeated ( u16 LE key_len | key | u16 LE val_len | val )
//! ```

use std::ops::Range;

use nom::number::streaming;
use nom::{IResult, Parser};

use super::ProtoError;

/// Length of the packet header (docs/protocols.md §1.1).
pub const HEADER_LEN: usize = 4;
/// `datasize` is a u16, so no vars block can be longer than this (§1.1).
pub const MAX_DATASIZE: usize = u16::MAX as usize;
/// modifier1 0: a WSGI request with its body after the vars (§1.3).
pub const MODIFIER_WSGI: u8 = 0;
/// modifier1 30: a WSGI request whose PATH_INFO still carries SCRIPT_NAME (§1.3, §4.3).
pub const MODIFIER_WSGI_STRIP_SCRIPT_NAME: u8 = 30;

/// One decoded packet header and its vars block (not yet split into pairs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    pub modifier1: u8,
    pub modifier2: u8,
    pub vars: &'a [u8],
}

/// Byte ranges of one key/value pair inside a vars block.
pub type VarRange = (Range<u32>, Range<u32>);

/// Parses the packet at the start of `buf`.
///
/// `Ok(None)`: need more bytes. `Ok(Some((n, p)))`: the first `n` bytes are one
/// header and vars block (the request body, if any, follows). `Err`: the peer is
/// not speaking uwsgi as we serve it; close the connection.
pub fn parse_packet(buf: &[u8], limit: usize) -> Result<Option<(usize, Packet<'_>)>, ProtoError> {
    // A PROXY protocol header or a TLS handshake would read as modifier1 'P', 13 or 22
    // (or as HTTP): say what they are.
    match super::sniff(buf) {
        super::Sniff::Proxy => return Err(ProtoError::ProxyProtocol { socket: "uwsgi" }),
        super::Sniff::Tls => {
            return Err(ProtoError::Tls {
                socket: "uwsgi",
                pass: "uwsgi_pass",
            })
        }
        super::Sniff::Partial => return Ok(None),
        super::Sniff::Other => {}
    }
    // HTTP sent to a uwsgi port reads as modifier1 = 'G'/'P'/'H'… (§1.6). Tell that
    // apart as soon as its method word and space are here; it is the commonest
    // mistake. Other uppercase bytes are a wrong modifier1 (below).
    if buf.first().is_some_and(u8::is_ascii_uppercase) {
        match super::method_word(buf) {
            Some(true) => return Err(ProtoError::HttpOnUwsgi),
            Some(false) => {}
            None => return Ok(None),
        }
    }
    // Streaming number parsers can only fail by running out of input.
    let header: IResult<_, _> = (streaming::u8, streaming::le_u16, streaming::u8).parse(buf);
    let Ok((rest, (modifier1, size, modifier2))) = header else {
        return Ok(None);
    };
    if modifier1 != MODIFIER_WSGI && modifier1 != MODIFIER_WSGI_STRIP_SCRIPT_NAME {
        return match super::looks_like(buf) {
            Ok(Some(got)) if got != super::Spoken::Uwsgi => Err(ProtoError::WrongProtocol {
                got,
                socket: super::Spoken::Uwsgi,
            }),
            // Not yet sure: the few bytes more an SCGI length may take.
            Err(()) => Ok(None),
            _ => Err(ProtoError::Modifier(modifier1)),
        };
    }
    let size = usize::from(size);
    if size > limit {
        return Err(ProtoError::HeadTooLarge { size, limit });
    }
    Ok(rest.get(..size).map(|vars| {
        (
            HEADER_LEN + size,
            Packet {
                modifier1,
                modifier2,
                vars,
            },
        )
    }))
}

/// Splits a complete vars block into key/value byte ranges (offsets into `block`).
///
/// Pairs with an empty key are skipped (§1.2). A length that runs past the end of
/// the block, including 1–3 stray trailing bytes, is an error.
pub fn parse_vars(block: &[u8]) -> Result<Vec<VarRange>, ProtoError> {
    // Every pair takes at least 4 bytes: a cheap, exact upper bound for the capacity.
    let mut vars = Vec::with_capacity(block.len() / 16 + 4);
    let mut pos = 0usize;
    while pos < block.len() {
        let (key, after_key) = string(block, pos)?;
        let (value, after_value) = string(block, after_key)?;
        if !key.is_empty() {
            vars.push((key, value));
        }
        pos = after_value;
    }
    Ok(vars)
}

/// One `u16 LE length | bytes` string at `pos`; returns its range and the next offset.
fn string(block: &[u8], pos: usize) -> Result<(Range<u32>, usize), ProtoError> {
    let overrun = || ProtoError::VarOverrun {
        offset: pos,
        block: block.len(),
    };
    // The block length is already checked, so a short field here is malformed input.
    let len = match block.get(pos..pos + 2) {
        Some(&[lo, hi]) => usize::from(u16::from_le_bytes([lo, hi])),
        _ => return Err(overrun()),
    };
    let start = pos + 2;
    let end = start + len;
    if end > block.len() {
        return Err(overrun());
    }
    // Blocks are at most 64 KiB, so offsets always fit in u32.
    Ok((start as u32..end as u32, end))
}

/// Encodes one request packet (header + vars), as nginx's `uwsgi_pass` does. The body,
/// if any, is sent after it as raw bytes.
pub fn encode_packet(
    modifier1: u8,
    modifier2: u8,
    vars: &[(&[u8], &[u8])],
    out: &mut Vec<u8>,
) -> Result<(), ProtoError> {
    let mut size = 0usize;
    for (k, v) in vars {
        for s in [k, v] {
            if s.len() > MAX_DATASIZE {
                return Err(ProtoError::HeadTooLarge {
                    size: s.len(),
                    limit: MAX_DATASIZE,
                });
            }
            size += 2 + s.len();
        }
    }
    if size > MAX_DATASIZE {
        return Err(ProtoError::HeadTooLarge {
            size,
            limit: MAX_DATASIZE,
        });
    }
    out.reserve(HEADER_LEN + size);
    out.push(modifier1);
    out.extend_from_slice(&(size as u16).to_le_bytes());
    out.push(modifier2);
    for (k, v) in vars {
        for s in [k, v] {
            out.extend_from_slice(&(s.len() as u16).to_le_bytes());
            out.extend_from_slice(s);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut out = Vec::new();
        encode_packet(
            0,
            0,
            &[
                (b"REQUEST_METHOD", b"GET"),
                (b"PATH_INFO", b"/hello"),
                (b"QUERY_STRING", b""),
            ],
            &mut out,
        )
        .unwrap();
        out
    }

    fn pairs<'a>(block: &'a [u8], vars: &[VarRange]) -> Vec<(&'a [u8], &'a [u8])> {
        vars.iter()
            .map(|(k, v)| {
                (
                    &block[k.start as usize..k.end as usize],
                    &block[v.start as usize..v.end as usize],
                )
            })
            .collect()
    }

    #[test]
    fn accepts_a_whole_packet_and_round_trips() {
        let buf = sample();
        let (n, p) = parse_packet(&buf, MAX_DATASIZE).unwrap().unwrap();
        assert_eq!(n, buf.len());
        assert_eq!((p.modifier1, p.modifier2), (0, 0));
        let vars = parse_vars(p.vars).unwrap();
        assert_eq!(
            pairs(p.vars, &vars),
            vec![
                (&b"REQUEST_METHOD"[..], &b"GET"[..]),
                (&b"PATH_INFO"[..], &b"/hello"[..]),
                (&b"QUERY_STRING"[..], &b""[..]),
            ]
        );
    }

    #[test]
    fn waits_on_every_prefix() {
        let buf = sample();
        for i in 0..buf.len() {
            assert_eq!(
                parse_packet(&buf[..i], MAX_DATASIZE),
                Ok(None),
                "prefix {i}"
            );
        }
    }

    #[test]
    fn leaves_the_body_after_the_packet() {
        let mut buf = sample();
        let len = buf.len();
        buf.extend_from_slice(b"body bytes");
        let (n, _) = parse_packet(&buf, MAX_DATASIZE).unwrap().unwrap();
        assert_eq!(n, len);
    }

    #[test]
    fn accepts_an_empty_vars_block() {
        let buf = [0, 0, 0, 0]; // modifier1 0, datasize 0 LE, modifier2 0
        let (n, p) = parse_packet(&buf, MAX_DATASIZE).unwrap().unwrap();
        assert_eq!(n, 4);
        assert!(parse_vars(p.vars).unwrap().is_empty());
    }

    #[test]
    fn rejects_a_head_over_the_limit_before_reading_it() {
        let buf = [0, 0x00, 0x20, 0]; // modifier1 0, datasize 8192 LE
        assert_eq!(
            parse_packet(&buf, 4096),
            Err(ProtoError::HeadTooLarge {
                size: 8192,
                limit: 4096
            })
        );
    }

    #[test]
    fn rejects_other_modifiers() {
        for m in [1u8, 5, 10, 17, 100, 111, 173, 200, 255] {
            let buf = [m, 0, 0, 0];
            assert_eq!(
                parse_packet(&buf, MAX_DATASIZE),
                Err(ProtoError::Modifier(m))
            );
        }
    }

    #[test]
    fn accepts_modifier_30() {
        let buf = [30, 0, 0, 0]; // modifier1 30, datasize 0
        assert!(parse_packet(&buf, MAX_DATASIZE).unwrap().is_some());
    }

    // regression: a PROXY protocol line read as HTTP ("use uwsgi_pass, not proxy_pass")
    // and a TLS ClientHello as byte 22 of the protocol's own header.
    #[test]
    fn names_proxy_protocol_and_tls_on_the_uwsgi_port() {
        let proxy = ProtoError::ProxyProtocol { socket: "uwsgi" };
        for line in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"[..],
            b"PROXY ",
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\0\x0c",
        ] {
            assert_eq!(
                parse_packet(line, MAX_DATASIZE),
                Err(proxy.clone()),
                "{line:?}"
            );
        }
        let tls = ProtoError::Tls {
            socket: "uwsgi",
            pass: "uwsgi_pass",
        };
        assert_eq!(
            parse_packet(
                &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03][..],
                MAX_DATASIZE
            ),
            Err(tls)
        );
        // Until the bytes say which, they wait.
        for prefix in [&b"PROX"[..], b"\r\n\r\n", &[0x16, 0x03]] {
            assert_eq!(parse_packet(prefix, MAX_DATASIZE), Ok(None), "{prefix:?}");
        }
    }

    #[test]
    fn rejects_http_text_on_the_uwsgi_port() {
        for req in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /x HTTP/1.1",
            b"HEAD /",
            b"PUT /a",
        ] {
            assert_eq!(
                parse_packet(req, MAX_DATASIZE),
                Err(ProtoError::HttpOnUwsgi)
            );
        }
        // Uppercase bytes that are no method word and a space: a wrong modifier1.
        for buf in [&b"GARBAGEGARBAGE\0\0"[..], b"GET/"] {
            assert_eq!(
                parse_packet(buf, MAX_DATASIZE),
                Err(ProtoError::Modifier(buf[0])),
                "{buf:?}"
            );
        }
        assert_eq!(parse_packet(b"GE", MAX_DATASIZE), Ok(None));
    }

    #[test]
    fn rejects_every_overrunning_length() {
        // A key length that runs past the block.
        let block = [5, 0, b'A', b'B']; // key_len 5 LE, only 2 key bytes
        assert!(matches!(
            parse_vars(&block),
            Err(ProtoError::VarOverrun { offset: 0, .. })
        ));
        // A value length that runs past the block.
        let block = [1, 0, b'K', 9, 0, b'v']; // key "K", val_len 9, 1 byte
        assert!(matches!(
            parse_vars(&block),
            Err(ProtoError::VarOverrun { offset: 3, .. })
        ));
        // A key with no value length at all.
        let block = [1, 0, b'K'];
        assert!(matches!(
            parse_vars(&block),
            Err(ProtoError::VarOverrun { offset: 3, .. })
        ));
        // One, two and three stray trailing bytes.
        for extra in 1..=3 {
            let mut block = vec![1, 0, b'K', 1, 0, b'v'];
            block.extend(std::iter::repeat_n(0xff, extra));
            assert!(parse_vars(&block).is_err(), "{extra} trailing bytes");
        }
        // Maximum lengths in an empty block.
        assert!(parse_vars(&[0xff, 0xff]).is_err());
    }

    #[test]
    fn rejects_every_truncation_of_a_vars_block() {
        let buf = sample();
        let block = &buf[HEADER_LEN..];
        for i in 1..block.len() {
            // Any strict prefix ends inside a length or a string.
            if parse_vars(&block[..i]).is_ok() {
                // ...unless it ends exactly at a pair boundary.
                let boundaries = [2 + 14 + 2 + 3, 2 + 14 + 2 + 3 + 2 + 9 + 2 + 6];
                assert!(boundaries.contains(&i), "prefix {i} parsed");
            }
        }
    }

    #[test]
    fn skips_pairs_with_an_empty_key() {
        let block = [0, 0, 1, 0, b'x', 1, 0, b'K', 0, 0]; // "" = "x", "K" = ""
        let vars = parse_vars(&block).unwrap();
        assert_eq!(pairs(&block, &vars), vec![(&b"K"[..], &b""[..])]);
    }

    #[test]
    fn rejects_encoding_an_oversized_block() {
        let big = vec![b'a'; 40_000];
        let mut out = Vec::new();
        let err = encode_packet(0, 0, &[(b"A", &big), (b"B", &big)], &mut out);
        assert!(matches!(err, Err(ProtoError::HeadTooLarge { .. })));
    }

    #[test]
    fn round_trips_binary_and_latin1_values() {
        let vals: Vec<Vec<u8>> = vec![vec![], vec![0], (0..=255).collect(), vec![b'x'; 1000]];
        let vars: Vec<(&[u8], &[u8])> = vals.iter().map(|v| (&b"HTTP_X"[..], &v[..])).collect();
        let mut out = Vec::new();
        encode_packet(0, 0, &vars, &mut out).unwrap();
        let (_, p) = parse_packet(&out, MAX_DATASIZE).unwrap().unwrap();
        let parsed = parse_vars(p.vars).unwrap();
        assert_eq!(pairs(p.vars, &parsed), vars);
    }
}
