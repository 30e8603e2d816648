//! FastCGI request assembly: a request's PARAMS block and, when it has all arrived, its
//! STDIN become a [`Head`] and a body, with CONTENT_LENGTH reconciled and `--max-body`
//! applied. One pure function for the fast path (a whole request in one read) and the
//! slow lane (records as they come), so both hold a request to the same rules.

use bytes::Bytes;

use super::Head;
use crate::proto::{fastcgi, ProtoError};

/// A request ready to run.
#[derive(Debug)]
pub struct Assembled {
    /// `content_length` is the body's length when the body is here, else the announced
    /// one (0 when none was announced).
    pub head: Head,
    /// The whole body (cut to CONTENT_LENGTH), or `None` while STDIN still streams.
    pub body: Option<Bytes>,
    /// CONTENT_LENGTH as the front server sent it (`None`: none, as for a chunked
    /// upload that nginx streams to its end).
    pub announced: Option<u64>,
    /// STDIN bytes past CONTENT_LENGTH that were cut off (0 normally).
    pub excess: u64,
}

/// Why a request is answered (or closed) by postern instead of reaching the app.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    /// The PARAMS block is not a list of name-value pairs: close the connection.
    #[error("bad FastCGI params: {0}")]
    Params(ProtoError),
    /// CONTENT_LENGTH is not a number: 400.
    #[error(transparent)]
    BadLength(ProtoError),
    /// The body is over `--max-body` (`announced`: by CONTENT_LENGTH, before any byte
    /// of it was read): 413.
    #[error("request body of {len} bytes is over --max-body ({max} bytes)")]
    TooLarge { len: u64, max: u64, announced: bool },
    /// STDIN ended short of CONTENT_LENGTH, after some of it (the front server lost its
    /// client): 400. (Ended before any byte, it is a body the front server does not
    /// pass: see [`assemble`].)
    #[error("STDIN ended after {got} of the {expected} bytes CONTENT_LENGTH announced")]
    Truncated { got: u64, expected: u64 },
}

impl Refused {
    /// The status postern answers with; `None`: close without an answer.
    pub fn status(&self) -> Option<(u16, &'static str)> {
        match self {
            Refused::Params(_) => None,
            Refused::BadLength(_) | Refused::Truncated { .. } => Some((400, "Bad Request")),
            Refused::TooLarge { .. } => Some((413, "Content Too Large")),
        }
    }
}

/// What STDIN's end means once `got` bytes of a body came, `announced` by CONTENT_LENGTH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdinEnd {
    /// As many bytes as announced (or more: the excess is dropped), or none announced.
    Whole,
    /// None came of a body announced: the front server passes no body for this request,
    /// with the client's CONTENT_LENGTH beside it (nginx's `auth_request` subrequests,
    /// `fastcgi_pass_request_body off`). The app gets an empty body, CONTENT_LENGTH 0.
    NoBodyPassed,
    /// Some came, fewer than announced: a cut body.
    Cut,
}

/// The one rule for STDIN's end, used where the body comes with the head
/// ([`assemble`]) and where it streams to a running app (the slow lane).
pub fn stdin_end(got: u64, announced: Option<u64>) -> StdinEnd {
    match announced {
        Some(cl) if got < cl && got == 0 => StdinEnd::NoBodyPassed,
        Some(cl) if got < cl => StdinEnd::Cut,
        _ => StdinEnd::Whole,
    }
}

/// Assembles one request from its PARAMS block and, when it has ended, its whole
/// STDIN (`None`: still streaming; the app reads it as it comes).
///
/// Rules, in order: the pairs must parse; CONTENT_LENGTH (else HTTP_CONTENT_LENGTH)
/// must be a number and at most `max_body`; a complete STDIN shorter than it is
/// refused (but an empty one: no body passed, CONTENT_LENGTH 0), a longer one is cut
/// to it; the body must be at most `max_body`; a body
/// without CONTENT_LENGTH gets one, as apps that trust only CONTENT_LENGTH (Django)
/// would otherwise read nothing.
pub fn assemble(
    params: Bytes,
    stdin: Option<Bytes>,
    max_body: Option<u64>,
) -> Result<Assembled, Refused> {
    assemble_noting_id(params, stdin, max_body).map(|(a, _)| a)
}

/// [`assemble`], and the index in `head.vars` of the last `HTTP_X_REQUEST_ID` (what
/// `Head::get` would find for it), noted while parsing: no second scan for the id.
pub fn assemble_noting_id(
    params: Bytes,
    stdin: Option<Bytes>,
    max_body: Option<u64>,
) -> Result<(Assembled, Option<usize>), Refused> {
    let (vars, lengths) = fastcgi::parse_params(&params).map_err(Refused::Params)?;
    let id_at = lengths.request_id;
    // Two lengths for one body: refused as Head::announced_length refuses them.
    if let Some((first, then)) = lengths.conflict {
        let at = |r: &std::ops::Range<u32>| &params[r.start as usize..r.end as usize];
        return Err(Refused::BadLength(crate::proto::cgi::conflicting_length(
            at(&vars[first].1),
            at(&vars[then].1),
        )));
    }
    // Head::announced_length's rule (the last CONTENT_LENGTH, else the last
    // HTTP_CONTENT_LENGTH; empty counts as none) on the positions the parse noted.
    let value = |i: Option<usize>| {
        i.map(|i| &params[vars[i].1.start as usize..vars[i].1.end as usize])
            .filter(|v| !v.is_empty())
    };
    let announced = value(lengths.cgi)
        .or_else(|| value(lengths.http))
        .map(crate::proto::cgi::parse_content_length)
        .transpose()
        .map_err(Refused::BadLength)?;
    let mut head = Head {
        buf: params,
        vars,
        modifier30: false,
        content_length: 0,
    };
    head.content_length = announced.unwrap_or(0);
    // STDIN ended before any byte of it: the front server passes no body for this
    // request, the client's CONTENT_LENGTH (from the stock params) beside it: nginx's
    // auth_request subrequests and `fastcgi_pass_request_body off` do. The app gets the
    // body passed, none, and CONTENT_LENGTH 0 for it; before --max-body's check, which
    // is the client's length's, not this request's. (A body cut short by a client gone
    // mid-upload never ends STDIN: nginx closes the connection then; one cut after some
    // bytes is refused below.)
    // regression (probe 328): nginx's auth_request to postern over FastCGI answered
    // every client request that had a body 500 (postern: 400); (review 330) and with
    // --max-body, one over it 500 too (postern: 413).
    if let Some(data) = &stdin {
        if stdin_end(data.len() as u64, announced) == StdinEnd::NoBodyPassed {
            head.give_length(0);
            return Ok((
                Assembled {
                    head,
                    body: Some(Bytes::new()),
                    announced: Some(0),
                    excess: 0,
                },
                id_at,
            ));
        }
    }
    if let (Some(max), Some(len)) = (max_body, announced) {
        if len > max {
            return Err(Refused::TooLarge {
                len,
                max,
                announced: true,
            });
        }
    }
    let Some(mut data) = stdin else {
        let body = (announced == Some(0)).then(Bytes::new);
        return Ok((
            Assembled {
                head,
                body,
                announced,
                excess: 0,
            },
            id_at,
        ));
    };
    let mut excess = 0;
    if let Some(cl) = announced {
        let got = data.len() as u64;
        // Not whole is cut here (no body passed returned above): `got - cl` below.
        if stdin_end(got, announced) != StdinEnd::Whole {
            return Err(Refused::Truncated { got, expected: cl });
        }
        excess = got - cl;
        // cl <= got, a usize.
        data.truncate(cl as usize);
    }
    let len = data.len() as u64;
    if let Some(max) = max_body {
        if len > max {
            return Err(Refused::TooLarge {
                len,
                max,
                announced: false,
            });
        }
    }
    if announced.is_none() && len > 0 {
        head.give_length(len);
    }
    head.content_length = len;
    Ok((
        Assembled {
            head,
            body: Some(data),
            announced,
            excess,
        },
        id_at,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdin_end_is_whole_cut_or_no_body_passed() {
        assert_eq!(stdin_end(0, None), StdinEnd::Whole);
        assert_eq!(stdin_end(0, Some(0)), StdinEnd::Whole);
        assert_eq!(stdin_end(5, Some(5)), StdinEnd::Whole);
        assert_eq!(stdin_end(7, Some(5)), StdinEnd::Whole);
        assert_eq!(stdin_end(0, Some(5)), StdinEnd::NoBodyPassed);
        assert_eq!(stdin_end(1, Some(5)), StdinEnd::Cut);
    }

    /// A PARAMS block of `pairs` (short names and values: 1-byte lengths).
    fn params(pairs: &[(&str, &str)]) -> Bytes {
        let mut out = Vec::new();
        for (k, v) in pairs {
            out.push(k.len() as u8);
            out.push(v.len() as u8);
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(v.as_bytes());
        }
        Bytes::from(out)
    }

    fn body(n: usize) -> Option<Bytes> {
        Some(Bytes::from(vec![b'x'; n]))
    }

    #[test]
    fn accepts_a_body_that_matches_its_length() {
        let a = assemble(params(&[("CONTENT_LENGTH", "3")]), body(3), None).unwrap();
        assert_eq!(a.body.as_deref(), Some(&b"xxx"[..]));
        assert_eq!(
            (a.head.content_length, a.announced, a.excess),
            (3, Some(3), 0)
        );
    }

    #[test]
    fn accepts_no_length_and_no_body() {
        let a = assemble(params(&[("REQUEST_METHOD", "GET")]), body(0), Some(0)).unwrap();
        assert_eq!(a.body.as_deref(), Some(&b""[..]));
        assert_eq!(a.head.content_length, 0);
        assert_eq!(a.head.get(b"CONTENT_LENGTH"), None);
    }

    #[test]
    fn gives_a_body_without_length_its_content_length() {
        let a = assemble(params(&[("REQUEST_METHOD", "POST")]), body(5), None).unwrap();
        assert_eq!(a.head.get(b"CONTENT_LENGTH"), Some(&b"5"[..]));
        assert_eq!((a.head.content_length, a.announced), (5, None));
    }

    #[test]
    fn cuts_stdin_past_content_length() {
        let a = assemble(params(&[("CONTENT_LENGTH", "2")]), body(5), None).unwrap();
        assert_eq!(a.body.as_deref(), Some(&b"xx"[..]));
        assert_eq!(a.excess, 3);
    }

    // regression: fastcgi_assemble (fuzz) found CONTENT_LENGTH "5" then "" with a 13-byte
    // STDIN assembled into a head with CONTENT_LENGTH 5, "" and 13, which its own rule
    // (Head::announced_length, the environ) refuses as two lengths for one body.
    // regression (sec M1): "5" then "" with a 5-byte body was served, the length added
    // for the body matching the first; "" then "5" took 5 too, while uwsgi took the
    // last ("": no body) and SCGI refused both. An empty value is a value: refused
    // whatever the body, before it.
    #[test]
    fn refuses_a_content_length_sent_again_empty_in_either_order() {
        for pairs in [
            [("CONTENT_LENGTH", "5"), ("CONTENT_LENGTH", "")],
            [("CONTENT_LENGTH", ""), ("CONTENT_LENGTH", "5")],
            [("CONTENT_LENGTH", "13"), ("CONTENT_LENGTH", "")],
        ] {
            for stdin in [None, body(5), body(13)] {
                let e = assemble(params(&pairs), stdin, None).unwrap_err();
                assert!(
                    matches!(e, Refused::BadLength(ProtoError::ConflictingLength { .. })),
                    "{pairs:?}: {e:?}"
                );
                assert_eq!(e.status(), Some((400, "Bad Request")));
            }
        }
    }

    // An empty CONTENT_LENGTH (nginx's `$content_length` for a body it streams), once or
    // twice, gives way to the length of the body: one CONTENT_LENGTH in the head.
    #[test]
    fn an_empty_content_length_gives_way_to_the_bodys() {
        for n in 1..=2 {
            let p = params(&vec![("CONTENT_LENGTH", ""); n]);
            let a = assemble(p, body(13), None).unwrap();
            assert_eq!(a.head.body_length(), Ok(13));
            let all: Vec<_> = a
                .head
                .pairs()
                .filter(|(k, _)| *k == b"CONTENT_LENGTH")
                .collect();
            assert_eq!(all, [(&b"CONTENT_LENGTH"[..], &b"13"[..])]);
        }
    }

    #[test]
    fn rejects_stdin_shorter_than_content_length() {
        let e = assemble(params(&[("CONTENT_LENGTH", "9")]), body(4), None).unwrap_err();
        assert_eq!(
            e,
            Refused::Truncated {
                got: 4,
                expected: 9
            }
        );
        assert_eq!(e.status(), Some((400, "Bad Request")));
    }

    #[test]
    fn rejects_a_content_length_that_is_not_a_number() {
        let e = assemble(params(&[("CONTENT_LENGTH", "1x")]), body(0), None).unwrap_err();
        assert!(matches!(e, Refused::BadLength(_)));
        assert_eq!(e.status().map(|s| s.0), Some(400));
    }

    #[test]
    fn rejects_an_announced_length_over_max_body_before_the_body() {
        let e = assemble(params(&[("CONTENT_LENGTH", "11")]), None, Some(10)).unwrap_err();
        assert_eq!(
            e,
            Refused::TooLarge {
                len: 11,
                max: 10,
                announced: true
            }
        );
        assert_eq!(e.status().map(|s| s.0), Some(413));
    }

    #[test]
    fn rejects_an_unannounced_body_over_max_body() {
        let e = assemble(params(&[]), body(11), Some(10)).unwrap_err();
        assert_eq!(
            e,
            Refused::TooLarge {
                len: 11,
                max: 10,
                announced: false
            }
        );
    }

    #[test]
    fn rejects_malformed_params_without_an_answer() {
        // Name length 5, value length 0, but only 2 name bytes follow.
        let e = assemble(Bytes::from_static(&[5, 0, b'a', b'b']), None, None).unwrap_err();
        assert!(matches!(e, Refused::Params(_)));
        assert_eq!(e.status(), None);
    }

    // regression: "1" then "3" was taken as 3 (the last) here and by
    // Head::announced_length; two different lengths are refused by both, the same way.
    #[test]
    fn refuses_two_different_content_lengths_as_head_announced_length_does() {
        let pairs = [
            ("CONTENT_LENGTH", "1"),
            ("HTTP_X", "y"),
            ("CONTENT_LENGTH", "3"),
        ];
        let e = assemble(params(&pairs), None, None).unwrap_err();
        assert_eq!(e.status(), Some((400, "Bad Request")));
        let Refused::BadLength(e) = e else {
            panic!("{e:?}")
        };
        let head = assemble(params(&[("CONTENT_LENGTH", "1")]), None, None)
            .unwrap()
            .head;
        let mut head2 = head;
        head2.push_var(b"HTTP_X", b"y");
        head2.push_var(b"CONTENT_LENGTH", b"3");
        assert_eq!(head2.announced_length(), Err(e));
    }

    #[test]
    fn takes_the_same_length_as_head_announced_length() {
        let cases: &[&[(&str, &str)]] = &[
            &[("CONTENT_LENGTH", "4"), ("HTTP_CONTENT_LENGTH", "9")],
            &[("CONTENT_LENGTH", ""), ("HTTP_CONTENT_LENGTH", "9")],
            &[
                ("HTTP_CONTENT_LENGTH", "2"),
                ("CONTENT_LENGTH", "3"),
                ("CONTENT_LENGTH", "3"),
            ],
            &[("CONTENT_LENGTH", ""), ("CONTENT_LENGTH", "")],
            &[("", "x"), ("CONTENT_LENGT", "1"), ("CONTENT_LENGTHX", "2")],
        ];
        for pairs in cases {
            let a = assemble(params(pairs), None, None).unwrap();
            assert_eq!(
                Ok(a.announced),
                a.head.announced_length().map_err(|e| e.to_string()),
                "{pairs:?}"
            );
        }
    }

    #[test]
    fn waits_for_a_streamed_body() {
        let a = assemble(params(&[("CONTENT_LENGTH", "7")]), None, None).unwrap();
        assert!(a.body.is_none());
        assert_eq!((a.head.content_length, a.announced), (7, Some(7)));
        // An announced empty body needs no stream.
        let a = assemble(params(&[("CONTENT_LENGTH", "0")]), None, None).unwrap();
        assert_eq!(a.body.as_deref(), Some(&b""[..]));
    }

    #[test]
    fn a_streamed_body_without_length_is_not_given_one_yet() {
        let a = assemble(params(&[]), None, Some(10)).unwrap();
        assert!(a.body.is_none());
        assert_eq!((a.head.content_length, a.announced), (0, None));
    }
}
