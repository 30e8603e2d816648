//! A request nginx sends on a kept FastCGI connection parked in a worker whose Python
//! threads are all busy is served by a worker with a free thread, not held until one of
//! the busy worker's requests ends (deploy tester's HIGH: with `fastcgi_keep_conn on`
//! and 2 workers × 2 threads, load requests waited 10 s behind three 10 s requests, and
//! with `fastcgi_read_timeout 3s` nginx answered 504).
//!
//! nginx (`fastcgi_keep_conn on` + upstream `keepalive`) and postern `--workers 2
//! --threads 1`: a concurrent warm-up leaves kept connections parked in both workers,
//! one long request pins a worker's only thread, then concurrent short requests (which
//! nginx sends on its cached connections, some parked in the pinned worker) must each
//! be answered within a second. Needs nginx: fails in CI if missing.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol_tests::harness::*;
use protocol_tests::stack::{Stack, Upstream};

/// How long the pinning request runs.
const PIN: Duration = Duration::from_secs(5);

/// Concurrent short requests: `clients` at once, `each` requests each; returns every
/// request's (time, status, body).
fn burst(port: u16, clients: usize, each: usize) -> Vec<(Duration, u16, String)> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let out = Arc::clone(&out);
            std::thread::spawn(move || {
                for _ in 0..each {
                    let t = Instant::now();
                    let (status, body) = http_get(port, "/pid");
                    out.lock().unwrap().push((t.elapsed(), status, body));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a client thread panicked");
    }
    Arc::try_unwrap(out).unwrap().into_inner().unwrap()
}

/// One GET through nginx on a connection of its own (nginx's upstream side is what
/// keeps connections).
fn http_get(port: u16, target: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn a_request_on_a_connection_parked_in_a_busy_worker_goes_to_a_free_one() {
    let Some(s) = Stack::build(Upstream::FastCgiKeepConn)
        .args(["--workers", "2", "--threads", "1"])
        .extra("fastcgi_read_timeout 30s;")
        .start()
    else {
        return;
    };
    let port = s.nginx.port;
    assert!(
        s.postern.wait_log("all 2 workers ready", 30),
        "postern did not start:\n{}",
        s.postern.logs()
    );
    // Warm-up: concurrent requests until both workers have answered, so nginx keeps
    // connections to each (a worker's only thread busy, the other accepts).
    let mut pids = BTreeSet::new();
    for _ in 0..20 {
        for (_, status, body) in burst(port, 8, 4) {
            assert_eq!(status, 200, "warm-up: {body}");
            pids.insert(body);
        }
        if pids.len() >= 2 {
            break;
        }
    }
    assert_eq!(pids.len(), 2, "both workers served the warm-up: {pids:?}");
    // The long request pins one worker's only thread.
    let mark = s.dir.path().join("pinned");
    let pin = {
        let target = format!("/marked-sleep?s={}&mark={}", PIN.as_secs(), mark.display());
        std::thread::spawn(move || http_get(port, &target))
    };
    assert!(
        wait_until(10, || mark.exists()),
        "the long request never reached the app:\n{}",
        s.postern.logs()
    );
    let t0 = Instant::now();
    let mut times = burst(port, 8, 8);
    times.sort_by_key(|(t, _, _)| *t);
    let elapsed = t0.elapsed();
    let (pinned_status, _) = pin.join().unwrap();
    assert_eq!(pinned_status, 200, "the long request");
    let slow: Vec<_> = times
        .iter()
        .filter(|(t, _, _)| *t > Duration::from_secs(1))
        .collect();
    let logs = s.postern.logs();
    assert!(
        slow.is_empty() && elapsed < PIN,
        "{} of {} short requests took over 1 s while a worker's only thread was busy (slowest {:?}, burst {elapsed:?}): {slow:?}\n{}",
        slow.len(),
        times.len(),
        times.last().map(|t| t.0),
        logs
    );
    assert!(
        times.iter().all(|(_, status, _)| *status == 200),
        "statuses: {times:?}"
    );
    s.assert_clean("busy worker");
    eprintln!(
        "{} short requests beside a pinned worker: slowest {:?} ({} hand-over lines logged)",
        times.len(),
        times.last().map(|t| t.0),
        logs.matches("goes to a worker with a free thread").count()
    );
}

/// Voluntary context switches so far of the I/O threads (`postern-io`) and the busy
/// watch's threads (`postern-busy`, which hear of what the watch reports) of the
/// processes `pids`: how often they slept and were woken.
fn io_thread_wakes(pids: &BTreeSet<String>) -> u64 {
    let mut sum = 0;
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if !matches!(comm.trim(), "postern-io" | "postern-busy") {
                continue;
            }
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            sum += status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    sum
}

// Issue 9's cost per request: the hand-over's wake-up of a worker's I/O thread came
// with every request that took the worker's last free thread (every request at
// --threads 1): one per request at moderate rates (and a second one 10 ms later; at
// higher rates the 10 ms looks absorbed them); now only a request that comes on a
// parked connection while no Python thread waits for one wakes it. Requests one at a
// time, 20 ms apart, each find a thread waiting. Before: 100 of them woke the two
// I/O threads ~200 times more than as long idle; the bound is a third of the requests
// beyond that (the threads also wake on their own a few times a second).
#[test]
fn requests_that_find_a_thread_waiting_do_not_wake_the_io_thread() {
    let Some(s) = Stack::build(Upstream::FastCgiKeepConn)
        .args(["--workers", "2", "--threads", "1"])
        .start()
    else {
        return;
    };
    let port = s.nginx.port;
    assert!(
        s.postern.wait_log("all 2 workers ready", 30),
        "postern did not start:\n{}",
        s.postern.logs()
    );
    // Both workers with kept connections parked, as in the test above.
    let mut pids = BTreeSet::new();
    for _ in 0..20 {
        for (_, status, body) in burst(port, 8, 4) {
            assert_eq!(status, 200, "warm-up: {body}");
            pids.insert(body);
        }
        if pids.len() >= 2 {
            break;
        }
    }
    assert_eq!(pids.len(), 2, "both workers served the warm-up: {pids:?}");
    const REQUESTS: u64 = 100;
    const APART: Duration = Duration::from_millis(20);
    let before = io_thread_wakes(&pids);
    let t0 = Instant::now();
    for _ in 0..REQUESTS {
        let (status, body) = http_get(port, "/pid");
        assert_eq!(status, 200, "{body}");
        assert!(
            pids.contains(&body),
            "served by a worker of the start: {body}"
        );
        std::thread::sleep(APART);
    }
    let took = t0.elapsed();
    let woken = io_thread_wakes(&pids) - before;
    // As long idle: what the I/O threads wake for anyway.
    let before = io_thread_wakes(&pids);
    std::thread::sleep(took);
    let idle = io_thread_wakes(&pids) - before;
    eprintln!(
        "{REQUESTS} requests one at a time in {took:?}: the I/O threads woke {woken} times ({idle} as long idle)"
    );
    assert!(
        woken < idle + REQUESTS / 3,
        "{REQUESTS} requests one at a time woke the workers' I/O threads {woken} times ({idle} as long idle)\n{}",
        s.postern.logs()
    );
    s.assert_clean("requests one at a time");
}

// A worker started alone (--workers 1 under a master) hands a request waiting on its
// parked connections to a worker a SIGTTIN adds: before, its hand-over never ran (not
// started without siblings), and a request nginx sent on one of its connections
// waited for its busy thread however long (here the 20 s pin: long enough for the
// new worker's start and the burst on a loaded CI, which must end inside it).
#[test]
fn a_worker_started_alone_hands_over_to_one_sigttin_adds() {
    const PIN: Duration = Duration::from_secs(20);
    let Some(s) = Stack::build(Upstream::FastCgiKeepConn)
        .args(["--master", "--workers", "1", "--threads", "1"])
        .extra("fastcgi_read_timeout 30s;")
        .start()
    else {
        return;
    };
    let port = s.nginx.port;
    assert!(
        s.postern.wait_log("worker ready", 30),
        "postern did not start:\n{}",
        s.postern.logs()
    );
    // nginx keeps connections to the only worker.
    for (_, status, body) in burst(port, 4, 4) {
        assert_eq!(status, 200, "warm-up: {body}");
    }
    let mark = s.dir.path().join("pinned");
    let pin = {
        let target = format!("/marked-sleep?s={}&mark={}", PIN.as_secs(), mark.display());
        std::thread::spawn(move || http_get(port, &target))
    };
    assert!(
        wait_until(10, || mark.exists()),
        "the long request never reached the app:\n{}",
        s.postern.logs()
    );
    let pinned_at = Instant::now();
    s.postern.signal(libc::SIGTTIN);
    assert!(
        wait_until(10, || s.postern.logs().matches("worker ready").count() >= 2),
        "the worker SIGTTIN adds did not start:\n{}",
        s.postern.logs()
    );
    let t0 = Instant::now();
    let mut times = burst(port, 4, 4);
    times.sort_by_key(|(t, _, _)| *t);
    let elapsed = t0.elapsed();
    let within_pin = pinned_at.elapsed() < PIN;
    let (pinned_status, _) = pin.join().unwrap();
    assert_eq!(pinned_status, 200, "the long request");
    let slow: Vec<_> = times
        .iter()
        .filter(|(t, _, _)| *t > Duration::from_secs(1))
        .collect();
    let logs = s.postern.logs();
    assert!(
        slow.is_empty(),
        "{} of {} short requests took over 1 s while the first worker's only thread was busy: {slow:?}\n{logs}",
        slow.len(),
        times.len(),
    );
    assert!(
        within_pin,
        "the burst ({elapsed:?}) did not end while the first worker was pinned: no conclusion\n{logs}"
    );
    assert!(
        times.iter().all(|(_, status, _)| *status == 200),
        "statuses: {times:?}"
    );
    s.assert_clean("SIGTTIN beside a pinned worker");
    eprintln!(
        "{} short requests after SIGTTIN beside a pinned worker: slowest {:?} ({} hand-over lines logged)",
        times.len(),
        times.last().map(|t| t.0),
        logs.matches("goes to a worker with a free thread").count()
    );
}

/// Each epoll of process `pid`: its fd and the fds it watches (`tfd:` in its fdinfo).
fn epolls(pid: &str) -> Vec<(u32, Vec<u32>)> {
    let mut out = Vec::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for fd in fds.flatten() {
        let target = std::fs::read_link(fd.path()).unwrap_or_default();
        if target.to_string_lossy() != "anon_inode:[eventpoll]" {
            continue;
        }
        let Some(n) = fd.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{n}")).unwrap_or_default();
        let watched = info
            .lines()
            .filter_map(|l| l.strip_prefix("tfd:"))
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect();
        out.push((n, watched));
    }
    out
}

// review-kc MEDIUM 1: the busy watch (the epoll where each parked kept connection is
// registered behind the Python threads' one) sat inside the I/O thread's epoll, and
// an add into an epoll that another epoll watches takes the kernel-wide epoll nesting
// lock (and runs a loop check): each re-arm of a parked connection, in every worker.
// Now a thread of its own waits on it: no epoll that watches the connections is
// watched by another. Before: each worker's watch was in tokio's epoll (fails).
#[test]
fn no_epoll_that_watches_connections_is_inside_another() {
    let Some(s) = Stack::build(Upstream::FastCgiKeepConn)
        .args(["--workers", "2", "--threads", "1"])
        .start()
    else {
        return;
    };
    let port = s.nginx.port;
    assert!(
        s.postern.wait_log("all 2 workers ready", 30),
        "postern did not start:\n{}",
        s.postern.logs()
    );
    let mut pids = BTreeSet::new();
    for _ in 0..20 {
        for (_, status, body) in burst(port, 8, 4) {
            assert_eq!(status, 200, "warm-up: {body}");
            pids.insert(body);
        }
        if pids.len() >= 2 {
            break;
        }
    }
    assert_eq!(pids.len(), 2, "both workers served the warm-up: {pids:?}");
    for pid in &pids {
        let socket = |fd: u32| {
            std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
        };
        let eps = epolls(pid);
        // The Python threads' epoll and the watch both hold the parked connections.
        let of_conns: Vec<u32> = eps
            .iter()
            .filter(|(_, w)| w.iter().any(|&fd| socket(fd)))
            .map(|(fd, _)| *fd)
            .collect();
        assert!(
            of_conns.len() >= 2,
            "worker {pid}: the threads' epoll and the busy watch, each with the kept connections: {eps:?}"
        );
        for (fd, watched) in &eps {
            let nested: Vec<_> = watched.iter().filter(|w| of_conns.contains(w)).collect();
            assert!(
                nested.is_empty(),
                "worker {pid}: epoll {fd} watches {nested:?}, which watch the connections (the kernel-wide nesting lock at each add): {eps:?}"
            );
        }
    }
    s.assert_clean("epolls");
}
