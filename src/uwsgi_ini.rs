//! uWSGI ini files as a configuration source (`postern --ini FILE[:section]`) and as
//! something to convert once (`postern migrate FILE[:section]`).
//!
//! [`expand`] reads the section with uWSGI's own rules (magic variables, `$(ENV)`,
//! `@(FILE)`, `%(placeholder)`); this module maps each option line onto postern's
//! options (the `--config` TOML keys) and says what became of every line: carried,
//! accepted (postern does that anyway), ignored (postern runs without it), refused
//! (running without it would not be what the file asks), a placeholder, or unknown.
//!
//! uWSGI without `lazy-apps` imports the app in its master before forking. The mapping
//! keeps postern's own default instead (each worker imports it) and says so in a note:
//! with postern's `preload`, a reload would keep running the code the master loaded at
//! start (uWSGI re-executes itself on reload), and lazy loading is what is safe for apps
//! that open connections or start threads at import time.
//!
//! No tokio, pyo3 or tracing: callers log the report.

pub mod command_line;
mod expand;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub use command_line::{
    config_key_hint, explain, is_uwsgi_mount, last_wins, postern_words, uwsgi_options, Arity, Typed,
};
pub use expand::{hide_by_form, secret_name, Context, Entry, FileFacts, Hider, HIDDEN};

/// `postern migrate`'s exit status when a line of the file is REFUSED (`postern --ini`
/// would stop on it); the TOML is still printed. 2 is a file that cannot be read.
pub const EXIT_REFUSED: u8 = 3;

/// Why an ini file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum IniError {
    #[error("cannot read the uWSGI ini file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: there is no [{section}] section{}", path.display(), found_list(found))]
    NoSection {
        path: PathBuf,
        section: String,
        found: Vec<String>,
    },
    #[error("line {line}: cannot read @({}): {source}", path.display())]
    AtFile {
        line: usize,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: postern reads uWSGI ini files, not {kind} ones: write its options as an ini file's [uwsgi] section (the option names are the same; `key = value` lines), then use that", path.display())]
    NotIni { path: PathBuf, kind: &'static str },
    #[error("line {line}: the placeholders in {key} refer to each other without end")]
    Loop { line: usize, key: String },
    #[error("line {line}: {key}'s value is over {} KiB once its %(…), $(…) and @(…) are expanded: postern's bound on one value, far above any real option's (placeholders that each repeat the one before double at every line)", expand::VALUE_MAX / 1024)]
    ValueTooLarge { line: usize, key: String },
    #[error("line {line}: with {key} expanded, the section's values are over {} MiB in all: postern's bound on a whole file, far above any real one's (placeholders that each repeat the one before double at every line)", expand::SECTION_MAX / (1024 * 1024))]
    SectionTooLarge { line: usize, key: String },
    /// Lines postern cannot run without (and unknown ones under `strict`), all in one
    /// message.
    #[error("{0}")]
    Refused(String),
}

fn found_list(found: &[String]) -> String {
    if found.is_empty() {
        " (it has no sections at all; uWSGI reads [uwsgi] unless you give FILE:section)".into()
    } else {
        let names: Vec<String> = found.iter().map(|s| format!("[{s}]")).collect();
        format!(" (it has {}: pick one with FILE:section)", names.join(", "))
    }
}

/// What became of one option line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Mapped onto these postern keys (`env.NAME` for an `[env]` entry). `warn`: the
    /// note describes a difference worth a warning.
    Carried {
        keys: Vec<String>,
        note: Option<String>,
        warn: bool,
    },
    /// Nothing to carry: postern does this by itself, or it is uWSGI's default.
    Accepted(String),
    /// Dropped; postern runs without it. The reason says what to do instead.
    Ignored(String),
    /// postern cannot run this as the file asks: `postern --ini` stops on it.
    Refused(String),
    /// A process or a scheduled job uWSGI ran beside the app (`attach-daemon`, `cron`):
    /// postern does not, so it stops running at the switch unless it gets a service
    /// of its own; the reason says how. Listed under NEEDS ATTENTION by `migrate`.
    Beside(String),
    /// A value other lines refer to with `%(name)`.
    Placeholder,
    /// Not a uWSGI option postern knows.
    Unknown,
    /// `postern migrate` only: the value is what uWSGI reads at each start (`$(VAR)`,
    /// `@(FILE)`, the host's name or CPU count…), so no constant is written for it;
    /// the reason says how to get the same at start.
    AtStart(String),
}

/// An option line and what became of it.
#[derive(Debug, Clone)]
pub struct Line {
    pub entry: Entry,
    pub outcome: Outcome,
}

/// A section read and mapped.
#[derive(Debug, Clone)]
pub struct Translation {
    /// The file as given (`FILE` or `FILE:section`).
    pub source: String,
    pub section: String,
    /// postern's options, with the `--config` file's keys and types.
    pub table: toml::Table,
    /// Every option line, in file order.
    pub lines: Vec<Line>,
    /// Remarks about the file as a whole or its expansion, with their line (0: none).
    pub notes: Vec<(usize, String)>,
    /// What runs differently though the file carried over (postern imports the app in
    /// each worker): said by `migrate` and at start, not as a warning.
    pub info: Vec<String>,
    /// `strict = true`: unknown lines stop `postern --ini`, as in uWSGI.
    pub strict: bool,
    /// Lines (their index in `lines`) whose user or group this host does not have, with
    /// the lookup's message: carried over all the same, listed under NEEDS ATTENTION.
    pub not_here: Vec<(usize, String)>,
}

/// What `postern migrate` says above the lines whose user or group this host does not
/// have (a uWSGI or gunicorn file alike).
pub const NOT_HERE: &str = "these name a user or group this host does not have. They are written as they are, since the file may be converted on another machine than the one postern will run on: check them there (postern --check there stops on one that host does not have).";

/// Splits `FILE[:section]`. A path that exists as given is never split.
pub fn split_source(spec: &str) -> (PathBuf, Option<String>) {
    if !Path::new(spec).exists() {
        if let Some((file, section)) = spec.rsplit_once(':') {
            if !file.is_empty() && !section.contains('/') {
                let section = (!section.is_empty()).then(|| section.to_owned());
                return (PathBuf::from(file), section);
            }
        }
    }
    (PathBuf::from(spec), None)
}

/// Reads and maps `FILE[:section]` as this process sees it.
pub fn load(spec: &str) -> Result<Translation, IniError> {
    load_with(spec, &Context::from_process())
}

/// A uWSGI configuration file of another format than ini (by its name), refused.
// regression: `postern migrate uwsgi.yaml` read YAML as ini: "no [uwsgi] section".
fn refuse_other_formats(path: &Path) -> Result<(), IniError> {
    let ext = path.extension().map(|e| e.to_ascii_lowercase());
    if let Some(kind) = ext.as_ref().and_then(|e| match e.to_str()? {
        "yaml" | "yml" => Some("YAML"),
        "xml" => Some("XML"),
        "json" | "js" => Some("JSON"),
        _ => None,
    }) {
        return Err(IniError::NotIni {
            path: path.to_owned(),
            kind,
        });
    }
    Ok(())
}

/// Reads and maps several `FILE[:section]` given in turn (`--ini a.ini --ini b.ini`),
/// as uWSGI reads them: each file's options after the one before, so a later file's
/// single value wins and list options (sockets, `env`, mounts) add up. They are read
/// as one file that includes each in place (see `ini =` in [`expand`]); its lines are
/// named `FILE:LINE`. One file is [`load_with`].
pub fn load_many_with(specs: &[String], ctx: &Context) -> Result<Translation, IniError> {
    if let [one] = specs {
        return load_with(one, ctx);
    }
    let mut text = String::from("[uwsgi]\n");
    for spec in specs {
        let (path, section) = split_source(spec);
        refuse_other_formats(&path)?;
        if let Err(source) = std::fs::File::open(ctx.cwd.join(&path)) {
            return Err(IniError::Read { path, source });
        }
        // As given: the include line takes a relative path from `ctx.cwd` (a start
        // directory with a `%` in its name is no concern of the line).
        let shown = path.to_string_lossy();
        // The include line expands these as the ini would (and cannot take the others).
        if shown.contains('%') || shown.contains("$(") || shown.contains("@(") {
            return Err(IniError::Refused(format!(
                "--ini {spec}: a path with `%`, `$(` or `@(` can be given only alone (as its only --ini), or with `ini = ` from another file"
            )));
        }
        let section = section.map(|s| format!(":{s}")).unwrap_or_default();
        text.push_str(&format!("ini = {shown}{section}\n"));
    }
    let facts = FileFacts::of(&specs.join(" "), &ctx.cwd, None, &ctx.cwd);
    translate(&text, &facts, ctx)
}

/// Reads and maps `FILE[:section]` with `ctx` for the environment and magic variables.
/// A relative path is from `ctx.cwd` (the start directory, at a reload too), and the
/// file keeps the name it was given (its lines' labels, `%o`).
pub fn load_with(spec: &str, ctx: &Context) -> Result<Translation, IniError> {
    let (path, section) = split_source(spec);
    refuse_other_formats(&path)?;
    let full = ctx.cwd.join(&path);
    let bytes = std::fs::read(&full).map_err(|source| IniError::Read {
        path: path.clone(),
        source,
    })?;
    // uWSGI reads bytes: a Latin-1 comment must not make the file unreadable. An option
    // line that is not UTF-8 is refused by the mapping (postern's options are UTF-8).
    let text = String::from_utf8_lossy(&bytes);
    // An editor's byte-order mark would hide the first [section] header.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let facts = FileFacts::of(spec, &full, section.as_deref(), &ctx.cwd);
    translate(text, &facts, ctx)
}

/// Maps the ini `text` (its file described by `facts`).
pub fn translate(text: &str, facts: &FileFacts, ctx: &Context) -> Result<Translation, IniError> {
    let section = facts.section.clone().unwrap_or_else(|| "uwsgi".to_owned());
    let mut read = expand::read_section(text, facts, &section, ctx)?;
    if ctx.migrating {
        inherit_reads(&mut read.entries);
    }
    let mut m = Mapper::new(&read.entries, &read.placeholders_used, &section);
    // The `if-*`/`for*` blocks open at this line (uWSGI's configuration logic): what
    // is inside one is set only when its condition holds, or once per loop value, so
    // it is never carried over as if it were set unconditionally.
    let mut blocks: Vec<&Entry> = Vec::new();
    for (i, e) in read.entries.iter().enumerate() {
        let key = e.key.as_str();
        let opens = is_logic_opener(key);
        let closes = matches!(key, "endif" | "end-if" | "endfor" | "end-for");
        if let (Some(block), false) = (blocks.last(), closes) {
            let what = if block.key.starts_with("if-") {
                "applies it only when that condition holds"
            } else {
                "applies it once for each value of that loop"
            };
            let outcome = Outcome::Refused(format!(
                "inside `{}` (line {}): uWSGI {what}; not carried over: write what it should be on this host by hand",
                block.shown(),
                block.line
            ));
            if opens {
                blocks.push(e);
            }
            m.lines.push(Line {
                entry: e.clone(),
                outcome,
            });
            continue;
        }
        if opens {
            blocks.push(e);
        } else if closes {
            blocks.pop();
        }
        let outcome = if e.reads.is_empty() {
            m.map(i, e)
        } else {
            let before = m.table.clone();
            let outcome = m.map(i, e);
            m.at_start(i, e, outcome, before)
        };
        m.lines.push(Line {
            entry: e.clone(),
            outcome,
        });
    }
    m.finish();
    if !ctx.migrating {
        m.info.append(&mut m.app_output);
    }
    let mut notes = read.notes;
    notes.extend(m.notes);
    Ok(Translation {
        source: facts.given.clone(),
        section: section.clone(),
        table: m.table,
        lines: m.lines,
        notes,
        info: m.info,
        strict: m.strict,
        not_here: Vec::new(),
    })
}

/// `postern migrate`: the ini as a commented `postern.toml`.
pub fn migrate(spec: &str) -> Result<String, IniError> {
    Ok(load_to_migrate(spec, &[])?.to_toml())
}

/// Reads and maps `FILE[:section]` for `postern migrate`. The shell that runs migrate is
/// not the service uWSGI ran in: its environment is not read (`vars`, `NAME=VALUE`, are
/// the `$(NAME)` values to take as constants), `@(FILE)` is not read, and a line whose
/// value uWSGI makes at each start from those, or from the host (`%h`, `%k`, …), is not
/// written as a constant: it becomes [`Outcome::AtStart`], saying what to do instead.
/// A secret is thus never written into the TOML (nor read), and an unset variable never
/// becomes a literal `$(NAME)` value.
pub fn load_to_migrate(spec: &str, vars: &[String]) -> Result<Translation, IniError> {
    let mut env = std::collections::HashMap::new();
    for v in vars {
        let Some((name, value)) = v.split_once('=').filter(|(n, _)| !n.is_empty()) else {
            return Err(IniError::Refused(format!(
                "--var {v}: give NAME=VALUE, the value $(NAME) has where postern will run"
            )));
        };
        env.insert(name.to_owned(), value.to_owned());
    }
    // (`config::migrate_uwsgi` then refuses the values start-up would refuse: this
    // layer sits below the config layer and cannot ask it.)
    load_with(spec, &Context::for_migrate(env))
}

/// The order keys are written in, and every key a translation can produce.
const KEY_ORDER: &[&str] = &[
    "app",
    "uwsgi",
    "fastcgi",
    "scgi",
    "mount",
    "chdir",
    "pythonpath",
    "venv",
    "workers",
    "threads",
    "master",
    "chain-reload",
    "touch-reload",
    "pidfile",
    "uid",
    "gid",
    "max-requests",
    "max-rss",
    "max-lifetime",
    "timeout",
    "graceful-timeout",
    "read-timeout",
    "socket-mode",
    "socket-owner",
    "umask",
    "listen-backlog",
    "buffer-size",
    "body-spool-threshold",
    "max-body",
    "stats",
    "log-file",
    "access-log",
    "env",
];

// Reasons shared by several options.
const STATIC: &str = "postern leaves static files to the front server: serve them from nginx (location /static/ { alias /path/to/static/; })";
const ROUTING: &str = "uWSGI's internal routing has no postern equivalent: write the rule in nginx (location, return, rewrite, add_header)";
/// The nginx directives that do what uWSGI's guarding routes did.
const ROUTE_NGINX: &str =
    "auth_basic and auth_basic_user_file, allow/deny, return 403, add_header ... always";

/// What a `route*` line's action guards (`route = REGEX ACTION`, `route-if = COND
/// ACTION`): access (an authentication, a refusal) or a security header; `None` for
/// the rest (rewrites, logging, redirects), which are dropped with a warning. A rule
/// that guards is refused: dropped, the paths it protected would be served openly.
// regression (probe 313): `route = ^/admin basicauth:...` and `route = ^/internal/
// break:403` were dropped with a warning, and /admin and /internal served to anyone.
fn guarding_route(key: &str, v: &str) -> Option<&'static str> {
    // `route-run = ACTION` (and `final-route-run`, …) has no subject: the whole value is
    // the action.
    // regression (review 316): `route-run = break:403` (after `route-remote-addr = ^10\.
    // goto:ok`, an allow-list) was dropped with a warning, every path served.
    let action = if key.ends_with("route-run") {
        v.trim()
    } else {
        v.trim().split_once(char::is_whitespace)?.1.trim_start()
    };
    let (name, arg) = action.split_once(':').unwrap_or((action, ""));
    let name = name.trim().to_ascii_lowercase();
    let status = arg.trim_start().get(..1).and_then(|c| c.parse::<u8>().ok());
    match name.as_str() {
        n if n.starts_with("basicauth") || n.starts_with("ldapauth") => Some("asks for a password"),
        // `break` with no status ends the request unanswered.
        "break" if arg.trim().is_empty() || matches!(status, Some(4 | 5)) => {
            Some("refuses requests")
        }
        "return" | "break-with-status" if matches!(status, Some(4 | 5)) => Some("refuses requests"),
        "addheader" | "add-header" | "setheader" | "set-header" => {
            let header = arg.split(':').next().unwrap_or_default().trim();
            let header = header.to_ascii_lowercase();
            [
                "strict-transport-security",
                "content-security-policy",
                "x-frame-options",
                "x-content-type-options",
                "referrer-policy",
                "permissions-policy",
                "cross-origin-opener-policy",
                "cross-origin-embedder-policy",
                "cross-origin-resource-policy",
            ]
            .contains(&header.as_str())
            .then_some("adds a security header")
        }
        _ => None,
    }
}

const CHEAPER: &str = "postern runs a fixed number of workers (workers = N); SIGTTIN and SIGTTOU to the master add or remove one";
const PLUGINS: &str = "postern embeds CPython itself: there are no plugins to load";
const PROCNAME: &str = "postern does not rename its processes";
const HTTP_OPTION: &str =
    "an option of uWSGI's HTTP router or HTTP socket: nginx in front of postern does this";
const EMPEROR: &str = "postern runs one app, not an Emperor: run one postern per app, e.g. a systemd template unit (postern@.service) with one config per instance";
const INCLUDE: &str = "postern reads an included file in place when it is an ini file named by a literal path (%d and the other magic variables are fine; $(VAR), %(placeholder) and @(file) are not, nor YAML, JSON or XML): write the path out, or copy the included file's options into this section";
const HOOK: &str = "uWSGI's hooks have no postern equivalent: run the action from the service manager (systemd ExecStartPre=, ExecStopPost=) or from your deploy";
const UWSGI_MODULE: &str = "uWSGI's in-process jobs and shared state (spooler, mules, cache, locks, sharedarea, queue, signals, timers) and the `uwsgi` Python module the app reaches them with (uwsgidecorators' @spool, @timer, @cron, @mulefunc; uwsgi.cache_get, uwsgi.lock) do not exist under postern: an app that guards `import uwsgi` would start and silently never run its jobs. Move the jobs to a task queue (Celery, RQ, Dramatiq) or a systemd timer and the cache to Redis or memcached, then drop this line";
/// uWSGI opened a `logto` or `daemonize` file onto its stdout and stderr, so the app's
/// own output landed there; postern's `log-file` holds only postern's lines.
const APP_OUTPUT: &str = "uWSGI put the app's own output (print(), sys.stdout and sys.stderr, a logging console handler) in this file too; under postern it goes to postern's stdout and stderr (the journal under systemd), and this file gets postern's log and the request lines: log through logging to a file, or read the app's output from the journal";
/// A line that opens a block of uWSGI's configuration logic: `if-env`, `if-exists`, …
/// (and the spellings without the dash uWSGI also takes: `ifenv`, `ifexists`, `ifdir`,
/// `ifplugin`), `for`, `for-glob`, `for-times`, `for-readline`.
fn is_logic_opener(key: &str) -> bool {
    key.starts_with("if-")
        || matches!(key, "ifenv" | "ifexists" | "ifdir" | "ifplugin")
        || key == "for"
        || key.starts_with("for-")
}

const LOGIC: &str = "uWSGI's configuration logic (if-*, for-*) is not supported: write the values it produces out by hand";

/// Builds the table line by line.
struct Mapper<'a> {
    entries: &'a [Entry],
    /// The section read, for messages.
    section: &'a str,
    placeholders: &'a BTreeSet<String>,
    table: toml::Table,
    lines: Vec<Line>,
    notes: Vec<(usize, String)>,
    info: Vec<String>,
    /// What the start says of the `logto` files (migrate says it on their lines).
    app_output: Vec<String>,
    /// Which line set each single-valued key, so a later line can take it over.
    setter: BTreeMap<String, usize>,
    strict: bool,
    /// `protocol =` (the last one, and its index), for `socket =` lines.
    protocol: Option<(usize, String)>,
    callable: Option<(usize, String)>,
    /// The line that defines the app, and whether the app came with its callable.
    app: Option<(usize, bool)>,
    /// The first `socket =`-like address, to name in the HTTP refusals.
    first_socket: Option<String>,
    lazy: bool,
    /// The last `chdir =`: uWSGI changes directory before it binds the sockets, starts
    /// Python and watches touch-reload, so those relative paths are relative to it.
    chdir: Option<String>,
    /// `disable-logging = true` somewhere in the file.
    disable_logging: bool,
    /// A `req-logger =` line: request lines go there, not to logto's file.
    req_logger: bool,
    /// The lines are options typed on postern's command line, not an ini file's.
    command_line: bool,
}

/// `true`/`false` as uWSGI reads them: `false`, `off`, `no`, `0` (any case) are false;
/// anything else (an empty value too: `master` alone) is true. The note says when a
/// value was neither.
fn boolean(v: &str) -> (bool, Option<String>) {
    let l = v.to_ascii_lowercase();
    match l.as_str() {
        "false" | "off" | "no" | "0" => (false, None),
        "" | "true" | "on" | "yes" | "1" => (true, None),
        _ => (
            true,
            Some(format!(
                "{v:?} is not a boolean; uWSGI reads it as true, and so does postern"
            )),
        ),
    }
}

/// `v` less an inline comment after a number: uWSGI reads numbers with `strtol`, so
/// `60 ; kill after a minute` is 60 there. Ini files have no inline comments, but files
/// copied from blog posts have them. Only a space then `;` or `#` counts: other trailing
/// text (`32k`, `1.5`) stays and is refused, where uWSGI would silently drop it.
fn numeric(v: &str) -> &str {
    match v.split_once([' ', '\t']) {
        Some((n, rest)) if rest.trim_start().starts_with([';', '#']) => n,
        _ => v,
    }
}

fn number(v: &str) -> Result<u64, String> {
    numeric(v)
        .parse::<u64>()
        .map_err(|_| format!("{v:?} is not a whole number"))
}

/// Whether `v` has what looks like an inline comment, which uWSGI keeps in the value.
fn inline_comment(v: &str) -> bool {
    [" ;", "\t;", " #", "\t#"].iter().any(|c| v.contains(c))
}

/// `module = pkg.app:create_app()`: uWSGI calls the factory (gunicorn's syntax); postern
/// imports a callable and calls nothing, so the user writes the call in a module.
fn factory(call: &str) -> Outcome {
    let (module, func) = call.split_once(':').unwrap_or((call, "application"));
    Outcome::Refused(format!(
        "uWSGI calls {func}() from {module} to build the app; postern imports a WSGI callable and calls no factory: write a module (e.g. wsgi.py) with `from {module} import {func}` and `application = {func}()`, and name it instead (module = wsgi:application)"
    ))
}

/// What to do about an `attach-daemon`-like line `key = v`: its command gets a service
/// of its own (a Celery worker would otherwise silently stop at the switch).
/// uWSGI's `cron = MIN HOUR DAY MONTH WEEKDAY COMMAND` as a crontab line: uWSGI's `-1`
/// (every) is cron's `*`, and `-N` (every N) cron's `*/N`. Anything else is left as is.
fn crontab_line(v: &str) -> String {
    let mut words = v.split_whitespace();
    let fields: Vec<&str> = words.by_ref().take(5).collect();
    let command = words.collect::<Vec<_>>().join(" ");
    if fields.len() < 5 || fields.iter().any(|f| f.parse::<i64>().is_err()) {
        return v.to_owned();
    }
    let fields: Vec<String> = fields
        .iter()
        .map(|f| match f.strip_prefix('-') {
            Some("1") => "*".to_owned(),
            Some(n) => format!("*/{n}"),
            None => (*f).to_owned(),
        })
        .collect();
    format!("{} {command}", fields.join(" "))
}

fn daemon(key: &str, v: &str) -> String {
    // smart-attach-daemon = PIDFILE COMMAND; attach-daemon2 = cmd=...,key=value.
    let command = if key.starts_with("smart-attach-daemon") {
        v.split_once(char::is_whitespace)
            .map_or(v, |(_, c)| c.trim())
    } else if key.ends_with("daemon2") {
        v.split(',')
            .find_map(|kv| kv.strip_prefix("cmd="))
            .unwrap_or(v)
    } else {
        v
    };
    format!(
        "postern starts no side processes, so this one stops running at the switch: give it a systemd unit of its own (ExecStart={command}, with the same User=, WorkingDirectory= and Environment= as postern's; Restart=always)"
    )
}

/// A file name as postern's APP reads a file: a bare `app.wsgi` would read as a module.
fn file_path(v: &str) -> String {
    if v.contains('/') {
        v.to_owned()
    } else {
        format!("./{v}")
    }
}

/// A uWSGI socket address as postern's listener address.
fn listen_addr(v: &str) -> Result<(String, Option<String>), String> {
    if v.is_empty() {
        return Err("no address given".into());
    }
    if v.starts_with('@') {
        return Err("an abstract Unix socket: postern listens on filesystem sockets; use a path such as /run/app/app.sock".into());
    }
    if v.starts_with('=') {
        return Err("=N refers to a shared-socket: bind the address itself (or use systemd socket activation, deploy/systemd/)".into());
    }
    if !v.contains(':') {
        return Ok((format!("unix:{v}"), None));
    }
    if let Some(port) = v.strip_prefix(':') {
        return Ok((
            format!("0.0.0.0:{port}"),
            Some(format!("uWSGI's \"{v}\" listens on every interface, and so does this; write 127.0.0.1{v} if only a local nginx connects")),
        ));
    }
    Ok((v.to_owned(), None))
}

/// The usual uWSGI options (from its documentation's quick starts and option list) that
/// a misspelt key is compared with; one is suggested only if postern maps it.
const USUAL_OPTIONS: &[&str] = &[
    "socket",
    "uwsgi-socket",
    "http-socket",
    "fastcgi-socket",
    "scgi-socket",
    "protocol",
    "chmod-socket",
    "chown-socket",
    "module",
    "wsgi-file",
    "wsgi",
    "callable",
    "mount",
    "manage-script-name",
    "chdir",
    "home",
    "virtualenv",
    "venv",
    "pythonpath",
    "env",
    "master",
    "processes",
    "workers",
    "threads",
    "enable-threads",
    "lazy-apps",
    "harakiri",
    "max-requests",
    "max-worker-lifetime",
    "reload-on-rss",
    "limit-post",
    "buffer-size",
    "post-buffering",
    "listen",
    "uid",
    "gid",
    "pidfile",
    "logto",
    "log-format",
    "disable-logging",
    "log-4xx",
    "log-5xx",
    "daemonize",
    "touch-reload",
    "vacuum",
    "die-on-term",
    "need-app",
    "strict",
    "single-interpreter",
    "thunder-lock",
    "stats",
    "plugins",
    "plugin",
    "static-map",
    "offload-threads",
    "py-autoreload",
    "umask",
    "worker-reload-mercy",
    "reload-mercy",
    "hook-master-start",
    "memory-report",
];

/// ` (did you mean `processes`?)` for an unknown `key` of 5 or 6 characters one letter
/// away from a usual option postern maps, or a longer one two letters away; else
/// nothing.
fn unknown_hint(entry: &Entry, outcome: &Outcome) -> String {
    if !matches!(outcome, Outcome::Unknown) {
        return String::new();
    }
    let key = entry.key.as_str();
    let maps = |option: &str| {
        let entries = [command_line::entry(1, option, "1", "")];
        let placeholders = BTreeSet::new();
        !matches!(
            Mapper::new(&entries, &placeholders, "uwsgi").map(0, &entries[0]),
            Outcome::Unknown
        )
    };
    // `socket: /run/app.sock` or `socket /run/app.sock`: an option with its value, but
    // no `=` (uWSGI takes no other separator).
    // regression (probe 401): such a socket line was only "unknown", and postern
    // listened on its default address instead.
    // From the line as written: its value may hold an `=` (`env: NAME=value`).
    let text = entry.text.as_str();
    if let Some(cut) = text.find([':', ' ', '\t']).filter(|&c| c < key.len()) {
        let option = &text[..cut];
        let value = text[cut..].trim_start_matches([' ', '\t']);
        let value = value.strip_prefix(':').unwrap_or(value).trim();
        if !option.is_empty() && !value.is_empty() && maps(option) {
            return format!(
                " (did you mean `{option} = {value}`? an option takes its value after `=`)"
            );
        }
    }
    // A short key is as close to many options as to one: uWSGI's own `cgi`, `psgi` and
    // `sni` are no misspellings of `gid`, `wsgi` and `env` (regression (review)).
    let most = match key.chars().count() {
        0..=4 => return String::new(),
        5..=6 => 1,
        _ => 2,
    };
    USUAL_OPTIONS
        .iter()
        .filter(|o| maps(o))
        .map(|o| (strsim::levenshtein(key, o), *o))
        .filter(|(d, _)| (1..=most).contains(d))
        .min()
        .map(|(_, o)| format!(" (did you mean `{o}`?)"))
        .unwrap_or_default()
}

impl<'a> Mapper<'a> {
    fn new(entries: &'a [Entry], placeholders: &'a BTreeSet<String>, section: &'a str) -> Self {
        let last = |keys: &[&str]| {
            entries
                .iter()
                .enumerate()
                .rev()
                .find(|(_, e)| keys.contains(&e.key.as_str()))
                .map(|(i, e)| (i, e.value.clone()))
        };
        Mapper {
            entries,
            section,
            placeholders,
            table: toml::Table::new(),
            lines: Vec::new(),
            notes: Vec::new(),
            info: Vec::new(),
            app_output: Vec::new(),
            setter: BTreeMap::new(),
            strict: last(&["strict"]).is_some_and(|(_, v)| boolean(&v).0),
            protocol: last(&["protocol", "socket-protocol"]),
            callable: last(&["callable"]).filter(|(_, v)| !v.is_empty()),
            app: None,
            first_socket: entries
                .iter()
                .find(|e| {
                    matches!(
                        e.key.as_str(),
                        "socket" | "uwsgi-socket" | "fastcgi-socket" | "scgi-socket"
                    )
                })
                .map(|e| format!("{} = {}", e.key, e.value)),
            lazy: last(&["lazy-apps", "lazy"]).is_some_and(|(_, v)| boolean(&v).0),
            chdir: last(&["chdir"]).map(|(_, v)| v).filter(|v| !v.is_empty()),
            disable_logging: last(&["disable-logging"]).is_some_and(|(_, v)| boolean(&v).0),
            req_logger: last(&["req-logger"]).is_some(),
            command_line: false,
        }
    }

    /// Sets a single-valued key; an earlier line that set it loses it (the last value
    /// wins, as in uWSGI).
    fn set(&mut self, i: usize, key: &str, value: toml::Value) {
        if let Some(prev) = self.setter.insert(key.to_owned(), i) {
            self.superseded(prev, i, key, "sets it again");
        }
        self.table.insert(key.to_owned(), value);
    }

    /// Line `prev` no longer gives `key`, as line `i` `does` (sets it again, or back to
    /// 0): with nothing else carried over from it, it is ignored, saying so.
    fn superseded(&mut self, prev: usize, i: usize, key: &str, does: &str) {
        let by = if self.command_line {
            format!("`{}`", self.entries[i].text)
        } else {
            format!("line {}", self.entries[i].label())
        };
        let line = &mut self.lines[prev];
        if let Outcome::Carried { keys, .. } = &mut line.outcome {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                line.outcome = Outcome::Ignored(format!(
                    "{by} {does}, and the last value wins (as in uWSGI)"
                ));
            }
        }
    }

    /// A line that sets `key` back to uWSGI's 0 (off, or the default): an earlier line's
    /// value for it no longer applies (the last value wins, as in uWSGI), so postern's
    /// default stands.
    /// regression (probe 401, HIGH): `harakiri = 30` then `harakiri = 0` (in one file,
    /// through an `ini =` include, over two --ini files, at a reload) kept the 30 s
    /// timeout, and migrate wrote `timeout = 30`, calling the second line "not needed".
    /// Only a value the same uWSGI option set is taken back: `reload-on-rss = 0` leaves
    /// the max-rss that `evil-reload-on-rss` gave (review 403: it removed it).
    fn unset(&mut self, i: usize, key: &str) {
        let Some(&prev) = self.setter.get(key) else {
            return;
        };
        if self.lines[prev].entry.key != self.entries[i].key {
            return;
        }
        self.setter.remove(key);
        self.table.remove(key);
        self.superseded(prev, i, key, "sets it back to 0");
    }

    fn push(&mut self, key: &str, value: String) {
        let slot = self
            .table
            .entry(key.to_owned())
            .or_insert_with(|| toml::Value::Array(Vec::new()));
        if let toml::Value::Array(a) = slot {
            if !a.iter().any(|v| v.as_str() == Some(&value)) {
                a.push(toml::Value::String(value));
            }
        }
    }

    fn carried(keys: &[&str]) -> Outcome {
        Outcome::Carried {
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            note: None,
            warn: false,
        }
    }

    fn noted(keys: &[&str], note: Option<String>) -> Outcome {
        Outcome::Carried {
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            note,
            warn: false,
        }
    }

    /// A whole number for `key`. 0 is "off" in uWSGI, which is postern's default for the
    /// limits; for the others postern keeps its own default.
    fn count(&mut self, i: usize, key: &str, v: &str) -> Outcome {
        match number(v) {
            Ok(0) => {
                self.unset(i, key);
                Outcome::Accepted(match key {
                    "body-spool-threshold" => "0 is uWSGI's default (the body is not buffered); postern keeps its own: a body larger than body-spool-threshold (1M) goes to a temporary file".into(),
                    "timeout" | "max-requests" | "max-lifetime" | "max-body" => {
                        "0 turns it off, which is postern's default too".into()
                    }
                    _ => format!("0 is not a value postern takes for {key}: it keeps its default (postern --print-config shows it)"),
                })
            }
            Ok(n) => {
                self.set(i, key, toml::Value::Integer(n.min(i64::MAX as u64) as i64));
                Self::carried(&[key])
            }
            Err(e) => Outcome::Refused(e),
        }
    }

    fn string(&mut self, i: usize, key: &str, v: &str) -> Outcome {
        if v.is_empty() {
            return Outcome::Refused("it has no value".into());
        }
        self.set(i, key, toml::Value::String(v.to_owned()));
        Self::carried(&[key])
    }

    /// uWSGI's log file holds both its own lines and the request lines: postern's log and
    /// its access log, unless `disable-logging` turns the latter off.
    fn log_file(&mut self, i: usize, v: &str) -> Outcome {
        if v.is_empty() {
            return Outcome::Refused("it has no value".into());
        }
        self.set(i, "log-file", toml::Value::String(v.into()));
        if self.disable_logging || self.req_logger {
            return Self::carried(&["log-file"]);
        }
        self.set(i, "access-log", toml::Value::String(v.into()));
        Self::carried(&["log-file", "access-log"])
    }

    /// Said once at start (information, as the file carried over): the app's output
    /// no longer goes to the `logto` file `v`.
    fn app_output(&mut self, v: &str) {
        let said = format!("the app's own output (print(), sys.stdout and sys.stderr, a logging console handler) goes to postern's stdout and stderr (the journal under systemd), not to {v} as with uWSGI's logto: {v} gets postern's log and the request lines");
        if !self.app_output.contains(&said) {
            self.app_output.push(said);
        }
    }

    fn listener(&mut self, v: &str, protocol: &str) -> Outcome {
        let key = match protocol {
            "uwsgi" => "uwsgi",
            "fastcgi" => "fastcgi",
            "scgi" => "scgi",
            "http" | "https" | "http11" => {
                return Outcome::Refused(format!(
                    "protocol = {protocol} makes it an HTTP socket, and postern speaks uwsgi, FastCGI and SCGI: drop protocol = and point nginx's uwsgi_pass at this socket"
                ))
            }
            other => {
                return Outcome::Refused(format!(
                    "protocol = {other} is not one postern speaks (uwsgi, fastcgi, scgi)"
                ))
            }
        };
        match listen_addr(v) {
            Ok((addr, note)) => {
                self.push(key, addr);
                Self::noted(&[key], note)
            }
            Err(e) => Outcome::Refused(e),
        }
    }

    /// One app per postern: the first line that defines one wins; a later one of the
    /// same kind replaces it (as in uWSGI), any other is refused.
    fn app(&mut self, i: usize, kind: &str, target: String, has_callable: bool) -> Outcome {
        if let Some((prev, _)) = self.app {
            let prev_key = self.entries[prev].key.as_str();
            let same = kind == "module" && matches!(prev_key, "module" | "wsgi")
                || kind == "file" && matches!(prev_key, "wsgi-file" | "file");
            if !same {
                return Outcome::Refused(format!(
                    "line {} already names the app, and postern serves one app per process: run one postern per app (each with its own socket) and route to them from nginx",
                    self.entries[prev].label()
                ));
            }
        }
        self.app = Some((i, has_callable));
        self.set(i, "app", toml::Value::String(target));
        Self::carried(&["app"])
    }

    /// `v` as uWSGI resolves it for `key`: a relative path that uWSGI uses after its
    /// `chdir` (sockets, the virtualenv, touch-reload, the stats socket, pidfile2), joined
    /// to the chdir, since postern resolves relative paths from where it starts. logto,
    /// daemonize and pidfile are opened before the chdir, and the app's file is already
    /// read from postern's chdir: those stay as written.
    fn after_chdir(&self, key: &str, v: &str) -> Option<String> {
        let dir = self.chdir.as_deref()?;
        relative_to_chdir(key, v).then(|| format!("{}/{v}", dir.trim_end_matches('/')))
    }

    /// The file of a `logger`/`req-logger` value: `file:PATH` or
    /// `file:logfile=PATH,maxsize=…` (uWSGI's logfile plugin). `Err` says why another
    /// form is not carried. uWSGI's master opens it after the chdir.
    fn logger_file(&self, v: &str) -> Result<String, String> {
        let Some(arg) = v.strip_prefix("file:") else {
            return Err(format!("postern logs to stderr or a file; {v} is neither: forward the log with journald or rsyslog, or use logger = file:PATH"));
        };
        let path = if arg.contains('=') {
            arg.split(',')
                .find_map(|kv| kv.strip_prefix("logfile="))
                .ok_or_else(|| format!("{v} names no logfile="))?
        } else {
            arg
        };
        if path.is_empty() {
            return Err("it names no file".into());
        }
        Ok(match &self.chdir {
            Some(dir) if !path.starts_with('/') => {
                format!("{}/{path}", dir.trim_end_matches('/'))
            }
            _ => path.to_owned(),
        })
    }

    fn map(&mut self, i: usize, e: &Entry) -> Outcome {
        let resolved = self.after_chdir(&e.key, &e.value);
        let v = resolved.as_deref().unwrap_or(&e.value);
        if [&e.text, &e.value]
            .iter()
            .any(|t| t.contains(char::REPLACEMENT_CHARACTER))
        {
            return Outcome::Refused(
                "this line is not UTF-8 (postern's options are): save the file as UTF-8".into(),
            );
        }
        match e.key.as_str() {
            // Listeners.
            "socket" => {
                let p = self.protocol.clone().map_or_else(|| "uwsgi".into(), |(_, p)| p);
                self.listener(v, &p)
            }
            "uwsgi-socket" => self.listener(v, "uwsgi"),
            "fastcgi-socket" => self.listener(v, "fastcgi"),
            "scgi-socket" => self.listener(v, "scgi"),
            "protocol" | "socket-protocol" => {
                if !self.entries.iter().any(|e| e.key == "socket") {
                    return Outcome::Ignored("it applies to socket = lines, and there are none".into());
                }
                if self.protocol.as_ref().is_some_and(|(j, _)| *j != i) {
                    return Outcome::Ignored("a later protocol = line wins (as in uWSGI)".into());
                }
                match v {
                    "uwsgi" | "fastcgi" | "scgi" => Self::carried(&[v]),
                    _ => Outcome::Accepted("see the socket = lines".into()),
                }
            }
            "http" | "https" if self.command_line => Outcome::Refused(format!(
                "postern does not speak HTTP: put nginx in front, listening on {v}, and uwsgi_pass to postern's socket ({}; README 'nginx')",
                self.first_socket.clone().unwrap_or_else(|| "--uwsgi ADDR, 127.0.0.1:3031 when none is given".into())
            )),
            "http" | "https" => Outcome::Refused(format!(
                "uWSGI's built-in HTTP router has no postern equivalent: let nginx listen on {v} and uwsgi_pass to postern's socket ({})",
                self.first_socket.clone().unwrap_or_else(|| "add one, e.g. socket = 127.0.0.1:3031".into())
            )),
            "http-socket" | "https-socket" | "http11-socket" if self.command_line => Outcome::Refused(format!(
                "postern speaks uwsgi, FastCGI and SCGI, not HTTP: make it --uwsgi {v} and point nginx's uwsgi_pass at it (README 'nginx')"
            )),
            "http-socket" | "https-socket" | "http11-socket" => Outcome::Refused(format!(
                "postern speaks uwsgi, FastCGI and SCGI, not HTTP: make it socket = {v} and point nginx's uwsgi_pass at it"
            )),
            "shared-socket" => Outcome::Refused(
                "shared sockets (binding a privileged port before dropping privileges) are not supported: use systemd socket activation (deploy/systemd/) or a port above 1024".into(),
            ),
            // uWSGI reads the first three characters as the mode: `664 ; comment` is 664.
            "chmod-socket" | "chmod" => match numeric(v) {
                "" | "1" => {
                    self.set(i, "socket-mode", toml::Value::String("666".into()));
                    Self::noted(
                        &["socket-mode"],
                        Some("chmod-socket without a mode means 666 (everyone may connect); 660 with socket-owner is tighter".into()),
                    )
                }
                m if m.len() == 3 && m.bytes().all(|b| (b'0'..=b'7').contains(&b)) => {
                    self.set(i, "socket-mode", toml::Value::String(m.into()));
                    Self::carried(&["socket-mode"])
                }
                m => Outcome::Refused(format!("{m:?} is not a mode of three octal digits like 660")),
            },
            "chown-socket" => self.string(i, "socket-owner", v),
            "listen" => self.count(i, "listen-backlog", v),
            "socket-timeout" => match number(v) {
                Ok(0) => Outcome::Accepted("0 is not a timeout postern takes: it keeps its read-timeout (60 s)".into()),
                Ok(n) => {
                    self.set(i, "read-timeout", toml::Value::Integer(n.min(i64::MAX as u64) as i64));
                    Self::carried(&["read-timeout"])
                }
                Err(e) => Outcome::Refused(e),
            },

            // The app.
            "module" | "wsgi" | "wsgi-file" | "file" if v.is_empty() => {
                Outcome::Refused("it has no value".into())
            }
            "module" | "wsgi" => {
                let has = v.contains(':');
                let target = match (&self.callable, has) {
                    (Some((_, c)), false) => format!("{v}:{c}"),
                    _ => v.to_owned(),
                };
                if let Some(call) = target.strip_suffix("()") {
                    return factory(call);
                }
                self.app(i, "module", target, has)
            }
            "wsgi-file" | "file" => {
                let path = file_path(v);
                let target = match &self.callable {
                    Some((_, c)) => format!("{path}:{c}"),
                    None => path,
                };
                self.app(i, "file", target, false)
            }
            "mount" => {
                let Some((prefix, target)) = v.split_once('=') else {
                    return Outcome::Refused(format!("{v:?} is not MOUNTPOINT=APP"));
                };
                // uWSGI loads a mount target ending in .ini as a PasteDeploy file.
                if target.ends_with(".ini") {
                    return Outcome::Refused(format!(
                        "postern loads a WSGI callable, not a PasteDeploy file: write a module (e.g. wsgi.py) with `from paste.deploy import loadapp` and `application = loadapp(\"config:{target}\")`, and mount that (mount = {prefix}=wsgi:application)"
                    ));
                }
                let has = target.contains(':') && !target.ends_with(".py");
                // uWSGI loads a mount target ending in .py or .wsgi as a file.
                let target = if target.ends_with(".py") || target.ends_with(".wsgi") {
                    file_path(target)
                } else {
                    target.to_owned()
                };
                let target = match (&self.callable, has) {
                    (Some((_, c)), false) => format!("{target}:{c}"),
                    _ => target.to_owned(),
                };
                let out = self.app(i, "mount", target, has);
                if !matches!(out, Outcome::Carried { .. }) {
                    return out;
                }
                let prefix = prefix.trim_end_matches('/');
                if prefix.is_empty() {
                    return out;
                }
                self.set(i, "mount", toml::Value::Array(vec![toml::Value::String(prefix.into())]));
                Self::carried(&["app", "mount"])
            }
            "paste" => Outcome::Refused(format!(
                "postern loads a WSGI callable, not a PasteDeploy file: write a module (e.g. wsgi.py) with `from paste.deploy import loadapp` and `application = loadapp(\"{}\")`, and name it instead (module = wsgi:application)",
                if v.contains(':') { v.to_owned() } else { format!("config:{v}") }
            )),
            "paste-logger" => Outcome::Ignored(
                "call logging.config.fileConfig(PATH) yourself in the module that loads the PasteDeploy app".into(),
            ),
            "eval" => Outcome::Refused(
                "postern runs no code from its configuration: put this code in a module that defines application, and name that module (module = wsgi:application)".into(),
            ),
            "callable" if v.is_empty() => Outcome::Refused("it has no value".into()),
            "callable" => {
                // Applied where the app is read; what is left to say is whether it was used.
                let last = self.callable.as_ref().is_some_and(|(j, _)| *j == i);
                if !last {
                    Outcome::Ignored("a later callable = line wins (as in uWSGI)".into())
                } else {
                    Outcome::Accepted(String::new()) // settled in finish()
                }
            }
            "manage-script-name" => Outcome::Accepted(
                "postern splits SCRIPT_NAME from PATH_INFO at the mount prefix whenever the front server sends no SCRIPT_NAME".into(),
            ),
            "chdir" => self.string(i, "chdir", v),
            "home" | "virtualenv" | "venv" | "pyhome" => self.string(i, "venv", v),
            "pythonpath" | "python-path" | "pp" => {
                if v.is_empty() {
                    return Outcome::Refused("it has no value".into());
                }
                self.push("pythonpath", v.to_owned());
                let note = v.contains(['*', '?', '[']).then(|| {
                    "uWSGI expands globs here; postern takes the path literally: list each directory".to_owned()
                });
                let warn = note.is_some();
                Outcome::Carried { keys: vec!["pythonpath".into()], note, warn }
            }
            "env" => match v.split_once('=') {
                Some((k, val)) if !k.is_empty() => {
                    let env = self
                        .table
                        .entry("env")
                        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                    if let toml::Value::Table(t) = env {
                        t.insert(k.to_owned(), toml::Value::String(val.to_owned()));
                    }
                    let key = format!("env.{k}");
                    if let Some(prev) = self.setter.insert(key.clone(), i) {
                        self.lines[prev].outcome = Outcome::Ignored(format!(
                            "line {} sets {k} again, and the last value wins (as in uWSGI)",
                            e.label()
                        ));
                    }
                    Outcome::Carried { keys: vec![key], note: None, warn: false }
                }
                // Not the value: it may be a secret whose name was lost.
                // regression: the reason repeated `env = =VALUE` the line hid.
                Some(_) => Outcome::Ignored(
                    "it names no variable (env = NAME=VALUE)".into(),
                ),
                None => Outcome::Ignored(format!(
                    "env = {v} without =VALUE unsets the variable in uWSGI; postern does not unset variables (unset it where postern is started)"
                )),
            },

            // Processes and threads.
            "processes" | "workers" => match number(v) {
                Ok(0) => Outcome::Accepted("0 means one worker, postern's default".into()),
                Ok(n) => {
                    self.set(i, "workers", toml::Value::Integer(n as i64));
                    Self::carried(&["workers"])
                }
                Err(e) => Outcome::Refused(e),
            },
            "threads" => match number(v) {
                Ok(0) => Outcome::Accepted("0 means one thread, postern's default".into()),
                Ok(n) => {
                    self.set(i, "threads", toml::Value::Integer(n as i64));
                    Self::carried(&["threads"])
                }
                Err(e) => Outcome::Refused(e),
            },
            "enable-threads" => Outcome::Accepted(
                "Python threads always run under postern (it releases the GIL whenever it waits)".into(),
            ),
            "master" => {
                let (b, note) = boolean(v);
                self.set(i, "master", toml::Value::Boolean(b));
                // regression (probe 401): said nothing though postern runs one anyway.
                let several = self.entries.iter().any(|e| {
                    matches!(e.key.as_str(), "processes" | "workers")
                        && number(&e.value).is_ok_and(|n| n > 1)
                });
                let note = match (b, several) {
                    (false, true) => Some("postern runs a master whenever there is more than one worker (it starts, watches and replaces them): processes > 1 here".to_owned()),
                    _ => note,
                };
                Self::noted(&["master"], note)
            }
            "lazy-apps" | "lazy" => Outcome::Accepted(if boolean(v).0 {
                "postern imports the app in each worker by default (preload = false), and a reload imports the new code".into()
            } else {
                "uWSGI's default; see the note on preload".into()
            }),
            "single-interpreter" => Outcome::Accepted("postern runs one interpreter per worker".into()),
            "thunder-lock" => Outcome::Accepted(
                "postern lets one thread per worker wait in accept at a time (its accept token)".into(),
            ),
            "no-orphans" => Outcome::Accepted("postern's workers die with their master".into()),
            // regression (probe 313): these real uWSGI options were "unknown … or
            // misspelt", and under `strict` postern refused to start.
            "py-call-osafterfork" | "py-call-uwsgi-fork-hooks" => Outcome::Accepted(
                "postern forks its workers as Python requires (PyOS_AfterFork_Child): the app's os.register_at_fork hooks run in each worker".into(),
            ),
            "skip-atexit" | "skip-atexit-teardown" => Outcome::Ignored(
                "a worker that stops runs the app's atexit handlers (bounded by graceful-timeout); there is no switch to skip them".into(),
            ),
            "reload-on-exception" => Outcome::Ignored(
                "an exception in a request is that request's 500 and the worker serves on; a worker that crashes is replaced".into(),
            ),
            "tcp-nodelay" => Outcome::Accepted(
                "postern sets TCP_NODELAY on every TCP connection it accepts".into(),
            ),
            "so-keepalive" => Outcome::Ignored(
                "postern does not set SO_KEEPALIVE: the front server's connections are short or kept by it (FastCGI keep-conn), and a dead one fails the next read or write".into(),
            ),
            "reuse-port" => Outcome::Ignored(
                "the master binds each socket once and its workers share it: SO_REUSEPORT is not needed, and a restart binds again once the old process has left".into(),
            ),
            "pyargv" => Outcome::Ignored(
                "sys.argv is not set from the file: an app that reads options from sys.argv gets them from env = lines instead".into(),
            ),
            "enable-metrics" | "metrics-dir" => Outcome::Accepted(
                "postern's metrics are always kept: stats = ADDRESS serves /metrics (Prometheus) and /status".into(),
            ),
            "log-micros" => Outcome::Ignored(
                "the access line gives the response time in milliseconds with microsecond digits (ms=0.99)".into(),
            ),
            "disable-sendfile" => Outcome::Ignored(
                "postern sends a wsgi.file_wrapper file (and an ASGI http.response.pathsend) with sendfile(2) and has no switch to turn it off".into(),
            ),
            "min-worker-lifetime" => Outcome::Ignored(
                "postern has no minimum lifetime: a worker that dies at its start is started again with a backoff (200 ms doubling to 12.8 s)".into(),
            ),
            "chroot" | "cap" | "unshare" | "jail" | "pivot-root" | "namespace" | "ns" | "setns"
            => Outcome::Refused(
                "postern does not confine itself (chroot, capabilities, namespaces): it would run without the isolation this file asks for. Give the confinement to systemd in the unit (RootDirectory=, CapabilityBoundingSet=, PrivateNetwork=, RestrictNamespaces=, ProtectSystem=; deploy/systemd), then remove the line".into(),
            ),

            // Recycling and timeouts.
            "harakiri" => self.count(i, "timeout", v),
            "harakiri-verbose" => Outcome::Accepted(
                "postern always logs the request and every Python thread's stack before it kills a worker".into(),
            ),
            "max-requests" => self.count(i, "max-requests", v),
            "max-requests-delta" => Outcome::Accepted(
                "postern spreads recycling by itself (max-requests plus up to 10% jitter)".into(),
            ),
            "max-worker-lifetime" => self.count(i, "max-lifetime", v),
            // Two limits in uWSGI: reload-on-rss (soft: the worker recycles after its
            // request) and evil-reload-on-rss (hard: the master kills it). postern's
            // max-rss is the soft one, and its hard limit is 1.5 x max-rss.
            // regression (probe 334): both gave max-rss, "the last value wins (as in
            // uWSGI)", so the line order chose between the soft and the hard limit.
            // The last reload-on-rss line is the one uWSGI keeps (0: off, and then the
            // evil one gives max-rss; review 403).
            "evil-reload-on-rss"
                if self
                    .entries
                    .iter()
                    .rev()
                    .find(|e| e.key == "reload-on-rss")
                    .is_some_and(|e| numeric(&e.value).parse::<f64>().is_ok_and(|m| m > 0.0)) =>
            {
                let at = self.entries.iter().rev().find(|e| e.key == "reload-on-rss");
                Outcome::Ignored(format!(
                    "reload-on-rss (line {}) gives max-rss, the soft limit; postern's hard limit is 1.5 x max-rss (a worker past it stops at once), not a value of its own",
                    at.map_or_else(|| "0".to_owned(), Entry::label)
                ))
            }
            "reload-on-rss" | "evil-reload-on-rss" => match numeric(v).parse::<f64>() {
                Ok(mib) if mib.is_finite() && mib >= 0.0 => {
                    if mib == 0.0 {
                        self.unset(i, "max-rss");
                        return Outcome::Accepted("0 turns it off, which is postern's default too".into());
                    }
                    let whole = mib.ceil() as u64;
                    self.set(i, "max-rss", toml::Value::Integer(whole as i64));
                    let note = (whole as f64 != mib)
                        .then(|| format!("postern counts whole MiB: {mib} becomes {whole}"));
                    Self::noted(&["max-rss"], note)
                }
                _ => Outcome::Refused(format!("{v:?} is not a number of megabytes")),
            },
            // Two options in uWSGI (the whole reload's bound, and each worker's), one in
            // postern: the worker's, whose time to finish graceful-timeout is.
            "reload-mercy" if self.entries.iter().any(|e| e.key == "worker-reload-mercy") => {
                let at = self.entries.iter().rev().find(|e| e.key == "worker-reload-mercy");
                Outcome::Ignored(format!(
                    "worker-reload-mercy (line {}) gives graceful-timeout, the time a worker's requests get to finish; postern has no separate bound for the whole reload",
                    at.map_or_else(|| "0".to_owned(), Entry::label)
                ))
            }
            "reload-mercy" | "worker-reload-mercy" => self.count(i, "graceful-timeout", v),
            "touch-reload" => {
                if self.table.contains_key("touch-reload") {
                    return Outcome::Ignored(
                        "postern watches one touch-reload file: touch the first one from your deploy".into(),
                    );
                }
                self.string(i, "touch-reload", v)
            }
            "touch-workers-reload" => {
                if self.table.contains_key("touch-reload") {
                    return Outcome::Ignored(
                        "postern watches one touch-reload file: touch the first one from your deploy".into(),
                    );
                }
                let out = self.string(i, "touch-reload", v);
                match out {
                    Outcome::Carried { keys, .. } => Outcome::Carried {
                        keys,
                        note: Some("a reload in postern replaces only the workers (the master and its sockets stay)".into()),
                        warn: false,
                    },
                    other => other,
                }
            }
            "touch-chain-reload" => {
                if self.table.contains_key("touch-reload") {
                    return Outcome::Ignored(
                        "postern watches one touch-reload file: touch the first one from your deploy".into(),
                    );
                }
                if v.is_empty() {
                    return Outcome::Refused("it has no value".into());
                }
                self.set(i, "touch-reload", toml::Value::String(v.into()));
                self.set(i, "chain-reload", toml::Value::Boolean(true));
                Self::carried(&["touch-reload", "chain-reload"])
            }
            "vacuum" => Outcome::Accepted("postern removes its Unix sockets and pidfile at exit".into()),
            "need-app" => Outcome::Accepted("postern always exits when the app cannot be imported".into()),
            "die-on-term" => Outcome::Accepted(
                "SIGTERM is a graceful stop in postern (SIGHUP reloads)".into(),
            ),
            "py-autoreload" | "py-auto-reload" | "python-autoreload" | "python-auto-reload" => {
                if number(v) == Ok(0) {
                    return Outcome::Accepted("0 turns it off".into());
                }
                Outcome::Ignored(
                    "postern does not watch Python modules: use touch-reload and touch the file when you deploy".into(),
                )
            }
            "reaper" => Outcome::Accepted("postern's master reaps its children".into()),
            "wsgi-env-behaviour" | "wsgi-env-behavior" => {
                Outcome::Accepted("postern builds a new environ for each request".into())
            }
            "ignore-sigpipe" | "ignore-write-errors" => Outcome::Accepted(
                "a client that goes away before the response is sent is noted in that request's access line, not logged as an error".into(),
            ),
            "disable-write-exception" => Outcome::Accepted(
                "postern raises nothing in the app when the client goes away while it sends the returned iterable (it stops and calls close()); only the legacy write() callable raises OSError".into(),
            ),
            // The usual way to make uWSGI's SIGTERM (15) or SIGINT (2) graceful.
            "hook-master-start"
                if matches!(
                    v.split_whitespace().collect::<Vec<_>>()[..],
                    ["unix_signal:15" | "unix_signal:2", "gracefully_kill_them_all"]
                ) =>
            {
                Outcome::Accepted("SIGTERM and SIGINT stop postern gracefully already".into())
            }
            k if k.starts_with("hook-") || k.starts_with("exec-") || k.starts_with("call-") => {
                Outcome::Ignored(HOOK.into())
            }
            "import" | "pyimport" | "py-import" | "python-import" => Outcome::Ignored(format!(
                "postern imports only the app: import {v} from the app's module"
            )),
            "catch-exceptions" => Outcome::Ignored(
                "postern never sends a traceback to the client: it answers 500 and logs the traceback".into(),
            ),
            "limit-as" | "reload-on-as" | "evil-reload-on-as" => Outcome::Ignored(
                "postern limits resident memory, not address space: max-rss (reload-on-rss) recycles a worker past it; for a hard cap use systemd's MemoryMax=".into(),
            ),
            "max-fd" => Outcome::Ignored(
                "set the open-files limit where postern starts (systemd LimitNOFILE=, or ulimit -n)".into(),
            ),
            // uWSGI reads a mode of three characters as those three octal digits, and
            // a longer one by its 2nd to 4th characters (`0022` is 022, `1777` 777,
            // `00022` 002); under three characters it logs "invalid umask" and runs
            // with umask 000. Its digits are not checked: `022 ; x` is garbage.
            "umask" => {
                let octal = |m: &str| m.len() == 3 && m.bytes().all(|b| (b'0'..=b'7').contains(&b));
                let read = match v.len() {
                    n if n < 3 => None,
                    3 => Some(v),
                    _ => v.get(1..4),
                };
                match read {
                    Some(m) if octal(m) => {
                        self.set(i, "umask", toml::Value::String(m.into()));
                        if m == v || v.len() == 4 && v.starts_with('0') {
                            Self::carried(&["umask"])
                        } else {
                            Self::noted(
                                &["umask"],
                                Some(format!("uWSGI reads a umask longer than three characters by its 2nd to 4th: {v} is {m}")),
                            )
                        }
                    }
                    None => Outcome::Refused(format!(
                        "uWSGI takes a umask of fewer than three digits as invalid (it logs 'invalid umask' and runs with umask 000): write the three octal digits meant, e.g. umask = 0{v:0>2}"
                    )),
                    Some(m) => Outcome::Refused(format!(
                        "uWSGI reads a umask as three octal digits (the 2nd to 4th of a longer value, here {m:?}): write them alone, e.g. umask = 022"
                    )),
                }
            }
            "master-fifo" => Outcome::Ignored(
                "postern is driven by signals to the master: SIGHUP reloads, SIGTERM stops gracefully, SIGTTIN/SIGTTOU add or remove a worker, SIGUSR1 reopens the logs. A deploy step that writes to the FIFO (echo r > FIFO) now only makes a plain file and reloads nothing: replace it with kill -HUP $(cat PIDFILE) (with pidfile =) or systemctl reload".into(),
            ),
            k if k.contains("attach-daemon") => Outcome::Beside(daemon(k, v)),
            "cron" | "cron2" | "unique-cron" => Outcome::Beside(format!(
                "postern runs no cron tasks, so this job stops running at the switch: give it a systemd timer (a .service with ExecStart= the command, a .timer with OnCalendar=) or a crontab line: {}",
                crontab_line(v)
            )),
            // Refused, not ignored: running without them loses the app's jobs silently.
            "spooler" | "spooler-external" | "mule" | "mules" | "farm" | "cache" | "cache2"
            | "locks" | "lock-engine" | "ftok" | "sharedarea" | "queue" | "signal"
            | "signal-bufsize" | "signals-bufsize" | "add-timer" | "add-rb-timer"
            | "add-cron" | "add-unique-cron" | "add-file-monitor" | "load-file-in-cache"
            | "load-file-in-cache-gzip" | "shared-import" | "shared-pyimport"
            | "shared-py-import" | "shared-python-import" => Outcome::Refused(UWSGI_MODULE.into()),
            k if ["spooler-", "mule-", "cache-", "queue-"].iter().any(|p| k.starts_with(p)) => {
                Outcome::Refused(UWSGI_MODULE.into())
            }
            "log-slow" => Outcome::Ignored(format!(
                "uWSGI logs the requests slower than {v} ms; postern's access log has every request with its duration, and slow-log = SECONDS logs the Python stacks of a request still running past it (the worker keeps running)"
            )),
            "harakiri-graceful-timeout" | "harakiri-graceful-signal" => Outcome::Ignored(
                "postern's timeout (harakiri) sends no graceful signal first: it logs the worker's Python stacks, then kills it 500 ms later".into(),
            ),
            "py-tracebacker" => Outcome::Ignored(
                "postern has no tracebacker socket: it logs every Python thread's stack itself when a request passes slow-log (the worker keeps running) or timeout (the worker is killed)".into(),
            ),
            "wsgi-disable-file-wrapper" => Outcome::Accepted(
                "postern's wsgi.file_wrapper sends a real file with sendfile(2) and reads anything else in blocks: there is nothing to turn off".into(),
            ),

            // Requests.
            "buffer-size" => match number(v) {
                Ok(n) if n > 65535 => {
                    self.set(i, "buffer-size", toml::Value::Integer(65535));
                    Outcome::Carried {
                        keys: vec!["buffer-size".into()],
                        note: Some(format!("{n} is more than the uwsgi protocol can carry: 65535")),
                        warn: false,
                    }
                }
                Ok(n) => {
                    self.set(i, "buffer-size", toml::Value::Integer(n as i64));
                    Self::carried(&["buffer-size"])
                }
                Err(e) => Outcome::Refused(e),
            },
            "post-buffering" => self.count(i, "body-spool-threshold", v),
            "limit-post" => self.count(i, "max-body", v),

            // Privileges and files.
            "uid" => self.string(i, "uid", v),
            "gid" => self.string(i, "gid", v),
            "pidfile" => self.string(i, "pidfile", v),
            "pidfile2" => {
                let out = self.string(i, "pidfile", v);
                match out {
                    Outcome::Carried { keys, .. } => Outcome::Carried {
                        keys,
                        note: Some("postern writes its pidfile once, before dropping privileges".into()),
                        warn: false,
                    },
                    other => other,
                }
            }

            // Stats and logs.
            "stats" | "stats-server" => match v {
                "" => Outcome::Refused("it has no value".into()),
                _ => {
                    let (addr, note) = if !v.contains(':') {
                        (format!("unix:{v}"), None)
                    } else if let Some(port) = v.strip_prefix(':') {
                        (
                            format!("0.0.0.0:{port}"),
                            Some(format!("uWSGI's \"{v}\" is every interface, and so is this: prefer 127.0.0.1{v}")),
                        )
                    } else {
                        (v.to_owned(), None)
                    };
                    self.set(i, "stats", toml::Value::String(addr));
                    let base = "postern's stats endpoint speaks HTTP (/metrics for Prometheus, /status, /ping), not uWSGI's JSON: uwsgitop and uwsgi_exporter do not read it";
                    Outcome::Carried {
                        keys: vec!["stats".into()],
                        note: Some(match note {
                            Some(n) => format!("{n}; {base}"),
                            None => base.into(),
                        }),
                        warn: false,
                    }
                }
            },
            "stats-http" => Outcome::Accepted("postern's stats endpoint always speaks HTTP".into()),
            "memory-report" => Outcome::Accepted("postern's /status shows each worker's RSS".into()),
            "logto" | "logto2" => {
                if v.contains(':') && !v.contains('/') {
                    return Outcome::Ignored(format!(
                        "postern does not send logs over UDP ({v}): it logs to stderr or a file; forward them with journald or rsyslog"
                    ));
                }
                // regression: only docs/migration.md said the app's output no longer
                // lands in this file; neither --ini's start nor migrate's line did.
                match self.log_file(i, v) {
                    Outcome::Carried { keys, .. } => {
                        self.app_output(v);
                        Outcome::Carried {
                            keys,
                            note: Some(APP_OUTPUT.into()),
                            warn: false,
                        }
                    }
                    other => other,
                }
            }
            "logger" => match v {
                "stdio" => Outcome::Accepted("postern logs to stderr by default".into()),
                _ => match self.logger_file(v) {
                    Ok(path) => {
                        let out = self.log_file(i, &path);
                        if v.contains("maxsize=") {
                            if let Outcome::Carried { keys, .. } = out {
                                return Outcome::Carried {
                                    keys,
                                    note: Some("postern does not rotate its logs itself (maxsize): use logrotate (deploy/logrotate/postern), which sends SIGUSR1".into()),
                                    warn: true,
                                };
                            }
                        }
                        out
                    }
                    Err(why) => Outcome::Ignored(why),
                },
            },
            "req-logger" => {
                if self.disable_logging {
                    return Outcome::Accepted("disable-logging turns request logging off, so this logger is not used".into());
                }
                match self.logger_file(v) {
                    Ok(path) => {
                        self.set(i, "access-log", toml::Value::String(path));
                        Self::carried(&["access-log"])
                    }
                    Err(why) => Outcome::Ignored(why),
                }
            }
            "log-format" | "logformat" => Outcome::Ignored(
                "postern's access log has fixed formats: access-log-format = \"text\", \"json\", or \"combined\" (Apache/nginx combined, with the duration)".into(),
            ),
            "daemonize" | "daemonize2" => {
                if self.entries.iter().any(|e| e.key == "logto" || e.key == "logto2") {
                    return Outcome::Ignored(
                        "postern stays in the foreground: run it under systemd (deploy/systemd/) or your process manager".into(),
                    );
                }
                match self.log_file(i, v) {
                    Outcome::Carried { keys, .. } => Outcome::Carried {
                        keys,
                        note: Some(format!("postern stays in the foreground (run it under systemd, deploy/systemd/, or your process manager); its logs go to this file. {APP_OUTPUT}")),
                        warn: true,
                    },
                    other => other,
                }
            }
            // Only its last line counts (log files read `disable_logging`, the last value).
            // regression (probe 401): `disable-logging = true` then `= false` left the
            // access log off.
            "disable-logging"
                if self.entries[i + 1..].iter().any(|e| e.key == "disable-logging") =>
            {
                let at = self.entries.iter().rev().find(|e| e.key == "disable-logging");
                Outcome::Ignored(format!(
                    "line {} sets it again, and the last value wins (as in uWSGI)",
                    at.map_or_else(|| "0".to_owned(), Entry::label)
                ))
            }
            "disable-logging" => {
                let (b, _) = boolean(v);
                if b {
                    self.set(i, "access-log", toml::Value::String("off".into()));
                    Self::carried(&["access-log"])
                } else {
                    Outcome::Accepted("request logging is on by default".into())
                }
            }
            "log-date" | "logdate" => Outcome::Accepted("postern's log lines carry a timestamp".into()),
            "log-4xx" | "log-5xx" => {
                if self.disable_logging {
                    Outcome::Ignored(
                        "postern's access log has no status filter: with disable-logging it is off for every request; drop disable-logging to log them all".into(),
                    )
                } else {
                    Outcome::Accepted("postern's access log has every request, these included".into())
                }
            }
            "log-master" | "threaded-logger" => Outcome::Accepted(
                "each postern process writes its log lines through a bounded non-blocking writer, so a slow log never holds up a request".into(),
            ),
            "log-reopen" => Outcome::Ignored(
                "postern reopens its log files on SIGUSR1, not on a reload: make logrotate's postrotate send SIGUSR1 to the master (deploy/logrotate/postern)".into(),
            ),
            "touch-logreopen" => Outcome::Ignored(
                "postern reopens its log files on SIGUSR1: send that from logrotate's postrotate (deploy/logrotate/postern) instead of touching a file".into(),
            ),
            "log-maxsize" | "log-backupname" => Outcome::Ignored(
                "postern does not rotate its own logs: use logrotate (deploy/logrotate/postern), which sends SIGUSR1".into(),
            ),
            "logfile-chmod" | "logfile-chown" => Outcome::Ignored(
                "postern creates a missing log file with mode 640, owned by the user it starts as, and changes neither: create the file with the mode and owner you want (postern appends to it)".into(),
            ),
            "log-x-forwarded-for" => Outcome::Ignored(
                "postern logs REMOTE_ADDR as the front server sends it: have nginx set it to the client (realip module: set_real_ip_from, real_ip_header X-Forwarded-For)".into(),
            ),
            "strict" => Outcome::Accepted(if self.strict {
                "unknown options stop postern --ini, as they stop uWSGI".into()
            } else {
                "off: unknown options are listed as warnings".into()
            }),
            "set-placeholder" | "set-ph" => Outcome::Placeholder,

            // Everything that is not for postern.
            "plugin" | "plugins" | "need-plugin" | "need-plugins" => {
                // uWSGI splits the list at commas; `python3`, `python311`, … are the
                // Python plugin, which is what postern is.
                let others: Vec<&str> = v
                    .split([',', ' '])
                    .map(str::trim)
                    .filter(|p| !p.is_empty() && !p.starts_with("python"))
                    .collect();
                if others.is_empty() {
                    Outcome::Accepted("postern embeds CPython itself (the python plugin's job)".into())
                } else {
                    Outcome::Ignored(format!("{PLUGINS} ({} has no postern equivalent)", others.join(", ")))
                }
            }
            "plugin-dir" | "plugins-dir" => Outcome::Accepted(PLUGINS.into()),
            "add-header" => Outcome::Ignored(format!(
                "postern adds no headers of its own: write it in nginx (add_header {};)",
                v.split_once(':').map_or_else(|| v.to_owned(), |(n, val)| format!("{} \"{}\"", n.trim(), val.trim()))
            )),
            "offload-threads" => Outcome::Ignored(STATIC.into()),
            "auto-procname" => Outcome::Ignored(PROCNAME.into()),
            "cheap" | "idle" => Outcome::Ignored(CHEAPER.into()),
            "ini" | "include" | "inherit" if v.starts_with(':') => Outcome::Refused(format!(
                "postern reads one section: copy the options of [{}] into [{}] where this line is (later lines override them, as in uWSGI)",
                &v[1..],
                self.section
            )),
            "ini" | "include" | "inherit" | "json" | "yaml" | "yml" | "xml" | "config" => {
                Outcome::Refused(INCLUDE.into())
            }
            "for" | "endfor" | "end-for" | "endif" | "end-if" | "end" | "else" => {
                Outcome::Refused(LOGIC.into())
            }
            "static-map" => Outcome::Ignored(match v.split_once('=') {
                Some((at, dir)) => format!(
                    "postern leaves static files to the front server: in nginx, location {}/ {{ alias {}/; }}",
                    at.trim_end_matches('/'),
                    dir.trim_end_matches('/')
                ),
                None => STATIC.into(),
            }),
            k if k.starts_with("static-") || k.starts_with("check-static") => {
                Outcome::Ignored(STATIC.into())
            }
            k if k == "route"
                || ["route-", "final-route", "error-route", "response-route"]
                    .iter()
                    .any(|p| k.starts_with(p)) =>
            {
                match guarding_route(k, v) {
                    Some(what) => Outcome::Refused(format!(
                        "this rule {what}, and postern has no internal routing: without it these requests would be answered to anyone. Write the rule in nginx ({}) and remove this line",
                        ROUTE_NGINX
                    )),
                    None => Outcome::Ignored(ROUTING.into()),
                }
            }
            k if k.starts_with("cheaper") => Outcome::Ignored(CHEAPER.into()),
            k if k.starts_with("procname") => Outcome::Ignored(PROCNAME.into()),
            k if k.starts_with("http-") || k.starts_with("https-") => {
                Outcome::Ignored(HTTP_OPTION.into())
            }
            k if k.starts_with("emperor") || k.starts_with("vassal") => {
                Outcome::Refused(EMPEROR.into())
            }
            k if is_logic_opener(k) => Outcome::Refused(LOGIC.into()),
            k if self.placeholders.contains(k) => Outcome::Placeholder,
            _ => Outcome::Unknown,
        }
    }

    /// `postern migrate`: line `i` makes its value at each start in uWSGI (`e.reads`).
    /// What it set in the table is taken out again (an earlier line it overrode stays
    /// overridden, as at uWSGI's start), and the line says how to get the same at start.
    /// A refusal of the option itself (not of its unexpanded value) stays.
    fn at_start(&mut self, i: usize, e: &Entry, outcome: Outcome, before: toml::Table) -> Outcome {
        let keys = match outcome {
            Outcome::Carried { keys, .. } => keys,
            // The value as written (`$(WORKERS:-4)`) did not parse; what uWSGI reads at
            // start decides, and the option maps onto this key.
            // A socket whose protocol = line is made at start.
            Outcome::Refused(why)
                if why.starts_with('"')
                    || why == "it has no value"
                    || why.starts_with("protocol = $(") =>
            {
                value_key(&e.key)
                    .map(|k| vec![k.to_owned()])
                    .unwrap_or_default()
            }
            other => return other,
        };
        for k in &keys {
            if let Some(name) = k.strip_prefix("env.") {
                if let Some(toml::Value::Table(env)) = self.table.get_mut("env") {
                    env.remove(name);
                    if env.is_empty() {
                        self.table.remove("env");
                    }
                }
            } else if self.setter.get(k) == Some(&i) {
                self.table.remove(k);
            } else {
                // A list (socket, pythonpath): what the other lines put there stays.
                match before.get(k) {
                    Some(v) => self.table.insert(k.clone(), v.clone()),
                    None => self.table.remove(k),
                };
            }
        }
        Outcome::AtStart(at_start_reason(e, &keys))
    }

    /// What needs the whole file: the callable's fate, the preload and comment notes.
    fn finish(&mut self) {
        // The uwsgi module's reason once, in full; the other such lines point at it.
        let mut first_job: Option<String> = None;
        for l in self.lines.iter_mut() {
            if !matches!(&l.outcome, Outcome::Refused(w) if w == UWSGI_MODULE) {
                continue;
            }
            match first_job {
                None => first_job = Some(l.entry.label()),
                Some(ref n) => {
                    l.outcome = Outcome::Refused(format!(
                        "uWSGI's in-process jobs, as line {n}: the `uwsgi` module and what it reaches do not exist under postern"
                    ))
                }
            }
        }
        // Only lines whose value is used: an ignored hook's shell command may hold " ; ".
        let commented: Vec<String> = self
            .lines
            .iter()
            .filter(|l| {
                inline_comment(&l.entry.value)
                    && matches!(
                        l.outcome,
                        Outcome::Carried { .. } | Outcome::Accepted(_) | Outcome::Placeholder
                    )
            })
            .map(|l| l.entry.label())
            .collect();
        if !commented.is_empty() {
            self.notes.push((
                0,
                format!(
                    "line{} {}: uWSGI has no inline comments, so the `; …` or `# …` after a value is part of it: uWSGI (and postern) still read a number before it, but a path or a name keeps the comment, and a boolean is true whatever it says. Put each comment on a line of its own",
                    if commented.len() == 1 { "" } else { "s" },
                    commented.join(", ")
                ),
            ));
        }
        if let Some((ci, _)) = self.callable.clone() {
            let outcome = match self.app {
                Some((ai, true)) => Outcome::Ignored(format!(
                    "line {} names its callable itself, which wins (as in uWSGI)",
                    self.entries[ai].label()
                )),
                // Part of the app's value.
                Some((ai, false)) if matches!(self.lines[ai].outcome, Outcome::AtStart(_)) => {
                    Outcome::Accepted(format!(
                        "part of the app of line {}, which is made at each start (see NEEDS ATTENTION)",
                        self.entries[ai].label()
                    ))
                }
                Some((_, false)) => Self::carried(&["app"]),
                None => Outcome::Ignored(
                    "there is no module, wsgi-file or mount for it to apply to".into(),
                ),
            };
            self.lines[ci].outcome = outcome;
        }
        let workers = self
            .table
            .get("workers")
            .and_then(toml::Value::as_integer)
            .unwrap_or(1);
        let master = self
            .table
            .get("master")
            .and_then(toml::Value::as_bool)
            .unwrap_or(false);
        // With cheaper, `processes` is uWSGI's maximum: postern would run that many all the
        // time, which may not fit where uWSGI ran a handful.
        let value = |key: &str| {
            self.entries
                .iter()
                .rev()
                .find(|e| e.key == key)
                .and_then(|e| number(&e.value).ok())
        };
        if let Some(min) = value("cheaper").filter(|&m| m >= 1 && (m as i64) < workers) {
            let start = value("cheaper-initial").unwrap_or(min);
            self.notes.push((
                0,
                format!("uWSGI's cheaper mode ran between {min} and {workers} workers (processes), starting with {start}; postern runs workers = {workers} all the time: lower it if {workers} copies of the app do not fit in memory"),
            ));
        }
        // Information, not a warning: the file carried over, and postern's way is the
        // safe one. regression: `--ini` warned "not carried over as written" about it
        // at every start of a file that carried over whole.
        if (workers > 1 || master) && !self.lazy && self.app.is_some() {
            self.info.push(
                "uWSGI imported the app once in its master and forked the workers from it (there is no lazy-apps); postern imports it in each worker, so a reload (SIGHUP, touch-reload) runs the new code. Add preload = true to share the app's memory between workers as uWSGI did (then deploy new code with a restart)".into(),
            );
        }
        // regression: a harakiri carried over as timeout said nothing of the difference.
        let threads = self.table.get("threads").and_then(toml::Value::as_integer);
        if threads.is_some_and(|t| t > 1) {
            for l in self.lines.iter_mut().filter(|l| l.entry.key == "harakiri") {
                if let Outcome::Carried { note, warn, .. } = &mut l.outcome {
                    *note = Some(format!(
                        "with threads = {}, uWSGI's harakiri was one timer per worker that each new request reset; postern's timeout is per request, so it can kill a request that used to finish (README 'Workers, reloads and timeouts')",
                        threads.unwrap_or(0)
                    ));
                    *warn = true;
                }
            }
        }
    }
}

/// Whether uWSGI opens `v` of `key` after its chdir, as a path relative to it (see
/// `Mapper::after_chdir`; `relative_logger` for `Mapper::logger_file`).
fn relative_to_chdir(key: &str, v: &str) -> bool {
    let path = match key {
        "socket" | "uwsgi-socket" | "fastcgi-socket" | "scgi-socket" | "stats" | "stats-server" => {
            !v.contains(':') && !v.starts_with(['@', '='])
        }
        "home" | "virtualenv" | "venv" | "pyhome" | "touch-reload" | "touch-chain-reload"
        | "pidfile2" => true,
        _ => false,
    };
    path && !v.is_empty() && !v.starts_with('/')
}

/// Whether a `logger`/`req-logger` value names a file relative to the chdir.
fn relative_logger(key: &str, v: &str) -> bool {
    matches!(key, "logger" | "req-logger")
        && v.strip_prefix("file:").is_some_and(|arg| {
            let p = arg
                .split(',')
                .find_map(|kv| kv.strip_prefix("logfile="))
                .unwrap_or(arg);
            !p.is_empty() && !p.starts_with('/')
        })
}

/// When migrating: a line whose value is joined to another line's (a relative path to
/// `chdir`, the app to `callable`, a socket to `protocol`) makes it at start too when
/// that line does.
fn inherit_reads(entries: &mut [Entry]) {
    let last_reads = |keys: &[&str], entries: &[Entry]| {
        entries
            .iter()
            .rev()
            .find(|e| keys.contains(&e.key.as_str()) && !e.value.is_empty())
            .map(|e| e.reads.clone())
            .unwrap_or_default()
    };
    let chdir = last_reads(&["chdir"], entries);
    let callable = last_reads(&["callable"], entries);
    let protocol = last_reads(&["protocol", "socket-protocol"], entries);
    for e in entries.iter_mut() {
        if relative_to_chdir(&e.key, &e.value) || relative_logger(&e.key, &e.value) {
            e.reads.extend(chdir.iter().cloned());
        }
        if matches!(
            e.key.as_str(),
            "module" | "wsgi" | "wsgi-file" | "file" | "mount"
        ) {
            e.reads.extend(callable.iter().cloned());
        }
        if e.key == "socket" {
            e.reads.extend(protocol.iter().cloned());
        }
    }
}

/// The postern key of an option whose value is a number or a mode (whose value as
/// written, `$(VAR)`, does not parse).
fn value_key(uwsgi: &str) -> Option<&'static str> {
    Some(match uwsgi {
        "processes" | "workers" => "workers",
        "threads" => "threads",
        "harakiri" => "timeout",
        "max-requests" => "max-requests",
        "max-worker-lifetime" => "max-lifetime",
        "reload-on-rss" | "evil-reload-on-rss" => "max-rss",
        "reload-mercy" | "worker-reload-mercy" => "graceful-timeout",
        "listen" => "listen-backlog",
        "buffer-size" => "buffer-size",
        "post-buffering" => "body-spool-threshold",
        "limit-post" => "max-body",
        "socket-timeout" => "read-timeout",
        "chmod-socket" | "chmod" => "socket-mode",
        "chown-socket" => "socket-owner",
        "umask" => "umask",
        _ => return None,
    })
}

/// Why a line that uWSGI makes at each start is not written by `postern migrate`, and
/// how to get the same at start. Says nothing of the value itself.
fn at_start_reason(e: &Entry, keys: &[String]) -> String {
    let what: Vec<String> = e
        .reads
        .iter()
        .map(|r| match r.as_str() {
            "%h" => "%h (the host's name)".to_owned(),
            "%k" => "%k (the CPU count)".to_owned(),
            "%v" => "%v (its working directory)".to_owned(),
            "%t" | "%T" => format!("{r} (the time)"),
            "%u" | "%U" | "%g" | "%G" => format!("{r} (the user it starts as)"),
            other => other.to_owned(),
        })
        .collect();
    let what = format!("uWSGI reads {} at each start", what.join(", "));
    let var = e
        .reads
        .iter()
        .find_map(|r| r.strip_prefix("$(")?.strip_suffix(')'))
        .map(|n| format!("; --var {n}=VALUE to migrate if it is the same everywhere"))
        .unwrap_or_default();
    if e.key == "env" {
        let name = e.value.split_once('=').map_or(e.value.as_str(), |(n, _)| n);
        if e.value == format!("{name}=$({name})") {
            return format!(
                "uWSGI passes the service's own {name} on to the app; postern does the same (the app inherits postern's environment): set {name} where postern starts (systemd Environment= or EnvironmentFile=), and nothing is needed here"
            );
        }
        return format!(
            "{what}: set {name} in the environment postern starts with (systemd Environment={name}=… or EnvironmentFile=; the app inherits it)"
        );
    }
    let vars: Vec<String> = keys
        .iter()
        .map(|k| format!("POSTERN_{}", k.to_ascii_uppercase().replace('-', "_")))
        .collect();
    if vars.is_empty() {
        return format!("{what}: write this host's value here by hand{var}");
    }
    format!(
        "{what}: set {} in the environment postern starts with (systemd Environment= or EnvironmentFile=; it wins over this file), or write this host's value here{var}",
        vars.join(" and ")
    )
}

/// Appends `text` as comment lines of at most about 90 columns.
fn wrap(out: &mut String, first: &str, rest: &str, text: &str) {
    const WIDTH: usize = 90;
    let mut line = first.to_owned();
    let mut empty = true;
    for word in text.split(' ') {
        if !empty && line.len() + 1 + word.len() > WIDTH {
            out.push_str(&line);
            out.push('\n');
            line = rest.to_owned();
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    out.push_str(&line);
    out.push('\n');
}

/// `FILE:LINE` for a report line about `e` (an included file's line names that file).
fn at_entry(source: &str, e: &Entry) -> String {
    match &e.file {
        Some(f) => format!("{f}:{}", e.line),
        None => at(source, e.line),
    }
}

/// `FILE:LINE` for a report line.
fn at(source: &str, line: usize) -> String {
    let file = split_source(source).0;
    format!("{}:{line}", file.display())
}

impl Translation {
    /// `FILE:LINE[,LINE…]`: where the value of a postern key came from (`env.NAME` for
    /// one `[env]` entry; `env` for all of them).
    pub fn origin(&self, key: &str) -> Option<String> {
        let lines: Vec<String> = self
            .lines
            .iter()
            .filter(|l| match &l.outcome {
                Outcome::Carried { keys, .. } => keys
                    .iter()
                    .any(|k| k == key || (key == "env" && k.starts_with("env."))),
                _ => false,
            })
            .map(|l| at_entry(&self.source, &l.entry))
            .collect();
        if lines.is_empty() {
            return None;
        }
        // `FILE:3,5` when every line is the file's own; each line with its file when
        // an included file's are among them.
        let file = split_source(&self.source).0;
        let prefix = format!("{}:", file.display());
        if lines.iter().all(|l| l.starts_with(&prefix)) {
            let numbers: Vec<&str> = lines.iter().map(|l| &l[prefix.len()..]).collect();
            return Some(format!("{prefix}{}", numbers.join(",")));
        }
        Some(lines.join(", "))
    }

    /// Hides the file's secrets in the messages that quote it ([`Hider`]).
    pub fn hider(&self) -> Hider {
        Hider::of(self.lines.iter().map(|l| &l.entry))
    }

    fn listing<'s>(&'s self, pick: impl Fn(&'s Outcome) -> Option<String>) -> Vec<String> {
        let hide = self.hider();
        self.lines
            .iter()
            .filter_map(|l| {
                pick(&l.outcome).map(|why| {
                    format!(
                        "  {}  {}: {}{}",
                        at_entry(&self.source, &l.entry),
                        hide.line(&l.entry),
                        hide.text(&why),
                        unknown_hint(&l.entry, &l.outcome)
                    )
                })
            })
            .collect()
    }

    /// `Err` with one message listing every refused line (and, under `strict`, every
    /// unknown one), each with what to do instead.
    pub fn check(&self) -> Result<(), IniError> {
        let mut bad = self.listing(|o| self.stops_on(o));
        if bad.is_empty() {
            return Ok(());
        }
        bad.insert(
            0,
            format!(
                "postern cannot run {} of [{}] as written (fix the file, or run `postern migrate {}` and edit the result):",
                if bad.len() == 1 { "this line" } else { "these lines" },
                self.section,
                self.source
            ),
        );
        let rest = self.warning_lines();
        if !rest.is_empty() {
            bad.push(
                "Once those are fixed, postern runs without these (a warning at start):".into(),
            );
            bad.extend(rest);
        }
        Err(IniError::Refused(bad.join("\n")))
    }

    /// Why `postern --ini` stops on a line, or `None`: the one rule behind [`Self::check`],
    /// [`Self::exit_code`] and migrate's REFUSED comments. A refused line, and under
    /// `strict` an unknown one too.
    fn stops_on(&self, o: &Outcome) -> Option<String> {
        match o {
            Outcome::Refused(why) => Some(why.clone()),
            Outcome::Unknown if self.strict => Some(
                "not an option postern knows, and the file sets strict (no equivalent, or misspelt)".into(),
            ),
            _ => None,
        }
    }

    /// `postern migrate`'s exit status: 0, or [`EXIT_REFUSED`] when `postern --ini` would
    /// stop on the file (the TOML is printed all the same), so a script sees that the
    /// file needs a hand.
    pub fn exit_code(&self) -> u8 {
        if self.refused() > 0 {
            EXIT_REFUSED
        } else {
            0
        }
    }

    /// How many lines `postern --ini` stops on.
    fn refused(&self) -> usize {
        self.lines
            .iter()
            .filter(|l| self.stops_on(&l.outcome).is_some())
            .count()
    }

    /// Refuses the lines that carried `key` over (`why`: the start-up's message), and
    /// drops what they carried that no other line carries.
    pub fn refuse_key(&mut self, key: &str, why: &str) {
        let carries = |o: &Outcome, k: &str| matches!(o, Outcome::Carried { keys, .. } if keys.iter().any(|x| x == k));
        let mut dropped = vec![key.to_owned()];
        for l in &mut self.lines {
            if carries(&l.outcome, key) {
                if let Outcome::Carried { keys, .. } = &l.outcome {
                    dropped.extend(keys.iter().cloned());
                }
                l.outcome = Outcome::Refused(why.to_owned());
            }
        }
        for k in dropped {
            if !self.lines.iter().any(|l| carries(&l.outcome, &k)) {
                self.table.remove(&k);
            }
        }
    }

    /// Marks the lines that carried `key` as naming a user or group this host does not
    /// have (`why`: the lookup's message). The value stays: it may exist on the host
    /// postern will run on, so migrate lists the lines under NEEDS ATTENTION and its
    /// exit status does not change for them.
    pub fn not_on_this_host(&mut self, key: &str, why: &str) {
        for (n, l) in self.lines.iter().enumerate() {
            if matches!(&l.outcome, Outcome::Carried { keys, .. } if keys.iter().any(|k| k == key))
            {
                self.not_here.push((n, why.to_owned()));
            }
        }
    }

    /// One line for `postern migrate` to print: how many lines went where.
    pub fn summary(&self) -> String {
        let count = |f: fn(&Outcome) -> bool| self.lines.iter().filter(|l| f(&l.outcome)).count();
        let mut parts = vec![format!(
            "{} option lines read from [{}]: {} carried over",
            self.lines.len(),
            self.section,
            count(|o| matches!(o, Outcome::Carried { .. }))
        )];
        for (n, what) in [
            (count(|o| matches!(o, Outcome::Accepted(_))), "not needed"),
            (count(|o| matches!(o, Outcome::Placeholder)), "placeholders"),
            (count(|o| matches!(o, Outcome::Ignored(_))), "ignored"),
            (
                count(|o| matches!(o, Outcome::Beside(_))),
                "run beside the app by uWSGI, not by postern (see NEEDS ATTENTION)",
            ),
            (
                count(|o| matches!(o, Outcome::Unknown)),
                if self.strict {
                    "unknown (the file sets strict: postern --ini stops on those)"
                } else {
                    "unknown"
                },
            ),
            (
                count(|o| matches!(o, Outcome::AtStart(_))),
                "read at each start by uWSGI (not written: see NEEDS ATTENTION)",
            ),
            (
                count(|o| matches!(o, Outcome::Refused(_))),
                "refused (postern --ini stops on those)",
            ),
        ] {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        }
        if !self.not_here.is_empty() {
            parts.push(format!(
                "{} naming a user or group this host does not have (see NEEDS ATTENTION)",
                self.not_here.len()
            ));
        }
        let mut out = format!("{}; the comments in the output say why", parts.join(", "));
        if self.refused() > 0 {
            let _ = write!(
                out,
                " (exit status {EXIT_REFUSED}: fix or remove the REFUSED lines before using it)"
            );
        }
        out
    }

    /// What runs differently though the file carried over, as one message to log at
    /// start (not as a warning), or `None`.
    pub fn info_message(&self) -> Option<String> {
        (!self.info.is_empty()).then(|| {
            format!(
                "{} [{}]: carried over; {}",
                self.source,
                self.section,
                self.hider().text(&self.info.join("; "))
            )
        })
    }

    /// One message listing what postern runs without (ignored and unknown lines, and
    /// differences worth knowing), or `None`.
    pub fn warnings(&self) -> Option<String> {
        let mut out = self.warning_lines();
        if out.is_empty() {
            return None;
        }
        out.insert(
            0,
            format!(
                "{} [{}]: not carried over as written:",
                self.source, self.section
            ),
        );
        Some(out.join("\n"))
    }

    fn warning_lines(&self) -> Vec<String> {
        let mut out = self.listing(|o| match o {
            Outcome::Ignored(why) => Some(format!("ignored: {why}")),
            Outcome::Beside(why) => Some(format!("not run: {why}")),
            Outcome::Unknown if !self.strict => Some(
                "unknown: not an option postern knows (it has no equivalent, or it is misspelt)"
                    .into(),
            ),
            Outcome::Carried {
                note: Some(n),
                warn: true,
                ..
            } => Some(n.clone()),
            _ => None,
        });
        let hide = self.hider();
        out.extend(self.notes.iter().map(|(line, n)| match line {
            0 => format!("  {}: {}", self.source, hide.text(n)),
            l => format!("  {}: {}", at(&self.source, *l), hide.text(n)),
        }));
        out
    }

    /// The equivalent `postern.toml`, each value under the ini line(s) it came from and
    /// every line that could not be carried over as a comment saying why.
    pub fn to_toml(&self) -> String {
        let hide = self.hider();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# postern configuration from the uWSGI file {} [{}], written by `postern migrate`.",
            self.source, self.section
        );
        let _ = writeln!(out, "# Use it with: postern --config postern.toml");
        if !self.notes.is_empty() || !self.info.is_empty() {
            let _ = writeln!(out, "#\n# Notes:");
            for n in &self.info {
                wrap(&mut out, "# - ", "#   ", &hide.text(n));
            }
            for (line, n) in &self.notes {
                match line {
                    0 => wrap(&mut out, "# - ", "#   ", &hide.text(n)),
                    l => wrap(
                        &mut out,
                        "# - ",
                        "#   ",
                        &hide.text(&format!("line {l}: {n}")),
                    ),
                }
            }
        }
        let at_start: Vec<&Line> = self
            .lines
            .iter()
            .filter(|l| matches!(l.outcome, Outcome::AtStart(_)))
            .collect();
        if !at_start.is_empty() {
            out.push_str("#\n");
            wrap(
                &mut out,
                "# NEEDS ATTENTION: ",
                "# ",
                "uWSGI makes these values each time it starts (from its environment, files, the host), so no value is written for them: a secret does not belong in this file, and a $(…) left as written would reach postern as it is. postern --ini reads the ini file at each start, as uWSGI does.",
            );
            for l in at_start {
                if let Outcome::AtStart(why) = &l.outcome {
                    let _ = writeln!(out, "# line {}: {}", l.entry.label(), hide.line(&l.entry));
                    wrap(&mut out, "#   ", "#   ", &hide.text(why));
                }
            }
        }
        let beside: Vec<&Line> = self
            .lines
            .iter()
            .filter(|l| matches!(l.outcome, Outcome::Beside(_)))
            .collect();
        if !beside.is_empty() {
            out.push_str("#\n");
            wrap(
                &mut out,
                "# NEEDS ATTENTION: ",
                "# ",
                "uWSGI ran these beside the app (a worker such as Celery's, a scheduled job); postern does not, so they stop running when you switch unless each gets a service of its own.",
            );
            for l in beside {
                if let Outcome::Beside(why) = &l.outcome {
                    let _ = writeln!(out, "# line {}: {}", l.entry.label(), hide.line(&l.entry));
                    wrap(&mut out, "#   ", "#   ", &hide.text(why));
                }
            }
        }
        if !self.not_here.is_empty() {
            out.push_str("#\n");
            wrap(&mut out, "# NEEDS ATTENTION: ", "# ", NOT_HERE);
            for (n, why) in &self.not_here {
                let l = &self.lines[*n];
                let _ = writeln!(out, "# line {}: {}", l.entry.label(), hide.line(&l.entry));
                wrap(&mut out, "#   ", "#   ", &hide.text(why));
            }
        }
        let comments = |out: &mut String, key: &str| {
            for l in &self.lines {
                if let Outcome::Carried { keys, note, .. } = &l.outcome {
                    if keys.iter().any(|k| k == key) {
                        let _ =
                            writeln!(out, "# line {}: {}", l.entry.label(), hide.line(&l.entry));
                        if let Some(n) = note {
                            wrap(out, "#   ", "#   ", &hide.text(n));
                        }
                    }
                }
            }
        };
        if !self.table.contains_key("app") {
            let refused = self.lines.iter().find(|l| {
                matches!(l.outcome, Outcome::Refused(_) | Outcome::AtStart(_))
                    && matches!(
                        l.entry.key.as_str(),
                        "module" | "wsgi" | "wsgi-file" | "file" | "mount"
                    )
            });
            let _ = match refused {
                Some(l) => writeln!(
                    out,
                    "\n# The app (line {}) could not be carried over (see {}): give it here (app = \"pkg.module:callable\") or on the command line.",
                    l.entry.label(),
                    if matches!(l.outcome, Outcome::AtStart(_)) { "above" } else { "below" }
                ),
                None => writeln!(
                    out,
                    "\n# The file names no module, wsgi-file or mount: give the app here (app = \"pkg.module:callable\") or on the command line."
                ),
            };
        }
        // Keys that came from the same lines (a mount: app and mount; logto: log-file and
        // access-log) are written together, under one copy of those lines.
        // By file and line: line 3 of an included file is not line 3 of the file given.
        // regression (probe 427): `processes` (inc/b2.ini:3) and `threads` (line 3)
        // were written together, `threads` without its own line's comment.
        let lines_of = |key: &str| -> Vec<(Option<&str>, usize)> {
            self.lines
                .iter()
                .filter(|l| matches!(&l.outcome, Outcome::Carried { keys, .. } if keys.iter().any(|k| k == key)))
                .map(|l| (l.entry.file.as_deref(), l.entry.line))
                .collect()
        };
        let mut written: BTreeSet<&str> = BTreeSet::new();
        for key in KEY_ORDER.iter().filter(|k| **k != "env") {
            if written.contains(key) || !self.table.contains_key(*key) {
                continue;
            }
            let origin = lines_of(key);
            out.push('\n');
            comments(&mut out, key);
            for k in KEY_ORDER.iter().filter(|k| **k != "env") {
                let same = *k == *key || (!written.contains(k) && lines_of(k) == origin);
                if let Some(v) = self.table.get(*k).filter(|_| same) {
                    let _ = writeln!(out, "{k} = {v}");
                    written.insert(k);
                }
            }
        }
        let dropped: Vec<&Line> = self
            .lines
            .iter()
            .filter(|l| {
                !matches!(
                    l.outcome,
                    Outcome::Carried { .. } | Outcome::AtStart(_) | Outcome::Beside(_)
                )
            })
            .collect();
        if !dropped.is_empty() {
            let _ = writeln!(out, "\n# Not carried over:");
            for l in dropped {
                let stops = self.stops_on(&l.outcome);
                let why = match &l.outcome {
                    _ if stops.is_some() => format!(
                        "REFUSED (postern --ini stops on this): {}{}",
                        stops.unwrap_or_default(),
                        unknown_hint(&l.entry, &l.outcome)
                    ),
                    Outcome::Accepted(w) if w.is_empty() => "not needed".to_owned(),
                    Outcome::Accepted(w) => format!("not needed: {w}"),
                    Outcome::Ignored(w) => format!("ignored: {w}"),
                    Outcome::Refused(_) => unreachable!("a refused line stops --ini"),
                    Outcome::Placeholder => "a placeholder, used in the values above".to_owned(),
                    Outcome::Unknown => format!(
                        "unknown: not an option postern knows (it has no equivalent, or it is misspelt){}",
                        unknown_hint(&l.entry, &l.outcome)
                    ),
                    Outcome::Carried { .. } | Outcome::AtStart(_) | Outcome::Beside(_) => {
                        unreachable!("filtered above")
                    }
                };
                let _ = writeln!(out, "# line {}: {}", l.entry.label(), hide.line(&l.entry));
                wrap(&mut out, "#   ", "#   ", &hide.text(&why));
            }
        }
        if let Some(toml::Value::Table(env)) = self.table.get("env") {
            let _ = writeln!(out, "\n[env]");
            for (k, v) in env {
                comments(&mut out, &format!("env.{k}"));
                let bare = !k.is_empty()
                    && k.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                let name = if bare {
                    k.clone()
                } else {
                    toml::Value::String(k.clone()).to_string()
                };
                let _ = writeln!(out, "{name} = {v}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
