//! Graceful stops behind Apache's mod_proxy_fcgi with `enablereuse=on` over a Unix
//! socket (the shipped `deploy/apache/postern-fcgi.conf`), under a concurrent load:
//! requests Apache sends on a connection it reuses fail only in a rare race, not at
//! every stop.
//!
//! Apache checks a pooled connection before it reuses it (a peek: closed, or alive),
//! then sends its next request at once. At the final stop postern used to close each
//! kept connection right after its next END_REQUEST; over a Unix socket that close is
//! an event of its own, and Apache could read END_REQUEST, put the connection back,
//! check it and send on it before the close arrived: AH01067 ("Failed to read FastCGI
//! header", End of file) or AH01075 ("Error dispatching request", Broken pipe (sending
//! stdin)), a 503 or 500 for that client. Requests that find no kept connection are
//! refused (the listener is closed: AH02454 over a Unix socket, a 503): expected, not
//! this bug. Now the close follows an answer only while Apache has not read it yet,
//! and a connection whose answer it had read is served on and closed once idle (its
//! check before reuse then sees the close). A WSGI and an ASGI app (each kept
//! connection's answers end the same way).
//!
//! What is left: a thread preempted between the look at what Apache has read and the
//! shutdown, or an idle close meeting a request in the same instant. Measured: 0 lost in
//! 12 runs of 10 stops on a quiet machine, 1 request in 10 stops in a loaded CI run;
//! before, 1 to 14 in every run of 10. So the losses are printed, and bounded at a
//! quarter of the stops (the ASGI case lost 13-14 per 10 stops before the fix): a bound
//! the old behaviour breaks and the rare race does not.
//!
//! Needs Apache (fails under `CI=true` without it, skips loudly otherwise).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use protocol_tests::apache::{apache_bin, deploy_conf, tail, Apache};
use protocol_tests::harness::*;
use protocol_tests::stack::{Background, Load};

/// Graceful stops per run.
const STOPS: usize = 10;

/// Apache's lines for a request that failed on a connection it had reused (sent on
/// it, then the connection was found closed): reading the answer (AH01067, and
/// AH01075 after it, or AH01075 alone for a failed write of STDIN) or writing the
/// request (AH01073 BEGIN_REQUEST, AH01074 PARAMS).
const LOST_ON_REUSE: &[&str] = &["AH01067", "AH01073", "AH01074", "AH01075"];

/// postern serving `app` (with `args`) on `sock` (the same path each time: Apache's
/// ProxyPass names it).
fn start_at(dir: &Path, sock: &Path, app: &str, args: &[&str]) -> Postern {
    let mut cmd = Command::new(postern_bin());
    cmd.arg(app)
        .args(args)
        .args(["--workers", "2", "--graceful-timeout", "10"])
        .arg("--fastcgi")
        .arg(format!("unix:{}", sock.display()))
        .args(["--socket-mode", "666"])
        .env_remove("VIRTUAL_ENV")
        .env("RUST_BACKTRACE", "1");
    Postern::spawn(cmd, Addr::Unix(sock.to_owned()), dir, None)
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

/// `STOPS` graceful stops of postern serving `app` (with `args`) behind Apache under
/// load, the app mounted at `prefix`; postern starts again after each on the same
/// socket.
fn stops_behind_apache(app: &str, args: &[&str], prefix: &str) {
    let Some(bin) = apache_bin() else { return };
    let dir = tempdir();
    let sock = dir.path().join("postern.sock");
    let mut postern = start_at(dir.path(), &sock, app, args);
    let site = deploy_conf(
        "postern-fcgi.conf",
        &[("SOCKET", &sock.display().to_string()), ("PREFIX", prefix)],
    );
    let apache = Apache::start(&bin, dir.path(), &site);
    // Eight clients, each a round of two requests at a time.
    let load = Background::start(
        apache.port,
        8,
        Load::new(1, 2).prefix(prefix).max_repeat(300),
    );
    let mut exits = Vec::new();
    let mut took = Vec::new();
    let mut stop_logs = String::new();
    for round in 1..=STOPS {
        {
            let logs = || format!("{}\n{}", postern.logs(), tail(&apache.error_log(), 40));
            // Apache's pool warm with kept connections, each in use.
            load.wait_more(60, &format!("before stop {round}"), &logs);
        }
        let t0 = Instant::now();
        postern.signal(libc::SIGTERM);
        let status = postern.wait_exit(60);
        took.push(t0.elapsed().as_millis());
        exits.push(status.and_then(|s| s.code()));
        stop_logs.push_str(&postern.logs());
        postern = start_at(dir.path(), &sock, app, args);
    }
    {
        let logs = || format!("{}\n{}", postern.logs(), tail(&apache.error_log(), 40));
        load.wait_more(60, "after the last stop", &logs);
    }
    let seen = load.finish();
    let (statuses, problems) = (seen.statuses, seen.problems);
    let log = apache.error_log();
    let lost: Vec<&str> = log
        .lines()
        .filter(|l| LOST_ON_REUSE.iter().any(|c| l.contains(c)))
        .collect();
    let counts: Vec<String> = LOST_ON_REUSE
        .iter()
        .map(|c| format!("{c} {}", count(&log, c)))
        .collect();
    let in_flight_warns = count(&stop_logs, "for a request id already in flight");
    eprintln!(
        "Apache enablereuse=on, Unix socket, {app}, {STOPS} graceful stops under load: statuses {statuses:?}; lost on a reused connection: {} lines ({}); refused connects (AH02454, expected) {}; postern 'already in flight' warnings {in_flight_warns}; exit codes {exits:?}; stops took {took:?} ms",
        lost.len(),
        counts.join(", "),
        count(&log, "AH02454"),
    );
    assert!(
        problems.is_empty(),
        "{} requests failed or came back wrong:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(
        statuses.keys().all(|s| *s == 200 || *s == 503),
        "statuses other than 200 and 503 (refused connects): {statuses:?}\n{}",
        tail(&log, 60)
    );
    // Two Apache lines a lost request at most (AH01067 and AH01075 name the same one).
    assert!(
        lost.len() <= STOPS / 2 && in_flight_warns <= STOPS / 4,
        "requests lost on reused connections at a graceful stop: {} Apache lines ({}), {in_flight_warns} postern warnings:\n{}\n---- postern logs of the stops (tail) ----\n{}",
        lost.len(),
        counts.join(", "),
        lost.join("\n"),
        tail(&stop_logs, 80)
    );
    assert!(
        exits.iter().all(|c| *c == Some(0)),
        "a stop did not exit 0: {exits:?}\n{}",
        tail(&stop_logs, 80)
    );
}

// regression: each graceful stop under this load could lose requests Apache sent on a
// connection it reused (on a9e7dd9: in 4 of 5 runs of 10 stops, 1 to 11 lost):
// postern closed every kept connection right after its next END_REQUEST, a second
// event over a Unix socket.
#[test]
fn graceful_stops_behind_apache_enablereuse_lose_no_request_on_a_reused_connection() {
    stops_behind_apache(&testapp(), &["--threads", "4"], "/app");
}

/// The same with an ASGI app (its kept connections end their answers the same way).
#[test]
fn graceful_stops_of_an_asgi_app_behind_apache_lose_no_request_on_a_reused_connection() {
    let app = root().join("protocol-tests/apps/asgi_app.py:app");
    stops_behind_apache(&app.to_string_lossy(), &["--interface", "asgi"], "");
}
