//! The worker's side of the supervisor: what a forked worker tells its master (ready,
//! recycling), the monitor that records its requests on the scoreboard, and the thread
//! that gets the worker out once its master is gone.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::process::Pid;

use super::scoreboard::{Hold, Scoreboard};
use super::WorkerContext;
use crate::stats::Cause;

/// What a worker writes on its status pipe (one byte each).
pub(super) const READY: u8 = b'R';
/// The worker recycles itself (`--max-requests`, `--max-rss`), or asks for its
/// successor ahead of that: the master reads which on the scoreboard and starts the
/// replacement.
pub(super) const RECYCLING: u8 = b'S';
/// What the master writes to a worker (the other way on the same socket): look at
/// the scoreboard slot now, the master has just marked it ([`watch_mark`]).
pub(super) const LOOK: u8 = b'L';

/// How often a serving worker beats (`/status` calls a worker unresponsive after 10 s
/// without a beat) and looks at its scoreboard slot for the master's mark, which the
/// master also wakes it for ([`LOOK`]): one wake-up a second of the I/O thread, on a
/// timerfd ([`crate::server::timer`]).
/// regression: every 250 ms on a tokio sleep, 8 wake-ups a second of an idle worker
/// (tokio's timer wheel wakes the thread at the start of a timer's slot when it is
/// over 64 ms away, then at its deadline), the most of an idle worker's; the mark was
/// seen only at those looks.
const MARK_EVERY: Duration = Duration::from_secs(1);
/// How long the SIGTERM that follows the master's mark may take to arrive, while
/// postern's handler is still the one in place (it could be blocked in every thread).
const TERM_WAIT: Duration = Duration::from_millis(200);
/// The least a WSGI worker condemned for `--timeout` gives its stop: past the master's
/// kill at the end of the stack dump ([`super::master::DUMP_GRACE`]), so that the kill,
/// and the master's lines naming the requests it cuts off, come first. (A WSGI worker
/// that ends itself first leaves its threads' lines for the master to name at the reap.)
const CONDEMNED_GRACE: Duration =
    Duration::from_millis(400).saturating_add(super::master::DUMP_GRACE);
/// [`CONDEMNED_GRACE`] of an ASGI worker, whose own `--graceful-timeout` would cancel
/// its tasks (named as cut at `--graceful-timeout`, the task past `--timeout` among
/// them, so the master would spare the worker) before the master's stop now has its
/// loop cut them as `--timeout`'s: seconds past the kill, for a master held up by a
/// loaded machine. A worker spared at the dump's end (its request ended) drains for
/// this long at least, and the master waits as much before it kills it ([`condemned_grace`]).
/// regression: with `--graceful-timeout` under the dump's 500 ms, an ASGI worker
/// condemned for one request cancelled its other tasks itself, and the master's log
/// never named them; then (at 900 ms) it still did when the master's kill came 400 ms
/// late, and the master took the cancelled request for one that had ended.
const CONDEMNED_GRACE_ASGI: Duration =
    Duration::from_millis(2500).saturating_add(super::master::DUMP_GRACE);

/// The least a worker condemned for `--timeout` (`asgi`: an ASGI one) gives its stop,
/// whatever its `--graceful-timeout`.
pub(super) fn condemned_grace(asgi: bool) -> Duration {
    if asgi {
        CONDEMNED_GRACE_ASGI
    } else {
        CONDEMNED_GRACE
    }
}
/// How often a worker looks whether its master is still there when the kernel cannot
/// say so (no pidfd: Linux before 5.3, a seccomp filter).
const PARENT_EVERY: Duration = Duration::from_millis(250);

/// Tells the master, before this worker accepts anything, that its import is over and
/// whether it serves ASGI (`asgi_capacity`: its `--max-concurrency`), whose stop runs a
/// lifespan shutdown the master then waits for. False when the master gave up on it
/// while it imported (a stop, with other workers serving the listen queues): it must
/// not serve, and leaves at once.
pub fn imported(ctx: &WorkerContext, asgi_capacity: Option<usize>) -> bool {
    if let Some(n) = asgi_capacity {
        ctx.board.set_capacity(ctx.slot, n);
    }
    ctx.board.finish_import(ctx.slot)
}

/// Tells the master this worker serves (one byte on its status pipe). A SIGTERM that
/// came while it booted was counted ([`crate::stop`]) and is acted on by now; one the
/// master marked on the scoreboard counts as well, in case the signal itself went to
/// a handler the app set. Called in the server's runtime: from then on, a task looks
/// at the slot once a second for the same reason (see [`watch_mark`]).
pub fn announce_ready(pipe: OwnedFd, board: &Arc<Scoreboard>, slot: usize) {
    // The mark first, then whose it is: read the other way round, a recycle marked by
    // another thread between the two reads was taken for the master's mark.
    // regression (CI, 1 in ~24 recycles at --max-requests 1): `signal="SIGTERM"`.
    if board.leaving(slot) {
        if board.self_retired(slot).is_some() {
            // It recycled itself while it booted (--max-requests reached by requests
            // it took before this): its own stop, which may be on its way from
            // another thread (the slot is marked before the stop is set; the cause is
            // stored before the mark).
            // regression: taken for the master's mark, it said `signal=SIGTERM`.
            crate::stop::recycle();
        } else {
            crate::stop::asked();
        }
    }
    // Beats before it says it is ready: `/status` never shows a serving worker
    // without `last_seen_seconds`.
    board.heartbeat(slot);
    let _ = rustix::io::write(&pipe, &[READY]);
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(watch_mark(Arc::clone(board), slot, pipe));
    }
}

/// The master marks a worker on the scoreboard just before it sends its SIGTERM (a
/// reload, SIGTTOU, --max-lifetime, the stop). A worker whose SIGTERM never comes
/// (the app or a C extension took or ignored it once it served) stops as for that
/// SIGTERM once it sees the mark, finishing its requests.
/// regression: such a worker never left at a reload or a scale-down (the master
/// killed it past --graceful-timeout, cutting its requests off), nor, over TCP, at the
/// stop (nothing shuts a TCP listener under it: the stop exited 1).
/// It looks when the master writes [`LOOK`] on `master` (its status socket: the master
/// marks, writes, then signals), and every [`MARK_EVERY`].
async fn watch_mark(board: Arc<Scoreboard>, slot: usize, master: OwnedFd) {
    // SAFETY: the AsyncFd owns the descriptor: it stays open and the same for as long
    // as the AsyncFd lives.
    let mut told = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(master, tokio::io::Interest::READABLE)
    }
    .ok();
    let mut timer = crate::server::timer::Timer::new();
    loop {
        // Its heartbeat too (`/status`'s `last_seen_seconds`, `unresponsive`).
        board.heartbeat(slot);
        tokio::select! {
            () = timer.sleep(MARK_EVERY) => {}
            open = looked_for(told.as_ref()) => {
                if !open {
                    told = None;
                }
            }
        }
        if crate::stop::any() {
            return;
        }
        // A worker condemned for --timeout is marked too; its SIGTERM comes with the
        // dump's SIGUSR2 (then SIGKILL at the dump's end, unless spared), and it is
        // the master's to watch: not a lost stop.
        let cause = board.leaving_for(slot);
        if cause.is_some_and(|c| c != Cause::Timeout) {
            // The mark comes just before the signal: give it a moment, unless the
            // signal cannot be counted (another disposition is in place).
            if crate::stop::handler_in_place() {
                tokio::time::sleep(TERM_WAIT).await;
            }
            if crate::stop::any() {
                return;
            }
            tracing::warn!(pid = std::process::id(), "the master told this worker to leave, but its SIGTERM never came (did the app or a C extension take or ignore SIGTERM?): it stops now");
            crate::stop::asked();
            return;
        }
    }
}

/// Until the master writes on its status socket (true), or closes it (false: never
/// again). Pending for ever without the socket.
async fn looked_for(master: Option<&tokio::io::unix::AsyncFd<OwnedFd>>) -> bool {
    let Some(fd) = master else {
        return std::future::pending().await;
    };
    loop {
        let Ok(mut ready) = fd.readable().await else {
            return false;
        };
        let mut buf = [0u8; 16];
        match rustix::net::recv(fd.get_ref(), &mut buf, rustix::net::RecvFlags::DONTWAIT) {
            Ok((0, _)) => return false,
            Ok(_) => return true,
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => ready.clear_ready(),
            Err(_) => return false,
        }
    }
}

/// What a worker does when its master dies without stopping it (SIGKILL, the OOM
/// killer): see [`watch_master`].
pub(super) struct Orphaned {
    pub master: Pid,
    pub board: Arc<Scoreboard>,
    pub slot: usize,
    /// `--graceful-timeout` plus the master's own margin: what the master would have
    /// allowed a WSGI worker from its SIGTERM.
    pub allowance: Duration,
    /// On top for an ASGI worker (its lifespan shutdown after a cut-off).
    pub past_graceful: Duration,
}

/// Starts, in a worker just forked (still its only thread), the thread that watches
/// its master. Once the master is gone, the worker stops as for a SIGTERM (as the
/// signal that death sends, `PR_SET_PDEATHSIG` with [`crate::stop::MASTER_DEATH`],
/// says too; this thread tells even if that signal was taken by the app), and it is gone `allowance` after its stop began (the master's death
/// at the latest), whatever it is doing by then: a request that does not end (one
/// holding the GIL too), an atexit handler that hangs, an import that never ends, a
/// blocked ASGI loop. Those are the deadlines the master enforces while it lives
/// (`Master::overdue`); nothing else would once it is gone.
/// regression: a worker hung in its atexit handler, or in its import, outlived its
/// SIGKILLed master for as long as it hung.
///
/// `PR_SET_PDEATHSIG` alone is not enough for that: it only sends a signal, which the
/// app can take, and which does nothing to a worker already past its drain or still
/// importing. (It fires when the thread that forked the worker dies, not its process:
/// that is the master's main thread, which forks every worker and lives as long as the
/// master. This thread waits on the master's process, not on a thread of it.)
pub(super) fn watch_master(o: Orphaned) {
    let spawned = std::thread::Builder::new()
        .name("postern-watch".into())
        .stack_size(256 * 1024)
        .spawn(move || orphaned(o));
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the thread that watches the master; this worker may outlive it");
    }
}

/// The body of [`watch_master`]'s thread.
fn orphaned(o: Orphaned) {
    // Signals go to the threads that serve (this one would only be woken).
    let _ = super::signals::SigSet::all().block();
    master_death(o.master);
    crate::stop::master_gone();
    let now = Instant::now();
    let began = crate::stop::began().map_or(now, |b| b.min(now));
    // An ASGI worker may start its loop while this waits (an import that ends).
    let allowance = || {
        o.allowance
            + if o.board.serves_asgi(o.slot) {
                o.past_graceful
            } else {
                Duration::ZERO
            }
    };
    loop {
        let left = (began + allowance()).saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left);
    }
    tracing::warn!(
        pid = std::process::id(),
        running = o.board.running(o.slot),
        "its master is gone, and this worker still runs {:?} after it began to stop (past --graceful-timeout: a request, an atexit handler or an import that does not end?): killing it",
        allowance()
    );
    crate::logging::finish();
    let me = rustix::process::getpid();
    let _ = rustix::process::kill_process(me, rustix::process::Signal::KILL);
}

/// Returns once the process `master` (this worker's parent) has exited: woken by the
/// kernel through a pidfd, else by looking at the parent every [`PARENT_EVERY`].
fn master_death(master: Pid) {
    if let Ok(fd) = rustix::process::pidfd_open(master, rustix::process::PidfdFlags::empty()) {
        // Opened while it was still the parent: the descriptor is the master's.
        if rustix::process::getppid() != Some(master) {
            return;
        }
        loop {
            let mut fds = [PollFd::new(&fd, PollFlags::IN)];
            match rustix::event::poll(&mut fds, None) {
                Ok(n) if n > 0 => return,
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(_) => break,
            }
        }
    }
    while rustix::process::getppid() == Some(master) {
        std::thread::sleep(PARENT_EVERY);
    }
}

/// A worker's view of its scoreboard slot: records requests, and recycles the worker
/// after `--max-requests` (with jitter) or past `--max-rss`.
pub struct WorkerMonitor {
    board: Arc<Scoreboard>,
    slot: usize,
    /// The Python threads of this worker: its generation's, as the master wrote them in
    /// its scoreboard slot before the fork (read once, not per request).
    python_threads: usize,
    max_requests: Option<u64>,
    max_rss_kib: Option<u64>,
    retiring: AtomicBool,
    /// [`crate::wsgi::Monitor::stopping`] was called: the worker accepts no more.
    stopped: AtomicBool,
    /// The count of requests waiting for the app is published (the stop began; it is
    /// published before `stopped` is set): a request begun since is taken off it.
    publishing: AtomicBool,
    /// Count requests for the metrics (`--stats`; read once from the scoreboard).
    metrics: bool,
    /// A single process (no master).
    standalone: bool,
    /// A copy of the status pipe, to wake the master when this worker recycles itself
    /// or asks for its successor.
    master: Option<OwnedFd>,
    /// When its monitor was made (its app imported): the clock of [`Window`].
    since: Instant,
    /// When the master forked it.
    forked: Instant,
    /// How long (nanoseconds) before its `--max-requests` it asks for its successor, at
    /// the rate it served so far: [`SUCCESSOR_LEAD`] times its own start, fork to
    /// serving ([`WorkerMonitor::ready`]), an ASGI lifespan startup included.
    lead_ns: AtomicU64,
    /// It asked the master for its successor ([`WorkerMonitor::want_successor`]).
    successor_asked: AtomicBool,
    /// `--timeout` (its generation's): what the master condemns it for.
    timeout: Option<Duration>,
    /// It reached `--max-requests` and waits for its successor, accepting nothing
    /// ([`WorkerMonitor::at_limit`]).
    paused: AtomicBool,
    /// What puts the server's listeners back when a paused worker is held past its
    /// limit ([`crate::wsgi::Monitor::on_resume`]).
    resume: Arc<OnceLock<Resume>>,
    /// How long a paused worker waits for its successor at most: past it, it leaves.
    pause_bound: Duration,
    /// The rate it serves at, over its last one or two leads ([`Window`]).
    window: Window,
    /// Python threads running a request (their `begin` to their `end`).
    busy: AtomicUsize,
    /// Notified when `busy` reaches the thread count while the busy watch asks for it
    /// ([`crate::wsgi::Monitor::all_busy_wake`]).
    all_busy: Arc<crate::wsgi::BusyWake>,
    /// An ASGI worker's event loop is at `--max-concurrency`
    /// ([`crate::wsgi::Monitor::at_cap`]).
    at_cap: AtomicBool,
}

/// Requests served over the last one or two leads, for the rate `near_limit` uses: the
/// current window (from `start`, nanoseconds after `since`) and the one before it. A
/// rate over the worker's whole life would be diluted by its idle hours: one idle all
/// night then busy would ask for its successor only at its last request.
#[derive(Default)]
struct Window {
    start: AtomicU64,
    current: AtomicU64,
    previous: AtomicU64,
    /// The current window has one before it.
    rolled: AtomicBool,
    /// A window ended since the worker said ready: the current one is not its first.
    aged: AtomicBool,
}

/// A worker asks for its successor when, at the rate it served so far, it would
/// reach `--max-requests` within this many times the time its own start took (fork
/// to import done): the successor, whose start should take about as long, is then
/// ready before the worker stops at its limit, and nothing waits for an import.
const SUCCESSOR_LEAD: u32 = 2;
/// ... and at least this far ahead (an app that imports in milliseconds). Not more:
/// once its successor serves the worker leaves, so it serves about its limit less
/// what it serves in one lead (a second too long cost ~40% of `--max-requests 100`
/// at 600 requests a second, for an import of 20 ms).
const MIN_LEAD: Duration = Duration::from_millis(250);
/// The least span a worker's first window counts its rate over is its lead divided by
/// this: what waited for it when it became ready comes in one burst, no rate to
/// project.
const YOUNG_FLOOR_DIVISOR: u64 = 5;
/// A worker over `--max-rss` serves on until its successor serves, unless its RSS
/// passes `--max-rss` by this fraction (a half) meanwhile: then it stops at once.
const RSS_HARD_DIVISOR: u64 = 2;

/// The lead of a worker whose start (fork to serving) took `start`, in nanoseconds.
fn lead_ns(start: Duration) -> u64 {
    u64::try_from((start * SUCCESSOR_LEAD).max(MIN_LEAD).as_nanos()).unwrap_or(u64::MAX)
}

/// The `--max-requests` jitter of this worker: up to 10% of `n`, from a hash of its
/// pid and the clock, so that workers forked together (consecutive pids) get limits
/// spread over the whole range.
/// regression: it was `pid % (n / 10)`: consecutive pids gave consecutive limits
/// (510 and 511 of 500), and workers started together recycled together.
fn jitter(n: u64) -> u64 {
    super::tenth_of(
        n,
        u64::from(std::process::id()) << 32 ^ super::scoreboard::now_ns(),
    )
}

impl WorkerMonitor {
    /// The Python threads of this worker (its generation's, as its scoreboard slot
    /// counts them). regression: each request's `begin` loaded them from the slot.
    fn python_threads(&self) -> usize {
        self.python_threads
    }

    /// `start_timeout`: `--worker-start-timeout`, which bounds how long a worker at
    /// `--max-requests` waits for its successor ([`WorkerMonitor::at_limit`]).
    pub fn new(
        ctx: &WorkerContext,
        max_requests: Option<u64>,
        max_rss_mib: Option<u64>,
        start_timeout: Duration,
        timeout: Option<Duration>,
    ) -> Self {
        let max_requests = max_requests.map(|n| n + jitter(n));
        let recycles = max_requests.is_some() || max_rss_mib.is_some();
        let monitor = WorkerMonitor {
            board: Arc::clone(&ctx.board),
            slot: ctx.slot,
            python_threads: ctx.board.threads_of(ctx.slot).max(1),
            max_requests,
            max_rss_kib: max_rss_mib.map(|m| m * 1024),
            retiring: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            publishing: AtomicBool::new(false),
            metrics: ctx.board.metrics(),
            standalone: false,
            master: recycles.then(|| ctx.ready.try_clone().ok()).flatten(),
            since: Instant::now(),
            forked: ctx.forked,
            // Until it serves: its start so far ([`Self::ready`] measures the whole).
            lead_ns: AtomicU64::new(lead_ns(ctx.forked.elapsed())),
            successor_asked: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            resume: Arc::default(),
            pause_bound: start_timeout * 2 + PAUSE_MARGIN,
            window: Window::default(),
            busy: AtomicUsize::new(0),
            all_busy: Arc::default(),
            at_cap: AtomicBool::new(false),
            timeout,
        };
        monitor.check_rss_at_start();
        monitor
    }

    /// Made once the app is imported: a `--max-rss` below what the worker holds already
    /// would recycle every worker after each request, so say so (once per generation).
    /// An ASGI app's lifespan startup and a lazy first request load more later: see
    /// [`Self::warn_rss_from_start`]'s other caller, [`Self::served_one`].
    fn check_rss_at_start(&self) {
        let Some(max) = self.max_rss_kib else { return };
        let Some(rss) = rss_kib() else { return };
        if rss > max {
            self.warn_rss_from_start(rss, max, "once the app is imported");
        }
    }

    /// The worker is over `--max-rss` `when`, before it has done any work of its own:
    /// every worker will recycle after each request. Logged once per generation.
    fn warn_rss_from_start(&self, rss_kib: u64, max_kib: u64, when: &str) {
        if self.board.first_to_warn_rss(self.slot) {
            // The RSS in MiB rounded up, so that it never reads as equal to the limit.
            tracing::warn!(
                pid = std::process::id(),
                rss_mib = rss_kib.div_ceil(1024),
                max_rss_mib = max_kib / 1024,
                "this worker's RSS is over --max-rss {when}: every worker will recycle after each request; set --max-rss well above a worker's RSS once it serves"
            );
        }
    }

    /// The monitor of a single process (no master, no recycling) with `--stats`.
    pub fn standalone(board: Arc<Scoreboard>) -> Self {
        WorkerMonitor {
            metrics: board.metrics(),
            python_threads: board.threads_of(0).max(1),
            board,
            slot: 0,
            max_requests: None,
            max_rss_kib: None,
            retiring: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            publishing: AtomicBool::new(false),
            standalone: true,
            master: None,
            since: Instant::now(),
            forked: Instant::now(),
            lead_ns: AtomicU64::new(lead_ns(Duration::ZERO)),
            successor_asked: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            resume: Arc::default(),
            pause_bound: Duration::ZERO,
            window: Window::default(),
            busy: AtomicUsize::new(0),
            all_busy: Arc::default(),
            at_cap: AtomicBool::new(false),
            timeout: None,
        }
    }

    /// A single process has imported its app and serves (`/ping` says pong).
    pub fn serving(&self) {
        self.board.mark_serving(self.slot);
    }

    /// A worker serves from now on (an ASGI app's lifespan startup done): its start,
    /// hence its lead, is fork to now, and its rate window opens now.
    /// regression: the lead was measured when the monitor was made, before the lifespan
    /// startup (a 2 s startup gave a lead of 250 ms, and every recycle waited for a
    /// successor's whole start at the limit).
    pub fn ready(&self) {
        self.lead_ns
            .store(lead_ns(self.forked.elapsed()), Ordering::Relaxed);
        let w = &self.window;
        w.current.store(0, Ordering::Relaxed);
        w.previous.store(0, Ordering::Relaxed);
        w.rolled.store(false, Ordering::Relaxed);
        w.aged.store(false, Ordering::Relaxed);
        let now = u64::try_from(self.since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        w.start.store(now, Ordering::Release);
    }

    fn lead(&self) -> Duration {
        Duration::from_nanos(self.lead_ns.load(Ordering::Relaxed))
    }

    /// Asks the master, once, to start this worker's successor now (`why` says what
    /// limit is near or passed): the worker serves on, and leaves (SIGTERM, the
    /// master's mark) once the successor serves, or once more workers than `--workers`
    /// serve without it (SIGTTOU took its successor), or a reload's new workers are
    /// ready. A successor that fails to start is started again meanwhile. Without a
    /// master to ask, it recycles now.
    fn want_successor(&self, cause: Cause, why: &str) {
        if self.master.is_none() {
            return self.retire(cause, why);
        }
        if self.ask_successor(cause) {
            tracing::info!(
                pid = std::process::id(),
                "{why}: the master starts this worker's successor; this worker serves on until the successor is ready"
            );
        }
    }

    /// Asks the master for this worker's successor, unless it did already or is
    /// leaving: true when it asked now.
    fn ask_successor(&self, cause: Cause) -> bool {
        let Some(pipe) = &self.master else {
            return false;
        };
        if self.successor_asked.swap(true, Ordering::SeqCst)
            || !self.board.want_successor(self.slot, cause)
        {
            return false;
        }
        let _ = rustix::io::write(pipe, &[RECYCLING]);
        true
    }

    /// `--max-requests` is reached (`why`: its last request taken, or served). A worker
    /// under a master takes no more requests and leaves once its successor is ready
    /// (asked now if it was not yet): the master then tells it to, as for a worker
    /// that asked ahead of its limit. Meanwhile it finishes the requests in flight
    /// and waits; should the successor fail to start, the master holds it past its
    /// limit ([`Scoreboard::hold`]) and it accepts again ([`watch_pause`]).
    /// regression (probe 329, HIGH): it left at its limit while its successor still
    /// imported. With the code on disk broken (a deploy half done, no reload) and
    /// every worker near its limit under load, each left, each successor failed, and
    /// no worker was left serving for the master to hold: nothing answered, and ten
    /// failed starts later the master stopped. A single process (no master) recycles
    /// at once.
    fn at_limit(&self, why: &str) {
        let Some(pipe) = &self.master else {
            return self.retire(Cause::MaxRequests, why);
        };
        if self.retiring.load(Ordering::SeqCst) || self.board.leaving(self.slot) {
            return;
        }
        self.ask_successor(Cause::MaxRequests);
        if self.paused.swap(true, Ordering::SeqCst) {
            return;
        }
        // For the master: the first successor ready relieves it, before any worker
        // that asked ahead and still serves (`master::relieved`).
        self.board.set_paused(self.slot, true);
        tracing::info!(
            pid = std::process::id(),
            "recycling this worker: {why}; it takes no more, finishes the ones in flight and leaves once its successor is ready"
        );
        let pause = Pause {
            board: Arc::clone(&self.board),
            slot: self.slot,
            master: pipe.try_clone().ok(),
            resume: Arc::clone(&self.resume),
            bound: self.pause_bound,
        };
        let started = std::thread::Builder::new()
            .name("postern-pause".into())
            .spawn(move || watch_pause(pause));
        if let Err(e) = started {
            tracing::warn!(error = %e, "cannot start the thread that watches this worker's pause at --max-requests: it recycles now");
            self.retire(Cause::MaxRequests, why);
        }
    }

    /// `--max-requests`, after each request: at the rate of its last one or two leads
    /// (counted over half a lead divided by the requests counted at least, so that a
    /// first quick request is no rate, while a young worker under a heavy load is
    /// measured at its rate), would this worker reach `max` within its lead?
    fn near_limit(&self, served: u64, max: u64) -> bool {
        let lead = self.lead_ns.load(Ordering::Relaxed);
        let now = u64::try_from(self.since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let w = &self.window;
        let start = w.start.load(Ordering::Relaxed);
        if now.saturating_sub(start) >= lead
            && w.start
                .compare_exchange(start, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            // Its requests came within a lead of its start (none came later, or it
            // would have rolled then). An idle one is no window: the rate counts from
            // the first request after it.
            let previous = w.current.swap(0, Ordering::AcqRel);
            w.previous.store(previous, Ordering::Relaxed);
            w.rolled.store(previous > 0, Ordering::Relaxed);
            w.aged.store(true, Ordering::Relaxed);
        }
        let current = w.current.fetch_add(1, Ordering::AcqRel) + 1;
        let (counted, span) = if w.rolled.load(Ordering::Relaxed) {
            (
                current + w.previous.load(Ordering::Relaxed),
                now.saturating_sub(w.start.load(Ordering::Relaxed)) + lead,
            )
        } else {
            (current, now.saturating_sub(w.start.load(Ordering::Relaxed)))
        };
        // In the worker's first window since ready, the floor shrinks as requests
        // come, down to a fifth of a lead (below): a few quick ones project to twice
        // their count squared at most (3 requests in a millisecond: 18), a burst to
        // five times its count at most. In a later window (one that opened at the
        // first request after an idle spell) it is half a lead: a burst projects to
        // twice its count.
        // regression: half a lead whatever the count: a worker younger than that was
        // counted as if it had served for half a lead, its rate underestimated by
        // (lead / 2) / age. At ~2,750 requests a second with a 1.05 s lead it asked
        // for its successor at 110 of 329, 40 ms before its limit: the successor was
        // far from ready, and with the app broken on disk the worker had left before
        // the failed start was known (nothing served, with --workers 1).
        // regression: review4 finding 2: the shrinking floor applied after an idle
        // spell too: a burst of 14 requests to an idle worker (--threads 8,
        // --max-requests 200) projected to 2 x 14 x 14 and asked for its successor at
        // request 10, so every burst cost an import.
        // regression (probe 379): a fresh worker takes what waited for it at once
        // (the listen queue, kept FastCGI connections handed over): 9 requests in its
        // first 10 ms projected to 162 and asked for its successor at 9 of 158, a
        // recycle every ~20 requests, each new worker again. The shrinking floor stops
        // at a fifth of a lead: a burst projects to five times its count at most, so
        // a fresh worker asks at a sixth of its limit at the soonest, whatever its
        // start took (review 384: a fixed 50 ms still gave 2n^2 past a 0.8 s lead).
        let floor = if w.aged.load(Ordering::Relaxed) {
            lead / 2
        } else {
            (lead / 2 / counted.max(1)).max(lead / YOUNG_FLOOR_DIVISOR)
        };
        let span = span.max(floor).max(1);
        let ahead = counted as f64 * lead as f64 / span as f64;
        ahead >= max.saturating_sub(served) as f64
    }

    fn retire(&self, cause: Cause, why: &str) {
        if self.retiring.swap(true, Ordering::SeqCst) {
            return;
        }
        // Already leaving (the master's SIGTERM for a stop or a reload is on its way):
        // nothing more to do, and the log line would misname the cause.
        if !self.board.retire_self(self.slot, cause) {
            return;
        }
        tracing::info!(pid = std::process::id(), "recycling this worker: {why}");
        // The master sleeps until something happens: this is it.
        if let Some(pipe) = &self.master {
            let _ = rustix::io::write(pipe, &[RECYCLING]);
        }
        // The graceful stop path: finish in-flight requests, then exit. Not a SIGTERM
        // to itself: one sent as the master's arrived read as a second signal, "stop
        // now" (its requests were cut off, exit 1).
        crate::stop::recycle();
    }
}

/// How often a worker paused at `--max-requests` looks whether the master holds it
/// (its successor failed to start) or told it to leave (the successor is ready).
const PAUSE_LOOK: Duration = Duration::from_millis(20);
/// Added to twice `--worker-start-timeout` for the longest pause: the master kills a
/// successor still starting at `--worker-start-timeout` (a failed start: the paused
/// worker is held), so the bound is only reached if the master never decides.
const PAUSE_MARGIN: Duration = Duration::from_secs(5);

/// What the server runs when a paused worker accepts again
/// ([`crate::wsgi::Monitor::on_resume`]).
type Resume = Box<dyn Fn() + Send + Sync>;

/// What [`watch_pause`] needs of a paused worker's monitor.
struct Pause {
    board: Arc<Scoreboard>,
    slot: usize,
    master: Option<OwnedFd>,
    resume: Arc<OnceLock<Resume>>,
    bound: Duration,
}

/// A worker paused at `--max-requests` ([`WorkerMonitor::at_limit`]) until the master
/// holds it past its limit (its successor failed to start): it accepts again then,
/// and serves on until a successor is ready. Ends once the worker stops (the master
/// told it to leave: the successor is ready), and past `bound` it leaves on its own
/// (a master that never decides).
fn watch_pause(p: Pause) {
    let since = Instant::now();
    loop {
        std::thread::sleep(PAUSE_LOOK);
        if crate::stop::any() || p.board.leaving(p.slot) {
            return;
        }
        if let Some(held) = p.board.held(p.slot) {
            let why = match held {
                Hold::StartsFailed => "workers started to replace others failed to start",
                Hold::Reload => "a reload's new workers are starting",
            };
            // A reload's hold is a normal event (INFO, as the README says); failed
            // starts are not.
            // regression (probe 340): a SIGHUP under load logged one WARN per waiting worker.
            let said = "this worker, which waited for its successor at its --max-requests limit, accepts again and serves on past it until a successor is ready";
            match held {
                Hold::Reload => {
                    tracing::info!(
                        pid = std::process::id(),
                        held = held.label(),
                        "{why}: {said}"
                    )
                }
                Hold::StartsFailed => {
                    tracing::warn!(
                        pid = std::process::id(),
                        held = held.label(),
                        "{why}: {said}"
                    )
                }
            }
            p.board.set_paused(p.slot, false);
            if let Some(resume) = p.resume.get() {
                resume();
            }
            return;
        }
        if since.elapsed() >= p.bound {
            if p.board.retire_self(p.slot, Cause::MaxRequests) {
                tracing::warn!(
                    pid = std::process::id(),
                    waited_ms = since.elapsed().as_millis() as u64,
                    "no successor was ready, nor failed, within twice --worker-start-timeout of this worker's --max-requests limit: it leaves now"
                );
                if let Some(pipe) = &p.master {
                    let _ = rustix::io::write(pipe, &[RECYCLING]);
                }
                crate::stop::recycle();
            }
            return;
        }
    }
}

/// Resident set size of this process, in KiB.
fn rss_kib() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * super::scoreboard::page_size() / 1024)
}

impl WorkerMonitor {
    /// A request (a thread's or an ASGI task's) begins: during the stop the count of
    /// waiting requests is published every 50 ms, and one taken from the queue since
    /// then runs now, so it must not be counted twice when a kill cuts both off.
    // regression: a second signal's "N running and M accepted, not started yet"
    // counted each request that had left the queue within the last 50 ms in both;
    // then still one begun before `stopped` was set (the publisher starts first), and
    // every ASGI task (review3 LOWs 5 and 6).
    fn taken_from_waiting(&self) {
        if self.publishing.load(Ordering::Relaxed) {
            self.board.waiting_taken(self.slot);
        }
    }
}

impl crate::wsgi::Monitor for WorkerMonitor {
    fn server_stopping(&self) -> bool {
        self.board.is_stopping()
    }

    fn stopping(&self) {
        // Already leaving: a recycling limit reached while draining has nothing to do.
        self.retiring.store(true, Ordering::SeqCst);
        self.stopped.store(true, Ordering::SeqCst);
        self.board.stop_serving(self.slot);
        if self.standalone {
            // `/ping` answers 503 from now on (there is no master to say so).
            self.board.set_stopping();
        }
    }

    fn waiting(&self, n: usize) {
        self.publishing.store(true, Ordering::SeqCst);
        self.board.set_waiting(self.slot, n);
    }

    fn waiting_told(&self, n: usize) {
        self.board.set_waiting_told(self.slot, n);
    }

    fn tasks_cut(&self, tasks: usize, reading: usize) {
        self.board.tasks_cut(self.slot, tasks, reading);
    }

    fn waiting_named(
        &self,
        first: &[(
            crate::codec::Head,
            crate::logging::RequestId,
            crate::codec::Protocol,
        )],
    ) {
        for i in 0..super::scoreboard::WAITING_LINES {
            let line = self.board.waiting_line(self.slot, i);
            match first.get(i) {
                Some((head, id, protocol)) => {
                    let (method, target) = describe(head);
                    line.set_request_id(id.as_bytes());
                    line.begin(method, target, *protocol);
                }
                None => line.end(),
            }
        }
    }

    fn refused(&self, protocol: crate::codec::Protocol, status: Option<u16>) {
        if self.metrics {
            self.board.count_refused(self.slot, protocol, status);
        }
    }

    fn begin(
        &self,
        thread: usize,
        head: &crate::codec::Head,
        id: &crate::logging::RequestId,
        protocol: crate::codec::Protocol,
    ) {
        if thread >= self.board.threads {
            return;
        }
        let (method, target) = describe(head);
        let line = self.board.line(self.slot, thread);
        line.set_request_id(id.as_bytes());
        line.begin(method, target, protocol);
        // Its last free thread taken while a request came on a parked connection
        // that no thread waited for (rare): the busy watch's thread looks whether it
        // still waits; or while that thread sleeps with no tick (the worker was
        // idle): it starts its safety net's clock (fastcgi::relieve). SeqCst, paired
        // with that thread's store of `look` and load of `busy`.
        if self.busy.fetch_add(1, Ordering::SeqCst) + 1 >= self.python_threads()
            && self.all_busy.look.load(Ordering::SeqCst)
        {
            self.all_busy.notify();
        }
        if self.metrics {
            self.board.enter(self.slot);
        }
        self.taken_from_waiting();
    }

    fn end(&self, thread: usize, served: Option<&crate::wsgi::Served>, counted: bool) {
        if thread < self.board.threads {
            let line = self.board.line(self.slot, thread);
            if self.metrics {
                if !counted {
                    line.count(served);
                }
                self.board.leave(self.slot);
                self.board.publish_log_drops(
                    self.slot,
                    crate::logging::LOG_LINES_DROPPED.load(Ordering::Relaxed),
                );
            }
            line.end();
            self.busy.fetch_sub(1, Ordering::SeqCst);
        }
        self.served_one();
    }

    // With or without --stats: the master's WARN for a request a worker's death cuts
    // off says whether its response had gone out whole.
    fn answered(&self, thread: usize, status: u16, bytes: u64) {
        if thread < self.board.threads {
            self.board.line(self.slot, thread).answered(status, bytes);
        }
    }

    fn cut(&self, thread: usize, protocol: crate::codec::Protocol, served: &crate::wsgi::Served) {
        if self.metrics && thread < self.board.threads {
            self.board
                .line(self.slot, thread)
                .count_for(protocol, Some(served));
        }
    }

    fn tasks(&self, max_concurrency: usize) -> usize {
        self.board.set_capacity(self.slot, max_concurrency);
        self.board.threads
    }

    fn lifespan_answered(&self) {
        self.board.lifespan_answered(self.slot);
    }

    fn task_begin(
        &self,
        line: Option<usize>,
        head: &crate::codec::Head,
        id: &crate::logging::RequestId,
        protocol: crate::codec::Protocol,
    ) {
        if let Some(l) = line.filter(|&l| l < self.board.threads) {
            let (method, target) = describe(head);
            let line = self.board.line(self.slot, l);
            line.set_request_id(id.as_bytes());
            line.begin(method, target, protocol);
        }
        if self.metrics {
            self.board.enter_task(self.slot);
        }
        self.taken_from_waiting();
    }

    fn task_show(
        &self,
        line: usize,
        head: &crate::codec::Head,
        id: &crate::logging::RequestId,
        protocol: crate::codec::Protocol,
        since: std::time::Instant,
    ) {
        if line < self.board.threads {
            let (method, target) = describe(head);
            let ago = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
            let since = super::scoreboard::now_ns().saturating_sub(ago);
            let line = self.board.line(self.slot, line);
            line.set_request_id(id.as_bytes());
            line.begin_at(method, target, protocol, since);
        }
    }

    fn task_idle(&self, line: usize) {
        if line < self.board.threads {
            self.board.line(self.slot, line).end();
        }
    }

    fn task_end(
        &self,
        line: Option<usize>,
        protocol: crate::codec::Protocol,
        served: Option<&crate::wsgi::Served>,
    ) {
        if self.metrics {
            // The loop thread writes every line of this worker: line 0 counts them all.
            self.board.line(self.slot, 0).count_for(protocol, served);
            self.board.leave(self.slot);
            self.board.publish_log_drops(
                self.slot,
                crate::logging::LOG_LINES_DROPPED.load(Ordering::Relaxed),
            );
        }
        if let Some(l) = line.filter(|&l| l < self.board.threads) {
            self.board.line(self.slot, l).end();
        }
        self.served_one();
    }

    fn threads_all_busy(&self) -> bool {
        self.at_cap.load(Ordering::SeqCst)
            || self.busy.load(Ordering::SeqCst) >= self.python_threads()
    }

    fn at_cap(&self, full: bool) {
        // SeqCst, paired with the busy watch's thread as `begin` is: the store, then
        // the load of `look`.
        self.at_cap.store(full, Ordering::SeqCst);
        self.board.set_at_cap(self.slot, full);
        if full && self.all_busy.look.load(Ordering::SeqCst) {
            self.all_busy.notify();
        }
    }

    fn requests_ended(&self) -> u64 {
        self.board.head(self.slot).requests.load(Ordering::Relaxed)
    }

    fn all_busy_wake(&self) -> Option<Arc<crate::wsgi::BusyWake>> {
        Some(Arc::clone(&self.all_busy))
    }

    fn idle_elsewhere(&self) -> usize {
        self.board.idle_elsewhere(self.slot)
    }

    fn all_busy_for(&self) -> Option<Duration> {
        // An ASGI worker's tasks have no line each: not known (only a free place
        // elsewhere hands a request on). (A board without lines has no busy count.)
        let threads = self.python_threads();
        if self.at_cap.load(Ordering::SeqCst)
            || threads > self.board.threads
            || threads == 0
            || self.busy.load(Ordering::SeqCst) < threads
        {
            return None;
        }
        let mut youngest = 0;
        for t in 0..threads {
            let since = self.board.line(self.slot, t).since_ns();
            if since == 0 {
                // Between its begin's count and its line (or just ended).
                return None;
            }
            youngest = youngest.max(since);
        }
        Some(Duration::from_nanos(
            super::scoreboard::now_ns().saturating_sub(youngest),
        ))
    }

    fn has_siblings(&self) -> bool {
        !self.standalone && self.board.target() > 1
    }

    fn requests_left(&self) -> Option<u64> {
        if self.board.held(self.slot).is_some() {
            // Held past the limit (`Scoreboard::hold`): it accepts as a worker with no
            // limit does.
            return None;
        }
        let served = self.board.head(self.slot).requests.load(Ordering::SeqCst);
        self.max_requests.map(|max| max.saturating_sub(served))
    }

    fn has_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    fn limit_taken(&self) {
        if self.board.held(self.slot).is_some() {
            return;
        }
        if let Some(max) = self.max_requests {
            self.at_limit(&format!("started its {max} requests (--max-requests)"));
        }
    }

    fn on_resume(&self, resume: Resume) {
        let _ = self.resume.set(resume);
    }

    fn leaving_cause(&self) -> Option<&'static str> {
        self.board.leaving_for(self.slot).map(Cause::label)
    }

    fn first_to_warn_past_defined(&self) -> bool {
        self.board.first_to_warn_status(self.slot)
    }

    fn loop_beat(&self, on: bool) {
        self.board.set_beat(self.slot, on);
    }

    fn condemned_grace(&self) -> Option<Duration> {
        (self.board.leaving_for(self.slot) == Some(Cause::Timeout))
            .then(|| condemned_grace(self.board.serves_asgi(self.slot)))
    }

    fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    fn overdue_lines(&self) -> Vec<usize> {
        match self.timeout {
            Some(limit) if self.board.leaving_for(self.slot) == Some(Cause::Timeout) => {
                self.board.overdue_lines(self.slot, limit)
            }
            _ => Vec::new(),
        }
    }

    fn overdue(&self) -> Option<Vec<(String, Duration)>> {
        let limit = self.timeout?;
        (self.board.leaving_for(self.slot) == Some(Cause::Timeout))
            .then(|| self.board.overdue_ids(self.slot, limit))
    }
}

/// A request's method and target (REQUEST_URI, else PATH_INFO) for its line, in one
/// pass over the variables and without allocating (this runs for every request). Its
/// id comes from the request ([`crate::logging::RequestId`]: the front server's, else
/// the one postern made), so the master's lines name the id its access line carries.
fn describe(head: &crate::codec::Head) -> (&[u8], &[u8]) {
    let (mut method, mut uri, mut path) = (None, None, None);
    for (k, v) in head.pairs() {
        match k {
            b"REQUEST_METHOD" => method = Some(v),
            b"REQUEST_URI" => uri = Some(v),
            b"PATH_INFO" => path = Some(v),
            _ => {}
        }
    }
    (method.unwrap_or(b"-"), uri.or(path).unwrap_or(b"-"))
}

impl WorkerMonitor {
    /// A request ended: counts it against `--max-requests` and checks `--max-rss`.
    /// Inlined: it is the tail of every WSGI request's `end`.
    #[inline(always)]
    fn served_one(&self) {
        let head = self.board.head(self.slot);
        let served = head.requests.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(max) = self.max_requests {
            let held = self.board.held(self.slot).filter(|_| served >= max);
            if let Some(why) = held {
                // It serves on, and leaves once its successor is ready, or the
                // reload's new workers are (the master tells it then).
                if served == max {
                    let pid = std::process::id();
                    match why {
                        Hold::StartsFailed => tracing::warn!(
                            pid,
                            "served {max} requests (--max-requests), but workers started to replace others failed to start: it serves on past its limit until its successor is ready"
                        ),
                        // A normal event (probe 329: a WARN per worker at each reload
                        // under load): info.
                        Hold::Reload => tracing::info!(
                            pid,
                            "served {max} requests (--max-requests) during a reload: it serves on past its limit until the new workers are ready"
                        ),
                    }
                }
                self.want_successor(Cause::MaxRequests, "past its --max-requests limit");
            } else if served >= max {
                self.at_limit(&format!("served {served} requests (--max-requests)"));
            } else if !self.successor_asked.load(Ordering::Relaxed) && self.near_limit(served, max)
            {
                self.want_successor(
                    Cause::MaxRequests,
                    &format!(
                        "near its --max-requests limit ({served} of {max} served, at a rate that reaches {max} within {:?})",
                        self.lead()
                    ),
                );
            }
        }
        // With --max-rss, RSS goes on the scoreboard after every request (reading /proc
        // costs a few microseconds; the stats endpoint reads it from /proc itself).
        if self.max_rss_kib.is_some() {
            if let Some(rss) = rss_kib() {
                head.rss_kib.store(rss, Ordering::Relaxed);
            }
        }
        if let Some(max) = self.max_rss_kib {
            if let Some(rss) = Some(head.rss_kib.load(Ordering::Relaxed)).filter(|&r| r > 0) {
                if rss > max {
                    if served == 1 {
                        // Over at once: ASGI lifespan startup or the app's lazy setup
                        // on a first request loaded more than --max-rss allows.
                        self.warn_rss_from_start(rss, max, "after its first request");
                    }
                    let why = format!("RSS {} MiB is over --max-rss {} MiB", Mib(rss), Mib(max));
                    // Serving on while the successor starts is bounded: past half as
                    // much again, the worker stops now (before, it always did), held
                    // or not: the hard limit protects the machine's memory. Held, it
                    // says so, as it may leave nothing serving.
                    // regression: its line read as an ordinary recycle, and with
                    // --workers 1 the outage that followed went unexplained.
                    if rss > max + max / RSS_HARD_DIVISOR {
                        let held = self
                            .board
                            .held(self.slot)
                            .filter(|_| !self.retiring.load(Ordering::SeqCst));
                        if let Some(held) = held {
                            let waits_for = match held {
                                Hold::StartsFailed => "the workers started to replace others fail to start (the code on disk does not import?)",
                                Hold::Reload => "a reload's new workers are still starting",
                            };
                            tracing::warn!(
                                pid = std::process::id(),
                                rss_mib = rss.div_ceil(1024),
                                hard_limit_mib = (max + max / RSS_HARD_DIVISOR) / 1024,
                                held = held.label(),
                                "RSS is over --max-rss's hard limit (1.5 x --max-rss): this worker stops now, although it was held past its limits because {waits_for}; no successor is ready, so if no other worker serves, none does until one starts"
                            );
                        }
                        // regression (probe 390): it read as an ordinary recycle, with
                        // nothing to say why it left at once.
                        let why = format!(
                            "{why}, and over its hard limit ({} MiB, 1.5 x --max-rss): it stops now, without waiting for its successor",
                            Mib(max + max / RSS_HARD_DIVISOR)
                        );
                        self.retire(Cause::MaxRss, &why);
                    } else {
                        self.want_successor(Cause::MaxRss, &why);
                    }
                }
            }
        }
    }
}

/// KiB shown as MiB: whole when exact, else to one decimal (.1 to .9), so a
/// figure over a limit never reads as equal to it ("RSS 80 MiB is over --max-rss 80
/// MiB" was 80.4 against 80).
struct Mib(u64);

impl std::fmt::Display for Mib {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (whole, rest) = (self.0 / 1024, self.0 % 1024);
        if rest == 0 {
            write!(f, "{whole}")
        } else {
            write!(f, "{whole}.{}", (rest * 10 / 1024).clamp(1, 9))
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn mib_never_shows_a_figure_over_a_limit_as_equal_to_it() {
        assert_eq!(super::Mib(80 * 1024).to_string(), "80");
        assert_eq!(super::Mib(80 * 1024 + 400).to_string(), "80.3");
        assert_eq!(super::Mib(80 * 1024 + 1).to_string(), "80.1");
        assert_eq!(super::Mib(80 * 1024 + 1023).to_string(), "80.9");
        assert_eq!(super::Mib(512).to_string(), "0.5");
    }

    use super::*;

    /// A GET's head (REQUEST_METHOD only) and an id postern made for it.
    fn get_head() -> (crate::codec::Head, crate::logging::RequestId) {
        let mut head = crate::codec::Head {
            buf: bytes::Bytes::new(),
            vars: Vec::new(),
            modifier30: false,
            content_length: 0,
        };
        head.push_var(b"REQUEST_METHOD", b"GET");
        (head, crate::logging::RequestId::generate())
    }

    // regression: the rate was counted over the worker's whole life: a worker idle for
    // long, then busy, asked for its successor only at its last request (5 requests a
    // second "over 10 s" here, 50 left).
    #[test]
    fn the_rate_is_that_of_the_last_leads_not_of_an_idle_life() {
        let board = Arc::new(Scoreboard::new(1, 1).unwrap());
        let mut m = WorkerMonitor::standalone(board);
        m.since = Instant::now() - Duration::from_secs(10);
        m.lead_ns = AtomicU64::new(1_000_000_000);
        // 100 requests in a burst: a lead holds them all.
        let asked_at = (1..100).find(|&served| m.near_limit(served, 100));
        assert!(asked_at.is_some_and(|n| n <= 60), "{asked_at:?}");
        // A fresh worker's first requests are no rate (half a lead at least).
        let mut fresh = WorkerMonitor::standalone(Arc::new(Scoreboard::new(1, 1).unwrap()));
        fresh.lead_ns = AtomicU64::new(10_000_000_000);
        assert!(!fresh.near_limit(1, 100));
    }

    // regression: review1 (note to finding 1): counted over half a lead whatever its
    // count, a worker 40 ms old serving ~2,750 requests a second (lead 1.05 s, limit
    // 329) asked for its successor at 110 served, 40 ms before its limit.
    #[test]
    fn a_young_worker_under_a_heavy_load_asks_for_its_successor_in_time() {
        let board = Arc::new(Scoreboard::new(1, 1).unwrap());
        let mut m = WorkerMonitor::standalone(board);
        m.lead_ns = AtomicU64::new(1_050_000_000);
        // Ready 40 ms ago (the window opened then), and every request since.
        m.since = Instant::now() - Duration::from_millis(40);
        let asked_at = (1..329).find(|&served| m.near_limit(served, 329));
        // At a sixth of its limit at the soonest (a first burst is no rate: probe 379),
        // 20 ms in: far sooner than the 110 it asked at.
        assert!(asked_at.is_some_and(|n| n <= 60), "{asked_at:?}");
        // A few quick requests are still no rate.
        let mut fresh = WorkerMonitor::standalone(Arc::new(Scoreboard::new(1, 1).unwrap()));
        fresh.lead_ns = AtomicU64::new(1_000_000_000);
        assert!((1..=5).all(|served| !fresh.near_limit(served, 1000)));
    }

    // regression: review4 finding 2: after an idle spell the floor shrank with the count
    // as in a young worker's first window: 14 requests in a burst asked for the
    // successor at request 10 of 200.
    #[test]
    fn a_burst_after_an_idle_spell_is_no_rate_to_recycle_at() {
        let board = Arc::new(Scoreboard::new(1, 1).unwrap());
        let mut m = WorkerMonitor::standalone(board);
        m.lead_ns = AtomicU64::new(600_000_000);
        // Ready 5 s ago and idle since: the window rolls at the burst's first request.
        m.since = Instant::now() - Duration::from_secs(5);
        assert!((1..=20).all(|served| !m.near_limit(served, 200)));
        // The same burst in its first window since ready is a young worker's load
        // (the floor shrinks with the count): it asks.
        let young = WorkerMonitor::standalone(Arc::new(Scoreboard::new(1, 1).unwrap()));
        young.ready();
        young.lead_ns.store(600_000_000, Ordering::Relaxed);
        let asked_at = (1..=40).find(|&served| young.near_limit(served, 200));
        assert!(asked_at.is_some(), "{asked_at:?}");
    }

    // regression (probe 379): a fresh worker's first burst (9 requests in 10 ms: what
    // waited for it) asked for its successor at 9 of 158, so every new worker
    // recycled after ~20 requests.
    #[test]
    fn a_fresh_worker_s_first_burst_is_no_rate_to_recycle_at() {
        // Whatever its start took (review 384: a fixed 50 ms floor still asked at 9
        // of 158 with a 1 s lead).
        for lead in [250_000_000, 1_000_000_000, 4_000_000_000] {
            let young = WorkerMonitor::standalone(Arc::new(Scoreboard::new(1, 1).unwrap()));
            young.ready();
            young.lead_ns.store(lead, Ordering::Relaxed);
            assert!(
                (1..=20).all(|served| !young.near_limit(served, 158)),
                "{lead}"
            );
            // A load that goes on at that rate is one: it asks, still within its first
            // window.
            let asked_at = (21..158).find(|&served| young.near_limit(served, 158));
            assert!(asked_at.is_some_and(|n| n <= 30), "{lead}: {asked_at:?}");
        }
    }

    // regression: the lead was measured before an ASGI lifespan startup (`new`), not
    // when the worker began to serve.
    #[test]
    fn the_lead_is_twice_the_start_up_to_serving_lifespan_included() {
        let board = Arc::new(Scoreboard::new(1, 1).unwrap());
        let mut m = WorkerMonitor::standalone(board);
        assert_eq!(m.lead(), MIN_LEAD);
        // Forked 1.5 s ago, imported at once, then a 1.5 s lifespan startup.
        m.forked = Instant::now() - Duration::from_millis(1500);
        m.window.current.store(7, Ordering::Relaxed);
        m.ready();
        assert!(m.lead() >= Duration::from_secs(3), "{:?}", m.lead());
        assert!(m.lead() < Duration::from_secs(4), "{:?}", m.lead());
        // The rate window opens when it serves: nothing counted before.
        assert_eq!(m.window.current.load(Ordering::Relaxed), 0);
        // 400 requests in a burst now, 600 left: within the 3 s lead at that rate.
        let asked_at = (1..1000).find(|&served| m.near_limit(served, 1000));
        assert!(asked_at.is_some(), "{asked_at:?}");
        assert_eq!(lead_ns(Duration::from_millis(10)), 250_000_000);
    }

    // regression: a request taken from the queue after the last publication of the
    // waiting count was counted as waiting and as running.
    #[test]
    fn a_request_begun_during_the_stop_no_longer_counts_as_waiting() {
        use crate::wsgi::Monitor;
        let board = Arc::new(Scoreboard::new(1, 2).unwrap());
        let m = WorkerMonitor::standalone(Arc::clone(&board));
        let (head, id) = get_head();
        m.stopping();
        m.waiting(3);
        m.begin(0, &head, &id, crate::codec::Protocol::Uwsgi);
        assert_eq!(board.running(0), 1);
        assert_eq!(board.waiting(0), 2);
        // Never below zero (a request served at once by a free thread waited for none).
        m.waiting(0);
        m.begin(1, &head, &id, crate::codec::Protocol::Uwsgi);
        assert_eq!(board.waiting(0), 0);
    }

    // regression: the publisher of the waiting count starts before `stopping` is
    // called, and an ASGI task's begin took nothing off: both counted twice.
    #[test]
    fn a_request_or_task_begun_once_the_count_is_published_is_taken_off_it() {
        use crate::wsgi::Monitor;
        let board = Arc::new(Scoreboard::new(1, 2).unwrap());
        let m = WorkerMonitor::standalone(Arc::clone(&board));
        let (head, id) = get_head();
        m.waiting(3);
        m.begin(0, &head, &id, crate::codec::Protocol::Uwsgi);
        assert_eq!(board.waiting(0), 2, "a thread's request, before `stopping`");
        m.task_begin(Some(1), &head, &id, crate::codec::Protocol::Uwsgi);
        assert_eq!(board.waiting(0), 1, "an ASGI task");
    }

    // regression: the line took the id only from X-Request-Id, so the master's
    // --timeout lines said `request_id=-` for a request whose id postern made, which
    // its access line carried.
    #[test]
    fn a_line_carries_the_request_id_postern_made() {
        use crate::wsgi::Monitor;
        let board = Arc::new(Scoreboard::new(1, 2).unwrap());
        let m = WorkerMonitor::standalone(Arc::clone(&board));
        let (head, made) = get_head();
        m.begin(0, &head, &made, crate::codec::Protocol::Uwsgi);
        assert_eq!(board.line(0, 0).request_id(), made.as_str());
        let sent = crate::logging::RequestId::sent(b"myreq-123").unwrap();
        m.task_begin(Some(1), &head, &sent, crate::codec::Protocol::Uwsgi);
        assert_eq!(board.line(0, 1).request_id(), "myreq-123");
    }

    #[test]
    fn the_jitter_spreads_workers_over_a_tenth_of_the_limit() {
        // regression: `pid % (n / 10)` gave workers forked together consecutive limits.
        let drawn: std::collections::BTreeSet<u64> = (0..64).map(|_| jitter(500)).collect();
        assert!(drawn.iter().all(|&j| j < 50), "{drawn:?}");
        assert!(drawn.len() > 10, "{drawn:?}");
        assert_eq!(jitter(5), 0);
    }

    // The thread count is read from the slot once, when the monitor is made (the
    // master wrote it before the fork), not at each request's begin.
    #[test]
    fn the_thread_count_is_read_once() {
        let board = Arc::new(Scoreboard::new(1, 4).unwrap());
        let m = WorkerMonitor::standalone(Arc::clone(&board));
        board.set_threads(0, 2);
        assert_eq!(m.python_threads(), 4);
    }
}
