//! One FastCGI request's response: STDOUT records, then END_REQUEST through the
//! connection's one ending ([`FcgiConn::end_request`]), whichever path ran it; a copy
//! of `wsgi.errors` as STDERR records.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Ctl, FcgiConn, Owner, TryEnd};
use crate::proto::fastcgi as fcgi;
use crate::proto::response::HeadStyle;
use crate::server::writer::{Failed, Stream};
use crate::wsgi::{End, ErrorsForward, Sent, Sink};

/// State one request shares between its sink, its `wsgi.errors` and the reader.
#[derive(Default)]
pub(in crate::server) struct ReqFlags {
    /// FCGI_ABORT_REQUEST arrived: stop, answer END_REQUEST.
    pub aborted: AtomicBool,
    /// The process cut this response as it left ([`super::Parking::cut_responding`]):
    /// its access line says incomplete, not that the client went away.
    pub cut: AtomicBool,
    /// postern closed the connection while the request's body came, for this reason
    /// ([`crate::wsgi::input::ClosedBy::bits`], 0 for none): its access line says so.
    pub closed_by: AtomicU8,
    /// END_REQUEST is written: `wsgi.errors` no longer goes to the front server.
    pub done: AtomicBool,
    /// STDERR records were sent (an empty one ends the stream).
    pub stderr_used: AtomicBool,
    /// STDERR records may be sent (`wsgi.errors` goes to the front server; not with
    /// --no-fastcgi-stderr): set where that forwarding is made.
    pub stderr_on: AtomicBool,
    /// Whether the request's STDIN has ended: [`STDIN_ENDED`] (also for a request that
    /// came whole), [`STDIN_OPEN`] (the slow lane still reads it), or [`END_HELD`] (its
    /// response is done, and the lane sends the records through END_REQUEST once its
    /// STDIN has ended).
    pub stdin: AtomicU8,
    /// The front server sent EOF (closed its side, or the whole connection) after this
    /// request had come whole: it is still answered, but a `receive()` waiting for
    /// `http.disconnect` is told (EOF is the disconnect, as over uwsgi and SCGI).
    input_closed: AtomicBool,
    /// Told once the request is aborted or its input closed (the ASGI loop's
    /// disconnect).
    gone: std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>,
    /// Who answers: [`REPLY_NOT_YET`], [`REPLY_APP`] (its sink's first write claimed it)
    /// or [`REPLY_LATE`] (postern answered 504 for it, past `--timeout`), then
    /// [`REPLY_LATE_LOST`] when that answer's write failed (the front server had
    /// gone). One compare-exchange settles a write of the app's against that answer.
    reply: AtomicU8,
}

/// See [`ReqFlags::reply`].
const REPLY_NOT_YET: u8 = 0;
const REPLY_APP: u8 = 1;
const REPLY_LATE: u8 = 2;
const REPLY_LATE_LOST: u8 = 3;

impl ReqFlags {
    /// The request is cut (FCGI_ABORT_REQUEST, or its connection ended): its sink
    /// and body fail from now on, and whoever asked is told.
    pub fn abort(&self) {
        self.aborted.store(true, Ordering::Release);
        self.tell_gone();
    }

    /// The front server's EOF came after the whole request: it is answered as usual
    /// (its writes fail only if the peer closed both ways), and whoever waits for the
    /// client's disconnect is told.
    pub fn input_closed(&self) {
        self.input_closed.store(true, Ordering::Release);
        self.tell_gone();
    }

    /// The app's response is about to write: false when postern answered already
    /// ([`ReqFlags::answer_late`]).
    fn claim_reply(&self) -> bool {
        match self.reply.load(Ordering::Acquire) {
            REPLY_APP => true,
            REPLY_LATE | REPLY_LATE_LOST => false,
            _ => match self.reply.compare_exchange(
                REPLY_NOT_YET,
                REPLY_APP,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => true,
                Err(now) => now == REPLY_APP,
            },
        }
    }

    /// Postern answers instead of the app: true when nothing of the app's response
    /// was written (and none will be).
    pub(super) fn answer_late(&self) -> bool {
        self.reply
            .compare_exchange(
                REPLY_NOT_YET,
                REPLY_LATE,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// The 504 of [`ReqFlags::answer_late`] could not be written: the request ends
    /// as one whose client went away, not as a 504 (nobody got it).
    pub(super) fn late_answer_lost(&self) {
        self.reply.store(REPLY_LATE_LOST, Ordering::Release);
    }

    /// Postern answered 504 for the request, and the front server got it.
    fn answered_late(&self) -> bool {
        self.reply.load(Ordering::Acquire) == REPLY_LATE
    }

    /// Postern took the answer from the app (whether its 504 went out or not).
    fn taken_late(&self) -> bool {
        matches!(
            self.reply.load(Ordering::Acquire),
            REPLY_LATE | REPLY_LATE_LOST
        )
    }

    fn tell_gone(&self) {
        let notify = self.gone.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(n) = notify {
            n();
        }
    }

    /// Calls `notify` once the request is aborted or its input closed (at once if it
    /// is already).
    fn on_abort(&self, notify: Box<dyn FnOnce() + Send>) {
        let mut g = self.gone.lock().unwrap_or_else(|e| e.into_inner());
        if self.aborted.load(Ordering::Acquire) || self.input_closed.load(Ordering::Acquire) {
            drop(g);
            notify();
        } else {
            *g = Some(notify);
        }
    }
}

/// See [`ReqFlags::stdin`].
pub(super) const STDIN_ENDED: u8 = 0;
pub(super) const STDIN_OPEN: u8 = 1;
pub(super) const END_HELD: u8 = 2;

/// `wsgi.errors` lines copied to the front server as STDERR records of request `id`.
pub(super) fn stderr_forward(
    conn: &Arc<FcgiConn>,
    id: u16,
    flags: &Arc<ReqFlags>,
) -> ErrorsForward {
    // Weak: an app may keep `wsgi.errors` long after the request; that must not keep
    // the connection open.
    let conn = Arc::downgrade(conn);
    let flags = Arc::clone(flags);
    flags.stderr_on.store(true, Ordering::Release);
    Box::new(move |line: &[u8]| {
        if flags.done.load(Ordering::Acquire) || flags.aborted.load(Ordering::Acquire) {
            return;
        }
        let Some(conn) = conn.upgrade() else { return };
        let mut out = Vec::with_capacity(line.len() + 16);
        fcgi::encode_stream(&mut out, fcgi::STDERR, id, line);
        flags.stderr_used.store(true, Ordering::Release);
        let _ = conn.write_unless(&out, &flags.done);
    })
}

/// One FastCGI request's response: STDOUT records, then END_REQUEST.
pub struct FcgiSink {
    conn: Arc<FcgiConn>,
    id: u16,
    keep_conn: bool,
    flags: Arc<ReqFlags>,
    written: u64,
    started: Instant,
    finished: bool,
    /// Writes so far (`try_write` calls), to tell a stream from a one-shot response.
    writes: u32,
    /// The response's STDOUT records go through the thread's writer from here on
    /// (as for uwsgi: `crate::server::sink`).
    stream: Option<Stream>,
    /// Where the last STDOUT record queued in the thread's writer starts: the next chunk
    /// grows it while it waits there (one record, not one per chunk; checked against
    /// the queue by `fcgi::append_stream`, so a queue taken since starts a new one).
    queued_record: Option<usize>,
    /// What `try_write` could not send of the records through END_REQUEST, for
    /// `write_last` (the connection's write lock is held for it meanwhile).
    rest: Option<(Vec<u8>, bool)>,
    /// Listed as under way ([`super::Parking::cut_responding`]) since its first write
    /// that did not end it.
    ticket: Option<u64>,
    /// [`Sink::maybe_whole`]: writes do not list it.
    spare: bool,
    /// Listed in flight while `--timeout` is on ([`super::Parking::answer_overdue`]).
    in_flight: Option<u64>,
    /// Its END_REQUEST went out ([`Sink::ended_whole`]): not cut, not failed, not
    /// held for the request's input to end first.
    ended_out: bool,
}

/// From this write of a response on, its chunks are framed into the thread's writer.
const STREAM_FROM: u32 = 3;

/// A chunk this large is framed and sent directly (after what is queued), not copied.
const DIRECT: usize = 64 * 1024;

/// How long a cut response's figures wait for the thread's writer to return from
/// its send in flight, which the cut stops at once (a bound, not a measure).
const SETTLE_MAX: Duration = Duration::from_millis(200);

/// A last write below this may end the response in a send with the GIL held
/// ([`FcgiConn::try_end_inline`]: framed in one copy, never waiting).
const END_HELD_MAX: usize = 16 * 1024;

impl FcgiSink {
    pub(super) fn new(
        conn: Arc<FcgiConn>,
        id: u16,
        keep_conn: bool,
        flags: Arc<ReqFlags>,
        started: Instant,
        request_id: &crate::logging::RequestId,
    ) -> FcgiSink {
        let in_flight =
            conn.parking
                .taking_off(&conn, (id, keep_conn), &flags, request_id, started);
        FcgiSink {
            in_flight,
            conn,
            id,
            keep_conn,
            flags,
            written: 0,
            started,
            finished: false,
            ended_out: false,
            writes: 0,
            stream: None,
            queued_record: None,
            rest: None,
            ticket: None,
            spare: false,
        }
    }

    /// The response is under way: the stop cuts it if it still runs at its end.
    fn under_way(&mut self) {
        if self.ticket.is_none() && !self.spare {
            self.ticket = Some(
                self.conn
                    .parking
                    .responding(&self.conn, self.id, &self.flags),
            );
        }
    }

    fn not_under_way(&mut self) {
        if let Some(t) = self.ticket.take() {
            self.conn.parking.responded(t);
        }
    }

    /// Before each write of the response: the front server did not abort it, and
    /// postern did not answer it already (past `--timeout`); the first claims it.
    fn check(&self) -> io::Result<()> {
        if self.flags.aborted.load(Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the front server aborted the request (FCGI_ABORT_REQUEST)",
            ));
        }
        if !self.flags.claim_reply() {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "postern answered 504 for this request at --timeout",
            ));
        }
        Ok(())
    }

    /// The start of [`Sink::finish`] and [`Sink::abandon`]: false when the response
    /// has ended already (by `write_last`, or with postern's late 504).
    fn begin_end(&mut self) -> bool {
        // From here on a crash of this thread is not this response's to answer.
        super::crash::done(self);
        if self.finished {
            // Ended by `write_last`.
            self.not_under_way();
            return false;
        }
        if let Some(t) = self.in_flight.take() {
            self.conn.parking.landed(t);
        }
        // Claimed here too (a response that wrote nothing: an abort, a client gone
        // before it started, one never started), so that a late answer cannot come
        // between this look and its END_REQUEST.
        if !self.flags.claim_reply() {
            // Its END_REQUEST went with postern's 504 ([`FcgiConn::answer_late`]).
            self.finished = true;
            return false;
        }
        true
    }

    /// What the access line and the metrics count as sent.
    fn sent(&self) -> Sent {
        Sent {
            bytes: self.written,
            started: self.started,
            late: self.flags.answered_late(),
            cut: self.flags.cut.load(Ordering::Acquire),
            closed_by: crate::wsgi::input::ClosedBy::of_cut(
                self.flags.closed_by.load(Ordering::Acquire),
            ),
        }
    }

    /// Waits until the writer has sent everything queued; its error if a send failed.
    fn drain(&mut self) -> io::Result<()> {
        match &self.stream {
            Some(s) => {
                // Counted once sent, not once queued: the access line of a client gone
                // mid-stream names what actually left.
                let (sent, r) = s.drain();
                self.written += sent;
                r
            }
            None => Ok(()),
        }
    }

    /// The end: answered (`Some`: the last STDOUT bytes, then the tail through
    /// END_REQUEST) or cut; false when the last write failed.
    fn end(&mut self, last: Option<&[u8]>) -> bool {
        self.finished = true;
        let out = self
            .conn
            .end_response(self.id, self.keep_conn, &self.flags, last);
        self.ended_out =
            out && last.is_some() && self.flags.stdin.load(Ordering::Acquire) != END_HELD;
        out
    }
}

impl FcgiConn {
    /// Ends response `id`: the last STDOUT bytes, then the records through
    /// END_REQUEST (`Some`), or cut (`None`). False when the last write failed.
    fn end_response(
        self: &Arc<Self>,
        id: u16,
        keep_conn: bool,
        flags: &ReqFlags,
        last: Option<&[u8]>,
    ) -> bool {
        // Set before END_REQUEST goes out: no STDERR line may follow it.
        flags.done.store(true, Ordering::Release);
        let Some(data) = last else {
            return self.end_request(id, keep_conn, None);
        };
        let stderr = flags.stderr_used.load(Ordering::Acquire);
        let (tail, n) = fcgi::response_tail(id, stderr);
        let held =
            flags
                .stdin
                .compare_exchange(STDIN_OPEN, END_HELD, Ordering::AcqRel, Ordering::Acquire);
        if held.is_ok() {
            return self.end_held(id, keep_conn, data, &tail[..n]);
        }
        self.end_request(id, keep_conn, Some((data, &tail[..n])))
    }

    /// Answers request `id`, which passed `--timeout` before its response started
    /// ([`ReqFlags::answer_late`] said so), with a 504 and its END_REQUEST, before the
    /// master kills the worker that runs it. Without an answer, the kill resets the
    /// connection, and nginx, for a request that failed on a cached (kept) connection,
    /// sends it again on another one without counting a try: each of its cached
    /// connections ran the same slow GET once more and killed one more worker.
    pub(super) fn answer_late(
        self: &Arc<Self>,
        id: u16,
        keep_conn: bool,
        flags: &ReqFlags,
    ) -> bool {
        let body = crate::proto::response::plain_response(
            HeadStyle::Cgi,
            504,
            "Gateway Timeout",
            "Gateway Timeout\n",
        );
        self.end_response(id, keep_conn, flags, Some(&body))
    }

    /// Ends slow-lane request `id` whose STDIN has not ended (an app that answered
    /// without reading its whole body): `data` goes out now, and the records through
    /// END_REQUEST (`tail`) go to the lane, which sends them once STDIN has ended, or
    /// after --read-timeout without it. nginx with `fastcgi_request_buffering off`
    /// takes an END_REQUEST (or, without keep-conn, the empty STDOUT) before it has
    /// sent the whole body as the end of a request whose body it could not finish
    /// reading, and closes its client's keep-alive connection. False when the write
    /// failed.
    fn end_held(self: &Arc<Self>, id: u16, keep_conn: bool, data: &[u8], tail: &[u8]) -> bool {
        // Before the lane can send END_REQUEST (see `request_ended`).
        self.request_ended();
        let lane = match &*self.owner() {
            Owner::Lane(tx) => Some(tx.clone()),
            _ => None,
        };
        let Some(tx) = lane else {
            // Nobody reads the connection any more: ended as any other request.
            return self.end_request(id, keep_conn, Some((data, tail)));
        };
        if !data.is_empty() && self.send_stdout(id, data, &[]).is_err() {
            tracing::debug!("the front server closed the connection before END_REQUEST");
            self.abort();
            let _ = tx.send(Ctl::Done { id, reuse: false });
            return false;
        }
        let _ = tx.send(Ctl::Held {
            id,
            tail: tail.to_vec(),
            keep_conn,
        });
        true
    }
}

/// What the front server's log shows just before the invalid record that cuts a
/// response ([`FcgiConn::mark_cut`]): nginx logs it as `FastCGI sent in stderr`,
/// Apache as `AH01071: Got error`.
const CUT_NOTE: &[u8] = b"postern: the response is cut short (see postern's log); \
the invalid record that follows keeps it from being taken as complete";

/// How often the task sending a cut's mark looks whether the write lock is free (the
/// send it waits for stops as soon as `halt` is raised: [`crate::server::sink::Stop`]).
const MARK_LOCK_POLL: Duration = Duration::from_millis(10);
const MARK_LOCK_POLL_MAX: Duration = Duration::from_millis(200);

impl FcgiConn {
    /// Request `id`'s response is cut after it started (the app failed, or sent less
    /// than its Content-Length), and the connection closes without END_REQUEST. Over
    /// TCP that close is a reset, which nginx takes as an error; but on a Unix socket
    /// (no reset there) nginx takes the EOF as the end of the response whenever it
    /// does not buffer it (`X-Accel-Buffering: no`, `fastcgi_buffering off`), with
    /// keep-conn or not, and also when it buffers without keep-conn: it ends the
    /// client's chunked body normally and a fastcgi_cache keeps the truncated body.
    /// (Only buffered with keep-conn does it wait for END_REQUEST.) regression: deploy
    /// HIGH: keep-conn was left unmarked, and an unbuffered stream cut looked complete.
    /// So a STDERR line saying why, then a
    /// record header of version 0, which every FastCGI client refuses: nginx then logs
    /// `upstream sent unsupported FastCGI protocol version: 0` and cuts its client off,
    /// as Apache does (`AH01068: Got bogus version 0`). Only when no other request is
    /// in flight: a client that multiplexes still waits for their END_REQUEST, so it
    /// takes the close as an error already, and they fail as a closed connection, not
    /// as a protocol error. With --no-fastcgi-stderr, the record header alone.
    ///
    /// It never waits: it runs on the thread that ran the app (for ASGI the event
    /// loop's). When the mark cannot go at once (the thread's writer is sending, or
    /// the socket has no room: the front server is not reading), the connection and
    /// its mark go to a task on the I/O runtime ([`send_mark`]), which sends the mark
    /// once there is room, at most --read-timeout later, and then closes it;
    /// meanwhile nothing else is written, and a send waiting for room stops and
    /// leaves the rest of its record to go first. Call before the request's end,
    /// whose abort leaves the close to that task.
    /// `locked`: the caller holds the write lock ([`super::Parking::cut_responding`]).
    pub(super) fn mark_cut(self: &Arc<Self>, id: u16, stderr_on: bool, locked: bool) {
        if self.tcp || self.handed_over.load(Ordering::Acquire) || self.is_broken() {
            return;
        }
        let alone = match &*self.owner() {
            Owner::Lane(_) => self.lane_requests.load(Ordering::Acquire) <= 1,
            _ => true,
        };
        if !alone {
            return;
        }
        if !self.parking.can_mark() {
            return;
        }
        let mut out = Vec::with_capacity(CUT_NOTE.len() + 3 * fcgi::HEADER_LEN);
        if stderr_on {
            fcgi::encode_stream(&mut out, fcgi::STDERR, id, CUT_NOTE);
        }
        out.extend_from_slice(&[0; fcgi::HEADER_LEN]);
        let _w = if locked {
            None
        } else {
            let Some(w) = self.write.try_lock() else {
                // The writer is sending (the batch before the cut): the mark follows it.
                self.marking.store(true, Ordering::Release);
                self.halt.raise();
                self.parking.spawn_mark(send_mark(Arc::clone(self), out));
                return;
            };
            Some(w)
        };
        // Not after a send that failed part way (this header would land inside a
        // record), nor after another request's last END_REQUEST.
        if self.torn.load(Ordering::Acquire) || self.last_end.load(Ordering::Acquire) {
            return;
        }
        let flags = rustix::net::SendFlags::NOSIGNAL | rustix::net::SendFlags::DONTWAIT;
        let sent = match rustix::net::send(self.as_fd(), &out, flags) {
            Ok(n) => n,
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => 0,
            // The front server is gone: nobody to mark it for.
            Err(_) => return,
        };
        if sent < out.len() {
            // Set under the write lock: no send may come between the two parts.
            self.marking.store(true, Ordering::Release);
            self.halt.raise();
            self.parking
                .spawn_mark(send_mark(Arc::clone(self), out.split_off(sent)));
        } else {
            // Nothing may follow the mark: not even a batch the thread's writer took
            // just before the cut and has not begun to send (it checks under the lock).
            self.broken.store(true, Ordering::Release);
        }
    }
}

/// Sends `mark` (what is left of a cut's mark) on `conn` once the write lock is free
/// and the socket has room, after the rest of the record a stopped send was in
/// (`unsent`), then closes the connection: see [`FcgiConn::mark_cut`]. Gives up (the
/// close goes unmarked) when a send failed part way, the front server closes, or it
/// has read nothing for --read-timeout (since the cut, or the last send that took
/// some of it).
async fn send_mark(conn: Arc<FcgiConn>, mut mark: Vec<u8>) {
    use rustix::io::Errno;
    use tokio::io::{unix::AsyncFd, Interest};
    // Moved forward by every send that takes some of it: the front server reading
    // nothing for --read-timeout is what ends the wait (as for any send).
    let mut deadline = tokio::time::Instant::now() + conn.write_timeout;
    // A descriptor of its own: the slow lane may still have the connection's
    // registered with the same reactor.
    let afd = conn
        .sock
        .try_clone()
        .map(std::os::fd::OwnedFd::from)
        // SAFETY: the AsyncFd owns the descriptor, which stays open (and the same) for
        // as long as it is registered.
        .ok()
        .and_then(|fd| unsafe { AsyncFd::register_with_interest(fd, Interest::WRITABLE) }.ok());
    let mut out: Option<Vec<u8>> = None;
    let mut poll = MARK_LOCK_POLL;
    let marked = match afd {
        None => false,
        Some(afd) => loop {
            let Ok(Ok(mut room)) = tokio::time::timeout_at(deadline, afd.writable()).await else {
                break false;
            };
            let Some(_w) = conn.write.try_lock() else {
                // A send waits for room: raising `halt` stopped it, it lets go soon.
                if tokio::time::Instant::now() >= deadline {
                    break false;
                }
                drop(room);
                tokio::time::sleep(poll).await;
                poll = (poll * 2).min(MARK_LOCK_POLL_MAX);
                continue;
            };
            // Not after a send that failed part way (this header would land inside a
            // record), nor after another request's last END_REQUEST.
            if conn.torn.load(Ordering::Acquire) || conn.last_end.load(Ordering::Acquire) {
                break false;
            }
            let out = out.get_or_insert_with(|| {
                let mut rest =
                    std::mem::take(&mut *conn.unsent.lock().unwrap_or_else(|e| e.into_inner()));
                rest.append(&mut mark);
                rest
            });
            let flags = rustix::net::SendFlags::NOSIGNAL | rustix::net::SendFlags::DONTWAIT;
            match rustix::net::send(conn.as_fd(), out, flags) {
                Ok(n) if n == out.len() => break true,
                Ok(n) => {
                    out.drain(..n);
                    room.clear_ready();
                    if n > 0 {
                        deadline = tokio::time::Instant::now() + conn.write_timeout;
                    }
                }
                Err(Errno::AGAIN) => room.clear_ready(),
                Err(Errno::INTR) => {}
                Err(_) => break false,
            }
        },
    };
    if marked {
        tracing::debug!(peer = %conn.peer, "a cut FastCGI response was marked once the front server read again");
    } else {
        tracing::debug!(peer = %conn.peer, "a cut FastCGI response could not be marked (the front server read nothing, or left); closing it unmarked");
    }
    let _ = conn.sock.shutdown(std::net::Shutdown::Both);
}

impl super::crash::Answer for FcgiSink {
    /// Called from the crash handler ([`super::crash`]) of the thread serving this
    /// response, as the process dies: the request is answered 502 with its
    /// END_REQUEST when the app wrote nothing of it, its cut is marked when the app's
    /// response had started (a reset over TCP, the note and the invalid record on a
    /// Unix socket). Only what a signal handler may do: atomics, a `try_lock` kept,
    /// a send, a shutdown or a setsockopt. True once it took the connection's write
    /// lock (kept: the process must die).
    fn answer_crash(&self) -> bool {
        let conn = &*self.conn;
        // Its END_REQUEST is out or going (or postern's 504 is): nothing to do.
        if self.flags.done.load(Ordering::Acquire) || conn.handed_over.load(Ordering::Acquire) {
            return false;
        }
        // Another thread in the middle of a record (this response's writer): nothing
        // can follow it safely. Never released: the process is ending.
        let Some(lock) = conn.write.try_lock() else {
            return false;
        };
        std::mem::forget(lock);
        // Under the lock, as `mark_cut` looks: a send that failed part way since (a
        // byte would land inside a record), another request's last END_REQUEST.
        if conn.is_broken()
            || conn.torn.load(Ordering::Acquire)
            || conn.marking.load(Ordering::Acquire)
            || conn.last_end.load(Ordering::Acquire)
        {
            return true;
        }
        let flags = rustix::net::SendFlags::NOSIGNAL | rustix::net::SendFlags::DONTWAIT;
        if self.flags.answer_late() {
            let answer = super::crash::CRASH_ANSWER;
            let (header, pad) = fcgi::stream_header(fcgi::STDOUT, self.id, answer.len());
            let stderr = self.flags.stderr_used.load(Ordering::Acquire);
            let (tail, n) = fcgi::response_tail(self.id, stderr);
            // nginx caches a connection whose END_REQUEST ends what it read, and its
            // next request on it would meet the close of this process (a POST's 502):
            // a record after END_REQUEST makes it close the connection instead, as at
            // a stop (`FcgiConn::send_last`). Any kept connection gets it (the peer
            // cannot be looked up here); it is dying anyway.
            let after: &[u8] = if self.keep_conn {
                &EMPTY_VALUES_RESULT
            } else {
                &[]
            };
            let mut out = [0u8; 256];
            let mut at = 0;
            for part in [&header[..], answer, &[0u8; 8][..pad], &tail[..n], after] {
                out[at..at + part.len()].copy_from_slice(part);
                at += part.len();
            }
            let _ = rustix::net::send(conn.as_fd(), &out[..at], flags);
            let _ = rustix::net::shutdown(conn.as_fd(), rustix::net::Shutdown::Write);
        } else if conn.tcp {
            // The app's response had started: cut, as a stop cuts it.
            let _ = conn.sock.set_linger(Some(Duration::ZERO));
        } else if conn.lane_requests.load(Ordering::Acquire) <= 1 {
            let mut out = [0u8; 256];
            let mut at = 0;
            if self.flags.stderr_on.load(Ordering::Acquire) {
                let (h, pad) = fcgi::stream_header(fcgi::STDERR, self.id, CUT_NOTE.len());
                for part in [&h[..], CUT_NOTE, &[0u8; 8][..pad]] {
                    out[at..at + part.len()].copy_from_slice(part);
                    at += part.len();
                }
            }
            at += fcgi::HEADER_LEN;
            let _ = rustix::net::send(conn.as_fd(), &out[..at], flags);
        }
        true
    }
}

/// An empty FCGI_GET_VALUES_RESULT record (requestId 0), as
/// [`fcgi::encode_empty_values_result`] writes it (a unit test checks).
const EMPTY_VALUES_RESULT: [u8; fcgi::HEADER_LEN] =
    [fcgi::VERSION_1, fcgi::GET_VALUES_RESULT, 0, 0, 0, 0, 0, 0];

impl Sink for FcgiSink {
    fn serving_here(&self) {
        super::crash::serving(self);
    }

    fn ended_whole(&self) -> bool {
        self.ended_out
    }

    // Only its END_REQUEST ends a response: nginx with fastcgi_keep_conn waits for
    // it, and takes a connection closed before it for an upstream error.
    fn whole_at_length(&self) -> bool {
        false
    }

    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.check()?;
        self.under_way();
        if let Some(s) = &self.stream {
            if data.len() < DIRECT {
                let (id, mut last) = (self.id, self.queued_record);
                // Waits only while the queue is full (backpressure).
                s.push_with(data.len() + 16, data.len(), |q| {
                    last = fcgi::append_stream(q, last, fcgi::STDOUT, id, data);
                })?;
                self.queued_record = last;
                return Ok(());
            }
            self.drain()?;
        }
        if let Err(e) = self.conn.send_stdout(self.id, data, &[]) {
            self.written += super::left_before_failure();
            return Err(e);
        }
        self.written += data.len() as u64;
        Ok(())
    }

    /// From the `STREAM_FROM`th write on, a chunk is framed into the thread's writer
    /// (no system call, no GIL release): it leaves with whatever else the app yields
    /// while the writer's previous send is in flight. Before that, nothing: the chunk
    /// goes to `write_all` as it always did.
    ///
    /// A small last write of an inline request (no stream) ends the response right
    /// away when the connection takes the records through END_REQUEST at once: no GIL
    /// round trip for the one send of the usual response.
    fn try_write(&mut self, data: &[u8], last: bool) -> io::Result<usize> {
        self.writes += 1;
        if last && self.stream.is_none() && data.len() < END_HELD_MAX {
            self.check()?;
            return Ok(match self.conn.try_end_inline(self.id, data, &self.flags) {
                TryEnd::NotNow => 0,
                TryEnd::Sent => {
                    self.finished = true;
                    self.written += data.len() as u64;
                    data.len()
                }
                TryEnd::Partial { rest, keep_conn } => {
                    // Ended; `write_last` sends the rest with the GIL released.
                    self.finished = true;
                    self.rest = Some((rest, keep_conn));
                    0
                }
            });
        }
        if last || data.len() >= DIRECT {
            return Ok(0);
        }
        if self.stream.is_none() && self.writes >= STREAM_FROM {
            let conn = Arc::clone(&self.conn);
            self.stream = Stream::start(Arc::new(move |b: &[u8]| {
                conn.write_aside(b).map_err(|(sent, error)| Failed {
                    // The records' content that left, not their framing.
                    counted: fcgi::sent_split(b, sent).0,
                    error,
                })
            }));
        }
        if self.stream.is_none() {
            return Ok(0);
        }
        self.check()?;
        self.under_way();
        let Some(s) = &self.stream else {
            return Ok(0);
        };
        let (id, mut last) = (self.id, self.queued_record);
        let queued = s.try_push_with(data.len() + 16, data.len(), |q| {
            last = fcgi::append_stream(q, last, fcgi::STDOUT, id, data);
        })?;
        self.queued_record = last;
        Ok(if queued { data.len() } else { 0 })
    }

    fn maybe_whole(&mut self, on: bool) {
        self.spare = on;
    }

    fn closed_by(&self) -> Option<crate::wsgi::input::ClosedBy> {
        crate::wsgi::input::ClosedBy::of_cut(self.flags.closed_by.load(Ordering::Acquire))
    }

    fn has_pending(&self) -> bool {
        self.stream.is_some()
    }

    /// The end of a stream: everything queued is sent before END_REQUEST.
    fn flush(&mut self) -> io::Result<()> {
        let r = self.drain();
        self.stream = None;
        r
    }

    /// The last STDOUT records and END_REQUEST leave in one send.
    fn write_last(&mut self, data: &[u8]) -> io::Result<()> {
        if let Some((rest, keep_conn)) = self.rest.take() {
            // `try_write` sent the start of `data`'s records and ended the request.
            if !self.conn.finish_inline_end(Some(&rest), keep_conn) {
                return Err(self.conn.lost());
            }
            self.written += data.len() as u64;
            return Ok(());
        }
        self.check()?;
        self.flush()?;
        if !self.end(Some(data)) {
            self.written += super::left_before_failure();
            return Err(self.conn.lost());
        }
        self.written += data.len() as u64;
        Ok(())
    }

    fn send_file(&mut self, file: &std::fs::File, offset: u64, len: u64) -> io::Result<()> {
        // Records need a header per 64 KiB: read the file and frame it (no sendfile).
        let mut buf = vec![0u8; fcgi::MAX_CONTENT.min(usize::try_from(len).unwrap_or(usize::MAX))];
        let (mut off, end) = (offset, offset + len);
        while off < end {
            let want = usize::try_from(end - off)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            let n = file.read_at(&mut buf[..want], off)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file shrank while it was being sent",
                ));
            }
            self.write_all(&buf[..n])?;
            off += n as u64;
        }
        Ok(())
    }

    fn abandon(&mut self) -> Sent {
        // No cut's mark (an invalid record): a front server reads a close before any
        // header as an error it may try its next upstream for, and this request was
        // never run. (On a connection that also carries a cut running request, its
        // mark is then skipped: only a client multiplexing requests has such.)
        if self.begin_end() {
            self.end(None);
        }
        self.sent()
    }

    fn finish(&mut self, end: End) -> Sent {
        // --max-requests counts the request served as it ends (`end` below, or the
        // `write_last` / `try_write` that ended it): not here, after END_REQUEST, when
        // the connection's next request may have taken the place already.
        if !self.begin_end() {
            return self.sent();
        }
        let cut = matches!(end, End::Incomplete(_));
        if !cut {
            // END_REQUEST follows everything queued.
            let _ = self.drain();
        } else if let Some(s) = &self.stream {
            // Cut: what is queued is dropped before the mark can go.
            s.drop_queued();
        }
        if cut {
            let stderr_on = self.flags.stderr_on.load(Ordering::Acquire);
            self.conn.mark_cut(self.id, stderr_on, false);
        }
        // Ended or cut here: the stop has nothing left to cut.
        self.not_under_way();
        let aborted = self.flags.aborted.load(Ordering::Acquire);
        let answer = match end {
            End::Complete(_) => true,
            // The front server asked to stop: it still expects END_REQUEST.
            End::ClientGone(_) | End::Stalled(_) | End::Closed(..) => {
                aborted && !self.conn.is_broken()
            }
            End::Incomplete(_) => false,
        };
        self.end(answer.then_some(&[][..]));
        if let Some(s) = self.stream.take() {
            // The cut's mark or abort stopped the writer's send in flight: what of it
            // left counts too. regression: read before that send returned, the count
            // left out the whole batch in flight (the access line said 288,044 bytes;
            // the client had 445,864).
            self.written += s.settle(SETTLE_MAX);
        }
        // Only now: the writer's share is in (the access line of a stream the client
        // left once said its head and first two chunks only).
        self.sent()
    }

    fn head_style(&self) -> HeadStyle {
        HeadStyle::Cgi
    }

    /// Without keep-conn the connection carries only this request: the front server
    /// closing it is the client gone (a keep-conn one is read by the server layer,
    /// which tells through `notify_gone`).
    fn peer_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::{AsFd, AsRawFd};
        (!self.keep_conn).then(|| self.conn.as_fd().as_raw_fd())
    }

    fn write_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::{AsFd, AsRawFd};
        Some(self.conn.as_fd().as_raw_fd())
    }

    fn gone_before_start(&self) -> bool {
        self.flags.aborted.load(Ordering::Acquire)
            || crate::server::sink::hung_up(&self.conn.as_fd())
    }

    fn notify_gone(&mut self, notify: Box<dyn FnOnce() + Send>) -> bool {
        self.flags.on_abort(notify);
        true
    }

    fn cutter(&self) -> Option<Box<dyn FnOnce() + Send + Sync>> {
        // Weak: the connection closes when its last request lets go of it, not when
        // whoever keeps this does.
        let conn = Arc::downgrade(&self.conn);
        let (id, flags) = (self.id, Arc::clone(&self.flags));
        // Asked only of a response the app has not completed, whose one write waits:
        // it cannot be ending meanwhile, so no wait for the write lock.
        Some(Box::new(move || {
            if let Some(conn) = conn.upgrade() {
                conn.cut(id, &flags, Duration::ZERO);
            }
        }))
    }

    /// Once `write_last` has sent END_REQUEST, `finish` only returns the figures: no
    /// reason to release the GIL for it.
    fn finish_is_quick(&self) -> bool {
        self.finished
    }
}

impl Drop for FcgiSink {
    fn drop(&mut self) {
        super::crash::done(self);
        self.not_under_way();
        if let Some(t) = self.in_flight.take() {
            self.conn.parking.landed(t);
        }
        if self.rest.take().is_some() {
            // Never: `write_last` follows a partial `try_write`. The records are cut:
            // no END_REQUEST.
            tracing::error!(
                "internal error: a FastCGI response was dropped half sent; connection aborted"
            );
            self.conn.finish_inline_end(None, false);
        }
        if !self.finished && !self.flags.taken_late() {
            // Cut as the process leaves ([`FcgiConn::cut`]): a write of it that came back
            // after the event loop had closed (ASGI) has nobody left to finish it.
            if self.flags.cut.load(Ordering::Acquire) {
                // Its access line is lost (the event loop closed before its write came
                // back): said, not silently.
                tracing::warn!(peer = %self.conn.peer, fcgi_id = self.id, bytes = self.written, "a FastCGI response cut off as the process leaves ended without its access line (its write came back after the event loop had closed)");
            } else {
                tracing::error!(
                    "internal error: a FastCGI response was dropped unfinished; connection aborted"
                );
            }
            self.end(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::OwnedFd;

    /// A parking (its own epoll), and a connected pair: the front server's end, and
    /// postern's (non-blocking) for an [`FcgiConn`].
    fn front_and_socket() -> (
        Arc<super::super::Parking>,
        std::os::unix::net::UnixStream,
        socket2::Socket,
    ) {
        let ep = rustix::event::epoll::create(rustix::event::epoll::CreateFlags::CLOEXEC).unwrap();
        let parking = super::super::Parking::new(Arc::new(ep));
        let (front, ours) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        (parking, front, socket2::Socket::from(OwnedFd::from(ours)))
    }

    #[test]
    fn the_crash_answers_record_is_the_empty_values_result() {
        let mut v = Vec::new();
        fcgi::encode_empty_values_result(&mut v);
        assert_eq!(v, EMPTY_VALUES_RESULT);
    }

    /// A kept connection on `sock` and its request 1's sink (with its flags and id).
    fn kept_request(
        sock: socket2::Socket,
        parking: &Arc<super::super::Parking>,
    ) -> (
        Arc<FcgiConn>,
        Arc<ReqFlags>,
        crate::logging::RequestId,
        FcgiSink,
    ) {
        let conn = FcgiConn::new(
            sock,
            "test".into(),
            false,
            0,
            Duration::from_secs(5),
            parking,
            None,
        );
        let flags = Arc::new(ReqFlags::default());
        let id = crate::logging::RequestId::generate();
        let sink = FcgiSink::new(
            Arc::clone(&conn),
            1,
            true,
            Arc::clone(&flags),
            Instant::now(),
            &id,
        );
        (conn, flags, id, sink)
    }

    // regression (review 341 LOW): a request answered 504 at --timeout whose worker
    // was spared (the request ended during the dump) got the access line "client went
    // away status=200" and counted as a 2xx: its app's writes failed after the 504.
    #[test]
    fn a_request_answered_late_ends_as_the_504_the_front_server_got() {
        let (parking, mut front, sock) = front_and_socket();
        let (conn, flags, id, mut sink) = kept_request(sock, &parking);
        assert!(flags.answer_late());
        assert!(conn.answer_late(1, true, &flags));
        // The app's response, after the 504: refused, as for a client gone.
        assert!(sink.write_all(b"Status: 200 OK\r\n\r\nok").is_err());
        let sent = sink.finish(End::ClientGone(200));
        assert!(sent.late);
        assert!(matches!(
            End::ClientGone(200).as_answered(&sent),
            End::Complete(504)
        ));
        // On the wire: the 504 and one END_REQUEST, nothing of the app's.
        front
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = front.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        assert!(text.contains("Status: 504"), "{text:?}");
        assert!(!text.contains("ok"), "{text:?}");
        // Not answered late: as the app ended it.
        let flags = Arc::new(ReqFlags::default());
        let mut sink = FcgiSink::new(Arc::clone(&conn), 2, true, flags, Instant::now(), &id);
        let sent = sink.finish(End::Complete(200));
        assert!(!sent.late);
        assert!(matches!(
            End::Complete(200).as_answered(&sent),
            End::Complete(200)
        ));
    }

    // regression (probe 352): a response the process cut as it left (a stop now, a
    // --timeout kill) whose app then failed to write ended as a client gone.
    #[test]
    fn a_response_cut_as_the_process_leaves_ends_incomplete() {
        let (parking, _front, sock) = front_and_socket();
        let (_conn, flags, _id, mut sink) = kept_request(sock, &parking);
        flags.cut.store(true, Ordering::Release);
        let sent = sink.finish(End::ClientGone(200));
        assert!(sent.cut);
        assert!(matches!(
            End::ClientGone(200).as_answered(&sent),
            End::Incomplete(200)
        ));
        assert!(matches!(
            End::Complete(200).as_answered(&sent),
            End::Complete(200)
        ));
    }

    // regression (review 345 LOW): a 504 answered at --timeout whose write failed (the
    // front server had closed) was still logged and counted as a 504 nobody got.
    #[test]
    fn a_late_answer_that_could_not_be_written_ends_as_the_client_gone() {
        let (parking, front, sock) = front_and_socket();
        let (conn, flags, _id, mut sink) = kept_request(sock, &parking);
        drop(front);
        assert!(flags.answer_late());
        assert!(!conn.answer_late(1, true, &flags));
        flags.late_answer_lost();
        // The app's response still may not write: postern took the answer.
        assert!(sink.write_all(b"Status: 200 OK\r\n\r\nok").is_err());
        let sent = sink.finish(End::ClientGone(200));
        assert!(!sent.late);
        assert!(matches!(
            End::ClientGone(200).as_answered(&sent),
            End::ClientGone(200)
        ));
    }

    // regression (review LOW on f558471): the mark's task gave up --read-timeout after
    // the cut even while the front server was taking its bytes; README says the close
    // goes unmarked only when the front server reads nothing for --read-timeout.
    #[test]
    fn a_mark_the_front_server_takes_slowly_still_goes_whole() {
        let (parking, mut front, sock) = front_and_socket();
        // A small send buffer: the mark below goes in several sends.
        sock.set_send_buffer_size(4096).unwrap();
        let mut filled = 0;
        while let Ok(n) = rustix::net::send(&sock, &[1u8; 4096], rustix::net::SendFlags::DONTWAIT) {
            filled += n;
        }
        let timeout = Duration::from_millis(300);
        let conn = FcgiConn::new(sock, "test".into(), false, 0, timeout, &parking, None);
        let mark: Vec<u8> = (0..48 * 1024).map(|i| (i % 251) as u8).collect();
        // Read what is there every 150 ms: never idle for `timeout`, but with room for
        // a few KiB at a time the whole takes several times `timeout`.
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                std::thread::sleep(Duration::from_millis(150));
                match front.read(&mut buf) {
                    Ok(0) | Err(_) => return got,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let started = Instant::now();
        rt.block_on(send_mark(conn, mark.clone()));
        let got = reader.join().unwrap();
        assert_eq!(
            got.len(),
            filled + mark.len(),
            "the mark did not go whole (after {:?})",
            started.elapsed()
        );
        assert!(
            started.elapsed() > 2 * timeout,
            "the test's reader was too quick to tell: {:?}",
            started.elapsed()
        );
        assert!(got[filled..] == mark[..]);
    }
}
