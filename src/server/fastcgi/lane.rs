//! The slow lane of a FastCGI connection (a tokio task): partial records, streamed
//! STDIN (the app reads the body as it arrives), multiplexed ids, ABORT_REQUEST,
//! management records, bad input. Complete requests go to the ready queue; an idle
//! connection goes back to the fast path.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use rustc_hash::FxHashMap;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::holding::{Holding, HOLD_MAX};
use super::sink::{stderr_forward, FcgiSink, ReqFlags, STDIN_ENDED, STDIN_OPEN};
use super::{AtStop, Ctl, Entry, FcgiConn};
use crate::codec::fastcgi::{assemble, stdin_end, Assembled, Refused, StdinEnd};
use crate::codec::Head;
use crate::proto::fastcgi::{self as fcgi, ConnParser, Event, ProtocolStatus};
use crate::proto::response::{plain_response, HeadStyle};
use crate::proto::ProtoError;
use crate::server::admission::ConnInput;
use crate::server::connection::{input_waits, RateLimit, STOPPED_GRACE};
use crate::server::lane::{FcgiSettings, SlowLane};
use crate::server::slow_clients::{self, Reason};
use crate::server::span::request_span;
use crate::wsgi::input::ClosedBy;
use crate::wsgi::{Body, BodyStream, ListenerInfo, Request};

/// Requests in flight on one connection before BEGIN_REQUEST is answered
/// FCGI_OVERLOADED (beyond the Python threads, they wait in the queue).
const MAX_REQS_PER_CONN: usize = 64;

/// At the final stop (no worker to hand it to), how long an idle keep-alive
/// connection waits for a last request before it closes: the front server may be
/// sending one on it right now (it cannot know the connection is about to close), and
/// one that was answered closes right after its END_REQUEST instead. Under load the
/// front server takes every cached connection well within this; an idle front server
/// sends nothing, so the close then meets no request. (A connection that lingers waits
/// [`IDLE_AT_STOP`] instead.)
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// At the final stop, how long an idle connection to nginx waits, once asked to close
/// ([`FcgiConn::nudge`]), for nginx's close (or a request it sent meanwhile) before
/// it is closed anyway: nginx closes it in its next event loop turn.
const NUDGE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// At the final stop, how long a kept connection that lingers
/// ([`FcgiConn::lingers_at_stop`]: Apache over a Unix socket) must have been idle
/// before it closes, when its last answer could not close it (the peer had read it
/// already, and may be reusing it). Idle this long, it is back in Apache's pool, whose
/// check before reuse sees the close. Short: the stop waits for it.
const IDLE_AT_STOP: std::time::Duration = std::time::Duration::from_millis(100);

/// A request whose app has taken none of its STDIN for this long counts as stuck: when
/// its connection is over --fastcgi-buffer while another request on it waits for its
/// own input, the lane reads on past the budget and drops the stuck request's body.
/// Until then an app that reads steadily (a chunk now and then) is waited for, as any
/// reader under the budget: the connection is not read until it has taken some.
const NO_PROGRESS: std::time::Duration = std::time::Duration::from_secs(2);

/// What one queued STDIN chunk costs against the input budget beyond its bytes (its
/// `Bytes` and queue slot), so a flood of tiny records is counted too.
const CHUNK_OVERHEAD: usize = 64;

/// A STDIN record smaller than this, queued for an app that is not waiting for it, is
/// copied out of the connection's read buffer, which it would otherwise keep alive
/// whole (up to ~130 KiB) while the budget counts only its own bytes.
const COPY_BELOW: usize = 16 * 1024;

/// The STDIN of one streamed request, between the slow lane (which queues what
/// arrives) and the app's `wsgi.input` (which takes it). Not a bounded channel: what
/// may wait here is bounded per connection and per worker in bytes
/// ([`ConnInput`]), and a request's input can be dropped at once when the connection
/// must read past another request's (see [`serve`]).
struct Feed {
    state: Mutex<FeedState>,
    ready: Condvar,
    input: Arc<ConnInput>,
    /// The front server, named (through the bad-input limit) by the app's failed read
    /// of a body it cut.
    peer: Arc<str>,
    /// The lane's runtime: the limit's summary is said by a task of it.
    rt: Option<tokio::runtime::Handle>,
}

#[derive(Default)]
struct FeedState {
    chunks: VecDeque<Bytes>,
    /// Charged to the budget for `chunks`.
    held: usize,
    /// The empty STDIN record came.
    ended: bool,
    /// The lane will queue nothing more (request aborted, connection closed).
    closed: bool,
    /// With `closed`: what the bad-input limit said when the app's read first found
    /// the body cut (true: its line names the peer; false: counted for the summary).
    named: Option<bool>,
    /// The connection's own line (a reset, --read-timeout, bad input, a close for
    /// room) asked the bad-input limit for this cut already: the app's read is not
    /// counted a second time.
    counted: bool,
    /// With `closed`: postern closed the connection itself, for this reason (the
    /// app's failed read and the request's lines say so).
    closed_by: Option<ClosedBy>,
    /// The input was dropped to keep the connection's budget.
    cut: bool,
    /// With `cut`: dropped because the request ended (its app returned) before its
    /// body did, not for the budget.
    after_end: bool,
    /// STDIN ended before CONTENT_LENGTH bytes.
    short: bool,
    /// The app waits for input (nothing queued).
    waiting: bool,
    /// When the app last took a chunk, or the request came (its progress: an app
    /// gets [`NO_PROGRESS`] to start reading).
    took: Option<Instant>,
    /// The app's `wsgi.input` is gone: nothing more is queued.
    gone: bool,
    /// The body passed --max-body (no CONTENT_LENGTH): the app's next read fails so.
    too_large: bool,
    /// The app has begun reading it while it still arrives: counted in its
    /// connection's [`ConnInput::reading`] until the lane is done feeding it (the
    /// [`Feeder`] is dropped: the body ended, was cut, or its request went), or the
    /// feed goes.
    reading: bool,
    /// The lane has dropped its [`Feeder`]: nothing more arrives.
    fed: bool,
    /// An event loop waits for input ([`BodyStream::poll_chunk`]): called once there
    /// is something to take (never under the lock).
    wake: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl FeedState {
    /// Who to wake now that there is something to take.
    fn woken(&mut self) -> Option<Arc<dyn Fn() + Send + Sync>> {
        self.wake.take()
    }
}

impl Feed {
    fn new(input: Arc<ConnInput>, peer: &Arc<str>) -> Arc<Feed> {
        Arc::new(Feed {
            state: Mutex::new(FeedState {
                took: Some(Instant::now()),
                ..FeedState::default()
            }),
            ready: Condvar::new(),
            input,
            peer: Arc::clone(peer),
            rt: tokio::runtime::Handle::try_current().ok(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, FeedState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a chunk; false when the app's input is gone (the rest is dropped).
    fn push(&self, mut data: Bytes) -> bool {
        let mut st = self.lock();
        if st.gone {
            return false;
        }
        if !st.waiting && data.len() < COPY_BELOW {
            data = Bytes::copy_from_slice(&data);
        }
        let n = data.len() + CHUNK_OVERHEAD;
        st.held += n;
        st.chunks.push_back(data);
        self.input.charge(n);
        let wake = st.woken();
        drop(st);
        self.ready.notify_one();
        if let Some(w) = wake {
            w();
        }
        true
    }

    /// Sets what ends the input (under the lock), then wakes its reader.
    fn finish_with(&self, set: impl FnOnce(&mut FeedState)) {
        let mut st = self.lock();
        set(&mut st);
        let wake = st.woken();
        drop(st);
        self.ready.notify_one();
        if let Some(w) = wake {
            w();
        }
    }

    fn end(&self) {
        self.finish_with(|st| st.ended = true);
    }

    fn close(&self) {
        self.finish_with(|st| st.closed = true);
    }

    /// The body passed --max-body: the app's next read fails with [`BODY_TOO_LARGE`].
    fn too_large(&self) {
        self.finish_with(|st| st.too_large = true);
    }

    /// STDIN ended before CONTENT_LENGTH bytes: the app's read fails once it has taken
    /// what came (the connection goes on: the request is answered).
    fn short(&self) {
        self.finish_with(|st| st.short = true);
    }

    /// Drops what is queued; the app's next read fails.
    fn cut(&self) {
        self.cut_for(false);
    }

    /// [`Feed::cut`]; `after_end`: the request ended first (a read from a thread the
    /// app left running says so, not that the budget was short).
    fn cut_for(&self, after_end: bool) {
        let mut st = self.lock();
        st.after_end = after_end;
        st.chunks.clear();
        let held = std::mem::take(&mut st.held);
        st.cut = true;
        let wake = st.woken();
        drop(st);
        self.input.release(held);
        self.ready.notify_one();
        if let Some(w) = wake {
            w();
        }
    }

    /// The app is blocked reading this request's input, with nothing queued.
    fn starved(&self) -> bool {
        let st = self.lock();
        st.waiting && st.chunks.is_empty() && !st.ended
    }

    /// Until when the app counts as reading this input steadily: it took a chunk (or
    /// the request came) within [`NO_PROGRESS`] (`None`: it has not).
    fn progressing(&self, now: Instant) -> Option<Instant> {
        let st = self.lock();
        st.took
            .map(|t| t + NO_PROGRESS)
            .filter(|&until| until > now)
    }

    /// [`Feed::progressing`], for an app that also holds queued input: the
    /// connection's budget is freed as it reads.
    fn progressing_holder(&self, now: Instant) -> Option<Instant> {
        let st = self.lock();
        if st.chunks.is_empty() {
            return None;
        }
        st.took
            .map(|t| t + NO_PROGRESS)
            .filter(|&until| until > now)
    }
}

/// The slow lane's end of a [`Feed`]: dropping it tells the app nothing more comes.
struct Feeder(Arc<Feed>);

impl Feed {
    /// No longer counted as an app reading a body still arriving.
    fn not_reading(&self, st: &mut FeedState) {
        if std::mem::take(&mut st.reading) {
            self.input.reading().fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        let mut st = std::mem::take(self.state.get_mut().unwrap_or_else(|e| e.into_inner()));
        self.not_reading(&mut st);
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        {
            let mut st = self.0.lock();
            st.fed = true;
            self.0.not_reading(&mut st);
        }
        self.0.close();
    }
}

/// `wsgi.input` of a request whose STDIN is still arriving.
struct StdinStream(Arc<Feed>);

impl StdinStream {
    /// What the app can take now: `None` while nothing is there (the caller waits).
    fn take(&self, st: &mut MutexGuard<'_, FeedState>) -> Option<io::Result<Option<Bytes>>> {
        let feed = &self.0;
        if !st.reading && !st.fed {
            // From now on the request holds its app's place while its body comes.
            st.reading = true;
            feed.input.reading().fetch_add(1, Ordering::Relaxed);
        }
        if let Some(b) = st.chunks.pop_front() {
            let n = b.len() + CHUNK_OVERHEAD;
            st.held -= n;
            st.waiting = false;
            st.took = Some(Instant::now());
            feed.input.release(n);
            return Some(Ok(Some(b)));
        }
        if st.ended {
            st.waiting = false;
            return Some(Ok(None));
        }
        if st.too_large {
            return Some(Err(io::Error::new(
                crate::wsgi::BODY_TOO_LARGE,
                "the request body (sent without CONTENT_LENGTH) is over --max-body",
            )));
        }
        if st.cut && st.after_end {
            // regression (probe 380): a thread the app left running read the body
            // after the response and was told --fastcgi-buffer dropped it.
            return Some(Err(io::Error::other(
                "wsgi.input read after its request ended (the response was sent): the rest of the body was not kept",
            )));
        }
        if st.cut {
            return Some(Err(crate::wsgi::input::dropped()));
        }
        if st.short {
            return Some(Err(io::Error::new(
                crate::wsgi::input::BODY_SHORT,
                "the front server ended STDIN before CONTENT_LENGTH bytes",
            )));
        }
        if st.closed {
            // Not the app's fault, and nobody to answer: see `BODY_GONE`. Its line is
            // at warn only if the bad-input limit names the peer this time, whatever
            // cut the body (EOF, reset, FCGI_ABORT_REQUEST, --read-timeout, a close
            // for room): asked once, when the app finds the body cut, so a cut no app
            // reads spends no line.
            // regression (hostile): a flood of connections each cutting its body
            // mid-way (a FIN, then resets) logged one WARN per request, unlimited.
            let counted = st.counted;
            let named = *st.named.get_or_insert_with(|| {
                slow_clients::bad_input_on(feed.rt.as_ref(), &feed.peer, Reason::Truncated, counted)
            });
            return Some(Err(crate::wsgi::input::closed(named, st.closed_by)));
        }
        if !st.waiting {
            // The lane may be holding the connection back for the budget: a
            // waiting app must make it read again (see `serve`).
            st.waiting = true;
            feed.input.poke();
        }
        None
    }
}

impl BodyStream for StdinStream {
    /// Never blocks: what is queued, else `wake` once the lane queues more (or the
    /// input ends). The lane's input budget is the backpressure: past
    /// --fastcgi-buffer it stops reading the connection until the apps take what it
    /// holds, unless an app on it waits for its own input.
    fn poll_chunk(
        &mut self,
        wake: &Arc<dyn Fn() + Send + Sync>,
    ) -> std::task::Poll<io::Result<Option<Bytes>>> {
        let mut st = self.0.lock();
        match self.take(&mut st) {
            Some(r) => std::task::Poll::Ready(r),
            None => {
                st.wake = Some(Arc::clone(wake));
                std::task::Poll::Pending
            }
        }
    }

    fn pollable(&self) -> bool {
        true
    }

    /// The app's `receive()` was cancelled (or took what came): it no longer waits,
    /// so the lane must not read past the budget for it (and drop the bodies of the
    /// connection's other requests) while it does not read.
    fn forget_wake(&mut self) {
        let mut st = self.0.lock();
        st.waiting = false;
        st.wake = None;
    }

    fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        let feed = &self.0;
        let mut st = feed.lock();
        loop {
            if let Some(r) = self.take(&mut st) {
                return r;
            }
            st = feed.ready.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for StdinStream {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.gone = true;
        st.chunks.clear();
        let held = std::mem::take(&mut st.held);
        drop(st);
        self.0.input.release(held);
    }
}

/// A body assembled in memory for a request, charged to the input budget until the
/// request ends.
struct Charge {
    input: Arc<ConnInput>,
    n: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.input.release(self.n);
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
    stdin: Option<Feeder>,
    /// The body in memory, while its request runs.
    _body: Option<Charge>,
    content_length: Option<u64>,
    got: u64,
    warned_excess: bool,
    /// The body of a request without CONTENT_LENGTH, until it has all come (its app
    /// has not been called yet).
    collect: Option<Box<Collect>>,
    /// Its STDIN has not ended (`flags.stdin` says so to its sink).
    stdin_open: bool,
    /// Its response is out; the records through END_REQUEST wait for STDIN's end.
    held: Option<Held>,
}

/// The records through END_REQUEST of a response whose STDIN has not ended.
struct Held {
    tail: Vec<u8>,
    keep_conn: bool,
    /// Sent then unless more STDIN comes (each record puts it off by [`HOLD_GAP`]).
    until: Instant,
}

/// How long a response's END_REQUEST waits for more of its request's STDIN. nginx
/// stops sending a body once it has passed the response head on (its
/// `ngx_http_upstream_send_request_handler`), so after the response only what it had
/// written before comes: the body's end, when the body was small enough to be sent
/// whole (the usual case; then nginx keeps its client's connection), else nothing
/// more (a large body: nginx closes its client's connection whatever postern does).
/// Past this gap without a STDIN record, END_REQUEST goes out without the end.
const HOLD_GAP: std::time::Duration = std::time::Duration::from_millis(200);

impl Slot {
    fn new(flags: Arc<ReqFlags>, content_length: Option<u64>) -> Slot {
        Slot {
            flags,
            stdin: None,
            _body: None,
            content_length,
            got: 0,
            warned_excess: false,
            collect: None,
            stdin_open: false,
            held: None,
        }
    }

    /// No more STDIN comes for it (its end came, or an abort).
    fn stdin_over(&mut self) {
        self.stdin_open = false;
        self.flags.stdin.store(STDIN_ENDED, Ordering::Release);
    }
}

/// Body bytes a spooled body gathers before one write to its file.
const SPOOL_WRITE: usize = 64 * 1024;

/// The body of a request sent without CONTENT_LENGTH (nginx's
/// `fastcgi_request_buffering off` with a chunked upload), collected before its app is
/// called: in memory while the bodies a connection collects stay under
/// `--body-spool-threshold` together (what one uwsgi or SCGI connection may hold), else
/// in an unlinked temporary file, as uwsgi and SCGI bodies are. Not charged to the input
/// budget while it is collected: that budget makes the lane stop reading until apps
/// read, and no app reads a body still being collected (64 uploads of 1 MiB at once
/// would have stopped every connection of a worker for good).
/// The app is then given its CONTENT_LENGTH: apps that trust only that (Django's
/// request body and multipart parser, over WSGI and ASGI) read nothing without it.
/// The connection's task collects it as it reads: no thread waits for a slow upload.
struct Collect {
    /// What of `mem` counts in [`COLLECTING`] (while not spooled).
    held: InMemory,
    head: Head,
    keep_conn: bool,
    span: crate::logging::RequestSpan,
    request_id: crate::logging::RequestId,
    started: Instant,
    /// The body so far; once spooled, what has not been written to `file` yet.
    mem: BytesMut,
    file: Option<std::fs::File>,
    got: u64,
    /// Counted as being read until its app is called (or it is refused, or cut off).
    _reading: crate::server::queue::Reading,
}

/// Memory the collected bodies of this worker hold (all its connections; their buffers'
/// capacity): they are not charged to the input budget while they come (a budget full of
/// bodies no app reads yet would stop the lanes for good), but a body goes to its file
/// once they and the budget's own bytes would pass `--fastcgi-buffer-total`.
// regression (review of 11cc4ee): bounded per connection only, 150 chunked uploads of
// 900 KB held 290 MiB in one worker, whatever --fastcgi-buffer-total said.
static COLLECTING: AtomicUsize = AtomicUsize::new(0);

/// Lines about collected bodies that could not be spooled (503): the first, then one a
/// second at most with the count of those left out (out of descriptors or a full
/// `TMPDIR` hits every such request, and a flood of them made a line each).
static SPOOL_LOG: RateLimit = RateLimit::new();

/// Lines about bodies refused because their connection spools another already (503;
/// only a client multiplexing uploads gets them): as [`SPOOL_LOG`].
static SPOOLING_LOG: RateLimit = RateLimit::new();

/// Lines about new requests refused on a connection at the final stop (FCGI_OVERLOADED;
/// only a client multiplexing requests gets them): as [`SPOOL_LOG`].
static STOPPING_LOG: RateLimit = RateLimit::new();

/// Lines about requests held for the serving workers and refused (FCGI_OVERLOADED) as a
/// worker leaves: as [`SPOOL_LOG`].
static HOLDING_LOG: RateLimit = RateLimit::new();

/// A share of [`COLLECTING`], given back when dropped.
#[derive(Default)]
struct InMemory(usize);

impl InMemory {
    fn add(&mut self, n: usize) {
        COLLECTING.fetch_add(n, Ordering::AcqRel);
        self.0 += n;
    }
}

impl Drop for InMemory {
    fn drop(&mut self) {
        COLLECTING.fetch_sub(std::mem::take(&mut self.0), Ordering::AcqRel);
    }
}

impl Collect {
    /// Adds `data`, in memory while `room` (else the body goes to its file from now
    /// on); an error when the temporary file cannot be made or written.
    fn push(&mut self, data: &[u8], room: bool) -> io::Result<()> {
        self.got += data.len() as u64;
        if self.file.is_none() {
            if room {
                let before = self.mem.capacity();
                self.mem.extend_from_slice(data);
                self.held.add(self.mem.capacity() - before);
                return Ok(());
            }
            self.file = Some(tokio::task::block_in_place(tempfile::tempfile)?);
            self.held = InMemory::default();
            self.flush()?;
        }
        self.mem.extend_from_slice(data);
        if self.mem.len() >= SPOOL_WRITE {
            self.flush()?;
        }
        Ok(())
    }

    /// The memory `n` more bytes kept in memory add: none while they fit, else what the
    /// body's buffer grows by (it doubles). A body is counted by its buffer's capacity, up
    /// to twice what it has: counted by length, the bodies could take twice
    /// --fastcgi-buffer-total.
    fn growth(&self, n: usize) -> usize {
        let (len, cap) = (self.mem.len(), self.mem.capacity());
        if cap - len >= n {
            return 0;
        }
        (len + n).max(cap * 2) - cap
    }

    /// Writes what waits in `mem` to the file (if spooled).
    fn flush(&mut self) -> io::Result<()> {
        use std::io::Write;
        let Some(file) = &mut self.file else {
            return Ok(());
        };
        if !self.mem.is_empty() {
            tokio::task::block_in_place(|| file.write_all(&self.mem))?;
            if self.mem.capacity() > 2 * SPOOL_WRITE {
                // What was kept in memory before the body was spooled: let it go.
                self.mem = BytesMut::new();
            } else {
                self.mem.clear();
            }
        }
        Ok(())
    }
}

/// Serves a FastCGI connection on the slow lane until it closes, or hands it back to
/// the fast path once idle. `buf` holds bytes already read; `entry` comes from the
/// owner's transition to the lane (with the request the fast path was serving inline,
/// if the lane took the connection over from it).
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    conn: Arc<FcgiConn>,
    mut buf: BytesMut,
    info: ListenerInfo,
    lane: SlowLane,
    settings: FcgiSettings,
    started: Instant,
    entry: Entry,
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
    // Our own sender keeps the channel open whatever the owner does.
    let Entry {
        tx: _ctl_tx,
        rx: mut ctl_rx,
        adopted,
        fresh,
    } = entry;
    // Requests ended on this connection while the lane had it (answered here too).
    let mut served = 0u64;
    let mut parser = ConnParser::new(fcgi::ConnLimits {
        max_params: limits.buffer_size,
        max_reqs: MAX_REQS_PER_CONN,
        values: fcgi::Values {
            max_conns: settings.max_reqs.max(1),
            max_reqs: settings.max_reqs.max(1),
            mpxs_conns: true,
        },
    });
    parser.set_begun(conn.take_begun());
    let mut slots: FxHashMap<u16, Slot> = FxHashMap::default();
    if let Some((id, keep_conn, flags)) = adopted {
        // The request the fast path is serving inline: ours to watch from now on.
        parser.adopt(id, keep_conn);
        slots.insert(id, Slot::new(flags, None));
        conn.set_lane_requests(slots.len());
        served += 1;
    }
    let mut events: Vec<Event> = Vec::new();
    // Events decoded and not yet acted on.
    let mut backlog: VecDeque<Event> = VecDeque::new();
    // What this connection holds for apps that have not read it (the input budget).
    let input = settings.input.conn();
    // The last read was made past the budget, for a request whose app waits.
    let mut past = false;
    // Since when a request head (a record, or a request's PARAMS) has been incomplete.
    let mut head_since: Option<Instant> = None;
    let mut last_read = Instant::now();
    let mut closing = false;
    // At the final stop: an idle connection waits until then for a last request.
    let mut linger: Option<Instant> = None;
    // At the final stop: nginx was asked to close it (FcgiConn::nudge).
    let mut nudged = false;
    // FCGI_KEEP_CONN unset and the response complete: close once the front server has
    // sent the rest of its request (nginx writes the whole body before it reads the
    // response; closing earlier would fail its write: a 502).
    let mut drain = false;
    // The request that ended the connection was refused before the end of its PARAMS
    // (a pair over --buffer-size, a BEGIN_REQUEST refused): what the drain reads is the
    // rest of a head, bound by --head-timeout.
    let mut drain_head = false;
    // An END_REQUEST went out before the end of its request's STDIN (HOLD_GAP, or a
    // request postern answered itself, Step::AnsweredEarly).
    let mut stdin_cut = false;
    // `buf` is still the buffer the connection came with.
    let mut handed_in = true;
    // The front server sent EOF: nothing more is read; the requests that came whole
    // are answered, then the connection closes.
    let mut eof = false;
    // The front server closed the connection while its input was held back for the
    // budget: it is read on regardless (what is left is what its socket holds), so
    // that the close reaches the apps (see `closed_while_held`).
    let mut peer_closed = false;
    // Bytes no FastCGI peer sends came after the records read so far: nothing more is
    // read, and the connection ends as at the front server's EOF (the requests that
    // came whole are answered first).
    let mut bad_input = false;
    // The connection's end was said through the bad-input limit (a reset, bad input,
    // --read-timeout, a close for room): it counted the requests whose bodies it cuts.
    let mut said = false;
    // postern closes the connection itself (not its peer): why, for the requests whose
    // bodies it cuts.
    let mut closed_by: Option<ClosedBy> = None;
    // Records came only for an id no BEGIN_REQUEST named (the first such id, and when):
    // no front server does that, so the connection is under --head-timeout from then
    // until a request begins, not idle.
    let mut stray: Option<(u16, Instant)> = None;
    // `served` when the quick ACK was last armed (FcgiConn::ack_now): once per
    // request, not per read. Linux stays out of its delayed-ACK mode until postern
    // sends on the connection (a response), so the reads of one body need no more;
    // a request that ended since (its answer went out) arms it again.
    let mut acked_at: Option<u64> = None;
    // Listed while a head arrives and no request runs on the connection: at
    // --max-connections, with a connection waiting, the oldest is closed for it.
    let mut head_watch: Option<slow_clients::HeadWatch> = None;
    // While bodies arrive and no head does: listed as a body (slow_clients::BODY_MIN_RATE).
    let mut body_watch: Option<slow_clients::HeadWatch> = None;
    // What `input.delivered_total()` was when `body_watch` began.
    let mut body_since = 0u64;
    // The deadline that fired with input waiting on the socket (a worker stopped past
    // it: see connection::input_waits), and until when the read may go on: once per
    // deadline, so a head trickling past --head-timeout gains STOPPED_GRACE at most.
    let mut grace: Option<(Instant, Instant)> = None;
    // Requests begun while this worker leaves and others run on the connection: they
    // go with it to the workers that serve on (holding.rs).
    let mut holding = Holding::default();

    'conn: loop {
        // Requests that ended free their ids before the next bytes are decoded.
        while let Ok(ctl) = ctl_rx.try_recv() {
            let Some((id, reuse)) = ended(ctl, &conn, &mut slots) else {
                continue;
            };
            served += 1;
            if !done(id, reuse, &mut parser, &mut slots, &mut backlog) {
                drain = !conn.is_broken();
                break 'conn;
            }
            (closing, linger) = after_request(&lane, &conn, slots.len(), closing, linger);
        }
        // Decode what is buffered, then act on it in order.
        if backlog.is_empty() && !buf.is_empty() {
            if let Err(e) = parser.feed(&mut buf, &mut events) {
                if events.is_empty() && slots.is_empty() {
                    if slow_clients::bad_input(&peer, Reason::Malformed) {
                        tracing::warn!(%peer, error = %e, "bad FastCGI input; closing the connection");
                    }
                    break 'conn;
                }
                // The records before it are valid (ConnParser::feed): a request that
                // came whole is answered, then the connection closes.
                // regression: a whole request without FCGI_KEEP_CONN followed by
                // garbage in the same read was never answered (hostile6 LOW).
                if slow_clients::bad_input(&peer, Reason::Malformed) {
                    tracing::warn!(%peer, error = %e, "bad FastCGI input: answering the requests that came whole before it, then closing the connection");
                }
                buf.clear();
                bad_input = true;
                closed_by = Some(ClosedBy::BadInput);
            }
            backlog.extend(events.drain(..));
            if parser.close_after_replies() {
                // Before any request after it is handed to a Python thread.
                conn.closes_after_replies();
            }
            for (id, what) in parser.take_begun_again() {
                let what = match what {
                    // Without FCGI_KEEP_CONN, its END_REQUEST ends the connection (§2.3).
                    fcgi::BegunAgain::Ended if parser.close_after_replies() => "it was still sending its PARAMS: ended (END_REQUEST), and with it the connection (it had no FCGI_KEEP_CONN): closing",
                    fcgi::BegunAgain::Ended => "it was still sending its PARAMS: ended (END_REQUEST); the connection and its other requests go on",
                    fcgi::BegunAgain::Aborted => "its body was still coming: aborted as at FCGI_ABORT_REQUEST (its app's body read fails, END_REQUEST once it returns); the connection and its other requests go on",
                    // regression (probe 380 NIT): it read as if the new request would
                    // be answered; it never is (its id is the old one's until its end).
                    fcgi::BegunAgain::Ignored => "it had come whole: it is answered, and the new request on its id is ignored with its records (never answered); the connection and its other requests go on",
                    // Read no further: the requests that came whole are answered (the
                    // aborted one's END_REQUEST too), then the connection closes.
                    fcgi::BegunAgain::AfterAbort => {
                        buf.clear();
                        bad_input = true;
                        closed_by = Some(ClosedBy::BadInput);
                        if slow_clients::bad_input(&peer, Reason::Malformed) {
                            tracing::warn!(%peer, fcgi_id = id, "FCGI_BEGIN_REQUEST for a request id whose request was aborted and whose END_REQUEST is not out yet (a protocol error: an id is free again only after it): the new request cannot be told from the old one's records, so the connection is read no further; the requests that came whole are answered, then it closes");
                        }
                        continue;
                    }
                };
                if slow_clients::bad_input(&peer, Reason::Malformed) {
                    tracing::warn!(%peer, fcgi_id = id, "FCGI_BEGIN_REQUEST for a request id already in flight on this connection (a protocol error): ignored, with that id's records, until the request in flight on it ends; {what}");
                }
            }
            // regression (probe 315): 236 of 300 requests multiplexed onto one
            // connection were refused (FCGI_OVERLOADED) with nothing in the log.
            if let Some(r) = parser.take_refused() {
                let (id, status) = r.first;
                let why = match status {
                    fcgi::ProtocolStatus::UnknownRole => "a role other than RESPONDER (AUTHORIZER, FILTER): postern only answers requests (FCGI_UNKNOWN_ROLE)".to_owned(),
                    fcgi::ProtocolStatus::CantMpxConn => "a second request while one is in flight, on a connection that takes one at a time (FCGI_CANT_MPX_CONN)".to_owned(),
                    _ => format!("more than {} requests in flight on one connection (FCGI_MAX_REQS; FCGI_OVERLOADED): the front server multiplexes past what postern takes", parser.max_reqs()),
                };
                if slow_clients::bad_input(&peer, Reason::Malformed) {
                    tracing::warn!(%peer, fcgi_id = id, refused = r.count, "FastCGI request(s) refused with END_REQUEST: {why}; the connection and its other requests go on");
                }
            }
            if parser.active() > 0 {
                stray = None;
                let _ = parser.take_stray();
            } else if let Some(id) = parser.take_stray() {
                stray.get_or_insert((id, Instant::now()));
            }
            if std::mem::take(&mut handed_in) {
                // What follows its last whole record moves to a buffer of the lane's
                // own: the one handed in may be a Python thread's, grown to take a
                // whole request (--buffer-size + --body-spool-threshold), and would stay
                // with the connection, as would every read into it, for as long as the
                // front server keeps it open.
                // regression: 150 uploads without CONTENT_LENGTH held open (900 KB
                // each, every body spooled) made a worker hold 1.3 MiB each.
                buf = BytesMut::from(&buf[..]);
            }
        }
        while let Some(ev) = backlog.pop_front() {
            let head_cut = matches!(ev, Event::ParamsTooLarge { pair: true, .. });
            let leaving = lane.idle_close.is_cancelled()
                && conn.parking.hands_over()
                && (!slots.is_empty() || !holding.is_empty());
            let step = match hold(
                ev,
                &mut holding,
                leaving,
                (&conn, &mut parser, &mut backlog, &lane),
            ) {
                Ok(step) => step,
                Err(ev) => handle_event(
                    ev,
                    &conn,
                    &mut parser,
                    &mut slots,
                    &mut backlog,
                    &info,
                    &lane,
                    &settings,
                    (&input, past),
                    &buf,
                ),
            };
            match step {
                Step::Go => {}
                Step::Answered => served += 1,
                Step::AnsweredEarly => {
                    served += 1;
                    stdin_cut = true;
                }
                Step::Ended { id, reuse } => {
                    served += 1;
                    if !done(id, reuse, &mut parser, &mut slots, &mut backlog) {
                        drain = !conn.is_broken();
                        break 'conn;
                    }
                    (closing, linger) = after_request(&lane, &conn, slots.len(), closing, linger);
                }
                Step::HandedOn => {
                    // The socket is another worker's now: only let go of it here.
                    drop(afd);
                    conn.close();
                    return;
                }
                Step::Close => break 'conn,
                Step::BadInput => {
                    // As after bad bytes (above): the read then sees EOF at once.
                    backlog.clear();
                    buf.clear();
                    bad_input = true;
                    closed_by = Some(ClosedBy::BadInput);
                }
                Step::CloseDrain => {
                    drain = true;
                    drain_head = head_cut;
                    break 'conn;
                }
            }
        }
        if conn.is_broken() {
            break 'conn;
        }
        // The requests held as this worker leaves go on with the connection once none
        // runs here (nor is begun and not held: a request still sending its PARAMS),
        // with the bytes read after them. (The rest of a body answered early may still
        // come: its id travels with them, and its worker there reads it quietly, as
        // this one would; waiting for it could be for ever.)
        if !holding.is_empty() && slots.is_empty() && backlog.is_empty() {
            let can = conn.parking.hands_over() && !eof && !bad_input && !peer_closed;
            if can && parser.active() > holding.len() {
                // Not yet: the lane reads on.
            } else {
                if can {
                    conn.ended_out(limits.read_timeout).await;
                    let read = holding.framed(&buf);
                    // Their heads are whole: what follows them is timed from now (the
                    // age of a FRESH hand-over starts the --head-timeout there).
                    let age = std::time::Duration::ZERO;
                    let why = crate::server::connection::Why::Leaving;
                    if conn.hand_on(&read, age, why, parser.late_ids()) {
                        drop(afd);
                        conn.close();
                        return;
                    }
                }
                // Nobody to take them (the whole server stops now, the front server
                // sent EOF): refused, as new requests are at the final stop.
                let mut end = Step::Go;
                for (id, keep_conn) in holding.release_all() {
                    if let Some(dropped) = HOLDING_LOG.allow() {
                        tracing::warn!(%peer, fcgi_id = id, dropped, "a FastCGI request held for the workers that serve on cannot go to them (postern stops, or the connection ends): refused (FCGI_OVERLOADED)");
                    }
                    match overloaded(&conn, &mut parser, &mut backlog, &lane, id, keep_conn) {
                        Step::Close => break 'conn,
                        Step::CloseDrain => end = Step::CloseDrain,
                        _ => {}
                    }
                }
                if matches!(end, Step::CloseDrain) {
                    drain = true;
                    break 'conn;
                }
            }
        }
        // (hostile) Unfinished PARAMS are never charged (no app would ever release
        // them); past --fastcgi-buffer on one connection (nginx and Apache send one
        // request's at a time, under --buffer-size) it is closed, not read on: 64 ids
        // of --buffer-size each made 100 connections hold 554 MiB.
        if input.params_over(parser.params_held()) {
            if slow_clients::bad_input(&peer, Reason::Oversized) {
                tracing::warn!(%peer, params = parser.params_held(), active = parser.active(), "FastCGI connection holds unfinished PARAMS over --fastcgi-buffer; closing it");
            }
            lane.refused(crate::codec::Protocol::FastCgi, None);
            break 'conn;
        }
        // Once the requests that run on it have ended: one begun in the same read as
        // the one that ended the connection is answered, not cut off (whether it was
        // depended on how the front server's bytes were split into reads).
        // regression (review 392): its app ran, and its answer was thrown away.
        if parser.close_after_replies() && backlog.is_empty() && slots.is_empty() {
            tracing::debug!(%peer, "refused or aborted request without FCGI_KEEP_CONN: closing");
            drain = true;
            drain_head = true;
            break 'conn;
        }
        if eof && slots.is_empty() && backlog.is_empty() {
            break 'conn;
        }
        // (After bad input nothing is idle: the connection ends, it is never parked.)
        let idle = !eof
            && !bad_input
            && parser.active() == 0
            && buf.is_empty()
            && backlog.is_empty()
            && stray.is_none();
        // Stopping while other workers serve on: an idle connection is theirs (parking
        // hands it over), never closed (see handover).
        let hand_over = lane.idle_close.is_cancelled() && conn.parking.hands_over();
        if idle && closing && !hand_over && linger.is_none() {
            break 'conn;
        }
        if idle && (hand_over || (!fresh_only(fresh, served) && !lane.idle_close.is_cancelled())) {
            // Idle again: the next request is the fast path's.
            drop(afd);
            // Out of the Python threads' epoll while the lane had it.
            let parking = Arc::clone(&conn.parking);
            conn.keep_begun(parser.take_begun());
            // A never-served one keeps its --head-timeout if it is handed over.
            parking.park_from_lane(conn, fresh_only(fresh, served).then_some(started));
            return;
        }
        let waiting_body = slots
            .values()
            .any(|s| s.stdin.is_some() || s.collect.is_some());
        let in_head = parser.awaiting_params()
            || (parser.active() == 0 && (!buf.is_empty() || stray.is_some()));
        head_since = match (in_head, head_since) {
            (false, _) => None,
            (true, Some(t)) => Some(t),
            (true, None) if stray.is_some() && !fresh_only(fresh, served) => stray.map(|(_, t)| t),
            // A connection that never carried a request counts from its accept.
            (true, None) if fresh_only(fresh, served) => Some(started),
            (true, None) => Some(Instant::now()),
        };
        let partial = head_since.filter(|_| {
            slots.is_empty() && (!buf.is_empty() || parser.awaiting_params() || stray.is_some())
        });
        match (partial, &head_watch) {
            (Some(t), None) => head_watch = Some(slow_clients::HeadWatch::new(&peer, t, true)),
            (None, Some(_)) => head_watch = None,
            _ => {}
        }
        // The input budget: a connection over it is not read until its apps read what
        // it holds (TCP pushes back on the front server), except while the app of one
        // of its requests waits for that request's input. Its next records may be
        // behind other requests' in the stream, so the connection is read on, and the
        // records of requests whose apps are not waiting are dropped (their reads
        // fail), not queued past the budget. Else two requests could wait for each
        // other for ever: A's app for A's STDIN, B's STDIN (ahead of A's in the
        // stream) for the Python thread A's app holds.
        // PARAMS being assembled count only next to input the apps will release: alone
        // (nothing charged yet) nothing would ever make room, and they are bounded by
        // the parser anyway (64 requests of --buffer-size at most).
        let over = (input.held() > 0 && input.over(parser.params_held())) || input.worker_over();
        // An app that reads steadily what it holds frees the budget soon: the lane
        // waits for it (until it has taken nothing for NO_PROGRESS), instead of
        // reading on and dropping its body for a request that waits.
        let now = Instant::now();
        let reader_until = if over {
            slots
                .values()
                .filter_map(|s| s.stdin.as_ref()?.0.progressing_holder(now))
                .min()
        } else {
            None
        };
        let starved = over && reader_until.is_none() && any_starved(&slots);
        let held_back = over && !starved && !peer_closed;
        // regression (audit): a body sent a byte now and then (each read within
        // --read-timeout) held its place at --max-connections for ever; listed, one
        // that comes slower than BODY_MIN_RATE is closed for a connection waiting (its
        // app's read then fails as at a close).
        // Not while postern itself holds the input back (its apps have not read it).
        let body_wait =
            waiting_body && head_watch.is_none() && !held_back && backlog.is_empty() && !eof;
        match (body_wait, &body_watch) {
            (true, None) => {
                // Wire lengths (up to 2^63 - 1 each): saturated, never overflowed.
                // regression (review of 5d7613b): a sum that overflowed panicked.
                let len = slots
                    .values()
                    .filter_map(|s| s.content_length)
                    .fold(0u64, u64::saturating_add);
                body_since = input.delivered_total();
                body_watch = Some(slow_clients::HeadWatch::stdin(&peer, len, input.reading()));
            }
            (false, Some(w)) => {
                // Picked to be closed for room since the last turn while bodies still
                // come (postern holds them back, or its apps have not read them):
                // closed, not forgotten (the pick has counted on it). Not once every
                // body is whole or the peer is gone: that close would free no place.
                if w.picked() && waiting_body && !eof {
                    w.closed_for_room().await;
                    said = true;
                    closed_by = Some(ClosedBy::Room);
                    break 'conn;
                }
                body_watch = None;
            }
            _ => {}
        }
        if let Some(w) = &body_watch {
            // Measured by the STDIN content given to the requests (not by what is read:
            // padding and record headers would pass for a body), each request's at
            // BODY_MIN_RATE.
            // regression (review of 566fbad): counted off the socket, 1 byte of STDIN
            // padded to 256 every 0.4 s passed for 640 bytes a second, and one
            // connection held 64 multiplexed requests' places at 500.
            w.set_bytes(input.delivered_total().saturating_sub(body_since));
            w.share(
                slots
                    .values()
                    .filter(|s| s.stdin.is_some() || s.collect.is_some())
                    .count(),
            );
        }
        let deadline = if eof {
            // Only the apps are waited for (their own deadline is --timeout).
            None
        } else if idle && linger.is_some() {
            linger
        } else if idle {
            (fresh_only(fresh, served)).then(|| started + limits.head_timeout)
        } else if !backlog.is_empty() || held_back {
            // Waiting for the apps to read their bodies, not for the peer.
            None
        } else if !buf.is_empty() || waiting_body || in_head {
            // A head must be whole within --head-timeout however steadily it trickles
            // (slow loris), as over uwsgi and SCGI; a body only may not pause longer
            // than --read-timeout.
            let head = head_since.map(|t| t + limits.head_timeout);
            let read = last_read + limits.read_timeout;
            Some(head.map_or(read, |h| h.min(read)))
        } else {
            None
        };
        // A held END_REQUEST goes out once its STDIN has paused for HOLD_GAP.
        let held_until = slots
            .values()
            .filter_map(|s| s.held.as_ref().map(|h| h.until))
            .min();
        let deadline = match (deadline, held_until) {
            (Some(d), Some(h)) => Some(d.min(h)),
            (d, h) => d.or(h),
        };
        let fired = deadline;
        let deadline = match (deadline, grace) {
            (Some(d), Some((of, until))) if of == d => Some(until),
            (d, _) => d,
        };
        // A request (or record) unfinished after a read: its rest may wait for our ACK
        // (see FcgiConn::ack_now).
        if acked_at != Some(served) && (in_head || waiting_body || !buf.is_empty()) && !eof {
            conn.ack_now();
            acked_at = Some(served);
        }
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        let budget = async {
            match (held_back, reader_until) {
                (false, _) => std::future::pending().await,
                (true, None) => input.changed().await,
                // Or that reader stops counting as one.
                (true, Some(t)) => {
                    let _ = tokio::time::timeout_at(t.into(), input.changed()).await;
                }
            }
        };
        tokio::select! {
            biased;
            ctl = ctl_rx.recv() => {
                let Some(ctl) = ctl else { break 'conn };
                if let Some((id, reuse)) = ended(ctl, &conn, &mut slots) {
                    served += 1;
                    if !done(id, reuse, &mut parser, &mut slots, &mut backlog) {
                        drain = !conn.is_broken();
                        break 'conn;
                    }
                    (closing, linger) = after_request(&lane, &conn, slots.len(), closing, linger);
                }
            }
            // An app read what this connection holds, or waits for input: look again.
            _ = budget => {}
            // regression (probe 347 HIGH): a body of 1-1.5 MiB came whole with its head
            // (assembled in memory, charged to the budget until its request ends), so the
            // connection stayed held back and was never read again: an ASGI app waiting
            // for http.disconnect never got it when nginx closed the connection, and its
            // task held its place until --timeout killed the worker.
            closed = closed_while_held(&afd), if held_back && !eof => {
                if closed {
                    tracing::debug!(%peer, "the front server closed the FastCGI connection while its input was held back for --fastcgi-buffer: reading what is left");
                    peer_closed = true;
                }
            }
            r = async {
                if bad_input { Ok(0) } else { read_some(&afd, &mut buf).await }
            }, if backlog.is_empty() && !held_back && !eof => {
                match r {
                    Ok(0) => {
                        // A half-close (shutdown(SHUT_WR) after the last request, as a
                        // client may do) or a full close: which one, only a write can
                        // tell. Requests that came whole are answered either way (the
                        // writes fail on a full close: the client gone, as before).
                        let ended = input_ended(&conn, &mut parser, &mut slots, &peer, bad_input);
                        if !ended.answering.is_empty() || !ended.held.is_empty() {
                            eof = true;
                            if bad_input {
                                tracing::debug!(%peer, answering = ?ended.answering, cut = ?ended.cut, "after bad FastCGI input: answering the requests that came whole, then closing");
                            } else if conn.shut_by_answer() {
                                // Its close after the last answer at the stop, read
                                // before that answer's end was told to this reader.
                                tracing::debug!(%peer, answering = ?ended.answering, "the front server closed the FastCGI connection after its last answer at the stop");
                            } else if ended.cut.is_empty()
                                && ended.held.is_empty()
                                && ended.answering.iter().all(|id| {
                                    slots.get(id).is_some_and(|s| s.flags.done.load(Ordering::Acquire))
                                })
                            {
                                // Every END_REQUEST is out already, its end not yet told
                                // to this reader: Apache (mod_proxy_fcgi without
                                // enablereuse) closes as soon as it has read it.
                                // regression (probe 410): an INFO line for 15 requests in
                                // 200, which read as if they had been affected.
                                tracing::debug!(%peer, answering = ?ended.answering, "the front server closed the FastCGI connection after its answers");
                            } else {
                                tracing::info!(%peer, answering = ?ended.answering, cut = ?ended.cut, partial_record = buf.len(), "the front server closed its side of the FastCGI connection: answering the requests that came whole, then closing");
                            }
                            let in_flight = slots.len();
                            for (id, h) in ended.held {
                                let reuse = release(&conn, in_flight, id, h);
                                served += 1;
                                if !done(id, reuse, &mut parser, &mut slots, &mut backlog) {
                                    drain = !conn.is_broken();
                                    break 'conn;
                                }
                                conn.set_lane_requests(slots.len());
                            }
                            continue 'conn;
                        }
                        // (After bad input, said when it came; `buf` was emptied.)
                        if parser.awaiting_params() && !bad_input {
                            // A head cut short: as over uwsgi and SCGI, bad input.
                            // regression (probe 380): said at debug, as a client's abort
                            // of a request in flight is.
                            if slow_clients::bad_input(&peer, Reason::Truncated) {
                                tracing::warn!(%peer, params = parser.params_held(), partial_record = buf.len(), "the front server closed the FastCGI connection before a request's head (BEGIN_REQUEST and its PARAMS) was whole; closing");
                            }
                        } else if parser.active() > 0 && !bad_input {
                            // A client's abort (nginx closes the connection): ordinary
                            // traffic, which each request's access line tells; at info
                            // it was one line per abort, unlimited (probe 321).
                            tracing::debug!(%peer, active = parser.active(), "the front server closed the FastCGI connection with requests in flight");
                        } else if !buf.is_empty()
                            && !stdin_cut
                            && !parser.late_record(&buf)
                            && !ended.collected_cut
                        {
                            // (A cut collected body's partial record: its WARN, once.)
                            // regression: one cut gave that WARN and this one, and
                            // counted twice among the truncated inputs.
                            if slow_clients::bad_input(&peer, Reason::Truncated) {
                                tracing::warn!(%peer, got = buf.len(), "the front server closed the FastCGI connection in the middle of a record");
                            }
                        } else if !buf.is_empty() {
                            // After an END_REQUEST sent without its STDIN's end, nginx
                            // closes the connection wherever its body stopped.
                            tracing::debug!(%peer, got = buf.len(), "the front server closed the FastCGI connection in the middle of a record, after an END_REQUEST sent without the end of its STDIN");
                        }
                        // Nothing in flight here, but a kept request's sink tells its end
                        // (Ctl::Done) before it writes END_REQUEST: the socket closes
                        // with the last reference, as once every request is answered,
                        // not now (that would cut such an END_REQUEST).
                        // regression: after bad PARAMS behind whole requests, an
                        // answer was lost in 2 to 10 rounds of 100 ('client went away',
                        // bytes=0).
                        eof = slots.is_empty();
                        break 'conn;
                    }
                    Ok(_) => {
                        last_read = Instant::now();
                        past = over;
                    }
                    Err(e) => {
                        // A reset in the middle of a request's input is the front
                        // server's doing, logged where a FIN is (above), at the level
                        // uwsgi and SCGI log theirs. With every request in flight whole
                        // (being answered, or its END_REQUEST held), it is the client
                        // going away: nginx closes its kept connection when its client
                        // aborts; each such request's access line says so (its writes
                        // fail), as over uwsgi. Between requests, as quietly as a FIN.
                        // regression: a download its client left behind nginx
                        // (fastcgi_keep_conn on) gave this WARN, counted as bad input.
                        // (The rest of a body answered early is no request's input:
                        // nginx closes wherever it stopped.)
                        let late_only = parser.active() == 0 && parser.late_record(&buf);
                        if input_arriving(&parser, &slots, &buf) && !late_only {
                            said = true;
                            if slow_clients::bad_input(&peer, Reason::Truncated) {
                                tracing::warn!(%peer, error = %e, active = parser.active(), partial_record = buf.len(), "the FastCGI connection failed in the middle of a request (the front server reset it?); closing");
                            }
                        } else if parser.active() > 0 {
                            tracing::debug!(%peer, error = %e, active = parser.active(), "the FastCGI connection failed while its requests were being answered (the front server closed it: its client went away); closing");
                        } else {
                            tracing::debug!(%peer, error = %e, "reading an idle FastCGI connection failed");
                        }
                        break 'conn;
                    }
                }
            }
            // Closed to let a waiting connection in (its line is logged there, through
            // the bad-input limit).
            () = async {
                match &head_watch {
                    Some(w) => w.closed_for_room().await,
                    None => std::future::pending().await,
                }
            } => {
                said = true;
                closed_by = Some(ClosedBy::Room);
                break 'conn;
            }
            () = async {
                match &body_watch {
                    Some(w) => w.closed_for_room().await,
                    None => std::future::pending().await,
                }
            } => {
                said = true;
                closed_by = Some(ClosedBy::Room);
                break 'conn;
            }
            _ = sleep => {
                let now = Instant::now();
                let due: Vec<u16> = slots
                    .iter()
                    .filter(|(_, s)| s.held.as_ref().is_some_and(|h| h.until <= now))
                    .map(|(&id, _)| id)
                    .collect();
                if !due.is_empty() {
                    // The front server stopped sending the body after the response:
                    // END_REQUEST goes out without its end (the rest of its STDIN,
                    // if any comes, is ignored).
                    stdin_cut = true;
                    for id in due {
                        let in_flight = slots.len();
                        let Some(h) = slots.get_mut(&id).and_then(|s| s.held.take()) else {
                            continue;
                        };
                        tracing::debug!(%peer, fcgi_id = id, "no more STDIN after the response for {HOLD_GAP:?}: END_REQUEST sent without the body's end");
                        let reuse = release(&conn, in_flight, id, h);
                        served += 1;
                        if !done(id, reuse, &mut parser, &mut slots, &mut backlog) {
                            drain = !conn.is_broken();
                            break 'conn;
                        }
                        (closing, linger) = after_request(&lane, &conn, slots.len(), closing, linger);
                    }
                    continue 'conn;
                }
                if let Some(d) = fired.filter(|&d| grace.is_none_or(|(of, _)| of != d)) {
                    if !eof && !bad_input && input_waits(&afd).await {
                        grace = Some((d, Instant::now() + STOPPED_GRACE));
                        continue 'conn;
                    }
                }
                if idle && linger.is_some() && conn.is_ending() {
                    // Idle to the reader, but the END_REQUEST announced to it is still
                    // going out (the front server reads slowly): not closed under it.
                    linger = at_stop_linger(&conn).or(Some(Instant::now() + LINGER));
                    continue 'conn;
                }
                // Not past the stop's time for kept connections (half --graceful-timeout).
                let kept_until = conn.parking.stop_kept_until();
                let wait_until = kept_until.map(|k| k.min(Instant::now() + NUDGE_WAIT));
                if idle
                    && linger.is_some()
                    && !nudged
                    && wait_until.is_some_and(|w| w > Instant::now())
                    && tokio::task::block_in_place(|| conn.nudges_at_stop())
                {
                    // nginx is asked to close it (its close, or a request sent
                    // meanwhile, comes within NUDGE_WAIT).
                    // regression (hostile): closed here under a POST nginx had just
                    // sent on it: a 502 about one graceful stop in ten under load.
                    nudged = true;
                    if tokio::task::block_in_place(|| conn.nudge()) {
                        tracing::debug!(%peer, "an idle FastCGI connection at the stop: asking nginx to close it");
                        linger = wait_until;
                        continue 'conn;
                    }
                }
                if idle && linger.is_some() {
                    tracing::debug!(%peer, "closing an idle FastCGI connection: stopping, and no request came");
                } else if idle {
                    // Named for the first few only: a flood is summed up.
                    if slow_clients::name(&peer, limits.head_timeout) {
                        tracing::warn!(%peer, "no FastCGI request within {:?} (--head-timeout); closing", limits.head_timeout);
                    }
                } else if let Some((id, _)) =
                    stray.filter(|_| head_since.is_some_and(|t| t.elapsed() >= limits.head_timeout))
                {
                    if slow_clients::name(&peer, limits.head_timeout) {
                        tracing::warn!(%peer, fcgi_id = id, "FastCGI records for a request id no BEGIN_REQUEST named, and no request within {:?} (--head-timeout); closing", limits.head_timeout);
                    }
                } else if head_since.is_some_and(|t| t.elapsed() >= limits.head_timeout) {
                    if slow_clients::name(&peer, limits.head_timeout) {
                        tracing::warn!(%peer, "no complete FastCGI request head within {:?} (--head-timeout); closing", limits.head_timeout);
                    }
                } else {
                    said = true;
                    closed_by = Some(ClosedBy::ReadTimeout);
                    if !slow_clients::bad_input(&peer, Reason::Truncated) {
                        // Counted for the window's summary.
                    } else if write_stuck(&conn) {
                        // Both ways stalled: say so, the read direction alone would
                        // send the operator looking at the wrong side.
                        tracing::warn!(%peer, "the front server sent nothing for {:?} (--read-timeout) in the middle of a request, and a response written to it waits for it to read (the connection has no room); closing", limits.read_timeout);
                    } else {
                        tracing::warn!(%peer, "the front server sent nothing for {:?} (--read-timeout) in the middle of a request; closing", limits.read_timeout);
                    }
                }
                break 'conn;
            }
            _ = lane.idle_close.cancelled(), if parser.active() == 0 && !closing => {
                closing = true;
                if buf.is_empty() && !conn.parking.hands_over() {
                    linger = at_stop_linger(&conn).or(Some(idle_linger(&conn)));
                }
            }
        }
    }
    // A kept request that told its end early (`Ctl::Done` before its last records, so
    // that its id is free when they arrive) may still be writing them: however the
    // connection ends here (a drain's shut write side, the shutdown after bad input,
    // --head-timeout or --read-timeout), its END_REQUEST is not cut (its send is bounded
    // by its own timeout; this wait by --read-timeout too).
    // regression (review 395, a race): a refusal without FCGI_KEEP_CONN right after
    // such a Done closed the connection under that END_REQUEST.
    // regression (review 413 F1): bad input, or a head left partial past
    // --head-timeout, after a kept response that the front server read slowly cut that
    // response (its END_REQUEST never went out) and logged 'client went away'.
    conn.ended_out(limits.read_timeout).await;
    // Requests held for the serving workers when the connection ends here (a request
    // without FCGI_KEEP_CONN ended it, EOF or a reset in the middle of a head, a
    // timeout, a close for room): refused, never dropped unsaid.
    if !holding.is_empty() {
        let ids = holding.release_all();
        let mut out = Vec::new();
        for &(id, _) in &ids {
            fcgi::encode_end_request(&mut out, id, 0, ProtocolStatus::Overloaded);
        }
        let written = !conn.is_broken() && blocking_write(&conn, &out).is_ok();
        let ids: Vec<u16> = ids.iter().map(|&(id, _)| id).collect();
        tracing::warn!(%peer, held = ?ids, refused = written, "the FastCGI connection ends while requests on it were held for the workers that serve on: they are not served (refused FCGI_OVERLOADED when that could still be written)");
    }
    if drain {
        // A request without FCGI_KEEP_CONN ends its connection (§2.3), and with it the
        // others multiplexed on it (nginx and Apache never multiplex): those whose
        // END_REQUEST is not out by now.
        // regression (review 395): every request still listed was said to be cut off,
        // also those answered whole meanwhile (183 of the 279 named in one run).
        let mut cut: Vec<u16> = slots
            .iter()
            .filter(|(_, s)| !s.flags.done.load(Ordering::Acquire))
            .map(|(&id, _)| id)
            .collect();
        if !cut.is_empty() {
            cut.sort_unstable();
            tracing::warn!(%peer, cut = ?cut, "a FastCGI request without FCGI_KEEP_CONN ended, and with it its connection: the other requests multiplexed on it that were not answered yet are cut off");
        }
        let _ = conn.sock.shutdown(std::net::Shutdown::Write);
        let now = Instant::now();
        let mut deadline = now + limits.read_timeout;
        if drain_head {
            // The rest of a head: within --head-timeout of its start, as any head.
            // regression (review of 2078b75): a pair of 2 GiB refused at its lengths was
            // then read for --read-timeout (60 s), where before it was closed at
            // --head-timeout (5 s).
            let head_from = head_since.or(fresh_only(fresh, served).then_some(started));
            deadline = deadline.min(head_from.unwrap_or(now) + limits.head_timeout);
        }
        // Listed while it drains (its head's watch, if any, with it): at
        // --max-connections a connection waiting may take its place once nothing has
        // come on it for a second (each read refreshes it).
        head_watch = None;
        body_watch = None;
        let watch = slow_clients::HeadWatch::draining(&peer);
        let mut total = 0usize;
        let mut heard = Instant::now();
        while total < 1 << 30 {
            buf.clear();
            // Once the worker stops (or leaves), a peer that holds the connection open
            // with nothing more to send is not waited for: the response is out, only a
            // body still coming is read on (each read within LINGER of the last).
            // regression: the drain counted as a request still being read, and the
            // stop waited --graceful-timeout for it, then exited 1 ("cut off").
            let stopping = lane.idle_close.is_cancelled();
            let until = if stopping {
                // Within the stop's time for kept connections, too (a short
                // --graceful-timeout): the answer is out, nothing is cut.
                let until = deadline.min(heard + LINGER);
                conn.parking
                    .stop_kept_until()
                    .map_or(until, |kept| until.min(kept))
            } else {
                deadline
            };
            let read = tokio::select! {
                r = tokio::time::timeout_at(until.into(), read_some(&afd, &mut buf)) => r,
                // (Its line is logged there.)
                () = watch.closed_for_room() => break,
                // Looked at again with the stop's bound (read_some is cancel-safe).
                () = lane.idle_close.cancelled(), if !stopping => {
                    heard = heard.max(Instant::now());
                    continue;
                }
            };
            match read {
                Ok(Ok(n)) if n > 0 => {
                    total += n;
                    heard = Instant::now();
                    // Still receiving: closed for room only once silent for a second.
                    watch.heard();
                }
                _ => break,
            }
        }
    }
    drop(head_watch);
    drop(body_watch);
    // Readers of bodies still streaming see the cut; sinks still writing see a closed
    // connection; the socket closes once they are done with it.
    let answered_all = eof && slots.is_empty() && !drain;
    for (_, s) in slots.drain() {
        // When the connection's end was said through the bad-input limit by this lane
        // (a reset, --read-timeout, bad input, a close for room), its app's failed read
        // is named if a line is left, not counted again.
        // regression (review): each request cut by a reset was counted twice in the
        // summary (60 resets: "100 more clients").
        // postern's close is put only on a request whose body still came: one whole,
        // on a connection another request's body had postern close (multiplexed), is
        // not blamed on it. regression (review 378): a GET beside a stalled upload
        // read 'closed by postern: the request body stalled'.
        if let Some(feed) = &s.stdin {
            let mut st = feed.0.lock();
            st.counted = said || bad_input;
            st.closed_by = closed_by;
            if let Some(by) = closed_by {
                s.flags.closed_by.store(by.bits(), Ordering::Release);
            }
        }
        s.flags.abort();
        if let Some(c) = &s.collect {
            collect_cut(c, None, closed_by);
        }
    }
    conn.close();
    if answered_all {
        // After EOF, every request answered: the socket closes (a FIN) with the last
        // reference, once a kept request's END_REQUEST, announced to this task before
        // it is written, is out. A shutdown now could cut it.
        return;
    }
    conn.abort_soft();
}

/// What the front server's EOF did to the requests on the connection.
#[derive(Default)]
struct InputEnded {
    /// Requests that came whole (their app runs or waits for a thread): answered.
    answering: Vec<u16>,
    /// Requests whose body the EOF cut: their app's read fails (the client gone).
    cut: Vec<u16>,
    /// Responses already out whose END_REQUEST waited for the end of their STDIN: it
    /// goes out now.
    held: Vec<(u16, Held)>,
    /// A body being collected was cut: its WARN is logged ([`collect_cut`]).
    collected_cut: bool,
}

/// The front server sent EOF: no STDIN comes any more. A request that came whole (or
/// whose body has all of its CONTENT_LENGTH) goes on and is answered, its app's
/// waiting `receive()` told of the disconnect; one whose body is cut is the client
/// gone (as at FCGI_ABORT_REQUEST), one whose body was being collected is dropped.
fn input_ended(
    conn: &FcgiConn,
    parser: &mut ConnParser,
    slots: &mut FxHashMap<u16, Slot>,
    peer: &str,
    counted: bool,
) -> InputEnded {
    let mut out = InputEnded::default();
    let ids: Vec<u16> = slots.keys().copied().collect();
    for id in ids {
        let Some(slot) = slots.get_mut(&id) else {
            continue;
        };
        if slot.collect.is_some() {
            // Its app never ran: nothing to answer.
            if let Some(c) = slots.remove(&id).and_then(|s| s.collect) {
                collect_cut(&c, Some(peer), counted.then_some(ClosedBy::BadInput));
                out.collected_cut = true;
            }
            parser.finished(id);
            if let Some(p) = conn.permit() {
                p.served();
            }
            out.cut.push(id);
            continue;
        }
        slot.stdin_over();
        if let Some(h) = slot.held.take() {
            out.held.push((id, h));
            continue;
        }
        match slot.stdin.take() {
            Some(feed) if slot.content_length.is_none_or(|cl| slot.got < cl) => {
                // After bad input the close is postern's, also for an app that is not
                // reading its body (review 378: it said the client went away).
                if counted {
                    slot.flags
                        .closed_by
                        .store(ClosedBy::BadInput.bits(), Ordering::Release);
                }
                slot.flags.abort();
                // The app's failed read names it, through the bad-input limit (counted
                // already when bad input before the EOF was).
                // regression (review): after bad input, counted twice.
                {
                    let mut st = feed.0.lock();
                    st.counted = counted;
                    // After bad input, the close is postern's (its line says why).
                    st.closed_by = counted.then_some(ClosedBy::BadInput);
                }
                drop(feed);
                out.cut.push(id);
            }
            Some(feed) => {
                // All of CONTENT_LENGTH came, only the empty STDIN record did not.
                feed.0.end();
                slot.flags.input_closed();
                out.answering.push(id);
            }
            // Whole, or its app stopped reading it.
            None => {
                slot.flags.input_closed();
                out.answering.push(id);
            }
        }
    }
    conn.set_lane_requests(slots.len());
    out.answering.sort_unstable();
    out.cut.sort_unstable();
    out
}

/// A request whose body was being collected ([`Collect`]), its app never run, ends
/// with its connection: its access line (status 0, the client gone), as a uwsgi or
/// SCGI body cut before its app runs has, and with `peer` (the front server's EOF) the
/// WARN line such a cut has there (the other ends, a reset or --read-timeout, log
/// their own).
/// regression: a chunked upload nginx does not buffer, cut by the client, left no line
/// at all, where the same with CONTENT_LENGTH (its app reading) left the app's WARN
/// and an access line.
/// With `by`, postern closed the connection itself (its line said why): the request's
/// lines say so, not that the front server closed it.
/// regression (review 377): they said it had, after --read-timeout or bad input.
fn collect_cut(c: &Collect, peer: Option<&str>, by: Option<ClosedBy>) {
    let _in = c.span.enter();
    if let Some(by) = by {
        tracing::debug!(got = c.got, "could not read the request body: {} (a body without CONTENT_LENGTH, collected before the app runs); the request is dropped", by.says());
        crate::server::span::closed_access(
            &c.head,
            &c.request_id,
            crate::codec::Protocol::FastCgi,
            by.ending(),
            c.started,
        );
        return;
    }
    if peer.is_some_and(|p| slow_clients::bad_input(p, Reason::Truncated)) {
        tracing::warn!(got = c.got, "could not read the request body: the front server closed the connection before its end (a body without CONTENT_LENGTH, collected before the app runs); the request is dropped");
    }
    crate::server::span::refused_access(
        &c.head,
        &c.request_id,
        crate::codec::Protocol::FastCgi,
        0,
        None,
        c.started,
    );
}

/// Some request's input is still arriving on the connection: a record in part
/// (`rest`), a PARAMS stream, or a STDIN whose end has not come and whose response is
/// not done (a held END_REQUEST is a response out; nginx sends no more of a body once
/// it has the response head).
fn input_arriving(parser: &ConnParser, slots: &FxHashMap<u16, Slot>, rest: &BytesMut) -> bool {
    !rest.is_empty()
        || parser.awaiting_params()
        || slots
            .values()
            .any(|s| s.collect.is_some() || (s.stdin_open && s.held.is_none()))
}

/// What a request's sink told: `(id, reuse)` when the request ended (its id is free
/// once [`done`]), `None` when its END_REQUEST waits for its STDIN's end.
fn ended(ctl: Ctl, conn: &Arc<FcgiConn>, slots: &mut FxHashMap<u16, Slot>) -> Option<(u16, bool)> {
    match ctl {
        Ctl::Done { id, reuse } => Some((id, reuse)),
        Ctl::Held {
            id,
            tail,
            keep_conn,
        } => {
            let held = Held {
                tail,
                keep_conn,
                until: Instant::now() + HOLD_GAP,
            };
            let in_flight = slots.len();
            match slots.get_mut(&id) {
                Some(slot) if slot.stdin_open => {
                    // The app is done: the rest of its body is read and dropped, and
                    // what it left unread no longer counts against the input budget
                    // (else the lane could stop reading before STDIN's end).
                    if let Some(feed) = slot.stdin.take() {
                        feed.0.cut_for(true);
                    }
                    slot.held = Some(held);
                    None
                }
                _ => Some((id, release(conn, in_flight, id, held))),
            }
        }
    }
}

/// Sends request `id`'s records through END_REQUEST, held until its STDIN ended
/// (`in_flight`: requests on the connection, this one included). True when the
/// connection serves on.
fn release(conn: &Arc<FcgiConn>, in_flight: usize, id: u16, held: Held) -> bool {
    // At the final stop the only request's END_REQUEST leaves with the FIN (one that
    // lingers: while unread).
    let at_stop = if held.keep_conn && in_flight <= 1 {
        conn.at_stop()
    } else {
        AtStop::ServesOn
    };
    let ok = tokio::task::block_in_place(|| conn.send_end(at_stop, id, &[], &held.tail));
    if !ok {
        tracing::debug!("the front server closed the connection before END_REQUEST");
        conn.abort();
    }
    held.keep_conn && ok
}

/// A request's sink is done with it: its id is free. False when the connection ends.
fn done(
    id: u16,
    reuse: bool,
    parser: &mut ConnParser,
    slots: &mut FxHashMap<u16, Slot>,
    backlog: &mut VecDeque<Event>,
) -> bool {
    parser.finished(id);
    slots.remove(&id);
    backlog.retain(
        |ev| !matches!(ev, Event::Stdin { id: i, .. } | Event::StdinEnd { id: i } if *i == id),
    );
    reuse
}

/// A request on the connection ended (`left` are still in flight): at the final stop
/// (nobody to hand it to) the connection closes as soon as it is idle when its answer
/// closed it; one that lingers once it has been idle for [`IDLE_AT_STOP`] (also after
/// an answer that closed it: the front server's next check finds it closed); one whose
/// answer did not close it waits [`LINGER`] as an idle one at the stop.
/// Returns the new (`closing`, `linger`).
fn after_request(
    lane: &SlowLane,
    conn: &FcgiConn,
    left: usize,
    closing: bool,
    linger: Option<Instant>,
) -> (bool, Option<Instant>) {
    conn.set_lane_requests(left);
    if lane.idle_close.is_cancelled() && !conn.parking.hands_over() {
        // An answer that went out as the stop began, without the close (its
        // END_REQUEST was written before the sink saw the stop): the front server may
        // have cached the connection and sent its next request already, so it is
        // kept as an idle one at the stop (LINGER), not closed under that request.
        // regression (hostile): nginx sent its next request on it, then met the close
        // ("upstream prematurely closed connection": a POST's 502), about one stop in
        // thirty over TCP under load.
        let linger =
            at_stop_linger(conn).or_else(|| (!conn.shut_by_answer()).then(|| idle_linger(conn)));
        (true, linger)
    } else {
        (closing, linger)
    }
}

/// At the final stop, until when an idle kept connection waits for a last request
/// ([`LINGER`]), within the stop's time for kept connections (half
/// `--graceful-timeout`): an idle connection is not a request the stop cuts off.
// regression (hostile): with --graceful-timeout 1 an idle kept connection (a peer
// other than nginx) outlived the stop's deadline: "requests still being read …
// cut off", exit code 1, with nothing cut.
fn idle_linger(conn: &FcgiConn) -> Instant {
    let linger = Instant::now() + LINGER;
    conn.parking
        .stop_kept_until()
        .map_or(linger, |kept| linger.min(kept))
}

/// At the final stop, until when an idle connection is kept from now: none for one
/// that closes once idle, [`IDLE_AT_STOP`] for one that lingers.
fn at_stop_linger(conn: &FcgiConn) -> Option<Instant> {
    conn.lingers_at_stop()
        .then(|| Instant::now() + IDLE_AT_STOP)
}

/// A connection that has never carried a whole request stays with the slow lane until
/// it has (it is still under `--head-timeout`).
fn fresh_only(fresh: bool, served: u64) -> bool {
    fresh && served == 0
}

/// While the lane holds a connection's input back: returns true once the front server
/// has closed it (its FIN or a reset, seen by the poller without reading), false after
/// a while when bytes wait unread (readiness is left set for [`read_some`], so this
/// looks again each time it is called rather than waiting for the next edge).
async fn closed_while_held(afd: &AsyncFd<ConnFd>) -> bool {
    match afd.ready(tokio::io::Interest::READABLE).await {
        Ok(g) if g.ready().is_read_closed() => true,
        Ok(_) => {
            // Readable with bytes the budget holds back: a FIN behind them raises the
            // read-closed bit on the next event, looked at within this.
            tokio::time::sleep(HELD_LOOK).await;
            false
        }
        Err(_) => true,
    }
}

/// How often [`closed_while_held`] looks at a held-back connection with bytes waiting.
const HELD_LOOK: std::time::Duration = std::time::Duration::from_millis(500);

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
    /// A request was answered here, its app never run (a 400 or 413, a body dropped
    /// at FCGI_ABORT_REQUEST); the connection serves on. It has carried a request:
    /// no longer bound by `--head-timeout` from its accept.
    Answered,
    /// As [`Step::Answered`], before the end of the request's STDIN: the front server
    /// may close the connection wherever that body then stands (nginx does: it keeps no
    /// connection it did not send a whole request on), and that close is no bad input.
    AnsweredEarly,
    /// Request `id`'s END_REQUEST, held for its STDIN's end, went out (`reuse`: the
    /// connection serves on).
    Ended {
        id: u16,
        reuse: bool,
    },
    /// The connection went to the workers that serve on, with the bytes read.
    HandedOn,
    Close,
    /// Answered without FCGI_KEEP_CONN: close once the front server has sent the rest.
    CloseDrain,
    /// Bad input with other requests in flight: nothing after it is acted on or read;
    /// the requests that came whole are answered, then the connection closes.
    BadInput,
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
    (input, past): (&Arc<ConnInput>, bool),
    rest: &BytesMut,
) -> Step {
    let peer = &conn.peer;
    // Read past the input budget (for a request whose app waits): nothing new may
    // pile up meanwhile.
    let past = past && (input.over(0) || input.worker_over());
    match ev {
        Event::Reply(bytes) => {
            if let Err(e) = tokio::task::block_in_place(|| conn.write_reply(&bytes)) {
                // regression (probe 380): a flood of management records whose replies
                // the front server never read was closed at --read-timeout unsaid.
                if e.kind() == io::ErrorKind::TimedOut {
                    if slow_clients::bad_input(peer, Reason::Truncated) {
                        tracing::warn!(%peer, error = %e, "the front server read none of postern's replies to its FastCGI management records (FCGI_GET_VALUES, unknown record types) for --read-timeout; closing");
                    }
                } else {
                    tracing::debug!(%peer, error = %e, "replying to a FastCGI management record failed (the front server closed the connection); closing");
                }
                return Step::Close;
            }
            Step::Go
        }
        Event::ParamsTooLarge {
            id,
            keep_conn,
            size,
            limit,
            logged,
            pair,
        } => {
            // Framed right (Apache sends PARAMS in 16 KiB records), only too large: the
            // request is answered 431 as over SCGI, the connection and its other
            // requests go on. Its PARAMS were dropped as they came (`pair`: refused as
            // soon as one pair announced more than the limit; the rest is ignored).
            let e = if pair {
                ProtoError::FcgiPairTooLarge { id, size, limit }
            } else {
                ProtoError::FcgiParamsTooLarge { id, size, limit }
            };
            let whole = backlog
                .iter()
                .any(|ev| matches!(ev, Event::StdinEnd { id: i } if *i == id));
            backlog.retain(
                |ev| !matches!(ev, Event::Stdin { id: i, .. } | Event::StdinEnd { id: i } if *i == id),
            );
            // In the request's span, which names the peer.
            let log = || {
                if slow_clients::bad_input(peer, Reason::Oversized) {
                    tracing::warn!(error = %e, "request head too large; answered 431");
                }
            };
            let refused = Refusal {
                conn,
                lane,
                id,
                keep_conn,
                started: Instant::now(),
            };
            // Named in the access line by the method and path found among what was dropped.
            let step = refused.answer(
                parser,
                logged,
                log,
                (431, "Request Header Fields Too Large"),
            );
            match step {
                Step::Answered if !whole => Step::AnsweredEarly,
                step => step,
            }
        }
        Event::Params {
            id,
            keep_conn,
            params,
        } if past => {
            drop(params);
            tracing::warn!(%peer, fcgi_id = id, held = input.held(), "FastCGI connection over --fastcgi-buffer: new request refused (FCGI_OVERLOADED)");
            overloaded(conn, parser, backlog, lane, id, keep_conn)
        }
        // The whole server stops (nobody serves on) and the connection has requests in
        // flight: a new one multiplexed onto it (a new id, FCGI_MPXS_CONNS) is refused,
        // the ones in flight finish. Served, a client that keeps multiplexing would
        // hold the stop up to --graceful-timeout. (A worker that leaves while others
        // serve on, at a reload or a recycle, serves it: its connection goes on there
        // once idle.) An idle connection's last request is served as before.
        // regression: at the final stop a new id on a connection whose request ran
        // inline was never read: the connection closed after that request's
        // END_REQUEST, with nothing for the new one and nothing in the log.
        Event::Params {
            id,
            keep_conn,
            params,
        } if lane.idle_close.is_cancelled() && !conn.parking.hands_over() && !slots.is_empty() => {
            drop(params);
            if let Some(dropped) = STOPPING_LOG.allow() {
                tracing::warn!(%peer, fcgi_id = id, in_flight = slots.len(), dropped, "new FastCGI request multiplexed onto a connection while postern stops: refused (FCGI_OVERLOADED); the requests in flight on the connection finish");
            }
            overloaded(conn, parser, backlog, lane, id, keep_conn)
        }
        Event::Params {
            id,
            keep_conn,
            params,
        } => {
            // The request's head keeps a copy of its PARAMS (at most --buffer-size), not
            // a view of the buffer they were read into: that view would keep the whole
            // buffer (up to --buffer-size + --body-spool-threshold, when a Python thread
            // read it) for as long as the request lasts, a body being collected or
            // streamed at the front server's pace included.
            let params = Bytes::copy_from_slice(&params);
            // The whole body already here (the usual case): hand it over in one piece.
            let stdin = take_whole_stdin(backlog, id);
            // The request's time (its access line's, here or in the worker it is
            // handed to) runs from its whole head, not from the lane's start on the
            // connection. regression (review 428): handed on, it counted the
            // connection's earlier requests (an upload answered early) too.
            let started = Instant::now();
            let assembled = match assemble(params.clone(), stdin.clone(), lane.limits.max_body) {
                Ok(a) => {
                    if keep_conn {
                        conn.note_front(&a.head);
                    }
                    a
                }
                Err(e @ Refused::Params(_)) => {
                    lane.refused(crate::codec::Protocol::FastCgi, None);
                    if slots.is_empty() {
                        if slow_clients::bad_input(peer, Reason::Malformed) {
                            tracing::warn!(%peer, error = %e, "bad FastCGI params; closing the connection");
                        }
                        return Step::Close;
                    }
                    // Other requests are in flight: the bad input ends the connection
                    // as bad bytes do (serve's `bad_input`), so the requests that came
                    // whole before it are answered first.
                    // regression: closed at once, their apps ran and their answers were
                    // lost ('client went away', bytes=0), where a wrong version byte in
                    // the same place had them answered.
                    if slow_clients::bad_input(peer, Reason::Malformed) {
                        tracing::warn!(%peer, fcgi_id = id, error = %e, "bad FastCGI params: answering the requests that came whole before it, then closing the connection");
                    }
                    parser.finished(id);
                    return Step::BadInput;
                }
                Err(refused) => {
                    let reason = match &refused {
                        Refused::TooLarge { .. } => Reason::Oversized,
                        Refused::Truncated { .. } => Reason::Truncated,
                        _ => Reason::Malformed,
                    };
                    let log = || {
                        if !slow_clients::bad_input(peer, reason) {
                            return;
                        }
                        match &refused {
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
                        Refused::Truncated { got, expected } => tracing::warn!(got, content_length = expected, "STDIN ended before CONTENT_LENGTH bytes (the front server lost its client mid-body, or sent a wrong CONTENT_LENGTH): the body is incomplete; answered 400 without calling the app"),
                        e => tracing::warn!(error = %e, "answered 400"),
                    }
                    };
                    let status = refused.status().unwrap_or(BAD_REQUEST);
                    let refusal = Refusal {
                        conn,
                        lane,
                        id,
                        keep_conn,
                        started,
                    };
                    let step = refusal.answer(parser, params, log, status);
                    // (`stdin`: the whole body came with the head.)
                    // regression: a POST over --max-body through nginx with keep-conn was
                    // answered 413 and then logged 'the front server closed the FastCGI
                    // connection in the middle of a record' (WARN, bad input) as nginx
                    // closed the connection mid-body.
                    return match step {
                        Step::Answered if stdin.is_none() => Step::AnsweredEarly,
                        step => step,
                    };
                }
            };
            let Assembled {
                head,
                body,
                announced: content_length,
                excess,
            } = assembled;
            // Its head is whole: --max-requests counts it from here (once per
            // connection at a time; counted already when its head came inline). With
            // no room left, it goes to the workers that serve on with the bytes read,
            // as over uwsgi and SCGI; served here (past the limit) only when it
            // cannot (other requests in flight on the connection, nobody serving on).
            // regression: counted from a connection's first bytes, one-byte heads made
            // workers recycle (2000 of them, --workers 2 --max-requests 100: 19
            // recycles in 6 s); counted only here and served here, 40 trickled
            // requests to --max-requests 10 were all served by one worker.
            // Alone on its connection, it can go to another worker: one with a free
            // thread when every thread here is busy (unless it came from one so). The
            // ids of earlier requests answered while their bodies still came go with it
            // (as with every hand-over), so its new worker reads their rest quietly.
            // regression (note 51): these two hand-ons carried no such ids, and refused
            // such a connection: served here past --max-requests, or waiting here for a
            // thread while another worker had one free.
            let movable = slots.is_empty() && parser.active() == 1;
            let reframed = || {
                movable
                    .then(|| reframe((id, keep_conn), &params, stdin.as_deref(), backlog, rest))
                    .flatten()
            };
            if !conn.came_carried() && movable && lane.busy_here() {
                let why = crate::server::connection::Why::Busy;
                let late = parser.late_ids();
                if reframed().is_some_and(|r| conn.hand_on(&r, started.elapsed(), why, late)) {
                    return Step::HandedOn;
                }
            }
            if let Some(p) = conn.permit() {
                if !p.try_begin() {
                    let why = crate::server::connection::Why::NoRoom;
                    let late = parser.late_ids();
                    if reframed().is_some_and(|r| conn.hand_on(&r, started.elapsed(), why, late)) {
                        return Step::HandedOn;
                    }
                    tracing::debug!(%peer, fcgi_id = id, "no room left under --max-requests, and this FastCGI request cannot go to another worker (another request runs on its connection, or none serves on): served here");
                }
                p.begin();
            }
            let (span, request_id) = request_span(&head, peer);
            // Named for the first few only: a flood is summed up.
            // regression (hostile): 20,000 such requests on one connection wrote
            // 20,000 WARN lines in 1.4 s.
            if excess > 0 && slow_clients::bad_input(peer, Reason::Malformed) {
                span.in_scope(|| {
                    tracing::warn!(
                        got = head.content_length + excess,
                        content_length = head.content_length,
                        "STDIN longer than CONTENT_LENGTH; the excess is ignored"
                    )
                });
            }
            if body.is_none() && content_length.is_none() {
                // STDIN still coming and no CONTENT_LENGTH (a chunked upload nginx does
                // not buffer): the app runs once the whole body is here, with its length.
                let collect = Collect {
                    held: InMemory::default(),
                    head,
                    keep_conn,
                    span,
                    request_id,
                    started,
                    mem: BytesMut::new(),
                    file: None,
                    got: 0,
                    _reading: lane.queue.reading_request(),
                };
                let mut slot = Slot::new(Arc::new(ReqFlags::default()), None);
                slot.collect = Some(Box::new(collect));
                slots.insert(id, slot);
                conn.set_lane_requests(slots.len());
                return Step::Go;
            }
            let flags = Arc::new(ReqFlags::default());
            let mut slot = Slot::new(Arc::clone(&flags), content_length);
            let body = match body {
                Some(b) if b.is_empty() => Body::Empty,
                Some(b) => {
                    input.charge(b.len());
                    slot._body = Some(Charge {
                        input: Arc::clone(input),
                        n: b.len(),
                    });
                    Body::Memory(b)
                }
                None => {
                    let feed = Feed::new(Arc::clone(input), peer);
                    slot.stdin = Some(Feeder(Arc::clone(&feed)));
                    slot.stdin_open = true;
                    flags.stdin.store(STDIN_OPEN, Ordering::Release);
                    Body::Stream(Box::new(StdinStream(feed)))
                }
            };
            slots.insert(id, slot);
            conn.set_lane_requests(slots.len());
            let run = (head, body, span, request_id);
            push_request(
                conn,
                info,
                lane,
                settings,
                (id, keep_conn, flags),
                run,
                None,
            );
            Step::Go
        }
        Event::Stdin { id, data } if slots.get(&id).is_some_and(|s| s.collect.is_some()) => {
            collect_stdin(conn, parser, slots, (lane, input), id, &data)
        }
        Event::StdinEnd { id } if slots.get(&id).is_some_and(|s| s.collect.is_some()) => {
            collected(conn, parser, slots, (info, lane, settings), input, id)
        }
        Event::Stdin { id, data } => {
            let max_body = lane.limits.max_body;
            // Read past the budget for an app that waits: does one still (its
            // receive() may have been cancelled since)?
            let for_starved = past && input.over(0) && any_starved(slots);
            let Some(slot) = slots.get_mut(&id) else {
                return Step::Go;
            };
            if let Some(h) = &mut slot.held {
                // The body still comes: its end may follow.
                h.until = Instant::now() + HOLD_GAP;
            }
            let Some(feed) = &slot.stdin else {
                return Step::Go;
            };
            let feed = Arc::clone(&feed.0);
            let mut data = data;
            if let Some(cl) = slot.content_length {
                let left = cl.saturating_sub(slot.got);
                if data.len() as u64 > left {
                    if !slot.warned_excess {
                        slot.warned_excess = true;
                        // Named for the first few only: a flood is summed up.
                        if slow_clients::bad_input(peer, Reason::Malformed) {
                            tracing::warn!(%peer, fcgi_id = id, content_length = cl, "STDIN longer than CONTENT_LENGTH; the excess is ignored");
                        }
                    }
                    data.truncate(left as usize);
                }
            }
            if data.is_empty() {
                return Step::Go;
            }
            if for_starved && !feed.starved() && feed.progressing(Instant::now()).is_none() {
                // Read past the budget only for another request whose app waits for
                // its input: this one's, whose app took none for NO_PROGRESS, must
                // not pile up meanwhile. (One that reads steadily keeps it: the lane
                // then waits for it to read before it reads on.)
                tracing::warn!(%peer, fcgi_id = id, held = input.held(), "FastCGI connection over --fastcgi-buffer while another request on it waits for its input, and this request's app has taken none of its body for {NO_PROGRESS:?}: this request's body is dropped (its app's read fails)");
                feed.cut();
                slot.stdin = None;
                return Step::Go;
            }
            let n = data.len() as u64;
            if max_body.is_some_and(|m| slot.got + n > m) {
                // Only a body without CONTENT_LENGTH gets here (a longer announced one
                // was answered 413 before the app ran): cut it, the app's read fails
                // (an ASGI request is answered 413 if its response has not started).
                tracing::warn!(%peer, fcgi_id = id, max_body = max_body.unwrap_or(0), "request body (no CONTENT_LENGTH) over --max-body; the rest is refused (the app's read of the body fails)");
                feed.too_large();
                slot.stdin = None;
                return Step::Go;
            }
            if feed.push(data) {
                slot.got += n;
                input.delivered(n as usize);
            } else {
                // The request is over (or its input was dropped): the rest is dropped.
                slot.stdin = None;
            }
            Step::Go
        }
        Event::StdinEnd { id } => {
            let in_flight = slots.len();
            let Some(slot) = slots.get_mut(&id) else {
                return Step::Go;
            };
            slot.stdin_over();
            if let Some(held) = slot.held.take() {
                let reuse = release(conn, in_flight, id, held);
                return Step::Ended { id, reuse };
            }
            let Some(feed) = &slot.stdin else {
                return Step::Go;
            };
            // Ended before any byte: no body passed (nginx's auth_request; see
            // `codec::fastcgi::assemble`, which takes it so when STDIN's end comes with
            // the head): the app's read ends, nothing more, as for an empty body.
            if stdin_end(slot.got, slot.content_length) == StdinEnd::Cut {
                // One line per short body (review of cbddb75: the 400 the app's read
                // leads to is said at debug), through the bad-input limit.
                if slow_clients::bad_input(peer, Reason::Truncated) {
                    tracing::warn!(%peer, fcgi_id = id, got = slot.got, "STDIN ended before CONTENT_LENGTH bytes; the app sees a cut body (answered 400 if it lets the read's error escape)");
                }
                feed.0.short();
                slot.stdin = None;
                return Step::Go;
            }
            if slot.got == 0 && slot.content_length.is_some_and(|cl| cl > 0) {
                tracing::debug!(%peer, fcgi_id = id, "STDIN ended before any of its CONTENT_LENGTH bytes: no body passed (nginx's auth_request, fastcgi_pass_request_body off); the app's read ends empty");
            }
            feed.0.end();
            slot.stdin = None;
            Step::Go
        }
        Event::Abort { id } if slots.get(&id).is_some_and(|s| s.collect.is_some()) => {
            // Its app never ran: answered here (§2.8: END_REQUEST, REQUEST_COMPLETE).
            tracing::info!(%peer, fcgi_id = id, "FCGI_ABORT_REQUEST before the body ended: the request is dropped");
            // Its access line (status 0), as at any other cut.
            // regression: an abort was the one cut of a collected body without one.
            let keep_conn = slots.remove(&id).and_then(|s| s.collect).is_none_or(|c| {
                collect_cut(&c, None, None);
                c.keep_conn
            });
            conn.set_lane_requests(slots.len());
            parser.finished(id);
            if let Some(p) = conn.permit() {
                p.served();
            }
            let mut out = Vec::new();
            fcgi::encode_record(&mut out, fcgi::STDOUT, id, &[]);
            fcgi::encode_end_request(&mut out, id, 0, ProtocolStatus::RequestComplete);
            match blocking_write(conn, &out) {
                Err(_) => Step::Close,
                Ok(()) if keep_conn => Step::Answered,
                Ok(()) => Step::CloseDrain,
            }
        }
        Event::Abort { id } => {
            let in_flight = slots.len();
            if let Some(slot) = slots.get_mut(&id) {
                tracing::info!(%peer, fcgi_id = id, "FCGI_ABORT_REQUEST: stopping the request");
                // No STDIN follows an abort: its END_REQUEST waits for nothing more.
                slot.stdin_over();
                slot.flags.abort();
                // Its app's failed read is named through the bad-input limit (a kept
                // connection could abort request after request).
                slot.stdin = None;
                if let Some(held) = slot.held.take() {
                    let reuse = release(conn, in_flight, id, held);
                    return Step::Ended { id, reuse };
                }
            }
            Step::Go
        }
    }
}

/// While this worker leaves with requests running on the connection (`leaving`), a new
/// request is held ([`Holding`]), not started here, and so are the records that follow
/// for it: Ok with what to do next. Anything else is [`handle_event`]'s: Err, given
/// back. One over what a hand-over carries is refused (FCGI_OVERLOADED).
fn hold(
    ev: Event,
    holding: &mut Holding,
    leaving: bool,
    (conn, parser, backlog, lane): (
        &Arc<FcgiConn>,
        &mut ConnParser,
        &mut VecDeque<Event>,
        &SlowLane,
    ),
) -> Result<Step, Event> {
    let peer = &conn.peer;
    let refused = |id: u16| {
        if let Some(dropped) = HOLDING_LOG.allow() {
            tracing::warn!(%peer, fcgi_id = id, dropped, "this worker leaves (a reload or a recycle) and holds over {HOLD_MAX} bytes of new FastCGI requests on this connection for the workers that serve on: this one is refused (FCGI_OVERLOADED)");
        }
    };
    match ev {
        Event::Params {
            id,
            keep_conn,
            params,
        } if leaving => {
            if holding.begin(id, keep_conn, &params) {
                tracing::debug!(%peer, fcgi_id = id, held = holding.len(), "this worker leaves (a reload or a recycle) while requests run on this FastCGI connection: a new request on it is held, to go with the connection to the workers that serve on once those have ended");
                return Ok(Step::Go);
            }
            refused(id);
            Ok(overloaded(conn, parser, backlog, lane, id, keep_conn))
        }
        Event::Stdin { id, .. } | Event::StdinEnd { id } if holding.holds(id) => {
            // A piece of its body, or (empty) its end.
            let data = match &ev {
                Event::Stdin { data, .. } => &data[..],
                _ => &[],
            };
            match holding.stdin(id, data) {
                Ok(()) => Ok(Step::Go),
                Err(keep_conn) => {
                    refused(id);
                    Ok(overloaded(conn, parser, backlog, lane, id, keep_conn))
                }
            }
        }
        Event::Abort { id } if holding.holds(id) => {
            holding.abort(id);
            Ok(Step::Go)
        }
        ev => Err(ev),
    }
}

/// New request `id` is refused with END_REQUEST FCGI_OVERLOADED, its records dropped
/// (its app never runs); the connection and its other requests go on.
fn overloaded(
    conn: &Arc<FcgiConn>,
    parser: &mut ConnParser,
    backlog: &mut VecDeque<Event>,
    lane: &SlowLane,
    id: u16,
    keep_conn: bool,
) -> Step {
    parser.finished(id);
    backlog.retain(
        |ev| !matches!(ev, Event::Stdin { id: i, .. } | Event::StdinEnd { id: i } if *i == id),
    );
    lane.refused(crate::codec::Protocol::FastCgi, None);
    let mut out = Vec::new();
    fcgi::encode_end_request(&mut out, id, 0, ProtocolStatus::Overloaded);
    if blocking_write(conn, &out).is_err() {
        return Step::Close;
    }
    if keep_conn {
        Step::Go
    } else {
        Step::CloseDrain
    }
}

/// Request `id` framed again as it came (BEGIN_REQUEST, its PARAMS, what of its STDIN
/// came: `stdin` when it came whole, then its events left in `backlog`), and `rest`,
/// the bytes read and not decoded yet: what goes with a connection handed on
/// ([`FcgiConn::hand_on`]). `None` when anything else waits in `backlog` (a reply, an
/// abort), or it is over what the hand-over carries: it is served here then.
fn reframe(
    (id, keep_conn): (u16, bool),
    params: &[u8],
    stdin: Option<&[u8]>,
    backlog: &VecDeque<Event>,
    rest: &[u8],
) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(params.len() + rest.len() + 64);
    fcgi::encode_head(&mut out, id, keep_conn, params);
    if let Some(data) = stdin {
        fcgi::encode_stream(&mut out, fcgi::STDIN, id, data);
        fcgi::encode_record(&mut out, fcgi::STDIN, id, &[]);
    }
    for ev in backlog {
        match ev {
            Event::Stdin { id: i, data } if *i == id => {
                fcgi::encode_stream(&mut out, fcgi::STDIN, id, data)
            }
            Event::StdinEnd { id: i } if *i == id => {
                fcgi::encode_record(&mut out, fcgi::STDIN, id, &[])
            }
            _ => return None,
        }
        if out.len() > super::handover::MAX_READ {
            return None;
        }
    }
    out.extend_from_slice(rest);
    (out.len() <= super::handover::MAX_READ).then_some(out)
}

/// Starts request `id`'s app: its response goes out through its own sink.
fn push_request(
    conn: &Arc<FcgiConn>,
    info: &ListenerInfo,
    lane: &SlowLane,
    settings: &FcgiSettings,
    (id, keep_conn, flags): (u16, bool, Arc<ReqFlags>),
    (head, body, span, request_id): (
        Head,
        Body,
        crate::logging::RequestSpan,
        crate::logging::RequestId,
    ),
    reading: Option<crate::server::queue::Reading>,
) {
    let errors_forward = settings.stderr.then(|| stderr_forward(conn, id, &flags));
    let sink = FcgiSink::new(
        Arc::clone(conn),
        id,
        keep_conn,
        flags,
        Instant::now(),
        &request_id,
    );
    let req = Request {
        head,
        body,
        listener: info.clone(),
        sink: Box::new(sink),
        span,
        request_id,
        errors_forward,
        queued: true,
    };
    match reading {
        Some(r) => lane.queue.push_read(req, r),
        None => lane.queue.push(req),
    }
}

/// A STDIN record of a request whose body is collected ([`Collect`]): over
/// --max-body it is answered 413 at once (the rest of its STDIN is ignored).
fn collect_stdin(
    conn: &Arc<FcgiConn>,
    parser: &mut ConnParser,
    slots: &mut FxHashMap<u16, Slot>,
    (lane, input): (&SlowLane, &ConnInput),
    id: u16,
    data: &[u8],
) -> Step {
    let limits = &lane.limits;
    // What the connection's collected bodies hold in memory.
    let in_memory: u64 = slots
        .values()
        .filter_map(|s| s.collect.as_deref())
        .filter(|c| c.file.is_none())
        .map(|c| c.got)
        .sum();
    // One body spooled per connection at a time: the --max-connections default leaves
    // one descriptor per connection for it.
    // regression (review of 11cc4ee): a raw client multiplexing 64 collected bodies on
    // each of 4 connections held 239 temporary files; the worker ran out of descriptors
    // and accepted nothing more.
    let spooling = slots
        .iter()
        .any(|(&other, s)| other != id && s.collect.as_deref().is_some_and(|c| c.file.is_some()));
    let Some(c) = slots.get_mut(&id).and_then(|s| s.collect.as_mut()) else {
        return Step::Go;
    };
    let total = c.got + data.len() as u64;
    let refused = if limits.max_body.is_some_and(|m| total > m) {
        c.span.in_scope(|| {
            tracing::warn!(
                got = total,
                max_body = limits.max_body.unwrap_or(0),
                "request body (no CONTENT_LENGTH) over --max-body; answered 413"
            )
        });
        (413, "Content Too Large")
    } else {
        let room = in_memory + data.len() as u64 <= limits.spool_threshold
            && input.worker_room_beside(COLLECTING.load(Ordering::Acquire), c.growth(data.len()));
        if !room && c.file.is_none() && spooling {
            if let Some(dropped) = SPOOLING_LOG.allow() {
                c.span.in_scope(|| tracing::warn!(dropped, "another request body on this FastCGI connection is being spooled already (one at a time per connection); answered 503"));
            }
            return refuse_collected(conn, parser, slots, lane, id, (503, "Service Unavailable"));
        }
        let n = data.len();
        match c.push(data, room) {
            Ok(()) => {
                input.delivered(n);
                return Step::Go;
            }
            Err(e) => {
                if let Some(dropped) = SPOOL_LOG.allow() {
                    c.span.in_scope(|| tracing::error!(error = %e, dropped, "cannot spool a request body (no CONTENT_LENGTH) to a temporary file (out of file descriptors: raise ulimit -n / LimitNOFILE= or lower --max-connections; or TMPDIR is full or not writable); answered 503"));
                }
                (503, "Service Unavailable")
            }
        }
    };
    refuse_collected(conn, parser, slots, lane, id, refused)
}

/// Answers a request whose body was being collected from postern itself (its app
/// never ran), and forgets it.
fn refuse_collected(
    conn: &Arc<FcgiConn>,
    parser: &mut ConnParser,
    slots: &mut FxHashMap<u16, Slot>,
    lane: &SlowLane,
    id: u16,
    status: (u16, &str),
) -> Step {
    let Some(c) = slots.remove(&id).and_then(|s| s.collect) else {
        return Step::Go;
    };
    conn.set_lane_requests(slots.len());
    // It ended: --max-requests counts it as served (it was begun with its head).
    if let Some(p) = conn.permit() {
        p.served();
    }
    let asker = Asker {
        conn,
        lane,
        id,
        keep_conn: c.keep_conn,
        request_id: &c.request_id,
        started: c.started,
    };
    let _in = c.span.enter();
    answer_now(&asker, parser, &c.head, status)
}

/// The end of a collected body: the app runs now, with CONTENT_LENGTH set to it.
fn collected(
    conn: &Arc<FcgiConn>,
    parser: &mut ConnParser,
    slots: &mut FxHashMap<u16, Slot>,
    (info, lane, settings): (&ListenerInfo, &SlowLane, &FcgiSettings),
    input: &Arc<ConnInput>,
    id: u16,
) -> Step {
    let Some(slot) = slots.get_mut(&id) else {
        return Step::Go;
    };
    let Some(mut c) = slot.collect.take() else {
        return Step::Go;
    };
    if let Err(e) = c.flush() {
        if let Some(dropped) = SPOOL_LOG.allow() {
            c.span.in_scope(|| tracing::error!(error = %e, dropped, "cannot spool a request body (no CONTENT_LENGTH) to a temporary file (TMPDIR full?); answered 503"));
        }
        slot.collect = Some(c);
        return refuse_collected(conn, parser, slots, lane, id, (503, "Service Unavailable"));
    }
    if c.got > 0 {
        // Collected because none was announced (a repeat with another value was refused
        // with the params, by assemble).
        c.head.give_length(c.got);
    }
    let Collect {
        held: _held,
        mut head,
        keep_conn,
        span,
        request_id,
        started: _,
        mem,
        file,
        got,
        _reading,
    } = *c;
    head.content_length = got;
    let body = match file {
        Some(f) => {
            tracing::debug!(
                bytes = got,
                "request body (no CONTENT_LENGTH) spooled to a temporary file"
            );
            Body::File(f, got)
        }
        None if got == 0 => Body::Empty,
        None => {
            // Charged until the request ends, as any body in memory.
            input.charge(mem.len());
            slot._body = Some(Charge {
                input: Arc::clone(input),
                n: mem.len(),
            });
            Body::Memory(mem.freeze())
        }
    };
    let flags = Arc::clone(&slot.flags);
    push_request(
        conn,
        info,
        lane,
        settings,
        (id, keep_conn, flags),
        (head, body, span, request_id),
        Some(_reading),
    );
    Step::Go
}

/// Some request on the connection has an app blocked on its input, with nothing
/// queued for it (what reading past the budget is for).
fn any_starved(slots: &FxHashMap<u16, Slot>) -> bool {
    slots
        .values()
        .any(|s| s.stdin.as_ref().is_some_and(|f| f.0.starved()))
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

/// A response's write on the connection waits for the front server to read: one is
/// in progress (it holds the write lock) and the socket has no room now.
fn write_stuck(conn: &FcgiConn) -> bool {
    conn.write.is_locked() && !crate::room::has_room(&conn.sock)
}

/// A write from the connection's task: it may wait (a peer that does not read, a
/// Python thread holding the write lock), so the tokio worker is handed over meanwhile.
fn blocking_write(conn: &FcgiConn, data: &[u8]) -> io::Result<()> {
    tokio::task::block_in_place(|| conn.write(data))
}

/// A request postern answers itself before its app could run (a 400, 413 or 431 at its
/// head): [`Refusal::answer`] names it in a span and the access line from its head as
/// far as that parses.
struct Refusal<'a> {
    conn: &'a FcgiConn,
    lane: &'a SlowLane,
    id: u16,
    keep_conn: bool,
    started: Instant,
}

impl Refusal<'_> {
    /// Logs why (`log`, in the request's span) and answers `status`.
    fn answer(
        &self,
        parser: &mut ConnParser,
        params: Bytes,
        log: impl FnOnce(),
        status: (u16, &str),
    ) -> Step {
        let head = head_for_log(params);
        let (span, request_id) = request_span(&head, &self.conn.peer);
        span.in_scope(log);
        let asker = Asker {
            conn: self.conn,
            lane: self.lane,
            id: self.id,
            keep_conn: self.keep_conn,
            request_id: &request_id,
            started: self.started,
        };
        answer_now(&asker, parser, &head, status)
    }
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
    crate::server::span::refused_access(
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
    Step::Answered
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parser() -> ConnParser {
        ConnParser::new(fcgi::ConnLimits {
            max_params: 64 * 1024,
            max_reqs: 8,
            values: fcgi::Values {
                max_conns: 1,
                max_reqs: 1,
                mpxs_conns: true,
            },
        })
    }

    /// Events of `bytes` fed at once.
    fn events(bytes: &[u8]) -> (Vec<Event>, BytesMut) {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        parser().feed(&mut buf, &mut out).unwrap();
        (out, buf)
    }

    // The bytes a request handed on carries read as the same request in its new
    // worker: head, the STDIN that came (whole or in events), then the undecoded rest.
    #[test]
    fn a_request_handed_on_is_framed_again_as_it_came() {
        let mut req = Vec::new();
        fcgi::encode_begin_request(&mut req, 3, fcgi::ROLE_RESPONDER, true);
        fcgi::encode_record(&mut req, fcgi::PARAMS, 3, &[1, 1, b'a', b'b']);
        fcgi::encode_record(&mut req, fcgi::PARAMS, 3, &[1, 1, b'c', b'd']);
        fcgi::encode_record(&mut req, fcgi::PARAMS, 3, &[]);
        fcgi::encode_record(&mut req, fcgi::STDIN, 3, b"xyz");
        let cut = req.len();
        fcgi::encode_record(&mut req, fcgi::STDIN, 3, b"tail");
        // Part of the next STDIN record, not decoded yet.
        let (evs, rest) = events(&req[..cut + 10]);
        let (params, backlog): (Vec<_>, Vec<_>) = evs
            .into_iter()
            .partition(|e| matches!(e, Event::Params { .. }));
        let backlog = VecDeque::from(backlog);
        let [Event::Params {
            id: 3,
            keep_conn: true,
            params,
        }] = &params[..]
        else {
            panic!("{params:?}")
        };
        let read = reframe((3, true), params, None, &backlog, &rest).expect("framed");
        let mut whole = read.clone();
        whole.extend_from_slice(&req[cut + 10..]);
        fcgi::encode_record(&mut whole, fcgi::STDIN, 3, &[]);
        let (again, left) = events(&whole);
        assert!(left.is_empty());
        assert_eq!(
            again,
            vec![
                Event::Params {
                    id: 3,
                    keep_conn: true,
                    params: params.clone()
                },
                Event::Stdin {
                    id: 3,
                    data: Bytes::from_static(b"xyz")
                },
                Event::Stdin {
                    id: 3,
                    data: Bytes::from_static(b"tail")
                },
                Event::StdinEnd { id: 3 },
            ]
        );
        // A whole STDIN taken out of the backlog goes first, with its end.
        let read = reframe((3, false), params, Some(b"body"), &VecDeque::new(), &[]).unwrap();
        let (again, _) = events(&read);
        assert_eq!(again.len(), 3, "{again:?}");
        assert!(matches!(again[2], Event::StdinEnd { id: 3 }));
        // Anything else on the connection keeps the request here.
        let other = VecDeque::from([Event::Abort { id: 3 }]);
        assert!(reframe((3, true), params, None, &other, &[]).is_none());
        let big = vec![0u8; crate::server::fastcgi::handover::MAX_READ];
        assert!(reframe((3, true), params, None, &VecDeque::new(), &big).is_none());
    }
}
