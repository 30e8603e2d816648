//! The master process (`--workers N` with N > 1): binds nothing itself (main has bound
//! every listener before), never starts Python or a thread, and forks workers that
//! inherit the listeners. It reaps and replaces workers that die, reloads on SIGHUP
//! (new workers first, then the old ones drain), and stops gracefully on SIGTERM.
//!
//! Signals reach the master through a signalfd (they stay blocked in the master and
//! are unblocked in each child), so the master is one single-threaded poll loop and
//! forking is safe at any time.
//!
//! | signal | master does |
//! |---|---|
//! | SIGHUP | reload: start a new generation, then gracefully stop the old one |
//! | SIGTERM, SIGINT | graceful stop: workers drain (up to --graceful-timeout), then exit |
//! | SIGQUIT | immediate stop: SIGKILL to every worker |
//! | SIGTTIN / SIGTTOU | one worker more / less |
//! | SIGCHLD | reap; a worker that died unexpectedly is logged and replaced |
//! | SIGUSR1 | reopen the log files (logrotate), then forward SIGUSR1 to every worker |
//!
//! With `--stats`, the endpoint runs in a helper process the master forks first (and
//! again if it dies): the master itself stays single-threaded with no runtime, so every
//! later fork is as safe as before. The helper reads everything from the scoreboard.

pub mod notify;
pub mod report;
pub mod scoreboard;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use scoreboard::Scoreboard;

use crate::stats::Cause;

use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

/// Errors of the master.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("cannot set up the master's signal handling: {0}")]
    Signals(nix::Error),
    #[error("cannot map the shared scoreboard: {0}")]
    Scoreboard(std::io::Error),
    #[error("cannot fork a worker: {0}")]
    Fork(nix::Error),
    #[error("the first workers failed to start (see the traceback above); not retrying")]
    BootFailed,
    #[error("workers keep dying right after they start ({0} times in a row); stopping")]
    CrashLoop(u32),
}

/// What the master needs to know.
#[derive(Debug, Clone)]
pub struct Options {
    pub workers: usize,
    pub threads: usize,
    pub graceful_timeout: Duration,
    /// `--timeout`: a request running longer gets its worker's stacks dumped, then
    /// the worker killed and replaced.
    pub timeout: Option<Duration>,
    /// `--slow-log`: a request running longer gets its worker's stacks dumped.
    pub slow_log: Option<Duration>,
    /// `--max-lifetime`: a worker older than this is replaced gracefully.
    pub max_lifetime: Option<Duration>,
    /// `--chain-reload`: replace workers one at a time on reload.
    pub chain_reload: bool,
    /// `--touch-reload`: reload when this file's mtime changes.
    pub touch_reload: Option<std::path::PathBuf>,
    /// `--preload`: Python runs in the master; forks are bracketed for CPython.
    pub preload: bool,
}

/// `--stats` under a master: the bound endpoint and what it reports.
pub struct Stats {
    pub bound: crate::server::listener::Bound,
    /// The listeners whose accept queues are reported.
    pub probes: Vec<report::Probe>,
    /// `key value` pairs shown by `/status`.
    pub config: Vec<(String, String)>,
}

/// Most worker slots (workers of two generations during a reload, plus retiring ones).
const MAX_SLOTS: usize = 1024;

/// Handed to each forked worker.
pub struct WorkerContext {
    /// Write one byte here once serving ([`announce_ready`]).
    pub ready: OwnedFd,
    pub board: Arc<Scoreboard>,
    pub slot: usize,
}

/// A worker's view of its scoreboard slot: records requests, and recycles the worker
/// after `--max-requests` (with jitter) or past `--max-rss`.
pub struct WorkerMonitor {
    board: Arc<Scoreboard>,
    slot: usize,
    max_requests: Option<u64>,
    max_rss_kib: Option<u64>,
    retiring: AtomicBool,
    /// Count requests for the metrics (`--stats`; read once from the scoreboard).
    metrics: bool,
    /// A single process (no master).
    standalone: bool,
}

impl WorkerMonitor {
    pub fn new(ctx: &WorkerContext, max_requests: Option<u64>, max_rss_mib: Option<u64>) -> Self {
        // Jitter of up to 10% so that workers do not all recycle at once.
        let max_requests = max_requests.map(|n| {
            let spread = (n / 10).max(1);
            n + u64::from(std::process::id()) % spread
        });
        WorkerMonitor {
            board: Arc::clone(&ctx.board),
            slot: ctx.slot,
            max_requests,
            max_rss_kib: max_rss_mib.map(|m| m * 1024),
            retiring: AtomicBool::new(false),
            metrics: ctx.board.metrics(),
            standalone: false,
        }
    }

    /// The monitor of a single process (no master, no recycling) with `--stats`.
    pub fn standalone(board: Arc<Scoreboard>) -> Self {
        WorkerMonitor {
            metrics: board.metrics(),
            board,
            slot: 0,
            max_requests: None,
            max_rss_kib: None,
            retiring: AtomicBool::new(false),
            standalone: true,
        }
    }

    /// A single process has imported its app and serves (`/ping` says pong).
    pub fn serving(&self) {
        self.board.mark_serving(self.slot);
    }

    fn retire(&self, cause: Cause, why: &str) {
        if self.retiring.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::info!(pid = std::process::id(), "recycling this worker: {why}");
        self.board.retire_self(self.slot, cause);
        // The graceful stop path: finish in-flight requests, then exit.
        let _ = kill(nix::unistd::getpid(), Signal::SIGTERM);
    }
}

/// Resident set size of this process, in KiB.
fn rss_kib() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * crate::supervisor::scoreboard::page_size() / 1024)
}

impl crate::wsgi::Monitor for WorkerMonitor {
    fn server_stopping(&self) -> bool {
        self.board.is_stopping()
    }

    fn stopping(&self) {
        self.board.stop_serving(self.slot);
        if self.standalone {
            // `/ping` answers 503 from now on (there is no master to say so).
            self.board.set_stopping();
        }
    }

    fn refused(&self, protocol: crate::codec::Protocol, status: Option<u16>) {
        if self.metrics {
            self.board.count_refused(self.slot, protocol, status);
        }
    }

    fn begin(&self, thread: usize, head: &crate::codec::Head, protocol: crate::codec::Protocol) {
        if thread >= self.board.threads {
            return;
        }
        // One pass over the variables, no allocation (this runs for every request).
        let (mut method, mut uri, mut path) = (None, None, None);
        for (k, v) in head.pairs() {
            match k {
                b"REQUEST_METHOD" => method = Some(v),
                b"REQUEST_URI" => uri = Some(v),
                b"PATH_INFO" => path = Some(v),
                _ => {}
            }
        }
        let (method, target) = (method.unwrap_or(b"-"), uri.or(path).unwrap_or(b"-"));
        self.board
            .line(self.slot, thread)
            .begin(method, target, protocol);
        if self.metrics {
            self.board.enter(self.slot);
        }
    }

    fn end(&self, thread: usize, served: Option<&crate::wsgi::Served>) {
        if thread < self.board.threads {
            let line = self.board.line(self.slot, thread);
            if self.metrics {
                line.count(served);
                self.board.leave(self.slot);
                self.board.publish_log_drops(
                    self.slot,
                    crate::logging::LOG_LINES_DROPPED.load(Ordering::Relaxed),
                );
            }
            line.end();
        }
        let head = self.board.head(self.slot);
        let served = head.requests.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(max) = self.max_requests {
            if served >= max {
                self.retire(
                    Cause::MaxRequests,
                    &format!("served {served} requests (--max-requests)"),
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
                    self.retire(
                        Cause::MaxRss,
                        &format!(
                            "RSS {} MiB is over --max-rss {} MiB",
                            rss / 1024,
                            max / 1024
                        ),
                    );
                }
            }
        }
    }
}

/// A running worker as the master tracks it.
struct Worker {
    pid: Pid,
    generation: u64,
    /// Read end of the pipe the worker writes one byte to once it serves.
    ready_pipe: Option<OwnedFd>,
    ready: bool,
    started: Instant,
    /// Asked to stop (reload, scale down, shutdown): its exit is expected.
    retiring: bool,
    /// Why it is on its way out (when `retiring`).
    cause: Option<Cause>,
    slot: usize,
    /// When to SIGKILL it (after a --timeout stack dump).
    kill_at: Option<Instant>,
    /// Already killed for --timeout: its scoreboard lines are stale.
    killed: bool,
    /// Requests whose stacks were already dumped for --slow-log: (thread, since).
    dumped: Vec<(usize, u64)>,
}

impl Worker {
    /// Part of the serving generation and not on its way out.
    fn current(&self, generation: u64) -> bool {
        self.generation == generation && !self.retiring
    }

    /// Asks the worker to finish its requests and exit (SIGTERM), for `cause`.
    fn drain(&mut self, board: &Scoreboard, cause: Cause) {
        self.mark_retiring(board, cause);
        let _ = kill(self.pid, Signal::SIGTERM);
    }

    /// Records that the worker is on its way out, for `cause` (the first cause wins).
    fn mark_retiring(&mut self, board: &Scoreboard, cause: Cause) {
        self.retiring = true;
        let cause = *self.cause.get_or_insert(cause);
        board.mark_draining(self.slot, cause);
    }
}

/// The `--stats` helper process: it serves the endpoint from the scoreboard.
struct StatsHelper {
    bound: crate::server::listener::Bound,
    source: crate::stats::Source,
    pid: Option<Pid>,
    started: Instant,
}

/// The signals the master handles.
fn master_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGHUP,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGTTIN,
        Signal::SIGTTOU,
        Signal::SIGCHLD,
        Signal::SIGUSR1,
    ] {
        set.add(s);
    }
    set
}

/// Runs the master until a stop. `worker` runs in each forked child and returns the
/// child's exit code; it receives the write end of its ready pipe. `listeners` are the
/// serving sockets the workers share: at a stop the master makes them refuse new
/// connections before it signals the workers, who then serve what is queued.
pub fn run(
    opts: Options,
    stats: Option<Stats>,
    listeners: &[crate::server::listener::Bound],
    worker: impl Fn(WorkerContext) -> i32,
) -> Result<(), SupervisorError> {
    let mask = master_signals();
    mask.thread_block().map_err(SupervisorError::Signals)?;
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(SupervisorError::Signals)?;
    let board = Arc::new(
        Scoreboard::new(MAX_SLOTS, opts.threads.max(1)).map_err(SupervisorError::Scoreboard)?,
    );
    board.set_metrics(stats.is_some());
    let stats = stats.map(|s| StatsHelper {
        source: report::source(Arc::clone(&board), true, s.probes, s.config),
        bound: s.bound,
        pid: None,
        started: Instant::now(),
    });
    let mut m = Master {
        board,
        opts: opts.clone(),
        target: opts.workers,
        generation: 0,
        workers: Vec::new(),
        boot_failures: 0,
        announced: false,
        pending: std::collections::VecDeque::new(),
        stats,
    };
    tracing::info!(
        master = std::process::id(),
        workers = opts.workers,
        "master started; starting workers"
    );
    // The stats helper first, so it inherits no worker's pipe.
    m.spawn_stats(&sfd, &mask)?;
    for _ in 0..m.target {
        m.spawn(&sfd, &mask, &worker, Cause::Boot)?;
    }
    let mtime = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut touched = opts.touch_reload.as_deref().and_then(mtime);
    loop {
        if let Some(p) = &opts.touch_reload {
            let now = mtime(p);
            if now != touched {
                touched = now;
                tracing::info!(file = %p.display(), "--touch-reload file changed");
                m.reload(&sfd, &mask, &worker)?;
            }
        }
        // Wait for a signal or a ready byte, at most 200 ms (timers, respawn backoff).
        let mut fds = vec![nix::poll::PollFd::new(
            sfd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let pipes: Vec<(usize, i32)> = m
            .workers
            .iter()
            .enumerate()
            .filter_map(|(i, w)| w.ready_pipe.as_ref().map(|p| (i, p.as_raw_fd())))
            .collect();
        // SAFETY: the fds are owned by `m.workers` and outlive this poll call.
        let borrowed: Vec<_> = pipes
            .iter()
            .map(|(_, fd)| unsafe { std::os::fd::BorrowedFd::borrow_raw(*fd) })
            .collect();
        for b in &borrowed {
            fds.push(nix::poll::PollFd::new(*b, nix::poll::PollFlags::POLLIN));
        }
        let _ = nix::poll::poll(&mut fds, 200u16);
        let ready_pipes: Vec<usize> = fds[1..]
            .iter()
            .zip(&pipes)
            .filter(|(f, _)| f.revents().is_some_and(|r| !r.is_empty()))
            .map(|(_, (i, _))| *i)
            .collect();
        drop(fds);
        for i in ready_pipes {
            m.check_ready(i);
        }
        while let Ok(Some(info)) = sfd.read_signal() {
            let sig = Signal::try_from(info.ssi_signo as i32).ok();
            match sig {
                Some(Signal::SIGHUP) => m.reload(&sfd, &mask, &worker)?,
                Some(Signal::SIGTERM) | Some(Signal::SIGINT) => {
                    notify::notify("STOPPING=1");
                    tracing::info!(signal = ?sig.unwrap(), "stopping: workers finish their requests (--graceful-timeout {:?})", m.opts.graceful_timeout);
                    return m.stop(&sfd, false, listeners);
                }
                Some(Signal::SIGQUIT) => {
                    notify::notify("STOPPING=1");
                    tracing::info!("SIGQUIT: stopping now");
                    return m.stop(&sfd, true, listeners);
                }
                Some(Signal::SIGTTIN) => {
                    m.target += 1;
                    tracing::info!(workers = m.target, "SIGTTIN: one worker more");
                }
                Some(Signal::SIGTTOU) if m.target > 1 => {
                    m.target -= 1;
                    tracing::info!(workers = m.target, "SIGTTOU: one worker less");
                    m.retire_extra();
                }
                Some(Signal::SIGUSR1) => {
                    // Workers (and the stats helper) inherit the reopening handler
                    // (crate::logging).
                    crate::logging::reopen();
                    let helper = m.stats.as_ref().and_then(|h| h.pid);
                    for pid in m.workers.iter().map(|w| w.pid).chain(helper) {
                        let _ = kill(pid, Signal::SIGUSR1);
                    }
                }
                _ => {}
            }
        }
        // Read the scoreboard first: a worker that recycled itself and has already
        // exited must be seen as retiring, not as a crash.
        m.watch();
        m.reap()?;
        m.fill(&sfd, &mask, &worker)?;
        m.keep_stats(&sfd, &mask)?;
        m.board
            .publish_master_log_drops(crate::logging::LOG_LINES_DROPPED.load(Ordering::Relaxed));
    }
}

impl Master {
    /// Workers of the serving generation that are not on their way out.
    fn live(&self) -> usize {
        self.workers
            .iter()
            .filter(|w| w.current(self.generation))
            .count()
    }

    /// An older generation still serves: a reload is in progress.
    fn reloading(&self) -> bool {
        self.workers
            .iter()
            .any(|w| w.generation < self.generation && !w.retiring)
    }
}

struct Master {
    board: Arc<Scoreboard>,
    opts: Options,
    target: usize,
    generation: u64,
    workers: Vec<Worker>,
    /// Workers of the current generation that died before they were ready, in a row.
    boot_failures: u32,
    announced: bool,
    /// Why workers left the serving generation, oldest first: the causes their
    /// replacements start with (`fill`).
    pending: std::collections::VecDeque<Cause>,
    stats: Option<StatsHelper>,
}

impl Master {
    fn spawn(
        &mut self,
        sfd: &SignalFd,
        mask: &SigSet,
        worker: &impl Fn(WorkerContext) -> i32,
        cause: Cause,
    ) -> Result<(), SupervisorError> {
        let (read, write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(SupervisorError::Fork)?;
        let master_pid = nix::unistd::getpid();
        let used: Vec<usize> = self.workers.iter().map(|w| w.slot).collect();
        let slot = (0..self.board.slots)
            .find(|s| !used.contains(s))
            .ok_or(SupervisorError::Fork(nix::Error::EAGAIN))?;
        self.board.reset(slot, 0, self.generation, cause);
        // SAFETY: the master is single-threaded (no runtime, no Python, no helper
        // thread has been started), so the child may run arbitrary code.
        // SAFETY: as above; with --preload the fork is bracketed for CPython.
        let forked = if self.opts.preload {
            match unsafe { crate::wsgi::interpreter::fork_with_python() } {
                Ok(0) => ForkResult::Child,
                Ok(pid) => ForkResult::Parent {
                    child: Pid::from_raw(pid),
                },
                Err(e) => {
                    return Err(SupervisorError::Fork(nix::Error::from_raw(
                        e.raw_os_error().unwrap_or(libc::EAGAIN),
                    )))
                }
            }
        } else {
            unsafe { fork() }.map_err(SupervisorError::Fork)?
        };
        match forked {
            ForkResult::Child => {
                // A worker drains on its master's death (killed with SIGKILL, say).
                self.leave_master(master_pid, Signal::SIGTERM, sfd, mask, true);
                drop(read);
                // The stats socket and probes are the helper's.
                drop(self.stats.take());
                self.board
                    .head(slot)
                    .pid
                    .store(std::process::id() as i32, Ordering::SeqCst);
                let code = worker(WorkerContext {
                    ready: write,
                    board: Arc::clone(&self.board),
                    slot,
                });
                std::process::exit(code);
            }
            ForkResult::Parent { child } => {
                drop(write);
                tracing::info!(
                    pid = child.as_raw(),
                    generation = self.generation,
                    cause = cause.label(),
                    "worker started"
                );
                self.board.count_start(cause);
                self.workers.push(Worker {
                    pid: child,
                    generation: self.generation,
                    ready_pipe: Some(read),
                    ready: false,
                    started: Instant::now(),
                    retiring: false,
                    cause: None,
                    slot,
                    kill_at: None,
                    killed: false,
                    dumped: Vec::new(),
                });
                Ok(())
            }
        }
    }

    /// A ready pipe is readable: a byte means ready, EOF means it died first.
    fn check_ready(&mut self, i: usize) {
        let w = &mut self.workers[i];
        let Some(p) = &w.ready_pipe else { return };
        let mut b = [0u8; 1];
        if let Ok(1) = nix::unistd::read(p, &mut b) {
            w.ready = true;
            self.board.mark_serving(w.slot);
            tracing::info!(
                pid = w.pid.as_raw(),
                boot_ms = w.started.elapsed().as_millis() as u64,
                "worker ready"
            );
        }
        w.ready_pipe = None;
        let fresh = w.ready && w.generation == self.generation;
        if fresh {
            self.boot_failures = 0;
        }
        if fresh && self.opts.chain_reload {
            // Chain reload: each new worker that is ready retires one old worker.
            if let Some(old) = self
                .workers
                .iter_mut()
                .find(|o| o.generation < self.generation && !o.retiring)
            {
                old.drain(&self.board, Cause::Reload);
                tracing::info!(pid = old.pid.as_raw(), "chain reload: an old worker drains");
            }
        }
        // Once the whole new generation serves, the old one drains and exits.
        let current: Vec<(i32, bool)> = self
            .workers
            .iter()
            .filter(|w| w.current(self.generation))
            .map(|w| (w.pid.as_raw(), w.ready))
            .collect();
        if current.len() >= self.target && current.iter().all(|(_, ready)| *ready) {
            let mut retired = 0;
            for w in self.workers.iter_mut() {
                if w.generation < self.generation && !w.retiring {
                    w.drain(&self.board, Cause::Reload);
                    retired += 1;
                }
            }
            if retired > 0 {
                tracing::info!(
                    old = retired,
                    "new workers ready; old workers finish their requests and exit"
                );
            }
            if !self.announced || retired > 0 {
                notify::notify(&format!("READY=1\nMAINPID={}", std::process::id()));
                let pids: Vec<i32> = current.iter().map(|(pid, _)| *pid).collect();
                tracing::info!(?pids, "all {} workers ready", pids.len());
                self.announced = true;
            }
        }
    }

    /// Reads the scoreboard: self-recycling workers, requests over --timeout or
    /// --slow-log, workers over --max-lifetime.
    fn watch(&mut self) {
        let now = scoreboard::now_ns();
        let generation = self.generation;
        for w in self.workers.iter_mut() {
            if w.killed {
                continue;
            }
            if let Some(at) = w.kill_at {
                if Instant::now() >= at {
                    let _ = kill(w.pid, Signal::SIGKILL);
                    w.kill_at = None;
                    w.killed = true;
                }
                continue;
            }
            if !w.retiring {
                if let Some(cause) = self.board.self_retired(w.slot) {
                    // It recycles itself (max requests, RSS): start its replacement now.
                    w.retiring = true;
                    w.cause = Some(cause);
                    self.pending.push_back(cause);
                }
            }
            if !w.retiring && w.ready && w.generation == generation {
                if let Some(life) = self.opts.max_lifetime {
                    if w.started.elapsed() > life {
                        tracing::info!(
                            pid = w.pid.as_raw(),
                            "worker passed --max-lifetime; replacing it"
                        );
                        w.drain(&self.board, Cause::MaxLifetime);
                        self.pending.push_back(Cause::MaxLifetime);
                    }
                }
            }
            for t in 0..self.board.threads {
                let line = self.board.line(w.slot, t);
                let since = line.since.load(Ordering::Acquire);
                if since == 0 {
                    continue;
                }
                let ran = Duration::from_nanos(now.saturating_sub(since));
                if let Some(limit) = self.opts.timeout {
                    if ran > limit {
                        tracing::error!(
                            pid = w.pid.as_raw(),
                            request = %crate::logging::Untrusted(line.desc().as_bytes()),
                            ran_ms = ran.as_millis() as u64,
                            "request passed --timeout {limit:?}; dumping the worker's Python stacks, then killing and replacing it"
                        );
                        let _ = kill(w.pid, Signal::SIGUSR2);
                        w.kill_at = Some(Instant::now() + Duration::from_millis(500));
                        self.board.count_timeout();
                        if !w.retiring {
                            self.pending.push_back(Cause::Timeout);
                        }
                        // It is killed for this, whatever it was doing before.
                        w.cause = Some(Cause::Timeout);
                        w.mark_retiring(&self.board, Cause::Timeout);
                        break;
                    }
                }
                if let Some(limit) = self.opts.slow_log {
                    if ran > limit && !w.dumped.contains(&(t, since)) {
                        tracing::warn!(
                            pid = w.pid.as_raw(),
                            request = %crate::logging::Untrusted(line.desc().as_bytes()),
                            ran_ms = ran.as_millis() as u64,
                            "slow request (over --slow-log {limit:?}); the worker's Python stacks follow"
                        );
                        let _ = kill(w.pid, Signal::SIGUSR2);
                        self.board.count_slow();
                        w.dumped.push((t, since));
                        if w.dumped.len() > 64 {
                            w.dumped.remove(0);
                        }
                    }
                }
            }
        }
    }

    fn reload(
        &mut self,
        sfd: &SignalFd,
        mask: &SigSet,
        worker: &impl Fn(WorkerContext) -> i32,
    ) -> Result<(), SupervisorError> {
        // A reload during a reload: the generation still booting is dropped at once
        // (the one serving keeps serving until the newest one is ready).
        let reloading = self.reloading();
        if reloading {
            for w in self.workers.iter_mut() {
                if w.current(self.generation) && !w.ready {
                    w.drain(&self.board, Cause::Reload);
                }
            }
        }
        self.generation += 1;
        tracing::info!(
            generation = self.generation,
            "reloading: new workers start, then the old ones drain"
        );
        notify::notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}",
            notify::monotonic_usec()
        ));
        self.boot_failures = 0;
        // Chain reload: one new worker now, the next once it serves (see `fill`).
        let n = if self.opts.chain_reload {
            1
        } else {
            self.target
        };
        for _ in 0..n {
            self.spawn(sfd, mask, worker, Cause::Reload)?;
        }
        Ok(())
    }

    fn retire_extra(&mut self) {
        let live = self.live();
        if live > self.target {
            if let Some(w) = self
                .workers
                .iter_mut()
                .rev()
                .find(|w| w.current(self.generation))
            {
                w.drain(&self.board, Cause::Scale);
            }
        }
    }

    /// Collects exited workers; logs the unexpected ones.
    fn reap(&mut self) -> Result<(), SupervisorError> {
        loop {
            let status = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return Ok(()),
                Ok(s) => s,
            };
            let (pid, how) = match status {
                WaitStatus::Exited(pid, code) => (pid, format!("exit code {code}")),
                WaitStatus::Signaled(pid, sig, core) => (
                    pid,
                    format!(
                        "killed by {sig:?}{}",
                        if core { " (core dumped)" } else { "" }
                    ),
                ),
                _ => continue,
            };
            let Some(i) = self.workers.iter().position(|w| w.pid == pid) else {
                if let Some(h) = self.stats.as_mut().filter(|h| h.pid == Some(pid)) {
                    tracing::warn!(pid = pid.as_raw(), %how, "the stats endpoint process exited; restarting it");
                    h.pid = None;
                }
                continue;
            };
            let mut w = self.workers.remove(i);
            if !w.retiring {
                if let Some(cause) = self.board.self_retired(w.slot) {
                    // It recycled itself and exited before `watch` saw it.
                    w.retiring = true;
                    w.cause = Some(cause);
                    self.pending.push_back(cause);
                }
            }
            let cause = match (w.retiring, w.ready) {
                (true, _) => w.cause.unwrap_or(Cause::Stop),
                (false, false) => Cause::BootFailure,
                (false, true) => Cause::Crash,
            };
            self.board.count_exit(cause);
            // Its counts join the totals; the slot is free for a new worker.
            self.board.release(w.slot);
            if w.retiring {
                tracing::info!(pid = pid.as_raw(), %how, cause = cause.label(), "worker exited");
                continue;
            }
            self.pending.push_back(cause);
            if !w.ready {
                self.boot_failures += 1;
                if w.generation == 0 && !self.announced {
                    tracing::error!(pid = pid.as_raw(), %how, "worker failed to start");
                    self.stop_all(true);
                    return Err(SupervisorError::BootFailed);
                }
                if w.generation < self.generation {
                    continue;
                }
                if self.generation > 0
                    && self
                        .workers
                        .iter()
                        .any(|o| o.generation < self.generation && !o.retiring)
                {
                    // A reload whose new code does not start: keep serving the old one.
                    tracing::error!(pid = pid.as_raw(), %how, "reload failed: the new workers do not start; still serving the previous code");
                    self.generation -= 1;
                    for o in self.workers.iter_mut() {
                        if o.generation > self.generation {
                            o.drain(&self.board, Cause::Reload);
                        }
                    }
                    continue;
                }
                if self.boot_failures >= 10 {
                    self.stop_all(false);
                    return Err(SupervisorError::CrashLoop(self.boot_failures));
                }
            }
            tracing::error!(pid = pid.as_raw(), %how, "worker died unexpectedly; replacing it");
        }
    }

    /// Starts workers until the current generation has `target` of them (with a
    /// backoff after failures at boot).
    fn fill(
        &mut self,
        sfd: &SignalFd,
        mask: &SigSet,
        worker: &impl Fn(WorkerContext) -> i32,
    ) -> Result<(), SupervisorError> {
        let live = self.live();
        if live >= self.target {
            // Nothing to replace: causes left over (a crash during a scale-down, an
            // old generation's boot failure) would misname a later start.
            self.pending.clear();
            return Ok(());
        }
        let reloading = self.reloading();
        if self.opts.chain_reload && reloading {
            // One new worker at a time; the next once the previous one serves.
            let booting = self
                .workers
                .iter()
                .any(|w| w.generation == self.generation && !w.ready && !w.retiring);
            if !booting {
                self.spawn(sfd, mask, worker, Cause::Reload)?;
            }
            return Ok(());
        }
        if self.boot_failures > 0 {
            let backoff = Duration::from_millis(100u64 << self.boot_failures.min(7));
            let last = self.workers.iter().map(|w| w.started).max();
            if last.is_some_and(|t| t.elapsed() < backoff) {
                return Ok(());
            }
            std::thread::sleep(backoff.min(Duration::from_millis(200)));
        }
        for _ in live..self.target {
            // A replacement starts with the cause of the exit it replaces; with none
            // left, the target grew (SIGTTIN).
            let cause = self.pending.pop_front().unwrap_or(Cause::Scale);
            self.spawn(sfd, mask, worker, cause)?;
        }
        Ok(())
    }

    /// Starts the `--stats` helper process. It serves the endpoint from the scoreboard
    /// and never forks, so it may run a tokio runtime; the master never does.
    fn spawn_stats(&mut self, sfd: &SignalFd, mask: &SigSet) -> Result<(), SupervisorError> {
        if self.stats.is_none() {
            return Ok(());
        }
        let master_pid = nix::unistd::getpid();
        // SAFETY: the master is single-threaded (see `spawn`). The helper does not touch
        // the Python interpreter a --preload master may hold.
        match unsafe { fork() }.map_err(SupervisorError::Fork)? {
            ForkResult::Child => {
                // The helper has nothing to drain: it goes at once with the master.
                self.leave_master(master_pid, Signal::SIGKILL, sfd, mask, false);
                // SAFETY: PR_SET_NAME with a NUL-terminated name of at most 16 bytes,
                // so `ps -o comm`/`top` tell the helper from the workers.
                unsafe {
                    libc::prctl(libc::PR_SET_NAME, c"postern-stats".as_ptr());
                }
                let Some(h) = self.stats.take() else {
                    std::process::exit(1)
                };
                let code = match crate::stats::server::serve(h.bound, h.source) {
                    Ok(()) => 0,
                    Err(e) => {
                        tracing::error!("{e}");
                        1
                    }
                };
                std::process::exit(code);
            }
            ForkResult::Parent { child } => {
                if let Some(h) = &mut self.stats {
                    h.pid = Some(child);
                    h.started = Instant::now();
                }
                Ok(())
            }
        }
    }

    /// In a child just forked (a worker or the stats helper): exit if the master is
    /// already gone, receive `on_master_death` when it goes, take back the signals the
    /// master handles and drop the master's descriptors.
    fn leave_master(
        &mut self,
        master_pid: Pid,
        on_master_death: Signal,
        sfd: &SignalFd,
        mask: &SigSet,
        worker: bool,
    ) {
        // SAFETY: prctl(PR_SET_PDEATHSIG) with a valid signal number.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, on_master_death as libc::c_int);
        }
        if nix::unistd::getppid() != master_pid {
            std::process::exit(0);
        }
        // A terminal's Ctrl-C reaches the whole process group: the master turns it
        // into one graceful stop, so its children ignore SIGINT.
        // SAFETY: setting SIGINT to SIG_IGN before any other thread exists.
        unsafe {
            let _ = nix::sys::signal::signal(Signal::SIGINT, nix::sys::signal::SigHandler::SigIgn);
        }
        let _ = mask.thread_unblock();
        if worker {
            // A worker keeps SIGTERM pending until it serves (the server unblocks it
            // once its handler is in place): stopped while it boots, it must still
            // serve the listen queue of a stopping server, not die with it.
            let _ = SigSet::from(Signal::SIGTERM).thread_block();
        }
        let _ = nix::unistd::close(sfd.as_fd().as_raw_fd());
        for w in self.workers.drain(..) {
            drop(w.ready_pipe);
        }
        // The count of log lines the master dropped came across the fork; the master
        // reports those itself, a child only its own.
        crate::logging::LOG_LINES_DROPPED.store(0, Ordering::Relaxed);
    }

    /// Restarts the stats helper if it died (at most once a second).
    fn keep_stats(&mut self, sfd: &SignalFd, mask: &SigSet) -> Result<(), SupervisorError> {
        match &self.stats {
            Some(h) if h.pid.is_none() && h.started.elapsed() >= Duration::from_secs(1) => {
                self.spawn_stats(sfd, mask)
            }
            _ => Ok(()),
        }
    }

    fn stop_all(&mut self, now: bool) {
        for w in &mut self.workers {
            // A worker already draining (reload, recycling, scale-down, --max-lifetime)
            // had its SIGTERM and finishes its requests; a second one would make it cut
            // them off. (One marked for --timeout is being killed: signalled as before.)
            let draining =
                (w.retiring && w.kill_at.is_none()) || self.board.self_retired(w.slot).is_some();
            if !now && draining {
                continue;
            }
            w.mark_retiring(&self.board, Cause::Stop);
            let _ = kill(
                w.pid,
                if now {
                    Signal::SIGKILL
                } else {
                    Signal::SIGTERM
                },
            );
        }
    }

    /// Stops every worker (gracefully unless `now`) and waits for them.
    fn stop(
        &mut self,
        sfd: &SignalFd,
        now: bool,
        listeners: &[crate::server::listener::Bound],
    ) -> Result<(), SupervisorError> {
        // The flag first: a worker reads it when its SIGTERM arrives and then serves the
        // listen queues before it exits (no successor will). Then no new connection
        // may join the queues while the workers drain: otherwise the kernel keeps
        // queueing them on the master's copy of each socket, and resets them all when
        // the master exits last.
        self.board.set_stopping();
        // Sockets systemd passed stay open in systemd for the next start: left alone.
        for l in listeners.iter().filter(|l| !l.inherited) {
            if let Err(e) = l.refuse_new_connections() {
                tracing::warn!(listener = %l.addr, error = %e, "cannot make the listener refuse new connections");
            }
        }
        self.stop_all(now);
        let deadline = Instant::now() + self.opts.graceful_timeout + Duration::from_secs(1);
        while !self.workers.is_empty() {
            if Instant::now() > deadline {
                tracing::warn!(
                    left = self.workers.len(),
                    "workers still running after --graceful-timeout; killing them"
                );
                self.stop_all(true);
            }
            let _ = self.reap();
            // A second TERM/INT while draining: stop now.
            while let Ok(Some(info)) = sfd.read_signal() {
                let s = info.ssi_signo as i32;
                if s == Signal::SIGTERM as i32
                    || s == Signal::SIGINT as i32
                    || s == Signal::SIGQUIT as i32
                {
                    tracing::warn!("second signal: killing the workers now");
                    self.stop_all(true);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(pid) = self.stats.as_mut().and_then(|h| h.pid.take()) {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
        tracing::info!("all workers exited");
        Ok(())
    }
}

/// Tells the master this worker serves (one byte on its ready pipe).
pub fn announce_ready(pipe: OwnedFd) {
    let _ = nix::unistd::write(&pipe, b"R");
}
