//! Workers held past their recycling limits while their successors fail to start
//! (README "Workers, reloads and timeouts", Recycling): the holds end once a start
//! succeeds again, and `--max-rss`'s hard limit is kept even while held.

use std::io::Write;
use std::path::Path;

use protocol_tests::harness::*;

/// A WSGI app that fails its import while the file `broken` exists beside it; `/grow?mib=N`
/// keeps N MiB more in the worker (its RSS grows), any other path names the worker.
fn app(dir: &Path) -> String {
    let app = dir.join("growapp.py");
    std::fs::write(
        &app,
        "import os\n\nhere = os.path.dirname(__file__)\nif os.path.exists(os.path.join(here, 'broken')):\n    raise RuntimeError('broken on disk')\n\nkept = []\n\ndef application(environ, start_response):\n    if environ['PATH_INFO'] == '/grow':\n        mib = int(environ['QUERY_STRING'].split('=')[1])\n        kept.append(b'x' * (mib << 20))\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [str(os.getpid()).encode()]\n",
    )
    .unwrap();
    app.to_string_lossy().into_owned()
}

/// GET `path` over uwsgi: the pid that answered (`None`: no 200).
fn get(p: &Postern, path: &str) -> Option<String> {
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let pkt = uwsgi_packet(&[
        ("REQUEST_METHOD", "GET"),
        ("PATH_INFO", path),
        ("QUERY_STRING", query),
    ]);
    let mut s = p.addr.connect().ok()?;
    s.write_all(&pkt).ok()?;
    let mut out = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut out);
    parse_http(&out)
        .filter(|r| r.status == 200)
        .map(|r| r.text())
}

/// GET `path` from the stats endpoint: the body.
fn stats(addr: &Addr, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: stats\r\nConnection: close\r\n\r\n");
    let resp = raw(addr, req.as_bytes());
    parse_http(&resp)
        .unwrap_or_else(|| panic!("bad answer to {path}: {:?}", String::from_utf8_lossy(&resp)))
        .text()
}

/// /status's workers: (pid, state, held).
fn workers(addr: &Addr) -> Vec<(String, String, Option<String>)> {
    let s: serde_json::Value = serde_json::from_str(&stats(addr, "/status")).unwrap();
    s["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["pid"].to_string(),
                w["state"].as_str().unwrap_or_default().to_owned(),
                w["held"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// The value of `series` (written exactly) in /metrics.
fn sample(addr: &Addr, series: &str) -> Option<f64> {
    stats(addr, "/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

const STARTS_FAILED: &str = r#"postern_workers_held{reason="starts-failed"}"#;

// regression: a hold lasted until its worker left. With two workers, one over
// --max-rss asked for its successor, which failed to import: both were held. Once the
// code was fixed, the successor relieved the first, and the other read
// `"held": "starts-failed"` in /status (and served past its limits) for good.
#[test]
fn the_holds_end_once_a_successor_starts() {
    let dir = tempdir();
    let stats_addr = Addr::Tcp(free_port());
    let p = Spawn::unix(dir.path(), &app(dir.path()))
        .args(["--workers", "2", "--threads", "2", "--max-rss", "150"])
        .args(["--stats", &stats_addr.arg()])
        .start();
    assert!(p.wait_log("all 2 workers ready", 20), "{}", p.logs());
    let broken = dir.path().join("broken");
    std::fs::write(&broken, "").unwrap();
    // One worker over --max-rss (below its hard limit, 225 MiB): it asks for its
    // successor, which fails to import; both workers are held.
    let grown = get(&p, "/grow?mib=150").expect("the worker that grows answers");
    assert!(
        wait_until(30, || {
            let w = workers(&stats_addr);
            w.len() >= 2
                && w.iter()
                    .filter(|(_, _, h)| h.as_deref() == Some("starts-failed"))
                    .count()
                    == 2
        }),
        "{:?}\n{}",
        workers(&stats_addr),
        p.logs()
    );
    assert_eq!(sample(&stats_addr, STARTS_FAILED), Some(2.0));
    let other = workers(&stats_addr)
        .into_iter()
        .map(|(pid, ..)| pid)
        .find(|pid| *pid != grown)
        .unwrap();
    // Fixed on disk: the next start succeeds and relieves the grown worker; the other
    // one is no longer held.
    std::fs::remove_file(&broken).unwrap();
    assert!(p.wait_log("its successor is ready", 40), "{}", p.logs());
    assert!(
        wait_until(20, || {
            let w = workers(&stats_addr);
            !w.iter().any(|(pid, ..)| *pid == grown) && w.iter().all(|(_, _, h)| h.is_none())
        }),
        "{:?}\n{}",
        workers(&stats_addr),
        p.logs()
    );
    assert!(
        workers(&stats_addr)
            .iter()
            .any(|(pid, state, _)| *pid == other && state == "serving"),
        "{:?}",
        workers(&stats_addr)
    );
    assert_eq!(sample(&stats_addr, STARTS_FAILED), Some(0.0));
    assert!(p.wait_log("no longer held", 10), "{}", p.logs());
    let logs = p.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("no longer held") && l.contains(&other)),
        "{logs}"
    );
    assert!(get(&p, "/").is_some());
}

// With --workers 1, a held worker past --max-rss's hard limit still stops (the limit
// protects the machine), and says that nothing may serve until a successor starts.
// regression: its line read as an ordinary recycle, the outage unexplained.
#[test]
fn a_held_worker_past_the_hard_rss_limit_stops_and_says_why() {
    let dir = tempdir();
    let p = Spawn::unix(dir.path(), &app(dir.path()))
        .args(["--workers", "1", "--threads", "2", "--max-rss", "150"])
        .start();
    assert!(p.wait_log("all 1 workers ready", 20), "{}", p.logs());
    let broken = dir.path().join("broken");
    std::fs::write(&broken, "").unwrap();
    let first = get(&p, "/grow?mib=150").expect("the worker answers");
    assert!(p.wait_log("worker failed to start", 30), "{}", p.logs());
    // Held: it serves on over --max-rss.
    assert_eq!(get(&p, "/").as_ref(), Some(&first), "{}", p.logs());
    // Past the hard limit (225 MiB): it stops, held or not.
    assert!(get(&p, "/grow?mib=100").is_some(), "{}", p.logs());
    assert!(
        p.wait_log("over --max-rss's hard limit", 20),
        "{}",
        p.logs()
    );
    let logs = p.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("over --max-rss's hard limit"))
        .unwrap();
    assert!(
        line.contains(" WARN ")
            && line.contains("held=\"starts-failed\"")
            && line.contains("fail to start")
            && line.contains(&format!("pid={first}")),
        "{line}"
    );
    // Fixed on disk: a successor starts and serves.
    std::fs::remove_file(&broken).unwrap();
    assert!(
        wait_until(40, || get(&p, "/").is_some_and(|pid| pid != first)),
        "{}",
        p.logs()
    );
}
