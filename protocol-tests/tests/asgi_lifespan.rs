//! ASGI: `--interface` detection and the lifespan protocol, on the real binary with
//! tiny ASGI apps written by each test: which interface auto chooses (and the refusals),
//! startup before the first request, the state a request sees, shutdown after the last
//! request at SIGTERM, a failed startup at boot (single process and master) and during
//! a reload (the old workers keep serving), `--lifespan auto|off`, `--lifespan-timeout`.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use protocol_tests::harness::*;

/// Writes `code` as `name` in `dir`; returns its path.
fn app_file(dir: &Path, name: &str, code: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, code).unwrap();
    path.to_string_lossy().into_owned()
}

/// An ASGI app module: `EVENTS` (a file the app appends one line per event to), an
/// HTTP responder, and the lifespan handling given in `lifespan` (the body of
/// `async def lifespan(scope, receive, send)`).
fn asgi_app(dir: &Path, lifespan: &str) -> (String, PathBuf) {
    let events = dir.join("events.txt");
    let code = format!(
        r#"import asyncio, os
EVENTS = {events:?}

def event(line):
    with open(EVENTS, "a") as f:
        f.write(line + "\n")

async def lifespan(scope, receive, send):
{lifespan}

async def respond(send, status, body):
    await send({{"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]}})
    await send({{"type": "http.response.body", "body": body}})

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await lifespan(scope, receive, send)
    path = scope["path"]
    event("request " + path)
    if path == "/slow":
        await asyncio.sleep(0.5)
    state = scope.get("state")
    if path == "/mutate" and state is not None:
        state["token"] = "changed by a request"
    body = ("%s %d" % (None if state is None else state.get("token"), os.getpid())).encode()
    event("response " + path)
    await respond(send, 200, body)
"#,
        events = events.to_string_lossy(),
    );
    (app_file(dir, "lifespan_app.py", &code), events)
}

/// A lifespan that completes its startup (storing a token in the state) and shutdown,
/// logging both.
const COMPLETE: &str = r#"    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            event("startup")
            scope["state"]["token"] = "from-startup"
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            event("shutdown")
            await send({"type": "lifespan.shutdown.complete"})
            return
"#;

fn events(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Runs `spawn`'s command to its end (at most 60 s): exit status and everything it wrote.
fn run_to_exit(spawn: &Spawn, dir: &Path) -> (ExitStatus, String) {
    let out = dir.join(format!("out-{}.log", free_port()));
    let file = std::fs::File::create(&out).unwrap();
    let mut child = spawn
        .command()
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "postern still runs after 60 s:\n{}",
                std::fs::read_to_string(&out).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, std::fs::read_to_string(&out).unwrap_or_default())
}

fn text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

#[test]
fn auto_serves_coroutine_functions_async_call_objects_and_marked_functions_as_asgi() {
    let dir = tempdir();
    let app = app_file(
        dir.path(),
        "shapes.py",
        r#"import asyncio, functools, inspect

async def answer(scope, receive, send, name="coroutine"):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(name)).encode())]})
    await send({"type": "http.response.body", "body": name.encode()})

coroutine = answer

class App:
    async def __call__(self, scope, receive, send):
        await answer(scope, receive, send, "instance")

instance = App()
partial = functools.partial(answer, name="partial")

def _marked(scope, receive, send):
    return answer(scope, receive, send, "marked")

# inspect.markcoroutinefunction from Python 3.12; asgiref's marker before it.
if hasattr(inspect, "markcoroutinefunction"):
    marked = inspect.markcoroutinefunction(_marked)
else:
    _marked._is_coroutine = asyncio.coroutines._is_coroutine
    marked = _marked
"#,
    );
    for name in ["coroutine", "instance", "partial", "marked"] {
        let p = Spawn::unix(dir.path(), &format!("{app}:{name}")).start();
        let (status, body) = p.get("/");
        assert_eq!(
            (status, text(&body)),
            (200, name.to_owned()),
            "{}",
            p.logs()
        );
        let logs = p.logs();
        let line = logs
            .lines()
            .find(|l| l.contains("serving the app as"))
            .unwrap_or_else(|| panic!("no interface line:\n{logs}"));
        assert!(line.contains("serving the app as ASGI"), "{line}");
        let why = match name {
            "instance" => "whose __call__ is a coroutine function",
            "marked" => "marked as a coroutine function",
            "partial" => "functools.partial of",
            _ => "is a coroutine function",
        };
        assert!(line.contains(why), "{name}: {line}");
    }
}

#[test]
fn auto_serves_a_plain_function_as_wsgi_and_says_why() {
    let dir = tempdir();
    let app = app_file(
        dir.path(),
        "plain.py",
        "def application(environ, start_response):\n    start_response('200 OK', [('Content-Length', '4')])\n    return [b'wsgi']\n",
    );
    let p = Spawn::unix(dir.path(), &app).start();
    assert_eq!(p.get("/"), (200, b"wsgi".to_vec()));
    let logs = p.logs();
    assert!(
        logs.contains("serving the app as WSGI")
            && logs.contains("is a plain (not async) function"),
        "{logs}"
    );
    // --check says it too.
    let (status, out) = run_to_exit(&Spawn::unix(dir.path(), &app).arg("--check"), dir.path());
    assert!(status.success(), "{out}");
    assert!(
        out.contains("interface: WSGI, as plain.application is a plain (not async) function"),
        "{out}"
    );
}

#[test]
fn apps_that_cannot_be_served_as_asked_are_refused_at_start() {
    let dir = tempdir();
    let app = app_file(
        dir.path(),
        "wrong.py",
        "class asgi2:\n    def __init__(self, scope):\n        self.scope = scope\n    async def __call__(self, receive, send):\n        pass\n\nasync def asgi3(scope, receive, send):\n    pass\n\ndef wsgi(environ, start_response):\n    return []\n",
    );
    let cases = [
        (format!("{app}:asgi2"), None, "ASGI 2"),
        (
            format!("{app}:asgi3"),
            Some("wsgi"),
            "--interface wsgi was given",
        ),
        (
            format!("{app}:wsgi"),
            Some("asgi"),
            "--interface asgi was given",
        ),
    ];
    for (target, interface, says) in cases {
        let mut spawn = Spawn::unix(dir.path(), &target);
        if let Some(i) = interface {
            spawn = spawn.args(["--interface", i]);
        }
        let (status, out) = run_to_exit(&spawn, dir.path());
        assert!(!status.success(), "{target} started:\n{out}");
        assert!(out.contains(says), "{target}: {out}");
        assert!(!out.contains("ready"), "{target}: {out}");
    }
}

#[test]
fn startup_runs_before_the_first_request_and_shutdown_after_the_last_at_sigterm() {
    let dir = tempdir();
    let (app, events_file) = asgi_app(dir.path(), COMPLETE);
    let mut p = Spawn::unix(dir.path(), &app).start();
    assert_eq!(events(&events_file), ["startup"], "{}", p.logs());
    // A request sees what startup stored, and a request's change stays its own.
    let (status, body) = p.get("/mutate");
    assert_eq!(status, 200);
    assert!(
        text(&body).starts_with("changed by a request "),
        "{}",
        text(&body)
    );
    let (_, body) = p.get("/");
    assert!(text(&body).starts_with("from-startup "), "{}", text(&body));
    // SIGTERM while a request is in flight: it finishes, then shutdown runs.
    let slow = {
        let addr = p.addr.clone();
        std::thread::spawn(move || {
            raw(
                &addr,
                &uwsgi_packet(&[
                    ("REQUEST_METHOD", "GET"),
                    ("PATH_INFO", "/slow"),
                    ("REQUEST_URI", "/slow"),
                    ("SERVER_NAME", "test"),
                    ("SERVER_PORT", "80"),
                    ("SERVER_PROTOCOL", "HTTP/1.1"),
                ]),
            )
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !events(&events_file).contains(&"request /slow".to_owned()) {
        assert!(Instant::now() < deadline, "{}", p.logs());
        std::thread::sleep(Duration::from_millis(10));
    }
    p.signal(libc::SIGTERM);
    let answer = parse_http(&slow.join().unwrap()).expect("the slow request was answered");
    assert_eq!(answer.status, 200);
    let status = p.wait_exit(30).expect("postern stopped");
    assert!(status.success(), "{status}\n{}", p.logs());
    assert_eq!(
        events(&events_file),
        [
            "startup",
            "request /mutate",
            "response /mutate",
            "request /",
            "response /",
            "request /slow",
            "response /slow",
            "shutdown"
        ]
    );
    let logs = p.logs();
    assert!(logs.contains("ASGI lifespan startup complete"), "{logs}");
    assert!(logs.contains("ASGI lifespan shutdown complete"), "{logs}");
}

#[test]
fn a_request_that_arrives_during_startup_waits_for_it() {
    let dir = tempdir();
    let (app, events_file) = asgi_app(
        dir.path(),
        r#"    await receive()
    event("startup")
    await asyncio.sleep(1.0)
    scope["state"]["token"] = "from-startup"
    event("startup complete")
    await send({"type": "lifespan.startup.complete"})
    await receive()
    await send({"type": "lifespan.shutdown.complete"})
"#,
    );
    let spawn = Spawn::unix(dir.path(), &app);
    let out = dir.path().join("out.log");
    let file = std::fs::File::create(&out).unwrap();
    let mut child = spawn
        .command()
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    // The listener is bound before the app is imported: the request is sent as soon
    // as startup has begun, and waits in the listen queue until it completes.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !events(&events_file).contains(&"startup".to_owned()) {
        assert!(
            Instant::now() < deadline && child.try_wait().unwrap().is_none(),
            "{}",
            std::fs::read_to_string(&out).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let answer = raw(
        spawn.addr(),
        &uwsgi_packet(&[
            ("REQUEST_METHOD", "GET"),
            ("PATH_INFO", "/"),
            ("REQUEST_URI", "/"),
            ("SERVER_NAME", "test"),
            ("SERVER_PORT", "80"),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
        ]),
    );
    let _ = child.kill();
    let _ = child.wait();
    let answer = parse_http(&answer).expect("answered");
    assert!(
        answer.text().starts_with("from-startup "),
        "{}",
        answer.text()
    );
    assert_eq!(
        events(&events_file),
        ["startup", "startup complete", "request /", "response /"]
    );
}

const FAILS: &str = r#"    message = await receive()
    event("startup")
    await send({"type": "lifespan.startup.failed", "message": "cannot reach the database at db:5432"})
"#;

#[test]
fn a_failed_startup_stops_postern_with_the_apps_message() {
    let dir = tempdir();
    let (app, events_file) = asgi_app(dir.path(), FAILS);
    // One process; a master with two workers; the same with the app imported by the
    // master (--preload: each worker still runs its own startup).
    for args in [
        &["--workers", "1"][..],
        &["--workers", "2"],
        &["--workers", "2", "--preload"],
    ] {
        let _ = std::fs::remove_file(&events_file);
        let spawn = Spawn::unix(dir.path(), &app).args(args.iter().copied());
        let (status, out) = run_to_exit(&spawn, dir.path());
        assert!(!status.success(), "{args:?}:\n{out}");
        assert!(
            out.contains("lifespan startup failed")
                && out.contains("cannot reach the database at db:5432"),
            "{args:?}:\n{out}"
        );
        assert!(!out.contains(" ready"), "{args:?}:\n{out}");
        assert!(events(&events_file).iter().all(|e| e == "startup"));
        if args[1] == "2" {
            assert!(out.contains("the first workers failed to start"), "{out}");
        }
    }
}

/// A lifespan that stores `token` "old" at startup, and whose startup fails ("new code:
/// startup broken") once `flag` exists.
fn startup_fails_once(flag: &std::path::Path) -> String {
    format!(
        r#"    message = await receive()
    if os.path.exists({flag:?}):
        await send({{"type": "lifespan.startup.failed", "message": "new code: startup broken"}})
        return
    scope["state"]["token"] = "old"
    await send({{"type": "lifespan.startup.complete"}})
    await receive()
    await send({{"type": "lifespan.shutdown.complete"}})
"#,
        flag = flag.to_string_lossy()
    )
}

#[test]
fn a_reload_whose_startup_fails_keeps_the_old_workers_serving() {
    let dir = tempdir();
    let flag = dir.path().join("fail-now");
    let lifespan = startup_fails_once(&flag);
    let (app, _) = asgi_app(dir.path(), &lifespan);
    let p = Spawn::unix(dir.path(), &app)
        .args(["--workers", "2"])
        .start();
    assert!(p.wait_log("all 2 workers ready", 20), "{}", p.logs());
    let (_, before) = p.get("/");
    std::fs::write(&flag, "").unwrap();
    p.signal(libc::SIGHUP);
    assert!(p.wait_log("reload failed", 30), "{}", p.logs());
    assert!(
        p.logs().contains("new code: startup broken"),
        "{}",
        p.logs()
    );
    for _ in 0..4 {
        let (status, body) = p.get("/");
        assert_eq!(status, 200);
        assert!(text(&body).starts_with("old "), "{}", text(&body));
    }
    let _ = before;
}

// regression (probe 329): a successor whose lifespan startup failed was logged as
// "code on disk that does not import?" (it had imported); and (the probe's HIGH) the
// worker at its --max-requests limit no longer leaves before its successor's failure
// is known: it serves on, held.
#[test]
fn a_successor_whose_startup_fails_is_named_so_and_the_worker_at_its_limit_serves_on() {
    let dir = tempdir();
    let flag = dir.path().join("fail-now");
    let lifespan = startup_fails_once(&flag);
    let (app, _) = asgi_app(dir.path(), &lifespan);
    let p = Spawn::unix(dir.path(), &app)
        .args(["--master", "--max-requests", "5"])
        .start();
    assert!(p.wait_log("all 1 workers ready", 20), "{}", p.logs());
    std::fs::write(&flag, "").unwrap();
    for i in 0..12 {
        let (status, body) = p.get("/");
        assert_eq!(status, 200, "request {i}\n{}", p.logs());
        assert!(text(&body).starts_with("old "), "{}", text(&body));
    }
    assert!(
        p.wait_log("its ASGI lifespan startup failed", 20),
        "{}",
        p.logs()
    );
    assert!(
        p.wait_log("accepts again and serves on past it", 10),
        "{}",
        p.logs()
    );
    let logs = p.logs();
    assert!(
        !logs.contains("code on disk that does not import"),
        "{logs}"
    );
    assert!(
        logs.contains("accepts again and serves on past it"),
        "{logs}"
    );
}

// regression (probe 373 HIGH): a worker paused at its --max-requests limit and then
// held past it (a reload's new workers starting; the reload then failed) took only what
// its next look found: when that found nothing (the other worker had taken it), it
// never watched its listeners again. It took no more requests, and its stop waited
// out --graceful-timeout (here 20 s).
#[test]
fn workers_held_past_their_limit_by_a_failed_reload_serve_on_and_stop_at_once() {
    let dir = tempdir();
    let flag = dir.path().join("fail-now");
    // Once `flag` exists, a startup fails a second in (the reload's new workers, and
    // the successors asked for meanwhile).
    let lifespan = startup_fails_once(&flag).replacen(
        "    if os.path.exists(",
        &format!(
            "    if os.path.exists({flag:?}):\n        await asyncio.sleep(1)\n    if os.path.exists(",
            flag = flag.to_string_lossy()
        ),
        1,
    );
    let (app, _) = asgi_app(dir.path(), &lifespan);
    let p = Spawn::unix(dir.path(), &app)
        .args([
            "--workers",
            "2",
            "--max-requests",
            "25",
            "--graceful-timeout",
            "20",
        ])
        .start();
    assert!(p.wait_log("all 2 workers ready", 20), "{}", p.logs());
    // Two clients for 3 s: the workers recycle, and reach their limits again while
    // their successors fail.
    let until = Instant::now() + Duration::from_secs(3);
    let load: Vec<_> = (0..2)
        .map(|_| {
            let addr = p.addr.clone();
            std::thread::spawn(move || {
                while Instant::now() < until {
                    let _ = raw(&addr, &uwsgi_get("/"));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    std::fs::write(&flag, "").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    p.signal(libc::SIGHUP);
    for t in load {
        t.join().unwrap();
    }
    assert!(p.wait_log("reload failed", 20), "{}", p.logs());
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..6 {
        let asked = Instant::now();
        let (status, body) = p.get("/");
        assert_eq!(status, 200, "request {i}\n{}", p.logs());
        assert!(text(&body).starts_with("old "), "{}", text(&body));
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "answered after {:?}\n{}",
            asked.elapsed(),
            p.logs()
        );
    }
    // Idle, every worker stops at once, not at --graceful-timeout.
    let stopped = Instant::now();
    p.signal(libc::SIGTERM);
    assert!(p.wait_log("all workers exited", 30), "{}", p.logs());
    assert!(
        stopped.elapsed() < Duration::from_secs(8),
        "stopped after {:?}\n{}",
        stopped.elapsed(),
        p.logs()
    );
}

#[test]
fn auto_serves_an_app_that_raises_on_lifespan_without_it() {
    let dir = tempdir();
    let (app, events_file) = asgi_app(
        dir.path(),
        "    raise ValueError(\"this app only handles http\")\n",
    );
    let p = Spawn::unix(dir.path(), &app).start();
    let (status, body) = p.get("/");
    assert_eq!(status, 200);
    // No lifespan ran: the scope has no state.
    assert!(text(&body).starts_with("None "), "{}", text(&body));
    let logs = p.logs();
    let lines = logs
        .lines()
        .filter(|l| l.contains("does not support the ASGI lifespan protocol"))
        .count();
    assert_eq!(lines, 1, "{logs}");
    assert!(
        logs.contains("ValueError: this app only handles http"),
        "{logs}"
    );
    assert!(!logs.contains(" ERROR "), "{logs}");
    assert_eq!(events(&events_file), ["request /", "response /"]);
    // --lifespan on makes the same app fail to start.
    let (status, out) = run_to_exit(
        &Spawn::unix(dir.path(), &app).args(["--lifespan", "on"]),
        dir.path(),
    );
    assert!(!status.success(), "{out}");
    assert!(out.contains("this app only handles http"), "{out}");
}

#[test]
fn a_lifespan_call_that_raises_while_serving_is_logged_at_once_and_requests_go_on() {
    let dir = tempdir();
    let (app, _) = asgi_app(
        dir.path(),
        r#"    await receive()
    scope["state"]["token"] = "from-startup"
    await send({"type": "lifespan.startup.complete"})
    await asyncio.sleep(0.1)
    raise RuntimeError("the pool's keep-alive task died")
"#,
    );
    let mut p = Spawn::unix(dir.path(), &app).start();
    assert!(
        p.wait_log("the pool's keep-alive task died", 10),
        "{}",
        p.logs()
    );
    assert!(
        p.logs().contains("raised while the worker serves"),
        "{}",
        p.logs()
    );
    let (status, body) = p.get("/");
    assert_eq!(status, 200);
    assert!(text(&body).starts_with("from-startup "), "{}", text(&body));
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(30).is_some_and(|s| s.success()), "{}", p.logs());
    // Logged once, when it happened (not again at shutdown).
    assert_eq!(
        p.logs()
            .matches("RuntimeError: the pool's keep-alive task died")
            .count(),
        1,
        "{}",
        p.logs()
    );
}

// regression (probe 347 LOW): a second answer to a phase was taken silently.
#[test]
fn a_second_answer_to_the_startup_raises_in_the_app_and_the_first_stands() {
    let dir = tempdir();
    let (app, log) = asgi_app(
        dir.path(),
        r#"    await receive()
    scope["state"]["token"] = "from-startup"
    await send({"type": "lifespan.startup.complete"})
    try:
        await send({"type": "lifespan.startup.failed", "message": "too late"})
    except RuntimeError as e:
        event("second answer: " + str(e))
    message = await receive()
    event(message["type"])
    await send({"type": "lifespan.shutdown.complete"})
    try:
        await send({"type": "lifespan.shutdown.complete"})
    except RuntimeError as e:
        event("second shutdown answer: " + str(e))
"#,
    );
    let mut p = Spawn::unix(dir.path(), &app).start();
    let (status, body) = p.get("/");
    assert_eq!(status, 200);
    assert!(text(&body).starts_with("from-startup "), "{}", text(&body));
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(30).is_some_and(|s| s.success()), "{}", p.logs());
    let ev = events(&log);
    assert_eq!(
        ev,
        [
            "second answer: lifespan.startup.failed sent after lifespan.startup.complete: \
             the lifespan.startup was already answered",
            "request /",
            "response /",
            "lifespan.shutdown",
            "second shutdown answer: lifespan.shutdown.complete sent after \
             lifespan.shutdown.complete: the lifespan.shutdown was already answered",
        ],
        "{}",
        p.logs()
    );
}

#[test]
fn lifespan_off_never_sends_the_lifespan_scope() {
    let dir = tempdir();
    let (app, events_file) = asgi_app(dir.path(), COMPLETE);
    let mut p = Spawn::unix(dir.path(), &app)
        .args(["--lifespan", "off"])
        .start();
    let (status, body) = p.get("/");
    assert_eq!(status, 200);
    assert!(text(&body).starts_with("None "), "{}", text(&body));
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(30).is_some_and(|s| s.success()), "{}", p.logs());
    assert_eq!(events(&events_file), ["request /", "response /"]);
}

#[test]
fn a_startup_that_does_not_answer_within_the_lifespan_timeout_is_fatal() {
    let dir = tempdir();
    let (app, _) = asgi_app(
        dir.path(),
        "    await receive()\n    await asyncio.sleep(3600)\n",
    );
    let spawn = Spawn::unix(dir.path(), &app).args(["--lifespan-timeout", "0.5"]);
    let (status, out) = run_to_exit(&spawn, dir.path());
    assert!(!status.success(), "{out}");
    assert!(out.contains("within --lifespan-timeout 0.5s"), "{out}");
}

// regression: a startup blocked in a sync call (time.sleep) kept the loop from taking
// --lifespan-timeout: nothing was said until the call returned, and a late
// startup.complete was accepted.
#[test]
fn a_startup_blocking_the_loop_in_a_sync_call_is_fatal_at_the_lifespan_timeout() {
    let dir = tempdir();
    let (app, _) = asgi_app(
        dir.path(),
        "    await receive()\n    __import__('time').sleep(3600)\n    await send({'type': 'lifespan.startup.complete'})\n",
    );
    for workers in ["1", "2"] {
        let spawn =
            Spawn::unix(dir.path(), &app).args(["--lifespan-timeout", "1", "--workers", workers]);
        let (status, out) = run_to_exit(&spawn, dir.path());
        assert!(!status.success(), "--workers {workers}: {out}");
        assert!(
            out.contains("did not finish within --lifespan-timeout 1s, and the event loop could not even cancel it: a sync call blocks the loop"),
            "--workers {workers}: {out}"
        );
    }
}

// regression (hostile): a startup that answered at once but had started a task that
// then blocked the loop (time.sleep) for longer than --lifespan-timeout + 3 s failed
// as a startup blocking in a sync call; the answer was in time.
#[test]
fn a_startup_answered_in_time_stands_when_a_task_it_started_blocks_the_loop_longer() {
    let dir = tempdir();
    let (app, _) = asgi_app(
        dir.path(),
        "    await receive()\n    async def warm():\n        await asyncio.sleep(0)\n        __import__('time').sleep(5)\n    asyncio.get_running_loop().create_task(warm())\n    await send({'type': 'lifespan.startup.complete'})\n    await receive()\n    await send({'type': 'lifespan.shutdown.complete'})\n",
    );
    let mut p = Spawn::unix(dir.path(), &app)
        .args(["--lifespan-timeout", "1"])
        .start();
    assert_eq!(p.get("/").0, 200, "{}", p.logs());
    assert!(
        p.logs()
            .contains("the app answered its lifespan startup in time, but the event loop has been blocked since"),
        "{}",
        p.logs()
    );
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(30).is_some_and(|s| s.success()), "{}", p.logs());
}

// regression (review): with an answer in hand, the worker waited for a loop blocked
// for good without any bound (a first start hung for ever).
#[test]
fn a_startup_answered_in_time_fails_when_a_task_it_started_blocks_the_loop_for_good() {
    let dir = tempdir();
    let (app, _) = asgi_app(
        dir.path(),
        "    await receive()\n    async def stuck():\n        await asyncio.sleep(0)\n        __import__('time').sleep(3600)\n    asyncio.get_running_loop().create_task(stuck())\n    await send({'type': 'lifespan.startup.complete'})\n",
    );
    let spawn = Spawn::unix(dir.path(), &app).args(["--lifespan-timeout", "1"]);
    let (status, out) = run_to_exit(&spawn, dir.path());
    assert!(!status.success(), "{out}");
    assert!(
        out.contains(
            "sent lifespan.startup.complete in time, but the event loop has been blocked since"
        ),
        "{out}"
    );
}

/// Starts an app whose lifespan startup answers at once and leaves a task that blocks
/// the loop in `time.sleep(block)`, with `args`; as [`startup_is_told`], the wrong
/// advice being the one for a startup that has not answered.
fn blocked_after_answer_is_told(
    args: &[&str],
    block: u32,
    said: (&str, u64),
    ready: &str,
    advice: &str,
) {
    let dir = tempdir();
    let (app, _) = asgi_app(
        dir.path(),
        &format!("    await receive()\n    async def warm():\n        await asyncio.sleep(0)\n        __import__('time').sleep({block})\n    asyncio.get_running_loop().create_task(warm())\n    await send({{'type': 'lifespan.startup.complete'}})\n    await receive()\n    await send({{'type': 'lifespan.shutdown.complete'}})\n"),
    );
    startup_is_told(
        dir.path(),
        &app,
        None,
        args,
        said,
        ready,
        advice,
        "has not sent lifespan.startup.complete",
    );
}

// regression: a worker whose app had answered its lifespan startup in time, and whose
// loop a task of that startup then blocked, was said by the master to be "still in the
// app's ASGI lifespan startup ... the app has not sent lifespan.startup.complete".
#[test]
fn a_worker_blocked_after_its_startup_answered_is_said_to_be_blocked_not_unanswered() {
    // The master warns at half --worker-start-timeout (3 s); the worker, whose own
    // bound is --lifespan-timeout + 3 s, then another 3 s, is free at 5 s.
    blocked_after_answer_is_told(
        &["--workers", "2", "--worker-start-timeout", "6", "--lifespan-timeout", "1"],
        5,
        ("worker still not ready after", 30),
        "all 2 workers ready",
        "the app answered its ASGI lifespan startup (lifespan.startup.complete) in time, but its event loop has been blocked since. Does a task the startup started make a sync call",
    );
}

// regression: the same for a single process, whose own warning comes every 30 s.
#[test]
fn a_single_process_blocked_after_its_startup_answered_is_said_to_be_blocked_not_unanswered() {
    blocked_after_answer_is_told(
        &["--lifespan-timeout", "30"],
        32,
        ("not serving yet after 30 s", 50),
        "ready",
        "the app answered its ASGI lifespan startup (lifespan.startup.complete) in time, but its event loop has been blocked since",
    );
}

/// Starts `app` (whose startup waits for `gate`) with `args` and its log in `dir`; the
/// child and a reader of the log.
fn start_waiting(
    dir: &Path,
    app: &str,
    args: &[&str],
) -> (std::process::Child, impl Fn() -> String) {
    let log = dir.join("log");
    let child = Spawn::unix(dir, app)
        .args(args.iter().copied())
        .log_file(&log)
        .command()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (child, move || {
        std::fs::read_to_string(&log).unwrap_or_default()
    })
}

/// A lifespan whose startup waits until the file `gate` exists.
fn gated_startup(gate: &Path) -> String {
    format!(
        "    await receive()\n    while not os.path.exists({gate:?}):\n        await asyncio.sleep(0.05)\n    await send({{\"type\": \"lifespan.startup.complete\"}})\n    await receive()\n    await send({{\"type\": \"lifespan.shutdown.complete\"}})\n",
        gate = gate.to_string_lossy()
    )
}

/// Starts an app whose lifespan startup waits for a gate, with `args`; as
/// [`startup_is_told`].
fn long_lifespan_startup_is_told(
    args: &[&str],
    said: (&str, u64),
    ready: &str,
    advice: &str,
    wrong_advice: &str,
) {
    let dir = tempdir();
    let gate = dir.path().join("gate");
    let (app, _) = asgi_app(dir.path(), &gated_startup(&gate));
    startup_is_told(
        dir.path(),
        &app,
        Some(&gate),
        args,
        said,
        ready,
        advice,
        wrong_advice,
    );
}

/// Starts `app` with `args`; waits (up to `said.1` s) for the line `said.0`, opens
/// `gate` if any, waits for `ready`, stops postern with SIGTERM and asserts: the line
/// was said with `advice`, not with `wrong_advice`, postern got ready and exited 0.
#[allow(clippy::too_many_arguments)]
fn startup_is_told(
    dir: &Path,
    app: &str,
    gate: Option<&Path>,
    args: &[&str],
    said: (&str, u64),
    ready: &str,
    advice: &str,
    wrong_advice: &str,
) {
    let (mut child, logs) = start_waiting(dir, app, args);
    let (needle, secs) = said;
    let said = wait_until(secs, || logs().contains(needle));
    if let Some(gate) = gate {
        std::fs::write(gate, "").unwrap();
    }
    let ready = wait_until(60, || logs().contains(ready));
    // SAFETY: a signal to the postern started here.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait_child(&mut child, 30);
    let _ = child.kill();
    let out = logs();
    assert!(said, "{out}");
    assert!(out.contains(advice), "{out}");
    assert!(!out.contains(wrong_advice), "{out}");
    assert!(ready, "{out}");
    assert!(status.is_some_and(|s| s.success()), "{out}");
}

// regression: a worker whose ASGI lifespan startup had not completed was said to be
// "still starting (does the app's import hang: a connect without a timeout?)": its
// import was long over, and the advice sent the reader to the wrong place.
#[test]
fn a_worker_long_in_its_lifespan_startup_is_said_to_be_there_not_in_its_import() {
    // The master warns at half --worker-start-timeout (2 s here) at the latest.
    long_lifespan_startup_is_told(
        &["--workers", "2", "--worker-start-timeout", "4"],
        ("worker still in the app's ASGI lifespan startup", 30),
        "all 2 workers ready",
        "the app has not sent lifespan.startup.complete. Does a startup handler wait for something (a database or service connect without a timeout) or never return? The worker exits at --lifespan-timeout",
        "import hang",
    );
}

// regression: a single process whose ASGI lifespan startup had not completed after
// 30 s asked whether "a server started at module level (app.run())" held it: advice
// for an import, not for a startup handler.
#[test]
fn a_single_process_long_in_its_lifespan_startup_gets_advice_for_a_startup_handler() {
    // Said every 30 s while the app starts (a bound against a hang, not a measure).
    long_lifespan_startup_is_told(
        &[],
        ("still in the app's ASGI lifespan startup after 30 s", 50),
        "ready",
        "the app has not sent lifespan.startup.complete. Does a startup handler wait for something (a database or service connect without a timeout) or never return? It is given up at --lifespan-timeout; a SIGTERM or Ctrl-C meanwhile is acted on once it ends",
        "app.run()",
    );
}

// regression (probe 381): a lifespan shutdown that catches its cancellation and goes on
// held the stop for the rest of --graceful-timeout (30 s), counted among the tasks the
// app left running, where the README gives it 1 s to handle its cancellation.
#[test]
fn a_shutdown_that_swallows_its_cancellation_holds_the_stop_one_second_only() {
    let dir = tempdir();
    let (app, events_file) = asgi_app(
        dir.path(),
        r#"    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            event("shutdown")
            while True:
                try:
                    await asyncio.sleep(100)
                except asyncio.CancelledError:
                    event("cancel swallowed")
"#,
    );
    let mut p = Spawn::unix(dir.path(), &app)
        .args(["--lifespan-timeout", "1", "--graceful-timeout", "30"])
        .start();
    assert_eq!(p.get("/").0, 200);
    let asked = Instant::now();
    p.signal(libc::SIGTERM);
    let status = p.wait_exit(40).expect("postern stopped");
    let took = asked.elapsed();
    let logs = p.logs();
    assert!(took < Duration::from_secs(10), "{took:?}\n{logs}");
    assert!(status.success(), "{status}\n{logs}");
    assert!(
        logs.contains("it did not end within 1s either (it catches the cancellation?): the stop goes on without it"),
        "{logs}"
    );
    assert!(
        !logs.contains("tasks the app left running did not end within"),
        "{logs}"
    );
    assert!(!logs.contains("Task was destroyed"), "{logs}");
    assert!(events(&events_file).contains(&"cancel swallowed".to_owned()));
}

// regression (review 384): the same with an `@asynccontextmanager` lifespan (Starlette's
// and FastAPI's shape): closing its async generator at the stop failed ("already
// running", the task left behind holds it) and logged an ERROR line besides the WARN.
#[test]
fn a_stubborn_context_manager_lifespan_left_behind_logs_no_error() {
    let dir = tempdir();
    let app = app_file(
        dir.path(),
        "cm_app.py",
        r#"import asyncio, contextlib

@contextlib.asynccontextmanager
async def lifespan():
    yield
    while True:
        try:
            await asyncio.sleep(100)
        except asyncio.CancelledError:
            pass

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        async with lifespan():
            await send({"type": "lifespan.startup.complete"})
            await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
"#,
    );
    let mut p = Spawn::unix(dir.path(), &format!("{app}:app"))
        .args(["--lifespan-timeout", "1"])
        .start();
    assert_eq!(p.get("/").0, 200);
    p.signal(libc::SIGTERM);
    let status = p.wait_exit(20).expect("postern stopped");
    let logs = p.logs();
    assert!(status.success(), "{status}\n{logs}");
    assert!(logs.contains("the stop goes on without it"), "{logs}");
    assert!(!logs.contains("ERROR"), "{logs}");
}
