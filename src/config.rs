//! `Cli` (clap derive: what was typed, or set as `POSTERN_*`) and the TOML `--config`
//! file, merged into one validated [`Config`]. Precedence: CLI > env > file > default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

use crate::codec::Protocol;
use crate::server::listener::{parse_owner, ListenAddr};
use crate::wsgi::interpreter::AppSpec;

/// The listener used when none is configured.
pub const DEFAULT_LISTENER: &str = "127.0.0.1:3031";

#[derive(Parser, Debug, Default)]
#[command(
    name = "postern",
    about = "Serve a Python WSGI app to nginx or Apache over the uwsgi protocol.",
    long_about = None,
    disable_version_flag = true,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Every option can also be set as POSTERN_<OPTION> (e.g. POSTERN_THREADS=4) or in --config FILE (TOML, same names).\nPrecedence: command line > environment > config file > default."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// The WSGI app: `module.path[:callable]` or `path/to/file.py[:callable]`
    /// (callable defaults to `application`, then `app`).
    #[arg(value_name = "APP", env = "POSTERN_APP")]
    pub app: Option<String>,

    /// Print postern's and the embedded Python's versions.
    #[arg(short = 'V', long)]
    pub version: bool,

    /// TOML file with the same keys as the long options (e.g. `threads = 4`).
    #[arg(long, value_name = "FILE", env = "POSTERN_CONFIG")]
    pub config: Option<PathBuf>,

    /// Listen for uwsgi on HOST:PORT, [::1]:PORT or unix:PATH (repeatable; default 127.0.0.1:3031).
    #[arg(
        long = "uwsgi",
        value_name = "ADDR",
        env = "POSTERN_UWSGI",
        value_delimiter = ','
    )]
    pub uwsgi: Vec<String>,

    /// Listen for FastCGI (nginx fastcgi_pass, Apache mod_proxy_fcgi) on HOST:PORT or unix:PATH (repeatable).
    #[arg(
        long = "fastcgi",
        value_name = "ADDR",
        env = "POSTERN_FASTCGI",
        value_delimiter = ','
    )]
    pub fastcgi: Vec<String>,

    /// Listen for SCGI (nginx scgi_pass, Apache mod_proxy_scgi) on HOST:PORT or unix:PATH (repeatable).
    #[arg(
        long = "scgi",
        value_name = "ADDR",
        env = "POSTERN_SCGI",
        value_delimiter = ','
    )]
    pub scgi: Vec<String>,

    /// URL prefix the app is mounted at, e.g. /app (repeatable): when the front server
    /// sends no SCRIPT_NAME of its own, the longest matching prefix becomes SCRIPT_NAME
    /// and the rest PATH_INFO.
    #[arg(
        long = "mount",
        value_name = "PREFIX",
        env = "POSTERN_MOUNT",
        value_delimiter = ','
    )]
    pub mount: Vec<String>,

    /// Do not copy wsgi.errors output to the front server as FCGI_STDERR (it always goes to postern's log).
    #[arg(long, env = "POSTERN_NO_FASTCGI_STDERR")]
    pub no_fastcgi_stderr: bool,

    /// Change to DIR before importing the app (DIR is put on sys.path).
    #[arg(long, value_name = "DIR", env = "POSTERN_CHDIR")]
    pub chdir: Option<PathBuf>,

    /// Put DIR at the front of sys.path (repeatable).
    #[arg(
        long,
        value_name = "DIR",
        env = "POSTERN_PYTHONPATH",
        value_delimiter = ':'
    )]
    pub pythonpath: Vec<PathBuf>,

    /// Use the virtualenv in DIR (default: $VIRTUAL_ENV).
    #[arg(long, value_name = "DIR", env = "POSTERN_VENV")]
    pub venv: Option<PathBuf>,

    /// Set an environment variable for the app (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", env = "POSTERN_ENV")]
    pub env: Vec<String>,

    /// Python threads serving requests (default 1).
    #[arg(long, value_name = "N", env = "POSTERN_THREADS")]
    pub threads: Option<usize>,

    /// Worker processes; more than 1 starts a master that supervises them (default 1).
    #[arg(long, value_name = "N", env = "POSTERN_WORKERS")]
    pub workers: Option<usize>,

    /// Run a master process even with one worker (implied by --workers > 1 and by the
    /// options below): SIGHUP reloads, crashed workers are replaced.
    #[arg(long, env = "POSTERN_MASTER")]
    pub master: bool,

    /// Import the app in the master before forking, so workers share its memory pages.
    #[arg(long, env = "POSTERN_PRELOAD")]
    pub preload: bool,

    /// On reload, replace workers one at a time (for memory-tight hosts).
    #[arg(long, env = "POSTERN_CHAIN_RELOAD")]
    pub chain_reload: bool,

    /// Reload when this file's modification time changes.
    #[arg(long, value_name = "FILE", env = "POSTERN_TOUCH_RELOAD")]
    pub touch_reload: Option<PathBuf>,

    /// Write the master's pid here (removed at exit).
    #[arg(long, value_name = "FILE", env = "POSTERN_PIDFILE")]
    pub pidfile: Option<PathBuf>,

    /// Drop privileges to this user (name or id) after binding the listeners.
    #[arg(long, value_name = "USER", env = "POSTERN_UID")]
    pub uid: Option<String>,

    /// Drop privileges to this group (name or id) after binding the listeners.
    #[arg(long, value_name = "GROUP", env = "POSTERN_GID")]
    pub gid: Option<String>,

    /// Recycle a worker after N requests (plus up to 10% jitter).
    #[arg(long, value_name = "N", env = "POSTERN_MAX_REQUESTS")]
    pub max_requests: Option<u64>,

    /// Recycle a worker whose resident memory passes this many MiB (checked after each request).
    #[arg(long, value_name = "MIB", env = "POSTERN_MAX_RSS")]
    pub max_rss: Option<u64>,

    /// Replace a worker after it has run this many seconds.
    #[arg(long, value_name = "SECONDS", env = "POSTERN_MAX_LIFETIME")]
    pub max_lifetime: Option<f64>,

    /// A request running longer gets its worker's Python stacks logged, then the worker killed and replaced.
    #[arg(long, value_name = "SECONDS", env = "POSTERN_TIMEOUT")]
    pub timeout: Option<f64>,

    /// A request running longer gets its worker's Python stacks logged (not killed).
    #[arg(long, value_name = "SECONDS", env = "POSTERN_SLOW_LOG")]
    pub slow_log: Option<f64>,

    /// Permission bits for Unix sockets, octal (e.g. 660).
    #[arg(long, value_name = "OCTAL", env = "POSTERN_SOCKET_MODE")]
    pub socket_mode: Option<String>,

    /// Owner of Unix sockets: USER[:GROUP] (names or ids).
    #[arg(long, value_name = "USER[:GROUP]", env = "POSTERN_SOCKET_OWNER")]
    pub socket_owner: Option<String>,

    /// Largest uwsgi vars block accepted, in bytes (default and maximum 65535).
    #[arg(long, value_name = "BYTES", env = "POSTERN_BUFFER_SIZE")]
    pub buffer_size: Option<String>,

    /// Request bodies larger than this are spooled to a temporary file (default 1M).
    #[arg(long, value_name = "BYTES", env = "POSTERN_BODY_SPOOL_THRESHOLD")]
    pub body_spool_threshold: Option<String>,

    /// Largest request body accepted; larger ones answer 413 (default: unlimited).
    #[arg(long, value_name = "BYTES", env = "POSTERN_MAX_BODY")]
    pub max_body: Option<String>,

    /// Listen queue length (default 1024).
    #[arg(long, value_name = "N", env = "POSTERN_LISTEN_BACKLOG")]
    pub listen_backlog: Option<i32>,

    /// Seconds from accept to a complete request head (default 5).
    #[arg(long, value_name = "SECONDS", env = "POSTERN_HEAD_TIMEOUT")]
    pub head_timeout: Option<f64>,

    /// Longest wait, in seconds, between two reads of a request body (default 60).
    #[arg(long, value_name = "SECONDS", env = "POSTERN_READ_TIMEOUT")]
    pub read_timeout: Option<f64>,

    /// On SIGTERM/SIGINT, seconds to let in-flight requests finish (default 30).
    #[arg(long, value_name = "SECONDS", env = "POSTERN_GRACEFUL_TIMEOUT")]
    pub graceful_timeout: Option<f64>,

    /// Log format.
    #[arg(long, value_name = "FORMAT", env = "POSTERN_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Log level or tracing filter (error, warn, info, debug, trace; default info).
    #[arg(long, value_name = "LEVEL", env = "POSTERN_LOG_LEVEL")]
    pub log_level: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Send one request the way nginx would and print the response (-i style).
    Request(RequestArgs),
}

#[derive(Args, Debug)]
pub struct RequestArgs {
    /// SCHEME://HOST[:PORT]/path?query, or SCHEME+unix:///path/to.sock/path?query
    /// (the socket is the longest leading part of the path that is a socket file;
    /// `SCHEME+unix://%2Frun%2Fapp.sock/path` also works). SCHEME is `uwsgi`
    /// (default port 3031), `fastcgi` (9000) or `scgi` (4000).
    #[arg(value_name = "URL")]
    pub url: String,
    /// Request header (repeatable), e.g. -H 'Accept: text/html'.
    #[arg(short = 'H', long = "header", value_name = "K:V")]
    pub headers: Vec<String>,
    /// Request method (default GET, or POST with --data).
    #[arg(short = 'X', long, value_name = "M")]
    pub method: Option<String>,
    /// Request body, or @FILE to send a file's contents.
    #[arg(short = 'd', long, value_name = "BODY|@FILE")]
    pub data: Option<String>,
    /// Seconds to wait for connect and for each read or write.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    pub timeout: f64,
    /// FastCGI only: send no CONTENT_LENGTH and stream the body in 8 KiB STDIN records,
    /// as nginx does with `fastcgi_request_buffering off` and a chunked upload.
    #[arg(long)]
    pub no_content_length: bool,
    /// FastCGI only: ask FCGI_MAX_CONNS, FCGI_MAX_REQS and FCGI_MPXS_CONNS with an
    /// FCGI_GET_VALUES record and print the answer as NAME=VALUE lines (the URL's path
    /// is not used).
    #[arg(long, conflicts_with_all = ["data", "method", "no_content_length"])]
    pub get_values: bool,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// A number or a string in the TOML file (`max-body = "10M"` or `max-body = 1048576`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Int(i64),
    Float(f64),
    Str(String),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Str(s) => s.clone(),
        }
    }
}

/// One value or a list (`uwsgi = "unix:/run/a.sock"` or `uwsgi = ["…", "…"]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// The `--config` file: the long options' names as keys.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileConfig {
    app: Option<String>,
    uwsgi: Option<OneOrMany>,
    fastcgi: Option<OneOrMany>,
    scgi: Option<OneOrMany>,
    mount: Option<OneOrMany>,
    no_fastcgi_stderr: Option<bool>,
    chdir: Option<PathBuf>,
    pythonpath: Option<OneOrMany>,
    venv: Option<PathBuf>,
    env: Option<toml::Table>,
    threads: Option<usize>,
    workers: Option<usize>,
    master: Option<bool>,
    preload: Option<bool>,
    chain_reload: Option<bool>,
    touch_reload: Option<PathBuf>,
    pidfile: Option<PathBuf>,
    uid: Option<Scalar>,
    gid: Option<Scalar>,
    max_requests: Option<u64>,
    max_rss: Option<u64>,
    max_lifetime: Option<f64>,
    timeout: Option<f64>,
    slow_log: Option<f64>,
    socket_mode: Option<Scalar>,
    socket_owner: Option<String>,
    buffer_size: Option<Scalar>,
    body_spool_threshold: Option<Scalar>,
    max_body: Option<Scalar>,
    listen_backlog: Option<i32>,
    head_timeout: Option<f64>,
    read_timeout: Option<f64>,
    graceful_timeout: Option<f64>,
    log_format: Option<LogFormat>,
    log_level: Option<String>,
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read --config {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--config {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{option}: {message}")]
    Invalid {
        option: &'static str,
        message: String,
    },
    #[error(
        "no APP given: run `postern module.path:callable` or `postern path/to/app.py` (see --help)"
    )]
    NoApp,
}

fn invalid(option: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        option,
        message: message.into(),
    }
}

/// The resolved configuration of a serving postern.
#[derive(Debug, Clone)]
pub struct Config {
    pub app: AppSpec,
    /// Each listener and the protocol it speaks.
    pub listeners: Vec<(Protocol, ListenAddr)>,
    /// `--mount` prefixes, without a trailing `/`.
    pub mounts: Vec<Vec<u8>>,
    /// Copy wsgi.errors to FastCGI front servers as FCGI_STDERR.
    pub fastcgi_stderr: bool,
    /// No listener was configured: the default is in use (said in the start-up log).
    pub default_listener: bool,
    pub chdir: Option<PathBuf>,
    pub pythonpath: Vec<PathBuf>,
    pub venv: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    pub threads: usize,
    pub workers: usize,
    /// A master supervises the worker(s).
    pub supervised: bool,
    pub preload: bool,
    pub chain_reload: bool,
    pub touch_reload: Option<PathBuf>,
    pub pidfile: Option<PathBuf>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub max_requests: Option<u64>,
    pub max_rss: Option<u64>,
    pub max_lifetime: Option<Duration>,
    pub timeout: Option<Duration>,
    pub slow_log: Option<Duration>,
    pub socket_mode: Option<u32>,
    pub socket_owner: Option<(Option<u32>, Option<u32>)>,
    pub buffer_size: usize,
    pub body_spool_threshold: u64,
    pub max_body: Option<u64>,
    pub listen_backlog: i32,
    pub head_timeout: Duration,
    pub read_timeout: Duration,
    pub graceful_timeout: Duration,
    pub log_format: LogFormat,
    pub log_level: String,
}

/// Parses `65535`, `64k`, `1M`, `1MiB`, `2G` (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 65535, 64k, 10M, 1G)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("{s:?}: unknown unit (use k, M or G)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn seconds(option: &'static str, v: f64) -> Result<Duration, ConfigError> {
    if !(v.is_finite() && v > 0.0 && v < 1e9) {
        return Err(invalid(
            option,
            format!("{v} is not a positive number of seconds"),
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

impl Config {
    /// Merges the command line (with env) over the file over the defaults.
    /// `virtual_env` is `$VIRTUAL_ENV`, the last fallback for `--venv`.
    pub fn resolve(cli: Cli, virtual_env: Option<PathBuf>) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(p) => load_file(p)?,
            None => FileConfig::default(),
        };
        let app = cli.app.or(file.app).ok_or(ConfigError::NoApp)?;
        let app = AppSpec::parse(&app).map_err(|m| invalid("APP", m))?;

        let pick = |cli: Vec<String>, file: Option<OneOrMany>| {
            if !cli.is_empty() {
                cli
            } else {
                file.map(OneOrMany::into_vec).unwrap_or_default()
            }
        };
        let mut listeners = Vec::new();
        for (protocol, option, specs) in [
            (Protocol::Uwsgi, "--uwsgi", pick(cli.uwsgi, file.uwsgi)),
            (
                Protocol::FastCgi,
                "--fastcgi",
                pick(cli.fastcgi, file.fastcgi),
            ),
            (Protocol::Scgi, "--scgi", pick(cli.scgi, file.scgi)),
        ] {
            for s in specs {
                let addr = s.parse::<ListenAddr>().map_err(|m| invalid(option, m))?;
                if listeners.iter().any(|(_, a)| a == &addr) {
                    return Err(invalid(option, format!("{s} is given twice")));
                }
                listeners.push((protocol, addr));
            }
        }
        let default_listener = listeners.is_empty();
        if default_listener {
            let addr = DEFAULT_LISTENER
                .parse::<ListenAddr>()
                .map_err(|m| invalid("--uwsgi", m))?;
            listeners.push((Protocol::Uwsgi, addr));
        }
        let mounts = pick(cli.mount, file.mount)
            .into_iter()
            .map(|m| {
                let t = m.trim_end_matches('/');
                if !m.starts_with('/') || t.contains(['?', '#']) {
                    return Err(invalid(
                        "--mount",
                        format!("{m:?} is not a URL path prefix like /app"),
                    ));
                }
                Ok(t.as_bytes().to_vec())
            })
            .filter(|m| !matches!(m, Ok(v) if v.is_empty()))
            .collect::<Result<Vec<_>, _>>()?;
        let fastcgi_stderr = !(cli.no_fastcgi_stderr || file.no_fastcgi_stderr.unwrap_or(false));

        let pythonpath = if !cli.pythonpath.is_empty() {
            cli.pythonpath
        } else {
            file.pythonpath
                .map(|p| p.into_vec().into_iter().map(PathBuf::from).collect())
                .unwrap_or_default()
        };
        let env = if !cli.env.is_empty() {
            cli.env
                .iter()
                .map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .filter(|(k, _)| !k.is_empty())
                        .ok_or_else(|| invalid("--env", format!("{kv:?} is not KEY=VALUE")))
                })
                .collect::<Result<Vec<_>, _>>()?
        } else {
            file.env
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        toml::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (k, v)
                })
                .collect()
        };

        let threads = cli.threads.or(file.threads).unwrap_or(1);
        if threads == 0 || threads > 1024 {
            return Err(invalid(
                "--threads",
                format!("{threads} is not between 1 and 1024"),
            ));
        }
        let workers = cli.workers.or(file.workers).unwrap_or(1);
        if workers == 0 || workers > 256 {
            return Err(invalid(
                "--workers",
                format!("{workers} is not between 1 and 256"),
            ));
        }

        let max_requests = cli.max_requests.or(file.max_requests).filter(|&n| n > 0);
        let max_rss = cli.max_rss.or(file.max_rss).filter(|&n| n > 0);
        let max_lifetime = cli
            .max_lifetime
            .or(file.max_lifetime)
            .map(|v| seconds("--max-lifetime", v))
            .transpose()?;
        let timeout = cli
            .timeout
            .or(file.timeout)
            .map(|v| seconds("--timeout", v))
            .transpose()?;
        let slow_log = cli
            .slow_log
            .or(file.slow_log)
            .map(|v| seconds("--slow-log", v))
            .transpose()?;
        let preload = cli.preload || file.preload.unwrap_or(false);
        let chain_reload = cli.chain_reload || file.chain_reload.unwrap_or(false);
        let touch_reload = cli.touch_reload.or(file.touch_reload);
        let pidfile = cli.pidfile.or(file.pidfile);
        let supervised = workers > 1
            || cli.master
            || file.master.unwrap_or(false)
            || preload
            || touch_reload.is_some()
            || pidfile.is_some()
            || max_requests.is_some()
            || max_rss.is_some()
            || max_lifetime.is_some()
            || timeout.is_some()
            || slow_log.is_some();
        let uid = cli
            .uid
            .or(file.uid.map(|s| s.text()))
            .map(|u| {
                parse_owner(&u)
                    .map(|(uid, _)| uid.unwrap_or(0))
                    .map_err(|m| invalid("--uid", m))
            })
            .transpose()?;
        let gid = cli
            .gid
            .or(file.gid.map(|s| s.text()))
            .map(|g| {
                parse_owner(&format!(":{g}"))
                    .map(|(_, gid)| gid.unwrap_or(0))
                    .map_err(|m| invalid("--gid", m))
            })
            .transpose()?;

        let socket_mode = cli
            .socket_mode
            .or(file.socket_mode.map(|s| s.text()))
            .map(|m| {
                u32::from_str_radix(m.trim().trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|&v| v <= 0o777)
                    .ok_or_else(|| {
                        invalid(
                            "--socket-mode",
                            format!("{m:?} is not an octal mode like 660"),
                        )
                    })
            })
            .transpose()?;
        let socket_owner = cli
            .socket_owner
            .or(file.socket_owner)
            .map(|o| parse_owner(&o).map_err(|m| invalid("--socket-owner", m)))
            .transpose()?;

        let size = |option: &'static str, cli: Option<String>, file: Option<Scalar>| {
            cli.or(file.map(|s| s.text()))
                .map(|s| parse_size(&s).map_err(|m| invalid(option, m)))
                .transpose()
        };
        let buffer_size =
            size("--buffer-size", cli.buffer_size, file.buffer_size)?.unwrap_or(65535);
        if !(4..=65535).contains(&buffer_size) {
            return Err(invalid(
                "--buffer-size",
                format!(
                    "{buffer_size} is outside 4..=65535 (the uwsgi protocol cannot carry more)"
                ),
            ));
        }
        let body_spool_threshold = size(
            "--body-spool-threshold",
            cli.body_spool_threshold,
            file.body_spool_threshold,
        )?
        .unwrap_or(1 << 20);
        if body_spool_threshold > 1 << 30 {
            return Err(invalid(
                "--body-spool-threshold",
                "at most 1G: larger bodies belong in a temporary file, not in memory",
            ));
        }
        let max_body = size("--max-body", cli.max_body, file.max_body)?;

        let listen_backlog = cli.listen_backlog.or(file.listen_backlog).unwrap_or(1024);
        if listen_backlog < 1 {
            return Err(invalid("--listen-backlog", "must be at least 1"));
        }
        let head_timeout = seconds(
            "--head-timeout",
            cli.head_timeout.or(file.head_timeout).unwrap_or(5.0),
        )?;
        let read_timeout = seconds(
            "--read-timeout",
            cli.read_timeout.or(file.read_timeout).unwrap_or(60.0),
        )?;
        let graceful_timeout = seconds(
            "--graceful-timeout",
            cli.graceful_timeout
                .or(file.graceful_timeout)
                .unwrap_or(30.0),
        )?;

        Ok(Config {
            app,
            listeners,
            mounts,
            fastcgi_stderr,
            default_listener,
            chdir: cli.chdir.or(file.chdir),
            pythonpath,
            venv: cli
                .venv
                .or(file.venv)
                .or(virtual_env)
                .filter(|p| !p.as_os_str().is_empty()),
            env,
            threads,
            workers,
            supervised,
            preload,
            chain_reload,
            touch_reload,
            pidfile,
            uid,
            gid,
            max_requests,
            max_rss,
            max_lifetime,
            timeout,
            slow_log,
            socket_mode,
            socket_owner,
            buffer_size: buffer_size as usize,
            body_spool_threshold,
            max_body,
            listen_backlog,
            head_timeout,
            read_timeout,
            graceful_timeout,
            log_format: cli.log_format.or(file.log_format).unwrap_or_default(),
            log_level: cli
                .log_level
                .or(file.log_level)
                .unwrap_or_else(|| "info".into()),
        })
    }
}

fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut all = vec!["postern"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap()
    }

    #[test]
    fn defaults_to_one_listener_and_says_so() {
        let c = Config::resolve(cli(&["app:application"]), None).unwrap();
        assert!(c.default_listener);
        assert_eq!(
            c.listeners,
            vec![(
                Protocol::Uwsgi,
                ListenAddr::Tcp("127.0.0.1:3031".parse().unwrap())
            )]
        );
        assert_eq!(c.buffer_size, 65535);
        assert_eq!(c.body_spool_threshold, 1 << 20);
        assert_eq!(c.threads, 1);
    }

    #[test]
    fn rejects_zero_workers() {
        let e = Config::resolve(cli(&["app", "--workers", "0"]), None).unwrap_err();
        assert!(e.to_string().contains("--workers"));
        assert_eq!(
            Config::resolve(cli(&["app", "--workers", "3"]), None)
                .unwrap()
                .workers,
            3
        );
    }

    #[test]
    fn rejects_buffer_size_over_the_protocol_maximum() {
        assert!(Config::resolve(cli(&["app", "--buffer-size", "65536"]), None).is_err());
        assert_eq!(
            Config::resolve(cli(&["app", "--buffer-size", "4k"]), None)
                .unwrap()
                .buffer_size,
            4096
        );
    }

    #[test]
    fn file_is_below_the_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.toml");
        std::fs::write(
            &f,
            "app = \"from_file:app\"\nthreads = 3\nuwsgi = \"unix:/tmp/x.sock\"\nmax-body = \"10M\"\nsocket-mode = \"660\"\n[env]\nA = \"1\"\n",
        )
        .unwrap();
        let c = Config::resolve(
            cli(&["--config", f.to_str().unwrap(), "--threads", "5"]),
            None,
        )
        .unwrap();
        assert_eq!(c.threads, 5);
        assert_eq!(c.app.to_string(), "from_file:app");
        assert_eq!(
            c.listeners,
            vec![(Protocol::Uwsgi, ListenAddr::Unix("/tmp/x.sock".into()))]
        );
        assert_eq!(c.max_body, Some(10 << 20));
        assert_eq!(c.socket_mode, Some(0o660));
        assert_eq!(c.env, vec![("A".into(), "1".into())]);
    }

    #[test]
    fn rejects_unknown_file_keys() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.toml");
        std::fs::write(&f, "app = \"a\"\nthred = 3\n").unwrap();
        let e = Config::resolve(cli(&["--config", f.to_str().unwrap()]), None).unwrap_err();
        assert!(e.to_string().contains("thred"), "{e}");
    }

    #[test]
    fn venv_falls_back_to_virtual_env() {
        let c = Config::resolve(cli(&["app"]), Some("/v".into())).unwrap();
        assert_eq!(c.venv, Some(PathBuf::from("/v")));
        let c = Config::resolve(cli(&["app", "--venv", "/w"]), Some("/v".into())).unwrap();
        assert_eq!(c.venv, Some(PathBuf::from("/w")));
    }

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("65535"), Ok(65535));
        assert_eq!(parse_size("64k"), Ok(65536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5T").is_err());
    }
}
