//! A FastCGI request without FCGI_KEEP_CONN, answered, whose front server holds the
//! connection open: the stop does not wait for it (README "FastCGI").

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use protocol_tests::harness::fcgi;
use protocol_tests::harness::*;

// regression: its connection, answered and drained (postern half-closes it and reads
// what the front server still sends, so a body nginx is writing does not fail with a
// 502), counted at a stop as a request still being read: the stop waited the whole
// --graceful-timeout, then said 'requests still being read ... cut off' and exited 1,
// though the response was complete.
#[test]
fn an_answered_connection_held_open_by_its_peer_does_not_hold_the_stop() {
    let dir = tempdir();
    let mut p = Spawn::unix(dir.path(), &testapp())
        .protocol("fastcgi")
        .args(["--graceful-timeout", "8", "--access-log", "off"])
        .start();
    let Addr::Unix(path) = &p.addr else { panic!() };
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // Sent in two writes: the slow lane reads the rest, answers, then drains.
    let req = fcgi::get(1, false, "/hello");
    s.write_all(&req[..20]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    s.write_all(&req[20..]).unwrap();
    let mut ended = false;
    while let Some(rec) = fcgi::read(&mut s) {
        if rec.kind == fcgi::END_REQUEST {
            ended = true;
            break;
        }
    }
    assert!(ended, "no END_REQUEST\n{}", p.logs());
    // The connection stays open on this side; postern stops.
    std::thread::sleep(Duration::from_millis(200));
    p.signal(libc::SIGTERM);
    let status = p.wait_exit(30);
    let logs = p.logs();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{logs}");
    assert!(!logs.contains("cut off"), "{logs}");
    drop(s);
}
