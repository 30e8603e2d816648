//! An idle server does not keep waking up: over a few idle seconds, after it served a
//! request (a kept FastCGI connection stays parked), each worker's threads block
//! almost all the time. Counted as the voluntary context switches of every thread of
//! the master and its workers (`/proc/PID/task/*/status`), with a generous bound:
//! counts, not timings.
//!
//! regression: an idle worker woke 8 times a second for its heartbeat and mark check
//! (a 250 ms tokio sleep wakes the I/O thread twice: at its timer-wheel slot's start,
//! then at its deadline), 0.4 for its --head-timeout watch (5 s: three), and a
//! FastCGI worker's busy watch (`postern-busy`) 4 more (its 250 ms tick); then 4.2
//! (the look every 250 ms on a timerfd, so that a worker deaf to SIGTERM saw its mark
//! soon: the master now wakes it for that). uWSGI's workers do not wake at all (its
//! master once a second).

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use protocol_tests::harness::*;

/// How long the count runs.
const IDLE: Duration = Duration::from_secs(4);

/// Voluntary context switches of each thread of `pid`: (thread name, count) by tid.
fn switches(pid: i32) -> BTreeMap<i32, (String, u64)> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let Ok(tid) = t.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let Some(n) = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
        else {
            continue;
        };
        out.insert(tid, (comm.trim().to_owned(), n));
    }
    out
}

/// Over [`IDLE`]: the wake-ups of each process (the master first, then its workers),
/// with those of each thread name, for the failure message.
fn idle_wakeups(master: i32) -> Vec<(i32, u64, BTreeMap<String, u64>)> {
    let pids: Vec<i32> = std::iter::once(master).chain(children(master)).collect();
    let before: Vec<_> = pids.iter().map(|&p| switches(p)).collect();
    std::thread::sleep(IDLE);
    pids.iter()
        .zip(before)
        .map(|(&p, before)| {
            let mut by_name = BTreeMap::new();
            let mut total = 0;
            for (tid, (name, n)) in switches(p) {
                // A thread born meanwhile counts from 0.
                let d = n - before.get(&tid).map_or(0, |b| b.1.min(n));
                total += d;
                *by_name.entry(name).or_insert(0) += d;
            }
            (p, total, by_name)
        })
        .collect()
}

/// Each process woke at most `most` times over [`IDLE`] (4 s), and each thread named
/// in `threads` at most its count; with the per-thread counts in the message.
fn assert_quiet(p: &Postern, workers: usize, most: u64, threads: &[(&str, u64)]) {
    let counted = idle_wakeups(p.pid());
    assert_eq!(counted.len(), 1 + workers, "{counted:?}\n{}", p.logs());
    for (pid, total, by_name) in &counted {
        assert!(
            *total <= most,
            "pid {pid} woke {total} times in {IDLE:?} idle (at most {most}): {by_name:?}\nall: {counted:?}"
        );
        for &(name, at_most) in threads {
            let n = by_name.get(name).copied().unwrap_or(0);
            assert!(
                n <= at_most,
                "pid {pid}'s {name} woke {n} times in {IDLE:?} idle (at most {at_most}): {by_name:?}"
            );
        }
    }
}

// After: each worker wakes about 1.2 times a second (its heartbeat and mark look, 1;
// the --head-timeout watch, once per 5 s), its busy watch not at all, the master not
// at all; before: 4.2 (a look every 250 ms; 8.4 before 246c8cc, 12.4 before a8d303f,
// whose busy watch ticked 4 times a second). The bound, 3 a second, leaves room for a
// loaded machine.
#[test]
fn an_idle_fastcgi_worker_with_a_parked_connection_barely_wakes() {
    let dir = tempdir();
    let p = Spawn::unix(dir.path(), &testapp())
        .protocol("fastcgi")
        .args(["--workers", "2", "--threads", "2"])
        .start();
    assert!(p.wait_log("all 2 workers ready", 30), "{}", p.logs());
    // A kept connection, parked in a worker once its request is answered.
    let mut kept = p.addr.connect().unwrap();
    kept.write_all(&fcgi::get(1, true, "/pid")).unwrap();
    assert_eq!(fcgi::status(&mut *kept), Some(200), "{}", p.logs());
    // The busy watch's calm ticks see the request end, then nothing.
    std::thread::sleep(Duration::from_millis(1500));
    assert_quiet(&p, 2, 12, &[("postern-busy", 2)]);
    // Still served after the quiet.
    kept.write_all(&fcgi::get(2, true, "/pid")).unwrap();
    assert_eq!(fcgi::status(&mut *kept), Some(200), "{}", p.logs());
}

// Before: 4.2 times a second (uwsgi and ASGI alike; 8.4 before 246c8cc).
#[test]
fn an_idle_uwsgi_worker_barely_wakes() {
    let dir = tempdir();
    let p = Spawn::unix(dir.path(), &testapp())
        .args(["--workers", "2"])
        .start();
    assert!(p.wait_log("all 2 workers ready", 30), "{}", p.logs());
    assert_eq!(p.get("/pid").0, 200, "{}", p.logs());
    std::thread::sleep(Duration::from_millis(1000));
    assert_quiet(&p, 2, 12, &[]);
}

#[test]
fn an_idle_asgi_worker_barely_wakes() {
    let dir = tempdir();
    let app = AsgiApp::new("").http(
        r#"
await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
await send({"type": "http.response.body", "body": b"ok\n"})
"#,
    );
    let p = Spawn::asgi_unix(dir.path(), "idle_asgi", &app)
        .args(["--workers", "2", "--loop", "asyncio"])
        .start();
    assert!(p.wait_log("all 2 workers ready", 30), "{}", p.logs());
    assert_eq!(p.get("/").0, 200, "{}", p.logs());
    std::thread::sleep(Duration::from_millis(1000));
    assert_quiet(&p, 2, 12, &[]);
}
