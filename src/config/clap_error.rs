//! clap's errors, said for postern's users: a uWSGI option gets postern's name for it
//! (or why postern runs without it) instead of clap's look-alike suggestion, and a bad
//! value that came from a `POSTERN_*` variable names the variable.

use std::ffi::OsString;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::CommandFactory;

use super::Cli;

/// Says what is wrong with the command line on stderr and exits: 2 for an error, 0 for
/// `--help` (as clap does).
pub fn exit(e: clap::Error, args: &[OsString]) -> ! {
    if !e.use_stderr() {
        e.exit();
    }
    let args: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if e.kind() == ErrorKind::UnknownArgument {
        if let Some(said) = instance_command(&args) {
            for line in said.lines() {
                eprintln!("postern: {line}");
            }
            std::process::exit(2);
        }
        // gunicorn's options in postern's words; what is left is read as uWSGI's.
        let gunicorn = super::gunicorn::read(&args, is_ours);
        let (said, line) = gunicorn
            .as_ref()
            .map_or(("", &args), |g| (&g.said, &g.args));
        let (typed, others) = crate::uwsgi_ini::uwsgi_options(line, is_ours);
        if !typed.is_empty() {
            let refused = gunicorn.as_ref().is_some_and(|g| g.refused);
            for line in said.lines().chain(
                crate::uwsgi_ini::explain(&typed, &others, line, similar, super::arity)
                    .lines()
                    .filter(|l| !(refused && l.starts_with("the same with postern:"))),
            ) {
                eprintln!("postern: {line}");
            }
            std::process::exit(2);
        }
        if let Some(g) = &gunicorn {
            for line in said.lines().chain(super::gunicorn::rest(g).lines()) {
                eprintln!("postern: {line}");
            }
            std::process::exit(2);
        }
    }
    if let Some(text) = from_env(&e, &args) {
        eprint!("{text}");
        std::process::exit(2);
    }
    e.exit()
}

/// uWSGI's commands to a running instance (`uwsgi --reload /run/app.pid`, `--stop`,
/// `--pause`, `--suspend`, `--resume`), said as postern's signals. gunicorn's `--reload`
/// (a code reloader, no value) is told apart by its value: uWSGI's is a pidfile (a
/// `.pid` name, or a file that holds a number).
/// regression (probe 319): `--reload /run/app.pid` was read as gunicorn's and suggested
/// `postern /run/app.pid`, and `--stop` got clap's generic "unexpected argument".
pub(crate) fn instance_command(args: &[String]) -> Option<String> {
    let mut i = 1;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if a == "--" {
            return None;
        }
        let Some(long) = a.strip_prefix("--") else {
            continue;
        };
        let (name, inline) = match long.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (long, None),
        };
        if !matches!(name, "stop" | "reload" | "pause" | "suspend" | "resume") {
            continue;
        }
        let value = inline.or_else(|| args.get(i).filter(|v| !v.starts_with('-')).cloned());
        let Some(pidfile) = value.filter(|v| !v.is_empty()) else {
            continue;
        };
        if name == "reload" && !is_pidfile(&pidfile) {
            continue;
        }
        let quoted = crate::uwsgi_ini::command_line::quoted(&pidfile);
        let (what, signal, systemd) = match name {
            "stop" => ("stop a running instance", "TERM", "systemctl stop"),
            "reload" => ("reload a running instance", "HUP", "systemctl reload"),
            _ => {
                return Some(format!(
                    "`--{name} {pidfile}` is uWSGI's command to {name} a running instance; postern has no pause: stop it gracefully with `kill -TERM \"$(cat {quoted})\"`, or take one worker away with `kill -TTOU \"$(cat {quoted})\"` (SIGTTIN adds one back)"
                ));
            }
        };
        let more = if name == "reload" {
            " (new workers start, the old ones finish their requests; nothing is dropped)"
        } else {
            " (the workers finish their requests first; a second signal stops at once)"
        };
        return Some(format!(
            "`--{name} {pidfile}` is uWSGI's command to {what}; postern's master takes a signal instead: kill -{signal} \"$(cat {quoted})\"{more}\nunder systemd: {systemd} UNIT (deploy/systemd/postern.service)"
        ));
    }
    None
}

/// Whether `path` names a pidfile: a `.pid` name, or a file that holds a number.
fn is_pidfile(path: &str) -> bool {
    path.ends_with(".pid")
        || std::fs::read_to_string(path).is_ok_and(|t| t.trim().parse::<u32>().is_ok())
}

/// The argument clap found wrong, as clap names it (`--socket`, `--threads <N>`).
fn invalid_arg(e: &clap::Error) -> Option<String> {
    match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    }
}

/// postern's option that clap finds closest to the unknown `flag` (`--workrs`:
/// `--workers`), as its own message would suggest it.
fn similar(flag: &str) -> Option<String> {
    let e = Cli::command()
        .try_get_matches_from(["postern", flag])
        .err()?;
    match e.get(ContextKind::SuggestedArg) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    }
}

/// Whether `name` (without `--`) is one of postern's long options or aliases.
fn is_ours(name: &str) -> bool {
    let cmd = Cli::command();
    let found = cmd.get_arguments().any(|a| {
        a.get_long() == Some(name) || a.get_all_aliases().is_some_and(|all| all.contains(&name))
    });
    found
}

/// clap's message for a value it refused, with the variable it came from when it did
/// not come from the command line. regression: `POSTERN_THREADS=x postern app` said
/// "invalid value 'x' for '--threads <N>'" without naming POSTERN_THREADS.
fn from_env(e: &clap::Error, args: &[String]) -> Option<String> {
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let invalid = invalid_arg(e)?;
    let cmd = Cli::command();
    let arg = cmd.get_arguments().find(|a| {
        a.get_long().is_some_and(|l| {
            let l = format!("--{l}");
            invalid == l || invalid.starts_with(&format!("{l} "))
        })
    })?;
    let var = arg.get_env()?.to_string_lossy().into_owned();
    std::env::var_os(&var)?;
    let long = format!("--{}", arg.get_long()?);
    let typed = args
        .iter()
        .skip(1)
        .any(|a| a == &long || a.starts_with(&format!("{long}=")));
    if typed {
        return None;
    }
    let text = e.to_string();
    let quoted = format!("'{invalid}'");
    Some(text.replacen(&quoted, &format!("{quoted} (from env {var})"), 1))
}

#[cfg(test)]
mod tests {
    use super::instance_command;

    fn words(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn uwsgi_commands_to_a_running_instance_are_said_as_signals() {
        let stop = instance_command(&words("postern --stop /run/app.pid")).unwrap();
        assert!(
            stop.contains("kill -TERM \"$(cat /run/app.pid)\""),
            "{stop}"
        );
        let reload = instance_command(&words("postern --reload=/run/app.pid")).unwrap();
        assert!(
            reload.contains("kill -HUP \"$(cat /run/app.pid)\""),
            "{reload}"
        );
        assert!(reload.contains("systemctl reload"), "{reload}");
        let pause = instance_command(&words("postern --pause /tmp/x.pid")).unwrap();
        assert!(pause.contains("no pause"), "{pause}");
        // gunicorn's --reload (a code reloader) before the app is not uWSGI's.
        assert_eq!(
            instance_command(&words("postern --reload app:application")),
            None
        );
        assert_eq!(
            instance_command(&words("postern --reload --workers 2 app.py")),
            None
        );
        assert_eq!(instance_command(&words("postern --stop")), None);
    }
}
