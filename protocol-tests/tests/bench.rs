//! `postern bench`: the load generator against the real binary over uwsgi, FastCGI (with
//! and without keep-conn) and SCGI. What it counts must be what the server served (the
//! access log), and what goes wrong must show up as errors of the right kind.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use protocol_tests::harness::*;

/// Runs `postern bench ARGS --format json`; returns the exit code and the report.
fn bench(args: &[&str]) -> (Option<i32>, serde_json::Value, Output) {
    let out = Command::new(postern_bin())
        .arg("bench")
        .args(args)
        .args(["--format", "json"])
        .output()
        .expect("running postern bench");
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not a JSON report ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), report, out)
}

/// The access lines for `path` (`path=/bench/x ` in the text format).
fn served(access: &Path, path: &str) -> u64 {
    let log = std::fs::read_to_string(access).unwrap_or_default();
    let needle = format!(" path={path} ");
    log.lines().filter(|l| l.contains(&needle)).count() as u64
}

#[test]
fn bench_counts_exactly_the_requests_the_server_served_on_each_protocol() {
    let dir = tempdir();
    let fcgi = dir.path().join("fcgi.sock");
    let scgi = dir.path().join("scgi.sock");
    let access = dir.path().join("access.log");
    let mut p = Spawn::unix(dir.path(), &testapp())
        .arg("--fastcgi")
        .arg(format!("unix:{}", fcgi.display()))
        .arg("--scgi")
        .arg(format!("unix:{}", scgi.display()))
        .args(["--access-log", &access.display().to_string()])
        .start();
    let Addr::Unix(uwsgi) = &p.addr else {
        unreachable!()
    };
    let uwsgi = format!("uwsgi+unix://{}", uwsgi.display());
    let fcgi_url = format!("fastcgi+unix://{}", fcgi.display());

    // Each run on its own path, so the access log tells them apart; the URL form, the
    // bare address with --protocol, and a POST with a body are all used.
    let runs: Vec<(&str, Vec<String>)> = vec![
        ("/bench/uwsgi", vec![uwsgi.clone()]),
        ("/bench/fastcgi", vec![fcgi_url.clone()]),
        (
            "/bench/fastcgi-keep",
            vec![fcgi_url.clone(), "--keep-conn".into()],
        ),
        (
            "/bench/scgi",
            // regression: --body-size took no size suffix (`3k` was refused, exit 2)
            // while every other size option did.
            vec![
                format!("unix:{}", scgi.display()),
                "--protocol".into(),
                "scgi".into(),
                "--body-size".into(),
                "3k".into(),
            ],
        ),
    ];
    let mut counted = Vec::new();
    for (path, args) in &runs {
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        args.extend(["--path", path, "-c", "3", "-d", "1"]);
        let (code, r, out) = bench(&args);
        assert_eq!(code, Some(0), "{path}: {r}\n{out:?}");
        assert_eq!(r["errors_total"], 0, "{path}: {r}");
        assert_eq!(r["kept_conn_closed"], 0, "{path}: {r}");
        let responses = r["responses"].as_u64().unwrap();
        assert!(responses > 0, "{path}: {r}");
        assert_eq!(r["status"]["2xx"], responses, "{path}: {r}");
        assert_eq!(r["path"], *path, "{r}");
        let body = if *path == "/bench/scgi" { 3072 } else { 0 };
        assert_eq!(r["body_size"], body, "{r}");
        assert!(r["latency_ms"]["p50"].as_f64().unwrap() > 0.0, "{r}");
        counted.push(responses);
    }

    // A stopped postern has written every access line.
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(20).is_some_and(|s| s.success()), "{}", p.logs());
    for ((path, _), n) in runs.iter().zip(counted) {
        assert_eq!(served(&access, path), n, "{path}");
    }
    let log = std::fs::read_to_string(&access).unwrap();
    assert!(log.contains("method=POST path=/bench/scgi "), "{log}");
}

#[test]
fn bench_counts_error_answers_as_non_2xx_and_refuses_bad_options_and_absent_servers() {
    let dir = tempdir();
    let p = Spawn::unix(dir.path(), &testapp()).start();
    let Addr::Unix(sock) = &p.addr else {
        unreachable!()
    };
    let url = format!("uwsgi+unix://{}/error", sock.display());
    let (code, r, _) = bench(&[&url, "-c", "2", "-d", "0.5"]);
    assert_eq!(code, Some(0), "{r}");
    let responses = r["responses"].as_u64().unwrap();
    assert!(responses > 0, "{r}");
    assert_eq!(r["status"]["5xx"], responses, "{r}");
    assert_eq!(r["non_2xx"], responses, "{r}");
    assert_eq!(r["errors_total"], 0, "{r}");

    // Usage errors: exit 2 with a sentence, nothing sent.
    for bad in [
        vec![url.as_str(), "--keep-conn"],
        vec![url.as_str(), "--protocol", "fastcgi"],
        vec![url.as_str(), "-c", "0"],
        vec!["nowhere://x"],
    ] {
        let out = Command::new(postern_bin())
            .arg("bench")
            .args(&bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).starts_with("postern bench: "),
            "{out:?}"
        );
    }

    // --body-size takes a size as every size option does, and is refused as they are.
    let out = Command::new(postern_bin())
        .args(["bench", &url, "--body-size", "1.5M"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "'--body-size <N>': \"1.5M\": a size is a whole number (of bytes, k, M or G: e.g. 1536k for 1.5M)"
        ),
        "{out:?}"
    );

    // Nothing listening at the start: exit 7 with the reason, no run of refused connects.
    let gone = dir.path().join("gone.sock");
    let out = Command::new(postern_bin())
        .args(["bench", &format!("unix:{}", gone.display()), "-d", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot connect to unix:"),
        "{out:?}"
    );
}

#[test]
fn a_server_killed_mid_run_shows_as_errors_not_as_responses() {
    let dir = tempdir();
    // uwsgi over TCP (bare HOST:PORT), and FastCGI keep-conn over a Unix socket.
    let fcgi = dir.path().join("fcgi.sock");
    for keep in [false, true] {
        let spawn = if keep {
            Spawn::tcp(dir.path(), &testapp())
                .arg("--fastcgi")
                .arg(format!("unix:{}", fcgi.display()))
        } else {
            Spawn::tcp(dir.path(), &testapp())
        };
        let p = spawn.start();
        let Addr::Tcp(port) = p.addr else {
            unreachable!()
        };
        let addr = format!("127.0.0.1:{port}");
        let fcgi_url = format!("fastcgi+unix://{}/sleep?s=0.02", fcgi.display());
        let args: Vec<&str> = if keep {
            vec![
                &fcgi_url,
                "--keep-conn",
                "-c",
                "3",
                "-d",
                "2",
                "--timeout",
                "5",
            ]
        } else {
            vec![&addr, "--path", "/sleep?s=0.02", "-c", "3", "-d", "2"]
        };
        let mut child = Command::new(postern_bin())
            .arg("bench")
            .args(&args)
            .args(["--format", "json"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(700));
        p.signal(libc::SIGKILL);
        let mut out = String::new();
        std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
        let status = child.wait().unwrap();
        let r: serde_json::Value = serde_json::from_str(&out).expect(&out);
        assert_eq!(status.code(), Some(0), "{r}");
        assert!(r["responses"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["status"]["2xx"], r["responses"], "{r}");
        let e = &r["errors"];
        // After the kill nothing listens: connects are refused (the Unix socket file
        // stays, without a listener); requests under way were cut.
        assert!(e["connect_refused"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(e["bad_response"], 0, "{r}");
        assert_eq!(e["timeout"], 0, "{r}");
        assert_eq!(
            r["errors_total"].as_u64().unwrap(),
            e["connect_refused"].as_u64().unwrap()
                + e["connect_failed"].as_u64().unwrap()
                + e["reset"].as_u64().unwrap(),
            "{r}"
        );
        drop(p);
    }
}

/// A server that answers every connection with `head`, then one byte every 50 ms for
/// as long as the client listens (at most 2,000 bytes): a response that makes progress
/// but never ends.
fn trickling_server(head: &'static [u8]) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(64) {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                use std::io::Write;
                if conn.write_all(head).is_err() {
                    return;
                }
                for _ in 0..2000 {
                    std::thread::sleep(Duration::from_millis(50));
                    if conn.write_all(b"x").is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

// regression: a response that kept trickling in (each read making progress, so the
// socket's --timeout never fired) held `postern bench` past its --duration for as long
// as the server went on: the run never ended. A request under way at the deadline now
// has --timeout more, then counts as a timeout.
#[test]
fn a_response_that_never_ends_counts_as_a_timeout_and_the_run_ends() {
    // uwsgi: a status line and headers that never end; FastCGI: a STDOUT record whose
    // content never completes.
    let uwsgi = trickling_server(b"HTTP/1.1 200 OK\r\nX-Slow: ");
    let fcgi = trickling_server(&[1, 6, 0, 1, 0xff, 0xff, 0, 0]);
    for args in [
        vec![format!("127.0.0.1:{uwsgi}")],
        vec![format!("fastcgi://127.0.0.1:{fcgi}/"), "--keep-conn".into()],
    ] {
        let mut child = Command::new(postern_bin())
            .arg("bench")
            .args(&args)
            .args(["-c", "2", "-d", "0.5", "--timeout", "1", "--format", "json"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Hang guard only: the run ends by itself well before.
        let mut status = None;
        for _ in 0..600 {
            if let Some(s) = child.try_wait().unwrap() {
                status = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("postern bench {args:?} did not end");
        }
        let mut out = String::new();
        std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
        let r: serde_json::Value = serde_json::from_str(&out).expect(&out);
        // Not one response came back: exit 7, and the requests are timeouts.
        assert_eq!(status.unwrap().code(), Some(7), "{r}");
        assert_eq!(r["responses"], 0, "{r}");
        assert_eq!(r["errors"]["timeout"], 2, "{r}");
        assert_eq!(r["errors_total"], 2, "{r}");
    }
}

// regression: a load thread kept every byte of a response (read_to_end; FastCGI STDOUT
// collected whole), so a long response took its size in memory per connection, and a
// server that never stopped sending exhausted memory before the run could end. Only a
// response's start is kept now, the rest is counted.
#[test]
fn a_long_response_is_counted_in_bounded_memory() {
    const MIB: usize = 1 << 20;
    const BODY: usize = 256 * MIB;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for conn in listener.incoming().take(8) {
            let Ok(mut conn) = conn else { return };
            // The uwsgi request: a 4-byte header and its vars.
            let mut header = [0u8; 4];
            if conn.read_exact(&mut header).is_err() {
                continue;
            }
            let mut vars = vec![0; u16::from_le_bytes([header[1], header[2]]) as usize];
            if conn.read_exact(&mut vars).is_err() {
                continue;
            }
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {BODY}\r\n\r\n");
            let chunk = vec![b'x'; MIB];
            let _ = conn.write_all(head.as_bytes());
            for _ in 0..BODY / MIB {
                if conn.write_all(&chunk).is_err() {
                    break;
                }
            }
        }
    });
    // Reaped by the wait4 below, which reads its rusage too (Child::wait does not).
    #[allow(clippy::zombie_processes)]
    let mut child = Command::new(postern_bin())
        .args([
            "bench",
            &format!("127.0.0.1:{port}"),
            "-c",
            "1",
            "-d",
            "0.01",
        ])
        .args(["--timeout", "60", "--format", "json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = String::new();
    let mut stdout = child.stdout.take().unwrap();
    std::io::Read::read_to_string(&mut stdout, &mut out).unwrap();
    // The bench's own peak RSS (wait4: this child only).
    let mut status = 0;
    // SAFETY: rusage is plain data (all zeroes is valid); wait4 on our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    assert_eq!(unsafe { libc::wait4(pid, &mut status, 0, &mut usage) }, pid);
    let r: serde_json::Value = serde_json::from_str(&out).expect(&out);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{r}"
    );
    assert!(r["responses"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(r["status"]["2xx"], r["responses"], "{r}");
    assert_eq!(r["errors_total"], 0, "{r}");
    let peak_mib = usage.ru_maxrss as usize / 1024;
    assert!(
        peak_mib < 64,
        "postern bench peaked at {peak_mib} MiB for a 256 MiB response"
    );
}

// regression: a Unix socket connect blocked without a timeout when the listen queue
// was full (a server that stopped accepting), so `postern bench` never ended. The
// connect now waits at most --timeout and counts as a failed connect.
#[test]
fn a_unix_server_that_stops_accepting_ends_the_run_with_connect_errors() {
    use std::os::fd::AsRawFd;
    let dir = tempdir();
    let sock = dir.path().join("full.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    // Room for one queued connection (the bench's check at the start), never accepted.
    // SAFETY: listen again on our own listening socket, to shrink its queue.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
    let mut child = Command::new(postern_bin())
        .args(["bench", &format!("unix:{}", sock.display())])
        .args(["-c", "2", "-d", "0.5", "--timeout", "1", "--format", "json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Hang guard only: the run ends by itself well before.
    let mut status = None;
    for _ in 0..600 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("postern bench did not end");
    }
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    let r: serde_json::Value = serde_json::from_str(&out).expect(&out);
    assert_eq!(status.unwrap().code(), Some(7), "{r}");
    assert_eq!(r["responses"], 0, "{r}");
    assert!(r["errors"]["connect_failed"].as_u64().unwrap() >= 2, "{r}");
    drop(listener);
}
