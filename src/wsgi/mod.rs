//! The ONLY module that imports pyo3: the embedded interpreter, the app, and everything
//! PEP 3333 asks of a server. The server layer hands a [`Request`] to the [`pool`] and
//! writes the reply through the request's [`Sink`] from the Python thread, with the GIL
//! released; no `Py` object ever crosses to a tokio thread.
//!
//! - [`interpreter`]: PyConfig start-up, `--venv`, importing `module:callable`.
//! - [`pool`]: the Python threads that run requests (`--threads`).
//! - [`environ`]: CGI vars → the environ dict (latin-1 native strings).
//! - [`input`], [`errors`]: `wsgi.input` and `wsgi.errors`.
//! - [`response`]: `start_response`, `write()`, iterating the result, `close()`.
//! - [`file_wrapper`]: `wsgi.file_wrapper`, sent with sendfile(2) where it can be.
//! - [`inflight`]: the requests the threads run, named by a stop that cuts them off.

pub mod environ;
pub mod errors;
pub mod file_wrapper;
pub mod inflight;
pub mod input;
pub mod interpreter;
pub mod pool;
#[cfg(test)]
mod props;
pub mod response;
pub mod stacks;

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use pyo3::prelude::*;

use crate::codec::Head;

/// Errors of the Python layer; each message says what the user can do about it.
#[derive(Debug, thiserror::Error)]
pub enum WsgiError {
    #[error("could not start Python: {reason}")]
    Init { reason: String },
    #[error("--venv {}: {reason}", venv.display())]
    Venv { venv: PathBuf, reason: String },
    #[error("could not import the app {app:?} ({advice}):\n{traceback}")]
    Import {
        app: String,
        /// Where to look: the app's own code when it raised, else how it is found.
        advice: String,
        traceback: String,
    },
    #[error("the app {app:?} has no attribute '{tried}'{hint}; {advice}")]
    NoCallable {
        app: String,
        tried: String,
        /// `: did you mean 'x'?` when the module has a callable of a close name.
        hint: String,
        /// What to write instead: name the callable, or make the app a factory returns.
        advice: String,
    },
    #[error("'{name}' in {app:?} is a {kind}, not a WSGI callable")]
    NotCallable {
        app: String,
        name: String,
        kind: String,
    },
}

/// The request body: complete before the app runs (uwsgi, SCGI: nginx buffers bodies
/// by default, and a slow client must never hold a Python thread), or streamed as it
/// arrives (FastCGI STDIN records).
pub enum Body {
    Empty,
    Memory(Bytes),
    /// Spooled to an unlinked temporary file (over `--body-spool-threshold`).
    File(std::fs::File, u64),
    /// Arrives while the app runs.
    Stream(Box<dyn BodyStream>),
}

/// A body that arrives while the app runs (FastCGI STDIN).
pub trait BodyStream: Send + Sync {
    /// Blocks (the GIL released) until the next chunk; `Ok(None)` at the end of the
    /// body; an error when it was cut short (front server gone, abort, timeout).
    fn next_chunk(&mut self) -> std::io::Result<Option<Bytes>>;
    /// [`BodyStream::poll_chunk`] works: an event loop can take the body as it
    /// arrives, with no thread blocked in `next_chunk`.
    fn pollable(&self) -> bool {
        false
    }
    /// The event loop's `next_chunk` (ASGI), which never blocks: `Ready` with what
    /// `next_chunk` would return, or `Pending`, and then `wake` is called once (on any
    /// thread; it must not block nor take the GIL) when there is more to take. Only
    /// when [`BodyStream::pollable`].
    fn poll_chunk(
        &mut self,
        _wake: &Arc<dyn Fn() + Send + Sync>,
    ) -> std::task::Poll<std::io::Result<Option<Bytes>>> {
        std::task::Poll::Ready(Err(std::io::Error::other(
            "this request body can only be read with next_chunk",
        )))
    }
    /// Nobody waits any more for what a `Pending` [`BodyStream::poll_chunk`] promised
    /// (the app cancelled its `receive()`, or the chunks it took end the wait): the
    /// stream stops counting its reader as waiting, and need not call `wake`.
    fn forget_wake(&mut self) {}
}

/// The error kind of a body read cut because the body passed `--max-body` (a body
/// without CONTENT_LENGTH, streamed): the server answers 413 if it still can.
pub const BODY_TOO_LARGE: std::io::ErrorKind = std::io::ErrorKind::FileTooLarge;

/// Where `wsgi.errors` lines go besides postern's log (FastCGI: FCGI_STDERR records,
/// which nginx writes to its error log).
pub type ErrorsForward = Box<dyn Fn(&[u8]) + Send + Sync>;

/// Facts about the listener a request came in on.
#[derive(Debug, Clone)]
pub struct ListenerInfo {
    /// The protocol spoken on this listener.
    pub protocol: crate::codec::Protocol,
    /// Defaults for SERVER_NAME / SERVER_PORT when the front server sent none.
    pub server_name: Arc<[u8]>,
    pub server_port: Arc<[u8]>,
}

/// Where a response goes: the front server's connection, written from the Python
/// thread with the GIL released. Implemented by the server layer.
pub trait Sink: Send + Sync {
    /// Writes all of `data`; an error means the peer is gone (or stopped reading).
    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()>;
    /// Writes all of `data`, the last bytes of a response that is complete with them:
    /// `finish(End::Complete)` follows unless this fails, so a sink may end the
    /// response in the same write (FastCGI: END_REQUEST in the same send).
    fn write_last(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.write_all(data)
    }
    /// Writes what the connection takes at once, without waiting, and returns how many
    /// bytes that was; `last` as for [`Sink::write_last`]. Called with the GIL held, so
    /// it must never block (a non-blocking send): the caller passes what is left to
    /// `write_all`/`write_last` with the GIL released. The default takes nothing.
    fn try_write(&mut self, _data: &[u8], _last: bool) -> std::io::Result<usize> {
        Ok(0)
    }
    /// [`Sink::try_write`] of `head` then `data` in one system call (a response's
    /// head and a large first chunk, neither copied behind the other): the bytes of
    /// the two the connection took at once. Only for a response's first write, and
    /// only where `last` changes nothing (a sink that ends a response in its last
    /// write takes none here). The default takes nothing: the caller writes the two.
    fn try_write_pair(&mut self, _head: &[u8], _data: &[u8]) -> std::io::Result<usize> {
        Ok(0)
    }
    /// `finish` never blocks (it only closes a socket), so it may run with the GIL
    /// held instead of costing a release and a re-acquisition.
    fn finish_is_quick(&self) -> bool {
        false
    }
    /// A response sent up to its Content-Length (or one with no body) is whole for the
    /// front server even if this process then leaves without ending it (uwsgi, SCGI:
    /// the front server has every byte it expects). FastCGI: false, only END_REQUEST
    /// ends a response ([`State::mark_answered`](response) is not set there).
    fn whole_at_length(&self) -> bool {
        true
    }
    /// After [`Sink::finish`] with [`End::Complete`]: the response's end went out (a
    /// clean close; FastCGI's END_REQUEST written, not failed nor held until the
    /// request's input ends). The default: whatever `finish` did ended it.
    fn ended_whole(&self) -> bool {
        true
    }
    /// The sink still holds bytes it has taken (a writer thread's queue).
    /// While `on`, writes may be the whole response though whether more follows is not
    /// known (an iterator's first chunk): they do not arm what keeps a response under
    /// way from looking complete if the process leaves mid-way (SO_LINGER 0 over TCP,
    /// FastCGI's list of the responses the stop cuts); the writes after do. The
    /// default does nothing.
    fn maybe_whole(&mut self, _on: bool) {}
    /// The response goes on past what is written now though no write says so (an
    /// ASGI body with `more_body` True, written with [`Sink::try_write_vectored`],
    /// which has no `last`): arms what a write that is not the last arms, until
    /// `finish(End::Complete)`. The default does nothing.
    fn under_way(&mut self) {}
    /// postern closed the request's connection itself while its body came (FastCGI):
    /// why. The default: never.
    fn closed_by(&self) -> Option<input::ClosedBy> {
        None
    }
    fn has_pending(&self) -> bool {
        false
    }
    /// Waits until everything taken is sent; an error means the peer is gone. Called
    /// with the GIL released, when `has_pending`, before the response's end is decided.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    /// Sends `len` bytes of a regular file from `offset` (sendfile(2)).
    fn send_file(&mut self, file: &std::fs::File, offset: u64, len: u64) -> std::io::Result<()>;
    /// Ends the response: a clean close when complete, an abort (reset) when not, or
    /// nothing more when the peer is already gone. Returns what was sent, for the
    /// metrics and the access line.
    fn finish(&mut self, end: End) -> Sent;
    /// Ends a request that never started: the worker leaves with it still queued (a
    /// stop that cuts the running ones off). Its connection closes without an answer,
    /// as a dropped sink's would, so that the front server answers 502 or tries its
    /// next upstream; the caller has named it. Returns what was sent (nothing).
    fn abandon(&mut self) -> Sent {
        self.finish(End::Incomplete(0))
    }
    /// How the response head is written: an HTTP status line (uwsgi) or a CGI
    /// `Status:` header (FastCGI, SCGI).
    fn head_style(&self) -> crate::proto::response::HeadStyle {
        crate::proto::response::HeadStyle::Http
    }
    /// The connection's socket, when it carries only this request (uwsgi, SCGI): the
    /// event loop (ASGI) watches it for the front server closing it (EOF or reset
    /// while the app waits). `None`: the sink has no socket of its own.
    fn peer_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    /// The app of this request runs on this thread from now on (until the sink
    /// finishes): a crash of the thread meanwhile answers the request if the protocol
    /// needs it (FastCGI: a kept connection's front server would send it again to
    /// another worker). The default does nothing.
    fn serving_here(&self) {}
    /// Whether the front server is gone from this request before the app runs: reset
    /// or closed the connection both ways (what a poll tells without reading), or
    /// aborted the request (FastCGI). A half-close is not gone: the request is
    /// answered. Asked only of a request that waited in the ready queue (one system
    /// call). The default cannot tell.
    fn gone_before_start(&self) -> bool {
        false
    }
    /// Asks to be told once the front server has gone away from this request, for a
    /// sink whose connection the event loop cannot watch itself (FastCGI: the server
    /// layer reads it). `notify` runs once, on any thread: it must not block nor take
    /// the GIL. False when the sink cannot tell.
    fn notify_gone(&mut self, _notify: Box<dyn FnOnce() + Send>) -> bool {
        false
    }
    /// Cuts this response off from another thread while a write that waits for room
    /// holds the sink (an ASGI task cancelled by a stop, its write on an executor
    /// thread), as the process's leaving would cut it (FastCGI: the mark, then the
    /// connection aborted), so that the write returns at once. `None`: the sink's
    /// writes never wait on a thread for long enough to matter (the event loop drives
    /// them: uwsgi, SCGI).
    fn cutter(&self) -> Option<Box<dyn FnOnce() + Send + Sync>> {
        None
    }
    /// The socket this sink writes to, to poll for room (ASGI: a small last write the
    /// socket has room for goes out from the loop thread, not a thread hop). `None`:
    /// unknown.
    fn write_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    /// Writes driven by an event loop (ASGI), with no thread per wait: the socket to
    /// wait on for room (the loop's `add_writer`) and how long one wait may last before
    /// the front server counts as gone. From this call on, the response goes out only
    /// through [`Sink::try_write_vectored`] and [`Sink::try_send_file`] (never a writer
    /// thread). `None`: the connection is not this response's alone (multiplexed
    /// FastCGI), so a write that waits runs on a thread.
    fn loop_writes(&mut self) -> Option<(std::os::fd::RawFd, std::time::Duration)> {
        None
    }
    /// One non-blocking vectored send of `bufs`, in order: the bytes the socket took
    /// (0: none now). Only after [`Sink::loop_writes`] said yes.
    fn try_write_vectored(&mut self, _bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        Ok(0)
    }
    /// One non-blocking sendfile(2) of up to `len` bytes from `offset`: the bytes the
    /// socket took (0: none now). Only after [`Sink::loop_writes`] said yes.
    fn try_send_file(
        &mut self,
        _file: &std::fs::File,
        _offset: u64,
        _len: u64,
    ) -> std::io::Result<usize> {
        Ok(0)
    }
}

/// How a response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Status sent, body complete.
    Complete(u16),
    /// The body is incomplete (app error after the headers, short Content-Length):
    /// abort the connection so the front server does not take it as whole.
    Incomplete(u16),
    /// The peer went away while the response was being written.
    ClientGone(u16),
    /// The front server read nothing of the response for `--read-timeout`: postern
    /// cut it off and closed the connection.
    Stalled(u16),
    /// postern closed the connection while the request's body still came on it, for
    /// the reason given: the app's read of the body failed, nobody is left to answer.
    Closed(u16, input::ClosedBy),
}

impl End {
    /// The status and the ending, as the access line tells them.
    pub fn for_log(self) -> (u16, crate::logging::Ending) {
        use crate::logging::Ending;
        match self {
            End::Complete(s) => (s, Ending::Complete),
            End::Incomplete(s) => (s, Ending::Incomplete),
            End::ClientGone(s) => (s, Ending::ClientGone),
            End::Stalled(s) => (s, Ending::Stalled),
            End::Closed(s, by) => (s, by.ending()),
        }
    }
}

/// What a finished response put on the wire (the sink's own count).
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    /// Response bytes written: head and body, without protocol framing.
    pub bytes: u64,
    /// When the sink's request started (accepted, or its first byte read).
    pub started: std::time::Instant,
    /// postern answered `504 Gateway Timeout` for it at `--timeout` (FastCGI, its
    /// response not started), so nothing the app wrote went out.
    pub late: bool,
    /// postern cut the response as its process left (a stop now, `--timeout`: FastCGI),
    /// so the app's writes failed as if the client had gone.
    pub cut: bool,
    /// postern closed the request's connection itself while its body came (FastCGI),
    /// for this reason: a response that then failed is no client gone.
    pub closed_by: Option<input::ClosedBy>,
}

impl End {
    /// How the request ended as its front server saw it: a 504 that postern answered
    /// at `--timeout` ([`Sent::late`]) for a worker spared at the end of the dump,
    /// whatever the app did after it (its writes failed as if the client had gone).
    /// A response postern cut as its process left ([`Sent::cut`]) is incomplete, not a
    /// client gone. regression (probe 352): an ASGI stream cut by the master's stop
    /// now logged `client went away before the response was complete`.
    pub fn as_answered(self, sent: &Sent) -> End {
        match self {
            _ if sent.late => End::Complete(504),
            End::ClientGone(c) | End::Stalled(c) | End::Closed(c, _) if sent.cut => {
                End::Incomplete(c)
            }
            // An app that was not reading its body when postern closed the connection
            // (review 377: it said the client went away).
            End::ClientGone(c) => sent
                .closed_by
                .map_or(End::ClientGone(c), |by| End::Closed(c, by)),
            e => e,
        }
    }
}

/// Why the app failed a request (it answered 500, or the connection was aborted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppError {
    /// The app (or its iterable, or its `close()`) raised.
    Exception,
    /// The app broke the WSGI contract (returned None, yielded str, no start_response).
    Contract,
    /// An ASGI app returned without sending `http.response.start`, or before its last
    /// `http.response.body`.
    AsgiContract,
}

/// One request as the Python thread finished it.
#[derive(Debug, Clone, Copy)]
pub struct Served {
    pub end: End,
    pub sent: Sent,
    pub app_error: Option<AppError>,
}

/// Where requests come from: the pool's threads call `next` with the GIL released.
pub trait Source: Send + Sync {
    /// Blocks until a complete request is ready; `None` when the server is stopping
    /// and nothing is left to serve.
    fn next(&self) -> Option<Request>;
    /// The event loop's look (ASGI): a request that is ready, without waiting. The
    /// default sends every caller to the blocking `next`.
    fn try_next(&self) -> TryNext {
        TryNext::Draining
    }
    /// [`Source::try_next`] when a listener that [`Source::watch_in_loop`] put in the
    /// loop's epoll is readable: its listen queue is looked at first.
    fn try_accept(&self) -> TryNext {
        self.try_next()
    }
    /// Readable when `try_next` may have something (the event loop watches it).
    fn wake_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }
    /// The event loop's look just filled its last place (`--max-concurrency`): its
    /// next look comes when a task ends.
    fn at_cap(&self) {}
    /// The event loop was woken while at `--max-concurrency` (something waits in
    /// the source): once per such stretch, before it stops watching `wake_fd`.
    fn waits_at_cap(&self) {}
    /// A task that ended freed a place after [`Source::at_cap`].
    fn below_cap(&self) {}
    /// While draining (the stop): the event loop has `n` free places besides the one
    /// its hand-off waits for a request with, so that the stop takes from the shared
    /// listen queues only what this worker can start (siblings take the rest).
    fn spare_places(&self, _n: usize) {}
    /// The event loop's own epoll, which watches `wake_fd`: the source may put what
    /// wakes the loop there directly (the listeners, exclusive: one worker's loop woken
    /// per connection), each event with `mark`'s number as its data: a descriptor the
    /// loop watches too (never readable itself), whose callback calls
    /// [`Source::try_accept`]. Whether it did.
    fn watch_in_loop(&self, _loop_epoll: std::os::fd::RawFd, _mark: std::os::fd::RawFd) -> bool {
        false
    }
    /// The event loop watches `wake_fd` (again), or is about to stop watching it: what
    /// [`Source::watch_in_loop`] put in the loop's epoll follows (before the loop's
    /// `remove_reader`, after its `add_reader`).
    fn loop_watches(&self, _on: bool) {}
}

/// What [`Source::try_next`] found.
// Not boxed: the request is built where it is returned, on every request's path (a
// box would be an allocation per request).
#[allow(clippy::large_enum_variant)]
pub enum TryNext {
    Ready(Request),
    /// Nothing ready: look again when the wake fd is readable, or after this long at
    /// the latest (a waiting connection's deadline).
    Empty(Option<std::time::Duration>),
    /// The server stopped accepting: what is left comes from the blocking `next`.
    Draining,
}

/// One complete request: head, body, and the connection to answer on.
pub struct Request {
    pub head: Head,
    pub body: Body,
    pub listener: ListenerInfo,
    pub sink: Box<dyn Sink>,
    /// The request's span: every line logged about it is inside (its first field is
    /// `request_id`).
    pub span: crate::logging::RequestSpan,
    /// The front server's `X-Request-Id` or one postern made (`postern.request_id`).
    pub request_id: crate::logging::RequestId,
    /// A copy of `wsgi.errors` output for the front server, if the protocol has one.
    pub errors_forward: Option<ErrorsForward>,
    /// It waited in the ready queue for a thread (the slow lane assembled it): its
    /// front server may have gone meanwhile ([`Sink::gone_before_start`]).
    pub queued: bool,
}

impl Request {
    /// What names a request that waited and will not run (its head, id and protocol),
    /// for [`Monitor::waiting_named`].
    pub fn named(&self) -> (Head, crate::logging::RequestId, crate::codec::Protocol) {
        (self.head.clone(), self.request_id, self.listener.protocol)
    }
}

/// The imported WSGI callable, opaque outside this module.
pub struct App(pub(crate) Py<PyAny>);

impl App {
    /// Another reference to the same callable (a preloaded app, for each worker).
    pub fn clone_ref(&self) -> App {
        Python::attach(|py| App(self.0.clone_ref(py)))
    }
}

/// Runs the app's `atexit` handlers at shutdown (the interpreter is not finalised:
/// daemon threads of the app may still hold it).
pub fn run_atexit() {
    Python::attach(|py| {
        if let Err(e) = py
            .import("atexit")
            .and_then(|m| m.call_method0("_run_exitfuncs"))
        {
            tracing::warn!(detail = %traceback(py, &e), "an atexit handler failed");
        }
    });
}

/// Flushes Python's `sys.stdout` and `sys.stderr` (what the app printed), before a
/// process leaves without finalising the interpreter.
pub fn flush_std_streams() {
    Python::attach(|py| {
        for name in ["stdout", "stderr"] {
            if let Ok(stream) = py.import("sys").and_then(|sys| sys.getattr(name)) {
                let _ = stream.call_method0("flush");
            }
        }
    });
}

/// The busy watch's wake-up by a request's begin (`server::fastcgi::relieve`, a thread
/// of its own never attached to Python): the begin that takes a worker's last free
/// Python thread calls [`BusyWake::notify`] only while `look` is set, which that
/// thread sets when a request came on a parked kept FastCGI connection while no Python
/// thread waited for one, and clears once none waits unread; and while it sleeps with
/// no tick (no request ended over its last calm tick), so that its safety net's clock
/// starts when every thread is busy. On the usual path that is one load, no wake-up.
/// An ASGI worker's loop does the same when a request takes its last
/// `--max-concurrency` place ([`Monitor::at_cap`]): nothing below the cap.
#[derive(Default)]
pub struct BusyWake {
    /// The eventfd the watch's thread sleeps on beside the watch (set as it starts).
    ctl: std::sync::OnceLock<std::os::fd::OwnedFd>,
    /// SeqCst, as the busy count it pairs with: the watch's thread stores it, then
    /// reads the count; a begin adds to the count, then reads it. One of them sees the
    /// other.
    pub look: std::sync::atomic::AtomicBool,
}

impl BusyWake {
    /// Wakes the watch's thread (a write to its eventfd; nothing before it started).
    pub fn notify(&self) {
        if let Some(fd) = self.ctl.get() {
            let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
        }
    }

    /// The eventfd [`BusyWake::notify`] writes, from now on (the first one given).
    pub fn listen(&self, fd: std::os::fd::OwnedFd) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.ctl.get_or_init(|| fd).as_fd()
    }
}

/// Watches requests as they run (the scoreboard: `--timeout`, recycling, metrics).
/// Called on the Python thread; `end` with the GIL released. Must not block.
pub trait Monitor: Send + Sync {
    /// Python thread `thread` starts serving `head` (request id `id`, the one its
    /// access line and environ carry), which came in over `protocol`.
    fn begin(
        &self,
        thread: usize,
        head: &Head,
        id: &crate::logging::RequestId,
        protocol: crate::codec::Protocol,
    );
    /// Python thread `thread` has finished its request; `None` when serving it
    /// panicked (the connection was aborted). `counted`: a stop cut it off meanwhile
    /// and counted it ([`Monitor::cut`]).
    fn end(&self, thread: usize, served: Option<&Served>, counted: bool);
    /// Python thread `thread` has sent its request's response whole (`status`, `bytes`
    /// of head and body), before the app's `close()` and the request's end: a crash
    /// of the worker before [`Monitor::end`] counts it as served, not as cut off.
    fn answered(&self, _thread: usize, _status: u16, _bytes: u64) {}
    /// A stop cut off the request Python thread `thread` runs (the worker exits
    /// without it), ended as `served` says: counted as its `end` would have, from the
    /// I/O thread, while its thread cannot reach its line (`inflight::cut_off`).
    fn cut(&self, _thread: usize, _protocol: crate::codec::Protocol, _served: &Served) {}
    /// The process stopped accepting: it only finishes what is in flight now.
    fn stopping(&self) {}
    /// During the stop: `n` requests were accepted whole and wait for a Python thread
    /// (published every 50 ms), so that a master that kills this worker can say how
    /// many it cut off besides those running.
    fn waiting(&self, _n: usize) {}
    /// Of those, the `n` this worker named itself as its stop cut them off (each with
    /// its access line): a master that kills it names and counts only the rest.
    fn waiting_told(&self, _n: usize) {}
    /// A stopping worker cut requests off that its lines do not show, so that the
    /// master counts them: `tasks`, an ASGI loop's cancelled tasks, each named with its
    /// access line (their lines clear as they end); `reading`, requests whose body was
    /// still being read (on no line).
    fn tasks_cut(&self, _tasks: usize, _reading: usize) {}
    /// With [`Monitor::waiting`]: the first of those requests (their head, id and
    /// protocol; a few at most), so that a master that kills this worker can name them.
    fn waiting_named(&self, _first: &[(Head, crate::logging::RequestId, crate::codec::Protocol)]) {}
    /// The whole server stops (not a reload or a recycle): this worker serves what
    /// waits in the shared listen queues before it exits, since no successor will.
    fn server_stopping(&self) -> bool {
        false
    }
    /// A request over `protocol` was answered with `status` (or closed without an
    /// answer: `None`) before any Python thread ran it: a malformed head, a body over
    /// --max-body. Called off the Python threads; rare, so it may use a locked add.
    fn refused(&self, _protocol: crate::codec::Protocol, _status: Option<u16>) {}

    // ASGI: the event loop thread runs many requests as tasks and owns every line of
    // the worker (`--threads` does not bound them); `crate::asgi::watch` keeps the
    // oldest tasks on the lines, so `--timeout` always sees the oldest.

    /// This worker serves ASGI, up to `max_concurrency` tasks at once; returns how many
    /// lines it may use.
    fn tasks(&self, _max_concurrency: usize) -> usize {
        0
    }
    /// The app answered its lifespan startup in time (`lifespan.startup.complete`),
    /// called from the event loop thread as it sends it: if the worker is not ready
    /// soon after, its loop is blocked, not the app's startup.
    fn lifespan_answered(&self) {}
    /// A task started, on `line` when one was free.
    fn task_begin(
        &self,
        _line: Option<usize>,
        _head: &Head,
        _id: &crate::logging::RequestId,
        _protocol: crate::codec::Protocol,
    ) {
    }
    /// A task already running (since `since`) moves onto `line`, which an older one
    /// left.
    fn task_show(
        &self,
        _line: usize,
        _head: &Head,
        _id: &crate::logging::RequestId,
        _protocol: crate::codec::Protocol,
        _since: std::time::Instant,
    ) {
    }
    /// The task on `line` left it while it runs on (its response is complete): the
    /// line is idle; the task still counts until [`Monitor::task_end`].
    fn task_idle(&self, _line: usize) {}
    /// A task ended (its line, if it had one, is idle now); `served` as for `end`.
    fn task_end(
        &self,
        _line: Option<usize>,
        _protocol: crate::codec::Protocol,
        _served: Option<&Served>,
    ) {
    }
    /// Requests this worker may still finish before `--max-requests` recycles it (the
    /// ones in flight count among them); `None`: no limit.
    fn requests_left(&self) -> Option<u64> {
        None
    }
    /// The worker stopped accepting ([`Monitor::stopping`] was called).
    fn has_stopped(&self) -> bool {
        false
    }
    /// A worker under a master: every one of its Python threads is running a request
    /// (none waits for the next); an ASGI worker: its event loop is at
    /// `--max-concurrency` ([`Monitor::at_cap`]). Read by its busy watch's thread
    /// ([`crate::server::fastcgi::relieve`]), never on a request's path.
    fn threads_all_busy(&self) -> bool {
        false
    }
    /// The ASGI event loop took its last `--max-concurrency` place (`full`), or a task
    /// that ended freed one: for [`Monitor::threads_all_busy`], the other workers'
    /// [`Monitor::idle_elsewhere`], and the busy watch's wake-up as the begin that
    /// takes a WSGI worker's last free thread gives it (see [`BusyWake`]). Called by
    /// the loop thread at those two moments only, never below the cap.
    fn at_cap(&self, _full: bool) {}
    /// Requests this worker has finished so far (a count that only grows): unchanged
    /// between two looks of the busy watch, with every thread busy at both, no thread
    /// was free in between ([`crate::server::fastcgi::relieve`]'s safety net).
    fn requests_ended(&self) -> u64 {
        0
    }
    /// What the begin that takes the last free Python thread tells the busy watch's
    /// thread (a WSGI worker under a master): see [`BusyWake`].
    fn all_busy_wake(&self) -> Option<std::sync::Arc<BusyWake>> {
        None
    }
    /// Every Python thread of this worker runs a request: for how long the one that
    /// began last has run; `None` while one is free, and for an ASGI worker (its tasks
    /// have no begin time to read). Read by the slow lane only while all are busy.
    fn all_busy_for(&self) -> Option<std::time::Duration> {
        None
    }
    /// Python threads waiting for a request in the other serving WSGI workers, and the
    /// free places of the ASGI ones below their `--max-concurrency`.
    fn idle_elsewhere(&self) -> usize {
        0
    }
    /// A worker under a master that keeps more than one worker (`--workers`, as
    /// SIGTTIN/SIGTTOU leave it: read each time): there may be another to hand
    /// requests to.
    fn has_siblings(&self) -> bool {
        false
    }
    /// This process is about to warn that the app answered a status past 599 (once per
    /// process): whether it is the first of its generation of workers to (recycled
    /// workers' replacements stay quiet, as for the `--max-rss` warning).
    fn first_to_warn_past_defined(&self) -> bool {
        true
    }
    /// The ASGI loop has started every request `--max-requests` allows (those in
    /// flight count): recycle now, so the successor starts while they finish, instead
    /// of when the last one ends (a long stream would keep the worker deaf till then).
    fn limit_taken(&self) {}
    /// What the worker runs when it accepts again after waiting at `--max-requests`
    /// for its successor (the successor failed to start: the master holds it past its
    /// limit): the server puts its listeners back and takes up the requests it held
    /// meanwhile. Given once, before the worker serves.
    fn on_resume(&self, _resume: Box<dyn Fn() + Send + Sync>) {}
    /// Why the master told this worker to leave, as the exits metric names it
    /// (`reload`, `scale`, `max-requests`, ...), once it has.
    fn leaving_cause(&self) -> Option<&'static str> {
        None
    }
    /// The ASGI event loop's heartbeat under `--timeout` (`crate::asgi::beat`): `true`
    /// at each tick of the loop, `false` once it no longer serves (then not watched).
    fn loop_beat(&self, _on: bool) {}
    /// The stop that begins now was begun by the master for `--timeout` (the worker's
    /// stacks are being dumped, and it is killed when that is over): the least time the
    /// stop may take, so that the master's kill, which names the requests it cuts off,
    /// comes before the worker's own `--graceful-timeout` cancels them unnamed.
    fn condemned_grace(&self) -> Option<std::time::Duration> {
        None
    }
    /// `--timeout`, which the master watches this worker's requests for.
    fn timeout(&self) -> Option<std::time::Duration> {
        None
    }
    /// The master condemned this worker for `--timeout`: the ids of its requests that
    /// ran longer than that limit, each with how long past it they are.
    fn overdue(&self) -> Option<Vec<(String, std::time::Duration)>> {
        None
    }
    /// The same as the Python threads (their scoreboard lines) whose request is past
    /// the limit; empty unless condemned.
    fn overdue_lines(&self) -> Vec<usize> {
        Vec::new()
    }
}

/// Runtime settings the Python side needs.
#[derive(Clone)]
pub struct Settings {
    pub threads: usize,
    /// When the Python threads run under `SCHED_BATCH` (`--sched-batch`).
    pub sched_batch: crate::server::sched::SchedBatch,
    pub multiprocess: bool,
    pub monitor: Option<Arc<dyn Monitor>>,
    /// `--mount` prefixes: the longest one that starts the path becomes SCRIPT_NAME.
    pub mounts: Vec<Vec<u8>>,
}

/// A traceback line (one part of `traceback.format_exception`) keeps this many characters.
const TRACEBACK_PART: usize = 8 * 1024;

/// A formatted traceback keeps about this many characters: its first and last parts.
const TRACEBACK_TOTAL: usize = 64 * 1024;

/// The stack of a thread that runs the app: what glibc gives every thread `threading`
/// starts, and so what an app's deep recursion was tested with under `python`, uWSGI or
/// gunicorn: the stack limit (`ulimit -s`, RLIMIT_STACK; 8 MiB by default), 8 MiB when
/// it is unlimited. Rust's default (2 MiB) aborted the worker at a quarter of the
/// default's depth (regression: a `__repr__` 5,000 calls deep, fine in a plain Python
/// thread, killed the worker with SIGABRT, "has overflowed its stack"). Only the pages
/// used are memory; the rest is address space (`ulimit -v`, `LimitAS=`: lower `ulimit
/// -s` with it, as for any threaded Python program).
pub fn python_thread_stack() -> usize {
    const DEFAULT: usize = 8 << 20;
    match rustix::process::getrlimit(rustix::process::Resource::Stack).current {
        Some(n) => usize::try_from(n)
            .unwrap_or(DEFAULT)
            .clamp(1 << 20, 256 << 20),
        None => DEFAULT,
    }
}

/// Formats a Python exception with its traceback, as `traceback.print_exception` would.
/// Never uses `PyErr_Print`, which would exit the process on `SystemExit`. Bounded: an
/// exception whose message is 100 MB (or a traceback of a million frames) must not make
/// a log line of that size; each part keeps 8 KiB and the whole its first and last
/// parts up to 64 KiB, saying what was left out.
pub fn traceback(py: Python<'_>, err: &PyErr) -> String {
    let formatted = (|| -> PyResult<String> {
        let lines = py.import("traceback")?.call_method1(
            "format_exception",
            (err.get_type(py), err.value(py), err.traceback(py)),
        )?;
        let parts: Vec<Bound<'_, pyo3::types::PyString>> = lines.extract()?;
        let text = |p: &Bound<'_, pyo3::types::PyString>| -> PyResult<String> {
            let n = p.len()?;
            if n <= TRACEBACK_PART {
                return Ok(p.to_string_lossy().into_owned());
            }
            let head = p.get_item(pyo3::types::PySlice::new(py, 0, TRACEBACK_PART as isize, 1))?;
            let head = head
                .cast::<pyo3::types::PyString>()?
                .to_string_lossy()
                .into_owned();
            let nl = if head.ends_with('\n') { "" } else { "\n" };
            Ok(format!(
                "{head}… [{} more characters of this line not logged]{nl}",
                n - TRACEBACK_PART
            ))
        };
        let mut out = String::new();
        // The innermost frames and the exception come last: the end is kept first.
        let mut tail = Vec::new();
        let mut used = 0;
        let mut end = parts.len();
        while end > 0 && used < TRACEBACK_TOTAL / 2 {
            let t = text(&parts[end - 1])?;
            used += t.len();
            tail.push(t);
            end -= 1;
        }
        let mut start = 0;
        while start < end && out.len() < TRACEBACK_TOTAL / 2 {
            out.push_str(&text(&parts[start])?);
            start += 1;
        }
        if start < end {
            out.push_str(&format!(
                "  … [{} traceback lines not logged]\n",
                end - start
            ));
        }
        for t in tail.iter().rev() {
            out.push_str(t);
        }
        Ok(out)
    })();
    formatted.unwrap_or_else(|_| format!("{err}\n"))
}
