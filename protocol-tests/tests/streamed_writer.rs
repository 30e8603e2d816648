//! Streamed responses behind nginx (`uwsgi_pass`, `scgi_pass`, `fastcgi_pass` with and
//! without keep-conn) once their chunks go through the
//! Python thread's writer (from the third write of a response on): every chunk arrives,
//! in order, around a large chunk sent directly; a client that leaves mid-stream still
//! ends the app's iteration with `close()` and the usual access line; and a long stream
//! to a slow reader is held back by the bounded queue instead of piling up in memory.
//! Needs nginx: fails in CI if it is missing, skips loudly locally.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use protocol_tests::harness::*;
use protocol_tests::stack::{Stack, Upstream};

const UPSTREAMS: [Upstream; 4] = [
    Upstream::Uwsgi,
    Upstream::Scgi,
    Upstream::FastCgi,
    Upstream::FastCgiKeepConn,
];

const APP: &str = r#"
import threading

CLOSED = {}


def qs(environ):
    return dict(p.split("=", 1) for p in environ.get("QUERY_STRING", "").split("&") if "=" in p)


def numbered(i, size):
    return f"<{i}>".encode().ljust(size, b".")


def sizes(n):
    # Mostly small, with a 100 KiB chunk (written directly, after what is queued).
    return [100 * 1024 if i == n // 2 else (i * 37) % 3000 + 1 for i in range(n)]


class Endless:
    def __init__(self, rid):
        self.rid = rid

    def __iter__(self):
        for _ in range(1_000_000):
            yield b"x" * 1024

    def close(self):
        CLOSED[self.rid] = "closed"


def application(environ, start_response):
    # FastCGI: nginx sends the whole path as SCRIPT_NAME.
    path, q = environ["SCRIPT_NAME"] + environ["PATH_INFO"], qs(environ)
    unbuffered = [("Content-Type", "application/octet-stream"), ("X-Accel-Buffering", "no")]
    if path == "/numbered":
        n, size = int(q["n"]), int(q["size"])
        start_response("200 OK", unbuffered)
        return (numbered(i, size) for i in range(n))
    if path == "/mixed":
        start_response("200 OK", unbuffered)
        return (numbered(i, s) for i, s in enumerate(sizes(int(q["n"]))))
    if path == "/write-thread":
        # write() from the app's own thread, which then exits.
        write = start_response("200 OK", unbuffered)
        t = threading.Thread(target=lambda: [write(numbered(i, 1024)) for i in range(int(q["n"]))])
        t.start()
        t.join()
        return []
    if path == "/endless":
        start_response("200 OK", unbuffered)
        return Endless(q["id"])
    if path == "/big":
        chunk = b"y" * 16384
        start_response("200 OK", unbuffered)
        return (chunk for _ in range(int(q["mib"]) * 64))
    if path == "/app-writers":
        # Writer threads of app threads still alive (a pool thread's is "python-N-w").
        import os
        names = []
        for t in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{t}/comm") as f:
                    names.append(f.read().strip())
            except OSError:
                pass
        body = str(names.count("postern-w")).encode()
    elif path == "/closed":
        body = CLOSED.get(q["id"], "no").encode()
    elif path == "/rss":
        with open("/proc/self/status") as f:
            body = next(l.split()[1] for l in f if l.startswith("VmRSS:")).encode()
    else:
        body = b"ok"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"#;

fn stack(upstream: Upstream) -> Option<Stack> {
    let bin = nginx_bin()?;
    let dir = tempdir();
    let app = dir.path().join("streamapp.py");
    std::fs::write(&app, APP).unwrap();
    let postern = Spawn::unix(dir.path(), &app.to_string_lossy())
        .protocol(upstream.protocol())
        .args(["--threads", "4"])
        .start();
    let site = upstream.site(&postern.addr.nginx(), "", "");
    let nginx = Nginx::start_site(&bin, dir.path(), &site);
    Some(Stack::from_parts(nginx, postern, dir))
}

/// Runs `f` behind each kind of upstream.
fn each(f: impl Fn(&Stack)) {
    for up in UPSTREAMS {
        let Some(s) = stack(up) else { return };
        f(&s);
    }
}

fn numbered(i: usize, size: usize) -> Vec<u8> {
    // As Python's ljust: a label longer than `size` is kept whole.
    let mut c = format!("<{i}>").into_bytes();
    c.resize(size.max(c.len()), b'.');
    c
}

#[test]
fn a_hundred_chunk_stream_arrives_whole_and_in_order() {
    each(|s| {
        for _ in 0..3 {
            let r = s.nginx.get("/numbered?n=100&size=1024");
            assert_eq!(r.status, 200, "{}", s.postern.logs());
            let want: Vec<u8> = (0..100).flat_map(|i| numbered(i, 1024)).collect();
            assert!(
                r.body == want,
                "the 100 chunks arrived altered or out of order"
            );
        }
        // Small chunks queued around a large one sent directly: still in order.
        let n = 300;
        let r = s.nginx.get(&format!("/mixed?n={n}"));
        assert_eq!(r.status, 200, "{}", s.postern.logs());
        let want: Vec<u8> = (0..n)
            .flat_map(|i| {
                numbered(
                    i,
                    if i == n / 2 {
                        100 * 1024
                    } else {
                        (i * 37) % 3000 + 1
                    },
                )
            })
            .collect();
        assert_eq!(r.body.len(), want.len());
        assert!(
            r.body == want,
            "the mixed chunks arrived altered or out of order"
        );
        // Written from an app thread (its own writer, which lets go once it has exited).
        for _ in 0..3 {
            let r = s.nginx.get("/write-thread?n=100");
            assert_eq!(r.status, 200, "{}", s.postern.logs());
            let want: Vec<u8> = (0..100).flat_map(|i| numbered(i, 1024)).collect();
            assert!(
                r.body == want,
                "the chunks written from an app thread arrived altered"
            );
        }
        s.assert_clean("unix");
    });
}

#[test]
fn a_client_gone_mid_stream_ends_the_iteration_with_close_and_the_access_line() {
    each(|s| {
        let mut c = TcpStream::connect(("127.0.0.1", s.nginx.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        c.write_all(b"GET /endless?id=gone HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        // Well past the first chunks, so the writer thread carries the stream.
        let mut got = 0;
        let mut buf = [0u8; 16384];
        while got < 256 * 1024 {
            match c.read(&mut buf) {
                Ok(0) => panic!("the endless stream ended: {}", s.postern.logs()),
                Ok(n) => got += n,
                Err(e) => panic!("reading the stream: {e}\n{}", s.postern.logs()),
            }
        }
        drop(c);
        let deadline = Instant::now() + Duration::from_secs(15);
        while s.nginx.get("/closed?id=gone").text() != "closed" {
            assert!(
                Instant::now() < deadline,
                "close() not called after the client left mid-stream:\n{}",
                s.postern.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            s.postern
                .wait_log("client went away before the response was complete", 5),
            "{}",
            s.postern.logs()
        );
        // The thread and its writer serve the next stream whole.
        let r = s.nginx.get("/numbered?n=100&size=1024");
        assert_eq!(r.body.len(), 100 * 1024, "{}", s.postern.logs());
    });
}

#[test]
fn a_64_mib_stream_to_a_slow_reader_keeps_the_worker_memory_bounded() {
    each(|s| {
        let rss = || -> u64 {
            let t = s.nginx.get("/rss").text();
            t.trim().parse().unwrap_or_else(|_| panic!("VmRSS: {t:?}"))
        };
        // Warm up the thread that will stream (and its writer), then the baseline.
        for _ in 0..4 {
            s.nginx.get("/numbered?n=100&size=1024");
        }
        let before = rss();
        let mut c = TcpStream::connect(("127.0.0.1", s.nginx.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        c.write_all(b"GET /big?mib=64 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut got = Vec::with_capacity(65 << 20);
        let mut buf = vec![0u8; 64 * 1024];
        let mut peak = before;
        let mut next_sample = 0;
        loop {
            // The reader is slower than the app: the app produces 16 KiB chunks as fast as
            // Python yields them.
            let n = c.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if got.len() >= next_sample {
                next_sample += 1 << 20;
                peak = peak.max(rss());
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let r = parse_http(&got).expect("a complete chunked answer");
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 64 << 20);
        assert!(r.body.iter().all(|&b| b == b'y'));
        let grown_kib = peak.saturating_sub(before);
        assert!(
        grown_kib < 48 * 1024,
        "the worker grew by {grown_kib} KiB during a 64 MiB stream (VmRSS {before} -> {peak} KiB)"
    );
    });
}

fn app_file(dir: &std::path::Path) -> String {
    let app = dir.join("streamapp.py");
    std::fs::write(&app, APP).unwrap();
    app.to_string_lossy().into_owned()
}

// regression: the FastCGI sink counted a streamed chunk as sent once it was queued, so
// the access line of a client gone mid-stream named up to twice the writer's queue more
// bytes than ever left (the queue is dropped when the send fails).
#[test]
fn a_fastcgi_client_gone_mid_stream_logs_only_the_bytes_that_left() {
    use protocol_tests::harness::fcgi;
    let dir = tempdir();
    let postern = Spawn::unix(dir.path(), &app_file(dir.path()))
        .protocol("fastcgi")
        .start();
    let mut c = postern.addr.connect().unwrap();
    c.write_all(&fcgi::get(1, false, "/endless?id=fcgi-bytes"))
        .unwrap();
    // Read well past the first writes (the writer carries the stream), then stop
    // reading: the writer's send blocks and the app fills the queue behind it.
    let mut received = 0usize;
    while received < 256 * 1024 {
        let r = fcgi::read(&mut *c).expect("the endless stream ended");
        received += 8 + r.content.len();
    }
    std::thread::sleep(Duration::from_millis(500));
    drop(c);
    assert!(
        postern.wait_log("client went away before the response was complete", 20),
        "{}",
        postern.logs()
    );
    let logs = postern.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("client went away before the response was complete"))
        .unwrap();
    let bytes: usize = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("bytes="))
        .unwrap_or_else(|| panic!("no bytes= in {line:?}"))
        .parse()
        .unwrap();
    // At most what was read plus what the kernel held for the reader: the sender's
    // socket buffer, which the last packet may overshoot by up to half of it. (With
    // the bug, the writer's queue and its failed batch were counted too: ~440 KiB.)
    let sndbuf: usize = std::fs::read_to_string("/proc/sys/net/core/wmem_default")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(212_992);
    assert!(
        bytes <= received + sndbuf + sndbuf / 2,
        "the access line says {bytes} bytes; the client read {received} and the socket \
         buffer holds at most about {sndbuf}:\n{line}"
    );
}

// regression: a writer thread started by an app's own thread (one that called write())
// outlived that thread by up to its 10 s idle check, so an app starting a thread per
// request kept a writer thread per recent request alive.
#[test]
fn writer_threads_of_exited_app_threads_end() {
    let dir = tempdir();
    let postern = Spawn::unix(dir.path(), &app_file(dir.path()))
        .args(["--threads", "1"])
        .start();
    for _ in 0..20 {
        let (status, body) = postern.get("/write-thread?n=10");
        assert_eq!((status, body.len()), (200, 10 * 1024), "{}", postern.logs());
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = String::from_utf8_lossy(&postern.get("/app-writers").1).into_owned();
        if n == "0" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} writer threads of exited app threads are still running"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
