//! A reload (SIGHUP, `--touch-reload`) reads the configuration again, as gunicorn's HUP
//! and PHP-FPM's reload do: the layers as the start read them (the same command line,
//! `POSTERN_*` as at the start, the `--config` and `--ini` files, relative paths from
//! the start's directory), checked as a start checks them ([`Config::resolve`]).
//!
//! - Invalid: the reload is refused, one ERROR line with the error (file, key, reason);
//!   the workers serve on and nothing changes.
//! - Valid: the new generation of workers runs it. What a new worker takes (the app,
//!   its threads, limits and timeouts, `--workers` as the new generation's size, ...)
//!   is applied, each change named in one INFO line; what only a restart can change
//!   ([`RESTART_ONLY`]: the listeners, ids, files the master opened, Python's start)
//!   keeps the value the workers run, named in one WARN line.
//! - Not readable any more by the uid postern runs as after `--uid` (a 0600 root file
//!   read at the start): one WARN line, and the reload runs the settings it had.
//!
//! Pure configuration: the master applies what [`at_reload`] returns through main.

use std::collections::BTreeSet;

use super::{Config, ConfigError, Layered};

/// The settings a reload does not apply, and why: they are used once, at the start,
/// by the master (binding, dropping privileges, opening files, starting Python).
pub const RESTART_ONLY: &[(&str, &str)] = &[
    ("uwsgi", "the listeners are bound once"),
    ("fastcgi", "the listeners are bound once"),
    ("scgi", "the listeners are bound once"),
    ("socket-mode", "the listeners are bound once"),
    ("socket-owner", "the listeners are bound once"),
    ("umask", "the umask is set once, at the start"),
    ("listen-backlog", "the listeners are bound once"),
    ("stats", "the --stats endpoint is bound once"),
    ("uid", "privileges are dropped once"),
    ("gid", "privileges are dropped once"),
    ("pidfile", "the pidfile is written once"),
    ("venv", "Python starts once, in the master"),
    ("master", "the master runs from the start"),
    ("preload", "the master imports the app at start or never"),
    ("touch-reload", "the master watches its file from the start"),
    ("log-file", "the logs are opened once"),
    ("log-format", "the logs are opened once"),
    ("access-log-format", "the logs are opened once"),
];

/// The variables CPython reads as it starts (once, in the master): a reload cannot
/// change what they did. Those it reads while it runs (`PYTHONBREAKPOINT`,
/// `PYTHONASYNCIODEBUG`) and an app's own (`PYTHON_ENV`) are not among them.
const PYTHON_AT_START: &[&str] = &[
    "PYTHONHOME",
    "PYTHONPATH",
    "PYTHONSAFEPATH",
    "PYTHONPLATLIBDIR",
    "PYTHONOPTIMIZE",
    "PYTHONDEBUG",
    "PYTHONINSPECT",
    "PYTHONUNBUFFERED",
    "PYTHONVERBOSE",
    "PYTHONCASEOK",
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONPYCACHEPREFIX",
    "PYTHONHASHSEED",
    "PYTHONIOENCODING",
    "PYTHONNOUSERSITE",
    "PYTHONUSERBASE",
    "PYTHONWARNINGS",
    "PYTHONFAULTHANDLER",
    "PYTHONTRACEMALLOC",
    "PYTHONPROFILEIMPORTTIME",
    "PYTHONMALLOC",
    "PYTHONMALLOCSTATS",
    "PYTHONUTF8",
    "PYTHONCOERCECLOCALE",
    "PYTHONDEVMODE",
    "PYTHONWARNDEFAULTENCODING",
    "PYTHONNODEBUGRANGES",
    "PYTHONINTMAXSTRDIGITS",
    "PYTHONEXECUTABLE",
    "PYTHONPERFSUPPORT",
    "PYTHON_GIL",
    "PYTHON_CPU_COUNT",
    "PYTHON_FROZEN_MODULES",
    "PYTHON_PERF_JIT_SUPPORT",
    "PYTHON_JIT",
    "PYTHON_PRESITE",
];

/// Variables of `[env]`/`--env` whose change only a restart applies: CPython's start
/// ones ([`PYTHON_AT_START`]), and malloc's arena cap the master sets at its start
/// (`MALLOC_ARENA_MAX`, `GLIBC_TUNABLES`).
// regression (review 387): every PYTHON* name was taken for Python's (an app's
// PYTHON_ENV stopped reaching the new workers).
fn restart_only_env(name: &str) -> bool {
    PYTHON_AT_START.contains(&name) || name == "MALLOC_ARENA_MAX" || name == "GLIBC_TUNABLES"
}

/// With `--preload` the master imported the app: what the import used stays.
const PRELOADED: &[&str] = &["app", "chdir", "pythonpath", "env", "interface"];

/// What a generation's settings were read as: the merged layers' values (before
/// [`Config::resolve`] made paths absolute), to tell what the next reload changes.
#[derive(Debug, Clone, Default)]
pub struct Layers {
    values: toml::Table,
    off: BTreeSet<String>,
    /// What the `--ini` file asked that postern runs without (said at the start, and
    /// at a reload that reads other such lines).
    ini_warnings: Option<String>,
}

impl Layers {
    pub fn of(layered: &Layered) -> Layers {
        Layers {
            values: layered.values.clone(),
            off: layered.off.clone(),
            ini_warnings: layered.ini_warnings.clone(),
        }
    }

    /// `key`'s value as said in the log: a number as a number (30 in the file is the
    /// default 30.0), `off` for a limit switched off, `not set`.
    fn said(&self, key: &str) -> String {
        // A mode as the mode it reads as: `27`, `"027"` and `0o27` are one umask.
        // regression (review 408 L5): a reload said `umask (27 -> "027")` changed.
        if matches!(key, "umask" | "socket-mode") {
            let text = match self.values.get(key) {
                Some(toml::Value::Integer(i)) => Some(i.to_string()),
                Some(toml::Value::String(t)) => Some(t.clone()),
                _ => None,
            };
            if let Some(m) = text.and_then(|t| t.parse::<super::Mode>().ok()) {
                return m.to_string();
            }
        }
        match self.values.get(key) {
            Some(toml::Value::Integer(i)) => (*i as f64).to_string(),
            Some(toml::Value::Float(f)) => f.to_string(),
            Some(v) => v.to_string(),
            None if self.off.contains(key) => "off".to_owned(),
            None => "not set".to_owned(),
        }
    }

    /// What changed in `key` from `self` to `now`, as said in the log; `None`: nothing.
    /// A table (`[env]`) is said by its names only, `env (SECRET_KEY changed, DEBUG
    /// added, TZ removed)`: its values are often secrets (a database password, an API
    /// key), and the log is read by more people than the configuration file.
    /// regression: the whole table was printed, values and all, in the INFO line of
    /// the applied changes and the WARN line of the restart-only ones.
    fn change(&self, now: &Layers, key: &str) -> Option<String> {
        let table = |l: &Layers| match l.values.get(key) {
            Some(toml::Value::Table(t)) => Some(t.clone()),
            _ => None,
        };
        let (was_t, is_t) = (table(self), table(now));
        if was_t.is_some() || is_t.is_some() {
            let (was_t, is_t) = (was_t.unwrap_or_default(), is_t.unwrap_or_default());
            let (mut changed, mut added) = (Vec::new(), Vec::new());
            for (name, v) in &is_t {
                match was_t.get(name) {
                    Some(w) if w == v => {}
                    Some(_) => changed.push(format!("{name} changed")),
                    None => added.push(format!("{name} added")),
                }
            }
            let removed = was_t
                .keys()
                .filter(|n| !is_t.contains_key(*n))
                .map(|n| format!("{n} removed"));
            let names: Vec<String> = changed.into_iter().chain(added).chain(removed).collect();
            return (!names.is_empty()).then(|| format!("{key} ({})", names.join(", ")));
        }
        let (was, is) = (self.said(key), now.said(key));
        (was != is).then(|| format!("{key} ({was} -> {is})"))
    }

    /// These layers with only the `env` table's variables that `restart`
    /// ([`restart_only_env`]) or not.
    fn env_part(&self, restart: bool) -> Layers {
        let mut part = Layers::default();
        if let Some(toml::Value::Table(t)) = self.values.get("env") {
            let t: toml::Table = t
                .iter()
                .filter(|(k, _)| restart_only_env(k) == restart)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            part.values.insert("env".to_owned(), toml::Value::Table(t));
        }
        part
    }

    /// The `env` variables only a restart changes, as `from` has them.
    fn keep_restart_only_env(&mut self, from: &Layers) {
        let mut t = match self.values.remove("env") {
            Some(toml::Value::Table(t)) => t,
            _ => toml::Table::new(),
        };
        t.retain(|k, _| !restart_only_env(k));
        if let Some(toml::Value::Table(f)) = from.values.get("env") {
            for (k, v) in f.iter().filter(|(k, _)| restart_only_env(k)) {
                t.insert(k.clone(), v.clone());
            }
        }
        if !t.is_empty() || from.values.contains_key("env") {
            self.values.insert("env".to_owned(), toml::Value::Table(t));
        }
    }

    /// `key` as `from` has it.
    fn keep(&mut self, from: &Layers, key: &str) {
        match from.values.get(key) {
            Some(v) => self.values.insert(key.to_owned(), v.clone()),
            None => self.values.remove(key),
        };
        if from.off.contains(key) {
            self.off.insert(key.to_owned());
        } else {
            self.off.remove(key);
        }
    }
}

/// What the new generation of a reload runs.
pub enum Next {
    /// This configuration (what only a restart applies kept as the serving generation
    /// has it); `changed`: a setting differs from the serving generation's.
    Apply {
        config: Box<Config>,
        layers: Layers,
        changed: bool,
    },
    /// The configuration is invalid (said in one ERROR line): the reload is refused.
    Refused,
}

/// Why the layers could not be read again.
enum Unread {
    /// Not readable as the uid postern runs as now (after `--uid`).
    Denied(String),
    Invalid(String),
}

/// Reads the layers again as the start did (see [`super::AT_START`]).
fn read_again() -> Result<Layered, Unread> {
    use clap::FromArgMatches as _;
    let start = super::AT_START.get();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let matches = super::start_command()
        .try_get_matches_from(&args)
        .map_err(|e| Unread::Invalid(e.to_string().trim().to_owned()))?;
    let mut cli =
        super::Cli::from_arg_matches(&matches).map_err(|e| Unread::Invalid(e.to_string()))?;
    if let Some(cwd) = start.and_then(|s| s.cwd.as_ref()) {
        cli.config = cli.config.map(|p| cwd.join(p));
    }
    // The --ini files keep the names the start gave them (their lines' labels, `%o`):
    // the ini reader takes a relative one from the start directory itself.
    // regression (probe 407, review 409): made absolute here, an unchanged file's
    // WARN came again at the first reload by the absolute path, and `%o` changed.
    Layered::merge(&cli, &matches).map_err(|e| {
        let denied = matches!(&e, ConfigError::Read { source, .. }
            if source.kind() == std::io::ErrorKind::PermissionDenied);
        // regression: under --uid the master reads as that user at a reload, so a
        // 0600 root-owned --config read at the start was said to be broken.
        if denied || e.to_string().contains("Permission denied") {
            Unread::Denied(e.to_string())
        } else {
            Unread::Invalid(e.to_string())
        }
    })
}

/// At a reload: reads the configuration again and says what the new generation runs,
/// given the serving generation's `current` configuration (read as `layers`).
/// `preloaded`: `--preload` imported the app in the master. `thread_room`: the most
/// `--threads` a worker slot of the scoreboard has lines for (made at the start).
pub fn at_reload(current: &Config, layers: &Layers, preloaded: bool, thread_room: usize) -> Next {
    let read = read_again().and_then(|mut l| {
        skip_unchanged_lookups(&mut l, layers);
        let virtual_env = super::AT_START.get().and_then(|s| s.virtual_env.clone());
        let config =
            Config::resolve(&l, virtual_env).map_err(|e| Unread::Invalid(e.to_string()))?;
        Ok((l, config))
    });
    let (layered, mut next) = match read {
        Ok(v) => v,
        Err(Unread::Invalid(e)) => {
            tracing::error!(
                error = %e,
                "reload refused: the configuration is invalid; the workers serve on with the settings they run, nothing changes"
            );
            return Next::Refused;
        }
        Err(Unread::Denied(e)) => {
            tracing::warn!(
                error = %e.trim(),
                uid = rustix::process::geteuid().as_raw(),
                "the configuration cannot be read again at this reload (postern runs as this uid now, after --uid; the start read it before dropping privileges), so whether it changed is not known: the reload goes on with the settings the workers run; restart postern to apply a change"
            );
            // The serving generation's level: a reload during this one may have
            // switched the master to its own.
            set_level(&current.opts.log_level);
            crate::logging::set_access_log(&current.opts.access_log);
            return Next::Apply {
                config: Box::new(current.clone()),
                layers: layers.clone(),
                changed: false,
            };
        }
    };
    let mut new_layers = Layers::of(&layered);
    let keys: BTreeSet<String> = layers
        .values
        .keys()
        .chain(new_layers.values.keys())
        .chain(&layers.off)
        .chain(&new_layers.off)
        .cloned()
        .collect();
    let threads_over = next.opts.threads > thread_room;
    // --access-log: off, or back to the target opened at the start, is applied (see
    // keep_restart_only); another target needs a restart.
    let access_kept = !crate::logging::access_log_reloadable(&next.opts.access_log);
    let mut applied = Vec::new();
    let mut kept = Vec::new();
    for key in keys {
        // The variables Python or malloc read as postern starts are said apart, as a
        // restart's to apply. regression (probe 385): `PYTHONPATH added` was said
        // applied, and the new workers' sys.path did not have it.
        if key == "env" && !preloaded {
            let part = |restart| {
                layers
                    .env_part(restart)
                    .change(&new_layers.env_part(restart), "env")
            };
            applied.extend(part(false));
            kept.extend(part(true));
            continue;
        }
        let Some(change) = layers.change(&new_layers, &key) else {
            continue;
        };
        let restart = RESTART_ONLY.iter().any(|(k, _)| *k == key)
            || (preloaded && PRELOADED.contains(&key.as_str()))
            || (key == "access-log" && access_kept);
        if restart {
            kept.push(change);
        } else if key == "threads" && threads_over {
            let (was, is) = (layers.said(&key), new_layers.said(&key));
            kept.push(format!(
                "threads ({was} -> {is}: over the {thread_room} a worker's scoreboard slot was made for at the start)"
            ));
        } else {
            applied.push(change);
        }
    }
    keep_restart_only(&mut next, current, preloaded, thread_room);
    for (key, _) in RESTART_ONLY {
        new_layers.keep(layers, key);
    }
    if preloaded {
        for key in PRELOADED {
            new_layers.keep(layers, key);
        }
    } else {
        new_layers.keep_restart_only_env(layers);
    }
    if threads_over {
        new_layers.keep(layers, "threads");
    }
    if access_kept {
        new_layers.keep(layers, "access-log");
    }
    // As at the start, when the --ini file's lines postern runs without are others now.
    // regression: a reload read them and said nothing.
    if new_layers.ini_warnings != layers.ini_warnings {
        if let Some(w) = &new_layers.ini_warnings {
            tracing::warn!("{w}");
        }
    }
    // --log-level: the master logs at the new level from now on, and the new workers,
    // forked from it, too (a rollback goes back to the serving one's: the master). Set
    // whether or not it changed from the serving generation's: a reload during a
    // reload still importing compares with the serving one, while the master logs at
    // the dropped one's (a no-op when the level is the same). The line naming the
    // changes is written at the level it enables, whichever of the two that is, from
    // the level the master logs at now (debug -> warn: before the switch; warn -> info:
    // after it).
    // regression: only a level changed from the serving generation's was set, so a
    // reload back to info during one to debug left the master (and every worker it
    // started) at debug for good.
    let louder = !tracing::enabled!(tracing::Level::INFO);
    if louder {
        set_level(&next.opts.log_level);
    }
    if !applied.is_empty() {
        tracing::info!(
            applied = %applied.join(", "),
            "reload: the new workers run the changed configuration"
        );
    }
    if !louder {
        set_level(&next.opts.log_level);
    }
    // The access log on or off: the new workers, forked from the master, inherit it.
    // Whether or not it changed from the serving generation's, as --log-level.
    crate::logging::set_access_log(&next.opts.access_log);
    if !kept.is_empty() {
        tracing::warn!(
            changed = %kept.join(", "),
            "the configuration changed since postern started in settings a reload does not apply (the listeners, ids, files and Python the master set up at the start): the new workers run with the values postern started with; restart postern to apply these"
        );
    }
    Next::Apply {
        config: Box::new(next),
        layers: new_layers,
        changed: !applied.is_empty(),
    }
}

/// Switches postern's log to `level` (resolved, so valid): a failure is said, and the
/// old level stays.
fn set_level(level: &str) {
    if let Err(e) = crate::logging::set_level(level) {
        tracing::warn!(error = %e, "cannot apply the reload's --log-level: the log keeps its level");
    }
}

/// The user and group names of `--uid`, `--gid` and `--socket-owner` that the layers
/// read again have as the serving generation had them are not looked up again: a
/// reload does not apply them (the master keeps what it set up at the start), and a
/// lookup that fails now (an LDAP or sssd directory out of reach) must not refuse the
/// reload. A changed one is still looked up (a typo is said before the restart).
fn skip_unchanged_lookups(l: &mut Layered, layers: &Layers) {
    let o = &mut l.options;
    for (key, value) in [
        ("uid", &mut o.uid),
        ("gid", &mut o.gid),
        ("socket-owner", &mut o.socket_owner),
    ] {
        if l.values.get(key) == layers.values.get(key) {
            *value = None;
        }
    }
}

/// What only a restart changes is taken from `current` (what the master set up at the
/// start; resolved paths as it resolved them).
fn keep_restart_only(next: &mut Config, current: &Config, preloaded: bool, thread_room: usize) {
    let (n, c) = (&mut next.opts, &current.opts);
    n.uwsgi.clone_from(&c.uwsgi);
    n.fastcgi.clone_from(&c.fastcgi);
    n.scgi.clone_from(&c.scgi);
    n.socket_mode = c.socket_mode;
    n.socket_owner.clone_from(&c.socket_owner);
    n.umask = c.umask;
    n.listen_backlog = c.listen_backlog;
    n.stats.clone_from(&c.stats);
    n.uid.clone_from(&c.uid);
    n.gid.clone_from(&c.gid);
    n.pidfile.clone_from(&c.pidfile);
    n.venv.clone_from(&c.venv);
    n.master = c.master;
    n.preload = c.preload;
    n.touch_reload.clone_from(&c.touch_reload);
    n.log_file.clone_from(&c.log_file);
    n.log_format = c.log_format;
    if !crate::logging::access_log_reloadable(&n.access_log) {
        n.access_log.clone_from(&c.access_log);
    }
    n.access_log_format = c.access_log_format;
    if preloaded {
        n.app.clone_from(&c.app);
        n.chdir.clone_from(&c.chdir);
        n.pythonpath.clone_from(&c.pythonpath);
        n.env.clone_from(&c.env);
        n.interface = c.interface;
        next.app = current.app.clone();
    } else {
        // The new workers' os.environ holds what their Python and malloc run with.
        n.env
            .retain(|super::value::KeyValue(k, _)| !restart_only_env(k));
        n.env.extend(
            c.env
                .iter()
                .filter(|super::value::KeyValue(k, _)| restart_only_env(k))
                .cloned(),
        );
    }
    if n.threads > thread_room {
        n.threads = c.threads;
    }
    next.listeners.clone_from(&current.listeners);
    next.default_listener = current.default_listener;
    next.venv.clone_from(&current.venv);
    next.venv_from_env = current.venv_from_env;
    next.venv_source.clone_from(&current.venv_source);
    next.supervised = current.supervised;
    next.uid = current.uid;
    next.gid = current.gid;
    next.socket_owner = current.socket_owner;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers(toml: &str) -> Layers {
        Layers {
            values: toml.parse().unwrap(),
            off: BTreeSet::new(),
            ini_warnings: None,
        }
    }

    // regression (probe 385): a reload said `env (PYTHONPATH added)` applied; Python
    // reads it once, as the master starts, and the new workers' sys.path lacked it.
    #[test]
    fn env_variables_read_at_the_start_are_a_restart_s_to_change() {
        let was = layers("[env]\nTZ = \"UTC\"\nMALLOC_ARENA_MAX = \"4\"\n");
        let is = layers("[env]\nTZ = \"CET\"\nPYTHONPATH = \"/srv/lib\"\nGLIBC_TUNABLES = \"x\"\nPYTHON_ENV = \"prod\"\nPYTHONBREAKPOINT = \"0\"\n");
        let part = |restart| was.env_part(restart).change(&is.env_part(restart), "env");
        assert_eq!(
            part(false).unwrap(),
            "env (TZ changed, PYTHONBREAKPOINT added, PYTHON_ENV added)"
        );
        assert_eq!(
            part(true).unwrap(),
            "env (GLIBC_TUNABLES added, PYTHONPATH added, MALLOC_ARENA_MAX removed)"
        );
        // What the new generation is said to run: TZ as read now, the others as at
        // the start (a later reload compares with that).
        let mut next = is.clone();
        next.keep_restart_only_env(&was);
        assert_eq!(
            next.values,
            layers("[env]\nTZ = \"CET\"\nPYTHON_ENV = \"prod\"\nPYTHONBREAKPOINT = \"0\"\nMALLOC_ARENA_MAX = \"4\"\n").values
        );
        assert_eq!(was.env_part(true).change(&next.env_part(true), "env"), None);
        // Neither side has any: nothing to say.
        let plain = layers("[env]\nTZ = \"UTC\"\n");
        assert_eq!(
            plain.env_part(true).change(&plain.env_part(true), "env"),
            None
        );
    }

    // regression (review 408 L5): `umask = 27` edited to `umask = "027"` was said
    // changed at a reload, a restart's to apply.
    #[test]
    fn a_mode_is_compared_as_the_mode_it_reads_as() {
        let was = layers("umask = 27\nsocket-mode = 660\n");
        let is = layers("umask = \"027\"\nsocket-mode = \"0660\"\n");
        assert_eq!(was.change(&is, "umask"), None);
        assert_eq!(was.change(&is, "socket-mode"), None);
        let other = layers("umask = \"077\"\n");
        assert_eq!(was.change(&other, "umask").unwrap(), "umask (027 -> 077)");
        assert_eq!(
            was.change(&other, "socket-mode").unwrap(),
            "socket-mode (660 -> not set)"
        );
    }

    // regression: `[env]`'s values (secrets) were written to the log at a reload.
    #[test]
    fn a_changed_env_is_said_by_its_names_only() {
        let was =
            layers("threads = 2\n[env]\nSECRET_KEY = \"hunter2\"\nTZ = \"UTC\"\nSAME = \"s1\"\n");
        let is =
            layers("threads = 4\n[env]\nSECRET_KEY = \"hunter3\"\nDEBUG = \"0\"\nSAME = \"s1\"\n");
        let env = was.change(&is, "env").unwrap();
        assert_eq!(env, "env (SECRET_KEY changed, DEBUG added, TZ removed)");
        assert_eq!(was.change(&is, "threads").unwrap(), "threads (2 -> 4)");
        assert_eq!(was.change(&was, "env"), None);
        let none = layers("");
        assert_eq!(
            none.change(&is, "env").unwrap(),
            "env (DEBUG added, SAME added, SECRET_KEY added)"
        );
        assert_eq!(
            is.change(&none, "env").unwrap(),
            "env (DEBUG removed, SAME removed, SECRET_KEY removed)"
        );
        for said in [env, none.change(&is, "env").unwrap()] {
            assert!(!said.contains("hunter") && !said.contains("s1"), "{said}");
        }
    }

    // regression: a reload looked up --uid/--gid/--socket-owner's names again, though
    // it applies none of them: a directory (LDAP, sssd) out of reach at the reload
    // refused it. Here a name no host has stands for a lookup that fails now.
    #[test]
    fn an_unchanged_user_name_is_not_looked_up_at_a_reload() {
        use clap::{CommandFactory as _, FromArgMatches as _};
        let read = || {
            let matches = super::super::Cli::command()
                .mut_args(|a| a.env(None))
                .try_get_matches_from(["postern", "app.py", "--uid", "no-such-user-postern"])
                .unwrap();
            let cli = super::super::Cli::from_arg_matches(&matches).unwrap();
            Layered::merge(&cli, &matches).unwrap()
        };
        let mut l = read();
        let e = Config::resolve(&l, None).unwrap_err().to_string();
        assert!(e.contains("--uid"), "the lookup fails: {e}");
        let serving = Layers::of(&l);
        skip_unchanged_lookups(&mut l, &serving);
        assert!(Config::resolve(&l, None).is_ok());
        // Changed since: looked up (and refused).
        let mut l = read();
        skip_unchanged_lookups(&mut l, &layers("uid = \"root\"\n"));
        assert!(Config::resolve(&l, None).is_err());
    }
}
