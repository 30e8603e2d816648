//! uWSGI's options typed on postern's command line (`postern --socket :3031 --processes 4
//! --module app`): each is read by the same mapping as an ini line, so the error can say
//! what postern calls it (`--workers 4`), or why postern runs without it, instead of
//! clap's generic "unexpected argument" and a look-alike option of another meaning.

use std::fmt::Write as _;

use super::{Entry, Mapper, Outcome};

/// uWSGI's one-letter options and their long names (uWSGI's `--help`). postern's own
/// `-h` and `-V` are not here.
const SHORT: &[(char, &str)] = &[
    ('s', "socket"),
    ('p', "processes"),
    ('M', "master"),
    ('t', "harakiri"),
    ('b', "buffer-size"),
    ('H', "home"),
    ('w', "module"),
    ('T', "enable-threads"),
    ('C', "chmod-socket"),
    ('z', "socket-timeout"),
    ('l', "listen"),
    ('L', "disable-logging"),
    ('R', "max-requests"),
    ('d', "daemonize"),
    ('i', "single-interpreter"),
    ('Q', "spooler"),
    ('A', "sharedarea"),
    ('x', "xml"),
    ('y', "yaml"),
    ('j', "json"),
];

/// uWSGI's options that take no value (uWSGI's `--help`: the ones without `<...>`):
/// `--vacuum app` leaves `app` to postern.
const FLAGS: &[&str] = &[
    "master",
    "vacuum",
    "die-on-term",
    "enable-threads",
    "lazy-apps",
    "lazy",
    "single-interpreter",
    "need-app",
    "strict",
    "thunder-lock",
    "harakiri-verbose",
    "harakiri-no-arh",
    "memory-report",
    "disable-logging",
    "honour-stdin",
    "no-orphans",
    "auto-procname",
    "no-default-app",
    "manage-script-name",
    "catch-exceptions",
    "log-master",
    "threaded-logger",
    "log-reopen",
    "log-x-forwarded-for",
    "log-micros",
    "log-zero",
    "log-4xx",
    "log-5xx",
    "log-sendfile",
    "log-ioerror",
    "disable-write-exception",
    "ignore-sigpipe",
    "ignore-write-errors",
    "close-on-exec",
    "close-on-exec2",
    "reuse-port",
    "tcp-nodelay",
    "so-keepalive",
    "no-defer-accept",
    "cheap",
    "die-on-idle",
    "enable-metrics",
    "stats-http",
    "stats-minified",
    "reload-on-exception",
    "py-call-osafterfork",
    "skip-atexit",
    "skip-atexit-teardown",
    "no-server",
    "show-config",
    "dump-options",
    "vhost",
    "vhost-host",
    "http-auto-chunked",
    "http-auto-gzip",
    "http-websockets",
    "http-raw-body",
    "master-as-root",
    "freebind",
    "exit-on-reload",
    "disable-sendfile",
    "wsgi-disable-file-wrapper",
    "start-unsubscribed",
    "gevent-monkey-patch",
    "no-threads-wait",
    "enable-proxy-protocol",
    "cheaper-busyness-verbose",
    "spooler-ordered",
    "pcre-jit",
    "plugins-list",
    "loop-list",
    "ugreen",
    "cache-no-expire",
    "logformat-strftime",
];

/// uWSGI's options whose value may be left out (`--chmod-socket` is 666).
const OPTIONAL: &[&str] = &["chmod-socket", "log-date", "logdate", "http-keepalive"];

/// One uWSGI option found on the command line.
#[derive(Debug, Clone)]
pub struct Typed {
    /// As typed, with the value it took (`--processes 4`).
    pub text: String,
    /// The option as written (`--processes`, `-p`), as clap names an unknown one.
    pub flag: String,
    pub outcome: Outcome,
    /// postern's equivalent, when the line carries over (`--workers 4`; the app as `APP`).
    pub postern: Vec<String>,
    /// The index in the command line of the word it was typed in (`-Mp4` holds two).
    pub arg: usize,
    /// Its value is the next word (`-p 4`).
    pub took_next: bool,
}

/// An option as [`uwsgi_options`] reads it, before its value is settled.
struct Found {
    /// As typed (`--processes`, `-p`).
    flag: String,
    /// uWSGI's long name.
    key: String,
    /// The value typed with `=` or glued (`-p4`).
    inline: Option<String>,
    /// The next argument, which may be its value.
    next: Option<String>,
    /// The index of the word it is in.
    arg: usize,
}

impl Found {
    fn new(
        flag: String,
        key: &str,
        inline: Option<String>,
        next: Option<String>,
        arg: usize,
    ) -> Found {
        Found {
            flag,
            key: key.to_owned(),
            inline,
            next,
            arg,
        }
    }
}

/// The uWSGI options among `args` (the whole command line, program name first), and the
/// other long options that are not postern's (`ours` says whether a long option name,
/// without `--`, is postern's). Options the mapping does not know (a typo of postern's
/// own) are in the second list: clap's message is the right one for them. A
/// subcommand's arguments are not looked at.
pub fn uwsgi_options(args: &[String], ours: impl Fn(&str) -> bool) -> (Vec<Typed>, Vec<String>) {
    let mut found: Vec<Found> = Vec::new();
    let mut others = Vec::new();
    let mut i = 1;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if a == "--" {
            break;
        }
        // A value may begin with '-' when it is no option: uWSGI's cron `-1 -1 -1 -1 -1 CMD`.
        let next = args
            .get(i)
            .filter(|n| {
                !n.starts_with('-')
                    || n.as_str() == "-"
                    || n.contains(char::is_whitespace)
                    || n.parse::<i64>().is_ok()
            })
            .cloned();
        if let Some(long) = a.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (long, None),
            };
            // postern's `--mount` given uWSGI's MOUNTPOINT=APP is uWSGI's.
            let value = inline.as_deref().or(next.as_deref());
            let uwsgi_mount = name == "mount" && value.is_some_and(is_uwsgi_mount);
            // clap's own, not among `ours`' arguments.
            if name.is_empty() || matches!(name, "help" | "version") || ours(name) && !uwsgi_mount {
                continue;
            }
            let next = if inline.is_some() { None } else { next };
            found.push(Found::new(format!("--{name}"), name, inline, next, i - 1));
        } else if let Some(short) = a.strip_prefix('-') {
            // Grouped as getopt (uWSGI's parser) groups them: flags that take no value
            // (`-M`), then at most one option whose value is the rest of the word or
            // the next argument (`-Mp4`, `-M -p4`, `-Mp 4`).
            // regression: `-Mp4` read "p4" as the value of `-M`, and `-p` was lost.
            let mut rest = short;
            while let Some(c) = rest.chars().next() {
                rest = &rest[c.len_utf8()..];
                let Some((_, key)) = SHORT.iter().find(|(s, _)| *s == c) else {
                    if !matches!(c, 'h' | 'V') {
                        others.push(format!("-{c}"));
                    }
                    break;
                };
                if FLAGS.contains(key) && !rest.is_empty() {
                    let flag = format!("-{c}");
                    found.push(Found::new(flag, key, Some(String::new()), None, i - 1));
                    continue;
                }
                let (inline, next) = if rest.is_empty() {
                    (None, next.clone())
                } else {
                    (Some(rest.trim_start_matches('=').to_owned()), None)
                };
                found.push(Found::new(format!("-{c}"), key, inline, next, i - 1));
                break;
            }
        } else if i == 2 && ["request", "bench", "migrate", "status", "help"].contains(&a.as_str())
        {
            return (Vec::new(), Vec::new());
        }
    }
    if found.is_empty() {
        return (Vec::new(), others);
    }
    // Whether an option takes the next argument, as uWSGI's own parser decides: from the
    // option, not from what postern does with it (`--plugin python3` is ignored whatever
    // the value, and the value must go with it). uWSGI's flags (`--vacuum app`) take none;
    // an option with an optional value (`--chmod-socket [MODE]`) takes a boolean word or
    // one that carries over as something else than the option alone (`--chmod-socket
    // 660`); any other takes it, unless it works without a value and the next argument
    // looks like the app (`module:callable`, `file.py`).
    let one = |key: &str, value: &str| -> Typed {
        let entries = [entry(0, key, value, "")];
        map(&entries).remove(0)
    };
    let takes = |key: &str, next: &str| -> Option<bool> {
        let as_value = one(key, next);
        if matches!(as_value.outcome, Outcome::Unknown | Outcome::Placeholder) {
            return None;
        }
        let boolean = matches!(
            next.to_ascii_lowercase().as_str(),
            "true" | "false" | "on" | "off" | "yes" | "no" | "0" | "1"
        );
        if FLAGS.contains(&key) {
            return Some(boolean);
        }
        let as_flag = one(key, "");
        if OPTIONAL.contains(&key) {
            let carried_as_itself = matches!(as_value.outcome, Outcome::Carried { note: None, .. })
                && (as_value.outcome != as_flag.outcome || as_value.postern != as_flag.postern);
            return Some(boolean || carried_as_itself);
        }
        let looks_like_app = next.contains(':') || next.ends_with(".py");
        Some(matches!(as_flag.outcome, Outcome::Refused(_)) || !looks_like_app)
    };
    let mut entries = Vec::new();
    let mut took_next = vec![false; found.len()];
    for (
        n,
        Found {
            flag,
            key,
            inline,
            next,
            ..
        },
    ) in found.iter().enumerate()
    {
        let value = match (inline, next) {
            (Some(v), _) => v.clone(),
            (None, Some(next)) => match takes(key, next) {
                None => {
                    others.push(flag.clone());
                    continue;
                }
                Some(true) => {
                    took_next[n] = true;
                    next.clone()
                }
                Some(false) => String::new(),
            },
            (None, None) => String::new(),
        };
        let text = match (inline, value.is_empty()) {
            (Some(v), _) if flag.starts_with("--") => format!("{flag}={v}"),
            (Some(v), _) => format!("{flag}{v}"),
            (None, true) => flag.clone(),
            (None, false) => format!("{flag} {}", quoted(&value)),
        };
        entries.push(entry(n, key, &value, &text));
    }
    let flags: Vec<String> = found.iter().map(|f| f.flag.clone()).collect();
    let mut typed = Vec::new();
    for (mut t, e) in map(&entries).into_iter().zip(&entries) {
        if matches!(t.outcome, Outcome::Unknown | Outcome::Placeholder) {
            others.push(flags[e.line].clone());
        } else {
            t.flag = flags[e.line].clone();
            t.arg = found[e.line].arg;
            t.took_next = took_next[e.line];
            typed.push(t);
        }
    }
    (typed, others)
}

pub(super) fn entry(n: usize, key: &str, value: &str, text: &str) -> Entry {
    Entry {
        line: n,
        text: text.to_owned(),
        key: key.to_owned(),
        value: value.to_owned(),
        reads: Default::default(),
        file: None,
    }
}

/// Maps the options as the lines of one section (so `--callable` joins `--module`).
fn map(entries: &[Entry]) -> Vec<Typed> {
    let placeholders = Default::default();
    let mut m = Mapper::new(entries, &placeholders, "uwsgi");
    m.command_line = true;
    // Named as typed here: postern's own option.
    m.first_socket = entries.iter().find_map(|e| {
        let flag = match e.key.as_str() {
            "socket" | "uwsgi-socket" => "uwsgi",
            "fastcgi-socket" => "fastcgi",
            "scgi-socket" => "scgi",
            _ => return None,
        };
        let (addr, _) = super::listen_addr(&e.value).ok()?;
        Some(format!("--{flag} {addr}"))
    });
    for (i, e) in entries.iter().enumerate() {
        let outcome = m.map(i, e);
        m.lines.push(super::Line {
            entry: e.clone(),
            outcome,
        });
    }
    m.finish();
    m.lines
        .iter()
        .map(|l| Typed {
            text: l.entry.text.clone(),
            flag: String::new(),
            postern: match &l.outcome {
                Outcome::Carried { keys, .. } => {
                    let mut words: Vec<String> = keys
                        .iter()
                        .flat_map(|k| postern_flags(&m.table, k))
                        .collect();
                    // As a command line says them: options, then the app.
                    words.sort_by_key(|w| !w.starts_with("--"));
                    words
                }
                _ => Vec::new(),
            },
            outcome: l.outcome.clone(),
            arg: 0,
            took_next: false,
        })
        .collect()
}

/// `key`'s value in the table as postern's command-line options.
fn postern_flags(table: &toml::Table, key: &str) -> Vec<String> {
    if let Some(name) = key.strip_prefix("env.") {
        let value = table
            .get("env")
            .and_then(|e| e.get(name))
            .and_then(toml::Value::as_str)
            .unwrap_or_default();
        return vec![format!("--env {}", quoted(&format!("{name}={value}")))];
    }
    let one = |v: &toml::Value| match v {
        toml::Value::String(s) => quoted(s),
        other => other.to_string(),
    };
    match table.get(key) {
        Some(v) if key == "app" => vec![one(v)],
        Some(toml::Value::Boolean(true)) => vec![format!("--{key}")],
        Some(toml::Value::Array(a)) => a.iter().map(|v| format!("--{key} {}", one(v))).collect(),
        Some(v) => vec![format!("--{key} {}", one(v))],
        None => Vec::new(),
    }
}

/// `s` as a shell word.
pub fn quoted(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@,+%".contains(&b));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The message for the uWSGI options found: one line each, then the command line that
/// does the same when every one of them carries over or is not needed and there is no
/// `other` unknown option. `similar` names postern's option closest to an unknown one
/// (clap's suggestion), if any is close.
pub fn explain(
    typed: &[Typed],
    others: &[String],
    args: &[String],
    similar: impl Fn(&str) -> Option<String>,
    arity: impl Fn(&str) -> Option<Arity>,
) -> String {
    let mut out = String::new();
    for t in typed {
        let _ = match &t.outcome {
            Outcome::Carried { note, .. } => {
                let app = t.postern.iter().any(|p| !p.starts_with("--"));
                let mut line = format!(
                    "`{}` is uWSGI's: postern says `{}`",
                    t.text,
                    t.postern.join(" ")
                );
                if app {
                    line.push_str(" (the app is postern's argument: `postern [OPTIONS] APP`)");
                }
                if let Some(n) = note {
                    let _ = write!(line, "; {n}");
                }
                writeln!(out, "{line}")
            }
            Outcome::Accepted(why) if why.is_empty() => {
                writeln!(out, "`{}` is uWSGI's: postern does not need it", t.text)
            }
            Outcome::Accepted(why) => writeln!(
                out,
                "`{}` is uWSGI's: postern does not need it: {why}",
                t.text
            ),
            Outcome::Ignored(why) | Outcome::Beside(why) => writeln!(
                out,
                "`{}` is uWSGI's: postern has no such option; {why}",
                t.text
            ),
            Outcome::Refused(why) | Outcome::AtStart(why) => {
                writeln!(out, "`{}` is uWSGI's: postern cannot do it; {why}", t.text)
            }
            Outcome::Placeholder | Outcome::Unknown => Ok(()),
        };
    }
    // regression: a misspelt option of postern's beside a uWSGI one (`--socket :3031
    // --workrs 4`) lost clap's "a similar argument exists: '--workers'".
    for o in others {
        let _ = match similar(o) {
            Some(s) => writeln!(
                out,
                "`{o}` is neither postern's option nor a uWSGI option postern knows; a similar option exists: `{s}`"
            ),
            None => writeln!(
                out,
                "`{o}` is neither postern's option nor a uWSGI option postern knows"
            ),
        };
    }
    if let Some((line, again)) = rewritten(typed, args, arity).filter(|_| others.is_empty()) {
        for a in again {
            let _ = writeln!(out, "{a}");
        }
        let _ = writeln!(out, "the same with postern: {line}");
    }
    out.push_str("postern's options: postern --help; a whole uWSGI ini file: postern --ini FILE (README 'Migrating from uWSGI')");
    out
}

/// `args` with each uWSGI option replaced by postern's, or `None` when one of them cannot
/// be (refused), or nothing would be left to say; with [`last_wins`]' lines.
fn rewritten(
    typed: &[Typed],
    args: &[String],
    arity: impl Fn(&str) -> Option<Arity>,
) -> Option<(String, Vec<String>)> {
    if typed
        .iter()
        .any(|t| matches!(t.outcome, Outcome::Refused(_) | Outcome::AtStart(_)))
    {
        return None;
    }
    let mut out = vec!["postern".to_owned()];
    let mut app = Vec::new();
    let (mut positional, mut prev, mut skip) = (false, None::<&String>, None);
    for (n, a) in args.iter().enumerate().skip(1) {
        if skip == Some(n) {
            continue;
        }
        let here: Vec<&Typed> = typed.iter().filter(|t| t.arg == n).collect();
        if here.is_empty() {
            // postern's APP: after the program, a uWSGI option, a value or `--x=v`, or
            // what looks like one after one of postern's options.
            positional |= !a.starts_with('-')
                && prev.is_none_or(|p| !p.starts_with('-') || p.contains('='))
                || a.contains(':')
                || a.ends_with(".py");
            prev = Some(a);
            out.push(quoted(a));
            continue;
        }
        prev = None;
        for t in here {
            if t.took_next {
                skip = Some(n + 1);
            }
            for p in &t.postern {
                if p.starts_with("--") {
                    if !out.contains(p) {
                        out.push(p.clone());
                    }
                } else {
                    app = vec![p.clone()];
                }
            }
        }
    }
    let from_file = args.iter().any(|a| {
        ["--config", "--ini"]
            .iter()
            .any(|f| a == f || a.starts_with(&format!("{f}=")))
    });
    // A command without the app would only fail again.
    if app.is_empty() && !positional && !from_file && std::env::var_os("POSTERN_APP").is_none() {
        return None;
    }
    let (mut out, again) = last_wins(&out, arity);
    out.extend(app);
    Some((out.join(" "), again))
}

/// How one of postern's long options takes values (from clap, which this module does
/// not see).
#[derive(Debug, Clone, Copy)]
pub struct Arity {
    /// `--workers 4`, not a switch (`--master`).
    pub takes_value: bool,
    /// `--uwsgi A --uwsgi B` adds; any other option may be given once.
    pub repeatable: bool,
}

/// `words` (a command line, its options as `--name VALUE`, `--name=VALUE` or two words)
/// with each option postern takes once (`arity` says which) kept at its last place
/// only: the last value wins, as uWSGI's own parser (each `-p` sets the process count
/// again) and gunicorn's (argparse) have it, where postern refuses the option given
/// twice. A line for each value that a later one replaced. regression: `-Mp4 -w 4`
/// (uWSGI's processes, gunicorn's workers) suggested `--workers 4 --workers 4`.
pub fn last_wins(
    words: &[String],
    arity: impl Fn(&str) -> Option<Arity>,
) -> (Vec<String>, Vec<String>) {
    // (option name, its value as written, its words)
    let mut items: Vec<(Option<String>, String, Vec<String>)> = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = &words[i];
        i += 1;
        let Some(long) = w.strip_prefix("--").filter(|l| !l.is_empty()) else {
            items.push((None, String::new(), vec![w.clone()]));
            continue;
        };
        let (name, value) = match long.split_once([' ', '=']) {
            Some((n, v)) => (n, v.to_owned()),
            None => (long, String::new()),
        };
        let Some(a) = arity(name).filter(|a| !a.repeatable) else {
            items.push((None, String::new(), vec![w.clone()]));
            continue;
        };
        let mut taken = vec![w.clone()];
        let mut value = value;
        if a.takes_value && value.is_empty() && long == name {
            if let Some(v) = words.get(i) {
                value = v.clone();
                taken.push(v.clone());
                i += 1;
            }
        }
        items.push((Some(name.to_owned()), value, taken));
    }
    let mut again = Vec::new();
    let mut kept = Vec::new();
    for (n, (name, value, taken)) in items.iter().enumerate() {
        let later = name.as_ref().and_then(|name| {
            items[n + 1..]
                .iter()
                .rev()
                .find(|(other, _, _)| other.as_ref() == Some(name))
        });
        match later {
            Some((_, last, last_words)) if last != value => again.push(format!(
                "`{}` and `{}` set the same option: the last wins (as in uWSGI and gunicorn)",
                taken.join(" "),
                last_words.join(" ")
            )),
            Some(_) => {}
            None => kept.extend(taken.iter().cloned()),
        }
    }
    (kept, again)
}

/// Whether a `--mount` value is uWSGI's MOUNTPOINT=APP (`/app=app.py`,
/// `/app=pkg.wsgi:application`) rather than postern's URL prefix: an app after the `=`
/// as uWSGI names one (a `.py` or `.wsgi` file, `dotted.module[:callable]`, or a bare
/// module name with its `NAME.py` or `NAME/` package in the working directory).
/// regression (review2 LOW): `--mount /v1=beta`, a legal prefix, was refused.
pub fn is_uwsgi_mount(value: &str) -> bool {
    let Some((prefix, app)) = value.split_once('=') else {
        return false;
    };
    let ident = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_alphanumeric() || c == '_');
    let (module, callable) = app.split_once(':').unwrap_or((app, "application"));
    let named = module.split('.').all(ident) && callable.split('.').all(ident);
    let bare = !app.contains([':', '.']);
    let exists = || {
        std::path::Path::new(&format!("{app}.py")).is_file()
            || std::path::Path::new(app).join("__init__.py").is_file()
    };
    prefix.starts_with('/')
        && (app.ends_with(".py") || app.ends_with(".wsgi") || (named && (!bare || exists())))
}

/// postern's command-line words for the uWSGI option `key` with `value` (`mount`,
/// `/app=app.py`: `--mount /app` and `./app.py`), when it carries over.
pub fn postern_words(key: &str, value: &str) -> Option<Vec<String>> {
    let t = map(&[entry(0, key, value, "")]).remove(0);
    matches!(t.outcome, Outcome::Carried { .. }).then_some(t.postern)
}

/// What postern calls the uWSGI option `key` (with `value`), said in a few words for a
/// `--config` key it does not know (`processes` → "uWSGI's processes: postern's key is
/// workers"); `None` when the mapping does not know it.
pub fn config_key_hint(key: &str, value: &str) -> Option<String> {
    let t = map(&[entry(0, key, value, "")]).remove(0);
    Some(match t.outcome {
        Outcome::Carried { keys, .. } => {
            let keys: Vec<&str> = keys
                .iter()
                .map(|k| k.split('.').next().unwrap_or(k))
                .collect();
            format!("uWSGI's {key}: postern's key is {}", keys.join(" and "))
        }
        Outcome::Accepted(_) => format!("uWSGI's {key}: postern does not need it"),
        Outcome::Ignored(why) | Outcome::Refused(why) | Outcome::Beside(why) => {
            format!("uWSGI's {key}: {why}")
        }
        Outcome::AtStart(_) | Outcome::Placeholder | Outcome::Unknown => return None,
    })
}
