//! A worker stopped as a whole (SIGSTOP, a frozen cgroup, `docker pause`, a paused VM,
//! a debugger) for longer than `--read-timeout` does not take the front server, which
//! went on reading meanwhile, for gone.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use protocol_tests::harness::{tempdir, uwsgi_packet, Spawn};

const APP: &str = r#"
import os
DIR = os.path.dirname(os.path.abspath(__file__))
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.pathsend", "path": os.path.join(DIR, "file.bin")})
"#;

const SIZE: usize = 6 << 20;

// regression: after a stop longer than --read-timeout, the loop ran the write timer
// before it saw the room the reader had made meanwhile (the stop interrupts its wait,
// which then returns no events past its deadline): the response was cut ("the front
// server read nothing for 1s") though the reader had read steadily.
#[test]
fn a_worker_stopped_past_the_read_timeout_does_not_cut_a_steady_reader() {
    let dir = tempdir();
    std::fs::write(dir.path().join("file.bin"), vec![b'x'; SIZE]).unwrap();
    let p = Spawn::asgi_unix(dir.path(), "asgi_stopped_app", APP)
        .args(["--loop", "asyncio", "--read-timeout", "1"])
        .start();
    let mut s = p.addr.connect().unwrap();
    s.write_all(&uwsgi_packet(&[
        ("REQUEST_METHOD", "GET"),
        ("PATH_INFO", "/"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
    ]))
    .unwrap();
    // A steady reader (64 KiB every 20 ms: about 3 MiB/s, so the 6 MiB take ~2 s);
    // postern is stopped for 1.5 s from 0.3 s on.
    let start = Instant::now();
    let (mut got, mut buf) = (0usize, vec![0u8; 64 * 1024]);
    let mut stopped = None;
    loop {
        if stopped.is_none() && start.elapsed() > Duration::from_millis(300) {
            p.signal(libc::SIGSTOP);
            let pid = p.pid();
            stopped = Some(std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(1500));
                // SAFETY: kill(2) on the test's own child.
                unsafe { libc::kill(pid, libc::SIGCONT) };
            }));
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => panic!("{e} after {got} bytes"),
        }
        assert!(start.elapsed() < Duration::from_secs(30), "still reading");
        std::thread::sleep(Duration::from_millis(20));
    }
    let stopped = stopped.expect("the response ended before the stop: nothing tested");
    stopped.join().unwrap();
    // The head, then the whole file.
    assert!(got > SIZE, "cut off after {got} bytes:\n{}", p.logs());
    assert!(!p.logs().contains("client went away"), "{}", p.logs());
}

const STREAM: &str = r#"
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    chunk = b"x" * (1 << 20)
    for i in range(50):
        await send({"type": "http.response.body", "body": chunk, "more_body": i < 49})
"#;

// regression (probe 335): over TCP (uwsgi and SCGI alike), a front server that read
// nothing was cut at twice --read-timeout: the write timer's one try before calling it
// idle (for a worker stopped as a whole, above) wrote a packet into the slack the
// peer's last acknowledgement had freed, though the socket said it had no room, and
// that counted as progress, so the timer was set again. The log said 1 s, the access
// line ms=2000 and more.
#[test]
fn a_front_server_that_reads_nothing_over_tcp_is_cut_at_the_read_timeout() {
    let dir = tempdir();
    let p = Spawn::asgi_tcp(dir.path(), "asgi_stream_app", STREAM)
        .args(["--loop", "asyncio", "--read-timeout", "2"])
        .start();
    let protocol_tests::harness::Addr::Tcp(port) = p.addr else {
        unreachable!()
    };
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    let mut s = std::net::TcpStream::from(s);
    s.write_all(&uwsgi_packet(&[
        ("REQUEST_METHOD", "GET"),
        ("PATH_INFO", "/"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
    ]))
    .unwrap();
    assert!(p.wait_log("(--read-timeout)", 15), "{}", p.logs());
    assert!(p.wait_log("postern::access", 5), "{}", p.logs());
    let logs = p.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("postern::access"))
        .unwrap();
    let ms: f64 = line
        .split_once(" ms=")
        .and_then(|(_, v)| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no ms=: {line}"));
    // At the timeout (2 s), with room for a late timer; twice it is 4 s.
    assert!(
        ms < 3500.0,
        "cut after {ms} ms, not at --read-timeout 2 s\n{logs}"
    );
    drop(s);
}
