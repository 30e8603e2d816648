//! The log lines of clients dropped or refused for bad input: a request head that never
//! became whole by `--head-timeout` (sent byte by byte, cut short, or nothing at all), a
//! malformed or oversized request, a connection cut off in the middle of one. One such
//! client is worth a line naming it and the reason; thousands (a slowloris attack, a
//! flood of garbage, a broken health check) would flood the log with lines that say
//! nothing more (51,723 malformed uwsgi heads in 5 s were 51,723 lines, 9 MiB). So, per
//! process (per worker), the first [`NAMED`] in a [`WINDOW`], whatever their reason, are
//! logged one by one, naming the peer and the reason, and the rest are counted by
//! reason: one line at the end of the window says how many more there were of each and
//! names the last of them. The next one after that starts a new window. A process that
//! stops before its window ends says the count at its stop ([`flush`]).
//!
//! Every per-connection warning about what a peer sent goes through [`bad_input`] (or
//! [`name`], for `--head-timeout`); lines about postern's own trouble (a full disk, a
//! hand-over that failed) do not.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Clients named one by one per window.
pub const NAMED: u32 = 20;
/// How long one window lasts (from its first drop).
pub const WINDOW: Duration = Duration::from_secs(10);

/// Why a client's line was logged or counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No complete request head within `--head-timeout`.
    SlowHead,
    /// A malformed request or protocol error (bad framing, a bad or conflicting
    /// CONTENT_LENGTH, records out of order, bytes that are not the protocol).
    Malformed,
    /// A head or body over a limit (`--buffer-size`, `--max-body`, `--fastcgi-buffer`).
    Oversized,
    /// A request cut off: the connection closed, reset or went silent
    /// (`--read-timeout`) in the middle of it.
    Truncated,
    /// A request head (or the rest of a request answered without FCGI_KEEP_CONN, or a
    /// request body under [`BODY_MIN_RATE`]) still arriving, closed to let in a
    /// connection waiting at `--max-connections` ([`close_oldest_head`]), or a FastCGI
    /// body under that rate whose app waits for it, closed to let in a connection
    /// waiting for a thread or `--max-concurrency` place ([`close_slowest_app_body`]).
    Crowded,
}

/// How many [`Reason`]s there are.
const REASONS: usize = 5;

impl Reason {
    const ALL: [Reason; REASONS] = [
        Reason::Malformed,
        Reason::Oversized,
        Reason::Truncated,
        Reason::SlowHead,
        Reason::Crowded,
    ];

    /// What the summary says of `n` clients dropped for this reason.
    fn words(self, limit: Duration) -> String {
        match self {
            Reason::SlowHead => {
                format!("no complete request head within {limit:?} (--head-timeout)")
            }
            Reason::Malformed => "a malformed request or protocol error".to_owned(),
            Reason::Oversized => "a request over a size limit".to_owned(),
            Reason::Truncated => "a request cut off in the middle".to_owned(),
            Reason::Crowded => "a request head (or a slow body, or the rest of an answered FastCGI request) still arriving at --max-connections, or a slow FastCGI body holding an app's thread or --max-concurrency place, closed to let a waiting connection in".to_owned(),
        }
    }
}

struct State {
    /// The first drop of the window under way; `None`: none is.
    since: Option<Instant>,
    /// Clients named in this window.
    named: u32,
    /// Clients counted (not named) in this window, by reason (`Reason as usize`), and
    /// the last of them.
    more: [u64; REASONS],
    last: String,
    /// `--head-timeout`, for the summary.
    limit: Duration,
    /// A task says the summary at the end of the window.
    summary_due: bool,
    /// The window's number: each one ended adds one, so a task knows whether the
    /// window it was spawned for is still the one under way.
    window: u64,
}

static STATE: Mutex<State> = Mutex::new(State {
    since: None,
    named: 0,
    more: [0; REASONS],
    last: String::new(),
    limit: Duration::ZERO,
    summary_due: false,
    window: 0,
});

/// A client `peer` is dropped at `--head-timeout` (`limit`): true when the caller
/// logs its line naming it, false when it is counted for the window's summary.
pub fn name(peer: &str, limit: Duration) -> bool {
    note(peer, Reason::SlowHead, Some(limit))
}

/// A client `peer` is dropped or refused for what it sent (`reason`): true when the
/// caller logs its line (naming the peer and the reason), false when it is counted for
/// the window's summary. Call it only for the line about a peer's input (and only when
/// that line is at `warn`): it spends one of the window's [`NAMED`] lines.
pub fn bad_input(peer: &str, reason: Reason) -> bool {
    note(peer, reason, None)
}

/// [`bad_input`] from a thread outside the runtime (an app's): `rt`, the runtime whose
/// task says the window's summary. `counted`: the client was counted already (its
/// connection's own line asked the limit), so it is named if the window has a line
/// left, and not counted again if not.
pub fn bad_input_on(
    rt: Option<&tokio::runtime::Handle>,
    peer: &str,
    reason: Reason,
    counted: bool,
) -> bool {
    if counted && !FLUSHED.load(std::sync::atomic::Ordering::Acquire) {
        let mut st = STATE.lock().unwrap_or_else(|e| e.into_inner());
        return st.name_counted(Instant::now());
    }
    note_on(rt.cloned(), peer, reason, None)
}

fn note(peer: &str, reason: Reason, limit: Option<Duration>) -> bool {
    note_on(
        tokio::runtime::Handle::try_current().ok(),
        peer,
        reason,
        limit,
    )
}

/// The process's I/O runtime, where a window's summary is said when the bad input was
/// noticed outside any runtime (on a Python thread or the event loop's) and the caller
/// has no runtime to give ([`summaries_on`]).
static RUNTIME: std::sync::OnceLock<tokio::runtime::Handle> = std::sync::OnceLock::new();

/// Summaries of windows opened outside a runtime are said by a task of `rt` (set once,
/// when the process's I/O runtime starts).
pub fn summaries_on(rt: &tokio::runtime::Handle) {
    let _ = RUNTIME.set(rt.clone());
}

fn note_on(
    rt: Option<tokio::runtime::Handle>,
    peer: &str,
    reason: Reason,
    limit: Option<Duration>,
) -> bool {
    if FLUSHED.load(std::sync::atomic::Ordering::Acquire) {
        // After the last summary (the process stops): named, since no summary would
        // say it; what the stop cuts then is not a peer's bad input anyway.
        return true;
    }
    let rt = rt.or_else(|| RUNTIME.get().cloned());
    let mut st = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let (named, due) = st.drop_one(peer, reason, limit, Instant::now(), rt.is_some());
    if let (Some((since, window)), Some(rt)) = (due, rt) {
        rt.spawn(async move {
            tokio::time::sleep_until((since + WINDOW).into()).await;
            STATE
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .window_over(window, Instant::now());
        });
    }
    named
}

/// [`flush`] ran: what is cut from now on is the stop's doing.
static FLUSHED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The process stops (its drain is over, the runtime about to go, with any summary
/// task still asleep): the window under way says its count now.
// regression: a process stopped (or a worker reloaded, recycled, scaled down) within
// its window dropped the summary task, so the clients it counted appeared nowhere.
pub fn flush() {
    FLUSHED.store(true, std::sync::atomic::Ordering::Release);
    STATE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .summary(Instant::now());
}

/// How long a request head must have been arriving before its connection may be
/// closed to make room at `--max-connections` ([`close_oldest_head`]): nginx and
/// Apache send a head whole, so one arriving this long is a slow or stalled client.
pub const HEAD_BEFORE_CLOSE: Duration = Duration::from_secs(1);

/// A request body read in the slow lane (uwsgi, SCGI, FastCGI STDIN) is listed for
/// [`close_oldest_head`] as well, as behind when it has come slower than this many
/// bytes a second since its read began (Apache's mod_reqtimeout `MinRate` default): a
/// front server sends a body at its client's pace, and even a slow upload is far above
/// it, while a client that sends a byte now and then (a slow POST, R-U-Dead-Yet) keeps
/// each read within `--read-timeout` and would hold its place for ever.
pub const BODY_MIN_RATE: u64 = 500;

/// The connections whose request head is arriving in the slow lane (uwsgi, SCGI,
/// FastCGI), oldest or not: at `--max-connections`, with a connection waiting in the
/// listen queue, the one whose head has been arriving longest is closed for it
/// ([`close_oldest_head`]), instead of every place being held until `--head-timeout`
/// by clients that send a head byte by byte (a slowloris straight to the socket).
static HEADS: Mutex<Heads> = Mutex::new(Heads {
    next: 0,
    arriving: BTreeMap::new(),
    bodies: 0,
});

struct Heads {
    next: u64,
    arriving: BTreeMap<u64, Arc<Arriving>>,
    /// How many of them are bodies apps may read ([`HeadWatch::stdin`],
    /// [`bodies_listed`]).
    bodies: usize,
}

/// Told each time a body apps may read is listed ([`HeadWatch::stdin`]):
/// [`crate::server::fastcgi::keep_apps_free`] looks at the apps' places while such
/// bodies are listed, and sleeps (no wake-up) while none is.
pub static BODY_LISTED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Whether a body apps may read is listed ([`HeadWatch::stdin`]): one may hold an
/// app's place.
pub fn bodies_listed() -> bool {
    heads().bodies > 0
}

/// Why a listed connection was closed for room ([`Arriving::why`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Room {
    /// `--max-connections` reached with a connection waiting.
    Connections = 0,
    /// Every Python thread of a WSGI worker busy, with a request waiting.
    Threads = 1,
    /// An ASGI worker's event loop at `--max-concurrency`, with a request waiting.
    Tasks = 2,
}

struct Arriving {
    peer: Arc<str>,
    /// What is arriving: a request head, or the rest of a request already answered.
    what: Arrival,
    /// Since when its head has been arriving (the accept, or a kept FastCGI
    /// connection's next request's first byte; a drain: its answer).
    since: Instant,
    /// A drain's last read, in nanoseconds after `since` ([`HeadWatch::heard`]; 0 for
    /// a head): [`close_oldest_head`] counts from it.
    heard: AtomicU64,
    /// Some of it has come ([`HeadWatch::arrived`]): a connection that has sent
    /// nothing is not closed for this.
    arrived: AtomicBool,
    /// A body's bytes come so far ([`HeadMarker::read`]).
    bytes: AtomicU64,
    /// A FastCGI connection's requests whose apps read a body still arriving (each
    /// holds a Python thread or an ASGI task's place): closing the connection frees
    /// them ([`HeadWatch::stdin`]). `None`: a body read before its app is called.
    apps: Option<Arc<AtomicU32>>,
    /// How many requests' bodies the bytes are shared by ([`HeadWatch::share`]): each
    /// must come at [`BODY_MIN_RATE`].
    share: AtomicU32,
    /// Nanoseconds added to `since` for a body, so that a change of `share` owes its
    /// new rate from then on, not since the start ([`HeadWatch::share`]).
    shift: AtomicI64,
    /// Why it was closed ([`Room`] as u8), set before `close` is cancelled.
    why: AtomicU8,
    close: CancellationToken,
}

fn heads() -> MutexGuard<'static, Heads> {
    HEADS.lock().unwrap_or_else(|e| e.into_inner())
}

/// A connection's request head being read in the slow lane, listed for
/// [`close_oldest_head`] until it is dropped (the head is whole, or the connection
/// closes).
pub struct HeadWatch {
    key: u64,
    arriving: Arc<Arriving>,
}

/// What a listed connection waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrival {
    /// Its request head.
    Head,
    /// The rest of a FastCGI request answered without FCGI_KEEP_CONN (the drain
    /// before the close: nginx writes the whole body before it reads the response).
    Drain,
    /// A request body of this many bytes (a uwsgi or SCGI one, read before the app is
    /// called; FastCGI STDIN, all a connection's requests' together): behind from when
    /// it has come slower than [`BODY_MIN_RATE`].
    Body(u64),
}

impl HeadWatch {
    /// `peer`'s head has been arriving since `since`; `arrived`: some of it is here.
    pub fn new(peer: &Arc<str>, since: Instant, arrived: bool) -> HeadWatch {
        HeadWatch::listed(peer, Arrival::Head, since, arrived)
    }

    /// `peer`'s FastCGI connection, its request answered without FCGI_KEEP_CONN, is
    /// read from now on until the front server has sent the rest and closes: listed as
    /// a head arriving since now, so that a client that never closes holds its place
    /// for a second, not for --read-timeout, when a connection waits.
    // regression (review of 8e840ae): a whole GET without KEEP_CONN sent in two
    // packets, then silence, held its place through the drain (--read-timeout, 60 s),
    // and at --max-connections nothing could close it: cheaper than a slowloris.
    pub fn draining(peer: &Arc<str>) -> HeadWatch {
        HeadWatch::listed(peer, Arrival::Drain, Instant::now(), true)
    }

    /// `peer`'s request body of `len` bytes is read from now on, `got` of them here.
    // regression (audit): only heads were listed, so clients that sent a body a byte a
    // second (each read within --read-timeout) held every place at --max-connections
    // for ever, and a new request waited in the listen queue.
    pub fn body(peer: &Arc<str>, len: u64, got: u64) -> HeadWatch {
        let watch = HeadWatch::listed(peer, Arrival::Body(len), Instant::now(), true);
        watch.arriving.bytes.store(got, Ordering::Relaxed);
        watch
    }

    fn listed(peer: &Arc<str>, what: Arrival, since: Instant, arrived: bool) -> HeadWatch {
        HeadWatch::listed_with(peer, what, since, arrived, None)
    }

    fn listed_with(
        peer: &Arc<str>,
        what: Arrival,
        since: Instant,
        arrived: bool,
        apps: Option<Arc<AtomicU32>>,
    ) -> HeadWatch {
        let for_apps = apps.is_some();
        let arriving = Arc::new(Arriving {
            peer: Arc::clone(peer),
            what,
            since,
            heard: AtomicU64::new(0),
            arrived: AtomicBool::new(arrived),
            bytes: AtomicU64::new(0),
            apps,
            share: AtomicU32::new(1),
            shift: AtomicI64::new(0),
            why: AtomicU8::new(Room::Connections as u8),
            close: CancellationToken::new(),
        });
        let key = {
            let mut h = heads();
            let key = h.next;
            h.next += 1;
            h.arriving.insert(key, Arc::clone(&arriving));
            h.bodies += usize::from(for_apps);
            key
        };
        if for_apps {
            BODY_LISTED.notify_one();
        }
        HeadWatch { key, arriving }
    }

    /// The bodies of a FastCGI connection's requests, `len` bytes in all, read from
    /// now on while their apps may read them: `apps` counts the requests whose apps
    /// have begun reading ([`close_slowest_app_body`] closes only a connection with
    /// some). Its bytes are set from the STDIN content given to the requests
    /// ([`HeadWatch::set_bytes`]), not from what is read off the socket: padding, record
    /// headers and other records do not count.
    pub fn stdin(peer: &Arc<str>, len: u64, apps: &Arc<AtomicU32>) -> HeadWatch {
        let apps = Some(Arc::clone(apps));
        HeadWatch::listed_with(peer, Arrival::Body(len), Instant::now(), true, apps)
    }

    /// The body's bytes come so far (since the watch began).
    pub fn set_bytes(&self, n: u64) {
        self.arriving.bytes.store(n, Ordering::Relaxed);
    }

    /// The bytes are shared by `n` requests' bodies (at least 1): together they must
    /// come at `n` times [`BODY_MIN_RATE`], so that multiplexing many requests on one
    /// connection does not make each cheaper to hold.
    /// At a change, the time already earned stays earned, and the credit ahead of now
    /// (bytes sent early) is spread over the new count: credit earned by one body does
    /// not cover 63 more.
    // regression (review of e6c0358): the new share applied since the start, so a
    // connection on time for 100 s that took 63 more requests was 98 s behind at once;
    // (review of 53d7b58) keeping the whole point instead let 20 KB sent for one
    // request hold 64 places for 40 s.
    pub fn share(&self, n: usize) {
        let a = &self.arriving;
        let n = u32::try_from(n.max(1)).unwrap_or(u32::MAX);
        let old = a.share.load(Ordering::Relaxed).max(1);
        if old == n {
            return;
        }
        // Only the lane that owns the watch changes it; a pick on another thread may
        // look between the two stores: the order below makes it see the connection
        // further ahead, never behind, in that moment.
        let rate = BODY_MIN_RATE as f64;
        let bytes = a.bytes.load(Ordering::Relaxed) as f64;
        let now = a.since.elapsed().as_secs_f64();
        let shift = a.shift.load(Ordering::Relaxed) as f64 / 1e9;
        let earned = bytes / (rate * f64::from(old)) + shift;
        let earned = if earned > now {
            now + (earned - now) * f64::from(old) / f64::from(n)
        } else {
            earned
        };
        let shift = ((earned - bytes / (rate * f64::from(n))) * 1e9).clamp(-1e18, 1e18) as i64;
        if n > old {
            a.shift.store(shift, Ordering::Relaxed);
            a.share.store(n, Ordering::Relaxed);
        } else {
            a.share.store(n, Ordering::Relaxed);
            a.shift.store(shift, Ordering::Relaxed);
        }
    }

    /// `n` more bytes have come ([`HeadMarker::read`]).
    pub fn read(&self, n: usize) {
        self.arriving.arrived.store(true, Ordering::Relaxed);
        self.arriving.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Some of the head has come.
    pub fn arrived(&self) {
        self.arriving.arrived.store(true, Ordering::Relaxed);
    }

    /// A drain read bytes now: it is listed as silent from now on, so that one still
    /// receiving the rest of its request (an upload answered early: nginx with
    /// `fastcgi_request_buffering off` writes its body until the end) is not closed
    /// while they flow, only once silent for [`HEAD_BEFORE_CLOSE`]. One relaxed store.
    // regression (review of 1beb8b4): a drain was listed from its answer and never
    // refreshed, so one still receiving its body was closed (a reset under nginx's
    // write: a 502 instead of the app's answer) a second after the answer.
    pub fn heard(&self) {
        let a = &self.arriving;
        let after = u64::try_from(a.since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        a.heard.store(after, Ordering::Relaxed);
    }

    /// A handle that marks the head's arrival from elsewhere (the reader).
    pub fn marker(&self) -> HeadMarker {
        HeadMarker(Arc::clone(&self.arriving))
    }

    /// It was picked to be closed for room ([`HeadWatch::closed_for_room`] returns at
    /// once).
    pub fn picked(&self) -> bool {
        self.arriving.close.is_cancelled()
    }

    /// Returns once the connection is to be closed to make room, its line logged (the
    /// first [`NAMED`] of each [`WINDOW`] named): close it, saying nothing more. Only
    /// the task that acts on it says it, so a connection picked as its head came whole
    /// (or as it began to drain) is not named for a close that never happened.
    // regression (review of 8e840ae): the line was logged at the pick, and a FastCGI
    // connection draining (its watch kept past the request loop) was named at every
    // turn while nothing closed it.
    pub async fn closed_for_room(&self) {
        let a = &self.arriving;
        a.close.cancelled().await;
        let for_ = a.quiet_since().elapsed();
        if !bad_input(&a.peer, Reason::Crowded) {
            return;
        }
        match a.what {
            Arrival::Head => {
                tracing::warn!(peer = %a.peer, "--max-connections reached with a connection waiting: closing the connection whose request head has been arriving longest ({for_:.1?}, not whole yet: a slow or stalled client) to let it in")
            }
            Arrival::Drain => {
                tracing::warn!(peer = %a.peer, "--max-connections reached with a connection waiting: closing a FastCGI connection answered without FCGI_KEEP_CONN whose client has not closed it (nothing from it for {for_:.1?}, the rest of its request read and dropped since the answer) to let it in")
            }
            Arrival::Body(len) if a.why.load(Ordering::Relaxed) != Room::Connections as u8 => {
                let got = a.bytes.load(Ordering::Relaxed);
                let took = a.since.elapsed();
                let bodies = a.share.load(Ordering::Relaxed);
                let full = if a.why.load(Ordering::Relaxed) == Room::Tasks as u8 {
                    "this worker's event loop is at --max-concurrency"
                } else {
                    "every Python thread of this worker is busy"
                };
                tracing::warn!(peer = %a.peer, got, content_length = len, bodies, "{full} with a request waiting for one: closing a FastCGI connection whose apps wait for request bodies that come furthest behind {BODY_MIN_RATE} bytes a second each ({got} bytes in the {took:.1?} since its apps began to wait for them, of {len} announced for {bodies} request bod(ies): a slow or stalled client); its requests end, and their places go to what waits")
            }
            Arrival::Body(len) => {
                let got = a.bytes.load(Ordering::Relaxed);
                let took = a.since.elapsed();
                // (Over uwsgi and SCGI the request's span names the peer too.)
                tracing::warn!(peer = %a.peer, got, content_length = len, "--max-connections reached with a connection waiting: closing a connection whose request body arrives slowest ({got} of {len} bytes in {took:.1?}, under {BODY_MIN_RATE} bytes a second: a slow or stalled client) to let it in")
            }
        }
    }
}

impl Arriving {
    /// Since when nothing has come: the head's start, or a drain's last read; for a
    /// body, since when it has been behind [`BODY_MIN_RATE`].
    fn quiet_since(&self) -> Instant {
        match self.what {
            Arrival::Body(_) => {
                let share = f64::from(self.share.load(Ordering::Relaxed).max(1));
                let earned = self.bytes.load(Ordering::Relaxed) as f64
                    / (BODY_MIN_RATE as f64 * share)
                    + self.shift.load(Ordering::Relaxed) as f64 / 1e9;
                // Far ahead (a body that came fast): not behind for years; never before
                // its start.
                self.since + Duration::from_secs_f64(earned.clamp(0.0, 1e9))
            }
            _ => self.since + Duration::from_nanos(self.heard.load(Ordering::Relaxed)),
        }
    }
}

impl Drop for HeadWatch {
    fn drop(&mut self) {
        let mut h = heads();
        // Not there any more when it was closed for room (taken out at the pick).
        if h.arriving.remove(&self.key).is_some() && self.arriving.apps.is_some() {
            h.bodies -= 1;
        }
    }
}

/// Marks a [`HeadWatch`]'s head as arriving.
#[derive(Clone)]
pub struct HeadMarker(Arc<Arriving>);

impl HeadMarker {
    pub fn arrived(&self) {
        self.0.arrived.store(true, Ordering::Relaxed);
    }

    /// `n` more bytes have come (some of the head, or of a body: [`HeadWatch::body`]).
    pub fn read(&self, n: usize) {
        self.arrived();
        self.0.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// At `--max-connections` with a connection waiting in the listen queue: closes the
/// connection whose request head has been arriving longest, if for at least `floor`
/// and some of it has come (a front server sends a head whole; one arriving this long
/// is a slow or stalled client), or a FastCGI connection draining silent for as long
/// ([`HeadWatch::draining`], [`HeadWatch::heard`]). True when one was told to close.
/// Its task closes it and logs it ([`HeadWatch::closed_for_room`]); its place comes
/// free with it.
pub fn close_oldest_head(floor: Duration) -> bool {
    close_for(floor, Room::Connections)
}

/// Every Python thread (WSGI, `room` [`Room::Threads`]) or `--max-concurrency` place
/// (ASGI, [`Room::Tasks`]) of the worker is taken and a request waits for one: closes
/// the FastCGI connection some of whose requests' apps read a body still arriving
/// ([`HeadWatch::stdin`]) and whose bodies are furthest behind [`BODY_MIN_RATE`] each,
/// by at least `floor`. Its apps' reads fail as at a close, their requests end, and
/// their places go to what waits. True when one was told to close (its task logs it).
// regression (hostile, session 16): FastCGI bodies trickling a byte a second (each
// read within --read-timeout) held every thread or --max-concurrency place for ever,
// and nothing was logged: accept had stopped for the places, not for
// --max-connections, so the slow-body close there never came.
pub fn close_slowest_app_body(floor: Duration, room: Room) -> bool {
    close_for(floor, room)
}

fn close_for(floor: Duration, room: Room) -> bool {
    let now = Instant::now();
    let victim = {
        let mut h = heads();
        let oldest = h
            .arriving
            .iter()
            .filter(|(_, a)| match room {
                Room::Connections => true,
                Room::Threads | Room::Tasks => a
                    .apps
                    .as_ref()
                    .is_some_and(|n| n.load(Ordering::Relaxed) > 0),
            })
            .map(|(k, a)| (k, a, a.quiet_since()))
            .filter(|(_, a, quiet)| {
                a.arrived.load(Ordering::Relaxed) && now.saturating_duration_since(*quiet) >= floor
            })
            .min_by_key(|&(_, _, quiet)| quiet)
            .map(|(&k, _, _)| k);
        let Some(victim) = oldest.and_then(|k| h.arriving.remove(&k)) else {
            return false;
        };
        if victim.apps.is_some() {
            h.bodies -= 1;
        }
        victim
    };
    victim.why.store(room as u8, Ordering::Relaxed);
    victim.close.cancel();
    true
}

impl State {
    /// One client dropped `now`: whether it is named, and the start and number of the
    /// window whose summary a task must now say at its end (`can_spawn`: one can be).
    fn drop_one(
        &mut self,
        peer: &str,
        reason: Reason,
        limit: Option<Duration>,
        now: Instant,
        can_spawn: bool,
    ) -> (bool, Option<(Instant, u64)>) {
        if self.since.is_some_and(|t| now.duration_since(t) >= WINDOW) {
            // A window whose summary no task said yet (none could be spawned, or it
            // has not run): said now.
            self.summary(now);
        }
        let since = *self.since.get_or_insert(now);
        if self.named < NAMED {
            self.named += 1;
            return (true, None);
        }
        self.more[reason as usize] += 1;
        self.last.clear();
        self.last.push_str(peer);
        if let Some(limit) = limit {
            self.limit = limit;
        }
        if self.summary_due || !can_spawn {
            return (false, None);
        }
        self.summary_due = true;
        (false, Some((since, self.window)))
    }

    /// A client counted already in this window (by [`State::drop_one`]) gets a line of
    /// its own if the window has one left; it is not counted again if not.
    fn name_counted(&mut self, now: Instant) -> bool {
        if self.since.is_none_or(|t| now.duration_since(t) >= WINDOW) {
            // Its count went out with a summary already, or none is under way: a line
            // of a new window.
            if self.since.is_some() {
                self.summary(now);
            }
            self.since = Some(now);
        }
        if self.named < NAMED {
            self.named += 1;
            return true;
        }
        false
    }

    /// The task spawned for window number `window` wakes at its end: it says the
    /// summary only if that window is still the one under way.
    // regression: a task whose window `drop_one` had already ended (the runtime had not
    // run it yet) ended the next window early, so up to twice NAMED clients were named
    // in one WINDOW.
    fn window_over(&mut self, window: u64, now: Instant) {
        if self.window == window && self.since.is_some() {
            self.summary(now);
        }
    }

    /// Says the window's count of clients not named (if any) and ends the window
    /// (`now`: the window lasted until then, at most [`WINDOW`]).
    fn summary(&mut self, now: Instant) {
        let total: u64 = self.more.iter().sum();
        let slow = self.more[Reason::SlowHead as usize];
        if total > slow {
            let each: Vec<String> = Reason::ALL
                .iter()
                .filter(|&&r| self.more[r as usize] > 0)
                .map(|&r| format!("{} {}", self.more[r as usize], r.words(self.limit)))
                .collect();
            // Cut requests alone are what a front server that streams request bodies
            // (`*_request_buffering off`) relays when its clients abort their uploads:
            // not a flood of bad requests.
            // regression (probe 339): 100 aborted uploads behind nginx were summed up
            // as a client other than the front server or a missing params file.
            let cut_only = total - slow == self.more[Reason::Truncated as usize];
            let likely = if cut_only {
                "requests cut off in the middle: behind a front server that streams request bodies (nginx `*_request_buffering off`, Apache), its clients aborting their uploads; else a front server or client that breaks its connections (the named lines say which)"
            } else {
                "a flood of bad requests: a client other than the front server on the socket, a broken one, or a front server location without its params file (the named lines say which)"
            };
            // Out of any request's span: it may be said by an app's thread reading a
            // cut body ([`bad_input_on`]).
            tracing::warn!(
                parent: None,
                last_peer = %self.last,
                "{total} more clients dropped or refused in the last {} s for bad input, not named one by one (the first {NAMED} of each {} s are, whatever the reason): {}; {likely}",
                self.lasted(now),
                WINDOW.as_secs(),
                each.join(", "),
            );
        } else if slow > 0 {
            tracing::warn!(
                parent: None,
                last_peer = %self.last,
                "{} more clients dropped in the last {} s for no complete request head within {:?} (--head-timeout), not named one by one (the first {NAMED} of each {} s are): a flood of slow or incomplete requests, e.g. a slowloris attack, or a broken client or health check",
                slow,
                self.lasted(now),
                self.limit,
                WINDOW.as_secs(),
            );
        }
        self.since = None;
        self.named = 0;
        self.more = [0; REASONS];
        self.summary_due = false;
        self.window = self.window.wrapping_add(1);
    }

    /// The window's length so far in whole seconds, rounded up (at least 1, at most
    /// [`WINDOW`]): a window ended early by [`flush`] is shorter.
    fn lasted(&self, now: Instant) -> u64 {
        let Some(since) = self.since else {
            return WINDOW.as_secs();
        };
        let d = now.duration_since(since).min(WINDOW);
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        State {
            since: None,
            named: 0,
            more: [0; REASONS],
            last: String::new(),
            limit: Duration::ZERO,
            summary_due: false,
            window: 0,
        }
    }

    /// Drops `n` clients at `at`: how many were named, and the summary tasks due.
    fn drop_n(st: &mut State, n: u32, at: Instant) -> (u32, Vec<u64>) {
        let mut named = 0;
        let mut due = Vec::new();
        for i in 0..n {
            let (n, d) = st.drop_one(
                &format!("peer{i}"),
                Reason::SlowHead,
                Some(Duration::from_secs(1)),
                at,
                true,
            );
            named += u32::from(n);
            due.extend(d.map(|(_, w)| w));
        }
        (named, due)
    }

    // regression: a summary task that woke after `drop_one` had already ended its window
    // (and begun the next) ended the new window too, so up to twice NAMED clients were
    // named in one WINDOW (review of the head-timeout summary).
    #[test]
    fn a_late_summary_task_does_not_end_the_next_window() {
        let mut st = state();
        let t0 = Instant::now();
        let (named, due) = drop_n(&mut st, NAMED + 5, t0);
        assert_eq!((named, due.len()), (NAMED, 1));
        // The next window's first drop comes before the first window's task runs.
        let t1 = t0 + WINDOW + Duration::from_millis(1);
        let (named, second) = drop_n(&mut st, 1, t1);
        assert_eq!(named, 1);
        assert!(second.is_empty());
        // Now the stale task wakes: the second window goes on.
        st.window_over(due[0], t1);
        let (named, due2) = drop_n(&mut st, NAMED + 5, t1 + Duration::from_secs(1));
        assert_eq!(
            named,
            NAMED - 1,
            "the second window names NAMED clients in all"
        );
        assert_eq!(due2.len(), 1, "one summary task for the second window");
        // Its own task ends it.
        st.window_over(due2[0], t1 + WINDOW);
        assert_eq!((st.since, st.named, st.more), (None, 0, [0; REASONS]));
    }

    #[test]
    fn a_window_names_its_first_clients_and_counts_the_rest() {
        let mut st = state();
        let t0 = Instant::now();
        let (named, due) = drop_n(&mut st, NAMED + 3, t0);
        assert_eq!((named, st.more), (NAMED, [3, 0, 0, 0, 0]));
        st.window_over(due[0], t0 + WINDOW);
        let (named, _) = drop_n(&mut st, 1, t0 + WINDOW);
        assert_eq!(named, 1, "a new window names again");
    }

    // regression (sec M3): 51,723 malformed uwsgi heads in 5 s were 51,723 WARN lines
    // (9 MiB); only slow heads were limited. Every bad-input line now shares the
    // window's NAMED lines, and the rest are counted by reason.
    #[test]
    fn a_client_counted_already_is_named_while_lines_are_left_and_never_counted_twice() {
        let mut st = state();
        let t0 = Instant::now();
        assert!(st.name_counted(t0), "a line left: named");
        for i in 1..NAMED {
            let (n, _) = st.drop_one(&format!("peer{i}"), Reason::Truncated, None, t0, false);
            assert!(n);
        }
        let (n, _) = st.drop_one("peer-over", Reason::Truncated, None, t0, false);
        assert!(!n);
        assert_eq!(st.more.iter().sum::<u64>(), 1);
        assert!(!st.name_counted(t0), "no line left: not named");
        assert_eq!(st.more.iter().sum::<u64>(), 1, "and not counted again");
        // A new window: named again.
        assert!(st.name_counted(t0 + WINDOW));
        assert_eq!((st.named, st.more), (1, [0; REASONS]));
    }

    #[test]
    fn bad_input_of_any_reason_shares_the_windows_named_lines_and_is_counted_by_reason() {
        let mut st = state();
        let t0 = Instant::now();
        let mut named = 0;
        let mut due = Vec::new();
        let reasons = [
            Reason::Malformed,
            Reason::Oversized,
            Reason::Truncated,
            Reason::SlowHead,
        ];
        for i in 0..1000u32 {
            let reason = reasons[i as usize % 4];
            let (n, d) = st.drop_one(&format!("peer{i}"), reason, None, t0, true);
            named += u32::from(n);
            due.extend(d);
        }
        assert_eq!(named, NAMED, "the first NAMED, whatever their reason");
        assert_eq!(due.len(), 1, "one summary for the window");
        let counted = 1000 - u64::from(NAMED);
        assert_eq!(st.more.iter().sum::<u64>(), counted);
        assert!(
            st.more[..4].iter().all(|&n| n == counted / 4),
            "{:?}",
            st.more
        );
        assert_eq!(st.last, "peer999");
        st.window_over(due[0].1, t0 + WINDOW);
        assert_eq!((st.named, st.more), (0, [0; REASONS]));
    }

    #[test]
    fn the_oldest_head_under_way_is_closed_for_room_once_some_of_it_came() {
        // Ages far past any other test's watches (the list is the process's).
        let peer: Arc<str> = Arc::from("test-oldest-head");
        let ago = |s| Instant::now().checked_sub(Duration::from_secs(s)).unwrap();
        let silent = HeadWatch::new(&peer, ago(300), false);
        let oldest = HeadWatch::new(&peer, ago(200), true);
        let newer = HeadWatch::new(&peer, ago(150), false);
        newer.marker().arrived();
        let closed = |w: &HeadWatch| w.arriving.close.is_cancelled();
        // None has been arriving that long.
        assert!(!close_oldest_head(Duration::from_secs(100_000)));
        // The oldest that sent something, not the older silent one.
        assert!(close_oldest_head(Duration::from_secs(100)));
        assert!(closed(&oldest) && !closed(&newer) && !closed(&silent));
        // Taken off the list: the next is the next oldest.
        silent.arrived();
        assert!(close_oldest_head(Duration::from_secs(100)));
        assert!(closed(&silent) && !closed(&newer));
        // One dropped (its head came whole, or it closed) is off the list.
        drop(newer);
        assert!(!close_oldest_head(Duration::from_secs(100)));
        // A body is behind once it came slower than BODY_MIN_RATE: one read for 300 s
        // that has had 300 s worth is not (an upload on schedule), one with 10 bytes is.
        let body = |got: u64| {
            let w = HeadWatch::listed(&peer, Arrival::Body(1 << 30), ago(300), true);
            w.marker().read(usize::try_from(got).unwrap());
            w
        };
        let on_time = body(300 * BODY_MIN_RATE);
        let trickle = body(10);
        assert!(close_oldest_head(Duration::from_secs(100)));
        assert!(closed(&trickle) && !closed(&on_time));
        assert!(!close_oldest_head(Duration::from_secs(100)));
        // For the apps' places, only a FastCGI body some of whose apps read it: not a
        // head, not a body read before its app is called, not one whose apps have not
        // begun, not one on time.
        let reading = Arc::new(AtomicU32::new(1));
        let idle = Arc::new(AtomicU32::new(0));
        let stdin = |got: u64, apps: &Arc<AtomicU32>| {
            let w = HeadWatch::listed_with(
                &peer,
                Arrival::Body(1 << 30),
                ago(300),
                true,
                Some(Arc::clone(apps)),
            );
            w.set_bytes(got);
            w
        };
        let room = Room::Threads;
        let head = HeadWatch::new(&peer, ago(400), true);
        let before_app = body(10);
        let not_begun = stdin(5, &idle);
        let on_time_app = stdin(300 * BODY_MIN_RATE, &reading);
        assert!(!close_slowest_app_body(Duration::from_secs(100), room));
        // Shared by 4 requests from now on: what it earned stays earned.
        on_time_app.share(4);
        assert!(!close_slowest_app_body(Duration::from_secs(100), room));
        // Shared by 4 from the start, 300 s worth for one is 225 s behind for them all.
        let shared = stdin(0, &reading);
        shared.share(4);
        shared.set_bytes(300 * BODY_MIN_RATE);
        assert!(close_slowest_app_body(Duration::from_secs(100), room));
        assert!(closed(&shared) && !closed(&on_time_app));
        let slow_app = stdin(20, &reading);
        let slower_app = stdin(10, &reading);
        assert!(close_slowest_app_body(
            Duration::from_secs(100),
            Room::Tasks
        ));
        assert!(closed(&slower_app) && !closed(&slow_app));
        assert!(!closed(&head) && !closed(&before_app) && !closed(&not_begun));
        assert_eq!(
            slower_app.arriving.why.load(Ordering::Relaxed),
            Room::Tasks as u8
        );
        // Credit for bytes sent early is spread over the bodies a connection takes on
        // after: 25,000 bytes in 10 s are 40 s ahead for one body, under a second for 64.
        let early = stdin(0, &idle);
        let early_since = Instant::now().checked_sub(Duration::from_secs(10)).unwrap();
        let early = {
            drop(early);
            let w = HeadWatch::listed_with(
                &peer,
                Arrival::Body(1 << 30),
                early_since,
                true,
                Some(Arc::clone(&idle)),
            );
            w.set_bytes(50 * BODY_MIN_RATE);
            w
        };
        let ahead = |w: &HeadWatch| {
            w.arriving
                .quiet_since()
                .saturating_duration_since(Instant::now())
        };
        assert!(
            ahead(&early) > Duration::from_secs(39),
            "{:?}",
            ahead(&early)
        );
        early.share(64);
        assert!(
            ahead(&early) < Duration::from_secs(1),
            "{:?}",
            ahead(&early)
        );
        // Back to one: the credit left is one body's again (what a second is worth to
        // 64 bodies is 64 s to one; none is made or lost by the changes).
        early.share(1);
        assert!(
            ahead(&early) > Duration::from_secs(39),
            "{:?}",
            ahead(&early)
        );
        drop(early);
        // Only bodies apps may read are counted, off the count as they close or drop.
        let consistent = || {
            let h = heads();
            h.bodies == h.arriving.values().filter(|a| a.apps.is_some()).count()
        };
        assert!(bodies_listed());
        assert!(consistent());
        drop(not_begun);
        assert!(consistent());
        assert!(close_slowest_app_body(Duration::from_secs(100), room));
        drop((
            on_time,
            before_app,
            on_time_app,
            slow_app,
            slower_app,
            shared,
        ));
        assert!(consistent());
    }

    #[test]
    fn a_window_ended_early_says_how_long_it_lasted() {
        let mut st = state();
        let t0 = Instant::now();
        drop_n(&mut st, NAMED + 1, t0);
        assert_eq!(st.lasted(t0 + Duration::from_millis(2500)), 3);
        assert_eq!(st.lasted(t0), 1);
        assert_eq!(st.lasted(t0 + WINDOW * 2), WINDOW.as_secs());
        st.summary(t0 + Duration::from_millis(2500));
        assert_eq!((st.since, st.named, st.more), (None, 0, [0; REASONS]));
    }
}
