//! `--stats ADDR`: the small HTTP endpoint operators scrape (`/metrics`, Prometheus
//! text), read (`/status`, JSON or a text table) and probe (`/ping`), and the
//! `postern status` client. Everything it shows is a [`Snapshot`] that the supervisor
//! builds from the shared scoreboard; nothing here runs on a Python thread or on a
//! request's path. Imports nothing from `wsgi` or `supervisor`.
//!
//! - [`metrics`]: Snapshot → Prometheus text format (prometheus-client). Pure.
//! - [`status`]: Snapshot → `/status` JSON and its plain-text table. Pure.
//! - [`server`]: binding `--stats` and serving it with hyper.
//! - [`client`]: `postern status ADDR [--watch]`.
//! - [`queue`]: the listen-queue depth of a listening socket (TCP_INFO, sock_diag).

pub mod client;
pub mod metrics;
pub mod queue;
pub mod server;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use crate::codec::Protocol;

/// Errors of the stats endpoint and its client.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    // The cause is the `source` (printed after this by `{:#}`), not in the message too.
    #[error("--stats {addr}")]
    Bind {
        addr: String,
        source: crate::server::ServerError,
    },
    #[error("cannot start the stats endpoint's runtime: {0}")]
    Runtime(std::io::Error),
    #[error("{0:?}: expected HOST:PORT or unix:PATH (the --stats address of a running postern)")]
    Address(String),
    #[error("cannot connect to {addr}: {source} ({})", connect_hint(.addr, .source))]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("{addr}: {reason}")]
    Http { addr: String, reason: String },
}

/// What to check when `postern status` cannot connect.
fn connect_hint(addr: &str, e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        // A Unix stats socket gets the listeners' --socket-mode and --socket-owner
        // (else the umask and the user postern starts as): this user may not connect.
        "the socket belongs to the user postern runs as: run postern status as that user".into()
    } else {
        format!("is postern running with --stats {addr}?")
    }
}

/// The protocols, in the order the counters are laid out.
pub const PROTOCOLS: [Protocol; 3] = [Protocol::Uwsgi, Protocol::FastCgi, Protocol::Scgi];

/// Where `p`'s counters are in [`Totals::requests`].
pub fn protocol_index(p: Protocol) -> usize {
    match p {
        Protocol::Uwsgi => 0,
        Protocol::FastCgi => 1,
        Protocol::Scgi => 2,
    }
}

/// Status classes: "none" is a request that ended before any status was chosen (the
/// client went away first, or an internal error); "other" a code past 599, outside
/// those RFC 9110 §15 defines, which postern passes on as the app sent it (600 to 999).
pub const STATUS_CLASSES: [&str; 7] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx", "other"];

/// Where a status code is counted in [`STATUS_CLASSES`].
pub fn status_class(code: u16) -> usize {
    match code {
        100..=599 => usize::from(code / 100),
        600..=999 => 6,
        _ => 0,
    }
}

/// `postern_app_errors_total{kind}`, in the order of [`Totals::app_errors`] (and of
/// `crate::wsgi::AppError`): the app raised, broke the WSGI contract, or sent an ASGI
/// message out of turn (or returned before its response was complete).
pub const APP_ERROR_KINDS: [&str; 3] = ["exception", "wsgi_contract", "asgi_contract"];

/// Upper bounds of the request-duration histogram, in seconds: from a fast cached page
/// (1 ms) to the usual proxy timeouts (30-60 s).
pub const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// The same bounds in nanoseconds (what the request path compares against).
const DURATION_BUCKETS_NS: [u64; 14] = [
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
];
/// Histogram slots: one per bound, plus one for longer requests (`+Inf`).
pub const DURATION_SLOTS: usize = DURATION_BUCKETS.len() + 1;

/// The histogram slot of a request that took `ns` nanoseconds (bounds are inclusive,
/// as Prometheus' `le` says).
pub fn duration_slot(ns: u64) -> usize {
    DURATION_BUCKETS_NS
        .iter()
        .position(|&b| ns <= b)
        .unwrap_or(DURATION_BUCKETS.len())
}

/// Why a worker started or exited (`postern_worker_starts_total{cause}` and
/// `postern_worker_exits_total{cause}`). A replacement starts with the cause of the
/// exit it replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The first workers (starts only).
    Boot,
    /// A new generation (SIGHUP, --touch-reload); exits: the old generation.
    Reload,
    /// SIGTTIN / SIGTTOU.
    Scale,
    /// Died unexpectedly after it served.
    Crash,
    /// Exited cleanly after it served without the master asking: a SIGTERM or SIGINT
    /// sent to the worker directly (an operator, a script).
    Signal,
    /// Died before it was ready.
    BootFailure,
    /// Killed for `--timeout`.
    Timeout,
    MaxRequests,
    MaxRss,
    MaxLifetime,
    /// The master stopped (exits only).
    Stop,
    /// Exits only: told to leave (for any of the causes above) and killed by the master
    /// because it still ran past `--graceful-timeout` (plus its margin). Not a
    /// `--timeout` kill (`timeout`), nor the kill of SIGQUIT or a second stop signal,
    /// which were asked for (`stop`).
    Killed,
}

impl Cause {
    pub const ALL: [Cause; 12] = [
        Cause::Boot,
        Cause::Reload,
        Cause::Scale,
        Cause::Crash,
        Cause::Signal,
        Cause::BootFailure,
        Cause::Timeout,
        Cause::MaxRequests,
        Cause::MaxRss,
        Cause::MaxLifetime,
        Cause::Stop,
        Cause::Killed,
    ];
    pub const COUNT: usize = Self::ALL.len();

    pub fn label(self) -> &'static str {
        match self {
            Cause::Boot => "boot",
            Cause::Reload => "reload",
            Cause::Scale => "scale",
            Cause::Crash => "crash",
            Cause::Signal => "signal",
            Cause::BootFailure => "boot-failure",
            Cause::Timeout => "timeout",
            Cause::MaxRequests => "max-requests",
            Cause::MaxRss => "max-rss",
            Cause::MaxLifetime => "max-lifetime",
            Cause::Stop => "stop",
            Cause::Killed => "killed",
        }
    }

    pub fn index(self) -> usize {
        Self::ALL.iter().position(|&c| c == self).unwrap_or(0)
    }

    pub fn from_index(i: u64) -> Option<Cause> {
        usize::try_from(i)
            .ok()
            .and_then(|i| Self::ALL.get(i).copied())
    }

    /// A replacement started for this reason was planned (the worker it replaces did
    /// not fail).
    pub fn planned(self) -> bool {
        matches!(
            self,
            Cause::Reload | Cause::Scale | Cause::MaxRequests | Cause::MaxRss | Cause::MaxLifetime
        )
    }

    /// A worker can start for this reason (a killed worker's replacement starts with
    /// the cause it was told to leave for).
    pub fn starts(self) -> bool {
        !matches!(self, Cause::Stop | Cause::Killed)
    }

    /// A worker can exit for this reason.
    pub fn exits(self) -> bool {
        self != Cause::Boot
    }
}

/// Request counters, summed over every worker that ever ran (exact: each Python thread
/// counts its own requests in the scoreboard, and an exited worker's counts are folded
/// into the master's totals).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// `[protocol][status class]`, see [`PROTOCOLS`] and [`STATUS_CLASSES`].
    pub requests: [[u64; STATUS_CLASSES.len()]; PROTOCOLS.len()],
    /// Requests per duration slot (not cumulative), see [`DURATION_BUCKETS`].
    pub duration: [u64; DURATION_SLOTS],
    pub duration_ns: u64,
    /// Response bytes sent (head and body).
    pub bytes: u64,
    /// By [`APP_ERROR_KINDS`].
    pub app_errors: [u64; APP_ERROR_KINDS.len()],
    /// Responses cut short: `[incomplete (connection aborted), client went away]` (the
    /// second also a response the front server stopped reading: `wsgi::End::Stalled`).
    pub cut: [u64; 2],
    /// Requests postern answered itself (or closed) before a Python thread ran them,
    /// `[protocol][status class]` as in `requests`; not in the other counts.
    pub refused: [[u64; STATUS_CLASSES.len()]; PROTOCOLS.len()],
}

impl Totals {
    /// Every request counted.
    pub fn requests(&self) -> u64 {
        self.requests.iter().flatten().sum()
    }

    /// Every request refused before a Python thread.
    pub fn refused(&self) -> u64 {
        self.refused.iter().flatten().sum()
    }
}

/// Events the master counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Events {
    /// Worker starts, by [`Cause::index`].
    pub starts: [u64; Cause::COUNT],
    /// Worker exits, by [`Cause::index`].
    pub exits: [u64; Cause::COUNT],
    /// Requests that passed `--timeout` (their worker was killed).
    pub timeouts: u64,
    /// Requests that passed `--slow-log` (stacks dumped).
    pub slow: u64,
    /// Times a request took the last idle Python thread of the serving workers.
    pub saturated: u64,
    /// Reloads that ended: `[ok, failed]`.
    pub reloads: [u64; 2],
    /// The generation that serves (a gauge): the newest one all of whose workers
    /// served.
    pub generation: u64,
}

/// A worker's state as `/status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// Importing the app; not accepting yet.
    Starting,
    Serving,
    /// Recycled (`--max-requests` near, over `--max-rss`, past `--max-lifetime`): it
    /// serves on, accepting, until its successor is ready, then drains.
    /// regression: it showed as `serving`, so /status and `postern_workers` did not
    /// tell it from the workers that stay, during its successor's whole start.
    Retiring,
    /// Finishing its requests before it exits (reload, recycling, stop).
    Draining,
}

impl WorkerState {
    pub fn label(self) -> &'static str {
        match self {
            WorkerState::Starting => "starting",
            WorkerState::Serving => "serving",
            WorkerState::Retiring => "retiring",
            WorkerState::Draining => "draining",
        }
    }

    /// It accepts requests: serving, or retiring (until its successor is ready).
    pub fn accepts(self) -> bool {
        matches!(self, WorkerState::Serving | WorkerState::Retiring)
    }
}

/// Why the master holds a worker past its recycling limits (`--max-requests`,
/// `--max-rss` below its hard limit): it serves on until a successor is ready, or a
/// reload's new workers are. Ends when starts succeed again (see `Worker::held`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Hold {
    /// Workers started to replace others failed to start (code broken on disk, an
    /// import past `--worker-start-timeout`).
    StartsFailed = 1,
    /// A reload is under way: its new workers, still starting, are the successors.
    Reload = 2,
}

impl Hold {
    /// Its name in `/status`.
    pub fn label(self) -> &'static str {
        match self {
            Hold::StartsFailed => "starts-failed",
            Hold::Reload => "reload",
        }
    }
}

/// A request a Python thread is running.
#[derive(Debug, Clone, PartialEq)]
pub struct Current {
    pub method: String,
    /// REQUEST_URI (or PATH_INFO), cut to the scoreboard's 120 bytes with the method.
    pub path: String,
    pub protocol: Protocol,
    pub age: Duration,
}

/// One worker process.
#[derive(Debug, Clone, PartialEq)]
pub struct Worker {
    /// Its scoreboard slot: a small number a replacement reuses, so that per-worker
    /// series stay few however often workers are recycled (a pid label would not).
    pub slot: usize,
    pub pid: i32,
    pub generation: u64,
    pub state: WorkerState,
    /// Unix time, seconds.
    pub started_unix: f64,
    /// Why it was started (the first workers: boot; a replacement: why the worker it
    /// replaces left).
    pub start_cause: Cause,
    /// Why it retires or drains (when it does).
    pub leaving: Option<Cause>,
    /// Why the master holds it past its recycling limits, if it does: until starts
    /// succeed again (and no reload is under way), or, past its limit, until its
    /// successor is ready; never once it is on its way out.
    pub held: Option<Hold>,
    /// It reached `--max-requests` and waits for its successor, accepting nothing
    /// (`retiring` alone is also a worker that asked ahead and still serves).
    pub paused: bool,
    pub requests: u64,
    pub rss_bytes: Option<u64>,
    /// One entry per Python thread: its current request, or `None` when idle. An ASGI
    /// worker: its oldest tasks in flight, on the scoreboard's lines (see `tasks`).
    pub threads: Vec<Option<Current>>,
    /// An ASGI worker's tasks.
    pub tasks: Option<Tasks>,
    /// How long ago its heartbeat was (its I/O runtime beats every 250 ms once it
    /// serves); `None`: none yet (importing the app).
    pub last_seen: Option<Duration>,
}

/// A worker that should serve and whose heartbeat is older than this is shown
/// `unresponsive` ([`Worker::unresponsive`]).
pub const UNRESPONSIVE_AFTER: Duration = Duration::from_secs(10);

/// An ASGI worker's load: every task in flight, of which `threads` shows the oldest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tasks {
    pub in_flight: usize,
    pub max_concurrency: usize,
}

impl Worker {
    /// It accepts requests (serving, retiring) but its heartbeat is older than
    /// [`UNRESPONSIVE_AFTER`]: the process is stopped (SIGSTOP, a debugger), frozen
    /// (swapping, stuck in the kernel) or its I/O thread is blocked. Its requests and
    /// its share of the listen queue wait meanwhile; the master does not act on it.
    pub fn unresponsive(&self) -> bool {
        self.state.accepts() && self.last_seen.is_some_and(|a| a > UNRESPONSIVE_AFTER)
    }

    /// Its state as `/status` says it: `unresponsive` over the one it has.
    pub fn label(&self) -> &'static str {
        if self.unresponsive() {
            "unresponsive"
        } else {
            self.state.label()
        }
    }

    /// Requests in flight: busy threads (WSGI), tasks (ASGI).
    pub fn busy(&self) -> usize {
        match self.tasks {
            Some(t) => t.in_flight,
            None => self.threads.iter().filter(|t| t.is_some()).count(),
        }
    }

    /// Requests it can run at once: threads (WSGI), `--max-concurrency` (ASGI).
    pub fn capacity(&self) -> usize {
        match self.tasks {
            Some(t) => t.max_concurrency,
            None => self.threads.len(),
        }
    }
}

/// A listener and its accept queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub addr: String,
    pub protocol: Protocol,
    /// Connections waiting to be accepted, when the kernel tells.
    pub queued: Option<u32>,
    /// The queue's limit (the listen backlog).
    pub backlog: Option<u32>,
}

/// Everything the endpoint shows, read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The master's pid, or the single process's.
    pub pid: u32,
    /// There is a master (workers are forked).
    pub master: bool,
    /// The server is stopping: no worker will serve again.
    pub stopping: bool,
    pub uptime: Duration,
    /// Unix time the master (or single process) started, seconds.
    pub started_unix: f64,
    /// A few `key = value` lines: app, workers, threads, timeouts.
    pub config: Vec<(String, String)>,
    pub totals: Totals,
    pub events: Events,
    pub workers: Vec<Worker>,
    pub listeners: Vec<Listener>,
    /// Log lines the non-blocking writer had to drop.
    pub log_lines_dropped: u64,
}

impl Snapshot {
    /// Workers that accept requests now (a retiring one too, until its successor is
    /// ready).
    pub fn serving(&self) -> impl Iterator<Item = &Worker> {
        self.workers.iter().filter(|w| w.state.accepts())
    }

    /// Whether requests will be served (`/ping`): a worker serves, or the only ones
    /// left are being replaced on purpose (recycled by --max-requests, --max-rss or
    /// --max-lifetime, a reload or SIGTTIN), the old one draining or the new one
    /// booting: connections wait in the listen queue for a moment, as when every
    /// thread is busy. Not while the server stops, nor while the first workers boot or
    /// replacements of crashed (or --timeout) ones do, nor when every worker that should
    /// serve is [`Worker::unresponsive`] (stopped or frozen: nothing would answer).
    pub fn answers(&self) -> bool {
        self.serving().any(|w| !w.unresponsive())
            || (!self.stopping
                && self.workers.iter().any(|w| match w.state {
                    WorkerState::Starting => w.start_cause.planned(),
                    // Recycling itself: its replacement is about to start.
                    WorkerState::Draining => w.leaving.is_some_and(Cause::planned),
                    WorkerState::Serving | WorkerState::Retiring => !w.unresponsive(),
                }))
    }

    /// Why [`Self::answers`] is false, for `/ping`'s body.
    pub fn not_answering(&self) -> &'static str {
        if self.stopping {
            "no worker is serving: postern is stopping\n"
        } else if self.serving().next().is_some() {
            "no worker answers: every serving worker is stopped or frozen (SIGSTOP, a debugger, a stuck start; see /status)\n"
        } else {
            "no worker is serving: the workers are starting, or being replaced after a crash or --timeout (see /status)\n"
        }
    }

    /// Requests being run by Python threads, in every worker (draining ones too).
    pub fn in_flight(&self) -> usize {
        self.workers.iter().map(Worker::busy).sum()
    }

    /// (busy, idle) Python threads of the serving workers; an ASGI worker's are its
    /// places for tasks: busy = tasks in flight, idle = `--max-concurrency` - busy.
    pub fn threads(&self) -> (usize, usize) {
        self.serving().fold((0, 0), |(b, i), w| {
            (b + w.busy(), i + w.capacity().saturating_sub(w.busy()))
        })
    }
}

/// Builds a snapshot on demand (called for each `/metrics`, `/status`, `/ping`).
pub type Source = Arc<dyn Fn() -> Snapshot + Send + Sync>;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A snapshot with two workers, one of them busy, for the renderers' tests.
    pub fn sample() -> Snapshot {
        let mut totals = Totals::default();
        totals.requests[0][2] = 7;
        totals.requests[0][4] = 2;
        totals.requests[1][5] = 1;
        totals.duration[0] = 8;
        totals.duration[9] = 2;
        totals.duration_ns = 1_500_000_000;
        totals.bytes = 4096;
        totals.app_errors = [1, 0, 0];
        totals.refused[0][4] = 3;
        let mut events = Events::default();
        events.starts[Cause::Boot.index()] = 2;
        events.starts[Cause::Crash.index()] = 1;
        events.exits[Cause::Crash.index()] = 1;
        events.saturated = 3;
        events.reloads = [2, 1];
        events.generation = 3;
        Snapshot {
            pid: 100,
            master: true,
            stopping: false,
            uptime: Duration::from_secs(3725),
            started_unix: 1_700_000_000.0,
            config: vec![
                ("app".into(), "testapp.py".into()),
                ("workers".into(), "2".into()),
            ],
            totals,
            events,
            workers: vec![
                Worker {
                    slot: 0,
                    pid: 101,
                    generation: 0,
                    state: WorkerState::Serving,
                    started_unix: 1_700_000_001.0,
                    start_cause: Cause::Boot,
                    leaving: None,
                    held: None,
                    paused: false,
                    requests: 6,
                    rss_bytes: Some(20 << 20),
                    threads: vec![
                        Some(Current {
                            method: "GET".into(),
                            path: "/sleep?s=3".into(),
                            protocol: Protocol::Uwsgi,
                            age: Duration::from_millis(2500),
                        }),
                        None,
                    ],
                    tasks: None,
                    last_seen: Some(Duration::from_millis(100)),
                },
                Worker {
                    slot: 1,
                    pid: 102,
                    generation: 0,
                    state: WorkerState::Starting,
                    started_unix: 1_700_000_100.0,
                    start_cause: Cause::Crash,
                    leaving: None,
                    held: None,
                    paused: false,
                    requests: 0,
                    rss_bytes: None,
                    threads: vec![None, None],
                    tasks: None,
                    last_seen: Some(Duration::from_millis(100)),
                },
            ],
            listeners: vec![Listener {
                addr: "unix:/run/postern.sock".into(),
                protocol: Protocol::Uwsgi,
                queued: Some(0),
                backlog: Some(128),
            }],
            log_lines_dropped: 0,
        }
    }

    #[test]
    fn classes_and_slots() {
        assert_eq!(STATUS_CLASSES[status_class(200)], "2xx");
        assert_eq!(STATUS_CLASSES[status_class(599)], "5xx");
        assert_eq!(STATUS_CLASSES[status_class(0)], "none");
        // regression: 600 to 999 were counted as "none", the class of requests that
        // ended before a status was chosen (what a disconnect alert watches).
        assert_eq!(STATUS_CLASSES[status_class(600)], "other");
        assert_eq!(STATUS_CLASSES[status_class(999)], "other");
        assert_eq!(STATUS_CLASSES[status_class(1000)], "none");
        assert_eq!(duration_slot(0), 0);
        assert_eq!(duration_slot(1_000_000), 0); // le=0.001 is inclusive
        assert_eq!(duration_slot(1_000_001), 1);
        assert_eq!(duration_slot(u64::MAX), DURATION_BUCKETS.len());
        for (s, ns) in DURATION_BUCKETS.iter().zip(DURATION_BUCKETS_NS) {
            assert_eq!((s * 1e9).round() as u64, ns);
        }
    }

    // regression: a Unix stats socket the user may not open was reported as "is postern
    // running with --stats ...?", sending the operator to look for a missing server.
    #[test]
    fn connect_errors_say_what_to_check() {
        let e = |kind| {
            StatsError::Connect {
                addr: "unix:/run/s.sock".into(),
                source: std::io::Error::from(kind),
            }
            .to_string()
        };
        assert!(e(std::io::ErrorKind::NotFound)
            .ends_with("(is postern running with --stats unix:/run/s.sock?)"));
        let denied = e(std::io::ErrorKind::PermissionDenied);
        assert!(
            denied.contains("run postern status as that user"),
            "{denied}"
        );
        assert!(!denied.contains("is postern running"), "{denied}");
    }

    #[test]
    fn causes_round_trip() {
        for c in Cause::ALL {
            assert_eq!(Cause::from_index(c.index() as u64), Some(c));
        }
        assert_eq!(Cause::from_index(99), None);
    }

    #[test]
    fn derived_counts() {
        let s = sample();
        assert_eq!(s.in_flight(), 1);
        assert_eq!(s.threads(), (1, 1)); // the starting worker does not count
        assert_eq!(s.totals.requests(), 10);
    }
}
