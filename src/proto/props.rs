//! Property tests of the pure protocol layer (issue 10 §1), run by `cargo test props`:
//!
//! - every encoder's output decodes back to what was encoded (uwsgi packet + vars, SCGI
//!   netstring head, FastCGI name/value pairs in both length forms, GET_VALUES);
//! - [`ConnParser`](fastcgi::ConnParser) gives the same events whatever the split of a
//!   record stream into reads: several multiplexed requests, records of any size and
//!   padding, management records in between;
//! - the CGI → environ rules of [`cgi::normalise`] keep their documented invariants
//!   (README "Environ mapping", docs/protocols.md §4).
//!
//! Shrunk failures are kept next to this file, in `props.proptest-regressions`, and
//! replayed first on every run (commit that file when it appears).

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;

use super::fastcgi::{self as fcgi, ConnLimits, ConnParser, Event, Values};
use super::{cgi, response, scgi, uwsgi, ProtoError};

/// `cases` runs per property (`PROPTEST_CASES` overrides it), failures persisted next to
/// the source file rather than in a new top-level directory.
pub(crate) fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

/// Cuts `bytes` at the given points (taken modulo its length, in any order): the reads a
/// socket could deliver. Empty reads are left out (a read of 0 bytes is EOF).
pub(crate) fn reads<'a>(bytes: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
    at.push(0);
    at.push(bytes.len());
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| &bytes[w[0]..w[1]]).collect()
}

/// Cut points for [`reads`]: none (one read) up to 24.
pub(crate) fn cuts() -> impl Strategy<Value = Vec<Index>> {
    vec(any::<Index>(), 0..24)
}

/// `len` bytes from a seed (xorshift): long values and bodies without a value tree per
/// byte, which makes generation slow in debug builds; they shrink by length.
pub(crate) fn blob(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<u8>> {
    (len, any::<u64>()).prop_map(|(n, seed)| {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    })
}

/// [`blob`] without NUL bytes (SCGI's separator).
pub(crate) fn blob_nul_free(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<u8>> {
    blob(len).prop_map(|mut v| {
        v.iter_mut().filter(|b| **b == 0).for_each(|b| *b = 1);
        v
    })
}

/// `(name, value)` pairs as owned bytes.
pub(crate) type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

pub(crate) fn borrow(pairs: &Pairs) -> Vec<(&[u8], &[u8])> {
    pairs.iter().map(|(k, v)| (&k[..], &v[..])).collect()
}

/// The `(name, value)` slices `ranges` point at in `block`.
pub(crate) fn at(block: &[u8], ranges: &[uwsgi::VarRange]) -> Pairs {
    ranges
        .iter()
        .map(|(k, v)| {
            (
                block[k.start as usize..k.end as usize].to_vec(),
                block[v.start as usize..v.end as usize].to_vec(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// uwsgi (docs/protocols.md §1)

/// Any bytes as names (empty ones too: they are skipped) and values over the 1-byte
/// boundary of the u16 LE lengths; at most 24 × (2 + 24 + 2 + 600) bytes, under 64 KiB.
fn uwsgi_vars() -> impl Strategy<Value = Pairs> {
    vec((vec(any::<u8>(), 0..24), blob(0..600)), 0..24)
}

proptest! {
    #![proptest_config(config(256))]

    /// encode_packet → parse_packet → parse_vars gives back every pair with a non-empty
    /// name, in order, and both modifiers; every strict prefix waits for more bytes, and a
    /// limit one below the block refuses it.
    #[test]
    fn props_uwsgi_packet_round_trips(
        vars in uwsgi_vars(),
        modifier30 in any::<bool>(),
        modifier2 in any::<u8>(),
        body in blob(0..64),
    ) {
        let modifier1 = if modifier30 { uwsgi::MODIFIER_WSGI_STRIP_SCRIPT_NAME } else { uwsgi::MODIFIER_WSGI };
        let mut buf = Vec::new();
        uwsgi::encode_packet(modifier1, modifier2, &borrow(&vars), &mut buf).unwrap();
        let head_len = buf.len();
        buf.extend_from_slice(&body);
        let (n, packet) = uwsgi::parse_packet(&buf, uwsgi::MAX_DATASIZE).unwrap().unwrap();
        prop_assert_eq!(n, head_len);
        prop_assert_eq!((packet.modifier1, packet.modifier2), (modifier1, modifier2));
        let parsed = at(packet.vars, &uwsgi::parse_vars(packet.vars).unwrap());
        let expected: Pairs = vars.iter().filter(|(k, _)| !k.is_empty()).cloned().collect();
        prop_assert_eq!(parsed, expected);
        for i in 0..head_len {
            prop_assert_eq!(uwsgi::parse_packet(&buf[..i], uwsgi::MAX_DATASIZE), Ok(None));
        }
        let size = head_len - uwsgi::HEADER_LEN;
        if size > 0 {
            prop_assert_eq!(
                uwsgi::parse_packet(&buf, size - 1),
                Err(ProtoError::HeadTooLarge { size, limit: size - 1 })
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// SCGI (docs/protocols.md §3)

/// Names and values without NUL (SCGI's separator); the reserved names now and then, to
/// check that the encoder replaces them.
fn scgi_pairs() -> impl Strategy<Value = Pairs> {
    let name = prop_oneof![
        8 => vec(1u8..=255, 1..24),
        1 => Just(scgi::CONTENT_LENGTH.to_vec()),
        1 => Just(scgi::SCGI.to_vec()),
        1 => Just(Vec::new()),
    ];
    vec((name, blob_nul_free(0..300)), 0..24)
}

proptest! {
    #![proptest_config(config(256))]

    /// encode_head → parse_head → parse_headers: CONTENT_LENGTH (the body length) first,
    /// `SCGI=1`, then every other pair in order; the body starts right after the `,`;
    /// every strict prefix waits for more bytes.
    #[test]
    fn props_scgi_head_round_trips(
        pairs in scgi_pairs(),
        // Up to 2^63 - 1: what parse_content_length accepts.
        body_len in 0u64..=cgi::MAX_CONTENT_LENGTH,
        body in blob(0..64),
    ) {
        let mut buf = Vec::new();
        scgi::encode_head(&borrow(&pairs), body_len, &mut buf);
        let head_len = buf.len();
        buf.extend_from_slice(&body);
        let (n, block) = scgi::parse_head(&buf, scgi::MAX_LENGTH).unwrap().unwrap();
        prop_assert_eq!(n, head_len);
        prop_assert_eq!(&buf[n..], &body[..]);
        let parsed = at(block, &scgi::parse_headers(block).unwrap());
        let mut expected: Pairs = vec![
            (scgi::CONTENT_LENGTH.to_vec(), body_len.to_string().into_bytes()),
            (scgi::SCGI.to_vec(), b"1".to_vec()),
        ];
        expected.extend(pairs.iter().filter(|(k, _)| {
            !k.is_empty() && k != scgi::CONTENT_LENGTH && k != scgi::SCGI
        }).cloned());
        prop_assert_eq!(parsed, expected);
        for i in 0..head_len {
            prop_assert_eq!(scgi::parse_head(&buf[..i], scgi::MAX_LENGTH), Ok(None));
        }
    }
}

// ---------------------------------------------------------------------------------------
// FastCGI name/value pairs and GET_VALUES (docs/protocols.md §2.4, §2.7)

/// Appends one length in the 1-byte form when it fits and `long` is false, else in the
/// 4-byte form (which §2.4 allows for any length, short ones included).
fn fcgi_length(len: usize, long: bool, out: &mut Vec<u8>) {
    if len <= 127 && !long {
        out.push(len as u8);
    } else {
        out.extend_from_slice(&(len as u32 | 0x8000_0000).to_be_bytes());
    }
}

/// A pair: name, value, and whether each length takes the 4-byte form even when short.
type FcgiPair = (Vec<u8>, Vec<u8>, bool, bool);

fn fcgi_pair() -> impl Strategy<Value = FcgiPair> {
    let name = prop_oneof![
        6 => blob(0..200),
        1 => Just(b"CONTENT_LENGTH".to_vec()),
        1 => Just(b"HTTP_CONTENT_LENGTH".to_vec()),
        1 => Just(b"HTTP_X_REQUEST_ID".to_vec()),
        // As long as HTTP_X_REQUEST_ID.
        1 => Just(b"GATEWAY_INTERFACE".to_vec()),
    ];
    (name, blob(0..400), any::<bool>(), any::<bool>())
}

fn fcgi_pairs() -> impl Strategy<Value = Vec<FcgiPair>> {
    vec(fcgi_pair(), 0..20)
}

fn fcgi_block(pairs: &[FcgiPair]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value, long_name, long_value) in pairs {
        fcgi_length(name.len(), *long_name, &mut out);
        fcgi_length(value.len(), *long_value, &mut out);
        out.extend_from_slice(name);
        out.extend_from_slice(value);
    }
    out
}

fn known_values() -> impl Strategy<Value = Values> {
    (0usize..100_000, 0usize..100_000, any::<bool>()).prop_map(
        |(max_conns, max_reqs, mpxs_conns)| Values {
            max_conns,
            max_reqs,
            mpxs_conns,
        },
    )
}

/// The GET_VALUES_RESULT pairs §2.7 asks for: each known name asked, once, in the order
/// first asked, with its value.
fn expected_values(asked: &Pairs, values: &Values) -> Pairs {
    let mut out: Pairs = Vec::new();
    for (name, _) in asked {
        let value = match &name[..] {
            fcgi::FCGI_MAX_CONNS => values.max_conns.to_string(),
            fcgi::FCGI_MAX_REQS => values.max_reqs.to_string(),
            fcgi::FCGI_MPXS_CONNS => u8::from(values.mpxs_conns).to_string(),
            _ => continue,
        };
        if !out.iter().any(|(n, _)| n == name) {
            out.push((name.clone(), value.into_bytes()));
        }
    }
    out
}

fn get_values_query() -> impl Strategy<Value = Pairs> {
    let name = prop_oneof![
        Just(fcgi::FCGI_MAX_CONNS.to_vec()),
        Just(fcgi::FCGI_MAX_REQS.to_vec()),
        Just(fcgi::FCGI_MPXS_CONNS.to_vec()),
        vec(any::<u8>(), 1..20),
    ];
    vec((name, vec(any::<u8>(), 0..4)), 0..8)
}

proptest! {
    #![proptest_config(config(256))]

    /// Pairs with 1- and 4-byte lengths (the 4-byte form for short lengths too) parse back
    /// to every pair with a non-empty name, and the canonical encode_pairs parses to the
    /// same; parse_params notes the last CONTENT_LENGTH, HTTP_CONTENT_LENGTH and
    /// HTTP_X_REQUEST_ID.
    #[test]
    fn props_fastcgi_pairs_round_trip(pairs in fcgi_pairs()) {
        let block = fcgi_block(&pairs);
        let (ranges, lengths) = fcgi::parse_params(&block).unwrap();
        let parsed = at(&block, &ranges);
        let expected: Pairs = pairs
            .iter()
            .filter(|p| !p.0.is_empty())
            .map(|p| (p.0.clone(), p.1.clone()))
            .collect();
        prop_assert_eq!(&parsed, &expected);
        let last = |name: &[u8]| expected.iter().rposition(|(n, _)| n == name);
        prop_assert_eq!(lengths.cgi, last(b"CONTENT_LENGTH"));
        prop_assert_eq!(lengths.http, last(b"HTTP_CONTENT_LENGTH"));
        prop_assert_eq!(lengths.request_id, last(b"HTTP_X_REQUEST_ID"));

        let mut canonical = Vec::new();
        fcgi::encode_pairs(&borrow(&expected), &mut canonical);
        prop_assert_eq!(at(&canonical, &fcgi::parse_pairs(&canonical).unwrap()), expected);
    }

    /// Every strict prefix of a pairs block either ends at a pair boundary and parses to
    /// the pairs before it, or is refused as an overrun: never a pair that was not sent.
    #[test]
    fn props_fastcgi_pairs_prefixes_parse_or_fail_cleanly(pairs in fcgi_pairs(), cut in any::<Index>()) {
        let block = fcgi_block(&pairs);
        let i = cut.index(block.len() + 1);
        let parsed = at(&block[..i], &match fcgi::parse_pairs(&block[..i]) {
            Ok(ranges) => ranges,
            Err(e) => {
                prop_assert!(matches!(e, ProtoError::FcgiPairOverrun { .. }), "{e:?}");
                return Ok(());
            }
        });
        let mut boundary = 0;
        let mut before = Vec::new();
        for p in &pairs {
            if boundary == i {
                break;
            }
            boundary += fcgi_block(std::slice::from_ref(p)).len();
            if !p.0.is_empty() {
                before.push((p.0.clone(), p.1.clone()));
            }
        }
        prop_assert_eq!(boundary, i, "a prefix inside a pair parsed");
        prop_assert_eq!(parsed, before);
    }

    /// GET_VALUES → GET_VALUES_RESULT: one record on id 0 with the known names asked, each
    /// once, in the order asked; the answer itself is a valid pairs block.
    #[test]
    fn props_get_values_result_answers_what_was_asked(
        asked in get_values_query(),
        values in known_values(),
    ) {
        let mut query = Vec::new();
        fcgi::encode_pairs(&borrow(&asked), &mut query);
        let mut out = Vec::new();
        fcgi::encode_get_values_result(&mut out, &query, &values);
        let (n, record) = fcgi::parse_record(&out).unwrap().unwrap();
        prop_assert_eq!(n, out.len());
        prop_assert_eq!((record.kind, record.request_id), (fcgi::GET_VALUES_RESULT, 0));
        let got = at(record.content, &fcgi::parse_pairs(record.content).unwrap());
        prop_assert_eq!(got, expected_values(&asked, &values));
    }
}

// ---------------------------------------------------------------------------------------
// FastCGI connection state machine (docs/protocols.md §2.5, §2.7, §2.9)

/// One request as a web server could send it: its id, FCGI_KEEP_CONN, the PARAMS block,
/// the body, and how both streams are cut into records.
#[derive(Debug, Clone)]
struct FcgiRequest {
    id: u16,
    keep_conn: bool,
    params: Vec<u8>,
    stdin: Vec<u8>,
    params_cuts: Vec<Index>,
    stdin_cuts: Vec<Index>,
}

/// One record to write: type, id, content and padding length (padding bytes are junk on
/// purpose: §2.1 says the receiver ignores them).
#[derive(Debug, Clone)]
struct Rec {
    kind: u8,
    id: u16,
    content: Vec<u8>,
    padding: u8,
}

fn write_rec(rec: &Rec, out: &mut Vec<u8>) {
    let [id0, id1] = rec.id.to_be_bytes();
    let [len0, len1] = (rec.content.len() as u16).to_be_bytes();
    out.extend_from_slice(&[
        fcgi::VERSION_1,
        rec.kind,
        id0,
        id1,
        len0,
        len1,
        rec.padding,
        0,
    ]);
    out.extend_from_slice(&rec.content);
    out.extend(std::iter::repeat_n(0xa5, usize::from(rec.padding)));
}

/// A stream's data in records cut at `cuts` (every record non-empty; records of up to
/// 65535 bytes come from longer data), then the empty record that ends it.
fn stream_records(
    kind: u8,
    id: u16,
    data: &[u8],
    cuts: &[Index],
    paddings: &mut impl Iterator<Item = u8>,
) -> Vec<Rec> {
    let mut recs: Vec<Rec> = reads(data, cuts)
        .into_iter()
        .flat_map(|piece| piece.chunks(fcgi::MAX_CONTENT))
        .map(|c| Rec {
            kind,
            id,
            content: c.to_vec(),
            padding: paddings.next().unwrap_or(0),
        })
        .collect();
    recs.push(Rec {
        kind,
        id,
        content: Vec::new(),
        padding: paddings.next().unwrap_or(0),
    });
    recs
}

fn request_records(r: &FcgiRequest, paddings: &mut impl Iterator<Item = u8>) -> Vec<Rec> {
    let flags = if r.keep_conn { fcgi::FLAG_KEEP_CONN } else { 0 };
    let [r0, r1] = fcgi::ROLE_RESPONDER.to_be_bytes();
    let mut recs = vec![Rec {
        kind: fcgi::BEGIN_REQUEST,
        id: r.id,
        content: vec![r0, r1, flags, 0, 0, 0, 0, 0],
        padding: paddings.next().unwrap_or(0),
    }];
    recs.extend(stream_records(
        fcgi::PARAMS,
        r.id,
        &r.params,
        &r.params_cuts,
        paddings,
    ));
    recs.extend(stream_records(
        fcgi::STDIN,
        r.id,
        &r.stdin,
        &r.stdin_cuts,
        paddings,
    ));
    recs
}

fn fcgi_request(id: u16) -> impl Strategy<Value = FcgiRequest> {
    (
        any::<bool>(),
        vec(fcgi_pair(), 0..8),
        blob(0..3000),
        cuts(),
        cuts(),
    )
        .prop_map(
            move |(keep_conn, pairs, stdin, params_cuts, stdin_cuts)| FcgiRequest {
                id,
                keep_conn,
                params: fcgi_block(&pairs),
                stdin,
                params_cuts,
                stdin_cuts,
            },
        )
}

/// 1 to 5 requests with distinct ids (any id but the management id 0).
fn fcgi_requests() -> impl Strategy<Value = Vec<FcgiRequest>> {
    proptest::collection::btree_set(1u16..=u16::MAX, 1..=5)
        .prop_flat_map(|ids| ids.into_iter().map(fcgi_request).collect::<Vec<_>>())
}

/// The events a correct parser gives for `recs` in this order: replies merged while they
/// follow each other, as `ConnParser` merges them.
fn model_events(recs: &[Rec], values: &Values) -> Vec<Event> {
    let mut events = Vec::new();
    let mut params: HashMap<u16, Vec<u8>> = HashMap::new();
    let mut keep: HashMap<u16, bool> = HashMap::new();
    for rec in recs {
        match rec.kind {
            fcgi::BEGIN_REQUEST => {
                keep.insert(rec.id, rec.content[2] & fcgi::FLAG_KEEP_CONN != 0);
            }
            fcgi::PARAMS if rec.content.is_empty() => events.push(Event::Params {
                id: rec.id,
                keep_conn: keep[&rec.id],
                params: Bytes::from(params.remove(&rec.id).unwrap_or_default()),
            }),
            fcgi::PARAMS => params
                .entry(rec.id)
                .or_default()
                .extend_from_slice(&rec.content),
            fcgi::STDIN if rec.content.is_empty() => events.push(Event::StdinEnd { id: rec.id }),
            fcgi::STDIN => events.push(Event::Stdin {
                id: rec.id,
                data: Bytes::from(rec.content.clone()),
            }),
            fcgi::GET_VALUES => {
                let mut out = Vec::new();
                fcgi::encode_get_values_result(&mut out, &rec.content, values);
                match events.last_mut() {
                    Some(Event::Reply(prev)) => prev.extend_from_slice(&out),
                    _ => events.push(Event::Reply(out)),
                }
            }
            other => unreachable!("record type {other} is not generated"),
        }
    }
    events
}

/// `reply` as `ConnParser` merges them: appended to a `Reply` that is the last event.
fn model_reply(events: &mut Vec<Event>, out: Vec<u8>) {
    match events.last_mut() {
        Some(Event::Reply(prev)) => prev.extend_from_slice(&out),
        _ => events.push(Event::Reply(out)),
    }
}

/// [`model_events`] for streams with aborts and stray records, written from §2.7–§2.9
/// and `ConnParser::feed`'s contract: the events, and how many requests stay active.
/// The events, the requests still active, and whether the connection is to close after
/// its replies (a request without FCGI_KEEP_CONN aborted before its PARAMS ended, with
/// no other request active).
fn model_with_aborts(recs: &[Rec], values: &Values) -> (Vec<Event>, usize, bool) {
    enum Phase {
        Params(Vec<u8>),
        Stdin,
        Done,
    }
    struct Req {
        keep_conn: bool,
        phase: Phase,
        aborted: bool,
    }
    let mut events = Vec::new();
    let mut active: HashMap<u16, Req> = HashMap::new();
    let mut close = false;
    for rec in recs {
        let unknown_type = |events: &mut Vec<Event>| {
            let mut out = Vec::new();
            fcgi::encode_unknown_type(&mut out, rec.kind);
            model_reply(events, out);
        };
        if rec.id == 0 {
            match rec.kind {
                fcgi::GET_VALUES => {
                    let mut out = Vec::new();
                    fcgi::encode_get_values_result(&mut out, &rec.content, values);
                    model_reply(&mut events, out);
                }
                _ => unknown_type(&mut events),
            }
            continue;
        }
        match rec.kind {
            fcgi::BEGIN_REQUEST => {
                let keep_conn = rec.content[2] & fcgi::FLAG_KEEP_CONN != 0;
                let phase = Phase::Params(Vec::new());
                active.insert(
                    rec.id,
                    Req {
                        keep_conn,
                        phase,
                        aborted: false,
                    },
                );
            }
            fcgi::ABORT_REQUEST => match active.get_mut(&rec.id) {
                None => {}
                Some(r) if r.aborted => {}
                Some(Req {
                    phase: Phase::Params(_),
                    keep_conn,
                    ..
                }) => {
                    let keep_conn = *keep_conn;
                    active.remove(&rec.id);
                    close |= !keep_conn && active.is_empty();
                    let mut out = Vec::new();
                    let complete = fcgi::ProtocolStatus::RequestComplete;
                    fcgi::encode_end_request(&mut out, rec.id, 0, complete);
                    model_reply(&mut events, out);
                }
                Some(r) => {
                    r.aborted = true;
                    events.push(Event::Abort { id: rec.id });
                }
            },
            fcgi::PARAMS | fcgi::STDIN => {
                let Some(r) = active.get_mut(&rec.id).filter(|r| !r.aborted) else {
                    continue;
                };
                match (&mut r.phase, rec.kind, rec.content.is_empty()) {
                    (Phase::Params(block), fcgi::PARAMS, true) => {
                        let params = Bytes::from(std::mem::take(block));
                        events.push(Event::Params {
                            id: rec.id,
                            keep_conn: r.keep_conn,
                            params,
                        });
                        r.phase = Phase::Stdin;
                    }
                    (Phase::Params(block), fcgi::PARAMS, false) => {
                        block.extend_from_slice(&rec.content)
                    }
                    (Phase::Stdin, fcgi::STDIN, true) => {
                        events.push(Event::StdinEnd { id: rec.id });
                        r.phase = Phase::Done;
                    }
                    (Phase::Stdin, fcgi::STDIN, false) => events.push(Event::Stdin {
                        id: rec.id,
                        data: Bytes::from(rec.content.clone()),
                    }),
                    (Phase::Done, fcgi::STDIN, _) => {}
                    _ => unreachable!("each request's own records come in order"),
                }
            }
            fcgi::DATA | fcgi::GET_VALUES => {}
            _ => unknown_type(&mut events),
        }
    }
    (events, active.len(), close)
}

/// Feeds `reads` one after the other to a fresh parser, as the server does (one events
/// vector for the connection); the events and the bytes left unconsumed.
fn feed_all(parser: &mut ConnParser, reads: &[&[u8]]) -> Result<(Vec<Event>, usize), ProtoError> {
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    for read in reads {
        buf.extend_from_slice(read);
        parser.feed(&mut buf, &mut events)?;
    }
    Ok((events, buf.len()))
}

fn limits(values: Values) -> ConnLimits {
    ConnLimits {
        max_params: 64 * 1024,
        max_reqs: 64,
        values,
    }
}

proptest! {
    #![proptest_config(config(128))]

    /// Several multiplexed requests, their PARAMS and STDIN cut into records anywhere,
    /// records padded 0–255 bytes, GET_VALUES records in between, the records of the
    /// requests interleaved in any order that keeps each request's own order: fed in one
    /// read, in arbitrary reads and a byte at a time, the parser gives exactly the events
    /// the records mean, consumes every byte and leaves every request active.
    #[test]
    fn props_fastcgi_conn_parser_any_split_same_events(
        requests in fcgi_requests(),
        queries in vec(get_values_query(), 0..3),
        order in vec(any::<Index>(), 0..400),
        paddings in vec(any::<u8>(), 0..64),
        values in known_values(),
        split in cuts(),
    ) {
        let mut paddings = paddings.into_iter().cycle();
        let mut streams: Vec<std::collections::VecDeque<Rec>> = requests
            .iter()
            .map(|r| request_records(r, &mut paddings).into())
            .collect();
        for q in &queries {
            let mut content = Vec::new();
            fcgi::encode_pairs(&borrow(q), &mut content);
            streams.push(vec![Rec { kind: fcgi::GET_VALUES, id: 0, content, padding: paddings.next().unwrap_or(0) }].into());
        }
        // Interleave: each choice takes the next record of one stream that has records left.
        let mut recs = Vec::new();
        let mut order = order.into_iter();
        loop {
            let live: Vec<usize> = (0..streams.len()).filter(|&i| !streams[i].is_empty()).collect();
            if live.is_empty() {
                break;
            }
            let pick = order.next().map_or(0, |c| c.index(live.len()));
            recs.extend(streams[live[pick]].pop_front());
        }
        let mut bytes = Vec::new();
        for rec in &recs {
            write_rec(rec, &mut bytes);
        }
        let expected = model_events(&recs, &values);

        let whole = feed_all(&mut ConnParser::new(limits(values)), &[&bytes]).unwrap();
        prop_assert_eq!(&whole, &(expected, 0));
        let mut parser = ConnParser::new(limits(values));
        prop_assert_eq!(&feed_all(&mut parser, &reads(&bytes, &split)).unwrap(), &whole);
        prop_assert_eq!(parser.active(), requests.len());
        prop_assert!(!parser.awaiting_params());
        // A byte at a time too, for streams small enough to keep the suite fast.
        if bytes.len() <= 16 * 1024 {
            let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
            prop_assert_eq!(&feed_all(&mut ConnParser::new(limits(values)), &bytewise).unwrap(), &whole);
        }
    }

    /// The same with records a web server sends besides a request's own, anywhere in the
    /// stream: FCGI_ABORT_REQUEST (before or after the request's PARAMS ended), DATA,
    /// types a web server never sends, on a request's id, an unknown id or the management
    /// id 0. Whatever the split, the events are those §2.7–§2.9 and `feed`'s contract give
    /// (checked against an independent model): an abort before the end of PARAMS is
    /// answered END_REQUEST and the request forgotten, one after it is an `Abort` event
    /// once and silences the request's later STDIN; DATA is ignored; other types get
    /// UNKNOWN_TYPE; replies that follow each other are merged.
    #[test]
    fn props_fastcgi_conn_parser_aborts_and_stray_records(
        requests in fcgi_requests(),
        stray in vec((prop_oneof![
            4 => Just(fcgi::ABORT_REQUEST),
            1 => Just(fcgi::DATA),
            1 => Just(fcgi::STDOUT),
            1 => Just(fcgi::END_REQUEST),
            1 => Just(fcgi::GET_VALUES),
            1 => Just(0u8),
            1 => 12u8..=255,
        ], any::<Index>(), any::<Index>(), blob(0..16)), 0..6),
        order in vec(any::<Index>(), 0..400),
        paddings in vec(any::<u8>(), 0..16),
        values in known_values(),
        split in cuts(),
    ) {
        let mut paddings = paddings.into_iter().cycle();
        let mut streams: Vec<std::collections::VecDeque<Rec>> = requests
            .iter()
            .map(|r| request_records(r, &mut paddings).into())
            .collect();
        let mut recs = Vec::new();
        let mut order = order.into_iter();
        loop {
            let live: Vec<usize> = (0..streams.len()).filter(|&i| !streams[i].is_empty()).collect();
            if live.is_empty() {
                break;
            }
            let pick = order.next().map_or(0, |c| c.index(live.len()));
            recs.extend(streams[live[pick]].pop_front());
        }
        // Stray records go anywhere in the stream, to a request's id, the management id 0
        // or an id never begun.
        prop_assume!(!requests.iter().any(|r| r.id == 7777));
        let ids: Vec<u16> = requests.iter().map(|r| r.id).chain([0, 7777]).collect();
        for (kind, to, at, content) in &stray {
            let id = ids[to.index(ids.len())];
            let content = if *kind == fcgi::ABORT_REQUEST { Vec::new() } else { content.clone() };
            let rec = Rec { kind: *kind, id, content, padding: paddings.next().unwrap_or(0) };
            recs.insert(at.index(recs.len() + 1), rec);
        }
        let mut bytes = Vec::new();
        for rec in &recs {
            write_rec(rec, &mut bytes);
        }
        let (expected, active, close) = model_with_aborts(&recs, &values);

        let whole = feed_all(&mut ConnParser::new(limits(values)), &[&bytes]).unwrap();
        prop_assert_eq!(&whole, &(expected, 0));
        let mut parser = ConnParser::new(limits(values));
        prop_assert_eq!(&feed_all(&mut parser, &reads(&bytes, &split)).unwrap(), &whole);
        prop_assert_eq!(parser.active(), active);
        prop_assert!(!parser.awaiting_params());
        prop_assert_eq!(parser.close_after_replies(), close);
    }

    /// One request alone: the whole_request fast path finds the same id, KEEP_CONN, PARAMS
    /// block and body as the parser's events (whatever the records' sizes and padding),
    /// and declines every strict prefix.
    #[test]
    fn props_fastcgi_whole_request_agrees_with_the_parser(
        request in fcgi_request(1),
        paddings in vec(any::<u8>(), 0..16),
    ) {
        let mut paddings = paddings.into_iter().cycle();
        let mut bytes = Vec::new();
        for rec in request_records(&request, &mut paddings) {
            write_rec(&rec, &mut bytes);
        }
        let whole = fcgi::whole_request(&bytes, 64 * 1024, usize::MAX).unwrap();
        prop_assert_eq!(&whole, &fcgi::WholeRequest {
            id: 1,
            keep_conn: request.keep_conn,
            params: Bytes::from(request.params.clone()),
            stdin: Bytes::from(request.stdin.clone()),
        });
        let values = Values { max_conns: 1, max_reqs: 1, mpxs_conns: false };
        let (events, left) = feed_all(&mut ConnParser::new(limits(values)), &[&bytes]).unwrap();
        prop_assert_eq!(left, 0);
        let mut stdin = Vec::new();
        for e in &events {
            match e {
                Event::Params { id, keep_conn, params } => {
                    prop_assert_eq!((*id, *keep_conn, params), (whole.id, whole.keep_conn, &whole.params));
                }
                Event::Stdin { data, .. } => stdin.extend_from_slice(data),
                _ => {}
            }
        }
        prop_assert_eq!(&stdin[..], &whole.stdin[..]);
        for i in [0, bytes.len() / 2, bytes.len() - 1] {
            prop_assert_eq!(fcgi::whole_request(&bytes[..i], 64 * 1024, usize::MAX), None);
        }
    }
}

// ---------------------------------------------------------------------------------------
// CGI → environ (docs/protocols.md §4, README "Environ mapping")

/// A decoded path: `/`-separated segments of any bytes but `/` (empty ones too, for
/// `//`), and where the mount point ends (a number of leading segments).
pub(crate) fn decoded_path() -> impl Strategy<Value = (Vec<Vec<u8>>, Index)> {
    let segment = prop_oneof![
        4 => vec(b'a'..=b'c', 0..4),
        1 => vec(any::<u8>().prop_filter("no /", |b| *b != b'/'), 0..6),
    ];
    (vec(segment, 0..6), any::<Index>())
}

pub(crate) fn join(segments: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in segments {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    out
}

/// Percent-encodes every byte but letters, digits and `/`: a REQUEST_URI whose decoded
/// path is `path`.
pub(crate) fn percent_encode(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in path {
        if b.is_ascii_alphanumeric() || b == b'/' {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

/// The value `normalise` gave `key`, and how many times the key is there.
fn lookup<'c>(cgi: &'c cgi::Cgi<'_>, key: &[u8]) -> (Option<&'c [u8]>, usize) {
    let mut found = cgi.vars.iter().filter(|v| v.key == key);
    let first = found.next().map(|v| &v.value[..]);
    (first, usize::from(first.is_some()) + found.count())
}

/// How the front server carries the path.
#[derive(Debug, Clone, Copy)]
enum PathStyle {
    /// nginx `uwsgi_param SCRIPT_NAME /app` (or modifier1 30): PATH_INFO is the whole path.
    ScriptAndWholePath,
    /// The front server split the path already (nginx `fastcgi_split_path_info`):
    /// PATH_INFO is the rest after SCRIPT_NAME.
    ScriptAndRest,
    /// No PATH_INFO: the path is REQUEST_URI's, percent-decoded (and normalised).
    RequestUri,
    /// FastCGI/SCGI stock params: SCRIPT_NAME is the whole path, no PATH_INFO.
    ScriptIsPath,
    /// No SCRIPT_NAME: `--mount` prefixes decide.
    Mounts,
}

/// Names `normalise` acts on, header-like names, repeats of the same few, and any bytes.
pub(crate) fn cgi_name() -> impl Strategy<Value = Vec<u8>> {
    let fixed: Vec<Vec<u8>> = cgi::KNOWN
        .iter()
        .map(|k| k.as_bytes().to_vec())
        .chain([
            b"HTTP_X_A".to_vec(),
            b"X_CUSTOM".to_vec(),
            b"HTTP_".to_vec(),
            b"wsgi.url_scheme".to_vec(),
            b"postern.request_id".to_vec(),
            b"".to_vec(),
        ])
        .collect();
    prop_oneof![
        6 => proptest::sample::select(fixed),
        2 => vec(any::<u8>(), 0..12),
        2 => vec(any::<u8>(), 0..12).prop_map(|n| [&b"HTTP_"[..], &n].concat()),
    ]
}

pub(crate) fn cgi_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => Just(Vec::new()),
        2 => (0u64..100_000).prop_map(|n| n.to_string().into_bytes()),
        4 => vec(any::<u8>(), 0..12),
    ]
}

pub(crate) fn cgi_pairs() -> impl Strategy<Value = Pairs> {
    vec((cgi_name(), cgi_value()), 0..30)
}

fn run(pairs: &Pairs, defaults: cgi::Defaults<'_>) -> Result<cgi::Cgi<'static>, ProtoError> {
    // Leaked so the borrowed result can outlive the call: tests only, bounded inputs.
    let pairs: &'static Pairs = Box::leak(Box::new(pairs.clone()));
    let defaults = cgi::Defaults {
        server_name: Box::leak(defaults.server_name.to_vec().into_boxed_slice()),
        server_port: Box::leak(defaults.server_port.to_vec().into_boxed_slice()),
        mounts: Box::leak(defaults.mounts.to_vec().into_boxed_slice()),
        ..defaults
    };
    cgi::normalise(pairs.iter().map(|(k, v)| (&k[..], &v[..])), defaults)
}

fn non_empty(v: Option<&[u8]>) -> Option<&[u8]> {
    v.filter(|v| !v.is_empty())
}

/// The last value sent for `key`.
fn last<'p>(pairs: &'p Pairs, key: &[u8]) -> Option<&'p [u8]> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| &v[..])
}

const DEFAULTS: cgi::Defaults<'static> = cgi::Defaults {
    server_name: b"fallback.example",
    server_port: b"3031",
    modifier30: false,
    script_name_is_path: false,
    mounts: &[],
};

proptest! {
    #![proptest_config(config(256))]

    /// SCRIPT_NAME + PATH_INFO is the decoded path, whichever way the front server
    /// carried it (SCRIPT_NAME with the whole path in PATH_INFO, with or without a
    /// trailing `/`, modifier1 30 or not; the path split already; REQUEST_URI only;
    /// FastCGI's SCRIPT_NAME-only; `--mount`); SCRIPT_NAME is the mount point (a
    /// `/`-boundary prefix, never ending in `/`; the longest mount), and PATH_INFO is
    /// empty or starts with `/`.
    #[test]
    fn props_environ_script_name_plus_path_info_is_the_path(
        (segments, mount_end) in decoded_path(),
        trailing_slash in any::<bool>(),
        modifier30 in any::<bool>(),
        style in prop_oneof![
            Just(PathStyle::ScriptAndWholePath),
            Just(PathStyle::ScriptAndRest),
            Just(PathStyle::RequestUri),
            Just(PathStyle::ScriptIsPath),
            Just(PathStyle::Mounts),
        ],
        query in vec(any::<u8>(), 0..8),
        extra_mounts in vec(vec(b'a'..=b'c', 1..3), 0..3),
    ) {
        let path = join(&segments);
        let k = mount_end.index(segments.len() + 1);
        let mut mount = join(&segments[..k]);
        while mount.last() == Some(&b'/') {
            mount.pop();
        }
        let mut script = mount.clone();
        if trailing_slash {
            script.push(b'/');
        }
        let mut pairs: Pairs = vec![(b"REQUEST_METHOD".to_vec(), b"GET".to_vec())];
        let mut uri = percent_encode(&path);
        uri.push(b'?');
        uri.extend_from_slice(&query);
        pairs.push((b"REQUEST_URI".to_vec(), uri));
        let mut mounts: Vec<Vec<u8>> = Vec::new();
        let mut defaults = DEFAULTS;
        let expected_script = match style {
            PathStyle::ScriptAndWholePath => {
                // A whole path that goes on with the mount's name again cannot be told
                // from one the front server split already when its decoded path has
                // `//`, `.` or `..` segments (it normalises them, REQUEST_URI keeps
                // them): kept whole, as postern keeps such a path in doubt (cutting it
                // again is what let `/pf/pf//../admin` past an Apache rule on
                // `/pf/admin`), not checked here.
                // regression: the property drew `/aa/aa//{` mounted at `/aa` (its seed
                // is kept).
                let rest = &path[mount.len()..];
                prop_assume!(
                    mount.is_empty()
                        || !(rest.starts_with(&mount)
                            && rest.get(mount.len()).is_none_or(|&b| b == b'/'))
                        || cgi::normalise_path(&path)[..] == path[..]
                );
                pairs.push((b"SCRIPT_NAME".to_vec(), script));
                pairs.push((b"PATH_INFO".to_vec(), path.clone()));
                defaults.modifier30 = modifier30;
                mount.clone()
            }
            PathStyle::ScriptAndRest => {
                let rest = &path[mount.len()..];
                // A split path whose rest starts with SCRIPT_NAME is told from a whole
                // one by REQUEST_URI, as the front server normalised it: one whose
                // decoded path has `//`, `.` or `..` segments cannot tell them apart
                // (README "Environ mapping": the prefix is cut), not checked here.
                prop_assume!(
                    mount.is_empty()
                        || !(rest.starts_with(&mount)
                            && rest.get(mount.len()).is_none_or(|&b| b == b'/'))
                        || cgi::normalise_path(&path)[..] == path[..]
                );
                pairs.push((b"SCRIPT_NAME".to_vec(), script));
                pairs.push((b"PATH_INFO".to_vec(), rest.to_vec()));
                mount.clone()
            }
            PathStyle::RequestUri => {
                // The path is REQUEST_URI's normalised (`//` merged, `.` and `..`
                // resolved): the unit tests of `request_path` check that part.
                prop_assume!(cgi::normalise_path(&path)[..] == path[..]);
                pairs.push((b"SCRIPT_NAME".to_vec(), script));
                mount.clone()
            }
            PathStyle::ScriptIsPath | PathStyle::Mounts => {
                if let PathStyle::ScriptIsPath = style {
                    pairs.push((b"SCRIPT_NAME".to_vec(), path.clone()));
                    defaults.script_name_is_path = true;
                } else {
                    pairs.push((b"PATH_INFO".to_vec(), path.clone()));
                }
                // The mount and some others (prefixes or not); the longest that starts
                // the path on a `/` boundary wins.
                mounts.extend(extra_mounts.iter().map(|m| [&b"/"[..], m].concat()));
                mounts.push(mount.clone());
                mounts
                    .iter()
                    .filter(|m| {
                        !m.is_empty()
                            && path.starts_with(m)
                            && path.get(m.len()).is_none_or(|&b| b == b'/')
                    })
                    .max_by_key(|m| m.len())
                    .cloned()
                    .unwrap_or_default()
            }
        };
        defaults.mounts = &mounts;
        let cgi = run(&pairs, defaults).unwrap();
        let (script_name, n) = lookup(&cgi, b"SCRIPT_NAME");
        prop_assert_eq!(n, 1);
        let (path_info, n) = lookup(&cgi, b"PATH_INFO");
        prop_assert_eq!(n, 1);
        let (script_name, path_info) = (script_name.unwrap(), path_info.unwrap());
        prop_assert_eq!([script_name, path_info].concat(), path);
        prop_assert_eq!(script_name, &expected_script[..]);
        prop_assert!(script_name.last() != Some(&b'/'));
        prop_assert!(path_info.is_empty() || path_info[0] == b'/');
    }

    /// Whatever a front server made of REQUEST_URI (nginx: escapes decoded, then `//`
    /// merged or kept, `.` and `..` resolved; Apache: `.` and `..` resolved before a
    /// `%2F` is decoded), and whether it sent that path whole (`uwsgi_param SCRIPT_NAME
    /// /m;`) or split already (SCRIPT_NAME the mount, PATH_INFO the rest): the app gets
    /// SCRIPT_NAME `/m` and the rest of exactly that path, or the request is refused
    /// as ambiguous. Never a path the front server's rules did not see.
    #[test]
    fn props_environ_the_app_s_path_is_the_front_server_s(
        segments in vec(prop_oneof![
            2 => Just(&b""[..]), 1 => Just(&b"."[..]), 2 => Just(&b".."[..]),
            3 => Just(&b"m"[..]), 3 => Just(&b"x"[..]), 1 => Just(&b"%2e%2E"[..]),
            1 => Just(&b"%2F"[..]), 1 => Just(&b"x%2F.."[..]), 1 => Just(&b"m%2F..%2Fx"[..]),
        ], 1..10),
        slashes in prop_oneof![Just(cgi::Slashes::Merged), Just(cgi::Slashes::Kept)],
        apache in 0u8..3,
        split in any::<bool>(),
    ) {
        let mut uri = b"/m".to_vec();
        for s in &segments {
            uri.push(b'/');
            uri.extend_from_slice(s);
        }
        // nginx, Apache, Apache with `AllowEncodedSlashes On`.
        let seen = if apache > 0 {
            let p = cgi::normalise_path_as(&cgi::decode_unreserved(&uri), slashes).into_owned();
            let p = cgi::percent_decode(&p);
            if apache == 2 {
                cgi::normalise_path_as(&p, slashes).into_owned()
            } else {
                p
            }
        } else {
            cgi::normalise_path_as(&cgi::percent_decode(&uri), slashes).into_owned()
        };
        // Under the mount when it goes on past it at a `/`.
        prop_assume!(seen.len() > 2 && seen.starts_with(b"/m/"));
        let path_info = if split { seen[2..].to_vec() } else { seen.clone() };
        let pairs: Pairs = vec![
            (b"REQUEST_METHOD".to_vec(), b"GET".to_vec()),
            (b"SCRIPT_NAME".to_vec(), b"/m".to_vec()),
            (b"PATH_INFO".to_vec(), path_info),
            (b"REQUEST_URI".to_vec(), uri.clone()),
        ];
        match run(&pairs, DEFAULTS) {
            Ok(cgi) => {
                let (script_name, _) = lookup(&cgi, b"SCRIPT_NAME");
                let (path_info, _) = lookup(&cgi, b"PATH_INFO");
                prop_assert_eq!(script_name.unwrap(), &b"/m"[..]);
                prop_assert_eq!(path_info.unwrap(), &seen[2..]);
            }
            Err(e) => prop_assert!(matches!(e, ProtoError::AmbiguousPath { .. }), "{e:?}"),
        }
    }

    /// Whatever the pairs: each key is in the environ once; the variables the rules
    /// promise exist; `known` names the key it is stored with (the environ builder uses
    /// its interned name); HTTP_PROXY, HTTP_TRANSFER_ENCODING and the HTTP_CONTENT_*
    /// forms never reach the app; every other name keeps its last value, an HTTP_* name
    /// (but HTTP_HOST) all its values joined with ", " ("; " for cookies), in order;
    /// CONTENT_TYPE/CONTENT_LENGTH are the CGI form, else the HTTP_ form, never empty,
    /// and content_length is CONTENT_LENGTH's value, the same length Head gives the codec.
    #[test]
    fn props_environ_keys_once_and_values_per_the_rules(pairs in cgi_pairs()) {
        let result = run(&pairs, DEFAULTS);
        // The body length the codec frames by (Head::announced_length's rule).
        let mut head = crate::codec::Head {
            buf: Bytes::new(),
            vars: Vec::new(),
            modifier30: false,
            content_length: 0,
        };
        for (k, v) in &pairs {
            head.push_var(k, v);
        }
        let announced = head.announced_length();
        let cgi = match result {
            // A path the front servers read apart (`props_environ_the_app_s_path_…`).
            Err(ProtoError::AmbiguousPath { .. }) => return Ok(()),
            Err(e) => {
                prop_assert!(matches!(e, ProtoError::BadContentLength(_) | ProtoError::ConflictingLength { .. }), "{e:?}");
                prop_assert_eq!(announced, Err(e));
                return Ok(());
            }
            Ok(cgi) => cgi,
        };
        prop_assert_eq!(announced, Ok(cgi.content_length));

        let mut seen = std::collections::HashSet::new();
        for var in &cgi.vars {
            prop_assert!(seen.insert(var.key), "{:?} twice", String::from_utf8_lossy(var.key));
            prop_assert!(!var.key.is_empty());
            prop_assert_eq!(var.known, cgi::known(var.key));
            if let Some(k) = var.known {
                prop_assert_eq!(cgi::KNOWN[usize::from(k)].as_bytes(), var.key);
            }
        }
        for key in ["SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "SERVER_NAME", "SERVER_PORT", "SERVER_PROTOCOL"] {
            prop_assert!(seen.contains(key.as_bytes()), "{key} missing");
        }
        for key in ["HTTP_PROXY", "HTTP_TRANSFER_ENCODING", "HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"] {
            prop_assert!(!seen.contains(key.as_bytes()), "{key} reached the app");
        }

        for (key, cgi_form) in [("CONTENT_TYPE", "CONTENT_TYPE"), ("CONTENT_LENGTH", "CONTENT_LENGTH")] {
            let want = non_empty(last(&pairs, cgi_form.as_bytes()))
                .or_else(|| non_empty(last(&pairs, format!("HTTP_{cgi_form}").as_bytes())));
            prop_assert_eq!(lookup(&cgi, key.as_bytes()).0, want, "{}", key);
        }
        prop_assert_eq!(
            cgi.content_length,
            lookup(&cgi, b"CONTENT_LENGTH").0.map(|v| cgi::parse_content_length(v).unwrap())
        );

        for var in &cgi.vars {
            let key = var.key;
            let sent: Vec<&[u8]> = pairs.iter().filter(|(k, _)| k == key).map(|(_, v)| &v[..]).collect();
            let want: Vec<u8> = match key {
                b"SCRIPT_NAME" | b"PATH_INFO" | b"CONTENT_TYPE" | b"CONTENT_LENGTH" => continue,
                b"QUERY_STRING" => cgi::encode_query(sent.last().copied().unwrap_or_default()).to_vec(),
                b"SERVER_NAME" | b"SERVER_PORT" | b"SERVER_PROTOCOL" => {
                    let default: &[u8] = match key {
                        b"SERVER_NAME" => DEFAULTS.server_name,
                        b"SERVER_PORT" => DEFAULTS.server_port,
                        _ => b"HTTP/1.1",
                    };
                    sent.last().copied().filter(|v| !v.is_empty()).unwrap_or(default).to_vec()
                }
                b"HTTP_HOST" => sent.last().unwrap().to_vec(),
                _ if key.starts_with(b"HTTP_") => {
                    let sep: &[u8] = if key == b"HTTP_COOKIE" { b"; " } else { b", " };
                    sent.join(sep)
                }
                _ => sent.last().unwrap().to_vec(),
            };
            prop_assert_eq!(&var.value[..], &want[..], "{}", String::from_utf8_lossy(key));
        }
        // Nothing sent is lost: every non-empty name sent is there, but those dropped
        // (CONTENT_* have their own rule above). postern's own entries (wsgi.*,
        // postern.*) are never a request variable's to set.
        for (k, _) in &pairs {
            let dropped = [&b"HTTP_PROXY"[..], b"HTTP_TRANSFER_ENCODING", b"HTTP_CONTENT_TYPE",
                b"HTTP_CONTENT_LENGTH", b"CONTENT_TYPE", b"CONTENT_LENGTH"];
            let own = k.starts_with(b"wsgi.") || k.starts_with(b"postern.");
            prop_assert!(!own || !seen.contains(&k[..]), "{:?} reached the app", String::from_utf8_lossy(k));
            if !k.is_empty() && !dropped.contains(&&k[..]) && !own {
                prop_assert!(seen.contains(&k[..]), "{:?} lost", String::from_utf8_lossy(k));
            }
        }
    }

    /// Client headers (HTTP_*) never choose a CGI variable: adding any HTTP_* pairs, at
    /// any positions, changes no non-HTTP_ variable, nor the URL scheme or the method
    /// flags; the one documented exception is CONTENT_TYPE/CONTENT_LENGTH, promoted from
    /// HTTP_CONTENT_* only when the CGI form is missing or empty.
    #[test]
    fn props_environ_client_headers_never_override_cgi_variables(
        cgi_pairs in vec(
            (cgi_name().prop_filter("not a header", |n| !n.starts_with(b"HTTP_")), cgi_value()),
            0..20,
        ),
        headers in vec(
            (cgi_name().prop_map(|n| if n.starts_with(b"HTTP_") { n } else { [&b"HTTP_"[..], &n].concat() }), cgi_value()),
            0..20,
        ),
        positions in vec(any::<Index>(), 20),
    ) {
        let mut mixed = cgi_pairs.clone();
        for (h, at) in headers.iter().zip(&positions) {
            mixed.insert(at.index(mixed.len() + 1), h.clone());
        }
        let (alone, with_headers) = match (run(&cgi_pairs, DEFAULTS), run(&mixed, DEFAULTS)) {
            (Ok(alone), Ok(with_headers)) => (alone, with_headers),
            // A bad CONTENT_LENGTH from the front server: refused the same either way.
            (Err(a), with_headers) => {
                prop_assert_eq!(Err(a), with_headers.map(|_| ()));
                return Ok(());
            }
            // A bad length promoted from a header: only where the CGI form is missing.
            (Ok(alone), Err(e)) => {
                prop_assert!(matches!(e, ProtoError::BadContentLength(_) | ProtoError::ConflictingLength { .. }), "{e:?}");
                prop_assert_eq!(lookup(&alone, b"CONTENT_LENGTH").0, None);
                return Ok(());
            }
        };
        let cgi_vars = |c: &cgi::Cgi<'_>| -> Vec<(Vec<u8>, Vec<u8>)> {
            let mut v: Vec<_> = c
                .vars
                .iter()
                .filter(|v| !v.key.starts_with(b"HTTP_"))
                .filter(|v| v.key != b"CONTENT_TYPE" && v.key != b"CONTENT_LENGTH")
                .map(|v| (v.key.to_vec(), v.value.to_vec()))
                .collect();
            v.sort();
            v
        };
        prop_assert_eq!(cgi_vars(&alone), cgi_vars(&with_headers));
        prop_assert_eq!(alone.scheme, with_headers.scheme);
        prop_assert_eq!((alone.method_missing, alone.is_head), (with_headers.method_missing, with_headers.is_head));
        for key in ["CONTENT_TYPE", "CONTENT_LENGTH"] {
            if let Some(v) = lookup(&alone, key.as_bytes()).0 {
                prop_assert_eq!(lookup(&with_headers, key.as_bytes()).0, Some(v));
            }
        }
    }
}

// regression: a front-server variable named `wsgi.url_scheme` (or any `wsgi.*`,
// `postern.*`) replaced postern's own environ entry: `wsgi.url_scheme` = "" for
// `uwsgi_param wsgi.url_scheme ""`, and a `wsgi.input` str for a request without a body.
// Found by wsgi::props::props_environ_is_latin1_and_the_same_whatever_came_before.
#[test]
fn environ_never_takes_wsgi_or_postern_names_from_the_request() {
    let pairs: Pairs = [
        ("REQUEST_METHOD", "GET"),
        ("wsgi.url_scheme", ""),
        ("wsgi.input", "x"),
        ("postern.request_id", "y"),
        ("wsgi", "kept"),
        ("postern", "kept"),
    ]
    .iter()
    .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
    .collect();
    let cgi = run(&pairs, DEFAULTS).unwrap();
    for key in ["wsgi.url_scheme", "wsgi.input", "postern.request_id"] {
        assert_eq!(lookup(&cgi, key.as_bytes()).1, 0, "{key}");
    }
    assert_eq!(lookup(&cgi, b"wsgi").0, Some(&b"kept"[..]));
    assert_eq!(lookup(&cgi, b"postern").0, Some(&b"kept"[..]));
}

// ---------------------------------------------------------------------------------------
// Response heads (docs/protocols.md §5, §2.10, §3)

/// Latin-1 text without controls (tab allowed in header values): what `start_response`
/// accepts.
fn latin1_text(len: std::ops::Range<usize>, tab: bool) -> impl Strategy<Value = String> {
    vec(
        prop_oneof![
            8 => 0x20u32..0x7f,
            1 => 0xa0u32..=0xff,
            1 => Just(if tab { 0x09 } else { 0x20 }),
        ],
        len,
    )
    .prop_map(|cs| cs.into_iter().filter_map(char::from_u32).collect())
}

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,20}"
}

proptest! {
    #![proptest_config(config(256))]

    /// A response head postern writes as CGI (FastCGI, SCGI) reads back, through the CGI
    /// reader `postern request` uses, as the status code, the header lines in order and
    /// the body that were written; read as HTTP (uwsgi) it has the same code. An app
    /// header named `Status` is left out: over CGI it would be a second Status header
    /// (see the README, "Property tests").
    #[test]
    fn props_cgi_response_head_reads_back(
        code in 200u16..=999,
        reason in latin1_text(0..20, false),
        headers in vec(
            (token().prop_filter("not Status", |n| !n.eq_ignore_ascii_case("status")), latin1_text(0..40, true)),
            0..12,
        ),
        body in blob(0..64),
    ) {
        let status = format!("{code} {reason}");
        prop_assert_eq!(response::parse_status(&status), Ok(code));
        for (name, value) in &headers {
            prop_assert_eq!(response::check_header(name, value), Ok(()));
        }
        let pairs = headers.iter().map(|(n, v)| (n.as_str(), v.as_str()));
        let mut cgi = Vec::new();
        response::write_head(&mut cgi, response::HeadStyle::Cgi, &status, pairs.clone());
        let head_len = cgi.len();
        cgi.extend_from_slice(&body);
        let head = response::parse_cgi_head(&cgi).unwrap();
        prop_assert_eq!(head.code, code);
        prop_assert_eq!(head.body_start, head_len);
        let lines: Vec<Vec<u8>> = headers
            .iter()
            .map(|(n, v)| {
                let mut line = format!("{n}: ").into_bytes();
                response::push_latin1(&mut line, v);
                line
            })
            .collect();
        prop_assert_eq!(head.headers.iter().map(|l| l.to_vec()).collect::<Vec<_>>(), lines);
        let (http_code, http) = response::cgi_to_http(&cgi).unwrap();
        prop_assert_eq!(http_code, code);
        prop_assert!(http.ends_with(&body));

        let mut uwsgi = Vec::new();
        response::write_head(&mut uwsgi, response::HeadStyle::Http, &status, pairs);
        prop_assert_eq!(response::status_code(&uwsgi), Some(code));
    }
}

// ---------------------------------------------------------------------------------------
// CONTENT_LENGTH sent more than once: one rule on every protocol (sec M1)

proptest! {
    #![proptest_config(config(256))]

    /// Whatever the CONTENT_LENGTH values (empty ones among them) and the pairs around
    /// them, a request is refused exactly when two of its CONTENT_LENGTH values differ,
    /// with the same error (the first value, then the first other one), by each place
    /// that reads them: the environ (`normalise`), the uwsgi/SCGI codec
    /// (`Head::announced_length`), FastCGI's params parse and request assembly, and
    /// SCGI's header parse (which wants a non-empty one first). Otherwise they take the
    /// same length. regression (sec M1): "5" then "" was no body over uwsgi (the last
    /// won), 5 over FastCGI (in both orders), refused over SCGI.
    #[test]
    fn props_a_content_length_sent_again_is_refused_alike_on_every_protocol(
        lengths in vec(prop_oneof![Just(""), Just("5"), Just("05"), Just("13")], 1..4),
        others in vec(
            (cgi_name().prop_filter("not a length", |n| !n.ends_with(b"CONTENT_LENGTH")), cgi_value()),
            0..8,
        ),
        positions in vec(any::<Index>(), 4),
    ) {
        let mut pairs: Pairs = others.clone();
        for (i, (len, at)) in lengths.iter().zip(&positions).enumerate() {
            // In order: each after the one before.
            let earliest = pairs.iter().rposition(|(k, _)| k == b"CONTENT_LENGTH").map_or(0, |p| p + 1);
            let at = if i == 0 { at.index(pairs.len() + 1) } else { earliest + at.index(pairs.len() + 1 - earliest) };
            pairs.insert(at, (b"CONTENT_LENGTH".to_vec(), len.as_bytes().to_vec()));
        }
        let expected = match lengths.iter().find(|l| **l != lengths[0]) {
            Some(then) => Err(cgi::conflicting_length(lengths[0].as_bytes(), then.as_bytes())),
            None => Ok(()),
        };

        let environ = run(&pairs, DEFAULTS);
        let mut head = crate::codec::Head { buf: Bytes::new(), vars: Vec::new(), modifier30: false, content_length: 0 };
        for (k, v) in &pairs {
            head.push_var(k, v);
        }
        let framed = head.announced_length();
        let mut block = Vec::new();
        fcgi::encode_pairs(&borrow(&pairs), &mut block);
        let (_, noted) = fcgi::parse_params(&block).unwrap();
        let assembled = crate::codec::fastcgi::assemble(Bytes::from(block), Some(Bytes::from_static(b"0123456789abc")), None);
        match &expected {
            Err(e) => {
                prop_assert_eq!(environ.as_ref().err(), Some(e));
                prop_assert_eq!(framed.as_ref().err(), Some(e));
                prop_assert!(noted.conflict.is_some());
                prop_assert_eq!(assembled.err(), Some(crate::codec::fastcgi::Refused::BadLength(e.clone())));
            }
            Ok(()) => {
                let length = environ.unwrap().content_length;
                prop_assert_eq!(framed, Ok(length));
                prop_assert_eq!(noted.conflict, None);
                // No length: the 13 bytes of STDIN are the body, and say so.
                prop_assert_eq!(assembled.unwrap().head.body_length(), Ok(length.unwrap_or(13)));
            }
        }

        // SCGI: CONTENT_LENGTH first, non-empty (mandatory); names and values NUL-free.
        if !lengths[0].is_empty() {
            let mut block = Vec::new();
            let first = (b"CONTENT_LENGTH".to_vec(), lengths[0].as_bytes().to_vec());
            let rest = pairs.iter().skip_while(|(k, _)| k != b"CONTENT_LENGTH").skip(1);
            for (k, v) in std::iter::once(&first).chain(rest) {
                if k.is_empty() || k.contains(&0) || v.contains(&0) {
                    continue;
                }
                for part in [k, v] {
                    block.extend_from_slice(part);
                    block.push(0);
                }
            }
            prop_assert_eq!(scgi::parse_headers(&block).map(|_| ()), expected);
        }
    }
}

// ---------------------------------------------------------------------------------------
// FastCGI response records (docs/protocols.md §2.1, §2.2)

proptest! {
    #![proptest_config(config(256))]

    /// `append_stream`: chunks appended one after another, with the queue taken (sent)
    /// now and then, read back as records whose joined content is the chunks in order;
    /// every record is a non-empty STDOUT record of the request, padded to 8 bytes, and a
    /// queue holds the fewest records its content can be framed in.
    #[test]
    fn props_appended_stream_records_join_into_the_chunks_in_order(
        writes in vec((prop_oneof![
            8 => 0usize..600,
            1 => 60_000usize..140_000,
        ], any::<bool>()), 1..40),
        id in 1u16..=u16::MAX,
    ) {
        let mut queues: Vec<Vec<u8>> = vec![Vec::new()];
        let mut last = None;
        let mut expected = Vec::new();
        for (i, (len, take)) in writes.iter().enumerate() {
            let chunk: Vec<u8> = (0..*len).map(|j| (i * 31 + j) as u8).collect();
            expected.extend_from_slice(&chunk);
            let out = queues.last_mut().unwrap();
            last = fcgi::append_stream(out, last, fcgi::STDOUT, id, &chunk);
            if *take {
                // The writer took what was queued; appends go to an empty queue.
                queues.push(Vec::new());
            }
        }
        let mut joined = Vec::new();
        for q in &queues {
            let mut rest = &q[..];
            let mut records = 0usize;
            let mut content = 0usize;
            while !rest.is_empty() {
                let (n, r) = fcgi::parse_record(rest).unwrap().unwrap();
                prop_assert_eq!(r.kind, fcgi::STDOUT);
                prop_assert_eq!(r.request_id, id);
                prop_assert!(!r.content.is_empty());
                prop_assert_eq!(n % 8, 0);
                joined.extend_from_slice(r.content);
                records += 1;
                content += r.content.len();
                rest = &rest[n..];
            }
            prop_assert_eq!(records, content.div_ceil(fcgi::MAX_CONTENT));
        }
        prop_assert_eq!(joined, expected);
    }
}
