//! `postern_workers_held{reason}`: the workers the master holds past their recycling
//! limits, for an alert on successors that fail to start (README "Metrics and status").

use std::path::Path;

use protocol_tests::harness::*;
use protocol_tests::scrape;

/// The value of `series` (written exactly) in /metrics; `None` when absent.
fn sample(addr: &Addr, series: &str) -> Option<f64> {
    scrape::sample(&scrape::metrics(addr), series)
}

/// The held workers as /status says: (pid, reason).
fn held(addr: &Addr) -> Vec<(i64, String)> {
    scrape::status(addr)["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| Some((w["pid"].as_i64()?, w["held"].as_str()?.to_owned())))
        .collect()
}

/// A WSGI app whose import waits while the file `gate` is missing beside it.
fn gated_app(dir: &Path) -> String {
    let app = dir.join("gated.py");
    std::fs::write(
        &app,
        "import os, time\n\nhere = os.path.dirname(__file__)\nwhile not os.path.exists(os.path.join(here, 'gate')):\n    time.sleep(0.02)\n\ndef application(environ, start_response):\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [str(os.getpid()).encode()]\n",
    )
    .unwrap();
    app.to_string_lossy().into_owned()
}

const STARTS_FAILED: &str = r#"postern_workers_held{reason="starts-failed"}"#;
const RELOAD: &str = r#"postern_workers_held{reason="reload"}"#;

// regression: a worker held past its recycling limits was in /status only: an alert
// had nothing to watch.
#[test]
fn held_workers_are_a_gauge_by_reason() {
    let dir = tempdir();
    let gate = dir.path().join("gate");
    std::fs::write(&gate, "").unwrap();
    let stats_addr = Addr::Tcp(free_port());
    let p = Spawn::unix(dir.path(), &gated_app(dir.path()))
        .args(["--workers", "1", "--max-requests", "1000"])
        .args(["--stats", &stats_addr.arg()])
        .start();
    assert!(p.wait_log("all 1 workers ready", 20), "{}", p.logs());
    // Both series, at 0, before anything is held.
    assert_eq!(sample(&stats_addr, STARTS_FAILED), Some(0.0));
    assert_eq!(sample(&stats_addr, RELOAD), Some(0.0));
    // A reload whose new worker waits at its import: the old one is held for it.
    std::fs::remove_file(&gate).unwrap();
    p.signal(libc::SIGHUP);
    assert!(
        wait_until(20, || sample(&stats_addr, RELOAD) == Some(1.0)),
        "{}\n{}",
        scrape::metrics(&stats_addr),
        p.logs()
    );
    assert_eq!(sample(&stats_addr, STARTS_FAILED), Some(0.0));
    assert_eq!(held(&stats_addr).len(), 1, "/status agrees");
    // The new worker serves: the old one leaves, nothing is held.
    std::fs::write(&gate, "").unwrap();
    assert!(
        wait_until(30, || sample(&stats_addr, RELOAD) == Some(0.0)
            && held(&stats_addr).is_empty()),
        "{}\n{}",
        scrape::status(&stats_addr),
        p.logs()
    );
    assert_eq!(sample(&stats_addr, STARTS_FAILED), Some(0.0));
}

// regression (probe 379): with no recycling limit (no --max-requests, --max-rss or
// --max-lifetime), a failed reload left every worker `held (starts-failed)` in /status
// and in this gauge for good: there is no limit to hold a worker past.
#[test]
fn a_failed_reload_holds_no_worker_that_has_no_recycling_limit() {
    let dir = tempdir();
    let gate = dir.path().join("gate");
    std::fs::write(&gate, "").unwrap();
    let stats_addr = Addr::Tcp(free_port());
    let app = gated_app(dir.path());
    let p = Spawn::unix(dir.path(), &app)
        .args(["--workers", "2"])
        .args(["--stats", &stats_addr.arg()])
        .start();
    assert!(p.wait_log("all 2 workers ready", 20), "{}", p.logs());
    let code = std::fs::read_to_string(&app).unwrap();
    std::fs::write(
        &app,
        format!("{code}\nraise RuntimeError('broken on disk')\n"),
    )
    .unwrap();
    p.signal(libc::SIGHUP);
    assert!(p.wait_log("reload failed", 30), "{}", p.logs());
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        sample(&stats_addr, STARTS_FAILED),
        Some(0.0),
        "{}",
        p.logs()
    );
    assert!(
        held(&stats_addr).is_empty(),
        "{}",
        scrape::status(&stats_addr)
    );
    assert!(!p.logs().contains("no longer held"), "{}", p.logs());
}
