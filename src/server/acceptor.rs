//! The fast path, run by the Python threads themselves (GIL released): wait on the
//! listeners and the ready queue, accept, read once, and when the whole request is
//! already there (nginx sends head and small bodies in one go) serve it on this thread
//! with no hand-off at all, as uWSGI does. A connection with nothing to read yet (nginx
//! connects, then writes) waits in the same epoll ([`super::pending`]) and is read the
//! same way when its bytes come. Anything else (partial head, large or slow body, bad
//! input) goes to the tokio slow lane, which queues the request when it is complete.
//! A silent or slow peer therefore never holds a Python thread.

use std::cell::{Cell, RefCell};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rustix::event::{epoll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::{RecvFlags, SocketFlags};
use tokio_util::codec::Decoder;

use super::admission::{Admission, Permit, Reserve};
use super::connection::{self, Start};
use super::fastcgi::{self, FcgiConn, FcgiSettings, Parking, Woken};
use super::lane::{Limits, SlowLane};
use super::pending::{self, Pending, Waiting};
use super::queue::Queue;
use super::sink::ConnSink;
use super::span::request_span;
use super::wake::Wake;
use crate::codec::uwsgi::UwsgiCodec;
use crate::codec::{Frame, Protocol};
use crate::proto::fastcgi as fcgi;
use crate::wsgi::{Body, Request, Source, TryNext};

/// Connections a stopping ASGI worker hands on from the listen queues
/// ([`Acceptor::hand_on_queued`]): the few it may have been woken for; a longer queue
/// means busy workers, which take it themselves.
const HAND_ON_MAX: usize = 16;

/// Bytes read by the first recv of a connection: a whole uwsgi head fits.
const FIRST_READ: usize = 64 * 1024 + 4;

pub use super::listener::Listener;

/// The epoll the Python threads wait on: the token eventfd and every listener, all
/// level-triggered.
pub fn epoll_for(queue: &Queue, listeners: &[Listener]) -> std::io::Result<OwnedFd> {
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    epoll::add(
        &ep,
        queue.tokens(),
        epoll::EventData::new_u64(Wake::Queue.encode()),
        epoll::EventFlags::IN,
    )?;
    // Listeners ready now are taken in the order they are added: from the one after
    // the listener last accepted from, not always the first (see `listener::arm_first`).
    let (n, first) = (listeners.len(), super::listener::arm_first(listeners.len()));
    for i in (0..n).map(|k| (first + k) % n) {
        let l = &listeners[i];
        epoll::add(
            &ep,
            &l.sock,
            epoll::EventData::new_u64(Wake::Listener(i).encode()),
            epoll::EventFlags::IN,
        )?;
    }
    Ok(ep)
}

/// The [`Source`] the Python threads pull requests from.
pub struct Acceptor {
    /// Interest list: the ready-queue eventfd, each listener, FastCGI connections, and
    /// new connections waiting for their first bytes; the epoll data is a [`Wake`].
    pub epoll: Arc<OwnedFd>,
    /// Idle FastCGI keep-alive connections.
    pub parking: Arc<Parking>,
    pub fcgi: FcgiSettings,
    /// The accept token: held by the one thread waiting on `epoll`.
    pub waiter: Mutex<()>,
    pub listeners: Arc<Vec<Listener>>,
    pub queue: Arc<Queue>,
    pub slow: SlowLane,
    pub limits: Limits,
    /// New connections waiting in `epoll` for their first bytes.
    pub pending: Pending,
    /// Open connections against `--max-connections`; takes the listeners out of
    /// `epoll` when full or out of descriptors.
    pub admission: Arc<Admission>,
    /// Listeners shut down under this process ([`Acceptor::listener_shut`]).
    pub shut: super::listener::ShutWatch,
    /// The listen queue's turns beside kept FastCGI connections ([`BacklogTurn`]).
    pub backlog_turn: BacklogTurn,
}

/// Fairness between the listen queues and parked FastCGI connections for the WSGI
/// threads. Their epoll gives one event per wait and takes its ready sources in turn: a
/// listener, however long its queue, is one source, each kept connection with its next
/// request another. Under overload a front server's kept connections (nginx
/// `fastcgi_keep_conn on` with `keepalive`) always have their next request ready, so a
/// new connection got one turn in as many as there were kept connections.
/// regression (probe 323): 2x1, an app sleeping 100 ms, `keepalive 32`, 150 clients:
/// 228 of 808 requests answered 504 after nginx's 15 s, while a fair queue waits 7.5 s;
/// beside a uwsgi listener loaded alike, the uwsgi side got 39 responses against 359.
///
/// So a kept connection's request served while a listen queue is known to hold more
/// (its last accept found a connection) owes the next turn to the listen queues: under
/// overload they get at least every other turn. Known only from an accept that found
/// one, so no accept is tried for nothing while the queues are empty: kept connections
/// alone still cost their three system calls per request, and a queue costs one failed
/// accept each time it empties. The owed turns go round the listeners known to hold
/// more, one after the other, so that one loaded listener does not take them all.
/// regression (review 325): with uwsgi, FastCGI and SCGI listeners loaded beside kept
/// connections, the last listener accepted from kept every owed turn, and another got
/// fewer responses than before (180-198 against ~305, 2x1, an app sleeping 10 ms).
#[derive(Default)]
pub struct BacklogTurn {
    /// Bit `i % 64`: listener `i`'s last accept found a connection.
    waiting: std::sync::atomic::AtomicU64,
    /// Where the next owed turn starts looking (the listener after the last one owed).
    next: std::sync::atomic::AtomicUsize,
    /// The next look accepts from one of them first.
    owed: std::sync::atomic::AtomicBool,
}

impl BacklogTurn {
    /// An accept from listener `i` found a connection (`true`) or none.
    fn accepted(&self, i: usize, found: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        let bit = 1u64 << (i % 64);
        if found {
            if self.waiting.load(Relaxed) & bit == 0 {
                self.waiting.fetch_or(bit, Relaxed);
            }
        } else if self.waiting.load(Relaxed) & bit != 0 {
            self.waiting.fetch_and(!bit, Relaxed);
        }
    }

    /// A kept connection's request was taken: the listen queues that hold more have
    /// the next turn.
    fn kept_served(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.waiting.load(Relaxed) != 0 {
            self.owed.store(true, Relaxed);
        }
    }

    /// The listener owed this turn, if any (taken once): of those known to hold more,
    /// the first from where the last owed turn left off, among `n` listeners.
    fn take(&self, n: usize) -> Option<usize> {
        use std::sync::atomic::Ordering::Relaxed;
        if !self.owed.load(Relaxed) {
            return None;
        }
        self.owed.store(false, Relaxed);
        let waiting = self.waiting.load(Relaxed);
        if waiting == 0 || n == 0 {
            return None;
        }
        let from = self.next.load(Relaxed) % n;
        let i = (0..n)
            .map(|k| (from + k) % n)
            .find(|&i| waiting & (1u64 << (i % 64)) != 0)?;
        self.next.store(i + 1, Relaxed);
        Some(i)
    }
}

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0u8; FIRST_READ]);
    /// Where a uwsgi/SCGI connection's first read lands: what it read is split off
    /// without a copy (`BytesMut::split`), so the head and a body that came with it
    /// reach the app as they were received (the body's one copy is into the `bytes`
    /// that `wsgi.input` returns).
    static PLAIN: RefCell<BytesMut> = RefCell::new(BytesMut::new());
    /// The event loop's guess ([`Source::try_next`] is called by that one thread, the
    /// Python threads' `next` never looks at it): the listener its last look accepted
    /// from, and how many looks since have tried it first. Only while the listeners
    /// are in this epoll (the loop's own epoll was not found): there, they wake the
    /// loop apart ([`Source::try_accept`]).
    static GUESS: Cell<(usize, u32)> = const { Cell::new((NO_GUESS, 0)) };
    /// The event loop at its `--max-concurrency` ([`Source::below_cap`]): whose turn
    /// the last freed place was (the listeners': `true`), and, until the next look
    /// takes it, whether that look accepts first (`Some(true)`) or asks the epoll
    /// first (`Some(false)`), whatever woke it.
    /// Starts so that the first freed place asks the epoll first (a request the slow
    /// lane completed meanwhile is not put behind the listen queue).
    static CAP_TURN: Cell<(bool, Option<bool>)> = const { Cell::new((true, None)) };
}

const NO_GUESS: usize = usize::MAX;

/// Whether the first look after a place freed at the cap ([`Source::below_cap`])
/// accepts first (`Some(true)`) or asks the epoll first; `None` for any other look.
/// Taken once.
fn take_cap_turn() -> Option<bool> {
    let (turn, first) = CAP_TURN.get();
    if first.is_some() {
        CAP_TURN.set((turn, None));
    }
    first
}

/// Looks in a row that accept straight from the guessed listener before one waits on
/// the epoll again. The epoll (level-triggered, one event per wait) takes its ready
/// sources in turn, so the ready queue, waiting connections and parked FastCGI
/// connections still get theirs behind a listener that never empties: after at most
/// this many + 1 requests per listener turn ahead of them, not after the whole listen
/// queue. A trade: each guess saves an epoll wait (4: 1.2 waits per request instead of
/// 2), each one more delays the other sources under a flood of new connections (16
/// gave parked keep-conn connections beside a flood 0.5-0.85k req/s against 7-11k
/// without guessing; 4 gave 3.8k).
const GUESS_RUN: u32 = 4;

/// Bytes the first read of a uwsgi/SCGI connection may take: a whole head (64 KiB + 4),
/// and with a usual head of a few hundred bytes a body of up to ~110 KiB, so such an
/// upload (nginx sends what it buffered at once) needs no second read and no copy to
/// grow the buffer. Under glibc's mmap threshold (128 KiB): a new buffer, when the
/// last one is still in use, comes from the heap, not from mmap.
const PLAIN_READ: usize = 120 * 1024;

impl Source for Acceptor {
    fn next(&self) -> Option<Request> {
        // Counted while it waits (only in a WSGI worker with a FastCGI listener and
        // no scoreboard): with none waiting, a FastCGI body an app waits for may be
        // closed for a request that waits (fastcgi::keep_apps_free).
        let _free = self.admission.thread_free();
        loop {
            let mut step = Step::Again;
            if let Some(req) = self.turn(true, false, &mut step) {
                // Back to the default policy before Python runs (`--sched-batch`).
                super::sched::serving();
                return Some(req);
            }
            if let Step::Draining = step {
                super::sched::serving();
                // Draining: serve what the slow lane still completes, then end.
                return self.queue.next_draining();
            }
        }
    }

    fn try_next(&self) -> TryNext {
        self.look(false)
    }

    fn try_accept(&self) -> TryNext {
        self.look(true)
    }

    fn wake_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        Some(self.epoll.as_fd())
    }

    fn at_cap(&self) {
        // At --max-concurrency every task that ends lets one look in: a guess there
        // would give each free place to the next new connection, and parked FastCGI
        // connections and the ready queue would get one place in GUESS_RUN + 1
        // (regression: keep-conn beside a flood at the cap went from 104 to 4.7 req/s).
        GUESS.set((NO_GUESS, 0));
        self.admission.loop_at_cap(true);
        // A request on a parked FastCGI connection meanwhile goes to a worker with a
        // free place (fastcgi::relieve, whose flag this is).
        if let Some(m) = &self.slow.monitor {
            m.at_cap(true);
        }
    }

    fn waits_at_cap(&self) {
        // Not at `at_cap`: a task that ends in the step that started it (an app that
        // answers without waiting) frees its place before anything can wait.
        self.parking.at_cap(true);
    }

    fn watch_in_loop(&self, loop_epoll: std::os::fd::RawFd, mark: std::os::fd::RawFd) -> bool {
        match self.admission.arming().move_to_loop(loop_epoll, mark) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "the listeners stay in the acceptor's epoll: the event loop of every idle worker wakes for each connection");
                false
            }
        }
    }

    fn loop_watches(&self, on: bool) {
        self.admission.arming().watch(on);
    }

    fn below_cap(&self) {
        // Every other place freed at the cap goes to the listeners first.
        let (listeners, _) = CAP_TURN.get();
        CAP_TURN.set((!listeners, Some(!listeners)));
        self.admission.loop_at_cap(false);
        self.parking.at_cap(false);
        if let Some(m) = &self.slow.monitor {
            m.at_cap(false);
        }
    }

    fn spare_places(&self, n: usize) {
        self.queue.set_spare(n);
    }
}

/// A connection just accepted, with the place reserved for it under `--max-requests`
/// (or why there is none).
struct Accepted {
    sock: socket2::Socket,
    peer: Arc<str>,
    started: Instant,
    permit: Permit,
    room: Reserve,
}

/// What one look at the epoll found when it found no request (see
/// [`Acceptor::turn`]). The request itself is `turn`'s return value, so that it is
/// built where `next` returns it (a `Request` in an enum of its own cost a copy of it).
enum Step {
    /// An event was handled without a request coming of it: look again.
    Again,
    /// Nothing was ready (only when not blocking); look again within this long at the
    /// latest (a waiting connection's deadline, the retry of accept).
    Empty(Option<Duration>),
    /// The server stopped accepting.
    Draining,
}

impl Acceptor {
    /// The event loop's look ([`Source::try_next`]), the listen queues first when one
    /// of them woke the loop (`accept_first`, [`Source::try_accept`]).
    fn look(&self, accept_first: bool) -> TryNext {
        let mut accept_first = accept_first;
        loop {
            let mut step = Step::Again;
            if let Some(req) = self.turn(false, std::mem::take(&mut accept_first), &mut step) {
                return TryNext::Ready(req);
            }
            match step {
                Step::Again => {}
                Step::Empty(wait) => return TryNext::Empty(wait),
                Step::Draining => return TryNext::Draining,
            }
        }
    }

    /// One wait on the epoll and the handling of its event: the body of
    /// [`Source::next`] (`block`: wait for an event) and of [`Source::try_next`] (the
    /// event loop's non-blocking look, zero timeout), so both share one state machine.
    /// `None` with `step` saying why when no request came of it. `accept_first`: a
    /// listener in the event loop's own epoll woke the loop.
    #[inline(always)]
    fn turn(&self, block: bool, accept_first: bool, step: &mut Step) -> Option<Request> {
        let queue = &self.queue;
        {
            if !queue.is_accepting() {
                *step = Step::Draining;
                return None;
            }
            // One epoll shared by every Python thread of the process, and only one
            // thread at a time waits on it (the accept token, uWSGI's thunder-lock
            // idea): the others sleep on the mutex, so a connection wakes exactly one
            // thread. The token is given back as soon as this thread has taken its
            // connection off the epoll (accepted it, or taken its one-shot or
            // edge-triggered event), before reading it: a read may wait a little for the
            // rest of a request ([`Arrival`]), and a client sending partial requests
            // must not make every other connection wait for that.
            let token = if block {
                match self.waiter.try_lock() {
                    Ok(t) => t,
                    Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
                    // Another thread waits on the epoll: this one waits for the token,
                    // waiting for work as in the epoll (`sched`).
                    Err(std::sync::TryLockError::WouldBlock) => {
                        super::sched::waiting();
                        self.waiter.lock().unwrap_or_else(|e| e.into_inner())
                    }
                }
            } else {
                // The event loop never sleeps on the mutex: a Python thread holding
                // the token (there is none beside the loop today) is waited for by
                // looking again soon.
                match self.waiter.try_lock() {
                    Ok(t) => t,
                    Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
                    Err(std::sync::TryLockError::WouldBlock) => {
                        *step = Step::Empty(Some(Duration::from_millis(1)));
                        return None;
                    }
                }
            };
            if !queue.is_accepting() {
                return None;
            }
            // The thread with the token also keeps the waiting connections' timeout
            // (as the I/O thread does, pending::keep_timeouts, when none is free), and
            // the retry of accept after the descriptor limit.
            let now = Instant::now();
            self.expire_waiting(now);
            self.admission.tick(now);
            // While the listeners are in this epoll, the event loop woke because the
            // epoll is readable, and under load that is nearly always the listener it
            // last accepted from: accept there first, and
            // wait on the epoll (timeout 0) only when that finds nothing. That saves
            // one system call per request (the loop's own epoll wait is the wake-up
            // WSGI's threads get from this epoll); a guess that finds nothing (another
            // worker took the connection) costs one, and the next look asks the epoll.
            // A guessed connection that came without its request ends the guess too.
            // At its cap, the event loop gives every other freed place to a new
            // connection first: its epoll (parked FastCGI connections, the ready queue)
            // is asked first otherwise, and kept connections that always have a next
            // request ready would take every place while the listen queue waits.
            // regression (hostile): with --max-concurrency 2 and four busy kept
            // connections a new connection waited until they stopped (11 s; nginx:
            // 504 after 60 s).
            // In the loop's own epoll the listeners wake it apart from this epoll
            // (`watch_in_loop`'s mark): a look they asked for accepts first, one whose
            // accept finds nothing goes on to this epoll's sources. Their turns are the
            // loop's: one look per ready source each time it polls, so new connections
            // get every other look beside kept FastCGI connections that always have a
            // next request ready (as `BacklogTurn` gives the WSGI threads).
            // regression (probe 339): the look took this epoll's event first, so
            // behind a kept connection whose next request was always ready (an app
            // blocking the loop 30 ms a request) no new connection was accepted for
            // 30 s; 8 uwsgi clients beside 16 kept FastCGI ones on one FastAPI
            // worker: the new connections' p99 420 ms against 57 ms.
            let mut token = token;
            let in_loop = !block && self.admission.arming().in_loop();
            // A place freed at the cap goes to each side in turn, whichever woke the
            // loop: the listeners' wake-up comes first in the loop's batch as often as
            // not, and took every freed place.
            // regression (probe 344 HIGH): uvloop, --max-concurrency 2, 16 kept
            // FastCGI clients beside 16 uwsgi ones: 195 kept requests answered in 40 s
            // against 3,595 (p50 3.2 s), their complete requests unread in the socket.
            let accepted_first = in_loop && take_cap_turn().unwrap_or(accept_first);
            if accepted_first {
                match self.accept_in_loop(token) {
                    Ok(found) => return found,
                    Err(t) => token = t,
                }
            }
            // The WSGI threads: the listen queue's turn owed by a kept connection's
            // request ([`BacklogTurn`]).
            // (Not while accept is paused for lack of descriptors: the epoll's retry
            // decides when it resumes.)
            if block && self.admission.retry_at().is_none() {
                if let Some(i) = self.backlog_turn.take(self.listeners.len()) {
                    if let Some(l) = self.listeners.get(i) {
                        let found = self.accept_raw(l, false);
                        self.backlog_turn.accepted(i, found.is_some());
                        if let Some(a) = found {
                            return self.took(token, i, l, a);
                        }
                    }
                }
            }
            // (Not in the loop's epoll: they have their own wake-up there.)
            if !block && !in_loop {
                if let Some(i) = self.guess() {
                    let l = &self.listeners[i];
                    if let Some(a) = self.accept_raw(l, false) {
                        let req = self.took(token, i, l, a);
                        if req.is_none() {
                            GUESS.set((NO_GUESS, 0));
                        }
                        return req;
                    }
                    GUESS.set((NO_GUESS, 0));
                }
            }
            let retry = self
                .admission
                .retry_at()
                .map(|t| t.saturating_duration_since(now));
            let wait = match (self.pending.wait_limit(now), retry) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let limit = if block {
                wait.map(|d| {
                    // Rounded up to the epoll's millisecond: no busy wait before expiry.
                    let d = d + Duration::from_millis(1);
                    Timespec {
                        tv_sec: d.as_secs() as i64,
                        tv_nsec: i64::from(d.subsec_nanos()),
                    }
                })
            } else {
                Some(Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                })
            };
            // One event per wait, on the stack (no allocation per request).
            let wait_once = |limit: Option<&Timespec>| {
                let mut events = [std::mem::MaybeUninit::<epoll::Event>::uninit(); 1];
                epoll::wait(&self.epoll, &mut events, limit)
                    .map(|(ready, _)| ready.first().map(|ev| ev.data.u64()))
            };
            // `--sched-batch waits`: a wait that blocks is made under SCHED_BATCH (a
            // thread woken by nginx's connect does not take nginx's CPU before it
            // writes the request); a look without waiting first, so that a thread
            // whose next event is ready makes no system call for the policy.
            let found = if block && super::sched::before_wait() {
                match wait_once(Some(&Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                })) {
                    Ok(None) => {
                        super::sched::waiting();
                        wait_once(limit.as_ref())
                    }
                    found => found,
                }
            } else {
                wait_once(limit.as_ref())
            };
            let data = match found {
                Ok(ready) => match ready {
                    Some(data) => data,
                    None if block => return None,
                    None => {
                        // The listeners may be in the event loop's own epoll, not in
                        // this one (`arming`): a look not woken by them (a timer, a
                        // place freed) tries them too, unless it began with them.
                        if in_loop && !accepted_first {
                            if let Ok(found) = self.accept_in_loop(token) {
                                return found;
                            }
                        }
                        *step = Step::Empty(wait);
                        return None;
                    }
                },
                Err(Errno::INTR) => return None,
                Err(e @ (Errno::BADF | Errno::INVAL)) => {
                    // Its epoll is gone or is something else now: the app closed or
                    // replaced a descriptor it does not own. Waiting again would fail
                    // again, 20 times a second for ever, and this worker would never
                    // serve nor be replaced.
                    // regression: exactly that, after `for fd in range(3, 101): os.close(fd)`.
                    crate::logging::report_fatal(&format!(
                        "waiting for connections failed ({e}): postern's own descriptors were closed or replaced by something in this process (the app calling os.close, os.closerange or os.dup2 on descriptors it did not open); this worker cannot serve and exits (with a master, it is replaced)"
                    ));
                    // SAFETY: ends the process at once, as a crash would: the state its
                    // threads share is not to be trusted any more.
                    unsafe { libc::_exit(70) }
                }
                Err(e) => {
                    tracing::error!(error = %e, "epoll_wait failed");
                    if !block {
                        *step = Step::Empty(Some(Duration::from_millis(50)));
                        return None;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    return None;
                }
            };
            match Wake::decode(data) {
                Wake::Conn(key) => {
                    let conn = self.parking.get(key)?;
                    let woken = conn.woken();
                    drop(token);
                    match woken {
                        // A parked connection has its next request (or closed): read
                        // only with a place under --max-requests for it.
                        Woken::Read => {
                            if block {
                                self.backlog_turn.kept_served();
                            }
                            if let Some(conn) = self.room_for_kept(conn) {
                                // Now, or when its request was seen waiting for a thread.
                                let started = conn.read_start();
                                if let Some(req) = self.fcgi_read(conn, true, started, false) {
                                    return Some(req);
                                }
                            }
                        }
                        // Input on a connection whose request runs inline: the slow
                        // lane reads it, and adopts the running request.
                        Woken::Steal(entry) => {
                            self.fcgi_to_lane(conn, BytesMut::new(), Instant::now(), entry);
                        }
                        Woken::Stale => {}
                    }
                }
                // A new connection's first bytes (or its close): read as at accept,
                // counted against --max-requests from now. Not once its last request
                // is taken: it then waits on unread (its one-shot event spent) for the
                // workers that serve on, to which the stop that follows hands it
                // (`stop_waiting`).
                Wake::Fresh(key) => {
                    let e = self.pending.take(key)?;
                    match e.conn.permit().map_or(Reserve::Taken, Permit::reserve) {
                        Reserve::Taken => {}
                        Reserve::Full => {
                            if let Err(e) = self.pending.put_back(key, e) {
                                self.hand_back(e);
                            }
                            return None;
                        }
                        // The last places are reserved by reads under way, which may
                        // give them back: looked at again in a moment.
                        Reserve::Later => {
                            if let Err(e) = self.pending.hold(e, pending::SOON) {
                                self.hand_back(e);
                            }
                            return None;
                        }
                    }
                    drop(token);
                    // (Never one with bytes read: such one is only held.)
                    if let Some(req) = self.read_waiting(e) {
                        return Some(req);
                    }
                }
                // A leaving worker's idle FastCGI connection: waits here as our own.
                // Not once this worker has taken its last request while others serve
                // on: a kept connection taken here would only be passed on again
                // (`room_for_kept`), to and fro between recycling workers until their
                // successors take it (about a hundred times per recycle, nginx
                // keep-conn, 2 workers). The channel leaves this epoll; the stop
                // still takes what is in it when the whole server stops.
                // One whose request came with it (read by a worker whose threads were
                // all busy) is served on this thread, now.
                Wake::Handover => {
                    if self.leaves_handed_to_others() {
                        if let Some(c) = fastcgi::handover::Channel::get() {
                            c.unwatch(&*self.epoll);
                        }
                        return None;
                    }
                    drop(token);
                    return self.adopt();
                }
                Wake::Queue => {
                    if queue.is_accepting() {
                        if let Some(r) = queue.take() {
                            return Some(r);
                        }
                    }
                }
                Wake::Listener(i) => {
                    if !queue.is_accepting() {
                        return None;
                    }
                    if let Some(l) = self.listeners.get(i) {
                        let found = self.accept_raw(l, false);
                        if block {
                            self.backlog_turn.accepted(i, found.is_some());
                        }
                        let Some(a) = found else {
                            if !block {
                                GUESS.set((NO_GUESS, 0));
                            }
                            return None;
                        };
                        let req = self.took(token, i, l, a);
                        // A connection that came without its request (it waits for its
                        // first bytes, or the slow lane reads it) makes the next wake-up
                        // likely its own, not a new connection's: no guess then.
                        if !block {
                            GUESS.set((if req.is_some() { i } else { NO_GUESS }, 0));
                        }
                        if req.is_some() {
                            return req;
                        }
                    }
                }
            }
            None
        }
    }
}

impl Acceptor {
    /// The listeners are in the loop's own epoll, and one of them woke the loop (or
    /// its look found nothing in the acceptor's epoll, or a place freed at the cap is
    /// theirs): accepts from the first of them with a connection waiting.
    /// `Err(token)`: none had one; `Ok(None)`: a connection came without its request
    /// (it waits, or the slow lane reads it).
    #[inline(never)]
    fn accept_in_loop<'a>(
        &self,
        token: std::sync::MutexGuard<'a, ()>,
    ) -> Result<Option<Request>, std::sync::MutexGuard<'a, ()>> {
        if !self.queue.is_accepting() {
            return Err(token);
        }
        for (i, l) in self.admission.arming().armed() {
            if let Some(a) = self.accept_raw(l, false) {
                return Ok(self.took(token, i, l, a));
            }
        }
        Err(token)
    }

    /// `a` was accepted from listener `i`: the token goes (another thread may wait on
    /// the epoll now), the next arming starts after `i` (each listener gets its turn,
    /// see `listener::arm_first`), and the connection is admitted: its request when it
    /// came with it (`None`: it waits for its first bytes, or the slow lane reads it).
    fn took(
        &self,
        token: std::sync::MutexGuard<'_, ()>,
        i: usize,
        l: &Listener,
        a: Accepted,
    ) -> Option<Request> {
        drop(token);
        super::listener::accepted_from(i);
        self.admission.arming().accepted(i);
        self.admit(i, l, a)
    }

    /// The listener the event loop's look accepts from before it asks the epoll: the
    /// one its last look accepted from, for [`GUESS_RUN`] looks in a row, and none
    /// while accept is paused for lack of descriptors (the epoll's retry decides
    /// when it resumes).
    fn guess(&self) -> Option<usize> {
        let (i, run) = GUESS.get();
        if i >= self.listeners.len() || run >= GUESS_RUN || self.admission.retry_at().is_some() {
            return None;
        }
        GUESS.set((i, run + 1));
        Some(i)
    }

    /// Accepts one pending connection from `l` (non-blocking); `None` when there is
    /// none, or no room under `--max-connections` (`drain`: the stop takes the whole
    /// listen queue, past the limit).
    fn accept_raw(&self, l: &Listener, drain: bool) -> Option<Accepted> {
        if !drain && !self.admission.room() {
            return None;
        }
        self.accept_or_errno(l, drain).ok()
    }

    /// [`Acceptor::accept_raw`] past the room check, with the accept's error (already
    /// handled as [`accept_error`] says) when it failed.
    fn accept_or_errno(&self, l: &Listener, drain: bool) -> Result<Accepted, Errno> {
        let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
        let (fd, peer): (OwnedFd, Arc<str>) = if l.tcp {
            match rustix::net::acceptfrom_with(&l.sock, flags) {
                Ok((fd, addr)) => {
                    let peer = addr
                        .and_then(|a| std::net::SocketAddr::try_from(a).ok())
                        .map(peer_text)
                        .unwrap_or_else(|| l.label.clone());
                    (fd, peer)
                }
                Err(e) => {
                    self.accept_failed(l, e);
                    return Err(e);
                }
            }
        } else {
            match rustix::net::accept_with(&l.sock, flags) {
                Ok(fd) => (fd, l.label.clone()),
                Err(e) => {
                    self.accept_failed(l, e);
                    return Err(e);
                }
            }
        };
        let (permit, room) = if drain {
            (self.admission.admit_anyway(), Reserve::Taken)
        } else {
            let p = self.admission.admit();
            // A place under --max-requests is reserved from here, while the accept
            // token is held: a connection that turns out to have sent nothing yet, or
            // part of a head, gives it back once read; one with a whole head makes it
            // its request. Counted only once read, the threads accepting in turn would
            // all see the room one of them takes. The room checked above may be gone:
            // a kept FastCGI connection's next request (read by a thread without the
            // token) can take the last place meanwhile; `admit` then leaves this one
            // unread.
            let room = p.reserve();
            (p, room)
        };
        Ok(Accepted {
            sock: socket2::Socket::from(fd),
            peer,
            started: Instant::now(),
            permit,
            room,
        })
    }

    /// At stop: takes every connection still waiting in the listen queues, so requests
    /// nginx already sent are served, not reset.
    pub fn drain_backlog(&self) -> usize {
        self.drain_backlog_up_to(usize::MAX, false).0
    }

    /// [`Acceptor::drain_backlog`], taking at most `max` connections (with `own_only`,
    /// from the listeners postern bound, not from a socket systemd passed): how many it
    /// took, and whether it found every listen queue empty.
    pub fn drain_backlog_up_to(&self, max: usize, own_only: bool) -> (usize, Backlog) {
        let mut n = 0;
        let mut known_empty = true;
        for (i, l) in self.listeners.iter().enumerate() {
            if own_only && l.inherited {
                continue;
            }
            // Per-connection failures in a row before this queue is left as it is.
            let mut failed = 0;
            while n < max {
                let a = match self.accept_or_errno(l, true) {
                    Ok(a) => a,
                    // Empty, or shut (by a sibling that found it empty).
                    Err(Errno::AGAIN | Errno::INVAL) => break,
                    // Out of descriptors or memory: what waits is still there, for a
                    // sibling or for a later look; the queue is not known empty.
                    // regression (review 320): any failed accept counted as an empty
                    // queue, and the listener shut with siblings' connections in it.
                    Err(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM) => {
                        return (n, Backlog::Starved)
                    }
                    // That connection's own failure (its peer gave up, a signal):
                    // the next one is taken at once; a failure that repeats (EPERM
                    // from a filter) ends the look without counting the queue empty.
                    Err(_) => {
                        failed += 1;
                        if failed >= 64 {
                            // (The next listener is still looked at.)
                            known_empty = false;
                            break;
                        }
                        continue;
                    }
                };
                failed = 0;
                // Read what is already there: a connection that sent nothing yet
                // would otherwise be closed as idle by the stopping slow lane.
                if let Some(req) = self.admit(i, l, a) {
                    self.queue.push(req);
                }
                n += 1;
            }
            if n == max {
                return (n, Backlog::MayHoldMore);
            }
        }
        let left = if known_empty {
            Backlog::Empty
        } else {
            Backlog::MayHoldMore
        };
        (n, left)
    }

    /// Whether a connection may wait in a listen queue, without taking it: a TCP
    /// listener says so (readable), a Unix one cannot once the stop shut its reading
    /// side (it polls readable for good), so it always may.
    /// Only the listeners postern bound are looked at (a socket systemd passed keeps
    /// taking connections during a stop: its queue is left for the next start).
    pub fn backlog_may_wait(&self) -> bool {
        use rustix::event::{poll, PollFd, PollFlags};
        let own = || self.listeners.iter().filter(|l| !l.inherited);
        if own().any(|l| !l.tcp) {
            return true;
        }
        let mut fds: Vec<PollFd<'_>> = own().map(|l| PollFd::new(&l.sock, PollFlags::IN)).collect();
        if fds.is_empty() {
            return false;
        }
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        if poll(&mut fds, Some(&zero)).is_err() {
            return true;
        }
        // A listener a sibling has shut polls readable and hung up: nothing to accept.
        fds.iter().any(|f| {
            let r = f.revents();
            r.contains(PollFlags::IN) && !r.intersects(PollFlags::HUP | PollFlags::ERR)
        })
    }

    /// Takes a connection a leaving worker handed over (if another worker did not take
    /// it first): a kept FastCGI one is parked (its next request wakes this epoll);
    /// one that never carried a request (any protocol) waits for its first bytes as if
    /// accepted here, with its accept time moved back by its age, so `--head-timeout`
    /// closes it when it would have in the worker it came from (parked, it would have
    /// no deadline at all). Adopted past `--max-connections` (counted, so accepts
    /// wait): refusing it would close a connection the hand-over exists to keep.
    /// One that came with its request's bytes (and room for it) is read here, its
    /// request returned to be served on this Python thread.
    fn adopt(&self) -> Option<Request> {
        let a = fastcgi::handover::Channel::get().and_then(|c| c.take())?;
        self.adopt_one(a, true)
    }

    /// Takes every connection still waiting in the hand-over channel; the I/O thread's
    /// fallback when no Python thread of any serving worker was free to take them
    /// (see `take_handed_over` in the server module). Returns how many it took.
    pub(super) fn adopt_all(&self) -> usize {
        let Some(channel) = fastcgi::handover::Channel::get() else {
            return 0;
        };
        if self.leaves_handed_to_others() {
            return 0;
        }
        let mut n = 0;
        while let Some(a) = channel.take() {
            // (Not inline: nothing is returned, the slow lane reads what came whole.)
            let _ = self.adopt_one(a, false);
            n += 1;
        }
        n
    }

    /// This worker has taken its last request under `--max-requests` (it recycles)
    /// and other workers serve on: connections handed over are theirs to take.
    fn leaves_handed_to_others(&self) -> bool {
        self.admission.limit_taken() && self.parking.hands_over()
    }

    /// `inline`: on a Python thread, which serves a request that came whole with it
    /// (off one, the I/O thread, its bytes go to the slow lane: reading the rest of a
    /// body here would hold the runtime).
    fn adopt_one(&self, a: fastcgi::handover::Adopted, inline: bool) -> Option<Request> {
        let Some(l) = self.listeners.get(a.listener) else {
            tracing::warn!(
                listener = a.listener,
                "a handed-over connection names no listener of this worker; closing it"
            );
            return None;
        };
        let fcgi = l.info.protocol == Protocol::FastCgi;
        if !fcgi && a.fresh_for.is_none() {
            tracing::warn!(
                listener = a.listener,
                "a handed-over kept connection names no FastCGI listener; closing it"
            );
            return None;
        }
        let peer = if l.tcp {
            a.sock
                .peer_addr()
                .ok()
                .and_then(|p| p.as_socket())
                .map(peer_text)
                .unwrap_or_else(|| l.label.clone())
        } else {
            l.label.clone()
        };
        let permit = self.admission.admit_anyway();
        let fcgi_conn = |sock, peer, permit| {
            FcgiConn::new(
                sock,
                peer,
                l.tcp,
                a.listener,
                self.limits.read_timeout,
                &self.parking,
                Some(permit),
            )
        };
        let Some(age) = a.fresh_for else {
            let conn = fcgi_conn(a.sock, peer, permit);
            if a.said_nginx {
                conn.mark_said_nginx();
            }
            conn.expect_late(&a.late);
            if let Some(waited) = a.waited {
                // Sent by a worker whose threads were all busy: its request's time
                // counts from when it was first seen waiting there.
                let now = Instant::now();
                conn.mark_waiting(now.checked_sub(waited).unwrap_or(now));
            }
            if self.parking.closing_for_good() {
                // Nobody serves on (the whole server stops, or the master is gone) and
                // the front server may have sent a request on it already: as at
                // `Parking::close_all`, the slow lane answers what comes within a
                // moment, then closes. Parked, it closed unread (nginx 502).
                // regression: kept connections waiting in the hand-over channel
                // closed unread when a recycled worker's successor stopped.
                let entry = conn.enter_lane(false);
                self.fcgi_to_lane(conn, BytesMut::new(), Instant::now(), entry);
                return None;
            }
            self.parking.park(conn, false);
            return None;
        };
        let now = Instant::now();
        let started = now.checked_sub(age).unwrap_or(now);
        let read = !a.read.is_empty();
        // Waits in the epoll, not read here: bytes that came meanwhile fire its event
        // at once, and that one begins its request only if --max-requests leaves room.
        let waiting = if fcgi {
            let conn = fcgi_conn(a.sock, peer, permit);
            if read {
                conn.carry(a.read);
            }
            conn.expect_late(&a.late);
            Waiting::Fcgi(conn)
        } else {
            Waiting::Plain {
                sock: a.sock,
                peer,
                listener: a.listener,
                permit,
                read: BytesMut::from(&a.read[..]),
            }
        };
        if read {
            // A whole head a worker read and had no room or no thread for: begun here if
            // --max-requests leaves room, else held for the workers that serve on.
            return self.take_up_here(
                pending::Entry {
                    conn: waiting,
                    started,
                },
                inline,
            );
        }
        if let Err(conn) = self.pending.wait(waiting, started) {
            // Taken as this worker began to stop: back to the ones that serve on.
            if !self.queue.is_accepting() {
                self.hand_back(pending::Entry { conn, started });
            } else {
                self.to_lane(pending::Entry { conn, started });
            }
        }
        None
    }

    /// At stop: the connections waiting for their first bytes (and those whose bytes
    /// came after `--max-requests`' last request was taken, unread) go to the workers
    /// that serve on when there are any (a recycling, a reload), with their age; else
    /// (or when that fails) to the slow lane, which serves or closes them as it does a
    /// connection that sent nothing at accept. Served here, they would run the worker
    /// past `--max-requests`, or keep it until `--head-timeout` closed them.
    pub fn stop_waiting(&self) -> usize {
        let waiting = self.pending.close();
        let n = waiting.len();
        for e in waiting {
            self.hand_back(e);
        }
        n
    }

    /// At the stop of an ASGI worker whose listeners were in its loop's epoll
    /// (exclusive, [`super::arming`]): the kernel may have given this worker a new
    /// connection's one wake-up just before the listeners left, and woken no other
    /// worker for it. The connections waiting in the listen queues now (at most
    /// [`HAND_ON_MAX`]) are accepted and handed, unread, to the workers that serve on,
    /// as the ones waiting for their first bytes are ([`Acceptor::stop_waiting`]). Not
    /// when the whole server stops: its drain serves the listen queues.
    pub fn hand_on_queued(&self) -> usize {
        if !self.admission.arming().in_loop()
            || fastcgi::handover::Channel::get().is_none()
            || !self.parking.hands_over()
            || !self.admission.connection_waits()
        {
            return 0;
        }
        let mut n = 0;
        for (i, l) in self.listeners.iter().enumerate() {
            while n < HAND_ON_MAX {
                let Some(a) = self.accept_raw(l, true) else {
                    break;
                };
                let Accepted {
                    sock,
                    peer,
                    started,
                    permit,
                    ..
                } = a;
                if l.tcp {
                    let _ = sock.set_tcp_nodelay(true);
                }
                let conn = if l.info.protocol == Protocol::FastCgi {
                    Waiting::Fcgi(FcgiConn::new(
                        sock,
                        peer,
                        l.tcp,
                        i,
                        self.limits.read_timeout,
                        &self.parking,
                        Some(permit),
                    ))
                } else {
                    Waiting::Plain {
                        sock,
                        peer,
                        listener: i,
                        permit,
                        read: BytesMut::new(),
                    }
                };
                self.hand_back(pending::Entry { conn, started });
                n += 1;
            }
        }
        n
    }

    /// The worker accepts again after its pause at `--max-requests` (the master holds
    /// it past its limit: its successor failed to start): its listeners go back in,
    /// and the requests that came on its kept connections meanwhile, held unread for
    /// the workers that serve on, are taken up now rather than at their next look.
    pub fn resume_after_pause(&self) {
        self.admission.resync();
        // Handed-over connections are taken here again (the channel left this epoll
        // when the limit was taken).
        if let Some(c) = fastcgi::handover::Channel::get() {
            let _ = c.watch(&*self.epoll);
        }
        for e in self.pending.take_held() {
            self.take_up(e);
        }
    }

    /// The busy watch's look at the connections waiting for their first bytes
    /// ([`fastcgi::relieve`]), while every Python thread of this worker runs a request:
    /// each whose bytes have come goes, unread, to the other workers (up to `room()`
    /// of them: their free threads), where the first free thread reads and serves it,
    /// rather than wait here for one of these requests to end, however long they run.
    /// Such a connection was accepted while a thread here was free, then every thread
    /// took a request before its bytes came: behind nginx over a Unix socket (connect,
    /// then write) a request waited for seconds while the other workers idled.
    pub(super) fn relieve_waiting(&self, room: &dyn Fn() -> usize) -> fastcgi::Looked {
        let mut looked = fastcgi::Looked::default();
        let Some(ch) = fastcgi::handover::Channel::get().filter(|_| self.parking.hands_over())
        else {
            return looked;
        };
        let ready = self.pending.with_input();
        let mut room_left: Option<usize> = None;
        for key in ready {
            looked.waiting += 1;
            if looked.sent >= *room_left.get_or_insert_with(room) {
                continue;
            }
            // A Python thread of this worker may have taken it meanwhile.
            let Some(e) = self.pending.take_out(key) else {
                looked.waiting -= 1;
                continue;
            };
            let age = e.started.elapsed();
            let sent = match &e.conn {
                Waiting::Plain {
                    sock,
                    peer,
                    listener,
                    read,
                    ..
                } => match ch.send_now(sock.as_fd(), *listener, age, read, &[]) {
                    Ok(()) => {
                        connection::handed_on_line(peer, read.len(), connection::Why::Busy);
                        true
                    }
                    Err(err) => {
                        tracing::debug!(%peer, error = %err, "cannot hand a connection with a request waiting to a worker with a free thread; it waits here");
                        false
                    }
                },
                Waiting::Fcgi(conn) => conn.hand_on(&[], age, connection::Why::Busy, &[]),
            };
            if sent {
                looked.sent += 1;
                looked.waiting -= 1;
                continue;
            }
            // Back in the epoll (its bytes wake a thread at once), else to the slow lane.
            let started = e.started;
            if let Err(conn) = self.pending.wait(e.conn, started) {
                self.to_lane(pending::Entry { conn, started });
            }
        }
        looked
    }

    /// Something waits for its first bytes (or is held): one load.
    pub(super) fn anything_waiting(&self) -> bool {
        self.pending.any()
    }

    /// A connection that has sent nothing yet (or whose bytes wait unread) goes to the
    /// workers that serve on, with its age; when none does, or that fails, to the slow
    /// lane.
    fn hand_back(&self, e: pending::Entry) {
        let channel = fastcgi::handover::Channel::get().filter(|_| self.parking.hands_over());
        let (conn, started) = (e.conn, e.started);
        let Some(ch) = channel else {
            return self.to_lane(pending::Entry { conn, started });
        };
        match conn {
            Waiting::Fcgi(conn) => self.parking.park_from_lane(conn, Some(started)),
            Waiting::Plain {
                ref sock,
                ref peer,
                listener,
                ref read,
                ..
            } => {
                if let Err(err) = ch.send(
                    sock.as_fd(),
                    listener,
                    Some(started.elapsed()),
                    read,
                    false,
                    &[],
                ) {
                    tracing::warn!(%peer, error = %err, "cannot hand a new connection over to the serving workers; it waits here");
                    self.to_lane(pending::Entry { conn, started });
                }
            }
        }
    }

    /// The connections waiting for their first bytes whose `--head-timeout` has passed
    /// at `now` go to the slow lane, which closes them with its log line. Run by the
    /// Python thread with the accept token before it waits, and by the I/O thread
    /// ([`pending::keep_timeouts`]) when no Python thread is free to.
    pub(super) fn expire_waiting(&self, now: Instant) {
        for e in self.pending.expired(now) {
            self.expire_one(e);
        }
    }

    /// A waiting connection past its `--head-timeout` (or a held one looked at again).
    /// One whose bytes are there (sent in time, and no thread took them yet: a
    /// connection handed over to a successor that booted slowly, or left unread for
    /// want of room under `--max-requests`) is read now if `--max-requests` leaves room
    /// to begin it, and held unread for the workers that serve on if not: the slow
    /// lane would close a request that is there, or serve it past the limit. A silent
    /// (or closed) one goes to the slow lane, which closes it with its log line.
    /// regression: handed-over requests reaching a successor that booted past their
    /// --head-timeout were served past --max-requests (review-f4b: 23 for 7).
    fn expire_one(&self, e: pending::Entry) {
        let read = has_read(&e.conn);
        let mut peek = [0u8; 1];
        let flags = RecvFlags::PEEK | RecvFlags::DONTWAIT;
        let there = matches!(rustix::net::recv(e.conn.fd(), &mut peek, flags), Ok((n, _)) if n > 0);
        if !read && !there {
            return self.to_lane(e);
        }
        self.take_up(e);
    }

    /// [`Acceptor::take_up_here`] off the Python threads' own read: the slow lane
    /// reads it (nothing is returned then).
    fn take_up(&self, e: pending::Entry) {
        let _ = self.take_up_here(e, false);
    }

    /// A connection whose bytes are there (in its socket, or read by the worker that
    /// handed it over): read now if `--max-requests` leaves room to begin it (its
    /// request returned when whole), else held for the workers that serve on (the stop
    /// that follows hands it to them). Not `inline` (possibly off a Python thread: the
    /// I/O thread's timeouts and adoptions), the slow lane reads it: reading the rest
    /// of a body here could hold the runtime up to 50 ms.
    fn take_up_here(&self, e: pending::Entry, inline: bool) -> Option<Request> {
        // What a leaving worker read is a whole head: begun; what is in the socket may
        // not be: a place is reserved for the read.
        let room = match e.conn.permit() {
            None => Reserve::Taken,
            Some(p) if has_read(&e.conn) => {
                if p.try_begin() {
                    Reserve::Taken
                } else if self.admission.limit_taken() {
                    Reserve::Full
                } else {
                    Reserve::Later
                }
            }
            Some(p) => p.reserve(),
        };
        let again = match room {
            Reserve::Taken => None,
            Reserve::Full => Some(self.pending.timeout()),
            Reserve::Later => Some(pending::SOON),
        };
        if let Some(again) = again {
            if let Err(e) = self.pending.hold(e, again) {
                self.hand_back(e);
            }
            return None;
        }
        if !inline {
            self.to_lane(e);
            return None;
        }
        self.read_waiting(e)
    }

    /// A new connection that has sent nothing (yet) goes where it went straight after
    /// accept before waiting here existed: the slow lane, with its accept time.
    fn to_lane(&self, e: pending::Entry) {
        match e.conn {
            Waiting::Plain {
                sock,
                peer,
                listener,
                permit,
                read: mut buf,
            } => {
                // What is there already goes with it (after what a leaving worker
                // read): a request sent in time is read from the lane's first look
                // (past its deadline, or at the stop, an empty look would close it
                // unanswered).
                let carried = !buf.is_empty();
                buf.reserve(8192);
                if let Ok(((init, _), _)) =
                    rustix::net::recv(sock.as_fd(), buf.spare_capacity_mut(), RecvFlags::empty())
                {
                    let n = init.len();
                    // SAFETY: recv initialised the `n` spare bytes after the first `len`.
                    unsafe { buf.set_len(buf.len() + n) };
                }
                let l = &self.listeners[listener];
                connection::spawn(
                    &self.slow,
                    sock,
                    l.tcp,
                    peer,
                    (listener, l.info.clone()),
                    if carried {
                        Start::Carried(buf)
                    } else {
                        Start::Fresh(buf)
                    },
                    e.started,
                    permit,
                );
            }
            Waiting::Fcgi(conn) => {
                // Its request may be whole already, sent in time while no thread was
                // free to take its event: read what is there, so that the lane serves
                // it. The lane's first look at an empty buffer past the deadline would
                // close it unanswered (nginx: 502), as uwsgi and SCGI do not.
                // regression: W1 of the soak review (FastCGI requests sent within
                // --head-timeout while every thread was busy were closed unanswered).
                // After what a leaving worker read from it, if anything.
                let carried = conn.take_carried();
                let mut buf = BytesMut::zeroed(carried.len() + FIRST_READ);
                buf[..carried.len()].copy_from_slice(&carried);
                let n = conn.recv(&mut buf[carried.len()..]).unwrap_or(0);
                buf.truncate(carried.len() + n);
                let entry = conn.enter_lane(true);
                self.fcgi_to_lane(conn, buf, e.started, entry);
            }
        }
    }

    /// Hands a FastCGI connection the slow lane now owns (`entry`) to it, with what was
    /// read so far.
    pub(super) fn fcgi_to_lane(
        &self,
        conn: Arc<FcgiConn>,
        buf: BytesMut,
        started: Instant,
        entry: fastcgi::Entry,
    ) {
        let info = self.listeners[conn.listener].info.clone();
        self.slow.spawn(fastcgi::serve(
            conn,
            buf,
            info,
            self.slow.clone(),
            self.fcgi.clone(),
            started,
            entry,
        ));
    }

    /// A kept FastCGI connection woken by input (its next request, or its close) is
    /// read only with a place under `--max-requests` reserved for it: returned then.
    /// When the worker has taken its last request, it goes unread to the workers that
    /// serve on (its request with it, in its socket), as it would at the stop that
    /// follows; when only reads under way hold the last places, it waits in the epoll
    /// again, woken at once (its input is there). Read here past the limit only when
    /// nobody serves on. regression: begun with no room check, kept connections
    /// behind nginx (`fastcgi_keep_conn on`) ran workers far past `--max-requests`
    /// (20: up to 62 each, 8 clients).
    fn room_for_kept(&self, conn: Arc<FcgiConn>) -> Option<Arc<FcgiConn>> {
        let Some(p) = conn.permit() else {
            return Some(conn);
        };
        match p.reserve() {
            Reserve::Taken => Some(conn),
            Reserve::Full => {
                if self.parking.pass_on(&conn) {
                    return None;
                }
                tracing::debug!(peer = %conn.peer, "no room left under --max-requests and no worker serves on: the kept FastCGI connection's request is served here");
                Some(conn)
            }
            Reserve::Later => {
                // Whoever holds the last place is between a recv and a parse: let it
                // run before this connection's event comes back.
                std::thread::yield_now();
                self.parking.park_unread(conn);
                None
            }
        }
    }

    /// Reads a waiting connection whose first bytes are in its socket, or came with it
    /// from the worker that handed it over (its place taken), as at accept.
    fn read_waiting(&self, e: pending::Entry) -> Option<Request> {
        match e.conn {
            Waiting::Plain {
                sock,
                peer,
                listener,
                permit,
                read,
            } => self.plain_read(listener, (sock, read), peer, e.started, false, permit),
            Waiting::Fcgi(conn) => self.fcgi_read(conn, false, e.started, false),
        }
    }

    /// Reads a FastCGI connection (new, or parked and now readable): one whole request
    /// is served on this thread; anything else goes to the slow lane. `may_wait`: a
    /// new connection that sent nothing yet waits in the epoll (once).
    fn fcgi_read(
        &self,
        conn: Arc<FcgiConn>,
        parked: bool,
        started: Instant,
        may_wait: bool,
    ) -> Option<Request> {
        let l = &self.listeners[conn.listener];
        let admit = |buf: &[u8]| {
            fastcgi::admit_whole(
                &conn,
                buf,
                &l.info,
                &self.limits,
                &self.fcgi,
                started,
                parked,
            )
        };
        // What the worker that handed it over read from it, then what came since.
        let carried = conn.take_carried();
        let got = if !carried.is_empty() {
            let mut buf = carried;
            let had = buf.len();
            buf.resize(had + FIRST_READ, 0);
            let more = match conn.recv(&mut buf[had..]) {
                Ok(n) => Ok(n),
                Err(Errno::AGAIN | Errno::INTR) => Ok(0),
                Err(e) => Err(e),
            };
            more.map(|n| {
                buf.truncate(had + n);
                Some(match admit(&buf) {
                    Some(req) => {
                        begin(&conn);
                        // Served here (one that goes on to the slow lane is told there:
                        // it is never handed on again for a busy worker).
                        conn.came_carried();
                        Ok(req)
                    }
                    None => Err(BytesMut::from(&buf[..])),
                })
            })
        } else {
            SCRATCH.with(|s| {
                let mut s = s.borrow_mut();
                match conn.recv(&mut s[..]) {
                    Ok(0) => Ok(None),
                    Ok(n) => {
                        if let Some(req) = admit(&s[..n]) {
                            begin(&conn);
                            return Ok(Some(Ok(req)));
                        }
                        let mut buf = BytesMut::from(&s[..n]);
                        // A request simply larger than one read (an upload nginx has
                        // buffered): read the rest here while it keeps arriving.
                        if fastcgi::is_partial_simple(&buf)
                            && fastcgi::read_rest(
                                &conn,
                                &mut buf,
                                self.fcgi_cap(),
                                &self.arrival(n),
                            )
                        {
                            if let Some(req) = admit(&buf) {
                                begin(&conn);
                                return Ok(Some(Ok(req)));
                            }
                        }
                        Ok(Some(Err(buf)))
                    }
                    Err(e) => Err(e),
                }
            })
        };
        let to_slow_lane = |conn: Arc<FcgiConn>, buf: BytesMut| {
            // Part of a head is no request yet: the lane counts it once whole, and
            // hands it on with its bytes when no room is left by then. regression:
            // counted from the first bytes, one-byte heads made workers recycle.
            if fastcgi::has_whole_head(&buf) {
                begin(&conn);
            } else if let Some(p) = conn.permit() {
                p.cancel();
            }
            let entry = conn.enter_lane(!parked);
            self.fcgi_to_lane(conn, buf, started, entry);
        };
        match got {
            Ok(Some(Ok(req))) => Some(req),
            Ok(Some(Err(buf))) => {
                to_slow_lane(conn, buf);
                None
            }
            Ok(None) => {
                tracing::debug!(peer = %conn.peer, "the front server closed a FastCGI connection");
                if let Some(p) = conn.permit() {
                    p.cancel();
                }
                conn.close();
                None
            }
            Err(Errno::AGAIN | Errno::INTR) => {
                // No request to come yet.
                if let Some(p) = conn.permit() {
                    p.cancel();
                }
                if parked {
                    self.parking.park(conn, true);
                } else if !may_wait {
                    to_slow_lane(conn, BytesMut::new());
                } else if let Err(w) = self.pending.wait(Waiting::Fcgi(conn), started) {
                    self.to_lane(pending::Entry { conn: w, started });
                }
                None
            }
            Err(e) => {
                tracing::debug!(peer = %conn.peer, error = %e, "a FastCGI connection failed");
                if let Some(p) = conn.permit() {
                    p.cancel();
                }
                conn.close();
                None
            }
        }
    }

    /// The most a whole simple FastCGI request read on a Python thread may take: its
    /// PARAMS (`--buffer-size`) and STDIN (the spool threshold), and their record
    /// headers and padding (16 bytes per 64 KiB record at most).
    fn fcgi_cap(&self) -> usize {
        let payload = self
            .limits
            .buffer_size
            .saturating_add(usize::try_from(self.limits.spool_threshold).unwrap_or(usize::MAX));
        payload.saturating_add((payload / fcgi::MAX_CONTENT + 4) * 16 + 64)
    }

    /// The rule for reading the rest of a body on this thread, starting now.
    fn arrival(&self, first: usize) -> Arrival {
        Arrival::new(self.limits.read_timeout, first)
    }

    /// Reads what a new connection has sent; returns the request when it is complete,
    /// else hands the connection to the slow lane. One accepted without a place under
    /// `--max-requests` is not read ([`Acceptor::wait_unread`]).
    fn admit(&self, index: usize, l: &Listener, a: Accepted) -> Option<Request> {
        let Accepted {
            sock,
            peer,
            started,
            permit,
            room,
        } = a;
        if l.tcp {
            let _ = sock.set_tcp_nodelay(true);
        }
        if l.info.protocol == Protocol::FastCgi {
            let conn = FcgiConn::new(
                sock,
                peer,
                l.tcp,
                index,
                self.limits.read_timeout,
                &self.parking,
                Some(permit),
            );
            if room != Reserve::Taken {
                self.wait_unread(Waiting::Fcgi(conn), started);
                return None;
            }
            return self.fcgi_read(conn, false, started, true);
        }
        if room != Reserve::Taken {
            let conn = Waiting::Plain {
                sock,
                peer,
                listener: index,
                permit,
                read: BytesMut::new(),
            };
            self.wait_unread(conn, started);
            return None;
        }
        self.plain_read(index, (sock, BytesMut::new()), peer, started, true, permit)
    }

    /// A connection accepted with no place under `--max-requests` for it (another
    /// thread took the last one after the room check) is not read now: read, its
    /// request would begin past the limit. It waits in the epoll as one that sent
    /// nothing yet, and the event that reports its bytes (at once, when they are
    /// there) reserves again (`Wake::Fresh`): read with a place, else held unread,
    /// looked at again soon or handed to the workers that serve on. regression:
    /// behind nginx with `fastcgi_keep_conn on` and `--threads 4`, a kept
    /// connection's request took the last place between the two, and the worker
    /// served one request more than its limit (5 of 13 runs).
    fn wait_unread(&self, conn: Waiting, started: Instant) {
        let Err(conn) = self.pending.wait(conn, started) else {
            return;
        };
        // Too many waiting already, or stopping: looked at again soon (or handed on).
        if let Err(e) = self
            .pending
            .hold(pending::Entry { conn, started }, pending::SOON)
        {
            self.hand_back(e);
        }
    }

    /// Reads a new uwsgi/SCGI connection (after `carried`, what the worker that handed
    /// it over read from it): returns the request when it is complete, else hands the
    /// connection to the slow lane. `may_wait`: one that sent nothing yet waits in the
    /// epoll (once) instead.
    fn plain_read(
        &self,
        index: usize,
        (sock, carried): (socket2::Socket, BytesMut),
        peer: Arc<str>,
        started: Instant,
        may_wait: bool,
        permit: Permit,
    ) -> Option<Request> {
        let l = &self.listeners[index];
        let first = PLAIN.with(|s| {
            let mut s = s.borrow_mut();
            // Reclaims the whole buffer once the last request split from it has ended
            // (nothing to move: it is empty); a new one only while that one runs on.
            s.reserve(PLAIN_READ.max(carried.len() + PLAIN_READ / 2));
            s.extend_from_slice(&carried);
            let offered = s.spare_capacity_mut().len();
            match rustix::net::recv(sock.as_fd(), s.spare_capacity_mut(), RecvFlags::empty()) {
                Ok(((init, _), _)) => {
                    let n = init.len();
                    // SAFETY: recv initialised the first `n` spare bytes after the
                    // `carried.len()` bytes already there.
                    unsafe { s.set_len(carried.len() + n) };
                    Ok((s.split(), n == offered))
                }
                // Nothing more yet: what came with it is its first read.
                Err(Errno::AGAIN | Errno::INTR) if !carried.is_empty() => Ok((s.split(), false)),
                Err(e) => Err(e),
            }
        });
        // The first read filled all the room it offered: more may be waiting.
        let mut filled = false;
        let mut buf = match first {
            Ok((b, _)) if b.is_empty() => {
                tracing::debug!(%peer, "connection closed before sending a request");
                permit.cancel();
                return None;
            }
            Ok((b, full)) => {
                filled = full;
                b
            }
            Err(e @ (Errno::AGAIN | Errno::INTR)) => {
                tracing::trace!(%peer, error = %e, "nothing to read yet");
                // No request to come yet (the slow lane counts it once it has one).
                permit.cancel();
                if may_wait {
                    let waiting = Waiting::Plain {
                        sock,
                        peer,
                        listener: index,
                        permit,
                        read: BytesMut::new(),
                    };
                    if let Err(conn) = self.pending.wait(waiting, started) {
                        self.to_lane(pending::Entry { conn, started });
                    }
                    return None;
                }
                BytesMut::new()
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "connection failed before sending a request");
                permit.cancel();
                return None;
            }
        };
        let mut codec = UwsgiCodec::for_protocol(l.info.protocol, self.limits.buffer_size);
        let first = buf.len();
        let start = if buf.is_empty() {
            Start::Fresh(buf)
        } else {
            match codec.decode(&mut buf) {
                Ok(Some(Frame::Head(head))) => {
                    // Its head is whole: its request begins (the place reserved at
                    // accept becomes its own).
                    permit.begin();
                    let len = head.content_length;
                    let fits = self.limits.max_body.is_none_or(|m| len <= m);
                    // A body it cannot frame is refused (411) by the slow lane.
                    let framed = connection::unframed_body(&head, &codec).is_none();
                    let in_memory = fits && framed && len <= self.limits.spool_threshold;
                    let mut whole = in_memory && (len as usize) <= buf.len();
                    let read_more = in_memory && !whole;
                    if read_more {
                        // A body simply larger than one read (an upload nginx has
                        // buffered) is read here, not handed to the slow lane and back.
                        let arrival = self.arrival(first);
                        buf = body_buffer(&sock, buf, len as usize, &arrival);
                        whole =
                            !buf.is_empty() && read_rest(&sock, &mut buf, len as usize, &arrival);
                    }
                    if whole {
                        let body = if len == 0 {
                            Body::Empty
                        } else {
                            Body::Memory(buf.split_to(len as usize).freeze())
                        };
                        let (span, request_id) = request_span(&head, &peer);
                        // Bytes past the body: in the first read, or the byte past it
                        // that read_rest's last read asks for (`PAST_BODY`: that read
                        // never fills its room at the body's end).
                        let past =
                            connection::bytes_past(sock.as_fd(), buf.len(), filled && !read_more);
                        let linger = (past > 0).then(|| {
                            span.in_scope(|| {
                                connection::Linger::past_the_body(
                                    &self.slow,
                                    &peer,
                                    l.tcp,
                                    past,
                                    l.info.protocol,
                                )
                            })
                        });
                        let sink = ConnSink::new(sock, l.tcp, started, self.limits.read_timeout)
                            .style(l.info.protocol.head_style())
                            .permit(permit)
                            .linger(linger);
                        return Some(Request {
                            head,
                            body,
                            listener: l.info.clone(),
                            sink: Box::new(sink),
                            span,
                            request_id,
                            errors_forward: None,
                            queued: false,
                        });
                    }
                    // The slow lane keeps its own copies: a slow peer must not pin
                    // this thread's read buffer (PLAIN_READ bytes) while it dawdles.
                    // A body held in memory already has its own buffer: it goes as is.
                    let mut head = head;
                    head.buf = bytes::Bytes::copy_from_slice(&head.buf);
                    let rest = if in_memory {
                        buf
                    } else {
                        BytesMut::from(&buf[..])
                    };
                    Start::Head(head, codec, rest, filled && !read_more)
                }
                Ok(Some(Frame::Body(_))) => unreachable!("the codec yields the head first"),
                // Part of a head is no request yet (--max-requests counts it once its
                // head is whole, in the slow lane): a client that sends a byte and
                // stalls is bounded by --head-timeout and --max-connections, as a
                // silent one. regression: such connections made workers recycle.
                Ok(None) => {
                    permit.cancel();
                    Start::Fresh(BytesMut::from(&buf[..]))
                }
                Err(e) => {
                    permit.cancel();
                    Start::Failed(e)
                }
            }
        };
        connection::spawn(
            &self.slow,
            sock,
            l.tcp,
            peer,
            (index, l.info.clone()),
            start,
            started,
            permit,
        );
        None
    }
}

/// Longest pause in a body's arrival that a Python thread waits out: a body that keeps
/// coming (nginx sends what it buffered at once) is read on the thread; a slower one
/// goes to the slow lane, so a slow peer never holds a Python thread.
const BODY_PAUSE: Duration = Duration::from_millis(10);

/// A first read at least this large is part of a larger write (an upload a front
/// server buffered) whose rest is worth a short wait on the Python thread.
const WAIT_FROM: usize = 16 * 1024;

/// Longest a Python thread spends reading the rest of one body, however steadily it
/// comes: a peer that trickles a byte every few milliseconds never pauses long enough
/// for [`BODY_PAUSE`], and would otherwise hold the thread (and the accept token, so
/// every other connection of the process) until its body ends. A buffered upload from
/// nginx takes a few milliseconds; past this, the slow lane reads the rest.
const BODY_BUDGET: Duration = Duration::from_millis(50);

/// How long a Python thread keeps reading a body that did not fit the first read:
/// while it keeps arriving ([`BODY_PAUSE`], `--read-timeout`), and at most
/// [`BODY_BUDGET`] in all.
pub struct Arrival {
    pause: Duration,
    deadline: Instant,
}

impl Arrival {
    /// `first`: bytes the first read of the connection got. A front server writes a
    /// request that small in one go, so when it is not whole the rest is not on its
    /// way: only what is already there is read (no pause waited out), and the slow
    /// lane waits for the rest. Otherwise a client sending heads without their
    /// bodies (or partial FastCGI heads) cost each Python thread [`BODY_PAUSE`] per
    /// connection, and connections queued behind them (nginx's too) waited seconds.
    fn new(read_timeout: Duration, first: usize) -> Arrival {
        let pause = if first < WAIT_FROM {
            Duration::ZERO
        } else {
            BODY_PAUSE.min(read_timeout)
        };
        Arrival {
            pause,
            deadline: Instant::now() + BODY_BUDGET.min(read_timeout),
        }
    }

    /// A rule that waits out pauses up to `pause`, for as long (tests).
    #[cfg(test)]
    pub(crate) fn patient(pause: Duration) -> Arrival {
        Arrival {
            pause,
            deadline: Instant::now() + pause,
        }
    }

    /// Waits for `sock` to have more input; false when it pauses too long, the time
    /// is up, or the wait fails.
    pub(super) fn more(&self, sock: &impl AsFd) -> bool {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        if self.pause.is_zero() {
            return false;
        }
        let wait = self.pause.min(left);
        let ts = Timespec {
            tv_sec: wait.as_secs() as i64,
            tv_nsec: i64::from(wait.subsec_nanos()),
        };
        let mut fds = [PollFd::new(sock, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(0) => false,
            Ok(_) | Err(Errno::INTR) => true,
            Err(_) => false,
        }
    }

    /// False once the time is up (checked between reads that found data, so a peer
    /// that is never caught pausing still ends here).
    pub(super) fn in_time(&self) -> bool {
        Instant::now() < self.deadline
    }
}

/// The one buffer a uwsgi/SCGI body of `want` bytes held in memory is read into:
/// `read` (the body bytes that came with the head, from this thread's read buffer)
/// copied into a new buffer of the whole length, so that the body is held once, in
/// one piece, while the rest arrives (here, or in the slow lane, which reads into it
/// as it is). The whole length is taken only once body bytes are there (in `read`,
/// or in the socket within `arrival`'s first pause): a peer that sends a head and
/// stalls costs no more (an empty buffer, not a view of this thread's).
/// regression: the first read's bytes and a second buffer grown (doubling) to the
/// body's length were both held until the body was whole: 150 uploads of 900 KB held
/// open took 281 MiB, 1.8 MiB each.
fn body_buffer(sock: &socket2::Socket, read: BytesMut, want: usize, arrival: &Arrival) -> BytesMut {
    if read.is_empty() && !(readable(sock) || arrival.more(sock)) {
        return BytesMut::new();
    }
    let mut body = BytesMut::with_capacity(want.saturating_add(connection::PAST_BODY));
    body.extend_from_slice(&read);
    body
}

/// Whether `sock` has input waiting now (no wait).
fn readable(sock: &socket2::Socket) -> bool {
    let mut fds = [PollFd::new(sock, PollFlags::IN)];
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(rustix::event::poll(&mut fds, Some(&now)), Ok(n) if n > 0)
}

/// Reads until `buf` (made by [`body_buffer`]: room for `want` bytes and
/// [`connection::PAST_BODY`]) holds `want` bytes, as long as they keep arriving
/// ([`Arrival`]); its last read also takes up to `PAST_BODY` bytes past them, which
/// tells a peer that sent more than its `CONTENT_LENGTH`. False: not all there; what
/// was read is in `buf`, for the slow lane (which meets the same EOF or error again).
fn read_rest(sock: &socket2::Socket, buf: &mut BytesMut, want: usize, arrival: &Arrival) -> bool {
    let past = want.saturating_add(connection::PAST_BODY);
    buf.reserve(past.saturating_sub(buf.len()));
    while buf.len() < want {
        if !arrival.in_time() {
            return false;
        }
        let room = past - buf.len();
        let spare = buf.spare_capacity_mut();
        let take = room.min(spare.len());
        let spare = &mut spare[..take];
        match rustix::net::recv(sock.as_fd(), spare, RecvFlags::empty()) {
            Ok(((&mut [], _), _)) => return false,
            Ok(((init, _), _)) => {
                let n = init.len();
                // SAFETY: recv initialised the first `n` spare bytes.
                unsafe { buf.set_len(buf.len() + n) };
            }
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => {
                if !arrival.more(sock) {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
    true
}

/// A leaving worker read bytes of its request (handed on with them, not begun).
/// The FastCGI connection's request begins (its head is whole).
fn begin(conn: &FcgiConn) {
    if let Some(p) = conn.permit() {
        p.begin();
    }
}

fn has_read(conn: &Waiting) -> bool {
    match conn {
        Waiting::Plain { read, .. } => !read.is_empty(),
        Waiting::Fcgi(conn) => conn.has_carried(),
    }
}

impl Acceptor {
    /// An accept from `l` failed with `e`: [`accept_error`], and a listener shut down
    /// under this process is found ([`Acceptor::listener_shut`]).
    fn accept_failed(&self, l: &Listener, e: Errno) {
        if self.queue.is_accepting() && self.shut.shut(l, e) {
            self.listener_shut(l);
        }
        accept_error(l, e, &self.admission)
    }

    /// `l` was shut down while this process still accepts: its event stays ready and
    /// every accept fails, so it leaves the epoll ([`super::listener::ShutWatch::found`]).
    /// When the server stops (the master shut it, or a sibling serving the listen
    /// queue before it leaves) this process's own stop was lost: it stops now. When
    /// the master is gone, a sibling shut it (each orphan does, as at the whole
    /// server's stop), and this one is stopping too. Else something outside postern
    /// shut it: said once, and the other listeners serve on.
    fn listener_shut(&self, l: &Listener) {
        let Some(i) = self.listeners.iter().position(|x| std::ptr::eq(x, l)) else {
            return;
        };
        let first = self.shut.found(l);
        self.admission.arming().shut(i);
        let stopping = self
            .slow
            .monitor
            .as_ref()
            .is_some_and(|m| m.server_stopping());
        if stopping {
            crate::stop::listeners_shut();
        } else if crate::stop::parent_gone() {
            // Its master died (SIGKILL) and a sibling that learnt it first shut the
            // listeners as it left, before this one was told: it stops as an orphan
            // too. regression: ERROR "shut down by something outside postern ...".
            crate::stop::master_gone();
        } else if first && !crate::stop::orphaned() {
            tracing::error!(listener = %l.label, "the listener was shut down by something outside postern: it accepts no more connections (restart postern to listen again)");
        }
    }
}

/// What [`Acceptor::drain_backlog_up_to`] found of the listen queues once it stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backlog {
    /// Every one it looked at was empty (or shut).
    Empty,
    /// It took its `max`, or a listener's accepts kept failing: more may wait.
    MayHoldMore,
    /// This process is out of descriptors (or socket memory): it can take nothing now,
    /// and what waits is left for its siblings.
    Starved,
}

/// What an accept error means: nothing (another thread took the connection, it failed
/// on its own), or a pause of the listeners ([`Admission`]); never a sleep.
pub(super) fn accept_error(l: &Listener, e: Errno, admission: &Admission) {
    match e {
        // Another thread took it, the peer gave up, or the listener was shut down.
        Errno::AGAIN | Errno::INTR | Errno::CONNABORTED | Errno::INVAL => {}
        // That connection's own error (accept(2): Linux passes a pending network error
        // of the connection it took off the queue to accept; the next one is to be
        // accepted at once, as after EAGAIN). Not EPERM nor EOPNOTSUPP, which can fail
        // every accept (a seccomp filter, a bad socket): those pause below, no spin.
        Errno::NETDOWN
        | Errno::PROTO
        | Errno::NOPROTOOPT
        | Errno::HOSTDOWN
        | Errno::NONET
        | Errno::HOSTUNREACH
        | Errno::NETUNREACH => {
            tracing::debug!(listener = %l.label, error = %e, "a connection failed as it was accepted");
        }
        // Out of descriptors (or socket memory): the listeners leave the epoll for a
        // while, so this never spins; one log line per second at most.
        Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM => {
            admission.out_of_fds(&l.label, e);
        }
        // Anything else: the listeners leave the epoll for a moment (no thread sleeps
        // holding the accept token); one log line per second at most.
        e => admission.accept_error(&l.label, e),
    }
}

/// `ip:port` of a TCP peer, as `SocketAddr`'s Display writes it. IPv4 by hand: the
/// formatting machinery costs ~3k instructions per connection.
fn peer_text(a: std::net::SocketAddr) -> Arc<str> {
    let std::net::SocketAddr::V4(v4) = a else {
        return Arc::from(a.to_string());
    };
    fn push(buf: &mut [u8; 21], n: &mut usize, mut x: u32, then: u8) {
        let mut digits = [0u8; 5];
        let mut d = 0;
        loop {
            digits[d] = b'0' + (x % 10) as u8;
            d += 1;
            x /= 10;
            if x == 0 {
                break;
            }
        }
        while d > 0 {
            d -= 1;
            buf[*n] = digits[d];
            *n += 1;
        }
        if then != 0 {
            buf[*n] = then;
            *n += 1;
        }
    }
    let mut buf = [0u8; 21]; // 255.255.255.255:65535
    let mut n = 0;
    let [a, b, c, d] = v4.ip().octets();
    push(&mut buf, &mut n, u32::from(a), b'.');
    push(&mut buf, &mut n, u32::from(b), b'.');
    push(&mut buf, &mut n, u32::from(c), b'.');
    push(&mut buf, &mut n, u32::from(d), b':');
    push(&mut buf, &mut n, u32::from(v4.port()), 0);
    Arc::from(std::str::from_utf8(&buf[..n]).unwrap_or("-"))
}

#[cfg(test)]
mod peer_tests {
    #[test]
    fn peer_text_matches_display() {
        for a in [
            "127.0.0.1:3031",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.20.30.40:8080",
            "[::1]:9000",
            "[2001:db8::1]:1",
        ] {
            let addr: std::net::SocketAddr = a.parse().unwrap();
            assert_eq!(&*super::peer_text(addr), a);
        }
    }
}

#[cfg(test)]
mod backlog_turn_tests {
    use super::BacklogTurn;

    #[test]
    fn nothing_is_owed_while_no_listen_queue_is_known_to_hold_more() {
        let t = BacklogTurn::default();
        t.kept_served();
        assert_eq!(t.take(3), None);
        t.accepted(1, false);
        t.kept_served();
        assert_eq!(t.take(3), None);
    }

    #[test]
    fn a_kept_request_owes_one_turn_to_a_queue_that_holds_more() {
        let t = BacklogTurn::default();
        t.accepted(0, true);
        assert_eq!(t.take(1), None, "owed only after a kept request");
        t.kept_served();
        assert_eq!(t.take(1), Some(0));
        assert_eq!(t.take(1), None, "taken once");
        // Its accept found nothing: no longer owed.
        t.accepted(0, false);
        t.kept_served();
        assert_eq!(t.take(1), None);
    }

    // regression (review 325): the owed turns all went to the listener accepted from
    // last, and another loaded listener got fewer turns than with none owed.
    #[test]
    fn owed_turns_go_round_the_listeners_that_hold_more() {
        let t = BacklogTurn::default();
        for i in [0, 1, 2] {
            t.accepted(i, true);
        }
        let mut got = Vec::new();
        for _ in 0..6 {
            t.kept_served();
            let i = t.take(3).unwrap();
            // An owed accept that finds one marks its listener again.
            t.accepted(i, true);
            got.push(i);
        }
        assert_eq!(got, [0, 1, 2, 0, 1, 2]);
        // One found empty is skipped.
        t.accepted(1, false);
        let mut got = Vec::new();
        for _ in 0..4 {
            t.kept_served();
            got.push(t.take(3).unwrap());
        }
        assert_eq!(got, [0, 2, 0, 2]);
    }
}
