//! FastCGI request bodies behind a real nginx with `fastcgi_request_buffering off`, where
//! a chunked upload comes as STDIN records with no CONTENT_LENGTH while the client sends
//! it: the app is called once the whole body is here, with its CONTENT_LENGTH (WSGI) /
//! `content-length` header (ASGI), so apps that trust only that (Django) see the body;
//! and an app that answers before its body has all come leaves the client's keep-alive
//! connection usable (END_REQUEST waits for the end of STDIN). And requests cut off by
//! a multiplexed one without FCGI_KEEP_CONN are logged.
//! Needs nginx: fails in CI if missing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use protocol_tests::harness::*;
use protocol_tests::stack::{Stack, Upstream};

/// Reads the body by CONTENT_LENGTH only, as Django does.
const WSGI_APP: &str = r#"
import hashlib, json

def application(environ, start_response):
    if environ["PATH_INFO"] == "/unread":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "11")])
        return [b"not read 1\n"]
    cl = environ.get("CONTENT_LENGTH", "")
    body = environ["wsgi.input"].read(int(cl)) if cl else b""
    out = json.dumps({"cl": cl, "len": len(body), "sha": hashlib.sha256(body).hexdigest()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
    return [out]
"#;

/// The `content-length` header the app was given, and what `receive()` brought.
const ASGI_HTTP: &str = r#"
if scope["path"] == "/unread":
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"11")]})
    await send({"type": "http.response.body", "body": b"not read 1\n"})
    return
cl = dict(scope["headers"]).get(b"content-length", b"").decode()
body = b""
while True:
    m = await receive()
    body += m.get("body", b"")
    if not m.get("more_body"):
        break
out = json.dumps({"cl": cl, "len": len(body), "sha": hashlib.sha256(body).hexdigest()}).encode()
await send({"type": "http.response.start", "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]})
await send({"type": "http.response.body", "body": out})
"#;

/// postern serving `app` (a WSGI file, or an ASGI module's source) over FastCGI behind
/// nginx with `fastcgi_request_buffering off`.
fn stack(upstream: Upstream, asgi: bool, args: &[&str]) -> Option<Stack> {
    let bin = nginx_bin()?;
    let dir = tempdir();
    let spawn = if asgi {
        let src = AsgiApp::new("import hashlib, json").http(ASGI_HTTP);
        Spawn::asgi_unix(dir.path(), "bodyapp", &src)
    } else {
        let app = dir.path().join("bodyapp.py");
        std::fs::write(&app, WSGI_APP).unwrap();
        Spawn::unix(dir.path(), app.to_str().unwrap())
    };
    let postern = spawn.protocol("fastcgi").args(args.iter().copied()).start();
    let site = upstream.site(&postern.addr.nginx(), "fastcgi_request_buffering off;", "");
    let nginx = Nginx::start_site(&bin, dir.path(), &site);
    Some(Stack::from_parts(nginx, postern, dir))
}

/// A test body of `n` bytes.
fn body(n: usize) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect()
}

/// Sends `body` chunked on `c` (keep-alive), its first piece then the rest after a
/// pause: nginx has passed the head on (and postern has its PARAMS) before the body
/// ends.
fn send_chunked(c: &mut TcpStream, path: &str, body: &[u8]) {
    c.write_all(
        format!("POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let (first, rest) = body.split_at(body.len().min(3));
    for (i, piece) in [first, rest].into_iter().enumerate() {
        if i == 1 {
            std::thread::sleep(Duration::from_millis(150));
        }
        for chunk in piece.chunks(40_000).filter(|c| !c.is_empty()) {
            c.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .unwrap();
            c.write_all(chunk).unwrap();
            c.write_all(b"\r\n").unwrap();
        }
    }
    c.write_all(b"0\r\n\r\n").unwrap();
}

/// Reads one response with a Content-Length from a kept-alive connection.
fn read_response(c: &mut TcpStream) -> Response {
    let mut raw = Vec::new();
    let mut b = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        match c.read(&mut b) {
            Ok(1) => raw.push(b[0]),
            _ => panic!(
                "connection ended inside a response head: {:?}",
                String::from_utf8_lossy(&raw)
            ),
        }
    }
    let head = String::from_utf8_lossy(&raw).to_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0u8; len];
    c.read_exact(&mut body).unwrap();
    raw.extend_from_slice(&body);
    parse_http(&raw).expect("a response")
}

/// Each body, chunked through nginx on one kept-alive client connection, reaches the
/// app whole with its length.
fn uploads_arrive_whole(s: &Stack, sizes: &[usize], what: &str) {
    let mut c = TcpStream::connect(("127.0.0.1", s.nginx.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    for &n in sizes {
        let b = body(n);
        send_chunked(&mut c, "/upload", &b);
        let r = read_response(&mut c);
        assert_eq!(r.status, 200, "{what}, {n} bytes: {}", s.postern.logs());
        let j = r.json();
        assert_eq!(
            j["cl"],
            n.to_string(),
            "{what}: the app was not given the length of a {n}-byte chunked body"
        );
        assert_eq!(j["len"], n, "{what}: {n} bytes");
        assert_eq!(j["sha"], sha256_hex(&b), "{what}: {n} bytes");
    }
    s.assert_clean(what);
}

// regression: hostile #1 (HIGH): with fastcgi_request_buffering off, a chunked upload
// not whole when postern had its PARAMS reached the app without CONTENT_LENGTH, and
// Django read an empty body (15 of 20 multipart uploads answered 400).
#[test]
fn a_chunked_upload_reaches_a_wsgi_app_whole_with_its_content_length() {
    for upstream in [Upstream::FastCgiKeepConn, Upstream::FastCgi] {
        // Kept in memory, then spooled to a file (over the threshold).
        let args = ["--threads", "2", "--body-spool-threshold", "100K"];
        let Some(s) = stack(upstream, false, &args) else {
            return;
        };
        uploads_arrive_whole(&s, &[5, 50_000, 300_000], &format!("{upstream:?}"));
    }
}

#[test]
fn a_chunked_upload_reaches_an_asgi_app_whole_with_its_content_length() {
    let args = ["--threads", "2", "--body-spool-threshold", "100K"];
    let Some(s) = stack(Upstream::FastCgiKeepConn, true, &args) else {
        return;
    };
    uploads_arrive_whole(&s, &[5, 50_000, 300_000], "asgi");
}

#[test]
fn a_chunked_upload_over_max_body_is_answered_413_before_the_app_runs() {
    for asgi in [false, true] {
        let args = ["--threads", "2", "--max-body", "100K"];
        let Some(s) = stack(Upstream::FastCgiKeepConn, asgi, &args) else {
            return;
        };
        let mut c = TcpStream::connect(("127.0.0.1", s.nginx.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        send_chunked(&mut c, "/upload", &body(300_000));
        let r = read_response(&mut c);
        assert_eq!(r.status, 413, "asgi={asgi}: {}", s.postern.logs());
        assert!(
            s.postern.wait_log("over --max-body; answered 413", 5),
            "{}",
            s.postern.logs()
        );
        // The kept connection to postern serves on.
        uploads_arrive_whole(&s, &[50_000], &format!("after a 413, asgi={asgi}"));
    }
}

// regression: hostile #2 (MEDIUM): with fastcgi_request_buffering off, an app that
// answered without reading its body had its END_REQUEST (or, without keep-conn, the
// empty STDOUT) sent before nginx had sent the whole body; nginx then ended the
// request with the client's body unread and closed the client's keep-alive
// connection (3,076 RemoteDisconnected in /tmp/hostile/repro1's load of 100-5100 byte
// POSTs), and postern logged "closed the FastCGI connection in the middle of a record".
#[test]
fn an_app_that_does_not_read_its_body_leaves_the_client_connection_usable() {
    for (upstream, asgi) in [
        (Upstream::FastCgiKeepConn, false),
        (Upstream::FastCgi, false),
        (Upstream::FastCgiKeepConn, true),
    ] {
        let what = format!("{upstream:?} asgi={asgi}");
        let Some(s) = stack(upstream, asgi, &["--threads", "2"]) else {
            return;
        };
        let mut c = TcpStream::connect(("127.0.0.1", s.nginx.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        // The postern log says why, if nginx ends the connection.
        let _log = Explain(&s, what.clone());
        for round in 0..40 {
            // With a Content-Length: nginx passes it on as it reads it, announced.
            // The head, then the body a moment later (as Python's http.client sends
            // them): the app has answered before the body comes.
            let n = 100 + round * 127;
            c.write_all(
                format!("POST /unread HTTP/1.1\r\nHost: x\r\nContent-Length: {n}\r\n\r\n")
                    .as_bytes(),
            )
            .unwrap();
            std::thread::sleep(Duration::from_millis(20));
            c.write_all(&body(n)).unwrap();
            let r = read_response(&mut c);
            assert_eq!(r.status, 200, "{what}, round {round}");
            assert_eq!(r.text(), "not read 1\n", "{what}, round {round}");
            // The same client connection serves on.
            send_chunked(&mut c, "/upload", b"after");
            let r = read_response(&mut c);
            assert_eq!(r.json()["len"], 5, "{what}, round {round}");
        }
        s.assert_clean(&what);
        let logs = s.postern.logs();
        assert!(!logs.contains("middle of a record"), "{what}: {logs}");
        assert!(!logs.contains("ERROR"), "{what}: {logs}");
    }
}

/// Prints both logs if the test fails while it lives.
struct Explain<'a>(&'a Stack, String);

impl Drop for Explain<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- {} ----\nnginx:\n{}\npostern:\n{}",
                self.1,
                self.0.nginx.error_log(),
                self.0.postern.logs()
            );
        }
    }
}

/// nginx stops sending a body once it has passed the response head on: a large body
/// left unread never ends, and its END_REQUEST must not wait for that end.
#[test]
fn an_unread_large_body_does_not_hold_the_response_end() {
    for upstream in [Upstream::FastCgiKeepConn, Upstream::FastCgi] {
        let Some(s) = stack(upstream, false, &["--threads", "2", "--read-timeout", "30"]) else {
            return;
        };
        for _ in 0..3 {
            let mut c = TcpStream::connect(("127.0.0.1", s.nginx.port)).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let n = 3_000_000;
            let mut req =
                format!("POST /unread HTTP/1.1\r\nHost: x\r\nContent-Length: {n}\r\n\r\n")
                    .into_bytes();
            req.extend(body(n));
            // nginx may stop reading it: written on the side.
            let mut w = c.try_clone().unwrap();
            std::thread::spawn(move || {
                let _ = w.write_all(&req);
            });
            let r = read_response(&mut c);
            assert_eq!(r.text(), "not read 1\n", "{upstream:?}");
            // The request ends within moments (nginx then closes the connection or
            // serves on), not after --read-timeout.
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = c.write_all(b"GET /unread HTTP/1.1\r\nHost: x\r\n\r\n");
            let mut b = [0u8; 1];
            match c.read(&mut b) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                Err(e) => panic!("{upstream:?}: the request did not end: {e}"),
            }
        }
        s.assert_clean(&format!("{upstream:?}"));
        // nginx closes the connection wherever the body stopped: not a warning.
        let logs = s.postern.logs();
        assert!(!logs.contains("middle of a record"), "{upstream:?}: {logs}");
    }
}

// regression: hostile #3b (LOW): requests 1 and 2 (FCGI_KEEP_CONN) and 3 (without)
// multiplexed on one connection: 3's end closed the connection, and 1, still running,
// was dropped with no log line. It is still cut off (without keep-conn the connection
// ends with 3), but the log says so.
#[test]
fn requests_cut_off_by_a_multiplexed_request_without_keep_conn_are_logged() {
    use protocol_tests::harness::fcgi;
    let dir = tempdir();
    let app = dir.path().join("mpxapp.py");
    std::fs::write(
        &app,
        "import time\ndef application(environ, start_response):\n    if environ['PATH_INFO'] == '/slow':\n        time.sleep(0.5)\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [b'ok']\n",
    )
    .unwrap();
    let p = Spawn::unix(dir.path(), app.to_str().unwrap())
        .protocol("fastcgi")
        .args(["--threads", "4"])
        .start();
    let vars = |path: &str| {
        vec![
            ("REQUEST_METHOD", "GET".to_owned()),
            ("PATH_INFO", path.to_owned()),
            ("SERVER_NAME", "x".to_owned()),
            ("SERVER_PORT", "80".to_owned()),
            ("SERVER_PROTOCOL", "HTTP/1.1".to_owned()),
        ]
    };
    let mut out = Vec::new();
    for (id, keep, path) in [(1, true, "/slow"), (2, true, "/"), (3, false, "/")] {
        let v = vars(path);
        let v: Vec<(&str, &str)> = v.iter().map(|(k, v)| (*k, v.as_str())).collect();
        out.extend(fcgi::request(id, keep, &v, b""));
    }
    let mut c = p.addr.connect().unwrap();
    c.write_all(&out).unwrap();
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    let said = "multiplexed on it that were not answered yet are cut off";
    assert!(p.wait_log(said, 5), "{}", p.logs());
    // Request 1 sleeps through 3's end; 2 may or may not be answered by then.
    let logs = p.logs();
    assert!(log_line(&logs, said).contains("cut=[1"), "{logs}");
}

// regression (review of 11cc4ee): every multiplexed request collecting a body without
// CONTENT_LENGTH past --body-spool-threshold got a temporary file of its own: a raw
// client with 64 such requests on each of 4 connections held 239 files, the worker ran
// out of descriptors and accepted nothing more. One file per connection at a time now:
// the others are answered 503 and their files never made.
#[test]
fn a_connection_spools_one_collected_body_at_a_time() {
    use protocol_tests::harness::fcgi;
    let dir = tempdir();
    let app = dir.path().join("spoolapp.py");
    std::fs::write(
        &app,
        "def application(environ, start_response):\n    n = len(environ['wsgi.input'].read())\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [str(n).encode()]\n",
    )
    .unwrap();
    let p = Spawn::unix(dir.path(), app.to_str().unwrap())
        .protocol("fastcgi")
        .args(["--threads", "2", "--body-spool-threshold", "64K"])
        .start();
    let fds = |pid: i32| std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let before = fds(p.pid());
    let vars = [
        ("REQUEST_METHOD", "POST"),
        ("PATH_INFO", "/up"),
        ("SERVER_NAME", "x"),
        ("SERVER_PORT", "80"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
    ];
    // Ten requests on one connection, each sending 100 KB of STDIN it never ends.
    let mut c = p.addr.connect().unwrap();
    let chunk = vec![b'x'; 50_000];
    for id in 1..=10u16 {
        let mut out = fcgi::head(id, true, &vars);
        out.extend(fcgi::record(fcgi::STDIN, id, &chunk));
        out.extend(fcgi::record(fcgi::STDIN, id, &chunk));
        c.write_all(&out).unwrap();
    }
    assert!(p.wait_log("being spooled already", 10), "{}", p.logs());
    std::thread::sleep(Duration::from_millis(300));
    let during = fds(p.pid());
    // The connection and one file (and a little slack for the runtime).
    assert!(
        during <= before + 3,
        "fds {before} -> {during}\n{}",
        p.logs()
    );
    // The first request's body ends: it is served whole.
    c.write_all(&fcgi::record(fcgi::STDIN, 1, b"")).unwrap();
    let mut served = false;
    let mut stdout = Vec::new();
    while let Some(r) = fcgi::read(&mut c) {
        if r.id == 1 && r.kind == fcgi::STDOUT {
            stdout.extend_from_slice(&r.content);
        }
        if r.id == 1 && r.kind == fcgi::END_REQUEST {
            served = true;
            break;
        }
    }
    assert!(served, "{}", p.logs());
    assert!(
        String::from_utf8_lossy(&stdout).ends_with("100000"),
        "{}",
        String::from_utf8_lossy(&stdout)
    );
}

// regression: each collected body (no CONTENT_LENGTH) that could not be spooled (out of
// descriptors, TMPDIR missing or full) logged its own "cannot spool" line: a flood of
// uploads made one line per request. Now the first, then one a second at most, with
// `dropped=` counting those left out.
#[test]
fn bodies_that_cannot_be_spooled_are_logged_once_a_second_with_a_count() {
    use protocol_tests::harness::fcgi;
    const REQUESTS: usize = 30;
    let dir = tempdir();
    let app = dir.path().join("spoolapp.py");
    std::fs::write(
        &app,
        "def application(environ, start_response):\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [b'called']\n",
    )
    .unwrap();
    let missing = dir.path().join("no-such-dir");
    let p = Spawn::unix(dir.path(), app.to_str().unwrap())
        .protocol("fastcgi")
        .env("TMPDIR", missing.to_str().unwrap())
        .args(["--threads", "2", "--body-spool-threshold", "64K"])
        .start();
    let vars = [
        ("REQUEST_METHOD", "POST"),
        ("PATH_INFO", "/up"),
        ("SERVER_NAME", "x"),
        ("SERVER_PORT", "80"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
    ];
    let chunk = vec![b'x'; 50_000];
    // 100 KB without CONTENT_LENGTH: over the threshold, it needs a file.
    let upload = || {
        let mut c = p.addr.connect().unwrap();
        let mut out = fcgi::head(1, false, &vars);
        out.extend(fcgi::record(fcgi::STDIN, 1, &chunk));
        out.extend(fcgi::record(fcgi::STDIN, 1, &chunk));
        c.write_all(&out).unwrap();
        let r = fcgi::read_reply(&mut c, 1, &mut Vec::new());
        assert_eq!(r.cgi().0, 503, "{}", p.logs());
    };
    let started = std::time::Instant::now();
    for _ in 0..REQUESTS {
        upload();
    }
    let took = started.elapsed().as_secs();
    // One more after a second: its line counts those left out since the last.
    std::thread::sleep(Duration::from_millis(1100));
    upload();
    // The log has its own writer thread: wait for the last line.
    let count = |logs: &str| {
        let lines: Vec<String> = logs
            .lines()
            .filter(|l| l.contains("cannot spool a request body"))
            .map(str::to_owned)
            .collect();
        let dropped: usize = lines
            .iter()
            .filter_map(|l| {
                l.split("dropped=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .sum();
        (lines, dropped)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let (logs, lines, dropped) = loop {
        let logs = p.logs();
        let (lines, dropped) = count(&logs);
        if lines.len() + dropped > REQUESTS || std::time::Instant::now() > deadline {
            break (logs, lines, dropped);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        lines.len() as u64 <= took + 2,
        "{} lines for {} refusals in {took} s:\n{logs}",
        lines.len(),
        REQUESTS + 1
    );
    assert_eq!(lines.len() + dropped, REQUESTS + 1, "{logs}");
    assert!(
        lines[0].contains("dropped=0"),
        "the first one is logged: {logs}"
    );
}
