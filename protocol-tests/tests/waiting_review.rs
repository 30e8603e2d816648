//! Review of the I/O thread keeping `--head-timeout` for connections that have sent
//! nothing yet (`pending::keep_timeouts`): a connection it expires goes to the slow
//! lane, and one whose whole request came in time (while every Python thread was busy,
//! so nobody took its epoll event) must still be served there, not closed as silent.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::Duration;

use protocol_tests::harness::*;

const HEAD_TIMEOUT: u64 = 2;

/// One GET over uwsgi to `addr`, in the background: its raw response.
fn uwsgi_get_bg(addr: &Addr, target: &str) -> JoinHandle<Vec<u8>> {
    let addr = addr.clone();
    let target = target.to_owned();
    std::thread::spawn(move || raw(&addr, &uwsgi_get(&target)))
}

fn uwsgi_get(target: &str) -> Vec<u8> {
    let (p, q) = target.split_once('?').unwrap_or((target, ""));
    uwsgi_packet(&[
        ("REQUEST_METHOD", "GET"),
        ("PATH_INFO", p),
        ("QUERY_STRING", q),
        ("REQUEST_URI", target),
        ("SERVER_NAME", "test"),
        ("SERVER_PORT", "80"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
    ])
}

/// A whole SCGI GET of `path`, encoded here.
fn scgi_get(path: &str) -> Vec<u8> {
    let mut block = Vec::new();
    for (k, v) in [
        ("CONTENT_LENGTH", "0"),
        ("SCGI", "1"),
        ("REQUEST_METHOD", "GET"),
        ("PATH_INFO", path),
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

fn read_reply(s: &mut UnixStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
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
    let r = parse_http(&raw(&Addr::Unix(s.clone()), &scgi_get("/"))).expect("SCGI answered");
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
    waiting_s.write_all(&scgi_get("/")).unwrap();
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

/// An ASGI app whose `/block` runs a sync wait on the event loop's thread until the
/// file `gate` exists; it first makes `mark`.
const BLOCKING_ASGI_APP: &str = r#"
import os, time

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            m = await receive()
            if m["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    q = dict(kv.split("=", 1) for kv in scope["query_string"].decode().split("&") if "=" in kv)
    if scope["path"] == "/block":
        open(q["mark"], "w").close()
        deadline = time.monotonic() + 20  # a bound against a hang only
        while not os.path.exists(q["gate"]) and time.monotonic() < deadline:
            time.sleep(0.01)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok\n"})
"#;

// The same with the ASGI worker's one event loop thread blocked (a sync call in the
// app): the I/O thread expires the waiting connections, and the requests they sent in
// time reach the loop through the slow lane once it is free.
#[test]
fn a_request_sent_in_time_while_the_asgi_loop_is_blocked_is_served_after_the_expiry() {
    let dir = tempdir();
    let app = dir.path().join("blocking_asgi.py");
    std::fs::write(&app, BLOCKING_ASGI_APP).unwrap();
    let s = dir.path().join("s.sock");
    let ht = HEAD_TIMEOUT.to_string();
    let p = Spawn::unix(dir.path(), &app.to_string_lossy())
        .args(["--interface", "asgi", "--head-timeout", &ht])
        .args(["--scgi", &format!("unix:{}", s.display())])
        .start();
    let Addr::Unix(u) = p.addr.clone() else {
        unreachable!()
    };
    let mut waiting_u = UnixStream::connect(&u).unwrap();
    let mut waiting_s = UnixStream::connect(&s).unwrap();
    assert_eq!(p.get("/").0, 200);
    let r = parse_http(&raw(&Addr::Unix(s.clone()), &scgi_get("/"))).expect("SCGI answered");
    assert_eq!(r.status, 200);

    let mark = dir.path().join("mark");
    let gate = dir.path().join("gate");
    let blocked = uwsgi_get_bg(
        &p.addr,
        &format!("/block?mark={}&gate={}", mark.display(), gate.display()),
    );
    assert!(wait_file(&mark, 20), "the blocking request reached the app");
    waiting_u.write_all(&uwsgi_get("/")).unwrap();
    waiting_s.write_all(&scgi_get("/")).unwrap();
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
