//! `--head-timeout` of connections that have sent nothing yet, when no Python thread
//! is free: new connections waiting for their first bytes, and never-served FastCGI
//! connections a leaving worker hands over at a reload. Their timeout is kept by the
//! I/O thread, so it never waits for a request to end.
//!
//! Each test holds every Python thread in the app (`/rendezvous`, released by the test
//! itself, not by a delay) while idle connections wait, and checks that postern closes
//! them before twice `--head-timeout` (a bound against a hang, not a measure: on time
//! they close at `--head-timeout`; before the fix they stayed open until a thread was
//! free, i.e. until the test released the app). The last two check the other side: a
//! whole request that came in time, while no thread was free to take it, is served after
//! the I/O thread expires its connection, not closed unanswered.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use protocol_tests::harness::*;

const HEAD_TIMEOUT: u64 = 3;

/// Connections opened to `path` that send nothing, with when each was opened.
fn idle(path: &Path, n: usize) -> Vec<(UnixStream, Instant)> {
    (0..n)
        .map(|_| (UnixStream::connect(path).unwrap(), Instant::now()))
        .collect()
}

/// How many of `conns` are still open `2 × --head-timeout` after they were opened
/// (postern closed the others: EOF or reset).
fn still_open(conns: &mut [(UnixStream, Instant)]) -> usize {
    let bound = Duration::from_secs(2 * HEAD_TIMEOUT);
    let mut open = 0;
    for (s, opened) in conns.iter_mut() {
        let left = bound
            .saturating_sub(opened.elapsed())
            .max(Duration::from_millis(10));
        s.set_read_timeout(Some(left)).unwrap();
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(0) => {}
            Ok(_) => panic!("postern wrote to a connection that sent nothing"),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => open += 1,
            Err(_) => {} // reset: closed
        }
    }
    open
}

/// One GET over uwsgi to `addr`, in the background: its raw response.
fn uwsgi_get_bg(addr: &Addr, target: &str) -> JoinHandle<Vec<u8>> {
    let addr = addr.clone();
    let target = target.to_owned();
    std::thread::spawn(move || raw(&addr, &uwsgi_get(&target)))
}

/// Everything the peer sends until it closes (30 s at most).
fn read_reply(s: &mut UnixStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// A whole SCGI GET of `/`, encoded here.
fn scgi_get() -> Vec<u8> {
    let mut block = Vec::new();
    for (k, v) in [
        ("CONTENT_LENGTH", "0"),
        ("SCGI", "1"),
        ("REQUEST_METHOD", "GET"),
        ("PATH_INFO", "/"),
        ("SERVER_NAME", "test"),
        ("SERVER_PORT", "80"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
    ] {
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

fn status(resp: &[u8]) -> Option<u16> {
    parse_http(resp).map(|r| r.status)
}

/// The app's `n - 1` requests answered "met n": they ran, and were let go by the test.
fn all_met(held: Vec<JoinHandle<Vec<u8>>>, n: usize) {
    for h in held {
        let resp = h.join().unwrap();
        let r = parse_http(&resp)
            .unwrap_or_else(|| panic!("bad response {:?}", String::from_utf8_lossy(&resp)));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), Rendezvous::met(n));
    }
}

// regression: a connection waiting for its first bytes was expired only by the Python
// thread holding the accept token, before it waited on the epoll; with every thread
// running a request nobody did, and idle uwsgi, FastCGI and SCGI connections stayed
// open until a thread was free (soak: a batch of 29 idle FastCGI connections still
// open 7.5 s past --head-timeout 5 s while streams held the threads).
#[test]
fn idle_connections_close_at_the_head_timeout_while_every_python_thread_is_busy() {
    let dir = tempdir();
    let f = dir.path().join("f.sock");
    let s = dir.path().join("s.sock");
    let ht = HEAD_TIMEOUT.to_string();
    let p = Spawn::unix(dir.path(), &testapp())
        .args(["--threads", "2", "--head-timeout", &ht])
        .args(["--fastcgi", &format!("unix:{}", f.display())])
        .args(["--scgi", &format!("unix:{}", s.display())])
        .start();
    let Addr::Unix(u) = p.addr.clone() else {
        unreachable!()
    };
    let mut conns = idle(&u, 3);
    conns.extend(idle(&f, 3));
    conns.extend(idle(&s, 3));
    // One whole request per listener, answered: the idle connections queued before
    // it were accepted (and, having sent nothing, wait for their first bytes).
    assert_eq!(p.get("/").0, 200);
    let fcgi_resp = raw(&Addr::Unix(f.clone()), &fcgi::get(1, false, "/"));
    assert!(!fcgi_resp.is_empty(), "FastCGI answered");
    assert_eq!(status(&raw(&Addr::Unix(s.clone()), &scgi_get())), Some(200));

    // Both Python threads held in the app until the test arrives.
    let meet = Rendezvous::new(dir.path());
    let held: Vec<_> = ["a", "b"]
        .iter()
        .map(|name| uwsgi_get_bg(&p.addr, &meet.target(3, name)))
        .collect();
    for name in ["a", "b"] {
        assert!(
            meet.wait_arrived(name, 20),
            "request {name} reached the app"
        );
    }
    let open = still_open(&mut conns);
    meet.arrive("test");
    all_met(held, 3);
    assert_eq!(
        open,
        0,
        "idle connections still open 2 x --head-timeout after they were opened, every Python thread busy\n{}",
        p.logs()
    );
    // The log has a writer thread of its own: the closes' lines may come after the
    // closes reach the client.
    assert!(p.wait_log("(--head-timeout)", 10), "{}", p.logs());
    // Service goes on.
    assert_eq!(p.get("/").0, 200);
}

/// An ASGI app whose `/block` runs a sync call on the event loop thread (as a sync
/// call in an async view does) until the file `gate` exists; it first makes `mark`.
fn blocking_asgi_app() -> String {
    AsgiApp::new("import os, time").http(
        r#"
q = dict(kv.split("=", 1) for kv in scope["query_string"].decode().split("&") if "=" in kv)
if scope["path"] == "/block":
    open(q["mark"], "w").close()
    deadline = time.monotonic() + 20  # a bound against a hang only
    while not os.path.exists(q["gate"]) and time.monotonic() < deadline:
        time.sleep(0.01)
await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
await send({"type": "http.response.body", "body": b"ok\n"})
"#,
    )
}

// The ASGI worker has one event loop thread, which a sync call in the app can block:
// the waiting connections' timeout must not wait for it either.
#[test]
fn idle_connections_close_at_the_head_timeout_while_the_asgi_loop_is_blocked() {
    let dir = tempdir();
    let f = dir.path().join("f.sock");
    let ht = HEAD_TIMEOUT.to_string();
    let p = Spawn::asgi_unix(dir.path(), "blocking_asgi", &blocking_asgi_app())
        .args(["--head-timeout", &ht])
        .args(["--fastcgi", &format!("unix:{}", f.display())])
        .start();
    let Addr::Unix(u) = p.addr.clone() else {
        unreachable!()
    };
    let mut conns = idle(&u, 3);
    conns.extend(idle(&f, 3));
    // Answered: the idle connections queued before them were accepted.
    assert_eq!(p.get("/").0, 200);
    let fcgi_resp = raw(&Addr::Unix(f.clone()), &fcgi::get(1, false, "/"));
    assert!(!fcgi_resp.is_empty(), "FastCGI answered");
    let mark = dir.path().join("mark");
    let gate = dir.path().join("gate");
    let blocked = uwsgi_get_bg(
        &p.addr,
        &format!("/block?mark={}&gate={}", mark.display(), gate.display()),
    );
    assert!(wait_file(&mark, 20), "the blocking request reached the app");
    let open = still_open(&mut conns);
    std::fs::write(&gate, "").unwrap();
    assert_eq!(status(&blocked.join().unwrap()), Some(200));
    assert_eq!(
        open,
        0,
        "idle connections still open 2 x --head-timeout after they were opened, the ASGI loop blocked\n{}",
        p.logs()
    );
}

// regression: a never-served FastCGI connection a leaving worker hands over at a
// reload was taken only by a Python thread of a serving worker; with each one busy it
// stayed in the hand-over channel, open, until one was free.
#[test]
fn a_never_served_fastcgi_connection_handed_over_at_a_reload_closes_while_every_thread_is_busy() {
    let dir = tempdir();
    let f = dir.path().join("f.sock");
    let ht = HEAD_TIMEOUT.to_string();
    let p = Spawn::unix(dir.path(), &testapp())
        .args(["--master", "--workers", "1", "--threads", "1"])
        .args(["--head-timeout", &ht, "--graceful-timeout", "30"])
        .args(["--fastcgi", &format!("unix:{}", f.display())])
        .start();
    let mut conns = idle(&f, 4);
    let fcgi_resp = raw(&Addr::Unix(f.clone()), &fcgi::get(1, false, "/"));
    assert!(!fcgi_resp.is_empty(), "FastCGI answered");
    // The old worker's thread is held by "a"; "b" waits in the listen queue for the
    // new worker, whose thread it then holds, before the old one leaves and hands
    // over its idle connections.
    let meet = Rendezvous::new(dir.path());
    let a = uwsgi_get_bg(&p.addr, &meet.target(3, "a"));
    assert!(meet.wait_arrived("a", 20), "request a reached the app");
    p.signal(libc::SIGHUP);
    let b = uwsgi_get_bg(&p.addr, &meet.target(3, "b"));
    assert!(
        meet.wait_arrived("b", 30),
        "request b reached the new worker"
    );
    let open = still_open(&mut conns);
    meet.arrive("test");
    all_met(vec![a, b], 3);
    assert_eq!(
        open,
        0,
        "never-served FastCGI connections still open 2 x --head-timeout after they were opened, across a reload with every thread busy\n{}",
        p.logs()
    );
}

// The I/O thread expires a waiting connection at its --head-timeout even when its
// request came in time but no Python thread was free to take its epoll event; the
// slow lane then reads what is there. Pins that uwsgi, SCGI and FastCGI requests sent
// in time are served that way, not closed as silent.
// regression: a FastCGI one was closed unanswered at its --head-timeout (nginx: 502):
// the lane's first look found an empty buffer past the deadline.
#[test]
fn a_request_sent_in_time_while_every_thread_is_busy_is_served_after_the_expiry() {
    let dir = tempdir();
    let s = dir.path().join("s.sock");
    let f = dir.path().join("f.sock");
    let ht = HEAD_TIMEOUT.to_string();
    let p = Spawn::unix(dir.path(), &testapp())
        .args(["--threads", "2", "--head-timeout", &ht])
        .args(["--scgi", &format!("unix:{}", s.display())])
        .args(["--fastcgi", &format!("unix:{}", f.display())])
        .start();
    let Addr::Unix(u) = p.addr.clone() else {
        unreachable!()
    };
    // Connections that send nothing yet, then one whole request per listener (answered:
    // the silent ones queued before it were accepted, and wait for their first bytes).
    let mut waiting_u = UnixStream::connect(&u).unwrap();
    let mut waiting_s = UnixStream::connect(&s).unwrap();
    let mut waiting_f = UnixStream::connect(&f).unwrap();
    assert_eq!(p.get("/").0, 200);
    let r = parse_http(&raw(&Addr::Unix(s.clone()), &scgi_get())).expect("SCGI answered");
    assert_eq!(r.status, 200);
    let mut c = UnixStream::connect(&f).unwrap();
    c.write_all(&fcgi::get(1, false, "/")).unwrap();
    assert_eq!(fcgi::read_reply(&mut c, 1, &mut Vec::new()).cgi().0, 200);

    // Both Python threads held in the app until the test arrives.
    let meet = Rendezvous::new(dir.path());
    let held: Vec<_> = ["a", "b"]
        .iter()
        .map(|name| uwsgi_get_bg(&p.addr, &meet.target(3, name)))
        .collect();
    for name in ["a", "b"] {
        assert!(
            meet.wait_arrived(name, 20),
            "request {name} reached the app"
        );
    }
    // Whole requests, well within --head-timeout of their accept; nobody can take them
    // before their timeout passes (the threads are held past it).
    waiting_u.write_all(&uwsgi_get("/")).unwrap();
    waiting_s.write_all(&scgi_get()).unwrap();
    waiting_f.write_all(&fcgi::get(1, false, "/")).unwrap();
    std::thread::sleep(Duration::from_secs(HEAD_TIMEOUT + 1));
    meet.arrive("test");
    for h in held {
        let resp = h.join().unwrap();
        let r = parse_http(&resp).expect("the held requests answered");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for (name, conn) in [("uwsgi", &mut waiting_u), ("SCGI", &mut waiting_s)] {
        let resp = read_reply(conn);
        let r = parse_http(&resp).unwrap_or_else(|| {
            panic!(
                "the {name} request sent in time got no answer ({} bytes)\n{}",
                resp.len(),
                p.logs()
            )
        });
        assert_eq!(r.status, 200, "{name}: {}", r.text());
    }
    waiting_f
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut recs = Vec::new();
    while let Some(r) = fcgi::read(&mut waiting_f) {
        recs.push(r);
    }
    assert!(
        recs.iter().any(|r| r.kind == fcgi::END_REQUEST),
        "the FastCGI request sent in time got no END_REQUEST ({} records)\n{}",
        recs.len(),
        p.logs()
    );
}

// The same with the ASGI worker's one event loop thread blocked (a sync call in the
// app): the I/O thread expires the waiting connections, and the requests they sent in
// time reach the loop through the slow lane once it is free.
#[test]
fn a_request_sent_in_time_while_the_asgi_loop_is_blocked_is_served_after_the_expiry() {
    let dir = tempdir();
    let s = dir.path().join("s.sock");
    let ht = HEAD_TIMEOUT.to_string();
    let p = Spawn::asgi_unix(dir.path(), "blocking_asgi", &blocking_asgi_app())
        .args(["--head-timeout", &ht])
        .args(["--scgi", &format!("unix:{}", s.display())])
        .start();
    let Addr::Unix(u) = p.addr.clone() else {
        unreachable!()
    };
    let mut waiting_u = UnixStream::connect(&u).unwrap();
    let mut waiting_s = UnixStream::connect(&s).unwrap();
    assert_eq!(p.get("/").0, 200);
    let r = parse_http(&raw(&Addr::Unix(s.clone()), &scgi_get())).expect("SCGI answered");
    assert_eq!(r.status, 200);

    let mark = dir.path().join("mark");
    let gate = dir.path().join("gate");
    let blocked = uwsgi_get_bg(
        &p.addr,
        &format!("/block?mark={}&gate={}", mark.display(), gate.display()),
    );
    assert!(wait_file(&mark, 20), "the blocking request reached the app");
    waiting_u.write_all(&uwsgi_get("/")).unwrap();
    waiting_s.write_all(&scgi_get()).unwrap();
    std::thread::sleep(Duration::from_secs(HEAD_TIMEOUT + 1));
    std::fs::write(&gate, "").unwrap();
    let r = parse_http(&blocked.join().unwrap()).expect("the blocking request answered");
    assert_eq!(r.status, 200);
    for (name, conn) in [("uwsgi", &mut waiting_u), ("SCGI", &mut waiting_s)] {
        let resp = read_reply(conn);
        let r = parse_http(&resp).unwrap_or_else(|| {
            panic!(
                "the {name} request sent in time got no answer ({} bytes)\n{}",
                resp.len(),
                p.logs()
            )
        });
        assert_eq!(r.status, 200, "{name}: {}", r.text());
    }
}
