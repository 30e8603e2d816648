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
