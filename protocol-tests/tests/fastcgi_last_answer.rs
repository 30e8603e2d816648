//! The last answer on a kept FastCGI connection at the final stop, over a Unix socket:
//! END_REQUEST and the FIN are two events there, so nginx could read END_REQUEST
//! alone, cache the connection and send its next request on it as postern closed it
//! (a POST's 502: 'upstream prematurely closed connection' / 'writev() failed (32:
//! Broken pipe)', about one stop in ten under load, hostile 09:23). When the peer is
//! nginx an empty FCGI_GET_VALUES_RESULT (requestId 0) follows END_REQUEST in the same
//! send: nginx keeps a connection only when END_REQUEST ends what it read. Any other
//! peer (Apache takes bytes waiting as a live connection) gets END_REQUEST and the FIN
//! only, as before.
//!
//! The peer is told by its process name (SO_PEERCRED's pid): this test names its own
//! process "nginx" for the second case, so both cases run in one test, in order.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use protocol_tests::harness::fcgi;
use protocol_tests::harness::*;

/// A kept connection with `/marked-sleep` in flight when SIGTERM comes: every record
/// that follows, to EOF.
fn records_after_the_last_answer() -> (Vec<fcgi::Rec>, String) {
    let dir = tempdir();
    let mut p = Spawn::unix(dir.path(), &testapp())
        .protocol("fastcgi")
        .args(["--master", "--threads", "2", "--graceful-timeout", "10"])
        .start();
    assert!(p.wait_log("all 1 workers ready", 20), "{}", p.logs());
    let Addr::Unix(path) = &p.addr else { panic!() };
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // A first request makes it a kept connection that was served.
    s.write_all(&fcgi::get(1, true, "/hello")).unwrap();
    let mut others = Vec::new();
    let first = fcgi::read_reply(&mut s, 1, &mut others);
    assert_eq!(first.cgi().0, 200, "{}", p.logs());
    let mark = dir.path().join("running");
    let target = format!("/marked-sleep?s=1&mark={}", mark.display());
    s.write_all(&fcgi::get(1, true, &target)).unwrap();
    assert!(wait_file(&mark, 20), "the request never ran\n{}", p.logs());
    p.signal(libc::SIGTERM);
    let mut got = Vec::new();
    while let Some(rec) = fcgi::read(&mut s) {
        got.push(rec);
    }
    p.wait_exit(20);
    (got, p.logs())
}

/// Names this process (what /proc/PID/comm says: the thread group leader's name).
fn name_this_process(name: &str) {
    std::fs::write("/proc/self/comm", name).unwrap();
    assert_eq!(
        std::fs::read_to_string("/proc/self/comm").unwrap().trim(),
        name
    );
}

// regression (hostile 09:23): the last answer at the final stop ended with END_REQUEST
// and a FIN sent a moment later; nginx, reading END_REQUEST alone, cached the
// connection and sent a POST on it as it closed (502).
#[test]
fn the_last_answer_at_the_final_stop_is_not_kept_by_nginx() {
    let kinds = |got: &[fcgi::Rec]| -> Vec<(u8, u16, usize)> {
        got.iter()
            .map(|r| (r.kind, r.id, r.content.len()))
            .collect()
    };
    // Another peer: END_REQUEST is the last record.
    let (got, logs) = records_after_the_last_answer();
    let end = got.iter().position(|r| r.kind == fcgi::END_REQUEST);
    assert!(
        end.is_some_and(|i| i + 1 == got.len() && got[i].id == 1),
        "not END_REQUEST then EOF for a peer that is not nginx: {:?}\n{logs}",
        kinds(&got)
    );
    // nginx: an empty GET_VALUES_RESULT follows it, then EOF.
    name_this_process("nginx");
    let (got, logs) = records_after_the_last_answer();
    let end = got.iter().position(|r| r.kind == fcgi::END_REQUEST);
    assert!(
        end.is_some_and(|i| got[i].id == 1
            && i + 2 == got.len()
            && got[i + 1].kind == fcgi::GET_VALUES_RESULT
            && got[i + 1].id == 0
            && got[i + 1].content.is_empty()),
        "the last answer to nginx is not END_REQUEST, an empty GET_VALUES_RESULT, then EOF: {:?}\n{logs}",
        kinds(&got)
    );
}
