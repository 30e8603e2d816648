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

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use protocol_tests::harness::fcgi;
use protocol_tests::harness::*;

/// A kept connection with `/marked-sleep` in flight when SIGTERM comes: every record
/// that follows, to EOF. `tcp`: over loopback TCP (else a Unix socket); `software`: the
/// SERVER_SOFTWARE its requests carry.
fn records_after_the_last_answer(tcp: bool, software: Option<&str>) -> (Vec<fcgi::Rec>, String) {
    let dir = tempdir();
    let spawn = if tcp {
        Spawn::tcp(dir.path(), &testapp())
    } else {
        Spawn::unix(dir.path(), &testapp())
    };
    let mut p = spawn
        .protocol("fastcgi")
        .args(["--master", "--threads", "2", "--graceful-timeout", "10"])
        .start();
    assert!(p.wait_log("all 1 workers ready", 20), "{}", p.logs());
    let mut s: Box<dyn ReadWrite> = match &p.addr {
        Addr::Unix(path) => Box::new(UnixStream::connect(path).unwrap()),
        Addr::Tcp(port) => Box::new(TcpStream::connect(("127.0.0.1", *port)).unwrap()),
    };
    s.set_timeout(Duration::from_secs(20));
    let get = |path: &str| {
        let mut vars = fcgi::get_vars(path);
        if let Some(v) = software {
            vars.push(("SERVER_SOFTWARE", v.to_owned()));
        }
        let v: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        fcgi::request(1, true, &v, b"")
    };
    // A first request makes it a kept connection that was served.
    s.write_all(&get("/hello")).unwrap();
    let mut others = Vec::new();
    let first = fcgi::read_reply(&mut s, 1, &mut others);
    assert_eq!(first.cgi().0, 200, "{}", p.logs());
    let mark = dir.path().join("running");
    let target = format!("/marked-sleep?s=1&mark={}", mark.display());
    s.write_all(&get(&target)).unwrap();
    assert!(wait_file(&mark, 20), "the request never ran\n{}", p.logs());
    p.signal(libc::SIGTERM);
    let mut got = Vec::new();
    while let Some(rec) = fcgi::read(&mut s) {
        got.push(rec);
    }
    p.wait_exit(20);
    (got, p.logs())
}

trait ReadWrite: Read + Write {
    fn set_timeout(&self, t: Duration);
}

impl ReadWrite for UnixStream {
    fn set_timeout(&self, t: Duration) {
        self.set_read_timeout(Some(t)).unwrap();
    }
}

impl ReadWrite for TcpStream {
    fn set_timeout(&self, t: Duration) {
        self.set_read_timeout(Some(t)).unwrap();
    }
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
    let ends_alone = |got: &[fcgi::Rec]| {
        let end = got.iter().position(|r| r.kind == fcgi::END_REQUEST);
        end.is_some_and(|i| i + 1 == got.len() && got[i].id == 1)
    };
    let ends_for_nginx = |got: &[fcgi::Rec]| {
        let end = got.iter().position(|r| r.kind == fcgi::END_REQUEST);
        end.is_some_and(|i| {
            got[i].id == 1
                && i + 2 == got.len()
                && got[i + 1].kind == fcgi::GET_VALUES_RESULT
                && got[i + 1].id == 0
                && got[i + 1].content.is_empty()
        })
    };
    // Another peer: END_REQUEST is the last record (Unix socket, and TCP).
    for (tcp, software) in [(false, None), (true, None), (true, Some("Apache/2.4.62"))] {
        let (got, logs) = records_after_the_last_answer(tcp, software);
        assert!(
            ends_alone(&got),
            "not END_REQUEST then EOF for a peer that is not nginx (tcp {tcp}, {software:?}): {:?}\n{logs}",
            kinds(&got)
        );
    }
    // nginx on another host (nothing to look up here): its stock fastcgi_params say
    // SERVER_SOFTWARE nginx/VERSION.
    // regression (review, session 16): over TCP only a local nginx process was
    // recognised; a remote one got END_REQUEST and the FIN alone.
    let (got, logs) = records_after_the_last_answer(true, Some("nginx/1.22.1"));
    assert!(
        ends_for_nginx(&got),
        "the last answer to an nginx known by SERVER_SOFTWARE is not END_REQUEST, an empty GET_VALUES_RESULT, then EOF: {:?}\n{logs}",
        kinds(&got)
    );
    // nginx: an empty GET_VALUES_RESULT follows it, then EOF.
    name_this_process("nginx");
    let (got, logs) = records_after_the_last_answer(false, None);
    assert!(
        ends_for_nginx(&got),
        "the last answer to nginx is not END_REQUEST, an empty GET_VALUES_RESULT, then EOF: {:?}\n{logs}",
        kinds(&got)
    );
}

// regression (review, session 17): a kept connection handed over at a reload lost what
// its requests had said (SERVER_SOFTWARE nginx/VERSION), so at the final stop an idle
// one from an nginx on another host was closed under it instead of nudged.
#[test]
fn an_idle_connection_handed_over_at_a_reload_is_still_nudged_as_nginx_at_the_stop() {
    let dir = tempdir();
    let mut p = Spawn::tcp(dir.path(), &testapp())
        .protocol("fastcgi")
        .args(["--master", "--workers", "1", "--graceful-timeout", "10"])
        .start();
    assert!(p.wait_log("all 1 workers ready", 20), "{}", p.logs());
    let Addr::Tcp(port) = p.addr else {
        unreachable!()
    };
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut vars = fcgi::get_vars("/hello");
    vars.push(("SERVER_SOFTWARE", "nginx/1.22.1".to_owned()));
    let v: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    s.write_all(&fcgi::request(1, true, &v, b"")).unwrap();
    let mut others = Vec::new();
    assert_eq!(
        fcgi::read_reply(&mut s, 1, &mut others).cgi().0,
        200,
        "{}",
        p.logs()
    );
    // The reload hands the idle connection to the new worker.
    p.signal(libc::SIGHUP);
    assert!(
        wait_until(20, || p.logs().lines().any(
            |l| l.contains("worker exited") && l.contains("cause=\"reload\"")
        )),
        "{}",
        p.logs()
    );
    p.signal(libc::SIGTERM);
    // nginx is nudged (an empty FCGI_STDERR for id 1) and closes first; any other
    // peer's idle connection is closed without a record.
    let got = fcgi::read(&mut s);
    drop(s);
    p.wait_exit(20);
    let logs = p.logs();
    let got = got.unwrap_or_else(|| panic!("closed without the nudge:\n{logs}"));
    assert_eq!(
        (got.kind, got.id, got.content.len()),
        (fcgi::STDERR, 1, 0),
        "{logs}"
    );
}
