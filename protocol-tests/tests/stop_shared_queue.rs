//! A whole-server stop with connections waiting in the listen queue the workers share:
//! each worker takes only what it can start, so the requests waiting go to the worker
//! that frees first, not to whichever worker drained the queue first while busy.

use std::io::{Read, Write};
use std::path::Path;

use protocol_tests::harness::*;

/// A WSGI app: marks `mark` (when given) as its request starts, waits until the file
/// `gate` exists (when given; bounded), answers its pid.
const WSGI_APP: &str = "import os, time\nfrom urllib.parse import parse_qs\n\ndef application(environ, start_response):\n    q = parse_qs(environ.get('QUERY_STRING', ''))\n    if 'mark' in q:\n        open(q['mark'][0], 'w').close()\n    if 'gate' in q:\n        for _ in range(6000):\n            if os.path.exists(q['gate'][0]):\n                break\n            time.sleep(0.01)\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [str(os.getpid()).encode()]\n";

/// The same as an ASGI app.
const ASGI_APP: &str = "import asyncio, os\nfrom urllib.parse import parse_qs\n\nasync def app(scope, receive, send):\n    if scope['type'] != 'http':\n        return\n    q = parse_qs(scope['query_string'].decode())\n    if 'mark' in q:\n        open(q['mark'][0], 'w').close()\n    if 'gate' in q:\n        for _ in range(6000):\n            if os.path.exists(q['gate'][0]):\n                break\n            await asyncio.sleep(0.01)\n    await send({'type': 'http.response.start', 'status': 200, 'headers': [(b'content-type', b'text/plain')]})\n    await send({'type': 'http.response.body', 'body': str(os.getpid()).encode()})\n";

/// A uwsgi GET of `/?{query}` to `addr` (Unix or TCP), connected and sent now (so it
/// takes its place in the listen queue), answered on a thread of its own.
fn send_to(addr: &Addr, query: &str) -> std::thread::JoinHandle<Vec<u8>> {
    fn sent<S: Read + Write + Send + 'static>(
        mut s: S,
        query: &str,
    ) -> std::thread::JoinHandle<Vec<u8>> {
        s.write_all(&uwsgi_packet(&[
            ("REQUEST_METHOD", "GET"),
            ("PATH_INFO", "/"),
            ("QUERY_STRING", query),
        ]))
        .unwrap();
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            out
        })
    }
    let minute = Some(std::time::Duration::from_secs(60));
    match addr {
        Addr::Unix(sock) => {
            let s = std::os::unix::net::UnixStream::connect(sock).unwrap();
            s.set_read_timeout(minute).unwrap();
            sent(s, query)
        }
        Addr::Tcp(port) => {
            let s = std::net::TcpStream::connect(("127.0.0.1", *port)).unwrap();
            s.set_read_timeout(minute).unwrap();
            sent(s, query)
        }
    }
}

/// [`send_to`] over the Unix socket `sock`.
fn send(sock: &Path, query: &str) -> std::thread::JoinHandle<Vec<u8>> {
    send_to(&Addr::Unix(sock.to_owned()), query)
}

/// The pid a 200 answer carries.
fn pid_of(answer: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(answer);
    if !text.starts_with("HTTP/1.1 200") {
        return None;
    }
    text.split("\r\n\r\n").nth(1).map(str::to_owned)
}

fn stop_serves_the_queue_in_the_worker_that_frees(asgi: bool) {
    // Several rounds: which worker drained the whole queue first was a race (one of
    // four got it right by chance).
    for round in 0..2 {
        let dir = tempdir();
        let spawn = if asgi {
            Spawn::asgi_unix(dir.path(), "gates", ASGI_APP).args(["--max-concurrency", "1"])
        } else {
            let app = dir.path().join("gates.py");
            std::fs::write(&app, WSGI_APP).unwrap();
            Spawn::unix(dir.path(), &app.to_string_lossy()).args(["--threads", "1"])
        };
        let mut p = spawn
            .args(["--workers", "4", "--graceful-timeout", "60"])
            .start();
        assert!(p.wait_log("all 4 workers ready", 30), "{}", p.logs());
        let Addr::Unix(sock) = p.addr.clone() else {
            unreachable!()
        };
        let gate = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
        // Each worker in a request of its own: one that the test lets go first, three
        // that stay until the waiting requests are answered.
        let first = send(
            &sock,
            &format!("gate={}&mark={}", gate("first-gate"), gate("first-in")),
        );
        assert!(wait_file(&dir.path().join("first-in"), 20), "{}", p.logs());
        let busy: Vec<_> = (0..3)
            .map(|i| {
                let b = send(
                    &sock,
                    &format!(
                        "gate={}&mark={}",
                        gate("busy-gate"),
                        gate(&format!("busy-{i}"))
                    ),
                );
                assert!(
                    wait_file(&dir.path().join(format!("busy-{i}")), 20),
                    "{}",
                    p.logs()
                );
                b
            })
            .collect();
        // Every worker is busy: these wait in the listen queue.
        let waiting: Vec<_> = (0..4).map(|_| send(&sock, "")).collect();
        p.signal(libc::SIGTERM);
        assert!(
            p.wait_log_count("stopping: no new connections", 4, 20),
            "round {round}: {}",
            p.logs()
        );
        // The stop has begun in every worker; one frees.
        std::fs::write(dir.path().join("first-gate"), "").unwrap();
        let first_pid = pid_of(&first.join().unwrap());
        assert!(first_pid.is_some(), "round {round}: {}", p.logs());
        // The waiting requests are served by the worker that is free, while the three
        // others still wait for their gate.
        let served: Vec<_> = waiting
            .into_iter()
            .map(|w| pid_of(&w.join().unwrap()))
            .collect();
        std::fs::write(dir.path().join("busy-gate"), "").unwrap();
        for b in busy {
            assert!(
                pid_of(&b.join().unwrap()).is_some(),
                "round {round}: {}",
                p.logs()
            );
        }
        assert!(
            served.iter().all(|s| *s == first_pid),
            "round {round}: the waiting requests were not all served by the free worker {first_pid:?}: {served:?}\n{}",
            p.logs()
        );
        let status = p.wait_exit(30);
        assert!(
            status.is_some_and(|s| s.success()),
            "round {round}: {status:?}\n{}",
            p.logs()
        );
    }
}

// regression (probe 317): at a stop the first worker to drain the listen queue took all
// of it, busy or not, while idle siblings exited; what it took waited behind its
// running request (and was cut off at --graceful-timeout: 502s).
#[test]
fn at_a_stop_the_listen_queue_goes_to_the_wsgi_worker_that_is_free() {
    stop_serves_the_queue_in_the_worker_that_frees(false);
}

#[test]
fn at_a_stop_the_listen_queue_goes_to_the_asgi_worker_that_is_free() {
    stop_serves_the_queue_in_the_worker_that_frees(true);
}

// regression (own review of the stop sharing): a worker whose accept failed for want of
// descriptors took that for an empty listen queue and shut the listener, resetting the
// connections that waited in it for its sibling (3 of 5 reset).
fn out_of_descriptors_at_a_stop(tcp: bool) {
    let dir = tempdir();
    let app = dir.path().join("gates.py");
    // As WSGI_APP, with its pid in the mark.
    let source = WSGI_APP.replace(
        "open(q['mark'][0], 'w').close()",
        "open(q['mark'][0], 'w').write(str(os.getpid()))",
    );
    assert_ne!(source, WSGI_APP);
    std::fs::write(&app, source).unwrap();
    let spawn = if tcp {
        Spawn::tcp(dir.path(), &app.to_string_lossy())
    } else {
        Spawn::unix(dir.path(), &app.to_string_lossy())
    };
    let mut p = spawn
        .args([
            "--workers",
            "2",
            "--threads",
            "1",
            "--graceful-timeout",
            "30",
        ])
        .start();
    assert!(p.wait_log("all 2 workers ready", 30), "{}", p.logs());
    let gate = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let send_any = |query: &str| send_to(&p.addr, query);
    let long = send_any(&format!("gate={}&mark={}", gate("gate"), gate("in")));
    assert!(wait_file(&dir.path().join("in"), 20), "{}", p.logs());
    // The idle worker may open no descriptor more (a limit below its open ones): it
    // cannot accept. The busy one can.
    let busy_pid = || {
        std::fs::read_to_string(dir.path().join("in"))
            .ok()?
            .parse()
            .ok()
    };
    assert!(wait_until(20, || busy_pid().is_some()), "{}", p.logs());
    let busy: i32 = busy_pid().unwrap();
    let workers = children(p.pid());
    assert!(workers.contains(&busy), "{busy} {workers:?}");
    let idle: Vec<_> = workers.iter().filter(|w| **w != busy).collect();
    assert_eq!(idle.len(), 1, "{workers:?}");
    let st = std::process::Command::new("prlimit")
        .args(["--pid", &idle[0].to_string(), "--nofile=3:3"])
        .status()
        .expect("prlimit (util-linux)");
    assert!(st.success());
    let waiting: Vec<_> = (0..5).map(|_| send_any("")).collect();
    assert!(p.wait_log("out of file descriptors", 20), "{}", p.logs());
    p.signal(libc::SIGTERM);
    let signalled = std::time::Instant::now();
    assert!(
        p.wait_log_count("stopping: no new connections", 2, 20),
        "{}",
        p.logs()
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    std::fs::write(dir.path().join("gate"), "").unwrap();
    assert!(pid_of(&long.join().unwrap()).is_some(), "{}", p.logs());
    let answered = waiting
        .into_iter()
        .map(|w| w.join().unwrap())
        .filter(|a| pid_of(a).is_some())
        .count();
    assert_eq!(answered, 5, "{}", p.logs());
    let status = p.wait_exit(30);
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        p.logs()
    );
    // Not --graceful-timeout (30 s): the starved worker leaves at once.
    // regression (review 324): over a Unix listener it looked until the deadline.
    assert!(
        signalled.elapsed() < std::time::Duration::from_secs(10),
        "{:?}\n{}",
        signalled.elapsed(),
        p.logs()
    );
}

#[test]
fn a_stopping_worker_out_of_descriptors_leaves_the_tcp_queue_to_its_sibling() {
    out_of_descriptors_at_a_stop(true);
}

#[test]
fn a_stopping_worker_out_of_descriptors_leaves_the_unix_queue_to_its_sibling() {
    out_of_descriptors_at_a_stop(false);
}
