//! FastCGI name-value pairs (docs/protocols.md §2.4), the encoding of PARAMS, GET_VALUES and
//! GET_VALUES_RESULT content, and the GET_VALUES answer (§2.7).
//!
//! ```text
//! pair   = length(name) | length(value) | name | value
//! length = u8 (high bit 0, 0..=127) | u32 BE with the top bit set (masked off)
//! ```

use nom::number::complete;
use nom::{IResult, Parser};

use super::{encode_record, record::encode_empty_values_result, GET_VALUES_RESULT};
use crate::proto::cgi::content_length_again;
use crate::proto::ProtoError;

pub use crate::proto::uwsgi::VarRange;

/// The longest name or value the 4-byte length form can carry (31 bits, §2.4).
pub const MAX_PAIR_LEN: usize = 0x7fff_ffff;
/// GET_VALUES name: the most transport connections the app accepts (§2.7).
pub const FCGI_MAX_CONNS: &[u8] = b"FCGI_MAX_CONNS";
/// GET_VALUES name: the most requests in flight the app accepts (§2.7).
pub const FCGI_MAX_REQS: &[u8] = b"FCGI_MAX_REQS";
/// GET_VALUES name: "1" if the app multiplexes requests on one connection (§2.7).
pub const FCGI_MPXS_CONNS: &[u8] = b"FCGI_MPXS_CONNS";

/// What the app answers to FCGI_GET_VALUES (§2.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Values {
    pub max_conns: usize,
    pub max_reqs: usize,
    pub mpxs_conns: bool,
}

/// Splits a complete, concatenated PARAMS (or GET_VALUES) block into name and value
/// byte ranges (offsets into `block`).
///
/// Pairs with an empty name are skipped. A length that runs past the end of the block,
/// including a 4-byte length cut short, is [`ProtoError::FcgiPairOverrun`] at the offset
/// of that length field. Callers cap blocks far below 4 GiB; a longer one is refused so
/// that every offset fits in a u32.
pub fn parse_pairs(block: &[u8]) -> Result<Vec<VarRange>, ProtoError> {
    parse_params(block).map(|(pairs, _)| pairs)
}

/// Where the body length names are among the pairs [`parse_params`] returns: the index
/// of the last `CONTENT_LENGTH` and of the last `HTTP_CONTENT_LENGTH`, if any (and of
/// the last `HTTP_X_REQUEST_ID`, the request's id in the log).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LengthVars {
    pub cgi: Option<usize>,
    pub http: Option<usize>,
    pub request_id: Option<usize>,
    /// The first repeat of `CONTENT_LENGTH` with another value, empty included
    /// ([`crate::proto::cgi::content_length_again`]): (earlier pair, this pair).
    pub conflict: Option<(usize, usize)>,
}

/// [`parse_pairs`], noting on the way where the body length names are (their name
/// lengths are at hand, so a request's assembly need not scan the pairs again).
pub fn parse_params(block: &[u8]) -> Result<(Vec<VarRange>, LengthVars), ProtoError> {
    const CGI: &[u8] = b"CONTENT_LENGTH";
    const HTTP: &[u8] = b"HTTP_CONTENT_LENGTH";
    const ID: &[u8] = b"HTTP_X_REQUEST_ID";
    if u32::try_from(block.len()).is_err() {
        return Err(ProtoError::FcgiPairOverrun {
            offset: 0,
            block: block.len(),
        });
    }
    let mut lengths = LengthVars::default();
    // A pair takes at least 2 bytes; real CGI pairs average well over 16.
    let mut pairs: Vec<VarRange> = Vec::with_capacity(block.len() / 16 + 4);
    let mut pos = 0usize;
    while pos < block.len() {
        let name_len_at = pos;
        // Both lengths in their 1-byte form (nearly every pair): read them directly.
        let (name_len, value_len, after) = match block.get(pos..pos + 2) {
            Some(&[n, v]) if (n | v) & 0x80 == 0 => (usize::from(n), usize::from(v), pos + 2),
            _ => {
                let (name_len, after) = length(block, pos)?;
                let (value_len, after) = length(block, after)?;
                (name_len, value_len, after)
            }
        };
        // Saturating: an end that overflows is past the block, and refused below.
        let name_end = after.saturating_add(name_len);
        let value_end = name_end.saturating_add(value_len);
        if value_end > block.len() {
            // Blame the length field that runs past the end.
            let value_len_at = if block[name_len_at] & 0x80 == 0 {
                name_len_at + 1
            } else {
                name_len_at + 4
            };
            let name = span(block, after, name_len, name_len_at)?;
            span(block, name.end as usize, value_len, value_len_at)?;
        }
        if name_len > 0 {
            // Lengths first: most names are neither, and are not compared at all.
            match name_len {
                14 if &block[after..name_end] == CGI => {
                    // Every CONTENT_LENGTH so far has the first one's value: the last
                    // stands for it.
                    if let (None, Some(i)) = (lengths.conflict, lengths.cgi) {
                        let first = &pairs[i].1;
                        let first = &block[first.start as usize..first.end as usize];
                        if content_length_again(first, &block[name_end..value_end]).is_err() {
                            lengths.conflict = Some((i, pairs.len()));
                        }
                    }
                    lengths.cgi = Some(pairs.len());
                }
                19 if &block[after..name_end] == HTTP => lengths.http = Some(pairs.len()),
                17 if &block[after..name_end] == ID => lengths.request_id = Some(pairs.len()),
                _ => {}
            }
            // The block is under 4 GiB (checked above): both offsets fit in a u32.
            pairs.push((
                after as u32..name_end as u32,
                name_end as u32..value_end as u32,
            ));
        }
        pos = value_end;
    }
    Ok((pairs, lengths))
}

fn overrun(block: &[u8], offset: usize) -> ProtoError {
    ProtoError::FcgiPairOverrun {
        offset,
        block: block.len(),
    }
}

/// One length field at `pos`: its value and the offset just after it.
fn length(block: &[u8], pos: usize) -> Result<(usize, usize), ProtoError> {
    let rest = block.get(pos..).unwrap_or_default();
    match rest.first() {
        None => Err(overrun(block, pos)),
        Some(&b) if b & 0x80 == 0 => Ok((usize::from(b), pos + 1)),
        Some(_) => {
            // The block is complete, so a short 4-byte length is malformed input.
            let long: IResult<_, _> = complete::be_u32.parse_complete(rest);
            let Ok((_, long)) = long else {
                return Err(overrun(block, pos));
            };
            // 31 bits always fit in usize on the 32- and 64-bit targets postern runs on.
            let len = usize::try_from(long & 0x7fff_ffff).map_err(|_| overrun(block, pos))?;
            Ok((len, pos + 4))
        }
    }
}

/// The range of `len` bytes at `start`, or an overrun blamed on the length at `field`.
fn span(
    block: &[u8],
    start: usize,
    len: usize,
    field: usize,
) -> Result<std::ops::Range<u32>, ProtoError> {
    let end = start
        .checked_add(len)
        .filter(|&end| end <= block.len())
        .ok_or_else(|| overrun(block, field))?;
    // parse_pairs refused blocks longer than u32::MAX, so both offsets fit.
    Ok(start as u32..end as u32)
}

/// Walks the length fields of a PARAMS stream as it arrives, so that a pair that can
/// never fit `limit` is refused as soon as its lengths are read, not once its stream
/// ends (a peer that announces a 2 GiB value and sends no more would otherwise hold the
/// connection until `--head-timeout`).
///
/// `parts` is what has arrived, in order (the block so far, then the record just come);
/// `at` the offset in it of a pair's first length field (0 at the stream's start, then
/// what the last call returned). `Ok(next)`: no pair whose lengths are all here is alone
/// over `limit`; `next` is the offset of the first pair whose length fields have not all
/// arrived (past the end of `parts` while a pair's name and value are still coming).
/// `Err(size)`: the first pair whose own encoding (its length fields, name and value)
/// is `size` bytes, over `limit`: no block within the limit can hold it.
///
/// The walk is [`parse_params`]' (the same pair boundaries), a step per pair, so a
/// stream is walked once in all, whatever its records.
pub fn pair_over_limit(parts: [&[u8]; 2], mut at: usize, limit: usize) -> Result<usize, usize> {
    let [first, second] = parts;
    let total = first.len() + second.len();
    let byte = |i: usize| match i.checked_sub(first.len()) {
        None => Some(first[i]),
        Some(j) => second.get(j).copied(),
    };
    // One length field at `pos`: its value and the offset after it.
    let field = |pos: usize| -> Option<(usize, usize)> {
        let b = byte(pos)?;
        if b & 0x80 == 0 {
            return Some((usize::from(b), pos + 1));
        }
        let mut long = [b & 0x7f, 0, 0, 0];
        for (k, slot) in long.iter_mut().enumerate().skip(1) {
            *slot = byte(pos + k)?;
        }
        // 31 bits fit in usize on every target postern runs on.
        let len = usize::try_from(u32::from_be_bytes(long)).unwrap_or(usize::MAX);
        Some((len, pos + 4))
    };
    while at < total {
        let Some((name_len, after)) = field(at) else {
            break;
        };
        let Some((value_len, after)) = field(after) else {
            break;
        };
        let size = (after - at)
            .saturating_add(name_len)
            .saturating_add(value_len);
        if size > limit {
            return Err(size);
        }
        at += size;
    }
    Ok(at)
}

/// The variables the access line and a request's span show (method, path, client,
/// request id): what [`keep_logged_pairs`] keeps of PARAMS dropped past the limit.
const LOGGED: [&[u8]; 9] = [
    b"REQUEST_METHOD",
    b"REQUEST_URI",
    b"PATH_INFO",
    b"REMOTE_ADDR",
    b"REMOTE_USER",
    b"SERVER_PROTOCOL",
    b"HTTP_REFERER",
    b"HTTP_USER_AGENT",
    b"HTTP_X_REQUEST_ID",
];

/// The most [`keep_logged_pairs`] keeps of one request.
pub const MAX_LOGGED: usize = 4096;

/// Appends to `out` (as pairs) the logged variables among the pairs at the start of
/// `chunk`, up to the first pair that does not end within it, while `out` stays under
/// [`MAX_LOGGED`]. For PARAMS dropped past the limit, looked at once (a record, or the
/// block before it): a request answered 431 still shows its method and path. A pair
/// split between two records is missed (Apache never splits one; nginx sends one
/// record).
pub fn keep_logged_pairs(chunk: &[u8], out: &mut Vec<u8>) {
    let mut pos = 0usize;
    while pos < chunk.len() {
        let Ok((name_len, after)) = length(chunk, pos) else {
            return;
        };
        let Ok((value_len, after)) = length(chunk, after) else {
            return;
        };
        let Some(name_end) = after.checked_add(name_len) else {
            return;
        };
        let Some(value_end) = name_end
            .checked_add(value_len)
            .filter(|&e| e <= chunk.len())
        else {
            return;
        };
        let name = &chunk[after..name_end];
        if LOGGED.contains(&name) && out.len() + (value_end - pos) + 8 <= MAX_LOGGED {
            encode_pairs(&[(name, &chunk[name_end..value_end])], out);
        }
        pos = value_end;
    }
}

/// Appends one length field: 1 byte for up to 127, else 4 bytes BE with the top bit set.
fn encode_length(len: usize, out: &mut Vec<u8>) {
    if len <= 127 {
        out.push(len as u8);
    } else {
        assert!(
            len <= MAX_PAIR_LEN,
            "FastCGI name/value of {len} bytes is over 2^31 - 1"
        );
        out.extend_from_slice(&(len as u32 | 0x8000_0000).to_be_bytes());
    }
}

/// Appends `pairs` in the name-value encoding (§2.4), the short length form for up to
/// 127 bytes and the long one otherwise, as nginx and uWSGI do.
///
/// # Panics
/// If a name or value is longer than [`MAX_PAIR_LEN`] (2 GiB), which no length can encode.
pub fn encode_pairs(pairs: &[(&[u8], &[u8])], out: &mut Vec<u8>) {
    let size: usize = pairs
        .iter()
        .map(|(name, value)| 8 + name.len() + value.len())
        .sum();
    out.reserve(size);
    for (name, value) in pairs {
        encode_length(name.len(), out);
        encode_length(value.len(), out);
        out.extend_from_slice(name);
        out.extend_from_slice(value);
    }
}

/// Appends the FCGI_GET_VALUES_RESULT record (requestId 0) answering the GET_VALUES
/// content `query` (§2.7): the known names (`FCGI_MAX_CONNS`, `FCGI_MAX_REQS`,
/// `FCGI_MPXS_CONNS`) with their values from `values`, in the order asked; unknown names
/// are omitted, and a name asked twice is answered once, which keeps the answer within
/// one record. A malformed query gets an empty result.
pub fn encode_get_values_result(out: &mut Vec<u8>, query: &[u8], values: &Values) {
    let Ok(asked) = parse_pairs(query) else {
        encode_empty_values_result(out);
        return;
    };
    let known: [(&[u8], String); 3] = [
        (FCGI_MAX_CONNS, values.max_conns.to_string()),
        (FCGI_MAX_REQS, values.max_reqs.to_string()),
        (FCGI_MPXS_CONNS, u8::from(values.mpxs_conns).to_string()),
    ];
    let mut answered = [false; 3];
    let mut content = Vec::new();
    for (name, _) in asked {
        let name = &query[name.start as usize..name.end as usize];
        let Some(i) = known.iter().position(|(known, _)| *known == name) else {
            continue;
        };
        if !std::mem::replace(&mut answered[i], true) {
            encode_pairs(&[(known[i].0, known[i].1.as_bytes())], &mut content);
        }
    }
    encode_record(out, GET_VALUES_RESULT, 0, &content);
}

#[cfg(test)]
mod tests {
    use super::super::{parse_record, GET_VALUES_RESULT, HEADER_LEN};
    use super::*;

    fn split<'a>(block: &'a [u8], pairs: &[VarRange]) -> Vec<(&'a [u8], &'a [u8])> {
        pairs
            .iter()
            .map(|(n, v)| {
                (
                    &block[n.start as usize..n.end as usize],
                    &block[v.start as usize..v.end as usize],
                )
            })
            .collect()
    }

    fn values() -> Values {
        Values {
            max_conns: 100,
            max_reqs: 1,
            mpxs_conns: false,
        }
    }

    /// The pairs of a GET_VALUES_RESULT record.
    fn result_pairs(out: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let (n, r) = parse_record(out).unwrap().unwrap();
        assert_eq!(n, out.len());
        assert_eq!((r.kind, r.request_id), (GET_VALUES_RESULT, 0));
        let pairs = parse_pairs(r.content).unwrap();
        split(r.content, &pairs)
            .into_iter()
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect()
    }

    #[test]
    fn accepts_what_nginx_sends() {
        let block = b"\x0e\x03REQUEST_METHODGET\x0c\x00QUERY_STRING";
        let pairs = parse_pairs(block).unwrap();
        assert_eq!(
            split(block, &pairs),
            vec![
                (&b"REQUEST_METHOD"[..], &b"GET"[..]),
                (&b"QUERY_STRING"[..], &b""[..])
            ]
        );
        assert!(parse_pairs(&[]).unwrap().is_empty());
    }

    #[test]
    fn round_trips_short_and_long_lengths() {
        let lens = [0usize, 1, 127, 128, 255, 256, 70_000];
        for &name_len in &lens[1..] {
            for &value_len in &lens {
                let name = vec![b'N'; name_len];
                let value: Vec<u8> = (0..value_len).map(|i| i as u8).collect();
                let mut block = Vec::new();
                encode_pairs(&[(&name, &value), (b"K", b"v")], &mut block);
                let long = |len| if len <= 127 { 1 } else { 4 };
                assert_eq!(
                    block.len(),
                    long(name_len) + long(value_len) + name_len + value_len + 2 + 2,
                    "{name_len}/{value_len}"
                );
                let pairs = parse_pairs(&block).unwrap();
                assert_eq!(
                    split(&block, &pairs),
                    vec![(&name[..], &value[..]), (&b"K"[..], &b"v"[..])]
                );
            }
        }
    }

    #[test]
    fn encodes_lengths_as_the_spec_shows() {
        let v127 = vec![b'a'; 127];
        let v128 = vec![b'a'; 128];
        let v70000 = vec![b'a'; 70_000];
        let mut out = Vec::new();
        encode_pairs(&[(b"A", &v127)], &mut out);
        assert_eq!(out[..2], [1, 127]); // name 1, value 127: both short
        out.clear();
        encode_pairs(&[(b"A", &v128)], &mut out);
        assert_eq!(out[..5], [1, 0x80, 0, 0, 128]); // value 128: long form
        out.clear();
        encode_pairs(&[(&v70000, b"")], &mut out);
        assert_eq!(out[..5], [0x80, 0x01, 0x11, 0x70, 0]); // name 70000 = 0x011170
    }

    #[test]
    fn masks_the_top_bit_of_a_long_length() {
        // name 0x80000001 → 1 byte ("K"), value 0x80000000 → 0 bytes
        let block = [0x80, 0, 0, 1, 0x80, 0, 0, 0, b'K'];
        let pairs = parse_pairs(&block).unwrap();
        assert_eq!(split(&block, &pairs), vec![(&b"K"[..], &b""[..])]);
    }

    #[test]
    fn skips_pairs_with_an_empty_name() {
        let block = [0, 1, b'x', 1, 0, b'K']; // "" = "x", "K" = ""
        let pairs = parse_pairs(&block).unwrap();
        assert_eq!(split(&block, &pairs), vec![(&b"K"[..], &b""[..])]);
    }

    #[test]
    fn rejects_every_overrunning_length() {
        let err = |offset, block| Err(ProtoError::FcgiPairOverrun { offset, block });
        // A name length with no value length.
        assert_eq!(parse_pairs(&[1]), err(1, 1));
        // A name running past the end.
        assert_eq!(parse_pairs(&[5, 0, b'A', b'B']), err(0, 4));
        // A value running past the end.
        assert_eq!(parse_pairs(&[1, 9, b'K', b'v']), err(1, 4));
        // Truncated 4-byte lengths, as name and as value.
        for cut in 1..4 {
            let block = &[0x80, 0, 0, 1][..cut];
            assert_eq!(parse_pairs(block), err(0, cut));
            let block = &[1, 0x80, 0, 0][..cut + 1];
            assert_eq!(parse_pairs(block), err(1, cut + 1));
        }
        // The largest lengths in a small block.
        assert_eq!(
            parse_pairs(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            err(0, 8)
        );
        // A stray byte after a good pair.
        assert_eq!(parse_pairs(&[1, 1, b'K', b'v', 3]), err(5, 5)); // no value length
    }

    #[test]
    fn refuses_a_pair_over_the_limit_as_soon_as_its_lengths_are_read() {
        // Name 4, value 2^31 - 1: refused from its 5 length bytes, wherever they are cut.
        let huge = [4, 0xff, 0xff, 0xff, 0xff, b'N', b'A', b'M', b'E'];
        let size = 5 + 4 + 0x7fff_ffff;
        for cut in 0..=huge.len() {
            let (a, b) = huge.split_at(cut);
            assert_eq!(pair_over_limit([a, b], 0, 4096), Err(size), "cut {cut}");
        }
        // Only the length fields are needed: before them, it waits.
        for n in 0..5 {
            assert_eq!(
                pair_over_limit([&huge[..n], &[]], 0, 4096),
                Ok(0),
                "{n} bytes"
            );
        }
        // A 4-byte name length (top bit masked off), after a good pair.
        let mut block = Vec::new();
        encode_pairs(&[(b"REQUEST_METHOD", b"GET")], &mut block);
        let good = block.len();
        block.extend_from_slice(&[0x80, 0x01, 0x00, 0x00, 0]);
        assert_eq!(pair_over_limit([&block, &[]], 0, 4096), Err(5 + 0x1_0000));
        assert_eq!(
            pair_over_limit([&block, &[]], 0, 1 << 20),
            Ok(good + 5 + 0x1_0000)
        );
        // A pair exactly at the limit fits; one byte more does not.
        let value = vec![b'v'; 200];
        let mut block = Vec::new();
        encode_pairs(&[(b"K", &value)], &mut block);
        assert_eq!(block.len(), 206);
        assert_eq!(pair_over_limit([&block, &[]], 0, 206), Ok(206));
        assert_eq!(pair_over_limit([&block, &[]], 0, 205), Err(206));
    }

    #[test]
    fn walks_the_pairs_as_parse_params_does_whatever_the_records() {
        let long = vec![b'v'; 300];
        let mut block = Vec::new();
        encode_pairs(
            &[(b"A", b"b"), (b"LONG", &long), (b"", b"x"), (b"C", b"")],
            &mut block,
        );
        // The pair boundaries: "A"="b", "LONG" (a 4-byte value length), ""="x" (an
        // empty name, skipped by parse_params but walked), "C"="".
        let bounds = [0, 4, 313, 316, 319];
        assert_eq!(block.len(), 319);
        // Every split into a block so far and a record, walked on from the boundary
        // the first call returned: the same end.
        for cut in 0..=block.len() {
            let (a, b) = block.split_at(cut);
            let at = pair_over_limit([a, &[]], 0, 4096).unwrap();
            assert!(bounds.contains(&at), "cut {cut}: {at}");
            assert_eq!(
                pair_over_limit([a, b], at, 4096),
                Ok(block.len()),
                "cut {cut}"
            );
        }
        // Garbage is walked as parse_params walks it: the same pair blamed.
        assert_eq!(
            pair_over_limit([&[0xff; 8], &[]], 0, 1024),
            Err(8 + 2 * 0x7fff_ffff)
        );
    }

    #[test]
    fn rejects_every_truncation_of_a_block() {
        let mut block = Vec::new();
        let long = vec![b'v'; 200];
        encode_pairs(&[(b"AB", b"cd"), (b"LONG", &long)], &mut block);
        let boundary = 2 + 2 + 2;
        for i in 1..block.len() {
            assert_eq!(
                parse_pairs(&block[..i]).is_ok(),
                i == boundary,
                "prefix {i}"
            );
        }
    }

    #[test]
    fn answers_get_values() {
        let mut query = Vec::new();
        encode_pairs(
            &[
                (FCGI_MAX_CONNS, b""),
                (b"FCGI_UNKNOWN_NAME", b""),
                (FCGI_MAX_REQS, b""),
                (FCGI_MPXS_CONNS, b""),
            ],
            &mut query,
        );
        let mut out = Vec::new();
        encode_get_values_result(&mut out, &query, &values());
        assert_eq!(
            result_pairs(&out),
            vec![
                (b"FCGI_MAX_CONNS".to_vec(), b"100".to_vec()),
                (b"FCGI_MAX_REQS".to_vec(), b"1".to_vec()),
                (b"FCGI_MPXS_CONNS".to_vec(), b"0".to_vec()),
            ]
        );
        assert_eq!(out.len() % 8, 0);
    }

    #[test]
    fn answers_get_values_in_the_order_asked_once_each() {
        let mut query = Vec::new();
        let v = Values {
            mpxs_conns: true,
            ..values()
        };
        encode_pairs(
            &[
                (FCGI_MPXS_CONNS, b""),
                (FCGI_MPXS_CONNS, b"ignored"),
                (FCGI_MAX_REQS, b""),
            ],
            &mut query,
        );
        let mut out = Vec::new();
        encode_get_values_result(&mut out, &query, &v);
        assert_eq!(
            result_pairs(&out),
            vec![
                (b"FCGI_MPXS_CONNS".to_vec(), b"1".to_vec()),
                (b"FCGI_MAX_REQS".to_vec(), b"1".to_vec()),
            ]
        );
    }

    #[test]
    fn answers_unknown_only_and_malformed_queries_with_an_empty_result() {
        let mut query = Vec::new();
        encode_pairs(&[(b"FCGI_SOMETHING", b"")], &mut query);
        for q in [&query[..], &[], &[5, 0, b'x']] {
            let mut out = Vec::new();
            encode_get_values_result(&mut out, q, &values());
            // version 1, GET_VALUES_RESULT, id 0, content 0, padding 0
            assert_eq!(out, [1, 10, 0, 0, 0, 0, 0, 0], "{q:?}");
            assert_eq!(out.len(), HEADER_LEN);
        }
    }

    #[test]
    fn keeps_the_logged_pairs_of_dropped_params_up_to_a_cut_pair() {
        let mut chunk = Vec::new();
        let cookie = vec![b'c'; 300];
        encode_pairs(
            &[
                (b"HTTP_COOKIE", &cookie),
                (b"REQUEST_METHOD", b"POST"),
                (b"SCRIPT_NAME", b"/x"),
                (b"REQUEST_URI", b"/x?y=1"),
            ],
            &mut chunk,
        );
        let whole = chunk.len();
        encode_pairs(&[(b"PATH_INFO", b"/cut")], &mut chunk);
        let mut out = Vec::new();
        // The last pair cut short (as at a record's end): left out, no error.
        keep_logged_pairs(&chunk[..chunk.len() - 1], &mut out);
        let mut want = Vec::new();
        encode_pairs(
            &[(b"REQUEST_METHOD", b"POST"), (b"REQUEST_URI", b"/x?y=1")],
            &mut want,
        );
        assert_eq!(out, want);
        // Garbage keeps nothing; every prefix is safe.
        for i in 0..=whole {
            let mut o = Vec::new();
            keep_logged_pairs(&chunk[..i], &mut o);
            assert!(parse_pairs(&o).is_ok());
        }
        // Never more than MAX_LOGGED.
        let long = vec![b'u'; 3000];
        let mut big = Vec::new();
        encode_pairs(
            &[(b"REQUEST_URI", &long), (b"HTTP_USER_AGENT", &long)],
            &mut big,
        );
        let mut o = Vec::new();
        keep_logged_pairs(&big, &mut o);
        assert!(o.len() <= MAX_LOGGED && !o.is_empty());
    }
}
