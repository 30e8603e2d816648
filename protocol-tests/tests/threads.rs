//! How one worker's Python threads share the work: a request that blocks in the app
//! lets the other threads take and serve the next connections.

use protocol_tests::harness::*;

// A request that blocks (here: waits in the app with the GIL released until the test
// arrives) must not keep the connections that come meanwhile from being served by the
// other thread. (It guarded a lazy accept token tried this session and reverted: the
// token was let go without waking a sleeping thread.)
#[test]
fn a_blocked_request_does_not_stop_the_next_connections() {
    let dir = tempdir();
    let p = Spawn::tcp(dir.path(), &testapp())
        .args(["--threads", "2"])
        .start();
    let meet = Rendezvous::new(dir.path());
    let blocked = {
        let addr = p.addr.clone();
        let target = meet.target(2, "r0");
        std::thread::spawn(move || {
            let (path, query) = target.split_once('?').unwrap();
            let pkt = uwsgi_packet(&[
                ("REQUEST_METHOD", "GET"),
                ("PATH_INFO", path),
                ("QUERY_STRING", query),
            ]);
            raw(&addr, &pkt)
        })
    };
    assert!(
        meet.wait_arrived("r0", 10),
        "the first request never reached the app\n{}",
        p.logs()
    );
    // r0 waits in the app until the test arrives: each of these is served by the other
    // thread meanwhile, or waits for r0's bound and r0 answers 504.
    for i in 0..5 {
        let (status, body) = p.get("/hello");
        assert_eq!(
            (status, body.as_slice()),
            (200, &b"hello\n"[..]),
            "request {i} while r0 blocks\n{}",
            p.logs()
        );
    }
    meet.arrive("test");
    let r = parse_http(&blocked.join().unwrap()).unwrap();
    assert_eq!(
        (r.status, r.text()),
        (200, Rendezvous::met(2)),
        "the other requests waited for the blocked one\n{}",
        p.logs()
    );
}

/// A WSGI app answering the scheduling policy of the thread that serves it, and of a
/// thread it starts: "SERVING STARTED".
fn policy_app(dir: &std::path::Path) -> String {
    let app = dir.join("policy_app.py");
    std::fs::write(
        &app,
        "import os, threading\n\
         def application(environ, start_response):\n    \
             started = []\n    \
             t = threading.Thread(target=lambda: started.append(os.sched_getscheduler(0)))\n    \
             t.start()\n    \
             t.join()\n    \
             body = f'{os.sched_getscheduler(0)} {started[0]}'.encode()\n    \
             start_response('200 OK', [('Content-Length', str(len(body)))])\n    \
             return [body]\n",
    )
    .unwrap();
    app.to_string_lossy().into_owned()
}

/// The scheduling policy of each Python thread (`python-N`) of process `pid`, from
/// /proc/PID/task/*/stat (field 41).
fn python_thread_policies(pid: i32) -> Vec<String> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let Ok(stat) = std::fs::read_to_string(task.join("stat")) else {
            continue;
        };
        // "PID (COMM) STATE ...": the fields after the command name, from field 3.
        let Some((comm, rest)) = stat.split_once(" (").and_then(|(_, r)| r.rsplit_once(") "))
        else {
            continue;
        };
        if comm.starts_with("python-") {
            out.push(rest.split(' ').nth(41 - 3).unwrap().to_owned());
        }
    }
    out
}

// --sched-batch: off (the default) never switches; waits makes a WSGI thread SCHED_BATCH
// only while it waits for a connection or a request (a thread woken by nginx's connect
// does not preempt nginx before its write) and serves under the default policy: the app,
// its I/O waits and the threads it starts are SCHED_OTHER. `--sched-batch` alone
// (always) keeps the whole thread under SCHED_BATCH, serving included.
#[test]
fn the_wsgi_threads_serve_under_sched_other_and_wait_under_sched_batch() {
    const OTHER: &str = "0";
    const BATCH: &str = "3";
    let dir = tempdir();
    let app = policy_app(dir.path());
    for (args, serving, waiting) in [
        (&[][..], OTHER, OTHER),
        (&["--sched-batch=off"][..], OTHER, OTHER),
        (&["--sched-batch=waits"][..], OTHER, BATCH),
        (&["--sched-batch"][..], BATCH, BATCH),
        (&["--sched-batch=always"][..], BATCH, BATCH),
        (
            &["--workers", "2", "--master", "--sched-batch=waits"][..],
            OTHER,
            BATCH,
        ),
        (
            &["--workers", "2", "--master", "--sched-batch"][..],
            BATCH,
            BATCH,
        ),
    ] {
        let p = Spawn::tcp(dir.path(), &app)
            .args(["--threads", "2"])
            .args(args.iter().copied())
            .start();
        for _ in 0..3 {
            let (status, body) = p.get("/");
            assert_eq!(
                (status, String::from_utf8_lossy(&body).into_owned()),
                (200, format!("{serving} {serving}")),
                "the serving thread's policy and a thread it starts: {args:?}\n{}",
                p.logs()
            );
        }
        // Between requests, both threads wait (one in the epoll, one for its turn).
        if !args.contains(&"--workers") {
            let want = vec![waiting.to_owned(); 2];
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            let mut seen = python_thread_policies(p.pid());
            while seen != want && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(20));
                seen = python_thread_policies(p.pid());
            }
            assert_eq!(seen, want, "idle Python threads: {args:?}\n{}", p.logs());
        }
    }
}

/// A WSGI app that holds its Python thread for 60 s on `/block` (the `route` variable,
/// `REQUEST_URI` or `PATH_INFO`), once it has created the file it returns beside the
/// app's path, and answers `ok` otherwise (having read the body if `read_body`).
fn blocking_app(
    dir: &std::path::Path,
    route: &str,
    read_body: bool,
) -> (String, std::path::PathBuf) {
    let blocking = dir.join("blocking");
    let app = dir.join("blocking_app.py");
    let read = if read_body {
        "    environ['wsgi.input'].read()\n"
    } else {
        ""
    };
    std::fs::write(
        &app,
        format!(
            "import time\nBLOCKING = {:?}\ndef application(environ, start_response):\n    if environ['{route}'] == '/block':\n        open(BLOCKING, 'w').close()\n        time.sleep(60)\n{read}    start_response('200 OK', [('Content-Length', '2')])\n    return [b'ok']\n",
            blocking.to_string_lossy()
        ),
    )
    .unwrap();
    (app.to_string_lossy().into_owned(), blocking)
}

/// Serves `app` over `protocol` on a TCP port (returned) with a master, one worker, one
/// Python thread and `--timeout 2`.
fn one_thread_timeout_2(
    dir: &std::path::Path,
    app: &str,
    protocol: &'static str,
) -> (Postern, u16) {
    let p = Spawn::tcp(dir, app)
        .protocol(protocol)
        .args([
            "--workers",
            "1",
            "--master",
            "--threads",
            "1",
            "--timeout",
            "2",
        ])
        .start();
    let Addr::Tcp(port) = p.addr else {
        unreachable!()
    };
    (p, port)
}

/// Serves `app` (which makes a file named after its path, then holds its thread for
/// 60 s) on a TCP port with a master, one worker, two Python threads, `--timeout 2` and
/// `extra` args; sends `/first` and `/second`, each once the one before is running, and
/// returns once the worker condemned for --timeout has exited, with both connections.
fn two_requests_past_timeout(
    dir: &std::path::Path,
    app: &str,
    extra: &[&str],
) -> (Postern, [std::net::TcpStream; 2]) {
    use std::io::Write;
    let p = Spawn::tcp(dir, app)
        .args([
            "--workers",
            "1",
            "--master",
            "--threads",
            "2",
            "--timeout",
            "2",
        ])
        .args(extra.iter().copied())
        .start();
    let Addr::Tcp(port) = p.addr else {
        unreachable!()
    };
    let send = |path: &str| {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(&uwsgi_packet(&[
            ("REQUEST_METHOD", "GET"),
            ("PATH_INFO", path),
            ("QUERY_STRING", ""),
        ]))
        .unwrap();
        c
    };
    // Both threads held: the first request passes --timeout first (or both at once:
    // one condemns the worker, the other is cut off with it).
    let first = send("/first");
    assert!(wait_file(&dir.join("first"), 30), "{}", p.logs());
    let second = send("/second");
    assert!(wait_file(&dir.join("second"), 30), "{}", p.logs());
    assert!(
        p.wait_log("worker exited", 30),
        "the condemned worker never exited\n{}",
        p.logs()
    );
    (p, [first, second])
}

/// A TCP connection to 127.0.0.1:`port` whose reads give up after 30 s.
fn connect(port: u16) -> std::net::TcpStream {
    let c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    c
}

// regression: with every Python thread of a worker held by a request past --timeout,
// a request nginx sent on a kept FastCGI connection parked in that worker was reset at
// the kill (nginx: 502), and no line in postern's log named it; the same as for an
// ASGI worker whose event loop is blocked (asgi_stop). The master now begins the
// worker's stop with the stack dump, and its idle kept connections go to its
// replacement, which serves the request.
#[test]
fn a_request_on_a_kept_connection_parked_in_a_worker_killed_by_timeout_is_served_by_another() {
    use std::io::Write;
    let dir = tempdir();
    let (app, blocking) = blocking_app(dir.path(), "REQUEST_URI", false);
    let (p, port) = one_thread_timeout_2(dir.path(), &app, "fastcgi");
    // A kept connection that served one request: parked in the worker.
    let mut kept = connect(port);
    kept.write_all(&fcgi::get(1, true, "/first")).unwrap();
    assert_eq!(fcgi::status(&mut kept), Some(200), "{}", p.logs());
    // The one Python thread is held; then the kept connection's next request comes.
    let mut blocked = connect(port);
    blocked.write_all(&fcgi::get(1, true, "/block")).unwrap();
    assert!(wait_file(&blocking, 30), "{}", p.logs());
    kept.write_all(&fcgi::get(1, true, "/next")).unwrap();
    assert_eq!(
        fcgi::status(&mut kept),
        Some(200),
        "the request on the kept connection was not served\n{}",
        p.logs()
    );
    // The request past --timeout is answered 504 before the kill (timeout_answer.rs).
    assert_eq!(fcgi::status(&mut blocked), Some(504), "{}", p.logs());
}

// regression: a request read whole while every Python thread was held, and so never
// started, died without a word when --timeout killed its worker: the master named
// only the requests running. It then counted those too; now it names them (the
// worker publishes the first few during its stop, which begins with the dump).
#[test]
fn requests_read_whole_and_cut_off_by_a_timeout_kill_are_named_in_the_log() {
    use std::io::{Read, Write};
    let dir = tempdir();
    let (app, blocking) = blocking_app(dir.path(), "PATH_INFO", true);
    let (p, port) = one_thread_timeout_2(dir.path(), &app, "uwsgi");
    let get = |path: &str| {
        uwsgi_packet(&[
            ("REQUEST_METHOD", "GET"),
            ("PATH_INFO", path),
            ("QUERY_STRING", ""),
        ])
    };
    // A: a POST whose body comes in two parts: its first part takes it to the slow
    // lane. B, behind it in the listen queue, answered: A was accepted.
    let mut a = connect(port);
    let mut head = uwsgi_packet(&[
        ("REQUEST_METHOD", "POST"),
        ("PATH_INFO", "/upload"),
        ("QUERY_STRING", ""),
        ("CONTENT_LENGTH", "10"),
    ]);
    head.extend_from_slice(b"12345");
    a.write_all(&head).unwrap();
    assert!(
        String::from_utf8_lossy(&raw(&p.addr, &get("/b"))).contains("200"),
        "{}",
        p.logs()
    );
    // The one Python thread is held; then A's body is whole, and A waits for it.
    let mut blocked = connect(port);
    blocked.write_all(&get("/block")).unwrap();
    assert!(wait_file(&blocking, 30), "{}", p.logs());
    a.write_all(b"67890").unwrap();
    let mut out = Vec::new();
    let _ = a.read_to_end(&mut out);
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    assert!(p.wait_timeout_exit(10), "{}", p.logs());
    let logs = p.logs();
    let named: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("request cut off: its worker is killed for another request's --timeout before it started it"))
        .collect();
    assert_eq!(named.len(), 1, "{logs}");
    assert!(
        named[0].contains("request=POST /upload") && named[0].contains("request_id="),
        "{logs}"
    );
    // Named, so not counted as well.
    assert!(!logs.contains("waiting="), "{logs}");
}

// regression: with --graceful-timeout under the 500 ms of the stack dump, a worker
// condemned for --timeout ended by itself (its stop begins with the dump) before the
// master's kill, and only the kill named the other requests it cut off: they died
// without a line tying them to the timeout.
#[test]
fn requests_cut_off_by_a_timeout_kill_are_named_whatever_the_graceful_timeout() {
    let dir = tempdir();
    let app = dir.path().join("holding_app.py");
    std::fs::write(
        &app,
        format!(
            "import os, time\nDIR = {:?}\ndef application(environ, start_response):\n    open(os.path.join(DIR, environ['PATH_INFO'].strip('/')), 'w').close()\n    time.sleep(60)\n    start_response('200 OK', [('Content-Length', '2')])\n    return [b'ok']\n",
            dir.path().to_string_lossy()
        ),
    )
    .unwrap();
    let (p, _conns) = two_requests_past_timeout(
        dir.path(),
        &app.to_string_lossy(),
        &["--graceful-timeout", "0.2"],
    );
    let logs = p.logs();
    let named: Vec<&str> = logs
        .lines()
        .filter(|l| {
            l.contains("request cut off: its worker is killed for another request's --timeout")
        })
        .collect();
    assert_eq!(named.len(), 1, "{logs}");
    assert!(
        named[0].contains("request=GET /first") || named[0].contains("request=GET /second"),
        "{logs}"
    );
    assert!(logs.contains("cause=\"timeout\""), "{logs}");
}

// regression: the master's --timeout lines said `request_id=-` for a request that came
// without X-Request-Id, while its access line and environ["postern.request_id"] carried
// the id postern made for it: the worker's line took only an id the front server sent.
#[test]
fn the_timeout_lines_name_the_request_id_postern_made() {
    let dir = tempdir();
    let app = dir.path().join("id_app.py");
    // Each request writes the id the app sees (the access line's) to a file named
    // after it, then holds its thread past --timeout.
    std::fs::write(
        &app,
        format!(
            "import os, time\nDIR = {:?}\ndef application(environ, start_response):\n    with open(os.path.join(DIR, environ['PATH_INFO'].strip('/') + '.tmp'), 'w') as f:\n        f.write(environ['postern.request_id'])\n    os.rename(os.path.join(DIR, environ['PATH_INFO'].strip('/') + '.tmp'), os.path.join(DIR, environ['PATH_INFO'].strip('/')))\n    time.sleep(60)\n    start_response('200 OK', [('Content-Length', '2')])\n    return [b'ok']\n",
            dir.path().to_string_lossy()
        ),
    )
    .unwrap();
    let (p, _conns) = two_requests_past_timeout(dir.path(), &app.to_string_lossy(), &[]);
    let logs = p.logs();
    let id = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    let line = |path: &str| {
        logs.lines()
            .find(|l| {
                (l.contains("request passed --timeout") || l.contains("request cut off"))
                    && l.contains(&format!("request=GET {path} "))
            })
            .unwrap_or_else(|| panic!("no --timeout line for {path}\n{logs}"))
    };
    for name in ["first", "second"] {
        let id = id(name);
        assert_eq!(id.len(), 32, "a generated id: {id:?}");
        assert!(
            line(&format!("/{name}")).contains(&format!("request_id={id}")),
            "{name}: {id}\n{logs}"
        );
    }
}
