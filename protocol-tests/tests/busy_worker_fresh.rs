//! A new connection that had sent nothing yet when its worker accepted it (behind
//! nginx or Apache under load the first read after accept often finds nothing: the
//! front server connects, then writes) waits for its request in that worker. If the
//! worker's Python threads all take long requests meanwhile, the request that then
//! comes on it goes to a worker with a free thread instead of waiting for one of them
//! to end.
//!
//! regression: probe 410 (Apache `mod_proxy_fcgi`, 2 workers × 4 threads, a load of
//! quick requests beside requests that sleep 3 s): a quick request now and then waited
//! about a second in a worker whose threads all slept while the other worker had
//! threads free, and with `--timeout` it was killed along with the sleeping ones.
//!
//! Checked by order, not by time: every quick request is answered while the long one
//! is still held (a gate file the test creates only afterwards).

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use protocol_tests::harness::*;

/// `/hold?N` creates `held-N` in `dir`, then waits for `gate-N` there (30 s at most);
/// every path answers the worker's pid.
fn app(dir: &Path) -> String {
    let src = format!(
        r#"
import os, time
DIR = {dir:?}
def application(environ, start_response):
    if environ["PATH_INFO"] == "/hold":
        n = environ["QUERY_STRING"]
        open(os.path.join(DIR, "held-" + n), "w").close()
        deadline = time.time() + 30
        while not os.path.exists(os.path.join(DIR, "gate-" + n)) and time.time() < deadline:
            time.sleep(0.01)
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
"#,
        dir = dir.display().to_string()
    );
    let path = dir.join("fresh_app.py");
    std::fs::write(&path, src).unwrap();
    path.display().to_string()
}

/// The body of a whole uwsgi, SCGI or FastCGI response read until EOF; `None` when
/// nothing came within the read timeout (20 s; the long request is held 30 s).
fn answer(mut s: Box<dyn Conn>, fastcgi: bool) -> Option<String> {
    if fastcgi {
        let mut reply = fcgi::Reply::default();
        loop {
            let rec = fcgi::read(&mut *s)?;
            match rec.kind {
                fcgi::STDOUT => reply.stdout.extend_from_slice(&rec.content),
                fcgi::END_REQUEST => break,
                _ => {}
            }
        }
        let (status, _, body) = reply.cgi();
        assert_eq!(status, 200);
        return Some(String::from_utf8_lossy(&body).into_owned());
    }
    let mut out = Vec::new();
    if s.read_to_end(&mut out).is_err() || out.is_empty() {
        return None;
    }
    let r = parse_http(&out).expect("an HTTP response");
    assert_eq!(r.status, 200);
    Some(String::from_utf8_lossy(&r.body).into_owned())
}

fn request(path: &str, protocol: &str) -> Vec<u8> {
    match protocol {
        "fastcgi" => fcgi::get(1, false, path),
        "scgi" => scgi_get(path),
        _ => uwsgi_get(path),
    }
}

/// An SCGI GET as nginx's scgi_params send it.
fn scgi_get(target: &str) -> Vec<u8> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let vars = [
        ("CONTENT_LENGTH", "0"),
        ("SCGI", "1"),
        ("REQUEST_METHOD", "GET"),
        ("PATH_INFO", path),
        ("QUERY_STRING", query),
        ("REQUEST_URI", target),
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

/// How a worker's thread finds a new connection's first read: nothing yet (a Unix
/// socket: it waits for its first bytes in the worker), or part of its head (over TCP,
/// where the kernel hands a connection over only once its first bytes came: the slow
/// lane reads the rest, as it does for a third of Apache's FastCGI requests).
#[derive(Clone, Copy, PartialEq)]
enum First {
    Nothing,
    PartOfHead,
}

/// A worker's only thread takes a long request while other connections it accepted
/// wait for the rest of their requests: those requests, once whole, are answered by
/// the other worker, not after the long one.
fn quick_requests_do_not_wait_behind_a_busy_worker(protocol: &'static str, first: First) {
    let fastcgi = protocol == "fastcgi";
    let dir = tempdir();
    let spawn = if first == First::Nothing {
        Spawn::unix(dir.path(), &app(dir.path()))
    } else {
        Spawn::tcp(dir.path(), &app(dir.path()))
    };
    let p = spawn
        .protocol(protocol)
        .args(["--workers", "2", "--threads", "1"])
        .start();
    assert!(wait_until(20, || p.ready_worker_pids().len() == 2));
    // Bytes sent at connect: enough for the kernel to hand the connection over, not
    // a whole head.
    let part = match (first, protocol) {
        (First::Nothing, _) => 0,
        // BEGIN_REQUEST alone, as Apache writes it.
        (_, "fastcgi") => 16,
        // The packet header; SCGI: the netstring's length.
        _ => 4,
    };
    // Which worker accepts which connection is the kernel's choice: rounds until one
    // had requests waiting in the busy worker (nearly always the first).
    for round in 0..4 {
        let quick = request("/quick", protocol);
        let hold = request(&format!("/hold?{round}"), protocol);
        // A worker's thread accepts each while it waits, and lets it wait there for
        // the rest of its request.
        let mut waiting: Vec<Box<dyn Conn>> = (0..9)
            .map(|i| {
                let mut c = p.addr.connect().unwrap();
                let first = if i == 2 * round + 1 { &hold } else { &quick };
                c.write_all(&first[..part]).unwrap();
                c
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        // A long request on one of them takes its worker's only thread, with the
        // others accepted by that worker waiting there.
        let mut held = waiting.remove(2 * round + 1);
        held.write_all(&hold[part..]).unwrap();
        let began = dir.path().join(format!("held-{round}"));
        assert!(
            wait_until(10, || began.exists()),
            "the long request did not begin"
        );
        std::thread::sleep(Duration::from_millis(300));
        for c in &mut waiting {
            c.write_all(&quick[part..]).unwrap();
        }
        let mut answered = Vec::new();
        for (i, c) in waiting.into_iter().enumerate() {
            match answer(c, fastcgi) {
                Some(pid) => answered.push(pid),
                None => panic!(
                    "round {round}: quick request {i} was not answered while the long request held its worker's only thread (answered so far by {answered:?})"
                ),
            }
        }
        std::fs::write(dir.path().join(format!("gate-{round}")), b"").unwrap();
        let hold_pid = answer(held, fastcgi).expect("the long request's answer");
        assert!(
            answered.iter().all(|pid| *pid != hold_pid),
            "round {round}: a quick request was answered by the busy worker before its long request ended: {answered:?} (long: {hold_pid})"
        );
        // The case happened: requests waited in the busy worker and were handed on.
        if p.wait_log(HANDED, 1) {
            return;
        }
    }
    panic!("no request was handed on in 4 rounds: the test did not reproduce the case");
}

/// The line of a request handed on (rate-limited: the first of each second is INFO).
const HANDED: &str = "is busy: a request goes to a worker with a free thread";

#[test]
fn uwsgi_part_of_a_head() {
    quick_requests_do_not_wait_behind_a_busy_worker("uwsgi", First::PartOfHead);
}

#[test]
fn scgi_part_of_a_head() {
    quick_requests_do_not_wait_behind_a_busy_worker("scgi", First::PartOfHead);
}

#[test]
fn fastcgi_begin_request_alone() {
    quick_requests_do_not_wait_behind_a_busy_worker("fastcgi", First::PartOfHead);
}

#[test]
fn uwsgi_nothing_yet() {
    quick_requests_do_not_wait_behind_a_busy_worker("uwsgi", First::Nothing);
}

#[test]
fn fastcgi_nothing_yet() {
    quick_requests_do_not_wait_behind_a_busy_worker("fastcgi", First::Nothing);
}
