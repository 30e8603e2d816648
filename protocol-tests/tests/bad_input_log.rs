//! The log under a flood of bad input (SECURITY.md "What postern does not trust"): every
//! per-connection warning about what a peer sent (malformed, oversized, cut off, a
//! protocol error, a head not whole by --head-timeout) shares one limiter per worker:
//! the first 20 of each 10 s are named one by one (peer and reason), the rest counted
//! by reason in one summary line (said at the window's end, or at the stop).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use protocol_tests::harness::*;

/// Sends `bytes` on a new connection to `port`, half-closes when `eof`, and reads to EOF.
fn send(port: u16, bytes: &[u8], eof: bool) -> Vec<u8> {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = c.write_all(bytes);
    if eof {
        let _ = c.shutdown(std::net::Shutdown::Write);
    }
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    out
}

// regression (sec M3): 51,723 malformed uwsgi connections in 5 s gave 51,723 WARN lines
// (9 MiB of log); only heads that were not whole by --head-timeout were limited.
#[test]
fn a_flood_of_bad_input_names_the_first_twenty_then_sums_up_by_reason() {
    let dir = tempdir();
    let fcgi_port = free_port();
    let mut p = Spawn::tcp(dir.path(), &testapp())
        .args(["--buffer-size", "4096"])
        .args(["--fastcgi", &format!("127.0.0.1:{fcgi_port}")])
        .start();
    let Addr::Tcp(port) = p.addr else {
        unreachable!()
    };
    // 100 uwsgi packets that are not WSGI (modifier1 1): closed, "bad request".
    for _ in 0..100 {
        send(port, &[1, 0, 0, 0], false);
    }
    // 40 FastCGI connections of garbage (record version 9): a protocol error.
    for _ in 0..40 {
        send(fcgi_port, &[9, 1, 0, 1, 0, 8, 0, 0], false);
    }
    // 30 heads over --buffer-size (a uwsgi datasize of 5000): 431.
    for _ in 0..30 {
        let out = send(port, &[0, 0x88, 0x13, 0], false);
        assert!(
            out.starts_with(b"HTTP/1.1 431"),
            "{:?}",
            String::from_utf8_lossy(&out)
        );
    }
    // 20 heads cut off: 2 of a uwsgi header's 4 bytes, then EOF.
    for _ in 0..20 {
        send(port, &[0, 10], true);
    }
    // A good request still answers, and is not counted.
    assert_eq!(p.get("/").0, 200, "{}", p.logs());
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(30).is_some(), "{}", p.logs());
    let logs = p.logs();
    let named: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("WARN") && l.contains(" peer=127.0.0.1:"))
        .collect();
    assert_eq!(named.len(), 20, "{logs}");
    // The first lines still name the peer and the reason (the first 20: modifier1).
    assert!(
        named.iter().all(|l| l.contains("uwsgi modifier1 1")),
        "{named:#?}"
    );
    // The summary, said at the stop: the 170 others, by reason.
    let summary = logs
        .lines()
        .find(|l| l.contains("more clients dropped or refused in the last"))
        .unwrap_or_else(|| panic!("no summary:\n{logs}"));
    for said in [
        "170 more clients",
        "120 a malformed request or protocol error",
        "30 a request over a size limit",
        "20 a request cut off in the middle",
        "last_peer=127.0.0.1:",
    ] {
        assert!(summary.contains(said), "{said}: {summary}");
    }
    assert!(!summary.contains("--head-timeout"), "{summary}");
    let lines = logs.lines().filter(|l| l.contains("WARN")).count();
    assert!(lines < 30, "{lines} WARN lines:\n{logs}");
}
