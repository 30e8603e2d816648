//! FastCGI connections (docs/protocols.md §2). Unlike uwsgi and SCGI, a FastCGI connection
//! can outlive its request (`FCGI_KEEP_CONN`, nginx `fastcgi_keep_conn on`) and carry
//! several requests at once (multiplexing), so the connection is shared:
//!
//! - [`FcgiConn`] (here): the socket, written by every request on it under one lock (a
//!   record is never interleaved with another), and read by one [`Owner`] at a time:
//!   parked in the Python threads' epoll ([`Parking`]), held by a Python thread, serving
//!   a request inline, or in the slow lane. Every change of owner is a named transition.
//! - [`inline`]: the fast path (Python threads, called from [`super::acceptor`]): when
//!   one read holds one whole simple request (BEGIN, PARAMS, STDIN, nothing else: what
//!   nginx sends in one write), that thread serves it and parks the connection again
//!   after END_REQUEST. No thread hand-off, no accept, no close per request.
//! - [`lane`] ([`serve`], a tokio task): everything else: partial records, streamed
//!   STDIN (the app reads the body as it arrives), multiplexed ids, ABORT_REQUEST,
//!   management records, bad input. When such a connection is idle again it goes back
//!   to the fast path.
//! - [`sink`]: a request's response as STDOUT records, then END_REQUEST (one ending for
//!   both paths: the owner decides who is told); a copy of `wsgi.errors` as STDERR.

pub mod crash;
pub mod handover;
mod holding;
mod inline;
mod lane;
mod sink;

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use rustc_hash::FxHashMap;
use rustix::event::epoll;
use rustix::io::Errno;
use tokio::sync::mpsc;

pub use super::lane::FcgiSettings;
use super::sink::{send_all, send_all_until, send_all_vectored, Stop};
use super::wake::Wake;
use crate::proto::fastcgi as fcgi;
use crate::server::slow_clients;
pub use inline::{admit_whole, has_whole_head, is_partial_simple, read_rest};
pub use lane::serve;
pub use sink::FcgiSink;
use sink::ReqFlags;

/// Who reads a FastCGI connection now. Exactly one at a time; the transitions below
/// are the only way to change it, always under the connection's `owner` lock.
///
/// ```text
///            accept ──> Held ──whole request──> Inline ──END_REQUEST──> Held ──> Parked
///   Parked ──input──> Held ──partial / EAGAIN on a fresh one──> Lane ──idle──> Parked
///   Inline{watched} ──input──> Lane (adopts the running request)
///   any ──EOF, error, no keep-conn, stop──> Closed
/// ```
///
/// Once parked, a connection stays in the Python threads' epoll, edge-triggered, until
/// it closes or goes to the slow lane: a keep-conn request costs no epoll_ctl. Edge
/// triggering reports new input once, so an event that finds the connection `Held`
/// is kept in it (`input`), and whoever parks it or starts a request on it re-arms it
/// (EPOLL_CTL_MOD reports input already there) instead of losing it.
pub(super) enum Owner {
    /// Idle in the Python threads' epoll.
    Parked,
    /// A Python thread holds it: just accepted or woken and being read, or its inline
    /// request has ended and END_REQUEST is being written. `input`: an epoll event came
    /// meanwhile (it will not come again).
    Held { input: bool },
    /// Request `id` runs inline on a Python thread. `watched`: in the epoll (keep-conn),
    /// so input meanwhile (a multiplexed request, an abort, a close) wakes a thread that
    /// hands the connection to the slow lane.
    Inline {
        id: u16,
        keep_conn: bool,
        flags: Arc<ReqFlags>,
        watched: bool,
    },
    /// The slow lane's task reads it (out of the Python threads' epoll); the requests
    /// on it report their end there.
    Lane(mpsc::UnboundedSender<Ctl>),
    /// Nobody reads it any more; the socket closes with the last reference.
    Closed,
}

/// What an epoll wake-up means for the connection.
pub enum Woken {
    /// It was parked: this thread holds it now and reads its next request.
    Read,
    /// Its inline request runs and input arrived: the slow lane takes it over.
    Steal(Entry),
    /// Nothing to do now: the holder learns of the input, or the connection is in the
    /// slow lane or closed.
    Stale,
}

/// Who must learn that a request ended.
#[derive(Debug)]
pub(super) enum Ender {
    /// The Python thread that ran it inline, which holds the connection now.
    Inline { keep_conn: bool },
    /// The slow lane's task.
    Lane(mpsc::UnboundedSender<Ctl>),
    /// Nobody reads the connection any more.
    Nobody,
}

/// How an answer on a kept connection ends it ([`FcgiConn::at_stop`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AtStop {
    /// The connection serves on (postern is not stopping, or others serve on).
    ServesOn,
    /// The final stop: END_REQUEST and the close leave together
    /// ([`FcgiConn::send_last`]).
    Closes,
    /// The final stop, a connection that lingers ([`FcgiConn::lingers_at_stop`]):
    /// closed after END_REQUEST only if its peer has not read it yet
    /// ([`FcgiConn::send_last_unread`]).
    ClosesUnread,
}

/// What the epoll must be told after a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Arm {
    /// Nothing: the registration stands.
    Keep,
    /// Register the connection (it was not in the epoll).
    Add,
    /// Modify the registration: reports input that arrived while the event was kept.
    Rearm,
}

impl Owner {
    /// An epoll event for this connection.
    fn woken(&mut self) -> Woken {
        match std::mem::replace(self, Owner::Closed) {
            Owner::Parked => {
                *self = Owner::Held { input: false };
                Woken::Read
            }
            Owner::Held { .. } => {
                *self = Owner::Held { input: true };
                Woken::Stale
            }
            Owner::Inline {
                id,
                keep_conn,
                flags,
                watched: true,
            } => {
                let (tx, rx) = mpsc::unbounded_channel();
                *self = Owner::Lane(tx.clone());
                Woken::Steal(Entry {
                    tx,
                    rx,
                    adopted: Some((id, keep_conn, flags)),
                    fresh: false,
                })
            }
            other => {
                *self = other;
                Woken::Stale
            }
        }
    }

    /// The held connection's request `id` runs inline now; a keep-conn one is watched
    /// (the front server may send more before END_REQUEST). `registered`: the
    /// connection is in the epoll already.
    fn serve_inline(
        &mut self,
        id: u16,
        keep_conn: bool,
        flags: Arc<ReqFlags>,
        registered: bool,
    ) -> Arm {
        let input = match self {
            Owner::Held { input } => *input,
            _ => {
                debug_assert!(false, "serve_inline on a connection not held");
                false
            }
        };
        *self = Owner::Inline {
            id,
            keep_conn,
            flags,
            watched: keep_conn,
        };
        match (keep_conn, registered, input) {
            (false, _, _) => Arm::Keep,
            (true, false, _) => Arm::Add,
            (true, true, true) => Arm::Rearm,
            (true, true, false) => Arm::Keep,
        }
    }

    /// The held connection goes to the slow lane.
    fn enter_lane(&mut self, fresh: bool) -> Entry {
        debug_assert!(
            matches!(self, Owner::Held { .. }),
            "enter_lane on a connection not held"
        );
        let (tx, rx) = mpsc::unbounded_channel();
        *self = Owner::Lane(tx.clone());
        Entry {
            tx,
            rx,
            adopted: None,
            fresh,
        }
    }

    /// The holder (a Python thread, or the slow lane once idle) gives the connection
    /// back to the epoll; `open`: false when stopping or broken, then it closes.
    /// `None` when closed, else what the epoll needs (`registered`: it is in the epoll).
    fn park(&mut self, open: bool, registered: bool) -> Option<Arm> {
        let input = match self {
            Owner::Held { input } => *input,
            Owner::Lane(_) => false,
            _ => {
                debug_assert!(false, "park on a connection not held");
                false
            }
        };
        if !open {
            *self = Owner::Closed;
            return None;
        }
        *self = Owner::Parked;
        Some(match (registered, input) {
            (false, _) => Arm::Add,
            (true, true) => Arm::Rearm,
            (true, false) => Arm::Keep,
        })
    }

    /// Request `id` ended: who is told.
    fn end(&mut self, id: u16) -> Ender {
        match self {
            Owner::Inline {
                id: running,
                keep_conn,
                ..
            } if *running == id => {
                let keep_conn = *keep_conn;
                // Input while it ran would have stolen it: nothing is kept.
                *self = Owner::Held { input: false };
                Ender::Inline { keep_conn }
            }
            Owner::Lane(tx) => Ender::Lane(tx.clone()),
            _ => Ender::Nobody,
        }
    }

    /// At stop: a parked connection is no longer read here (true: handed over);
    /// any other owner finishes first.
    fn close_if_parked(&mut self) -> bool {
        let parked = matches!(self, Owner::Parked);
        if parked {
            *self = Owner::Closed;
        }
        parked
    }

    /// At the final stop: a parked connection goes to the slow lane, which waits a
    /// moment for its last request; so does a watched one whose request runs inline
    /// (the lane adopts it), as input would send it there: the Python threads no
    /// longer wait on the epoll, and what the front server sends meanwhile (a new
    /// request multiplexed onto it, an abort) must still be read. Any other owner
    /// finishes first.
    /// regression: a new request id sent while the inline request ran was never read:
    /// the connection closed after that request's END_REQUEST, unanswered, unlogged.
    fn lane_at_final_stop(&mut self) -> Option<Entry> {
        match self {
            Owner::Parked => {
                *self = Owner::Held { input: false };
                Some(self.enter_lane(false))
            }
            Owner::Inline { watched: true, .. } => match self.woken() {
                Woken::Steal(entry) => Some(entry),
                _ => None,
            },
            _ => None,
        }
    }
}

/// What the slow lane starts a connection with.
pub struct Entry {
    tx: mpsc::UnboundedSender<Ctl>,
    rx: mpsc::UnboundedReceiver<Ctl>,
    /// The request the fast path is running inline (id, keep-conn, flags).
    adopted: Option<(u16, bool, Arc<ReqFlags>)>,
    /// Never carried a request yet: still under `--head-timeout`.
    fresh: bool,
}

/// From a request's sink to its connection's slow-lane task.
pub(super) enum Ctl {
    /// END_REQUEST written (`reuse`), or the connection was given up.
    Done { id: u16, reuse: bool },
    /// The response is out but its STDIN has not ended: the lane sends `tail` (the
    /// records through END_REQUEST) once it has.
    Held {
        id: u16,
        tail: Vec<u8>,
        keep_conn: bool,
    },
}

/// One FastCGI connection, shared by its reader and the requests answering on it.
pub struct FcgiConn {
    sock: socket2::Socket,
    pub peer: Arc<str>,
    pub tcp: bool,
    /// Index of the listener it came from.
    pub listener: usize,
    /// Names it in the Python threads' epoll ([`Wake::Conn`]).
    key: u64,
    /// Who reads it.
    owner: Mutex<Owner>,
    parking: Arc<Parking>,
    /// Held while records go out (parking_lot's: [`FcgiConn::try_end_inline`] keeps it
    /// past the call that took it).
    write: parking_lot::Mutex<()>,
    write_timeout: Duration,
    /// A write failed because the front server read nothing for `write_timeout` (not
    /// because it closed): [`FcgiConn::lost`] says so.
    stalled: AtomicBool,
    /// The writers' side, shared by every request on the connection (the reader's is
    /// `owner`): a write failed or the connection was aborted, nothing more goes out.
    /// An atomic, not under `write`: checked without waiting for a write in progress.
    broken: AtomicBool,
    /// Sent to another worker ([`handover`]): the socket is theirs now, so this
    /// process must never shut it down (a shutdown acts on the socket, not on this
    /// descriptor).
    handed_over: AtomicBool,
    /// Requests the slow lane has in flight on it: at the final stop, the last one's
    /// END_REQUEST goes out with the FIN ([`FcgiConn::send_last`]).
    lane_requests: AtomicUsize,
    /// Lane requests whose reader was told they are over (`Ctl::Done` with reuse, sent
    /// before their last records so the id is free when END_REQUEST arrives) while
    /// those records are still going out: [`FcgiConn::hand_on`] must not give the
    /// socket to another worker meanwhile, whose writes would interleave with them.
    ending: AtomicUsize,
    /// `ending` went back to 0 ([`FcgiConn::ended_out`] waits for it).
    ending_done: tokio::sync::Notify,
    /// A request without FCGI_KEEP_CONN is ending: its END_REQUEST is the last record
    /// on the connection, which closes after it (spec §5.1). Set before that END_REQUEST is
    /// written; the slow lane's own records (FCGI_UNKNOWN_TYPE, GET_VALUES_RESULT)
    /// check it under the write lock ([`FcgiConn::write_reply`]).
    last_end: AtomicBool,
    /// The connection ends once the requests running on it have: the slow lane's
    /// parser ended or refused a request without FCGI_KEEP_CONN (spec §2.3). A kept
    /// request's sink then tells its end (`Ctl::Done`) after its END_REQUEST is out,
    /// not before: the reader closes the connection at that message.
    closes_after_replies: AtomicBool,
    /// A send stopped part way (it failed): the next byte would land inside a record,
    /// so nothing may follow, not even the mark of a cut ([`FcgiConn::mark_cut`]).
    torn: AtomicBool,
    /// A cut response's mark waits for room ([`FcgiConn::mark_cut`]): nothing else is
    /// written, a send waiting for room stops and leaves the rest of its record in
    /// `unsent`, and the task that sends the mark closes the connection (an abort does
    /// not shut it down meanwhile).
    marking: AtomicBool,
    /// The rest of the record a send stopped by `marking` was in (see `marking`).
    unsent: Mutex<Vec<u8>>,
    /// [`Parking`]'s idle clock when it was last parked: how long it has been idle
    /// ([`Parking::make_room`]).
    parked_at: AtomicU64,
    /// Stops a send of another thread than the response's (the thread's writer, a
    /// `wsgi.errors` line) that waits for room: raised by a cut's mark waiting
    /// (`marking`) and by an abort, so that the cut response's figures can wait for
    /// that send to return.
    halt: Stop,
    /// Counts the connection (`--max-connections`) until it closes.
    _permit: Option<crate::server::admission::Permit>,
    /// Bytes a leaving worker's slow lane read from it (a request whose head it
    /// completed when `--max-requests` left no room to begin it), to be read before
    /// the socket's: set on such a handed-over connection only, taken by the slow
    /// lane or sent on with it ([`FcgiConn::take_carried`]).
    carried: Mutex<Vec<u8>>,
    /// It came with bytes a worker whose threads were all busy read and handed over
    /// ([`crate::server::lane::SlowLane::busy_here`]), whose request has not begun:
    /// that request is served here whatever this worker's threads do (never handed
    /// on again for that, so it cannot go to and fro).
    carried_busy: AtomicBool,
    /// `carried` holds bytes (read without its lock on every request's first read).
    carried_any: AtomicBool,
    /// The request ids its slow-lane parsers have seen begun (late records for them
    /// are no stray ones). Only the lane keeps it: a request served inline came whole,
    /// so no record of it can follow.
    begun: Mutex<fcgi::BegunIds>,
    /// 0, or 1 + nanoseconds from [`clock_base`] when its next request was first seen
    /// waiting unread while parked (every Python thread busy: [`Parking::relieve`]),
    /// or came so from another worker: that request's time runs from then
    /// ([`FcgiConn::read_start`]).
    waiting_since: AtomicU64,
    /// Whether its peer is nginx ([`FcgiConn::peer_is_nginx`]): asked once, when the
    /// final stop first needs to know.
    nginx: OnceLock<bool>,
    /// A request on it said its front server is nginx ([`FcgiConn::note_front`]):
    /// true whatever the lookup says.
    said_nginx: AtomicBool,
    /// [`FcgiConn::note_front`] looked at its first kept request.
    front_noted: AtomicBool,
    /// An answer at the final stop shut its write side down ([`FcgiConn::send_last`]):
    /// the front server sees the close with that answer and sends nothing more on it.
    shut_by_answer: AtomicBool,
}

/// The origin of [`FcgiConn::waiting_since`].
fn clock_base() -> std::time::Instant {
    static BASE: OnceLock<std::time::Instant> = OnceLock::new();
    // An hour back: a wait that began in another worker before this one started.
    *BASE.get_or_init(|| {
        let now = std::time::Instant::now();
        now.checked_sub(Duration::from_secs(3600)).unwrap_or(now)
    })
}

static NEXT_KEY: AtomicU64 = AtomicU64::new(0);

/// Tickets of [`Parking::responding`].
static NEXT_TICKET: AtomicU64 = AtomicU64::new(0);

/// How long [`Parking::cut_responding`] waits for a connection's write lock.
const CUT_LOCK_WAIT: Duration = Duration::from_millis(50);

/// A response under way ([`Parking::responding`]).
struct Responding {
    conn: Arc<FcgiConn>,
    id: u16,
    flags: Arc<ReqFlags>,
}

/// A request in flight, listed while `--timeout` is on ([`Parking::watch_overdue`]),
/// for [`Parking::answer_overdue`].
#[derive(Clone)]
struct InFlight {
    conn: std::sync::Weak<FcgiConn>,
    id: u16,
    keep_conn: bool,
    flags: Arc<ReqFlags>,
    request_id: crate::logging::RequestId,
    since: std::time::Instant,
}

fn closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the FastCGI connection is closed",
    )
}

impl AsFd for FcgiConn {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl FcgiConn {
    /// What counts the connection (`--max-connections`) and its request under way
    /// (`--max-requests`).
    pub fn permit(&self) -> Option<&crate::server::admission::Permit> {
        self._permit.as_ref()
    }

    /// The request ending now is no longer one to come under `--max-requests` (it is
    /// one taken). Called as its owner says it ended, before its END_REQUEST can
    /// reach the front server, which may send the next request on this connection
    /// the moment it has it: that one must find the place free, to take it as its
    /// own. regression: marked at the sink's `finish`, after END_REQUEST, the next
    /// request was read meanwhile and found the place still counted (so took none),
    /// then `finish` gave it back: it ran uncounted, and behind nginx with
    /// `fastcgi_keep_conn on` a worker served one past its limit.
    fn request_ended(&self) {
        if let Some(p) = &self._permit {
            p.served();
        }
    }

    /// A connection just accepted, held by the accepting thread.
    #[inline]
    pub fn new(
        sock: socket2::Socket,
        peer: Arc<str>,
        tcp: bool,
        listener: usize,
        write_timeout: Duration,
        parking: &Arc<Parking>,
        permit: Option<crate::server::admission::Permit>,
    ) -> Arc<FcgiConn> {
        Arc::new(FcgiConn {
            sock,
            peer,
            tcp,
            listener,
            key: NEXT_KEY.fetch_add(1, Ordering::Relaxed),
            owner: Mutex::new(Owner::Held { input: false }),
            parking: Arc::clone(parking),
            write: parking_lot::Mutex::new(()),
            write_timeout,
            stalled: AtomicBool::new(false),
            broken: AtomicBool::new(false),
            handed_over: AtomicBool::new(false),
            lane_requests: AtomicUsize::new(0),
            ending: AtomicUsize::new(0),
            ending_done: tokio::sync::Notify::new(),
            last_end: AtomicBool::new(false),
            closes_after_replies: AtomicBool::new(false),
            torn: AtomicBool::new(false),
            marking: AtomicBool::new(false),
            halt: Stop::default(),
            unsent: Mutex::new(Vec::new()),
            parked_at: AtomicU64::new(0),
            _permit: permit,
            carried: Mutex::new(Vec::new()),
            carried_busy: AtomicBool::new(false),
            carried_any: AtomicBool::new(false),
            begun: Mutex::new(fcgi::BegunIds::default()),
            waiting_since: AtomicU64::new(0),
            nginx: OnceLock::new(),
            said_nginx: AtomicBool::new(false),
            front_noted: AtomicBool::new(false),
            shut_by_answer: AtomicBool::new(false),
        })
    }

    /// Its next request waits unread since `at` (kept if an earlier time is).
    pub fn mark_waiting(&self, at: std::time::Instant) {
        if self.waiting_since.load(Ordering::Relaxed) != 0 {
            return;
        }
        let ns = at.saturating_duration_since(clock_base()).as_nanos();
        let v = u64::try_from(ns).unwrap_or(u64::MAX - 1) + 1;
        self.waiting_since.store(v, Ordering::Relaxed);
    }

    /// When its next request was first seen waiting, if it was.
    fn waiting_since(&self) -> Option<std::time::Instant> {
        match self.waiting_since.load(Ordering::Relaxed) {
            0 => None,
            v => Some(clock_base() + Duration::from_nanos(v - 1)),
        }
    }

    /// The start of the request about to be read from it, woken parked: now, or when it
    /// was seen waiting for a Python thread (then the access log's time and the
    /// duration metrics include that wait). One load on the usual path.
    #[inline]
    pub fn read_start(&self) -> std::time::Instant {
        if self.waiting_since.load(Ordering::Relaxed) == 0 {
            return std::time::Instant::now();
        }
        let at = self.waiting_since();
        self.waiting_since.store(0, Ordering::Relaxed);
        at.unwrap_or_else(std::time::Instant::now)
    }

    /// A handed-over connection comes with `read`, the bytes its leaving worker read
    /// (see `carried`).
    pub fn carry(&self, read: Vec<u8>) {
        self.carried_busy.store(!read.is_empty(), Ordering::Relaxed);
        self.carried_any.store(!read.is_empty(), Ordering::Relaxed);
        *self.carried.lock().unwrap_or_else(|e| e.into_inner()) = read;
    }

    /// Its first request came with it, handed over ([`FcgiConn::carry`]): true once,
    /// for the request that begins first.
    pub(super) fn came_carried(&self) -> bool {
        self.carried_busy.load(Ordering::Relaxed)
            && self.carried_busy.swap(false, Ordering::Relaxed)
    }

    /// The bytes a leaving worker read from it, if any (empty for most): taken once.
    pub fn take_carried(&self) -> Vec<u8> {
        // Set before the connection was shared (the channel, then the epoll or a lock
        // order its taker after that).
        if !self.carried_any.load(Ordering::Relaxed) {
            return Vec::new();
        }
        self.carried_any.store(false, Ordering::Relaxed);
        std::mem::take(&mut *self.carried.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The ids begun on it so far (see `begun`), for a slow-lane parser.
    fn take_begun(&self) -> fcgi::BegunIds {
        std::mem::take(&mut *self.begun.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Keeps the ids a slow-lane parser saw begun, for the next one.
    fn keep_begun(&self, begun: fcgi::BegunIds) {
        *self.begun.lock().unwrap_or_else(|e| e.into_inner()) = begun;
    }

    /// Handed over with requests a leaving worker answered while their bodies still
    /// came (`late`): the rest of those bodies is read quietly here too.
    pub fn expect_late(&self, late: &[u16]) {
        if !late.is_empty() {
            self.keep_begun(fcgi::BegunIds::with_late(late));
        }
    }

    /// The requests answered on it whose bodies may still come, to travel with it.
    fn late_ids(&self) -> Vec<u16> {
        self.begun
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .late()
            .to_vec()
    }

    /// It has bytes a leaving worker read ([`FcgiConn::carry`]), not yet taken.
    pub fn has_carried(&self) -> bool {
        !self
            .carried
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// `--max-requests` left no room to begin the request whose head the slow lane
    /// has just completed: the connection goes to the workers that serve on, with
    /// `read` (that request framed again as it came, and what followed it), ahead of
    /// what is still in its socket, and `age` (it travels as one that has carried no
    /// request yet: its new worker begins it as soon as it has room). True when sent:
    /// the socket is theirs, nothing more is read or shut down here. False when no
    /// worker serves on (a single process, the whole server stopping) or the send
    /// failed: it is served here.
    /// `late`: requests answered here whose bodies may still come (see
    /// [`handover::LATE`]).
    pub(super) fn hand_on(
        &self,
        read: &[u8],
        age: Duration,
        why: crate::server::connection::Why,
        late: &[u16],
    ) -> bool {
        use crate::server::connection::Why;
        // regression (review of 5bfe91d): a multiplexing client's next request could
        // complete between a kept request's `Done` and its END_REQUEST's write; handed
        // on then, the other worker wrote on the socket while this one still did.
        // Served here instead (the `Done` came through the lane's channel after the
        // count went up, so the lane sees it).
        if self.ending.load(Ordering::Acquire) > 0 {
            return false;
        }
        let Some(channel) = self.parking.successors() else {
            return false;
        };
        let sent = match why {
            Why::NoRoom | Why::Leaving => channel.send(
                self.sock.as_fd(),
                self.listener,
                Some(age),
                read,
                false,
                late,
            ),
            Why::Busy => channel.send_now(self.sock.as_fd(), self.listener, age, read, late),
        };
        match sent {
            Ok(()) => {
                self.handed_over.store(true, Ordering::Release);
                crate::server::connection::handed_on_line(&self.peer, read.len(), why);
                true
            }
            Err(e) if why == Why::Busy => {
                tracing::debug!(peer = %self.peer, error = %e, "cannot hand a FastCGI request over to a worker with a free thread; it waits here");
                false
            }
            Err(e) if why == Why::Leaving => {
                tracing::warn!(peer = %self.peer, error = %e, "cannot hand a FastCGI connection over to the serving workers with the requests held for them: they are refused (FCGI_OVERLOADED)");
                false
            }
            Err(e) => {
                tracing::warn!(peer = %self.peer, error = %e, "cannot hand a FastCGI request over to the serving workers; serving it here");
                false
            }
        }
    }

    /// Over TCP, after a read that left a request unfinished: acknowledge what came at
    /// once (TCP_QUICKACK) instead of when the delayed-ACK timer fires. nginx writes a
    /// request in several writes on an upstream socket with Nagle on, and holds a
    /// short last one until its earlier data is acknowledged; on a kept connection
    /// (its answers make Linux take it for an interactive one, which delays ACKs) that
    /// added ~40 ms to POSTs of 15-20 KB. Once per request is enough: the call sends
    /// the ACK due and takes the connection out of that interactive mode, where it
    /// stays (each read then acknowledges what it took) until postern sends on it
    /// again, its answer; so it is called once per unfinished request, never per read
    /// of a body, and never on a request that came in one read (the usual path).
    pub(super) fn ack_now(&self) {
        if self.tcp {
            let _ = rustix::net::sockopt::set_tcp_quickack(self.sock.as_fd(), true);
        }
    }

    fn owner(&self) -> MutexGuard<'_, Owner> {
        self.owner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes whole records; records of concurrent requests never interleave.
    pub fn write(&self, data: &[u8]) -> io::Result<()> {
        if self.is_broken() {
            return Err(closed());
        }
        let _w = self.write.lock();
        self.send_locked(data, false).map_err(|(_, e)| e)
    }

    /// [`FcgiConn::write`] for a thread other than the one whose response it is (the
    /// thread's writer, a `wsgi.errors` line): a cut of that response may come while
    /// it waits for room, and stops it ([`FcgiConn::send_locked`]). On failure, how
    /// many bytes of `data` had left.
    pub fn write_aside(&self, data: &[u8]) -> Result<(), (usize, io::Error)> {
        if self.is_broken() {
            return Err((0, closed()));
        }
        let _w = self.write.lock();
        self.send_locked(data, true)
    }

    /// Sends whole records under the write lock (held by the caller). A send that
    /// fails part way tears the connection. `stoppable`: while it waits for room, a
    /// cut's mark waiting too (`marking`) stops it, and it leaves the rest of its
    /// record for the mark, which must follow a whole record; an abort stops it too
    /// (`halt`). A response's sends are: the cut may come from another thread while
    /// one waits (the process's leaving; an ASGI stop's cut-off, whose write runs on
    /// an executor thread).
    fn send_locked(&self, data: &[u8], stoppable: bool) -> Result<(), (usize, io::Error)> {
        if self.marking.load(Ordering::Acquire) || self.is_broken() {
            // A cut's mark goes next, or went (this writer passed the checks before it).
            return Err((0, closed()));
        }
        let stop = stoppable.then_some(&self.halt);
        let (sent, r) = send_all_until(&self.sock, data, self.write_timeout, stop);
        let Err(e) = r else {
            return Ok(());
        };
        if e.kind() == io::ErrorKind::Interrupted && self.marking.load(Ordering::Acquire) {
            let (_, end) = fcgi::sent_split(data, sent);
            *self.unsent.lock().unwrap_or_else(|e| e.into_inner()) = data[sent..end].to_vec();
        } else {
            self.tear(&e);
        }
        Err((sent, e))
    }

    /// A send failed part way (`e`): nothing more goes out.
    fn tear(&self, e: &io::Error) {
        if e.kind() == io::ErrorKind::TimedOut {
            self.stalled.store(true, Ordering::Release);
        }
        self.torn.store(true, Ordering::Release);
        self.broken.store(true, Ordering::Release);
    }

    /// Why a response's last records could not go out: the front server read nothing
    /// for `--read-timeout` (it stalled; postern gave up), or it closed the connection.
    // regression (audit): a stall was reported as a close, so a WSGI response given
    // up on at --read-timeout over FastCGI was logged as the client gone.
    pub(super) fn lost(&self) -> io::Error {
        if self.stalled.load(Ordering::Acquire) {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the front server read nothing for {:?} (--read-timeout)",
                    self.write_timeout
                ),
            )
        } else {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the front server closed the connection before END_REQUEST",
            )
        }
    }

    /// `data` as STDOUT records of request `id`, then `tail` (whole records), sent
    /// the cheapest way for their size: copied into one buffer when small, vectored
    /// (no copy) when large.
    pub(super) fn send_stdout(&self, id: u16, data: &[u8], tail: &[u8]) -> io::Result<()> {
        self.send_stdout_then(id, data, tail, || ())
    }

    /// [`FcgiConn::send_stdout`], then `then` once they are sent, under the same hold of
    /// the write lock: nothing else is written on the connection in between.
    fn send_stdout_then(
        &self,
        id: u16,
        data: &[u8],
        tail: &[u8],
        then: impl FnOnce(),
    ) -> io::Result<()> {
        // Below this, one copy costs less than building the slices.
        const VECTORED_MIN: usize = 16 * 1024;
        LEFT.with(|l| l.set(0));
        if data.len() >= VECTORED_MIN {
            return self.write_stream(fcgi::STDOUT, id, data, tail, then);
        }
        OUT.with(|out| {
            let mut out = out.borrow_mut();
            out.clear();
            fcgi::encode_stream(&mut out, fcgi::STDOUT, id, data);
            out.extend_from_slice(tail);
            if self.is_broken() {
                return Err(closed());
            }
            let _w = self.write.lock();
            self.send_locked(&out, true).map_err(|(sent, e)| {
                let left = fcgi::sent_split(&out, sent).0.min(data.len() as u64);
                LEFT.with(|l| l.set(left));
                e
            })?;
            then();
            Ok(())
        })
    }

    /// Writes `data` as `kind` records of request `id`, then `tail` (whole records),
    /// without copying `data`: record headers and padding go around slices of it in
    /// vectored sends. For large responses; records never interleave with others.
    /// `then` runs after a send that succeeded, under the same hold of the write lock.
    fn write_stream(
        &self,
        kind: u8,
        id: u16,
        data: &[u8],
        tail: &[u8],
        then: impl FnOnce(),
    ) -> io::Result<()> {
        // Records per send: three slices each, well under IOV_MAX (1024).
        const BATCH: usize = 128;
        const PAD: [u8; 7] = [0; 7];
        if self.is_broken() {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the FastCGI connection is closed",
            ));
        }
        let _w = self.write.lock();
        // As in `send_locked`: not after a cut's mark, nor after another writer's send
        // failed part way while this one waited for the lock (its records would follow
        // a partial one).
        // regression (review 413 F4): only the mark was checked here.
        if self.marking.load(Ordering::Acquire) || self.is_broken() {
            return Err(closed());
        }
        let chunks: Vec<&[u8]> = data.chunks(fcgi::MAX_CONTENT).collect();
        let batches = chunks.len().div_ceil(BATCH);
        let mut r = Ok(());
        // Bytes of the records that left, for the count of a send that fails.
        let mut sent = 0;
        if batches == 0 {
            (sent, r) = send_all_until(&self.sock, tail, self.write_timeout, Some(&self.halt));
        }
        for (i, batch) in chunks.chunks(BATCH).enumerate() {
            let heads: Vec<([u8; fcgi::HEADER_LEN], usize)> = batch
                .iter()
                .map(|c| fcgi::stream_header(kind, id, c.len()))
                .collect();
            let mut iov = Vec::with_capacity(batch.len() * 3 + 1);
            for (chunk, (head, pad)) in batch.iter().zip(&heads) {
                iov.push(io::IoSlice::new(head));
                iov.push(io::IoSlice::new(chunk));
                if *pad > 0 {
                    iov.push(io::IoSlice::new(&PAD[..*pad]));
                }
            }
            if i + 1 == batches && !tail.is_empty() {
                iov.push(io::IoSlice::new(tail));
            }
            let (n, result) =
                send_all_vectored(&self.sock, &mut iov, self.write_timeout, Some(&self.halt));
            sent += n;
            r = result;
            if r.is_err() {
                break;
            }
        }
        match &r {
            Ok(()) => then(),
            Err(e) => {
                // Stopped for a cut's mark (as in `send_locked`): the rest of the record
                // it stopped inside goes first (not counted: it may never leave).
                if e.kind() == io::ErrorKind::Interrupted && self.marking.load(Ordering::Acquire) {
                    *self.unsent.lock().unwrap_or_else(|e| e.into_inner()) =
                        fcgi::stream_rest(kind, id, data, tail, sent);
                } else {
                    self.tear(e)
                }
                if kind == fcgi::STDOUT {
                    let left = fcgi::stream_content_sent(data.len(), sent);
                    LEFT.with(|l| l.set(left));
                }
            }
        }
        r
    }

    /// A management record (a reply to the front server's own record), unless a
    /// request without FCGI_KEEP_CONN has ended the connection by then: nothing
    /// follows its END_REQUEST.
    pub(super) fn write_reply(&self, data: &[u8]) -> io::Result<()> {
        self.write_unless(data, &self.last_end)
    }

    /// Writes `data` unless `done` is set by then (checked under the write lock, so a
    /// late `wsgi.errors` line never follows END_REQUEST).
    fn write_unless(&self, data: &[u8], done: &AtomicBool) -> io::Result<()> {
        if self.is_broken() {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the FastCGI connection is closed",
            ));
        }
        let _w = self.write.lock();
        if done.load(Ordering::Acquire) {
            return Ok(());
        }
        self.send_locked(data, true).map_err(|(_, e)| e)
    }

    /// Ends the connection now, without END_REQUEST for what is in flight: the front
    /// server sees the response as failed, not complete (a reset over TCP).
    pub fn abort(&self) {
        self.broken.store(true, Ordering::Release);
        self.halt.raise();
        // Handed over: the socket is another worker's. Marking: the mark's task closes
        // it once the mark is out.
        if self.handed_over.load(Ordering::Acquire) || self.marking.load(Ordering::Acquire) {
            return;
        }
        if self.tcp {
            // SO_LINGER 0: the last close sends a reset (a shutdown would send a FIN
            // first, which reads as a normal end).
            let _ = self.sock.set_linger(Some(Duration::ZERO));
        } else {
            let _ = self.sock.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Cuts response `id` off as the process's leaving does ([`Parking::cut_responding`]):
    /// the mark, then the connection aborted, so that a write of it waiting for room
    /// returns at once. (The other requests a multiplexing client has on it end with
    /// it, as they would at the process's leave: their sends stop too.) False when it was not cut: its END_REQUEST is going out, or it
    /// was cut already. `lock_wait`: how long to wait for the write lock (zero when
    /// the response cannot be ending meanwhile: its only write is the one waiting).
    pub(super) fn cut(self: &Arc<Self>, id: u16, flags: &ReqFlags, lock_wait: Duration) -> bool {
        // Under the write lock: `end` sets `done` before END_REQUEST goes out under
        // it, so a response not done here cannot be ended until the mark or the
        // abort below stops its sends. Checked without the lock, a response ending
        // meanwhile was reset after its END_REQUEST (review of e109978, LOW). A
        // writer stuck waiting for room keeps the lock: after `lock_wait`, as before
        // (the mark then follows its send, which it stops).
        let w = self.write.try_lock_for(lock_wait);
        // Its END_REQUEST is going out; or cut already (an ASGI task's cut-off cuts
        // its response, then the process's leaving looks at every one).
        if flags.done.load(Ordering::Acquire) || flags.cut.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.mark_cut(id, flags.stderr_on.load(Ordering::Acquire), w.is_some());
        self.abort();
        drop(w);
        true
    }

    /// Closes the connection for reading and writing (a FIN, not a reset), unless it
    /// was aborted: then the last close resets it.
    fn abort_soft(&self) {
        if self.handed_over.load(Ordering::Acquire) {
            return;
        }
        if self.marking.load(Ordering::Acquire) {
            // The mark's task closes it once the mark is out.
            self.broken.store(true, Ordering::Release);
            return;
        }
        if !self.broken.swap(true, Ordering::AcqRel) || !self.tcp {
            let _ = self.sock.shutdown(std::net::Shutdown::Both);
        }
    }

    /// The last response on a kept connection at the final stop: END_REQUEST and the
    /// FIN leave together (over TCP in one segment: corked), so the front server sees
    /// the close as it reads the response and does not put the connection back in its
    /// cache, where a request could be sent on it as it closes.
    ///
    /// Over a Unix socket the FIN is an event of its own: nginx could read END_REQUEST
    /// without it, cache the connection and send its next request on it as postern
    /// closed it (a POST's 502: 'upstream prematurely closed connection', 'writev()
    /// failed (32: Broken pipe)'); over TCP too, now and then, with the FIN in the
    /// same segment. So when the peer is nginx, an empty management record
    /// (FCGI_GET_VALUES_RESULT, requestId 0) follows END_REQUEST in the same send:
    /// nginx keeps a connection only when END_REQUEST ends what it read, and
    /// otherwise closes it, never cached. Other peers over a Unix socket are closed
    /// only while END_REQUEST is still unread ([`AtStop::ClosesUnread`]), until the
    /// stop's time to serve them is over.
    // regression (hostile): over TCP, about one graceful stop in twelve under a POST
    // load, nginx cached a connection whose END_REQUEST came with the FIN and sent a
    // POST on it (a 502: 'upstream prematurely closed connection').
    fn send_last(&self, id: u16, data: &[u8], tail: &[u8]) -> bool {
        let mut last = Vec::new();
        let tail = if self.known_nginx() {
            last.reserve(tail.len() + fcgi::HEADER_LEN);
            last.extend_from_slice(tail);
            fcgi::encode_empty_values_result(&mut last);
            &last[..]
        } else {
            tail
        };
        if self.tcp {
            let _ = self.sock.set_tcp_cork(true);
        }
        let ok = self.send_stdout(id, data, tail).is_ok();
        if ok {
            let _w = self.write.lock();
            let _ = self.sock.shutdown(std::net::Shutdown::Write);
            self.shut_by_answer.store(true, Ordering::Release);
        }
        if self.tcp {
            let _ = self.sock.set_tcp_cork(false);
        }
        ok
    }

    /// The last response at the final stop to a peer that lingers
    /// ([`FcgiConn::lingers_at_stop`]): the connection is shut down after END_REQUEST
    /// only if the peer has not read it yet (the bytes are still in its socket), so
    /// that the close is there before it can look at the connection again. If it has
    /// read them already (it runs on the other CPU, or it preempted this thread as
    /// the send woke it), it may be checking the connection and sending its next
    /// request right now: the connection is left open, served on, and closed once
    /// idle (`lane::IDLE_AT_STOP`) or with a later answer. Between the look and the
    /// shutdown there is no system call that wakes the peer. The look follows the send
    /// under the same hold of the write lock: the bytes it finds unread are this
    /// answer's, not the next request's.
    // regression (review of bb6ebb8): the lock was let go between the send and the
    // look; an answer the peer read at once, then the first bytes of the answer to its
    // next request written in that gap, and the look shut the connection down in the
    // middle of that next answer.
    fn send_last_unread(&self, id: u16, data: &[u8], tail: &[u8]) -> bool {
        self.send_stdout_then(id, data, tail, || {
            if self.peer_has_unread() {
                let _ = self.sock.shutdown(std::net::Shutdown::Write);
                self.shut_by_answer.store(true, Ordering::Release);
            }
        })
        .is_ok()
    }

    /// Bytes sent on this (Unix) socket that the peer has not read yet (SIOCOUTQ: the
    /// sent buffers still held in its receive queue). False when unknown.
    fn peer_has_unread(&self) -> bool {
        use std::os::fd::AsRawFd;
        let mut queued: libc::c_int = 0;
        // SAFETY: SIOCOUTQ (TIOCOUTQ's number) writes one int through the pointer,
        // valid for the call; the descriptor is open for as long as `sock` is borrowed.
        let r = unsafe { libc::ioctl(self.sock.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
        r == 0 && queued > 0
    }

    /// Records through END_REQUEST, ended as `at_stop` says.
    fn send_end(&self, at_stop: AtStop, id: u16, data: &[u8], tail: &[u8]) -> bool {
        match at_stop {
            AtStop::ServesOn => self.send_stdout(id, data, tail).is_ok(),
            AtStop::Closes => self.send_last(id, data, tail),
            AtStop::ClosesUnread => self.send_last_unread(id, data, tail),
        }
    }

    /// At the final stop, a connection whose answers do not simply close it: over a
    /// Unix socket, to a peer other than nginx (Apache's mod_proxy_fcgi with
    /// `enablereuse=on`). The FIN after END_REQUEST is an event of its own there, and
    /// Apache could read END_REQUEST, put the connection back in its pool, check it (a
    /// peek: alive, nothing waiting) and send its next request before that FIN
    /// arrived (AH01067 'End of file', AH01075 'Broken pipe (sending stdin)': the
    /// request lost). Bytes after END_REQUEST (what nginx gets, see
    /// [`FcgiConn::send_last`]) do not help: Apache's check takes them for a live
    /// connection. So its answer closes it only while unread
    /// ([`AtStop::ClosesUnread`]); else it is served on, and closed once idle
    /// (`lane::IDLE_AT_STOP`): then it is back in Apache's pool, whose check sees the
    /// close. Over TCP END_REQUEST and the FIN leave in one segment. Asked only at the
    /// final stop (a system call and a read of /proc, once).
    pub(super) fn lingers_at_stop(&self) -> bool {
        !self.tcp && !self.peer_is_nginx()
    }

    /// [`FcgiConn::peer_is_nginx`] on an answer's path: over TCP only if already known
    /// (by a request's `SERVER_SOFTWARE`, [`FcgiConn::note_front`], or by its lookup,
    /// which reads `/proc`: made for every kept TCP connection, off the answer path,
    /// just before the final stop, [`Parking::warm_peers`]); unknown: false.
    fn known_nginx(&self) -> bool {
        if self.said_nginx.load(Ordering::Acquire) {
            return true;
        }
        if self.tcp {
            self.nginx.get().copied().unwrap_or(false)
        } else {
            self.peer_is_nginx()
        }
    }

    /// A request on this kept connection names its front server: `SERVER_SOFTWARE`
    /// `nginx/VERSION` (what nginx's stock `fastcgi_params` send) makes the peer known
    /// as nginx, which matters at the final stop ([`FcgiConn::send_last`],
    /// [`FcgiConn::nudge`]) and could not be known otherwise for an nginx on another
    /// host (no process of this machine to look up). Looked at on a connection's first
    /// kept request only (one load per request after that; the stop's answers concern
    /// kept connections alone). Anything else leaves it to the lookup: a front server
    /// that calls itself otherwise may still be nginx. A client that lies gets only its
    /// own connection closed differently at a stop.
    // regression (review, session 16): an nginx on another host over TCP (a pod
    // behind an ingress) was never recognised, so its kept connections' last answers
    // at a graceful stop came with the FIN alone, which nginx now and then caches and
    // sends a POST on (a 502).
    pub(super) fn note_front(&self, head: &crate::codec::Head) {
        if self.front_noted.load(Ordering::Relaxed)
            || self.front_noted.swap(true, Ordering::Relaxed)
        {
            return;
        }
        if head
            .get(b"SERVER_SOFTWARE")
            .is_some_and(|v| v.starts_with(b"nginx/") || v == b"nginx")
        {
            self.said_nginx.store(true, Ordering::Release);
        }
    }

    /// A request on this connection said its front server is nginx
    /// ([`FcgiConn::note_front`]): carried with it when it is handed over.
    pub(super) fn said_nginx(&self) -> bool {
        self.said_nginx.load(Ordering::Acquire)
    }

    /// Handed over with [`FcgiConn::said_nginx`]: known as nginx here too (its next
    /// request need not say it again).
    // regression (review, session 17): a kept connection handed over at a reload or a
    // recycle lost the mark, so at the final stop an idle one from a remote nginx got
    // no nudge and its last answers no FCGI_GET_VALUES_RESULT.
    pub fn mark_said_nginx(&self) {
        self.front_noted.store(true, Ordering::Relaxed);
        self.said_nginx.store(true, Ordering::Release);
    }

    /// The process at the other end is nginx: over a Unix socket ([`unix_peer_is_nginx`])
    /// or a loopback TCP connection ([`tcp_peer_is_nginx`]), or a request said so
    /// ([`FcgiConn::note_front`]); false when unknown (a front server on another host
    /// that does not send `SERVER_SOFTWARE`).
    fn peer_is_nginx(&self) -> bool {
        if self.said_nginx.load(Ordering::Acquire) {
            return true;
        }
        *self.nginx.get_or_init(|| {
            if self.tcp {
                tcp_peer_is_nginx(&self.sock)
            } else {
                unix_peer_is_nginx(&self.sock)
            }
        })
    }

    /// An answer at the final stop has shut its write side down (the front server
    /// sees the close with that answer).
    pub(super) fn shut_by_answer(&self) -> bool {
        self.shut_by_answer.load(Ordering::Acquire)
    }

    /// At the final stop, an idle kept connection whose peer is nginx is asked to close
    /// first ([`FcgiConn::nudge`]) rather than closed under a request nginx may be
    /// sending on it.
    pub(super) fn nudges_at_stop(&self) -> bool {
        self.peer_is_nginx()
    }

    /// Writes an empty FCGI_STDERR record for request id 1 (the only id nginx uses) on
    /// an idle kept connection: nginx drops a cached connection on which anything
    /// arrives (its keepalive close handler peeks, and closes it), and a request it
    /// has sent on it meanwhile still reads a valid answer, the empty record first
    /// (FastCGI §5.3: a stream record of length 0 is allowed, and nginx skips it).
    /// So the close comes from nginx, after which nothing can be sent on it, instead
    /// of from postern, which could meet a request in flight. False: not written.
    pub(super) fn nudge(&self) -> bool {
        let mut rec = Vec::with_capacity(fcgi::HEADER_LEN);
        fcgi::encode_record(&mut rec, fcgi::STDERR, 1, &[]);
        self.write_reply(&rec).is_ok()
    }

    /// How the answer ending now on this kept connection ends it.
    pub(super) fn at_stop(&self) -> AtStop {
        if !self.parking.closing_for_good() {
            AtStop::ServesOn
        } else if self.lingers_at_stop() && self.parking.serves_kept() {
            AtStop::ClosesUnread
        } else {
            AtStop::Closes
        }
    }

    /// The slow lane's parser ended the connection (see `closes_after_replies`): the
    /// requests begun after tell their ends once their END_REQUESTs are out.
    pub(super) fn closes_after_replies(&self) {
        self.closes_after_replies.store(true, Ordering::Release);
    }

    /// Its END_REQUEST, announced to the slow lane before it is written, is still going
    /// out: the lane must not close the connection now.
    pub(super) fn is_ending(&self) -> bool {
        self.ending.load(Ordering::Acquire) > 0
    }

    /// Waits until no END_REQUEST announced to the slow lane is still going out
    /// ([`FcgiConn::is_ending`]), for `limit` at most (each such send is bounded by its
    /// own timeout anyway).
    pub(super) async fn ended_out(&self, limit: std::time::Duration) {
        let until = tokio::time::Instant::now() + limit;
        loop {
            let done = self.ending_done.notified();
            tokio::pin!(done);
            // Registered before the look, so a count that drops right after it wakes us.
            done.as_mut().enable();
            if !self.is_ending() || tokio::time::timeout_at(until, done).await.is_err() {
                return;
            }
        }
    }

    /// The slow lane has `n` requests in flight on this connection.
    pub(super) fn set_lane_requests(&self, n: usize) {
        self.lane_requests.store(n, Ordering::Release);
    }

    /// Reads what is there without waiting.
    pub fn recv(&self, buf: &mut [u8]) -> Result<usize, Errno> {
        rustix::net::recv(self.sock.as_fd(), buf, rustix::net::RecvFlags::empty()).map(|(n, _)| n)
    }

    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    /// An epoll event for this connection.
    pub fn woken(&self) -> Woken {
        let woken = self.owner().woken();
        if let Woken::Steal(_) = woken {
            // The slow lane reads it through its own epoll from now on.
            self.parking.unregister(self);
        }
        woken
    }

    /// The held connection goes to the slow lane (`fresh`: it was just accepted, so it
    /// is not in the Python threads' epoll).
    pub fn enter_lane(&self, fresh: bool) -> Entry {
        let entry = self.owner().enter_lane(fresh);
        if !fresh {
            self.parking.unregister(self);
        }
        entry
    }

    /// The holder is done with the connection: nobody reads it any more (closing the
    /// socket takes it out of the epoll).
    pub fn close(&self) {
        *self.owner() = Owner::Closed;
        self.parking.remove(self);
    }

    /// Request `id`, served inline, runs now; watched when keep-conn. `registered`:
    /// the connection is in the epoll already (it was woken there).
    fn serve_inline(
        self: &Arc<Self>,
        id: u16,
        keep_conn: bool,
        flags: Arc<ReqFlags>,
        registered: bool,
    ) {
        let mut owner = self.owner();
        let arm = owner.serve_inline(id, keep_conn, flags, registered);
        if arm == Arm::Add {
            self.parking.insert(self);
        }
        // Under the owner lock: a thread woken at once finds `Inline`.
        if let Err(e) = self.parking.apply(self, arm) {
            tracing::error!(peer = %self.peer, error = %e, "cannot watch a FastCGI connection; it closes after this request");
            if let Owner::Inline {
                keep_conn, watched, ..
            } = &mut *owner
            {
                *keep_conn = false;
                *watched = false;
            }
        }
    }

    /// The one end of every request, inline or in the slow lane: the last STDOUT bytes
    /// and the records through END_REQUEST (`last`, or none: the response is cut and
    /// the connection aborted), then whoever reads the connection next takes it. Who that is is settled
    /// before END_REQUEST goes out: the front server may send its next request the
    /// moment it has it. False when the write failed (or there was none).
    fn end_request(
        self: &Arc<Self>,
        id: u16,
        keep_conn: bool,
        last: Option<(&[u8], &[u8])>,
    ) -> bool {
        let ender = self.owner().end(id);
        self.request_ended();
        let Some((data, tail)) = last else {
            // No END_REQUEST: the front server must not take a cut response as whole.
            self.abort();
            match ender {
                Ender::Lane(tx) => {
                    let _ = tx.send(Ctl::Done { id, reuse: false });
                }
                Ender::Inline { .. } => self.close(),
                Ender::Nobody => {}
            }
            return false;
        };
        if !keep_conn {
            self.last_end.store(true, Ordering::Release);
        }
        // The whole server stops and this answer closes the connection, so its reader
        // must not close it before END_REQUEST is out. One that lingers may serve on.
        let at_stop = if keep_conn {
            self.at_stop()
        } else {
            AtStop::ServesOn
        };
        let last = at_stop == AtStop::Closes;
        match ender {
            Ender::Lane(tx) => {
                // The reader must know the id is free before the front server can
                // reuse it: it may send the next BEGIN_REQUEST the moment END_REQUEST
                // arrives (a connection that lingers at the final stop too: its reader
                // does not close it while `ending`). When this answer closes the
                // connection, the reader closes it once idle instead, so it learns
                // after END_REQUEST has gone out.
                // regression (review 392's fix, flaky since): a request begun after an
                // abort that ends the connection told its end early, and the reader
                // closed the connection under its END_REQUEST ('client went away').
                let early =
                    keep_conn && !last && !self.closes_after_replies.load(Ordering::Acquire);
                if early {
                    self.ending.fetch_add(1, Ordering::AcqRel);
                    let _ = tx.send(Ctl::Done { id, reuse: true });
                }
                // The only request in flight: its END_REQUEST and the FIN leave
                // together (others would still answer on the connection).
                let at_stop = if self.lane_requests.load(Ordering::Acquire) <= 1 {
                    at_stop
                } else {
                    AtStop::ServesOn
                };
                let ok = self.send_end(at_stop, id, data, tail);
                if early {
                    // Parked since `Done`, idle only from now: before `ending` drops,
                    // which `Parking::make_room` reads first.
                    let now = self.parking.idle_clock.load(Ordering::Relaxed);
                    self.parked_at.store(now, Ordering::Relaxed);
                    if self.ending.fetch_sub(1, Ordering::AcqRel) == 1 {
                        self.ending_done.notify_waiters();
                    }
                }
                if !ok {
                    tracing::debug!("the front server closed the connection before END_REQUEST");
                    self.abort();
                }
                if !early {
                    let _ = tx.send(Ctl::Done {
                        id,
                        reuse: keep_conn,
                    });
                }
                ok
            }
            Ender::Inline { keep_conn } => {
                // Held by this thread now: a busy wake-up that fires meanwhile is stale.
                let ok = self.send_end(at_stop, id, data, tail);
                self.after_inline(ok, keep_conn);
                ok
            }
            Ender::Nobody => {
                // Its reader is gone (the connection failed): this write fails too.
                self.send_stdout(id, data, tail).is_ok()
            }
        }
    }
}

/// How [`FcgiConn::try_end_inline`] went.
pub(super) enum TryEnd {
    /// Nothing was sent and nothing changed: end the request the usual way.
    NotNow,
    /// The records through END_REQUEST are out; the request is over.
    Sent,
    /// The records are partly out and the request ended: `rest` must follow through
    /// [`FcgiConn::finish_inline_end`], which the write lock waits for.
    Partial { rest: Vec<u8>, keep_conn: bool },
}

impl FcgiConn {
    /// Ends inline request `id` on the calling thread, which may hold the GIL: the last
    /// STDOUT records and END_REQUEST go out in one send that never waits
    /// (`MSG_DONTWAIT`), and only when the write lock is free and the server is not
    /// stopping; else nothing happens ([`TryEnd::NotNow`]) and the request ends through
    /// [`FcgiConn::end_request`] with the GIL released. The owner changes as there
    /// (under its lock, before the front server can have the whole END_REQUEST), and
    /// `flags.done` is set under the write lock, so no STDERR line follows.
    pub(super) fn try_end_inline(
        self: &Arc<Self>,
        id: u16,
        data: &[u8],
        flags: &ReqFlags,
    ) -> TryEnd {
        if self.is_broken() || !self.parking.open.load(Ordering::SeqCst) {
            return TryEnd::NotNow;
        }
        let mut owner = self.owner();
        if !matches!(*owner, Owner::Inline { id: running, .. } if running == id) {
            return TryEnd::NotNow;
        }
        let Some(w) = self.write.try_lock() else {
            return TryEnd::NotNow;
        };
        let was_done = flags.done.swap(true, Ordering::AcqRel);
        let (tail, n) = fcgi::response_tail(id, flags.stderr_used.load(Ordering::Acquire));
        OUT.with(|out| {
            let mut out = out.borrow_mut();
            out.clear();
            fcgi::encode_stream(&mut out, fcgi::STDOUT, id, data);
            out.extend_from_slice(&tail[..n]);
            let send_flags = rustix::net::SendFlags::NOSIGNAL | rustix::net::SendFlags::DONTWAIT;
            let sent = match rustix::net::send(self.sock.as_fd(), &out, send_flags) {
                Ok(sent) if sent > 0 => sent,
                // Not taken (or an error the usual way meets again): nothing changed,
                // and the end is not out (a crash before the usual way sends it is
                // still answered; a `wsgi.errors` line still goes out first).
                // regression (review 413 F5): it stayed marked sent.
                _ => {
                    flags.done.store(was_done, Ordering::Release);
                    return TryEnd::NotNow;
                }
            };
            let keep_conn = match owner.end(id) {
                Ender::Inline { keep_conn } => keep_conn,
                _ => {
                    debug_assert!(false, "the owner was checked under the same lock");
                    false
                }
            };
            // Under the owner lock, which the thread woken by the next request takes.
            self.request_ended();
            drop(owner);
            if sent == out.len() {
                drop(w);
                self.after_inline(true, keep_conn);
                return TryEnd::Sent;
            }
            // Records of others must not come between: the lock stays held until
            // `finish_inline_end` has sent the rest.
            std::mem::forget(w);
            TryEnd::Partial {
                rest: out[sent..].to_vec(),
                keep_conn,
            }
        })
    }

    /// The rest of a [`TryEnd::Partial`] end (the GIL released: it may wait for the
    /// front server to read), then what follows every inline end. False when the write
    /// failed, or there was none (`None`: the response is cut, the connection aborted).
    pub(super) fn finish_inline_end(
        self: &Arc<Self>,
        rest: Option<&[u8]>,
        keep_conn: bool,
    ) -> bool {
        let sent = rest.map(|rest| send_all(&self.sock, rest, self.write_timeout));
        let ok = matches!(sent, Some(Ok(())));
        if let Some(Err(e)) = &sent {
            self.tear(e);
        } else if !ok {
            self.broken.store(true, Ordering::Release);
        }
        // SAFETY: `try_end_inline` left the lock held (its guard forgotten) for this call,
        // which its `Partial` answer is the only way to reach, once.
        unsafe { self.write.force_unlock() };
        self.after_inline(ok, keep_conn);
        ok
    }

    /// After an inline request's END_REQUEST (`ok`: it went out): the connection waits
    /// for the next request, or closes.
    fn after_inline(self: &Arc<Self>, ok: bool, keep_conn: bool) {
        if !ok {
            tracing::debug!("the front server closed the connection before END_REQUEST");
            self.abort();
        }
        if ok && keep_conn {
            // It was watched: in the epoll.
            self.parking.park(Arc::clone(self), true);
        } else {
            // FCGI_KEEP_CONN unset: the socket closes (a FIN) when the sink drops its
            // reference, right after. No shutdown first: nothing is left unread (the
            // request was one whole read, nothing after it), so the close cannot turn
            // into a reset, and no other owner holds the socket. Nothing more may be
            // written.
            self.broken.store(true, Ordering::Release);
            self.close();
        }
    }
}

/// The process at the other end of a Unix socket is nginx (its name, from
/// `SO_PEERCRED`'s pid; false when unknown: another pid namespace gives pid 0). Asked
/// only at the final stop.
fn unix_peer_is_nginx(sock: &socket2::Socket) -> bool {
    use std::os::fd::AsRawFd;
    // Through libc, not rustix's `socket_peercred`: its `UCred` holds a non-zero `Pid`,
    // and the kernel reports pid 0 for a peer in another pid namespace.
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given; the descriptor
    // is open for as long as `sock` is borrowed.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 || cred.pid <= 0 {
        return false;
    }
    std::fs::read(format!("/proc/{}/comm", cred.pid)).is_ok_and(|c| c.starts_with(b"nginx"))
}

/// The process at the other end of a TCP connection from this host (a loopback
/// address) is nginx: the peer's socket is the one in `/proc/net/tcp` (or `tcp6`) whose
/// local address is this one's peer and whose remote address is this one's own, and
/// an nginx process (its name) holds it. False when unknown: another host, another
/// network or pid namespace, nothing found. Asked only at the final stop, once per
/// kept connection (a read of nginx's descriptors).
fn tcp_peer_is_nginx(sock: &socket2::Socket) -> bool {
    let Some(inode) = tcp_peer_socket(sock) else {
        return false;
    };
    // The sockets nginx holds, read once (at the first need, at the final stop): one
    // scan of nginx's descriptors for all of its kept connections. Those made since
    // are not in it (then closed after LINGER, as without the lookup).
    static NGINX_SOCKETS: OnceLock<std::collections::HashSet<String>> = OnceLock::new();
    NGINX_SOCKETS
        .get_or_init(|| {
            let mut held = std::collections::HashSet::new();
            let Ok(procs) = std::fs::read_dir("/proc") else {
                return held;
            };
            for p in procs.flatten() {
                let dir = p.path();
                if !std::fs::read(dir.join("comm")).is_ok_and(|c| c.starts_with(b"nginx")) {
                    continue;
                }
                // Unreadable (nginx's workers under another user, `hidepid`): none.
                let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
                    continue;
                };
                for fd in fds.flatten() {
                    if let Ok(l) = std::fs::read_link(fd.path()) {
                        if let Some(l) = l.to_str().filter(|l| l.starts_with("socket:[")) {
                            held.insert(l.to_owned());
                        }
                    }
                }
            }
            held
        })
        .contains(&inode)
}

/// The peer's end of a TCP connection from this host, as its descriptors read
/// (`socket:[INODE]`), found in `/proc/net/tcp` or `tcp6` (each read once, at the
/// first need: only the final stop asks).
fn tcp_peer_socket(sock: &socket2::Socket) -> Option<String> {
    let peer = sock.peer_addr().ok()?.as_socket()?;
    let own = sock.local_addr().ok()?.as_socket()?;
    let (peer_ip, own_ip) = (peer.ip().to_canonical(), own.ip().to_canonical());
    if !peer_ip.is_loopback() && peer_ip != own_ip {
        return None;
    }
    // An IPv4 peer on a dual-stack socket (`::ffff:127.0.0.1`): its own socket is an
    // IPv4 one, listed in `/proc/net/tcp`.
    let key = match (peer_ip, own_ip) {
        (std::net::IpAddr::V4(p), std::net::IpAddr::V4(o)) => (
            false,
            proc_net_v4(&std::net::SocketAddrV4::new(p, peer.port())),
            proc_net_v4(&std::net::SocketAddrV4::new(o, own.port())),
        ),
        (std::net::IpAddr::V6(p), std::net::IpAddr::V6(o)) => (
            true,
            proc_net_v6(&std::net::SocketAddrV6::new(p, peer.port(), 0, 0)),
            proc_net_v6(&std::net::SocketAddrV6::new(o, own.port(), 0, 0)),
        ),
        _ => return None,
    };
    type Table = std::collections::HashMap<(String, String), String>;
    static TABLES: OnceLock<(Table, Table)> = OnceLock::new();
    let (v4, v6) = TABLES.get_or_init(|| {
        (
            proc_net_table("/proc/net/tcp"),
            proc_net_table("/proc/net/tcp6"),
        )
    });
    let (v6_table, local, remote) = key;
    let table = if v6_table { v6 } else { v4 };
    table.get(&(local, remote)).cloned()
}

/// `/proc/net/tcp` (or `tcp6`): (local, remote) address to `socket:[INODE]`, for the
/// sockets that have an inode (not those in TIME_WAIT).
fn proc_net_table(path: &str) -> std::collections::HashMap<(String, String), String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Default::default();
    };
    // `sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...`
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() > 9 && f[9] != "0").then(|| {
                (
                    (f[1].to_owned(), f[2].to_owned()),
                    format!("socket:[{}]", f[9]),
                )
            })
        })
        .collect()
}

/// An IPv4 socket address as `/proc/net/tcp` prints it: the address as the kernel holds
/// it (network order) read as a native integer, and the port, in upper-case hex.
fn proc_net_v4(a: &std::net::SocketAddrV4) -> String {
    format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(a.ip().octets()),
        a.port()
    )
}

/// An IPv6 socket address as `/proc/net/tcp6` prints it: four native integers.
fn proc_net_v6(a: &std::net::SocketAddrV6) -> String {
    let o = a.ip().octets();
    let mut s = String::with_capacity(37);
    for w in o.chunks_exact(4) {
        s.push_str(&format!(
            "{:08X}",
            u32::from_ne_bytes([w[0], w[1], w[2], w[3]])
        ));
    }
    s.push_str(&format!(":{:04X}", a.port()));
    s
}

thread_local! {
    // Reused for every small response of this thread: no allocation per write.
    static OUT: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    // What of the STDOUT content of this thread's last `send_stdout_then` left before
    // it failed ([`left_before_failure`]).
    static LEFT: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The content bytes of the last STDOUT send on this thread that failed part way
/// (`send_stdout`, or an END_REQUEST's last records), and 0 from then on: the access
/// line's and the metrics' `bytes` count what reached the front server.
/// regression (probe 338): a 50 MB body cut after 5 MB was logged `bytes=84` (the head).
pub(super) fn left_before_failure() -> u64 {
    LEFT.with(|l| l.replace(0))
}

/// FastCGI connections in the Python threads' epoll, by key: listed from their first
/// parking (or watched inline request) until they close; the slow lane takes them out
/// of the epoll (and the list) while it reads them.
pub struct Parking {
    epoll: Arc<OwnedFd>,
    conns: Mutex<FxHashMap<u64, Arc<FcgiConn>>>,
    open: AtomicBool,
    /// Where idle connections go once `open` is cleared, while someone serves on.
    successors: OnceLock<Successors>,
    /// Connections handed over so far.
    handed: AtomicUsize,
    /// Connections with a request waiting handed to a worker with a free thread
    /// ([`Parking::relieve`]).
    relieved: AtomicUsize,
    /// The I/O runtime, where a cut response's mark waits for room
    /// ([`FcgiConn::mark_cut`]); unset in unit tests.
    io: OnceLock<tokio::runtime::Handle>,
    /// The tasks sending those marks: the stop waits for them ([`Parking::marks_out`]).
    marks: tokio_util::task::TaskTracker,
    /// Responses under way (a STDOUT record sent, END_REQUEST not yet), by the ticket
    /// their sink holds: what the stop cuts if they still run at its end
    /// ([`Parking::cut_responding`]).
    responding: Mutex<FxHashMap<u64, Responding>>,
    /// Ticks of [`IDLE_TICK`], counted only while accept is stopped at
    /// `--max-connections` ([`keep_room`]): a connection parked at tick `t` has been
    /// idle for more than [`IDLE_BEFORE_CLOSE`] once it reads `t + IDLE_TICKS`
    /// (stopped, the clock only makes idle connections look younger).
    idle_clock: AtomicU64,
    /// Starts a slow-lane task on a connection ([`Parking::lane_with`]).
    lane: OnceLock<ToLane>,
    /// A second epoll where each connection in the Python threads' one is also
    /// registered, behind it, so that it reports input only when no Python thread
    /// waited for it: what [`relieve`] sleeps on ([`Parking::watch_busy`]).
    watch: OnceLock<OwnedFd>,
    /// Connections are added to the watch: the worker has siblings to hand a request
    /// to (a worker alone pays nothing for the watch; [`relieve`] keeps it up to date).
    watching: AtomicBool,
    /// An ASGI worker's watch ([`Parking::watch_at_cap`]): no connection is registered
    /// in it; the whole epoll is, while the event loop is at `--max-concurrency`.
    cap_watch: OnceLock<OwnedFd>,
    /// The epoll is in `cap_watch` now ([`Parking::at_cap`]).
    cap_armed: AtomicBool,
    /// Set at the stop ([`Parking::close_all`]): until then, at the final stop, kept
    /// connections that linger ([`FcgiConn::lingers_at_stop`]) are closed with an
    /// answer only while it is unread, else served on ([`Parking::serves_kept`]).
    kept_until: OnceLock<std::time::Instant>,
    /// The requests in flight, by their sink's ticket, while `--timeout` is on
    /// ([`Parking::watch_overdue`]); `None`: not listed (no cost per request).
    in_flight: OnceLock<Mutex<FxHashMap<u64, InFlight>>>,
}

/// The idle clock's tick ([`Parking::idle_clock`]).
const IDLE_TICK: Duration = Duration::from_millis(100);

/// How long a kept connection must have been idle before it may be closed to make
/// room for a new one at `--max-connections`: a front server's pool hands out its
/// most recently used connection first (nginx's keepalive cache is a stack), so one
/// idle this long is one it is not about to send a request on.
const IDLE_BEFORE_CLOSE: Duration = Duration::from_secs(1);

/// [`IDLE_BEFORE_CLOSE`] in ticks: parked at some time within tick `t`, a connection is
/// idle for more than that from tick `t + 1 + IDLE_BEFORE_CLOSE / IDLE_TICK` on.
const IDLE_TICKS: u64 = 1 + (IDLE_BEFORE_CLOSE.as_millis() / IDLE_TICK.as_millis()) as u64;

/// Lines about kept connections closed at `--max-connections`: one a second at most.
static MADE_ROOM_LOG: crate::server::connection::RateLimit =
    crate::server::connection::RateLimit::new();

/// While accept is stopped at `--max-connections` and a connection waits in a listen
/// queue, closes (one per [`IDLE_TICK`] at most) the connection whose request head has
/// been arriving longest, for at least [`slow_clients::HEAD_BEFORE_CLOSE`] (a slow or
/// stalled client, uwsgi, SCGI or FastCGI: [`slow_clients::close_oldest_head`]), else a
/// kept FastCGI connection idle for more than [`IDLE_BEFORE_CLOSE`], so that neither
/// slow heads nor a front server's idle pool can hold every place. Closing first frees
/// a place the usual way (the listeners come back), so the cap is never passed; when
/// no connection qualifies, nothing is closed and the new one waits in the queue as
/// before. Runs on the I/O runtime until `stop`.
pub async fn keep_room(
    parking: Arc<Parking>,
    admission: Arc<crate::server::admission::Admission>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = admission.became_full() => {}
        }
        while admission.full_of_connections() {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(IDLE_TICK) => {}
            }
            parking.idle_clock.fetch_add(1, Ordering::Relaxed);
            if admission.full_of_connections()
                && admission.connection_waits()
                && !slow_clients::close_oldest_head(slow_clients::HEAD_BEFORE_CLOSE)
            {
                parking.make_room();
            }
        }
    }
}

/// While a FastCGI body apps may read is listed ([`slow_clients::HeadWatch::stdin`])
/// and, at two looks [`IDLE_TICK`] apart, every place to run a request is taken and a
/// request waits for one ([`Places::wanted`]): closes the FastCGI connection some of
/// whose apps read bodies still arriving that are furthest behind
/// [`slow_clients::BODY_MIN_RATE`] each, by over [`slow_clients::HEAD_BEFORE_CLOSE`]
/// ([`slow_clients::close_slowest_app_body`]). Its apps' reads fail as at a close and
/// their places go to what waits. After a close, two more looks before the next, so
/// that the places it freed are taken first. With no such body listed it sleeps (no
/// wake-up). Runs on the I/O runtime until `stop`.
pub async fn keep_apps_free(places: Places, stop: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = slow_clients::BODY_LISTED.notified() => {}
        }
        let mut pressed = false;
        while slow_clients::bodies_listed() {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(IDLE_TICK) => {}
            }
            pressed = match places.wanted() {
                Some(room) if pressed => {
                    !slow_clients::close_slowest_app_body(slow_clients::HEAD_BEFORE_CLOSE, room)
                }
                Some(_) => true,
                None => false,
            };
        }
    }
}

/// What [`keep_apps_free`] looks at: the worker's places and what waits for one.
pub struct Places {
    pub admission: Arc<crate::server::admission::Admission>,
    pub parking: Arc<Parking>,
    pub queue: Arc<crate::server::queue::Queue>,
    /// The master's scoreboard: whether every Python thread is busy, and the free
    /// places of the other workers. Without it (a single process) a WSGI worker's
    /// threads are counted by [`crate::server::admission::Admission::thread_free`].
    pub monitor: Option<Arc<dyn crate::wsgi::Monitor>>,
}

impl Places {
    /// Every place to run a request is taken and a request waits for one of this
    /// worker's, as one look sees it: which places, or `None`. Taken: no Python thread
    /// waits for a request (WSGI: the scoreboard's count, else the worker's own), or
    /// the event loop is at `--max-concurrency` (ASGI). Waits: a complete request in
    /// the ready queue; or, when no other worker has a free place (else it goes
    /// there: a new connection is taken by another worker, a request on a parked
    /// connection handed over), a request on a parked kept FastCGI connection (input
    /// that is not a close) or a new connection in a listen queue while accept runs.
    /// Never while the worker stops or recycles (`--max-requests`: what waits then is
    /// for its successor).
    fn wanted(&self) -> Option<slow_clients::Room> {
        if !self.queue.is_accepting() || self.admission.recycling() {
            return None;
        }
        let room = if self.admission.asgi() {
            if !self.admission.loop_full() {
                return None;
            }
            slow_clients::Room::Tasks
        } else {
            let busy = match &self.monitor {
                Some(m) => m.threads_all_busy(),
                None => self.admission.no_thread_free(),
            };
            if !busy {
                return None;
            }
            slow_clients::Room::Threads
        };
        if self.queue.queued() > 0 {
            return Some(room);
        }
        if self
            .monitor
            .as_ref()
            .is_some_and(|m| m.idle_elsewhere() > 0)
        {
            return None;
        }
        let waits = self.parking.request_waiting()
            || (self.admission.accepting() && self.admission.connection_waits());
        waits.then_some(room)
    }
}

/// Of `conns`, the ones with input that is not a close (a FIN, a reset, an error):
/// one poll, no wait.
fn with_input(conns: &[Arc<FcgiConn>]) -> Vec<Arc<FcgiConn>> {
    if conns.is_empty() {
        return Vec::new();
    }
    let interest = rustix::event::PollFlags::IN | rustix::event::PollFlags::RDHUP;
    let mut fds: Vec<rustix::event::PollFd<'_>> = conns
        .iter()
        .map(|c| rustix::event::PollFd::new(&c.sock, interest))
        .collect();
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    if !matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(n) if n > 0) {
        return Vec::new();
    }
    let gone = rustix::event::PollFlags::RDHUP
        | rustix::event::PollFlags::HUP
        | rustix::event::PollFlags::ERR;
    fds.iter()
        .zip(conns)
        .filter(|(f, _)| {
            let r = f.revents();
            r.contains(rustix::event::PollFlags::IN) && !r.intersects(gone)
        })
        .map(|(_, c)| Arc::clone(c))
        .collect()
}

/// How often it looks at its parked connections while they are: a request that comes
/// on one then waits this long at most (plus the hand-over) for a free thread
/// elsewhere.
const BUSY_TICK: Duration = Duration::from_millis(10);

/// The longest tick while requests wait that cannot be handed over (every worker busy,
/// or a connection not to be handed now): a request then waits this long at most
/// after a thread frees elsewhere.
const BUSY_TICK_MAX: Duration = Duration::from_millis(80);

/// How often a worker alone (no other worker to hand a request to) looks, while every
/// thread is busy, whether a SIGTTIN added one: a load, no system call.
const ALONE_TICK: Duration = Duration::from_millis(100);

/// While every thread is busy and no request ends, how long before the busy watch
/// looks at its parked connections all the same: its safety net for a request the
/// watch never heard of (two requests at the same instant, one thread waiting: both
/// can be taken for that thread's).
const STUCK: Duration = Duration::from_millis(50);

/// How often the busy watch's thread wakes by itself while a thread of its worker is
/// free and requests end (to take the sample [`STUCK`] counts from), and while every
/// one is busy. A tick that finds a thread free and no request ended since the tick
/// before is its last: it then sleeps with no tick until the begin that takes the
/// last free thread wakes it ([`crate::wsgi::BusyWake`]), so an idle worker's watch
/// does not wake.
const CALM_TICK: Duration = Duration::from_millis(250);
const STUCK_TICK: Duration = STUCK;

/// What [`relieve`] asks about this worker: whether every Python thread runs a
/// request, how many threads wait in the other serving workers, whether the master
/// keeps other workers (`--workers`, SIGTTIN/SIGTTOU: read each time), how many
/// requests it has finished (a count that only grows); and what it does with the new
/// connections waiting for their first bytes (any protocol): whether any waits, and
/// a look that hands those whose bytes came to the other workers (up to its
/// argument's count).
pub struct Busy<A, I, S, E, W, F> {
    pub all_busy: A,
    pub idle_elsewhere: I,
    pub siblings: S,
    pub ended: E,
    pub fresh_waiting: W,
    pub fresh: F,
}

/// Lines about requests handed to another worker because every thread was busy: one a
/// second at most.
static RELIEVED_LOG: crate::server::connection::RateLimit =
    crate::server::connection::RateLimit::new();

/// Lines about such hand-overs that failed: one a second at most.
static RELIEVE_FAILED_LOG: crate::server::connection::RateLimit =
    crate::server::connection::RateLimit::new();

/// Lines about parked connections the watch could not take: one a second at most.
static WATCH_FAILED_LOG: crate::server::connection::RateLimit =
    crate::server::connection::RateLimit::new();

/// The epoll data of the busy watch's own eventfd ([`crate::wsgi::BusyWake`]): no
/// connection's key (those are [`Wake::Conn`]s).
const CTL: u64 = u64::MAX;

/// The epoll data of the Python side's whole epoll in an ASGI worker's watch
/// ([`Parking::at_cap`]): input, as a connection's event is.
const WHOLE: u64 = u64::MAX - 1;

/// Starts [`relieve`] on a thread of its own (`postern-busy`, never attached to
/// Python), and on `io` the task that wakes it at `stop`. Not a task of the I/O
/// runtime, whose epoll would then hold the watch: an add into an epoll that another
/// epoll watches takes the kernel-wide epoll nesting lock and checks for loops (each
/// re-arm of a parked connection adds it to the watch again).
pub fn relieve_on_thread<A, I, S, E, W, F>(
    parking: Arc<Parking>,
    busy: Busy<A, I, S, E, W, F>,
    wake: Arc<crate::wsgi::BusyWake>,
    stop: tokio_util::sync::CancellationToken,
    io: &tokio::runtime::Handle,
) where
    A: Fn() -> bool + Send + 'static,
    I: Fn() -> usize + Send + 'static,
    S: Fn() -> bool + Send + 'static,
    E: Fn() -> u64 + Send + 'static,
    W: Fn() -> bool + Send + 'static,
    F: Fn(&dyn Fn() -> usize) -> Looked + Send + 'static,
{
    let (w, s) = (Arc::clone(&wake), stop.clone());
    let started = std::thread::Builder::new()
        .name("postern-busy".into())
        .spawn(move || relieve(&parking, busy, &w, &s));
    if let Err(e) = started {
        tracing::warn!(error = %e, "cannot start the thread that watches the parked FastCGI connections: a request on one waits for this worker's threads when all are busy");
        return;
    }
    io.spawn(async move {
        stop.cancelled().await;
        wake.notify();
    });
}

/// While every Python thread of this worker runs a request, nobody waits on the epoll
/// where its idle kept FastCGI connections are parked: a request nginx sends on one
/// (`fastcgi_keep_conn on` picks any cached connection) would wait for one of those
/// threads, however long its request runs, while other workers have threads free.
/// This thread (never attached to Python) looks instead, woken only when that may be
/// so:
///
/// - by the watch ([`Parking::watch_busy`]): input came on a connection while no
///   Python thread waited on the epoll. Each connection is registered there with
///   `EPOLLEXCLUSIVE` and in the watch behind it, and a wake-up of an exclusive
///   registration goes on to the next one only when the epoll it woke had no thread
///   in `epoll_wait` (Linux's `ep_poll_callback`). A request that finds a thread
///   waiting costs nothing here: no wake-up, no system call.
/// - by `wake` ([`crate::wsgi::BusyWake::notify`]): the begin that takes the worker's
///   last free thread, while `wake.look` says a request came so when a thread was
///   free, but between two requests (it takes it, unless that begin was the last free
///   thread's).
/// - by its own tick ([`CALM_TICK`], [`STUCK_TICK`] while every thread is busy): when
///   every thread has been busy for [`STUCK`] with no request ended, it looks once
///   (a request the watch missed would otherwise wait for a thread to free). Once a
///   calm tick finds no request ended since the one before (a thread free), it
///   sleeps with no tick, `wake.look` set: the begin that takes the last free thread
///   wakes it, and the stuck clock starts there as a tick would have started it.
///
/// An ASGI worker ([`Parking::watch_at_cap`]) is "all busy" while its event loop is at
/// `--max-concurrency`: the begin's wake-up comes from the request that takes the
/// last place ([`crate::wsgi::Monitor::at_cap`]), and once the loop is woken at the
/// cap the whole epoll is in the watch, so any event in it wakes this thread (none
/// below the cap).
///
/// New connections (any protocol) accepted while a thread was free, whose first bytes
/// came only once every thread was busy, are in no watch (they wait one-shot in the
/// threads' epoll): the safety net's look covers them, and while any waits it looks
/// again at each of its ticks, not once per stretch (`fresh`).
///
/// Then, while `all_busy()`, it looks after [`BUSY_TICK`] and every [`BUSY_TICK`]
/// while a request waits: each parked connection with input goes, its request unread
/// in its socket, to the workers with a free thread (`idle_elsewhere()` of them at
/// most per look: none when every worker is busy, so a connection is never passed
/// between busy workers), where the first free thread takes it. A worker without
/// `siblings()` (`--workers 1`, or SIGTTOU left one) has nobody to hand it to: it
/// only checks every [`ALONE_TICK`] whether a SIGTTIN added one. Runs until `stop`.
pub fn relieve<A, I, S, E, W, F>(
    parking: &Parking,
    busy: Busy<A, I, S, E, W, F>,
    wake: &crate::wsgi::BusyWake,
    stop: &tokio_util::sync::CancellationToken,
) where
    A: Fn() -> bool,
    I: Fn() -> usize,
    S: Fn() -> bool,
    E: Fn() -> u64,
    W: Fn() -> bool,
    F: Fn(&dyn Fn() -> usize) -> Looked,
{
    let Busy {
        all_busy,
        idle_elsewhere,
        siblings,
        ended,
        fresh_waiting,
        fresh,
    } = busy;
    // The parked kept connections, then the new ones waiting for their first bytes,
    // within the same room.
    let look = |room: &dyn Fn() -> usize| {
        let kept = parking.relieve(room);
        let left = || room().saturating_sub(kept.sent);
        let new = fresh(&left);
        Looked {
            sent: kept.sent + new.sent,
            waiting: kept.waiting + new.waiting,
        }
    };
    let Some(watch) = parking.watch.get().or_else(|| parking.cap_watch.get()) else {
        return;
    };
    let ctl = match rustix::event::eventfd(
        0,
        rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
    ) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the parked FastCGI connections: a request on one waits for this worker's threads when all are busy");
            return;
        }
    };
    let ctl = wake.listen(ctl);
    if let Err(e) = epoll::add(
        watch,
        ctl,
        epoll::EventData::new_u64(CTL),
        epoll::EventFlags::IN,
    ) {
        tracing::warn!(error = %e, "cannot watch the parked FastCGI connections: a request on one waits for this worker's threads when all are busy");
        return;
    }
    let drain = || {
        let mut n = [0u8; 8];
        let _ = rustix::io::read(ctl, &mut n);
    };
    // Sleeps up to `tick` (less when notified: a begin, the stop); false at the stop.
    let nap = |tick: Duration| {
        let mut fds = [rustix::event::PollFd::new(
            &ctl,
            rustix::event::PollFlags::IN,
        )];
        let limit = rustix::event::Timespec::try_from(tick).unwrap_or_default();
        if matches!(rustix::event::poll(&mut fds, Some(&limit)), Ok(n) if n > 0) {
            drain();
        }
        !stop.is_cancelled()
    };
    // Since when every thread has been seen busy, with no request ended (the count
    // then), and whether that stretch was looked at.
    let mut stuck: Option<(std::time::Instant, u64, bool)> = None;
    // The count of requests ended at the last calm tick (a thread free then).
    let mut calm: Option<u64> = None;
    // The next wait has no tick: no request ended over a whole calm tick.
    let mut deep = false;
    // `wake.look` was set for a request that came while a thread was free (not only
    // for `deep`).
    let mut looking = false;
    loop {
        parking.watch_if(siblings());
        // The watch's list says which connections had input: it is not read, only
        // taken (edge-triggered: an event per arrival), and `relieve` looks at the
        // connections themselves.
        let tick = if deep {
            None
        } else if stuck.is_some() {
            Some(STUCK_TICK)
        } else {
            Some(CALM_TICK)
        };
        let (input, notified) = {
            let mut events = [std::mem::MaybeUninit::<epoll::Event>::uninit(); 16];
            let limit = tick.map(|t| rustix::event::Timespec::try_from(t).unwrap_or_default());
            match epoll::wait(watch, &mut events, limit.as_ref()) {
                Ok((got, _)) => got.iter().fold((false, false), |(i, n), ev| {
                    let own = ev.data.u64() == CTL;
                    (i || !own, n || own)
                }),
                Err(_) => (false, false),
            }
        };
        if stop.is_cancelled() {
            return;
        }
        if notified {
            drain();
        }
        if std::mem::take(&mut deep) {
            // Woken from the sleep with no tick: by the begin that took the last free
            // thread (the stuck clock starts now, as the tick would have started it),
            // by input, or by nothing (a begin that came as this went to sleep).
            calm = None;
            if !looking {
                wake.look.store(false, Ordering::SeqCst);
            }
            if all_busy() {
                stuck = Some((std::time::Instant::now(), ended(), false));
            }
            if !input && !looking {
                continue;
            }
        }
        if !input && !notified {
            // A tick: the safety net. Every thread busy at this look and at one STUCK
            // or more before, with no request ended in between: none was free
            // meanwhile, so a request that came on a parked connection then may wait
            // unseen. Looked at once per such stretch.
            let n = ended();
            match stuck {
                _ if !all_busy() => {
                    stuck = None;
                    if calm.replace(n) == Some(n) {
                        // No request ended over a whole calm tick: sleep with no
                        // tick, unless every thread is busy by now (SeqCst: the store,
                        // then the load of the busy count; a begin adds to the count,
                        // then loads `look`: one of them sees the other).
                        wake.look.store(true, Ordering::SeqCst);
                        deep = !all_busy();
                        if !deep && !looking {
                            wake.look.store(false, Ordering::SeqCst);
                        }
                    }
                    continue;
                }
                // Looked at again at each tick of the stretch while new connections
                // wait for their bytes: nothing reports those that come meanwhile
                // (they are in no watch).
                Some((at, seen, looked))
                    if seen == n && at.elapsed() >= STUCK && (!looked || fresh_waiting()) =>
                {
                    stuck = Some((at, n, true));
                }
                Some((_, seen, _)) if seen == n => continue,
                _ => {
                    stuck = Some((std::time::Instant::now(), n, false));
                    continue;
                }
            }
        }
        if !all_busy() {
            if !input {
                continue;
            }
            // A thread is free but was not waiting (between two requests): it takes
            // the request, unless it begins another one first; then its begin wakes
            // this (SeqCst: the store, then the load of the busy count).
            wake.look.store(true, Ordering::SeqCst);
            looking = true;
            if !all_busy() {
                continue;
            }
        } else if !input && look(&idle_elsewhere).waiting == 0 {
            // Woken by that begin (or the tick): nothing waits (the free thread took
            // it).
            wake.look.store(false, Ordering::SeqCst);
            looking = false;
            continue;
        }
        // Every thread busy and a request may wait: looked at after BUSY_TICK, then
        // every BUSY_TICK while one does. Not at once: most such requests are taken
        // by a thread of this worker within that time (a short request ends), and
        // would cost a look and a hand-over each. The watch is not waited on
        // meanwhile (under a steady load it would report nearly each request: the
        // workers are all busy); the looks see those, and the next wait on it takes
        // what came meanwhile.
        wake.look.store(false, Ordering::SeqCst);
        looking = false;
        // Looks in a row that could hand nothing over: the ticks grow (up to
        // BUSY_TICK_MAX) while nothing changes, and while every worker is busy the
        // connections are not polled (nowhere to send what waits).
        let mut idle_looks = 0u32;
        loop {
            let tick = if siblings() {
                (BUSY_TICK * (1 << idle_looks.min(3))).min(BUSY_TICK_MAX)
            } else {
                ALONE_TICK
            };
            if !nap(tick) {
                return;
            }
            if !siblings() {
                if all_busy() {
                    continue;
                }
                // A thread freed: it takes what waits, as above.
                wake.look.store(true, Ordering::SeqCst);
                looking = true;
                break;
            }
            let busy_here = all_busy();
            if busy_here && idle_elsewhere() == 0 {
                idle_looks += 1;
                continue;
            }
            // With a thread free here, nothing goes elsewhere: it takes what waits.
            let here = || 0;
            let room: &dyn Fn() -> usize = if busy_here { &idle_elsewhere } else { &here };
            let looked = look(room);
            if looked.waiting == 0 {
                break;
            }
            idle_looks = if looked.sent > 0 { 0 } else { idle_looks + 1 };
        }
    }
}

/// What a look at the parked connections found ([`Parking::relieve`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Looked {
    /// Handed to a worker with a free thread.
    pub sent: usize,
    /// Still parked here with input waiting (no room elsewhere, or not to be handed
    /// now: ending, its write lock taken, a failed send).
    pub waiting: usize,
}

/// Starts a slow-lane task on a held connection with its entry.
pub type ToLane = Box<dyn Fn(Arc<FcgiConn>, Entry) + Send + Sync>;

/// The serving workers a leaving one hands its idle connections to ([`handover`]).
struct Successors {
    channel: &'static handover::Channel,
    /// False once the whole server stops (nobody will take them).
    serving: Box<dyn Fn() -> bool + Send + Sync>,
}

impl Parking {
    pub fn new(epoll: Arc<OwnedFd>) -> Arc<Parking> {
        Arc::new(Parking {
            epoll,
            conns: Mutex::new(FxHashMap::default()),
            open: AtomicBool::new(true),
            successors: OnceLock::new(),
            handed: AtomicUsize::new(0),
            relieved: AtomicUsize::new(0),
            io: OnceLock::new(),
            marks: tokio_util::task::TaskTracker::new(),
            responding: Mutex::new(FxHashMap::default()),
            idle_clock: AtomicU64::new(0),
            lane: OnceLock::new(),
            watch: OnceLock::new(),
            watching: AtomicBool::new(true),
            cap_watch: OnceLock::new(),
            cap_armed: AtomicBool::new(false),
            kept_until: OnceLock::new(),
            in_flight: OnceLock::new(),
        })
    }

    /// `--timeout` is on: each request is listed while in flight, so that one that
    /// passes it can be answered before its worker is killed ([`Parking::answer_overdue`]).
    pub fn watch_overdue(&self) {
        let _ = self.in_flight.set(Mutex::new(FxHashMap::default()));
    }

    /// Lists request `id` on `conn` (its id `request_id`, in flight since `since`)
    /// when `--timeout` is on: the ticket for [`Parking::landed`].
    fn taking_off(
        &self,
        conn: &Arc<FcgiConn>,
        (id, keep_conn): (u16, bool),
        flags: &Arc<ReqFlags>,
        request_id: &crate::logging::RequestId,
        since: std::time::Instant,
    ) -> Option<u64> {
        let list = self.in_flight.get()?;
        let ticket = NEXT_TICKET.fetch_add(1, Ordering::Relaxed);
        let entry = InFlight {
            conn: Arc::downgrade(conn),
            id,
            keep_conn,
            flags: Arc::clone(flags),
            request_id: *request_id,
            since,
        };
        list.lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ticket, entry);
        Some(ticket)
    }

    fn landed(&self, ticket: u64) {
        if let Some(list) = self.in_flight.get() {
            list.lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&ticket);
        }
    }

    /// The master condemned this worker for `--timeout`: each request in flight for
    /// longer than `limit` whose id is one of `ids` (what the master's lines past the
    /// limit carry: a line holds a whole id) and whose response has not started is
    /// answered 504 with its END_REQUEST now, before the kill (see
    /// [`FcgiConn::answer_late`]). A response that had started is left to the kill,
    /// which cuts it; a request the front server aborted is not answered. Returns how
    /// many were answered.
    pub fn answer_overdue(&self, ids: &[String], limit: Duration) -> usize {
        let Some(list) = self.in_flight.get() else {
            return 0;
        };
        // Taken out of the lock: the answers' sends may wait for room.
        let due: Vec<(Arc<FcgiConn>, InFlight)> = list
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|f| f.since.elapsed() >= limit && !f.flags.aborted.load(Ordering::Acquire))
            .filter(|f| ids.contains(&f.request_id.to_string()))
            .filter_map(|f| Some((f.conn.upgrade()?, f.clone())))
            .collect();
        let mut answered = 0;
        for (conn, f) in due {
            if !f.flags.answer_late() {
                continue;
            }
            answered += 1;
            let (rid, ran) = (f.request_id, f.since.elapsed());
            let sent = conn.answer_late(f.id, f.keep_conn, &f.flags);
            if sent {
                // For its access line, should the kill cut its app off (WSGI).
                crate::wsgi::inflight::answered_late(rid);
            } else {
                f.flags.late_answer_lost();
            }
            tracing::warn!(
                peer = %conn.peer,
                request_id = %rid,
                ran_ms = ran.as_millis() as u64,
                "the request passed --timeout before its response started: answered 504 Gateway Timeout now, before its worker is killed (a front server that kept the connection would otherwise send it again on another){}",
                if sent { "" } else { "; the front server had closed the connection" }
            );
        }
        answered
    }

    /// An ASGI worker's [`Parking::watch_busy`]: requests on parked connections are to
    /// be handed to the other workers while its event loop is at `--max-concurrency`
    /// ([`relieve`]). The loop does not wait on the epoll itself (it is nested in the
    /// loop's own), so an exclusive registration would pass every wake-up on to the
    /// watch: no connection is registered in it. Instead the whole epoll is, from the
    /// request that takes the last place to the end that frees one ([`Parking::at_cap`]):
    /// below the cap the watch holds nothing and costs nothing.
    pub fn watch_at_cap(&self) -> io::Result<()> {
        let watch = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let _ = self.cap_watch.set(watch);
        Ok(())
    }

    /// The ASGI event loop, at its cap, was woken by this epoll (`full`: something
    /// waits in it), or a place freed: the epoll goes into the watch
    /// ([`Parking::watch_at_cap`]), where what is ready in it and each event that
    /// comes to it from then on (its next requests on parked connections among them)
    /// wakes [`relieve`]'s thread, or out of it. Called by the loop thread, at those
    /// two moments only. A worker alone (no sibling to hand a request to) does not arm
    /// it, and does not arm it later in the same stretch at the cap: a request already
    /// waiting when a SIGTTIN adds a worker stays until a task ends (README, known gap).
    pub fn at_cap(&self, full: bool) {
        let Some(watch) = self.cap_watch.get() else {
            return;
        };
        if !full {
            if self.cap_armed.load(Ordering::Relaxed)
                && self.cap_armed.swap(false, Ordering::Relaxed)
            {
                let _ = epoll::delete(watch, &*self.epoll);
            }
            return;
        }
        if !self.watching.load(Ordering::Relaxed) || self.cap_armed.swap(true, Ordering::Relaxed) {
            return;
        }
        let data = epoll::EventData::new_u64(WHOLE);
        let flags = epoll::EventFlags::IN | epoll::EventFlags::ET;
        match epoll::add(watch, &*self.epoll, data, flags) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => {
                self.cap_armed.store(false, Ordering::Relaxed);
                if let Some(unlogged) = WATCH_FAILED_LOG.allow() {
                    tracing::warn!(error = %e, unwatched_unlogged = unlogged, "cannot watch the parked FastCGI connections at --max-concurrency: a request on one waits for this worker's tasks");
                }
            }
        }
    }

    /// Requests on parked connections are to be handed to the other workers while
    /// this one's threads are all busy ([`relieve`]): from now on each connection is
    /// also registered in a watch, behind its registration in the Python threads'
    /// epoll, which is exclusive. Before any connection is parked.
    pub fn watch_busy(&self) -> io::Result<()> {
        let watch = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let _ = self.watch.set(watch);
        Ok(())
    }

    /// The worker has siblings (`true`) or is alone: connections are added to the
    /// watch from now on, or not. Those listed go into the watch as it begins (behind
    /// their registration in the Python threads' epoll: a SIGTTIN added a worker to a
    /// worker alone, whose kept connections stay registered as they are).
    fn watch_if(&self, siblings: bool) {
        if self.watching.swap(siblings, Ordering::Relaxed) || !siblings {
            return;
        }
        let Some(watch) = self.watch.get() else {
            return;
        };
        let flags = epoll::EventFlags::IN | epoll::EventFlags::ET | epoll::EventFlags::EXCLUSIVE;
        let conns: Vec<Arc<FcgiConn>> = self.conns().values().cloned().collect();
        for c in conns {
            let data = epoll::EventData::new_u64(Wake::Conn(c.key).encode());
            // Under its owner lock, as its registrations are made: still listed and
            // not the slow lane's, so in the threads' epoll (EXIST: in the watch
            // already).
            let owner = c.owner();
            if !matches!(*owner, Owner::Lane(_) | Owner::Closed) && self.get(c.key).is_some() {
                let _ = epoll::add(watch, &c.sock, data, flags);
            }
        }
    }

    /// Closes (a FIN, as a front server's keepalive cache expects) the kept connection
    /// idle longest, if it has been idle for more than [`IDLE_BEFORE_CLOSE`] and is
    /// idle now: parked in the epoll (no thread holds it, no request runs inline or
    /// in the slow lane), nothing arriving on it, no END_REQUEST still going out
    /// (`ending`: the lane parks a connection as soon as it is told a request ended,
    /// before that request's last records are written), the write lock free. It is
    /// marked closed under its owner and write locks, so none of these can change
    /// before the close. True when one was closed.
    pub fn make_room(&self) -> bool {
        let now = self.idle_clock.load(Ordering::Relaxed);
        let mut idle: Vec<Arc<FcgiConn>> = self
            .conns()
            .values()
            .filter(|c| c.parked_at.load(Ordering::Relaxed) + IDLE_TICKS <= now)
            .cloned()
            .collect();
        idle.sort_unstable_by_key(|c| c.parked_at.load(Ordering::Relaxed));
        for c in idle {
            let mut owner = c.owner();
            // `ending` first: an END_REQUEST that went out since sets `parked_at`
            // before it drops.
            if c.ending.load(Ordering::Acquire) > 0
                || !matches!(*owner, Owner::Parked)
                || c.parked_at.load(Ordering::Relaxed) + IDLE_TICKS > now
            {
                continue;
            }
            let Some(_w) = c.write.try_lock() else {
                continue;
            };
            let mut one = [0u8; 1];
            let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
            if !matches!(
                rustix::net::recv(&c.sock, &mut one[..], flags),
                Err(Errno::AGAIN)
            ) {
                // Its next request is arriving (or the front server closed it: its own
                // wake-up closes it).
                continue;
            }
            if !owner.close_if_parked() {
                continue;
            }
            c.broken.store(true, Ordering::Release);
            let _ = c.sock.shutdown(std::net::Shutdown::Both);
            drop(owner);
            self.unregister(&c);
            match MADE_ROOM_LOG.allow() {
                Some(unlogged) => {
                    tracing::info!(peer = %c.peer, closed_unlogged = unlogged, "--max-connections reached with a connection waiting: closing a kept FastCGI connection idle for over 1s to let it in")
                }
                None => {
                    tracing::debug!(peer = %c.peer, "--max-connections reached with a connection waiting: closing a kept FastCGI connection idle for over 1s to let it in")
                }
            }
            return true;
        }
        false
    }

    /// A parked connection has input that is not a close (a request waiting for a
    /// thread or place): one poll of them, no wait.
    pub fn request_waiting(&self) -> bool {
        let conns: Vec<Arc<FcgiConn>> = self.conns().values().cloned().collect();
        with_input(&conns)
            .iter()
            .any(|c| matches!(*c.owner(), Owner::Parked))
    }

    /// Every Python thread of this worker is busy ([`relieve`]): each parked connection
    /// with input waiting is marked so (its request's time counts from now), and up
    /// to `idle_elsewhere()` of them go to the workers with a free thread, their
    /// requests unread in their sockets. Only one parked (owner and write lock
    /// taken; nothing of a request still going out), whose input is not a close.
    pub fn relieve(&self, idle_elsewhere: &dyn Fn() -> usize) -> Looked {
        let mut looked = Looked::default();
        if !self.open.load(Ordering::SeqCst) {
            return looked;
        }
        let Some(channel) = self.successors() else {
            return looked;
        };
        let conns: Vec<Arc<FcgiConn>> = self.conns().values().cloned().collect();
        if conns.is_empty() {
            return looked;
        }
        let ready = with_input(&conns);
        let now = std::time::Instant::now();
        let mut room: Option<usize> = None;
        for c in ready {
            let mut owner = c.owner();
            if !matches!(*owner, Owner::Parked) {
                continue;
            }
            c.mark_waiting(now);
            looked.waiting += 1;
            if c.ending.load(Ordering::Acquire) > 0 || c.has_carried() {
                continue;
            }
            if looked.sent >= *room.get_or_insert_with(idle_elsewhere) {
                continue;
            }
            // The stop may have begun meanwhile: then it decides (close_all).
            if !self.open.load(Ordering::SeqCst) || !self.hands_over() {
                continue;
            }
            let Some(w) = c.write.try_lock() else {
                continue;
            };
            // Closed here from now: an event a Python thread takes meanwhile is stale.
            *owner = Owner::Closed;
            drop(owner);
            self.unregister(&c);
            let waited = c.waiting_since().map_or(Duration::ZERO, |t| t.elapsed());
            let late = c.late_ids();
            match channel.send_waiting(c.sock.as_fd(), c.listener, waited, c.said_nginx(), &late) {
                Ok(()) => {
                    c.handed_over.store(true, Ordering::Release);
                    drop(w);
                    looked.sent += 1;
                    looked.waiting -= 1;
                    self.relieved.fetch_add(1, Ordering::Relaxed);
                    let waited_ms = waited.as_millis() as u64;
                    let asgi = self.cap_watch.get().is_some();
                    match (RELIEVED_LOG.allow(), asgi) {
                        (Some(unlogged), false) => {
                            tracing::info!(peer = %c.peer, waited_ms, handed_unlogged = unlogged, "every Python thread of this worker is busy: a request waiting on a kept FastCGI connection goes to a worker with a free thread")
                        }
                        (None, false) => {
                            tracing::debug!(peer = %c.peer, waited_ms, "every Python thread of this worker is busy: a request waiting on a kept FastCGI connection goes to a worker with a free thread")
                        }
                        (Some(unlogged), true) => {
                            tracing::info!(peer = %c.peer, waited_ms, handed_unlogged = unlogged, "this worker is at its --max-concurrency: a request waiting on a kept FastCGI connection goes to a worker with a free place")
                        }
                        (None, true) => {
                            tracing::debug!(peer = %c.peer, waited_ms, "this worker is at its --max-concurrency: a request waiting on a kept FastCGI connection goes to a worker with a free place")
                        }
                    }
                }
                Err(e) => {
                    drop(w);
                    // A full channel: tried again at the next look. Either way the line
                    // is rate-limited (it could come every look for every connection).
                    if e.kind() == std::io::ErrorKind::WouldBlock {
                        tracing::debug!(peer = %c.peer, "the hand-over channel is full: a kept FastCGI connection with a request waiting stays here until the next look");
                    } else if let Some(unlogged) = RELIEVE_FAILED_LOG.allow() {
                        tracing::warn!(peer = %c.peer, error = %e, failed_unlogged = unlogged, "cannot hand a kept FastCGI connection with a request waiting to another worker; it waits here for a free thread");
                    }
                    // Back in the epoll: adding it reports the input at once.
                    *c.owner() = Owner::Held { input: true };
                    self.park(c, false);
                }
            }
        }
        looked
    }

    /// Connections with a request waiting handed to a worker with a free thread so far.
    pub fn relieved(&self) -> usize {
        self.relieved.load(Ordering::Relaxed)
    }

    /// How a connection whose hand-over failed reaches the slow lane.
    pub fn lane_with(&self, to_lane: ToLane) {
        let _ = self.lane.set(to_lane);
    }

    /// Tasks that outlive a request (a cut response's mark) run on `io`.
    pub fn run_on(&self, io: tokio::runtime::Handle) {
        let _ = self.io.set(io);
    }

    /// A cut's mark can wait for room: there is an I/O runtime (not in unit tests).
    fn can_mark(&self) -> bool {
        self.io.get().is_some()
    }

    /// Runs `mark` (a cut response's mark waiting for room) on the I/O runtime, where
    /// the stop waits for it.
    fn spawn_mark(&self, mark: impl std::future::Future<Output = ()> + Send + 'static) {
        if let Some(io) = self.io.get() {
            self.marks.spawn_on(mark, io);
        }
    }

    /// Response `id` on `conn` is under way: listed until [`Parking::responded`].
    fn responding(&self, conn: &Arc<FcgiConn>, id: u16, flags: &Arc<ReqFlags>) -> u64 {
        let ticket = NEXT_TICKET.fetch_add(1, Ordering::Relaxed);
        let r = Responding {
            conn: Arc::clone(conn),
            id,
            flags: Arc::clone(flags),
        };
        self.responding
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ticket, r);
        ticket
    }

    fn responded(&self, ticket: u64) {
        self.responding
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ticket);
    }

    /// The stop ends with responses still under way (`--graceful-timeout`, a second
    /// signal, SIGQUIT): the process is about to leave, and its exit would close their
    /// connections plainly, which nginx takes for the end of the response over a Unix
    /// socket when it does not buffer it, or without keep-conn, and over TCP (a FIN)
    /// likewise. So each is cut as a failing app's is: the STDERR note and the invalid
    /// record on a Unix socket ([`FcgiConn::mark_cut`]), a reset over TCP (SO_LINGER
    /// 0, the exit's close sends it). regression: deploy HIGH: a stream cut by
    /// --graceful-timeout at a reload reached curl as a complete 200 (exit 0) through
    /// nginx with keep-conn and `X-Accel-Buffering: no`. Returns how many were cut;
    /// their marks may still wait for room ([`Parking::marks_out`]).
    pub fn cut_responding(&self) -> usize {
        let cut: Vec<Responding> =
            std::mem::take(&mut *self.responding.lock().unwrap_or_else(|e| e.into_inner()))
                .into_values()
                .collect();
        let n = cut
            .iter()
            .filter(|r| r.conn.cut(r.id, &r.flags, CUT_LOCK_WAIT))
            .count();
        if n > 0 {
            tracing::warn!(
                cut = n,
                "FastCGI responses still under way as the process leaves are cut: no END_REQUEST, a reset over TCP, an invalid record on a Unix socket, so that the front server does not take them as complete"
            );
        }
        n
    }

    /// At the stop, once no request runs: waits until the cut responses' marks still
    /// waiting for room are out (each gives up at --read-timeout by itself), up to
    /// `deadline`. Dropped with the runtime instead, the connection closed unmarked,
    /// often mid-record, and nginx took the truncated body as the whole response.
    /// Returns false when marks were still waiting at `deadline`: those responses may
    /// now look complete, so the stop is not clean (exit code 1).
    /// regression: it exited 0 (review LOW).
    pub async fn marks_out(&self, deadline: std::time::Instant) -> bool {
        self.marks.close();
        if self.marks.is_empty() {
            return true;
        }
        // INFO: otherwise the stop is silent for up to --graceful-timeout.
        // regression: DEBUG, 'stopping' then nothing for 30 s (review LOW).
        tracing::info!(
            marks = self.marks.len(),
            within = ?deadline.saturating_duration_since(std::time::Instant::now()),
            "cut FastCGI responses wait for their mark (the front server is not reading) before the process leaves, up to --graceful-timeout or each one's --read-timeout"
        );
        let waited = tokio::time::timeout_at(deadline.into(), self.marks.wait()).await;
        if waited.is_err() {
            tracing::warn!(
                left = self.marks.len(),
                "cut FastCGI responses closed unmarked at --graceful-timeout (the front server read nothing): they may look complete"
            );
            return false;
        }
        true
    }

    /// Cut responses' marks still wait for room (an ASGI loop's cut-off cuts its
    /// responses before the process's leaving looks at them: [`FcgiConn::cut`]).
    pub fn marks_pending(&self) -> usize {
        self.marks.len()
    }

    /// When this process leaves while others serve on (`serving()` says whether they
    /// still do), its idle connections go to them through `channel` instead of being
    /// closed.
    pub fn hand_over_to(
        &self,
        channel: &'static handover::Channel,
        serving: Box<dyn Fn() -> bool + Send + Sync>,
    ) {
        let _ = self.successors.set(Successors { channel, serving });
    }

    /// Connections handed over so far.
    pub fn handed(&self) -> usize {
        self.handed.load(Ordering::Relaxed)
    }

    /// The channel, if idle connections are to be handed over now.
    fn successors(&self) -> Option<&'static handover::Channel> {
        self.successors
            .get()
            .filter(|s| (s.serving)())
            .map(|s| s.channel)
    }

    /// Sends an idle connection (out of the epoll and the list, its owner `Closed`)
    /// to a serving worker; if that fails once nobody serves on, to the slow lane (a
    /// last request answered, then closed), else closes it. `fresh_since`: it never carried
    /// a request, and was accepted then (its `--head-timeout` goes with it).
    fn hand_over(
        &self,
        conn: &Arc<FcgiConn>,
        channel: &handover::Channel,
        fresh_since: Option<std::time::Instant>,
    ) {
        self.unregister(conn);
        let fresh_for = fresh_since.map(|t| t.elapsed());
        // A request it came with from a leaving worker, not begun here, goes on with it.
        let read = conn.take_carried();
        let late = conn.late_ids();
        match channel.send(
            conn.sock.as_fd(),
            conn.listener,
            fresh_for,
            &read,
            conn.said_nginx(),
            &late,
        ) {
            Ok(()) => {
                // Not `broken`: the END_REQUEST of its last request may still be going
                // out from here (the slow lane learns a request ended before its
                // END_REQUEST is written, so the id is free when the front server
                // reuses it), and must. Nothing else is written from here: the front
                // server sends no next request before that END_REQUEST, and only the
                // new worker answers one.
                conn.handed_over.store(true, Ordering::Release);
                self.handed.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                // Nobody serves on any more (the master died meanwhile): the slow lane
                // waits a moment for a last request (answered, then closed), as at
                // the final stop. A shutdown here could cut the END_REQUEST of its last
                // request, still going out, and closed a request already sent unread.
                let lane = self.lane.get().filter(|_| !self.hands_over());
                let Some(to_lane) = lane else {
                    tracing::warn!(peer = %conn.peer, error = %e, "cannot hand an idle FastCGI connection over to the serving workers; closing it");
                    let _ = conn.sock.shutdown(std::net::Shutdown::Both);
                    return;
                };
                tracing::debug!(peer = %conn.peer, error = %e, "cannot hand an idle FastCGI connection over (nobody serves on): it waits a moment for a last request, then closes");
                let entry = {
                    let mut owner = conn.owner();
                    *owner = Owner::Held { input: false };
                    owner.enter_lane(false)
                };
                to_lane(Arc::clone(conn), entry);
            }
        }
    }

    /// A kept connection this thread holds, woken by input it has not read (its next
    /// request), goes to the workers that serve on now, that input with it in its
    /// socket: this worker has taken its last request under `--max-requests` (it
    /// recycles, and its stop would hand it over all the same). False when no worker
    /// serves on or the send failed: it stays held here, in the epoll as before.
    pub fn pass_on(&self, conn: &Arc<FcgiConn>) -> bool {
        let Some(channel) = self.successors() else {
            return false;
        };
        // Out of this epoll first: the other worker's own events start at once.
        self.unregister(conn);
        let late = conn.late_ids();
        match channel.send(
            conn.sock.as_fd(),
            conn.listener,
            None,
            &[],
            conn.said_nginx(),
            &late,
        ) {
            Ok(()) => {
                conn.handed_over.store(true, Ordering::Release);
                *conn.owner() = Owner::Closed;
                self.handed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = %conn.peer, "no room left under --max-requests: the kept FastCGI connection goes, its next request unread, to the workers that serve on");
                true
            }
            Err(e) => {
                tracing::warn!(peer = %conn.peer, error = %e, "cannot hand a kept FastCGI connection over to the serving workers; serving its request here");
                self.insert(conn);
                if let Err(e) = self.apply(conn, Arm::Add) {
                    tracing::error!(peer = %conn.peer, error = %e, "cannot watch a FastCGI connection again");
                }
                false
            }
        }
    }

    /// A kept connection this thread holds, woken by input it has not read, waits in
    /// the epoll again, its event to come back at once (the input is there).
    pub fn park_unread(&self, conn: Arc<FcgiConn>) {
        if let Owner::Held { input } = &mut *conn.owner() {
            *input = true;
        }
        self.park(conn, true);
    }

    fn conns(&self) -> MutexGuard<'_, FxHashMap<u64, Arc<FcgiConn>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection an epoll event names, if it is still listed.
    pub fn get(&self, key: u64) -> Option<Arc<FcgiConn>> {
        self.conns().get(&key).cloned()
    }

    fn insert(&self, conn: &Arc<FcgiConn>) {
        self.conns().insert(conn.key, Arc::clone(conn));
    }

    fn remove(&self, conn: &FcgiConn) {
        self.conns().remove(&conn.key);
    }

    /// Tells the epoll what a transition needs. Edge-triggered: an event per arrival
    /// of input, not one per wait while it is unread (see [`Owner`]).
    fn apply(&self, conn: &Arc<FcgiConn>, arm: Arm) -> rustix::io::Result<()> {
        let data = epoll::EventData::new_u64(Wake::Conn(conn.key).encode());
        if let Some(watch) = self.watch.get() {
            return self.apply_watched(conn, arm, data, watch);
        }
        let flags = epoll::EventFlags::IN | epoll::EventFlags::RDHUP | epoll::EventFlags::ET;
        match arm {
            Arm::Keep => Ok(()),
            // The caller has listed it: an event may come as soon as it is added.
            Arm::Add => match epoll::add(&*self.epoll, &conn.sock, data, flags) {
                Err(Errno::EXIST) => epoll::modify(&*self.epoll, &conn.sock, data, flags),
                r => r,
            },
            Arm::Rearm => match epoll::modify(&*self.epoll, &conn.sock, data, flags) {
                Err(Errno::NOENT) => epoll::add(&*self.epoll, &conn.sock, data, flags),
                r => r,
            },
        }
    }

    /// [`Parking::apply`] with the watch of a busy worker ([`Parking::watch_busy`]): the
    /// connection's registration in the Python threads' epoll is exclusive, and the
    /// watch's comes after it in the socket's wait queue (exclusive entries are woken
    /// in the order they were added, and one that wakes a thread ends the wake-up), so
    /// the watch hears of input only when no Python thread waited for it. An exclusive
    /// registration cannot be modified (EINVAL) nor take `EPOLLRDHUP` (a close still
    /// reports `EPOLLIN`; nothing reads the flags): the Python threads' one is added
    /// again instead of modified, which reports input already there as the
    /// modification did, and the watch's is then added again behind it.
    fn apply_watched(
        &self,
        conn: &Arc<FcgiConn>,
        arm: Arm,
        data: epoll::EventData,
        watch: &OwnedFd,
    ) -> rustix::io::Result<()> {
        let flags = epoll::EventFlags::IN | epoll::EventFlags::ET | epoll::EventFlags::EXCLUSIVE;
        let again = || {
            let _ = epoll::delete(&*self.epoll, &conn.sock);
            epoll::add(&*self.epoll, &conn.sock, data, flags)
        };
        match arm {
            Arm::Keep => return Ok(()),
            // In the epoll already as a new connection waiting for its first bytes.
            Arm::Add => match epoll::add(&*self.epoll, &conn.sock, data, flags) {
                Err(Errno::EXIST) => {
                    let _ = epoll::delete(watch, &conn.sock);
                    again()?
                }
                r => r?,
            },
            // The watch's entry out first: its thread waits on it, so a wake-up that
            // reached it before the threads' entry would end there (exclusive
            // entries are woken in the order they were added), and the Python threads
            // would never hear of that input. Added again behind the threads' one,
            // which reports input already there, as the modification did.
            Arm::Rearm => {
                let _ = epoll::delete(watch, &conn.sock);
                again()?;
            }
        }
        if !self.watching.load(Ordering::Relaxed) {
            return Ok(());
        }
        let watched = match epoll::add(watch, &conn.sock, data, flags) {
            Err(Errno::EXIST) => {
                let _ = epoll::delete(watch, &conn.sock);
                epoll::add(watch, &conn.sock, data, flags)
            }
            r => r,
        };
        if let Err(e) = watched {
            // A feature lost for this connection, not a failure of it: said at most
            // once a second (ENOMEM, or the user's epoll watch limit reached).
            if let Some(unlogged) = WATCH_FAILED_LOG.allow() {
                tracing::warn!(peer = %conn.peer, error = %e, unwatched_unlogged = unlogged, "cannot watch a parked FastCGI connection: a request on it waits for this worker's threads when all are busy");
            }
        }
        Ok(())
    }

    /// Out of the epoll (and the watch) and the list: the slow lane reads it now.
    fn unregister(&self, conn: &FcgiConn) {
        self.remove(conn);
        let _ = epoll::delete(&*self.epoll, &conn.sock);
        if let Some(watch) = self.watch.get() {
            let _ = epoll::delete(watch, &conn.sock);
        }
    }

    /// Waits for the connection's next request in the fast path; closes it instead when
    /// postern is stopping or the connection is broken. `registered`: it is in the
    /// epoll already (woken there, or watched while its request ran inline).
    pub fn park(&self, conn: Arc<FcgiConn>, registered: bool) {
        self.park_as(conn, registered, None);
    }

    /// [`Parking::park`] for the slow lane (the connection is not in the epoll):
    /// `fresh_since` when it never carried a request, accepted then; handed over, it
    /// keeps that `--head-timeout` deadline in its new worker.
    pub fn park_from_lane(&self, conn: Arc<FcgiConn>, fresh_since: Option<std::time::Instant>) {
        self.park_as(conn, false, fresh_since);
    }

    fn park_as(
        &self,
        conn: Arc<FcgiConn>,
        registered: bool,
        fresh_since: Option<std::time::Instant>,
    ) {
        if !registered {
            self.insert(&conn);
        }
        let mut owner = conn.owner();
        // Listed before `open` is read, and `close_all` clears `open` before it reads
        // the list and then each owner under its lock: either it sees this connection
        // parked, or this sees `open` cleared.
        // A never-served connection (`fresh_since`) comes here only to be handed over
        // (the lane parks it only once the worker leaves), possibly before
        // `close_all` has cleared `open`: parked as a kept one it would reach its new
        // worker without its --head-timeout and stay open for good.
        // regression: W2 of the soak review (idle connections open for good after a
        // reload, 2 in 40 rounds).
        let open = self.open.load(Ordering::SeqCst) && !conn.is_broken() && fresh_since.is_none();
        if !open && !conn.is_broken() {
            if let Some(channel) = self.successors() {
                // Leaving while others serve on: idle now, so theirs (never closed).
                *owner = Owner::Closed;
                drop(owner);
                self.hand_over(&conn, channel, fresh_since);
                return;
            }
            // The final stop, its answer just out (or idle, held by a thread or the slow
            // lane as the stop began): one that lingers is closed only once idle, by a
            // slow-lane task (the Python threads no longer wait on the epoll), which
            // serves what comes meanwhile; so is one whose last answer went out before
            // the stop, without the close (`send_last`): the front server may have
            // read that answer, cached the connection and sent its next request on it
            // already (lane::LINGER).
            // regression (hostile): closed here at once, such a connection reset a POST
            // nginx had just sent on it (a 502, nothing in postern's log), about one
            // graceful stop in 70 under load with two upstreams.
            if fresh_since.is_none() && (conn.lingers_at_stop() || !conn.shut_by_answer()) {
                if let Some(to_lane) = self.lane.get() {
                    *owner = Owner::Held { input: false };
                    let entry = owner.enter_lane(false);
                    drop(owner);
                    self.unregister(&conn);
                    to_lane(conn, entry);
                    return;
                }
            }
        }
        if let Some(arm) = owner.park(open, registered) {
            // A load and a store: no read-modify-write per request.
            let now = self.idle_clock.load(Ordering::Relaxed);
            conn.parked_at.store(now, Ordering::Relaxed);
            let Err(e) = self.apply(&conn, arm) else {
                return;
            };
            *owner = Owner::Closed;
            tracing::error!(peer = %conn.peer, error = %e, "cannot wait on a FastCGI connection; closing it");
        }
        drop(owner);
        self.remove(&conn);
    }

    /// At stop: idle connections are handed over to the serving workers if there
    /// are any; busy ones follow once idle again (see [`Parking::park`]). When the
    /// whole server stops, the idle ones are returned, taken out of the epoll and
    /// owned by the slow lane ([`Entry`]): closing one now could meet a request the
    /// front server is sending on it, so the lane waits a moment for one (answered,
    /// then closed) or for the front server's close (see `lane::LINGER`). Those whose
    /// keep-conn request runs inline go to the lane too, which adopts the request and
    /// reads what comes meanwhile ([`Owner::lane_at_final_stop`]).
    ///
    /// `kept_until`: when the whole server stops, kept connections that linger
    /// ([`FcgiConn::lingers_at_stop`]) may be served on until then; their answers close
    /// them from then on, read or not.
    pub fn close_all(&self, kept_until: std::time::Instant) -> Vec<(Arc<FcgiConn>, Entry)> {
        let _ = self.kept_until.set(kept_until);
        self.open.store(false, Ordering::SeqCst);
        let listed: Vec<Arc<FcgiConn>> = self.conns().values().cloned().collect();
        let mut idle = Vec::new();
        for c in listed {
            let mut owner = c.owner();
            if let Some(channel) = self.successors() {
                // Parked: it carried a request (a never-served one is parked only
                // when handed over, and then goes to its new worker's lane).
                if owner.close_if_parked() {
                    drop(owner);
                    self.hand_over(&c, channel, None);
                }
                continue;
            }
            if let Some(entry) = owner.lane_at_final_stop() {
                drop(owner);
                self.unregister(&c);
                idle.push((c, entry));
            }
        }
        idle
    }

    /// Before the final stop: finds whether each kept TCP connection's peer is nginx
    /// (it reads /proc: off the answer path, [`FcgiConn::known_nginx`]).
    pub fn warm_peers(&self) {
        let tcp: Vec<Arc<FcgiConn>> = self.conns().values().filter(|c| c.tcp).cloned().collect();
        for c in tcp {
            c.peer_is_nginx();
        }
    }

    /// The slow lane holds an idle connection at stop: true when it goes to the
    /// serving workers (through [`Parking::park`]) rather than closing.
    pub fn hands_over(&self) -> bool {
        self.successors().is_some()
    }

    /// Stopping with nobody to hand connections to: each kept connection closes, with
    /// its next END_REQUEST ([`FcgiConn::at_stop`]) or once idle.
    pub fn closing_for_good(&self) -> bool {
        !self.open.load(Ordering::SeqCst) && !self.hands_over()
    }

    /// Sets when the stop's time for kept connections ends (once: [`Parking::close_all`]
    /// keeps a time set before it).
    pub fn set_kept_until(&self, kept_until: std::time::Instant) {
        let _ = self.kept_until.set(kept_until);
    }

    /// When the final stop's time for kept connections ends (half `--graceful-timeout`
    /// from its start; `None` before the final stop).
    pub fn stop_kept_until(&self) -> Option<std::time::Instant> {
        self.kept_until.get().copied()
    }

    /// At the final stop, kept connections that linger may still be served on: the
    /// stop's time for them is not over ([`Parking::close_all`]'s `kept_until`).
    pub fn serves_kept(&self) -> bool {
        self.kept_until
            .get()
            .is_some_and(|t| std::time::Instant::now() < *t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> Arc<ReqFlags> {
        Arc::default()
    }

    const HELD: Owner = Owner::Held { input: false };

    /// A kept connection over a Unix socket pair (a peer that is not nginx: this test).
    fn unix_conn(parking: &Arc<Parking>) -> (std::os::unix::net::UnixStream, Arc<FcgiConn>) {
        let (front, ours) = std::os::unix::net::UnixStream::pair().unwrap();
        let sock = socket2::Socket::from(OwnedFd::from(ours));
        let conn = FcgiConn::new(
            sock,
            "test".into(),
            false,
            0,
            Duration::from_secs(1),
            parking,
            None,
        );
        (front, conn)
    }

    #[test]
    fn proc_net_addresses_are_written_as_the_kernel_prints_them() {
        let v4: std::net::SocketAddrV4 = "127.0.0.1:8080".parse().unwrap();
        // As printed on a little-endian machine (this one's: x86_64, aarch64).
        if cfg!(target_endian = "little") {
            assert_eq!(proc_net_v4(&v4), "0100007F:1F90");
            let v6: std::net::SocketAddrV6 = "[::1]:80".parse().unwrap();
            assert_eq!(proc_net_v6(&v6), "00000000000000000000000001000000:0050");
        }
    }

    #[test]
    fn the_peer_of_a_loopback_tcp_connection_is_found_among_the_descriptors() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (ours, _) = l.accept().unwrap();
        let ours = socket2::Socket::from(ours);
        let Some(found) = tcp_peer_socket(&ours) else {
            // No /proc/net/tcp here (a sandbox): nothing to find.
            assert!(std::fs::metadata("/proc/net/tcp").is_err());
            return;
        };
        use std::os::fd::AsRawFd;
        let link = std::fs::read_link(format!("/proc/self/fd/{}", client.as_raw_fd())).unwrap();
        assert_eq!(link.to_str(), Some(found.as_str()));
        // This process is not nginx.
        assert!(!tcp_peer_is_nginx(&ours));
    }

    // regression: at the final stop the last answer to Apache over a Unix socket was
    // END_REQUEST, then a shutdown: two events, and Apache could read END_REQUEST,
    // reuse the connection and send its next request before the close (lost: AH01067,
    // AH01075). It is shut down only while END_REQUEST is still unread, so the close
    // is there when the peer reads it; once read, it is left open (served on).
    #[test]
    fn the_last_answer_to_a_peer_that_lingers_closes_only_while_unread() {
        use std::io::Read;
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC).unwrap();
        let parking = Parking::new(Arc::new(ep));
        let (tail, n) = fcgi::response_tail(1, false);
        // Serving: no stop, answers end as usual.
        let (_front, conn) = unix_conn(&parking);
        assert!(conn.lingers_at_stop(), "a Unix peer that is not nginx");
        assert_eq!(conn.at_stop(), AtStop::ServesOn);
        // The final stop (no successors), within the time for kept connections.
        parking.close_all(std::time::Instant::now() + Duration::from_secs(60));
        assert_eq!(conn.at_stop(), AtStop::ClosesUnread);
        // Unread when the answer is out: closed with it (its bytes, then EOF).
        let (mut front, conn) = unix_conn(&parking);
        assert!(conn.send_last_unread(1, b"body", &tail[..n]));
        front.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        front
            .read_to_end(&mut got)
            .expect("EOF after the answer, nothing to wait for");
        assert!(got.ends_with(&tail[..n]));
        // The look that decides: bytes sent are unread until the peer reads them all
        // (once read, the peer may be sending its next request: no shutdown then).
        let (mut front, conn) = unix_conn(&parking);
        conn.write(b"sent").unwrap();
        assert!(conn.peer_has_unread());
        let mut two = [0u8; 2];
        front.read_exact(&mut two).unwrap();
        assert!(conn.peer_has_unread(), "half read");
        front.read_exact(&mut two).unwrap();
        assert!(!conn.peer_has_unread(), "all read: nothing queued");
        // Past the time for kept connections: closed with the answer, read or not.
        let late = Parking::new(Arc::new(
            epoll::create(epoll::CreateFlags::CLOEXEC).unwrap(),
        ));
        late.close_all(std::time::Instant::now());
        let (_front, conn) = unix_conn(&late);
        assert_eq!(conn.at_stop(), AtStop::Closes);
    }

    // regression (review of bb6ebb8): the look at what the peer has not read, after
    // the last answer to a peer that lingers, ran once the write lock was let go; the
    // answer to the peer's next request could start in that gap, and the look then
    // shut the connection down in its middle. It runs under the send's hold of the lock,
    // for small answers (one copied send) and large ones (vectored).
    #[test]
    fn the_look_after_an_answer_runs_under_the_same_hold_of_the_write_lock() {
        use std::io::Read;
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC).unwrap();
        let parking = Parking::new(Arc::new(ep));
        let (tail, n) = fcgi::response_tail(1, false);
        let (mut front, conn) = unix_conn(&parking);
        front.set_nonblocking(true).unwrap();
        for len in [4, 64 * 1024] {
            let body = vec![b'x'; len];
            let mut locked = None;
            conn.send_stdout_then(1, &body, &tail[..n], || {
                locked = Some(conn.write.is_locked());
            })
            .unwrap();
            assert_eq!(locked, Some(true), "{len} bytes: looked under the lock");
            // (Within the socket's buffer: all there; the read ends at WouldBlock.)
            let mut got = Vec::new();
            let _ = front.read_to_end(&mut got);
            assert!(
                got.ends_with(&tail[..n]),
                "{len} bytes: the answer went out"
            );
        }
        // A failed send runs nothing after it.
        let (front, conn) = unix_conn(&parking);
        drop(front);
        let mut ran = false;
        assert!(conn
            .send_stdout_then(1, b"gone", &tail[..n], || ran = true)
            .is_err());
        assert!(!ran, "nothing runs after a failed send");
    }

    // regression: a hand-over marked the connection broken, and the END_REQUEST of its
    // last slow-lane request (the lane is told the request ended just before that
    // write, so it can go idle and be handed over first) was never sent: nginx waited
    // for it until fastcgi_read_timeout ("upstream timed out while reading upstream";
    // soak, seed 3, once in 3 minutes of reloads).
    #[test]
    fn a_handed_over_connection_still_sends_the_end_request_announced_before() {
        use std::io::Read;
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC).unwrap();
        let parking = Parking::new(Arc::new(ep));
        let channel: &'static handover::Channel =
            Box::leak(Box::new(handover::Channel::pair().unwrap()));
        let (mut front, ours) = std::os::unix::net::UnixStream::pair().unwrap();
        let sock = socket2::Socket::from(OwnedFd::from(ours));
        let conn = FcgiConn::new(
            sock,
            "test".into(),
            false,
            0,
            Duration::from_secs(1),
            &parking,
            None,
        );
        parking.hand_over(&conn, channel, None);
        assert_eq!(parking.handed(), 1);
        let (tail, n) = fcgi::response_tail(1, false);
        conn.send_stdout(1, b"", &tail[..n])
            .expect("END_REQUEST still goes out");
        let mut got = vec![0u8; n];
        front.read_exact(&mut got).unwrap();
        assert_eq!(&got[..], &tail[..n]);
        // Dropped here, the old worker's copy does not shut the socket down.
        drop(conn);
        let adopted = channel.take().expect("handed over");
        drop(adopted);
    }

    #[test]
    fn a_busy_worker_hands_on_only_parked_connections_with_a_request_waiting() {
        use std::io::{Read, Write};
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC).unwrap();
        let parking = Parking::new(Arc::new(ep));
        let channel: &'static handover::Channel =
            Box::leak(Box::new(handover::Channel::pair().unwrap()));
        parking.hand_over_to(channel, Box::new(|| true));
        let pair = || {
            let (front, ours) = std::os::unix::net::UnixStream::pair().unwrap();
            let sock = socket2::Socket::from(OwnedFd::from(ours));
            let conn = FcgiConn::new(
                sock,
                "test".into(),
                false,
                4,
                Duration::from_secs(1),
                &parking,
                None,
            );
            parking.park(Arc::clone(&conn), false);
            (front, conn)
        };
        let (_quiet_front, quiet) = pair();
        let (closed_front, closed) = pair();
        drop(closed_front);
        let (mut front, waiting) = pair();
        front.write_all(b"next request").unwrap();
        // Nobody free elsewhere: it stays, marked (its time counts from now).
        let stays = Looked {
            sent: 0,
            waiting: 1,
        };
        assert_eq!(parking.relieve(&|| 0), stays);
        assert!(matches!(*waiting.owner(), Owner::Parked));
        let seen = waiting.waiting_since().expect("seen waiting");
        assert!(quiet.waiting_since().is_none() && closed.waiting_since().is_none());
        // An END_REQUEST still going out: not now.
        waiting.ending.fetch_add(1, Ordering::AcqRel);
        assert_eq!(parking.relieve(&|| 1), stays);
        waiting.ending.fetch_sub(1, Ordering::AcqRel);
        std::thread::sleep(Duration::from_millis(20));
        let sent = Looked {
            sent: 1,
            waiting: 0,
        };
        assert_eq!(parking.relieve(&|| 1), sent);
        assert_eq!(parking.relieved(), 1);
        assert!(matches!(*waiting.owner(), Owner::Closed));
        assert!(parking.get(waiting.key).is_none(), "out of the epoll");
        assert!(matches!(*quiet.owner(), Owner::Parked));
        assert!(matches!(*closed.owner(), Owner::Parked));
        let a = channel.take().expect("handed over");
        assert!(channel.take().is_none(), "only that one");
        assert_eq!(a.listener, 4);
        let waited = a.waited.expect("with its wait");
        assert!(waited >= seen.elapsed().saturating_sub(Duration::from_millis(2)));
        // Its request is in the socket, unread; this worker's copy does not close it.
        drop(waiting);
        let mut got = [0u8; 12];
        (&a.sock).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"next request");
        (&a.sock).write_all(b"answer").unwrap();
        let mut back = [0u8; 6];
        front.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"answer");
    }

    /// Waits (a hang guard, not a measure) until thread `tid` of this process sleeps:
    /// the test's thread does nothing but wait on an epoll then.
    fn asleep(tid: i32) {
        let stat = format!("/proc/self/task/{tid}/stat");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            let text = std::fs::read_to_string(&stat).unwrap_or_default();
            // pid (comm) S ...: the state follows the last ')'.
            if text
                .rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('S'))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("thread {tid} never slept");
    }

    /// A Python thread waiting on `ep` (one event, up to 10 s): its tid, and what it got.
    fn waiter(ep: &Arc<OwnedFd>) -> (i32, std::thread::JoinHandle<usize>) {
        let ep = Arc::clone(ep);
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            tx.send(rustix::thread::gettid().as_raw_nonzero().get())
                .unwrap();
            let mut ev = [std::mem::MaybeUninit::<epoll::Event>::uninit(); 1];
            let limit = rustix::event::Timespec {
                tv_sec: 10,
                tv_nsec: 0,
            };
            epoll::wait(&*ep, &mut ev, Some(&limit)).unwrap().0.len()
        });
        (rx.recv().unwrap(), t)
    }

    /// Events the watch holds now (taken).
    fn watched(parking: &Parking) -> usize {
        let mut ev = [std::mem::MaybeUninit::<epoll::Event>::uninit(); 8];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let watch = parking.watch.get().expect("watched");
        epoll::wait(watch, &mut ev, Some(&zero)).unwrap().0.len()
    }

    // The busy worker's wake-up (issue 9's cost per request): input on a parked
    // connection reaches the watch (the I/O thread) only when no Python thread waits
    // on the epoll; one that waits takes it alone, also once the connection was
    // re-armed (added again: its watch must stay behind it). Before, every request
    // that took the last free thread woke the I/O thread.
    #[test]
    fn the_watch_hears_of_input_only_when_no_python_thread_waits() {
        use std::io::Write;
        let ep = Arc::new(epoll::create(epoll::CreateFlags::CLOEXEC).unwrap());
        let parking = Parking::new(Arc::clone(&ep));
        parking.watch_busy().unwrap();
        let (mut front, ours) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let conn = FcgiConn::new(
            socket2::Socket::from(OwnedFd::from(ours)),
            "test".into(),
            false,
            0,
            Duration::from_secs(1),
            &parking,
            None,
        );
        parking.park(Arc::clone(&conn), false);
        for round in ["added", "re-armed"] {
            let (tid, t) = waiter(&ep);
            asleep(tid);
            front.write_all(b"a request").unwrap();
            assert_eq!(t.join().unwrap(), 1, "{round}: the waiting thread took it");
            assert_eq!(watched(&parking), 0, "{round}: a thread waited");
            // Nobody waits now (every thread busy): the watch hears of the next input.
            front.write_all(b"more").unwrap();
            assert_eq!(watched(&parking), 1, "{round}: no thread waited");
            // Taken, as a Python thread would take it (its event is kept: held).
            let mut ev = [std::mem::MaybeUninit::<epoll::Event>::uninit(); 1];
            let zero = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            assert_eq!(epoll::wait(&*ep, &mut ev, Some(&zero)).unwrap().0.len(), 1);
            let mut buf = [0u8; 64];
            while conn.recv(&mut buf).is_ok() {}
            // Input while held, then parked: re-armed.
            *conn.owner() = Owner::Held { input: true };
            parking.park(Arc::clone(&conn), true);
            assert!(matches!(*conn.owner(), Owner::Parked));
            // (Nothing to report: it was read.)
            assert_eq!(watched(&parking), 0);
        }
    }

    /// A kept connection in a watched parking (the busy watch on), parked: held by a
    /// thread as one woken for its request is.
    fn watched_conn(parking: &Arc<Parking>) -> (std::os::unix::net::UnixStream, Arc<FcgiConn>) {
        let (front, ours) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let conn = FcgiConn::new(
            socket2::Socket::from(OwnedFd::from(ours)),
            "test".into(),
            false,
            0,
            Duration::from_secs(1),
            parking,
            None,
        );
        parking.park(Arc::clone(&conn), false);
        (front, conn)
    }

    // At the final stop (nobody to hand connections to) a kept connection whose next
    // request is in its socket, unread, goes to the slow lane, which answers it: closed
    // instead, the front server gets a reset (nginx: a 502). Two ways to be there: parked
    // with its request waiting (every thread busy), or ended inline by a thread while
    // its next request came (the event found it held): that thread must leave it parked
    // (re-armed), not held for itself, which close_all skips.
    // regression: 6478fe0 (reverted in c51aa5e) kept such a connection held by the
    // thread that ended its request, for that thread's next look: at the final stop it
    // was closed with its next request unread (review-kc2 MEDIUM: a 502 at nginx).
    #[test]
    fn at_the_final_stop_a_kept_connection_with_its_next_request_waiting_goes_to_the_lane() {
        use std::io::Write;
        let ep = Arc::new(epoll::create(epoll::CreateFlags::CLOEXEC).unwrap());
        let parking = Parking::new(Arc::clone(&ep));
        parking.watch_busy().unwrap();
        // Parked, its next request waiting (no thread took the event).
        let (mut front_a, parked) = watched_conn(&parking);
        front_a.write_all(b"next request").unwrap();
        // Ended inline by a thread while its next request came.
        let (mut front_b, ended) = watched_conn(&parking);
        // The thread lives on past the stop (what it holds, it holds then).
        let (ended_tx, ended_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            assert!(matches!(ended.woken(), Woken::Read));
            front_b.write_all(b"next request").unwrap();
            // Another thread's event finds it held: the input is the holder's to see.
            assert!(matches!(ended.woken(), Woken::Stale));
            ended.after_inline(true, true);
            ended_tx.send(Arc::clone(&ended)).unwrap();
            let _ = stop_rx.recv();
            front_b
        });
        let ended = ended_rx.recv().unwrap();
        assert!(
            matches!(*ended.owner(), Owner::Parked),
            "parked as its request ended, not held"
        );
        let to_lane = parking.close_all(std::time::Instant::now());
        stop_tx.send(()).unwrap();
        let _front_b = t.join().unwrap();
        assert_eq!(to_lane.len(), 2, "both go to the slow lane");
        for c in [&parked, &ended] {
            let (_, entry) = to_lane
                .iter()
                .find(|(l, _)| Arc::ptr_eq(l, c))
                .expect("to the lane");
            assert!(!entry.fresh && entry.adopted.is_none());
            assert!(matches!(*c.owner(), Owner::Lane(_)));
            assert!(!c.is_broken());
            // Its request is still there for the lane to read.
            let mut buf = [0u8; 64];
            assert_eq!(c.recv(&mut buf), Ok(12));
        }
    }

    // review-kc MEDIUM 3: a request the watch never hears of (two requests at the same
    // instant, one thread waiting: both can be taken for its) waited behind the busy
    // threads' requests however long: nothing else woke the busy watch. Now, every
    // thread busy for STUCK with no request ended, it looks once. Here the connection
    // is parked before the watch exists (so it is not in it: the watch is deaf to it).
    // Before (no safety net): nothing was handed over.
    #[test]
    fn a_request_the_watch_missed_goes_to_a_free_worker_all_the_same() {
        use std::io::Write;
        let ep = Arc::new(epoll::create(epoll::CreateFlags::CLOEXEC).unwrap());
        let parking = Parking::new(Arc::clone(&ep));
        let channel: &'static handover::Channel =
            Box::leak(Box::new(handover::Channel::pair().unwrap()));
        parking.hand_over_to(channel, Box::new(|| true));
        let (mut front, _conn) = watched_conn(&parking);
        parking.watch_busy().unwrap();
        let wake = Arc::new(crate::wsgi::BusyWake::default());
        let stop = tokio_util::sync::CancellationToken::new();
        let relief = {
            let (parking, wake, stop) = (Arc::clone(&parking), Arc::clone(&wake), stop.clone());
            std::thread::spawn(move || {
                let busy = Busy {
                    all_busy: || true,
                    idle_elsewhere: || 1,
                    siblings: || true,
                    ended: || 7,
                    fresh_waiting: || false,
                    fresh: |_: &dyn Fn() -> usize| Looked::default(),
                };
                relieve(&parking, busy, &wake, &stop);
            })
        };
        front.write_all(b"a request").unwrap();
        // A bound against a hang, not a measure (CALM_TICK + STUCK + BUSY_TICK).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut handed = None;
        while handed.is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            handed = channel.take();
        }
        stop.cancel();
        wake.notify();
        relief.join().unwrap();
        assert!(
            handed.is_some(),
            "the waiting request was never handed over"
        );
        assert_eq!(parking.relieved(), 1);
    }

    // An idle worker's watch sleeps with no tick (two calm ticks with a thread free and
    // no request ended), `look` set; the begin that takes the last free thread wakes it
    // (as WorkerMonitor::begin does when `look` is set), and its safety net hands over
    // a request it missed as before. Before: `look` stayed unset (it ticked instead,
    // 4 times a second).
    #[test]
    fn after_an_idle_spell_the_begin_that_takes_the_last_thread_wakes_the_watch() {
        use std::io::Write;
        let ep = Arc::new(epoll::create(epoll::CreateFlags::CLOEXEC).unwrap());
        let parking = Parking::new(Arc::clone(&ep));
        let channel: &'static handover::Channel =
            Box::leak(Box::new(handover::Channel::pair().unwrap()));
        parking.hand_over_to(channel, Box::new(|| true));
        let (mut front, _conn) = watched_conn(&parking);
        parking.watch_busy().unwrap();
        let wake = Arc::new(crate::wsgi::BusyWake::default());
        let stop = tokio_util::sync::CancellationToken::new();
        let busy = Arc::new(AtomicBool::new(false));
        let relief = {
            let (parking, wake, stop) = (Arc::clone(&parking), Arc::clone(&wake), stop.clone());
            let busy = Arc::clone(&busy);
            std::thread::spawn(move || {
                let busy = Busy {
                    all_busy: move || busy.load(Ordering::SeqCst),
                    idle_elsewhere: || 1,
                    siblings: || true,
                    ended: || 7,
                    fresh_waiting: || false,
                    fresh: |_: &dyn Fn() -> usize| Looked::default(),
                };
                relieve(&parking, busy, &wake, &stop);
            })
        };
        // A bound against a hang, not a measure (two CALM_TICKs).
        let asleep = |secs| {
            let deadline = std::time::Instant::now() + Duration::from_secs(secs);
            while !wake.look.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            wake.look.load(Ordering::SeqCst)
        };
        let slept = asleep(10);
        // The begin that takes the last free thread.
        busy.store(true, Ordering::SeqCst);
        if wake.look.load(Ordering::SeqCst) {
            wake.notify();
        }
        front.write_all(b"a request").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut handed = None;
        while slept && handed.is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            handed = channel.take();
        }
        stop.cancel();
        wake.notify();
        relief.join().unwrap();
        assert!(slept, "the idle watch never went to sleep with no tick");
        assert!(
            handed.is_some(),
            "the waiting request was never handed over"
        );
        assert_eq!(parking.relieved(), 1);
    }

    #[test]
    fn the_wait_a_connection_was_seen_in_is_its_next_request_s_start_once() {
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC).unwrap();
        let parking = Parking::new(Arc::new(ep));
        let (_front, ours) = std::os::unix::net::UnixStream::pair().unwrap();
        let conn = FcgiConn::new(
            socket2::Socket::from(OwnedFd::from(ours)),
            "test".into(),
            false,
            0,
            Duration::from_secs(1),
            &parking,
            None,
        );
        let t = std::time::Instant::now() - Duration::from_millis(300);
        conn.mark_waiting(t);
        conn.mark_waiting(std::time::Instant::now());
        let start = conn.read_start();
        assert!(start <= t + Duration::from_millis(1) && t <= start + Duration::from_millis(1));
        assert!(conn.read_start() > t + Duration::from_millis(250), "once");
    }

    #[test]
    fn only_a_quiet_kept_connection_idle_long_enough_makes_room() {
        use std::io::{Read, Write};
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC).unwrap();
        let parking = Parking::new(Arc::new(ep));
        let pair = || {
            let (front, ours) = std::os::unix::net::UnixStream::pair().unwrap();
            let sock = socket2::Socket::from(OwnedFd::from(ours));
            let conn = FcgiConn::new(
                sock,
                "test".into(),
                false,
                0,
                Duration::from_secs(1),
                &parking,
                None,
            );
            (front, conn)
        };
        let (mut old_front, old) = pair();
        let (_young_front, young) = pair();
        parking.park(Arc::clone(&old), false);
        let tick = |t: u64| parking.idle_clock.store(t, Ordering::Relaxed);
        tick(IDLE_TICKS - 1);
        assert!(!parking.make_room(), "idle for too short a time");
        tick(IDLE_TICKS);
        parking.park(Arc::clone(&young), false);
        // regression (the reverted first attempt): an END_REQUEST still going out
        // (the slow lane parks before it is written), a write in progress, a request
        // arriving: never closed then.
        old.ending.fetch_add(1, Ordering::AcqRel);
        assert!(!parking.make_room(), "an END_REQUEST is going out");
        old.ending.fetch_sub(1, Ordering::AcqRel);
        {
            let _w = old.write.lock();
            assert!(!parking.make_room(), "a write holds the lock");
        }
        old_front.write_all(b"x").unwrap();
        assert!(!parking.make_room(), "a request is arriving");
        let mut one = [0u8; 1];
        assert_eq!(old.recv(&mut one), Ok(1));
        // Quiet and idle long enough: closed (a FIN), the younger one left alone.
        assert!(parking.make_room());
        assert!(matches!(*old.owner(), Owner::Closed));
        assert!(parking.get(old.key).is_none());
        let mut rest = Vec::new();
        assert_eq!(old_front.read_to_end(&mut rest).unwrap(), 0);
        assert!(matches!(*young.owner(), Owner::Parked));
        assert!(!parking.make_room(), "the other one is too young");
    }

    /// A request running inline on a connection woken in the epoll.
    fn inline(id: u16, keep_conn: bool) -> Owner {
        let mut o = HELD;
        o.serve_inline(id, keep_conn, flags(), true);
        o
    }

    #[test]
    fn a_parked_connection_is_held_by_the_thread_it_wakes() {
        let mut o = Owner::Parked;
        assert!(matches!(o.woken(), Woken::Read));
        assert!(matches!(o, Owner::Held { input: false }));
    }

    #[test]
    fn input_while_held_is_kept_and_parking_rearms_for_it() {
        // regression guard: edge-triggered, the event does not come again.
        let mut o = Owner::Parked;
        o.woken();
        assert!(matches!(o.woken(), Woken::Stale));
        assert!(matches!(o, Owner::Held { input: true }));
        assert_eq!(o.park(true, true), Some(Arm::Rearm));
        assert!(matches!(o, Owner::Parked));
    }

    #[test]
    fn input_kept_while_held_rearms_a_keep_conn_inline_request() {
        let mut o = Owner::Held { input: true };
        assert_eq!(o.serve_inline(1, true, flags(), true), Arm::Rearm);
        assert!(matches!(o, Owner::Inline { watched: true, .. }));
    }

    #[test]
    fn a_keep_conn_request_costs_no_epoll_call_once_registered() {
        let mut o = Owner::Parked;
        assert!(matches!(o.woken(), Woken::Read));
        assert_eq!(o.serve_inline(1, true, flags(), true), Arm::Keep);
        assert!(matches!(o.end(1), Ender::Inline { keep_conn: true }));
        assert_eq!(o.park(true, true), Some(Arm::Keep));
        assert!(matches!(o, Owner::Parked));
    }

    #[test]
    fn a_fresh_keep_conn_connection_is_added_once() {
        let mut o = HELD;
        assert_eq!(o.serve_inline(1, true, flags(), false), Arm::Add);
        let mut o = HELD;
        assert_eq!(o.park(true, false), Some(Arm::Add));
    }

    #[test]
    fn only_a_keep_conn_inline_request_is_watched() {
        let mut o = HELD;
        assert_eq!(o.serve_inline(1, false, flags(), false), Arm::Keep);
        assert!(matches!(o, Owner::Inline { watched: false, .. }));
        assert!(matches!(
            inline(1, true),
            Owner::Inline { watched: true, .. }
        ));
    }

    #[test]
    fn input_during_an_inline_request_hands_it_to_the_lane() {
        let mut o = inline(7, true);
        let Woken::Steal(entry) = o.woken() else {
            panic!("not stolen")
        };
        assert!(matches!(entry.adopted, Some((7, true, _))));
        assert!(!entry.fresh);
        assert!(matches!(o, Owner::Lane(_)));
        // The inline request's end is now the lane's to hear.
        let Ender::Lane(tx) = o.end(7) else {
            panic!("not told to the lane")
        };
        assert!(tx.same_channel(&entry.tx));
        assert!(matches!(o, Owner::Lane(_)));
        // Late events find the lane: nothing to do.
        assert!(matches!(o.woken(), Woken::Stale));
    }

    #[test]
    fn input_after_the_request_ended_is_kept_for_the_parking() {
        // The request ended (END_REQUEST being written) as the next one arrived.
        let mut o = inline(3, true);
        assert!(matches!(o.end(3), Ender::Inline { keep_conn: true }));
        assert!(matches!(o.woken(), Woken::Stale));
        assert_eq!(o.park(true, true), Some(Arm::Rearm));
        assert!(matches!(o.woken(), Woken::Read));
    }

    #[test]
    fn an_unwatched_inline_request_is_not_stolen() {
        let mut o = inline(3, false);
        assert!(matches!(o.woken(), Woken::Stale));
        assert!(matches!(o.end(3), Ender::Inline { keep_conn: false }));
    }

    #[test]
    fn the_end_of_another_id_is_nobodys() {
        let mut o = inline(3, true);
        assert!(matches!(o.end(4), Ender::Nobody));
        assert!(matches!(o, Owner::Inline { id: 3, .. }));
        let mut o = Owner::Closed;
        assert!(matches!(o.end(3), Ender::Nobody));
        assert!(matches!(o.woken(), Woken::Stale));
    }

    #[test]
    fn the_lane_parks_an_idle_connection_unless_stopping() {
        let mut o = HELD;
        let entry = o.enter_lane(true);
        assert!(entry.fresh && entry.adopted.is_none());
        // The lane took it out of the epoll: parking adds it again.
        assert_eq!(o.park(true, false), Some(Arm::Add));
        assert!(matches!(o, Owner::Parked));
        let mut o = HELD;
        let _entry = o.enter_lane(false);
        assert_eq!(o.park(false, false), None);
        assert!(matches!(o, Owner::Closed));
    }

    #[test]
    fn the_stop_closes_only_parked_connections() {
        let mut o = Owner::Parked;
        assert!(o.close_if_parked());
        assert!(matches!(o, Owner::Closed));
        for mut o in [HELD, inline(1, true)] {
            assert!(!o.close_if_parked());
            assert!(!matches!(o, Owner::Closed));
        }
    }

    #[test]
    fn the_final_stop_gives_parked_and_watched_connections_to_the_lane() {
        let mut o = Owner::Parked;
        let entry = o
            .lane_at_final_stop()
            .expect("a parked connection goes to the lane");
        assert!(!entry.fresh && entry.adopted.is_none());
        assert!(matches!(o, Owner::Lane(_)));
        // Its request runs inline, watched (keep-conn): the lane adopts it.
        let mut o = inline(7, true);
        let entry = o
            .lane_at_final_stop()
            .expect("a watched connection goes to the lane");
        assert!(matches!(entry.adopted, Some((7, true, _))));
        assert!(matches!(o, Owner::Lane(_)));
        // Held by a thread, or inline without keep-conn (closes after its request).
        for mut o in [HELD, inline(1, false)] {
            assert!(o.lane_at_final_stop().is_none());
            assert!(!matches!(o, Owner::Lane(_)));
        }
    }
}
