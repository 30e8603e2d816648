//! The master and its workers (`--workers N`): reloads under load through nginx with
//! no failed request, a killed worker replaced, graceful stop, and start-up failures.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol_tests::harness::*;

/// An app whose answer names its code version and its pid.
fn versioned_app(dir: &std::path::Path, version: &str) -> std::path::PathBuf {
    let app = dir.join("vapp.py");
    std::fs::write(
        &app,
        format!(
            "import os, time\nVERSION = {version:?}\n\ndef application(environ, start_response):\n    if environ['PATH_INFO'] == '/slow':\n        time.sleep(0.3)\n    body = ('%s %d' % (VERSION, os.getpid())).encode()\n    start_response('200 OK', [('Content-Type', 'text/plain'), ('Content-Length', str(len(body)))])\n    return [body]\n"
        ),
    )
    .unwrap();
    app
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let r = parse_http(&out)?;
    (r.status == 200).then(|| r.text())
}

#[test]
fn ten_reloads_under_load_drop_nothing() {
    let Some(bin) = nginx_bin() else { return };
    let dir = tempdir();
    let app = versioned_app(dir.path(), "v0");
    let p = Spawn::unix(dir.path(), &app.to_string_lossy())
        .args(["--workers", "2", "--threads", "2"])
        .start();
    let n = Nginx::start(&bin, dir.path(), &uwsgi_location(&p.addr.nginx()));
    let port = n.port;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let path = if i % 4 == 0 { "/slow" } else { "/" };
                    match http_get(port, path) {
                        Some(_) => ok.fetch_add(1, Ordering::Relaxed),
                        None => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    let first = http_get(port, "/").unwrap();
    for round in 1..=10 {
        versioned_app(dir.path(), &format!("v{round}"));
        p.signal(libc::SIGHUP);
        std::thread::sleep(Duration::from_millis(400));
    }
    // Let the last generation take over.
    assert!(p.wait_log("all 2 workers ready", 10));
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let last = http_get(port, "/").unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests; ok={}\nnginx:\n{}",
        ok.load(Ordering::Relaxed),
        n.error_log()
    );
    assert!(ok.load(Ordering::Relaxed) > 100);
    assert!(
        last.starts_with("v10 "),
        "new code after the reloads: {last}"
    );
    assert_ne!(first.split(' ').nth(1), last.split(' ').nth(1), "new pids");
    assert!(!n.error_log().contains("[error]"), "{}", n.error_log());
}

#[test]
fn a_killed_worker_is_replaced_quickly() {
    let dir = tempdir();
    let app = versioned_app(dir.path(), "v0");
    let p = Spawn::tcp(dir.path(), &app.to_string_lossy())
        .args(["--workers", "2"])
        .start();
    assert!(p.wait_log("all 2 workers ready", 10));
    let pid: i32 = String::from_utf8(p.get("/").1)
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let t = Instant::now();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(p.wait_log("worker died unexpectedly", 5), "{}", p.logs());
    assert!(p.wait_log("killed by SIGKILL", 1));
    // A replacement serves within a second.
    let mut seen = std::collections::HashSet::new();
    while t.elapsed() < Duration::from_secs(3) {
        let (s, body) = p.get("/");
        assert_eq!(s, 200);
        seen.insert(
            String::from_utf8(body)
                .unwrap()
                .split(' ')
                .nth(1)
                .unwrap()
                .to_owned(),
        );
        if seen.len() >= 2 && !seen.contains(&pid.to_string()) {
            break;
        }
    }
    assert!(t.elapsed() < Duration::from_secs(3), "{seen:?}");
}

#[test]
fn sigterm_drains_workers_and_removes_the_socket() {
    let dir = tempdir();
    let app = versioned_app(dir.path(), "v0");
    let mut p = Spawn::unix(dir.path(), &app.to_string_lossy())
        .args(["--workers", "2"])
        .start();
    assert!(p.wait_log("all 2 workers ready", 10));
    let addr = p.addr.clone();
    let inflight = std::thread::spawn(move || {
        raw(
            &addr,
            &uwsgi_packet(&[("REQUEST_METHOD", "GET"), ("PATH_INFO", "/slow")]),
        )
    });
    std::thread::sleep(Duration::from_millis(100));
    p.signal(libc::SIGTERM);
    let r = parse_http(&inflight.join().unwrap()).expect("the in-flight request completes");
    assert!(r.text().starts_with("v0 "));
    assert!(p.wait_exit(10).expect("master exits").success());
    let Addr::Unix(sock) = &p.addr else {
        unreachable!()
    };
    assert!(!sock.exists());
}

#[test]
fn an_app_that_cannot_start_stops_the_master() {
    let dir = tempdir();
    let app = dir.path().join("broken.py");
    std::fs::write(&app, "raise RuntimeError('cannot start')\n").unwrap();
    let t = Instant::now();
    let out = Spawn::tcp(dir.path(), &app.to_string_lossy())
        .args(["--workers", "2"])
        .command()
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(t.elapsed() < Duration::from_secs(10), "no respawn loop");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("RuntimeError: cannot start"), "{err}");
    assert!(err.contains("failed to start"), "{err}");
}

#[test]
fn a_reload_with_broken_code_keeps_the_old_workers() {
    let dir = tempdir();
    let app = versioned_app(dir.path(), "v0");
    let p = Spawn::tcp(dir.path(), &app.to_string_lossy())
        .args(["--workers", "2"])
        .start();
    assert!(p.wait_log("all 2 workers ready", 10));
    std::fs::write(&app, "raise SyntaxError('broken deploy')\n").unwrap();
    p.signal(libc::SIGHUP);
    assert!(p.wait_log("reload failed", 10), "{}", p.logs());
    for _ in 0..5 {
        let (s, body) = p.get("/");
        assert_eq!(s, 200);
        assert!(body.starts_with(b"v0 "));
    }
}
