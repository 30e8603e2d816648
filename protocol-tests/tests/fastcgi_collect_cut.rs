//! A FastCGI body without CONTENT_LENGTH (nginx `fastcgi_request_buffering off` with a
//! chunked upload), collected before its app runs, cut by the front server: one WARN
//! line and an access line (status 0), as a uwsgi body cut before its app runs has.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use protocol_tests::harness::fcgi;
use protocol_tests::harness::*;

/// A POST to `path` without CONTENT_LENGTH and two STDIN records of its body, on a
/// new connection to `p`.
fn cut_upload(p: &Postern, path: &str) -> UnixStream {
    let Addr::Unix(sock) = &p.addr else { panic!() };
    let mut s = UnixStream::connect(sock).unwrap();
    let mut vars = fcgi::get_vars(path);
    vars[0].1 = "POST".into();
    let v: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    s.write_all(&fcgi::head(1, true, &v)).unwrap();
    for _ in 0..2 {
        s.write_all(&fcgi::record(fcgi::STDIN, 1, &[b'c'; 30000]))
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    s
}

// regression: it left no line at all (no WARN, no access line), where the same upload
// with CONTENT_LENGTH (its app reading it) left the app's WARN and an access line.
#[test]
fn a_collected_body_cut_by_the_front_server_has_its_lines() {
    let dir = tempdir();
    let p = Spawn::unix(dir.path(), &testapp())
        .protocol("fastcgi")
        .args(["--read-timeout", "1"])
        .start();
    // Closed mid-body.
    drop(cut_upload(&p, "/closed"));
    assert!(
        p.wait_log("could not read the request body: the front server closed the connection before its end", 20),
        "{}",
        p.logs()
    );
    let access = |path: &str| {
        p.logs()
            .lines()
            .find(|l| l.contains("postern::access") && l.contains(&format!("path={path} ")))
            .map(str::to_owned)
    };
    assert!(
        wait_until(10, || access("/closed").is_some()),
        "{}",
        p.logs()
    );
    assert!(
        access("/closed").unwrap().contains("status=0"),
        "{}",
        p.logs()
    );
    // Silent mid-body past --read-timeout: the lane's WARN, and the access line.
    let held = cut_upload(&p, "/silent");
    assert!(
        p.wait_log("the front server sent nothing for 1s (--read-timeout)", 20),
        "{}",
        p.logs()
    );
    assert!(
        wait_until(10, || access("/silent").is_some()),
        "{}",
        p.logs()
    );
    assert!(
        access("/silent").unwrap().contains("status=0"),
        "{}",
        p.logs()
    );
    drop(held);
}

// regression: a cut with part of a record read gave two WARNs (the body's and 'the front
// server closed the FastCGI connection in the middle of a record'), counted twice among
// the truncated inputs.
#[test]
fn a_collected_body_cut_mid_record_has_one_warn() {
    let dir = tempdir();
    let p = Spawn::unix(dir.path(), &testapp())
        .protocol("fastcgi")
        .start();
    // Closed three bytes into a record's header.
    let mut s = cut_upload(&p, "/mid-record");
    s.write_all(&fcgi::record(fcgi::STDIN, 1, b"x")[..3])
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    drop(s);
    assert!(
        wait_until(10, || p.logs().contains("path=/mid-record ")),
        "{}",
        p.logs()
    );
    // (The lane's own WARN would come right after, on the same path.)
    std::thread::sleep(Duration::from_millis(500));
    let logs = p.logs();
    assert_eq!(
        logs.matches("could not read the request body").count(),
        1,
        "{logs}"
    );
    assert!(!logs.contains("in the middle of a record"), "{logs}");
}

// regression: an FCGI_ABORT_REQUEST was the one cut of a collected body without an
// access line.
#[test]
fn an_aborted_collected_body_has_its_access_line() {
    let dir = tempdir();
    let p = Spawn::unix(dir.path(), &testapp())
        .protocol("fastcgi")
        .start();
    let mut s = cut_upload(&p, "/aborted");
    s.write_all(&fcgi::record(fcgi::ABORT_REQUEST, 1, &[]))
        .unwrap();
    assert!(
        p.wait_log("FCGI_ABORT_REQUEST before the body ended", 20),
        "{}",
        p.logs()
    );
    let access = || {
        p.logs()
            .lines()
            .find(|l| l.contains("postern::access") && l.contains("path=/aborted "))
            .map(str::to_owned)
    };
    assert!(wait_until(10, || access().is_some()), "{}", p.logs());
    assert!(access().unwrap().contains("status=0"), "{}", p.logs());
    drop(s);
}
