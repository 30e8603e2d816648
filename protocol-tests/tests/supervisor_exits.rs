//! The master's line for each worker that exits: a failed one names its pid, its
//! generation and how it ended, at WARN when the master expected it, even once a newer
//! reload has replaced its generation (README "Workers, reloads and timeouts").

use std::io::Write;

use protocol_tests::harness::*;

/// Once the file `hold` exists beside it, each import takes a numbered ticket: the
/// first waits for the file `gate0` and fails, the later ones wait for `gate1` and
/// import.
const TICKET_APP: &str = "import os, time\n\nhere = os.path.dirname(__file__)\n\ndef wait_for(name):\n    while not os.path.exists(os.path.join(here, name)):\n        time.sleep(0.01)\n\nif os.path.exists(os.path.join(here, 'hold')):\n    n = 0\n    while True:\n        try:\n            os.close(os.open(os.path.join(here, 'ticket%d' % n), os.O_CREAT | os.O_EXCL))\n            break\n        except FileExistsError:\n            n += 1\n    if n == 0:\n        wait_for('gate0')\n        raise RuntimeError('broken on disk')\n    wait_for('gate1')\n\ndef application(environ, start_response):\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [str(os.getpid()).encode()]\n";

/// The pid in the first log line that has all of `needles`.
fn pid_of(logs: &str, needles: &[&str]) -> Option<String> {
    let line = logs
        .lines()
        .find(|l| needles.iter().all(|n| l.contains(n)))?;
    let pid = line.split("pid=").nth(1)?;
    Some(pid.split(' ').next()?.to_owned())
}

/// One worker serving generation 0; one more (SIGTTIN) waiting at its import to fail
/// (ticket 0); a reload (SIGHUP) whose two workers wait at theirs (tickets 1 and 2).
/// Returns the extra worker's pid.
fn superseded_import(p: &Postern, dir: &std::path::Path) -> String {
    assert!(p.wait_log("all 1 workers ready", 20), "{}", p.logs());
    std::fs::write(dir.join("hold"), "").unwrap();
    // One worker more, of generation 0: it waits at its import (ticket 0).
    p.signal(libc::SIGTTIN);
    assert!(p.wait_log("cause=\"scale\"", 20), "{}", p.logs());
    let extra = pid_of(&p.logs(), &["worker started", "cause=\"scale\""]).unwrap();
    assert!(wait_file(&dir.join("ticket0"), 20), "{}", p.logs());
    // A reload: generation 1 (tickets 1 and 2) supersedes it.
    p.signal(libc::SIGHUP);
    assert!(p.wait_log_count("cause=\"reload\"", 2, 20), "{}", p.logs());
    extra
}

// regression: a superseded generation's failed start counted as the serving
// generation's: the worker serving the previous code read "held": "starts-failed" in
// /status while the reload's workers were still starting (and the reload's own starts
// had the backoff of a failure that was not theirs).
#[test]
fn a_failed_start_of_a_superseded_generation_does_not_count_as_the_serving_one_s() {
    let dir = tempdir();
    let app = dir.path().join("tickets.py");
    std::fs::write(&app, TICKET_APP).unwrap();
    let stats_addr = Addr::Tcp(free_port());
    let p = Spawn::unix(dir.path(), &app.to_string_lossy())
        .args(["--master", "--workers", "1", "--max-requests", "1000"])
        .args(["--stats", &stats_addr.arg()])
        .start();
    let extra = superseded_import(&p, dir.path());
    let held = || {
        let req = "GET /status HTTP/1.1\r\nHost: stats\r\nConnection: close\r\n\r\n";
        let s = parse_http(&raw(&stats_addr, req.as_bytes()))
            .unwrap()
            .json();
        s["workers"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|w| w["held"].as_str().map(str::to_owned))
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(20, || held() == ["reload"]),
        "the serving worker is held for the reload: {:?}",
        held()
    );
    std::fs::write(dir.path().join("gate0"), "").unwrap();
    assert!(
        p.wait_log(&format!("pid={extra} "), 20) && p.wait_log("newer reload", 20),
        "{}",
        p.logs()
    );
    for _ in 0..10 {
        assert_eq!(held(), ["reload"], "{}", p.logs());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::fs::write(dir.path().join("gate1"), "").unwrap();
    assert!(p.wait_log("all 2 workers ready", 30), "{}", p.logs());
    assert!(wait_until(20, || held().is_empty()), "{:?}", held());
}

// regression: a worker of a generation a newer reload had replaced (here one SIGTTIN
// started, still importing at the SIGHUP) that failed to start left no line in the
// master's log: its exit was judged "superseded" and said nothing.
#[test]
fn a_failed_start_of_a_superseded_generation_is_logged() {
    let dir = tempdir();
    let app = dir.path().join("tickets.py");
    std::fs::write(&app, TICKET_APP).unwrap();
    let p = Spawn::unix(dir.path(), &app.to_string_lossy())
        .args(["--master", "--workers", "1"])
        .start();
    let extra = superseded_import(&p, dir.path());
    // Generation 0's extra worker fails to import now.
    std::fs::write(dir.path().join("gate0"), "").unwrap();
    let needle = format!("pid={extra} ");
    let line = || {
        p.logs()
            .lines()
            .find(|l| {
                l.contains("postern::supervisor::master")
                    && l.contains(&needle)
                    && l.contains("failed to start")
            })
            .map(str::to_owned)
    };
    assert!(wait_until(20, || line().is_some()), "{}", p.logs());
    let line = line().unwrap();
    assert!(
        line.contains(" WARN ")
            && line.contains("how=exit code 3")
            && line.contains("generation=0")
            && line.contains("newer reload"),
        "{line}"
    );
    // The reload completes.
    std::fs::write(dir.path().join("gate1"), "").unwrap();
    assert!(
        p.wait_log_count("all 2 workers ready", 1, 30),
        "{}",
        p.logs()
    );
    let mut s = p.addr.connect().unwrap();
    s.write_all(&uwsgi_packet(&[
        ("REQUEST_METHOD", "GET"),
        ("PATH_INFO", "/"),
    ]))
    .unwrap();
    let mut out = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut out);
    assert_eq!(parse_http(&out).map(|r| r.status), Some(200));
}
