//! The slow lane (tokio): connections whose request was not complete on the first
//! read. Reads the head within `--head-timeout` and the body within `--read-timeout`
//! per read (into memory, or an unlinked temporary file past the spool threshold),
//! answers protocol errors, then hands the complete request to the Python threads'
//! queue. Only complete requests ever reach Python.

use std::future::Future;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

use super::admission::Permit;
pub use super::lane::Limits;
use super::lane::SlowLane;
use super::sink::{Close, ConnSink};
use super::slow_clients::{self, Reason};
use super::span::{closed_access, refused_access, request_span};
use crate::codec::uwsgi::UwsgiCodec;
use crate::codec::Protocol;
use crate::codec::{CodecError, Frame, Head};
use crate::logging::{Ending, Untrusted};
use crate::proto::response::HeadStyle;
use crate::proto::ProtoError;
use crate::wsgi::{Body, ListenerInfo, Request};

/// Where the fast path left a connection.
pub enum Start {
    /// Nothing, or part of a head, has arrived.
    Fresh(BytesMut),
    /// As `Fresh`, with bytes a worker whose threads were all busy read and handed
    /// over ([`SlowLane::busy_here`]): served here whatever this worker's threads do
    /// (never handed on again for that, so it cannot go to and fro).
    Carried(BytesMut),
    /// The head is decoded; the body is incomplete (or large, or over the limit). A
    /// body to be held in memory comes in its own buffer of its whole length (empty
    /// when none of it has arrived yet). The flag: the fast path's last read filled all
    /// the room it offered (more may wait in the socket, past what it read).
    Head(Head, UwsgiCodec, BytesMut, bool),
    /// The first bytes were already malformed.
    Failed(CodecError),
}

/// Hands a uwsgi/SCGI connection of listener `listener` to the slow lane, with what
/// the fast path read. `permit` counts it (`--max-connections`) until its socket
/// closes.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    lane: &SlowLane,
    sock: socket2::Socket,
    tcp: bool,
    peer: Arc<str>,
    (listener, info): (usize, ListenerInfo),
    start: Start,
    started: Instant,
    permit: Permit,
) {
    let owned = lane.clone();
    lane.spawn(async move {
        let lane = owned;
        let _ = sock.set_nonblocking(true);
        if tcp {
            let std: std::net::TcpStream = sock.into();
            match tokio::net::TcpStream::from_std(std) {
                Ok(s) => serve(s, tcp, peer, (listener, info), start, started, lane, permit).await,
                Err(e) => tracing::error!(error = %e, "cannot register a connection"),
            }
        } else {
            let std: std::os::unix::net::UnixStream = sock.into();
            match tokio::net::UnixStream::from_std(std) {
                Ok(s) => serve(s, tcp, peer, (listener, info), start, started, lane, permit).await,
                Err(e) => tracing::error!(error = %e, "cannot register a connection"),
            }
        }
    });
}

/// Why the slow lane stopped reading a request.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Malformed, truncated, or the socket failed.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The server stops and the connection had sent nothing yet.
    #[error("postern is stopping")]
    Stopping,
    /// The peer sent nothing for this long in the middle of a body.
    #[error("no body bytes for {0:?} (--read-timeout)")]
    TimedOut(Duration),
    /// The temporary file for a body over `--body-spool-threshold` could not be made.
    #[error("cannot create a temporary file for the request body over --body-spool-threshold: {0} (out of file descriptors: raise ulimit -n / LimitNOFILE= or lower --max-connections; or TMPDIR is full or not writable)")]
    Spool(io::Error),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Codec(CodecError::Io(e))
    }
}

/// A tokio stream the slow lane can read and give back as a plain socket.
pub trait Conn: AsyncRead + AsyncWrite + AsFd + Unpin + Send + 'static {
    fn into_socket(self) -> io::Result<socket2::Socket>;
    /// Waits until a read would not block (input, EOF or an error is there).
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send;
}

impl Conn for tokio::net::TcpStream {
    fn into_socket(self) -> io::Result<socket2::Socket> {
        Ok(self.into_std()?.into())
    }
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        tokio::net::TcpStream::readable(self)
    }
}

impl Conn for tokio::net::UnixStream {
    fn into_socket(self) -> io::Result<socket2::Socket> {
        Ok(self.into_std()?.into())
    }
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        tokio::net::UnixStream::readable(self)
    }
}

/// Frames from a connection: bytes already buffered (handed over by the fast path)
/// decode before any new read.
struct Reader<'c, C> {
    conn: &'c mut C,
    codec: UwsgiCodec,
    buf: BytesMut,
    /// While set and nothing has arrived, a stop closes the connection at once.
    idle: Option<CancellationToken>,
    /// The last read filled all the room it offered: more may be in the socket
    /// ([`bytes_past`]).
    filled: bool,
    /// While its head or body arrives: told when bytes come
    /// ([`slow_clients::HeadWatch`]).
    arriving: Option<slow_clients::HeadMarker>,
}

impl<C: Conn> Reader<'_, C> {
    /// The next frame; `Ok(None)` at a clean EOF.
    async fn next(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            if let Some(frame) = self.codec.decode(&mut self.buf)? {
                return Ok(Some(frame));
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(8192);
            }
            let room = self.buf.capacity() - self.buf.len();
            let n = match &self.idle {
                Some(stop) if self.buf.is_empty() => tokio::select! {
                    r = self.conn.read_buf(&mut self.buf) => r?,
                    _ = stop.cancelled() => return Err(ReadError::Stopping),
                },
                _ => self.conn.read_buf(&mut self.buf).await?,
            };
            self.filled = n == room;
            if let Some(a) = self.arriving.as_ref().filter(|_| n > 0) {
                a.read(n);
            }
            if n == 0 {
                return Ok(self.codec.decode_eof(&mut self.buf)?);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve<C: Conn>(
    mut conn: C,
    tcp: bool,
    peer: Arc<str>,
    (listener, info): (usize, ListenerInfo),
    start: Start,
    started: Instant,
    lane: SlowLane,
    permit: Permit,
) {
    let limits = &lane.limits;
    let carried = matches!(start, Start::Carried(_));
    let (head, mut framed) = match start {
        Start::Failed(e) => {
            return bad_request(&mut conn, &peer, e, &lane, (info.protocol, started)).await
        }
        Start::Head(head, codec, buf, filled) => (
            head,
            Reader {
                conn: &mut conn,
                codec,
                buf,
                idle: None,
                // A whole body can be here too (over --body-spool-threshold): its
                // read may have ended exactly at the body, bytes past it waiting.
                filled,
                arriving: None,
            },
        ),
        Start::Fresh(buf) | Start::Carried(buf) => {
            // Listed while its head arrives: at --max-connections, with a connection
            // waiting, the oldest partial head is closed for it (its line logged there).
            let watch = slow_clients::HeadWatch::new(&peer, started, !buf.is_empty());
            let mut framed = Reader {
                conn: &mut conn,
                codec: UwsgiCodec::for_protocol(info.protocol, limits.buffer_size),
                buf,
                idle: Some(lane.stopping.clone()),
                filled: false,
                arriving: Some(watch.marker()),
            };
            let left = limits.head_timeout.saturating_sub(started.elapsed());
            let mut read = tokio::select! {
                r = timeout(left, framed.next()) => r,
                () = watch.closed_for_room() => return,
            };
            if read.is_err() && input_waits(&*framed.conn).await {
                read = tokio::select! {
                    r = timeout(STOPPED_GRACE, framed.next()) => r,
                    () = watch.closed_for_room() => return,
                };
            }
            match read {
                Err(_) => {
                    let got = framed.buf.len();
                    // Named for the first few only: a flood is summed up.
                    if slow_clients::name(&peer, limits.head_timeout) {
                        tracing::warn!(%peer, got, "no complete request head within {:?} (--head-timeout); closing", limits.head_timeout);
                    }
                    return;
                }
                Ok(Ok(None)) => {
                    tracing::debug!(%peer, "connection closed before sending a request");
                    return;
                }
                Ok(Err(ReadError::Stopping)) => {
                    tracing::debug!(%peer, "closing a connection that sent nothing: stopping");
                    return;
                }
                Ok(Err(e @ ReadError::TimedOut(_))) => {
                    if slow_clients::bad_input(&peer, Reason::Truncated) {
                        tracing::warn!(%peer, error = %e, "closing");
                    }
                    return;
                }
                Ok(Err(e @ ReadError::Spool(_))) => {
                    tracing::warn!(%peer, error = %e, "closing");
                    return;
                }
                Ok(Err(ReadError::Codec(e))) => {
                    drop(framed);
                    return bad_request(&mut conn, &peer, e, &lane, (info.protocol, started)).await;
                }
                Ok(Ok(Some(Frame::Body(_)))) => unreachable!("the codec yields the head first"),
                Ok(Ok(Some(Frame::Head(head)))) => {
                    framed.idle = None;
                    framed.arriving = None;
                    drop(watch);
                    // --max-requests counts a request from its whole head; with no room
                    // left for it, it goes to the workers that serve on, as one that
                    // waits unread does. regression: partial heads counted, and made
                    // workers recycle (review-f4b); counted only here, they were served
                    // past the limit.
                    let to = (listener, info.protocol);
                    // Every thread here busy, one free elsewhere: it goes there.
                    if !carried && lane.busy_here() {
                        let sock = framed.conn.as_fd();
                        if hand_on(
                            &head,
                            &framed.buf,
                            sock,
                            to,
                            started,
                            (&lane, Why::Busy),
                            &peer,
                        ) {
                            return;
                        }
                    }
                    if !permit.try_begin() {
                        let sock = framed.conn.as_fd();
                        if hand_on(
                            &head,
                            &framed.buf,
                            sock,
                            to,
                            started,
                            (&lane, Why::NoRoom),
                            &peer,
                        ) {
                            return;
                        }
                    }
                    (head, framed)
                }
            }
        }
    };
    // Its request has begun (--max-requests counts it from here; when no worker can
    // take it on, past the limit).
    permit.begin();
    let (span, request_id) = request_span(&head, &peer);

    // Refused from the head alone, before the body is read.
    // Their lines are named for the first few only: a flood is summed up.
    let refusal = if let Some(coding) = unframed_body(&head, &framed.codec) {
        span.in_scope(|| {
            if !slow_clients::bad_input(&peer, Reason::Malformed) {
                return;
            }
            tracing::warn!(
                transfer_encoding = %Untrusted(coding),
                protocol = info.protocol.name(),
                "request body sent with Transfer-Encoding and no CONTENT_LENGTH, which alone frames a {} body; answered 411. The front server must de-chunk it and send CONTENT_LENGTH (nginx does; uWSGI's HTTP router cannot: clients must send Content-Length, or put nginx in front)",
                info.protocol.name()
            )
        });
        Some((
            411,
            "Length Required",
            "A request body needs a Content-Length here.\n",
        ))
    } else if let Some(max) = limits.max_body.filter(|&m| head.content_length > m) {
        span.in_scope(|| {
            if !slow_clients::bad_input(&peer, Reason::Oversized) {
                return;
            }
            tracing::warn!(
                content_length = head.content_length,
                max_body = max,
                "request body over --max-body; answered 413"
            )
        });
        Some((413, "Content Too Large", "Request body too large.\n"))
    } else {
        None
    };
    if let Some((code, reason, text)) = refusal {
        drop(framed);
        lane.refused(info.protocol, Some(code));
        let sent = reject(
            &mut conn,
            info.protocol.head_style(),
            code,
            reason,
            text,
            limits.read_timeout,
        )
        .await;
        span.in_scope(|| refused_access(&head, &request_id, info.protocol, code, sent, started));
        return;
    }
    // Counted as being read until it is queued (or cut off): a stop that cuts requests
    // off counts it with them.
    let being_read = lane.queue.reading_request();

    // A body still to come is listed while it arrives: at --max-connections, with a
    // connection waiting, one that comes slower than BODY_MIN_RATE may be closed for it.
    let got = framed.buf.len() as u64;
    let watch = (got < head.content_length)
        .then(|| slow_clients::HeadWatch::body(&peer, head.content_length, got));
    framed.arriving = watch.as_ref().map(slow_clients::HeadWatch::marker);
    let mut reading = ReadingBody {
        span: &span,
        head: &head,
        id: &request_id,
        protocol: info.protocol,
        started,
        armed: got < head.content_length,
    };
    let read = span.instrument(read_body(&mut framed, &head, limits));
    let read = match &watch {
        Some(w) => tokio::select! {
            r = read => Some(r),
            () = span.instrument(w.closed_for_room()) => None,
        },
        None => Some(read.await),
    };
    reading.armed = false;
    drop(reading);
    framed.arriving = None;
    drop(watch);
    let Some(read) = read else {
        // Its line is logged (closed_for_room); the access line says postern closed.
        drop(framed);
        span.in_scope(|| {
            closed_access(
                &head,
                &request_id,
                info.protocol,
                Ending::BodyTooSlow,
                started,
            )
        });
        return;
    };
    let body = match read {
        Ok(b) => b,
        Err(e @ ReadError::Spool(_)) => {
            // The peer did nothing wrong: answered 503 (nginx may try another
            // server), logged once a second at most (an EMFILE hits every request).
            if let Some(dropped) = SPOOL_LOG.allow() {
                span.in_scope(|| tracing::error!(error = %e, dropped, "answered 503"));
            }
            drop(framed);
            // Answered: no longer a request being read (a stop meanwhile cuts nothing).
            drop(being_read);
            lane.refused(info.protocol, Some(503));
            let sent = reject(
                &mut conn,
                info.protocol.head_style(),
                503,
                "Service Unavailable",
                "postern could not store the request body.\n",
                limits.read_timeout,
            )
            .await;
            span.in_scope(|| refused_access(&head, &request_id, info.protocol, 503, sent, started));
            return;
        }
        Err(e) => {
            // The peer's doing (cut off, silent, malformed): named for the first few.
            if slow_clients::bad_input(&peer, Reason::Truncated) {
                span.in_scope(
                    || tracing::warn!(error = %e, "could not read the request body; closing"),
                );
            }
            // The front server aborted the upload or closed the connection: an access
            // line too (status 0, `client went away`), as over FastCGI, where the app's
            // read finds the same; a body that stalled is postern's close.
            let ending = match e {
                ReadError::TimedOut(_) => Ending::BodyStalled,
                _ => Ending::ClientGone,
            };
            span.in_scope(|| closed_access(&head, &request_id, info.protocol, ending, started));
            return;
        }
    };
    let extra = bytes_past(framed.conn.as_fd(), framed.buf.len(), framed.filled);
    drop(framed);
    let sock = match conn.into_socket() {
        Ok(s) => s,
        Err(e) => {
            span.in_scope(|| tracing::error!(error = %e, "cannot hand the connection to Python"));
            return;
        }
    };
    let linger = (extra > 0)
        .then(|| span.in_scope(|| Linger::past_the_body(&lane, &peer, tcp, extra, info.protocol)));
    let sink = ConnSink::new(sock, tcp, started, limits.read_timeout)
        .style(info.protocol.head_style())
        .permit(permit)
        .linger(linger);
    lane.queue.push_read(
        Request {
            head,
            body,
            listener: info,
            sink: Box::new(sink),
            span,
            request_id,
            errors_forward: None,
            queued: true,
        },
        being_read,
    );
}

/// Why a request whose head the slow lane read goes to another worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Why {
    /// `--max-requests` left no room to begin it (the worker has taken its last one
    /// and recycles).
    NoRoom,
    /// Every Python thread of this worker is busy, one of another worker is free
    /// ([`SlowLane::busy_here`]).
    Busy,
    /// The worker leaves (a reload, a recycle): the FastCGI requests that began on a
    /// connection while others ran on it were held for the workers that serve on
    /// (`fastcgi::holding`).
    Leaving,
}

/// Lines about requests handed to a worker with a free thread: one a second at most.
static BUSY_HANDED_LOG: RateLimit = RateLimit::new();

/// Logs a request whose head the slow lane read handed on (`read` bytes with it).
pub(crate) fn handed_on_line(peer: &str, read: usize, why: Why) {
    match why {
        Why::NoRoom => {
            tracing::debug!(%peer, read, "no room left under --max-requests: the request goes to the workers that serve on")
        }
        Why::Leaving => {
            tracing::debug!(%peer, read, "this worker leaves: the FastCGI connection goes to the workers that serve on, with the requests held for them")
        }
        Why::Busy => match BUSY_HANDED_LOG.allow() {
            Some(unlogged) => {
                tracing::info!(%peer, read, handed_unlogged = unlogged, "every Python thread of this worker is busy: a request goes to a worker with a free thread")
            }
            None => {
                tracing::debug!(%peer, read, "every Python thread of this worker is busy: a request goes to a worker with a free thread")
            }
        },
    }
}

/// The request whose head the slow lane has read goes to the workers that serve on
/// (`why`) through the hand-over channel, with the bytes read (its head, framed again
/// as it came, and what of its body came with it) ahead of what is still in its
/// socket. False when nobody can take it (a single process, the whole server
/// stopping) or it cannot be sent: it is served here then.
fn hand_on(
    head: &Head,
    rest: &[u8],
    sock: BorrowedFd<'_>,
    (listener, protocol): (usize, Protocol),
    started: Instant,
    (lane, why): (&SlowLane, Why),
    peer: &str,
) -> bool {
    let Some(channel) = super::fastcgi::handover::Channel::get() else {
        return false;
    };
    if lane.monitor.as_ref().is_some_and(|m| m.server_stopping()) {
        return false;
    }
    let mut read = Vec::with_capacity(head.buf.len() + rest.len() + 8);
    if protocol == Protocol::Scgi {
        read.extend_from_slice(format!("{}:", head.buf.len()).as_bytes());
        read.extend_from_slice(&head.buf);
        read.push(b',');
    } else {
        let Ok(size) = u16::try_from(head.buf.len()) else {
            return false;
        };
        let modifier1 = if head.modifier30 {
            crate::proto::uwsgi::MODIFIER_WSGI_STRIP_SCRIPT_NAME
        } else {
            0
        };
        read.push(modifier1);
        read.extend_from_slice(&size.to_le_bytes());
        read.push(0);
        read.extend_from_slice(&head.buf);
    }
    read.extend_from_slice(rest);
    let sent = match why {
        Why::NoRoom | Why::Leaving => {
            channel.send(sock, listener, Some(started.elapsed()), &read, false, &[])
        }
        Why::Busy => channel.send_now(sock, listener, started.elapsed(), &read, &[]),
    };
    match sent {
        Ok(()) => {
            handed_on_line(peer, read.len(), why);
            true
        }
        Err(e) if why == Why::Busy => {
            tracing::debug!(%peer, error = %e, "cannot hand a request over to a worker with a free thread; it waits here");
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot hand a request over to the serving workers; serving it here");
            false
        }
    }
}

/// The transfer coding of a request whose body postern cannot frame: over uwsgi and
/// SCGI only CONTENT_LENGTH says where a body ends, so a head that says
/// `Transfer-Encoding` (anything but `identity`) and announces no length has a body
/// that would be read as empty, or none at all (uWSGI's HTTP router sends such heads,
/// with the raw chunked body after them or nothing). nginx de-chunks and sends
/// CONTENT_LENGTH with the header still there: served. FastCGI is not asked this (its
/// STDIN records frame any body). Answered 411 before the body, as HTTP/1.1 does
/// (RFC 9112 §6.3). The codec that decoded `head` found it in its one walk of the
/// variables (every GET comes here: nothing is walked again).
pub(super) fn unframed_body<'h>(head: &'h Head, codec: &UwsgiCodec) -> Option<&'h [u8]> {
    let coding = codec.unframed()?;
    head.buf.get(coding.start as usize..coding.end as usize)
}

/// Logs a malformed request and answers where a protocol-level answer helps (with
/// an access line, as FastCGI's answers have: the head did not decode, so its method
/// and path are `-`).
async fn bad_request<C: Conn>(
    conn: &mut C,
    peer: &str,
    e: CodecError,
    lane: &SlowLane,
    (protocol, started): (Protocol, Instant),
) {
    let mut style = protocol.head_style();
    let reply = match &e {
        CodecError::Proto(ProtoError::HttpOnUwsgi) => Some((
            400,
            "Bad Request",
            "This is a uwsgi socket: put nginx in front (uwsgi_pass) or use `postern request`.\n",
        )),
        CodecError::Proto(ProtoError::HttpOnScgi) => {
            // The peer speaks HTTP: answer it in HTTP.
            style = HeadStyle::Http;
            Some((
                400,
                "Bad Request",
                "This is an SCGI socket: put nginx in front (scgi_pass) or use `postern request`.\n",
            ))
        }
        CodecError::Proto(ProtoError::ConflictingLength { .. }) => Some((
            400,
            "Bad Request",
            "CONTENT_LENGTH sent twice with different values.\n",
        )),
        // As FastCGI answers it (and as the README promises for a malformed head): a
        // front server sends digits, so this is a hand-made client, which learns why.
        // regression: closed without an answer over uwsgi and SCGI (hostile6 LOW).
        CodecError::Proto(ProtoError::BadContentLength(_)) => Some((
            400,
            "Bad Request",
            "CONTENT_LENGTH is not a valid length (decimal digits, below 2^63).\n",
        )),
        CodecError::Proto(ProtoError::HeadTooLarge { .. }) => Some((
            431,
            "Request Header Fields Too Large",
            "Request head over postern's --buffer-size.\n",
        )),
        _ => None,
    };
    let reason = match &e {
        CodecError::Proto(ProtoError::HeadTooLarge { .. }) => Reason::Oversized,
        CodecError::HeadTruncated { .. } | CodecError::BodyTruncated { .. } => Reason::Truncated,
        _ => Reason::Malformed,
    };
    // Named for the first few only: a flood is summed up.
    let named = slow_clients::bad_input(peer, reason);
    lane.refused(protocol, reply.map(|r| r.0));
    let Some((code, reason, body)) = reply else {
        if named {
            tracing::warn!(%peer, error = %e, "bad request; closing");
        }
        return;
    };
    // As `reject`, with the lines written before the drain.
    let msg = crate::proto::response::plain_response(style, code, reason, body);
    let sent = conn.write_all(&msg).await.ok().map(|()| msg.len() as u64);
    if named {
        // regression (probe 389): it said "closing", not the answer it sent.
        if sent.is_some() {
            tracing::warn!(%peer, error = %e, status = code, "bad request; answered {code} and closing");
        } else {
            tracing::warn!(%peer, error = %e, status = code, "bad request; closing (its {code} answer could not be written: the peer is gone)");
        }
    }
    // regression (probe 389): these answers had no access line over uwsgi and
    // SCGI (FastCGI's had).
    let head = Head {
        buf: Bytes::new(),
        vars: Vec::new(),
        modifier30: false,
        content_length: 0,
    };
    let id = crate::logging::RequestId::generate();
    refused_access(&head, &id, protocol, code, sent, started);
    if sent.is_some() {
        let _ = conn.shutdown().await;
        discard(conn, lane.limits.read_timeout).await;
    }
}

/// Whether input (bytes, an EOF or an error) waits on `conn` now, looked at (no wait)
/// when a read's timer has fired; if so, the runtime gets one turn to take it in before
/// the read is tried again, for at most [`STOPPED_GRACE`]. A peer that sent nothing
/// finds nothing waiting and is timed out as before. This is for a worker stopped as a
/// whole (SIGSTOP, a frozen cgroup, `docker pause`, a paused VM, a debugger) past the
/// deadline: the stop interrupts the runtime's wait, which then returns no events, so
/// the timer runs before the runtime has seen what the peer sent meanwhile. The peer
/// was not idle; the worker was. regression: a body sent steadily to a worker stopped
/// 2.5 s under `--read-timeout 1` was closed "no body bytes for 1s" after SIGCONT, its
/// bytes waiting in the socket; a head completed while stopped, "no complete request
/// head".
pub(crate) async fn input_waits<C: AsFd>(conn: &C) -> bool {
    let fd = conn.as_fd();
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let waits = matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(n) if n > 0);
    if waits {
        // Polled again after the runtime's next look at its events.
        tokio::task::yield_now().await;
    }
    waits
}

/// How long a read whose timer fired with input waiting (see [`input_waits`]) may go
/// on: enough for the runtime to take in what waits, bounded so that a peer trickling
/// bytes at the deadline gains little.
pub(crate) const STOPPED_GRACE: Duration = Duration::from_millis(200);

/// The next body chunk, within `--read-timeout`.
async fn next_body<C: Conn>(
    framed: &mut Reader<'_, C>,
    t: Duration,
    len: u64,
) -> Result<Bytes, ReadError> {
    let read = match timeout(t, framed.next()).await {
        Err(_) if input_waits(&*framed.conn).await => timeout(STOPPED_GRACE, framed.next()).await,
        r => r,
    };
    match read {
        Err(_) => Err(ReadError::TimedOut(t)),
        Ok(Ok(None)) => Err(CodecError::BodyTruncated {
            got: 0,
            expected: len,
        }
        .into()),
        Ok(Err(e)) => Err(e),
        Ok(Ok(Some(Frame::Body(b)))) => Ok(b),
        Ok(Ok(Some(Frame::Head(_)))) => unreachable!("one head per connection"),
    }
}

/// Lines about bodies that could not be spooled: at most one a second.
static SPOOL_LOG: RateLimit = RateLimit::new();

/// At most one log line a second, with the count of the lines left out since the last.
pub(crate) struct RateLimit(std::sync::Mutex<(Option<Instant>, u64)>);

impl RateLimit {
    pub(crate) const fn new() -> RateLimit {
        RateLimit(std::sync::Mutex::new((None, 0)))
    }

    /// `Some(lines left out since the last one)` when a line may be logged now.
    pub(crate) fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        let mut st = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if st
            .0
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            st.1 += 1;
            return None;
        }
        let dropped = std::mem::take(&mut st.1);
        st.0 = Some(now);
        Some(dropped)
    }
}

/// A body still being read when the worker's stop cuts its connection off (the stop
/// ends the runtime, which drops this task): named, with its access line (postern cut
/// it), since nothing else names it: it never reached the app, nor a scoreboard line.
/// regression (probe 358): uploads cut by a --timeout kill or a stop now over uwsgi
/// and SCGI left no line (only a count).
struct ReadingBody<'a> {
    span: &'a crate::logging::RequestSpan,
    head: &'a Head,
    id: &'a crate::logging::RequestId,
    protocol: Protocol,
    started: Instant,
    /// Still reading: a drop now is the stop's.
    armed: bool,
}

impl Drop for ReadingBody<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.span.in_scope(|| {
            tracing::warn!(
                content_length = self.head.content_length,
                "request cut off as its worker stopped: its body was still being read (it never reached the app; the front server gets an error)"
            );
            closed_access(
                self.head,
                self.id,
                self.protocol,
                Ending::Incomplete,
                self.started,
            );
        });
    }
}

/// Reads CONTENT_LENGTH bytes into memory, or into an unlinked temporary file past
/// the spool threshold.
async fn read_body<C: Conn>(
    framed: &mut Reader<'_, C>,
    head: &Head,
    limits: &Limits,
) -> Result<Body, ReadError> {
    let len = head.content_length;
    if len == 0 {
        return Ok(Body::Empty);
    }
    let t = limits.read_timeout;
    if len <= limits.spool_threshold {
        return read_into_memory(framed, len, t).await.map(Body::Memory);
    }
    let file = tokio::task::spawn_blocking(tempfile::tempfile)
        .await
        .map_err(|e| ReadError::Spool(io::Error::other(e.to_string())))?
        .map_err(ReadError::Spool)?;
    let mut file = tokio::fs::File::from_std(file);
    let mut got = 0u64;
    while got < len {
        let chunk = next_body(framed, t, len).await?;
        got += chunk.len() as u64;
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    tracing::debug!(bytes = len, "request body spooled to a temporary file");
    Ok(Body::File(file.into_std().await, len))
}

/// Reads a body of `len` bytes (within the spool threshold) into one buffer of its
/// whole length, taken once its first bytes are there (a peer that sends a head and
/// stalls costs no more) or handed over by the fast path, which made it so: the body
/// is held once while it arrives, and never copied to grow. regression: the first
/// read's bytes and a buffer grown (doubling) to the whole body were held together
/// until it ended: 150 uploads of 900 KB held open took 281 MiB, 1.8 MiB each.
async fn read_into_memory<C: Conn>(
    framed: &mut Reader<'_, C>,
    len: u64,
    t: Duration,
) -> Result<Bytes, ReadError> {
    let want = usize::try_from(len).unwrap_or(usize::MAX);
    let mut body = if framed.buf.capacity() >= want {
        let mut body = std::mem::take(&mut framed.buf);
        if body.len() > want {
            framed.buf = body.split_off(want);
        }
        body
    } else {
        // What the reader's buffer holds moves to the body's own, and the reader's
        // is not kept while the rest arrives. With nothing there yet, the whole
        // length is taken once the first bytes are.
        if framed.buf.is_empty() {
            let ready = match timeout(t, framed.conn.readable()).await {
                Err(_) if input_waits(&*framed.conn).await => Ok(Ok(())),
                r => r,
            };
            match ready {
                Err(_) => return Err(ReadError::TimedOut(t)),
                Ok(Err(e)) => return Err(e.into()),
                Ok(Ok(())) => {}
            }
        }
        let mut body = BytesMut::with_capacity(want.saturating_add(PAST_BODY));
        body.extend_from_slice(&std::mem::take(&mut framed.buf));
        body
    };
    while body.len() < want {
        let left = want - body.len();
        let offered = left
            .saturating_add(PAST_BODY)
            .min(body.capacity() - body.len());
        let mut room = (&mut body).limit(left.saturating_add(PAST_BODY));
        let mut read = timeout(t, framed.conn.read_buf(&mut room)).await;
        if read.is_err() && input_waits(&*framed.conn).await {
            read = timeout(STOPPED_GRACE, framed.conn.read_buf(&mut room)).await;
        }
        framed.filled = matches!(read, Ok(Ok(n)) if n == offered);
        if let (Some(a), Ok(Ok(n))) = (&framed.arriving, &read) {
            a.read(*n);
        }
        match read {
            Err(_) => return Err(ReadError::TimedOut(t)),
            Ok(Ok(0)) => {
                return Err(CodecError::BodyTruncated {
                    got: body.len() as u64,
                    expected: len,
                }
                .into())
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
        }
    }
    if body.len() > want {
        framed.buf = body.split_off(want);
    }
    Ok(body.freeze())
}

/// Room for this many bytes past a body held in memory is left in its buffer, and its
/// last read asks for them: a peer that sent more than its `CONTENT_LENGTH` is seen (a
/// [`Linger`] close) with no system call of its own.
pub(super) const PAST_BODY: usize = 1;

/// How many bytes the peer sent past its request's body, as far as can be told without
/// waiting, for the fast path and the slow lane alike: `read`, the bytes read with the
/// body; else, when the last read filled all the room it offered (`filled`) and so
/// ended exactly with the body, one look at the socket (MSG_PEEK, no wait). A read with
/// room for [`PAST_BODY`] never ends so unless the bytes past are there: the look is
/// taken only when a read's own size fell on the body's end (a head and body filling
/// the first read, or the slow lane's read buffer): nothing on the usual request.
pub(super) fn bytes_past(sock: BorrowedFd<'_>, read: usize, filled: bool) -> usize {
    if read > 0 || !filled {
        return read;
    }
    let mut one = [0u8; 1];
    let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
    rustix::net::recv(sock, &mut one[..], flags).map_or(0, |(n, _)| n)
}

/// Answers a small error response, then reads and discards what the peer still sends
/// (bounded) so that closing does not reset a peer that is still writing.
pub async fn reject<C: Conn>(
    conn: &mut C,
    style: HeadStyle,
    code: u16,
    reason: &str,
    body: &str,
    wait: Duration,
) -> Option<u64> {
    let msg = crate::proto::response::plain_response(style, code, reason, body);
    if conn.write_all(&msg).await.is_err() {
        return None;
    }
    let _ = conn.shutdown().await;
    discard(conn, wait).await;
    Some(msg.len() as u64)
}

/// Longest a close reads what the peer still sends (and `--read-timeout` when that is
/// shorter): long enough for a front server to finish writing what it had in flight,
/// bounded so that a peer that never stops sending cannot hold the connection open.
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Most bytes a close reads and drops, for the same reason.
const DRAIN_BYTES: u64 = 64 << 20;

/// Reads and drops what the peer sends until its EOF, an error, [`DRAIN_TIME`] (or
/// `wait`, if shorter) or [`DRAIN_BYTES`]; returns how many bytes it dropped.
async fn discard<C: Conn>(conn: &mut C, wait: Duration) -> u64 {
    let mut total = 0u64;
    let drain = async {
        let mut buf = vec![0u8; 16 * 1024];
        while total < DRAIN_BYTES {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n as u64,
            }
        }
    };
    let _ = timeout(wait.min(DRAIN_TIME), drain).await;
    total
}

/// Closes a uwsgi/SCGI connection whose peer sent bytes past its request's body (more
/// than its `CONTENT_LENGTH`) after its complete response: a lingering close, as
/// nginx's `lingering_close` and Apache's. A socket closed with unread input is reset
/// (TCP: an RST, and what was still in postern's send buffer is dropped; a Unix
/// socket: the peer's next read fails with ECONNRESET), and a reset can cost the peer
/// the part of the response it has not read yet. So the response ends with a FIN
/// (shutdown(SHUT_WR)), what the peer still sends is read and dropped on the I/O
/// runtime (bounded like a refusal's: [`DRAIN_TIME`], [`DRAIN_BYTES`]), and only then
/// is the socket closed. Made only for such a connection: every other one closes at
/// once, with no system call more.
pub struct Linger {
    handle: tokio::runtime::Handle,
    tcp: bool,
    wait: Duration,
}

impl Linger {
    /// Says why (one line, in the request's span: its peer and path) and makes the
    /// close; `extra`: the bytes past the body read so far.
    pub fn past_the_body(
        lane: &SlowLane,
        peer: &str,
        tcp: bool,
        extra: usize,
        protocol: Protocol,
    ) -> Box<dyn Close> {
        // Named for the first few only: a flood is summed up (by a task of the lane's
        // runtime: this may run on a Python thread).
        // regression (hostile): from a Python thread no summary was said until the
        // next bad input came.
        if slow_clients::bad_input_on(Some(&lane.handle), peer, Reason::Malformed, false) {
            if protocol == Protocol::Scgi {
                // regression (probe 322): with nginx's scgi_request_buffering off the
                // app saw a truncated upload, and this line blamed "the client".
                tracing::warn!(
                    extra,
                    "the front server sent bytes past its CONTENT_LENGTH: the app saw the body cut short there. nginx's scgi_request_buffering off announces only the body bytes it had read, then sends the rest: leave it on (the default). The connection closes after the response once the front server stops sending (a lingering close, 5 s at most)"
                );
            } else {
                tracing::warn!(
                    extra,
                    "the client sent bytes past its CONTENT_LENGTH: ignored; the connection closes after the response once the client stops sending (a lingering close, 5 s at most)"
                );
            }
        }
        Box::new(Linger {
            handle: lane.handle.clone(),
            tcp,
            wait: lane.limits.read_timeout,
        })
    }
}

impl Close for Linger {
    /// Ends the response with a FIN now, then drops what the peer sends (bounded)
    /// before closing `sock`. `permit` (the connection's place in `--max-connections`)
    /// is held until then; its request has ended. Not a task the stop waits for: the
    /// response is whole, and the runtime's end closes the socket.
    fn close(self: Box<Self>, sock: Arc<socket2::Socket>, permit: Option<Permit>) {
        if let Some(p) = &permit {
            p.served();
        }
        if sock.shutdown(std::net::Shutdown::Write).is_err() {
            return;
        }
        // The thread's writer may still hold a clone a moment longer.
        let Ok(sock) = Arc::try_unwrap(sock).or_else(|s| s.try_clone()) else {
            return;
        };
        let Linger { handle, tcp, wait } = *self;
        handle.spawn(async move {
            let _permit = permit;
            let dropped = if tcp {
                let std: std::net::TcpStream = sock.into();
                match tokio::net::TcpStream::from_std(std) {
                    Ok(mut s) => discard(&mut s, wait).await,
                    Err(_) => return,
                }
            } else {
                let std: std::os::unix::net::UnixStream = sock.into();
                match tokio::net::UnixStream::from_std(std) {
                    Ok(mut s) => discard(&mut s, wait).await,
                    Err(_) => return,
                }
            };
            tracing::debug!(dropped, "lingering close done");
        });
    }
}
