//! FastCGI connections (PROTOCOLS.md §2). Unlike uwsgi and SCGI, a FastCGI connection
//! can outlive its request (`FCGI_KEEP_CONN`, nginx `fastcgi_keep_conn on`) and carry
//! several requests at once (multiplexing), so the connection is shared:
//!
//! - [`FcgiConn`]: the socket, written by every request on it under one lock (a record
//!   is never interleaved with another), read by one owner at a time.
//! - Fast path (Python threads, in [`super::acceptor`]): an idle connection waits in the
//!   Python threads' epoll ([`Parking`]); when it becomes readable and one read holds one
//!   whole simple request (BEGIN, PARAMS, STDIN, nothing else: what nginx sends in one
//!   write), that thread serves it inline and parks the connection again after
//!   END_REQUEST. No thread hand-off, no accept, no close per request.
//! - Slow lane ([`serve`], a tokio task): everything else: partial records, streamed
//!   STDIN (the app reads the body as it arrives), multiplexed ids, ABORT_REQUEST,
//!   management records, bad input. When such a connection is idle again it goes back
//!   to the fast path.
//! - [`FcgiSink`]: a request's response as STDOUT records, then END_REQUEST; a copy of
//!   `wsgi.errors` as STDERR records.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rustc_hash::FxHashMap;
use rustix::event::epoll;
use rustix::io::Errno;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;

pub use super::lane::FcgiSettings;
use super::lane::{Limits, SlowLane};
use super::sink::send_all;
use super::span::request_span;
use super::wake::Wake;
use crate::codec::fastcgi::{assemble, Assembled, Refused};
use crate::codec::Head;
use crate::proto::fastcgi::{self as fcgi, ConnParser, Event, ProtocolStatus};
use crate::proto::response::{plain_response, HeadStyle};
use crate::wsgi::{Body, BodyStream, End, ErrorsForward, ListenerInfo, Request, Sent, Sink};

/// A request the fast path serves inline, as the connection's other users see it.
enum Inline {
    Idle,
    Serving {
        id: u16,
        keep_conn: bool,
        flags: Arc<ReqFlags>,
        /// The slow lane took the connection over while the request runs.
        stolen: Option<mpsc::UnboundedSender<Ctl>>,
    },
    /// The request ended while another thread held the connection's busy event: that
    /// thread parks the connection (`true`) or closes it.
    Finished {
        park: bool,
    },
}

/// What the slow lane inherits from an inline request it takes over.
pub struct Seed {
    id: u16,
    keep_conn: bool,
    flags: Arc<ReqFlags>,
    tx: mpsc::UnboundedSender<Ctl>,
    rx: mpsc::UnboundedReceiver<Ctl>,
}

/// Requests in flight on one connection before BEGIN_REQUEST is answered
/// FCGI_OVERLOADED (beyond the Python threads, they wait in the queue).
const MAX_REQS_PER_CONN: usize = 64;

/// STDIN chunks buffered for an app that has not read them yet, per request.
const STDIN_QUEUE: usize = 16;

/// One FastCGI connection, shared by its reader and the requests answering on it.
pub struct FcgiConn {
    sock: socket2::Socket,
    pub peer: Arc<str>,
    pub tcp: bool,
    /// Index of the listener it came from.
    pub listener: usize,
    /// Names it in the Python threads' epoll ([`Wake::Parked`], [`Wake::Busy`]).
    key: u64,
    /// In the Python threads' epoll interest list.
    registered: AtomicBool,
    write: Mutex<()>,
    write_timeout: Duration,
    /// A write failed or the connection was aborted: nothing more goes out.
    broken: AtomicBool,
    /// Requests served on it (a fresh connection gets `--head-timeout`).
    served: AtomicU64,
    inline: Mutex<Inline>,
}

static NEXT_KEY: AtomicU64 = AtomicU64::new(0);

impl FcgiConn {
    pub fn new(
        sock: socket2::Socket,
        peer: Arc<str>,
        tcp: bool,
        listener: usize,
        write_timeout: Duration,
    ) -> Arc<FcgiConn> {
        Arc::new(FcgiConn {
            sock,
            peer,
            tcp,
            listener,
            key: NEXT_KEY.fetch_add(1, Ordering::Relaxed),
            registered: AtomicBool::new(false),
            write: Mutex::new(()),
            write_timeout,
            broken: AtomicBool::new(false),
            served: AtomicU64::new(0),
            inline: Mutex::new(Inline::Idle),
        })
    }

    /// Writes whole records; records of concurrent requests never interleave.
    pub fn write(&self, data: &[u8]) -> io::Result<()> {
        if self.broken.load(Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the FastCGI connection is closed",
            ));
        }
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let r = send_all(&self.sock, data, self.write_timeout);
        if r.is_err() {
            self.broken.store(true, Ordering::Release);
        }
        r
    }

    /// Writes `data` unless `done` is set by then (checked under the write lock, so a
    /// late `wsgi.errors` line never follows END_REQUEST).
    fn write_unless(&self, data: &[u8], done: &AtomicBool) -> io::Result<()> {
        if self.broken.load(Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the FastCGI connection is closed",
            ));
        }
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        if done.load(Ordering::Acquire) {
            return Ok(());
        }
        let r = send_all(&self.sock, data, self.write_timeout);
        if r.is_err() {
            self.broken.store(true, Ordering::Release);
        }
        r
    }

    /// Ends the connection now, without END_REQUEST for what is in flight: the front
    /// server sees the response as failed, not complete (a reset over TCP).
    pub fn abort(&self) {
        self.broken.store(true, Ordering::Release);
        if self.tcp {
            // SO_LINGER 0: the last close sends a reset (a shutdown would send a FIN
            // first, which reads as a normal end).
            let _ = self.sock.set_linger(Some(Duration::ZERO));
        } else {
            let _ = self.sock.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Reads what is there without waiting.
    pub fn recv(&self, buf: &mut [u8]) -> Result<usize, Errno> {
        rustix::net::recv(self.sock.as_fd(), buf, rustix::net::RecvFlags::empty()).map(|(n, _)| n)
    }

    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }
}

/// Idle FastCGI connections waiting in the Python threads' epoll (EPOLLONESHOT: the
/// thread that is woken owns the connection until it parks it again).
pub struct Parking {
    epoll: Arc<OwnedFd>,
    conns: Mutex<FxHashMap<Wake, Arc<FcgiConn>>>,
    open: AtomicBool,
}

impl Parking {
    pub fn new(epoll: Arc<OwnedFd>) -> Arc<Parking> {
        Arc::new(Parking {
            epoll,
            conns: Mutex::new(FxHashMap::default()),
            open: AtomicBool::new(true),
        })
    }

    /// Waits for the connection's next request in the fast path; closes it instead when
    /// postern is stopping.
    pub fn park(&self, conn: Arc<FcgiConn>) {
        if !self.open.load(Ordering::SeqCst) || conn.is_broken() {
            self.forget(&conn);
            return;
        }
        self.watch(conn, false);
    }

    /// Waits for input on a connection: its next request (idle), or whatever arrives
    /// while its request is served inline (`busy`).
    fn watch(&self, conn: Arc<FcgiConn>, busy: bool) {
        let wake = if busy {
            Wake::Busy(conn.key)
        } else {
            Wake::Parked(conn.key)
        };
        let flags = epoll::EventFlags::IN | epoll::EventFlags::RDHUP | epoll::EventFlags::ONESHOT;
        let data = epoll::EventData::new_u64(wake.encode());
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if !busy && !self.open.load(Ordering::SeqCst) {
            // Stopping (checked again under the lock `close_all` takes).
            drop(conns);
            self.forget(&conn);
            return;
        }
        let r = if conn.registered.swap(true, Ordering::SeqCst) {
            epoll::modify(&*self.epoll, &conn.sock, data, flags)
        } else {
            epoll::add(&*self.epoll, &conn.sock, data, flags)
        };
        match r {
            Ok(()) => {
                conns.insert(wake, conn);
            }
            Err(e) => {
                conn.registered.store(false, Ordering::SeqCst);
                tracing::error!(peer = %conn.peer, error = %e, "cannot wait on a FastCGI connection; closing it");
            }
        }
    }

    /// The parked connection whose event fired.
    pub fn take(&self, wake: Wake) -> Option<Arc<FcgiConn>> {
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&wake)
    }

    /// While a request is served inline: input on the connection wakes a Python thread,
    /// which hands the connection to the slow lane ([`steal`]).
    pub fn watch_busy(&self, conn: Arc<FcgiConn>) {
        self.watch(conn, true);
    }

    /// Takes the connection out of the epoll for good (the slow lane owns it now).
    pub fn forget(&self, conn: &FcgiConn) {
        if conn.registered.swap(false, Ordering::SeqCst) {
            let _ = epoll::delete(&*self.epoll, &conn.sock);
        }
    }

    /// At stop: idle connections are closed, busy ones close after their response.
    pub fn close_all(&self) -> usize {
        self.open.store(false, Ordering::SeqCst);
        let conns: Vec<_> = {
            let mut map = self.conns.lock().unwrap_or_else(|e| e.into_inner());
            // Busy ones (a request running inline) stay: their request finishes, then
            // `park` closes them.
            let idle: Vec<Wake> = map
                .keys()
                .copied()
                .filter(|w| matches!(w, Wake::Parked(_)))
                .collect();
            idle.into_iter().filter_map(|t| map.remove(&t)).collect()
        };
        for c in &conns {
            self.forget(c);
            let _ = c.sock.shutdown(std::net::Shutdown::Both);
        }
        conns.len()
    }
}

/// Looks at the first bytes of a read: a whole simple request becomes a [`Request`].
pub fn admit_whole(
    conn: &Arc<FcgiConn>,
    buf: &[u8],
    info: &ListenerInfo,
    limits: &Limits,
    settings: &FcgiSettings,
    parking: &Arc<Parking>,
    started: Instant,
) -> Option<Request> {
    let max_stdin = usize::try_from(limits.spool_threshold).unwrap_or(usize::MAX);
    let whole = fcgi::whole_request(buf, limits.buffer_size, max_stdin)?;
    // Anything unusual (a body that does not match its length, one over --max-body)
    // is for the slow lane, which answers it properly.
    let assembled = assemble(whole.params, Some(whole.stdin), limits.max_body).ok()?;
    if assembled.excess > 0 {
        return None;
    }
    let head = assembled.head;
    let body = match assembled.body {
        Some(b) if !b.is_empty() => Body::Memory(b),
        _ => Body::Empty,
    };
    let (span, request_id) = request_span(&head, &conn.peer);
    let flags = Arc::new(ReqFlags::default());
    let errors_forward = settings
        .stderr
        .then(|| stderr_forward(conn, whole.id, &flags));
    *conn.inline.lock().unwrap_or_else(|e| e.into_inner()) = Inline::Serving {
        id: whole.id,
        keep_conn: whole.keep_conn,
        flags: Arc::clone(&flags),
        stolen: None,
    };
    if whole.keep_conn {
        // nginx and Apache send nothing more until END_REQUEST; anything that does come
        // (a multiplexed request, an abort, a close) is the slow lane's to read.
        parking.watch_busy(Arc::clone(conn));
    }
    Some(Request {
        head,
        body,
        listener: info.clone(),
        sink: Box::new(FcgiSink {
            conn: Arc::clone(conn),
            id: whole.id,
            keep_conn: whole.keep_conn,
            flags,
            owner: Owner::Fast(Arc::clone(parking)),
            written: 0,
            started,
            finished: false,
        }),
        span,
        request_id,
        errors_forward,
    })
}

/// A connection whose inline request is running became readable: hand it to the slow
/// lane, which adopts the running request (or, if it has just ended, park or close it).
pub fn steal(
    conn: Arc<FcgiConn>,
    parking: &Arc<Parking>,
    lane: &SlowLane,
    info: ListenerInfo,
    settings: FcgiSettings,
) {
    let mut st = conn.inline.lock().unwrap_or_else(|e| e.into_inner());
    match std::mem::replace(&mut *st, Inline::Idle) {
        Inline::Serving {
            id,
            keep_conn,
            flags,
            stolen: None,
        } => {
            let (tx, rx) = mpsc::unbounded_channel();
            *st = Inline::Serving {
                id,
                keep_conn,
                flags: Arc::clone(&flags),
                stolen: Some(tx.clone()),
            };
            drop(st);
            parking.forget(&conn);
            let seed = Seed {
                id,
                keep_conn,
                flags,
                tx,
                rx,
            };
            let fut = serve(
                conn,
                BytesMut::new(),
                info,
                lane.clone(),
                Arc::clone(parking),
                settings,
                Instant::now(),
                Some(seed),
            );
            lane.spawn(fut);
        }
        Inline::Finished { park } => {
            drop(st);
            if park {
                parking.park(conn);
            } else {
                parking.forget(&conn);
                conn.abort_soft();
            }
        }
        other => *st = other,
    }
}

/// State one request shares between its sink, its `wsgi.errors` and the reader.
#[derive(Default)]
struct ReqFlags {
    /// FCGI_ABORT_REQUEST arrived: stop, answer END_REQUEST.
    aborted: AtomicBool,
    /// END_REQUEST is written: `wsgi.errors` no longer goes to the front server.
    done: AtomicBool,
    /// STDERR records were sent (an empty one ends the stream).
    stderr_used: AtomicBool,
}

fn stderr_forward(conn: &Arc<FcgiConn>, id: u16, flags: &Arc<ReqFlags>) -> ErrorsForward {
    // Weak: an app may keep `wsgi.errors` long after the request; that must not keep
    // the connection open.
    let conn = Arc::downgrade(conn);
    let flags = Arc::clone(flags);
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

/// Who reads the connection once the request is over.
enum Owner {
    /// The fast path: park the connection again (keep-conn) or close it.
    Fast(Arc<Parking>),
    /// The connection's slow-lane task.
    Slow(mpsc::UnboundedSender<Ctl>),
}

/// From a request's sink to its connection's task.
enum Ctl {
    /// END_REQUEST written (`reuse`), or the connection was given up.
    Done { id: u16, reuse: bool },
}

/// One FastCGI request's response: STDOUT records, then END_REQUEST.
pub struct FcgiSink {
    conn: Arc<FcgiConn>,
    id: u16,
    keep_conn: bool,
    flags: Arc<ReqFlags>,
    owner: Owner,
    written: u64,
    started: Instant,
    finished: bool,
}

impl FcgiSink {
    fn check(&self) -> io::Result<()> {
        if self.flags.aborted.load(Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the front server aborted the request (FCGI_ABORT_REQUEST)",
            ));
        }
        Ok(())
    }

    /// The end of a request on the slow lane: tell the connection's task (it closes the
    /// connection unless `reuse` and FCGI_KEEP_CONN).
    fn release(&mut self, reuse: bool) {
        self.finished = true;
        self.flags.done.store(true, Ordering::Release);
        match &self.owner {
            Owner::Slow(tx) => {
                let _ = tx.send(Ctl::Done {
                    id: self.id,
                    reuse: reuse && self.keep_conn,
                });
            }
            Owner::Fast(_) => self.finish_fast(false),
        }
    }

    /// The tail of a complete response: [empty STDERR], empty STDOUT, END_REQUEST.
    fn tail(&self) -> Vec<u8> {
        let mut tail = Vec::with_capacity(40);
        if self.flags.stderr_used.load(Ordering::Acquire) {
            fcgi::encode_record(&mut tail, fcgi::STDERR, self.id, &[]);
        }
        fcgi::encode_record(&mut tail, fcgi::STDOUT, self.id, &[]);
        fcgi::encode_end_request(&mut tail, self.id, 0, ProtocolStatus::RequestComplete);
        tail
    }

    /// The end of a request served inline by the fast path. Who reads the connection
    /// next is settled before END_REQUEST goes out: the front server may send its next
    /// request the moment it has it.
    fn finish_fast(&mut self, answer: bool) {
        let Owner::Fast(parking) = &self.owner else {
            return;
        };
        let parking = Arc::clone(parking);
        self.finished = true;
        self.flags.done.store(true, Ordering::Release);
        let conn = Arc::clone(&self.conn);
        let mut handed_off = false;
        let stolen = {
            let mut st = conn.inline.lock().unwrap_or_else(|e| e.into_inner());
            match std::mem::replace(&mut *st, Inline::Idle) {
                Inline::Serving {
                    stolen: Some(tx), ..
                } => Some(tx),
                _ => {
                    if self.keep_conn && parking.take(Wake::Busy(conn.key)).is_none() {
                        // A thread holds the busy event: it parks or closes the
                        // connection once this lock is released.
                        *st = Inline::Finished {
                            park: answer && !conn.is_broken(),
                        };
                        handed_off = true;
                    }
                    None
                }
            }
        };
        if !answer {
            // No END_REQUEST: the front server must not take a cut response as whole.
            conn.abort();
            if let Some(tx) = stolen {
                let _ = tx.send(Ctl::Done {
                    id: self.id,
                    reuse: false,
                });
            } else if !handed_off {
                parking.forget(&conn);
            }
            return;
        }
        let tail = self.tail();
        if let Some(tx) = stolen {
            // The slow lane reads the connection now: free the id first (keep-conn).
            if self.keep_conn {
                let _ = tx.send(Ctl::Done {
                    id: self.id,
                    reuse: true,
                });
            }
            let ok = conn.write(&tail).is_ok();
            if !ok {
                conn.abort();
            }
            if !self.keep_conn {
                let _ = tx.send(Ctl::Done {
                    id: self.id,
                    reuse: false,
                });
            }
            return;
        }
        let ok = conn.write(&tail).is_ok();
        if !ok {
            tracing::debug!("the front server closed the connection before END_REQUEST");
            conn.abort();
        }
        if handed_off {
            return;
        }
        conn.served.fetch_add(1, Ordering::Relaxed);
        if ok && self.keep_conn {
            parking.park(conn);
        } else {
            parking.forget(&conn);
            if ok {
                // FCGI_KEEP_CONN unset: close after END_REQUEST (a FIN).
                conn.abort_soft();
            }
        }
    }
}

impl Sink for FcgiSink {
    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.check()?;
        let mut out = Vec::with_capacity(data.len() + 16 * (data.len() / fcgi::MAX_CONTENT + 1));
        fcgi::encode_stream(&mut out, fcgi::STDOUT, self.id, data);
        self.conn.write(&out)?;
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

    fn finish(&mut self, end: End) -> Sent {
        let sent = Sent {
            bytes: self.written,
            started: self.started,
        };
        let aborted = self.flags.aborted.load(Ordering::Acquire);
        let answer = match end {
            End::Complete(_) => true,
            // The front server asked to stop: it still expects END_REQUEST.
            End::ClientGone(_) => aborted && !self.conn.is_broken(),
            End::Incomplete(_) => false,
        };
        if let Owner::Fast(_) = self.owner {
            self.finish_fast(answer);
            return sent;
        }
        if !answer {
            // No END_REQUEST: the front server must not take a cut response as whole.
            self.conn.abort();
            self.release(false);
            return sent;
        }
        let tail = self.tail();
        self.flags.done.store(true, Ordering::Release);
        if let (Owner::Slow(tx), true) = (&self.owner, self.keep_conn) {
            // The reader must know the id is free before the front server can reuse
            // it: it may send the next BEGIN_REQUEST the moment END_REQUEST arrives.
            self.finished = true;
            let _ = tx.send(Ctl::Done {
                id: self.id,
                reuse: true,
            });
            if self.conn.write(&tail).is_err() {
                tracing::debug!("the front server closed the connection before END_REQUEST");
                self.conn.abort();
            }
            return sent;
        }
        let ok = self.conn.write(&tail).is_ok();
        if !ok {
            tracing::debug!("the front server closed the connection before END_REQUEST");
        }
        self.release(ok);
        sent
    }

    fn head_style(&self) -> HeadStyle {
        HeadStyle::Cgi
    }
}

impl Drop for FcgiSink {
    fn drop(&mut self) {
        if !self.finished {
            tracing::error!(
                "internal error: a FastCGI response was dropped unfinished; connection aborted"
            );
            self.conn.abort();
            self.release(false);
        }
    }
}

/// What the slow lane feeds a streamed body.
enum Chunk {
    Data(Bytes),
    End,
}

/// `wsgi.input` of a request whose STDIN is still arriving.
struct StdinStream {
    rx: mpsc::Receiver<Chunk>,
    ended: bool,
}

impl BodyStream for StdinStream {
    fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        if self.ended {
            return Ok(None);
        }
        match self.rx.blocking_recv() {
            Some(Chunk::Data(b)) => Ok(Some(b)),
            Some(Chunk::End) => {
                self.ended = true;
                Ok(None)
            }
            None => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the front server aborted the request or closed the connection",
            )),
        }
    }
}

/// The file descriptor as tokio sees it (the connection stays shared).
struct ConnFd(Arc<FcgiConn>);

impl AsRawFd for ConnFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.sock.as_raw_fd()
    }
}

/// The slow lane's view of one request on the connection.
struct Slot {
    flags: Arc<ReqFlags>,
    stdin: Option<mpsc::Sender<Chunk>>,
    content_length: Option<u64>,
    got: u64,
    warned_excess: bool,
}

/// Serves a FastCGI connection on the slow lane until it closes, or hands it back to
/// the fast path once idle. `buf` holds bytes already read; `seed` is the request the
/// fast path was serving inline when the connection was handed over.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    conn: Arc<FcgiConn>,
    mut buf: BytesMut,
    info: ListenerInfo,
    lane: SlowLane,
    parking: Arc<Parking>,
    settings: FcgiSettings,
    started: Instant,
    seed: Option<Seed>,
) {
    let limits = lane.limits.clone();
    let peer = conn.peer.clone();
    // SAFETY: the Arc keeps the socket (and so its fd) open for as long as the AsyncFd
    // holds it, and `as_raw_fd` always returns that same fd.
    let registered =
        unsafe { AsyncFd::register_with_interest(ConnFd(Arc::clone(&conn)), Interest::READABLE) };
    let afd = match registered {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(%peer, error = %e, "cannot register a FastCGI connection");
            return;
        }
    };
    let (ctl_tx, mut ctl_rx, adopted) = match seed {
        Some(s) => (s.tx, s.rx, Some((s.id, s.keep_conn, s.flags))),
        None => {
            let (tx, rx) = mpsc::unbounded_channel::<Ctl>();
            (tx, rx, None)
        }
    };
    let mut parser = ConnParser::new(fcgi::ConnLimits {
        max_params: limits.buffer_size,
        max_reqs: MAX_REQS_PER_CONN,
        values: fcgi::Values {
            max_conns: settings.max_reqs.max(1),
            max_reqs: settings.max_reqs.max(1),
            mpxs_conns: true,
        },
    });
    let mut slots: FxHashMap<u16, Slot> = FxHashMap::default();
    if let Some((id, keep_conn, flags)) = adopted {
        // The request the fast path is serving inline: ours to watch from now on.
        parser.adopt(id, keep_conn);
        slots.insert(
            id,
            Slot {
                flags,
                stdin: None,
                content_length: None,
                got: 0,
                warned_excess: false,
            },
        );
        conn.served.fetch_add(1, Ordering::Relaxed);
    }
    let mut events: Vec<Event> = Vec::new();
    // Events waiting because a request's STDIN queue is full (the app is not reading).
    let mut backlog: VecDeque<Event> = VecDeque::new();
    let mut last_read = Instant::now();
    let mut closing = false;
    // FCGI_KEEP_CONN unset and the response complete: close once the front server has
    // sent the rest of its request (nginx writes the whole body before it reads the
    // response; closing earlier would fail its write: a 502).
    let mut drain = false;
    let fresh = conn.served.load(Ordering::Relaxed) == 0;

    'conn: loop {
        // Requests that ended free their ids before the next bytes are decoded.
        while let Ok(Ctl::Done { id, reuse }) = ctl_rx.try_recv() {
            if !done(id, reuse, &mut parser, &mut slots, &mut backlog, &conn) {
                drain = !conn.is_broken();
                break 'conn;
            }
        }
        // Decode what is buffered, then act on it in order.
        if backlog.is_empty() && !buf.is_empty() {
            if let Err(e) = parser.feed(&mut buf, &mut events) {
                tracing::warn!(%peer, error = %e, "bad FastCGI input; closing the connection");
                break 'conn;
            }
            backlog.extend(events.drain(..));
        }
        while let Some(ev) = backlog.pop_front() {
            match handle_event(
                ev,
                &conn,
                &mut parser,
                &mut slots,
                &mut backlog,
                &info,
                &lane,
                &settings,
                &ctl_tx,
            ) {
                Step::Go => {}
                Step::Close => break 'conn,
                Step::CloseDrain => {
                    drain = true;
                    break 'conn;
                }
                Step::Wait(ev) => {
                    backlog.push_front(ev);
                    break;
                }
            }
        }
        if conn.is_broken() {
            break 'conn;
        }
        if parser.close_after_replies() && backlog.is_empty() {
            tracing::debug!(%peer, "refused request without FCGI_KEEP_CONN: closing");
            drain = true;
            break 'conn;
        }
        let idle = parser.active() == 0 && buf.is_empty() && backlog.is_empty();
        if idle && closing {
            break 'conn;
        }
        if idle && !fresh_only(fresh, &conn) && !lane.idle_close.is_cancelled() {
            // Idle again: the next request is the fast path's.
            drop(afd);
            parking.park(conn);
            return;
        }
        let waiting_body = slots.values().any(|s| s.stdin.is_some());
        let deadline = if idle {
            (fresh_only(fresh, &conn)).then(|| started + limits.head_timeout)
        } else if !backlog.is_empty() {
            // Waiting for the app to read its body, not for the peer.
            None
        } else if !buf.is_empty() || waiting_body || parser.awaiting_params() {
            Some(last_read + limits.read_timeout)
        } else {
            None
        };
        let blocked = backlog.front().and_then(|ev| match ev {
            Event::Stdin { id, .. } | Event::StdinEnd { id } => {
                slots.get(id).and_then(|s| s.stdin.clone())
            }
            _ => None,
        });
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        let room = async {
            match &blocked {
                Some(tx) => tx.reserve().await.map(drop).is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            ctl = ctl_rx.recv() => {
                let Some(Ctl::Done { id, reuse }) = ctl else { break 'conn };
                if !done(id, reuse, &mut parser, &mut slots, &mut backlog, &conn) {
                    drain = !conn.is_broken();
                    break 'conn;
                }
            }
            // Room in the blocked request's STDIN queue (or its reader is gone): the
            // loop retries the blocked event first.
            _ = room => last_read = Instant::now(),
            r = read_some(&afd, &mut buf), if backlog.is_empty() => {
                match r {
                    Ok(0) => {
                        if parser.active() > 0 {
                            tracing::info!(%peer, active = parser.active(), "the front server closed the FastCGI connection with requests in flight");
                        } else if !buf.is_empty() {
                            tracing::warn!(%peer, got = buf.len(), "the front server closed the FastCGI connection in the middle of a record");
                        }
                        break 'conn;
                    }
                    Ok(_) => last_read = Instant::now(),
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "reading a FastCGI connection failed");
                        break 'conn;
                    }
                }
            }
            _ = sleep => {
                if idle {
                    tracing::warn!(%peer, "no FastCGI request within {:?} (--head-timeout); closing", limits.head_timeout);
                } else {
                    tracing::warn!(%peer, "the front server sent nothing for {:?} (--read-timeout) in the middle of a request; closing", limits.read_timeout);
                }
                break 'conn;
            }
            _ = lane.idle_close.cancelled(), if parser.active() == 0 && !closing => {
                closing = true;
                if buf.is_empty() {
                    tracing::debug!(%peer, "closing an idle FastCGI connection: stopping");
                    break 'conn;
                }
            }
        }
    }
    if drain {
        let _ = conn.sock.shutdown(std::net::Shutdown::Write);
        let deadline = Instant::now() + limits.read_timeout;
        let mut total = 0usize;
        while total < 1 << 30 {
            buf.clear();
            match tokio::time::timeout_at(deadline.into(), read_some(&afd, &mut buf)).await {
                Ok(Ok(n)) if n > 0 => total += n,
                _ => break,
            }
        }
    }
    // Readers of bodies still streaming see the cut; sinks still writing see a closed
    // connection; the socket closes once they are done with it.
    for (_, s) in slots.drain() {
        s.flags.aborted.store(true, Ordering::Release);
    }
    parking.forget(&conn);
    conn.abort_soft();
}

/// A request's sink is done with it: its id is free. False when the connection ends.
fn done(
    id: u16,
    reuse: bool,
    parser: &mut ConnParser,
    slots: &mut FxHashMap<u16, Slot>,
    backlog: &mut VecDeque<Event>,
    conn: &FcgiConn,
) -> bool {
    parser.finished(id);
    slots.remove(&id);
    backlog.retain(
        |ev| !matches!(ev, Event::Stdin { id: i, .. } | Event::StdinEnd { id: i } if *i == id),
    );
    conn.served.fetch_add(1, Ordering::Relaxed);
    reuse
}

/// A connection that has never carried a whole request stays with the slow lane until
/// it has (it is still under `--head-timeout`).
fn fresh_only(fresh: bool, conn: &FcgiConn) -> bool {
    fresh && conn.served.load(Ordering::Relaxed) == 0
}

impl FcgiConn {
    /// Closes the connection for reading and writing (a FIN, not a reset), unless it
    /// was aborted: then the last close resets it.
    fn abort_soft(&self) {
        if !self.broken.swap(true, Ordering::AcqRel) || !self.tcp {
            let _ = self.sock.shutdown(std::net::Shutdown::Both);
        }
    }
}

async fn read_some(afd: &AsyncFd<ConnFd>, buf: &mut BytesMut) -> io::Result<usize> {
    if buf.capacity() - buf.len() < 16 * 1024 {
        buf.reserve(64 * 1024);
    }
    loop {
        let mut guard = afd.readable().await?;
        let r = guard.try_io(|inner| {
            let spare = buf.spare_capacity_mut();
            let fd = inner.get_ref().0.sock.as_fd();
            match rustix::net::recv(fd, spare, rustix::net::RecvFlags::empty()) {
                Ok(((init, _), _)) => Ok(init.len()),
                Err(e) => Err(io::Error::from(e)),
            }
        });
        match r {
            Ok(Ok(n)) => {
                // SAFETY: recv initialised the first `n` spare bytes.
                unsafe { buf.set_len(buf.len() + n) };
                return Ok(n);
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
}

/// What to do after one event.
enum Step {
    Go,
    Close,
    /// Answered without FCGI_KEEP_CONN: close once the front server has sent the rest.
    CloseDrain,
    /// The request's STDIN queue is full: retry this event when there is room.
    Wait(Event),
}

#[allow(clippy::too_many_arguments)]
fn handle_event(
    ev: Event,
    conn: &Arc<FcgiConn>,
    parser: &mut ConnParser,
    slots: &mut FxHashMap<u16, Slot>,
    backlog: &mut VecDeque<Event>,
    info: &ListenerInfo,
    lane: &SlowLane,
    settings: &FcgiSettings,
    ctl_tx: &mpsc::UnboundedSender<Ctl>,
) -> Step {
    let peer = &conn.peer;
    match ev {
        Event::Reply(bytes) => {
            if blocking_write(conn, &bytes).is_err() {
                return Step::Close;
            }
            Step::Go
        }
        Event::Params {
            id,
            keep_conn,
            params,
        } => {
            // The whole body already here (the usual case): hand it over in one piece.
            let stdin = take_whole_stdin(backlog, id);
            let started = Instant::now();
            let assembled = match assemble(params.clone(), stdin, lane.limits.max_body) {
                Ok(a) => a,
                Err(e @ Refused::Params(_)) => {
                    tracing::warn!(%peer, error = %e, "bad FastCGI params; closing the connection");
                    lane.refused(crate::codec::Protocol::FastCgi, None);
                    return Step::Close;
                }
                Err(refused) => {
                    // The head as far as it goes, for the span and the access line.
                    let head = head_for_log(params);
                    let (span, request_id) = request_span(&head, peer);
                    let asker = Asker {
                        conn,
                        lane,
                        id,
                        keep_conn,
                        request_id: &request_id,
                        started,
                    };
                    span.in_scope(|| match &refused {
                        Refused::TooLarge {
                            len,
                            max,
                            announced: true,
                        } => tracing::warn!(
                            content_length = len,
                            max_body = max,
                            "request body over --max-body; answered 413"
                        ),
                        Refused::TooLarge { len, max, .. } => tracing::warn!(
                            got = len,
                            max_body = max,
                            "request body over --max-body; answered 413"
                        ),
                        Refused::Truncated { got, expected } => tracing::warn!(got, content_length = expected, "STDIN ended before CONTENT_LENGTH bytes; the front server lost the client; request dropped"),
                        e => tracing::warn!(error = %e, "answered 400"),
                    });
                    let status = refused.status().unwrap_or(BAD_REQUEST);
                    return answer_now(&asker, parser, &head, status);
                }
            };
            let Assembled {
                head,
                body,
                announced: content_length,
                excess,
            } = assembled;
            let (span, request_id) = request_span(&head, peer);
            if excess > 0 {
                span.in_scope(|| {
                    tracing::warn!(
                        got = head.content_length + excess,
                        content_length = head.content_length,
                        "STDIN longer than CONTENT_LENGTH; the excess is ignored"
                    )
                });
            }
            let flags = Arc::new(ReqFlags::default());
            let mut slot = Slot {
                flags: Arc::clone(&flags),
                stdin: None,
                content_length,
                got: 0,
                warned_excess: false,
            };
            let body = match body {
                Some(b) if b.is_empty() => Body::Empty,
                Some(b) => Body::Memory(b),
                None => {
                    let (tx, rx) = mpsc::channel(STDIN_QUEUE);
                    slot.stdin = Some(tx);
                    Body::Stream(Box::new(StdinStream { rx, ended: false }))
                }
            };
            slots.insert(id, slot);
            let errors_forward = settings.stderr.then(|| stderr_forward(conn, id, &flags));
            lane.queue.push(Request {
                head,
                body,
                listener: info.clone(),
                sink: Box::new(FcgiSink {
                    conn: Arc::clone(conn),
                    id,
                    keep_conn,
                    flags,
                    owner: Owner::Slow(ctl_tx.clone()),
                    written: 0,
                    started: Instant::now(),
                    finished: false,
                }),
                span,
                request_id,
                errors_forward,
            });
            Step::Go
        }
        Event::Stdin { id, data } => {
            let max_body = lane.limits.max_body;
            let Some(slot) = slots.get_mut(&id) else {
                return Step::Go;
            };
            let Some(tx) = &slot.stdin else {
                return Step::Go;
            };
            let mut data = data;
            if let Some(cl) = slot.content_length {
                let left = cl.saturating_sub(slot.got);
                if data.len() as u64 > left {
                    if !slot.warned_excess {
                        slot.warned_excess = true;
                        tracing::warn!(%peer, fcgi_id = id, content_length = cl, "STDIN longer than CONTENT_LENGTH; the excess is ignored");
                    }
                    data.truncate(left as usize);
                }
            }
            if data.is_empty() {
                return Step::Go;
            }
            if data.len() < 4096 {
                // A small record would otherwise pin its whole read buffer while queued.
                data = Bytes::copy_from_slice(&data);
            }
            let n = data.len() as u64;
            if max_body.is_some_and(|m| slot.got + n > m) {
                // Only a body without CONTENT_LENGTH gets here (a longer announced one
                // was answered 413 before the app ran): cut it, the app's read fails.
                tracing::warn!(%peer, fcgi_id = id, max_body = max_body.unwrap_or(0), "request body (no CONTENT_LENGTH) over --max-body; wsgi.input is cut");
                slot.stdin = None;
                return Step::Go;
            }
            match tx.try_send(Chunk::Data(data)) {
                Ok(()) => {
                    slot.got += n;
                    Step::Go
                }
                Err(mpsc::error::TrySendError::Full(Chunk::Data(d))) => {
                    Step::Wait(Event::Stdin { id, data: d })
                }
                Err(_) => {
                    // The request is over (or its input was dropped): the rest is dropped.
                    slot.stdin = None;
                    Step::Go
                }
            }
        }
        Event::StdinEnd { id } => {
            let Some(slot) = slots.get_mut(&id) else {
                return Step::Go;
            };
            let Some(tx) = &slot.stdin else {
                return Step::Go;
            };
            if slot.content_length.is_some_and(|cl| slot.got < cl) {
                tracing::warn!(%peer, fcgi_id = id, got = slot.got, "STDIN ended before CONTENT_LENGTH bytes; the app sees a cut body");
                slot.stdin = None;
                return Step::Go;
            }
            match tx.try_send(Chunk::End) {
                Ok(()) => {
                    slot.stdin = None;
                    Step::Go
                }
                Err(mpsc::error::TrySendError::Full(_)) => Step::Wait(Event::StdinEnd { id }),
                Err(_) => {
                    slot.stdin = None;
                    Step::Go
                }
            }
        }
        Event::Abort { id } => {
            if let Some(slot) = slots.get_mut(&id) {
                tracing::info!(%peer, fcgi_id = id, "FCGI_ABORT_REQUEST: stopping the request");
                slot.flags.aborted.store(true, Ordering::Release);
                slot.stdin = None;
            }
            Step::Go
        }
    }
}

/// Takes request `id`'s whole STDIN out of `backlog` when its end has arrived (the
/// other events stay, in order); `None` while it is still coming.
fn take_whole_stdin(backlog: &mut VecDeque<Event>, id: u16) -> Option<Bytes> {
    let mut total = 0usize;
    let mut end = None;
    for (i, e) in backlog.iter().enumerate() {
        match e {
            Event::Stdin { id: i2, data } if *i2 == id => total += data.len(),
            Event::StdinEnd { id: i2 } if *i2 == id => {
                end = Some(i);
                break;
            }
            _ => {}
        }
    }
    let end = end?;
    let mut data = BytesMut::with_capacity(total);
    let mut kept = VecDeque::with_capacity(backlog.len());
    for (i, e) in backlog.drain(..).enumerate() {
        match e {
            Event::Stdin { id: i2, data: d } if i2 == id && i < end => data.extend_from_slice(&d),
            Event::StdinEnd { id: i2 } if i2 == id && i == end => {}
            other => kept.push_back(other),
        }
    }
    *backlog = kept;
    Some(data.freeze())
}

/// The head of a refused request as far as it parses (for its span and access line).
fn head_for_log(params: Bytes) -> Head {
    let vars = fcgi::parse_pairs(&params).unwrap_or_default();
    Head {
        buf: params,
        vars,
        modifier30: false,
        content_length: 0,
    }
}

/// A write from the connection's task: it may wait (a peer that does not read, a
/// Python thread holding the write lock), so the tokio worker is handed over meanwhile.
fn blocking_write(conn: &FcgiConn, data: &[u8]) -> io::Result<()> {
    tokio::task::block_in_place(|| conn.write(data))
}

/// Who asked for a request that postern answers itself (`answer_now`).
struct Asker<'a> {
    conn: &'a FcgiConn,
    lane: &'a SlowLane,
    id: u16,
    keep_conn: bool,
    request_id: &'a crate::logging::RequestId,
    started: Instant,
}

const BAD_REQUEST: (u16, &str) = (400, "Bad Request");

/// Answers a request from the server itself (400, 413), counts it as refused, logs its
/// access line, and forgets it.
fn answer_now(
    asker: &Asker<'_>,
    parser: &mut ConnParser,
    request: &Head,
    (code, reason): (u16, &str),
) -> Step {
    let Asker {
        conn,
        lane,
        id,
        keep_conn,
        request_id,
        started,
    } = *asker;
    lane.refused(crate::codec::Protocol::FastCgi, Some(code));
    let head = plain_response(HeadStyle::Cgi, code, reason, &format!("{reason}\n"));
    let mut out = Vec::new();
    fcgi::encode_stream(&mut out, fcgi::STDOUT, id, &head);
    fcgi::encode_record(&mut out, fcgi::STDOUT, id, &[]);
    fcgi::encode_end_request(&mut out, id, 0, ProtocolStatus::RequestComplete);
    // The rest of its STDIN is ignored: the id is free from now on.
    parser.finished(id);
    let sent = blocking_write(conn, &out).ok().map(|()| head.len() as u64);
    super::span::refused_access(
        request,
        request_id,
        crate::codec::Protocol::FastCgi,
        code,
        sent,
        started,
    );
    if sent.is_none() {
        return Step::Close;
    }
    if !keep_conn {
        return Step::CloseDrain;
    }
    Step::Go
}
