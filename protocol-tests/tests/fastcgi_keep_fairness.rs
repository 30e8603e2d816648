//! New connections beside busy kept FastCGI connections (a front server's
//! `fastcgi_keep_conn on` with `keepalive`, overloaded): the listen queue gets at least
//! every other turn of a worker's threads, instead of one in as many turns as there
//! are kept connections with a next request ready.
//!
//! regression (probe 323): 2 workers x 1 thread, an app sleeping 100 ms, nginx
//! `keepalive 32`, 150 clients: 228 of 808 requests answered 504 after nginx's 15 s,
//! while a fair queue serves each within 7.5 s.
//!
//! Raw FastCGI clients, no front server; the order is read from the app (it writes down
//! each request it serves), not from any duration.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use protocol_tests::harness::fcgi;
use protocol_tests::harness::*;

/// Kept connections that always have their next request ready.
const KEPT: usize = 6;
/// New connections waiting in the listen queue meanwhile.
const NEW: usize = 6;

/// A WSGI app that writes down each path it serves, one per line, in `order`, and
/// takes 30 ms for each (so every kept client has sent its next request before the
/// worker's only thread looks for the next one).
fn app(dir: &Path) -> String {
    let src = format!(
        r#"
import os, time
ORDER = os.path.join({dir:?}, "order")
def application(environ, start_response):
    with open(ORDER, "a") as f:
        f.write(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "") + "\n")
    time.sleep(0.03)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
    return [b"ok\n"]
"#,
        dir = dir.display().to_string()
    );
    std::fs::write(dir.join("fair.py"), src).unwrap();
    dir.join("fair.py").display().to_string()
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

fn connect(addr: &Addr) -> Box<dyn Stream> {
    match addr {
        Addr::Tcp(port) => {
            let s = std::net::TcpStream::connect(("127.0.0.1", *port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            Box::new(s)
        }
        Addr::Unix(path) => {
            let s = std::os::unix::net::UnixStream::connect(path).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            Box::new(s)
        }
    }
}

fn served(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("order"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Kept requests served between the first and the last new connection's request.
fn kept_between_new(order: &[String]) -> usize {
    let first = order.iter().position(|p| p.starts_with("/new"));
    let last = order.iter().rposition(|p| p.starts_with("/new"));
    match (first, last) {
        (Some(a), Some(b)) => order[a..=b].iter().filter(|p| *p == "/kept").count(),
        _ => usize::MAX,
    }
}

/// [`asgi_app`]'s wait that blocks the loop 30 ms.
const BLOCKING: &str = "time.sleep(0.03)";

/// The same app as ASGI, taking its time with `wait` (Python): `time.sleep` blocks
/// the event loop, so that every kept client's next request is ready when the loop
/// looks for the next one; `await asyncio.sleep` lets the loop take more meanwhile.
fn asgi_app(dir: &Path, wait: &str) -> String {
    format!(
        r#"
import asyncio, os, time
ORDER = os.path.join({dir:?}, "order")
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    with open(ORDER, "a") as f:
        f.write(scope["root_path"] + scope["path"] + "\n")
    {wait}
    await send({{"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"3")]}})
    await send({{"type": "http.response.body", "body": b"ok\n"}})
"#,
        dir = dir.display().to_string()
    )
}

fn new_connections_take_turns_beside_busy_kept_ones(sp: Spawn, dir: &Path) {
    let p = sp
        .protocol("fastcgi")
        .args(["--workers", "1", "--threads", "1"])
        .start();
    // Kept connections, each answered once (so it is parked), then each sends its
    // next request as soon as the last is answered, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let mut kept = Vec::new();
    for _ in 0..KEPT {
        let mut c = connect(&p.addr);
        let first = fcgi::kept_get(&mut c, "/warm");
        assert_eq!(first.map(|r| r.0), Some(200), "{}", p.logs());
        let stop = Arc::clone(&stop);
        kept.push(std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                match fcgi::kept_get(&mut c, "/kept") {
                    Some((200, _)) => n += 1,
                    other => panic!("a kept request answered {other:?}"),
                }
            }
            n
        }));
    }
    // Let every kept connection be busy (a few rounds of them served).
    assert!(
        wait_until(20, || served(dir).iter().filter(|l| *l == "/kept").count()
            >= 2 * KEPT),
        "the kept connections were not served ({:?}):\n{}",
        served(dir),
        p.logs()
    );
    // New connections, each with its whole request: they wait in the listen queue.
    let news: Vec<_> = (0..NEW)
        .map(|j| {
            let mut c = connect(&p.addr);
            c.write_all(&fcgi::get(1, false, &format!("/new{j}")))
                .unwrap();
            c
        })
        .collect();
    for mut c in news {
        assert_eq!(fcgi::status(&mut c), Some(200), "{}", p.logs());
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
    }
    stop.store(true, Ordering::Relaxed);
    let mut kept_total = 0;
    for t in kept {
        kept_total += t.join().expect("a kept client panicked");
    }
    let order = served(dir);
    let between = kept_between_new(&order);
    // Fair: about one kept request between two new ones (NEW - 1); before the fix
    // about KEPT between two (every kept connection ahead of the listener's turn).
    assert!(
        between <= 2 * (NEW - 1),
        "{between} kept requests were served between the first and the last of {NEW} new \
         connections (at most {} expected: the listen queue gets every other turn); \
         order served: {order:?}",
        2 * (NEW - 1)
    );
    assert!(kept_total > 0);
    // Nothing else went wrong meanwhile.
    let logs = p.logs();
    assert!(!logs.contains("ERROR"), "{logs}");
    drop(p);
    std::thread::sleep(Duration::from_millis(10));
}

#[test]
fn new_tcp_connections_take_turns_beside_busy_kept_fastcgi_connections() {
    let dir = tempfile::tempdir().unwrap();
    let sp = Spawn::tcp(dir.path(), &app(dir.path()));
    new_connections_take_turns_beside_busy_kept_ones(sp, dir.path());
}

#[test]
fn new_unix_connections_take_turns_beside_busy_kept_fastcgi_connections() {
    let dir = tempfile::tempdir().unwrap();
    let sp = Spawn::unix(dir.path(), &app(dir.path()));
    new_connections_take_turns_beside_busy_kept_ones(sp, dir.path());
}

// The event loop of an ASGI worker: its listeners sit in the loop's own epoll, apart
// from the kept connections (in the acceptor's), and a look that found a kept
// connection's request ready never reached the listen queue while one was.
// regression (probe 339): 8 uwsgi clients beside 16 kept FastCGI ones on one FastAPI
// worker: the new connections' p99 420 ms against the kept ones' 57 ms (2.3 s over SCGI).

#[test]
fn asgi_new_tcp_connections_take_turns_beside_busy_kept_fastcgi_connections() {
    let dir = tempfile::tempdir().unwrap();
    let sp = Spawn::asgi_tcp(dir.path(), "fair_asgi", &asgi_app(dir.path(), BLOCKING));
    new_connections_take_turns_beside_busy_kept_ones(sp.args(["--loop", "asyncio"]), dir.path());
}

#[test]
fn asgi_uvloop_new_unix_connections_take_turns_beside_busy_kept_fastcgi_connections() {
    let dir = tempfile::tempdir().unwrap();
    let Some(sp) = Spawn::asgi_unix(dir.path(), "fair_asgi", &asgi_app(dir.path(), BLOCKING))
        .event_loop("uvloop")
    else {
        return;
    };
    new_connections_take_turns_beside_busy_kept_ones(sp, dir.path());
}

// At --max-concurrency, each place a task frees goes to the listeners and to the kept
// connections in turn, whichever of the two woke the loop.
// regression (probe 344 HIGH, on the change that gave the listeners their own wake-up):
// with uvloop the listeners' wake-up came first and took every freed place: 16 kept
// FastCGI clients beside 16 uwsgi ones on one worker at --max-concurrency 2 got 195
// requests in 40 s against 3,595, their requests unread in the socket.
#[test]
fn asgi_kept_connections_keep_their_turns_at_the_cap_beside_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let Some(sp) = Spawn::asgi_unix(
        dir.path(),
        "cap_asgi",
        &asgi_app(dir.path(), "await asyncio.sleep(0.02)"),
    )
    .event_loop("uvloop") else {
        return;
    };
    let p = sp
        .protocol("fastcgi")
        .args(["--workers", "1", "--max-concurrency", "2"])
        .start();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut c = connect(&p.addr);
        assert_eq!(
            fcgi::kept_get(&mut c, "/warm").map(|r| r.0),
            Some(200),
            "{}",
            p.logs()
        );
        let stop = Arc::clone(&stop);
        clients.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match fcgi::kept_get(&mut c, "/kept") {
                    Some((200, _)) => {}
                    other => panic!("a kept request answered {other:?}"),
                }
            }
        }));
    }
    for _ in 0..4 {
        let stop = Arc::clone(&stop);
        let addr = p.addr.clone();
        clients.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut c = connect(&addr);
                c.write_all(&fcgi::get(1, false, "/new")).unwrap();
                assert_eq!(fcgi::status(&mut c), Some(200));
            }
        }));
    }
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("a client panicked");
    }
    let order = served(dir.path());
    let kept = order.iter().filter(|l| *l == "/kept").count();
    let new = order.iter().filter(|l| *l == "/new").count();
    // Fair: about as many of each (before the fix, a kept request in ten or fewer).
    assert!(
        new > 20 && kept * 2 >= new && new * 2 >= kept,
        "{kept} kept requests served beside {new} on new connections in 3 s:\n{}",
        p.logs()
    );
}
