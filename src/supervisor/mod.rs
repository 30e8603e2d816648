//! The master process (`--workers N` with N > 1): binds nothing itself (main has bound
//! every listener before), starts no thread (main starts Python in it, without the app
//! unless `--preload`), and forks workers that inherit the listeners and the
//! interpreter. It reaps and replaces workers that die, reloads on SIGHUP (new workers
//! first, then the old ones drain), and stops gracefully on SIGTERM.
//!
//! Signals reach the master through a signalfd (they stay blocked in the master and
//! are unblocked in each child), so the master is one single-threaded poll loop and
//! forking is safe at any time.
//!
//! | signal | master does |
//! |---|---|
//! | SIGHUP | reload: start a new generation, then gracefully stop the old one |
//! | SIGTERM, SIGINT | graceful stop: workers drain (up to --graceful-timeout), then exit |
//! | SIGQUIT | immediate stop: each worker is told to stop at once (it cuts and marks its responses), and killed if still there 1.5 s later |
//! | SIGTTIN / SIGTTOU | one worker more / less |
//! | SIGCHLD | reap; a worker that died unexpectedly is logged and replaced |
//! | SIGUSR1 | reopen the log files (logrotate), then forward SIGUSR1 to every worker |
//!
//! A master that dies without a stop (SIGKILL) takes its workers with it: each stops
//! as for a SIGTERM and is gone by the deadline the master would have enforced
//! (`worker::watch_master`).
//!
//! With `--stats`, the endpoint runs in a helper process the master forks first (and
//! again if it dies): the master itself stays single-threaded with no runtime, so every
//! later fork is as safe as before. The helper reads everything from the scoreboard.
//!
//! `master` is the loop, `phase` a worker's phase and what its exit means (pure, unit
//! tested), `worker` the forked worker's side (its monitor and status pipe), `touch`
//! the `--touch-reload` watch, `signals` the signalfd and masks.

mod master;
pub mod notify;
mod phase;
pub mod report;
pub mod scoreboard;
mod signals;
mod touch;
mod worker;

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use scoreboard::Scoreboard;

pub use master::{run, Unclean};
pub use worker::{announce_ready, imported, WorkerMonitor};

/// Blocks the signals the master handles in the calling thread, before the master
/// starts Python: a thread Python starts there (a sitecustomize, a venv's .pth file)
/// inherits the mask, so those signals still reach the master's signalfd instead of
/// that thread (where SIGHUP's default action killed the master).
pub fn block_master_signals() -> std::io::Result<()> {
    // The app's children (an import under --preload) do not keep the stop signals
    // blocked (their default action ends them: a Pool's terminate() works). The
    // others stay blocked there, as before: at their default action a group-wide
    // SIGTTIN, SIGUSR2 or SIGHUP (`systemctl kill`) would stop or kill them.
    crate::forked::master_blocks(&[libc::SIGTERM, libc::SIGINT, libc::SIGQUIT, libc::SIGCHLD]);
    signals::SigSet::of(&signals::handled()).block()
}

/// Below this soft open-file limit postern cannot be expected to start (its I/O
/// runtime, pipes, Python's imports, a few connections): a start that fails under it
/// gets the advice even when its error names no errno (Python's "error evaluating
/// path").
const FEW_FILES: u64 = 64;

/// `message` (an error that stops a start, or a worker's), with the advice about the
/// open-file limit when it ran out of descriptors (EMFILE: std renders it "(os error
/// 24)") or the limit is under [`FEW_FILES`]: the same sentence on every path, with the
/// limit in force.
pub fn with_open_files_advice(message: String) -> String {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    let out_of_files = message.contains("(os error 24)");
    if !out_of_files && soft.is_none_or(|s| s >= FEW_FILES) {
        return message;
    }
    let limit = soft.map_or_else(|| "unlimited".to_owned(), |s| s.to_string());
    format!("{message}; the open-file limit is {limit} (ulimit -n): raise it (ulimit -n, or LimitNOFILE= under systemd)")
}

/// Errors of the master.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("cannot set up the master's signal handling: {0}")]
    Signals(std::io::Error),
    #[error("cannot map the shared scoreboard: {0}")]
    Scoreboard(std::io::Error),
    #[error("cannot fork a worker: {0}")]
    Fork(std::io::Error),
    #[error("the first workers failed to start (see the workers' error above); not retrying")]
    BootFailed,
    #[error("workers keep dying right after they start ({0} times in a row); stopping")]
    CrashLoop(u32),
    /// The stop was not clean (requests cut off by a second signal, `--graceful-timeout`
    /// or SIGQUIT; workers killed): the process exits 1, as the single process does.
    #[error("{0}")]
    CutOff(Unclean),
}

/// What the master needs to know. A reload may bring new ones for its generation
/// ([`Reread::Next`]): each worker keeps its own generation's limits.
#[derive(Debug, Clone)]
pub struct Options {
    pub workers: usize,
    pub threads: usize,
    pub graceful_timeout: Duration,
    /// `--worker-start-timeout`: a worker still starting this long while others serve,
    /// once the first start is over (a reload, a replacement), is killed and its start
    /// counts as failed.
    pub start_timeout: Duration,
    /// How long a stopping worker may take past `--graceful-timeout` (an ASGI worker's
    /// lifespan shutdown after a cut-off: `asgi::stop::past_graceful`) before the
    /// master kills it.
    pub past_graceful: Duration,
    /// `--timeout`: a request running longer gets its worker's stacks dumped, then
    /// the worker killed and replaced.
    pub timeout: Option<Duration>,
    /// `--slow-log`: a request running longer gets its worker's stacks dumped.
    pub slow_log: Option<Duration>,
    /// `--max-lifetime`: a worker older than this is replaced gracefully.
    pub max_lifetime: Option<Duration>,
    /// A worker recycles itself at a limit of its own (`--max-requests`, `--max-rss`):
    /// only then, or with `--max-lifetime`, is there a limit to hold it past while
    /// starts fail.
    pub recycles: bool,
    /// `--chain-reload`: replace workers one at a time on reload.
    pub chain_reload: bool,
    /// `--touch-reload`: reload when this file's mtime changes.
    pub touch_reload: Option<std::path::PathBuf>,
    /// Python runs in the master (always under main; kept as an option for callers that
    /// start none): forks are bracketed for CPython.
    pub preload: bool,
    /// `--preload`: the app itself was imported in the master, so a reload forks
    /// workers that run the code it imported at start (the reload says so).
    pub app_preloaded: bool,
    /// `--lifespan-timeout`, when it is not below `--worker-start-timeout` and the app
    /// may be ASGI (`--interface auto`, lifespan not off): the master warns once a
    /// worker says it serves ASGI ([`warn_lifespan_timeout`]). With `--interface asgi`
    /// main warns at start; with WSGI the two never meet.
    pub lifespan_timeout_over_start: Option<Duration>,
    /// What `/status` shows of this generation's configuration (with `--stats`):
    /// published when a reload, or a rollback, changes it.
    pub summary: Vec<(String, String)>,
    /// `--log-level`: a reload applies it to the master (and so to the workers it forks),
    /// a rollback goes back to the serving generation's.
    pub log_level: String,
    /// `--access-log`: a reload that turns it off (or on again) applies it to the
    /// master (and so to the workers it forks); a rollback goes back to the serving
    /// generation's.
    pub access_log: String,
}

/// The warning for a `--lifespan-timeout` at or above `--worker-start-timeout`, for an
/// app known to be ASGI: its worker is ready only after its lifespan startup, so the
/// start bound would kill it before the lifespan's own timeout could say what hangs.
pub fn warn_lifespan_timeout(lifespan_timeout: Duration, start_timeout: Duration) {
    tracing::warn!(
        "--lifespan-timeout ({}s) is not {}s below --worker-start-timeout ({}s): an ASGI app's worker (a reload's, a replacement) whose lifespan startup hangs is killed at --worker-start-timeout before --lifespan-timeout can say so (a startup blocking the loop in a sync call is given up that long after --lifespan-timeout); keep --lifespan-timeout lower",
        lifespan_timeout.as_secs_f64(),
        crate::asgi::STARTUP_GRACE.as_secs_f64(),
        start_timeout.as_secs_f64()
    );
}

/// A draw from `0` to a tenth of `n` (0 under 10), spread by a hash of `seed`: workers
/// forked together (consecutive pids) get values over the whole range. The recycling
/// limits' jitter, so that workers started together do not recycle together.
fn tenth_of(n: u64, seed: u64) -> u64 {
    let spread = (n / 10).max(1);
    // splitmix64's finaliser.
    let mut x = seed;
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    x % spread
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

/// What a generation of workers runs, as the caller (main) made it from the
/// configuration: handed to each worker forked for that generation
/// ([`WorkerContext::settings`]) and to the reload hook ([`Reread`]). The master only
/// keeps it, per generation, so that a replacement or a rollback starts workers with
/// their own generation's settings.
pub type GenerationSettings = Arc<dyn std::any::Any + Send + Sync>;

/// What the configuration read again at a reload says ([`run`]'s `reread`).
pub enum Reread {
    /// It is invalid (the hook said why, one ERROR line): the reload is refused, the
    /// workers serve on, nothing changes.
    Refused,
    /// The new generation runs `settings`, with the master's `opts`; `changed`: any
    /// setting differs from the generation that served (a rollback says it goes back).
    Next {
        opts: Box<Options>,
        settings: GenerationSettings,
        changed: bool,
    },
}

/// Handed to each forked worker.
pub struct WorkerContext {
    /// Write one byte here once serving ([`announce_ready`]).
    pub ready: OwnedFd,
    pub board: Arc<Scoreboard>,
    pub slot: usize,
    /// When the master forked it: how long its start took tells how far ahead of its
    /// `--max-requests` it asks for its successor ([`WorkerMonitor`]).
    pub forked: std::time::Instant,
    /// What its generation runs ([`GenerationSettings`]).
    pub settings: GenerationSettings,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_out_of_descriptors_gets_the_same_advice_on_every_path() {
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        for message in [
            format!("cannot start the I/O runtime: {emfile}"),
            SupervisorError::Fork(std::io::Error::from_raw_os_error(libc::EMFILE)).to_string(),
            crate::stop::StopError::Pipe(std::io::Error::from_raw_os_error(libc::EMFILE))
                .to_string(),
        ] {
            let said = with_open_files_advice(message.clone());
            assert!(said.starts_with(&message), "{said}");
            assert!(
                said.contains("Too many open files")
                    && said.contains("; the open-file limit is ")
                    && said.ends_with(
                        "(ulimit -n): raise it (ulimit -n, or LimitNOFILE= under systemd)"
                    ),
                "{said}"
            );
        }
        // Anything else is left alone (this test's limit is not under FEW_FILES).
        let other = "cannot bind 127.0.0.1:80: Permission denied (os error 13)".to_owned();
        assert_eq!(with_open_files_advice(other.clone()), other);
    }
}
