//! The fast path of a FastCGI connection: one read that holds one whole simple request
//! is served on the Python thread that read it, with no hand-off.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use rustix::io::Errno;

use super::sink::{stderr_forward, FcgiSink, ReqFlags};
use super::FcgiConn;
use crate::codec::fastcgi::assemble_noting_id;
use crate::logging::RequestId;
use crate::proto::fastcgi as fcgi;
use crate::server::acceptor::Arrival;
use crate::server::lane::{FcgiSettings, Limits};
use crate::server::span::request_span_with;
use crate::wsgi::{Body, ListenerInfo, Request};

/// Looks at the first bytes of a read of a held connection: a whole simple request
/// becomes a [`Request`] served inline (the connection's owner is `Inline` then);
/// `None` leaves the connection held, for the slow lane. `registered`: the connection
/// is in the Python threads' epoll (it was woken there).
pub fn admit_whole(
    conn: &Arc<FcgiConn>,
    buf: &[u8],
    info: &ListenerInfo,
    limits: &Limits,
    settings: &FcgiSettings,
    started: Instant,
    registered: bool,
) -> Option<Request> {
    let max_stdin = usize::try_from(limits.spool_threshold).unwrap_or(usize::MAX);
    let whole = fcgi::whole_request(buf, limits.buffer_size, max_stdin)?;
    // Anything unusual (a body that does not match its length, one over --max-body)
    // is for the slow lane, which answers it properly.
    let (assembled, id_at) =
        assemble_noting_id(whole.params, Some(whole.stdin), limits.max_body).ok()?;
    if assembled.excess > 0 {
        return None;
    }
    let head = assembled.head;
    if whole.keep_conn {
        conn.note_front(&head);
    }
    let body = match assembled.body {
        Some(b) if !b.is_empty() => Body::Memory(b),
        _ => Body::Empty,
    };
    // RequestId::for_head's answer, from the position the parse noted.
    let sent_id = id_at.and_then(|i| head.vars.get(i)).map(|(_, v)| {
        head.buf
            .get(v.start as usize..v.end as usize)
            .unwrap_or_default()
    });
    let id = sent_id
        .and_then(RequestId::sent)
        .unwrap_or_else(RequestId::generate);
    let (span, request_id) = request_span_with(&head, &conn.peer, id);
    let flags = Arc::new(ReqFlags::default());
    let errors_forward = settings
        .stderr
        .then(|| stderr_forward(conn, whole.id, &flags));
    // nginx and Apache send nothing more until END_REQUEST; anything that does come
    // on a keep-conn connection (a multiplexed request, an abort, a close) is the slow
    // lane's to read.
    conn.serve_inline(whole.id, whole.keep_conn, Arc::clone(&flags), registered);
    let sink = FcgiSink::new(
        Arc::clone(conn),
        whole.id,
        whole.keep_conn,
        flags,
        started,
        &request_id,
    );
    Some(Request {
        head,
        body,
        listener: info.clone(),
        sink: Box::new(sink),
        span,
        request_id,
        errors_forward,
        queued: false,
    })
}

/// True when `buf` is the start of one simple request that has not all arrived:
/// BEGIN_REQUEST (id ≠ 0), then only PARAMS and STDIN records of that id, and the
/// empty STDIN record not yet here (or a first record too short yet to tell: see
/// `parse_record`). Anything else (complete, another id or record type, bad bytes) is
/// for [`admit_whole`] or the slow lane as it is.
pub fn is_partial_simple(buf: &[u8]) -> bool {
    let mut pos = 0;
    let mut id = None;
    loop {
        let Some(rest) = buf.get(pos..) else {
            return false;
        };
        let (len, record) = match fcgi::parse_record(rest) {
            Ok(Some(r)) => r,
            // The buffer ends inside a record (or before the first).
            Ok(None) => return id.is_some() || pos == 0,
            Err(_) => return false,
        };
        match (id, record.kind) {
            (None, fcgi::BEGIN_REQUEST) if record.request_id != 0 => id = Some(record.request_id),
            (Some(i), fcgi::PARAMS) if record.request_id == i => {}
            (Some(i), fcgi::STDIN) if record.request_id == i => {
                if record.content.is_empty() {
                    return false;
                }
            }
            _ => return false,
        }
        pos += len;
        if pos == buf.len() {
            return true;
        }
    }
}

/// True when `buf` begins with a whole FastCGI request head: BEGIN_REQUEST (id ≠ 0),
/// its PARAMS up to the empty record that ends them (or its first STDIN record).
/// `--max-requests` counts a request from there: part of a head is no request yet
/// (the slow lane counts it once whole).
pub fn has_whole_head(buf: &[u8]) -> bool {
    let mut pos = 0;
    let mut id = None;
    while let Some(Ok(Some((len, record)))) = buf.get(pos..).map(fcgi::parse_record) {
        match (id, record.kind) {
            (None, fcgi::BEGIN_REQUEST) if record.request_id != 0 => id = Some(record.request_id),
            (Some(i), fcgi::PARAMS) if record.request_id == i => {
                if record.content.is_empty() {
                    return true;
                }
            }
            (Some(i), fcgi::STDIN) if record.request_id == i => return true,
            _ => return false,
        }
        pos += len;
    }
    false
}

/// Reads more of a simple request that did not fit the first read, as long as it
/// keeps arriving (`arrival`: no long pause, a bounded time in all) and stays under
/// `cap` bytes; true when a whole request may be in `buf` now. What was read stays in
/// `buf` either way (for the slow lane, which meets the same EOF or error again).
/// Only a body's arrival is waited for: a head that pauses unfinished is not on its
/// way (a front server writes a head at once), so it goes to the slow lane at once.
/// regression: a client sending 17 KB partial heads cost a Python thread a 10 ms
/// pause per connection (probe 389), and the connections behind them waited.
pub fn read_rest(conn: &FcgiConn, buf: &mut BytesMut, cap: usize, arrival: &Arrival) -> bool {
    let mut acked = false;
    while buf.len() < cap {
        if !arrival.in_time() {
            return false;
        }
        if buf.capacity() == buf.len() {
            // Grow with the data, not with what the peer announced.
            buf.reserve((cap - buf.len()).min(256 * 1024));
        }
        let spare = buf.spare_capacity_mut();
        match rustix::net::recv(conn.sock.as_fd(), spare, rustix::net::RecvFlags::empty()) {
            Ok(((&mut [], _), _)) => return false,
            Ok(((init, _), _)) => {
                let n = init.len();
                // SAFETY: recv initialised the first `n` spare bytes.
                unsafe { buf.set_len(buf.len() + n) };
                if !is_partial_simple(buf) {
                    return true;
                }
            }
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => {
                // The rest may wait for our ACK (Nagle on the front server's side).
                if !has_whole_head(buf) {
                    return false;
                }
                if !std::mem::replace(&mut acked, true) {
                    conn.ack_now();
                }
                if !arrival.more(&conn.sock) {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// BEGIN_REQUEST id 1 (RESPONDER, keep-conn), PARAMS "a"="b", empty PARAMS,
    /// STDIN "xy", empty STDIN.
    fn request() -> Vec<u8> {
        let mut out = Vec::new();
        fcgi::encode_begin_request(&mut out, 1, fcgi::ROLE_RESPONDER, true);
        fcgi::encode_record(&mut out, fcgi::PARAMS, 1, &[1, 1, b'a', b'b']);
        fcgi::encode_record(&mut out, fcgi::PARAMS, 1, &[]);
        fcgi::encode_record(&mut out, fcgi::STDIN, 1, b"xy");
        fcgi::encode_record(&mut out, fcgi::STDIN, 1, &[]);
        out
    }

    #[test]
    fn waits_on_every_prefix_of_a_simple_request() {
        let req = request();
        for i in 0..req.len() {
            assert!(is_partial_simple(&req[..i]), "prefix of {i} bytes");
        }
        assert!(!is_partial_simple(&req), "the whole request");
    }

    #[test]
    fn a_head_is_whole_from_the_empty_params_record_on() {
        let req = request();
        // BEGIN_REQUEST (16) + PARAMS "a"="b" (8 + 4 + 4 padding) + empty PARAMS (8).
        let head = 16 + 16 + 8;
        for i in 0..head {
            assert!(!has_whole_head(&req[..i]), "prefix of {i} bytes");
        }
        for i in head..=req.len() {
            assert!(has_whole_head(&req[..i]), "prefix of {i} bytes");
        }
        assert!(!has_whole_head(b"GET / HTTP/1.1\r\n\r\n"), "HTTP");
    }

    /// A request whose PARAMS are `size` bytes of one variable, with an empty body.
    fn request_with_params(size: usize) -> Vec<u8> {
        let value = vec![b'v'; size];
        let mut pairs = vec![4, 0x80 | (size >> 24) as u8, (size >> 16) as u8];
        pairs.extend_from_slice(&[(size >> 8) as u8, size as u8]);
        pairs.extend_from_slice(b"HTTP");
        pairs.extend_from_slice(&value);
        let mut out = Vec::new();
        fcgi::encode_begin_request(&mut out, 1, fcgi::ROLE_RESPONDER, true);
        for part in pairs.chunks(fcgi::MAX_CONTENT) {
            fcgi::encode_record(&mut out, fcgi::PARAMS, 1, part);
        }
        fcgi::encode_record(&mut out, fcgi::PARAMS, 1, &[]);
        fcgi::encode_record(&mut out, fcgi::STDIN, 1, &[]);
        out
    }

    /// Reads `first` bytes of `req` as the acceptor does, then `read_rest` with a
    /// patient rule; the rest of `req` is written 2 s later. True: it was waited for.
    fn waits_for_the_rest(req: &[u8], first: usize) -> bool {
        use std::io::{Read, Write};
        let ep = rustix::event::epoll::create(rustix::event::epoll::CreateFlags::CLOEXEC).unwrap();
        let parking = super::super::Parking::new(Arc::new(ep));
        let (mut front, mut ours) = std::os::unix::net::UnixStream::pair().unwrap();
        front.write_all(&req[..first]).unwrap();
        let mut buf = BytesMut::from(&vec![0u8; first][..]);
        ours.read_exact(&mut buf).unwrap();
        ours.set_nonblocking(true).unwrap();
        let sock = socket2::Socket::from(std::os::fd::OwnedFd::from(ours));
        let timeout = std::time::Duration::from_secs(5);
        let conn = FcgiConn::new(sock, "test".into(), false, 0, timeout, &parking, None);
        let rest = req[first..].to_vec();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(2));
            front.write_all(&rest).unwrap();
            front
        });
        let patient = Arrival::patient(std::time::Duration::from_secs(20));
        let whole = read_rest(&conn, &mut buf, 1 << 20, &patient);
        drop(writer.join().unwrap());
        whole
    }

    // regression: a partial head of 16 KiB or more (probe 389: 17 KB of headers, the
    // rest never sent) was waited for on the Python thread, 10 ms per connection.
    #[test]
    fn only_a_body_s_rest_is_waited_for() {
        let req = request_with_params(20 * 1024);
        let head = req.len() - 8;
        assert!(has_whole_head(&req[..head]) && !has_whole_head(&req[..head - 1]));
        assert!(!waits_for_the_rest(&req, 17 * 1024), "a partial head");
        assert!(
            waits_for_the_rest(&req, head),
            "a whole head, its body to come"
        );
    }

    #[test]
    fn rejects_what_is_not_one_simple_request() {
        let mut other_id = Vec::new();
        fcgi::encode_begin_request(&mut other_id, 1, fcgi::ROLE_RESPONDER, true);
        fcgi::encode_record(&mut other_id, fcgi::PARAMS, 2, b"z");
        assert!(!is_partial_simple(&other_id), "records of another id");
        let mut out = Vec::new();
        fcgi::encode_record(&mut out, fcgi::GET_VALUES, 0, &[]);
        assert!(!is_partial_simple(&out), "a management record");
        let mut two = Vec::new();
        fcgi::encode_begin_request(&mut two, 1, fcgi::ROLE_RESPONDER, true);
        fcgi::encode_begin_request(&mut two, 2, fcgi::ROLE_RESPONDER, true);
        assert!(!is_partial_simple(&two), "two requests");
        assert!(!is_partial_simple(b"GET / HTTP/1.1\r\n"), "HTTP");
    }
}
