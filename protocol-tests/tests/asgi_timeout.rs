//! `--timeout` on an ASGI worker (the real binary, raw uwsgi over TCP): a worker
//! condemned for one stuck task names the others the kill cuts off, whatever its
//! `--graceful-timeout`; an event loop blocked with no request in flight (a blocking
//! call in a task the app started) is caught by the loop's heartbeat, named where it
//! blocks, and its worker replaced, while the other workers serve on.

use std::path::Path;
use std::time::{Duration, Instant};

use protocol_tests::harness::{
    assert_cut_named_once, log_line, log_request_ids, parse_http, raw, tempdir, uwsgi_get,
    uwsgi_get_with, wait_file, wait_until, Addr, AsgiApp, Postern, Spawn, ASGI_TEST_PRELUDE,
    WRAP_TASKS,
};

/// The app's `http` part ([`ASGI_TEST_PRELUDE`] before it).
const HTTP: &str = r#"
path = scope["path"]
if path == "/stuck":
    mark("stuck-" + scope["query_string"].decode())
    await asyncio.sleep(3600)
elif path == "/bg-block":
    # Answers, then a task the app leaves running blocks the loop: no request is
    # in flight while it does.
    seconds = float(scope["query_string"] or 30)
    async def bg():
        mark("blocking")
        time.sleep(seconds)
    asyncio.get_running_loop().create_task(bg())
    await answer(send, str(os.getpid()).encode())
elif path == "/block":
    mark("block")
    time.sleep(60)
elif path == "/stream":
    # A response under way for 60 s: a chunk each 50 ms, the mark after the first.
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    for i in range(1200):
        await send({"type": "http.response.body", "body": b"chunk %d\n" % i, "more_body": True})
        if i == 0:
            mark("stream-" + scope["query_string"].decode())
        await asyncio.sleep(0.05)
    await send({"type": "http.response.body", "body": b""})
elif path == "/big":
    # 8 MiB in 64 KiB parts: to a reader that reads nothing, a write waits.
    mark("big")
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    for i in range(128):
        await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
elif path == "/pid":
    await answer(send, str(os.getpid()).encode())
elif path == "/wrap-factory":
    wrap_tasks()
    await answer(send, b"wrapped")
else:
    await answer(send, b"hello")
"#;

fn serve(dir: &Path, extra: &[&str]) -> Postern {
    let app = AsgiApp::new(&format!("{ASGI_TEST_PRELUDE}{WRAP_TASKS}")).http(HTTP);
    Spawn::asgi_tcp(dir, "asgi_timeout_app", &app)
        .asgi_test_dir(dir)
        .args(extra.iter().copied())
        .start()
}

fn get(addr: &Addr, path: &str) -> Vec<u8> {
    raw(addr, &uwsgi_get(path))
}

/// Sends `path` with `id` as the front server's request id on a thread (its answer is
/// the thread's result).
fn send(addr: &Addr, path: &str, id: &str) -> std::thread::JoinHandle<Vec<u8>> {
    let pkt = uwsgi_get_with(path, &[("HTTP_X_REQUEST_ID", id)]);
    let addr = addr.clone();
    std::thread::spawn(move || raw(&addr, &pkt))
}

/// The pid of the worker that answers `/pid`.
fn pid(addr: &Addr) -> Option<String> {
    parse_http(&get(addr, "/pid"))
        .filter(|r| r.status == 200)
        .map(|r| r.text())
}

// regression: a worker condemned for --timeout begins its stop with the stack dump, and
// with --graceful-timeout under the dump's 500 ms its own deadline came first: an ASGI
// worker cancelled its tasks (answering them 500 itself) and cleared their lines, so
// the master's log named only the task that passed the limit, never the others the
// timeout cut off. (With --graceful-timeout 1 the master's kill, 500 ms after the
// dump began, always came first.)
#[test]
fn a_condemned_asgi_worker_names_its_other_tasks_once_whatever_its_graceful_timeout() {
    let dir = tempdir();
    let p = serve(
        dir.path(),
        &["--master", "--timeout", "2", "--graceful-timeout", "0.2"],
    );
    assert!(p.wait_serving("/hello"), "{}", p.logs());
    let before = pid(&p.addr).expect("a worker's pid");
    let first = send(&p.addr, "/stuck?first", "req-first");
    assert!(
        wait_file(&dir.path().join("stuck-first"), 10),
        "{}",
        p.logs()
    );
    // A second stuck task, well inside --timeout when the first passes it.
    std::thread::sleep(Duration::from_millis(500));
    let second = send(&p.addr, "/stuck?second", "req-second");
    assert!(
        wait_file(&dir.path().join("stuck-second"), 10),
        "{}",
        p.logs()
    );
    assert!(p.wait_timeout_exit(15), "{}", p.logs());
    let _ = (first.join(), second.join());
    let logs = p.logs();
    let passed = log_line(&logs, "request passed --timeout");
    assert!(
        passed.contains("request=GET /stuck") && passed.contains("request_id=req-first"),
        "{logs}"
    );
    // Named once, by its loop as the kill comes (past --timeout itself by then, on a
    // slow machine: answered 504), or by the master if the loop did not get to it.
    let cut: Vec<&str> = logs
        .lines()
        .filter(|l| {
            l.contains("request cut off: its worker is killed for another request's --timeout")
                || l.contains("cut off by another request's --timeout")
                || l.contains("cut off at its own --timeout")
        })
        .filter(|l| l.contains("request_id=req-second"))
        .collect();
    assert_eq!(cut.len(), 1, "{logs}");
    assert!(cut[0].contains("/stuck?second"), "{logs}");
    assert!(
        log_line(&logs, "cut off at its own --timeout").contains("request_id=req-first"),
        "{logs}"
    );
    // The worker did not cut them off itself first.
    assert!(!logs.contains("cut off at --graceful-timeout"), "{logs}");
    assert!(logs.contains("cause=\"timeout\""), "{logs}");
    // Replaced: the next request is served, by another worker.
    assert!(p.wait_serving("/hello"), "{}", p.logs());
    let after = pid(&p.addr).expect("the replacement's pid");
    assert_ne!(before, after, "{}", p.logs());
}

// regression (probe 355): a worker condemned for one task's --timeout was killed with
// its other tasks named from its scoreboard, which shows 16: of 40 streams, 25 were cut
// off with no line and no count. Its loop now cuts them off as the kill comes, each
// named once with its access line (a stream: incomplete), and the task past --timeout
// is answered 504.
#[test]
fn every_task_a_timeout_kill_cuts_off_is_named_and_the_one_past_it_answered_504() {
    const STREAMS: usize = 24;
    let dir = tempdir();
    let p = serve(
        dir.path(),
        &["--master", "--timeout", "4", "--graceful-timeout", "30"],
    );
    assert!(p.wait_serving("/hello"), "{}", p.logs());
    let stuck = send(&p.addr, "/stuck?first", "req-first");
    assert!(
        wait_file(&dir.path().join("stuck-first"), 10),
        "{}",
        p.logs()
    );
    // Inside --timeout when the stuck task passes it (2 s later).
    std::thread::sleep(Duration::from_millis(2000));
    let streams: Vec<_> = (0..STREAMS)
        .map(|i| send(&p.addr, &format!("/stream?{i}"), &format!("stream-{i}")))
        .collect();
    for i in 0..STREAMS {
        assert!(
            wait_file(&dir.path().join(format!("stream-{i}")), 10),
            "{}",
            p.logs()
        );
    }
    assert!(p.wait_timeout_exit(20), "{}", p.logs());
    let answer = stuck.join().unwrap();
    for s in streams {
        let _ = s.join();
    }
    let logs = p.logs();
    let answer = parse_http(&answer);
    assert_eq!(answer.map(|r| r.status), Some(504), "{logs}");
    assert!(
        log_line(&logs, "cut off at its own --timeout (4s)").contains("request_id=req-first"),
        "{logs}"
    );
    let by_worker = log_request_ids(
        &logs,
        "cut off by another request's --timeout (its worker is replaced)",
    );
    let by_master = log_request_ids(
        &logs,
        "request cut off: its worker is killed for another request's --timeout",
    );
    assert_cut_named_once(&logs, &by_worker, &by_master, STREAMS);
    assert!(
        by_worker
            .iter()
            .chain(&by_master)
            .all(|i| i.starts_with("stream-")),
        "{logs}"
    );
    // Replaced: the next request is served.
    assert!(p.wait_serving("/hello"), "{}", p.logs());
}

// A task that blocks the loop in a sync call past --timeout: the loop cannot cut the
// tasks off, so the master names them from the scoreboard when the worker exits or is
// killed, each once (but the one it condemned the worker for, named then).
#[test]
fn a_loop_blocked_past_timeout_leaves_its_other_tasks_to_the_master_to_name() {
    let dir = tempdir();
    let p = serve(
        dir.path(),
        &["--master", "--timeout", "3", "--graceful-timeout", "30"],
    );
    assert!(p.wait_serving("/hello"), "{}", p.logs());
    let streams: Vec<_> = (0..3)
        .map(|i| send(&p.addr, &format!("/stream?{i}"), &format!("stream-{i}")))
        .collect();
    for i in 0..3 {
        assert!(
            wait_file(&dir.path().join(format!("stream-{i}")), 10),
            "{}",
            p.logs()
        );
    }
    let block = send(&p.addr, "/block", "req-block");
    assert!(wait_file(&dir.path().join("block"), 10), "{}", p.logs());
    assert!(p.wait_timeout_exit(20), "{}", p.logs());
    let _ = block.join();
    for s in streams {
        let _ = s.join();
    }
    let logs = p.logs();
    // The first past --timeout (a stream, held by the blocked loop too) condemned the
    // worker; the others are named by the master, each once.
    let passed = log_request_ids(&logs, "request passed --timeout");
    let mut named = log_request_ids(&logs, "request cut off: its worker is killed for");
    assert_eq!((passed.len(), named.len()), (1, 3), "{logs}");
    named.extend(passed);
    named.sort();
    assert_eq!(
        named,
        ["req-block", "stream-0", "stream-1", "stream-2"],
        "{logs}"
    );
    assert!(
        !logs.contains("postern cancelled this request's task"),
        "{logs}"
    );
}

// A request that blocks the loop past --timeout is named by its method and path in the
// worker's dump, also when a task factory wraps each task's coroutine (sentry_sdk's).
// regression: the dump looked for the request's wrapper as the task's own coroutine
// only, and named a wrapped one `postern-request (factory.<locals>.wrapped)`.
#[test]
fn the_dump_names_a_request_blocking_the_loop_also_through_a_wrapping_task_factory() {
    for wrapped in [false, true] {
        let dir = tempdir();
        let p = serve(
            dir.path(),
            &[
                "--master",
                "--workers",
                "1",
                "--timeout",
                "2",
                "--graceful-timeout",
                "1",
            ],
        );
        assert!(p.wait_serving("/hello"), "{}", p.logs());
        if wrapped {
            assert!(
                get(&p.addr, "/wrap-factory").ends_with(b"wrapped"),
                "{}",
                p.logs()
            );
        }
        let block = send(&p.addr, "/block?x=1", "req-block");
        assert!(wait_file(&dir.path().join("block"), 10), "{}", p.logs());
        assert!(
            p.wait_log("the event loop is blocked by this task", 20),
            "{}",
            p.logs()
        );
        let logs = p.logs();
        // The line's fields follow its message, the stack of several lines.
        let from = logs.find("the event loop is blocked by this task").unwrap();
        assert!(
            logs[from..].contains("task=GET /block?x=1"),
            "wrapped {wrapped}: {logs}"
        );
        assert!(
            logs.contains("Task GET /block?x=1 (most recent call last)"),
            "wrapped {wrapped}: {logs}"
        );
        drop(p);
        let _ = block.join();
    }
}

// regression: a condemned ASGI worker's own deadline came 400 ms after the master's kill
// was due (the end of the stack dump): a master held up longer than that (a loaded
// machine) let the worker cancel its other tasks itself, and its log never named them.
// Here the master is held up (SIGSTOP) for 1 s once the worker's stop has begun (past
// the old 900 ms, within the 3 s the worker now waits, with room to spare on a loaded
// machine): its kill still comes first and names the task it cuts off.
#[test]
fn a_condemned_asgi_worker_waits_for_a_master_late_to_kill_it() {
    let dir = tempdir();
    let p = serve(
        dir.path(),
        &["--master", "--timeout", "2", "--graceful-timeout", "0.2"],
    );
    assert!(p.wait_serving("/hello"), "{}", p.logs());
    let first = send(&p.addr, "/stuck?first", "req-first");
    let second = send(&p.addr, "/stuck?second", "req-second");
    for mark in ["stuck-first", "stuck-second"] {
        assert!(wait_file(&dir.path().join(mark), 10), "{}", p.logs());
    }
    // The master condemned the worker, whose stop has begun.
    assert!(
        p.wait_log("stopping: no new connections", 15),
        "{}",
        p.logs()
    );
    p.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(1000));
    p.signal(libc::SIGCONT);
    assert!(p.wait_timeout_exit(15), "{}", p.logs());
    let _ = (first.join(), second.join());
    let logs = p.logs();
    // Which of the two passed --timeout first is the master's to see; the other is cut.
    let said = |what: &str| -> Vec<String> {
        logs.lines()
            .filter(|l| l.contains(what))
            .map(|l| {
                let id = l.split("request_id=").nth(1).unwrap_or("");
                id.split(' ').next().unwrap_or("").to_owned()
            })
            .collect()
    };
    let mut both = said("request passed --timeout");
    assert_eq!(both.len(), 1, "{logs}");
    // Both are past --timeout by the kill (the master was held up): the loop cuts
    // each off, answered 504, named once.
    let mut cut = said("cut off at its own --timeout");
    cut.sort();
    assert_eq!(cut, ["req-first", "req-second"], "{logs}");
    assert!(
        !logs.contains("request cut off: its worker is killed"),
        "{logs}"
    );
    both.extend(said("cut off by another request's --timeout"));
    assert_eq!(both.len(), 1, "{logs}");
    assert!(!logs.contains("cut off at --graceful-timeout"), "{logs}");
}

// regression: a task the app left running that blocks the event loop (time.sleep in a
// coroutine) with no request in flight made the worker accept nothing until the call
// returned, and --timeout never fired: no request was past its deadline. The loop's
// heartbeat catches it; the other worker serves meanwhile.
#[test]
fn an_event_loop_blocked_with_no_request_in_flight_is_caught_and_replaced() {
    let dir = tempdir();
    let p = serve(dir.path(), &["--workers", "2", "--timeout", "2"]);
    assert!(p.wait_serving("/hello"), "{}", p.logs());
    let blocked = parse_http(&get(&p.addr, "/bg-block?30"))
        .map(|r| r.text())
        .unwrap_or_else(|| panic!("{}", p.logs()));
    assert!(wait_file(&dir.path().join("blocking"), 10), "{}", p.logs());
    // Requests sent while the loop is blocked wait in the listen queue for the worker
    // that serves, not in the blocked one: each is answered at once.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let asked = Instant::now();
        let answer = pid(&p.addr);
        assert!(
            answer.as_ref().is_some_and(|a| *a != blocked),
            "{answer:?} (blocked: {blocked})\n{}",
            p.logs()
        );
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "{:?}\n{}",
            asked.elapsed(),
            p.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(p.wait_log("event loop blocked for", 15), "{}", p.logs());
    assert!(p.wait_timeout_exit(10), "{}", p.logs());
    let logs = p.logs();
    let master = logs
        .lines()
        .find(|l| l.contains("ERROR") && l.contains("past --timeout 2s (it has not ticked since)"))
        .unwrap_or_else(|| panic!("{logs}"));
    assert!(master.contains(&format!("pid={blocked}")), "{logs}");
    // The worker names where its loop is stuck: the app's line that blocks.
    let named = logs
        .lines()
        .find(|l| l.contains("ERROR") && l.contains("replacing the worker. No request was past"))
        .unwrap_or_else(|| panic!("{logs}"));
    assert!(
        named.contains("asgi_timeout_app.py:") && named.contains(" bg); replacing the worker"),
        "{logs}"
    );
    assert!(logs.contains("time.sleep(seconds)"), "{logs}");
    assert!(logs.contains("cause=\"timeout\""), "{logs}");
    // It blocked for at least --timeout, and is said to.
    let secs: f64 = master
        .split("event loop blocked for ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{master}"));
    assert!(secs >= 2.0, "{master}");
    // Replaced: both workers serve again, the blocked one gone.
    assert!(
        wait_until(10, || p.logs().matches("worker ready").count() >= 3),
        "{}",
        p.logs()
    );
    for _ in 0..6 {
        assert_ne!(
            pid(&p.addr).as_deref(),
            Some(blocked.as_str()),
            "{}",
            p.logs()
        );
    }
}

// Without --timeout the loop has no heartbeat: a loop blocked for a while is left to
// end its call, and the worker serves on.
#[test]
fn without_timeout_a_blocked_loop_is_left_alone() {
    let dir = tempdir();
    let p = serve(dir.path(), &["--master"]);
    assert!(p.wait_serving("/hello"), "{}", p.logs());
    let blocked = parse_http(&get(&p.addr, "/bg-block?3"))
        .map(|r| r.text())
        .unwrap_or_else(|| panic!("{}", p.logs()));
    assert!(wait_file(&dir.path().join("blocking"), 10), "{}", p.logs());
    // The one worker answers once the call returns.
    let asked = Instant::now();
    assert_eq!(pid(&p.addr), Some(blocked), "{}", p.logs());
    assert!(asked.elapsed() > Duration::from_secs(1), "{}", p.logs());
    let logs = p.logs();
    assert!(!logs.contains("event loop blocked"), "{logs}");
    assert!(!logs.contains("SIGKILL"), "{logs}");
}

// regression (review 357): a response the --timeout kill cut off while a write of it
// waited on an executor thread (FastCGI, a front server that reads nothing) kept its
// scoreboard line: named by the loop as it cut it, and again by the master at the
// worker's exit.
#[test]
fn a_response_cut_while_its_write_waits_is_named_once() {
    use protocol_tests::harness::fcgi;
    use std::io::Write;
    let dir = tempdir();
    let app = AsgiApp::new(ASGI_TEST_PRELUDE).http(HTTP);
    let p = Spawn::asgi_unix(dir.path(), "asgi_timeout_app", &app)
        .asgi_test_dir(dir.path())
        .protocol("fastcgi")
        .args(["--master", "--workers", "1", "--timeout", "3"])
        .args(["--graceful-timeout", "30"])
        .start();
    assert!(p.wait_log("all 1 workers ready", 20), "{}", p.logs());
    let Addr::Unix(sock) = p.addr.clone() else {
        unreachable!("a Unix socket")
    };
    let request = |path: &str, id: &str| {
        let mut vars: Vec<(String, String)> = fcgi::get_vars(path)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        vars.push(("HTTP_X_REQUEST_ID".into(), id.into()));
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut c = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        c.write_all(&fcgi::request(1, false, &vars, b"")).unwrap();
        c
    };
    let _stuck = request("/stuck?first", "req-first");
    assert!(
        wait_file(&dir.path().join("stuck-first"), 10),
        "{}",
        p.logs()
    );
    std::thread::sleep(Duration::from_millis(1000));
    // Read by nobody: its writes wait.
    let _big = request("/big", "big1");
    assert!(wait_file(&dir.path().join("big"), 10), "{}", p.logs());
    assert!(p.wait_timeout_exit(20), "{}", p.logs());
    // The worker's exit, and the master's reap, are over.
    assert!(p.wait_log("worker ready", 20), "{}", p.logs());
    std::thread::sleep(Duration::from_millis(500));
    let logs = p.logs();
    let named: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("request_id=big1"))
        .filter(|l| l.contains("cut off"))
        .collect();
    assert_eq!(named.len(), 1, "{logs}");
}
