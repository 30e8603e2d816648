//! The worker's Python stack dumps (`--slow-log`, `--timeout`) are events of postern's
//! log: in the log file when there is one, one JSON object with `--log-format json`,
//! and (ASGI) before the tasks' stacks that the loop logs after them.

use std::time::{Duration, Instant};

use protocol_tests::harness::{tempdir, testapp, wait_file, Spawn};

/// The line of testapp.py that sleeps for `/sleep`.
fn sleep_line() -> usize {
    std::fs::read_to_string(testapp())
        .unwrap()
        .lines()
        .position(|l| l.contains("time.sleep(float(q.get(\"s\", 1)))"))
        .unwrap()
        + 1
}

// regression: faulthandler wrote the dump straight to stderr: with --log-file it was
// not in the log at all, and in JSON logs it was raw text between the JSON lines.
#[test]
fn a_slow_request_dump_is_one_json_event_in_the_log_file() {
    let dir = tempdir();
    let log = dir.path().join("postern.log");
    let p = Spawn::tcp(dir.path(), &testapp())
        .args(["--workers", "1", "--slow-log", "1", "--log-format", "json"])
        .log_file(&log)
        .start();
    assert!(p.wait_log("all 1 workers ready", 10), "{}", p.logs());
    assert_eq!(p.get("/sleep?s=2"), (200, b"slept\n".to_vec()));
    let wanted = format!("line {} in application", sleep_line());
    let deadline = Instant::now() + Duration::from_secs(5);
    let dump = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        let events: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        let found = events.into_iter().find(|e| {
            e["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("Python stacks of this worker's threads"))
        });
        if let Some(found) = found {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "no dump in the log file:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let message = dump["fields"]["message"].as_str().unwrap();
    assert!(message.contains(&wanted), "{message}");
    assert!(message.contains("testapp.py"), "{message}");
    assert_eq!(dump["level"], "WARN");
    // Nothing of the dump outside the log.
    let out: String = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("postern-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(!out.contains("most recent call first"), "{out}");
}

const BLOCKING_ASGI: &str = r#"
import os, time

DIR = os.environ["ASGI_TEST_DIR"]

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/block":
        open(os.path.join(DIR, "block"), "a").close()
        time.sleep(30)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})
"#;

// The ASGI worker logs its tasks' stacks after the threads' stacks, whose loop
// thread's stack they explain ("the python-asgi thread in the dump above").
#[test]
fn an_asgi_dump_logs_the_threads_then_the_tasks() {
    let dir = tempdir();
    let p = Spawn::asgi_tcp(dir.path(), "stack_dumps_app", BLOCKING_ASGI)
        .env("ASGI_TEST_DIR", dir.path().to_str().unwrap())
        .args(["--loop", "asyncio", "--master", "--timeout", "2"])
        .start();
    assert!(p.wait_log("ready", 10), "{}", p.logs());
    let addr = p.addr.clone();
    let blocker = std::thread::spawn(move || {
        protocol_tests::harness::raw(
            &addr,
            &protocol_tests::harness::uwsgi_packet(&[
                ("REQUEST_METHOD", "GET"),
                ("PATH_INFO", "/block"),
            ]),
        )
    });
    assert!(wait_file(&dir.path().join("block"), 10));
    assert!(
        p.wait_log("the event loop is blocked by this task", 15),
        "{}",
        p.logs()
    );
    let _ = blocker.join();
    let logs = p.logs();
    let threads = logs
        .find("Python stacks of this worker's threads")
        .unwrap_or_else(|| panic!("no threads' dump:\n{logs}"));
    let tasks = logs.find("the event loop is blocked by this task").unwrap();
    assert!(threads < tasks, "{logs}");
    assert!(
        logs[threads..tasks].contains("time.sleep(30)") || logs[threads..tasks].contains("in app"),
        "{logs}"
    );
}

/// An app whose import starts 100 threads, each waiting 100 frames deep in a module
/// under a long directory name: a dump of over 1 MiB, more than the dump pipe holds.
const DEEP_THREADS: &str = r#"
import threading, time

def deep(n):
    if n:
        return deep(n - 1)
    time.sleep(3600)

for _ in range(100):
    threading.Thread(target=deep, args=(95,), daemon=True).start()

def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok\n"]
"#;

/// The thread of `pid` named `name` (`/proc/PID/task/*/comm`).
fn thread_named(pid: i32, name: &str) -> Option<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .find(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .and_then(|t| t.file_name().to_str()?.parse().ok())
}

// regression (review 359): a SIGUSR2 the kernel gave the thread that reads the dump
// pipe wrote the dump into the pipe only that thread drains: past the pipe's size it
// waited for good, and every later dump of the worker was lost (faulthandler's guard
// stayed set). Here the signal is sent to that thread itself, then to the worker: the
// second dump is logged.
#[test]
fn a_dump_signal_on_the_pipe_reader_thread_does_not_hang_later_dumps() {
    let dir = tempdir();
    let long = dir.path().join("d".repeat(200));
    std::fs::create_dir(&long).unwrap();
    let app = long.join("deep_threads_app.py");
    std::fs::write(&app, DEEP_THREADS).unwrap();
    let p = Spawn::unix(dir.path(), app.to_str().unwrap())
        .args(["--master", "--workers", "1"])
        .start();
    assert!(p.wait_log("all 1 workers ready", 20), "{}", p.logs());
    let worker = p.ready_worker_pids()[0];
    let reader = thread_named(worker, "postern-stacks").expect("the dump reader thread");
    // SAFETY: tgkill(2) on a thread of a worker this test started.
    unsafe {
        libc::syscall(libc::SYS_tgkill, worker, reader, libc::SIGUSR2);
    }
    std::thread::sleep(Duration::from_millis(1000));
    // SAFETY: kill(2) on a worker this test started.
    unsafe {
        libc::kill(worker, libc::SIGUSR2);
    }
    assert!(
        p.wait_log("Python stacks of this worker's threads", 20),
        "{}",
        p.logs()
    );
}
