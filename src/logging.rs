//! postern's two logs, and the request id that ties their lines together.
//!
//! - **postern's log** (`--log-file`, default stderr; `--log-format`, `--log-level`):
//!   `tracing` events: start-up, warnings, errors, `wsgi.errors` lines, tracebacks. Every
//!   line about a request is inside its `request` span, whose first field is the request id.
//! - **the access log** (`--access-log`, `--access-log-format`): one line per response,
//!   formatted here and written directly, not through `tracing`, so `--log-level` never
//!   hides it and each format is exactly what its readers expect.
//!
//! Writing never blocks a Python thread. A process that serves requests hands each line
//! to a bounded queue drained by a writer thread (lossy): when the disk or the reader of
//! stderr is too slow and the queue is full, the line is dropped and counted in
//! [`LOG_LINES_DROPPED`]. Under load the writer thread lets lines gather for a moment
//! between its writes, so that it is not woken once a line. The queue is a linked channel bounded by counting (lines and
//! bytes), not a preallocated ring: a ring of 16 Ki slots (tracing-appender's
//! non-blocking writer) wrote 512 KiB of every worker's memory before its first line.
//! The master must stay single-threaded to fork safely, so it writes its own (few, never
//! per-request) lines directly, dropping one a full stderr pipe cannot take; each worker
//! starts its writer thread after the fork ([`start_background`]). Before the process
//! exits, [`finish`] waits (2 s at most) for the queue to be written out.
//!
//! Log files are reopened on SIGUSR1 (logrotate's `postrotate`): the handler opens each
//! path again and `dup3`s the new file over the old descriptor, so every thread of the
//! process writes to the new file from that moment, whatever it is doing. The master gets
//! SIGUSR1 through its signalfd, calls [`reopen`] and forwards the signal to its workers.
//!
//! Imports nothing of `wsgi`, `server` or `supervisor`: they all log through this.

use std::cell::RefCell;
use std::ffi::CString;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};
use std::sync::{mpsc, Arc, Condvar, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime};

use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use tracing::level_filters::LevelFilter;
use tracing::span;
use tracing::subscriber::{Interest, Subscriber};
use tracing::Metadata;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::codec::{Head, Protocol};
use crate::shared_mem::SharedLock;

/// Log lines lost since the process started: dropped because the writer's queue was
/// full (a slow disk or stderr reader), or because writing them failed (disk full).
pub static LOG_LINES_DROPPED: AtomicU64 = AtomicU64::new(0);

/// Lines a process may queue before it drops them. At ~200 bytes a line this bounds the
/// queue near 3 MiB, and it absorbs a stall of a second or more at 10k requests/s.
const QUEUE_LINES: usize = 16 * 1024;

/// Bytes a process may queue (per output) before it drops lines, whatever their number:
/// lines are not all short (a traceback, a request span naming a 64 KiB URI), and 16 Ki
/// of those must not hold a gigabyte while the disk or the reader of stderr stalls.
const QUEUE_BYTES: usize = 32 * 1024 * 1024;

/// A writer thread gathers queued lines for a regular file into writes of about this
/// size (one line never spans two writes, so processes appending to one file never mix
/// their lines).
const BATCH_BYTES: usize = 64 * 1024;

/// A writer thread woken this many times in a row, each time within [`BUSY_GAP`] of
/// its last write, is under load: it then lets lines gather ([`BATCH_WAIT`]).
const BUSY_STREAK: u32 = 8;
const BUSY_GAP: Duration = Duration::from_millis(1);

/// How long a writer thread lets lines gather after it wrote what was queued.
const BATCH_WAIT: Duration = Duration::from_millis(2);

/// Lines for a pipe or socket are gathered into writes of at most this many bytes: a
/// pipe keeps a write of up to `PIPE_BUF` (4 KiB) whole, so processes writing to one
/// pipe never mix their lines.
const PIPE_BATCH: usize = 4096;

/// How long a writer thread waits for its turn on a pipe or socket that other
/// processes write to ([`Output::shared`]) before it writes without: a process stopped
/// while it holds the turn (a debugger) must not stop every process's lines for good.
/// The lock is not fair (a writer that just wrote may take it again first): with 1 s,
/// a pipe far slower than three busy workers had 255 lines cut in 8 s, with 3 s, 3.
const TURN_WAIT: Duration = Duration::from_secs(3);

/// The same, for a line written directly by the thread that logs it (the master, which
/// must never hang: it enforces --timeout; a process before it serves), which drops the
/// line then (counted), rather than write it into another process's.
const DIRECT_TURN_WAIT: Duration = Duration::from_millis(50);

/// Who writes a line: a writer thread, or the thread that logs it ([`DIRECT_TURN_WAIT`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Writer {
    Queue,
    Direct,
}

/// How long [`finish`] waits for a writer thread to write out its queue.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// Mode of log files postern creates: logs hold URLs and client addresses.
const FILE_MODE: u32 = 0o640;

/// Why the logs could not be set up; the message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot open the {what} {path}: {cause} (check that the directory exists and that postern may write there)")]
    Open {
        what: &'static str,
        path: String,
        cause: io::Error,
    },
    /// A symbolic link on the way to the file that neither root nor postern's user
    /// made: following it could make postern (often root at this point) append to any
    /// file the link's owner chose.
    #[error("refusing to open the {what} {path}: {link} is a symbolic link owned by {owner}, not by root or postern's user (uid {euid}); postern never follows a link another user could have planted (it could make postern write to any file): remove the link and let postern create the file, or give the real file's path, or make the link as root")]
    Link {
        what: &'static str,
        path: String,
        link: String,
        owner: String,
        euid: u32,
    },
    #[error("--log-level {0}")]
    Level(String),
}

/// What the logs are set up from (the `--log-*` and `--access-log*` options).
#[derive(Debug, Clone)]
pub struct LogOptions {
    pub level: String,
    pub format: LogFormat,
    /// `None`: stderr.
    pub file: Option<PathBuf>,
    pub access: AccessTarget,
    pub access_format: AccessLogFormat,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// A line like postern's own: timestamp, level, then key=value fields.
    #[default]
    Text,
    /// One JSON object per request.
    Json,
    /// The Apache/nginx "combined" format, with the duration appended.
    Combined,
}

/// `--log-level` as a filter: a level, or `tracing` directives such as
/// `postern=debug,warn`. A bare word that is not a level is refused: `tracing` would
/// take it for a target's name and log nothing else (`verbose`, or `20`: tracing's
/// numeric levels are 0 to 5, Python's 10 to 50 are not taken). A spec with no directive
/// (`""`, as an unset compose or Kubernetes variable gives `POSTERN_LOG_LEVEL=`, or `,`)
/// is refused too: `tracing` would log nothing, errors and tracebacks included.
/// Python's level names `warning` and `critical` (gunicorn's `--log-level`) are taken
/// as `warn` and `error`.
pub fn log_filter(level: &str) -> Result<tracing_subscriber::EnvFilter, String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let hint = "use error, warn, info, debug or trace, or a filter like postern=debug,warn";
    let mut directives = Vec::new();
    for d in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let bare = !d.contains(['=', '[']);
        let d = match d.to_ascii_lowercase().as_str() {
            "warning" if bare => "warn",
            "critical" if bare => "error",
            _ => d,
        };
        if bare && !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(d)) {
            // tracing's 0 (off) to 5 (trace); another number would be a target's name.
            // regression: `20` (Python's INFO) was taken so, and nothing was logged.
            match d.parse::<u64>() {
                Ok(0..=5) => {}
                Ok(n) => {
                    let python = match n {
                        10 => " (Python's number for debug)",
                        20 => " (Python's number for info)",
                        30 => " (Python's number for warn)",
                        40 => " (Python's number for error)",
                        50 => " (Python's number for critical, error)",
                        _ => "",
                    };
                    return Err(format!("{d:?} is not a level{python}; {hint}"));
                }
                Err(_) => return Err(format!("{d:?} is not a level; {hint}")),
            }
        }
        directives.push(d);
    }
    // regression: `""` and `,` were taken as a filter with no directive, which logs
    // nothing at all.
    if directives.is_empty() {
        return Err(if level.trim().is_empty() {
            format!("empty: {hint}")
        } else {
            format!("{level:?} has no level nor filter in it; {hint}")
        });
    }
    let filter = directives.join(",");
    tracing_subscriber::EnvFilter::try_new(&filter)
        .map_err(|e| format!("{level:?} is not a level or a filter ({e}); {hint}"))
}

/// Where access lines go (`--access-log`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessTarget {
    Off,
    Stderr,
    File(PathBuf),
}

impl AccessTarget {
    /// `-` is stderr, `off` is off, anything else a file path.
    pub fn parse(s: &str) -> AccessTarget {
        match s {
            "-" => AccessTarget::Stderr,
            "off" => AccessTarget::Off,
            path => AccessTarget::File(PathBuf::from(path)),
        }
    }
}

/// One place lines go: stderr or a file, each with its writer thread once this process
/// serves.
struct Output {
    kind: Kind,
    /// A regular file (stderr too may be one): its writer thread gathers lines into
    /// writes of up to [`BATCH_BYTES`], not [`PIPE_BATCH`].
    regular: bool,
    /// Not a regular file (a pipe, a socket, a terminal): the turn every process takes
    /// to write to it, so that a line longer than a pipe keeps whole (`PIPE_BUF`, 4 KiB)
    /// is never cut by another process's write (see [`crate::shared_mem`]). Without
    /// one (it could not be mapped), writes go on without turns.
    shared: Option<SharedLock>,
    background: OnceLock<Background>,
    /// errno of the last failed reopen, to report on the next line written.
    reopen_error: AtomicI32,
    /// How many flush marks ([`Msg::Flush`], see [`finish`]) the writer thread reached.
    drained: (Mutex<u64>, Condvar),
    /// Bytes handed to the writer thread and not yet taken by it.
    queued_bytes: AtomicUsize,
    /// Lines handed to the writer thread and not yet taken by it.
    queued_lines: AtomicUsize,
    /// A file whose writes fail (a full disk): what is lost, and when that was said.
    health: Mutex<Health>,
}

#[derive(Default)]
struct Health {
    failing: Option<Failing>,
    /// When a failure was last said ([`FAILURE_SAID_EVERY`]).
    said: Option<Instant>,
}

/// A log file's writes failing since `since`: `lost` lines, and whether the last write
/// stopped inside a line (`torn`: a newline ends it before the next one).
struct Failing {
    since: SystemTime,
    error: String,
    lost: u64,
    torn: bool,
}

/// A log file whose writes start failing again is said at most this often (a disk
/// that fills as fast as it is freed must not flood the other log).
const FAILURE_SAID_EVERY: Duration = Duration::from_secs(60);

enum Kind {
    Stderr,
    File {
        path: PathBuf,
        /// The same path for open(2) in the SIGUSR1 handler, which must not allocate.
        c_path: CString,
        file: File,
    },
}

/// The non-blocking half: the queue's sender (its writer thread holds the receiver).
struct Background {
    queue: mpsc::Sender<Msg>,
}

/// What goes down an output's queue to its writer thread.
#[derive(Debug, PartialEq)]
enum Msg {
    /// One whole line (or one multi-line event), counted in the queue's bounds.
    Line(Vec<u8>),
    /// From [`finish`]: counted once everything queued before it is written (not in
    /// the queue's bounds).
    Flush,
}

struct Logs {
    /// postern's log goes to this file (not stderr).
    log_file: Option<PathBuf>,
    json: bool,
    access: Option<(Arc<Output>, AccessLogFormat)>,
    /// Every distinct output (postern's log and the access log may share one).
    outputs: Vec<Arc<Output>>,
}

static LOGS: OnceLock<Logs> = OnceLock::new();
/// Lines go to the writer threads (set by [`start_background`], cleared by [`finish`]).
static BACKGROUND: AtomicBool = AtomicBool::new(false);
/// This process's pid, for access lines (set again in each worker).
static PID: AtomicU32 = AtomicU32::new(0);

/// Sets up both logs for this process (and, through fork, its workers): opens the files
/// (before privileges are dropped), installs the `tracing` subscriber and the SIGUSR1
/// handler. Lines are written directly until [`start_background`].
pub fn init(opts: &LogOptions) -> Result<(), LogError> {
    let filter = Filter::of(&opts.level).map_err(LogError::Level)?;
    let log = Arc::new(match &opts.file {
        None => Output::stderr(),
        Some(p) => Output::file(p, "log file")?,
    });
    let mut outputs = vec![Arc::clone(&log)];
    let access = match &opts.access {
        AccessTarget::Off => None,
        target => {
            let same = outputs.iter().find(|o| o.is(target)).cloned();
            let out = match (same, target) {
                (Some(o), _) => o,
                (None, AccessTarget::File(p)) => Arc::new(Output::file(p, "access log")?),
                (None, _) => Arc::new(Output::stderr()),
            };
            if !outputs.iter().any(|o| Arc::ptr_eq(o, &out)) {
                outputs.push(Arc::clone(&out));
            }
            Some((out, opts.access_format))
        }
    };
    let ansi = matches!(log.kind, Kind::Stderr) && io::stderr().is_terminal();
    let writer = ToOutput(Arc::clone(&log));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_target(true)
        .with_ansi(ansi);
    // A second init (tests) keeps the first subscriber and its filter.
    let first = SAID.get().is_none();
    if first {
        FILTER.set(filter);
    }
    let registry = tracing_subscriber::registry();
    let installed = match opts.format {
        LogFormat::Text => registry
            .with(fmt.fmt_fields(TextFields).event_format(WithRequest {
                inner: tracing_subscriber::fmt::format().with_target(true),
                json: false,
            }))
            .with(Switch)
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt.json().event_format(WithRequest {
                    inner: tracing_subscriber::fmt::format()
                        .json()
                        .with_current_span(true)
                        .with_span_list(false),
                    json: true,
                }),
            )
            .with(Switch)
            .try_init(),
    }
    .is_ok();
    if first && installed {
        let _ = SAID.set(Mutex::new(opts.level.clone()));
    }
    TEXT_FIELDS.store(opts.format == LogFormat::Text, Ordering::Relaxed);
    let _ = LOGS.set(Logs {
        log_file: opts.file.clone(),
        json: opts.format == LogFormat::Json,
        access,
        outputs,
    });
    new_process();
    install_sigusr1();
    Ok(())
}

/// `--log-level` as the subscriber applies it: a bare level (`info`, the default, or
/// `warn`...) or `tracing` directives (`postern=debug,warn`).
enum Filter {
    Level(LevelFilter),
    Directives(Box<tracing_subscriber::EnvFilter>),
}

impl Filter {
    /// [`log_filter`]'s checks and message; a single directive with no target nor span
    /// is a bare level.
    fn of(level: &str) -> Result<Filter, String> {
        let env = log_filter(level)?;
        let mut directives = level.split(',').map(str::trim).filter(|d| !d.is_empty());
        let bare = match (directives.next(), directives.next()) {
            (Some(d), None) if !d.contains(['=', '[']) => match d.to_ascii_lowercase().as_str() {
                "warning" => Some(LevelFilter::WARN),
                "critical" => Some(LevelFilter::ERROR),
                d => d.parse().ok(),
            },
            _ => None,
        };
        Ok(bare.map_or(Filter::Directives(Box::new(env)), Filter::Level))
    }
}

/// The filter of postern's log, which a reload's `--log-level` swaps ([`set_level`]):
/// the subscriber's layer is [`Switch`], which reads it.
///
/// A bare level (the default `info`) costs nothing per span or event: each callsite is
/// asked once whether it is enabled (`tracing` caches the answer, always or never, in
/// the callsite) and the span callbacks do nothing but one relaxed load. A change
/// stores the level and has `tracing` ask every callsite again
/// (`rebuild_interest_cache`). Directives keep an `EnvFilter`, under a read lock per
/// callback (it tracks spans for its span filters).
/// regression: tracing-subscriber's reload layer took a read lock on every callback
/// of the request span (and `EnvFilter` its own): +~220 instructions per request at
/// info.
struct SwitchFilter {
    /// A bare level's index in [`RANKS`], or [`DIRECTIVES`].
    level: AtomicU8,
    directives: RwLock<Option<tracing_subscriber::EnvFilter>>,
}

/// [`SwitchFilter::level`]: `directives` decides.
const DIRECTIVES: u8 = u8::MAX;

static FILTER: SwitchFilter = SwitchFilter {
    level: AtomicU8::new(3),
    directives: RwLock::new(None),
};

/// The levels by rank, the number [`SwitchFilter::level`] holds.
const RANKS: [LevelFilter; 6] = [
    LevelFilter::OFF,
    LevelFilter::ERROR,
    LevelFilter::WARN,
    LevelFilter::INFO,
    LevelFilter::DEBUG,
    LevelFilter::TRACE,
];

impl SwitchFilter {
    fn set(&self, filter: Filter) {
        match filter {
            Filter::Level(l) => {
                let rank = RANKS.iter().position(|&r| r == l).unwrap_or(3);
                self.level.store(rank as u8, Ordering::Relaxed);
                *self.directives.write().unwrap_or_else(|e| e.into_inner()) = None;
            }
            Filter::Directives(f) => {
                *self.directives.write().unwrap_or_else(|e| e.into_inner()) = Some(*f);
                self.level.store(DIRECTIVES, Ordering::Relaxed);
            }
        }
        tracing::callsite::rebuild_interest_cache();
    }

    /// The bare level, `None`: directives.
    fn level(&self) -> Option<LevelFilter> {
        RANKS
            .get(usize::from(self.level.load(Ordering::Relaxed)))
            .copied()
    }

    /// `f` of the directives' filter (`None`: there is none, a switch to a level
    /// under way).
    fn directives<T>(&self, f: impl FnOnce(&tracing_subscriber::EnvFilter) -> T) -> Option<T> {
        self.directives
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(f)
    }
}

/// The layer of postern's subscriber that filters by [`FILTER`].
struct Switch;

impl<S: Subscriber> Layer<S> for Switch {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        match FILTER.level() {
            Some(level) if *meta.level() <= level => Interest::always(),
            Some(_) => Interest::never(),
            None => FILTER
                .directives(|f| Layer::<S>::register_callsite(f, meta))
                .unwrap_or_else(Interest::sometimes),
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        match FILTER.level() {
            Some(level) => Some(level),
            None => FILTER
                .directives(|f| Layer::<S>::max_level_hint(f))
                .flatten(),
        }
    }

    fn enabled(&self, meta: &Metadata<'_>, ctx: Context<'_, S>) -> bool {
        match FILTER.level() {
            Some(level) => *meta.level() <= level,
            None => FILTER
                .directives(|f| Layer::<S>::enabled(f, meta, ctx))
                .unwrap_or(false),
        }
    }

    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        if FILTER.level().is_none() {
            FILTER.directives(|f| Layer::<S>::on_new_span(f, attrs, id, ctx));
        }
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        if FILTER.level().is_none() {
            FILTER.directives(|f| Layer::<S>::on_record(f, id, values, ctx));
        }
    }

    fn on_enter(&self, id: &span::Id, ctx: Context<'_, S>) {
        if FILTER.level().is_none() {
            FILTER.directives(|f| Layer::<S>::on_enter(f, id, ctx));
        }
    }

    fn on_exit(&self, id: &span::Id, ctx: Context<'_, S>) {
        if FILTER.level().is_none() {
            FILTER.directives(|f| Layer::<S>::on_exit(f, id, ctx));
        }
    }

    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        if FILTER.level().is_none() {
            FILTER.directives(|f| Layer::<S>::on_close(f, id, ctx));
        }
    }
}

/// postern's log's level as `--log-level` said it (set once [`init`] installed the
/// subscriber).
static SAID: OnceLock<Mutex<String>> = OnceLock::new();

/// A reload's `--log-level`: this process logs at `level` from now on, and so do the
/// processes it forks from now on (the master calls it before it forks a new
/// generation's workers; a worker already running keeps its own). `Ok(false)`: it is
/// the level already (or the logs are not set up by [`init`]). Err: not a level
/// ([`log_filter`]'s message).
pub fn set_level(level: &str) -> Result<bool, String> {
    let Some(said) = SAID.get() else {
        return Ok(false);
    };
    let mut said = said.lock().unwrap_or_else(|e| e.into_inner());
    if *said == level {
        return Ok(false);
    }
    FILTER.set(Filter::of(level)?);
    level.clone_into(&mut said);
    Ok(true)
}

/// A panic (a bug in postern) is logged as an error event, with where and on which
/// thread, instead of Rust's raw text on stderr, which is not the log with
/// `--log-file` and breaks JSON logs. With `RUST_BACKTRACE` set, the backtrace is in
/// the event. A panic inside the logging itself falls back to stderr.
pub fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        thread_local! {
            static IN_HOOK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
        }
        if IN_HOOK.with(|f| f.replace(true)) {
            let _ = writeln!(stderr_out(), "{info}");
            return;
        }
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".to_owned());
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let current = std::thread::current();
        let thread = current.name().unwrap_or("unnamed");
        let backtrace = std::backtrace::Backtrace::capture();
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            tracing::error!(target: "postern::panic", thread, at, "internal error (a bug in postern: please report it): {message}\n{backtrace}");
        } else {
            tracing::error!(target: "postern::panic", thread, at, "internal error (a bug in postern: please report it): {message}");
        }
        IN_HOOK.with(|f| f.set(false));
    }));
}

/// The fields of postern's text lines, written as tracing's [`DefaultFields`] writes them
/// (`name=value`, values by `Debug`), but directly when there is no colour to add: the
/// request span's fields are formatted for every request (when it opens, and again as
/// its status and duration are recorded), whether or not a line is logged in it, and
/// the styling took about half of that (callgrind: the `info` span costs 11.2k
/// instructions per request with [`DefaultFields`], 7.8k with this). What
/// [`DefaultFields`] treats specially (an event's message, errors, raw identifiers,
/// `log.` fields) and coloured output go to it.
struct TextFields;

impl<'w> tracing_subscriber::fmt::FormatFields<'w> for TextFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: tracing_subscriber::fmt::format::Writer<'w>,
        fields: R,
    ) -> std::fmt::Result {
        use tracing_subscriber::fmt::format::{DefaultFields, Writer};
        let mut special = Special(false);
        fields.record(&mut special);
        // Every value goes through `LineSafe`: what a request carries (an exception's
        // message with the query string in it, say) can neither start a line of its own
        // nor reach a terminal. Field names are therefore not styled on a terminal (a
        // style is an escape sequence); the level and the target still are.
        if special.0 {
            let mut safe = LineSafe::new(&mut writer);
            return DefaultFields::new().format_fields(Writer::new(&mut safe), fields);
        }
        let mut plain = PlainFields {
            writer: &mut writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut plain);
        plain.result
    }
}

/// What continues a value on the next line of a text log line (a traceback, a message
/// of several lines): every such line starts with it, so none can pass for a line of
/// its own (which starts with its timestamp), and log shippers' usual multi-line rule
/// ("a line that starts with white space continues the one before") joins them.
pub const CONTINUATION: &str = "  ";

/// A writer for the text log's values: control characters (C0 but tab and newline, DEL,
/// C1) written as `\xHH`, the Unicode line separators and bidirectional overrides (which
/// some viewers obey) as `\u{HHHH}`, and [`CONTINUATION`] after each newline. A value's
/// last newline (a traceback's) is dropped: the line ends there anyway, and an empty
/// line would read as an event of its own to a log shipper.
struct LineSafe<'a, W: std::fmt::Write + ?Sized> {
    out: &'a mut W,
    /// A newline was last: written (with [`CONTINUATION`]) once more text follows.
    newline: bool,
}

impl<'a, W: std::fmt::Write + ?Sized> LineSafe<'a, W> {
    fn new(out: &'a mut W) -> Self {
        LineSafe {
            out,
            newline: false,
        }
    }
}

/// The request span's callsite ([`crate::server::span`]): its values are postern's own
/// or [`Untrusted`], made safe for a line where they are made.
static REQUEST_CALLSITE: OnceLock<tracing::callsite::Identifier> = OnceLock::new();

/// Records the request span's callsite, from an enabled span (see [`REQUEST_CALLSITE`]).
pub fn request_span_made(span: &tracing::Span) {
    if REQUEST_CALLSITE.get().is_none() {
        if let Some(m) = span.metadata() {
            let _ = REQUEST_CALLSITE.set(m.callsite());
        }
    }
}

/// Whether `s` holds nothing [`LineSafe`] changes, by the first byte of every character
/// it escapes: C0, DEL; C1 is 0xC2 0x80..0x9F; U+2028..U+202E and U+2066..U+2069 start
/// with 0xE2 (so do other characters: those go the slow way, unchanged).
fn is_plain(s: &str) -> bool {
    s.bytes()
        .all(|b| (b >= 0x20 && b != 0x7f && b != 0xc2 && b != 0xe2) || b == b'\t')
}

/// Whether `c` is written escaped wherever text from outside (a client's request, an
/// app's output, a server's answer) goes into a line of a log or onto a terminal: C0
/// controls but tab, DEL and C1 (they move the cursor, clear the screen, end or
/// overwrite a line), U+2028/2029 (some log viewers end a line there) and the bidi
/// overrides and isolates (they reorder what a reader sees). One rule for the text log
/// ([`LineSafe`]), the request's fields ([`Untrusted`]), `wsgi.errors` lines and
/// `postern status`.
pub fn unsafe_in_a_line(c: char) -> bool {
    let n = u32::from(c);
    (n < 0x20 && c != '\t')
        || (0x7f..=0x9f).contains(&n)
        || matches!(n, 0x2028..=0x202e | 0x2066..=0x2069)
}

/// `c` as written escaped: `\xHH` up to U+00FF, else `\u{HHHH}`.
pub fn write_escaped_char(out: &mut (impl std::fmt::Write + ?Sized), c: char) -> std::fmt::Result {
    let n = u32::from(c);
    if n <= 0xff {
        write!(out, "\\x{n:02X}")
    } else {
        write!(out, "\\u{{{n:04X}}}")
    }
}

/// `text` with every [`unsafe_in_a_line`] character escaped ([`write_escaped_char`]),
/// line feeds kept when `keep_newlines` (a multi-line answer shown on a terminal).
pub fn escape_unsafe(text: &str, keep_newlines: bool) -> std::borrow::Cow<'_, str> {
    let escapes = |c: char| unsafe_in_a_line(c) && !(keep_newlines && c == '\n');
    if !text.contains(escapes) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if escapes(c) {
            let _ = write_escaped_char(&mut out, c);
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

impl<W: std::fmt::Write + ?Sized> std::fmt::Write for LineSafe<'_, W> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if s.is_empty() {
            return Ok(());
        }
        if std::mem::take(&mut self.newline) {
            self.out.write_char('\n')?;
            self.out.write_str(CONTINUATION)?;
        }
        if is_plain(s) {
            return self.out.write_str(s);
        }
        let mut rest = s;
        while let Some(i) = rest.find(unsafe_in_a_line) {
            self.out.write_str(&rest[..i])?;
            let c = rest[i..].chars().next().unwrap_or_default();
            rest = &rest[i + c.len_utf8()..];
            if c == '\n' {
                if rest.is_empty() {
                    self.newline = true;
                } else {
                    self.out.write_char('\n')?;
                    self.out.write_str(CONTINUATION)?;
                }
            } else {
                write_escaped_char(self.out, c)?;
            }
        }
        self.out.write_str(rest)
    }
}

/// Whether some field needs [`DefaultFields`]' own handling.
struct Special(bool);

impl tracing::field::Visit for Special {
    fn record_debug(&mut self, field: &tracing::field::Field, _: &dyn std::fmt::Debug) {
        let name = field.name();
        self.0 |= name == "message" || name.starts_with("r#") || name.starts_with("log.");
    }

    fn record_error(&mut self, _: &tracing::field::Field, _: &(dyn std::error::Error + 'static)) {
        self.0 = true;
    }
}

/// `name=value` fields separated by spaces, as [`DefaultFields`] without colour.
struct PlainFields<'a, 'w> {
    writer: &'a mut tracing_subscriber::fmt::format::Writer<'w>,
    first: bool,
    result: std::fmt::Result,
}

impl tracing::field::Visit for PlainFields<'_, '_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        // Only the value goes through [`LineSafe`] (the names are postern's), and not
        // the request span's, which are made safe where they are made (`Untrusted`):
        // they are formatted for every request, and a writer wrapped around the whole
        // line took ~2,400 more instructions a request, around each value ~1,200.
        let safe = REQUEST_CALLSITE.get() == Some(&field.callsite());
        self.field(field, |w| {
            if safe {
                write!(w, "{value:?}")
            } else {
                write!(LineSafe::new(w), "{value:?}")
            }
        });
    }

    // Numbers and booleans hold nothing to escape; a `&str` value is written with
    // `Debug`, which escapes its control characters itself.
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.field(field, |w| write!(w, "{value}"));
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.field(field, |w| write!(w, "{value}"));
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.field(field, |w| write!(w, "{value}"));
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.field(field, |w| write!(w, "{value:?}"));
    }
}

impl PlainFields<'_, '_> {
    /// `name=value`, the value written by `value`, after a space but for the first.
    fn field(
        &mut self,
        field: &tracing::field::Field,
        value: impl FnOnce(&mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result,
    ) {
        if self.result.is_err() {
            return;
        }
        let w = &mut *self.writer;
        let pad = if std::mem::take(&mut self.first) {
            Ok(())
        } else {
            w.write_char(' ')
        };
        self.result = pad
            .and_then(|()| w.write_str(field.name()))
            .and_then(|()| w.write_char('='))
            .and_then(|()| value(w));
    }
}

/// This process serves requests: from now on lines go through a bounded queue to a
/// writer thread of its own. Call once per process, after the fork (a worker) or before
/// serving (a single process); never in the master, which must stay single-threaded.
pub fn start_background() {
    new_process();
    let Some(logs) = LOGS.get() else { return };
    for out in &logs.outputs {
        if out.background.get().is_some() {
            continue;
        }
        let (queue, lines) = mpsc::channel::<Msg>();
        let mut drain = Drain {
            out: Arc::clone(out),
            pending: Vec::new(),
            lines: 0,
        };
        // The thread is never joined: `finish` waits for the queue to be written out
        // instead, for a bounded time (a stalled log must not hold up the exit).
        let spawned = std::thread::Builder::new()
            .name("postern-log".into())
            .spawn(move || {
                crate::sigpipe::block_on_this_thread();
                // Wakes in a row that each came within BUSY_GAP of the last write.
                let mut streak = 0u32;
                let mut written = Instant::now();
                while let Ok(msg) = lines.recv() {
                    streak = if written.elapsed() < BUSY_GAP {
                        streak.saturating_add(1)
                    } else {
                        0
                    };
                    drain.take(msg);
                    while let Ok(msg) = lines.try_recv() {
                        drain.take(msg);
                    }
                    // The queue ran empty: what is gathered goes out now.
                    drain.write_pending();
                    // Under load (lines keep coming, BUSY_STREAK wakes in a row), the
                    // lines of the next moment gather in the queue while this thread
                    // sleeps (a line sent while it sleeps, not waiting on the queue,
                    // wakes nobody), so it wakes a few hundred times a second, not once
                    // a line; a line is then up to BATCH_WAIT late. Lines that come
                    // one or a few at a time (a request's own lines, then its access
                    // line) go out at once.
                    // regression (probe 323): with the access log on, each request's
                    // line woke this thread, ~3 context switches per request against
                    // ~0.8 with the access log off, 0.64x the req/s.
                    // regression (review 327): sleeping after any drain of more than
                    // one line made a request's access line ~2 ms late behind its own
                    // wsgi.errors lines, with no other traffic.
                    if streak >= BUSY_STREAK {
                        std::thread::sleep(BATCH_WAIT);
                    }
                    written = Instant::now();
                }
            });
        if spawned.is_ok() {
            let _ = out.background.set(Background { queue });
        }
        // Else this output's lines go on being written directly.
    }
    BACKGROUND.store(true, Ordering::Release);
}

/// Waits (up to 2 s per output) until the writer threads have written out what is
/// queued; later lines are written directly. Call before the process exits.
pub fn finish() {
    BACKGROUND.store(false, Ordering::Release);
    let Some(logs) = LOGS.get() else { return };
    for out in &logs.outputs {
        let Some(bg) = out.background.get() else {
            continue;
        };
        let (lock, cv) = &out.drained;
        let mut reached = lock.lock().unwrap_or_else(|e| e.into_inner());
        let mark = *reached + 1;
        // The writer thread counts the mark once it has written everything queued
        // before it. Behind a stalled disk or reader of stderr the wait ends at
        // FLUSH_WAIT: a stalled log must not hold up the exit.
        let _ = bg.queue.send(Msg::Flush);
        let deadline = Instant::now() + FLUSH_WAIT;
        while *reached < mark {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            reached = cv
                .wait_timeout(reached, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Reports the error that stops postern, once: on stderr for whoever started it (as a
/// log line when stderr carries JSON logs), and in the log file too when postern's log
/// goes to one. Flushes the logs first, so the message comes last.
pub fn report_fatal(message: &str) {
    let logs = LOGS.get();
    let file = logs.and_then(|l| l.log_file.as_deref());
    let json = logs.is_some_and(|l| l.json);
    if file.is_some() || json {
        tracing::error!("{message}");
    }
    finish();
    match file {
        // regression: "see the workers' error above" on stderr (the journal) while
        // the error and its traceback were only in the log file.
        // Through postern's own copy of stderr, as its log lines: fd 2 may be the app's
        // now (see `stderr_out`).
        Some(path) => {
            let _ = writeln!(
                stderr_out(),
                "postern: {message} (the log: {})",
                path.display()
            );
        }
        None if !json => {
            let _ = writeln!(stderr_out(), "postern: {message}");
        }
        None => {}
    }
}

/// Reopens the log files now (logrotate moved them away) and says so in postern's log.
/// The master calls this for its SIGUSR1; other processes do the same in the handler.
pub fn reopen() {
    reopen_files();
    say_reopened();
}

/// Says how the reopening of the log files went (an error per file that could not be
/// reopened, else one info line): [`reopen`]'s, and a single process's after its
/// SIGUSR1 handler reopened them (`crate::stop::logs_reopened`).
pub fn say_reopened() {
    let Some(logs) = LOGS.get() else { return };
    for (i, out) in logs.outputs.iter().enumerate() {
        // The first output is postern's log.
        out.report_reopen_error(i == 0);
    }
    // At least one file reopened (one that could not is said above, or was said by
    // the line that took its error).
    if LAST_REOPEN.load(Ordering::Relaxed) >> 32 > 0 {
        tracing::info!("log files reopened (SIGUSR1)");
    }
}

/// Whether access lines are written at all (`--access-log off` writes none, nor does
/// a process a reload's `--access-log off` turned them off in: [`set_access_log`]).
pub fn access_enabled() -> bool {
    ACCESS_ON.load(Ordering::Relaxed) && LOGS.get().is_some_and(|l| l.access.is_some())
}

/// A reload's `--access-log off` turned the access lines off in this process (and the
/// processes it forks from now on).
static ACCESS_ON: AtomicBool = AtomicBool::new(true);

/// Whether a reload can make the access log `value` (`--access-log`'s syntax): `off`,
/// or the target opened at the start (`-` or its file). Another needs a restart: the
/// logs are opened once, before privileges are dropped.
pub fn access_log_reloadable(value: &str) -> bool {
    let target = AccessTarget::parse(value);
    target == AccessTarget::Off
        || LOGS
            .get()
            .and_then(|l| l.access.as_ref())
            .is_some_and(|(out, _)| out.is(&target))
}

/// A reload's `--access-log`: `off` stops the access lines of this process, and of the
/// processes it forks from now on; the target opened at the start writes them again.
/// `false`: another target, which only a restart opens ([`access_log_reloadable`]):
/// nothing changes.
pub fn set_access_log(value: &str) -> bool {
    if !access_log_reloadable(value) {
        return false;
    }
    let on = AccessTarget::parse(value) != AccessTarget::Off;
    ACCESS_ON.store(on, Ordering::Relaxed);
    true
}

/// A fresh process: its own pid and its own request-id prefix (a forked worker must not
/// repeat its master's or a sibling's ids).
fn new_process() {
    PID.store(std::process::id(), Ordering::Relaxed);
    let mut seed = [0u8; 8];
    let n = rustix::rand::getrandom(&mut seed, rustix::rand::GetRandomFlags::empty());
    let prefix = if n == Ok(seed.len()) {
        u64::from_ne_bytes(seed)
    } else {
        // No getrandom (very old kernel): pid and clock still differ between processes.
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        nanos ^ (u64::from(std::process::id()) << 40)
    };
    ID_PREFIX.store(prefix, Ordering::Relaxed);
    ID_COUNTER.store(0, Ordering::Relaxed);
}

impl Output {
    fn stderr() -> Output {
        // Taken now, at the start, before any app runs.
        let regular = is_regular(stderr_out());
        Output {
            kind: Kind::Stderr,
            regular,
            shared: shared_turn(regular),
            background: OnceLock::new(),
            reopen_error: AtomicI32::new(0),
            health: Mutex::default(),
            drained: (Mutex::new(0), Condvar::new()),
            queued_bytes: AtomicUsize::new(0),
            queued_lines: AtomicUsize::new(0),
        }
    }

    fn file(path: &Path, what: &'static str) -> Result<Output, LogError> {
        let err = |cause| LogError::Open {
            what,
            path: path.display().to_string(),
            cause,
        };
        let c_path = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| err(io::Error::from(io::ErrorKind::InvalidInput)))?;
        let mut planted = None;
        let fd = open_log_file(&c_path, &mut |link, uid| {
            planted = Some((
                Path::new(std::ffi::OsStr::from_bytes(link.to_bytes())).to_owned(),
                uid,
            ));
        })
        .map_err(|e| match planted.take() {
            Some((link, uid)) => LogError::Link {
                what,
                path: path.display().to_string(),
                link: link.display().to_string(),
                owner: match crate::users::user_by_uid(uid) {
                    Ok(Some(u)) => format!("{} (uid {uid})", u.name),
                    _ => format!("uid {uid}"),
                },
                euid: rustix::process::geteuid().as_raw(),
            },
            None => err(io::Error::from(e)),
        })?;
        let file = File::from(fd);
        let regular = is_regular(&file);
        Ok(Output {
            regular,
            shared: shared_turn(regular),
            kind: Kind::File {
                path: path.to_owned(),
                c_path,
                file,
            },
            background: OnceLock::new(),
            reopen_error: AtomicI32::new(0),
            health: Mutex::default(),
            drained: (Mutex::new(0), Condvar::new()),
            queued_bytes: AtomicUsize::new(0),
            queued_lines: AtomicUsize::new(0),
        })
    }

    fn is(&self, target: &AccessTarget) -> bool {
        match (&self.kind, target) {
            (Kind::Stderr, AccessTarget::Stderr) => true,
            (Kind::File { path, .. }, AccessTarget::File(p)) => path == p,
            _ => false,
        }
    }

    /// One whole line (or one multi-line event: it stays together).
    fn write_line(&self, line: &[u8]) {
        if self.reopen_error.load(Ordering::Relaxed) != 0 {
            self.report_reopen_error(self.is_own_log());
        }
        if BACKGROUND.load(Ordering::Acquire) {
            if let Some(bg) = self.background.get() {
                self.queue(bg, line);
                return;
            }
        }
        // Written by this thread: in the master (which must never hang on a stalled
        // journal or terminal: it enforces --timeout), or before serving starts. A
        // stderr pipe or socket that cannot take a line now loses it; a file cannot
        // be asked (poll says "ready" for files).
        let ready = match self.kind {
            Kind::Stderr => crate::room::has_room(stderr_out()),
            Kind::File { .. } => true,
        };
        if !ready {
            LOG_LINES_DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.write_lines(line, 1, Writer::Direct);
    }

    /// Whether this is postern's own log (the first output; the access log may share it).
    fn is_own_log(&self) -> bool {
        LOGS.get()
            .and_then(|l| l.outputs.first())
            .is_some_and(|o| std::ptr::eq(&**o, self))
    }

    /// Writes `bytes`, `lines` whole lines; those not written are counted as dropped.
    /// A file that cannot be written (a full disk, an I/O error) is said once (in
    /// postern's log, or on stderr when it is postern's log that fails), its lines are
    /// counted as lost meanwhile, and the first write that goes through again ends a
    /// line cut short and says how many were lost since when (in the file itself when it
    /// is postern's log; an access log holds access lines only).
    /// `by`: who writes, which says how long to wait for this process's turn on a pipe
    /// or socket others write to too ([`Output::shared`]).
    fn write_lines(&self, bytes: &[u8], lines: u64, by: Writer) -> bool {
        let mut _turn = None;
        if let Some(lock) = &self.shared {
            let wait = match by {
                Writer::Queue => TURN_WAIT,
                Writer::Direct => DIRECT_TURN_WAIT,
            };
            _turn = lock.lock_within(wait);
            // regression (review 330): the master wrote its line anyway, into the
            // middle of a worker's long line (76-89 a run of 8 s).
            if _turn.is_none() && by == Writer::Direct {
                LOG_LINES_DROPPED.fetch_add(lines, Ordering::Relaxed);
                return false;
            }
        }
        let Kind::File { file, path, .. } = &self.kind else {
            let ok = stderr_out().write_all(bytes).is_ok();
            if !ok {
                LOG_LINES_DROPPED.fetch_add(lines, Ordering::Relaxed);
            }
            return ok;
        };
        let own = self.is_own_log();
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let recovering = health.failing.take();
        let summary = recovering.as_ref().map(|f| {
            format!(
                "{} log line(s) could not be written to {} from {} on ({}): lost; writing again",
                f.lost,
                path.display(),
                Timestamp(f.since),
                f.error
            )
        });
        let mut joined = Vec::new();
        let out = match &recovering {
            None => bytes,
            Some(f) => {
                if f.torn {
                    joined.push(b'\n');
                }
                if let (true, Some(summary)) = (own, &summary) {
                    joined.extend_from_slice(
                        format!(
                            "{}  WARN postern::logging: {summary}\n",
                            Timestamp(SystemTime::now())
                        )
                        .as_bytes(),
                    );
                }
                joined.extend_from_slice(bytes);
                &joined
            }
        };
        let (written, result) = write_counting(file, out);
        let Err(error) = result else {
            drop(health);
            if let (false, Some(summary)) = (own, summary) {
                tracing::warn!("{summary}");
            }
            return true;
        };
        let first = recovering.is_none();
        let mut failing = recovering.unwrap_or_else(|| Failing {
            since: SystemTime::now(),
            error: error.to_string(),
            lost: 0,
            torn: false,
        });
        failing.lost += lines;
        failing.torn = if written > 0 { true } else { failing.torn };
        health.failing = Some(failing);
        let say = first
            && health
                .said
                .is_none_or(|t| t.elapsed() >= FAILURE_SAID_EVERY);
        if say {
            health.said = Some(Instant::now());
        }
        drop(health);
        LOG_LINES_DROPPED.fetch_add(lines, Ordering::Relaxed);
        if say {
            let what = format!(
                "cannot write to {}: {error}; its lines are lost until it can be written again (counted in postern_log_lines_dropped_total; the first line written again says how many)",
                path.display()
            );
            if own {
                if crate::room::has_room(stderr_out()) {
                    let _ = writeln!(stderr_out(), "postern: {what}");
                }
            } else {
                tracing::warn!("{what}");
            }
        }
        false
    }

    fn write_now(&self, bytes: &[u8]) -> io::Result<()> {
        match &self.kind {
            Kind::Stderr => stderr_out().write_all(bytes),
            Kind::File { file, .. } => (&*file).write_all(bytes),
        }
    }

    /// Says that this log could not be reopened and still goes to the old file: in
    /// that log when it is postern's own (`own`: where its reader looks, and the
    /// subscriber writes there too), else in postern's log (an access log holds access
    /// lines only: a text line there breaks its parsers).
    fn report_reopen_error(&self, own: bool) {
        let errno = self.reopen_error.swap(0, Ordering::Relaxed);
        if errno == 0 {
            return;
        }
        if let Kind::File { path, .. } = &self.kind {
            let why = if errno == LINK_REFUSED {
                "a symbolic link on the way is owned by neither root nor postern's user (postern never follows one another user could have planted)".to_owned()
            } else {
                io::Error::from_raw_os_error(errno).to_string()
            };
            let what = format!(
                "cannot reopen {} after SIGUSR1: {why}; still writing to the file it had before (let logrotate create it for postern's user: `create 0640 USER GROUP`)",
                path.display(),
            );
            if !own {
                tracing::warn!("{what}");
                return;
            }
            let line = format!(
                "{}  WARN postern::logging: {what}\n",
                Timestamp(SystemTime::now()),
            );
            let _ = self.write_now(line.as_bytes());
        }
    }
}

impl Output {
    /// Hands `line` to the writer thread, or drops (and counts) it when the queue holds
    /// [`QUEUE_LINES`] lines or [`QUEUE_BYTES`] bytes already.
    fn queue(&self, bg: &Background, line: &[u8]) {
        let lines = self.queued_lines.fetch_add(1, Ordering::Relaxed);
        let bytes = self.queued_bytes.fetch_add(line.len(), Ordering::Relaxed);
        if lines >= QUEUE_LINES
            || bytes + line.len() > QUEUE_BYTES
            || bg.queue.send(Msg::Line(line.to_vec())).is_err()
        {
            self.queued_lines.fetch_sub(1, Ordering::Relaxed);
            self.queued_bytes.fetch_sub(line.len(), Ordering::Relaxed);
            LOG_LINES_DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The writer thread's end of the queue: lines are gathered into writes of up to
/// [`BATCH_BYTES`] for a regular file, [`PIPE_BATCH`] for a pipe, a socket or a
/// terminal, one line never spanning two writes, so processes writing to one file or
/// pipe never mix their lines (a pipe: lines of up to 4 KiB; a longer line is written
/// alone, and may mix with another process's).
struct Drain {
    out: Arc<Output>,
    pending: Vec<u8>,
    lines: u64,
}

impl Drain {
    fn take(&mut self, msg: Msg) {
        match msg {
            Msg::Line(line) => self.push(&line),
            Msg::Flush => {
                self.write_pending();
                let (lock, cv) = &self.out.drained;
                *lock.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                cv.notify_all();
            }
        }
    }

    fn push(&mut self, line: &[u8]) {
        self.out.queued_lines.fetch_sub(1, Ordering::Relaxed);
        self.out
            .queued_bytes
            .fetch_sub(line.len(), Ordering::Relaxed);
        // Stderr and a --log-file alike may be a pipe (or a FIFO), or a regular file.
        let batch = if self.out.regular {
            BATCH_BYTES
        } else {
            PIPE_BATCH
        };
        if self.pending.len() + line.len() > batch {
            self.write_pending();
        }
        if line.len() > batch {
            self.out.write_lines(line, 1, Writer::Queue);
            return;
        }
        self.pending.extend_from_slice(line);
        self.lines += 1;
    }

    fn write_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        self.out
            .write_lines(&self.pending, self.lines, Writer::Queue);
        self.pending.clear();
        self.lines = 0;
    }
}

/// Writes one ERROR line to postern's log at once, bypassing the writer thread (for a
/// process about to `_exit`, which may have none: a forked child). Best effort.
pub fn write_direct_error(target: &str, message: &str) {
    let Some(logs) = LOGS.get() else {
        let _ = writeln!(stderr_out(), "postern: {message}");
        return;
    };
    let now = Timestamp(SystemTime::now());
    let line = if logs.json {
        let text = |v: &str| serde_json::to_string(v).unwrap_or_default();
        format!(
            "{{\"timestamp\":\"{now}\",\"level\":\"ERROR\",\"fields\":{{\"message\":{}}},\"target\":{}}}\n",
            text(message),
            text(target)
        )
    } else {
        format!("{now} ERROR {target}: {message}\n")
    };
    if let Some(out) = logs.outputs.first() {
        let _ = out.write_now(line.as_bytes());
    }
}

/// postern's own handle on stderr: a duplicate of fd 2 taken at the start, high and
/// close-on-exec. An app that closes fd 2 (`os.close(2)`, a daemonising library) would
/// otherwise have postern's lines (other requests' access lines and tracebacks)
/// written into whatever next gets fd 2: an accepted client connection.
/// regression: exactly that, a client's response starting with another's access line.
fn stderr_out() -> &'static File {
    static ERR: OnceLock<File> = OnceLock::new();
    ERR.get_or_init(|| {
        // High, out of the way of the low numbers an app or a library opens and
        // closes; the lowest free one where the descriptor limit is under 100.
        let dup = rustix::io::fcntl_dupfd_cloexec(io::stderr(), 100)
            .or_else(|_| rustix::io::fcntl_dupfd_cloexec(io::stderr(), 3));
        match dup {
            Ok(fd) => File::from(fd),
            // No stderr at all (fd 2 closed at the start): the lines go nowhere, never
            // to a descriptor opened later.
            Err(_) => File::options()
                .write(true)
                .open("/dev/null")
                .expect("/dev/null opens"),
        }
    })
}

/// The turn processes take on an output that is not a regular file. A regular file
/// needs none: the kernel keeps each `O_APPEND` write whole (and a writer thread never
/// splits a line between writes).
fn shared_turn(regular: bool) -> Option<SharedLock> {
    if regular {
        return None;
    }
    SharedLock::new().ok()
}

/// Whether `file` is a regular file (not a pipe, socket, terminal or other device).
fn is_regular(file: &File) -> bool {
    rustix::fs::fstat(file)
        .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_file())
}

/// `write_all`, also saying how many bytes went out before it failed.
fn write_counting(mut file: &File, mut bytes: &[u8]) -> (usize, io::Result<()>) {
    let mut written = 0;
    while !bytes.is_empty() {
        match file.write(bytes) {
            Ok(0) => return (written, Err(io::ErrorKind::WriteZero.into())),
            Ok(n) => {
                written += n;
                bytes = &bytes[n..];
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (written, Err(e)),
        }
    }
    (written, Ok(()))
}

/// `tracing`'s writer: each event arrives as one `write_all`.
struct ToOutput(Arc<Output>);

struct LineWriter<'a>(&'a Output);

impl<'a> MakeWriter<'a> for ToOutput {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> LineWriter<'a> {
        LineWriter(&self.0)
    }
}

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_line(buf);
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_line(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

// ---- SIGUSR1: reopen ----

fn install_sigusr1() {
    // Through libc: rustix has no sigaction outside its experimental runtime module.
    // SAFETY: the handler only makes async-signal-safe system calls (open, dup3, close)
    // and reads data that is immutable once LOGS is set; `action` is fully initialised
    // (zeroed, then an empty mask).
    let r = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigusr1 as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut())
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        tracing::warn!(error = %e, "cannot handle SIGUSR1; log files will not be reopened");
    }
}

/// After the app's import: an app that put a SIGUSR1 handler of its own in place
/// (`faulthandler.register(signal.SIGUSR1)`, `signal.signal`) while postern writes log
/// files would have them never reopened (logrotate's files written on, deleted or
/// not), so postern's handler is put back and a warning says so. With no log file the
/// app keeps its handler.
/// regression (probe): the app's handler took SIGUSR1 in silence.
pub fn take_back_sigusr1() {
    let Some(logs) = LOGS.get() else { return };
    if !logs
        .outputs
        .iter()
        .any(|o| matches!(o.kind, Kind::File { .. }))
    {
        return;
    }
    // SAFETY: reads the current action into a zeroed struct; changes nothing.
    let current = unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGUSR1, std::ptr::null(), &mut old);
        old.sa_sigaction
    };
    if current == on_sigusr1 as extern "C" fn(libc::c_int) as libc::sighandler_t {
        return;
    }
    install_sigusr1();
    tracing::warn!("the app set a SIGUSR1 handler of its own while it was imported (faulthandler.register or signal.signal): postern takes it back, since it reopens its log files on SIGUSR1 (logrotate's postrotate); for every thread's Python stack use SIGUSR2 (a worker dumps its stacks into postern's log on it; a single process leaves SIGUSR2 to the app)");
}

extern "C" fn on_sigusr1(_: libc::c_int) {
    // errno is libc's (thread-local): the interrupted code must find it unchanged.
    // rustix's default backend (raw system calls) does not set it; this keeps the
    // handler right with its libc backend too.
    // SAFETY: reading and writing this thread's errno.
    let saved = unsafe { *libc::__errno_location() };
    reopen_files();
    crate::stop::logs_reopened();
    unsafe { *libc::__errno_location() = saved };
}

/// [`Output::reopen_error`] for a reopen refused by [`open_log_file`]'s link rule (not an
/// errno: those are positive).
const LINK_REFUSED: i32 = -1;

/// Longest path [`open_log_file`] follows a link to (PATH_MAX, with its NUL).
const PATH_BYTES: usize = 4096;

/// Links [`open_log_file`] follows in a row before it gives up (ELOOP).
const MAX_LINKS: usize = 16;

/// Opens a log file to append to (creating it, mode [`FILE_MODE`]), following a symbolic
/// link at the path only when root or this process's effective user owns it (the rule of
/// the kernel's `fs.protected_symlinks`, applied everywhere: postern opens its logs as
/// root before `--uid`, and a link the `--uid` user or anyone else planted could make it
/// append to any file). Each link is opened itself (`O_PATH | O_NOFOLLOW`), checked, and
/// its target read from that same descriptor, so a link swapped after the check is never
/// followed. Links the kernel makes in /proc (`/dev/stdout` -> `/proc/self/fd/1`, which
/// names a pipe or a terminal, not a path) are followed by the kernel: no user can plant
/// one. The directories on the way are resolved as given (the operator's path). On a
/// refused link, `refused` gets the link's path and owner, and the error is EPERM.
/// Async-signal-safe (the SIGUSR1 handler calls it): system calls and stack buffers only.
fn open_log_file(
    path: &std::ffi::CStr,
    refused: &mut dyn FnMut(&std::ffi::CStr, u32),
) -> rustix::io::Result<OwnedFd> {
    use rustix::fs::{FileType, Mode, OFlags, CWD};
    use rustix::io::Errno;
    // O_NONBLOCK for the open only: a FIFO at the path (another user's, in a sticky
    // directory) with no reader fails with ENXIO instead of blocking the start; writes
    // then block as they always did (the flag is cleared, see `blocking`).
    let flags =
        OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let mode = Mode::from_raw_mode(FILE_MODE);
    let blocking = |fd: rustix::io::Result<OwnedFd>| {
        let fd = fd?;
        rustix::fs::fcntl_setfl(&fd, OFlags::APPEND)?;
        Ok(fd)
    };
    let mut cur = [0u8; PATH_BYTES];
    let bytes = path.to_bytes_with_nul();
    cur.get_mut(..bytes.len())
        .ok_or(Errno::NAMETOOLONG)?
        .copy_from_slice(bytes);
    let mut len = bytes.len() - 1;
    for _ in 0..=MAX_LINKS {
        let here = std::ffi::CStr::from_bytes_with_nul(&cur[..=len]).map_err(|_| Errno::INVAL)?;
        match rustix::fs::openat(CWD, here, flags | OFlags::NOFOLLOW, mode) {
            Err(Errno::LOOP) => {}
            other => return blocking(other),
        }
        // A link at the last component (O_NOFOLLOW's ELOOP): look at the link itself.
        let link = rustix::fs::openat(
            CWD,
            here,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let st = rustix::fs::fstat(&link)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::Symlink {
            return Err(Errno::LOOP);
        }
        if rustix::fs::fstatfs(&link).is_ok_and(|fs| fs.f_type == rustix::fs::PROC_SUPER_MAGIC) {
            return blocking(rustix::fs::openat(CWD, here, flags, mode));
        }
        if st.st_uid != 0 && st.st_uid != rustix::process::geteuid().as_raw() {
            refused(here, st.st_uid);
            return Err(Errno::PERM);
        }
        let mut target = [0u8; PATH_BYTES];
        let n = rustix::fs::readlinkat_raw(&link, c"", &mut target[..])?;
        if n == 0 || n >= PATH_BYTES {
            return Err(Errno::NAMETOOLONG);
        }
        // A relative target is relative to the link's directory.
        let keep = if target[0] == b'/' {
            0
        } else {
            cur[..len]
                .iter()
                .rposition(|&b| b == b'/')
                .map_or(0, |i| i + 1)
        };
        if keep + n >= PATH_BYTES {
            return Err(Errno::NAMETOOLONG);
        }
        cur[keep..keep + n].copy_from_slice(&target[..n]);
        len = keep + n;
        cur[len] = 0;
    }
    Err(Errno::LOOP)
}

/// How the last [`reopen_files`] went: how many files it reopened and how many it could
/// not, for [`say_reopened`]. Each output's own error is taken (and said) by whichever
/// thread writes to it next, maybe before `say_reopened` runs.
/// regression (review 405): a single process said "log files reopened" after a failed
/// reopen whose error a log line in between had taken.
static LAST_REOPEN: AtomicU64 = AtomicU64::new(0);

/// Opens each log file's path again and puts the new file under the old descriptor.
/// Async-signal-safe: no allocation, no lock.
fn reopen_files() {
    let Some(logs) = LOGS.get() else { return };
    let (mut done, mut failed) = (0u64, 0u64);
    for out in &logs.outputs {
        let Kind::File { c_path, file, .. } = &out.kind else {
            continue;
        };
        let mut planted = false;
        let new = match open_log_file(c_path.as_c_str(), &mut |_, _| planted = true) {
            Ok(fd) => fd,
            Err(e) => {
                let code = if planted {
                    LINK_REFUSED
                } else {
                    e.raw_os_error()
                };
                out.reopen_error.store(code, Ordering::Relaxed);
                failed += 1;
                continue;
            }
        };
        done += 1;
        // SAFETY: `file`'s descriptor stays open as long as LOGS (never dropped); this
        // copy of it is only the target of dup3 and is never closed (ManuallyDrop).
        let mut target =
            std::mem::ManuallyDrop::new(unsafe { OwnedFd::from_raw_fd(file.as_raw_fd()) });
        // dup3 atomically makes `file`'s descriptor refer to the new file; dropping
        // `new` then closes the spare descriptor.
        let _ = rustix::io::dup3(&new, &mut target, rustix::io::DupFlags::CLOEXEC);
    }
    LAST_REOPEN.store(done << 32 | failed, Ordering::Relaxed);
}

// ---- a request's span, and its fields when the span is off ----

/// A request's `request` span (INFO; made by the server layer): every line logged
/// about the request is inside it, and names its id, method, path and peer. At a level
/// that disables it (`--log-level warn` or `error`) the span costs nothing, and so a
/// WARN or ERROR about the request named none of them: the request's id and peer are
/// then kept aside ([`Named`]), and a line logged while this is entered names them (the
/// formatter, [`WithRequest`], writes `request{request_id=… peer=…}` where the span's
/// fields would be). Method and path are left out there: finding and keeping them
/// (two look-ups in the head, its buffer shared) cost ~900 instructions a request more
/// (`benches/instructions.py` fcgi); the id ties the line to the request's access line,
/// which has them. What this costs at `--log-level warn`: one small allocation per
/// request, a pointer swapped and a reference counted per entry, ~0-400 instructions a
/// request (hello within the noise, fcgi ~+350-400), where an enabled span costs thousands (the registry, and its
/// fields formatted whether or not a line is logged).
/// regression: at `--log-level warn` a bad body's `could not read the request body;
/// closing` named no peer.
#[derive(Clone)]
pub struct RequestSpan {
    span: tracing::Span,
    named: Option<Arc<Named>>,
    /// The peer, for the bad-input limiter's count (`None` for [`Self::none`]).
    peer: Option<Arc<str>>,
}

/// The id and peer of a request whose span is off (shared: entering it is a pointer's
/// swap and a reference count, not a copy of the id).
struct Named {
    id: RequestId,
    peer: Arc<str>,
}

thread_local! {
    /// The request whose (disabled) span this thread has entered.
    static NAMED: std::cell::Cell<Option<Arc<Named>>> = const { std::cell::Cell::new(None) };
}

impl RequestSpan {
    /// `span`, the request's; when it is disabled and errors are logged, the request's
    /// id and peer are kept for the lines about it.
    pub fn new(span: tracing::Span, peer: &Arc<str>, id: RequestId) -> Self {
        let named =
            (span.is_disabled() && tracing::level_enabled!(tracing::Level::ERROR)).then(|| {
                Arc::new(Named {
                    id,
                    peer: Arc::clone(peer),
                })
            });
        RequestSpan {
            span,
            named,
            peer: Some(Arc::clone(peer)),
        }
    }

    /// No request (a placeholder once the span is taken).
    pub fn none() -> Self {
        RequestSpan {
            span: tracing::Span::none(),
            named: None,
            peer: None,
        }
    }

    /// The request's peer as its lines name it (empty for [`Self::none`]).
    pub fn peer(&self) -> &str {
        self.peer.as_deref().unwrap_or("")
    }

    /// The `tracing` span is off: nothing is recorded in it.
    pub fn is_disabled(&self) -> bool {
        self.span.is_disabled()
    }

    /// Enters the request: lines logged until the guard drops are about it.
    pub fn enter(&self) -> Entered<'_> {
        Entered {
            _span: self.span.enter(),
            prev: self.named.clone().map(|n| swap_named(Some(n))),
        }
    }

    /// [`Self::enter`], the guard owning the span.
    pub fn entered(self) -> EnteredSpan {
        let prev = self.named.map(|n| swap_named(Some(n)));
        EnteredSpan {
            _span: self.span.entered(),
            prev,
        }
    }

    pub fn in_scope<T>(&self, f: impl FnOnce() -> T) -> T {
        let _e = self.enter();
        f()
    }

    /// `fut`, polled inside the request (as `tracing::Instrument`).
    pub fn instrument<F: std::future::Future>(&self, fut: F) -> Instrumented<F> {
        Instrumented {
            fut,
            span: self.clone(),
        }
    }
}

fn swap_named(n: Option<Arc<Named>>) -> Option<Arc<Named>> {
    NAMED.with(|c| c.replace(n))
}

/// [`RequestSpan::enter`]'s guard: leaves the request when dropped.
pub struct Entered<'a> {
    _span: tracing::span::Entered<'a>,
    /// What the thread named before (`None`: this request named nothing).
    prev: Option<Option<Arc<Named>>>,
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        if let Some(prev) = self.prev.take() {
            swap_named(prev);
        }
    }
}

/// [`RequestSpan::entered`]'s guard.
pub struct EnteredSpan {
    _span: tracing::span::EnteredSpan,
    prev: Option<Option<Arc<Named>>>,
}

impl Drop for EnteredSpan {
    fn drop(&mut self) {
        if let Some(prev) = self.prev.take() {
            swap_named(prev);
        }
    }
}

/// [`RequestSpan::instrument`]'s future.
pub struct Instrumented<F> {
    fut: F,
    span: RequestSpan,
}

impl<F: std::future::Future> std::future::Future for Instrumented<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        // SAFETY: `fut` is pinned with `self` (never moved out of it, no `Unpin` given
        // for `Instrumented`); `span` is not structurally pinned.
        let me = unsafe { self.get_unchecked_mut() };
        let _e = me.span.enter();
        // SAFETY: as above.
        unsafe { std::pin::Pin::new_unchecked(&mut me.fut) }.poll(cx)
    }
}

/// The event format of postern's log, adding the id and peer of the request whose span
/// is off ([`RequestSpan`]) where the span would have put its fields: text
/// `LEVEL request{request_id=… peer=…}: target: …`, JSON a `"span"` object. Such a line
/// is formatted into a buffer first, without colour (on a terminal, at a level that
/// disables the span, and only such lines).
struct WithRequest<F> {
    inner: F,
    json: bool,
}

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for WithRequest<F>
where
    S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'w> tracing_subscriber::fmt::FormatFields<'w> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let named = NAMED.with(|c| {
            let n = c.take();
            c.set(n.clone());
            n
        });
        let Some(named) = named else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner.format_event(
            ctx,
            tracing_subscriber::fmt::format::Writer::new(&mut line),
            event,
        )?;
        let line = if self.json {
            with_request_json(&line, &named)
        } else {
            with_request_text(&line, event.metadata().level().as_str(), &named)
        };
        writer.write_str(&line)
    }
}

/// A text line with the request's fields after its level, as a span's are.
fn with_request_text(line: &str, level: &str, n: &Named) -> String {
    let fields = format!("request{{request_id={} peer={}}}: ", n.id, n.peer);
    // `TIMESTAMP LEVEL target: …`: the timestamp holds no upper-case word.
    let at = line
        .find(level)
        .map(|i| i + level.len())
        .filter(|&i| line.as_bytes().get(i) == Some(&b' '));
    match at {
        Some(i) => format!("{} {fields}{}", &line[..i], &line[i + 1..]),
        None => format!("{} {}\n", line.trim_end(), fields.trim_end_matches(": ")),
    }
}

/// A JSON line with a `"span"` object for the request, as `with_current_span` writes.
fn with_request_json(line: &str, n: &Named) -> String {
    let body = line.trim_end();
    let Some(open) = body.strip_suffix('}') else {
        return line.to_owned();
    };
    let text = |v: &str| serde_json::to_string(v).unwrap_or_default();
    format!(
        "{open},\"span\":{{\"request_id\":{},\"peer\":{},\"name\":\"request\"}}}}\n",
        text(n.id.as_str()),
        text(&n.peer)
    )
}

// ---- request ids ----

/// `{v:08x}`, eight nibbles at once: each spread into its own byte, then turned into
/// its digit (`'0' + d`, plus 39 more from 10 on, to reach `'a'`).
fn hex8(v: u32) -> [u8; 8] {
    let mut x = u64::from(v);
    x = (x | x << 16) & 0x0000_FFFF_0000_FFFF;
    x = (x | x << 8) & 0x00FF_00FF_00FF_00FF;
    x = (x | x << 4) & 0x0F0F_0F0F_0F0F_0F0F;
    let letters = ((x + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    (x + 0x3030_3030_3030_3030 + letters * 39).to_be_bytes()
}

static ID_PREFIX: AtomicU64 = AtomicU64::new(0);
static ID_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The longest request id taken from the front server.
const MAX_SENT_ID: usize = 64;

/// A request's id: the front server's (`HTTP_X_REQUEST_ID`, e.g. nginx's `$request_id`)
/// when it sent a usable one, else one postern makes: 32 hex digits (like nginx's), a
/// random per-process prefix and a counter, so ids are unique across workers and restarts
/// without a random draw per request.
#[derive(Clone, Copy)]
pub struct RequestId {
    buf: [u8; MAX_SENT_ID],
    len: u8,
    generated: bool,
}

impl RequestId {
    /// The id for a request with this head.
    pub fn for_head(head: &Head) -> RequestId {
        head.get(b"HTTP_X_REQUEST_ID")
            .and_then(RequestId::sent)
            .unwrap_or_else(RequestId::generate)
    }

    /// An id the front server sent, if it is one we can log as it is: 1 to 64 characters
    /// from letters, digits and `-_.:+/=@` (hex, UUIDs, ULIDs, base64 all fit). Anything
    /// else (spaces, quotes, control bytes) would let a client forge log lines.
    pub fn sent(value: &[u8]) -> Option<RequestId> {
        let ok = |c: &u8| c.is_ascii_alphanumeric() || b"-_.:+/=@".contains(c);
        if value.is_empty() || value.len() > MAX_SENT_ID || !value.iter().all(ok) {
            return None;
        }
        let mut buf = [0u8; MAX_SENT_ID];
        buf[..value.len()].copy_from_slice(value);
        Some(RequestId {
            buf,
            len: value.len() as u8,
            generated: false,
        })
    }

    /// A new id of this process.
    pub fn generate() -> RequestId {
        let n = ID_COUNTER.fetch_add(1, Ordering::Relaxed) + 1;
        let prefix = ID_PREFIX.load(Ordering::Relaxed);
        let mut buf = [0u8; MAX_SENT_ID];
        // `{prefix:016x}{n:016x}` by hand: `write!` costs ~1k instructions a request.
        for (i, v) in [prefix >> 32, prefix, n >> 32, n].into_iter().enumerate() {
            buf[i * 8..i * 8 + 8].copy_from_slice(&hex8(v as u32));
        }
        RequestId {
            buf,
            len: 32,
            generated: true,
        }
    }

    /// The id's bytes (ASCII), without `as_str`'s UTF-8 check.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII goes in (checked in `sent`, hex in `generate`).
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or("-")
    }

    /// Made by postern (the front server sent none, or one that could not be logged).
    pub fn generated(&self) -> bool {
        self.generated
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RequestId({})", self.as_str())
    }
}

// ---- the access line ----

/// How a response ended, as the access line tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Sent whole.
    Complete,
    /// Cut short by postern (an app error after the headers): the connection was aborted.
    Incomplete,
    /// The front server went away first.
    ClientGone,
    /// postern closed the connection: the front server read nothing of the response
    /// for `--read-timeout` (after some of it, often: the socket's buffers took that).
    Stalled,
    /// postern closed the connection: no request body bytes came for `--read-timeout`.
    BodyStalled,
    /// postern closed the connection for one waiting at `--max-connections`: the
    /// request body came too slowly.
    BodyTooSlow,
    /// postern closed the connection: the front server sent bytes that are not the
    /// protocol on it while the request's body still came (FastCGI).
    BadInput,
    /// The request ran past `--timeout`: postern answered `504 Gateway Timeout` for it
    /// (FastCGI) and killed its worker.
    TimedOut,
    /// The request ran past `--timeout` and its worker was killed, its response cut off.
    TimedOutCut,
    /// The request ran past `--timeout` and its worker was killed before its response
    /// started: the status is the front server's answer, 502.
    TimedOutUnanswered,
    /// A stop cut the request off (its ASGI task cancelled at `--graceful-timeout`, an
    /// immediate stop, another request's `--timeout`) before its response started:
    /// postern answered `503 Service Unavailable` for it.
    StopAnswered,
}

impl Ending {
    /// The same ending for a request that ran past `--timeout`: a whole response is
    /// postern's 504, one cut off is cut for the timeout.
    pub fn past_timeout(self) -> Ending {
        match self {
            Ending::Complete => Ending::TimedOut,
            Ending::Incomplete => Ending::TimedOutCut,
            other => other,
        }
    }
}

/// One finished request, for its access line.
pub struct Access<'a> {
    pub head: &'a Head,
    pub id: &'a RequestId,
    pub protocol: Protocol,
    pub status: u16,
    pub ending: Ending,
    /// Response bytes written (head and body).
    pub bytes: u64,
    /// When the request was accepted (the duration runs from here).
    pub started: Instant,
}

thread_local! {
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Logs, in the request's span, why writing its response failed: a front server that
/// read nothing of it for `--read-timeout` (a stall: postern gives up, cuts the response
/// off and closes) is named at WARN, as a stalled request body is; anything else (a
/// reset, a broken pipe: the client went away) is at debug, an ordinary abort.
// regression (audit): a stall was at debug, so at INFO the only line was the access
// line 'client went away before the response was complete', while nothing had closed.
/// True for a stall ([`Ending::Stalled`]).
pub fn write_failed(e: &io::Error) -> bool {
    if e.kind() == io::ErrorKind::TimedOut {
        tracing::warn!("{e}: the response is cut off and the connection closed");
        true
    } else {
        tracing::debug!(error = %e, "writing the response failed");
        false
    }
}

/// Records a finished request's status and duration (ms) in the current span, the
/// request's: lines logged after the response carry them.
pub fn record_end(status: u16, started: Instant) {
    let span = tracing::Span::current();
    span.record("status", status);
    span.record("ms", tracing::field::display(Millis(started.elapsed())));
}

/// Writes a finished request's access line, if the access log is on.
pub fn access(a: &Access<'_>) {
    write_access(a, a.started.elapsed(), SystemTime::now());
}

fn write_access(a: &Access<'_>, elapsed: Duration, now: SystemTime) {
    let Some((out, format)) = LOGS.get().and_then(|l| l.access.as_ref()) else {
        return;
    };
    if !ACCESS_ON.load(Ordering::Relaxed) {
        return;
    }
    let pid = PID.load(Ordering::Relaxed);
    LINE.with(|line| {
        let mut line = line.borrow_mut();
        line.clear();
        format_access(&mut line, *format, a, elapsed, now, pid);
        out.write_line(line.as_bytes());
    });
}

/// A request a Python thread has finished, for an access line written later.
pub struct Finished {
    pub head: Head,
    pub id: RequestId,
    pub protocol: Protocol,
    pub status: u16,
    pub ending: Ending,
    pub bytes: u64,
    pub started: Instant,
}

thread_local! {
    /// This thread's finished request whose access line is not written yet, with its
    /// duration and end time.
    static DEFERRED: RefCell<Option<(Finished, Duration, SystemTime)>> = const { RefCell::new(None) };
}

/// Like [`access`] for a request a Python thread served, which holds the GIL now: the
/// duration and time are taken now, the line is formatted and written by
/// [`write_deferred`], which the thread calls once it has released the GIL (while it
/// waits for its next request), so formatting never holds up the other Python threads.
/// A line still pending from an earlier request is written first.
pub fn access_later(f: Finished) {
    if !access_enabled() {
        return;
    }
    let (elapsed, now) = (f.started.elapsed(), SystemTime::now());
    write_deferred();
    DEFERRED.with(|d| *d.borrow_mut() = Some((f, elapsed, now)));
}

/// Writes the access line [`access_later`] left on this thread, if any.
pub fn write_deferred() {
    let Some((f, elapsed, now)) = DEFERRED.with(|d| d.borrow_mut().take()) else {
        return;
    };
    let a = Access {
        head: &f.head,
        id: &f.id,
        protocol: f.protocol,
        status: f.status,
        ending: f.ending,
        bytes: f.bytes,
        started: f.started,
    };
    write_access(&a, elapsed, now);
}

/// Formats one access line (with its newline) into `out`.
fn format_access<'a>(
    out: &mut String,
    format: AccessLogFormat,
    a: &Access<'a>,
    elapsed: Duration,
    now: SystemTime,
    pid: u32,
) {
    let v = Vars::of(a.head);
    let var = |x: Option<&'a [u8]>| x.filter(|v| !v.is_empty());
    let method = var(v.method);
    // Without REQUEST_URI, the path the app sees: SCRIPT_NAME + PATH_INFO.
    // regression (probe 380): a request with SCRIPT_NAME alone logged `path=-`.
    let joined;
    // SCRIPT_NAME without its trailing `/`, as the environ has it (review 392: `/app/`
    // + `/app/x` read `/app//app/x`, `/` + `/x` read `//x`).
    let script = var(v.script_name).map(|s| s.strip_suffix(b"/").unwrap_or(s));
    let uri = match (
        var(v.uri),
        script.filter(|s| !s.is_empty()),
        var(v.path_info),
    ) {
        (Some(u), ..) => Some(u),
        // A PATH_INFO that holds SCRIPT_NAME already (nginx's stock params, uwsgi
        // modifier1 30: the prefix the environ strips) is the whole path.
        // regression (review 391): `/app` + `/app/x` read `/app/app/x`.
        (None, Some(s), Some(p))
            if !(p.starts_with(s) && matches!(p.get(s.len()), None | Some(b'/'))) =>
        {
            joined = [s, p].concat();
            Some(joined.as_slice())
        }
        (None, s, p) => p.or(s).or(var(v.script_name)),
    };
    let remote = var(v.remote_addr);
    let (level, message) = match a.ending {
        Ending::Complete => ("INFO", "served"),
        Ending::Incomplete => ("WARN", "response incomplete; connection aborted"),
        Ending::ClientGone => ("INFO", "client went away before the response was complete"),
        // postern cut these off (each has its WARN in postern's log too).
        // regression: they said `client went away`, as if the front server had closed.
        // The front server may have read much of it before it stopped (the line's bytes).
        // regression: it said `(the front server read none of it)`, with bytes=2990080.
        Ending::Stalled => ("WARN", "closed by postern: the response stalled past --read-timeout (the front server stopped reading it)"),
        Ending::BodyStalled => ("WARN", "closed by postern: the request body stalled past --read-timeout"),
        Ending::BodyTooSlow => ("WARN", "closed by postern: the request body came too slowly, with another waiting for room (--max-connections, or every Python thread or --max-concurrency place taken)"),
        Ending::BadInput => ("WARN", "closed by postern: bad input from the front server on the connection while the request body came"),
        Ending::TimedOut => ("WARN", "answered 504 by postern: the request ran past --timeout (its worker is replaced)"),
        Ending::TimedOutCut => ("WARN", "cut off by postern: the request ran past --timeout and its worker was killed; its response is incomplete"),
        Ending::TimedOutUnanswered => ("WARN", "cut off by postern: the request ran past --timeout and its worker was killed before its response started (status 502: the front server's answer)"),
        // regression (probe 426): it read `served`, as if the app had answered 503.
        Ending::StopAnswered => ("WARN", "answered 503 by postern: a stop cut the request off before its response started (--graceful-timeout, an immediate stop, or another request's --timeout)"),
    };
    match format {
        // The default format is built by hand (no `fmt` machinery, the date part of
        // the time cached per second): the line costs a quarter of what `write!` did.
        AccessLogFormat::Text => {
            let mut n = itoa::Buffer::new();
            push_timestamp(out, now);
            out.push_str("  ");
            out.push_str(level);
            out.push_str(" postern::access: ");
            out.push_str(message);
            out.push_str(" request_id=");
            // Quoted when it holds `=` (base64 padding), as logfmt readers need.
            logfmt(out, Some(a.id.as_str().as_bytes()));
            out.push_str(" pid=");
            out.push_str(n.format(pid));
            out.push_str(" protocol=");
            out.push_str(a.protocol.name());
            out.push_str(" remote=");
            logfmt(out, remote);
            out.push_str(" method=");
            logfmt(out, method);
            out.push_str(" path=");
            logfmt(out, uri);
            out.push_str(" status=");
            out.push_str(n.format(a.status));
            out.push_str(" bytes=");
            out.push_str(n.format(a.bytes));
            out.push_str(" ms=");
            let us = elapsed.as_micros();
            out.push_str(n.format(us / 1000));
            let cs = ((us % 1000) / 10) as u8;
            out.push('.');
            out.push((b'0' + cs / 10) as char);
            out.push((b'0' + cs % 10) as char);
            out.push('\n');
        }
        AccessLogFormat::Json => {
            fn text(v: Option<&[u8]>) -> Option<std::borrow::Cow<'_, str>> {
                v.map(String::from_utf8_lossy)
            }
            let line = JsonLine {
                timestamp: Timestamp(now).to_string(),
                level,
                target: "postern::access",
                message,
                request_id: a.id.as_str(),
                pid,
                protocol: a.protocol.name(),
                remote_addr: text(remote),
                remote_user: text(var(v.remote_user)),
                method: text(method),
                uri: text(uri),
                server_protocol: text(var(v.server_protocol)),
                status: a.status,
                bytes: a.bytes,
                duration_ms: (elapsed.as_micros() as f64) / 1000.0,
                referer: text(var(v.referer)),
                user_agent: text(var(v.user_agent)),
            };
            if let Ok(json) = serde_json::to_string(&line) {
                out.push_str(&json);
                out.push('\n');
            }
        }
        AccessLogFormat::Combined => {
            // nginx's `combined` ($remote_addr - $remote_user [$time_local] "$request"
            // $status $body_bytes_sent "$http_referer" "$http_user_agent"), in UTC, then
            // the duration in seconds ($request_time) and postern's own fields.
            // The two unquoted fields: a space there would shift every field after it.
            escaped_word(out, remote);
            out.push_str(" - ");
            escaped_word(out, var(v.remote_user));
            let _ = write!(out, " [{}] \"", CombinedTime(now));
            escaped(out, method);
            out.push(' ');
            escaped(out, uri);
            out.push(' ');
            escaped(out, var(v.server_protocol));
            let _ = write!(out, "\" {} {} \"", a.status, a.bytes);
            escaped(out, var(v.referer));
            out.push_str("\" \"");
            escaped(out, var(v.user_agent));
            let secs = elapsed.as_millis();
            let _ = write!(out, "\" {}.{:03} request_id=", secs / 1000, secs % 1000);
            logfmt(out, Some(a.id.as_str().as_bytes()));
            let _ = writeln!(out, " pid={pid} protocol={}", a.protocol.name());
        }
    }
}

/// The variables an access line shows, found in one pass over the head (the last of
/// a repeated name wins, as with [`Head::get`]).
#[derive(Default)]
struct Vars<'a> {
    method: Option<&'a [u8]>,
    uri: Option<&'a [u8]>,
    path_info: Option<&'a [u8]>,
    script_name: Option<&'a [u8]>,
    remote_addr: Option<&'a [u8]>,
    remote_user: Option<&'a [u8]>,
    server_protocol: Option<&'a [u8]>,
    referer: Option<&'a [u8]>,
    user_agent: Option<&'a [u8]>,
}

impl<'a> Vars<'a> {
    fn of(head: &'a Head) -> Vars<'a> {
        let mut v = Vars::default();
        for (k, val) in head.pairs() {
            let slot = match k {
                b"REQUEST_METHOD" => &mut v.method,
                b"REQUEST_URI" => &mut v.uri,
                b"PATH_INFO" => &mut v.path_info,
                b"SCRIPT_NAME" => &mut v.script_name,
                b"REMOTE_ADDR" => &mut v.remote_addr,
                b"REMOTE_USER" => &mut v.remote_user,
                b"SERVER_PROTOCOL" => &mut v.server_protocol,
                b"HTTP_REFERER" => &mut v.referer,
                b"HTTP_USER_AGENT" => &mut v.user_agent,
                _ => continue,
            };
            *slot = Some(val);
        }
        v
    }
}

thread_local! {
    /// The whole seconds of the last timestamp written on this thread and their text
    /// (`2025-11-29T17:40:01`): a date is computed once a second, not once a line.
    static SECOND: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
}

/// Appends what [`Timestamp`] shows, without `fmt`.
fn push_timestamp(out: &mut String, now: SystemTime) {
    let since = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != secs {
            let mut text = String::with_capacity(40);
            let _ = write!(
                text,
                "{}",
                Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
            );
            if let Some(date) = text.as_bytes().get(..19) {
                cached.1.copy_from_slice(date);
                cached.0 = secs;
            }
        }
        // ASCII digits and separators, written above.
        out.push_str(std::str::from_utf8(&cached.1).unwrap_or("-"));
    });
    let us = since.subsec_micros();
    out.push('.');
    for div in [100_000, 10_000, 1_000, 100, 10, 1] {
        out.push((b'0' + (us / div % 10) as u8) as char);
    }
    out.push('Z');
}

/// A JSON access line: one flat object, fields in this order.
#[derive(serde::Serialize)]
struct JsonLine<'a> {
    timestamp: String,
    level: &'a str,
    target: &'a str,
    message: &'a str,
    request_id: &'a str,
    pid: u32,
    protocol: &'a str,
    remote_addr: Option<std::borrow::Cow<'a, str>>,
    remote_user: Option<std::borrow::Cow<'a, str>>,
    method: Option<std::borrow::Cow<'a, str>>,
    uri: Option<std::borrow::Cow<'a, str>>,
    server_protocol: Option<std::borrow::Cow<'a, str>>,
    status: u16,
    bytes: u64,
    duration_ms: f64,
    referer: Option<std::borrow::Cow<'a, str>>,
    user_agent: Option<std::borrow::Cow<'a, str>>,
}

/// A logfmt value: bare when it is plain, else quoted with `\"`, `\\` and `\xHH` escapes
/// (a request's bytes must never start a new log line); `-` when absent.
fn logfmt(out: &mut String, v: Option<&[u8]>) {
    let Some(v) = v else {
        out.push('-');
        return;
    };
    let plain = |c: &u8| c.is_ascii_graphic() && !matches!(c, b'"' | b'\\' | b'=');
    if v.iter().all(plain) {
        // All ASCII, so valid UTF-8.
        out.push_str(std::str::from_utf8(v).unwrap_or("-"));
        return;
    }
    out.push('"');
    for &c in v {
        match c {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b' '..=b'~' => out.push(c as char),
            _ => {
                let _ = write!(out, "\\x{c:02X}");
            }
        }
    }
    out.push('"');
}

/// A field of a combined line, escaped as nginx does (`"`, `\`, control and non-ASCII
/// bytes as `\xHH`); `-` when absent.
fn escaped(out: &mut String, v: Option<&[u8]>) {
    let Some(v) = v else {
        out.push('-');
        return;
    };
    for &c in v {
        match c {
            b'"' | b'\\' => {
                let _ = write!(out, "\\x{c:02X}");
            }
            b' '..=b'~' => out.push(c as char),
            _ => {
                let _ = write!(out, "\\x{c:02X}");
            }
        }
    }
}

/// An unquoted field of a combined line (`$remote_addr`, `$remote_user`): as
/// [`escaped`], and a space as `\x20` too, so the field stays one word for the parsers
/// of the combined format (goaccess, awstats, `cut -d' '`). nginx writes these two raw;
/// `$remote_user` comes from the client's `Authorization: Basic` header (nginx's stock
/// `fastcgi_params` pass it as REMOTE_USER), so a client could otherwise forge fields.
fn escaped_word(out: &mut String, v: Option<&[u8]>) {
    let Some(v) = v else {
        out.push('-');
        return;
    };
    for &c in v {
        match c {
            b'!'..=b'~' if c != b'"' && c != b'\\' => out.push(c as char),
            _ => {
                let _ = write!(out, "\\x{c:02X}");
            }
        }
    }
}

/// [`Untrusted`] as a `key=value` field of the request span, where the text log writes
/// it bare: in double quotes (`"` and `\` escaped) when it holds anything but printable
/// ASCII (a space or tab, a quote, a backslash, a control or non-ASCII character), so
/// that no value can pass for fields of its own (a path sent straight
/// to the socket as `/x peer=10.0.0.1` would otherwise read as a second `peer=`). Plain
/// values (nearly all) are written as they are; the JSON log quotes every string itself.
pub struct UntrustedField<'a>(pub &'a [u8]);

/// The text log is on (not JSON): [`UntrustedField`] quotes what needs it.
static TEXT_FIELDS: AtomicBool = AtomicBool::new(true);

impl std::fmt::Display for UntrustedField<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Printable ASCII but `"` and `\`: nothing that could separate fields (a tab, a
        // no-break space, U+3000 too; review 330) or need escaping.
        let bare = self
            .0
            .iter()
            .all(|&b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\');
        if bare || !TEXT_FIELDS.load(Ordering::Relaxed) {
            return Untrusted(self.0).fmt(f);
        }
        let put = |f: &mut std::fmt::Formatter<'_>, c: char| match c {
            '"' | '\\' => {
                f.write_char('\\')?;
                f.write_char(c)
            }
            c if unsafe_in_a_line(c) => write_escaped_char(f, c),
            c => f.write_char(c),
        };
        f.write_char('"')?;
        match std::str::from_utf8(self.0) {
            Ok(s) => s.chars().try_for_each(|c| put(f, c))?,
            Err(_) => self.0.iter().try_for_each(|&b| put(f, char::from(b)))?,
        }
        f.write_char('"')
    }
}

/// Request bytes as a field of postern's own log lines (the request span's method and
/// path): UTF-8 as it is (else each byte as latin-1), control characters as `\xHH` and
/// the Unicode line and paragraph separators as `\u{HHHH}`, so a request can neither
/// start a line of its own nor send escape sequences to a terminal.
pub struct Untrusted<'a>(pub &'a [u8]);

impl std::fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let put = |f: &mut std::fmt::Formatter<'_>, c: char| match c {
            c if unsafe_in_a_line(c) => write_escaped_char(f, c),
            c => f.write_char(c),
        };
        match std::str::from_utf8(self.0) {
            // The usual path: printable ASCII, written as it is.
            Ok(s) if s.bytes().all(|b| (b' '..=b'~').contains(&b)) => f.write_str(s),
            Ok(s) => s.chars().try_for_each(|c| put(f, c)),
            Err(_) => self.0.iter().try_for_each(|&b| put(f, char::from(b))),
        }
    }
}

/// A duration as milliseconds with two decimals.
struct Millis(Duration);

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let us = self.0.as_micros();
        write!(f, "{}.{:02}", us / 1000, (us % 1000) / 10)
    }
}

/// RFC 3339 in UTC with microseconds, as `tracing`'s own lines start.
pub struct Timestamp(pub SystemTime);

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = time::OffsetDateTime::from(self.0);
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.microsecond()
        )
    }
}

/// `[10/Oct/2000:13:55:36 +0000]`'s inside: the combined format's time, in UTC.
struct CombinedTime(SystemTime);

impl std::fmt::Display for CombinedTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = time::OffsetDateTime::from(self.0);
        let month = t.month().to_string();
        write!(
            f,
            "{:02}/{}/{:04}:{:02}:{:02}:{:02} +0000",
            t.day(),
            &month[..3],
            t.year(),
            t.hour(),
            t.minute(),
            t.second()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_level_is_filtered_without_env_filter() {
        let level = |s: &str| match Filter::of(s).unwrap() {
            Filter::Level(l) => Some(l),
            Filter::Directives(_) => None,
        };
        assert_eq!(level("info"), Some(LevelFilter::INFO));
        assert_eq!(level(" WARNING "), Some(LevelFilter::WARN));
        assert_eq!(level("critical"), Some(LevelFilter::ERROR));
        assert_eq!(level("debug,"), Some(LevelFilter::DEBUG));
        assert_eq!(level("5"), Some(LevelFilter::TRACE));
        assert_eq!(level("postern=debug,warn"), None);
        assert_eq!(level("warn,info"), None);
        assert_eq!(level("[request]=debug"), None);
        assert!(Filter::of("verbose").is_err());
    }

    #[test]
    fn hex8_is_lower_case_hex_of_eight_digits() {
        let mut v: u32 = 0x0123_4567;
        for _ in 0..10_000 {
            assert_eq!(hex8(v), *format!("{v:08x}").as_bytes());
            v = v.wrapping_mul(2_654_435_761).wrapping_add(0x9e37);
        }
        for v in [0, u32::MAX, 0xa0a0_a0a0, 0x0909_0909] {
            assert_eq!(hex8(v), *format!("{v:08x}").as_bytes());
        }
    }

    fn head(vars: &[(&str, &str)]) -> Head {
        let mut h = Head {
            buf: bytes::Bytes::new(),
            vars: Vec::new(),
            modifier30: false,
            content_length: 0,
        };
        for (k, v) in vars {
            h.push_var(k.as_bytes(), v.as_bytes());
        }
        h
    }

    /// 2025-11-29 17:40:01.123456 UTC.
    fn when() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_micros(1_764_438_001_123_456)
    }

    /// The lines `f` logs through a subscriber at `level` with postern's event format.
    fn lines_at(level: tracing::Level, json: bool, f: impl FnOnce()) -> String {
        #[derive(Clone)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf(Arc::default());
        let out = buf.clone();
        let fmt = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || out.clone());
        let filter = LevelFilter::from_level(level);
        let registry = tracing_subscriber::registry();
        let run = |d: tracing::Dispatch| tracing::dispatcher::with_default(&d, f);
        if json {
            run(registry
                .with(
                    fmt.json().event_format(WithRequest {
                        inner: tracing_subscriber::fmt::format()
                            .without_time()
                            .json()
                            .with_current_span(true)
                            .with_span_list(false),
                        json: true,
                    }),
                )
                .with(filter)
                .into());
        } else {
            run(registry
                .with(fmt.fmt_fields(TextFields).event_format(WithRequest {
                    inner: tracing_subscriber::fmt::format().without_time(),
                    json: false,
                }))
                .with(filter)
                .into());
        }
        let text = buf.0.lock().unwrap().clone();
        String::from_utf8(text).unwrap()
    }

    /// A WARN inside a request, as the server layer makes its span.
    fn warn_in_a_request() {
        let peer: Arc<str> = Arc::from("127.0.0.1:41234");
        let id = RequestId::sent(b"5f1d0c3a").unwrap();
        let span = tracing::info_span!(
            "request",
            request_id = %id,
            method = %Untrusted(b"POST"),
            path = %Untrusted(b"/up\x01load?a=1"),
            %peer,
            status = tracing::field::Empty,
            ms = tracing::field::Empty
        );
        let span = RequestSpan::new(span, &peer, id);
        span.in_scope(|| tracing::warn!(error = "cut", "could not read the request body"));
        // Outside it: no request named.
        tracing::warn!("after");
        let e = span.clone().entered();
        tracing::error!("owned guard");
        drop(e);
        tracing::error!("after");
    }

    // regression: at `--log-level warn` the request span is off, and a WARN about a
    // request named neither its peer nor its id.
    #[test]
    fn a_line_about_a_request_names_it_whether_or_not_its_span_is_on() {
        let at_info = lines_at(tracing::Level::INFO, false, warn_in_a_request);
        let at_warn = lines_at(tracing::Level::WARN, false, warn_in_a_request);
        // Where the span's fields are, its id and peer.
        assert_eq!(
            at_warn,
            " WARN request{request_id=5f1d0c3a peer=127.0.0.1:41234}: postern::logging::tests: \
             could not read the request body error=\"cut\"\n \
             WARN postern::logging::tests: after\n\
             ERROR request{request_id=5f1d0c3a peer=127.0.0.1:41234}: postern::logging::tests: \
             owned guard\n\
             ERROR postern::logging::tests: after\n"
        );
        let span =
            "request{request_id=5f1d0c3a method=POST path=/up\\x01load?a=1 peer=127.0.0.1:41234}: ";
        assert_eq!(
            at_info,
            at_warn.replace("request{request_id=5f1d0c3a peer=127.0.0.1:41234}: ", span)
        );
        let json = |level| -> Vec<serde_json::Value> {
            lines_at(level, true, warn_in_a_request)
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        };
        let (mut at_info, at_warn) = (json(tracing::Level::INFO), json(tracing::Level::WARN));
        for l in &mut at_info {
            if let Some(s) = l.get_mut("span").and_then(|s| s.as_object_mut()) {
                s.remove("method");
                s.remove("path");
            }
        }
        assert_eq!(at_warn, at_info);
        assert_eq!(at_warn[0]["span"]["peer"], "127.0.0.1:41234");
        assert_eq!(at_warn[0]["span"]["request_id"], "5f1d0c3a");
        assert_eq!(at_warn[1].get("span"), None);
        assert_eq!(at_warn[2]["span"]["name"], "request");
        assert_eq!(at_warn[3].get("span"), None);
    }

    #[test]
    fn text_fields_read_as_tracings_default_fields() {
        use tracing_subscriber::fmt::format::DefaultFields;
        use tracing_subscriber::fmt::FormatFields;
        #[derive(Clone)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        fn lines<N: for<'w> FormatFields<'w> + Send + Sync + 'static>(fields: N) -> String {
            let buf = Buf(Arc::default());
            let out = buf.clone();
            let sub = tracing_subscriber::fmt()
                .with_ansi(false)
                .without_time()
                .with_writer(move || out.clone())
                .fmt_fields(fields)
                .finish();
            tracing::subscriber::with_default(sub, || {
                let span = tracing::info_span!(
                    "request",
                    request_id = %"5f1d0c3a",
                    method = %Untrusted(b"GET"),
                    path = %Untrusted(b"/a b\x01\xff"),
                    peer = "unix:/run/x.sock",
                    status = tracing::field::Empty,
                    ms = tracing::field::Empty
                );
                let _in = span.enter();
                tracing::info!(n = 3, "before the end {}", 1);
                span.record("status", 200u16);
                span.record(
                    "ms",
                    tracing::field::display(Millis(Duration::from_micros(1234))),
                );
                tracing::warn!(n = 3, flag = true, text = "say \"x\"", "message {}", 2);
                tracing::info!(k = 1.5, s = "plain");
                let e = io::Error::other("boom");
                tracing::error!(error = &e as &(dyn std::error::Error + 'static), "failed");
                tracing::info!(r#type = "raw");
            });
            let text = buf.0.lock().unwrap().clone();
            String::from_utf8(text).unwrap()
        }
        let ours = lines(TextFields);
        assert_eq!(ours, lines(DefaultFields::new()));
        assert!(
            ours.contains(
                "request{request_id=5f1d0c3a method=GET path=/a b\\x01\u{ff} \
                 peer=\"unix:/run/x.sock\" status=200 ms=1.23}"
            ),
            "{ours}"
        );
    }

    #[test]
    fn a_span_field_with_a_space_or_quote_is_one_quoted_value() {
        let show = |b: &[u8]| UntrustedField(b).to_string();
        assert_eq!(show(b"/plain?a=1&b=2"), "/plain?a=1&b=2");
        assert_eq!(show(b"/x peer=10.0.0.1"), r#""/x peer=10.0.0.1""#);
        assert_eq!(show(b"/q\"\\"), r#""/q\"\\""#);
        // Escapes as Untrusted's, their backslash not doubled; bytes not UTF-8 as latin-1.
        assert_eq!(show(b"/a b\r\n\xff"), "\"/a b\\x0D\\x0A\u{ff}\"");
        assert_eq!(show(b"/a\x01"), "\"/a\\x01\"");
        // Whatever could separate fields (review 330: a tab was written raw).
        assert_eq!(show(b"/x\tpeer=9"), "\"/x\tpeer=9\"");
        assert_eq!(show("/x\u{a0}peer=9".as_bytes()), "\"/x\u{a0}peer=9\"");
    }

    #[test]
    fn a_value_can_neither_start_a_line_nor_reach_a_terminal() {
        // regression: an exception message with a client's query string in it (a
        // traceback field) wrote its newlines and escape bytes raw: a forged
        // `... INFO postern::access: served` line and ESC[31m in the log file.
        #[derive(Clone)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf(Arc::default());
        let out = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .with_writer(move || out.clone())
            .fmt_fields(TextFields)
            .finish();
        let forged = "2026-12-03T18:00:00.000000Z  INFO postern::access: served FAKE";
        let tb = format!(
            "Traceback (most recent call last):\n  File \"/srv/app.py\", line 3, in app\nValueError: bad: a\n{forged}\x1b[31m\r\u{9b}2J\tend\n"
        );
        tracing::subscriber::with_default(sub, || {
            tracing::error!(traceback = %tb, "the app raised an exception; answered 500");
            tracing::warn!("a message of\n{forged} two lines");
            tracing::error!(detail = %tb, after = 1, "then a field after it");
            tracing::warn!(odd = %"a\u{2028}b\u{202e}c", "separators");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(
            !text.contains(['\x1b', '\r', '\u{9b}', '\u{2028}', '\u{202e}']),
            "{text:?}"
        );
        assert!(text.contains("\\x1B[31m\\x0D\\x9B2J\tend"), "{text:?}");
        let lines: Vec<&str> = text.lines().collect();
        for l in &lines {
            assert!(
                l.is_empty()
                    || l.starts_with("ERROR")
                    || l.starts_with(" WARN")
                    || l.starts_with(CONTINUATION),
                "a line of its own: {l:?} in {text}"
            );
        }
        assert!(lines.contains(&"  ValueError: bad: a"), "{text}");
        assert!(text.contains(&format!("\n  {forged} two lines")), "{text}");
        // A traceback's last newline ends its lines only when a field follows (then
        // continued), and nothing makes an empty line.
        assert!(text.contains("\tend\n   after=1"), "{text}");
        assert!(!text.lines().any(str::is_empty), "{text}");
        assert!(text.contains("odd=a\\u{2028}b\\u{202E}c"), "{text}");
    }

    #[test]
    fn the_cached_timestamp_reads_as_the_formatted_one() {
        let t0 = when();
        for t in [
            t0,
            t0 + Duration::from_micros(7),
            t0 + Duration::from_secs(1),
            t0 - Duration::from_secs(86_400 * 40) + Duration::from_micros(999_999),
            SystemTime::UNIX_EPOCH,
        ] {
            let mut out = String::new();
            push_timestamp(&mut out, t);
            assert_eq!(out, Timestamp(t).to_string());
        }
    }

    fn line(format: AccessLogFormat, vars: &[(&str, &str)], ending: Ending) -> String {
        let h = head(vars);
        let id = RequestId::sent(b"5f1d0c3aa8e94b7c9d2e4f6a8b0c1d2e").unwrap();
        let a = Access {
            head: &h,
            id: &id,
            protocol: Protocol::Uwsgi,
            status: 200,
            ending,
            bytes: 79,
            started: Instant::now(),
        };
        let mut out = String::new();
        format_access(
            &mut out,
            format,
            &a,
            Duration::from_micros(1560),
            when(),
            4242,
        );
        out
    }

    const NGINX: &[(&str, &str)] = &[
        ("REQUEST_METHOD", "GET"),
        ("REQUEST_URI", "/hello?x=1"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REMOTE_ADDR", "203.0.113.7"),
        ("HTTP_REFERER", "https://example.com/"),
        ("HTTP_USER_AGENT", "curl/8.5.0 (x86_64) \"quoted\""),
    ];

    #[test]
    fn formats_text_lines() {
        assert_eq!(
            line(AccessLogFormat::Text, NGINX, Ending::Complete),
            "2025-11-29T17:40:01.123456Z  INFO postern::access: served \
             request_id=5f1d0c3aa8e94b7c9d2e4f6a8b0c1d2e pid=4242 protocol=uwsgi \
             remote=203.0.113.7 method=GET path=\"/hello?x=1\" status=200 bytes=79 ms=1.56\n"
        );
        let cut = line(AccessLogFormat::Text, &[], Ending::Incomplete);
        assert!(
            cut.contains("WARN postern::access: response incomplete; connection aborted")
                && cut.contains("remote=- method=- path=-"),
            "{cut}"
        );
        // regression (probe 380): SCRIPT_NAME alone logged `path=-`.
        for (vars, path) in [
            (&[("SCRIPT_NAME", "/app")][..], "path=/app "),
            (
                &[("SCRIPT_NAME", "/app"), ("PATH_INFO", "/x")][..],
                "path=/app/x ",
            ),
            (&[("PATH_INFO", "/x")][..], "path=/x "),
            (
                &[("SCRIPT_NAME", "/app"), ("PATH_INFO", "/app/x")][..],
                "path=/app/x ",
            ),
            (
                &[("SCRIPT_NAME", "/app"), ("PATH_INFO", "/apple")][..],
                "path=/app/apple ",
            ),
            (
                &[("SCRIPT_NAME", "/app/"), ("PATH_INFO", "/app/x")][..],
                "path=/app/x ",
            ),
            (&[("SCRIPT_NAME", "/"), ("PATH_INFO", "/x")][..], "path=/x "),
            (&[("SCRIPT_NAME", "/")][..], "path=/ "),
            (
                &[("REQUEST_URI", "/app/x?q"), ("SCRIPT_NAME", "/app")][..],
                "path=/app/x?q ",
            ),
        ] {
            let l = line(AccessLogFormat::Text, vars, Ending::Complete);
            assert!(l.contains(path), "{l}");
        }
    }

    #[test]
    fn formats_combined_lines() {
        assert_eq!(
            line(AccessLogFormat::Combined, NGINX, Ending::Complete),
            "203.0.113.7 - - [29/Nov/2025:17:40:01 +0000] \"GET /hello?x=1 HTTP/1.1\" 200 79 \
             \"https://example.com/\" \"curl/8.5.0 (x86_64) \\x22quoted\\x22\" 0.001 \
             request_id=5f1d0c3aa8e94b7c9d2e4f6a8b0c1d2e pid=4242 protocol=uwsgi\n"
        );
    }

    // See: sec's audit: REMOTE_USER (the client's Basic user name) and REMOTE_ADDR were
    // written raw, so a space shifted the fields of a combined line.
    #[test]
    fn the_unquoted_combined_fields_stay_one_word() {
        let mut vars = NGINX.to_vec();
        vars.push((
            "REMOTE_USER",
            "a b [01/Jan/2000:00:00:00 +0000] \"GET /admin",
        ));
        vars.push(("REMOTE_ADDR", "10.0.0.1 x"));
        let l = line(AccessLogFormat::Combined, &vars, Ending::Complete);
        assert!(
            l.starts_with(
                "10.0.0.1\\x20x - a\\x20b\\x20[01/Jan/2000:00:00:00\\x20+0000]\\x20\\x22GET\\x20/admin [29/Nov/2025:17:40:01 +0000] \"GET /hello?x=1 HTTP/1.1\" 200 79 "
            ),
            "{l}"
        );
        // An empty user is `-`, as nginx writes it.
        vars.push(("REMOTE_USER", ""));
        let l = line(AccessLogFormat::Combined, &vars, Ending::Complete);
        assert!(l.starts_with("10.0.0.1\\x20x - - [29/Nov"), "{l}");
    }

    #[test]
    fn formats_json_lines() {
        let l = line(AccessLogFormat::Json, NGINX, Ending::ClientGone);
        assert!(l.ends_with('\n') && l.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["request_id"], "5f1d0c3aa8e94b7c9d2e4f6a8b0c1d2e");
        assert_eq!(v["pid"], 4242);
        assert_eq!(v["protocol"], "uwsgi");
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes"], 79);
        assert_eq!(v["duration_ms"], 1.56);
        assert_eq!(v["uri"], "/hello?x=1");
        assert_eq!(v["remote_user"], serde_json::Value::Null);
        assert_eq!(v["user_agent"], "curl/8.5.0 (x86_64) \"quoted\"");
        assert_eq!(v["timestamp"], "2025-11-29T17:40:01.123456Z");
        assert_eq!(
            v["message"],
            "client went away before the response was complete"
        );
    }

    #[test]
    fn request_bytes_never_break_a_line() {
        let evil = &[
            ("REQUEST_METHOD", "GET"),
            ("REQUEST_URI", "/a b\n2025 INFO forged=\"x\"\\\u{e9}"),
        ];
        let text = line(AccessLogFormat::Text, evil, Ending::Complete);
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        assert!(
            text.contains(r#"path="/a b\x0A2025 INFO forged=\"x\"\\\xC3\xA9""#),
            "{text}"
        );
        let combined = line(AccessLogFormat::Combined, evil, Ending::Complete);
        assert_eq!(combined.matches('\n').count(), 1, "{combined}");
        assert!(
            combined.contains(r#""GET /a b\x0A2025 INFO forged=\x22x\x22\x5C\xC3\xA9 -""#),
            "{combined}"
        );
    }

    // regression: the request span wrote the path raw, so a path with CR/LF started
    // a forged line in postern's own log (and ESC reached the terminal).
    #[test]
    fn untrusted_fields_have_no_control_characters() {
        let show = |b: &[u8]| Untrusted(b).to_string();
        assert_eq!(show(b"/caf\xC3\xA9?q=a b"), "/caf\u{e9}?q=a b");
        assert_eq!(
            show(b"/x\r\n2026 INFO forged\x1b[2J\x7f"),
            r"/x\x0D\x0A2026 INFO forged\x1B[2J\x7F"
        );
        assert_eq!(show("a\u{85}b\u{2028}".as_bytes()), r"a\x85b\u{2028}");
        // Not UTF-8: latin-1, still without control bytes.
        assert_eq!(show(b"/\xE9\x0A"), "/\u{e9}\\x0A");
    }

    // regression: an id with `=` (base64 padding, which `sent` accepts) was written
    // bare, `request_id=dGVzdA==`, which logfmt readers refuse.
    #[test]
    fn an_id_with_equals_signs_is_quoted_in_key_value_fields() {
        let h = head(&[("HTTP_X_REQUEST_ID", "dGVzdA==")]);
        let id = RequestId::for_head(&h);
        assert!(!id.generated());
        let a = Access {
            head: &h,
            id: &id,
            protocol: Protocol::Scgi,
            status: 204,
            ending: Ending::Complete,
            bytes: 0,
            started: Instant::now(),
        };
        for format in [AccessLogFormat::Text, AccessLogFormat::Combined] {
            let mut out = String::new();
            format_access(&mut out, format, &a, Duration::ZERO, when(), 1);
            assert!(
                out.contains(" request_id=\"dGVzdA==\" pid=1 protocol=scgi"),
                "{out}"
            );
        }
    }

    #[test]
    fn takes_the_front_servers_id_when_it_is_loggable() {
        let id = RequestId::for_head(&head(&[(
            "HTTP_X_REQUEST_ID",
            "0f9e8d7c6b5a49382716f5e4d3c2b1a0",
        )]));
        assert_eq!(id.as_str(), "0f9e8d7c6b5a49382716f5e4d3c2b1a0");
        assert_eq!(id.as_bytes(), id.as_str().as_bytes());
        assert!(!id.generated());
        for uuid_like in ["123e4567-e89b-12d3-a456-426614174000", "Root=1-abc;", "a"] {
            let sent = RequestId::sent(uuid_like.as_bytes());
            assert_eq!(
                sent.map(|i| i.to_string()),
                (!uuid_like.contains(';')).then(|| uuid_like.to_owned())
            );
        }
    }

    #[test]
    fn rejects_ids_that_could_forge_log_lines() {
        for bad in ["", "a b", "x\ny", "\"q\"", &"7".repeat(65), "caf\u{e9}"] {
            assert!(RequestId::sent(bad.as_bytes()).is_none(), "{bad:?}");
            let id = RequestId::for_head(&head(&[("HTTP_X_REQUEST_ID", bad)]));
            assert!(id.generated());
        }
    }

    #[test]
    fn generated_ids_are_32_hex_digits_and_unique() {
        let a = RequestId::generate();
        let b = RequestId::generate();
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.as_str(), b.as_str());
        assert_eq!(a.as_str()[..16], b.as_str()[..16], "one prefix per process");
        assert_eq!(a.as_bytes(), a.as_str().as_bytes());
    }

    #[test]
    fn counts_lines_lost_to_a_full_queue() {
        // No writer thread takes the lines: the queue fills up, and each line past its
        // bound is dropped and counted instead of waited for.
        let out = Output::stderr();
        let (queue, taken) = mpsc::channel();
        let bg = Background { queue };
        let before = LOG_LINES_DROPPED.load(Ordering::Relaxed);
        for _ in 0..QUEUE_LINES + 100 {
            out.queue(&bg, b"line\n");
        }
        assert!(LOG_LINES_DROPPED.load(Ordering::Relaxed) - before >= 100);
        assert_eq!(out.queued_lines.load(Ordering::Relaxed), QUEUE_LINES);
        assert_eq!(out.queued_bytes.load(Ordering::Relaxed), QUEUE_LINES * 5);
        assert_eq!(taken.try_iter().count(), QUEUE_LINES);
    }

    #[test]
    fn an_empty_line_is_a_line_not_a_flush_mark() {
        // regression: the flush mark was an empty line, so an empty write was taken
        // for one: counted as a mark reached (finish could stop waiting early) and
        // never taken off the queued lines.
        let out = Arc::new(Output::stderr());
        let (queue, taken) = mpsc::channel();
        let bg = Background { queue };
        out.queue(&bg, b"");
        let mut drain = Drain {
            out: Arc::clone(&out),
            pending: Vec::new(),
            lines: 0,
        };
        for msg in taken.try_iter() {
            drain.take(msg);
        }
        assert_eq!(out.queued_lines.load(Ordering::Relaxed), 0);
        assert_eq!(*out.drained.0.lock().unwrap(), 0);
    }

    #[test]
    fn drops_lines_over_the_byte_budget() {
        let out = Output::stderr();
        let (queue, taken) = mpsc::channel();
        let bg = Background { queue };
        // As if the queue held nearly its budget already.
        out.queued_bytes.store(QUEUE_BYTES - 4, Ordering::Relaxed);
        let before = LOG_LINES_DROPPED.load(Ordering::Relaxed);
        out.queue(&bg, b"line\n");
        out.queue(&bg, b"ok\n");
        assert!(LOG_LINES_DROPPED.load(Ordering::Relaxed) > before);
        assert_eq!(
            taken.try_iter().collect::<Vec<_>>(),
            [Msg::Line(b"ok\n".to_vec())]
        );
        assert_eq!(out.queued_bytes.load(Ordering::Relaxed), QUEUE_BYTES - 1);
    }

    use std::os::unix::fs::OpenOptionsExt as _;

    /// What `open_log_file` opens at `path`: Ok(written file's text) after appending
    /// "x", or Err((errno, refused link and its owner)).
    fn append_x(path: &Path) -> Result<(), (i32, Option<(PathBuf, u32)>)> {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        let mut refused = None;
        match open_log_file(&c, &mut |l, uid| {
            refused = Some((
                PathBuf::from(std::ffi::OsStr::from_bytes(l.to_bytes())),
                uid,
            ))
        }) {
            Ok(fd) => {
                File::from(fd).write_all(b"x").unwrap();
                Ok(())
            }
            Err(e) => Err((e.raw_os_error(), refused)),
        }
    }

    // See: sec's audit, HIGH: a root-started postern appended through a link another
    // user planted at --log-file/--access-log (O_APPEND|O_CREAT, no O_NOFOLLOW).
    #[test]
    fn follows_only_links_root_or_its_own_user_made() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let victim = d.join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let link = |name: &str, target: &str| {
            let l = d.join(name);
            std::os::unix::fs::symlink(target, &l).unwrap();
            l
        };
        // This user's own links, relative and in a chain: followed.
        let real = link("a.log", "sub/../b.log");
        link("b.log", "victim");
        std::fs::create_dir(d.join("sub")).unwrap();
        append_x(&real).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keepx");
        // No file yet: created (not through a link), mode 0640.
        append_x(&d.join("new.log")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join("new.log"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777 & !FILE_MODE, 0, "{mode:o}");
        // The kernel's links: /dev/stderr -> /proc/self/fd/2 (whatever fd 2 is).
        append_x(Path::new("/dev/stderr")).unwrap();
        // A FIFO nobody reads: ENXIO, not a hang; with a reader, a blocking fd.
        let fifo = d.join("fifo.log");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(append_x(&fifo).unwrap_err().0, libc::ENXIO);
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let fd = open_log_file(&c, &mut |_, _| ()).unwrap();
        let fl = rustix::fs::fcntl_getfl(&fd).unwrap();
        assert!(
            !fl.contains(rustix::fs::OFlags::NONBLOCK) && fl.contains(rustix::fs::OFlags::APPEND)
        );
        drop((fd, reader));
        // A loop: ELOOP, not a hang.
        let l = link("loop1", "loop2");
        link("loop2", "loop1");
        assert_eq!(append_x(&l).unwrap_err().0, libc::ELOOP);

        if !rustix::process::geteuid().is_root() {
            eprintln!("SKIPPED: a link owned by another user needs root to make (lchown)");
            return;
        }
        // Another user's link, at the path or on the way: refused, named, not followed.
        let theirs = link("theirs.log", "victim");
        let chain = link("chain.log", "theirs.log");
        let nobody = 65534;
        std::os::unix::fs::lchown(&theirs, Some(nobody), Some(nobody)).unwrap();
        for path in [&theirs, &chain] {
            let (errno, refused) = append_x(path).unwrap_err();
            assert_eq!(errno, libc::EPERM);
            assert_eq!(refused, Some((theirs.clone(), nobody)));
        }
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keepx");
        // The same through Output::file: a start-up error naming the link and owner.
        let err = Output::file(&chain, "access log")
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains(&format!(
                "refusing to open the access log {}: {} is a symbolic link owned by",
                chain.display(),
                theirs.display()
            )) && err.contains("(uid 65534), not by root or postern's user (uid 0)"),
            "{err}"
        );
    }
}
