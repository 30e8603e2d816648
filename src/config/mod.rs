//! The options: each one is declared once, in [`Options`] (its doc comment is the help
//! text, its `#[arg]` the command-line flag and `POSTERN_*` variable, its field name the
//! TOML key, its type the parsing and validation, its `default_value` the default).
//! Layers, lowest first: default < uWSGI ini (`--ini`) < TOML file (`--config`) <
//! environment < command line. Every value remembers the layer it came from, which
//! `--print-config` prints. [`Config::resolve`] turns the merged options into what the
//! server runs (listeners, ids, paths) and checks what needs more than one option.

mod clap_error;
pub mod gunicorn;
pub mod reload;
pub mod value;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use clap::builder::BoolishValueParser;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde::{Deserialize, Serialize};

use crate::codec::Protocol;
pub use crate::logging::{log_filter, AccessLogFormat, LogFormat};
use crate::server::listener::{parse_owner, ListenAddr};
use crate::wsgi::interpreter::AppSpec;
pub use value::{parse_size, KeyValue, Mode, Seconds, Size};

/// `--listen-backlog`'s default.
pub const DEFAULT_LISTEN_BACKLOG: i32 = 1024;

/// The listener used when none is configured.
pub const DEFAULT_LISTENER: &str = "127.0.0.1:3031";

/// The largest `--max-rss`, in MiB (1 PiB).
pub const MAX_RSS_MIB: u64 = 1 << 30;

/// A whole number typed on the command line or in `POSTERN_*`: at most what a TOML
/// integer holds (2^63 - 1), as the layers are merged as TOML tables (a larger one
/// panicked there). The option's own bound is checked with the rest ([`Config::resolve`]).
fn count<T>() -> clap::builder::RangedU64ValueParser<T>
where
    T: TryFrom<u64> + Clone + Send + Sync + 'static,
    <T as TryFrom<u64>>::Error: Send + Sync + 'static + std::error::Error + ToString,
{
    clap::builder::RangedU64ValueParser::new().range(..=i64::MAX.unsigned_abs())
}

#[derive(Parser, Debug)]
#[command(
    name = "postern",
    about = "Serve a Python WSGI or ASGI app to nginx or Apache over uwsgi, FastCGI or SCGI.",
    long_about = None,
    disable_version_flag = true,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Every option can also be set as POSTERN_<OPTION> (e.g. POSTERN_THREADS=4), in --config FILE (TOML, same names), or come from a uWSGI ini file (--ini).\nPrecedence: command line > environment > --config file > --ini file > default."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Print postern's and the embedded Python's versions.
    #[arg(short = 'V', long)]
    pub version: bool,

    /// TOML file with the same keys as the long options (e.g. `threads = 4`); read again
    /// at each reload (SIGHUP), whose new workers run it.
    #[arg(long, value_name = "FILE", env = "POSTERN_CONFIG")]
    pub config: Option<PathBuf>,

    /// A uWSGI ini file to take options from (`FILE` or `FILE:SECTION`, default section
    /// `uwsgi`); options postern has no use for are listed once, with what to do instead.
    /// Given more than once, the files are read in turn, as uWSGI reads them.
    #[arg(
        long,
        alias = "uwsgi-ini",
        value_name = "FILE[:SECTION]",
        env = "POSTERN_INI"
    )]
    pub ini: Vec<String>,

    /// Print the effective configuration as TOML, each value with where it came from, and exit.
    #[arg(long, conflicts_with = "check")]
    pub print_config: bool,

    /// Check the configuration (like `nginx -t`): options, venv and Python, importing the
    /// app (in a child process), binding each listener; print what would run; exit 0 or 1.
    #[arg(long)]
    pub check: bool,

    #[command(flatten)]
    pub options: Options,
}

/// Every serving option, declared once. Field name = TOML key (kebab-case) = long flag;
/// `env` = the environment variable; the doc comment = the help text.
#[derive(Args, Serialize, Deserialize, Debug, Clone, Default)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct Options {
    /// The WSGI or ASGI app: `module.path[:callable]` or `path/to/file.py[:callable]`
    /// (callable defaults to `application`, then `app`; `--interface` tells which).
    #[arg(value_name = "APP", env = "POSTERN_APP")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,

    /// Listen for uwsgi (nginx uwsgi_pass, Apache mod_proxy_uwsgi) on HOST:PORT, [::1]:PORT,
    /// :PORT or unix:PATH (repeatable; default 127.0.0.1:3031 when no listener is given).
    #[arg(
        long,
        value_name = "ADDR",
        env = "POSTERN_UWSGI",
        value_delimiter = ','
    )]
    #[serde(with = "value::one_or_many")]
    pub uwsgi: Vec<ListenAddr>,

    /// Listen for FastCGI (nginx fastcgi_pass, Apache mod_proxy_fcgi) on HOST:PORT or unix:PATH (a bare /PATH works too; repeatable).
    #[arg(
        long,
        value_name = "ADDR",
        env = "POSTERN_FASTCGI",
        value_delimiter = ','
    )]
    #[serde(with = "value::one_or_many")]
    pub fastcgi: Vec<ListenAddr>,

    /// Listen for SCGI (nginx scgi_pass, Apache mod_proxy_scgi) on HOST:PORT or unix:PATH (a bare /PATH works too; repeatable).
    #[arg(long, value_name = "ADDR", env = "POSTERN_SCGI", value_delimiter = ',')]
    #[serde(with = "value::one_or_many")]
    pub scgi: Vec<ListenAddr>,

    /// URL prefix the app is mounted at, e.g. /app (repeatable): when the front server
    /// sends no SCRIPT_NAME of its own, the longest matching prefix becomes SCRIPT_NAME
    /// and the rest PATH_INFO.
    #[arg(
        long,
        value_name = "PREFIX",
        env = "POSTERN_MOUNT",
        value_delimiter = ','
    )]
    #[serde(with = "value::one_or_many")]
    pub mount: Vec<String>,

    /// Do not copy wsgi.errors output to the front server as FCGI_STDERR (it always goes to postern's log).
    #[arg(long, env = "POSTERN_NO_FASTCGI_STDERR", value_parser = BoolishValueParser::new())]
    pub no_fastcgi_stderr: bool,

    /// When the WSGI threads run under SCHED_BATCH (a woken thread waits for the running
    /// task instead of preempting it; cheaper behind a front server on the same CPUs
    /// under load): off; waits (only while a thread waits for a connection or a request:
    /// the app's I/O waits keep the default policy, but each wait that blocks costs two
    /// system calls and, beside CPU-bound processes, latency); always (`--sched-batch`
    /// alone: serving too, so the app's I/O waits end later when every CPU is busy).
    /// A value needs the = form: --sched-batch=waits.
    #[arg(
        long,
        value_name = "MODE",
        env = "POSTERN_SCHED_BATCH",
        default_value = "off",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "always"
    )]
    pub sched_batch: crate::server::sched::SchedBatch,

    /// Lines per second each worker passes from wsgi.errors (and about 512 bytes a line: 1 MiB/s at 2000), in bursts of twice that; the rest is dropped and counted in the log (0: no limit).
    #[arg(
        long,
        value_name = "LINES",
        env = "POSTERN_ERRORS_RATE",
        default_value_t = crate::wsgi::errors::DEFAULT_RATE
    )]
    pub errors_rate: u32,

    /// Change to DIR before importing the app (DIR is put on sys.path).
    #[arg(long, value_name = "DIR", env = "POSTERN_CHDIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chdir: Option<PathBuf>,

    /// Put DIR at the front of sys.path (repeatable; a list split at `:` as PYTHONPATH or
    /// `,` as gunicorn's --pythonpath: a directory whose name holds either goes in the
    /// --config file's pythonpath list, which splits nothing).
    #[arg(long, value_name = "DIR", env = "POSTERN_PYTHONPATH")]
    #[serde(with = "value::one_or_many")]
    pub pythonpath: Vec<PathBuf>,

    /// Use the virtualenv in DIR (default: $VIRTUAL_ENV).
    #[arg(long, value_name = "DIR", env = "POSTERN_VENV")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub venv: Option<PathBuf>,

    /// Set an environment variable for the app (repeatable; a [env] table in TOML).
    #[arg(long, value_name = "KEY=VALUE", env = "POSTERN_ENV")]
    #[serde(with = "value::env_table")]
    pub env: Vec<KeyValue>,

    /// Python threads serving requests in each worker (1 to 1024); for an ASGI app, the
    /// threads of the event loop's default executor (`run_in_executor(None, ...)`).
    #[arg(long, value_name = "N", env = "POSTERN_THREADS", default_value_t = 1, value_parser = count::<usize>())]
    pub threads: usize,

    /// The app's interface: `asgi` for an async app (FastAPI, Starlette, Django's asgi.py),
    /// `wsgi`, or `auto`: ASGI when the callable is a coroutine function (or an object
    /// whose `__call__` is one), else WSGI.
    #[arg(
        long,
        value_name = "auto|wsgi|asgi",
        env = "POSTERN_INTERFACE",
        default_value = "auto"
    )]
    pub interface: crate::asgi::InterfaceOption,

    /// ASGI: the event loop: `asyncio`, `uvloop`, or `auto` (uvloop when it can be imported).
    #[arg(
        long,
        value_name = "auto|asyncio|uvloop",
        env = "POSTERN_LOOP",
        default_value = "auto"
    )]
    pub r#loop: crate::asgi::LoopOption,

    /// ASGI: requests in flight per worker (1 to 1000000); at the cap the worker stops
    /// accepting and new connections wait in the listen queue.
    #[arg(
        long,
        value_name = "N",
        env = "POSTERN_MAX_CONCURRENCY",
        default_value_t = crate::asgi::DEFAULT_MAX_CONCURRENCY,
        value_parser = count::<usize>()
    )]
    pub max_concurrency: usize,

    /// ASGI: the lifespan protocol, run in each worker before it serves: `auto` (an app
    /// that does not speak it is served without it), `on` (its startup must complete),
    /// or `off`. A `lifespan.startup.failed` stops the worker with the app's message.
    #[arg(
        long,
        value_name = "auto|on|off",
        env = "POSTERN_LIFESPAN",
        default_value = "auto"
    )]
    pub lifespan: crate::asgi::lifespan::LifespanMode,

    /// ASGI: seconds the app's lifespan startup, and its shutdown, may take.
    #[arg(
        long,
        value_name = "SECONDS",
        env = "POSTERN_LIFESPAN_TIMEOUT",
        default_value = "60"
    )]
    pub lifespan_timeout: Seconds,

    /// Worker processes (1 to 256); more than 1 starts a master that supervises them.
    #[arg(long, value_name = "N", env = "POSTERN_WORKERS", default_value_t = 1, value_parser = count::<usize>())]
    pub workers: usize,

    /// Run a master process even with one worker (implied by --workers > 1 and by the
    /// options below): SIGHUP reloads, crashed workers are replaced.
    #[arg(long, env = "POSTERN_MASTER", value_parser = BoolishValueParser::new())]
    pub master: bool,

    /// Import the app in the master before forking, so workers share its memory pages.
    #[arg(long, env = "POSTERN_PRELOAD", value_parser = BoolishValueParser::new())]
    pub preload: bool,

    /// On reload, replace workers one at a time (for memory-tight hosts).
    #[arg(long, env = "POSTERN_CHAIN_RELOAD", value_parser = BoolishValueParser::new())]
    pub chain_reload: bool,

    /// Reload (as SIGHUP: the configuration is read again) when this file's
    /// modification time changes.
    #[arg(long, value_name = "FILE", env = "POSTERN_TOUCH_RELOAD")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub touch_reload: Option<PathBuf>,

    /// Write the master's pid here (removed at exit).
    #[arg(long, value_name = "FILE", env = "POSTERN_PIDFILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pidfile: Option<PathBuf>,

    /// Drop privileges to this user (name or id) after binding the listeners.
    #[arg(long, value_name = "USER", env = "POSTERN_UID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,

    /// Drop privileges to this group (name or id) after binding the listeners.
    #[arg(long, value_name = "GROUP", env = "POSTERN_GID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<String>,

    /// Recycle a worker after N requests (plus up to 10% jitter).
    #[arg(long, value_name = "N", env = "POSTERN_MAX_REQUESTS", value_parser = count::<u64>())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u64>,

    /// Recycle a worker whose resident memory passes this many MiB (checked after each request).
    #[arg(long, value_name = "MIB", env = "POSTERN_MAX_RSS", value_parser = count::<u64>())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rss: Option<u64>,

    /// Replace a worker after it has run this many seconds, plus up to 10% drawn per
    /// worker so that workers started together are not replaced together (0 or off:
    /// never).
    #[arg(long, value_name = "SECONDS", env = "POSTERN_MAX_LIFETIME", value_parser = value::seconds_or_off)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_lifetime: Option<Seconds>,

    /// A request running longer gets its worker's Python stacks logged, then the worker killed and replaced (0 or off: no limit).
    #[arg(long, value_name = "SECONDS", env = "POSTERN_TIMEOUT", value_parser = value::seconds_or_off)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Seconds>,

    /// A request running longer gets its worker's Python stacks logged, not killed (0 or off: none).
    #[arg(long, value_name = "SECONDS", env = "POSTERN_SLOW_LOG", value_parser = value::seconds_or_off)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow_log: Option<Seconds>,

    /// Permission bits for Unix sockets, octal (e.g. 660; default: from the umask).
    #[arg(long, value_name = "OCTAL", env = "POSTERN_SOCKET_MODE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_mode: Option<Mode>,

    /// Owner of Unix sockets: USER[:GROUP] (names or ids).
    #[arg(long, value_name = "USER[:GROUP]", env = "POSTERN_SOCKET_OWNER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_owner: Option<String>,

    /// The umask, octal (e.g. 027): set first, so the log files, the pidfile, a Unix
    /// socket without --socket-mode and the files the app creates take it (default:
    /// the umask postern was started with).
    #[arg(long, value_name = "OCTAL", env = "POSTERN_UMASK")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub umask: Option<Mode>,

    /// Largest request head accepted, in bytes (4 to 65535, the uwsgi protocol's maximum).
    #[arg(
        long,
        value_name = "BYTES",
        env = "POSTERN_BUFFER_SIZE",
        default_value = "65535"
    )]
    pub buffer_size: Size,

    /// Request bodies larger than this are spooled to a temporary file (at most 1G).
    #[arg(
        long,
        value_name = "BYTES",
        env = "POSTERN_BODY_SPOOL_THRESHOLD",
        default_value = "1M"
    )]
    pub body_spool_threshold: Size,

    /// Most connections one worker holds open at once, idle keep-alive and not yet read
    /// included; past it, new ones wait in the listen queue (default: half the
    /// open-files limit less 64, as a connection may need a second descriptor for a
    /// spooled body).
    #[arg(long, value_name = "N", env = "POSTERN_MAX_CONNECTIONS", value_parser = count::<usize>())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,

    /// FastCGI: request input one connection may make a worker hold that the app has
    /// not read yet (queued STDIN, bodies waiting for a thread); past it, that
    /// connection is not read (the front server waits).
    #[arg(
        long,
        value_name = "BYTES",
        env = "POSTERN_FASTCGI_BUFFER",
        default_value = "1M"
    )]
    pub fastcgi_buffer: Size,

    /// FastCGI: the same, for all the connections of one worker together.
    #[arg(
        long,
        value_name = "BYTES",
        env = "POSTERN_FASTCGI_BUFFER_TOTAL",
        default_value = "64M"
    )]
    pub fastcgi_buffer_total: Size,

    /// Largest request body accepted; larger ones answer 413 (default, and 0 or off: no limit).
    #[arg(long, value_name = "BYTES", env = "POSTERN_MAX_BODY", value_parser = value::size_or_off)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body: Option<Size>,

    /// Listen queue length.
    #[arg(
        long,
        value_name = "N",
        env = "POSTERN_LISTEN_BACKLOG",
        default_value_t = DEFAULT_LISTEN_BACKLOG
    )]
    pub listen_backlog: i32,

    /// Seconds from accept to a complete request head.
    #[arg(
        long,
        value_name = "SECONDS",
        env = "POSTERN_HEAD_TIMEOUT",
        default_value = "5"
    )]
    pub head_timeout: Seconds,

    /// Longest wait, in seconds, between two reads of a request body (and two writes of a response).
    #[arg(
        long,
        value_name = "SECONDS",
        env = "POSTERN_READ_TIMEOUT",
        default_value = "60"
    )]
    pub read_timeout: Seconds,

    /// On SIGTERM/SIGINT, seconds to let in-flight requests finish.
    #[arg(
        long,
        value_name = "SECONDS",
        env = "POSTERN_GRACEFUL_TIMEOUT",
        default_value = "30"
    )]
    pub graceful_timeout: Seconds,

    /// Under a master: seconds a worker started while others serve (a reload, a
    /// replacement) may take to import the app and be ready; then it is killed and its
    /// start counts as failed (a reload rolls back). The first start is never cut short.
    #[arg(
        long,
        value_name = "SECONDS",
        env = "POSTERN_WORKER_START_TIMEOUT",
        default_value = "80"
    )]
    pub worker_start_timeout: Seconds,

    /// Serve metrics (/metrics), status (/status) and a health check (/ping) over HTTP on
    /// HOST:PORT or unix:PATH (off by default; keep it on loopback).
    #[arg(long, value_name = "ADDR", env = "POSTERN_STATS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<ListenAddr>,

    /// Where the access log goes: `-` (stderr), a FILE, or `off`.
    #[arg(
        long,
        value_name = "-|FILE|off",
        env = "POSTERN_ACCESS_LOG",
        default_value = "-"
    )]
    pub access_log: String,

    /// Access log line format: text, json, or combined (Apache/nginx combined + duration);
    /// default: text, or json with --log-format json.
    #[arg(long, value_name = "FORMAT", env = "POSTERN_ACCESS_LOG_FORMAT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_log_format: Option<AccessLogFormat>,

    /// Write postern's own log (everything but the access log) to FILE instead of stderr
    /// (`-`: stderr); reopened on SIGUSR1.
    #[arg(long, value_name = "FILE", env = "POSTERN_LOG_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_file: Option<PathBuf>,

    /// Log format.
    #[arg(
        long,
        value_name = "FORMAT",
        env = "POSTERN_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// Log level or tracing filter (error, warn, info, debug, trace, or e.g. postern=debug,warn).
    #[arg(
        long,
        value_name = "LEVEL",
        env = "POSTERN_LOG_LEVEL",
        default_value = "info"
    )]
    pub log_level: String,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Send one request the way nginx would and print the response (-i style).
    Request(crate::client::RequestArgs),
    /// Load a uwsgi, FastCGI or SCGI server straight on its socket (no nginx) and
    /// report req/s, latency percentiles and errors by kind.
    Bench(crate::client::bench::BenchArgs),
    /// Convert a uWSGI ini file into a postern TOML config, printed on stdout: each value
    /// under the ini line it came from, each line that does not carry over as a comment
    /// saying why. A gunicorn config file (`gunicorn.conf.py`) too: its literal
    /// assignments are read, the file is not run.
    ///
    /// Exit status: 0; 3 when a line is REFUSED (`postern --ini` would stop on it, an
    /// unknown line under `strict = true` too: fix or remove it; for a gunicorn file, a
    /// line under NEEDS ATTENTION; the TOML is printed all the same); 2 when the file
    /// cannot be read.
    Migrate(MigrateArgs),
    /// Print a running postern's /status (its --stats address) as a table; --watch
    /// redraws it, uwsgitop style.
    Status(crate::stats::client::StatusArgs),
}

#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// The uWSGI ini file: `FILE` or `FILE:SECTION` (default section `uwsgi`), or a
    /// gunicorn config file.
    #[arg(value_name = "FILE[:SECTION]")]
    pub ini: String,
    /// `NAME=VALUE`: what uWSGI's `$(NAME)` is where postern will run, written as a
    /// constant (repeatable). migrate reads no variable of its own environment: a line
    /// with any other `$(NAME)` is left out, with a comment on how to set it at start.
    #[arg(long = "var", value_name = "NAME=VALUE")]
    pub vars: Vec<String>,
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    Ini(PathBuf),
    File(PathBuf),
    Env(String),
    CommandLine,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::Ini(p) => write!(f, "uWSGI ini {}", p.display()),
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Env(v) => write!(f, "env {v}"),
            Source::CommandLine => f.write_str("command line"),
        }
    }
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {}: {message}", path.display())]
    Parse {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("{} (from {from}): {message}", flag(key))]
    Invalid {
        key: String,
        from: Source,
        message: String,
    },
    #[error(
        "no APP given: run `postern module.path:callable` or `postern path/to/app.py` (see --help)"
    )]
    NoApp,
}

/// `--some-option` for a TOML key, `APP` for the app.
fn flag(key: &str) -> String {
    if key == "app" {
        "APP".into()
    } else {
        format!("--{key}")
    }
}

/// The options after merging every layer, each value with its source.
#[derive(Debug, Clone)]
pub struct Layered {
    pub options: Options,
    /// TOML key → where its value came from (keys that are not set are absent).
    pub sources: BTreeMap<String, Source>,
    /// The merged values, as TOML (for `--print-config`).
    pub values: toml::Table,
    /// The limits a layer switched off (`--timeout off`, `max-lifetime = 0`): not in
    /// `values`, as they are no value, but said as `off` by `--print-config` with the
    /// source in `sources`, apart from a limit no layer set.
    pub off: std::collections::BTreeSet<String>,
    /// Every option's default, typed and written back as TOML ([`clap_defaults`]): a
    /// layer that sets an option to its default (a `--print-config` output used as
    /// `--config` writes every default out; `--max-concurrency 1000`) has not changed it
    /// ([`Layered::changed`]).
    pub defaults: toml::Table,
    /// What the `--ini` file asks that postern runs without, as one message to log.
    pub ini_warnings: Option<String>,
    /// What runs differently though the `--ini` file carried over (logged, not warned).
    pub ini_info: Option<String>,
    /// The configuration files given (`--ini FILE`, `--config FILE`), for messages.
    pub files: Vec<String>,
}

/// Every option's default as [`Layered::merge`] types it, written back as TOML: the
/// options parsed from no argument and no environment (empty when that fails: then
/// any option a layer sets counts as changed).
fn clap_defaults() -> toml::Table {
    let cmd = Options::augment_args(clap::Command::new("postern")).mut_args(|a| a.env(None));
    cmd.try_get_matches_from(["postern"])
        .ok()
        .and_then(|m| Options::from_arg_matches(&m).ok())
        .and_then(|o| toml::Table::try_from(&o).ok())
        .unwrap_or_default()
}

/// The TOML keys of [`Options`], in declaration order, with their environment variable.
pub fn option_keys() -> Vec<(String, Option<String>)> {
    Options::augment_args(clap::Command::new("postern"))
        .get_arguments()
        .filter(|a| a.get_id() != "help")
        .map(|a| {
            (
                a.get_id().as_str().replace('_', "-"),
                a.get_env().map(|e| e.to_string_lossy().into_owned()),
            )
        })
        .collect()
}

/// How postern's long option `name` (without `--`) takes values, if it is postern's.
pub fn arity(name: &str) -> Option<crate::uwsgi_ini::Arity> {
    let cmd = Cli::command();
    let arg = cmd.get_arguments().find(|a| a.get_long() == Some(name))?;
    Some(crate::uwsgi_ini::Arity {
        takes_value: arg.get_action().takes_values(),
        repeatable: matches!(
            arg.get_action(),
            clap::ArgAction::Append | clap::ArgAction::Count
        ),
    })
}

/// The environment layer of `--env` (`POSTERN_ENV`, one `KEY=VALUE`) when the command
/// line sets `--env` too: clap reads an option's variable only when the command line
/// does not set it, but `--env` merges name by name across layers, so the variable's
/// name must not be lost. regression: `POSTERN_ENV=A=1 postern --env B=2` had no A.
fn env_table_of(var: &str) -> Result<Option<toml::Value>, ConfigError> {
    let Some(raw) = start_var(var) else {
        return Ok(None);
    };
    let invalid = |message: String| ConfigError::Invalid {
        key: "env".into(),
        from: Source::Env(var.to_owned()),
        message,
    };
    let text = raw
        .into_string()
        // Not the value itself: it may hold a secret.
        .map_err(|_| invalid("its value is not UTF-8".into()))?;
    let KeyValue(k, v) = text.parse::<KeyValue>().map_err(invalid)?;
    Ok(Some(toml::Value::Table(toml::Table::from_iter([(
        k,
        toml::Value::String(v),
    )]))))
}

/// What a reload needs of the start ([`Layered::from_command_line`]) to read the layers
/// again as the start did ([`reload::at_reload`]).
static AT_START: std::sync::OnceLock<AtStart> = std::sync::OnceLock::new();

struct AtStart {
    /// Where relative `--config` and `--ini` paths were read from (`--chdir` moves the
    /// process later), by its logical path ([`logical_cwd`]).
    cwd: Option<PathBuf>,
    /// `$VIRTUAL_ENV` at the start (`--env` may have set another since).
    virtual_env: Option<PathBuf>,
    /// The command line's parser as the start built it: clap takes each option's
    /// `POSTERN_*` variable when the parser is built, so this one holds the start's
    /// values. regression: a reload parsed `POSTERN_*` from the master's environment as
    /// it is now, where `[env]`/`--env` (`POSTERN_THREADS = "8"`) and a --preload app's
    /// `os.environ` writes had changed it.
    command: clap::Command,
    /// The `POSTERN_*` variables at the start (for [`env_table_of`]).
    vars: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    /// The variables of postern's options that were set but empty ([`unset_empty_vars`]).
    empty: Vec<String>,
}

/// Removes from the environment the variables of postern's options (`POSTERN_THREADS`,
/// `POSTERN_CONFIG`...) that are set but empty, and returns their names: an empty value
/// is no value, as a Compose file's `${THREADS}` or a Kubernetes `value: ""` gives when
/// nothing was meant to be set, so the lower layers and the default apply. Removed, not
/// only skipped, so that everything that reads them later (the reload, the app's
/// environment) sees them unset as well. Other `POSTERN_*` names (the app's own) are
/// left as they are. Called first thing by [`Layered::from_command_line`], while the
/// process has one thread.
/// regression: `POSTERN_THREADS=` made clap refuse every command line, `postern
/// request` (a container's health check) and `postern migrate` included;
/// `POSTERN_LOG_LEVEL=` was refused at start only, `POSTERN_INI=` broke the subcommands
/// with "cannot read --ini".
fn unset_empty_vars() -> Vec<String> {
    let mut empty = Vec::new();
    for arg in Cli::command().get_arguments() {
        let Some(var) = arg.get_env() else { continue };
        if std::env::var_os(var).is_some_and(|v| v.is_empty()) {
            std::env::remove_var(var);
            empty.push(var.to_string_lossy().into_owned());
        }
    }
    empty
}

/// The variables of postern's options that were set but empty at the start, taken as
/// not set ([`unset_empty_vars`]).
pub fn empty_vars() -> &'static [String] {
    AT_START.get().map_or(&[], |s| &s.empty)
}

/// `POSTERN_*` variables set at the start that no option reads, each as a sentence
/// ending with what it may have meant: a misspelt `POSTERN_WORKER=4` would otherwise be
/// ignored in silence, where a misspelt `--config` key is an error and an unknown ini
/// key a warning. Not postern's: `POSTERN_BIN`, `POSTERN_K8S_VENV` and `POSTERN_TEST_*`
/// (the test suite's), and what Kubernetes sets for a Service named `postern` in the
/// namespace (`POSTERN_SERVICE_HOST`, `POSTERN_PORT`, `POSTERN_PORT_80_TCP_ADDR`, …).
pub fn unknown_vars() -> Vec<String> {
    let Some(start) = AT_START.get() else {
        return Vec::new();
    };
    let known: Vec<String> = start
        .command
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    let mut unknown: Vec<String> = start
        .vars
        .iter()
        .map(|(k, _)| k.to_string_lossy().into_owned())
        .filter(|k| {
            !known.contains(k)
                && !matches!(k.as_str(), "POSTERN_BIN" | "POSTERN_K8S_VENV" | "POSTERN_PORT")
                && !["POSTERN_TEST_", "POSTERN_SERVICE_", "POSTERN_PORT_"]
                    .iter()
                    .any(|p| k.starts_with(p))
        })
        .map(|k| {
            let upper = k.to_ascii_uppercase().replace('-', "_");
            let closest = known
                .iter()
                .map(|v| (strsim::levenshtein(&upper, v), v))
                .min()
                .filter(|(d, _)| *d <= 3)
                .map(|(_, v)| v);
            match closest {
                Some(v) => format!("{k} is set but no option reads it: ignored (did you mean {v}?)"),
                None => format!(
                    "{k} is set but no option reads it: ignored (postern's variables are POSTERN_ and a long option's name in capitals, `-` as `_`: POSTERN_MAX_REQUESTS for --max-requests; see postern --help)"
                ),
            }
        })
        .collect();
    unknown.extend(uwsgi_vars(std::env::vars_os()));
    unknown.sort();
    unknown
}

/// uWSGI's options given as `UWSGI_*` variables (Docker images for uWSGI set
/// `UWSGI_PROCESSES`, `UWSGI_CHEAPER`, `UWSGI_INI`): uWSGI reads each as that option,
/// postern reads them only as `%(name)` values in an `--ini` file. Each set one that
/// names a uWSGI option is said with postern's option for it (the value is not
/// repeated: it may be a secret). Variables that name no option (uWSGI's own
/// `UWSGI_RELOADS`, placeholders' values) are not.
/// regression (probe 319): `UWSGI_PROCESSES=4 UWSGI_SOCKET=...` started one process on
/// the default address with nothing said.
fn uwsgi_vars(vars: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>) -> Vec<String> {
    use crate::uwsgi_ini::Outcome;
    let mut said = Vec::new();
    for (k, v) in vars {
        let (Some(k), Some(v)) = (k.to_str(), v.to_str()) else {
            continue;
        };
        let Some(name) = k.strip_prefix("UWSGI_").filter(|n| !n.is_empty()) else {
            continue;
        };
        let key = name.to_ascii_lowercase().replace('_', "-");
        let postern = if key == "ini" {
            Some("--ini FILE (POSTERN_INI)".to_owned())
        } else {
            let args = ["postern".to_owned(), format!("--{key}"), v.to_owned()];
            let (typed, _) = crate::uwsgi_ini::command_line::uwsgi_options(&args, |_| false);
            let Some(t) = typed.into_iter().next() else {
                continue;
            };
            if matches!(t.outcome, Outcome::Unknown | Outcome::Placeholder) {
                continue;
            }
            let flag = t.postern.first().and_then(|w| w.split_whitespace().next());
            flag.map(|w| match w.strip_prefix("--") {
                Some(flag) => format!(
                    "--{flag} (POSTERN_{})",
                    flag.to_ascii_uppercase().replace('-', "_")
                ),
                None => "the app as postern's APP argument (POSTERN_APP)".to_owned(),
            })
        };
        said.push(match postern {
            Some(p) => format!(
                "{k} is set: uWSGI reads it as its `{key}` option, postern does not read UWSGI_* variables as options (only as %(name) values in an --ini file): give {p}"
            ),
            None => format!(
                "{k} is set: uWSGI reads it as its `{key}` option, postern does not read UWSGI_* variables as options, and has no setting for it (`postern migrate` on an ini with that line says why)"
            ),
        });
    }
    said
}

/// The parser for `args`: the command line's, or for a subcommand (`postern request`,
/// `migrate`, `status`, `bench`), which uses none of the serving options, the same
/// without their `POSTERN_*` variables, so that an invalid one (`POSTERN_THREADS=x`)
/// breaks only what reads it. regression: it made the container's `postern request`
/// health check fail.
fn parser_for(command: &clap::Command, args: &[std::ffi::OsString]) -> clap::Command {
    let subcommand = args
        .get(1)
        .and_then(|a| a.to_str())
        .is_some_and(|first| command.find_subcommand(first).is_some());
    if subcommand {
        command.clone().mut_args(|a| a.env(None))
    } else {
        command.clone()
    }
}

/// The variable `var` (a `POSTERN_*` one) as the start had it, once the start has
/// recorded them; before that, as the environment has it.
fn start_var(var: &str) -> Option<std::ffi::OsString> {
    match AT_START.get() {
        Some(start) => start
            .vars
            .iter()
            .find(|(k, _)| k == var)
            .map(|(_, v)| v.clone()),
        None => std::env::var_os(var),
    }
}

/// The command line's parser, with the `POSTERN_*` values the start read (see
/// [`AtStart::command`]).
pub(crate) fn start_command() -> clap::Command {
    AT_START
        .get()
        .map_or_else(Cli::command, |s| s.command.clone())
}

/// The directory postern was started in (`--chdir` moves the process later), by its
/// logical path ([`logical_cwd`]).
pub fn start_dir() -> Option<PathBuf> {
    AT_START.get().and_then(|s| s.cwd.clone())
}

/// The working directory as the shell (or systemd's `WorkingDirectory=`) named it:
/// `$PWD` when it is an absolute path to this very directory (same device and inode as
/// `getcwd()`), else `getcwd()`, whose path has its symlinks resolved. A relative path
/// taken from it later (a reload's `--config`, `--ini`, `--chdir`) then goes through the
/// symlinks as a restart's would: `cd /srv/app/current && postern --config postern.toml`
/// reads the release `current` names at the reload. systemd sets no `$PWD`: under
/// `WorkingDirectory=/srv/app/current` alone this is the physical release, and a reload
/// reads the old release's relative files; the unit needs `Environment=PWD=/srv/app/current`
/// (which the inode check accepts), or absolute `--config`/`--chdir` through `current`
/// (README "Command line", deploy/systemd/postern.service).
/// regression: getcwd() alone was kept, so after a Capistrano-style switch of `current`
/// a reload read the old release's file (and imported its code).
pub fn logical_cwd() -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt as _;
    let physical = std::env::current_dir().ok()?;
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let logical = std::env::var_os("PWD")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute() && id(p).is_some() && id(p) == id(&physical));
    Some(logical.unwrap_or(physical))
}

/// `path` from the directory postern was started in ([`start_dir`]), else from the
/// working directory.
pub fn from_start_dir(path: &Path) -> PathBuf {
    match start_dir() {
        // `absolute` drops the `.` components (`./venv` gave a `sys.executable` of
        // `/srv/app/./venv/bin/python`: probe 328 LOW); it keeps `..`, which a symlink
        // before it makes mean something else than the lexical parent.
        Some(dir) if path.is_relative() => {
            let joined = dir.join(path);
            std::path::absolute(&joined).unwrap_or(joined)
        }
        _ => std::path::absolute(path).unwrap_or_else(|_| path.to_owned()),
    }
}

impl Layered {
    /// Parses the command line (and `POSTERN_*`, an empty one taken as not set), then
    /// merges it over the `--config` file, the `--ini` file and the defaults.
    pub fn from_command_line() -> Result<(Cli, Layered), ConfigError> {
        let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
        let empty = unset_empty_vars();
        let command = Cli::command();
        let _ = AT_START.set(AtStart {
            cwd: logical_cwd(),
            virtual_env: std::env::var_os("VIRTUAL_ENV").map(Into::into),
            command: command.clone(),
            vars: std::env::vars_os()
                .filter(|(k, _)| k.as_encoded_bytes().starts_with(b"POSTERN_"))
                .collect(),
            empty,
        });
        let matches = parser_for(&command, &args)
            .try_get_matches_from(&args)
            .unwrap_or_else(|e| clap_error::exit(e, &args));
        let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        let layered = Layered::merge(&cli, &matches)?;
        Ok((cli, layered))
    }

    /// Merges the layers under the parsed command line.
    pub fn merge(cli: &Cli, matches: &ArgMatches) -> Result<Layered, ConfigError> {
        let typed = toml::Table::try_from(&cli.options).expect("options serialise to TOML");
        let mut defaults = toml::Table::new();
        let mut env = Vec::new();
        let mut command_line = toml::Table::new();
        for (key, var) in option_keys() {
            let Some(mut value) = typed.get(&key).cloned() else {
                continue;
            };
            if key == "pythonpath" {
                value = value::path_list(value);
            }
            match matches.value_source(&key.replace('-', "_")) {
                Some(ValueSource::DefaultValue) => {
                    defaults.insert(key, value);
                }
                Some(ValueSource::EnvVariable) => env.push((key, var.unwrap_or_default(), value)),
                Some(ValueSource::CommandLine) => {
                    if let Some(var) = var.filter(|_| key == "env") {
                        if let Some(table) = env_table_of(&var)? {
                            env.push((key.clone(), var, table));
                        }
                    }
                    command_line.insert(key, value);
                }
                _ => {}
            }
        }

        let mut values = toml::Table::new();
        let mut sources = BTreeMap::new();
        let mut put = |table: toml::Table, source: Source| {
            for (k, v) in table {
                sources.insert(k.clone(), source.clone());
                // A table option (`[env]`) merges name by name: a higher layer sets or
                // overrides its variables without dropping the lower layers' others.
                let toml::Value::Table(entries) = v else {
                    values.insert(k, v);
                    continue;
                };
                for name in entries.keys() {
                    sources.insert(format!("{k}.{name}"), source.clone());
                }
                match values.get_mut(&k) {
                    Some(toml::Value::Table(old)) => old.extend(entries),
                    _ => {
                        values.insert(k, toml::Value::Table(entries));
                    }
                }
            }
        };
        put(defaults, Source::Default);
        let mut ini_warnings = None;
        let mut ini_info = None;
        if !cli.ini.is_empty() {
            let ini = load_ini(&cli.ini)?;
            // Each value's source names the ini line(s) it came from.
            for (key, value) in ini.table.clone() {
                let at = ini.origin(&key).unwrap_or_else(|| cli.ini.join(" "));
                put(
                    toml::Table::from_iter([(key, value)]),
                    Source::Ini(PathBuf::from(at)),
                );
            }
            ini_warnings = ini.warnings();
            ini_info = ini.info_message();
        }
        if let Some(path) = &cli.config {
            put(load_file(path)?, Source::File(path.clone()));
        }
        for (key, var, value) in env {
            put(toml::Table::from_iter([(key, value)]), Source::Env(var));
        }
        put(command_line, Source::CommandLine);
        // 0 or `off` switches a limit off, over a lower layer's value too.
        // regression: `--timeout 0` was "not a positive number of seconds", so a
        // --config file's timeout could not be removed for one run.
        let mut off = std::collections::BTreeSet::new();
        for key in value::OFF_LIMITS {
            if values.get(*key).is_some_and(value::is_off) {
                values.remove(*key);
                off.insert((*key).to_owned());
            }
        }

        let options = typed_options(&values, &sources)?;
        let mut files: Vec<String> = cli.ini.iter().map(|i| format!("--ini {i}")).collect();
        files.extend(
            cli.config
                .iter()
                .map(|c| format!("--config {}", c.display())),
        );
        Ok(Layered {
            options,
            sources,
            values,
            off,
            defaults: clap_defaults(),
            ini_warnings,
            ini_info,
            files,
        })
    }

    fn source(&self, key: &str) -> Source {
        self.sources.get(key).cloned().unwrap_or(Source::Default)
    }

    /// Where `key` was set when a user would not know it from the command they typed
    /// (a file, with its line where known, or the environment), for an error's message;
    /// None for a default or the command line.
    fn set_in(&self, key: &str) -> Option<String> {
        match self.source(key) {
            Source::Default | Source::CommandLine => None,
            source => Some(source.to_string()),
        }
    }

    /// A layer set `key` to something else than its default (a limit switched off
    /// included). Compared as typed: `lifespan-timeout = 60` is the default `60.0`,
    /// `fastcgi-buffer = "1m"` the default `"1M"`.
    fn changed(&self, key: &str) -> bool {
        if matches!(self.source(key), Source::Default) {
            return false;
        }
        if self.off.contains(key) {
            return true;
        }
        let Ok(typed) = toml::Table::try_from(&self.options) else {
            return true;
        };
        typed.get(key) != self.defaults.get(key)
    }

    /// The effective configuration as TOML, each value annotated with its source; keys
    /// that are not set are listed as comments.
    pub fn to_toml(&self, config: Option<&Config>) -> String {
        let mut out = String::from(
            "# postern: effective configuration (--print-config); usable as a --config file\n",
        );
        let mut tables = String::new();
        // An empty list or table is an option not set.
        let value = |key: &str| {
            self.values.get(key).filter(|v| match v {
                toml::Value::Array(a) => !a.is_empty(),
                toml::Value::Table(t) => !t.is_empty(),
                _ => true,
            })
        };
        for (key, _) in option_keys() {
            match value(&key) {
                Some(toml::Value::Table(t)) => {
                    let table = self.source(&key);
                    tables.push_str(&format!("\n[{key}]  # {table}\n"));
                    for (k, v) in t {
                        tables.push_str(&format!("{} = {v}", toml_key(k)));
                        match self.sources.get(&format!("{key}.{k}")) {
                            Some(s) if *s != table => tables.push_str(&format!("  # {s}\n")),
                            _ => tables.push('\n'),
                        }
                    }
                }
                Some(v) => out.push_str(&format!("{key} = {v}  # {}\n", self.source(&key))),
                // regression: a limit switched off over a lower layer (`--timeout off`
                // over a file's timeout = 30) was listed as "not set", as if no layer
                // had it: said as `off` (a --config file reads it back as off).
                None if self.off.contains(&key) => {
                    out.push_str(&format!("{key} = \"off\"  # {}\n", self.source(&key)));
                }
                None => {}
            }
        }
        if config.is_some_and(|c| c.default_listener) {
            out.push_str(&format!(
                "uwsgi = [\"{DEFAULT_LISTENER}\"]  # default (no listener configured)\n"
            ));
        }
        if let Some(c) = config.filter(|c| c.supervised && !c.opts.master) {
            out.push_str(&format!(
                "# a master supervises the {} worker(s): implied by {}\n",
                c.opts.workers,
                if c.opts.workers > 1 {
                    "workers > 1"
                } else {
                    "a supervisor option (preload, pidfile, max-*, timeout, slow-log, touch-reload)"
                }
            ));
        }
        if let Some(v) = config.and_then(|c| c.venv.as_ref()) {
            if !self.values.contains_key("venv") {
                out.push_str(&format!(
                    "venv = {}  # env VIRTUAL_ENV\n",
                    toml::Value::String(v.display().to_string())
                ));
            }
        }
        let unset: Vec<String> = option_keys()
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| value(k).is_none() && !self.off.contains(k))
            .filter(|k| !(k == "uwsgi" && config.is_some_and(|c| c.default_listener)))
            .filter(|k| !(k == "venv" && config.is_some_and(|c| c.venv.is_some())))
            .collect();
        if !unset.is_empty() {
            out.push_str(&format!("# not set: {}\n", unset.join(", ")));
        }
        if !empty_vars().is_empty() {
            out.push_str(&format!(
                "# empty, so taken as not set: {}\n",
                empty_vars().join(", ")
            ));
        }
        out + &tables
    }
}

/// The keys whose values name users and groups of the host postern runs on: a file
/// converted elsewhere may name those of another host ([`not_on_this_host`]).
const HOST_KEYS: [&str; 3] = ["uid", "gid", "socket-owner"];

/// The values of [`HOST_KEYS`] in `table` (a `--config` file's keys) that name a user or
/// group this host does not have, each key with the lookup's message (`no such user
/// "www-data" on this host`). `postern migrate` lists them under NEEDS ATTENTION and
/// writes them all the same, its exit status unchanged: they may exist on the host
/// postern will run on. regression: migrate never looked, so a typo in `uid` was found
/// only by the start on the target host.
pub fn not_on_this_host(table: &toml::Table) -> Vec<(String, String)> {
    HOST_KEYS
        .iter()
        .filter_map(|&key| {
            let value = table.get(key)?.as_str()?;
            let spec = if key == "gid" {
                format!(":{value}")
            } else {
                value.to_owned()
            };
            let e = parse_owner(&spec).err()?;
            Some((key.to_owned(), format!("{e} on this host")))
        })
        .collect()
}

/// What postern's start-up would refuse among `table`'s values (a `--config` file's
/// keys, as `postern migrate` writes them): each key at fault with the start-up's
/// message (`--threads: 2000 is not between 1 and 1024`), checked as a `--config` file
/// of them would be over the defaults (no environment, no command line). The app, when
/// `table` has none, is taken as given elsewhere; [`HOST_KEYS`] are not checked.
/// regression: migrate carried `threads = 2000` or `processes = 300` over without a
/// word, and the TOML it wrote then failed at start.
/// `postern migrate FILE.ini`: [`crate::uwsgi_ini::load_to_migrate`], with the values
/// postern's start-up would refuse reported as the lines the mapping refuses are, with
/// the start-up's message.
pub fn migrate_uwsgi(
    spec: &str,
    vars: &[String],
) -> Result<crate::uwsgi_ini::Translation, crate::uwsgi_ini::IniError> {
    let mut ini = crate::uwsgi_ini::load_to_migrate(spec, vars)?;
    for (key, why) in refused_values(&ini.table) {
        ini.refuse_key(&key, &why);
    }
    for (key, why) in not_on_this_host(&ini.table) {
        ini.not_on_this_host(&key, &why);
    }
    Ok(ini)
}

pub fn refused_values(table: &toml::Table) -> Vec<(String, String)> {
    let cmd = Cli::command().mut_args(|a| a.env(None));
    let Ok(matches) = cmd.try_get_matches_from(["postern"]) else {
        return Vec::new();
    };
    let Ok(cli) = Cli::from_arg_matches(&matches) else {
        return Vec::new();
    };
    let Ok(defaults) = Layered::merge(&cli, &matches) else {
        return Vec::new();
    };
    let mut left = table.clone();
    left.retain(|k, _| !HOST_KEYS.contains(&k));
    let mut refused = Vec::new();
    for _ in 0..=table.len() {
        let mut values = defaults.values.clone();
        let mut sources = defaults.sources.clone();
        values
            .entry("app")
            .or_insert_with(|| toml::Value::String("app".into()));
        for (k, v) in &left {
            // 0 or `off` switches a limit off, as `Layered::merge` takes it.
            // regression: migrate said postern refuses gunicorn's `timeout = 0`
            // ("not a positive number", exit 3), which postern starts with.
            if value::OFF_LIMITS.contains(&k.as_str()) && value::is_off(v) {
                values.remove(k);
                continue;
            }
            values.insert(k.clone(), v.clone());
            sources.insert(k.clone(), Source::File(PathBuf::from("postern.toml")));
        }
        let checked = typed_options(&values, &sources).and_then(|options| {
            let layered = Layered {
                options,
                sources,
                values,
                off: Default::default(),
                defaults: Default::default(),
                ini_warnings: None,
                ini_info: None,
                files: Vec::new(),
            };
            Config::resolve(&layered, None)
        });
        match checked {
            Err(ConfigError::Invalid { key, message, .. }) if left.contains_key(&key) => {
                left.remove(&key);
                refused.push((key.clone(), format!("{}: {message}", flag(&key))));
            }
            _ => break,
        }
    }
    refused
}

/// A key as TOML writes it (bare when it can be).
fn toml_key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        k.to_owned()
    } else {
        toml::Value::String(k.to_owned()).to_string()
    }
}

/// The merged table as typed options; a value that does not parse is reported with
/// its key and the layer it came from.
fn typed_options(
    values: &toml::Table,
    sources: &BTreeMap<String, Source>,
) -> Result<Options, ConfigError> {
    toml::Value::Table(values.clone())
        .try_into::<Options>()
        .map_err(|whole| {
            // Find the key at fault: each key alone (every field has a default).
            for (k, v) in values {
                let one = toml::Value::Table(toml::Table::from_iter([(k.clone(), v.clone())]));
                if let Err(e) = one.try_into::<Options>() {
                    return ConfigError::Invalid {
                        key: k.clone(),
                        from: sources.get(k).cloned().unwrap_or(Source::Default),
                        message: readable(e.message().trim(), k),
                    };
                }
            }
            ConfigError::Invalid {
                key: "config".into(),
                from: Source::Default,
                message: whole.message().to_owned(),
            }
        })
}

/// serde's message for a value of the wrong type, in the words of the config file:
/// "expected usize" means nothing to a user, and a number or boolean written in quotes
/// gets the line it should be.
fn readable(message: &str, key: &str) -> String {
    let mut out = message.to_owned();
    // The bounds `Options` checks next, so that `workers = -1` is not told "0 or more"
    // and then, written 0, "not between 1 and 256".
    let whole = match key {
        "workers" => "a whole number from 1 to 256",
        "threads" => "a whole number from 1 to 1024",
        "max-concurrency" => "a whole number from 1 to 1000000",
        _ => "a whole number, 0 or more",
    };
    for t in ["usize", "u64", "u32", "u16", "u8"] {
        out = out.replace(&format!("expected {t}"), &format!("expected {whole}"));
    }
    out = out.replace("expected a boolean", "expected true or false");
    let quoted = message
        .strip_prefix("invalid type: string \"")
        .and_then(|rest| rest.split('"').next());
    if let Some(v) = quoted {
        if v.parse::<u64>().is_ok() || v == "true" || v == "false" {
            out.push_str(&format!(" (write it without quotes: {key} = {v})"));
        }
    }
    out
}

fn read(what: &'static str, path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// What to say when APP names a configuration file: uWSGI takes a bare config file
/// (`uwsgi uwsgi.ini`), postern takes the app. regression: `postern uwsgi.ini` tried to
/// import the module `uwsgi` ("No module named 'uwsgi'"). `MODULE:CALLABLE` is an app.
fn config_file_as_app(app: &str) -> Option<String> {
    let path = Path::new(app);
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    let file = crate::uwsgi_ini::command_line::quoted(app);
    Some(match ext.as_str() {
        "ini" => format!(
            "{app} is a configuration file, not an app: did you mean `--ini {file}`? (it names the app itself, with module = or wsgi-file =)"
        ),
        "toml" => format!(
            "{app} is a configuration file, not an app: did you mean `--config {file}`? (give the app in it as app = \"module:callable\", or here)"
        ),
        "yaml" | "yml" | "xml" | "json" => format!(
            "{app} is a configuration file, not an app; postern reads uWSGI ini files (--ini FILE) and its own TOML (--config FILE), not uWSGI's {} files: write its options into an ini file's [uwsgi] section (same names), then run `postern --ini FILE`",
            ext.to_ascii_uppercase()
        ),
        _ => return None,
    })
}

/// What to say when APP is a word that reads as a command postern does not have
/// (`postern check`, `postern version`, `postern reload`), unless a module of that name
/// is in the current directory. regression (probe 334): postern bound its listener,
/// started Python and said "No module named 'check'".
fn word_as_app(app: &str) -> Option<String> {
    let flag = match app {
        "check" | "version" | "help" => format!("--{app}"),
        "print-config" | "print_config" | "config" => "--print-config".to_owned(),
        "reload" | "stop" | "restart" => {
            return (!module_here(app)).then(|| format!(
                "{app:?} is not a postern command (its commands are request, bench, migrate and status): a running postern is reloaded with SIGHUP (`kill -HUP $(cat PIDFILE)`, `systemctl reload`) and stopped with SIGTERM; or, if {app:?} is your app, give its file (`{app}.py`) or `{app}:application`"
            ));
        }
        _ => return None,
    };
    (!module_here(app)).then(|| format!(
        "{app:?} is not a postern command: did you mean `postern {flag} APP …`? (if {app:?} is your app, give its file, `{app}.py`, or `{app}:application`)"
    ))
}

/// A Python module or package named `name` in the current directory.
fn module_here(name: &str) -> bool {
    Path::new(&format!("{name}.py")).exists() || Path::new(name).join("__init__.py").exists()
}

/// A `--config` file that is a uWSGI ini file: its `[uwsgi]` header, or a `.ini` name.
fn ini_given_as_config(path: &Path, text: &str) -> bool {
    text.lines().any(|l| l.trim() == "[uwsgi]")
        || path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("ini"))
}

/// The `--config` file as a table; unknown keys are an error (a typo must not fall back
/// to a default silently).
fn load_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = read("--config", path)?;
    // regression: a gunicorn.conf.py said only a TOML parse error, or `unknown key bind`.
    if let Some(message) = gunicorn::not_toml(path, &text) {
        return Err(ConfigError::Parse {
            what: "--config",
            path: path.to_owned(),
            message,
        });
    }
    let parsed = toml::from_str::<toml::Table>(&text);
    // regression: `postern --config uwsgi.ini` said only the TOML parse error.
    if ini_given_as_config(path, &text) && (parsed.is_err() || text.contains("[uwsgi]")) {
        return Err(ConfigError::Parse {
            what: "--config",
            path: path.to_owned(),
            message: format!(
                "this is a uWSGI ini file, and --config reads postern's TOML: use `--ini {}` (or convert it once: postern migrate {})",
                path.display(),
                path.display()
            ),
        });
    }
    let mut table: toml::Table = parsed.map_err(|e| ConfigError::Parse {
        what: "--config",
        path: path.to_owned(),
        message: toml_error_at(&text, &e),
    })?;
    modes_as_written(&text, &mut table);
    env_as_written(&text, &mut table);
    let known: Vec<String> = option_keys().into_iter().map(|(k, _)| k).collect();
    // Each with what it may have meant: a key written with `_`, or uWSGI's name.
    // regression: `max_requests`, `processes`, `socket` were only "unknown".
    let unknown: Vec<String> = table
        .iter()
        .filter(|(k, _)| !known.contains(k))
        .map(|(k, v)| {
            let dashed = k.replace('_', "-");
            let value = match v {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let closest = known
                .iter()
                .map(|o| (strsim::levenshtein(&dashed, o), o))
                .filter(|(d, _)| *d <= 2)
                .min();
            if known.contains(&dashed) {
                format!("{k} (did you mean {dashed}?)")
            } else if k == "ini" {
                // regression (probe): it said uWSGI's include advice ("postern reads
                // one file"), which is about a line inside an ini file.
                format!("{k} (a uWSGI file is read with --ini FILE on the command line, not from a --config file; or turn it into keys for this file with `postern migrate FILE`)")
            } else if k == "config" || k == "include" {
                // regression (probe 385): `config = "other.toml"` got uWSGI's advice
                // about ini includes.
                format!("{k} (a --config file names no other file: copy that file's keys into this one, or give it to --config instead)")
            } else if let Some(hint) = crate::uwsgi_ini::config_key_hint(k, &value)
                .or_else(|| gunicorn::config_key_hint(k, &value))
            {
                format!("{k} ({hint})")
            } else if let Some((_, option)) = closest {
                // regression (probe): `proceses = 3` was only "unknown".
                format!("{k} (did you mean {option}?)")
            } else {
                k.clone()
            }
        })
        .collect();
    if !unknown.is_empty() {
        return Err(ConfigError::Parse {
            what: "--config",
            path: path.to_owned(),
            message: format!(
                "unknown key{} {} (the keys are the long options' names: see postern --help)",
                if unknown.len() > 1 { "s" } else { "" },
                unknown.join(", ")
            ),
        });
    }
    // In TOML every key after a `[table]` header belongs to that table: an option
    // written below `[env]` (which `--print-config` and the README's sample put last)
    // would silently become an environment variable, its option left at its default.
    // regression (probe 334, MEDIUM): `workers = 4` and `timeout = 30` below `[env]`
    // gave 1 worker and no timeout, `--check` said "configuration OK", and a reload
    // said `applied=env (timeout added)`.
    if let Some(toml::Value::Table(env)) = table.get("env") {
        let options: Vec<&String> = env
            .keys()
            .filter(|k| known.contains(k) || known.contains(&k.replace('_', "-")))
            .collect();
        if !options.is_empty() {
            let names: Vec<&str> = options.iter().map(|k| k.as_str()).collect();
            return Err(ConfigError::Parse {
                what: "--config",
                path: path.to_owned(),
                message: format!(
                    "[env] has {}, which {} postern's option{}: in TOML every key after a [table] header belongs to that table, so write the options above [env] (an environment variable of that very name can be given with --env NAME=VALUE or POSTERN_ENV)",
                    names.join(", "),
                    if names.len() > 1 { "are" } else { "is" },
                    if names.len() > 1 { "s" } else { "" },
                ),
            });
        }
    }
    Ok(table)
}

/// A TOML syntax error as one line: where it is and what is wrong, never the line's
/// text. toml's own Display quotes the offending source line (and a caret line under
/// it), so an `[env]` secret on that line reached the log (a refused reload's ERROR
/// line) and the message took 4-5 lines. regression: a duplicate `SECRET_KEY = "…"`
/// in `[env]` printed its value.
fn toml_error_at(text: &str, e: &toml::de::Error) -> String {
    let message: Vec<&str> = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let mut message = message.join("; ");
    let Some(span) = e.span() else {
        return message;
    };
    // A duplicate key's span is the key (a name, not a value): say which.
    if message == "duplicate key" {
        if let Some(key) = text.get(span.clone()).filter(|k| !k.contains(['\n', '='])) {
            message = format!("duplicate key {}", key.trim());
        }
    }
    let start = span.start.min(text.len());
    let before = text.as_bytes().get(..start).unwrap_or_default();
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    // Columns count characters, as an editor does (the span is in bytes).
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    format!("line {line}, column {column}: {message}")
}

/// An `[env]` number or boolean becomes its text as written: the table holds the
/// value, whose text can differ (`VERSION = 1.10` is the float 1.1, `MASK = 0o22` the
/// integer 18). regression (probe 385): `1.10` reached the app as "1.1".
fn env_as_written(text: &str, table: &mut toml::Table) {
    #[derive(serde::Deserialize)]
    struct Written {
        env: Option<BTreeMap<String, toml::Spanned<toml::Value>>>,
    }
    let Ok(Written { env: Some(written) }) = toml::from_str::<Written>(text) else {
        return;
    };
    let Some(toml::Value::Table(env)) = table.get_mut("env") else {
        return;
    };
    for (k, v) in written {
        if let toml::Value::Integer(_) | toml::Value::Float(_) = v.get_ref() {
            if let Some(literal) = text.get(v.span()) {
                env.insert(k, toml::Value::String(literal.trim().to_owned()));
            }
        }
    }
}

/// `socket-mode` or `umask` given as a TOML integer becomes the octal text it stands
/// for. A mode is octal text everywhere else (`--socket-mode 660`), so an unquoted
/// `660` means 0o660 (as `chmod 660` does); but TOML's own `0o660` is the integer 432,
/// whose text would read as mode 0o432. The table has lost how the number was written,
/// so it is looked up in the source: `0o`, `0x` and `0b` literals are numbers, decimal
/// ones the octal digits typed (`umask = 27` is 027: TOML refuses a leading zero).
fn modes_as_written(text: &str, table: &mut toml::Table) {
    #[derive(serde::Deserialize)]
    struct Written {
        #[serde(rename = "socket-mode")]
        socket_mode: Option<toml::Spanned<toml::Value>>,
        umask: Option<toml::Spanned<toml::Value>>,
    }
    let Ok(written) = toml::from_str::<Written>(text) else {
        return;
    };
    for (key, mode) in [
        ("socket-mode", written.socket_mode),
        ("umask", written.umask),
    ] {
        let Some(mode) = mode else {
            continue;
        };
        let toml::Value::Integer(n) = *mode.get_ref() else {
            continue;
        };
        let literal = text
            .get(mode.span())
            .unwrap_or_default()
            .trim_start_matches('+');
        if ["0o", "0x", "0b"].iter().any(|p| literal.starts_with(p)) {
            table.insert(key.into(), toml::Value::String(format!("{n:o}")));
        }
    }
}

/// The `--ini FILE[:SECTION]` file, read with uWSGI's rules and mapped onto postern's
/// options. Lines postern cannot run as written stop it here, all in one message.
fn load_ini(specs: &[String]) -> Result<crate::uwsgi_ini::Translation, ConfigError> {
    use crate::uwsgi_ini::Context;
    /// The process as the start's read of the ini saw it (environment, start directory,
    /// user and group), for a reload's: regression: a reload expanded `$(VAR)`, `%v`,
    /// `@(file)`, `%u`/`%g` from the master as it is now, so an unchanged ini's
    /// `env = MYTHREADS=4` + `threads = $(MYTHREADS:-1)` started with 1 thread and a
    /// reload ran 4.
    static AT_START: std::sync::OnceLock<Context> = std::sync::OnceLock::new();
    let ctx = match AT_START.get() {
        Some(start) => start.with_host_now(),
        None => {
            let mut ctx = Context::from_process();
            // Relative `@(file)` and `%v` from the logical start dir, as the --ini path
            // itself: through `current` as it is at a reload.
            if let Some(dir) = start_dir() {
                ctx.cwd = dir;
            }
            let _ = AT_START.set(ctx.clone());
            ctx
        }
    };
    let path = PathBuf::from(specs.join(" "));
    let ini = crate::uwsgi_ini::load_many_with(specs, &ctx).map_err(|e| match e {
        crate::uwsgi_ini::IniError::Read { path, source } => ConfigError::Read {
            what: "--ini",
            path,
            source,
        },
        e => ConfigError::Parse {
            what: "--ini",
            path: path.clone(),
            message: e.to_string(),
        },
    })?;
    ini.check().map_err(|e| ConfigError::Parse {
        what: "--ini",
        path,
        message: e.to_string(),
    })?;
    Ok(ini)
}

/// `path` from the directory postern was started in.
fn absolute(path: &Path) -> PathBuf {
    from_start_dir(path)
}

fn absolute_addr(addr: ListenAddr) -> ListenAddr {
    match addr {
        ListenAddr::Unix(p) => ListenAddr::Unix(absolute(&p)),
        tcp => tcp,
    }
}

/// The resolved configuration of a serving postern.
#[derive(Debug, Clone)]
pub struct Config {
    /// The merged options (every value parsed and range-checked).
    pub opts: Options,
    pub app: AppSpec,
    /// Each listener and the protocol it speaks.
    pub listeners: Vec<(Protocol, ListenAddr)>,
    /// No listener was configured: the default is in use (said in the start-up log).
    pub default_listener: bool,
    /// With [`Config::default_listener`], the configuration files given (which then set
    /// no listener: a start warns, see [`Config::default_listener_warning`]).
    pub no_listener_in: Option<String>,
    /// `--mount` prefixes, without a trailing `/`.
    pub mounts: Vec<Vec<u8>>,
    /// `--venv`, else `$VIRTUAL_ENV`.
    pub venv: Option<PathBuf>,
    /// [`Config::venv`] is `$VIRTUAL_ENV`'s (no `--venv` given): said in its errors.
    pub venv_from_env: bool,
    /// Where `--venv` was set when not on the command line (an ini's `home =` line, a
    /// `--config` file, `POSTERN_VENV`): said in its errors.
    pub venv_source: Option<String>,
    /// Where `--chdir` was set when not on the command line: said in its error.
    pub chdir_source: Option<String>,
    /// A master supervises the worker(s).
    pub supervised: bool,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub socket_owner: Option<(Option<u32>, Option<u32>)>,
    /// What the `--ini` file asks that postern runs without (logged at start).
    pub ini_warnings: Option<String>,
    /// What runs differently though the `--ini` file carried over (logged at start).
    pub ini_info: Option<String>,
    /// Options set that nothing reads in this configuration, each as a sentence
    /// (warned at start and by `--check`): `--socket-mode` with TCP listeners only, an
    /// ASGI option with `--interface wsgi`, a FastCGI one without a FastCGI listener.
    pub unused: Vec<String>,
    /// The ASGI-only options that were set (`--loop`, `--max-concurrency`, `--lifespan`,
    /// `--lifespan-timeout`), said by a worker when `auto` finds a WSGI app.
    pub asgi_options_set: Vec<&'static str>,
}

/// Options that only an ASGI app reads.
const ASGI_OPTIONS: [&str; 4] = ["loop", "max-concurrency", "lifespan", "lifespan-timeout"];

impl Config {
    /// What a start (and `--check`) warns when configuration files set no listener and
    /// systemd passed none: uWSGI refuses to start so; postern listens on its default,
    /// which a front server set up for the file's socket does not reach.
    /// regression (probe 401): an ini whose socket line was mistyped (`socket: PATH`)
    /// started on 127.0.0.1:3031 with one INFO line, and nginx answered 502.
    pub fn default_listener_warning(&self) -> Option<String> {
        let files = self.no_listener_in.as_ref()?;
        Some(format!(
            "{files} set no listener (uwsgi, fastcgi or scgi; in a uWSGI ini, socket =): postern listens on its default, --uwsgi {DEFAULT_LISTENER}, which a front server set up for another socket does not reach (502); set the socket the front server uses"
        ))
    }

    /// Checks what the types alone cannot and derives what the server runs.
    /// `virtual_env` is `$VIRTUAL_ENV`, the last fallback for `--venv`.
    pub fn resolve(layered: &Layered, virtual_env: Option<PathBuf>) -> Result<Config, ConfigError> {
        let o = layered.options.clone();
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.to_owned(),
            from: layered.source(key),
            message,
        };
        // uWSGI's `--mount /app=app.py` (a prefix and the app to mount there): postern
        // serves one app, named on its own. Said before a missing APP: that is where
        // the uWSGI user put it. regression: it was taken as the prefix "/app=app.py",
        // which no request path starts with.
        for m in &o.mount {
            let uwsgi = crate::uwsgi_ini::is_uwsgi_mount(m)
                .then(|| crate::uwsgi_ini::postern_words("mount", m))
                .flatten();
            if let Some(words) = uwsgi {
                return Err(invalid(
                    "mount",
                    format!(
                        "{m:?} is uWSGI's MOUNTPOINT=APP; postern's --mount is the URL prefix alone and the app is named on its own: `{}`",
                        words.join(" ")
                    ),
                ));
            }
        }
        let app = o.app.as_deref().ok_or(ConfigError::NoApp)?;
        if let Some(hint) = config_file_as_app(app)
            .or_else(|| gunicorn::config_as_app(app))
            .or_else(|| word_as_app(app))
        {
            return Err(invalid("app", hint));
        }
        let app = AppSpec::parse(app).map_err(|m| invalid("app", m))?;

        let mut listeners: Vec<(Protocol, ListenAddr)> = Vec::new();
        for (protocol, key, addrs) in [
            (Protocol::Uwsgi, "uwsgi", &o.uwsgi),
            (Protocol::FastCgi, "fastcgi", &o.fastcgi),
            (Protocol::Scgi, "scgi", &o.scgi),
        ] {
            for addr in addrs {
                // Compared as they will be bound: `unix:a.sock` and `unix:$PWD/a.sock`
                // are one socket.
                let addr = absolute_addr(addr.clone());
                if let Some((other, _)) = listeners.iter().find(|(_, a)| *a == addr) {
                    // One socket speaks one protocol: a second one needs its own address.
                    return Err(invalid(
                        key,
                        if *other == protocol {
                            format!("{addr} is given twice")
                        } else {
                            format!(
                                "{addr} is --{}'s address too: a socket speaks one protocol, give each its own address",
                                other.name()
                            )
                        },
                    ));
                }
                if o.stats.clone().map(absolute_addr) == Some(addr.clone()) {
                    return Err(invalid(
                        key,
                        format!("{addr} is --stats's address too: give each its own"),
                    ));
                }
                listeners.push((protocol, addr));
            }
        }
        let default_listener = listeners.is_empty();
        if default_listener {
            let addr = DEFAULT_LISTENER
                .parse()
                .expect("the default listener parses");
            listeners.push((Protocol::Uwsgi, addr));
        }
        let mut mounts = Vec::new();
        for m in &o.mount {
            let t = m.trim_end_matches('/');
            if !m.starts_with('/') || t.contains(['?', '#']) {
                return Err(invalid(
                    "mount",
                    format!("{m:?} is not a URL path prefix like /app"),
                ));
            }
            // The prefix is compared with the decoded path (PATH_INFO): an encoded
            // one would never match, silently.
            if t.as_bytes()
                .windows(3)
                .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
            {
                return Err(invalid(
                    "mount",
                    format!("{m:?} is percent-encoded: give the prefix as the decoded path the app sees (e.g. /my app for /my%20app)"),
                ));
            }
            if !t.is_empty() {
                mounts.push(t.as_bytes().to_vec());
            }
        }
        if o.threads == 0 || o.threads > 1024 {
            return Err(invalid(
                "threads",
                format!("{} is not between 1 and 1024", o.threads),
            ));
        }
        if o.max_concurrency == 0 || o.max_concurrency > 1_000_000 {
            return Err(invalid(
                "max-concurrency",
                format!("{} is not between 1 and 1000000", o.max_concurrency),
            ));
        }
        if o.workers == 0 || o.workers > 256 {
            return Err(invalid(
                "workers",
                format!("{} is not between 1 and 256", o.workers),
            ));
        }
        // A worker's start alone (Python, the app's modules) takes a good part of a
        // second: a shorter bound would fail every reload and every replacement.
        // regression: 0.001 was accepted, and then no reload ever succeeded.
        if o.worker_start_timeout.0 < std::time::Duration::from_secs(1) {
            return Err(invalid(
                "worker-start-timeout",
                format!(
                    "{}s is too short: at least 1 (a worker's import takes a good part of a second; under it every reload would fail)",
                    o.worker_start_timeout
                ),
            ));
        }
        if !(4..=65535).contains(&o.buffer_size.0) {
            return Err(invalid(
                "buffer-size",
                format!(
                    "{} is outside 4..=65535 (the uwsgi protocol cannot carry more)",
                    o.buffer_size.0
                ),
            ));
        }
        if o.body_spool_threshold.0 > 1 << 30 {
            return Err(invalid(
                "body-spool-threshold",
                "at most 1G: larger bodies belong in a temporary file, not in memory".into(),
            ));
        }
        if o.max_connections == Some(0) {
            return Err(invalid("max-connections", "must be at least 1".into()));
        }
        if o.fastcgi_buffer.0 < 64 * 1024 || o.fastcgi_buffer_total.0 < o.fastcgi_buffer.0 {
            return Err(invalid(
                "fastcgi-buffer",
                "at least 64K (one FastCGI record), and --fastcgi-buffer-total at least as much"
                    .into(),
            ));
        }
        if o.listen_backlog < 1 {
            return Err(invalid("listen-backlog", "must be at least 1".into()));
        }
        log_filter(&o.log_level).map_err(|m| invalid("log-level", m))?;
        if o.access_log.is_empty() {
            return Err(invalid(
                "access-log",
                "empty: use - (stderr), off, or a file path".into(),
            ));
        }
        let uid = o
            .uid
            .as_deref()
            .map(|u| {
                parse_owner(u)
                    .map(|(uid, _)| uid.unwrap_or(0))
                    .map_err(|m| invalid("uid", m))
            })
            .transpose()?;
        let gid = o
            .gid
            .as_deref()
            .map(|g| {
                parse_owner(&format!(":{g}"))
                    .map(|(_, gid)| gid.unwrap_or(0))
                    .map_err(|m| invalid("gid", m))
            })
            .transpose()?;
        let socket_owner = o
            .socket_owner
            .as_deref()
            .map(|s| parse_owner(s).map_err(|m| invalid("socket-owner", m)))
            .transpose()?;
        // Zero means "off" for the recycling limits, as in uWSGI.
        let max_requests = o.max_requests.filter(|&n| n > 0);
        // A worker counts its requests in 32-bit halves of one atomic word (begun and
        // ended, so that its room check and its claim are one step).
        if max_requests.is_some_and(|n| n > u64::from(u32::MAX) / 2) {
            return Err(invalid(
                "max-requests",
                format!("must be at most {} (or 0: off)", u32::MAX / 2),
            ));
        }
        let max_rss = o.max_rss.filter(|&n| n > 0);
        // A worker compares its RSS in KiB: MiB * 1024 must fit in 64 bits. 1 PiB is
        // far above any machine's memory and far below that.
        if max_rss.is_some_and(|n| n > MAX_RSS_MIB) {
            return Err(invalid(
                "max-rss",
                format!("must be at most {MAX_RSS_MIB} MiB (1 PiB; or 0: off)"),
            ));
        }
        let supervised = o.workers > 1
            || o.master
            || o.preload
            || o.touch_reload.is_some()
            || o.pidfile.is_some()
            || max_requests.is_some()
            || max_rss.is_some()
            || o.max_lifetime.is_some()
            || o.timeout.is_some()
            || o.slow_log.is_some();
        let venv_from_env = o.venv.is_none() && virtual_env.is_some();
        let venv = o
            .venv
            .clone()
            .or(virtual_env)
            .filter(|p| !p.as_os_str().is_empty())
            .map(|p| absolute(&p));
        // Relative paths mean "from where postern was started", whatever --chdir says
        // (--pythonpath excepted: it is a sys.path entry, relative to the app's directory).
        let mut o = o;
        // 0 is no limit (as a layer's `off`, removed before this).
        o.max_body = o.max_body.filter(|s| s.0 > 0);
        // `-` is stderr, as for --access-log (gunicorn's `--log-file -`).
        // regression: it wrote postern's log to a file named `-`.
        if o.log_file.as_deref() == Some(Path::new("-")) {
            o.log_file = None;
        }
        for p in [&mut o.pidfile, &mut o.log_file, &mut o.touch_reload]
            .into_iter()
            .flatten()
        {
            *p = absolute(p);
        }
        if !matches!(o.access_log.as_str(), "-" | "off") {
            o.access_log = absolute(Path::new(&o.access_log)).display().to_string();
        }
        o.stats = o.stats.map(absolute_addr);
        let (unused, asgi_options_set) = unused_options(layered, &o, &listeners);
        Ok(Config {
            opts: Options {
                max_requests,
                max_rss,
                ..o
            },
            app,
            listeners,
            default_listener,
            no_listener_in: (default_listener && !layered.files.is_empty())
                .then(|| layered.files.join(" and ")),
            mounts,
            venv,
            venv_from_env,
            venv_source: layered.set_in("venv"),
            chdir_source: layered.set_in("chdir"),
            supervised,
            uid,
            gid,
            socket_owner,
            ini_warnings: layered.ini_warnings.clone(),
            ini_info: layered.ini_info.clone(),
            unused,
            asgi_options_set,
        })
    }
}

/// The options set (by any layer: command line, variable, `--config`, `--ini`) that
/// this configuration never reads, each said with why, and the ASGI-only options set.
/// A user who gives `--socket-mode 660` with a TCP listener believes the socket is
/// guarded; one who gives `--max-concurrency` to a WSGI app believes it is capped.
fn unused_options(
    layered: &Layered,
    o: &Options,
    listeners: &[(Protocol, ListenAddr)],
) -> (Vec<String>, Vec<&'static str>) {
    // regression: a `--print-config` output used as `--config` (every default written
    // out) warned of every option it names that this configuration does not read.
    let set = |key: &str| layered.changed(key);
    let mut unused = Vec::new();
    let unix = listeners
        .iter()
        .map(|(_, a)| a)
        .chain(o.stats.as_ref())
        .any(|a| matches!(a, ListenAddr::Unix(_)));
    for key in ["socket-mode", "socket-owner"]
        .into_iter()
        .filter(|k| set(k))
    {
        if !unix {
            unused.push(format!(
                "--{key} has no effect: it applies to Unix sockets, and every listener is TCP (a TCP port is guarded by its address: 127.0.0.1, or a firewall)"
            ));
        }
    }
    let fastcgi = listeners.iter().any(|(p, _)| *p == Protocol::FastCgi);
    for key in [
        "fastcgi-buffer",
        "fastcgi-buffer-total",
        "no-fastcgi-stderr",
    ]
    .into_iter()
    .filter(|k| set(k))
    {
        if !fastcgi {
            unused.push(format!(
                "--{key} has no effect: it applies to FastCGI connections, and no --fastcgi listener is configured"
            ));
        }
    }
    let asgi: Vec<&'static str> = ASGI_OPTIONS.into_iter().filter(|k| set(k)).collect();
    if o.interface == crate::asgi::InterfaceOption::Wsgi && !asgi.is_empty() {
        unused.push(asgi_options_unused(&asgi, "--interface wsgi is given"));
    }
    (unused, asgi)
}

/// The sentence said of ASGI-only options set for an app served as WSGI.
pub fn asgi_options_unused(options: &[&str], why: &str) -> String {
    let named: Vec<String> = options.iter().map(|k| format!("--{k}")).collect();
    format!(
        "{} {} no effect: {} only an ASGI app reads, and {why}{}",
        named.join(", "),
        if named.len() == 1 { "has" } else { "have" },
        if named.len() == 1 {
            "it is an option"
        } else {
            "they are options"
        },
        if options.contains(&"max-concurrency") {
            " (a WSGI worker's concurrency is --threads)"
        } else {
            ""
        },
    )
}

/// ASGI-only options set for a WSGI app are worth a warning: one the user may believe
/// in (`--max-concurrency` caps nothing, `--loop` picks nothing). `--lifespan-timeout`
/// alone is not: the deploy examples set it for the stop's budget of an ASGI app, and
/// a WSGI app has no lifespan to bound (said at info).
pub fn asgi_options_warn(options: &[&str]) -> bool {
    options.iter().any(|k| *k != "lifespan-timeout")
}

impl Options {
    /// What `logging::init` needs; the access log's format follows `--log-format`
    /// unless it is given.
    pub fn log_options(&self) -> crate::logging::LogOptions {
        let access_format = self.access_log_format.unwrap_or(match self.log_format {
            LogFormat::Text => AccessLogFormat::Text,
            LogFormat::Json => AccessLogFormat::Json,
        });
        crate::logging::LogOptions {
            level: self.log_level.clone(),
            format: self.log_format,
            file: self.log_file.clone(),
            access: crate::logging::AccessTarget::parse(&self.access_log),
            access_format,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uwsgi_options_in_the_environment_are_said_with_posterns() {
        let vars = [
            ("UWSGI_PROCESSES", "4"),
            ("UWSGI_INI", "/app/uwsgi.ini"),
            ("UWSGI_RELOADS", "0"),
            ("UWSGI_MYAPPNAME", "shop"),
            ("PATH", "/bin"),
        ]
        .map(|(k, v)| (std::ffi::OsString::from(k), std::ffi::OsString::from(v)));
        let said = uwsgi_vars(vars.into_iter());
        assert_eq!(said.len(), 2, "{said:?}");
        assert!(
            said[0].starts_with("UWSGI_PROCESSES is set")
                && said[0].contains("--workers (POSTERN_WORKERS)"),
            "{said:?}"
        );
        assert!(said[1].contains("--ini FILE (POSTERN_INI)"), "{said:?}");
        assert!(
            !said.iter().any(|s| s.contains("/app/uwsgi.ini")),
            "{said:?}"
        );
    }

    fn layered(args: &[&str]) -> Result<Layered, ConfigError> {
        let mut all = vec!["postern"];
        all.extend_from_slice(args);
        let matches = Cli::command().try_get_matches_from(all).unwrap();
        let cli = Cli::from_arg_matches(&matches).unwrap();
        Layered::merge(&cli, &matches)
    }

    fn resolve(args: &[&str]) -> Result<Config, ConfigError> {
        Config::resolve(&layered(args)?, None)
    }

    #[test]
    fn options_that_nothing_reads_are_said() {
        let c = resolve(&["app", "--uwsgi", "127.0.0.1:1", "--socket-mode", "660"]).unwrap();
        assert_eq!(c.unused.len(), 1, "{:?}", c.unused);
        assert!(c.unused[0].starts_with("--socket-mode has no effect"));
        // A Unix listener, or a Unix --stats socket, reads it.
        for extra in [
            ["--uwsgi", "unix:/tmp/a.sock"],
            ["--stats", "unix:/tmp/s.sock"],
        ] {
            let mut args = vec!["app", "--uwsgi", "127.0.0.1:1", "--socket-owner", "0"];
            args.extend(extra);
            assert!(resolve(&args).unwrap().unused.is_empty());
        }
        let c = resolve(&["app", "--uwsgi", "127.0.0.1:1", "--fastcgi-buffer", "128k"]).unwrap();
        assert!(c.unused[0].starts_with("--fastcgi-buffer has no effect"));
        let c = resolve(&[
            "app",
            "--fastcgi",
            "127.0.0.1:1",
            "--fastcgi-buffer",
            "128k",
        ])
        .unwrap();
        assert!(c.unused.is_empty());
        // ASGI options: said at start with --interface wsgi; kept for the worker's
        // detection with auto; defaults are not "set".
        let c = resolve(&[
            "app",
            "--interface",
            "wsgi",
            "--max-concurrency",
            "5",
            "--lifespan",
            "on",
        ])
        .unwrap();
        assert_eq!(
            c.unused,
            ["--max-concurrency, --lifespan have no effect: they are options only an ASGI app reads, and --interface wsgi is given (a WSGI worker's concurrency is --threads)"]
        );
        let c = resolve(&["app", "--loop", "asyncio"]).unwrap();
        assert!(c.unused.is_empty());
        assert_eq!(c.asgi_options_set, ["loop"]);
        assert!(resolve(&["app"]).unwrap().asgi_options_set.is_empty());
    }

    #[test]
    fn defaults_to_one_listener_and_says_so() {
        let c = resolve(&["app:application"]).unwrap();
        assert!(c.default_listener);
        assert_eq!(
            c.listeners,
            vec![(
                Protocol::Uwsgi,
                ListenAddr::Tcp("127.0.0.1:3031".parse().unwrap())
            )]
        );
        assert_eq!(c.opts.buffer_size, Size(65535));
        assert_eq!(c.opts.body_spool_threshold, Size(1 << 20));
        assert_eq!(c.opts.threads, 1);
        assert!(!c.supervised);
    }

    #[test]
    fn rejects_zero_workers_naming_the_source() {
        let e = resolve(&["app", "--workers", "0"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--workers (from command line): 0 is not between 1 and 256"
        );
        assert_eq!(resolve(&["app", "--workers", "3"]).unwrap().opts.workers, 3);
    }

    #[test]
    fn rejects_a_worker_start_timeout_under_a_second() {
        let e = resolve(&["app", "--worker-start-timeout", "0.001"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--worker-start-timeout (from command line): 0.001s is too short: at least 1 (a worker's import takes a good part of a second; under it every reload would fail)"
        );
        assert!(resolve(&["app", "--worker-start-timeout", "1"]).is_ok());
    }

    // regression: `--mount /my%20app` was accepted and never matched the decoded path.
    #[test]
    fn rejects_a_percent_encoded_mount() {
        let e = resolve(&["app", "--mount", "/my%20app"]).unwrap_err();
        assert!(e.to_string().contains("percent-encoded"), "{e}");
        assert!(resolve(&["app", "--mount", "/my app"]).is_ok());
        assert!(resolve(&["app", "--mount", "/100%"]).is_ok());
    }

    #[test]
    fn rejects_buffer_size_over_the_protocol_maximum() {
        assert!(resolve(&["app", "--buffer-size", "65536"]).is_err());
        assert_eq!(
            resolve(&["app", "--buffer-size", "4k"])
                .unwrap()
                .opts
                .buffer_size,
            Size(4096)
        );
    }

    #[test]
    fn a_config_value_of_the_wrong_type_is_named_in_the_files_words() {
        let cases = [
            (
                "threads = \"4\"\n",
                "invalid type: string \"4\", expected a whole number from 1 to 1024 (write it without quotes: threads = 4)",
            ),
            (
                "workers = -1\n",
                "invalid value: integer `-1`, expected a whole number from 1 to 256",
            ),
            (
                "preload = \"true\"\n",
                "invalid type: string \"true\", expected true or false (write it without quotes: preload = true)",
            ),
            (
                "master = \"yes\"\n",
                "invalid type: string \"yes\", expected true or false",
            ),
        ];
        for (text, message) in cases {
            let (_dir, path) = file(text);
            let e = resolve(&["app", "--config", &path]).unwrap_err();
            assert!(e.to_string().ends_with(&format!("): {message}")), "{e}");
        }
    }

    fn file(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.toml");
        std::fs::write(&f, text).unwrap();
        let path = f.to_str().unwrap().to_owned();
        (dir, path)
    }

    // regression: TOML's `socket-mode = 0o660` is the integer 432, which was read as the
    // octal text "432" (mode 0o432); 0o600 was refused as '"384" is not an octal mode'.
    #[test]
    fn a_toml_integer_socket_mode_means_what_was_written() {
        for (written, mode) in [
            ("0o660", Some(0o660)),
            ("0o600", Some(0o600)),
            ("0x1b6", Some(0o666)),
            ("660", Some(0o660)),
            ("\"0660\"", Some(0o660)),
            ("680", None),
        ] {
            let (_d, f) = file(&format!("app = \"a:app\"\nsocket-mode = {written}\n"));
            let l = layered(&["--config", &f]);
            let got = l
                .and_then(|l| Config::resolve(&l, None))
                .ok()
                .and_then(|c| c.opts.socket_mode);
            assert_eq!(got, mode.map(Mode), "socket-mode = {written}");
        }
    }

    #[test]
    fn a_toml_umask_means_what_was_written() {
        for (written, mode) in [
            ("0o027", Some(0o27)),
            ("27", Some(0o27)),
            ("\"0027\"", Some(0o27)),
            ("\"077\"", Some(0o77)),
            ("0o1000", None),
        ] {
            let (_d, f) = file(&format!("app = \"a:app\"\numask = {written}\n"));
            let got = layered(&["--config", &f])
                .and_then(|l| Config::resolve(&l, None))
                .ok()
                .and_then(|c| c.opts.umask);
            assert_eq!(got, mode.map(Mode), "umask = {written}");
        }
        let c = Config::resolve(&layered(&["a:app", "--umask", "007"]).unwrap(), None).unwrap();
        assert_eq!(c.opts.umask, Some(Mode(0o7)));
    }

    #[test]
    fn file_is_below_the_command_line() {
        let (_d, f) = file(
            "app = \"from_file:app\"\nthreads = 3\nuwsgi = \"unix:/tmp/x.sock\"\nmax-body = \"10M\"\nsocket-mode = \"660\"\nhead-timeout = 2\n[env]\nA = \"1\"\nPORT = 80\n",
        );
        let l = layered(&["--config", &f, "--threads", "5"]).unwrap();
        let c = Config::resolve(&l, None).unwrap();
        assert_eq!(c.opts.threads, 5);
        assert_eq!(l.sources["threads"], Source::CommandLine);
        assert_eq!(l.sources["max-body"], Source::File(f.clone().into()));
        assert_eq!(l.sources["read-timeout"], Source::Default);
        assert_eq!(c.app.to_string(), "from_file:app");
        assert_eq!(
            c.listeners,
            vec![(Protocol::Uwsgi, ListenAddr::Unix("/tmp/x.sock".into()))]
        );
        assert_eq!(c.opts.max_body, Some(Size(10 << 20)));
        assert_eq!(c.opts.socket_mode, Some(Mode(0o660)));
        assert_eq!(c.opts.head_timeout.0, std::time::Duration::from_secs(2));
        assert_eq!(
            c.opts.env,
            vec![
                KeyValue("A".into(), "1".into()),
                KeyValue("PORT".into(), "80".into())
            ]
        );
    }

    // regression (probe 385): `VERSION = 1.10` reached the app as "1.1".
    #[test]
    fn env_numbers_are_taken_as_written() {
        let (_d, f) = file(
            "app = \"a\"\n[env]\nVERSION = 1.10\nMASK = 0o22\nBIG = 1_000\nON = true\nE = 2.5e3 # c\n",
        );
        let l = layered(&["--config", &f]).unwrap();
        let c = Config::resolve(&l, None).unwrap();
        let got: Vec<(&str, &str)> = c
            .opts
            .env
            .iter()
            .map(|KeyValue(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("BIG", "1_000"),
                ("E", "2.5e3"),
                ("MASK", "0o22"),
                ("ON", "true"),
                ("VERSION", "1.10")
            ]
        );
    }

    #[test]
    fn rejects_unknown_file_keys() {
        let (_d, f) = file("app = \"a\"\nthred = 3\n");
        let e = layered(&["--config", &f]).unwrap_err();
        assert!(
            e.to_string()
                .contains("unknown key thred (did you mean threads?)"),
            "{e}"
        );
        let (_d, f) = file("app = \"a\"\nzzzzzz = 3\nini = \"u.ini\"\n");
        let e = layered(&["--config", &f]).unwrap_err().to_string();
        assert!(
            e.contains("unknown keys ini (a uWSGI file is read with --ini FILE"),
            "{e}"
        );
        assert!(e.contains("), zzzzzz (the keys are"), "{e}");
        assert!(!e.contains("did you mean"), "{e}");
        let (_d, f) = file("app = \"a\"\nconfig = \"other.toml\"\n");
        let e = layered(&["--config", &f]).unwrap_err().to_string();
        assert!(
            e.contains("unknown key config (a --config file names no other file"),
            "{e}"
        );
        assert!(!e.contains("uWSGI"), "{e}");
    }

    // regression (probe 334): `postern check` tried to import a module `check`.
    #[test]
    fn a_word_that_reads_as_a_command_says_what_was_meant() {
        let check = word_as_app("check").unwrap();
        assert!(
            check.contains("did you mean `postern --check APP"),
            "{check}"
        );
        let reload = word_as_app("reload").unwrap();
        assert!(reload.contains("kill -HUP"), "{reload}");
        assert_eq!(word_as_app("myapp"), None);
        assert_eq!(word_as_app("check:application"), None);
    }

    // regression (probe 334, MEDIUM): options written below `[env]` became
    // environment variables, silently.
    #[test]
    fn options_written_below_env_are_refused_by_name() {
        let (_d, f) = file(
            "app = \"a\"\n[env]\nDJANGO_SETTINGS_MODULE = \"x\"\nworkers = 4\nmax_requests = 9\n",
        );
        let e = layered(&["--config", &f]).unwrap_err().to_string();
        assert!(
            e.contains("[env] has max_requests, workers, which are postern's options: in TOML every key after a [table] header belongs to that table"),
            "{e}"
        );
        // Upper case (or any other name) is an environment variable.
        let (_d, f) = file("app = \"a\"\n[env]\nWORKERS = \"4\"\n");
        assert!(layered(&["--config", &f]).is_ok());
    }

    #[test]
    fn a_bad_file_value_names_its_key_and_file() {
        let (_d, f) = file("app = \"a\"\nmax-body = \"ten\"\n");
        let e = layered(&["--config", &f]).unwrap_err().to_string();
        assert!(e.starts_with("--max-body (from file "), "{e}");
        assert!(e.contains("not a size"), "{e}");
    }

    #[test]
    fn venv_falls_back_to_virtual_env() {
        let c = Config::resolve(&layered(&["app"]).unwrap(), Some("/v".into())).unwrap();
        assert_eq!(c.venv, Some(PathBuf::from("/v")));
        let c = Config::resolve(
            &layered(&["app", "--venv", "/w"]).unwrap(),
            Some("/v".into()),
        )
        .unwrap();
        assert_eq!(c.venv, Some(PathBuf::from("/w")));
        // regression (probe 328 LOW): `./` stayed in it, and in `sys.executable`.
        let c = Config::resolve(&layered(&["app", "--venv", "./w/./x"]).unwrap(), None).unwrap();
        let v = c.venv.unwrap();
        assert!(v.is_absolute() && v.ends_with("w/x"), "{v:?}");
        assert!(!v.to_string_lossy().contains("/./"), "{v:?}");
    }

    #[test]
    fn print_config_round_trips_as_a_config_file() {
        let (_d, f) = file("app = \"a:b\"\nworkers = 2\n[env]\nX = \"y z\"\n");
        let l = layered(&[
            "--config",
            &f,
            "--uwsgi",
            "unix:/tmp/p.sock,127.0.0.1:9",
            "--max-body",
            "1M",
            "--timeout",
            "2.5",
        ])
        .unwrap();
        let c = Config::resolve(&l, None).unwrap();
        let text = l.to_toml(Some(&c));
        assert!(text.contains("workers = 2  # file "), "{text}");
        assert!(text.contains("threads = 1  # default"), "{text}");
        assert!(
            text.contains("uwsgi = [\"unix:/tmp/p.sock\", \"127.0.0.1:9\"]  # command line"),
            "{text}"
        );
        assert!(text.contains("[env]  # file"), "{text}");
        // The printed configuration, used as a file, gives the same options.
        let (_d2, f2) = file(&text);
        let again = Config::resolve(&layered(&["--config", &f2]).unwrap(), None).unwrap();
        assert_eq!(format!("{:?}", again.opts), format!("{:?}", c.opts));
        // regression (probe 368): every default it writes out was warned about as an
        // option this configuration does not read (--fastcgi-buffer without a FastCGI
        // listener, the ASGI-only options).
        assert_eq!(c.unused, Vec::<String>::new());
        assert_eq!(again.unused, Vec::<String>::new());
        assert!(
            again.asgi_options_set.is_empty(),
            "{:?}",
            again.asgi_options_set
        );
        // A value other than the default still counts.
        let (_d3, f3) = file(&text.replace("max-concurrency = 1000", "max-concurrency = 9"));
        let other = Config::resolve(&layered(&["--config", &f3]).unwrap(), None).unwrap();
        assert_eq!(other.asgi_options_set, ["max-concurrency"]);
        // The default given on the command line, or written otherwise, is the default.
        let same = Config::resolve(
            &layered(&["app", "--max-concurrency", "1000", "--fastcgi-buffer", "1m"]).unwrap(),
            None,
        )
        .unwrap();
        assert!(
            same.asgi_options_set.is_empty(),
            "{:?}",
            same.asgi_options_set
        );
        assert_eq!(same.unused, Vec::<String>::new());
        let (_d4, f4) = file("app = \"a:b\"\nlifespan-timeout = 60\n");
        let int = Config::resolve(&layered(&["--config", &f4]).unwrap(), None).unwrap();
        assert!(
            int.asgi_options_set.is_empty(),
            "{:?}",
            int.asgi_options_set
        );
        let off = Config::resolve(
            &layered(&["app", "--interface", "wsgi", "--lifespan-timeout", "10"]).unwrap(),
            None,
        )
        .unwrap();
        assert_eq!(off.asgi_options_set, ["lifespan-timeout"]);
    }

    #[test]
    fn only_a_lifespan_timeout_set_for_a_wsgi_app_is_not_warned_about() {
        let said = asgi_options_unused(&["lifespan-timeout"], "the app is a WSGI callable");
        assert_eq!(
            said,
            "--lifespan-timeout has no effect: it is an option only an ASGI app reads, and the app is a WSGI callable"
        );
        assert!(!asgi_options_warn(&["lifespan-timeout"]));
        assert!(asgi_options_warn(&["loop", "lifespan-timeout"]));
        assert!(asgi_options_unused(&["max-concurrency"], "x")
            .ends_with("(a WSGI worker's concurrency is --threads)"));
    }

    // regression: `--timeout off` (or `--max-lifetime 0`, `--slow-log off`) over a
    // file's value printed "# not set: ..., timeout", the same as a limit no layer set.
    #[test]
    fn print_config_says_a_limit_switched_off_is_off_with_its_source() {
        let (_d, f) = file("app = \"a:b\"\ntimeout = 30\nslow-log = \"off\"\n");
        let l = layered(&["--config", &f, "--timeout", "off", "--max-lifetime", "0"]).unwrap();
        let c = Config::resolve(&l, None).unwrap();
        assert_eq!(c.opts.timeout, None);
        let text = l.to_toml(Some(&c));
        assert!(
            text.contains("timeout = \"off\"  # command line\n"),
            "{text}"
        );
        assert!(
            text.contains("max-lifetime = \"off\"  # command line\n"),
            "{text}"
        );
        assert!(
            text.contains(&format!("slow-log = \"off\"  # file {f}\n")),
            "{text}"
        );
        let unset = |text: &str| {
            let line = text.lines().find(|l| l.starts_with("# not set:")).unwrap();
            line.trim_start_matches("# not set:")
                .split(',')
                .map(|k| k.trim().to_owned())
                .collect::<Vec<_>>()
        };
        for key in ["timeout", "slow-log", "max-lifetime"] {
            assert!(!unset(&text).iter().any(|k| k == key), "{key}: {text}");
        }
        // Read back as a --config file, each is off.
        let (_d2, f2) = file(&text);
        let again = layered(&["--config", &f2]).unwrap();
        let off: Vec<&str> = again.off.iter().map(String::as_str).collect();
        assert_eq!(off, ["max-lifetime", "slow-log", "timeout"]);
        let o = &again.options;
        assert!(o.timeout.is_none() && o.slow_log.is_none() && o.max_lifetime.is_none());
        // A limit no layer set is still "not set".
        let text = layered(&["app"]).unwrap().to_toml(None);
        assert!(!text.lines().any(|l| l.starts_with("timeout = ")), "{text}");
        assert!(unset(&text).iter().any(|k| k == "timeout"), "{text}");
    }

    // regression (probe 401): a configuration file that sets no listener (an ini's
    // mistyped `socket: PATH`) started on the default address with one INFO line.
    #[test]
    fn files_that_set_no_listener_are_warned_about() {
        let (_d, f) = file("app = \"a:b\"\n");
        let c = Config::resolve(&layered(&["--config", &f]).unwrap(), None).unwrap();
        let w = c.default_listener_warning().unwrap();
        assert!(
            w.starts_with(&format!("--config {f} set no listener")),
            "{w}"
        );
        assert!(w.contains("--uwsgi 127.0.0.1:3031"), "{w}");
        let l = layered(&["--config", &f, "--uwsgi", "unix:/tmp/x.sock"]).unwrap();
        assert_eq!(
            Config::resolve(&l, None)
                .unwrap()
                .default_listener_warning(),
            None
        );
        let c = Config::resolve(&layered(&["a:b"]).unwrap(), None).unwrap();
        assert!(c.default_listener && c.default_listener_warning().is_none());
    }

    // regression (probe 401): `--max-body 0` refused every body (413) and `off` was "not
    // a size", so a file's max-body could not be taken off for one run.
    #[test]
    fn max_body_off_or_0_is_no_limit_over_a_lower_layer() {
        let (_d, f) = file("app = \"a:b\"\nmax-body = \"50M\"\n");
        for off in ["off", "0", "OFF", "0M"] {
            let l = layered(&["--config", &f, "--max-body", off]).unwrap();
            let c = Config::resolve(&l, None).unwrap();
            assert_eq!(c.opts.max_body, None, "{off}");
        }
        let l = layered(&["--config", &f]).unwrap();
        let c = Config::resolve(&l, None).unwrap();
        assert_eq!(c.opts.max_body, Some(Size(50 << 20)));
        let (_d, f) = file("app = \"a:b\"\nmax-body = 0\n");
        let c = Config::resolve(&layered(&["--config", &f]).unwrap(), None).unwrap();
        assert_eq!(c.opts.max_body, None);
        let e = value::size_or_off("lots").unwrap_err();
        assert!(e.ends_with("(0 or off: no limit)"), "{e}");
    }

    // regression: migrate never looked the users and groups up (see not_on_this_host).
    #[test]
    fn not_on_this_host_names_the_users_and_groups_this_host_does_not_have() {
        let table: toml::Table = toml::from_str(
            "uid = \"postern-no-such-user\"\ngid = \"root\"\nsocket-owner = \"0:postern-no-such-group\"\nthreads = 2\n",
        )
        .unwrap();
        assert_eq!(
            not_on_this_host(&table),
            [
                (
                    "uid".to_owned(),
                    "no such user \"postern-no-such-user\" on this host".to_owned()
                ),
                (
                    "socket-owner".to_owned(),
                    "no such group \"postern-no-such-group\" on this host".to_owned()
                ),
            ]
        );
        let here: toml::Table =
            toml::from_str("uid = \"root\"\ngid = \"0\"\nsocket-owner = \"root:root\"\n").unwrap();
        assert!(not_on_this_host(&here).is_empty());
    }

    #[test]
    fn every_option_has_an_env_variable() {
        for (key, env) in option_keys() {
            let want = format!("POSTERN_{}", key.replace('-', "_").to_uppercase());
            assert_eq!(env.as_deref(), Some(want.as_str()), "{key}");
        }
    }

    // regression: `--uwsgi unix:a.sock --fastcgi unix:$PWD/a.sock` passed --check (each
    // bound alone) and then failed at start with "another server is still answering".
    #[test]
    fn rejects_one_socket_given_twice_as_relative_and_absolute_paths() {
        let cwd = std::env::current_dir().unwrap();
        let abs = format!("unix:{}", cwd.join("a.sock").display());
        let e = resolve(&["app", "--uwsgi", "unix:a.sock", "--fastcgi", &abs]).unwrap_err();
        // regression (probe 385): two protocols on one address read "is given twice".
        assert!(
            e.to_string()
                .contains("is --uwsgi's address too: a socket speaks one protocol"),
            "{e}"
        );
        let e = resolve(&["app", "--uwsgi", "unix:a.sock", "--uwsgi", &abs]).unwrap_err();
        assert!(e.to_string().contains("is given twice"), "{e}");
        // regression: the clash with --stats named --uwsgi's address as "given twice".
        let e = resolve(&["app", "--uwsgi", "unix:a.sock", "--stats", &abs]).unwrap_err();
        assert!(e.to_string().contains("is --stats's address too"), "{e}");
    }

    // regression: `--pythonpath a,b` (gunicorn's list, typed by a user who migrates) was
    // one directory named "a,b". The command line splits at `,` and `:`; the --config
    // file's list splits nothing (a directory whose name holds a comma is written there).
    #[test]
    fn pythonpath_splits_as_gunicorn_s_on_the_command_line_not_in_the_file() {
        let l = layered(&["app", "--pythonpath", "a,b", "--pythonpath", "c:d,"]).unwrap();
        let dirs: Vec<PathBuf> = ["a", "b", "c", "d"].iter().map(PathBuf::from).collect();
        assert_eq!(l.options.pythonpath, dirs);
        let (_d, f) = file("app = \"a:app\"\npythonpath = [\"x,y\", \"/srv/a:b\"]\n");
        let l = layered(&["--config", &f]).unwrap();
        assert_eq!(
            l.options.pythonpath,
            [PathBuf::from("x,y"), PathBuf::from("/srv/a:b")]
        );
        // clap reads the variable when the argument is given it.
        std::env::set_var("POSTERN_TEST_PYTHONPATH_LIST", "e:f,g");
        let matches = Cli::command()
            .mut_arg("pythonpath", |a| a.env("POSTERN_TEST_PYTHONPATH_LIST"))
            .try_get_matches_from(["postern", "app"])
            .unwrap();
        std::env::remove_var("POSTERN_TEST_PYTHONPATH_LIST");
        let cli = Cli::from_arg_matches(&matches).unwrap();
        let l = Layered::merge(&cli, &matches).unwrap();
        let dirs: Vec<PathBuf> = ["e", "f", "g"].iter().map(PathBuf::from).collect();
        assert_eq!(l.options.pythonpath, dirs);
    }

    // regression: POSTERN_MASTER=1 (systemd and Kubernetes env files write 1/yes) was
    // refused with "invalid value '1' for '--master'".
    #[test]
    fn switches_take_1_0_yes_no_from_the_environment() {
        let parse = |v: &str| {
            Cli::command()
                .mut_arg("master", |a| a.env("POSTERN_TEST_MASTER_SWITCH"))
                .try_get_matches_from(["postern", "app"])
                .map(|m| Cli::from_arg_matches(&m).unwrap().options.master)
                .map_err(|e| (v.to_owned(), e.to_string()))
        };
        for (value, want) in [
            ("1", true),
            ("yes", true),
            ("true", true),
            ("0", false),
            ("no", false),
            ("off", false),
        ] {
            std::env::set_var("POSTERN_TEST_MASTER_SWITCH", value);
            assert_eq!(parse(value), Ok(want));
        }
        std::env::set_var("POSTERN_TEST_MASTER_SWITCH", "maybe");
        assert!(parse("maybe").is_err());
        std::env::remove_var("POSTERN_TEST_MASTER_SWITCH");
        assert!(resolve(&["app", "--master"]).unwrap().supervised);
    }

    // regression: `--log-level warning` (Python's name) passed as a target filter and
    // postern logged nothing at all; `--check` passed a filter the start then refused.
    #[test]
    fn rejects_a_log_level_that_would_silence_the_log() {
        for bad in ["verbose", "warnings", "a=b=c"] {
            let e = resolve(&["app", "--log-level", bad])
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("--log-level (from command line): "), "{e}");
        }
        for good in [
            "warn",
            "INFO",
            "postern=debug,warn",
            "postern::access=off,info",
            "3",
            "0",
            "5",
            " info, ",
        ] {
            assert!(resolve(&["app", "--log-level", good]).is_ok(), "{good}");
        }
    }

    // regression: `--log-level ""` (an unset compose or Kubernetes variable passed as
    // POSTERN_LOG_LEVEL=, or `log-level = ""`), `,` and numbers over 5 (`20`, Python's
    // INFO) were taken by tracing as a filter that logs nothing, errors and app
    // tracebacks included.
    #[test]
    fn rejects_a_log_level_with_no_directive_or_a_number_over_5() {
        let hint = "use error, warn, info, debug or trace, or a filter like postern=debug,warn";
        for (bad, said) in [
            ("", "empty:".to_owned()),
            ("  ", "empty:".to_owned()),
            (",", "\",\" has no level nor filter in it".to_owned()),
            (" , ,", "\" , ,\" has no level nor filter in it".to_owned()),
            (
                "20",
                "\"20\" is not a level (Python's number for info)".to_owned(),
            ),
            ("6", "\"6\" is not a level".to_owned()),
            ("255", "\"255\" is not a level".to_owned()),
            ("warn,300", "\"300\" is not a level".to_owned()),
        ] {
            let e = resolve(&["app", "--log-level", bad])
                .unwrap_err()
                .to_string();
            let sep = if said.ends_with(':') { " " } else { "; " };
            assert_eq!(
                e,
                format!("--log-level (from command line): {said}{sep}{hint}")
            );
        }
    }

    // regression: `timeout = 0` (gunicorn's "no timeout", uWSGI's `harakiri = 0`) was
    // listed as a value postern's start-up refuses, which it takes as off.
    #[test]
    fn refused_values_take_0_and_off_as_a_limit_switched_off() {
        for v in [
            "timeout = 0",
            "timeout = \"off\"",
            "slow-log = 0.0",
            "max-lifetime = \"0s\"",
        ] {
            let table: toml::Table = toml::from_str(v).unwrap();
            assert_eq!(refused_values(&table), Vec::new(), "{v}");
        }
        let table: toml::Table = toml::from_str("timeout = -1").unwrap();
        assert_eq!(refused_values(&table).len(), 1);
    }

    // Python's (and gunicorn's) level names: `warning` is warn, `critical` is error.
    // regression: `--log-level warning`, gunicorn's habit, was refused at start.
    #[test]
    fn python_level_names_are_taken_as_postern_s() {
        for (python, ours) in [
            ("warning", "warn"),
            ("CRITICAL", "error"),
            ("Warning,postern=debug", "warn,postern=debug"),
        ] {
            let theirs = crate::logging::log_filter(python).unwrap().to_string();
            let want = crate::logging::log_filter(ours).unwrap().to_string();
            assert_eq!(theirs, want, "{python}");
        }
        assert!(resolve(&["app", "--log-level", "warning"]).is_ok());
    }

    // regression: `--env C=3` replaced a --config file's whole [env] table, so the
    // file's DJANGO_SETTINGS_MODULE and the like silently disappeared.
    #[test]
    fn env_merges_variable_by_variable_across_layers() {
        let (_d, f) = file("app = \"a\"\n[env]\nA = \"file\"\nB = \"file\"\n");
        let l = layered(&["--config", &f, "--env", "B=cli", "--env", "C=cli"]).unwrap();
        let env: Vec<String> = l.options.env.iter().map(|kv| kv.to_string()).collect();
        assert_eq!(env, ["A=file", "B=cli", "C=cli"]);
        let text = l.to_toml(None);
        assert!(
            text.contains("\n[env]  # command line\nA = \"file\"  # file "),
            "{text}"
        );
        assert!(text.contains("\nB = \"cli\"\nC = \"cli\"\n"), "{text}");
    }

    #[test]
    fn zero_recycling_limits_are_off() {
        let c = resolve(&["app", "--max-requests", "0"]).unwrap();
        assert_eq!(c.opts.max_requests, None);
        assert!(!c.supervised);
    }

    // regression: a whole number past 2^63 - 1 typed for --workers, --threads,
    // --max-concurrency, --max-requests, --max-rss or --max-connections panicked
    // ("options serialise to TOML: u64 value was too large") before any check.
    #[test]
    fn rejects_counts_a_toml_integer_cannot_hold() {
        for o in [
            "--workers",
            "--threads",
            "--max-concurrency",
            "--max-requests",
            "--max-rss",
            "--max-connections",
        ] {
            let e = Cli::command()
                .try_get_matches_from(["postern", "app", o, "9223372036854775808"])
                .unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "{o}");
            assert!(e.to_string().contains("9223372036854775808"), "{o}: {e}");
            // The largest a TOML integer holds reaches the option's own check.
            assert!(layered(&["app", o, "9223372036854775807"]).is_ok(), "{o}");
        }
    }

    // regression: --max-rss 18014398509481984 overflowed the worker's MiB * 1024 (a
    // panic in a debug build; in a release build 0 KiB, so every worker recycled after
    // each request).
    #[test]
    fn max_rss_is_bounded() {
        assert!(resolve(&["app", "--max-rss", "1073741824"]).is_ok());
        for n in ["1073741825", "18014398509481984", "9223372036854775807"] {
            let e = resolve(&["app", "--max-rss", n]).unwrap_err();
            assert!(
                e.to_string()
                    .contains("--max-rss (from command line): must be at most 1073741824 MiB"),
                "{e}"
            );
        }
    }

    // regression (review-sm): a --max-requests past 2^32 outgrew the 32-bit halves a
    // worker counts its requests in, and the exact limit silently stopped holding.
    #[test]
    fn max_requests_fits_the_worker_count() {
        assert!(resolve(&["app", "--max-requests", "2147483647"]).is_ok());
        let e = resolve(&["app", "--max-requests", "5000000000"]).unwrap_err();
        assert!(e.to_string().contains("must be at most 2147483647"), "{e}");
    }
}
