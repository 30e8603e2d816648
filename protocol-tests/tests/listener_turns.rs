//! Several listeners (uwsgi, FastCGI, SCGI) served by workers that each take very few
//! requests: every listener gets its turn, whatever its place on the command line.
//!
//! The order is read from the app (it writes down each request it serves), not from
//! any duration.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use protocol_tests::harness::*;

/// A WSGI app: `/hold` waits until the file `gate` exists (after writing `held`);
/// every other path is written down, one per line, in `order`, as it is served. A
/// worker started once `held` exists (a successor: under `--max-requests 1` the
/// master starts it as soon as the first takes /hold) waits for `gate` before its
/// import ends, so that it looks at its listeners only once the test's requests wait.
fn app(dir: &Path) -> String {
    let src = format!(
        r#"
import os, time
DIR = {dir:?}
if os.path.exists(os.path.join(DIR, "held")):
    while not os.path.exists(os.path.join(DIR, "gate")):
        time.sleep(0.01)
def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/hold":
        open(os.path.join(DIR, "held"), "w").close()
        while not os.path.exists(os.path.join(DIR, "gate")):
            time.sleep(0.01)
    else:
        with open(os.path.join(DIR, "order"), "a") as f:
            f.write(path + "\n")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
    return [b"ok\n"]
"#,
        dir = dir.display().to_string()
    );
    std::fs::write(dir.join("turns.py"), src).unwrap();
    dir.join("turns.py").display().to_string()
}

fn scgi_get(path: &str) -> Vec<u8> {
    let vars = [
        ("CONTENT_LENGTH", "0"),
        ("SCGI", "1"),
        ("REQUEST_METHOD", "GET"),
        ("PATH_INFO", path),
        ("QUERY_STRING", ""),
        ("REQUEST_URI", path),
        ("SERVER_NAME", "test"),
        ("SERVER_PORT", "80"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
    ];
    let mut block = Vec::new();
    for (k, v) in vars {
        block.extend_from_slice(k.as_bytes());
        block.push(0);
        block.extend_from_slice(v.as_bytes());
        block.push(0);
    }
    let mut out = format!("{}:", block.len()).into_bytes();
    out.extend_from_slice(&block);
    out.push(b',');
    out
}

/// Connects to `port` and sends `req` now (it waits in the listen queue until a
/// worker accepts it); the reply is read later.
fn send(port: u16, req: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(req).unwrap();
    s
}

fn reply(mut s: TcpStream) -> String {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

// regression: every new worker armed its listeners in the epoll in command-line order,
// so under --max-requests 1 each took its one request from the first listener while
// that one had connections waiting: a uwsgi listener under load starved the FastCGI and
// SCGI ones (hostile6: 574 uwsgi requests served against 13 FastCGI and 1 SCGI in 5 s,
// the SCGI client timing out).
#[test]
fn a_worker_that_takes_one_request_does_not_always_take_it_from_the_first_listener() {
    let dir = tempdir();
    let app = app(dir.path());
    let scgi_port = free_port();
    let spawn = Spawn::tcp(dir.path(), &app);
    let Addr::Tcp(uwsgi_port) = spawn.addr().clone() else {
        unreachable!()
    };
    let p = spawn
        .args(["--workers", "1", "--max-requests", "1"])
        .args(["--scgi", &format!("127.0.0.1:{scgi_port}")])
        .start();
    // The worker takes its one request and holds it: what comes now waits in the
    // listen queues, three on the uwsgi listener (the first) and one on the SCGI one.
    let hold = send(uwsgi_port, &uwsgi_get("/hold"));
    assert!(
        wait_file(&dir.path().join("held"), 30),
        "the app never started /hold:\n{}",
        p.logs()
    );
    let queued: Vec<TcpStream> = vec![
        send(uwsgi_port, &uwsgi_get("/uwsgi-1")),
        send(uwsgi_port, &uwsgi_get("/uwsgi-2")),
        send(uwsgi_port, &uwsgi_get("/uwsgi-3")),
        send(scgi_port, &scgi_get("/scgi")),
    ];
    std::fs::write(dir.path().join("gate"), "").unwrap();
    assert!(reply(hold).contains("ok"), "{}", p.logs());
    for s in queued {
        let r = reply(s);
        assert!(
            r.contains("200") && r.ends_with("ok\n"),
            "{r:?}\n{}",
            p.logs()
        );
    }
    let order = std::fs::read_to_string(dir.path().join("order")).unwrap();
    let order: Vec<&str> = order.lines().collect();
    assert_eq!(order.len(), 4, "{order:?}");
    // A new worker arms its listeners from the one after the listener the last request
    // came from: the worker after /hold's (uwsgi) looks at the SCGI listener first.
    // Before, every worker took the uwsgi listener's three first, and the SCGI request
    // came last.
    assert_eq!(
        order.first(),
        Some(&"/scgi"),
        "the SCGI request waited behind the uwsgi ones: {order:?}\n{}",
        p.logs()
    );
}
