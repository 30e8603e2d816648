//! gunicorn's options and config files, said in postern's words: `postern -w 4 -b
//! unix:/run/app.sock app` names `--workers 4 --uwsgi unix:/run/app.sock` instead of
//! clap's look-alike suggestion (`--reload`: "a similar argument exists: '--preload'",
//! which means the opposite), a `gunicorn.conf.py` given as the app or to `--config` is
//! named as what it is, and `postern migrate gunicorn.conf.py` reads its literal
//! assignments (without running the file) into a postern TOML file.
//!
//! Some short flags are both gunicorn's and uWSGI's with other meanings (`-w`, `-b`,
//! `-p`, `-R`, `-t`): the value decides where it can (`-w 4` is gunicorn's workers,
//! `-w pkg.mod` uWSGI's module), else the rest of the line (`-t 30` is gunicorn's when
//! another option on the line is only gunicorn's). What is not gunicorn's is left to the
//! uWSGI reading.

use std::fmt::Write as _;
use std::path::Path;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, FromArgMatches};

use super::Cli;
use crate::uwsgi_ini::command_line::quoted;

/// One gunicorn setting: its config-file name, its long flag (without `--`), its short
/// flag, and whether the flag takes a value.
struct Setting {
    name: &'static str,
    long: &'static str,
    short: Option<char>,
    value: bool,
}

const fn s(name: &'static str, long: &'static str, short: Option<char>, value: bool) -> Setting {
    Setting {
        name,
        long,
        short,
        value,
    }
}

/// gunicorn's settings (its `--help` and settings reference), those postern has under
/// the same long name included: the config file uses them all.
const SETTINGS: &[Setting] = &[
    s("config", "config", Some('c'), true),
    s("wsgi_app", "", None, true),
    s("bind", "bind", Some('b'), true),
    s("backlog", "backlog", None, true),
    s("workers", "workers", Some('w'), true),
    s("worker_class", "worker-class", Some('k'), true),
    s("threads", "threads", None, true),
    s("worker_connections", "worker-connections", None, true),
    s("max_requests", "max-requests", None, true),
    s("max_requests_jitter", "max-requests-jitter", None, true),
    s("timeout", "timeout", Some('t'), true),
    s("graceful_timeout", "graceful-timeout", None, true),
    s("keepalive", "keep-alive", None, true),
    s("limit_request_line", "limit-request-line", None, true),
    s("limit_request_fields", "limit-request-fields", None, true),
    s(
        "limit_request_field_size",
        "limit-request-field_size",
        None,
        true,
    ),
    s("reload", "reload", None, false),
    s("reload_engine", "reload-engine", None, true),
    s("reload_extra_files", "reload-extra-file", None, true),
    s("spew", "spew", None, false),
    s("check_config", "check-config", None, false),
    s("print_config", "print-config", None, false),
    s("preload_app", "preload", None, false),
    s("sendfile", "no-sendfile", None, false),
    s("reuse_port", "reuse-port", None, false),
    s("chdir", "chdir", None, true),
    s("daemon", "daemon", Some('D'), false),
    s("raw_env", "env", Some('e'), true),
    s("pidfile", "pid", Some('p'), true),
    s("worker_tmp_dir", "worker-tmp-dir", None, true),
    s("user", "user", Some('u'), true),
    s("group", "group", Some('g'), true),
    s("umask", "umask", Some('m'), true),
    s("initgroups", "initgroups", None, false),
    s("tmp_upload_dir", "", None, true),
    s("secure_scheme_headers", "", None, true),
    s("forwarded_allow_ips", "forwarded-allow-ips", None, true),
    s("accesslog", "access-logfile", None, true),
    s(
        "disable_redirect_access_to_syslog",
        "disable-redirect-access-to-syslog",
        None,
        false,
    ),
    s("access_log_format", "access-logformat", None, true),
    s("errorlog", "error-logfile", None, true),
    s("errorlog", "log-file", None, true),
    s("loglevel", "log-level", None, true),
    s("capture_output", "capture-output", None, false),
    s("logger_class", "logger-class", None, true),
    s("logconfig", "log-config", None, true),
    s("logconfig_json", "log-config-json", None, true),
    s("logconfig_dict", "", None, true),
    s("syslog_addr", "log-syslog-to", None, true),
    s("syslog", "log-syslog", None, false),
    s("syslog_prefix", "log-syslog-prefix", None, true),
    s("syslog_facility", "log-syslog-facility", None, true),
    s(
        "enable_stdio_inheritance",
        "enable-stdio-inheritance",
        Some('R'),
        false,
    ),
    s("statsd_host", "statsd-host", None, true),
    s("dogstatsd_tags", "dogstatsd-tags", None, true),
    s("statsd_prefix", "statsd-prefix", None, true),
    s("proc_name", "name", Some('n'), true),
    s("pythonpath", "pythonpath", None, true),
    s("paste", "paste", None, true),
    s("paste", "paster", None, true),
    s("proxy_protocol", "proxy-protocol", None, false),
    s("proxy_allow_ips", "proxy-allow-from", None, true),
    s("keyfile", "keyfile", None, true),
    s("certfile", "certfile", None, true),
    s("ssl_version", "ssl-version", None, true),
    s("cert_reqs", "cert-reqs", None, true),
    s("ca_certs", "ca-certs", None, true),
    s("suppress_ragged_eofs", "suppress-ragged-eofs", None, false),
    s(
        "do_handshake_on_connect",
        "do-handshake-on-connect",
        None,
        false,
    ),
    s("ciphers", "ciphers", None, true),
    s("strip_header_spaces", "strip-header-spaces", None, false),
    s(
        "permit_unconventional_http_method",
        "permit-unconventional-http-method",
        None,
        false,
    ),
    s(
        "permit_unconventional_http_version",
        "permit-unconventional-http-version",
        None,
        false,
    ),
    s("casefold_http_method", "casefold-http-method", None, false),
    s("forwarder_headers", "forwarder-headers", None, true),
    s("header_map", "header-map", None, true),
    s("version", "version", Some('v'), false),
];

/// What postern says for one gunicorn setting.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Says {
    /// postern's words for it (`--workers 4`; the app alone), and a note.
    Postern(Vec<String>, Option<String>),
    /// postern does it by itself, or does not need it: why.
    NotNeeded(String),
    /// postern has no such thing: why, and what instead.
    Nothing(String),
    /// postern has no such thing, and without it the app behaves otherwise in a way
    /// its operator must act on (`migrate` lists it under NEEDS ATTENTION; a command
    /// line still runs).
    Differs(String),
    /// postern cannot run what was asked: a command without it would do something else.
    Cannot(String),
}

/// gunicorn's `umask` value as its command line reads it (`int(value, 0)`, after a
/// leading `0` before a digit is made `0o`: `0o027`, `0027` and `23` are one mask; a
/// config file's integer arrives here in decimal), within 0..=0o777.
fn umask(value: &str) -> Option<u32> {
    let v = value.trim().to_ascii_lowercase();
    let (digits, radix) = [("0o", 8), ("0x", 16), ("0b", 2)]
        .iter()
        .find_map(|(p, r)| v.strip_prefix(p).map(|d| (d, *r)))
        .unwrap_or_else(|| match v.strip_prefix('0') {
            Some(d) if !d.is_empty() => (d, 8),
            _ => (v.as_str(), 10),
        });
    if digits.starts_with(['+', '-']) || digits.is_empty() {
        return None;
    }
    u32::from_str_radix(digits, radix)
        .ok()
        .filter(|&m| m <= 0o777)
}

/// The rest of the line, where it decides what a value means.
#[derive(Default)]
struct Line {
    threads: bool,
}

const NGINX: &str = "gunicorn speaks HTTP, postern does not: in nginx, `proxy_pass http://…` becomes `include uwsgi_params; uwsgi_pass …` (or --fastcgi with fastcgi_pass)";
const NO_RELOADER: &str = "postern has no file-watch reload: reload after a deploy with SIGHUP (`systemctl reload`, `kill -HUP $(cat PIDFILE)`), or give `--touch-reload FILE` and touch that file (its modification time is watched); gunicorn's --preload is not it (with it a reload does not pick up new code)";
const NO_HTTP: &str = "postern does not parse HTTP: the front server (nginx) does, and passes the request to postern already parsed";
const LOGS: &str = "postern logs to stderr (journald under systemd) or --log-file FILE; --log-format json for structured lines";
const TLS: &str = "postern does not speak TLS (nor HTTP): nginx or Apache terminates it in front";

/// gunicorn's `setting` (by its config-file name) with `value` (empty for a flag) in
/// postern's words.
fn says(setting: &str, value: &str, line: &Line) -> Says {
    let words = |w: &[&str]| w.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let with = |flag: &str| Says::Postern(vec![flag.to_owned(), value.to_owned()], None);
    match setting {
        "wsgi_app" => Says::Postern(vec![value.to_owned()], None),
        "config" => Says::Cannot(format!(
            "this is gunicorn's config file (Python); postern's --config reads TOML (the long options' names as keys): convert it with `postern migrate {}` (it reads the assignments without running the file)",
            quoted(value)
        )),
        "bind" => bind(value),
        "backlog" => with("--listen-backlog"),
        "workers" => with("--workers"),
        "worker_class" => worker_class(value, line),
        "threads" => with("--threads"),
        "worker_connections" => Says::Postern(
            words(&["--max-concurrency", value]),
            Some("for an ASGI app, the requests in flight per worker (a WSGI worker serves --threads at once)".into()),
        ),
        "max_requests" => with("--max-requests"),
        "max_requests_jitter" => Says::NotNeeded(
            "postern jitters by itself: each worker's limit is --max-requests plus a random 0 to 10% of it, so the workers do not recycle together".into(),
        ),
        "timeout" => Says::Postern(
            words(&["--timeout", value]),
            Some("gunicorn's is a worker heartbeat, postern's is per request (as uWSGI's harakiri): a request running longer gets its worker's stacks logged, then the worker killed (docs/migration.md 'From gunicorn'); 0 or off: none".into()),
        ),
        "graceful_timeout" => with("--graceful-timeout"),
        "keepalive" => Says::NotNeeded(
            "gunicorn's keep-alive is HTTP's, with the proxy; nginx keeps the client connections, and postern keeps FastCGI connections open with nginx's `fastcgi_keep_conn on`".into(),
        ),
        "limit_request_line" | "limit_request_fields" | "limit_request_field_size" => Says::Nothing(
            "postern limits the whole request head (the variables nginx passes): --buffer-size BYTES (default 65535)".into(),
        ),
        "reload" | "reload_engine" | "reload_extra_files" => Says::Nothing(NO_RELOADER.into()),
        "spew" => Says::Nothing("no line-by-line trace of the app; --log-level debug for postern's own".into()),
        "check_config" => Says::Postern(
            words(&["--check"]),
            Some("it also imports the app (in a child) and binds the listeners".into()),
        ),
        "print_config" => Says::Postern(words(&["--print-config"]), None),
        "preload_app" => Says::Postern(words(&["--preload"]), None),
        "sendfile" => Says::Nothing(
            "postern sends a wsgi.file_wrapper file with sendfile(2) and has no switch for it".into(),
        ),
        "reuse_port" => Says::NotNeeded(
            "postern's master binds each listener once and its workers share it".into(),
        ),
        "chdir" => with("--chdir"),
        "daemon" => Says::Nothing(
            "postern stays in the foreground: run it under systemd (deploy/systemd/postern.service) or another supervisor".into(),
        ),
        "raw_env" => with("--env"),
        "pidfile" => with("--pidfile"),
        "worker_tmp_dir" => Says::NotNeeded(
            "postern's workers tell their master they are alive without a file".into(),
        ),
        "user" => with("--uid"),
        "group" => with("--gid"),
        // gunicorn sets its umask only around the Unix sockets' bind (and for its
        // workers' heartbeat files): the sockets' bits, not the process's umask.
        "umask" => match umask(value) {
            Some(m) => Says::Postern(
                words(&["--socket-mode", &format!("{:03o}", 0o777 & !m)]),
                Some(format!("gunicorn applies its umask to its Unix sockets only: --socket-mode gives them the same bits (nothing to do for TCP); postern's --umask {m:03o} would also reach its log files and the app's files")),
            ),
            None => Says::Cannot(format!(
                "{} is not a umask from 0 to 0o777 (gunicorn reads 0o027, 0027 or 23 alike)",
                quoted(value)
            )),
        },
        "initgroups" => Says::NotNeeded(
            "postern sets the --uid user's supplementary groups when it drops privileges".into(),
        ),
        "tmp_upload_dir" => Says::Nothing(
            "a body larger than --body-spool-threshold (1M) goes to a temporary file in $TMPDIR".into(),
        ),
        "secure_scheme_headers" | "forwarded_allow_ips" | "proxy_protocol" | "proxy_allow_ips" => {
            Says::NotNeeded(
                "nginx passes the client's address (REMOTE_ADDR) and scheme (HTTPS) in the uwsgi/FastCGI variables: there are no forwarded headers to trust".into(),
            )
        }
        "accesslog" => Says::Postern(
            words(&["--access-log", value]),
            Some(if value == "-" {
                "`-` is stderr for postern (gunicorn's is stdout); postern writes the access log to stderr by default, --access-log off stops it".into()
            } else {
                "postern writes the access log to stderr by default (--access-log off stops it)".into()
            }),
        ),
        // gunicorn's default format, Apache's combined: postern's own combined, which
        // appends the duration and the request id.
        // regression (probe 385): it was "no equivalent".
        "access_log_format"
            if value.split_whitespace().collect::<Vec<_>>()
                == [
                    "%(h)s", "%(l)s", "%(u)s", "%(t)s", "\"%(r)s\"", "%(s)s", "%(b)s",
                    "\"%(f)s\"", "\"%(a)s\"",
                ] =>
        {
            Says::Postern(
                words(&["--access-log-format", "combined"]),
                Some("Apache's and nginx's combined format, as gunicorn's was, with the duration and the request id appended (parsers read the first nine fields)".into()),
            )
        }
        "access_log_format" => Says::Nothing(
            "postern's formats: --access-log-format text, json or combined (Apache/nginx's, with the duration appended)".into(),
        ),
        "errorlog" if value == "-" => {
            Says::NotNeeded("postern logs to stderr unless --log-file FILE is given".into())
        }
        "errorlog" => Says::Postern(
            words(&["--log-file", value]),
            Some("reopened on SIGUSR1".into()),
        ),
        "loglevel" => {
            // gunicorn's level names (Python's) that are not postern's.
            // regression (review2): `loglevel = "warning"` was carried as postern's
            // `log-level = "warning"`, which start-up refuses.
            let level = value.trim().to_ascii_lowercase();
            let (level, note) = match level.as_str() {
                "warning" => ("warn".to_owned(), Some("gunicorn's warning is postern's warn".to_owned())),
                "critical" => ("error".to_owned(), Some("postern has no critical level: error is the nearest".to_owned())),
                _ => (level, None),
            };
            Says::Postern(words(&["--log-level", &level]), note)
        }
        // regression (probe 385): it said the logging module's output went to
        // postern's log, and migrate listed nothing to look at.
        "capture_output" => Says::Differs(
            "postern does not capture the app's stdout and stderr: print() and the logging module's console output (logging.basicConfig(), Django's console handler, logging's last-resort handler) go to postern's stderr (the terminal, journald), not to --log-file; only what the app writes to environ['wsgi.errors'] goes to postern's log. Send stderr to the file yourself (systemd: StandardError=append:/var/log/app/error.log) or give the app's logging a FileHandler".into(),
        ),
        "logger_class" | "logconfig" | "logconfig_json" | "logconfig_dict" | "syslog_addr"
        | "syslog" | "syslog_prefix" | "syslog_facility" | "disable_redirect_access_to_syslog" => {
            Says::Nothing(LOGS.into())
        }
        "enable_stdio_inheritance" => {
            Says::NotNeeded("postern's workers keep its stdout and stderr".into())
        }
        "statsd_host" | "dogstatsd_tags" | "statsd_prefix" => Says::Nothing(
            "postern has no StatsD client: its metrics are pulled over HTTP, --stats 127.0.0.1:9191 serves /metrics for Prometheus (not at the StatsD address: that would bind an HTTP server there)".into(),
        ),
        "proc_name" => Says::Nothing("postern does not rename its processes".into()),
        "pythonpath" => Says::Postern(
            value
                .split(',')
                .filter(|d| !d.is_empty())
                .flat_map(|d| ["--pythonpath".to_owned(), d.to_owned()])
                .collect(),
            value
                .contains(',')
                .then(|| "postern's takes one directory each".into()),
        ),
        "paste" => Says::Cannot(
            "postern does not read PasteDeploy files: write a wsgi.py with `application = loadapp('config:/path/to.ini')` and give it as the app".into(),
        ),
        "keyfile" | "certfile" | "ssl_version" | "cert_reqs" | "ca_certs" | "suppress_ragged_eofs"
        | "do_handshake_on_connect" | "ciphers" => Says::Nothing(TLS.into()),
        "strip_header_spaces"
        | "permit_unconventional_http_method"
        | "permit_unconventional_http_version"
        | "casefold_http_method"
        | "forwarder_headers"
        | "header_map" => Says::Nothing(NO_HTTP.into()),
        "version" => Says::Postern(words(&["--version"]), None),
        _ => Says::Nothing("postern has no equivalent".into()),
    }
}

/// gunicorn's `--bind` address as a postern listener.
fn bind(value: &str) -> Says {
    if let Some(fd) = value.strip_prefix("fd://") {
        return Says::NotNeeded(format!(
            "postern takes the sockets systemd passes (socket activation, LISTEN_FDS): give the address in postern.socket's ListenStream= instead of fd {fd}"
        ));
    }
    // gunicorn's `tcp://HOST:PORT` and `unix://PATH` forms. regression (review2 LOW):
    // `-b tcp://127.0.0.1:8000` became `--uwsgi tcp://…`, which does not parse.
    let value = match (value.strip_prefix("tcp://"), value.strip_prefix("unix://")) {
        (Some(addr), _) => addr.to_owned(),
        (_, Some(path)) => format!("unix:{path}"),
        _ => value.to_owned(),
    };
    let value = value.as_str();
    // gunicorn's port when none is given.
    let addr = if value.starts_with("unix:") || value.starts_with('/') || value.contains(':') {
        value.to_owned()
    } else {
        format!("{value}:8000")
    };
    let addr = if addr.starts_with('/') {
        format!("unix:{addr}")
    } else {
        addr
    };
    Says::Postern(vec!["--uwsgi".into(), addr], Some(NGINX.into()))
}

/// gunicorn's worker class.
fn worker_class(value: &str, line: &Line) -> Says {
    let class = value
        .rsplit('.')
        .next()
        .unwrap_or(value)
        .to_ascii_lowercase();
    let v = value.to_ascii_lowercase();
    if v.contains("uvicorn") || class == "asgi" {
        return Says::NotNeeded(
            "postern serves ASGI itself, one event loop per worker: --interface auto (the default) finds an async callable (--interface asgi insists; README 'ASGI apps')".into(),
        );
    }
    match class.as_str() {
        "sync" | "syncworker" => Says::NotNeeded(
            "postern's WSGI workers serve on Python threads: sync is --threads 1, the default".into(),
        ),
        "gthread" | "threadworker" if line.threads => Says::NotNeeded(
            "postern's WSGI workers serve on Python threads: gthread is the --threads given".into(),
        ),
        "gthread" | "threadworker" => Says::NotNeeded(
            "postern's WSGI workers serve on Python threads: gthread is --threads N (1 by default, as gunicorn's)".into(),
        ),
        "gevent" | "geventworker" | "eventlet" | "eventletworker" | "tornado" | "tornadoworker"
        | "ggevent" | "geventpywsgiworker" => Says::Cannot(format!(
            "postern has no {class} workers (no monkey-patching): serve the app on threads (--threads N), or as ASGI"
        )),
        _ => Says::Cannot(format!(
            "{value} is a worker class of its own; postern's workers serve WSGI on Python threads (--threads N) or ASGI on an event loop (--interface)"
        )),
    }
}

/// One gunicorn option found on the command line.
struct Found {
    /// The option as typed (`-w`, `--bind`), as the uWSGI reading names it.
    flag: String,
    /// As typed, value included (`-w 4`).
    text: String,
    /// The indexes of the words it took.
    at: Vec<usize>,
    setting: &'static str,
    value: String,
    /// Only gunicorn's, whatever the rest of the line (`--bind`, `-w 4`, `-k`).
    sure: bool,
}

/// gunicorn's options read from a command line, in postern's words.
pub struct Reading {
    /// One line per gunicorn option.
    pub said: String,
    /// The command line with each gunicorn option replaced by postern's words.
    pub args: Vec<String>,
    /// An option postern cannot do: no command is suggested.
    pub refused: bool,
}

/// Whether the word after an option is its value.
fn value_word(next: Option<&String>) -> Option<&String> {
    next.filter(|n| !n.starts_with('-') || n.as_str() == "-" || n.parse::<f64>().is_ok())
}

/// The gunicorn options among `args` (program name first; `ours` says whether a long
/// name is postern's), or `None` when there is none. A subcommand's line is not read.
pub fn read(args: &[String], ours: impl Fn(&str) -> bool) -> Option<Reading> {
    if args
        .get(1)
        .is_some_and(|a| ["request", "bench", "migrate", "status", "help"].contains(&a.as_str()))
    {
        return None;
    }
    let line = Line {
        threads: args
            .iter()
            .any(|a| a == "--threads" || a.starts_with("--threads=")),
    };
    let integer = |v: &str| v.parse::<u64>().is_ok();
    let mut found: Vec<Found> = Vec::new();
    let mut i = 1;
    while i < args.len() {
        let a = &args[i];
        let at = i;
        i += 1;
        if a == "--" {
            break;
        }
        if let Some(long) = a.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (long, None),
            };
            if ours(name) {
                continue;
            }
            let Some(set) = SETTINGS
                .iter()
                .find(|s| !s.long.is_empty() && s.long == name)
            else {
                continue;
            };
            let (value, words) = match (inline, set.value) {
                (Some(v), _) => (v.to_owned(), vec![at]),
                (None, true) => match value_word(args.get(i)) {
                    Some(v) => {
                        i += 1;
                        (v.clone(), vec![at, at + 1])
                    }
                    None => (String::new(), vec![at]),
                },
                (None, false) => (String::new(), vec![at]),
            };
            let text = words.iter().map(|&w| quoted(&args[w])).collect::<Vec<_>>();
            let uwsgi_knows = !crate::uwsgi_ini::uwsgi_options(
                &["postern".to_owned(), format!("--{name}"), value.clone()],
                |_| false,
            )
            .0
            .is_empty();
            found.push(Found {
                flag: format!("--{name}"),
                text: text.join(" "),
                at: words,
                setting: set.name,
                value,
                sure: !uwsgi_knows,
            });
        } else if let Some(short) = a.strip_prefix('-') {
            let mut chars = short.chars();
            let Some(c) = chars.next() else { continue };
            let Some(set) = SETTINGS.iter().find(|s| s.short == Some(c)) else {
                continue;
            };
            let glued = chars.as_str();
            let (value, words) = if !set.value {
                if !glued.is_empty() {
                    continue;
                }
                // uWSGI's -R takes a number (max-requests).
                if c == 'R' && args.get(i).is_some_and(|n| integer(n)) {
                    continue;
                }
                (String::new(), vec![at])
            } else if !glued.is_empty() {
                (glued.trim_start_matches('=').to_owned(), vec![at])
            } else if let Some(v) = value_word(args.get(i)) {
                (v.clone(), vec![at, at + 1])
            } else {
                (String::new(), vec![at])
            };
            // The value tells the short flags both have apart: uWSGI's -w is the module,
            // -b the buffer size, -p the process count, -t harakiri.
            let sure = match c {
                'w' => integer(&value),
                'b' | 'p' => !value.is_empty() && !integer(&value),
                't' => false,
                _ => true,
            };
            if matches!(c, 'w' | 'b' | 'p') && !sure {
                continue;
            }
            if words.len() == 2 {
                i += 1;
            }
            found.push(Found {
                flag: format!("-{c}"),
                text: words
                    .iter()
                    .map(|&w| quoted(&args[w]))
                    .collect::<Vec<_>>()
                    .join(" "),
                at: words,
                setting: set.name,
                value,
                sure,
            });
        }
    }
    // Only options both have (`-t 30`, `--umask 007`): gunicorn's and uWSGI's alike when
    // no other uWSGI option is on the line, else the uWSGI reading's.
    let both = !found.iter().any(|f| f.sure);
    if both {
        let (uwsgi, _) = crate::uwsgi_ini::uwsgi_options(args, &ours);
        let only_shared = uwsgi.iter().all(|t| found.iter().any(|f| f.flag == t.flag));
        if found.is_empty() || !only_shared {
            return None;
        }
    }
    let whose = if both {
        "gunicorn's and uWSGI's"
    } else {
        "gunicorn's"
    };
    let mut said = String::new();
    let mut refused = false;
    let mut out: Vec<Option<Vec<String>>> = args.iter().map(|a| Some(vec![a.clone()])).collect();
    let mut told_nginx = false;
    for f in &found {
        let needs_value = SETTINGS.iter().any(|s| s.name == f.setting && s.value);
        let answer = if needs_value && f.value.is_empty() {
            refused = true;
            let _ = writeln!(said, "`{}` is {whose} and needs a value", f.text);
            None
        } else {
            Some(says(f.setting, &f.value, &line))
        };
        let replaced = match answer {
            None => Vec::new(),
            Some(Says::Postern(words, note)) => {
                let mut text = format!(
                    "`{}` is {whose}: postern says `{}`",
                    f.text,
                    words
                        .iter()
                        .map(|w| quoted(w))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
                if let Some(n) = note.filter(|n| n != NGINX || !told_nginx) {
                    told_nginx |= n == NGINX;
                    let _ = write!(text, "; {n}");
                }
                let _ = writeln!(said, "{text}");
                words
            }
            Some(Says::NotNeeded(why)) => {
                let _ = writeln!(
                    said,
                    "`{}` is {whose}: postern does not need it: {why}",
                    f.text
                );
                Vec::new()
            }
            Some(Says::Nothing(why) | Says::Differs(why)) => {
                let _ = writeln!(
                    said,
                    "`{}` is {whose}: postern has no such option; {why}",
                    f.text
                );
                Vec::new()
            }
            Some(Says::Cannot(why)) => {
                refused = true;
                let _ = writeln!(said, "`{}` is {whose}: postern cannot do it; {why}", f.text);
                Vec::new()
            }
        };
        for (n, &w) in f.at.iter().enumerate() {
            out[w] = (n == 0).then(|| replaced.clone());
        }
    }
    Some(Reading {
        said,
        args: out.into_iter().flatten().flatten().collect(),
        refused,
    })
}

/// The end of the message when no uWSGI option is left: the options neither postern's
/// nor gunicorn's, then the whole command in postern's words when it would run (every
/// option is postern's, and it names the app), and where the table is.
pub fn rest(reading: &Reading) -> String {
    let mut out = String::new();
    // `-w 4 -w 8`: the last wins, as in gunicorn (postern refuses --workers twice).
    let (line, again) = crate::uwsgi_ini::last_wins(&reading.args, super::arity);
    for a in &again {
        let _ = writeln!(out, "{a}");
    }
    let mut args = line.clone();
    let mut unknown = false;
    let mut parsed = None;
    for _ in 0..args.len() + 1 {
        match Cli::command().try_get_matches_from(&args) {
            Ok(m) => {
                parsed = Cli::from_arg_matches(&m).ok();
                break;
            }
            Err(e) if e.kind() == ErrorKind::UnknownArgument => {
                let Some(ContextValue::String(bad)) = e.get(ContextKind::InvalidArg) else {
                    break;
                };
                let bad = bad.clone();
                let similar = match e.get(ContextKind::SuggestedArg) {
                    Some(ContextValue::String(s)) => format!("; a similar option exists: `{s}`"),
                    _ => String::new(),
                };
                let _ = writeln!(
                    out,
                    "`{bad}` is neither postern's option nor a gunicorn option postern knows{similar}"
                );
                unknown = true;
                let Some(n) = args
                    .iter()
                    .position(|a| a == &bad || a.starts_with(&format!("{bad}=")))
                else {
                    break;
                };
                args.remove(n);
            }
            // `--help` beside a gunicorn option: nothing to add.
            Err(e) if !e.use_stderr() => break,
            Err(e) => {
                // A value postern refuses (`--workers x`): clap's own sentence, unless an
                // unknown option was taken out (its value is left behind, misread).
                if !unknown {
                    let text = e.render().to_string();
                    if let Some(first) = text.lines().next() {
                        let _ = writeln!(out, "{}", first.trim_start_matches("error: "));
                    }
                }
                unknown = true;
                break;
            }
        }
    }
    let runs = parsed.filter(|cli| {
        cli.options.app.is_some()
            || cli.config.is_some()
            || !cli.ini.is_empty()
            || std::env::var_os("POSTERN_APP").is_some()
    });
    // A --config file that is gunicorn's would stop that command too.
    let config_said = runs.as_ref().and_then(|cli| {
        let path = cli.config.as_deref()?;
        not_toml(path, &std::fs::read_to_string(path).ok()?)
    });
    if let (Some(said), Some(path)) = (
        &config_said,
        runs.as_ref().and_then(|c| c.config.as_deref()),
    ) {
        let _ = writeln!(out, "--config {}: {said}", path.display());
    }
    if !reading.refused && !unknown && runs.is_some() && config_said.is_none() {
        let line: Vec<String> = std::iter::once("postern".to_owned())
            .chain(line.iter().skip(1).map(|a| quoted(a)))
            .collect();
        let _ = writeln!(out, "the same with postern: {}", line.join(" "));
    }
    out.push_str("postern's options: postern --help; gunicorn's beside postern's: docs/migration.md 'From gunicorn' (README 'Command line')");
    out
}

/// gunicorn settings no postern key is named like: one assigned at the top of a file
/// marks a gunicorn config file.
const MARKS: &[&str] = &[
    "bind",
    "wsgi_app",
    "worker_class",
    "worker_connections",
    "max_requests_jitter",
    "keepalive",
    "preload_app",
    "raw_env",
    "accesslog",
    "errorlog",
    "loglevel",
    "access_log_format",
    "proc_name",
    "forwarded_allow_ips",
    "backlog",
    "daemon",
    "user",
    "group",
    "reload",
    "capture_output",
    "statsd_host",
    "worker_tmp_dir",
];

/// One top-level statement of a Python file: its first line (1-based), its text (the
/// lines it spans joined), and the name it assigns to, if it is `NAME = ...` (or
/// `NAME: TYPE = ...`).
struct Statement {
    line: usize,
    text: String,
    name: Option<String>,
    /// What follows `=`.
    value: String,
    /// The indented lines that follow it (an `if` block's, a `def`'s), as written.
    body: Vec<String>,
}

/// The top-level statements of a Python file, read as text (the file is not run): a
/// statement goes on while a bracket or a string is open or a line ends with `\`, and
/// ends at a `;` outside them. A leading byte-order mark is not part of the first name.
fn statements(text: &str) -> Vec<Statement> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out: Vec<Statement> = Vec::new();
    // The statement being read: its first line and text so far.
    let mut current: Option<(usize, String)> = None;
    let (mut depth, mut quote, mut triple) = (0i32, None::<char>, false);
    for (n, raw) in text.lines().enumerate() {
        let open = depth > 0 || quote.is_some();
        if !open && current.is_none() {
            let indented = raw.starts_with([' ', '\t']);
            let blank = raw.trim().is_empty() || raw.trim_start().starts_with('#');
            if blank {
                continue;
            }
            if indented {
                if let Some(last) = out.last_mut() {
                    last.body.push(raw.to_owned());
                }
                continue;
            }
            current = Some((n + 1, String::new()));
        }
        // Track brackets and strings, cut a comment off, and split at `;`.
        let chars: Vec<char> = raw.chars().collect();
        let mut i = 0;
        let mut kept = String::new();
        // A backslash that ends the line inside a string: Python joins the lines.
        let mut joined = false;
        while i < chars.len() {
            let c = chars[i];
            match quote {
                Some(q) => {
                    if c == '\\' {
                        match chars.get(i + 1) {
                            Some(&e) => {
                                kept.push(c);
                                kept.push(e);
                            }
                            None => joined = true,
                        }
                        i += 1;
                    } else {
                        kept.push(c);
                        if c == q {
                            if !triple {
                                quote = None;
                            } else if chars.get(i + 1) == Some(&q) && chars.get(i + 2) == Some(&q) {
                                kept.push(q);
                                kept.push(q);
                                i += 2;
                                quote = None;
                                triple = false;
                            }
                        }
                    }
                }
                None => match c {
                    '#' => break,
                    ';' if depth <= 0 => {
                        // `x = 1; threads = 4`: two statements on the line.
                        let (line, mut buf) = current.take().unwrap_or((n + 1, String::new()));
                        buf.push_str(kept.trim_end());
                        kept.clear();
                        if !buf.trim().is_empty() {
                            out.push(statement(line, buf.trim().to_owned()));
                        }
                        current = Some((n + 1, String::new()));
                    }
                    '\'' | '"' => {
                        kept.push(c);
                        if chars.get(i + 1) == Some(&c) && chars.get(i + 2) == Some(&c) {
                            kept.push(c);
                            kept.push(c);
                            i += 2;
                            triple = true;
                        }
                        quote = Some(c);
                    }
                    '(' | '[' | '{' => {
                        depth += 1;
                        kept.push(c);
                    }
                    ')' | ']' | '}' => {
                        depth -= 1;
                        kept.push(c);
                    }
                    _ => kept.push(c),
                },
            }
            i += 1;
        }
        let Some((_, buf)) = current.as_mut() else {
            continue;
        };
        if quote.is_some() {
            if joined {
                // regression (review2): the value kept a newline where Python joins.
                buf.push_str(&kept);
                continue;
            }
            if triple {
                buf.push_str(&kept);
                buf.push('\n');
                continue;
            }
            // A one-line string left open: a syntax error; end it here.
            quote = None;
        }
        let continued = kept.trim_end().ends_with('\\');
        buf.push_str(kept.trim_end().trim_end_matches('\\'));
        buf.push('\n');
        if depth <= 0 && !continued {
            depth = 0;
            let (line, text) = current.take().unwrap_or_default();
            if !text.trim().is_empty() {
                out.push(statement(line, text.trim().to_owned()));
            }
        }
    }
    if let Some((line, text)) = current {
        if !text.trim().is_empty() {
            out.push(statement(line, text.trim().to_owned()));
        }
    }
    out
}

fn statement(line: usize, text: String) -> Statement {
    let assigned = text.split_once('=').and_then(|(name, value)| {
        // `workers: int = 4` assigns workers.
        let name = name.split_once(':').map_or(name, |(n, _)| n).trim();
        let plain = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !COMPOUND.contains(&name);
        (plain && !value.starts_with('=')).then(|| (name.to_owned(), value.trim().to_owned()))
    });
    let (name, value) = match assigned {
        Some((n, v)) => (Some(n), v),
        None => (None, String::new()),
    };
    Statement {
        line,
        text,
        name,
        value,
        body: Vec::new(),
    }
}

/// The keywords a compound statement starts with (its body runs or not as the file
/// runs: migrate cannot tell).
const COMPOUND: &[&str] = &[
    "if", "elif", "else", "try", "except", "finally", "for", "while", "with", "match", "case",
    "async",
];

/// Whether `text` is a compound statement's header (`if …:`, `else:`, `try:`).
fn compound(text: &str) -> bool {
    let first: String = text
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    let async_def = text.starts_with("async def ");
    COMPOUND.contains(&first.as_str()) && !async_def
}

/// Whether a top-level statement changes the environment the workers inherit other than
/// by `raw_env = literal`: `raw_env.append(...)`, `raw_env.extend(...)`, `raw_env +=`
/// (read elsewhere), `os.environ[...] = ...`, `os.environ.update(...)`,
/// `os.environ.setdefault(...)`, `os.environ |= ...`, `os.putenv(...)`, `environ[...] =
/// ...` after `from os import environ`, and the same through a name of `aliases`
/// ([`environment_aliases`]: `E[...] = ...` after `from os import environ as E`).
fn sets_environment(text: &str, aliases: &[String]) -> bool {
    let t = text.trim_start();
    t.starts_with("raw_env.")
        || ["os.environ", "os.putenv", "environ[", "environ.", "putenv("]
            .iter()
            .any(|p| t.starts_with(p))
        || aliases.iter().any(|a| {
            t.strip_prefix(a.as_str())
                .is_some_and(|rest| rest.trim_start().starts_with(['[', '.', '(', '|']))
        })
}

/// The names the file's top-level statements give `os`, `os.environ` and `os.putenv`
/// (`import os as o` gives `o.environ` and `o.putenv`, `from os import environ as E`
/// and `E = os.environ` give `E`), for [`sets_environment`].
/// regression: `from os import environ as E; E["X"] = v` was dropped without a line.
fn environment_aliases(st: &[Statement]) -> Vec<String> {
    let mut aliases = Vec::new();
    for s in st {
        let t = s.text.trim();
        if let Some(names) = t.strip_prefix("import ") {
            for (module, alias) in names.split(',').filter_map(|n| n.split_once(" as ")) {
                if module.trim() == "os" {
                    aliases.push(format!("{}.environ", alias.trim()));
                    aliases.push(format!("{}.putenv", alias.trim()));
                }
            }
        } else if let Some(names) = t.strip_prefix("from os import ") {
            let names = names.trim_matches(|c: char| c == '(' || c == ')' || c.is_whitespace());
            for n in names.split(',') {
                if let Some((name, alias)) = n.split_once(" as ") {
                    if matches!(name.trim(), "environ" | "putenv") {
                        aliases.push(alias.trim().to_owned());
                    }
                }
            }
        } else if let Some(name) = &s.name {
            let value = s.value.trim();
            let env =
                ["os.environ", "environ"].contains(&value) || aliases.iter().any(|a| a == value);
            if env && name != "environ" {
                aliases.push(name.clone());
            }
        }
    }
    aliases
}

/// `line` (a statement that sets the environment, [`sets_environment`]) as a message
/// quotes it: its string literals that are values hidden (`os.putenv("SECRET_KEY",
/// (value hidden))`, `os.environ.update({"API_TOKEN": (value hidden)})`), those that
/// name a variable kept: a subscript's (`environ["X"]`), a dict's key (`{"X": …}`), a
/// call's first argument (`putenv("X", …)`, `("X", …)`); a `"NAME=VALUE"` literal
/// (`raw_env.append(…)`) shows its name. As `env = NAME=…` lines and `raw_env` are
/// quoted, whatever the variable's name.
/// regression: `os.putenv("SECRET_KEY", "…")`, `os.environ.setdefault(…)`,
/// `os.environ.update({…})` and `os.environ |= {…}` were quoted whole under NEEDS
/// ATTENTION.
fn hide_environment_values(line: &str) -> String {
    let c: Vec<char> = line.chars().collect();
    let next_after = |i: usize| c[i..].iter().copied().find(|ch| !ch.is_whitespace());
    let mut out = String::new();
    let mut i = 0;
    while i < c.len() {
        let q = c[i];
        if q != '"' && q != '\'' {
            out.push(q);
            i += 1;
            continue;
        }
        // A string literal: its end (a triple quote's too; the line's end if open).
        let triple = c[i..].starts_with(&[q, q, q]);
        let open = if triple { 3 } else { 1 };
        let mut j = i + open;
        let (body_end, end) = loop {
            if j >= c.len() {
                break (c.len(), c.len());
            }
            if c[j] == '\\' {
                j += 2;
                continue;
            }
            if c[j..].starts_with(&c[i..i + open]) {
                break (j, j + open);
            }
            j += 1;
        };
        let before = out
            .trim_end_matches(|ch: char| ch.is_ascii_alphabetic())
            .trim_end()
            .chars()
            .next_back();
        let after = next_after(end);
        // A name: a dict's key, a subscript (`environ["X"]`), a call's or a tuple's
        // first item (`putenv("X", …)`, `("X", …)`); not a list's items.
        // regression (review of 1720d9e): `raw_env.extend(["A=x", "DB_PASSWORD=y"])`
        // and its tuple form were taken for names (before `[`/`(` and `,`, before `]`)
        // and shown; a `"NAME=VALUE"` literal is now looked at first, wherever it is.
        let name = after == Some(':')
            || (before == Some('[') && after == Some(']'))
            || (before == Some('(') && after == Some(','));
        let body: String = c[(i + open).min(body_end)..body_end].iter().collect();
        let quote: String = c[i..i + open].iter().collect();
        match body.split_once('=') {
            Some((n, _))
                if !n.is_empty() && n.chars().all(|ch| ch.is_alphanumeric() || ch == '_') =>
            {
                out.push_str(&format!("{quote}{n}={}{quote}", crate::uwsgi_ini::HIDDEN));
            }
            _ if name => out.extend(&c[i..end]),
            _ => out.push_str(crate::uwsgi_ini::HIDDEN),
        }
        i = end;
    }
    out
}

/// The names a line of code assigns to (the identifiers left of its first `=`, `+=`,
/// …, outside strings and brackets: `a, b = …`, `x += 1`, `if c: x = 1` gives `c` and
/// `x`); empty when it assigns nothing.
fn assigned_names(line: &str) -> Vec<String> {
    let c: Vec<char> = line.chars().collect();
    let (mut depth, mut quote) = (0i32, None::<char>);
    let mut target = None;
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        match quote {
            Some(q) => {
                if ch == '\\' {
                    i += 1;
                } else if ch == q {
                    quote = None;
                }
            }
            None => match ch {
                '#' => break,
                '\'' | '"' => quote = Some(ch),
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' => depth -= 1,
                '=' if depth <= 0 => {
                    let before = i.checked_sub(1).map(|j| c[j]);
                    let after = c.get(i + 1);
                    let comparison =
                        matches!(before, Some('=' | '!' | '<' | '>' | ':')) || after == Some(&'=');
                    if !comparison {
                        target = Some(i);
                        break;
                    }
                    if after == Some(&'=') {
                        i += 1;
                    }
                }
                _ => {}
            },
        }
        i += 1;
    }
    let Some(end) = target else {
        return Vec::new();
    };
    let mut names = Vec::new();
    let mut word = String::new();
    for ch in c[..end].iter().chain([' '].iter()) {
        if ch.is_alphanumeric() || *ch == '_' {
            word.push(*ch);
        } else if !word.is_empty() {
            if !word.starts_with(|d: char| d.is_ascii_digit()) {
                names.push(std::mem::take(&mut word));
            }
            word.clear();
        }
    }
    names
}

/// The gunicorn settings and hooks among `names`, deduplicated, in order.
fn gunicorns(names: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in names {
        let known = SETTINGS.iter().any(|s| s.name == n) || HOOKS.contains(&n.as_str());
        if known && !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// Whether `text` is a gunicorn config file: it assigns one of gunicorn's settings
/// postern has no key for (`bind`, `worker_class`, …) at its top level and names no
/// app (`application`, `app`) anywhere in its code: an app file that imports its app
/// (`from main import app`) or annotates it (`app: Flask = …`) names it too.
pub fn is_config(text: &str) -> bool {
    let st = statements(text);
    let marked = st
        .iter()
        .any(|s| s.name.as_deref().is_some_and(|n| MARKS.contains(&n)));
    marked && !names_an_app(text)
}

/// Whether the code of `text` (outside strings and comments) uses the name `app` or
/// `application`, or imports `*` (which may bring either).
fn names_an_app(text: &str) -> bool {
    let c: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut prev = String::new();
    while i < c.len() {
        let ch = c[i];
        if ch == '#' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '\'' || ch == '"' {
            let triple = c.get(i + 1) == Some(&ch) && c.get(i + 2) == Some(&ch);
            i += if triple { 3 } else { 1 };
            while i < c.len() {
                if c[i] == '\\' {
                    i += 2;
                    continue;
                }
                if c[i] == ch
                    && (!triple || (c.get(i + 1) == Some(&ch) && c.get(i + 2) == Some(&ch)))
                {
                    i += if triple { 3 } else { 1 };
                    break;
                }
                if c[i] == '\n' && !triple {
                    break;
                }
                i += 1;
            }
            continue;
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            if word == "app" || word == "application" {
                return true;
            }
            prev = word;
            continue;
        } else if ch == '*' && prev == "import" {
            return true;
        } else if !ch.is_whitespace() {
            prev.clear();
        }
        i += 1;
    }
    false
}

/// Whether the app file `path` (`text`) is surely a gunicorn config file, so that
/// start-up refuses it before binding anything: [`is_config`], and named for gunicorn
/// (`gunicorn*.py`, `*.conf.py`) or assigning a setting no app module has (`bind`,
/// `worker_class`, `wsgi_app`). A weaker likeness gets its hint only if the import
/// then finds no callable. regression: an app file that imported its app and set
/// `loglevel` was refused as a gunicorn config file.
fn surely_config(path: &Path, text: &str) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let named = name.starts_with("gunicorn") || name.ends_with(".conf.py");
    let strong = statements(text).iter().any(|s| {
        matches!(
            s.name.as_deref(),
            Some("bind" | "worker_class" | "wsgi_app")
        )
    });
    (named || strong) && is_config(text)
}

/// What to say when `--config` is given a Python file (`text`, named `path`): a
/// gunicorn config file, or another `.py`.
/// A file that reads as TOML and is not named for gunicorn gets a hint per key instead
/// ([`config_key_hint`]).
pub fn not_toml(path: &Path, text: &str) -> Option<String> {
    let py = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("py"));
    let named = path.file_name().is_some_and(|n| {
        n.to_string_lossy()
            .to_ascii_lowercase()
            .contains("gunicorn")
    });
    let toml = toml::from_str::<toml::Table>(text).is_ok();
    if is_config(text) && (py || named || !toml) {
        return Some(config_message(path));
    }
    py.then(|| "this is a Python file; postern's config file is TOML (the long options' names as keys; `postern --print-config` prints one), and the app is postern's APP argument".into())
}

/// What postern calls gunicorn's setting `name` (with `value`), in a few words for a
/// `--config` key it does not know (`accesslog`: "gunicorn's accesslog: postern's key is
/// access-log"); `None` when it is none of gunicorn's.
pub fn config_key_hint(name: &str, value: &str) -> Option<String> {
    SETTINGS.iter().find(|s| s.name == name)?;
    let keys: Vec<String> = super::option_keys().into_iter().map(|(k, _)| k).collect();
    Some(match says(name, value, &Line::default()) {
        Says::Postern(words, _) => {
            let mut named: Vec<String> = toml_entries(&words, &keys)
                .into_iter()
                .map(|(k, _)| {
                    if k.starts_with("env.") {
                        "[env]".into()
                    } else {
                        k
                    }
                })
                .collect();
            named.dedup();
            if named.is_empty() {
                return None;
            }
            format!(
                "gunicorn's {name}: postern's key is {}",
                named.join(" and ")
            )
        }
        Says::NotNeeded(_) => format!("gunicorn's {name}: postern does not need it"),
        Says::Nothing(_) | Says::Differs(_) | Says::Cannot(_) => {
            format!("gunicorn's {name}: postern has none, see docs/migration.md 'From gunicorn'")
        }
    })
}

/// What to say when a gunicorn config file is given where postern's TOML is expected.
fn config_message(path: &Path) -> String {
    let file = quoted(&path.display().to_string());
    format!(
        "this is a gunicorn config file (Python); postern's config file is TOML (the long options' names as keys): convert it with `postern migrate {file}` (it reads the assignments without running the file; docs/migration.md 'From gunicorn')"
    )
}

/// The app given is a gunicorn config file (`postern gunicorn.conf.py`): what to say.
/// regression: postern bound its socket, then imported the file as the app and said it
/// had no attribute 'application'.
pub fn config_as_app(app: &str) -> Option<String> {
    let path = Path::new(app);
    if !path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("py"))
    {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    surely_config(path, &text).then(|| {
        let wsgi_app = statements(&text)
            .into_iter()
            .find(|s| s.name.as_deref() == Some("wsgi_app"))
            .and_then(|s| match literal(&s.value) {
                Some(Py::Str(a)) => Some(a),
                _ => None,
            });
        let named = match wsgi_app {
            Some(a) => format!("; its wsgi_app is postern's APP: `postern {}`", quoted(&a)),
            None => String::new(),
        };
        format!("{app} is not an app: {}{named}", config_message(path))
    })
}

/// What to add to "no callable found" for the app file `path` when it reads as a
/// gunicorn config file less surely than [`config_as_app`] refuses (it was imported).
pub fn no_callable_hint(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    is_config(&text).then(|| {
        format!(
            "if {} is a gunicorn config file: postern's config file is TOML, convert it with `postern migrate {}`",
            path.display(),
            quoted(&path.display().to_string())
        )
    })
}

/// A Python literal, as `ast.literal_eval` would read the simple ones.
#[derive(Debug, Clone, PartialEq)]
enum Py {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    None,
    List(Vec<Py>),
}

/// `text` as a Python literal: a string, number, True/False/None, or a list or tuple of
/// those; `None` for anything else (an expression is not evaluated).
fn literal(text: &str) -> Option<Py> {
    let chars: Vec<char> = text.trim().chars().collect();
    let mut at = 0;
    let v = parse_py(&chars, &mut at, 0)?;
    skip_space(&chars, &mut at);
    (at == chars.len()).then_some(v)
}

fn skip_space(c: &[char], at: &mut usize) {
    while c.get(*at).is_some_and(|c| c.is_whitespace()) {
        *at += 1;
    }
}

/// Lists nested deeper than this are not read (a settings value is one level deep).
const MAX_DEPTH: usize = 16;

fn parse_py(c: &[char], at: &mut usize, depth: usize) -> Option<Py> {
    if depth > MAX_DEPTH {
        return None;
    }
    skip_space(c, at);
    let first = *c.get(*at)?;
    match first {
        '[' | '(' => {
            let close = if first == '[' { ']' } else { ')' };
            *at += 1;
            let mut items = Vec::new();
            loop {
                skip_space(c, at);
                if c.get(*at) == Some(&close) {
                    *at += 1;
                    return Some(Py::List(items));
                }
                items.push(parse_py(c, at, depth + 1)?);
                skip_space(c, at);
                match c.get(*at) {
                    Some(',') => *at += 1,
                    Some(x) if *x == close => {}
                    _ => return None,
                }
            }
        }
        '\'' | '"' => string(c, at, false),
        'r' | 'R' if matches!(c.get(*at + 1), Some('\'' | '"')) => {
            *at += 1;
            string(c, at, true)
        }
        _ => {
            let start = *at;
            while c
                .get(*at)
                .is_some_and(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-' | '+'))
            {
                *at += 1;
            }
            let word_raw: String = c[start..*at].iter().collect();
            // `_` only between digits (`1_000`; `_4` is a name). regression (review2 LOW).
            let underscores_fit = word_raw.char_indices().all(|(i, ch)| {
                ch != '_' || {
                    let b = word_raw[..i].chars().last();
                    let a = word_raw[i + 1..].chars().next();
                    b.is_some_and(|b| b.is_ascii_alphanumeric())
                        && a.is_some_and(|a| a.is_ascii_alphanumeric())
                }
            });
            if !underscores_fit {
                return None;
            }
            let word: String = word_raw.chars().filter(|&ch| ch != '_').collect();
            match word_raw.as_str() {
                "True" => return Some(Py::Bool(true)),
                "False" => return Some(Py::Bool(false)),
                "None" => return Some(Py::None),
                _ => {}
            }
            // One sign at most: Python's literal is `+4` or `-4`; `++4` and `-+4` are
            // expressions (ast.literal_eval refuses them). regression: `++4` was 4.
            let (neg, digits) = match word.strip_prefix('-') {
                Some(d) => (true, d),
                None => (false, word.strip_prefix('+').unwrap_or(&word)),
            };
            let radix = [("0o", 8), ("0x", 16), ("0b", 2)]
                .iter()
                .find_map(|(p, r)| {
                    digits
                        .to_ascii_lowercase()
                        .strip_prefix(p)
                        .map(|d| (d.to_owned(), *r))
                });
            if let Some((d, r)) = radix {
                // No sign after the prefix (`0x-1e` is no number). regression (review2).
                if d.starts_with(['+', '-']) {
                    return None;
                }
                let n = i64::from_str_radix(&d, r).ok()?;
                return Some(Py::Int(if neg { n.checked_neg()? } else { n }));
            }
            if digits.starts_with(['+', '-']) {
                return None;
            }
            if let Ok(n) = digits.parse::<i64>() {
                return Some(Py::Int(if neg { n.checked_neg()? } else { n }));
            }
            if digits
                .chars()
                .next()
                .is_some_and(|d| d.is_ascii_digit() || d == '.')
            {
                if let Ok(f) = digits.parse::<f64>() {
                    return Some(Py::Float(if neg { -f } else { f }));
                }
            }
            None
        }
    }
}

/// A string literal from its opening quote; adjacent ones join, as Python's do.
fn string(c: &[char], at: &mut usize, raw: bool) -> Option<Py> {
    let mut out = String::new();
    while let Some(&q) = c.get(*at).filter(|q| matches!(q, '\'' | '"')) {
        let tripled = |i: usize| c.get(i + 1) == Some(&q) && c.get(i + 2) == Some(&q);
        let triple = tripled(*at);
        *at += if triple { 3 } else { 1 };
        loop {
            let ch = *c.get(*at)?;
            if ch == q && (!triple || tripled(*at)) {
                *at += if triple { 3 } else { 1 };
                break;
            }
            if ch == '\\' && !raw {
                // Python's escapes. regression (review2): any other escape became its
                // second character (`\x61` was `x61`, `\d` was `d`).
                let e = *c.get(*at + 1)?;
                *at += 2;
                match e {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    'a' => out.push('\u{7}'),
                    'b' => out.push('\u{8}'),
                    'f' => out.push('\u{c}'),
                    'v' => out.push('\u{b}'),
                    '\\' | '\'' | '"' => out.push(e),
                    '\n' => {}
                    '0'..='7' => {
                        let mut n = e.to_digit(8)?;
                        for _ in 0..2 {
                            match c.get(*at).and_then(|d| d.to_digit(8)) {
                                Some(d) => {
                                    n = n * 8 + d;
                                    *at += 1;
                                }
                                None => break,
                            }
                        }
                        out.push(char::from_u32(n)?);
                    }
                    'x' | 'u' | 'U' => {
                        let len = match e {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let hex: String = c.get(*at..*at + len)?.iter().collect();
                        if !hex.chars().all(|d| d.is_ascii_hexdigit()) {
                            return None;
                        }
                        out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                        *at += len;
                    }
                    // `\N{NAME}`: not read (no table of names here).
                    'N' => return None,
                    // An unknown escape keeps its backslash, as Python's does.
                    other => {
                        out.push('\\');
                        out.push(other);
                    }
                }
                continue;
            }
            out.push(ch);
            *at += 1;
        }
        skip_space(c, at);
    }
    Some(Py::Str(out))
}

/// gunicorn's server hooks: functions its config file defines, run by its arbiter.
const HOOKS: &[&str] = &[
    "on_starting",
    "on_reload",
    "when_ready",
    "pre_fork",
    "post_fork",
    "post_worker_init",
    "worker_int",
    "worker_abort",
    "pre_exec",
    "pre_request",
    "post_request",
    "child_exit",
    "worker_exit",
    "nworkers_changed",
    "on_exit",
    "ssl_context",
];

/// `postern migrate` of a gunicorn config file.
pub struct Migrated {
    /// The postern TOML file, for stdout.
    pub toml: String,
    /// One line of counts, for stderr.
    pub summary: String,
    /// 0, or 3 when something needs attention (the TOML is written all the same).
    pub code: u8,
}

/// The exit status of a migrate whose output needs attention (as for a uWSGI file).
const EXIT_ATTENTION: u8 = 3;

/// `postern migrate FILE` when FILE is a gunicorn config file (a `.py` name, or a file
/// that assigns gunicorn's settings and has no ini section): `None` for anything else.
pub fn migrate(spec: &str) -> Option<Result<Migrated, String>> {
    let path = Path::new(spec);
    let py = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("py"));
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if py => return Some(Err(format!("cannot read {spec}: {e}"))),
        Err(_) => return None,
    };
    let sectioned = text.lines().any(|l| l.trim_start().starts_with('['));
    if !py && (sectioned || !is_config(&text)) {
        return None;
    }
    Some(translate(path, &text))
}

/// One statement's outcome.
enum Done {
    Carried(Vec<(String, toml::Value)>, Option<String>),
    NotCarried(String),
    Attention(String),
}

fn translate(path: &Path, text: &str) -> Result<Migrated, String> {
    let st = statements(text);
    if !st.iter().any(|s| {
        s.name
            .as_deref()
            .is_some_and(|n| SETTINGS.iter().any(|g| g.name == n))
    }) {
        return Err(format!(
            "{} assigns none of gunicorn's settings (bind, workers, …): it is no gunicorn config file; postern migrate reads those and uWSGI ini files",
            path.display()
        ));
    }
    // Python's last assignment wins. regression (review2 LOW): this was a scan of the
    // later statements for each one (100k distinct names: 25 s).
    let mut last_index = std::collections::HashMap::new();
    for (i, s) in st.iter().enumerate() {
        if let Some(n) = s.name.as_deref() {
            last_index.insert(n, i);
        }
    }
    let last = |i: usize, name: &str| last_index.get(name) == Some(&i);
    let line = Line {
        threads: st.iter().any(|s| s.name.as_deref() == Some("threads")),
    };
    let keys: Vec<String> = super::option_keys().into_iter().map(|(k, _)| k).collect();
    let aliases = environment_aliases(&st);
    let mut done: Vec<(&Statement, Done)> = Vec::new();
    for (i, s) in st.iter().enumerate() {
        let t = s.text.trim_start();
        let hook = ["def ", "async def "].iter().find_map(|d| {
            let rest = t.strip_prefix(d)?;
            rest.split('(').next().map(str::trim)
        });
        if let Some(h) = hook {
            if HOOKS.contains(&h) {
                done.push((s, Done::Attention(format!(
                    "gunicorn's server hook {h}(): postern runs none; what it does belongs in the app's module (each worker imports it), an ASGI lifespan startup, or the deploy script"
                ))));
            }
            continue;
        }
        // regression (review2): settings set in a top-level `if`/`try` block, or by a
        // statement migrate does not read (`workers += 1`, `bind, workers = …`), were
        // dropped without a word.
        if compound(t) {
            let header = t.split_once(':').map_or("", |(_, rest)| rest);
            let names = gunicorns(
                std::iter::once(header)
                    .chain(s.body.iter().map(|l| l.trim()))
                    .flat_map(assigned_names),
            );
            if !names.is_empty() {
                let keyword: String = t.chars().take_while(|c| c.is_alphanumeric()).collect();
                done.push((s, Done::Attention(format!(
                    "{} set inside a top-level `{keyword}` block: whether it runs is known only when the file runs, and migrate does not run it; write postern's option for the case that applies where postern will run (or one TOML file per case)",
                    names.join(", ")
                ))));
            }
            continue;
        }
        let Some(name) = s.name.as_deref() else {
            let names = gunicorns(assigned_names(t));
            if !names.is_empty() {
                done.push((s, Done::Attention(format!(
                    "sets {} in a way migrate does not read (it reads `NAME = literal`): work it out and write postern's option here",
                    names.join(", ")
                ))));
            } else if sets_environment(t, &aliases) {
                // regression (review-final): `raw_env.append(...)` and `os.environ[...] =`
                // vanished without a line, and the app then started without them.
                done.push((s, Done::Attention(
                    "sets the environment in a way migrate does not read (gunicorn runs this file in its master, so its workers had the variables): write them under [env] (or in the service's Environment=)".to_owned(),
                )));
            }
            continue;
        };
        if !last(i, name) {
            continue;
        }
        if HOOKS.contains(&name) {
            // regression (review2): `when_ready = on_start` was called "a variable of
            // the file's own"; gunicorn runs it as it runs a `def` hook.
            done.push((s, Done::Attention(format!(
                "gunicorn's server hook {name}: postern runs none; what it does belongs in the app's module (each worker imports it), an ASGI lifespan startup, or the deploy script"
            ))));
            continue;
        }
        let Some(set) = SETTINGS.iter().find(|g| g.name == name) else {
            done.push((
                s,
                Done::NotCarried(
                    "not one of gunicorn's settings (a variable of the file's own)".into(),
                ),
            ));
            continue;
        };
        let Some(value) = literal(&s.value) else {
            // A setting postern does without whatever its value (a dict of
            // secure_scheme_headers): said so, not flagged. regression (review2 LOW).
            match says(name, "", &line) {
                Says::NotNeeded(why) => {
                    done.push((s, Done::NotCarried(format!("not needed: {why}"))));
                    continue;
                }
                Says::Nothing(why) => {
                    done.push((s, Done::NotCarried(format!("no equivalent: {why}"))));
                    continue;
                }
                _ => {}
            }
            done.push((s, Done::Attention(format!(
                "not a literal value, and migrate does not run the file: work it out and write postern's option here ({})",
                match says(name, "N", &line) {
                    Says::Postern(w, _) => w.first().map_or("see docs/migration.md".into(), |k| format!("{} = …", k.trim_start_matches("--"))),
                    _ => "see docs/migration.md 'From gunicorn'".into(),
                }
            ))));
            continue;
        };
        // sendfile = False is --no-sendfile.
        let on = name != "sendfile";
        let values: Vec<String> = match (&value, set.value) {
            (Py::None, _) => {
                done.push((s, Done::NotCarried("None: gunicorn's default".into())));
                continue;
            }
            (Py::Bool(b), false) if *b == on => vec![String::new()],
            (Py::Bool(_), false) => {
                done.push((s, Done::NotCarried("gunicorn's default".into())));
                continue;
            }
            (Py::List(items), true) => items.iter().filter_map(py_text).collect(),
            (v, true) => py_text(v).into_iter().collect(),
            _ => Vec::new(),
        };
        if values.is_empty() {
            done.push((
                s,
                Done::Attention("a value of another type than gunicorn's for it".into()),
            ));
            continue;
        }
        let mut kv: Vec<(String, toml::Value)> = Vec::new();
        let mut notes: Vec<String> = Vec::new();
        let mut skipped: Vec<String> = Vec::new();
        let mut outcome = None;
        for v in &values {
            match says(name, v, &line) {
                Says::Postern(words, note) => {
                    for (k, val) in toml_entries(&words, &keys) {
                        match kv.iter_mut().find(|(have, _)| *have == k) {
                            Some((_, toml::Value::Array(a))) => {
                                if let toml::Value::Array(more) = val {
                                    a.extend(more);
                                }
                            }
                            _ => kv.push((k, val)),
                        }
                    }
                    if let Some(n) = note.filter(|n| !notes.contains(n)) {
                        notes.push(n);
                    }
                }
                Says::NotNeeded(why) => {
                    skipped.push(format!("{v:?} not carried over: not needed: {why}"));
                    outcome = Some(Done::NotCarried(format!("not needed: {why}")))
                }
                Says::Nothing(why) => {
                    skipped.push(format!("{v:?} not carried over: no equivalent: {why}"));
                    outcome = Some(Done::NotCarried(format!("no equivalent: {why}")))
                }
                Says::Cannot(why) => outcome = Some(Done::Attention(why)),
                Says::Differs(why) => {
                    outcome = Some(Done::Attention(format!("no equivalent: {why}")))
                }
            }
        }
        let outcome = match outcome {
            // One of a list's values is not needed (`bind = ["unix:…", "fd://3"]`): the
            // others are carried, that one said in the note.
            // regression: the whole list was "not needed", the unix address dropped
            // and no listener written, with exit 0.
            Some(Done::NotCarried(_)) if !kv.is_empty() => {
                notes.extend(skipped);
                Done::Carried(kv, Some(notes.join("; ")))
            }
            Some(o) => o,
            None if kv.is_empty() => {
                Done::NotCarried("a command-line switch, not a setting of the file".into())
            }
            None => Done::Carried(kv, (!notes.is_empty()).then(|| notes.join("; "))),
        };
        done.push((s, outcome));
    }

    // The values postern's start-up would refuse are not carried: they need attention,
    // with the start-up's message (as a uWSGI file's do). regression (review2): threads
    // = 2000 or timeout = 1e400 were written with exit 0, and start-up refused them.
    let mut table = toml::Table::new();
    for (_, d) in &done {
        if let Done::Carried(kv, _) = d {
            for (k, v) in kv {
                if let Ok(one) = toml::from_str::<toml::Table>(&format!("{k} = {v}")) {
                    merge(&mut table, one);
                }
            }
        }
    }
    for (key, why) in super::refused_values(&table) {
        for (_, d) in done.iter_mut() {
            let hit = matches!(d, Done::Carried(kv, _) if kv.iter().any(|(k, _)| *k == key || k.starts_with(&format!("{key}."))));
            if hit {
                *d = Done::Attention(format!("postern's start-up refuses the value: {why}"));
            }
        }
    }

    // A user or group this host does not have: written all the same (the file may be
    // converted elsewhere), listed under NEEDS ATTENTION, the exit status unchanged.
    let not_here: Vec<_> = super::not_on_this_host(&table)
        .into_iter()
        .flat_map(|(key, why)| {
            done.iter()
                .filter(move |(_, d)| matches!(d, Done::Carried(kv, _) if kv.iter().any(|(k, _)| *k == key)))
                .map(move |(s, _)| (s, why.clone()))
        })
        .collect();

    let head = |s: &Statement| {
        // As `--ini`'s quoted lines: the value of raw_env (environment variables, often
        // secrets) and of a name like a secret's is not quoted (the TOML carries the
        // values that carry over).
        if let Some(name) = s
            .name
            .as_deref()
            .filter(|n| *n == "raw_env" || crate::uwsgi_ini::secret_name(n))
            .filter(|_| !s.value.trim().is_empty())
        {
            return format!("{name} = {}", crate::uwsgi_ini::HIDDEN);
        }
        let first = s.text.lines().next().unwrap_or_default();
        let first = &match sets_environment(first, &aliases) {
            true => crate::uwsgi_ini::hide_by_form(&hide_environment_values(first)),
            false => crate::uwsgi_ini::hide_by_form(first),
        };
        // Any other assignment to such a name (`raw_env += [...]`, `bind, raw_env = ...`,
        // an empty value): its value is hidden too, whatever form it takes.
        if assigned_names(first)
            .iter()
            .any(|n| n == "raw_env" || crate::uwsgi_ini::secret_name(n))
        {
            if let Some(eq) = first.find('=') {
                return format!("{}= {}", &first[..eq], crate::uwsgi_ini::HIDDEN);
            }
        }
        if s.text.contains('\n') {
            format!("{first} …")
        } else {
            first.to_owned()
        }
    };
    let mut out = format!(
        "# postern configuration from the gunicorn config file {}, written by `postern migrate`\n# (the file was read, not run). Use it with: postern --config postern.toml\n# nginx: gunicorn spoke HTTP to proxy_pass; postern speaks uwsgi: include uwsgi_params;\n# uwsgi_pass (docs/migration.md 'From gunicorn').\n",
        path.display()
    );
    let attention: Vec<_> = done
        .iter()
        .filter_map(|(s, d)| match d {
            Done::Attention(why) => Some((s, why)),
            _ => None,
        })
        .collect();
    if !attention.is_empty() {
        out.push_str("#\n# NEEDS ATTENTION:\n");
        for (s, why) in &attention {
            wrap(&mut out, &format!("# line {}: {}", s.line, head(s)), "", "");
            wrap(&mut out, "#  ", "#  ", why);
        }
    }
    if !not_here.is_empty() {
        out.push_str("#\n");
        wrap(
            &mut out,
            "# NEEDS ATTENTION:",
            "#",
            crate::uwsgi_ini::NOT_HERE,
        );
        for (s, why) in &not_here {
            wrap(&mut out, &format!("# line {}: {}", s.line, head(s)), "", "");
            wrap(&mut out, "#  ", "#  ", why);
        }
    }
    out.push('\n');
    let mut carried = 0;
    for (s, d) in &done {
        let Done::Carried(kv, note) = d else { continue };
        carried += 1;
        wrap(&mut out, &format!("# line {}: {}", s.line, head(s)), "", "");
        if let Some(n) = note {
            wrap(&mut out, "#  ", "#  ", n);
        }
        for (k, v) in kv {
            let _ = writeln!(out, "{k} = {v}");
        }
    }
    let not: Vec<_> = done
        .iter()
        .filter_map(|(s, d)| match d {
            Done::NotCarried(why) => Some((s, why)),
            _ => None,
        })
        .collect();
    if !not.is_empty() {
        out.push_str("\n# Not carried over:\n");
        for (s, why) in &not {
            wrap(&mut out, &format!("# line {}: {}", s.line, head(s)), "", "");
            wrap(&mut out, "#  ", "#  ", why);
        }
    }
    let settings = done.len();
    let mut summary = format!(
        "{settings} statements read from {} (not run): {carried} carried over, {} not carried over, {} need attention{}",
        path.display(),
        not.len(),
        attention.len(),
        if attention.is_empty() { "" } else { " (see NEEDS ATTENTION)" }
    );
    if !not_here.is_empty() {
        let _ = write!(
            summary,
            ", {} naming a user or group this host does not have (see NEEDS ATTENTION)",
            not_here.len()
        );
    }
    Ok(Migrated {
        toml: out,
        summary,
        code: if attention.is_empty() {
            0
        } else {
            EXIT_ATTENTION
        },
    })
}

/// `more`'s keys into `table`, a table's (`[env]`) key by key.
fn merge(table: &mut toml::Table, more: toml::Table) {
    for (k, v) in more {
        match (table.get_mut(&k), v) {
            (Some(toml::Value::Table(have)), toml::Value::Table(add)) => merge(have, add),
            (_, v) => {
                table.insert(k, v);
            }
        }
    }
}

/// A literal as the text a command-line value would be.
fn py_text(v: &Py) -> Option<String> {
    match v {
        Py::Str(s) => Some(s.clone()),
        Py::Int(n) => Some(n.to_string()),
        Py::Float(f) => Some(f.to_string()),
        _ => None,
    }
}

/// postern's command-line words as TOML keys: `--workers 4` is `workers = 4`, a
/// repeatable option an array, `--env K=V` the `env.K` key, the app `app`. Words that
/// are no config key (`--check`) are left out.
fn toml_entries(words: &[String], keys: &[String]) -> Vec<(String, toml::Value)> {
    const NUMBERS: &[&str] = &[
        "workers",
        "threads",
        "max-requests",
        "listen-backlog",
        "max-concurrency",
        "timeout",
        "graceful-timeout",
    ];
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = &words[i];
        i += 1;
        let Some(key) = w.strip_prefix("--") else {
            out.push(("app".to_owned(), toml::Value::String(w.clone())));
            continue;
        };
        let value = words.get(i).filter(|v| !v.starts_with("--")).cloned();
        if value.is_some() {
            i += 1;
        }
        if !keys.iter().any(|k| k == key) {
            continue;
        }
        let Some(value) = value else {
            out.push((key.to_owned(), toml::Value::Boolean(true)));
            continue;
        };
        let entry = match key {
            "uwsgi" | "pythonpath" => toml::Value::Array(vec![toml::Value::String(value)]),
            "env" => {
                let (name, v) = value.split_once('=').unwrap_or((&value, ""));
                // regression (review2 LOW): an empty name (`raw_env = ["=x"]`) was
                // written as `env. = "x"`, which is no TOML.
                let name = if !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    name.to_owned()
                } else {
                    toml::Value::String(name.to_owned()).to_string()
                };
                out.push((format!("env.{name}"), toml::Value::String(v.to_owned())));
                continue;
            }
            k if NUMBERS.contains(&k) => match (value.parse::<i64>(), value.parse::<f64>()) {
                (Ok(n), _) => toml::Value::Integer(n),
                (_, Ok(f)) => toml::Value::Float(f),
                _ => toml::Value::String(value),
            },
            _ => toml::Value::String(value),
        };
        out.push((key.to_owned(), entry));
    }
    out
}

/// Appends `text` as comment lines of at most about 90 columns, `first` before the first.
fn wrap(out: &mut String, first: &str, rest: &str, text: &str) {
    const WIDTH: usize = 90;
    let mut line = first.to_owned();
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        if line.len() + 1 + word.len() > WIDTH && line.len() > rest.len() {
            out.push_str(&line);
            out.push('\n');
            line = rest.to_owned();
        }
        line.push(' ');
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_read_as_python_reads_them_and_expressions_are_not() {
        assert_eq!(literal("'a' \"b\""), Some(Py::Str("ab".into())));
        assert_eq!(literal(r#"r"\d""#), Some(Py::Str(r"\d".into())));
        assert_eq!(literal("0o007"), Some(Py::Int(7)));
        assert_eq!(literal("1_000"), Some(Py::Int(1000)));
        assert_eq!(literal("-2.5"), Some(Py::Float(-2.5)));
        assert_eq!(literal("+4"), Some(Py::Int(4)));
        assert_eq!(literal("+0x10"), Some(Py::Int(16)));
        assert_eq!(literal("True"), Some(Py::Bool(true)));
        assert_eq!(
            literal("[\"a\",\n  'b',]"),
            Some(Py::List(vec![Py::Str("a".into()), Py::Str("b".into())]))
        );
        assert_eq!(literal("('x',)"), Some(Py::List(vec![Py::Str("x".into())])));
        // regression: a file of nested brackets recursed without bound.
        assert_eq!(literal(&"[".repeat(100_000)), None);
        for expr in [
            "multiprocessing.cpu_count() * 2 + 1",
            "os.environ['BIND']",
            "f'{x}'",
            "2 * 4",
            "{'a': 1}",
            "++4",
            "+-4",
            "-+4",
            "--4",
            "++0x10",
        ] {
            assert_eq!(literal(expr), None, "{expr}");
        }
    }

    #[test]
    fn statements_span_brackets_and_skip_indented_bodies() {
        let st = statements(
            "import os\nbind = [  # where\n  'a:1',\n  'b:2',\n]\ndef post_fork(s, w):\n    x = 1\nworkers = 2 # two\ntimeout == 3\n",
        );
        let names: Vec<_> = st.iter().map(|s| (s.line, s.name.clone())).collect();
        assert_eq!(
            names,
            vec![
                (1, None),
                (2, Some("bind".into())),
                (6, None),
                (8, Some("workers".into())),
                (9, None),
            ]
        );
        assert_eq!(st[3].value, "2");
        assert!(literal(&st[1].value).is_some(), "{}", st[1].value);
    }

    // regression (review2 MEDIUM 4 and LOW 10): `\x61` was `x61`, `\d` was `d`, a
    // backslash-newline left a newline, `_4` was 4, `0x-1e` was -30, and
    // `-0x-8000000000000000` negated i64::MIN.
    #[test]
    fn strings_and_numbers_are_read_exactly_or_not_at_all() {
        assert_eq!(
            literal(r#""/run/\x61pp.pid""#),
            Some(Py::Str("/run/app.pid".into()))
        );
        assert_eq!(
            literal(r#""\u00e9\101\r\0""#),
            Some(Py::Str("\u{e9}A\r\0".into()))
        );
        assert_eq!(literal(r#""\d""#), Some(Py::Str("\\d".into())));
        assert_eq!(literal(r#""\N{BULLET}""#), None);
        assert_eq!(literal(r#""\x6""#), None);
        for not in ["_4", "4_", "1__0", "0x-1e", "-0x-8000000000000000", "+-3"] {
            assert_eq!(literal(not), None, "{not}");
        }
        assert_eq!(literal("-0x10"), Some(Py::Int(-16)));
        assert_eq!(literal("0x_1f"), Some(Py::Int(31)));
        let st = statements("bind = \"unix:/run/\\\napp.sock\"\nworkers = 2\n");
        assert_eq!(st.len(), 2);
        assert_eq!(
            literal(&st[0].value),
            Some(Py::Str("unix:/run/app.sock".into()))
        );
        let st = statements("x = '''a \\\nb\n  c'''\n");
        assert_eq!(literal(&st[0].value), Some(Py::Str("a b\n  c".into())));
    }

    // regression (review2 MEDIUM 3): a BOM, `;`, an annotation and an `if` block's
    // body hid settings from migrate.
    #[test]
    fn statements_split_at_semicolons_and_keep_annotations_and_bodies() {
        let st = statements(
            "\u{feff}bind = 'a:1'\nx = 1; threads = 4\nworkers: int = 4\nif P:\n    timeout = 3\nelse: user = 'u'\n",
        );
        let names: Vec<_> = st.iter().map(|s| s.name.clone()).collect();
        let some = |n: &str| Some(n.to_owned());
        assert_eq!(
            names,
            vec![
                some("bind"),
                some("x"),
                some("threads"),
                some("workers"),
                None,
                None
            ]
        );
        assert_eq!(st[3].value, "4");
        assert_eq!(st[4].body, vec!["    timeout = 3".to_owned()]);
        assert!(compound(&st[4].text) && compound(&st[5].text));
        assert_eq!(assigned_names("else: user = 'u'"), vec!["else", "user"]);
        assert_eq!(assigned_names("a, b += f(x=1)"), vec!["a", "b"]);
        assert!(assigned_names("f(level=loglevel)").is_empty());
        assert!(assigned_names("x == 'a=b'").is_empty());
    }

    // regression: environment values set by a call (`os.putenv`, `setdefault`,
    // `update`, `|=`) were quoted whole under NEEDS ATTENTION, secrets included, and
    // `E["X"] = v` after `from os import environ as E` was dropped without a line.
    #[test]
    fn environment_values_set_by_a_call_or_an_alias_are_hidden() {
        let text = "import os\nimport os as o\nfrom os import (environ as E, putenv as P)\nworkers = 2\nos.environ[\"SECRET_KEY\"] = \"leak-0\"\nos.putenv(\"SECRET_KEY\", \"leak-1\")\nos.environ.setdefault(\"DB_PASSWORD\", 'leak-2')\nos.environ.update({\"API_TOKEN\": \"leak-3\", \"TZ\": f\"leak-{4}\"})\nos.environ |= {\"API_TOKEN\": \"\"\"leak-5\"\"\"}\nE[\"API_TOKEN\"] = \"leak-6\"\nP(\"X\", \"leak-7\")\no.environ.update(API_TOKEN=\"leak-8\")\nraw_env.append(\"DB_PASSWORD=leak-9\")\nV = os.environ\nV[\"X\"] = \"leak-10\"\nos.environ.update([(\"X\", \"leak-11\")])\nraw_env.extend([\"APP_CONF=leak-12\", \"DB_PASSWORD=leak-13\"])\nraw_env.extend((\"APP_CONF=leak-14\", \"DB_PASSWORD=leak-15\"))\nraw_env.extend([\"leak-16\", \"leak-17\"])\n";
        let m = translate(Path::new("gunicorn.conf.py"), text).unwrap();
        assert!(!m.toml.contains("leak-"), "{}", m.toml);
        for quoted in [
            "# line 5: os.environ[\"SECRET_KEY\"] = (value hidden)",
            "# line 6: os.putenv(\"SECRET_KEY\", (value hidden))",
            "# line 7: os.environ.setdefault(\"DB_PASSWORD\", (value hidden))",
            "# line 8: os.environ.update({\"API_TOKEN\": (value hidden), \"TZ\": f(value hidden)})",
            "# line 9: os.environ |= {\"API_TOKEN\": (value hidden)}",
            "# line 10: E[\"API_TOKEN\"] = (value hidden)",
            "# line 11: P(\"X\", (value hidden))",
            "# line 12: o.environ.update(API_TOKEN=(value hidden))",
            "# line 13: raw_env.append(\"DB_PASSWORD=(value hidden)\")",
            "# line 15: V[\"X\"] = (value hidden)",
            "# line 16: os.environ.update([(\"X\", (value hidden))])",
            "# line 17: raw_env.extend([\"APP_CONF=(value hidden)\", \"DB_PASSWORD=(value hidden)\"])",
            "# line 18: raw_env.extend((\"APP_CONF=(value hidden)\", \"DB_PASSWORD=(value hidden)\"))",
            "# line 19: raw_env.extend([(value hidden), (value hidden)])",
        ] {
            assert!(m.toml.contains(quoted), "{quoted} not in:\n{}", m.toml);
        }
        assert_eq!(m.code, 3);
    }

    // regression: `bind = ["unix:…", "fd://3"]` was all "not needed" (about fd 3): the
    // unix address was dropped, no listener written, exit 0.
    #[test]
    fn a_bind_list_carries_its_addresses_beside_an_fd() {
        let m = translate(
            Path::new("gunicorn.conf.py"),
            "bind = [\"unix:/run/app.sock\", \"fd://3\"]\nworkers = 2\n",
        )
        .unwrap();
        assert!(
            m.toml.contains("uwsgi = [\"unix:/run/app.sock\"]"),
            "{}",
            m.toml
        );
        assert!(
            m.toml.contains("\"fd://3\" not") && m.toml.contains("carried over: not needed"),
            "{}",
            m.toml
        );
        let m = translate(
            Path::new("gunicorn.conf.py"),
            "bind = \"fd://3\"\nworkers = 2\n",
        )
        .unwrap();
        assert!(!m.toml.contains("uwsgi ="), "{}", m.toml);
    }

    #[test]
    fn a_umask_is_read_as_gunicorn_reads_it_and_written_in_octal() {
        for (v, m) in [
            ("0o027", 0o27),
            ("0027", 0o27),
            ("23", 0o27),
            ("0", 0),
            ("0x1ff", 0o777),
        ] {
            assert_eq!(umask(v), Some(m), "{v}");
        }
        for v in ["0o1000", "-7", "abc", "", "0o"] {
            assert_eq!(umask(v), None, "{v}");
        }
        // Its Unix sockets' bits only (review 408 M1: as a process umask, `umask = 0`
        // made the logs and the app's files world-writable).
        for text in ["umask = 0o027\n", "umask = 23\n"] {
            let m = translate(
                Path::new("gunicorn.conf.py"),
                &format!("{text}workers = 2\n"),
            )
            .unwrap();
            assert!(m.toml.contains("socket-mode = \"750\""), "{}", m.toml);
            assert!(!m.toml.contains("\numask ="), "{}", m.toml);
        }
    }

    #[test]
    fn a_gunicorn_config_is_told_from_an_app_module() {
        assert!(is_config("bind = '127.0.0.1:8000'\nworkers = 3\n"));
        assert!(!is_config(
            "bind = 1\ndef application(environ, start_response):\n    pass\n"
        ));
        assert!(!is_config("workers = 3\ntimeout = 30\n"));
        // regression (review2 HIGH): an imported or annotated app is an app.
        for app_file in [
            "import logging\nloglevel = logging.INFO\nfrom main import app\n",
            "from main import app as application\nbind = None\n",
            "from flask import Flask\nbind = 1\napp: Flask = Flask(__name__)\n",
            "from main import *\nbind = 'a:1'\n",
        ] {
            assert!(!is_config(app_file), "{app_file}");
        }
        // The name inside a string or a comment is no app.
        assert!(is_config("bind = 'a:1'\nwsgi_app = 'x:app'  # the app\n"));
        // Refused before start only on a strong sign.
        let weak = "loglevel = 'info'\nuser = 'me'\n";
        assert!(is_config(weak));
        assert!(!surely_config(Path::new("settings.py"), weak));
        assert!(surely_config(Path::new("gunicorn_prod.py"), weak));
        assert!(surely_config(Path::new("x.py"), "bind = 'a:1'\n"));
    }
}
