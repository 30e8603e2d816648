//! `Decoder` for one uwsgi or SCGI request: the head, then the body as it arrives, up
//! to CONTENT_LENGTH. nginx and Apache never reuse a uwsgi or SCGI connection
//! (docs/protocols.md §0, §3), so after the body the decoder yields nothing more.

use std::ops::Range;

use bytes::{Buf, BytesMut};
use tokio_util::codec::Decoder;

use super::{CodecError, Frame, Framing, Head, Protocol};
use crate::proto::scgi;
use crate::proto::uwsgi::{self, HEADER_LEN, MODIFIER_WSGI_STRIP_SCRIPT_NAME};

/// Largest read buffer reserved for body bytes.
const BODY_READ: usize = 256 * 1024;

#[derive(Debug)]
enum State {
    Head,
    Body {
        remaining: u64,
        expected: u64,
    },
    /// The head says `Transfer-Encoding` (a coding, not `identity`) and announces no
    /// length: only CONTENT_LENGTH frames a uwsgi or SCGI body, so none is decoded
    /// (its caller refuses the request). `coding`: where the value sits in the head.
    Unframed {
        coding: Range<u32>,
    },
    Done,
}

/// Decodes `Frame::Head` once, then `Frame::Body` chunks.
#[derive(Debug)]
pub struct UwsgiCodec {
    limit: usize,
    state: State,
    scgi: bool,
}

impl UwsgiCodec {
    /// `limit` is the largest vars block accepted (`--buffer-size`).
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            state: State::Head,
            scgi: false,
        }
    }

    /// The same for SCGI: a netstring head (`len:NAME\0VALUE\0…,`), then the body.
    pub fn scgi(limit: usize) -> Self {
        Self {
            scgi: true,
            ..Self::new(limit)
        }
    }

    /// The codec for a listener's protocol (uwsgi or SCGI).
    pub fn for_protocol(protocol: Protocol, limit: usize) -> Self {
        match protocol {
            Protocol::Scgi => Self::scgi(limit),
            _ => Self::new(limit),
        }
    }

    /// The head is complete: the body (if any) comes next. Its framing is read here,
    /// in the one walk of its variables before the app's.
    fn head_decoded(&mut self, mut head: Head) -> Result<Frame, CodecError> {
        let Framing { length, coding } = head.framing()?;
        head.content_length = length.unwrap_or(0);
        self.state = match (length, coding) {
            // CONTENT_LENGTH: 0 is a length (an empty body, framed).
            (None, Some(coding)) => State::Unframed { coding },
            (_, _) if head.content_length == 0 => State::Done,
            (_, _) => State::Body {
                remaining: head.content_length,
                expected: head.content_length,
            },
        };
        Ok(Frame::Head(head))
    }

    /// Where the transfer coding of a head whose body this codec cannot frame sits in
    /// that head (see `State::Unframed`); `None` for every other head.
    pub fn unframed(&self) -> Option<Range<u32>> {
        match &self.state {
            State::Unframed { coding } => Some(coding.clone()),
            _ => None,
        }
    }

    /// SCGI: the head and where its block sits in the first `n` bytes.
    fn decode_scgi_head(&mut self, src: &mut BytesMut) -> Result<Option<Head>, CodecError> {
        let Some((len, block)) = scgi::parse_head(src, self.limit)? else {
            return Ok(None);
        };
        let vars = scgi::parse_headers(block)?;
        // `<digits>:` before the block, `,` after it.
        let start = len - 1 - block.len();
        let mut frame = src.split_to(len).freeze();
        let buf = frame.split_off(start).split_to(len - 1 - start);
        Ok(Some(Head {
            buf,
            vars,
            modifier30: false,
            content_length: 0,
        }))
    }
}

impl Decoder for UwsgiCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        match self.state {
            State::Head if self.scgi => match self.decode_scgi_head(src)? {
                Some(head) => self.head_decoded(head).map(Some),
                None => Ok(None),
            },
            State::Head => {
                let Some((len, packet)) = uwsgi::parse_packet(src, self.limit)? else {
                    // Reserve what the header announced, once, so the block lands in one buffer
                    // (not for bytes still read as an HTTP method word: no header, and a size
                    // past --buffer-size).
                    if src.len() >= HEADER_LEN && src[0] <= MODIFIER_WSGI_STRIP_SCRIPT_NAME {
                        let size = usize::from(u16::from_le_bytes([src[1], src[2]]));
                        src.reserve((HEADER_LEN + size).saturating_sub(src.len()));
                    }
                    return Ok(None);
                };
                let modifier30 = packet.modifier1 == MODIFIER_WSGI_STRIP_SCRIPT_NAME;
                let vars = uwsgi::parse_vars(packet.vars)?;
                let buf = if len == src.len() {
                    // Nothing follows the head (no body): the whole buffer becomes the
                    // head's, without the shared allocation a split makes.
                    let mut whole = std::mem::take(src).freeze();
                    whole.advance(HEADER_LEN);
                    whole
                } else {
                    let mut head = src.split_to(len).freeze();
                    head.advance(HEADER_LEN);
                    head
                };
                let head = Head {
                    buf,
                    vars,
                    modifier30,
                    content_length: 0,
                };
                self.head_decoded(head).map(Some)
            }
            State::Body {
                ref mut remaining, ..
            } => {
                if src.is_empty() {
                    // Room for the next read: a buffer inherited from elsewhere may
                    // have none left, and tokio-util then reads one byte at a time.
                    let want = usize::try_from(*remaining)
                        .unwrap_or(usize::MAX)
                        .min(BODY_READ);
                    src.reserve(want);
                    return Ok(None);
                }
                let n = usize::try_from(*remaining)
                    .unwrap_or(usize::MAX)
                    .min(src.len());
                *remaining -= n as u64;
                if *remaining == 0 {
                    self.state = State::Done;
                }
                Ok(Some(Frame::Body(src.split_to(n).freeze())))
            }
            State::Unframed { .. } | State::Done => Ok(None),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        if let Some(frame) = self.decode(src)? {
            return Ok(Some(frame));
        }
        match self.state {
            State::Head if !src.is_empty() => Err(CodecError::HeadTruncated { got: src.len() }),
            State::Body {
                remaining,
                expected,
            } => Err(CodecError::BodyTruncated {
                got: expected - remaining,
                expected,
            }),
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::uwsgi::encode_packet;

    fn packet(vars: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_packet(0, 0, vars, &mut out).unwrap();
        out
    }

    // regression (review 375): bytes still read as an HTTP method word (`AAAA`, waiting
    // for its space) reserved what their "header" announced (0x4141 bytes, past a small
    // --buffer-size) for a peer that then went quiet.
    #[test]
    fn an_uppercase_word_still_arriving_reserves_nothing() {
        let mut codec = UwsgiCodec::new(4096);
        let mut buf = BytesMut::from(&b"AAAAAAAA"[..]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(buf.capacity() < 1024, "{}", buf.capacity());
        let mut buf = BytesMut::from(&b"GET /"[..]);
        assert!(codec.decode(&mut buf).is_err());
    }

    #[test]
    fn decodes_head_then_body_chunks() {
        let mut buf = packet(&[(b"REQUEST_METHOD", b"POST"), (b"CONTENT_LENGTH", b"10")]);
        buf.extend_from_slice(b"0123456789 trailing");
        let mut codec = UwsgiCodec::new(65535);
        let mut src = BytesMut::from(&buf[..buf.len() - 15]);
        let Some(Frame::Head(head)) = codec.decode(&mut src).unwrap() else {
            panic!()
        };
        assert_eq!(head.content_length, 10);
        assert_eq!(head.get(b"REQUEST_METHOD"), Some(&b"POST"[..]));
        let Some(Frame::Body(b)) = codec.decode(&mut src).unwrap() else {
            panic!()
        };
        assert_eq!(&b[..], b"0123");
        src.extend_from_slice(&buf[buf.len() - 15..]);
        let Some(Frame::Body(b)) = codec.decode(&mut src).unwrap() else {
            panic!()
        };
        assert_eq!(&b[..], b"456789");
        assert!(codec.decode(&mut src).unwrap().is_none());
    }

    #[test]
    fn decodes_a_head_with_nothing_after_it() {
        let buf = packet(&[(b"REQUEST_METHOD", b"GET"), (b"PATH_INFO", b"/x")]);
        let mut codec = UwsgiCodec::new(65535);
        let mut src = BytesMut::from(&buf[..]);
        let Some(Frame::Head(head)) = codec.decode(&mut src).unwrap() else {
            panic!()
        };
        assert!(src.is_empty());
        assert_eq!(head.get(b"PATH_INFO"), Some(&b"/x"[..]));
        assert_eq!(head.pairs().count(), 2);
        assert!(codec.decode(&mut src).unwrap().is_none());
    }

    #[test]
    fn waits_on_every_prefix_of_the_head() {
        let buf = packet(&[(b"REQUEST_METHOD", b"GET")]);
        for i in 0..buf.len() {
            let mut codec = UwsgiCodec::new(65535);
            assert!(codec
                .decode(&mut BytesMut::from(&buf[..i]))
                .unwrap()
                .is_none());
        }
    }

    #[test]
    fn rejects_a_truncated_head_at_eof() {
        let buf = packet(&[(b"REQUEST_METHOD", b"GET")]);
        let mut codec = UwsgiCodec::new(65535);
        let err = codec
            .decode_eof(&mut BytesMut::from(&buf[..5]))
            .unwrap_err();
        assert!(matches!(err, CodecError::HeadTruncated { got: 5 }));
    }

    #[test]
    fn rejects_a_truncated_body_at_eof() {
        let mut buf = packet(&[(b"CONTENT_LENGTH", b"10")]);
        buf.extend_from_slice(b"0123");
        let mut codec = UwsgiCodec::new(65535);
        let mut src = BytesMut::from(&buf[..]);
        assert!(matches!(
            codec.decode(&mut src).unwrap(),
            Some(Frame::Head(_))
        ));
        assert!(matches!(
            codec.decode(&mut src).unwrap(),
            Some(Frame::Body(_))
        ));
        let err = codec.decode_eof(&mut src).unwrap_err();
        assert!(matches!(
            err,
            CodecError::BodyTruncated {
                got: 4,
                expected: 10
            }
        ));
    }

    #[test]
    fn reserves_room_for_the_body_in_a_full_buffer() {
        // A buffer handed over with no spare capacity must still read in large
        // blocks, not one byte at a time (tokio-util only reserves one byte).
        let buf = packet(&[(b"CONTENT_LENGTH", b"1000000")]);
        let mut codec = UwsgiCodec::new(65535);
        let mut src = BytesMut::from(&buf[..]);
        assert!(matches!(
            codec.decode(&mut src).unwrap(),
            Some(Frame::Head(_))
        ));
        let mut empty = BytesMut::new();
        assert!(codec.decode(&mut empty).unwrap().is_none());
        assert!(empty.capacity() >= 64 * 1024, "{}", empty.capacity());
    }

    #[test]
    fn rejects_a_bad_content_length() {
        let buf = packet(&[(b"CONTENT_LENGTH", b"ten")]);
        let err = UwsgiCodec::new(65535)
            .decode(&mut BytesMut::from(&buf[..]))
            .unwrap_err();
        assert!(matches!(err, CodecError::Proto(_)));
    }

    #[test]
    fn leaves_a_coded_body_without_a_length_unframed() {
        let te = |v: &'static [u8]| (&b"HTTP_TRANSFER_ENCODING"[..], v);
        let cl = |v: &'static [u8]| (&b"CONTENT_LENGTH"[..], v);
        let http_cl = (&b"HTTP_CONTENT_LENGTH"[..], &b"5"[..]);
        let method = (&b"REQUEST_METHOD"[..], &b"POST"[..]);
        for (vars, coding) in [
            (vec![method, te(b"chunked")], Some(&b"chunked"[..])),
            (
                vec![te(b" gzip, chunked "), method],
                Some(b" gzip, chunked "),
            ),
            // The first one that names a coding.
            (
                vec![te(b"identity"), te(b""), te(b"chunked")],
                Some(b"chunked"),
            ),
            (vec![te(b"chunked"), cl(b"")], Some(b"chunked")),
            // Framed: a length (0 too), or no coding.
            (vec![te(b"chunked"), cl(b"0")], None),
            (vec![te(b"chunked"), cl(b"5")], None),
            (vec![te(b"chunked"), http_cl], None),
            (vec![te(b"IDENTITY")], None),
            (vec![te(b" ")], None),
            (vec![method], None),
        ] {
            let mut codec = UwsgiCodec::new(65535);
            let mut src = BytesMut::from(&packet(&vars)[..]);
            src.extend_from_slice(b"5\r\nhello\r\n0\r\n\r\n");
            let Some(Frame::Head(head)) = codec.decode(&mut src).unwrap() else {
                panic!("{vars:?}")
            };
            let got = codec
                .unframed()
                .map(|r| &head.buf[r.start as usize..r.end as usize]);
            assert_eq!(got, coding, "{vars:?}");
            if coding.is_some() {
                // Nothing past the head is decoded as a body.
                assert!(codec.decode(&mut src).unwrap().is_none());
                assert!(codec.decode_eof(&mut src).unwrap().is_none());
                assert_eq!(head.content_length, 0);
            }
        }
    }
}
