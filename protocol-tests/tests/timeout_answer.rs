//! A request that passes `--timeout` over FastCGI before its response started is
//! answered 504 (with its END_REQUEST) before its worker is killed, WSGI and ASGI.
//!
//! regression (probe 339 HIGH, probe 340 MEDIUM): behind nginx with
//! `fastcgi_keep_conn on` and an upstream `keepalive`, the kill reset the kept
//! connection, and nginx, which gives a request that failed on a cached connection
//! another try without counting it, sent the same slow GET on its next cached
//! connection: the GET ran again, passed `--timeout` again and killed one more worker,
//! once per cached connection (9 kills and a 502 after 50 s; with 2 workers, 2 kills
//! and a 502 after twice the limit). Now: one kill, and the client's 504 at the limit.
//!
//! Needs nginx: fails in CI if missing.

use std::time::{Duration, Instant};

use protocol_tests::harness::*;
use protocol_tests::stack::{Stack, Upstream};

/// postern's `--timeout`, seconds.
const LIMIT: u64 = 2;

/// The ASGI app: `/pid` answers its worker's pid, `/sleep?s=N` sleeps on the loop.
const ASGI_APP: &str = r#"
import asyncio, os

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    q = scope["query_string"].decode()
    if scope["path"] == "/sleep":
        await asyncio.sleep(float(q.split("=")[1]))
    body = str(os.getpid()).encode() if scope["path"] == "/pid" else b"ok"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
"#;

/// nginx with `fastcgi_keep_conn` in front of the test app, 2 workers × 1 thread under
/// `--timeout`, both ready and holding kept connections.
fn wsgi_stack() -> Option<Stack> {
    let limit = LIMIT.to_string();
    let s = Stack::build(Upstream::FastCgiKeepConn)
        .args(["--workers", "2", "--threads", "1", "--timeout", &limit])
        .extra("fastcgi_read_timeout 60s;")
        .start()?;
    ready(&s);
    Some(s)
}

/// Both workers serve and nginx keeps connections to each.
fn ready(s: &Stack) {
    assert!(
        s.postern.wait_log("all 2 workers ready", 30),
        "postern did not start:\n{}",
        s.postern.logs()
    );
    s.warm_kept(2);
}

/// Waits long enough for nginx's resend, had there been one, to pass the limit too,
/// then checks the master killed one worker.
fn one_kill(s: &Stack) -> String {
    let kill_lines = |logs: &str| {
        logs.lines()
            .filter(|l| l.contains("ERROR") && l.contains("request passed --timeout"))
            .count()
    };
    // The first kill's line (written by the log's writer thread), then the time a
    // resend would take to pass the limit too.
    assert!(
        wait_until(20, || kill_lines(&s.postern.logs()) > 0),
        "no kill:\n{}",
        s.postern.logs()
    );
    std::thread::sleep(Duration::from_secs(LIMIT + 2));
    let logs = s.postern.logs();
    let kills = kill_lines(&logs);
    assert_eq!(kills, 1, "one kill for one slow request:\n{logs}");
    logs
}

fn answered_once_at_the_limit(s: &Stack) {
    let t0 = Instant::now();
    let r = s.nginx.get("/sleep?s=60");
    let took = t0.elapsed();
    assert_eq!(
        r.status,
        504,
        "the request past --timeout: {} after {took:?}\npostern:\n{}\nnginx:\n{}",
        r.text(),
        s.postern.logs(),
        s.nginx.error_log()
    );
    assert!(
        took < Duration::from_secs(LIMIT + 3),
        "answered after {took:?}, for --timeout {LIMIT}s"
    );
    let logs = one_kill(s);
    assert!(
        logs.contains("answered 504 Gateway Timeout now"),
        "the 504 is said:\n{logs}"
    );
    // Its access line says what the front server got (the worker's threads, or its
    // loop, never end it). regression (probe 379): a WSGI one had none.
    assert!(
        logs.lines().any(|l| l.contains(
            "WARN postern::access: answered 504 by postern: the request ran past --timeout"
        ) && l.contains("status=504")),
        "the 504's access line:\n{logs}"
    );
    let errors = s.upstream_errors();
    assert!(
        errors.is_empty(),
        "nginx saw no failed upstream connection: {errors:?}"
    );
    assert_eq!(s.nginx.get("/pid").status, 200, "served on after the kill");
}

#[test]
fn a_wsgi_request_past_the_timeout_is_answered_504_once_over_kept_fastcgi() {
    let Some(s) = wsgi_stack() else {
        return;
    };
    answered_once_at_the_limit(&s);
}

#[test]
fn an_asgi_request_past_the_timeout_is_answered_504_once_over_kept_fastcgi() {
    let Some(bin) = nginx_bin() else {
        return;
    };
    let dir = tempdir();
    let postern = Spawn::asgi_unix(dir.path(), "overdue_app", ASGI_APP)
        .protocol("fastcgi")
        .args(["--workers", "2", "--timeout", &LIMIT.to_string()])
        .start();
    let site =
        Upstream::FastCgiKeepConn.site(&postern.addr.nginx(), "fastcgi_read_timeout 60s;", "");
    let nginx = Nginx::start_site(&bin, dir.path(), &site);
    let s = Stack::from_parts(nginx, postern, dir);
    ready(&s);
    answered_once_at_the_limit(&s);
}

// regression (review 341 MEDIUM): a worker already draining (here a reload's old
// worker) when the master condemned it was killed without the 504: the answer ran
// only where its stop began, and nginx resent the GET to a new worker.
#[test]
fn a_request_past_the_timeout_in_a_draining_worker_is_answered_504_once() {
    let Some(s) = wsgi_stack() else {
        return;
    };
    let port = s.nginx.port;
    let slow = std::thread::spawn(move || Nginx::get_on(port, "/sleep?s=60"));
    std::thread::sleep(Duration::from_millis(500));
    s.postern.signal(libc::SIGHUP);
    let r = slow.join().unwrap();
    assert_eq!(
        r.status,
        504,
        "{}\npostern:\n{}\nnginx:\n{}",
        r.text(),
        s.postern.logs(),
        s.nginx.error_log()
    );
    one_kill(&s);
}

// regression (review 341 MEDIUM): the 504 went out as the worker was condemned, so a
// request that ended during the stack dump (the worker then spared) had its app's
// answer replaced by the 504.
#[test]
fn a_request_that_ends_during_the_dump_keeps_its_own_answer() {
    let Some(s) = wsgi_stack() else {
        return;
    };
    // Past the limit by 100 ms: the master condemns it, it ends during the dump.
    let r = s.nginx.get(&format!("/sleep?s={LIMIT}.1"));
    assert_eq!(
        r.status,
        200,
        "{}\npostern:\n{}",
        r.text(),
        s.postern.logs()
    );
}
