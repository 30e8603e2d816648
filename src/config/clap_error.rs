//! clap's errors, said for postern's users: a uWSGI option gets postern's name for it
//! (or why postern runs without it) instead of clap's look-alike suggestion.

use std::ffi::OsString;

use clap::error::ErrorKind;
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
        let (typed, others) = crate::uwsgi_ini::uwsgi_options(&args, is_ours);
        if !typed.is_empty() {
            for line in crate::uwsgi_ini::explain(&typed, &others, &args).lines() {
                eprintln!("postern: {line}");
            }
            std::process::exit(2);
        }
    }
    e.exit()
}

/// Whether `name` (without `--`) is one of postern's long options or aliases.
fn is_ours(name: &str) -> bool {
    let cmd = Cli::command();
    let found = cmd.get_arguments().any(|a| {
        a.get_long() == Some(name) || a.get_all_aliases().is_some_and(|all| all.contains(&name))
    });
    found
}
