//! A FastCGI connection's life under pressure, with raw records and no front server: a
//! graceful stop with keep-conn requests in flight, a refusal while the body is still
//! coming, an app slow to read its body, a peer that does not read its answers, and
//! which connection makes room at --max-connections.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use protocol_tests::harness::fcgi::{self, STDIN};
use protocol_tests::harness::*;

fn unix(p: &Postern) -> UnixStream {
    let Addr::Unix(path) = &p.addr else { panic!() };
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

fn head(id: u16, keep: bool, method: &str, path: &str, cl: Option<usize>) -> Vec<u8> {
    let mut v: Vec<(String, String)> = vec![
        ("REQUEST_METHOD".into(), method.into()),
        ("SCRIPT_NAME".into(), path.into()),
        ("REQUEST_URI".into(), path.into()),
        ("QUERY_STRING".into(), String::new()),
        ("SERVER_PROTOCOL".into(), "HTTP/1.1".into()),
        ("SERVER_NAME".into(), "localhost".into()),
        ("SERVER_PORT".into(), "80".into()),
    ];
    if let Some(n) = cl {
        v.push(("CONTENT_LENGTH".into(), n.to_string()));
    }
    let pv: Vec<(&str, &str)> = v.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    fcgi::head(id, keep, &pv)
}

fn stdin(id: u16, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in data.chunks(32 * 1024) {
        out.extend(fcgi::record(STDIN, id, c));
    }
    out
}

/// Reads until END_REQUEST for `id`; Err(description) on EOF / error first.
fn try_reply(s: &mut dyn Read, id: u16) -> Result<fcgi::Reply, String> {
    let mut r = fcgi::Reply::default();
    loop {
        let rec = fcgi::read(s).ok_or_else(|| {
            format!(
                "connection closed before END_REQUEST (stdout so far: {:?})",
                String::from_utf8_lossy(&r.stdout)
            )
        })?;
        if rec.id != id {
            continue;
        }
        match rec.kind {
            fcgi::STDOUT => r.stdout.extend_from_slice(&rec.content),
            fcgi::STDERR => r.stderr.extend_from_slice(&rec.content),
            fcgi::END_REQUEST => {
                let c = &rec.content;
                r.end = Some((u32::from_be_bytes([c[0], c[1], c[2], c[3]]), c[4]));
                return Ok(r);
            }
            k => return Err(format!("record type {k}")),
        }
    }
}

/// A graceful stop finishes the request in flight on a keep-conn connection that is
/// served inline, as it does without keep-conn.
#[test]
fn graceful_stop_finishes_inline_keep_conn_requests() {
    // regression: at SIGTERM, connections being served inline with FCGI_KEEP_CONN were shut
    // down with the idle parked ones: the response in flight was cut (nginx: "upstream
    // prematurely closed", 502).
    let dir = tempdir();
    let mut p = Spawn::unix(dir.path(), &testapp())
        .protocol("fastcgi")
        .args(["--threads", "4", "--graceful-timeout", "10"])
        .start();
    let mut plain = unix(&p);
    let mut kept = unix(&p);
    // A first request makes each connection a served one: the keep-conn one is parked
    // in the Python threads' epoll afterwards, so its next request is served inline.
    plain.write_all(&fcgi::get(1, true, "/hello")).unwrap();
    try_reply(&mut plain, 1).unwrap();
    kept.write_all(&fcgi::get(1, true, "/hello")).unwrap();
    try_reply(&mut kept, 1).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // Whole requests in one write: served inline by the fast path.
    let (mark_a, mark_b) = (dir.path().join("plain"), dir.path().join("kept"));
    plain
        .write_all(&fcgi::get(
            1,
            false,
            &format!("/marked-sleep?s=1.5&mark={}", mark_a.display()),
        ))
        .unwrap();
    kept.write_all(&fcgi::get(
        1,
        true,
        &format!("/marked-sleep?s=1.5&mark={}", mark_b.display()),
    ))
    .unwrap();
    // The stop comes while both are in the app.
    for m in [&mark_a, &mark_b] {
        assert!(wait_file(m, 20), "{} never ran\n{}", m.display(), p.logs());
    }
    p.signal(libc::SIGTERM);
    let a = try_reply(&mut plain, 1);
    let b = try_reply(&mut kept, 1);
    p.wait_exit(15);
    let a = a.unwrap_or_else(|e| panic!("control (no keep-conn) failed: {e}\n{}", p.logs()));
    assert_eq!(a.cgi().0, 200);
    let b = b.unwrap_or_else(|e| {
        panic!(
            "keep-conn request in flight at SIGTERM was cut: {e}\n{}",
            p.logs()
        )
    });
    assert_eq!(b.cgi().0, 200, "{b:?}");
    assert_eq!(b.cgi().2, b"slept\n");
}

/// An idle kept connection at a short --graceful-timeout: its wait for a last request
/// at the stop ends within the stop's time, and so does the read of an answered
/// connection its peer holds open, so the stop is clean (exit 0, nothing said to be cut
/// off), with one worker process or several.
// regression (hostile): with --graceful-timeout 1 the idle connection's 1 s wait
// outlived the deadline: "requests still being read … cut off", exit code 1.
#[test]
fn an_idle_kept_connection_does_not_outlast_a_short_graceful_timeout() {
    for workers in ["1", "2"] {
        let dir = tempdir();
        // Over TCP: a kept connection over a Unix socket from a peer other than nginx
        // is taken for Apache's, which waits less.
        let mut p = Spawn::tcp(dir.path(), &testapp())
            .protocol("fastcgi")
            .args(["--workers", workers, "--graceful-timeout", "1"])
            .start();
        let Addr::Tcp(port) = p.addr else {
            unreachable!()
        };
        let mut kept = TcpStream::connect(("127.0.0.1", port)).unwrap();
        kept.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        kept.write_all(&fcgi::get(1, true, "/hello")).unwrap();
        try_reply(&mut kept, 1).unwrap();
        // And one answered without FCGI_KEEP_CONN that its peer holds open: postern
        // reads on until the peer closes (the rest of a body could still come).
        let mut plain = TcpStream::connect(("127.0.0.1", port)).unwrap();
        plain
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        plain.write_all(&fcgi::get(1, false, "/hello")).unwrap();
        try_reply(&mut plain, 1).unwrap();
        let started = std::time::Instant::now();
        p.signal(libc::SIGTERM);
        let status = p.wait_exit(15);
        let logs = p.logs();
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(0),
            "workers {workers}:\n{logs}"
        );
        assert!(!logs.contains("cut off"), "workers {workers}:\n{logs}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "workers {workers}:\n{logs}"
        );
        drop((kept, plain));
    }
}

/// A request postern refuses itself (413 over --max-body) without FCGI_KEEP_CONN: the
/// rest of the body is read and dropped before the close, so the front server, which
/// writes the whole body before it reads, gets the 413.
#[test]
fn a_413_without_keep_conn_drains_the_rest_of_the_body() {
    // regression: a 400/413 postern gave itself without FCGI_KEEP_CONN closed the socket while
    // the front server was still sending STDIN (reset / EPIPE, a 502 instead of the 413).
    let dir = tempdir();
    let p = Spawn::tcp(dir.path(), &testapp())
        .protocol("fastcgi")
        .args(["--threads", "2", "--max-body", "1k"])
        .start();
    let q = Spawn::tcp(dir.path(), &testapp())
        .protocol("fastcgi")
        .args(["--threads", "2"])
        .start();
    let total = 1 << 20;
    let body = vec![b'x'; total];
    let run = |p: &Postern, path: &str| -> Result<fcgi::Reply, String> {
        let Addr::Tcp(port) = p.addr else { panic!() };
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut first = head(1, false, "POST", path, Some(total));
        first.extend(stdin(1, &body[..64 * 1024]));
        s.write_all(&first)
            .map_err(|e| format!("first write: {e}"))?;
        std::thread::sleep(Duration::from_millis(500));
        // The rest of the body, as nginx sends it before reading the response.
        let mut rest = stdin(1, &body[64 * 1024..]);
        rest.extend(fcgi::record(STDIN, 1, b""));
        s.write_all(&rest)
            .map_err(|e| format!("writing the rest of STDIN: {e}"))?;
        try_reply(&mut s, 1)
    };
    // Control: CONTENT_LENGTH under no limit, app does not read the body -> drained.
    let control = run(&q, "/hello").map(|r| r.cgi().0);
    assert_eq!(control, Ok(200), "{}", q.logs());
    let refused = run(&p, "/echo");
    match refused {
        Ok(r) => assert_eq!(r.cgi().0, 413),
        Err(e) => panic!(
            "413 without keep-conn: the connection was closed under the front server: {e} \
             (control /hello with the same body: {control:?})\n{}",
            p.logs()
        ),
    }
}

/// While the app has not read its queued body, postern stops reading the socket (flow
/// control), and the read timeout does not run: the front server is not silent, it is
/// waiting for postern.
#[test]
fn a_slow_starting_app_is_not_cut_by_read_timeout() {
    // regression: the read deadline kept running while postern had stopped reading because the
    // request's STDIN queue was full, so a slow app's request was closed as if the front
    // server had sent nothing.
    let dir = tempdir();
    let app = dir.path().join("slowread.py");
    std::fs::write(
        &app,
        "import time\n\
         def application(environ, start_response):\n\
         \x20   time.sleep(2.5)\n\
         \x20   n = len(environ['wsgi.input'].read())\n\
         \x20   start_response('200 OK', [('Content-Type', 'text/plain')])\n\
         \x20   return [str(n).encode()]\n",
    )
    .unwrap();
    let p = Spawn::unix(dir.path(), app.to_str().unwrap())
        .protocol("fastcgi")
        .args(["--threads", "2", "--read-timeout", "1"])
        .start();
    let mut s = unix(&p);
    let total = 4 << 20;
    let mut req = head(1, true, "POST", "/", Some(total));
    req.extend(stdin(1, &vec![b'y'; total]));
    req.extend(fcgi::record(STDIN, 1, b""));
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&req));
    let r = try_reply(&mut s, 1);
    let _ = writer.join();
    let r = r.unwrap_or_else(|e| {
        panic!(
            "the front server sent everything it could; postern cut it: {e}\n{}",
            p.logs()
        )
    });
    assert_eq!(r.cgi().0, 200, "{r:?}\n{}", p.logs());
    assert_eq!(r.cgi().2, total.to_string().as_bytes());
}

/// One peer flooding management records without reading the answers does not stall
/// the requests of other connections.
#[test]
fn one_peer_not_reading_does_not_stall_other_connections() {
    // regression: the slow lane wrote answers with a blocking send on its only I/O thread, so
    // one peer that did not read its socket stalled every other connection until that write
    // timed out.
    let dir = tempdir();
    let p = Spawn::unix(dir.path(), &testapp())
        .protocol("fastcgi")
        .args(["--threads", "2", "--read-timeout", "4"])
        .start();
    // Peer A: GET_VALUES records, never reads the answers.
    let a = unix(&p);
    let names = fcgi::pairs(&[
        ("FCGI_MAX_CONNS", ""),
        ("FCGI_MAX_REQS", ""),
        ("FCGI_MPXS_CONNS", ""),
    ]);
    let one = fcgi::record(fcgi::GET_VALUES, 0, &names);
    let mut flood = Vec::new();
    while flood.len() < 4 << 20 {
        flood.extend_from_slice(&one);
    }
    let mut aw = a.try_clone().unwrap();
    aw.set_write_timeout(Some(Duration::from_secs(8))).unwrap();
    let _flooder = std::thread::spawn(move || {
        let _ = aw.write_all(&flood);
    });
    std::thread::sleep(Duration::from_millis(800));
    // Peer B: a request in two writes (slow lane).
    let mut b = unix(&p);
    b.write_all(&head(1, true, "GET", "/hello", None)).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    b.write_all(&fcgi::record(STDIN, 1, b"")).unwrap();
    let r = try_reply(&mut b, 1);
    // An order, not a duration: B is answered while postern still holds A open. A stuck
    // write to A ends only with --read-timeout, and postern then closes A: had B waited
    // for that, A would show the hang-up by now.
    let a_closed = hung_up(&a);
    drop(a);
    let r = r.unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    assert_eq!(r.cgi().0, 200);
    assert!(
        !a_closed,
        "B was answered only after postern gave up on A: the slow lane was blocked by \
         another peer's write\n{}",
        p.logs()
    );
}

/// True when the other end of `s` has closed (POLLHUP), whatever is still unread.
fn hung_up(s: &UnixStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: s.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    assert!(n >= 0, "poll: {}", std::io::Error::last_os_error());
    pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0
}

/// A kept connection whose first request postern answered itself (413 over --max-body,
/// or dropped at FCGI_ABORT_REQUEST before its body ended) has carried a request: it
/// waits for its next one as long as the front server keeps it, not --head-timeout
/// from its accept.
// regression: the slow lane counted only requests whose app ran as carried, so a
// fresh kept connection whose only request it answered itself stayed "never served":
// closed at --head-timeout from its accept ("no FastCGI request within 1s
// (--head-timeout); closing"), nginx's next request on it refused (broken pipe).
#[test]
fn a_kept_connection_whose_first_request_was_refused_waits_for_its_next() {
    let dir = tempdir();
    let p = Spawn::unix(dir.path(), &testapp())
        .protocol("fastcgi")
        .args(["--threads", "2", "--max-body", "1k", "--head-timeout", "1"])
        .start();
    let mut too_large = head(1, true, "POST", "/echo", Some(4096));
    too_large.extend(stdin(1, &[b'x'; 4096]));
    too_large.extend(fcgi::record(STDIN, 1, b""));
    // No CONTENT_LENGTH: the body is collected before the app runs; aborted meanwhile.
    let mut aborted = head(1, true, "POST", "/echo", None);
    aborted.extend(stdin(1, b"part of a body"));
    let abort = fcgi::record(fcgi::ABORT_REQUEST, 1, b"");
    for (what, first, then) in [("413", too_large, None), ("abort", aborted, Some(abort))] {
        let mut s = unix(&p);
        s.write_all(&first).unwrap();
        if let Some(then) = then {
            std::thread::sleep(Duration::from_millis(100));
            s.write_all(&then).unwrap();
        }
        let r = try_reply(&mut s, 1).unwrap_or_else(|e| panic!("{what}: {e}\n{}", p.logs()));
        if what == "413" {
            assert_eq!(r.cgi().0, 413, "{}", p.logs());
        }
        // Past --head-timeout from the accept, the front server's next request.
        std::thread::sleep(Duration::from_millis(1500));
        let sent = s.write_all(&fcgi::get(2, true, "/hello"));
        let next = sent
            .map_err(|e| e.to_string())
            .and_then(|()| try_reply(&mut s, 2));
        match next {
            Ok(r) => assert_eq!(r.cgi().0, 200, "{what}\n{}", p.logs()),
            Err(e) => panic!(
                "{what}: the kept connection was closed before its next request: {e}\n{}",
                p.logs()
            ),
        }
    }
}

/// At `--max-connections`, a kept connection idle for over a second makes room for a
/// connection waiting in the listen queue: it is closed (a FIN, as a front server's
/// keepalive cache expects) and the new one is served. One that is still answering
/// (here a 4 MiB answer from the slow lane, read slowly) is never closed, nor one idle
/// for less than a second.
// regression: idle kept connections held their places with nothing to close them, so
// a front server's pool could hold every place while a new connection waited in the
// listen queue for good. (The first attempt, reverted, closed a slow-lane connection
// in the middle of its answer: it is parked as soon as its reader is told the request
// ended, before the last records go out.)
#[test]
fn at_max_connections_a_kept_connection_idle_over_a_second_makes_room() {
    let dir = tempdir();
    let p = Spawn::unix(dir.path(), &testapp())
        .protocol("fastcgi")
        .args(["--threads", "2", "--max-connections", "1"])
        .start();
    // The one place: a kept connection, its POST's body in two writes (the slow lane).
    let body: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
    let mut kept = unix(&p);
    let mut req = head(1, true, "POST", "/echo", Some(body.len()));
    req.extend(stdin(1, &body[..1000]));
    kept.write_all(&req).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let mut rest = stdin(1, &body[1000..]);
    rest.extend(fcgi::record(STDIN, 1, b""));
    let mut w = kept.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&rest));
    // A new connection waits in the listen queue meanwhile.
    let mut new = unix(&p);
    new.write_all(&fcgi::get(1, false, "/hello")).unwrap();
    // The answer, read slowly (over 2 s): whole, END_REQUEST and all.
    let mut slow = SlowReader(&mut kept);
    let r = try_reply(&mut slow, 1).unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    writer.join().unwrap().unwrap();
    let (status, _, got) = r.cgi();
    assert_eq!(status, 200);
    assert!(got == body, "the answer differs\n{}", p.logs());
    // Then the new one is served, the kept one closed for it.
    let r = try_reply(&mut new, 1).unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    assert_eq!(r.cgi().0, 200);
    let mut left = Vec::new();
    assert!(
        matches!(kept.read_to_end(&mut left), Ok(0)),
        "the idle kept connection is closed cleanly (a FIN)\n{}",
        p.logs()
    );
    assert!(
        p.wait_log("closing a kept FastCGI connection idle for over 1s", 5),
        "{}",
        p.logs()
    );
    // A kept connection idle for less than a second stays: the next one waits.
    let mut kept = unix(&p);
    kept.write_all(&fcgi::get(1, true, "/hello")).unwrap();
    let r = try_reply(&mut kept, 1).unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    assert_eq!(r.cgi().0, 200);
    let idle_since = std::time::Instant::now();
    let mut next = unix(&p);
    next.write_all(&fcgi::get(1, false, "/hello")).unwrap();
    let r = try_reply(&mut next, 1).unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    assert_eq!(r.cgi().0, 200);
    // (The kept one's answer reached this client a moment after postern sent it.)
    assert!(
        idle_since.elapsed() >= Duration::from_millis(900),
        "served {:?} after the kept connection went idle",
        idle_since.elapsed()
    );
    assert!(matches!(kept.read_to_end(&mut left), Ok(0)));
}

/// Reads at most 64 KiB per 30 ms: a front server whose client is slow.
struct SlowReader<'a>(&'a mut UnixStream);

impl Read for SlowReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        std::thread::sleep(Duration::from_millis(30));
        let n = buf.len().min(64 * 1024);
        self.0.read(&mut buf[..n])
    }
}

/// At --max-connections, a connection answered without FCGI_KEEP_CONN whose client is
/// still sending the rest of its body (an upload answered early: nginx with
/// `fastcgi_request_buffering off` writes it on, then reads the answer) is not closed
/// for a waiting connection while bytes flow; one whose client has gone silent still is.
// regression (review of 1beb8b4): the drain was listed from its answer and never
// refreshed by a read, so the upload still streaming was closed a second after its 413
// for the waiting connection (its next writes reset: nginx answers 502, not the 413).
// Fails without the refresh: the streaming client's write is reset.
#[test]
fn at_max_connections_a_drain_still_receiving_its_body_is_not_closed() {
    let dir = tempdir();
    let p = Spawn::tcp(dir.path(), &testapp())
        .protocol("fastcgi")
        .args([
            "--max-connections",
            "2",
            "--max-body",
            "1k",
            "--read-timeout",
            "60",
            "--head-timeout",
            "60",
        ])
        .start();
    let Addr::Tcp(port) = p.addr else { panic!() };
    let connect = || {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    };
    const CHUNK: usize = 1024;
    const CHUNKS: usize = 30;
    let total = CHUNK * (CHUNKS + 1);
    let upload = |s: &mut TcpStream| {
        let mut first = head(1, false, "POST", "/echo", Some(total));
        first.extend(stdin(1, &[b'x'; CHUNK]));
        s.write_all(&first).unwrap();
    };
    // The first place: refused 413 at its head (CONTENT_LENGTH over --max-body), its
    // client sending the rest of the body every 100 ms for 3 s before it reads (a
    // writer delayed up to 900 ms by a loaded machine still counts as flowing).
    let mut streaming = connect();
    upload(&mut streaming);
    let mut w = streaming.try_clone().unwrap();
    let writer = std::thread::spawn(move || -> Result<(), String> {
        for i in 0..CHUNKS {
            std::thread::sleep(Duration::from_millis(100));
            w.write_all(&stdin(1, &[b'x'; CHUNK]))
                .map_err(|e| format!("STDIN chunk {i} of {CHUNKS}: {e}"))?;
        }
        w.write_all(&fcgi::record(STDIN, 1, b""))
            .map_err(|e| format!("the end of STDIN: {e}"))
    });
    std::thread::sleep(Duration::from_millis(200));
    // The second: refused too, then silent (its client neither sends nor closes).
    let mut silent = connect();
    upload(&mut silent);
    std::thread::sleep(Duration::from_millis(100));
    // A third waits in the listen queue: the silent one is closed for it, a second
    // after its answer, though the streaming one was answered first.
    let mut waiting = connect();
    waiting.write_all(&fcgi::get(1, false, "/hello")).unwrap();
    let r = try_reply(&mut waiting, 1).unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    assert_eq!(r.cgi().0, 200);
    let wrote = writer.join().unwrap();
    assert_eq!(
        wrote,
        Ok(()),
        "the drain still receiving its body was closed under its client\n{}",
        p.logs()
    );
    let r = try_reply(&mut streaming, 1).unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    assert_eq!(r.cgi().0, 413);
    let r = try_reply(&mut silent, 1).unwrap_or_else(|e| panic!("{e}\n{}", p.logs()));
    assert_eq!(r.cgi().0, 413);
    let mut left = Vec::new();
    assert!(
        silent.read_to_end(&mut left).is_ok(),
        "the silent drain is closed for the waiting connection\n{}",
        p.logs()
    );
    assert!(
        p.wait_log(
            "closing a FastCGI connection answered without FCGI_KEEP_CONN whose client has not closed it (nothing from it for",
            5
        ),
        "{}",
        p.logs()
    );
}
