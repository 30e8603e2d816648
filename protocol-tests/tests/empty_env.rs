//! `POSTERN_*` variables as a container sets them: an empty value (a Compose file's
//! `${THREADS}` left unset, a Kubernetes `value: ""`) is no value, and the subcommands
//! (`postern request` as a health check, `migrate`, `status`) read none of the serving
//! options' variables, so a bad one cannot break them.

use std::process::{Command, Output, Stdio};

use protocol_tests::harness::*;

/// postern with none of the caller's `POSTERN_*` variables.
fn postern() -> Command {
    let mut c = Command::new(postern_bin());
    c.env_remove("VIRTUAL_ENV").stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("POSTERN_") {
            c.env_remove(k);
        }
    }
    c
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every variable `postern --help` names (`[env: POSTERN_THREADS=]`).
fn variables() -> Vec<String> {
    let out = postern().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut vars: Vec<String> = help
        .split(|c: char| !(c.is_ascii_uppercase() || c == '_'))
        .filter(|w| w.starts_with("POSTERN_") && w.len() > "POSTERN_".len())
        .map(str::to_owned)
        .collect();
    vars.sort();
    vars.dedup();
    assert!(
        vars.len() > 40 && vars.iter().any(|v| v == "POSTERN_CONFIG"),
        "{vars:?}\n{help}"
    );
    vars
}

// regression: `POSTERN_THREADS=` (and every other empty variable but a few) made clap
// refuse every command line ("invalid value '' for '--threads <N>'"), the subcommands
// included; `POSTERN_LOG_LEVEL=` was refused at start, `POSTERN_INI=` said "cannot
// read --ini".
#[test]
fn an_empty_variable_is_not_set() {
    let app = testapp();
    let baseline = postern().args(["--print-config", &app]).output().unwrap();
    let (want, err) = text(&baseline);
    assert!(baseline.status.success(), "{err}");
    let vars = variables();
    // One at a time: each is refused on its own, or not.
    for var in &vars {
        let out = postern()
            .args(["--print-config", &app])
            .env(var, "")
            .output()
            .unwrap();
        let (got, err) = text(&out);
        assert!(out.status.success(), "{var}=: {err}");
        assert_eq!(
            got,
            format!("{want}# empty, so taken as not set: {var}\n"),
            "{var}="
        );
    }
    // All at once, as a Compose file that templates every one of them gives.
    let mut all = postern();
    all.args(["--print-config", &app]);
    for var in &vars {
        all.env(var, "");
    }
    let out = all.output().unwrap();
    let (got, err) = text(&out);
    assert!(out.status.success(), "{err}");
    assert!(got.starts_with(&want), "{got}");
    // A layer below still applies: an empty variable does not blank out the file's value.
    let dir = tempdir();
    let file = dir.path().join("postern.toml");
    std::fs::write(&file, "threads = 3\nlog-level = \"warn\"\n").unwrap();
    let out = postern()
        .args(["--print-config", &app, "--config"])
        .arg(&file)
        .env("POSTERN_THREADS", "")
        .env("POSTERN_LOG_LEVEL", "")
        .output()
        .unwrap();
    let (got, err) = text(&out);
    assert!(out.status.success(), "{err}");
    assert!(got.contains("\nthreads = 3  # file "), "{got}");
    assert!(got.contains("\nlog-level = \"warn\"  # file "), "{got}");
}

/// The subcommands: a uWSGI ini file to migrate, with each variable empty, then
/// invalid.
#[test]
fn subcommands_read_no_serving_variable() {
    let dir = tempdir();
    let ini = dir.path().join("app.ini");
    std::fs::write(&ini, "[uwsgi]\nmodule = app:application\nprocesses = 2\n").unwrap();
    let migrate = |env: &[(&str, &str)]| {
        let mut c = postern();
        c.arg("migrate").arg(&ini);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        let (stdout, stderr) = text(&out);
        assert!(
            out.status.success() && stdout.contains("workers = 2"),
            "{env:?}: {stdout}\n{stderr}"
        );
    };
    migrate(&[]);
    let vars = variables();
    let empty: Vec<(&str, &str)> = vars.iter().map(|v| (v.as_str(), "")).collect();
    migrate(&empty);
    migrate(&[
        ("POSTERN_THREADS", "x"),
        ("POSTERN_LOG_FORMAT", "xml"),
        ("POSTERN_CONFIG", "/nonexistent/postern.toml"),
        ("POSTERN_INI", "/nonexistent/uwsgi.ini"),
        ("POSTERN_UWSGI", "nowhere"),
    ]);
}

/// A server started with empty variables serves with the defaults, and `postern
/// request` (a container's health check, run in the same environment) reaches it, with
/// the variables empty or invalid.
#[test]
fn a_server_and_its_health_check_start_with_empty_variables() {
    let dir = tempdir();
    let p = Spawn::unix(dir.path(), &testapp())
        .env("POSTERN_THREADS", "")
        .env("POSTERN_WORKERS", "")
        .env("POSTERN_LOG_LEVEL", "")
        .env("POSTERN_LOG_FORMAT", "")
        .env("POSTERN_TIMEOUT", "")
        .env("POSTERN_MASTER", "")
        .start();
    let logs = p.logs();
    log_line(&logs, "POSTERN_THREADS, POSTERN_WORKERS");
    assert!(logs.contains("1 worker(s) of 1 thread(s)"), "{logs}");
    let Addr::Unix(sock) = &p.addr else {
        unreachable!()
    };
    let url = format!("uwsgi+unix://{}/hello", sock.display());
    for value in ["", "x"] {
        let out = postern()
            .args(["request", &url])
            .env("POSTERN_THREADS", value)
            .env("POSTERN_UWSGI", value)
            .env("POSTERN_LOG_LEVEL", value)
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(
            out.status.success() && stdout.starts_with("HTTP/1.1 200"),
            "POSTERN_THREADS={value:?}: {stdout}\n{stderr}"
        );
    }
}
