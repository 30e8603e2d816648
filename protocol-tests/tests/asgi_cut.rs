//! An ASGI response streamed without Content-Length over uwsgi or SCGI on TCP, cut by the
//! death of its worker (a `--timeout` kill, a `kill -9`), never reaches nginx's client as
//! complete: the connection has SO_LINGER 0 from its first body with more to come, so
//! the close that cuts it is a reset (nginx logs `reset by peer`), not a FIN nginx takes
//! for the end of the body. A one-shot response (one body, `more_body` False) pays
//! nothing for it: no `setsockopt` (counted with strace). As the WSGI path does
//! (nginx_uwsgi's stream cut at `--graceful-timeout`, linger_cost). In CI (`CI=true`) a
//! missing nginx or strace fails these tests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use protocol_tests::harness::*;
use protocol_tests::stack::{Stack, Upstream};

const PRELUDE: &str = "import asyncio";

/// `/stream`: 400 chunks without Content-Length, one each 50 ms (20 s), unbuffered by
/// nginx (`X-Accel-Buffering: no`, as server-sent events are), the file `under_way`
/// made after the second; `/stream-buffered`: the same, buffered; `/short`: three
/// chunks at once; `/length`: two chunks meeting their Content-Length; `/file`: this
/// module by `http.response.pathsend` (its size is its Content-Length); `/proc`: a
/// /proc file so (size 0: read to its end, no Content-Length); anything else: one body
/// (`more_body` False).
const HTTP: &str = r#"
path = scope["path"]
start = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
if path in ("/stream", "/stream-buffered", "/short"):
    if path == "/stream":
        start["headers"].append((b"x-accel-buffering", b"no"))
    await send(start)
    n, delay = (3, 0) if path == "/short" else (400, 0.05)
    for i in range(n):
        await send({"type": "http.response.body", "body": b"chunk %d\n" % i, "more_body": True})
        if i == 1 and delay:
            open("under_way", "w").close()
        if delay:
            await asyncio.sleep(delay)
    await send({"type": "http.response.body", "body": b""})
elif path == "/stubborn":
    # Catches every cancellation and streams on (60 s).
    await send(start)
    for i in range(1200):
        await send({"type": "http.response.body", "body": b"chunk %d\n" % i, "more_body": True})
        if i == 1:
            open("under_way-" + scope["query_string"].decode(), "w").close()
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            pass
    await send({"type": "http.response.body", "body": b""})
elif path == "/big":
    # One body larger than a socket's buffer, to a front server that reads nothing:
    # over FastCGI its write waits for room on an executor thread.
    open("under_way-" + scope["query_string"].decode(), "w").close()
    await send(start)
    await send({"type": "http.response.body", "body": b"x" * (8 << 20), "more_body": True})
    await asyncio.sleep(60)
elif path == "/late-answer":
    # Swallows the cancellation, then answers once its grace is over.
    open("under_way-" + scope["query_string"].decode(), "w").close()
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        await asyncio.sleep(1.5)
    await send(start)
    await send({"type": "http.response.body", "body": b"late\n"})
elif path == "/wrap-factory":
    wrap_tasks()
    await send(start)
    await send({"type": "http.response.body", "body": b"wrapped\n"})
elif path == "/length":
    start["headers"].append((b"content-length", b"6"))
    await send(start)
    await send({"type": "http.response.body", "body": b"abc", "more_body": True})
    await send({"type": "http.response.body", "body": b"def"})
elif path in ("/file", "/proc"):
    await send(start)
    file = __file__ if path == "/file" else "/proc/self/status"
    await send({"type": "http.response.pathsend", "path": file})
else:
    await send(start)
    await send({"type": "http.response.body", "body": b"hello\n"})
"#;

fn app() -> String {
    AsgiApp::new(&format!("{PRELUDE}\n{WRAP_TASKS}")).http(HTTP)
}

/// postern serving the app over `upstream` on TCP with `args`, behind a private nginx.
fn stack(upstream: Upstream, args: &[&str]) -> Option<Stack> {
    let Some(bin) = nginx_bin() else {
        assert!(!in_ci(), "no nginx, and CI=true");
        return None;
    };
    let dir = tempdir();
    let postern = Spawn::asgi_tcp(dir.path(), "cut_app", &app())
        .protocol(upstream.protocol())
        .args(args.iter().copied())
        .start();
    let site = upstream.site(&postern.addr.nginx(), "", "");
    let nginx = Nginx::start_site(&bin, dir.path(), &site);
    Some(Stack::from_parts(nginx, postern, dir))
}

/// GETs `path` through nginx on `port`; once the app is past its second chunk (it made
/// the file `under_way`), `cut()`; everything the client got, to its end (bounded: the
/// whole stream takes 20 s). (nginx buffering the body sends nothing before its end,
/// not even the head: the client cannot tell when the stream is under way.)
fn stream_cut_by(
    port: u16,
    path: &str,
    under_way: &Path,
    what: &str,
    cut: impl FnOnce(),
) -> Vec<u8> {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    assert!(wait_file(under_way, 30), "{what}: the stream never began");
    cut();
    let started = Instant::now();
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{what}: the stream ran on"
    );
    got
}

#[test]
fn an_asgi_stream_cut_by_its_workers_death_over_tcp_is_never_complete_for_the_client() {
    // regression: deploy HIGH's ASGI side (uwsgi and SCGI over TCP): the loop's
    // non-blocking writes never set SO_LINGER 0, so a stream cut by a --timeout kill (or
    // any death of the worker) ended with a FIN, which nginx took for the end of a body
    // without Content-Length: the client got a complete chunked 200 (its 0-chunk).
    for (upstream, how, path) in [Upstream::Uwsgi, Upstream::Scgi]
        .into_iter()
        .flat_map(|u| ["--timeout", "kill -9"].map(|h| (u, h)))
        .flat_map(|(u, h)| ["/stream", "/stream-buffered"].map(|p| (u, h, p)))
    {
        {
            let what = format!("{upstream:?} {how} {path}");
            let args: &[&str] = if how == "--timeout" {
                &["--timeout", "2", "--loop", "asyncio"]
            } else {
                &["--master", "--loop", "asyncio"]
            };
            let Some(s) = stack(upstream, args) else {
                return;
            };
            let under_way = s.postern.dir.join("under_way");
            let got = stream_cut_by(s.nginx.port, path, &under_way, &what, || {
                if how == "kill -9" {
                    // Read now, the stream under way: the master's socket accepts
                    // before its worker is forked.
                    let worker = children(s.postern.pid());
                    assert!(!worker.is_empty(), "{what}: no worker");
                    for pid in &worker {
                        // SAFETY: kill(2) on the workers of our own child.
                        unsafe { libc::kill(*pid, libc::SIGKILL) };
                    }
                }
            });
            let text = String::from_utf8_lossy(&got);
            assert!(
                parse_http(&got).is_none() && !got.ends_with(b"0\r\n\r\n"),
                "{what}: a cut body must not look complete: {text}\nnginx:\n{}\npostern:\n{}",
                s.nginx.error_log(),
                s.postern.logs()
            );
            assert!(
                s.nginx.error_log().contains("reset by peer"),
                "{what}: nginx logged no reset:\n{}",
                s.nginx.error_log()
            );
            if how == "--timeout" {
                assert!(
                    s.postern.logs().contains("--timeout"),
                    "{what}: the cut was not the --timeout kill:\n{}",
                    s.postern.logs()
                );
            }
        }
    }
}

#[test]
fn asgi_responses_over_tcp_still_end_complete() {
    for upstream in [Upstream::Uwsgi, Upstream::Scgi] {
        let Some(s) = stack(upstream, &["--loop", "asyncio"]) else {
            return;
        };
        for (path, body) in [
            ("/once", "hello\n".to_owned()),
            ("/short", "chunk 0\nchunk 1\nchunk 2\n".to_owned()),
            ("/length", "abcdef".to_owned()),
        ] {
            let r = s.nginx.get(path);
            assert_eq!(
                (r.status, r.text()),
                (200, body),
                "{upstream:?} {path}\n{}",
                s.postern.logs()
            );
        }
        s.assert_clean(&format!("{upstream:?}"));
    }
}

fn have_strace() -> bool {
    Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn a_one_shot_asgi_response_sets_no_so_linger_and_a_stream_does() {
    if !have_strace() {
        assert!(!in_ci(), "strace is missing (CI=true)");
        eprintln!("SKIPPED: strace is missing");
        return;
    }
    let dir = tempdir();
    let trace = dir.path().join("strace.txt");
    let spawn = Spawn::asgi_tcp(dir.path(), "cut_app", &app()).args(["--loop", "asyncio"]);
    let addr = spawn.addr().arg();
    let inner = spawn.command();
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-qq", "-e", "trace=setsockopt", "-o"])
        .arg(&trace)
        .arg(inner.get_program())
        .args(inner.get_args());
    if let Some(d) = inner.get_current_dir() {
        cmd.current_dir(d);
    }
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let p = Postern::spawn(cmd, spawn.addr().clone(), dir.path(), None);
    let lingers = || {
        std::fs::read_to_string(&trace)
            .unwrap_or_default()
            .matches("SO_LINGER")
            .count()
    };
    let mut counts = Vec::new();
    for path in ["/once", "/short", "/length", "/file", "/proc", "/once"] {
        let before = lingers();
        let out = Command::new(postern_bin())
            .args(["request", &format!("uwsgi://{addr}{path}")])
            .output()
            .unwrap();
        assert!(out.status.success(), "{path}: {out:?}");
        // The access line follows the response's end (and its SO_LINGER calls).
        std::thread::sleep(Duration::from_millis(200));
        counts.push((path, lingers() - before));
    }
    for pid in children(p.pid()) {
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    wait_until(10, || children(p.pid()).is_empty());
    let expected = [
        ("/once", 0),
        // Set at the first body with more to come, cleared at the complete end.
        ("/short", 2),
        ("/length", 2),
        ("/file", 0),
        ("/proc", 2),
        ("/once", 0),
    ];
    assert_eq!(counts, expected, "SO_LINGER calls per response");
}

// An ASGI stream over FastCGI on a Unix socket, cut by the master's stop now (a
// second SIGTERM, SIGQUIT): the worker cuts it and marks it (nginx: `unsupported
// FastCGI protocol version: 0`) before it exits, with keep-conn or not.
// regression (probe 346): the master killed its workers at once, and their plain close
// ended an unbuffered stream as a complete 200.
#[test]
fn an_asgi_stream_cut_by_the_masters_stop_now_is_never_complete_for_the_client() {
    for upstream in [Upstream::FastCgiKeepConn, Upstream::FastCgi] {
        for signals in [&[libc::SIGTERM, libc::SIGTERM][..], &[libc::SIGQUIT][..]] {
            let what = format!("{upstream:?} {signals:?}");
            let Some(bin) = nginx_bin() else {
                assert!(!in_ci(), "no nginx, and CI=true");
                return;
            };
            let dir = tempdir();
            let postern = Spawn::asgi_unix(dir.path(), "cut_app", &app())
                .protocol(upstream.protocol())
                .args(["--master", "--workers", "2", "--graceful-timeout", "30"])
                .start();
            let site = upstream.site(&postern.addr.nginx(), "", "");
            let nginx = Nginx::start_site(&bin, dir.path(), &site);
            let s = Stack::from_parts(nginx, postern, dir);
            assert!(
                s.postern.wait_log("all 2 workers ready", 20),
                "{}",
                s.postern.logs()
            );
            let under_way = s.postern.dir.join("under_way");
            let got = stream_cut_by(s.nginx.port, "/stream", &under_way, &what, || {
                for (i, &signal) in signals.iter().enumerate() {
                    if i > 0 {
                        std::thread::sleep(Duration::from_millis(300));
                    }
                    s.postern.signal(signal);
                }
            });
            let text = String::from_utf8_lossy(&got);
            assert!(
                parse_http(&got).is_none() && !got.ends_with(b"0\r\n\r\n"),
                "{what}: a cut body must not look complete: {text}\nnginx:\n{}\npostern:\n{}",
                s.nginx.error_log(),
                s.postern.logs()
            );
            assert!(
                s.nginx
                    .error_log()
                    .contains("upstream sent unsupported FastCGI protocol version: 0"),
                "{what}: not marked:\n{}\npostern:\n{}",
                s.postern.logs(),
                s.nginx.error_log()
            );
            // The worker's loop cancels the task and names the request, once (the
            // master names only what a worker still runs as it exits).
            // regression (probe 352): the master named them from the scoreboard,
            // which shows 16 tasks: the others went unnamed.
            let named = |l: &&str| {
                l.contains("cut off by") && l.contains("postern cancelled this request's task")
            };
            assert!(
                s.postern
                    .wait_log("postern cancelled this request's task", 10),
                "{what}: {}",
                s.postern.logs()
            );
            assert!(
                s.postern.wait_log("all workers exited", 10),
                "{what}: {}",
                s.postern.logs()
            );
            assert_eq!(
                s.postern.logs().lines().filter(named).count(),
                1,
                "{what}: {}",
                s.postern.logs()
            );
            assert!(
                !s.postern.logs().contains("request cut off: its worker"),
                "{what}: {}",
                s.postern.logs()
            );
            // Its access line says it was cut, not that its client went away.
            // regression (probe 352): `client went away before the response was
            // complete`, as its task's next send failed on the cut connection.
            assert!(
                !s.postern
                    .logs()
                    .contains("client went away before the response was complete"),
                "{what}: {}",
                s.postern.logs()
            );
        }
    }
}

// The access lines of ASGI streams over FastCGI cut by the master's stop now say the
// response was cut (`response incomplete`), not that the client went away: their
// tasks' next send failed on the cut connection.
// regression (probe 352): `client went away before the response was complete`.
#[test]
fn asgi_streams_cut_by_the_masters_stop_now_are_logged_incomplete() {
    let dir = tempdir();
    let mut p = Spawn::asgi_unix(dir.path(), "cut_app", &app())
        .protocol("fastcgi")
        .args(["--master", "--workers", "1", "--graceful-timeout", "30"])
        .start();
    assert!(p.wait_log("all 1 workers ready", 20), "{}", p.logs());
    let Addr::Unix(path) = p.addr.clone() else {
        unreachable!("a Unix socket")
    };
    let mut conns = Vec::new();
    for _ in 0..3 {
        let mut c = std::os::unix::net::UnixStream::connect(&path).unwrap();
        c.write_all(&fcgi::get(1, false, "/stream")).unwrap();
        conns.push(c);
    }
    assert!(
        wait_until(10, || p.logs().matches("GET /stream").count() >= 3
            || dir.path().join("under_way").exists()),
        "{}",
        p.logs()
    );
    std::thread::sleep(Duration::from_millis(500));
    p.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    p.signal(libc::SIGTERM);
    // Nothing read until postern has exited: the streams' writes wait for room on
    // executor threads when their tasks are cancelled.
    // regression (CI): such a write came back only when the process's leaving cut the
    // response, after the loop had closed: no access line, an internal error, and
    // concurrent.futures' traceback on stderr.
    assert!(p.wait_exit(10).is_some(), "{}", p.logs());
    for mut c in conns {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut sink = Vec::new();
        let _ = c.read_to_end(&mut sink);
    }
    assert_eq!(
        p.logs().matches("response incomplete").count(),
        3,
        "{}",
        p.logs()
    );
    assert!(
        !p.logs()
            .contains("client went away before the response was complete"),
        "{}",
        p.logs()
    );
    for bad in ["internal error", "Event loop is closed", "Traceback"] {
        assert!(!p.logs().contains(bad), "{bad}: {}", p.logs());
    }
}

// A stop that cuts a FastCGI response off while its write waits for room on an
// executor thread (the front server reads nothing) cuts that write too, so the
// response ends with its access line before the event loop closes: at an immediate
// stop and at --graceful-timeout.
// regression (CI, the test above): the write came back only when the process's leaving
// cut it, after the loop had closed: no access line, "internal error: a FastCGI
// response was dropped unfinished", and concurrent.futures' "Event loop is closed"
// traceback on stderr.
#[test]
fn a_write_waiting_for_room_when_a_stop_cuts_it_off_still_ends_with_its_access_line() {
    for immediate in [true, false] {
        let dir = tempdir();
        let graceful = if immediate { "30" } else { "1" };
        let mut p = Spawn::asgi_unix(dir.path(), "cut_app", &app())
            .protocol("fastcgi")
            .args(["--master", "--workers", "1", "--graceful-timeout", graceful])
            .start();
        assert!(p.wait_log("all 1 workers ready", 20), "{}", p.logs());
        let Addr::Unix(path) = p.addr.clone() else {
            unreachable!("a Unix socket")
        };
        let mut conns = Vec::new();
        for i in 0..2 {
            let mut c = std::os::unix::net::UnixStream::connect(&path).unwrap();
            c.write_all(&fcgi::get(1, false, &format!("/big?{i}")))
                .unwrap();
            conns.push(c);
        }
        for i in 0..2 {
            let f = dir.path().join(format!("under_way-{i}"));
            assert!(wait_file(&f, 10), "{}", p.logs());
        }
        // The writes fill the sockets and wait.
        std::thread::sleep(Duration::from_millis(500));
        p.signal(libc::SIGTERM);
        if immediate {
            std::thread::sleep(Duration::from_millis(200));
            p.signal(libc::SIGTERM);
        }
        // The front server reads again a moment after the cut: the responses end with
        // the cut's mark after whole records, never mid-record.
        // regression (review 422, HIGH): the worker exited without waiting for the
        // marks of responses its loop had cut; they ended mid-record, unmarked.
        assert!(
            p.wait_log_count("postern cancelled this request's task", 2, 10),
            "{}",
            p.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
        let readers: Vec<_> = conns
            .into_iter()
            .map(|mut c| {
                std::thread::spawn(move || {
                    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let mut got = Vec::new();
                    let _ = c.read_to_end(&mut got);
                    got
                })
            })
            .collect();
        assert!(p.wait_exit(15).is_some(), "{}", p.logs());
        let logs = p.logs();
        for r in readers {
            let got = r.join().unwrap();
            assert_eq!(
                cut_mark(&got),
                Ok(()),
                "immediate {immediate}: {} bytes\n{logs}",
                got.len()
            );
        }
        assert_eq!(
            logs.matches("response incomplete").count(),
            2,
            "immediate {immediate}: {logs}"
        );
        for bad in ["internal error", "Event loop is closed", "Traceback"] {
            assert!(!logs.contains(bad), "immediate {immediate}: {bad}: {logs}");
        }
    }
}

/// How the FastCGI records in `got` end: whole records, then the cut's mark (a header
/// whose version is 0) is `Ok`.
fn cut_mark(got: &[u8]) -> Result<(), String> {
    let mut at = 0;
    while at + 8 <= got.len() {
        let h = &got[at..at + 8];
        if h[0] == 0 {
            return Ok(());
        }
        let len = 8 + usize::from(u16::from_be_bytes([h[4], h[5]])) + usize::from(h[6]);
        if h[1] == fcgi::END_REQUEST {
            return Err(format!("END_REQUEST at {at}"));
        }
        at += len;
    }
    Err(format!(
        "no mark: {} bytes past the last whole record",
        got.len().saturating_sub(at)
    ))
}

/// The app served by a master with one worker on a Unix socket (whose path is
/// returned), ready; `--graceful-timeout 30`.
fn one_worker_on_unix(dir: &Path) -> (Postern, std::path::PathBuf) {
    let p = Spawn::asgi_unix(dir, "cut_app", &app())
        .args(["--master", "--workers", "1", "--graceful-timeout", "30"])
        .start();
    assert!(p.wait_log("all 1 workers ready", 20), "{}", p.logs());
    let Addr::Unix(path) = p.addr.clone() else {
        unreachable!("a Unix socket")
    };
    (p, path)
}

// More ASGI tasks in flight than a worker's scoreboard shows (16 lines), over uwsgi (no
// FastCGI mark to trace them by), cut by SIGQUIT: each is named, with its access line,
// and the final line counts them all.
// regression (probe 352): the master named them from the scoreboard as it asked the
// worker to stop: 16 of 24, the others cut off without a trace.
#[test]
fn every_asgi_task_cut_by_an_immediate_stop_is_named_not_only_those_on_the_scoreboard() {
    // Also with a task factory that wraps each request's coroutine (sentry_sdk's).
    // regression (review 397): the loop told a request's task by its coroutine, so
    // through such a factory it cut none off: the master named the 16 its lines
    // showed, the rest went unnamed, and postern exited 0.
    for wrapped in [false, true] {
        cut_by_an_immediate_stop(wrapped);
    }
}

fn cut_by_an_immediate_stop(wrapped: bool) {
    const STREAMS: usize = 24;
    let dir = tempdir();
    let (p, path) = one_worker_on_unix(dir.path());
    if wrapped {
        let (status, body) = p.get("/wrap-factory");
        assert_eq!(
            (status, &body[..]),
            (200, &b"wrapped\n"[..]),
            "{}",
            p.logs()
        );
    }
    let mut conns = Vec::new();
    for _ in 0..STREAMS {
        let mut c = std::os::unix::net::UnixStream::connect(&path).unwrap();
        c.write_all(&uwsgi_get("/stream")).unwrap();
        conns.push(c);
    }
    // Each has its head and first chunks out.
    for c in &mut conns {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("chunk 1\n") {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0, "{}", p.logs());
            got.extend_from_slice(&buf[..n]);
        }
    }
    p.signal(libc::SIGQUIT);
    for mut c in conns {
        let mut sink = Vec::new();
        let _ = c.read_to_end(&mut sink);
    }
    assert!(
        p.wait_log("stopped with requests cut off", 10),
        "{}",
        p.logs()
    );
    let logs = p.logs();
    // Each once: by the worker as its task ends, or (one still running as the worker
    // exits, on a slow machine) by the master.
    let by_worker = log_request_ids(
        &logs,
        "cut off by SIGQUIT: postern cancelled this request's task",
    );
    let by_master = log_request_ids(&logs, "request cut off: its worker");
    assert_cut_named_once(&logs, &by_worker, &by_master, STREAMS);
    assert!(
        logs.contains(&format!("{STREAMS} requests running")),
        "{logs}"
    );
}

// regression (probe 355): a task that caught the cancellation of an immediate stop (or
// --graceful-timeout's) and went on was never named (a single process named none;
// under a master, the 16 its scoreboard shows). The loop names each still running at
// the end of its grace, with its access line (incomplete), and the stop exits 1.
#[test]
fn a_task_that_swallows_the_cut_off_is_still_named_with_its_access_line() {
    const STREAMS: usize = 3;
    // A single process and a master's worker stopped by SIGQUIT; a master's worker
    // whose --graceful-timeout passes.
    // A second signal during --graceful-timeout's grace shortens it (a single process;
    // the master forwards its own the same way). Last, through a task factory that
    // wraps each coroutine (review 398: each such task's naming failed with an ERROR,
    // its request unnamed).
    for (master, signal, graceful, grace, by, wrapped) in [
        (false, libc::SIGQUIT, "30", "0.3", "by SIGQUIT", false),
        (true, libc::SIGQUIT, "30", "0.3", "by SIGQUIT", false),
        (
            true,
            libc::SIGTERM,
            "0.5",
            "1",
            "at --graceful-timeout",
            false,
        ),
        (
            false,
            libc::SIGTERM,
            "0.5",
            "0.3",
            "by a second signal (SIGTERM)",
            false,
        ),
        (true, libc::SIGQUIT, "30", "0.3", "by SIGQUIT", true),
    ] {
        let quit_in_grace = !master && signal == libc::SIGTERM;
        let dir = tempdir();
        let mut args = vec!["--graceful-timeout", graceful];
        if master {
            args.extend(["--master", "--workers", "1"]);
        }
        let mut p = Spawn::asgi_unix(dir.path(), "cut_app", &app())
            .args(args)
            .start();
        assert!(p.wait_serving("/"), "{}", p.logs());
        if wrapped {
            assert_eq!(p.get("/wrap-factory").0, 200, "{}", p.logs());
        }
        let Addr::Unix(path) = p.addr.clone() else {
            unreachable!("a Unix socket")
        };
        let mut conns = Vec::new();
        for i in 0..STREAMS {
            let mut c = std::os::unix::net::UnixStream::connect(&path).unwrap();
            // One answers by itself once its grace is over: refused quietly.
            let what = if i == 0 { "late-answer" } else { "stubborn" };
            c.write_all(&uwsgi_get(&format!("/{what}?{i}"))).unwrap();
            conns.push(c);
            assert!(
                wait_file(&dir.path().join(format!("under_way-{i}")), 10),
                "{}",
                p.logs()
            );
        }
        p.signal(signal);
        if quit_in_grace {
            assert!(p.wait_log("--graceful-timeout passed", 10), "{}", p.logs());
            std::thread::sleep(Duration::from_millis(200));
            p.signal(libc::SIGTERM);
        }
        for mut c in conns {
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut sink = Vec::new();
            let _ = c.read_to_end(&mut sink);
        }
        let status = p.wait_exit(20);
        let logs = p.logs();
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(1),
            "master {master}: {logs}"
        );
        assert_eq!(
            logs.matches(&format!("did not end within {grace}s of its cancellation"))
                .count(),
            STREAMS,
            "master {master}: {logs}"
        );
        assert_eq!(
            logs.matches(&format!(
                "cut off {by}: postern cancelled this request's task during its response"
            ))
            .count(),
            STREAMS - 1,
            "master {master}: {logs}"
        );
        assert_eq!(
            logs.matches(&format!("cut off {by}: postern cancelled this request's task before its response started; answered 503")).count(),
            1,
            "master {master}: {logs}"
        );
        // Its access line says postern answered it, not the app.
        // regression (probe 426): it read `served ... status=503`.
        assert_eq!(
            logs.matches("WARN postern::access: answered 503 by postern: a stop cut the request off before its response started").count(),
            1,
            "master {master}: {logs}"
        );
        assert_eq!(
            logs.matches("response incomplete").count(),
            STREAMS - 1,
            "master {master}: {logs}"
        );
        // Its own late answer is refused without an error line (regression, probe
        // 358: "http.response.start sent twice"), and no task is reported destroyed.
        let errors: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains(" ERROR ") && !l.contains("stopped with requests cut off"))
            .collect();
        assert!(errors.is_empty(), "master {master}: {errors:?}\n{logs}");
        // Named once: not again by the master from the scoreboard.
        assert!(
            !logs.contains("request cut off: its worker"),
            "master {master}: {logs}"
        );
    }
}
